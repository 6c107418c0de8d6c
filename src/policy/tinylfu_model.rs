//! A naive W-TinyLFU — three `Vec`s instead of intrusive lists, linear scans
//! instead of region marks — replayed step by step against the real policy
//! under random operations. Both share the sketch, the climber and the random
//! admission stream (all separately tested), so every decision must agree: the
//! same victim, the same region for every resident, the same window size.

use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::HashSet;

use super::sketch::Sketch;
use super::tinylfu::{Climber, TinyLfu, ADMIT_MARGIN, ADMIT_WARM_ONE_IN, ADMIT_WARM_THRESHOLD};
use super::Entries;
use crate::store::Token;

struct Fake {
    weighted: bool,
}

impl Entries for Fake {
    fn hash(&self, token: Token) -> u64 {
        u64::from(token).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xABCD
    }
    fn weight(&self, token: Token) -> u32 {
        if self.weighted {
            1 + token % 3
        } else {
            1
        }
    }
    fn rearm(&self, _: Token) {}
}

struct Naive {
    window: Vec<Token>,
    probation: Vec<Token>,
    protected: Vec<Token>,
    capacity: u64,
    window_max: u64,
    protected_max: u64,
    sketch: Option<Sketch>,
    climber: Climber,
    rng: u64,
    rearmed: RefCell<Vec<Token>>,
}

impl Naive {
    fn new(capacity: u64) -> Self {
        let reference = TinyLfu::new(capacity);
        let (window_max, protected_max, rng) = reference.tuning();
        Self {
            window: Vec::new(),
            probation: Vec::new(),
            protected: Vec::new(),
            capacity,
            window_max,
            protected_max,
            sketch: None,
            climber: Climber::new(capacity),
            rng,
            rearmed: RefCell::default(),
        }
    }

    fn weight(list: &[Token], e: &Fake) -> u64 {
        list.iter().map(|&t| u64::from(e.weight(t))).sum()
    }

    fn total(&self, e: &Fake) -> u64 {
        Self::weight(&self.window, e)
            + Self::weight(&self.probation, e)
            + Self::weight(&self.protected, e)
    }

    fn set_window(&mut self, window_max: u64) {
        self.window_max = window_max.max(1).min(self.capacity.saturating_sub(1));
        self.protected_max = ((self.capacity - self.window_max) as f64 * 0.8) as u64;
    }

    fn count(&mut self, hash: u64, e: &Fake) {
        if self.sketch.is_none() && self.total(e) >= self.capacity / 2 {
            self.sketch = Some(Sketch::new(self.capacity));
        }
        if let Some(s) = &mut self.sketch {
            s.increment(hash);
        }
    }

    fn freq(&self, hash: u64) -> u8 {
        self.sketch.as_ref().map_or(0, |s| s.frequency(hash))
    }

    fn climb(&mut self, e: &Fake) {
        if self.sketch.is_none() {
            self.climber.hits = 0;
            self.climber.misses = 0;
            return;
        }
        if let Some(delta) = self.climber.adjustment(self.capacity) {
            self.set_window((self.window_max as i64).saturating_add(delta).max(0) as u64);
            self.demote(e);
        }
    }

    fn demote(&mut self, e: &Fake) {
        while Self::weight(&self.protected, e) > self.protected_max && !self.protected.is_empty() {
            let t = self.protected.remove(0);
            self.probation.push(t);
            self.rearmed.borrow_mut().push(t);
        }
    }

    fn insert(&mut self, t: Token, e: &Fake) {
        self.window.push(t);
        self.count(e.hash(t), e);
        self.climber.misses += 1;
        self.climb(e);
    }

    fn access(&mut self, t: Token, e: &Fake) {
        if let Some(i) = self.window.iter().position(|&x| x == t) {
            self.window.remove(i);
            self.window.push(t);
        } else if let Some(i) = self.protected.iter().position(|&x| x == t) {
            self.protected.remove(i);
            self.protected.push(t);
        } else if let Some(i) = self.probation.iter().position(|&x| x == t) {
            self.probation.remove(i);
            self.protected.push(t);
            self.demote(e);
        } else {
            return;
        }
        self.count(e.hash(t), e);
        self.climber.hits += 1;
        self.climb(e);
    }

