//! Write-back puts, deletes, reads and flushes against a store that can be
//! switched to failing, through a cache small enough that dirty entries are
//! evicted all the time. Between flushes every read returns the last
//! acknowledged write of its key (read-your-writes, whatever was evicted or
//! failed); at each flush, every key's last acknowledged write is in the store
//! or was reported as failed, and the store took each key's writes in order.
//! The store can also be switched to panicking, which the flusher must treat
//! as a failed attempt. With `handler` a failure handler takes the failed
//! writes instead of `flush`: every key's last acknowledged write is then
//! stored, reported or handed to it, and a read of a key whose last write was
//! handed over returns that write (it stays cached until evicted or
//! replaced) or what the store holds, until the key is written again.
//! `delay` gives the flusher a nonzero `max_delay` to gather batches in.
//! A put may tag its cached copy, and a step invalidates the tag: the copy
//! goes as an eviction would take it, and the checks above stand unchanged.
//! With `handler` and `block`, writes meet a full queue with
//! `Backpressure::Block` (without a handler, a queue full of unreported
//! failures would keep this single caller waiting until a flush it never
//! reaches, as documented): they wait for room and never report it full.
//! With `two`, the steps between two flushes are dealt to two threads that
//! write and read keys of their own (even and odd) through the one cache at
//! once; each flush waits for both, then checks as above. With `two` and
//! `shared`, both threads write and read the same eight keys, so the order of
//! two writes of a key is the cache's to choose, and either thread may switch
//! the store to failing or panicking: every read in a stretch returns a value
//! acknowledged to one of them or the key's value before the stretch (a
//! refused write is never seen); once both are done, each key reads as one of
//! the two threads' last acknowledged writes of it (or as before, if neither
//! wrote it), and at the flush that write is in the store or reported failed,
//! the store having taken each key's writes in an order that keeps each
//! thread's own; after the flush, without a handler, the cache reads what the
//! store holds. A key with a write handed to the failure handler may read,
//! from then on, as any write it was ever acknowledged with (the handed-over
//! write while it stays cached, else the store's older value).
//!
//! A `get_all` step reads up to four keys at once (the cache's misses
//! looked up in the queue, the rest read from the store in one call), and
//! each key it returns is checked as a read of it alone is.
//!
//! A `write_all` step (sync, or async and polled as below) writes up to four
//! puts and deletes as one batch: acknowledged, each key's last write in it
//! counts as a write of that key alone; refused, none of it does. Only a
//! batch of more keys than the queue holds is refused as too large, and it
//! always is.
//!
//! A `compute` step reads its key and decides, by its `kind`, to keep it,
//! to put a value (the one given plus what it read, tagged or not), or to
//! remove it. What its closure read is checked as a read is; the write it
//! decided on, once the call returns it, counts as a write of that key, a
//! removal of a key that read as absent as none. A full `Fail` queue
//! refuses it before its read, or, for a key dirty as the call began (which
//! then goes on holding no room), after it, should the flusher have stored
//! or given up on the key's writes meanwhile: either way its write counts
//! for nothing.
//!
//! `put_async`, `put_with_async` and `delete_async` steps poll their future
//! (with a waker that does nothing, yielding between polls) until it ends,
//! or drop it once a given number of polls found it pending (a cancelled
//! task, as when waiting for room in a full queue): a dropped write is not
//! acknowledged and must change nothing, so every check above stands.
//!
//! A stretch may also end with `flush_async` or `close_async`, polled
//! likewise. One that ends is checked as a flush is; one dropped reports
//! nothing, and what it would have reported must come in the next report
//! instead. A `close_async` polled at least once has closed the cache,
//! ended or not: from then on every write is refused as closed (and a
//! write is refused so only then), and reads go on as before.
//!
//! The cache evicts by LRU, LFU or W-TinyLfu (`eviction % 3`). With
//! `weighted`, a value weighs its residue mod 4: entries of weight 0 that
//! size never evicts, and entries heavier than the cache, which it refuses,
//! or than W-TinyLfu's admission window, which it may turn away at their own
//! write; either way the write is queued, and every check above stands. An
//! eviction listener hears every cached copy that leaves, and must only ever
//! hear a value its key was acknowledged with (a write refused, or dropped
//! before it ended, is never cached). With `eviction` of 128 or more the
//! listener panics on the values congruent to `eviction` mod 8: a write
//! whose call ends in that panic was queued and cached before it (the docs
//! of `put`), so it counts as acknowledged; a read that ends so returns
//! nothing to check; a flush or close that ends so (dropping the cached
//! copies of failed writes) leaves its report to the next one.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arbitrary::Arbitrary;
use larder::{
    Backpressure, Cache, Compute, Computed, DefaultHashBuilder, EntryOptions, Eviction, Op, Store,
    WriteBack, WriteBehind, WriteError,
};

