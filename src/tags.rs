//! Tag groups: entries carry tags, and one call invalidates every entry with a
//! tag.
//!
//! Each shard keeps an index from tag to the tokens that carry it, and from
//! token to its tags, both only for tagged entries (an untagged cache has no
//! index at all, and untagged entries cost nothing on any path). Every removal
//! of a tagged entry — eviction, expiry, replacement, removal — takes it out of
//! the index, so the index holds exactly the tagged entries alive, and a
//! shard whose last tagged entry left gives back an index grown large (see
//! [`KEPT_EMPTY`]); untagged writes take the plain path while it is empty.

use std::fmt;
use std::sync::Arc;

use foldhash::fast::RandomState;
use hashbrown::{HashMap, HashSet};
use smallvec::SmallVec;

use crate::store::Token;

/// A label for a group of entries: built from a string or an integer
/// (`u64`, `u32`, `usize`, `i64`, `i32`: one tag per 64-bit pattern, so
/// `7u32` and `7i64` are one tag), cheap to clone (an integer, or a shared
/// string).
///
/// ```
/// use larder::Tag;
///
/// assert_eq!(Tag::from("user:7"), Tag::from(String::from("user:7")));
/// assert_ne!(Tag::from(7u64), Tag::from("7"));
/// let customer_id: i64 = 7; // a database key
/// assert_eq!(Tag::from(customer_id), Tag::from(7u64));
/// assert_eq!(Tag::from(7usize), Tag::from(7)); // a literal is an `i32`
/// assert_eq!(Tag::from(-1i64), Tag::from(u64::MAX));
/// // Borrowed strings too, so a list of names tags an entry as it is:
/// let teams = vec!["team:1".to_string(), "team:2".to_string()];
/// let options = larder::EntryOptions::new().tags(&teams);
/// assert_eq!(options.tag_list(), &[Tag::from("team:1"), Tag::from("team:2")]);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tag(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Int(u64),
    Str(Arc<str>),
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Int(n) => write!(f, "Tag({n})"),
            Repr::Str(s) => write!(f, "Tag({s:?})"),
        }
    }
}

impl From<&str> for Tag {
    fn from(s: &str) -> Self {
        Tag(Repr::Str(s.into()))
    }
}

impl From<String> for Tag {
    fn from(s: String) -> Self {
        Tag(Repr::Str(s.into()))
    }
}

impl From<&String> for Tag {
    fn from(s: &String) -> Self {
        Tag(Repr::Str(s.as_str().into()))
    }
}

impl From<Arc<str>> for Tag {
    fn from(s: Arc<str>) -> Self {
        Tag(Repr::Str(s))
    }
}

impl From<u64> for Tag {
    fn from(n: u64) -> Self {
        Tag(Repr::Int(n))
    }
}

impl From<u32> for Tag {
    fn from(n: u32) -> Self {
        Tag(Repr::Int(u64::from(n)))
    }
}

/// The tag of the `u64` with the same bits: `Tag::from(5i64) ==
/// Tag::from(5u64)` (and `-1i64` is `u64::MAX`'s tag).
impl From<i64> for Tag {
    fn from(n: i64) -> Self {
        Tag(Repr::Int(n as u64))
    }
}

/// As the `i64` of the same value: `Tag::from(5) == Tag::from(5u64)`.
impl From<i32> for Tag {
    fn from(n: i32) -> Self {
        Tag::from(i64::from(n))
    }
}

/// The tag of the same `u64`.
impl From<usize> for Tag {
    fn from(n: usize) -> Self {
        Tag(Repr::Int(n as u64))
    }
}

impl From<&Tag> for Tag {
    fn from(t: &Tag) -> Self {
        t.clone()
    }
}

/// An entry's tags: a few inline, more on the heap.
pub(crate) type Tags = SmallVec<[Tag; 2]>;

