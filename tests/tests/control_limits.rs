//! Hardening of the control plane: concurrent add-port requests cannot both win, clients and
//! flows are bounded, big bundles commit correctly, and the control socket's directory must
//! be the switch's own.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use patchbay_switch::control::flows::{self, FlowLine};
use patchbay_switch::control::server::ControlServer;
use patchbay_switch::daemon::Daemon;
use patchbay_switch::port::{ConnectMode, PortConfig};
use patchbay_switch::switch::{Settings, Switch, SwitchError};
use patchbay_tests::switch::{access, start_switch, TestDir};

/// A client-mode port (the switch dials `socket`, which nobody serves: no socket is bound, so
/// only the port table decides who wins).
fn client_port(name: &str, socket: &Path) -> PortConfig {
    PortConfig {
        name: name.to_string(),
        kind: Default::default(),
        interface: None,
        socket: socket.to_path_buf(),
        mode: ConnectMode::Client,
        mac: None,
        vlan_mode: None,
        vlan: None,
        trunks: None,
        mac_limit: None,
        offloads: None,
        queue_pairs: None,
        allowed_macs: Vec::new(),
        allowed_ips: Vec::new(),
        dhcp_server: false,
        ingress_policing_rate: None,
        ingress_policing_burst: None,
        socket_mode: None,
        socket_group: None,
    }
}

/// Runs `make(i)` on `threads` threads released at once; returns each add_port result.
fn add_concurrently(
    sw: &Arc<Switch>,
    threads: usize,
    make: impl Fn(usize) -> PortConfig + Send + Sync + 'static,
) -> Vec<Result<u16, SwitchError>> {
    let barrier = Arc::new(Barrier::new(threads));
    let make = Arc::new(make);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (sw, barrier, make) = (sw.clone(), barrier.clone(), make.clone());
            std::thread::spawn(move || {
                let config = make(i);
                barrier.wait();
                sw.add_port(config)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("add_port thread"))
        .collect()
}

#[test]
fn concurrent_add_port_with_one_name_or_socket_has_exactly_one_winner() {
    let dir = TestDir::new("addport-race");
    let sw = Switch::new(Settings::default()).expect("a switch");
    const THREADS: usize = 16;
    for round in 0..20 {
        let name = format!("dup{round}");
        let base = dir.path.clone();
        let results = add_concurrently(&sw, THREADS, move |i| {
            client_port(&name, &base.join(format!("n{round}-{i}.sock")))
        });
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: same name: {results:?}");
        assert!(results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, SwitchError::DuplicateName(_))));
        let named = sw
            .ports()
            .iter()
            .filter(|p| p.name == format!("dup{round}"))
            .count();
        assert_eq!(
            named, 1,
            "round {round}: one port of that name in the table"
        );

        let socket = dir.join(&format!("shared{round}.sock"));
        let results = add_concurrently(&sw, THREADS, move |i| {
            client_port(&format!("s{round}-{i}"), &socket)
        });
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: same socket: {results:?}");
        assert!(results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, SwitchError::DuplicateSocket { .. })));
    }
    sw.shutdown();
}

fn lines_of(texts: impl IntoIterator<Item = String>) -> Vec<FlowLine> {
    texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| FlowLine { line: i + 1, text })
        .collect()
}

fn flow_count(d: &Daemon) -> usize {
    flows::dump_flows(&d.switch, None).expect("dump").len()
}