/// Writes handed to the failure handler, as `(key, value or deletion)`.
type Handed = Arc<Mutex<Vec<(u8, Option<u16>)>>>;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Step {
    /// With `true`, the cached copy is tagged (`put_with`).
    Put(u8, u16, bool),
    Delete(u8),
    /// Drops the tagged cached copies; their writes stay queued.
    InvalidateTag,
    Get(u8),
    /// `get_all` of the first four keys at most.
    GetAll(Vec<u8>),
    Flush,
    Fail(bool),
    Panic(bool),
    /// `put_async` (`put_with_async` with `true`), dropped once `cancel % 3`
    /// polls found it pending, if given.
    PutAsync(u8, u16, bool, Option<u8>),
    /// `delete_async`, dropped likewise.
    DeleteAsync(u8, Option<u8>),
    /// `write_all` of the first four (key, write) pairs (`None`: a delete);
    /// with `Some(cancel)`, `write_all_async`, dropped likewise.
    WriteAll(Vec<(u8, Option<u16>)>, Option<Option<u8>>),
    /// `compute` of a key: by `kind % 4`, keep, put (the value plus what
    /// was read), remove, or put tagged.
    Compute(u8, u8, u16),
    /// `flush_async`, ending a stretch as `Flush` does, dropped likewise.
    FlushAsync(Option<u8>),
    /// `close_async`, ending a stretch, dropped likewise.
    CloseAsync(Option<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    handler: bool,
    block: bool,
    two: bool,
    shared: bool,
    delay: u8,
    capacity: u8,
    batch: u8,
    queue: u8,
    /// The policy by its residue mod 3; 128 and up, the listener panics.
    eviction: u8,
    weighted: bool,
    steps: Vec<Step>,
}

#[derive(Default)]
struct Db {
    data: Mutex<HashMap<u8, u16>>,
    /// Every write applied, in order.
    log: Mutex<Vec<Op<u8, u16>>>,
    failing: AtomicBool,
    panicking: AtomicBool,
}

/// The payload of the store's deliberate panics.
struct Deliberate;

/// The payload of the listener's deliberate panics.
struct Heard;

/// What the listener heard, as `(key, value)`.
type Listened = Arc<Mutex<Vec<(u8, u16)>>>;

/// Runs a call of the cache's, `Err` when it ended in the listener's panic
/// (any other panic goes on).
fn calm<T>(call: impl FnOnce() -> T) -> Result<T, ()> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(out) => Ok(out),
        Err(panic) if panic.is::<Heard>() => Err(()),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Checks that the listener heard, of each key, only values in `ever`
/// (its acknowledged writes), and forgets what it heard.
fn check_heard(listened: &Listened, ever: &dyn Fn(u8, u16) -> bool) {
    for (k, v) in listened.lock().unwrap().drain(..) {
        assert!(
            ever(k, v),
            "the listener heard {k} => {v}, never acknowledged"
        );
    }
}

/// Lets deliberate panics unwind to the flusher instead of aborting in
/// libFuzzer's panic hook, which every other panic still reaches.
fn allow_deliberate_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<Deliberate>() && !info.payload().is::<Heard>() {
                previous(info);
            }
        }));
    });
}

#[derive(Clone, Default)]
struct Shared(Arc<Db>);

impl Store<u8, u16> for Shared {
    type Error = &'static str;
    fn load(&self, key: &u8) -> Result<Option<u16>, Self::Error> {
        Ok(self.0.data.lock().unwrap().get(key).copied())
    }
    fn write(&self, op: &Op<u8, u16>) -> Result<(), Self::Error> {
        self.write_batch(std::slice::from_ref(op))
    }
    fn write_batch(&self, ops: &[Op<u8, u16>]) -> Result<(), Self::Error> {
        if self.0.panicking.load(Ordering::SeqCst) {
            std::panic::panic_any(Deliberate);
        }
        if self.0.failing.load(Ordering::SeqCst) {
            return Err("failing");
        }
        let mut data = self.0.data.lock().unwrap();
        for op in ops {
            match op {
                Op::Put(k, v) => data.insert(*k, *v),
                Op::Delete(k) => data.remove(k),
            };
        }
        self.0.log.lock().unwrap().extend(ops.iter().cloned());
        Ok(())
    }
}

/// What the writers were told, per key (each key has one writer).
#[derive(Default)]
struct Model {
    /// What reads must see: each key's last acknowledged write, or after a
    /// report of its failure, what the store holds.
    last: HashMap<u8, Option<u16>>,
    /// Every acknowledged write per key, in order.
    acked: HashMap<u8, Vec<Option<u16>>>,
    /// Keys whose last acknowledged write was handed to the failure handler
    /// and settled by a flush, with that write: a read may still return it.
    settled: HashMap<u8, Option<u16>>,
    /// Every value each key was acknowledged with.
    ever: HashSet<(u8, u16)>,
}

