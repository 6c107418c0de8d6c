use super::*;
use crate::policy::{slot_state_in, TestSlots};
use std::cell::RefCell;

/// Entries with fixed weights and hashes, counting reads.
#[derive(Default)]
struct Fake {
    hits: RefCell<std::collections::HashMap<Token, u8>>,
    slots: TestSlots,
}

impl Entries for Fake {
    fn hash(&self, token: Token) -> u64 {
        u64::from(token).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555
    }
    fn weight(&self, _: Token) -> u32 {
        1
    }
    fn take_hits(&self, token: Token) -> u8 {
        self.hits.borrow_mut().remove(&token).unwrap_or(0)
    }
    fn touch(&self, token: Token) {
        *self.hits.borrow_mut().entry(token).or_insert(0) += 1;
    }
    slot_state_in!(slots);
}

/// Inserts `token` the way the store does: place it, then evict around it.
fn insert(p: &mut TinyLfu, e: &Fake, token: Token) -> Vec<Token> {
    p.on_insert(token, e.hash(token), e);
    let mut evicted = Vec::new();
    while p.total() > p.capacity {
        let v = p.victim(token, e).expect("something to evict");
        p.on_remove(v, e.hash(v), e);
        evicted.push(v);
    }
    p.count_fresh(e);
    p.validate(e);
    evicted
}

/// A full cache of 100 whose residents were read 20 times each, so their
/// counts are at the ceiling; the window is pinned at one entry so every
/// insert runs one admission contest.
fn saturated_cache() -> (TinyLfu, Fake) {
    let (mut p, e) = (TinyLfu::new(100), Fake::default());
    p.climber.hold();
    for t in 0..100 {
        insert(&mut p, &e, t);
    }
    p.sketch.as_mut().expect("half full").disable_aging();
    for t in 0..100 {
        for _ in 0..20 {
            p.on_access(t, &e);
        }
        if TinyLfu::region(t, &e) != Region::Absent {
            p.collect(t, &e);
            assert_eq!(TinyLfu::count_of(t, &e), 15);
        }
    }
    insert(&mut p, &e, 100);
    (p, e)
}

#[test]
fn warm_losers_are_admitted_one_time_in_about_128() {
    let (mut p, e) = saturated_cache();
    // Candidates warmed to frequency 8: above the threshold, below the
    // residents' 15. Only the random rule can let them in.
    let mut admitted = 0;
    for t in 1000..21_000 {
        for _ in 0..8 {
            p.count(e.hash(t), &e);
        }
        let candidate = p.window.head().expect("a full window");
        let evicted = insert(&mut p, &e, t);
        assert_eq!(evicted.len(), 1);
        if evicted[0] != candidate {
            assert_eq!(TinyLfu::region(candidate, &e), Region::Probation);
            admitted += 1;
        }
    }
    // 20,000 / 128 ≈ 156.
    assert!(
        (80..300).contains(&admitted),
        "{admitted} of 20,000 admitted"
    );
}

/// The rule for warm losers starts at exactly `ADMIT_WARM_THRESHOLD`: a
/// candidate counted that often that loses its contest is admitted one time
/// in about 128, one counted once less never.
#[test]
fn the_warm_loser_rule_starts_at_its_threshold() {
    let (mut p, e) = saturated_cache();
    let victim = p.probation.head().expect("a full main region");
    assert_eq!(TinyLfu::count_of(victim, &e), 15);
    let draws = 128 * 100;
    let warm = (0..draws)
        .filter(|_| p.admit(ADMIT_WARM_THRESHOLD, victim, &e))
        .count();
    assert!((50..150).contains(&warm), "{warm} of {draws} admitted");
    let cool = (0..draws)
        .filter(|_| p.admit(ADMIT_WARM_THRESHOLD - 1, victim, &e))
        .count();
    assert_eq!(cool, 0, "below the threshold, never");
}

