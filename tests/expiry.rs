//! Expiry contracts on a mock clock: time-to-live, time-to-idle, per-entry TTL
//! and the `Expiry` trait, with reads exactly at the deadline; reclamation by
//! writes and by `run_pending_tasks`; expiry under every policy and with
//! weights; and a multi-threaded stress run while the clock moves.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder::{BuildError, Cache, Clock, EntryOptions, Eviction, Expiry, MockClock, RemovalCause};

const SEC: Duration = Duration::from_secs(1);
const NS: Duration = Duration::from_nanos(1);

type Log = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

/// A 100-entry cache on a mock clock with a listener log.
fn cache_with(
    configure: impl FnOnce(larder::CacheBuilder<u32, u32>) -> larder::CacheBuilder<u32, u32>,
) -> (Cache<u32, u32>, MockClock, Log) {
    let (clock, time) = Clock::mock();
    let log: Log = Arc::default();
    let sink = log.clone();
    let builder = Cache::builder()
        .max_capacity(100)
        .clock(clock)
        .record_stats()
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)));
    (configure(builder).build().unwrap(), time, log)
}

fn taken(log: &Log) -> Vec<(u32, u32, RemovalCause)> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[test]
fn ttl_expires_exactly_at_the_deadline() {
    let (cache, time, _) = cache_with(|b| b.time_to_live(10 * SEC));
    cache.insert(1, 10);
    time.advance(10 * SEC - NS);
    assert_eq!(
        cache.get(&1),
        Some(10),
        "one nanosecond before the deadline"
    );
    assert!(cache.contains_key(&1));
    time.advance(NS);
    assert_eq!(cache.get(&1), None, "at the deadline");
    assert_eq!(cache.peek(&1), None);
    assert!(!cache.contains_key(&1));
    assert_eq!(cache.iter().count(), 0);
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses),
        (1, 1),
        "an expired entry is a miss"
    );
}

#[test]
fn updates_restart_the_ttl() {
    let (cache, time, log) = cache_with(|b| b.time_to_live(10 * SEC));
    cache.insert(1, 10);
    time.advance(8 * SEC);
    cache.insert(1, 11);
    time.advance(8 * SEC);
    assert_eq!(cache.get(&1), Some(11));
    time.advance(2 * SEC);
    assert_eq!(cache.get(&1), None);
    assert_eq!(taken(&log), vec![(1, 10, RemovalCause::Replaced)]);
}

#[test]
fn tti_is_extended_by_reads_and_capped_by_the_ttl() {
    let (cache, time, _) = cache_with(|b| b.time_to_idle(5 * SEC).time_to_live(12 * SEC));
    cache.insert(1, 1);
    cache.insert(2, 2);
    for _ in 0..2 {
        time.advance(4 * SEC);
        assert_eq!(cache.get(&1), Some(1));
    }
    // 8 s: entry 2 was never read, so it idled out at 5 s.
    assert_eq!(cache.get(&2), None);
    time.advance(4 * SEC);
    // 12 s: still read within every 5 s, but the time-to-live caps it.
    assert_eq!(cache.get(&1), None);
}

#[test]
fn iter_yields_no_entry_that_expired_while_it_ran() {
    let (cache, time, _) = cache_with(|b| b.shards(1).time_to_idle(5 * SEC));
    for k in 0..10 {
        cache.insert(k, k);
    }
    let mut it = cache.iter();
    let first = it.next().expect("ten entries");
    // Entry 9 is kept alive by reads; the others idle out.
    for _ in 0..3 {
        time.advance(2 * SEC);
        assert_eq!(cache.get(&9), Some(9));
    }
    assert_eq!(cache.peek(&0).or(cache.peek(&1)), None);
    let rest: Vec<(u32, u32)> = it.collect();
    let expected: Vec<(u32, u32)> = if first.0 == 9 { vec![] } else { vec![(9, 9)] };
    assert_eq!(
        rest, expected,
        "yielded after expiring, or a live entry skipped"
    );
}

#[test]
fn iter_yields_a_rewritten_key_with_its_new_value_not_the_expired_one() {
    let (cache, time, _) = cache_with(|b| b.shards(1).time_to_live(10 * SEC));
    cache.insert(1, 1);
    cache.insert(2, 2);
    let mut it = cache.iter();
    let (first, _) = it.next().expect("two entries");
    let other = 3 - first;
    time.advance(11 * SEC);
    cache.insert(other, 30);
    assert_eq!(it.next(), Some((other, 30)), "the expired value yielded");
    assert_eq!(it.next(), None);
}

#[test]
fn iter_yields_no_entry_whose_deadline_a_write_moved_earlier_and_passed() {
    let (cache, time, _) = cache_with(|b| b.shards(1));
    for k in 0..10 {
        cache.insert_with(k, k, EntryOptions::new().ttl(100 * SEC));
    }
    let mut it = cache.iter();
    let first = it.next().expect("ten entries");
    for k in (0..10).filter(|&k| k != first.0) {
        cache.insert_with(k, k + 100, EntryOptions::new().ttl(SEC));
    }
    time.advance(2 * SEC);
    assert_eq!(cache.get(&((first.0 + 1) % 10)), None, "expired for get");
    let rest: Vec<(u32, u32)> = it.collect();
    assert_eq!(rest, vec![], "yielded past the deadlines the writes set");
}

/// Reads that shorten the lifetime: an `Expiry` whose `expire_after_read`
/// gives one second where the entries were created with a hundred.
struct ReadsShorten;

impl Expiry<u32, u32> for ReadsShorten {
    fn expire_after_create(&self, _: &u32, _: &u32) -> Option<Duration> {
        Some(100 * SEC)
    }
    fn expire_after_read(&self, _: &u32, _: &u32, _: Option<Duration>) -> Option<Duration> {
        Some(SEC)
    }
}

