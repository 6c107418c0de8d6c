//! Key streams shared by the benchmarks.

/// Distinct keys the Zipf streams draw from.
pub(crate) const KEYS: usize = 1_000_000;
/// Length of a key stream (a power of two, so streams wrap with a mask).
pub(crate) const SAMPLES: usize = 1 << 20;

/// A deterministic xorshift stream.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    #[allow(clippy::should_implement_trait)]
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `SAMPLES` keys drawn from Zipf(1.0) over `KEYS` ranks by inverse CDF.
pub(crate) fn zipf_keys(seed: u64) -> Vec<u64> {
    let mut cdf = Vec::with_capacity(KEYS);
    let mut sum = 0.0;
    for k in 1..=KEYS {
        sum += 1.0 / k as f64;
        cdf.push(sum);
    }
    let mut rng = Rng(seed);
    (0..SAMPLES)
        .map(|_| {
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * sum;
            cdf.partition_point(|&c| c < u) as u64
        })
        .collect()
}
