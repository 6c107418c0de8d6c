//! Single flight: concurrent loads of one absent key share one load.
//!
//! Each shard keeps a small table of the keys being loaded, behind a mutex of
//! its own (never the map lock, and never held while a loader runs). The first
//! caller to miss a key becomes the flight's leader and runs the loader; later
//! callers wait on the flight and take its outcome. A leader that panics
//! abandons the flight: its own caller sees the panic, and one waiter takes
//! the load over. An explicit write of the key (insert, remove, invalidate_all)
//! while the load runs marks the flight stale, so its value reaches the waiters
//! but is not cached over the newer state (DESIGN §3, contract 3), and leaves
//! the table: a caller that arrives after the write starts a load of its own
//! rather than take a value read before it. So does a caller that arrives
//! after a tag invalidation the flight began before. The flight it replaces
//! stays within reach of writes through the newer one (which keeps a list of
//! the older flights still loading), so its value is still cached if it lands
//! first and no write or invalidation of its tags came since; once the newer
//! flight lands, or leaves the table, the older ones are marked stale, so an
//! older load never lands over a newer one.

use std::any::Any;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::thread::ThreadId;

use hashbrown::HashTable;

use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering};

/// An error shared by every caller of a failed flight, type-erased so that
/// callers with different error types can still share flights of one key.
pub(crate) type SharedError = Arc<dyn Any + Send + Sync>;

/// How a flight ended.
#[derive(Clone)]
pub(crate) enum Outcome<V> {
    /// A value (cached unless the flight went stale).
    Loaded(V),
    /// The loader said there is nothing (`optionally_get_or_load`); not cached.
    Absent,
    /// The loader failed; not cached.
    Failed(SharedError),
    /// The leader panicked: a waiter must load again.
    Abandoned,
}

enum State<V> {
    /// With the wakers of async waiters to wake when it ends.
    Loading(Waiters),
    Done(Outcome<V>),
}

/// The async waiters of a flight, each under an id of its own, so that a
/// waiter dropped while it waits (a timeout, a lost `select!` branch) takes
/// its waker away with it instead of leaving it until the load ends.
#[derive(Default)]
struct Waiters {
    next: u64,
    wakers: Vec<(u64, Waker)>,
}

/// One load in progress.
pub(crate) struct Flight<K, V> {
    pub(crate) key: K,
    hash: u64,
    /// The thread of a synchronous leader (an async leader may move between
    /// threads, and other tasks share its thread, so it is not recorded).
    leader: Option<ThreadId>,
    state: Mutex<State<V>>,
    done: Condvar,
    /// Set by a write of the key while the load runs.
    stale: AtomicBool,
    /// The cache's tag epoch when the flight began: a caller that sees a
    /// later one (a tag was invalidated since) does not join.
    epoch: u64,
    /// Older flights of the key, still loading when this one replaced them
    /// in the table: a write that reaches this flight reaches them too.
    older: Vec<Arc<Flight<K, V>>>,
}

