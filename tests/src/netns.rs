//! Network namespaces for host-side tests, over iproute2: a namespace per test endpoint,
//! veth pairs for the underlay, the kernel's own VXLAN device as a reference peer, `ping`
//! inside a namespace, and an optional tshark capture that decodes VXLAN headers.
//!
//! Everything here is RAII: a [`Netns`] is deleted when dropped (processes still inside it
//! are killed first), and the devices in it go with it. Tests only ever send traffic to
//! addresses inside namespaces they created (documentation ranges: underlay 198.51.100.0/24,
//! overlay 203.0.113.0/24); see docs/vxlan-testing.md.
//!
//! Needs root and iproute2 (`.ci/install-deps.sh`); call [`available`] first and skip with
//! [`crate::guest::skip_or_fail`] when it fails.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

pub use crate::guest::PingStats;

/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;

/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) bytes: a VXLAN device on an
/// underlay of MTU `m` carries inner IP packets of at most `m - 50` bytes.
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    #[error("{0}")]
    Unexpected(String),
}

pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying its stderr.
pub fn output_ok(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            cmd: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            cmd: describe(cmd),
            source,
        })
}

/// Polls `cond` every 10 ms until it holds, for at most `timeout`.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(NetnsError::Timeout {
                what: what.to_string(),
                waited: start.elapsed(),
            });
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A network namespace of this process's own, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Netns {
    /// Creates a namespace named `PREFIX-PID-N` with `lo` up.
    pub fn create(prefix: &str) -> Result<Netns> {
        let name = unique(prefix);
        output_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME args...`, ready to spawn (stdio as the caller sets it).
    pub fn exec<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs `sh -c SHELL_CMD` inside the namespace; returns stdout, or an error with stderr.
    pub fn run(&self, shell_cmd: &str) -> Result<String> {
        output_ok(&mut self.exec(["sh", "-c", shell_cmd]))
    }

    /// Runs `ip -n NAME args...`; returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        output_ok(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `ip -j -d link show dev DEV`, parsed.
    pub fn link_json(&self, dev: &str) -> Result<serde_json::Value> {
        let text = self.ip(&["-j", "-d", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| NetnsError::Unexpected(format!("ip -j link show {dev}: {e}: {text}")))?;
        v.get(0)
            .cloned()
            .ok_or_else(|| NetnsError::Unexpected(format!("no link {dev} in {}", self.name)))
    }

    /// Whether DEV is administratively up with carrier (operstate UP, or UNKNOWN as for
    /// vxlan and lo, which report no operstate of their own).
    pub fn link_is_up(&self, dev: &str) -> Result<bool> {
        let link = self.link_json(dev)?;
        let flags: Vec<&str> = link["flags"]
            .as_array()
            .map(|a| a.iter().filter_map(|f| f.as_str()).collect())
            .unwrap_or_default();
        let oper = link["operstate"].as_str().unwrap_or("");
        Ok(flags.contains(&"UP")
            && flags.contains(&"LOWER_UP")
            && !flags.contains(&"NO-CARRIER")
            && (oper == "UP" || oper == "UNKNOWN"))
    }

    /// Waits (bounded polling) until [`Netns::link_is_up`].
    pub fn wait_link_up(&self, dev: &str, timeout: Duration) -> Result<()> {
        wait_until(timeout, &format!("{dev} up in {}", self.name), || {
            self.link_is_up(dev)
        })
    }

    /// The MTU of DEV.
    pub fn mtu(&self, dev: &str) -> Result<u32> {
        let link = self.link_json(dev)?;
        link["mtu"]
            .as_u64()
            .map(|m| m as u32)
            .ok_or_else(|| NetnsError::Unexpected(format!("no mtu for {dev}: {link}")))
    }

    /// The MAC address of DEV.
    pub fn mac(&self, dev: &str) -> Result<String> {
        let link = self.link_json(dev)?;
        link["address"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| NetnsError::Unexpected(format!("no address for {dev}: {link}")))
    }

    /// `bridge fdb show dev DEV` inside the namespace (for a vxlan device: `MAC dst VTEP`).
    pub fn fdb(&self, dev: &str) -> Result<String> {
        output_ok(&mut self.exec(["bridge", "fdb", "show", "dev", dev]))
    }

    /// Processes whose network namespace this is.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let out = output_ok(Command::new("ip").args(["netns", "pids", &self.name]))?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever still runs inside, then wait (bounded) for it to be gone: a process
        // left inside would keep the namespace, and its devices, alive after `ip netns del`.
        let _ = wait_until(Duration::from_secs(5), "processes to exit", || {
            let pids = self.pids()?;
            for &pid in &pids {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Ok(pids.is_empty())
        });
        if let Err(e) = output_ok(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("netns: cannot delete {}: {e}", self.name);
        }
    }
}

/// The two ends of a veth pair, one in each namespace.
#[derive(Debug, Clone)]
pub struct Veth {
    /// The interface's name in namespace `a`.
    pub a: String,
    /// The interface's name in namespace `b`.
    pub b: String,
}

/// A veth pair between `a` and `b` with addresses (CIDR, e.g. `198.51.100.1/24`; empty for
/// none), both ends up (waited for). The kernel's default MTU (1500).
pub fn veth_pair(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> Result<Veth> {
    veth_pair_mtu(a, a_addr, b, b_addr, None)
}

/// [`veth_pair`] with both ends' MTU set to `mtu` when given.
pub fn veth_pair_mtu(
    a: &Netns,
    a_addr: &str,
    b: &Netns,
    b_addr: &str,
    mtu: Option<u32>,
) -> Result<Veth> {
    // Created directly inside the namespaces, so the names never meet in the host's.
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let veth = Veth {
        a: format!("ul{n}a"),
        b: format!("ul{n}b"),
    };
    output_ok(Command::new("ip").args([
        "link", "add", &veth.a, "netns", &a.name, "type", "veth", "peer", "name", &veth.b, "netns",
        &b.name,
    ]))?;
    for (ns, dev, addr) in [(a, &veth.a, a_addr), (b, &veth.b, b_addr)] {
        if let Some(mtu) = mtu {
            ns.ip(&["link", "set", dev, "mtu", &mtu.to_string()])?;
        }
        if !addr.is_empty() {
            ns.ip(&["addr", "add", addr, "dev", dev])?;
        }
        ns.ip(&["link", "set", dev, "up"])?;
    }
    a.wait_link_up(&veth.a, Duration::from_secs(5))?;
    b.wait_link_up(&veth.b, Duration::from_secs(5))?;
    Ok(veth)
}

/// A kernel vxlan device's settings (`ip link add NAME type vxlan ...`).
#[derive(Debug, Clone, Default)]
pub struct VxlanOpts<'a> {
    pub name: &'a str,
    pub vni: u32,
    /// The local VTEP address (`local`): outer source IP.
    pub local: &'a str,
    /// A single remote VTEP (`remote`): the default destination for unknown/broadcast
    /// frames. Without it, add head-end replication entries with [`vxlan_fdb_append`].
    pub remote: Option<&'a str>,
    /// Defaults to 4789 when 0.
    pub dstport: u16,
    /// The underlay device (`dev`). Only with it does the kernel derive the vxlan MTU from
    /// the underlay (`underlay MTU - 50`); without it the vxlan device starts at 1500.
    pub dev: Option<&'a str>,
    /// An explicit MTU, overriding the kernel's choice.
    pub mtu: Option<u32>,
    /// `nolearning` when true; by default the device learns inner source MAC -> outer
    /// source IP from what it receives (so it learns our switch's guests' MACs).
    pub nolearning: bool,
    /// Inner (overlay) address, e.g. `203.0.113.100/24`; empty for none.
    pub inner_addr: &'a str,
}

/// `ip link add NAME type vxlan id VNI local L [remote R] dstport P` (learning on), inner
/// address, up (waited for).
pub fn kernel_vxlan(
    ns: &Netns,
    name: &str,
    vni: u32,
    local_ip: &str,
    remote_ip: Option<&str>,
    dstport: u16,
    inner_addr: &str,
) -> Result<()> {
    kernel_vxlan_with(
        ns,
        &VxlanOpts {
            name,
            vni,
            local: local_ip,
            remote: remote_ip,
            dstport,
            inner_addr,
            ..Default::default()
        },
    )
}

/// A kernel vxlan device as `opts` says, up (waited for).
pub fn kernel_vxlan_with(ns: &Netns, opts: &VxlanOpts) -> Result<()> {
    let vni = opts.vni.to_string();
    let port = if opts.dstport == 0 {
        VXLAN_PORT
    } else {
        opts.dstport
    }
    .to_string();
    let mut args = vec![
        "link", "add", opts.name, "type", "vxlan", "id", &vni, "local", opts.local, "dstport",
        &port,
    ];
    if let Some(r) = opts.remote {
        args.extend(["remote", r]);
    }
    if let Some(d) = opts.dev {
        args.extend(["dev", d]);
    }
    if opts.nolearning {
        args.push("nolearning");
    }
    let mtu = opts.mtu.map(|m| m.to_string());
    if let Some(m) = &mtu {
        args.extend(["mtu", m]);
    }
    ns.ip(&args)?;
    if !opts.inner_addr.is_empty() {
        ns.ip(&["addr", "add", opts.inner_addr, "dev", opts.name])?;
    }
    ns.ip(&["link", "set", opts.name, "up"])?;
    ns.wait_link_up(opts.name, Duration::from_secs(5))
}

/// Head-end replication: `bridge fdb append 00:00:00:00:00:00 dev DEV dst REMOTE`, so
/// unknown-unicast/broadcast frames also go to `remote` (one entry per remote VTEP).
pub fn vxlan_fdb_append(ns: &Netns, dev: &str, remote: &str) -> Result<()> {
    vxlan_fdb_add(ns, dev, "00:00:00:00:00:00", remote, true)
}

/// A static `MAC -> remote VTEP` entry on a vxlan device (`append` adds another
/// destination for the same MAC; otherwise `replace`).
pub fn vxlan_fdb_add(ns: &Netns, dev: &str, mac: &str, remote: &str, append: bool) -> Result<()> {
    let verb = if append { "append" } else { "replace" };
    output_ok(&mut ns.exec(["bridge", "fdb", verb, mac, "dev", dev, "dst", remote]))?;
    Ok(())
}

/// Moves the calling thread into namespace `name`: sockets it opens from then on live
/// there (run it in a thread of its own; the rest of the process stays where it was).
pub fn enter(name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns(2) on an open namespace file; it changes only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts a TCP listener on `addr` in namespace `ns` that takes one connection and reads
/// it to its end; returns once it listens. Join the handle for the bytes.
pub fn tcp_receive(ns: &str, addr: &str) -> std::thread::JoinHandle<Vec<u8>> {
    use std::io::Read;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (ns, addr) = (ns.to_string(), addr.to_string());
    let handle = std::thread::spawn(move || {
        enter(&ns).expect("enter the listener's namespace");
        let l = std::net::TcpListener::bind(&addr).expect("bind");
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        got
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("listener ready");
    handle
}

/// Connects from namespace `ns` to `addr`, sends `bytes` and closes its sending side.
pub fn tcp_send(ns: &str, addr: &str, bytes: &[u8]) {
    let (ns, addr, bytes) = (ns.to_string(), addr.to_string(), bytes.to_vec());
    std::thread::spawn(move || {
        enter(&ns).expect("enter the sender's namespace");
        let mut s = std::net::TcpStream::connect_timeout(
            &addr.parse().expect("an address"),
            Duration::from_secs(10),
        )
        .expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
        s.write_all(&bytes).expect("send");
        s.shutdown(std::net::Shutdown::Write).unwrap();
    })
    .join()
    .expect("sender");
}

/// Random-looking bytes (a xorshift stream), so a misplaced segment cannot compare equal.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Checks that we are root and can create (and delete) a network namespace.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespaces need root".into());
    }
    let probe = Netns::create("pb-probe").map_err(|e| {
        format!(
            "cannot create a network namespace (install iproute2 with .ci/install-deps.sh): {e}"
        )
    })?;
    drop(probe);
    Ok(())
}

/// [`available`], and the kernel has VXLAN (creates a probe device in a probe namespace).
pub fn vxlan_available() -> Result<(), String> {
    available()?;
    let probe = Netns::create("pb-probe").map_err(|e| e.to_string())?;
    probe
        .ip(&[
            "link", "add", "vxprobe", "type", "vxlan", "id", "1", "dstport", "4789",
        ])
        .map_err(|e| format!("kernel has no vxlan support: {e}"))?;
    Ok(())
}

/// Parses iputils' summary line `N packets transmitted, M received, ...`.
pub fn parse_ping_summary(output: &str) -> Option<PingStats> {
    let summary = output.lines().find(|l| l.contains("packets transmitted"))?;
    let number_before = |word: &str| -> Option<u32> {
        summary
            .split(',')
            .find(|part| part.contains(word))
            .and_then(|part| part.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    Some(PingStats {
        transmitted: number_before("transmitted")?,
        received: number_before("received")?,
    })
}

/// Pings `target` from inside `ns`, `count` times 0.2 s apart (2 s wait for the last).
/// Lost replies are not an error: read the returned counts.
pub fn ping(ns: &Netns, target: &str, count: u32) -> Result<PingStats> {
    ping_with(ns, target, count, &[])
}

/// [`ping`] with extra iputils-ping options, e.g. `["-M", "do", "-s", "1422"]`.
pub fn ping_with(ns: &Netns, target: &str, count: u32, extra: &[&str]) -> Result<PingStats> {
    let count_s = count.to_string();
    let mut cmd = ns.exec(["ping", "-n", "-q", "-c", &count_s, "-i", "0.2", "-W", "2"]);
    cmd.args(extra).arg(target);
    let out = output(&mut cmd)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Exit 1 is "no reply"; anything without a summary (exit 2: bad option, no route, ping
    // missing) is an error.
    parse_ping_summary(&stdout).ok_or_else(|| NetnsError::Failed {
        cmd: describe(&cmd),
        status: out.status.to_string(),
        stderr: format!(
            "{} {}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

/// The `patchbay-switch` binary of this build: `target/<profile>/patchbay-switch`, beside
/// the `deps/` directory holding the test executable. Panics when it is not built (cargo
/// builds only the tested package's own binaries for its integration tests).
pub fn switch_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test executable has a directory");
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir.parent().expect("deps/ has a parent");
    }
    let bin = dir.join("patchbay-switch");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p patchbay-switch` (same profile) first",
        bin.display()
    );
    bin
}

