//! BGP EVPN (RFC 7432, RFC 8365) through FRR: the switch joins a fabric of VXLAN hosts that
//! learn each other's MACs and flood lists from BGP, without a control plane of its own and
//! without FRR knowing it exists. Per VNI, "shadow" kernel devices that carry no traffic
//! stand where zebra expects a Linux host's bridge and vxlan device (`shadow.rs`); the agent
//! (`agent.rs`) writes the switch's local MACs into them and installs what zebra writes
//! there into the VTEP; `netlink.rs` speaks rtnetlink. docs/evpn.md says why this way and
//! how to pair it with FRR.

pub mod agent;
pub mod netlink;
pub mod shadow;

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use patchbay_overlay::Vni;
use serde::{Deserialize, Serialize};

use agent::{Agent, EvpnCounters, Kernel, Tables, VniDevices, VniStatus};
use netlink::{FdbChange, FdbEntry, NetlinkError, Rtnl};
use shadow::Shadow;

/// How often the agent runs with nothing to wake it: FDB events and the learning table's
/// change log wake it at once; the timer is for retries and VNIs mapped at run time.
const TICK: Duration = Duration::from_millis(100);

/// The `[evpn]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvpnConfig {
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The VNIs to run EVPN for; absent: every VNI `[vxlan]` maps (and those mapped later).
    #[serde(default)]
    pub vnis: Option<Vec<Vni>>,
    /// Shadow devices are named PREFIX + br/vx/tap + VNI (at most 4 characters).
    #[serde(default = "default_prefix")]
    pub device_prefix: String,
    /// UDP port of the shadow vxlan devices: any port the VTEP does not use (no traffic is
    /// sent or expected on it; the kernel only binds it).
    #[serde(default = "default_shadow_port")]
    pub shadow_udp_port: u16,
}

fn default_enabled() -> bool {
    true
}
fn default_prefix() -> String {
    "pb".into()
}
fn default_shadow_port() -> u16 {
    4790
}

impl Default for EvpnConfig {
    fn default() -> Self {
        EvpnConfig {
            enabled: true,
            vnis: None,
            device_prefix: default_prefix(),
            shadow_udp_port: default_shadow_port(),
        }
    }
}

impl EvpnConfig {
    /// Checks what can be checked without the VTEP (`vtep_port`: the port it listens on).
    pub fn validate(&self, vtep_port: Option<u16>) -> Result<(), String> {
        let p = &self.device_prefix;
        if p.is_empty()
            || p.len() > shadow::MAX_PREFIX_LEN
            || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "device_prefix '{p}': 1 to {} letters, digits or '-'",
                shadow::MAX_PREFIX_LEN
            ));
        }
        match vtep_port {
            None if self.enabled => Err("EVPN needs the [vxlan] tunnel".into()),
            Some(v) if v == self.shadow_udp_port => Err(format!(
                "shadow_udp_port {} is the VTEP's own port; choose another",
                self.shadow_udp_port
            )),
            _ if self.shadow_udp_port == 0 => Err("shadow_udp_port 0".into()),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvpnError {
    #[error("[evpn]: {0}")]
    Config(String),
    #[error("evpn: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("cannot start the EVPN thread: {0}")]
    Thread(std::io::Error),
}

/// The kernel through rtnetlink: shadow devices and their FDBs.
struct NetlinkKernel {
    rtnl: Rtnl,
    events: Rtnl,
    shadows: HashMap<Vni, Shadow>,
    prefix: String,
    local: IpAddr,
    udp_port: u16,
}

/// Whatever stops the agent (a shutdown, or the switch going away), its devices go with it:
/// zebra withdraws the routes.
impl Drop for NetlinkKernel {
    fn drop(&mut self) {
        for (_, s) in self.shadows.drain() {
            s.remove(&mut self.rtnl);
        }
    }
}

impl Kernel for NetlinkKernel {
    fn add_vni(&mut self, vni: Vni) -> Result<VniDevices, NetlinkError> {
        let s = Shadow::create(&mut self.rtnl, &self.prefix, vni, self.local, self.udp_port)?;
        let d = VniDevices {
            vxlan: s.vxlan,
            tap: s.tap_index,
        };
        self.shadows.insert(vni, s);
        Ok(d)
    }

    fn remove_vni(&mut self, vni: Vni) {
        if let Some(s) = self.shadows.remove(&vni) {
            s.remove(&mut self.rtnl);
        }
    }

    fn fdb_update(
        &mut self,
        port: u32,
        add: bool,
        macs: &[[u8; 6]],
    ) -> Result<Vec<Result<(), std::io::Error>>, NetlinkError> {
        self.rtnl.fdb_update(port, add, macs)
    }

    fn fdb_changes(&mut self, out: &mut Vec<FdbChange>) -> Result<(), NetlinkError> {
        self.events.fdb_changes(out)
    }

    fn dump_fdb(&mut self) -> Result<Vec<FdbEntry>, NetlinkError> {
        self.rtnl.dump_fdb()
    }
}

/// What `flowctl show evpn` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvpnSnapshot {
    pub vnis: Vec<VniStatus>,
    pub mac_routes_received: u64,
    pub mac_routes_withdrawn: u64,
    pub flood_routes_received: u64,
    pub flood_routes_withdrawn: u64,
    pub routes_refused: u64,
    pub local_macs_moved_away: u64,
    pub netlink_errors: u64,
    pub resyncs: u64,
}

