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
                    proxy: false,
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

const TCP_CWR: u8 = 0x80;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

/// The TCP flags of a frame (tagged or not) built by `ip_frame`.
fn tcp_flags(f: &[u8]) -> u8 {
    let (_, l4, _, _, tcp) = offsets(f);
    assert!(tcp, "a TCP frame");
    f[l4 + 13]
}

/// Adds flow lines to the switch of `d`.
fn add_flows(d: &Daemon, lines: &[&str]) {
    let lines: Vec<FlowLine> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| FlowLine {
            line: i + 1,
            text: l.to_string(),
        })
        .collect();
    flows::add_flows(&d.switch, &lines).expect("flows accepted");
}

#[test]
fn ecn_super_frames_stay_whole_for_guest_ecn_and_are_cut_with_cwr_on_the_first_segment_only() {
    let mut b = bench("offl-ecn");
    for ipv6 in [false, true] {
        let data = payload(10_000, 11 + ipv6 as u8);
        let mut full = ip_frame(mac(NOBODY), mac(1), ipv6, L4::Tcp, None, &data);
        let (_, l4, _, _, _) = offsets(&full);
        full[l4 + 13] |= TCP_CWR;
        let (h, f) = offloaded(full, Some(1448));
        let h = NetHdr {
            gso_type: h.gso_type | GSO_ECN,
            ..h
        };
        b.tx.send_with_header(&header_bytes(&h), &f).unwrap();

        // GUEST_ECN (with TSO4/6): whole, the ECN bit kept in its header.
        let got = b.whole.recv(T).unwrap().expect("the super-frame arrives");
        assert_eq!(got, f, "ipv6 {ipv6}: the super-frame as sent, CWR and all");
        let gh = NetHdr::parse(b.whole.last_rx_header()).unwrap();
        let base = if ipv6 { GSO_TCPV6 } else { GSO_TCPV4 };
        assert_eq!(
            (
                gh.flags,
                gh.gso_type,
                gh.gso_size,
                gh.csum_start,
                gh.hdr_len
            ),
            (F_NEEDS_CSUM, base | GSO_ECN, 1448, h.csum_start, h.hdr_len),
            "ipv6 {ipv6}: the ECN bit kept"
        );

        // The trunk has GUEST_TSO4 but not GUEST_ECN; `csum` and `plain` neither: segments,
        // CWR on the first only (as Linux's tcp_gso_segment), PSH on the last only.
        for (name, p) in [
            ("trunk", &mut b.trunk),
            ("csum", &mut b.csum),
            ("plain", &mut b.plain),
        ] {
            let segs = recv_payload(p, data.len());
            assert_eq!(segs.len(), 7, "ipv6 {ipv6}, {name}: 10000 bytes at 1448");
            assert_eq!(joined(&segs), data, "ipv6 {ipv6}, {name}");
            for (i, (sh, sf)) in segs.iter().enumerate() {
                assert_eq!(
                    sh.gso_type, GSO_NONE,
                    "ipv6 {ipv6}, {name} #{i}: no GSO, no ECN bit"
                );
                let flags = tcp_flags(sf);
                assert_eq!(
                    flags & TCP_CWR != 0,
                    i == 0,
                    "ipv6 {ipv6}, {name} #{i}: CWR on the first segment only"
                );
                assert_eq!(flags & TCP_PSH != 0, i + 1 == segs.len(), "PSH on the last");
                assert_ne!(flags & TCP_ACK, 0, "ACK on every segment");
            }
        }
    }
    assert_eq!(counters(&b.d, "tx").total_drops(), 0);
}

