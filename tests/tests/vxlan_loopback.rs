//! Two switches, each with a VXLAN tunnel port, on the loopback addresses 127.0.0.1 and
//! 127.0.0.2: guests (test frontends) on VLAN 10 reach each other across VNI 42; a VLAN that
//! is not mapped stays local; remote MACs are learned; malformed VXLAN packets are dropped and
//! counted by reason while the switch keeps forwarding; a VNI's ARP/ND proxy answers for
//! guests behind the remote VTEP, and only for those.
//! (The kernel-interop and two-namespace tests are in vxlan_netns.rs.)

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use patchbay_overlay::vtep::{UnknownVtepPolicy, VniConfig, VtepConfig};
use patchbay_switch::daemon::Daemon;
use patchbay_switch::wire::EthernetAddress;
use patchbay_tests::frames::*;
use patchbay_tests::frontend::*;
use patchbay_tests::switch::{access, start_switch, TestDir};

const T: Duration = Duration::from_secs(5);
const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A free UDP port for this test's VTEPs (both sides use the same one, as VXLAN does).
fn free_port() -> u16 {
    patchbay_tests::switch::vxlan_test_port()
}

fn vtep(local: IpAddr, remote: IpAddr, port: u16, policy: UnknownVtepPolicy) -> VtepConfig {
    VtepConfig {
        port,
        unknown_vtep: policy,
        vnis: vec![VniConfig {
            vni: 42,
            vlan: 10,
            remotes: vec![remote],
            proxy: false,
        }],
        ..VtepConfig::new(local)
    }
}

fn host(
    name: &str,
    local: IpAddr,
    remote: IpAddr,
    port: u16,
    policy: UnknownVtepPolicy,
) -> (TestDir, Daemon, TestPort, TestPort) {
    let dir = TestDir::new(name);
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "vm", 10), access(&dir.path, "other", 20)],
        |c| {
            c.vxlan = Some(vtep(local, remote, port, policy));
            c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        },
    );
    let vm = TestPort::connect(FrontendConfig::new(dir.join("vm.sock"))).unwrap();
    let other = TestPort::connect(FrontendConfig::new(dir.join("other.sock"))).unwrap();
    (dir, d, vm, other)
}

fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn promtool_check(body: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return patchbay_tests::guest::skip_or_fail(
            "promtool check (vxlan)",
            "promtool not installed",
        );
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn guests_on_two_switches_share_a_vni() {
    let port = free_port();
    let (_da, a, mut vm_a, mut other_a) = host("vx-a", A, B, port, UnknownVtepPolicy::Drop);
    let (_db, b, mut vm_b, mut other_b) = host("vx-b", B, A, port, UnknownVtepPolicy::Drop);

    // Broadcast: head-end replicated to B, flooded to B's VLAN 10 port only.
    let hello = frame(BROADCAST, mac(1), 1, 100);
    vm_a.send(&hello).unwrap();
    assert_eq!(
        vm_b.recv(T).unwrap(),
        Some(hello.clone()),
        "crossed the tunnel"
    );
    // Unicast reply: B learned mac(1) behind 127.0.0.1 from the decapsulated frame.
    let reply = frame(mac(1), mac(2), 2, 1000);
    vm_b.send(&reply).unwrap();
    assert_eq!(vm_a.recv(T).unwrap(), Some(reply), "came back by unicast");
    let tb = b.switch.tunnel().unwrap();
    assert_eq!(tb.vtep.lookup(42, mac(1), tb.vtep.now()), Some(A));
    let ta = a.switch.tunnel().unwrap();
    assert_eq!(ta.vtep.lookup(42, mac(2), ta.vtep.now()), Some(B));

    // Many frames of many sizes, both ways, in order.
    for n in 0..200u32 {
        let f = frame(mac(2), mac(1), 100 + n, 60 + (n as usize * 7) % 1400);
        vm_a.send(&f).unwrap();
        assert_eq!(vm_b.recv(T).unwrap(), Some(f));
    }

    // VLAN 20 is not mapped to a VNI: it stays on its switch.
    other_a.send(&frame(BROADCAST, mac(5), 3, 64)).unwrap();
    assert!(other_a.wait_tx_completion(T).unwrap());
    // An inner frame larger than the underlay allows (1500 - 36) is dropped, not fragmented.
    vm_a.send(&frame(BROADCAST, mac(1), 4, 1500)).unwrap();
    assert!(vm_a.wait_tx_completion(T).unwrap());
    let sentinel = frame(BROADCAST, mac(1), 5, 64);
    vm_a.send(&sentinel).unwrap();
    assert_eq!(
        vm_b.recv(T).unwrap(),
        Some(sentinel),
        "the next frame after the drops"
    );
    assert_eq!(
        other_b.recv(Duration::ZERO).unwrap(),
        None,
        "nothing from VLAN 20 crossed"
    );
    // A counts a frame after sendmmsg returns, which may be after B delivered it; A's TX chain
    // comes back only once A is done with the frame, counters included.
    assert!(vm_a.wait_tx_completion(T).unwrap());
    let snap = ta.vtep.snapshot();
    assert_eq!(snap.drop_count(Some(42), "too-big"), 1);
    let vni = snap.vnis.iter().find(|v| v.vni == 42).unwrap();
    assert_eq!(vni.tx_packets, 202, "hello + 200 + sentinel");
    let remote = snap.remotes.iter().find(|r| r.ip == B).unwrap();
    assert_eq!(remote.tx_packets, 202);
    assert_eq!(remote.rx_packets, 1);

    // The tunnel's metrics: per VNI, per remote VTEP, drops by reason; valid for promtool.
    let body = scrape(a.metrics_addr.unwrap());
    for line in [
        "patchbay_vxlan_vni_tx_packets_total{vni=\"42\"} 202",
        "patchbay_vxlan_remote_tx_packets_total{remote=\"127.0.0.2\"} 202",
        "patchbay_vxlan_remote_rx_packets_total{remote=\"127.0.0.2\"} 1",
        "patchbay_vxlan_drops_total{reason=\"too-big\",vni=\"42\"} 1",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "metrics have `{line}`:\n{body}"
        );
    }
    promtool_check(&body);
    a.shutdown();
    b.shutdown();
}

