//! The frame path with the userspace frontend: learning, flooding, VLANs, jumbo frames,
//! legacy headers, memory layouts, lifecycle.
//!
//! Absence checks are deterministic: the switch delivers a frame to every receiver before it
//! returns the sender's TX chain, so once `wait_tx_completion` is true, a receiver that has
//! nothing in its used ring will never get that frame.

use std::time::Duration;

use patchbay_switch::port::{ConnectMode, PortConfig};
use patchbay_tests::frames::*;
use patchbay_tests::frontend::*;
use patchbay_tests::switch::{
    access, connect, connect_with, drops, eventually, nothing, port, received_now,
    send_done as send, start_switch, TestDir,
};

const T: Duration = Duration::from_secs(5);

fn recv(p: &mut TestPort) -> Vec<u8> {
    p.recv(T).expect("recv").expect("a frame should arrive")
}

fn rings_up(d: &patchbay_switch::daemon::Daemon, name: &str) -> bool {
    d.switch
        .port_by_name(name)
        .and_then(|p| p.link())
        .is_some_and(|l| l.is_up())
}

#[test]
fn unknown_unicast_floods_then_learned_addresses_go_to_one_port() {
    let dir = TestDir::new("learn");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 1),
            access(&dir.path, "b", 1),
            access(&dir.path, "c", 1),
        ],
        |_| {},
    );
    let (mut a, mut b, mut c) = (connect(&dir, "a"), connect(&dir, "b"), connect(&dir, "c"));

    let first = frame(mac(2), mac(1), 1, 100);
    send(&mut a, &first);
    assert_eq!(recv(&mut b), first, "unknown unicast floods to b");
    assert_eq!(recv(&mut c), first, "unknown unicast floods to c");

    let reply = frame(mac(1), mac(2), 2, 100);
    send(&mut b, &reply);
    assert_eq!(recv(&mut a), reply, "a was learned on port a");
    assert!(nothing(&mut c), "a learned destination is not flooded");

    let again = frame(mac(2), mac(1), 3, 100);
    send(&mut a, &again);
    assert_eq!(recv(&mut b), again);
    assert!(nothing(&mut c));

    let table = d.switch.mac_table();
    assert_eq!(
        table.lookup(
            1,
            patchbay_switch::wire::EthernetAddress(mac(1)),
            table.now()
        ),
        Some(1)
    );
    assert_eq!(
        d.switch
            .counters()
            .floods
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    d.shutdown();
}

#[test]
fn broadcast_stays_within_its_vlan() {
    let dir = TestDir::new("vlan-isolation");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 10),
            access(&dir.path, "b", 10),
            access(&dir.path, "c", 20),
        ],
        |_| {},
    );
    let (mut a, mut b, mut c) = (connect(&dir, "a"), connect(&dir, "b"), connect(&dir, "c"));
    let bcast = frame(BROADCAST, mac(1), 1, 64);
    send(&mut a, &bcast);
    assert_eq!(recv(&mut b), bcast);
    assert!(
        nothing(&mut c),
        "a VLAN 10 broadcast must not reach VLAN 20"
    );
    // Even a known address on the other VLAN is unreachable: learning is per VLAN.
    send(&mut c, &frame(BROADCAST, mac(3), 2, 64));
    send(&mut a, &frame(mac(3), mac(1), 3, 64));
    assert!(nothing(&mut c));
    assert_eq!(
        d.switch
            .port_by_name("c")
            .unwrap()
            .counters
            .snapshot()
            .tx_packets,
        0
    );
    d.shutdown();
}