#[test]
fn ecn_super_frames_from_a_sender_without_host_ecn_are_dropped_and_counted() {
    let dir = TestDir::new("offl-noecn");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "tx", 10), access(&dir.path, "rx", 10)],
        |_| {},
    );
    let mut tx = frontend(&dir, "tx", ALL_OFFLOADS & !HOST_ECN);
    let mut rx = frontend(&dir, "rx", ALL_OFFLOADS);
    assert_eq!(tx.features() & (HOST_TSO4 | HOST_ECN), HOST_TSO4);

    let data = payload(4000, 14);
    let mut full = ip_frame(mac(NOBODY), mac(1), false, L4::Tcp, None, &data);
    let (_, l4, _, _, _) = offsets(&full);
    full[l4 + 13] |= TCP_CWR;
    let (h, f) = offloaded(full, Some(1448));
    let ecn = NetHdr {
        gso_type: GSO_TCPV4 | GSO_ECN,
        ..h
    };
    tx.send_with_header(&header_bytes(&ecn), &f).unwrap();
    assert!(
        tx.wait_tx_completion(T).unwrap(),
        "the switch took the chain"
    );
    assert_eq!(
        drops(&d, "tx", "bad-offload"),
        1,
        "HOST_ECN was not negotiated"
    );
    assert_eq!(received_now(&mut rx), None, "nothing forwarded");

    // The same super-frame without the ECN bit is one it negotiated.
    tx.send_with_header(&header_bytes(&h), &f).unwrap();
    assert_eq!(rx.recv(T).unwrap(), Some(f));
    let rh = NetHdr::parse(rx.last_rx_header()).unwrap();
    assert_eq!(rh.gso_type, GSO_TCPV4);
    assert_eq!(drops(&d, "tx", "bad-offload"), 1);
}

/// A TCP/IPv4 frame from `ip_frame`'s addresses and ports whose IP and TCP headers both
/// carry 40 bytes of options (NOPs): 134 bytes of headers, more than a flow rewrite's header
/// buffer holds.
fn long_header_frame(data: &[u8]) -> Vec<u8> {
    use etherparse::{IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, PacketBuilder, TcpHeader};
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, [10, 0, 0, 1], [10, 0, 0, 2]).unwrap();
    ip.options = [1u8; 40].into();
    let mut tcp = TcpHeader::new(40000, 5201, 1_000_000, 64240);
    tcp.ack = true;
    tcp.acknowledgment_number = 1;
    tcp.psh = true;
    tcp.set_options_raw(&[1u8; 40]).unwrap();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(mac(1), mac(NOBODY))
        .ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default()))
        .tcp_header(tcp)
        .write(&mut out, data)
        .unwrap();
    out
}

#[test]
fn data_valid_is_set_only_on_checksums_the_switch_computed_itself() {
    let mut b = bench("offl-dv");
    // A full checksum the switch did not check: passed on without DATA_VALID, even when the
    // sender's header claims it (DATA_VALID from a driver means nothing) and even when the
    // checksum is wrong (which shows the switch did not vouch for it).
    let data = payload(400, 12);
    let good = ip_frame(mac(NOBODY), mac(1), false, L4::Tcp, None, &data);
    let mut bad = good.clone();
    let (_, l4, _, _, _) = offsets(&bad);
    bad[l4 + 16] ^= 0x5a;
    let claims_valid = NetHdr {
        flags: F_DATA_VALID,
        ..NetHdr::default()
    };
    for (what, f) in [("correct", &good), ("wrong", &bad)] {
        b.tx.send_with_header(&header_bytes(&claims_valid), f)
            .unwrap();
        for (name, p) in [
            ("whole", &mut b.whole),
            ("csum", &mut b.csum),
            ("trunk", &mut b.trunk),
            ("plain", &mut b.plain),
        ] {
            let got = p.recv(T).unwrap().expect("arrives");
            assert_eq!(strip_tag(&got), *f, "{what} checksum to {name}: as sent");
            let gh = NetHdr::parse(p.last_rx_header()).unwrap();
            assert_eq!(
                (gh.flags, gh.gso_type),
                (0, GSO_NONE),
                "{what} checksum to {name}: no DATA_VALID"
            );
        }
    }

    // A partial checksum passed on stays NEEDS_CSUM, never DATA_VALID; one the switch
    // completed for `plain` has no flags (DATA_VALID needs GUEST_CSUM).
    let (h, f) = offloaded(good.clone(), None);
    b.tx.send_with_header(&header_bytes(&h), &f).unwrap();
    for p in [&mut b.whole, &mut b.csum, &mut b.trunk] {
        p.recv(T).unwrap().expect("arrives");
        assert_eq!(
            NetHdr::parse(p.last_rx_header()).unwrap().flags,
            F_NEEDS_CSUM
        );
    }
    assert_eq!(b.plain.recv(T).unwrap(), Some(good));
    assert_eq!(NetHdr::parse(b.plain.last_rx_header()).unwrap().flags, 0);

    // A super-frame whose headers are too long to be cut in place is segmented in a host
    // buffer with every checksum computed by the switch: DATA_VALID for a receiver with
    // GUEST_CSUM, checksums etherparse agrees with.
    let data = payload(6000, 13);
    let (h, f) = offloaded(long_header_frame(&data), Some(1000));
    assert_eq!(h.hdr_len, 134);
    assert!(usize::from(h.hdr_len) > patchbay_switch::flow::rewrite::REWRITE_BYTES);
    b.tx.send_with_header(&header_bytes(&h), &f).unwrap();
    let segs = recv_payload(&mut b.csum, data.len());
    assert_eq!(segs.len(), 6, "6000 bytes at 1000");
    assert_eq!(joined(&segs), data);
    for (i, (sh, sf)) in segs.iter().enumerate() {
        assert_eq!(
            (sh.flags, sh.gso_type),
            (F_DATA_VALID, GSO_NONE),
            "segment {i}: checksummed by the switch"
        );
        // `recv_payload` completes only NEEDS_CSUM: this checksum is the switch's own.
        assert_eq!(checked_payload(sf).len(), 1000);
    }
    let segs = recv_payload(&mut b.plain, data.len());
    assert_eq!(joined(&segs), data);
    assert!(
        segs.iter().all(|(sh, _)| sh.flags == 0),
        "no GUEST_CSUM: no flags"
    );
    // Receivers that take it whole get it partial.
    let got = b.whole.recv(T).unwrap().expect("the super-frame arrives");
    assert_eq!(got, f);
    let gh = NetHdr::parse(b.whole.last_rx_header()).unwrap();
    assert_eq!((gh.flags, gh.gso_type), (F_NEEDS_CSUM, GSO_TCPV4));
    let got = b.trunk.recv(T).unwrap().expect("the super-frame arrives");
    assert_eq!(strip_tag(&got), f);
    assert_eq!(
        NetHdr::parse(b.trunk.last_rx_header()).unwrap().flags,
        F_NEEDS_CSUM
    );
    assert_eq!(counters(&b.d, "tx").total_drops(), 0);
}

