//! VLAN hopping: a guest must not get a frame into another VLAN by stacking tags. No frame
//! may leave a port carrying a tag the port's policy did not put there.

use patchbay_tests::frames::*;
use patchbay_tests::switch::{
    access, connect, drops, nothing, port, send_done as send, start_switch, TestDir,
};

/// `inner` with an outer tag of the given TPID pushed in front of its own tag.
fn push_outer(inner: &[u8], tpid: u16, vid: u16, pcp: u8) -> Vec<u8> {
    let mut f = inner[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&((u16::from(pcp) << 13) | vid).to_be_bytes());
    f.extend_from_slice(&inner[12..]);
    f
}

#[test]
fn stacked_tags_never_hop_vlans() {
    let dir = TestDir::new("vlan-hop");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 10),
            access(&dir.path, "b", 10),
            access(&dir.path, "victim", 20),
            port(&dir.path, "nu", "native-untagged", Some(10), Some("20")),
            port(&dir.path, "t", "trunk", None, Some("10,20")),
        ],
        |_| {},
    );
    let mut a = connect(&dir, "a");
    let mut b = connect(&dir, "b");
    let mut victim = connect(&dir, "victim");
    let mut nu = connect(&dir, "nu");
    let mut t = connect(&dir, "t");

    // The attack a real Linux guest can make: a priority tag (VID 0) in front of a VLAN 20
    // tag, from an access port of VLAN 10.
    let inner = tagged(BROADCAST, mac(1), 20, 0, 1, 100);
    send(&mut a, &push_outer(&inner, 0x8100, 0, 3));
    // The same with an 802.1ad (S-tag) outer tag, and a bare S-tag of VLAN 20.
    send(&mut a, &push_outer(&inner, 0x88a8, 0, 0));
    send(
        &mut a,
        &push_outer(&frame(BROADCAST, mac(1), 2, 100), 0x88a8, 20, 0),
    );
    for (name, p) in [
        ("b", &mut b),
        ("victim", &mut victim),
        ("nu", &mut nu),
        ("t", &mut t),
    ] {
        assert!(
            nothing(p),
            "{name} received a stacked-tag frame from an access port"
        );
    }
    assert_eq!(drops(&d, "a", "double-tagged"), 3);

    // From the native-untagged trunk: a frame in its native VLAN 10 (tagged 10) with a VLAN 20
    // tag inside. Trunk to trunk it stays in VLAN 10 with its payload (the inner tag) intact;
    // towards access ports of VLAN 10 popping the outer tag would expose the inner one, so it
    // is dropped there.
    let hop = push_outer(&inner, 0x8100, 10, 0);
    send(&mut nu, &hop);
    assert_eq!(
        t.recv(std::time::Duration::from_secs(5)).unwrap(),
        Some(hop.clone()),
        "trunk to trunk the frame travels in VLAN 10 unchanged"
    );
    for (name, p) in [("a", &mut a), ("b", &mut b), ("victim", &mut victim)] {
        assert!(
            nothing(p),
            "{name} received a frame with an exposed inner tag"
        );
    }
    assert_eq!(drops(&d, "nu", "double-tagged"), 2, "one per access port");

    // Ordinary traffic is unaffected: a priority-tagged frame still reaches b untagged.
    let plain = frame(BROADCAST, mac(1), 3, 100);
    send(&mut a, &push_outer(&plain, 0x8100, 0, 5));
    assert_eq!(
        b.recv(std::time::Duration::from_secs(5)).unwrap(),
        Some(plain)
    );
    d.shutdown();
}
