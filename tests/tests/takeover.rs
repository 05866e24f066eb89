//! In-place upgrade (`patchbay-switch --takeover`): a second switch process takes the ports,
//! their connected frontends and the control and metrics sockets over from the running one,
//! which exits; the frontends never see a disconnect and no frame is lost or duplicated. A
//! takeover whose new process goes away half-way leaves the running switch as it was.

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use patchbay_tests::frames::{arp, arp_reply_for, frame, mac};
use patchbay_tests::frontend::TestPort;
use patchbay_tests::switch::{
    connect, flowctl_at, forwards, vxlan_test_port, workspace_bin, write_config_file,
    SwitchProcess, TestDir,
};
use vhost::vhost_user::VhostUserFrontend;

const START: Duration = Duration::from_secs(20);

/// The switch's config: ports a and b on VLAN 10, and VLAN 10 as VNI 42 to a remote VTEP
/// at 127.0.0.2 on UDP port `vxlan` (the test's socket).
fn write_config(dir: &TestDir, vxlan: u16) -> std::path::PathBuf {
    let sections = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [vxlan]\nlocal_ip = \"127.0.0.1\"\nport = {vxlan}\n\
         [[vxlan.vnis]]\nvni = 42\nvlan = 10\nremotes = [\"127.0.0.2\"]\n"
    );
    write_config_file(dir, &sections, &[("a", "server", 10), ("b", "server", 10)])
}

fn flowctl(dir: &TestDir, args: &[&str]) -> String {
    flowctl_at(&dir.join("control.sock"), args)
}

/// The metrics address a switch logged at start.
fn metrics_addr(line: &str) -> String {
    let at = line.find("http://").expect("metrics address logged") + "http://".len();
    line[at..].split('/').next().expect("address").to_string()
}

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint answers");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// Most frames of the stream on their way (sent, not yet received): half the receive ring.
const IN_FLIGHT: u32 = 128;

/// Frames from `a` to `b` with increasing sequence numbers, received and checked in order.
struct Stream {
    next: u32,
    received: Vec<u32>,
}

impl Stream {
    fn frame(seq: u32) -> Vec<u8> {
        frame(mac(2), mac(1), seq, 128)
    }

    /// Publishes up to `n` more frames (as many as the ring takes) and takes what arrived.
    /// At most [`IN_FLIGHT`] frames are on their way at any time: fewer than `b` has
    /// receive buffers, so a burst after a stall of the switch never finds them all taken
    /// (that would be a drop for want of buffers, which is not the takeover's doing).
    fn step(&mut self, a: &mut TestPort, b: &mut TestPort, n: u32) {
        self.take(b);
        let in_flight = self.next - self.received.len() as u32;
        let n = n.min(IN_FLIGHT.saturating_sub(in_flight));
        let frames: Vec<Vec<u8>> = (self.next..self.next + n).map(Self::frame).collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        self.next += a.send_batch(&refs).expect("send") as u32;
        self.take(b);
    }

    fn take(&mut self, b: &mut TestPort) {
        let received = &mut self.received;
        b.recv_batch(&mut |f: &[u8]| {
            received.push(u32::from_be_bytes([f[14], f[15], f[16], f[17]]));
        })
        .expect("recv");
    }