#[test]
fn malformed_vxlan_packets_are_dropped_and_counted() {
    let port = free_port();
    let (_d, sw, mut vm, _other) = host("vx-bad", A, B, port, UnknownVtepPolicy::Drop);
    let tunnel = sw.switch.tunnel().unwrap();
    let inner = frame(BROADCAST, mac(9), 1, 64);
    let packet = |flags: u8, reserved: u8, vni: u32, inner: &[u8]| {
        let mut p = vec![flags, reserved, 0, 0];
        p.extend_from_slice(&(vni << 8).to_be_bytes());
        p.extend_from_slice(inner);
        p
    };
    // Sent from 127.0.0.2 (the configured remote) unless said otherwise.
    let from_b = UdpSocket::bind((B, 0)).unwrap();
    let to = (A, port);
    let cases: Vec<(&str, Option<u32>, Vec<u8>)> = vec![
        ("truncated", None, vec![0x08, 0, 0]),
        ("no-vni-flag", None, packet(0x00, 0, 42, &inner)),
        ("reserved-bits", None, packet(0x08, 1, 42, &inner)),
        ("inner-runt", None, packet(0x08, 0, 42, &inner[..10])),
        ("unknown-vni", Some(7), packet(0x08, 0, 7, &inner)),
    ];
    for (label, _, bytes) in &cases {
        from_b.send_to(bytes, to).unwrap();
        let _ = label;
    }
    // From a VTEP not in the flood list, with policy drop.
    let stranger = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 3), 0)).unwrap();
    stranger.send_to(&packet(0x08, 0, 42, &inner), to).unwrap();
    eventually("all drops counted", || {
        let s = tunnel.vtep.snapshot();
        ["truncated", "no-vni-flag", "reserved-bits", "inner-runt"]
            .iter()
            .all(|l| s.drop_count(None, l) == 1)
            && s.drop_count(None, "unknown-vni") + s.drop_count(Some(7), "unknown-vni") == 1
            && s.drop_count(Some(42), "unknown-vtep") == 1
    });
    assert_eq!(
        vm.recv(Duration::ZERO).unwrap(),
        None,
        "none of them reached the guest"
    );
    // A good packet still goes through.
    from_b.send_to(&packet(0x08, 0, 42, &inner), to).unwrap();
    assert_eq!(vm.recv(T).unwrap(), Some(inner));
    sw.shutdown();
}

#[test]
fn unknown_vteps_are_learned_when_the_policy_allows() {
    let port = free_port();
    let (_d, sw, mut vm, _other) = host("vx-learn", A, B, port, UnknownVtepPolicy::Learn);
    let tunnel = sw.switch.tunnel().unwrap();
    let c = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let stranger = UdpSocket::bind((c, 0)).unwrap();
    let inner = frame(BROADCAST, mac(7), 1, 64);
    let mut p = vec![0x08, 0, 0, 0];
    p.extend_from_slice(&(42u32 << 8).to_be_bytes());
    p.extend_from_slice(&inner);
    stranger.send_to(&p, (A, port)).unwrap();
    assert_eq!(vm.recv(T).unwrap(), Some(inner));
    assert_eq!(
        tunnel.vtep.lookup(42, mac(7), tunnel.vtep.now()),
        Some(c),
        "mac(7) learned behind 127.0.0.3"
    );
    sw.shutdown();
}

