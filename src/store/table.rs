//! The shard's hash table: tokens by hash, twelve to a cache line.
//!
//! A lookup in a table of control bytes with the tokens elsewhere (as
//! hashbrown lays one out) chases three lines: the control bytes, the token,
//! then the entry. Here a bucket is one 64-byte line holding twelve one-byte
//! tags, an overflow count and the twelve tokens they tag, so a lookup reads
//! the bucket and then the entry: one dependent miss less on every lookup,
//! hit or miss, and on every write's lookup of its key.
//!
//! A key lives in its home bucket or, when that is full, in the first bucket
//! after it with room (wrapping around). Each bucket counts the keys that
//! passed it on their way further (its overflow, as in folly's F14): a lookup
//! stops at the first bucket that does not hold its key and counts none.
//! Removing a key takes one off the count of every bucket it passed. The
//! table grows (doubling) before its buckets hold ten keys each on average,
//! so that most keys sit at home.

use super::slab::Token;

/// Keys per bucket.
const SLOTS: usize = 12;
/// Mean keys per bucket beyond which the table doubles.
const MAX_MEAN: usize = 10;
/// 0x01 in every byte.
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "sse2", not(test)),
    allow(dead_code)
)]
const LOW_BITS: u64 = 0x0101_0101_0101_0101;
/// 0x80 in every byte.
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "sse2", not(test)),
    allow(dead_code)
)]
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// One cache line: the tags of slots 0 to 7 (`tags`, a byte each, low byte
/// first) and 8 to 11 (`more_tags`), 0 marking a free slot; the overflow
/// count; the tokens.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    tags: u64,
    more_tags: u32,
    overflow: u32,
    tokens: [Token; SLOTS],
}

const EMPTY: Bucket = Bucket {
    tags: 0,
    more_tags: 0,
    overflow: 0,
    tokens: [0; SLOTS],
};

impl Bucket {
    /// The slots that may hold `tag` (0: the free ones), bit `i` for slot
    /// `i`. With SSE2 (every x86-64) the bits are exact: one instruction
    /// compares the twelve tags. Elsewhere, [`portable_matching`](Self::portable_matching).
    #[inline(always)]
    fn matching(&self, tag: u8) -> u32 {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        {
            sse2_matching(self, tag)
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
        {
            self.portable_matching(tag)
        }
    }

    /// [`matching`](Self::matching) in plain integer arithmetic, a word of
    /// tags at a time: the lowest bit set is exact, and a bit above a match
    /// may be set wrongly, which costs a lookup one comparison of tokens.
    #[cfg_attr(
        all(target_arch = "x86_64", target_feature = "sse2", not(test)),
        allow(dead_code)
    )]
    #[inline(always)]
    fn portable_matching(&self, tag: u8) -> u32 {
        let pattern = u64::from(tag) * LOW_BITS;
        let low = zero_bytes(self.tags ^ pattern);
        let high = zero_bytes(u64::from(self.more_tags ^ pattern as u32)) & 0x8080_8080;
        byte_flags_to_bits(low) | byte_flags_to_bits(high) << 8
    }

    /// The tag of `slot`.
    #[cfg(any(test, feature = "__fuzz"))]
    fn tag(&self, slot: usize) -> u8 {
        if slot < 8 {
            (self.tags >> (slot * 8)) as u8
        } else {
            (self.more_tags >> ((slot - 8) * 8)) as u8
        }
    }

    #[inline]
    fn set_tag(&mut self, slot: usize, tag: u8) {
        if slot < 8 {
            let shift = slot * 8;
            self.tags = (self.tags & !(0xFF << shift)) | u64::from(tag) << shift;
        } else {
            let shift = (slot - 8) * 8;
            self.more_tags = (self.more_tags & !(0xFF << shift)) | u32::from(tag) << shift;
        }
    }

    /// The first free slot, if any.
    #[inline]
    fn free_slot(&self) -> Option<usize> {
        let free = self.matching(0);
        (free != 0).then(|| free.trailing_zeros() as usize)
    }

    /// Whether `slot` holds a token.
    #[cfg(any(test, feature = "__fuzz"))]
    fn used(&self, slot: usize) -> bool {
        self.tag(slot) != 0
    }
}

