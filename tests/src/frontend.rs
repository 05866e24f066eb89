//! A userspace vhost-user *frontend* (the virtio-net driver side) for tests and benchmarks.
//!
//! [`TestPort`] plays the role QEMU and the guest driver play together: it owns memfd-backed
//! "guest memory" shared with the backend through `SET_MEM_TABLE`/`ADD_MEM_REG`, lays out two
//! split virtqueues in it (queue 0 = RX, queue 1 = TX), speaks the vhost-user control protocol
//! with the `vhost` crate's [`Frontend`], and drives the rings itself: it writes descriptors and
//! the avail ring, reads the used ring, and kicks/waits on eventfds honouring `EVENT_IDX` and the
//! ring flags.
//!
//! From the backend's point of view guest memory is untrusted, so [`TestPort::raw_tx`] and
//! [`TestPort::raw_rx`] give direct access to the descriptor table and avail ring for building
//! malformed input on purpose. Conversely, nothing the backend writes (used ring, buffer
//! contents, control replies) is trusted here: bad values surface as [`Error`]s, never panics.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::memfd::{memfd_create, MFdFlags};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

// ---------------------------------------------------------------------------------------------
// Feature bits
// ---------------------------------------------------------------------------------------------

/// `VIRTIO_NET_F_MTU`: the device reports its MTU in config space.
pub const NET_F_MTU: u64 = 1 << 3;
/// `VIRTIO_NET_F_MAC`: the device has a MAC address in config space.
pub const NET_F_MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_MRG_RXBUF`: the device may merge RX buffers (`num_buffers`).
pub const NET_F_MRG_RXBUF: u64 = 1 << 15;
/// `VIRTIO_NET_F_STATUS`: the config space has a link status field.
pub const NET_F_STATUS: u64 = 1 << 16;
/// `VIRTIO_RING_F_INDIRECT_DESC`: indirect descriptor tables.
pub const RING_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`: `used_event`/`avail_event` notification suppression.
pub const RING_EVENT_IDX: u64 = 1 << 29;
/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30): protocol feature negotiation, ring enable.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VIRTIO_F_VERSION_1`: modern (little-endian, 12-byte net header) device.
pub const VERSION_1: u64 = 1 << 32;
/// Every virtio feature this frontend knows how to drive (the default wish list).
pub const DEFAULT_FEATURES: u64 = VERSION_1
    | RING_EVENT_IDX
    | NET_F_MRG_RXBUF
    | RING_INDIRECT_DESC
    | NET_F_MAC
    | NET_F_STATUS
    | NET_F_MTU
    | VHOST_USER_F_PROTOCOL_FEATURES;

/// vhost-user protocol feature `MQ`.
pub const PROTOCOL_F_MQ: u64 = 1 << 0;
/// vhost-user protocol feature `REPLY_ACK`: every request after negotiation asks for an ack.
pub const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;
/// vhost-user protocol feature `CONFIG`: `GET_CONFIG`/`SET_CONFIG`.
pub const PROTOCOL_F_CONFIG: u64 = 1 << 9;
/// vhost-user protocol feature `CONFIGURE_MEM_SLOTS`: `ADD_MEM_REG`/`REM_MEM_REG`.
pub const PROTOCOL_F_CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
/// The protocol features wanted by default.
pub const DEFAULT_PROTOCOL_FEATURES: u64 =
    PROTOCOL_F_REPLY_ACK | PROTOCOL_F_CONFIG | PROTOCOL_F_CONFIGURE_MEM_SLOTS;

/// Descriptor flag: the chain continues at `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// Avail ring flag: the driver does not want interrupts.
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device does not want kicks.
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// Queue index of the RX queue (device → driver).
pub const RX_QUEUE: usize = 0;
/// Queue index of the TX queue (driver → device).
pub const TX_QUEUE: usize = 1;

/// The virtio-net header length implied by a negotiated feature set: 12 bytes with `VERSION_1`
/// or `MRG_RXBUF` (the `num_buffers` field is present), 10 for legacy devices.
pub fn net_header_len(features: u64) -> usize {
    if features & (VERSION_1 | NET_F_MRG_RXBUF) != 0 {
        12
    } else {
        10
    }
}

/// Split-ring arithmetic that does not need a ring (kept pure for unit tests).
pub mod ring {
    /// Bytes of a descriptor table of `n` entries.
    pub const fn desc_table_size(n: u16) -> u64 {
        16 * n as u64
    }
    /// Bytes of an avail ring of `n` entries, including `used_event`.
    pub const fn avail_ring_size(n: u16) -> u64 {
        6 + 2 * n as u64
    }
    /// Bytes of a used ring of `n` entries, including `avail_event`.
    pub const fn used_ring_size(n: u16) -> u64 {
        6 + 8 * n as u64
    }
    /// Offset of `used_event` inside the avail ring.
    pub const fn used_event_offset(n: u16) -> u64 {
        4 + 2 * n as u64
    }
    /// Offset of `avail_event` inside the used ring.
    pub const fn avail_event_offset(n: u16) -> u64 {
        4 + 8 * n as u64
    }
    /// `vring_need_event`: must the other side be notified when its index moved from `old` to
    /// `new`, given that it asked to be notified once it passes `event`?
    pub const fn need_event(event: u16, new: u16, old: u16) -> bool {
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }
    /// Ring slot of a free-running 16-bit index.
    pub const fn slot(idx: u16, n: u16) -> u16 {
        idx % n
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and configuration
// ---------------------------------------------------------------------------------------------

/// Everything that can go wrong driving a backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid frontend configuration: {0}")]
    Config(String),
    /// Could not connect to the backend's socket before the deadline.
    #[error("connecting to {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Last connect error.
        source: io::Error,
    },
    /// No backend connected to our listening socket in time.
    #[error("no backend connected to {0} in time")]
    AcceptTimeout(PathBuf),
    /// An OS-level error (eventfds, poll, memfd, sockets).
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// A vhost-user request failed (socket error, NACK, malformed reply).
    #[error("vhost-user {op}: {source}")]
    Vhost {
        /// The request that failed.
        op: &'static str,
        /// The `vhost` crate's error.
        source: vhost::Error,
    },
    /// Guest memory could not be created or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The guest memory bump allocator is exhausted.
    #[error("out of guest memory allocating {0} bytes")]
    OutOfGuestMemory(u64),
    /// An operation needs a feature that was not negotiated.
    #[error("feature not negotiated: {0}")]
    NotNegotiated(&'static str),
    /// The frame does not fit in a TX buffer.
    #[error("frame of {len} bytes (+ header) does not fit a TX buffer of {cap} bytes")]
    FrameTooLarge {
        /// Frame length.
        len: usize,
        /// Buffer capacity including the virtio-net header.
        cap: u32,
    },
    /// The TX ring stayed full until the deadline.
    #[error("TX ring full: the backend returned no descriptors in time")]
    TxRingFull,
    /// The backend moved the used index by more than the queue size.
    #[error("queue {queue}: used idx {used_idx} is {pending} entries ahead of {last_used}")]
    BadUsedIdx {
        /// Queue index.
        queue: usize,
        /// Used idx read from the ring.
        used_idx: u16,
        /// Our last consumed index.
        last_used: u16,
        /// Difference.
        pending: u16,
    },
    /// The backend wrote an invalid used element.
    #[error("queue {queue}: bad used element id {id} len {len}: {why}")]
    BadUsedElem {
        /// Queue index.
        queue: usize,
        /// Element id.
        id: u32,
        /// Element length.
        len: u32,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Used entries are pending but do not form a complete (merged) frame.
    #[error("RX: {pending} used entries pending but the frame needs {needed} (num_buffers)")]
    IncompleteFrame {
        /// Entries published by the device and not consumed.
        pending: u16,
        /// Entries the first header asks for.
        needed: u16,
    },
    /// A raw descriptor index belongs to a chain the normal driver has in flight.
    #[error("descriptor {0} is part of a chain in flight")]
    DescriptorInUse(u16),
}

impl From<vm_memory::GuestMemoryError> for Error {
    fn from(e: vm_memory::GuestMemoryError) -> Self {
        Error::Memory(e.to_string())
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::Io(e.into())
    }
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

fn vhost_err(op: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::Vhost { op, source }
}

/// How [`TestPort::send`] lays a frame out in descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxLayout {
    /// One descriptor: header and frame contiguous.
    Contiguous,
    /// Two chained descriptors: header, then frame.
    Split,
    /// Alternate between `Contiguous` and `Split` frame by frame.
    Alternate,
    /// One ring descriptor pointing at an indirect table of two (header, frame).
    Indirect,
}

/// How guest memory is announced to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemTableMode {
    /// Like QEMU: `ADD_MEM_REG` per region if `CONFIGURE_MEM_SLOTS` was negotiated, else one
    /// `SET_MEM_TABLE` (at most 8 regions).
    Auto,
    /// Always one `SET_MEM_TABLE`, even with more than 8 regions (the vhost crate allows 32;
    /// useful to test a backend's limit).
    SetMemTable,
    /// Always `ADD_MEM_REG` (needs `CONFIGURE_MEM_SLOTS`).
    AddMemReg,
}

/// Configuration of a [`TestPort`].
#[derive(Clone, Debug)]
pub struct FrontendConfig {
    /// vhost-user socket path.
    pub socket: PathBuf,
    /// Total guest memory in bytes (split evenly over `regions`).
    pub mem_size: usize,
    /// Number of guest memory regions; regions are separated by `region_gap` in guest-physical
    /// space and mapped separately, so buffers land in different regions.
    pub regions: usize,
    /// Guest-physical address of the first region.
    pub base_gpa: u64,
    /// Unmapped guest-physical gap between consecutive regions.
    pub region_gap: u64,
    /// Back all regions with one memfd at different file offsets (non-zero `mmap_offset`, as
    /// QEMU does around the PCI hole) instead of one memfd per region.
    pub single_memfd: bool,
    /// How the memory table is sent.
    pub mem_table: MemTableMode,
    /// Ring size of both queues (power of two).
    pub queue_size: u16,
    /// Size of each posted RX buffer including the virtio-net header.
    pub rx_buffer_size: u32,
    /// If not empty, every RX buffer is posted as a chain of descriptors of these sizes
    /// (a non-mergeable "big packets" guest) instead of one `rx_buffer_size` descriptor.
    pub rx_chain: Vec<u32>,
    /// Capacity of each TX buffer including the virtio-net header (largest frame + header).
    pub tx_buffer_size: u32,
    /// TX descriptor layout.
    pub tx_layout: TxLayout,
    /// Virtio features the driver wants; negotiated = wanted & offered.
    pub features: u64,
    /// vhost-user protocol features wanted; negotiated = wanted & offered.
    pub protocol_features: u64,
    /// How long [`TestPort::connect`] retries, and how long `send` waits for a full TX ring.
    pub timeout: Duration,
}

impl FrontendConfig {
    /// Defaults for a socket path: 16 MiB in one region, 256-entry rings, all features.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        FrontendConfig {
            socket: socket.into(),
            mem_size: 16 << 20,
            regions: 1,
            base_gpa: 0,
            region_gap: 1 << 20,
            single_memfd: false,
            mem_table: MemTableMode::Auto,
            queue_size: 256,
            rx_buffer_size: 2048 + 12,
            rx_chain: Vec::new(),
            tx_buffer_size: 9216 + 64,
            tx_layout: TxLayout::Contiguous,
            features: DEFAULT_FEATURES,
            protocol_features: DEFAULT_PROTOCOL_FEATURES,
            timeout: Duration::from_secs(5),
        }
    }

    /// Descriptor sizes of each posted RX chain.
    pub fn rx_sizes(&self) -> Vec<u32> {
        if self.rx_chain.is_empty() {
            vec![self.rx_buffer_size]
        } else {
            self.rx_chain.clone()
        }
    }

    /// Size of each region (page aligned) and the guest-physical base of each.
    pub fn region_layout(&self) -> Result<(u64, Vec<u64>)> {
        if self.regions == 0 || self.regions > 64 {
            return Err(Error::Config(format!("regions = {}", self.regions)));
        }
        let size = (self.mem_size / self.regions) as u64 & !0xfff;
        if size < 64 << 10 {
            return Err(Error::Config(format!(
                "{} bytes over {} regions leaves less than 64 KiB per region",
                self.mem_size, self.regions
            )));
        }
        let stride = size
            .checked_add(self.region_gap)
            .ok_or_else(|| Error::Config("region_gap overflows".into()))?;
        let mut bases = Vec::with_capacity(self.regions);
        for i in 0..self.regions as u64 {
            let base = stride
                .checked_mul(i)
                .and_then(|o| o.checked_add(self.base_gpa))
                .filter(|b| b.checked_add(size).is_some())
                .ok_or_else(|| Error::Config("guest-physical layout overflows".into()))?;
            bases.push(base);
        }
        Ok((size, bases))
    }
}