#[test]
fn iter_yields_no_entry_whose_deadline_a_read_moved_earlier_and_passed() {
    let (cache, time, _) = cache_with(|b| b.shards(1).expiry(ReadsShorten));
    for k in 0..10 {
        cache.insert(k, k);
    }
    let mut it = cache.iter();
    let first = it.next().expect("ten entries");
    let read: Vec<u32> = (0..10).filter(|&k| k != first.0).collect();
    for k in &read {
        assert_eq!(cache.get(k), Some(*k));
    }
    time.advance(2 * SEC);
    assert!(!cache.contains_key(&read[0]), "expired for contains_key");
    let rest: Vec<(u32, u32)> = it.collect();
    assert_eq!(rest, vec![], "yielded past the deadlines the reads set");
}

#[test]
fn iter_yields_an_entry_written_meanwhile_with_its_current_value() {
    let (cache, _, _) = cache_with(|b| b.shards(1));
    for k in 0..10 {
        cache.insert(k, k);
    }
    let mut it = cache.iter();
    let first = it.next().expect("ten entries");
    for k in (0..10).filter(|&k| k != first.0) {
        cache.insert(k, k + 100);
    }
    let mut rest: Vec<(u32, u32)> = it.collect();
    rest.sort();
    let expected: Vec<(u32, u32)> = (0..10)
        .filter(|&k| k != first.0)
        .map(|k| (k, k + 100))
        .collect();
    assert_eq!(rest, expected, "a value replaced before it was yielded");
}

#[test]
fn tti_alone_expires_exactly_five_seconds_after_the_last_read() {
    let (cache, time, _) = cache_with(|b| b.time_to_idle(5 * SEC));
    cache.insert(1, 1);
    time.advance(3 * SEC);
    assert_eq!(cache.get(&1), Some(1));
    time.advance(5 * SEC - NS);
    assert!(cache.contains_key(&1), "contains_key does not extend it");
    assert_eq!(cache.peek(&1), Some(1));
    time.advance(NS);
    assert_eq!(cache.get(&1), None);
}

/// A short time-to-idle is extended by reads as a long one is: a read
/// skips moving the deadline only by less than a tick or 1/1024 of the
/// time-to-idle. With a whole tick (2^20 ns), an entry idle for 2 ms read
/// every millisecond expired at 2 ms, and one under a tick was never
/// extended at all.
#[test]
fn a_short_tti_is_extended_by_every_read_of_its_length() {
    let ms = Duration::from_millis(1);
    let us = Duration::from_micros(1);
    for (tti, every) in [
        (2 * ms, ms),
        (ms, 500 * us),
        (500 * us, 100 * us),
        (5 * us, 4 * us),
    ] {
        let (cache, time, _) = cache_with(|b| b.time_to_idle(tti));
        cache.insert(1, 1);
        for read in 0..50 {
            time.advance(every);
            assert_eq!(cache.get(&1), Some(1), "{tti:?}, read {read}");
        }
        // Each read moved it: it expires exactly its length after the last.
        time.advance(tti - NS);
        assert!(cache.contains_key(&1), "{tti:?}: expired early");
        time.advance(NS);
        assert!(!cache.contains_key(&1), "{tti:?}: outlived its last read");
    }
    // A long one still skips the moves of less than a tick.
    let (cache, time, _) = cache_with(|b| b.time_to_idle(10 * SEC));
    cache.insert(1, 1);
    time.advance(us);
    assert_eq!(cache.get(&1), Some(1));
    time.advance(10 * SEC - us);
    assert!(!cache.contains_key(&1), "a move of a microsecond was made");
}

#[test]
fn per_entry_ttl_overrides_and_zero_means_do_not_cache() {
    let (cache, time, log) = cache_with(|b| b.time_to_live(60 * SEC));
    cache.insert_with(1, 1, EntryOptions::new().ttl(2 * SEC));
    cache.insert_with(2, 2, EntryOptions::new().ttl(Duration::MAX));
    cache.insert(3, 3);
    cache.insert_with(3, 33, EntryOptions::new().ttl(Duration::ZERO));
    assert_eq!(cache.get(&3), None, "a zero TTL leaves nothing readable");
    assert_eq!(
        taken(&log),
        vec![
            (3, 3, RemovalCause::Replaced),
            (3, 33, RemovalCause::Expired)
        ]
    );
    time.advance(2 * SEC);
    assert_eq!(cache.get(&1), None);
    time.advance(Duration::from_secs(365 * 24 * 3600));
    assert_eq!(cache.get(&2), Some(2), "Duration::MAX never expires");
}

/// A write due at once (a zero TTL) is refused as it arrives, not stored to
/// wait its turn behind entries already due: with more of those than one
/// write reclaims, it would hold a slot and its weight, and the listener
/// would not hear of it before the call returned.
#[test]
fn a_write_due_at_once_is_refused_even_behind_many_due_entries() {
    let (cache, time, log) = cache_with(|b| b.time_to_live(SEC));
    for k in 0..40 {
        cache.insert(k, k);
    }
    time.advance(2 * SEC);
    let inserts = cache.stats().inserts;
    cache.insert_with(100, 7, EntryOptions::new().ttl(Duration::ZERO));
    assert!(
        taken(&log).contains(&(100, 7, RemovalCause::Expired)),
        "heard before the call returned"
    );
    assert_eq!(cache.stats().inserts, inserts, "never stored");
    assert_eq!(cache.peek(&100), None);
}

#[test]
fn per_entry_ttl_works_without_configured_expiry() {
    let (cache, time, _) = cache_with(|b| b);
    cache.insert(1, 1);
    cache.insert_with(2, 2, EntryOptions::new().ttl(SEC));
    time.advance(SEC);
    assert_eq!(cache.get(&2), None);
    assert_eq!(cache.get(&1), Some(1));
    cache.run_pending_tasks();
    assert_eq!(cache.len(), 1);
}