/// (source address, destination address, destination port) of a frame, tagged or not.
fn addrs_and_dst_port(f: &[u8]) -> (std::net::IpAddr, std::net::IpAddr, u16) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(f).expect("an Ethernet/IP frame");
    let (src, dst) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        _ => panic!("no IP header"),
    };
    let port = match &p.transport {
        Some(TransportSlice::Tcp(t)) => t.destination_port(),
        Some(TransportSlice::Udp(u)) => u.destination_port(),
        _ => panic!("no TCP or UDP header"),
    };
    (src, dst, port)
}

#[test]
fn ipv6_and_set_field_rewrites_keep_partial_checksums_valid() {
    let mut b = bench("offl-flow6");
    add_flows(
        &b.d,
        &[
            "priority=10,tcp6,actions=set_field:fd00::9->ipv6_src,mod_tp_dst:8080,normal",
            "priority=10,udp6,actions=set_field:fe80::1234->ipv6_dst,set_field:5353->tp_dst,normal",
            "priority=10,tcp,actions=set_field:192.0.2.7->ip_src,set_field:8443->tp_dst,normal",
            "priority=0,actions=normal",
        ],
    );
    let v6 = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
    let cases = [
        (
            true,
            L4::Tcp,
            (
                v6("fd00::9"),
                v6("fefe:fefe:fefe:fefe:fefe:fefe:fefe:fefe"),
                8080,
            ),
        ),
        (
            true,
            L4::Udp,
            (
                v6("fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd"),
                v6("fe80::1234"),
                5353,
            ),
        ),
        (false, L4::Tcp, (v6("192.0.2.7"), v6("10.0.0.2"), 8443)),
    ];
    for (ipv6, l4, want) in cases {
        let what = format!("ipv6 {ipv6} {l4:?}");
        // A lone partial checksum, then a super-frame, through the rewrite.
        for gso in [None, Some(1000)] {
            let data = payload(if gso.is_some() { 6000 } else { 700 }, 15);
            let (h, f) = offloaded(ip_frame(mac(NOBODY), mac(1), ipv6, l4, None, &data), gso);
            b.tx.send_with_header(&header_bytes(&h), &f).unwrap();
            // Every receiver: whatever it gets (whole or in segments, partial or completed
            // by the switch), once it finished the partial checksums as its stack would,
            // every checksum is right for the rewritten addresses and port.
            for (name, p) in [
                ("whole", &mut b.whole),
                ("csum", &mut b.csum),
                ("plain", &mut b.plain),
                ("trunk", &mut b.trunk),
            ] {
                let got = recv_payload(p, data.len());
                assert_eq!(joined(&got), data, "{what} {gso:?} to {name}");
                for (gh, gf) in &got {
                    assert_eq!(
                        addrs_and_dst_port(gf),
                        want,
                        "{what} {gso:?} to {name}: rewritten"
                    );
                    if name == "plain" {
                        assert_eq!(gh.flags, 0, "{what} {gso:?}: completed by the switch");
                    } else {
                        assert_eq!(gh.flags, F_NEEDS_CSUM, "{what} {gso:?} to {name}: partial");
                    }
                }
                if name == "whole" {
                    assert_eq!(got.len(), 1, "{what} {gso:?}: whole to `whole`");
                }
            }
        }
    }
    assert_eq!(counters(&b.d, "tx").total_drops(), 0);
}

