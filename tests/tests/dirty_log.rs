//! The dirty-page log of a live migration, driven by the test frontend as QEMU drives it:
//! SET_LOG_BASE with a shared memfd (LOG_SHMFD), then SET_FEATURES with VHOST_F_LOG_ALL.
//! While logging, the pages of the receive buffers the switch fills and of the used ring it
//! writes are marked; after SET_FEATURES without the bit nothing more is; a log too small
//! for the frontend's memory is refused (that connection closes, the other ports carry on).

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
