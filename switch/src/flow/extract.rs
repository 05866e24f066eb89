//! Building a packet's [`FlowKey`] from the first bytes of its frame (L2, one 802.1Q tag,
//! IPv4, IPv6 (through its extension headers) or ARP, TCP/UDP ports and TCP flags, ICMP and
//! ICMPv6 type and code, neighbour discovery target and link-layer options), the ingress
//! port and tunnel metadata. Fields a packet does not have stay 0; truncated headers leave
//! the deeper fields 0.

use super::key::consts::*;
use super::key::{Field, FlowKey};
use crate::frame::TunnelMeta;

/// Bytes of a frame the key can depend on: Ethernet + tag + IPv4 with options + the TCP
/// flags; IPv6 neighbour discovery with its first option also fits.
pub const KEY_BYTES: usize = 18 + 60 + 14;

fn be16(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}

fn be32(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ])))
}

fn mac(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 6)?;
    Some(s.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
}

/// Where the L3 header starts (after Ethernet and an optional tag), and the EtherType.
pub fn l3_offset(frame: &[u8]) -> Option<(usize, u64)> {
    let outer = be16(frame, 12)?;
    if outer == 0x8100 {
        Some((18, be16(frame, 16)?))
    } else {
        Some((14, outer))
    }
}

/// The key of `frame` (its first bytes suffice: see [`KEY_BYTES`]).
pub fn flow_key(frame: &[u8], in_port: u16, tunnel: Option<&TunnelMeta>) -> FlowKey {
    let mut k = FlowKey::default();
    flow_key_into(frame, in_port, tunnel, &mut k);
    k
}

/// [`flow_key`], written into `k` where it lies: the frame path keeps one key for a batch,
/// and a key made and then moved (232 bytes stored a word at a time, then loaded wide) had
/// its copy wait for those stores on every frame.
pub fn flow_key_into(frame: &[u8], in_port: u16, tunnel: Option<&TunnelMeta>, k: &mut FlowKey) {
    if tunnel.is_none() && tcp_udp_over_ipv4(frame, in_port, k) {
        return;
    }
    walk_into(frame, in_port, tunnel, k);
}

// The words of the most common frame's key (see `tcp_udp_over_ipv4`), and the layout that
// frame's one pass relies on.
const W_ETH_DST: usize = Field::DlDst.word();
const W_ETH_SRC: usize = Field::DlSrc.word();
const W_L4: usize = Field::TpDst.word();
const W_IP: usize = Field::NwSrc.word();
const W_IP_MORE: usize = Field::NwTtl.word();
const W_TCP: usize = Field::TcpFlags.word();
const _: () = assert!(
    Field::InPort.shift() == 0
        && Field::DlType.shift() == 0
        && Field::TpDst.shift() == 0
        && Field::DlDst.shift() == 16
        && Field::DlSrc.shift() == 16
        && Field::NwSrc.shift() == 32
        && Field::NwDst.shift() == 0
        && Field::InPort.word() == W_ETH_DST
        && Field::DlType.word() == W_ETH_SRC
        && Field::VlanTci.word() == W_L4
        && Field::NwProto.word() == W_L4
        && Field::NwTos.word() == W_L4
        && Field::TpSrc.word() == W_L4
        && Field::NwDst.word() == W_IP
        && Field::NwEcn.word() == W_IP_MORE
);