#[test]
fn warm_losers_are_admitted_at_random_whatever_the_capacity() {
    // The last capacity is the generator's seed constant.
    for capacity in [1, 100, 1 << 40, 0x853C_49E6_748F_EA9B] {
        let mut p = TinyLfu::new(capacity);
        let draws = 128 * 1000;
        let admitted = (0..draws).filter(|_| p.warm_loser_admitted()).count();
        assert!(
            (500..1500).contains(&admitted),
            "capacity {capacity}: {admitted} of {draws}"
        );
    }
}

#[test]
fn cold_losers_are_never_admitted() {
    let (mut p, e) = saturated_cache();
    // Few enough newcomers that sketch collisions keep them cold.
    for t in 1000..1300 {
        let candidate = p.window.head().expect("a full window");
        let evicted = insert(&mut p, &e, t);
        assert_eq!(evicted, vec![candidate], "cold candidate admitted");
    }
}

#[test]
fn reads_are_collected_where_the_policy_looks() {
    let (mut p, e) = (TinyLfu::new(10), Fake::default());
    p.climber.hold();
    for t in 0..11 {
        insert(&mut p, &e, t);
    }
    // The next candidate was seen before, so its contest is held.
    p.count(e.hash(11), &e);
    p.count(e.hash(11), &e);
    insert(&mut p, &e, 11);
    assert_eq!(TinyLfu::region(11, &e), Region::Window);
    let probation: Vec<Token> = p.probation.tokens(&&e);
    assert!(probation.len() >= 3, "{probation:?}");
    // Read every probation entry but the last: on_access only notes it.
    let (unread, read) = probation.split_last().unwrap();
    let before: Vec<u8> = read.iter().map(|&t| TinyLfu::count_of(t, &e)).collect();
    for &t in read {
        p.on_access(t, &e);
        assert_eq!(TinyLfu::region(t, &e), Region::Probation, "promotion waits");
    }
    let candidate = p.window.head().unwrap();
    let evicted = insert(&mut p, &e, 12);
    // The read entries were promoted on the way to the victim, which is the
    // unread one or the candidate that lost to it.
    assert_eq!(evicted.len(), 1);
    assert!(
        evicted[0] == *unread || evicted[0] == candidate,
        "{evicted:?}"
    );
    assert!(read
        .iter()
        .any(|&t| TinyLfu::region(t, &e) == Region::Protected));
    assert!(p.protected_weight <= p.protected_max);
    assert!(e.hits.borrow().is_empty(), "every read was collected");
    for (&t, b) in read.iter().zip(before) {
        assert_eq!(
            TinyLfu::count_of(t, &e),
            b + 1,
            "the read reached the count"
        );
        assert_ne!(e.meta(t) & READ, 0, "marked for the sketch");
    }
    // A read key leaving hands its count back to the sketch; an unread
    // one leaves the sketch as it was.
    let t = read[0];
    let count = TinyLfu::count_of(t, &e);
    let sketch = p.sketch.as_ref().expect("past half full");
    assert!(sketch.frequency(e.hash(t)) < count, "not yet handed back");
    p.on_remove(t, e.hash(t), &e);
    let sketch = p.sketch.as_ref().expect("past half full");
    assert_eq!(sketch.frequency(e.hash(t)), count);
    p.validate(&e);
}

#[test]
fn counts_halve_when_the_sketch_ages() {
    let (mut p, e) = (TinyLfu::new(100), Fake::default());
    p.climber.hold();
    for t in 0..110 {
        insert(&mut p, &e, t);
    }
    let resident = p.probation.head().expect("a full main region");
    for _ in 0..12 {
        p.on_access(resident, &e);
    }
    p.collect(resident, &e);
    let count = TinyLfu::count_of(resident, &e);
    assert!(count >= 12);
    let region = TinyLfu::region(resident, &e);
    // Sightings of absent keys fill the sample period until it ages.
    let mut k = 1 << 20;
    loop {
        p.count(e.hash(k), &e);
        k += 1;
        if TinyLfu::count_of(resident, &e) != count {
            break;
        }
    }
    assert_eq!(TinyLfu::count_of(resident, &e), count / 2);
    assert_eq!(TinyLfu::region(resident, &e), region, "the region is kept");
    assert_ne!(e.meta(resident) & READ, 0, "and the read mark");
    p.validate(&e);
}

