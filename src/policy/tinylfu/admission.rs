//! Admission into main: a candidate leaving the window contests the probation
//! victim, and the ghosts let a key turned away a short while ago in after all.

use super::{Region, TinyLfu};
use crate::policy::list::{List, NIL};
use crate::policy::Entries;
use crate::store::Token;

/// A candidate must beat the victim's estimate by more than this to replace it:
/// ties and near-ties go to the incumbent. Caffeine admits on any strict win;
/// giving incumbents one count of advantage stops a loop or a scan longer than
/// the sketch's memory from churning the cache (loop and scan at 5% of their
/// keys go from 0 hits to 4.1% and 3.3%, cs 5% from 1.8% to 4.5%), at a cost on
/// recency-biased traces (P3 20% −2.2, P12 20% −1.0): +0.3 on the 30-case mean.
/// The margin applies until the window has grown (see [`RECENCY_WINDOW`]).
pub(in crate::policy) const ADMIT_MARGIN: u8 = 1;

/// Once the window has grown past both its start and this share of the
/// capacity (`1 / RECENCY_WINDOW` of it: 2%), the workload has shown
/// recency (the climber or the ghosts grew the window), and ties go to the
/// candidate: the margin is 0, as in Caffeine. Below it, incumbents keep
/// their margin against loops and scans. On the 30 trace cases
/// (`hitratio --percent 5,20 --only "larder TinyLfu"`), nine runs of this
/// rule read 46.63–46.70 (mean 46.68), against 46.60 / 46.62 / 46.60 /
/// 46.60 with a fixed margin; a share of 2.5% read 46.66–46.67, and a
/// share of 1.5% without the start's condition 46.52 / 46.56. Against the
/// fixed margin, four runs each: cloudPhysicsIO at 20% +1.4, scarab-recs at
/// 20% +0.35, OLTP +0.25 and +0.23, sprite +0.23 and +0.22; multi2 at 20%
/// −0.39, cs at 5% −0.28.
pub(in crate::policy) const RECENCY_WINDOW: u64 = 50;

/// The admission margin for a window of `window` out of `capacity`, whose
/// window started at `initial` (see [`RECENCY_WINDOW`]).
#[inline]
pub(in crate::policy) fn margin_for(window: u64, initial: u64, capacity: u64) -> u8 {
    if window > initial && window.saturating_mul(RECENCY_WINDOW) > capacity {
        0
    } else {
        ADMIT_MARGIN
    }
}

/// A warm candidate that loses its contest is still admitted one time in 128,
/// so an attacker who inflates a victim's counters cannot freeze the cache.
pub(in crate::policy) const ADMIT_WARM_THRESHOLD: u8 = 6;
pub(in crate::policy) const ADMIT_WARM_ONE_IN: u64 = 128;

impl TinyLfu {
    /// Chooses the next entry to evict (`keep` only as below), moving window overflow
    /// into main and settling admission contests on the way. Entries read since
    /// the policy last looked get a second chance where they stand: a window
    /// entry goes to the window's back, a probation entry is promoted.
    ///
    /// `keep`, the entry just written, is a candidate too when the window
    /// holds nothing else and it alone is over the window's limit (it is
    /// heavier than the window): it contests for room at once, as Caffeine's
    /// candidates do, and may be the victim. Otherwise a heavy newcomer would
    /// go straight past admission, evicting from main until it fitted.
    pub(crate) fn victim(&mut self, keep: Token, entries: &impl Entries) -> Option<Token> {
        while self.window_weight > self.window_max {
            let candidate = match first_other(&self.window, entries, keep) {
                Some(candidate) => candidate,
                None => match self.lone_candidate(keep, entries) {
                    Some(candidate) => candidate,
                    None => break,
                },
            };
            if self.collect(candidate, entries) {
                self.window.move_to_back(&mut { entries }, candidate);
                continue;
            }
            let weight = u64::from(entries.weight(candidate));
            let main_max = self.capacity - self.window_max;
            let room = self.probation_weight + self.protected_weight + weight <= main_max;
            if room {
                self.enter_main(candidate, weight, entries);
                continue;
            }
            // A candidate too rare to beat even an unseen victim (the common
            // one-hit wonder) loses without a victim being looked for; one
            // that loses either way is still admitted if its ghost says it
            // was turned away a short while ago.
            let mut victim = None;
            if Self::count_of(candidate, entries) > self.margin {
                let Some(v) = self.main_victim(keep, entries) else {
                    // Main holds nothing to contest: in without one.
                    self.enter_main(candidate, weight, entries);
                    continue;
                };
                // Looking for the victim may have aged the counts.
                let count = Self::count_of(candidate, entries);
                if self.admit(count, v, entries) {
                    // A candidate heavier than its victim that would still
                    // not fit once the victim is gone stays the window's
                    // oldest, to contest the next victim too.
                    if self.fits_after(weight, v, entries) {
                        self.enter_main(candidate, weight, entries);
                    }
                    return Some(self.evict_from_main(v, entries));
                }
                victim = Some(v);
            }
            // Turned away: the ghosts steer the window, and a key turned
            // away a short while ago is let in after all.
            let hash = self.hash_of(candidate, entries);
            // A weight is at most `MAX_WEIGHT`, far below `i64::MAX`.
            let units = weight as i64;
            if self.ghosts.take_evicted(hash) {
                self.nudge_window(-units);
            }
            if !self.ghosts.returned(hash) {
                return Some(candidate);
            }
            self.nudge_window(units);
            let victim = victim.or_else(|| self.main_victim(keep, entries));
            // A ghost buys the room one victim frees, not a sweep of main: a
            // candidate that would still not fit is turned away after all.
            if victim.is_some_and(|v| !self.fits_after(weight, v, entries)) {
                return Some(candidate);
            }
            self.enter_main(candidate, weight, entries);
            if let Some(v) = victim {
                return Some(self.evict_from_main(v, entries));
            }
        }
        match self.main_victim(keep, entries) {
            Some(v) => Some(self.evict_from_main(v, entries)),
            None => first_other(&self.window, entries, keep),
        }
    }

