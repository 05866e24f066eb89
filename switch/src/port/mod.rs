//! A switch port: one vhost-user socket, its VLAN policy, its counters, and (while a frontend
//! is connected) the link the frame path reads and writes through.
//!
//! - `backend.rs`: the vhost-user device side (features, memory, rings, config space).
//! - `ring.rs`: one virtqueue with its eventfds and vhost-user state.
//! - `connection.rs`: accepting or dialling frontends, forever, with backoff; kick thread.
//! - `metrics.rs`: the port's counters and drop reasons.
//! - `pause.rs`, `handover.rs`: holding connections still and handing them, with their
//!   memory and ring state, to another process (`--takeover`).

pub mod backend;
pub mod connection;
pub mod handover;
pub mod memory;
pub mod metrics;
pub mod pause;
pub mod ring;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::mac_table::PortId;
use crate::port_security::PortSecuritySettings;
use crate::virtio::features::{
    bit, feature_names, net_header_len, parse_offloads, ALL_OFFLOADS, BASE_FEATURES,
};
use crate::virtio::GuestMap;
use crate::vlan::{VlanConfig, VlanMode};
use crate::wire::EthernetAddress;
pub use metrics::{CounterSnapshot, DropReason, PortCounters};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MQ;

/// The clock of rate-limited logs.
fn log_clock() -> &'static std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now)
}

/// The dataplane workers' wake-up line: rung when a port's rings change (a kick eventfd set
/// or replaced, a ring enabled or stopped, a frontend gone), so sleeping workers re-read
/// which eventfds to wait on. One eventfd per worker: each must see every change.
pub struct Doorbell {
    fds: Vec<vmm_sys_util::eventfd::EventFd>,
}

impl Doorbell {
    pub fn new(workers: usize) -> std::io::Result<Doorbell> {
        let fds = (0..workers)
            .map(|_| vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK))
            .collect::<std::io::Result<_>>()?;
        Ok(Doorbell { fds })
    }

    pub fn ring(&self) {
        for fd in &self.fds {
            // A full counter (EAGAIN) already means "look again".
            let _ = fd.write(1);
        }
    }

    /// Worker `index`'s eventfd, to wait on.
    pub fn fd(&self, index: usize) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.fds.get(index).map(|f| f.as_raw_fd())
    }

    /// Clears worker `index`'s eventfd after it woke.
    pub fn answer(&self, index: usize) {
        if let Some(fd) = self.fds.get(index) {
            let _ = fd.read();
        }
    }
}

/// Distinguishes connections, so a worker never mistakes a new link for the one it
/// registered (they may share an address).
static LINK_SERIAL: AtomicU64 = AtomicU64::new(1);

/// Which side of the vhost-user socket listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConnectMode {
    /// The switch listens on the socket; the VMM connects (QEMU's default `-chardev socket`).
    #[default]
    Server,
    /// The VMM listens (`server=on`); the switch connects and keeps reconnecting with backoff.
    Client,
}

