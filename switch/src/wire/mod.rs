//! Zero-copy views of the L2 headers the frame path reads and writes, and the Internet
//! checksum (`checksum.rs`).
//!
//! Shaped like smoltcp's `wire` module: a `Packet<T: AsRef<[u8]>>` view with a checked
//! constructor for field access in place, and a `Repr` that parses/emits the header as plain
//! values. smoltcp itself has no 802.1Q type, and the fast path must not allocate, so these are
//! ours; etherparse is fine off the fast path (tests, tracing).

pub mod checksum;
mod ethernet;
mod flow_hash;
mod vlan;

pub use ethernet::{ethertype, EthernetAddress, EthernetFrame, EthernetRepr, ParseMacError};
pub use flow_hash::flow_hash;
pub use vlan::{VlanPacket, VlanRepr};

/// Why a buffer could not be viewed as a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("buffer of {len} bytes is shorter than the {needed}-byte header")]
    Truncated { len: usize, needed: usize },
}

/// The parts of a frame's L2 header the switch decides on: addresses, an optional 802.1Q tag
/// and the EtherType behind it. Parsed from the first bytes of a frame, whichever descriptor
/// they live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Header {
    pub dst: EthernetAddress,
    pub src: EthernetAddress,
    /// The outer 802.1Q tag, if the frame carries one.
    pub vlan: Option<VlanRepr>,
    /// EtherType after the tag (or the frame's EtherType when untagged).
    pub ethertype: u16,
}

impl L2Header {
    /// Bytes needed to parse any header this type describes (Ethernet + one tag).
    pub const MAX_LEN: usize = EthernetFrame::<&[u8]>::HEADER_LEN + VlanPacket::<&[u8]>::HEADER_LEN;

    /// Parses the start of a frame. `bytes` may hold just the first [`Self::MAX_LEN`] bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let frame = EthernetFrame::new_checked(bytes)?;
        let outer = frame.ethertype();
        let (vlan, ethertype) = if outer == ethertype::VLAN {
            let tag = VlanPacket::new_checked(frame.payload())?;
            let repr = VlanRepr::parse(&tag);
            (Some(repr), repr.ethertype)
        } else {
            (None, outer)
        };
        Ok(L2Header {
            dst: frame.dst_addr(),
            src: frame.src_addr(),
            vlan,
            ethertype,
        })
    }

    /// Length of the header as it sits in the frame (14, or 18 with a tag).
    pub fn len(&self) -> usize {
        EthernetFrame::<&[u8]>::HEADER_LEN
            + if self.vlan.is_some() {
                VlanPacket::<&[u8]>::HEADER_LEN
            } else {
                0
            }
    }

    /// Whether another VLAN tag (802.1Q or 802.1ad) follows the outer 802.1Q tag, or, for a
    /// frame without one, whether its EtherType is a tag the switch does not classify by
    /// (802.1ad). Such a tag would become the outer one if the outer tag were popped, which is
    /// how stacked tags hop VLANs.
    pub fn has_inner_tag(&self) -> bool {
        ethertype::is_vlan_tag(self.ethertype)
    }

    /// Always false: a header has at least the two addresses and an EtherType.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_untagged_and_tagged_headers() {
        let mut frame = [0u8; 18];
        frame[0..6].copy_from_slice(&[0xff; 6]);
        frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        frame[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let h = L2Header::parse(&frame[..14]).unwrap();
        assert!(h.dst.is_broadcast());
        assert_eq!(h.vlan, None);
        assert_eq!(h.ethertype, ethertype::ARP);
        assert_eq!(h.len(), 14);

        frame[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        frame[14..16].copy_from_slice(&((5u16 << 13) | 100).to_be_bytes());
        frame[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
        let h = L2Header::parse(&frame).unwrap();
        assert_eq!(h.vlan.map(|v| (v.pcp, v.vid)), Some((5, 100)));
        assert_eq!(h.ethertype, ethertype::IPV4);
        assert_eq!(h.len(), 18);
    }

    #[test]
    fn rejects_truncated_headers() {
        assert!(L2Header::parse(&[0u8; 13]).is_err());
        let mut tagged = [0u8; 16];
        tagged[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        assert_eq!(
            L2Header::parse(&tagged),
            Err(WireError::Truncated { len: 2, needed: 4 })
        );
    }
}
