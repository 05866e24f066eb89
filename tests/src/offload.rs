//! Frames as a guest that offloads checksums and segmentation hands them over (a partial
//! L4 checksum and a virtio-net header asking for the rest), and checks of what comes out:
//! every checksum recomputed by etherparse, segments joined back into the payload.

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice, VlanId};

pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

pub const CSUM: u64 = 1 << 0;
pub const GUEST_CSUM: u64 = 1 << 1;
pub const GUEST_TSO4: u64 = 1 << 7;
pub const GUEST_TSO6: u64 = 1 << 8;
pub const GUEST_ECN: u64 = 1 << 9;
pub const HOST_TSO4: u64 = 1 << 11;
pub const HOST_TSO6: u64 = 1 << 12;
pub const HOST_ECN: u64 = 1 << 13;
pub const GUEST_USO4: u64 = 1 << 54;
pub const GUEST_USO6: u64 = 1 << 55;
pub const HOST_USO: u64 = 1 << 56;
/// Every checksum and segmentation offload, both directions.
pub const ALL_OFFLOADS: u64 = CSUM
    | GUEST_CSUM
    | GUEST_TSO4
    | GUEST_TSO6
    | GUEST_ECN
    | HOST_TSO4
    | HOST_TSO6
    | HOST_ECN
    | GUEST_USO4
    | GUEST_USO6
    | HOST_USO;

/// The switch's own virtio-net header type (its byte layout is pinned by its unit test).
pub use patchbay_switch::virtio::net_header::NetHeader as NetHdr;

/// The 12-byte header a test frontend sends (num_buffers 0).
pub fn header_bytes(h: &NetHdr) -> Vec<u8> {
    let mut b = vec![0u8; 12];
    h.emit(&mut b);
    b
}

/// The L4 protocol of a test frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

/// Payload bytes that show where they came from.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A frame from `src` to `dst` MACs with full, correct checksums (built by etherparse).
pub fn ip_frame(
    dst: [u8; 6],
    src: [u8; 6],
    ipv6: bool,
    l4: L4,
    vlan: Option<u16>,
    data: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(src, dst);
    let mut out = Vec::new();
    macro_rules! finish {
        ($ip:expr) => {
            match l4 {
                L4::Tcp => $ip
                    .tcp(40000, 5201, 1_000_000, 64240)
                    .ack(1)
                    .psh()
                    .write(&mut out, data)
                    .unwrap(),
                L4::Udp => $ip.udp(40000, 5201).write(&mut out, data).unwrap(),
            }
        };
    }
    let (s4, d4) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let (s6, d6) = ([0xfd; 16], [0xfe; 16]);
    match (vlan, ipv6) {
        (None, false) => finish!(eth.ipv4(s4, d4, 64)),
        (None, true) => finish!(eth.ipv6(s6, d6, 64)),
        (Some(v), false) => finish!(eth
            .single_vlan(VlanId::try_new(v).unwrap())
            .ipv4(s4, d4, 64)),
        (Some(v), true) => finish!(eth
            .single_vlan(VlanId::try_new(v).unwrap())
            .ipv6(s6, d6, 64)),
    }
    out
}

fn sum(bytes: &[u8]) -> u32 {
    let mut acc = 0u32;
    for pair in bytes.chunks(2) {
        acc += u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// (L3 offset, L4 offset, L4 header length, ipv6, tcp) of a frame built by [`ip_frame`].
pub fn offsets(f: &[u8]) -> (usize, usize, usize, bool, bool) {
    let l3 = if f[12..14] == [0x81, 0x00] { 18 } else { 14 };
    let ipv6 = f[l3] >> 4 == 6;
    let (l4, proto) = if ipv6 {
        (l3 + 40, f[l3 + 6])
    } else {
        (l3 + usize::from(f[l3] & 0x0f) * 4, f[l3 + 9])
    };
    let tcp = proto == 6;
    let l4_hdr = if tcp {
        usize::from(f[l4 + 12] >> 4) * 4
    } else {
        8
    };
    (l3, l4, l4_hdr, ipv6, tcp)
}

/// Turns a frame from [`ip_frame`] into what an offloading guest sends: its L4 checksum
/// field holds the pseudo-header's sum, and the header asks for the rest (and, with `gso`,
/// for segments of that size).
pub fn offloaded(mut f: Vec<u8>, gso: Option<u16>) -> (NetHdr, Vec<u8>) {
    let (l3, l4, l4_hdr, ipv6, tcp) = offsets(&f);
    let at = l4 + if tcp { 16 } else { 6 };
    let addrs = if ipv6 {
        &f[l3 + 8..l3 + 40]
    } else {
        &f[l3 + 12..l3 + 20]
    };
    let l4_len = (f.len() - l4) as u32;
    let pseudo = fold(
        sum(addrs) + u32::from(if tcp { 6u8 } else { 17 }) + (l4_len >> 16) + (l4_len & 0xffff),
    );
    f[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
    let mut h = NetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: l4 as u16,
        csum_offset: (at - l4) as u16,
        ..NetHdr::default()
    };
    if let Some(size) = gso {
        h.gso_type = match (tcp, ipv6) {
            (true, false) => GSO_TCPV4,
            (true, true) => GSO_TCPV6,
            (false, _) => GSO_UDP_L4,
        };
        h.gso_size = size;
        h.hdr_len = (l4 + l4_hdr) as u16;
    }
    (h, f)
}

/// `f` as its receiver's stack sees it after finishing a partial checksum (NEEDS_CSUM in
/// `h`): the sum from csum_start on, summed word by word here, complemented into its field.
/// Frames without NEEDS_CSUM come back as they are.
pub fn completed(h: &NetHdr, f: &[u8]) -> Vec<u8> {
    let mut f = f.to_vec();
    if h.flags & F_NEEDS_CSUM != 0 {
        let start = usize::from(h.csum_start);
        let at = start + usize::from(h.csum_offset);
        let mut acc = 0u64;
        for pair in f[start..].chunks(2) {
            acc += u64::from(pair[0]) << 8 | pair.get(1).map_or(0, |&b| u64::from(b));
        }
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        f[at..at + 2].copy_from_slice(&(!(acc as u16)).to_be_bytes());
    }
    f
}

/// Checks every checksum of `f` with etherparse; returns its L4 payload (panics, naming the
/// checksum, if one is wrong).
pub fn checked_payload(f: &[u8]) -> Vec<u8> {
    let p = SlicedPacket::from_ethernet(f).expect("an Ethernet/IP frame");
    let (v4, v6) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.calc_header_checksum(),
                h.header_checksum,
                "IPv4 header checksum"
            );
            (Some(h), None)
        }
        Some(NetSlice::Ipv6(ip)) => (None, Some(ip.header().to_header())),
        _ => panic!("no IP header"),
    };
    match p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let h = t.to_header();
            let want = match (v4, v6) {
                (Some(ip), _) => h.calc_checksum_ipv4(&ip, t.payload()).unwrap(),
                (_, Some(ip)) => h.calc_checksum_ipv6(&ip, t.payload()).unwrap(),
                _ => unreachable!(),
            };
            assert_eq!(t.checksum(), want, "TCP checksum");
            t.payload().to_vec()
        }
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            let want = match (v4, v6) {
                (Some(ip), _) => h.calc_checksum_ipv4(&ip, u.payload()).unwrap(),
                (_, Some(ip)) => h.calc_checksum_ipv6(&ip, u.payload()).unwrap(),
                _ => unreachable!(),
            };
            assert_eq!(u.checksum(), want, "UDP checksum");
            u.payload().to_vec()
        }
        _ => panic!("no TCP or UDP header"),
    }
}
