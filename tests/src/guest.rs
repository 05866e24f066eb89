//! Real Linux guests under QEMU (TCG) with a vhost-user NIC, driven over their serial
//! console: boot, wait for the guest's READY line, run shell commands, read their output.
//!
//! The guest image (Debian's cloud kernel + a busybox initramfs) is built by
//! `scripts/build-guest-image.sh`; see docs/qemu-guests.md for the QEMU command line and the
//! guest's `/init` protocol (`PATCHBAY-GUEST-READY`, one command per line, `PB-DONE <status>`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{0} not found: install it with .ci/install-deps.sh")]
    Missing(&'static str),
    #[error("building the guest image failed: {0}")]
    Image(String),
    #[error("cannot start QEMU for guest {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("guest {name}: {what} within {secs} s; last console lines:\n{tail}")]
    Timeout {
        name: String,
        what: String,
        secs: u64,
        tail: String,
    },
    #[error("guest {name}: QEMU exited; last console lines:\n{tail}")]
    Exited { name: String, tail: String },
    #[error("guest {name}: console write failed: {source}")]
    Console {
        name: String,
        source: std::io::Error,
    },
}

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Kernel and initramfs for the test guests.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub tsc_khz: String,
}

impl GuestImage {
    /// Builds the image if needed (a no-op when it is up to date) and finds QEMU.
    pub fn prepare() -> Result<GuestImage, GuestError> {
        if !in_path("qemu-system-x86_64") {
            return Err(GuestError::Missing("qemu-system-x86_64"));
        }
        let root = repo_root();
        let out = root.join("build/guest");
        let status = Command::new(root.join("scripts/build-guest-image.sh"))
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| GuestError::Image(e.to_string()))?;
        if !status.success() {
            return Err(GuestError::Image(format!(
                "scripts/build-guest-image.sh exited with {status}"
            )));
        }
        let tsc = Command::new(root.join("scripts/host-tsc-khz.sh"))
            .output()
            .map_err(|e| GuestError::Image(e.to_string()))?;
        Ok(GuestImage {
            kernel: out.join("vmlinuz"),
            initrd: out.join("initramfs.cpio.gz"),
            tsc_khz: String::from_utf8_lossy(&tsc.stdout).trim().to_string(),
        })
    }
}

/// Which virtio transport the guest's NIC uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// virtio-net-pci on the `pc` machine (modern virtio 1.0).
    #[default]
    Pci,
    /// virtio-net-device on QEMU's `microvm` machine (virtio-mmio transport).
    Mmio,
}

/// How a guest's NIC is attached.
#[derive(Debug, Clone)]
pub struct GuestNic {
    /// vhost-user socket (the switch listens unless `server` is set).
    pub socket: PathBuf,
    pub mac: String,
    /// QEMU listens (`server=on`) and the switch connects (switch port in client mode).
    pub server: bool,
    pub transport: Transport,
    /// Extra virtio-net device properties, e.g. `guest_csum=off,guest_tso4=off` (QEMU's
    /// names for the offloads the guest's driver may negotiate).
    pub device_opts: String,
    /// Queue pairs (`queues=` on the netdev, `mq=on` on the device when more than one).
    pub queues: u16,
    /// Client mode: redial the switch's socket every this many seconds after it goes away
    /// (the chardev's `reconnect=`), as a guest that survives a switch restart needs.
    pub reconnect: Option<u32>,
}

impl GuestNic {
    pub fn new(socket: PathBuf, mac: &str) -> GuestNic {
        GuestNic {
            socket,
            mac: mac.to_string(),
            server: false,
            transport: Transport::Pci,
            device_opts: String::new(),
            queues: 1,
            reconnect: None,
        }
    }
}

/// A guest's serial console speaking /init's protocol (docs/qemu-guests.md): a command per
/// line in, its output and `PB-DONE <status>` out. Over QEMU's stdio ([`QemuGuest`]) or a
/// socket (a libvirt guest's `<serial type='unix'>`).
pub struct Console {
    pub name: String,
    input: Box<dyn Write + Send>,
    lines: Receiver<String>,
    recent: Vec<String>,
}

