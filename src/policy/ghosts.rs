//! W-TinyLFU's ghosts: fingerprints of the keys it turned away at admission
//! and of the keys its main region evicted, a short while ago. A ghost found
//! lets a returning key in after all, and steers the window (see
//! `tinylfu::GHOST_NUDGE_CAP`).

/// Keys recently turned away at admission, as 16-bit fingerprints in a
/// direct-mapped table: a newer ghost overwrites an older one in its slot, so
/// the table holds roughly the last `len` keys turned away, with no lists and
/// no aging. A key that loses admission while its ghost is there came back
/// within about that many rejections: recency that the window was too short to
/// catch, as on recency-biased traces, and it is admitted. Loops and scans
/// longer than the cache come back after their ghosts are overwritten, so they
/// stay out. The table is consulted only when a key loses, in one slot that
/// either admits it (taking its ghost) or takes its ghost: inserts and winners
/// never read it (on the 90/10 Zipf mix: 2.4% less time per operation than
/// looking the ghost up on every insert, trace mean unchanged).
///
/// Each slot also holds, beside the turned-away ghost, the ghost of a key
/// main evicted (see [`GHOST_NUDGE_CAP`](super::tinylfu::GHOST_NUDGE_CAP)): the same slot, so that a key
/// that loses reads both in one line. Two tables of the same length make the
/// same decisions at 300 instructions and 4.00 L1 misses per operation of the
/// mix against 296.8 and 3.70 (`benches/mix_cost.sh`).
#[derive(Debug, Default, Clone)]
pub(super) struct Ghosts {
    /// Per slot: the turned-away ghost, then the evicted one.
    slots: Vec<[u16; 2]>,
}

/// Which ghost of a slot.
const TURNED_AWAY: usize = 0;
const EVICTED: usize = 1;

impl Ghosts {
    /// At most `u32::MAX` slots, which [`slot`](Self::slot) scales to.
    pub(super) fn new(len: usize) -> Self {
        Self {
            slots: vec![[0; 2]; len.min(u32::MAX as usize)],
        }
    }

