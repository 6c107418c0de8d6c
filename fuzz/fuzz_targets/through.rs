//! Read-through and write-through `get`, `put`, `put_with`, `delete` and
//! `invalidate_tag` against an in-memory store, through a cache of 1–8
//! entries over 1, 2 or 4 shards (so that writes and loads evict), its
//! policy picked by the first byte, its entries weighing one each or their
//! value `% 3`. The store can be switched to failing, to panicking before it applies
//! a write or after (loads panic in both), and back; the application may
//! write it behind the cache's back; a mock clock moves for the entries'
//! time-to-live, and the store's `load_options` may tag loaded values and
//! give them a time-to-live of `value % 4` ms (zero: not cached). The cache
//! may have a time-to-live of its own, 1–8 ms, for the copies given none,
//! and a time-to-idle of 1–4 ms: a copy then expires that long after it was
//! written or last read by a `get` that found it (never past its
//! time-to-live; `peek` reads nothing). A `refresh` reads the store once
//! whatever is cached: the copy becomes what `get` of a miss would cache
//! (none for `None`), and stays as it was if the store fails or panics.
//!
//! After every step the model knows each key's cached copy exactly, except
//! that a step which cached something may have evicted other keys' copies:
//! `peek` of every key must show the model's copy (or, after such a step and
//! for keys it did not write, nothing). So a write acknowledged is cached at
//! once unless refused (zero time-to-live: then nothing is cached under its
//! key) or, weighted under W-TinyLfu and heavier than a unit (than the
//! admission window), turned away by its own insert (heard as `Size`); a refused or failed write changes no key's copy; a tag invalidation
//! drops exactly the tagged copies, the clock exactly the expired ones; a
//! `get` of a cached key returns the copy without calling the store; a `get`
//! of any other calls `load` exactly once and returns the store's value,
//! caching it with its `load_options` unless it is `None`, or returns the
//! store's error or panic and caches nothing (so a later change of the store
//! is seen).
//!
//! Write-through: a `put` / `delete` that returns `Ok` made exactly one store
//! call, and the store holds the write; one that returns the store's error
//! left the store and every cached copy unchanged; one whose store panicked
//! passes the panic on, the store holds the write or not (as the store did),
//! and the key's cached copy is gone, so the next `get` returns what the
//! store holds. An entry the cache refuses (zero time-to-live) is still
//! stored. For a key the application has not written behind the cache's back
//! since the key was last written through it or left the cache, every `get`
//! returns exactly the store's value and any cached copy equals it.
//! Read-through: `put`, `delete` and `write_all` never call the store,
//! whatever its state; its `write_all` lands each key's last write in the
//! cache, in order, as a write-through batch the store took, and its async
//! twin ends on its first poll.
//! Write-through `write_all` sends each key's last write in one store call
//! (the default `write_batch`, stopping at the first failure or panic) and
//! lands them as `put` and `delete` do; failed, panicked or dropped during
//! the store call, it leaves the batch's keys uncached.
//! Write-through `compute` reads the cached copy, else the store (a load
//! that fails or panics changes nothing), hands the closure exactly that,
//! and writes what the closure says as `put` and `delete` do; a keep, or
//! a remove of a key neither the cache nor the store has, calls the store
//! for nothing. Its async twin, `compute_async`, dropped during its load
//! changes nothing (the closure has not run); dropped during its write, it
//! leaves the store without the write and the key uncached.
//!
//! A racing `get` misses, and its `load`, having read the store, waits for
//! another thread to put or delete the key through the cache (under
//! write-through with the store working, failing or panicking for that one
//! call), to invalidate the tag, or to write the store behind the cache. The
//! `get` returns the value it read. Its load is not cached over a write or
//! delete that landed, nor after a store's panic dropped the key's copy, nor
//! when its tag was invalidated; it is cached after a write the store
//! refused, despite the invalidation of a tag it does not carry, and over a
//! change behind the cache (stale, as documented for read-through).
//!
//! The eviction listener hears, by the end of each step: every copy that
//! step evicted, with `Size` (exactly those, and copies that had expired
//! unheard) and every value a write stored but the cache refused for its
//! weight; every live copy the step replaced, deleted, dropped or
//! invalidated, once; `Expired` only for copies that had expired unheard,
//! or for the step's own key (a value refused as expired at once);
//! `Replaced`, `Explicit` and `Invalidated` only for keys the step wrote,
//! deleted, loaded or invalidated.
//!
//! Async: a step may make the next call its async twin (`get_async`,
//! `get_all_async`, `put_async`, `put_with_async`, `delete_async`) over the
//! same store as an `AsyncStore` whose calls stay pending for 0–3 polls
//! before they do what the sync call does, and may drop the call's future after a number of
//! polls (a cancelled task). Run to the end, an async call must do exactly
//! what its sync twin does. Dropped: a `get` that missed leaves nothing
//! behind (no store call, nothing cached, its race not run); a
//! write-through `put` or `delete` dropped during its store call leaves the
//! store without the write and the key uncached, and its stripe free for the
//! next write; a `get_all` leaves only the loads it had run (one a key, in
//! turn, each pending for the delay) and nothing cached; a call dropped
//! before its first poll changes nothing.
#![no_main]

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arbitrary::Arbitrary;
use larder::{
    AsyncStore, Cache, Clock, Compute, Computed, DefaultHashBuilder, EntryOptions, Eviction,
    MockClock, Op, ReadThrough, RemovalCause, Store, WriteError, WriteThrough,
};
use libfuzzer_sys::fuzz_target;

/// Keys are taken modulo this: twice the largest capacity.
const KEYS: u8 = 16;

#[derive(Arbitrary, Debug)]
enum Step {
    Get(u8),
    /// `get_all` of the first four keys at most (the store's `load_all` is
    /// the default, one `load` per key missed, stopping at the first
    /// failure).
    GetAll(Vec<u8>),
    /// `refresh` of the key: the store read again, whatever is cached.
    Refresh(u8),
    Put(u8, u16),
    /// `put_with`: a time-to-live of `ttl % 8` ms if given (zero: refused),
    /// and the tag `"t"` with `true`.
    PutWith(u8, u16, Option<u8>, bool),
    Delete(u8),
    /// `write_all` of the first four writes at most (`None`: a delete):
    /// write-through only, a step that does nothing under read-through.
    WriteAll(Vec<(u8, Option<u16>)>),
    /// `compute` of the key, write-through only: `kind % 4` keeps, puts
    /// (the value read plus one, or `v` if none), removes, or puts with the
    /// tag `"t"` (`PutWith`).
    Compute(u8, u8, u16),
    InvalidateTag,
    /// The store's state, `% 4`: working, failing, panicking before it
    /// applies a write, panicking after.
    Store(u8),
    /// The application writes the store itself (`None`: deletes the key).
    BackDoor(u8, Option<u16>),
    /// Moves the clock by `ms % 8` milliseconds.
    Advance(u8),
    /// A `get` during whose load another thread does `Race` on the key.
    Racing(u8, Race),
    /// Makes the next step, if a call (`Get`, `GetAll`, `Refresh`,
    /// `Racing`, `Put`, `PutWith`, `Delete`, `WriteAll`, `Compute`), its async twin, with the store's calls pending for
    /// `delay % 4` polls, and its future dropped after `cancel % 6` polls if
    /// given and it has not ended by then.
    Async {
        delay: u8,
        cancel: Option<u8>,
    },
}

/// How a call is made: sync, or async with the store pending for `delay`
/// polls and the future dropped after `cancel` polls.
#[derive(Clone, Copy, Debug)]
struct Async {
    delay: usize,
    cancel: Option<usize>,
}

