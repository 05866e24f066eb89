//! Two switches, each with a VXLAN tunnel port, on the loopback addresses 127.0.0.1 and
//! 127.0.0.2: guests (test frontends) on VLAN 10 reach each other across VNI 42; a VLAN that
//! is not mapped stays local; remote MACs are learned; malformed VXLAN packets are dropped and
//! counted by reason while the switch keeps forwarding.
//! (The kernel-interop and two-namespace tests are in vxlan_netns.rs.)

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use patchbay_overlay::vtep::{UnknownVtepPolicy, VniConfig, VtepConfig};
use patchbay_switch::daemon::Daemon;
use patchbay_tests::frames::*;
use patchbay_tests::frontend::*;
use patchbay_tests::switch::{access, start_switch, TestDir};

const T: Duration = Duration::from_secs(5);
const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A free UDP port for this test's VTEPs (both sides use the same one, as VXLAN does).
fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

fn vtep(local: Ipv4Addr, remote: Ipv4Addr, port: u16, policy: UnknownVtepPolicy) -> VtepConfig {
    VtepConfig {
        port,
        unknown_vtep: policy,
        vnis: vec![VniConfig {
            vni: 42,
            vlan: 10,
            remotes: vec![remote],
        }],
        ..VtepConfig::new(local)
    }
}

fn host(
    name: &str,
    local: Ipv4Addr,
    remote: Ipv4Addr,
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
    let c = Ipv4Addr::new(127, 0, 0, 3);
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
