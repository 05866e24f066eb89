//! A real Prometheus server (Debian's `prometheus`) scrapes a running switch with the shipped
//! rules loaded (contrib/prometheus/patchbay-rules.yml): every recording and alerting rule
//! evaluates without error and returns series, and so does every query of the shipped
//! Grafana dashboard (contrib/grafana/patchbay.json) and of its variables. The switch is set
//! up so that each alert has something to say: a port whose guest left, frames dropped, a
//! full MAC table.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use patchbay_switch::control::flows::{self, FlowLine};
use patchbay_tests::frames::*;
use patchbay_tests::guest::skip_or_fail;
use patchbay_tests::switch::{
    access_ports, connect, loopback_vtep, send_done, start_switch, vxlan_test_port, TestDir,
};
use serde_json::Value;

/// How long Prometheus gets to scrape, evaluate and answer (it scrapes every second).
const DEADLINE: Duration = Duration::from_secs(60);

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(path)
}

/// A Prometheus server, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &TestDir, target: SocketAddr) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: patchbay\n    static_configs:\n      - targets: ['{target}']\n",
                contrib("prometheus/patchbay-rules.yml").display()
            ),
        )
        .unwrap();
        // A free port for its web listener (taken by Prometheus right after).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let p = Prometheus { child, addr };
        p.wait_for("Prometheus to be ready", || {
            get(p.addr, "/-/ready").is_some_and(|(status, _)| status == 200)
        });
        p
    }

    /// Runs an instant query; the result's series, or the error Prometheus gave.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = get(self.addr, &path).ok_or("no answer")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls until `expr` returns series; fails the test with Prometheus's answer if it does
    /// not within the deadline.
    fn series(&self, what: &str, expr: &str) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let answer = self.query(expr);
            match &answer {
                Ok(series) if !series.is_empty() => return series.clone(),
                _ if start.elapsed() > DEADLINE => {
                    panic!("{what}: `{expr}` returned no series: {answer:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn wait_for(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The loaded rules, as /api/v1/rules lists them.
    fn rules(&self) -> Vec<Value> {
        let (_, body) = get(self.addr, "/api/v1/rules").expect("rules answer");
        let v: Value = serde_json::from_str(&body).expect("rules JSON");
        v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

/// An HTTP/1.0 GET: (status, body), None if the server is not there (yet).
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` in the dashboard (panels nested in rows included), with its panel's title.
fn dashboard_queries(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
            if let Some(Value::String(e)) = m.get("expr") {
                out.push((title.to_string(), e.clone()));
            }
            for child in m.values() {
                dashboard_queries(child, title, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| dashboard_queries(c, title, out)),
        _ => {}
    }
}

/// A dashboard query as Grafana would send it with "All" selected.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".*")
        .replace("$port", ".*")
}

#[test]
fn prometheus_evaluates_every_shipped_rule_and_dashboard_query() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        skip_or_fail(
            "prometheus_evaluates_every_shipped_rule_and_dashboard_query",
            "prometheus not installed (the prometheus package; .ci/install-deps.sh)",
        );
        return;
    }
    let dir = TestDir::new("prometheus");
    let vxlan_port = vxlan_test_port();
    let d = start_switch(
        &dir.path,
        access_ports(&dir.path, &[("a", 10), ("b", 10), ("c", 10)]),
        |c| {
            c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
            // Three addresses: the fourth source is refused (the table-full alert).
            c.settings.mac_table_size = 3;
            c.vxlan = Some(loopback_vtep(vxlan_port));
        },
    );
    let line = |text: &str| FlowLine {
        line: 1,
        text: text.to_string(),
    };
    flows::add_flows(&d.switch, &[line("cookie=0x7,priority=1 actions=NORMAL")])
        .expect("flow accepted");
    let mut a = connect(&dir, "a");
    let mut b = connect(&dir, "b");
    // A guest that came and went: its port is down (the port-down alert).
    drop(connect(&dir, "c"));
    let c_down = || d.switch.ports().iter().any(|p| p.name == "c" && !p.is_up());
    let start = Instant::now();
    while !c_down() {
        assert!(start.elapsed() < DEADLINE, "port c never went down");
        std::thread::sleep(Duration::from_millis(50));
    }

    let prometheus = Prometheus::start(&dir, d.metrics_addr.expect("metrics enabled"));
    // A first scrape before the drops and the refused addresses, so that increase() sees them.
    prometheus.series("first scrape", "patchbay_mac_table_full_total == 0");

    for n in 0..20 {
        send_done(&mut a, &frame(BROADCAST, mac(1), n, 100));
    }
    for n in 2..=5 {
        send_done(&mut a, &frame(mac(1), mac(n), 0, 100));
    }
    // A tagged frame on an access port: a vlan-filter drop.
    send_done(&mut a, &tagged(BROADCAST, mac(1), 7, 0, 99, 100));
    while b.recv(Duration::from_millis(10)).unwrap().is_some() {}
    prometheus.series(
        "the refused address scraped",
        "patchbay_mac_table_full_total > 0",
    );
    prometheus.series(
        "the drop scraped",
        "patchbay_port_drops_total{port=\"a\",reason=\"vlan-filter\"} > 0",
    );

    // The rules: all loaded, all evaluated without error, and every one returns series.
    let rules = prometheus.rules();
    let names: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
    for expected in [
        "PatchbayPortDown",
        "PatchbayPortDropsRising",
        "PatchbayMacTableFull",
        "patchbay:port_rx_packets:rate1m",
        "patchbay:dataplane_busy:ratio1m",
    ] {
        assert!(
            names.contains(&expected),
            "rule {expected} loaded: {names:?}"
        );
    }
    prometheus.wait_for("every rule evaluated", || {
        prometheus.rules().iter().all(|r| {
            r["health"] == "ok"
                && r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
        })
    });
    for rule in &rules {
        let name = rule["name"].as_str().unwrap_or("?");
        let expr = rule["query"].as_str().expect("a rule has a query");
        let series = prometheus.series(name, expr);
        if name == "PatchbayPortDown" {
            assert!(
                series.iter().all(|s| s["metric"]["port"] == "c"),
                "only the port whose guest left is down: {series:?}"
            );
        }
        if name == "PatchbayPortDropsRising" {
            assert!(
                series
                    .iter()
                    .any(|s| s["metric"]["port"] == "a" && s["metric"]["reason"] == "vlan-filter"),
                "the vlan-filter drop on a: {series:?}"
            );
        }
    }

    // The dashboard: its variables and every panel query return series.
    let text = std::fs::read_to_string(contrib("grafana/patchbay.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard["panels"], "", &mut queries);
    assert!(queries.len() >= 20, "dashboard queries: {queries:?}");
    // A text capture of what each panel shows (docs/metrics.md has one): `--nocapture`.
    for (title, expr) in &queries {
        let series = prometheus.series(title, &as_grafana_sends(expr));
        let first = &series[0];
        let mut labels: Vec<String> = first["metric"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !["instance", "job"].contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        println!(
            "{title} | {expr} | {} series, e.g. {{{}}} {}",
            series.len(),
            labels.join(","),
            first["value"][1].as_str().unwrap_or("?")
        );
    }
    let instances = prometheus.series("variable instance", "patchbay_build_info");
    assert_eq!(instances.len(), 1, "{instances:?}");
    let ports = prometheus.series("variable port", "patchbay_port_info");
    let mut port_names: Vec<&str> = ports
        .iter()
        .filter_map(|s| s["metric"]["port"].as_str())
        .collect();
    port_names.sort_unstable();
    assert_eq!(port_names, ["a", "b", "c", "vxlan"], "{ports:?}");
}