impl Model {
    /// Books an acknowledged write `w` of `k` (`None`: a delete).
    fn acknowledge(&mut self, k: u8, w: Option<u16>) {
        self.settled.remove(&k);
        self.last.insert(k, w);
        self.acked.entry(k).or_default().push(w);
        if let Some(v) = w {
            self.ever.insert((k, v));
        }
    }
}

fuzz_target!(|input: Input| {
    allow_deliberate_panics();
    let db = Shared::default();
    let blocking = input.handler && input.block;
    let queue_capacity = usize::from(input.queue % 16) + 1;
    let settings = WriteBack::default()
        .max_delay(Duration::from_micros(u64::from(input.delay % 4) * 200))
        .batch(usize::from(input.batch % 8) + 1)
        .queue_capacity(queue_capacity)
        .backpressure(if blocking {
            Backpressure::Block
        } else {
            Backpressure::Fail
        })
        .retries(1, Duration::ZERO);
    let handed: Handed = Arc::default();
    let listened: Listened = Arc::default();
    let builder = Cache::builder()
        .max_capacity(u64::from(input.capacity % 8) + 1)
        .eviction(match input.eviction % 3 {
            0 => Eviction::Lru,
            1 => Eviction::Lfu,
            _ => Eviction::TinyLfu,
        })
        .eviction_listener({
            let listened = Arc::clone(&listened);
            let panics = (input.eviction >= 128).then_some(input.eviction % 8);
            move |k, v: u16, _| {
                listened.lock().unwrap().push((k, v));
                if panics == Some((v % 8) as u8) {
                    std::panic::panic_any(Heard);
                }
            }
        });
    let builder = if input.weighted {
        builder.weigher(|_: &u8, v: &u16| u32::from(v % 4))
    } else {
        builder
    };
    let mut builder = builder.write_back(db.clone(), settings);
    if input.handler {
        let sink = Arc::clone(&handed);
        builder = builder.on_write_failure(move |failed: larder::FailedWrite<u8, u16, _>| {
            let w = match failed.op {
                Op::Put(k, v) => (k, Some(v)),
                Op::Delete(k) => (k, None),
            };
            sink.lock().unwrap().push(w);
        });
    }
    let cache = builder.build().unwrap();
    let state = Mutex::new(Model::default());
    // Whether a `close_async` has closed the cache.
    let closed = AtomicBool::new(false);
    let check_flush = |report: Result<(), larder::FlushError<u8, u16, &'static str>>,
                       state: &mut Model| {
        let Model {
            last: model,
            acked,
            settled,
            ever,
        } = state;
        check_heard(&listened, &|k, v| ever.contains(&(k, v)));
        let mut failed: Vec<(u8, Option<u16>)> = match report {
            Ok(()) => Vec::new(),
            Err(e) => e
                .failed
                .iter()
                .map(|f| match &f.op {
                    Op::Put(k, v) => (*k, Some(*v)),
                    Op::Delete(k) => (*k, None),
                })
                .collect(),
        };
        if input.handler {
            assert!(failed.is_empty(), "a failure handler takes every failure");
        }
        // What the handler took is settled: reads fall back to the store, or
        // to the handed-over write while it stays cached.
        for (k, w) in handed.lock().unwrap().drain(..) {
            if model.get(&k) == Some(&w) {
                settled.insert(k, w);
            }
            failed.push((k, w));
        }
        let data = db.0.data.lock().unwrap().clone();
        for (k, last) in model.iter_mut() {
            let stored = data.get(k).copied();
            if stored != *last {
                assert!(
                    failed.contains(&(*k, *last)),
                    "key {k}: {last:?} neither stored nor reported"
                );
                *last = stored;
            }
        }
        // Each key's stored writes are a subsequence of its acknowledgements.
        let log = db.0.log.lock().unwrap();
        for (k, acks) in acked.iter() {
            let mut at = 0;
            for op in log.iter().filter(|op| op.key() == k) {
                let w = match op {
                    Op::Put(_, v) => Some(*v),
                    Op::Delete(_) => None,
                };
                match acks[at..].iter().position(|a| *a == w) {
                    Some(i) => at += i + 1,
                    None => panic!("key {k}: {w:?} stored out of order"),
                }
            }
        }
    };
    // Checks a read of `k` that returned `got` against the model, as its
    // writer (the only one writing `k`) sees it.
    let check_read = |k: u8, got: Option<u16>| {
        let (last, settled) = {
            let m = state.lock().unwrap();
            (m.last.get(&k).copied(), m.settled.get(&k).copied())
        };
        if got != last.flatten() {
            // Only a last write handed over may read otherwise: as itself
            // (still cached) or as what the store holds.
            let last = last.expect("a key never written reads as absent");
            let handed_over = match settled {
                Some(w) => Some(w),
                None => handed.lock().unwrap().contains(&(k, last)).then_some(last),
            };
            let Some(w) = handed_over else {
                panic!("read of {k}: {got:?}, last acknowledged {last:?}");
            };
            let stored = db.0.data.lock().unwrap().get(&k).copied();
            assert!(
                got == w || got == stored,
                "read of {k}: {got:?}, handed over {w:?}, stored {stored:?}"
            );
        }
    };
    // One step by a writer whose keys are `key(k)`. The model is locked
    // only to book a call's outcome: the calls of two writers overlap, and
    // their keys never meet.
    let step = |step: &Step, key: &dyn Fn(u8) -> u8| match *step {
        Step::Put(..) | Step::Delete(..) | Step::PutAsync(..) | Step::DeleteAsync(..) => {
            let Some((k, w, outcome)) = write(&cache, step, key) else {
                unreachable!("a write step")
            };
            let closed = closed.load(Ordering::SeqCst);
            match outcome {
                // Dropped before it ended: not acknowledged, nothing changed.
                None => {}
                Some(Err(WriteError::Closed)) => assert!(closed, "refused as closed while open"),
                Some(_) if closed => panic!("a write to a closed cache was not refused"),
                Some(Ok(())) => state.lock().unwrap().acknowledge(k, w),
                Some(Err(WriteError::QueueFull)) => {
                    assert!(!blocking, "a blocking write found the queue full")
                }
                Some(Err(e)) => panic!("unexpected {e:?}"),
            }
        }
        Step::WriteAll(ref ops, mode) => {
            let (writes, outcome) = write_all(&cache, ops, mode, key);
            let closed = closed.load(Ordering::SeqCst);
            let too_large = writes.len() > queue_capacity;
            match outcome {
                None => {}
                Some(Err(WriteError::BatchTooLarge { keys, .. })) => {
                    assert!(too_large && keys == writes.len(), "{keys} keys too many")
                }
                _ if too_large => panic!("a batch larger than the queue was not refused"),
                Some(Err(WriteError::Closed)) => assert!(closed, "refused as closed while open"),
                Some(_) if closed => panic!("a write to a closed cache was not refused"),
                Some(Ok(())) => {
                    let mut m = state.lock().unwrap();
                    writes.into_iter().for_each(|(k, w)| m.acknowledge(k, w));
                }
                Some(Err(WriteError::QueueFull)) => {
                    assert!(!blocking, "a blocking batch found the queue full")
                }
                Some(Err(e)) => panic!("unexpected {e:?}"),
            }
        }
        Step::Compute(k, kind, v) => {
            let k = key(k);
            let (read, decided, outcome) = compute(&cache, k, kind, v);
            if let Some(got) = read {
                check_read(k, got);
            }
            let closed = closed.load(Ordering::SeqCst);
            match outcome {
                Err(WriteError::QueueFull) => {
                    assert!(!blocking, "a blocking compute found the queue full");
                }
                Err(WriteError::Closed) => {
                    assert!(closed, "refused as closed while open");
                    assert_eq!(read, None, "refused before its read");
                }
                Err(e) => panic!("unexpected {e:?}"),
                Ok(_) if closed => panic!("a compute on a closed cache was not refused"),
                Ok(()) => {
                    if let Some(w) = decided {
                        state.lock().unwrap().acknowledge(k, w);
                    }
                }
            }
        }
        Step::Get(k) => {
            let k = key(k);
            // A read that caches what it found may evict, and the listener
            // panic on it: nothing to check then.
            if let Ok(got) = calm(|| cache.get(&k).unwrap()) {
                check_read(k, got);
            }
        }
        Step::GetAll(ref ks) => {
            let ks: Vec<u8> = ks.iter().take(4).map(|&k| key(k)).collect();
            if let Ok(got) = calm(|| cache.get_all(ks.iter().copied()).unwrap()) {
                assert_eq!(got.len(), ks.len(), "one answer per key given");
                ks.iter().zip(got).for_each(|(&k, got)| check_read(k, got));
            }
        }
        Step::InvalidateTag => {
            let _ = calm(|| cache.invalidate_tag("t"));
        }
        Step::Fail(on) => db.0.failing.store(on, Ordering::SeqCst),
        Step::Panic(on) => db.0.panicking.store(on, Ordering::SeqCst),
        Step::Flush | Step::FlushAsync(_) | Step::CloseAsync(_) => {
            unreachable!("flushes end a stretch")
        }
    };
    if input.two && input.shared {
        shared_keys(&input, &cache, &db, &handed, &listened);
        return;
    }
    // The steps between flushes, then the flush.
    for stretch in input.steps.split_inclusive(ends_stretch) {
        let (steps, end) = match stretch.split_last() {
            Some((last, steps)) if ends_stretch(last) => (steps, Some(last)),
            _ => (stretch, None),
        };
        if input.two {
            std::thread::scope(|scope| {
                let writers: Vec<_> = (0..2u8)
                    .map(|t| {
                        let step = &step;
                        scope.spawn(move || {
                            let key = move |k: u8| (k % 8) * 2 + t;
                            for s in steps.iter().skip(usize::from(t)).step_by(2) {
                                step(s, &key);
                            }
                        })
                    })
                    .collect();
                // Joined, not just waited for: a thread's exit frees its
                // thread-locals, which the leak checker would count.
                for writer in writers {
                    if let Err(panic) = writer.join() {
                        std::panic::resume_unwind(panic);
                    }
                }
            });
        } else {
            for s in steps {
                step(s, &|k| k % 16);
            }
        }
        // One that ends in the listener's panic leaves its report to the
        // next, as one dropped does.
        let report = match end {
            None => None,
            Some(Step::FlushAsync(cancel)) => {
                calm(|| drive(cache.flush_async(), *cancel)).unwrap_or(None)
            }
            Some(Step::CloseAsync(cancel)) => {
                // Polled at all, it has closed the cache.
                if cancel.is_none_or(|c| c % 3 > 0) {
                    closed.store(true, Ordering::SeqCst);
                }
                calm(|| drive(cache.close_async(), *cancel)).unwrap_or(None)
            }
            Some(_) => calm(|| cache.flush()).ok(),
        };
        // A report dropped unread comes in the next one.
        if let Some(report) = report {
            check_flush(report, &mut state.lock().unwrap());
        }
    }
    db.0.failing.store(false, Ordering::SeqCst);
    db.0.panicking.store(false, Ordering::SeqCst);
    check_flush(close(&cache), &mut state.lock().unwrap());
});