#[test]
fn zero_and_huge_cache_durations_do_not_panic() {
    let (cache, _, log) = cache_with(|b| b.time_to_live(Duration::ZERO));
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.len(), 0);
    assert_eq!(taken(&log), vec![(1, 1, RemovalCause::Expired)]);
    assert_eq!(cache.stats().expirations, 1);

    let (cache, time, _) =
        cache_with(|b| b.time_to_live(Duration::MAX).time_to_idle(Duration::MAX));
    cache.insert(1, 1);
    time.advance(Duration::from_secs(100 * 365 * 24 * 3600));
    assert_eq!(cache.get(&1), Some(1));
    cache.run_pending_tasks();
    assert_eq!(cache.len(), 1);
}

/// Lifetimes from the value: odd values live `value` seconds; reads halve
/// what is left; an update to 0 clears the deadline.
struct ByValue;
impl Expiry<u32, u32> for ByValue {
    fn expire_after_create(&self, _: &u32, v: &u32) -> Option<Duration> {
        (v % 2 == 1).then(|| Duration::from_secs(u64::from(*v)))
    }
    fn expire_after_update(&self, _: &u32, v: &u32, current: Option<Duration>) -> Option<Duration> {
        match v {
            0 => None,
            v if v % 2 == 1 => Some(Duration::from_secs(u64::from(*v))),
            _ => current,
        }
    }
    fn expire_after_read(&self, _: &u32, _: &u32, current: Option<Duration>) -> Option<Duration> {
        current.map(|c| c / 2)
    }
}

#[test]
fn expiry_trait_creates_changes_keeps_and_clears() {
    let (cache, time, _) = cache_with(|b| b.expiry(ByValue));
    cache.insert(1, 9); // 9 s
    cache.insert(2, 4); // never
    cache.insert(3, 7); // 7 s
    time.advance(SEC);
    assert_eq!(cache.get(&1), Some(9)); // 8 s left, halved to 4
    time.advance(4 * SEC);
    assert_eq!(cache.peek(&1), None, "the read shortened it");
    cache.insert(3, 0); // clears the deadline
    cache.insert(2, 6); // even: keeps "never"
    time.advance(Duration::from_secs(1000));
    assert_eq!(cache.peek(&2), Some(6));
    assert_eq!(cache.peek(&3), Some(0));
    cache.insert(2, 3); // odd: now 3 s
    time.advance(3 * SEC);
    assert_eq!(cache.peek(&2), None);
}

/// Reads give every entry a second to live: from whatever it had, or from
/// "never".
struct ReadsGiveASecond;
impl Expiry<u32, u32> for ReadsGiveASecond {
    fn expire_after_create(&self, _: &u32, v: &u32) -> Option<Duration> {
        (v % 2 == 0).then_some(3600 * SEC)
    }
    fn expire_after_read(&self, _: &u32, _: &u32, _: Option<Duration>) -> Option<Duration> {
        Some(SEC)
    }
}

#[test]
fn deadlines_a_read_moves_earlier_are_reclaimed_then() {
    let (cache, time, log) = cache_with(|b| b.expiry(ReadsGiveASecond));
    for i in 0..10 {
        cache.insert(i, i); // even: an hour; odd: never
        assert_eq!(cache.get(&i), Some(i)); // now a second, either way
    }
    time.advance(2 * SEC);
    cache.run_pending_tasks();
    assert_eq!(cache.len(), 0, "reclaimed at the deadline the reads set");
    let log = taken(&log);
    assert_eq!(log.len(), 10);
    assert!(log.iter().all(|e| e.2 == RemovalCause::Expired));
    // An entry removed after its read queued it is not filed again.
    cache.insert(20, 20);
    cache.get(&20);
    cache.remove(&20);
    cache.insert(21, 21);
    time.advance(2 * SEC);
    cache.run_pending_tasks();
    assert_eq!(cache.peek(&21), Some(21));
}

#[test]
fn deadlines_moved_earlier_by_many_reads_between_writes_are_still_reclaimed() {
    // ByValue halves what is left on every read: each read moves the deadline
    // earlier, more often than the shard queues them (it then re-files all).
    let (cache, time, log) = cache_with(|b| b.expiry(ByValue));
    cache.insert(1, 9); // 9 s
    for _ in 0..5 {
        assert_eq!(cache.get(&1), Some(9)); // 4.5 s, 2.25 s, ... 0.28 s
    }
    time.advance(SEC);
    cache.run_pending_tasks();
    assert_eq!(cache.len(), 0);
    assert_eq!(taken(&log), [(1, 9, RemovalCause::Expired)]);
}

#[test]
fn a_mock_clock_saturates_instead_of_wrapping() {
    let (cache, time, _) = cache_with(|b| b);
    cache.insert(1, 1); // never expires
    cache.insert_with(2, 2, EntryOptions::new().ttl(10 * SEC));
    time.advance(10 * SEC);
    assert_eq!(cache.get(&2), None);
    time.advance(Duration::MAX);
    time.advance(Duration::MAX);
    assert_eq!(
        cache.get(&1),
        Some(1),
        "an entry without a deadline lives on"
    );
    assert_eq!(cache.get(&2), None, "an expired entry stays expired");
    cache.insert(3, 3);
    assert_eq!(cache.get(&3), Some(3), "the cache still takes writes");
    cache.insert_with(4, 4, EntryOptions::new().ttl(SEC));
    assert_eq!(cache.get(&4), Some(4));
}

#[test]
fn a_per_entry_ttl_is_not_extended_by_an_expiry_read() {
    let (cache, time, _) = cache_with(|b| b.expiry(ReadsGiveASecond));
    cache.insert_with(1, 1, EntryOptions::new().ttl(5 * SEC));
    time.advance(4 * SEC + SEC / 2);
    assert_eq!(cache.get(&1), Some(1)); // asks for 1 s more: past the TTL
    time.advance(SEC / 2);
    assert_eq!(cache.get(&1), None, "no read extends a per-entry TTL");
    // A read may still end it sooner.
    cache.insert_with(2, 2, EntryOptions::new().ttl(5 * SEC));
    time.advance(SEC);
    assert_eq!(cache.get(&2), Some(2)); // 4 s left, now 1 s
    time.advance(SEC);
    assert_eq!(cache.get(&2), None);
}

