//! What connection tracking reads from a packet: its connection key (addresses, protocol,
//! ports or ICMP identifier) and, for TCP, what the state machine needs; for an ICMP error,
//! the key of the packet it quotes. Parsed from the frame's first bytes (the header the flow
//! tables work on), so a guest cannot change it between tracking and delivery.

use std::net::{IpAddr, Ipv6Addr};

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;
pub const IP_ICMP: u8 = 1;
pub const IP_TCP: u8 = 6;
pub const IP_UDP: u8 = 17;
pub const IP_ICMPV6: u8 = 58;

/// Bytes of a frame tracking an ICMPv6 error reads (a tagged Ethernet header, IPv6, ICMPv6,
/// the quoted IPv6 header and the quoted ports): callers pass at least this many.
pub const ICMPV6_ERROR_BYTES: usize = 18 + 40 + 8 + 40 + 4;

/// One direction of a connection: what a packet travelling that way carries, in the six
/// words the table stores and hashes: source and destination address as IPv6 (IPv4
/// mapped), then zone, protocol, ICMP type and ports, then the address family (so an IPv6
/// packet with IPv4-mapped addresses is not an IPv4 connection's). Parsed straight into
/// this form: the lookup neither builds nor converts addresses.
#[derive(Clone, Copy, Eq, Debug)]
pub struct ConnKey([u64; 6]);

/// The high and low word of an IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`).
const fn v4_words(addr: u32) -> (u64, u64) {
    (0, 0xffff_0000_0000 | addr as u64)
}

fn v6_words(addr: u128) -> (u64, u64) {
    ((addr >> 64) as u64, addr as u64)
}

impl PartialEq for ConnKey {
    /// Word by word, without a branch per word (the array's own comparison called
    /// `memcmp`, twice per lookup).
    #[inline]
    fn eq(&self, other: &ConnKey) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .fold(0, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl ConnKey {
    /// The key of no packet (an empty table slot's).
    pub(super) const ZERO: ConnKey = ConnKey([0; 6]);

    /// `icmp_type`: for ICMP/ICMPv6 echo, the message type of this direction (request or
    /// reply), 0 otherwise; `sport`, `dport`: TCP/UDP ports, for ICMP echo the identifier
    /// in both. Both addresses are of one family (the source's decides).
    pub fn new(
        zone: u16,
        proto: u8,
        icmp_type: u8,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
    ) -> ConnKey {
        let words = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => v4_words(u32::from(v4)),
            IpAddr::V6(v6) => v6_words(u128::from(v6)),
        };
        let ((sh, sl), (dh, dl)) = (words(src), words(dst));
        ConnKey([
            sh,
            sl,
            dh,
            dl,
            meta(zone, proto, icmp_type, sport, dport),
            u64::from(src.is_ipv6()),
        ])
    }

    /// The key of the other direction.
    #[inline]
    pub fn reverse(&self) -> ConnKey {
        let [sh, sl, dh, dl, meta, v6] = self.0;
        let ty = echo_pair(self.proto(), self.icmp_type()).unwrap_or(self.icmp_type());
        let meta = (meta & 0xffff_ff00_0000_0000)
            | (u64::from(ty) << 32)
            | ((meta & 0xffff) << 16)
            | ((meta >> 16) & 0xffff);
        ConnKey([dh, dl, sh, sl, meta, v6])
    }

    /// The words, for the table's hash.
    pub(super) fn words(&self) -> &[u64; 6] {
        &self.0
    }

    pub fn zone(&self) -> u16 {
        (self.0[4] >> 48) as u16
    }

    pub fn proto(&self) -> u8 {
        (self.0[4] >> 40) as u8
    }

    pub fn icmp_type(&self) -> u8 {
        (self.0[4] >> 32) as u8
    }

    pub fn sport(&self) -> u16 {
        (self.0[4] >> 16) as u16
    }

    pub fn dport(&self) -> u16 {
        self.0[4] as u16
    }

    fn address(&self, hi: u64, lo: u64) -> IpAddr {
        let v6 = Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo));
        match (self.0[5], v6.to_ipv4_mapped()) {
            (0, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        }
    }

