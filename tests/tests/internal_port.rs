//! Internal ports: a tap device the switch creates, so the host's own stack joins a VLAN.
//! The switch binary runs in a namespace of the test's own with a guest port (this test's
//! frontend) on VLAN 10 and two internal ports, on VLANs 10 and 20, with addresses from
//! documentation ranges; the host's kernel answers ARP and ping through the VLAN 10 device
//! (a tap with four queues) and never sees or sends a frame of VLAN 10 through the VLAN 20
//! one.

use std::time::{Duration, Instant};

use etherparse::{Icmpv4Type, PacketBuilder, SlicedPacket};
use patchbay_tests::frames::{arp, arp_reply_for};
use patchbay_tests::frontend::{FrontendConfig, TestPort};
use patchbay_tests::guest::skip_or_fail;
use patchbay_tests::netns::{self, Netns, SwitchProc};
use patchbay_tests::switch::{send_done, TestDir};

const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x0a];
const VM_IP: [u8; 4] = [192, 0, 2, 10];
const HOST10_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x10, 0x01];
const HOST10_IP: [u8; 4] = [192, 0, 2, 1];
const HOST20_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x20, 0x01];

/// Frames arriving at `vm` until one satisfies `want` (returned) or `timeout` passes (None);
/// every frame seen is handed to `seen`.
fn wait_for(
    vm: &mut TestPort,
    timeout: Duration,
    seen: &mut Vec<Vec<u8>>,
    want: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(f) = vm.recv(Duration::from_millis(50)).expect("recv") {
            seen.push(f.clone());
            if want(&f) {
                return Some(f);
            }
        }
    }
    None
}

fn port_counter(sw: &SwitchProc, name: &str, counter: &str) -> u64 {
    sw.port(name)["counters"][counter].as_u64().unwrap_or(0)
}

