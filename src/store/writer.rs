//! The write side of a shard: [`ShardWriter`] holds the map's write lock and
//! changes the map and the policy together — inserts, replacements, removals,
//! evictions down to the capacity and expiry — handing whatever leaves to the
//! caller for the listener.

use std::borrow::Borrow;
use std::cmp::Reverse;

use super::{
    Entry, Map, Refused, Removed, Timers, Token, View, WriteContext, FIT_EXPIRY_BATCHES,
    FIT_EXPIRY_CEILING, MAX_WEIGHT, WRITE_EXPIRY_BATCH,
};
use crate::expiry::clock::{ticks, Clock};
use crate::expiry::NEVER;
use crate::policy::{Policy, SketchLines};
use crate::sync::WriteGuard;
use crate::tags::Tag;
use crate::RemovalCause;

/// A shard held for writing: the map and the policy, changed together.
pub(crate) struct ShardWriter<'a, K, V, H> {
    pub(super) map: WriteGuard<'a, Map<K, V>>,
    pub(super) hash_of: &'a H,
}

impl<K: Eq, V, H: Fn(&K) -> u64> ShardWriter<'_, K, V, H> {
    /// Runs `f` on the policy with a view of the slab.
    #[inline(always)]
    fn with_policy<R>(&mut self, f: impl FnOnce(&mut Policy, &View<'_, K, V, H>) -> R) -> R {
        let map = &mut *self.map;
        let view = View {
            slots: map.slab.slots(),
            hash_of: self.hash_of,
        };
        f(map.policy.get_mut(), &view)
    }

    /// Inserts or replaces `key`. Entries the shard let go of are pushed to `out`.
    /// Gives the key and value back when the weight can never fit in this shard,
    /// or when `deadlines` puts the entry's deadline at or before `now` (any
    /// entry already under `key` is removed: a refused write must not leave the
    /// value it meant to replace readable).
    ///
    /// When the shard keeps deadlines, the clock is read once and the entry's
    /// deadlines are asked for before anything changes.
    pub(crate) fn insert(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        weight: u32,
        timing: WriteContext<'_, K, V>,
        out: &mut Removed<K, V>,
    ) -> Result<(), Refused<K, V>> {
        if timing.start && !self.map.timed {
            self.map.timers = Some(Timers::new(false));
            self.map.timed = true;
        }
        let now = self.map.timed().then(|| timing.clock.now());
        let found = self.map.find(hash, &key).map(|(t, _)| t);
        // An entry already under the key whose deadline has passed leaves as
        // expired; it is taken out only after the user's code below has run,
        // so that a panic there changes nothing at all.
        let expired = found.filter(|&t| !self.map.is_live(t, now));
        let existing = found.filter(|_| expired.is_none());
        // Weights above `MAX_WEIGHT` count as it (the builder's docs).
        let weight = weight.min(MAX_WEIGHT);
        let fits = u64::from(weight) <= self.map.max_entry;
        let deadlines = match (fits, now, &self.map.timers) {
            (true, Some(now), Some(timers)) => Some((timing.deadlines)(
                &key,
                &value,
                now,
                existing.map(|t| timers.at(t)),
            )),
            _ => None,
        };
        if let Some(t) = expired {
            let old = self.unlink(hash, t);
            self.map.counters.expirations += 1;
            out.push((old.key, old.value, RemovalCause::Expired));
        }
        if !fits {
            self.map.counters.rejections += 1;
            return Err(self.refuse(hash, existing, key, value, out, Refused::TooHeavy));
        }
        let timed = match (now, deadlines) {
            (Some(now), Some(d)) if d.at <= now => {
                self.map.counters.expirations += 1;
                return Err(self.refuse(hash, existing, key, value, out, Refused::Expired));
            }
            (_, d) => d,
        };
        let token = match existing {
            Some(t) => {
                self.replace(hash, t, key, value, weight, out);
                t
            }
            None => self.place(hash, key, value, weight, now, out),
        };
        if let (Some(d), Some(timers)) = (timed, &mut self.map.timers) {
            timers.set(token, d);
            if let (true, Some(now)) = (timing.stamp, now) {
                timers.stamp(token, now);
            }
        }
        if !timing.tags.is_empty() && self.map.tags.is_none() {
            self.map.tags = Some(Box::default());
        }
        if let Some(index) = &mut self.map.tags {
            index.set(token, timing.tags);
            if index.len() == 0 && index.roomy() {
                // An untagged write over the last tagged entry (see `unlink`).
                self.map.tags = None;
            }
        }
        let fitted = self.map.weight <= self.map.capacity;
        // Evictions down to the capacity if over it, and the new key's count:
        // the write is whole before the expiry step below runs the keys'
        // `Hash`, which may panic.
        self.settle(hash, token, existing.is_none(), now, out);
        if let (true, Some(now)) = (fitted, now) {
            self.expire(now, WRITE_EXPIRY_BATCH, out);
        }
        Ok(())
    }

    /// [`insert`](Self::insert) in a shard that keeps neither deadlines nor
    /// tags, for a write that brings neither: the same steps and outcome,
    /// without building the deadline context or asking the clock, the wheel
    /// and the tag index at every turn. With the write's helpers inlined, the
    /// throughput benchmark's mix went from 284–292 instructions per
    /// operation to 273–275 (`bash benches/mix_cost.sh`); run the way
    /// `benches/interleaved.rs` runs it (11 rounds, one thread), the two
    /// builds taking turns, quick_cache's time over larder's went from a
    /// median of 0.74× to 0.78× (seven runs of each: 0.71–0.76 and
    /// 0.63–0.84).
    pub(crate) fn insert_plain(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        weight: u32,
        out: &mut Removed<K, V>,
    ) -> Result<(), Refused<K, V>> {
        let existing = self.map.find(hash, &key).map(|(t, _)| t);
        self.insert_plain_at(hash, key, value, weight, existing, out)
    }

    /// [`insert_plain`](Self::insert_plain) for a caller that looked the
    /// key up already, under this lock: `existing` is its entry, if any.
    #[inline(always)]
    pub(crate) fn insert_plain_at(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        weight: u32,
        existing: Option<Token>,
        out: &mut Removed<K, V>,
    ) -> Result<(), Refused<K, V>> {
        let weight = weight.min(MAX_WEIGHT);
        if u64::from(weight) > self.map.max_entry {
            self.map.counters.rejections += 1;
            return Err(self.refuse(hash, existing, key, value, out, Refused::TooHeavy));
        }
        let token = match existing {
            Some(t) => {
                self.replace(hash, t, key, value, weight, out);
                t
            }
            None => self.place(hash, key, value, weight, None, out),
        };
        self.settle(hash, token, existing.is_none(), None, out);
        Ok(())
    }

    /// A new key is about to go in: starts fetching what its insert and the
    /// eviction after it will read.
    #[inline(always)]
    fn prefetch_insert(&mut self, hash: u64) {
        let candidate = self.with_policy(|p, view| p.prefetch_insert(hash, view));
        if let Some(candidate) = candidate {
            self.map.table.prefetch(candidate);
        }
    }

    /// Whether the shard keeps neither deadlines nor tags, so that a write
    /// bringing neither may take [`insert_plain`](Self::insert_plain).
    #[inline]
    pub(crate) fn is_plain(&self) -> bool {
        // An index kept empty (see `unlink`) has no entry's tags to drop.
        !self.map.timed && self.map.tags.as_ref().is_none_or(|index| index.len() == 0)
    }

    /// Gives the resident entry at `t` (under `hash`) a new value and
    /// weight; the old value goes to `out` as replaced.
    #[inline(always)]
    fn replace(
        &mut self,
        hash: u64,
        t: Token,
        key: K,
        value: V,
        weight: u32,
        out: &mut Removed<K, V>,
    ) {
        let old_weight = self.map.slab.get(t).weight();
        if (old_weight == 0) != (weight == 0) {
            return self.replace_weightless(hash, t, key, value, weight, out);
        }
        self.swap_value(t, key, value, weight, out);
        if old_weight != weight {
            self.with_policy(|p, view| p.on_reweigh(t, old_weight, weight, view));
        }
        // A no-op for an entry of weight 0, in no policy's order.
        self.with_policy(|p, view| p.on_access(t, view));
    }

    /// [`replace`](Self::replace) for a weight that falls to 0 or rises
    /// from it: the entry leaves the policy, or joins it again (see
    /// [`Policy::on_rejoin`](crate::policy::Policy::on_rejoin)).
    #[cold]
    #[inline(never)]
    fn replace_weightless(
        &mut self,
        hash: u64,
        t: Token,
        key: K,
        value: V,
        weight: u32,
        out: &mut Removed<K, V>,
    ) {
        if weight == 0 {
            // Before the weight changes: the policy takes its old weight off.
            self.with_policy(|p, view| p.on_remove(t, hash, view));
        }
        self.swap_value(t, key, value, weight, out);
        if weight != 0 {
            self.with_policy(|p, view| p.on_rejoin(t, hash, view));
        }
    }

    /// Puts `value` and `weight` in the resident entry at `t`; its old
    /// value goes to `out` as replaced.
    #[inline(always)]
    fn swap_value(&mut self, t: Token, key: K, value: V, weight: u32, out: &mut Removed<K, V>) {
        let map = &mut *self.map;
        let entry = map.slab.get_mut(t);
        let old_weight = entry.weight();
        let old_value = std::mem::replace(&mut entry.value, value);
        entry.set_weight(weight);
        map.weight = map.weight - u64::from(old_weight) + u64::from(weight);
        map.counters.updates += 1;
        out.push((key, old_value, RemovalCause::Replaced));
    }

    /// Makes room for a new key (a token, the table's room) and adds it;
    /// returns its token. Making room hashes other keys (victims, the
    /// policy's next candidate, the resident keys as the table grows):
    /// should one's `Hash` panic, the unwinding hands the key and value to
    /// `out` as refused for size, for the listener to hear, as a write undone
    /// while it evicts is (see [`fit`](Self::fit)).
    #[inline(always)]
    fn place(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        weight: u32,
        now: Option<u64>,
        out: &mut Removed<K, V>,
    ) -> Token {
        let mut unplaced = Unplaced {
            writer: self,
            entry: Some((key, value)),
            out,
        };
        if unplaced.writer.map.slab.is_full() {
            unplaced.writer.evict_for_token(now, unplaced.out);
        }
        unplaced.writer.prefetch_insert(hash);
        let writer = &mut *unplaced.writer;
        let map = &mut *writer.map;
        let hash_of = writer.hash_of;
        let slab = &map.slab;
        map.table
            .reserve_one(map.ceiling, |t| hash_of(&slab.get(t).key));
        let Some((key, value)) = unplaced.entry.take() else {
            unreachable!("taken only here");
        };
        drop(unplaced);
        self.add(hash, key, value, weight)
    }

    /// Adds a new entry to the slab, the table (its room reserved: see
    /// [`place`](Self::place)) and the policy; returns its token.
    ///
    /// An entry of weight 0 stays out of the policy: evicting it would free
    /// nothing, so the policy never names it to make room (as in Caffeine),
    /// and it costs the evictions nothing. Only expiry, a removal, an
    /// invalidation, or a new key that finds every token taken
    /// ([`evict_for_token`](Self::evict_for_token)) takes it out.
    #[inline(always)]
    fn add(&mut self, hash: u64, key: K, value: V, weight: u32) -> Token {
        let map = &mut *self.map;
        let Some(t) = map.slab.insert(Entry::new(key, value, weight)) else {
            unreachable!("a full slab has a token given back before an add");
        };
        // The room was reserved above, before the slab took the entry.
        map.table.insert_reserved(hash, t);
        map.weight += u64::from(weight);
        map.counters.inserts += 1;
        if weight != 0 {
            self.with_policy(|p, view| p.on_insert(t, hash, view));
        }
        t
    }

    /// What follows a write of `token` (under `hash`): evictions down to the
    /// capacity, then, for a new entry, its count in the sketch.
    #[inline(always)]
    fn settle(
        &mut self,
        hash: u64,
        token: Token,
        added: bool,
        now: Option<u64>,
        out: &mut Removed<K, V>,
    ) {
        if self.map.weight > self.map.capacity {
            self.fit(hash, token, now, out);
        }
        if added {
            self.count_fresh();
        }
    }

    /// Counts the entry the policy took in last in the sketch (see
    /// `TinyLfu::count_fresh`).
    #[inline(always)]
    fn count_fresh(&mut self) {
        // The count (or the insert's evictions) may have started the
        // sketch, or sized it anew.
        if self.with_policy(|p, view| p.count_fresh(view)) {
            let map = &mut *self.map;
            map.sketch_lines = map.policy.get_mut().sketch_lines();
        }
    }

    /// Brings a shard that a write of `token` (under `hash`) took over its
    /// capacity back within it: entries whose deadline has passed make room
    /// first, at `now` (the wheel's work is owed anyway, and stops as soon as
    /// the shard fits, or after [`FIT_EXPIRY_BATCHES`] batches unless the
    /// last one made room, and after [`FIT_EXPIRY_CEILING`] at most), then
    /// evictions in policy order. The entry just
    /// written is its own victim only under W-TinyLfu, when it is heavier
    /// than the admission window and loses its contest for room (see
    /// `TinyLfu::victim`); otherwise it stays readable at least until the
    /// next write to this shard.
    ///
    /// A key's `Hash` that panics on the way (the policy hashes victims and
    /// candidates) undoes the write instead of leaving the shard over its
    /// capacity: the written entry goes to `out` as refused, what was taken
    /// out before the panic stays out, and the panic goes on to the caller.
    #[inline(always)]
    fn fit(&mut self, hash: u64, token: Token, now: Option<u64>, out: &mut Removed<K, V>) {
        // Unwinding drops the guard, which undoes the write; the way through
        // forgets it (a guard costs the write nothing, where `catch_unwind`
        // cost the mix 2%).
        let undo = Undo {
            writer: self,
            hash,
            token,
            out,
        };
        if let Some(now) = now {
            // A share of the wheel's work first; past it, only batches that
            // make room go on (up to a ceiling): a heavy write may need many
            // expired entries reclaimed, as it would need as many evicted,
            // but moving deadlines down the wheel or reclaiming weightless
            // entries frees nothing.
            let mut progressed = true;
            for batch in 0..FIT_EXPIRY_CEILING {
                let before = undo.writer.map.weight;
                if before <= undo.writer.map.capacity
                    || (batch >= FIT_EXPIRY_BATCHES && !progressed)
                    || !undo.writer.expire(now, WRITE_EXPIRY_BATCH, undo.out)
                {
                    break;
                }
                progressed = undo.writer.map.weight < before;
            }
        }
        let capacity = undo.writer.map.capacity;
        undo.writer.evict_to(capacity, token, now, undo.out);
        std::mem::forget(undo);
    }

    /// Removes the entry under the refused key, if any (the listener hears
    /// its own key and value as replaced), and hands the refused key and
    /// value back: the caller's own, which a key type whose `Eq` ignores
    /// some of its fields tells apart from the resident's.
    fn refuse(
        &mut self,
        hash: u64,
        existing: Option<Token>,
        key: K,
        value: V,
        out: &mut Removed<K, V>,
        refused: fn(K, V) -> Refused<K, V>,
    ) -> Refused<K, V> {
        let refused = match existing {
            Some(t) => {
                let old = self.unlink(hash, t);
                self.map.counters.invalidations += 1;
                out.push((old.key, old.value, RemovalCause::Replaced));
                refused(key, value)
            }
            None => refused(key, value),
        };
        // The entry it replaced (or an expired one) may have been the last.
        self.release_if_empty();
        refused
    }

    /// The entry under `key` (its token and value) if it is live at the
    /// clock's time. A key not found may be written next: its sketch line
    /// starts coming in, as after a lookup's miss.
    ///
    /// Always inlined, as `get`'s lookup is: out of line, a loop of
    /// computes counting Zipf keys up ran 1.15–1.17 s against 0.85–1.06
    /// inlined (10M operations, four runs each), slower than `get` then
    /// `insert` (0.91–0.96), its lookups' misses no longer overlapping.
    #[inline(always)]
    pub(crate) fn live_value<Q>(&self, hash: u64, key: &Q, clock: &Clock) -> Option<(Token, &V)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let Some((t, entry)) = self.map.find(hash, key) else {
            self.map.prefetch_insert(hash);
            return None;
        };
        let now = self.map.timed().then(|| clock.now());
        self.map.is_live(t, now).then_some((t, &entry.value))
    }

    /// Removes `key`'s entry: `Explicit` when it was live, `Expired` when its
    /// deadline had passed (the caller then reports the key absent).
    pub(crate) fn remove<Q>(
        &mut self,
        hash: u64,
        key: &Q,
        clock: &Clock,
    ) -> Option<(K, V, RemovalCause)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let (t, _) = self.map.find(hash, key)?;
        let now = self.map.timed().then(|| clock.now());
        let live = self.map.is_live(t, now);
        let entry = self.unlink(hash, t);
        self.release_if_empty();
        if live {
            self.map.counters.invalidations += 1;
            Some((entry.key, entry.value, RemovalCause::Explicit))
        } else {
            self.map.counters.expirations += 1;
            Some((entry.key, entry.value, RemovalCause::Expired))
        }
    }

    /// Reclaims entries whose deadline is at or before `now`, doing at most
    /// `budget` steps of the wheel; true when more may be due. A deadline that a
    /// read moved later is filed again instead.
    pub(crate) fn expire(&mut self, now: u64, budget: usize, out: &mut Removed<K, V>) -> bool {
        let Some(timers) = &mut self.map.timers else {
            return false;
        };
        let mut due = std::mem::take(&mut timers.due);
        while due.len() < budget {
            match timers.early.peek() {
                Some(&Reverse((at, _))) if at <= now => {}
                _ => break,
            }
            if let Some(Reverse((at, t))) = timers.early.pop() {
                if let Some(pushed) = timers.early_at.get_mut(t as usize) {
                    if *pushed == at {
                        *pushed = NEVER;
                    }
                }
                due.push(t);
            }
        }
        let early_more = timers.early.peek().is_some_and(|e| e.0 .0 <= now);
        let more = timers
            .wheel
            .advance(ticks(now), budget - due.len(), &mut due)
            || early_more;
        // The due tokens are filed nowhere now: should a key's `Hash` panic
        // below, the pass's guard files the rest again, so that a later pass
        // still finds them.
        let mut pass = ExpiryPass {
            writer: self,
            due,
            next: 0,
            now,
        };
        while let Some(&t) = pass.due.get(pass.next) {
            let map = &mut *pass.writer.map;
            let timers = map.timers.as_mut().expect("checked above");
            // A stale early token: gone, or filed on the wheel again.
            if map.slab.contains(t) && !timers.wheel.is_filed(t) {
                let at = timers.at(t);
                if at > now {
                    // Not yet (its tick has begun, or a read moved it).
                    timers.file_again(t, at, now);
                } else {
                    let hash = (pass.writer.hash_of)(&pass.writer.map.slab.get(t).key);
                    let entry = pass.writer.unlink(hash, t);
                    pass.writer.map.counters.expirations += 1;
                    out.push((entry.key, entry.value, RemovalCause::Expired));
                }
            }
            pass.next += 1;
        }
        drop(pass);
        self.release_if_empty();
        more
    }

    /// Empties the shard, releasing its memory: entries leave as `Explicit`,
    /// or `Expired` if their deadline had passed.
    pub(crate) fn clear(&mut self, clock: &Clock, out: &mut Vec<(K, V, RemovalCause)>) {
        let now = self.map.timed().then(|| clock.now());
        // Causes first, while the deadlines are still there (slot order, as
        // `drain_in_place` yields the entries).
        let tokens: Vec<Token> = self.map.slab.iter_from(0).map(|(t, _)| t).collect();
        let causes: Vec<RemovalCause> = tokens
            .into_iter()
            .map(|t| self.book(t, now, RemovalCause::Explicit))
            .collect();
        let map = &mut *self.map;
        // Emptied in place: `release_storage` keeps them if they are the
        // room `initial_capacity` reserved (an `invalidate_all` then
        // allocates nothing), and frees them otherwise.
        map.table.clear();
        map.weight = 0;
        if let Some(timers) = &mut map.timers {
            timers.reset();
        }
        map.tags = None;
        map.policy.get_mut().clear();
        map.sketch_lines = SketchLines::default();
        out.extend(
            map.slab
                .drain_in_place()
                .zip(causes)
                .map(|(e, cause)| (e.key, e.value, cause)),
        );
        map.release_storage();
    }

    /// Removes every entry carrying `tag` (cause `Invalidated`, or `Expired`
    /// for one whose deadline had passed).
    pub(crate) fn invalidate_tag(
        &mut self,
        tag: &Tag,
        clock: &Clock,
        out: &mut Vec<(K, V, RemovalCause)>,
    ) {
        let now = self.map.timed().then(|| clock.now());
        let Some(index) = &self.map.tags else {
            return;
        };
        // Every key hashed before anything changes: a `Hash` that panics
        // leaves the shard as it was (the tag still names all its carriers).
        let doomed: Vec<(Token, u64)> = index
            .carriers(tag)
            .into_iter()
            .map(|t| (t, (self.hash_of)(&self.map.slab.get(t).key)))
            .collect();
        for (t, hash) in doomed {
            let cause = self.book(t, now, RemovalCause::Invalidated);
            let entry = self.unlink(hash, t);
            out.push((entry.key, entry.value, cause));
        }
        self.release_if_empty();
    }

    /// Removes every live entry for which `remove` is true (cause
    /// `Invalidated`). The predicate sees every live entry, and the doomed
    /// keys are hashed, before any is removed, so a panic in either leaves the
    /// shard as it was. Entries whose
    /// deadline had passed are not shown to it: they are reclaimed, as
    /// `Expired`.
    pub(crate) fn invalidate_if(
        &mut self,
        remove: &mut dyn FnMut(&K, &V) -> bool,
        clock: &Clock,
        out: &mut Vec<(K, V, RemovalCause)>,
    ) {
        let now = self.map.timed().then(|| clock.now());
        let map = &*self.map;
        let hash_of = self.hash_of;
        let doomed: Vec<(Token, u64)> = map
            .slab
            .iter_from(0)
            .filter(|&(t, e)| !map.is_live(t, now) || remove(&e.key, &e.value))
            .map(|(t, e)| (t, hash_of(&e.key)))
            .collect();
        for (t, hash) in doomed {
            let cause = self.book(t, now, RemovalCause::Invalidated);
            let entry = self.unlink(hash, t);
            out.push((entry.key, entry.value, cause));
        }
        self.release_if_empty();
    }

    /// Gives the memory of an emptied shard back (table, slab, policy state,
    /// timers), as `clear` does: a cache whose entries all expire or are
    /// removed returns to a new cache's footprint, keeping the room
    /// `initial_capacity` reserved.
    fn release_if_empty(&mut self) {
        let map = &mut *self.map;
        // Nothing to give back if no entry came in since the last release
        // (a refused write, a pass over a shard already empty): the policy,
        // the timers and the tags hold nothing either.
        if map.slab.len() != 0 || map.slab.untouched() {
            return;
        }
        map.release_storage();
        map.policy.get_mut().clear();
        map.sketch_lines = SketchLines::default();
        if let Some(timers) = &mut map.timers {
            timers.reset();
        }
        map.tags = None;
    }

    /// A shard's tokens are `u32`s: with every one taken (`u32::MAX - 1`
    /// entries, which only weights of 0 or a capacity above that count per
    /// shard allow), a new key first evicts one entry in policy order, or,
    /// if the policy holds none, the entry of weight 0 at the lowest token.
    #[cold]
    #[inline(never)]
    fn evict_for_token(&mut self, now: Option<u64>, out: &mut Removed<K, V>) {
        let victim = self.with_policy(|p, view| p.victim(crate::policy::list::NIL, view));
        let Some(victim) = victim.or_else(|| self.map.slab.iter_from(0).next().map(|(t, _)| t))
        else {
            unreachable!("a full slab holds entries");
        };
        self.evict(victim, now, out);
    }

    /// Evicts in policy order, sparing `keep` as the policy does (see
    /// [`Policy::victim`](crate::policy::Policy::victim)), until the shard
    /// weighs at most `limit`.
    /// A victim whose deadline had passed (expiry not yet reclaimed it) is
    /// reported, and counted, as expired.
    #[inline(always)]
    fn evict_to(&mut self, limit: u64, keep: Token, now: Option<u64>, out: &mut Removed<K, V>) {
        while self.map.weight > limit {
            let Some(victim) = self.with_policy(|p, view| p.victim(keep, view)) else {
                break;
            };
            self.evict(victim, now, out);
        }
    }

    /// Takes out `victim`, the policy's choice, as evicted (or expired, if
    /// its deadline had passed).
    #[inline(always)]
    fn evict(&mut self, victim: Token, now: Option<u64>, out: &mut Removed<K, V>) {
        let live = self.map.is_live(victim, now);
        let map = &mut *self.map;
        let hash = match map.policy.get_mut().known_hash(victim) {
            Some(hash) => hash,
            None => (self.hash_of)(&map.slab.get(victim).key),
        };
        let entry = self.unlink(hash, victim);
        let cause = if live {
            self.map.counters.evictions += 1;
            let evicted = &mut self.map.counters.evicted_weight;
            *evicted = evicted.saturating_add(u64::from(entry.weight()));
            RemovalCause::Size
        } else {
            self.map.counters.expirations += 1;
            RemovalCause::Expired
        };
        out.push((entry.key, entry.value, cause));
    }

    /// How an entry leaving at `now` for `cause` is booked: as expired if its
    /// deadline had passed (it was already unreadable), else as `cause`.
    fn book(&mut self, token: Token, now: Option<u64>, cause: RemovalCause) -> RemovalCause {
        let live = self.map.is_live(token, now);
        let counters = &mut self.map.counters;
        if !live {
            counters.expirations += 1;
            return RemovalCause::Expired;
        }
        match cause {
            RemovalCause::Invalidated => counters.tag_invalidations += 1,
            _ => counters.invalidations += 1,
        }
        cause
    }

    /// Takes a resident entry out of the table, the policy and the slab.
    fn unlink(&mut self, hash: u64, token: Token) -> Entry<K, V> {
        match self.map.table.locate(hash, |t| t == token) {
            Some(found) => {
                self.map.table.remove(hash, found);
            }
            None => unreachable!("resident token {token} missing from the table"),
        }
        // An entry of weight 0, never in the policy (see `add`), is no
        // token of its: each policy lets it go by.
        self.with_policy(|p, view| p.on_remove(token, hash, view));
        let map = &mut *self.map;
        if let (true, Some(timers)) = (map.timed, &mut map.timers) {
            timers.wheel.cancel(token);
        }
        if let Some(index) = &mut map.tags {
            index.forget(token);
            if index.len() == 0 && index.roomy() {
                // The shard's last tagged entry left: the room of its peak
                // comes back (an index with little room stays, so that a
                // shard whose one tagged entry comes and goes does not
                // build it anew each time).
                map.tags = None;
            }
        }
        let entry = map.slab.remove(token);
        map.weight -= u64::from(entry.weight());
        entry
    }

    /// Resident keys in eviction order (entries of weight 0, never
    /// evicted to make room, are not in it).
    #[cfg(test)]
    pub(crate) fn eviction_order(&self) -> Vec<&K> {
        let view = View {
            slots: self.map.slab.slots(),
            hash_of: self.hash_of,
        };
        self.map
            .policy
            .try_lock()
            .expect("the write lock excludes drains")
            .order(&view)
            .into_iter()
            .map(|t| &self.map.slab.get(t).key)
            .collect()
    }

    /// Checks every structural invariant of the shard; panics on the first broken one.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn validate(&self) {
        let map = &*self.map;
        let hash_of = self.hash_of;
        let mut weight = 0;
        let mut live = Vec::new();
        for (t, e) in map.slab.iter_from(0) {
            weight += u64::from(e.weight());
            live.push(t);
            let found = map.table.find(hash_of(&e.key), |x| x == t);
            assert_eq!(found, Some(t), "resident entry missing from the table");
        }
        assert_eq!(map.table.len(), live.len(), "table and slab disagree");
        map.table.validate(|t| hash_of(&map.slab.get(t).key));
        assert_eq!(weight, map.weight, "weight total drifted");
        assert!(map.weight <= map.capacity, "shard over capacity");
        let policy = map
            .policy
            .try_lock()
            .expect("the write lock excludes drains");
        let view = View {
            slots: map.slab.slots(),
            hash_of,
        };
        let mut order = policy.order(&view);
        // Entries of weight 0 stay out of the policy (see `add`).
        assert!(
            order.iter().all(|&t| map.slab.get(t).weight() != 0),
            "an entry of weight 0 in the policy"
        );
        order.extend(live.iter().filter(|&&t| map.slab.get(t).weight() == 0));
        order.sort_unstable();
        assert_eq!(order, live, "policy and slab disagree on residents");
        policy.validate(&view);
        if let Some(index) = &map.tags {
            index.validate(&|t| map.slab.is_resident(t));
        }
        assert_eq!(map.timed, map.timers.is_some(), "the timed flag drifted");
        if let Some(timers) = &map.timers {
            timers.wheel.validate();
            let mut filed = 0;
            for &t in &live {
                let at = timers.at(t);
                assert!(timers.cap(t) >= at || at == NEVER, "deadline past its cap");
                match timers.wheel.deadline(t) {
                    Some(when) => {
                        filed += 1;
                        let due = ticks(at).max(timers.wheel.elapsed()) + 1;
                        assert!(when <= due, "filed after its deadline");
                    }
                    None => assert!(
                        at == NEVER || timers.early_at.get(t as usize).is_some_and(|&a| a != NEVER),
                        "a deadline the wheel does not know"
                    ),
                }
            }
            assert_eq!(filed, timers.wheel.len(), "the wheel holds departed tokens");
        }
    }
}