/// Reads `k`, up to three times while the listener panics (a read that
/// caches what it found may evict, or have its find turned away); `None` if
/// every try did.
fn read(cache: &WbCache, k: u8) -> Option<Option<u16>> {
    (0..3).find_map(|_| calm(|| cache.get(&k).unwrap()).ok())
}

/// Closes the cache, again if the listener panicked as the first call
/// dropped the failed writes' cached copies: the second finds none left to
/// drop, and reports what the first could not.
fn close(cache: &WbCache) -> Result<(), larder::FlushError<u8, u16, &'static str>> {
    calm(|| cache.close()).unwrap_or_else(|()| {
        calm(|| cache.close()).unwrap_or_else(|()| panic!("close panicked twice"))
    })
}

/// Whether a step ends a stretch: a flush, sync or async, or a close.
fn ends_stretch(step: &Step) -> bool {
    matches!(
        step,
        Step::Flush | Step::FlushAsync(_) | Step::CloseAsync(_)
    )
}

/// What one writer of the shared keys saw in a stretch: its acknowledged
/// writes of each key in order, and every read as `(key, value)`.
#[derive(Default)]
struct Seen {
    acked: HashMap<u8, Vec<Option<u16>>>,
    reads: Vec<(u8, Option<u16>)>,
}

/// Whether `log` could be what the store took of a key's writes when two
/// writers acknowledged `a` and `b` in their own orders: some interleaving of
/// the two contains it in order (a write overtaken in the queue before it
/// was stored is never stored at all).
/// A write-back `put`, with the cached copy tagged `"t"` when `tagged`: a tag
/// invalidation drops the copy as an eviction would, and every read must
/// still find the write (queued, stored or reported) as after an eviction.
fn put(cache: &WbCache, k: u8, v: u16, tagged: bool) -> Result<(), WriteError<&'static str>> {
    if tagged {
        cache.put_with(k, v, EntryOptions::new().tags(["t"]))
    } else {
        cache.put(k, v)
    }
}

