//! Checksum and segmentation offloads. A guest that negotiated them sends frames whose
//! virtio-net header asks the switch for work: "the L4 checksum is partial" (NEEDS_CSUM) and
//! "this is a TCP or UDP super-frame, cut it at `gso_size`" (GSO). The switch converts that
//! header once, on ingress, into [`Offload`]: metadata the frame carries through the switch
//! (the pattern of OVS's dp-packet offload flags), validated against what the sender
//! negotiated and against the frame itself. On egress it is regenerated for each receiver
//! that negotiated the matching feature ([`Offload::net_header`]); for any other receiver
//! (and for the tunnel) the switch does the work in software (`segment.rs`).
//!
//! - `layout.rs`: where a frame's L3 and L4 headers are.
//! - `segment.rs`: completing a partial checksum; cutting a super-frame into segments.

pub mod layout;
pub mod segment;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_USO4, VIRTIO_NET_F_GUEST_USO6,
    VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_USO,
};

pub use layout::Layout;

use crate::virtio::features::bit;
use crate::virtio::net_header::{self, NetHeader};

/// The largest super-frame a guest may send: 64 KiB of IP packet behind its L2 header (two
/// tags at most), as Linux's GSO limit for virtio-net.
pub const MAX_SUPER_FRAME: u32 = 65_535 + 14 + 8;

/// A partial checksum: the sum from `start` to the end of the frame belongs at
/// `start + offset`; the field holds the pseudo-header's sum meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialCsum {
    pub start: u16,
    pub offset: u16,
}

/// What a super-frame carries, and how it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    Tcp4,
    Tcp6,
    Udp4,
    Udp6,
}

impl GsoKind {
    /// The receiver feature that lets a super-frame of this kind through whole.
    fn guest_feature(self) -> u64 {
        bit(match self {
            GsoKind::Tcp4 => VIRTIO_NET_F_GUEST_TSO4,
            GsoKind::Tcp6 => VIRTIO_NET_F_GUEST_TSO6,
            GsoKind::Udp4 => VIRTIO_NET_F_GUEST_USO4,
            GsoKind::Udp6 => VIRTIO_NET_F_GUEST_USO6,
        })
    }

    pub fn is_tcp(self) -> bool {
        matches!(self, GsoKind::Tcp4 | GsoKind::Tcp6)
    }

    pub fn is_ipv6(self) -> bool {
        matches!(self, GsoKind::Tcp6 | GsoKind::Udp6)
    }
}

/// A super-frame's segmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    pub kind: GsoKind,
    /// Payload bytes per segment (the sender's MSS, or its UDP segment size).
    pub size: u16,
    /// TCP with CWR set on the super-frame (only the first segment keeps it).
    pub ecn: bool,
    /// L2 + L3 + L4 header bytes, from the switch's own parse of the frame.
    pub hdr_len: u16,
}

/// A frame's offload state inside the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offload {
    pub csum: Option<PartialCsum>,
    pub gso: Option<Gso>,
    /// The switch computed the L4 checksum itself (told to receivers as DATA_VALID).
    pub csum_valid: bool,
}

/// Why a frame's virtio-net header was refused (the frame is dropped and counted on the
/// port that sent it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("checksum offload asked for, but the sender did not negotiate CSUM")]
    CsumNotNegotiated,
    #[error("checksum at {start}+{offset} lies outside the {len}-byte frame")]
    CsumOutsideFrame { start: u16, offset: u16, len: u32 },
    #[error("checksum starts at {start}, inside the {l2}-byte L2 header")]
    CsumInL2Header { start: u16, l2: u16 },
    #[error("gso_type {0:#x} was not negotiated by the sender (or is not supported)")]
    GsoNotNegotiated(u8),
    #[error("super-frame with gso_size 0")]
    GsoSizeZero,
    #[error("super-frame without a partial checksum (NEEDS_CSUM)")]
    GsoWithoutCsum,
    #[error("hdr_len {hdr_len} lies beyond the {len}-byte frame")]
    HdrLenOutsideFrame { hdr_len: u16, len: u32 },
    #[error("super-frame's headers do not match gso_type {0:#x} (or are not Ethernet/IP/L4)")]
    GsoHeaders(u8),
    #[error("super-frame's csum_start {start} is not its L4 header at {l4}")]
    GsoCsumStart { start: u16, l4: u16 },
    #[error("super-frame of {len} bytes is over the {max}-byte limit")]
    GsoTooBig { len: u32, max: u32 },
    #[error("super-frame would be cut into {segments} segments, over the limit of {max}")]
    GsoTooManySegments { segments: u32, max: u32 },
}