/// A port as the user describes it (config file, `--port` flag, control socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Unique name, shown in flowctl and metrics.
    pub name: String,
    /// What is behind the port: `vhost` (default, a vhost-user socket) or `internal` (a tap
    /// device the switch creates, so the host's own stack joins the port's VLANs).
    #[serde(rename = "type", default, skip_serializing_if = "PortKind::is_vhost")]
    pub kind: PortKind,
    /// Path of the vhost-user unix socket (vhost ports only).
    #[serde(default, skip_serializing_if = "is_empty_path")]
    pub socket: PathBuf,
    /// Name of the internal port's tap device (default: the port's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// `server` (default: the switch listens) or `client` (the switch connects).
    #[serde(default)]
    pub mode: ConnectMode,
    /// MAC address offered in the device's config space (used by frontends that ask, such as
    /// Patchbay's own VMM; QEMU uses its own `mac=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// VLAN policy: access (default, VLAN 1), trunk, native-untagged, native-tagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_mode: Option<String>,
    /// Access VLAN, or native VLAN of a native-* trunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Trunk's allowed VLANs: "all" (default) or a list like "10,20-29".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunks: Option<String>,
    /// Most MAC addresses learned behind this port (default: `[switch] mac_limit_per_port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_limit: Option<usize>,
    /// Checksum and segmentation offloads offered to the guest: "all" (default), "none", or
    /// a list of QEMU's names for them ("csum,guest_csum,host_tso4,...").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offloads: Option<String>,
    /// Queue pairs offered to the guest (virtio-net MQ), 1 to 64; default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_pairs: Option<u16>,
    /// Port security: the only source MAC addresses the port may send from and announce in
    /// ARP and neighbour discovery (default: any; `port_security.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_macs: Vec<String>,
    /// Port security: the IPv4 and IPv6 prefixes the port may send from and claim in ARP
    /// and neighbour advertisements (default: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<String>,
    /// Port security: the port may answer as a DHCP or DHCPv6 server (checked only on a
    /// port with `allowed_macs` or `allowed_ips`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp_server: bool,
    /// Ingress policing (OVS's `ingress_policing_rate`): the most this port may send into
    /// the switch, in kbit/s; beyond it (after the burst) its frames are dropped and counted
    /// as `policed`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_policing_rate: Option<u32>,
    /// The policer's burst in kbit (default 8000, as OVS's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_policing_burst: Option<u32>,
    /// Permissions of the port's socket (server mode), in octal, e.g. "0660": with
    /// `socket_group`, what lets a QEMU running as another user (libvirt's `libvirt-qemu`)
    /// connect. Default: `[switch] socket_mode`, else what the umask leaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<String>,
    /// Group owning the port's socket (server mode): a name or a number. Default:
    /// `[switch] socket_group`, else the switch's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
}

/// Parses a socket mode such as "0660" or "660": octal, at most 0o777.
pub fn parse_socket_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("'{s}' is not an octal mode like 0660"))
}

/// Resolves a group name or number to a gid.
pub fn resolve_group(s: &str) -> Result<u32, String> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("there is no group '{s}'")),
        Err(e) => Err(format!("cannot look up group '{s}': {e}")),
    }
}

/// A port configuration that does not make sense, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct PortConfigError {
    pub field: &'static str,
    pub message: String,
}

fn is_empty_path(p: &std::path::Path) -> bool {
    p.as_os_str().is_empty()
}