impl Async {
    /// Whether a call that ends on poll `polls` is dropped before it does.
    fn cancels(mode: Option<Async>, polls: usize) -> bool {
        mode.and_then(|m| m.cancel).is_some_and(|c| c < polls)
    }

    /// Whether the call was polled at all before it was dropped.
    fn polled(mode: Option<Async>) -> bool {
        mode.and_then(|m| m.cancel) != Some(0)
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Race {
    /// A `put` (`Some`, its copy tagged `"t"` with `true`) or `delete` of
    /// the key, with the store in state `% 4` (as [`Step::Store`]) for the
    /// write's call, and working again after it.
    Write(Option<u16>, bool, u8),
    InvalidateTag,
    BackDoor(Option<u16>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    write_through: bool,
    /// `% 8 + 1` entries, over `1 << (capacity >> 3) % 3` shards (fewer
    /// where the capacity is smaller: at most one a unit of capacity).
    capacity: u8,
    eviction: u8,
    /// Bit 0: loaded values are tagged `"t"`; bit 1: they live `value % 4` ms.
    load_options: u8,
    /// Values weigh `value % 3` (zero included), and the capacity is their
    /// weight: one too heavy for a shard is not cached.
    weighted: bool,
    /// The cache's time-to-live, `ttl % 8 + 1` ms, if given.
    ttl: Option<u8>,
    /// The cache's time-to-idle, `tti % 4 + 1` ms, if given.
    tti: Option<u8>,
    steps: Vec<Step>,
}

const WORKING: u8 = 0;
const FAILING: u8 = 1;
const PANIC_BEFORE: u8 = 2;
const PANIC_AFTER: u8 = 3;

/// Something for a load to run once it has read the store.
type Hook = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Db {
    data: Mutex<HashMap<u8, u16>>,
    /// Every write call, whatever came of it.
    writes: Mutex<Vec<Op<u8, u16>>>,
    loads: AtomicUsize,
    state: AtomicU8,
    tag_loads: bool,
    time_loads: bool,
    /// Polls the `AsyncStore`'s calls stay pending before they run.
    delay: AtomicUsize,
    /// What the eviction listener heard, since the last step's check.
    heard: Mutex<Vec<(u8, u16, RemovalCause)>>,
    /// Run (once) by the next load that reads the store.
    race: Mutex<Option<Hook>>,
}

/// The payload of the store's deliberate panics.
struct Deliberate;

/// Lets deliberate panics unwind to the caller instead of aborting in
/// libFuzzer's panic hook, which every other panic still reaches.
fn allow_deliberate_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<Deliberate>() {
                previous(info);
            }
        }));
    });
}

#[derive(Clone, Default)]
struct Shared(Arc<Db>);

impl Shared {
    fn value(&self, k: u8) -> Option<u16> {
        self.0.data.lock().unwrap().get(&k).copied()
    }
    fn set(&self, k: u8, w: Option<u16>) {
        let mut data = self.0.data.lock().unwrap();
        match w {
            Some(v) => data.insert(k, v),
            None => data.remove(&k),
        };
    }
    fn snapshot(&self) -> HashMap<u8, u16> {
        self.0.data.lock().unwrap().clone()
    }
    fn writes(&self) -> usize {
        self.0.writes.lock().unwrap().len()
    }
    fn loads(&self) -> usize {
        self.0.loads.load(Ordering::SeqCst)
    }
    fn state(&self) -> u8 {
        self.0.state.load(Ordering::SeqCst)
    }
}

impl Store<u8, u16> for Shared {
    type Error = &'static str;
    fn load(&self, key: &u8) -> Result<Option<u16>, Self::Error> {
        self.0.loads.fetch_add(1, Ordering::SeqCst);
        match self.state() {
            FAILING => return Err("failing"),
            PANIC_BEFORE | PANIC_AFTER => std::panic::panic_any(Deliberate),
            _ => {}
        }
        let value = self.value(*key);
        let race = self.0.race.lock().unwrap().take();
        if let Some(race) = race {
            race();
        }
        Ok(value)
    }
    fn write(&self, op: &Op<u8, u16>) -> Result<(), Self::Error> {
        self.0.writes.lock().unwrap().push(op.clone());
        let state = self.state();
        match state {
            FAILING => return Err("failing"),
            PANIC_BEFORE => std::panic::panic_any(Deliberate),
            _ => {}
        }
        match op {
            Op::Put(k, v) => self.set(*k, Some(*v)),
            Op::Delete(k) => self.set(*k, None),
        }
        if state == PANIC_AFTER {
            std::panic::panic_any(Deliberate);
        }
        Ok(())
    }
    fn load_options(&self, _key: &u8, value: &u16) -> EntryOptions {
        let mut options = EntryOptions::new();
        if self.0.tag_loads {
            options = options.tags(["t"]);
        }
        if self.0.time_loads {
            options = options.ttl(Duration::from_millis(u64::from(value % 4)));
        }
        options
    }
}

