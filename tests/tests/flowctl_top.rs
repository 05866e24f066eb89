//! `flowctl top` against a switch carrying traffic: the frames it prints show the rates of the
//! ports that carry it, the drops by reason, the dataplane thread's busy share and the flow
//! that matched, and none on the port that carries nothing.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use patchbay_switch::control::flows::{self, FlowLine};
use patchbay_tests::frames::*;
use patchbay_tests::switch::{
    access_ports, connect, received_now, send_done, start_switch, workspace_bin, TestDir,
};
use serde_json::Value;

/// Runs `flowctl top ARGS` while port a sends to b (one frame in ten tagged: a vlan-filter
/// drop on an access port) and b drains its ring.
fn top_under_traffic(dir: &TestDir, args: &[&str]) -> Output {
    let mut a = connect(dir, "a");
    let mut b = connect(dir, "b");
    let mut child: Child = Command::new(workspace_bin("flowctl"))
        .arg("--socket")
        .arg(dir.join("control.sock"))
        .arg("top")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flowctl runs");
    let start = Instant::now();
    let mut n = 0u32;
    while child.try_wait().expect("flowctl status").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "flowctl top did not exit"
        );
        let f = if n % 10 == 9 {
            tagged(BROADCAST, mac(1), 7, 0, n, 100)
        } else {
            frame(mac(2), mac(1), n, 500)
        };
        send_done(&mut a, &f);
        while received_now(&mut b).is_some() {}
        n += 1;
    }
    child.wait_with_output().expect("flowctl output")
}

#[test]
fn flowctl_top_shows_port_rates_drops_busy_threads_and_the_busiest_flow() {
    let dir = TestDir::new("flowctl-top");
    let d = start_switch(
        &dir.path,
        access_ports(&dir.path, &[("a", 10), ("b", 10), ("idle", 10)]),
        |_| {},
    );
    let flow = FlowLine {
        line: 1,
        text: "cookie=0x9,priority=5 actions=NORMAL".into(),
    };
    flows::add_flows(&d.switch, &[flow]).expect("flow accepted");

    let out = top_under_traffic(&dir, &["--json", "-n", "2", "-d", "0.3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let frames: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(frames.len(), 2, "{text}");
    let last = &frames[1];
    let port = |name: &str| {
        last["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("port {name} in {last}"))
    };
    let rate = |v: &Value, field: &str| v[field].as_f64().unwrap_or(-1.0);
    let (a, b, idle) = (port("a"), port("b"), port("idle"));
    assert!(rate(&a, "rx_pps") > 0.0, "a sends: {a}");
    assert!(rate(&b, "tx_pps") > 0.0, "b receives: {b}");
    // 500-byte frames: the bit rate is 8 x 500 x the packet rate (a's also counts none of
    // the dropped tagged frames, which were not accepted).
    let ratio = rate(&b, "tx_bps") / rate(&b, "tx_pps");
    assert!((ratio - 4000.0).abs() < 1.0, "bits per frame {ratio}: {b}");
    assert_eq!(rate(&idle, "rx_pps"), 0.0, "{idle}");
    assert_eq!(rate(&idle, "tx_pps"), 0.0, "{idle}");
    let reasons = a["drop_reasons"].as_array().unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| r[0] == "vlan-filter" && r[1].as_f64() > Some(0.0)),
        "vlan-filter drops on a: {a}"
    );
    let busiest = &last["flows"][0];
    assert_eq!(busiest["cookie"], 9, "{last}");
    assert!(rate(busiest, "pps") > 0.0, "{busiest}");
    let threads = last["dataplane"].as_array().unwrap();
    assert!(!threads.is_empty(), "{last}");
    assert!(
        threads
            .iter()
            .any(|t| t["busy"].as_f64().is_some_and(|b| b > 0.0 && b <= 1.0)),
        "a dataplane thread was busy: {threads:?}"
    );

    // The text view: the port table and the flow.
    let out = top_under_traffic(&dir, &["-b", "-n", "1", "-d", "0.3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("patchbay top: every 0.3s, 3 ports"),
        "{text}"
    );
    assert!(text.contains("RX-PPS"), "{text}");
    let row = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("row {name}: {text}"))
    };
    assert!(row("a").contains("vlan-filter="), "{text}");
    assert!(row("idle").contains("listening"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("0x9") && l.contains("actions=")),
        "{text}"
    );

    // A delay outside 0.1..30 s is a usage error, not a hang.
    let out = Command::new(workspace_bin("flowctl"))
        .arg("--socket")
        .arg(dir.join("control.sock"))
        .args(["top", "-d", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("between 0.1 and 30"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
