//! The switch: its ports, its learning table, its settings, and the threads that keep them
//! going (port supervisors, table aging, optional pollers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dataplane::{Fabric, PortTable};
use crate::mac_table::{MacTable, PortId};
use crate::port::connection::{self, ConnectionContext};
use crate::port::handover::FdTable;
use crate::port::pause::Gate;
use crate::port::{Port, PortConfig, PortConfigError};
use crate::vlan::VlanConfig;

/// Switch-wide settings (the `[switch]` table of the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Largest L3 payload carried, in bytes (frames up to mtu + 18 with a VLAN tag).
    pub mtu: u32,
    /// Most addresses the learning table holds; beyond it new addresses keep flooding.
    pub mac_table_size: usize,
    /// Seconds an idle learned address is kept.
    pub mac_aging_secs: u64,
    /// CPUs to run busy-polling threads on. Empty (the default): event mode, where the
    /// dataplane threads poll only while there is work and sleep on the guests' kicks when
    /// the rings go quiet, which leaves the CPU to the guests.
    pub poll_cpus: Vec<usize>,
    /// Dataplane threads in event mode (each serves the ports whose number modulo this is
    /// its index). Ignored with `poll_cpus`, which gives one thread per CPU.
    pub event_threads: usize,
    /// What a packet that matches no flow in table 0 gets: "normal" (the learning switch,
    /// the default) or "drop".
    pub table_miss: crate::flow::pipeline::MissPolicy,
    /// Most flows all tables together hold; a change that would pass it is refused whole.
    pub max_flows: usize,
    /// Most guest memory one port's frontend may map, in GiB (address space: a frontend
    /// could otherwise declare regions until the switch's address space runs out).
    pub max_guest_memory_gib: u64,
    /// Most addresses one port may have in the learning table (a port's own `mac_limit`
    /// overrides it); beyond it its new source addresses are not learned, and counted.
    pub mac_limit_per_port: usize,
    /// Mode of every server-mode port's socket, in octal (a port's own `socket_mode`
    /// overrides it), e.g. "0660" with `socket_group = "libvirt-qemu"` for libvirt's QEMU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<String>,
    /// Group of every server-mode port's socket (a port's own `socket_group` overrides it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Where the running configuration (ports, VLANs, flows, groups, meters, tunnel entries,
    /// conntrack limits) is saved after every change and restored from at start (`state.rs`,
    /// docs/restart.md). None: nothing survives a restart but the config file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_file: Option<std::path::PathBuf>,
}

/// Default of [`Settings::max_flows`].
pub const DEFAULT_MAX_FLOWS: usize = 100_000;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mtu: 9000,
            mac_table_size: 8192,
            mac_aging_secs: 300,
            poll_cpus: Vec::new(),
            event_threads: 1,
            table_miss: crate::flow::pipeline::MissPolicy::Normal,
            max_flows: DEFAULT_MAX_FLOWS,
            max_guest_memory_gib: 1024,
            mac_limit_per_port: 1024,
            socket_mode: None,
            socket_group: None,
            state_file: None,
        }
    }
}

impl Settings {
    /// Largest frame accepted from a guest: MTU + Ethernet header + one 802.1Q tag.
    pub fn max_frame_len(&self) -> u32 {
        self.mtu + 14 + 4
    }
    pub fn is_polled(&self) -> bool {
        !self.poll_cpus.is_empty()
    }

    /// How many dataplane threads run.
    pub fn dataplane_threads(&self) -> usize {
        if self.is_polled() {
            self.poll_cpus.len()
        } else {
            self.event_threads.max(1)
        }
    }
}

pub use crate::dataplane::SwitchCounters;

/// A change to the switch that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("port '{name}': {source}")]
    BadPort {
        name: String,
        source: PortConfigError,
    },
    #[error("a port named '{0}' already exists")]
    DuplicateName(String),
    #[error("port '{existing}' already uses {socket}")]
    DuplicateSocket { existing: String, socket: String },
    #[error("no port named '{0}'")]
    NoSuchPort(String),
    #[error("'{0}' is the VXLAN tunnel port; change it with the tunnel commands")]
    TunnelPort(String),
    #[error("the switch already has the maximum of {0} ports")]
    TooManyPorts(usize),
    #[error("cannot start the thread for port '{name}': {source}")]
    Thread {
        name: String,
        source: std::io::Error,
    },
    #[error("port '{name}': {source}")]
    HostPort {
        name: String,
        source: crate::host_port::HostPortError,
    },
    #[error("port '{name}': taking it over: {source}")]
    Adopt {
        name: String,
        source: crate::port::handover::HandoverError,
    },
}

