//! Striped per-key locks for write-through, takeable by blocking or by
//! awaiting, and the wakers of the tasks waiting for them.

use crate::sync::{Condvar, Mutex};
use std::fmt;

/// Striped per-key locks: a writer holds its key's stripe across the store
/// call and the cache update, so two writes to one key land in the same order
/// in both. Keys sharing a stripe wait for each other, which costs time, not
/// correctness. A stripe can be taken by blocking (sync calls) or by awaiting
/// (async calls), and the two exclude each other.
pub(crate) struct KeyLocks {
    stripes: Box<[Stripe]>,
}

struct Stripe {
    state: Mutex<StripeState>,
    released: Condvar,
}

#[derive(Default)]
struct StripeState {
    held: bool,
    /// The thread holding the stripe by [`KeyLocks::lock`] ([`this_thread`]),
    /// 0 when free or held by an async caller (which may move between
    /// threads, and shares its thread with other tasks).
    holder: usize,
    /// Async callers waiting for the stripe; all are woken on release.
    wakers: Wakers,
}

thread_local! {
    /// A byte whose address names the thread (see [`this_thread`]).
    static THREAD_MARK: u8 = const { 0 };
    /// The stripes (by address) whose async store calls this thread is
    /// polling now, each with the address of the waker it is polled with
    /// (see [`KeyGuard::serving`]). Innermost last.
    static SERVING: std::cell::RefCell<Vec<(usize, usize)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The message of a store that writes a key of the stripe it serves, or of
/// a compute's closure that writes a key of the stripe its compute holds.
const WAITS_FOR_ITSELF: &str = "larder: a write to the cache from within a write holding the same \
     lock stripe (a store serving it, or a compute's closure); this would wait for itself forever";

/// Whether this thread is polling an async store call that holds `stripe`,
/// with `waker` (the very waker, not a clone: a future the store's future
/// polls itself, or through a combinator such as `join!`, is handed the
/// same one), so that a future waiting for the stripe would wait for
/// itself. A future of another task, polled on this thread meanwhile by an
/// executor the store runs, has a waker of its own and only waits its turn.
/// False once the thread's locals are gone, and under loom, which runs its
/// threads on one thread of the OS, so that thread-locals do not tell them
/// apart.
fn serving(stripe: &Stripe, waker: &std::task::Waker) -> bool {
    let polled = (
        std::ptr::from_ref(stripe).addr(),
        std::ptr::from_ref(waker).addr(),
    );
    !cfg!(larder_loom)
        && SERVING
            .try_with(|s| s.borrow().contains(&polled))
            .unwrap_or(false)
}

/// Whether this thread runs a compute's closure holding `stripe` (see
/// [`KeyGuard::computing`]): a blocking write of a key of the stripe would
/// wait for itself. False as for [`serving`].
fn computing(stripe: &Stripe) -> bool {
    let mark = (std::ptr::from_ref(stripe).addr(), NO_WAKER);
    !cfg!(larder_loom)
        && SERVING
            .try_with(|s| s.borrow().contains(&mark))
            .unwrap_or(false)
}

/// The waker address of a [`KeyGuard::computing`] mark: no waker's (a
/// waker is a pointer and a vtable, aligned), so [`serving`] never
/// matches it.
const NO_WAKER: usize = usize::MAX;

/// An id of the calling thread, never 0: the address of its
/// [`THREAD_MARK`]. Cheaper than `std::thread::current().id()`, which
/// counts a reference.
fn this_thread() -> usize {
    THREAD_MARK.with(|mark| std::ptr::from_ref(mark).addr())
}

/// A held stripe; released on drop.
pub(crate) struct KeyGuard<'a> {
    stripe: &'a Stripe,
}

