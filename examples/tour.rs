//! A tour of larder in a few seconds: hits, misses, eviction, the listener,
//! weights, and statistics.
//!
//! `cargo run --release --example tour`

use std::sync::{Arc, Mutex};
use std::time::Instant;

use larder::{Cache, Eviction};

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
