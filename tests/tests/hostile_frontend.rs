//! Hostile vhost-user frontends: what a guest (or the process playing its VMM) hands the
//! switch — file descriptors, receive rings, transmit rings, memory tables — must never stall
//! or slow down the other ports, nor the control plane.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use patchbay_switch::daemon::Daemon;
use patchbay_tests::frames::*;
use patchbay_tests::frontend::*;
use patchbay_tests::switch::{
    access, access_ports, connect, connect_with, forwards, received_now, start_switch, TestDir,
};
use vhost::VhostBackend;
use vmm_sys_util::eventfd::EventFd;

const T: Duration = Duration::from_secs(5);

/// The control plane answers: ports are listed and a port can be added and removed.
fn control_plane_answers(d: &Daemon, dir: &TestDir) {
    let (tx, rx) = std::sync::mpsc::channel();
    let sw = d.switch.clone();
    let extra = access(&dir.path, "extra", 1);
    std::thread::spawn(move || {
        let listed = sw
            .ports()
            .iter()
            .filter(|p| !p.info().name.is_empty())
            .count();
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
        access_ports(&dir.path, &[("a", 1), ("hostile", 1), ("c", 1)]),
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

/// A guest transmitting flat out: every avail slot holds one valid frame, and a thread keeps
/// the avail index a whole ring ahead of the used index, so the switch never finds the ring
/// empty. Stops (and waits for the thread) when dropped.
struct FlatOut {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FlatOut {
    fn start(p: &mut TestPort, frame: &[u8]) -> FlatOut {
        Self::start_flipping(p, frame, None)
    }

    /// Like `start`, and between refills the thread also rewrites the frame's 8 bytes at
    /// `flip.0` (8-aligned in guest memory) back and forth between the original and `flip.1`:
    /// a guest changing its header while the switch works on it.
    fn start_flipping(p: &mut TestPort, frame: &[u8], flip: Option<(usize, Vec<u8>)>) -> FlatOut {
        use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
        use vm_memory::{GuestAddress, GuestMemoryBackend};
        let qsize = p.raw_tx().queue_size();
        let (buf, len) = p.raw_tx().frame_buffer(frame).unwrap();
        p.raw_tx().set_desc(0, RawDesc::new(buf, len, 0)).unwrap();
        let (_, avail, used) = p.raw_tx().ring_addrs();
        for slot in 0..u64::from(qsize) {
            p.raw_tx().write(avail + 4 + 2 * slot, &[0, 0]).unwrap();
        }
        let host = |gpa: u64| {
            p.guest_memory()
                .get_host_address(GuestAddress(gpa))
                .unwrap() as usize
        };
        let (avail_idx, used_idx) = (host(avail + 2), host(used + 2));
        let kick = p.kick_fd(TX_QUEUE);
        let hdr_len = p.header_len() as u64;
        let flip = flip.map(|(at, alt)| {
            let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().expect("8 bytes"));
            let addr = host(buf + hdr_len + at as u64);
            assert_eq!(addr % 8, 0, "the flipped word must be aligned");
            (addr, word(&frame[at..at + 8]), word(&alt))
        });
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // SAFETY: both addresses are 2-byte aligned ring indices inside the port's guest
            // memory, which stays mapped until this thread is joined (FlatOut is dropped
            // before the TestPort).
            let (avail_idx, used_idx) = unsafe {
                (
                    AtomicU16::from_ptr(avail_idx as *mut u16),
                    AtomicU16::from_ptr(used_idx as *mut u16),
                )
            };
            let mut last = None;
            let mut flips = 0u64;
            while !flag.load(Ordering::Relaxed) {
                if let Some((at, orig, alt)) = &flip {
                    flips += 1;
                    // SAFETY: an 8-byte aligned word inside the frame's buffer in guest
                    // memory, mapped until this thread is joined.
                    let word = unsafe { AtomicU64::from_ptr(*at as *mut u64) };
                    word.store(if flips % 2 == 1 { *alt } else { *orig }, Ordering::Relaxed);
                    if !flips.is_multiple_of(64) {
                        continue;
                    }
                }
                let used = u16::from_le(used_idx.load(Ordering::Acquire));
                if last != Some(used) {
                    last = Some(used);
                    avail_idx.store(used.wrapping_add(qsize).to_le(), Ordering::Release);
                    // Kick on every refill, as a guest that ignores EVENT_IDX hints may.
                    // SAFETY: writes 8 bytes from a local to the kick eventfd, which the
                    // TestPort keeps open until this thread is joined.
                    unsafe { libc::write(kick, 1u64.to_ne_bytes().as_ptr().cast(), 8) };
                }
                std::hint::spin_loop();
            }
        });
        FlatOut {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FlatOut {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_guest_transmitting_flat_out_does_not_freeze_the_control_plane() {
    let dir = TestDir::new("busy-tx");
    let d = start_switch(
        &dir.path,
        access_ports(&dir.path, &[("busy", 1), ("b", 1), ("c", 2), ("e", 2)]),
        |_| {},
    );
    let mut busy = connect(&dir, "busy");
    let mut b = connect(&dir, "b");
    b.set_rx_consumption(false).unwrap();
    let mut c = connect(&dir, "c");
    let mut e = connect(&dir, "e");
    let flood = FlatOut::start(&mut busy, &frame(BROADCAST, mac(1), 0, 64));
    let sw = d.switch.clone();
    patchbay_tests::switch::eventually("the busy guest's frames are switched", || {
        sw.port_by_name("busy")
            .unwrap()
            .counters
            .snapshot()
            .rx_packets
            > 10_000
    });
    control_plane_answers(&d, &dir);
    // Metrics are rendered from counters, without a dataplane lock.
    let (tx, rx) = std::sync::mpsc::channel();
    let control = d.control_counters.clone();
    std::thread::spawn(move || {
        let _ = tx.send(patchbay_switch::metrics::render(&sw, &control).is_ok());
    });
    assert_eq!(rx.recv_timeout(T), Ok(true), "the metrics scrape hangs");
    // Other ports keep forwarding meanwhile.
    for seq in 0..10 {
        forwards(&mut c, &mut e, &frame(mac(5), mac(3), seq, 100));
    }
    // The busy port can be removed while it transmits.
    let (tx, rx) = std::sync::mpsc::channel();
    let sw = d.switch.clone();
    std::thread::spawn(move || {
        let _ = tx.send(sw.remove_port("busy").is_ok());
    });
    assert_eq!(
        rx.recv_timeout(T),
        Ok(true),
        "del-port hangs on a busy port"
    );
    drop(flood);
    drop(busy);
    d.shutdown();
}

#[test]
fn port_state_and_counters_are_read_without_dataplane_locks() {
    let dir = TestDir::new("lock-free-reads");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), access(&dir.path, "b", 1)],
        |_| {},
    );
    let _a = connect(&dir, "a");
    let _b = connect(&dir, "b");
    let port = d.switch.port_by_name("a").unwrap();
    patchbay_tests::switch::eventually("a's rings are up", || port.info().rings_up);
    // Hold a's ring locks the way a dataplane thread holds them for a batch that never ends
    // (a guest transmitting faster than the switch drains).
    let link = port.link().unwrap();
    let _tx = link.pairs()[0].tx.lock().unwrap();
    let _rx = link.pairs()[0].rx.lock().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (sw, control) = (d.switch.clone(), d.control_counters.clone());
    std::thread::spawn(move || {
        let up = sw.ports().iter().all(|p| p.info().rings_up);
        let metrics = patchbay_switch::metrics::render(&sw, &control).is_ok();
        let _ = tx.send((up, metrics));
    });
    assert_eq!(
        rx.recv_timeout(T),
        Ok((true, true)),
        "show ports or the metrics scrape waits for a dataplane lock"
    );
}

/// Whether two bytes are a VLAN tag's EtherType (802.1Q, 802.1ad, legacy Q-in-Q).
fn is_tag(b: &[u8]) -> bool {
    matches!(u16::from_be_bytes([b[0], b[1]]), 0x8100 | 0x88a8 | 0x9100)
}

#[test]
fn the_header_decided_on_is_the_header_that_leaves() {
    let dir = TestDir::new("toctou");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 10),
            access(&dir.path, "b", 10),
            access(&dir.path, "victim", 20),
            patchbay_tests::switch::port(&dir.path, "t", "trunk", None, Some("10,20")),
        ],
        |_| {},
    );
    let mut a = connect(&dir, "a");
    let mut b = connect(&dir, "b");
    let mut victim = connect(&dir, "victim");
    let mut t = connect(&dir, "t");
    // a's frame is untagged (ethertype 0x88b5) while the switch decides, and tagged VLAN 20
    // a moment later: whatever leaves must be what the decision saw.
    let benign = frame(BROADCAST, mac(1), 0, 200);
    let mut vlan20 = 0x8100u16.to_be_bytes().to_vec();
    vlan20.extend_from_slice(&20u16.to_be_bytes());
    vlan20.extend_from_slice(&0x88b5u16.to_be_bytes());
    vlan20.extend_from_slice(&benign[18..20]);
    let flood = FlatOut::start_flipping(&mut a, &benign, Some((12, vlan20)));
    let (mut at_b, mut at_t) = (0u64, 0u64);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while (at_b < 3000 || at_t < 3000) && std::time::Instant::now() < deadline {
        b.recv_batch(&mut |f| {
            at_b += 1;
            // Torn reads of the flipping bytes are fine (the decision saw some EtherType and
            // that is what leaves); a tag is not.
            assert!(
                !is_tag(&f[12..14]),
                "b (access 10) got a tagged frame: {f:02x?}"
            );
        })
        .unwrap();
        t.recv_batch(&mut |f| {
            at_t += 1;
            assert_eq!(
                f[12..16],
                [0x81, 0x00, 0x00, 10],
                "t: not VLAN 10: {f:02x?}"
            );
            assert!(!is_tag(&f[16..18]), "t got a second tag: {f:02x?}");
        })
        .unwrap();
    }
    drop(flood);
    assert!(
        at_b > 100 && at_t > 100,
        "too few frames to judge: {at_b} at b, {at_t} at t"
    );
    assert!(
        received_now(&mut victim).is_none(),
        "VLAN 20 got a frame from VLAN 10"
    );
    drop(a);
    d.shutdown();
}

