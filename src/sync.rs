//! The one place that chooses between std/parking_lot and loom primitives.
//!
//! Everything concurrent in the crate imports its atomics and locks from here, so
//! the loom models (`RUSTFLAGS="--cfg larder_loom"`) check the same code that ships.

#[cfg(not(larder_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};

#[cfg(larder_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};

pub(crate) use std::sync::atomic::Ordering;

/// A reader-writer lock with the two operations the store needs.
///
/// parking_lot's lock in production; loom's under the model checker. No
/// poisoning: the user code that runs while a shard lock is held for writing
/// (an `Expiry`'s `expire_after_create` and `expire_after_update`, keys'
/// `Hash` and `Eq`) is guarded where it may panic, and the shard stays whole.
#[derive(Debug, Default)]
pub(crate) struct RwLock<T> {
    #[cfg(not(larder_loom))]
    inner: parking_lot::RwLock<T>,
    #[cfg(larder_loom)]
    inner: loom::sync::RwLock<T>,
}

#[cfg(not(larder_loom))]
pub(crate) type ReadGuard<'a, T> = parking_lot::RwLockReadGuard<'a, T>;
#[cfg(not(larder_loom))]
pub(crate) type WriteGuard<'a, T> = parking_lot::RwLockWriteGuard<'a, T>;
#[cfg(larder_loom)]
pub(crate) type ReadGuard<'a, T> = loom::sync::RwLockReadGuard<'a, T>;
#[cfg(larder_loom)]
pub(crate) type WriteGuard<'a, T> = loom::sync::RwLockWriteGuard<'a, T>;

impl<T> RwLock<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            #[cfg(not(larder_loom))]
            inner: parking_lot::RwLock::new(value),
            #[cfg(larder_loom)]
            inner: loom::sync::RwLock::new(value),
        }
    }

    /// Whether a writer holds the lock (a plain load: a hint for spinning).
    #[cfg(not(larder_loom))]
    #[inline]
    pub(crate) fn is_locked_exclusive(&self) -> bool {
        self.inner.is_locked_exclusive()
    }

    /// Loom cannot see a lock's state without taking it: always worth a try.
    #[cfg(larder_loom)]
    pub(crate) fn is_locked_exclusive(&self) -> bool {
        false
    }

    #[cfg(not(larder_loom))]
    #[inline]
    pub(crate) fn read(&self) -> ReadGuard<'_, T> {
        self.inner.read()
    }

    #[cfg(not(larder_loom))]
    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        self.inner.write()
    }

    #[cfg(not(larder_loom))]
    #[inline]
    pub(crate) fn try_read(&self) -> Option<ReadGuard<'_, T>> {
        self.inner.try_read()
    }

    #[cfg(larder_loom)]
    pub(crate) fn try_read(&self) -> Option<ReadGuard<'_, T>> {
        self.inner.try_read().ok()
    }

    #[cfg(not(larder_loom))]
    #[inline]
    pub(crate) fn try_write(&self) -> Option<WriteGuard<'_, T>> {
        self.inner.try_write()
    }

    #[cfg(larder_loom)]
    pub(crate) fn try_write(&self) -> Option<WriteGuard<'_, T>> {
        self.inner.try_write().ok()
    }

    #[cfg(larder_loom)]
    pub(crate) fn read(&self) -> ReadGuard<'_, T> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(larder_loom)]
    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A mutual-exclusion lock with the operations the policy and the flights need.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T> {
    #[cfg(not(larder_loom))]
    inner: parking_lot::Mutex<T>,
    #[cfg(larder_loom)]
    inner: loom::sync::Mutex<T>,
}

#[cfg(not(larder_loom))]
pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;
#[cfg(larder_loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            #[cfg(not(larder_loom))]
            inner: parking_lot::Mutex::new(value),
            #[cfg(larder_loom)]
            inner: loom::sync::Mutex::new(value),
        }
    }

    #[cfg(not(larder_loom))]
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.inner.try_lock()
    }

    /// The contents, through exclusive access: no atomic operation at all.
    #[cfg(not(larder_loom))]
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }

    #[cfg(larder_loom)]
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(larder_loom)]
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.inner.try_lock().ok()
    }

    #[cfg(not(larder_loom))]
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.inner.lock()
    }

    #[cfg(larder_loom)]
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A condition variable over [`Mutex`] (a flight's waiters, the write-back
/// queue's flusher and writers, a key lock's blocking takers).
#[derive(Debug, Default)]
pub(crate) struct Condvar {
    #[cfg(not(larder_loom))]
    inner: parking_lot::Condvar,
    #[cfg(larder_loom)]
    inner: loom::sync::Condvar,
}

impl Condvar {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Releases `guard`, waits for a notification, and locks again.
    #[cfg(not(larder_loom))]
    pub(crate) fn wait<'a, T>(&self, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.inner.wait(&mut guard);
        guard
    }

    #[cfg(larder_loom)]
    pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.inner.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// [`wait`](Self::wait), giving up at `deadline`; true when it did. Under
    /// loom a wait never times out (loom has no clock), so a model must not
    /// rely on one.
    #[cfg(not(larder_loom))]
    pub(crate) fn wait_until<'a, T>(
        &self,
        mut guard: MutexGuard<'a, T>,
        deadline: std::time::Instant,
    ) -> (MutexGuard<'a, T>, bool) {
        let timed_out = self.inner.wait_until(&mut guard, deadline).timed_out();
        (guard, timed_out)
    }

    #[cfg(larder_loom)]
    pub(crate) fn wait_until<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        deadline: std::time::Instant,
    ) -> (MutexGuard<'a, T>, bool) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match self.inner.wait_timeout(guard, left) {
            Ok((guard, result)) => (guard, result.timed_out()),
            Err(e) => {
                let (guard, result) = e.into_inner();
                (guard, result.timed_out())
            }
        }
    }

    pub(crate) fn notify_one(&self) {
        self.inner.notify_one();
    }

    pub(crate) fn notify_all(&self) {
        self.inner.notify_all();
    }
}