impl KeyGuard<'_> {
    /// A mark of this guard's stripe, for [`serving`](Self::serving).
    pub(crate) fn mark(&self) -> StripeMark {
        StripeMark(std::ptr::from_ref(self.stripe).addr())
    }

    /// Runs `f`, a poll of an async store call's future with the waker at
    /// address `waker` (taken from the poll's `Context`), with this thread
    /// marked as serving the stripes of `marks` for that waker: a write of
    /// one of them that the store awaits from within the poll panics with a
    /// message instead of staying pending for good (see
    /// [`KeyLocks::lock_async`]).
    pub(crate) fn serving<R>(marks: &[StripeMark], waker: usize, f: impl FnOnce() -> R) -> R {
        /// Takes the marks off again, however `f` ends.
        struct Unmark(usize);
        impl Drop for Unmark {
            fn drop(&mut self) {
                if self.0 > 0 {
                    let _ = SERVING.try_with(|s| {
                        let mut s = s.borrow_mut();
                        let kept = s.len().saturating_sub(self.0);
                        s.truncate(kept);
                    });
                }
            }
        }
        // A thread whose locals are gone (a poll from a thread-local's
        // `Drop`) goes unmarked.
        let marked = SERVING
            .try_with(|s| s.borrow_mut().extend(marks.iter().map(|m| (m.0, waker))))
            .map_or(0, |()| marks.len());
        let _unmark = Unmark(marked);
        f()
    }

    /// Runs `f`, a compute's closure, with this thread marked as holding
    /// the stripes of `marks`: a blocking write of a key of one of them
    /// from `f` (a `put`, a batch) panics instead of waiting for itself,
    /// whether the compute took the stripe by blocking or by awaiting (an
    /// async holder is no thread's, so [`KeyLocks::lock`] alone cannot
    /// tell). An async write polled meanwhile waits its turn: it may be
    /// another task's, polled by an executor `f` runs, which the stripe's
    /// release wakes; only `f`'s own future (a `put_async` under
    /// `block_on`) would wait for itself, and the two look the same here.
    pub(crate) fn computing<R>(marks: &[StripeMark], f: impl FnOnce() -> R) -> R {
        Self::serving(marks, NO_WAKER, f)
    }
}

/// The stripes a batch write holds (one for a single key's write).
pub(crate) type Guards<'a> = smallvec::SmallVec<[KeyGuard<'a>; 1]>;

/// The stripe a [`KeyGuard`] holds, by address.
#[derive(Clone, Copy)]
pub(crate) struct StripeMark(usize);

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.stripe.state.lock();
        state.held = false;
        state.holder = 0;
        let wakers: Vec<_> = state.wakers.take().collect();
        drop(state);
        self.stripe.released.notify_one();
        crate::sync::wake_all(wakers);
    }
}

impl fmt::Debug for KeyLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyLocks")
            .field("stripes", &self.stripes.len())
            .finish()
    }
}

/// The wakers of async callers waiting for something (a stripe, room in the
/// queue, a flush), each under the id of its waiter: a waiter polled again
/// and again (in a `select!` loop) keeps one entry, and one dropped while it
/// waits (a timeout, a lost `select!` branch) takes its entry away with it
/// ([`Waiter`]), so the list never grows past the callers waiting now.
#[derive(Default)]
pub(crate) struct Wakers {
    next: u64,
    waiting: Vec<(u64, std::task::Waker)>,
}

impl Wakers {
    /// Files `cx`'s waker under `waiter`'s id (given one on its first call),
    /// replacing the one it filed before.
    pub(crate) fn register(&mut self, waiter: &Waiter, cx: &std::task::Context<'_>) {
        let mut id = waiter.0.load(std::sync::atomic::Ordering::Relaxed);
        if id == NO_WAITER {
            id = self.next;
            self.next += 1;
            waiter.0.store(id, std::sync::atomic::Ordering::Relaxed);
        }
        match self.waiting.iter_mut().find(|(i, _)| *i == id) {
            Some((_, waker)) => {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
            }
            None => self.waiting.push((id, cx.waker().clone())),
        }
    }

