//! Helpers shared by the integration tests (each test crate uses some).
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// A second executor beside the tests' runtimes: polls one future on this
/// thread, parking between wake-ups (it runs where no runtime is, such as a
/// loader or a write-failure handler).
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// The next number of an xorshift generator (`x` never 0).
pub(crate) fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// `samples` Zipf(1.0) ranks over `n` keys by inverse CDF, 0 the most popular.
pub(crate) fn zipf(n: usize, samples: usize, seed: u64) -> Vec<u64> {
    let mut cdf = Vec::with_capacity(n);
    let mut sum = 0.0;
    for k in 1..=n {
        sum += 1.0 / k as f64;
        cdf.push(sum);
    }
    let mut x = seed;
    (0..samples)
        .map(|_| {
            let u = (xorshift(&mut x) >> 11) as f64 / (1u64 << 53) as f64 * sum;
            cdf.partition_point(|&c| c < u) as u64
        })
        .collect()
}

/// A thread calling `get_or_load(key)` whose loader, once running, waits
/// for the returned sender before it gives `value`.
pub(crate) fn loading_until_released(
    cache: &Arc<larder::Cache<u32, u64>>,
    key: u32,
    value: u64,
) -> (std::thread::JoinHandle<u64>, std::sync::mpsc::Sender<()>) {
    let (started_tx, started) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let cache = cache.clone();
    let loading = std::thread::spawn(move || {
        cache.get_or_load(key, |_| {
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            value
        })
    });
    started.recv().unwrap();
    (loading, release)
}

/// Hashes a `u64` key to itself modulo 1,024, so that tests can put keys on
/// one lock stripe: keys 1,024 apart hash alike, so whatever the cache makes
/// of the hash, they share its stripe.
#[derive(Default)]
pub(crate) struct KeyMod1024(u64);
impl std::hash::Hasher for KeyMod1024 {
    fn finish(&self) -> u64 {
        self.0 % 1024
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0 << 8 | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The hasher of caches whose tests hold one key's lock stripe (a
/// `compute` whose `f` waits, a store call that waits) while they write
/// other keys. The default hasher is seeded at random: two keys would share
/// a stripe about once in 1,024 runs, and the writer would then wait for the
/// held stripe, a hang. Here the stripes are the same in every run: keys 0
/// to 57 are on 58 different stripes (a unit test of the key locks checks
/// it), and keys 1,024 apart on one.
pub(crate) type FixedStripes = std::hash::BuildHasherDefault<KeyMod1024>;
