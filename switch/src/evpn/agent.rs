//! The EVPN agent's one job, in ticks: keep the kernel's shadow FDBs (which zebra reads and
//! writes) and the switch's tables (the learning table and the VTEP) telling the same story.
//!
//! - Local MACs: the addresses the learning table logged as changed (learned, moved, gone)
//!   in a VLAN whose VNI runs EVPN are looked up, and put on or taken off the VNI's shadow
//!   tap (zebra then advertises or withdraws type-2 routes); when the log overflowed, the
//!   whole table is diffed against the tap instead.
//! - Remote MACs and flood lists: zebra's entries on a shadow vxlan device (`dst VTEP self`)
//!   are installed into the VTEP as BGP entries, the all-zero MAC as a flood-list remote
//!   (type-3). A route for an address the switch holds as local means the address moved to
//!   another host (a newer MAC-mobility sequence number won in zebra): the local entry is
//!   forgotten, and its advertisement with it.
//!
//! The kernel side is behind [`Kernel`], so the logic is tested against a mock.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use patchbay_overlay::vtep::Vtep;
use patchbay_overlay::Vni;

use super::netlink::{FdbChange, FdbEntry, NetlinkError};
use crate::mac_table::{MacTable, PortId};
use crate::wire::EthernetAddress;

/// How long a failed advertisement waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Most FDB requests in one netlink datagram.
const FDB_BATCH: usize = 128;

const ENOBUFS: i32 = libc::ENOBUFS;

/// A VNI's changes to its tap: (MACs to add, MACs to remove).
type Plan = (Vec<[u8; 6]>, Vec<[u8; 6]>);

/// The shadow devices of one VNI, as the agent needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VniDevices {
    pub vxlan: u32,
    pub tap: u32,
}

/// What the agent asks of the kernel (netlink in the switch, a mock in tests).
pub trait Kernel {
    fn add_vni(&mut self, vni: Vni) -> Result<VniDevices, NetlinkError>;
    fn remove_vni(&mut self, vni: Vni);
    /// Adds (`add`) or removes static entries on bridge port `port`; each one's outcome.
    fn fdb_update(
        &mut self,
        port: u32,
        add: bool,
        macs: &[[u8; 6]],
    ) -> Result<Vec<Result<(), std::io::Error>>, NetlinkError>;
    /// The FDB changes since the last call.
    fn fdb_changes(&mut self, out: &mut Vec<FdbChange>) -> Result<(), NetlinkError>;
    fn dump_fdb(&mut self) -> Result<Vec<FdbEntry>, NetlinkError>;
}

/// Counters, read by metrics and the control socket.
#[derive(Debug, Default)]
pub struct EvpnCounters {
    pub mac_routes_received: AtomicU64,
    pub mac_routes_withdrawn: AtomicU64,
    pub flood_routes_received: AtomicU64,
    pub flood_routes_withdrawn: AtomicU64,
    /// Routes received that could not be installed (table full, a static entry holds the
    /// address, an unmapped VNI).
    pub routes_refused: AtomicU64,
    /// Local addresses forgotten because a route placed them on another host.
    pub local_macs_moved_away: AtomicU64,
    pub local_macs_advertised: AtomicU64,
    pub local_macs_withdrawn: AtomicU64,
    /// Failed netlink requests (each also logged).
    pub netlink_errors: AtomicU64,
    /// Full re-reads of the FDB after the kernel dropped events.
    pub resyncs: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One VNI under EVPN, as it stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VniStatus {
    pub vni: Vni,
    pub vlan: u16,
    /// Local addresses on the shadow tap (advertised by zebra).
    pub local_macs: usize,
    /// Remote addresses installed from type-2 routes.
    pub remote_macs: usize,
    /// Flood-list remotes from type-3 routes.
    pub flood_remotes: Vec<IpAddr>,
}

struct VniState {
    vlan: u16,
    devices: VniDevices,
    advertised: HashSet<[u8; 6]>,
    /// Entries of `installed` in this VNI (kept, not counted per round).
    remote_macs: usize,
}

/// The switch's side: its learning table, its VTEP and the tunnel's port number.
pub struct Tables<'a> {
    pub mac_table: &'a MacTable,
    pub vtep: &'a Vtep,
    pub tunnel_port: PortId,
}