/// Ties go to the incumbent until the window has grown past its start and
/// a fiftieth of the capacity (the workload showed recency), then to the
/// candidate, and back to the incumbent once the window shrinks again.
#[test]
fn ties_go_to_the_candidate_once_the_window_has_grown() {
    use super::admission::{margin_for, RECENCY_WINDOW};
    assert_eq!(
        margin_for(10, 10, 1_000),
        ADMIT_MARGIN,
        "the window it started with"
    );
    assert_eq!(
        margin_for(20, 10, 1_000),
        ADMIT_MARGIN,
        "grown, but not past a fiftieth"
    );
    assert_eq!(margin_for(21, 10, 1_000), 0);
    assert_eq!(
        margin_for(1, 1, 10),
        ADMIT_MARGIN,
        "a tiny shard's window of one"
    );
    assert_eq!(margin_for(2, 1, 10), 0);
    assert_eq!(RECENCY_WINDOW, 50);
    let (mut p, e) = (TinyLfu::new(1_000), Fake::default());
    p.climber.hold();
    insert(&mut p, &e, 1);
    // Counts of 1 against 0 (no sketch yet): a tie within the margin.
    let m = e.meta(1);
    e.set_meta(1, (m & (REGION_BITS | READ)) | 1 << COUNT_SHIFT);
    insert(&mut p, &e, 2);
    assert_eq!(TinyLfu::count_of(2, &e), 0);
    assert_eq!(p.margin, ADMIT_MARGIN);
    assert!(!p.admit(1, 2, &e), "the incumbent keeps a tie at the start");
    p.set_window(100);
    assert_eq!(p.margin, 0);
    assert!(
        p.admit(1, 2, &e),
        "a grown window gives the candidate the tie"
    );
    p.set_window(10);
    assert_eq!(p.margin, ADMIT_MARGIN);
    assert!(!p.admit(1, 2, &e));
}

#[test]
fn a_cold_candidate_loses_without_a_contest() {
    let (mut p, e) = (TinyLfu::new(10), Fake::default());
    p.climber.hold();
    for t in 0..12 {
        insert(&mut p, &e, t);
    }
    let probation: Vec<Token> = p.probation.tokens(&&e);
    for &t in &probation {
        p.on_access(t, &e);
    }
    let candidate = p.window.head().unwrap();
    assert!(TinyLfu::count_of(candidate, &e) <= ADMIT_MARGIN);
    assert_eq!(insert(&mut p, &e, 12), vec![candidate]);
    // No victim was looked for: the probation reads wait, uncollected.
    assert_eq!(p.probation.tokens(&&e), probation);
    assert_eq!(e.hits.borrow().len(), probation.len());
    p.validate(&e);
}