/// Waits until no one but the caller holds `old` (a port setting or memory map just
/// replaced, which each batch holds for its duration), `most` at the longest (a worker stuck
/// in a batch); whether it got there.
pub fn wait_for_readers<T>(old: &Arc<T>, most: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + most;
    while Arc::strong_count(old) > 1 {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    // What the last reader did before letting go happens before what the caller does next.
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    true
}

/// Default burst of ingress policing, kbit (OVS's).
pub const DEFAULT_POLICING_BURST_KBIT: u32 = 8000;

/// Longest network interface name (IFNAMSIZ without its NUL).
pub const MAX_INTERFACE_NAME: usize = 15;

impl PortConfig {
    /// A vhost-user port with default settings.
    pub fn vhost(name: &str, socket: impl Into<PathBuf>) -> PortConfig {
        PortConfig {
            name: name.to_string(),
            kind: PortKind::Vhost,
            socket: socket.into(),
            interface: None,
            mode: ConnectMode::Server,
            mac: None,
            vlan_mode: None,
            vlan: None,
            trunks: None,
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

    /// Whether `other` would use this port's socket or interface (an internal port's tap
    /// and an uplink on that tap would loop, as would two uplinks on one interface).
    pub fn same_endpoint(&self, other: &PortConfig) -> bool {
        match (self.kind.is_vhost(), other.kind.is_vhost()) {
            (true, true) => self.socket == other.socket,
            (false, false) => self.interface_name() == other.interface_name(),
            _ => false,
        }
    }

    /// The device of an internal port or an uplink (default: the port's name).
    pub fn interface_name(&self) -> &str {
        self.interface.as_deref().unwrap_or(&self.name)
    }

    pub fn vlan_config(&self) -> VlanConfig {
        VlanConfig {
            mode: self.vlan_mode.clone().unwrap_or_else(|| "access".into()),
            vlan: self.vlan,
            trunks: self.trunks.clone(),
        }
    }

    /// The virtio features this port offers its frontend: the base set and the offloads
    /// its `offloads` setting allows.
    pub fn offered_features(&self) -> Result<u64, PortConfigError> {
        let offloads = match self.offloads.as_deref() {
            None => ALL_OFFLOADS,
            Some(spec) => parse_offloads(spec).map_err(|message| PortConfigError {
                field: "offloads",
                message,
            })?,
        };
        let mq = if self.queue_pairs() > 1 {
            bit(VIRTIO_NET_F_MQ)
        } else {
            0
        };
        Ok(BASE_FEATURES | offloads | mq)
    }

    /// Queue pairs this port offers.
    pub fn queue_pairs(&self) -> usize {
        usize::from(self.queue_pairs.unwrap_or(DEFAULT_QUEUE_PAIRS)).clamp(1, MAX_QUEUE_PAIRS)
    }

    /// Checks every field; the first problem is reported with its field name.
    pub fn validate(&self) -> Result<(VlanMode, Option<EthernetAddress>), PortConfigError> {
        let err = |field, message: String| PortConfigError { field, message };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(err(
                "name",
                format!(
                    "'{}' must be non-empty and use only letters, digits, '-', '_' and '.'",
                    self.name
                ),
            ));
        }
        match self.kind {
            PortKind::Vhost => {
                if self.socket.as_os_str().is_empty() {
                    return Err(err("socket", "must be a path".into()));
                }
                if self.interface.is_some() {
                    return Err(err(
                        "interface",
                        "only an internal port (type = \"internal\") has a device".into(),
                    ));
                }
                if let Some(m) = &self.socket_mode {
                    parse_socket_mode(m).map_err(|e| err("socket_mode", e))?;
                }
                if let Some(g) = &self.socket_group {
                    resolve_group(g).map_err(|e| err("socket_group", e))?;
                }
                if self.mode == ConnectMode::Client
                    && (self.socket_mode.is_some() || self.socket_group.is_some())
                {
                    return Err(err(
                        "socket_mode",
                        "a client-mode port connects to its frontend's socket; set the mode and group where it is made".into(),
                    ));
                }
            }
            PortKind::Internal | PortKind::Afpacket | PortKind::Afxdp => {
                if !self.socket.as_os_str().is_empty() {
                    return Err(err(
                        "socket",
                        "an internal, afpacket or afxdp port has no socket (it is a network device)"
                            .into(),
                    ));
                }
                let dev = self.interface_name();
                if dev.is_empty()
                    || dev.len() > MAX_INTERFACE_NAME
                    || !dev
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    || dev == "."
                    || dev == ".."
                {
                    return Err(err(
                        if self.interface.is_some() {
                            "interface"
                        } else {
                            "name"
                        },
                        format!(
                            "'{dev}' is not a usable interface name (1 to \
                             {MAX_INTERFACE_NAME} letters, digits, '-', '_' or '.'); \
                             set `interface`"
                        ),
                    ));
                }
            }
            PortKind::Vxlan => {
                return Err(err(
                    "type",
                    "the VXLAN tunnel port comes from the [vxlan] section".into(),
                ))
            }
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if self.socket.as_os_str().len() > 107 {
            return Err(err(
                "socket",
                format!("path is longer than 107 bytes: {}", self.socket.display()),
            ));
        }
        let mac = self
            .mac
            .as_deref()
            .map(|m| m.parse::<EthernetAddress>())
            .transpose()
            .map_err(|e| err("mac", e.to_string()))?;
        if mac.is_some_and(|m| m.is_multicast()) {
            return Err(err("mac", "must be a unicast address".into()));
        }
        if self.mac_limit == Some(0) {
            return Err(err("mac_limit", "must be at least 1".into()));
        }
        self.offered_features()?;
        PortSecuritySettings::new(
            self.allowed_macs.clone(),
            self.allowed_ips.clone(),
            self.dhcp_server,
        )
        .map_err(|e| err(e.field, e.message))?;
        if let Some(n) = self.queue_pairs {
            if n == 0 || usize::from(n) > MAX_QUEUE_PAIRS {
                return Err(err(
                    "queue_pairs",
                    format!("{n} is outside 1..={MAX_QUEUE_PAIRS}"),
                ));
            }
        }
        let vlan = self.vlan_config().to_mode().map_err(|e| {
            let field = match e {
                crate::vlan::VlanParseError::UnknownMode(_) => "vlan_mode",
                crate::vlan::VlanParseError::Missing { .. } => "vlan",
                _ if self.trunks.is_some() && self.vlan.is_none() => "trunks",
                _ => "vlan",
            };
            err(field, e.to_string())
        })?;
        Ok((vlan, mac))
    }
}

/// Where a port's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Server mode, waiting for a frontend.
    Listening,
    /// Client mode, dialling the frontend's socket (with backoff).
    Connecting,
    /// A frontend is connected (rings may still be coming up).
    Connected,
    /// The port was removed and is shutting down.
    Removed,
    /// An internal port's or an uplink's interface is down or has no carrier.
    Down,
}

/// One queue pair: the guest's receive ring (virtqueue 2k) and transmit ring (2k + 1).
pub struct QueuePair {
    /// The guest's receive ring (the switch writes into it). A leaf lock.
    pub rx: Mutex<ring::RingState>,
    /// The guest's transmit ring (the switch reads from it).
    pub tx: Mutex<ring::RingState>,
    /// Whether each ring is usable, mirrored from the ring state by the vhost-user handler
    /// so that the frame path, `show ports` and the metrics never wait for a ring lock.
    rx_up: AtomicBool,
    tx_up: AtomicBool,
}

impl QueuePair {
    fn new() -> QueuePair {
        QueuePair {
            rx: Mutex::new(ring::RingState::default()),
            tx: Mutex::new(ring::RingState::default()),
            rx_up: AtomicBool::new(false),
            tx_up: AtomicBool::new(false),
        }
    }

    pub fn rx_up(&self) -> bool {
        self.rx_up.load(Ordering::Acquire)
    }

    pub fn tx_up(&self) -> bool {
        self.tx_up.load(Ordering::Acquire)
    }

    /// Bumped whenever the TX ring's kick fd changes.
    pub fn kick_generation(&self) -> u64 {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .kick_generation
    }

    /// Consumes pending TX kicks (after a worker woke on them).
    pub fn consume_tx_kick(&self) {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .consume_kick();
    }
}

/// Most queue pairs a port may offer (`queue_pairs`).
pub const MAX_QUEUE_PAIRS: usize = 64;

/// Queue pairs a port offers unless its `queue_pairs` setting says otherwise.
pub const DEFAULT_QUEUE_PAIRS: u16 = 8;

/// The dataplane's handle on one connected frontend: its memory, its queue pairs, what it
/// negotiated. Replaced on every reconnect; the port outlives it.
pub struct Link {
    /// The guest's memory map; swapped whole on SET_MEM_TABLE / ADD_MEM_REGION. A batch
    /// holds the map it loaded, so regions it translated into stay mapped until it ends.
    pub mem: ArcSwap<GuestMap>,
    /// As many as the port offers; a guest without MQ uses pair 0, one with MQ enables as
    /// many as it wants (SET_VRING_ENABLE).
    pairs: Box<[QueuePair]>,
    pub features: AtomicU64,
    /// Identity of this connection's guarded memory regions (see `memory`).
    pub guard_owner: u64,
    /// Unique per connection (for the workers' epoll registrations).
    pub serial: u64,
    /// The fault count last looked at, and whether one of our regions faulted.
    seen_faults: AtomicU64,
    faulted: AtomicBool,
    fault_reported: AtomicBool,
}

impl Link {
    /// A link with `pairs` queue pairs (at least one, at most [`MAX_QUEUE_PAIRS`]).
    pub fn new(pairs: usize) -> Self {
        Link {
            mem: ArcSwap::from_pointee(GuestMap::empty()),
            pairs: (0..pairs.clamp(1, MAX_QUEUE_PAIRS))
                .map(|_| QueuePair::new())
                .collect(),
            features: AtomicU64::new(0),
            guard_owner: memory::new_owner(),
            serial: LINK_SERIAL.fetch_add(1, Ordering::Relaxed),
            seen_faults: AtomicU64::new(0),
            faulted: AtomicBool::new(false),
            fault_reported: AtomicBool::new(false),
        }
    }

    /// Whether the frontend pulled memory out from under one of our mappings (a SIGBUS the
    /// guard absorbed). One atomic load while nothing faulted anywhere.
    pub fn memory_faulted(&self) -> bool {
        let now = memory::fault_count();
        if now != self.seen_faults.load(Ordering::Relaxed) {
            self.seen_faults.store(now, Ordering::Relaxed);
            if memory::faulted(self.guard_owner) {
                self.faulted.store(true, Ordering::Relaxed);
            }
        }
        self.faulted.load(Ordering::Relaxed)
    }

    /// Fails `port`'s connection after a memory fault: counted and logged once, then the
    /// connection is closed (the frontend may reconnect with sound memory).
    pub fn fail_on_memory_fault(&self, port: &Port) {
        if !self.fault_reported.swap(true, Ordering::Relaxed) {
            port.counters.memory_faults.fetch_add(1, Ordering::Relaxed);
            port.fail(
                "memory fault: the frontend's memory shrank under the switch's mapping \
                 (SIGBUS absorbed)"
                    .into(),
            );
        }
    }

    pub fn features(&self) -> u64 {
        self.features.load(Ordering::Acquire)
    }

    /// Every queue pair the port offers (those the guest has not enabled are not up).
    pub fn pairs(&self) -> &[QueuePair] {
        &self.pairs
    }

    /// Queue pair `k`, if the port offers that many.
    pub fn pair(&self, k: usize) -> Option<&QueuePair> {
        self.pairs.get(k)
    }

    /// The first queue pair's rings are set up and enabled: frames can flow. Lock-free.
    pub fn is_up(&self) -> bool {
        self.pairs[0].rx_up() && self.pairs[0].tx_up()
    }

    /// Queue pairs whose transmit ring the guest set up and enabled.
    pub fn pairs_up(&self) -> usize {
        self.pairs.iter().filter(|p| p.tx_up()).count()
    }

    /// Writes the indexes of the receive rings that are up into `out`; returns how many.
    pub fn rx_queues_up(&self, out: &mut [u16; MAX_QUEUE_PAIRS]) -> usize {
        let mut n = 0;
        for (k, pair) in self.pairs.iter().enumerate() {
            if pair.rx_up() {
                out[n] = k as u16;
                n += 1;
            }
        }
        n
    }

    /// Re-reads whether each ring is usable (after the frontend changed ring state).
    pub(crate) fn refresh_up(&self) {
        for pair in self.pairs.iter() {
            for (ring, up) in [(&pair.rx, &pair.rx_up), (&pair.tx, &pair.tx_up)] {
                let usable = ring.lock().unwrap_or_else(|p| p.into_inner()).usable();
                up.store(usable, Ordering::Release);
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        memory::release(self.guard_owner);
    }
}

impl Default for Link {
    fn default() -> Self {
        Self::new(1)
    }
}

/// What is behind a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    /// A vhost-user socket a VM's virtio-net device connects to.
    #[default]
    Vhost,
    /// The VXLAN tunnel endpoint: frames leave encapsulated towards remote VTEPs.
    Vxlan,
    /// A tap device the switch creates and owns: the host's own stack on the port's VLANs.
    Internal,
    /// An existing interface (a NIC, a veth), through an AF_PACKET socket: the uplink.
    Afpacket,
    /// An existing interface through AF_XDP sockets (AF_PACKET where XDP cannot attach).
    /// `type = "uplink"` picks it: on the interfaces measured (veth, copy mode) it moved more
    /// frames than AF_PACKET at every size (docs/performance.md, "Host ports").
    #[serde(alias = "uplink")]
    Afxdp,
}

impl PortKind {
    pub fn is_vhost(&self) -> bool {
        *self == PortKind::Vhost
    }

    /// A network device of the host: an internal port's tap or an uplink's interface.
    pub fn is_host_device(&self) -> bool {
        matches!(
            self,
            PortKind::Internal | PortKind::Afpacket | PortKind::Afxdp
        )
    }
}

/// One port of the switch.
pub struct Port {
    pub id: PortId,
    pub kind: PortKind,
    pub name: String,
    pub config: PortConfig,
    pub mac: Option<EthernetAddress>,
    /// The virtio features offered to this port's frontends.
    pub offered_features: u64,
    /// What the port may send as (port security): read by each batch from the port,
    /// replaced whole by `flowctl set-port-security`.
    security: ArcSwap<PortSecuritySettings>,
    /// Ingress policing, if configured.
    pub policer: Option<crate::rate_limit::TokenBucket>,
    vlan: ArcSwap<VlanMode>,
    pub counters: PortCounters,
    /// Most addresses the learning table keeps behind this port (set by the switch).
    mac_limit: std::sync::atomic::AtomicUsize,
    /// Read by every batch that sends to or from this port: an RCU-style pointer, so the
    /// frame path takes no lock to reach it.
    link: ArcSwapOption<Link>,
    state: Mutex<(LinkState, SystemTime)>,
    removed: AtomicBool,
    /// A handle on the current vhost-user connection, to close it (port removal).
    connection: Mutex<Option<std::os::unix::net::UnixStream>>,
    /// The last thing that failed this port's connection (a dataplane panic, a memory
    /// fault), shown by `flowctl show ports` until the port is removed.
    failure: Mutex<Option<String>>,
    /// How an uplink is attached to its interface (AF_XDP in which mode, or AF_PACKET),
    /// shown by `flowctl show ports`.
    attachment: Mutex<Option<String>>,
    /// Queues of a host port's device or sockets.
    host_queues: std::sync::atomic::AtomicUsize,
    /// Rate limit of the bad-input log: the second of the last line, lines held back since.
    bad_input_logged_at: AtomicU64,
    bad_input_held_back: AtomicU64,
}

impl Port {
    pub fn new(id: PortId, config: PortConfig) -> Result<Self, PortConfigError> {
        let (vlan, mac) = config.validate()?;
        let offered_features = config.offered_features()?;
        let security = PortSecuritySettings::new(
            config.allowed_macs.clone(),
            config.allowed_ips.clone(),
            config.dhcp_server,
        )
        .map_err(|e| PortConfigError {
            field: e.field,
            message: e.message,
        })?;
        // A rate of 0 turns policing off (as OVS's).
        let policer = config.ingress_policing_rate.filter(|r| *r > 0).map(|rate| {
            crate::rate_limit::TokenBucket::new(
                crate::rate_limit::RateUnit::Kbps,
                rate,
                config
                    .ingress_policing_burst
                    .unwrap_or(DEFAULT_POLICING_BURST_KBIT),
                0,
            )
        });
        let initial = match config.mode {
            ConnectMode::Server => LinkState::Listening,
            ConnectMode::Client => LinkState::Connecting,
        };
        Ok(Port {
            id,
            kind: config.kind,
            name: config.name.clone(),
            config,
            mac,
            offered_features,
            security: ArcSwap::from_pointee(security),
            policer,
            vlan: ArcSwap::from_pointee(vlan),
            counters: PortCounters::default(),
            mac_limit: std::sync::atomic::AtomicUsize::new(usize::MAX),
            link: ArcSwapOption::empty(),
            state: Mutex::new((initial, SystemTime::now())),
            removed: AtomicBool::new(false),
            connection: Mutex::new(None),
            failure: Mutex::new(None),
            attachment: Mutex::new(None),
            host_queues: std::sync::atomic::AtomicUsize::new(1),
            bad_input_logged_at: AtomicU64::new(0),
            bad_input_held_back: AtomicU64::new(0),
        })
    }

    /// The VXLAN tunnel port, carrying `vlans` (those mapped to a VNI).
    pub fn tunnel(
        id: PortId,
        name: &str,
        description: String,
        vlans: crate::vlan::VlanSet,
    ) -> Self {
        Port {
            id,
            kind: PortKind::Vxlan,
            name: name.to_string(),
            config: PortConfig {
                vlan_mode: Some("trunk".into()),
                kind: PortKind::Vxlan,
                ..PortConfig::vhost(name, description)
            },
            mac: None,
            offered_features: 0,
            security: ArcSwap::default(),
            policer: None,
            vlan: ArcSwap::from_pointee(VlanMode::Trunk { allowed: vlans }),
            counters: PortCounters::default(),
            mac_limit: std::sync::atomic::AtomicUsize::new(usize::MAX),
            link: ArcSwapOption::empty(),
            state: Mutex::new((LinkState::Connected, SystemTime::now())),
            removed: AtomicBool::new(false),
            connection: Mutex::new(None),
            failure: Mutex::new(None),
            attachment: Mutex::new(None),
            host_queues: std::sync::atomic::AtomicUsize::new(1),
            bad_input_logged_at: AtomicU64::new(0),
            bad_input_held_back: AtomicU64::new(0),
        }
    }

    /// Records how many queues a host port's device or sockets have.
    pub fn set_host_queues(&self, n: usize) {
        self.host_queues.store(n, Ordering::Relaxed);
    }

    /// Records how an uplink is attached to its interface (for `flowctl show ports`).
    pub fn set_attachment(&self, how: String) {
        *self.attachment.lock().unwrap_or_else(|p| p.into_inner()) = Some(how);
    }

    /// Most addresses the learning table keeps behind this port.
    pub fn mac_limit(&self) -> usize {
        self.mac_limit.load(Ordering::Relaxed)
    }

    pub(crate) fn set_mac_limit(&self, limit: usize) {
        self.mac_limit.store(limit, Ordering::Relaxed);
    }

    pub fn is_tunnel(&self) -> bool {
        self.kind == PortKind::Vxlan
    }

    /// Whether frames can flow: a guest's rings are up, the tunnel is there, a host port's
    /// interface is up with a carrier (as its receive thread last saw it).
    pub fn is_up(&self) -> bool {
        match self.kind {
            PortKind::Vhost => self.link().is_some_and(|l| l.is_up()),
            PortKind::Vxlan => true,
            PortKind::Internal | PortKind::Afpacket | PortKind::Afxdp => {
                self.state().0 == LinkState::Connected
            }
        }
    }

    /// A port whose frames go through the host's kernel rather than a guest's rings (the
    /// tunnel, an internal port): it has no link, and its egress is in the fabric.
    pub fn is_host_port(&self) -> bool {
        self.kind != PortKind::Vhost
    }

    pub fn vlan(&self) -> Arc<VlanMode> {
        self.vlan.load_full()
    }

    /// Replaces the policy; returns the old one, counted once more for each batch still
    /// reading it (a batch holds its own reference for its duration).
    pub fn set_vlan(&self, mode: VlanMode) -> Arc<VlanMode> {
        self.vlan.swap(Arc::new(mode))
    }

    /// The port's security settings, as a batch reads them (held for the batch).
    pub fn security(&self) -> arc_swap::Guard<Arc<PortSecuritySettings>> {
        self.security.load()
    }

    /// Replaces the settings; returns the old ones, counted once more for each batch still
    /// reading them (arc-swap turns its readers' borrows into counts when it swaps).
    pub fn set_security(&self, settings: PortSecuritySettings) -> Arc<PortSecuritySettings> {
        self.security.swap(Arc::new(settings))
    }

    /// The current link, if a frontend has brought its rings up.
    pub fn link(&self) -> Option<Arc<Link>> {
        self.link.load_full()
    }

    pub fn has_link(&self) -> bool {
        self.link.load().is_some()
    }

    /// Access to the link without a lock or a reference count change (frame path).
    pub fn with_link<R>(&self, f: impl FnOnce(&Link) -> R) -> Option<R> {
        self.link.load().as_deref().map(f)
    }

    pub(crate) fn attach(&self, link: Arc<Link>) {
        self.link.store(Some(link));
    }

    pub(crate) fn detach(&self) {
        self.link.store(None);
    }

    pub fn state(&self) -> (LinkState, SystemTime) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_state(&self, s: LinkState) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 != s {
            *st = (s, SystemTime::now());
        }
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Marks the port removed and closes its connection; its supervisor thread then exits.
    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
        self.set_state(LinkState::Removed);
        self.close_connection();
        connection::wake(self);
    }

    pub(crate) fn set_connection(&self, stream: Option<std::os::unix::net::UnixStream>) {
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = stream;
    }

    /// Shuts the vhost-user socket down; the connection thread then ends the connection.
    pub(crate) fn close_connection(&self) {
        if let Some(s) = self
            .connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Logs bad input from this port's frontend (a malformed chain, a refused request) as a
    /// warning naming the port: at most one line a second, saying how many were held back, so
    /// a hostile guest cannot flood the log. The counters count every one.
    pub fn log_bad_input(&self, what: std::fmt::Arguments<'_>) {
        let now = log_clock().elapsed().as_secs() + 1;
        let last = self.bad_input_logged_at.load(Ordering::Relaxed);
        if last == now
            || self
                .bad_input_logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.bad_input_held_back.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let held = self.bad_input_held_back.swap(0, Ordering::Relaxed);
        if held > 0 {
            log::warn!(
                "port {}: {what} ({held} more since the last line)",
                self.name
            );
        } else {
            log::warn!("port {}: {what}", self.name);
        }
    }

    /// Records why this port's connection failed: logged as an error, kept for
    /// `show ports`, and the connection is closed (the frontend may connect again; a new
    /// connection gets fresh rings and a fresh dataplane thread).
    pub fn fail(&self, why: String) {
        log::error!("port {}: {why}; closing its connection", self.name);
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.close_connection();
    }

    /// Runs one piece of dataplane work for this port; a panic in it fails the port's
    /// connection (counted, logged, shown) instead of ending the thread silently. Returns
    /// None after a panic.
    pub fn guard_dataplane<R>(&self, work: impl FnOnce() -> R) -> Option<R> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
            Ok(r) => Some(r),
            Err(payload) => {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                self.counters
                    .dataplane_panics
                    .fetch_add(1, Ordering::Relaxed);
                self.fail(format!("dataplane panic: {what}"));
                None
            }
        }
    }

    /// A description for the control socket.
    pub fn info(&self) -> PortInfo {
        let (state, since) = self.state();
        let link = self.link();
        let features = link.as_ref().map_or(0, |l| l.features());
        PortInfo {
            id: self.id,
            kind: self.kind,
            name: self.name.clone(),
            socket: match self.kind {
                PortKind::Internal | PortKind::Afpacket | PortKind::Afxdp => {
                    match self
                        .attachment
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                    {
                        Some(how) => format!("dev {} ({how})", self.config.interface_name()),
                        None => format!("dev {}", self.config.interface_name()),
                    }
                }
                _ => self.config.socket.display().to_string(),
            },
            mode: self.config.mode,
            state,
            since_secs: since.elapsed().map_or(0, |d| d.as_secs()),
            rings_up: self.is_up(),
            vlan: self.vlan().describe(),
            features,
            feature_names: feature_names(features)
                .into_iter()
                .map(String::from)
                .collect(),
            header_len: link.as_ref().map(|_| net_header_len(features)),
            // A host port's queues (of its device or sockets) are up with the port.
            queue_pairs: if self.is_host_port() {
                let n = self.host_queues.load(Ordering::Relaxed);
                (if self.is_up() { n } else { 0 }, n)
            } else {
                (
                    link.as_ref().map_or(0, |l| l.pairs_up()),
                    self.config.queue_pairs(),
                )
            },
            counters: self.counters.snapshot(),
            failure: self
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            security: self.security.load().checks.as_ref().map(|s| s.describe()),
            policing: self
                .config
                .ingress_policing_rate
                .filter(|r| *r > 0)
                .map(|rate| {
                    let burst = self
                        .config
                        .ingress_policing_burst
                        .unwrap_or(DEFAULT_POLICING_BURST_KBIT);
                    format!("{rate} kbit/s, burst {burst} kbit")
                }),
        }
    }
}

/// A port as shown by `flowctl show ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    pub id: PortId,
    pub kind: PortKind,
    pub name: String,
    pub socket: String,
    pub mode: ConnectMode,
    pub state: LinkState,
    pub since_secs: u64,
    /// Both rings set up and enabled: frames can flow.
    pub rings_up: bool,
    pub vlan: VlanConfig,
    /// Negotiated virtio feature bits (0 when nothing is connected).
    pub features: u64,
    pub feature_names: Vec<String>,
    pub header_len: Option<usize>,
    /// Queue pairs the guest enabled (0 when nothing is connected), and the most offered.
    #[serde(default)]
    pub queue_pairs: (usize, usize),
    pub counters: CounterSnapshot,
    /// Why the port's connection last failed (a dataplane panic, a memory fault), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Port security, as configured: what the port may send as (None: anything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<String>,
    /// Ingress policing, as configured: `RATE kbit/s, burst BURST kbit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policing: Option<String>,
}