#[test]
fn flows_choose_the_vni_with_set_tunnel_and_match_tun_id() {
    use patchbay_switch::control::flows::{add_flows, FlowLine};
    let port = free_port();
    let (_da, a, _vm_a, mut other_a) = host("vx-flow-a", A, B, port, UnknownVtepPolicy::Drop);
    let (_db, b, mut vm_b, _other_b) = host("vx-flow-b", B, A, port, UnknownVtepPolicy::Drop);
    let line = |text: &str| {
        vec![FlowLine {
            line: 0,
            text: text.to_string(),
        }]
    };
    // VLAN 20 is not mapped on A, but a flow sends its frames into VNI 42 anyway.
    add_flows(
        &a.switch,
        &line("priority=100,in_port=other actions=set_tunnel:42,output:vxlan"),
    )
    .unwrap();
    // B counts what arrives through VNI 42 from A before switching it normally.
    add_flows(
        &b.switch,
        &line("priority=100,tun_id=42,tun_src=127.0.0.1 actions=normal"),
    )
    .unwrap();
    let f = frame(BROADCAST, mac(5), 1, 100);
    other_a.send(&f).unwrap();
    assert_eq!(
        vm_b.recv(T).unwrap(),
        Some(f),
        "VLAN 20 on A reached VLAN 10 on B via VNI 42"
    );
    let dump = patchbay_switch::control::flows::dump_flows(&b.switch, None).unwrap();
    assert_eq!(dump[0].packets, 1, "B's tun_id flow matched: {dump:?}");
    a.shutdown();
    b.shutdown();
}

/// A VXLAN packet (flags: I) carrying `inner` in `vni`.
fn vxlan_packet(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0];
    p.extend_from_slice(&(vni << 8).to_be_bytes());
    p.extend_from_slice(inner);
    p
}

const C: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// A received frame in a few words, for assertions that print readably on failure.
fn describe(f: Option<Vec<u8>>) -> Option<String> {
    f.map(|f| {
        let seq = f
            .get(14..18)
            .map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]));
        format!("src {:02x?} seq {seq} len {}", &f[6..12], f.len())
    })
}

/// A switch on 127.0.0.1 with the given tunnel configuration, metrics on, its switch settings
/// adjusted by `settings`, and one test frontend per access port in `ports` (name, VLAN).
fn host_with(
    name: &str,
    vxlan: VtepConfig,
    settings: impl FnOnce(&mut patchbay_switch::switch::Settings),
    ports: &[(&str, u16)],
) -> (TestDir, Daemon, Vec<TestPort>) {
    let dir = TestDir::new(name);
    let d = start_switch(
        &dir.path,
        ports
            .iter()
            .map(|(p, vlan)| access(&dir.path, p, *vlan))
            .collect(),
        |c| {
            c.vxlan = Some(vxlan);
            c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
            settings(&mut c.settings);
        },
    );
    let frontends = ports
        .iter()
        .map(|(p, _)| patchbay_tests::switch::connect(&dir, p))
        .collect();
    (dir, d, frontends)
}

/// VNI 42 <-> VLAN 10 with 127.0.0.2 (B) in its flood list; everything else as defaulted.
fn vni42_from_b(port: u16) -> VtepConfig {
    VtepConfig {
        port,
        vnis: vec![VniConfig {
            vni: 42,
            vlan: 10,
            remotes: vec![B],
            proxy: false,
        }],
        ..VtepConfig::new(A)
    }
}

/// Sends `sentinel` into VNI 42 from the configured remote B and checks that it is the first
/// and only frame `vm` receives: packets reach the tunnel's one receive thread in the order
/// they were sent on loopback, so anything sent earlier was dealt with before it.
fn only_the_sentinel_arrives(from_b: &UdpSocket, port: u16, vm: &mut TestPort, seq: u32) {
    let sentinel = frame(BROADCAST, mac(0x50), seq, 64);
    from_b
        .send_to(&vxlan_packet(42, &sentinel), (A, port))
        .unwrap();
    assert_eq!(
        describe(vm.recv(T).unwrap()),
        describe(Some(sentinel)),
        "the sentinel is the first frame to arrive"
    );
    assert_eq!(
        describe(vm.recv(Duration::ZERO).unwrap()),
        None,
        "and nothing after it"
    );
}

#[test]
fn packets_from_an_unconfigured_vtep_are_dropped_by_default() {
    let port = free_port();
    // unknown_vtep is not set: the default must be the safe one.
    let (_d, sw, mut f) = host_with("vx-default", vni42_from_b(port), |_| {}, &[("vm", 10)]);
    let tunnel = sw.switch.tunnel().unwrap();
    let stranger = UdpSocket::bind((C, 0)).unwrap();
    let from_b = UdpSocket::bind((B, 0)).unwrap();
    let injected = frame(BROADCAST, mac(7), 1, 64);
    stranger
        .send_to(&vxlan_packet(42, &injected), (A, port))
        .unwrap();
    only_the_sentinel_arrives(&from_b, port, &mut f[0], 2);
    let snap = tunnel.vtep.snapshot();
    assert_eq!(snap.drop_count(Some(42), "unknown-vtep"), 1);
    assert_eq!(
        tunnel.vtep.lookup(42, mac(7), tunnel.vtep.now()),
        None,
        "nothing learned behind the stranger"
    );
    let table = sw.switch.mac_table();
    assert_eq!(
        table.lookup(10, EthernetAddress(mac(7)), table.now()),
        None,
        "the switch did not learn the stranger's MAC either"
    );
    let body = scrape(sw.metrics_addr.unwrap());
    let line = "patchbay_vxlan_drops_total{reason=\"unknown-vtep\",vni=\"42\"} 1";
    assert!(body.lines().any(|l| l == line), "metrics have `{line}`");
    sw.shutdown();
}