#[test]
fn a_guest_flooding_source_addresses_fills_only_its_own_share_of_the_mac_table() {
    let dir = TestDir::new("mac-flood");
    let mut limited = access(&dir.path, "d", 1);
    limited.mac_limit = Some(4);
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 1),
            access(&dir.path, "b", 1),
            access(&dir.path, "c", 1),
            limited,
        ],
        |c| {
            c.settings.mac_table_size = 40;
            c.settings.mac_limit_per_port = 16;
        },
    );
    let mut a = connect(&dir, "a");
    let mut b = connect(&dir, "b");
    let mut c = connect(&dir, "c");
    let mut dd = connect(&dir, "d");
    // a sends from 100 made-up addresses (and d from 100 more): a learns 16, d its own 4.
    for n in 0..100u32 {
        let src = [0x02, 0xaa, 0, 0, (n >> 8) as u8, n as u8];
        a.send(&frame(BROADCAST, src, n, 64)).unwrap();
        let src = [0x02, 0xdd, 0, 0, (n >> 8) as u8, n as u8];
        dd.send(&frame(BROADCAST, src, n, 64)).unwrap();
    }
    assert!(a.wait_tx_completion(T).unwrap() && dd.wait_tx_completion(T).unwrap());
    let table = d.switch.mac_table();
    let learned_on = |name: &str| {
        let id = d.switch.port_by_name(name).unwrap().id;
        table.port_entries(id)
    };
    assert_eq!((learned_on("a"), learned_on("d")), (16, 4));
    let refused = |name: &str| {
        d.switch
            .port_by_name(name)
            .unwrap()
            .counters
            .snapshot()
            .mac_learn_refused
    };
    assert_eq!((refused("a"), refused("d")), (84, 96));
    // Everyone else still learns: b's address is learned, so a frame to b goes to b alone.
    b.send(&frame(BROADCAST, mac(2), 1, 64)).unwrap();
    assert!(b.wait_tx_completion(T).unwrap());
    for p in [&mut a, &mut b, &mut c, &mut dd] {
        while p.recv(Duration::ZERO).unwrap().is_some() {}
    }
    forwards(&mut c, &mut b, &frame(mac(2), mac(3), 2, 64));
    assert!(
        received_now(&mut a).is_none() && received_now(&mut dd).is_none(),
        "a frame to a learned address was flooded"
    );
    let body = patchbay_switch::metrics::render(&d.switch, &d.control_counters).unwrap();
    assert!(body.contains("patchbay_port_mac_learn_refused_total{port=\"a\"} 84"));
    d.shutdown();
}

