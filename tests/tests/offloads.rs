//! Checksum and segmentation offloads between test frontends: a super-frame goes whole to a
//! receiver that negotiated the matching GUEST_ feature (its header regenerated, moved by a
//! pushed tag) and as correct segments to any other; a partial checksum passes to a receiver
//! with GUEST_CSUM and is completed for one without; flow rewrites keep partial checksums
//! valid; the VXLAN tunnel gets segmented frames; inconsistent offload headers are dropped
//! and counted on their sender; a port offers only the offloads its setting allows.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use patchbay_overlay::vtep::{UnknownVtepPolicy, VniConfig, VtepConfig};
use patchbay_switch::control::flows::{self, FlowLine};
use patchbay_switch::daemon::Daemon;
use patchbay_switch::port::PortConfig;
use patchbay_tests::frames::{mac, strip_tag, tag_of};
use patchbay_tests::frontend::{FrontendConfig, TestPort, DEFAULT_FEATURES};
use patchbay_tests::offload::*;
use patchbay_tests::switch::{
    access, counters, drops, eventually, port, received_now, start_switch, TestDir,
};

const T: Duration = Duration::from_secs(5);
/// A destination nobody has: frames to it are flooded to every port of the VLAN.
const NOBODY: u8 = 99;

fn frontend(dir: &TestDir, name: &str, features: u64) -> TestPort {
    let mut cfg = FrontendConfig::new(dir.join(&format!("{name}.sock")));
    cfg.features = DEFAULT_FEATURES | features;
    cfg.mem_size = 64 << 20;
    cfg.queue_size = 128;
    cfg.tx_buffer_size = 65536 + 256;
    TestPort::connect(cfg).expect("frontend connects")
}

/// A switch with a sender offering everything, and receivers on VLAN 10: `whole` takes
/// every offload, `csum` only checksums, `plain` none, `trunk` (a trunk port) TSO4.
struct Bench {
    _dir: TestDir,
    d: Daemon,
    tx: TestPort,
    whole: TestPort,
    csum: TestPort,
    plain: TestPort,
    trunk: TestPort,
}

fn bench(name: &str) -> Bench {
    bench_with(name, |_| {})
}

/// [`bench`] with the sender's port settings changed by `tx_port`.
fn bench_with(name: &str, tx_port: impl FnOnce(&mut PortConfig)) -> Bench {
    let dir = TestDir::new(name);
    let mut tx_config = access(&dir.path, "tx", 10);
    tx_port(&mut tx_config);
    let d = start_switch(
        &dir.path,
        vec![
            tx_config,
            access(&dir.path, "whole", 10),
            access(&dir.path, "csum", 10),
            access(&dir.path, "plain", 10),
            port(&dir.path, "trunk", "trunk", None, Some("10")),
        ],
        |_| {},
    );
    let tx = frontend(&dir, "tx", ALL_OFFLOADS);
    let whole = frontend(
        &dir,
        "whole",
        GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN | GUEST_USO4 | GUEST_USO6,
    );
    let csum = frontend(&dir, "csum", GUEST_CSUM);
    let plain = frontend(&dir, "plain", 0);
    let trunk = frontend(&dir, "trunk", GUEST_CSUM | GUEST_TSO4);
    Bench {
        _dir: dir,
        d,
        tx,
        whole,
        csum,
        plain,
        trunk,
    }
}

/// Receives frames on `p` until their payloads add up to `len` bytes; returns them with
/// the virtio-net header each came with, partial checksums completed as the receiver would.
fn recv_payload(p: &mut TestPort, len: usize) -> Vec<(NetHdr, Vec<u8>)> {
    let mut got = Vec::new();
    let mut bytes = 0;
    while bytes < len {
        let f = p.recv(T).expect("recv").expect("a segment arrives");
        let h = NetHdr::parse(p.last_rx_header()).unwrap();
        let f = completed(&h, &f);
        bytes += checked_payload(&strip_tag(&f)).len();
        got.push((h, f));
    }
    got
}

fn joined(frames: &[(NetHdr, Vec<u8>)]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|(_, f)| checked_payload(&strip_tag(f)))
        .collect()
}

