//! What expiry costs, beside the same operations without it and beside moka:
//!
//! * `expire_all`: reclaiming N entries with random TTLs of 1–60 s after the
//!   mock clock moves 61 s (`run_pending_tasks`), N = 100k and 1M: time per
//!   entry should not grow with N.
//! * `expire_beside_1m_resident`: the same N expiring beside 1M entries that
//!   never expire, so both sizes work out of cache: linearity without the
//!   cache-size effect.
//! * `get_ttl`: read-only Zipf lookups on a cache with and without a TTL (and
//!   with a TTI, whose reads may move deadlines, and with the coarse clock).
//! * `insert_ttl`: inserts of fresh keys into a full cache — plain, into a TTL
//!   cache, with a per-entry TTL — and moka's plain and TTL inserts.
//! * Before the criterion groups, a reader's `get` latency percentiles while
//!   1M entries expire at once (printed, three rounds; no criterion figure).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{zipf_keys, Rng, SAMPLES};
use criterion::{BenchmarkId, Criterion, Throughput};
use larder::{Cache, Clock, EntryOptions};

const CAPACITY: u64 = 100_000;

/// A named lookup, for one row of a group.
type Lookup<'a> = (&'a str, &'a dyn Fn(u64) -> Option<u64>);

/// A cache of `n` entries whose TTLs spread over 1–60 s, on a mock clock.
fn filled(n: u64) -> (Cache<u64, u64>, larder::MockClock) {
    let (clock, time) = Clock::mock();
    let cache = Cache::builder()
        .max_capacity(n)
        .initial_capacity(n as usize)
        .clock(clock)
        .time_to_live(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut rng = Rng(7);
    for k in 0..n {
        let ttl = Duration::from_millis(1_000 + rng.next() % 59_000);
        cache.insert_with(k, k, EntryOptions::new().ttl(ttl));
    }
    (cache, time)
}

fn expire_all(c: &mut Criterion) {
    let mut group = c.benchmark_group("expire_all");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for n in [100_000u64, 1_000_000] {
        group.throughput(Throughput::Elements(n));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (cache, time) = filled(n);
                    time.advance(Duration::from_secs(61));
                    let start = Instant::now();
                    cache.run_pending_tasks();
                    total += start.elapsed();
                    assert_eq!(cache.len(), 0);
                }
                total
            })
        });
    }
    group.finish();
}

/// Reclaiming N expired entries from a cache that also holds 1M entries
/// without a deadline, so that N = 100k and N = 1M both run out of cache: the
/// time per entry shows whether the work is linear in the number expired.
fn expire_beside_resident(c: &mut Criterion) {
    const RESIDENT: u64 = 1_000_000;
    let mut group = c.benchmark_group("expire_beside_1m_resident");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for n in [100_000u64, 1_000_000] {
        let (clock, time) = Clock::mock();
        let cache: Cache<u64, u64> = Cache::builder()
            // Room to spare: shards fill unevenly, and nothing may be evicted.
            .max_capacity(2 * (RESIDENT + n))
            .initial_capacity((RESIDENT + n) as usize)
            .clock(clock)
            .build()
            .unwrap();
        for k in 0..RESIDENT {
            cache.insert(k, k);
        }
        let mut rng = Rng(11);
        let mut next = RESIDENT;
        group.throughput(Throughput::Elements(n));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for _ in 0..n {
                        let ttl = Duration::from_millis(1_000 + rng.next() % 59_000);
                        cache.insert_with(next, next, EntryOptions::new().ttl(ttl));
                        next += 1;
                    }
                    time.advance(Duration::from_secs(61));
                    let start = Instant::now();
                    cache.run_pending_tasks();
                    total += start.elapsed();
                    assert_eq!(cache.len() as u64, RESIDENT);
                }
                total
            })
        });
    }
    group.finish();
}

/// Lookups of one key stream over a cache preloaded with the 100k most popular keys.
fn get_ttl(c: &mut Criterion) {
    let keys = zipf_keys(0x5EED);
    let mut group = c.benchmark_group("get_ttl");
    group.throughput(Throughput::Elements(1));
    let hour = Duration::from_secs(3600);
    let plain: Cache<u64, u64> = Cache::builder().max_capacity(CAPACITY).build().unwrap();
    let ttl: Cache<u64, u64> = Cache::builder()
        .max_capacity(CAPACITY)
        .time_to_live(hour)
        .build()
        .unwrap();
    let tti: Cache<u64, u64> = Cache::builder()
        .max_capacity(CAPACITY)
        .time_to_idle(hour)
        .build()
        .unwrap();
    let coarse: Cache<u64, u64> = Cache::builder()
        .max_capacity(CAPACITY)
        .time_to_live(hour)
        .clock(Clock::coarse())
        .build()
        .unwrap();
    let moka_ttl = moka::sync::Cache::builder()
        .max_capacity(CAPACITY)
        .time_to_live(hour)
        .build();
    for k in (0..CAPACITY).rev() {
        plain.insert(k, k);
        ttl.insert(k, k);
        tti.insert(k, k);
        coarse.insert(k, k);
        moka_ttl.insert(k, k);
    }
    let subjects: [Lookup<'_>; 5] = [
        ("larder", &|k| plain.get(&k)),
        ("larder_ttl", &|k| ttl.get(&k)),
        ("larder_ttl_coarse", &|k| coarse.get(&k)),
        ("larder_tti", &|k| tti.get(&k)),
        ("moka_ttl", &|k| moka_ttl.get(&k)),
    ];
    for (name, get) in subjects {
        group.bench_function(name, |b| {
            let mut at = 0;
            b.iter(|| {
                at = (at + 1) & (SAMPLES - 1);
                std::hint::black_box(get(keys[at]))
            })
        });
    }
    group.finish();
}

