//! Port security: a guest whose port allows one MAC and one IP sends as itself and reaches
//! its neighbour; from another MAC or IP, with an ARP reply or a neighbour advertisement
//! claiming another guest's address, or with a DHCP server reply, it reaches nobody, the
//! spoofed source is never learned, and its port counts each refusal. Its neighbour, whose
//! port has no such settings, is held to nothing, and keeps its traffic.

use etherparse::PacketBuilder;
use patchbay_switch::wire::EthernetAddress;
use patchbay_tests::frames::{mac, BROADCAST};
use patchbay_tests::switch::{
    access, connect, drops, forwards, nothing, send_done, start_switch, workspace_bin, TestDir,
};

const A_IP: [u8; 4] = [10, 0, 0, 1];
const B_IP: [u8; 4] = [10, 0, 0, 2];

fn udp(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, [10, 0, 0, 255], 64)
        .udp(sport, dport)
        .write(&mut f, &[0x42; 32])
        .unwrap();
    f
}

/// What `flowctl show port` says of a port's security.
fn security(d: &patchbay_switch::daemon::Daemon, port: &str) -> Option<String> {
    d.switch.port_by_name(port).unwrap().info().security
}

/// Port a's settings in these tests, as `security` shows them.
const A_SECURITY: &str = "macs 02:00:00:00:00:01; ips 10.0.0.1/32; no DHCP server";

fn arp_reply(sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = tha.to_vec();
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa);
    f.resize(60, 0);
    f
}

#[test]
fn a_port_sends_only_as_the_addresses_it_is_allowed() {
    let dir = TestDir::new("port-security");
    let mut guarded = access(&dir.path, "a", 10);
    guarded.allowed_macs = vec!["02:00:00:00:00:01".into()];
    guarded.allowed_ips = vec!["10.0.0.1/32".into()];
    let d = start_switch(&dir.path, vec![guarded, access(&dir.path, "b", 10)], |_| {});
    let mut a = connect(&dir, "a");
    let mut b = connect(&dir, "b");
    let spoofed = |reason| drops(&d, "a", reason);
    assert_eq!(security(&d, "a").as_deref(), Some(A_SECURITY));
    assert_eq!(security(&d, "b"), None);

    // As itself, a reaches b, and b reaches a.
    forwards(&mut a, &mut b, &udp(mac(1), BROADCAST, A_IP, 1000, 53));
    forwards(&mut a, &mut b, &arp_reply(mac(1), A_IP, mac(2), B_IP));
    forwards(&mut b, &mut a, &udp(mac(2), mac(1), B_IP, 53, 1000));
    assert_eq!(spoofed("spoofed"), 0);

    // Each of these is refused and counted, and reaches nobody.
    let attacks = [
        ("another source MAC", udp(mac(9), BROADCAST, A_IP, 1000, 53)),
        ("b's MAC", udp(mac(2), BROADCAST, A_IP, 1000, 53)),
        ("another source IP", udp(mac(1), BROADCAST, B_IP, 1000, 53)),
        (
            "an ARP reply claiming b's address",
            arp_reply(mac(1), B_IP, mac(2), B_IP),
        ),
        ("a DHCP server reply", udp(mac(1), BROADCAST, A_IP, 67, 68)),
    ];
    for (i, (what, f)) in attacks.iter().enumerate() {
        send_done(&mut a, f);
        assert!(nothing(&mut b), "{what} reached b");
        assert_eq!(spoofed("spoofed"), i as u64 + 1, "{what} counted");
    }

    // The spoofed sources were never learned: b's address is still behind b, and the
    // made-up one behind nobody.
    let now = d.switch.fabric().mac_table.now();
    let table = &d.switch.fabric().mac_table;
    let b_port = d.switch.port_by_name("b").unwrap().id;
    assert_eq!(table.lookup(10, EthernetAddress(mac(2)), now), Some(b_port));
    assert_eq!(table.lookup(10, EthernetAddress(mac(9)), now), None);
    // And the neighbour's traffic still flows both ways.
    forwards(&mut b, &mut a, &udp(mac(2), mac(1), B_IP, 53, 1001));
    forwards(&mut a, &mut b, &udp(mac(1), mac(2), A_IP, 1001, 53));
}

