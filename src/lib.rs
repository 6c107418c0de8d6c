//! # larder
//!
//! An embeddable, in-process, concurrent cache: a lock-sharded store with
//! adaptive W-TinyLFU eviction by default (exact LRU or LFU per shard on
//! request), bounded by entry count or by weight, with expiry (time-to-live,
//! time-to-idle, per-entry and computed lifetimes on hierarchical timer
//! wheels), tag groups, single-flight loading, read-through / write-through /
//! write-back in front of a store, eviction listeners and statistics.
//!
//! ```
//! use larder::{Cache, Eviction, RemovalCause};
//! use std::sync::{Arc, Mutex};
//!
//! let evicted = Arc::new(Mutex::new(Vec::new()));
//! let log = evicted.clone();
//! let cache: Cache<u64, String> = Cache::builder()
//!     .max_capacity(2)
//!     .eviction(Eviction::Lru)
//!     .eviction_listener(move |k, _v, cause| log.lock().unwrap().push((k, cause)))
//!     .build()?;
//!
//! cache.insert(1, "one".into());
//! cache.insert(2, "two".into());
//! assert_eq!(cache.get(&1).as_deref(), Some("one"));
//! cache.insert(3, "three".into()); // 2 is the least recently used
//! assert_eq!(*evicted.lock().unwrap(), vec![(2, RemovalCause::Size)]);
//! # Ok::<(), larder::BuildError>(())
//! ```
//!
//! ## Features
//!
//! | capability | how |
//! |---|---|
//! | bound by count or weight | [`CacheBuilder::max_capacity`], [`CacheBuilder::weigher`] |
//! | eviction | [`Eviction::TinyLfu`] (default), [`Eviction::Lru`], [`Eviction::Lfu`] |
//! | expiry | [`CacheBuilder::time_to_live`], [`CacheBuilder::time_to_idle`], [`Cache::insert_with`] + [`EntryOptions::ttl`], [`Expiry`]; [`Clock::mock`] for tests; [`Cache::run_pending_tasks`] |
//! | loading | [`Cache::get_or_load`], [`Cache::try_get_or_load`], [`Cache::optionally_get_or_load`], [`Cache::get_or_load_with`] and `_async` twins: one load per key however many callers |
//! | read-modify-write | [`Cache::compute`] (or [`Cache::compute_by_ref`]) with a [`Compute`]: no other write of the key lands between the read and the write; write-through caches have a `compute` that reads and writes through the store |
//! | tags | [`EntryOptions::tags`], [`Cache::invalidate_tag`], [`Cache::invalidate_tags`], [`Cache::invalidate_entries_if`] |
//! | write policies | a [`Store`] (or [`AsyncStore`]) behind [`CacheBuilder::read_through`], [`CacheBuilder::write_through`] or [`CacheBuilder::write_back`] with [`WriteBack`] settings |
//! | listener | [`CacheBuilder::eviction_listener`], told each [`RemovalCause`] |
//! | statistics | [`Cache::stats`], hit/miss counting opt-in via [`CacheBuilder::record_stats`] |
//! | borrowed lookups | `get(&str)` on a `Cache<String, _>` |
//!
//! ## How it works
//!
//! A key is hashed once (with a randomly seeded foldhash by default) and the
//! hash mixed once more; bits 32 and up of the mixed hash pick one of a
//! power-of-two number of shards, and the shard's table reuses the same hash.
//! A shard holds:
//!
//! * the **map**: a table of `u32` tokens into a slab of entries, twelve
//!   tokens and their one-byte tags to a cache line (so a lookup reads one
//!   line of the table, then the entry), behind a cache-padded reader-writer
//!   lock;
//! * the **policy**, inside the map behind a mutex of its own: writers own it
//!   through the write lock without touching the mutex; readers only ever
//!   `try_lock` it, to apply buffered reads for LRU and LFU;
//! * a **read ring** (LRU and LFU): a bounded, lock-free buffer of the tokens of
//!   recent hits.
//!
//! * **Reads** take the map lock for reading and find the entry and clone its
//!   value in one probe. Under LRU and LFU they append its token to the ring. A
//!   read never waits for the policy: when the ring is full, the reader
//!   `try_lock`s the policy and applies the buffered reads, then its own; if
//!   someone else holds it, the read is dropped, which costs the policy a
//!   little precision and only happens under contention. A drain hands the
//!   ring's slots back one by one, so reads arriving during it find room.
//! * **Writes** take the map lock, apply the buffered reads in order, then
//!   insert, replace or remove, and evict in policy order until the shard is
//!   within its share of the capacity. Evicted entries reach the listener after
//!   the lock is released.
//! * **Policies** see only tokens (and ask the shard for an entry's hash or
//!   weight). LRU keeps one intrusive list; LFU keeps O(1) frequency buckets, each
//!   an intrusive list so ties break by recency. With one shard and one thread
//!   their eviction order is exact. W-TinyLFU keeps an LRU window and a
//!   probation/protected SLRU on the same links, a 4-bit count-min sketch in
//!   64-byte blocks (allocated once the shard is half full, aged by halving), a
//!   table of 16-bit ghosts whose slots each hold a key recently turned away
//!   at admission (a key turned away again while its ghost remains is
//!   admitted instead) and a key main evicted recently, and a hill climber that resizes the
//!   window per sample period. Between the climber's decisions the ghosts
//!   nudge it, as ARC moves its split: a key let in by its ghost grows the
//!   window by its weight, a key turned away that main evicted a short while
//!   ago shrinks it, the nudge bounded at 5% of the capacity either way
//!   around the window the climber chose.
//! * **Deferred reads** (W-TinyLFU): a hit only bumps a small read counter in
//!   what would be the entry's padding (capped at 1, after which a hit writes
//!   nothing) and a hit count beside the lock word, in the cache line the read
//!   lock has just written. The policy collects an entry's reads when it next
//!   looks at it — at the head of the window, probation or protected — adding
//!   them to the entry's count and giving the entry the second chance the reads
//!   earned (back of the window, promotion to protected). No read is lost to
//!   contention and readers never touch the policy.
//! * **Resident counts** (W-TinyLFU): a resident's frequency lives in its byte
//!   of policy state (region, count, a read mark), halved when the sketch ages;
//!   the sketch counts absent keys, and a key read while resident raises its
//!   counters to its count when it leaves. Collecting reads and weighing a
//!   candidate touch no sketch line.
//!
//! ## Consistency
//!
//! Operations on one key are linearizable (one shard, one lock). `len`,
//! `weighted_size`, `iter`, `stats`, `invalidate_all`, `invalidate_tag(s)` and
//! `invalidate_entries_if` visit shards one by one and are weakly
//! consistent under concurrent writes. After any call returns, the weight is at
//! most the capacity.
//!
//! ## Write policies
//!
//! The policy is `Cache`'s last type parameter, [`CacheAside`] by default.
//! With a store, `get` reads through (one load per key at a time) and `put`,
//! `delete` and `flush` send writes where the policy says: the cache alone
//! (read-through), the store then the cache, serialized per key
//! (write-through), or the cache and a coalescing queue drained in batches
//! by a flusher thread (write-back). Write-back never drops an acknowledged
//! write: an evicted or expired dirty entry reads as its pending value until
//! the store has it, and a write the store keeps refusing after its retries
//! is reported by `flush` or `close`. See the [`WriteBehind`] and
//! [`WriteBack`] docs for every guarantee, and what a crash can lose.
//!
//! ## Memory
//!
//! Per entry: one slot holding the key and value, a 4-byte weight, 8 bytes of
//! policy links, the read counter and the policy's state byte (plus, outside
//! it, 4 bytes for LFU's bucket, or for W-TinyLFU about 8 of sketch and 2 of
//! ghosts), and a 4-byte table slot plus a tag byte in twelve-slot buckets
//! that hold ten keys on average at most (the table doubles beyond). For `u64` keys and values that measures 51.0 bytes
//! per entry with W-TinyLFU, 40.6 with LRU and 44.8 with LFU;
//! run `cargo run --release --example memory` to measure it beside moka and
//! quick_cache.
//!
//! ## Panics and bad input
//!
//! Invalid settings are a [`BuildError`], never a panic. An entry heavier than
//! the per-entry limit, the smallest shard's capacity
//! ([`Cache::max_entry_weight`]), is refused ([`Cache::try_insert`] hands it
//! back). A
//! panicking weigher runs before any shard lock is taken; a panicking listener
//! runs after it is released; either way the cache stays consistent and usable.
//! A key type whose `Hash` panics may do so wherever the cache hashes a key,
//! its own or another's (a write hashes the keys it evicts): the panic reaches
//! the caller, the shard stays within its capacity, and a write that was
//! making room when it panicked is undone (its evictions stay done, and the
//! listener hears of them and of the undone entry before the panic goes on).

