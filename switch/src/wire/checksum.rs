//! The Internet checksum (RFC 1071) over host buffers: the software side of checksum offload.
//! Written here rather than taken from a crate because the fallbacks need it unfolded (a sum
//! that later parts are added to) and over plain slices; etherparse checks it in the tests.

/// The one's-complement sum of `bytes` (as big-endian 16-bit words, an odd last byte padded
/// with zero) added to `initial`, folded to 16 bits but not complemented.
pub fn sum(bytes: &[u8], initial: u16) -> u16 {
    // SAFETY: a slice is valid for reads of its length.
    add(unsafe { sum_raw(bytes.as_ptr(), bytes.len()) }, initial)
}

/// [`sum`] of `len` bytes at `at`, for memory that is not a Rust slice (a guest's buffers,
/// read in place by the segmentation path rather than copied first).
///
/// # Safety
/// `at` must be valid for reads of `len` bytes. Another process may write them meanwhile
/// (a guest its own buffers): the sum is then of some mix of old and new bytes, as a copy
/// would be, which only that guest's frame carries.
pub unsafe fn sum_raw(at: *const u8, len: usize) -> u16 {
    // Summed as native-order 16-bit words: a sum in the other byte order is the byte-swapped
    // sum (RFC 1071, section 2(B)).
    #[cfg(target_arch = "x86_64")]
    if len >= 256 && std::arch::is_x86_feature_detected!("avx2") {
        // Whole 32-byte blocks, an even length: the words of the rest stay aligned.
        let split = len / 32 * 32;
        // SAFETY: the CPU has AVX2 (checked just above); both parts lie in the caller's
        // `len` bytes.
        let (wide, rest) = unsafe {
            (
                sum_avx2::<false>(at, std::ptr::null_mut(), split),
                sum_words(at.add(split), len - split),
            )
        };
        return u16::from_be(fold(u64::from(wide) + u64::from(rest)));
    }
    // SAFETY: the caller's contract.
    u16::from_be(unsafe { sum_words(at, len) })
}

/// Copies `len` bytes from `src` to `dst` and returns their [`sum`], reading each byte once
/// (but the last under 32, read once to sum and once to copy):
/// the copy into a receiver that completes a partial checksum on the way (a software
/// segment's payload), where a copy and then a sum would read the bytes twice. Returns None,
/// having done nothing, where the CPU has no wide path (AVX2) or the run is short: the caller
/// then copies and sums apart.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and they must not
/// overlap. Another process may write `src` meanwhile: the sum is then of the bytes that
/// were copied (each is read once, into the register that is both stored and summed), but
/// for the short tail, where it may differ from them: only that sender's frame carries it.
pub unsafe fn copy_and_sum(src: *const u8, dst: *mut u8, len: usize) -> Option<u16> {
    #[cfg(target_arch = "x86_64")]
    if len >= 256 && std::arch::is_x86_feature_detected!("avx2") {
        let split = len / 32 * 32;
        // SAFETY: the CPU has AVX2 (checked just above); the blocks lie in the caller's
        // ranges. The tail is summed from `src` (reading it back from `dst`, just written
        // by a copy of another width, would stall on store forwarding) and then copied.
        let (wide, rest) = unsafe {
            let wide = sum_avx2::<true>(src, dst, split);
            let rest = sum_words(src.add(split), len - split);
            std::ptr::copy_nonoverlapping(src.add(split), dst.add(split), len - split);
            (wide, rest)
        };
        return Some(u16::from_be(fold(u64::from(wide) + u64::from(rest))));
    }
    let _ = (src, dst, len);
    None
}