/// A write being fitted into its shard's capacity (see
/// [`ShardWriter::fit`]), undone if a panic unwinds through it: the written
/// entry leaves, refused, so that the shard is not left over its capacity.
/// Only unwinding drops it; the way through forgets it.
struct Undo<'w, 'a, K: Eq, V, H: Fn(&K) -> u64> {
    writer: &'w mut ShardWriter<'a, K, V, H>,
    hash: u64,
    token: Token,
    out: &'w mut Removed<K, V>,
}

impl<K: Eq, V, H: Fn(&K) -> u64> Drop for Undo<'_, '_, K, V, H> {
    #[cold]
    fn drop(&mut self) {
        let writer = &mut *self.writer;
        if writer.map.slab.is_resident(self.token) {
            // Taking the entry out calls no user code, as the hash is known
            // (a second panic while unwinding would abort).
            let entry = writer.unlink(self.hash, self.token);
            writer.map.counters.rejections += 1;
            self.out.push((entry.key, entry.value, RemovalCause::Size));
        }
    }
}

/// A new key's write before it is placed (see [`ShardWriter::place`]):
/// dropped still holding the key and value (another key's `Hash` panicked),
/// it hands them to `out` as refused for size. Counted as an insert too, as
/// a write undone once placed is (see `CacheStats::rejections`).
struct Unplaced<'w, 'a, K: Eq, V, H: Fn(&K) -> u64> {
    writer: &'w mut ShardWriter<'a, K, V, H>,
    entry: Option<(K, V)>,
    out: &'w mut Removed<K, V>,
}

