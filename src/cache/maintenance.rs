//! Invalidation and upkeep: removing every entry, a tag group or the entries
//! a predicate picks, shard by shard, with the loads in flight made stale so
//! that none caches over the removal; reclaiming expired entries in short
//! batches (`run_pending_tasks`), and the background thread that runs it.

use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use super::{deliver, Cache, HeardIfUnwinding, RemovalCause};
use crate::store::{Removed, ShardWriter};
use crate::sync::Ordering;
use crate::tags::Tag;
use crate::write::CacheAside;

impl<K, V, S, W> Cache<K, V, S, W>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// Removes every entry. Shards are cleared one at a time; entries inserted
    /// concurrently into an already-cleared shard survive. A load that began
    /// before the call and lands while it runs, or that is in flight when it
    /// returns, hands its value to its callers but is not cached; one that
    /// begins and lands while the call runs, in a shard already cleared, is
    /// cached like any other write made meanwhile.
    /// The listener sees each removed entry as [`RemovalCause::Explicit`]
    /// ([`RemovalCause::Expired`] for one already past its deadline).
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(10).build().unwrap();
    /// cache.insert(1, 10);
    /// cache.invalidate_all();
    /// assert!(cache.is_empty());
    /// ```
    pub fn invalidate_all(&self) {
        let clock = &self.inner.expiration.clock;
        self.sweep_shards(|writer, removed| writer.clear(clock, removed));
    }

    /// Runs `sweep` on each shard in turn under its write lock, after making
    /// the shard's loads in flight stale (under the lock, as in
    /// `write_deferred`: a load may be of a key the sweep removes, so none is
    /// cached over it). The listener hears what each shard's sweep removed
    /// once that shard's lock is released. As the pass ends the flights are
    /// made stale again (see `invalidate_flights`), then the first panic of
    /// the listener (or, with none, of a removed key's or value's `Drop`), if
    /// any, reaches the caller; a panic of `sweep` reaches it at once, leaving
    /// the shards not yet swept as they were.
    fn sweep_shards(
        &self,
        mut sweep: impl FnMut(
            &mut ShardWriter<'_, K, V, &dyn Fn(&K) -> u64>,
            &mut Vec<(K, V, RemovalCause)>,
        ),
    ) {
        let mut first_panic = None;
        let hash_of = |k: &K| self.hash(k);
        let hash_of: &dyn Fn(&K) -> u64 = &hash_of;
        for shard in self.inner.shards.iter() {
            let mut removed = Vec::new();
            // Declared before the lock: should the sweep panic (a key's
            // `Hash`), the lock is released first, then the listener hears
            // what the shard had removed.
            let heard = HeardIfUnwinding {
                cache: self,
                list: &mut removed,
            };
            let mut writer = shard.write(&hash_of);
            shard.flights.invalidate_all();
            sweep(&mut writer, heard.list);
            drop(writer);
            std::mem::forget(heard);
            self.hand_over(removed, &mut first_panic);
        }
        self.invalidate_flights();
        if let Some(panic) = first_panic {
            resume_unwind(panic);
        }
    }

    /// Hands what a shard's sweep removed to the listener, or drops it when
    /// there is none; a panic either way (the listener's, or a key's or
    /// value's `Drop`) is kept for the end of the pass, so that the other
    /// shards are swept all the same.
    fn hand_over(
        &self,
        removed: impl IntoIterator<Item = (K, V, RemovalCause)>,
        first_panic: &mut Option<Box<dyn std::any::Any + Send>>,
    ) {
        match &self.inner.listener {
            Some(listener) => {
                for (k, v, cause) in removed {
                    deliver(listener, k, v, cause, first_panic);
                }
            }
            None => {
                // One at a time, so that a second panic does not meet the
                // first one's unwinding, which would abort.
                for (k, v, _) in removed {
                    for dropped in [
                        catch_unwind(AssertUnwindSafe(|| drop(k))),
                        catch_unwind(AssertUnwindSafe(|| drop(v))),
                    ] {
                        if let Err(panic) = dropped {
                            first_panic.get_or_insert(panic);
                        }
                    }
                }
            }
        }
    }

    /// Makes every load in flight stale, a shard at a time, as a whole-cache
    /// invalidation ends: a load that began while it ran (after its key's
    /// shard was swept, or from the listener) is still in flight when it
    /// returns, and is not cached either (a load never caches over a newer
    /// state).
    fn invalidate_flights(&self) {
        let hash_of = |k: &K| self.hash(k);
        for shard in self.inner.shards.iter() {
            // Under the write lock, as in `write_deferred`: a load lands
            // wholly before this or finds itself stale.
            let _writer = shard.write(&hash_of);
            shard.flights.invalidate_all();
        }
    }

    /// Reclaims every entry whose deadline has passed, shard by shard, in
    /// batches that each hold a shard's lock only briefly; the listener sees
    /// them as [`RemovalCause::Expired`]. Writes already reclaim a few expired
    /// entries each; this is for caches that go quiet (or see only reads), and
    /// is what an optional background sweeper calls. Its time grows linearly
    /// with the number of entries reclaimed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder::{Cache, Clock};
    ///
    /// let (clock, time) = Clock::mock();
    /// let cache: Cache<u32, u32> = Cache::builder()
    ///     .max_capacity(100)
    ///     .time_to_live(Duration::from_secs(1))
    ///     .clock(clock)
    ///     .build()
    ///     .unwrap();
    /// (0..50).for_each(|i| cache.insert(i, i));
    /// time.advance(Duration::from_secs(2));
    /// assert_eq!(cache.len(), 50); // expired, unreadable, not yet reclaimed
    /// cache.run_pending_tasks();
    /// assert_eq!(cache.len(), 0);
    /// ```
    pub fn run_pending_tasks(&self) {
        let clock = &self.inner.expiration.clock;
        let hash_of = |k: &K| self.hash(k);
        let mut first_panic = None;
        for shard in self.inner.shards.iter() {
            if !shard.read().timed() {
                continue;
            }
            loop {
                let mut removed = Removed::new();
                let heard = HeardIfUnwinding {
                    cache: self,
                    list: &mut removed,
                };
                let more = shard
                    .write(&hash_of)
                    .expire(clock.now(), MAINTENANCE_BATCH, heard.list);
                std::mem::forget(heard);
                self.hand_over(removed, &mut first_panic);
                if !more {
                    break;
                }
                // Leave the lock free for a moment: a reader spinning on it
                // (see `Shard::read`) gets in between two batches.
                for _ in 0..MAINTENANCE_GAP_SPINS {
                    std::hint::spin_loop();
                }
            }
        }
        if let Some(panic) = first_panic {
            resume_unwind(panic);
        }
    }

    /// Removes every entry that carries `tag`; the listener sees each as
    /// [`RemovalCause::Invalidated`] ([`RemovalCause::Expired`] for one
    /// already past its deadline). Costs O(entries with the tag), not a scan
    /// of the cache. After the call returns, no read returns an entry that
    /// carried the tag when the call began. (A write-back cache's `get`
    /// still finds a value whose write waits in its queue: tags mark cached
    /// copies, not queued writes.) Shards are swept one at a time,
    /// each under its own lock (the listener hears a shard's removals before
    /// the next is swept), so the call is not one instant for the whole
    /// cache: an insert racing with it lands either before its own shard's
    /// sweep (and is removed) or after it (and stays), and of two racing
    /// inserts into different shards, the later may be removed while the
    /// earlier stays. A load whose tags include `tag` and that began before
    /// the sweep of the last shard ended and is still in flight when the
    /// call returns, or that began before the call and ended during it,
    /// hands its value to its callers but is not cached (one that begins
    /// after the sweep ended reads what the call left).
    ///
    /// Should a key's `Hash` panic while a shard is swept (the keys of a
    /// tag's entries are hashed before any of them is removed), the entries
    /// of that tag in that shard stay, the shards after it are not swept,
    /// the listener still hears what was removed before, and the panic
    /// reaches the caller. The call then never returns, and a load of the tag
    /// that began during the sweep may be cached when it lands.
    ///
    /// ```
    /// use larder::{Cache, EntryOptions};
    ///
    /// let responses: Cache<String, String> = Cache::builder().max_capacity(100).build().unwrap();
    /// let about = |user: u64| EntryOptions::new().tags([format!("user:{user}")]);
    /// responses.insert_with("/users/7".into(), "ada".into(), about(7));
    /// responses.insert_with("/users/7/posts".into(), "[..]".into(), about(7));
    /// responses.insert_with("/users/8".into(), "bob".into(), about(8));
    /// responses.invalidate_tag("user:7");
    /// assert_eq!(responses.len(), 1);
    /// assert!(responses.contains_key("/users/8"));
    /// ```
    pub fn invalidate_tag(&self, tag: impl Into<Tag>) {
        self.invalidate_tags([tag]);
    }

    /// Removes every entry that carries any of `tags` (see
    /// [`invalidate_tag`](Self::invalidate_tag)), visiting each shard once.
    /// No tags, nothing done.
    ///
    /// ```
    /// use larder::{Cache, EntryOptions};
    ///
    /// let cache: Cache<u32, u32> = Cache::builder().max_capacity(100).build().unwrap();
    /// cache.insert_with(1, 1, EntryOptions::new().tags(["red"]));
    /// cache.insert_with(2, 2, EntryOptions::new().tags(["green"]));
    /// cache.insert_with(3, 3, EntryOptions::new().tags(["blue"]));
    /// cache.invalidate_tags(["red", "green"]);
    /// assert_eq!(cache.len(), 1);
    /// assert!(cache.contains_key(&3));
    /// ```
    pub fn invalidate_tags<T: Into<Tag>>(&self, tags: impl IntoIterator<Item = T>) {
        let tags: Vec<Tag> = tags.into_iter().map(Into::into).collect();
        if tags.is_empty() {
            // Nothing to remove, and no reason to keep later callers from
            // joining the loads in flight (a new epoch would).
            return;
        }
        // Before any shard is swept: a load of one of these tags that began
        // before this point and lands after it is not cached.
        let epoch = self.inner.tag_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        for tag in &tags {
            self.tag_mark(tag).fetch_max(epoch, Ordering::SeqCst);
        }
        let hash_of = |k: &K| self.hash(k);
        let mut first_panic = None;
        for shard in self.inner.shards.iter() {
            if shard.read().tagged() == 0 {
                continue;
            }
            let mut removed = Vec::new();
            {
                let heard = HeardIfUnwinding {
                    cache: self,
                    list: &mut removed,
                };
                let mut writer = shard.write(&hash_of);
                for tag in &tags {
                    writer.invalidate_tag(tag, &self.inner.expiration.clock, heard.list);
                }
                drop(writer);
                std::mem::forget(heard);
            }
            self.hand_over(removed, &mut first_panic);
        }
        // Again as the sweep ends: a load of one of these tags that began
        // while it ran (from another thread or the listener) and is still in
        // flight now is not cached either.
        let end = self.inner.tag_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        for tag in &tags {
            self.tag_mark(tag).fetch_max(end, Ordering::SeqCst);
        }
        if let Some(panic) = first_panic {
            resume_unwind(panic);
        }
    }

    /// Removes every entry for which `remove(key, value)` is true, for the
    /// rare group that tags do not cover. O(n): it visits every entry, a shard
    /// at a time with that shard locked, so `remove` must be quick and must
    /// not call the cache. If it panics, the shard it was visiting is left
    /// unchanged and the panic reaches the caller. The listener sees
    /// [`RemovalCause::Invalidated`]; entries already past their deadline are
    /// not shown to `remove` but reclaimed, as [`RemovalCause::Expired`].
    /// As with [`invalidate_all`](Self::invalidate_all), a load that began
    /// before the call and lands while it runs, or that is in flight when it
    /// returns, hands its value to its callers but is not cached, whatever
    /// its key (the predicate cannot be asked of a value not loaded yet); one
    /// that begins and lands while the call runs, in a shard already visited,
    /// is cached like any other write made meanwhile, unasked.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(100).build().unwrap();
    /// (0..10).for_each(|i| cache.insert(i, i));
    /// cache.invalidate_entries_if(|k, _| k % 2 == 0);
    /// assert_eq!(cache.len(), 5);
    /// ```
    pub fn invalidate_entries_if(&self, mut remove: impl FnMut(&K, &V) -> bool) {
        let clock = &self.inner.expiration.clock;
        self.sweep_shards(|writer, removed| writer.invalidate_if(&mut remove, clock, removed));
    }
}

