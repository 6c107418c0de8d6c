//! Window TinyLFU with an adaptive window (Einziger, Eytan, Friedman & Manes,
//! "Adaptive Software Cache Management", Middleware 2018; Caffeine's design).
//!
//! New entries enter a small LRU **window**. An entry pushed out of the window is
//! a *candidate* for the main region, a segmented LRU of **probation** and
//! **protected** (75 % of main). When main is full the candidate contests the
//! probation victim: the one the frequency sketch estimates as less popular is
//! evicted. A read in probation promotes to protected; protected overflow is
//! demoted back to probation. A hill climber resizes the window between sample
//! periods, towards whatever raised the hit rate; between its decisions, ghosts
//! of keys turned away and of keys main evicted nudge it a unit at a time, within
//! a bound around the climber's choice (see [`GHOST_NUDGE_CAP`]).
//!
//! Reads reach this policy deferred: a hit only counts itself on the entry (up
//! to a cap) and on the shard. The policy collects an entry's reads when it next
//! looks at that entry — at the head of a region, on the way to a victim — and
//! then applies what the reads would have done: a higher count, a second
//! chance at the back of the window or of protected, promotion out of
//! probation. The shard's hit count feeds the climber. So a read costs no lock
//! beyond the lookup's and loses nothing to contention. See `store::Entry::hits`.
//!
//! A resident's count is kept in its byte of policy state, not in the sketch
//! (see [`REGION_BITS`]): the sketch counts sightings of absent keys, and a key
//! read while resident hands its count back when it leaves. A collected read
//! and the candidate's side of a contest then read no sketch line; the
//! victim's side reads its key's estimate, which keeps incumbents' ties.
//!
//! The contest, the choice of victim and the ghosts' say in admission are in
//! `admission.rs`; this file keeps the regions and the policy's events.

mod admission;

/// For the naive model (`tinylfu_model.rs`), which plays by the same rules.
#[cfg(test)]
pub(super) use admission::{margin_for, ADMIT_MARGIN, ADMIT_WARM_ONE_IN, ADMIT_WARM_THRESHOLD};

use super::climber::Climber;
use super::ghosts::Ghosts;
use super::list::{List, NIL};
use super::sketch::Sketch;
use super::Entries;
use crate::store::Token;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Region {
    Absent,
    Window,
    Probation,
    Protected,
}

impl Region {
    #[inline]
    fn of(meta: u8) -> Self {
        match meta & REGION_BITS {
            0 => Self::Absent,
            1 => Self::Window,
            2 => Self::Probation,
            _ => Self::Protected,
        }
    }
}

/// A token's byte of policy state: its region in the low two bits, then
/// `READ` (reads were counted since the sketch last heard of the key), then
/// its count in the high four bits.
///
/// A resident key's count lives here, not in the sketch: its estimate when it
/// was counted at its insert (after that insert's evictions: see
/// [`TinyLfu::count_fresh`]), plus the reads collected since, halved whenever the sketch
/// ages. The sketch counts sightings of absent keys, and a key that was read
/// while resident raises its counters to its count when it leaves. So an
/// admission contest reads no sketch line (both counts are at hand), a read
/// collected reads none either, and the counts of residents are free of the
/// collisions the sketch collects meanwhile.
const REGION_BITS: u8 = 0b0011;
const READ: u8 = 0b1000;
const COUNT_SHIFT: u32 = 4;

/// Halves every resident's count, as the sketch halves its counters.
#[cold]
#[inline(never)]
fn halve_counts(entries: &impl Entries) {
    entries.update_metas(|m| (m & (REGION_BITS | READ)) | ((m >> 1) & 0x70));
}

