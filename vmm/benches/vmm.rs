//! The bundled VMM and guest on an in-process switch (`cargo bench -p patchbay-vmm --bench
//! vmm`):
//!
//! - VM start to first frame: from spawning `patchbay-vmm` (`ping PEER 1` on a fresh switch
//!   port) to the port's `rx_packets` counter leaving 0, polled every 50 us; also the VMM's
//!   own `--verbose` "VM creation to guest entry" figure.
//! - ping RTT through the switch: a `udp-echo` VM answers a `ping PEER COUNT` VM; the guest's
//!   `rtt_us` lines, without the first (it includes ARP).
//! - guest-to-guest TCP: a `tcp-source` VM sends to a `tcp-sink` VM through the switch (both
//!   report Gbit/s; the checksums must match).
//! - the ceiling: `tcp-loopback` of the same size inside one VM (two smoltcp interfaces on an
//!   in-memory wire, one vCPU, no NIC), and guest-to-guest / loopback per round.
//!
//! Settings: `PATCHBAY_BENCH_ROUNDS` (TCP and ping rounds, default 2),
//! `PATCHBAY_BENCH_VMM_BYTES` (TCP transfer size, K/M/G suffixes, default 1G),
//! `PATCHBAY_BENCH_VMM_STARTS` (VM starts, default 10), `PATCHBAY_BENCH_VMM_PINGS` (pings per
//! round, default 100). Skipped (exit status 0) without a usable /dev/kvm.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use patchbay_switch::daemon::Daemon;
use patchbay_tests::switch::{access, start_switch, TestDir};

#[path = "../tests/common/console.rs"]
mod console;
use console::Vm;

const T: Duration = Duration::from_secs(30);
/// A transfer of the default 1 GiB takes a few seconds; allow for slow hosts.
const TCP_TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_micros(50);
const VLAN: u16 = 10;
const ECHO_IP: &str = "10.0.0.2";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn num(line: &str, key: &str) -> f64 {
    field(line, key)
        .parse()
        .unwrap_or_else(|_| panic!("bad {key}= in {line:?}"))
}

/// Sorted copy; the value at quantile `q` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

struct Start {
    first_frame_ms: f64,
    entry_ms: Option<f64>,
}

/// Spawns `ping ECHO_IP 1` on the unused port `name` and times the first frame the switch
/// receives from it.
fn vm_start(d: &Daemon, dir: &TestDir, name: &str, ip: &str) -> Start {
    let port = d.switch.port_by_name(name).expect("start port");
    let rx = &port.counters.rx_packets;
    assert_eq!(rx.load(Ordering::Relaxed), 0, "port {name} is not fresh");
    let sock = dir.join(&format!("{name}.sock"));
    let t0 = Instant::now();
    let mut vm = Vm::spawn(Some((&sock, ip)), &format!("ping {ECHO_IP} 1"), true);
    let first = loop {
        if rx.load(Ordering::Relaxed) > 0 {
            break t0.elapsed();
        }
        if t0.elapsed() > T {
            panic!("no frame from the VM in {T:?}; so far:\n{}", vm.console());
        }
        std::thread::sleep(POLL);
    };
    let done = vm.expect("PING-DONE", T);
    assert_eq!(field(&done, "received"), "1", "{done}");
    let (status, lines) = vm.wait(T);
    assert_eq!(status, 0, "{}", lines.join("\n"));
    // "patchbay-vmm: VM creation to guest entry: 1053 us (...)"
    let entry_ms = lines.iter().find_map(|l| {
        let rest = l.split_once("VM creation to guest entry: ")?.1;
        Some(rest.split_whitespace().next()?.parse::<f64>().ok()? / 1e3)
    });
    Start {
        first_frame_ms: first.as_secs_f64() * 1e3,
        entry_ms,
    }
}

/// `count` pings from the port `ping` to the echo VM: the rtt_us values of seq 2.. and seq 1.
fn ping_round(dir: &TestDir, count: u32) -> (Vec<f64>, f64) {
    let mut vm = Vm::spawn(
        Some((&dir.join("ping.sock"), "10.0.0.1/24")),
        &format!("ping {ECHO_IP} {count}"),
        false,
    );
    let done = vm.expect("PING-DONE", T);
    assert_eq!(
        field(&done, "received"),
        count.to_string(),
        "lost pings: {}",
        vm.console()
    );
    let (status, lines) = vm.wait(T);
    assert_eq!(status, 0, "{}", lines.join("\n"));
    let mut first = f64::NAN;
    let mut rtts = Vec::new();
    for l in lines.iter().filter(|l| l.starts_with("PING seq=")) {
        let rtt = num(l, "rtt_us");
        if field(l, "seq") == "1" {
            first = rtt;
        } else {
            rtts.push(rtt);
        }
    }
    (rtts, first)
}