#[test]
fn trunks_push_and_pop_tags_and_keep_priority() {
    let dir = TestDir::new("trunk");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 10),
            port(&dir.path, "t", "trunk", None, Some("10,20")),
            port(&dir.path, "nu", "native-untagged", Some(10), Some("20")),
            port(&dir.path, "nt", "native-tagged", Some(20), Some("10")),
        ],
        |_| {},
    );
    let mut a = connect(&dir, "a");
    let mut t = connect(&dir, "t");
    let mut nu = connect(&dir, "nu");
    let mut nt = connect(&dir, "nt");

    // Untagged from an access port: tagged VID 10 on the trunks, untagged on native VLAN 10.
    let f = frame(BROADCAST, mac(1), 1, 80);
    send(&mut a, &f);
    let on_trunk = recv(&mut t);
    assert_eq!(tag_of(&on_trunk), Some((10, 0)));
    assert_eq!(strip_tag(&on_trunk), f);
    assert_eq!(recv(&mut nu), f, "VLAN 10 is native-untagged on nu");
    assert_eq!(
        tag_of(&recv(&mut nt)),
        Some((10, 0)),
        "VLAN 10 is tagged on nt"
    );

    // Priority-tagged (VID 0, PCP 6) from the access port keeps its PCP on the trunk.
    send(&mut a, &tagged(BROADCAST, mac(1), 0, 6, 2, 80));
    assert_eq!(tag_of(&recv(&mut t)), Some((10, 6)));
    assert!(tag_of(&recv(&mut nu)).is_none());
    let _ = recv(&mut nt);

    // Tagged VID 10 PCP 5 from the trunk: popped towards the access port, kept on nt.
    let g = tagged(BROADCAST, mac(2), 10, 5, 3, 80);
    send(&mut t, &g);
    assert_eq!(recv(&mut a), strip_tag(&g));
    assert_eq!(recv(&mut nu), strip_tag(&g));
    assert_eq!(
        recv(&mut nt),
        g,
        "same VLAN trunk to trunk: the frame is untouched"
    );

    // VLAN 20: native on nt (tagged there too), carried by t and nu, not by a.
    send(&mut nt, &frame(BROADCAST, mac(4), 4, 80));
    assert_eq!(tag_of(&recv(&mut t)), Some((20, 0)));
    assert_eq!(tag_of(&recv(&mut nu)), Some((20, 0)));
    assert!(nothing(&mut a));

    // Refused at ingress: a tagged frame on an access port, a VLAN the trunk does not carry,
    // an untagged frame on a plain trunk.
    send(&mut a, &tagged(BROADCAST, mac(1), 10, 0, 5, 80));
    send(&mut t, &tagged(BROADCAST, mac(2), 30, 0, 6, 80));
    send(&mut t, &frame(BROADCAST, mac(2), 7, 80));
    assert_eq!(drops(&d, "a", "vlan-filter"), 1);
    assert_eq!(drops(&d, "t", "vlan-filter"), 2);
    for p in [&mut a, &mut t, &mut nu, &mut nt] {
        assert!(nothing(p));
    }
    d.shutdown();
}

#[test]
fn learned_addresses_age_out_and_flooding_resumes() {
    let dir = TestDir::new("aging");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 1),
            access(&dir.path, "b", 1),
            access(&dir.path, "c", 1),
        ],
        |c| c.settings.mac_aging_secs = 1,
    );
    let (mut a, mut b, mut c) = (connect(&dir, "a"), connect(&dir, "b"), connect(&dir, "c"));
    send(&mut b, &frame(BROADCAST, mac(2), 1, 64));
    let _ = (recv(&mut a), recv(&mut c));
    send(&mut a, &frame(mac(2), mac(1), 2, 64));
    let _ = recv(&mut b);
    assert!(nothing(&mut c), "b's address is known");
    let table = d.switch.mac_table();
    let b_mac = patchbay_switch::wire::EthernetAddress(mac(2));
    eventually("b's address ages out", || {
        table.lookup(1, b_mac, table.now()).is_none()
    });
    let f = frame(mac(2), mac(1), 3, 64);
    send(&mut a, &f);
    assert_eq!(
        recv(&mut c),
        f,
        "after aging, b's address is unknown again and floods"
    );
    d.shutdown();
}

#[test]
fn a_full_mac_table_stops_learning_but_not_forwarding() {
    let dir = TestDir::new("table-limit");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), access(&dir.path, "b", 1)],
        |c| c.settings.mac_table_size = 2,
    );
    let (mut a, mut b) = (connect(&dir, "a"), connect(&dir, "b"));
    for n in 1..=3 {
        let f = frame(BROADCAST, mac(n), u32::from(n), 64);
        send(&mut a, &f);
        assert_eq!(recv(&mut b), f);
    }
    assert_eq!(d.switch.mac_table().len(), 2);
    assert_eq!(
        d.switch
            .counters()
            .mac_table_full
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    d.shutdown();
}

