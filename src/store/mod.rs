//! The sharded store. A shard is a lock and a ring:
//!
//! * the **map** — a table of `u32` tokens (twelve to a cache line, see
//!   `table`) into a slab of entries, and the policy — behind a reader-writer lock: lookups share it,
//!   writes own it;
//! * the policy sits behind a mutex of its own inside the map, so that readers
//!   can apply buffered reads to it without blocking each other's lookups;
//!   writers reach it through the write lock (`Mutex::get_mut`, no atomics);
//! * the **read buffer**, a lock-free ring that lookups append tokens to, for
//!   the policies that apply every read in order (LRU, LFU). W-TinyLFU instead
//!   collects reads from the entries themselves (`Entry::note_read`).
//!
//! Writers take the map lock, drain the ring, and change the map and the policy
//! together; readers never wait on the policy (they `try_lock` it to drain a
//! full ring). The store knows nothing of time: it asks the policy for victims
//! and hands removed entries back to the caller, who notifies listeners after
//! the lock is released.

mod read_buffer;
mod slab;
mod slots;
pub(crate) mod table;
mod writer;

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use smallvec::SmallVec;

use crate::expiry::clock::{ticks, Clock};
use crate::expiry::wheel::Wheel;
use crate::expiry::{Deadlines, NEVER};
use crate::policy::list::DETACHED;
use crate::policy::{Entries, Eviction, Policy, SketchLines};
use crate::sync::{
    AtomicBool, AtomicU32, AtomicU64, Mutex, Ordering, ReadGuard, RwLock, WriteGuard,
};
use crate::tags::{Tag, TagIndex};
use crate::RemovalCause;
use read_buffer::{ReadBuffer, Recorded};
use slab::Slab;
pub(crate) use slab::{Entry, Token, MAX_WEIGHT};
use table::Table;
pub(crate) use writer::ShardWriter;

/// Entries taken out under a shard lock, to be handed to the listener (or
/// dropped) after the lock is released.
pub(crate) type Removed<K, V> = SmallVec<[(K, V, RemovalCause); 2]>;

/// The bit of a write time that marks a refresh under way (see
/// [`Map::start_refresh`]): clear in every time the clock gives (a mock
/// clock stops at 2^63 − 1 nanoseconds, a real one would take 292 years).
pub(crate) const REFRESHING: u64 = 1 << 63;

/// Write-side counters, kept under the map's write lock (so plain integers).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) inserts: u64,
    pub(crate) updates: u64,
    pub(crate) evictions: u64,
    pub(crate) evicted_weight: u64,
    pub(crate) invalidations: u64,
    pub(crate) rejections: u64,
    pub(crate) expirations: u64,
    pub(crate) tag_invalidations: u64,
}

/// Why a write did not store its entry.
#[derive(Debug)]
pub(crate) enum Refused<K, V> {
    /// It alone outweighs the shard.
    TooHeavy(K, V),
    /// Its deadline had already passed (a zero time-to-live).
    Expired(K, V),
}

/// The deadlines for `(key, value, now, the live entry's deadline)`.
pub(crate) type DeadlinesFn<'a, K, V> = &'a dyn Fn(&K, &V, u64, Option<u64>) -> Deadlines;

/// What a write needs besides the entry: the time, the new entry's deadlines
/// and its tags.
pub(crate) struct WriteContext<'a, K, V> {
    pub(crate) clock: &'a Clock,
    /// Start keeping deadlines in this shard if it does not yet (a write with a
    /// per-entry time-to-live).
    pub(crate) start: bool,
    pub(crate) deadlines: DeadlinesFn<'a, K, V>,
    pub(crate) tags: &'a [Tag],
    /// Note the time of the write (the cache refreshes entries).
    pub(crate) stamp: bool,
}

/// `spin_loop` hints a reader spins through behind a writer before it parks
/// (some tens of microseconds), looking at the lock after each one. Polling
/// each hint instead of backing off to 16 hints apart (as before) lets the
/// reader in as the write ends; on the throughput benchmark's mix with two
/// threads (two caches in one process taking turns, one per polling scheme),
/// the median of the paired ratios was 1.00–1.08 over eight runs (above
/// 1.0 in seven).
const READ_SPINS: u32 = 1_000;

/// Entries a write may expire on its way out: maintenance stays bounded.
const WRITE_EXPIRY_BATCH: usize = 16;

/// Batches of expiry a write over the capacity runs for room before it evicts
/// by policy: up to 512 deadlines moved down the wheel's levels or reclaimed,
/// and more only while each batch makes room (see [`FIT_EXPIRY_CEILING`]).
/// Bounded, not "until the wheel has nothing due": moving deadlines down
/// frees nothing, and a full shard holding a million deadlines in one slot
/// when the clock reached it ran them all down under the write lock, in one
/// insert: 7.1–7.5 ms, where the inserts before took 0.2 µs (median). With
/// the bound that insert took 5.2–6.9 µs, and the 20,000 after it, doing the
/// rest of the cascade, a median of 0.21–0.28 µs and at most 19.5 µs (a
/// one-shard LRU cache of 1M entries on a mock clock; five runs). Entries
/// already expired cost two steps each, however high their slot (see
/// `Wheel::advance`), so a write still reclaims hundreds of them before it
/// evicts a live one.
const FIT_EXPIRY_BATCHES: usize = 32;

/// The most batches of expiry a write over the capacity runs, all but the
/// first [`FIT_EXPIRY_BATCHES`] only while each makes room: a heavy write
/// may need thousands of light expired entries reclaimed (as it would need
/// them evicted otherwise). Estimating the batches from the weight it is
/// over instead either ran whole cascades (weightless entries pull a mean
/// weight down; weights in bytes) or evicted live entries while expired ones
/// lighter than the mean held the room.
const FIT_EXPIRY_CEILING: usize = 4096;