    /// Takes `waiter`'s waker away, if it filed one.
    pub(crate) fn forget(&mut self, waiter: &Waiter) {
        let id = waiter.0.load(std::sync::atomic::Ordering::Relaxed);
        if id != NO_WAITER {
            self.waiting.retain(|(i, _)| *i != id);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Takes every waker, to wake them (their waiters file again if they
    /// still have to wait).
    pub(crate) fn take(&mut self) -> impl Iterator<Item = std::task::Waker> {
        std::mem::take(&mut self.waiting)
            .into_iter()
            .map(|(_, w)| w)
    }
}

const NO_WAITER: u64 = u64::MAX;

/// One async caller's place among [`Wakers`]: an id, given on its first wait.
/// Atomic only so that the futures holding it stay `Send` and `Sync`.
pub(crate) struct Waiter(std::sync::atomic::AtomicU64);

impl Waiter {
    pub(crate) fn new() -> Self {
        Self(std::sync::atomic::AtomicU64::new(NO_WAITER))
    }

    /// Whether it ever filed a waker.
    pub(crate) fn filed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) != NO_WAITER
    }
}

/// Runs its closure when dropped: a waiter's future, completed or dropped
/// while it waits, takes its waker away with this.
pub(crate) struct Forget<F: FnMut()>(pub(crate) F);

impl<F: FnMut()> Drop for Forget<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Stripes per cache: enough that unrelated keys rarely share one. Four
/// under loom, which tracks every lock as an object and makes them afresh
/// for each interleaving.
const STRIPES: usize = if cfg!(larder_loom) { 4 } else { 1024 };

impl KeyLocks {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..STRIPES)
                .map(|_| Stripe {
                    state: Mutex::new(StripeState::default()),
                    released: Condvar::new(),
                })
                .collect(),
        }
    }

    /// The stripe of a key's hash (its low bits; shards use bits 32 and up).
    fn stripe(&self, hash: u64) -> &Stripe {
        &self.stripes[Self::index(hash)]
    }

    /// The index of [`stripe`](Self::stripe).
    fn index(hash: u64) -> usize {
        (hash as usize) & (STRIPES - 1)
    }

    /// Takes a key's stripe, blocking.
    ///
    /// # Panics
    ///
    /// If this thread holds the stripe already: a store writing to the cache
    /// it stands behind, from within a write of a key of the same stripe
    /// (which [`Store`](crate::Store)'s docs forbid), would wait for itself
    /// forever. So would a compute's closure (see
    /// [`KeyGuard::computing`]), whether its compute took the stripe by
    /// blocking or by awaiting.
    pub(crate) fn lock(&self, hash: u64) -> KeyGuard<'_> {
        Self::lock_stripe(self.stripe(hash))
    }

    /// Takes the stripes of many keys (by their hashes), blocking: each
    /// stripe once, in the stripes' order, so that two callers taking
    /// overlapping sets never wait for each other in a cycle (and a caller
    /// taking one stripe holds none while it waits).
    ///
    /// # Panics
    ///
    /// As [`lock`](Self::lock), for any of them; those taken are released.
    pub(crate) fn lock_all(&self, hashes: &[u64]) -> Guards<'_> {
        let stripes = self.stripes_of(hashes);
        // Before waiting for any: a stripe this thread holds would be
        // waited for forever, and a stripe before it, held by a caller
        // waiting for one this thread holds, would keep it from noticing.
        let me = this_thread();
        for &i in &stripes {
            let state = self.stripes[i].state.lock();
            assert!(
                cfg!(larder_loom)
                    || !(state.held && (state.holder == me || computing(&self.stripes[i]))),
                "{WAITS_FOR_ITSELF}"
            );
        }
        stripes
            .into_iter()
            .map(|i| Self::lock_stripe(&self.stripes[i]))
            .collect()
    }

    /// The stripes of `hashes`, each once, in order.
    fn stripes_of(&self, hashes: &[u64]) -> smallvec::SmallVec<[usize; 16]> {
        let mut stripes: smallvec::SmallVec<[usize; 16]> =
            hashes.iter().map(|&h| Self::index(h)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
    }

    /// [`lock`](Self::lock)'s body.
    fn lock_stripe(stripe: &Stripe) -> KeyGuard<'_> {
        let me = this_thread();
        let mut state = stripe.state.lock();
        // Loom runs its threads on one thread of the OS, so thread-locals
        // do not tell them apart there.
        assert!(
            cfg!(larder_loom) || !(state.held && (state.holder == me || computing(stripe))),
            "{WAITS_FOR_ITSELF}"
        );
        while state.held {
            state = stripe.released.wait(state);
        }
        state.held = true;
        state.holder = me;
        KeyGuard { stripe }
    }

    /// Takes a key's stripe, awaiting. Dropping the future while it waits
    /// gives up nothing (it held nothing yet) and leaves no waker behind.
    ///
    /// # Panics
    ///
    /// When polled, for a task, inside that task's async store call holding
    /// the stripe (see [`lock`](Self::lock)).
    pub(crate) async fn lock_async(&self, hash: u64) -> KeyGuard<'_> {
        Self::lock_stripe_async(self.stripe(hash)).await
    }

    /// [`lock_all`](Self::lock_all), awaiting: the stripes in order, one at
    /// a time. Dropping the future while it waits releases those taken.
    ///
    /// # Panics
    ///
    /// As [`lock_async`](Self::lock_async), for any of them.
    pub(crate) async fn lock_all_async(&self, hashes: &[u64]) -> Guards<'_> {
        let stripes = self.stripes_of(hashes);
        // Before waiting for any, as in `lock_all`.
        std::future::poll_fn(|cx| {
            for &i in &stripes {
                assert!(!serving(&self.stripes[i], cx.waker()), "{WAITS_FOR_ITSELF}");
            }
            std::task::Poll::Ready(())
        })
        .await;
        let mut guards = Guards::new();
        for i in stripes {
            guards.push(Self::lock_stripe_async(&self.stripes[i]).await);
        }
        guards
    }

    /// [`lock_async`](Self::lock_async)'s body.
    async fn lock_stripe_async(stripe: &Stripe) -> KeyGuard<'_> {
        let waiter = Waiter::new();
        let _forget = Forget(|| {
            if waiter.filed() {
                stripe.state.lock().wakers.forget(&waiter);
            }
        });
        std::future::poll_fn(|cx| {
            assert!(!serving(stripe, cx.waker()), "{WAITS_FOR_ITSELF}");
            let mut state = stripe.state.lock();
            if state.held {
                state.wakers.register(&waiter, cx);
                std::task::Poll::Pending
            } else {
                state.held = true;
                std::task::Poll::Ready(())
            }
        })
        .await;
        KeyGuard { stripe }
    }
}