/// One shard's tag index. Each distinct tag alive in the shard is interned
/// as a `u32` id, so a tagged entry costs the index a record of its token and
/// two ids (12 bytes), plus its token in each of its tags' groups (4 bytes a
/// tag), before the tables' overhead; only an entry with more than two tags
/// has a second record. Each distinct tag costs its id's record and its
/// group besides (a clone of the tag: a string tag's text stays allocated
/// while some entry carries it), which a tag of an entry's own pays alone:
/// 1M entries with 2 tags shared by many take 106 bytes per entry, each
/// with a tag of its own 165, untagged 51 (`examples/memory.rs`).
#[derive(Debug, Default)]
pub(crate) struct TagIndex {
    /// Each distinct tag → its id.
    ids: HashMap<Tag, u32, RandomState>,
    /// By id: the tag's entries (`None` for a free id).
    groups: Vec<Option<Group>>,
    /// Ids free for reuse.
    free: Vec<u32>,
    /// Each tagged entry's first two tag ids (`NO_TAG` where it has fewer) …
    of_token: HashMap<Token, [u32; 2], RandomState>,
    /// … and the rest, for entries with more than two.
    more: HashMap<Token, Vec<u32>, RandomState>,
}

/// The entries carrying one tag.
#[derive(Debug)]
struct Group {
    tag: Tag,
    tokens: Members,
}

/// A group's tokens: one kept inline, more in a set. A tag carried by one
/// entry (an entity's id) is the common case, and a set of one costs a table
/// of its own: 1M entries each with a tag of its own took 225.9 bytes per
/// entry with a set for every group, 164.6 with one token inline and a set
/// boxed (`cargo run --release --example memory`; untagged: 51.0).
#[derive(Debug)]
enum Members {
    One(Token),
    /// Boxed: the group of a tag of its own stays small (a set is 48 bytes).
    Many(Box<HashSet<Token, RandomState>>),
}

impl Members {
    /// Adds `token`; false if it was there.
    fn insert(&mut self, token: Token) -> bool {
        match self {
            Self::One(one) if *one == token => false,
            Self::One(one) => {
                let mut set = HashSet::with_capacity_and_hasher(2, RandomState::default());
                set.insert(*one);
                set.insert(token);
                *self = Self::Many(Box::new(set));
                true
            }
            Self::Many(set) => set.insert(token),
        }
    }