#[test]
fn entries_past_their_deadline_leave_as_expired_whatever_takes_them() {
    // Eviction: a one-shard LRU where expiry has not reclaimed anything yet
    // (a write reclaims a bounded batch first; forty are due).
    let (cache, time, log) = cache_with(|b| {
        b.max_capacity(40)
            .shards(1)
            .eviction(Eviction::Lru)
            .time_to_live(SEC)
    });
    for i in 0..40 {
        cache.insert(i, i);
    }
    time.advance(2 * SEC);
    cache.insert(1000, 1);
    let log_now = taken(&log);
    assert!(!log_now.is_empty());
    assert!(
        log_now.iter().all(|e| e.2 == RemovalCause::Expired),
        "{log_now:?}"
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.evictions, stats.expirations),
        (0, log_now.len() as u64)
    );

    // Bulk invalidations: each reports an expired entry as expired, and the
    // predicate of `invalidate_entries_if` never sees one.
    let (cache, time, log) = cache_with(|b| b.time_to_live(SEC));
    let tagged = || EntryOptions::new().tags(["t"]);
    cache.insert_with(1, 1, tagged());
    cache.insert_with(2, 2, tagged().ttl(10 * SEC));
    time.advance(2 * SEC);
    cache.invalidate_tag("t");
    let mut got = taken(&log);
    got.sort_unstable();
    assert_eq!(
        got,
        [
            (1, 1, RemovalCause::Expired),
            (2, 2, RemovalCause::Invalidated)
        ]
    );

    cache.insert(3, 3);
    cache.insert_with(4, 4, EntryOptions::new().ttl(10 * SEC));
    time.advance(2 * SEC);
    let mut seen = Vec::new();
    cache.invalidate_entries_if(|k, _| {
        seen.push(*k);
        true
    });
    assert_eq!(seen, [4], "only the live entry is shown");
    let mut got = taken(&log);
    got.sort_unstable();
    assert_eq!(
        got,
        [
            (3, 3, RemovalCause::Expired),
            (4, 4, RemovalCause::Invalidated)
        ]
    );

    cache.insert(5, 5);
    cache.insert_with(6, 6, EntryOptions::new().ttl(10 * SEC));
    time.advance(2 * SEC);
    cache.invalidate_all();
    let mut got = taken(&log);
    got.sort_unstable();
    assert_eq!(
        got,
        [
            (5, 5, RemovalCause::Expired),
            (6, 6, RemovalCause::Explicit)
        ]
    );
    let stats = cache.stats();
    assert_eq!(
        (
            stats.expirations,
            stats.tag_invalidations,
            stats.invalidations
        ),
        (3, 2, 1)
    );
}

#[test]
fn expiry_cannot_be_combined_with_fixed_durations() {
    let err = Cache::<u32, u32>::builder()
        .max_capacity(10)
        .time_to_live(SEC)
        .expiry(ByValue)
        .build()
        .unwrap_err();
    assert_eq!(err, BuildError::ConflictingExpiry);
    assert!(err.to_string().contains("Expiry"));
}

struct Panics;
impl Expiry<u32, u32> for Panics {
    fn expire_after_create(&self, _: &u32, v: &u32) -> Option<Duration> {
        assert!(*v != 13, "unlucky");
        Some(SEC)
    }
    fn expire_after_update(&self, _: &u32, _: &u32, _: Option<Duration>) -> Option<Duration> {
        panic!("no updates")
    }
}

#[test]
fn a_panicking_expiry_leaves_the_cache_unchanged() {
    let (cache, _time, log) = cache_with(|b| b.expiry(Panics));
    cache.insert(1, 1);
    assert!(catch_unwind(AssertUnwindSafe(|| cache.insert(2, 13))).is_err());
    assert!(catch_unwind(AssertUnwindSafe(|| cache.insert(1, 2))).is_err());
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!(cache.get(&2), None);
    assert_eq!(cache.len(), 1);
    assert!(taken(&log).is_empty());
    // The shard is still usable.
    cache.insert(3, 3);
    assert_eq!(cache.get(&3), Some(3));
}

#[test]
fn a_panicking_expiry_over_an_expired_entry_leaves_it_for_the_listener() {
    let (cache, time, log) = cache_with(|b| b.expiry(Panics));
    cache.insert(1, 1);
    time.advance(SEC);
    // The entry under the key has expired; the write's own `Expiry` panics.
    assert!(catch_unwind(AssertUnwindSafe(|| cache.insert(1, 13))).is_err());
    assert_eq!(cache.get(&1), None);
    cache.run_pending_tasks();
    assert_eq!(cache.len(), 0);
    assert_eq!(
        taken(&log),
        [(1, 1, RemovalCause::Expired)],
        "the expired entry is not lost to the panic"
    );
    assert_eq!(cache.stats().expirations, 1);
}

/// Extends an entry by ten seconds at each read, and panics on reads of
/// value 13.
struct PanicsOnRead;
impl Expiry<u32, u32> for PanicsOnRead {
    fn expire_after_create(&self, _: &u32, _: &u32) -> Option<Duration> {
        Some(SEC)
    }
    fn expire_after_read(&self, _: &u32, v: &u32, _: Option<Duration>) -> Option<Duration> {
        assert!(*v != 13, "unlucky read");
        Some(10 * SEC)
    }
}

#[test]
fn a_panicking_expire_after_read_moves_no_deadline() {
    let (cache, time, log) = cache_with(|b| b.expiry(PanicsOnRead));
    cache.insert(1, 13);
    cache.insert(2, 2);
    assert!(catch_unwind(AssertUnwindSafe(|| cache.get(&1))).is_err());
    assert_eq!(cache.get(&2), Some(2), "the shard is still usable");
    time.advance(SEC);
    assert_eq!(cache.get(&1), None, "key 1 kept its deadline of one second");
    assert_eq!(cache.get(&2), Some(2), "key 2's read moved its deadline");
    cache.run_pending_tasks();
    assert_eq!(taken(&log), [(1, 13, RemovalCause::Expired)]);
}