/// Counters kept by a port.
#[derive(Clone, Copy, Debug, Default)]
pub struct PortStats {
    /// Frames handed to the backend.
    pub tx_frames: u64,
    /// TX chains the backend returned.
    pub tx_used: u64,
    /// Kicks written to the TX kick eventfd.
    pub tx_kicks: u64,
    /// Frames received.
    pub rx_frames: u64,
    /// RX used entries consumed (more than frames with merged buffers).
    pub rx_used: u64,
    /// Kicks written to the RX kick eventfd.
    pub rx_kicks: u64,
    /// Wake-ups from a call eventfd.
    pub calls: u64,
}

// ---------------------------------------------------------------------------------------------
// Guest memory
// ---------------------------------------------------------------------------------------------

/// A bump allocator over the guest regions: allocations never straddle a region.
#[derive(Debug)]
struct GuestAlloc {
    /// (base gpa, size, next free offset) per region.
    regions: Vec<(u64, u64, u64)>,
    next: usize,
}

impl GuestAlloc {
    fn new(size: u64, bases: &[u64]) -> Self {
        GuestAlloc {
            regions: bases.iter().map(|&b| (b, size, 0)).collect(),
            next: 0,
        }
    }

    fn alloc_in(&mut self, region: usize, len: u64, align: u64) -> Option<u64> {
        let (base, size, cur) = self.regions.get_mut(region)?;
        let start = cur.checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(len.max(1))?;
        if end > *size {
            return None;
        }
        *cur = end;
        Some(*base + start)
    }

    /// Allocates round-robin across regions so consecutive buffers land in different regions.
    fn alloc(&mut self, len: u64, align: u64) -> Result<u64> {
        let n = self.regions.len();
        for k in 0..n {
            let r = (self.next + k) % n;
            if let Some(gpa) = self.alloc_in(r, len, align) {
                self.next = (r + 1) % n;
                return Ok(gpa);
            }
        }
        Err(Error::OutOfGuestMemory(len))
    }
}

fn build_memory(cfg: &FrontendConfig) -> Result<(GuestMemoryMmap, GuestAlloc)> {
    let (size, bases) = cfg.region_layout()?;
    let mem_err = |e: &dyn std::fmt::Display| Error::Memory(e.to_string());
    let new_memfd = |len: u64| -> Result<Arc<File>> {
        let fd = memfd_create(c"patchbay-guest", MFdFlags::MFD_CLOEXEC)?;
        let file = File::from(fd);
        file.set_len(len)?;
        Ok(Arc::new(file))
    };
    let shared = if cfg.single_memfd {
        Some(new_memfd(size * bases.len() as u64)?)
    } else {
        None
    };
    let mut regions = Vec::with_capacity(bases.len());
    for (i, &base) in bases.iter().enumerate() {
        let fo = match &shared {
            Some(f) => FileOffset::from_arc(f.clone(), i as u64 * size),
            None => FileOffset::from_arc(new_memfd(size)?, 0),
        };
        let mmap = MmapRegion::<()>::from_file(fo, size as usize).map_err(|e| mem_err(&e))?;
        let region = GuestRegionMmap::new(mmap, GuestAddress(base))
            .ok_or_else(|| Error::Memory(format!("region at {base:#x} overflows")))?;
        regions.push(region);
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| mem_err(&e))?;
    Ok((mem, GuestAlloc::new(size, &bases)))
}

// ---------------------------------------------------------------------------------------------
// One driver-side split virtqueue
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DescState {
    Free,
    Chain,
    Raw,
}

/// A chain the driver built: its descriptors and (for reading RX data) its buffers.
#[derive(Debug, Default)]
struct Chain {
    in_flight: bool,
    descs: Vec<u16>,
    segs: Vec<(u64, u32)>,
}

impl Chain {
    fn capacity(&self) -> u64 {
        self.segs.iter().map(|s| u64::from(s.1)).sum()
    }
}

/// Outcome of looking at the RX used ring.
enum RxTake {
    Frame,
    Empty,
    Incomplete(u16),
}

#[derive(Debug)]
struct Vq {
    index: usize,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    /// Next avail idx to write (shadow).
    next_avail: u16,
    /// Avail idx last made visible to the device.
    published: u16,
    last_used: u16,
    event_idx: bool,
    kick: EventFd,
    call: EventFd,
    free: Vec<u16>,
    state: Vec<DescState>,
    chains: Vec<Chain>,
    /// Backing buffer per descriptor index: (gpa, capacity).
    bufs: Vec<(u64, u32)>,
    /// Indirect table per descriptor index.
    itabs: Vec<Option<u64>>,
    in_flight: usize,
    kicks: u64,
    /// Heads published through a raw handle and not returned yet.
    raw_outstanding: Vec<u32>,
    /// (id, len) of returned raw heads not yet collected.
    raw_done: Vec<(u32, u32)>,
}