/// What another process hands over of one vhost-user port.
pub struct AdoptedPort {
    /// A server-mode port's listening socket.
    pub listener: Option<std::os::unix::net::UnixListener>,
    /// The connected frontend and its device state.
    pub session: Option<(
        std::os::unix::net::UnixStream,
        crate::port::handover::SessionState,
    )>,
}

/// The CPUs the calling thread may run on, in ascending order (all of `0..n` if the kernel
/// will not say).
pub fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|c| set.is_set(*c).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Keeps every thread the calling thread starts from now on (control, metrics, port
/// supervisors, kick threads, the VXLAN receiver) off the pollers' CPUs, where they would
/// starve behind a busy-polling loop. Pollers pin themselves to their own CPU. If the pollers
/// take every CPU the process has, nothing changes (and a warning says so).
pub fn keep_off_poll_cpus(poll_cpus: &[usize]) {
    if poll_cpus.is_empty() {
        return;
    }
    let others: Vec<usize> = allowed_cpus()
        .into_iter()
        .filter(|c| !poll_cpus.contains(c))
        .collect();
    if others.is_empty() {
        log::warn!(
            "the pollers take every CPU this process may use ({poll_cpus:?}): control, \
             metrics and port threads share them"
        );
        return;
    }
    let mut set = nix::sched::CpuSet::new();
    for c in &others {
        let _ = set.set(*c);
    }
    match nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
        Ok(()) => log::info!("control, metrics and port threads run on CPUs {others:?}"),
        Err(e) => log::warn!("cannot keep threads off the poll CPUs: {e}"),
    }
}

pub use crate::mac_table::MAX_PORTS;

pub struct Switch {
    settings: Settings,
    /// What the frame path reads: ports, learning and flow tables, counters.
    fabric: Arc<Fabric>,
    supervisors: Mutex<HashMap<PortId, thread::JoinHandle<()>>>,
    /// The VXLAN tunnel port, if configured.
    tunnel: std::sync::OnceLock<Arc<crate::tunnel::Tunnel>>,
    /// Wakes sleeping dataplane workers when ports' rings change.
    doorbell: Arc<crate::port::Doorbell>,
    /// The BGP EVPN agent, if configured.
    evpn: std::sync::OnceLock<crate::evpn::Evpn>,
    /// The dataplane workers' busy time (set when they start).
    workers: std::sync::OnceLock<Vec<Arc<crate::worker::WorkerStats>>>,
    /// Rounds of the housekeeping thread (aging, timeouts), once a second: the service
    /// watchdog is fed while it moves.
    housekeeping_rounds: std::sync::atomic::AtomicU64,
    /// Holds the ports' connection threads between messages for a takeover.
    pause: Arc<crate::port::pause::Pause>,
}

impl Switch {
    /// A switch with no ports; fails only if the dataplane workers' eventfds cannot be made.
    pub fn new(settings: Settings) -> std::io::Result<Arc<Self>> {
        let flows = crate::flow::pipeline::Pipeline::new(settings.table_miss)
            .with_max_flows(settings.max_flows);
        let mac_table = MacTable::new(
            settings.mac_table_size,
            Duration::from_secs(settings.mac_aging_secs),
        );
        let doorbell = Arc::new(crate::port::Doorbell::new(settings.dataplane_threads())?);
        let fabric = Arc::new(Fabric::new(mac_table, flows, settings.max_frame_len()));
        Ok(Arc::new(Switch {
            settings,
            fabric,
            supervisors: Mutex::new(HashMap::new()),
            tunnel: std::sync::OnceLock::new(),
            doorbell,
            evpn: std::sync::OnceLock::new(),
            workers: std::sync::OnceLock::new(),
            housekeeping_rounds: std::sync::atomic::AtomicU64::new(0),
            pause: Arc::new(crate::port::pause::Pause::new()?),
        }))
    }