#[test]
fn tcp_super_frames_go_whole_or_in_segments_per_receiver() {
    tcp_super_frames(&mut bench("offl-tso"));
}

/// The same from a port with port security: its frames leave from the checked copy of
/// their first bytes, which must not change what each receiver gets.
#[test]
fn tcp_super_frames_from_a_secured_port_go_whole_or_in_segments() {
    let mut b = bench_with("offl-tso-sec", |p| {
        p.allowed_macs = vec!["02:00:00:00:00:01".into()];
        p.allowed_ips = vec!["10.0.0.1".into(), "fdfd:fdfd:fdfd:fdfd::/64".into()];
    });
    tcp_super_frames(&mut b);
    assert!(b
        .d
        .switch
        .port_by_name("tx")
        .unwrap()
        .security()
        .checks
        .is_some());
}

fn tcp_super_frames(b: &mut Bench) {
    for ipv6 in [false, true] {
        let data = payload(20_000, ipv6 as u8);
        let f = ip_frame(mac(NOBODY), mac(1), ipv6, L4::Tcp, None, &data);
        let (h, f) = offloaded(f, Some(1448));
        b.tx.send_with_header(&header_bytes(&h), &f).expect("send");

        // Whole, byte for byte, with the header regenerated for it.
        let got = b.whole.recv(T).unwrap().expect("the super-frame arrives");
        assert_eq!(got, f, "ipv6 {ipv6}: the super-frame as sent");
        let gh = NetHdr::parse(b.whole.last_rx_header()).unwrap();
        assert_eq!(gh.flags, F_NEEDS_CSUM);
        assert_eq!(gh.gso_type, if ipv6 { GSO_TCPV6 } else { GSO_TCPV4 });
        assert_eq!(
            (gh.gso_size, gh.csum_start, gh.csum_offset, gh.hdr_len),
            (1448, h.csum_start, 16, h.hdr_len)
        );

        // Only checksums: segments whose partial checksums (the pseudo-header's sum, as
        // NEEDS_CSUM means) the receiver finishes.
        let segs = recv_payload(&mut b.csum, data.len());
        assert_eq!(segs.len(), 14, "20000 bytes at 1448 a segment");
        assert_eq!(joined(&segs), data);
        assert!(segs.iter().all(|(sh, f)| sh.flags == F_NEEDS_CSUM
            && (sh.csum_start, sh.csum_offset) == (h.csum_start, 16)
            && sh.gso_type == GSO_NONE
            && f.len() <= 1514 + 20));

        // No offloads: segments with correct checksums and a plain header.
        let segs = recv_payload(&mut b.plain, data.len());
        assert_eq!(joined(&segs), data);
        assert!(segs.iter().all(|(h, _)| *h
            == NetHdr {
                num_buffers: h.num_buffers,
                ..NetHdr::default()
            }));

        // The trunk takes TSO4 only: IPv4 whole with its tag pushed and the offsets moved
        // by 4; IPv6 segmented (and tagged).
        if ipv6 {
            let segs = recv_payload(&mut b.trunk, data.len());
            assert_eq!(joined(&segs), data);
            assert!(segs.iter().all(|(_, f)| tag_of(f) == Some((10, 0))));
        } else {
            let got = b.trunk.recv(T).unwrap().expect("the super-frame arrives");
            assert_eq!(tag_of(&got), Some((10, 0)));
            assert_eq!(strip_tag(&got), f);
            let th = NetHdr::parse(b.trunk.last_rx_header()).unwrap();
            assert_eq!(
                (th.gso_type, th.csum_start, th.hdr_len),
                (GSO_TCPV4, h.csum_start + 4, h.hdr_len + 4)
            );
        }
    }
    assert_eq!(counters(&b.d, "tx").total_drops(), 0);
}

