//! Bulk loading: the values of many keys at once, the missing ones loaded
//! by one call of a loader that takes them all (one database query for a
//! page of ids, not one per id), each key still in a flight of its own, so
//! that single-key callers and other bulk callers share its load.
//!
//! A bulk caller leads the flights of the keys no one is loading and waits
//! for the others' only after its own have ended: two bulk callers whose
//! keys overlap then never wait for each other. A key whose flight must
//! first wait for an older load of it (one a write made stale) is left for
//! that load to end, holding nothing meanwhile, and loaded in a later call
//! of the loader.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use hashbrown::HashTable;

use super::{accept, Found, LoadTimer, Mode, Refresh};
use crate::cache::{Cache, HeardIfUnwinding};
use crate::expiry::EntryOptions;
use crate::loader::{Flight, Leader, Outcome, Role};
use crate::store::Removed;
use crate::sync::Ordering;
use crate::write::CacheAside;

impl<K, V, S> Cache<K, V, S, CacheAside>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// The values under `keys`, in their order, with every key missing
    /// from the cache loaded by one call of `load`: it gets those keys
    /// (each once, however often it is in `keys`) and returns what it found
    /// for them, in any order, as `(key, value)` pairs, each cached as
    /// [`insert`](Self::insert) caches one, or `(key, value, EntryOptions)`
    /// triples, each cached as [`insert_with`](Self::insert_with) caches
    /// one (see [`LoadedEntry`]). A key it returns no
    /// value for is `None` and not cached. Answers for keys it was not
    /// asked for are dropped: only the keys asked for are guarded against
    /// writes racing the load.
    ///
    /// Each key is loaded in a flight of its own, as by
    /// [`get_or_load`](Self::get_or_load): a key already being loaded by
    /// another caller (single-key or bulk) is not asked of `load` but waited
    /// for, and callers of a key this call loads wait for this call. A key
    /// written, removed or invalidated while `load` runs gets the loaded
    /// value but keeps the newer state in the cache. This call waits for
    /// other callers' loads only once its own have ended, so bulk calls
    /// whose keys overlap never wait for each other.
    ///
    /// `load` is called at most once for the keys missing at the lookup,
    /// and never with no keys. It is called again, for those keys alone,
    /// only when a load this call waited for ended without a value it can
    /// take (the other caller's loader panicked or failed with another
    /// error type), or when a key's earlier load, made stale by a write,
    /// was still running.
    ///
    /// Every key given counts as a hit or a miss (one given twice, twice),
    /// and every key asked of
    /// `load` as a load in [`stats`](Self::stats) (its time counted once per
    /// call). In a cache built with
    /// [`refresh_after`](crate::CacheBuilder::refresh_after), keys due for a
    /// refresh are asked of `load` too, their cached values returned to
    /// other callers meanwhile; one `load` returns no value for is removed.
    ///
    /// # Panics
    ///
    /// - If `load` asks the cache for one of the keys it is loading.
    /// - If `load` panics: the panic reaches this caller, and the callers
    ///   waiting on its keys load them themselves.
    /// - As [`get_or_load`](Self::get_or_load) for the rest.
    ///
    /// ```
    /// use std::collections::HashMap;
    ///
    /// let db: HashMap<u32, String> = (0..100).map(|id| (id, format!("user {id}"))).collect();
    /// let cache: larder::Cache<u32, String> =
    ///     larder::Cache::builder().max_capacity(1_000).build().unwrap();
    /// cache.insert(1, "cached".to_string());
    ///
    /// let mut queries = Vec::new();
    /// let users = cache.get_or_load_all([1, 2, 500, 2], |ids| {
    ///     queries.push(ids.to_vec()); // one query: `WHERE id IN (...)`
    ///     ids.iter().filter_map(|id| Some((*id, db.get(id)?.clone()))).collect::<Vec<_>>()
    /// });
    /// assert_eq!(queries, [vec![2, 500]]);
    /// assert_eq!(users[0].as_deref(), Some("cached"));
    /// assert_eq!(users[1].as_deref(), Some("user 2"));
    /// assert_eq!(users[2], None); // not found, and not cached
    /// assert_eq!(users[3].as_deref(), Some("user 2"));
    /// assert_eq!(cache.get(&2).as_deref(), Some("user 2"));
    /// ```
    pub fn get_or_load_all<L>(
        &self,
        keys: impl IntoIterator<Item = K>,
        mut load: impl FnMut(&[K]) -> L,
    ) -> Vec<Option<V>>
    where
        K: Clone,
        L: IntoIterator<Item: LoadedEntry<K, V>>,
    {
        let loaded = self.load_all(keys, Mode::Optional, |keys| {
            Ok::<_, std::convert::Infallible>(load(keys))
        });
        match loaded {
            Ok(values) => values,
            Err(e) => match *e {},
        }
    }

    /// [`get_or_load_all`](Self::get_or_load_all) with a loader that may
    /// fail. Its error reaches every caller waiting on the keys it was
    /// loading (as the same `Arc`, for callers of the same error type) and
    /// is not cached. Keys due for a refresh keep their cached values when
    /// the loader fails: a call that asked for nothing else returns them.
    ///
    /// # Errors
    ///
    /// The loader's error, shared, or the error of another caller's load
    /// of one of the keys that this call waited for (of the same type).
    ///
    /// # Panics
    ///
    /// As [`get_or_load_all`](Self::get_or_load_all).
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> =
    ///     larder::Cache::builder().max_capacity(100).build().unwrap();
    /// let down = cache.try_get_or_load_all([1, 2], |_| Err::<Vec<(u32, u32)>, _>("db down"));
    /// assert_eq!(*down.unwrap_err(), "db down");
    /// let up = cache.try_get_or_load_all([1, 2], |ids| {
    ///     Ok::<_, &str>(ids.iter().map(|&id| (id, id * 10)).collect::<Vec<_>>())
    /// });
    /// assert_eq!(up, Ok(vec![Some(10), Some(20)]));
    /// ```
    pub fn try_get_or_load_all<L, E>(
        &self,
        keys: impl IntoIterator<Item = K>,
        load: impl FnMut(&[K]) -> Result<L, E>,
    ) -> Result<Vec<Option<V>>, Arc<E>>
    where
        K: Clone,
        L: IntoIterator<Item: LoadedEntry<K, V>>,
        E: Send + Sync + 'static,
    {
        self.load_all(keys, Mode::Store, load)
    }

    /// [`get_or_load_all`](Self::get_or_load_all) for async code: `load`
    /// gets the missing keys and returns a future of what it found, and
    /// waiting does not block the thread. Dropping the returned future
    /// while its loader runs (a cancelled task) abandons the keys' loads,
    /// and callers waiting on them load them themselves.
    ///
    /// # Panics
    ///
    /// As [`get_or_load_all`](Self::get_or_load_all).
    ///
    /// ```
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let cache: larder::Cache<u32, u32> =
    ///     larder::Cache::builder().max_capacity(100).build().unwrap();
    /// let values = cache
    ///     .get_or_load_all_async([1, 2, 3], |ids| async move {
    ///         ids.into_iter().filter(|id| id % 2 == 1).map(|id| (id, id * 10)).collect::<Vec<_>>()
    ///     })
    ///     .await;
    /// assert_eq!(values, [Some(10), None, Some(30)]);
    /// # });
    /// ```
    pub async fn get_or_load_all_async<F, L>(
        &self,
        keys: impl IntoIterator<Item = K>,
        mut load: impl FnMut(Vec<K>) -> F,
    ) -> Vec<Option<V>>
    where
        K: Clone,
        F: Future<Output = L>,
        L: IntoIterator<Item: LoadedEntry<K, V>>,
    {
        let loaded = self
            .load_all_async(keys, Mode::Optional, |keys| {
                let found = load(keys);
                async move { Ok::<_, std::convert::Infallible>(found.await) }
            })
            .await;
        match loaded {
            Ok(values) => values,
            Err(e) => match *e {},
        }
    }

    /// [`try_get_or_load_all`](Self::try_get_or_load_all) for async code,
    /// as [`get_or_load_all_async`](Self::get_or_load_all_async).
    ///
    /// # Errors
    ///
    /// As [`try_get_or_load_all`](Self::try_get_or_load_all).
    ///
    /// # Panics
    ///
    /// As [`get_or_load_all`](Self::get_or_load_all).
    ///
    /// ```
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let cache: larder::Cache<u32, u32> =
    ///     larder::Cache::builder().max_capacity(100).build().unwrap();
    /// let values = cache
    ///     .try_get_or_load_all_async([4, 5], |ids| async move {
    ///         Ok::<_, &str>(ids.into_iter().map(|id| (id, id + 1)).collect::<Vec<_>>())
    ///     })
    ///     .await;
    /// assert_eq!(values, Ok(vec![Some(5), Some(6)]));
    /// # });
    /// ```
    pub async fn try_get_or_load_all_async<F, L, E>(
        &self,
        keys: impl IntoIterator<Item = K>,
        load: impl FnMut(Vec<K>) -> F,
    ) -> Result<Vec<Option<V>>, Arc<E>>
    where
        K: Clone,
        F: Future<Output = Result<L, E>>,
        L: IntoIterator<Item: LoadedEntry<K, V>>,
        E: Send + Sync + 'static,
    {
        self.load_all_async(keys, Mode::Store, load).await
    }
}

