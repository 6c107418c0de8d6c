//! Single flight: concurrent loads of one absent key share one load, and at
//! most one loader of a key runs at a time.
//!
//! Each shard keeps a small table of the keys being loaded, behind a mutex of
//! its own (never the map lock, and never held while a loader runs). The first
//! caller to miss a key becomes the flight's leader and runs the loader; later
//! callers wait on the flight and take its outcome. A leader that panics
//! abandons the flight: its own caller sees the panic, and one waiter takes
//! the load over.
//!
//! A flight is *pending* until its leader starts loading, then *started* at
//! the cache's tag epoch of that moment. A write of the key (insert, remove,
//! invalidate_all) while a started load runs marks the flight stale, so its
//! value reaches the waiters but is not cached over the newer state. A caller that arrives after such a write, or after a tag
//! invalidation the load began before, must not take a value read before it:
//! it does not join, but replaces the flight in the table with a pending one
//! that keeps the older flights still loading. Its leader waits for them to
//! end before it starts (one loader of a key at a time), then looks in the
//! cache again, where an older load that was not stale may have left its
//! value. Writes reach the older flights through the newer one; once a newer
//! value is cached the older flights are marked stale, so an older load never
//! lands over it. A pending flight is never stale (its load has not read
//! anything yet) and anyone may join it.

use std::any::Any;
use std::sync::{Arc, Weak};
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
    /// Shared, so that each waiter takes the outcome under the flight's lock
    /// but clones the value (user code, of any cost) after releasing it: a
    /// herd of waiters woken together clones in parallel, not one at a time.
    Done(Arc<Outcome<V>>),
}

/// The async waiters of a flight, each in a slot of its own, so that a
/// waiter dropped while it waits (a timeout, a lost `select!` branch) takes
/// its waker away with it instead of leaving it until the load ends. A slot
/// is found by its index: a herd of waiters timing out together costs the
/// flight's lock one step each, where a search of a list cost it a step per
/// waiter still registered (`cargo bench --bench loading`, printed: 10,000 /
/// 40,000 dropped at once took 63 ms / 0.95 s with the list, 0.45 / 2.3 ms
/// now).
#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    /// Slots emptied by waiters that left, for the next ones to take.
    free: Vec<usize>,
}

impl Waiters {
    /// Registers `waker`; returns its slot.
    fn add(&mut self, waker: Waker) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(waker);
                slot
            }
            None => {
                self.slots.push(Some(waker));
                self.slots.len() - 1
            }
        }
    }

    /// Takes the waker in `slot` away (its waiter left).
    fn remove(&mut self, slot: usize) {
        if let Some(waker) = self.slots.get_mut(slot) {
            if waker.take().is_some() {
                self.free.push(slot);
            }
        }
    }
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
    /// The cache's tag epoch when the load started, [`PENDING`] before: a
    /// caller that sees a later one (a tag was invalidated since) does not
    /// join. Set under the table's lock.
    epoch: AtomicU64,
    /// Set as the flight ends (its value, if any, already cached or not).
    ended: AtomicBool,
    /// Led by an explicit refresh ([`Flights::lead`]): while it waits to
    /// start, another refresh may join it, its load reading the source
    /// after both began.
    refresh: bool,
    /// Older flights of the key, still loading when this one replaced them
    /// in the table: its leader waits for them before it loads, and a write
    /// that reaches this flight reaches them too. Weak, so that one that
    /// ended is freed with its value (and the flights it kept in turn) once
    /// its callers have it, instead of chaining every flight of a hot key.
    older: Vec<Weak<Flight<K, V>>>,
}

/// A flight's epoch until its leader starts loading.
const PENDING: u64 = u64::MAX;

