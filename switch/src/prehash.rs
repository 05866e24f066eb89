//! Hashing pieces the frame path's tables share (the classifier and the connection table):
//! a folded multiply to mix words, and a `Hasher` for keys that carry their own hash.

use std::hash::Hasher;

/// The high and low halves of a 64x64 product xored: the mixing step of the tables' keyed
/// hashes.
#[inline(always)]
pub fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The hasher of maps whose keys carry a keyed, well-mixed hash already (they hash only that
/// word): hashing it again, as ahash would with two more dependent multiplies, only costs
/// time (~15% of a classifier lookup, measured).
#[derive(Default, Clone, Copy)]
pub struct PreHashed(u64);

impl Hasher for PreHashed {
    #[inline]
    fn write(&mut self, _: &[u8]) {
        unreachable!("a pre-hashed key writes only its hash (write_u64)")
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}