    pub fn doorbell(&self) -> &Arc<crate::port::Doorbell> {
        &self.doorbell
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The frame path's shared state.
    pub fn fabric(&self) -> &Arc<Fabric> {
        &self.fabric
    }

    pub fn mac_table(&self) -> &MacTable {
        &self.fabric.mac_table
    }

    pub fn flows(&self) -> &crate::flow::pipeline::Pipeline {
        &self.fabric.flows
    }

    pub fn counters(&self) -> &SwitchCounters {
        &self.fabric.counters
    }

    pub fn tunnel(&self) -> Option<&Arc<crate::tunnel::Tunnel>> {
        self.tunnel.get()
    }

    pub fn is_stopping(&self) -> bool {
        self.fabric.is_stopping()
    }

    /// Adds the VXLAN tunnel port (once, at start-up) and starts receiving.
    pub fn enable_tunnel(
        self: &Arc<Self>,
        config: patchbay_overlay::vtep::VtepConfig,
    ) -> Result<(), crate::tunnel::TunnelError> {
        use crate::tunnel::{Tunnel, TunnelError, TUNNEL_PORT_NAME};
        if self.tunnel.get().is_some() {
            return Err(TunnelError::Config(
                "the tunnel is already configured".into(),
            ));
        }
        if self.port_by_name(TUNNEL_PORT_NAME).is_some() {
            return Err(TunnelError::Config(format!(
                "a port is already named '{TUNNEL_PORT_NAME}'"
            )));
        }
        let (slot, tunnel) = self.fabric.update_ports(|ports| {
            let slot = match ports.iter().skip(1).position(Option::is_none) {
                Some(i) => i + 1,
                None => {
                    ports.push(None);
                    ports.len() - 1
                }
            };
            let tunnel = Arc::new(Tunnel::bind(slot as PortId, config)?);
            ports[slot] = Some(Arc::new(Port::tunnel(
                slot as PortId,
                TUNNEL_PORT_NAME,
                tunnel.describe(),
                tunnel.vlan_set(),
            )));
            Ok::<_, TunnelError>((slot, tunnel))
        })?;
        let _ = self.tunnel.set(tunnel.clone());
        self.fabric.set_tunnel(tunnel.clone());
        tunnel.spawn_rx(self.fabric.clone())?;
        log::info!("{} added as port {slot}", tunnel.describe());
        Ok(())
    }

    pub fn evpn(&self) -> Option<&crate::evpn::Evpn> {
        self.evpn.get()
    }

    /// Starts BGP EVPN (once, after the tunnel): the agent keeps FRR's view of the fabric
    /// and the switch's tables in step.
    pub fn enable_evpn(
        self: &Arc<Self>,
        config: &crate::evpn::EvpnConfig,
    ) -> Result<(), crate::evpn::EvpnError> {
        use crate::evpn::{Evpn, EvpnError};
        let tunnel = self
            .tunnel()
            .ok_or_else(|| EvpnError::Config("EVPN needs the [vxlan] tunnel".into()))?;
        if self.evpn.get().is_some() {
            return Err(EvpnError::Config("EVPN is already running".into()));
        }
        let view = Arc::new(EvpnView(Arc::downgrade(self)));
        let evpn = Evpn::start(config, tunnel.vtep.local_ip(), view)?;
        let _ = self.evpn.set(evpn);
        Ok(())
    }

    /// Re-reads the tunnel's VLAN set after VNI mappings change.
    pub fn refresh_tunnel_vlans(&self) {
        if let Some(t) = self.tunnel() {
            if let Some(p) = self
                .ports_snapshot()
                .get(usize::from(t.port_id))
                .cloned()
                .flatten()
            {
                let old = p.set_vlan(crate::vlan::VlanMode::Trunk {
                    allowed: t.vlan_set(),
                });
                self.flush_port_after_readers(p.id, old);
            }
        }
    }

    /// The port table as it is now (indexed by port number); no lock.
    pub fn ports_snapshot(&self) -> arc_swap::Guard<Arc<PortTable>> {
        self.fabric.ports()
    }

    pub fn ports(&self) -> Vec<Arc<Port>> {
        self.ports_snapshot().iter().flatten().cloned().collect()
    }

    pub fn port_by_name(&self, name: &str) -> Option<Arc<Port>> {
        self.ports_snapshot()
            .iter()
            .flatten()
            .find(|p| p.name == name)
            .cloned()
    }

    /// Checks a port against the switch's existing ports without adding it.
    pub fn check_port(&self, config: &PortConfig) -> Result<(), SwitchError> {
        config.validate().map_err(|source| SwitchError::BadPort {
            name: config.name.clone(),
            source,
        })?;
        Self::check_against(&self.ports_snapshot(), config)
    }

    /// The uniqueness checks of [`Switch::check_port`] against a given port table, so that
    /// `add_port` can run them under the same write lock as the insert.
    fn check_against(ports: &[Option<Arc<Port>>], config: &PortConfig) -> Result<(), SwitchError> {
        for p in ports.iter().flatten() {
            if p.name == config.name {
                return Err(SwitchError::DuplicateName(config.name.clone()));
            }
            if p.config.same_endpoint(config) {
                return Err(SwitchError::DuplicateSocket {
                    existing: p.name.clone(),
                    socket: if config.kind.is_vhost() {
                        format!("socket {}", config.socket.display())
                    } else {
                        format!("device {}", config.interface_name())
                    },
                });
            }
        }
        Ok(())
    }

    /// Adds a port and starts serving its socket. Returns its port number.
    pub fn add_port(self: &Arc<Self>, config: PortConfig) -> Result<PortId, SwitchError> {
        self.add_port_numbered(config, None)
    }

    /// [`Switch::add_port`] with the port number `wanted` if it is free (a port restored
    /// after a restart keeps the number that groups and OpenFlow-style `output:N` name it
    /// by), else the lowest free one.
    pub fn add_port_numbered(
        self: &Arc<Self>,
        config: PortConfig,
        wanted: Option<PortId>,
    ) -> Result<PortId, SwitchError> {
        self.add_port_with_device(config, wanted, None)
    }

    /// [`Switch::add_port_numbered`], an internal port taking over the tap device `device`
    /// that another process handed over (`--takeover`) instead of creating one.
    pub fn add_port_with_device(
        self: &Arc<Self>,
        config: PortConfig,
        wanted: Option<PortId>,
        device: Option<crate::dataplane::HostDevice>,
    ) -> Result<PortId, SwitchError> {
        let port = self.insert_port(config, wanted)?;
        if port.is_host_port() {
            return self.start_host_port(port, device);
        }
        let spawned = connection::spawn(self.connection_context(), port.clone());
        self.supervise(port, spawned)
    }

    /// [`Switch::add_port_numbered`] for a vhost-user port another process handed over
    /// (`--takeover`): its listening socket and connected frontend, set up again from the
    /// handed-over state and served once `gate` opens.
    pub fn add_port_adopted(
        self: &Arc<Self>,
        config: PortConfig,
        wanted: Option<PortId>,
        adopted: AdoptedPort,
        fds: &mut FdTable,
        gate: Arc<Gate>,
    ) -> Result<PortId, SwitchError> {
        let port = self.insert_port(config, wanted)?;
        let ctx = self.connection_context();
        let session = match adopted.session {
            Some((stream, state)) => {
                match crate::port::handover::restore(&ctx, &port, stream, &state, fds) {
                    Ok(session) => Some(session),
                    Err(source) => {
                        self.clear_slot(port.id);
                        return Err(SwitchError::Adopt {
                            name: port.name.clone(),
                            source,
                        });
                    }
                }
            }
            None => None,
        };
        let spawned = connection::spawn_adopted(ctx, port.clone(), adopted.listener, session, gate);
        self.supervise(port, spawned)
    }

    /// Keeps a port's connection thread; on failure to start it the slot is freed again.
    fn supervise(
        &self,
        port: Arc<Port>,
        spawned: std::io::Result<thread::JoinHandle<()>>,
    ) -> Result<PortId, SwitchError> {
        match spawned {
            Ok(handle) => {
                self.supervisors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(port.id, handle);
                log::info!("port {} added as port {}", port.name, port.id);
                Ok(port.id)
            }
            Err(source) => {
                self.clear_slot(port.id);
                Err(SwitchError::Thread {
                    name: port.name.clone(),
                    source,
                })
            }
        }
    }

    /// Checks `config` and puts the port in a slot (number `wanted` if free).
    fn insert_port(
        &self,
        mut config: PortConfig,
        wanted: Option<PortId>,
    ) -> Result<Arc<Port>, SwitchError> {
        if config.kind.is_vhost() && config.mode == crate::port::ConnectMode::Server {
            if config.socket_mode.is_none() {
                config.socket_mode = self.settings.socket_mode.clone();
            }
            if config.socket_group.is_none() {
                config.socket_group = self.settings.socket_group.clone();
            }
        }
        self.check_port(&config)?;
        let port = self.fabric.update_ports(|ports| {
            // Checked again under the update lock: two concurrent requests for one name or
            // socket both pass the check above, only one can pass this one.
            Self::check_against(ports, &config)?;
            let wanted = wanted.map(usize::from).filter(|&n| {
                (1..=MAX_PORTS).contains(&n) && ports.get(n).is_none_or(Option::is_none)
            });
            let slot = match (wanted, ports.iter().skip(1).position(Option::is_none)) {
                (Some(n), _) => {
                    if n >= ports.len() {
                        ports.resize(n + 1, None);
                    }
                    n
                }
                (None, Some(i)) => i + 1,
                (None, None) if ports.len() <= MAX_PORTS => {
                    ports.push(None);
                    ports.len() - 1
                }
                (None, None) => return Err(SwitchError::TooManyPorts(MAX_PORTS)),
            };
            let port = Arc::new(Port::new(slot as PortId, config.clone()).map_err(|source| {
                SwitchError::BadPort {
                    name: config.name.clone(),
                    source,
                }
            })?);
            port.set_mac_limit(config.mac_limit.unwrap_or(self.settings.mac_limit_per_port));
            ports[slot] = Some(port.clone());
            Ok(port)
        })?;
        Ok(port)
    }

    /// Opens an internal port's device or an uplink's socket and starts serving it; on
    /// failure the slot is freed again.
    fn start_host_port(
        &self,
        port: Arc<Port>,
        device: Option<crate::dataplane::HostDevice>,
    ) -> Result<PortId, SwitchError> {
        match crate::host_port::start(
            self.fabric.clone(),
            port.clone(),
            self.doorbell.clone(),
            device,
        ) {
            Ok(handle) => {
                self.supervisors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(port.id, handle);
                log::info!(
                    "port {} added as port {} ({:?})",
                    port.name,
                    port.id,
                    port.kind
                );
                Ok(port.id)
            }
            Err(source) => {
                self.clear_slot(port.id);
                Err(SwitchError::HostPort {
                    name: port.name.clone(),
                    source,
                })
            }
        }
    }

    /// Disconnects and removes a port; other ports are not touched.
    pub fn remove_port(&self, name: &str) -> Result<(), SwitchError> {
        let port = self
            .port_by_name(name)
            .ok_or_else(|| SwitchError::NoSuchPort(name.to_string()))?;
        if port.is_tunnel() {
            return Err(SwitchError::TunnelPort(name.to_string()));
        }
        port.mark_removed();
        let handle = self
            .supervisors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&port.id);
        if let Some(h) = handle {
            let _ = h.join();
        }
        self.clear_slot(port.id);
        self.mac_table().flush_port(port.id);
        // The workers stop watching it.
        self.doorbell.ring();
        log::info!("port {} removed", port.name);
        Ok(())
    }

