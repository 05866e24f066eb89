//! A VM of the `patchbay-vmm` binary whose console lines the caller reads: shared by the
//! VMM's tests and its benchmark (`#[path]`-included there).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_patchbay-vmm");

/// A running VM whose console (stdout) and VMM messages (stderr, prefixed `[vmm] `) arrive on
/// a channel.
pub struct Vm {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Vm {
    /// `net`: (switch port socket, ip/prefix), or no NIC at all.
    /// A VM with one NIC on `socket` (the guest at `ip`, e.g. 10.0.0.1/24) running `program`.
    pub fn start(socket: &Path, ip: &str, program: &str) -> Vm {
        Self::spawn(Some((socket, ip)), program, false)
    }

    pub fn spawn(net: Option<(&Path, &str)>, program: &str, verbose: bool) -> Vm {
        let mut cmd = Command::new(VMM);
        if let Some((sock, ip)) = net {
            cmd.arg("--net")
                .arg(format!("socket={},ip={ip}", sock.display()));
        }
        if verbose {
            cmd.arg("--verbose");
        }
        let mut child = cmd
            .args(["--cmdline", program])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start patchbay-vmm");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("[vmm] {l}"));
            }
        });
        Vm {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    pub fn console(&self) -> String {
        self.seen.join("\n")
    }

    /// The next line starting with `prefix` (earlier lines are kept in `seen`).
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(e) => panic!("no '{prefix}' line ({e}); so far:\n{}", self.console()),
            }
        }
    }

    /// Waits for the VM to exit; returns its status and every line it printed.
    pub fn wait(mut self, timeout: Duration) -> (i32, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "VM did not exit; so far:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        // The readers end at EOF; collect what they still have.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