thread_local! {
    /// The flights (by address) whose async leader is polling its loader on
    /// this thread right now: see [`lead`].
    static LEADING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Polls an async leader's `load` with its flight marked as led from this
/// thread for the length of each poll, so that the loader asking for its own
/// key (through either call) panics instead of waiting for itself.
pub(crate) async fn lead<F: std::future::Future, K, V>(
    flight: &Flight<K, V>,
    load: F,
) -> F::Output {
    struct Mark;
    impl Drop for Mark {
        fn drop(&mut self) {
            LEADING.with(|l| l.borrow_mut().pop());
        }
    }
    let address = flight as *const Flight<K, V> as usize;
    let mut load = std::pin::pin!(load);
    std::future::poll_fn(|cx| {
        LEADING.with(|l| l.borrow_mut().push(address));
        let _mark = Mark;
        load.as_mut().poll(cx)
    })
    .await
}

impl<K, V> Flight<K, V> {
    /// Panics if the caller is this flight's own leader: a loader asking for
    /// its own key would otherwise wait for itself forever.
    ///
    /// `blocking`: the caller would block its thread, so a synchronous leader
    /// on this thread is itself. An async waiter on that thread may be another
    /// task of a runtime the loader drives (`block_on` in a sync loader), which
    /// will finish once the leader does: only an async leader's own poll
    /// counts for it.
    fn check_not_leading(&self, blocking: bool) {
        let address = self as *const Self as usize;
        let leading = (blocking && self.leader == Some(std::thread::current().id()))
            || LEADING.with(|l| l.borrow().contains(&address));
        assert!(
            !leading,
            "larder: a loader asked the cache for the key it is loading; \
             this would wait for itself forever"
        );
    }

    /// Waits for the outcome. Panics if the caller is the flight's own leader
    /// (see `check_not_leading`).
    pub(crate) fn wait(&self) -> Outcome<V>
    where
        V: Clone,
    {
        self.check_not_leading(true);
        let mut state = self.state.lock();
        loop {
            if let State::Done(outcome) = &*state {
                return outcome.clone();
            }
            state = self.done.wait(state);
        }
    }

    /// Whether a write of the key happened while the load ran, or a newer
    /// load of the key landed first.
    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// Marks this flight and the older ones it replaced stale.
    fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
        self.supersede_older();
    }

    /// Marks the older flights this one replaced stale: called as this one's
    /// value is cached (under the shard's write lock, where an older flight
    /// checks before it caches) and when it leaves the table.
    pub(crate) fn supersede_older(&self) {
        for flight in &self.older {
            flight.stale.store(true, Ordering::Release);
        }
    }

    fn is_loading(&self) -> bool {
        matches!(*self.state.lock(), State::Loading(_))
    }

    /// Waits for the outcome without blocking the thread.
    pub(crate) fn wait_async(&self) -> WaitAsync<'_, K, V> {
        WaitAsync {
            flight: self,
            id: None,
        }
    }

    fn finish(&self, outcome: Outcome<V>) {
        let previous = std::mem::replace(&mut *self.state.lock(), State::Done(outcome));
        self.done.notify_all();
        if let State::Loading(waiters) = previous {
            waiters.wakers.into_iter().for_each(|(_, w)| w.wake());
        }
    }
}

/// [`Flight::wait_async`]'s future: registered among the flight's waiters
/// from its first poll until it completes or is dropped.
pub(crate) struct WaitAsync<'a, K, V> {
    flight: &'a Flight<K, V>,
    id: Option<u64>,
}

impl<K, V: Clone> std::future::Future for WaitAsync<'_, K, V> {
    type Output = Outcome<V>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Outcome<V>> {
        self.flight.check_not_leading(false);
        let mut state = self.flight.state.lock();
        let waiters = match &mut *state {
            State::Done(outcome) => {
                let outcome = outcome.clone();
                drop(state);
                // `finish` took the waiters: nothing to deregister.
                self.id = None;
                return Poll::Ready(outcome);
            }
            State::Loading(waiters) => waiters,
        };
        match self
            .id
            .and_then(|id| waiters.wakers.iter_mut().find(|(i, _)| *i == id))
        {
            Some((_, waker)) => {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
            }
            None => {
                let id = waiters.next;
                waiters.next += 1;
                waiters.wakers.push((id, cx.waker().clone()));
                drop(state);
                self.id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl<K, V> Drop for WaitAsync<'_, K, V> {
    fn drop(&mut self) {
        let Some(id) = self.id else {
            return;
        };
        if let State::Loading(waiters) = &mut *self.flight.state.lock() {
            waiters.wakers.retain(|(i, _)| *i != id);
        }
    }
}

/// A shard's table of flights.
pub(crate) struct Flights<K, V> {
    table: Mutex<HashTable<Arc<Flight<K, V>>>>,
    /// Flights in the table: writes look the table up only when it is non-zero.
    active: AtomicUsize,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Self {
            table: Mutex::new(HashTable::new()),
            active: AtomicUsize::new(0),
        }
    }
}

impl<K, V> std::fmt::Debug for Flights<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish()
    }
}