#[test]
fn jumbo_frames_cross_whole_and_oversized_ones_are_dropped_not_truncated() {
    let dir = TestDir::new("jumbo");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 1),
            access(&dir.path, "b", 1),
            access(&dir.path, "small", 1),
        ],
        |_| {},
    );
    let mut a = connect(&dir, "a");
    let mut b = connect(&dir, "b"); // mergeable 2 KiB buffers
                                    // A guest without mergeable buffers and 1 KiB receive buffers.
    let mut small = connect_with(&dir, "small", |c| {
        c.features &= !NET_F_MRG_RXBUF;
        c.rx_buffer_size = 1024;
    });
    let jumbo = frame(BROADCAST, mac(1), 1, 9000 + 14);
    send(&mut a, &jumbo);
    assert_eq!(
        recv(&mut b),
        jumbo,
        "9014-byte frame across merged receive buffers"
    );
    assert!(nothing(&mut small), "too big for small's buffers");
    assert_eq!(drops(&d, "small", "too-big"), 1);

    let fits = frame(BROADCAST, mac(1), 2, 1000);
    send(&mut a, &fits);
    assert_eq!(
        recv(&mut small),
        fits,
        "the port still works for frames that fit"
    );
    let _ = recv(&mut b);

    // Larger than the switch's MTU (9000 + 18): refused at ingress.
    send(&mut a, &frame(BROADCAST, mac(1), 3, 9000 + 19));
    assert_eq!(drops(&d, "a", "too-big"), 1);
    assert!(nothing(&mut b));
    d.shutdown();
}

#[test]
fn legacy_ten_byte_header_interworks_with_modern_guests() {
    let dir = TestDir::new("legacy");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "old", 1), access(&dir.path, "new", 1)],
        |_| {},
    );
    let mut old = connect_with(&dir, "old", |c| {
        c.features &= !(VERSION_1 | NET_F_MRG_RXBUF)
    });
    let mut new = connect(&dir, "new");
    assert_eq!(old.header_len(), 10);
    assert_eq!(new.header_len(), 12);
    for (seq, len) in [(1u32, 60usize), (2, 1514)] {
        let f = frame(mac(2), mac(1), seq, len);
        send(&mut old, &f);
        assert_eq!(recv(&mut new), f);
        let g = frame(mac(1), mac(2), seq + 10, len);
        send(&mut new, &g);
        assert_eq!(recv(&mut old), g);
    }
    let info = d.switch.port_by_name("old").unwrap().info();
    assert_eq!(info.header_len, Some(10));
    d.shutdown();
}

#[test]
fn descriptor_layouts_and_memory_layouts_all_carry_frames() {
    let dir = TestDir::new("layouts");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), access(&dir.path, "b", 1)],
        |_| {},
    );
    // Eight regions in one SET_MEM_TABLE, one memfd at different offsets (like QEMU).
    let mut a = connect_with(&dir, "a", |c| {
        c.regions = 8;
        c.single_memfd = true;
        c.mem_table = MemTableMode::SetMemTable;
    });
    // Twelve regions added one by one (CONFIGURE_MEM_SLOTS), buffers split over regions.
    let mut b = connect_with(&dir, "b", |c| {
        c.regions = 12;
        c.mem_size = 24 << 20;
        c.mem_table = MemTableMode::AddMemReg;
    });
    for (i, layout) in [
        TxLayout::Contiguous,
        TxLayout::Split,
        TxLayout::Indirect,
        TxLayout::Alternate,
    ]
    .into_iter()
    .enumerate()
    {
        a.set_tx_layout(layout).unwrap();
        b.set_tx_layout(layout).unwrap();
        for n in 0..40u32 {
            let seq = i as u32 * 100 + n;
            let f = frame(mac(2), mac(1), seq, 60 + (n as usize * 37) % 1400);
            send(&mut a, &f);
            assert_eq!(recv(&mut b), f, "{layout:?} a->b #{n}");
            let g = frame(mac(1), mac(2), seq, 60 + (n as usize * 53) % 1400);
            send(&mut b, &g);
            assert_eq!(recv(&mut a), g, "{layout:?} b->a #{n}");
        }
    }
    d.shutdown();
}

#[test]
fn config_space_offers_the_port_mac_and_link_up() {
    let dir = TestDir::new("config");
    let mut cfg = access(&dir.path, "a", 1);
    cfg.mac = Some("52:54:00:aa:bb:cc".into());
    let d = start_switch(&dir.path, vec![cfg, access(&dir.path, "b", 1)], |_| {});
    let a = connect(&dir, "a");
    let config = a.get_config(0, 10).unwrap();
    assert_eq!(&config[0..6], &[0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc]);
    assert_eq!(
        u16::from_le_bytes([config[6], config[7]]) & 1,
        1,
        "VIRTIO_NET_S_LINK_UP"
    );
    // A port without a MAC has no config space to offer: the protocol feature is not
    // offered (QEMU warns about an offered CONFIG it cannot use), the rest are.
    use patchbay_tests::frontend::{PROTOCOL_F_CONFIG, PROTOCOL_F_CONFIGURE_MEM_SLOTS};
    let b = connect(&dir, "b");
    assert_eq!(
        b.protocol_features() & PROTOCOL_F_CONFIG,
        0,
        "CONFIG without a MAC"
    );
    assert_ne!(b.protocol_features() & PROTOCOL_F_CONFIGURE_MEM_SLOTS, 0);
    assert_ne!(a.protocol_features() & PROTOCOL_F_CONFIG, 0);
    d.shutdown();
}