fn interleaves(log: &[Option<u16>], a: &[Option<u16>], b: &[Option<u16>]) -> bool {
    // For each count of `a`'s writes passed, the fewest of `b`'s passed.
    let mut reach: Vec<Option<usize>> = vec![None; a.len() + 1];
    reach[0] = Some(0);
    for w in log {
        let mut next: Vec<Option<usize>> = vec![None; a.len() + 1];
        for (i, j) in reach.iter().enumerate() {
            let Some(j) = *j else { continue };
            if let Some(p) = a[i..].iter().position(|x| x == w) {
                let at = i + p + 1;
                next[at] = Some(next[at].map_or(j, |n: usize| n.min(j)));
            }
            if let Some(p) = b[j..].iter().position(|x| x == w) {
                next[i] = Some(next[i].map_or(j + p + 1, |n: usize| n.min(j + p + 1)));
            }
        }
        // Matching each write at its first place in `a` or `b` from where
        // the interleaving stands is never worse than a later place, and
        // fewer of `b`'s passed never worse than more.
        reach = next;
        if reach.iter().all(Option::is_none) {
            return false;
        }
    }
    true
}

type WbCache = Cache<u8, u16, DefaultHashBuilder, WriteBehind<u8, u16, Shared>>;

/// Polls `future` with a waker that does nothing, yielding between polls
/// (the flusher thread makes the room a write may wait for), until it ends,
/// or drops it once `cancel % 3` polls found it pending: `None` then.
fn drive<T>(future: impl Future<Output = T>, cancel: Option<u8>) -> Option<T> {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    let limit = cancel.map(|c| usize::from(c % 3));
    for polls in 0.. {
        if limit == Some(polls) {
            return None;
        }
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Some(out);
        }
        std::thread::yield_now();
    }
    unreachable!("the loop returns")
}

