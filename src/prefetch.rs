//! Prefetch hints: the processor starts fetching a cache line that a write is
//! about to read, so that its miss overlaps with the work before the read
//! instead of stalling it.
//!
//! On the throughput benchmark's mix nearly every new key costs misses that
//! nothing before them could overlap: its sketch line, and for the window's
//! oldest entry (the next eviction candidate) its ghost slot, its list
//! neighbour and its table bucket (the control bytes and the buckets its
//! removal probes: `store::TableLines`). A plain load issued early did not
//! help — it holds up the instructions after it until the line arrives, and
//! the lock release waits for it — while a prefetch asks nothing to wait.
//!
//! This module, `store::slots` (the slab's line-aligned memory) and the SSE2
//! tag match in `store::table` are the only places with `unsafe` code.
#![allow(unsafe_code)]

/// Starts fetching the cache line holding `address` into every cache level.
/// A hint with no effect on what the program computes: any address is
/// allowed, including one that is stale or was never allocated. On x86-64
/// and AArch64 (elsewhere, and on AArch64 under miri, it does nothing).
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
    #[cfg(all(target_arch = "aarch64", not(miri)))]
    // SAFETY: `prfm pldl1keep` is a hint: a prefetch never faults (one of an
    // unmapped address does nothing), and it writes no register, no flag and
    // no memory, as the options declare (`readonly` claims more than it does,
    // a read: that keeps it in order with the writes around it, and leaves
    // the compiler free to move it among reads, which a hint allows). The
    // stable way to it: the `_prefetch` intrinsic is unstable on AArch64.
    unsafe {
        std::arch::asm!(
            "prfm pldl1keep, [{address}]",
            address = in(reg) address,
            options(nostack, preserves_flags, readonly)
        );
    }
    #[cfg(not(any(target_arch = "x86_64", all(target_arch = "aarch64", not(miri)))))]
    let _ = address;
}