impl<K, V, S, W> Cache<K, V, S, W>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// The bulk calls' body (a store-backed cache's `get_all` too): look
    /// every key up, then load the misses in rounds until each has its
    /// answer. `mode` says what this call takes from another caller's load.
    pub(crate) fn load_all<L, E>(
        &self,
        keys: impl IntoIterator<Item = K>,
        mode: Mode,
        mut load: impl FnMut(&[K]) -> Result<L, E>,
    ) -> Result<Vec<Option<V>>, Arc<E>>
    where
        K: Clone,
        L: IntoIterator<Item: LoadedEntry<K, V>>,
        E: Send + Sync + 'static,
    {
        let mut call = self.look_up_all(keys);
        while !call.todo.is_empty() {
            let (mut batch, asked, waits) = self.next_round(&mut call, true);
            if !batch.is_empty() {
                let timer = LoadTimer::start_many(&self.inner.loads, asked.len() as u64);
                // A panic here drops `batch`, abandoning its flights and
                // leaving refreshed entries due again, and `timer`, booking
                // the loads as failed.
                let found = timer.run(|| load(&asked));
                timer.stop();
                self.land_all(&mut call, &mut batch, asked, found)?;
            }
            for (miss, wait) in waits {
                let outcome = match wait {
                    Wait::Older(older) => {
                        older.iter().for_each(|f| f.wait_ended());
                        None
                    }
                    Wait::Flight(flight) => Some(flight.wait()),
                };
                call.settle(miss, outcome, mode)?;
            }
        }
        Ok(call.finish())
    }

    /// [`load_all`](Self::load_all) without blocking the thread.
    pub(crate) async fn load_all_async<F, L, E>(
        &self,
        keys: impl IntoIterator<Item = K>,
        mode: Mode,
        mut load: impl FnMut(Vec<K>) -> F,
    ) -> Result<Vec<Option<V>>, Arc<E>>
    where
        K: Clone,
        F: Future<Output = Result<L, E>>,
        L: IntoIterator<Item: LoadedEntry<K, V>>,
        E: Send + Sync + 'static,
    {
        let mut call = self.look_up_all(keys);
        while !call.todo.is_empty() {
            let (mut batch, asked, waits) = self.next_round(&mut call, false);
            if !batch.is_empty() {
                let timer = LoadTimer::start_many(&self.inner.loads, asked.len() as u64);
                // As in `load_async`: each poll under `timer`, the loader
                // dropped with its flights marked as led here. The loader
                // is called in the first poll, marked too: one asking for
                // its own keys before it returns its future panics instead
                // of waiting for itself.
                let timer_ref = &timer;
                let load = &mut load;
                let polled = async move {
                    let found = timer_ref.run(|| load(asked.clone()));
                    let mut found = std::pin::pin!(found);
                    let found =
                        std::future::poll_fn(|cx| timer_ref.run(|| found.as_mut().poll(cx))).await;
                    (asked, found)
                };
                let flights: Vec<&Flight<K, V>> =
                    batch.iter().map(|led| led.leader().flight()).collect();
                let (asked, found) = crate::loader::lead(&flights, polled).await;
                drop(flights);
                timer.stop();
                self.land_all(&mut call, &mut batch, asked, found)?;
            }
            for (miss, wait) in waits {
                let outcome = match wait {
                    Wait::Older(older) => {
                        for f in older {
                            f.wait_ended_async().await;
                        }
                        None
                    }
                    Wait::Flight(flight) => Some(flight.wait_async().await),
                };
                call.settle(miss, outcome, mode)?;
            }
        }
        Ok(call.finish())
    }

    /// A round: its batch (the keys this call leads, started, not cached
    /// since: see [`start_all`](Self::start_all)), the batch's keys, and
    /// the round's waits (see [`join_all`](Self::join_all)).
    #[allow(clippy::type_complexity)]
    fn next_round(
        &self,
        call: &mut Call<K, V>,
        sync: bool,
    ) -> (
        Vec<Led<'_, K, V, S, W>>,
        Vec<K>,
        Vec<(Miss<K, V>, Wait<K, V>)>,
    )
    where
        K: Clone,
    {
        let (led, waits) = self.join_all(call, sync);
        let (batch, asked) = self.start_all(call, led);
        (batch, asked, waits)
    }

    /// Each key looked up, as `get_or_load` looks one up: the hits
    /// answered, the misses (and the entries due for a refresh) left to
    /// load, each distinct key once.
    fn look_up_all(&self, keys: impl IntoIterator<Item = K>) -> Call<K, V> {
        /// Up to this many misses, a key missed twice is found by a scan of
        /// their hashes; past it, through a table.
        const SCANNED: usize = 16;
        let keys = keys.into_iter();
        let mut call = Call {
            values: Vec::with_capacity(keys.size_hint().0),
            todo: Vec::new(),
            aliases: Vec::new(),
        };
        let mut seen: Option<HashTable<usize>> = None;
        for (i, key) in keys.enumerate() {
            let hash = self.hash(&key);
            let stale = match self.get_for_load_hashed(hash, &key) {
                Ok(v) => {
                    call.values.push(Some(v));
                    continue;
                }
                Err(stale) => stale,
            };
            call.values.push(None);
            let same = |miss: &Miss<K, V>| miss.hash == hash && miss.key == key;
            let first = match &seen {
                None => call.todo.iter().position(same),
                Some(seen) => seen.find(hash, |&j| same(&call.todo[j])).copied(),
            };
            if let Some(first) = first {
                call.aliases.push((i, call.todo[first].i));
                continue;
            }
            call.todo.push(Miss {
                i,
                hash,
                key,
                stale,
            });
            let todo = &call.todo;
            if let Some(seen) = &mut seen {
                seen.insert_unique(hash, todo.len() - 1, |&j| todo[j].hash);
            } else if todo.len() > SCANNED {
                let mut table = HashTable::with_capacity(todo.len() * 2);
                for (j, miss) in todo.iter().enumerate() {
                    table.insert_unique(miss.hash, j, |&j| todo[j].hash);
                }
                seen = Some(table);
            }
        }
        call
    }

    /// Joins each key's flight: the ones this call leads (without an older
    /// load of the key to wait for), and the waits, for another caller's
    /// load or for an older one (whose new flight is abandoned at once, so
    /// that the wait holds nothing). A key due for a refresh that another
    /// caller is loading takes its cached value.
    #[allow(clippy::type_complexity)]
    fn join_all(
        &self,
        call: &mut Call<K, V>,
        sync: bool,
    ) -> (
        Vec<(Miss<K, V>, Leader<'_, K, V>)>,
        Vec<(Miss<K, V>, Wait<K, V>)>,
    )
    where
        K: Clone,
    {
        let joined = self.inner.tag_epoch.load(Ordering::SeqCst);
        let mut led = Vec::new();
        let mut waits = Vec::new();
        for mut miss in std::mem::take(&mut call.todo) {
            let flights = &self.shard(miss.hash).flights;
            if miss.stale.is_some() && flights.loading(miss.hash, &miss.key) {
                call.values[miss.i] = miss.stale.take();
                continue;
            }
            match flights.join(miss.hash, &miss.key, sync, joined) {
                Role::Leader(leader) => {
                    let older = leader.waits_for();
                    if older.is_empty() {
                        led.push((miss, leader));
                    } else {
                        drop(leader);
                        waits.push((miss, Wait::Older(older)));
                    }
                }
                Role::Waiter(_) if miss.stale.is_some() => call.values[miss.i] = miss.stale,
                Role::Waiter(flight) => waits.push((miss, Wait::Flight(flight))),
            }
        }
        (led, waits)
    }

    /// Starts the flights led (none has an older load to wait for: see
    /// [`join_all`](Self::join_all)) and looks each key up again: one
    /// cached since is taken, the rest are the batch to load, returned
    /// with their keys.
    #[allow(clippy::type_complexity)]
    fn start_all<'c>(
        &'c self,
        call: &mut Call<K, V>,
        led: Vec<(Miss<K, V>, Leader<'c, K, V>)>,
    ) -> (Vec<Led<'c, K, V, S, W>>, Vec<K>)
    where
        K: Clone,
    {
        let mut batch = Vec::with_capacity(led.len());
        let mut asked = Vec::with_capacity(led.len());
        for (miss, mut leader) in led {
            let epoch = leader.start_now(|| self.inner.tag_epoch.load(Ordering::SeqCst));
            let refreshing = miss.stale.is_some();
            let refresh = match self.find_leaving(&miss.key, &mut leader, refreshing) {
                Found::Fresh(v) => {
                    leader.finish(Outcome::Loaded(v.clone()));
                    call.values[miss.i] = Some(v);
                    continue;
                }
                Found::Due(refresh) => Some(refresh),
                Found::Nothing => None,
            };
            batch.push(Led {
                cache: self,
                i: miss.i,
                hash: miss.hash,
                leader: Some(leader),
                epoch,
                refresh,
            });
            asked.push(miss.key);
        }
        (batch, asked)
    }

    /// A batch's loader returned: each key asked lands with what it found
    /// for it (nothing, if it found nothing), or, should the loader have
    /// failed, each flight fails with its error and each refreshed key
    /// keeps its cached value. The error is returned unless every key asked
    /// was such a refresh.
    fn land_all<L, E>(
        &self,
        call: &mut Call<K, V>,
        batch: &mut Vec<Led<'_, K, V, S, W>>,
        asked: Vec<K>,
        found: Result<L, E>,
    ) -> Result<(), Arc<E>>
    where
        L: IntoIterator<Item: LoadedEntry<K, V>>,
        E: Send + Sync + 'static,
    {
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                let failed = batch.len() as u64;
                self.inner
                    .loads
                    .failures
                    .fetch_add(failed, Ordering::Relaxed);
                let e = Arc::new(e);
                let mut refreshes_only = true;
                for mut led in batch.drain(..) {
                    let leader = led.leader.take().expect("led");
                    // The entry's time back before the flight ends (see
                    // `land`).
                    let refresh = led.refresh.take();
                    if let Some(refresh) = &refresh {
                        self.unstamp(refresh);
                    }
                    leader.finish(Outcome::Failed(e.clone()));
                    match refresh {
                        Some(refresh) => call.values[led.i] = Some(refresh.fallback),
                        None => refreshes_only = false,
                    }
                }
                return if refreshes_only { Ok(()) } else { Err(e) };
            }
        };
        let mut answers: Vec<Option<(V, EntryOptions)>> = Vec::with_capacity(asked.len());
        answers.resize_with(asked.len(), || None);
        let mut index = HashTable::<usize>::with_capacity(asked.len());
        for (j, led) in batch.iter().enumerate() {
            index.insert_unique(led.hash, j, |&k| batch[k].hash);
        }
        for entry in found {
            let (key, value, options) = entry.into_entry();
            let hash = self.hash(&key);
            if let Some(&j) = index.find(hash, |&j| asked[j] == key) {
                // The first answer for a key counts.
                answers[j].get_or_insert((value, options));
            }
        }
        // The listener hears what the landings removed once every flight of
        // the batch has ended: it may call back into the cache, for a key
        // landed later too. Should a write panic, the `Led`s not yet landed
        // are dropped with the drain (abandoned, their entries due again)
        // before this guard tells the listener.
        let mut removed = Removed::new();
        let heard = HeardIfUnwinding {
            cache: self,
            list: &mut removed,
        };
        for (mut led, (key, answer)) in batch.drain(..).zip(asked.into_iter().zip(answers)) {
            let leader = led.leader.take().expect("led");
            let refresh = led.refresh.take();
            let landed =
                self.land_into::<E>(key, leader, led.epoch, Ok(answer), refresh, heard.list);
            call.values[led.i] = landed.unwrap_or_else(|_| unreachable!("landed a value"));
        }
        std::mem::forget(heard);
        self.notify(removed);
        Ok(())
    }
}