/// Sends each line `reader` yields (without its `\r`) into `tx`, prefixed, on a thread.
fn forward_lines(
    reader: impl std::io::Read + Send + 'static,
    tx: mpsc::Sender<String>,
    prefix: &'static str,
) {
    thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx
                .send(format!("{prefix}{}", line.trim_end_matches('\r')))
                .is_err()
            {
                break;
            }
        }
    });
}

/// One running QEMU guest; its console is reached through `Deref` (`guest.run(...)`).
pub struct QemuGuest {
    console: Console,
    child: Child,
    pub started: Instant,
}

impl std::ops::Deref for QemuGuest {
    type Target = Console;
    fn deref(&self) -> &Console {
        &self.console
    }
}

impl std::ops::DerefMut for QemuGuest {
    fn deref_mut(&mut self) -> &mut Console {
        &mut self.console
    }
}

/// Result of `ping` inside a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingStats {
    pub transmitted: u32,
    pub received: u32,
}

impl QemuGuest {
    /// Boots a guest with one vhost-user NIC. `params` are /init parameters such as
    /// `pb.ip=10.0.0.1/24 pb.vlan=10`.
    pub fn boot(
        image: &GuestImage,
        name: &str,
        nic: &GuestNic,
        params: &str,
    ) -> Result<QemuGuest, GuestError> {
        Self::boot_with(image, name, nic, params, false)
    }

    /// Like [`QemuGuest::boot`]; with `reboots`, a guest reboot restarts the guest in the same
    /// QEMU (the vhost-user connection stays; its rings are stopped and set up again) instead
    /// of ending QEMU.
    pub fn boot_with(
        image: &GuestImage,
        name: &str,
        nic: &GuestNic,
        params: &str,
        reboots: bool,
    ) -> Result<QemuGuest, GuestError> {
        Self::boot_extra(image, name, nic, params, reboots, &[])
    }