    /// Changes a port's VLAN policy; addresses it learned under the old policy are forgotten.
    pub fn set_vlan(&self, name: &str, vlan: &VlanConfig) -> Result<(), SwitchError> {
        let port = self
            .port_by_name(name)
            .ok_or_else(|| SwitchError::NoSuchPort(name.to_string()))?;
        if port.is_tunnel() {
            return Err(SwitchError::TunnelPort(name.to_string()));
        }
        let mode = vlan.to_mode().map_err(|e| SwitchError::BadPort {
            name: name.to_string(),
            source: PortConfigError {
                field: "vlan",
                message: e.to_string(),
            },
        })?;
        let old = port.set_vlan(mode);
        self.flush_port_after_readers(port.id, old);
        Ok(())
    }

    /// Forgets what port `id` learned, once no batch reads `old` (a port setting just
    /// replaced) any more: a batch that read the old setting may still learn a source under
    /// it, and a flush before that batch ends would keep what it learned. A batch takes
    /// microseconds; the wait is [`READERS_WAIT`] at most, in case a worker is stuck, and
    /// then the port is flushed anyway.
    fn flush_port_after_readers<T>(&self, id: PortId, old: Arc<T>) {
        crate::port::wait_for_readers(&old, READERS_WAIT);
        drop(old);
        self.mac_table().flush_port(id);
    }

