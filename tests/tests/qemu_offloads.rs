//! Offloads with real Debian guests under QEMU: `a` negotiates every offload QEMU offers
//! (checksums, TSO4/6, ECN), `b` none of them, `t` every one on a trunk port (its traffic
//! goes through an 802.1Q sub-interface, so the switch pops and pushes tags on super-frames).
//! A 16 MiB TCP transfer in each direction between them arrives with the sender's SHA-256:
//! the Linux guests drop frames with bad checksums, so a wrong offload shows as a stalled or
//! corrupt transfer. The super-frames are seen crossing the switch (mean frame far above the
//! MTU), `ethtool -k` inside the guests shows what each negotiated (`c` takes checksums but
//! no super-frames), and so do the switch and `flowctl show ports` (text and --json).

use std::time::Duration;

use patchbay_switch::daemon::Daemon;
use patchbay_tests::guest::{skip_or_fail, tcp_transfer, GuestImage, GuestNic, QemuGuest};
use patchbay_tests::switch::{
    access, flowctl_at, flowctl_port_json, offload_list, port, ports_row, start_switch, TestDir,
};

const BOOT: Duration = Duration::from_secs(240);
const SIZE: u64 = 16 << 20;

fn transfer(from: &mut QemuGuest, to: &mut QemuGuest, to_ip: &str, port: u16) -> (String, String) {
    tcp_transfer(from, to, to_ip, port, SIZE)
}

/// Every offload off, as QEMU names them.
const NO_OFFLOADS: &str = "csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,\
                           host_ecn=off,host_ufo=off,guest_tso4=off,guest_tso6=off,\
                           guest_ecn=off,guest_ufo=off";

/// `ethtool -k eth0` lines of one setting, e.g. "tcp-segmentation-offload: on".
fn ethtool(g: &mut QemuGuest, key: &str) -> String {
    let (status, out) = g.run("ethtool -k eth0", Duration::from_secs(20)).unwrap();
    assert_eq!(status, 0, "{}: ethtool -k: {out:?}", g.name);
    out.iter()
        .find(|l| l.trim_start().starts_with(key))
        .unwrap_or_else(|| panic!("{}: no {key} in {out:?}", g.name))
        .trim()
        .to_string()
}

fn port_stats(d: &Daemon, name: &str) -> (u64, u64, u64, u64) {
    let c = d.switch.port_by_name(name).unwrap().counters.snapshot();
    (c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes)
}