#[test]
fn bad_port_security_settings_are_refused_by_field() {
    let dir = TestDir::new("port-security-config");
    let mut p = access(&dir.path, "a", 10);
    p.allowed_ips = vec!["10.0.0.300".into()];
    let e = patchbay_switch::port::Port::new(1, p)
        .err()
        .expect("refused");
    assert_eq!(e.field, "allowed_ips");
    assert!(e.message.contains("10.0.0.300"), "{e}");
    let mut p = access(&dir.path, "a", 10);
    p.allowed_macs = vec!["ff:ff:ff:ff:ff:ff".into()];
    let e = patchbay_switch::port::Port::new(1, p)
        .err()
        .expect("refused");
    assert_eq!(e.field, "allowed_macs");
}

/// `flowctl set-port-security` on a running port: from then on it is held to its addresses
/// (what it learned before is forgotten); with no settings it is free again.
#[test]
fn flowctl_sets_and_clears_a_running_ports_security() {
    let dir = TestDir::new("port-security-flowctl");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 10), access(&dir.path, "b", 10)],
        |_| {},
    );
    let mut a = connect(&dir, "a");
    let mut b = connect(&dir, "b");
    let flowctl = |args: &[&str]| {
        let out = std::process::Command::new(workspace_bin("flowctl"))
            .arg("--socket")
            .arg(&d.control_socket)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let spoof = udp(mac(9), BROADCAST, B_IP, 1000, 53);
    // Unguarded, a may send as anyone: the made-up source is learned behind it.
    forwards(&mut a, &mut b, &spoof);
    let table = &d.switch.fabric().mac_table;
    let a_port = d.switch.port_by_name("a").unwrap().id;
    assert_eq!(
        table.lookup(10, EthernetAddress(mac(9)), table.now()),
        Some(a_port)
    );

    let (ok, err) = flowctl(&[
        "set-port-security",
        "a",
        "allowed-macs=02:00:00:00:00:01",
        "allowed-ips=10.0.0.1/32",
    ]);
    assert!(ok, "{err}");
    assert_eq!(security(&d, "a").as_deref(), Some(A_SECURITY));
    assert_eq!(
        table.lookup(10, EthernetAddress(mac(9)), table.now()),
        None,
        "what a learned before is forgotten"
    );
    send_done(&mut a, &spoof);
    assert!(nothing(&mut b), "the spoofed frame reached b");
    assert_eq!(drops(&d, "a", "spoofed"), 1);
    forwards(&mut a, &mut b, &udp(mac(1), BROADCAST, A_IP, 1000, 53));

    // Bad settings are refused by name and change nothing.
    let (ok, err) = flowctl(&["set-port-security", "a", "allowed-ips=10.0.0.300"]);
    assert!(!ok && err.contains("allowed_ips"), "{err}");
    let (ok, err) = flowctl(&[
        "set-port-security",
        "a",
        "allowed-macs=02:00:00:00:00:01",
        "vlan=3",
    ]);
    assert!(!ok && err.contains("allowed-macs=LIST"), "{err}");
    send_done(&mut a, &spoof);
    assert!(nothing(&mut b), "still held to its addresses");
    assert_eq!(drops(&d, "a", "spoofed"), 2);

    // No settings: checks off.
    let (ok, err) = flowctl(&["set-port-security", "a"]);
    assert!(ok, "{err}");
    assert_eq!(security(&d, "a"), None);
    forwards(&mut a, &mut b, &spoof);
    let (ok, err) = flowctl(&[
        "set-port-security",
        "nope",
        "allowed-macs=02:00:00:00:00:01",
    ]);
    assert!(!ok && err.contains("nope"), "{err}");
}