/// The bytes of `word` that are zero, as the high bit of each: the lowest
/// flagged byte is zero, and so is every flagged byte below the first zero
/// byte; a byte of 1 right above a zero byte may be flagged too.
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "sse2", not(test)),
    allow(dead_code)
)]
#[inline(always)]
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(LOW_BITS) & !word & HIGH_BITS
}

/// The high bit of each byte of `flags` as bit `i` for byte `i`.
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "sse2", not(test)),
    allow(dead_code)
)]
#[inline(always)]
fn byte_flags_to_bits(flags: u64) -> u32 {
    ((flags >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
}

/// [`Bucket::matching`] on SSE2: the bucket's first 16 bytes loaded at once
/// and compared with the tag byte by byte. It pays on the lookup's critical
/// path: where the portable match moves two words through half a dozen
/// integer steps each and loops over two masks, this is a load, a compare
/// and a mask. On the throughput benchmark's mix (one thread),
/// `bash benches/mix_cost.sh` fell from 287 to 272 instructions per
/// operation, and `mix_cost larder 20000000` against the portable build
/// (fifteen alternating runs) took a median 1.161 s against 1.222 (fastest
/// runs 0.984 against 1.076). Building the 16 bytes from the two tag words
/// instead of loading them measured the same instructions but less time saved
/// (median 1.109 against 1.158), the transfers into the vector register
/// lengthening the lookup's chain of dependent steps.
///
/// The crate's unsafe code is confined to this function, the prefetch and
/// the slab's aligned slots; CI checks that, and runs the table's tests
/// under Miri.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[allow(unsafe_code)]
#[inline(always)]
fn sse2_matching(bucket: &Bucket, tag: u8) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_load_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    // SAFETY: these intrinsics need SSE2 alone, which this build enables
    // (the `cfg` above). The load reads the bucket's first 16 bytes (`tags`,
    // `more_tags`, `overflow`: plain integers, `repr(C)`, no padding), through
    // a pointer from a live reference, aligned to 64 and so to the load's 16.
    let found = unsafe {
        let bytes = _mm_load_si128(std::ptr::from_ref(bucket).cast::<__m128i>());
        _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(tag as i8)))
    };
    // Bytes 12 to 15 are the overflow count, not slots.
    found as u32 & 0xFFF
}

/// Where a hash goes: its home bucket among `buckets` (a power of two), from
/// its low bits, and its tag, from its top seven (the shard was chosen by bits
/// in between), with the high bit set so that it is never 0 — nor is a byte
/// differing from it in the lowest bit only, which `Bucket::matching` may
/// flag above a match: a free slot is never taken for a match. The bits are
/// those hashbrown takes, so a hasher good enough for it is good enough here.
#[inline(always)]
fn place_of(hash: u64, buckets: usize) -> (usize, u8) {
    (hash as usize & (buckets - 1), (hash >> 57) as u8 | 0x80)
}

/// Tokens by their keys' hashes; the keys themselves are the caller's.
#[derive(Debug, Default)]
pub(crate) struct Table {
    buckets: Vec<Bucket>,
    len: usize,
}

/// Where a key sits: bucket and slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    bucket: usize,
    slot: usize,
}

