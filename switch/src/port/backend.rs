//! The vhost-user device side of a port for one frontend connection: features, memory
//! table, ring setup, config space. The `vhost` crate parses the messages and calls us.
//!
//! Why not `vhost-user-backend`'s handler: QEMU's virtio-net sends SET_VRING_ENABLE before
//! SET_FEATURES (it enables queue pairs as the device is realised), and both that handler and
//! its daemon loop treat the message as fatal and drop the connection. Owning the handler
//! lets the connection loop tolerate it (QEMU re-sends the enable after SET_FEATURES) and
//! gives the frame path direct access to the rings.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Error as VhostError, GpuBackend, Result as VhostResult, VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use super::memory::{self, RegionClaim};
use super::ring::RingState;
use super::{Link, Port};
use crate::virtio::dirty_log::DirtyLog;
use crate::virtio::features::{event_idx, VHOST_F_LOG_ALL, VHOST_USER_F_PROTOCOL_FEATURES};
use crate::virtio::ring::MAX_QUEUE_SIZE as RING_MAX;
use crate::virtio::{Burst, GuestMap, GuestMemory};

/// Queue indices of a virtio-net device with one queue pair.
/// Virtqueue 2k is queue pair k's receive ring, 2k + 1 its transmit ring.
fn is_rx(index: u32) -> bool {
    index.is_multiple_of(2)
}
/// Largest ring a frontend may configure (QEMU allows up to 1024).
pub const MAX_QUEUE_SIZE: usize = RING_MAX as usize;
/// Memory slots offered with CONFIGURE_MEM_SLOTS.
const MAX_MEM_SLOTS: u64 = 32;

/// `VIRTIO_NET_S_LINK_UP` in the config space's status field.
const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Where a frontend's virtual address range sits in guest-physical memory (SET_VRING_ADDR
/// carries frontend virtual addresses).
#[derive(Debug, Clone, Copy)]
pub(super) struct Mapping {
    pub(super) vmm_addr: u64,
    pub(super) size: u64,
    pub(super) gpa: u64,
}

pub struct DeviceHandler {
    pub(super) port: Arc<Port>,
    pub(super) link: Arc<Link>,
    /// Most guest memory the port may map (`max_guest_memory_gib`).
    memory_limit_gib: u64,
    pub(super) mappings: Vec<Mapping>,
    pub(super) acked_protocol_features: u64,
    /// SET_FEATURES arrived (the link's features are the frontend's, not the default 0).
    pub(super) negotiated: bool,
    /// Tells the dataplane workers that kick fds or ring states changed.
    doorbell: Arc<super::Doorbell>,
    /// The frontend's dirty log (SET_LOG_BASE), used by the rings while VHOST_F_LOG_ALL is
    /// acked: the frontend is migrating its guest.
    dirty_log: Option<Arc<DirtyLog>>,
}

fn invalid(what: &'static str) -> VhostError {
    VhostError::InvalidOperation(what)
}

/// Makes a frontend-supplied "eventfd" non-blocking. Any fd can arrive (a full pipe, a
/// socket): a blocking write to it would stall the dataplane thread that signals it while it
/// holds ring locks. With O_NONBLOCK, EAGAIN on a call fd means "already signalled".
fn nonblocking(fd: Option<File>) -> VhostResult<Option<File>> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Some(f) = fd.as_ref() {
        let flags = fcntl(f, FcntlArg::F_GETFL).map_err(|_| VhostError::InvalidParam)?;
        let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
        fcntl(f, FcntlArg::F_SETFL(flags)).map_err(|_| VhostError::InvalidParam)?;
    }
    Ok(fd)
}

impl DeviceHandler {
    /// Makes `map` the link's guest memory, and returns once no batch reads the old one:
    /// the frontend, answered, may use a new region at once (or reuse a removed one's
    /// memory), and a batch that began with the old map must not meet descriptors made for
    /// the new one (DPDK's vhost holds each queue's lock across a burst for the same reason).
    /// A batch takes microseconds; a second at most, in case a worker is stuck.
    fn publish_map(&self, map: GuestMap) {
        let old = self.link.mem.swap(Arc::new(map));
        super::wait_for_readers(&old, std::time::Duration::from_secs(1));
    }

    pub fn new(
        port: Arc<Port>,
        link: Arc<Link>,
        memory_limit_gib: u64,
        doorbell: Arc<super::Doorbell>,
    ) -> Self {
        DeviceHandler {
            port,
            link,
            memory_limit_gib,
            mappings: Vec::new(),
            acked_protocol_features: 0,
            negotiated: false,
            doorbell,
            dirty_log: None,
        }
    }