/// Ghosts kept per entry of a full shard: slots of two 2-byte ghosts, 2 bytes
/// per entry.
/// On the 30 trace cases ghosts for a quarter / half / all of the entries
/// scored 46.30 / 46.37 / 46.25, against 45.98 without (P3 at 20%: 47.8 →
/// 50.8, P12 at 20% +1.1, sprite at 5% +1.4, scarab-recs +0.8 / +1.3).
pub(super) const GHOST_SHARE: f64 = 0.5;
/// The ghosts also steer the window between the climber's periods, a unit
/// of weight at a time, as ARC steers its split: a key turned away that
/// comes back while its ghost is there (recency the window was too short to
/// keep) grows the window by its weight, and a key turned away that main
/// evicted a short while ago (frequency main was too short to keep) shrinks
/// it by as much. The climber needs ten capacities of requests per
/// decision, more than most traces at 20% of their keys hold; the ghosts
/// move at every such return. On the 30 trace cases (three runs each) the
/// mean went from 46.46 to 46.58 with them: OLTP +1.2 and +0.5, trace_vaultservice
/// at 5% +1.1, P12 at 20% +0.3, cloudPhysicsIO at 20% −0.6, multi1 −0.4.
///
/// Their moves add up to a nudge, at most this share of the capacity either
/// way, on top of the window the climber chose: the window is the
/// climber's plus the nudge. The bound keeps a loop of returning keys from
/// growing the window without end (P3 at 20%: 50.9 with no ghost steering,
/// 50.3 unbounded), and keeping the nudge apart keeps the ghosts from
/// undoing the climber's decisions, as they did when they moved the window
/// itself, growth stopping at 10% of the capacity (where the windows of
/// OLTP, sprite at 20% and scarab-recs at 20% ended, while fixed windows of
/// 20–60% score 0.8–1.5 points more there). On the 30 trace cases, nudges
/// bounded at 2 / 5 / 10 / 20% scored 46.53 / 46.59 / 46.62 / 46.60, and the
/// ghosts moving the window itself 46.55 (same machine, same day); three
/// more runs at 5%: 46.58 / 46.63 / 46.62 (sprite +0.3 and +0.4, scan at 20%
/// +0.3, nothing 0.2 lower). At 10% P3 at 20% fell to 50.4, 2.2 below
/// quick_cache; at 5% it stays at 50.9.
pub(super) const GHOST_NUDGE_CAP: f64 = 0.05;
/// The window starts at 1 % of the capacity.
const INITIAL_WINDOW: f64 = 0.01;
/// Protected's share of the main region: three quarters (Caffeine keeps
/// 80%). On the 30 trace cases, six runs each the same hour, 0.75 scored
/// 46.69–46.72 (mean 46.71) against 0.8's 46.66–46.70 (mean 46.68): P3 at
/// 20% +0.41, sprite at 5% +0.25, multi2 at 5% +0.20, no case lower by more
/// than 0.16 (loop at 5%). Shares of 0.6, 0.65 and 0.7 scored within 0.02
/// of 0.75 (four runs each). The throughput mix pays 0.9% more instructions
/// per operation under callgrind (264.5 → 267.0; 0.7 costs 2.2%), which
/// alternating timed runs do not resolve (median ratio 0.99 over nine).
pub(super) const PROTECTED_SHARE: f64 = 0.75;

#[derive(Debug)]
pub(crate) struct TinyLfu {
    /// The lists' links and each token's byte of state (region, read mark and
    /// count: see [`REGION_BITS`]) live in the entries' slots.
    window: List,
    probation: List,
    protected: List,
    window_weight: u64,
    probation_weight: u64,
    protected_weight: u64,
    capacity: u64,
    /// The window's weight limit: `climbed` moved by `nudge`.
    window_max: u64,
    protected_max: u64,
    /// The window the hill climber chose.
    climbed: u64,
    /// The ghosts' moves since, within ±[`GHOST_NUDGE_CAP`] of the capacity.
    nudge: i64,
    /// The window the policy started with.
    initial_window: u64,
    /// What a candidate must beat the victim by, for the window as it is
    /// (see `admission::RECENCY_WINDOW`).
    margin: u8,
    /// Allocated once the shard is half full: counting earlier only adds noise.
    sketch: Option<Sketch>,
    /// Set when the sketch is allocated anew, until the store, which keeps
    /// where its lines lie, has been told (see `Policy::count_fresh`).
    pub(super) lines_moved: bool,
    /// Keys recently turned away at admission, and keys main evicted
    /// recently (as the victims of contests, or when the window had nothing
    /// to give); allocated with the sketch.
    ghosts: Ghosts,
    climber: Climber,
    rng: u64,
    /// A resident token whose key's hash was computed already (the next
    /// candidate's, by [`prefetch_insert`](Self::prefetch_insert)), so that
    /// its admission contest and its removal need not hash the key again.
    /// Forgotten when the token leaves.
    known: (Token, u64),
    /// The entry inserted last and its key's hash, until
    /// [`count_fresh`](Self::count_fresh) counts it in the sketch.
    fresh: (Token, u64),
}