impl<K: Eq, V, H: Fn(&K) -> u64> Drop for Unplaced<'_, '_, K, V, H> {
    #[inline]
    fn drop(&mut self) {
        if let Some((key, value)) = self.entry.take() {
            self.writer.map.counters.inserts += 1;
            self.writer.map.counters.rejections += 1;
            self.out.push((key, value, RemovalCause::Size));
        }
    }
}

/// An expiry pass over due tokens that the wheel and the early heap no longer
/// hold. Dropped, it files the tokens from `next` on again (none when the
/// pass ran to its end; the rest when a key's `Hash` panicked at `next`) and
/// gives the list's room back to the timers.
struct ExpiryPass<'w, 'a, K: Eq, V, H: Fn(&K) -> u64> {
    writer: &'w mut ShardWriter<'a, K, V, H>,
    due: Vec<Token>,
    next: usize,
    now: u64,
}

impl<K: Eq, V, H: Fn(&K) -> u64> Drop for ExpiryPass<'_, '_, K, V, H> {
    fn drop(&mut self) {
        let map = &mut *self.writer.map;
        let Some(timers) = map.timers.as_mut() else {
            return;
        };
        for &t in &self.due[self.next..] {
            if map.slab.contains(t) && !timers.wheel.is_filed(t) {
                let at = timers.at(t);
                timers.file_again(t, at, self.now);
            }
        }
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        timers.due = due;
    }
}