    /// Waits until every frame sent has arrived (bounded), then checks none was lost,
    /// duplicated or reordered.
    fn finish(&mut self, dir: &TestDir, a: &mut TestPort, b: &mut TestPort) {
        assert!(
            a.wait_tx_completion(Duration::from_secs(5)).expect("tx"),
            "the switch took every frame"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.received.len() < self.next as usize && Instant::now() < deadline {
            self.take(b);
            std::thread::sleep(Duration::from_millis(1));
        }
        let expected: Vec<u32> = (0..self.next).collect();
        assert_eq!(
            self.received.len(),
            expected.len(),
            "{} frames sent, {} received (missing: {:?}); the switch's counters: {}",
            self.next,
            self.received.len(),
            expected
                .iter()
                .filter(|s| !self.received.contains(s))
                .collect::<Vec<_>>(),
            flowctl(dir, &["--json", "show", "ports"])
        );
        assert_eq!(
            self.received, expected,
            "frames arrived once each, in order"
        );
    }
}

#[test]
fn a_takeover_moves_ports_frontends_flows_and_sockets_to_the_new_process() {
    let dir = TestDir::new("takeover");
    let vxlan = vxlan_test_port();
    let remote_vtep = std::net::UdpSocket::bind(("127.0.0.2", vxlan)).expect("remote VTEP");
    remote_vtep
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let config = write_config(&dir, vxlan);
    let mut old = SwitchProcess::start(&config, false);
    let running = old
        .wait_log("switch running", START)
        .expect("old switch starts");
    let metrics = metrics_addr(&running);
    let mut a = connect(&dir, "a");
    let mut b = connect(&dir, "b");
    // b's address is learned, so the stream below is forwarded, not flooded.
    forwards(&mut b, &mut a, &frame(mac(1), mac(2), 0, 64));
    // Changes made at run time travel with the handover.
    flowctl(
        &dir,
        &["add-flow", "priority=7,dl_type=0x88b5,actions=NORMAL"],
    );
    flowctl(
        &dir,
        &[
            "add-port",
            &format!("name=c,socket={},vlan=10", dir.join("c.sock").display()),
        ],
    );

    let mut stream = Stream {
        next: 0,
        received: Vec::new(),
    };
    for _ in 0..20 {
        stream.step(&mut a, &mut b, 16);
    }
    let mut new = SwitchProcess::start(&config, true);
    let old_pid = old.child.id();
    eprintln!("takeover starts at frame {}", stream.next);
    // Frames keep coming while the takeover runs: the old process serves them, then they
    // wait in the ring, then the new process serves them.
    let complete = loop {
        stream.step(&mut a, &mut b, 8);
        if let Some(line) = new.wait_log("takeover complete", Duration::from_millis(1)) {
            eprintln!("takeover complete at frame {}", stream.next);
            break line;
        }
        assert!(new.is_running(), "the new process died: {:?}", new.log);
    };
    for _ in 0..20 {
        stream.step(&mut a, &mut b, 16);
    }
    stream.finish(&dir, &mut a, &mut b);
    println!(
        "takeover: {complete}; {} frames streamed across it, none lost",
        stream.next
    );
    let status = old.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the old process exited cleanly: {status:?}"
    );
    assert!(
        old.log
            .iter()
            .any(|l| l.contains("the new process serves the ports")),
        "the old process logged the handover"
    );

    // The same vhost-user connections, now answered by the new process: a request the
    // frontend waits for an acknowledgement of (REPLY_ACK) is acknowledged.
    a.vhost()
        .set_vring_enable(0, true)
        .expect("the new process answers on the old connection");
    forwards(&mut a, &mut b, &frame(mac(2), mac(1), 99_999, 200));
    forwards(&mut b, &mut a, &frame(mac(1), mac(2), 99_998, 200));