    /// Gives every ring the dirty log while the frontend asks for logging, none otherwise.
    fn apply_dirty_log(&self) -> VhostResult<()> {
        let logging = self.link.features() & VHOST_F_LOG_ALL != 0;
        let log = self.dirty_log.clone().filter(|_| logging);
        for index in self.indexes() {
            self.ring(index)?.vring.log = log.clone();
        }
        Ok(())
    }

    /// Virtqueue `index`: queue pair `index / 2`'s receive ring (even) or transmit ring (odd).
    fn ring(&self, index: u32) -> VhostResult<std::sync::MutexGuard<'_, RingState>> {
        let pair = self
            .link
            .pair(index as usize / 2)
            .ok_or(VhostError::InvalidParam)?;
        let ring = if is_rx(index) { &pair.rx } else { &pair.tx };
        Ok(ring.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every virtqueue index this port has.
    fn indexes(&self) -> std::ops::Range<u32> {
        0..(self.link.pairs().len() * 2) as u32
    }

    fn notify_rings_changed(&self) {
        self.link.refresh_up();
        self.doorbell.ring();
    }

    fn vmm_va_to_gpa(&self, va: u64) -> VhostResult<u64> {
        self.mappings
            .iter()
            .find(|m| va >= m.vmm_addr && va - m.vmm_addr < m.size)
            .map(|m| m.gpa + (va - m.vmm_addr))
            .ok_or(VhostError::InvalidParam)
    }

    /// Starts a ring once it has a kick fd and addresses: the used index continues from what
    /// the guest's used ring says (it may have run with another backend before).
    fn start_ring(&self, index: u32) -> VhostResult<()> {
        self.ring(index)?.started = true;
        self.sync_ring(index)
    }

    /// Once a started ring has its addresses: continue from the guest's used index, and
    /// (RX) ask for no kicks. A frontend may send the kick fd before the addresses.
    fn sync_ring(&self, index: u32) -> VhostResult<()> {
        let map = self.link.mem.load();
        let mut ring = self.ring(index)?;
        if !ring.started || !ring.vring.addressed {
            return Ok(());
        }
        ring.vring.sync_used_from_guest(&map);
        if is_rx(index) {
            // Frames are never queued waiting for RX buffers, so RX kicks are not needed.
            if let Ok(burst) = Burst::open(&mut ring.vring, &map) {
                burst.disable_kicks();
            }
        }
        Ok(())
    }

    /// The MAC in the config space: the port's `mac`, else none (all zero; CONFIG is then not
    /// offered, so a frontend does not ask).
    fn config_mac(&self) -> [u8; 6] {
        self.port.mac.map_or([0; 6], |mac| mac.0)
    }

    /// Maps one region the frontend announced, after the checks in `memory::map_region`;
    /// a refusal is logged with the port's name (the connection loop counts it).
    fn map_region(
        &self,
        file: File,
        region: &VhostUserMemoryRegion,
        mapped_before: u64,
    ) -> VhostResult<GuestRegionMmap<()>> {
        let claim = RegionClaim {
            gpa: region.guest_phys_addr,
            size: region.memory_size,
            file_offset: region.mmap_offset,
        };
        memory::map_region(
            file,
            claim,
            mapped_before,
            self.memory_limit_gib,
            self.link.guard_owner,
        )
        .map_err(|e| {
            log::warn!("port {}: memory region refused: {e}", self.port.name);
            VhostError::ReqHandlerError(std::io::Error::other(e.to_string()))
        })
    }
}

impl VhostUserBackendReqHandlerMut for DeviceHandler {
    fn set_owner(&mut self) -> VhostResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostResult<()> {
        self.reset_device()
    }

    fn reset_device(&mut self) -> VhostResult<()> {
        for index in self.indexes() {
            let mut ring = self.ring(index)?;
            let generation = ring.kick_generation + 1;
            *ring = RingState {
                kick_generation: generation,
                ..RingState::default()
            };
        }
        self.link.features.store(0, Ordering::Release);
        self.negotiated = false;
        self.notify_rings_changed();
        Ok(())
    }

    fn get_features(&mut self) -> VhostResult<u64> {
        Ok(self.port.offered_features)
    }

