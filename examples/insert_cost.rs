//! The cheapest insert that evicts, as a plain loop for counting what it
//! costs: distinct `u64` keys, each seen once, into a full cache of capacity
//! 100k, so that every insert evicts one entry and no key ever comes back
//! (under W-TinyLFU each candidate loses admission without a contest).
//! Compared across larder's policies and quick_cache, it separates the
//! store's own cost of an insert (table, slab, lists) from the policy's.
//!
//! Run it under callgrind at two lengths and divide the difference by the
//! inserts between them, as `benches/mix_cost.sh` does for the mix, or time it:
//!
//! ```text
//! cargo run --release --example insert_cost -- [tinylfu|lru|quick_cache] [INSERTS]
//! ```

const CAPACITY: u64 = 100_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let subject = args.next().unwrap_or_else(|| "tinylfu".into());
    let inserts: u64 = match args.next().map(|n| n.parse()) {
        None => 1_000_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("INSERTS must be a count: {e}");
            std::process::exit(2);
        }
    };
    // Distinct keys, scattered; the first 2 × CAPACITY fill the cache.
    let key = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let total = CAPACITY * 2 + inserts;
    let held = match subject.as_str() {
        "quick_cache" => {
            let cache = quick_cache::sync::Cache::<u64, u64>::new(CAPACITY as usize);
            (0..total).for_each(|i| cache.insert(key(i), i));
            cache.len()
        }
        "tinylfu" | "lru" => {
            let eviction = if subject == "lru" {
                larder::Eviction::Lru
            } else {
                larder::Eviction::TinyLfu
            };
            let cache: larder::Cache<u64, u64> = match larder::Cache::builder()
                .max_capacity(CAPACITY)
                .eviction(eviction)
                .build()
            {
                Ok(cache) => cache,
                Err(e) => {
                    eprintln!("cannot build the cache: {e}");
                    std::process::exit(2);
                }
            };
            (0..total).for_each(|i| cache.insert(key(i), i));
            cache.len()
        }
        other => {
            eprintln!("unknown subject {other:?}: tinylfu, lru or quick_cache");
            std::process::exit(2);
        }
    };
    println!("{subject}: {inserts} inserts after the fill, {held} entries held");
}