impl TinyLfu {
    pub(crate) fn new(capacity: u64) -> Self {
        let mut policy = Self {
            window: List::default(),
            probation: List::default(),
            protected: List::default(),
            window_weight: 0,
            probation_weight: 0,
            protected_weight: 0,
            capacity,
            window_max: 0,
            protected_max: 0,
            climbed: 0,
            nudge: 0,
            initial_window: 0,
            margin: admission::ADMIT_MARGIN,
            sketch: None,
            lines_moved: false,
            ghosts: Ghosts::default(),
            climber: Climber::new(capacity),
            // Never zero: xorshift would stay at zero for good.
            rng: (0x853C_49E6_748F_EA9B ^ capacity).max(1),
            known: (NIL, 0),
            fresh: (NIL, 0),
        };
        policy.set_window((capacity as f64 * INITIAL_WINDOW) as u64);
        policy.initial_window = policy.window_max;
        policy.margin = admission::ADMIT_MARGIN;
        policy
    }

    /// Sets the climber's window (at most the capacity) and applies it with
    /// the ghosts' nudge.
    fn set_window(&mut self, climbed: u64) {
        self.climbed = climbed.min(self.capacity);
        self.apply_window();
    }

    /// Moves the ghosts' nudge by `by` units of weight, within its bound.
    fn nudge_window(&mut self, by: i64) {
        let bound = (GHOST_NUDGE_CAP * self.capacity as f64) as i64;
        self.nudge = self.nudge.saturating_add(by).clamp(-bound, bound);
        self.apply_window();
    }

    /// The window limit from the climber's window and the nudge: at least
    /// one unit, so a new entry of one unit always has a predecessor to push
    /// out of the window and into an admission contest (with a window of
    /// zero the new entry itself would contest at every insert).
    fn apply_window(&mut self) {
        let window = self.climbed.saturating_add_signed(self.nudge);
        self.window_max = window.max(1).min(self.capacity.saturating_sub(1));
        self.protected_max = ((self.capacity - self.window_max) as f64 * PROTECTED_SHARE) as u64;
        self.margin = admission::margin_for(self.window_max, self.initial_window, self.capacity);
    }

    #[inline]
    fn region(token: Token, entries: &impl Entries) -> Region {
        Region::of(entries.meta(token))
    }

    /// A resident's count: see [`REGION_BITS`].
    #[inline]
    fn count_of(token: Token, entries: &impl Entries) -> u8 {
        entries.meta(token) >> COUNT_SHIFT
    }

    /// Moves a resident to `region`, keeping its count.
    #[inline]
    fn set_region(token: Token, region: Region, entries: &impl Entries) {
        let m = entries.meta(token);
        entries.set_meta(token, (m & !REGION_BITS) | region as u8);
    }

    pub(super) fn total(&self) -> u64 {
        self.window_weight + self.probation_weight + self.protected_weight
    }