/// The wheel's ticks are about a millisecond: a pass of maintenance in an
/// entry's last tick but before its deadline finds it not yet due, and a
/// later pass in the same tick, after the deadline, must still take it.
#[test]
fn run_pending_tasks_reclaims_what_an_earlier_pass_in_the_tick_found_not_yet_due() {
    for ttl_us in [1, 300, 500, 900] {
        let ttl = Duration::from_micros(ttl_us);
        let (cache, time, log) = cache_with(|b| b.time_to_live(ttl));
        cache.insert(1, 1);
        // The insert's own maintenance ran at its deadline's tick or before.
        cache.run_pending_tasks();
        assert_eq!(cache.len(), 1, "{ttl_us} µs: not due yet");
        time.advance(ttl);
        cache.run_pending_tasks();
        assert_eq!(cache.len(), 0, "{ttl_us} µs: reclaimed at its deadline");
        assert_eq!(taken(&log), [(1, 1, RemovalCause::Expired)]);
    }
}

/// A `get` that waits for a writer decides liveness, and moves the idle
/// deadline, with the time after the wait: one that used the time from
/// before could return an entry idle past its deadline, and bring it back
/// for later reads after a `contains_key` had seen it gone.
#[test]
fn a_read_waiting_for_a_writer_judges_idleness_by_the_time_it_gets_in() {
    use std::sync::Condvar;
    /// (the writer is in, the gate is open)
    #[derive(Default)]
    struct Gate(Mutex<(bool, bool)>, Condvar);
    /// Idle expiry of 10 s; creating key 2 holds the shard's write lock until
    /// the gate opens.
    struct HoldsOnTwo(Arc<Gate>);
    impl Expiry<u32, u32> for HoldsOnTwo {
        fn expire_after_create(&self, k: &u32, _: &u32) -> Option<Duration> {
            if *k == 2 {
                let mut state = self.0 .0.lock().unwrap();
                state.0 = true;
                self.0 .1.notify_all();
                while !state.1 {
                    state = self.0 .1.wait(state).unwrap();
                }
            }
            Some(10 * SEC)
        }
        fn expire_after_read(&self, _: &u32, _: &u32, _: Option<Duration>) -> Option<Duration> {
            Some(10 * SEC)
        }
    }
    for _ in 0..3 {
        let gate = Arc::new(Gate::default());
        let (cache, time, _log) = cache_with(|b| b.shards(1).expiry(HoldsOnTwo(gate.clone())));
        cache.insert(1, 1);
        time.advance(9 * SEC);
        std::thread::scope(|s| {
            let writer = s.spawn(|| cache.insert(2, 2));
            let mut state = gate.0.lock().unwrap();
            while !state.0 {
                state = gate.1.wait(state).unwrap();
            }
            drop(state);
            // Both reads wait for the writer; time passes the idle deadline.
            let present = s.spawn(|| cache.contains_key(&1));
            let read = s.spawn(|| cache.get(&1));
            std::thread::sleep(Duration::from_millis(50));
            time.advance(6 * SEC);
            gate.0.lock().unwrap().1 = true;
            gate.1.notify_all();
            writer.join().unwrap();
            assert_eq!(read.join().unwrap(), None, "idle for 15 s of 10");
            assert!(!present.join().unwrap());
        });
        assert_eq!(cache.get(&1), None, "not brought back");
    }
}

#[test]
fn maintenance_reclaims_with_cause_expired() {
    let (cache, time, log) = cache_with(|b| b.time_to_live(SEC).shards(1));
    for i in 0..50 {
        cache.insert(i, i);
    }
    time.advance(SEC);
    assert_eq!(cache.len(), 50, "nothing reclaimed without maintenance");
    // Each write does a bounded step of maintenance on its way out (moving
    // timers down the wheel counts), so a few writes reclaim some, not all.
    cache.insert(100, 100);
    assert!(
        cache.len() > 40,
        "one write did unbounded work: {}",
        cache.len()
    );
    for i in 101..110 {
        cache.insert(i, i);
    }
    assert!(
        cache.len() < 59,
        "writes reclaimed nothing: {}",
        cache.len()
    );
    cache.run_pending_tasks();
    assert_eq!(cache.len(), 10);
    let log = taken(&log);
    assert_eq!(log.len(), 50);
    assert!(log
        .iter()
        .all(|&(k, v, c)| k == v && c == RemovalCause::Expired));
    assert_eq!(cache.stats().expirations, 50);
}

#[test]
fn writing_over_or_removing_an_expired_entry_reports_it_expired() {
    let (cache, time, log) = cache_with(|b| b.time_to_live(SEC));
    cache.insert(1, 1);
    cache.insert(2, 2);
    time.advance(SEC);
    cache.insert(1, 10);
    assert_eq!(
        cache.remove(&2),
        None,
        "an expired entry is not there to remove"
    );
    assert_eq!(
        taken(&log),
        vec![(1, 1, RemovalCause::Expired), (2, 2, RemovalCause::Expired)]
    );
    let stats = cache.stats();
    assert_eq!((stats.inserts, stats.updates, stats.expirations), (3, 0, 2));
    assert_eq!(cache.get(&1), Some(10));
}

