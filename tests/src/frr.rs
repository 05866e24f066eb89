//! FRR (zebra + bgpd) instances in network namespaces, for the BGP EVPN tests: one set of
//! files per instance under a directory owned by `frr` (zebra refuses others), every Unix
//! socket path given explicitly (they are not per namespace: without `-z`, one namespace's
//! bgpd would reach another's zebra). See ../shared/notes/frr-evpn.md and docs/evpn.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::netns::{output_ok, wait_until, Netns, NetnsError, Result};

const ZEBRA: &str = "/usr/lib/frr/zebra";
const BGPD: &str = "/usr/lib/frr/bgpd";

/// Checks that FRR is installed (Debian `frr`, from .ci/install-deps.sh).
pub fn available() -> std::result::Result<(), String> {
    for bin in [ZEBRA, BGPD, "/usr/bin/vtysh"] {
        if !Path::new(bin).is_file() {
            return Err(format!(
                "{bin} is missing (install Debian's frr: .ci/install-deps.sh)"
            ));
        }
    }
    nix::unistd::User::from_name("frr")
        .ok()
        .flatten()
        .map(|_| ())
        .ok_or_else(|| "no user frr (install Debian's frr)".to_string())
}

/// bgpd.conf of a host: iBGP in AS 65000 to the route reflector, EVPN for every VNI zebra
/// finds (`advertise-all-vni`), fast timers for tests.
pub fn host_bgpd_conf(router_id: &str, reflector: &str) -> String {
    format!(
        "router bgp 65000\n bgp router-id {router_id}\n no bgp default ipv4-unicast\n \
         timers bgp 3 9\n neighbor {reflector} remote-as 65000\n \
         neighbor {reflector} advertisement-interval 0\n address-family l2vpn evpn\n  \
         neighbor {reflector} activate\n  advertise-all-vni\n exit-address-family\n"
    )
}

/// bgpd.conf of the route reflector for `clients`.
pub fn reflector_bgpd_conf(router_id: &str, clients: &[&str]) -> String {
    let mut s = format!(
        "router bgp 65000\n bgp router-id {router_id}\n no bgp default ipv4-unicast\n \
         timers bgp 3 9\n"
    );
    for c in clients {
        s.push_str(&format!(
            " neighbor {c} remote-as 65000\n neighbor {c} advertisement-interval 0\n"
        ));
    }
    s.push_str(" address-family l2vpn evpn\n");
    for c in clients {
        s.push_str(&format!(
            "  neighbor {c} activate\n  neighbor {c} route-reflector-client\n"
        ));
    }
    s.push_str(" exit-address-family\n");
    s
}

/// zebra and bgpd running in a namespace; stopped when dropped.
pub struct Frr {
    ns: String,
    dir: PathBuf,
    running: bool,
}

fn chown_frr(path: &Path) -> Result<()> {
    output_ok(Command::new("chown").args(["-R", "frr:frr"]).arg(path)).map(|_| ())
}

impl Frr {
    /// Starts zebra and bgpd in `ns` with `bgpd_conf`, their files in `base/name` (created,
    /// owned by frr).
    pub fn start(ns: &Netns, base: &Path, name: &str, bgpd_conf: &str) -> Result<Frr> {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| NetnsError::Unexpected(e.to_string()))?;
        std::fs::write(dir.join("zebra.conf"), format!("hostname {name}\n"))
            .and_then(|_| std::fs::write(dir.join("bgpd.conf"), bgpd_conf))
            .map_err(|e| NetnsError::Unexpected(e.to_string()))?;
        // Parents must be traversable by frr; the test directory is root's 0755.
        chown_frr(&dir)?;
        let d = dir.display().to_string();
        for (bin, daemon) in [(ZEBRA, "zebra"), (BGPD, "bgpd")] {
            output_ok(&mut ns.exec([
                bin,
                "-d",
                "-f",
                &format!("{d}/{daemon}.conf"),
                "-i",
                &format!("{d}/{daemon}.pid"),
                "--vty_socket",
                &d,
                "-z",
                &format!("{d}/zserv.api"),
                "-P",
                "0",
                "-u",
                "frr",
                "-g",
                "frr",
                "--log",
                &format!("file:{d}/{daemon}.log"),
            ]))?;
        }
        Ok(Frr {
            ns: ns.name().to_string(),
            dir,
            running: true,
        })
    }

    /// `vtysh -c CMD` against this instance.
    pub fn vtysh(&self, cmd: &str) -> Result<String> {
        output_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.ns, "vtysh", "--vty_socket"])
                .arg(&self.dir)
                .args(["-c", cmd]),
        )
    }

    /// How many BGP EVPN sessions are established.
    pub fn established(&self) -> Result<usize> {
        let out = self.vtysh("show bgp l2vpn evpn summary json")?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| NetnsError::Unexpected(format!("vtysh json: {e}: {out}")))?;
        Ok(v["peers"]
            .as_object()
            .map(|p| p.values().filter(|p| p["state"] == "Established").count())
            .unwrap_or(0))
    }

    /// Waits until `n` sessions are established.
    pub fn wait_established(&self, n: usize, timeout: Duration) -> Result<()> {
        wait_until(timeout, &format!("{n} BGP sessions in {}", self.ns), || {
            Ok(self.established()? >= n)
        })
    }

    /// The last lines of this instance's logs, for a failure message.
    pub fn logs(&self) -> String {
        ["zebra.log", "bgpd.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                format!(
                    "--- {f}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops bgpd and zebra (SIGTERM: bgpd closes its sessions, so peers withdraw at once),
    /// waiting for them to exit.
    pub fn stop(&mut self) {
        if !std::mem::take(&mut self.running) {
            return;
        }
        for daemon in ["bgpd", "zebra"] {
            let pid = std::fs::read_to_string(self.dir.join(format!("{daemon}.pid")))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let _ = wait_until(Duration::from_secs(5), "FRR to exit", || {
                    // SAFETY: signal 0 only checks that the process exists.
                    Ok(unsafe { libc::kill(pid, 0) } != 0)
                });
            }
        }
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        self.stop();
    }
}