#[test]
fn tcp_between_guests_with_offloads_on_both_one_or_no_ends() {
    let image = match GuestImage::prepare() {
        Ok(i) => i,
        Err(e) => {
            return skip_or_fail(
                "tcp_between_guests_with_offloads_on_both_one_or_no_ends",
                &e.to_string(),
            )
        }
    };
    let dir = TestDir::new("qemu-offl");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 10),
            access(&dir.path, "b", 10),
            access(&dir.path, "c", 10),
            port(&dir.path, "t", "trunk", None, Some("10")),
        ],
        |_| {},
    );
    let nic = |name: &str, mac: &str| GuestNic::new(dir.join(&format!("{name}.sock")), mac);
    let mut a = QemuGuest::boot(
        &image,
        "a",
        &nic("a", "52:54:00:00:0a:01"),
        "pb.ip=10.0.0.1/24",
    )
    .unwrap();
    let mut b = QemuGuest::boot(
        &image,
        "b",
        &GuestNic {
            device_opts: NO_OFFLOADS.into(),
            ..nic("b", "52:54:00:00:0a:02")
        },
        "pb.ip=10.0.0.2/24",
    )
    .unwrap();
    // c takes checksum offload but not TSO: segments reach it with partial checksums.
    let mut c = QemuGuest::boot(
        &image,
        "c",
        &GuestNic {
            device_opts: "guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off".into(),
            ..nic("c", "52:54:00:00:0a:04")
        },
        "pb.ip=10.0.0.4/24",
    )
    .unwrap();
    let mut t = QemuGuest::boot(
        &image,
        "t",
        &nic("t", "52:54:00:00:0a:03"),
        "pb.ip=10.0.0.3/24 pb.vlan=10",
    )
    .unwrap();
    for g in [&mut a, &mut b, &mut c, &mut t] {
        g.wait_ready(BOOT).unwrap();
    }

    // What each side negotiated, seen from inside and from the switch. Every port offers
    // every offload; a and t take them all, b none, c all but the receive side's
    // segmentation (GUEST_TSO4/6, which the driver shows as rx-gro-hw).
    // "on", or "on [fixed]" where the guest cannot change it (no CTRL_GUEST_OFFLOADS).
    // (Linux 6.1 shows rx-checksumming on without GUEST_CSUM too: the switch's view of the
    // receive side, below, is the one that counts.)
    for (g, tx, gro) in [
        (&mut a, "on", "on"),
        (&mut b, "off", "off"),
        (&mut c, "on", "off"),
        (&mut t, "on", "on"),
    ] {
        for (key, on) in [
            ("tcp-segmentation-offload:", tx),
            ("tx-checksumming:", tx),
            ("rx-gro-hw:", gro),
        ] {
            let line = ethtool(g, key);
            assert!(
                line.starts_with(&format!("{key} {on}")),
                "{}: {line}",
                g.name
            );
        }
    }
    let names = |p: &str| d.switch.port_by_name(p).unwrap().info().feature_names;
    let has = |p: &str, f: &str| names(p).iter().any(|n| n == f);
    for f in [
        "CSUM",
        "GUEST_CSUM",
        "HOST_TSO4",
        "GUEST_TSO4",
        "HOST_TSO6",
        "GUEST_TSO6",
    ] {
        for p in ["a", "t"] {
            assert!(has(p, f), "{p} negotiated {f}: {:?}", names(p));
        }
        assert!(!has("b", f), "b did not negotiate {f}");
    }
    for f in ["CSUM", "HOST_TSO4", "HOST_TSO6", "GUEST_CSUM"] {
        assert!(has("c", f), "c negotiated {f}: {:?}", names("c"));
    }
    for f in ["GUEST_TSO4", "GUEST_TSO6"] {
        assert!(!has("c", f), "c did not negotiate {f}: {:?}", names("c"));
    }

    // And as `flowctl show ports` prints it: one queue pair of the 8 offered each, and
    // what each guest may send offloaded (tx) and takes (rx).
    let control = dir.join("control.sock");
    let table = flowctl_at(&control, &["show", "ports"]);
    for p in ["a", "b", "c", "t"] {
        let (queues, offloads) = ports_row(&table, p);
        assert_eq!(queues, "1/8", "{p}: QUEUES in {table}");
        let (tx, rx) = (offload_list(&offloads, "tx"), offload_list(&offloads, "rx"));
        match p {
            "b" => assert_eq!(offloads, "-", "b: OFFLOADS in {table}"),
            _ => {
                for o in ["csum", "tso4", "tso6"] {
                    assert!(tx.contains(&o), "{p}: OFFLOADS '{offloads}' has tx:{o}");
                    // c takes partial checksums but no super-frames.
                    let takes = p != "c" || o == "csum";
                    assert_eq!(rx.contains(&o), takes, "{p}: OFFLOADS '{offloads}', rx:{o}");
                }
            }
        }
    }
    for p in ["a", "b", "c", "t"] {
        let entry = flowctl_port_json(&control, p);
        assert_eq!(
            entry["queue_pairs"],
            serde_json::json!([1, 8]),
            "{p}: {entry}"
        );
        assert_eq!(
            entry["feature_names"],
            serde_json::json!(names(p)),
            "{p}: --json shows the negotiated features"
        );
    }

    // a -> b: a sends super-frames with partial checksums; b takes neither, so the switch
    // cuts and checksums them.
    let (a0, b0) = (port_stats(&d, "a"), port_stats(&d, "b"));
    transfer(&mut a, &mut b, "10.0.0.2", 5001);
    let (a1, b1) = (port_stats(&d, "a"), port_stats(&d, "b"));
    let (frames, bytes) = (a1.0 - a0.0, a1.1 - a0.1);
    assert!(
        bytes / frames > 3000,
        "a's TCP data crossed as super-frames: {frames} frames, {bytes} bytes"
    );
    assert!(
        b1.2 - b0.2 > frames * 2,
        "b got them as segments: {} frames delivered for {frames} received",
        b1.2 - b0.2
    );

    // a -> c: c takes checksums but not TSO: the switch cuts the super-frames, each segment
    // keeping a partial checksum for c's stack (NEEDS_CSUM).
    assert!(names("c").iter().any(|n| n == "GUEST_CSUM"));
    assert!(!names("c").iter().any(|n| n == "GUEST_TSO4"));
    let (a0, c0) = (port_stats(&d, "a"), port_stats(&d, "c"));
    transfer(&mut a, &mut c, "10.0.0.4", 5006);
    let (a1, c1) = (port_stats(&d, "a"), port_stats(&d, "c"));
    let frames = a1.0 - a0.0;
    assert!(
        c1.2 - c0.2 > frames * 2,
        "c got segments: {} frames delivered for {frames} received",
        c1.2 - c0.2
    );

    // b -> a: no offload from b; a receives plain frames.
    transfer(&mut b, &mut a, "10.0.0.1", 5002);

    // t <-> a through the trunk: super-frames both ways, the tag popped on the way to a and
    // pushed on the way to t, the partial checksum's offsets moved with it.
    let t0 = port_stats(&d, "t");
    transfer(&mut t, &mut a, "10.0.0.1", 5003);
    let t1 = port_stats(&d, "t");
    assert!(
        (t1.1 - t0.1) / (t1.0 - t0.0) > 3000,
        "t's data crossed as tagged super-frames"
    );
    transfer(&mut a, &mut t, "10.0.0.3", 5004);
    let t2 = port_stats(&d, "t");
    assert!(
        (t2.3 - t1.3) / (t2.2 - t1.2) > 3000,
        "a's super-frames reached t whole, tagged"
    );
    // t -> b: a tagged super-frame, popped, then cut and checksummed for b.
    transfer(&mut t, &mut b, "10.0.0.2", 5005);

    for g in [
        &d.switch.port_by_name("a").unwrap(),
        &d.switch.port_by_name("t").unwrap(),
    ] {
        assert_eq!(g.counters.snapshot().drop_count("bad-offload"), 0);
    }
    for g in [a, b, c, t] {
        g.poweroff();
    }
    d.shutdown();
}