impl Vq {
    fn new(index: usize, size: u16, alloc: &mut GuestAlloc, event_idx: bool) -> Result<Self> {
        let nregions = alloc.regions.len();
        let pick = |k: usize| (2 * index + k) % nregions;
        let oom = |len| Error::OutOfGuestMemory(len);
        let dlen = ring::desc_table_size(size);
        let alen = ring::avail_ring_size(size);
        let ulen = ring::used_ring_size(size);
        // Spread the three parts over regions to exercise per-part translation.
        let desc = alloc.alloc_in(pick(0), dlen, 4096).ok_or(oom(dlen))?;
        let avail = alloc.alloc_in(pick(1), alen, 4096).ok_or(oom(alen))?;
        let used = alloc.alloc_in(pick(2), ulen, 4096).ok_or(oom(ulen))?;
        let n = usize::from(size);
        Ok(Vq {
            index,
            size,
            desc,
            avail,
            used,
            next_avail: 0,
            published: 0,
            last_used: 0,
            event_idx,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            free: (0..size).rev().collect(),
            state: vec![DescState::Free; n],
            chains: (0..n).map(|_| Chain::default()).collect(),
            bufs: vec![(0, 0); n],
            itabs: vec![None; n],
            in_flight: 0,
            kicks: 0,
            raw_outstanding: Vec::new(),
            raw_done: Vec::new(),
        })
    }

    fn config_data(&self, mem: &GuestMemoryMmap) -> Result<VringConfigData> {
        let hva = |gpa| -> Result<u64> { Ok(mem.get_host_address(GuestAddress(gpa))? as u64) };
        Ok(VringConfigData {
            queue_max_size: self.size,
            queue_size: self.size,
            flags: 0,
            desc_table_addr: hva(self.desc)?,
            used_ring_addr: hva(self.used)?,
            avail_ring_addr: hva(self.avail)?,
            log_addr: None,
        })
    }

    fn alloc_desc(&mut self) -> Option<u16> {
        let d = self.free.pop()?;
        self.state[usize::from(d)] = DescState::Chain;
        Some(d)
    }

    fn release_chain(&mut self, head: u16) {
        let chain = &mut self.chains[usize::from(head)];
        chain.in_flight = false;
        for &d in &chain.descs {
            if self.state[usize::from(d)] == DescState::Chain {
                self.state[usize::from(d)] = DescState::Free;
                self.free.push(d);
            }
        }
        chain.descs.clear();
        chain.segs.clear();
    }

    /// Backing buffer of descriptor `d` with at least `cap` bytes.
    fn buffer(&mut self, alloc: &mut GuestAlloc, d: u16, cap: u32) -> Result<u64> {
        let slot = &mut self.bufs[usize::from(d)];
        if slot.1 < cap {
            *slot = (alloc.alloc(u64::from(cap), 64)?, cap);
        }
        Ok(slot.0)
    }

    /// Writes `head` into the next avail slot (not yet visible to the device).
    fn push_avail(&mut self, mem: &GuestMemoryMmap, head: u16) -> Result<()> {
        let slot = ring::slot(self.next_avail, self.size);
        mem.write_slice(
            &head.to_le_bytes(),
            GuestAddress(self.avail + 4 + 2 * u64::from(slot)),
        )?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(())
    }

    /// Makes pushed avail entries visible and kicks if the device asked for it.
    fn publish(&mut self, mem: &GuestMemoryMmap, force_kick: bool) -> Result<()> {
        let (old, new) = (self.published, self.next_avail);
        if old != new {
            // Release: descriptor and avail-slot writes happen-before the index update.
            mem.store(new.to_le(), GuestAddress(self.avail + 2), Ordering::Release)?;
            self.published = new;
        } else if !force_kick {
            return Ok(());
        }
        // Full barrier: the idx store must be visible before we read the device's
        // suppression state (store-load ordering), or we could miss a needed kick.
        fence(Ordering::SeqCst);
        let kick = force_kick
            || if self.event_idx {
                let off = self.used + ring::avail_event_offset(self.size);
                let ev = u16::from_le(mem.load(GuestAddress(off), Ordering::Acquire)?);
                ring::need_event(ev, new, old)
            } else {
                let fl = u16::from_le(mem.load(GuestAddress(self.used), Ordering::Acquire)?);
                fl & VRING_USED_F_NO_NOTIFY == 0
            };
        if kick {
            self.kick.write(1)?;
            self.kicks += 1;
        }
        Ok(())
    }

    /// Used entries published by the device and not consumed yet.
    fn pending(&self, mem: &GuestMemoryMmap) -> Result<u16> {
        // Acquire: reading the index orders the following reads of used elements.
        let idx = u16::from_le(mem.load(GuestAddress(self.used + 2), Ordering::Acquire)?);
        let pending = idx.wrapping_sub(self.last_used);
        if pending > self.size {
            return Err(Error::BadUsedIdx {
                queue: self.index,
                used_idx: idx,
                last_used: self.last_used,
                pending,
            });
        }
        Ok(pending)
    }

    /// The used element `k` places after `last_used`.
    fn used_elem(&self, mem: &GuestMemoryMmap, k: u16) -> Result<(u32, u32)> {
        let slot = ring::slot(self.last_used.wrapping_add(k), self.size);
        let mut e = [0u8; 8];
        mem.read_slice(&mut e, GuestAddress(self.used + 4 + 8 * u64::from(slot)))?;
        let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        Ok((id, len))
    }

    fn bad(&self, id: u32, len: u32, why: &'static str) -> Error {
        Error::BadUsedElem {
            queue: self.index,
            id,
            len,
            why,
        }
    }

    /// Is `id` an outstanding normal head?
    fn normal_head(&self, id: u32) -> bool {
        id < u32::from(self.size) && self.chains[id as usize].in_flight
    }