/// Whether the caller leads the flight or waits on it.
pub(crate) enum Role<'a, K, V> {
    Leader(Leader<'a, K, V>),
    Waiter(Arc<Flight<K, V>>),
}

impl<K: Eq + Clone, V: Clone> Flights<K, V> {
    /// Joins the flight for `key`, or starts one and leads it (`sync`: the
    /// leader will load on this thread, blocking it). `epoch` is the cache's
    /// tag epoch now: a flight that began before a later one may carry a
    /// value of an invalidated tag, so it is left to its waiters and a new
    /// flight takes its place. The new flight keeps it (and the older flights
    /// it kept, those still loading), so that writes still reach it.
    pub(crate) fn join(&self, hash: u64, key: &K, sync: bool, epoch: u64) -> Role<'_, K, V> {
        let mut table = self.table.lock();
        let mut older = Vec::new();
        if let Ok(found) = table.find_entry(hash, |f| f.key == *key) {
            if found.get().epoch >= epoch {
                return Role::Waiter(found.get().clone());
            }
            let (replaced, _) = found.remove();
            self.active.fetch_sub(1, Ordering::SeqCst);
            older.extend(replaced.older.iter().filter(|f| f.is_loading()).cloned());
            older.push(replaced);
        }
        let flight = Arc::new(Flight {
            key: key.clone(),
            hash,
            leader: sync.then(|| std::thread::current().id()),
            state: Mutex::new(State::Loading(Waiters::default())),
            done: Condvar::new(),
            stale: AtomicBool::new(false),
            epoch,
            older,
        });
        table.insert_unique(hash, flight.clone(), |f| f.hash);
        self.active.fetch_add(1, Ordering::SeqCst);
        Role::Leader(Leader {
            flights: self,
            flight,
            finished: false,
        })
    }
}

