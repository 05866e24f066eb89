//! Uplinks: an existing interface as a switch port through AF_PACKET, trunking VLANs to the
//! wire. A veth pair stands in for the NIC between two "hosts" (namespaces), each with a
//! switch whose uplink is its end of the pair (a trunk of VLANs 10 and 20) and whose host
//! reaches each VLAN through an internal port. This kernel has no 802.1Q devices (no 8021q
//! module, no VLAN-filtering bridge), so the far side is a second switch rather than Linux
//! sub-interfaces; the tags still cross the kernel: it takes them off received frames
//! (VLAN offload) and the uplink puts them back from the packet's aux data. Each VLAN
//! reaches its own far port only, and TCP crosses both ways with every byte compared.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use patchbay_tests::guest::skip_or_fail;
use patchbay_tests::netns::{self, Netns, SwitchProc};
use patchbay_tests::switch::TestDir;

fn counter(ns: &Netns, dev: &str, name: &str) -> u64 {
    ns.run(&format!("cat /sys/class/net/{dev}/statistics/{name}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Random-looking bytes (a xorshift stream), so a misplaced segment cannot compare equal.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `bytes` over TCP from namespace `from` to `to_ip:port`, where a listener runs in
/// namespace `to`; returns what the listener received.
fn tcp_across(from: &str, to: &str, to_ip: &str, port: u16, bytes: &[u8]) -> Vec<u8> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let to = to.to_string();
    let addr = format!("{to_ip}:{port}");
    let listener = std::thread::spawn({
        let addr = addr.clone();
        move || {
            netns::enter(&to).expect("enter the listener's namespace");
            let l = TcpListener::bind(&addr).expect("bind");
            ready_tx.send(()).unwrap();
            let (mut s, _) = l.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read");
            got
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("listener ready");
    let from = from.to_string();
    let bytes = bytes.to_vec();
    std::thread::spawn(move || {
        netns::enter(&from).expect("enter the sender's namespace");
        let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(10))
            .expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(&bytes).expect("send");
        s.shutdown(std::net::Shutdown::Write).unwrap();
    })
    .join()
    .expect("sender");
    listener.join().expect("listener")
}

/// The "NIC": a veth pair with an end named `pbup` in each namespace, up.
fn wire(near: &Netns, far: &Netns) {
    netns::output_ok(std::process::Command::new("ip").args([
        "link",
        "add",
        "pbup",
        "netns",
        near.name(),
        "type",
        "veth",
        "peer",
        "name",
        "pbup",
        "netns",
        far.name(),
    ]))
    .unwrap();
    for ns in [near, far] {
        ns.ip(&["link", "set", "pbup", "up"]).unwrap();
    }
}

#[test]
fn uplink_trunks_each_vlan_to_the_same_vlan_across_the_wire() {
    const TEST: &str = "uplink_trunks_each_vlan_to_the_same_vlan_across_the_wire";
    if let Err(e) = netns::available() {
        skip_or_fail(TEST, &e);
        return;
    }
    let dir = TestDir::new("uplink");
    let near = Netns::create("pbup-near").unwrap();
    let far = Netns::create("pbup-far").unwrap();
    for ns in [&near, &far] {
        // No IPv6 chatter: the counters below count only what the test sends.
        ns.run("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
            .unwrap();
    }
    wire(&near, &far);
    let config = |side: &str| {
        format!(
            "[[port]]\nname = \"host10\"\ntype = \"internal\"\ninterface = \"{side}10\"\nvlan = 10\n\n\
             [[port]]\nname = \"host20\"\ntype = \"internal\"\ninterface = \"{side}20\"\nvlan = 20\n\n\
             [[port]]\nname = \"up\"\ntype = \"afpacket\"\ninterface = \"pbup\"\n\
             vlan_mode = \"trunk\"\ntrunks = \"10,20\"\n"
        )
    };
    let sw_near = SwitchProc::start(&near, &dir.path, "near", &config("near"));
    let sw_far = SwitchProc::start(&far, &dir.path, "far", &config("far"));
    for (ns, dev, addr) in [
        (&near, "near10", "192.0.2.1/24"),
        (&near, "near20", "198.51.100.1/24"),
        (&far, "far10", "192.0.2.2/24"),
        (&far, "far20", "198.51.100.2/24"),
    ] {
        ns.ip(&["addr", "add", addr, "dev", dev]).unwrap();
    }
    assert_eq!(sw_near.port("up")["socket"], "dev pbup");
    assert_eq!(
        sw_near.port("host10")["queue_pairs"],
        serde_json::json!([1, 1])
    );
    netns::wait_until(Duration::from_secs(5), "the uplink shown connected", || {
        Ok(sw_near.port("up")["state"] == "connected")
    })
    .unwrap();

    // Each VLAN reaches the same VLAN on the far side.
    for target in ["192.0.2.2", "198.51.100.2"] {
        let stats = netns::ping(&near, target, 3).unwrap();
        assert_eq!(stats.received, 3, "ping {target}: {stats:?}");
    }

    // Broadcasts of VLAN 10 (ARP for an address nobody has) cross tagged 10 only: the far
    // side's VLAN 20 port and the near side's see none of them.
    let far20 = counter(&far, "far20", "rx_packets");
    let near20 = counter(&near, "near20", "rx_packets");
    let far10 = counter(&far, "far10", "rx_packets");
    let _ = near.run("ping -c 3 -i 0.2 -W 1 192.0.2.99");
    netns::wait_until(
        Duration::from_secs(5),
        "VLAN 10's ARP requests at far10",
        || Ok(counter(&far, "far10", "rx_packets") >= far10 + 3),
    )
    .unwrap();
    assert_eq!(
        counter(&far, "far20", "rx_packets"),
        far20,
        "VLAN 10 leaked to far20"
    );
    assert_eq!(
        counter(&near, "near20", "rx_packets"),
        near20,
        "VLAN 10 leaked to near20"
    );

    // TCP both ways, every byte compared.
    let out = data(4 << 20, 7);
    assert!(
        tcp_across(near.name(), far.name(), "192.0.2.2", 5001, &out) == out,
        "VLAN 10 out"
    );
    let back = data(4 << 20, 11);
    assert!(
        tcp_across(far.name(), near.name(), "198.51.100.1", 5002, &back) == back,
        "VLAN 20 back"
    );
    for sw in [&sw_near, &sw_far] {
        let up = sw.port("up");
        let (packets, bytes) = (
            up["counters"]["rx_packets"].as_u64().unwrap(),
            up["counters"]["rx_bytes"].as_u64().unwrap(),
        );
        assert!(bytes >= 4 << 20, "a transfer came in: {up}");
        // The hosts' TCP crossed as super-frames (the taps offer TSO, the uplinks carry
        // it in their virtio-net headers), not cut to the MTU on the way.
        assert!(
            bytes / packets > 1514,
            "super-frames crossed the wire: {up}"
        );
        let drops: u64 = up["counters"]["drops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d[1].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(drops, 0, "{up}");
    }

    // The interface deleted under the switch: it goes on (its control answers, its host's
    // own addresses answer); the interface re-created, both uplinks carry traffic again;
    // and the port can be removed.
    far.ip(&["link", "del", "pbup"]).unwrap();
    assert!(
        near.ip(&["link", "show", "pbup"]).is_err(),
        "the veth pair is gone"
    );
    netns::wait_until(Duration::from_secs(5), "the uplink shown down", || {
        Ok(sw_near.port("up")["state"] == "down")
    })
    .unwrap();
    assert_eq!(sw_near.port("host10")["state"], "connected");
    wire(&near, &far);
    for sw in [&sw_near, &sw_far] {
        netns::wait_until(Duration::from_secs(5), "the uplink back", || {
            Ok(sw.port("up")["state"] == "connected")
        })
        .unwrap();
    }
    let stats = netns::ping(&near, "192.0.2.2", 3).unwrap();
    assert_eq!(stats.received, 3, "across the re-created wire: {stats:?}");
    let v = sw_near.call(r#"{"version":1,"command":"del-port","name":"up"}"#);
    assert_eq!(v["ok"], true, "{v}");
    let stats = netns::ping(&near, "192.0.2.1", 1).unwrap();
    assert_eq!(stats.received, 1, "the host's own address still answers");
}
