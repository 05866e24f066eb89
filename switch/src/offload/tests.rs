//! Conversion, checksum completion and segmentation against etherparse's own parsing and
//! checksum computation.

use super::layout::MAX_HEADERS;
use super::segment::{complete_checksum, segment, segment_parts, L4Checksum, SegmentError};
use super::*;
use crate::wire::checksum;
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice, VlanId};

const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum L4 {
    Tcp,
    Udp,
}

/// A frame with correct checksums, built by etherparse.
fn frame(ipv6: bool, l4: L4, vlan: Option<u16>, tcp_flags: u8, data: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(A, B);
    let mut out = Vec::new();
    macro_rules! finish {
        ($ip:expr) => {{
            match l4 {
                L4::Tcp => {
                    let mut t = $ip.tcp(40000, 5201, 1_000_000, 64240);
                    if tcp_flags & 0x08 != 0 {
                        t = t.psh();
                    }
                    if tcp_flags & 0x01 != 0 {
                        t = t.fin();
                    }
                    if tcp_flags & 0x80 != 0 {
                        t = t.cwr();
                    }
                    t.ack(77).write(&mut out, data).unwrap()
                }
                L4::Udp => $ip.udp(40000, 5201).write(&mut out, data).unwrap(),
            }
        }};
    }
    match (vlan, ipv6) {
        (None, false) => finish!(eth.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)),
        (None, true) => finish!(eth.ipv6([0xfd; 16], [0xfe; 16], 64)),
        (Some(v), false) => finish!(eth.single_vlan(VlanId::try_new(v).unwrap()).ipv4(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            64
        )),
        (Some(v), true) => finish!(eth
            .single_vlan(VlanId::try_new(v).unwrap())
            .ipv6([0xfd; 16], [0xfe; 16], 64)),
    }
    out
}

/// Makes the frame's L4 checksum partial, as a guest hands it over: the field holds the
/// pseudo-header's sum. Returns the virtio-net header asking for the rest.
fn make_partial(f: &mut [u8], gso: Option<(u8, u16)>) -> NetHeader {
    let layout = Layout::parse(f).unwrap();
    let (l3, l4) = (usize::from(layout.l3), usize::from(layout.l4));
    let at = l4
        + if layout.proto == layout::IP_TCP {
            16
        } else {
            6
        };
    let (src, dst) = if layout.ipv6 {
        (l3 + 8..l3 + 24, l3 + 24..l3 + 40)
    } else {
        (l3 + 12..l3 + 16, l3 + 16..l3 + 20)
    };
    let pseudo = checksum::pseudo_header(&f[src], &f[dst], layout.proto, (f.len() - l4) as u32);
    f[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
    let mut h = NetHeader {
        flags: net_header::F_NEEDS_CSUM,
        csum_start: layout.l4,
        csum_offset: (at - l4) as u16,
        ..NetHeader::default()
    };
    if let Some((t, size)) = gso {
        h.gso_type = t;
        h.gso_size = size;
        h.hdr_len = layout.hdr_len;
    }
    h
}

const ALL_HOST: u64 = HOST_OFFLOADS;

/// Every checksum of `f` as etherparse computes it; returns (payload, tcp seq, tcp flags,
/// ip id).
fn check(f: &[u8]) -> (Vec<u8>, u32, u8, u16) {
    let p = SlicedPacket::from_ethernet(f).expect("parses");
    let (id, v4, v6) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.calc_header_checksum(),
                h.header_checksum,
                "IPv4 header checksum"
            );
            assert_eq!(
                usize::from(h.total_len),
                ip.header().slice().len() + ip.payload().payload.len()
            );
            (h.identification, Some(h), None)
        }
        Some(NetSlice::Ipv6(ip)) => (0, None, Some(ip.header().to_header())),
        _ => panic!("no IP"),
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
            let flags = (u8::from(t.cwr()) << 7) | (u8::from(t.psh()) << 3) | u8::from(t.fin());
            (t.payload().to_vec(), t.sequence_number(), flags, id)
        }
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            let want = match (v4, v6) {
                (Some(ip), _) => h.calc_checksum_ipv4(&ip, u.payload()).unwrap(),
                (_, Some(ip)) => h.calc_checksum_ipv6(&ip, u.payload()).unwrap(),
                _ => unreachable!(),
            };
            assert_eq!(u.checksum(), want, "UDP checksum");
            assert_eq!(usize::from(u.length()), 8 + u.payload().len());
            (u.payload().to_vec(), 0, 0, id)
        }
        _ => panic!("no L4"),
    }
}