#[test]
fn a_key_turned_away_and_asked_for_again_is_admitted() {
    let (mut p, e) = saturated_cache();
    // A cold newcomer is turned away and leaves its ghost.
    let candidate = p.window.head().expect("a full window");
    assert_eq!(insert(&mut p, &e, 2000), vec![candidate]);
    // The same key comes back (a new token for the same hash, as a new
    // slab entry would be): it is admitted at its next contest, though
    // the residents' counts are far above its own.
    let again = TokenFor {
        token: 3000,
        as_hash_of: candidate,
    };
    let e2 = Alias {
        inner: &e,
        alias: again,
    };
    p.on_insert(3000, e2.hash(3000), &e2);
    p.count_fresh(&e2);
    let resident = p.probation.head().expect("a full probation");
    assert!(
        TinyLfu::count_of(3000, &e) <= TinyLfu::count_of(resident, &e) + ADMIT_MARGIN,
        "it would lose its contest on counts"
    );
    let window_before = p.window_max;
    let mut evicted = Vec::new();
    for t in [3001, 3002] {
        p.on_insert(t, e2.hash(t), &e2);
        while p.total() > p.capacity {
            let v = p.victim(t, &e2).expect("something to evict");
            p.on_remove(v, e2.hash(v), &e2);
            evicted.push(v);
        }
        p.count_fresh(&e2);
    }
    assert!(
        !evicted.contains(&3000),
        "the returning key was turned away again"
    );
    assert_eq!(TinyLfu::region(3000, &e), Region::Probation);
    assert_eq!(
        p.window_max,
        window_before + 1,
        "its return grows the window by its weight"
    );
    p.validate(&e2);
}

#[test]
fn ghosts_nudge_the_window_no_further_than_the_cap_either_way() {
    let (mut p, e) = saturated_cache();
    let bound = (GHOST_NUDGE_CAP * p.capacity as f64) as i64;
    p.set_window(2);
    p.nudge = bound - 3;
    p.apply_window();
    // Every key is turned away twice: the second time its ghost lets it
    // in, which grows the nudge while it is under the bound.
    for t in 2000..2040 {
        p.ghosts.returned(e.hash(t));
        insert(&mut p, &e, t);
    }
    assert_eq!(p.nudge, bound, "nudged past {bound}");
    assert_eq!(p.window_max, 2 + bound as u64);
    // Shrinking: keys main evicted a short while ago, turned away.
    p.nudge = 3 - bound;
    p.apply_window();
    for t in 3000..3040 {
        p.ghosts.remember_evicted(e.hash(t));
        insert(&mut p, &e, t);
    }
    assert_eq!(p.nudge, -bound, "nudged past -{bound}");
    assert_eq!(
        p.window_max, 1,
        "the climber's 2 less the bound, but one unit"
    );
}

#[test]
fn the_climber_moves_the_window_the_nudge_keeps_its_offset() {
    let (mut p, _) = saturated_cache();
    p.set_window(30);
    p.nudge_window(5);
    assert_eq!(p.window_max, 35);
    // The climber's decision moves its own window; the nudge stays on top.
    p.set_window(p.climbed + 10);
    assert_eq!((p.climbed, p.nudge, p.window_max), (40, 5, 45));
    p.nudge_window(-9);
    assert_eq!(p.window_max, 36);
    // A climber's window of nothing and a negative nudge: one unit still.
    p.set_window(0);
    assert_eq!(p.window_max, 1);
    // Nor can the climber's window pass the capacity, nor the window
    // reach it with the nudge on top.
    p.nudge_window(9);
    p.set_window(u64::MAX);
    assert_eq!(p.climbed, p.capacity);
    assert_eq!(p.window_max, p.capacity - 1);
}

#[test]
fn a_turned_away_key_that_main_evicted_shrinks_the_window() {
    let (mut p, e) = saturated_cache();
    p.set_window(5);
    // Main evicted 2000's key a short while ago.
    p.ghosts.remember_evicted(e.hash(2000));
    let mut turned_away = false;
    for t in 2000..2010 {
        let before = p.window_max;
        let evicted = insert(&mut p, &e, t);
        if evicted.contains(&2000) {
            assert_eq!(p.window_max, before - 1, "the window did not shrink");
            turned_away = true;
            break;
        }
        assert_eq!(p.window_max, before, "a key main never held moved it");
    }
    assert!(turned_away, "the cold key was admitted");
    assert!(
        !p.ghosts.take_evicted(e.hash(2000)),
        "its ghost was used once"
    );
}