    /// Counts a sighting in the sketch (once the shard is half full); returns
    /// the estimate after it (0 without a sketch).
    #[inline]
    fn count(&mut self, hash: u64, entries: &impl Entries) -> u8 {
        if self.sketch.is_none() && self.total() >= self.capacity / 2 {
            self.start_counting();
        }
        let Some(sketch) = &mut self.sketch else {
            return 0;
        };
        let (estimate, aged) = sketch.increment(hash);
        if aged {
            self.on_aged(entries);
            return estimate / 2;
        }
        estimate
    }

    /// Sizes the sketch, the ghosts and the climber's sample periods by the
    /// entries the shard will hold when full, estimated now that it is half
    /// full: the capacity for unweighted entries, the capacity over the mean
    /// weight for weighted ones (a capacity in bytes must not size them), and
    /// at least the entries it holds. Called again, from
    /// [`on_aged`](Self::on_aged), when a weighted shard comes to hold more
    /// entries than the sketch has words (its first entries were heavier
    /// than the ones that followed): as Caffeine grows its sketch with the
    /// entries, the counts start over in a larger sketch.
    #[cold]
    fn start_counting(&mut self) {
        self.count_for(self.entries_when_full());
    }

    /// Sizes the sketch, the ghosts and the climber's periods for `entries`.
    #[cold]
    fn count_for(&mut self, entries: u64) {
        self.sketch = Some(Sketch::new(entries));
        self.lines_moved = true;
        self.ghosts = Ghosts::new((entries as f64 * GHOST_SHARE) as usize);
        self.climber.set_samples(entries);
    }

    /// The entries the shard will hold when full, by the entries and the
    /// weight it holds now (see [`start_counting`](Self::start_counting)).
    fn entries_when_full(&self) -> u64 {
        let count = self.window.len() + self.probation.len() + self.protected.len();
        (u128::from(self.capacity) * u128::from(count) / u128::from(self.total().max(1)))
            .max(u128::from(count))
            .clamp(1, u128::from(self.capacity.max(1))) as u64
    }

    /// The sketch aged: the residents' counts halve with its counters, and a
    /// shard holding more entries than the sketch has words (one per entry
    /// when sized, rounded up to a power of two) sizes the counting anew if
    /// that makes the sketch larger (see
    /// [`start_counting`](Self::start_counting)), as Caffeine grows its
    /// sketch. Checked here, once a sample period, the hot paths pay nothing
    /// for it: a period is ten times the entries sized for, so a shard
    /// growing from a few entries to many resizes a handful of times on the
    /// way, and one whose entries hold steady not at all. A resize sizes for
    /// at most twice the entries held.
    #[cold]
    #[inline(never)]
    fn on_aged(&mut self, entries: &impl Entries) {
        halve_counts(entries);
        let count = self.window.len() + self.probation.len() + self.protected.len();
        let words = self.sketch.as_ref().map_or(0, Sketch::words);
        if count as usize <= words {
            return;
        }
        // Extrapolated from the weight held only up to twice the entries
        // held: at half full the estimate is within that anyway, but a
        // shard nearly empty (its heavy entries gone) would otherwise take
        // its few light ones for a full shard's worth.
        let entries = self.entries_when_full().min(2 * u64::from(count));
        if Sketch::words_for(entries) > words {
            self.count_for(entries);
        }
    }

    /// Starts fetching what inserting a new key under `hash` will read that
    /// is seldom cached: the key's sketch line, and for the window's oldest
    /// entry, the next candidate for main, its ghost slot and the neighbour
    /// that taking it off the window rewrites. On the throughput benchmark's
    /// mix (one thread; two caches in one process taking turns, one with the
    /// prefetches and one without), these and the lookup's prefetch of the
    /// sketch line take 7% off the time per operation (median of the paired
    /// ratios 0.87–1.01 over ten runs, mean 0.93).
    ///
    /// The candidate's hash, needed for its ghost slot, is kept: its contest
    /// and its eviction use it instead of hashing the key again. It is
    /// returned too, for the store to prefetch the candidate's table bucket.
    #[inline]
    pub(crate) fn prefetch_insert(&mut self, hash: u64, entries: &impl Entries) -> Option<u64> {
        let Some(sketch) = &self.sketch else {
            return None;
        };
        sketch.prefetch(hash);
        if let Some(candidate) = self.window.head() {
            let (_, next) = entries.link(candidate);
            if next != NIL {
                entries.prefetch(next);
            }
            let hash = self.hash_of(candidate, entries);
            self.known = (candidate, hash);
            self.ghosts.prefetch(hash);
            return Some(hash);
        }
        None
    }