#[test]
fn udp_super_frames_and_partial_checksums() {
    let mut b = bench("offl-uso");
    // USO: whole to `whole`, datagrams to the others.
    let data = payload(5000, 3);
    let (h, f) = offloaded(
        ip_frame(mac(NOBODY), mac(1), false, L4::Udp, None, &data),
        Some(1200),
    );
    b.tx.send_with_header(&header_bytes(&h), &f).unwrap();
    assert_eq!(b.whole.recv(T).unwrap().as_deref(), Some(&f[..]));
    assert_eq!(
        NetHdr::parse(b.whole.last_rx_header()).unwrap().gso_type,
        GSO_UDP_L4
    );
    let segs = recv_payload(&mut b.plain, data.len());
    assert_eq!(segs.len(), 5);
    assert_eq!(joined(&segs), data);
    let segs = recv_payload(&mut b.trunk, data.len());
    assert_eq!(joined(&segs), data, "the trunk did not negotiate USO");
    let segs = recv_payload(&mut b.csum, data.len());
    assert_eq!(joined(&segs), data);
    assert!(segs.iter().all(
        |(sh, _)| (sh.flags, sh.csum_start, sh.csum_offset) == (F_NEEDS_CSUM, h.csum_start, 6)
    ));

    // A partial checksum alone (TCP over IPv6, UDP over IPv4): kept partial for receivers
    // with GUEST_CSUM, completed for the others.
    for (ipv6, l4) in [(true, L4::Tcp), (false, L4::Udp)] {
        let data = payload(333, 9);
        let full = ip_frame(mac(NOBODY), mac(1), ipv6, l4, None, &data);
        let (h, f) = offloaded(full.clone(), None);
        b.tx.send_with_header(&header_bytes(&h), &f).unwrap();
        for p in [&mut b.whole, &mut b.csum] {
            assert!(
                p.recv(T).unwrap().as_deref() == Some(&f[..]),
                "still partial"
            );
            let ph = NetHdr::parse(p.last_rx_header()).unwrap();
            assert_eq!(
                (ph.flags, ph.csum_start, ph.csum_offset),
                (F_NEEDS_CSUM, h.csum_start, h.csum_offset)
            );
        }
        let got = b.plain.recv(T).unwrap().expect("arrives");
        assert_eq!(got, full, "completed: the frame with its full checksum");
        let got = b.trunk.recv(T).unwrap().expect("arrives");
        assert_eq!(
            strip_tag(&got),
            f,
            "the trunk has GUEST_CSUM: still partial"
        );
        assert_eq!(
            NetHdr::parse(b.trunk.last_rx_header()).unwrap().csum_start,
            h.csum_start + 4
        );
    }
}

#[test]
fn inconsistent_offload_headers_are_dropped_and_counted_on_their_sender() {
    let mut b = bench("offl-bad");
    let data = payload(3000, 1);
    let (good, f) = offloaded(
        ip_frame(mac(NOBODY), mac(1), false, L4::Tcp, None, &data),
        Some(1448),
    );
    let bad = [
        (
            "csum_start past the frame",
            NetHdr {
                gso_type: 0,
                csum_start: f.len() as u16,
                ..good
            },
        ),
        (
            "checksum field past the frame",
            NetHdr {
                gso_type: 0,
                csum_offset: 0x7000,
                ..good
            },
        ),
        (
            "gso_size 0",
            NetHdr {
                gso_size: 0,
                ..good
            },
        ),
        (
            "TCPV6 on an IPv4 frame",
            NetHdr {
                gso_type: GSO_TCPV6,
                ..good
            },
        ),
        (
            "UFO (not offered)",
            NetHdr {
                gso_type: 3,
                ..good
            },
        ),
        (
            "hdr_len beyond the frame",
            NetHdr {
                hdr_len: f.len() as u16 + 1,
                ..good
            },
        ),
        ("GSO without NEEDS_CSUM", NetHdr { flags: 0, ..good }),
        (
            "csum_start not at the TCP header",
            NetHdr {
                csum_start: 14,
                ..good
            },
        ),
        (
            // Completing it would write over the tag a trunk receiver sees.
            "a checksum inside the L2 header",
            NetHdr {
                gso_type: 0,
                csum_start: 6,
                csum_offset: 8,
                ..good
            },
        ),
    ];
    for (n, (what, h)) in bad.iter().enumerate() {
        b.tx.send_with_header(&header_bytes(h), &f).unwrap();
        assert!(
            b.tx.wait_tx_completion(T).unwrap(),
            "{what}: the switch took the chain"
        );
        assert_eq!(
            drops(&b.d, "tx", "bad-offload"),
            n as u64 + 1,
            "{what}: counted"
        );
        assert_eq!(
            received_now(&mut b.plain),
            None,
            "{what}: nothing forwarded"
        );
    }
    // The sender carries on.
    b.tx.send_with_header(&header_bytes(&good), &f).unwrap();
    assert_eq!(joined(&recv_payload(&mut b.plain, data.len())), data);
    eventually("the good frame counted", || {
        counters(&b.d, "tx").rx_packets == 1
    });
}