thread_local! {
    /// The flights (by address) whose async leader is polling its loader on
    /// this thread right now: see [`lead`].
    static LEADING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Polls an async leader's `load` with its flight marked as led from this
/// thread for the length of each poll, and drops it so marked, so that the
/// loader asking for its own key (through either call) panics instead of
/// waiting for itself. The drop counts too: a leader cancelled mid-load
/// (dropped by a timeout) drops its `load` while the flight is still open,
/// and a `load` whose `Drop` asked for its key waited for itself, and every
/// later caller of the key with it.
pub(crate) async fn lead<F: std::future::Future, K, V>(
    flights: &[&Flight<K, V>],
    load: F,
) -> F::Output {
    /// Pops the marks pushed before it.
    struct Mark(usize);
    impl Drop for Mark {
        fn drop(&mut self) {
            // Gone only as the thread exits (see `mark`).
            let _ = LEADING.try_with(|l| {
                let mut l = l.borrow_mut();
                let kept = l.len().saturating_sub(self.0);
                l.truncate(kept);
            });
        }
    }
    /// Once the thread's locals are being torn down (a leader held in a
    /// thread-local, cancelled as its thread exits), there is nothing to
    /// mark: the loader asking for its own key then goes undetected, where
    /// `with` would panic in a destructor and abort the process.
    fn mark(addresses: &[usize]) -> Mark {
        match LEADING.try_with(|l| l.borrow_mut().extend_from_slice(addresses)) {
            Ok(()) => Mark(addresses.len()),
            Err(_) => Mark(0),
        }
    }
    /// Holds the loader; dropping it (done, cancelled or unwinding) drops the
    /// loader with the flights marked.
    struct Led<'a, F> {
        load: std::pin::Pin<&'a mut Option<F>>,
        addresses: &'a [usize],
    }
    impl<F> Drop for Led<'_, F> {
        fn drop(&mut self) {
            if self.load.is_some() {
                let _mark = mark(self.addresses);
                self.load.set(None);
            }
        }
    }
    let addresses: smallvec::SmallVec<[usize; 1]> = flights
        .iter()
        .map(|&flight| flight as *const Flight<K, V> as usize)
        .collect();
    let mut led = Led {
        load: std::pin::pin!(Some(load)),
        addresses: &addresses,
    };
    std::future::poll_fn(|cx| {
        let _mark = mark(&addresses);
        match led.load.as_mut().as_pin_mut() {
            Some(load) => load.poll(cx),
            None => unreachable!("the loader is dropped only with its leader"),
        }
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
    ///
    /// A pending flight's leader waits for the older flights it replaced, so
    /// leading one of those still loading counts too.
    fn check_not_leading(&self, blocking: bool) {
        let leads = |flight: &Self| {
            let address = flight as *const Self as usize;
            (blocking && flight.leader == Some(std::thread::current().id()))
                // Torn down as the thread exits: nothing led from here
                // can be detected any more (see `lead`).
                || LEADING
                    .try_with(|l| l.borrow().contains(&address))
                    .unwrap_or(false)
        };
        let leading = leads(self)
            || self
                .older()
                .any(|older| older.is_loading() && leads(&older));
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
        self.wait_then(Outcome::clone)
    }

    /// Waits for the flight to end, taking nothing of its outcome: a caller
    /// waiting for an older load of its key need not clone (user code, which
    /// may panic) a value it will not use.
    pub(crate) fn wait_ended(&self) {
        self.wait_then(|_| ());
    }

    fn wait_then<R>(&self, take: impl FnOnce(&Outcome<V>) -> R) -> R {
        self.check_not_leading(true);
        let mut state = self.state.lock();
        let outcome = loop {
            if let State::Done(outcome) = &*state {
                break outcome.clone();
            }
            state = self.done.wait(state);
        };
        drop(state);
        take(&outcome)
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
        for flight in self.older() {
            flight.stale.store(true, Ordering::Release);
        }
    }

    /// The older flights still held (a flight no one holds has no leader
    /// left: it ended).
    fn older(&self) -> impl Iterator<Item = Arc<Flight<K, V>>> + '_ {
        self.older.iter().filter_map(Weak::upgrade)
    }

    fn is_loading(&self) -> bool {
        !self.ended.load(Ordering::Acquire)
    }

    /// An abandoned pending flight left in the table for the older flights
    /// it kept, some still loading: writes must go on reaching them, and the
    /// next caller must wait for them.
    fn holds_older(&self) -> bool {
        self.older().any(|f| f.is_loading())
    }

    fn is_started(&self) -> bool {
        self.epoch.load(Ordering::Acquire) != PENDING
    }

    /// Whether a caller that saw tag epoch `epoch` may take this flight's
    /// outcome: it is still loading, and either pending or started at or
    /// after `epoch` and not stale.
    fn joinable(&self, epoch: u64) -> bool {
        self.is_loading() && !self.is_stale() && self.epoch.load(Ordering::Acquire) >= epoch
    }

    /// A write of the key happened: a started load may have read what it
    /// replaced; a pending one has read nothing yet, but the older loads it
    /// waits for have.
    fn written(&self) {
        if self.is_started() {
            self.mark_stale();
        } else {
            self.supersede_older();
        }
    }

    /// Waits for the outcome without blocking the thread.
    pub(crate) async fn wait_async(&self) -> Outcome<V>
    where
        V: Clone,
    {
        let outcome = WaitAsync {
            flight: self,
            id: None,
            take: true,
        };
        outcome.await.expect("asked for the outcome")
    }

    /// [`wait_ended`](Self::wait_ended) without blocking the thread.
    pub(crate) async fn wait_ended_async(&self)
    where
        V: Clone,
    {
        let ended = WaitAsync {
            flight: self,
            id: None,
            take: false,
        };
        ended.await;
    }

    fn finish(&self, outcome: Outcome<V>) {
        let outcome = State::Done(Arc::new(outcome));
        let previous = std::mem::replace(&mut *self.state.lock(), outcome);
        self.done.notify_all();
        if let State::Loading(waiters) = previous {
            crate::sync::wake_all(waiters.slots.into_iter().flatten());
        }
    }
}