#[test]
fn completing_a_partial_checksum_gives_the_full_one() {
    for ipv6 in [false, true] {
        for l4 in [L4::Tcp, L4::Udp] {
            for len in [0, 1, 2, 3, 1400] {
                let good = frame(ipv6, l4, None, 0, &payload(len));
                let mut f = good.clone();
                let h = make_partial(&mut f, None);
                let off = Offload::from_net_header(&h, ALL_HOST, f.len() as u32, &f).unwrap();
                assert!(off.gso.is_none());
                complete_checksum(&mut f, off.csum.unwrap()).unwrap();
                assert_eq!(f, good, "ipv6 {ipv6}, len {len}");
            }
        }
    }
}

fn segments_of(f: &[u8], gso: Gso) -> Vec<Vec<u8>> {
    let (mut out, mut lens) = (Vec::new(), Vec::new());
    segment(f, gso, &mut out, &mut lens).unwrap();
    let mut at = 0;
    lens.iter()
        .map(|&l| {
            let s = out[at..at + l as usize].to_vec();
            at += l as usize;
            s
        })
        .collect()
}

#[test]
fn tcp_super_frames_are_cut_like_linux() {
    for (ipv6, vlan) in [
        (false, None),
        (true, None),
        (false, Some(10)),
        (true, Some(20)),
    ] {
        let data = payload(10_000);
        let mut f = frame(ipv6, L4::Tcp, vlan, 0x80 | 0x08 | 0x01, &data);
        let t = if ipv6 {
            net_header::GSO_TCPV6
        } else {
            net_header::GSO_TCPV4
        } | net_header::GSO_ECN;
        let h = make_partial(&mut f, Some((t, 1448)));
        let off =
            Offload::from_net_header(&h, ALL_HOST, f.len() as u32, &f[..MAX_HEADERS]).unwrap();
        let gso = off.gso.unwrap();
        assert_eq!(gso.kind, if ipv6 { GsoKind::Tcp6 } else { GsoKind::Tcp4 });
        assert!(gso.ecn);
        let segs = segments_of(&f, gso);
        assert_eq!(segs.len(), 7, "10000 bytes at 1448 a segment");
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let (p, seq, flags, id) = check(s);
            assert!(p.len() <= 1448);
            assert_eq!(
                seq,
                1_000_000 + joined.len() as u32,
                "sequence numbers follow bytes"
            );
            let last = i + 1 == segs.len();
            assert_eq!(flags & 0x09 != 0, last, "FIN and PSH only on the last");
            assert_eq!(flags & 0x80 != 0, i == 0, "CWR only on the first");
            if !ipv6 {
                assert_eq!(id, i as u16, "IP IDs count up from the super-frame's");
            }
            joined.extend(p);
        }
        assert_eq!(joined, data, "the payload, in order");
    }
}

#[test]
fn partial_segments_complete_to_the_full_ones() {
    for (ipv6, l4, gso_type) in [
        (false, L4::Tcp, net_header::GSO_TCPV4),
        (true, L4::Tcp, net_header::GSO_TCPV6),
        (false, L4::Udp, net_header::GSO_UDP_L4),
    ] {
        let data = payload(5000);
        let mut f = frame(ipv6, l4, Some(7), 0, &data);
        let h = make_partial(&mut f, Some((gso_type, 1000)));
        let off =
            Offload::from_net_header(&h, ALL_HOST, f.len() as u32, &f[..MAX_HEADERS]).unwrap();
        let full = segments_of(&f, off.gso.unwrap());
        let mut n = 0;
        segment_parts(
            &f,
            f.len(),
            off.gso.unwrap(),
            L4Checksum::Partial,
            |_| panic!("a partial checksum needs no payload sum"),
            |header, payload, csum| {
                let mut seg = [header, &f[payload]].concat();
                assert_eq!(
                    csum.start,
                    off.csum.unwrap().start,
                    "csum_start is the L4 header"
                );
                complete_checksum(&mut seg, csum).unwrap();
                assert_eq!(seg, full[n], "ipv6 {ipv6}, {l4:?}: segment {n}");
                n += 1;
            },
        )
        .unwrap();
        assert_eq!(n, full.len());
    }
}