/// Pending for `polls` polls (waking at once), then ready.
async fn pending_for(polls: usize) {
    let mut left = polls;
    std::future::poll_fn(|cx| {
        if left == 0 {
            return Poll::Ready(());
        }
        left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// The same store, async: each call stays pending for `delay` polls, then
/// does all that the sync call does in its last poll (so a call dropped
/// before then never reached the store).
impl AsyncStore<u8, u16> for Shared {
    type Error = &'static str;
    fn load(&self, key: &u8) -> impl Future<Output = Result<Option<u16>, Self::Error>> + Send {
        let (store, key) = (self.clone(), *key);
        let delay = self.0.delay.load(Ordering::SeqCst);
        async move {
            pending_for(delay).await;
            Store::load(&store, &key)
        }
    }
    fn write_batch(
        &self,
        ops: &[Op<u8, u16>],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let (store, ops) = (self.clone(), ops.to_vec());
        let delay = self.0.delay.load(Ordering::SeqCst);
        async move {
            pending_for(delay).await;
            ops.iter().try_for_each(|op| Store::write(&store, op))
        }
    }
    fn load_options(&self, key: &u8, value: &u16) -> EntryOptions {
        Store::load_options(self, key, value)
    }
}

type Loaded = Result<Option<u16>, Arc<&'static str>>;
type Written = Result<(), WriteError<&'static str>>;

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// The calls both policies share.
trait Through: Clone + Send + Sync + 'static {
    const WRITE_THROUGH: bool;
    fn get(&self, k: u8) -> Loaded;
    fn get_all(&self, keys: &[u8]) -> Result<Vec<Option<u16>>, Arc<&'static str>>;
    fn put(&self, k: u8, v: u16, options: Option<EntryOptions>) -> Written;
    fn delete(&self, k: u8) -> Written;
    fn get_async(&self, k: u8) -> Boxed<'_, Loaded>;
    fn refresh(&self, k: u8) -> Loaded;
    fn refresh_async(&self, k: u8) -> Boxed<'_, Loaded>;
    fn get_all_async(&self, keys: &[u8]) -> Boxed<'_, Result<Vec<Option<u16>>, Arc<&'static str>>>;
    fn put_async(&self, k: u8, v: u16, options: Option<EntryOptions>) -> Boxed<'_, Written>;
    fn delete_async(&self, k: u8) -> Boxed<'_, Written>;
    fn peek(&self, k: u8) -> Option<u16>;
    fn invalidate(&self);
    /// `write_all`, write-through only.
    fn write_all(&self, ops: Vec<Op<u8, u16>>) -> Written;
    fn write_all_async(&self, ops: Vec<Op<u8, u16>>) -> Boxed<'_, Written>;
    /// `compute`, write-through only.
    fn compute(
        &self,
        _k: u8,
        _f: &mut dyn FnMut(Option<&u16>) -> Compute<u16>,
    ) -> Result<Computed<u16>, WriteError<&'static str>> {
        unreachable!("write-through only")
    }
    fn compute_async<'a>(&'a self, _k: u8, _f: ComputeFn<'a>) -> Boxed<'a, Computing> {
        unreachable!("write-through only")
    }
}

/// What a `compute` closure is, boxed for `compute_async`.
type ComputeFn<'a> = Box<dyn FnOnce(Option<&u16>) -> Compute<u16> + 'a>;
type Computing = Result<Computed<u16>, WriteError<&'static str>>;

macro_rules! through {
    ($policy:ty, $write_through:expr, { $($batch:tt)* }) => {
        impl Through for Cache<u8, u16, DefaultHashBuilder, $policy> {
            const WRITE_THROUGH: bool = $write_through;
            fn get(&self, k: u8) -> Loaded {
                Cache::<u8, u16, DefaultHashBuilder, $policy>::get(self, &k)
            }
            fn get_all(&self, keys: &[u8]) -> Result<Vec<Option<u16>>, Arc<&'static str>> {
                Cache::<u8, u16, DefaultHashBuilder, $policy>::get_all(self, keys.iter().copied())
            }
            fn put(&self, k: u8, v: u16, options: Option<EntryOptions>) -> Written {
                match options {
                    Some(options) => {
                        Cache::<u8, u16, DefaultHashBuilder, $policy>::put_with(self, k, v, options)
                    }
                    None => Cache::<u8, u16, DefaultHashBuilder, $policy>::put(self, k, v),
                }
            }
            fn delete(&self, k: u8) -> Written {
                Cache::<u8, u16, DefaultHashBuilder, $policy>::delete(self, &k)
            }
            fn get_async(&self, k: u8) -> Boxed<'_, Loaded> {
                Box::pin(async move {
                    Cache::<u8, u16, DefaultHashBuilder, $policy>::get_async(self, &k).await
                })
            }
            fn refresh(&self, k: u8) -> Loaded {
                Cache::<u8, u16, DefaultHashBuilder, $policy>::refresh(self, k)
            }
            fn refresh_async(&self, k: u8) -> Boxed<'_, Loaded> {
                Box::pin(Cache::<u8, u16, DefaultHashBuilder, $policy>::refresh_async(self, k))
            }
            fn get_all_async(
                &self,
                keys: &[u8],
            ) -> Boxed<'_, Result<Vec<Option<u16>>, Arc<&'static str>>> {
                let keys = keys.to_vec();
                Box::pin(async move {
                    Cache::<u8, u16, DefaultHashBuilder, $policy>::get_all_async(self, keys).await
                })
            }
            fn put_async(
                &self,
                k: u8,
                v: u16,
                options: Option<EntryOptions>,
            ) -> Boxed<'_, Written> {
                match options {
                    Some(options) => Box::pin(
                        Cache::<u8, u16, DefaultHashBuilder, $policy>::put_with_async(
                            self, k, v, options,
                        ),
                    ),
                    None => Box::pin(Cache::<u8, u16, DefaultHashBuilder, $policy>::put_async(
                        self, k, v,
                    )),
                }
            }
            fn delete_async(&self, k: u8) -> Boxed<'_, Written> {
                Box::pin(async move {
                    Cache::<u8, u16, DefaultHashBuilder, $policy>::delete_async(self, &k).await
                })
            }
            fn peek(&self, k: u8) -> Option<u16> {
                Cache::<u8, u16, DefaultHashBuilder, $policy>::peek(self, &k)
            }
            fn invalidate(&self) {
                self.invalidate_tag("t");
            }
            $($batch)*
        }
    };
}

through!(ReadThrough<Shared>, false, {
    fn write_all(&self, ops: Vec<Op<u8, u16>>) -> Written {
        Cache::<u8, u16, DefaultHashBuilder, ReadThrough<Shared>>::write_all(self, ops)
    }
    fn write_all_async(&self, ops: Vec<Op<u8, u16>>) -> Boxed<'_, Written> {
        Box::pin(
            Cache::<u8, u16, DefaultHashBuilder, ReadThrough<Shared>>::write_all_async(self, ops),
        )
    }
});
through!(WriteThrough<Shared>, true, {
    fn compute(
        &self,
        k: u8,
        f: &mut dyn FnMut(Option<&u16>) -> Compute<u16>,
    ) -> Result<Computed<u16>, WriteError<&'static str>> {
        Cache::<u8, u16, DefaultHashBuilder, WriteThrough<Shared>>::compute(self, k, f)
    }
    fn compute_async<'a>(&'a self, k: u8, f: ComputeFn<'a>) -> Boxed<'a, Computing> {
        Box::pin(
            Cache::<u8, u16, DefaultHashBuilder, WriteThrough<Shared>>::compute_async(self, k, f),
        )
    }
    fn write_all(&self, ops: Vec<Op<u8, u16>>) -> Written {
        Cache::<u8, u16, DefaultHashBuilder, WriteThrough<Shared>>::write_all(self, ops)
    }
    fn write_all_async(&self, ops: Vec<Op<u8, u16>>) -> Boxed<'_, Written> {
        Box::pin(
            Cache::<u8, u16, DefaultHashBuilder, WriteThrough<Shared>>::write_all_async(self, ops),
        )
    }
});

/// A cached copy as the model knows it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Cached {
    value: u16,
    /// When it expires, in mock milliseconds.
    deadline: Option<u64>,
    /// The latest a read may move `deadline` to: its time-to-live's end.
    cap: Option<u64>,
    tagged: bool,
}

#[derive(Default)]
struct Model {
    /// How the next call is made (set by `Step::Async`).
    mode: Option<Async>,
    /// Mock milliseconds since the cache was built.
    now: u64,
    copies: HashMap<u8, Cached>,
    /// Keys the application wrote behind the cache while it may have held
    /// them (write-through: until then the cache agrees with the store).
    behind: [bool; KEYS as usize],
    /// Copies that expired and that the listener has not heard of yet: the
    /// cache reclaims them when it gets to them.
    expired: Vec<(u8, u16)>,
    /// The heaviest value a weighted cache takes (a shard's capacity).
    max_weight: Option<u64>,
    /// Weighted under W-TinyLfu: a value heavier than a unit (than the
    /// admission window) contests for room at its own write, and may lose.
    heavy_contest: bool,
    /// The cache's time-to-live in ms, for copies given none of their own.
    ttl: Option<u64>,
    /// The cache's time-to-idle in ms.
    tti: Option<u64>,
}

impl Model {
    /// `k`'s copy, unless it has expired.
    fn live(&self, k: u8) -> Option<Cached> {
        self.copies
            .get(&k)
            .copied()
            .filter(|c| c.deadline.is_none_or(|d| d > self.now))
    }

    /// The deadline of a copy written or read now whose time-to-live ends
    /// at `cap`: the time-to-idle's end, if sooner. (A read moves a deadline
    /// only by the less of a tick and 1/1024 of the time-to-idle, or more:
    /// here, with time-to-idles of a few ms, by any whole millisecond.)
    fn idle(&self, cap: Option<u64>) -> Option<u64> {
        match (cap, self.tti) {
            (Some(c), Some(i)) => Some(c.min(self.now + i)),
            (None, Some(i)) => Some(self.now + i),
            (cap, None) => cap,
        }
    }

    /// Whether the cache refuses `value` for its weight.
    fn too_heavy(&self, value: u16) -> bool {
        self.max_weight.is_some_and(|m| u64::from(value % 3) > m)
    }