#[test]
fn offloads_a_sender_did_not_negotiate_are_refused() {
    let dir = TestDir::new("offl-neg");
    let mut limited = access(&dir.path, "limited", 10);
    limited.offloads = Some("csum,guest_csum".into());
    let d = start_switch(
        &dir.path,
        vec![limited, access(&dir.path, "plain", 10)],
        |_| {},
    );
    // The frontend asks for everything; the port offers checksums only.
    let mut tx = frontend(&dir, "limited", ALL_OFFLOADS);
    let mut plain = frontend(&dir, "plain", 0);
    assert_eq!(tx.features() & ALL_OFFLOADS, CSUM | GUEST_CSUM);
    let names = d
        .switch
        .port_by_name("limited")
        .unwrap()
        .info()
        .feature_names;
    assert!(names.contains(&"CSUM".to_string()) && !names.iter().any(|n| n.contains("TSO")));

    let data = payload(3000, 2);
    let (h, f) = offloaded(
        ip_frame(mac(NOBODY), mac(1), false, L4::Tcp, None, &data),
        Some(1448),
    );
    tx.send_with_header(&header_bytes(&h), &f).unwrap();
    assert!(tx.wait_tx_completion(T).unwrap());
    assert_eq!(
        drops(&d, "limited", "bad-offload"),
        1,
        "TSO4 was not negotiated"
    );
    assert_eq!(received_now(&mut plain), None);
    // A partial checksum it did negotiate is completed for `plain`.
    let full = ip_frame(mac(NOBODY), mac(1), false, L4::Udp, None, &data[..500]);
    let (h, f) = offloaded(full.clone(), None);
    tx.send_with_header(&header_bytes(&h), &f).unwrap();
    assert_eq!(plain.recv(T).unwrap(), Some(full));

    // A setting that breaks a dependency is refused with the field named.
    let mut bad: PortConfig = access(&dir.path, "x", 10);
    bad.offloads = Some("host_tso4".into());
    let e = bad.validate().unwrap_err();
    assert_eq!(
        (e.field, e.message.as_str()),
        ("offloads", "'host_tso4' needs csum")
    );
}

#[test]
fn flow_rewrites_keep_partial_checksums_valid() {
    let mut b = bench("offl-flow");
    let lines: Vec<FlowLine> = [
        "priority=10,tcp,actions=mod_nw_dst:192.0.2.9,mod_tp_dst:8080,normal",
        "priority=10,udp,actions=mod_nw_src:198.51.100.1,mod_tp_src:53,normal",
        "priority=0,actions=normal",
    ]
    .iter()
    .enumerate()
    .map(|(i, l)| FlowLine {
        line: i + 1,
        text: l.to_string(),
    })
    .collect();
    flows::add_flows(&b.d.switch, &lines).expect("flows accepted");
    for l4 in [L4::Tcp, L4::Udp] {
        let data = payload(700, 4);
        let (h, f) = offloaded(ip_frame(mac(NOBODY), mac(1), false, l4, None, &data), None);
        b.tx.send_with_header(&header_bytes(&h), &f).unwrap();
        // Completed by the switch after the rewrite: correct for the new addresses and ports.
        let got = b.plain.recv(T).unwrap().expect("arrives");
        assert_eq!(checked_payload(&got), data);
        // Passed on partial, then completed the way a receiver would: also correct.
        let mut got = b.whole.recv(T).unwrap().expect("arrives");
        let gh = NetHdr::parse(b.whole.last_rx_header()).unwrap();
        complete(&mut got, gh.csum_start, gh.csum_offset);
        assert_eq!(checked_payload(&got), data);
        // And a super-frame through the same rewrite, segmented for `plain`.
        let big = payload(6000, 5);
        let (h, f) = offloaded(
            ip_frame(mac(NOBODY), mac(1), false, l4, None, &big),
            Some(1000),
        );
        b.tx.send_with_header(&header_bytes(&h), &f).unwrap();
        let segs = recv_payload(&mut b.plain, big.len());
        assert_eq!(joined(&segs), big);
        let whole = b.whole.recv(T).unwrap().expect("arrives");
        assert_eq!(whole.len(), f.len());
        for p in [&mut b.csum, &mut b.trunk] {
            while p.recv(Duration::from_millis(200)).unwrap().is_some() {}
        }
    }
}