struct Transfer {
    source_gbps: f64,
    sink_gbps: f64,
    checksum: String,
}

/// `bytes` from a tcp-source VM to a tcp-sink VM through the switch.
fn guest_to_guest(dir: &TestDir, bytes: u64) -> Transfer {
    let mut sink = Vm::spawn(
        Some((&dir.join("sink.sock"), "10.0.0.4/24")),
        "tcp-sink 5001",
        false,
    );
    sink.expect("TCP-SINK listening", T);
    let mut source = Vm::spawn(
        Some((&dir.join("source.sock"), "10.0.0.3/24")),
        &format!("tcp-source 10.0.0.4 5001 {bytes}"),
        false,
    );
    let sent = source.expect("TCP-SOURCE bytes=", TCP_TIMEOUT);
    let got = sink.expect("TCP-SINK bytes=", TCP_TIMEOUT);
    let report = format!("{sent}\n{got}");
    assert_eq!(field(&sent, "bytes"), bytes.to_string(), "{report}");
    assert_eq!(field(&got, "bytes"), bytes.to_string(), "{report}");
    assert_eq!(
        field(&got, "checksum"),
        field(&sent, "checksum"),
        "CHECKSUM MISMATCH through the switch:\n{report}"
    );
    let (s1, l1) = source.wait(T);
    let (s2, l2) = sink.wait(T);
    assert!(
        s1 == 0 && s2 == 0,
        "source {s1}, sink {s2}:\n{}\n--\n{}",
        l1.join("\n"),
        l2.join("\n")
    );
    Transfer {
        source_gbps: num(&sent, "gbps"),
        sink_gbps: num(&got, "gbps"),
        checksum: field(&got, "checksum").to_string(),
    }
}

/// `tcp-loopback bytes` in one VM without a NIC: (Gbit/s, checksum).
fn loopback(bytes: u64) -> (f64, String) {
    let mut vm = Vm::spawn(None, &format!("tcp-loopback {bytes}"), false);
    let line = vm.expect("TCP-LOOPBACK bytes=", TCP_TIMEOUT);
    assert_eq!(field(&line, "bytes"), bytes.to_string(), "{line}");
    let (status, lines) = vm.wait(T);
    assert_eq!(status, 0, "{}", lines.join("\n"));
    (num(&line, "gbps"), field(&line, "checksum").to_string())
}