#[test]
fn main_remembers_the_keys_it_evicts() {
    let (mut p, e) = saturated_cache();
    // A window with room: the next insert evicts from main.
    p.set_window(10);
    let victim = p.probation.head().expect("a full probation");
    assert_eq!(insert(&mut p, &e, 2000), vec![victim]);
    assert!(
        p.ghosts.take_evicted(e.hash(victim)),
        "no ghost of the victim"
    );
}

/// Token `token` hashes as `as_hash_of` does.
#[derive(Clone, Copy)]
struct TokenFor {
    token: Token,
    as_hash_of: Token,
}

struct Alias<'a> {
    inner: &'a Fake,
    alias: TokenFor,
}

impl Entries for Alias<'_> {
    fn hash(&self, token: Token) -> u64 {
        if token == self.alias.token {
            self.inner.hash(self.alias.as_hash_of)
        } else {
            self.inner.hash(token)
        }
    }
    fn weight(&self, token: Token) -> u32 {
        self.inner.weight(token)
    }
    fn take_hits(&self, token: Token) -> u8 {
        self.inner.take_hits(token)
    }
    fn touch(&self, token: Token) {
        self.inner.touch(token)
    }
    slot_state_in!(inner.slots);
}

/// Entries of one weight.
struct Heavy(u32, TestSlots);

