//! Tag groups: entries carry tags, and one call invalidates every entry with a
//! tag.
//!
//! Each shard keeps an index from tag to the tokens that carry it, and from
//! token to its tags, both only for tagged entries (an untagged cache has no
//! index at all, and untagged entries cost nothing on any path). Every removal
//! of a tagged entry — eviction, expiry, replacement, removal — takes it out of
//! the index, so the index holds exactly the tagged entries alive.

use std::fmt;
use std::sync::Arc;

use foldhash::fast::RandomState;
use hashbrown::{HashMap, HashSet};
use smallvec::SmallVec;

use crate::store::Token;

/// A label for a group of entries: built from a string or an integer, cheap to
/// clone (an integer, or a shared string).
///
/// ```
/// use larder::Tag;
///
/// assert_eq!(Tag::from("user:7"), Tag::from(String::from("user:7")));
/// assert_ne!(Tag::from(7u64), Tag::from("7"));
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

impl From<&Tag> for Tag {
    fn from(t: &Tag) -> Self {
        t.clone()
    }
}

/// An entry's tags: a few inline, more on the heap.
pub(crate) type Tags = SmallVec<[Tag; 2]>;

/// One shard's tag index.
#[derive(Debug, Default)]
pub(crate) struct TagIndex {
    by_tag: HashMap<Tag, HashSet<Token, RandomState>, RandomState>,
    of_token: HashMap<Token, Tags, RandomState>,
}

impl TagIndex {
    /// Gives `token` exactly `tags` (a write replaces the old value's tags).
    pub(crate) fn set(&mut self, token: Token, tags: &[Tag]) {
        self.forget(token);
        if tags.is_empty() {
            return;
        }
        let mut own = Tags::new();
        for tag in tags {
            if own.contains(tag) {
                continue;
            }
            self.by_tag.entry(tag.clone()).or_default().insert(token);
            own.push(tag.clone());
        }
        self.of_token.insert(token, own);
    }

    /// Takes `token` out of the index (it left the shard or lost its tags).
    pub(crate) fn forget(&mut self, token: Token) {
        let Some(tags) = self.of_token.remove(&token) else {
            return;
        };
        for tag in tags {
            if let Some(tokens) = self.by_tag.get_mut(&tag) {
                tokens.remove(&token);
                if tokens.is_empty() {
                    self.by_tag.remove(&tag);
                }
            }
        }
    }

    /// Takes out the tokens carrying `tag` (the caller removes their entries,
    /// which then `forget` their other tags).
    pub(crate) fn take(&mut self, tag: &Tag) -> Vec<Token> {
        self.by_tag
            .remove(tag)
            .map(|t| t.into_iter().collect())
            .unwrap_or_default()
    }

    /// Tagged entries indexed.
    pub(crate) fn len(&self) -> usize {
        self.of_token.len()
    }

    /// Both directions agree and name only `live` tokens.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn validate(&self, live: &dyn Fn(Token) -> bool) {
        for (tag, tokens) in &self.by_tag {
            assert!(!tokens.is_empty(), "empty set kept for {tag:?}");
            for t in tokens {
                assert!(live(*t), "tag index names a departed token");
                assert!(self.of_token[t].contains(tag), "indexes disagree");
            }
        }
        for (t, tags) in &self.of_token {
            assert!(live(*t), "tag index names a departed token");
            for tag in tags {
                assert!(self.by_tag[tag].contains(t), "indexes disagree");
            }
        }
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
        assert_eq!(index.by_tag[&Tag::from("a")].len(), 1);
        assert_eq!(index.by_tag[&Tag::from("b")].len(), 2);
        index.set(1, &[Tag::from(9u64)]);
        assert!(!index.by_tag.contains_key(&Tag::from("a")));
        assert_eq!(index.take(&9u64.into()), vec![1]);
        index.forget(1);
        index.validate(&|_| true);
        index.forget(2);
        assert_eq!(index.len(), 0);
        assert!(index.by_tag.is_empty(), "no empty sets left behind");
        index.validate(&|_| true);
    }

    #[test]
    fn two_tags_need_no_allocation_of_their_own() {
        let tags: Tags = ["x".into(), 1u64.into()].into_iter().collect();
        assert!(!tags.spilled());
    }
}