    /// The copy a write of `value` leaves, living `ttl` ms if given (`None`:
    /// a zero time-to-live, refused).
    fn written(&self, value: u16, ttl: Option<u64>, tagged: bool) -> Option<Cached> {
        if self.too_heavy(value) {
            return None;
        }
        match ttl {
            Some(0) => None,
            ttl => Some(Cached {
                value,
                deadline: self.idle(ttl.or(self.ttl).map(|t| self.now + t)),
                cap: ttl.or(self.ttl).map(|t| self.now + t),
                tagged,
            }),
        }
    }
}

/// What one step leaves cached: keys it set exactly, and whether it cached
/// anything (other keys' copies may then have been evicted).
#[derive(Default)]
struct After {
    exact: HashMap<u8, Option<Cached>>,
    may_evict: bool,
    /// Values written that the cache refused for their weight: each must be
    /// heard (as `Size`, or as `Expired` for one that also had a zero
    /// time-to-live).
    refused: Vec<(u8, u16)>,
    /// Keys set exactly that a later write of the same step may evict (a
    /// batch's): then gone, and heard as evicted.
    evictable: Vec<u8>,
}

impl After {
    fn set(&mut self, k: u8, copy: Option<Cached>) {
        self.may_evict |= copy.is_some();
        self.exact.insert(k, copy);
    }
}

/// `Ok` for a call's return, `Err` for its store's deliberate panic; any
/// other panic goes on.
fn deliberate<T>(call: impl FnOnce() -> T) -> Result<T, ()> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|payload: Box<dyn Any + Send>| {
        if !payload.is::<Deliberate>() {
            resume_unwind(payload);
        }
    })
}

/// Polls `future` to its end, or drops it after `cancel` polls: `None` then.
fn drive<T>(mut future: Boxed<'_, T>, cancel: Option<usize>) -> Option<T> {
    let mut cx = Context::from_waker(Waker::noop());
    for polls in 0.. {
        if cancel == Some(polls) {
            return None;
        }
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Some(out);
        }
        assert!(polls < 64, "an async call still pending after 64 polls");
    }
    unreachable!("the loop returns")
}

/// Makes a call sync (`mode` `None`) or async: `None` if it was dropped
/// before it ended, else its return (`Err` for the store's deliberate panic).
fn call<'a, T>(
    db: &Shared,
    mode: Option<Async>,
    sync: impl FnOnce() -> T,
    future: impl FnOnce() -> Boxed<'a, T>,
) -> Option<Result<T, ()>> {
    let Some(mode) = mode else {
        return Some(deliberate(sync));
    };
    db.0.delay.store(mode.delay, Ordering::SeqCst);
    match deliberate(|| drive(future(), mode.cancel)) {
        Ok(None) => None,
        Ok(Some(out)) => Some(Ok(out)),
        Err(()) => Some(Err(())),
    }
}

fn tag_options(tagged: bool) -> Option<EntryOptions> {
    tagged.then(|| EntryOptions::new().tags(["t"]))
}

fuzz_target!(|input: Input| {
    allow_deliberate_panics();
    let db = Shared(Arc::new(Db {
        tag_loads: input.load_options & 1 != 0,
        time_loads: input.load_options & 2 != 0,
        ..Db::default()
    }));
    let (clock, time) = Clock::mock();
    let eviction = match input.eviction % 3 {
        0 => Eviction::Lru,
        1 => Eviction::Lfu,
        _ => Eviction::TinyLfu,
    };
    let capacity = u64::from(input.capacity % 8) + 1;
    // Both powers of two: the smaller one is the count.
    let shards = (1u64 << ((input.capacity >> 3) % 3)).min(1 << capacity.ilog2());
    let builder = Cache::builder()
        .max_capacity(capacity)
        .shards(shards as usize)
        .eviction(eviction)
        .clock(clock)
        .eviction_listener({
            let db = db.clone();
            move |k, v, cause| db.0.heard.lock().unwrap().push((k, v, cause))
        });
    let builder = if input.weighted {
        builder.weigher(|_: &u8, v: &u16| u32::from(v % 3))
    } else {
        builder
    };
    let ttl = input.ttl.map(|t| u64::from(t % 8) + 1);
    let builder = match ttl {
        Some(t) => builder.time_to_live(Duration::from_millis(t)),
        None => builder,
    };
    let tti = input.tti.map(|t| u64::from(t % 4) + 1);
    let builder = match tti {
        Some(t) => builder.time_to_idle(Duration::from_millis(t)),
        None => builder,
    };
    let max_weight = input.weighted.then_some(capacity / shards);
    let heavy_contest = input.weighted && eviction == Eviction::TinyLfu;
    if input.write_through {
        let cache = builder.write_through(db.clone()).build().unwrap();
        run(
            &cache,
            &db,
            &time,
            (max_weight, heavy_contest, ttl, tti),
            &input.steps,
        );
    } else {
        let cache = builder.read_through(db.clone()).build().unwrap();
        run(
            &cache,
            &db,
            &time,
            (max_weight, heavy_contest, ttl, tti),
            &input.steps,
        );
    }
    // A hook a step left unrun holds a handle of the cache.
    db.0.race.lock().unwrap().take();
});

fn run<C: Through>(
    cache: &C,
    db: &Shared,
    time: &MockClock,
    (max_weight, heavy_contest, ttl, tti): (Option<u64>, bool, Option<u64>, Option<u64>),
    steps: &[Step],
) {
    let mut model = Model {
        max_weight,
        heavy_contest,
        ttl,
        tti,
        ..Model::default()
    };
    for step in steps {
        let after = one_step(cache, db, time, &mut model, step);
        check(cache, db, &mut model, &after, step);
    }
}

/// Runs `step`, checks what it returned and what the store holds, and says
/// what the cache must hold after it.
fn one_step<C: Through>(
    cache: &C,
    db: &Shared,
    time: &MockClock,
    model: &mut Model,
    step: &Step,
) -> After {
    let mut after = After::default();
    let mode = model.mode.take();
    match *step {
        Step::Async { delay, cancel } => {
            model.mode = Some(Async {
                delay: usize::from(delay % 4),
                cancel: cancel.map(|c| usize::from(c % 6)),
            });
        }
        Step::Get(k) => {
            get(cache, db, model, k % KEYS, None, mode, &mut after);
        }
        Step::Racing(k, race) => {
            get(cache, db, model, k % KEYS, Some(race), mode, &mut after);
        }
        Step::GetAll(ref keys) => {
            let keys: Vec<u8> = keys.iter().take(4).map(|k| k % KEYS).collect();
            get_all(cache, db, model, &keys, mode, &mut after);
        }
        Step::Refresh(k) => refresh(cache, db, model, k % KEYS, mode, &mut after),
        Step::Put(k, v) => write(
            cache,
            db,
            model,
            k % KEYS,
            Some((v, None)),
            mode,
            &mut after,
        ),
        Step::PutWith(k, v, ttl, tagged) => {
            let ttl = ttl.map(|t| u64::from(t % 8));
            let options = EntryOptions::new();
            let options = match ttl {
                Some(t) => options.ttl(Duration::from_millis(t)),
                None => options,
            };
            let options = if tagged { options.tags(["t"]) } else { options };
            let k = k % KEYS;
            let copy = model.written(v, ttl, tagged);
            write_as(
                cache,
                db,
                model,
                k,
                Some((v, Some(options))),
                copy,
                mode,
                &mut after,
            );
        }
        Step::Delete(k) => write(cache, db, model, k % KEYS, None, mode, &mut after),
        Step::WriteAll(ref ops) => {
            let ops: Vec<Op<u8, u16>> = ops
                .iter()
                .take(4)
                .map(|&(k, w)| match w {
                    Some(v) => Op::Put(k % KEYS, v),
                    None => Op::Delete(k % KEYS),
                })
                .collect();
            write_all(cache, db, model, ops, mode, &mut after);
        }
        Step::Compute(k, kind, v) => {
            if C::WRITE_THROUGH {
                compute(cache, db, model, k % KEYS, kind, v, mode, &mut after);
            }
        }
        Step::InvalidateTag => {
            cache.invalidate();
            for (&k, copy) in &model.copies {
                if copy.tagged {
                    after.exact.insert(k, None);
                }
            }
        }
        Step::Store(state) => db.0.state.store(state % 4, Ordering::SeqCst),
        Step::BackDoor(k, w) => {
            let k = k % KEYS;
            db.set(k, w);
            model.behind[usize::from(k)] = true;
        }
        Step::Advance(ms) => {
            let ms = u64::from(ms % 8);
            time.advance(Duration::from_millis(ms));
            model.now += ms;
        }
    }
    after
}

