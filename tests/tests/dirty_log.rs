//! The dirty-page log of a live migration, driven by the test frontend as QEMU drives it:
//! SET_LOG_BASE with a shared memfd (LOG_SHMFD), then SET_FEATURES with VHOST_F_LOG_ALL.
//! While logging, the pages of the receive buffers the switch fills and of the used ring it
//! writes are marked; after SET_FEATURES without the bit nothing more is; a log too small
//! for the frontend's memory is refused (that connection closes, the other ports carry on).
//! At the end of a migration, SEND_RARP announces a guest that cannot announce itself.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

use patchbay_switch::virtio::dirty_log::{bytes_needed, LOG_PAGE};
use patchbay_switch::virtio::features::VHOST_F_LOG_ALL;
use patchbay_tests::frames::*;
use patchbay_tests::frontend::{FrontendConfig, TestPort};
use patchbay_tests::switch::{access_ports, send_done, start_switch, TestDir};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::{VhostBackend, VhostUserDirtyLogRegion};

/// A frontend that negotiates LOG_SHMFD too.
fn migrating(dir: &TestDir, name: &str) -> TestPort {
    let mut cfg = FrontendConfig::new(dir.join(&format!("{name}.sock")));
    cfg.protocol_features |= VhostUserProtocolFeatures::LOG_SHMFD.bits();
    TestPort::connect(cfg).expect("frontend connects")
}

fn memfd(len: u64) -> std::fs::File {
    let fd =
        nix::sys::memfd::memfd_create(c"pb-dirty-log", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let f = std::fs::File::from(fd);
    f.set_len(len).unwrap();
    f
}

fn marked_pages(log: &mut std::fs::File) -> Vec<u64> {
    let mut bytes = Vec::new();
    log.seek(SeekFrom::Start(0)).unwrap();
    log.read_to_end(&mut bytes).unwrap();
    let mut pages = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        for bit in 0..8 {
            if b & (1 << bit) != 0 {
                pages.push(i as u64 * 8 + bit);
            }
        }
    }
    pages
}

fn clear(log: &mut std::fs::File) {
    let len = log.metadata().unwrap().len();
    log.seek(SeekFrom::Start(0)).unwrap();
    log.write_all(&vec![0; len as usize]).unwrap();
}

#[test]
fn writes_are_logged_while_migrating_and_only_then() {
    let dir = TestDir::new("dirty-log");
    let d = start_switch(
        &dir.path,
        access_ports(&dir.path, &[("a", 1), ("b", 1)]),
        |_| {},
    );
    let mut a = TestPort::connect(FrontendConfig::new(dir.join("a.sock"))).unwrap();
    let mut b = migrating(&dir, "b");
    assert_ne!(
        b.protocol_features() & VhostUserProtocolFeatures::LOG_SHMFD.bits(),
        0,
        "LOG_SHMFD offered"
    );
    let memory_end = b
        .guest_regions()
        .iter()
        .map(|(gpa, len)| gpa + len)
        .max()
        .unwrap();
    let size = bytes_needed(memory_end);
    let mut log = memfd(size);
    b.vhost()
        .set_log_base(
            0,
            Some(VhostUserDirtyLogRegion {
                mmap_size: size,
                mmap_offset: 0,
                mmap_handle: log.as_raw_fd(),
            }),
        )
        .expect("SET_LOG_BASE accepted");
    let features = b.features();
    b.vhost()
        .set_features(features | VHOST_F_LOG_ALL)
        .expect("LOG_ALL offered and accepted");

    // Frames into b: its receive buffers and its RX used ring are written, so logged.
    for n in 0..8 {
        send_done(&mut a, &frame(mac(2), mac(1), n, 1000));
    }
    for _ in 0..8 {
        assert!(b.recv(Duration::from_secs(5)).unwrap().is_some());
    }
    let pages = marked_pages(&mut log);
    let (_, _, rx_used) = b.raw_rx().ring_addrs();
    assert!(
        pages.contains(&(rx_used / LOG_PAGE)),
        "the RX used ring's page {} is marked: {pages:?}",
        rx_used / LOG_PAGE
    );
    assert!(
        pages.len() >= 2,
        "receive buffers' pages are marked too: {pages:?}"
    );
    assert!(pages.iter().all(|p| p * LOG_PAGE < memory_end));

    // b sends: only its TX used ring is written.
    clear(&mut log);
    send_done(&mut b, &frame(mac(1), mac(2), 99, 200));
    let (_, _, tx_used) = b.raw_tx().ring_addrs();
    let pages = marked_pages(&mut log);
    assert!(pages.contains(&(tx_used / LOG_PAGE)), "{pages:?}");

    // Logging off: nothing more is marked.
    b.vhost().set_features(features).unwrap();
    clear(&mut log);
    for n in 0..8 {
        send_done(&mut a, &frame(mac(2), mac(1), 100 + n, 1000));
    }
    for _ in 0..8 {
        assert!(b.recv(Duration::from_secs(5)).unwrap().is_some());
    }
    assert_eq!(marked_pages(&mut log), Vec::<u64>::new());

    // A log too small for a's memory: refused, a's connection closes, b carries on.
    a.disconnect();
    let port_a = d.switch.port_by_name("a").unwrap();
    patchbay_tests::switch::eventually("a's first frontend leaves", || !port_a.is_up());
    let mut c = migrating(&dir, "a");
    let small = memfd(8);
    let refused = c.vhost().set_log_base(
        0,
        Some(VhostUserDirtyLogRegion {
            mmap_size: 8,
            mmap_offset: 0,
            mmap_handle: small.as_raw_fd(),
        }),
    );
    assert!(
        refused.is_err(),
        "a log of 8 bytes for {memory_end:#x} bytes"
    );
    patchbay_tests::switch::eventually("a's connection closes", || !port_a.is_up());
    assert!(port_a.counters.snapshot().protocol_errors >= 1);
    let port_b = d.switch.port_by_name("b").unwrap();
    assert!(port_b.is_up());
    d.shutdown();
}

