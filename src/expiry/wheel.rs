//! A hierarchical timer wheel over slab tokens (Varghese & Lauck, "Hashed and
//! Hierarchical Timing Wheels", 1987, in the layout tokio's timer uses).
//!
//! Pure: it is told the time in ticks and never reads a clock. Six levels of 64
//! slots; a slot of level `l` spans `64^l` ticks, so level 0 resolves single
//! ticks and the levels together span `64^6` ticks (about 2.3 years at the
//! crate's 1.05 ms tick). A deadline past that is parked and filed again each
//! time the top level turns over.
//!
//! Each level keeps a 64-bit occupancy map, so the next slot due is found with a
//! rotate and a trailing-zeros count, never a scan. A token sits on one
//! intrusive list (a slot, the parked list or the due list) over the same `u32`
//! links as the eviction policies, so schedule, reschedule and cancel are O(1).
//!
//! Invariant (as in tokio): an entry filed at level `l` differs from the wheel's
//! time first in its level-`l` digit, so every entry of a lower level is due
//! before every entry of a higher one, and the first occupied level holds the
//! next slot due. `advance` keeps it by processing every slot that starts at or
//! before `now` — spilling a higher level's slot into lower levels — before it
//! moves the wheel's time to `now`.

use crate::policy::list::{Links, List, NIL};
use crate::store::Token;

const LEVELS: usize = 6;
const SLOT_BITS: usize = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// Ticks spanned by all the levels together.
const SPAN: u64 = 1 << (SLOT_BITS * LEVELS);

/// Where a token is filed: `level * SLOTS + slot`, or one of these.
const UNFILED: u16 = u16::MAX;
const PARKED: u16 = u16::MAX - 1;
const DUE: u16 = u16::MAX - 2;
/// Parked, on the list being filed again at a turn of the top level.
const REFILING: u16 = u16::MAX - 3;

/// The level index `next` uses for the parked list.
const PARKED_LEVEL: usize = LEVELS;

#[derive(Debug)]
pub(crate) struct Wheel {
    /// The wheel's time, in ticks: every token due at or before it has been
    /// moved to the due list.
    elapsed: u64,
    /// `LEVELS * SLOTS` lists, allocated when the first token is filed (4.6
    /// KB a shard: a cache with expiry whose shard holds no deadline yet
    /// pays nothing for it).
    slots: Vec<List>,
    occupied: [u64; LEVELS],
    parked: List,
    /// At most the earliest parked deadline (`u64::MAX` when none): the wheel
    /// jumps straight to its turn of the top level instead of visiting every
    /// turn in between.
    parked_min: u64,
    /// The parked tokens being filed again (so that a token parked once more
    /// lands on `parked`, not on the list being emptied).
    refiling: List,
    /// Tokens whose deadline has passed, waiting to be handed out: in
    /// deadline order, but for those found due as a slot is spilled (see
    /// [`advance`](Self::advance)).
    due: List,
    /// The latest time `advance` was asked to move to: every token on `due`
    /// is due by it.
    horizon: u64,
    /// A slot of a level above 0 (or the parked list) that `advance` started to
    /// spill and must finish before it looks at anything else.
    spilling: Option<(usize, usize)>,
    links: Links,
    when: Vec<u64>,
    place: Vec<u16>,
    len: usize,
}

impl Default for Wheel {
    fn default() -> Self {
        Self {
            elapsed: 0,
            slots: Vec::new(),
            occupied: [0; LEVELS],
            parked: List::default(),
            parked_min: u64::MAX,
            refiling: List::default(),
            due: List::default(),
            horizon: 0,
            spilling: None,
            links: Links::default(),
            when: Vec::new(),
            place: Vec::new(),
            len: 0,
        }
    }
}

/// The level and slot for a deadline `when` at wheel time `elapsed`, or `None`
/// when it lies beyond the top level.
fn slot_for(elapsed: u64, when: u64) -> Option<(usize, usize)> {
    let masked = (elapsed ^ when) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros() as usize;
    let level = significant / SLOT_BITS;
    (level < LEVELS).then(|| {
        (
            level,
            ((when >> (level * SLOT_BITS)) as usize) & (SLOTS - 1),
        )
    })
}

