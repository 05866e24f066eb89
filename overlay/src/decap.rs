//! Decapsulation: validating what a UDP socket on the VXLAN port receives.
//!
//! Policy, as the Linux vxlan driver applies it when no extension (GBP, GPE, RCO) is enabled:
//! the I flag must be set, and every other flag bit and every reserved bit must be zero, or the
//! packet is dropped. RFC 7348 §5 says receivers should ignore reserved bits; we do not,
//! because a packet using them was built for an extension we do not implement, and guessing
//! at its meaning is worse than dropping (and counting) it.

use crate::wire::VxlanPacket;
use crate::Vni;

/// Smallest inner frame: an Ethernet header (the sender strips the FCS and need not pad).
pub const MIN_INNER_LEN: usize = 14;

/// Why a received VXLAN payload was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DecapError {
    #[error("payload of {len} bytes is shorter than the 8-byte VXLAN header")]
    Truncated { len: usize },
    #[error("VXLAN header without the I flag (no valid VNI)")]
    NoVniFlag,
    #[error("VXLAN header with flags other than I or non-zero reserved bits")]
    ReservedBits,
    #[error("inner frame of {len} bytes is shorter than an Ethernet header")]
    InnerRunt { len: usize },
}

impl DecapError {
    /// The label used in metrics and flowctl (the same as the matching
    /// [`crate::TunnelDrop`]'s).
    pub fn label(self) -> &'static str {
        match self {
            DecapError::Truncated { .. } => "truncated",
            DecapError::NoVniFlag => "no-vni-flag",
            DecapError::ReservedBits => "reserved-bits",
            DecapError::InnerRunt { .. } => "inner-runt",
        }
    }
}

/// Validates a VXLAN UDP payload and returns the VNI and the inner Ethernet frame (a sub-slice
/// of `payload`). See the module documentation for the flag policy.
pub fn decap(payload: &[u8]) -> Result<(Vni, &[u8]), DecapError> {
    let packet = VxlanPacket::new_checked(payload)
        .map_err(|_| DecapError::Truncated { len: payload.len() })?;
    if !packet.has_vni() {
        return Err(DecapError::NoVniFlag);
    }
    if packet.flags() != crate::wire::flags::I || packet.reserved0() != 0 || packet.reserved1() != 0
    {
        return Err(DecapError::ReservedBits);
    }
    // Sliced from `payload` rather than the view, so it borrows the caller's buffer.
    let inner = &payload[VxlanPacket::<&[u8]>::HEADER_LEN..];
    if inner.len() < MIN_INNER_LEN {
        return Err(DecapError::InnerRunt { len: inner.len() });
    }
    Ok((packet.vni(), inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(header: [u8; 8], inner_len: usize) -> Vec<u8> {
        let mut p = header.to_vec();
        p.extend((0..inner_len).map(|i| i as u8));
        p
    }

    const GOOD: [u8; 8] = [0x08, 0, 0, 0, 0x00, 0x10, 0x01, 0];

    #[test]
    fn accepts_a_valid_packet() {
        let p = packet(GOOD, 60);
        let (vni, inner) = decap(&p).unwrap();
        assert_eq!(vni, 0x1001);
        assert_eq!(inner, &p[8..]);
        assert!(decap(&packet(GOOD, MIN_INNER_LEN)).is_ok());
    }

    #[test]
    fn rejects_each_malformed_case() {
        for len in 0..8 {
            assert_eq!(
                decap(&GOOD[..len]),
                Err(DecapError::Truncated { len }),
                "{len}"
            );
        }
        let mut no_i = GOOD;
        no_i[0] = 0;
        assert_eq!(decap(&packet(no_i, 60)), Err(DecapError::NoVniFlag));
        no_i[0] = 0x80; // some other flag, still no I
        assert_eq!(decap(&packet(no_i, 60)), Err(DecapError::NoVniFlag));
        for (byte, value) in [(0, 0x0c), (0, 0x88), (1, 1), (2, 0x80), (3, 1), (7, 1)] {
            let mut h = GOOD;
            h[byte] = value;
            assert_eq!(
                decap(&packet(h, 60)),
                Err(DecapError::ReservedBits),
                "byte {byte} = {value:#x}"
            );
        }
        assert_eq!(decap(&GOOD), Err(DecapError::InnerRunt { len: 0 }));
        assert_eq!(
            decap(&packet(GOOD, 13)),
            Err(DecapError::InnerRunt { len: 13 })
        );
    }

    #[test]
    fn labels_match_tunnel_drops() {
        for e in [
            DecapError::Truncated { len: 1 },
            DecapError::NoVniFlag,
            DecapError::ReservedBits,
            DecapError::InnerRunt { len: 2 },
        ] {
            assert_eq!(crate::TunnelDrop::from(e).label(), e.label());
        }
    }
}