/// [`Flight::wait_async`]'s future: registered among the flight's waiters
/// from its first poll until it completes or is dropped.
struct WaitAsync<'a, K, V> {
    flight: &'a Flight<K, V>,
    /// Its slot among the flight's waiters, once registered.
    id: Option<usize>,
    /// Whether to clone the outcome (`Some`), or only to wait for the end.
    take: bool,
}

impl<K, V: Clone> std::future::Future for WaitAsync<'_, K, V> {
    type Output = Option<Outcome<V>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Outcome<V>>> {
        self.flight.check_not_leading(false);
        let mut state = self.flight.state.lock();
        let waiters = match &mut *state {
            State::Done(outcome) => {
                let outcome = self.take.then(|| outcome.clone());
                drop(state);
                // `finish` took the waiters: nothing to deregister.
                self.id = None;
                return Poll::Ready(outcome.map(|outcome| Outcome::clone(&outcome)));
            }
            State::Loading(waiters) => waiters,
        };
        match self
            .id
            .and_then(|id| waiters.slots.get_mut(id).and_then(Option::as_mut))
        {
            Some(waker) => {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
            }
            None => {
                let id = waiters.add(cx.waker().clone());
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
            waiters.remove(id);
        }
    }
}

/// The room a table of flights keeps however few are in flight; past it,
/// [`trim`] gives back what a burst of loads took.
const TRIM_ABOVE: usize = 256;

