//! Hash flooding against the admission filter. An attacker who knows the hash
//! function crafts keys whose hashes equal those of unpopular legitimate keys,
//! so every request for an attack key also inflates the frequency the sketch
//! reports for a legitimate victim. Without a defence the main region freezes
//! around those victims and popular keys can no longer be admitted. W-TinyLFU
//! admits a warm loser one time in 128, which keeps the cache moving: its hit
//! ratio on the legitimate traffic must stay at least LRU's under the same attack.

mod common;

use std::hash::{BuildHasher, Hasher};

use common::{xorshift, zipf};
use larder::{Cache, Eviction};

/// A hasher the attacker knows: keys equal in their low 32 bits collide.
#[derive(Clone, Default)]
struct Known;

struct KnownHasher(u64);

impl Hasher for KnownHasher {
    fn finish(&self) -> u64 {
        (self.0 & 0xFFFF_FFFF).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
}

impl BuildHasher for Known {
    type Hasher = KnownHasher;
    fn build_hasher(&self) -> KnownHasher {
        KnownHasher(0)
    }
}

/// Legitimate hit ratio under attack: every legitimate request is followed by
/// `attack_per_request` requests (get, insert on a miss) for keys that collide
/// with the least popular legitimate keys.
fn hit_ratio_under_attack(eviction: Eviction, attack_per_request: usize) -> f64 {
    const KEYS: usize = 20_000;
    const CAPACITY: u64 = 1_000;
    let cache: Cache<u64, u64, Known> = Cache::builder()
        .max_capacity(CAPACITY)
        .shards(1)
        .eviction(eviction)
        .hasher(Known)
        .build()
        .unwrap();
    let legit = zipf(KEYS, 400_000, 0x1234_5678);
    let mut x = 0xDEAD_BEEF_u64;
    let (mut hits, mut requests) = (0u64, 0u64);
    for (i, &k) in legit.iter().enumerate() {
        match cache.get(&k) {
            Some(_) => hits += 1,
            None => cache.insert(k, k),
        }
        requests += 1;
        for _ in 0..attack_per_request {
            // Collide with one of the 2,000 least popular legitimate keys.
            let victim = (KEYS as u64 - 1) - xorshift(&mut x) % 2_000;
            let attack = victim | ((1 + (i as u64 % 7)) << 32);
            if cache.get(&attack).is_none() {
                cache.insert(attack, 0);
            }
        }
    }
    hits as f64 / requests as f64
}

#[test]
fn admission_is_not_frozen_by_colliding_keys() {
    let calm_tinylfu = hit_ratio_under_attack(Eviction::TinyLfu, 0);
    let calm_lru = hit_ratio_under_attack(Eviction::Lru, 0);
    assert!(
        calm_tinylfu > calm_lru,
        "without attack TinyLFU beats LRU on Zipf"
    );

    let attacked_tinylfu = hit_ratio_under_attack(Eviction::TinyLfu, 1);
    let attacked_lru = hit_ratio_under_attack(Eviction::Lru, 1);
    assert!(
        attacked_tinylfu >= attacked_lru,
        "under attack TinyLFU {attacked_tinylfu:.3} fell below LRU {attacked_lru:.3}"
    );
}