/// A switch with senders on both sides of a tag: `ttx` on a trunk and `atx` on an access
/// port of VLAN 10, both with every offload; access receivers `whole` (every offload),
/// `csum` (checksums only) and `plain` (none), and a trunk receiver `trunk` (checksums, TSO).
struct TagBench {
    _dir: TestDir,
    d: Daemon,
    ttx: TestPort,
    atx: TestPort,
    whole: TestPort,
    csum: TestPort,
    plain: TestPort,
    trunk: TestPort,
}

fn tag_bench(name: &str) -> TagBench {
    let dir = TestDir::new(name);
    let d = start_switch(
        &dir.path,
        vec![
            port(&dir.path, "ttx", "trunk", None, Some("10")),
            access(&dir.path, "atx", 10),
            access(&dir.path, "whole", 10),
            access(&dir.path, "csum", 10),
            access(&dir.path, "plain", 10),
            port(&dir.path, "trunk", "trunk", None, Some("10")),
        ],
        |_| {},
    );
    TagBench {
        ttx: frontend(&dir, "ttx", ALL_OFFLOADS),
        atx: frontend(&dir, "atx", ALL_OFFLOADS),
        whole: frontend(
            &dir,
            "whole",
            GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN | GUEST_USO4 | GUEST_USO6,
        ),
        csum: frontend(&dir, "csum", GUEST_CSUM),
        plain: frontend(&dir, "plain", 0),
        trunk: frontend(&dir, "trunk", GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6),
        _dir: dir,
        d,
    }
}

#[test]
fn a_popped_tag_moves_csum_start_and_hdr_len_back_by_4_and_checksums_stay_right() {
    let mut b = tag_bench("offl-pop");
    for ipv6 in [false, true] {
        // A tagged super-frame from the trunk.
        let data = payload(9000, 16 + ipv6 as u8);
        let (h, f) = offloaded(
            ip_frame(mac(NOBODY), mac(1), ipv6, L4::Tcp, Some(10), &data),
            Some(1448),
        );
        assert_eq!(h.csum_start, if ipv6 { 58 } else { 38 }, "behind the tag");
        b.ttx.send_with_header(&header_bytes(&h), &f).unwrap();

        let got = b.whole.recv(T).unwrap().expect("the super-frame arrives");
        assert_eq!(
            got,
            strip_tag(&f),
            "ipv6 {ipv6}: untagged, otherwise as sent"
        );
        let gh = NetHdr::parse(b.whole.last_rx_header()).unwrap();
        assert_eq!(
            (
                gh.flags,
                gh.csum_start,
                gh.csum_offset,
                gh.hdr_len,
                gh.gso_size
            ),
            (F_NEEDS_CSUM, h.csum_start - 4, 16, h.hdr_len - 4, 1448),
            "ipv6 {ipv6}: offsets back by the tag's 4 bytes"
        );
        assert_eq!(
            checked_payload(&completed(&gh, &got)),
            data,
            "ipv6 {ipv6}: the receiver's completed checksum is right"
        );

        // Segments with partial checksums at the moved offset, completed right.
        let segs = recv_payload(&mut b.csum, data.len());
        assert_eq!(segs.len(), 7);
        assert_eq!(joined(&segs), data);
        assert!(segs.iter().all(|(sh, sf)| tag_of(sf).is_none()
            && (sh.flags, sh.csum_start, sh.csum_offset) == (F_NEEDS_CSUM, h.csum_start - 4, 16)));
        let segs = recv_payload(&mut b.plain, data.len());
        assert_eq!(joined(&segs), data);
        assert!(segs
            .iter()
            .all(|(sh, sf)| tag_of(sf).is_none() && sh.flags == 0));
        // Trunk to trunk: the tag stays, and the offsets with it.
        let got = b.trunk.recv(T).unwrap().expect("the super-frame arrives");
        assert_eq!(got, f);
        let th = NetHdr::parse(b.trunk.last_rx_header()).unwrap();
        assert_eq!((th.csum_start, th.hdr_len), (h.csum_start, h.hdr_len));
        assert!(b.atx.recv(T).unwrap().is_some(), "flooded to `atx` too");

        // A tagged frame with a partial checksum alone (TCP, and UDP).
        for l4 in [L4::Tcp, L4::Udp] {
            let data = payload(500, 18);
            let full = ip_frame(mac(NOBODY), mac(1), ipv6, l4, Some(10), &data);
            let (h, f) = offloaded(full.clone(), None);
            b.ttx.send_with_header(&header_bytes(&h), &f).unwrap();
            for (name, p) in [("whole", &mut b.whole), ("csum", &mut b.csum)] {
                let got = p.recv(T).unwrap().expect("arrives");
                assert_eq!(got, strip_tag(&f), "{name}: untagged, still partial");
                let ph = NetHdr::parse(p.last_rx_header()).unwrap();
                assert_eq!(
                    (ph.flags, ph.csum_start, ph.csum_offset),
                    (F_NEEDS_CSUM, h.csum_start - 4, h.csum_offset),
                    "ipv6 {ipv6} {l4:?} to {name}: csum_start back by 4"
                );
                assert_eq!(
                    completed(&ph, &got),
                    strip_tag(&full),
                    "{name}: completes right"
                );
            }
            let got = b.plain.recv(T).unwrap().expect("arrives");
            assert_eq!(
                got,
                strip_tag(&full),
                "completed by the switch after the pop"
            );
            assert_eq!(b.trunk.recv(T).unwrap(), Some(f.clone()));
            assert!(b.atx.recv(T).unwrap().is_some(), "flooded to `atx` too");
        }
    }
    assert_eq!(counters(&b.d, "ttx").total_drops(), 0);
}