    pub fn src(&self) -> IpAddr {
        self.address(self.0[0], self.0[1])
    }

    pub fn dst(&self) -> IpAddr {
        self.address(self.0[2], self.0[3])
    }

    /// Source and destination of an IPv4 connection.
    pub fn ipv4(&self) -> Option<(u32, u32)> {
        (self.0[5] == 0).then_some((self.0[1] as u32, self.0[3] as u32))
    }

    fn with_transport(mut self, icmp_type: u8, sport: u16, dport: u16) -> ConnKey {
        self.0[4] = meta(self.zone(), self.proto(), icmp_type, sport, dport);
        self
    }

    /// Whether this packet's source is `ip`'s destination.
    fn source_is_destination_of(&self, ip: &Ip) -> bool {
        self.0[0] == ip.words[2] && self.0[1] == ip.words[3] && self.0[5] == ip.v6
    }
}

/// The key's fourth word.
const fn meta(zone: u16, proto: u8, icmp_type: u8, sport: u16, dport: u16) -> u64 {
    ((zone as u64) << 48)
        | ((proto as u64) << 40)
        | ((icmp_type as u64) << 32)
        | ((sport as u64) << 16)
        | dport as u64
}

/// The other half of an ICMP/ICMPv6 query pair (echo request <-> reply).
pub(super) fn echo_pair(proto: u8, ty: u8) -> Option<u8> {
    match (proto, ty) {
        (IP_ICMP, 8) => Some(0),
        (IP_ICMP, 0) => Some(8),
        (IP_ICMPV6, 128) => Some(129),
        (IP_ICMPV6, 129) => Some(128),
        _ => None,
    }
}

/// Whether an ICMP type starts a query (so may create a connection).
pub fn is_echo_request(proto: u8, ty: u8) -> bool {
    matches!((proto, ty), (IP_ICMP, 8) | (IP_ICMPV6, 128))
}

/// TCP header flags.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// What the TCP state machine reads from a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// The raw (unscaled) window.
    pub window: u16,
    /// The window scale option of a SYN: `Some(shift)`; `None` if absent.
    pub wscale: Option<u8>,
    /// The options were cut off by the end of the header bytes we have (so the window
    /// scale is unknown).
    pub options_unknown: bool,
    /// Payload bytes.
    pub payload: u32,
}

/// The transport part of a packet, as tracking sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp(TcpSegment),
    Udp,
    /// An ICMP/ICMPv6 echo request or reply.
    Echo,
    /// An ICMP/ICMPv6 error quoting a packet whose key (in the direction it was sent) is
    /// this.
    Error(ConnKey),
    /// Another protocol: tracked by addresses and protocol.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub key: ConnKey,
    pub transport: Transport,
}

/// Why a packet cannot be tracked (it is then `+inv`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Untrackable {
    #[error("not IPv4 or IPv6")]
    NotIp,
    #[error("truncated or malformed header")]
    Malformed,
    #[error("an IP fragment (fragments are not reassembled for tracking)")]
    Fragment,
    #[error("an ICMP message that is neither a query nor an error")]
    IcmpOther,
}

fn be16(b: &[u8], at: usize) -> Result<u16, Untrackable> {
    Ok(u16::from_be_bytes([
        *b.get(at).ok_or(Untrackable::Malformed)?,
        *b.get(at + 1).ok_or(Untrackable::Malformed)?,
    ]))
}

fn be32(b: &[u8], at: usize) -> Result<u32, Untrackable> {
    Ok(u32::from_be_bytes(
        b.get(at..at + 4)
            .ok_or(Untrackable::Malformed)?
            .try_into()
            .map_err(|_| Untrackable::Malformed)?,
    ))
}