    /// The hash of a resident token's key, if it was computed already.
    #[inline]
    pub(crate) fn known_hash(&self, token: Token) -> Option<u64> {
        (self.known.0 == token).then_some(self.known.1)
    }

    /// The hash of a resident token's key.
    #[inline]
    fn hash_of(&self, token: Token, entries: &impl Entries) -> u64 {
        self.known_hash(token)
            .unwrap_or_else(|| entries.hash(token))
    }

    /// Where the sketch lies, once the shard counts.
    pub(crate) fn sketch_lines(&self) -> super::SketchLines {
        self.sketch
            .as_ref()
            .map_or_else(Default::default, Sketch::lines)
    }

    /// Hits on this shard since the last write, for the climber.
    pub(crate) fn on_hits(&mut self, hits: u64) {
        self.climber.hits += hits;
    }

    pub(crate) fn on_insert(&mut self, token: Token, hash: u64, entries: &impl Entries) {
        let weight = u64::from(entries.weight(token));
        self.window.push_back(&mut { entries }, token);
        self.window_weight += weight;
        // Counted already by the store; left pending only by a unit test
        // that skips `count_fresh`, or by a panic in the user's hash.
        if self.fresh.0 != NIL {
            self.count_pending(entries);
        }
        entries.set_meta(token, Region::Window as u8);
        self.fresh = (token, hash);
        self.climber.misses += 1;
        self.climb(entries);
    }

    /// Counts the entry inserted last in the sketch and gives it its count.
    ///
    /// The store calls this after the insert's evictions, not in
    /// [`on_insert`](Self::on_insert): the new key's sketch line, whose fetch
    /// began when its lookup missed (see [`prefetch_insert`](Self::prefetch_insert)),
    /// then has the evictions' work to arrive behind instead of stalling the
    /// insert at once. The new entry sits in the window, where its count is
    /// not read until it leaves, so nothing reads the count before it is
    /// set; should the insert's evictions make it a candidate (it is heavier
    /// than the window), it is counted then (see `admission`). Sampling the throughput benchmark's
    /// mix on one thread with `perf record -e cpu-clock`, the load waiting on
    /// that line fell from about 5% of all samples to under 2%.
    #[inline]
    pub(crate) fn count_fresh(&mut self, entries: &impl Entries) {
        let (token, hash) = self.fresh;
        if token == NIL {
            return;
        }
        self.fresh = (NIL, 0);
        let count = self.count(hash, entries);
        let m = entries.meta(token);
        entries.set_meta(token, (m & (REGION_BITS | READ)) | count << COUNT_SHIFT);
    }

    /// Takes back a resident entry whose weight rose from 0 (the store keeps
    /// entries of weight 0 out of the policy): into the window, as a new
    /// entry, but with no sighting counted, no miss for the climber and no
    /// read: its count is the sketch's estimate, which its leaving raised to
    /// the count it had (see [`on_remove`](Self::on_remove)), and the reads
    /// it noted while out are dropped. A weight that flips between 0 and
    /// more so gains its key nothing.
    pub(crate) fn on_rejoin(&mut self, token: Token, hash: u64, entries: &impl Entries) {
        let weight = u64::from(entries.weight(token));
        self.window.push_back(&mut { entries }, token);
        self.window_weight += weight;
        let count = self.sketch.as_ref().map_or(0, |s| s.frequency(hash));
        entries.set_meta(token, Region::Window as u8 | count << COUNT_SHIFT);
        entries.take_hits(token);
    }

