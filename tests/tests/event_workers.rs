//! The dataplane threads in event mode. Its own test binary, tests one at a time: they
//! inspect this process's threads, which other tests' switches would add to.

use std::time::Duration;

use patchbay_tests::frames::*;
use patchbay_tests::frontend::TestPort;
use patchbay_tests::switch::{
    access_ports, connect, eventually, send_done as send, start_switch, TestDir,
};

/// The tests here look at every dataplane thread of the process: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn recv(p: &mut TestPort) -> Vec<u8> {
    p.recv(Duration::from_secs(5))
        .expect("recv")
        .expect("a frame should arrive")
}

/// State ('R' running, 'S' sleeping, ...) and CPU time used (clock ticks) of each of this
/// process's threads named `prefix*`.
fn threads(prefix: &str) -> Vec<(char, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("task").path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // After `pid (comm)`: the state is field 3; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let Some(state) = fields.first().and_then(|f| f.chars().next()) else {
            continue;
        };
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.push((state, tick(11) + tick(12)));
    }
    out
}

fn thread_states(prefix: &str) -> Vec<char> {
    threads(prefix).into_iter().map(|t| t.0).collect()
}

fn thread_ticks(prefix: &str) -> u64 {
    threads(prefix).into_iter().map(|t| t.1).sum()
}

/// Event mode with two dataplane threads: ports are split between them, frames cross in
/// both directions, and when the rings go quiet both threads sleep (no CPU while idle) and
/// wake on the guests' kicks.
#[test]
fn event_mode_workers_sleep_when_idle_and_wake_on_kicks() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TestDir::new("event-workers");
    let d = start_switch(
        &dir.path,
        access_ports(&dir.path, &[("a", 1), ("b", 1), ("c", 1), ("d", 1)]),
        |c| c.settings.event_threads = 2,
    );
    let (mut a, mut b) = (connect(&dir, "a"), connect(&dir, "b"));
    for round in 0..3 {
        for n in 0..20 {
            let f = frame(mac(2), mac(1), n, 80);
            send(&mut a, &f);
            assert_eq!(recv(&mut b), f, "round {round}: a -> b");
            let f = frame(mac(1), mac(2), n, 90);
            send(&mut b, &f);
            assert_eq!(recv(&mut a), f, "round {round}: b -> a");
        }
        eventually("both dataplane threads asleep", || {
            let states = thread_states("dataplane-");
            states.len() == 2 && states.iter().all(|s| *s == 'S')
        });
    }
    d.shutdown();
}

/// A frontend may hand over anything as its kick "eventfd": here the read end of a pipe
/// whose writer is gone, which polls as hung up forever. The worker must stop watching it
/// rather than wake for it in a loop, and the other ports keep forwarding.
#[test]
fn a_kick_fd_that_hangs_up_does_not_keep_the_worker_awake() {
    use std::os::fd::{FromRawFd, IntoRawFd};
    use vhost::VhostBackend;
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());

    let dir = TestDir::new("kick-hangup");
    let d = start_switch(
        &dir.path,
        access_ports(&dir.path, &[("hostile", 1), ("b", 1), ("c", 1)]),
        |_| {},
    );
    let mut hostile = connect(&dir, "hostile");
    let (mut b, mut c) = (connect(&dir, "b"), connect(&dir, "c"));
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    // SAFETY: `reader` is an open fd we own; the EventFd takes it over.
    let fake = unsafe { vmm_sys_util::eventfd::EventFd::from_raw_fd(reader.into_raw_fd()) };
    hostile
        .vhost()
        .set_vring_kick(1, &fake)
        .expect("SET_VRING_KICK with a pipe");
    drop(writer);
    let f = frame(mac(3), mac(2), 1, 80);
    send(&mut b, &f);
    assert_eq!(recv(&mut c), f, "b -> c");
    // Idle now: over half a second the dataplane thread must use (almost) no CPU. A worker
    // woken by the hung-up pipe spins and uses all of it (50 ticks at 100 Hz).
    eventually("the dataplane thread idle for 500 ms", || {
        let before = thread_ticks("dataplane-");
        std::thread::sleep(Duration::from_millis(500));
        thread_ticks("dataplane-") - before <= 5
    });
    let f = frame(mac(2), mac(3), 2, 80);
    send(&mut c, &f);
    assert_eq!(recv(&mut b), f, "c -> b, after");
    d.shutdown();
}
