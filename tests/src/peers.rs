//! Reference vhost-user implementations run next to Patchbay, for conformance tests and as
//! benchmark baselines.
//!
//! [`Testpmd`] runs DPDK's `dpdk-testpmd` as a vhost-user *backend* with two `net_vhost`
//! ports in io-forward mode: every frame received on port 0 is sent out of port 1 and vice
//! versa, with no lookup at all. It is the floor any vhost-user switch can be compared with
//! (see `notes/peers.md`). Connect a [`TestPort`](crate::frontend::TestPort) to each of
//! [`Testpmd::sock`]`("a.sock")` and `("b.sock")`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// A running `dpdk-testpmd` with two vhost-user ports, `a.sock` (port 0) and `b.sock`
/// (port 1), io-forwarding between them; stopped (SIGINT, then SIGKILL after 5 s) and its
/// directory removed on drop.
///
/// It runs with `-l 0,1`: the main lcore on CPU 0 (idle, waiting on stdin) and the one
/// forwarding lcore busy-polling on CPU 1. Memory is `--no-huge -m 512` (no hugepages
/// needed); the log goes to `testpmd.log` in its private directory.
pub struct Testpmd {
    child: Child,
    stdin: ChildStdin,
    dir: PathBuf,
    print_stats: bool,
}

/// Where `exe` is found in `PATH`, if anywhere.
fn find_in_path(exe: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(exe))
            .find(|f| f.is_file())
    })
}

impl Testpmd {
    /// Path of `dpdk-testpmd` in `PATH`, or `None` if it is not installed.
    pub fn find() -> Option<PathBuf> {
        find_in_path("dpdk-testpmd")
    }