    /// Like [`QemuGuest::boot_with`], with more QEMU arguments (`-qmp ...`, `-incoming ...`:
    /// a migration's destination takes the guest's state instead of booting it).
    pub fn boot_extra(
        image: &GuestImage,
        name: &str,
        nic: &GuestNic,
        params: &str,
        reboots: bool,
        extra: &[String],
    ) -> Result<QemuGuest, GuestError> {
        let chardev = if nic.server {
            format!(
                "socket,id=chr0,path={},server=on,wait=off",
                nic.socket.display()
            )
        } else {
            let reconnect = nic
                .reconnect
                .map_or(String::new(), |s| format!(",reconnect={s}"));
            format!("socket,id=chr0,path={}{reconnect}", nic.socket.display())
        };
        let append = format!(
            "console=ttyS0 tsc_early_khz={} tsc=reliable quiet pb.name={name} {params}",
            image.tsc_khz
        );
        // vectors=0: QEMU 7.2 under TCG with vhost-user and MSI-X crashes (docs/qemu-guests.md).
        let (machine, device) = match nic.transport {
            Transport::Pci => (
                "pc",
                format!("virtio-net-pci,vectors=0,netdev=net0,mac={}", nic.mac),
            ),
            Transport::Mmio => (
                "microvm",
                format!("virtio-net-device,netdev=net0,mac={}", nic.mac),
            ),
        };
        let device = if nic.device_opts.is_empty() {
            device
        } else {
            format!("{device},{}", nic.device_opts)
        };
        let (netdev, device) = if nic.queues > 1 {
            (
                format!("type=vhost-user,id=net0,chardev=chr0,queues={}", nic.queues),
                format!("{device},mq=on"),
            )
        } else {
            ("type=vhost-user,id=net0,chardev=chr0".to_string(), device)
        };
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-m", "256M"])
            .args(["-M", &format!("{machine},memory-backend=mem")])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .args(["-chardev", &chardev])
            .args(["-netdev", &netdev])
            .args(["-device", &device])
            .args(["-nodefaults", "-serial", "stdio", "-display", "none"]);
        if !reboots {
            command.arg("-no-reboot");
        }
        command.args(extra);
        // Multi-threaded TCG unless the caller chose (`-accel` in `extra`).
        if !extra.iter().any(|a| a == "-accel") {
            command.args(["-accel", "tcg,thread=multi"]);
        }
        let mut child = command
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .args(["-append", &append])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| GuestError::Spawn {
                name: name.to_string(),
                source,
            })?;
        let (stdin, stdout, stderr) =
            match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                (Some(i), Some(o), Some(e)) => (i, o, e),
                _ => {
                    let _ = child.kill();
                    return Err(GuestError::Spawn {
                        name: name.to_string(),
                        source: std::io::Error::other("no stdio pipes"),
                    });
                }
            };
        let (tx, lines) = mpsc::channel();
        forward_lines(stdout, tx.clone(), "");
        forward_lines(stderr, tx, "[qemu] ");
        Ok(QemuGuest {
            console: Console {
                name: name.to_string(),
                input: Box::new(stdin),
                lines,
                recent: Vec::new(),
            },
            child,
            started: Instant::now(),
        })
    }

    /// Powers the guest off and waits for QEMU to exit (killing it after a grace period).
    pub fn poweroff(mut self) {
        self.console.send_poweroff();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Console {
    /// A console on a byte stream (a connected socket): lines from `reader`, commands to
    /// `writer`.
    pub fn on_stream(
        name: &str,
        reader: impl std::io::Read + Send + 'static,
        writer: impl Write + Send + 'static,
    ) -> Console {
        let (tx, lines) = mpsc::channel();
        forward_lines(reader, tx, "");
        Console {
            name: name.to_string(),
            input: Box::new(writer),
            lines,
            recent: Vec::new(),
        }
    }

    /// Asks the guest to power off (`poweroff -f`), without waiting.
    pub fn send_poweroff(&mut self) {
        let _ = writeln!(self.input, "poweroff -f");
        let _ = self.input.flush();
    }

    fn tail(&self) -> String {
        let start = self.recent.len().saturating_sub(25);
        self.recent[start..].join("\n")
    }

    /// Reads console lines until one contains `needle`; returns the lines read (inclusive).
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<Vec<String>, GuestError> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.recent.push(line.clone());
                    let hit = line.contains(needle);
                    seen.push(line);
                    if hit {
                        return Ok(seen);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(GuestError::Timeout {
                        name: self.name.clone(),
                        what: format!("no '{needle}'"),
                        secs: timeout.as_secs(),
                        tail: self.tail(),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(GuestError::Exited {
                        name: self.name.clone(),
                        tail: self.tail(),
                    })
                }
            }
        }
    }

    /// Waits for /init's READY line; returns the guest's MAC.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<String, GuestError> {
        let lines = self.expect("PATCHBAY-GUEST-READY", timeout)?;
        let ready = lines.last().cloned().unwrap_or_default();
        Ok(ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("mac="))
            .unwrap_or("")
            .to_string())
    }

    /// [`Console::run`] for a command that must succeed (exit status 0) within 3 minutes:
    /// its output lines.
    pub fn run_ok(&mut self, command: &str) -> Vec<String> {
        let (status, out) = self
            .run(command, Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("{}: `{command}`: {e}", self.name));
        assert_eq!(status, 0, "{}: `{command}`: {out:?}", self.name);
        out
    }

    /// Runs a shell command in the guest; returns its exit status and output lines.
    pub fn run(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<(i32, Vec<String>), GuestError> {
        writeln!(self.input, "{command}")
            .and_then(|_| self.input.flush())
            .map_err(|source| GuestError::Console {
                name: self.name.clone(),
                source,
            })?;
        let mut lines = self.expect("PB-DONE ", timeout)?;
        let done = lines.pop().unwrap_or_default();
        let status = done
            .rsplit(' ')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1);
        Ok((status, lines))
    }

    /// Pings `ip` `count` times (1 s apart, 2 s wait each) and parses the summary.
    pub fn ping(&mut self, ip: &str, count: u32) -> Result<PingStats, GuestError> {
        let (_, lines) = self.run(
            &format!("ping -c {count} -W 2 {ip}"),
            Duration::from_secs(u64::from(count) * 3 + 30),
        )?;
        let summary = lines
            .iter()
            .find(|l| l.contains("packets transmitted"))
            .cloned()
            .unwrap_or_default();
        let number_before = |word: &str| -> u32 {
            summary
                .split(',')
                .find(|part| part.contains(word))
                .and_then(|part| part.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Ok(PingStats {
            transmitted: number_before("transmitted"),
            received: number_before("received"),
        })
    }
}

impl Drop for QemuGuest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Skips a test that needs something this machine lacks, or fails it when
/// `PATCHBAY_REQUIRE_KVM=1` (CI), where every such test must run.
pub fn skip_or_fail(test: &str, reason: &str) {
    if std::env::var("PATCHBAY_REQUIRE_KVM").is_ok_and(|v| v == "1") {
        panic!("{test}: cannot run and PATCHBAY_REQUIRE_KVM=1: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// Starts a TCP sink in `to` on port 5000, writing what arrives to /tmp/got (see
/// [`received_sum`]).
pub fn start_tcp_sink(to: &mut QemuGuest) {
    to.run_ok("rm -f /tmp/got; (sleep 600 | nc -l -p 5000 > /tmp/got &) ; sleep 0.3");
}

/// Starts sending `mib` MiB of random bytes (kept in /tmp/data: see [`sum_of`]) from `from`
/// to `ip` port 5000, in the background; `also` (a shell command, e.g. pings into a file)
/// runs in the background beside it.
pub fn start_tcp_stream(from: &mut QemuGuest, ip: &str, mib: u32, also: &str) {
    let also = if also.is_empty() {
        String::new()
    } else {
        format!("({also} &); ")
    };
    from.run_ok(&format!(
        "dd if=/dev/urandom of=/tmp/data bs=1M count={mib} 2>/dev/null; \
         (nc {ip} 5000 < /tmp/data > /dev/null 2>&1 &); {also}sleep 1"
    ));
}

/// The SHA-256 of `/tmp/got` in `to` once it holds `size` bytes (waiting up to 30 s), and
/// the lines that said so.
pub fn received_sum(to: &mut QemuGuest, size: u64) -> (String, Vec<String>) {
    let (_, out) = to
        .run(
            &format!(
                "i=0; while [ \"$(stat -c %s /tmp/got)\" -lt {size} ] && [ $i -lt 300 ]; \
                 do sleep 0.1; i=$((i+1)); done; stat -c %s /tmp/got; sha256sum /tmp/got"
            ),
            std::time::Duration::from_secs(120),
        )
        .unwrap();
    (
        sum_of(&out, "/tmp/got").unwrap_or_else(|| "(none)".into()),
        out,
    )
}

/// The SHA-256 that `sha256sum FILE` printed among `lines`.
pub fn sum_of(lines: &[String], file: &str) -> Option<String> {
    lines
        .iter()
        .find(|l| l.contains(file))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

/// Sends `size` random bytes (whole MiB) from `from` to `to_ip` (listening on `to`) over TCP
/// with busybox nc, waits for them to arrive and asserts that both ends' SHA-256 sums
/// match; returns the two sums.
pub fn tcp_transfer(
    from: &mut QemuGuest,
    to: &mut QemuGuest,
    to_ip: &str,
    port: u16,
    size: u64,
) -> (String, String) {
    const T: std::time::Duration = std::time::Duration::from_secs(120);
    let (status, out) = to
        // busybox nc closes its sending side when its stdin ends, and the peer's nc quits
        // on that: the listener's stdin must stay open until the transfer is done.
        .run(
            &format!("rm -f /tmp/got; (sleep 600 | nc -l -p {port} > /tmp/got &) ; sleep 0.3"),
            T,
        )
        .unwrap();
    assert_eq!(status, 0, "{}: {out:?}", to.name);
    let (status, out) = from
        .run(
            &format!(
                "dd if=/dev/urandom of=/tmp/data bs=1M count={} 2>/dev/null && \
                 nc {to_ip} {port} < /tmp/data && sha256sum /tmp/data",
                size >> 20
            ),
            T,
        )
        .unwrap();
    assert_eq!(status, 0, "{} sending: {out:?}", from.name);
    let sent = sum_of(&out, "/tmp/data").expect("sender's sum");
    let (got, out) = received_sum(to, size);
    assert_eq!(
        got, sent,
        "{} -> {}: the file arrived whole ({out:?})",
        from.name, to.name
    );
    (sent, got)
}