/// Shrinks `table` once under an eighth of its room is in use (and the room
/// is past [`TRIM_ABOVE`]), to about twice what is: a burst of 200k pending
/// loads otherwise left 2.3 MB held by a shard's table after they ended,
/// until the cache was dropped. After a shrink the room is at most four
/// times the flights, so the next removals do not shrink it again.
fn trim<K, V>(table: &mut HashTable<Arc<Flight<K, V>>>) {
    if table.capacity() > TRIM_ABOVE && table.len() * 8 < table.capacity() {
        table.shrink_to((table.len() * 2).max(TRIM_ABOVE / 4), |f| f.hash);
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
    /// tag epoch now: a flight that started before a later one may carry a
    /// value of an invalidated tag, and a stale one a value a write replaced,
    /// so such a flight is left to its waiters and a new one takes its place,
    /// keeping it (and the older flights it kept, those still loading).
    pub(crate) fn join(&self, hash: u64, key: &K, sync: bool, epoch: u64) -> Role<'_, K, V> {
        let table = self.table.lock();
        if let Some(found) = table.find(hash, |f| f.key == *key) {
            if found.joinable(epoch) {
                return Role::Waiter(found.clone());
            }
        }
        Role::Leader(self.replace(table, hash, key, sync, false))
    }

    /// Joins or starts a flight for an explicit refresh of `key`, which must
    /// take a value loaded after it began. It joins only another refresh's
    /// flight still waiting to start (and joinable at `epoch`); any other
    /// flight in the table, running or pending, is replaced and kept as
    /// older (with the older flights it kept, those still loading), so that
    /// this one loads once they have ended: a pending flight of a `get`
    /// may yet take a value cached before the refresh instead of loading.
    pub(crate) fn lead(&self, hash: u64, key: &K, sync: bool, epoch: u64) -> Role<'_, K, V> {
        let table = self.table.lock();
        if let Some(found) = table.find(hash, |f| f.key == *key) {
            if found.refresh && !found.is_started() && found.joinable(epoch) {
                return Role::Waiter(found.clone());
            }
        }
        Role::Leader(self.replace(table, hash, key, sync, true))
    }

    /// [`join`](Self::join)'s leader: a new flight in the table, in place of
    /// the key's flight there, if any.
    fn replace(
        &self,
        mut table: crate::sync::MutexGuard<'_, HashTable<Arc<Flight<K, V>>>>,
        hash: u64,
        key: &K,
        sync: bool,
        refresh: bool,
    ) -> Leader<'_, K, V> {
        // Before the table changes: a `Clone` that panics leaves it as it was.
        let key = key.clone();
        let mut older = Vec::new();
        if let Ok(found) = table.find_entry(hash, |f| f.key == key) {
            // `active` stays as it is: a write that finds it zero skips the
            // table, and the flights replaced must stay within its reach.
            let (replaced, _) = found.remove();
            older.extend(
                replaced
                    .older()
                    .filter(|f| f.is_loading())
                    .map(|f| Arc::downgrade(&f)),
            );
            if replaced.is_loading() {
                older.push(Arc::downgrade(&replaced));
            }
        } else {
            self.active.fetch_add(1, Ordering::SeqCst);
        }
        let flight = Arc::new(Flight {
            key,
            hash,
            leader: sync.then(|| std::thread::current().id()),
            state: Mutex::new(State::Loading(Waiters::default())),
            done: Condvar::new(),
            stale: AtomicBool::new(false),
            epoch: AtomicU64::new(PENDING),
            ended: AtomicBool::new(false),
            refresh,
            older,
        });
        table.insert_unique(hash, flight.clone(), |f| f.hash);
        Leader {
            flights: self,
            flight,
            finished: false,
            left: false,
        }
    }
}

impl<K, V> Flights<K, V> {
    /// Whether any load is in flight in this table.
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst) != 0
    }

    /// Whether a load of `key` is running (joinable or not).
    pub(crate) fn loading(&self, hash: u64, key: &K) -> bool
    where
        K: Eq,
    {
        self.is_active()
            && self
                .table
                .lock()
                .find(hash, |f| f.key == *key)
                .is_some_and(|f| f.is_loading())
    }

    /// A write of `key` happened: its flight, if started, goes stale (its
    /// leader and waiters still get its outcome, but it is not cached, and a
    /// caller arriving from now on replaces it and waits for it to end); if
    /// pending, the older flights it waits for go stale. It stays in the
    /// table either way, unless it ended (an abandoned flight left for older
    /// ones).
    #[inline]
    pub(crate) fn invalidate<Q>(&self, hash: u64, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        // Inline, so that a write with no load in flight (nearly all of
        // them) pays one load, not a call.
        if self.active.load(Ordering::SeqCst) != 0 {
            self.invalidate_flying(hash, key);
        }
    }

    #[cold]
    #[inline(never)]
    fn invalidate_flying<Q>(&self, hash: u64, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let mut table = self.table.lock();
        if let Ok(found) = table.find_entry(hash, |f| f.key.borrow() == key) {
            let flight = found.get();
            flight.written();
            if !flight.is_loading() && !flight.holds_older() {
                // An abandoned flight left for older ones that have ended.
                found.remove();
                self.active.fetch_sub(1, Ordering::SeqCst);
                trim(&mut table);
            }
        }
    }

    /// [`invalidate`](Self::invalidate) for every key (`invalidate_all`).
    pub(crate) fn invalidate_all(&self) {
        if self.active.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut table = self.table.lock();
        table.retain(|flight| {
            flight.written();
            let keep = flight.is_loading() || flight.holds_older();
            if !keep {
                self.active.fetch_sub(1, Ordering::SeqCst);
            }
            keep
        });
        trim(&mut table);
    }
}