impl Wheel {
    /// Whether a slot's deadlines are being moved down, with some left.
    #[cfg(test)]
    pub(crate) fn is_spilling(&self) -> bool {
        self.spilling.is_some()
    }

    /// The wheel's time in ticks.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Tokens filed.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether `token` is filed.
    pub(crate) fn is_filed(&self, token: Token) -> bool {
        self.place
            .get(token as usize)
            .is_some_and(|&p| p != UNFILED)
    }

    /// The deadline `token` is filed under, if it is filed.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn deadline(&self, token: Token) -> Option<u64> {
        let i = token as usize;
        (self.place.get(i).is_some_and(|&p| p != UNFILED)).then(|| self.when[i])
    }

    /// Files `token` to come due at tick `when`, replacing any earlier filing.
    /// A deadline at or before the wheel's time is due at the next `advance`.
    pub(crate) fn schedule(&mut self, token: Token, when: u64) {
        self.cancel(token);
        let i = token as usize;
        if self.place.len() <= i {
            self.place.resize(i + 1, UNFILED);
            self.when.resize(i + 1, 0);
        }
        self.when[i] = when.max(self.elapsed);
        self.len += 1;
        self.file(token);
    }

    /// Takes `token` off the wheel; nothing happens if it is not filed.
    pub(crate) fn cancel(&mut self, token: Token) {
        let Some(&place) = self.place.get(token as usize) else {
            return;
        };
        match place {
            UNFILED => return,
            PARKED => self.parked.unlink(&mut self.links, token),
            REFILING => self.refiling.unlink(&mut self.links, token),
            DUE => self.due.unlink(&mut self.links, token),
            p => {
                let (level, slot) = (p as usize / SLOTS, p as usize % SLOTS);
                let list = &mut self.slots[p as usize];
                list.unlink(&mut self.links, token);
                if list.is_empty() {
                    self.occupied[level] &= !(1 << slot);
                }
            }
        }
        self.place[token as usize] = UNFILED;
        self.len -= 1;
    }

    /// Files a token whose `when` is set and at or after the wheel's time.
    fn file(&mut self, token: Token) {
        let when = self.when[token as usize];
        let place = match slot_for(self.elapsed, when) {
            Some((level, slot)) => {
                if self.slots.is_empty() {
                    self.slots = vec![List::default(); LEVELS * SLOTS];
                }
                self.slots[level * SLOTS + slot].push_back(&mut self.links, token);
                self.occupied[level] |= 1 << slot;
                (level * SLOTS + slot) as u16
            }
            None => {
                self.parked.push_back(&mut self.links, token);
                self.parked_min = self.parked_min.min(when);
                PARKED
            }
        };
        self.place[token as usize] = place;
    }

    /// The next slot to process and the tick it starts at: the first occupied
    /// slot of the lowest occupied level, else the parked list at the turn of
    /// the top level that holds its earliest deadline (every level is empty
    /// then, so the wheel may jump there).
    fn next(&self) -> Option<(usize, usize, u64)> {
        for (level, &occupied) in self.occupied.iter().enumerate() {
            if occupied == 0 {
                continue;
            }
            let shift = level * SLOT_BITS;
            let now_slot = ((self.elapsed >> shift) as usize) & (SLOTS - 1);
            let slot = (now_slot
                + occupied.rotate_right(now_slot as u32).trailing_zeros() as usize)
                & (SLOTS - 1);
            debug_assert!(slot >= now_slot, "a slot behind the wheel's time");
            let level_start = self.elapsed & !((SLOTS as u64) << shift).wrapping_sub(1);
            return Some((level, slot, level_start + ((slot as u64) << shift)));
        }
        if self.parked.is_empty() {
            return None;
        }
        let next_turn = (self.elapsed | (SPAN - 1)).saturating_add(1);
        Some((
            PARKED_LEVEL,
            0,
            next_turn.max(self.parked_min & !(SPAN - 1)),
        ))
    }

    /// Moves the wheel to `now`, appending tokens whose deadline is at or before
    /// `now` to `out`. Does at most `budget` units of work — a token handed
    /// out or moved down a level — and returns true when it stopped on the
    /// budget with more due: call again to go on.
    ///
    /// Tokens come out in deadline order (those due in the same tick in no
    /// particular order), but for those found due as a slot above level 0 is
    /// spilled, which come out as found: a wheel left behind by the clock
    /// (no write to its shard for a while) would otherwise move each of them
    /// down every level below its slot before handing it out, and a write
    /// that needs room, whose share of the wheel's work is bounded, would
    /// evict live entries while hundreds of expired ones were still on their
    /// way down (1,500 expiring together cost 8 live entries over 20 writes;
    /// one write of weight 1,000 evicted 399). Nothing reads the order of
    /// tokens that are all due.
    pub(crate) fn advance(&mut self, now: u64, budget: usize, out: &mut Vec<Token>) -> bool {
        let mut work = 0;
        self.horizon = self.horizon.max(now);
        loop {
            while let Some(token) = self.due.head() {
                if work >= budget {
                    return true;
                }
                self.due.unlink(&mut self.links, token);
                self.place[token as usize] = UNFILED;
                self.len -= 1;
                out.push(token);
                work += 1;
            }
            if let Some((level, slot)) = self.spilling {
                let list = if level == PARKED_LEVEL {
                    &mut self.refiling
                } else {
                    &mut self.slots[level * SLOTS + slot]
                };
                let Some(token) = list.head() else {
                    if level != PARKED_LEVEL {
                        self.occupied[level] &= !(1 << slot);
                    }
                    self.spilling = None;
                    continue;
                };
                if work >= budget {
                    return true;
                }
                list.unlink(&mut self.links, token);
                if list.is_empty() {
                    // Done with now: the token may go to the due list, whose
                    // handing out may stop on the budget first.
                    if level != PARKED_LEVEL {
                        self.occupied[level] &= !(1 << slot);
                    }
                    self.spilling = None;
                }
                if self.when[token as usize] <= now {
                    self.due.push_back(&mut self.links, token);
                    self.place[token as usize] = DUE;
                } else {
                    self.file(token);
                }
                work += 1;
                continue;
            }
            match self.next() {
                Some((level, slot, start)) if start <= now => {
                    self.elapsed = self.elapsed.max(start);
                    if level == 0 {
                        let list = &mut self.slots[slot];
                        let mut at = list.head().unwrap_or(NIL);
                        while at != NIL {
                            self.place[at as usize] = DUE;
                            at = self.links.next(at);
                        }
                        self.due.append(&mut self.links, list);
                        self.occupied[0] &= !(1 << slot);
                    } else {
                        if level == PARKED_LEVEL {
                            let mut at = self.parked.head().unwrap_or(NIL);
                            while at != NIL {
                                self.place[at as usize] = REFILING;
                                at = self.links.next(at);
                            }
                            self.refiling.append(&mut self.links, &mut self.parked);
                            self.parked_min = u64::MAX;
                        }
                        self.spilling = Some((level, slot));
                    }
                }
                _ => {
                    self.elapsed = self.elapsed.max(now);
                    return false;
                }
            }
        }
    }

    /// Checks the wheel's structure; panics on the first broken invariant.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn validate(&self) {
        let mut filed = 0;
        for level in 0..LEVELS {
            for slot in 0..SLOTS {
                let tokens = self
                    .slots
                    .get(level * SLOTS + slot)
                    .map_or_else(Vec::new, |list| list.tokens(&self.links));
                assert_eq!(
                    self.occupied[level] & (1 << slot) != 0,
                    !tokens.is_empty(),
                    "occupancy bit of level {level} slot {slot} is wrong"
                );
                for t in tokens {
                    assert_eq!(self.place[t as usize] as usize, level * SLOTS + slot);
                    let when = self.when[t as usize];
                    if self.spilling != Some((level, slot)) {
                        assert_eq!(slot_for(self.elapsed, when), Some((level, slot)));
                    }
                    filed += 1;
                }
            }
        }
        for t in self.parked.tokens(&self.links) {
            assert_eq!(self.place[t as usize], PARKED);
            assert!(
                self.parked_min <= self.when[t as usize],
                "parked_min too late"
            );
            assert_eq!(slot_for(self.elapsed, self.when[t as usize]), None);
            filed += 1;
        }
        for t in self.refiling.tokens(&self.links) {
            assert_eq!(self.place[t as usize], REFILING);
            filed += 1;
        }
        for t in self.due.tokens(&self.links) {
            assert_eq!(self.place[t as usize], DUE);
            assert!(
                self.when[t as usize] <= self.elapsed.max(self.horizon),
                "a token due early"
            );
            filed += 1;
        }
        assert_eq!(filed, self.len, "filed count drifted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(wheel: &mut Wheel, now: u64, budget: usize) -> Vec<Token> {
        let mut out = Vec::new();
        loop {
            let before = out.len();
            let more = wheel.advance(now, budget, &mut out);
            assert!(
                out.len() - before <= budget,
                "a call did more than its budget"
            );
            wheel.validate();
            if !more {
                return out;
            }
        }
    }

    #[test]
    fn fires_at_the_deadline_not_before() {
        let mut w = Wheel::default();
        w.schedule(1, 100);
        w.schedule(2, 5000);
        assert!(drain(&mut w, 99, 64).is_empty());
        assert_eq!(drain(&mut w, 100, 64), vec![1]);
        assert!(drain(&mut w, 4999, 64).is_empty());
        assert_eq!(drain(&mut w, 10_000, 64), vec![2]);
        assert_eq!(w.len(), 0);
    }

    /// The slots are allocated by the first token filed on them: an empty
    /// wheel, or one holding only parked deadlines, has none, and still
    /// advances and validates.
    #[test]
    fn slots_wait_for_the_first_token_filed_on_them() {
        let mut w = Wheel::default();
        assert!(w.slots.is_empty());
        assert!(drain(&mut w, 10 * SPAN, 64).is_empty());
        w.schedule(1, 20 * SPAN);
        assert!(w.slots.is_empty(), "a parked deadline needs no slot");
        w.schedule(2, 10 * SPAN + 5);
        assert_eq!(w.slots.len(), LEVELS * SLOTS);
        assert_eq!(drain(&mut w, 10 * SPAN + 5, 64), vec![2]);
        assert_eq!(drain(&mut w, 20 * SPAN, 64), vec![1]);
    }

    /// Once the parked tokens are back on the wheel, the earliest parked
    /// deadline is forgotten: a token parked far out (due at `u64::MAX`) then
    /// costs the clock's jumps nothing. Were the old one remembered, the
    /// wheel would step one top-level turn at a time towards it, a unit of
    /// work each, without end.
    #[test]
    fn a_far_parked_token_costs_the_clock_nothing_once_others_are_unparked() {
        let mut w = Wheel::default();
        w.schedule(1, 3 * SPAN + 17);
        w.schedule(2, u64::MAX);
        assert_eq!(drain(&mut w, 3 * SPAN + 17, 64), vec![1]);
        let mut out = Vec::new();
        assert!(
            !w.advance(1000 * SPAN, 4, &mut out),
            "a jump of a thousand turns is within a budget of four"
        );
        assert!(out.is_empty());
        assert_eq!(w.deadline(2), Some(u64::MAX));
    }

    #[test]
    fn rescheduling_and_cancelling_are_by_token() {
        let mut w = Wheel::default();
        w.schedule(7, 10);
        w.schedule(7, 1_000_000);
        w.schedule(8, 20);
        w.cancel(8);
        w.cancel(8);
        assert!(drain(&mut w, 500, 64).is_empty());
        assert_eq!(w.deadline(7), Some(1_000_000));
        assert_eq!(drain(&mut w, 1_000_000, 64), vec![7]);
        assert_eq!(w.deadline(7), None);
    }

    #[test]
    fn late_deadlines_are_due_at_once() {
        let mut w = Wheel::default();
        drain(&mut w, 1000, 64);
        w.schedule(3, 10);
        assert_eq!(w.deadline(3), Some(1000));
        assert_eq!(drain(&mut w, 1000, 64), vec![3]);
    }

    #[test]
    fn deadlines_past_the_top_level_are_parked_then_filed() {
        let mut w = Wheel::default();
        w.schedule(1, 3 * SPAN + 17);
        w.schedule(2, u64::MAX);
        w.validate();
        assert!(drain(&mut w, 3 * SPAN + 16, 64).is_empty());
        assert_eq!(drain(&mut w, 3 * SPAN + 17, 64), vec![1]);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn a_full_slot_spills_in_bounded_steps() {
        let mut w = Wheel::default();
        for t in 0..10_000 {
            w.schedule(t, 1_000_000 + u64::from(t % 4096));
        }
        // The clock passed the whole slot: its tokens come out as the slot
        // is spilled, from the first call on, rather than after every one
        // of them was moved down the levels.
        let mut out = Vec::new();
        assert!(w.advance(2_000_000, 100, &mut out));
        assert_eq!(out.len(), 50, "each token moved once, then handed out");
        let mut calls = 1;
        while w.advance(2_000_000, 100, &mut out) {
            calls += 1;
            w.validate();
        }
        assert!(calls >= 100, "{calls} calls");
        out.sort_unstable();
        assert_eq!(out, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn a_wheel_keeping_up_with_the_clock_hands_each_tick_its_own_tokens() {
        let mut w = Wheel::default();
        for t in 0..10_000 {
            w.schedule(t, 1_000_000 + u64::from(t % 4096));
        }
        let mut handed = 0;
        for now in 999_000..1_005_000 {
            let mut out = Vec::new();
            while w.advance(now, 100, &mut out) {}
            w.validate();
            assert!(
                out.iter().all(|&t| 1_000_000 + u64::from(t % 4096) == now),
                "at {now}: {out:?}"
            );
            handed += out.len();
        }
        assert_eq!(handed, 10_000);
    }

    fn op() -> impl Strategy<Value = Op> {
        // Deadlines at every scale: ticks, spans of each level, beyond the top.
        let delta = prop_oneof![
            0u64..70,
            0u64..5_000,
            0u64..300_000,
            0u64..(SPAN * 2),
            Just(u64::MAX / 2),
        ];
        let step = prop_oneof![0u64..70, 0u64..5_000, 0u64..300_000, 0u64..(SPAN * 2)];
        prop_oneof![
            4 => (0u32..64, delta).prop_map(|(t, d)| Op::Schedule(t, d)),
            1 => (0u32..64).prop_map(Op::Cancel),
            2 => (step.clone(), 1usize..20).prop_map(|(d, b)| Op::Advance(d, b)),
            2 => (step, 1usize..8).prop_map(|(d, b)| Op::Step(d, b)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Against a `BTreeMap` of (deadline, token): the same tokens come due at
        /// each advance (see [`replay`]).
        #[test]
        fn matches_a_btreemap(ops in proptest::collection::vec(op(), 1..200)) {
            if let Err(e) = replay(&ops) {
                return Err(TestCaseError::fail(e));
            }
        }
    }
}

/// One step of a random schedule for the model check.
#[cfg(any(test, feature = "__fuzz"))]
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// File a token `delta` ticks from now.
    Schedule(Token, u64),
    Cancel(Token),
    /// Move time forward by `step` ticks, draining with this budget per call.
    Advance(u64, usize),
    /// Move time forward by `step` ticks with one call of this budget, which
    /// may stop part-way (a slot half spilled, tokens left on the due list):
    /// the ops after it run against a wheel in that state, as the cache's
    /// writes do between their batches of expirations.
    Step(u64, usize),
}

/// Replays `ops` on a wheel and on a `BTreeMap` of (deadline, token): every
/// token a call hands out must be filed and due by the time it was given, an
/// advance that finishes (a drained `Advance`, or a `Step` that did not stop
/// on its budget) must have handed out every token due by then (in deadline
/// order but for those found due as a slot is spilled, see
/// [`Wheel::advance`]), no call may do more than its budget, and the wheel's
/// invariants must hold throughout, also between the calls of an advance
/// that stopped part-way.
#[cfg(any(test, feature = "__fuzz"))]
pub(crate) fn replay(ops: &[Op]) -> Result<(), String> {
    use std::collections::BTreeMap;
    let mut wheel = Wheel::default();
    let mut model: BTreeMap<(u64, Token), ()> = BTreeMap::new();
    let mut deadline_of: BTreeMap<Token, u64> = BTreeMap::new();
    // The latest time asked for: deadlines are given from it, and every
    // token due by it comes out once an advance finishes.
    let mut now = 0u64;
    for op in ops {
        match *op {
            Op::Schedule(t, delta) => {
                let when = now.saturating_add(delta);
                wheel.schedule(t, when);
                if let Some(old) = deadline_of.remove(&t) {
                    model.remove(&(old, t));
                }
                model.insert((when, t), ());
                deadline_of.insert(t, when);
            }
            Op::Cancel(t) => {
                wheel.cancel(t);
                if let Some(old) = deadline_of.remove(&t) {
                    model.remove(&(old, t));
                }
            }
            Op::Advance(step, budget) | Op::Step(step, budget) => {
                let budget = budget.max(1);
                now = now.saturating_add(step);
                let mut fired = Vec::new();
                let finished = loop {
                    let before = fired.len();
                    let more = wheel.advance(now, budget, &mut fired);
                    if fired.len() - before > budget {
                        return Err("a call did more than its budget".into());
                    }
                    wheel.validate();
                    if !more {
                        break true;
                    }
                    if matches!(op, Op::Step(..)) {
                        break false;
                    }
                };
                for t in fired {
                    let Some(when) = deadline_of.remove(&t) else {
                        return Err(format!("token {t} fired but was not filed"));
                    };
                    if when > now {
                        return Err(format!("token {t} fired at {now}, due at {when}"));
                    }
                    model.remove(&(when, t));
                }
                if finished {
                    if let Some((&(when, t), _)) = model.range(..=(now, Token::MAX)).next() {
                        return Err(format!("token {t} due at {when} still filed at {now}"));
                    }
                    if wheel.elapsed() != now {
                        return Err(format!(
                            "wheel at {} after advancing to {now}",
                            wheel.elapsed()
                        ));
                    }
                }
            }
        }
        if wheel.len() != model.len() {
            return Err(format!(
                "wheel holds {}, model {}",
                wheel.len(),
                model.len()
            ));
        }
        wheel.validate();
    }
    Ok(())
}

/// Decodes fuzzer bytes into a schedule and replays it (the `wheel` target).
#[cfg(feature = "__fuzz")]
pub(crate) fn fuzz(data: &[u8]) {
    let mut ops = Vec::new();
    for chunk in data.chunks_exact(6).take(200) {
        let token = Token::from(chunk[1] % 64);
        let raw = u32::from_le_bytes([chunk[2], chunk[3], chunk[4], chunk[5]]);
        // Spread values over every level: a 5-bit shift picks the scale.
        let scaled = u64::from(raw >> 5) << ((raw & 31) + 4).min(38);
        let budget = usize::from(chunk[1] % 32) + 1;
        ops.push(match chunk[0] % 8 {
            0..=3 => Op::Schedule(token, scaled),
            4 => Op::Cancel(token),
            5 | 6 => Op::Advance(scaled, budget),
            _ => Op::Step(scaled, budget % 8),
        });
    }
    if let Err(e) = replay(&ops) {
        panic!("{e}\nops: {ops:?}");
    }
}