#[test]
fn a_vtep_configured_for_another_vni_cannot_inject_into_this_one() {
    let port = free_port();
    let mut cfg = vni42_from_b(port);
    cfg.vnis.push(VniConfig {
        vni: 43,
        vlan: 20,
        remotes: vec![C],
        proxy: false,
    });
    let (_d, sw, mut f) = host_with("vx-cross-vni", cfg, |_| {}, &[("vm", 10), ("other", 20)]);
    let tunnel = sw.switch.tunnel().unwrap();
    let from_c = UdpSocket::bind((C, 0)).unwrap();
    let from_b = UdpSocket::bind((B, 0)).unwrap();
    // C is trusted for VNI 43 only.
    let injected = frame(BROADCAST, mac(7), 1, 64);
    from_c
        .send_to(&vxlan_packet(42, &injected), (A, port))
        .unwrap();
    only_the_sentinel_arrives(&from_b, port, &mut f[0], 2);
    assert_eq!(
        tunnel.vtep.snapshot().drop_count(Some(42), "unknown-vtep"),
        1
    );
    assert_eq!(tunnel.vtep.lookup(42, mac(7), tunnel.vtep.now()), None);
    // ... where it is accepted.
    let own = frame(BROADCAST, mac(8), 3, 64);
    from_c.send_to(&vxlan_packet(43, &own), (A, port)).unwrap();
    assert_eq!(f[1].recv(T).unwrap(), Some(own), "C reaches VNI 43");
    assert_eq!(f[0].recv(Duration::ZERO).unwrap(), None);
    sw.shutdown();
}

#[test]
fn a_tunnel_packet_cannot_claim_a_mac_learned_on_a_local_port() {
    use patchbay_tests::switch::send_done;
    let port = free_port();
    let (_d, sw, mut f) = host_with(
        "vx-claim",
        vni42_from_b(port),
        |_| {},
        &[("vm", 10), ("vm2", 10)],
    );
    let tunnel = sw.switch.tunnel().unwrap();
    let vm_id = sw.switch.port_by_name("vm").unwrap().id;
    let (vm, vm2) = match &mut f[..] {
        [a, b] => (a, b),
        _ => unreachable!(),
    };
    // The switch learns mac(1) on vm.
    send_done(vm, &frame(BROADCAST, mac(1), 1, 64));
    assert!(vm2.recv(T).unwrap().is_some());
    let table = sw.switch.mac_table();
    assert_eq!(
        table.lookup(10, EthernetAddress(mac(1)), table.now()),
        Some(vm_id)
    );
    // A configured remote sends a frame claiming mac(1).
    let from_b = UdpSocket::bind((B, 0)).unwrap();
    let claim = frame(BROADCAST, mac(1), 2, 64);
    from_b
        .send_to(&vxlan_packet(42, &claim), (A, port))
        .unwrap();
    only_the_sentinel_arrives(&from_b, port, vm2, 3);
    assert_eq!(
        describe(vm.recv(T).unwrap()),
        describe(Some(frame(BROADCAST, mac(0x50), 3, 64))),
        "vm got the sentinel first"
    );
    assert_eq!(
        describe(vm.recv(Duration::ZERO).unwrap()),
        None,
        "the claim reached no guest"
    );
    assert_eq!(
        tunnel
            .vtep
            .snapshot()
            .drop_count(Some(42), "local-mac-claim"),
        1
    );
    assert_eq!(
        tunnel.vtep.lookup(42, mac(1), tunnel.vtep.now()),
        None,
        "not learned behind the remote"
    );
    assert_eq!(
        table.lookup(10, EthernetAddress(mac(1)), table.now()),
        Some(vm_id),
        "still on the local port"
    );
    // vm still gets its own unicast traffic.
    let to_vm = frame(mac(1), mac(2), 4, 100);
    send_done(vm2, &to_vm);
    assert_eq!(vm.recv(T).unwrap(), Some(to_vm));
    let body = scrape(sw.metrics_addr.unwrap());
    let line = "patchbay_vxlan_drops_total{reason=\"local-mac-claim\",vni=\"42\"} 1";
    assert!(body.lines().any(|l| l == line), "metrics have `{line}`");
    sw.shutdown();
}

#[test]
fn inner_frames_over_the_switch_mtu_are_dropped_and_counted() {
    let port = free_port();
    // Frames up to 1500 + 18 bytes; the underlay (UDP on loopback) carries far more.
    let (_d, sw, mut f) = host_with(
        "vx-big",
        vni42_from_b(port),
        |s| s.mtu = 1500,
        &[("vm", 10)],
    );
    let tunnel = sw.switch.tunnel().unwrap();
    let max = sw.switch.settings().max_frame_len() as usize;
    let from_b = UdpSocket::bind((B, 0)).unwrap();
    let too_big = frame(BROADCAST, mac(2), 1, max + 1);
    from_b
        .send_to(&vxlan_packet(42, &too_big), (A, port))
        .unwrap();
    // The largest frame allowed still goes through, and is the first to arrive.
    let largest = frame(BROADCAST, mac(2), 2, max);
    from_b
        .send_to(&vxlan_packet(42, &largest), (A, port))
        .unwrap();
    let first = f[0].recv(T).unwrap();
    assert_eq!(describe(first.clone()), describe(Some(largest.clone())));
    assert_eq!(first, Some(largest));
    assert_eq!(describe(f[0].recv(Duration::ZERO).unwrap()), None);
    assert_eq!(
        tunnel.vtep.snapshot().drop_count(Some(42), "inner-too-big"),
        1
    );
    let drops = sw
        .switch
        .port_by_name("vxlan")
        .unwrap()
        .counters
        .drops(patchbay_switch::port::DropReason::TooBig);
    assert_eq!(drops, 1, "counted on the tunnel port too");
    let body = scrape(sw.metrics_addr.unwrap());
    let line = "patchbay_vxlan_drops_total{reason=\"inner-too-big\",vni=\"42\"} 1";
    assert!(body.lines().any(|l| l == line), "metrics have `{line}`");
    sw.shutdown();
}

