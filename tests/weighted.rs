//! Hit ratios of weighted caches: W-TinyLFU's admission and its frequency
//! counting must hold up however the entries' weights differ.

mod common;

use common::zipf;
use larder::Cache;

/// SipHash with fixed keys: the same decisions at every run.
type Fixed = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// The hit ratio (in percent) over the second half of a million Zipf
/// requests for 20,000 keys of 200 units each (a miss inserts the key), in
/// a shard of 1 MiB units, hashed alike at every run; with `heavy_first`, five entries of 128 KiB go
/// in before the requests start, and are never asked for again.
fn hit_ratio(heavy_first: bool) -> f64 {
    let cache: Cache<u64, u32, Fixed> = Cache::builder()
        .max_capacity(1 << 20)
        .shards(1)
        .hasher(Fixed::default())
        .weigher(|_, v| *v)
        .build()
        .unwrap();
    if heavy_first {
        for k in 0..5 {
            cache.insert(u64::MAX - k, 1 << 17);
        }
    }
    let requests = zipf(20_000, 1_000_000, 0x5EED_CAFE);
    let mut hits = 0u32;
    for (i, &k) in requests.iter().enumerate() {
        match cache.get(&k) {
            Some(_) if i >= requests.len() / 2 => hits += 1,
            Some(_) => {}
            None => cache.insert(k, 200),
        }
    }
    f64::from(hits) * 100.0 / (requests.len() / 2) as f64
}

/// The sketch is sized by the entries a shard holds when full, estimated
/// once the shard is half full: here from five heavy entries, as if the
/// shard would hold eight. It grows as the shard comes to hold thousands of
/// light entries, so the heavy start costs them no hits.
#[test]
fn heavy_first_entries_do_not_cost_the_light_ones_that_follow_their_hits() {
    let (plain, heavy_first) = (hit_ratio(false), hit_ratio(true));
    assert!(plain > 50.0, "{plain:.2}%");
    assert!(
        heavy_first > plain - 1.0,
        "{heavy_first:.2}% after heavy entries against {plain:.2}%"
    );
}