    /// Changes a port's security settings (no addresses: no checks); addresses it learned
    /// before are forgotten (they may be ones it may no longer send as).
    pub fn set_port_security(
        &self,
        name: &str,
        allowed_macs: Vec<String>,
        allowed_ips: Vec<String>,
        dhcp_server: bool,
    ) -> Result<(), SwitchError> {
        let port = self
            .port_by_name(name)
            .ok_or_else(|| SwitchError::NoSuchPort(name.to_string()))?;
        if port.is_tunnel() {
            return Err(SwitchError::TunnelPort(name.to_string()));
        }
        let settings =
            crate::port_security::PortSecuritySettings::new(allowed_macs, allowed_ips, dhcp_server)
                .map_err(|e| SwitchError::BadPort {
                    name: name.to_string(),
                    source: PortConfigError {
                        field: e.field,
                        message: e.message,
                    },
                })?;
        let described = settings.checks.as_ref().map(|s| s.describe());
        // A batch that read the old settings may still learn a source they let through.
        let old = port.set_security(settings);
        self.flush_port_after_readers(port.id, old);
        log::info!(
            "port {name}: security {}",
            described.as_deref().unwrap_or("off")
        );
        Ok(())
    }

    /// Empties port slot `id` (the port is gone).
    fn clear_slot(&self, id: PortId) {
        let _ = self.fabric.update_ports(|ports| {
            if let Some(slot) = ports.get_mut(usize::from(id)) {
                *slot = None;
            }
            Ok::<_, std::convert::Infallible>(())
        });
    }