#[test]
fn a_pushed_tag_moves_csum_start_and_hdr_len_on_by_4_and_checksums_stay_right() {
    let mut b = tag_bench("offl-push");
    for ipv6 in [false, true] {
        let data = payload(9000, 19 + ipv6 as u8);
        let (h, f) = offloaded(
            ip_frame(mac(NOBODY), mac(2), ipv6, L4::Tcp, None, &data),
            Some(1448),
        );
        b.atx.send_with_header(&header_bytes(&h), &f).unwrap();
        // The trunk takes TSO4 and TSO6: whole, tagged, offsets on by 4.
        let got = b.trunk.recv(T).unwrap().expect("the super-frame arrives");
        assert_eq!(tag_of(&got), Some((10, 0)));
        assert_eq!(strip_tag(&got), f);
        let th = NetHdr::parse(b.trunk.last_rx_header()).unwrap();
        assert_eq!(
            (th.flags, th.csum_start, th.csum_offset, th.hdr_len),
            (F_NEEDS_CSUM, h.csum_start + 4, 16, h.hdr_len + 4)
        );
        assert_eq!(checked_payload(&completed(&th, &got)), data, "ipv6 {ipv6}");
        for p in [&mut b.whole, &mut b.csum, &mut b.plain, &mut b.ttx] {
            assert_eq!(joined(&recv_payload(p, data.len())), data);
        }

        for l4 in [L4::Tcp, L4::Udp] {
            let data = payload(500, 21);
            let full = ip_frame(mac(NOBODY), mac(2), ipv6, l4, None, &data);
            let (h, f) = offloaded(full.clone(), None);
            b.atx.send_with_header(&header_bytes(&h), &f).unwrap();
            let got = b.trunk.recv(T).unwrap().expect("arrives");
            let th = NetHdr::parse(b.trunk.last_rx_header()).unwrap();
            assert_eq!(
                (th.flags, th.csum_start, th.csum_offset),
                (F_NEEDS_CSUM, h.csum_start + 4, h.csum_offset),
                "ipv6 {ipv6} {l4:?}"
            );
            let done = completed(&th, &got);
            assert_eq!(tag_of(&done), Some((10, 0)));
            assert_eq!(
                strip_tag(&done),
                full,
                "ipv6 {ipv6} {l4:?}: completes right"
            );
            for p in [&mut b.whole, &mut b.csum, &mut b.plain, &mut b.ttx] {
                assert_eq!(joined(&recv_payload(p, data.len())), data);
            }
        }
    }
    assert_eq!(counters(&b.d, "atx").total_drops(), 0);
}