/// Features a sender needs for each offload it asks for.
pub const HOST_OFFLOADS: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN)
    | bit(VIRTIO_NET_F_HOST_USO);

impl Offload {
    pub const NONE: Offload = Offload {
        csum: None,
        gso: None,
        csum_valid: false,
    };

    /// Whether the frame asks anything of its receivers (DATA_VALID asks nothing).
    pub fn is_some(&self) -> bool {
        self.csum.is_some() || self.gso.is_some()
    }

    /// Converts a sender's header. `features` are the sender's, `frame_len` excludes the
    /// virtio-net header, `headers` is the frame's first bytes (at least
    /// [`layout::MAX_HEADERS`] for a super-frame and [`layout::MAX_L2`] for a partial
    /// checksum, when there are that many). DATA_VALID from a sender is ignored (it only
    /// means something from a device).
    pub fn from_net_header(
        h: &NetHeader,
        features: u64,
        frame_len: u32,
        headers: &[u8],
    ) -> Result<Offload, OffloadError> {
        let mut out = Offload::NONE;
        if h.flags & net_header::F_NEEDS_CSUM != 0 {
            if features & bit(VIRTIO_NET_F_CSUM) == 0 {
                return Err(OffloadError::CsumNotNegotiated);
            }
            if u32::from(h.csum_start) + u32::from(h.csum_offset) + 2 > frame_len {
                return Err(OffloadError::CsumOutsideFrame {
                    start: h.csum_start,
                    offset: h.csum_offset,
                    len: frame_len,
                });
            }
            // The L2 header is what the switch decided on and sends; a checksum written over
            // it would change the addresses or the tag a receiver sees.
            let l2 = layout::l2_len(headers).unwrap_or(usize::MAX);
            if usize::from(h.csum_start) < l2 {
                return Err(OffloadError::CsumInL2Header {
                    start: h.csum_start,
                    l2: l2.min(usize::from(u16::MAX)) as u16,
                });
            }
            out.csum = Some(PartialCsum {
                start: h.csum_start,
                offset: h.csum_offset,
            });
        }
        if h.gso_type == net_header::GSO_NONE {
            return Ok(out);
        }
        let ecn = h.gso_type & net_header::GSO_ECN != 0;
        let base = h.gso_type & !net_header::GSO_ECN;
        let needs = match base {
            net_header::GSO_TCPV4 => VIRTIO_NET_F_HOST_TSO4,
            net_header::GSO_TCPV6 => VIRTIO_NET_F_HOST_TSO6,
            net_header::GSO_UDP_L4 if !ecn => VIRTIO_NET_F_HOST_USO,
            _ => return Err(OffloadError::GsoNotNegotiated(h.gso_type)),
        };
        if features & bit(needs) == 0 || (ecn && features & bit(VIRTIO_NET_F_HOST_ECN) == 0) {
            return Err(OffloadError::GsoNotNegotiated(h.gso_type));
        }
        if h.gso_size == 0 {
            return Err(OffloadError::GsoSizeZero);
        }
        let Some(csum) = out.csum else {
            return Err(OffloadError::GsoWithoutCsum);
        };
        if u32::from(h.hdr_len) > frame_len {
            return Err(OffloadError::HdrLenOutsideFrame {
                hdr_len: h.hdr_len,
                len: frame_len,
            });
        }
        if frame_len > MAX_SUPER_FRAME {
            return Err(OffloadError::GsoTooBig {
                len: frame_len,
                max: MAX_SUPER_FRAME,
            });
        }
        let layout = Layout::parse(headers).ok_or(OffloadError::GsoHeaders(h.gso_type))?;
        let kind = match (base, layout.ipv6, layout.proto) {
            (net_header::GSO_TCPV4, false, layout::IP_TCP) => GsoKind::Tcp4,
            (net_header::GSO_TCPV6, true, layout::IP_TCP) => GsoKind::Tcp6,
            (net_header::GSO_UDP_L4, false, layout::IP_UDP) => GsoKind::Udp4,
            (net_header::GSO_UDP_L4, true, layout::IP_UDP) => GsoKind::Udp6,
            _ => return Err(OffloadError::GsoHeaders(h.gso_type)),
        };
        if csum.start != layout.l4 {
            return Err(OffloadError::GsoCsumStart {
                start: csum.start,
                l4: layout.l4,
            });
        }
        if u32::from(layout.hdr_len) > frame_len {
            return Err(OffloadError::GsoHeaders(h.gso_type));
        }
        let segments = (frame_len - u32::from(layout.hdr_len)).div_ceil(u32::from(h.gso_size));
        if segments > segment::MAX_SEGMENTS {
            return Err(OffloadError::GsoTooManySegments {
                segments,
                max: segment::MAX_SEGMENTS,
            });
        }
        out.gso = Some(Gso {
            kind,
            size: h.gso_size,
            ecn,
            hdr_len: layout.hdr_len,
        });
        Ok(out)
    }

