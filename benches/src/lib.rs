//! Helpers shared by Patchbay's benchmarks: reading CPU time, memory and kernel counters from
//! `/proc`, pinning threads, settings from the environment, the measurement window, frontends
//! and the per-round figures of a report. The benchmarks themselves are in `benches/`
//! (`cargo bench -p patchbay-benches`).

pub mod chart;

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use patchbay_switch::port::metrics::DropReason;
use patchbay_switch::switch::Switch;
use patchbay_tests::frontend::{FrontendConfig, TestPort};

/// Clock ticks per second of the `utime`/`stime` fields in `/proc/.../stat`.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (comm, user + system CPU seconds) from a `/proc/.../stat` file.
pub fn stat_cpu(path: &Path) -> Option<(String, f64)> {
    let s = std::fs::read_to_string(path).ok()?;
    // comm is in parentheses and may contain spaces or parentheses: split at the last ')'.
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    // Fields after comm start at field 3 (state); utime and stime are fields 14 and 15.
    let mut rest = s.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((comm, (utime + stime) as f64 / ticks_per_sec()))
}

/// CPU seconds used by the calling thread so far.
pub fn thread_self_cpu() -> f64 {
    stat_cpu(Path::new("/proc/thread-self/stat")).map_or(0.0, |s| s.1)
}

/// CPU seconds used so far by every thread of process `pid`.
pub fn process_cpu(pid: u32) -> f64 {
    stat_cpu(Path::new(&format!("/proc/{pid}/stat"))).map_or(0.0, |s| s.1)
}

/// CPU seconds used so far by this process's threads whose name starts with one of
/// `prefixes` (thread names are truncated to 15 bytes by the kernel).
pub fn threads_cpu(prefixes: &[&str]) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| stat_cpu(&t.path().join("stat")))
        .filter(|(comm, _)| prefixes.iter().any(|p| comm.starts_with(p)))
        .map(|(_, secs)| secs)
        .sum()
}

/// A `kB` field (e.g. `VmRSS`) of `/proc/<pid>/status` (`pid` = "self" for this process), in
/// KiB.
pub fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Pins the calling thread to `cpu`; returns whether that worked.
pub fn pin_current_thread(cpu: usize) -> bool {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).is_ok()
        && nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_ok()
}

/// The environment variable `name` parsed as `T`, or `default` if unset or unparsable.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// The settings every benchmark takes from the environment: `PATCHBAY_BENCH_SECS`
/// (measurement per case, default 1.5), `PATCHBAY_BENCH_ROUNDS` (default 2) and
/// `PATCHBAY_BENCH_SIZES` (comma-separated frame sizes in bytes without FCS).
#[derive(Clone, Debug)]
pub struct Settings {
    pub secs: f64,
    pub dur: Duration,
    pub rounds: usize,
    pub sizes: Vec<usize>,
}

impl Settings {
    /// Reads the environment; `default_sizes` when `PATCHBAY_BENCH_SIZES` is unset or empty.
    pub fn from_env(default_sizes: &[usize]) -> Settings {
        let secs: f64 = env_or("PATCHBAY_BENCH_SECS", 1.5);
        let rounds: usize = env_or("PATCHBAY_BENCH_ROUNDS", 2usize).max(1);
        let sizes: Vec<usize> = std::env::var("PATCHBAY_BENCH_SIZES")
            .ok()
            .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
            .filter(|v: &Vec<usize>| !v.is_empty())
            .unwrap_or_else(|| default_sizes.to_vec());
        Settings {
            secs,
            dur: Duration::from_secs_f64(secs),
            rounds,
            sizes,
        }
    }
}

/// Whether the case `name` is wanted: `PATCHBAY_BENCH_CASES` is unset or empty, or one of its
/// comma-separated items is a substring of `name`.
pub fn case_wanted(name: &str) -> bool {
    let wanted = std::env::var("PATCHBAY_BENCH_CASES").unwrap_or_default();
    wanted.trim().is_empty()
        || wanted
            .split(',')
            .any(|w| !w.trim().is_empty() && name.contains(w.trim()))
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

/// Runs `f` on a fresh thread named `name`, pinned to `cpu`, and returns its result: only that
/// thread is pinned, so switch threads and peers started from the caller keep the full CPU
/// set.
pub fn run_pinned<T: Send>(name: &str, cpu: usize, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|sc| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn_scoped(sc, || {
                pin_current_thread(cpu);
                f()
            })
            .expect("spawn traffic thread")
            .join()
            .expect("traffic thread")
    })
}

/// Where a traffic loop is in its [`Window`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Traffic that is not counted.
    WarmUp,
    /// The warm-up is over: take the "before" snapshots, then call [`Window::start`]
    /// (returned once).
    Begin,
    Measure,
    /// Time is up: leave the loop.
    Done,
}

/// A warm-up followed by a measurement of fixed length, and the share of the measurement in
/// which the traffic loop moved nothing (it was waiting on the forwarder).
pub struct Window {
    dur: Duration,
    warm_end: Instant,
    begun: bool,
    start: Option<Instant>,
    end: Instant,
    last: Instant,
    idle: Duration,
}

impl Window {
    pub fn new(warm_up: Duration, dur: Duration) -> Window {
        let now = Instant::now();
        Window {
            dur,
            warm_end: now + warm_up,
            begun: false,
            start: None,
            end: now + warm_up + dur,
            last: now,
            idle: Duration::ZERO,
        }
    }

