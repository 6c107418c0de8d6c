//! A naive W-TinyLFU — three `Vec`s instead of intrusive lists, linear scans
//! instead of region marks — replayed step by step against the real policy
//! under random operations. Both share the sketch, the climber and the random
//! admission stream (all separately tested), so every decision must agree: the
//! same victim, the same region for every resident, the same window size.
//! Each side has its own copy of the entries' read counts, touched alike.

use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

use super::climber::Climber;
use super::ghosts::Ghosts;
use super::sketch::Sketch;
use super::tinylfu::{
    margin_for, TinyLfu, ADMIT_WARM_ONE_IN, ADMIT_WARM_THRESHOLD, GHOST_NUDGE_CAP, GHOST_SHARE,
    PROTECTED_SHARE,
};
use super::{slot_state_in, Entries, TestSlots};
use crate::store::Token;

/// Reads an entry holds before further reads are not counted (the store caps at
/// one; a higher cap here also exercises `Sketch::add`).
const CAP: u8 = 3;

struct Fake {
    weighted: bool,
    /// Distinct keys the tokens stand for (token modulo this), so that keys
    /// come back after they leave, as in a cache; `None`: every token is a
    /// new key.
    keys: Option<u32>,
    hits: RefCell<HashMap<Token, u8>>,
    slots: TestSlots,
}

impl Fake {
    fn new(weighted: bool, keys: Option<u32>) -> Self {
        Self {
            weighted,
            keys,
            hits: RefCell::default(),
            slots: TestSlots::default(),
        }
    }
}

impl Entries for Fake {
    fn hash(&self, token: Token) -> u64 {
        let key = self.keys.map_or(token, |keys| token % keys);
        u64::from(key).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xABCD
    }
    fn weight(&self, token: Token) -> u32 {
        if self.weighted {
            1 + token % 3
        } else {
            1
        }
    }
    fn take_hits(&self, token: Token) -> u8 {
        self.hits.borrow_mut().remove(&token).unwrap_or(0)
    }
    fn touch(&self, token: Token) {
        let mut hits = self.hits.borrow_mut();
        let h = hits.entry(token).or_insert(0);
        *h = (*h + 1).min(CAP);
    }
    slot_state_in!(slots);
}

struct Naive {
    window: Vec<Token>,
    probation: Vec<Token>,
    protected: Vec<Token>,
    capacity: u64,
    window_max: u64,
    /// The window at the start: the admission margin is 0 once the window
    /// has grown past it and a share of the capacity.
    initial_window: u64,
    protected_max: u64,
    /// The climber's window, and the ghosts' nudge on top of it.
    climbed: u64,
    nudge: i64,
    sketch: Option<Sketch>,
    climber: Climber,
    rng: u64,
    /// Residents' counts: the estimate when counted (after the insert's
    /// evictions) plus reads collected, halved when the sketch ages.
    counts: HashMap<Token, u8>,
    /// Residents with reads counted since they were inserted: they hand their
    /// count back to the sketch when they leave.
    read: Vec<Token>,
    /// Keys turned away, and keys main evicted: a turned-away key main
    /// evicted shrinks the window.
    ghosts: Ghosts,
    /// The entry inserted last, until it is counted.
    fresh: Option<Token>,
}

impl Naive {
    fn new(capacity: u64) -> Self {
        let reference = TinyLfu::new(capacity);
        let (window_max, protected_max, rng, climbed) = reference.tuning();
        Self {
            window: Vec::new(),
            probation: Vec::new(),
            protected: Vec::new(),
            capacity,
            window_max,
            initial_window: window_max,
            protected_max,
            climbed,
            nudge: 0,
            sketch: None,
            climber: Climber::new(capacity),
            rng,
            counts: HashMap::new(),
            read: Vec::new(),
            ghosts: Ghosts::default(),
            fresh: None,
        }
    }

    fn margin(&self) -> u8 {
        margin_for(self.window_max, self.initial_window, self.capacity)
    }

    fn weight(list: &[Token], e: &Fake) -> u64 {
        list.iter().map(|&t| u64::from(e.weight(t))).sum()
    }

    fn total(&self, e: &Fake) -> u64 {
        Self::weight(&self.window, e)
            + Self::weight(&self.probation, e)
            + Self::weight(&self.protected, e)
    }

