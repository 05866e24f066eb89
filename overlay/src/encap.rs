//! Encapsulation: the outer IPv4 + UDP + VXLAN header put in front of an inner frame.
//!
//! Everything but the lengths, the IPv4 checksum and the UDP source port is the same for every
//! frame sent to one remote in one VNI, so it is built once ([`OuterTemplate::new`]) and only
//! those fields are patched per frame ([`OuterTemplate::write`]). The header is meant for a raw
//! IPv4 socket with `IP_HDRINCL`: the kernel adds the outer Ethernet header. (Linux also fills
//! in the IPv4 ID when it is zero, and then recomputes the checksum; the checksum written here
//! keeps the header valid for senders that do not, such as AF_PACKET or AF_XDP.)

use std::net::Ipv4Addr;

use crate::wire::{VxlanPacket, VxlanRepr};
use crate::Vni;

const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;
const VXLAN_LEN: usize = VxlanPacket::<&[u8]>::HEADER_LEN;

/// Bytes of outer header: IPv4 (no options) + UDP + VXLAN.
pub const OUTER_LEN: usize = IPV4_LEN + UDP_LEN + VXLAN_LEN;

/// Largest inner frame whose outer IPv4 total length still fits 16 bits.
pub const MAX_INNER_LEN: usize = u16::MAX as usize - OUTER_LEN;

/// First port of the range RFC 7348 §5 recommends for the source port (IANA dynamic ports).
pub const SOURCE_PORT_MIN: u16 = 49152;

/// The TTL used for the outer header unless the caller chooses another.
pub const DEFAULT_TTL: u8 = 64;

mod field {
    pub const TOTAL_LEN: usize = 2;
    pub const CHECKSUM: usize = 10;
    pub const UDP_SRC: usize = 20;
    pub const UDP_LEN: usize = 24;
}

/// A precomputed outer header for one (VNI, remote VTEP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterTemplate {
    bytes: [u8; OUTER_LEN],
    /// One's-complement sum (folded) of the IPv4 header words that do not change per frame,
    /// i.e. all but the total length and the checksum (both zero in `bytes`).
    partial_sum: u16,
}

