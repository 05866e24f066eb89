//! Offloads from a frontend the switch's authors did not write: DPDK testpmd's virtio-user
//! ports in the `csum` forwarding engine, told to leave TCP checksums to the device and to
//! segment TCP at an MSS of 800 (`csum set tcp hw`, `tso set 800`). A test frontend on VLAN 10
//! sends full-size TCP frames to testpmd's port 0; testpmd hands each back out of port 1, into
//! VLAN 20, as a TSO super-frame with a partial checksum. There, a receiver without offloads
//! gets correct 800-byte segments from the switch, and one with GUEST_TSO4 gets the
//! super-frame whole with a header regenerated for it.
//!
//! Needs `dpdk-testpmd` (.ci/install-deps.sh installs it); skipped with a note without it, or
//! a failure under PATCHBAY_REQUIRE_KVM=1 (CI).

use std::time::{Duration, Instant};

use patchbay_tests::frames::mac;
use patchbay_tests::frontend::{FrontendConfig, TestPort, DEFAULT_FEATURES};
use patchbay_tests::offload::*;
use patchbay_tests::peers::Testpmd;
use patchbay_tests::switch::{access, counters, start_switch, TestDir};

/// testpmd's port 0 and port 1 MACs (see `Testpmd::start_frontend`).
const PMD0: [u8; 6] = [2, 0, 0, 0, 0, 0];

fn frontend(dir: &TestDir, name: &str, features: u64) -> TestPort {
    let mut cfg = FrontendConfig::new(dir.join(&format!("{name}.sock")));
    cfg.features = DEFAULT_FEATURES | features;
    TestPort::connect(cfg).expect("frontend connects")
}

#[test]
fn testpmd_tso_super_frames_are_segmented_or_passed_whole() {
    let dir = TestDir::new("testpmd-offl");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "inj", 10),
            access(&dir.path, "pmd0", 10),
            access(&dir.path, "pmd1", 20),
            access(&dir.path, "plain", 20),
            access(&dir.path, "tso", 20),
        ],
        |_| {},
    );
    let mut inj = frontend(&dir, "inj", 0);
    let mut plain = frontend(&dir, "plain", 0);
    let mut tso = frontend(&dir, "tso", GUEST_CSUM | GUEST_TSO4);
    let sockets = [dir.join("pmd0.sock"), dir.join("pmd1.sock")];
    let Some(mut pmd) = Testpmd::start_frontend_interactive(
        &sockets,
        &[
            "--forward-mode=csum",
            "--burst=32",
            // Port 1 sends to a MAC nobody has: flooded to both receivers on VLAN 20.
            "--eth-peer=1,02:00:00:00:00:99",
            "--eth-peer=0,02:00:00:00:00:98",
        ],
    ) else {
        return;
    };
    for line in [
        "port stop 1",
        "csum set ip hw 1",
        "csum set tcp hw 1",
        "tso set 800 1",
        "port start 1",
        "start",
    ] {
        let out = pmd.command(line);
        assert!(
            !out.contains("Bad arguments") && !out.contains("rror"),
            "{line}: {out}"
        );
    }
    let features = d.switch.port_by_name("pmd1").unwrap().info().feature_names;
    assert!(
        features.iter().any(|f| f == "HOST_TSO4") && features.iter().any(|f| f == "CSUM"),
        "testpmd negotiated TSO on port 1: {features:?}"
    );

    let data = payload(3000, 7);
    let frame = ip_frame(PMD0, mac(1), false, L4::Tcp, None, &data);
    // testpmd's ports come up asynchronously: send until the first frame comes through.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        inj.send(&frame).expect("send");
        if let Some(f) = tso.recv(Duration::from_millis(200)).unwrap() {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "nothing came through testpmd: {}",
            pmd.log()
        );
    };
    // Whole, to the receiver with GUEST_TSO4: testpmd's super-frame, header regenerated.
    let h = NetHdr::parse(tso.last_rx_header()).unwrap();
    assert_eq!(
        (h.flags, h.gso_type, h.gso_size, h.csum_start, h.csum_offset),
        (F_NEEDS_CSUM, GSO_TCPV4, 800, 34, 16),
        "{h:?}"
    );
    assert_eq!(first.len(), frame.len());
    assert_eq!(&first[54..], &data[..], "the payload as sent");
    // Segmented for the receiver without offloads: 4 segments of at most 800 bytes with
    // correct checksums, in order. (Drain what earlier probes left first.)
    let mut segments = Vec::new();
    while let Some(f) = plain.recv(Duration::from_millis(500)).unwrap() {
        segments.push(f);
    }
    assert!(!segments.is_empty(), "segments reached the plain receiver");
    let mut joined = Vec::new();
    for s in &segments {
        let p = checked_payload(s);
        assert!(p.len() <= 800, "a segment of {} payload bytes", p.len());
        joined.extend(p);
    }
    assert_eq!(
        joined.len() % data.len(),
        0,
        "whole frames' worth of payload"
    );
    assert_eq!(&joined[..data.len()], &data[..], "in order");
    assert!(segments.len() >= 4, "{} segments", segments.len());
    for port in ["pmd0", "pmd1"] {
        let c = counters(&d, port);
        assert_eq!(c.drop_count("bad-offload"), 0, "{port}: {c:?}");
        assert_eq!(c.drop_count("bad-descriptor"), 0, "{port}: {c:?}");
    }
    pmd.stop();
}