/// A `get` of `k`; with `race`, its load (if it runs one and the store
/// works) lets another thread do `race` once it has read the store.
fn get<C: Through>(
    cache: &C,
    db: &Shared,
    model: &mut Model,
    k: u8,
    race: Option<Race>,
    mode: Option<Async>,
    after: &mut After,
) {
    let state = db.state();
    let stored = db.value(k);
    let loads = db.loads();
    let live = model.live(k);
    // A hit ends on its first poll; a miss once its load has been pending
    // for the delay.
    let polls = match live {
        Some(_) => 1,
        None => mode.map_or(1, |m| m.delay + 1),
    };
    let cancelled = Async::cancels(mode, polls);
    let raced = race.filter(|_| live.is_none() && state == WORKING && !cancelled);
    if let Some(race) = race {
        let cache = cache.clone();
        let behind = db.clone();
        let hook: Hook = Box::new(move || {
            // On another thread, as another caller would: the store must
            // not call the cache it stands behind.
            let racer = std::thread::spawn(move || match race {
                Race::Write(w, tagged, state) => {
                    behind.0.state.store(state % 4, Ordering::SeqCst);
                    let got = deliberate(|| match w {
                        Some(v) => cache.put(k, v, tag_options(tagged)),
                        None => cache.delete(k),
                    });
                    behind.0.state.store(WORKING, Ordering::SeqCst);
                    let want = match state % 4 {
                        _ if !C::WRITE_THROUGH => Ok(Ok(())),
                        WORKING => Ok(Ok(())),
                        FAILING => Ok(Err(WriteError::Store("failing"))),
                        _ => Err(()),
                    };
                    assert_eq!(got, want, "racing write of {k}: {w:?}");
                }
                Race::InvalidateTag => cache.invalidate(),
                Race::BackDoor(w) => behind.set(k, w),
            });
            if let Err(panic) = racer.join() {
                resume_unwind(panic);
            }
        });
        *db.0.race.lock().unwrap() = Some(hook);
    }
    let got = call(db, mode, || cache.get(k), || cache.get_async(k));
    // A hook left unrun is dropped here, with its handle of the cache.
    let unrun = db.0.race.lock().unwrap().take();
    assert_eq!(
        unrun.is_none(),
        raced.is_some() || race.is_none(),
        "get of {k}: the load ran the race, or not, against the model"
    );
    assert_eq!(got.is_none(), cancelled, "get of {k}: dropped, {mode:?}");
    let Some(got) = got else {
        // Dropped before it ended: no store call, nothing cached.
        assert_eq!(db.loads(), loads, "get of {k}: a dropped call loaded");
        return;
    };
    if C::WRITE_THROUGH && !model.behind[usize::from(k)] {
        if let Ok(Ok(value)) = got {
            assert_eq!(
                value, stored,
                "get of {k}: write-through reads the store's value"
            );
        }
    }
    if let Some(copy) = live {
        assert_eq!(got, Ok(Ok(Some(copy.value))), "get of {k}: a hit");
        assert_eq!(db.loads(), loads, "get of {k}: a hit loaded");
        // The read moves the copy's time-to-idle on.
        let deadline = model.idle(copy.cap);
        if let Some(copy) = model.copies.get_mut(&k) {
            copy.deadline = deadline;
        }
        return;
    }
    assert_eq!(db.loads(), loads + 1, "get of {k}: a miss loads once");
    match state {
        FAILING => {
            assert_eq!(got, Ok(Err(Arc::new("failing"))), "get of {k}");
            after.exact.insert(k, None);
            return;
        }
        PANIC_BEFORE | PANIC_AFTER => {
            assert!(got.is_err(), "get of {k}: the load's panic is lost");
            after.exact.insert(k, None);
            return;
        }
        _ => {}
    }
    assert_eq!(got, Ok(Ok(stored)), "get of {k}: the store's value");
    let loaded = stored.and_then(|v| {
        model.written(
            v,
            db.0.time_loads.then_some(u64::from(v % 4)),
            db.0.tag_loads,
        )
    });
    match raced {
        None => after.set(k, loaded),
        Some(Race::Write(w, tagged, state)) => {
            let state = if C::WRITE_THROUGH { state % 4 } else { WORKING };
            // The store's call: taken (working, or panicking after), or not.
            let stored = match state {
                WORKING | PANIC_AFTER if C::WRITE_THROUGH => w,
                _ => stored,
            };
            assert_eq!(db.value(k), stored, "racing write of {k}: {w:?}, the store");
            match state {
                // Cached over the load.
                WORKING => after.set(k, w.and_then(|v| model.written(v, None, tagged))),
                // Refused: the cache is unchanged, and the load lands.
                FAILING => after.set(k, loaded),
                // The store may have it: no copy, and the load is stale.
                _ => {
                    after.exact.insert(k, None);
                }
            }
            if C::WRITE_THROUGH && state != FAILING {
                model.behind[usize::from(k)] = false;
            }
        }
        Some(Race::InvalidateTag) => {
            for (&t, copy) in &model.copies {
                if copy.tagged {
                    after.exact.insert(t, None);
                }
            }
            after.set(k, loaded.filter(|c| !c.tagged));
        }
        Some(Race::BackDoor(_)) => {
            after.set(k, loaded);
            model.behind[usize::from(k)] = true;
        }
    }
}