#[test]
fn a_receiver_posting_garbage_costs_the_sender_bounded_work() {
    let dir = TestDir::new("rx-garbage");
    let d = start_switch(
        &dir.path,
        access_ports(&dir.path, &[("a", 1), ("b", 1), ("c", 1)]),
        |_| {},
    );
    let mut a = connect(&dir, "a");
    let mut b = connect(&dir, "b");
    let mut c = connect(&dir, "c");
    // b uses up its real buffers, then posts 200 malformed ones (read-only descriptors where
    // the device must write), all in front of the frames the switch would deliver to it.
    b.set_rx_consumption(false).unwrap();
    for n in 0..b.rx_posted() as u32 {
        forwards(&mut a, &mut c, &frame(BROADCAST, mac(1), n, 64));
        assert!(b.recv(T).unwrap().is_some());
    }
    assert_eq!(b.rx_posted(), 0);
    let buf = b.raw_rx().alloc(2048).unwrap();
    b.raw_rx().set_desc(0, RawDesc::new(buf, 2048, 0)).unwrap();
    for _ in 0..200 {
        b.raw_rx().push(0).unwrap();
    }
    b.raw_rx().kick().unwrap();
    let (_, _, used) = b.raw_rx().ring_addrs();
    let used_idx = |b: &mut TestPort| {
        let v = b.raw_rx().read(used + 2, 2).unwrap();
        u16::from_le_bytes([v[0], v[1]])
    };
    let before = used_idx(&mut b);
    // One frame for b: the switch walks a bounded number of b's garbage chains for it (each
    // returned unused and counted), not all 200, and a and c carry on.
    forwards(&mut a, &mut c, &frame(BROADCAST, mac(1), 1000, 64));
    let walked = used_idx(&mut b).wrapping_sub(before);
    assert!(
        (1..=8).contains(&walked),
        "the sender's thread walked {walked} of the receiver's garbage chains for one frame"
    );
    let snap = d.switch.port_by_name("b").unwrap().counters.snapshot();
    assert_eq!(snap.drop_count("bad-descriptor"), u64::from(walked));
    assert!(snap.drop_count("no-buffer") >= 1);
    b.raw_rx().forget_outstanding();
    d.shutdown();
}