/// What a bulk loader ([`Cache::get_or_load_all`] and its kin) answers for
/// a key: `(key, value)`, cached as [`insert`](Cache::insert) caches it, or
/// `(key, value, EntryOptions)`, as [`insert_with`](Cache::insert_with)
/// does (its own time-to-live and tags; an entry one of whose tags was
/// invalidated while the loader ran is returned but not cached). A type of
/// the caller's (a database row) may implement it too.
///
/// ```
/// use larder::{Cache, EntryOptions, LoadedEntry};
///
/// struct Row { id: u32, team: u32, name: String }
///
/// impl LoadedEntry<u32, String> for Row {
///     fn into_entry(self) -> (u32, String, EntryOptions) {
///         (self.id, self.name, EntryOptions::new().tags([format!("team:{}", self.team)]))
///     }
/// }
///
/// let cache: Cache<u32, String> = Cache::builder().max_capacity(100).build().unwrap();
/// let names = cache.get_or_load_all([1, 2], |ids| {
///     ids.iter().map(|&id| Row { id, team: id % 2, name: format!("user {id}") }).collect::<Vec<_>>()
/// });
/// assert_eq!(names[1].as_deref(), Some("user 2"));
/// cache.invalidate_tag("team:0");
/// assert_eq!(cache.get(&2), None);
/// assert_eq!(cache.get(&1).as_deref(), Some("user 1"));
/// ```
pub trait LoadedEntry<K, V> {
    /// The key, the value, and how to cache them.
    fn into_entry(self) -> (K, V, EntryOptions);
}