/// A `get_all` of `keys`: each key looked up in order (a hit moves its
/// time-to-idle on), the keys missed loaded by the store's default
/// `load_all`, one `load` each in order of first miss, the first failure
/// (or panic) ending it and failing the call; each value found cached.
fn get_all<C: Through>(
    cache: &C,
    db: &Shared,
    model: &mut Model,
    keys: &[u8],
    mode: Option<Async>,
    after: &mut After,
) {
    let state = db.state();
    let loads = db.loads();
    let mut expected = Vec::new();
    let mut missed: Vec<u8> = Vec::new();
    let mut hits = Vec::new();
    for &k in keys {
        match model.live(k) {
            Some(copy) => {
                expected.push(Some(copy.value));
                hits.push((k, copy.cap));
            }
            None => {
                expected.push(db.value(k));
                if !missed.contains(&k) {
                    missed.push(k);
                }
            }
        }
    }
    // The store's loads the call runs to its end: one per miss, or up to
    // the first that fails or panics. Async, each stays pending for the
    // delay, and the call ends on the poll after the last one's.
    let runs = match state {
        _ if missed.is_empty() => 0,
        WORKING => missed.len(),
        _ => 1,
    };
    let delay = mode.map_or(0, |m| m.delay);
    let cancelled = Async::cancels(mode, 1 + delay * runs);
    let got = call(
        db,
        mode,
        || cache.get_all(keys),
        || cache.get_all_async(keys),
    );
    assert_eq!(
        got.is_none(),
        cancelled,
        "get_all of {keys:?}: dropped, {mode:?}"
    );
    // The hits are read (and their time-to-idle moved on) on the first
    // poll, before any load.
    if Async::polled(mode) {
        for (k, cap) in hits {
            let deadline = model.idle(cap);
            if let Some(copy) = model.copies.get_mut(&k) {
                copy.deadline = deadline;
            }
        }
    }
    let Some(got) = got else {
        // Dropped before it ended: the loads that had run, nothing cached.
        let polls = mode.and_then(|m| m.cancel).unwrap_or(0);
        let ran = match delay {
            0 => 0,
            d => runs.min(polls.saturating_sub(1) / d),
        };
        assert_eq!(
            db.loads(),
            loads + ran,
            "get_all of {keys:?}: dropped after {polls} polls"
        );
        return;
    };
    if missed.is_empty() {
        assert_eq!(got, Ok(Ok(expected)), "get_all of {keys:?}: all hits");
        assert_eq!(db.loads(), loads, "get_all of {keys:?}: a hit loaded");
        return;
    }
    match state {
        FAILING => {
            assert_eq!(got, Ok(Err(Arc::new("failing"))), "get_all of {keys:?}");
            assert_eq!(
                db.loads(),
                loads + 1,
                "get_all of {keys:?}: stops at a failure"
            );
        }
        PANIC_BEFORE | PANIC_AFTER => {
            assert!(
                got.is_err(),
                "get_all of {keys:?}: the load's panic is lost"
            );
            assert_eq!(
                db.loads(),
                loads + 1,
                "get_all of {keys:?}: stops at a panic"
            );
        }
        _ => {
            assert_eq!(
                got,
                Ok(Ok(expected)),
                "get_all of {keys:?}: the store's values"
            );
            assert_eq!(
                db.loads(),
                loads + missed.len(),
                "get_all of {keys:?}: a load per miss"
            );
            for &k in &missed {
                let loaded = db.value(k).and_then(|v| {
                    model.written(
                        v,
                        db.0.time_loads.then_some(u64::from(v % 4)),
                        db.0.tag_loads,
                    )
                });
                // A later key's landing may evict an earlier one's: the
                // copy is the model's, not one the step pins down.
                match loaded {
                    Some(copy) => {
                        model.copies.insert(k, copy);
                        after.may_evict = true;
                    }
                    None => {
                        after.exact.insert(k, None);
                    }
                }
            }
            return;
        }
    }
    for &k in &missed {
        after.exact.insert(k, None);
    }
}

/// A `refresh` of `k`: a load whatever is cached. What the store gives
/// replaces the copy (`None` takes it out); a failure or a panic leaves it.
fn refresh<C: Through>(
    cache: &C,
    db: &Shared,
    model: &mut Model,
    k: u8,
    mode: Option<Async>,
    after: &mut After,
) {
    let state = db.state();
    let stored = db.value(k);
    let loads = db.loads();
    let cancelled = Async::cancels(mode, mode.map_or(1, |m| m.delay + 1));
    let got = call(db, mode, || cache.refresh(k), || cache.refresh_async(k));
    assert_eq!(
        got.is_none(),
        cancelled,
        "refresh of {k}: dropped, {mode:?}"
    );
    let Some(got) = got else {
        // Dropped before its load read the store: nothing changed.
        assert_eq!(db.loads(), loads, "refresh of {k}: a dropped call loaded");
        return;
    };
    assert_eq!(
        db.loads(),
        loads + 1,
        "refresh of {k}: one load, cached or not"
    );
    match state {
        FAILING => assert_eq!(got, Ok(Err(Arc::new("failing"))), "refresh of {k}"),
        PANIC_BEFORE | PANIC_AFTER => {
            assert!(got.is_err(), "refresh of {k}: the load's panic is lost");
        }
        _ => {
            assert_eq!(got, Ok(Ok(stored)), "refresh of {k}: the store's value");
            let loaded = stored.and_then(|v| {
                model.written(
                    v,
                    db.0.time_loads.then_some(u64::from(v % 4)),
                    db.0.tag_loads,
                )
            });
            after.set(k, loaded);
            // The copy, if any, is the store's again.
            model.behind[usize::from(k)] = false;
        }
    }
}

/// A write-through `write_all` of `ops`: each key's last write, in one
/// store call (the store's default `write_batch`: a write per op, stopping
/// at the first that fails or panics). Taken, the writes land as `put` and
/// `delete` land them; failed, panicked or dropped during the store call,
/// the batch's keys lose their copies (the store may have some of it).
fn write_all<C: Through>(
    cache: &C,
    db: &Shared,
    model: &mut Model,
    ops: Vec<Op<u8, u16>>,
    mode: Option<Async>,
    after: &mut After,
) {
    // Read-through: the batch lands in the cache alone, whatever the
    // store's state, as a write-through batch the store took.
    let state = if C::WRITE_THROUGH {
        db.state()
    } else {
        WORKING
    };
    let before = db.snapshot();
    let writes = db.writes();
    let mut batch: Vec<Op<u8, u16>> = Vec::new();
    for op in ops.iter().rev() {
        if !batch.iter().any(|b| b.key() == op.key()) {
            batch.insert(0, op.clone());
        }
    }
    // The stripes are free: taken on the first poll, with the store call
    // started; it does its work on its last. An empty batch calls nothing,
    // nor does a read-through one: it ends on its first poll.
    let polls = match mode {
        Some(m) if !batch.is_empty() && C::WRITE_THROUGH => m.delay + 1,
        _ => 1,
    };
    let cancelled = Async::cancels(mode, polls);
    let async_ops = ops.clone();
    let got = call(
        db,
        mode,
        || cache.write_all(ops),
        || cache.write_all_async(async_ops),
    );
    assert_eq!(
        got.is_none(),
        cancelled,
        "write_all {batch:?}: dropped, {mode:?}"
    );
    let Some(got) = got else {
        assert_eq!(
            db.writes(),
            writes,
            "write_all {batch:?}: a dropped call wrote"
        );
        assert_eq!(
            db.snapshot(),
            before,
            "write_all {batch:?}: a dropped call changed the store"
        );
        if Async::polled(mode) {
            for op in &batch {
                after.exact.insert(*op.key(), None);
                model.behind[usize::from(*op.key())] = false;
            }
        }
        return;
    };
    let sent = match state {
        _ if batch.is_empty() || !C::WRITE_THROUGH => 0,
        WORKING => batch.len(),
        _ => 1,
    };
    assert_eq!(
        db.writes(),
        writes + sent,
        "write_all {batch:?}: writes sent"
    );
    assert_eq!(
        db.0.writes.lock().unwrap()[writes..],
        batch[..sent],
        "write_all {batch:?}: the last write of each key, in order"
    );
    let mut stored = before.clone();
    let applied = match state {
        WORKING | PANIC_AFTER => sent,
        _ => 0,
    };
    for op in &batch[..applied] {
        match op {
            Op::Put(k, v) => stored.insert(*k, *v),
            Op::Delete(k) => stored.remove(k),
        };
    }
    assert_eq!(db.snapshot(), stored, "write_all {batch:?}: the store");
    match state {
        _ if batch.is_empty() => assert_eq!(got, Ok(Ok(())), "an empty write_all"),
        WORKING => {
            assert_eq!(got, Ok(Ok(())), "write_all {batch:?}");
            for op in &batch {
                let (k, value) = match *op {
                    Op::Put(k, v) => (k, Some(v)),
                    Op::Delete(k) => (k, None),
                };
                after.set(k, value.and_then(|v| model.written(v, None, false)));
                // A later key's landing may evict this one.
                after.evictable.push(k);
                after
                    .refused
                    .extend(value.filter(|&v| model.too_heavy(v)).map(|v| (k, v)));
            }
        }
        FAILING => assert_eq!(
            got,
            Ok(Err(WriteError::Store("failing"))),
            "write_all {batch:?}"
        ),
        _ => assert!(
            got.is_err(),
            "write_all {batch:?}: the store's panic is lost"
        ),
    }
    if state != WORKING {
        // The store may have taken part of the batch: its keys' copies go.
        for op in &batch {
            after.exact.insert(*op.key(), None);
        }
    }
    for op in &batch {
        model.behind[usize::from(*op.key())] = false;
    }
}

