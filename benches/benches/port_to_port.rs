//! Port-to-port frames per second through Patchbay, ratio'd to DPDK testpmd io-forward
//! measured in the same run.
//!
//! Two access ports in one VLAN on a switch running in this process, driven by the userspace
//! vhost-user frontend (`patchbay_tests::frontend::TestPort`): one thread, pinned to CPU 0,
//! keeps port a's TX ring full with `send_batch` and drains port b with `recv_batch` (case
//! "a->b"), or does both in both directions ("bidir"). A warm-up makes the switch learn both
//! MACs first, so the traffic is ordinary unicast. Only frames received at a sink count.
//!
//! Cases: `testpmd-io` (DPDK testpmd io-forwarding between two vhost-user ports: no lookup,
//! the floor for any vhost switch; forwarding lcore on CPU 1), `patchbay-event` (default:
//! served on guest kicks), `patchbay-poll` (`poll_cpus = [1]`). For each frame size the cases
//! run interleaved, baseline first, for several rounds, because this 2-core machine is
//! noisy: compare ratios within a run, not absolute numbers across runs.
//!
//! Settings (environment): `PATCHBAY_BENCH_SECS` (measurement per case, default 1.5),
//! `PATCHBAY_BENCH_ROUNDS` (default 2), `PATCHBAY_BENCH_SIZES` (comma-separated frame sizes
//! in bytes without FCS, default "64,1500"), `PATCHBAY_BENCH_BIDIR` (0 to skip the
//! bidirectional case), `PATCHBAY_BENCH_CASES` (comma-separated substrings of case names,
//! e.g. "poll" or "testpmd,event"; default all).
//!
//! Run with `cargo bench -p patchbay-benches`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use patchbay_benches::*;
use patchbay_switch::daemon::Daemon;
use patchbay_tests::frames::{frame, mac};
use patchbay_tests::frontend::TestPort;
use patchbay_tests::peers::Testpmd;
use patchbay_tests::switch::{access, start_switch, TestDir};

// ---------------------------------------------------------------------------------------------
// Allocation counting: proves the traffic loop (and, separately, the rest of the process,
// i.e. the switch) does not allocate per frame.
// ---------------------------------------------------------------------------------------------

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static TRAFFIC_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the traffic thread while it measures.
    static TRACK: Cell<bool> = const { Cell::new(false) };
}

fn count_alloc() {
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    if TRACK.try_with(Cell::get).unwrap_or(false) {
        TRAFFIC_ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; counting has no effect on
// the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_alloc();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Cases and the far side of the ports
// ---------------------------------------------------------------------------------------------

/// CPU the traffic thread runs on; pollers (testpmd's forwarding lcore, Patchbay's poller)
/// get the other one.
const TRAFFIC_CPU: usize = 0;
const POLL_CPU: usize = 1;
const VLAN: u16 = 10;
/// Traffic before each measurement that is not counted.
const WARM_UP: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Testpmd,
    Event,
    Poll,
    /// Event mode with this many flow rules installed (ACL-like rules that the traffic
    /// misses, then a catch-all `normal`): the whole per-packet cost of the flow tables.
    Flows(u32),
}

/// Rule counts of the flow cases.
const FLOW_CASES: [u32; 4] = [1, 100, 10_000, 100_000];

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Testpmd => "testpmd-io",
            Case::Event => "patchbay-event",
            Case::Poll => "patchbay-poll",
            Case::Flows(1) => "flows-1",
            Case::Flows(100) => "flows-100",
            Case::Flows(10_000) => "flows-10k",
            Case::Flows(_) => "flows-100k",
        }
    }
}