    /// [`count_fresh`](Self::count_fresh) for an insert that finds the last
    /// one's count still pending, out of line: inlined into
    /// [`on_insert`](Self::on_insert), the sketch's increment made every
    /// insert save and restore the registers it needs (65 → 54 instructions
    /// per `on_insert`, `examples/insert_cost.rs` under callgrind).
    #[cold]
    #[inline(never)]
    fn count_pending(&mut self, entries: &impl Entries) {
        self.count_fresh(entries);
    }

    /// A read that reached the policy directly (an update of the value): noted
    /// on the entry like any other read, collected when the entry is next looked at.
    pub(crate) fn on_access(&mut self, token: Token, entries: &impl Entries) {
        entries.touch(token);
    }

    /// Collects the reads `token` noted since the policy last looked: they go
    /// to its count, and towards the sketch's sample period. True when there
    /// were any.
    #[inline(always)]
    fn collect(&mut self, token: Token, entries: &impl Entries) -> bool {
        let hits = entries.take_hits(token);
        if hits == 0 {
            return false;
        }
        let m = entries.meta(token);
        let count = ((m >> COUNT_SHIFT) as u32 + u32::from(hits)).min(15) as u8;
        entries.set_meta(token, (m & REGION_BITS) | READ | count << COUNT_SHIFT);
        if self.sketch.as_mut().is_some_and(|sketch| sketch.note(hits)) {
            self.on_aged(entries);
        }
        true
    }

    pub(crate) fn on_reweigh(&mut self, token: Token, old: u32, new: u32, entries: &impl Entries) {
        let region = Self::region(token, entries);
        if region != Region::Absent {
            let (_, total) = self.region_mut(region);
            *total = *total - u64::from(old) + u64::from(new);
        }
    }

    /// Takes `token` (of key hash `hash`) off its list. A key read while
    /// resident hands its count back to the sketch, so that it competes with
    /// it if it comes back.
    ///
    /// Inlined into the store's `unlink`, its one caller, which has saved
    /// the registers already: 18 instructions fewer per evicting insert
    /// (`examples/insert_cost.rs` under callgrind), 2.3 per operation of
    /// the throughput mix (`examples/mix_cost.rs`). Always: with the LRU's
    /// and LFU's removals beside it in [`Policy::on_remove`](super::Policy::on_remove), a plain
    /// hint no longer got it inlined (2.5 instructions more per operation).
    #[inline(always)]
    pub(crate) fn on_remove(&mut self, token: Token, hash: u64, entries: &impl Entries) {
        let meta = entries.meta(token);
        let region = Region::of(meta);
        if region == Region::Absent {
            return;
        }
        let weight = u64::from(entries.weight(token));
        let (list, total) = self.region_mut(region);
        list.unlink(&mut { entries }, token);
        *total -= weight;
        entries.set_meta(token, 0);
        if meta & READ != 0 {
            if let Some(sketch) = &mut self.sketch {
                sketch.raise(hash, meta >> COUNT_SHIFT);
            }
        }
        if self.known.0 == token {
            self.known = (NIL, 0);
        }
        if self.fresh.0 == token {
            self.fresh = (NIL, 0);
        }
    }

    /// A region's list and weight.
    #[inline]
    fn region_mut(&mut self, region: Region) -> (&mut List, &mut u64) {
        match region {
            Region::Window => (&mut self.window, &mut self.window_weight),
            Region::Probation => (&mut self.probation, &mut self.probation_weight),
            Region::Protected => (&mut self.protected, &mut self.protected_weight),
            Region::Absent => unreachable!("absent tokens are on no list"),
        }
    }

    /// Moves `token` from the `from` region to the back of `to`.
    #[inline]
    fn relocate(
        &mut self,
        token: Token,
        weight: u64,
        from: Region,
        to: Region,
        entries: &impl Entries,
    ) {
        let (list, total) = self.region_mut(from);
        list.unlink(&mut { entries }, token);
        *total -= weight;
        let (list, total) = self.region_mut(to);
        list.push_back(&mut { entries }, token);
        *total += weight;
        Self::set_region(token, to, entries);
    }