#[test]
fn local_mac_move_allow_lets_a_remote_take_over_a_local_mac() {
    use patchbay_overlay::vtep::LocalMacMove;
    use patchbay_tests::switch::send_done;
    let port = free_port();
    let cfg = VtepConfig {
        local_mac_move: LocalMacMove::Allow,
        ..vni42_from_b(port)
    };
    let (_d, sw, mut f) = host_with("vx-move", cfg, |_| {}, &[("vm", 10), ("vm2", 10)]);
    let tunnel = sw.switch.tunnel().unwrap();
    let tunnel_id = sw.switch.port_by_name("vxlan").unwrap().id;
    let (vm, vm2) = match &mut f[..] {
        [a, b] => (a, b),
        _ => unreachable!(),
    };
    send_done(vm, &frame(BROADCAST, mac(1), 1, 64));
    assert!(vm2.recv(T).unwrap().is_some());
    // mac(1) moved to host B (a migrated guest): its frame is delivered and learned there.
    let from_b = UdpSocket::bind((B, 0)).unwrap();
    let moved = frame(BROADCAST, mac(1), 2, 64);
    from_b
        .send_to(&vxlan_packet(42, &moved), (A, port))
        .unwrap();
    assert_eq!(describe(vm2.recv(T).unwrap()), describe(Some(moved)));
    let table = sw.switch.mac_table();
    assert_eq!(
        table.lookup(10, EthernetAddress(mac(1)), table.now()),
        Some(tunnel_id)
    );
    assert_eq!(tunnel.vtep.lookup(42, mac(1), tunnel.vtep.now()), Some(B));
    assert_eq!(
        tunnel
            .vtep
            .snapshot()
            .drop_count(Some(42), "local-mac-claim"),
        0
    );
    sw.shutdown();
}

#[test]
fn the_local_mac_check_is_per_vlan() {
    use patchbay_tests::switch::send_done;
    let port = free_port();
    let (_d, sw, mut f) = host_with(
        "vx-claim-vlan",
        vni42_from_b(port),
        |_| {},
        &[("vm", 10), ("other", 20)],
    );
    let tunnel = sw.switch.tunnel().unwrap();
    // mac(1) is learned on a port of VLAN 20, which VNI 42 does not carry.
    send_done(&mut f[1], &frame(BROADCAST, mac(1), 1, 64));
    let from_b = UdpSocket::bind((B, 0)).unwrap();
    let same_address = frame(BROADCAST, mac(1), 2, 64);
    from_b
        .send_to(&vxlan_packet(42, &same_address), (A, port))
        .unwrap();
    assert_eq!(
        describe(f[0].recv(T).unwrap()),
        describe(Some(same_address))
    );
    assert_eq!(
        tunnel
            .vtep
            .snapshot()
            .drop_count(Some(42), "local-mac-claim"),
        0
    );
    sw.shutdown();
}

const IP_A: [u8; 4] = [10, 0, 0, 1];
const IP_B: [u8; 4] = [10, 0, 0, 2];

/// Host A (127.0.0.1; guests `vm` and `vm2` on VLAN 10, its VNI 42's ARP/ND proxy as
/// `proxy`) and host B (127.0.0.2; guest `vm` on VLAN 10), joined by VNI 42.
struct ProxyPair {
    dir_a: TestDir,
    _dir_b: TestDir,
    a: Daemon,
    b: Daemon,
    vm_a: TestPort,
    vm2_a: TestPort,
    vm_b: TestPort,
}

fn proxy_pair(name: &str, proxy: bool) -> ProxyPair {
    let port = free_port();
    let mut cfg = vni42_from_b(port);
    cfg.vnis[0].proxy = proxy;
    let (dir_a, a, ports) = host_with(
        &format!("{name}-a"),
        cfg,
        |_| {},
        &[("vm", 10), ("vm2", 10)],
    );
    let [vm_a, vm2_a]: [TestPort; 2] = ports.try_into().unwrap_or_else(|_| unreachable!());
    let (dir_b, b, vm_b, _other_b) =
        host(&format!("{name}-b"), B, A, port, UnknownVtepPolicy::Drop);
    ProxyPair {
        dir_a,
        _dir_b: dir_b,
        a,
        b,
        vm_a,
        vm2_a,
        vm_b,
    }
}