#[test]
fn udp_super_frames_become_datagrams() {
    for ipv6 in [false, true] {
        let data = payload(4000);
        let mut f = frame(ipv6, L4::Udp, None, 0, &data);
        let h = make_partial(&mut f, Some((net_header::GSO_UDP_L4, 1200)));
        let off =
            Offload::from_net_header(&h, ALL_HOST, f.len() as u32, &f[..MAX_HEADERS]).unwrap();
        let segs = segments_of(&f, off.gso.unwrap());
        assert_eq!(segs.len(), 4);
        let joined: Vec<u8> = segs.iter().flat_map(|s| check(s).0).collect();
        assert_eq!(joined, data);
    }
}

#[test]
fn a_short_super_frame_is_one_segment_with_fixed_checksums() {
    let data = payload(100);
    let mut f = frame(false, L4::Tcp, None, 0x08, &data);
    let h = make_partial(&mut f, Some((net_header::GSO_TCPV4, 1448)));
    let off = Offload::from_net_header(&h, ALL_HOST, f.len() as u32, &f[..MAX_HEADERS]).unwrap();
    let segs = segments_of(&f, off.gso.unwrap());
    assert_eq!(segs.len(), 1);
    assert_eq!(check(&segs[0]).0, data);
}

#[test]
fn inconsistent_headers_are_refused() {
    let mut f = frame(false, L4::Tcp, None, 0, &payload(3000));
    let len = f.len() as u32;
    let good = make_partial(&mut f, Some((net_header::GSO_TCPV4, 1448)));
    let conv = |h: NetHeader, features: u64| {
        Offload::from_net_header(&h, features, len, &f[..MAX_HEADERS])
    };
    assert!(conv(good, ALL_HOST).is_ok());
    let csum_only = NetHeader {
        gso_type: 0,
        ..good
    };
    assert_eq!(
        conv(csum_only, 0),
        Err(OffloadError::CsumNotNegotiated),
        "NEEDS_CSUM without CSUM"
    );
    assert!(matches!(
        conv(
            NetHeader {
                csum_start: len as u16,
                ..csum_only
            },
            ALL_HOST
        ),
        Err(OffloadError::CsumOutsideFrame { .. })
    ));
    assert!(matches!(
        conv(
            NetHeader {
                csum_offset: 0xfff0,
                ..csum_only
            },
            ALL_HOST
        ),
        Err(OffloadError::CsumOutsideFrame { .. })
    ));
    let no_tso4 = ALL_HOST & !bit(VIRTIO_NET_F_HOST_TSO4);
    assert_eq!(conv(good, no_tso4), Err(OffloadError::GsoNotNegotiated(1)));
    let ecn = NetHeader {
        gso_type: net_header::GSO_TCPV4 | net_header::GSO_ECN,
        ..good
    };
    assert!(matches!(
        conv(ecn, ALL_HOST & !bit(VIRTIO_NET_F_HOST_ECN)),
        Err(OffloadError::GsoNotNegotiated(_))
    ));
    assert!(
        matches!(
            conv(
                NetHeader {
                    gso_type: net_header::GSO_UDP,
                    ..good
                },
                ALL_HOST
            ),
            Err(OffloadError::GsoNotNegotiated(_))
        ),
        "UFO is not offered"
    );
    assert_eq!(
        conv(
            NetHeader {
                gso_size: 0,
                ..good
            },
            ALL_HOST
        ),
        Err(OffloadError::GsoSizeZero)
    );
    assert_eq!(
        conv(NetHeader { flags: 0, ..good }, ALL_HOST),
        Err(OffloadError::GsoWithoutCsum)
    );
    assert!(matches!(
        conv(
            NetHeader {
                hdr_len: len as u16 + 1,
                ..good
            },
            ALL_HOST
        ),
        Err(OffloadError::HdrLenOutsideFrame { .. })
    ));
    assert!(
        matches!(
            conv(
                NetHeader {
                    gso_type: net_header::GSO_TCPV6,
                    ..good
                },
                ALL_HOST
            ),
            Err(OffloadError::GsoHeaders(_))
        ),
        "TCPV6 on an IPv4 frame"
    );
    assert!(
        matches!(
            conv(
                NetHeader {
                    gso_type: net_header::GSO_UDP_L4,
                    ..good
                },
                ALL_HOST
            ),
            Err(OffloadError::GsoHeaders(_))
        ),
        "UDP_L4 on a TCP frame"
    );
    assert!(matches!(
        conv(
            NetHeader {
                csum_start: 14,
                ..good
            },
            ALL_HOST
        ),
        Err(OffloadError::GsoCsumStart { .. })
    ));
    assert!(matches!(
        conv(
            NetHeader {
                gso_size: 1,
                ..good
            },
            ALL_HOST
        ),
        Err(OffloadError::GsoTooManySegments { .. })
    ));
    assert!(matches!(
        Offload::from_net_header(&good, ALL_HOST, MAX_SUPER_FRAME + 1, &f[..MAX_HEADERS]),
        Err(OffloadError::GsoTooBig { .. })
    ));
    // A checksum that would be written over the L2 header the switch decided on.
    for start in [0, 6, 12, 13] {
        assert_eq!(
            conv(
                NetHeader {
                    gso_type: 0,
                    csum_start: start,
                    csum_offset: 0,
                    ..good
                },
                ALL_HOST
            ),
            Err(OffloadError::CsumInL2Header { start, l2: 14 })
        );
    }
    // A plain header is no offload at all, whatever the features; DATA_VALID is ignored.
    let plain = NetHeader {
        flags: net_header::F_DATA_VALID,
        ..NetHeader::default()
    };
    assert_eq!(conv(plain, 0), Ok(Offload::NONE));
}