/// Threads: std's, or loom's under the model checker (the write-back flusher).
#[cfg(not(larder_loom))]
pub(crate) use std::thread;

#[cfg(larder_loom)]
pub(crate) use loom::thread;

/// Aligns its contents to 128 bytes so two shards never share a cache line
/// (adjacent-line prefetch makes 64 too small on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Wakes every waker, even when one of them panics: the others' tasks would
/// otherwise wait for a wakeup that never comes. The first panic is raised
/// again once all are woken (and dropped if the thread is unwinding already,
/// as a guard's drop may be, where a second panic would abort).
pub(crate) fn wake_all(wakers: impl IntoIterator<Item = std::task::Waker>) {
    if let Some(payload) = wake_each(wakers) {
        if !std::thread::panicking() {
            std::panic::resume_unwind(payload);
        }
    }
}

/// Wakes every waker, even when one of them panics; the first panic's
/// payload, if any, for the caller to raise or to drop.
pub(crate) fn wake_each(
    wakers: impl IntoIterator<Item = std::task::Waker>,
) -> Option<Box<dyn std::any::Any + Send>> {
    let mut panicked = None;
    for waker in wakers {
        let woken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake()));
        if let Err(payload) = woken {
            panicked.get_or_insert(payload);
        }
    }
    panicked
}

#[cfg(all(test, not(larder_loom)))]
pub(crate) mod tests {
    use super::wake_all;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    /// Counts its wakes; panics on each if `panics`.
    pub(crate) struct Counting {
        wakes: AtomicUsize,
        panics: bool,
    }

    impl Counting {
        pub(crate) fn wakes(&self) -> usize {
            self.wakes.load(Ordering::SeqCst)
        }
    }

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            assert!(!self.panics, "a waker that panics");
        }
    }

    /// A waker and its count; one that panics (with "a waker that panics")
    /// if `panics`.
    pub(crate) fn waker(panics: bool) -> (Arc<Counting>, Waker) {
        let counting = Arc::new(Counting {
            wakes: AtomicUsize::new(0),
            panics,
        });
        (counting.clone(), Waker::from(counting))
    }

    #[test]
    fn a_panicking_waker_leaves_no_other_unwoken_and_its_panic_is_raised() {
        let wakers: Vec<_> = [false, true, false, true, false]
            .into_iter()
            .map(waker)
            .collect();
        let counts: Vec<_> = wakers.iter().map(|(c, _)| c.clone()).collect();
        let raised = std::panic::catch_unwind(|| {
            wake_all(wakers.into_iter().map(|(_, w)| w));
        });
        let payload = raised.expect_err("the waker's panic is raised");
        assert_eq!(
            payload.downcast_ref::<&str>(),
            Some(&"a waker that panics"),
            "the first panic's own payload"
        );
        for count in counts {
            assert_eq!(count.wakes.load(Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn a_panicking_waker_met_while_unwinding_is_dropped() {
        let (count, w) = waker(true);
        let (other, w2) = waker(false);
        struct WakeOnDrop(Option<Vec<Waker>>);
        impl Drop for WakeOnDrop {
            fn drop(&mut self) {
                wake_all(self.0.take().into_iter().flatten());
            }
        }
        let raised = std::panic::catch_unwind(move || {
            let _guard = WakeOnDrop(Some(vec![w, w2]));
            panic!("the first panic");
        });
        let payload = raised.expect_err("the first panic goes on");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"the first panic"));
        assert_eq!(count.wakes.load(Ordering::SeqCst), 1);
        assert_eq!(other.wakes.load(Ordering::SeqCst), 1);
    }
}

/// Runs its closure when dropped unless disarmed (set to `None`): the undo of
/// an async write whose task was cancelled mid-way, or of a refresh's mark
/// on its entry when the refresh fails, panics or is cancelled.
pub(crate) struct OnDrop<F: FnOnce()>(pub(crate) Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(undo) = self.0.take() {
            undo();
        }
    }
}