impl Table {
    /// A table with room for `capacity` keys before it grows (a power of two
    /// of buckets); `None` when that room cannot be allocated.
    pub(crate) fn with_capacity(capacity: usize) -> Option<Self> {
        let mut table = Self::default();
        let buckets = Self::buckets_for(capacity);
        if buckets > 0 {
            table.buckets.try_reserve_exact(buckets).ok()?;
            table.buckets.resize(buckets, EMPTY);
        }
        Some(table)
    }

    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Used by the store's tests, which the loom build leaves out.
    #[cfg(all(test, not(larder_loom)))]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Starts fetching the line a lookup of `hash` reads first.
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        if !self.buckets.is_empty() {
            let (home, _) = place_of(hash, self.buckets.len());
            crate::prefetch::prefetch(&self.buckets[home]);
        }
    }

    /// The first token under `hash` that `eq` accepts.
    #[inline]
    pub(crate) fn find(&self, hash: u64, eq: impl FnMut(Token) -> bool) -> Option<Token> {
        self.locate(hash, eq)
            .map(|at| self.buckets[at.bucket].tokens[at.slot])
    }

    /// Where the first token under `hash` that `eq` accepts sits.
    #[inline]
    pub(crate) fn locate(&self, hash: u64, mut eq: impl FnMut(Token) -> bool) -> Option<Found> {
        let n = self.buckets.len();
        if n == 0 {
            return None;
        }
        let (mut at, tag) = place_of(hash, n);
        // Bounded: the table never fills, so some bucket on the way counts
        // no overflow; the bound only guards against a broken count.
        for _ in 0..n {
            let bucket = &self.buckets[at];
            let mut matching = bucket.matching(tag);
            while matching != 0 {
                let slot = matching.trailing_zeros() as usize;
                if eq(bucket.tokens[slot]) {
                    return Some(Found { bucket: at, slot });
                }
                matching &= matching - 1;
            }
            if bucket.overflow == 0 {
                return None;
            }
            at = (at + 1) & (n - 1);
        }
        None
    }

    /// Takes out the token at `found`, which a lookup of `hash` returned.
    pub(crate) fn remove(&mut self, hash: u64, found: Found) -> Token {
        let n = self.buckets.len();
        let token = self.buckets[found.bucket].tokens[found.slot];
        self.buckets[found.bucket].set_tag(found.slot, 0);
        let (mut at, _) = place_of(hash, n);
        while at != found.bucket {
            self.buckets[at].overflow -= 1;
            at = (at + 1) & (n - 1);
        }
        self.len -= 1;
        token
    }

    /// Makes room for one more token, rehashing every token with `hash_of` if
    /// the table must grow. A panic in `hash_of` leaves the table as it was.
    ///
    /// `ceiling` is the most tokens the table will hold at once when the
    /// caller knows (`usize::MAX` if not): a table full to its mean load
    /// whose next token is the last it will ever hold takes it over the mean
    /// instead of doubling. An unweighted shard of a capacity ten times a
    /// power of two otherwise doubles its table for the one entry a new key
    /// holds over the capacity until its eviction.
    #[inline]
    pub(crate) fn reserve_one(&mut self, ceiling: usize, hash_of: impl Fn(Token) -> u64) {
        let full = self.buckets.len() * MAX_MEAN;
        if self.len >= full && !(self.len == full && self.len + 1 == ceiling && full != 0) {
            self.grow(&hash_of);
        }
    }

    /// Takes every token out, keeping the buckets.
    pub(crate) fn clear(&mut self) {
        if self.len != 0 {
            self.buckets.fill(EMPTY);
            self.len = 0;
        }
    }

    /// Buckets allocated.
    pub(crate) fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// The buckets [`with_capacity`](Self::with_capacity) allocates for
    /// `capacity` keys.
    pub(crate) fn buckets_for(capacity: usize) -> usize {
        match capacity {
            0 => 0,
            _ => capacity.div_ceil(MAX_MEAN).next_power_of_two(),
        }
    }

    /// Adds `token` under `hash`, which no token in the table is under for the
    /// same key. Growing rehashes every token with `hash_of` (see
    /// [`reserve_one`](Self::reserve_one)).
    #[cfg(test)]
    pub(crate) fn insert_unique(
        &mut self,
        hash: u64,
        token: Token,
        hash_of: impl Fn(Token) -> u64,
    ) {
        self.reserve_one(usize::MAX, hash_of);
        self.insert_reserved(hash, token);
    }

    /// Adds `token` under `hash`, as `insert_unique` (the tests' one-step insert)
    /// does, after a [`reserve_one`](Self::reserve_one) made the room: the
    /// store reserves before its slab takes the entry (a `Hash` that panics
    /// while the table grows then leaves neither holding it) and does not
    /// check again.
    #[inline]
    pub(crate) fn insert_reserved(&mut self, hash: u64, token: Token) {
        debug_assert!(self.len <= self.buckets.len() * MAX_MEAN);
        Self::place(&mut self.buckets, hash, token);
        self.len += 1;
    }

    /// Puts `token` in the first slot free from its home on.
    #[inline]
    fn place(buckets: &mut [Bucket], hash: u64, token: Token) {
        let n = buckets.len();
        let (mut at, tag) = place_of(hash, n);
        loop {
            let bucket = &mut buckets[at];
            if let Some(slot) = bucket.free_slot() {
                bucket.set_tag(slot, tag);
                bucket.tokens[slot] = token;
                return;
            }
            bucket.overflow += 1;
            at = (at + 1) & (n - 1);
        }
    }

    #[cold]
    fn grow(&mut self, hash_of: &impl Fn(Token) -> u64) {
        let buckets = (self.buckets.len() * 2).max(1);
        let mut grown = vec![EMPTY; buckets];
        for bucket in &self.buckets {
            for slot in 0..SLOTS {
                let tag = if slot < 8 {
                    (bucket.tags >> (slot * 8)) as u8
                } else {
                    (bucket.more_tags >> ((slot - 8) * 8)) as u8
                };
                if tag != 0 {
                    let token = bucket.tokens[slot];
                    Self::place(&mut grown, hash_of(token), token);
                }
            }
        }
        self.buckets = grown;
    }

    /// Tokens the table takes before it next grows (for the store's tests,
    /// which the loom build leaves out).
    #[cfg(all(test, not(larder_loom)))]
    pub(crate) fn room(&self) -> usize {
        self.buckets.len() * MAX_MEAN - self.len
    }

    /// Every token, in no particular order.
    #[cfg(test)]
    pub(crate) fn tokens(&self) -> impl Iterator<Item = Token> + '_ {
        self.buckets.iter().flat_map(|bucket| {
            (0..SLOTS)
                .filter(|&slot| bucket.used(slot))
                .map(|slot| bucket.tokens[slot])
        })
    }

    /// Checks the overflow counts and the length against the tokens' hashes.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn validate(&self, hash_of: impl Fn(Token) -> u64) {
        let n = self.buckets.len();
        let mut overflow = vec![0u32; n];
        let mut len = 0;
        for (at, bucket) in self.buckets.iter().enumerate() {
            for slot in 0..SLOTS {
                if !bucket.used(slot) {
                    continue;
                }
                len += 1;
                let hash = hash_of(bucket.tokens[slot]);
                let (mut passed, tag) = place_of(hash, n);
                assert_eq!(bucket.tag(slot), tag, "tag");
                while passed != at {
                    overflow[passed] += 1;
                    passed = (passed + 1) & (n - 1);
                }
            }
        }
        assert_eq!(len, self.len, "the table's length");
        for (bucket, expected) in self.buckets.iter().zip(overflow) {
            assert_eq!(bucket.overflow, expected, "an overflow count");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_bucket_is_one_line() {
        assert_eq!(size_of::<Bucket>(), 64);
        assert_eq!(align_of::<Bucket>(), 64);
    }

    #[test]
    fn zero_bytes_flags_the_zero_bytes() {
        let word = u64::from_le_bytes([7, 1, 0x80, 0, 0xFF, 0, 0x7F, 1]);
        let flagged: Vec<usize> = (0..8)
            .filter(|b| zero_bytes(word) >> (b * 8 + 7) & 1 == 1)
            .collect();
        assert_eq!(flagged, [3, 5]);
        // A 1 right above a zero may be flagged; the lowest flag is exact.
        let word = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(zero_bytes(word).trailing_zeros(), 7);
        assert_eq!(zero_bytes(u64::MAX), 0);
    }

    #[test]
    fn matching_flags_the_slots_holding_the_tag() {
        // Buckets of random tags drawn from few values (so that most hold
        // repeats), and every tag value asked for.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..500 {
            let mut bucket = EMPTY;
            for slot in 0..SLOTS {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let tag = [0, 0x80, 0x81, 0xFE, 0xFF][(x % 5) as usize];
                bucket.set_tag(slot, tag);
            }
            bucket.overflow = (x >> 32) as u32;
            for tag in [0, 0x80, 0x81, 0xFE, 0xFF, 0x9C] {
                let exact = (0..SLOTS)
                    .filter(|&s| bucket.tag(s) == tag)
                    .fold(0u32, |m, s| m | 1 << s);
                let portable = bucket.portable_matching(tag);
                assert_eq!(portable & exact, exact, "every match flagged");
                assert_eq!(
                    portable.trailing_zeros(),
                    exact.trailing_zeros(),
                    "the lowest flag exact"
                );
                assert_eq!(portable >> SLOTS, 0, "no slot past the twelfth");
                #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
                assert_eq!(bucket.matching(tag), exact, "exact with SSE2");
            }
        }
    }

    #[test]
    fn every_slot_takes_a_tag_and_gives_it_back() {
        let mut bucket = EMPTY;
        for slot in 0..SLOTS {
            assert_eq!(bucket.free_slot(), Some(slot));
            bucket.set_tag(slot, 0x80 | slot as u8);
        }
        assert_eq!(bucket.free_slot(), None);
        for slot in 0..SLOTS {
            let matching = bucket.matching(0x80 | slot as u8);
            assert_eq!(matching.trailing_zeros() as usize, slot);
        }
        bucket.set_tag(9, 0);
        assert_eq!(bucket.free_slot(), Some(9));
        assert_eq!(bucket.tag(10), 0x8A);
    }

    #[test]
    fn keys_sharing_a_home_overflow_and_leave_cleanly() {
        // Every key hashes alike: all share one home and one tag, so they
        // fill it, overflow into the next buckets and are told apart by `eq`.
        let mut table = Table::with_capacity(40).unwrap();
        let same = |_: Token| 7u64;
        for t in 0..30 {
            table.insert_unique(7, t, same);
            table.validate(same);
        }
        for t in 0..30 {
            assert_eq!(table.find(7, |x| x == t), Some(t));
        }
        for t in (0..30).step_by(3) {
            let at = table.locate(7, |x| x == t).unwrap();
            assert_eq!(table.remove(7, at), t);
            table.validate(same);
        }
        for t in 0..30 {
            assert_eq!(table.find(7, |x| x == t).is_some(), t % 3 != 0, "token {t}");
        }
    }

    proptest! {
        /// The table against a `Vec` of (token, hash): inserts, removals
        /// and lookups, through growth, with hashes from a narrow range so
        /// that homes and tags collide.
        #[test]
        fn table_matches_a_list(ops in prop::collection::vec((0u8..3, 0u64..64, any::<u64>()), 1..400)) {
            let mut table = Table::with_capacity(0).unwrap();
            let mut model: Vec<(Token, u64)> = Vec::new();
            let mut next: Token = 0;
            for (op, pick, hash) in ops {
                // Narrow hashes collide in home and tag; wide ones spread.
                let hash = if pick % 2 == 0 { pick } else { hash };
                match op {
                    0 => {
                        let mut hashes = model.clone();
                        hashes.push((next, hash));
                        table.insert_unique(hash, next, move |t: Token| hashes.iter().find(|(x, _)| *x == t).map(|(_, h)| *h).unwrap());
                        model.push((next, hash));
                        next += 1;
                    }
                    1 if !model.is_empty() => {
                        let (t, h) = model.remove(pick as usize % model.len());
                        let at = table.locate(h, |x| x == t);
                        prop_assert!(at.is_some(), "token {} lost", t);
                        prop_assert_eq!(table.remove(h, at.unwrap()), t);
                    }
                    _ => {
                        // A lookup is only ever shown tokens in the table.
                        let listed = |x: Token| model.iter().any(|&(y, _)| y == x);
                        for &(t, h) in &model {
                            prop_assert_eq!(table.find(h, |x| { assert!(listed(x), "stale {x}"); x == t }), Some(t));
                        }
                        prop_assert_eq!(table.find(hash, |x| { assert!(listed(x), "stale {x}"); x == next }), None);
                    }
                }
                let hashes = model.clone();
                table.validate(move |t: Token| hashes.iter().find(|(x, _)| *x == t).map(|(_, h)| *h).unwrap());
                let mut tokens: Vec<Token> = table.tokens().collect();
                tokens.sort_unstable();
                let mut expected: Vec<Token> = model.iter().map(|(t, _)| *t).collect();
                expected.sort_unstable();
                prop_assert_eq!(tokens, expected);
                prop_assert_eq!(table.len(), model.len());
            }
        }
    }
}