/// An IPv4 TCP or UDP frame without IP options, not a fragment, untagged or with one
/// 802.1Q tag, holding its TCP flags (every frame at least 60 bytes long does), and with
/// no tunnel: its key in one pass (the same as [`walk_into`]'s, checked by a test), or
/// `false` for any other frame. The walk sets a field at a time, each a read-modify-write
/// of its word that waits on the one before it (the key's making was 6% of the switch's
/// time with 10 000 flows); here the few words such a frame fills are composed from wide
/// loads and each stored once.
#[inline]
fn tcp_udp_over_ipv4(frame: &[u8], in_port: u16, k: &mut FlowKey) -> bool {
    let tagged = frame.get(12..14) == Some(&[0x81, 0x00][..]);
    let l3 = if tagged { 18 } else { 14 };
    let Some(h) = frame.get(..l3 + 34) else {
        return false;
    };
    let byte = |at: usize| u64::from(h[at]);
    let be16 = |at: usize| u64::from(u16::from_be_bytes([h[at], h[at + 1]]));
    let be64 = |at: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&h[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let proto = byte(l3 + 9);
    if be16(l3 - 2) != ETH_IPV4
        || h[l3] != 0x45
        || be16(l3 + 6) & 0x3fff != 0
        || (proto != IP_TCP && proto != IP_UDP)
    {
        return false;
    }
    let tos = byte(l3 + 1);
    let tci = if tagged {
        (be16(14) | VLAN_CFI) << Field::VlanTci.shift()
    } else {
        0
    };
    let l4 = l3 + 20;
    *k = FlowKey::default();
    // Eight bytes at once: the destination MAC and two of the source's, the source MAC and
    // the TPID or EtherType, then the addresses; the low 16 bits replaced.
    k.0[W_ETH_DST] = (be64(0) & !0xffff) | u64::from(in_port);
    k.0[W_ETH_SRC] = (be64(6) & !0xffff) | ETH_IPV4;
    k.0[W_L4] = tci
        | (proto << Field::NwProto.shift())
        | ((tos & 0xfc) << Field::NwTos.shift())
        | (be16(l4) << Field::TpSrc.shift())
        | be16(l4 + 2);
    k.0[W_IP] = be64(l3 + 12);
    k.0[W_IP_MORE] = (byte(l3 + 8) << Field::NwTtl.shift()) | ((tos & 3) << Field::NwEcn.shift());
    if proto == IP_TCP {
        k.0[W_TCP] = (be16(l4 + 12) & 0x0fff) << Field::TcpFlags.shift();
    }
    true
}

/// [`flow_key_into`] for any frame: header by header, field by field.
fn walk_into(frame: &[u8], in_port: u16, tunnel: Option<&TunnelMeta>, k: &mut FlowKey) {
    *k = FlowKey::default();
    k.set(Field::InPort, u64::from(in_port));
    if let Some(t) = tunnel {
        k.set(Field::TunId, u64::from(t.vni));
        // tun_src/tun_dst are IPv4 fields (as OVS's; its IPv6 ones are not matched here):
        // over an IPv6 underlay they stay 0.
        let v4 = |ip: std::net::IpAddr| match ip {
            std::net::IpAddr::V4(v4) => u64::from(u32::from(v4)),
            std::net::IpAddr::V6(_) => 0,
        };
        k.set(Field::TunSrc, v4(t.remote));
        k.set(Field::TunDst, v4(t.local));
    }
    let (Some(dst), Some(src)) = (mac(frame, 0), mac(frame, 6)) else {
        return;
    };
    k.set(Field::DlDst, dst);
    k.set(Field::DlSrc, src);
    let Some((l3, ethertype)) = l3_offset(frame) else {
        return;
    };
    if l3 == 18 {
        let tci = be16(frame, 14).unwrap_or(0);
        k.set(Field::VlanTci, tci | VLAN_CFI);
    }
    k.set(Field::DlType, ethertype);
    match ethertype {
        ETH_IPV4 => ipv4(k, frame, l3),
        ETH_ARP => {
            // OVS's model: arp_op in nw_proto, spa/tpa in nw_src/nw_dst.
            if let (Some(op), Some(spa), Some(tpa)) = (
                be16(frame, l3 + 6),
                be32(frame, l3 + 14),
                be32(frame, l3 + 24),
            ) {
                k.set(Field::NwProto, op & 0xff);
                k.set(Field::NwSrc, spa);
                k.set(Field::NwDst, tpa);
            }
            if let (Some(sha), Some(tha)) = (mac(frame, l3 + 8), mac(frame, l3 + 18)) {
                k.set(Field::ArpSha, sha);
                k.set(Field::ArpTha, tha);
            }
        }
        ETH_IPV6 => ipv6(k, frame, l3),
        _ => {}
    }
}

fn ipv4(k: &mut FlowKey, frame: &[u8], l3: usize) {
    let Some(&vihl) = frame.get(l3) else { return };
    if vihl >> 4 != 4 {
        return;
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    let (Some(&tos), Some(&proto), Some(src), Some(dst)) = (
        frame.get(l3 + 1),
        frame.get(l3 + 9),
        be32(frame, l3 + 12),
        be32(frame, l3 + 16),
    ) else {
        return;
    };
    k.set(Field::NwTos, u64::from(tos & 0xfc));
    k.set(Field::NwEcn, u64::from(tos & 3));
    k.set(Field::NwProto, u64::from(proto));
    k.set(Field::NwSrc, src);
    k.set(Field::NwDst, dst);
    if let Some(&ttl) = frame.get(l3 + 8) {
        k.set(Field::NwTtl, u64::from(ttl));
    }
    let frag = be16(frame, l3 + 6).unwrap_or(0);
    let frag_offset = frag & 0x1fff;
    if frag & 0x2000 != 0 || frag_offset != 0 {
        k.set(
            Field::NwFrag,
            FRAG_ANY | if frag_offset != 0 { FRAG_LATER } else { 0 },
        );
    }
    // Later fragments carry no L4 header.
    if frag_offset != 0 || ihl < 20 {
        return;
    }
    transport(k, frame, l3 + ihl, u64::from(proto));
}

/// `ip_frag` bits: a fragment; not the first one.
const FRAG_ANY: u64 = 1;
const FRAG_LATER: u64 = 2;

fn ipv6(k: &mut FlowKey, frame: &[u8], l3: usize) {
    let (Some(first), Some(src_hi), Some(src_lo), Some(dst_hi), Some(dst_lo)) = (
        be32(frame, l3),
        be64(frame, l3 + 8),
        be64(frame, l3 + 16),
        be64(frame, l3 + 24),
        be64(frame, l3 + 32),
    ) else {
        return;
    };
    if first >> 28 != 6 {
        return;
    }
    let tclass = (first >> 20) & 0xff;
    k.set(Field::NwTos, tclass & 0xfc);
    k.set(Field::NwEcn, tclass & 3);
    k.set(Field::Ipv6Label, first & 0xf_ffff);
    k.set(Field::Ipv6SrcHi, src_hi);
    k.set(Field::Ipv6SrcLo, src_lo);
    k.set(Field::Ipv6DstHi, dst_hi);
    k.set(Field::Ipv6DstLo, dst_lo);
    let (Some(&next), Some(&hops)) = (frame.get(l3 + 6), frame.get(l3 + 7)) else {
        return;
    };
    k.set(Field::NwTtl, u64::from(hops));
    let mut next = next;
    let mut at = l3 + 40;
    // Hop-by-hop, routing and destination options headers; a fragment header.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let (Some(&n), Some(&len)) = (frame.get(at), frame.get(at + 1)) else {
                    return;
                };
                next = n;
                at += (usize::from(len) + 1) * 8;
            }
            44 => {
                let (Some(&n), Some(offset)) = (frame.get(at), be16(frame, at + 2)) else {
                    return;
                };
                let later = offset & 0xfff8 != 0;
                k.set(Field::NwFrag, FRAG_ANY | if later { FRAG_LATER } else { 0 });
                if later {
                    k.set(Field::NwProto, u64::from(n));
                    return;
                }
                next = n;
                at += 8;
            }
            _ => break,
        }
    }
    k.set(Field::NwProto, u64::from(next));
    transport(k, frame, at, u64::from(next));
}