impl<K, V> Flights<K, V> {
    /// Marks the flight for `key`, if any, stale: a write of the key
    /// happened. It leaves the table: its leader and waiters still get its
    /// outcome, but a caller arriving from now on must not take a value read
    /// before the write, so it starts a load of its own.
    pub(crate) fn invalidate<Q>(&self, hash: u64, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        if self.active.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut table = self.table.lock();
        if let Ok(found) = table.find_entry(hash, |f| f.key.borrow() == key) {
            found.get().mark_stale();
            found.remove();
            self.active.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Marks every flight stale and empties the table (`invalidate_all`).
    pub(crate) fn invalidate_all(&self) {
        if self.active.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut table = self.table.lock();
        for flight in table.drain() {
            flight.mark_stale();
            self.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl<K, V> Flights<K, V> {
    /// Takes `flight` out of the table unless a write already did. The
    /// older flights it kept go stale: out of the table, no write could
    /// reach them any more.
    fn remove_flight(&self, flight: &Arc<Flight<K, V>>) {
        let mut table = self.table.lock();
        if let Ok(entry) = table.find_entry(flight.hash, |f| Arc::ptr_eq(f, flight)) {
            entry.remove();
            self.active.fetch_sub(1, Ordering::SeqCst);
        }
        flight.supersede_older();
    }
}

/// The leader's handle on its flight. Dropping it without [`Leader::finish`]
/// (a panic in the loader) abandons the flight, so that a waiter takes the
/// load over.
pub(crate) struct Leader<'a, K, V> {
    flights: &'a Flights<K, V>,
    flight: Arc<Flight<K, V>>,
    finished: bool,
}

impl<K, V> Leader<'_, K, V> {
    pub(crate) fn flight(&self) -> &Flight<K, V> {
        &self.flight
    }

    /// Ends the flight: it leaves the table (later callers start afresh or
    /// hit the cache), then every waiter gets `outcome`.
    pub(crate) fn finish(mut self, outcome: Outcome<V>) {
        self.finished = true;
        self.flights.remove_flight(&self.flight);
        self.flight.finish(outcome);
    }
}

impl<K, V> Drop for Leader<'_, K, V> {
    fn drop(&mut self) {
        if !self.finished {
            self.flights.remove_flight(&self.flight);
            self.flight.finish(Outcome::Abandoned);
        }
    }
}

/// Load counters, kept per cache (loads are rare next to reads).
#[derive(Debug, Default)]
pub(crate) struct LoadStats {
    pub(crate) loads: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) nanos: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    type Table = Flights<u8, u32>;

    fn leader(role: Role<'_, u8, u32>) -> Leader<'_, u8, u32> {
        match role {
            Role::Leader(leader) => leader,
            Role::Waiter(_) => panic!("expected to lead"),
        }
    }

    #[test]
    fn a_write_takes_the_flight_out_of_the_table() {
        let table = Table::default();
        let early = leader(table.join(1, &1, false, 0));
        assert!(matches!(table.join(1, &1, false, 0), Role::Waiter(_)));
        table.invalidate(1, &1);
        assert!(early.flight().is_stale(), "its value is not cached");
        assert_eq!(table.active.load(Ordering::SeqCst), 0);
        // A caller after the write leads a flight of its own.
        let late = leader(table.join(1, &1, false, 0));
        assert!(!late.flight().is_stale());
        // The early leader finishing leaves the late flight in place.
        early.finish(Outcome::Loaded(1));
        assert_eq!(table.active.load(Ordering::SeqCst), 1);
        assert!(matches!(table.join(1, &1, false, 0), Role::Waiter(_)));
        late.finish(Outcome::Loaded(2));
        assert_eq!(table.active.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn invalidating_all_empties_the_table() {
        let table = Table::default();
        let a = leader(table.join(1, &1, false, 0));
        let b = leader(table.join(2, &2, false, 0));
        table.invalidate_all();
        assert!(a.flight().is_stale() && b.flight().is_stale());
        assert_eq!(table.active.load(Ordering::SeqCst), 0);
        let c = leader(table.join(1, &1, false, 0));
        drop((a, b));
        assert_eq!(table.active.load(Ordering::SeqCst), 1);
        drop(c);
        assert_eq!(table.active.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_caller_after_a_tag_invalidation_leads_a_flight_of_its_own() {
        let table = Table::default();
        let early = leader(table.join(1, &1, false, 3));
        assert!(matches!(table.join(1, &1, false, 3), Role::Waiter(_)));
        let late = leader(table.join(1, &1, false, 4));
        // The late flight keeps the early one within reach of writes.
        assert!(!early.flight().is_stale());
        assert!(!late.flight().is_stale());
        assert_eq!(table.active.load(Ordering::SeqCst), 1);
        early.finish(Outcome::Loaded(1));
        assert!(matches!(table.join(1, &1, false, 4), Role::Waiter(_)));
        late.finish(Outcome::Loaded(2));
        assert_eq!(table.active.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_write_reaches_the_flights_a_newer_one_replaced() {
        let table = Table::default();
        let first = leader(table.join(1, &1, false, 1));
        let second = leader(table.join(1, &1, false, 2));
        let third = leader(table.join(1, &1, false, 3));
        assert_eq!(table.active.load(Ordering::SeqCst), 1);
        assert_eq!(third.flight.older.len(), 2, "both still load");
        table.invalidate(1, &1);
        for flight in [&first, &second, &third] {
            assert!(flight.flight().is_stale());
        }
        assert_eq!(table.active.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_newer_flight_keeps_only_the_older_ones_still_loading() {
        let table = Table::default();
        let first = leader(table.join(1, &1, false, 1));
        let second = leader(table.join(1, &1, false, 2));
        first.finish(Outcome::Loaded(1));
        let third = leader(table.join(1, &1, false, 3));
        assert_eq!(third.flight.older.len(), 1);
        assert!(Arc::ptr_eq(&third.flight.older[0], &second.flight));
        // The newest leaving the table (here abandoned) leaves the older
        // ones out of reach of writes: they go stale.
        drop(third);
        assert!(second.flight().is_stale());
        second.finish(Outcome::Loaded(2));
        assert_eq!(table.active.load(Ordering::SeqCst), 0);
    }
}

#[cfg(all(test, larder_loom))]
mod loom_models {
    //! The flight protocol under loom: whatever the interleaving, a caller
    //! either leads or gets the leader's outcome, an abandoned flight is taken
    //! over, and nobody waits forever (loom reports a deadlock otherwise).
    use super::*;
    use loom::sync::Arc as LoomArc;
    use loom::thread;

    type Table = Flights<u8, u32>;

    /// Joins key 1: a leader finishes with `lead`'s outcome; a waiter returns
    /// what it saw. (`sync: false`: loom threads share one OS thread.)
    fn call(table: &Table, lead: impl FnOnce() -> Option<Outcome<u32>>) -> Outcome<u32> {
        match table.join(1, &1, false, 0) {
            Role::Leader(leader) => match lead() {
                Some(outcome) => {
                    leader.finish(outcome.clone());
                    outcome
                }
                // The leader goes away without finishing (a panic, a cancelled task).
                None => {
                    drop(leader);
                    Outcome::Abandoned
                }
            },
            Role::Waiter(flight) => flight.wait(),
        }
    }

    fn value(o: &Outcome<u32>) -> Option<u32> {
        match o {
            Outcome::Loaded(v) => Some(*v),
            _ => None,
        }
    }

    #[test]
    fn a_waiter_arriving_while_the_leader_completes_gets_its_value() {
        loom::model(|| {
            let table = LoomArc::new(Table::default());
            let t = table.clone();
            let a = thread::spawn(move || call(&t, || Some(Outcome::Loaded(7))));
            let b = call(&table, || Some(Outcome::Loaded(7)));
            assert_eq!(value(&a.join().unwrap()), Some(7));
            assert_eq!(value(&b), Some(7));
            assert_eq!(
                table.active.load(Ordering::SeqCst),
                0,
                "the flight left the table"
            );
        });
    }

    #[test]
    fn a_failure_reaches_the_waiter_once() {
        loom::model(|| {
            let table = LoomArc::new(Table::default());
            let t = table.clone();
            let error: SharedError = Arc::new("down");
            let e = error.clone();
            let a = thread::spawn(move || call(&t, || Some(Outcome::Failed(e))));
            // Whichever leads, the other either waits on its flight and gets
            // that outcome (the very same error) or leads a flight of its own.
            let b = call(&table, || Some(Outcome::Loaded(1)));
            for outcome in [a.join().unwrap(), b] {
                match outcome {
                    Outcome::Failed(e) => assert!(Arc::ptr_eq(&e, &error)),
                    Outcome::Loaded(1) => {}
                    _ => panic!("unexpected outcome"),
                }
            }
        });
    }

    #[test]
    fn an_abandoned_flight_is_taken_over() {
        loom::model(|| {
            let table = LoomArc::new(Table::default());
            let t = table.clone();
            // The first leader vanishes; a waiter that sees that retries and leads.
            let a = thread::spawn(move || call(&t, || None));
            let mut b = call(&table, || Some(Outcome::Loaded(2)));
            if matches!(b, Outcome::Abandoned) {
                b = call(&table, || Some(Outcome::Loaded(2)));
            }
            assert!(matches!(
                a.join().unwrap(),
                Outcome::Abandoned | Outcome::Loaded(2)
            ));
            assert_eq!(value(&b), Some(2));
        });
    }

    #[test]
    fn a_cancelled_leader_with_two_waiters() {
        loom::model(|| {
            let table = LoomArc::new(Table::default());
            let waiter = |t: LoomArc<Table>| {
                thread::spawn(move || loop {
                    match call(&t, || Some(Outcome::Loaded(3))) {
                        Outcome::Abandoned => continue,
                        o => return value(&o),
                    }
                })
            };
            let w1 = waiter(table.clone());
            let w2 = waiter(table.clone());
            let _ = call(&table, || None);
            assert_eq!(w1.join().unwrap(), Some(3));
            assert_eq!(w2.join().unwrap(), Some(3));
        });
    }
}