    /// Moves protected overflow to probation; an entry read since the policy
    /// last looked goes to protected's back instead.
    fn demote_protected(&mut self, entries: &impl Entries) {
        while self.protected_weight > self.protected_max {
            let Some(token) = self.protected.head() else {
                break;
            };
            if self.collect(token, entries) {
                self.protected.move_to_back(&mut { entries }, token);
                continue;
            }
            let weight = u64::from(entries.weight(token));
            self.relocate(token, weight, Region::Protected, Region::Probation, entries);
        }
    }

    /// Applies the hill climber's decision at the end of a sample period.
    fn climb(&mut self, entries: &impl Entries) {
        if self.sketch.is_none() {
            self.climber.reset_sample();
            return;
        }
        if let Some(delta) = self.climber.adjustment(self.capacity) {
            self.set_window(self.climbed.saturating_add_signed(delta));
            self.demote_protected(entries);
        }
    }

    pub(crate) fn clear(&mut self) {
        *self = Self::new(self.capacity);
    }

    /// (window max, protected max, random state, the climber's window): the
    /// knobs a model must copy.
    #[cfg(test)]
    pub(super) fn tuning(&self) -> (u64, u64, u64, u64) {
        (self.window_max, self.protected_max, self.rng, self.climbed)
    }

    /// A resident's count and whether its reads are yet to reach the sketch.
    #[cfg(test)]
    pub(super) fn resident_count(token: Token, entries: &impl Entries) -> (u8, bool) {
        (
            Self::count_of(token, entries),
            entries.meta(token) & READ != 0,
        )
    }

    /// The three regions' tokens, oldest first.
    #[cfg(test)]
    pub(super) fn regions(&self, entries: &impl Entries) -> (Vec<Token>, Vec<Token>, Vec<Token>) {
        (
            self.window.tokens(&entries),
            self.probation.tokens(&entries),
            self.protected.tokens(&entries),
        )
    }

    /// Resident tokens in eviction order: probation, protected, then window.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn order(&self, entries: &impl Entries) -> Vec<Token> {
        let mut out = self.probation.tokens(&entries);
        out.extend(self.protected.tokens(&entries));
        out.extend(self.window.tokens(&entries));
        out
    }

    /// Region weights add up, every token is in the region it is listed in.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn validate(&self, entries: &impl Entries) {
        assert_eq!(
            self.fresh.0, NIL,
            "an insert's new entry left uncounted (count_fresh not called)"
        );
        for (list, region, weight) in [
            (&self.window, Region::Window, self.window_weight),
            (&self.probation, Region::Probation, self.probation_weight),
            (&self.protected, Region::Protected, self.protected_weight),
        ] {
            let tokens = list.tokens(&entries);
            for &t in &tokens {
                assert_eq!(
                    Self::region(t, entries),
                    region,
                    "token listed in the wrong region"
                );
            }
            let sum: u64 = tokens.iter().map(|&t| u64::from(entries.weight(t))).sum();
            assert_eq!(sum, weight, "{region:?} weight drifted");
        }
        let listed = self.window.len() + self.probation.len() + self.protected.len();
        let mut marked = 0;
        let mut unmarked_with_state = 0;
        entries.update_metas(|m| {
            if Region::of(m) != Region::Absent {
                marked += 1;
            } else if m != 0 {
                unmarked_with_state += 1;
            }
            m
        });
        assert_eq!(unmarked_with_state, 0, "a departed token kept its state");
        assert_eq!(listed as usize, marked, "region marks and lists disagree");
        assert!(self.window_max < self.capacity.max(1));
        if let Some(s) = &self.sketch {
            s.validate();
        }
    }
}

#[cfg(test)]
mod tests;