    /// If `id` was published raw, records it as returned.
    fn take_raw(&mut self, id: u32, len: u32) -> bool {
        match self.raw_outstanding.iter().position(|&h| h == id) {
            Some(pos) => {
                self.raw_outstanding.swap_remove(pos);
                self.raw_done.push((id, len));
                if self.raw_outstanding.is_empty() {
                    // No raw chain is outstanding: descriptors it owned are free again.
                    for i in 0..self.size {
                        if self.state[usize::from(i)] == DescState::Raw {
                            self.state[usize::from(i)] = DescState::Free;
                            self.free.push(i);
                        }
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Asks for a call once `need` entries are pending, then says whether they already are.
    fn enable_notify(&mut self, mem: &GuestMemoryMmap, need: u16) -> Result<bool> {
        if self.event_idx {
            let ev = self.last_used.wrapping_add(need.max(1) - 1);
            let off = self.avail + ring::used_event_offset(self.size);
            mem.store(ev.to_le(), GuestAddress(off), Ordering::Relaxed)?;
        } else {
            mem.store(0u16, GuestAddress(self.avail), Ordering::Relaxed)?;
        }
        // The request must be visible before we re-read the used idx, or a used update
        // racing with it could go unsignalled.
        fence(Ordering::SeqCst);
        Ok(self.pending(mem)? >= need)
    }

    fn disable_notify(&mut self, mem: &GuestMemoryMmap) -> Result<()> {
        if !self.event_idx {
            mem.store(
                VRING_AVAIL_F_NO_INTERRUPT.to_le(),
                GuestAddress(self.avail),
                Ordering::Relaxed,
            )?;
        }
        // With EVENT_IDX a stale used_event only causes an occasional spurious call.
        Ok(())
    }
}

/// Writes descriptor `i` of the table at `table`.
fn write_desc(mem: &GuestMemoryMmap, table: u64, i: u16, d: RawDesc) -> Result<()> {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&d.addr.to_le_bytes());
    b[8..12].copy_from_slice(&d.len.to_le_bytes());
    b[12..14].copy_from_slice(&d.flags.to_le_bytes());
    b[14..16].copy_from_slice(&d.next.to_le_bytes());
    let at = u64::from(i)
        .checked_mul(16)
        .and_then(|o| o.checked_add(table))
        .ok_or_else(|| Error::Memory(format!("descriptor {i} of table {table:#x} overflows")))?;
    mem.write_slice(&b, GuestAddress(at))?;
    Ok(())
}

/// Waits until `fd` is readable or `timeout` passes; returns whether it became readable.
fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> Result<bool> {
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as u32;
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(n) => return Ok(n > 0),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn borrow_fd(fd: &impl AsRawFd) -> BorrowedFd<'_> {
    // SAFETY: the descriptor is owned by `fd`, which is borrowed for the returned lifetime,
    // so it stays open while the BorrowedFd exists.
    unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }
}

// ---------------------------------------------------------------------------------------------
// The port
// ---------------------------------------------------------------------------------------------

/// One virtio-net device driven from userspace over vhost-user.
pub struct TestPort {
    frontend: Frontend,
    /// The vhost-user socket again, for messages `Frontend` has no call for.
    raw: UnixStream,
    mem: GuestMemoryMmap,
    alloc: GuestAlloc,
    cfg: FrontendConfig,
    features: u64,
    protocol_features: u64,
    hdr_len: usize,
    rx: Vq,
    tx: Vq,
    tx_layout: TxLayout,
    tx_toggle: bool,
    rx_posting: bool,
    rx_scratch: Vec<u8>,
    rx_backlog: VecDeque<Vec<u8>>,
    last_rx_hdr: Vec<u8>,
    /// What each TX buffer holds for `send_repeated`: (frame key, buffer address).
    tx_filled: Vec<(u64, u64)>,
    /// Frame bytes consumed without copying by `discard_batch`, and the largest frame.
    rx_discarded_bytes: u64,
    rx_discarded_max: u64,
    stats: PortStats,
}

impl std::fmt::Debug for TestPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPort")
            .field("socket", &self.cfg.socket)
            .field("features", &format_args!("{:#x}", self.features))
            .field(
                "protocol_features",
                &format_args!("{:#x}", self.protocol_features),
            )
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl TestPort {
    /// Connects to a listening backend (switch "server" mode), retrying until `cfg.timeout`
    /// while the socket does not exist or refuses connections, then sets the device up.
    pub fn connect(cfg: FrontendConfig) -> Result<Self> {
        let deadline = Instant::now() + cfg.timeout;
        let stream = loop {
            match UnixStream::connect(&cfg.socket) {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(Error::Connect {
                        path: cfg.socket.clone(),
                        source,
                    })
                }
            }
        };
        Self::setup(stream, cfg)
    }

    /// Listens on `cfg.socket` and waits up to `timeout` for the backend to connect (switch
    /// "client" mode). A stale socket file is replaced; the file is removed after accepting.
    pub fn listen_and_accept(cfg: FrontendConfig, timeout: Duration) -> Result<Self> {
        match std::fs::remove_file(&cfg.socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let listener = UnixListener::bind(&cfg.socket)?;
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        let _ = std::fs::remove_file(&cfg.socket);
                        return Err(Error::AcceptTimeout(cfg.socket.clone()));
                    }
                    wait_readable(borrow_fd(&listener), left)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        drop(listener);
        let _ = std::fs::remove_file(&cfg.socket);
        stream.set_nonblocking(false)?;
        Self::setup(stream, cfg)
    }

    fn setup(stream: UnixStream, cfg: FrontendConfig) -> Result<Self> {
        let qs = cfg.queue_size;
        if qs == 0 || !qs.is_power_of_two() || qs > 32768 {
            return Err(Error::Config(format!(
                "queue_size {qs} is not a power of two"
            )));
        }
        let rx_total: u64 = cfg.rx_sizes().iter().map(|&s| u64::from(s)).sum();
        if rx_total < 12 || cfg.rx_chain.len() > usize::from(qs) || cfg.tx_buffer_size < 12 + 14 {
            return Err(Error::Config("buffer sizes too small".into()));
        }
        let (mem, mut alloc) = build_memory(&cfg)?;
        let raw = stream.try_clone()?;
        let mut fe = Frontend::from_stream(stream, 2);

        // The order QEMU uses.
        fe.set_owner().map_err(vhost_err("SET_OWNER"))?;
        let offered = fe.get_features().map_err(vhost_err("GET_FEATURES"))?;
        let features = cfg.features & offered;
        let mut protocol_features = 0;
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered_p = fe
                .get_protocol_features()
                .map_err(vhost_err("GET_PROTOCOL_FEATURES"))?;
            let wanted = VhostUserProtocolFeatures::from_bits_truncate(cfg.protocol_features);
            let p = offered_p & wanted;
            fe.set_protocol_features(p)
                .map_err(vhost_err("SET_PROTOCOL_FEATURES"))?;
            protocol_features = p.bits();
            if protocol_features & PROTOCOL_F_REPLY_ACK != 0 {
                // From now on every request asks for an ack, so a backend that rejects
                // SET_MEM_TABLE or SET_VRING_ADDR fails setup instead of failing silently.
                fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        fe.set_features(features)
            .map_err(vhost_err("SET_FEATURES"))?;

        let mut regions = Vec::new();
        for r in mem.iter() {
            regions.push(
                VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(vhost_err("memory region info"))?,
            );
        }
        let slots = protocol_features & PROTOCOL_F_CONFIGURE_MEM_SLOTS != 0;
        let use_add = match cfg.mem_table {
            MemTableMode::Auto => slots,
            MemTableMode::SetMemTable => false,
            MemTableMode::AddMemReg if slots => true,
            MemTableMode::AddMemReg => return Err(Error::NotNegotiated("CONFIGURE_MEM_SLOTS")),
        };
        if use_add {
            let max = fe
                .get_max_mem_slots()
                .map_err(vhost_err("GET_MAX_MEM_SLOTS"))?;
            if (regions.len() as u64) > max {
                return Err(Error::Config(format!(
                    "{} regions but the backend has {max} memory slots",
                    regions.len()
                )));
            }
            for r in &regions {
                fe.add_mem_region(r).map_err(vhost_err("ADD_MEM_REG"))?;
            }
        } else {
            if cfg.mem_table == MemTableMode::Auto && regions.len() > 8 {
                return Err(Error::Config(format!(
                    "{} regions need CONFIGURE_MEM_SLOTS (SET_MEM_TABLE carries at most 8)",
                    regions.len()
                )));
            }
            fe.set_mem_table(&regions)
                .map_err(vhost_err("SET_MEM_TABLE"))?;
        }

        let event_idx = features & RING_EVENT_IDX != 0;
        let rx = Vq::new(RX_QUEUE, qs, &mut alloc, event_idx)?;
        let tx = Vq::new(TX_QUEUE, qs, &mut alloc, event_idx)?;
        let mut port = TestPort {
            raw,
            frontend: fe,
            mem,
            alloc,
            features,
            protocol_features,
            hdr_len: net_header_len(features),
            rx,
            tx,
            tx_layout: cfg.tx_layout,
            tx_toggle: false,
            rx_posting: true,
            rx_scratch: Vec::with_capacity(65536),
            rx_backlog: VecDeque::new(),
            last_rx_hdr: Vec::new(),
            tx_filled: Vec::new(),
            rx_discarded_bytes: 0,
            rx_discarded_max: 0,
            stats: PortStats::default(),
            cfg,
        };
        port.set_tx_layout(port.cfg.tx_layout)?;
        // Interrupts are requested only while waiting.
        port.rx.disable_notify(&port.mem)?;
        port.tx.disable_notify(&port.mem)?;
        // Fill the RX ring before the queue starts; the device sees it at avail idx.
        let sizes = port.cfg.rx_sizes();
        while port.post_rx_chain(&sizes)? {}
        port.rx.published = port.rx.next_avail;
        port.mem.store(
            port.rx.next_avail.to_le(),
            GuestAddress(port.rx.avail + 2),
            Ordering::Release,
        )?;

        for q in [RX_QUEUE, TX_QUEUE] {
            let vq = if q == RX_QUEUE { &port.rx } else { &port.tx };
            let fe = &port.frontend;
            fe.set_vring_num(q, qs)
                .map_err(vhost_err("SET_VRING_NUM"))?;
            fe.set_vring_base(q, 0)
                .map_err(vhost_err("SET_VRING_BASE"))?;
            fe.set_vring_addr(q, &vq.config_data(&port.mem)?)
                .map_err(vhost_err("SET_VRING_ADDR"))?;
            fe.set_vring_kick(q, &vq.kick)
                .map_err(vhost_err("SET_VRING_KICK"))?;
            fe.set_vring_call(q, &vq.call)
                .map_err(vhost_err("SET_VRING_CALL"))?;
        }
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            for q in [RX_QUEUE, TX_QUEUE] {
                port.frontend
                    .set_vring_enable(q, true)
                    .map_err(vhost_err("SET_VRING_ENABLE"))?;
            }
        }
        // Tell an event-driven backend that RX buffers are there.
        port.rx.publish(&port.mem, true)?;
        Ok(port)
    }

    /// Negotiated virtio features (including bit 30 if negotiated).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Negotiated vhost-user protocol features.
    pub fn protocol_features(&self) -> u64 {
        self.protocol_features
    }

    /// Length of the virtio-net header in use.
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    /// The configuration the port was created with.
    pub fn config(&self) -> &FrontendConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> PortStats {
        PortStats {
            tx_kicks: self.tx.kicks,
            rx_kicks: self.rx.kicks,
            ..self.stats
        }
    }

    /// The guest memory (to inspect buffers or rings directly).
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The underlying vhost-user connection, for sending arbitrary control messages.
    pub fn vhost(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// Sends one vhost-user message as raw bytes (for requests `Frontend` has no call for,
    /// e.g. SEND_RARP): the header (`code`, `flags` with the version bit added, the body's
    /// size) and `body`.
    pub fn send_raw_request(&mut self, code: u32, flags: u32, body: &[u8]) -> Result<()> {
        use std::io::Write;
        let mut msg = Vec::with_capacity(12 + body.len());
        for word in [code, flags | 1, body.len() as u32] {
            msg.extend_from_slice(&word.to_le_bytes());
        }
        msg.extend_from_slice(body);
        (&self.raw).write_all(&msg)?;
        Ok(())
    }

    /// Reads one raw reply: (code, flags, body).
    pub fn read_raw_reply(&mut self, timeout: Duration) -> Result<(u32, u32, Vec<u8>)> {
        use std::io::Read;
        self.raw.set_read_timeout(Some(timeout))?;
        let mut hdr = [0u8; 12];
        let r = (&self.raw).read_exact(&mut hdr);
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let result = r.and_then(|()| {
            let mut body = vec![0u8; word(8) as usize];
            (&self.raw).read_exact(&mut body).map(|()| body)
        });
        self.raw.set_read_timeout(None)?;
        Ok((word(0), word(4), result?))
    }

    /// Guest-physical (start, length) of each memory region.
    pub fn guest_regions(&self) -> Vec<(u64, u64)> {
        self.alloc.regions.iter().map(|r| (r.0, r.1)).collect()
    }

    /// `VHOST_USER_GET_CONFIG`: `len` bytes of virtio-net config space from `offset`.
    pub fn get_config(&self, offset: u32, len: u32) -> Result<Vec<u8>> {
        if self.protocol_features & PROTOCOL_F_CONFIG == 0 {
            return Err(Error::NotNegotiated("CONFIG"));
        }
        let buf = vec![0u8; len as usize];
        // Frontend is a cloneable handle on the same connection.
        let mut fe = self.frontend.clone();
        let (_, payload) = fe
            .get_config(offset, len, VhostUserConfigFlags::empty(), &buf)
            .map_err(vhost_err("GET_CONFIG"))?;
        Ok(payload)
    }

    /// Chooses the TX descriptor layout (`Indirect` needs `RING_INDIRECT_DESC`).
    pub fn set_tx_layout(&mut self, layout: TxLayout) -> Result<()> {
        if layout == TxLayout::Indirect && self.features & RING_INDIRECT_DESC == 0 {
            return Err(Error::NotNegotiated("RING_INDIRECT_DESC"));
        }
        self.tx_layout = layout;
        Ok(())
    }

    // ----- TX ----------------------------------------------------------------------------

    /// Sends one frame behind a zeroed virtio-net header. Waits (up to `cfg.timeout`) for the
    /// backend to return descriptors if the ring is full.
    pub fn send(&mut self, frame: &[u8]) -> Result<()> {
        let hdr = [0u8; 12];
        let hl = self.hdr_len;
        self.send_with_header(&hdr[..hl], frame)
    }

    /// Sends one frame behind a caller-supplied virtio-net header (any length).
    pub fn send_with_header(&mut self, hdr: &[u8], frame: &[u8]) -> Result<()> {
        let deadline = Instant::now() + self.cfg.timeout;
        loop {
            self.reclaim_tx()?;
            if self.push_tx(hdr, frame)? {
                return self.tx.publish(&self.mem, false);
            }
            if !self.wait_used(TX_QUEUE, 1, deadline)? {
                return Err(Error::TxRingFull);
            }
        }
    }

    /// Publishes as many frames as fit in the ring, with at most one kick; returns how many.
    pub fn send_batch(&mut self, frames: &[&[u8]]) -> Result<usize> {
        self.reclaim_tx()?;
        let hdr = [0u8; 12];
        let hl = self.hdr_len;
        let mut n = 0;
        for f in frames {
            if !self.push_tx(&hdr[..hl], f)? {
                break;
            }
            n += 1;
        }
        self.tx.publish(&self.mem, false)?;
        Ok(n)
    }

    /// Publishes copies of one frame behind `hdr` (one descriptor each) until `max` are in
    /// flight, with at most one kick; returns how many it published. A TX buffer gets the
    /// frame's bytes only the first time it carries the frame named `key`: a source whose
    /// cost per frame does not grow with the frame (for benchmarks of 64 KiB super-frames,
    /// where copying each would make the source the bottleneck). `max` also bounds the
    /// buffers the frames are read from, so a benchmark can give frames of different sizes
    /// the same bytes in flight (the same working set for the switch's copies).
    pub fn send_repeated(
        &mut self,
        hdr: &[u8],
        frame: &[u8],
        key: u64,
        max: usize,
    ) -> Result<usize> {
        self.reclaim_tx()?;
        let max = max.saturating_sub(self.tx.in_flight);
        let cap = self.cfg.tx_buffer_size;
        let total = hdr.len() + frame.len();
        if total > cap as usize {
            return Err(Error::FrameTooLarge {
                len: frame.len(),
                cap,
            });
        }
        let mut n = 0;
        while n < max {
            let (mem, q) = (&self.mem, &mut self.tx);
            let table = q.desc;
            let Some(head) = q.alloc_desc() else {
                break;
            };
            let buf = q.buffer(&mut self.alloc, head, cap)?;
            q.chains[usize::from(head)].descs.push(head);
            let slot = usize::from(head);
            if self.tx_filled.len() <= slot {
                self.tx_filled.resize(slot + 1, (u64::MAX, 0));
            }
            if self.tx_filled[slot] != (key, buf) {
                mem.write_slice(hdr, GuestAddress(buf))?;
                mem.write_slice(frame, GuestAddress(buf + hdr.len() as u64))?;
                self.tx_filled[slot] = (key, buf);
            }
            write_desc(
                mem,
                table,
                head,
                RawDesc {
                    addr: buf,
                    len: total as u32,
                    flags: 0,
                    next: 0,
                },
            )?;
            q.chains[slot].in_flight = true;
            q.in_flight += 1;
            q.push_avail(mem, head)?;
            self.stats.tx_frames += 1;
            n += 1;
        }
        self.tx.publish(&self.mem, false)?;
        Ok(n)
    }

    /// Builds a chain for one frame and pushes it into the avail ring; false if no room.
    fn push_tx(&mut self, hdr: &[u8], frame: &[u8]) -> Result<bool> {
        let cap = self.cfg.tx_buffer_size;
        let total = hdr.len() + frame.len();
        if total > cap as usize || hdr.len() > 4096 {
            return Err(Error::FrameTooLarge {
                len: frame.len(),
                cap,
            });
        }
        let layout = match self.tx_layout {
            TxLayout::Alternate => {
                self.tx_toggle = !self.tx_toggle;
                if self.tx_toggle {
                    TxLayout::Contiguous
                } else {
                    TxLayout::Split
                }
            }
            l => l,
        };
        let need = if layout == TxLayout::Split { 2 } else { 1 };
        if self.tx.free.len() < need {
            if self.tx_layout == TxLayout::Alternate {
                self.tx_toggle = !self.tx_toggle;
            }
            return Ok(false);
        }
        let (mem, q) = (&self.mem, &mut self.tx);
        let table = q.desc;
        let Some(head) = q.alloc_desc() else {
            return Ok(false);
        };
        // This buffer no longer holds what `send_repeated` left in it.
        if let Some(filled) = self.tx_filled.get_mut(usize::from(head)) {
            *filled = (u64::MAX, 0);
        }
        let buf = q.buffer(&mut self.alloc, head, cap)?;
        let (hl, fl) = (hdr.len() as u32, frame.len() as u32);
        let chain = &mut q.chains[usize::from(head)];
        chain.descs.push(head);
        match layout {
            TxLayout::Contiguous | TxLayout::Alternate => {
                mem.write_slice(hdr, GuestAddress(buf))?;
                mem.write_slice(frame, GuestAddress(buf + u64::from(hl)))?;
                write_desc(
                    mem,
                    table,
                    head,
                    RawDesc {
                        addr: buf,
                        len: hl + fl,
                        flags: 0,
                        next: 0,
                    },
                )?;
            }
            TxLayout::Split => {
                let Some(d1) = q.alloc_desc() else {
                    return Ok(false); // unreachable: checked free.len() above
                };
                q.chains[usize::from(head)].descs.push(d1);
                if let Some(filled) = self.tx_filled.get_mut(usize::from(d1)) {
                    *filled = (u64::MAX, 0);
                }
                let buf1 = q.buffer(&mut self.alloc, d1, cap)?;
                mem.write_slice(hdr, GuestAddress(buf))?;
                mem.write_slice(frame, GuestAddress(buf1))?;
                write_desc(
                    mem,
                    table,
                    head,
                    RawDesc {
                        addr: buf,
                        len: hl,
                        flags: VRING_DESC_F_NEXT,
                        next: d1,
                    },
                )?;
                write_desc(
                    mem,
                    table,
                    d1,
                    RawDesc {
                        addr: buf1,
                        len: fl,
                        flags: 0,
                        next: 0,
                    },
                )?;
            }
            TxLayout::Indirect => {
                let itab = match q.itabs[usize::from(head)] {
                    Some(t) => t,
                    None => {
                        let t = self.alloc.alloc(32, 16)?;
                        q.itabs[usize::from(head)] = Some(t);
                        t
                    }
                };
                mem.write_slice(hdr, GuestAddress(buf))?;
                mem.write_slice(frame, GuestAddress(buf + u64::from(hl)))?;
                write_desc(
                    mem,
                    itab,
                    0,
                    RawDesc {
                        addr: buf,
                        len: hl,
                        flags: VRING_DESC_F_NEXT,
                        next: 1,
                    },
                )?;
                write_desc(
                    mem,
                    itab,
                    1,
                    RawDesc {
                        addr: buf + u64::from(hl),
                        len: fl,
                        flags: 0,
                        next: 0,
                    },
                )?;
                write_desc(
                    mem,
                    table,
                    head,
                    RawDesc {
                        addr: itab,
                        len: 32,
                        flags: VRING_DESC_F_INDIRECT,
                        next: 0,
                    },
                )?;
            }
        }
        q.chains[usize::from(head)].in_flight = true;
        q.in_flight += 1;
        q.push_avail(mem, head)?;
        self.stats.tx_frames += 1;
        Ok(true)
    }

    /// Collects TX chains the backend returned; returns how many.
    fn reclaim_tx(&mut self) -> Result<usize> {
        let q = &mut self.tx;
        let pending = q.pending(&self.mem)?;
        for _ in 0..pending {
            let (id, len) = q.used_elem(&self.mem, 0)?;
            q.last_used = q.last_used.wrapping_add(1);
            if q.take_raw(id, len) {
                continue;
            }
            if !q.normal_head(id) {
                return Err(q.bad(id, len, "not an outstanding TX head"));
            }
            q.release_chain(id as u16);
            q.in_flight -= 1;
            self.stats.tx_used += 1;
        }
        Ok(usize::from(pending))
    }

    /// How many TX chains the backend returned so far.
    pub fn tx_used_count(&self) -> u64 {
        self.stats.tx_used
    }

    /// TX chains published and not returned yet (normal sends only).
    pub fn tx_in_flight(&self) -> usize {
        self.tx.in_flight
    }

    /// Waits until every published TX chain came back; false on timeout.
    pub fn wait_tx_completion(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            self.reclaim_tx()?;
            if self.tx.in_flight == 0 && self.tx.raw_outstanding.is_empty() {
                return Ok(true);
            }
            if !self.wait_used(TX_QUEUE, 1, deadline)? {
                self.reclaim_tx()?;
                return Ok(self.tx.in_flight == 0 && self.tx.raw_outstanding.is_empty());
            }
        }
    }

    // ----- RX ----------------------------------------------------------------------------

    /// Posts one RX chain of device-writable buffers with the given segment sizes; false if the
    /// ring lacks descriptors. Not published until the next `publish`.
    fn post_rx_chain(&mut self, sizes: &[u32]) -> Result<bool> {
        if sizes.is_empty() || self.rx.free.len() < sizes.len() {
            return Ok(false);
        }
        let (mem, q) = (&self.mem, &mut self.rx);
        let mut descs = Vec::with_capacity(sizes.len());
        for _ in sizes {
            match q.alloc_desc() {
                Some(d) => descs.push(d),
                None => return Ok(false), // unreachable: checked above
            }
        }
        let head = descs[0];
        let mut segs = Vec::with_capacity(sizes.len());
        for (k, (&d, &size)) in descs.iter().zip(sizes).enumerate() {
            let buf = q.buffer(&mut self.alloc, d, size)?;
            let (flags, next) = match descs.get(k + 1) {
                Some(&n) => (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, n),
                None => (VRING_DESC_F_WRITE, 0),
            };
            write_desc(
                mem,
                q.desc,
                d,
                RawDesc {
                    addr: buf,
                    len: size,
                    flags,
                    next,
                },
            )?;
            segs.push((buf, size));
        }
        let chain = &mut q.chains[usize::from(head)];
        chain.descs = descs;
        chain.segs = segs;
        chain.in_flight = true;
        q.in_flight += 1;
        q.push_avail(mem, head)?;
        Ok(true)
    }

    /// Posts up to `n` single-descriptor RX buffers of `size` bytes (header included);
    /// returns how many were posted.
    pub fn post_rx_buffers(&mut self, n: usize, size: u32) -> Result<usize> {
        self.post_rx_chains(n, &[size])
    }

    /// Posts up to `n` RX chains, each made of descriptors of the given sizes (like a
    /// non-mergeable "big packets" guest); returns how many were posted.
    pub fn post_rx_chains(&mut self, n: usize, sizes: &[u32]) -> Result<usize> {
        let mut posted = 0;
        while posted < n && self.post_rx_chain(sizes)? {
            posted += 1;
        }
        self.rx.publish(&self.mem, false)?;
        Ok(posted)
    }

    /// RX buffers currently posted to the device.
    pub fn rx_posted(&self) -> usize {
        self.rx.in_flight
    }

    /// Stops (false) or resumes (true) reposting consumed RX buffers, simulating a guest that
    /// stops refilling its RX ring. Resuming refills every free descriptor.
    pub fn set_rx_consumption(&mut self, posting: bool) -> Result<()> {
        self.rx_posting = posting;
        if posting {
            let sizes = self.cfg.rx_sizes();
            while self.post_rx_chain(&sizes)? {}
            self.rx.publish(&self.mem, false)?;
        }
        Ok(())
    }

    /// The virtio-net header of the last received frame.
    pub fn last_rx_header(&self) -> &[u8] {
        &self.last_rx_hdr
    }

    /// Copies `len` bytes of a chain's buffers starting at `skip` onto `out`.
    fn read_chain(&self, head: u16, mut skip: u64, len: u64, out: &mut Vec<u8>) -> Result<()> {
        let mut left = len;
        for &(gpa, cap) in &self.rx.chains[usize::from(head)].segs {
            if left == 0 {
                break;
            }
            let cap = u64::from(cap);
            if skip >= cap {
                skip -= cap;
                continue;
            }
            let n = (cap - skip).min(left);
            let at = out.len();
            out.resize(at + n as usize, 0);
            self.mem
                .read_slice(&mut out[at..], GuestAddress(gpa + skip))?;
            left -= n;
            skip = 0;
        }
        Ok(())
    }

    /// Hands a consumed RX head back: repost it, or free it when not posting.
    fn recycle_rx(&mut self, head: u16) -> Result<()> {
        let q = &mut self.rx;
        q.in_flight -= 1;
        if !self.rx_posting {
            q.release_chain(head);
            return Ok(());
        }
        // Rewrite the descriptors (the device could have scribbled on the table).
        let chain = &q.chains[usize::from(head)];
        for (k, (&d, &(gpa, size))) in chain.descs.iter().zip(&chain.segs).enumerate() {
            let (flags, next) = match chain.descs.get(k + 1) {
                Some(&n) => (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, n),
                None => (VRING_DESC_F_WRITE, 0),
            };
            write_desc(
                &self.mem,
                q.desc,
                d,
                RawDesc {
                    addr: gpa,
                    len: size,
                    flags,
                    next,
                },
            )?;
        }
        q.in_flight += 1;
        q.push_avail(&self.mem, head)
    }

    /// Reads the next complete frame (without header) into `out`.
    fn rx_take(&mut self, out: &mut Vec<u8>) -> Result<RxTake> {
        self.rx_take_with(out, true)
    }

    /// [`Self::rx_take`]; without `keep`, the frame's bytes are counted, not copied.
    fn rx_take_with(&mut self, out: &mut Vec<u8>, keep: bool) -> Result<RxTake> {
        out.clear();
        loop {
            let pending = self.rx.pending(&self.mem)?;
            if pending == 0 {
                return Ok(RxTake::Empty);
            }
            let (id, len) = self.rx.used_elem(&self.mem, 0)?;
            if !self.rx.normal_head(id) {
                self.rx.last_used = self.rx.last_used.wrapping_add(1);
                if self.rx.take_raw(id, len) {
                    continue;
                }
                return Err(self.rx.bad(id, len, "not an outstanding RX head"));
            }
            let hl = self.hdr_len as u32;
            if u64::from(len) > self.rx.chains[id as usize].capacity() || len < hl {
                self.rx.last_used = self.rx.last_used.wrapping_add(1);
                return Err(self.rx.bad(id, len, "length outside the posted buffer"));
            }
            let mut hdr = std::mem::take(&mut self.last_rx_hdr);
            hdr.clear();
            self.read_chain(id as u16, 0, u64::from(hl), &mut hdr)?;
            let nbufs = if self.features & NET_F_MRG_RXBUF != 0 {
                u16::from_le_bytes([hdr[10], hdr[11]])
            } else {
                1
            };
            self.last_rx_hdr = hdr;
            if nbufs == 0 || nbufs > self.rx.size {
                self.rx.last_used = self.rx.last_used.wrapping_add(1);
                return Err(self.rx.bad(id, len, "num_buffers out of range"));
            }
            if nbufs > pending {
                return Ok(RxTake::Incomplete(nbufs));
            }
            // Validate every element before consuming any.
            for k in 1..nbufs {
                let (id, len) = self.rx.used_elem(&self.mem, k)?;
                if !self.rx.normal_head(id) {
                    self.rx.last_used = self.rx.last_used.wrapping_add(k + 1);
                    return Err(self
                        .rx
                        .bad(id, len, "merged buffer is not an outstanding head"));
                }
                if u64::from(len) > self.rx.chains[id as usize].capacity() {
                    self.rx.last_used = self.rx.last_used.wrapping_add(k + 1);
                    return Err(self.rx.bad(id, len, "length outside the posted buffer"));
                }
            }
            let mut frame_len = 0;
            for k in 0..nbufs {
                let (id, len) = self.rx.used_elem(&self.mem, 0)?;
                let skip = if k == 0 { u64::from(hl) } else { 0 };
                if keep {
                    self.read_chain(id as u16, skip, u64::from(len) - skip, out)?;
                } else {
                    self.rx_discarded_bytes += u64::from(len) - skip;
                    frame_len += u64::from(len) - skip;
                }
                self.rx.last_used = self.rx.last_used.wrapping_add(1);
                self.recycle_rx(id as u16)?;
                self.stats.rx_used += 1;
            }
            self.rx_discarded_max = self.rx_discarded_max.max(frame_len);
            self.stats.rx_frames += 1;
            return Ok(RxTake::Frame);
        }
    }

    /// Receives the next frame (without the virtio-net header), waiting up to `timeout` on the
    /// RX call eventfd. Consumed buffers are reposted (unless consumption is paused).
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        if let Some(f) = self.rx_backlog.pop_front() {
            return Ok(Some(f));
        }
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let got = self.rx_take(&mut out);
            self.rx.publish(&self.mem, false)?;
            let need = match got? {
                RxTake::Frame => return Ok(Some(out)),
                RxTake::Empty => 1,
                RxTake::Incomplete(n) => n,
            };
            if !self.wait_used(RX_QUEUE, need, deadline)? {
                let pending = self.rx.pending(&self.mem)?;
                return match self.rx_take(&mut out)? {
                    RxTake::Frame => {
                        self.rx.publish(&self.mem, false)?;
                        Ok(Some(out))
                    }
                    RxTake::Empty => Ok(None),
                    RxTake::Incomplete(needed) => Err(Error::IncompleteFrame { pending, needed }),
                };
            }
        }
    }