#[test]
fn a_guest_that_stops_receiving_only_loses_its_own_frames() {
    let dir = TestDir::new("stalled-rx");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 1),
            access(&dir.path, "stuck", 1),
            access(&dir.path, "c", 1),
        ],
        |_| {},
    );
    let mut a = connect(&dir, "a");
    let mut stuck = connect(&dir, "stuck");
    let mut c = connect(&dir, "c");
    stuck.set_rx_consumption(false).unwrap();
    // Broadcasts reach both; stuck's ring fills up and the rest is dropped as no-buffer.
    let total = 600u32;
    for n in 0..total {
        let f = frame(BROADCAST, mac(1), n, 64);
        send(&mut a, &f);
        assert_eq!(
            recv(&mut c),
            f,
            "c keeps receiving while stuck is full (#{n})"
        );
    }
    let no_buffer = drops(&d, "stuck", "no-buffer");
    assert!(
        no_buffer > 0 && no_buffer < u64::from(total),
        "no-buffer drops: {no_buffer}"
    );
    d.shutdown();
}

#[test]
fn ports_come_and_go_without_disturbing_others() {
    let dir = TestDir::new("lifecycle");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 1),
            access(&dir.path, "b", 1),
            access(&dir.path, "c", 1),
        ],
        |_| {},
    );
    let mut a = connect(&dir, "a");
    let mut c = connect(&dir, "c");
    let mut seq = 0;
    let mut ping = |a: &mut TestPort, c: &mut TestPort| {
        seq += 1;
        let f = frame(mac(3), mac(1), seq, 64);
        send(a, &f);
        assert_eq!(recv(c), f, "a -> c still works");
    };
    send(&mut c, &frame(BROADCAST, mac(3), 0, 64));
    let _ = recv(&mut a);

    // b connects, leaves, reconnects several times (like QEMU being killed and restarted).
    for round in 0..3 {
        let mut b = connect(&dir, "b");
        eventually("b's rings up", || rings_up(&d, "b"));
        ping(&mut a, &mut c);
        let f = frame(BROADCAST, mac(2), 100 + round, 64);
        send(&mut b, &f);
        assert_eq!(recv(&mut a), f);
        assert_eq!(recv(&mut c), f);
        b.disconnect();
        eventually("b's link gone", || {
            d.switch.port_by_name("b").unwrap().link().is_none()
        });
        ping(&mut a, &mut c);
    }
    assert_eq!(
        d.switch
            .port_by_name("b")
            .unwrap()
            .counters
            .snapshot()
            .connects,
        3
    );

    // A port added at run time works; removing it leaves the others running.
    let added = access(&dir.path, "late", 1);
    d.switch.add_port(added).unwrap();
    let mut late = connect(&dir, "late");
    let f = frame(BROADCAST, mac(9), 500, 64);
    send(&mut late, &f);
    assert_eq!(recv(&mut a), f);
    assert_eq!(recv(&mut c), f);
    d.switch.remove_port("late").unwrap();
    assert!(
        !dir.join("late.sock").exists(),
        "a removed port's socket is gone"
    );
    ping(&mut a, &mut c);
    drop(late);
    d.shutdown();
}

#[test]
fn client_mode_ports_dial_and_redial_the_frontend() {
    let dir = TestDir::new("client-mode");
    let mut cfg: PortConfig = access(&dir.path, "vm", 1);
    cfg.mode = ConnectMode::Client;
    // The switch starts first and keeps retrying until the frontend listens.
    let d = start_switch(&dir.path, vec![cfg, access(&dir.path, "peer", 1)], |_| {});
    let mut peer = connect(&dir, "peer");
    for round in 0..2u32 {
        let mut vm = TestPort::listen_and_accept(
            FrontendConfig::new(dir.join("vm.sock")),
            Duration::from_secs(15),
        )
        .expect("the switch dials in");
        let f = frame(BROADCAST, mac(1), round, 64);
        send(&mut vm, &f);
        assert_eq!(recv(&mut peer), f);
        vm.disconnect();
        let _ = std::fs::remove_file(dir.join("vm.sock"));
        eventually("vm link gone", || {
            d.switch.port_by_name("vm").unwrap().link().is_none()
        });
    }
    d.shutdown();
}