/// Completes a partial checksum the way a receiving guest's stack would.
fn complete(f: &mut [u8], start: u16, offset: u16) {
    let (start, at) = (usize::from(start), usize::from(start + offset));
    let mut acc = 0u32;
    for pair in f[start..].chunks(2) {
        acc += u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    f[at..at + 2].copy_from_slice(&(!(acc as u16)).to_be_bytes());
}

#[test]
fn the_vxlan_tunnel_gets_segments_with_full_checksums() {
    // With the kernel's UDP offloads (where it has them) and without.
    for udp_offloads in [true, false] {
        tunnel_segments(udp_offloads);
    }
}

/// Whether this kernel segments UDP sends (UDP_SEGMENT, Linux 4.18+), asked directly.
fn kernel_has_udp_gso() -> bool {
    use std::os::fd::AsRawFd;
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int and its length, alive for the call.
    unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        ) == 0
    }
}

/// Two switches joined by VXLAN over loopback (127.0.0.1 and 127.0.0.2), each with a guest
/// port "vm" of VLAN 10 (mapped to VNI 42) and a frontend on it with every offload.
struct TunnelPair {
    _dirs: (TestDir, TestDir),
    a: Daemon,
    b: Daemon,
    vm_a: TestPort,
    vm_b: TestPort,
}

fn tunnel_pair(udp_offloads: bool, underlay_mtu: u32) -> TunnelPair {
    let vxlan_port = patchbay_tests::switch::vxlan_test_port();
    let (a, bb) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
    let host = |name: &str, local: Ipv4Addr, remote: Ipv4Addr| {
        let dir = TestDir::new(name);
        let d = start_switch(&dir.path, vec![access(&dir.path, "vm", 10)], |c| {
            c.vxlan = Some(VtepConfig {
                port: vxlan_port,
                unknown_vtep: UnknownVtepPolicy::Drop,
                underlay_mtu,
                udp_offloads,
                vnis: vec![VniConfig {
                    vni: 42,
                    vlan: 10,
                    remotes: vec![remote.into()],
                }],
                ..VtepConfig::new(local.into())
            });
        });
        let vm = frontend(&dir, "vm", ALL_OFFLOADS);
        (dir, d, vm)
    };
    let (dir_a, a_daemon, vm_a) = host("offl-vx-a", a, bb);
    let (dir_b, b_daemon, vm_b) = host("offl-vx-b", bb, a);
    TunnelPair {
        _dirs: (dir_a, dir_b),
        a: a_daemon,
        b: b_daemon,
        vm_a,
        vm_b,
    }
}

fn tunnel_segments(udp_offloads: bool) {
    let TunnelPair {
        a: da,
        b: db,
        mut vm_a,
        mut vm_b,
        ..
    } = tunnel_pair(udp_offloads, 9000);
    let data = payload(8000, 6);
    let (h, f) = offloaded(
        ip_frame(mac(NOBODY), mac(1), false, L4::Tcp, None, &data),
        Some(1000),
    );
    vm_a.send_with_header(&header_bytes(&h), &f).unwrap();
    // Across the tunnel the super-frame arrives cut, each segment with correct checksums
    // (nothing in VXLAN carries the offload).
    let segs = recv_payload(&mut vm_b, data.len());
    assert_eq!(segs.len(), 8);
    assert_eq!(joined(&segs), data);

    // The 8 equal segments left in one segmented send where the kernel can do it (and the
    // receiving kernel handed them over as one buffer), one by one otherwise.
    let (ta, tb) = (da.switch.tunnel().unwrap(), db.switch.tunnel().unwrap());
    let gso = udp_offloads && kernel_has_udp_gso();
    assert_eq!(
        ta.udp_offloads().0,
        gso,
        "GSO in use exactly where available and allowed"
    );
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&ta.io.tx_datagrams), 8);
    assert_eq!(load(&ta.io.tx_gso_datagrams), if gso { 8 } else { 0 });
    assert_eq!(load(&ta.io.tx_syscalls), 1, "one batch, one send");
    assert_eq!(load(&tb.io.rx_datagrams), 8);
    if tb.udp_offloads().1 && gso {
        assert_eq!(load(&tb.io.rx_gro_datagrams), 8, "received as one buffer");
    } else {
        assert_eq!(load(&tb.io.rx_gro_datagrams), 0);
    }
}