/// What a write step did: its key, the write (`None`: a delete) and how the
/// call ended (`None`: its future was dropped first); `None` for the steps
/// that do not write.
type Written = (
    u8,
    Option<u16>,
    Option<Result<(), WriteError<&'static str>>>,
);

/// Runs a write step, sync or async, on the key `key` makes of its byte.
/// A call that ends in the listener's panic was queued and cached before it
/// (the docs of `put` and `delete`): it reads as acknowledged.
fn write(cache: &WbCache, step: &Step, key: &dyn Fn(u8) -> u8) -> Option<Written> {
    let (k, w, outcome) = calm(|| written(cache, step, key)).unwrap_or_else(|()| {
        let (k, w) = match *step {
            Step::Put(k, v, _) | Step::PutAsync(k, v, _, _) => (key(k), Some(v)),
            Step::Delete(k) | Step::DeleteAsync(k, _) => (key(k), None),
            _ => unreachable!("only writes reach the listener's panic here"),
        };
        Some((k, w, Some(Ok(()))))
    })?;
    Some((k, w, outcome))
}

/// [`write`]'s call.
fn written(cache: &WbCache, step: &Step, key: &dyn Fn(u8) -> u8) -> Option<Written> {
    Some(match *step {
        Step::Put(k, v, tagged) => (key(k), Some(v), Some(put(cache, key(k), v, tagged))),
        Step::Delete(k) => (key(k), None, Some(cache.delete(&key(k)))),
        Step::PutAsync(k, v, tagged, cancel) => {
            let k = key(k);
            let call = async move {
                if tagged {
                    let options = EntryOptions::new().tags(["t"]);
                    cache.put_with_async(k, v, options).await
                } else {
                    cache.put_async(k, v).await
                }
            };
            (k, Some(v), drive(call, cancel))
        }
        Step::DeleteAsync(k, cancel) => {
            let k = key(k);
            (k, None, drive(cache.delete_async(&k), cancel))
        }
        _ => return None,
    })
}

/// Runs a `write_all` step on the keys `key` makes of its bytes: each key's
/// last write in the batch (what an acknowledged batch writes), and how the
/// call ended (`None`: its future was dropped first). A call that ends in the
/// listener's panic queued and cached the whole batch before it (the docs of
/// `write_all`): it reads as acknowledged.
fn write_all(
    cache: &WbCache,
    ops: &[(u8, Option<u16>)],
    mode: Option<Option<u8>>,
    key: &dyn Fn(u8) -> u8,
) -> (
    Vec<(u8, Option<u16>)>,
    Option<Result<(), WriteError<&'static str>>>,
) {
    let ops: Vec<(u8, Option<u16>)> = ops.iter().take(4).map(|&(k, w)| (key(k), w)).collect();
    let mut writes: Vec<(u8, Option<u16>)> = Vec::new();
    for &(k, w) in &ops {
        writes.retain(|&(j, _)| j != k);
        writes.push((k, w));
    }
    let batch = ops.iter().map(|&(k, w)| match w {
        Some(v) => Op::Put(k, v),
        None => Op::Delete(k),
    });
    let outcome = calm(|| match mode {
        None => Some(cache.write_all(batch)),
        Some(cancel) => drive(cache.write_all_async(batch), cancel),
    })
    .unwrap_or(Some(Ok(())));
    (writes, outcome)
}