pub struct Agent<K: Kernel> {
    kernel: K,
    /// The VNIs EVPN runs for; None: every VNI the VTEP maps.
    only: Option<Vec<Vni>>,
    vnis: HashMap<Vni, VniState>,
    by_vxlan: HashMap<u32, Vni>,
    by_tap: HashMap<u32, Vni>,
    /// Remote MACs installed from routes, with their VTEP.
    installed: HashMap<(Vni, [u8; 6]), IpAddr>,
    floods: HashSet<(Vni, IpAddr)>,
    /// Routes the VTEP refused (full table, a static entry, a bad address), tried again
    /// every [`RETRY`] until installed or withdrawn.
    pending: HashMap<(Vni, [u8; 6]), IpAddr>,
    pending_floods: HashSet<(Vni, IpAddr)>,
    routes_retry_at: Option<Instant>,
    /// Whether the learning table logs its changes for us yet.
    watching: bool,
    /// Read the whole learning table at the next round (a VNI was added).
    rescan: bool,
    /// The changed keys of a round (kept to reuse the allocation).
    keys: Vec<(u16, EthernetAddress)>,
    retry_at: Option<Instant>,
    /// VNIs whose devices could not be made, with when to try again.
    failed: HashMap<Vni, Instant>,
    changes: Vec<FdbChange>,
}

impl<K: Kernel> Agent<K> {
    pub fn new(kernel: K, only: Option<Vec<Vni>>) -> Self {
        Agent {
            kernel,
            only,
            vnis: HashMap::new(),
            by_vxlan: HashMap::new(),
            by_tap: HashMap::new(),
            installed: HashMap::new(),
            floods: HashSet::new(),
            pending: HashMap::new(),
            pending_floods: HashSet::new(),
            routes_retry_at: None,
            watching: false,
            rescan: false,
            keys: Vec::new(),
            retry_at: None,
            failed: HashMap::new(),
            changes: Vec::new(),
        }
    }

