//! Pure helpers: checksum, test pattern, time conversion, formatting.
use core::fmt;

/// FNV-1a, 64-bit.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a64(pub u64);

impl Fnv1a64 {
    pub const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    pub const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub const fn new() -> Self {
        Fnv1a64(Self::OFFSET)
    }

    #[inline]
    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        for &b in data {
            h ^= b as u64;
            h = h.wrapping_mul(Self::PRIME);
        }
        self.0 = h;
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self::new()
    }
}

/// Byte `i` of the tcp-source stream.
#[inline]
pub const fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(131).wrapping_add(7)) as u8
}

/// The pattern has period 256 (131 is odd); two periods let any 256-byte window be one copy.
const PATTERN2: [u8; 512] = {
    let mut t = [0u8; 512];
    let mut i = 0;
    while i < 512 {
        t[i] = pattern_byte(i as u64);
        i += 1;
    }
    t
};

/// Fill `buf` with pattern bytes `offset .. offset + buf.len()`.
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    let mut start = (offset & 255) as usize;
    for chunk in buf.chunks_mut(256) {
        let n = chunk.len();
        chunk.copy_from_slice(&PATTERN2[start..start + n]);
        start = (start + n) & 255;
    }
}

/// FNV-1a 64 of the first `len` pattern bytes.
pub fn pattern_checksum(len: u64) -> u64 {
    let mut h = Fnv1a64::new();
    let full = len / 256;
    for _ in 0..full {
        h.update(&PATTERN2[..256]);
    }
    h.update(&PATTERN2[..(len % 256) as usize]);
    h.finish()
}

/// rdtsc ticks -> microseconds as one 64x64->128 multiply (no division on the hot path).
#[derive(Clone, Copy, Debug)]
pub struct TscScale {
    mult: u64, // microseconds per tick, 16.48 fixed point
}

impl TscScale {
    pub fn new(tsc_khz: u64) -> Self {
        let khz = tsc_khz.max(1) as u128;
        // Rounded up, so that tsc_khz ticks are exactly 1000 us.
        TscScale { mult: ((1000u128 << 48).div_ceil(khz)) as u64 }
    }

    #[inline]
    pub fn ticks_to_us(&self, ticks: u64) -> u64 {
        ((ticks as u128 * self.mult as u128) >> 48) as u64
    }
}

/// `aa:bb:cc:dd:ee:ff`
pub struct MacFmt(pub [u8; 6]);

impl fmt::Display for MacFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// `bytes=N seconds=S gbps=G checksum=C`, the tail of the TCP-SINK / TCP-SOURCE lines.
pub struct TransferFmt {
    pub bytes: u64,
    pub micros: u64,
    pub checksum: u64,
}

impl fmt::Display for TransferFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.micros as f64 / 1e6;
        let gbps = if self.micros == 0 { 0.0 } else { (self.bytes as f64 * 8.0) / (self.micros as f64 * 1e3) };
        write!(f, "bytes={} seconds={:.6} gbps={:.3} checksum={:016x}", self.bytes, secs, gbps, self.checksum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_vectors() {
        let h = |s: &[u8]| {
            let mut f = Fnv1a64::new();
            f.update(s);
            f.finish()
        };
        assert_eq!(h(b""), 0xcbf29ce484222325);
        assert_eq!(h(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(h(b"foobar"), 0x85944171f73967e8);
        // Incremental == one shot.
        let mut f = Fnv1a64::new();
        f.update(b"foo");
        f.update(b"bar");
        assert_eq!(f.finish(), 0x85944171f73967e8);
    }

    #[test]
    fn pattern_fill_matches_definition() {
        for &(off, len) in &[(0u64, 0usize), (0, 1), (3, 700), (255, 257), (1 << 40, 1000), (12345, 4096)] {
            let mut b = vec![0u8; len];
            fill_pattern(&mut b, off);
            for (j, &x) in b.iter().enumerate() {
                assert_eq!(x, ((off + j as u64) * 131 + 7) as u8);
            }
        }
        assert_eq!(pattern_byte(0), 7);
        assert_eq!(pattern_byte(1), 138);
        assert_eq!(pattern_byte(2), 13); // 269 mod 256
    }

    #[test]
    fn pattern_checksum_matches_bytewise() {
        for len in [0u64, 1, 255, 256, 257, 10_000] {
            let mut f = Fnv1a64::new();
            for i in 0..len {
                f.update(&[pattern_byte(i)]);
            }
            assert_eq!(pattern_checksum(len), f.finish(), "len {len}");
        }
    }

    #[test]
    fn tsc_scale() {
        let s = TscScale::new(2_596_144);
        assert_eq!(s.ticks_to_us(0), 0);
        assert_eq!(s.ticks_to_us(2_596_144), 1000);
        let one_hour = 2_596_144u64 * 3_600_000;
        let us = s.ticks_to_us(one_hour);
        assert!(us.abs_diff(3_600_000_000) < 2000, "{us}");
        let s = TscScale::new(1_000_000);
        assert_eq!(s.ticks_to_us(123_456_789), 123_456);
    }

    #[test]
    fn formats() {
        assert_eq!(format!("{}", MacFmt([0x52, 0x54, 0, 0xab, 1, 0xff])), "52:54:00:ab:01:ff");
        let t = TransferFmt { bytes: 125_000_000, micros: 1_000_000, checksum: 0xab };
        assert_eq!(format!("{t}"), "bytes=125000000 seconds=1.000000 gbps=1.000 checksum=00000000000000ab");
        let t = TransferFmt { bytes: 5, micros: 0, checksum: 1 };
        assert_eq!(format!("{t}"), "bytes=5 seconds=0.000000 gbps=0.000 checksum=0000000000000001");
    }
}