impl ProxyPair {
    /// B's guest announces `frame` (its address) through the tunnel; A's guests both get it,
    /// so A has learned from it by then.
    fn b_announces(&mut self, frame: &[u8]) {
        self.vm_b.send(frame).unwrap();
        assert_eq!(self.vm_a.recv(T).unwrap().as_deref(), Some(frame));
        assert_eq!(self.vm2_a.recv(T).unwrap().as_deref(), Some(frame));
    }

    /// A's guest sends a frame through the tunnel; it must be the first and only frame B's
    /// guest gets: so nothing A's guest sent before it crossed (loopback keeps the order).
    fn nothing_else_crossed(&mut self, seq: u32) {
        assert!(self.vm_a.wait_tx_completion(T).unwrap());
        let sentinel = frame(BROADCAST, mac(1), seq, 64);
        self.vm_a.send(&sentinel).unwrap();
        assert_eq!(
            describe(self.vm_b.recv(T).unwrap()),
            describe(Some(sentinel)),
            "the sentinel is the first frame to cross"
        );
        assert_eq!(describe(self.vm_b.recv(Duration::ZERO).unwrap()), None);
        assert_eq!(
            describe(self.vm2_a.recv(T).unwrap()),
            describe(Some(frame(BROADCAST, mac(1), seq, 64)))
        );
    }

    fn vni42(&self) -> patchbay_overlay::vtep::VniSnapshot {
        let snap = self.a.switch.tunnel().unwrap().vtep.snapshot();
        snap.vnis.into_iter().find(|v| v.vni == 42).unwrap()
    }
}

/// Checks that `reply` is the ARP reply B's guest would send A's guest.
fn assert_arp_reply_from_b(reply: &[u8]) {
    use etherparse::{ArpOperation, Ethernet2Slice, LinkSlice, SlicedPacket};
    let eth = Ethernet2Slice::from_slice_without_fcs(reply).unwrap();
    assert_eq!(
        (eth.destination(), eth.source()),
        (mac(1), mac(2)),
        "{reply:02x?}"
    );
    let sliced = SlicedPacket::from_ethernet(reply).unwrap();
    assert!(matches!(sliced.link, Some(LinkSlice::Ethernet2(_))));
    let arp = match sliced.net {
        Some(etherparse::NetSlice::Arp(arp)) => arp,
        other => panic!("not ARP: {other:?}"),
    };
    assert_eq!(arp.operation(), ArpOperation::REPLY);
    assert_eq!(
        (arp.sender_hw_addr(), arp.sender_protocol_addr()),
        (&mac(2)[..], &IP_B[..])
    );
    assert_eq!(
        (arp.target_hw_addr(), arp.target_protocol_addr()),
        (&mac(1)[..], &IP_A[..])
    );
}

#[test]
fn the_proxy_answers_arp_for_a_guest_behind_the_remote_vtep() {
    let mut p = proxy_pair("vx-proxy-arp", true);
    // A target nobody announced: the request crosses the tunnel, proxy or not.
    let unknown = arp(1, mac(1), IP_A, [0; 6], [10, 0, 0, 3]);
    p.vm_a.send(&unknown).unwrap();
    assert_eq!(
        p.vm_b.recv(T).unwrap(),
        Some(unknown.clone()),
        "unknown targets cross"
    );
    assert_eq!(p.vm2_a.recv(T).unwrap(), Some(unknown));
    // B's guest announces itself (gratuitous ARP): A learns 10.0.0.2 at mac(2), behind B.
    p.b_announces(&arp(1, mac(2), IP_B, [0; 6], IP_B));
    // A's guest asks for B's address: the answer comes from A, with B's MAC.
    let request = arp(1, mac(1), IP_A, [0; 6], IP_B);
    p.vm_a.send(&request).unwrap();
    let reply = p.vm_a.recv(T).unwrap().expect("an ARP reply");
    assert_arp_reply_from_b(&reply);
    assert_eq!(
        p.vm2_a.recv(T).unwrap(),
        Some(request),
        "local guests still see the broadcast"
    );
    // The request did not cross: B's guest gets the next frame, and only that.
    p.nothing_else_crossed(9);
    let vni = p.vni42();
    assert_eq!(
        (vni.proxy, vni.proxy_arp_replies, vni.proxy_nd_replies),
        (true, 1, 0)
    );
    assert_eq!(
        vni.tx_packets, 2,
        "the unknown request and the sentinel, not the answered one"
    );
    // The answer came "from the tunnel": A's switch has B's MAC there.
    let table = p.a.switch.mac_table();
    let tunnel_id = p.a.switch.port_by_name("vxlan").unwrap().id;
    assert_eq!(
        table.lookup(10, EthernetAddress(mac(2)), table.now()),
        Some(tunnel_id)
    );
    let body = scrape(p.a.metrics_addr.unwrap());
    for line in [
        "patchbay_vxlan_proxy_replies_total{protocol=\"arp\",vni=\"42\"} 1",
        "patchbay_vxlan_proxy_replies_total{protocol=\"nd\",vni=\"42\"} 0",
        "patchbay_vxlan_proxy_neighbors 1",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "metrics have `{line}`:\n{body}"
        );
    }
    promtool_check(&body);
    p.a.shutdown();
    p.b.shutdown();
}