/// `n` flows for the flow cases: n-1 ACL-like drop rules over a few masks (as real tables
/// have few distinct masks) that this benchmark's frames never match, and a catch-all.
fn install_flows(daemon: &Daemon, n: u32) {
    use patchbay_switch::control::flows::{add_flows, FlowLine};
    let mut lines: Vec<FlowLine> = (1..n)
        .map(|i| {
            let (a, b, c) = ((i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
            let text = match i % 4 {
                0 => format!(
                    "priority={},tcp,nw_src=10.{a}.{b}.{c},tp_dst={} actions=drop",
                    100 + i % 50,
                    1 + i % 1000
                ),
                1 => format!(
                    "priority={},udp,nw_dst=10.{a}.{b}.0/24 actions=drop",
                    100 + i % 50
                ),
                2 => format!(
                    "priority={},ip,nw_src=172.{a}.{b}.0/24,nw_dst=10.{b}.{c}.0/24 actions=drop",
                    100 + i % 50
                ),
                _ => format!(
                    "priority={},in_port=a,dl_src=02:00:{a:02x}:{b:02x}:{c:02x}:01 actions=drop",
                    100 + i % 50
                ),
            };
            FlowLine {
                line: i as usize,
                text,
            }
        })
        .collect();
    lines.push(FlowLine {
        line: n as usize,
        text: "priority=0 actions=normal".into(),
    });
    if let Err(e) = add_flows(&daemon.switch, &lines) {
        panic!("installing {n} flows: {e}");
    }
}

/// What forwards between the two ports.
enum Peer {
    Testpmd(Testpmd),
    Switch { daemon: Daemon, _dir: TestDir },
}

/// Counters of the forwarder at one instant.
#[derive(Clone, Copy, Default)]
struct PeerSnap {
    cpu: f64,
    no_buffer: u64,
    floods: u64,
}

impl Peer {
    fn snap(&self) -> PeerSnap {
        match self {
            Peer::Testpmd(p) => PeerSnap {
                cpu: process_cpu(p.pid()),
                ..PeerSnap::default()
            },
            Peer::Switch { daemon, .. } => {
                let sw = &daemon.switch;
                PeerSnap {
                    cpu: threads_cpu(SWITCH_THREADS),
                    no_buffer: no_buffer_drops(sw),
                    floods: sw.counters.floods.load(Ordering::Relaxed),
                }
            }
        }
    }

    /// Resident memory of the forwarder in KiB. For the in-process switch this is the whole
    /// bench process, harness and guest memory included.
    fn rss_kib(&self) -> Option<u64> {
        match self {
            Peer::Testpmd(p) => status_kib(&p.pid().to_string(), "VmRSS"),
            Peer::Switch { .. } => status_kib("self", "VmRSS"),
        }
    }
}

/// A forwarder with a frontend connected to each of its two ports.
struct Session {
    peer: Peer,
    a: TestPort,
    b: TestPort,
}

fn open(case: Case) -> Option<Session> {
    let (peer, sock_a, sock_b) = match case {
        Case::Testpmd => {
            let mut pmd = Testpmd::start(false)?;
            pmd.set_print_stats(false);
            let (sa, sb) = (pmd.sock("a.sock"), pmd.sock("b.sock"));
            (Peer::Testpmd(pmd), sa, sb)
        }
        Case::Event | Case::Poll | Case::Flows(_) => {
            let dir = TestDir::new("bench");
            let ports = vec![access(&dir.path, "a", VLAN), access(&dir.path, "b", VLAN)];
            let daemon = start_switch(&dir.path, ports, |c| {
                if case == Case::Poll {
                    c.settings.poll_cpus = vec![POLL_CPU];
                }
            });
            if let Case::Flows(n) = case {
                install_flows(&daemon, n);
            }
            let (sa, sb) = (dir.join("a.sock"), dir.join("b.sock"));
            (Peer::Switch { daemon, _dir: dir }, sa, sb)
        }
    };
    let a = connect_frontend(sock_a);
    let b = connect_frontend(sock_b);
    Some(Session { peer, a, b })
}

impl Session {
    /// Disconnects and stops the forwarder; for testpmd returns its (TX-packets, TX-dropped)
    /// totals over the session, TX-dropped being frames with no room in the sink's RX ring.
    fn close(self) -> Option<(u64, u64)> {
        self.a.disconnect();
        self.b.disconnect();
        match self.peer {
            Peer::Testpmd(p) => testpmd_tx_totals(&p.stop()),
            Peer::Switch { daemon, _dir } => {
                daemon.shutdown();
                None
            }
        }
    }
}

/// TX-packets and TX-dropped of testpmd's "Accumulated forward statistics for all ports".
fn testpmd_tx_totals(log: &str) -> Option<(u64, u64)> {
    let acc = &log[log.rfind("Accumulated forward statistics")?..];
    let line = acc.lines().find(|l| l.contains("TX-dropped:"))?;
    let field = |name: &str| -> Option<u64> {
        let rest = &line[line.find(name)? + name.len()..];
        rest.split_whitespace().next()?.parse().ok()
    };
    Some((field("TX-packets:")?, field("TX-dropped:")?))
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

/// One measurement.
#[derive(Clone, Copy, Default)]
struct Sample {
    /// Frames received at the sink(s) per second.
    pps: f64,
    /// CPU the forwarder used, in cores.
    peer_cpu: f64,
    /// CPU the traffic thread got, in cores.
    gen_cpu: f64,
    /// Share of the time the traffic thread found nothing to send or receive (waiting on
    /// the forwarder).
    gen_idle: f64,
    no_buffer: u64,
    floods: u64,
    /// Frames of the wrong length.
    bad: u64,
    traffic_allocs: u64,
    other_allocs: u64,
    frames: u64,
}

/// Drives traffic for `WARM_UP` + `dur` on the current thread, counting from the end of the
/// warm-up.
fn drive(s: &mut Session, fa: &[u8], fb: &[u8], bidir: bool, dur: Duration) -> Sample {
    let size = fa.len();
    let q = usize::from(s.a.config().queue_size);
    let ra: Vec<&[u8]> = vec![fa; q];
    let rb: Vec<&[u8]> = vec![fb; q];
    let (mut got, mut bad) = (0u64, 0u64);
    let mut window = Window::new(WARM_UP, dur);
    let mut moved = true;
    let mut before = None;
    loop {
        match window.tick(moved) {
            Phase::Begin => {
                before = Some((got, thread_self_cpu(), s.peer.snap()));
                ALLOCS.store(0, Ordering::Relaxed);
                TRAFFIC_ALLOCS.store(0, Ordering::Relaxed);
                TRACK.with(|t| t.set(true));
                window.start();
            }
            Phase::Done => break,
            Phase::WarmUp | Phase::Measure => {}
        }
        let mut work = s.a.send_batch(&ra).expect("send a");
        if bidir {
            work += s.b.send_batch(&rb).expect("send b");
        }
        let mut check = |f: &[u8]| bad += u64::from(f.len() != size);
        let mut n = s.b.recv_batch(&mut check).expect("recv b");
        if bidir {
            n += s.a.recv_batch(&mut check).expect("recv a");
        }
        got += n as u64;
        moved = work + n > 0;
    }
    TRACK.with(|t| t.set(false));
    let (all, traffic) = (
        ALLOCS.load(Ordering::Relaxed),
        TRAFFIC_ALLOCS.load(Ordering::Relaxed),
    );
    let secs = window.secs();
    let (got0, cpu0, p0) = before.expect("measured");
    let p1 = s.peer.snap();
    let frames = got - got0;
    Sample {
        pps: frames as f64 / secs,
        peer_cpu: (p1.cpu - p0.cpu).max(0.0) / secs,
        gen_cpu: (thread_self_cpu() - cpu0) / secs,
        gen_idle: window.idle_share(),
        no_buffer: p1.no_buffer - p0.no_buffer,
        floods: p1.floods - p0.floods,
        bad,
        traffic_allocs: traffic,
        other_allocs: all - traffic,
        frames,
    }
}

/// Runs `drive` on a fresh thread pinned to `TRAFFIC_CPU` (see [`run_pinned`]).
fn measure(s: &mut Session, fa: &[u8], fb: &[u8], bidir: bool, dur: Duration) -> Sample {
    run_pinned("traffic", TRAFFIC_CPU, || drive(s, fa, fb, bidir, dur))
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// All samples of one (case, direction, size).
struct Row {
    case: Case,
    bidir: bool,
    size: usize,
    samples: Vec<Sample>,
}

impl Row {
    fn rates(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.pps).collect()
    }
    fn best(&self) -> f64 {
        best(&self.rates())
    }
    fn mean(&self, f: impl Fn(&Sample) -> f64) -> f64 {
        self.samples.iter().map(f).sum::<f64>() / self.samples.len().max(1) as f64
    }
    fn sum(&self, f: impl Fn(&Sample) -> u64) -> u64 {
        self.samples.iter().map(f).sum()
    }
}

fn print_table(rows: &[Row], rounds: usize) {
    println!();
    println!(
        "{:<15} {:<6} {:>5}  {:<width$} {:>6} {:>8} {:>6} {:>8} {:>7} {:>9} {:>9} {:>6}",
        "case",
        "dir",
        "size",
        "Mpps per round",
        "best",
        "ns/frame",
        "ratio",
        "fwd-cpu",
        "gen-cpu",
        "gen-idle",
        "no-buffer",
        "floods",
        width = 6 * rounds
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.case == Case::Testpmd && b.bidir == r.bidir && b.size == r.size)
            .map(Row::best);
        let best = r.best();
        let is_switch = r.case != Case::Testpmd;
        println!(
            "{:<15} {:<6} {:>5}  {:<width$} {:>6.2} {:>8.0} {:>6} {:>7.0}% {:>6.0}% {:>8.0}% {:>9} {:>6}",
            r.case.name(),
            if r.bidir { "bidir" } else { "a->b" },
            r.size,
            mpps_per_round(&r.rates()),
            best / 1e6,
            ns_per_frame(best),
            ratio(best, base),
            100.0 * r.mean(|s| s.peer_cpu),
            100.0 * r.mean(|s| s.gen_cpu),
            100.0 * r.mean(|s| s.gen_idle),
            if is_switch { r.sum(|s| s.no_buffer).to_string() } else { "-".into() },
            if is_switch { r.sum(|s| s.floods).to_string() } else { "-".into() },
            width = 6 * rounds
        );
    }
}

fn main() {
    let Settings {
        secs,
        dur,
        rounds,
        sizes,
    } = Settings::from_env(&[64, 1500]);
    let bidir: bool = env_or("PATCHBAY_BENCH_BIDIR", 1u8) != 0;
    let t_run = Instant::now();

    println!(
        "port_to_port: {secs} s per measurement after {WARM_UP:?} warm-up, {rounds} rounds, sizes \
         {sizes:?} (bytes without FCS), traffic thread on CPU {TRAFFIC_CPU}, pollers on CPU \
         {POLL_CPU}"
    );
    let wanted = |c: Case| case_wanted(c.name());
    let mut cases: Vec<Case> = [Case::Event, Case::Poll]
        .into_iter()
        .chain(FLOW_CASES.map(Case::Flows))
        .filter(|&c| wanted(c))
        .collect();
    match Testpmd::find() {
        Some(p) => {
            println!("baseline: {} (io-forward)", p.display());
            if wanted(Case::Testpmd) {
                cases.insert(0, Case::Testpmd);
            }
        }
        None => println!("baseline: dpdk-testpmd not installed"),
    }
    let rss_harness = status_kib("self", "VmRSS");

    let dirs: &[bool] = if bidir { &[false, true] } else { &[false] };
    let mut rows: Vec<Row> = Vec::new();
    for &size in &sizes {
        for &d in dirs {
            for &c in &cases {
                rows.push(Row {
                    case: c,
                    bidir: d,
                    size,
                    samples: Vec::new(),
                });
            }
        }
    }
    let mut rss: Vec<(Case, u64)> = Vec::new();
    let (mut traffic_allocs, mut traffic_frames) = (0u64, 0u64);
    let mut switch_allocs: Vec<(Case, u64, u64)> = Vec::new();
    let mut bad = 0;
    let mut testpmd_tx: Vec<(u64, u64)> = Vec::new();

    for &size in &sizes {
        let fa = frame(mac(2), mac(1), 0, size);
        let fb = frame(mac(1), mac(2), 0, size);
        for round in 1..=rounds {
            for &case in &cases {
                let Some(mut s) = open(case) else { continue };
                wait_ready(&mut s.a, &mut s.b, &fa, &fb);
                for &d in dirs {
                    let sample = measure(&mut s, &fa, &fb, d, dur);
                    println!(
                        "  size {size:>4} round {round} {:<15} {:<6} {:6.2} Mpps",
                        case.name(),
                        if d { "bidir" } else { "a->b" },
                        sample.pps / 1e6
                    );
                    traffic_allocs += sample.traffic_allocs;
                    traffic_frames += sample.frames;
                    bad += sample.bad;
                    if case != Case::Testpmd {
                        switch_allocs.push((case, sample.other_allocs, sample.frames));
                    }
                    let row = rows
                        .iter_mut()
                        .find(|r| r.case == case && r.bidir == d && r.size == size)
                        .expect("row");
                    row.samples.push(sample);
                }
                if let Some(k) = s.peer.rss_kib() {
                    rss.push((case, k));
                }
                if let Some(t) = s.close() {
                    testpmd_tx.push(t);
                }
            }
        }
    }

    print_table(&rows, rounds);
    println!(
        "Mpps = frames received at the sink(s) per second (bidir: both directions together); \
         ratio = best / testpmd-io best, same size and direction."
    );
    println!(
        "fwd-cpu = CPU the forwarder used (testpmd process, or the switch's poll-/kick-/port- \
         threads), in % of one core; gen-cpu = the traffic thread's share of CPU {TRAFFIC_CPU}; \
         gen-idle = share of the time it had nothing to send or receive (high: the forwarder \
         is the bottleneck; near 0: the traffic thread is); no-buffer = frames the switch \
         dropped because the sink's RX ring was empty (the sink did not keep up)."
    );
    let max_rss = |c: Case| rss.iter().filter(|r| r.0 == c).map(|r| r.1).max();
    let mib =
        |k: Option<u64>| k.map_or("?".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!(
        "RSS: bench process before any switch {}; with the event-mode switch {}, poll-mode {} \
         (in-process: includes the harness and both frontends' 16 MiB guest memory, mapped by \
         frontend and switch); testpmd process {} (--no-huge -m 512)",
        mib(rss_harness),
        mib(max_rss(Case::Event)),
        mib(max_rss(Case::Poll)),
        mib(max_rss(Case::Testpmd)),
    );
    for c in [Case::Event, Case::Poll] {
        let (n, f) = switch_allocs
            .iter()
            .filter(|x| x.0 == c)
            .fold((0, 0), |acc, x| (acc.0 + x.1, acc.1 + x.2));
        println!(
            "allocations while measuring, {}: switch and other threads {n} ({:.4} per frame)",
            c.name(),
            n as f64 / f.max(1) as f64
        );
    }
    if !testpmd_tx.is_empty() {
        let per: Vec<String> = testpmd_tx
            .iter()
            .map(|(tx, dropped)| {
                format!(
                    "{dropped} ({:.2}%)",
                    100.0 * *dropped as f64 / (tx + dropped).max(1) as f64
                )
            })
            .collect();
        println!(
            "testpmd TX-dropped per session (no room in the sink's RX ring; whole session incl. \
             warm-up and both directions): {}",
            per.join(", ")
        );
    }
    println!(
        "allocations on the traffic thread (send_batch/recv_batch): {traffic_allocs} for \
         {traffic_frames} frames; frames of the wrong length: {bad}"
    );
    println!("total time {:.1} s", t_run.elapsed().as_secs_f64());
}