/// Whether `tshark` is installed (it is not by default: see docs/vxlan-testing.md).
pub fn tshark_available() -> bool {
    Command::new("tshark")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running `tshark -i IF -c N -f 'udp port 4789' -T fields -e vxlan.vni` inside a
/// namespace. Killed when dropped.
pub struct VxlanCapture {
    child: Child,
    lines: Receiver<String>,
    count: usize,
    what: String,
}

impl VxlanCapture {
    /// Starts capturing `count` UDP/`port` packets on `iface` in `ns` and returns once tshark
    /// says it is capturing (so traffic sent afterwards is seen). `port` other than 4789 is
    /// decoded as VXLAN too (`-d udp.port==P,vxlan`).
    pub fn start(ns: &Netns, iface: &str, count: usize, port: u16) -> Result<VxlanCapture> {
        let what = format!("tshark on {iface} in {}", ns.name);
        let filter = format!("udp port {port}");
        let decode = format!("udp.port=={port},vxlan");
        let count_s = count.to_string();
        let mut cmd = ns.exec([
            "tshark",
            "-n",
            "-l",
            "-i",
            iface,
            "-c",
            &count_s,
            "-f",
            &filter,
            "-d",
            &decode,
            "-T",
            "fields",
            "-e",
            "vxlan.vni",
        ]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| NetnsError::Spawn {
            cmd: describe(&cmd),
            source,
        })?;
        let (tx, lines) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                // `Capturing on 'IF'` once the capture is open; keep the rest for errors.
                let _ = ready_tx.send(line);
            }
        });
        let mut capture = VxlanCapture {
            child,
            lines,
            count,
            what,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready.recv_timeout(left) {
                Ok(line) if line.starts_with("Capturing on") => return Ok(capture),
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = capture.child.kill();
                    let status = capture
                        .child
                        .wait()
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    return Err(NetnsError::Failed {
                        cmd: capture.what.clone(),
                        status: format!("not capturing ({status})"),
                        stderr: seen.join("\n"),
                    });
                }
            }
        }
    }

    /// Waits for the `count` packets and returns each one's VNI (an error for a packet
    /// tshark did not decode as VXLAN, or when they do not all come within `timeout`).
    pub fn finish(self, timeout: Duration) -> Result<Vec<u32>> {
        let deadline = Instant::now() + timeout;
        let mut vnis = Vec::new();
        while vnis.len() < self.count {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|_| NetnsError::Timeout {
                    what: format!(
                        "{} packets from {} (got VNIs {vnis:?})",
                        self.count, self.what
                    ),
                    waited: timeout,
                })?;
            let vni = line.trim().parse().map_err(|_| {
                NetnsError::Unexpected(format!(
                    "{}: packet not decoded as VXLAN (vxlan.vni field: {line:?})",
                    self.what
                ))
            })?;
            vnis.push(vni);
        }
        Ok(vnis)
    }
}