fn sysfs_counter(ns: &Netns, dev: &str, counter: &str) -> u64 {
    ns.run(&format!("cat /sys/class/net/{dev}/statistics/{counter}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn internal_port_reaches_the_host_on_its_vlan_only() {
    const TEST: &str = "internal_port_reaches_the_host_on_its_vlan_only";
    if let Err(e) = netns::available() {
        skip_or_fail(TEST, &e);
        return;
    }
    let dir = TestDir::new("internal-port");
    let ns = Netns::create("pbint").unwrap();
    let d = dir.path.display();
    let sw = SwitchProc::start(
        &ns,
        &dir.path,
        "sw",
        &format!(
            "[[port]]\nname = \"vm\"\nsocket = \"{d}/vm.sock\"\nvlan = 10\n\n\
             [[port]]\nname = \"host10\"\ntype = \"internal\"\nvlan = 10\nmac = \"02:00:00:00:10:01\"\n\
             queue_pairs = 4\n\n\
             [[port]]\nname = \"h20\"\ntype = \"internal\"\ninterface = \"host20\"\nvlan = 20\nmac = \"02:00:00:00:20:01\"\n"
        ),
    );
    // The devices exist, are up, and carry the configured addresses.
    for (dev, mac) in [
        ("host10", "02:00:00:00:10:01"),
        ("host20", "02:00:00:00:20:01"),
    ] {
        assert!(ns.link_is_up(dev).unwrap(), "{dev} is up");
        assert_eq!(ns.mac(dev).unwrap(), mac);
    }
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "host10"])
        .unwrap();
    ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "host20"])
        .unwrap();
    assert_eq!(sw.port("h20")["socket"], "dev host20 (tap, 1 queue)");
    // host10 is a multiqueue tap: four queues each way, all served.
    assert_eq!(sw.port("host10")["socket"], "dev host10 (tap, 4 queues)");
    assert_eq!(sw.port("host10")["queue_pairs"], serde_json::json!([4, 4]));
    let queues = ns.run("ls /sys/class/net/host10/queues").unwrap();
    assert_eq!(
        queues
            .split_whitespace()
            .filter(|q| q.starts_with("rx-"))
            .count(),
        4,
        "{queues}"
    );

    let mut vm =
        TestPort::connect(FrontendConfig::new(dir.join("vm.sock"))).expect("frontend connects");
    let mut seen = Vec::new();

    // The host's stack answers ARP for its VLAN 10 address, from the device's MAC.
    send_done(&mut vm, &arp(1, VM_MAC, VM_IP, [0; 6], HOST10_IP));
    let reply = wait_for(&mut vm, Duration::from_secs(5), &mut seen, |f| {
        arp_reply_for(f, HOST10_IP).is_some()
    })
    .expect("an ARP reply from the host");
    assert_eq!(arp_reply_for(&reply, HOST10_IP), Some(HOST10_MAC));

    // And ping: the echo reply carries the request's identifier, sequence and payload.
    let payload: Vec<u8> = (0..56u8).collect();
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(VM_MAC, HOST10_MAC)
        .ipv4(VM_IP, HOST10_IP, 64)
        .icmpv4_echo_request(0x4242, 7)
        .write(&mut echo, &payload)
        .unwrap();
    send_done(&mut vm, &echo);
    let reply = wait_for(&mut vm, Duration::from_secs(5), &mut seen, |f| {
        SlicedPacket::from_ethernet(f).is_ok_and(|p| {
            matches!(p.transport, Some(etherparse::TransportSlice::Icmpv4(ref i))
                if matches!(i.icmp_type(), Icmpv4Type::EchoReply(e) if e.id == 0x4242 && e.seq == 7))
        })
    })
    .expect("an echo reply from the host");
    let p = SlicedPacket::from_ethernet(&reply).unwrap();
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else {
        unreachable!()
    };
    assert_eq!(icmp.payload(), &payload[..], "the echo came back intact");
    let header = icmp.header();
    assert_eq!(
        header.checksum,
        header.icmp_type.calc_checksum(icmp.payload()),
        "the reply's ICMP checksum is right"
    );

    // The host on VLAN 20 looks for neighbours (ARP requests broadcast from host20): the
    // switch takes them in on h20 and floods them in VLAN 20 only, so the guest never sees
    // a frame from host20; and nothing of VLAN 10 reaches host20.
    let h20_rx_before = port_counter(&sw, "h20", "rx_packets");
    let _ = ns.run("ping -c 2 -i 0.2 -W 1 198.51.100.10");
    netns::wait_until(
        Duration::from_secs(5),
        "the switch took host20's ARP requests",
        || Ok(port_counter(&sw, "h20", "rx_packets") > h20_rx_before),
    )
    .unwrap();
    // ARP requests for the guest from host10 still arrive (the host pings the guest).
    let _ = ns.run("ping -c 1 -W 1 192.0.2.10");
    wait_for(&mut vm, Duration::from_secs(5), &mut seen, |f| {
        f[12..14] == [0x08, 0x06] && f[20..22] == [0, 1] && f[38..42] == VM_IP
    })
    .expect("host10's ARP request for the guest");
    assert!(
        seen.iter().all(|f| f[6..12] != HOST20_MAC),
        "a frame from host20 (VLAN 20) reached the guest on VLAN 10"
    );
    assert_eq!(
        port_counter(&sw, "h20", "tx_packets"),
        0,
        "nothing was sent to h20"
    );
    assert_eq!(
        sysfs_counter(&ns, "host20", "rx_packets"),
        0,
        "host20 received nothing"
    );
    assert!(
        sysfs_counter(&ns, "host10", "rx_packets") >= 2,
        "host10 received the guest's ARP request and echo"
    );

    // Removing the port removes its device; the rest keeps forwarding.
    let v = sw.call(r#"{"version":1,"command":"del-port","name":"h20"}"#);
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        ns.ip(&["link", "show", "host20"]).is_err(),
        "host20 is gone"
    );
    send_done(&mut vm, &arp(1, VM_MAC, VM_IP, [0; 6], HOST10_IP));
    wait_for(&mut vm, Duration::from_secs(5), &mut seen, |f| {
        arp_reply_for(f, HOST10_IP).is_some()
    })
    .expect("the host still answers on VLAN 10");

    // A device name that exists already is refused, by name, and the switch goes on.
    let v = sw.call(
        r#"{"version":1,"command":"add-port","port":{"name":"again","type":"internal","interface":"host10","vlan":10}}"#,
    );
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("host10"), "{v}");

    // The switch stopped (SIGTERM, waited for): its devices go with it.
    drop(sw);
    assert!(
        ns.ip(&["link", "show", "host10"]).is_err(),
        "host10 is gone with the switch"
    );
}