    /// What a port's connection needs from the switch.
    fn connection_context(&self) -> ConnectionContext {
        let fabric = self.fabric.clone();
        ConnectionContext {
            memory_limit_gib: self.settings.max_guest_memory_gib,
            doorbell: self.doorbell.clone(),
            forget_port: Arc::new(move |id| fabric.mac_table.flush_port(id)),
            pause: self.pause.clone(),
            announce: {
                let fabric = self.fabric.clone();
                Arc::new(move |port, mac| announce(&fabric, port, mac))
            },
        }
    }

    /// Holds the ports' connection threads between messages (a takeover).
    pub fn pause(&self) -> &crate::port::pause::Pause {
        &self.pause
    }

    /// Starts the background threads: learning-table aging, and pollers if configured.
    pub fn start_background(self: &Arc<Self>) -> std::io::Result<()> {
        let sw = self.clone();
        thread::Builder::new()
            .name("mac-aging".into())
            .spawn(move || {
                while !sw.is_stopping() {
                    thread::sleep(Duration::from_secs(1));
                    let now = sw.mac_table().now();
                    sw.mac_table().expire(now);
                    if let Some(t) = sw.tunnel() {
                        t.vtep.expire(t.vtep.now());
                    }
                    sw.flows().expire();
                    sw.housekeeping_rounds
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })?;
        let workers = self.settings.dataplane_threads();
        let mut stats = Vec::with_capacity(workers);
        for index in 0..workers {
            let cpu = self.settings.poll_cpus.get(index).copied();
            let worker = crate::worker::Worker {
                index,
                workers,
                cpu,
                stats: Arc::new(crate::worker::WorkerStats::new(index, cpu)),
            };
            stats.push(worker.stats.clone());
            worker.spawn(self.fabric.clone(), self.doorbell.clone())?;
        }
        let _ = self.workers.set(stats);
        Ok(())
    }

    /// Rounds of the housekeeping thread so far (one a second while it is healthy).
    pub fn housekeeping_rounds(&self) -> u64 {
        self.housekeeping_rounds
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The dataplane workers' busy time and sleeps (empty before they start).
    pub fn worker_stats(&self) -> &[Arc<crate::worker::WorkerStats>] {
        self.workers.get().map_or(&[], Vec::as_slice)
    }

    /// Stops background threads and removes every port.
    pub fn shutdown(&self) {
        if let Some(e) = self.evpn() {
            e.stop();
        }
        self.fabric.stop();
        self.doorbell.ring();
        for port in self.ports().into_iter().filter(|p| !p.is_tunnel()) {
            let _ = self.remove_port(&port.name);
        }
    }
}

/// A RARP broadcast from `mac`, switched as if `port`'s guest had sent it (vhost-user
/// SEND_RARP after a migration, for a guest that cannot announce itself; as DPDK's vhost
/// library does): reverse request, sender and target hardware address `mac`, addresses 0.
fn announce(fabric: &Fabric, port: &Port, mac: [u8; 6]) {
    let mut bytes = [0u8; 60];
    bytes[..6].fill(0xff);
    bytes[6..12].copy_from_slice(&mac);
    bytes[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, operation 3 (reverse request)
    bytes[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 3]);
    bytes[22..28].copy_from_slice(&mac);
    bytes[32..38].copy_from_slice(&mac);
    let frames = [crate::dataplane::Frame {
        head: 0,
        len: bytes.len() as u32,
        bytes: crate::dataplane::FrameBytes::Host {
            start: 0,
            len: bytes.len(),
        },
        tunnel: None,
        offload: Default::default(),
    }];
    let mut scratch = crate::dataplane::SwitchScratch::default();
    crate::dataplane::switch_host_frames(fabric, port, &bytes, &frames, &mut scratch);
}

/// The EVPN agent's way into the switch: weak, so the agent's thread does not keep a
/// stopped switch alive.
struct EvpnView(std::sync::Weak<Switch>);

impl crate::evpn::SwitchTables for EvpnView {
    fn with_tables(&self, f: &mut dyn FnMut(&crate::evpn::agent::Tables)) -> bool {
        let Some(sw) = self.0.upgrade() else {
            return false;
        };
        let Some(tunnel) = sw.tunnel() else {
            return false;
        };
        f(&crate::evpn::agent::Tables {
            mac_table: sw.mac_table(),
            vtep: &tunnel.vtep,
            tunnel_port: tunnel.port_id,
        });
        true
    }
}

/// The longest a port setting's change waits for the batches that read the old setting (a
/// worker stuck in one). Long in unit tests, which play a batch on a loaded machine.
#[cfg(not(test))]
const READERS_WAIT: Duration = Duration::from_secs(1);
#[cfg(test)]
const READERS_WAIT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::EthernetAddress;

    /// A batch that read a port's old VLAN policy may learn a source under it while the
    /// policy changes; `set_vlan` forgets the port's addresses only after that batch, so the
    /// old VLAN keeps nothing the port learned under it.
    #[test]
    fn set_vlan_forgets_what_a_batch_in_flight_learned_under_the_old_policy() {
        let dir = std::env::temp_dir().join(format!("patchbay-set-vlan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sw = Switch::new(Settings::default()).unwrap();
        let mut config = PortConfig::vhost("a", dir.join("a.sock"));
        config.vlan = Some(10);
        let id = sw.add_port(config).unwrap();
        let port = sw.port_by_name("a").unwrap();
        // What a batch holds while it runs (see `switch_frames`).
        let in_flight = port.vlan();
        let changer = {
            let sw = sw.clone();
            thread::spawn(move || {
                let to_20 = VlanConfig {
                    mode: "access".into(),
                    vlan: Some(20),
                    trunks: None,
                };
                sw.set_vlan("a", &to_20)
            })
        };
        while Arc::ptr_eq(&port.vlan(), &in_flight) && !changer.is_finished() {
            thread::yield_now();
        }
        assert!(!changer.is_finished(), "set_vlan returned at once");
        // The batch learns under the policy it read, after the change was made.
        let mac = EthernetAddress([2, 0, 0, 0, 0, 0xa]);
        let table = sw.mac_table();
        table.learn(10, mac, id, table.now(), usize::MAX);
        assert!(
            !changer.is_finished(),
            "set_vlan returned while a batch still read the old policy"
        );
        drop(in_flight);
        changer.join().unwrap().unwrap();
        assert!(
            table.snapshot(table.now()).iter().all(|e| e.port != id),
            "the port kept an address learned under its old VLAN: {:?}",
            table.snapshot(table.now())
        );
        sw.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