/// The folded sum of `len` bytes at `at` as native-order 16-bit words (an odd tail padded in
/// memory order, as the definition pads it), a 64-bit word at a time added into 128 bits (an
/// add and an add-with-carry each): 2^16 = 1 modulo 2^16 - 1, so folding the total gives the
/// sum of the 16-bit words.
///
/// # Safety
/// As for [`sum_raw`].
unsafe fn sum_words(at: *const u8, len: usize) -> u16 {
    let mut acc = 0u128;
    let words = len / 8;
    for i in 0..words {
        // SAFETY: word `i` lies in the caller's `len` bytes; unaligned reads are allowed.
        let w = unsafe { std::ptr::read_unaligned(at.add(i * 8) as *const u64) };
        acc += u128::from(w);
    }
    // SAFETY: the tail lies in the caller's range.
    acc += u128::from(unsafe { read_tail(at.add(words * 8), len % 8) });
    fold(u64::from(fold(acc as u64)) + u64::from(fold((acc >> 64) as u64)))
}

/// The `n` (< 8) bytes at `at` as a native-order 64-bit word padded with zeros in memory
/// order. Read as one 4-, 2- and 1-byte load each rather than byte by byte into a buffer:
/// loading a word over bytes just stored one at a time stalls the core (the store cannot be
/// forwarded), which cost the segmentation path more than its payload sums.
///
/// # Safety
/// `at` must be valid for reads of `n` bytes.
#[inline]
unsafe fn read_tail(at: *const u8, n: usize) -> u64 {
    if cfg!(target_endian = "big") {
        let mut tail = [0u8; 8];
        // SAFETY: the caller's contract; `tail` has room for `n < 8` bytes.
        unsafe { std::ptr::copy_nonoverlapping(at, tail.as_mut_ptr(), n.min(8)) };
        return u64::from_ne_bytes(tail);
    }
    // Little-endian: byte `j` in memory is bits 8j.. of the word.
    let (mut v, mut off) = (0u64, 0usize);
    if n & 4 != 0 {
        // SAFETY: bytes 0..4 lie in the caller's `n`.
        v = u64::from(unsafe { std::ptr::read_unaligned(at as *const u32) });
        off = 4;
    }
    if n & 2 != 0 {
        // SAFETY: bytes off..off + 2 lie in the caller's `n`.
        let w = unsafe { std::ptr::read_unaligned(at.add(off) as *const u16) };
        v |= u64::from(w) << (8 * off);
        off += 2;
    }
    if n & 1 != 0 {
        // SAFETY: byte `off` lies in the caller's `n`.
        v |= u64::from(unsafe { at.add(off).read() }) << (8 * off);
    }
    v
}

/// [`sum_words`] of whole 32-byte blocks with AVX2: each block's sixteen 16-bit words are
/// added as 32-bit lanes, eight lanes at a time (a third of the scalar loop's
/// time on the segmentation path, where every payload byte is summed). Lanes are folded
/// every 16 384 blocks, before they could overflow. With `STORE`, each block is also
/// stored at `dst` (a copy that sums as it goes).
///
/// # Safety
/// The CPU must support AVX2; `len` is a multiple of 32; `at` valid for reads of `len` bytes
/// and, with `STORE`, `dst` for writes, apart from them (as for [`copy_and_sum`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2<const STORE: bool>(at: *const u8, dst: *mut u8, len: usize) -> u16 {
    use std::arch::x86_64::*;
    const RUN: usize = 16_384;
    let blocks = len / 32;
    let mut total = 0u64;
    let mut block = 0;
    while block < blocks {
        let end = (block + RUN).min(blocks);
        // Each 32-bit lane adds its low and its high 16-bit word (a mask and a shift, not
        // the shuffles an unpack takes).
        let low = _mm256_set1_epi32(0xffff);
        let mut acc = _mm256_setzero_si256();
        while block < end {
            // SAFETY: block `block` is 32 bytes inside the caller's range(s); loadu and storeu
            // have no alignment requirement.
            let v = unsafe { _mm256_loadu_si256(at.add(block * 32) as *const __m256i) };
            if STORE {
                // SAFETY: with STORE the caller gave `dst` for `len` bytes of writes.
                unsafe { _mm256_storeu_si256(dst.add(block * 32) as *mut __m256i, v) };
            }
            let words = _mm256_add_epi32(_mm256_and_si256(v, low), _mm256_srli_epi32(v, 16));
            acc = _mm256_add_epi32(acc, words);
            block += 1;
        }
        let mut lanes = [0u32; 8];
        // SAFETY: `lanes` is 32 writable bytes; storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc) };
        total += lanes.iter().map(|&l| u64::from(l)).sum::<u64>();
    }
    fold(total)
}

