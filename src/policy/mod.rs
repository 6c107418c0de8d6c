//! Eviction policies. A policy sees only slab tokens: it is told when a token
//! becomes resident, is read, or leaves, and it names the next victim. It never
//! sees keys, values or locks.

mod lfu;
pub(crate) mod list;
mod lru;

use crate::store::Token;

/// Which entries make way when the cache is full.
///
/// ```
/// use larder::{Cache, Eviction};
///
/// let cache: Cache<u32, u32> = Cache::builder()
///     .max_capacity(1_000)
///     .eviction(Eviction::Lfu)
///     .build()
///     .unwrap();
/// cache.insert(1, 1);
/// assert_eq!(cache.get(&1), Some(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Eviction {
    /// Least recently used: every read moves the entry to the back of its shard's
    /// list; the front is evicted. Exact per shard.
    #[default]
    Lru,
    /// Least frequently used: the entry read the fewest times goes first, ties
    /// broken by recency. Counts never age, so LFU suits stable popularity.
    Lfu,
}

/// The per-shard policy state, chosen at build time.
#[derive(Debug)]
pub(crate) enum Policy {
    Lru(lru::Lru),
    Lfu(lfu::Lfu),
}

impl Policy {
    pub(crate) fn new(eviction: Eviction) -> Self {
        match eviction {
            Eviction::Lru => Self::Lru(lru::Lru::default()),
            Eviction::Lfu => Self::Lfu(lfu::Lfu::new()),
        }
    }

    pub(crate) fn on_insert(&mut self, token: Token) {
        match self {
            Self::Lru(p) => p.on_insert(token),
            Self::Lfu(p) => p.on_insert(token),
        }
    }

    /// A read of `token`; ignored when the policy does not hold it (a stale
    /// buffered read of an entry that has since left).
    pub(crate) fn on_access(&mut self, token: Token) {
        match self {
            Self::Lru(p) => p.on_access(token),
            Self::Lfu(p) => p.on_access(token),
        }
    }

    pub(crate) fn on_remove(&mut self, token: Token) {
        match self {
            Self::Lru(p) => p.on_remove(token),
            Self::Lfu(p) => p.on_remove(token),
        }
    }

    /// The next entry to evict, never `keep` (pass `list::NIL` to allow any).
    pub(crate) fn victim(&self, keep: Token) -> Option<Token> {
        match self {
            Self::Lru(p) => p.victim(keep),
            Self::Lfu(p) => p.victim(keep),
        }
    }

    pub(crate) fn clear(&mut self) {
        match self {
            Self::Lru(p) => p.clear(),
            Self::Lfu(p) => p.clear(),
        }
    }

    /// Resident tokens in eviction order (first = next victim).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn order(&self) -> Vec<Token> {
        match self {
            Self::Lru(p) => p.order(),
            Self::Lfu(p) => p.order(),
        }
    }
}
