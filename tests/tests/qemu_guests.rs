//! Real Debian guests under QEMU against the switch: the frontend the world uses.
//!
//! Two guests on access ports of VLAN 10 ping each other; a third guest with the same
//! subnet on VLAN 20 cannot reach them (and receives nothing of theirs); a fourth guest on a
//! trunk port reaches VLAN 10 through an 802.1Q sub-interface. The trunk guest uses the
//! virtio-mmio transport, the others virtio-pci.

use std::time::Duration;

use patchbay_tests::guest::{skip_or_fail, GuestImage, GuestNic, QemuGuest, Transport};
use patchbay_tests::switch::{access, port, start_switch, TestDir};

const BOOT: Duration = Duration::from_secs(240);

#[test]
fn guests_ping_within_a_vlan_and_never_across() {
    let image = match GuestImage::prepare() {
        Ok(i) => i,
        Err(e) => {
            return skip_or_fail("guests_ping_within_a_vlan_and_never_across", &e.to_string())
        }
    };
    let dir = TestDir::new("qemu-vlans");
    let daemon = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "vm1", 10),
            access(&dir.path, "vm2", 10),
            access(&dir.path, "vm3", 20),
            port(&dir.path, "trunk", "trunk", None, Some("10,30")),
        ],
        |_| {},
    );
    let nic = |name: &str, mac: &str| GuestNic::new(dir.join(&format!("{name}.sock")), mac);
    // g4 uses the virtio-mmio transport (QEMU's microvm machine), the others virtio-pci.
    let mut g1 = QemuGuest::boot(
        &image,
        "g1",
        &nic("vm1", "52:54:00:00:10:01"),
        "pb.ip=10.0.0.1/24",
    )
    .unwrap();
    let mut g2 = QemuGuest::boot_with(
        &image,
        "g2",
        &nic("vm2", "52:54:00:00:10:02"),
        "pb.ip=10.0.0.2/24",
        true,
    )
    .unwrap();
    let mut g3 = QemuGuest::boot(
        &image,
        "g3",
        &nic("vm3", "52:54:00:00:20:03"),
        "pb.ip=10.0.0.3/24",
    )
    .unwrap();
    let mut g4 = QemuGuest::boot(
        &image,
        "g4",
        &GuestNic {
            transport: Transport::Mmio,
            ..nic("trunk", "52:54:00:00:10:04")
        },
        "pb.ip=10.0.0.4/24 pb.vlan=10",
    )
    .unwrap();
    for g in [&mut g1, &mut g2, &mut g3, &mut g4] {
        g.wait_ready(BOOT).unwrap();
    }

    let same_vlan = g1.ping("10.0.0.2", 3).unwrap();
    assert_eq!(same_vlan.received, 3, "g1 -> g2 on VLAN 10: {same_vlan:?}");
    let vm3_before = daemon
        .switch
        .port_by_name("vm3")
        .unwrap()
        .counters
        .snapshot();
    let across = g1.ping("10.0.0.3", 2).unwrap();
    assert_eq!(
        across.received, 0,
        "g1 must not reach g3 on VLAN 20: {across:?}"
    );
    let vm3_after = daemon
        .switch
        .port_by_name("vm3")
        .unwrap()
        .counters
        .snapshot();
    assert_eq!(
        vm3_after.tx_packets, vm3_before.tx_packets,
        "no frame from VLAN 10 (not even g1's ARP broadcasts) may reach the VLAN 20 port"
    );

    let (_, path) = g4
        .run(
            "readlink -f /sys/class/net/eth0/device/..",
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(
        path.iter()
            .any(|l| l.contains("virtio-mmio") || l.contains("LNRO0005"))
            && !path.iter().any(|l| l.contains("/pci")),
        "g4's NIC sits on virtio-mmio: {path:?}"
    );
    let trunk = g4.ping("10.0.0.1", 3).unwrap();
    assert_eq!(
        trunk.received, 3,
        "trunk guest via eth0.10 -> g1: {trunk:?}"
    );
    let trunk_counters = daemon
        .switch
        .port_by_name("trunk")
        .unwrap()
        .counters
        .snapshot();
    assert!(
        trunk_counters.rx_packets >= 3 && trunk_counters.tx_packets >= 3,
        "{trunk_counters:?}"
    );

    // Jumbo frames end to end: both guests raise their MTU to 9000 and exchange 8 KB pings,
    // each a single frame through the switch (no IP fragmentation at MTU 9000).
    for g in [&mut g1, &mut g2] {
        let (status, out) = g
            .run("ip link set eth0 mtu 9000", Duration::from_secs(10))
            .unwrap();
        assert_eq!(status, 0, "{}: {out:?}", g.name);
    }
    let vm1 = daemon.switch.port_by_name("vm1").unwrap();
    let before = vm1.counters.snapshot();
    let jumbo = g1
        .run("ping -c 3 -W 2 -s 8000 10.0.0.2", Duration::from_secs(30))
        .unwrap();
    assert!(
        jumbo.1.iter().any(|l| l.contains("3 packets received")),
        "{:?}",
        jumbo.1
    );
    let after = vm1.counters.snapshot();
    let (frames, bytes) = (
        after.rx_packets - before.rx_packets,
        after.rx_bytes - before.rx_bytes,
    );
    assert!(
        frames >= 3 && bytes / frames > 8000,
        "jumbo frames crossed whole: {frames} frames, {bytes} bytes"
    );

    // A guest reboot: QEMU stops the rings and sets them up again on the same connection.
    g2.run("reboot -f &", Duration::from_secs(10)).unwrap();
    g2.wait_ready(BOOT).unwrap();
    let vm2 = daemon.switch.port_by_name("vm2").unwrap();
    assert_eq!(
        vm2.counters.snapshot().connects,
        1,
        "same vhost-user connection"
    );
    let after_reboot = g1.ping("10.0.0.2", 3).unwrap();
    assert!(
        after_reboot.received >= 2,
        "g1 -> g2 after g2 rebooted: {after_reboot:?}"
    );

    // Killing a QEMU (no goodbye on the socket) and starting it again disturbs nobody else.
    drop(g3);
    let vm3 = daemon.switch.port_by_name("vm3").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while vm3.link().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the switch noticed g3's QEMU dying"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let still = g1.ping("10.0.0.2", 2).unwrap();
    assert_eq!(still.received, 2, "g1 -> g2 after g3 was killed: {still:?}");
    let mut g3 = QemuGuest::boot(
        &image,
        "g3",
        &nic("vm3", "52:54:00:00:20:03"),
        "pb.ip=10.0.0.3/24",
    )
    .unwrap();
    g3.wait_ready(BOOT).unwrap();
    assert_eq!(
        vm3.counters.snapshot().connects,
        2,
        "g3 reconnected to its port"
    );
    let rx_before = vm3.counters.snapshot().rx_packets;
    let g3_back = g3.ping("10.0.0.1", 2).unwrap();
    assert_eq!(
        g3_back.received, 0,
        "g3 is back, still on VLAN 20: {g3_back:?}"
    );
    assert!(
        vm3.counters.snapshot().rx_packets > rx_before,
        "the restarted g3's frames reach the switch"
    );

    for g in [g1, g2, g3, g4] {
        g.poweroff();
    }
    daemon.shutdown();
}