#[test]
fn without_the_proxy_arp_requests_cross_until_it_is_turned_on() {
    let mut p = proxy_pair("vx-proxy-off", false);
    let garp = arp(1, mac(2), IP_B, [0; 6], IP_B);
    p.b_announces(&garp);
    // Off (the default): the request crosses as ever, and B's guest answers it.
    let request = arp(1, mac(1), IP_A, [0; 6], IP_B);
    p.vm_a.send(&request).unwrap();
    assert_eq!(p.vm_b.recv(T).unwrap(), Some(request.clone()), "crossed");
    assert_eq!(p.vm2_a.recv(T).unwrap(), Some(request.clone()));
    let from_b = arp(2, mac(2), IP_B, mac(1), IP_A);
    p.vm_b.send(&from_b).unwrap();
    assert_eq!(
        p.vm_a.recv(T).unwrap(),
        Some(from_b),
        "the first answer is B's own"
    );
    assert_eq!(p.vni42().proxy_arp_replies, 0);
    let tunnel = p.a.switch.tunnel().unwrap();
    assert!(
        tunnel.vtep.snapshot().neighbors.is_empty(),
        "nothing learned while off"
    );
    // Turned on at run time: A learns from B's next announcement and answers.
    let control = p.dir_a.join("control.sock");
    let out = patchbay_tests::switch::flowctl_at(&control, &["tunnel", "proxy", "42", "on"]);
    assert!(out.contains("VNI 42: ARP/ND proxy on"), "{out}");
    assert_eq!(tunnel.vtep.proxy(42), Some(true));
    p.b_announces(&garp);
    p.vm_a.send(&request).unwrap();
    assert_arp_reply_from_b(&p.vm_a.recv(T).unwrap().expect("an ARP reply"));
    assert_eq!(p.vm2_a.recv(T).unwrap(), Some(request));
    p.nothing_else_crossed(9);
    // flowctl's JSON has the setting, the counter and the known address.
    let shown: serde_json::Value = serde_json::from_str(&patchbay_tests::switch::flowctl_at(
        &control,
        &["--json", "show", "tunnel"],
    ))
    .unwrap();
    let vni = &shown["vnis"][0];
    assert_eq!(
        (vni["vni"].as_u64(), vni["proxy"].as_bool()),
        (Some(42), Some(true))
    );
    assert_eq!(vni["proxy_arp_replies"].as_u64(), Some(1));
    assert_eq!(shown["neighbors"][0]["ip"], "10.0.0.2");
    assert_eq!(shown["neighbors"][0]["mac"], "02:00:00:00:00:02");
    // And off again: the next request crosses.
    patchbay_tests::switch::flowctl_at(&control, &["tunnel", "proxy", "42", "off"]);
    let again = arp(1, mac(1), IP_A, [0; 6], IP_B);
    p.vm_a.send(&again).unwrap();
    assert_eq!(p.vm_b.recv(T).unwrap(), Some(again), "crossed again");
    p.a.shutdown();
    p.b.shutdown();
}

/// A neighbour solicitation (`solicit`) or advertisement (else, with the override flag),
/// checksummed, with a source or target link-layer address option for `lla`.
fn nd_frame(
    solicit: bool,
    eth: ([u8; 6], [u8; 6]),
    ip: (std::net::Ipv6Addr, std::net::Ipv6Addr),
    target: std::net::Ipv6Addr,
    lla: [u8; 6],
) -> Vec<u8> {
    use etherparse::{icmpv6::NeighborAdvertisementHeader, Icmpv6Type, PacketBuilder};
    let (kind, icmp) = if solicit {
        (1, Icmpv6Type::NeighborSolicitation)
    } else {
        (
            2,
            Icmpv6Type::NeighborAdvertisement(NeighborAdvertisementHeader {
                router: false,
                solicited: false,
                r#override: true,
            }),
        )
    };
    let mut payload = target.octets().to_vec();
    payload.extend_from_slice(&[kind, 1]);
    payload.extend_from_slice(&lla);
    let builder = PacketBuilder::ethernet2(eth.0, eth.1)
        .ipv6(ip.0.octets(), ip.1.octets(), 255)
        .icmpv6(icmp);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, &payload).unwrap();
    out
}

