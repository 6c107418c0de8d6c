//! Striped per-key locks for write-through, takeable by blocking or by
//! awaiting, and the wakers of the tasks waiting for them.

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
    state: parking_lot::Mutex<StripeState>,
    released: parking_lot::Condvar,
}

#[derive(Default)]
struct StripeState {
    held: bool,
    /// Async callers waiting for the stripe; all are woken on release.
    wakers: Wakers,
}

/// A held stripe; released on drop.
pub(crate) struct KeyGuard<'a> {
    stripe: &'a Stripe,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.stripe.state.lock();
        state.held = false;
        let wakers: Vec<_> = state.wakers.take().collect();
        drop(state);
        self.stripe.released.notify_one();
        for waker in wakers {
            waker.wake();
        }
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

/// Stripes per cache: enough that unrelated keys rarely share one.
const STRIPES: usize = 1024;

impl KeyLocks {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..STRIPES)
                .map(|_| Stripe {
                    state: parking_lot::Mutex::new(StripeState::default()),
                    released: parking_lot::Condvar::new(),
                })
                .collect(),
        }
    }

    /// The stripe of a key's hash (its low bits; shards use bits 32 and up).
    fn stripe(&self, hash: u64) -> &Stripe {
        &self.stripes[(hash as usize) & (STRIPES - 1)]
    }

    /// Takes a key's stripe, blocking.
    pub(crate) fn lock(&self, hash: u64) -> KeyGuard<'_> {
        let stripe = self.stripe(hash);
        let mut state = stripe.state.lock();
        while state.held {
            stripe.released.wait(&mut state);
        }
        state.held = true;
        KeyGuard { stripe }
    }

    /// Takes a key's stripe, awaiting. Dropping the future while it waits
    /// gives up nothing (it held nothing yet) and leaves no waker behind.
    pub(crate) async fn lock_async(&self, hash: u64) -> KeyGuard<'_> {
        let stripe = self.stripe(hash);
        let waiter = Waiter::new();
        let _forget = Forget(|| {
            if waiter.filed() {
                stripe.state.lock().wakers.forget(&waiter);
            }
        });
        std::future::poll_fn(|cx| {
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
