//! The VTEP's tables: which VLAN each VNI carries, the remote VTEPs each VNI floods to
//! (head-end replication), which remote VTEP each remote MAC sits behind, and counters.
//!
//! One [`Vtep`] is shared by all the switch's threads. Read-mostly, like the switch's MAC
//! table: the per-frame methods take read locks and touch atomics; a write lock is taken only
//! for a new MAC address or a newly seen remote, and by the control path. Locks are taken in
//! the order VNI table, then remotes, MACs or known addresses (never two of those at once),
//! and none is held while calling back into the caller.
//!
//! Each VNI may also answer ARP and neighbour discovery for addresses known behind remote
//! VTEPs ([`crate::proxy`]; the known addresses are a table here too).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};

use portable_atomic::AtomicU128;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::decap::DecapError;
use crate::proxy::{
    Binding, Known, NeighLearned, NeighTable, NeighborSnapshot, Protocol as ProxyProtocol,
};
use crate::{Vni, MAX_VNI, VXLAN_PORT};

/// Most remotes that are not in any flood list whose traffic is counted separately. Sources
/// are not authenticated, so anyone who can reach the VXLAN port could otherwise make us
/// track any number of addresses; beyond this, their traffic is summed into one overflow
/// entry ([`VtepSnapshot::remote_overflow`]).
pub const MAX_LEARNED_REMOTES: usize = 1024;

/// Largest `mac_table_size` (and `neigh_table_size`) accepted: the tables are allocated at
/// full size up front (so that learning never allocates on the frame path), which must stay
/// reasonable.
pub const MAX_MAC_TABLE_SIZE: usize = 1 << 20;

/// Keyed with a per-process random seed: peers choose MACs and addresses, so the hash must not
/// be predictable, and it is on the per-frame path, so it must be fast.
type S = ahash::RandomState;

/// What to do with VXLAN packets from a VTEP that is not in the VNI's flood list. Sources
/// are not authenticated: under `learn`, anyone who can reach the UDP port can inject frames
/// into any mapped VNI, so `drop` is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownVtepPolicy {
    /// Accept them and learn their MACs (like Linux vxlan with `learning`).
    Learn,
    /// Drop them, counted as `unknown-vtep`: only the VNI's configured remotes are trusted.
    #[default]
    Drop,
}

/// Whether a tunnel packet may move a MAC address that the switch learned on a local port
/// to a remote VTEP. Under `deny` (the default) such a packet is dropped as
/// `local-mac-claim`, so a remote cannot take over a local guest's address; `allow` lets
/// addresses move (a guest migrated to another host before its old entry aged out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalMacMove {
    #[default]
    Deny,
    Allow,
}

/// One VNI as configured: the VLAN it carries and the remote VTEPs it floods to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VniConfig {
    pub vni: Vni,
    pub vlan: u16,
    /// Flood list: every broadcast, multicast and unknown-unicast frame is sent to each.
    #[serde(default)]
    pub remotes: Vec<IpAddr>,
    /// Answer ARP requests and IPv6 neighbour solicitations from local guests for addresses
    /// known behind remote VTEPs, instead of flooding them through the tunnel (the kernel
    /// vxlan device's `proxy`; [`crate::proxy`]). Off by default. Written only when on, so
    /// that a state file without it still reads in an older switch.
    #[serde(default, skip_serializing_if = "is_false")]
    pub proxy: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The VTEP as configured (and, from [`Vtep::config`], as it stands).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VtepConfig {
    /// Source address of encapsulated packets; remotes send to it.
    pub local_ip: IpAddr,
    /// UDP port to send to and listen on.
    #[serde(default = "default_port")]
    pub port: u16,
    /// MTU of the underlay: inner frames larger than `underlay_mtu - 36` are dropped as
    /// too-big (DF is set; there is no fragmentation).
    #[serde(default = "default_underlay_mtu")]
    pub underlay_mtu: u32,
    #[serde(default)]
    pub unknown_vtep: UnknownVtepPolicy,
    /// May a tunnel packet claim a MAC learned on a local port (see [`LocalMacMove`])?
    #[serde(default)]
    pub local_mac_move: LocalMacMove,
    /// Seconds an idle learned remote MAC (or known address of the ARP/ND proxy) is kept.
    #[serde(default = "default_mac_aging_secs")]
    pub mac_aging_secs: u64,
    /// Most remote MACs held (static ones included); beyond it new ones are not learned and
    /// their frames keep flooding.
    #[serde(default = "default_mac_table_size")]
    pub mac_table_size: usize,
    /// Most learned remote MACs in one VNI, so that the remotes of one VNI cannot fill the
    /// table for all (`mac_table_size` still bounds the total).
    #[serde(default = "default_mac_table_size_per_vni")]
    pub mac_table_size_per_vni: usize,
    /// Most addresses the ARP/ND proxy learns, all VNIs together (static ones come on top);
    /// beyond it new ones are not learned (counted per VNI as `proxy_table_full`) and
    /// questions for them cross the tunnel as without the proxy.
    #[serde(default = "default_neigh_table_size")]
    pub neigh_table_size: usize,
    /// Use the kernel's UDP segmentation (GSO: equal-sized packets to one remote leave in
    /// one send) and receive coalescing (GRO) where it has them (detected at start-up).
    #[serde(default = "default_udp_offloads")]
    pub udp_offloads: bool,
    #[serde(default)]
    pub vnis: Vec<VniConfig>,
}

fn default_udp_offloads() -> bool {
    true
}

fn default_port() -> u16 {
    VXLAN_PORT
}
fn default_underlay_mtu() -> u32 {
    1500
}
fn default_mac_aging_secs() -> u64 {
    300
}
fn default_mac_table_size() -> usize {
    8192
}
fn default_mac_table_size_per_vni() -> usize {
    4096
}
fn default_neigh_table_size() -> usize {
    8192
}

impl VtepConfig {
    /// A configuration with every default and no VNIs.
    pub fn new(local_ip: IpAddr) -> Self {
        VtepConfig {
            local_ip,
            port: default_port(),
            underlay_mtu: default_underlay_mtu(),
            unknown_vtep: UnknownVtepPolicy::default(),
            local_mac_move: LocalMacMove::default(),
            mac_aging_secs: default_mac_aging_secs(),
            mac_table_size: default_mac_table_size(),
            mac_table_size_per_vni: default_mac_table_size_per_vni(),
            neigh_table_size: default_neigh_table_size(),
            udp_offloads: default_udp_offloads(),
            vnis: Vec::new(),
        }
    }

    /// Checks every field; the first problem is reported with its path (`vnis[1].vlan`).
    pub fn validate(&self) -> Result<(), VtepError> {
        let err = |field: String, message: String| VtepError::Invalid { field, message };
        let ip = self.local_ip;
        if !is_unicast(ip) {
            return Err(err(
                "local_ip".into(),
                format!("{ip} is not a unicast address"),
            ));
        }
        if self.port == 0 {
            return Err(err("port".into(), "must not be 0".into()));
        }
        if !(68..=65535).contains(&self.underlay_mtu) {
            return Err(err(
                "underlay_mtu".into(),
                format!("{} is outside 68..=65535", self.underlay_mtu),
            ));
        }
        if self.mac_aging_secs == 0 {
            return Err(err("mac_aging_secs".into(), "must be at least 1".into()));
        }
        if self.mac_table_size > MAX_MAC_TABLE_SIZE {
            return Err(err(
                "mac_table_size".into(),
                format!("{} is above {MAX_MAC_TABLE_SIZE}", self.mac_table_size),
            ));
        }
        if self.mac_table_size_per_vni > MAX_MAC_TABLE_SIZE {
            return Err(err(
                "mac_table_size_per_vni".into(),
                format!(
                    "{} is above {MAX_MAC_TABLE_SIZE}",
                    self.mac_table_size_per_vni
                ),
            ));
        }
        if self.neigh_table_size > MAX_MAC_TABLE_SIZE {
            return Err(err(
                "neigh_table_size".into(),
                format!("{} is above {MAX_MAC_TABLE_SIZE}", self.neigh_table_size),
            ));
        }
        for (i, v) in self.vnis.iter().enumerate() {
            check_vni(v.vni).map_err(|m| err(format!("vnis[{i}].vni"), m))?;
            check_vlan(v.vlan).map_err(|m| err(format!("vnis[{i}].vlan"), m))?;
            if let Some(j) = self.vnis[..i].iter().position(|o| o.vni == v.vni) {
                return Err(err(
                    format!("vnis[{i}].vni"),
                    format!("VNI {} is also configured by vnis[{j}]", v.vni),
                ));
            }
            if let Some(j) = self.vnis[..i].iter().position(|o| o.vlan == v.vlan) {
                return Err(err(
                    format!("vnis[{i}].vlan"),
                    format!(
                        "VLAN {} is already mapped to VNI {}",
                        v.vlan, self.vnis[j].vni
                    ),
                ));
            }
            for (k, r) in v.remotes.iter().enumerate() {
                let field = || format!("vnis[{i}].remotes[{k}]");
                check_remote(self.local_ip, *r).map_err(|m| err(field(), m))?;
                if v.remotes[..k].contains(r) {
                    return Err(err(field(), format!("{r} is listed twice")));
                }
            }
        }
        Ok(())
    }
}

fn check_vni(vni: Vni) -> Result<(), String> {
    if vni > MAX_VNI {
        return Err(format!("VNI {vni} is outside 0..={MAX_VNI}"));
    }
    Ok(())
}

fn check_vlan(vlan: u16) -> Result<(), String> {
    if !(1..=4094).contains(&vlan) {
        return Err(format!("VLAN {vlan} is outside 1..=4094"));
    }
    Ok(())
}

/// A remote VTEP must be a unicast address other than ours. Multicast underlays are not
/// supported: flooding is head-end replication to each listed remote.
fn check_remote(local: IpAddr, ip: IpAddr) -> Result<(), String> {
    if ip.is_ipv4() != local.is_ipv4() {
        return Err(format!(
            "{ip} is not of the local VTEP address's family ({local}): the underlay is one or the other"
        ));
    }
    if ip == local {
        return Err(format!("{ip} is the local VTEP address"));
    }
    if ip.is_multicast() {
        return Err(format!(
            "{ip} is a multicast address (list each remote VTEP instead)"
        ));
    }
    if !is_unicast(ip) {
        return Err(format!("{ip} is not a unicast address"));
    }
    if is_link_local_v6(ip) {
        return Err(format!(
            "{ip} is an IPv6 link-local address, which needs an interface to be reached: use a global or unique local address"
        ));
    }
    Ok(())
}

fn is_link_local_v6(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        // An IPv4-mapped address is IPv4 in disguise (it would be stored as IPv4).
        IpAddr::V6(v6) => {
            !(v6.is_unspecified() || v6.is_multicast() || v6.to_ipv4_mapped().is_some())
        }
    }
}

/// A remote address as the MAC table stores it (one 128-bit word, so a move is one store):
/// IPv6 as it is, IPv4 as its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`, never a remote's IPv6
/// address: those are refused as not unicast).
fn to_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
        IpAddr::V6(v6) => v6.to_bits(),
    }
}