#[test]
fn the_proxy_answers_a_neighbor_solicitation_with_an_advertisement() {
    use etherparse::{icmpv6::Icmpv6PayloadSlice, Icmpv6Type, SlicedPacket, TransportSlice};
    use std::net::Ipv6Addr;
    let mut p = proxy_pair("vx-proxy-nd", true);
    let (ip_a, ip_b): (Ipv6Addr, Ipv6Addr) = (
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
    );
    // B's guest advertises its address to all nodes (unsolicited, as after DAD).
    let all_nodes = ([0x33, 0x33, 0, 0, 0, 1], "ff02::1".parse().unwrap());
    p.b_announces(&nd_frame(
        false,
        (mac(2), all_nodes.0),
        (ip_b, all_nodes.1),
        ip_b,
        mac(2),
    ));
    // A's guest solicits B's address (to its solicited-node group).
    let ns = nd_frame(
        true,
        (mac(1), [0x33, 0x33, 0xff, 0, 0, 2]),
        (ip_a, "ff02::1:ff00:2".parse().unwrap()),
        ip_b,
        mac(1),
    );
    p.vm_a.send(&ns).unwrap();
    let na = p.vm_a.recv(T).unwrap().expect("a neighbour advertisement");
    let sliced = SlicedPacket::from_ethernet(&na).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &sliced.link else {
        panic!("not Ethernet: {na:02x?}");
    };
    assert_eq!((eth.destination(), eth.source()), (mac(1), mac(2)));
    let Some(etherparse::NetSlice::Ipv6(ip)) = &sliced.net else {
        panic!("not IPv6: {na:02x?}");
    };
    let h = ip.header();
    assert_eq!((h.source_addr(), h.destination_addr()), (ip_b, ip_a));
    assert_eq!(h.hop_limit(), 255);
    let Some(TransportSlice::Icmpv6(icmp)) = &sliced.transport else {
        panic!("not ICMPv6: {na:02x?}");
    };
    assert!(
        icmp.is_checksum_valid(ip_b.octets(), ip_a.octets()),
        "ICMPv6 checksum"
    );
    let Icmpv6Type::NeighborAdvertisement(flags) = icmp.icmp_type() else {
        panic!("not an advertisement: {:?}", icmp.icmp_type());
    };
    assert!(flags.solicited && flags.r#override && !flags.router);
    let Ok(Icmpv6PayloadSlice::NeighborAdvertisement(body)) = icmp.payload_slice() else {
        panic!("no advertisement body");
    };
    assert_eq!(body.target_address(), ip_b);
    let mut tlla = vec![2, 1];
    tlla.extend_from_slice(&mac(2));
    assert_eq!(
        body.options(),
        &tlla[..],
        "target link-layer address: B's MAC"
    );
    // Local guests still see the solicitation; B's guest does not.
    assert_eq!(p.vm2_a.recv(T).unwrap(), Some(ns));
    p.nothing_else_crossed(9);
    let vni = p.vni42();
    assert_eq!((vni.proxy_arp_replies, vni.proxy_nd_replies), (0, 1));
    let body = scrape(p.a.metrics_addr.unwrap());
    let line = "patchbay_vxlan_proxy_replies_total{protocol=\"nd\",vni=\"42\"} 1";
    assert!(
        body.lines().any(|l| l == line),
        "metrics have `{line}`:\n{body}"
    );
    p.a.shutdown();
    p.b.shutdown();
}

/// What a remote's frame says is learned only as far as it can be trusted: an address bound
/// to another MAC than the frame's own source (one behind another VTEP, say) is not learned,
/// and an IPv6 address learned from a solicitation (which does not say whether its owner
/// routes) is not answered for: the questions for both cross the tunnel to their owners.
#[test]
fn the_proxy_answers_only_what_it_may_trust() {
    use std::net::Ipv6Addr;
    let mut p = proxy_pair("vx-proxy-trust", true);
    // B's guest sends an ARP request binding 10.0.0.7 to a MAC that is not its own.
    let mut spoof = arp(1, mac(7), [10, 0, 0, 7], [0; 6], IP_A);
    spoof[6..12].copy_from_slice(&mac(2));
    p.b_announces(&spoof);
    // B's guest solicits another address, saying its own with its link-layer address.
    let ip_b: Ipv6Addr = "2001:db8::2".parse().unwrap();
    let b_asks = nd_frame(
        true,
        (mac(2), [0x33, 0x33, 0xff, 0, 0, 0x99]),
        (ip_b, "ff02::1:ff00:99".parse().unwrap()),
        "2001:db8::99".parse().unwrap(),
        mac(2),
    );
    p.b_announces(&b_asks);
    let snap = p.a.switch.tunnel().unwrap().vtep.snapshot();
    let known: Vec<String> = snap.neighbors.iter().map(|n| n.ip.to_string()).collect();
    assert_eq!(
        known,
        vec!["2001:db8::2"],
        "only B's own binding was learned"
    );
    // Both questions cross the tunnel to B's guest, unanswered.
    let ask_arp = arp(1, mac(1), IP_A, [0; 6], [10, 0, 0, 7]);
    p.vm_a.send(&ask_arp).unwrap();
    assert_eq!(
        p.vm_b.recv(T).unwrap(),
        Some(ask_arp),
        "the ARP request crossed"
    );
    let ask_nd = nd_frame(
        true,
        (mac(1), [0x33, 0x33, 0xff, 0, 0, 2]),
        (
            "2001:db8::1".parse().unwrap(),
            "ff02::1:ff00:2".parse().unwrap(),
        ),
        ip_b,
        mac(1),
    );
    p.vm_a.send(&ask_nd).unwrap();
    assert_eq!(
        p.vm_b.recv(T).unwrap(),
        Some(ask_nd),
        "the solicitation crossed"
    );
    let vni = p.vni42();
    assert_eq!((vni.proxy_arp_replies, vni.proxy_nd_replies), (0, 0));
    p.a.shutdown();
    p.b.shutdown();
}
