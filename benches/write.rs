//! What the write policies cost against a slow system of record.
//!
//! The store takes 100 µs per call (sleep, then spin to the mark), like a
//! database round trip. `put` streams Zipf(1.0) keys over 1M ids:
//!
//! * `put_100us_store/write_through`: every put waits for its store call.
//! * `put_100us_store/write_back`: puts land in the cache and the queue; one
//!   flusher thread sends coalesced batches of up to 256.
//! * `put_100us_store/cache_only`: a plain `insert`, for scale.
//! * `put_16_100us_store/write_through_put_all`: sixteen writes in one
//!   `put_all` (one store call), against `write_through_puts`, sixteen
//!   `put` calls (sixteen store calls).
//! * `put_16_100us_store/write_back_put_all`: the same sixteen writes queued
//!   by one write-back `put_all` (one trip through the queue's lock, the
//!   stripes taken together), against `write_back_puts`, sixteen `put`s.
//!
//! After each policy's rows, the store's call count per 1,000 puts is printed
//! (the write-back figure after a `flush`, so every put was stored).
//!
//! `write_back_recovery/rewrite_20k_failed` times a store coming back after an
//! outage: 20,000 writes failed and unreported, the same keys written again,
//! until the store has them all. Each stored write drops its key's failure;
//! that cost grew with the failures left (40,000 rewrites: 1.1 s) until they
//! were kept by sequence number in a map.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{zipf_keys, SAMPLES};
use criterion::{Criterion, Throughput};
use larder::{Cache, Op, Store, WriteBack};

const CAPACITY: u64 = 100_000;
const STORE_CALL: Duration = Duration::from_micros(100);

/// A store whose every call takes `STORE_CALL`; it counts calls and writes.
#[derive(Default)]
struct Slow {
    calls: AtomicU64,
    writes: AtomicU64,
}

fn take(d: Duration) {
    let start = Instant::now();
    if let Some(sleep) = d.checked_sub(Duration::from_micros(60)) {
        std::thread::sleep(sleep);
    }
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

impl Store<u64, u64> for Slow {
    type Error = std::convert::Infallible;
    fn load(&self, _: &u64) -> Result<Option<u64>, Self::Error> {
        take(STORE_CALL);
        Ok(None)
    }
    fn write(&self, op: &Op<u64, u64>) -> Result<(), Self::Error> {
        self.write_batch(std::slice::from_ref(op))
    }
    fn write_batch(&self, ops: &[Op<u64, u64>]) -> Result<(), Self::Error> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(ops.len() as u64, Ordering::Relaxed);
        take(STORE_CALL);
        Ok(())
    }
}

fn report(name: &str, puts: u64, store: &Slow) {
    let calls = store.calls.load(Ordering::Relaxed);
    println!(
        "{name}: {puts} puts -> {calls} store calls carrying {} writes ({:.2} calls per 1,000 puts)",
        store.writes.load(Ordering::Relaxed),
        calls as f64 * 1_000.0 / puts.max(1) as f64
    );
}

fn put_100us_store(c: &mut Criterion) {
    let keys = zipf_keys(0xB0B);
    let mut group = c.benchmark_group("put_100us_store");
    group.throughput(Throughput::Elements(1));

    let through = Cache::builder()
        .max_capacity(CAPACITY)
        .write_through(Slow::default())
        .build()
        .unwrap();
    let mut puts = 0u64;
    group.bench_function("write_through", |b| {
        let mut at = 0;
        b.iter(|| {
            at = (at + 1) & (SAMPLES - 1);
            puts += 1;
            through.put(keys[at], at as u64).unwrap()
        })
    });
    report("write_through", puts, through.store());

    let back = Cache::builder()
        .max_capacity(CAPACITY)
        .write_back(Slow::default(), WriteBack::default())
        .build()
        .unwrap();
    let mut puts = 0u64;
    group.bench_function("write_back", |b| {
        let mut at = 0;
        b.iter(|| {
            at = (at + 1) & (SAMPLES - 1);
            puts += 1;
            back.put(keys[at], at as u64).unwrap()
        })
    });
    back.flush().unwrap();
    report("write_back", puts, back.store());
    let stats = back.write_stats();
    println!(
        "write_back queue: accepted {}, coalesced {}, stored {}, store calls {}",
        stats.accepted, stats.coalesced, stats.stored, stats.store_calls
    );

    let plain: Cache<u64, u64> = Cache::builder().max_capacity(CAPACITY).build().unwrap();
    group.bench_function("cache_only", |b| {
        let mut at = 0;
        b.iter(|| {
            at = (at + 1) & (SAMPLES - 1);
            plain.insert(keys[at], at as u64)
        })
    });
    group.finish();
}