    /// The window is the climber's plus the nudge, at least 1 and below the
    /// capacity; the climber's is at most the capacity, the nudge within
    /// ±5% of it.
    fn set_window(&mut self, climbed: u64) {
        self.climbed = climbed.min(self.capacity);
        let window = (self.climbed as i64 + self.nudge).max(0) as u64;
        self.window_max = window.max(1).min(self.capacity.saturating_sub(1));
        self.protected_max = ((self.capacity - self.window_max) as f64 * PROTECTED_SHARE) as u64;
    }

    fn nudge(&mut self, by: i64) {
        let bound = (GHOST_NUDGE_CAP * self.capacity as f64) as i64;
        self.nudge = (self.nudge + by).clamp(-bound, bound);
        self.set_window(self.climbed);
    }

    fn entries(&self) -> u64 {
        (self.window.len() + self.probation.len() + self.protected.len()) as u64
    }

    /// The entries when full: the capacity scaled by entries per weight
    /// unit, at least the entries held.
    fn entries_when_full(&self, e: &Fake) -> u64 {
        let count = self.entries();
        (self.capacity * count / self.total(e).max(1))
            .max(count)
            .clamp(1, self.capacity.max(1))
    }

    /// Sizes the counting for `entries`.
    fn size_counting(&mut self, entries: u64) {
        self.sketch = Some(Sketch::new(entries));
        self.ghosts = Ghosts::new((entries as f64 * GHOST_SHARE) as usize);
        self.climber.set_samples(entries);
    }

    /// The sketch aged: counts halve, and more entries than the sketch has
    /// words sizes the counting anew, for the entries when full but at most
    /// twice those held, if that makes the sketch larger.
    fn aged(&mut self, e: &Fake) {
        self.halve();
        let words = self.sketch.as_ref().map_or(0, Sketch::words);
        let entries = self.entries_when_full(e).min(2 * self.entries());
        if self.entries() > words as u64 && Sketch::words_for(entries) > words {
            self.size_counting(entries);
        }
    }

    fn count(&mut self, hash: u64, e: &Fake) -> u8 {
        if self.sketch.is_none() && self.total(e) >= self.capacity / 2 {
            self.size_counting(self.entries_when_full(e));
        }
        match &mut self.sketch {
            Some(s) => {
                let before = s.frequency(hash);
                let (_, aged) = s.increment(hash);
                // The estimate just after the sighting, halved with the
                // residents' counts if the sighting aged the sketch.
                let estimate = (before + 1).min(15);
                if aged {
                    self.aged(e);
                    estimate / 2
                } else {
                    estimate
                }
            }
            None => 0,
        }
    }

    fn halve(&mut self) {
        for c in self.counts.values_mut() {
            *c /= 2;
        }
    }

    fn climb(&mut self, e: &Fake) {
        if self.sketch.is_none() {
            self.climber.hits = 0;
            self.climber.misses = 0;
            return;
        }
        if let Some(delta) = self.climber.adjustment(self.capacity) {
            self.set_window((self.climbed as i64 + delta).max(0) as u64);
            self.demote(e);
        }
    }

    fn collect(&mut self, t: Token, e: &Fake) -> bool {
        let h = e.take_hits(t);
        if h > 0 {
            let c = self.counts.get_mut(&t).expect("a resident");
            *c = (u32::from(*c) + u32::from(h)).min(15) as u8;
            if !self.read.contains(&t) {
                self.read.push(t);
            }
            if self.sketch.as_mut().is_some_and(|s| s.note(h)) {
                self.aged(e);
            }
        }
        h > 0
    }

    fn demote(&mut self, e: &Fake) {
        while Self::weight(&self.protected, e) > self.protected_max && !self.protected.is_empty() {
            // Collected while still in protected: the sketch may age, and
            // resize by the entries held.
            let t = self.protected[0];
            let read = self.collect(t, e);
            self.protected.remove(0);
            if read {
                self.protected.push(t);
            } else {
                self.probation.push(t);
            }
        }
    }

    /// The new entry counts nothing until the insert's evictions are done
    /// (`count_fresh`).
    fn insert(&mut self, t: Token, e: &Fake) {
        self.window.push(t);
        self.counts.insert(t, 0);
        self.fresh = Some(t);
        self.climber.misses += 1;
        self.climb(e);
    }

    /// Counts `t` if it is the entry inserted last and still uncounted.
    fn count_fresh(&mut self, t: Token, e: &Fake) {
        if self.fresh == Some(t) {
            self.fresh = None;
            let count = self.count(e.hash(t), e);
            self.counts.insert(t, count);
        }
    }

