//! Where a frame's L3 and L4 headers are, for the offloads: Ethernet with up to two 802.1Q
//! or 802.1ad tags, IPv4 (unfragmented) or IPv6 without extension headers, TCP or UDP. The
//! frames guests hand over for segmentation are all of this shape; anything else is refused.

/// Bytes of a frame [`Layout::parse`] may need: two tags, IPv4 and TCP with full options.
pub const MAX_HEADERS: usize = 14 + 8 + 60 + 60;

pub const IP_TCP: u8 = 6;
pub const IP_UDP: u8 = 17;

/// Offsets of a frame's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Start of the IP header.
    pub l3: u16,
    /// Start of the TCP or UDP header.
    pub l4: u16,
    /// End of the L4 header: the bytes every segment repeats.
    pub hdr_len: u16,
    pub ipv6: bool,
    /// IP protocol: [`IP_TCP`] or [`IP_UDP`].
    pub proto: u8,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Bytes of a frame [`l2_len`] may need: Ethernet with two tags.
pub const MAX_L2: usize = 14 + 8;

/// Length of the frame's L2 header (Ethernet and up to two 802.1Q or 802.1ad tags); None if
/// `frame` is shorter.
pub fn l2_len(frame: &[u8]) -> Option<usize> {
    let mut at = 12;
    for _ in 0..2 {
        match be16(frame, at)? {
            0x8100 | 0x88a8 => at += 4,
            _ => break,
        }
    }
    be16(frame, at)?;
    Some(at + 2)
}

impl Layout {
    /// Parses the first bytes of a frame (up to [`MAX_HEADERS`] suffice); None if they are
    /// not Ethernet / IP / TCP or UDP as described above, or are cut short.
    pub fn parse(frame: &[u8]) -> Option<Layout> {
        let mut l3 = 12;
        let mut ethertype = be16(frame, l3)?;
        for _ in 0..2 {
            if ethertype != 0x8100 && ethertype != 0x88a8 {
                break;
            }
            l3 += 4;
            ethertype = be16(frame, l3)?;
        }
        l3 += 2;
        let (ipv6, proto, l4) = match ethertype {
            0x0800 => {
                let vihl = *frame.get(l3)?;
                let ihl = usize::from(vihl & 0x0f) * 4;
                // More fragments or an offset: a fragment has no L4 header to cut by.
                if vihl >> 4 != 4 || ihl < 20 || be16(frame, l3 + 6)? & 0x3fff != 0 {
                    return None;
                }
                (false, *frame.get(l3 + 9)?, l3 + ihl)
            }
            0x86dd => {
                if *frame.get(l3)? >> 4 != 6 {
                    return None;
                }
                (true, *frame.get(l3 + 6)?, l3 + 40)
            }
            _ => return None,
        };
        let hdr_len = match proto {
            IP_TCP => {
                let doff = usize::from(*frame.get(l4 + 12)? >> 4) * 4;
                if doff < 20 {
                    return None;
                }
                l4 + doff
            }
            IP_UDP => l4 + 8,
            _ => return None,
        };
        if hdr_len > frame.len() {
            return None;
        }
        Some(Layout {
            l3: l3 as u16,
            l4: l4 as u16,
            hdr_len: hdr_len as u16,
            ipv6,
            proto,
        })
    }
}