    /// Hands every frame already received to `f` without blocking and without allocating per
    /// frame; reposts buffers with at most one kick. Returns the number of frames.
    pub fn recv_batch(&mut self, f: &mut dyn FnMut(&[u8])) -> Result<usize> {
        let mut n = 0;
        while let Some(frame) = self.rx_backlog.pop_front() {
            f(&frame);
            n += 1;
        }
        let mut buf = std::mem::take(&mut self.rx_scratch);
        let res = loop {
            match self.rx_take(&mut buf) {
                Ok(RxTake::Frame) => {
                    f(&buf);
                    n += 1;
                }
                Ok(_) => break Ok(n),
                Err(e) => break Err(e),
            }
        };
        self.rx_scratch = buf;
        self.rx.publish(&self.mem, false)?;
        res
    }

    /// Consumes every frame already received without copying it (a sink for benchmarks of
    /// large frames); reposts buffers with at most one kick. Returns (frames, frame bytes).
    pub fn discard_batch(&mut self) -> Result<(u64, u64)> {
        let mut frames = self.rx_backlog.len() as u64;
        let mut bytes: u64 = self.rx_backlog.drain(..).map(|f| f.len() as u64).sum();
        let before = self.rx_discarded_bytes;
        let mut scratch = std::mem::take(&mut self.rx_scratch);
        let res = loop {
            match self.rx_take_with(&mut scratch, false) {
                Ok(RxTake::Frame) => frames += 1,
                Ok(_) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.rx_scratch = scratch;
        self.rx.publish(&self.mem, false)?;
        res?;
        bytes += self.rx_discarded_bytes - before;
        Ok((frames, bytes))
    }

    /// The largest frame [`Self::discard_batch`] consumed so far (bytes, without header).
    pub fn largest_discarded(&self) -> u64 {
        self.rx_discarded_max
    }

    /// Returns the first frame that arrives within `d`, or `None` if the port stays silent.
    pub fn expect_silence(&mut self, d: Duration) -> Result<Option<Vec<u8>>> {
        self.recv(d)
    }

    // ----- waiting -------------------------------------------------------------------------

    /// Waits until `need` used entries are pending on queue `qi` or `deadline` passes.
    fn wait_used(&mut self, qi: usize, need: u16, deadline: Instant) -> Result<bool> {
        let mem = &self.mem;
        let q = if qi == RX_QUEUE {
            &mut self.rx
        } else {
            &mut self.tx
        };
        let res = loop {
            if q.pending(mem)? >= need || q.enable_notify(mem, need)? {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            if wait_readable(borrow_fd(&q.call), left)? {
                self.stats.calls += 1;
                // Non-blocking read just resets the counter.
                let _ = q.call.read();
            }
        };
        q.disable_notify(mem)?;
        Ok(res)
    }

    // ----- raw access --------------------------------------------------------------------

    /// The queue's kick eventfd, for a test thread that drives a ring by hand. It stays open
    /// as long as the port.
    pub fn kick_fd(&self, queue: usize) -> std::os::fd::RawFd {
        if queue == RX_QUEUE {
            self.rx.kick.as_raw_fd()
        } else {
            self.tx.kick.as_raw_fd()
        }
    }

    /// Raw access to the TX queue for building malformed descriptor chains.
    pub fn raw_tx(&mut self) -> RawQueue<'_> {
        RawQueue {
            port: self,
            queue: TX_QUEUE,
        }
    }

    /// Raw access to the RX queue (device-written buffers: read-only descriptors, buffers
    /// overlapping the rings, out-of-range addresses...).
    pub fn raw_rx(&mut self) -> RawQueue<'_> {
        RawQueue {
            port: self,
            queue: RX_QUEUE,
        }
    }

    /// Closes the connection and unmaps guest memory.
    pub fn disconnect(self) {
        drop(self);
    }
}

/// Raw access to the TX queue (the name the test plan uses).
pub type RawTx<'a> = RawQueue<'a>;

/// One descriptor as written by [`RawQueue::set_desc`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// `VRING_DESC_F_*` flags.
    pub flags: u16,
    /// Next descriptor index (with `VRING_DESC_F_NEXT`).
    pub next: u16,
}

