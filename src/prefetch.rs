//! Prefetch hints: the processor starts fetching a cache line that a write is
//! about to read, so that its miss overlaps with the work before the read
//! instead of stalling it.
//!
//! On the throughput benchmark's mix nearly every new key costs three misses
//! that nothing before them could overlap: its sketch line, and for the
//! window's oldest entry (the next eviction candidate) its ghost slot and its
//! list neighbour. A plain load issued early did not help — it holds up the
//! instructions after it until the line arrives, and the lock release waits
//! for it — while a prefetch asks nothing to wait.
//!
//! This module and `store::slots` (the slab's line-aligned memory) are the
//! only ones with `unsafe` code.
#![allow(unsafe_code)]

/// Starts fetching the cache line holding `address` into every cache level.
/// A hint with no effect on what the program computes: any address is
/// allowed, including one that is stale or was never allocated.
#[inline(always)]
pub(crate) fn prefetch<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` is a hint (it lowers to `llvm.prefetch`): it
    // changes nothing the program computes, whatever the pointer, and the
    // `prefetcht0` it emits never faults (an unmapped address is dropped).
    // Its only requirement, SSE, is part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}