impl Entries for Heavy {
    fn hash(&self, token: Token) -> u64 {
        u64::from(token).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn weight(&self, _: Token) -> u32 {
        self.0
    }
    fn take_hits(&self, _: Token) -> u8 {
        0
    }
    fn touch(&self, _: Token) {}
    slot_state_in!(1);
}

#[test]
fn weighted_shards_size_their_counting_by_entries_not_weight() {
    // A capacity of 2^40 units (a terabyte, in bytes) holding 1 MiB entries:
    // 2^20 entries when full, whatever the capacity's unit.
    let e = Heavy(1 << 20, TestSlots::default());
    let mut p = TinyLfu::new(1 << 40);
    let mut t = 0;
    while p.sketch.is_none() {
        p.on_insert(t, e.hash(t), &e);
        p.count_fresh(&e);
        t += 1;
    }
    assert_eq!(t, 1 << 19, "counting starts half full");
    let sketch = p.sketch.as_ref().unwrap();
    assert_eq!(sketch.words(), 1 << 20, "a word per entry, not per unit");
    assert_eq!(p.ghosts.len(), 1 << 19);
    assert_eq!(
        p.climber.sample(),
        5 << 20,
        "sample periods in requests per entry"
    );
    p.validate(&e);
}

/// Five entries of the weight given, then entries of one unit.
struct HeavyFirst(u32, TestSlots);

impl Entries for HeavyFirst {
    fn hash(&self, token: Token) -> u64 {
        u64::from(token).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn weight(&self, token: Token) -> u32 {
        if token < 5 {
            self.0
        } else {
            1
        }
    }
    fn take_hits(&self, _: Token) -> u8 {
        0
    }
    fn touch(&self, _: Token) {}
    slot_state_in!(1);
}

/// A weighted shard whose first entries were heavy starts counting sized for
/// a few entries; as it comes to hold many light ones, the sketch, the
/// ghosts and the climber's periods grow with them (each time it holds more
/// entries than the sketch has words, checked as the sketch ages).
#[test]
fn the_counting_grows_with_the_entries_a_weighted_shard_holds() {
    let e = HeavyFirst(7_000, TestSlots::default());
    let capacity = 1 << 16;
    let mut p = TinyLfu::new(capacity);
    let add = |p: &mut TinyLfu, t: Token| {
        p.on_insert(t, e.hash(t), &e);
        while p.total() > capacity {
            let v = p.victim(t, &e).expect("something to evict");
            p.on_remove(v, e.hash(v), &e);
        }
        p.count_fresh(&e);
    };
    for t in 0..5 {
        add(&mut p, t);
    }
    // 35,000 units of 65,536: half full with five entries.
    // Sized for 9 entries (65,536 × 5 / 35,000): the least sketch.
    assert_eq!(p.sketch.as_ref().map(Sketch::words), Some(16));
    assert_eq!(p.ghosts.len(), 4);
    for t in 5..200_000 {
        add(&mut p, t);
    }
    let held = u64::from(p.window.len() + p.probation.len() + p.protected.len());
    assert!(held > 30_000, "{held}");
    // A word of the sketch for each entry held.
    let words = p.sketch.as_ref().unwrap().words() as u64;
    assert!(words >= held, "{words} words for {held} entries");
    assert!(
        p.ghosts.len() as u64 >= held / 4,
        "{} ghosts",
        p.ghosts.len()
    );
    p.validate(&e);
}

/// A resize sizes for at most twice the entries held: a shard whose heavy
/// entries started the counting and then left, holding a few light ones,
/// does not take them for a full shard's worth (here a capacity of 2^30
/// units would have sized a 512 MiB sketch for 500 entries).
#[test]
fn a_resize_sizes_for_the_entries_held_not_the_capacity() {
    let e = HeavyFirst(1 << 27, TestSlots::default());
    let capacity = 1 << 30;
    let mut p = TinyLfu::new(capacity);
    for t in 0..5 {
        p.on_insert(t, e.hash(t), &e);
        p.count_fresh(&e);
    }
    assert!(p.sketch.is_some(), "half full");
    for t in 0..5 {
        p.on_remove(t, e.hash(t), &e);
    }
    for t in 5..3_000 {
        p.on_insert(t, e.hash(t), &e);
        p.count_fresh(&e);
        let held = u64::from(p.window.len() + p.probation.len() + p.protected.len());
        let words = p.sketch.as_ref().map_or(0, Sketch::words) as u64;
        assert!(words <= 4 * held.max(8), "{words} words for {held} entries");
        assert!(p.ghosts.len() as u64 <= 2 * held.max(8));
    }
    let words = p.sketch.as_ref().map_or(0, Sketch::words);
    assert!(words >= 2_995, "grown with the entries: {words}");
    p.validate(&e);
}

#[test]
fn a_read_window_entry_gets_a_second_chance() {
    let (mut p, e) = (TinyLfu::new(1000), Fake::default());
    p.climber.hold();
    for t in 0..1000 {
        insert(&mut p, &e, t);
    }
    // The window holds ten entries; read the oldest, then push it out.
    let head = p.window.head().unwrap();
    p.on_access(head, &e);
    insert(&mut p, &e, 1000);
    assert_eq!(
        TinyLfu::region(head, &e),
        Region::Window,
        "a read entry left the window"
    );
    assert_eq!(p.window.tokens(&&e).last(), Some(&head));
    p.validate(&e);
}

/// An entry whose weight falls to 0 leaves the policy, and comes back when
/// it rises again: going out and back in, however often, counts no
/// sighting, no miss and no read, so its count stays what it was.
#[test]
fn an_entry_leaving_and_rejoining_gains_no_count() {
    let (mut p, e) = (TinyLfu::new(100), Fake::default());
    for t in 0..80 {
        insert(&mut p, &e, t);
    }
    assert!(p.sketch.is_some(), "half full: the sketch counts");
    let t = 7;
    for _ in 0..3 {
        p.on_access(t, &e);
    }
    p.collect(t, &e);
    let count = TinyLfu::count_of(t, &e);
    let misses = p.climber.misses;
    for _ in 0..10 {
        p.on_remove(t, e.hash(t), &e);
        // Reads while out of the policy are dropped when it comes back.
        p.on_access(t, &e);
        p.on_rejoin(t, e.hash(t), &e);
        p.validate(&e);
    }
    assert_eq!(TinyLfu::count_of(t, &e), count, "the count stays");
    assert_eq!(p.climber.misses, misses, "no miss for the climber");
    assert!(!p.collect(t, &e), "no read noted");
}