    // The control socket is the new process's, with the run-time changes.
    let ports: serde_json::Value =
        serde_json::from_str(&flowctl(&dir, &["--json", "show", "ports"])).unwrap();
    let names: Vec<&str> = ports
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["vxlan", "a", "b", "c"]);
    for p in ports.as_array().unwrap().iter().skip(1).take(2) {
        assert_eq!(
            p["state"], "connected",
            "port {} stayed connected",
            p["name"]
        );
    }
    assert!(
        flowctl(&dir, &["dump-flows"]).contains("priority=7,dl_type=0x88b5"),
        "the flow added at run time was handed over"
    );
    // The metrics socket too, on the same address.
    let text = scrape(&metrics);
    assert!(text.starts_with("HTTP/1.1 200"), "metrics: {text}");
    assert!(text.contains("patchbay_build_info"));
    assert!(new.is_running());
    assert_ne!(new.child.id(), old_pid);
    // The tunnel is the new process's: it was opened once the old one had let it go, and
    // a broadcast from a crosses it to the remote VTEP.
    while remote_vtep.recv(&mut [0u8; 2048]).is_ok_and(|n| n > 0) {
        remote_vtep
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
    }
    remote_vtep
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let broadcast = frame([0xff; 6], mac(1), 424_242, 80);
    a.send(&broadcast).expect("send");
    let mut packet = [0u8; 2048];
    let n = remote_vtep
        .recv(&mut packet)
        .expect("a VXLAN packet reaches the remote VTEP");
    assert_eq!(&packet[4..7], &[0, 0, 42], "VNI 42");
    assert_eq!(
        &packet[8..n],
        broadcast.as_slice(),
        "the broadcast, encapsulated"
    );
    assert!(flowctl(&dir, &["show", "tunnel"]).contains("42"));
    // A frontend that connects now is served by the new process.
    let mut c = connect(&dir, "c");
    forwards(&mut c, &mut a, &frame(mac(1), mac(3), 7, 64));
}

/// A running switch (the config of [`write_config`]) with frontends on a and b, b's
/// address learned.
fn running(
    name: &str,
) -> (
    TestDir,
    std::path::PathBuf,
    SwitchProcess,
    TestPort,
    TestPort,
) {
    let dir = TestDir::new(name);
    let config = write_config(&dir, vxlan_test_port());
    let mut old = SwitchProcess::start(&config, false);
    old.wait_log("switch running", START)
        .expect("old switch starts");
    let mut a = connect(&dir, "a");
    let mut b = connect(&dir, "b");
    forwards(&mut b, &mut a, &frame(mac(1), mac(2), 0, 64));
    (dir, config, old, a, b)
}