/// Per-entry deadlines and the wheel that reclaims expired entries, for caches
/// with expiry.
#[derive(Debug)]
pub(crate) struct Timers {
    /// Nanoseconds on the cache's clock; `NEVER` for none. Reads may move a
    /// deadline (time-to-idle) under the read lock, hence atomic; the wheel
    /// learns of a moved deadline when it fires. In a cache that refreshes,
    /// each token's deadline is followed by its entry's write time (see
    /// [`stamp`](Self::stamp)), so that a hit finds both on one line.
    at: Vec<AtomicU64>,
    /// 1, or 2 in a cache that refreshes: the slots of `at` a token takes.
    stride: usize,
    /// The latest a read may move `at` to; grown only as far as the last
    /// token with a cap (time-to-idle caches), `NEVER` beyond.
    cap: Vec<u64>,
    wheel: Wheel,
    /// Tokens the wheel handed out in their deadline's tick but before the
    /// deadline, earliest deadline first: every expiry pass takes those now
    /// due, so that one run at or after a deadline reclaims its entry even
    /// when an earlier pass in the same tick found it not yet due. Entries
    /// may be stale (a token since removed, or filed on the wheel again):
    /// they are dropped when taken.
    early: BinaryHeap<Reverse<(u64, Token)>>,
    /// Per token, the deadline it was last pushed on `early` with (`NEVER`
    /// once taken): a token rewritten again and again within one tick is
    /// pushed once per deadline, not once per write.
    early_at: Vec<u64>,
    /// Tokens the wheel hands out, reused between calls.
    due: Vec<Token>,
    /// Tokens whose deadline a read moved earlier than the wheel has it filed
    /// (or gave a deadline where there was none): the next writer files them
    /// again. Readers push under this lock, on that rare path only; writers,
    /// who exclude readers, take them without it.
    refile: Mutex<Vec<Token>>,
    /// Set instead of queueing once the queue holds as many tokens as there
    /// are slots (reads moving deadlines earlier with no write in between):
    /// the next writer files every token again, and the queue stays bounded.
    refile_all: AtomicBool,
}

impl Timers {
    /// No deadlines yet; `refreshing`: the shard's writes note their time.
    pub(crate) fn new(refreshing: bool) -> Self {
        Self {
            at: Vec::new(),
            stride: if refreshing { 2 } else { 1 },
            cap: Vec::new(),
            wheel: Wheel::default(),
            early: BinaryHeap::new(),
            early_at: Vec::new(),
            due: Vec::new(),
            refile: Mutex::default(),
            refile_all: AtomicBool::new(false),
        }
    }

    /// The same with nothing kept (a shard emptied).
    pub(crate) fn reset(&mut self) {
        *self = Self::new(self.stride == 2);
    }

    /// `token`'s deadline slot, if it has one.
    #[inline]
    fn slot(&self, token: Token) -> Option<&AtomicU64> {
        self.at.get(token as usize * self.stride)
    }

    /// Files `token`, due at `at`, again after a pass took it off the wheel
    /// (nothing for `NEVER`): among the early tokens if `at`'s tick has begun
    /// by `now`, so that every pass within the tick looks at it again, and on
    /// the wheel otherwise.
    fn file_again(&mut self, token: Token, at: u64, now: u64) {
        if at == NEVER {
            return;
        }
        if ticks(at) <= ticks(now) {
            let i = token as usize;
            if self.early_at.len() <= i {
                self.early_at.resize(i + 1, NEVER);
            }
            if self.early_at[i] != at {
                self.early_at[i] = at;
                self.early.push(Reverse((at, token)));
                // Pushes for a deadline since moved within the tick are
                // stale: dropped when they outnumber the tokens, so that the
                // heap stays within twice the tokens. A clock standing still
                // (a mock) and deadlines changing from write to write within
                // the tick grew it by one entry a write, without bound.
                if self.early.len() > 2 * self.early_at.len().max(64) {
                    let early_at = &self.early_at;
                    self.early
                        .retain(|Reverse((at, t))| early_at.get(*t as usize) == Some(at));
                }
            }
        } else {
            self.wheel.schedule(token, ticks(at));
        }
    }

    /// The deadline; `NEVER` for an entry stored before the shard kept
    /// deadlines (a first per-entry TTL starts them), which has none.
    fn at(&self, token: Token) -> u64 {
        self.slot(token)
            .map_or(NEVER, |at| at.load(Ordering::Relaxed))
    }

    /// Files again the tokens whose deadline reads moved earlier (see
    /// `refile`), by the deadline they have now.
    #[inline]
    fn refile<K, V>(&mut self, slab: &Slab<K, V>) {
        // Writers exclude readers: a load and a store, no read-modify-write
        // (and no `get_mut`, which the loom build's atomics lack).
        if self.refile_all.load(Ordering::Relaxed) {
            self.refile_all.store(false, Ordering::Relaxed);
            self.refile.get_mut().clear();
            let tokens: Vec<Token> = slab.iter_from(0).map(|(t, _)| t).collect();
            self.refile.get_mut().extend(tokens);
        }
        let queued = self.refile.get_mut();
        if queued.is_empty() {
            return;
        }
        for t in queued.drain(..) {
            // A token whose entry has left since went off the wheel with it.
            if !slab.contains(t) {
                continue;
            }
            let at = self.at.get(t as usize * self.stride);
            match at.map(|a| a.load(Ordering::Relaxed)) {
                Some(NEVER) | None => self.wheel.cancel(t),
                Some(at) => self.wheel.schedule(t, ticks(at)),
            }
        }
    }

    /// Notes that `token`'s entry, whose deadline was just set, was written
    /// at `now` (a cache that refreshes; nothing in the others).
    fn stamp(&mut self, token: Token, now: u64) {
        if let Some(written) = self.written(token) {
            written.store(now, Ordering::Relaxed);
        }
    }

    /// The write time's slot of `token`, in a cache that refreshes: the one
    /// after its deadline's. Moved under the read lock by a refresh that
    /// starts (so that hits meanwhile find the entry not due) and back
    /// should it fail, hence atomic.
    #[inline]
    fn written(&self, token: Token) -> Option<&AtomicU64> {
        match self.stride {
            2 => self.at.get(token as usize * 2 + 1),
            _ => None,
        }
    }

    fn cap(&self, token: Token) -> u64 {
        self.cap.get(token as usize).copied().unwrap_or(NEVER)
    }

    fn set(&mut self, token: Token, d: Deadlines) {
        let i = token as usize;
        let slot = i * self.stride;
        if self.at.len() <= slot {
            // A write time of `NEVER` is never due; `stamp` sets it next.
            self.at
                .resize_with((i + 1) * self.stride, || AtomicU64::new(NEVER));
        }
        self.at[slot].store(d.at, Ordering::Relaxed);
        if self.cap.len() <= i && d.cap != NEVER {
            self.cap.resize(i + 1, NEVER);
        }
        if let Some(cap) = self.cap.get_mut(i) {
            *cap = d.cap;
        }
        if d.at == NEVER {
            self.wheel.cancel(token);
        } else {
            self.wheel.schedule(token, ticks(d.at));
        }
    }
}

/// One shard, aligned to a cache line: a lookup touches that first line
/// alone (the lock word and the start of [`Map`]), besides the entry it finds
/// and the table's own memory.
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct Shard<K, V> {
    /// The lock word comes first (`lock_api` puts it before the data).
    map: RwLock<Map<K, V>>,
    /// Loads in progress for keys of this shard (every write asks).
    pub(crate) flights: crate::loader::Flights<K, V>,
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    reads: ReadBuffer,
    /// The thread (see [`LockedMark`]) running user code under this shard's
    /// write lock, or 0. Read only on the way to waiting for the lock.
    #[cfg(not(larder_loom))]
    locked_by: std::sync::atomic::AtomicUsize,
}