    /// Takes `token` out; true if the group is then empty.
    fn remove(&mut self, token: Token) -> bool {
        match self {
            Self::One(one) => *one == token,
            Self::Many(set) => {
                set.remove(&token);
                match set.len() {
                    0 => true,
                    1 => {
                        // Back inline, its set's room given back.
                        if let Some(&last) = set.iter().next() {
                            *self = Self::One(last);
                        }
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = Token> + '_ {
        let (one, many) = match self {
            Self::One(one) => (Some(*one), None),
            Self::Many(set) => (None, Some(set.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    #[cfg(any(test, feature = "__fuzz"))]
    fn contains(&self, token: Token) -> bool {
        match self {
            Self::One(one) => *one == token,
            Self::Many(set) => set.contains(&token),
        }
    }
}

/// The room (entries or tags) an index may keep while it indexes nothing:
/// a shard whose only tagged entry comes and goes keeps its index rather
/// than building it anew each time (5 allocations a round trip, against
/// none kept: `tests/allocations.rs`), and a shard whose many tagged
/// entries left gives the room of its peak back.
const KEPT_EMPTY: usize = 64;

/// An empty slot of an entry's inline ids.
const NO_TAG: u32 = u32::MAX;

impl TagIndex {
    /// Gives `token` exactly `tags` (a write replaces the old value's tags).
    pub(crate) fn set(&mut self, token: Token, tags: &[Tag]) {
        self.forget(token);
        if tags.is_empty() {
            return;
        }
        let mut inline = [NO_TAG; 2];
        let mut more = Vec::new();
        for tag in tags {
            let Some(id) = self.join(tag, token) else {
                continue;
            };
            match inline.iter_mut().find(|slot| **slot == NO_TAG) {
                Some(slot) => *slot = id,
                None => more.push(id),
            }
        }
        self.of_token.insert(token, inline);
        if !more.is_empty() {
            self.more.insert(token, more);
        }
    }

    /// Adds `token` to `tag`'s group, made if the shard has no entry with
    /// the tag yet; returns the tag's id, or `None` if the token was in the
    /// group already. Called by [`set`](Self::set) once the token is in no
    /// group, so a token found is a tag repeated in the write's tags.
    /// (Searching the ids taken so far instead made an entry of n tags cost
    /// n² steps under the shard's lock: 64,000 tags took 194 ms.)
    fn join(&mut self, tag: &Tag, token: Token) -> Option<u32> {
        if let Some(&id) = self.ids.get(tag) {
            let group = self.groups[id as usize].as_mut()?;
            return group.tokens.insert(token).then_some(id);
        }
        let group = Group {
            tag: tag.clone(),
            tokens: Members::One(token),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.groups[id as usize] = Some(group);
                id
            }
            None => {
                self.groups.push(Some(group));
                (self.groups.len() - 1) as u32
            }
        };
        self.ids.insert(tag.clone(), id);
        Some(id)
    }

    /// The tags `token` carries.
    pub(crate) fn tags_of(&self, token: Token) -> Vec<Tag> {
        let Some(inline) = self.of_token.get(&token) else {
            return Vec::new();
        };
        let more = self.more.get(&token).map_or(&[][..], Vec::as_slice);
        inline
            .iter()
            .chain(more)
            .filter(|&&id| id != NO_TAG)
            .filter_map(|&id| self.groups[id as usize].as_ref().map(|g| g.tag.clone()))
            .collect()
    }

    /// Takes `token` out of the index (it left the shard or lost its tags).
    pub(crate) fn forget(&mut self, token: Token) {
        let Some(inline) = self.of_token.remove(&token) else {
            return;
        };
        let more = if self.more.is_empty() {
            Vec::new()
        } else {
            self.more.remove(&token).unwrap_or_default()
        };
        for id in inline.into_iter().filter(|&id| id != NO_TAG).chain(more) {
            let Some(group) = &mut self.groups[id as usize] else {
                continue;
            };
            if group.tokens.remove(token) {
                self.release(id);
            }
        }
    }

    /// Frees an id whose tag no entry carries any more.
    fn release(&mut self, id: u32) {
        if let Some(group) = self.groups[id as usize].take() {
            self.ids.remove(&group.tag);
            self.free.push(id);
        }
    }

    /// The tokens carrying `tag`, in no order. Nothing changes: the caller
    /// removes their entries, each `forget`ting its tags, and the tag's id is
    /// freed with its last carrier.
    pub(crate) fn carriers(&self, tag: &Tag) -> Vec<Token> {
        self.ids
            .get(tag)
            .and_then(|&id| self.groups[id as usize].as_ref())
            .map_or_else(Vec::new, |g| g.tokens.iter().collect())
    }

    /// Whether the index holds room for more than [`KEPT_EMPTY`] tagged
    /// entries or tags: worth giving back once it indexes none.
    pub(crate) fn roomy(&self) -> bool {
        self.of_token.capacity().max(self.ids.capacity()) > KEPT_EMPTY
    }

    /// Tagged entries indexed.
    pub(crate) fn len(&self) -> usize {
        self.of_token.len()
    }

    /// Distinct tags indexed.
    #[cfg(test)]
    fn tags(&self) -> usize {
        self.ids.len()
    }

    /// Both directions agree, ids and groups agree, and only `live` tokens
    /// are named.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn validate(&self, live: &dyn Fn(Token) -> bool) {
        let ids_of = |t: &Token| -> Vec<u32> {
            let mut ids: Vec<u32> = self.of_token[t]
                .iter()
                .copied()
                .filter(|&id| id != NO_TAG)
                .collect();
            ids.extend(self.more.get(t).into_iter().flatten().copied());
            ids
        };
        for (tag, &id) in &self.ids {
            let group = self.groups[id as usize]
                .as_ref()
                .expect("an interned id has a group");
            assert_eq!(&group.tag, tag, "id and group disagree");
            if let Members::Many(set) = &group.tokens {
                assert!(set.len() > 1, "a set of {} kept for {tag:?}", set.len());
            }
            for t in group.tokens.iter() {
                assert!(live(t), "tag index names a departed token");
                assert!(ids_of(&t).contains(&id), "indexes disagree");
            }
        }
        let used = self.groups.iter().filter(|g| g.is_some()).count();
        assert_eq!(used, self.ids.len(), "a group without an id");
        assert_eq!(used + self.free.len(), self.groups.len(), "an id lost");
        for t in self.of_token.keys() {
            assert!(live(*t), "tag index names a departed token");
            let ids = ids_of(t);
            assert!(!ids.is_empty(), "an entry indexed without tags");
            for id in ids {
                let group = self.groups[id as usize].as_ref().expect("a live id");
                assert!(group.tokens.contains(*t), "indexes disagree");
            }
        }
        assert!(self.more.keys().all(|t| self.of_token.contains_key(t)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_and_forget_cleans_up() {
        let mut index = TagIndex::default();
        index.set(1, &["a".into(), "b".into(), "a".into()]);
        index.set(2, &["b".into()]);
        assert_eq!(index.carriers(&Tag::from("a")).len(), 1);
        assert_eq!(index.carriers(&Tag::from("b")).len(), 2);
        index.set(1, &[Tag::from(9u64)]);
        assert_eq!(index.carriers(&Tag::from("a")).len(), 0);
        index.validate(&|_| true);
        assert_eq!(index.carriers(&9u64.into()), vec![1]);
        index.forget(1);
        assert!(
            index.carriers(&9u64.into()).is_empty(),
            "the last carrier frees the tag"
        );
        index.validate(&|_| true);
        index.forget(2);
        assert_eq!(index.len(), 0);
        assert_eq!(index.tags(), 0, "no empty groups left behind");
        index.validate(&|_| true);
    }

    #[test]
    fn entries_with_many_tags_and_reused_ids() {
        let mut index = TagIndex::default();
        let five: Vec<Tag> = (0..5u64).map(Tag::from).collect();
        index.set(1, &five);
        index.set(2, &five[3..]);
        index.validate(&|_| true);
        assert_eq!(index.carriers(&Tag::from(4u64)).len(), 2);
        let mut carriers = index.carriers(&Tag::from(3u64));
        carriers.sort_unstable();
        assert_eq!(carriers, vec![1, 2]);
        // Forgetting the carriers frees the ids of tags no one carries any
        // more, and a new tag reuses one.
        index.forget(1);
        index.forget(2);
        assert_eq!(index.tags(), 0);
        index.set(3, &["new".into()]);
        index.validate(&|_| true);
        assert_eq!(index.carriers(&Tag::from("new")).len(), 1);
        assert!(index.carriers(&Tag::from(3u64)).is_empty());
        assert_eq!((index.len(), index.tags()), (1, 1));
        index.validate(&|_| true);
    }

    /// A group of one keeps its token inline; a second carrier makes it a
    /// set, and the set goes back inline when one is left. A tag repeated
    /// in a write, past the two kept inline too, counts once.
    #[test]
    fn groups_of_one_stay_inline_and_repeats_count_once() {
        let mut index = TagIndex::default();
        let is_set = |index: &TagIndex, tag: &str| {
            let id = index.ids[&Tag::from(tag)];
            matches!(
                index.groups[id as usize].as_ref().map(|g| &g.tokens),
                Some(Members::Many(_))
            )
        };
        let tags: Vec<Tag> = ["x", "y", "z", "x", "z", "w", "y"]
            .into_iter()
            .map(Tag::from)
            .collect();
        index.set(1, &tags);
        index.validate(&|_| true);
        assert_eq!(index.tags(), 4);
        assert_eq!(index.more[&1].len(), 2, "z and w past the inline two");
        assert!(!is_set(&index, "x"));
        index.set(2, &["x".into(), "x".into()]);
        assert!(is_set(&index, "x"));
        let mut carriers = index.carriers(&"x".into());
        carriers.sort_unstable();
        assert_eq!(carriers, vec![1, 2]);
        index.set(3, &["x".into()]);
        index.forget(1);
        assert!(is_set(&index, "x"), "two carriers left");
        index.validate(&|_| true);
        index.forget(3);
        assert!(!is_set(&index, "x"), "one carrier back inline");
        assert_eq!(index.carriers(&"x".into()), vec![2]);
        assert!(index.carriers(&"z".into()).is_empty());
        index.validate(&|_| true);
        index.forget(2);
        assert_eq!((index.len(), index.tags()), (0, 0));
    }

    #[test]
    fn two_tags_need_no_allocation_of_their_own() {
        let tags: Tags = ["x".into(), 1u64.into()].into_iter().collect();
        assert!(!tags.spilled());
    }
}