impl OuterTemplate {
    /// Builds the header: DF set (the underlay must not fragment; oversized frames are dropped
    /// as too-big before encapsulation), TOS 0, ID 0, UDP checksum 0 (allowed for IPv4 by
    /// RFC 7348 §5 and accepted by Linux).
    pub fn new(local: Ipv4Addr, remote: Ipv4Addr, dst_port: u16, vni: Vni, ttl: u8) -> Self {
        let mut bytes = [0u8; OUTER_LEN];
        // IPv4: version 4, IHL 5; TOS 0; total length later; ID 0; DF, offset 0.
        bytes[0] = 0x45;
        bytes[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
        bytes[8] = ttl;
        bytes[9] = 17; // UDP
        bytes[12..16].copy_from_slice(&local.octets());
        bytes[16..20].copy_from_slice(&remote.octets());
        // UDP: source port and length later, checksum 0.
        bytes[22..24].copy_from_slice(&dst_port.to_be_bytes());
        VxlanRepr { vni }.emit(&mut VxlanPacket::new_unchecked(
            &mut bytes[IPV4_LEN + UDP_LEN..],
        ));
        let partial_sum = fold(sum_words(&bytes[..IPV4_LEN]));
        OuterTemplate { bytes, partial_sum }
    }

    /// Writes the header for an inner frame of `inner_len` bytes: patches the IPv4 total length
    /// and checksum (from the precomputed partial sum), the UDP length and the source port.
    ///
    /// `inner_len` must not exceed [`MAX_INNER_LEN`] (callers check frames against
    /// [`max_inner_frame`] first); larger values saturate the length fields, which yields a
    /// header the receiver rejects rather than a panic.
    pub fn write(&self, out: &mut [u8; OUTER_LEN], inner_len: usize, src_port: u16) {
        *out = self.bytes;
        let total = u16::try_from(inner_len.saturating_add(OUTER_LEN)).unwrap_or(u16::MAX);
        let udp = total.saturating_sub(IPV4_LEN as u16);
        let checksum = !fold(u32::from(self.partial_sum) + u32::from(total));
        out[field::TOTAL_LEN..field::TOTAL_LEN + 2].copy_from_slice(&total.to_be_bytes());
        out[field::CHECKSUM..field::CHECKSUM + 2].copy_from_slice(&checksum.to_be_bytes());
        out[field::UDP_SRC..field::UDP_SRC + 2].copy_from_slice(&src_port.to_be_bytes());
        out[field::UDP_LEN..field::UDP_LEN + 2].copy_from_slice(&udp.to_be_bytes());
    }

    /// The template as built (lengths, checksum and source port zero).
    pub fn bytes(&self) -> &[u8; OUTER_LEN] {
        &self.bytes
    }

    pub fn remote(&self) -> Ipv4Addr {
        Ipv4Addr::new(
            self.bytes[16],
            self.bytes[17],
            self.bytes[18],
            self.bytes[19],
        )
    }

    pub fn vni(&self) -> Vni {
        VxlanPacket::new_unchecked(&self.bytes[IPV4_LEN + UDP_LEN..]).vni()
    }
}

/// Sum of big-endian 16-bit words (even-length input).
fn sum_words(bytes: &[u8]) -> u32 {
    bytes
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum()
}

/// Folds a 32-bit sum into a 16-bit one's-complement sum.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Bytes of outer header over an IPv6 underlay: IPv6 + UDP + VXLAN.
pub const OUTER_LEN_V6: usize = 40 + UDP_LEN + VXLAN_LEN;

/// Largest inner frame that fits an underlay MTU: `mtu - 20 - 8 - 8` over IPv4, `mtu - 40 -
/// 8 - 8` over IPv6 (0 if the MTU cannot even hold the outer header; the MTU is capped at
/// 65535).
pub fn max_inner_frame(underlay_mtu: u32, ipv6: bool) -> u32 {
    let outer = if ipv6 { OUTER_LEN_V6 } else { OUTER_LEN };
    underlay_mtu
        .min(u32::from(u16::MAX))
        .saturating_sub(outer as u32)
}

/// RFC 7348 §5: a UDP source port from a hash of the inner frame's flow, in 49152..=65535, so
/// that the underlay's ECMP spreads flows across paths while keeping each flow on one.
///
/// Hashed: both MACs and the EtherType (behind one 802.1Q/802.1ad tag if present); for IPv4
/// the addresses and protocol, and for unfragmented TCP/UDP/SCTP the ports; for IPv6 the same
/// from the fixed header (ports only when no extension header precedes them). The hash is
/// fixed (not per-process) so that a flow keeps its port across restarts. Truncated headers
/// just hash what is there; no allocation.
pub fn source_port(inner: &[u8]) -> u16 {
    let mut h = FlowHash::new();
    h.bytes(inner.get(..12).unwrap_or(inner));
    let (mut ethertype, mut l3) = (be16(inner, 12), 14);
    if matches!(ethertype, Some(0x8100 | 0x88a8)) {
        ethertype = be16(inner, 16);
        l3 = 18;
    }
    if let Some(et) = ethertype {
        h.word(u64::from(et));
    }
    match ethertype {
        Some(0x0800) => hash_ipv4(&mut h, inner.get(l3..).unwrap_or_default()),
        Some(0x86dd) => hash_ipv6(&mut h, inner.get(l3..).unwrap_or_default()),
        _ => {}
    }
    SOURCE_PORT_MIN | (h.finish() >> 48) as u16 & 0x3fff
}

fn hash_ipv4(h: &mut FlowHash, ip: &[u8]) {
    if ip.len() < 20 {
        return;
    }
    let protocol = ip[9];
    h.word(u64::from(protocol));
    h.bytes(&ip[12..20]);
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    // More-fragments flag or a fragment offset: later fragments have no ports, so no fragment
    // hashes them, or a flow's fragments would take different ports.
    let fragmented = be16(ip, 6).is_some_and(|f| f & 0x3fff != 0);
    if ihl >= 20 && !fragmented {
        hash_ports(h, protocol, ip.get(ihl..));
    }
}

fn hash_ipv6(h: &mut FlowHash, ip: &[u8]) {
    if ip.len() < 40 {
        return;
    }
    let next = ip[6];
    h.word(u64::from(next));
    h.bytes(&ip[8..40]);
    hash_ports(h, next, ip.get(40..));
}

fn hash_ports(h: &mut FlowHash, protocol: u8, l4: Option<&[u8]>) {
    if let (6 | 17 | 132, Some(l4)) = (protocol, l4) {
        if let Some(ports) = l4.get(..4) {
            h.bytes(ports);
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// A small multiply-rotate hash with the murmur3 finalizer: a few dozen bytes per frame, so
/// speed matters more than strength. Not keyed: the port only steers the underlay's ECMP.
struct FlowHash(u64);

impl FlowHash {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn new() -> Self {
        FlowHash(0x243f_6a88_85a3_08d3)
    }

    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(Self::K).rotate_left(31);
    }

    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        // Mixing in the length keeps "ab" + "" apart from "a" + "b".
        self.word(u64::from_le_bytes(w) ^ ((b.len() as u64) << 56));
    }

    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

    /// RFC 1071 checksum over a whole header, computed independently of the template.
    fn rfc1071(header: &[u8]) -> u16 {
        let mut sum = 0u64;
        for w in header.chunks(2) {
            sum += u64::from(w[0]) << 8 | u64::from(*w.get(1).unwrap_or(&0));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn template_is_byte_exact() {
        let t = OuterTemplate::new(LOCAL, REMOTE, 4789, 0x123456, 64);
        let mut out = [0u8; OUTER_LEN];
        t.write(&mut out, 100, 0xc0de);
        // Hand-checked: total length 136 = 0x88, UDP length 116 = 0x74.
        // Checksum: words 4500 0088 0000 4000 4011 c000 0201 c633 6407 sum to 0x2_b1d4,
        // which folds to 0xb1d6; its complement is 0x4e29.
        #[rustfmt::skip]
        let expected: [u8; OUTER_LEN] = [
            0x45, 0x00, 0x00, 0x88, 0x00, 0x00, 0x40, 0x00,
            0x40, 0x11, 0x4e, 0x29, 192, 0, 2, 1,
            198, 51, 100, 7,
            0xc0, 0xde, 0x12, 0xb5, 0x00, 0x74, 0x00, 0x00,
            0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x00,
        ];
        assert_eq!(out, expected);
        // The checksum field makes an independent full computation come out zero.
        assert_eq!(rfc1071(&out[..20]), 0);
        assert_eq!(t.remote(), REMOTE);
        assert_eq!(t.vni(), 0x123456);
    }

    #[test]
    fn checksum_matches_a_full_computation_for_any_length() {
        let t = OuterTemplate::new(
            Ipv4Addr::new(255, 255, 255, 254),
            Ipv4Addr::new(255, 255, 254, 255),
            u16::MAX,
            crate::MAX_VNI,
            255,
        );
        let mut out = [0u8; OUTER_LEN];
        for len in (0..=MAX_INNER_LEN).step_by(7).chain([MAX_INNER_LEN]) {
            t.write(&mut out, len, 65535);
            let mut zeroed = out;
            zeroed[10..12].fill(0);
            assert_eq!(
                out[10..12],
                rfc1071(&zeroed[..20]).to_be_bytes(),
                "len {len}"
            );
        }
    }

    #[test]
    fn etherparse_reads_the_headers() {
        let t = OuterTemplate::new(LOCAL, REMOTE, crate::VXLAN_PORT, 42, 17);
        let inner = [0xaau8; 60];
        let mut out = [0u8; OUTER_LEN];
        t.write(&mut out, inner.len(), source_port(&inner));
        let mut packet = out.to_vec();
        packet.extend_from_slice(&inner);

        let sliced = etherparse::SlicedPacket::from_ip(&packet).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
            panic!("not IPv4: {:?}", sliced.net);
        };
        let h = ip.header().to_header();
        assert_eq!(h.total_len, 96);
        assert!(h.dont_fragment && !h.more_fragments);
        assert_eq!(h.time_to_live, 17);
        assert_eq!(h.protocol, etherparse::IpNumber::UDP);
        assert_eq!(h.source, LOCAL.octets());
        assert_eq!(h.destination, REMOTE.octets());
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        let Some(etherparse::TransportSlice::Udp(udp)) = sliced.transport else {
            panic!("not UDP");
        };
        assert_eq!(udp.destination_port(), 4789);
        assert_eq!(udp.source_port(), source_port(&inner));
        assert_eq!(udp.length(), 76);
        assert_eq!(udp.checksum(), 0);
        let (vni, frame) = crate::decap(udp.payload()).unwrap();
        assert_eq!((vni, frame), (42, &inner[..]));
    }

    #[test]
    fn oversized_lengths_saturate() {
        let t = OuterTemplate::new(LOCAL, REMOTE, 4789, 1, 64);
        let mut out = [0u8; OUTER_LEN];
        t.write(&mut out, usize::MAX, 1);
        assert_eq!(out[2..4], [0xff, 0xff]);
        assert_eq!(out[24..26], (65535u16 - 20).to_be_bytes());
    }

    #[test]
    fn max_inner_frame_subtracts_the_outer_header() {
        assert_eq!(max_inner_frame(1500, false), 1464);
        assert_eq!(max_inner_frame(9000, false), 8964);
        assert_eq!(max_inner_frame(30, false), 0);
        assert_eq!(max_inner_frame(u32::MAX, false), MAX_INNER_LEN as u32);
        assert_eq!(
            max_inner_frame(1500, true),
            1444,
            "IPv6's header is 20 bytes longer"
        );
    }

    /// An untagged Ethernet + IPv4 + TCP/UDP frame.
    fn ipv4_frame(src_mac: u8, proto: u8, src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xbb]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src_mac]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = proto;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn source_port_is_stable_and_in_range() {
        let mut f = ipv4_frame(1, 6, [10, 0, 0, 1], 40000, 80);
        let p = source_port(&f);
        assert!(p >= 49152);
        // Payload, TTL and the IPv4 checksum are not part of the flow.
        f.extend_from_slice(&[1, 2, 3]);
        f[22] = 3;
        f[24] = 0xff;
        assert_eq!(source_port(&f), p);
        // Ports and addresses are.
        assert_ne!(source_port(&ipv4_frame(1, 6, [10, 0, 0, 1], 40001, 80)), p);
        assert_ne!(source_port(&ipv4_frame(1, 6, [10, 0, 0, 3], 40000, 80)), p);
        // A fragment hashes without ports, like the rest of its datagram.
        let mut frag = ipv4_frame(1, 17, [10, 0, 0, 1], 1, 2);
        frag[20] = 0x20; // more fragments
        let other = ipv4_frame(1, 17, [10, 0, 0, 1], 3, 4);
        let mut other_frag = other.clone();
        other_frag[20] = 0x20;
        assert_eq!(source_port(&frag), source_port(&other_frag));
        // Degenerate inputs are fine.
        for len in 0..f.len() {
            assert!(source_port(&f[..len]) >= 49152);
        }
    }

    #[test]
    fn source_port_spreads_flows() {
        let mut buckets = [0u32; 16];
        let mut seen = std::collections::HashSet::new();
        let n = 4096u32;
        for i in 0..n {
            let p = source_port(&ipv4_frame(1, 17, [10, 0, 0, 1], 1024 + i as u16, 4789));
            seen.insert(p);
            buckets[usize::from((p - 49152) >> 10)] += 1;
        }
        // 4096 flows into 16384 ports: about 3624 distinct expected from a uniform hash.
        assert!(seen.len() > 3400, "only {} distinct ports", seen.len());
        // Chi-square over 16 buckets, 15 degrees of freedom: 37.7 is the 0.1% tail.
        let expect = f64::from(n) / 16.0;
        let chi2: f64 = buckets
            .iter()
            .map(|&b| (f64::from(b) - expect).powi(2) / expect)
            .sum();
        assert!(chi2 < 37.7, "chi2 {chi2}: {buckets:?}");
        // Non-IP flows spread by MAC.
        let macs: std::collections::HashSet<u16> = (0..=255u8)
            .map(|m| {
                let mut f = [0u8; 14];
                f[11] = m;
                f[12..14].copy_from_slice(&[0x08, 0x06]);
                source_port(&f)
            })
            .collect();
        assert!(macs.len() > 240);
    }
}