mod builder;
mod cache;
mod expiry;
mod hash;
mod loader;
mod policy;
mod prefetch;
mod stats;
mod store;
mod sync;
mod tags;
mod write;

#[cfg(test)]
mod tests;

pub use builder::{BuildError, CacheBuilder, MAX_SHARDS, MIN_SWEEP_INTERVAL};
pub use cache::{Cache, Compute, Computed, Iter, LoadedEntry, Rejected, RemovalCause};
pub use expiry::{Clock, EntryOptions, Expiry, MockClock};
pub use hash::{DefaultHashBuilder, DefaultHasher};
pub use policy::Eviction;
pub use stats::CacheStats;
pub use tags::Tag;
pub use write::{
    AsyncStore, Backpressure, CacheAside, FailedWrite, Failure, FlushError, Op, ReadThrough,
    Spawned, Store, WriteBack, WriteBehind, WriteError, WritePolicy, WriteStats, WriteThrough,
};

/// Replays fuzzer bytes as timer-wheel operations against a model (the
/// `wheel` fuzz target); panics on a disagreement.
#[cfg(feature = "__fuzz")]
#[doc(hidden)]
pub fn fuzz_wheel(data: &[u8]) {
    expiry::wheel::fuzz(data);
}

/// The README's examples, compiled and run as doc tests so that they cannot
/// go stale unnoticed.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