/// Runs a `compute` step on `k`: what its closure read (`None`: it did not
/// run), the write it decided on (`None`: none; `Some(None)`: a delete),
/// and how the call ended, its outcome checked against the read and the
/// decision. A call that ends in the listener's panic queued and cached
/// its write before it (the docs of `compute`): it reads as `Ok`.
#[allow(clippy::type_complexity)]
fn compute(
    cache: &WbCache,
    k: u8,
    kind: u8,
    v: u16,
) -> (
    Option<Option<u16>>,
    Option<Option<u16>>,
    Result<(), WriteError<&'static str>>,
) {
    let read = std::cell::Cell::new(None);
    let decide = |got: Option<&u16>| {
        let got = got.copied();
        read.set(Some(got));
        match kind % 4 {
            0 => Compute::Keep,
            1 => Compute::Put(v.wrapping_add(got.unwrap_or(0))),
            2 => Compute::Remove,
            _ => Compute::PutWith(
                v.wrapping_add(got.unwrap_or(0)),
                EntryOptions::new().tags(["t"]),
            ),
        }
    };
    let outcome = calm(|| cache.compute(k, decide));
    let read = read.get();
    // The write decided on, once the closure ran.
    let decided = read.and_then(|got| match kind % 4 {
        0 => None,
        2 => got.map(|_| None),
        _ => Some(Some(v.wrapping_add(got.unwrap_or(0)))),
    });
    let outcome = match outcome {
        Err(()) => {
            assert!(decided.is_some(), "only a write's landing evicts");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Ok(Ok(computed)) => {
            let got = read.expect("an answer after the closure ran");
            let expected = match (decided, got) {
                (None, None) => Computed::Absent,
                (None, Some(x)) => Computed::Unchanged(x),
                (Some(None), Some(x)) => Computed::Removed(x),
                (Some(Some(w)), None) => Computed::Inserted(w),
                (Some(Some(w)), Some(_)) => Computed::Replaced(w),
                (Some(None), None) => unreachable!("a removal of nothing writes nothing"),
            };
            assert_eq!(computed, expected, "compute of {k}, kind {}", kind % 4);
            Ok(())
        }
    };
    (read, decided, outcome)
}

/// The `two` + `shared` mode: see the module's docs.
fn shared_keys(input: &Input, cache: &WbCache, db: &Shared, handed: &Handed, listened: &Listened) {
    let blocking = input.handler && input.block;
    let input_queue = usize::from(input.queue % 16) + 1;
    // Each key's value before the stretch (every stretch ends with a flush).
    let mut before: HashMap<u8, Option<u16>> = HashMap::new();
    // Every value each key was ever acknowledged with, and its start (absent).
    let mut ever: HashMap<u8, HashSet<Option<u16>>> =
        (0..8).map(|k| (k, HashSet::from([None]))).collect();
    // Keys a write of which was handed to the failure handler: a read of
    // one may return the handed-over write while it stays cached, or
    // whatever the store holds, which a failed write left at an older value.
    let mut loose: HashSet<u8> = HashSet::new();
    let mut logged = 0;
    // The async flushes and closes end a stretch here as a plain flush.
    let stretches: Vec<&[Step]> = input.steps.split(ends_stretch).collect();
    for (n, steps) in stretches.iter().enumerate() {
        let seen: Vec<Seen> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..2usize)
                .map(|t| {
                    scope.spawn(move || {
                        let mut seen = Seen::default();
                        for s in steps.iter().skip(t).step_by(2) {
                            match *s {
                                Step::Put(..)
                                | Step::Delete(..)
                                | Step::PutAsync(..)
                                | Step::DeleteAsync(..) => match write(cache, s, &|k| k % 8) {
                                    Some((k, w, Some(Ok(())))) => {
                                        seen.acked.entry(k).or_default().push(w)
                                    }
                                    Some((_, _, Some(Err(WriteError::QueueFull)))) => {
                                        assert!(!blocking)
                                    }
                                    Some((_, _, Some(Err(e)))) => panic!("unexpected {e:?}"),
                                    _ => {}
                                },
                                Step::WriteAll(ref ops, mode) => {
                                    match write_all(cache, ops, mode, &|k| k % 8) {
                                        (writes, Some(Ok(()))) => {
                                            for (k, w) in writes {
                                                seen.acked.entry(k).or_default().push(w);
                                            }
                                        }
                                        (_, Some(Err(WriteError::QueueFull))) => {
                                            assert!(!blocking)
                                        }
                                        (writes, Some(Err(WriteError::BatchTooLarge { .. }))) => {
                                            assert!(writes.len() > input_queue)
                                        }
                                        (_, Some(Err(e))) => panic!("unexpected {e:?}"),
                                        (_, None) => {}
                                    }
                                }
                                Step::Compute(k, kind, v) => {
                                    let (read, decided, outcome) = compute(cache, k % 8, kind, v);
                                    if let Some(got) = read {
                                        seen.reads.push((k % 8, got));
                                    }
                                    match outcome {
                                        Ok(()) => {
                                            if let Some(w) = decided {
                                                seen.acked.entry(k % 8).or_default().push(w);
                                            }
                                        }
                                        // After its read only for a key
                                        // dirty as it began (see above).
                                        Err(WriteError::QueueFull) => assert!(!blocking),
                                        Err(e) => panic!("unexpected {e:?}"),
                                    }
                                }
                                Step::Get(k) => {
                                    if let Ok(got) = calm(|| cache.get(&(k % 8)).unwrap()) {
                                        seen.reads.push((k % 8, got));
                                    }
                                }
                                Step::GetAll(ref ks) => {
                                    let ks: Vec<u8> = ks.iter().take(4).map(|k| k % 8).collect();
                                    let all = || cache.get_all(ks.iter().copied()).unwrap();
                                    if let Ok(got) = calm(all) {
                                        assert_eq!(got.len(), ks.len(), "one answer per key");
                                        seen.reads.extend(ks.iter().copied().zip(got));
                                    }
                                }
                                Step::InvalidateTag => {
                                    let _ = calm(|| cache.invalidate_tag("t"));
                                }
                                Step::Fail(on) => db.0.failing.store(on, Ordering::SeqCst),
                                Step::Panic(on) => db.0.panicking.store(on, Ordering::SeqCst),
                                Step::Flush | Step::FlushAsync(_) | Step::CloseAsync(_) => {}
                            }
                        }
                        seen
                    })
                })
                .collect();
            writers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let empty = Vec::new();
        let acked = |t: usize, k: u8| seen[t].acked.get(&k).unwrap_or(&empty);
        for k in 0..8u8 {
            let all = ever.get_mut(&k).expect("every key has a set");
            all.extend(acked(0, k).iter().chain(acked(1, k)).copied());
        }
        check_heard(listened, &|k, v| ever[&k].contains(&Some(v)));
        // What the cache reads once both writers are done, before the flush
        // (`None`: the listener panicked on every try).
        let now: HashMap<u8, Option<Option<u16>>> = (0..8u8).map(|k| (k, read(cache, k))).collect();
        let report = if n + 1 == stretches.len() {
            db.0.failing.store(false, Ordering::SeqCst);
            db.0.panicking.store(false, Ordering::SeqCst);
            close(cache)
        } else {
            // Once more if the listener panicked as the flush dropped the
            // failed writes' cached copies: the second reports what the
            // first could not, with none left to drop.
            calm(|| cache.flush()).unwrap_or_else(|()| {
                calm(|| cache.flush()).unwrap_or_else(|()| panic!("flush panicked twice"))
            })
        };
        let mut failed: Vec<(u8, Option<u16>)> = match report {
            Ok(()) => Vec::new(),
            Err(e) => e
                .failed
                .iter()
                .map(|f| match &f.op {
                    Op::Put(k, v) => (*k, Some(*v)),
                    Op::Delete(k) => (*k, None),
                })
                .collect(),
        };
        if input.handler {
            assert!(failed.is_empty(), "a failure handler takes every failure");
            // The flush waited for the flusher: everything handed over in
            // the stretch has reached the handler by now.
            for (k, w) in handed.lock().unwrap().drain(..) {
                loose.insert(k);
                failed.push((k, w));
            }
        }
        for t in 0..2 {
            for &(k, got) in &seen[t].reads {
                let start = before.get(&k).copied().flatten();
                if loose.contains(&k) {
                    assert!(
                        ever[&k].contains(&got),
                        "read of {k}: {got:?}, never acknowledged"
                    );
                } else {
                    assert!(
                        got == start || acked(0, k).contains(&got) || acked(1, k).contains(&got),
                        "read of {k}: {got:?}, never acknowledged (before: {start:?})"
                    );
                }
            }
        }
        let data = db.0.data.lock().unwrap().clone();
        for k in 0..8u8 {
            let stored = data.get(&k).copied();
            let Some(now) = now[&k] else {
                // Unread: from now on the key may read as any of its writes.
                loose.insert(k);
                continue;
            };
            if loose.contains(&k) {
                assert!(
                    ever[&k].contains(&now),
                    "key {k} reads {now:?}, never acknowledged"
                );
                assert!(
                    ever[&k].contains(&stored),
                    "key {k}: the store holds {stored:?}"
                );
            } else {
                let lasts = [acked(0, k).last(), acked(1, k).last()];
                if lasts.iter().any(Option::is_some) {
                    assert!(
                        lasts.contains(&Some(&now)),
                        "key {k} reads {now:?}; the writers' last writes: {lasts:?}"
                    );
                } else {
                    assert_eq!(now, before.get(&k).copied().flatten(), "key {k}, unwritten");
                }
                // The write the cache reads is stored, or reported failed.
                assert!(
                    stored == now || failed.contains(&(k, now)),
                    "key {k}: {now:?} neither stored nor reported (the store holds {stored:?})"
                );
            }
            if n + 1 < stretches.len() {
                let Some(after) = read(cache, k) else {
                    loose.insert(k);
                    continue;
                };
                if !input.handler {
                    // A reported failure falls back to the store; a stored
                    // write is what the store holds.
                    assert_eq!(after, stored, "key {k}: the store and the cache disagree");
                }
                before.insert(k, after);
            }
        }
        let log = db.0.log.lock().unwrap();
        for k in 0..8u8 {
            let stored: Vec<Option<u16>> = log[logged..]
                .iter()
                .filter(|op| *op.key() == k)
                .map(|op| match op {
                    Op::Put(_, v) => Some(*v),
                    Op::Delete(_) => None,
                })
                .collect();
            assert!(
                interleaves(&stored, acked(0, k), acked(1, k)),
                "key {k}: stored {stored:?}, not in the writers' orders {:?} / {:?}",
                acked(0, k),
                acked(1, k)
            );
        }
        logged = log.len();
    }
}