/// Folds a wide one's-complement sum to 16 bits.
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// One's-complement addition of two folded sums.
pub fn add(a: u16, b: u16) -> u16 {
    fold(u64::from(a) + u64::from(b))
}

/// The sum of the TCP/UDP pseudo-header (RFC 793, RFC 8200 section 8.1) for an L4 segment of
/// `l4_len` bytes, from the addresses as they appear in the IP header (4 or 16 bytes each).
pub fn pseudo_header(src: &[u8], dst: &[u8], proto: u8, l4_len: u32) -> u16 {
    // One pass over the pseudo-header as it would be laid out (IPv6's form: IPv4's sums the
    // same, the length's upper half being zero there).
    let mut buf = [0u8; 40];
    let n = src.len().min(16);
    buf[..n].copy_from_slice(&src[..n]);
    let m = dst.len().min(16);
    buf[n..n + m].copy_from_slice(&dst[..m]);
    let at = n + m;
    buf[at..at + 4].copy_from_slice(&l4_len.to_be_bytes());
    buf[at + 7] = proto;
    sum(&buf[..at + 8], 0)
}

/// The value a checksum field gets from the sum over everything it covers: the complement,
/// with 0 sent as 0xffff (as Linux's `skb_checksum_help` does; for UDP 0 means "none").
pub fn finish(total: u16) -> u16 {
    match !total {
        0 => 0xffff,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 16-bit words summed one at a time, the textbook way.
    fn reference(bytes: &[u8]) -> u16 {
        let mut acc = 0u64;
        for pair in bytes.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).copied().map_or(0, u64::from);
            acc += hi | lo;
        }
        fold(acc)
    }

    #[test]
    fn sums_match_the_word_by_word_definition() {
        let data: Vec<u8> = (0..1031u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 2, 3, 4, 5, 7, 8, 63, 64, 65, 1030, 1031] {
            assert_eq!(sum(&data[..len], 0), reference(&data[..len]), "len {len}");
        }
        assert_eq!(sum(&[0xff; 65536], 0), reference(&[0xff; 65536]));
        assert_eq!(sum(&[0x12, 0x34], 0x0001), 0x1235);
    }

    #[test]
    fn the_wide_path_agrees_with_the_definition() {
        // Long enough for the AVX2 blocks, with every kind of tail behind them, and words
        // near 0xffff so the lanes carry.
        let data: Vec<u8> = (0..70_001u32).map(|i| (0xff - (i % 7)) as u8).collect();
        for len in [256, 257, 287, 288, 1448, 1449, 65_536, 70_001] {
            assert_eq!(sum(&data[..len], 0), reference(&data[..len]), "len {len}");
            assert_eq!(
                sum(&data[1..len], 0),
                reference(&data[1..len]),
                "unaligned, len {len}"
            );
        }
    }

    #[test]
    fn copying_and_summing_in_one_pass_agrees_with_apart() {
        let data: Vec<u8> = (0..70_001u32).map(|i| (0xff - (i % 13)) as u8).collect();
        for (from, len) in [
            (0, 256),
            (1, 257),
            (3, 1448),
            (0, 1449),
            (5, 65_536),
            (0, 70_001),
        ] {
            let src = &data[from..from + len.min(data.len() - from)];
            let mut dst = vec![0u8; src.len()];
            // SAFETY: both are slices of `src.len()` bytes, apart.
            let got = unsafe { copy_and_sum(src.as_ptr(), dst.as_mut_ptr(), src.len()) };
            if let Some(got) = got {
                assert_eq!(got, reference(src), "from {from}, len {len}");
                assert_eq!(dst, src, "copied, from {from}, len {len}");
            } else {
                assert!(len < 256 || !std::arch::is_x86_feature_detected!("avx2"));
            }
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        assert_eq!(
            sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0),
            0xddf2
        );
        assert_eq!(finish(0xffff), 0xffff, "a zero result is sent as 0xffff");
    }
}
