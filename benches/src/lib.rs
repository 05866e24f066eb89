//! Helpers shared by Patchbay's benchmarks: reading CPU time and memory from `/proc`, pinning
//! threads, and settings from the environment. The benchmarks themselves are in `benches/`
//! (`cargo bench -p patchbay-benches`).

use std::path::Path;
use std::str::FromStr;

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