    fn remove(&mut self, t: Token) {
        for list in [&mut self.window, &mut self.probation, &mut self.protected] {
            list.retain(|&x| x != t);
        }
    }

    fn admit(&mut self, c: u64, v: u64) -> bool {
        let (c, v) = (self.freq(c), self.freq(v));
        if u16::from(c) > u16::from(v) + u16::from(ADMIT_MARGIN) {
            return true;
        }
        if c >= ADMIT_WARM_THRESHOLD {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            return self.rng % ADMIT_WARM_ONE_IN == 0;
        }
        false
    }

    fn victim(&mut self, keep: Token, e: &Fake) -> Option<Token> {
        let first = |list: &[Token]| list.iter().copied().find(|&t| t != keep);
        while Self::weight(&self.window, e) > self.window_max {
            let Some(c) = first(&self.window) else { break };
            let w = u64::from(e.weight(c));
            let main_max = self.capacity - self.window_max;
            let room =
                Self::weight(&self.probation, e) + Self::weight(&self.protected, e) + w <= main_max;
            let rival = first(&self.probation).or_else(|| first(&self.protected));
            let to_probation = |n: &mut Self| {
                n.window.retain(|&x| x != c);
                n.probation.push(c);
                n.rearmed.borrow_mut().push(c);
            };
            match rival {
                Some(v) if !room => {
                    if self.admit(e.hash(c), e.hash(v)) {
                        to_probation(self);
                        return Some(v);
                    }
                    return Some(c);
                }
                _ => to_probation(self),
            }
        }
        first(&self.probation)
            .or_else(|| first(&self.protected))
            .or_else(|| first(&self.window))
    }
}

#[derive(Debug, Clone)]
enum Step {
    Insert,
    Access(usize),
    Remove(usize),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        prop_oneof![
            3 => Just(Step::Insert),
            6 => any::<usize>().prop_map(Step::Access),
            1 => any::<usize>().prop_map(Step::Remove),
        ],
        1..1500,
    )
}

fn agree(capacity: u64, weighted: bool, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let e = Fake { weighted };
    let mut real = TinyLfu::new(capacity);
    let mut naive = Naive::new(capacity);
    let mut resident: Vec<Token> = Vec::new();
    let mut next: Token = 0;
    for step in steps {
        match step {
            Step::Insert => {
                let t = next;
                next += 1;
                real.on_insert(t, &e);
                naive.insert(t, &e);
                resident.push(t);
                while real.total() > capacity {
                    let v = real.victim(t, &e);
                    prop_assert_eq!(v, naive.victim(t, &e), "different victims");
                    let Some(v) = v else { break };
                    real.on_remove(v, &e);
                    naive.remove(v);
                    resident.retain(|&x| x != v);
                }
            }
            Step::Access(i) if !resident.is_empty() => {
                let t = resident[i % resident.len()];
                real.on_access(t, &e);
                naive.access(t, &e);
            }
            Step::Remove(i) if !resident.is_empty() => {
                let t = resident.remove(i % resident.len());
                real.on_remove(t, &e);
                naive.remove(t);
            }
            _ => {}
        }
        real.validate(&e);
        let (window, probation, protected) = real.regions();
        prop_assert_eq!(&window, &naive.window);
        prop_assert_eq!(&probation, &naive.probation);
        prop_assert_eq!(&protected, &naive.protected);
        prop_assert_eq!(real.tuning().0, naive.window_max);
        let mut all: Vec<Token> = window
            .into_iter()
            .chain(probation)
            .chain(protected)
            .collect();
        all.sort_unstable();
        let mut expected = resident.clone();
        expected.sort_unstable();
        prop_assert_eq!(all, expected);
    }
    let distinct: HashSet<_> = naive.rearmed.borrow().iter().copied().collect();
    prop_assert!(distinct.len() <= next as usize);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn matches_naive_model(capacity in 2u64..64, steps in steps()) {
        agree(capacity, false, steps)?;
    }

    #[test]
    fn matches_naive_model_weighted(capacity in 4u64..64, steps in steps()) {
        agree(capacity, true, steps)?;
    }
}