    fn remove(&mut self, t: Token, e: &Fake) {
        if self.fresh == Some(t) {
            self.fresh = None;
        }
        let count = self.counts.remove(&t).expect("a resident");
        if self.read.contains(&t) {
            if let Some(s) = &mut self.sketch {
                s.raise(e.hash(t), count);
            }
        }
        for list in [
            &mut self.window,
            &mut self.probation,
            &mut self.protected,
            &mut self.read,
        ] {
            list.retain(|&x| x != t);
        }
    }

    /// The contest: the candidate's count against the victim's count or its
    /// key's estimate in the sketch, whichever is higher.
    fn admit(&mut self, c: Token, v: Token, e: &Fake) -> bool {
        let c = self.counts[&c];
        let estimate = self.sketch.as_ref().map_or(0, |s| s.frequency(e.hash(v)));
        let v = self.counts[&v].max(estimate);
        let margin = self.margin();
        if c > margin && u16::from(c) > u16::from(v) + u16::from(margin) {
            return true;
        }
        if c >= ADMIT_WARM_THRESHOLD {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            return self.rng % ADMIT_WARM_ONE_IN == 0;
        }
        false
    }

    /// Whether `w` fits in main once `v` leaves it, or weighs no more.
    fn fits_after(&self, w: u64, v: Token, e: &Fake) -> bool {
        let freed = u64::from(e.weight(v));
        let main = Self::weight(&self.probation, e) + Self::weight(&self.protected, e);
        w <= freed || main - freed + w <= self.capacity - self.window_max
    }

    fn main_victim(&mut self, keep: Token, e: &Fake) -> Option<Token> {
        let first = |list: &[Token]| list.iter().copied().find(|&t| t != keep);
        while let Some(t) = first(&self.probation) {
            if !self.collect(t, e) {
                return Some(t);
            }
            self.probation.retain(|&x| x != t);
            self.protected.push(t);
            self.demote(e);
        }
        while let Some(t) = first(&self.protected) {
            if !self.collect(t, e) {
                return Some(t);
            }
            self.protected.retain(|&x| x != t);
            self.protected.push(t);
        }
        None
    }