fn put_16_100us_store(c: &mut Criterion) {
    let keys = zipf_keys(0xB0B);
    let mut group = c.benchmark_group("put_16_100us_store");
    group.throughput(Throughput::Elements(16));
    let through = Cache::builder()
        .max_capacity(CAPACITY)
        .write_through(Slow::default())
        .build()
        .unwrap();
    let page = |at: usize| (at..at + 16).map(|i| (keys[i & (SAMPLES - 1)], i as u64));
    group.bench_function("write_through_put_all", |b| {
        let mut at = 0;
        b.iter(|| {
            at = (at + 16) & (SAMPLES - 1);
            through.put_all(page(at)).unwrap()
        })
    });
    group.bench_function("write_through_puts", |b| {
        let mut at = 0;
        b.iter(|| {
            at = (at + 16) & (SAMPLES - 1);
            page(at).for_each(|(k, v)| through.put(k, v).unwrap())
        })
    });
    let back = Cache::builder()
        .max_capacity(CAPACITY)
        .write_back(Slow::default(), WriteBack::default())
        .build()
        .unwrap();
    group.bench_function("write_back_put_all", |b| {
        let mut at = 0;
        b.iter(|| {
            at = (at + 16) & (SAMPLES - 1);
            back.put_all(page(at)).unwrap()
        })
    });
    group.bench_function("write_back_puts", |b| {
        let mut at = 0;
        b.iter(|| {
            at = (at + 16) & (SAMPLES - 1);
            page(at).for_each(|(k, v)| back.put(k, v).unwrap())
        })
    });
    back.close().unwrap();
    group.finish();
}

/// A store that refuses every write while `down`, and counts those it takes.
#[derive(Clone, Default)]
struct Outage(Arc<(AtomicBool, AtomicU64)>);

impl Store<u64, u64> for Outage {
    type Error = &'static str;
    fn load(&self, _: &u64) -> Result<Option<u64>, Self::Error> {
        Ok(None)
    }
    fn write(&self, _: &Op<u64, u64>) -> Result<(), Self::Error> {
        if self.0 .0.load(Ordering::SeqCst) {
            return Err("down");
        }
        self.0 .1.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn write_back_recovery(c: &mut Criterion) {
    const FAILED: u64 = 20_000;
    let mut group = c.benchmark_group("write_back_recovery");
    group.throughput(Throughput::Elements(FAILED));
    group.sample_size(10);
    group.bench_function("rewrite_20k_failed", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let store = Outage::default();
                store.0 .0.store(true, Ordering::SeqCst);
                let cache = Cache::builder()
                    .max_capacity(CAPACITY)
                    .write_back(
                        store.clone(),
                        WriteBack::default()
                            .max_delay(Duration::ZERO)
                            .queue_capacity(2 * FAILED as usize)
                            .retries(0, Duration::ZERO),
                    )
                    .build()
                    .unwrap();
                for k in 0..FAILED {
                    cache.put(k, k).unwrap();
                }
                while cache.write_stats().failed < FAILED {
                    std::thread::yield_now();
                }
                store.0 .0.store(false, Ordering::SeqCst);
                let start = Instant::now();
                for k in 0..FAILED {
                    cache.put(k, k + 1).unwrap();
                }
                while store.0 .1.load(Ordering::SeqCst) < FAILED {
                    std::thread::yield_now();
                }
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    write_back_recovery(&mut c);
    put_100us_store(&mut c);
    put_16_100us_store(&mut c);
    c.final_summary();
}