/// Parses an Ethernet frame's first bytes (with up to one 802.1Q/802.1ad tag).
pub fn parse(frame: &[u8], zone: u16) -> Result<Packet, Untrackable> {
    let mut l3 = 14;
    let mut ethertype = be16(frame, 12)?;
    while matches!(ethertype, TPID_8021Q | TPID_8021AD) {
        ethertype = be16(frame, l3 + 2)?;
        l3 += 4;
    }
    let ip = match ethertype {
        ETH_IPV4 => ipv4(frame, l3)?,
        ETH_IPV6 => ipv6(frame, l3)?,
        _ => return Err(Untrackable::NotIp),
    };
    transport(frame, ip, zone, false)
}

/// An IP header's addresses (as a key's first four words, and its family word), protocol,
/// where L4 starts and how long it is.
struct Ip {
    words: [u64; 4],
    v6: u64,
    proto: u8,
    l4: usize,
    /// L4 bytes (header + payload) as the IP header says.
    l4_len: u32,
}

fn ipv4(b: &[u8], l3: usize) -> Result<Ip, Untrackable> {
    let vihl = *b.get(l3).ok_or(Untrackable::Malformed)?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Untrackable::Malformed);
    }
    let total = u32::from(be16(b, l3 + 2)?);
    let frag = be16(b, l3 + 6)?;
    if frag & 0x3fff != 0 {
        return Err(Untrackable::Fragment);
    }
    let (sh, sl) = v4_words(be32(b, l3 + 12)?);
    let (dh, dl) = v4_words(be32(b, l3 + 16)?);
    let proto = *b.get(l3 + 9).ok_or(Untrackable::Malformed)?;
    let l4_len = total
        .checked_sub(ihl as u32)
        .ok_or(Untrackable::Malformed)?;
    Ok(Ip {
        words: [sh, sl, dh, dl],
        v6: 0,
        proto,
        l4: l3 + ihl,
        l4_len,
    })
}

fn ipv6(b: &[u8], l3: usize) -> Result<Ip, Untrackable> {
    if b.get(l3).ok_or(Untrackable::Malformed)? >> 4 != 6 {
        return Err(Untrackable::Malformed);
    }
    let payload = u32::from(be16(b, l3 + 4)?);
    let addr = |at: usize| -> Result<(u64, u64), Untrackable> {
        let bytes: [u8; 16] = b
            .get(at..at + 16)
            .ok_or(Untrackable::Malformed)?
            .try_into()
            .map_err(|_| Untrackable::Malformed)?;
        Ok(v6_words(u128::from_be_bytes(bytes)))
    };
    let ((sh, sl), (dh, dl)) = (addr(l3 + 8)?, addr(l3 + 24)?);
    let mut next = *b.get(l3 + 6).ok_or(Untrackable::Malformed)?;
    let mut at = l3 + 40;
    let mut ext = 0u32;
    // Extension headers: hop-by-hop, routing, destination options; a fragment header ends it.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let len = (usize::from(*b.get(at + 1).ok_or(Untrackable::Malformed)?) + 1) * 8;
                next = *b.get(at).ok_or(Untrackable::Malformed)?;
                at += len;
                ext += len as u32;
            }
            44 => return Err(Untrackable::Fragment),
            _ => break,
        }
    }
    Ok(Ip {
        words: [sh, sl, dh, dl],
        v6: 1,
        proto: next,
        l4: at,
        l4_len: payload.checked_sub(ext).ok_or(Untrackable::Malformed)?,
    })
}