#[cfg(all(test, not(larder_loom)))]
mod tests {
    use super::*;
    use crate::sync::tests::waker;
    use std::future::Future;
    use std::task::{Context, Poll};

    /// The write tests' fixed hasher (`tests/common`) hashes a key below
    /// 1,024 to itself, and those tests take keys 0 to 57 to be on
    /// different stripes whatever the run: a write of one key must not wait
    /// for another's stripe, held while the test holds that key's compute.
    #[test]
    fn hashes_0_to_57_spread_to_58_stripes() {
        let stripe = |hash| KeyLocks::index(crate::hash::spread(hash));
        let stripes: std::collections::HashSet<_> = (0..58).map(stripe).collect();
        assert_eq!(stripes.len(), 58);
        assert_eq!(stripe(58), stripe(11), "the first to share one");
    }

    /// A thread holding a stripe that asks for it again among others
    /// panics before it waits for any, even when a stripe it would take
    /// first is held by another thread waiting for the one it holds: checked
    /// one stripe at a time as it takes them, it would wait for that other
    /// thread, which waits for it.
    #[test]
    fn a_batch_asking_for_a_stripe_its_thread_holds_panics_before_waiting_for_any() {
        let locks = std::sync::Arc::new(KeyLocks::new());
        let (low, high) = (1, 2); // stripes 1 and 2: taken in that order
        let (took_high, holding) = std::sync::mpsc::channel();
        let (done, result) = std::sync::mpsc::channel();
        let holder = {
            let locks = locks.clone();
            std::thread::spawn(move || {
                let guard = locks.lock(high);
                took_high.send(()).unwrap();
                // Wait until the other thread holds the low stripe: it then
                // waits for the high one, which this thread holds.
                while !locks.stripes[KeyLocks::index(low)].state.lock().held {
                    std::thread::yield_now();
                }
                let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    drop(locks.lock_all(&[low, high]))
                }));
                done.send(batch.is_err()).unwrap();
                drop(guard);
            })
        };
        holding.recv().unwrap();
        let other = {
            let locks = locks.clone();
            std::thread::spawn(move || drop(locks.lock_all(&[low, high])))
        };
        let panicked = result
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the batch panics instead of waiting in a cycle");
        assert!(panicked);
        holder.join().unwrap();
        other.join().unwrap();
        for stripe in [low, high] {
            assert!(!locks.stripes[KeyLocks::index(stripe)].state.lock().held);
        }
    }

    #[test]
    fn a_panicking_waker_leaves_no_other_taker_unwoken() {
        let locks = KeyLocks::new();
        let guard = locks.lock(1);
        let mut waiting: Vec<_> = [true, false, true, false]
            .into_iter()
            .map(|panics| {
                let (count, waker) = waker(panics);
                (Box::pin(locks.lock_async(1)), count, waker)
            })
            .collect();
        for (future, _, waker) in &mut waiting {
            let polled = future.as_mut().poll(&mut Context::from_waker(waker));
            assert!(polled.is_pending(), "the stripe is held");
        }
        let raised = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(guard)));
        assert!(raised.is_err(), "the waker's panic reaches the releaser");
        // Every taker was woken and, in turn, takes the stripe.
        for (count, _) in waiting.iter().map(|(_, c, w)| (c, w)) {
            assert_eq!(count.wakes(), 1);
        }
        for (mut future, _, waker) in waiting {
            let Poll::Ready(guard) = future.as_mut().poll(&mut Context::from_waker(&waker)) else {
                panic!("a woken taker finds the stripe free");
            };
            drop(guard);
        }
        assert!(!locks.stripe(1).state.lock().held);
    }
}