fn from_bits(bits: u128) -> IpAddr {
    Ipv6Addr::from_bits(bits).to_canonical()
}

/// A configuration or control request that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VtepError {
    #[error("field `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("VNI {0} is not mapped")]
    UnknownVni(Vni),
    #[error("VNI {vni} is already mapped to VLAN {vlan}")]
    VniInUse { vni: Vni, vlan: u16 },
    #[error("VLAN {vlan} is already mapped to VNI {vni}")]
    VlanInUse { vlan: u16, vni: Vni },
    #[error("{ip} is already a remote of VNI {vni}")]
    RemoteExists { vni: Vni, ip: IpAddr },
    #[error("{ip} is not a remote of VNI {vni}")]
    UnknownRemote { vni: Vni, ip: IpAddr },
    #[error("VNI {vni} has no static entry for {mac}")]
    UnknownStatic { vni: Vni, mac: String },
    #[error("the remote MAC table is full ({max} entries): {mac} in VNI {vni} not installed")]
    MacTableFull { vni: Vni, mac: String, max: usize },
    #[error("VNI {vni} has no static address entry for {ip}")]
    UnknownNeighbor { vni: Vni, ip: IpAddr },
}

fn invalid(field: &str, message: String) -> VtepError {
    VtepError::Invalid {
        field: field.to_string(),
        message,
    }
}

/// Why a tunnel packet was dropped. Each reason is a separate counter and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelDrop {
    /// Received: shorter than the VXLAN header.
    Truncated,
    /// Received: the I flag is clear.
    NoVniFlag,
    /// Received: other flags or reserved bits set.
    ReservedBits,
    /// Received: the inner frame is shorter than an Ethernet header.
    InnerRunt,
    /// Received: the VNI is not mapped to a VLAN.
    UnknownVni,
    /// Received: the sender is not in the VNI's flood list and the policy is `drop` (or it is
    /// not a unicast address at all).
    UnknownVtep,
    /// Received: the inner frame is larger than the switch's frame limit (MTU + 18).
    InnerTooBig,
    /// Received: the inner source MAC is learned on a local port of the VNI's VLAN and
    /// `local_mac_move` is `deny`.
    LocalMacClaim,
    /// To send: the frame does not fit the underlay MTU after encapsulation.
    TooBig,
    /// To send: the VNI has no remote to send to.
    NoRemote,
}

impl TunnelDrop {
    pub const ALL: [TunnelDrop; 10] = [
        TunnelDrop::Truncated,
        TunnelDrop::NoVniFlag,
        TunnelDrop::ReservedBits,
        TunnelDrop::InnerRunt,
        TunnelDrop::UnknownVni,
        TunnelDrop::UnknownVtep,
        TunnelDrop::InnerTooBig,
        TunnelDrop::LocalMacClaim,
        TunnelDrop::TooBig,
        TunnelDrop::NoRemote,
    ];

