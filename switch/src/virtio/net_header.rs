//! `struct virtio_net_hdr` (virtio 1.x section 5.1.6): the header before every frame on a
//! virtio-net queue, parsed into plain values and emitted from them (smoltcp's `Repr`
//! pattern). Little-endian: VERSION_1 says so, and legacy devices use the guest's order,
//! which is little-endian on the one architecture the switch builds for.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_GSO_UDP_L4,
};

pub const F_NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
pub const F_DATA_VALID: u8 = VIRTIO_NET_HDR_F_DATA_VALID as u8;
pub const GSO_NONE: u8 = VIRTIO_NET_HDR_GSO_NONE as u8;
pub const GSO_TCPV4: u8 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
pub const GSO_UDP: u8 = VIRTIO_NET_HDR_GSO_UDP as u8;
pub const GSO_TCPV6: u8 = VIRTIO_NET_HDR_GSO_TCPV6 as u8;
pub const GSO_UDP_L4: u8 = VIRTIO_NET_HDR_GSO_UDP_L4 as u8;
pub const GSO_ECN: u8 = VIRTIO_NET_HDR_GSO_ECN as u8;

/// The largest header: with `num_buffers` (VERSION_1 or MRG_RXBUF).
pub const MAX_LEN: usize = 12;

/// A virtio-net header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    /// Receive side only: how many buffers a merged frame took (0 when absent).
    pub num_buffers: u16,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl NetHeader {
    /// Parses the first 10 or 12 bytes of `bytes` (the negotiated length); None if shorter
    /// than 10.
    pub fn parse(bytes: &[u8]) -> Option<NetHeader> {
        if bytes.len() < 10 {
            return None;
        }
        Some(NetHeader {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: le16(bytes, 2),
            gso_size: le16(bytes, 4),
            csum_start: le16(bytes, 6),
            csum_offset: le16(bytes, 8),
            num_buffers: if bytes.len() >= 12 {
                le16(bytes, 10)
            } else {
                0
            },
        })
    }

    /// Writes the header; `out` is 10 or 12 bytes (`num_buffers` only in the latter).
    pub fn emit(&self, out: &mut [u8]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        if out.len() >= 12 {
            out[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        }
    }

    /// Neither a checksum nor segmentation asked for: the common frame.
    pub fn is_plain(&self) -> bool {
        self.flags & F_NEEDS_CSUM == 0 && self.gso_type == GSO_NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_lengths() {
        let h = NetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        let mut b = [0u8; 12];
        h.emit(&mut b);
        assert_eq!(b, [1, 0x81, 66, 0, 0xa8, 5, 34, 0, 16, 0, 3, 0]);
        assert_eq!(NetHeader::parse(&b), Some(h));
        let mut short = [0u8; 10];
        h.emit(&mut short);
        assert_eq!(NetHeader::parse(&short).map(|p| p.num_buffers), Some(0));
        assert_eq!(NetHeader::parse(&b[..9]), None);
        assert!(!h.is_plain() && NetHeader::default().is_plain());
    }
}
