//! Running a switch inside a test: a private directory for its sockets and an in-process
//! daemon (the same code the `patchbay-switch` binary runs, minus argument parsing).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use patchbay_switch::config::Config;
use patchbay_switch::daemon::Daemon;
use patchbay_switch::port::{ConnectMode, PortConfig};

/// A directory of the test's own, removed when dropped.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(test: &str) -> TestDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "pb-{test}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test directory");
        TestDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A port listening on `dir/NAME.sock` with the given VLAN words.
pub fn port(
    dir: &Path,
    name: &str,
    vlan_mode: &str,
    vlan: Option<u16>,
    trunks: Option<&str>,
) -> PortConfig {
    PortConfig {
        name: name.to_string(),
        kind: Default::default(),
        interface: None,
        socket: dir.join(format!("{name}.sock")),
        mode: ConnectMode::Server,
        mac: None,
        vlan_mode: Some(vlan_mode.to_string()),
        vlan,
        trunks: trunks.map(str::to_string),
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

/// An access port of `vlan`.
pub fn access(dir: &Path, name: &str, vlan: u16) -> PortConfig {
    port(dir, name, "access", Some(vlan), None)
}

/// Access ports `(name, VLAN)`, each listening on `dir/NAME.sock`.
pub fn access_ports(dir: &Path, ports: &[(&str, u16)]) -> Vec<PortConfig> {
    ports.iter().map(|(n, v)| access(dir, n, *v)).collect()
}

/// Starts a switch with `ports`, its control socket in `dir`, metrics off unless asked.
pub fn start_switch(
    dir: &Path,
    ports: Vec<PortConfig>,
    configure: impl FnOnce(&mut Config),
) -> Daemon {
    let mut config = Config {
        control_socket: dir.join("control.sock"),
        metrics_listen: None,
        ports,
        ..Config::default()
    };
    configure(&mut config);
    Daemon::start(config).expect("switch starts")
}

/// How long the helpers below wait for the switch.
const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A test frontend connected to the port `name` of a switch whose sockets are in `dir`.
pub fn connect(dir: &TestDir, name: &str) -> crate::frontend::TestPort {
    crate::frontend::TestPort::connect(crate::frontend::FrontendConfig::new(
        dir.join(&format!("{name}.sock")),
    ))
    .expect("frontend connects")
}

/// Sends a frame and waits until the switch is done with it. The switch delivers a frame to
/// every receiver before it returns the sender's chain, so an absence check after this is
/// exact, not a guess.
pub fn send_done(p: &mut crate::frontend::TestPort, frame: &[u8]) {
    p.send(frame).expect("send");
    assert!(
        p.wait_tx_completion(WAIT).expect("tx completion"),
        "switch did not consume the frame"
    );
}

/// The frame already in `p`'s receive ring, if any (does not wait).
pub fn received_now(p: &mut crate::frontend::TestPort) -> Option<Vec<u8>> {
    p.recv(std::time::Duration::ZERO).expect("recv")
}

/// Waits (bounded) until `cond` holds: for state the switch reaches asynchronously.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A test frontend on port `name`, its configuration adjusted by `f` first.
pub fn connect_with(
    dir: &TestDir,
    name: &str,
    f: impl FnOnce(&mut crate::frontend::FrontendConfig),
) -> crate::frontend::TestPort {
    let mut cfg = crate::frontend::FrontendConfig::new(dir.join(&format!("{name}.sock")));
    f(&mut cfg);
    crate::frontend::TestPort::connect(cfg).expect("frontend connects")
}

/// Sends `f` from `from`, checks the switch took it and that it reached `to` intact.
pub fn forwards(
    from: &mut crate::frontend::TestPort,
    to: &mut crate::frontend::TestPort,
    f: &[u8],
) {
    from.send(f).expect("send");
    assert!(
        from.wait_tx_completion(WAIT).expect("tx completion"),
        "the switch did not take the frame"
    );
    assert_eq!(to.recv(WAIT).expect("recv").as_deref(), Some(f));
}

/// Nothing is waiting in `p`'s receive ring (after a completed send this is exact).
pub fn nothing(p: &mut crate::frontend::TestPort) -> bool {
    received_now(p).is_none()
}

/// The counters of port `name`.
pub fn counters(d: &Daemon, name: &str) -> patchbay_switch::port::CounterSnapshot {
    d.switch
        .port_by_name(name)
        .expect("port")
        .counters
        .snapshot()
}

/// A UDP port for a test's VXLAN tunnels, below the kernel's ephemeral range (32768 and up):
/// the tunnels' sending sockets take ephemeral ports on the same loopback addresses, so a port
/// found by binding port 0 could be taken by another test's switch before this one binds it.
/// Each port is handed out once per process (from a start that differs per process) and
/// checked free on 127.0.0.1 and 127.0.0.2.
pub fn vxlan_test_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (std::process::id().wrapping_mul(37).wrapping_add(n) % 12_000) as u16;
        let free = ["127.0.0.1", "127.0.0.2"]
            .iter()
            .all(|a| std::net::UdpSocket::bind((*a, port)).is_ok());
        if free {
            return port;
        }
    }
}