impl Drop for VxlanCapture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `patchbay-switch` running inside a namespace; stopped on drop.
pub struct SwitchProc {
    child: Child,
    pub control: PathBuf,
}

impl SwitchProc {
    /// Starts the switch in `ns` with `config` (TOML after a `[control]` and `[metrics]`
    /// section this adds), its files in `dir` named after `name`; waits for its control
    /// socket.
    pub fn start(ns: &Netns, dir: &Path, name: &str, config: &str) -> SwitchProc {
        let path = dir.join(format!("{name}.toml"));
        let control = dir.join(format!("{name}-control.sock"));
        let text = format!(
            "[control]\nsocket = \"{}\"\n\n[metrics]\nlisten = \"off\"\n\n{config}",
            control.display()
        );
        std::fs::write(&path, text).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let mut child = ns
            .exec([
                switch_binary().as_os_str(),
                "--config".as_ref(),
                path.as_os_str(),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start patchbay-switch in the namespace");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&control).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
                panic!("switch {name} exited ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "switch {name} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        SwitchProc { child, control }
    }

    /// One control request; returns `result`.
    pub fn request(&self, command: &str) -> serde_json::Value {
        let v = self.call(&format!("{{\"version\":1,\"command\":\"{command}\"}}"));
        assert_eq!(v["ok"], true, "{command}: {v}");
        v["result"].clone()
    }

    /// One control request given as its JSON line; returns the whole response.
    pub fn call(&self, request: &str) -> serde_json::Value {
        let mut s = UnixStream::connect(&self.control).unwrap();
        writeln!(s, "{request}").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    pub fn tunnel(&self) -> serde_json::Value {
        self.request("show-tunnel")
    }

    pub fn port(&self, name: &str) -> serde_json::Value {
        let ports = self.request("show-ports");
        ports
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no port {name}"))
    }
}

impl Drop for SwitchProc {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iputils_summary() {
        let out = "PING 203.0.113.2 (203.0.113.2) 56(84) bytes of data.\n\n\
                   --- 203.0.113.2 ping statistics ---\n\
                   3 packets transmitted, 2 received, 33.3333% packet loss, time 406ms\n";
        assert_eq!(
            parse_ping_summary(out),
            Some(PingStats {
                transmitted: 3,
                received: 2
            })
        );
        let errors = "3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 4ms";
        assert_eq!(
            parse_ping_summary(errors),
            Some(PingStats {
                transmitted: 3,
                received: 0
            })
        );
        assert_eq!(parse_ping_summary("ping: unknown host"), None);
    }
}