impl RawDesc {
    /// A descriptor without `NEXT`.
    pub fn new(addr: u64, len: u32, flags: u16) -> Self {
        RawDesc {
            addr,
            len,
            flags,
            next: 0,
        }
    }
    /// A descriptor chained to `next`.
    pub fn chained(addr: u64, len: u32, flags: u16, next: u16) -> Self {
        RawDesc {
            addr,
            len,
            flags: flags | VRING_DESC_F_NEXT,
            next,
        }
    }
}

/// Direct access to one queue's descriptor table and avail ring. Descriptors written here are
/// withheld from the normal driver until every raw head published on the queue came back.
pub struct RawQueue<'a> {
    port: &'a mut TestPort,
    queue: usize,
}

impl RawQueue<'_> {
    fn q(&mut self) -> &mut Vq {
        if self.queue == RX_QUEUE {
            &mut self.port.rx
        } else {
            &mut self.port.tx
        }
    }

    /// Ring size.
    pub fn queue_size(&self) -> u16 {
        self.port.cfg.queue_size
    }

    /// Virtio-net header length in use.
    pub fn header_len(&self) -> usize {
        self.port.hdr_len
    }

    /// Guest-physical address of the descriptor table, avail ring and used ring.
    pub fn ring_addrs(&mut self) -> (u64, u64, u64) {
        let q = self.q();
        (q.desc, q.avail, q.used)
    }

    /// Allocates `len` bytes of scratch guest memory; returns its guest-physical address.
    pub fn alloc(&mut self, len: usize) -> Result<u64> {
        self.port.alloc.alloc(len as u64, 64)
    }

    /// Allocates scratch memory inside region `region` (to build buffers ending at a region
    /// edge, for example).
    pub fn alloc_in_region(&mut self, region: usize, len: usize) -> Result<u64> {
        self.port
            .alloc
            .alloc_in(region, len as u64, 64)
            .ok_or(Error::OutOfGuestMemory(len as u64))
    }

    /// A guest-physical address no region maps (in the first gap, or past the end).
    pub fn unmapped_gpa(&self) -> u64 {
        let r = &self.port.alloc.regions;
        match (r.first(), r.last()) {
            (Some(&(b, s, _)), _) if self.port.cfg.region_gap > 0 => b + s,
            (_, Some(&(b, s, _))) => b + s,
            _ => 0,
        }
    }

    /// Writes bytes into guest memory.
    pub fn write(&mut self, gpa: u64, data: &[u8]) -> Result<()> {
        self.port.mem.write_slice(data, GuestAddress(gpa))?;
        Ok(())
    }

    /// Reads bytes from guest memory.
    pub fn read(&self, gpa: u64, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.port.mem.read_slice(&mut v, GuestAddress(gpa))?;
        Ok(v)
    }

    /// Writes a zeroed virtio-net header plus `frame` into fresh scratch memory; returns its
    /// address and total length.
    pub fn frame_buffer(&mut self, frame: &[u8]) -> Result<(u64, u32)> {
        let hl = self.port.hdr_len;
        let gpa = self.alloc(hl + frame.len())?;
        self.write(gpa, &[0u8; 12][..hl])?;
        self.write(gpa + hl as u64, frame)?;
        Ok((gpa, (hl + frame.len()) as u32))
    }

    /// Writes descriptor `index` of the ring's table.
    pub fn set_desc(&mut self, index: u16, d: RawDesc) -> Result<()> {
        let mem = &self.port.mem;
        let q = if self.queue == RX_QUEUE {
            &mut self.port.rx
        } else {
            &mut self.port.tx
        };
        let i = usize::from(index);
        if i >= q.state.len() {
            return Err(Error::Config(format!(
                "descriptor {index} beyond the table"
            )));
        }
        match q.state[i] {
            DescState::Chain => return Err(Error::DescriptorInUse(index)),
            DescState::Free => {
                q.free.retain(|&f| f != index);
                q.state[i] = DescState::Raw;
            }
            DescState::Raw => {}
        }
        write_desc(mem, q.desc, index, d)
    }

    /// Writes an indirect descriptor table at `gpa` (anywhere, any length).
    pub fn write_indirect(&mut self, gpa: u64, descs: &[RawDesc]) -> Result<()> {
        let mem = &self.port.mem;
        for (i, d) in descs.iter().enumerate() {
            write_desc(mem, gpa, i as u16, *d)
                .map_err(|_| Error::Memory(format!("indirect entry {i} at {gpa:#x}")))?;
        }
        Ok(())
    }

    /// Puts `head` (any value, even beyond the queue size) into the next avail slot without
    /// making it visible; call [`RawQueue::kick`] to publish.
    pub fn push(&mut self, head: u16) -> Result<()> {
        let mem = &self.port.mem;
        let q = if self.queue == RX_QUEUE {
            &mut self.port.rx
        } else {
            &mut self.port.tx
        };
        q.push_avail(mem, head)?;
        q.raw_outstanding.push(u32::from(head));
        Ok(())
    }

    /// Publishes pushed heads (avail idx) and kicks unconditionally.
    pub fn kick(&mut self) -> Result<()> {
        let mem = &self.port.mem;
        let q = if self.queue == RX_QUEUE {
            &mut self.port.rx
        } else {
            &mut self.port.tx
        };
        q.publish(mem, true)
    }

    /// Stores an arbitrary avail idx (e.g. more than a queue ahead) and kicks. The next normal
    /// publish writes the driver's real index back.
    pub fn set_avail_idx(&mut self, idx: u16) -> Result<()> {
        let mem = &self.port.mem;
        let q = if self.queue == RX_QUEUE {
            &mut self.port.rx
        } else {
            &mut self.port.tx
        };
        mem.store(idx.to_le(), GuestAddress(q.avail + 2), Ordering::Release)?;
        fence(Ordering::SeqCst);
        q.kick.write(1)?;
        q.kicks += 1;
        Ok(())
    }

    /// Waits (bounded) for the backend to return `head` in the used ring; returns the used
    /// length, or `None` on timeout. RX frames seen meanwhile are kept for `recv`.
    pub fn wait_used(&mut self, head: u16, timeout: Duration) -> Result<Option<u32>> {
        let deadline = Instant::now() + timeout;
        let want = u32::from(head);
        loop {
            if self.queue == TX_QUEUE {
                self.port.reclaim_tx()?;
            } else {
                let mut out = Vec::new();
                loop {
                    let r = self.port.rx_take(&mut out);
                    self.port.rx.publish(&self.port.mem, false)?;
                    match r? {
                        RxTake::Frame => self.port.rx_backlog.push_back(std::mem::take(&mut out)),
                        _ => break,
                    }
                }
            }
            let q = self.q();
            if let Some(pos) = q.raw_done.iter().position(|&(id, _)| id == want) {
                return Ok(Some(q.raw_done.swap_remove(pos).1));
            }
            if !self.port.wait_used(self.queue, 1, deadline)? {
                return Ok(None);
            }
        }
    }

    /// Pushes `head`, publishes, kicks, and waits for it like [`RawQueue::wait_used`].
    pub fn submit(&mut self, head: u16, timeout: Duration) -> Result<Option<u32>> {
        self.push(head)?;
        self.kick()?;
        self.wait_used(head, timeout)
    }

    /// Forgets raw heads the backend never returned and gives their descriptors back to the
    /// normal driver (if the backend returns them later, that is reported as an error).
    pub fn forget_outstanding(&mut self) {
        let q = self.q();
        q.raw_outstanding.clear();
        q.raw_done.clear();
        for i in 0..q.size {
            if q.state[usize::from(i)] == DescState::Raw {
                q.state[usize::from(i)] = DescState::Free;
                q.free.push(i);
            }
        }
    }

    /// Raw heads published and not returned yet.
    pub fn outstanding(&mut self) -> usize {
        self.q().raw_outstanding.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_len_follows_features() {
        assert_eq!(net_header_len(0), 10);
        assert_eq!(net_header_len(VHOST_USER_F_PROTOCOL_FEATURES), 10);
        assert_eq!(net_header_len(VERSION_1), 12);
        assert_eq!(net_header_len(NET_F_MRG_RXBUF), 12);
        assert_eq!(net_header_len(DEFAULT_FEATURES), 12);
    }

    #[test]
    fn feature_bits() {
        assert_eq!(VHOST_USER_F_PROTOCOL_FEATURES, 0x4000_0000);
        assert_eq!(VERSION_1, 0x1_0000_0000);
        assert_eq!(DEFAULT_FEATURES, 0x1_7001_8028);
        assert_eq!(
            DEFAULT_PROTOCOL_FEATURES,
            (VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
                .bits()
        );
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(ring::desc_table_size(256), 4096);
        assert_eq!(ring::avail_ring_size(256), 518);
        assert_eq!(ring::used_ring_size(256), 2054);
        assert_eq!(ring::used_event_offset(256), 516);
        assert_eq!(ring::avail_event_offset(256), 2052);
        assert_eq!(ring::slot(65535, 256), 255);
        assert_eq!(ring::slot(65535u16.wrapping_add(1), 256), 0);
    }

    #[test]
    fn need_event() {
        // The other side asked to hear about index 5 (i.e. when idx moves past 5).
        assert!(ring::need_event(5, 6, 5));
        assert!(ring::need_event(5, 10, 0));
        assert!(!ring::need_event(5, 5, 0));
        assert!(!ring::need_event(5, 8, 6));
        // Across the 16-bit wrap.
        assert!(ring::need_event(65535, 2, 65530));
        assert!(!ring::need_event(3, 2, 65530));
        // No movement never needs an event.
        assert!(!ring::need_event(7, 7, 7));
    }

    #[test]
    fn region_layout_has_gaps() {
        let mut cfg = FrontendConfig::new("/nonexistent");
        cfg.regions = 4;
        let (size, bases) = cfg.region_layout().unwrap();
        assert_eq!(size, 4 << 20);
        assert_eq!(bases, vec![0, 5 << 20, 10 << 20, 15 << 20]);
        cfg.regions = 0;
        assert!(cfg.region_layout().is_err());
        cfg.regions = 1;
        cfg.mem_size = 1000;
        assert!(cfg.region_layout().is_err());
    }

    #[test]
    fn allocator_round_robins_and_stays_in_regions() {
        let mut a = GuestAlloc::new(0x10000, &[0, 0x20000]);
        assert_eq!(a.alloc(100, 64).unwrap(), 0);
        assert_eq!(a.alloc(100, 64).unwrap(), 0x20000);
        assert_eq!(a.alloc(10, 64).unwrap(), 128);
        // Too big for either region.
        assert!(a.alloc(0x10001, 64).is_err());
        // Fill region 1 exactly; the next allocation falls back to region 0.
        assert_eq!(a.alloc_in(1, 0x10000 - 128, 64), Some(0x20000 + 128));
        assert_eq!(a.alloc(64, 64).unwrap() & !0xffff, 0);
    }

    #[test]
    fn memory_regions_map_to_memfds() {
        let mut cfg = FrontendConfig::new("/nonexistent");
        cfg.regions = 3;
        cfg.mem_size = 3 << 20;
        for single in [false, true] {
            cfg.single_memfd = single;
            let (mem, _) = build_memory(&cfg).unwrap();
            let infos: Vec<_> = mem
                .iter()
                .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).unwrap())
                .collect();
            assert_eq!(infos.len(), 3);
            for (i, r) in infos.iter().enumerate() {
                assert_eq!(r.guest_phys_addr, i as u64 * (2 << 20));
                assert_eq!(r.memory_size, 1 << 20);
                let off = if single { i as u64 * (1 << 20) } else { 0 };
                assert_eq!(r.mmap_offset, off);
            }
            // Writes through guest memory land in the shared file.
            mem.write_slice(b"abc", GuestAddress((2 << 20) + 5))
                .unwrap();
            assert!(mem
                .write_slice(b"abc", GuestAddress((1 << 20) - 1))
                .is_err());
        }
    }
}