/// Ports and TCP flags; ICMP/ICMPv6 type and code; the neighbour discovery fields.
fn transport(k: &mut FlowKey, frame: &[u8], l4: usize, proto: u64) {
    match proto {
        IP_TCP | IP_UDP => {
            if let (Some(sp), Some(dp)) = (be16(frame, l4), be16(frame, l4 + 2)) {
                k.set(Field::TpSrc, sp);
                k.set(Field::TpDst, dp);
            }
            if proto == IP_TCP {
                if let Some(flags) = be16(frame, l4 + 12) {
                    k.set(Field::TcpFlags, flags & 0x0fff);
                }
            }
        }
        IP_ICMP | IP_ICMPV6 => {
            let (Some(&t), Some(&c)) = (frame.get(l4), frame.get(l4 + 1)) else {
                return;
            };
            k.set(Field::TpSrc, u64::from(t));
            k.set(Field::TpDst, u64::from(c));
            // Neighbour solicitation / advertisement: the target, then options.
            if proto == IP_ICMPV6 && (t == 135 || t == 136) {
                if let (Some(hi), Some(lo)) = (be64(frame, l4 + 8), be64(frame, l4 + 16)) {
                    k.set(Field::NdTargetHi, hi);
                    k.set(Field::NdTargetLo, lo);
                }
                let mut at = l4 + 24;
                while let (Some(&ty), Some(&len)) = (frame.get(at), frame.get(at + 1)) {
                    if len == 0 {
                        break;
                    }
                    match (ty, mac(frame, at + 2)) {
                        (1, Some(sll)) if t == 135 => k.set(Field::ArpSha, sll),
                        (2, Some(tll)) if t == 136 => k.set(Field::ArpTha, tll),
                        _ => {}
                    }
                    at += usize::from(len) * 8;
                }
            }
        }
        _ => {}
    }
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP/IPv4 frame built with etherparse (off the fast path), optionally tagged.
    pub(crate) fn udp_frame(vlan: Option<u16>) -> Vec<u8> {
        let mut out = Vec::new();
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let payload = [1u8, 2, 3, 4];
        match vlan {
            Some(v) => b
                .single_vlan(etherparse::VlanId::try_new(v).unwrap())
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(1234, 53)
                .write(&mut out, &payload)
                .unwrap(),
            None => b
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(1234, 53)
                .write(&mut out, &payload)
                .unwrap(),
        }
        out
    }

    #[test]
    fn extracts_l2_to_l4() {
        let f = udp_frame(None);
        let k = flow_key(&f, 3, None);
        assert_eq!(k.get(Field::InPort), 3);
        assert_eq!(k.get(Field::DlSrc), 0x0200_0000_0001);
        assert_eq!(k.get(Field::DlType), ETH_IPV4);
        assert_eq!(k.get(Field::VlanTci), 0);
        assert_eq!(k.get(Field::NwSrc), 0x0a00_0001);
        assert_eq!(k.get(Field::NwProto), IP_UDP);
        assert_eq!((k.get(Field::TpSrc), k.get(Field::TpDst)), (1234, 53));

        let t = flow_key(&udp_frame(Some(100)), 3, None);
        assert_eq!(t.get(Field::VlanTci), 0x1000 | 100);
        assert_eq!(t.get(Field::TpDst), 53);
        assert_eq!(t.get(Field::DlType), ETH_IPV4);
    }

    #[test]
    fn truncated_frames_leave_deeper_fields_zero() {
        let f = udp_frame(None);
        let k = flow_key(&f[..30], 1, None);
        assert_eq!(k.get(Field::DlType), ETH_IPV4);
        assert_eq!(k.get(Field::NwSrc), 0);
        assert_eq!(k.get(Field::TpDst), 0);
        let k = flow_key(&f[..5], 1, None);
        assert_eq!(k.get(Field::DlSrc), 0);
    }

    /// A frame padded to Ethernet's 60 bytes, as frames on the wire are.
    fn padded(mut f: Vec<u8>) -> Vec<u8> {
        f.resize(f.len().max(60), 0);
        f
    }

    #[test]
    fn the_one_pass_key_is_the_walks_key() {
        let b = || etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut tcp = Vec::new();
        b().ipv4([10, 0, 0, 1], [192, 168, 7, 9], 33)
            .tcp(40000, 443, 7, 1000)
            .syn()
            .ack(99)
            .write(&mut tcp, b"x")
            .expect("tcp");
        let mut tagged_tcp = Vec::new();
        b().single_vlan(etherparse::VlanId::try_new(42).expect("vid"))
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1, 2, 3, 4)
            .fin()
            .write(&mut tagged_tcp, &[0; 30])
            .expect("tcp");
        let common = [
            padded(udp_frame(None)),
            padded(udp_frame(Some(7))),
            padded(tcp),
            padded(tagged_tcp),
        ];
        for f in &common {
            let mut k = FlowKey::default();
            assert!(tcp_udp_over_ipv4(f, 5, &mut k), "a common frame");
        }
        // Every bit of every byte flipped in turn, and each byte set to random values (tos,
        // ecn, flags, fragments, options, other protocols and tags), at random lengths: the
        // same key both ways.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for base in &common {
            for at in 0..base.len() {
                for change in 0..16 {
                    let mut f = base.clone();
                    if change < 8 {
                        f[at] ^= 1 << change;
                    } else {
                        f[at] = next() as u8;
                    }
                    let len = if next() % 4 == 0 {
                        (next() as usize) % (f.len() + 1)
                    } else {
                        f.len()
                    };
                    let f = &f[..len];
                    let (mut one_pass, mut walked) = (FlowKey::default(), FlowKey::default());
                    flow_key_into(f, 9, None, &mut one_pass);
                    walk_into(f, 9, None, &mut walked);
                    assert!(
                        one_pass.same_as(&walked),
                        "byte {at} of {base:02x?}: {f:02x?}"
                    );
                }
            }
        }
    }
}