/// A `put` (`Some((value, options))`) or `delete` (`None`) of `k`.
fn write<C: Through>(
    cache: &C,
    db: &Shared,
    model: &mut Model,
    k: u8,
    put: Option<(u16, Option<EntryOptions>)>,
    mode: Option<Async>,
    after: &mut After,
) {
    let copy = put
        .as_ref()
        .and_then(|&(v, _)| model.written(v, None, false));
    write_as(cache, db, model, k, put, copy, mode, after);
}

/// A write-through `compute` of `k` (`compute_async` after an `Async`
/// step): `kind % 4` keeps, puts the value read plus one (`v` if none),
/// removes, or puts it tagged `"t"`.
#[allow(clippy::too_many_arguments)]
fn compute<C: Through>(
    cache: &C,
    db: &Shared,
    model: &mut Model,
    k: u8,
    kind: u8,
    v: u16,
    mode: Option<Async>,
    after: &mut After,
) {
    let state = db.state();
    let loads = db.loads();
    let writes = db.writes();
    let before = db.snapshot();
    let live = model.live(k);
    let current = live.map_or(before.get(&k).copied(), |c| Some(c.value));
    let tagged = kind % 4 == 3;
    let wanted = |read: Option<u16>| {
        let next = read.map_or(v, |r| r.wrapping_add(1));
        match kind % 4 {
            0 => Compute::Keep,
            1 => Compute::Put(next),
            2 => Compute::Remove,
            _ => Compute::PutWith(next, EntryOptions::new().tags(["t"])),
        }
    };
    let seen = std::cell::Cell::new(None);
    let f = |read: Option<&u16>| {
        seen.set(Some(read.copied()));
        wanted(read.copied())
    };
    let what = format!("compute {} of {k}, {mode:?}", kind % 4);
    // Async: the stripe is free, taken on the first poll; a miss's load is
    // then pending for the delay, and the write, if any, started on the
    // poll the load ends (the first, for a hit), for the delay again.
    let delay = mode.map_or(0, |m| m.delay);
    let load_polls = if live.is_some() { 0 } else { delay };
    let read_fails = live.is_none() && state != WORKING;
    let writes_any = !read_fails
        && match wanted(current) {
            Compute::Keep => false,
            Compute::Remove => current.is_some(),
            _ => true,
        };
    let polls = 1 + load_polls + if writes_any { delay } else { 0 };
    let cancelled = Async::cancels(mode, polls);
    let got = call(
        db,
        mode,
        || cache.compute(k, &mut { f }),
        || cache.compute_async(k, Box::new(f)),
    );
    assert_eq!(got.is_none(), cancelled, "{what}: dropped");
    let Some(got) = got else {
        // Dropped after `polled` polls: in its load (or before its first
        // poll) it changed nothing; in its write, the store does not have
        // it and the key's cached copy is gone.
        let polled = mode.and_then(|m| m.cancel).unwrap_or(0);
        let in_write = polled > load_polls;
        assert_eq!(db.writes(), writes, "{what}: a dropped call wrote");
        assert_eq!(db.snapshot(), before, "{what}: a dropped call stored");
        let loaded = usize::from(in_write && live.is_none());
        assert_eq!(db.loads(), loads + loaded, "{what}: loads");
        if in_write {
            assert_eq!(seen.get(), Some(current), "{what}: the value read");
            after.exact.insert(k, None);
            model.behind[usize::from(k)] = false;
        } else {
            assert_eq!(seen.get(), None, "{what}: the closure ran");
        }
        return;
    };
    let seen = seen.get();
    if let Some(copy) = live {
        assert_eq!(db.loads(), loads, "{what}: a hit loaded");
        // The read moves the copy's time-to-idle on.
        let deadline = model.idle(copy.cap);
        if let Some(copy) = model.copies.get_mut(&k) {
            copy.deadline = deadline;
        }
    } else {
        assert_eq!(db.loads(), loads + 1, "{what}: a miss loads once");
        let failed = match state {
            FAILING => {
                assert_eq!(got, Ok(Err(WriteError::Store("failing"))), "{what}");
                true
            }
            PANIC_BEFORE | PANIC_AFTER => {
                assert!(got.is_err(), "{what}: the load's panic is lost");
                true
            }
            _ => false,
        };
        if failed {
            assert_eq!(seen, None, "{what}: the closure ran on a failed read");
            assert_eq!(db.writes(), writes, "{what}: wrote after a failed read");
            return;
        }
    }
    assert_eq!(
        seen,
        Some(current),
        "{what}: the value handed to the closure"
    );
    let write = match wanted(current) {
        Compute::Put(x) | Compute::PutWith(x, _) => Some(x),
        Compute::Remove if current.is_some() => None,
        _ => {
            let expect = current.map_or(Computed::Absent, Computed::Unchanged);
            assert_eq!(got, Ok(Ok(expect)), "{what}");
            assert_eq!(db.writes(), writes, "{what}: nothing to write, yet a call");
            return;
        }
    };
    let op = match write {
        Some(x) => Op::Put(k, x),
        None => Op::Delete(k),
    };
    assert_eq!(db.writes(), writes + 1, "{what}: one store call");
    assert_eq!(
        db.0.writes.lock().unwrap().last(),
        Some(&op),
        "{what}: sent"
    );
    let mut stored = before.clone();
    match write {
        Some(x) => stored.insert(k, x),
        None => stored.remove(&k),
    };
    match state {
        FAILING => {
            assert_eq!(got, Ok(Err(WriteError::Store("failing"))), "{what}");
            assert_eq!(db.snapshot(), before, "{what}: refused, yet stored");
        }
        PANIC_BEFORE | PANIC_AFTER => {
            assert!(got.is_err(), "{what}: the store's panic is lost");
            let expect = if state == PANIC_AFTER {
                &stored
            } else {
                &before
            };
            assert_eq!(&db.snapshot(), expect, "{what}: the store");
            after.exact.insert(k, None);
            model.behind[usize::from(k)] = false;
        }
        _ => {
            let expect = match (write, current) {
                (Some(x), Some(_)) => Computed::Replaced(x),
                (Some(x), None) => Computed::Inserted(x),
                (None, old) => Computed::Removed(old.expect("a remove of a present key")),
            };
            assert_eq!(got, Ok(Ok(expect)), "{what}");
            assert_eq!(db.snapshot(), stored, "{what}: acknowledged, not stored");
            after.set(k, write.and_then(|x| model.written(x, None, tagged)));
            after
                .refused
                .extend(write.filter(|&x| model.too_heavy(x)).map(|x| (k, x)));
            model.behind[usize::from(k)] = false;
        }
    }
}

