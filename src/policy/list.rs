//! Intrusive doubly-linked lists threaded through links indexed by slab token.
//! The links live wherever a [`LinkStore`] keeps them: in the entries' own
//! slots for the eviction policies (LRU order, LFU frequency buckets, the
//! W-TinyLFU regions; eviction reads the slot of every entry it moves anyway,
//! so the links come on the same cache line), or in a separate [`Links`]
//! array shared by the timer wheel's lists. Either way an entry costs 8 bytes
//! of links whatever list it is on.
//!
//! A head's back link is not kept: taking the head off (what eviction does
//! most) writes the list and the leaving token only, never the next token's
//! line, which is seldom cached. Its read waits until that token is itself
//! looked at. On the throughput benchmark's mix (one thread, two caches in one
//! process taking turns) this took about 2% off the time per operation
//! (median paired ratio 0.978 over six runs of 21 rounds), and
//! `benches/mix_cost.sh` counted 275.7 instructions and 4.47 L1 misses per
//! operation where it had counted 279.2 and 4.59.

use super::Entries;
use crate::store::Token;

/// The "no neighbour" token.
pub(crate) const NIL: Token = Token::MAX;

/// `prev` of a token on no list. Drained reads may name tokens whose entries are
/// gone, so policies check membership before they move anything.
pub(crate) const DETACHED: Token = Token::MAX - 1;

/// Where a token's `(prev, next)` links are kept.
pub(crate) trait LinkStore {
    fn link(&self, token: Token) -> (Token, Token);
    fn set_link(&mut self, token: Token, prev: Token, next: Token);
    fn set_prev(&mut self, token: Token, prev: Token);
    fn set_next(&mut self, token: Token, next: Token);
}

/// Links kept in the entries' slots (see [`Entries::link`]).
impl<E: Entries + ?Sized> LinkStore for &E {
    #[inline]
    fn link(&self, token: Token) -> (Token, Token) {
        (**self).link(token)
    }
    #[inline]
    fn set_link(&mut self, token: Token, prev: Token, next: Token) {
        (**self).set_link(token, prev, next);
    }
    #[inline]
    fn set_prev(&mut self, token: Token, prev: Token) {
        (**self).set_prev(token, prev);
    }
    #[inline]
    fn set_next(&mut self, token: Token, next: Token) {
        (**self).set_next(token, next);
    }
}

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: Token,
    next: Token,
}

/// The links of every token, grown on demand as the slab grows.
#[derive(Debug, Default)]
pub(crate) struct Links {
    links: Vec<Link>,
}

impl Links {
    /// Makes room for `token`'s links.
    #[inline]
    pub(crate) fn ensure(&mut self, token: Token) {
        let need = token as usize + 1;
        if self.links.len() < need {
            self.links.resize(
                need,
                Link {
                    prev: DETACHED,
                    next: NIL,
                },
            );
        }
    }

    /// Whether `token` is on some list.
    #[cfg(test)]
    pub(crate) fn is_linked(&self, token: Token) -> bool {
        self.links
            .get(token as usize)
            .is_some_and(|l| l.prev != DETACHED)
    }

    #[inline]
    pub(crate) fn next(&self, token: Token) -> Token {
        self.links[token as usize].next
    }
}

impl LinkStore for Links {
    #[inline]
    fn link(&self, token: Token) -> (Token, Token) {
        let l = self.links[token as usize];
        (l.prev, l.next)
    }
    #[inline]
    fn set_link(&mut self, token: Token, prev: Token, next: Token) {
        self.ensure(token);
        self.links[token as usize] = Link { prev, next };
    }
    #[inline]
    fn set_prev(&mut self, token: Token, prev: Token) {
        self.links[token as usize].prev = prev;
    }
    #[inline]
    fn set_next(&mut self, token: Token, next: Token) {
        self.links[token as usize].next = next;
    }
}

/// One list: head is the oldest (next victim), tail the newest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct List {
    head: Token,
    tail: Token,
    len: u32,
}