/// A running EVPN agent: its thread, counters and status.
pub struct Evpn {
    pub counters: Arc<EvpnCounters>,
    status: Arc<Mutex<Vec<VniStatus>>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

/// Where the agent finds the switch's tables.
pub trait SwitchTables: Send + Sync + 'static {
    /// Calls `f` with the tables, or returns false if the switch is stopping.
    fn with_tables(&self, f: &mut dyn FnMut(&Tables)) -> bool;
}

impl Evpn {
    /// Opens the netlink sockets and starts the agent for the VTEP at `local`.
    pub fn start(
        config: &EvpnConfig,
        local: IpAddr,
        tables: Arc<dyn SwitchTables>,
    ) -> Result<Evpn, EvpnError> {
        let events = Rtnl::fdb_events()?;
        let kernel = NetlinkKernel {
            rtnl: Rtnl::open()?,
            events,
            shadows: HashMap::new(),
            prefix: config.device_prefix.clone(),
            local,
            udp_port: config.shadow_udp_port,
        };
        let counters = Arc::new(EvpnCounters::default());
        let status = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut agent = Agent::new(kernel, config.vnis.clone());
        let (c, s, st) = (counters.clone(), status.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name("evpn".into())
            .spawn(move || {
                let mut first = true;
                while !st.load(Ordering::Relaxed) {
                    let running = tables.with_tables(&mut |t| {
                        agent.tick(t, &c);
                        if first {
                            // Entries zebra made before we subscribed (a restart).
                            agent.resync(t, &c);
                            first = false;
                        }
                    });
                    if !running {
                        break;
                    }
                    if let Ok(mut s) = s.lock() {
                        *s = agent.status();
                    }
                    let mut changes_fd = None;
                    tables.with_tables(&mut |t| changes_fd = t.mac_table.changes_fd());
                    wait_readable(agent.kernel().events.as_raw_fd(), changes_fd, TICK);
                }
                // With the switch still there, its tables lose what routes installed; the
                // devices go when the agent (its kernel side) is dropped, either way.
                tables.with_tables(&mut |t| agent.stop(t));
                drop(agent);
                log::info!("evpn: stopped; shadow devices removed");
            })
            .map_err(EvpnError::Thread)?;
        Ok(Evpn {
            counters,
            status,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Each VNI's state as of the agent's last round.
    pub fn status(&self) -> Vec<VniStatus> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Status and counters, as `show-evpn` sends them.
    pub fn snapshot(&self) -> EvpnSnapshot {
        let c = &self.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        EvpnSnapshot {
            vnis: self.status(),
            mac_routes_received: load(&c.mac_routes_received),
            mac_routes_withdrawn: load(&c.mac_routes_withdrawn),
            flood_routes_received: load(&c.flood_routes_received),
            flood_routes_withdrawn: load(&c.flood_routes_withdrawn),
            routes_refused: load(&c.routes_refused),
            local_macs_moved_away: load(&c.local_macs_moved_away),
            netlink_errors: load(&c.netlink_errors),
            resyncs: load(&c.resyncs),
        }
    }

    /// Stops the agent and removes the shadow devices (zebra withdraws our routes).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// Waits until `fd` or `other` is readable or `timeout` passes.
fn wait_readable(fd: RawFd, other: Option<RawFd>, timeout: Duration) {
    let p = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // A negative descriptor is ignored by poll.
    let mut fds = [p(fd), p(other.unwrap_or(-1))];
    // SAFETY: `fds` is two valid pollfds, alive for the call.
    unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout.as_millis() as libc::c_int) };
}
