//! Intrusive doubly-linked lists threaded through links indexed by slab token.
//! The links live wherever a [`LinkStore`] keeps them: in the entries' own
//! slots for the eviction policies (LRU order, LFU frequency buckets, the
//! W-TinyLFU regions; eviction reads the slot of every entry it moves anyway,
//! so the links come on the same cache line), or in a separate [`Links`]
//! array shared by the timer wheel's lists. Either way an entry costs 8 bytes
//! of links whatever list it is on.

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
        if prev == NIL {
            self.head = next;
        } else {
            links.set_next(prev, next);
        }
        if next == NIL {
            self.tail = prev;
        } else {
            links.set_prev(next, prev);
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
    #[cfg(any(test, fuzzing))]
    pub(crate) fn tokens(&self, links: &impl LinkStore) -> Vec<Token> {
        let mut out = Vec::with_capacity(self.len as usize);
        let mut at = self.head;
        let mut prev = NIL;
        while at != NIL {
            let (back, next) = links.link(at);
            assert_eq!(back, prev, "broken back link");
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