#[test]
fn expiry_works_with_every_policy_and_weights() {
    for eviction in [Eviction::TinyLfu, Eviction::Lru, Eviction::Lfu] {
        let (clock, time) = Clock::mock();
        let cache: Cache<u32, u32> = Cache::builder()
            .max_capacity(1000)
            .shards(2)
            .eviction(eviction)
            .weigher(|_, v: &u32| *v)
            .time_to_live(10 * SEC)
            .clock(clock)
            .build()
            .unwrap();
        for i in 0..2000u32 {
            cache.insert(i, 1 + i % 7);
            if i % 100 == 0 {
                time.advance(SEC);
            }
            assert!(cache.weighted_size() <= 1000);
        }
        for i in 0..2000u32 {
            if let Some(v) = cache.get(&i) {
                assert_eq!(v, 1 + i % 7);
                assert!(i >= 1000, "{eviction:?}: key {i} outlived its TTL");
            }
        }
        time.advance(10 * SEC);
        cache.run_pending_tasks();
        assert_eq!((cache.len(), cache.weighted_size()), (0, 0), "{eviction:?}");
    }
}

/// Many threads insert with random TTLs and read while another moves the
/// clock. The bound holds, and no read returns an entry past its deadline:
/// each value carries an upper bound of its deadline on the mirrored clock.
#[test]
fn stress_expiry_while_the_clock_moves() {
    const STEP: u64 = 50_000_000; // 50 ms per clock step
    let (clock, time) = Clock::mock();
    let cache: Cache<u64, Arc<AtomicU64>> = Cache::builder()
        .max_capacity(2_000)
        .time_to_idle(Duration::from_millis(700))
        .clock(clock)
        .build()
        .unwrap();
    let mirror = Arc::new(AtomicU64::new(0)); // never ahead of the mock clock
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..400 {
                time.advance(Duration::from_nanos(STEP));
                mirror.fetch_add(STEP, Ordering::SeqCst);
                std::thread::yield_now();
            }
            stop.store(true, Ordering::SeqCst);
        });
        for t in 0..4u64 {
            let (cache, mirror, stop) = (&cache, &mirror, &stop);
            s.spawn(move || {
                let mut x = t + 1;
                while !stop.load(Ordering::SeqCst) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = x % 5_000;
                    if x % 3 == 0 {
                        let ttl = 1 + (x >> 20) % 2_000; // 1 ms to 2 s
                        let slot = Arc::new(AtomicU64::new(u64::MAX));
                        cache.insert_with(
                            key,
                            slot.clone(),
                            EntryOptions::new().ttl(Duration::from_millis(ttl)),
                        );
                        // The insert read a clock at most one step past the mirror.
                        let after = mirror.load(Ordering::SeqCst);
                        slot.store(after + STEP + ttl * 1_000_000, Ordering::SeqCst);
                    } else {
                        let before = mirror.load(Ordering::SeqCst);
                        if let Some(slot) = cache.get(&key) {
                            let bound = slot.load(Ordering::SeqCst);
                            // A read may extend by the idle time; the TTL bound is what it may not pass.
                            assert!(
                                bound > before,
                                "read an entry expired at {bound} at {before}"
                            );
                        }
                    }
                    assert!(cache.weighted_size() <= 2_000);
                }
            });
        }
    });
    time.advance(Duration::from_secs(3));
    cache.run_pending_tasks();
    assert_eq!(cache.len(), 0);
}

#[test]
fn a_background_sweeper_reclaims_an_untouched_cache() {
    // Also with a hasher chosen after the sweep: changing the hasher keeps it.
    for hasher_after_sweep in [false, true] {
        let (clock, time) = Clock::mock();
        let log: Log = Arc::default();
        let sink = log.clone();
        let builder = Cache::builder()
            .max_capacity(100)
            .time_to_live(SEC)
            .clock(clock)
            .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)));
        let cache: Cache<u32, u32, std::collections::hash_map::RandomState> = if hasher_after_sweep
        {
            builder
                .background_sweep(Duration::from_millis(1))
                .hasher(Default::default())
                .build()
                .unwrap()
        } else {
            builder
                .hasher(Default::default())
                .background_sweep(Duration::from_millis(1))
                .build()
                .unwrap()
        };
        for i in 0..20 {
            cache.insert(i, i);
        }
        time.advance(SEC);
        // Nothing touches the cache; only the sweeper can reclaim. Wait for it
        // (real time, bounded), not for the expiry itself.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Entries leave the map before the sweeper tells the listener (after the
        // shard lock is released), so wait for both.
        while (!cache.is_empty() || log.lock().unwrap().len() < 20)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            cache.len(),
            0,
            "hasher after the sweep: {hasher_after_sweep}"
        );
        let log = taken(&log);
        assert_eq!(log.len(), 20);
        assert!(log.iter().all(|e| e.2 == RemovalCause::Expired));
    }
}

#[test]
fn sweep_intervals_below_a_millisecond_are_refused() {
    let err = Cache::<u32, u32>::builder()
        .max_capacity(10)
        .background_sweep(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        BuildError::SweepIntervalTooShort {
            interval: Duration::ZERO
        }
    );
    assert!(err.to_string().contains("at least"));
}

#[test]
fn entries_stored_before_a_shard_kept_deadlines_never_expire() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(100)
        .shards(1)
        .build()
        .unwrap();
    for i in 0..4 {
        cache.insert(i, i);
    }
    cache.remove(&1);
    // Reuses the freed slot and starts the shard's deadlines.
    cache.insert_with(9, 9, EntryOptions::new().ttl(SEC));
    for i in [0, 2, 3, 9] {
        assert_eq!(cache.get(&i), Some(i));
    }
    cache.run_pending_tasks();
    assert_eq!(cache.len(), 4);
}