impl<K, V> Flights<K, V> {
    /// Marks `flight` ended and takes it out of the table unless a newer
    /// flight replaced it. An abandoned flight that never started stays while
    /// older flights it kept still load: the next caller replaces it and
    /// waits for them, and writes reach them through it meanwhile.
    fn remove_flight(&self, flight: &Arc<Flight<K, V>>) {
        let mut table = self.table.lock();
        flight.ended.store(true, Ordering::Release);
        if let Ok(entry) = table.find_entry(flight.hash, |f| Arc::ptr_eq(f, flight)) {
            if !flight.is_started() && flight.holds_older() {
                return;
            }
            // Out of the table, no write could reach the older flights any
            // more: stale before `active` may drop to zero (a write that
            // then skips the table must not miss them). A flight that
            // started waited for them to end: this matters only for one
            // abandoned while it waited.
            flight.supersede_older();
            entry.remove();
            self.active.fetch_sub(1, Ordering::SeqCst);
            trim(&mut table);
        } else {
            flight.supersede_older();
            // A newer flight abandoned while it waited for this one stayed in
            // the table for it: it goes once no flight it kept still loads.
            let me = Arc::as_ptr(flight);
            if let Ok(entry) = table.find_entry(flight.hash, |f| {
                !f.is_loading() && f.older.iter().any(|w| std::ptr::eq(w.as_ptr(), me))
            }) {
                if !entry.get().holds_older() {
                    entry.remove();
                    self.active.fetch_sub(1, Ordering::SeqCst);
                    trim(&mut table);
                }
            }
        }
    }

    /// Starts `leader`'s load: its flight takes the cache's tag epoch now
    /// (read by `tag_epoch`), which it returns. Under the table's lock, so a
    /// write either comes before (and the load, which starts by looking in
    /// the cache, sees it) or marks the started flight stale.
    fn start(&self, flight: &Flight<K, V>, tag_epoch: impl FnOnce() -> u64) -> u64 {
        let _table = self.table.lock();
        let epoch = tag_epoch();
        flight.epoch.store(epoch, Ordering::Release);
        epoch
    }
}

/// The leader's handle on its flight. Dropping it without [`Leader::finish`]
/// (a panic in the loader) abandons the flight, so that a waiter takes the
/// load over.
pub(crate) struct Leader<'a, K, V> {
    flights: &'a Flights<K, V>,
    flight: Arc<Flight<K, V>>,
    finished: bool,
    /// Out of the table already (see [`leave`](Self::leave)).
    left: bool,
}

impl<K, V> Leader<'_, K, V> {
    pub(crate) fn flight(&self) -> &Flight<K, V> {
        &self.flight
    }

    /// Waits for the older loads of the key this flight replaced to end, then
    /// starts this one at the cache's tag epoch now (read by `tag_epoch`),
    /// which it returns. The caller then looks in the cache before it loads: an older
    /// load may have cached a value this caller may take.
    ///
    /// Panics if this thread leads one of the older flights (a loader asking
    /// for its own key after a tag invalidation: it would wait for itself).
    pub(crate) fn start(&self, tag_epoch: impl FnOnce() -> u64) -> u64
    where
        V: Clone,
    {
        for older in self.flight.older() {
            older.wait_ended();
        }
        self.flights.start(&self.flight, tag_epoch)
    }

    /// The older loads of the key this flight replaced that still run:
    /// [`start`](Self::start) would wait for them. A caller leading several
    /// flights at once abandons one that has any (dropping it) and waits
    /// for them holding none, so that two such callers never wait for each
    /// other.
    pub(crate) fn waits_for(&self) -> Vec<Arc<Flight<K, V>>> {
        self.flight.older().filter(|f| f.is_loading()).collect()
    }

    /// [`start`](Self::start) for a flight with no older load still
    /// running ([`waits_for`](Self::waits_for) empty): nothing to wait for.
    pub(crate) fn start_now(&self, tag_epoch: impl FnOnce() -> u64) -> u64 {
        debug_assert!(self.waits_for().is_empty());
        self.flights.start(&self.flight, tag_epoch)
    }

    /// [`start`](Self::start) without blocking the thread.
    pub(crate) async fn start_async(&self, tag_epoch: impl FnOnce() -> u64) -> u64
    where
        V: Clone,
    {
        for older in self.flight.older() {
            older.wait_ended_async().await;
        }
        self.flights.start(&self.flight, tag_epoch)
    }

    /// Takes the flight out of the table now, before it ends: called under
    /// the shard's read lock by a leader that found the key cached, so that
    /// no caller arriving after a write or tag sweep of that entry (which
    /// waits for the lock) joins the flight and gets the entry it removed.
    pub(crate) fn leave(&mut self) {
        if !self.left {
            self.left = true;
            self.flights.remove_flight(&self.flight);
        }
    }

    /// Ends the flight: it leaves the table (later callers start afresh or
    /// hit the cache), then every waiter gets `outcome`.
    pub(crate) fn finish(mut self, outcome: Outcome<V>) {
        self.finished = true;
        self.leave();
        self.flight.finish(outcome);
    }
}