    /// Whether a receiver with `features` takes the frame as it is (its header regenerated);
    /// if not, the switch completes the checksum or segments the frame first.
    pub fn fits(&self, features: u64) -> bool {
        if self.csum.is_some() && features & bit(VIRTIO_NET_F_GUEST_CSUM) == 0 {
            return false;
        }
        match self.gso {
            None => true,
            Some(g) => {
                features & g.kind.guest_feature() != 0
                    && (!g.ecn || features & bit(VIRTIO_NET_F_GUEST_ECN) != 0)
            }
        }
    }

    /// The offsets after the L2 header grew by `delta` bytes (a tag pushed: +4, popped: -4).
    /// Offsets stay put if they would leave the 16-bit range (the frame is then refused
    /// where it is checked against its length).
    pub fn shifted(self, delta: i32) -> Offload {
        let shift = |v: u16| u16::try_from(i32::from(v) + delta).unwrap_or(v);
        Offload {
            csum: self.csum.map(|c| PartialCsum {
                start: shift(c.start),
                offset: c.offset,
            }),
            gso: self.gso.map(|g| Gso {
                hdr_len: shift(g.hdr_len),
                ..g
            }),
            csum_valid: self.csum_valid,
        }
    }

    /// The header a receiver with `features` gets (the frame [`fits`](Self::fits) it).
    pub fn net_header(&self, features: u64) -> NetHeader {
        let mut h = NetHeader::default();
        let guest_csum = features & bit(VIRTIO_NET_F_GUEST_CSUM) != 0;
        if let Some(c) = self.csum.filter(|_| guest_csum) {
            h.flags = net_header::F_NEEDS_CSUM;
            h.csum_start = c.start;
            h.csum_offset = c.offset;
        } else if self.csum_valid && guest_csum {
            h.flags = net_header::F_DATA_VALID;
        }
        if let Some(g) = self.gso.filter(|_| self.fits(features)) {
            h.gso_type = match g.kind {
                GsoKind::Tcp4 => net_header::GSO_TCPV4,
                GsoKind::Tcp6 => net_header::GSO_TCPV6,
                GsoKind::Udp4 | GsoKind::Udp6 => net_header::GSO_UDP_L4,
            } | if g.ecn { net_header::GSO_ECN } else { 0 };
            h.gso_size = g.size;
            h.hdr_len = g.hdr_len;
        }
        h
    }
}

#[cfg(test)]
mod tests;