/// After a migration QEMU asks the backend to announce a guest that cannot announce itself
/// (SEND_RARP with the guest's MAC): the switch broadcasts a RARP from that MAC as if the
/// guest had, so the port's VLAN receives it and the learning table has the MAC behind the
/// port; the request is acknowledged (REPLY_ACK). A multicast "MAC" is refused and counted.
#[test]
fn send_rarp_broadcasts_a_rarp_from_the_guest_and_the_table_learns_it() {
    const SEND_RARP: u32 = 19;
    const NEED_REPLY: u32 = 1 << 3;
    let dir = TestDir::new("send-rarp");
    let d = start_switch(
        &dir.path,
        access_ports(&dir.path, &[("a", 10), ("b", 10), ("c", 20)]),
        |_| {},
    );
    let rarp = VhostUserProtocolFeatures::RARP.bits();
    let mut a = patchbay_tests::switch::connect_with(&dir, "a", |c| c.protocol_features |= rarp);
    assert_ne!(a.protocol_features() & rarp, 0, "RARP is offered");
    let mut b = patchbay_tests::switch::connect(&dir, "b");
    let mut c = patchbay_tests::switch::connect(&dir, "c");
    let guest = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    let mut body = guest.to_vec();
    body.extend_from_slice(&[0, 0]);
    a.send_raw_request(SEND_RARP, NEED_REPLY, &body).unwrap();
    let (code, flags, reply) = a.read_raw_reply(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (code, flags & 4 != 0),
        (SEND_RARP, true),
        "a reply to SEND_RARP"
    );
    assert_eq!(reply, 0u64.to_le_bytes(), "acknowledged as done");

    let got = b
        .recv(Duration::from_secs(5))
        .unwrap()
        .expect("b receives the RARP");
    assert_eq!(&got[..6], &[0xff; 6], "broadcast");
    assert_eq!(&got[6..12], &guest, "from the guest's MAC");
    assert_eq!(&got[12..14], &[0x80, 0x35], "EtherType RARP");
    assert_eq!(&got[20..22], &[0, 3], "reverse request");
    assert_eq!(&got[22..28], &guest, "sender hardware address");
    assert_eq!(&got[32..38], &guest, "target hardware address");
    assert!(
        c.recv(Duration::from_millis(200)).unwrap().is_none(),
        "not into another VLAN"
    );
    let table = d.switch.mac_table();
    let port_a = d.switch.port_by_name("a").unwrap().id;
    assert_eq!(
        table.lookup(
            10,
            patchbay_switch::wire::EthernetAddress(guest),
            table.now()
        ),
        Some(port_a),
        "the guest's MAC is learned behind its port"
    );
    let counters_a = || d.switch.port_by_name("a").unwrap().counters.snapshot();
    assert_eq!(counters_a().announcements, 1);
    // Unicast to the guest now goes to a without flooding.
    send_done(&mut b, &frame(guest, mac(2), 1, 64));
    assert_eq!(
        a.recv(Duration::from_secs(5)).unwrap().as_deref(),
        Some(frame(guest, mac(2), 1, 64).as_slice())
    );

    let mut bad = vec![0x01, 0, 0x5e, 0, 0, 1];
    bad.extend_from_slice(&[0, 0]);
    let errors = counters_a().protocol_errors;
    a.send_raw_request(SEND_RARP, NEED_REPLY, &bad).unwrap();
    let (_, _, reply) = a.read_raw_reply(Duration::from_secs(5)).unwrap();
    assert_eq!(reply, 1u64.to_le_bytes(), "a multicast address is refused");
    assert!(
        b.recv(Duration::from_millis(200)).unwrap().is_none(),
        "nothing is announced"
    );
    assert_eq!(counters_a().protocol_errors, errors + 1);
    d.shutdown();
}

/// SET_LOG_FD (an eventfd a backend may signal after logging; QEMU reads the log without
/// it) is accepted and acknowledged, and the connection goes on; the `vhost` crate's
/// dispatcher alone would close it.
#[test]
fn set_log_fd_is_acknowledged_and_the_connection_goes_on() {
    let dir = TestDir::new("set-log-fd");
    let d = start_switch(
        &dir.path,
        access_ports(&dir.path, &[("a", 10), ("b", 10)]),
        |_| {},
    );
    let mut a = patchbay_tests::switch::connect(&dir, "a");
    let mut b = patchbay_tests::switch::connect(&dir, "b");
    let eventfd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    a.vhost()
        .set_log_fd(eventfd.as_raw_fd())
        .expect("SET_LOG_FD acknowledged");
    patchbay_tests::switch::forwards(&mut a, &mut b, &frame(mac(2), mac(1), 1, 64));
    assert_eq!(
        d.switch
            .port_by_name("a")
            .unwrap()
            .counters
            .snapshot()
            .connects,
        1,
        "the same connection"
    );
    d.shutdown();
}