    pub fn kernel(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// One round: VNIs, then routes from the kernel (and refused ones again), then local
    /// MACs.
    pub fn tick(&mut self, t: &Tables, counters: &EvpnCounters) {
        self.sync_vnis(t, counters);
        self.read_routes(t, counters);
        self.retry_routes(t, counters);
        self.advertise(t, counters);
    }

    /// Makes the set of shadowed VNIs follow the VTEP's mappings.
    fn sync_vnis(&mut self, t: &Tables, counters: &EvpnCounters) {
        let mapped: HashMap<Vni, u16> = t
            .vtep
            .config()
            .vnis
            .iter()
            .map(|v| (v.vni, v.vlan))
            .filter(|(vni, _)| self.only.as_ref().is_none_or(|o| o.contains(vni)))
            .collect();
        let gone: Vec<Vni> = self
            .vnis
            .iter()
            .filter(|(vni, s)| mapped.get(vni) != Some(&s.vlan))
            .map(|(vni, _)| *vni)
            .collect();
        for vni in gone {
            self.drop_vni(vni, t);
        }
        // A VNI unmapped and mapped again between two rounds is a fresh VTEP entry (no
        // routes, learning on): install its routes again from the FDB.
        let remapped: Vec<Vni> = self
            .vnis
            .keys()
            .filter(|vni| t.vtep.learning(**vni) == Some(true))
            .copied()
            .collect();
        for vni in &remapped {
            log::info!("evpn: VNI {vni} was mapped again; reinstalling its routes");
            let _ = t.vtep.set_learning(*vni, false);
            self.forget_routes(*vni, None);
        }
        if !remapped.is_empty() {
            self.resync(t, counters);
        }
        let now = Instant::now();
        for (vni, vlan) in mapped {
            if self.vnis.contains_key(&vni) || self.failed.get(&vni).is_some_and(|at| now < *at) {
                continue;
            }
            match self.kernel.add_vni(vni) {
                Ok(devices) => {
                    log::info!("evpn: VNI {vni} (VLAN {vlan}) shadowed for zebra");
                    // Remote MACs come from BGP only, as on a Linux EVPN host.
                    if let Err(e) = t.vtep.set_learning(vni, false) {
                        log::warn!("evpn: VNI {vni}: {e}");
                    }
                    self.failed.remove(&vni);
                    self.by_vxlan.insert(devices.vxlan, vni);
                    self.by_tap.insert(devices.tap, vni);
                    self.vnis.insert(
                        vni,
                        VniState {
                            vlan,
                            devices,
                            advertised: HashSet::new(),
                            remote_macs: 0,
                        },
                    );
                    self.rescan = true;
                }
                Err(e) => {
                    bump(&counters.netlink_errors);
                    log::warn!("evpn: VNI {vni}: {e}; trying again in 10 s");
                    self.failed.insert(vni, now + Duration::from_secs(10));
                }
            }
        }
    }

    /// Stops EVPN for `vni`: its devices go (zebra withdraws its routes) and what its
    /// routes installed is removed.
    fn drop_vni(&mut self, vni: Vni, t: &Tables) {
        if let Some(s) = self.vnis.remove(&vni) {
            self.by_vxlan.remove(&s.devices.vxlan);
            self.by_tap.remove(&s.devices.tap);
            self.kernel.remove_vni(vni);
            // Still mapped (EVPN stops, or the VNI moved VLANs): back to learning.
            let _ = t.vtep.set_learning(vni, true);
        }
        self.forget_routes(vni, Some(t.vtep));
    }

    /// Forgets what the routes of `vni` installed (and removes it from `vtep` if given).
    fn forget_routes(&mut self, vni: Vni, vtep: Option<&Vtep>) {
        let macs: Vec<[u8; 6]> = self
            .installed
            .keys()
            .filter(|(v, _)| *v == vni)
            .map(|(_, m)| *m)
            .collect();
        for mac in macs {
            self.uninstall(vni, mac);
            if let Some(v) = vtep {
                v.remove_bgp(vni, mac);
            }
        }
        let floods: Vec<IpAddr> = self
            .floods
            .iter()
            .filter(|(v, _)| *v == vni)
            .map(|(_, ip)| *ip)
            .collect();
        for ip in floods {
            self.floods.remove(&(vni, ip));
            if let Some(v) = vtep {
                v.remove_bgp_remote(vni, ip);
            }
        }
        self.pending.retain(|(v, _), _| *v != vni);
        self.pending_floods.retain(|(v, _)| *v != vni);
    }

    fn read_routes(&mut self, t: &Tables, counters: &EvpnCounters) {
        let mut changes = std::mem::take(&mut self.changes);
        changes.clear();
        let result = self.kernel.fdb_changes(&mut changes);
        for c in &changes {
            self.apply(c.added, &c.entry, t, counters);
        }
        self.changes = changes;
        if let Err(e) = result {
            // Events were lost (ENOBUFS: the kernel dropped them) or could not be read:
            // either way, what zebra installed is read again in full.
            if e.errno() == Some(ENOBUFS) {
                log::warn!("evpn: the kernel dropped FDB events; reading the FDB again");
            } else {
                bump(&counters.netlink_errors);
                log::warn!("evpn: {e}; reading the FDB again");
            }
            bump(&counters.resyncs);
            self.resync(t, counters);
        }
    }

    /// Tries the refused routes again, once every [`RETRY`].
    fn retry_routes(&mut self, t: &Tables, counters: &EvpnCounters) {
        if self.pending.is_empty() && self.pending_floods.is_empty() {
            return;
        }
        let now = Instant::now();
        if self.routes_retry_at.is_some_and(|at| now < at) {
            return;
        }
        self.routes_retry_at = Some(now + RETRY);
        let macs: Vec<((Vni, [u8; 6]), IpAddr)> =
            self.pending.iter().map(|(k, r)| (*k, *r)).collect();
        for ((vni, mac), remote) in macs {
            self.install_mac(vni, mac, remote, t, counters);
        }
        let floods: Vec<(Vni, IpAddr)> = self.pending_floods.iter().copied().collect();
        for (vni, remote) in floods {
            self.install_flood(vni, remote, t, counters);
        }
    }

    /// Re-reads zebra's entries in full and installs or removes the difference.
    pub fn resync(&mut self, t: &Tables, counters: &EvpnCounters) {
        let entries = match self.kernel.dump_fdb() {
            Ok(e) => e,
            Err(e) => {
                bump(&counters.netlink_errors);
                log::warn!("evpn: {e}");
                return;
            }
        };
        let mut macs = HashSet::new();
        let mut floods = HashSet::new();
        for e in &entries {
            if let Some((vni, remote)) = self.route_of(e) {
                if e.mac == [0; 6] {
                    floods.insert((vni, remote));
                } else {
                    macs.insert((vni, e.mac));
                }
                self.apply(true, e, t, counters);
            }
        }
        let stale: Vec<(Vni, [u8; 6])> = self
            .installed
            .keys()
            .filter(|k| !macs.contains(*k))
            .copied()
            .collect();
        for (vni, mac) in stale {
            self.uninstall(vni, mac);
            t.vtep.remove_bgp(vni, mac);
        }
        let stale: Vec<(Vni, IpAddr)> = self.floods.difference(&floods).copied().collect();
        for (vni, ip) in stale {
            self.floods.remove(&(vni, ip));
            t.vtep.remove_bgp_remote(vni, ip);
        }
        self.pending.retain(|k, _| macs.contains(k));
        self.pending_floods.retain(|k| floods.contains(k));
    }

    /// Forgets an installed remote MAC, keeping its VNI's count.
    fn uninstall(&mut self, vni: Vni, mac: [u8; 6]) {
        if self.installed.remove(&(vni, mac)).is_some() {
            if let Some(s) = self.vnis.get_mut(&vni) {
                s.remote_macs = s.remote_macs.saturating_sub(1);
            }
        }
    }

    /// The VNI and remote VTEP of a zebra entry on one of our shadow vxlan devices.
    fn route_of(&self, e: &FdbEntry) -> Option<(Vni, IpAddr)> {
        if !e.own {
            return None;
        }
        let vni = *self.by_vxlan.get(&e.ifindex)?;
        Some((vni, e.remote?))
    }

    fn apply(&mut self, added: bool, e: &FdbEntry, t: &Tables, counters: &EvpnCounters) {
        let Some((vni, remote)) = self.route_of(e) else {
            self.tap_entry_changed(added, e);
            return;
        };
        if !self.vnis.contains_key(&vni) {
            return;
        }
        if e.mac == [0; 6] {
            let key = (vni, remote);
            if added {
                if !self.floods.contains(&key) && !self.pending_floods.contains(&key) {
                    bump(&counters.flood_routes_received);
                    self.install_flood(vni, remote, t, counters);
                }
            } else {
                let pending = self.pending_floods.remove(&key);
                if self.floods.remove(&key) {
                    t.vtep.remove_bgp_remote(vni, remote);
                    log::info!("evpn: VNI {vni}: no longer floods to {remote}");
                }
                if pending || !self.floods.contains(&key) {
                    bump(&counters.flood_routes_withdrawn);
                }
            }
            return;
        }
        let key = (vni, e.mac);
        if added {
            if self.installed.get(&key) == Some(&remote) || self.pending.get(&key) == Some(&remote)
            {
                return;
            }
            bump(&counters.mac_routes_received);
            self.install_mac(vni, e.mac, remote, t, counters);
        } else if self.pending.get(&key) == Some(&remote) {
            bump(&counters.mac_routes_withdrawn);
            self.pending.remove(&key);
        } else if self.installed.get(&key) == Some(&remote) {
            bump(&counters.mac_routes_withdrawn);
            self.uninstall(vni, e.mac);
            t.vtep.remove_bgp(vni, e.mac);
        }
    }

    /// Installs a type-3 route's remote into `vni`'s flood list, or keeps it pending.
    fn install_flood(&mut self, vni: Vni, remote: IpAddr, t: &Tables, counters: &EvpnCounters) {
        match t.vtep.add_bgp_remote(vni, remote) {
            Ok(_) => {
                self.pending_floods.remove(&(vni, remote));
                self.floods.insert((vni, remote));
                log::info!("evpn: VNI {vni}: floods to {remote}");
            }
            Err(err) => {
                if self.pending_floods.insert((vni, remote)) {
                    bump(&counters.routes_refused);
                    log::warn!(
                        "evpn: VNI {vni}: flood route to {remote} refused: {err}; trying again every second"
                    );
                }
            }
        }
    }

    /// Installs a type-2 route into the VTEP, or keeps it pending; a route for an address
    /// the switch holds as local means it moved: the local entry is forgotten.
    fn install_mac(
        &mut self,
        vni: Vni,
        mac: [u8; 6],
        remote: IpAddr,
        t: &Tables,
        counters: &EvpnCounters,
    ) {
        let Some(vlan) = self.vnis.get(&vni).map(|s| s.vlan) else {
            return;
        };
        let address = EthernetAddress(mac);
        let refused = match t.vtep.add_bgp(vni, mac, remote) {
            Ok(true) => None,
            Ok(false) => Some("a configured static entry holds it".to_string()),
            Err(err) => Some(err.to_string()),
        };
        if let Some(why) = refused {
            if self.pending.insert((vni, mac), remote) != Some(remote) {
                bump(&counters.routes_refused);
                log::warn!(
                    "evpn: VNI {vni}: route for {address} via {remote} not installed: {why}; trying again every second"
                );
            }
            return;
        }
        self.pending.remove(&(vni, mac));
        if self.installed.insert((vni, mac), remote).is_none() {
            if let Some(s) = self.vnis.get_mut(&vni) {
                s.remote_macs += 1;
            }
        }
        let now = t.mac_table.now();
        let local = t
            .mac_table
            .lookup(vlan, address, now)
            .is_some_and(|p| p != t.tunnel_port);
        if local && t.mac_table.forget(vlan, address) {
            bump(&counters.local_macs_moved_away);
            log::info!("evpn: VNI {vni}: {address} moved to {remote}");
        }
    }

    /// An entry of one of our taps went away without us (zebra or the kernel removed it):
    /// it is no longer advertised, and the next round puts it back if it is still local.
    fn tap_entry_changed(&mut self, added: bool, e: &FdbEntry) {
        if added || e.own {
            return;
        }
        let Some(vni) = self.by_tap.get(&e.ifindex) else {
            return;
        };
        if let Some(s) = self.vnis.get_mut(vni) {
            if s.advertised.remove(&e.mac) {
                self.rescan = true;
            }
        }
    }

    /// Puts the local MACs of each EVPN VNI on its shadow tap and takes off those that are
    /// no longer local: for the addresses the learning table logged as changed, or, when
    /// the log overflowed (or after a failure or a new VNI), for the whole table.
    fn advertise(&mut self, t: &Tables, counters: &EvpnCounters) {
        if !self.watching {
            t.mac_table.watch();
            self.watching = true;
        }
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        let complete = t.mac_table.drain_changes(&mut keys);
        let due = self.retry_at.is_some_and(|at| Instant::now() >= at);
        let rescan = !complete || due || std::mem::take(&mut self.rescan);
        if !rescan && keys.is_empty() {
            self.keys = keys;
            return;
        }
        let by_vlan: HashMap<u16, Vni> = self.vnis.iter().map(|(v, s)| (s.vlan, *v)).collect();
        let now = t.mac_table.now();
        let mut plan: HashMap<Vni, Plan> = HashMap::new();
        if rescan {
            let mut want: HashMap<Vni, HashSet<[u8; 6]>> =
                self.vnis.keys().map(|v| (*v, HashSet::new())).collect();
            // Copied out first, so the table's lock is held only for the copy.
            let mut live = Vec::new();
            t.mac_table.for_each_live(now, |vlan, mac, port| {
                if port != t.tunnel_port && by_vlan.contains_key(&vlan) {
                    live.push((vlan, mac.0));
                }
            });
            for (vlan, mac) in live {
                if let Some(set) = by_vlan.get(&vlan).and_then(|v| want.get_mut(v)) {
                    set.insert(mac);
                }
            }
            for (vni, wanted) in want {
                let Some(s) = self.vnis.get(&vni) else {
                    continue;
                };
                let add = wanted.difference(&s.advertised).copied().collect();
                let del = s.advertised.difference(&wanted).copied().collect();
                plan.insert(vni, (add, del));
            }
        } else {
            for (vlan, mac) in keys.iter().copied() {
                let Some((vni, s)) = by_vlan
                    .get(&vlan)
                    .and_then(|v| Some((*v, self.vnis.get(v)?)))
                else {
                    continue;
                };
                let local = t
                    .mac_table
                    .lookup(vlan, mac, now)
                    .is_some_and(|p| p != t.tunnel_port);
                let (add, del) = plan.entry(vni).or_default();
                if local && !s.advertised.contains(&mac.0) && !add.contains(&mac.0) {
                    add.push(mac.0);
                } else if !local && s.advertised.contains(&mac.0) && !del.contains(&mac.0) {
                    del.push(mac.0);
                }
            }
        }
        self.keys = keys;
        let mut ok = true;
        for (vni, (add, del)) in plan {
            ok &= self.apply_plan(vni, add, del, counters);
        }
        // A failure is retried by a full rescan; only a successful one clears it.
        if !ok {
            self.retry_at = Some(Instant::now() + RETRY);
        } else if rescan {
            self.retry_at = None;
        }
    }

    /// Adds and removes static entries on `vni`'s tap; false if any failed (logged).
    fn apply_plan(
        &mut self,
        vni: Vni,
        add: Vec<[u8; 6]>,
        del: Vec<[u8; 6]>,
        counters: &EvpnCounters,
    ) -> bool {
        let Some(s) = self.vnis.get_mut(&vni) else {
            return true;
        };
        let mut ok = true;
        for (is_add, macs) in [(false, del), (true, add)] {
            for chunk in macs.chunks(FDB_BATCH) {
                let results = match self.kernel.fdb_update(s.devices.tap, is_add, chunk) {
                    Ok(r) => r,
                    Err(e) => {
                        bump(&counters.netlink_errors);
                        log::warn!("evpn: VNI {vni}: {e}");
                        ok = false;
                        continue;
                    }
                };
                for (mac, r) in chunk.iter().zip(results) {
                    match r {
                        Ok(()) => {}
                        // Already gone (zebra replaced it with a remote entry).
                        Err(e) if !is_add && e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => {
                            bump(&counters.netlink_errors);
                            log::warn!(
                                "evpn: VNI {vni}: cannot {} {}: {e}",
                                if is_add { "advertise" } else { "withdraw" },
                                EthernetAddress(*mac)
                            );
                            ok = false;
                            continue;
                        }
                    }
                    if is_add {
                        s.advertised.insert(*mac);
                        bump(&counters.local_macs_advertised);
                    } else {
                        s.advertised.remove(mac);
                        bump(&counters.local_macs_withdrawn);
                    }
                }
            }
        }
        ok
    }

    /// Each VNI's state, sorted by VNI.
    pub fn status(&self) -> Vec<VniStatus> {
        let mut out: Vec<VniStatus> = self
            .vnis
            .iter()
            .map(|(vni, s)| {
                let mut flood_remotes: Vec<IpAddr> = self
                    .floods
                    .iter()
                    .filter(|(v, _)| v == vni)
                    .map(|(_, ip)| *ip)
                    .collect();
                flood_remotes.sort();
                VniStatus {
                    vni: *vni,
                    vlan: s.vlan,
                    local_macs: s.advertised.len(),
                    remote_macs: s.remote_macs,
                    flood_remotes,
                }
            })
            .collect();
        out.sort_by_key(|s| s.vni);
        out
    }

    /// Removes every VNI's devices (zebra withdraws everything) and what routes installed.
    pub fn stop(&mut self, t: &Tables) {
        let vnis: Vec<Vni> = self.vnis.keys().copied().collect();
        for vni in vnis {
            self.drop_vni(vni, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchbay_overlay::vtep::{MacOrigin, VniConfig, VtepConfig};

    const LOCAL: &str = "198.51.100.1";
    const R2: &str = "198.51.100.2";
    const R3: &str = "198.51.100.3";
    const TUNNEL: PortId = 1;
    const GUEST: PortId = 2;
    const M1: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const M2: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The kernel as the agent sees it: devices by VNI (vxlan = 100 + VNI, tap = 200 + VNI),
    /// static entries per tap, and FDB events the test queues.
    #[derive(Default)]
    struct MockKernel {
        vnis: Vec<Vni>,
        taps: HashMap<u32, HashSet<[u8; 6]>>,
        events: Vec<FdbChange>,
        fdb: Vec<FdbEntry>,
        fail_adds: bool,
        enobufs: bool,
    }

    impl Kernel for MockKernel {
        fn add_vni(&mut self, vni: Vni) -> Result<VniDevices, NetlinkError> {
            self.vnis.push(vni);
            Ok(VniDevices {
                vxlan: 100 + vni,
                tap: 200 + vni,
            })
        }
        fn remove_vni(&mut self, vni: Vni) {
            self.vnis.retain(|v| *v != vni);
            self.taps.remove(&(200 + vni));
        }
        fn fdb_update(
            &mut self,
            port: u32,
            add: bool,
            macs: &[[u8; 6]],
        ) -> Result<Vec<Result<(), std::io::Error>>, NetlinkError> {
            let tap = self.taps.entry(port).or_default();
            Ok(macs
                .iter()
                .map(|m| {
                    if add && self.fail_adds {
                        return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
                    }
                    if add {
                        tap.insert(*m);
                        Ok(())
                    } else if tap.remove(m) {
                        Ok(())
                    } else {
                        Err(std::io::Error::from_raw_os_error(libc::ENOENT))
                    }
                })
                .collect())
        }
        fn fdb_changes(&mut self, out: &mut Vec<FdbChange>) -> Result<(), NetlinkError> {
            out.append(&mut self.events);
            if std::mem::take(&mut self.enobufs) {
                return Err(NetlinkError::Request {
                    what: "fdb events".into(),
                    source: std::io::Error::from_raw_os_error(ENOBUFS),
                });
            }
            Ok(())
        }
        fn dump_fdb(&mut self) -> Result<Vec<FdbEntry>, NetlinkError> {
            Ok(self.fdb.clone())
        }
    }

    fn route(vni: Vni, mac: [u8; 6], remote: &str) -> FdbEntry {
        FdbEntry {
            ifindex: 100 + vni,
            mac,
            remote: Some(ip(remote)),
            own: true,
        }
    }

    struct World {
        mac_table: MacTable,
        vtep: Vtep,
        counters: EvpnCounters,
        agent: Agent<MockKernel>,
    }

    impl World {
        fn new(only: Option<Vec<Vni>>) -> World {
            let vtep = Vtep::new(VtepConfig {
                vnis: vec![
                    VniConfig {
                        vni: 100,
                        vlan: 10,
                        remotes: vec![],
                        proxy: false,
                    },
                    VniConfig {
                        vni: 200,
                        vlan: 20,
                        remotes: vec![],
                        proxy: false,
                    },
                ],
                ..VtepConfig::new(ip(LOCAL))
            })
            .unwrap();
            World {
                mac_table: MacTable::new(64, Duration::from_secs(300)),
                vtep,
                counters: EvpnCounters::default(),
                agent: Agent::new(MockKernel::default(), only),
            }
        }

        /// Running, with a MAC route and a flood route from R2 installed in VNI 100.
        fn with_a_route() -> World {
            let mut w = World::new(None);
            w.tick();
            w.event(true, route(100, M1, R2));
            w.event(true, route(100, [0; 6], R2));
            w.tick();
            w
        }

        fn tick(&mut self) {
            let t = Tables {
                mac_table: &self.mac_table,
                vtep: &self.vtep,
                tunnel_port: TUNNEL,
            };
            self.agent.tick(&t, &self.counters);
        }

        fn event(&mut self, added: bool, entry: FdbEntry) {
            self.agent.kernel().events.push(FdbChange { added, entry });
        }

        fn on_tap(&mut self, vni: Vni) -> HashSet<[u8; 6]> {
            self.agent
                .kernel()
                .taps
                .get(&(200 + vni))
                .cloned()
                .unwrap_or_default()
        }

        fn learn(&self, vlan: u16, mac: [u8; 6], port: PortId) {
            let now = self.mac_table.now();
            self.mac_table
                .learn(vlan, EthernetAddress(mac), port, now, 64);
        }
    }

    #[test]
    fn local_macs_are_advertised_per_vni_and_withdrawn() {
        let mut w = World::new(None);
        w.tick();
        assert_eq!(
            w.agent.kernel().vnis.len(),
            2,
            "every mapped VNI is shadowed"
        );
        w.learn(10, M1, GUEST);
        w.learn(20, M2, GUEST);
        w.learn(10, M2, TUNNEL);
        w.learn(30, [2, 0, 0, 0, 0, 3], GUEST);
        w.tick();
        assert_eq!(
            w.on_tap(100),
            HashSet::from([M1]),
            "tunnel and unmapped VLANs are not local"
        );
        assert_eq!(w.on_tap(200), HashSet::from([M2]));
        w.mac_table.flush_port(GUEST);
        w.tick();
        assert!(w.on_tap(100).is_empty() && w.on_tap(200).is_empty());
        assert_eq!(w.counters.local_macs_withdrawn.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn evpn_vnis_learn_remote_macs_from_bgp_only() {
        let mut w = World::new(Some(vec![100]));
        w.tick();
        use patchbay_overlay::vtep::Learned;
        assert_eq!(w.vtep.learn(100, M1, ip(R2), 0), Learned::Refused);
        assert_eq!(w.vtep.learn(200, M1, ip(R2), 0), Learned::New);
        let t = Tables {
            mac_table: &w.mac_table,
            vtep: &w.vtep,
            tunnel_port: TUNNEL,
        };
        w.agent.stop(&t);
        assert_eq!(
            w.vtep.learn(100, M1, ip(R2), 0),
            Learned::New,
            "stopped: learning again"
        );
    }

    #[test]
    fn only_the_listed_vnis_run_evpn() {
        let mut w = World::new(Some(vec![200]));
        w.tick();
        assert_eq!(w.agent.kernel().vnis, vec![200]);
        w.learn(10, M1, GUEST);
        w.tick();
        assert!(w.on_tap(100).is_empty());
    }

    #[test]
    fn routes_install_remote_macs_and_flood_lists() {
        let mut w = World::new(None);
        w.tick();
        w.event(true, route(100, [0; 6], R2));
        w.event(true, route(100, M1, R2));
        // Not routes: a bridge-table copy, an entry on an unknown device, one without a VTEP.
        w.event(
            true,
            FdbEntry {
                own: false,
                ..route(100, M2, R2)
            },
        );
        w.event(true, route(999, M2, R2));
        w.event(
            true,
            FdbEntry {
                remote: None,
                ..route(100, M2, R2)
            },
        );
        w.tick();
        let s = w.vtep.snapshot();
        assert_eq!(s.vnis[0].bgp_remotes, vec![ip(R2)]);
        assert_eq!(s.macs.len(), 1);
        assert_eq!(
            (s.macs[0].origin, s.macs[0].remote),
            (MacOrigin::Bgp, ip(R2))
        );
        // The MAC moves to another host, then its route is withdrawn.
        w.event(true, route(100, M1, R3));
        w.tick();
        assert_eq!(w.vtep.lookup(100, M1, 0), Some(ip(R3)));
        w.event(false, route(100, M1, R2));
        w.tick();
        assert_eq!(
            w.vtep.lookup(100, M1, 0),
            Some(ip(R3)),
            "a stale withdrawal"
        );
        w.event(false, route(100, M1, R3));
        w.event(false, route(100, [0; 6], R2));
        w.tick();
        assert_eq!(w.vtep.lookup(100, M1, 0), None);
        assert!(w.vtep.snapshot().vnis[0].remotes.is_empty());
        assert_eq!(w.counters.mac_routes_received.load(Ordering::Relaxed), 2);
        assert_eq!(w.counters.mac_routes_withdrawn.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_route_for_a_local_mac_means_it_moved_away() {
        let mut w = World::new(None);
        w.tick();
        w.learn(10, M1, GUEST);
        w.tick();
        assert_eq!(w.on_tap(100), HashSet::from([M1]));
        // zebra replaced our entry with the remote one (a newer sequence number won).
        w.agent.kernel().taps.clear();
        w.event(true, route(100, M1, R2));
        w.tick();
        let now = w.mac_table.now();
        assert_eq!(w.mac_table.lookup(10, EthernetAddress(M1), now), None);
        assert_eq!(w.vtep.lookup(100, M1, 0), Some(ip(R2)));
        assert_eq!(w.counters.local_macs_moved_away.load(Ordering::Relaxed), 1);
        assert_eq!(
            w.counters.netlink_errors.load(Ordering::Relaxed),
            0,
            "ENOENT is fine"
        );
    }

    #[test]
    fn failed_advertisements_are_retried() {
        let mut w = World::new(None);
        w.tick();
        w.agent.kernel().fail_adds = true;
        w.learn(10, M1, GUEST);
        w.tick();
        assert!(w.on_tap(100).is_empty());
        assert_eq!(w.counters.netlink_errors.load(Ordering::Relaxed), 1);
        w.agent.kernel().fail_adds = false;
        // A later round that succeeds does not cancel the retry.
        w.learn(20, M2, GUEST);
        w.tick();
        assert_eq!(w.on_tap(200), HashSet::from([M2]));
        assert!(w.on_tap(100).is_empty());
        assert!(
            w.agent.retry_at.is_some(),
            "the failed address is still due"
        );
        // The retry's time comes: the whole table is read again and M1 goes on.
        w.agent.retry_at = Some(Instant::now());
        w.tick();
        assert_eq!(w.on_tap(100), HashSet::from([M1]));
        assert_eq!(w.agent.retry_at, None);
    }

    #[test]
    fn refused_routes_are_installed_when_they_can_be() {
        let mut w = World::new(None);
        w.tick();
        w.vtep.add_static(100, M1, ip(R3)).unwrap();
        w.event(true, route(100, M1, R2));
        // A flood route naming ourselves is refused by the VTEP.
        w.event(true, route(100, [0; 6], LOCAL));
        w.tick();
        assert_eq!(
            w.vtep.lookup(100, M1, 0),
            Some(ip(R3)),
            "the static entry holds"
        );
        assert_eq!(w.counters.routes_refused.load(Ordering::Relaxed), 2);
        w.vtep.remove_static(100, M1).unwrap();
        w.agent.routes_retry_at = None; // a second passes
        w.tick();
        assert_eq!(
            w.vtep.lookup(100, M1, 0),
            Some(ip(R2)),
            "installed once it could be"
        );
        assert_eq!(w.agent.status()[0].remote_macs, 1);
        assert_eq!(
            w.counters.routes_refused.load(Ordering::Relaxed),
            2,
            "logged once"
        );
        // Withdrawing a pending route forgets it.
        w.event(false, route(100, [0; 6], LOCAL));
        w.tick();
        assert!(w.agent.pending_floods.is_empty());
    }

    #[test]
    fn an_advertisement_removed_behind_our_back_is_put_back() {
        let mut w = World::new(None);
        w.tick();
        w.learn(10, M1, GUEST);
        w.tick();
        w.agent.kernel().taps.clear();
        w.event(
            false,
            FdbEntry {
                ifindex: 200 + 100,
                mac: M1,
                remote: None,
                own: false,
            },
        );
        w.tick();
        w.tick();
        assert_eq!(w.on_tap(100), HashSet::from([M1]));
    }

    #[test]
    fn lost_events_are_recovered_from_a_dump() {
        let mut w = World::new(None);
        w.tick();
        w.event(true, route(100, M1, R2));
        w.event(true, route(100, [0; 6], R2));
        w.tick();
        // Events were lost: the kernel now has M2 behind R3 and R3 in the flood list.
        w.agent.kernel().fdb = vec![route(100, M2, R3), route(100, [0; 6], R3)];
        w.agent.kernel().enobufs = true;
        w.tick();
        assert_eq!(w.vtep.lookup(100, M1, 0), None);
        assert_eq!(w.vtep.lookup(100, M2, 0), Some(ip(R3)));
        assert_eq!(w.vtep.snapshot().vnis[0].bgp_remotes, vec![ip(R3)]);
        assert_eq!(w.counters.resyncs.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_unmapped_vni_loses_its_devices_and_routes() {
        let mut w = World::with_a_route();
        w.vtep.unmap(100).unwrap();
        w.tick();
        assert_eq!(w.agent.kernel().vnis, vec![200]);
        assert!(w.agent.status().iter().all(|s| s.vni == 200));
        w.vtep.map(100, 10).unwrap();
        w.tick();
        assert_eq!(w.vtep.lookup(100, M1, 0), None, "nothing left behind");
    }

    #[test]
    fn a_vni_mapped_again_between_two_rounds_gets_its_routes_back() {
        let mut w = World::with_a_route();
        w.vtep.unmap(100).unwrap();
        w.vtep.map(100, 10).unwrap();
        w.agent.kernel().fdb = vec![route(100, M1, R2), route(100, [0; 6], R2)];
        w.tick();
        assert_eq!(w.vtep.lookup(100, M1, 0), Some(ip(R2)));
        assert_eq!(w.vtep.snapshot().vnis[0].bgp_remotes, vec![ip(R2)]);
        assert_eq!(w.vtep.learning(100), Some(false), "still BGP's");
        assert_eq!(w.agent.status()[0].remote_macs, 1);
    }
}