    /// `keep` as the window's candidate, when the window holds it alone (see
    /// [`victim`](Self::victim)) and it weighs more than a unit: counted in
    /// the sketch first if it is the new entry still uncounted, as its count
    /// is about to be read. An entry of one unit never is (only a shard of
    /// capacity 1 has a window below one unit, and there a new entry would
    /// otherwise contest, and may lose, at every insert).
    #[cold]
    #[inline(never)]
    fn lone_candidate(&mut self, keep: Token, entries: &impl Entries) -> Option<Token> {
        if keep == NIL || entries.weight(keep) <= 1 || Self::region(keep, entries) != Region::Window
        {
            return None;
        }
        if self.fresh.0 == keep {
            self.count_fresh(entries);
        }
        Some(keep)
    }

    /// Whether a candidate of `weight` fits in main once `victim` (in main)
    /// is gone, or weighs no more than it.
    #[inline]
    fn fits_after(&self, weight: u64, victim: Token, entries: &impl Entries) -> bool {
        let freed = u64::from(entries.weight(victim));
        let main = self.probation_weight + self.protected_weight;
        weight <= freed || main - freed + weight <= self.capacity - self.window_max
    }

    /// Moves the window's `candidate` (of `weight`) to probation's back.
    #[inline]
    fn enter_main(&mut self, candidate: Token, weight: u64, entries: &impl Entries) {
        self.relocate(
            candidate,
            weight,
            Region::Window,
            Region::Probation,
            entries,
        );
    }

    /// Main's victim `token`, its key remembered among the evicted.
    #[inline]
    fn evict_from_main(&mut self, token: Token, entries: &impl Entries) -> Token {
        let hash = self.hash_of(token, entries);
        self.ghosts.remember_evicted(hash);
        token
    }

    /// The first entry of probation (else protected) not read since the policy
    /// last looked, promoting the ones that were.
    fn main_victim(&mut self, keep: Token, entries: &impl Entries) -> Option<Token> {
        while let Some(t) = first_other(&self.probation, entries, keep) {
            if !self.collect(t, entries) {
                return Some(t);
            }
            let weight = u64::from(entries.weight(t));
            self.relocate(t, weight, Region::Probation, Region::Protected, entries);
            self.demote_protected(entries);
        }
        while let Some(t) = first_other(&self.protected, entries, keep) {
            if !self.collect(t, entries) {
                return Some(t);
            }
            self.protected.move_to_back(&mut { entries }, t);
        }
        None
    }

    /// The admission contest: the candidate's count against the victim's. The
    /// victim's is its own count or the sketch's estimate for its key, which
    /// ever is higher: the estimate counts the collisions an unread resident's
    /// own count has aged past, which keeps ties with newcomers on a sketch
    /// saturated by a loop or a scan, so incumbents win them. The estimate is
    /// read only when the victim's own count would lose.
    pub(super) fn admit(&mut self, candidate: u8, victim: Token, entries: &impl Entries) -> bool {
        let margin = self.margin;
        let beats = |count: u8| candidate > margin.max(count.saturating_add(margin));
        if beats(Self::count_of(victim, entries)) {
            let hash = self.hash_of(victim, entries);
            let estimate = self.sketch.as_ref().map_or(0, |s| s.frequency(hash));
            if beats(estimate) {
                // Evicted next: its removal needs the hash too.
                self.known = (victim, hash);
                return true;
            }
        }
        candidate >= ADMIT_WARM_THRESHOLD && self.warm_loser_admitted()
    }

    /// True one time in [`ADMIT_WARM_ONE_IN`], at random.
    #[inline]
    pub(super) fn warm_loser_admitted(&mut self) -> bool {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % ADMIT_WARM_ONE_IN == 0
    }
}

/// The first token of `list` that is not `keep`.
#[inline]
fn first_other(list: &List, entries: &impl Entries, keep: Token) -> Option<Token> {
    let head = list.head()?;
    if head != keep {
        return Some(head);
    }
    next_of(head, entries)
}

/// The token after `token` on its list. Out of line: inlined, it had the
/// loops of `victim` and `main_victim` work out the address of `keep`'s
/// slot before they start and keep it on the stack, for a head that is
/// seldom `keep` (6 instructions per evicting insert, 1.3 per operation of
/// the throughput mix, under callgrind).
#[inline(never)]
fn next_of(token: Token, entries: &impl Entries) -> Option<Token> {
    let (_, next) = entries.link(token);
    (next != NIL).then_some(next)
}