/// As above, with far more entries expiring together than one write's share
/// of the wheel's work moves down its levels: their deadlines, 600 s out,
/// share a slot of a high level, and the clock passed them all at once. A
/// write hands out those found due as it spills the slot, so the first
/// writes reclaim expired entries instead of evicting live ones (they
/// evicted 8 live entries over 20 writes while all of the 1,500 were
/// still on their way down).
#[test]
fn writes_reclaim_many_entries_expiring_together_before_evicting_live_ones() {
    for eviction in [Eviction::Lru, Eviction::Lfu, Eviction::TinyLfu] {
        let (cache, time, log) = cache_with(|b| b.max_capacity(2000).shards(1).eviction(eviction));
        for k in 0..500 {
            cache.insert(k, k);
        }
        for k in 500..2000 {
            let ttl = 600 * SEC + Duration::from_micros(u64::from(k) * 50);
            cache.insert_with(k, k, EntryOptions::new().ttl(ttl));
        }
        time.advance(700 * SEC);
        for k in 10_000..10_020 {
            cache.insert(k, k);
        }
        for k in (0..500).chain(10_000..10_020) {
            assert_eq!(cache.get(&k), Some(k), "{eviction:?}: live entry {k}");
        }
        let log = taken(&log);
        assert!(log.len() >= 20, "{eviction:?}");
        assert!(
            log.iter()
                .all(|e| e.2 == RemovalCause::Expired && e.0 >= 500),
            "{eviction:?}: {log:?}"
        );
    }
}

/// One heavy write needs room that only many expired entries can make: it
/// reclaims them, and evicts no live entry (it evicted all 399).
#[test]
fn a_heavy_write_reclaims_many_expired_entries_before_evicting_live_ones() {
    let (cache, time, log) = cache_with(|b| {
        b.max_capacity(1400)
            .shards(1)
            .eviction(Eviction::Lru)
            .weigher(|_, v: &u32| if *v >= 1_000_000 { 1000 } else { 1 })
    });
    for k in 0..399 {
        cache.insert(k, k);
    }
    for k in 399..1399 {
        let ttl = 600 * SEC + Duration::from_micros(u64::from(k) * 50);
        cache.insert_with(k, k, EntryOptions::new().ttl(ttl));
    }
    time.advance(700 * SEC);
    cache.insert(5000, 1_000_000);
    assert!(cache.weighted_size() <= 1400);
    assert_eq!(cache.get(&5000), Some(1_000_000));
    for k in 0..399 {
        assert_eq!(cache.get(&k), Some(k), "live entry {k}");
    }
    let log = taken(&log);
    assert!(
        log.iter()
            .all(|e| e.2 == RemovalCause::Expired && e.0 >= 399),
        "{log:?}"
    );
}

/// A heavy write among 200,000 weightless expired entries (and one heavy
/// live one): reclaiming them frees no room, so the write runs its bounded
/// share of the wheel's work and then evicts; it reclaimed 111,368 of them
/// (6.3 ms under the write lock) when its share grew with the weight over
/// the shard's mean.
#[test]
fn a_heavy_write_among_weightless_expired_entries_runs_a_bounded_share() {
    let (cache, time, log) = cache_with(|b| {
        b.max_capacity(1_000_000)
            .shards(1)
            .eviction(Eviction::Lru)
            .weigher(|_, v: &u32| if *v >= 1_000_000 { 1_000_000 } else { 0 })
    });
    cache.insert(0, 1_000_000);
    for k in 1..200_001u32 {
        let ttl = 600 * SEC + Duration::from_micros(u64::from(k) % 100_000);
        cache.insert_with(k, k, EntryOptions::new().ttl(ttl));
    }
    time.advance(700 * SEC);
    taken(&log);
    cache.insert(999_999, 1_000_001);
    let log = taken(&log);
    let expired = log.iter().filter(|e| e.2 == RemovalCause::Expired).count();
    assert!(
        expired <= 1024,
        "one write reclaimed {expired} weightless entries"
    );
    assert!(cache.weighted_size() <= 1_000_000);
    assert_eq!(cache.get(&999_999), Some(1_000_001));
}

/// A heavy write whose room only thousands of expired entries, lighter than
/// the shard's mean weight, can make: it reclaims them all, and evicts no
/// live entry (it evicted one when its share was estimated from the mean).
#[test]
fn a_heavy_write_reclaims_thousands_of_light_expired_entries() {
    let (cache, time, log) = cache_with(|b| {
        b.max_capacity(100_000)
            .shards(1)
            .eviction(Eviction::Lru)
            .weigher(|_, v: &u32| if *v >= 1_000_000 { 9_000 } else { 1 })
    });
    for k in 0..10 {
        cache.insert(k, 1_000_000 + k);
    }
    for k in 10..10_010u32 {
        let ttl = 600 * SEC + Duration::from_micros(u64::from(k) * 5);
        cache.insert_with(k, k, EntryOptions::new().ttl(ttl));
    }
    time.advance(700 * SEC);
    cache.insert(99_999, 1_000_000);
    assert!(cache.weighted_size() <= 100_000);
    for k in 0..10 {
        assert_eq!(cache.get(&k), Some(1_000_000 + k), "live entry {k}");
    }
    let log = taken(&log);
    assert!(
        log.iter()
            .all(|e| e.2 == RemovalCause::Expired && e.0 >= 10),
        "{} removals, the first {:?}",
        log.len(),
        log.first()
    );
}

/// A write into a full cache reclaims the entries whose deadline has passed
/// before it evicts a live one: here the live entries are the least recently
/// used, and ninety expired ones hold the rest of the room. (Within a bound:
/// a write moves or reclaims at most 512 deadlines before it evicts, see
/// `src/tests/wheel_work.rs`.)
#[test]
fn a_full_cache_reclaims_expired_entries_before_evicting_live_ones() {
    for eviction in [Eviction::Lru, Eviction::Lfu, Eviction::TinyLfu] {
        let (cache, time, log) = cache_with(|b| b.shards(1).eviction(eviction));
        for k in 0..10 {
            cache.insert(k, k);
        }
        for k in 10..100 {
            cache.insert_with(k, k, EntryOptions::new().ttl(10 * SEC));
        }
        time.advance(11 * SEC);
        for k in 100..110 {
            cache.insert(k, k);
        }
        for k in 0..10 {
            assert_eq!(cache.get(&k), Some(k), "{eviction:?}: live entry {k}");
        }
        let log = taken(&log);
        assert!(
            log.iter().all(|e| e.2 == RemovalCause::Expired),
            "{eviction:?}: {log:?}"
        );
        assert_eq!(cache.stats().evictions, 0, "{eviction:?}");
    }
}

