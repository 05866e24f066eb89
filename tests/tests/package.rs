//! The Debian package (scripts/build-deb.sh, docs/packaging.md) builds, installs with
//! `dpkg -i` into a clean Debian 12 root (debootstrap minbase, with systemd and man-db so the
//! unit's references resolve), `systemd-analyze verify` accepts its unit there, and the
//! installed switch starts from the shipped config: it tells systemd it is ready and feeds
//! the watchdog over $NOTIFY_SOCKET, logs for journald, answers the installed flowctl and
//! serves metrics; it stops on SIGTERM, and the package removes cleanly.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use patchbay_tests::guest::{repo_root, skip_or_fail};
use patchbay_tests::switch::TestDir;

const TEST: &str = "debian_package_installs_verifies_and_starts_from_its_config";

fn run(what: &str, command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The started switch, killed if the test fails before it stops it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn chroot(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root).args(args);
    c
}

fn missing_tool() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (chroot, dpkg -i into a root)".into());
    }
    ["dpkg-deb", "debootstrap", "chroot", "unshare", "objdump"]
        .into_iter()
        .find(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
        })
        .map(|t| format!("{t} not installed (.ci/install-deps.sh installs debootstrap)"))
}

/// Waits for a datagram on the notify socket that contains `what`.
fn notified(socket: &UnixDatagram, what: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {what} from the switch; got {seen:?}");
        socket.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = message.lines().any(|l| l == what);
            seen.push(message);
            if hit {
                return seen;
            }
        }
    }
}

#[test]
fn debian_package_installs_verifies_and_starts_from_its_config() {
    if let Some(reason) = missing_tool() {
        return skip_or_fail(TEST, &reason);
    }
    let repo = repo_root();
    let out = run(
        "scripts/build-deb.sh --debug",
        Command::new(repo.join("scripts/build-deb.sh"))
            .arg("--debug")
            .current_dir(&repo),
    );
    let deb = repo.join(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap(),
    );
    assert!(deb.is_file(), "{} built", deb.display());
    let fields = run("dpkg-deb -f", Command::new("dpkg-deb").arg("-f").arg(&deb));
    let fields = String::from_utf8_lossy(&fields.stdout).into_owned();
    assert!(fields.contains("Package: patchbay"), "{fields}");
    assert!(fields.contains("Depends: libc6 (>= 2."), "{fields}");

    let dir = TestDir::new("package");
    let root: PathBuf = dir.join("root");
    let boot = Command::new("debootstrap")
        .args(["--variant=minbase", "--include=systemd,man-db", "bookworm"])
        .arg(&root)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("debootstrap runs");
    if !boot.status.success() {
        let log =
            std::fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
        return skip_or_fail(
            TEST,
            &format!(
                "debootstrap could not make a Debian 12 root (is deb.debian.org reachable?): {}\n{log}",
                String::from_utf8_lossy(&boot.stderr)
            ),
        );
    }

    // Install.
    std::fs::copy(&deb, root.join("tmp/patchbay.deb")).unwrap();
    run(
        "dpkg -i",
        &mut chroot(&root, &["dpkg", "-i", "/tmp/patchbay.deb"]),
    );
    for f in [
        "usr/bin/patchbay-switch",
        "usr/bin/flowctl",
        "usr/bin/patchbay-vmm",
        "etc/patchbay/switch.toml",
        "lib/systemd/system/patchbay-switch.service",
        "usr/share/man/man1/patchbay-switch.1.gz",
        "usr/share/man/man1/flowctl.1.gz",
        "usr/share/bash-completion/completions/flowctl",
        "usr/share/zsh/vendor-completions/_flowctl",
        "usr/share/fish/vendor_completions.d/flowctl.fish",
        "usr/share/patchbay/grafana/patchbay.json",
    ] {
        assert!(root.join(f).exists(), "/{f} installed");
    }
    let man = run("man -w", &mut chroot(&root, &["man", "-w", "flowctl"]));
    assert!(String::from_utf8_lossy(&man.stdout).contains("flowctl.1.gz"));

    // The unit, as systemd reads it (every directive known, ExecStart and the man pages of
    // Documentation= found).
    let verify = run(
        "systemd-analyze verify",
        &mut chroot(
            &root,
            &[
                "systemd-analyze",
                "verify",
                "/lib/systemd/system/patchbay-switch.service",
            ],
        ),
    );
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
    run(
        "--check of the shipped config",
        &mut chroot(
            &root,
            &[
                "/usr/bin/patchbay-switch",
                "--config",
                "/etc/patchbay/switch.toml",
                "--check",
            ],
        ),
    );

    // Start it from the shipped config as systemd would: ExecStart's command line, a notify
    // socket, a watchdog, stderr to "the journal".
    let notify = UnixDatagram::bind(root.join("run/notify.sock")).expect("notify socket");
    // (WATCHDOG_PID names the service's main process, as systemd sets it: the shell's pid,
    // which exec hands to unshare and unshare to the switch.)
    let mut switch = Command::new("sh")
        .args([
            "-c",
            "WATCHDOG_PID=$$ exec unshare --mount --mount-proc --root \"$0\" \
             /usr/bin/patchbay-switch --config /etc/patchbay/switch.toml",
        ])
        .arg(&root)
        .env("NOTIFY_SOCKET", "/run/notify.sock")
        .env("WATCHDOG_USEC", "2000000")
        .env("JOURNAL_STREAM", "8:12345")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(Running)
        .expect("the installed switch starts");
    let ready = notified(&notify, "READY=1", Duration::from_secs(20));
    assert!(
        ready.iter().any(|m| m.contains("STATUS=0 port(s)")),
        "{ready:?}"
    );
    notified(&notify, "WATCHDOG=1", Duration::from_secs(10));
    let shown = run(
        "flowctl show switch",
        &mut chroot(&root, &["/usr/bin/flowctl", "show", "switch"]),
    );
    assert!(String::from_utf8_lossy(&shown.stdout).contains("ports:          0"));
    let mut metrics = String::new();
    let mut http =
        std::net::TcpStream::connect("127.0.0.1:9184").expect("the shipped metrics address");
    std::io::Write::write_all(&mut http, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    std::io::Read::read_to_string(&mut http, &mut metrics).unwrap();
    assert!(
        metrics.contains("patchbay_build_info{version="),
        "{metrics}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(switch.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    notified(&notify, "STOPPING=1", Duration::from_secs(10));
    let status = switch.0.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut switch.0.stderr.take().unwrap(), &mut log).unwrap();
    assert!(status.success(), "exit {status}: {log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with("<6>patchbay_switch: switch running: 0 port(s)")),
        "journald lines (priority prefix, no timestamp): {log}"
    );

    // And it goes away again, leaving its config (a conffile) behind.
    run("dpkg -r", &mut chroot(&root, &["dpkg", "-r", "patchbay"]));
    assert!(!root.join("usr/bin/patchbay-switch").exists());
    assert!(root.join("etc/patchbay/switch.toml").exists());
}