    /// Called once per iteration of the traffic loop, before its work; `moved` says whether
    /// the previous iteration sent or received anything.
    pub fn tick(&mut self, moved: bool) -> Phase {
        let now = Instant::now();
        if !moved {
            self.idle += now - self.last;
        }
        self.last = now;
        if self.begun && self.start.is_none() {
            self.start(); // the caller forgot: start here
        }
        match self.start {
            None if now >= self.warm_end => {
                self.begun = true;
                Phase::Begin
            }
            None => Phase::WarmUp,
            Some(_) if now >= self.end => Phase::Done,
            Some(_) => Phase::Measure,
        }
    }

    /// Starts the measurement (after [`Phase::Begin`] and the caller's snapshots, so that
    /// taking them is not measured).
    pub fn start(&mut self) {
        let now = Instant::now();
        self.start = Some(now);
        self.end = now + self.dur;
        self.last = now;
        self.idle = Duration::ZERO;
    }

    /// Seconds since [`Window::start`].
    pub fn secs(&self) -> f64 {
        self.start.map_or(0.0, |s| s.elapsed().as_secs_f64())
    }

    /// Share of the measurement spent in iterations that moved nothing.
    pub fn idle_share(&self) -> f64 {
        self.idle.as_secs_f64() / self.secs().max(1e-9)
    }
}

// ---------------------------------------------------------------------------------------------
// Switches and frontends
// ---------------------------------------------------------------------------------------------

/// Name prefixes of the switch threads that touch frames, rings or tunnel sockets.
pub const SWITCH_THREADS: &[&str] = &["poll-", "dataplane-", "kick-", "port-", "vxlan-rx"];

/// Frames `sw` dropped because a destination had no room (a guest's RX ring was empty, or
/// the tunnel's socket refused a packet), over all its ports.
pub fn no_buffer_drops(sw: &Switch) -> u64 {
    sw.ports()
        .iter()
        .map(|p| p.counters.drops(DropReason::NoBuffer))
        .sum()
}

/// A test frontend connected to the vhost-user socket `sock` (retrying for up to 15 s).
pub fn connect_frontend(sock: impl Into<std::path::PathBuf>) -> TestPort {
    let mut cfg = FrontendConfig::new(sock);
    cfg.timeout = Duration::from_secs(15);
    TestPort::connect(cfg).expect("connect a frontend")
}

/// Repeats `send` (one frame each way) every 20 ms until `received` reported a frame at both
/// ends, i.e. the forwarder is up and, for a switch, has learned both MACs; panics after 15 s.
pub fn exchange_until_ready(mut send: impl FnMut(), mut received: impl FnMut() -> (bool, bool)) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut a_ok, mut b_ok) = (false, false);
    while !(a_ok && b_ok) {
        assert!(Instant::now() < deadline, "no frame got through in 15 s");
        send();
        std::thread::sleep(Duration::from_millis(20));
        let (a, b) = received();
        a_ok |= a;
        b_ok |= b;
    }
}

/// [`exchange_until_ready`] between two frontends: `fa` from a, `fb` from b.
pub fn wait_ready(a: &mut TestPort, b: &mut TestPort, fa: &[u8], fb: &[u8]) {
    let (a, b) = (std::cell::RefCell::new(a), std::cell::RefCell::new(b));
    exchange_until_ready(
        || {
            a.borrow_mut().send_batch(&[fa]).expect("send a");
            b.borrow_mut().send_batch(&[fb]).expect("send b");
        },
        || {
            let b_ok = b.borrow_mut().recv_batch(&mut |_| {}).expect("recv b") > 0;
            let a_ok = a.borrow_mut().recv_batch(&mut |_| {}).expect("recv a") > 0;
            (a_ok, b_ok)
        },
    );
}

// ---------------------------------------------------------------------------------------------
// The kernel's network stack
// ---------------------------------------------------------------------------------------------

/// Moves the calling thread (and the threads it starts afterwards) into a new network
/// namespace with only `lo`, and brings `lo` up: 127.0.0.0/8 then reaches only this process,
/// and the kernel's counters in `/proc/net/snmp` count only its traffic. Needs
/// CAP_SYS_ADMIN; returns false (and changes nothing) without it.
pub fn enter_private_netns() -> bool {
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        return false;
    }
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq naming "lo"; results are checked.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo") {
            *d = *s as libc::c_char;
        }
        let ok = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) == 0 && {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) == 0
        };
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert!(ok, "cannot bring lo up in the new namespace: {err}");
    }
    true
}

/// A counter of the `Udp:` lines of `/proc/net/snmp` (e.g. `RcvbufErrors`: datagrams dropped
/// because the receiving socket's buffer was full), for the calling thread's namespace.
pub fn udp_counter(name: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut udp = s.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------------

/// The highest of some rates.
pub fn best(rates: &[f64]) -> f64 {
    rates.iter().copied().fold(0.0, f64::max)
}

/// Rates in frames per second as Mpps, one `{:5.2}` column per round.
pub fn mpps_per_round(rates: &[f64]) -> String {
    let v: Vec<String> = rates.iter().map(|r| format!("{:5.2}", r / 1e6)).collect();
    v.join(" ")
}

/// Nanoseconds per frame at `rate` frames per second.
pub fn ns_per_frame(rate: f64) -> f64 {
    if rate > 0.0 {
        1e9 / rate
    } else {
        f64::NAN
    }
}

/// `rate / base` with two decimals, or "-" without a baseline.
pub fn ratio(rate: f64, base: Option<f64>) -> String {
    base.filter(|b| *b > 0.0)
        .map_or("-".to_string(), |b| format!("{:.2}", rate / b))
}