impl Default for List {
    fn default() -> Self {
        Self {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl List {
    #[inline]
    pub(crate) fn head(&self) -> Option<Token> {
        (self.head != NIL).then_some(self.head)
    }

    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline(always)]
    pub(crate) fn push_back(&mut self, links: &mut impl LinkStore, token: Token) {
        links.set_link(token, self.tail, NIL);
        if self.tail == NIL {
            self.head = token;
        } else {
            links.set_next(self.tail, token);
        }
        self.tail = token;
        self.len += 1;
    }

    #[inline(always)]
    pub(crate) fn unlink(&mut self, links: &mut impl LinkStore, token: Token) {
        let (prev, next) = links.link(token);
        if token == self.head {
            // The new head's back link is left as it is: a head's is never
            // read, and not writing it spares a miss on its line.
            self.head = next;
            if next == NIL {
                self.tail = NIL;
            }
        } else {
            links.set_next(prev, next);
            if next == NIL {
                self.tail = prev;
            } else {
                links.set_prev(next, prev);
            }
        }
        links.set_link(token, DETACHED, NIL);
        self.len -= 1;
    }

    #[inline]
    pub(crate) fn move_to_back(&mut self, links: &mut impl LinkStore, token: Token) {
        if self.tail != token {
            self.unlink(links, token);
            self.push_back(links, token);
        }
    }

    /// Moves every token of `other` to the back of this list, in order; O(1).
    pub(crate) fn append(&mut self, links: &mut impl LinkStore, other: &mut List) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = *other;
        } else {
            links.set_next(self.tail, other.head);
            links.set_prev(other.head, self.tail);
            self.tail = other.tail;
            self.len += other.len;
        }
        *other = List::default();
    }

    /// The tokens from head to tail (for invariant checks and tests).
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn tokens(&self, links: &impl LinkStore) -> Vec<Token> {
        let mut out = Vec::with_capacity(self.len as usize);
        let mut at = self.head;
        let mut prev = NIL;
        while at != NIL {
            let (back, next) = links.link(at);
            // The head's back link is not kept.
            assert!(prev == NIL || back == prev, "broken back link");
            assert_ne!(back, DETACHED, "a listed token marked as on no list");
            out.push(at);
            assert!(out.len() <= self.len as usize, "list longer than its count");
            prev = at;
            at = next;
        }
        assert_eq!(prev, self.tail, "tail does not end the list");
        assert_eq!(out.len(), self.len as usize, "list count is wrong");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Links that record which tokens' links were written.
    #[derive(Default)]
    struct Recorded {
        links: Links,
        written: Vec<Token>,
    }

    impl LinkStore for Recorded {
        fn link(&self, token: Token) -> (Token, Token) {
            self.links.link(token)
        }
        fn set_link(&mut self, token: Token, prev: Token, next: Token) {
            self.written.push(token);
            self.links.set_link(token, prev, next);
        }
        fn set_prev(&mut self, token: Token, prev: Token) {
            self.written.push(token);
            self.links.set_prev(token, prev);
        }
        fn set_next(&mut self, token: Token, next: Token) {
            self.written.push(token);
            self.links.set_next(token, next);
        }
    }

    #[test]
    fn taking_the_head_off_writes_no_neighbour() {
        let mut links = Recorded::default();
        let mut list = List::default();
        for t in 0..4 {
            list.push_back(&mut links, t);
        }
        links.written.clear();
        list.unlink(&mut links, 0);
        assert_eq!(links.written, [0], "only the leaving token is written");
        // The stale back link of the new head is never followed: unlinking
        // it and the tokens after it keeps the list whole.
        list.move_to_back(&mut links, 1);
        assert_eq!(list.tokens(&links.links), [2, 3, 1]);
        links.written.clear();
        list.unlink(&mut links, 3);
        assert_eq!(
            links.written,
            [2, 1, 3],
            "a middle token rewrites both neighbours"
        );
        assert_eq!(list.tokens(&links.links), [2, 1]);
        list.unlink(&mut links, 2);
        list.unlink(&mut links, 1);
        assert!(list.is_empty() && list.head().is_none());
        assert_eq!(list.tokens(&links.links), []);
    }

    proptest! {
        /// The intrusive list agrees with a `Vec` under random pushes, moves and unlinks.
        #[test]
        fn list_matches_vec(ops in proptest::collection::vec((0u8..5, 0u32..16), 0..200)) {
            let mut links = Links::default();
            let mut list = List::default();
            let mut other = List::default();
            let mut model: Vec<Token> = Vec::new();
            let mut other_model: Vec<Token> = Vec::new();
            for (op, t) in ops {
                let present = model.contains(&t);
                match op {
                    3 if !present && !other_model.contains(&t) => { other.push_back(&mut links, t); other_model.push(t); }
                    4 => { list.append(&mut links, &mut other); model.append(&mut other_model); }
                    0 if !present && !other_model.contains(&t) => { list.push_back(&mut links, t); model.push(t); }
                    1 if present => { list.move_to_back(&mut links, t); model.retain(|&x| x != t); model.push(t); }
                    2 if present => { list.unlink(&mut links, t); model.retain(|&x| x != t); }
                    _ => {}
                }
                prop_assert_eq!(list.tokens(&links), model.clone());
                prop_assert_eq!(list.head(), model.first().copied());
                prop_assert_eq!(other.tokens(&links), other_model.clone());
                prop_assert_eq!(links.is_linked(t), model.contains(&t) || other_model.contains(&t));
            }
        }
    }
}