#[test]
fn a_takeover_whose_new_process_goes_away_leaves_the_running_switch_as_it_was() {
    let (dir, config, mut old, mut a, mut b) = running("takeover-abort");

    // A "new process" that asks, reads the answer, and goes away without taking over.
    let asking = UnixStream::connect(dir.join("control.sock")).expect("control socket");
    (&asking)
        .write_all(b"{\"version\":1,\"command\":\"takeover\"}\n")
        .unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(&asking)
        .read_line(&mut answer)
        .unwrap();
    assert!(
        answer.contains("\"ok\":true"),
        "the takeover was offered: {answer}"
    );
    // The old switch is paused now: a frame sent waits in the ring.
    a.send(&frame(mac(2), mac(1), 1, 100)).expect("send");
    drop(asking);
    old.wait_log("failed", Duration::from_secs(15))
        .expect("the old switch says the takeover failed");
    assert!(old.is_running(), "the old switch goes on");
    // The frame that waited is delivered, and traffic flows both ways.
    assert_eq!(
        b.recv(Duration::from_secs(5)).expect("recv").as_deref(),
        Some(frame(mac(2), mac(1), 1, 100).as_slice())
    );
    forwards(&mut a, &mut b, &frame(mac(2), mac(1), 2, 100));
    forwards(&mut b, &mut a, &frame(mac(1), mac(2), 3, 100));
    assert!(flowctl(&dir, &["show", "ports"]).contains("connected"));

    // And a real takeover still works after the failed one.
    let mut new = SwitchProcess::start(&config, true);
    new.wait_log("takeover complete", START)
        .expect("the second takeover completes");
    assert!(old
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    forwards(&mut a, &mut b, &frame(mac(2), mac(1), 4, 100));
}

/// A new process that cannot set a connected frontend up again (its config gives the port
/// fewer queue pairs than the frontend's rings) says why and exits; the running switch takes
/// its ports back and goes on.
#[test]
fn a_takeover_the_new_process_cannot_complete_leaves_the_running_switch_serving() {
    let (dir, config, mut old, mut a, mut b) = running("takeover-refused");

    let edited = std::fs::read_to_string(&config)
        .unwrap()
        .replace("name = \"a\"\n", "name = \"a\"\nqueue_pairs = 2\n");
    let new_config = dir.join("edited.toml");
    std::fs::write(&new_config, edited).unwrap();
    let mut new = SwitchProcess::start(&new_config, true);
    let status = new.wait_exit(START).expect("the new process exits");
    assert!(!status.success(), "the new process fails: {:?}", new.log);
    let why = new.log.join("\n");
    assert!(
        why.contains("queue_pairs changed"),
        "the new process says why: {why}"
    );
    old.wait_log("failed", Duration::from_secs(15))
        .expect("the old switch says the takeover failed");
    assert!(old.is_running(), "the old switch goes on");
    forwards(&mut a, &mut b, &frame(mac(2), mac(1), 1, 100));
    forwards(&mut b, &mut a, &frame(mac(1), mac(2), 2, 100));
    a.vhost()
        .set_vring_enable(0, true)
        .expect("the old switch still answers its frontends");
}

/// An internal port's tap device is handed over too: the device is the same one afterwards
/// (same interface index, the address the host gave it still there), and the host answers
/// ARP through the new process.
#[test]
fn an_internal_ports_tap_device_survives_a_takeover() {
    const TEST: &str = "an_internal_ports_tap_device_survives_a_takeover";
    if let Err(e) = patchbay_tests::netns::available() {
        return patchbay_tests::guest::skip_or_fail(TEST, &e);
    }
    const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x0a];
    const VM_IP: [u8; 4] = [192, 0, 2, 10];
    const HOST_IP: [u8; 4] = [192, 0, 2, 1];
    const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x10, 0x01];
    let dir = TestDir::new("takeover-tap");
    let ns = patchbay_tests::netns::Netns::create("pbtko").unwrap();
    let config = write_config_file(&dir, "", &[("vm", "server", 10)]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "[[port]]\nname = \"host10\"\ntype = \"internal\"\nvlan = 10\n\
         mac = \"02:00:00:00:10:01\"\nqueue_pairs = 2\n",
    );
    std::fs::write(&config, text).unwrap();
    let in_ns = |takeover: bool| {
        let mut args = vec![
            workspace_bin("patchbay-switch").into_os_string(),
            "--config".into(),
            config.clone().into_os_string(),
        ];
        if takeover {
            args.push("--takeover".into());
        }
        SwitchProcess::spawn_command(ns.exec(args))
    };
    let mut old = in_ns(false);
    old.wait_log("switch running", START)
        .expect("old switch starts");
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "host10"])
        .unwrap();
    let index =
        |ns: &patchbay_tests::netns::Netns| ns.link_json("host10").unwrap()["ifindex"].clone();
    let before = index(&ns);
    let mut vm = connect(&dir, "vm");
    let arp_through = |vm: &mut TestPort| {
        vm.send(&arp(1, VM_MAC, VM_IP, [0; 6], HOST_IP))
            .expect("send");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(f) = vm.recv(Duration::from_millis(50)).expect("recv") {
                if let Some(mac) = arp_reply_for(&f, HOST_IP) {
                    return Some(mac);
                }
            }
        }
        None
    };
    assert_eq!(
        arp_through(&mut vm),
        Some(HOST_MAC),
        "the host answers before"
    );

    let mut new = in_ns(true);
    new.wait_log("takeover complete", START)
        .expect("the takeover completes");
    assert!(old
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    assert!(
        new.log
            .iter()
            .any(|l| l.contains("tap device host10 taken over")),
        "the new process took the device over"
    );
    assert_eq!(index(&ns), before, "the same device (interface index)");
    assert!(
        ns.ip(&["-4", "addr", "show", "dev", "host10"])
            .unwrap()
            .contains("192.0.2.1/24"),
        "the host's address on it survived"
    );
    assert_eq!(
        arp_through(&mut vm),
        Some(HOST_MAC),
        "the host answers through the new process"
    );
}
