//! A VM of the bundled VMM (`patchbay-vmm`) running one guest program, its console lines on
//! a channel; killed when dropped. The demo and the namespace tests start their VMs here.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

pub struct BundledVm {
    child: Child,
    lines: Receiver<String>,
    pub name: String,
}

impl BundledVm {
    /// Starts `binary` (the `patchbay-vmm` of this build) with one NIC on `socket`, the guest
    /// at `ip` (A.B.C.D/N) with `mac` if given, running `program` (its command line).
    pub fn start(
        binary: &Path,
        name: &str,
        socket: &Path,
        mac: Option<&str>,
        ip: &str,
        program: &str,
    ) -> Result<BundledVm, String> {
        let mac = mac.map(|m| format!(",mac={m}")).unwrap_or_default();
        let mut child = Command::new(binary)
            .arg("--net")
            .arg(format!("socket={}{mac},ip={ip}", socket.display()))
            .args(["--cmdline", program])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        Ok(BundledVm {
            child,
            lines,
            name: name.to_string(),
        })
    }

    /// Waits for a console line starting with `prefix` and returns it, handing every line
    /// read (that one included) to `each`.
    pub fn wait_line(
        &self,
        prefix: &str,
        timeout: Duration,
        mut each: impl FnMut(&str),
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|_| format!("{}: no '{prefix}' line within {timeout:?}", self.name))?;
            each(&line);
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }
}

impl Drop for BundledVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