/// [`write`], which caches `copy` when it lands.
fn write_as<C: Through>(
    cache: &C,
    db: &Shared,
    model: &mut Model,
    k: u8,
    put: Option<(u16, Option<EntryOptions>)>,
    copy: Option<Cached>,
    mode: Option<Async>,
    after: &mut After,
) {
    let state = db.state();
    let before = db.snapshot();
    let writes = db.writes();
    let value = put.as_ref().map(|&(v, _)| v);
    let op = match value {
        Some(v) => Op::Put(k, v),
        None => Op::Delete(k),
    };
    // Write-through takes the key's stripe on the first poll, then awaits
    // the store; read-through ends on the first poll.
    let polls = match mode {
        Some(m) if C::WRITE_THROUGH => m.delay + 1,
        _ => 1,
    };
    let cancelled = Async::cancels(mode, polls);
    let put_async = put.clone();
    let got = call(
        db,
        mode,
        || match put {
            Some((v, options)) => cache.put(k, v, options),
            None => cache.delete(k),
        },
        || match put_async {
            Some((v, options)) => cache.put_async(k, v, options),
            None => cache.delete_async(k),
        },
    );
    assert_eq!(got.is_none(), cancelled, "{op:?}: dropped, {mode:?}");
    let Some(got) = got else {
        assert_eq!(
            db.writes(),
            writes,
            "{op:?}: a dropped call reached the store"
        );
        assert_eq!(
            db.snapshot(),
            before,
            "{op:?}: a dropped call changed the store"
        );
        if Async::polled(mode) {
            // Dropped in its store call: the store may have had the write
            // (not this one), so the key's copy is gone.
            after.exact.insert(k, None);
        }
        return;
    };
    if !C::WRITE_THROUGH {
        assert_eq!(
            got,
            Ok(Ok(())),
            "{op:?}: read-through writes the cache alone"
        );
        assert_eq!(db.writes(), 0, "{op:?}: read-through wrote the store");
        assert_eq!(
            db.snapshot(),
            before,
            "{op:?}: read-through changed the store"
        );
        after.set(k, copy);
        after
            .refused
            .extend(value.filter(|&v| model.too_heavy(v)).map(|v| (k, v)));
        return;
    }
    assert_eq!(db.writes(), writes + 1, "{op:?}: one store call");
    assert_eq!(
        db.0.writes.lock().unwrap().last(),
        Some(&op),
        "{op:?}: sent"
    );
    let mut stored = before.clone();
    match value {
        Some(v) => stored.insert(k, v),
        None => stored.remove(&k),
    };
    match state {
        FAILING => {
            assert_eq!(got, Ok(Err(WriteError::Store("failing"))), "{op:?}");
            assert_eq!(db.snapshot(), before, "{op:?}: refused, yet stored");
            // The cache is unchanged: no key's copy moves.
        }
        PANIC_BEFORE | PANIC_AFTER => {
            assert!(got.is_err(), "{op:?}: the store's panic is lost");
            let expect = if state == PANIC_AFTER {
                &stored
            } else {
                &before
            };
            assert_eq!(&db.snapshot(), expect, "{op:?}: the store");
            // The store may have the write: the cached copy is dropped.
            after.exact.insert(k, None);
            model.behind[usize::from(k)] = false;
        }
        _ => {
            assert_eq!(got, Ok(Ok(())), "{op:?}");
            assert_eq!(db.snapshot(), stored, "{op:?}: acknowledged, not stored");
            after.set(k, copy);
            after
                .refused
                .extend(value.filter(|&v| model.too_heavy(v)).map(|v| (k, v)));
            model.behind[usize::from(k)] = false;
        }
    }
}

/// After a step: every key's cached copy is what `after` and the model say,
/// or, after a step that cached something, a key it did not set may have
/// been evicted. Write-through: a copy the application did not overtake
/// behind the cache equals the store's value.
fn check<C: Through>(cache: &C, db: &Shared, model: &mut Model, after: &After, step: &Step) {
    let mut evictions = Vec::new();
    let mut removals = Vec::new();
    for k in 0..KEYS {
        let set = after.exact.get(&k);
        let want = match set {
            Some(copy) => *copy,
            None => model.live(k),
        };
        let got = cache.peek(k);
        let evictable = set.is_none() || after.evictable.contains(&k);
        let evicted = after.may_evict && evictable && got.is_none();
        // A copy the step set, heavier than a unit, that lost its contest
        // for room at its own write (heard as `Size` in the step).
        let turned_away = match (set, want, got) {
            (Some(_), Some(copy), None)
                if model.heavy_contest
                    && copy.value % 3 > 1
                    && db.0.heard.lock().unwrap().contains(&(
                        k,
                        copy.value,
                        RemovalCause::Size,
                    )) =>
            {
                evictions.push((k, copy.value));
                true
            }
            _ => false,
        };
        assert!(
            got == want.map(|c| c.value) || evicted || turned_away,
            "after {step:?}: key {k} cached as {got:?}, the model's copy {want:?} (evictions {})",
            after.may_evict
        );
        if let (Some(copy), None, true, false) = (want, got, evictable, turned_away) {
            evictions.push((k, copy.value));
        }
        // A live copy of a key the step wrote, deleted or invalidated.
        if let (Some(_), Some(old)) = (set, model.live(k)) {
            removals.push((k, old.value));
        }
        // A copy gone past its deadline, or overwritten after it, that the
        // cache may not have reclaimed yet.
        if let Some(old) = model.copies.get(&k) {
            if old.deadline.is_some_and(|d| d <= model.now) {
                model.expired.push((k, old.value));
            }
        }
        match got.and(want) {
            Some(copy) => model.copies.insert(k, copy),
            None => model.copies.remove(&k),
        };
        let behind = &mut model.behind[usize::from(k)];
        if got.is_none() {
            // The next read loads what the store holds.
            *behind = false;
        }
        if C::WRITE_THROUGH && !*behind {
            assert!(
                got.is_none() || got == db.value(k),
                "after {step:?}: key {k} cached as {got:?}, stored as {:?}",
                db.value(k)
            );
        }
    }
    check_heard(db, model, after, evictions, removals, step);
}

/// What the listener heard during `step`, against the copies the step
/// evicted (`evictions`), those that had expired, and the keys it touched.
fn check_heard(
    db: &Shared,
    model: &mut Model,
    after: &After,
    mut evictions: Vec<(u8, u16)>,
    mut removals: Vec<(u8, u16)>,
    step: &Step,
) {
    let heard = std::mem::take(&mut *db.0.heard.lock().unwrap());
    let mut refused = after.refused.clone();
    let take =
        |list: &mut Vec<(u8, u16)>, k: u8, v: u16| match list.iter().position(|&e| e == (k, v)) {
            Some(i) => {
                list.swap_remove(i);
                true
            }
            None => false,
        };
    for &(k, v, cause) in &heard {
        let touched = after.exact.contains_key(&k);
        let known = match cause {
            RemovalCause::Size => {
                take(&mut refused, k, v)
                    || take(&mut evictions, k, v)
                    || take(&mut model.expired, k, v)
                    || (touched && model.too_heavy(v))
                    // A batch key's old copy, evicted by an earlier key's
                    // landing before its own write replaced it.
                    || (after.evictable.contains(&k) && take(&mut removals, k, v))
            }
            RemovalCause::Expired if take(&mut refused, k, v) => true,
            _ => take(&mut removals, k, v) || take(&mut model.expired, k, v) || touched,
        };
        assert!(
            known,
            "after {step:?}: heard ({k}, {v}, {cause:?}), which the step did not remove (heard {heard:?})"
        );
    }
    assert!(
        evictions.is_empty(),
        "after {step:?}: evicted {evictions:?} unheard (heard {heard:?})"
    );
    assert!(
        refused.is_empty(),
        "after {step:?}: refused {refused:?} unheard (heard {heard:?})"
    );
    assert!(
        removals.is_empty(),
        "after {step:?}: replaced or removed {removals:?} unheard (heard {heard:?})"
    );
}