fn main() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        println!("vmm bench: SKIPPED: cannot run VMs: /dev/kvm: {e}");
        return;
    }
    let rounds: usize = env_or("PATCHBAY_BENCH_ROUNDS", 2usize).max(1);
    let starts: usize = env_or("PATCHBAY_BENCH_VMM_STARTS", 10usize).max(1);
    let pings: u32 = env_or("PATCHBAY_BENCH_VMM_PINGS", 100u32).max(2);
    let bytes_text = std::env::var("PATCHBAY_BENCH_VMM_BYTES").unwrap_or_else(|_| "1G".into());
    let bytes = patchbay_vmm::memory::parse_size(&bytes_text)
        .unwrap_or_else(|e| panic!("PATCHBAY_BENCH_VMM_BYTES: {e}"));
    let t_run = Instant::now();
    println!(
        "vmm: {starts} VM starts, {rounds} rounds of {pings} pings and of {bytes} bytes TCP \
         ({:.2} GiB); {} CPUs",
        bytes as f64 / (1u64 << 30) as f64,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let dir = TestDir::new("bench-vmm");
    let mut ports = vec![
        access(&dir.path, "echo", VLAN),
        access(&dir.path, "ping", VLAN),
        access(&dir.path, "source", VLAN),
        access(&dir.path, "sink", VLAN),
    ];
    ports.extend((0..starts).map(|i| access(&dir.path, &format!("start{i}"), VLAN)));
    let d = start_switch(&dir.path, ports, |_| {});

    // The responder for the start runs and the pings.
    let mut echo = Vm::spawn(
        Some((&dir.join("echo.sock"), &format!("{ECHO_IP}/24"))),
        "udp-echo 7",
        false,
    );
    echo.expect("UDP-ECHO listening", T);

    let mut start_runs = Vec::new();
    for i in 0..starts {
        let ip = format!("10.0.0.{}/24", 10 + i % 240);
        let s = vm_start(&d, &dir, &format!("start{i}"), &ip);
        println!(
            "  start {:>2}: first frame after {:6.2} ms (VMM: creation to guest entry {})",
            i + 1,
            s.first_frame_ms,
            s.entry_ms.map_or("?".into(), |ms| format!("{ms:.2} ms"))
        );
        start_runs.push(s);
    }

    let mut ping_rounds = Vec::new();
    for round in 1..=rounds {
        let (rtts, first) = ping_round(&dir, pings);
        let s = sorted(&rtts);
        println!(
            "  ping round {round}: median {:.0} us, p99 {:.0} us, min {:.0}, max {:.0} ({} \
             samples; seq 1 with ARP {first:.0} us)",
            quantile(&s, 0.5),
            quantile(&s, 0.99),
            s[0],
            s[s.len() - 1],
            s.len()
        );
        ping_rounds.push(s);
    }
    drop(echo);

    let mut tcp = Vec::new();
    for round in 1..=rounds {
        let g = guest_to_guest(&dir, bytes);
        println!(
            "  tcp round {round}: guest-to-guest source {:.3} / sink {:.3} Gbit/s",
            g.source_gbps, g.sink_gbps
        );
        let (lo, lo_sum) = loopback(bytes);
        assert_eq!(
            lo_sum, g.checksum,
            "CHECKSUM MISMATCH: tcp-loopback vs guest-to-guest of the same {bytes} bytes"
        );
        println!("  tcp round {round}: loopback {lo:.3} Gbit/s (checksums match: {lo_sum})");
        tcp.push((g, lo));
    }
    d.shutdown();

    // The table.
    let w = 11;
    let per = |f: &dyn Fn(usize) -> String| -> String {
        (0..rounds)
            .map(|r| format!("{:>w$}", f(r)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!();
    let first: Vec<f64> = start_runs.iter().map(|s| s.first_frame_ms).collect();
    let entry: Vec<f64> = start_runs.iter().filter_map(|s| s.entry_ms).collect();
    let (f, e) = (sorted(&first), sorted(&entry));
    println!(
        "VM start to first frame ({starts} runs): min {:.2} / median {:.2} / max {:.2} ms; \
         VMM creation to guest entry: median {:.2} ms",
        f[0],
        quantile(&f, 0.5),
        f[f.len() - 1],
        quantile(&e, 0.5)
    );
    println!(
        "{:<40} {}",
        "per round",
        per(&|r| format!("round {}", r + 1))
    );
    println!(
        "{:<40} {}",
        "ping RTT median / p99 (us)",
        per(&|r| {
            let s = &ping_rounds[r];
            format!("{:.0} / {:.0}", quantile(s, 0.5), quantile(s, 0.99))
        })
    );
    println!(
        "{:<40} {}",
        "TCP guest-to-guest Gbit/s (source/sink)",
        per(&|r| format!("{:.2}/{:.2}", tcp[r].0.source_gbps, tcp[r].0.sink_gbps))
    );
    println!(
        "{:<40} {}",
        "TCP loopback in one guest Gbit/s",
        per(&|r| format!("{:.2}", tcp[r].1))
    );
    println!(
        "{:<40} {}",
        "ratio guest-to-guest / loopback",
        per(&|r| format!("{:.2}", tcp[r].0.sink_gbps / tcp[r].1))
    );
    println!(
        "first frame: spawn of patchbay-vmm to the switch port's rx_packets > 0 (polled every \
         {POLL:?}); ping: seq 2..{pings}, each sent when the previous reply arrived; Gbit/s as \
         the guests report it (10^9 bit/s of TCP payload, smoltcp, MTU 1500); ratio uses the \
         sink's figure; loopback: two interfaces on an in-memory wire in one vCPU, no NIC"
    );
    println!("total time {:.1} s", t_run.elapsed().as_secs_f64());
}