    fn set_features(&mut self, features: u64) -> VhostResult<()> {
        if features & !self.port.offered_features != 0 {
            return Err(VhostError::InvalidParam);
        }
        let was_logging = self.link.features() & VHOST_F_LOG_ALL != 0;
        self.link.features.store(features, Ordering::Release);
        self.negotiated = true;
        let logging = features & VHOST_F_LOG_ALL != 0;
        if logging != was_logging {
            log::info!(
                "port {}: migration: dirty logging {}",
                self.port.name,
                if logging { "on" } else { "off" }
            );
        }
        self.apply_dirty_log()?;
        let without_protocol = features & VHOST_USER_F_PROTOCOL_FEATURES == 0;
        for index in self.indexes() {
            let mut ring = self.ring(index)?;
            ring.vring.event_idx = event_idx(features);
            // Without protocol features there is no SET_VRING_ENABLE: rings start enabled.
            if without_protocol {
                ring.enabled = true;
            }
        }
        log::info!(
            "port {}: features negotiated {features:#x} ({})",
            self.port.name,
            crate::virtio::features::feature_names(features).join(" ")
        );
        self.notify_rings_changed();
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let mut regions = Vec::with_capacity(ctx.len());
        let mut mappings = Vec::with_capacity(ctx.len());
        for (region, file) in ctx.iter().zip(files) {
            let mapped_before = memory::total_size(regions.iter());
            regions.push(self.map_region(file, region, mapped_before)?);
            mappings.push(Mapping {
                vmm_addr: region.user_addr,
                size: region.memory_size,
                gpa: region.guest_phys_addr,
            });
        }
        let mem = GuestMemory::from_regions(regions).map_err(|_| VhostError::InvalidParam)?;
        self.publish_map(GuestMap::new(mem));
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostResult<()> {
        self.ring(index)?
            .vring
            .set_size(num)
            .map_err(|_| VhostError::InvalidParam)
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostResult<()> {
        let desc = self.vmm_va_to_gpa(descriptor)?;
        let avail = self.vmm_va_to_gpa(available)?;
        let used = self.vmm_va_to_gpa(used)?;
        self.ring(index)?
            .vring
            .set_addresses(desc, avail, used)
            .map_err(|e| {
                log::warn!("port {}: ring {index}: {e}", self.port.name);
                VhostError::InvalidParam
            })?;
        self.sync_ring(index)?;
        // A frontend may send the kick fd first: the ring may have become usable just now.
        self.notify_rings_changed();
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostResult<()> {
        self.ring(index)?.vring.set_base(base as u16);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostResult<VhostUserVringState> {
        log::debug!("port {}: ring {index} stopped", self.port.name);
        let next_avail = {
            let mut ring = self.ring(index)?;
            ring.started = false;
            ring.kick = None;
            ring.kick_generation += 1;
            ring.call = None;
            ring.vring.next_avail
        };
        self.notify_rings_changed();
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let index = u32::from(index);
        let fd = nonblocking(fd)?;
        log::debug!("port {}: ring {index} kick fd set", self.port.name);
        if fd.is_none() {
            log::warn!(
                "port {}: ring {index} has no kick fd; it is served only by pollers",
                self.port.name
            );
        }
        {
            let mut ring = self.ring(index)?;
            ring.kick = fd;
            ring.kick_generation += 1;
        }
        self.start_ring(index)?;
        self.notify_rings_changed();
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let fd = nonblocking(fd)?;
        self.ring(u32::from(index))?.call = fd;
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VhostResult<()> {
        self.ring(u32::from(index)).map(|_| ())
    }

    /// What a net backend uses: REPLY_ACK, CONFIGURE_MEM_SLOTS, MQ, LOG_SHMFD (live
    /// migration: QEMU will not migrate without it), RARP (after a migration, announcing a
    /// guest that cannot announce itself; see `connection.rs`); and CONFIG only on a port
    /// with a `mac` to hand out (QEMU's net device has no use for the backend's config space
    /// and logs a warning when it is offered; a frontend that reads the MAC from it, such as
    /// the bundled VMM, picks its own address without it).
    fn get_protocol_features(&mut self) -> VhostResult<VhostUserProtocolFeatures> {
        let mut features = VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::RARP;
        if self.port.mac.is_some() {
            features |= VhostUserProtocolFeatures::CONFIG;
        }
        Ok(features)
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostResult<()> {
        self.acked_protocol_features = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostResult<u64> {
        Ok(self.indexes().len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostResult<()> {
        log::debug!("port {}: ring {index} enable={enable}", self.port.name);
        self.ring(index)?.enabled = enable;
        self.notify_rings_changed();
        Ok(())
    }

    /// `struct virtio_net_config`: mac[6], status, max_virtqueue_pairs (MTU not offered).
    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<Vec<u8>> {
        let mut config = [0u8; 10];
        config[0..6].copy_from_slice(&self.config_mac());
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        let pairs = self.link.pairs().len() as u16;
        config[8..10].copy_from_slice(&pairs.to_le_bytes());
        let start = (offset as usize).min(config.len());
        let end = start.saturating_add(size as usize).min(config.len());
        let mut out = config[start..end].to_vec();
        // The frontend asked for `size` bytes; fields past ours read as zero.
        out.resize(size as usize, 0);
        Ok(out)
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<()> {
        Err(invalid("the virtio-net config space is read-only"))
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VhostResult<()> {
        Err(invalid("not a GPU device"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostResult<File> {
        Err(invalid("shared objects are not supported"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VhostResult<(VhostUserInflight, File)> {
        Err(invalid("inflight tracking is not supported"))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VhostResult<()> {
        Err(invalid("inflight tracking is not supported"))
    }

    fn get_max_mem_slots(&mut self) -> VhostResult<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<VhostUserMemoryRegionBase>> {
        // QEMU announces the memory once per queue pair's vhost device when it has several
        // (7.2 does, with CONFIGURE_MEM_SLOTS): a region we already map, at the same guest
        // and frontend addresses, is acknowledged and not mapped twice.
        let (gpa, size, user_addr) = (region.guest_phys_addr, region.memory_size, region.user_addr);
        if self
            .mappings
            .iter()
            .any(|m| m.gpa == gpa && m.size == size && m.vmm_addr == user_addr)
        {
            log::debug!(
                "port {}: region at {gpa:#x} announced again",
                self.port.name
            );
            return Ok(None);
        }
        if self.mappings.len() as u64 >= MAX_MEM_SLOTS {
            return Err(VhostError::InvalidParam);
        }
        let current = self.link.mem.load_full();
        let mapped_before: u64 = current.memory().iter().map(|r| r.len()).sum();
        let mapped = Arc::new(self.map_region(fd, region, mapped_before)?);
        let updated = current
            .memory()
            .insert_region(mapped)
            .map_err(|_| VhostError::InvalidParam)?;
        drop(current);
        self.publish_map(GuestMap::new(updated));
        self.mappings.push(Mapping {
            vmm_addr: region.user_addr,
            size: region.memory_size,
            gpa: region.guest_phys_addr,
        });
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VhostResult<()> {
        let (gpa, size) = (region.guest_phys_addr, region.memory_size);
        if !self.mappings.iter().any(|m| m.gpa == gpa && m.size == size) {
            // Removed already: announced by another queue pair's vhost device (see
            // `add_mem_region`).
            log::debug!("port {}: region at {gpa:#x} removed again", self.port.name);
            return Ok(());
        }
        let current = self.link.mem.load_full();
        let (updated, _) = current
            .memory()
            .remove_region(GuestAddress(region.guest_phys_addr), region.memory_size)
            .map_err(|_| VhostError::InvalidParam)?;
        drop(current);
        self.publish_map(GuestMap::new(updated));
        self.mappings
            .retain(|m| !(m.gpa == region.guest_phys_addr && m.size == region.memory_size));
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostResult<Option<File>> {
        Err(invalid("device state transfer is not supported"))
    }

    fn check_device_state(&mut self) -> VhostResult<()> {
        Err(invalid("device state transfer is not supported"))
    }

    fn get_shmem_config(&mut self) -> VhostResult<VhostUserShMemConfig> {
        Err(invalid("shared memory regions are not supported"))
    }

    /// The frontend's dirty log for a live migration (LOG_SHMFD: a shared memory fd). A log
    /// too small for the guest's memory is refused and the connection closed: logging into
    /// part of it would let the migration copy stale pages, and the frontend waits for an
    /// answer the vhost crate cannot send as a refusal. QEMU sizes its log from the same
    /// memory table, so only a broken frontend meets this.
    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> VhostResult<()> {
        let memory_end = self.link.mem.load().end();
        match DirtyLog::new(file, log.mmap_offset, log.mmap_size, memory_end) {
            Ok(dirty) => {
                log::info!(
                    "port {}: migration: dirty log of {} bytes for guest memory up to {memory_end:#x}",
                    self.port.name,
                    log.mmap_size
                );
                self.dirty_log = Some(Arc::new(dirty));
                self.apply_dirty_log()
            }
            Err(e) => {
                self.port
                    .counters
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "port {}: dirty log refused: {e}; closing the connection",
                    self.port.name
                );
                Err(VhostError::InvalidMessage)
            }
        }
    }
}