    /// Starts testpmd, or returns `None` (after printing why) if it is not installed.
    ///
    /// With `client == false` testpmd listens on both sockets (connect with
    /// [`TestPort::connect`](crate::frontend::TestPort::connect), which retries until the
    /// socket appears); with `client == true` it connects, and keeps reconnecting, to sockets
    /// the caller listens on. Forwarding starts once both ports are ready, so callers should
    /// send probes until one gets through.
    ///
    /// # Panics
    /// If the private directory cannot be created or the executable cannot be spawned.
    pub fn start(client: bool) -> Option<Testpmd> {
        let vdev = |i: u32, dir: &Path, sock: &str| {
            format!(
                "net_vhost{i},iface={},queues=1,client={}",
                dir.join(sock).display(),
                u8::from(client)
            )
        };
        let pmd = Testpmd::spawn(
            |dir| vec![vdev(0, dir, "a.sock"), vdev(1, dir, "b.sock")],
            "--auto-start",
            &["--forward-mode=io", "--nb-cores=1"],
        )?;
        if !client {
            // Its first start on a cold machine can take longer than a frontend's connect
            // retries (EAL sets up its 512 MiB first): wait for the sockets here.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !["a.sock", "b.sock"].iter().all(|s| pmd.sock(s).exists())
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Some(pmd)
    }

    /// Starts testpmd as a vhost-user *frontend*: one `virtio_user` port per socket in
    /// `sockets` (a switch listens on them), with MAC 02:00:00:00:00:0N for port N, all
    /// forwarded by one lcore with `app_args` (e.g. `--forward-mode=mac --tx-first`).
    /// Returns None (after `skip_or_fail`) if testpmd is not installed.
    pub fn start_frontend(sockets: &[PathBuf], app_args: &[&str]) -> Option<Testpmd> {
        Testpmd::frontend(sockets, 1, "--auto-start", app_args)
    }

    /// [`Testpmd::start_frontend`] with `queues` queue pairs per port (virtio-net MQ; pass
    /// `--rxq`/`--txq` in `app_args` to use them).
    pub fn start_frontend_multiqueue(
        sockets: &[PathBuf],
        queues: u16,
        app_args: &[&str],
    ) -> Option<Testpmd> {
        Testpmd::frontend(sockets, queues, "--auto-start", app_args)
    }

    /// [`Testpmd::start_frontend`] at testpmd's interactive prompt instead of forwarding at
    /// once: configure it with [`Testpmd::command`] (e.g. offloads), then `start`.
    pub fn start_frontend_interactive(sockets: &[PathBuf], app_args: &[&str]) -> Option<Testpmd> {
        let pmd = Testpmd::frontend(sockets, 1, "-i", app_args)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pmd.log().contains("testpmd> ") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(pmd)
    }

    /// Sends one command line to an interactive testpmd and waits (up to 10 s) for the prompt
    /// that follows it; returns what it printed meanwhile.
    pub fn command(&mut self, line: &str) -> String {
        use std::io::Write;
        let before = self.log().len();
        let prompts = self.log().matches("testpmd> ").count();
        writeln!(self.stdin, "{line}").expect("write to testpmd");
        self.stdin.flush().expect("flush testpmd's stdin");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches("testpmd> ").count() <= prompts && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.log().get(before..).unwrap_or_default().to_string()
    }

    fn frontend(
        sockets: &[PathBuf],
        queues: u16,
        mode: &str,
        app_args: &[&str],
    ) -> Option<Testpmd> {
        let vdevs = |_: &Path| {
            sockets
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    format!(
                        "virtio_user{i},path={},queues={queues},mac=02:00:00:00:00:{i:02x}",
                        s.display()
                    )
                })
                .collect()
        };
        Testpmd::spawn(vdevs, mode, app_args)
    }

    /// Spawns testpmd (main lcore on CPU 0, forwarding lcore on CPU 1, no hugepages) with
    /// the vdevs `vdevs` builds for its private directory.
    fn spawn(
        vdevs: impl FnOnce(&Path) -> Vec<String>,
        mode: &str,
        app_args: &[&str],
    ) -> Option<Testpmd> {
        let Some(exe) = Testpmd::find() else {
            crate::guest::skip_or_fail(
                "dpdk-testpmd",
                "dpdk-testpmd not found in PATH (Debian: dpdk-dev librte-net-vhost23 \
                 librte-net-virtio23 librte-mempool-ring23; .ci/install-deps.sh installs them)",
            );
            return None;
        };
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pb-testpmd-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create testpmd dir");
        let log = fs::File::create(dir.join("testpmd.log")).expect("create log");
        let mut cmd = Command::new(exe);
        cmd.args(["-l", "0,1", "--no-huge", "-m", "512", "--no-pci"])
            .arg(format!("--file-prefix=pbfe{}-{n}", std::process::id()));
        for v in vdevs(&dir) {
            cmd.arg("--vdev").arg(v);
        }
        let mut child = cmd
            .args(["--", mode])
            .args(app_args)
            .arg("--total-num-mbufs=16384")
            .env("RUNTIME_DIRECTORY", &dir)
            .env("XDG_RUNTIME_DIR", &dir)
            // testpmd exits when stdin reaches EOF: keep a pipe open.
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn dpdk-testpmd");
        let stdin = child.stdin.take().expect("stdin pipe");
        Some(Testpmd {
            child,
            stdin,
            dir,
            print_stats: true,
        })
    }

    /// Path of one of its sockets, `"a.sock"` (port 0) or `"b.sock"` (port 1).
    pub fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Process id (to read its CPU time or memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything testpmd printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("testpmd.log")).unwrap_or_default()
    }

    /// Whether dropping prints the forwarding statistics testpmd reports on exit (default on).
    pub fn set_print_stats(&mut self, on: bool) {
        self.print_stats = on;
    }

    /// Stops testpmd and returns everything it printed, including the forwarding statistics
    /// it reports on exit ("Accumulated forward statistics for all ports", RX/TX-dropped),
    /// instead of printing them.
    pub fn stop(mut self) -> String {
        self.print_stats = false;
        self.terminate();
        self.log()
    }

    /// SIGINT (testpmd prints its statistics and exits), SIGKILL if still running after 5 s.
    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.terminate();
        if self.print_stats {
            // The forwarding statistics testpmd prints on exit.
            for l in self.log().lines().filter(|l| l.contains("-packets")) {
                println!("  testpmd: {}", l.trim());
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
