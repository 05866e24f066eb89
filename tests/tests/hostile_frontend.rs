//! Hostile vhost-user frontends: what a guest (or the process playing its VMM) hands the
//! switch — file descriptors, receive rings, transmit rings, memory tables — must never stall
//! or slow down the other ports, nor the control plane.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use patchbay_switch::daemon::Daemon;
use patchbay_tests::frames::*;
use patchbay_tests::frontend::*;
use patchbay_tests::switch::{access, connect, received_now, start_switch, TestDir};
use vhost::VhostBackend;
use vmm_sys_util::eventfd::EventFd;

const T: Duration = Duration::from_secs(5);

fn connect_with(dir: &TestDir, name: &str, f: impl FnOnce(&mut FrontendConfig)) -> TestPort {
    let mut cfg = FrontendConfig::new(dir.join(&format!("{name}.sock")));
    f(&mut cfg);
    TestPort::connect(cfg).expect("frontend connects")
}

/// Sends `f` from `from` and checks that it completes and reaches `to` intact.
fn forwards(from: &mut TestPort, to: &mut TestPort, f: &[u8]) {
    from.send(f).expect("send");
    assert!(
        from.wait_tx_completion(T).expect("tx completion"),
        "the switch did not take the frame"
    );
    assert_eq!(to.recv(T).expect("recv").as_deref(), Some(f));
}

/// The control plane answers: ports are listed and a port can be added and removed.
fn control_plane_answers(d: &Daemon, dir: &TestDir) {
    let (tx, rx) = std::sync::mpsc::channel();
    let sw = d.switch.clone();
    let extra = access(&dir.path, "extra", 1);
    std::thread::spawn(move || {
        let listed = sw.ports().iter().map(|p| p.info()).count();
        let added = sw.add_port(extra).is_ok();
        let removed = sw.remove_port("extra").is_ok();
        let _ = tx.send((listed, added, removed));
    });
    let (listed, added, removed) = rx
        .recv_timeout(T)
        .expect("the control plane is stuck behind a hostile frontend");
    assert!(listed > 0 && added && removed);
}

#[test]
fn a_call_fd_that_never_drains_does_not_stall_the_sender() {
    let dir = TestDir::new("call-pipe");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 1),
            access(&dir.path, "hostile", 1),
            access(&dir.path, "c", 1),
        ],
        |_| {},
    );
    let mut a = connect(&dir, "a");
    let mut c = connect(&dir, "c");
    // Without EVENT_IDX and with interrupts enabled in the avail flags, the switch signals
    // the hostile guest's call fd for every batch it delivers.
    let mut hostile = connect_with(&dir, "hostile", |c| c.features &= !RING_EVENT_IDX);
    let (_, avail, _) = hostile.raw_rx().ring_addrs();
    hostile.raw_rx().write(avail, &[0, 0]).unwrap();
    // A full pipe in blocking mode as the RX call "eventfd".
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).unwrap();
    let chunk = [0u8; 4096];
    while nix::unistd::write(&write_end, &chunk).is_ok() {}
    fcntl(&write_end, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    // SAFETY: the fd is ours and open; the EventFd takes ownership and closes it.
    let call = unsafe { EventFd::from_raw_fd(write_end.into_raw_fd()) };
    hostile.vhost().set_vring_call(RX_QUEUE, &call).unwrap();

    for seq in 0..20 {
        // Broadcasts reach the hostile guest (and its call fd) and c.
        let f = frame(BROADCAST, mac(1), seq, 80);
        forwards(&mut a, &mut c, &f);
        assert_eq!(hostile.recv(T).unwrap().as_deref(), Some(&f[..]));
    }
    control_plane_answers(&d, &dir);
    assert!(received_now(&mut a).is_none());
    drop(read_end);
    d.shutdown();
}
