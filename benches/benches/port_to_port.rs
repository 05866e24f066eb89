//! The switch's own costs, measured from inside the process: frames per second port to port
//! with 0 to 100 000 flow rules installed, allocations per frame, memory.
//!
//! This is not the comparison with other switches: the traffic here comes from Patchbay's own
//! test frontend (`patchbay_tests::frontend::TestPort`), which is slower than the switch, so
//! the rates are bounded by the frontend and say little against DPDK testpmd or Open vSwitch.
//! That comparison is `benches/peers.sh` (testpmd as source and sink, testpmd io-forward, OVS
//! with DPDK and Patchbay side by side). What this benchmark still measures that one does not:
//! that neither the traffic loop nor the switch allocates per frame, the flow-table cases
//! (1 ... 100k rules against the plain learning switch), the no-buffer drops and floods the
//! switch counted, and the process's resident memory.
//!
//! Two access ports in one VLAN on a switch running in this process, driven by the userspace
//! vhost-user frontend: one thread, pinned to CPU 0, keeps port a's TX ring full with
//! `send_batch` and drains port b with `recv_batch` (case "a->b"), or does both in both
//! directions ("bidir"). A warm-up makes the switch learn both MACs first, so the traffic is
//! ordinary unicast. Only frames received at a sink count.
//!
//! Cases: `patchbay-event` (default: served on guest kicks), `patchbay-poll` (`poll_cpus =
//! [1]`), `flows-1` ... `flows-100k` (event mode with that many rules). For each frame size
//! the cases run interleaved, for several rounds, because this 2-core machine is noisy:
//! compare ratios within a run (to `patchbay-event`), not absolute numbers across runs.
//!
//! Settings (environment): `PATCHBAY_BENCH_SECS` (measurement per case, default 1.5),
//! `PATCHBAY_BENCH_ROUNDS` (default 2), `PATCHBAY_BENCH_SIZES` (comma-separated frame sizes
//! in bytes without FCS, default "64,1500"), `PATCHBAY_BENCH_BIDIR` (0 to skip the
//! bidirectional case), `PATCHBAY_BENCH_CASES` (comma-separated substrings of case names,
//! e.g. "poll" or "event,flows-10k"; default all).
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

/// CPU the traffic thread runs on; Patchbay's poller gets the other one.
const TRAFFIC_CPU: usize = 0;
const POLL_CPU: usize = 1;
const VLAN: u16 = 10;
/// Traffic before each measurement that is not counted.
const WARM_UP: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
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

/// The switch under test, running in this process.
struct Peer {
    daemon: Daemon,
    _dir: TestDir,
}

/// Counters of the switch at one instant.
#[derive(Clone, Copy, Default)]
struct PeerSnap {
    cpu: f64,
    no_buffer: u64,
    floods: u64,
}

impl Peer {
    fn snap(&self) -> PeerSnap {
        let sw = &self.daemon.switch;
        PeerSnap {
            cpu: threads_cpu(SWITCH_THREADS),
            no_buffer: no_buffer_drops(sw),
            floods: sw.counters().floods.load(Ordering::Relaxed),
        }
    }

    /// Resident memory in KiB: the whole bench process, harness and guest memory included.
    fn rss_kib(&self) -> Option<u64> {
        status_kib("self", "VmRSS")
    }
}

/// A switch with a frontend connected to each of its two ports.
struct Session {
    peer: Peer,
    a: TestPort,
    b: TestPort,
}

fn open(case: Case) -> Session {
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
    let a = connect_frontend(dir.join("a.sock"));
    let b = connect_frontend(dir.join("b.sock"));
    Session {
        peer: Peer { daemon, _dir: dir },
        a,
        b,
    }
}

impl Session {
    /// Disconnects the frontends and stops the switch.
    fn close(self) {
        self.a.disconnect();
        self.b.disconnect();
        self.peer.daemon.shutdown();
    }
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
            .find(|b| b.case == Case::Event && b.bidir == r.bidir && b.size == r.size)
            .map(Row::best);
        let best = r.best();
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
            r.sum(|s| s.no_buffer),
            r.sum(|s| s.floods),
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
    let cases: Vec<Case> = [Case::Event, Case::Poll]
        .into_iter()
        .chain(FLOW_CASES.map(Case::Flows))
        .filter(|&c| wanted(c))
        .collect();
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

    for &size in &sizes {
        let fa = frame(mac(2), mac(1), 0, size);
        let fb = frame(mac(1), mac(2), 0, size);
        for round in 1..=rounds {
            for &case in &cases {
                let mut s = open(case);
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
                    switch_allocs.push((case, sample.other_allocs, sample.frames));
                    let row = rows
                        .iter_mut()
                        .find(|r| r.case == case && r.bidir == d && r.size == size)
                        .expect("row");
                    row.samples.push(sample);
                }
                if let Some(k) = s.peer.rss_kib() {
                    rss.push((case, k));
                }
                s.close();
            }
        }
    }

    print_table(&rows, rounds);
    println!(
        "Mpps = frames received at the sink(s) per second (bidir: both directions together); \
         ratio = best / patchbay-event best, same size and direction (the cost of poll mode \
         and of flow rules; the rates are bounded by the test frontend: see benches/peers.sh \
         for the comparison with testpmd and OVS)."
    );
    println!(
        "fwd-cpu = CPU the switch's poll-/kick-/port- threads used, in % of one core; gen-cpu = the traffic thread's share of CPU {TRAFFIC_CPU}; \
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
         frontend and switch)",
        mib(rss_harness),
        mib(max_rss(Case::Event)),
        mib(max_rss(Case::Poll)),
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
    println!(
        "allocations on the traffic thread (send_batch/recv_batch): {traffic_allocs} for \
         {traffic_frames} frames; frames of the wrong length: {bad}"
    );
    println!("total time {:.1} s", t_run.elapsed().as_secs_f64());
}