#[test]
fn a_dataplane_panic_is_counted_shown_and_fails_only_its_port() {
    let dir = TestDir::new("panic");
    let d = start_switch(
        &dir.path,
        access_ports(&dir.path, &[("a", 1), ("b", 1), ("c", 1)]),
        |_| {},
    );
    let mut a = connect(&dir, "a");
    let mut b = connect(&dir, "b");
    let mut c = connect(&dir, "c");
    let port = d.switch.port_by_name("a").unwrap();
    patchbay_switch::dataplane::inject_panic(&port);
    a.send(&frame(BROADCAST, mac(1), 1, 64)).unwrap();
    patchbay_tests::switch::eventually("the panic fails a's connection", || port.link().is_none());
    let info = port.info();
    assert_eq!(info.counters.dataplane_panics, 1);
    assert!(
        info.failure
            .as_deref()
            .is_some_and(|f| f.contains("dataplane panic") && f.contains("injected")),
        "show ports says why: {:?}",
        info.failure
    );
    let body = patchbay_switch::metrics::render(&d.switch, &d.control_counters).unwrap();
    assert!(body.contains("patchbay_port_dataplane_panics_total{port=\"a\"} 1"));
    // The other ports never noticed, and a new frontend on a gets a working port.
    forwards(&mut b, &mut c, &frame(BROADCAST, mac(2), 2, 64));
    drop(a);
    let mut a = connect(&dir, "a");
    forwards(&mut a, &mut b, &frame(mac(2), mac(1), 3, 64));
    d.shutdown();
}