/// What the map lock protects. `repr(C)`: what a lookup reads — the table's
/// header, `hits`, the two flags and the slab's slots — fills the 56 bytes
/// after the lock word, so a hit costs one line of the shard.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Map<K, V> {
    table: Table,
    /// Hits since the last write, for a policy that collects reads from the
    /// entries (its hill climber needs the hit rate). Bumped by readers with a
    /// plain load and store: it shares a cache line with the lock word that
    /// the read lock has just written, so it costs no extra miss, and an
    /// increment lost to a racing reader only blurs a rate. 32 bits keep the
    /// line's budget; a write drains it long before it could wrap.
    hits: AtomicU32,
    /// Whether the policy collects reads from the entries themselves
    /// (`Entry::note_read`) instead of through the ring.
    deferred_reads: bool,
    /// Whether `timers` is there: what a lookup asks, without reaching the
    /// line that holds `timers`.
    timed: bool,
    /// Whether the timers keep write times beside the deadlines (a cache
    /// that refreshes): where a lookup finds a token's deadline, without
    /// reaching the timers' own line for it.
    refreshing: bool,
    slab: Slab<K, V>,
    // What every write reads next, then the policy, then the timers (large,
    // and only for caches with expiry).
    weight: u64,
    capacity: u64,
    /// The heaviest entry taken: the smallest shard's capacity, the same in
    /// every shard, so that whether a weight fits does not hang on its key.
    max_entry: u64,
    /// Where the policy's sketch lies (W-TinyLFU, once it counts), for a
    /// lookup that misses to prefetch the line its insert will count in.
    sketch_lines: SketchLines,
    /// Tags of tagged entries, from the shard's first tagged insert on.
    tags: Option<Box<TagIndex>>,
    pub(crate) counters: Counters,
    /// The policy. Writers own it through the write lock (`Mutex::get_mut`, no
    /// atomics); readers draining the ring under the read lock `try_lock` it.
    policy: Mutex<Policy>,
    /// Deadlines, when the cache has expiry; set with `timed`.
    timers: Option<Timers>,
    /// The most entries the shard holds at once, when its entries are
    /// unweighted: its capacity, and one more while a new key's eviction is
    /// pending (`usize::MAX` for weighted entries, which may weigh 0). The
    /// slab and the table grow to fit it, not past it.
    ceiling: usize,
    /// The entries `initial_capacity` reserved room for: an emptied shard
    /// keeps that room, or shrinks back to it.
    reserved: usize,
}

/// The slots and the table's keys to reserve for `reserved` entries of a
/// shard holding at most `ceiling` at once (see [`Map::ceiling`]). Room for
/// the capacity is room for the entry over it too; the table takes that one
/// over its mean load (see `Table::reserve_one`).
fn room(reserved: usize, ceiling: usize) -> (usize, usize) {
    let slots = if reserved >= ceiling.saturating_sub(1) {
        ceiling
    } else {
        reserved
    };
    (slots, reserved.min(ceiling.saturating_sub(1)))
}

/// A slab and a table with the [`room`] for `reserved` entries; `None` when
/// it cannot be allocated.
fn storage<K, V>(reserved: usize, ceiling: usize) -> Option<(Slab<K, V>, Table)> {
    let (slots, keys) = room(reserved, ceiling);
    Some((
        Slab::with_capacity(slots, ceiling)?,
        Table::with_capacity(keys)?,
    ))
}

/// A shard's mark, while its write lock is held, that this thread runs user
/// code under it (a [`Cache::compute`](crate::Cache::compute) closure); the
/// mark is cleared when dropped. Each shard keeps its own, so computes
/// nested across shards leave every shard they hold marked.
#[must_use]
pub(crate) struct LockedMark<'a> {
    #[cfg(not(larder_loom))]
    by: &'a std::sync::atomic::AtomicUsize,
    #[cfg(larder_loom)]
    by: std::marker::PhantomData<&'a ()>,
}

#[cfg(not(larder_loom))]
std::thread_local! {
    /// Its address names the thread, unlike any other live thread's.
    static THREAD: u8 = const { 0 };
}

/// This thread's name for marks: the address of its own thread-local, never 0.
#[cfg(not(larder_loom))]
fn this_thread() -> usize {
    THREAD.with(|byte| std::ptr::from_ref(byte) as usize)
}