    /// The label used in metrics and flowctl.
    pub fn label(self) -> &'static str {
        match self {
            TunnelDrop::Truncated => "truncated",
            TunnelDrop::NoVniFlag => "no-vni-flag",
            TunnelDrop::ReservedBits => "reserved-bits",
            TunnelDrop::InnerRunt => "inner-runt",
            TunnelDrop::UnknownVni => "unknown-vni",
            TunnelDrop::UnknownVtep => "unknown-vtep",
            TunnelDrop::InnerTooBig => "inner-too-big",
            TunnelDrop::LocalMacClaim => "local-mac-claim",
            TunnelDrop::TooBig => "too-big",
            TunnelDrop::NoRemote => "no-remote",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<DecapError> for TunnelDrop {
    fn from(e: DecapError) -> Self {
        match e {
            DecapError::Truncated { .. } => TunnelDrop::Truncated,
            DecapError::NoVniFlag => TunnelDrop::NoVniFlag,
            DecapError::ReservedBits => TunnelDrop::ReservedBits,
            DecapError::InnerRunt { .. } => TunnelDrop::InnerRunt,
        }
    }
}

/// What [`Vtep::learn`] did, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    Refreshed,
    New,
    /// The address was behind another remote before.
    Moved,
    /// A static entry holds the address; it was left alone.
    Static,
    /// The table, or the VNI's share of it, is at its limit; the address was not learned
    /// (its frames keep flooding).
    TableFull,
    /// Not learnable: a group source MAC, a non-unicast remote or an unmapped VNI.
    Refused,
}

#[derive(Debug, Default)]
struct Traffic {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
}

impl Traffic {
    fn rx(&self, packets: u64, bytes: u64) {
        self.rx_packets.fetch_add(packets, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    fn tx(&self, packets: u64, bytes: u64) {
        self.tx_packets.fetch_add(packets, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    fn snapshot(&self) -> TrafficSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TrafficSnapshot {
            rx_packets: load(&self.rx_packets),
            rx_bytes: load(&self.rx_bytes),
            tx_packets: load(&self.tx_packets),
            tx_bytes: load(&self.tx_bytes),
        }
    }
}

/// What the ARP/ND proxy of one VNI did.
#[derive(Debug, Default)]
struct ProxyCounters {
    arp_replies: AtomicU64,
    nd_replies: AtomicU64,
    /// Addresses not learned because the table was full.
    table_full: AtomicU64,
}

/// Drop counters indexed by [`TunnelDrop`].
#[derive(Debug, Default)]
struct Drops([AtomicU64; TunnelDrop::ALL.len()]);

impl Drops {
    fn count(&self, reason: TunnelDrop) {
        self.0[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
    fn snapshot(&self) -> Vec<(String, u64)> {
        TunnelDrop::ALL
            .iter()
            .map(|r| {
                (
                    r.label().to_string(),
                    self.0[r.index()].load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

struct VniEntry {
    vlan: u16,
    /// Shared so that [`Vtep::for_each_remote`] can iterate without the lock or a copy.
    remotes: Arc<[IpAddr]>,
    /// The flood-list remotes that BGP EVPN added (type-3 routes), not the configuration.
    bgp_remotes: Vec<IpAddr>,
    /// Whether source MACs of tunnel packets are learned (off where BGP EVPN is the only
    /// source of remote MACs, as `nolearning` on a Linux EVPN host's vxlan device).
    learning: bool,
    /// Whether the VNI's ARP/ND proxy is on (it learns addresses and answers questions).
    proxy: bool,
    proxy_counters: ProxyCounters,
    traffic: Traffic,
    drops: Drops,
}

#[derive(Default)]
struct VniTable {
    by_vni: HashMap<Vni, VniEntry, S>,
    by_vlan: HashMap<u16, Vni, S>,
}

/// Where a remote MAC entry came from. Only learned entries age and move with traffic;
/// the others are pinned until whoever put them there takes them away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MacOrigin {
    /// From the source address of a tunnel packet (data-plane learning).
    #[default]
    Learned,
    /// Configured by the operator ([`Vtep::add_static`]).
    Static,
    /// Installed from a BGP EVPN route ([`Vtep::add_bgp`]).
    Bgp,
}

struct MacEntry {
    /// The remote VTEP's address ([`to_bits`]), one atomic word so a move needs no write lock.
    remote: AtomicU128,
    /// Seconds since the table's epoch when the address was last seen.
    last_seen: AtomicU64,
    origin: MacOrigin,
}

impl MacEntry {
    /// Not aged and not moved by learning: configured, or from BGP.
    fn pinned(&self) -> bool {
        self.origin != MacOrigin::Learned
    }
}

/// Keyed by VNI first: each VNI is its own table (the same address in two VNIs is two
/// unrelated entries); one allocation, sized up front, holds them all.
type MacKey = (Vni, [u8; 6]);

struct MacTable {
    entries: HashMap<MacKey, MacEntry, S>,
    /// Learned (not static) entries per mapped VNI, for the per-VNI limit. A VNI's count is
    /// created when it is mapped, so learning never allocates here either.
    learned_per_vni: HashMap<Vni, usize, S>,
    /// When the last sweep for room happened, so a full table is swept at most once a second.
    last_sweep: Option<u64>,
}

impl MacTable {
    fn learned_in(&self, vni: Vni) -> usize {
        self.learned_per_vni.get(&vni).copied().unwrap_or(0)
    }

    /// Removes the entries `keep` refuses, keeping the per-VNI counts right; returns how many.
    fn retain(&mut self, mut keep: impl FnMut(&MacKey, &MacEntry) -> bool) -> usize {
        let MacTable {
            entries,
            learned_per_vni,
            ..
        } = self;
        let before = entries.len();
        entries.retain(|key, e| {
            let kept = keep(key, e);
            if !kept && !e.pinned() {
                if let Some(n) = learned_per_vni.get_mut(&key.0) {
                    *n = n.saturating_sub(1);
                }
            }
            kept
        });
        before - entries.len()
    }

    /// Inserts or replaces an entry, keeping the per-VNI counts right.
    fn insert(&mut self, key: MacKey, entry: MacEntry) {
        let added = usize::from(!entry.pinned());
        let removed = self
            .entries
            .insert(key, entry)
            .map_or(0, |old| usize::from(!old.pinned()));
        if let Some(n) = self.learned_per_vni.get_mut(&key.0) {
            *n = (*n + added).saturating_sub(removed);
        }
    }
}

struct RemoteEntry {
    /// How many flood lists name this remote; 0 means it was only seen (learned).
    flood_refs: u32,
    /// When it was first tracked, so that a just-seen remote survives a sweep.
    created: u64,
    traffic: Traffic,
}

#[derive(Default)]
struct RemoteTable {
    entries: HashMap<IpAddr, RemoteEntry, S>,
    /// Entries with `flood_refs == 0`.
    learned: usize,
}

impl RemoteTable {
    /// A flood list now names `ip`.
    fn acquire(&mut self, ip: IpAddr, now: u64) {
        match self.entries.get_mut(&ip) {
            Some(e) => {
                if e.flood_refs == 0 {
                    self.learned -= 1;
                }
                e.flood_refs += 1;
            }
            None => {
                self.entries.insert(
                    ip,
                    RemoteEntry {
                        flood_refs: 1,
                        created: now,
                        traffic: Traffic::default(),
                    },
                );
            }
        }
    }

    /// A flood list no longer names `ip`. The entry stays (as learned) with its counters until
    /// a sweep finds it unused.
    fn release(&mut self, ip: IpAddr) {
        if let Some(e) = self.entries.get_mut(&ip) {
            if e.flood_refs > 0 {
                e.flood_refs -= 1;
                if e.flood_refs == 0 {
                    self.learned += 1;
                }
            }
        }
    }
}

/// The VXLAN tunnel endpoint: VNI <-> VLAN map, flood lists, remote MAC learning, counters.
pub struct Vtep {
    local_ip: IpAddr,
    port: u16,
    underlay_mtu: u32,
    policy: UnknownVtepPolicy,
    local_mac_move: LocalMacMove,
    aging_secs: u64,
    max_macs: usize,
    max_macs_per_vni: usize,
    udp_offloads: bool,
    vnis: RwLock<VniTable>,
    macs: RwLock<MacTable>,
    remotes: RwLock<RemoteTable>,
    /// The ARP/ND proxy's known addresses (it has its own lock).
    neighbors: NeighTable,
    remote_overflow: Traffic,
    /// Drops with no mapped VNI to charge them to.
    drops: Drops,
    epoch: Instant,
}

/// Poisoning only means another thread panicked mid-update; the tables stay usable (every
/// update leaves them consistent), and the frame path must not panic in turn.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl Vtep {
    /// Builds the tables from a configuration, after [`VtepConfig::validate`].
    pub fn new(cfg: VtepConfig) -> Result<Vtep, VtepError> {
        cfg.validate()?;
        let mut vnis = VniTable::default();
        let mut learned_per_vni = HashMap::with_hasher(S::new());
        let mut remotes = RemoteTable {
            entries: HashMap::with_capacity_and_hasher(MAX_LEARNED_REMOTES, S::new()),
            learned: 0,
        };
        for v in &cfg.vnis {
            for r in &v.remotes {
                remotes.acquire(*r, 0);
            }
            vnis.by_vlan.insert(v.vlan, v.vni);
            let mut entry = VniEntry::new(v.vlan, v.remotes.iter().copied());
            entry.proxy = v.proxy;
            vnis.by_vni.insert(v.vni, entry);
            learned_per_vni.insert(v.vni, 0);
        }
        Ok(Vtep {
            local_ip: cfg.local_ip,
            port: cfg.port,
            underlay_mtu: cfg.underlay_mtu,
            policy: cfg.unknown_vtep,
            local_mac_move: cfg.local_mac_move,
            aging_secs: cfg.mac_aging_secs,
            max_macs: cfg.mac_table_size,
            max_macs_per_vni: cfg.mac_table_size_per_vni,
            udp_offloads: cfg.udp_offloads,
            vnis: RwLock::new(vnis),
            macs: RwLock::new(MacTable {
                entries: HashMap::with_capacity_and_hasher(cfg.mac_table_size, S::new()),
                learned_per_vni,
                last_sweep: None,
            }),
            remotes: RwLock::new(remotes),
            neighbors: NeighTable::new(cfg.neigh_table_size, cfg.mac_aging_secs),
            remote_overflow: Traffic::default(),
            drops: Drops::default(),
            epoch: Instant::now(),
        })
    }

    /// The current state as a configuration (VNIs sorted; static MACs and what BGP EVPN
    /// installed are not part of it).
    pub fn config(&self) -> VtepConfig {
        let t = read(&self.vnis);
        let mut vnis: Vec<VniConfig> = t
            .by_vni
            .iter()
            .map(|(vni, e)| VniConfig {
                vni: *vni,
                vlan: e.vlan,
                // What BGP added is not configuration.
                remotes: e
                    .remotes
                    .iter()
                    .copied()
                    .filter(|r| !e.bgp_remotes.contains(r))
                    .collect(),
                proxy: e.proxy,
            })
            .collect();
        vnis.sort_by_key(|v| v.vni);
        VtepConfig {
            local_ip: self.local_ip,
            port: self.port,
            underlay_mtu: self.underlay_mtu,
            unknown_vtep: self.policy,
            local_mac_move: self.local_mac_move,
            mac_aging_secs: self.aging_secs,
            mac_table_size: self.max_macs,
            mac_table_size_per_vni: self.max_macs_per_vni,
            neigh_table_size: self.neighbors.max(),
            udp_offloads: self.udp_offloads,
            vnis,
        }
    }

    pub fn local_ip(&self) -> IpAddr {
        self.local_ip
    }

    /// The UDP port sent to and listened on.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn underlay_mtu(&self) -> u32 {
        self.underlay_mtu
    }

    /// Largest inner frame that can be sent without exceeding the underlay MTU (its IP
    /// family decides the header's size).
    pub fn max_inner_frame(&self) -> u32 {
        crate::encap::max_inner_frame(self.underlay_mtu, self.local_ip.is_ipv6())
    }

    pub fn unknown_vtep_policy(&self) -> UnknownVtepPolicy {
        self.policy
    }

    pub fn local_mac_move(&self) -> LocalMacMove {
        self.local_mac_move
    }

    pub fn vni_for_vlan(&self, vlan: u16) -> Option<Vni> {
        read(&self.vnis).by_vlan.get(&vlan).copied()
    }

    pub fn vlan_for_vni(&self, vni: Vni) -> Option<u16> {
        read(&self.vnis).by_vni.get(&vni).map(|e| e.vlan)
    }

    /// VLANs mapped to a VNI, sorted.
    pub fn mapped_vlans(&self) -> Vec<u16> {
        let mut v: Vec<u16> = read(&self.vnis).by_vlan.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Maps `vni` to `vlan` with an empty flood list. Mapping a VNI again to the VLAN it
    /// already carries is a no-op; to another VLAN it is an error (unmap it first).
    pub fn map(&self, vni: Vni, vlan: u16) -> Result<(), VtepError> {
        check_vni(vni).map_err(|m| invalid("vni", m))?;
        check_vlan(vlan).map_err(|m| invalid("vlan", m))?;
        let mut t = write(&self.vnis);
        if let Some(e) = t.by_vni.get(&vni) {
            return if e.vlan == vlan {
                Ok(())
            } else {
                Err(VtepError::VniInUse { vni, vlan: e.vlan })
            };
        }
        if let Some(&other) = t.by_vlan.get(&vlan) {
            return Err(VtepError::VlanInUse { vlan, vni: other });
        }
        t.by_vlan.insert(vlan, vni);
        t.by_vni.insert(vni, VniEntry::new(vlan, []));
        write(&self.macs).learned_per_vni.insert(vni, 0);
        Ok(())
    }

    /// Removes a VNI with its flood list, counters, MAC entries and known addresses (static
    /// ones included).
    pub fn unmap(&self, vni: Vni) -> Result<(), VtepError> {
        let mut t = write(&self.vnis);
        let e = t.by_vni.remove(&vni).ok_or(VtepError::UnknownVni(vni))?;
        t.by_vlan.remove(&e.vlan);
        {
            let mut remotes = write(&self.remotes);
            for r in e.remotes.iter() {
                remotes.release(*r);
            }
        }
        {
            let mut macs = write(&self.macs);
            macs.retain(|k, _| k.0 != vni);
            macs.learned_per_vni.remove(&vni);
        }
        self.neighbors.forget(vni, true);
        Ok(())
    }

    /// Adds `ip` to the flood list of `vni`.
    pub fn add_remote(&self, vni: Vni, ip: IpAddr) -> Result<(), VtepError> {
        self.add_remote_from(vni, ip, false)
    }

    /// [`Vtep::add_remote`], marking the remote as BGP's if `bgp`: one critical section, so
    /// the flood list and its BGP part never disagree.
    fn add_remote_from(&self, vni: Vni, ip: IpAddr, bgp: bool) -> Result<(), VtepError> {
        check_remote(self.local_ip, ip).map_err(|m| invalid("remote", m))?;
        let now = self.now();
        let mut t = write(&self.vnis);
        let e = t.by_vni.get_mut(&vni).ok_or(VtepError::UnknownVni(vni))?;
        if e.remotes.contains(&ip) {
            return Err(VtepError::RemoteExists { vni, ip });
        }
        e.remotes = e.remotes.iter().copied().chain([ip]).collect();
        if bgp {
            e.bgp_remotes.push(ip);
        }
        write(&self.remotes).acquire(ip, now);
        Ok(())
    }

    /// Removes `ip` from the flood list of `vni`. MACs learned behind it stay until they age
    /// out (under the `learn` policy it may well still be a valid sender).
    pub fn remove_remote(&self, vni: Vni, ip: IpAddr) -> Result<(), VtepError> {
        self.remove_remote_from(vni, ip, false)
    }

    /// [`Vtep::remove_remote`]; with `only_bgp`, only a remote BGP added.
    fn remove_remote_from(&self, vni: Vni, ip: IpAddr, only_bgp: bool) -> Result<(), VtepError> {
        let mut t = write(&self.vnis);
        let e = t.by_vni.get_mut(&vni).ok_or(VtepError::UnknownVni(vni))?;
        if !e.remotes.contains(&ip) || (only_bgp && !e.bgp_remotes.contains(&ip)) {
            return Err(VtepError::UnknownRemote { vni, ip });
        }
        e.remotes = e.remotes.iter().copied().filter(|r| *r != ip).collect();
        e.bgp_remotes.retain(|r| *r != ip);
        write(&self.remotes).release(ip);
        Ok(())
    }

    /// Whether `vni` learns from tunnel packets (None: not mapped). A VNI mapped again
    /// starts learning: how the EVPN agent sees that it was.
    pub fn learning(&self, vni: Vni) -> Option<bool> {
        read(&self.vnis).by_vni.get(&vni).map(|e| e.learning)
    }

    /// Turns learning from tunnel packets on or off for `vni`; off also forgets what was
    /// learned there (static and BGP entries stay). BGP EVPN turns it off for its VNIs: a
    /// learned entry would outlive the withdrawal of its host's routes. While it is off, the
    /// ARP/ND proxy learns no addresses from tunnel packets either.
    pub fn set_learning(&self, vni: Vni, on: bool) -> Result<(), VtepError> {
        let mut t = write(&self.vnis);
        let e = t.by_vni.get_mut(&vni).ok_or(VtepError::UnknownVni(vni))?;
        e.learning = on;
        if !on {
            write(&self.macs).retain(|k, e| k.0 != vni || e.pinned());
        }
        Ok(())
    }

    /// Adds `ip` to the flood list of `vni` from a BGP EVPN type-3 route. A remote the
    /// configuration already names stays configured: returns false and changes nothing.
    pub fn add_bgp_remote(&self, vni: Vni, ip: IpAddr) -> Result<bool, VtepError> {
        match self.add_remote_from(vni, ip, true) {
            Ok(()) => Ok(true),
            Err(VtepError::RemoteExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes `ip` from the flood list of `vni` if BGP added it (its type-3 route was
    /// withdrawn); whether it did.
    pub fn remove_bgp_remote(&self, vni: Vni, ip: IpAddr) -> bool {
        self.remove_remote_from(vni, ip, true).is_ok()
    }

    /// Calls `f` for each flood-list remote of `vni` (head-end replication), without
    /// allocating and without holding a lock, so `f` may call back into the `Vtep`.
    pub fn for_each_remote(&self, vni: Vni, mut f: impl FnMut(IpAddr)) {
        let list = read(&self.vnis)
            .by_vni
            .get(&vni)
            .map(|e| Arc::clone(&e.remotes));
        for ip in list.iter().flat_map(|l| l.iter()) {
            f(*ip);
        }
    }

    /// Checks a decapsulated packet's outer source against the policy and returns the VLAN
    /// its VNI carries. A flood-list remote of the VNI is admitted; another unicast source is
    /// admitted under [`UnknownVtepPolicy::Learn`] and refused as `UnknownVtep` under `Drop`;
    /// a non-unicast source (spoofed: 0.0.0.0, broadcast, multicast) is always refused, since
    /// learning it would make us send unicast traffic to it.
    pub fn admit(&self, vni: Vni, remote: IpAddr) -> Result<u16, TunnelDrop> {
        let t = read(&self.vnis);
        let e = t.by_vni.get(&vni).ok_or(TunnelDrop::UnknownVni)?;
        if e.remotes.contains(&remote) {
            return Ok(e.vlan);
        }
        match self.policy {
            UnknownVtepPolicy::Learn if self.learnable(remote) => Ok(e.vlan),
            _ => Err(TunnelDrop::UnknownVtep),
        }
    }

    /// Whether a packet's source may stand as a remote VTEP: unicast, not us, and of the
    /// underlay's address family.
    fn learnable(&self, remote: IpAddr) -> bool {
        is_unicast(remote)
            && !is_link_local_v6(remote)
            && remote != self.local_ip
            && remote.is_ipv4() == self.local_ip.is_ipv4()
    }

    fn expired(&self, last_seen: u64, now: u64) -> bool {
        now.saturating_sub(last_seen) >= self.aging_secs.max(1)
    }

    /// Records that `mac` (an inner source address) sits behind `remote` in `vni`. A static
    /// entry for the address wins; a full table, or a VNI at `mac_table_size_per_vni`,
    /// refuses new addresses (after sweeping expired ones, at most once a second). Does not
    /// allocate: the table is sized up front.
    pub fn learn(&self, vni: Vni, mac: [u8; 6], remote: IpAddr, now_secs: u64) -> Learned {
        if mac[0] & 1 != 0
            || !self.learnable(remote)
            || !read(&self.vnis)
                .by_vni
                .get(&vni)
                .is_some_and(|e| e.learning)
        {
            return Learned::Refused;
        }
        let ip = to_bits(remote);
        let key = (vni, mac);
        let known = |e: &MacEntry| {
            if e.pinned() {
                return Learned::Static;
            }
            let moved = e.remote.swap(ip, Ordering::Relaxed) != ip;
            if e.last_seen.load(Ordering::Relaxed) != now_secs {
                e.last_seen.store(now_secs, Ordering::Relaxed);
            }
            if moved {
                Learned::Moved
            } else {
                Learned::Refreshed
            }
        };
        if let Some(e) = read(&self.macs).entries.get(&key) {
            return known(e);
        }
        let mut t = write(&self.macs);
        if let Some(e) = t.entries.get(&key) {
            return known(e);
        }
        if !t.learned_per_vni.contains_key(&vni) {
            // Unmapped since the check above.
            return Learned::Refused;
        }
        let full = |t: &MacTable| {
            t.entries.len() >= self.max_macs || t.learned_in(vni) >= self.max_macs_per_vni
        };
        if full(&t) {
            if t.last_sweep == Some(now_secs) {
                return Learned::TableFull;
            }
            t.last_sweep = Some(now_secs);
            t.retain(|_, e| {
                e.pinned() || !self.expired(e.last_seen.load(Ordering::Relaxed), now_secs)
            });
            if full(&t) {
                return Learned::TableFull;
            }
        }
        t.insert(
            key,
            MacEntry {
                remote: AtomicU128::new(ip),
                last_seen: AtomicU64::new(now_secs),
                origin: MacOrigin::Learned,
            },
        );
        Learned::New
    }

    /// The remote VTEP `mac` sits behind in `vni`, unless unknown or aged out.
    pub fn lookup(&self, vni: Vni, mac: [u8; 6], now_secs: u64) -> Option<IpAddr> {
        let t = read(&self.macs);
        let e = t.entries.get(&(vni, mac))?;
        if !e.pinned() && self.expired(e.last_seen.load(Ordering::Relaxed), now_secs) {
            return None;
        }
        Some(from_bits(e.remote.load(Ordering::Relaxed)))
    }

    /// Checks a pinned entry (static or BGP) before it goes in, and returns the VNI table's
    /// read guard, to be held while it is inserted so that the VNI cannot be unmapped (and
    /// its MACs flushed) under the caller.
    fn check_pinned(
        &self,
        vni: Vni,
        mac: [u8; 6],
        remote: IpAddr,
    ) -> Result<RwLockReadGuard<'_, VniTable>, VtepError> {
        if mac[0] & 1 != 0 {
            return Err(invalid(
                "mac",
                format!("{} is not a unicast address", fmt_mac(mac)),
            ));
        }
        check_remote(self.local_ip, remote).map_err(|m| invalid("remote", m))?;
        let t = read(&self.vnis);
        if !t.by_vni.contains_key(&vni) {
            return Err(VtepError::UnknownVni(vni));
        }
        Ok(t)
    }

    /// Pins `mac` behind `remote` in `vni`: never aged, never moved by learning, and allowed
    /// beyond `mac_table_size` (the operator chose it). Replaces a learned entry.
    pub fn add_static(&self, vni: Vni, mac: [u8; 6], remote: IpAddr) -> Result<(), VtepError> {
        let _vnis = self.check_pinned(vni, mac, remote)?;
        write(&self.macs).insert(
            (vni, mac),
            MacEntry {
                remote: AtomicU128::new(to_bits(remote)),
                last_seen: AtomicU64::new(self.now()),
                origin: MacOrigin::Static,
            },
        );
        Ok(())
    }

    pub fn remove_static(&self, vni: Vni, mac: [u8; 6]) -> Result<(), VtepError> {
        let mut t = write(&self.macs);
        match t.entries.get(&(vni, mac)) {
            Some(e) if e.origin == MacOrigin::Static => {
                t.entries.remove(&(vni, mac));
                Ok(())
            }
            _ => Err(VtepError::UnknownStatic {
                vni,
                mac: fmt_mac(mac),
            }),
        }
    }

    /// Installs `mac` behind `remote` in `vni` from a BGP EVPN route (a type-2 route, as
    /// zebra put it in the kernel's FDB): pinned like a static entry, replacing a learned or
    /// an earlier BGP entry (the MAC moved). A configured static entry wins: returns false
    /// and changes nothing.
    pub fn add_bgp(&self, vni: Vni, mac: [u8; 6], remote: IpAddr) -> Result<bool, VtepError> {
        let _vnis = self.check_pinned(vni, mac, remote)?;
        let mut macs = write(&self.macs);
        match macs.entries.get(&(vni, mac)) {
            Some(e) if e.origin == MacOrigin::Static => return Ok(false),
            Some(_) => {}
            // Routes come from the operator's fabric, but a table without a bound is one
            // misconfigured peer away from exhausting memory.
            None if macs.entries.len() >= self.max_macs => {
                return Err(VtepError::MacTableFull {
                    vni,
                    mac: fmt_mac(mac),
                    max: self.max_macs,
                })
            }
            None => {}
        }
        macs.insert(
            (vni, mac),
            MacEntry {
                remote: AtomicU128::new(to_bits(remote)),
                last_seen: AtomicU64::new(self.now()),
                origin: MacOrigin::Bgp,
            },
        );
        Ok(true)
    }

    /// Removes the BGP entry for `mac` in `vni` (its route was withdrawn); whether there was
    /// one. Learned and static entries are left alone.
    pub fn remove_bgp(&self, vni: Vni, mac: [u8; 6]) -> bool {
        let mut t = write(&self.macs);
        let bgp = t
            .entries
            .get(&(vni, mac))
            .is_some_and(|e| e.origin == MacOrigin::Bgp);
        if bgp {
            t.entries.remove(&(vni, mac));
        }
        bgp
    }

    /// Drops aged-out learned MACs and returns how many; also forgets learned remotes that no
    /// MAC points to any more (and that are older than the aging time), which frees room under
    /// [`MAX_LEARNED_REMOTES`].
    pub fn expire(&self, now_secs: u64) -> usize {
        self.neighbors.expire(now_secs);
        let (removed, in_use) = {
            let mut t = write(&self.macs);
            let removed = t.retain(|_, e| {
                e.pinned() || !self.expired(e.last_seen.load(Ordering::Relaxed), now_secs)
            });
            let in_use: HashSet<u128, S> = t
                .entries
                .values()
                .map(|e| e.remote.load(Ordering::Relaxed))
                .collect();
            (removed, in_use)
        };
        let mut r = write(&self.remotes);
        let RemoteTable { entries, learned } = &mut *r;
        entries.retain(|ip, e| {
            let keep = e.flood_refs > 0
                || in_use.contains(&to_bits(*ip))
                || !self.expired(e.created, now_secs);
            if !keep {
                *learned -= 1;
            }
            keep
        });
        removed
    }

    /// Whether the ARP/ND proxy of `vni` is on (None: not mapped).
    pub fn proxy(&self, vni: Vni) -> Option<bool> {
        read(&self.vnis).by_vni.get(&vni).map(|e| e.proxy)
    }

    /// Turns the ARP/ND proxy of `vni` on or off; off also forgets the addresses it learned
    /// there (static ones stay, for when it is turned on again).
    pub fn set_proxy(&self, vni: Vni, on: bool) -> Result<(), VtepError> {
        let mut t = write(&self.vnis);
        let e = t.by_vni.get_mut(&vni).ok_or(VtepError::UnknownVni(vni))?;
        e.proxy = on;
        if !on {
            self.neighbors.forget(vni, false);
        }
        Ok(())
    }

    /// Records what an ARP or ND frame that came through the tunnel in `vni` says (see
    /// [`crate::proxy::NeighMessage::binding`]); only while the VNI's proxy is on. The caller
    /// has admitted the frame's sender. A refusal for room is counted for the VNI.
    pub fn learn_neighbor(&self, vni: Vni, b: Binding, now_secs: u64) -> NeighLearned {
        // Held while the entry goes in, so that the VNI cannot be unmapped (and its addresses
        // forgotten) in between.
        // A VNI whose remote MACs come only from the control plane (EVPN, `learning` off)
        // learns no addresses from the data plane either.
        let t = read(&self.vnis);
        let Some(e) = t.by_vni.get(&vni).filter(|e| e.proxy && e.learning) else {
            return NeighLearned::Refused;
        };
        let learned = self.neighbors.learn(vni, b, now_secs);
        if learned == NeighLearned::TableFull {
            e.proxy_counters.table_full.fetch_add(1, Ordering::Relaxed);
        }
        learned
    }

    /// What the proxy of `vni` answers for `ip`, if anything: the address's MAC, known to
    /// the table, and the remote VTEP that MAC sits behind now. Nothing while the proxy is
    /// off, and nothing for an address whose MAC is not (or no longer) behind a remote VTEP.
    pub fn proxy_target(&self, vni: Vni, ip: IpAddr, now_secs: u64) -> Option<ProxyTarget> {
        if self.proxy(vni) != Some(true) {
            return None;
        }
        let known = self.neighbors.lookup(vni, ip, now_secs)?;
        // An IPv6 answer must say whether its owner routes (a host that reads R clear from
        // its router drops it as a default router): not answered until a message said so.
        if ip.is_ipv6() && known.router.is_none() {
            return None;
        }
        let remote = self.lookup(vni, known.mac, now_secs)?;
        Some(ProxyTarget { known, remote })
    }

    /// A local host's ARP or neighbour discovery in `vni` says `ip` is at `mac`: a learned
    /// address that puts `ip` behind a remote is forgotten (see
    /// [`NeighTable::claimed_locally`]).
    pub fn neighbor_claimed_locally(&self, vni: Vni, ip: IpAddr, mac: [u8; 6]) -> bool {
        self.neighbors.claimed_locally(vni, ip, mac)
    }

    /// Counts an answer the proxy of `vni` gave.
    pub fn count_proxy_reply(&self, vni: Vni, protocol: ProxyProtocol) {
        if let Some(e) = read(&self.vnis).by_vni.get(&vni) {
            let c = match protocol {
                ProxyProtocol::Arp => &e.proxy_counters.arp_replies,
                ProxyProtocol::Nd => &e.proxy_counters.nd_replies,
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Pins `ip` at `mac` in `vni` for the proxy (as `ip neigh add ... nud permanent` does
    /// for the kernel's): never aged, beats learning, allowed beyond `neigh_table_size`.
    /// It is answered for while the proxy is on and `mac` is behind a remote VTEP.
    pub fn add_static_neighbor(&self, vni: Vni, ip: IpAddr, mac: [u8; 6]) -> Result<(), VtepError> {
        if !crate::proxy::host_ip(ip) {
            return Err(invalid(
                "ip",
                format!("{ip} is not an address a host may have"),
            ));
        }
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(invalid(
                "mac",
                format!("{} is not a host's unicast address", fmt_mac(mac)),
            ));
        }
        let now = self.now();
        let t = read(&self.vnis);
        if !t.by_vni.contains_key(&vni) {
            return Err(VtepError::UnknownVni(vni));
        }
        // Checked above; `add_static` checks the same.
        self.neighbors.add_static(vni, ip, mac, now);
        Ok(())
    }

    pub fn remove_static_neighbor(&self, vni: Vni, ip: IpAddr) -> Result<(), VtepError> {
        if self.neighbors.remove_static(vni, ip) {
            Ok(())
        } else {
            Err(VtepError::UnknownNeighbor { vni, ip })
        }
    }

    /// The tables' clock: whole seconds since the `Vtep` was created.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// Counts a frame received from `remote` in `vni` (its inner length, or whatever the
    /// caller counts consistently).
    pub fn count_rx(&self, vni: Vni, remote: IpAddr, bytes: u64) {
        self.count_rx_many(vni, remote, 1, bytes);
    }

    /// Counts `packets` frames of `bytes` in all received from `remote` in `vni` (the frame
    /// path adds a batch's run of one remote and VNI at once: two locks per run, not per
    /// frame).
    pub fn count_rx_many(&self, vni: Vni, remote: IpAddr, packets: u64, bytes: u64) {
        if let Some(e) = read(&self.vnis).by_vni.get(&vni) {
            e.traffic.rx(packets, bytes);
        }
        self.with_remote(remote, |t| t.rx(packets, bytes));
    }

    /// Counts a frame sent to `remote` in `vni`.
    pub fn count_tx(&self, vni: Vni, remote: IpAddr, bytes: u64) {
        self.count_tx_many(vni, remote, 1, bytes);
    }

    /// [`Vtep::count_rx_many`] for frames sent.
    pub fn count_tx_many(&self, vni: Vni, remote: IpAddr, packets: u64, bytes: u64) {
        if let Some(e) = read(&self.vnis).by_vni.get(&vni) {
            e.traffic.tx(packets, bytes);
        }
        self.with_remote(remote, |t| t.tx(packets, bytes));
    }

    /// Counts a drop against `vni`, or globally when no VNI is known or it is not mapped.
    pub fn count_drop(&self, vni: Option<Vni>, reason: TunnelDrop) {
        if let Some(vni) = vni {
            if let Some(e) = read(&self.vnis).by_vni.get(&vni) {
                e.drops.count(reason);
                return;
            }
        }
        self.drops.count(reason);
    }

    /// Runs `f` on the counters of `remote`, tracking it if new and there is room, else on the
    /// overflow counters.
    fn with_remote(&self, remote: IpAddr, f: impl Fn(&Traffic)) {
        if let Some(e) = read(&self.remotes).entries.get(&remote) {
            return f(&e.traffic);
        }
        let mut r = write(&self.remotes);
        if let Some(e) = r.entries.get(&remote) {
            return f(&e.traffic);
        }
        if r.learned >= MAX_LEARNED_REMOTES {
            return f(&self.remote_overflow);
        }
        r.learned += 1;
        let e = r.entries.entry(remote).or_insert(RemoteEntry {
            flood_refs: 0,
            created: self.now(),
            traffic: Traffic::default(),
        });
        f(&e.traffic);
    }

    /// Tables and counters as they stand, for flowctl and metrics.
    pub fn snapshot(&self) -> VtepSnapshot {
        let now = self.now();
        let mut vnis: Vec<VniSnapshot> = read(&self.vnis)
            .by_vni
            .iter()
            .map(|(vni, e)| {
                let t = e.traffic.snapshot();
                VniSnapshot {
                    vni: *vni,
                    vlan: e.vlan,
                    remotes: e.remotes.to_vec(),
                    bgp_remotes: e.bgp_remotes.clone(),
                    proxy: e.proxy,
                    proxy_arp_replies: e.proxy_counters.arp_replies.load(Ordering::Relaxed),
                    proxy_nd_replies: e.proxy_counters.nd_replies.load(Ordering::Relaxed),
                    proxy_table_full: e.proxy_counters.table_full.load(Ordering::Relaxed),
                    rx_packets: t.rx_packets,
                    rx_bytes: t.rx_bytes,
                    tx_packets: t.tx_packets,
                    tx_bytes: t.tx_bytes,
                    drops: e.drops.snapshot(),
                }
            })
            .collect();
        vnis.sort_by_key(|v| v.vni);
        let mut remotes: Vec<RemoteSnapshot> = read(&self.remotes)
            .entries
            .iter()
            .map(|(ip, e)| {
                let t = e.traffic.snapshot();
                RemoteSnapshot {
                    ip: *ip,
                    rx_packets: t.rx_packets,
                    rx_bytes: t.rx_bytes,
                    tx_packets: t.tx_packets,
                    tx_bytes: t.tx_bytes,
                    learned: e.flood_refs == 0,
                }
            })
            .collect();
        remotes.sort_by_key(|r| r.ip);
        let mut macs: Vec<VtepMacEntry> = read(&self.macs)
            .entries
            .iter()
            .filter(|(_, e)| e.pinned() || !self.expired(e.last_seen.load(Ordering::Relaxed), now))
            .map(|((vni, mac), e)| VtepMacEntry {
                vni: *vni,
                mac: fmt_mac(*mac),
                remote: from_bits(e.remote.load(Ordering::Relaxed)),
                is_static: e.origin == MacOrigin::Static,
                origin: e.origin,
                age: if e.pinned() {
                    0
                } else {
                    now.saturating_sub(e.last_seen.load(Ordering::Relaxed))
                },
            })
            .collect();
        macs.sort_by(|a, b| (a.vni, &a.mac).cmp(&(b.vni, &b.mac)));
        VtepSnapshot {
            local_ip: Some(self.local_ip),
            port: self.port,
            underlay_mtu: self.underlay_mtu,
            guest_mtu: self.max_inner_frame().saturating_sub(14),
            udp_gso: false,
            udp_gro: false,
            io: UdpIoSnapshot::default(),
            vnis,
            remotes,
            remote_overflow: self.remote_overflow.snapshot(),
            macs,
            neighbors: self.neighbors.snapshot(now),
            drops: self.drops.snapshot(),
        }
    }
}

impl VniEntry {
    fn new(vlan: u16, remotes: impl IntoIterator<Item = IpAddr>) -> Self {
        VniEntry {
            vlan,
            remotes: remotes.into_iter().collect(),
            bgp_remotes: Vec::new(),
            learning: true,
            proxy: false,
            proxy_counters: ProxyCounters::default(),
            traffic: Traffic::default(),
            drops: Drops::default(),
        }
    }
}

fn fmt_mac(b: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5]
    )
}

/// What the proxy answers for an address ([`Vtep::proxy_target`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyTarget {
    pub known: Known,
    /// The remote VTEP the address's MAC is behind.
    pub remote: IpAddr,
}

/// Packet and byte counts in both directions. `rx` is what came out of the tunnel, `tx` what
/// went into it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// One VNI in a [`VtepSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VniSnapshot {
    pub vni: Vni,
    pub vlan: u16,
    pub remotes: Vec<IpAddr>,
    /// Those of `remotes` that BGP EVPN put there (type-3 routes).
    #[serde(default)]
    pub bgp_remotes: Vec<IpAddr>,
    /// Whether the VNI's ARP/ND proxy is on.
    #[serde(default)]
    pub proxy: bool,
    /// ARP requests the proxy answered (they did not cross the tunnel).
    #[serde(default)]
    pub proxy_arp_replies: u64,
    /// IPv6 neighbour solicitations the proxy answered.
    #[serde(default)]
    pub proxy_nd_replies: u64,
    /// Addresses the proxy did not learn because its table was full.
    #[serde(default)]
    pub proxy_table_full: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// (reason label, count), in [`TunnelDrop::ALL`] order.
    pub drops: Vec<(String, u64)>,
}

/// One remote VTEP in a [`VtepSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSnapshot {
    pub ip: IpAddr,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Seen but in no flood list.
    pub learned: bool,
}

/// One remote MAC in a [`VtepSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VtepMacEntry {
    pub vni: Vni,
    pub mac: String,
    pub remote: IpAddr,
    /// Configured by the operator (`origin` is `static`); kept for older readers.
    #[serde(rename = "static")]
    pub is_static: bool,
    /// Where the entry came from: data-plane learning, configuration or BGP EVPN.
    #[serde(default)]
    pub origin: MacOrigin,
    /// Seconds since the address was last seen (0 for pinned entries).
    pub age: u64,
}

/// Counters of a tunnel's UDP sockets (see [`VtepSnapshot::io`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpIoSnapshot {
    pub tx_syscalls: u64,
    pub tx_datagrams: u64,
    pub tx_gso_datagrams: u64,
    pub rx_syscalls: u64,
    pub rx_datagrams: u64,
    pub rx_gro_datagrams: u64,
}

/// The VTEP's tables and counters at one instant, as sent over the control socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VtepSnapshot {
    /// Where it listens (and sends from).
    #[serde(default)]
    pub local_ip: Option<IpAddr>,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub underlay_mtu: u32,
    /// The MTU guests on tunnelled VLANs must use: the underlay's minus the 50 bytes of
    /// Ethernet, IPv4, UDP and VXLAN headers (larger frames are dropped as too-big; TCP
    /// super-frames are cut to fit).
    #[serde(default)]
    pub guest_mtu: u32,
    /// Whether the kernel's UDP segmentation (GSO) and coalescing (GRO) are in use (filled
    /// in by the switch, which owns the sockets).
    #[serde(default)]
    pub udp_gso: bool,
    #[serde(default)]
    pub udp_gro: bool,
    /// The tunnel's socket I/O (filled in by the switch): system calls and datagrams each
    /// way, and the datagrams the kernel's segmentation and coalescing carried.
    #[serde(default)]
    pub io: UdpIoSnapshot,
    /// Sorted by VNI.
    pub vnis: Vec<VniSnapshot>,
    /// Sorted by address.
    pub remotes: Vec<RemoteSnapshot>,
    /// Traffic of learned remotes beyond [`MAX_LEARNED_REMOTES`], summed.
    pub remote_overflow: TrafficSnapshot,
    /// Live entries, sorted by VNI then address.
    pub macs: Vec<VtepMacEntry>,
    /// The ARP/ND proxy's known addresses (live), sorted by VNI then address.
    #[serde(default)]
    pub neighbors: Vec<NeighborSnapshot>,
    /// Drops with no mapped VNI: (reason label, count), in [`TunnelDrop::ALL`] order.
    pub drops: Vec<(String, u64)>,
}

impl VtepSnapshot {
    /// A drop count by label, for `vni` or (None) the global counters.
    pub fn drop_count(&self, vni: Option<Vni>, label: &str) -> u64 {
        let drops = match vni {
            None => &self.drops,
            Some(vni) => match self.vnis.iter().find(|v| v.vni == vni) {
                Some(v) => &v.drops,
                None => return 0,
            },
        };
        drops
            .iter()
            .find(|(l, _)| l == label)
            .map_or(0, |(_, n)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const R1: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    const R2: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));
    const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    fn config() -> VtepConfig {
        VtepConfig {
            vnis: vec![
                VniConfig {
                    vni: 100,
                    vlan: 10,
                    remotes: vec![R1, R2],
                    proxy: false,
                },
                VniConfig {
                    vni: 200,
                    vlan: 20,
                    remotes: vec![],
                    proxy: false,
                },
            ],
            ..VtepConfig::new(LOCAL)
        }
    }

    /// [`config`] with the ARP/ND proxy on in the VNIs `on`.
    fn config_with_proxy(on: &[Vni]) -> VtepConfig {
        let mut cfg = config();
        for v in &mut cfg.vnis {
            v.proxy = on.contains(&v.vni);
        }
        cfg
    }

    fn remotes(v: &Vtep, vni: Vni) -> Vec<IpAddr> {
        let mut out = Vec::new();
        v.for_each_remote(vni, |ip| out.push(ip));
        out
    }

    #[test]
    fn config_parses_with_defaults_and_round_trips() {
        let cfg: VtepConfig = toml::from_str(
            r#"
            local_ip = "10.0.0.1"
            [[vnis]]
            vni = 100
            vlan = 10
            remotes = ["10.0.0.2"]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.port, 4789);
        assert_eq!(cfg.underlay_mtu, 1500);
        assert_eq!(cfg.mac_aging_secs, 300);
        assert_eq!(cfg.mac_table_size, 8192);
        assert_eq!(cfg.mac_table_size_per_vni, 4096);
        assert_eq!(cfg.unknown_vtep, UnknownVtepPolicy::Drop, "safe by default");
        assert_eq!(cfg.local_mac_move, LocalMacMove::Deny, "safe by default");
        let v = Vtep::new(cfg.clone()).unwrap();
        assert_eq!(v.config(), cfg);
        let opted_in: VtepConfig = toml::from_str(
            "local_ip = \"10.0.0.1\"\nunknown_vtep = \"learn\"\nlocal_mac_move = \"allow\"\n\
             mac_table_size_per_vni = 10",
        )
        .unwrap();
        assert_eq!(opted_in.unknown_vtep, UnknownVtepPolicy::Learn);
        assert_eq!(opted_in.local_mac_move, LocalMacMove::Allow);
        assert_eq!(opted_in.mac_table_size_per_vni, 10);
        let v = Vtep::new(opted_in.clone()).unwrap();
        assert_eq!(v.config(), opted_in);
        assert!(toml::from_str::<VtepConfig>("local_ip = \"10.0.0.1\"\nbogus = 1").is_err());
        assert!(toml::from_str::<VtepConfig>(
            "local_ip = \"10.0.0.1\"\n[[vnis]]\nvni = 1\nvlan = 2\nremote = []"
        )
        .is_err());
    }

    #[test]
    fn the_proxy_is_set_per_vni_in_its_entry_and_off_by_default() {
        let cfg: VtepConfig = toml::from_str(
            r#"
            local_ip = "10.0.0.1"
            [[vnis]]
            vni = 100
            vlan = 10
            proxy = true
            [[vnis]]
            vni = 200
            vlan = 20
            "#,
        )
        .unwrap();
        assert_eq!((cfg.vnis[0].proxy, cfg.vnis[1].proxy), (true, false));
        assert_eq!(cfg.neigh_table_size, 8192);
        assert_eq!(cfg.vnis[0].remotes, Vec::<IpAddr>::new());
        let v = Vtep::new(cfg.clone()).unwrap();
        assert_eq!(
            (v.proxy(100), v.proxy(200), v.proxy(7)),
            (Some(true), Some(false), None)
        );
        assert_eq!(v.config(), cfg);
        // Written back in the entry, and only where on.
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(text.matches("proxy = true").count(), 1, "{text}");
        assert!(!text.contains("proxy = false"), "{text}");
        assert_eq!(toml::from_str::<VtepConfig>(&text).unwrap(), cfg);
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<VtepConfig>(&json).unwrap(), cfg);
        // Unknown keys in an entry are still refused.
        assert!(toml::from_str::<VtepConfig>(
            "local_ip = \"10.0.0.1\"\n[[vnis]]\nvni = 1\nvlan = 2\nproxi = true"
        )
        .is_err());
        let mut big = config();
        big.neigh_table_size = MAX_MAC_TABLE_SIZE + 1;
        assert!(big.validate().is_err());
    }

    #[test]
    fn the_proxy_answers_only_for_addresses_behind_a_remote_vtep() {
        use crate::proxy::{Binding, NeighLearned, NeighOrigin};
        let v = Vtep::new(config_with_proxy(&[100])).unwrap();
        let ip: IpAddr = "10.1.0.2".parse().unwrap();
        let bind = |mac| Binding {
            ip,
            mac,
            router: None,
        };
        // Learned only where the proxy is on.
        assert_eq!(v.learn_neighbor(200, bind(B), 0), NeighLearned::Refused);
        assert_eq!(v.learn_neighbor(999, bind(B), 0), NeighLearned::Refused);
        assert_eq!(v.learn_neighbor(100, bind(B), 0), NeighLearned::New);
        // Known, but B is not behind a remote yet: no answer.
        assert_eq!(v.proxy_target(100, ip, 0), None);
        v.learn(100, B, R2, 0);
        let t = v.proxy_target(100, ip, 0).unwrap();
        assert_eq!((t.known.mac, t.remote), (B, R2));
        assert_eq!(v.proxy_target(200, ip, 0), None, "per VNI");
        // When B's MAC entry ages out, so does the answer (even if the address is fresh).
        v.learn_neighbor(100, bind(B), 299);
        assert!(v.proxy_target(100, ip, 299).is_some());
        assert_eq!(v.proxy_target(100, ip, 300), None);
        // Answers are counted per VNI and protocol.
        v.count_proxy_reply(100, crate::proxy::Protocol::Arp);
        v.count_proxy_reply(100, crate::proxy::Protocol::Nd);
        v.count_proxy_reply(100, crate::proxy::Protocol::Nd);
        let s = v.snapshot();
        let vni = &s.vnis[0];
        assert_eq!(
            (vni.proxy, vni.proxy_arp_replies, vni.proxy_nd_replies),
            (true, 1, 2)
        );
        assert!(!s.vnis[1].proxy);
        assert_eq!(s.neighbors.len(), 1);
        assert_eq!(
            (
                s.neighbors[0].ip,
                s.neighbors[0].mac.as_str(),
                s.neighbors[0].origin
            ),
            (ip, "02:00:00:00:00:0b", NeighOrigin::Learned)
        );
        // Turning the proxy off forgets what it learned but keeps statics.
        let other: IpAddr = "2001:db8::9".parse().unwrap();
        v.add_static_neighbor(100, other, A).unwrap();
        v.set_proxy(100, false).unwrap();
        assert_eq!(v.proxy(100), Some(false));
        v.learn(100, A, R1, 300);
        assert_eq!(v.proxy_target(100, other, 300), None, "off: no answers");
        v.set_proxy(100, true).unwrap();
        let t = v.proxy_target(100, other, 300).unwrap();
        assert_eq!((t.known.mac, t.remote), (A, R1));
        assert_eq!(v.snapshot().neighbors.len(), 1, "the learned one went");
        let c = v.config();
        assert_eq!((c.vnis[0].proxy, c.vnis[1].proxy), (true, false));
        // Static entries: checked, removable, gone with their VNI.
        assert!(matches!(
            v.add_static_neighbor(100, "224.0.0.1".parse().unwrap(), A),
            Err(VtepError::Invalid { .. })
        ));
        assert!(matches!(
            v.add_static_neighbor(100, other, [1, 0, 0, 0, 0, 1]),
            Err(VtepError::Invalid { .. })
        ));
        assert_eq!(
            v.add_static_neighbor(999, other, A),
            Err(VtepError::UnknownVni(999))
        );
        assert_eq!(v.set_proxy(999, true), Err(VtepError::UnknownVni(999)));
        v.unmap(100).unwrap();
        assert_eq!(
            v.remove_static_neighbor(100, other),
            Err(VtepError::UnknownNeighbor {
                vni: 100,
                ip: other
            })
        );
        assert!(v.snapshot().neighbors.is_empty());
        v.map(100, 10).unwrap();
        assert_eq!(v.proxy(100), Some(false), "mapped again: off");
    }

    #[test]
    fn a_full_neighbor_table_is_counted_per_vni() {
        use crate::proxy::{Binding, NeighLearned};
        let v = Vtep::new(VtepConfig {
            neigh_table_size: 1,
            ..config_with_proxy(&[100, 200])
        })
        .unwrap();
        let bind = |n: u8| Binding {
            ip: IpAddr::V4(Ipv4Addr::new(10, 1, 0, n)),
            mac: [2, 0, 0, 0, 2, n],
            router: None,
        };
        assert_eq!(v.learn_neighbor(100, bind(1), 0), NeighLearned::New);
        assert_eq!(v.learn_neighbor(200, bind(2), 0), NeighLearned::TableFull);
        assert_eq!(v.learn_neighbor(200, bind(3), 0), NeighLearned::TableFull);
        let s = v.snapshot();
        assert_eq!(
            (s.vnis[0].proxy_table_full, s.vnis[1].proxy_table_full),
            (0, 2)
        );
        // Aging (mac_aging_secs) makes room.
        v.expire(300);
        assert_eq!(v.learn_neighbor(200, bind(2), 300), NeighLearned::New);
    }

    #[test]
    fn validate_names_the_field() {
        let field_of = |cfg: VtepConfig| match cfg.validate() {
            Err(VtepError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let mut c = config();
        c.vnis[1].vni = 1 << 24;
        assert_eq!(field_of(c), "vnis[1].vni");
        for bad in [0, 4095] {
            let mut c = config();
            c.vnis[0].vlan = bad;
            assert_eq!(field_of(c), "vnis[0].vlan");
        }
        let mut c = config();
        c.vnis[1].vni = 100;
        assert_eq!(field_of(c), "vnis[1].vni");
        let mut c = config();
        c.vnis[1].vlan = 10;
        assert_eq!(field_of(c), "vnis[1].vlan");
        for bad in [
            LOCAL,
            Ipv4Addr::new(239, 1, 1, 1).into(),
            Ipv4Addr::UNSPECIFIED.into(),
            R1,
        ] {
            let mut c = config();
            c.vnis[0].remotes.push(bad);
            assert_eq!(field_of(c), "vnis[0].remotes[2]", "{bad}");
        }
        let mut c = config();
        c.local_ip = Ipv4Addr::BROADCAST.into();
        assert_eq!(field_of(c), "local_ip");
        let mut c = config();
        c.underlay_mtu = 67;
        assert_eq!(field_of(c), "underlay_mtu");
        let mut c = config();
        c.mac_aging_secs = 0;
        assert_eq!(field_of(c), "mac_aging_secs");
        let mut c = config();
        c.mac_table_size_per_vni = MAX_MAC_TABLE_SIZE + 1;
        assert_eq!(field_of(c), "mac_table_size_per_vni");
        let msg = {
            let mut c = config();
            c.vnis[1].vlan = 10;
            Vtep::new(c).err().unwrap().to_string()
        };
        assert_eq!(
            msg,
            "field `vnis[1].vlan`: VLAN 10 is already mapped to VNI 100"
        );
    }

    #[test]
    fn map_and_unmap() {
        let v = Vtep::new(config()).unwrap();
        assert_eq!(v.vni_for_vlan(10), Some(100));
        assert_eq!(v.vlan_for_vni(200), Some(20));
        assert_eq!(v.vni_for_vlan(30), None);
        assert_eq!(v.mapped_vlans(), vec![10, 20]);

        v.map(300, 30).unwrap();
        v.map(300, 30).unwrap(); // idempotent
        assert_eq!(
            v.map(300, 31),
            Err(VtepError::VniInUse { vni: 300, vlan: 30 })
        );
        assert_eq!(
            v.map(301, 30),
            Err(VtepError::VlanInUse { vlan: 30, vni: 300 })
        );
        assert!(matches!(v.map(1 << 24, 40), Err(VtepError::Invalid { .. })));
        assert!(matches!(v.map(400, 4095), Err(VtepError::Invalid { .. })));
        assert_eq!(v.vni_for_vlan(30), Some(300));

        v.learn(100, A, R1, 0);
        v.add_static(100, B, R2).unwrap();
        v.unmap(100).unwrap();
        assert_eq!(v.unmap(100), Err(VtepError::UnknownVni(100)));
        assert_eq!(v.vni_for_vlan(10), None);
        assert_eq!(v.admit(100, R1), Err(TunnelDrop::UnknownVni));
        assert!(remotes(&v, 100).is_empty());
        // Its MACs went with it, and its remotes are no longer configured.
        v.map(100, 10).unwrap();
        assert_eq!(v.lookup(100, A, 0), None);
        assert_eq!(v.lookup(100, B, 0), None);
        assert!(v.snapshot().remotes.iter().all(|r| r.learned));
        assert_eq!(v.mapped_vlans(), vec![10, 20, 30]);
    }

    #[test]
    fn flood_list() {
        let v = Vtep::new(config()).unwrap();
        assert_eq!(remotes(&v, 100), vec![R1, R2]);
        assert!(remotes(&v, 200).is_empty());
        assert!(remotes(&v, 999).is_empty());
        v.add_remote(200, R1).unwrap();
        assert_eq!(
            v.add_remote(200, R1),
            Err(VtepError::RemoteExists { vni: 200, ip: R1 })
        );
        assert_eq!(v.add_remote(999, R1), Err(VtepError::UnknownVni(999)));
        assert!(matches!(
            v.add_remote(200, LOCAL),
            Err(VtepError::Invalid { .. })
        ));
        assert!(matches!(
            v.add_remote(200, Ipv4Addr::new(224, 0, 0, 1).into()),
            Err(VtepError::Invalid { .. })
        ));
        v.remove_remote(100, R1).unwrap();
        assert_eq!(
            v.remove_remote(100, R1),
            Err(VtepError::UnknownRemote { vni: 100, ip: R1 })
        );
        assert_eq!(remotes(&v, 100), vec![R2]);
        assert_eq!(remotes(&v, 200), vec![R1]);
        // The callback may call back into the Vtep (no lock is held).
        v.for_each_remote(100, |ip| {
            v.count_tx(100, ip, 60);
            v.add_remote(200, ip).unwrap();
        });
        assert_eq!(remotes(&v, 200), vec![R1, R2]);
        let cfg = v.config();
        assert_eq!(cfg.vnis[0].remotes, vec![R2]);
        assert_eq!(cfg.vnis[1].remotes, vec![R1, R2]);
    }

    #[test]
    fn admit_follows_the_policy() {
        let v = Vtep::new(VtepConfig {
            unknown_vtep: UnknownVtepPolicy::Learn,
            ..config()
        })
        .unwrap();
        assert_eq!(v.admit(100, R1), Ok(10));
        assert_eq!(v.admit(100, STRANGER), Ok(10));
        assert_eq!(v.admit(200, R1), Ok(20), "learn admits other VNIs' remotes");
        assert_eq!(v.admit(7, R1), Err(TunnelDrop::UnknownVni));
        for spoofed in [
            Ipv4Addr::UNSPECIFIED.into(),
            Ipv4Addr::BROADCAST.into(),
            LOCAL,
        ] {
            assert_eq!(v.admit(100, spoofed), Err(TunnelDrop::UnknownVtep));
        }

        // The default: only the VNI's own flood list.
        let v = Vtep::new(config()).unwrap();
        assert_eq!(v.admit(100, R1), Ok(10));
        assert_eq!(v.admit(100, STRANGER), Err(TunnelDrop::UnknownVtep));
        assert_eq!(
            v.admit(200, R1),
            Err(TunnelDrop::UnknownVtep),
            "a remote of VNI 100 is not trusted in VNI 200"
        );
        v.add_remote(200, R1).unwrap();
        assert_eq!(v.admit(200, R1), Ok(20));
        v.remove_remote(100, R1).unwrap();
        assert_eq!(v.admit(100, R1), Err(TunnelDrop::UnknownVtep));
    }

    #[test]
    fn each_vni_has_its_own_mac_table() {
        let v = Vtep::new(config()).unwrap();
        // The same address in two VNIs: two unrelated entries.
        assert_eq!(v.learn(100, A, R1, 0), Learned::New);
        assert_eq!(v.learn(200, A, R2, 0), Learned::New, "not a move");
        assert_eq!(v.lookup(100, A, 0), Some(R1));
        assert_eq!(v.lookup(200, A, 0), Some(R2));
        // A move in one leaves the other alone.
        assert_eq!(v.learn(200, A, R1, 1), Learned::Moved);
        assert_eq!(v.lookup(100, A, 1), Some(R1));
        // Aging is per entry: refreshing A in 100 does not keep A in 200 alive.
        v.learn(100, A, R1, 250);
        v.expire(301);
        assert_eq!(v.lookup(100, A, 301), Some(R1));
        assert_eq!(v.lookup(200, A, 301), None);
        // A static entry in one VNI does not pin the address in another.
        v.add_static(200, B, R2).unwrap();
        assert_eq!(v.learn(100, B, R1, 302), Learned::New);
        assert_eq!(v.lookup(100, B, 302), Some(R1));
        // Unmapping one VNI flushes its table only.
        v.unmap(200).unwrap();
        assert_eq!(v.lookup(100, A, 302), Some(R1));
        assert_eq!(v.lookup(100, B, 302), Some(R1));
        assert_eq!(v.learn(200, A, R1, 302), Learned::Refused);
    }

    #[test]
    fn one_vni_cannot_fill_the_mac_table_for_all() {
        let v = Vtep::new(VtepConfig {
            mac_table_size: 5,
            mac_table_size_per_vni: 2,
            mac_aging_secs: 10,
            ..config()
        })
        .unwrap();
        let m = |n: u8| [2, 0, 0, 0, 1, n];
        assert_eq!(v.learn(100, m(1), R1, 0), Learned::New);
        assert_eq!(v.learn(100, m(2), R1, 0), Learned::New);
        for n in 3..10 {
            assert_eq!(
                v.learn(100, m(n), R1, 0),
                Learned::TableFull,
                "VNI 100 is full"
            );
        }
        // VNI 200 still has its share.
        assert_eq!(v.learn(200, m(1), R2, 0), Learned::New);
        assert_eq!(v.learn(200, m(2), R2, 0), Learned::New);
        assert_eq!(v.learn(200, m(3), R2, 0), Learned::TableFull);
        // Statics do not use up the share, and replacing a learned entry frees its place.
        v.add_static(100, m(1), R2).unwrap();
        assert_eq!(v.learn(100, m(3), R1, 1), Learned::New);
        // Aging frees a VNI's share; so does unmapping it (and mapping it again starts at 0).
        assert_eq!(v.learn(100, m(4), R1, 11), Learned::New);
        v.unmap(200).unwrap();
        v.map(200, 20).unwrap();
        assert_eq!(v.learn(200, m(5), R2, 12), Learned::New);
        assert_eq!(v.learn(200, m(6), R2, 12), Learned::New);
        assert_eq!(v.learn(200, m(7), R2, 12), Learned::TableFull);
    }

    #[test]
    fn learning_and_aging() {
        let v = Vtep::new(config()).unwrap();
        assert_eq!(v.learn(100, A, R1, 0), Learned::New);
        assert_eq!(v.learn(100, A, R1, 1), Learned::Refreshed);
        assert_eq!(v.lookup(100, A, 1), Some(R1));
        assert_eq!(v.lookup(200, A, 1), None, "learning is per VNI");
        assert_eq!(v.learn(100, A, R2, 2), Learned::Moved);
        assert_eq!(v.lookup(100, A, 2), Some(R2));
        assert_eq!(v.learn(100, [1, 0, 0, 0, 0, 1], R1, 2), Learned::Refused);
        assert_eq!(v.learn(999, B, R1, 2), Learned::Refused);
        assert_eq!(
            v.learn(100, B, Ipv4Addr::BROADCAST.into(), 2),
            Learned::Refused
        );

        v.learn(100, B, R1, 200);
        assert_eq!(v.lookup(100, A, 301), Some(R2));
        assert_eq!(v.lookup(100, A, 302), None);
        assert_eq!(v.expire(302), 1);
        let snap = v.snapshot();
        assert_eq!(snap.macs.len(), 1);
        assert_eq!(snap.macs[0].mac, "02:00:00:00:00:0b");
        assert_eq!(snap.macs[0].remote, R1);
    }

    #[test]
    fn an_ipv6_underlay_learns_moves_and_refuses_the_other_family() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (local, r1, r2) = (ip("2001:db8::1"), ip("2001:db8::2"), ip("2001:db8::3"));
        let v = Vtep::new(VtepConfig {
            vnis: vec![VniConfig {
                vni: 100,
                vlan: 10,
                remotes: vec![r1, r2],
                proxy: false,
            }],
            ..VtepConfig::new(local)
        })
        .unwrap();
        assert_eq!(
            v.max_inner_frame(),
            1500 - 56,
            "IPv6's outer header is 56 bytes"
        );
        assert_eq!(v.admit(100, r1), Ok(10));
        assert_eq!(v.learn(100, A, r1, 0), Learned::New);
        assert_eq!(v.lookup(100, A, 0), Some(r1));
        assert_eq!(v.learn(100, A, r2, 1), Learned::Moved);
        assert_eq!(v.lookup(100, A, 1), Some(r2), "the whole address moves");
        assert_eq!(v.snapshot().macs[0].remote, r2);
        // One family per underlay; no multicast, no IPv4-mapped disguise.
        for bad in ["10.0.0.2", "ff02::1", "::ffff:10.0.0.2", "::", "fe80::2"] {
            assert!(v.add_remote(100, ip(bad)).is_err(), "{bad} refused");
            assert_eq!(
                v.learn(100, B, ip(bad), 2),
                Learned::Refused,
                "{bad} not learned"
            );
        }
        assert!(VtepConfig {
            vnis: vec![VniConfig {
                vni: 1,
                vlan: 1,
                remotes: vec![ip("10.0.0.2")],
                proxy: false,
            }],
            ..VtepConfig::new(local)
        }
        .validate()
        .is_err());
    }

    #[test]
    fn statics_beat_learning() {
        let v = Vtep::new(config()).unwrap();
        v.learn(100, A, R1, 0);
        v.add_static(100, A, R2).unwrap();
        assert_eq!(v.learn(100, A, R1, 1), Learned::Static);
        assert_eq!(v.lookup(100, A, 1), Some(R2));
        assert_eq!(v.lookup(100, A, 1_000_000), Some(R2), "statics never age");
        assert_eq!(v.expire(1_000_000), 0);
        assert!(v.snapshot().macs[0].is_static);
        assert_eq!(v.add_static(999, A, R1), Err(VtepError::UnknownVni(999)));
        assert!(matches!(
            v.add_static(100, [0xff; 6], R1),
            Err(VtepError::Invalid { .. })
        ));
        assert!(matches!(
            v.add_static(100, B, LOCAL),
            Err(VtepError::Invalid { .. })
        ));
        assert_eq!(
            v.remove_static(100, B),
            Err(VtepError::UnknownStatic {
                vni: 100,
                mac: "02:00:00:00:00:0b".into()
            })
        );
        v.learn(100, B, R1, 5);
        assert!(
            v.remove_static(100, B).is_err(),
            "learned entries are not static"
        );
        v.remove_static(100, A).unwrap();
        assert_eq!(v.lookup(100, A, 5), None);
        assert_eq!(v.learn(100, A, R1, 5), Learned::New);
    }

    #[test]
    fn bgp_entries_are_pinned_and_yield_to_config() {
        let v = Vtep::new(config()).unwrap();
        v.learn(100, A, R1, 0);
        assert_eq!(v.add_bgp(100, A, R2), Ok(true), "a route replaces learning");
        assert_eq!(
            v.learn(100, A, R1, 1),
            Learned::Static,
            "learning cannot move it"
        );
        assert_eq!(v.lookup(100, A, 1_000_000), Some(R2), "routes never age");
        assert_eq!(v.expire(1_000_000), 0);
        let m = &v.snapshot().macs[0];
        assert_eq!((m.origin, m.is_static), (MacOrigin::Bgp, false));
        assert!(
            v.remove_static(100, A).is_err(),
            "a route is not a static entry"
        );
        v.add_static(100, B, R1).unwrap();
        assert_eq!(v.add_bgp(100, B, R2), Ok(false), "configuration wins");
        assert_eq!(v.lookup(100, B, 0), Some(R1));
        assert!(!v.remove_bgp(100, B), "withdrawal leaves a static entry");
        assert!(v.remove_bgp(100, A));
        assert!(!v.remove_bgp(100, A));
        assert_eq!(v.lookup(100, A, 0), None);
        assert_eq!(v.add_bgp(999, A, R1), Err(VtepError::UnknownVni(999)));
        assert!(v.add_bgp(100, [1, 0, 0, 0, 0, 1], R1).is_err(), "group MAC");
    }

    #[test]
    fn learning_can_be_turned_off_per_vni() {
        let v = Vtep::new(config()).unwrap();
        v.learn(100, A, R1, 0);
        v.add_bgp(100, B, R2).unwrap();
        v.learn(200, A, R1, 0);
        v.set_learning(100, false).unwrap();
        assert_eq!(v.lookup(100, A, 0), None, "learned entries go");
        assert_eq!(v.lookup(100, B, 0), Some(R2), "routes stay");
        assert_eq!(v.learn(100, A, R1, 1), Learned::Refused);
        assert_eq!(v.lookup(200, A, 0), Some(R1), "other VNIs keep learning");
        v.set_learning(100, true).unwrap();
        assert_eq!(v.learn(100, A, R1, 1), Learned::New);
        assert_eq!(v.set_learning(999, false), Err(VtepError::UnknownVni(999)));
    }

    #[test]
    fn bgp_flood_remotes_are_kept_apart_from_configured_ones() {
        let v = Vtep::new(config()).unwrap();
        let r3: IpAddr = "10.0.0.4".parse().unwrap();
        assert_eq!(v.add_bgp_remote(100, R1), Ok(false), "R1 is configured");
        assert_eq!(v.add_bgp_remote(100, r3), Ok(true));
        assert_eq!(remotes(&v, 100), vec![R1, R2, r3]);
        assert_eq!(v.snapshot().vnis[0].bgp_remotes, vec![r3]);
        assert_eq!(
            v.config().vnis[0].remotes,
            vec![R1, R2],
            "routes are not config"
        );
        assert!(
            !v.remove_bgp_remote(100, R1),
            "a withdrawal keeps configured remotes"
        );
        assert!(v.remove_bgp_remote(100, r3));
        assert_eq!(remotes(&v, 100), vec![R1, R2]);
        assert!(!v.remove_bgp_remote(100, r3));
    }

    #[test]
    fn bgp_entries_are_bounded_by_the_table_size() {
        let v = Vtep::new(VtepConfig {
            mac_table_size: 1,
            ..config()
        })
        .unwrap();
        assert_eq!(v.add_bgp(100, A, R1), Ok(true));
        assert!(matches!(
            v.add_bgp(100, B, R1),
            Err(VtepError::MacTableFull { max: 1, .. })
        ));
        assert_eq!(v.add_bgp(100, A, R2), Ok(true), "a move needs no room");
    }

    #[test]
    fn mac_table_limit() {
        let v = Vtep::new(VtepConfig {
            mac_table_size: 2,
            mac_aging_secs: 10,
            ..config()
        })
        .unwrap();
        let c = [2, 0, 0, 0, 0, 0xc];
        assert_eq!(v.learn(100, A, R1, 0), Learned::New);
        assert_eq!(v.learn(100, B, R1, 5), Learned::New);
        assert_eq!(v.learn(100, c, R1, 6), Learned::TableFull);
        assert_eq!(v.lookup(100, c, 6), None);
        // A ages out at 10, making room.
        assert_eq!(v.learn(100, c, R1, 10), Learned::New);
        // Statics may exceed the limit; learning still may not.
        v.add_static(200, A, R2).unwrap();
        assert_eq!(v.snapshot().macs.len(), 3);
        assert_eq!(v.learn(200, B, R1, 11), Learned::TableFull);
    }

    #[test]
    fn counters() {
        let v = Vtep::new(config()).unwrap();
        v.count_rx(100, R1, 100);
        v.count_rx(100, STRANGER, 50);
        v.count_tx(100, R2, 70);
        v.count_tx(100, R2, 30);
        v.count_drop(Some(100), TunnelDrop::TooBig);
        v.count_drop(Some(999), TunnelDrop::UnknownVni);
        v.count_drop(None, TunnelDrop::Truncated);
        let s = v.snapshot();
        let vni = &s.vnis[0];
        assert_eq!(
            (vni.rx_packets, vni.rx_bytes, vni.tx_packets, vni.tx_bytes),
            (2, 150, 2, 100)
        );
        assert_eq!(s.drop_count(Some(100), "too-big"), 1);
        assert_eq!(s.drop_count(None, "unknown-vni"), 1);
        assert_eq!(s.drop_count(None, "truncated"), 1);
        assert_eq!(vni.drops.len(), TunnelDrop::ALL.len());
        let r = |ip| s.remotes.iter().find(|r| r.ip == ip).unwrap();
        assert_eq!((r(R1).rx_bytes, r(R1).learned), (100, false));
        assert_eq!((r(R2).tx_packets, r(R2).tx_bytes), (2, 100));
        assert_eq!((r(STRANGER).rx_packets, r(STRANGER).learned), (1, true));
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"static\"") || s.macs.is_empty());
        assert_eq!(serde_json::from_str::<VtepSnapshot>(&json).unwrap(), s);
    }

    #[test]
    fn learned_remotes_are_bounded_and_swept() {
        let v = Vtep::new(config()).unwrap();
        let stranger = |i: usize| IpAddr::from(Ipv4Addr::from(0xcb00_0000 + i as u32));
        for i in 0..MAX_LEARNED_REMOTES + 10 {
            v.count_rx(100, stranger(i), 1);
        }
        // R1 and R2 (configured) plus the first MAX_LEARNED_REMOTES strangers.
        let s = v.snapshot();
        assert_eq!(s.remotes.len(), MAX_LEARNED_REMOTES + 2);
        assert_eq!(s.remote_overflow.rx_packets, 10);
        // Configured remotes are always tracked.
        v.count_tx(100, R1, 1);
        assert_eq!(v.snapshot().remote_overflow.tx_packets, 0);
        // Learned remotes nobody points to are forgotten after the aging time; one with a
        // learned MAC stays.
        v.learn(100, A, stranger(0), 0);
        v.expire(299);
        assert_eq!(v.snapshot().remotes.len(), MAX_LEARNED_REMOTES + 2);
        v.learn(100, A, stranger(0), 300);
        v.expire(300);
        let s = v.snapshot();
        assert_eq!(
            s.remotes.iter().map(|r| r.ip).collect::<Vec<_>>(),
            vec![R1, R2, stranger(0)]
        );
        v.count_rx(100, stranger(5), 1);
        assert_eq!(v.snapshot().remote_overflow.rx_packets, 10, "room again");
    }

    #[test]
    fn tables_are_shared_across_threads() {
        let v = Arc::new(Vtep::new(config()).unwrap());
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let v = Arc::clone(&v);
                std::thread::spawn(move || {
                    for i in 0..1000u16 {
                        let mac = [2, t, 0, 0, (i >> 8) as u8, i as u8];
                        v.learn(100, mac, R1, 0);
                        v.count_rx(100, R1, 1);
                        assert_eq!(v.lookup(100, mac, 0), Some(R1));
                        if t == 0 && i % 100 == 0 {
                            v.add_remote(200, Ipv4Addr::from(0x0a01_0000 + u32::from(i)).into())
                                .unwrap();
                        }
                        v.for_each_remote(200, |_| {});
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = v.snapshot();
        assert_eq!(s.macs.len(), 4000);
        assert_eq!(s.vnis[0].rx_packets, 4000);
        assert_eq!(s.vnis[1].remotes.len(), 10);
    }
}
