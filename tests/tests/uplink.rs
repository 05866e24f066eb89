//! Uplinks: an existing interface as a switch port through AF_XDP or AF_PACKET, trunking
//! VLANs to the wire. A veth pair stands in for the NIC between two "hosts" (namespaces), each with a
//! switch whose uplink is its end of the pair (a trunk of VLANs 10 and 20) and whose host
//! reaches each VLAN through an internal port. This kernel has no 802.1Q devices (no 8021q
//! module, no VLAN-filtering bridge), so the far side is a second switch rather than Linux
//! sub-interfaces; the tags still cross the kernel: it takes them off received frames
//! (VLAN offload) and the uplink puts them back from the packet's aux data. Each VLAN
//! reaches its own far port only, and TCP crosses both ways with every byte compared.

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

/// Sends `bytes` over TCP from namespace `from` to `to_ip:port`, where a listener runs in
/// namespace `to`; returns what the listener received.
fn tcp_across(from: &str, to: &str, to_ip: &str, port: u16, bytes: &[u8]) -> Vec<u8> {
    let addr = format!("{to_ip}:{port}");
    let listener = netns::tcp_receive(to, &addr);
    netns::tcp_send(from, &addr, bytes);
    listener.join().expect("listener")
}

/// The "NIC": a veth pair with an end named `pbup` in each namespace, up.
/// Two receive and transmit queues on each end, so an AF_XDP uplink opens a socket per
/// queue and the kernel spreads the flows over them.
fn wire(near: &Netns, far: &Netns) {
    netns::output_ok(std::process::Command::new("ip").args([
        "link",
        "add",
        "pbup",
        "netns",
        near.name(),
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        "pbup",
        "netns",
        far.name(),
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
    ]))
    .unwrap();
    for ns in [near, far] {
        ns.ip(&["link", "set", "pbup", "up"]).unwrap();
    }
}

#[test]
fn afpacket_uplink_trunks_each_vlan_to_the_same_vlan_across_the_wire() {
    trunk_across_the_wire(
        "afpacket_uplink_trunks_each_vlan_to_the_same_vlan_across_the_wire",
        "afpacket",
    );
}

#[test]
fn afxdp_uplink_trunks_each_vlan_to_the_same_vlan_across_the_wire() {
    trunk_across_the_wire(
        "afxdp_uplink_trunks_each_vlan_to_the_same_vlan_across_the_wire",
        "afxdp",
    );
}

/// How an uplink of `kind` attaches to a veth, as `show ports` says it.
fn attachment(kind: &str) -> &'static str {
    match kind {
        // veth has no zero-copy AF_XDP; its driver runs XDP programs.
        "afxdp" => "dev pbup (AF_XDP, copy mode, native XDP, 2 queues)",
        _ => "dev pbup (AF_PACKET)",
    }
}

fn trunk_across_the_wire(test: &str, kind: &str) {
    if let Err(e) = netns::available() {
        skip_or_fail(test, &e);
        return;
    }
    let dir = TestDir::new(&format!("uplink-{kind}"));
    let near = Netns::create(&format!("pbup-{kind}-near")).unwrap();
    let far = Netns::create(&format!("pbup-{kind}-far")).unwrap();
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
             [[port]]\nname = \"up\"\ntype = \"{kind}\"\ninterface = \"pbup\"\n\
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
    assert_eq!(sw_near.port("up")["socket"], attachment(kind));
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
    let out = netns::pattern(4 << 20, 7);
    assert!(
        tcp_across(near.name(), far.name(), "192.0.2.2", 5001, &out) == out,
        "VLAN 10 out"
    );
    let back = netns::pattern(4 << 20, 11);
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
        if kind == "afpacket" {
            // The hosts' TCP crossed as super-frames (the taps offer TSO, the uplinks
            // carry it in their virtio-net headers), not cut to the MTU on the way.
            assert!(
                bytes / packets > 1514,
                "super-frames crossed the wire: {up}"
            );
        } else {
            // AF_XDP carries no offloads: the switch cut the super-frames to the MTU (the
            // mean, with the other direction's ACKs, stays under a full frame).
            assert!(
                bytes / packets <= 1518,
                "MTU-sized frames crossed the wire: {up}"
            );
        }
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
        assert_eq!(sw.port("up")["socket"], attachment(kind));
    }
    let stats = netns::ping(&near, "192.0.2.2", 3).unwrap();
    assert_eq!(stats.received, 3, "across the re-created wire: {stats:?}");
    // An AF_XDP uplink's program is on the interface while the port is, and goes with it.
    let xdp_on = || {
        near.ip(&["link", "show", "pbup"])
            .unwrap()
            .contains("prog/xdp")
    };
    assert_eq!(xdp_on(), kind == "afxdp");
    let v = sw_near.call(r#"{"version":1,"command":"del-port","name":"up"}"#);
    assert_eq!(v["ok"], true, "{v}");
    netns::wait_until(Duration::from_secs(5), "the XDP program detached", || {
        Ok(!xdp_on())
    })
    .unwrap();
    let stats = netns::ping(&near, "192.0.2.1", 1).unwrap();
    assert_eq!(stats.received, 1, "the host's own address still answers");
}

/// An AF_XDP uplink that cannot attach (here: an MTU over what its chunks hold) falls back
/// to AF_PACKET by itself, says why, and forwards.
#[test]
fn afxdp_uplink_falls_back_to_afpacket_and_says_why() {
    const TEST: &str = "afxdp_uplink_falls_back_to_afpacket_and_says_why";
    if let Err(e) = netns::available() {
        skip_or_fail(TEST, &e);
        return;
    }
    let dir = TestDir::new("uplink-fallback");
    let near = Netns::create("pbup-fb-near").unwrap();
    let far = Netns::create("pbup-fb-far").unwrap();
    wire(&near, &far);
    for ns in [&near, &far] {
        ns.ip(&["link", "set", "pbup", "mtu", "9000"]).unwrap();
    }
    far.ip(&["addr", "add", "192.0.2.2/24", "dev", "pbup"])
        .unwrap();
    let sw = SwitchProc::start(
        &near,
        &dir.path,
        "near",
        "[[port]]\nname = \"host\"\ntype = \"internal\"\ninterface = \"near0\"\n\n\
         [[port]]\nname = \"up\"\ntype = \"afxdp\"\ninterface = \"pbup\"\n",
    );
    near.ip(&["addr", "add", "192.0.2.1/24", "dev", "near0"])
        .unwrap();
    let how = sw.port("up")["socket"].as_str().unwrap().to_string();
    assert!(
        how.starts_with("dev pbup (AF_PACKET; no AF_XDP: MTU 9000"),
        "{how}"
    );
    assert!(!near
        .ip(&["link", "show", "pbup"])
        .unwrap()
        .contains("prog/xdp"));
    let stats = netns::ping(&near, "192.0.2.2", 3).unwrap();
    assert_eq!(stats.received, 3, "through the fallback: {stats:?}");
}