#[cfg(not(larder_loom))]
impl Drop for LockedMark<'_> {
    fn drop(&mut self) {
        self.by.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<K, V> Shard<K, V> {
    /// A shard with room for `initial_capacity` entries; `None` when that
    /// room cannot be allocated. `weighted`: whether a weigher weighs the
    /// entries (else each weighs 1).
    pub(crate) fn new(
        capacity: u64,
        max_entry: u64,
        eviction: Eviction,
        initial_capacity: usize,
        timed: bool,
        refreshing: bool,
        weighted: bool,
    ) -> Option<Self> {
        let ceiling = match usize::try_from(capacity) {
            Ok(capacity) if !weighted => capacity.saturating_add(1),
            _ => usize::MAX,
        };
        let reserved = initial_capacity.min(ceiling);
        let (slab, table) = storage(reserved, ceiling)?;
        Some(Self {
            map: RwLock::new(Map {
                table,
                hits: AtomicU32::new(0),
                deferred_reads: eviction == Eviction::TinyLfu,
                timed,
                refreshing,
                policy: Mutex::new(Policy::new(eviction, capacity)),
                timers: timed.then(|| Timers::new(refreshing)),
                tags: None,
                slab,
                ceiling,
                reserved,
                weight: 0,
                capacity,
                max_entry: max_entry.min(capacity),
                sketch_lines: SketchLines::default(),
                counters: Counters::default(),
            }),
            reads: ReadBuffer::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            flights: crate::loader::Flights::default(),
            #[cfg(not(larder_loom))]
            locked_by: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The map, shared with other readers.
    #[inline]
    pub(crate) fn read(&self) -> ReadGuard<'_, Map<K, V>> {
        match self.map.try_read() {
            Some(map) => map,
            None => self.read_contended(),
        }
    }

    /// A writer holds the map: writes hold it for microseconds (maintenance
    /// works in small batches), so spin for about that long before parking —
    /// waking a parked thread costs tens of microseconds on its own.
    #[cold]
    fn read_contended(&self) -> ReadGuard<'_, Map<K, V>> {
        self.refuse_reentry();
        for _ in 0..READ_SPINS {
            std::hint::spin_loop();
            // A plain load while the writer works: it takes the lock's line
            // from the writer only in shared state; the compare-and-swap
            // that would take it over is tried once the lock looks free.
            if self.map.is_locked_exclusive() {
                continue;
            }
            if let Some(map) = self.map.try_read() {
                return map;
            }
        }
        self.map.read()
    }

    /// The map for writing, with buffered reads applied to the policy.
    #[inline]
    pub(crate) fn write<'a, H: Fn(&K) -> u64>(
        &'a self,
        hash_of: &'a H,
    ) -> ShardWriter<'a, K, V, H> {
        let mut guard = match self.map.try_write() {
            Some(guard) => guard,
            None => self.write_contended(),
        };
        let map = &mut *guard;
        // No reader can race these two: the write lock is held.
        // The flag first: it is on the line the lock word is on.
        if let (true, Some(timers)) = (map.timed, &mut map.timers) {
            timers.refile(&map.slab);
        }
        let hits = map.hits.load(Ordering::Relaxed);
        if hits != 0 {
            map.hits.store(0, Ordering::Relaxed);
            map.policy.get_mut().on_hits(u64::from(hits));
        }
        if !map.deferred_reads {
            self.drain_for_write(map, hash_of);
        }
        ShardWriter {
            map: guard,
            hash_of,
        }
    }

    /// Another thread holds the map, or this one does, running a
    /// [`Cache::compute`](crate::Cache::compute) closure (which panics).
    #[cold]
    fn write_contended(&self) -> WriteGuard<'_, Map<K, V>> {
        self.refuse_reentry();
        self.map.write()
    }

    /// Marks this thread as running user code under this shard's write lock
    /// until the mark is dropped: a call of this thread's that would then
    /// wait for the lock panics instead of deadlocking (see
    /// [`refuse_reentry`](Self::refuse_reentry)).
    ///
    /// Loom's threads share one thread's locals: no mark there.
    pub(crate) fn mark_locked(&self) -> LockedMark<'_> {
        #[cfg(not(larder_loom))]
        {
            // Only the holder of the write lock writes the mark.
            self.locked_by
                .store(this_thread(), std::sync::atomic::Ordering::Relaxed);
            LockedMark {
                by: &self.locked_by,
            }
        }
        #[cfg(larder_loom)]
        LockedMark {
            by: std::marker::PhantomData,
        }
    }

    /// Panics if this thread holds this shard's write lock and is running
    /// user code under it (see [`mark_locked`](Self::mark_locked)): waiting
    /// would never end. Checked only on the way to waiting for the lock.
    #[cold]
    fn refuse_reentry(&self) {
        #[cfg(not(larder_loom))]
        let marked = self.locked_by.load(std::sync::atomic::Ordering::Relaxed) == this_thread();
        #[cfg(larder_loom)]
        let marked = false;
        if marked {
            panic!(
                "larder: a `Cache::compute` closure called into its cache on the key's own shard, \
                 whose lock the closure runs under"
            );
        }
    }

    /// Applies the ring's buffered reads to the policy, under the write lock
    /// (the policies that apply every read: not W-TinyLFU).
    #[inline(never)]
    fn drain_for_write<H: Fn(&K) -> u64>(&self, map: &mut Map<K, V>, hash_of: &H) {
        let policy = map.policy.get_mut();
        let view = View {
            slots: map.slab.slots(),
            hash_of,
        };
        self.reads.drain(|t| policy.on_access(t, &view));
    }

    /// Records a read of `entry` (at `token`) for the policy, with the map still
    /// read-locked by the caller. When the ring fills, this drains it if the
    /// policy lock is free; it never waits. A read that found the ring full
    /// is applied after that drain (dropped if the lock was taken).
    #[inline]
    pub(crate) fn record_read(
        &self,
        map: &Map<K, V>,
        token: Token,
        entry: &Entry<K, V>,
        hash_of: &impl Fn(&K) -> u64,
    ) {
        if map.deferred_reads {
            let hits = map.hits.load(Ordering::Relaxed);
            map.hits.store(hits.wrapping_add(1), Ordering::Relaxed);
            entry.note_read();
            return;
        }
        match self.reads.record(token) {
            Recorded::Buffered | Recorded::Dropped => {}
            Recorded::Filled => self.drain_reads(map, None, hash_of),
            Recorded::Full => self.drain_reads(map, Some(token), hash_of),
        }
    }

    /// Drains the ring into the policy if its lock is free, then applies
    /// `unbuffered`, a read the full ring could not take, if the drain
    /// reached every read recorded before it.
    #[cold]
    fn drain_reads(
        &self,
        map: &Map<K, V>,
        unbuffered: Option<Token>,
        hash_of: &impl Fn(&K) -> u64,
    ) {
        if let Some(mut policy) = map.policy.try_lock() {
            let view = View {
                slots: map.slab.slots(),
                hash_of,
            };
            let whole = self.reads.drain(|t| policy.on_access(t, &view));
            // Behind every read recorded before it, or not at all: a read of
            // this thread's may still wait in a slot another claimed first.
            if let (true, Some(token)) = (whole, unbuffered) {
                policy.on_access(token, &view);
            }
        }
    }
}

/// The policy's window onto the slab: hashes, weights and read filters by token.
struct View<'a, K, V, H> {
    /// The slab's slots themselves, not the slab: one indirection less on
    /// every access the policy makes.
    slots: &'a [Option<Entry<K, V>>],
    hash_of: &'a H,
}

impl<K, V, H> View<'_, K, V, H> {
    #[inline]
    fn entry(&self, token: Token) -> &Entry<K, V> {
        match &self.slots[token as usize] {
            Some(entry) => entry,
            None => slab::not_resident(token),
        }
    }
}

impl<K, V, H: Fn(&K) -> u64> Entries for View<'_, K, V, H> {
    fn hash(&self, token: Token) -> u64 {
        (self.hash_of)(&self.entry(token).key)
    }

    fn weight(&self, token: Token) -> u32 {
        self.entry(token).weight()
    }

    fn take_hits(&self, token: Token) -> u8 {
        self.entry(token).take_hits()
    }

    fn touch(&self, token: Token) {
        self.entry(token).note_read();
    }

    #[inline]
    fn link(&self, token: Token) -> (Token, Token) {
        self.entry(token).link()
    }

    #[inline]
    fn set_link(&self, token: Token, prev: Token, next: Token) {
        let entry = self.entry(token);
        entry.set_prev(prev);
        entry.set_next(next);
    }

    #[inline]
    fn set_prev(&self, token: Token, prev: Token) {
        self.entry(token).set_prev(prev);
    }

    #[inline]
    fn set_next(&self, token: Token, next: Token) {
        self.entry(token).set_next(next);
    }

    #[inline]
    fn is_linked(&self, token: Token) -> bool {
        self.slots
            .get(token as usize)
            .and_then(Option::as_ref)
            .is_some_and(|e| e.link().0 != DETACHED)
    }

    #[inline]
    fn meta(&self, token: Token) -> u8 {
        self.slots
            .get(token as usize)
            .and_then(Option::as_ref)
            .map_or(0, Entry::meta)
    }

    #[inline]
    fn set_meta(&self, token: Token, meta: u8) {
        self.entry(token).set_meta(meta);
    }

    #[inline]
    fn prefetch(&self, token: Token) {
        if let Some(slot) = self.slots.get(token as usize) {
            crate::prefetch::prefetch(slot);
        }
    }

    fn update_metas(&self, mut f: impl FnMut(u8) -> u8) {
        for entry in self.slots.iter().flatten() {
            entry.set_meta(f(entry.meta()));
        }
    }
}

