//! Operation sequences against a naive model. With one shard the resident set
//! must equal an exact `Vec` LRU's (or LFU's) after every step; for W-TinyLFU,
//! whose admission the model does not replay, every read must return the last
//! value written or nothing, and a fitting insert must be readable at once.
//! `validate()` checks the store's invariants (table, slab, policy regions and
//! weights agree) after every step.
#![no_main]

use arbitrary::Arbitrary;
use larder::{Cache, Eviction};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Get(u8),
    Peek(u8),
    Insert(u8, u8, u8),
    Remove(u8),
    InvalidateAll,
}

#[derive(Arbitrary, Debug)]
struct Input {
    policy: u8,
    capacity: u8,
    ops: Vec<Op>,
}

/// (key, value, weight, frequency, last use); sorted in eviction order.
/// For W-TinyLFU only the last value written per key is meaningful.
struct Model {
    lfu: bool,
    capacity: u64,
    entries: Vec<(u8, u8, u64, u64, u64)>,
    clock: u64,
}

impl Model {
    fn sort(&mut self) {
        if self.lfu {
            self.entries.sort_by_key(|e| (e.3, e.4));
        } else {
            self.entries.sort_by_key(|e| e.4);
        }
    }
    fn pos(&self, k: u8) -> Option<usize> {
        self.entries.iter().position(|e| e.0 == k)
    }
    fn touch(&mut self, i: usize) {
        self.clock += 1;
        self.entries[i].3 += 1;
        self.entries[i].4 = self.clock;
        self.sort();
    }
    fn weight(&self) -> u64 {
        self.entries.iter().map(|e| e.2).sum()
    }
    fn evict(&mut self, limit: u64, keep: Option<u8>) {
        while self.weight() > limit {
            match self.entries.iter().position(|e| Some(e.0) != keep) {
                Some(i) => drop(self.entries.remove(i)),
                None => break,
            }
        }
    }
    fn insert(&mut self, k: u8, v: u8, w: u64) {
        if w > self.capacity {
            if let Some(i) = self.pos(k) {
                self.entries.remove(i);
            }
            return;
        }
        match self.pos(k) {
            Some(i) => {
                self.entries[i].1 = v;
                self.entries[i].2 = w;
                self.touch(i);
                self.evict(self.capacity, Some(k));
            }
            None => {
                self.evict(self.capacity - w, None);
                self.clock += 1;
                self.entries.push((k, v, w, 1, self.clock));
                self.sort();
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let capacity = u64::from(input.capacity.max(1));
    let eviction = match input.policy % 3 {
        0 => Eviction::Lru,
        1 => Eviction::Lfu,
        _ => Eviction::TinyLfu,
    };
    let exact = eviction != Eviction::TinyLfu;
    let mut written: std::collections::HashMap<u8, u8> = Default::default();
    let cache: Cache<u8, (u8, u8)> = Cache::builder()
        .max_capacity(capacity)
        .shards(1)
        .eviction(eviction)
        .weigher(|_, v: &(u8, u8)| u32::from(v.1 % 16))
        .build()
        .unwrap();
    let mut model = Model {
        lfu: eviction == Eviction::Lfu,
        capacity,
        entries: Vec::new(),
        clock: 0,
    };
    for op in input.ops.into_iter().take(2_000) {
        match op {
            Op::Get(k) => {
                let got = cache.get(&k).map(|(v, w)| (v, w % 16));
                if exact {
                    let expected = model.pos(k).map(|i| {
                        let e = model.entries[i];
                        model.touch(i);
                        (e.1, e.2 as u8)
                    });
                    assert_eq!(got, expected);
                } else if let Some((v, _)) = got {
                    assert_eq!(Some(&v), written.get(&k));
                }
            }
            Op::Peek(k) => {
                let got = cache.peek(&k).map(|v| v.0);
                if exact {
                    assert_eq!(got, model.pos(k).map(|i| model.entries[i].1));
                } else if let Some(v) = got {
                    assert_eq!(Some(&v), written.get(&k));
                }
            }
            Op::Insert(k, v, w) => {
                cache.insert(k, (v, w));
                model.insert(k, v, u64::from(w % 16));
                if u64::from(w % 16) <= capacity {
                    written.insert(k, v);
                    assert_eq!(
                        cache.peek(&k).map(|v| v.0),
                        Some(v),
                        "a fitting insert is readable"
                    );
                } else {
                    written.remove(&k);
                    assert_eq!(cache.peek(&k), None);
                }
            }
            Op::Remove(k) => {
                let got = cache.remove(&k).map(|v| v.0);
                let expected = model.pos(k).map(|i| model.entries.remove(i).1);
                if exact {
                    assert_eq!(got, expected);
                } else if got.is_some() {
                    assert_eq!(got.as_ref(), written.get(&k));
                }
                written.remove(&k);
                assert_eq!(cache.peek(&k), None);
            }
            Op::InvalidateAll => {
                cache.invalidate_all();
                model.entries.clear();
                written.clear();
                assert!(cache.is_empty());
            }
        }
        cache.validate();
        assert!(cache.weighted_size() <= capacity);
        if exact {
            let mut resident: Vec<(u8, u8)> = cache.iter().map(|(k, v)| (k, v.0)).collect();
            resident.sort_unstable();
            let mut expected: Vec<(u8, u8)> = model.entries.iter().map(|e| (e.0, e.1)).collect();
            expected.sort_unstable();
            assert_eq!(resident, expected);
            assert_eq!(cache.weighted_size(), model.weight());
        }
    }
});
