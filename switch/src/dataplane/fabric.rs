//! What the frame path reads for every batch, shared between the switch (which changes it)
//! and every dataplane thread: the port table, the learning table, the flow tables, the
//! switch-wide counters, and the tunnel's transmit side.
//!
//! The port table is read through an RCU-style pointer (arc-swap): a batch loads it once and
//! takes no lock; a change (add or remove a port) copies the table under `ports_update` and
//! publishes the copy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::{ArcSwap, Guard};

use super::{Delivery, Frame, Headers, Source, SwitchScratch};
use crate::flow::pipeline::Pipeline;
use crate::mac_table::MacTable;
use crate::port::Port;

/// Indexed by port number; slot 0 is never used (port numbers start at 1, as in OpenFlow).
pub type PortTable = Vec<Option<Arc<Port>>>;

/// Switch-wide counters.
#[derive(Debug, Default)]
pub struct SwitchCounters {
    /// Frames sent to every port of their VLAN (unknown unicast, broadcast, multicast).
    pub floods: AtomicU64,
    pub mac_learned: AtomicU64,
    pub mac_moved: AtomicU64,
    /// Addresses not learned because the table was full.
    pub mac_table_full: AtomicU64,
}

impl SwitchCounters {
    pub fn count_learned(&self) {
        self.mac_learned.fetch_add(1, Ordering::Relaxed);
    }
    pub fn count_moved(&self) {
        self.mac_moved.fetch_add(1, Ordering::Relaxed);
    }
    pub fn count_table_full(&self) {
        self.mac_table_full.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where frames for a port behind the host's kernel go (the VXLAN tunnel, an internal
/// port): the seam between the frame path and those ports' I/O, which sits above the frame
/// path (their receive sides call `switch_frames`).
pub trait HostEgress: Send + Sync {
    /// Sends `group` (deliveries to `port`): encapsulated for the tunnel, written to the
    /// device for an internal port.
    fn transmit(
        &self,
        port: &Port,
        source: &Source<'_>,
        frames: &[Frame],
        group: &[Delivery],
        headers: Headers<'_>,
    );

    /// The largest frame it carries (the tunnel: its underlay MTU minus the
    /// encapsulation): TCP super-frames are cut to fit it.
    fn max_frame(&self) -> u32;

    /// The offloads it takes in a virtio-net header, as a receiving guest's features
    /// (GUEST_CSUM, GUEST_TSO4, ...); 0 (the default): none, every frame leaves whole and
    /// checksummed, cut to `max_frame`.
    fn offloads(&self) -> u64 {
        0
    }

    /// Duplicates of what keeps the device open, for another process to take over
    /// (`--takeover`); None (the default): the other process opens its own.
    fn handover(&self) -> Option<HostDevice> {
        None
    }
}

/// An internal port's tap device, handed from one process to another: its queues' file
/// descriptors (the device lives as long as one is open, so the host's addresses and routes
/// on it survive) and whether it takes offloads.
pub struct HostDevice {
    pub queues: Vec<std::fs::File>,
    pub offloads: bool,
}

/// The receive side of a host port that the dataplane workers serve in their own loop, as
/// they serve a guest's transmit queue (an AF_XDP uplink's RX rings): no thread of the
/// port's own, no hand-over between threads per batch (OVS's PMD does the same).
pub trait HostIngress: Send + Sync {
    /// Switches one batch of what waits, as frames of `port`; how many frames came (0:
    /// nothing, or the port receives on a thread of its own just now).
    fn receive(
        &self,
        fabric: &Fabric,
        port: &Port,
        frames: &mut Vec<Frame>,
        scratch: &mut SwitchScratch,
    ) -> usize;

    /// Appends the descriptors a sleeping worker waits on (readable while frames wait);
    /// returns a generation that changes whenever they do.
    fn wait_fds(&self, out: &mut Vec<std::os::fd::RawFd>) -> u64;
}

/// The frame path's shared state.
pub struct Fabric {
    ports: ArcSwap<PortTable>,
    /// Serialises changes to the port table (readers never take it).
    ports_update: Mutex<()>,
    pub mac_table: MacTable,
    /// The flow tables (empty: the learning switch alone).
    pub flows: Pipeline,
    pub counters: SwitchCounters,
    /// Largest frame accepted from a guest.
    pub max_frame_len: u32,
    tunnel: OnceLock<Arc<dyn HostEgress>>,
    /// The internal ports' egress, indexed by port number (set while the port exists).
    host_ports: ArcSwap<Vec<Option<Arc<dyn HostEgress>>>>,
    /// The host ports whose receive side the workers serve, indexed by port number.
    host_ingress: ArcSwap<Vec<Option<Arc<dyn HostIngress>>>>,
    stopping: AtomicBool,
}

impl Fabric {
    pub fn new(mac_table: MacTable, flows: Pipeline, max_frame_len: u32) -> Fabric {
        Fabric {
            ports: ArcSwap::from_pointee(vec![None]),
            ports_update: Mutex::new(()),
            mac_table,
            flows,
            counters: SwitchCounters::default(),
            max_frame_len,
            tunnel: OnceLock::new(),
            host_ports: ArcSwap::from_pointee(Vec::new()),
            host_ingress: ArcSwap::from_pointee(Vec::new()),
            stopping: AtomicBool::new(false),
        }
    }

    /// The port table as it is now, for the length of a batch; no lock.
    pub fn ports(&self) -> Guard<Arc<PortTable>> {
        self.ports.load()
    }

    /// Changes the port table: `change` gets a copy (and may refuse by returning an error);
    /// changes are serialised, so a check and an insert made in one `change` are atomic.
    pub fn update_ports<R, E>(
        &self,
        change: impl FnOnce(&mut PortTable) -> Result<R, E>,
    ) -> Result<R, E> {
        let _serial = self.ports_update.lock().unwrap_or_else(|p| p.into_inner());
        let mut table = PortTable::clone(&self.ports.load());
        let result = change(&mut table)?;
        self.ports.store(Arc::new(table));
        Ok(result)
    }

    pub fn set_tunnel(&self, tunnel: Arc<dyn HostEgress>) {
        let _ = self.tunnel.set(tunnel);
    }

    pub fn tunnel(&self) -> Option<&Arc<dyn HostEgress>> {
        self.tunnel.get()
    }

    /// Sets (or with None clears) the receive side of host port `id` that the workers serve.
    pub fn set_host_ingress(
        &self,
        id: crate::mac_table::PortId,
        ingress: Option<Arc<dyn HostIngress>>,
    ) {
        self.set_slot(&self.host_ingress, id, ingress);
    }

    /// Sets slot `id` of a table by port number (a copy, published; changes serialised with
    /// the port table's).
    fn set_slot<T: ?Sized>(
        &self,
        table: &ArcSwap<Vec<Option<Arc<T>>>>,
        id: crate::mac_table::PortId,
        value: Option<Arc<T>>,
    ) {
        let _serial = self.ports_update.lock().unwrap_or_else(|p| p.into_inner());
        let mut copy = Vec::clone(&table.load());
        let i = usize::from(id);
        if copy.len() <= i {
            copy.resize(i + 1, None);
        }
        copy[i] = value;
        table.store(Arc::new(copy));
    }

    /// The receive side of `port` the workers serve, if it has one.
    pub fn host_ingress(&self, port: &Port) -> Option<Arc<dyn HostIngress>> {
        self.host_ingress
            .load()
            .get(usize::from(port.id))
            .cloned()
            .flatten()
    }

    /// Sets (or with None clears) the egress of host port `id`.
    pub fn set_host_egress(
        &self,
        id: crate::mac_table::PortId,
        egress: Option<Arc<dyn HostEgress>>,
    ) {
        self.set_slot(&self.host_ports, id, egress);
    }

    /// Where frames for `port` go if it is behind the host's kernel (the tunnel or an
    /// internal port with its device open); None for a guest's port.
    pub fn host_egress(&self, port: &Port) -> Option<Arc<dyn HostEgress>> {
        match port.kind {
            crate::port::PortKind::Vhost => None,
            crate::port::PortKind::Vxlan => self.tunnel.get().cloned(),
            crate::port::PortKind::Internal
            | crate::port::PortKind::Afpacket
            | crate::port::PortKind::Afxdp => self
                .host_ports
                .load()
                .get(usize::from(port.id))
                .cloned()
                .flatten(),
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }
}
