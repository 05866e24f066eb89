//! Encapsulation: the sizes of the outer IPv4/IPv6 + UDP + VXLAN header (for the MTU a guest
//! may use) and the per-flow UDP source port. The switch writes only the 8-byte VXLAN header;
//! the kernel's UDP socket adds UDP and IP (`switch/src/tunnel/tx.rs`).

use crate::wire::VxlanPacket;

const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;
const VXLAN_LEN: usize = VxlanPacket::<&[u8]>::HEADER_LEN;

/// Bytes of outer header: IPv4 (no options) + UDP + VXLAN.
pub const OUTER_LEN: usize = IPV4_LEN + UDP_LEN + VXLAN_LEN;

/// Largest inner frame whose outer IPv4 total length still fits 16 bits.
pub const MAX_INNER_LEN: usize = u16::MAX as usize - OUTER_LEN;

/// First port of the range RFC 7348 §5 recommends for the source port (IANA dynamic ports).
pub const SOURCE_PORT_MIN: u16 = 49152;

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