impl<K, V> Drop for Leader<'_, K, V> {
    fn drop(&mut self) {
        if !self.finished {
            self.leave();
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
    /// Loads that replace a cached entry (counted under `loads` too).
    pub(crate) refreshes: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    type Table = Flights<u8, u32>;

    /// Joins key 1 having seen tag epoch `epoch`, expecting to lead, and
    /// starts the load at `epoch` (no older flight may still be loading).
    fn lead(table: &Table, epoch: u64) -> Leader<'_, u8, u32> {
        let leader = pending(table, epoch);
        assert_eq!(leader.start(|| epoch), epoch);
        leader
    }

    /// Joins key 1 expecting to lead, without starting.
    fn pending(table: &Table, epoch: u64) -> Leader<'_, u8, u32> {
        match table.join(1, &1, false, epoch) {
            Role::Leader(leader) => leader,
            Role::Waiter(_) => panic!("expected to lead"),
        }
    }

    fn joins(table: &Table, epoch: u64) -> bool {
        matches!(table.join(1, &1, false, epoch), Role::Waiter(_))
    }

    fn active(table: &Table) -> usize {
        table.active.load(Ordering::SeqCst)
    }

    /// Waiters leaving give their slots to the next ones, a slot emptied
    /// twice is freed once, and only the waiters still there are woken.
    #[test]
    fn waiters_reuse_the_slots_of_those_that_left() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = || Waker::from(woken.clone());
        let mut waiters = Waiters::default();
        let ids: Vec<usize> = (0..1_000).map(|_| waiters.add(waker())).collect();
        assert_eq!(ids, (0..1_000).collect::<Vec<_>>());
        for &id in ids.iter().step_by(2) {
            waiters.remove(id);
            waiters.remove(id);
        }
        assert_eq!(
            waiters.free.len(),
            500,
            "a slot emptied twice was freed twice"
        );
        let again: Vec<usize> = (0..500).map(|_| waiters.add(waker())).collect();
        assert!(again.iter().all(|id| id % 2 == 0), "{again:?}");
        assert_eq!(waiters.slots.len(), 1_000, "the slots grew past the peak");
        for id in again.into_iter().take(100) {
            waiters.remove(id);
        }
        crate::sync::wake_all(waiters.slots.into_iter().flatten());
        assert_eq!(woken.0.load(Ordering::SeqCst), 900);
    }

    #[test]
    fn a_burst_of_flights_gives_its_room_back_as_they_end() {
        let table = Flights::<u16, u32>::default();
        let room = || table.table.lock().capacity();
        let leaders: Vec<_> = (0..10_000u16)
            .map(|k| match table.join(u64::from(k) << 8, &k, false, 0) {
                Role::Leader(leader) => leader,
                Role::Waiter(_) => panic!("expected to lead"),
            })
            .collect();
        let peak = room();
        assert!(peak >= 10_000, "{peak}");
        for (i, leader) in leaders.into_iter().enumerate() {
            assert_eq!(leader.start(|| 0), 0);
            leader.finish(Outcome::Loaded(1));
            // Never below what is still in flight, nor above the peak.
            assert!((10_000 - i - 1..=peak).contains(&room()), "{i}: {}", room());
        }
        assert_eq!(table.active.load(Ordering::SeqCst), 0);
        assert!(room() <= TRIM_ABOVE, "{} of {peak} kept", room());
    }

    #[test]
    fn a_write_during_a_load_makes_later_callers_lead_after_it() {
        let table = Table::default();
        let early = lead(&table, 0);
        assert!(joins(&table, 0));
        table.invalidate(1, &1);
        assert!(early.flight().is_stale(), "its value is not cached");
        // A caller after the write leads a flight of its own, which waits
        // for the early one: it keeps it.
        let late = pending(&table, 0);
        assert!(!late.flight().is_stale());
        assert_eq!(late.flight.older.len(), 1);
        assert!(std::ptr::eq(late.flight.older[0].as_ptr(), &*early.flight));
        assert_eq!(active(&table), 1);
        // Anyone may join the pending flight, whatever tag epoch they saw.
        assert!(joins(&table, 7));
        early.finish(Outcome::Loaded(1));
        assert_eq!(late.start(|| 0), 0);
        assert!(joins(&table, 0));
        late.finish(Outcome::Loaded(2));
        assert_eq!(active(&table), 0);
    }

    #[test]
    fn a_write_before_a_pending_flight_starts_leaves_it_fresh() {
        let table = Table::default();
        let early = lead(&table, 0);
        table.invalidate(1, &1);
        let late = pending(&table, 0);
        // A second write while `late` waits: its load has read nothing yet,
        // so it stays fresh; the early one is stale already.
        table.invalidate(1, &1);
        assert!(!late.flight().is_stale());
        early.finish(Outcome::Loaded(1));
        late.start(|| 0);
        table.invalidate(1, &1);
        assert!(late.flight().is_stale(), "started, it is stale now");
        late.finish(Outcome::Loaded(2));
        assert_eq!(active(&table), 0);
    }

    #[test]
    fn invalidating_all_reaches_every_flight() {
        let table = Table::default();
        let a = lead(&table, 0);
        let b = match table.join(2, &2, false, 0) {
            Role::Leader(leader) => leader,
            Role::Waiter(_) => panic!("expected to lead"),
        };
        b.start(|| 0);
        table.invalidate_all();
        assert!(a.flight().is_stale() && b.flight().is_stale());
        // Both stay until they end, so that later callers wait for them.
        assert_eq!(active(&table), 2);
        let c = pending(&table, 0);
        assert_eq!(c.flight.older.len(), 1);
        drop((a, b));
        assert_eq!(active(&table), 1);
        drop(c);
        assert_eq!(active(&table), 0);
    }

    #[test]
    fn a_caller_after_a_tag_invalidation_leads_a_flight_of_its_own() {
        let table = Table::default();
        let early = lead(&table, 3);
        assert!(joins(&table, 3));
        let late = pending(&table, 4);
        // The late flight keeps the early one within reach of writes.
        assert!(!early.flight().is_stale());
        assert!(!late.flight().is_stale());
        assert_eq!(active(&table), 1);
        early.finish(Outcome::Loaded(1));
        assert_eq!(late.start(|| 4), 4);
        assert!(joins(&table, 4));
        late.finish(Outcome::Loaded(2));
        assert_eq!(active(&table), 0);
    }

    #[test]
    fn a_write_reaches_the_flights_a_newer_one_replaced() {
        let table = Table::default();
        let first = lead(&table, 1);
        let second = pending(&table, 2);
        assert!(joins(&table, 3), "a pending flight is joined");
        table.invalidate(1, &1);
        assert!(first.flight().is_stale());
        assert!(!second.flight().is_stale());
        assert_eq!(active(&table), 1);
        first.finish(Outcome::Loaded(1));
        second.finish(Outcome::Loaded(2));
        assert_eq!(active(&table), 0);
    }

    #[test]
    fn a_newer_flight_keeps_only_the_older_ones_still_loading() {
        let table = Table::default();
        let first = lead(&table, 1);
        // `second` starts without waiting for `first`, only so that a third
        // flight can replace it while both load.
        let second = pending(&table, 2);
        table.start(&second.flight, || 2);
        first.finish(Outcome::Loaded(1));
        let third = pending(&table, 3);
        assert_eq!(third.flight.older.len(), 1);
        assert!(std::ptr::eq(
            third.flight.older[0].as_ptr(),
            &*second.flight
        ));
        // The newest abandoned before it started, with `second` still
        // loading: it stays in the table so that writes reach `second`.
        drop(third);
        assert_eq!(active(&table), 1);
        table.invalidate(1, &1);
        assert!(second.flight().is_stale());
        // It stays while `second` loads, so that the next caller waits for it.
        assert_eq!(active(&table), 1);
        second.finish(Outcome::Loaded(2));
        assert_eq!(
            active(&table),
            0,
            "`second` ending cleared the abandoned flight"
        );
    }

    #[test]
    fn an_abandoned_flight_left_for_older_ones_is_replaced_by_the_next_caller() {
        let table = Table::default();
        let first = lead(&table, 1);
        drop(pending(&table, 2));
        assert_eq!(active(&table), 1);
        let next = pending(&table, 2);
        assert_eq!(next.flight.older.len(), 1);
        assert!(std::ptr::eq(next.flight.older[0].as_ptr(), &*first.flight));
        assert!(!first.flight().is_stale());
        first.finish(Outcome::Loaded(1));
        next.start(|| 2);
        next.finish(Outcome::Loaded(2));
        assert_eq!(active(&table), 0);
    }

    #[cfg(not(larder_loom))]
    #[test]
    fn a_panicking_waker_leaves_no_other_waiter_unwoken() {
        use crate::sync::tests::waker;
        use std::future::Future;
        use std::task::Context;
        let table = Table::default();
        let leader = lead(&table, 0);
        let mut waiting: Vec<_> = [false, true, false]
            .into_iter()
            .map(|panics| {
                let Role::Waiter(flight) = table.join(1, &1, false, 0) else {
                    panic!("expected to wait");
                };
                let (count, waker) = waker(panics);
                let future = Box::pin(async move { flight.wait_async().await });
                (future, count, waker)
            })
            .collect();
        for (future, _, waker) in &mut waiting {
            let polled = future.as_mut().poll(&mut Context::from_waker(waker));
            assert!(polled.is_pending(), "the load has not ended");
        }
        let raised = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            leader.finish(Outcome::Loaded(5));
        }));
        assert!(raised.is_err(), "the waker's panic reaches the leader");
        for (mut future, count, waker) in waiting {
            assert_eq!(count.wakes(), 1, "every waiter is woken");
            let polled = future.as_mut().poll(&mut Context::from_waker(&waker));
            assert!(matches!(polled, Poll::Ready(Outcome::Loaded(5))));
        }
        assert_eq!(active(&table), 0);
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
            Role::Leader(leader) => {
                leader.start(|| 0);
                match lead() {
                    Some(outcome) => {
                        leader.finish(outcome.clone());
                        outcome
                    }
                    // The leader goes away without finishing (a panic, a cancelled task).
                    None => {
                        drop(leader);
                        Outcome::Abandoned
                    }
                }
            }
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
    fn after_a_write_one_loader_runs_at_a_time() {
        loom::model(|| {
            let table = LoomArc::new(Table::default());
            let running = LoomArc::new(AtomicBool::new(false));
            let load = |running: &AtomicBool, v: u32| {
                assert!(!running.swap(true, Ordering::SeqCst), "two loaders at once");
                thread::yield_now();
                running.store(false, Ordering::SeqCst);
                Some(Outcome::Loaded(v))
            };
            let (t, r) = (table.clone(), running.clone());
            let a = thread::spawn(move || call(&t, || load(&r, 1)));
            // The write may come before, during or after `a`'s load; a load
            // it finds running is stale, and `b` then waits for it to end.
            table.invalidate(1, &1);
            let b = call(&table, || load(&running, 2));
            assert!(value(&a.join().unwrap()).is_some());
            assert!(value(&b).is_some());
            assert_eq!(table.active.load(Ordering::SeqCst), 0);
        });
    }

    #[test]
    fn a_write_after_an_abandoned_waiting_flight_keeps_one_loader_at_a_time() {
        loom::model(|| {
            let table = LoomArc::new(Table::default());
            let running = LoomArc::new(AtomicBool::new(false));
            let load = |running: &AtomicBool, v: u32| {
                assert!(!running.swap(true, Ordering::SeqCst), "two loaders at once");
                thread::yield_now();
                running.store(false, Ordering::SeqCst);
                Some(Outcome::Loaded(v))
            };
            let (t, r) = (table.clone(), running.clone());
            let a = thread::spawn(move || loop {
                // It may have joined the flight abandoned below.
                match call(&t, || load(&r, 1)) {
                    Outcome::Abandoned => continue,
                    o => return o,
                }
            });
            table.invalidate(1, &1);
            // A caller after the write, cancelled before it starts (while
            // it would wait for `a`).
            if let Role::Leader(leader) = table.join(1, &1, false, 0) {
                drop(leader);
            }
            table.invalidate(1, &1);
            let b = call(&table, || load(&running, 2));
            assert!(value(&a.join().unwrap()).is_some());
            assert!(value(&b).is_some());
            assert_eq!(table.active.load(Ordering::SeqCst), 0);
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