#[test]
fn poll_mode_forwards_too() {
    let dir = TestDir::new("poll");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), access(&dir.path, "b", 1)],
        |c| c.settings.poll_cpus = vec![0],
    );
    let (mut a, mut b) = (connect(&dir, "a"), connect(&dir, "b"));
    for n in 0..100 {
        let f = frame(BROADCAST, mac(1), n, 64 + n as usize);
        send(&mut a, &f);
        assert_eq!(recv(&mut b), f);
    }
    d.shutdown();
}

/// Without EVENT_IDX a driver says with the avail ring's NO_INTERRUPT flag whether it wants
/// interrupts: a polling driver (DPDK's virtio-user) sets it and must cost the switch no
/// eventfd write per burst; a driver waiting for frames clears it and must be woken.
#[test]
fn interrupts_follow_the_no_interrupt_flag_without_event_idx() {
    let dir = TestDir::new("no-interrupt");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), access(&dir.path, "b", 1)],
        |_| {},
    );
    let no_event_idx = |c: &mut FrontendConfig| c.features &= !RING_EVENT_IDX;
    let mut a = connect_with(&dir, "a", no_event_idx);
    let mut b = connect_with(&dir, "b", no_event_idx);
    let notifications = |name: &str| {
        d.switch
            .port_by_name(name)
            .unwrap()
            .counters
            .snapshot()
            .notifications
    };
    // b polls (its NO_INTERRUPT flag stays set): 50 frames, not one interrupt. (b never
    // transmits, so every interrupt it could get is a receive interrupt; with two ports the
    // frames reach it unlearned.)
    let before = notifications("b");
    for seq in 1..=50 {
        send(&mut a, &frame(mac(2), mac(1), seq, 64));
    }
    assert_eq!(notifications("b"), before, "b asked for no interrupts");
    for seq in 1..=50 {
        assert_eq!(received_now(&mut b), Some(frame(mac(2), mac(1), seq, 64)));
    }
    // b waits (the flag is cleared while it sleeps on its call fd): the frame wakes it.
    std::thread::scope(|s| {
        let waiter = s.spawn(|| b.recv(T).expect("recv"));
        std::thread::sleep(Duration::from_millis(50));
        send(&mut a, &frame(mac(2), mac(1), 99, 64));
        assert_eq!(waiter.join().unwrap(), Some(frame(mac(2), mac(1), 99, 64)));
    });
    assert!(
        notifications("b") > before,
        "the waiting receiver was interrupted"
    );
    d.shutdown();
}

/// Socket mode and group (for a QEMU running as another user, as libvirt's does): per port,
/// or switch-wide from `[switch]`; a port's own wins.
#[test]
fn port_sockets_get_the_mode_and_group_asked_for() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TestDir::new("socket-mode");
    let gid = nix::unistd::getgid().as_raw().to_string();
    let mut own = access(&dir.path, "own", 10);
    own.socket_mode = Some("0660".into());
    own.socket_group = Some(gid.clone());
    let inherits = access(&dir.path, "inherits", 10);
    let d = start_switch(&dir.path, vec![own, inherits], |c| {
        c.settings.socket_mode = Some("0666".into());
        c.settings.socket_group = Some(gid.clone());
    });
    let meta = |name: &str| std::fs::metadata(dir.join(&format!("{name}.sock"))).unwrap();
    assert_eq!(meta("own").permissions().mode() & 0o777, 0o660);
    assert_eq!(meta("inherits").permissions().mode() & 0o777, 0o666);
    assert_eq!(meta("own").gid().to_string(), gid);
    // A group that does not exist is refused by name.
    let mut bad = access(&dir.path, "bad", 10);
    bad.socket_group = Some("no-such-group-pb".into());
    let e = d.switch.add_port(bad).unwrap_err().to_string();
    assert!(
        e.contains("socket_group") && e.contains("no-such-group-pb"),
        "{e}"
    );
    let mut bad = access(&dir.path, "bad", 10);
    bad.socket_mode = Some("999".into());
    let e = d.switch.add_port(bad).unwrap_err().to_string();
    assert!(e.contains("socket_mode") && e.contains("octal"), "{e}");
    d.shutdown();
}