#[test]
fn a_bundle_that_would_pass_max_flows_is_refused_whole() {
    let dir = TestDir::new("max-flows");
    let d = start_switch(&dir.path, vec![], |c| c.settings.max_flows = 100);
    let batch = |from: usize, n: usize| {
        lines_of((from..from + n).map(|i| {
            format!(
                "priority=10,ip,nw_src=10.0.{}.{} actions=drop",
                i / 256,
                i % 256
            )
        }))
    };
    assert_eq!(flows::add_flows(&d.switch, &batch(0, 60)), Ok(60));
    let e = flows::add_flows(&d.switch, &batch(60, 50)).expect_err("110 flows > 100");
    assert!(
        e.contains("100") && e.contains("max_flows"),
        "the error names the limit: {e}"
    );
    assert_eq!(
        flow_count(&d),
        60,
        "nothing of the refused bundle was added"
    );
    // Replacing existing flows does not count twice; deleting in the same bundle makes room.
    assert_eq!(flows::add_flows(&d.switch, &batch(0, 60)), Ok(60));
    let mut mixed = batch(60, 45);
    mixed.extend(lines_of(
        (0..10).map(|i| format!("delete_strict priority=10,ip,nw_src=10.0.0.{i}")),
    ));
    assert!(
        flows::add_flows(&d.switch, &mixed).is_ok(),
        "60 + 45 - 10 = 95 fits"
    );
    assert_eq!(flow_count(&d), 95);
    let e = flows::replace_flows(&d.switch, &batch(1000, 101)).expect_err("101 > 100");
    assert!(e.contains("max_flows"), "{e}");
    assert_eq!(flow_count(&d), 95);
    assert!(flows::replace_flows(&d.switch, &batch(1000, 100)).is_ok());
    assert_eq!(flow_count(&d), 100);

    // Through the protocol: an error response, counted.
    let before = d.control_counters.errors.load(Ordering::Relaxed);
    let (response, _) = request(
        &d.control_socket,
        &serde_json::json!({"version":1,"command":"add-flows","flows":[{"line":1,"text":"priority=1,arp actions=drop"}]}),
    );
    assert_eq!(response["ok"], false, "{response}");
    assert!(
        response["error"]
            .as_str()
            .unwrap_or("")
            .contains("max_flows"),
        "{response}"
    );
    assert_eq!(
        d.control_counters.errors.load(Ordering::Relaxed),
        before + 1
    );
    d.shutdown();
}