#[test]
fn tcp_super_frames_are_cut_to_fit_the_underlay() {
    // A 1500-byte underlay carries inner frames of up to 1464 bytes; a guest with a 1500-byte
    // MTU sends TCP super-frames at an MSS of 1448 (1502-byte segments).
    let mut p = tunnel_pair(true, 1500);
    let data = payload(8000, 7);
    let (h, f) = offloaded(
        ip_frame(mac(NOBODY), mac(1), false, L4::Tcp, None, &data),
        Some(1448),
    );
    p.vm_a.send_with_header(&header_bytes(&h), &f).unwrap();
    let segs = recv_payload(&mut p.vm_b, data.len());
    assert_eq!(joined(&segs), data, "the byte stream, in order");
    assert!(
        segs.iter().all(|(_, f)| f.len() <= 1464),
        "each fits the underlay"
    );
    assert_eq!(
        segs.len(),
        8000usize.div_ceil(1464 - 54),
        "cut at 1410 payload bytes"
    );
    assert_eq!(drops(&p.a, "vxlan", "too-big"), 0, "nothing too big");

    // UDP datagrams cannot be re-cut: those too big for the underlay are counted, not sent
    // (here the first two of 1448 bytes); the last, short one fits and goes.
    let data = payload(3000, 8);
    let (h, f) = offloaded(
        ip_frame(mac(NOBODY), mac(1), false, L4::Udp, None, &data),
        Some(1448),
    );
    p.vm_a.send_with_header(&header_bytes(&h), &f).unwrap();
    let last = recv_payload(&mut p.vm_b, 3000 - 2 * 1448);
    assert_eq!(joined(&last), data[2 * 1448..]);
    assert_eq!(drops(&p.a, "vxlan", "too-big"), 2);
}

#[test]
fn super_frames_in_odd_sized_pieces_are_cut_with_correct_checksums() {
    use patchbay_tests::frontend::RawDesc;
    let mut b = bench("offl-pieces");
    let data = payload(9_001, 8);
    let (h, f) = offloaded(
        ip_frame(mac(NOBODY), mac(1), false, L4::Tcp, None, &data),
        Some(1000),
    );
    let (buf, len) = b.tx.raw_tx().frame_buffer(&f).unwrap();
    // The offload header over the zero one `frame_buffer` wrote.
    b.tx.raw_tx().write(buf, &header_bytes(&h)).unwrap();
    // The header and the frame's first 33 bytes, then pieces of odd lengths, so segment
    // payloads start at odd offsets within the guest's buffers.
    let cuts = [0u32, 45, 46, 1047, 3333, 3334, len];
    for (i, w) in cuts.windows(2).enumerate() {
        let last = i + 2 == cuts.len();
        let d = if last {
            RawDesc::new(buf + u64::from(w[0]), w[1] - w[0], 0)
        } else {
            RawDesc::chained(buf + u64::from(w[0]), w[1] - w[0], 0, i as u16 + 1)
        };
        b.tx.raw_tx().set_desc(i as u16, d).unwrap();
    }
    assert_eq!(
        b.tx.raw_tx().submit(0, T).unwrap(),
        Some(0),
        "the chain was taken"
    );
    let segs = recv_payload(&mut b.plain, data.len());
    assert_eq!(segs.len(), 10, "9001 bytes at 1000 a segment");
    assert_eq!(joined(&segs), data);
    let whole = b.whole.recv(T).unwrap().expect("whole to the TSO receiver");
    assert!(whole == f, "the super-frame as sent");
    assert_eq!(counters(&b.d, "tx").total_drops(), 0);
}