/// A VTEP on 127.0.0.1:`port` carrying VLAN 10 as VNI 42, flooding to 127.0.0.2 (nobody
/// listens there: frames to it leave and are counted, which is all some tests need).
pub fn loopback_vtep(port: u16) -> patchbay_overlay::vtep::VtepConfig {
    use patchbay_overlay::vtep::{VniConfig, VtepConfig};
    VtepConfig {
        port,
        vnis: vec![VniConfig {
            vni: 42,
            vlan: 10,
            remotes: vec![std::net::Ipv4Addr::new(127, 0, 0, 2).into()],
            proxy: false,
        }],
        ..VtepConfig::new(std::net::Ipv4Addr::LOCALHOST.into())
    }
}

/// Drops of port `name` for `reason` (a drop label such as "no-buffer").
pub fn drops(d: &Daemon, name: &str, reason: &str) -> u64 {
    counters(d, name).drop_count(reason)
}

/// A binary of this workspace build (`target/<profile>/NAME`), for tests that run it.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p {name}` first",
        bin.display()
    );
    bin
}

/// A `patchbay-switch` process (the built binary), its log read line by line as it comes.
pub struct SwitchProcess {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far, for failure messages.
    pub log: Vec<String>,
}

impl SwitchProcess {
    /// Starts `patchbay-switch` with `args`.
    pub fn spawn(args: &[&std::ffi::OsStr]) -> SwitchProcess {
        let mut command = std::process::Command::new(workspace_bin("patchbay-switch"));
        command.args(args);
        SwitchProcess::spawn_command(command)
    }

    /// Runs `command` (a `patchbay-switch`, perhaps behind `ip netns exec`).
    pub fn spawn_command(mut command: std::process::Command) -> SwitchProcess {
        use std::io::BufRead;
        let mut child = command
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("patchbay-switch starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        SwitchProcess {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Starts `patchbay-switch --config CONFIG`, with `--takeover` if `takeover`.
    pub fn start(config: &Path, takeover: bool) -> SwitchProcess {
        let mut args: Vec<&std::ffi::OsStr> = vec!["--config".as_ref(), config.as_os_str()];
        if takeover {
            args.push("--takeover".as_ref());
        }
        SwitchProcess::spawn(&args)
    }

    /// Waits for a log line containing `text`; None if the log ended or `timeout` passed.
    pub fn wait_log(&mut self, text: &str, timeout: std::time::Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("  [switch {}] {line}", self.child.id());
                    self.log.push(line.clone());
                    if line.contains(text) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits (bounded) for the process to exit; its status, or None if it still runs.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The rest of its log, for the test's output.
                while self
                    .wait_log("\u{0}", std::time::Duration::from_millis(50))
                    .is_some()
                {}
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for SwitchProcess {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if self.wait_exit(std::time::Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// The QUEUES and OFFLOADS cells of port `name` in `flowctl show ports`' table.
pub fn ports_row(table: &str, name: &str) -> (String, String) {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let at = header
        .find("OFFLOADS")
        .unwrap_or_else(|| panic!("no OFFLOADS column: {table}"));
    assert!(
        header[..at].trim_end().ends_with("QUEUES"),
        "QUEUES before OFFLOADS: {table}"
    );
    let row = lines
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no row for {name}: {table}"));
    let queues = row[..at].split_whitespace().last().unwrap_or_default();
    (queues.to_string(), row[at..].trim().to_string())
}

/// The offloads an OFFLOADS cell lists for `dir`: "tx" in `tx:csum,tso4 rx:csum` gives
/// csum and tso4.
pub fn offload_list<'a>(cell: &'a str, dir: &str) -> Vec<&'a str> {
    cell.split_whitespace()
        .find_map(|part| part.strip_prefix(dir)?.strip_prefix(':'))
        .map_or(Vec::new(), |list| list.split(',').collect())
}

/// Port `name` as `flowctl --json show ports` gives it, from the switch at `socket`.
pub fn flowctl_port_json(socket: &Path, name: &str) -> serde_json::Value {
    let json: serde_json::Value =
        serde_json::from_str(&flowctl_at(socket, &["--json", "show", "ports"])).unwrap();
    json.as_array()
        .and_then(|ports| ports.iter().find(|q| q["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in {json}"))
}

/// Runs `flowctl` against the control socket `socket`; its standard output (the command
/// must succeed).
pub fn flowctl_at(socket: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(workspace_bin("flowctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("flowctl runs");
    assert!(
        out.status.success(),
        "flowctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `dir/switch.toml` for a switch process: its control socket `dir/control.sock`,
/// `sections` (TOML tables such as `[switch]` or `[vxlan]`; the metrics endpoint is off
/// unless they have a `[metrics]` table) and one access port per (name, mode, VLAN), its
/// socket `dir/NAME.sock`. Returns the file's path.
pub fn write_config_file(dir: &TestDir, sections: &str, ports: &[(&str, &str, u16)]) -> PathBuf {
    let mut text = format!(
        "[control]\nsocket = \"{}\"\n",
        dir.join("control.sock").display()
    );
    if !sections.contains("[metrics]") {
        text.push_str("[metrics]\nlisten = \"off\"\n");
    }
    text.push_str(sections);
    text.push('\n');
    for (name, mode, vlan) in ports {
        text.push_str(&format!(
            "[[port]]\nname = \"{name}\"\nsocket = \"{}\"\nmode = \"{mode}\"\nvlan = {vlan}\n",
            dir.join(&format!("{name}.sock")).display()
        ));
    }
    let path = dir.join("switch.toml");
    std::fs::write(&path, text).expect("config written");
    path
}