/// A switch with access ports a, b and c on VLAN 1, the three connected, and the flows that
/// `rules` makes from the ports' numbers installed.
fn with_flows(
    dir: &TestDir,
    rules: impl Fn(u16, u16, u16) -> Vec<String>,
) -> (Daemon, TestPort, TestPort, TestPort) {
    use patchbay_switch::control::flows::{add_flows, FlowLine};
    let d = start_switch(
        &dir.path,
        access_ports(&dir.path, &[("a", 1), ("b", 1), ("c", 1)]),
        |_| {},
    );
    let a = connect(dir, "a");
    let b = connect(dir, "b");
    let c = connect(dir, "c");
    let id = |name: &str| d.switch.port_by_name(name).unwrap().id;
    let lines: Vec<FlowLine> = rules(id("a"), id("b"), id("c"))
        .into_iter()
        .enumerate()
        .map(|(i, text)| FlowLine { line: i + 1, text })
        .collect();
    add_flows(&d.switch, &lines).expect("flows");
    (d, a, b, c)
}

#[test]
fn the_flow_tables_send_what_they_matched() {
    let dir = TestDir::new("toctou-flows");
    let (d, mut a, mut b, mut c) = with_flows(&dir, |ida, idb, idc| {
        vec![
            format!("priority=10,in_port={ida},dl_type=0x88b5,actions=output:{idb}"),
            format!("priority=5,in_port={ida},actions=output:{idc}"),
        ]
    });
    // a's EtherType flips between 0x88b5 (to b) and IPv4 (to c) while the switch works.
    let experimental = frame(BROADCAST, mac(1), 0, 200);
    let mut ipv4 = vec![0x08, 0x00, 0x45, 0x00];
    ipv4.extend_from_slice(&experimental[16..20]);
    let flood = FlatOut::start_flipping(&mut a, &experimental, Some((12, ipv4)));
    watch_while_flipping(flood, &mut b, &mut c, |port, f| {
        if port == 0 {
            assert_eq!(
                f[12..14],
                [0x88, 0xb5],
                "b got what the 0x88b5 flow did not match"
            );
        } else {
            assert_ne!(
                f[12..14],
                [0x88, 0xb5],
                "c got what the 0x88b5 flow matched"
            );
        }
    });
    drop(a);
    d.shutdown();
}

/// Checks what b (port 0) and c (port 1) receive while `flood` flips its frame, until each
/// had 3000 frames or 3 s passed; at least 100 each, or the test says it cannot judge.
fn watch_while_flipping(
    flood: FlatOut,
    b: &mut TestPort,
    c: &mut TestPort,
    check: impl Fn(usize, &[u8]),
) {
    let mut counts = [0u64; 2];
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while counts.iter().any(|&n| n < 3000) && std::time::Instant::now() < deadline {
        for (i, port) in [&mut *b, &mut *c].into_iter().enumerate() {
            port.recv_batch(&mut |f| {
                counts[i] += 1;
                check(i, f);
            })
            .unwrap();
        }
        // Not a third spinning thread on two cores: the flipping one must run while the
        // switch works (sharing a core, it flips only between the switch's time slices,
        // and a frame never changes under the switch).
        std::thread::sleep(Duration::from_micros(200));
    }
    drop(flood);
    assert!(
        counts.iter().all(|&n| n > 100),
        "too few frames to judge: {} at b, {} at c",
        counts[0],
        counts[1]
    );
}

#[test]
fn the_learning_switch_after_the_flow_tables_sends_what_they_matched() {
    let dir = TestDir::new("toctou-normal");
    // UDP from a is dropped; the rest goes to the learning switch (here: flooded to b, c).
    let (d, mut a, mut b, mut c) = with_flows(&dir, |ida, _, _| {
        vec![
            format!("priority=10,in_port={ida},udp,actions=drop"),
            "priority=0,actions=NORMAL".to_string(),
        ]
    });
    // A broadcast IPv4 frame whose protocol (byte 23) flips between TCP and UDP while the
    // switch works: only what the tables saw as TCP may leave, and it must leave as TCP.
    let mut tcp = frame(BROADCAST, mac(1), 0, 200);
    tcp[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    tcp[14..34].copy_from_slice(&[
        0x45, 0, 0, 186, 0, 1, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    let mut udp = tcp[20..28].to_vec();
    udp[3] = 17;
    let flood = FlatOut::start_flipping(&mut a, &tcp, Some((20, udp)));
    watch_while_flipping(flood, &mut b, &mut c, |_, f| {
        assert_eq!(f[23], 6, "a frame the tables dropped as UDP left as one");
    });
    let dropped = d.switch.flows().dump(&Default::default())[0].packets;
    assert!(
        dropped > 100,
        "too few frames were UDP when matched: {dropped}"
    );
    drop(a);
    d.shutdown();
}
