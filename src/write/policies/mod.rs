//! `get`, `put`, `delete` and `flush` for each write policy: the same calls,
//! with the write landing where the policy says.

mod read_through;
mod write_behind;
mod write_through;

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::Op;
use crate::cache::Mode;
use crate::store::Removed;
use crate::{Cache, EntryOptions, RemovalCause};

/// Batches up to this many writes find their keys given twice by comparing
/// them pairwise rather than through a table.
const SMALL_BATCH: usize = 32;

/// What `get` returns on a store-backed cache: the value, `None` when the
/// store has none, or the store's error shared by everyone waiting on the load.
type Loaded<V, E> = Result<Option<V>, Arc<E>>;

impl<K, V, S, W> Cache<K, V, S, W>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// A cache hit, or one load per key through `fetch`, cached with the
    /// `options` it gives the value if it finds one and nothing wrote the
    /// key (or invalidated one of those tags) meanwhile.
    fn read_through<Q, E: Send + Sync + 'static>(
        &self,
        key: &Q,
        fetch: impl FnOnce(&K) -> Result<Option<V>, E>,
        options: impl FnOnce(&K, &V) -> EntryOptions,
    ) -> Loaded<V, E>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(v) = self.get_cached(key) {
            return Ok(Some(v));
        }
        self.load_through(key.to_owned(), fetch, options)
    }

    /// [`read_through`](Self::read_through) of many keys: the misses
    /// fetched by one call of `fetch`, each value found cached with the
    /// `options` it gives it (see [`Cache::get_or_load_all`]).
    fn read_through_all<E: Send + Sync + 'static>(
        &self,
        keys: impl IntoIterator<Item = K>,
        mut fetch: impl FnMut(&[K]) -> Result<Vec<(K, V)>, E>,
        options: impl Fn(&K, &V) -> EntryOptions,
    ) -> Result<Vec<Option<V>>, Arc<E>> {
        self.load_all(keys, Mode::Store, |keys| {
            let found = fetch(keys)?;
            Ok(found.into_iter().map(|(k, v)| {
                let options = options(&k, &v);
                (k, v, options)
            }))
        })
    }

    /// [`read_through_all`](Self::read_through_all) with a fetch of a
    /// future, awaited without blocking the thread.
    async fn read_through_all_async<E, F>(
        &self,
        keys: impl IntoIterator<Item = K>,
        mut fetch: impl FnMut(Vec<K>) -> F,
        options: impl Fn(&K, &V) -> EntryOptions,
    ) -> Result<Vec<Option<V>>, Arc<E>>
    where
        E: Send + Sync + 'static,
        F: std::future::Future<Output = Result<Vec<(K, V)>, E>>,
    {
        let options = &options;
        self.load_all_async(keys, Mode::Store, |keys| {
            let found = fetch(keys);
            async move {
                Ok(found.await?.into_iter().map(|(k, v)| {
                    let options = options(&k, &v);
                    (k, v, options)
                }))
            }
        })
        .await
    }

    /// A refresh of `key` through `fetch` (see [`Cache::refresh`]): a value
    /// found replaces the cached one, with the `options` it gives it, and
    /// nothing found takes the cached one out, unless the key was written
    /// meanwhile; an error leaves the cached one.
    fn refresh_through<E: Send + Sync + 'static>(
        &self,
        key: K,
        fetch: impl FnOnce(&K) -> Result<Option<V>, E>,
        options: impl FnOnce(&K, &V) -> EntryOptions,
    ) -> Loaded<V, E> {
        self.refresh_with(key, Mode::Store, |k| {
            Ok(fetch(k)?.map(|v| {
                let options = options(k, &v);
                (v, options)
            }))
        })
    }

    /// [`refresh_through`](Self::refresh_through) with a fetch of a future
    /// (built for its own copy of the key), awaited without blocking.
    async fn refresh_through_async<E: Send + Sync + 'static>(
        &self,
        key: K,
        fetch: impl std::future::Future<Output = Result<Option<V>, E>>,
        options: impl FnOnce(&K, &V) -> EntryOptions,
    ) -> Loaded<V, E> {
        let copy = key.clone();
        let load = async move {
            Ok(fetch.await?.map(|v| {
                let options = options(&copy, &v);
                (v, options)
            }))
        };
        self.refresh_with_async(key, Mode::Store, load).await
    }

    /// [`refresh_through`](Self::refresh_through) from `store` itself.
    fn refresh_from<St: super::Store<K, V>>(&self, store: &St, key: K) -> Loaded<V, St::Error> {
        self.refresh_through(key, |k| store.load(k), |k, v| store.load_options(k, v))
    }

    /// [`refresh_through_async`](Self::refresh_through_async) from `store`
    /// itself.
    async fn refresh_from_async<St: super::AsyncStore<K, V>>(
        &self,
        store: &St,
        key: K,
    ) -> Loaded<V, St::Error> {
        let fetch = {
            let key = key.clone();
            async move { store.load(&key).await }
        };
        self.refresh_through_async(key, fetch, |k, v| store.load_options(k, v))
            .await
    }

    /// The miss path of [`read_through`](Self::read_through), for a caller
    /// that looked the key up already (a lookup counts in the statistics).
    fn load_through<E: Send + Sync + 'static>(
        &self,
        key: K,
        fetch: impl FnOnce(&K) -> Result<Option<V>, E>,
        options: impl FnOnce(&K, &V) -> EntryOptions,
    ) -> Loaded<V, E> {
        self.load(key, None, Mode::Store, |k| {
            Ok(fetch(k)?.map(|v| {
                let options = options(k, &v);
                (v, options)
            }))
        })
    }

    /// Stores `value` in the cache alone, with `options` if any, handing what
    /// it displaced to the listener once `guard` (a key lock) is released.
    ///
    /// The store (or the write-back queue) already has the write. Should the
    /// weigher, the [`Expiry`](crate::Expiry), or the key's `Clone`, `Hash`
    /// or `Eq` panic, the key's cached copy is dropped before the panic goes
    /// on, so that reads find the write there instead of the value it
    /// replaced.
    fn land_write<G>(&self, key: K, value: V, options: Option<&EntryOptions>, guard: G) {
        let mut removed = Removed::new();
        let (ttl, tags) = options.map_or((None, &[][..]), |o| (o.time_to_live(), o.tag_list()));
        // A copy of the key, to find the stale copy by should the write
        // panic: the write hashes and compares the key (a key whose `Hash`
        // or `Eq` panics now and then), and may call the weigher and the
        // `Expiry`. One clone per write that already went to the store or
        // the queue. The key's `Clone` may panic too: the stale copy goes
        // all the same.
        let copy = match catch_unwind(AssertUnwindSafe(|| key.clone())) {
            Ok(copy) => copy,
            Err(panic) => self.drop_stale_copy(&key, removed, guard, panic),
        };
        let landed = catch_unwind(AssertUnwindSafe(|| {
            self.write_deferred(key, value, ttl, tags, None, &mut removed)
        }));
        match landed {
            Ok(Ok(())) => {}
            Ok(Err(rejected)) => removed.push((rejected.key, rejected.value, RemovalCause::Size)),
            Err(panic) => self.drop_stale_copy(&copy, removed, guard, panic),
        }
        // The copy after the stripe: a key's `Drop` may call into the cache.
        drop(guard);
        drop(copy);
        self.notify(removed);
    }

    /// Takes `key`'s cached copy out after the store (or the queue) took a
    /// newer write and user code panicked on the way. The key's own `Hash`
    /// or `Eq` may have been what panicked, and may again: the copy then
    /// stays, and reads of the key meet that panic looking for it.
    fn take_stale<Q>(&self, key: &Q) -> Option<(K, V, RemovalCause)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        catch_unwind(AssertUnwindSafe(|| self.take(key)))
            .ok()
            .flatten()
    }

    /// After user code panicked in [`land_write`](Self::land_write): drops
    /// `key`'s cached copy (the store or the queue has a newer write),
    /// releases `guard`, tells the listener, and resumes `panic` (the
    /// callback's panic is the one the caller sees).
    fn drop_stale_copy<G>(
        &self,
        key: &K,
        removed: Removed<K, V>,
        guard: G,
        panic: Box<dyn std::any::Any + Send>,
    ) -> ! {
        self.drop_stale_copies(std::iter::once(key), removed, guard, panic)
    }

    /// [`drop_stale_copy`](Self::drop_stale_copy) for many keys.
    fn drop_stale_copies<'k, G>(
        &self,
        keys: impl IntoIterator<Item = &'k K>,
        mut removed: Removed<K, V>,
        guard: G,
        panic: Box<dyn std::any::Any + Send>,
    ) -> !
    where
        K: 'k,
    {
        removed.extend(keys.into_iter().filter_map(|k| self.take_stale(k)));
        drop(guard);
        let _ = catch_unwind(AssertUnwindSafe(|| self.notify(removed)));
        resume_unwind(panic)
    }

    /// Lands a batch of writes the store took (or, read-through, that the
    /// caller wrote to it), in order, as
    /// [`land_write`](Self::land_write) and [`land_delete`](Self::land_delete)
    /// land one, holding `guard` (the keys' stripes) until all have landed;
    /// the listener hears once it is released. Should user code panic on
    /// the way (a key's `Clone`, `Hash` or `Eq`, the weigher), the cached
    /// copies of the keys not landed yet are dropped before the panic goes
    /// on: the store has their writes.
    fn land_batch<G>(&self, ops: Vec<Op<K, V>>, guard: G) {
        let removed = Removed::new();
        // Copies of the keys, to find the stale copies by should a write
        // panic (one clone per key, as `land_write` makes).
        let keys = match catch_unwind(AssertUnwindSafe(|| {
            ops.iter().map(|op| op.key().clone()).collect::<Vec<K>>()
        })) {
            Ok(keys) => keys,
            Err(panic) => self.drop_stale_copies(ops.iter().map(Op::key), removed, guard, panic),
        };
        let mut removed = removed;
        // The deletes' keys, dropped with the copies.
        let mut deleted = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            let landed = catch_unwind(AssertUnwindSafe(|| match op {
                Op::Put(key, value) => {
                    if let Err(rejected) =
                        self.write_deferred(key, value, None, &[], None, &mut removed)
                    {
                        removed.push((rejected.key, rejected.value, RemovalCause::Size));
                    }
                }
                Op::Delete(key) => {
                    removed.extend(self.take(&key));
                    deleted.push(key);
                }
            }));
            if let Err(panic) = landed {
                self.drop_stale_copies(&keys[i..], removed, (guard, deleted), panic);
            }
        }
        // The keys after the stripes: a key's `Drop` may call into the
        // cache.
        drop(guard);
        drop(keys);
        drop(deleted);
        self.notify(removed);
    }

    /// Ends a batch's write once its store call returned `written`: taken,
    /// the writes land ([`land_batch`](Self::land_batch)); failed, the
    /// keys' copies are dropped ([`drop_batch`](Self::drop_batch)) and the
    /// store's error returned.
    fn settle_batch<G, E>(
        &self,
        ops: Vec<Op<K, V>>,
        guard: G,
        written: Result<(), E>,
    ) -> Result<(), super::WriteError<E>> {
        match written {
            Ok(()) => {
                self.land_batch(ops, guard);
                Ok(())
            }
            Err(e) => {
                self.drop_batch(&ops, guard);
                Err(super::WriteError::Store(e))
            }
        }
    }

    /// After a batch's store call failed: the store may have taken part of
    /// it, so its keys' cached copies are dropped (the listener hears them
    /// once `guard`, the keys' stripes, is released).
    fn drop_batch<G>(&self, ops: &[Op<K, V>], guard: G) {
        let stale: Removed<K, V> = ops
            .iter()
            .filter_map(|op| self.take_stale(op.key()))
            .collect();
        drop(guard);
        self.notify(stale);
    }

    /// `ops` with each key's last write alone, in the order of those, with
    /// their keys' hashes: a store's `write_batch` takes at most one write
    /// per key. A key's `Hash` or `Eq` that panics panics here, before
    /// anything is locked or written.
    fn last_per_key(&self, ops: Vec<Op<K, V>>) -> (Vec<Op<K, V>>, Vec<u64>) {
        let hashes: Vec<u64> = ops.iter().map(|op| self.hash(op.key())).collect();
        if ops.len() < 2 {
            return (ops, hashes);
        }
        let last: Vec<bool> = if ops.len() <= SMALL_BATCH {
            // A few keys: no hash twice (sorted on the stack) means no key
            // twice, and nothing to allocate; else compared pairwise, with
            // no table to build.
            let mut sorted: smallvec::SmallVec<[u64; SMALL_BATCH]> =
                hashes.iter().copied().collect();
            sorted.sort_unstable();
            if sorted.windows(2).all(|w| w[0] != w[1]) {
                return (ops, hashes);
            }
            let later = |i: usize| {
                (i + 1..ops.len()).any(|j| hashes[j] == hashes[i] && ops[j].key() == ops[i].key())
            };
            (0..ops.len()).map(|i| !later(i)).collect()
        } else {
            let mut last = vec![false; ops.len()];
            let mut seen = hashbrown::HashTable::<usize>::with_capacity(ops.len());
            for i in (0..ops.len()).rev() {
                let key = ops[i].key();
                if seen.find(hashes[i], |&j| ops[j].key() == key).is_none() {
                    seen.insert_unique(hashes[i], i, |&j| hashes[j]);
                    last[i] = true;
                }
            }
            last
        };
        if last.iter().all(|&l| l) {
            return (ops, hashes);
        }
        ops.into_iter()
            .zip(hashes)
            .zip(last)
            .filter_map(|(pair, last)| last.then_some(pair))
            .unzip()
    }

    /// An async read-through miss, for a caller that looked the key up
    /// already: one load per key through `fetch`, cached with the `options`
    /// it gives the value (as [`read_through`](Self::read_through)).
    async fn load_through_async<E: Send + Sync + 'static>(
        &self,
        key: &K,
        fetch: impl std::future::Future<Output = Result<Option<V>, E>>,
        options: impl FnOnce(&K, &V) -> EntryOptions,
    ) -> Loaded<V, E> {
        let load = async {
            Ok(fetch.await?.map(|v| {
                let options = options(key, &v);
                (v, options)
            }))
        };
        self.load_async(key.clone(), None, Mode::Store, load).await
    }

    /// Removes `key` from the cache alone, as [`land_write`](Self::land_write).
    /// Should the key's `Hash` or `Eq` panic, the removal is tried once more
    /// before the panic goes on: the store (or the queue) has the delete.
    fn land_delete<Q, G>(&self, key: &Q, guard: G)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let removed = match catch_unwind(AssertUnwindSafe(|| self.take(key))) {
            Ok(removed) => removed,
            Err(panic) => {
                let stale = self.take_stale(key);
                drop(guard);
                let _ = catch_unwind(AssertUnwindSafe(|| self.notify(stale)));
                resume_unwind(panic)
            }
        };
        drop(guard);
        self.notify(removed);
    }
}