/// Sends one request on a fresh connection; returns the response and the stream.
fn request(socket: &Path, req: &serde_json::Value) -> (serde_json::Value, UnixStream) {
    let mut s = UnixStream::connect(socket).expect("connect to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    writeln!(s, "{req}").unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    (serde_json::from_str(&line).expect("a JSON response"), s)
}

/// The big-bundle path: 1 000 one-flow requests, then 50 000 flows in one bundle (one mask
/// with many values, 2 000 distinct masks, 5 000 priorities of one match), strict deletes,
/// modifies and a replace of the whole set, each checked for its result. (One-flow requests
/// come first because each commit copies the current tables: O(flows) per request, which
/// makes 1 000 of them on top of 50 000 flows take about a minute in a debug build.) Over the
/// socket a request is at most 64 KiB, so such a bundle is sent in-process, as the
/// benchmarks do.
#[test]
fn fifty_thousand_flows_in_one_bundle_and_a_thousand_single_flow_requests() {
    let dir = TestDir::new("big-bundle");
    let d = start_switch(&dir.path, vec![access(&dir.path, "a", 1)], |_| {});
    let mut texts = Vec::new();
    for i in 0..43_000u32 {
        texts.push(format!(
            "priority={},ip,nw_src=10.{}.{}.{} actions=drop",
            100 + i % 1000,
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    for j in 1..=2_000u32 {
        // Distinct masks: one subtable each.
        texts.push(format!("priority=5,tcp,tp_dst={}/{j}", j & 0x5555) + " actions=drop");
    }
    for p in 1..=5_000u32 {
        texts.push(format!("priority={p},udp,tp_dst=53 actions=drop"));
    }
    let started = Instant::now();
    for i in 0..1_000u32 {
        let one = lines_of([format!(
            "priority=7,ip,nw_dst=192.168.{}.{} actions=drop",
            i / 256,
            i % 256
        )]);
        assert_eq!(flows::add_flows(&d.switch, &one), Ok(1));
    }
    eprintln!("1 000 single-flow requests: {:?}", started.elapsed());
    assert_eq!(flow_count(&d), 1_000);

    let bundle = lines_of(texts.clone());
    let started = Instant::now();
    assert_eq!(flows::add_flows(&d.switch, &bundle), Ok(50_000));
    eprintln!("50 000 flows in one bundle: {:?}", started.elapsed());
    assert_eq!(flow_count(&d), 51_000);

    // The classifier answers as a linear scan would.
    let trace = |packet: &str| {
        let t = flows::trace(&d.switch, packet).expect("trace");
        t.steps[0].flow.clone()
    };
    assert_eq!(
        trace("in_port=a,ip,nw_src=10.0.1.5").as_deref(),
        Some("priority=361,ip,nw_src=10.0.1.5")
    );
    assert_eq!(
        trace("in_port=a,udp,tp_dst=53").as_deref(),
        Some("priority=5000,udp,tp_dst=53"),
        "the highest of 5 000 priorities wins"
    );
    assert_eq!(
        trace("in_port=a,ip,nw_dst=192.168.3.231").as_deref(),
        Some("priority=7,ip,nw_dst=192.168.3.231")
    );

    // One bundle of 5 000 strict deletes and 1 000 strict modifies.
    let mut changes: Vec<String> = (1..=5_000u32)
        .map(|p| format!("delete_strict priority={p},udp,tp_dst=53"))
        .collect();
    changes.extend((0..1_000u32).map(|i| {
        format!(
            "modify_strict priority={},ip,nw_src=10.0.{}.{} actions=normal",
            100 + i % 1000,
            i >> 8,
            i & 255
        )
    }));
    let started = Instant::now();
    assert!(flows::add_flows(&d.switch, &lines_of(changes)).is_ok());
    eprintln!(
        "5 000 strict deletes + 1 000 strict modifies: {:?}",
        started.elapsed()
    );
    assert_eq!(flow_count(&d), 46_000);
    assert_eq!(trace("in_port=a,udp,tp_dst=53"), None, "all 5 000 deleted");
    let modified = flows::dump_flows(&d.switch, Some("ip,nw_src=10.0.3.200")).unwrap();
    assert_eq!(modified.len(), 1);
    assert_eq!(modified[0].actions_text, "NORMAL");

    // Replace the whole set by the original bundle: 45 000 of its flows are still there,
    // 1 000 of them with other actions (replaced), 5 000 are back.
    let started = Instant::now();
    let r = flows::replace_flows(&d.switch, &bundle).expect("replace");
    eprintln!("replace-flows of 50 000: {:?}", started.elapsed());
    assert_eq!((r.added, r.removed, r.unchanged), (6_000, 2_000, 44_000));
    assert_eq!(flow_count(&d), 50_000);
    let diff = flows::diff_flows(&d.switch, &bundle).expect("diff");
    assert!(diff.only_in_file.is_empty() && diff.only_in_switch.is_empty());
    d.shutdown();
}

/// Reads one response line (bounded wait); None on EOF.
fn read_response(s: &UnixStream) -> Option<serde_json::Value> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    let n = BufReader::new(s)
        .read_line(&mut line)
        .expect("a response or EOF in time");
    (n > 0).then(|| serde_json::from_str(&line).expect("a JSON response"))
}

fn hello(s: &mut UnixStream) -> serde_json::Value {
    writeln!(s, "{}", serde_json::json!({"version":1,"command":"hello"})).unwrap();
    read_response(s).expect("a response to hello")
}

#[test]
fn clients_beyond_max_clients_get_an_error_and_are_closed_and_counted() {
    let dir = TestDir::new("max-clients");
    let d = start_switch(&dir.path, vec![], |c| c.control.max_clients = 2);
    let mut first = UnixStream::connect(&d.control_socket).unwrap();
    let mut second = UnixStream::connect(&d.control_socket).unwrap();
    assert_eq!(hello(&mut first)["ok"], true);
    assert_eq!(hello(&mut second)["ok"], true);
    for n in 1..=3u64 {
        let third = UnixStream::connect(&d.control_socket).unwrap();
        let r = read_response(&third).expect("an error line before closing");
        assert_eq!(r["ok"], false, "{r}");
        let e = r["error"].as_str().unwrap_or("");
        assert!(e.contains("max_clients") && e.contains('2'), "{e}");
        assert_eq!(read_response(&third), None, "then closed");
        assert_eq!(
            d.control_counters.refused_clients.load(Ordering::Relaxed),
            n
        );
    }
    let body = patchbay_switch::metrics::render(&d.switch, &d.control_counters).unwrap();
    assert!(
        body.lines()
            .any(|l| l == "patchbay_control_refused_clients_total 3"),
        "{body}"
    );
    // A slot that frees up is usable again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Until the switch has noticed the close, a new client is still refused: its error
        // line may even arrive (and the socket close) before our request is written.
        let mut again = UnixStream::connect(&d.control_socket).unwrap();
        let hello_request = serde_json::json!({"version":1,"command":"hello"});
        if writeln!(again, "{hello_request}").is_ok()
            && read_response(&again).is_some_and(|r| r["ok"] == true)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        hello(&mut second)["ok"],
        true,
        "the connected client is unaffected"
    );
    d.shutdown();
}

#[test]
fn an_idle_client_is_disconnected_after_idle_timeout_secs_and_counted() {
    let dir = TestDir::new("idle-client");
    let d = start_switch(&dir.path, vec![], |c| c.control.idle_timeout_secs = 1);
    let mut s = UnixStream::connect(&d.control_socket).unwrap();
    assert_eq!(hello(&mut s)["ok"], true);
    // Nothing more is sent: the switch closes the connection (EOF well before 10 s).
    assert_eq!(read_response(&s), None);
    assert_eq!(d.control_counters.idle_timeouts.load(Ordering::Relaxed), 1);
    d.shutdown();
}

/// A client that trickles a request a byte at a time, never finishing it, is cut off once the
/// request has taken longer than it may (here the 1 s idle timeout), not kept for ever.
#[test]
fn a_request_trickled_a_byte_at_a_time_is_cut_off_and_counted() {
    use std::io::Write;
    let dir = TestDir::new("trickle-client");
    let d = start_switch(&dir.path, vec![], |c| c.control.idle_timeout_secs = 1);
    let mut s = UnixStream::connect(&d.control_socket).unwrap();
    let started = std::time::Instant::now();
    let mut cut = false;
    // A byte every 200 ms: never idle for the 1 s the idle timeout allows.
    while started.elapsed() < Duration::from_secs(8) {
        if s.write_all(b" ").is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(cut, "still connected after {:?}", started.elapsed());
    assert_eq!(d.control_counters.idle_timeouts.load(Ordering::Relaxed), 1);
    d.shutdown();
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn bind_error(socket: &Path) -> String {
    match ControlServer::bind(socket) {
        Ok(_) => panic!("{} was accepted", socket.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_control_directory_is_created_private_and_must_be_ours() {
    let dir = TestDir::new("control-dir");
    // Absent: created 0700.
    let fresh = dir.join("fresh");
    let server = ControlServer::bind(&fresh.join("control.sock")).expect("binds");
    assert_eq!(mode_of(&fresh), 0o700, "created private");
    drop(server);

    // A symlink to a directory of ours is still refused: it could be swapped.
    let real = dir.join("real");
    std::fs::create_dir(&real).unwrap();
    set_mode(&real, 0o700);
    let link = dir.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = bind_error(&link.join("control.sock"));
    assert!(
        e.contains(&link.display().to_string()) && e.contains("symlink"),
        "{e}"
    );
    assert!(
        !real.join("control.sock").exists(),
        "nothing was created through the link"
    );

    // Writable by group or others: refused.
    for mode in [0o777, 0o770, 0o702, 0o1777] {
        let open = dir.join(&format!("open{mode:o}"));
        std::fs::create_dir(&open).unwrap();
        set_mode(&open, mode);
        let e = bind_error(&open.join("control.sock"));
        assert!(
            e.contains(&open.display().to_string()) && e.contains("writable"),
            "mode {mode:o}: {e}"
        );
    }
    // Readable by others is fine (0755: the socket's own mode guards it).
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    set_mode(&shared, 0o755);
    drop(ControlServer::bind(&shared.join("control.sock")).expect("0755 is ours"));

    // Not a directory.
    let file = dir.join("file");
    std::fs::write(&file, b"").unwrap();
    let e = bind_error(&file.join("control.sock"));
    assert!(e.contains("not a directory"), "{e}");

    // Owned by someone else (needs root to arrange).
    if nix::unistd::Uid::effective().is_root() {
        let theirs = dir.join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        set_mode(&theirs, 0o700);
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let e = bind_error(&theirs.join("control.sock"));
        assert!(
            e.contains(&theirs.display().to_string()) && e.contains("owned by uid 65534"),
            "{e}"
        );
    } else {
        patchbay_tests::guest::skip_or_fail(
            "control directory owned by another user",
            "needs root to chown a directory to another uid",
        );
    }
}
