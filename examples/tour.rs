//! A tour of larder in a few seconds: hits, misses, eviction, the listener,
//! weights, statistics, expiry, tags, single-flight loading, bulk loading,
//! refresh, read-modify-writes and write-back.
//!
//! `cargo run --release --example tour`

use std::sync::{Arc, Mutex};
use std::time::Instant;

use larder::{Cache, Compute, Eviction};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("== a small LRU cache with a listener ==");
    let evicted = Arc::new(Mutex::new(Vec::new()));
    let log = evicted.clone();
    let users: Cache<u32, String> = Cache::builder()
        .max_capacity(3)
        .eviction(Eviction::Lru)
        .record_stats()
        .eviction_listener(move |id, name, cause| log.lock().unwrap().push((id, name, cause)))
        .build()?;
    for (id, name) in [(1, "ada"), (2, "grace"), (3, "edsger")] {
        users.insert(id, name.to_string());
    }
    println!(
        "get(1) = {:?}  (1 is now the most recently used)",
        users.get(&1)
    );
    println!("get(9) = {:?}", users.get(&9));
    users.insert(4, "barbara".to_string());
    println!("inserted 4; the least recently used (2) made way");
    users.insert(1, "ada lovelace".to_string());
    users.remove(&3);
    for (id, name, cause) in evicted.lock().unwrap().iter() {
        println!("  listener: {id} {name:?} left because {cause:?}");
    }
    let mut resident: Vec<_> = users.iter().collect();
    resident.sort();
    println!("resident: {resident:?}");
    println!("stats: {:?}", users.stats());

    println!("\n== a weighted cache: capacity in bytes ==");
    let pages: Cache<String, Arc<Vec<u8>>> = Cache::builder()
        .max_capacity(1 << 20)
        .weigher(|k: &String, v: &Arc<Vec<u8>>| (k.len() + v.len()) as u32)
        .build()?;
    for i in 0..100 {
        pages.insert(format!("/page/{i}"), Arc::new(vec![0; 20_000]));
    }
    println!(
        "100 pages of 20 kB into 1 MiB: {} resident, {} bytes",
        pages.len(),
        pages.weighted_size()
    );
    match pages.try_insert("/huge".to_string(), Arc::new(vec![0; 2 << 20])) {
        Ok(()) => println!("stored a 2 MiB page?"),
        Err(rejected) => println!("a 2 MiB page is handed back: {rejected}"),
    }
    assert!(pages.weighted_size() <= 1 << 20);

    println!("\n== LRU, LFU and W-TinyLFU on a scan ==");
    for eviction in [Eviction::Lru, Eviction::Lfu, Eviction::TinyLfu] {
        let cache: Cache<u64, u64> = Cache::builder()
            .max_capacity(100)
            .eviction(eviction)
            .record_stats()
            .build()?;
        // A hot set of 50 keys read often, interrupted by a one-off scan of 1,000.
        for round in 0..20u64 {
            for k in 0..50 {
                if cache.get(&k).is_none() {
                    cache.insert(k, k);
                }
            }
            if round == 10 {
                for k in 1_000..2_000 {
                    cache.insert(k, k);
                }
            }
        }
        println!("{eviction:?}: hit ratio {:.3}", cache.stats().hit_ratio());
    }

    println!("\n== expiry, on a mock clock ==");
    let (clock, time) = larder::Clock::mock();
    let sessions: Cache<&str, &str> = Cache::builder()
        .max_capacity(1_000)
        .time_to_live(std::time::Duration::from_secs(3600))
        .time_to_idle(std::time::Duration::from_secs(600))
        .clock(clock)
        .eviction_listener(|k, _, cause| println!("  {k} left: {cause:?}"))
        .build()?;
    sessions.insert("ada", "active");
    sessions.insert("bob", "idle");
    let short = larder::EntryOptions::new().ttl(std::time::Duration::from_secs(30));
    sessions.insert_with("otp", "123456", short);
    for minute in 1..=11 {
        time.advance(std::time::Duration::from_secs(60));
        sessions.get("ada"); // reading keeps ada's session alive
        if minute == 1 || minute == 11 {
            let alive: Vec<&str> = ["ada", "bob", "otp"]
                .into_iter()
                .filter(|k| sessions.contains_key(k))
                .collect();
            println!("after {minute} min: {alive:?}");
        }
    }
    sessions.run_pending_tasks();
    println!("{} left after maintenance", sessions.len());

    println!("\n== tags: drop every response about one user ==");
    let responses: Cache<String, String> = Cache::builder().max_capacity(1_000).build()?;
    let about = |user: u32| larder::EntryOptions::new().tags([format!("user:{user}")]);
    responses.insert_with("/users/7".into(), "ada".into(), about(7));
    responses.insert_with("/users/7/posts".into(), "[..]".into(), about(7));
    responses.insert_with("/users/8".into(), "bob".into(), about(8));
    responses.invalidate_tag("user:7");
    println!("{} of 3 left after invalidating user:7", responses.len());

    println!("\n== single flight: 8 threads miss one key, one load runs ==");
    let loads = std::sync::atomic::AtomicUsize::new(0);
    let profiles: Cache<u32, String> = Cache::builder().max_capacity(100).build()?;
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                profiles.get_or_load(1, |id| {
                    loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    format!("profile {id}")
                })
            });
        }
    });
    println!("loads run: {}", loads.into_inner());

    println!("\n== refresh: one caller reloads a due entry, the others keep reading ==");
    let (clock, time) = larder::Clock::mock();
    let rates: Cache<&str, u32> = Cache::builder()
        .max_capacity(100)
        .time_to_live(std::time::Duration::from_secs(300))
        .refresh_after(std::time::Duration::from_secs(60))
        .clock(clock)
        .build()?;
    let version = std::sync::atomic::AtomicU32::new(0);
    let fetch = |_: &&str| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        version.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    };
    rates.get_or_load("EUR", fetch);
    time.advance(std::time::Duration::from_secs(61));
    let seen = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let rate = rates.get_or_load("EUR", fetch);
                seen.lock().unwrap().push(rate);
            });
        }
    });
    let mut seen = seen.into_inner()?;
    seen.sort_unstable();
    println!(
        "versions 4 callers got: {seen:?} (the first to hit reloaded, callers meanwhile kept the cached one); now cached: {:?}",
        rates.get("EUR")
    );

    rates.insert("USD", 7);
    let reloaded = rates.refresh("USD", |_| 8);
    println!(
        "refresh(\"USD\") on demand, not due: {reloaded}; refreshes so far: {}",
        rates.stats().refreshes
    );

    println!("\n== bulk loading: one query for every id the cache misses ==");
    let names: Cache<u32, String> = Cache::builder().max_capacity(1_000).build()?;
    names.insert(2, "cached".to_string());
    let queries = std::sync::Mutex::new(Vec::new());
    let page = names.get_or_load_all([1, 2, 3, 404, 1], |ids| {
        queries.lock().unwrap().push(ids.to_vec()); // `WHERE id IN (...)`
        ids.iter()
            .filter(|&&id| id != 404)
            .map(|&id| (id, format!("user {id}")))
            .collect::<Vec<_>>()
    });
    println!("page: {page:?}; queries: {:?}", queries.into_inner()?);

    println!("\n== compute: 4 threads count 10,000 page views each, none lost ==");
    let views: Cache<&str, u64> = Cache::builder().max_capacity(100).build()?;
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10_000 {
                    let _ = views.compute("/home", |n| Compute::Put(n.map_or(1, |n| n + 1)));
                }
            });
        }
    });
    println!("views of /home: {:?}", views.get("/home"));

    println!("\n== write-back: 10,000 puts, a few store calls ==");
    let orders = Cache::builder()
        .max_capacity(100)
        .write_back(Orders::default(), larder::WriteBack::default())
        .build()?;
    for i in 0..10_000u64 {
        orders.put(i % 500, i)?; // 500 orders, each updated 20 times
    }
    assert_eq!(orders.get(&3)?, Some(9_503)); // read-your-writes, though evicted
    orders.close()?;
    let calls = orders
        .store()
        .calls
        .load(std::sync::atomic::Ordering::SeqCst);
    let rows = orders.store().rows.lock().map(|r| r.len()).unwrap_or(0);
    println!(
        "{rows} rows stored in {calls} store calls; {:?}",
        orders.write_stats()
    );

    println!("\n== throughput, 1M gets on 4 threads ==");
    // Capacity is split evenly across shards, so leave headroom when every key must fit.
    let cache: Cache<u64, u64> = Cache::builder().max_capacity(150_000).build()?;
    for k in 0..100_000 {
        cache.insert(k, k);
    }
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let cache = &cache;
            s.spawn(move || {
                let mut hits = 0u64;
                for i in 0..250_000u64 {
                    hits += cache.get(&((i * 7919 + t) % 100_000)).is_some() as u64;
                }
                assert_eq!(hits, 250_000);
            });
        }
    });
    println!("1M hits in {:?}", start.elapsed());
    Ok(())
}

/// A stand-in for a database table, counting the calls it gets.
#[derive(Default)]
struct Orders {
    rows: Mutex<std::collections::HashMap<u64, u64>>,
    calls: std::sync::atomic::AtomicUsize,
}

impl larder::Store<u64, u64> for Orders {
    type Error = std::convert::Infallible;

    fn load(&self, id: &u64) -> Result<Option<u64>, Self::Error> {
        Ok(self.rows.lock().map(|r| r.get(id).copied()).unwrap_or(None))
    }

    fn write(&self, op: &larder::Op<u64, u64>) -> Result<(), Self::Error> {
        self.write_batch(std::slice::from_ref(op))
    }

    fn write_batch(&self, ops: &[larder::Op<u64, u64>]) -> Result<(), Self::Error> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut rows) = self.rows.lock() {
            for op in ops {
                match op {
                    larder::Op::Put(id, v) => rows.insert(*id, *v),
                    larder::Op::Delete(id) => rows.remove(id),
                };
            }
        }
        Ok(())
    }
}