impl<K: Eq, V> Map<K, V> {
    /// Finds `key`'s entry in one probe of the table.
    #[inline]
    pub(crate) fn find<Q>(&self, hash: u64, key: &Q) -> Option<(Token, &Entry<K, V>)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let mut found = None;
        let token = self.table.find(hash, |t| {
            let entry = self.slab.get(t);
            let hit = entry.key.borrow() == key;
            if hit {
                found = Some(entry);
            }
            hit
        })?;
        Some((token, found?))
    }

    /// A lookup of `hash` missed, and an insert of it may follow: starts
    /// fetching the sketch line that insert will count in.
    #[inline]
    pub(crate) fn prefetch_insert(&self, hash: u64) {
        self.sketch_lines.prefetch(hash);
    }

    /// Whether this shard keeps deadlines.
    #[inline]
    pub(crate) fn timed(&self) -> bool {
        self.timed
    }

    /// Whether the entry at `token` is readable at `now` (`None`: the cache has
    /// no expiry). An entry is gone from its deadline on.
    #[inline]
    pub(crate) fn is_live(&self, token: Token, now: Option<u64>) -> bool {
        match (now, &self.timers) {
            (Some(now), Some(timers)) => {
                let slot = (token as usize) << u32::from(self.refreshing);
                timers
                    .at
                    .get(slot)
                    .map_or(NEVER, |at| at.load(Ordering::Relaxed))
                    > now
            }
            _ => true,
        }
    }

    /// When the entry at `token` was written, in a shard whose writes note
    /// it (see [`WriteContext::stamp`]).
    #[inline]
    pub(crate) fn written(&self, token: Token) -> Option<u64> {
        let written = self.timers.as_ref()?.written(token)?;
        Some(written.load(Ordering::Relaxed))
    }

    /// Marks the entry at `token`, written at `was`, as refreshed from `now`
    /// on: its write time becomes `now` with [`REFRESHING`] set, which no
    /// write's time has, so that hits meanwhile find it not due (its time
    /// is in the future) and [`restamp`](Self::restamp) can give `was`
    /// back should the refresh not land, unless a write since, even in the
    /// same tick or of another key in the slot, gave it a time of its own.
    /// Returns the marked time.
    pub(crate) fn start_refresh(&self, token: Token, was: u64, now: u64) -> u64 {
        let started = now | REFRESHING;
        self.restamp(token, was, started);
        started
    }

    /// Moves the write time of the entry at `token` from `from` to `to` (a
    /// refresh starting, or one that failed giving the entry's time back);
    /// nothing if it is no longer `from` (a write since).
    pub(crate) fn restamp(&self, token: Token, from: u64, to: u64) {
        if let Some(written) = self.timers.as_ref().and_then(|t| t.written(token)) {
            let _ = written.compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The tags of the entry at `token`.
    pub(crate) fn tags_of(&self, token: Token) -> Vec<Tag> {
        self.tags
            .as_ref()
            .map_or_else(Vec::new, |index| index.tags_of(token))
    }

    /// The entry's deadlines, when the cache has expiry.
    pub(crate) fn deadlines(&self, token: Token) -> Option<Deadlines> {
        let timers = self.timers.as_ref()?;
        Some(Deadlines {
            at: timers.at(token),
            cap: timers.cap(token),
        })
    }

    /// Moves a deadline under the read lock (a read extending a time-to-idle,
    /// or an [`Expiry`](crate::Expiry) answering a read). The wheel finds a
    /// deadline moved later when the old one comes due; one moved earlier is
    /// queued for the next writer to file again, or the entry would outlive
    /// it on the wheel.
    ///
    /// With `later_only` (a time-to-idle: reads only ever extend it), a read
    /// that took the clock before a racing reader but stores after it keeps
    /// the later deadline instead of setting the entry's idle time back.
    ///
    /// `now` is the clock read again once the read has its new deadline
    /// (after the value's `Clone` and the [`Expiry`](crate::Expiry), user
    /// code that may take long): a deadline already past by then stays. The
    /// entry expired while the read ran, and another read may have found it
    /// gone: moving the deadline on would bring the entry back.
    pub(crate) fn move_deadline(&self, token: Token, at: u64, later_only: bool, now: u64) {
        let Some(timers) = &self.timers else {
            return;
        };
        if let Some(slot) = timers.slot(token) {
            // Racing readers each compare with what they find; whoever moves
            // it earlier queues it, and the writer files it by the deadline
            // it finds then.
            let mut before = slot.load(Ordering::Relaxed);
            let moved = loop {
                if before <= now || (later_only && at <= before) {
                    break false;
                }
                match slot.compare_exchange_weak(before, at, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => break true,
                    Err(found) => before = found,
                }
            };
            if moved && at < before {
                let mut queued = timers.refile.lock();
                if queued.len() < timers.at.len() / timers.stride {
                    queued.push(token);
                } else {
                    timers.refile_all.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Tagged entries in the tag index (its size).
    pub(crate) fn tagged(&self) -> usize {
        self.tags.as_ref().map_or(0, |i| i.len())
    }

    /// Whether the timer wheel has work owed up to its clock's last reading
    /// left undone (moving deadlines down its levels).
    #[cfg(test)]
    pub(crate) fn wheel_behind(&self) -> bool {
        self.timers.as_ref().is_some_and(|t| t.wheel.is_spilling())
    }

    /// Slots the slab holds and buckets the table holds, used or not.
    #[cfg(test)]
    pub(crate) fn storage(&self) -> (usize, usize) {
        (self.slab.capacity(), self.table.buckets())
    }

    /// Entries counted in `len`, including expired ones not reclaimed yet.
    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }

    /// Brings the slab and the table of a shard that holds no entry back to
    /// the room `initial_capacity` reserved (none if it reserved none): kept
    /// as they are if that is what they hold, else allocated anew. A
    /// reservation that cannot be allocated again is given up.
    pub(crate) fn release_storage(&mut self) {
        debug_assert_eq!(self.slab.len(), 0, "only an empty shard is released");
        let (slots, keys) = room(self.reserved, self.ceiling);
        if self.slab.capacity() == slots {
            self.slab.reset();
        } else {
            self.slab = Slab::with_capacity(slots, self.ceiling)
                .or_else(|| Slab::with_capacity(0, self.ceiling))
                .unwrap_or_else(|| unreachable!("an empty slab allocates nothing"));
        }
        if self.table.buckets() != Table::buckets_for(keys) {
            self.table = Table::with_capacity(keys).unwrap_or_default();
        }
    }

    /// Clones the keys of up to `max` live entries from slot `from` on into
    /// `out`; returns the slot to continue from, or `None` when the shard is
    /// exhausted.
    pub(crate) fn collect(
        &self,
        from: usize,
        max: usize,
        now: Option<u64>,
        out: &mut Vec<K>,
    ) -> Option<usize>
    where
        K: Clone,
    {
        let live = self
            .slab
            .iter_from(from)
            .filter(|&(t, _)| self.is_live(t, now));
        for (taken, (t, e)) in live.enumerate() {
            if taken == max {
                return Some(t as usize);
            }
            out.push(e.key.clone());
        }
        None
    }
}

#[cfg(all(test, not(larder_loom)))]
mod tests {
    use std::mem::{align_of, offset_of, size_of};

    use super::{Map, Shard};
    use crate::policy::Eviction;

    type S = Shard<u64, u64>;
    type M = Map<u64, u64>;

    /// The evicted weight saturates: entries may weigh up to `u32::MAX - 1`,
    /// so about 4e9 of the heaviest would wrap it (and panic a debug build).
    #[test]
    fn the_evicted_weight_saturates() {
        let hash_of = |k: &u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let shard =
            S::new(u64::MAX, u64::MAX, Eviction::Lru, 0, false, false, true).expect("small");
        let mut out = super::Removed::new();
        let mut writer = shard.write(&hash_of);
        writer.map.capacity = u64::from(u32::MAX);
        writer.map.counters.evicted_weight = u64::MAX - 1;
        for k in 1..=2u64 {
            let weight = u32::MAX - 1;
            assert!(writer
                .insert_plain(hash_of(&k), k, k, weight, &mut out)
                .is_ok());
        }
        assert_eq!(writer.map.counters.evictions, 1, "the first made way");
        assert_eq!(writer.map.counters.evicted_weight, u64::MAX);
    }

    /// LRU: a read that finds the ring full (it filled while the policy lock
    /// was taken, so no drain could run) drains it and is applied after,
    /// where it used to be dropped.
    #[test]
    fn a_read_finding_the_ring_full_is_applied_after_its_drain() {
        use super::read_buffer::READ_BUFFER_LEN;
        let hash_of = |k: &u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let shard = S::new(4, 4, Eviction::Lru, 0, false, false, false).expect("small");
        {
            let mut out = super::Removed::new();
            let mut writer = shard.write(&hash_of);
            for k in 1..=4u64 {
                assert!(writer.insert_plain(hash_of(&k), k, k, 1, &mut out).is_ok());
            }
        }
        let map = shard.read();
        let (t3, e3) = map.find(hash_of(&3), &3).expect("resident");
        let (t1, e1) = map.find(hash_of(&1), &1).expect("resident");
        {
            let _busy = map.policy.try_lock().expect("free");
            for _ in 0..READ_BUFFER_LEN {
                shard.record_read(&map, t3, e3, &hash_of);
            }
        }
        shard.record_read(&map, t1, e1, &hash_of);
        drop(map);
        let writer = shard.write(&hash_of);
        let order: Vec<u64> = writer.eviction_order().into_iter().copied().collect();
        assert_eq!(order, vec![2, 4, 3, 1], "1 was read last");
    }

    /// A key rewritten again and again within its deadline's tick (a clock
    /// standing still) is put among the early tokens once, not once a write.
    #[test]
    fn rewrites_within_a_tick_do_not_grow_the_early_tokens() {
        use super::{Deadlines, Removed, WriteContext, NEVER};
        let (clock, _time) = crate::Clock::mock();
        let shard = S::new(100, 100, Eviction::TinyLfu, 0, true, false, false).expect("small");
        let hash_of = |k: &u64| *k;
        let sub_tick = |_: &u64, _: &u64, now: u64, _: Option<u64>| Deadlines {
            at: now + 500_000,
            cap: NEVER,
        };
        for i in 0..10_000 {
            let mut out = Removed::new();
            let timing = WriteContext {
                clock: &clock,
                start: false,
                deadlines: &sub_tick,
                tags: &[],
                stamp: false,
            };
            let mut writer = shard.write(&hash_of);
            assert!(writer.insert(1, 1, i, 1, timing, &mut out).is_ok());
        }
        let writer = shard.write(&hash_of);
        let timers = writer.map.timers.as_ref().expect("timed");
        assert!(
            timers.early.len() <= 1,
            "{} early tokens",
            timers.early.len()
        );
        writer.validate();
    }

    /// Two readers extend an idle deadline; the one that read the clock first
    /// stores last. The entry keeps the later deadline, while a custom expiry
    /// (which may shorten a lifetime on a read) has the last store win and
    /// queues the earlier deadline for the wheel.
    #[test]
    fn a_late_store_of_an_earlier_idle_deadline_keeps_the_later_one() {
        use super::{Deadlines, Removed, WriteContext, NEVER};
        let (clock, _time) = crate::Clock::mock();
        let shard = S::new(100, 100, Eviction::TinyLfu, 0, true, false, false).expect("small");
        let hash_of = |k: &u64| *k;
        let idle = |_: &u64, _: &u64, now: u64, _: Option<u64>| Deadlines {
            at: now + 10_000_000_000,
            cap: NEVER,
        };
        for key in [1, 2] {
            let mut out = Removed::new();
            let timing = WriteContext {
                clock: &clock,
                start: false,
                deadlines: &idle,
                tags: &[],
                stamp: false,
            };
            assert!(shard
                .write(&hash_of)
                .insert(key, key, key, 1, timing, &mut out)
                .is_ok());
        }
        let map = shard.read();
        let token = |key: u64| map.find(key, &key).expect("resident").0;
        let (first, second) = (token(1), token(2));
        let written = map.deadlines(first).expect("timed").at;
        let (early, late) = (written + 3_000_000_000, written + 5_000_000_000);
        map.move_deadline(first, late, true, 0);
        map.move_deadline(first, early, true, 0);
        assert_eq!(map.deadlines(first).expect("timed").at, late);
        map.move_deadline(second, late, false, 0);
        map.move_deadline(second, early, false, 0);
        assert_eq!(map.deadlines(second).expect("timed").at, early);
        let timers = map.timers.as_ref().expect("timed");
        assert_eq!(*timers.refile.lock(), vec![second]);
        // A deadline the clock has passed since the read stays, either way.
        for (token, later_only) in [(first, true), (second, false)] {
            let passed = map.deadlines(token).expect("timed").at;
            map.move_deadline(token, passed + 9_000_000_000, later_only, passed);
            assert_eq!(map.deadlines(token).expect("timed").at, passed);
        }
        assert_eq!(*timers.refile.lock(), vec![second]);
    }

    /// A refused write that takes the shard's last entry with it gives the
    /// shard's memory back, as a removal of that entry does.
    #[test]
    fn a_refused_write_of_the_last_entry_releases_the_shard() {
        use super::{Deadlines, Removed, WriteContext, NEVER};
        let (clock, _time) = crate::Clock::mock();
        let shard = S::new(100, 100, Eviction::TinyLfu, 0, false, false, true).expect("small");
        let hash_of = |k: &u64| *k;
        let never = |_: &u64, _: &u64, _: u64, _: Option<u64>| Deadlines {
            at: NEVER,
            cap: NEVER,
        };
        let timing = || WriteContext {
            clock: &clock,
            start: false,
            deadlines: &never,
            tags: &[],
            stamp: false,
        };
        let mut out = Removed::new();
        let mut writer = shard.write(&hash_of);
        assert!(writer.insert(1, 1, 10, 1, timing(), &mut out).is_ok());
        assert!(writer.map.slab.capacity() > 0);
        assert!(writer.insert(1, 1, 20, 101, timing(), &mut out).is_err());
        assert_eq!(writer.map.slab.len(), 0);
        assert_eq!(writer.map.slab.capacity(), 0, "the slab is released");
        assert!(writer.insert(2, 2, 30, 1, timing(), &mut out).is_ok());
        writer.validate();
    }

    /// A key whose `Hash` panics while the table grows (rehashing the
    /// resident keys) undoes only the write that grew it: the new entry is in
    /// neither the slab nor the table but in `out`, refused for size (for the
    /// listener), and the shard stays whole and usable.
    #[test]
    fn a_hash_panicking_as_the_table_grows_leaves_the_shard_whole() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let shard = S::new(1_000, 1_000, Eviction::TinyLfu, 0, false, false, false).expect("small");
        let armed = AtomicBool::new(false);
        let hash_of = |k: &u64| {
            assert!(
                !(armed.load(Ordering::SeqCst) && *k == 3),
                "a key's hash panics"
            );
            k.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        };
        let mut out = super::Removed::new();
        let mut k = 0;
        while k < 5 || shard.write(&hash_of).map.table.room() > 0 {
            let mut writer = shard.write(&hash_of);
            assert!(writer.insert_plain(hash_of(&k), k, k, 1, &mut out).is_ok());
            k += 1;
        }
        assert!(out.is_empty());
        let resident = k;
        armed.store(true, Ordering::SeqCst);
        let grew = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut writer = shard.write(&hash_of);
            let _ = writer.insert_plain(hash_of(&10_000), 10_000, 7, 1, &mut out);
        }));
        assert!(grew.is_err(), "the growth hashed key 3 and panicked");
        armed.store(false, Ordering::SeqCst);
        assert_eq!(
            out.iter().map(|(k, v, c)| (*k, *v, *c)).collect::<Vec<_>>(),
            vec![(10_000, 7, crate::RemovalCause::Size)]
        );
        out.clear();
        let mut writer = shard.write(&hash_of);
        assert_eq!(writer.map.counters.rejections, 1);
        writer.validate();
        assert_eq!(writer.map.slab.len(), resident as usize);
        assert!(writer.map.find(hash_of(&10_000), &10_000).is_none());
        assert!(writer
            .insert_plain(hash_of(&10_000), 10_000, 0, 1, &mut out)
            .is_ok());
        writer.validate();
        assert!(writer.map.find(hash_of(&10_000), &10_000).is_some());
    }

    /// A key whose `Hash` panics while a weighted write evicts for room (the
    /// policy hashing a victim or a candidate) leaves the shard within its
    /// capacity: the write that panicked is the one lost, and what the
    /// evictions before the panic took out stays out. Every policy.
    #[test]
    fn a_hash_panicking_mid_eviction_keeps_the_shard_within_capacity() {
        use std::sync::atomic::{AtomicU64, Ordering};
        for eviction in [Eviction::TinyLfu, Eviction::Lru, Eviction::Lfu] {
            let mut panics = 0;
            for poisoned in 0..8u64 {
                let shard = S::new(40, 40, eviction, 0, false, false, false).expect("small");
                // Keys hash by value but for the poisoned one, once armed.
                let armed = AtomicU64::new(u64::MAX);
                let hash_of = |k: &u64| {
                    assert!(armed.load(Ordering::SeqCst) != *k, "a key's hash panics");
                    k.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                };
                let mut out = super::Removed::new();
                for k in 0..8u64 {
                    let mut writer = shard.write(&hash_of);
                    assert!(writer.insert_plain(hash_of(&k), k, k, 5, &mut out).is_ok());
                }
                armed.store(poisoned, Ordering::SeqCst);
                let wrote = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut writer = shard.write(&hash_of);
                    let _ = writer.insert_plain(hash_of(&100), 100, 0, 25, &mut out);
                }));
                armed.store(u64::MAX, Ordering::SeqCst);
                let writer = shard.write(&hash_of);
                writer.validate();
                let map = &*writer.map;
                assert!(map.weight <= map.capacity, "{eviction:?}: over capacity");
                if wrote.is_err() {
                    panics += 1;
                    assert!(
                        map.find(hash_of(&100), &100).is_none(),
                        "{eviction:?}: the write that panicked is not resident"
                    );
                }
            }
            // Five of the eight must go, and the policy hashes some of them.
            assert!(panics > 0, "{eviction:?}: no write panicked");
        }
    }

    /// With every token taken (weights of 0 leave the capacity unused), a new
    /// key evicts one entry in policy order first, with either write path and
    /// every policy; a key already resident is replaced without an eviction.
    #[test]
    fn a_full_slab_evicts_for_a_new_key() {
        use super::WriteContext;
        let (clock, _time) = crate::Clock::mock();
        let hash_of = |k: &u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for eviction in [Eviction::TinyLfu, Eviction::Lru, Eviction::Lfu] {
            let shard = S::new(1_000, 1_000, eviction, 0, false, false, true).expect("small");
            let mut writer = shard.write(&hash_of);
            writer.map.slab.set_limit(4);
            let mut out = super::Removed::new();
            for k in 0..20u64 {
                let timing = WriteContext {
                    clock: &clock,
                    start: false,
                    deadlines: &|_: &u64, _: &u64, _: u64, _: Option<u64>| super::Deadlines {
                        at: super::NEVER,
                        cap: super::NEVER,
                    },
                    tags: &[],
                    stamp: false,
                };
                let written = if k % 2 == 0 {
                    writer.insert_plain(hash_of(&k), k, k, 0, &mut out)
                } else {
                    writer.insert(hash_of(&k), k, k, 0, timing, &mut out)
                };
                assert!(written.is_ok(), "{eviction:?}: key {k} refused");
                writer.validate();
                assert_eq!(writer.map.slab.len(), (k as usize + 1).min(4));
                assert!(writer.map.find(hash_of(&k), &k).is_some(), "{eviction:?}");
            }
            assert_eq!(out.len(), 16, "{eviction:?}");
            assert!(out.iter().all(|e| e.2 == crate::RemovalCause::Size));
            assert_eq!(writer.map.counters.evictions, 16);
            // A resident key's update needs no new token.
            let resident = writer.map.slab.iter_from(0).next().expect("full").1.key;
            out.clear();
            assert!(writer
                .insert_plain(hash_of(&resident), resident, 7, 0, &mut out)
                .is_ok());
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].2, crate::RemovalCause::Replaced);
            assert_eq!(writer.map.slab.len(), 4);
        }
    }

    /// The map's table through growth, eviction and clearing, with the
    /// prefetch an insert makes of its candidate's bucket (run under miri by
    /// CI), also into a table that was just cleared.
    #[test]
    fn table_lines_prefetch_through_growth_and_clear() {
        use super::WriteContext;
        let (clock, _time) = crate::Clock::mock();
        let (capacity, keys) = if cfg!(miri) {
            (100, 150)
        } else {
            (1_000, 1_500)
        };
        let shard = S::new(
            capacity,
            capacity,
            Eviction::TinyLfu,
            0,
            false,
            false,
            false,
        )
        .expect("small");
        let hash_of = |k: &u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut out = super::Removed::new();
        let mut writer = shard.write(&hash_of);
        for round in 0..2u64 {
            for k in round * 10_000..round * 10_000 + keys {
                let timing = WriteContext {
                    clock: &clock,
                    start: false,
                    deadlines: &|_: &u64, _: &u64, _: u64, _: Option<u64>| super::Deadlines {
                        at: super::NEVER,
                        cap: super::NEVER,
                    },
                    tags: &[],
                    stamp: false,
                };
                let written = if k % 2 == 0 {
                    writer.insert_plain(hash_of(&k), k, k, 1, &mut out)
                } else {
                    writer.insert(hash_of(&k), k, k, 1, timing, &mut out)
                };
                assert!(written.is_ok());
                if k % 100 == 0 {
                    writer.validate();
                }
            }
            for k in 50_000..50_100 {
                writer.map.table.prefetch(hash_of(&k));
            }
            writer.validate();
            assert_eq!(writer.map.table.len(), capacity as usize);
            let mut removed = Vec::new();
            writer.clear(&clock, &mut removed);
            assert!(writer.map.table.is_empty());
            for k in 50_000..50_100 {
                writer.map.table.prefetch(hash_of(&k));
            }
        }
    }

    /// A lookup that misses prefetches from where the policy's sketch lies:
    /// the map's copy of it is set once the policy counts, dropped with the
    /// sketch when the shard is cleared, set again when it counts anew, and
    /// moved with the sketch when the sketch grows.
    #[test]
    fn the_maps_sketch_lines_follow_the_policys_sketch() {
        use super::{Deadlines, Removed, WriteContext, NEVER};
        let (clock, _time) = crate::Clock::mock();
        let shard = S::new(100, 100, Eviction::TinyLfu, 0, false, false, false).expect("small");
        let hash_of = |k: &u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let never = |_: &u64, _: &u64, _: u64, _: Option<u64>| Deadlines {
            at: NEVER,
            cap: NEVER,
        };
        let timing = || WriteContext {
            clock: &clock,
            start: false,
            deadlines: &never,
            tags: &[],
            stamp: false,
        };
        let mut out = Removed::new();
        let mut writer = shard.write(&hash_of);
        let mut fill_weighing = |writer: &mut super::ShardWriter<'_, u64, u64, _>,
                                 keys: std::ops::Range<u64>,
                                 weight: u32| {
            for k in keys {
                assert!(writer
                    .insert(hash_of(&k), k, k, weight, timing(), &mut out)
                    .is_ok());
                // Set by the very insert that starts the sketch.
                let policy_lines = writer.map.policy.get_mut().sketch_lines();
                assert_eq!(writer.map.sketch_lines, policy_lines);
            }
        };
        let mut fill = |writer: &mut _, keys| fill_weighing(writer, keys, 1);
        fill(&mut writer, 0..10);
        assert!(
            !writer.map.sketch_lines.is_some(),
            "no sketch before half full"
        );
        fill(&mut writer, 10..200);
        let lines = writer.map.sketch_lines;
        assert!(lines.is_some());
        assert_eq!(lines, writer.map.policy.get_mut().sketch_lines());
        // What a missing lookup does (run under miri by CI).
        for k in 1_000..1_100 {
            writer.map.prefetch_insert(hash_of(&k));
        }
        let mut removed = Vec::new();
        writer.clear(&clock, &mut removed);
        assert_eq!(removed.len(), 100);
        assert!(!writer.map.sketch_lines.is_some(), "gone with the sketch");
        // A copy that outlived its sketch names freed memory: prefetching
        // from there is a hint like any other.
        for k in 1_000..1_100 {
            lines.prefetch(hash_of(&k));
        }
        fill(&mut writer, 200..400);
        let lines = writer.map.sketch_lines;
        assert!(lines.is_some());
        assert_eq!(
            lines,
            writer.map.policy.get_mut().sketch_lines(),
            "the new sketch's lines"
        );
        // Two heavy entries start the counting sized for a few entries; the
        // light ones that follow grow the sketch, and the lines move with it.
        writer.clear(&clock, &mut removed);
        fill_weighing(&mut writer, 400..402, 30);
        let small = writer.map.sketch_lines;
        assert!(small.is_some());
        fill_weighing(&mut writer, 402..2_000, 1);
        assert_ne!(writer.map.sketch_lines, small, "a larger sketch");
        writer.validate();
    }

    /// What a lookup reads of its shard — the lock word, the table's header,
    /// `hits`, the flags and the slab's slots — lies in the shard's first
    /// cache line.
    #[test]
    fn a_lookup_reads_one_line_of_its_shard() {
        assert_eq!(align_of::<S>(), 64);
        let shard = S::new(100, 100, Eviction::TinyLfu, 0, false, false, false).expect("small");
        let map = shard.read();
        let base = std::ptr::from_ref(&shard) as usize;
        let data = std::ptr::from_ref::<M>(&map) as usize - base;
        assert_eq!(data, 8, "the lock word leads the map");
        // `Slab` is `repr(C)` with its slots first.
        let slots = data + offset_of!(M, slab);
        let slots_end = slots + size_of::<super::slab::Slots<u64, u64>>();
        assert!(slots_end <= 64, "the slab's slots end at byte {slots_end}");
        for field in [
            offset_of!(M, table),
            offset_of!(M, hits),
            offset_of!(M, deferred_reads),
            offset_of!(M, timed),
            offset_of!(M, refreshing),
        ] {
            assert!(data + field < 64);
        }
    }
}
