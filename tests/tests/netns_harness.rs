//! The network-namespace harness on its own, with no Patchbay: two namespaces joined by a
//! veth underlay (198.51.100.0/24), a kernel vxlan device (VNI 42) in each pointing at the
//! other, and a ping across the overlay (203.0.113.0/24). This is the reference behaviour
//! the switch's VXLAN port must interoperate with; see docs/vxlan-testing.md.

use std::process::Stdio;
use std::time::{Duration, Instant};

use patchbay_tests::guest::skip_or_fail;
use patchbay_tests::netns::{
    self, kernel_vxlan, kernel_vxlan_with, ping, ping_with, veth_pair, veth_pair_mtu,
    vxlan_fdb_append, Netns, VxlanCapture, VxlanOpts, VXLAN_OVERHEAD, VXLAN_PORT,
};

const VNI: u32 = 42;

fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kernel_vxlan_overlay_between_two_namespaces() {
    let test = "kernel_vxlan_overlay_between_two_namespaces";
    if let Err(reason) = netns::vxlan_available() {
        return skip_or_fail(test, &reason);
    }
    let start = Instant::now();
    let a = Netns::create("pb-vxa").expect("namespace a");
    let b = Netns::create("pb-vxb").expect("namespace b");
    let ul = veth_pair(&a, "198.51.100.1/24", &b, "198.51.100.2/24").expect("veth underlay");
    let under = ping(&a, "198.51.100.2", 1).expect("underlay ping");
    assert_eq!(under.received, 1, "underlay ping: {under:?}");

    // a: a single remote and the underlay device given; b: no remote, no device, and a
    // head-end replication entry instead (how the switch's per-VNI remote list looks).
    kernel_vxlan_with(
        &a,
        &VxlanOpts {
            name: "vx42",
            vni: VNI,
            local: "198.51.100.1",
            remote: Some("198.51.100.2"),
            dev: Some(&ul.a),
            inner_addr: "203.0.113.1/24",
            ..Default::default()
        },
    )
    .expect("vxlan in a");
    kernel_vxlan(
        &b,
        "vx42",
        VNI,
        "198.51.100.2",
        None,
        VXLAN_PORT,
        "203.0.113.2/24",
    )
    .expect("vxlan in b");
    vxlan_fdb_append(&b, "vx42", "198.51.100.1").expect("head-end replication entry");

    // MTU: with `dev`, the kernel takes the underlay's MTU less the 50-byte encapsulation;
    // without it, the device starts at the Ethernet default whatever the underlay.
    let under_mtu = a.mtu(&ul.a).unwrap();
    let (mtu_a, mtu_b) = (a.mtu("vx42").unwrap(), b.mtu("vx42").unwrap());
    eprintln!("underlay mtu {under_mtu}; vxlan mtu with dev {mtu_a}, without dev {mtu_b}");
    assert_eq!(mtu_a, under_mtu - VXLAN_OVERHEAD);
    assert_eq!(mtu_b, 1500);

    let capture = netns::tshark_available().then(|| {
        VxlanCapture::start(&b, &ul.b, 2, VXLAN_PORT).expect("tshark capture on the underlay")
    });

    let stats = ping(&a, "203.0.113.2", 3).expect("overlay ping");
    assert_eq!(
        (stats.transmitted, stats.received),
        (3, 3),
        "overlay ping 203.0.113.1 -> 203.0.113.2"
    );

    // A full-size inner packet (a's MTU, DF set) crosses a 1500-byte underlay unfragmented.
    let payload = (mtu_a - 28).to_string();
    let big = ping_with(&a, "203.0.113.2", 1, &["-M", "do", "-s", &payload]).unwrap();
    assert_eq!(big.received, 1, "{payload}-byte ping with DF: {big:?}");

    // Learning (on by default): each side learnt the other's inner MAC -> outer source IP.
    for (ns, peer, vtep) in [(&a, &b, "198.51.100.2"), (&b, &a, "198.51.100.1")] {
        let mac = peer.mac("vx42").unwrap();
        let entry = format!("{mac} dst {vtep}");
        let mut fdb = String::new();
        netns::wait_until(
            Duration::from_secs(2),
            &format!("fdb entry {entry}"),
            || {
                fdb = ns.fdb("vx42")?;
                Ok(fdb.contains(&entry))
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}; fdb:\n{fdb}", ns.name()));
    }

    if let Some(capture) = capture {
        let vnis = capture.finish(Duration::from_secs(5)).expect("tshark");
        assert_eq!(vnis, vec![VNI; 2], "VNIs on the wire");
    } else {
        eprintln!("tshark not installed: wire decode check skipped");
    }
    eprintln!("{test}: {:?}", start.elapsed());
}

#[test]
fn vxlan_mtu_follows_a_jumbo_underlay_device() {
    let test = "vxlan_mtu_follows_a_jumbo_underlay_device";
    if let Err(reason) = netns::vxlan_available() {
        return skip_or_fail(test, &reason);
    }
    let a = Netns::create("pb-mtua").unwrap();
    let b = Netns::create("pb-mtub").unwrap();
    let ul = veth_pair_mtu(&a, "198.51.100.1/24", &b, "198.51.100.2/24", Some(9000)).unwrap();
    assert_eq!((a.mtu(&ul.a).unwrap(), b.mtu(&ul.b).unwrap()), (9000, 9000));
    let opts = |name, local, remote, dev, inner| VxlanOpts {
        name,
        vni: VNI,
        local,
        remote: Some(remote),
        dev: Some(dev),
        inner_addr: inner,
        ..Default::default()
    };
    kernel_vxlan_with(
        &a,
        &opts(
            "vx42",
            "198.51.100.1",
            "198.51.100.2",
            &ul.a,
            "203.0.113.1/24",
        ),
    )
    .unwrap();
    kernel_vxlan_with(
        &b,
        &opts(
            "vx42",
            "198.51.100.2",
            "198.51.100.1",
            &ul.b,
            "203.0.113.2/24",
        ),
    )
    .unwrap();
    assert_eq!(a.mtu("vx42").unwrap(), 9000 - VXLAN_OVERHEAD);
    let payload = (9000 - VXLAN_OVERHEAD - 28).to_string();
    let big = ping_with(&a, "203.0.113.2", 1, &["-M", "do", "-s", &payload]).unwrap();
    assert_eq!(big.received, 1, "{payload}-byte ping with DF: {big:?}");
}

#[test]
fn dropping_a_namespace_kills_what_runs_inside_and_deletes_it() {
    let test = "dropping_a_namespace_kills_what_runs_inside_and_deletes_it";
    if let Err(reason) = netns::available() {
        return skip_or_fail(test, &reason);
    }
    let ns = Netns::create("pb-drop").unwrap();
    let name = ns.name().to_string();
    assert!(netns_list().contains(&name));
    let mut sleeper = ns
        .exec(["sleep", "600"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    netns::wait_until(Duration::from_secs(5), "sleep inside the namespace", || {
        Ok(ns.pids()?.contains(&(sleeper.id() as i32)))
    })
    .unwrap();
    let err = ns.run("echo oops >&2; exit 3").unwrap_err().to_string();
    assert!(err.contains("oops"), "stderr in the error: {err}");
    assert_eq!(ns.run("echo hi").unwrap().trim(), "hi");

    let t = Instant::now();
    drop(ns);
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "sleep was killed: {status}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!netns_list().contains(&name), "{name} deleted");
}
