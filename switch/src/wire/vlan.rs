//! IEEE 802.1Q tag: the four bytes after the outer EtherType 0x8100.

use super::WireError;

/// A read/write view of an 802.1Q tag (TCI + inner EtherType) and what follows it.
#[derive(Debug, Clone)]
pub struct VlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanPacket<T> {
    pub const HEADER_LEN: usize = 4;

    pub fn new_unchecked(buffer: T) -> Self {
        VlanPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let len = buffer.as_ref().len();
        if len < Self::HEADER_LEN {
            return Err(WireError::Truncated {
                len,
                needed: Self::HEADER_LEN,
            });
        }
        Ok(VlanPacket { buffer })
    }

    fn tci(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[0], b[1]])
    }
    /// Priority code point (3 bits).
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }
    /// Drop eligible indicator.
    pub fn dei(&self) -> bool {
        self.tci() & 0x1000 != 0
    }
    /// VLAN identifier (12 bits; 0 means priority-tagged only).
    pub fn vid(&self) -> u16 {
        self.tci() & 0x0fff
    }
    pub fn ethertype(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanPacket<T> {
    pub fn set_tci(&mut self, pcp: u8, dei: bool, vid: u16) {
        let tci = (u16::from(pcp & 7) << 13) | (u16::from(dei) << 12) | (vid & 0x0fff);
        self.buffer.as_mut()[0..2].copy_from_slice(&tci.to_be_bytes());
    }
    pub fn set_ethertype(&mut self, t: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&t.to_be_bytes());
    }
}

/// An 802.1Q tag as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanRepr {
    pub pcp: u8,
    pub dei: bool,
    pub vid: u16,
    /// The EtherType of what the tag encloses.
    pub ethertype: u16,
}

impl VlanRepr {
    pub fn parse<T: AsRef<[u8]>>(packet: &VlanPacket<T>) -> Self {
        VlanRepr {
            pcp: packet.pcp(),
            dei: packet.dei(),
            vid: packet.vid(),
            ethertype: packet.ethertype(),
        }
    }
    pub const fn buffer_len(&self) -> usize {
        VlanPacket::<&[u8]>::HEADER_LEN
    }
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VlanPacket<T>) {
        packet.set_tci(self.pcp, self.dei, self.vid);
        packet.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_fields_round_trip() {
        let repr = VlanRepr {
            pcp: 6,
            dei: true,
            vid: 4094,
            ethertype: 0x0800,
        };
        let mut buf = [0u8; 4];
        repr.emit(&mut VlanPacket::new_unchecked(&mut buf[..]));
        assert_eq!(buf, [0xdf, 0xfe, 0x08, 0x00]);
        assert_eq!(
            VlanRepr::parse(&VlanPacket::new_checked(&buf[..]).unwrap()),
            repr
        );
        assert!(VlanPacket::new_checked(&buf[..3]).is_err());
    }
}