impl<K, V> LoadedEntry<K, V> for (K, V) {
    fn into_entry(self) -> (K, V, EntryOptions) {
        (self.0, self.1, EntryOptions::default())
    }
}

impl<K, V> LoadedEntry<K, V> for (K, V, EntryOptions) {
    fn into_entry(self) -> (K, V, EntryOptions) {
        self
    }
}

/// One bulk call's answers and the keys it has still to load.
struct Call<K, V> {
    /// The answer for each key given, so far.
    values: Vec<Option<V>>,
    /// The keys still to load, each once.
    todo: Vec<Miss<K, V>>,
    /// `(i, j)`: key `i` given was also key `j`, whose answer it takes.
    aliases: Vec<(usize, usize)>,
}

/// A key a bulk call has to load.
struct Miss<K, V> {
    /// Where it was given.
    i: usize,
    hash: u64,
    key: K,
    /// The cached value of an entry due for a refresh.
    stale: Option<V>,
}

impl<K, V: Clone> Call<K, V> {
    /// What a wait for `miss` brought: its answer, or (`None`, or an
    /// outcome this call cannot take) another round.
    fn settle<E: Send + Sync + 'static>(
        &mut self,
        miss: Miss<K, V>,
        outcome: Option<Outcome<V>>,
        mode: Mode,
    ) -> Result<(), Arc<E>> {
        match outcome.and_then(|outcome| accept::<V, E>(outcome, mode)) {
            Some(Ok(value)) => self.values[miss.i] = value,
            Some(Err(e)) => return Err(e),
            None => self.todo.push(Miss {
                stale: None,
                ..miss
            }),
        }
        Ok(())
    }

    /// The answers, one per key given.
    fn finish(mut self) -> Vec<Option<V>> {
        for &(i, j) in &self.aliases {
            self.values[i] = self.values[j].clone();
        }
        self.values
    }
}

/// What a bulk call waits for before a key's next round.
enum Wait<K, V> {
    /// Another caller's load of the key.
    Flight(Arc<Flight<K, V>>),
    /// Older loads of the key, made stale, still running.
    Older(Vec<Arc<Flight<K, V>>>),
}

/// A flight of a batch: dropped before it lands (the loader panicked or
/// was cancelled, or a write before it panicked), it leaves a refreshed
/// entry due again, then abandons the flight to its waiters.
struct Led<'c, K, V, S, W>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    cache: &'c Cache<K, V, S, W>,
    /// Where its key was given.
    i: usize,
    hash: u64,
    leader: Option<Leader<'c, K, V>>,
    epoch: u64,
    refresh: Option<Refresh<V>>,
}

impl<'c, K, V, S, W> Led<'c, K, V, S, W>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    fn leader(&self) -> &Leader<'c, K, V> {
        self.leader.as_ref().expect("led")
    }
}

impl<K, V, S, W> Drop for Led<'_, K, V, S, W>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    fn drop(&mut self) {
        if let Some(refresh) = self.refresh.take() {
            self.cache.unstamp(&refresh);
        }
    }
}
