//! Cache-line hints the frame path gives the CPU ahead of its loads and stores (guest rings
//! and buffers).

/// Asks the CPU to start loading the cache line at host address `at` (a hint: it never
/// faults, whatever the address).
#[inline]
pub fn prefetch(at: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at as *const i8)
    };
}

/// Asks the CPU to take the cache line at host address `at` for writing (PREFETCHW): the
/// frame path's stores into a guest's buffers and used ring hit lines the guest's core last
/// wrote, and a store waiting for its line holds up every store behind it; asked for early,
/// the lines of a whole burst arrive together. A hint: it never faults, whatever the
/// address, and CPUs without the instruction execute it as a no-op.
#[inline]
pub fn prefetch_write(at: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHW is a hint; it reads no memory architecturally, never faults and
    // touches no register but its address operand.
    unsafe {
        std::arch::asm!("prefetchw byte ptr [{0}]", in(reg) at, options(nostack, preserves_flags, readonly));
    };
}