/// Inserts of fresh keys into a full cache of 100k.
fn insert_ttl(c: &mut Criterion) {
    let mut rng = Rng(42);
    let fresh: Vec<u64> = (0..SAMPLES).map(|_| rng.next()).collect();
    let mut group = c.benchmark_group("insert_ttl");
    group.throughput(Throughput::Elements(1));
    let hour = Duration::from_secs(3600);
    let plain: Cache<u64, u64> = Cache::builder().max_capacity(CAPACITY).build().unwrap();
    let ttl: Cache<u64, u64> = Cache::builder()
        .max_capacity(CAPACITY)
        .time_to_live(hour)
        .build()
        .unwrap();
    let moka_plain = moka::sync::Cache::new(CAPACITY);
    let moka_ttl = moka::sync::Cache::builder()
        .max_capacity(CAPACITY)
        .time_to_live(hour)
        .build();
    for k in 0..CAPACITY {
        plain.insert(k, k);
        ttl.insert(k, k);
        moka_plain.insert(k, k);
        moka_ttl.insert(k, k);
    }
    let per_entry = EntryOptions::new().ttl(hour);
    let subjects: [(&str, &dyn Fn(u64)); 5] = [
        ("larder", &|k| plain.insert(k, k)),
        ("larder_ttl", &|k| ttl.insert(k, k)),
        ("larder_insert_with_ttl", &|k| {
            ttl.insert_with(k, k, per_entry.clone())
        }),
        ("moka", &|k| moka_plain.insert(k, k)),
        ("moka_ttl", &|k| moka_ttl.insert(k, k)),
    ];
    for (name, insert) in subjects {
        group.bench_function(name, |b| {
            let mut at = 0;
            b.iter(|| {
                at = (at + 1) & (SAMPLES - 1);
                insert(fresh[at])
            })
        });
    }
    group.finish();
}

/// A reader's `get` latency (ns) percentiles, with `expire` running on
/// another thread or not.
fn reader_latency(cache: &Cache<u64, u64>, live: u64, during: impl FnOnce()) -> Vec<u64> {
    let stop = AtomicBool::new(false);
    let mut samples = Vec::with_capacity(1 << 24);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut rng = Rng(3);
            let mut out = Vec::with_capacity(1 << 24);
            while !stop.load(Ordering::Relaxed) && out.len() < (1 << 24) {
                let k = rng.next() % live;
                let start = Instant::now();
                std::hint::black_box(cache.get(&k));
                out.push(start.elapsed().as_nanos() as u64);
            }
            out
        });
        std::thread::sleep(Duration::from_millis(20));
        during();
        stop.store(true, Ordering::Relaxed);
        samples = reader.join().unwrap();
    });
    samples.sort_unstable();
    samples
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// 1M entries expire at once (one shared TTL) while a reader reads 100k live
/// ones; prints the reader's percentiles and the reclaim time.
fn latency_during_mass_expiry() {
    const LIVE: u64 = 100_000;
    println!("get latency while 1M entries expire at once (reader on 100k live keys):");
    for round in 1..=3 {
        let (clock, time) = Clock::mock();
        let cache: Cache<u64, u64> = Cache::builder()
            .max_capacity(2_000_000)
            .clock(clock)
            .build()
            .unwrap();
        for k in 0..LIVE {
            cache.insert_with(k, k, EntryOptions::new().ttl(Duration::from_secs(3600)));
        }
        for k in LIVE..LIVE + 1_000_000 {
            cache.insert_with(k, k, EntryOptions::new().ttl(Duration::from_secs(10)));
        }
        let idle = reader_latency(&cache, LIVE, || {
            std::thread::sleep(Duration::from_millis(300))
        });
        time.advance(Duration::from_secs(11));
        let mut reclaim = Duration::ZERO;
        let busy = reader_latency(&cache, LIVE, || {
            let start = Instant::now();
            cache.run_pending_tasks();
            reclaim = start.elapsed();
        });
        assert_eq!(cache.len() as u64, LIVE);
        for (label, s) in [("quiet", &idle), ("expiring", &busy)] {
            println!(
                "  round {round} {label:>8}: {} gets, p50 {} ns, p99 {} ns, p99.9 {} ns, p99.99 {} ns, max {} ns",
                s.len(),
                percentile(s, 0.5),
                percentile(s, 0.99),
                percentile(s, 0.999),
                percentile(s, 0.9999),
                s.last().unwrap()
            );
        }
        println!("  round {round}: run_pending_tasks reclaimed 1M in {reclaim:?}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Positional arguments are name filters, except the values of criterion's
    // baseline options.
    let filters: Vec<&str> = args[1..]
        .iter()
        .enumerate()
        .filter(|&(i, a)| {
            let after_option = i > 0 && args[i].ends_with("baseline");
            !a.starts_with('-') && !after_option
        })
        .map(|(_, a)| a.as_str())
        .collect();
    // `cargo bench --bench expiry` runs everything; `-- latency` only this part.
    let bench_run = args.iter().any(|a| a == "--bench");
    if bench_run && (filters.is_empty() || filters.contains(&"latency")) {
        latency_during_mass_expiry();
        if filters == ["latency"] {
            return;
        }
    }
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    expire_all(&mut c);
    expire_beside_resident(&mut c);
    get_ttl(&mut c);
    insert_ttl(&mut c);
    c.final_summary();
}
