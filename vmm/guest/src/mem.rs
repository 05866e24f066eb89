//! The C memory functions the compiler emits calls to, for the freestanding guest (glibc's are
//! IFUNCs that need its start-up code). Exported unmangled except in host-side unit tests.
//!
//! Safety (all of them): the usual C contracts — pointers valid for `n` bytes; memcpy's
//! regions must not overlap.
#![allow(clippy::missing_safety_doc)]
use core::arch::asm;


#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
         options(nostack, preserves_flags));
    dst
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // No harmful overlap for a forward copy.
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    } else {
        // dst overlaps the tail of src: copy backwards.
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dst
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
         options(nostack, preserves_flags));
    dst
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        let (x, y) = (*a.add(i), *b.add(i));
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    memcmp(a, b, n)
}

#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn rust_eh_personality() {}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_move_set_compare() {
        let src: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let mut dst = vec![0u8; 300];
        unsafe { memcpy(dst.as_mut_ptr(), src.as_ptr(), 300) };
        assert_eq!(dst, src);
        // Overlapping moves in both directions, and n = 0.
        for &(from, to, n) in &[(0usize, 10usize, 200usize), (10, 0, 200), (5, 6, 1), (50, 50, 10), (7, 3, 0)] {
            let mut buf = src.clone();
            let mut want = src.clone();
            want.copy_within(from..from + n, to);
            unsafe { memmove(buf.as_mut_ptr().add(to), buf.as_ptr().add(from), n) };
            assert_eq!(buf, want, "memmove from {from} to {to} n {n}");
        }
        unsafe { memset(dst.as_mut_ptr().add(3), 0x1ab, 5) };
        assert_eq!(&dst[3..8], &[0xab; 5]);
        assert_eq!(dst[8], src[8]);
        unsafe {
            assert_eq!(memcmp(src.as_ptr(), src.as_ptr(), 300), 0);
            assert!(memcmp(b"abc".as_ptr(), b"abd".as_ptr(), 3) < 0);
            assert!(memcmp(b"b".as_ptr(), b"a".as_ptr(), 1) > 0);
            assert_eq!(memcmp(b"x".as_ptr(), b"y".as_ptr(), 0), 0);
            assert_ne!(bcmp(b"abc".as_ptr(), b"abd".as_ptr(), 3), 0);
        }
    }
}