    fn victim(&mut self, keep: Token, e: &Fake) -> Option<Token> {
        let first = |list: &[Token]| list.iter().copied().find(|&t| t != keep);
        while Self::weight(&self.window, e) > self.window_max {
            // The window holding only `keep` (heavier than the window and
            // than a unit): `keep` contests, counted first.
            let c = match first(&self.window) {
                Some(c) => c,
                None if self.window == [keep] && e.weight(keep) > 1 => {
                    self.count_fresh(keep, e);
                    keep
                }
                None => break,
            };
            if self.collect(c, e) {
                self.window.retain(|&x| x != c);
                self.window.push(c);
                continue;
            }
            let w = u64::from(e.weight(c));
            let main_max = self.capacity - self.window_max;
            let room =
                Self::weight(&self.probation, e) + Self::weight(&self.protected, e) + w <= main_max;
            let to_probation = |n: &mut Self| {
                n.window.retain(|&x| x != c);
                n.probation.push(c);
            };
            if room {
                to_probation(self);
                continue;
            }
            // Contest (unless too rare to win one); a loser whose ghost is
            // kept is admitted all the same, one without a ghost leaves one.
            let mut victim = None;
            if self.counts[&c] > self.margin() {
                let Some(v) = self.main_victim(keep, e) else {
                    to_probation(self);
                    continue;
                };
                if self.admit(c, v, e) {
                    // A winner heavier than its victim that still would not
                    // fit stays in the window to contest the next one.
                    if self.fits_after(w, v, e) {
                        to_probation(self);
                    }
                    self.ghosts.remember_evicted(e.hash(v));
                    return Some(v);
                }
                victim = Some(v);
            }
            // Turned away: a key main evicted shrinks the window by its
            // weight; one turned away before is let in and grows it (up to
            // the cap).
            if self.ghosts.take_evicted(e.hash(c)) {
                self.nudge(-(w as i64));
            }
            if !self.ghosts.returned(e.hash(c)) {
                return Some(c);
            }
            self.nudge(w as i64);
            let victim = victim.or_else(|| self.main_victim(keep, e));
            // A ghost buys one victim's room: one that would still not fit
            // is turned away.
            if victim.is_some_and(|v| !self.fits_after(w, v, e)) {
                return Some(c);
            }
            to_probation(self);
            if let Some(v) = victim {
                self.ghosts.remember_evicted(e.hash(v));
                return Some(v);
            }
        }
        match self.main_victim(keep, e) {
            Some(v) => {
                self.ghosts.remember_evicted(e.hash(v));
                Some(v)
            }
            None => first(&self.window),
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Insert,
    Access(usize),
    Remove(usize),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        prop_oneof![
            3 => Just(Step::Insert),
            6 => any::<usize>().prop_map(Step::Access),
            1 => any::<usize>().prop_map(Step::Remove),
        ],
        1..1500,
    )
}

fn agree(
    capacity: u64,
    weighted: bool,
    keys: Option<u32>,
    steps: Vec<Step>,
) -> Result<(), TestCaseError> {
    let (real_entries, naive_entries) = (Fake::new(weighted, keys), Fake::new(weighted, keys));
    let mut real = TinyLfu::new(capacity);
    let mut naive = Naive::new(capacity);
    let mut resident: Vec<Token> = Vec::new();
    let mut next: Token = 0;
    // Hits since the last write, handed over as the store does when it next writes.
    let mut hits = 0;
    for step in steps {
        if !matches!(step, Step::Access(_)) && hits > 0 {
            real.on_hits(hits);
            naive.climber.hits += hits;
            hits = 0;
        }
        match step {
            Step::Insert => {
                let t = next;
                next += 1;
                real.on_insert(t, real_entries.hash(t), &real_entries);
                naive.insert(t, &naive_entries);
                resident.push(t);
                while real.total() > capacity {
                    let v = real.victim(t, &real_entries);
                    prop_assert_eq!(v, naive.victim(t, &naive_entries), "different victims");
                    let Some(v) = v else { break };
                    real.on_remove(v, real_entries.hash(v), &real_entries);
                    naive.remove(v, &naive_entries);
                    // The slab entry goes, and its read count with it.
                    real_entries.take_hits(v);
                    naive_entries.take_hits(v);
                    resident.retain(|&x| x != v);
                }
                // As the store does: the new key is counted after the evictions.
                real.count_fresh(&real_entries);
                naive.count_fresh(t, &naive_entries);
            }
            Step::Access(i) if !resident.is_empty() => {
                let t = resident[i % resident.len()];
                real.on_access(t, &real_entries);
                naive_entries.touch(t);
                hits += 1;
            }
            Step::Remove(i) if !resident.is_empty() => {
                let t = resident.remove(i % resident.len());
                real.on_remove(t, real_entries.hash(t), &real_entries);
                naive.remove(t, &naive_entries);
                real_entries.take_hits(t);
                naive_entries.take_hits(t);
            }
            _ => {}
        }
        real.validate(&real_entries);
        let (window, probation, protected) = real.regions(&real_entries);
        prop_assert_eq!(&window, &naive.window);
        prop_assert_eq!(&probation, &naive.probation);
        prop_assert_eq!(&protected, &naive.protected);
        prop_assert_eq!(real.tuning().0, naive.window_max);
        prop_assert_eq!(&*real_entries.hits.borrow(), &*naive_entries.hits.borrow());
        let mut all: Vec<Token> = window
            .into_iter()
            .chain(probation)
            .chain(protected)
            .collect();
        all.sort_unstable();
        for &t in &all {
            let own = (naive.counts[&t], naive.read.contains(&t));
            prop_assert_eq!(
                TinyLfu::resident_count(t, &real_entries),
                own,
                "different counts"
            );
        }
        let mut expected = resident.clone();
        expected.sort_unstable();
        prop_assert_eq!(all, expected);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn matches_naive_model(capacity in 2u64..64, steps in steps()) {
        agree(capacity, false, None, steps)?;
    }

    #[test]
    fn matches_naive_model_weighted(capacity in 4u64..64, steps in steps()) {
        agree(capacity, true, None, steps)?;
    }

    /// Keys come back after they leave: ghosts admit some of them, with and
    /// without a contest, and with main empty or not.
    #[test]
    fn matches_naive_model_with_returning_keys(
        capacity in 2u64..64,
        spread in 2u32..5,
        weighted in any::<bool>(),
        steps in steps(),
    ) {
        let capacity = if weighted { capacity.max(4) } else { capacity };
        agree(capacity, weighted, Some(capacity as u32 * spread), steps)?;
    }
}