    /// The key's slot and its fingerprint (never 0, the empty slot's mark),
    /// from bits of the hash that neither the shard nor the sketch index by.
    #[inline]
    fn slot(&self, hash: u64) -> Option<(usize, u16)> {
        if self.slots.is_empty() {
            return None;
        }
        let h = (hash ^ (hash >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        // Bits 16..48 scaled to the length (a multiply, not a division:
        // this runs on every lost admission).
        let slot = ((u64::from((h >> 16) as u32) * self.slots.len() as u64) >> 32) as usize;
        Some((slot, (h >> 48) as u16 | 1))
    }

    /// How many slots the table has (tests of the sizing).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Starts fetching the key's slot.
    #[inline]
    pub(super) fn prefetch(&self, hash: u64) {
        if let Some((slot, _)) = self.slot(hash) {
            crate::prefetch::prefetch(&self.slots[slot]);
        }
    }

    /// For a key turned away at admission: true if its ghost was there (it
    /// was turned away a short while ago too), removing it;
    /// else false, leaving its ghost. One slot, read and written once.
    #[inline]
    pub(super) fn returned(&mut self, hash: u64) -> bool {
        let Some((slot, print)) = self.slot(hash) else {
            return false;
        };
        let ghost = &mut self.slots[slot][TURNED_AWAY];
        if *ghost == print {
            *ghost = 0;
            true
        } else {
            *ghost = print;
            false
        }
    }

    /// Keeps the ghost of a key main evicted (over whatever its slot held).
    #[inline]
    pub(super) fn remember_evicted(&mut self, hash: u64) {
        if let Some((slot, print)) = self.slot(hash) {
            self.slots[slot][EVICTED] = print;
        }
    }

    /// True if main evicted the key a short while ago (its ghost was there),
    /// removing the ghost; else false, changing nothing.
    #[inline]
    pub(super) fn take_evicted(&mut self, hash: u64) -> bool {
        let Some((slot, print)) = self.slot(hash) else {
            return false;
        };
        let ghost = &mut self.slots[slot][EVICTED];
        let found = *ghost == print;
        if found {
            *ghost = 0;
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghosts_are_taken_once_and_overwritten_by_newer_ones() {
        let mut g = Ghosts::new(64);
        let hash = |k: u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        assert!(!g.returned(hash(1)), "no ghost yet: it leaves one");
        assert!(g.returned(hash(1)), "turned away again: its ghost is there");
        assert!(!g.returned(hash(1)), "a ghost admits once");
        // Many newer ghosts overwrite the old one's slot.
        for k in 100..10_000 {
            g.returned(hash(k));
        }
        assert!(
            !g.returned(hash(1)),
            "an old ghost outlived 9,900 newer ones"
        );
        // Keys never turned away are almost never taken for ghosts.
        let mut fresh = Ghosts::new(64);
        for k in 100..10_000 {
            fresh.returned(hash(k));
        }
        let false_hits = (20_000..120_000)
            .filter(|&k| fresh.clone().returned(hash(k)))
            .count();
        assert!(false_hits < 10, "{false_hits} false ghosts");
        assert!(
            !Ghosts::default().returned(hash(1)) && !Ghosts::default().returned(hash(1)),
            "an empty table holds none and keeps none"
        );
        // Ghosts of evicted keys: taking finds a kept one once, and keeps
        // none; the two kinds of ghost in a slot are apart.
        let mut kept = Ghosts::new(64);
        assert!(!kept.take_evicted(hash(7)), "a ghost never kept");
        assert!(!kept.take_evicted(hash(7)), "taking keeps nothing");
        assert!(
            !kept.returned(hash(7)),
            "no turned-away ghost: it leaves one"
        );
        assert!(
            !kept.take_evicted(hash(7)),
            "a turned-away ghost taken for an evicted one"
        );
        kept.remember_evicted(hash(7));
        kept.remember_evicted(hash(7));
        assert!(kept.take_evicted(hash(7)), "a kept ghost");
        assert!(!kept.take_evicted(hash(7)), "taken once");
        assert!(kept.returned(hash(7)), "the turned-away ghost was lost");
        kept.remember_evicted(hash(8));
        assert!(
            !kept.returned(hash(8)),
            "an evicted ghost taken for a turned-away one"
        );
    }

    /// No key's print is 0, an empty slot's mark: such a key would find a
    /// ghost in every empty slot (fails without the print's low bit set).
    #[test]
    fn no_key_finds_its_ghost_in_an_empty_slot() {
        let hash = |k: u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut evicted = Ghosts::new(1);
        for k in 0..2_000_000 {
            assert!(
                !evicted.take_evicted(hash(k)),
                "key {k} took an evicted ghost from an empty slot"
            );
            assert!(
                !Ghosts::new(1).returned(hash(k)),
                "key {k} found a turned-away ghost in an empty table"
            );
        }
    }

    /// Keys spread over every slot: direct-mapped over n slots, the ghost of
    /// a key followed by j others survives with probability (1 - 1/n)^j, so
    /// of the last n/2 keys about 79% keep theirs; over half the slots
    /// (a slot index short of a bit), 63%.
    #[test]
    fn the_ghost_table_uses_all_its_slots() {
        const LEN: u64 = 4096;
        let hash = |k: u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut table = Ghosts::new(LEN as usize);
        for k in 0..10 * LEN {
            table.remember_evicted(hash(k));
        }
        let recent = 10 * LEN - LEN / 2..10 * LEN;
        let kept = recent.filter(|&k| table.take_evicted(hash(k))).count() as u64;
        assert!(
            kept * 100 > (LEN / 2) * 72,
            "only {kept} of the last {} ghosts kept in {LEN} slots",
            LEN / 2
        );
    }
}