/// A value whose `Clone` waits, once armed, until released: a read's user
/// code running while the clock moves on.
#[derive(Debug, PartialEq)]
struct SlowClone(u32);

static SLOW_ARMED: AtomicBool = AtomicBool::new(false);
static SLOW_IN_CLONE: AtomicBool = AtomicBool::new(false);
static SLOW_RELEASE: AtomicBool = AtomicBool::new(false);
static SLOW_SERIAL: Mutex<()> = Mutex::new(());

impl Clone for SlowClone {
    fn clone(&self) -> Self {
        if SLOW_ARMED.swap(false, Ordering::SeqCst) {
            SLOW_IN_CLONE.store(true, Ordering::SeqCst);
            while !SLOW_RELEASE.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
        }
        SlowClone(self.0)
    }
}

/// Idle for ten seconds from each create and read, as `time_to_idle` has it.
struct IdleTen;
impl Expiry<u32, SlowClone> for IdleTen {
    fn expire_after_create(&self, _: &u32, _: &SlowClone) -> Option<Duration> {
        Some(10 * SEC)
    }
    fn expire_after_read(&self, _: &u32, _: &SlowClone, _: Option<Duration>) -> Option<Duration> {
        Some(10 * SEC)
    }
}

/// A read that found its entry live, and whose user code (the value's
/// `Clone`) ran on while the clock passed the entry's idle deadline and
/// another read found the key gone, does not move the deadline on: it
/// brought the expired entry back, to be read again with no write in
/// between, and to leave as removed instead of expired.
#[test]
fn a_read_racing_its_entrys_idle_deadline_does_not_bring_it_back() {
    let _serial = SLOW_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for custom in [false, true] {
        let (clock, time) = Clock::mock();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let builder = Cache::builder()
            .max_capacity(10)
            .clock(clock)
            .eviction_listener(move |k, v: SlowClone, cause| {
                sink.lock().unwrap().push((k, v.0, cause))
            });
        let builder = if custom {
            builder.expiry(IdleTen)
        } else {
            builder.time_to_idle(10 * SEC)
        };
        let cache: Cache<u32, SlowClone> = builder.build().unwrap();
        cache.insert(1, SlowClone(7));
        time.advance(9 * SEC); // the deadline is at 10 s
        SLOW_IN_CLONE.store(false, Ordering::SeqCst);
        SLOW_RELEASE.store(false, Ordering::SeqCst);
        SLOW_ARMED.store(true, Ordering::SeqCst);
        let reader = {
            let cache = cache.clone();
            std::thread::spawn(move || cache.get(&1)) // the clock at 9 s
        };
        while !SLOW_IN_CLONE.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        time.advance(2 * SEC); // 11 s
        assert_eq!(cache.get(&1), None, "expired at 11 s");
        SLOW_RELEASE.store(true, Ordering::SeqCst);
        assert_eq!(
            reader.join().unwrap(),
            Some(SlowClone(7)),
            "live when it was read"
        );
        assert_eq!(cache.get(&1), None, "custom expiry: {custom}");
        assert_eq!(cache.remove(&1), None);
        cache.run_pending_tasks();
        assert_eq!(
            *log.lock().unwrap(),
            vec![(1, 7, RemovalCause::Expired)],
            "custom expiry: {custom}"
        );
    }
}

/// What the `Hooked` key's `Hash` runs once `.0` more hashes have passed.
type Hook = Option<(u32, Box<dyn FnOnce()>)>;

thread_local! {
    static HASH_HOOK: std::cell::RefCell<Hook> = const { std::cell::RefCell::new(None) };
}

/// A key whose `Hash` runs the thread's `HASH_HOOK` when it is due: a way
/// to act at a chosen step of a call, with no lock of the cache held.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Hooked(u32);

impl std::hash::Hash for Hooked {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let due = HASH_HOOK.with(|hook| {
            let mut hook = hook.borrow_mut();
            match hook.as_mut() {
                Some((0, _)) => hook.take().map(|(_, f)| f),
                Some((n, _)) => {
                    *n -= 1;
                    None
                }
                None => None,
            }
        });
        if let Some(f) = due {
            f();
        }
        self.0.hash(state);
    }
}

/// A load that finds its key cached by a write made after its caller's
/// lookup missed returns that value, read as `get` reads it: its
/// time-to-idle deadline moves (it used to be only peeked at, and expired
/// at the deadline the write set).
#[test]
fn a_load_that_finds_its_key_written_meanwhile_reads_it_as_a_get_does() {
    let (clock, time) = Clock::mock();
    let cache: Cache<Hooked, u32> = Cache::builder()
        .max_capacity(100)
        .clock(clock)
        .time_to_idle(10 * SEC)
        .build()
        .unwrap();
    let (writer, at) = (cache.clone(), time.clone());
    // The lookup hashes the key once; the load's first hash writes the key
    // at 0 s (deadline 10 s) and moves the clock to 5 s.
    HASH_HOOK.with(|hook| {
        *hook.borrow_mut() = Some((
            1,
            Box::new(move || {
                writer.insert(Hooked(1), 10);
                at.advance(5 * SEC);
            }),
        ));
    });
    let loaded = AtomicBool::new(false);
    let v = cache.get_or_load(Hooked(1), |_| {
        loaded.store(true, Ordering::SeqCst);
        20
    });
    assert!(
        HASH_HOOK.with(|hook| hook.borrow().is_none()),
        "the hook ran"
    );
    assert_eq!(v, 10, "the value written meanwhile");
    assert!(!loaded.load(Ordering::SeqCst), "no load ran");
    // Read at 5 s: idle until 15 s.
    time.advance(7 * SEC);
    assert_eq!(
        cache.get(&Hooked(1)),
        Some(10),
        "expired at the write's deadline"
    );
    time.advance(10 * SEC);
    assert_eq!(cache.get(&Hooked(1)), None);
}