#[cfg(all(test, larder_loom))]
mod loom_models {
    //! The stripe protocol under loom: sync takers park on the condition
    //! variable, async takers file wakers, and a release both notifies one
    //! parked thread and wakes every filed waker. Whatever the interleaving,
    //! two holders never overlap, what one holder wrote the next one sees,
    //! and every taker gets the stripe in the end (loom reports a deadlock
    //! if a taker waits for a wakeup that never comes).
    use super::*;
    use crate::sync::{AtomicBool, AtomicUsize, Ordering};
    use loom::sync::Arc;
    use loom::thread;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Wake, Waker};

    /// The stripe every model contends for.
    const KEY: u64 = 1;

    /// What holders of the stripe share: a flag that catches two at once,
    /// and a count each bumps with a relaxed load and store, so a holder
    /// that did not see the last one's bump (the stripe did not order them)
    /// loses it.
    #[derive(Default)]
    struct Held {
        inside: AtomicBool,
        count: AtomicUsize,
    }

    impl Held {
        fn hold(&self) {
            assert!(
                !self.inside.swap(true, Ordering::SeqCst),
                "two holders of one stripe"
            );
            let n = self.count.load(Ordering::Relaxed);
            thread::yield_now();
            self.count.store(n + 1, Ordering::Relaxed);
            self.inside.store(false, Ordering::SeqCst);
        }

        fn count(&self) -> usize {
            self.count.load(Ordering::Relaxed)
        }
    }

    struct Shared {
        locks: KeyLocks,
        held: Held,
    }

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            locks: KeyLocks::new(),
            held: Held::default(),
        })
    }

    /// Takes the stripe blocking, holds it, releases it.
    fn sync_taker(s: &Arc<Shared>) -> thread::JoinHandle<()> {
        let s = s.clone();
        thread::spawn(move || {
            let _guard = s.locks.lock(KEY);
            s.held.hold();
        })
    }

    /// A waker that counts its wakes, and lets its task block until the
    /// next one.
    #[derive(Default)]
    struct Signal {
        wakes: Mutex<usize>,
        woken: Condvar,
    }

    impl Wake for Signal {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            *self.wakes.lock() += 1;
            self.woken.notify_all();
        }
    }

    impl Signal {
        fn wakes(&self) -> usize {
            *self.wakes.lock()
        }

        /// Blocks until woken more than `seen` times in all.
        fn wait_past(&self, seen: usize) {
            let mut wakes = self.wakes.lock();
            while *wakes <= seen {
                wakes = self.woken.wait(wakes);
            }
        }
    }

    /// An async taker, polled by hand.
    struct Task<F> {
        future: Pin<Box<F>>,
        signal: std::sync::Arc<Signal>,
        waker: Waker,
    }

    impl<F: Future> Task<F> {
        fn new(future: F) -> Self {
            let signal = std::sync::Arc::new(Signal::default());
            Self {
                future: Box::pin(future),
                waker: Waker::from(signal.clone()),
                signal,
            }
        }

        fn poll(&mut self) -> Poll<F::Output> {
            self.future
                .as_mut()
                .poll(&mut Context::from_waker(&self.waker))
        }

        /// Polls to the end, blocking between polls until woken.
        fn run(mut self) -> F::Output {
            loop {
                let seen = self.signal.wakes();
                if let Poll::Ready(out) = self.poll() {
                    return out;
                }
                self.signal.wait_past(seen);
            }
        }
    }

    /// Nothing is left behind: the stripe is free and no waker is filed.
    fn assert_released(s: &Shared) {
        let state = s.locks.stripe(KEY).state.lock();
        assert!(!state.held, "the stripe is still held");
        assert!(state.wakers.is_empty(), "a waker was left behind");
    }

    #[test]
    fn two_sync_takers_exclude_each_other() {
        loom::model(|| {
            let s = shared();
            let other = sync_taker(&s);
            {
                let _guard = s.locks.lock(KEY);
                s.held.hold();
            }
            other.join().unwrap();
            assert_eq!(s.held.count(), 2);
            assert_released(&s);
        });
    }

    #[test]
    fn a_sync_and_an_async_taker_exclude_each_other() {
        loom::model(|| {
            let s = shared();
            let other = sync_taker(&s);
            // Pending while the thread holds the stripe; woken when it lets go.
            Task::new(async {
                let _guard = s.locks.lock_async(KEY).await;
                s.held.hold();
            })
            .run();
            other.join().unwrap();
            assert_eq!(s.held.count(), 2);
            assert_released(&s);
        });
    }

    #[test]
    fn a_woken_async_taker_dropped_before_it_takes_the_stripe_leaves_it_to_a_sync_one() {
        loom::model(|| {
            let s = shared();
            let guard = s.locks.lock(KEY);
            let waiter = sync_taker(&s);
            let mut task = Task::new(s.locks.lock_async(KEY));
            assert!(task.poll().is_pending(), "the stripe is held");
            let seen = task.signal.wakes();
            drop(guard);
            // Woken by the release, then cancelled without polling again.
            task.signal.wait_past(seen);
            drop(task);
            waiter.join().unwrap();
            assert_eq!(s.held.count(), 1);
            assert_released(&s);
        });
    }

    #[test]
    fn an_async_taker_dropped_while_it_waits_leaves_no_waker() {
        loom::model(|| {
            let s = shared();
            let guard = s.locks.lock(KEY);
            let waiter = sync_taker(&s);
            let mut task = Task::new(s.locks.lock_async(KEY));
            assert!(task.poll().is_pending(), "the stripe is held");
            drop(task);
            assert!(s.locks.stripe(KEY).state.lock().wakers.is_empty());
            drop(guard);
            waiter.join().unwrap();
            assert_eq!(s.held.count(), 1);
            assert_released(&s);
        });
    }

    #[test]
    fn two_async_takers_exclude_each_other() {
        loom::model(|| {
            let s = shared();
            let take = |s: &Arc<Shared>| {
                let s = s.clone();
                move || {
                    Task::new(async {
                        let _guard = s.locks.lock_async(KEY).await;
                        s.held.hold();
                    })
                    .run();
                }
            };
            let other = thread::spawn(take(&s));
            take(&s)();
            other.join().unwrap();
            assert_eq!(s.held.count(), 2);
            assert_released(&s);
        });
    }

    #[test]
    fn a_sync_waiter_that_loses_to_an_async_taker_still_gets_the_stripe() {
        loom::model(|| {
            let s = shared();
            let guard = s.locks.lock(KEY);
            let waiters = [sync_taker(&s), sync_taker(&s)];
            let mut task = Task::new(async {
                let _guard = s.locks.lock_async(KEY).await;
                s.held.hold();
            });
            assert!(task.poll().is_pending(), "the stripe is held");
            // The release notifies one parked thread and wakes the task,
            // which may take the stripe before that thread does.
            drop(guard);
            task.run();
            for waiter in waiters {
                waiter.join().unwrap();
            }
            assert_eq!(s.held.count(), 3);
            assert_released(&s);
        });
    }
}