fn transport(b: &[u8], ip: Ip, zone: u16, quoted: bool) -> Result<Packet, Untrackable> {
    let [sh, sl, dh, dl] = ip.words;
    let key = ConnKey([sh, sl, dh, dl, meta(zone, ip.proto, 0, 0, 0), ip.v6]);
    let l4 = ip.l4;
    let transport = match ip.proto {
        IP_TCP => {
            let key = key.with_transport(0, be16(b, l4)?, be16(b, l4 + 2)?);
            if quoted {
                // An ICMP error quotes only the first 8 bytes of the segment.
                return Ok(Packet {
                    key,
                    transport: Transport::Other,
                });
            }
            let seq = be32(b, l4 + 4)?;
            let ack = be32(b, l4 + 8)?;
            let offset = usize::from(*b.get(l4 + 12).ok_or(Untrackable::Malformed)? >> 4) * 4;
            let flags = *b.get(l4 + 13).ok_or(Untrackable::Malformed)?;
            let window = be16(b, l4 + 14)?;
            if offset < 20 || ip.l4_len < offset as u32 {
                return Err(Untrackable::Malformed);
            }
            let (wscale, options_unknown) = window_scale(b, l4 + 20, l4 + offset);
            let segment = TcpSegment {
                flags,
                seq,
                ack,
                window,
                wscale,
                options_unknown,
                payload: ip.l4_len - offset as u32,
            };
            return Ok(Packet {
                key,
                transport: Transport::Tcp(segment),
            });
        }
        IP_UDP => {
            return Ok(Packet {
                key: key.with_transport(0, be16(b, l4)?, be16(b, l4 + 2)?),
                transport: Transport::Udp,
            });
        }
        IP_ICMP | IP_ICMPV6 => {
            let ty = *b.get(l4).ok_or(Untrackable::Malformed)?;
            let error = match ip.proto {
                IP_ICMP => matches!(ty, 3 | 4 | 5 | 11 | 12),
                _ => ty < 128,
            };
            if error {
                if quoted {
                    return Err(Untrackable::Malformed);
                }
                // The quoted packet: its IP header starts after the 8-byte ICMP header.
                let inner_l3 = l4 + 8;
                let inner = match ip.proto {
                    IP_ICMP => ipv4_quoted(b, inner_l3)?,
                    _ => ipv6(b, inner_l3)?,
                };
                let quoted = transport(b, inner, zone, true)?;
                // An error goes back to whoever sent the packet it quotes.
                if !quoted.key.source_is_destination_of(&ip) {
                    return Err(Untrackable::Malformed);
                }
                Transport::Error(quoted.key)
            } else if echo_pair(ip.proto, ty).is_some() {
                let id = be16(b, l4 + 4)?;
                return Ok(Packet {
                    key: key.with_transport(ty, id, id),
                    transport: Transport::Echo,
                });
            } else {
                return Err(Untrackable::IcmpOther);
            }
        }
        _ => Transport::Other,
    };
    Ok(Packet { key, transport })
}

/// A quoted IPv4 header (its total length describes the original packet, not the quote).
fn ipv4_quoted(b: &[u8], l3: usize) -> Result<Ip, Untrackable> {
    let vihl = *b.get(l3).ok_or(Untrackable::Malformed)?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Untrackable::Malformed);
    }
    let (sh, sl) = v4_words(be32(b, l3 + 12)?);
    let (dh, dl) = v4_words(be32(b, l3 + 16)?);
    Ok(Ip {
        words: [sh, sl, dh, dl],
        v6: 0,
        proto: *b.get(l3 + 9).ok_or(Untrackable::Malformed)?,
        l4: l3 + ihl,
        l4_len: 8,
    })
}

/// The window scale option among TCP options `b[from..to]`: (shift, options cut short).
fn window_scale(b: &[u8], from: usize, to: usize) -> (Option<u8>, bool) {
    let mut at = from;
    while at < to {
        let Some(&kind) = b.get(at) else {
            return (None, true);
        };
        match kind {
            0 => return (None, false),
            1 => at += 1,
            _ => {
                let Some(&len) = b.get(at + 1) else {
                    return (None, true);
                };
                if len < 2 {
                    return (None, false);
                }
                if kind == 3 && len == 3 {
                    return match b.get(at + 2) {
                        Some(&shift) => (Some(shift.min(14)), false),
                        None => (None, true),
                    };
                }
                at += usize::from(len);
            }
        }
    }
    (None, false)
}
