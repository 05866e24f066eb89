//! The metrics endpoint serves valid Prometheus text (checked by `promtool check metrics`)
//! whose counters match the traffic that crossed the switch.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use patchbay_tests::frames::*;
use patchbay_tests::frontend::*;
use patchbay_tests::guest::skip_or_fail;
use patchbay_tests::switch::{access, start_switch, TestDir};

fn scrape(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_string(), body.to_string())
}

fn value(body: &str, series: &str) -> Option<u64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_pass_promtool_and_count_the_traffic() {
    let dir = TestDir::new("metrics");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 1),
            access(&dir.path, "b", 1),
            access(&dir.path, "c", 2),
        ],
        |c| {
            c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        },
    );
    let addr = d.metrics_addr.expect("metrics enabled");
    let mut a = TestPort::connect(FrontendConfig::new(dir.join("a.sock"))).unwrap();
    let mut b = TestPort::connect(FrontendConfig::new(dir.join("b.sock"))).unwrap();
    for n in 0..10 {
        a.send(&frame(BROADCAST, mac(1), n, 100)).unwrap();
    }
    assert!(a.wait_tx_completion(Duration::from_secs(5)).unwrap());
    for _ in 0..10 {
        assert!(b.recv(Duration::from_secs(5)).unwrap().is_some());
    }
    // A tagged frame on an access port: a vlan-filter drop.
    a.send(&tagged(BROADCAST, mac(1), 7, 0, 99, 100)).unwrap();
    assert!(a.wait_tx_completion(Duration::from_secs(5)).unwrap());

    let (head, body) = scrape(addr, "/metrics");
    assert!(head.contains("200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(
        value(&body, "patchbay_port_rx_packets_total{port=\"a\"}"),
        Some(10)
    );
    assert_eq!(
        value(&body, "patchbay_port_rx_bytes_total{port=\"a\"}"),
        Some(1000)
    );
    // Batches: at least one, at most one per frame (11 chains were taken from a's ring).
    let batches = value(&body, "patchbay_port_rx_batches_total{port=\"a\"}");
    assert!(
        batches.is_some_and(|b| (1..=11).contains(&b)),
        "rx batches {batches:?}"
    );
    assert_eq!(
        value(&body, "patchbay_port_tx_packets_total{port=\"b\"}"),
        Some(10)
    );
    assert_eq!(
        value(&body, "patchbay_port_tx_packets_total{port=\"c\"}"),
        Some(0)
    );
    assert_eq!(
        value(
            &body,
            "patchbay_port_drops_total{port=\"a\",reason=\"vlan-filter\"}"
        ),
        Some(1)
    );
    assert_eq!(value(&body, "patchbay_port_up{port=\"a\"}"), Some(1));
    assert_eq!(value(&body, "patchbay_port_up{port=\"c\"}"), Some(0));
    assert_eq!(value(&body, "patchbay_mac_table_entries"), Some(1));
    assert_eq!(value(&body, "patchbay_floods_total"), Some(10));
    for reason in [
        "no-buffer",
        "bad-descriptor",
        "vlan-filter",
        "too-big",
        "runt",
        "hairpin",
    ] {
        assert!(
            body.contains(&format!("reason=\"{reason}\"")),
            "drop reason {reason} is exported"
        );
    }
    assert!(scrape(addr, "/nope").0.contains("404"));

    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Err(e) => skip_or_fail(
            "promtool check metrics",
            &format!("promtool not available ({e}); install the prometheus package"),
        ),
        Ok(mut child) => {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool rejected the metrics:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    d.shutdown();
}
