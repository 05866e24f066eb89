//! The 8-byte VXLAN header (RFC 7348 §5): a checked view and its plain representation, shaped
//! like the switch's `wire` module (and smoltcp's).
//!
//! ```text
//!  0               1               2               3
//! |R|R|R|R|I|R|R|R|            Reserved (24 bits)                 |
//! |                VXLAN Network Identifier (VNI)  |   Reserved    |
//! ```

use crate::Vni;

/// Flag bits of the first header byte.
pub mod flags {
    /// The I bit: the VNI field is valid. Must be set (RFC 7348 §5).
    pub const I: u8 = 0x08;
}

/// Why a buffer could not be viewed as a VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("buffer of {len} bytes is shorter than the {needed}-byte header")]
    Truncated { len: usize, needed: usize },
}

/// A read/write view of a VXLAN header and the inner frame behind it.
#[derive(Debug, Clone)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

mod field {
    use std::ops::{Range, RangeFrom};
    pub const FLAGS: usize = 0;
    pub const RESERVED0: Range<usize> = 1..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED1: usize = 7;
    pub const PAYLOAD: RangeFrom<usize> = 8..;
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    pub const HEADER_LEN: usize = 8;

    /// Wraps a buffer without checking its length; accessors may panic on a short buffer.
    pub fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// Wraps a buffer after checking it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let len = buffer.as_ref().len();
        if len < Self::HEADER_LEN {
            return Err(WireError::Truncated {
                len,
                needed: Self::HEADER_LEN,
            });
        }
        Ok(VxlanPacket { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole flags byte (only [`flags::I`] is defined by RFC 7348).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I bit says the VNI is valid.
    pub fn has_vni(&self) -> bool {
        self.flags() & flags::I != 0
    }

    /// The 24 reserved bits after the flags byte.
    pub fn reserved0(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::RESERVED0];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    pub fn vni(&self) -> Vni {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The reserved byte after the VNI.
    pub fn reserved1(&self) -> u8 {
        self.buffer.as_ref()[field::RESERVED1]
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    pub fn set_flags(&mut self, f: u8) {
        self.buffer.as_mut()[field::FLAGS] = f;
    }
    /// Sets the 24 reserved bits after the flags (the top 8 bits of `r` are ignored).
    pub fn set_reserved0(&mut self, r: u32) {
        self.buffer.as_mut()[field::RESERVED0].copy_from_slice(&r.to_be_bytes()[1..]);
    }
    /// Sets the VNI (the top 8 bits of `vni` are ignored).
    pub fn set_vni(&mut self, vni: Vni) {
        self.buffer.as_mut()[field::VNI].copy_from_slice(&vni.to_be_bytes()[1..]);
    }
    pub fn set_reserved1(&mut self, r: u8) {
        self.buffer.as_mut()[field::RESERVED1] = r;
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// A VXLAN header as plain values: only the VNI carries information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    pub vni: Vni,
}

impl VxlanRepr {
    /// Reads the VNI. Flag and reserved-bit policy is [`mod@crate::decap`]'s job, so that it can
    /// report which check failed.
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Self {
        VxlanRepr { vni: packet.vni() }
    }

    pub const fn buffer_len(&self) -> usize {
        VxlanPacket::<&[u8]>::HEADER_LEN
    }

    /// Writes a header with only the I flag set and all reserved bits zero.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.set_flags(flags::I);
        packet.set_reserved0(0);
        packet.set_vni(self.vni);
        packet.set_reserved1(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let repr = VxlanRepr { vni: 0x00ab_cdef };
        let mut buf = [0xffu8; 10];
        let mut p = VxlanPacket::new_checked(&mut buf[..]).unwrap();
        repr.emit(&mut p);
        assert_eq!(p.payload_mut().len(), 2);
        assert_eq!(buf[..8], [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
        let p = VxlanPacket::new_checked(&buf[..]).unwrap();
        assert!(p.has_vni());
        assert_eq!((p.reserved0(), p.reserved1()), (0, 0));
        assert_eq!(VxlanRepr::parse(&p), repr);
        assert_eq!(p.payload(), &[0xff, 0xff]);
        assert_eq!(repr.buffer_len(), 8);
    }

    #[test]
    fn accessors_read_every_field() {
        let buf = [0x88, 1, 2, 3, 0xff, 0xff, 0xff, 9];
        let p = VxlanPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(p.flags(), 0x88);
        assert_eq!(p.reserved0(), 0x010203);
        assert_eq!(p.vni(), crate::MAX_VNI);
        assert_eq!(p.reserved1(), 9);
        assert!(p.payload().is_empty());

        let mut out = [0u8; 8];
        let mut w = VxlanPacket::new_unchecked(&mut out[..]);
        w.set_flags(0x88);
        w.set_reserved0(0xff01_0203);
        w.set_vni(0xff_ff_ff_ff);
        w.set_reserved1(9);
        assert_eq!(out, buf);
    }

    #[test]
    fn rejects_short_buffers() {
        assert_eq!(
            VxlanPacket::new_checked(&[0u8; 7][..]).err(),
            Some(WireError::Truncated { len: 7, needed: 8 })
        );
    }
}