#[test]
fn headers_are_regenerated_per_receiver() {
    use virtio_bindings::virtio_net::*;
    let mut f = frame(false, L4::Tcp, None, 0, &payload(3000));
    let h = make_partial(&mut f, Some((net_header::GSO_TCPV4, 1448)));
    let off = Offload::from_net_header(&h, ALL_HOST, f.len() as u32, &f[..MAX_HEADERS]).unwrap();
    let tso = bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4);
    assert!(off.fits(tso));
    assert!(
        !off.fits(bit(VIRTIO_NET_F_GUEST_CSUM)),
        "no GUEST_TSO4: segment"
    );
    assert!(!off.fits(bit(VIRTIO_NET_F_GUEST_TSO6) | bit(VIRTIO_NET_F_GUEST_CSUM)));
    assert!(!off.fits(0));
    let out = off.net_header(tso);
    assert_eq!(
        (
            out.flags,
            out.gso_type,
            out.gso_size,
            out.csum_start,
            out.csum_offset,
            out.hdr_len
        ),
        (
            net_header::F_NEEDS_CSUM,
            net_header::GSO_TCPV4,
            1448,
            34,
            16,
            54
        )
    );
    // A tag pushed on the way moves everything after the L2 header by 4 bytes.
    let tagged = off.shifted(4).net_header(tso);
    assert_eq!((tagged.csum_start, tagged.hdr_len), (38, 58));
    assert_eq!(off.shifted(4).shifted(-4), off);

    let csum_only = Offload { gso: None, ..off };
    assert!(csum_only.fits(bit(VIRTIO_NET_F_GUEST_CSUM)));
    assert!(!csum_only.fits(0), "no GUEST_CSUM: the switch completes it");
    let done = Offload {
        csum_valid: true,
        ..Offload::NONE
    };
    assert_eq!(
        done.net_header(bit(VIRTIO_NET_F_GUEST_CSUM)).flags,
        net_header::F_DATA_VALID
    );
    assert_eq!(
        done.net_header(0).flags,
        0,
        "DATA_VALID only with GUEST_CSUM"
    );
    let ecn = Offload {
        gso: Some(Gso {
            ecn: true,
            ..off.gso.unwrap()
        }),
        ..off
    };
    assert!(!ecn.fits(tso));
    assert!(ecn.fits(tso | bit(VIRTIO_NET_F_GUEST_ECN)));
}

#[test]
fn segmenting_refuses_what_it_cannot_cut() {
    let f = frame(false, L4::Udp, None, 0, &payload(100));
    let gso = Gso {
        kind: GsoKind::Tcp4,
        size: 10,
        ecn: false,
        hdr_len: 42,
    };
    assert_eq!(
        segment(&f, gso, &mut Vec::new(), &mut Vec::new()),
        Err(SegmentError::Headers("TCP"))
    );
    let mut short = f.clone();
    assert!(complete_checksum(
        &mut short,
        PartialCsum {
            start: 130,
            offset: 20
        }
    )
    .is_err());
}