/// Steps of the wheel (entries reclaimed or timers moved down a level) per
/// lock acquisition by `run_pending_tasks`: a few microseconds, so a reader
/// waiting behind one batch waits about as long as a write.
const MAINTENANCE_BATCH: usize = 64;

/// `spin_loop` hints between two maintenance batches on one shard: longer
/// than a spinning reader's poll interval.
const MAINTENANCE_GAP_SPINS: u32 = 24;

/// Starts the thread behind [`CacheBuilder::background_sweep`](crate::CacheBuilder::background_sweep).
pub(crate) fn spawn_sweeper<K, V, S>(
    cache: &Cache<K, V, S>,
    interval: Duration,
) -> std::io::Result<()>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    let inner = Arc::downgrade(&cache.inner);
    #[cfg(test)]
    let alive = {
        let alive = Arc::new(());
        let _ = cache.inner.sweeper_alive.set(Arc::downgrade(&alive));
        alive
    };
    let thread = std::thread::Builder::new()
        .name("larder-sweeper".into())
        .spawn(move || loop {
            #[cfg(test)]
            let _alive = &alive;
            // Parked, not asleep: the cache's drop unparks the thread, which
            // then ends at once, however long the interval (an interval past
            // the end of time parks it for good until then).
            let due = std::time::Instant::now().checked_add(interval);
            loop {
                if inner.strong_count() == 0 {
                    return;
                }
                let now = std::time::Instant::now();
                match due {
                    Some(due) if now >= due => break,
                    Some(due) => std::thread::park_timeout(due - now),
                    None => std::thread::park(),
                }
            }
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let cache = Cache {
                inner,
                write: CacheAside,
            };
            // A listener's panic is the listener's business; keep sweeping.
            let _ = catch_unwind(AssertUnwindSafe(|| cache.run_pending_tasks()));
        })?;
    // Set before any drop of the cache can look: the caller still holds it.
    let _ = cache.inner.sweeper.set(thread.thread().clone());
    Ok(())
}
