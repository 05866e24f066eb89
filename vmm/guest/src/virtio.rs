//! A polling virtio-net driver over virtio-mmio version 2 (virtio 1.x, split virtqueues).
//!
//! - No interrupts: the driver polls the used rings. EVENT_IDX is used both ways: the driver
//!   honours `avail_event` before writing QueueNotify (an ioeventfd on the VMM side), and keeps
//!   `used_event` "never" except while it is about to idle (then "next used entry"), so the
//!   backend only signals when the guest is blocked in the VMM (port 0x502).
//! - Rings and buffers live in a caller-provided [`NetMem`] (a static in the guest); the guest is
//!   identity-mapped, so a pointer value is the guest-physical address the device uses.
//! - Receive buffers are 2 KiB each; with MRG_RXBUF a frame spanning `num_buffers > 1` buffers is
//!   merged into one frame buffer.
use core::fmt;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

/// virtio-mmio register offsets (virtio 1.x, section "MMIO Device Register Layout").
pub mod reg {
    pub const MAGIC: usize = 0x000;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC_LOW: usize = 0x080;
    pub const QUEUE_DESC_HIGH: usize = 0x084;
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    pub const QUEUE_DRIVER_HIGH: usize = 0x094;
    pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: usize = 0x0a4;
    pub const CONFIG_GENERATION: usize = 0x0fc;
    pub const CONFIG: usize = 0x100;
}

pub const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
pub const DEVICE_ID_NET: u32 = 1;

pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

pub mod feature {
    pub const NET_MAC: u64 = 1 << 5;
    pub const NET_MRG_RXBUF: u64 = 1 << 15;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
}

pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;

/// Ring size the driver asks for (smaller if QueueNumMax is smaller).
pub const QSIZE: usize = 256;
/// Bytes per receive / transmit buffer (header + frame).
pub const BUF_SIZE: usize = 2048;
/// `struct virtio_net_hdr` with VERSION_1 (num_buffers always present).
pub const NET_HDR_LEN: usize = 12;
/// Largest frame the driver sends (Ethernet header + 1500, no FCS).
pub const MAX_FRAME: usize = 1514;
/// Largest merged (num_buffers > 1) receive frame; larger ones are dropped.
pub const MERGE_MAX: usize = 16 * 1024;

/// Register access to one virtio-mmio device.
pub trait Transport {
    fn read32(&self, off: usize) -> u32;
    fn write32(&self, off: usize, value: u32);
    fn read8(&self, off: usize) -> u8;
}

/// The real thing: volatile accesses to the MMIO window (each one is a VM exit, except
/// QueueNotify writes, which the VMM turns into an ioeventfd).
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: usize,
}

impl Mmio {
    /// # Safety
    /// `base` must be the address of a virtio-mmio register window.
    pub unsafe fn new(base: u64) -> Self {
        Mmio { base: base as usize }
    }
}

impl Transport for Mmio {
    #[inline]
    fn read32(&self, off: usize) -> u32 {
        unsafe { read_volatile((self.base + off) as *const u32) }
    }
    #[inline]
    fn write32(&self, off: usize, value: u32) {
        unsafe { write_volatile((self.base + off) as *mut u32, value) }
    }
    #[inline]
    fn read8(&self, off: usize) -> u8 {
        unsafe { read_volatile((self.base + off) as *const u8) }
    }
}

/// virtq_need_event(): does moving the index from `old` to `new` cross `event`?
#[inline]
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// Driver area. `ring[size]` is `used_event`.
#[repr(C, align(4096))]
pub struct AvailRing {
    pub flags: u16,
    pub idx: u16,
    pub ring: [u16; QSIZE + 1],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UsedElem {
    pub id: u32,
    pub len: u32,
}

/// Device area. The u16 after `ring[size - 1]` is `avail_event`.
#[repr(C, align(4096))]
pub struct UsedRing {
    pub flags: u16,
    pub idx: u16,
    pub ring: [UsedElem; QSIZE],
    pub avail_event: u16,
}

/// One split virtqueue: descriptor table, driver area and device area on separate pages.
#[repr(C, align(4096))]
pub struct QueueMem {
    pub desc: [Desc; QSIZE],
    pub avail: AvailRing,
    pub used: UsedRing,
}

/// All memory the driver shares with the device. Must be zero-initialised (a `.bss` static).
#[repr(C, align(4096))]
pub struct NetMem {
    pub rxq: QueueMem,
    pub txq: QueueMem,
    pub rx_bufs: [[u8; BUF_SIZE]; QSIZE],
    pub tx_bufs: [[u8; BUF_SIZE]; QSIZE],
    pub merge: [u8; MERGE_MAX],
    pub scratch: [u8; BUF_SIZE],
}

impl NetMem {
    pub const fn zeroed() -> Self {
        // SAFETY: plain integers and arrays of them; all-zero is valid.
        unsafe { core::mem::zeroed() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioError {
    NoNetDevice,
    BadMagic(u32),
    UnsupportedVersion(u32),
    NoVersion1(u64),
    FeaturesRejected(u64),
    QueueUnavailable(u16),
    QueueInUse(u16),
    ResetTimeout,
    NeedsReset,
}

impl fmt::Display for VirtioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VirtioError::NoNetDevice => write!(f, "virtio: no virtio-net device found"),
            VirtioError::BadMagic(m) => write!(f, "virtio: bad mmio magic {m:#x}"),
            VirtioError::UnsupportedVersion(v) => {
                write!(f, "virtio: mmio version {v} not supported (need 2, modern)")
            }
            VirtioError::NoVersion1(feat) => {
                write!(f, "virtio: device does not offer VERSION_1 (features {feat:#x})")
            }
            VirtioError::FeaturesRejected(feat) => {
                write!(f, "virtio: device rejected features {feat:#x} (FEATURES_OK not kept)")
            }
            VirtioError::QueueUnavailable(q) => write!(f, "virtio: queue {q} not available (QueueNumMax < 2)"),
            VirtioError::QueueInUse(q) => write!(f, "virtio: queue {q} already ready after reset"),
            VirtioError::ResetTimeout => write!(f, "virtio: device did not reset"),
            VirtioError::NeedsReset => write!(f, "virtio: device needs reset"),
        }
    }
}

/// The driver's side of one split virtqueue.
pub struct Virtq<T: Transport> {
    t: T,
    index: u16,
    mem: *mut QueueMem,
    size: u16,
    mask: u16,
    /// Next avail index to publish (== the published avail.idx).
    avail_idx: u16,
    /// avail.idx when we last decided whether to notify.
    notified_idx: u16,
    /// Next used entry to consume.
    last_used: u16,
    event_idx: bool,
    pub notifies: u64,
}

impl<T: Transport> Virtq<T> {
    /// Select queue `index`, size it (min(QSIZE, QueueNumMax), a power of two), give the device
    /// the ring addresses and set QueueReady.
    fn setup(t: T, index: u16, mem: *mut QueueMem, event_idx: bool) -> Result<Self, VirtioError> {
        t.write32(reg::QUEUE_SEL, index as u32);
        if t.read32(reg::QUEUE_READY) != 0 {
            return Err(VirtioError::QueueInUse(index));
        }
        let max = t.read32(reg::QUEUE_NUM_MAX).min(QSIZE as u32);
        if max < 2 {
            return Err(VirtioError::QueueUnavailable(index));
        }
        let size = 1u32 << (31 - max.leading_zeros()); // round down to a power of two
        let q = Virtq {
            t,
            index,
            mem,
            size: size as u16,
            mask: (size - 1) as u16,
            avail_idx: 0,
            notified_idx: 0,
            last_used: 0,
            event_idx,
            notifies: 0,
        };
        // The driver area starts out "no interrupts" / used_event = "never" (0xffff = 0 - 1).
        unsafe {
            write_volatile(addr_of_mut!((*mem).avail.flags), VIRTQ_AVAIL_F_NO_INTERRUPT);
            write_volatile(addr_of_mut!((*mem).avail.idx), 0);
            write_volatile(q.used_event_ptr(), 0xffff);
        }
        let desc = unsafe { addr_of!((*mem).desc) } as u64;
        let avail = unsafe { addr_of!((*mem).avail) } as u64;
        let used = unsafe { addr_of!((*mem).used) } as u64;
        fence(Ordering::SeqCst);
        q.t.write32(reg::QUEUE_NUM, size);
        q.t.write32(reg::QUEUE_DESC_LOW, desc as u32);
        q.t.write32(reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
        q.t.write32(reg::QUEUE_DRIVER_LOW, avail as u32);
        q.t.write32(reg::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        q.t.write32(reg::QUEUE_DEVICE_LOW, used as u32);
        q.t.write32(reg::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        q.t.write32(reg::QUEUE_READY, 1);
        Ok(q)
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    #[inline]
    fn desc_ptr(&self, id: u16) -> *mut Desc {
        unsafe { addr_of_mut!((*self.mem).desc[(id & self.mask) as usize]) }
    }

    #[inline]
    fn used_event_ptr(&self) -> *mut u16 {
        unsafe { addr_of_mut!((*self.mem).avail.ring[self.size as usize]) }
    }

    #[inline]
    fn avail_event_ptr(&self) -> *const u16 {
        // Right after ring[size - 1]: 4 + 8 * size bytes into the used ring.
        unsafe { (addr_of!((*self.mem).used) as *const u8).add(4 + 8 * self.size as usize) as *const u16 }
    }

    /// Write a descriptor (only the driver touches the table; plain volatile stores).
    #[inline]
    fn write_desc(&mut self, id: u16, d: Desc) {
        unsafe { write_volatile(self.desc_ptr(id), d) }
    }

    #[inline]
    fn set_desc_len(&mut self, id: u16, len: u32) {
        unsafe { write_volatile(addr_of_mut!((*self.desc_ptr(id)).len), len) }
    }

    /// Make descriptor chain `id` available and publish the new avail.idx.
    #[inline]
    fn push(&mut self, id: u16) {
        unsafe {
            let slot = addr_of_mut!((*self.mem).avail.ring[(self.avail_idx & self.mask) as usize]);
            write_volatile(slot, id);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            // Descriptor and ring entry before the index the device reads first.
            fence(Ordering::Release);
            write_volatile(addr_of_mut!((*self.mem).avail.idx), self.avail_idx);
        }
    }

    /// The device's used.idx; entries before it (and the buffers they describe) are readable.
    #[inline]
    pub fn used_idx(&self) -> u16 {
        let v = unsafe { read_volatile(addr_of!((*self.mem).used.idx)) };
        fence(Ordering::Acquire);
        v
    }

    #[inline]
    pub fn pending(&self) -> u16 {
        self.used_idx().wrapping_sub(self.last_used)
    }

    #[inline]
    fn used_elem(&self, at: u16) -> UsedElem {
        unsafe { read_volatile(addr_of!((*self.mem).used.ring[(at & self.mask) as usize])) }
    }

    /// Notify the device if it asked for it (EVENT_IDX: avail_event crossed since the last
    /// decision; otherwise: used.flags lacks NO_NOTIFY). Returns whether QueueNotify was written.
    pub fn notify_if_needed(&mut self) -> bool {
        if self.avail_idx == self.notified_idx {
            return false;
        }
        // Our avail.idx store must be visible before we read the device's suppression state.
        fence(Ordering::SeqCst);
        let need = if self.event_idx {
            let event = unsafe { read_volatile(self.avail_event_ptr()) };
            need_event(event, self.avail_idx, self.notified_idx)
        } else {
            unsafe { read_volatile(addr_of!((*self.mem).used.flags)) & VIRTQ_USED_F_NO_NOTIFY == 0 }
        };
        self.notified_idx = self.avail_idx;
        if need {
            self.t.write32(reg::QUEUE_NOTIFY, self.index as u32);
            self.notifies += 1;
        }
        need
    }

    /// Ask for a used-buffer notification at the next used entry. Returns true if entries are
    /// already pending (then the caller should not sleep).
    pub fn enable_notify(&mut self) -> bool {
        unsafe {
            if self.event_idx {
                write_volatile(self.used_event_ptr(), self.last_used);
            } else {
                write_volatile(addr_of_mut!((*self.mem).avail.flags), 0);
            }
        }
        fence(Ordering::SeqCst);
        self.pending() != 0
    }

    /// Back to "never notify" (used_event one behind what we consumed).
    pub fn disable_notify(&mut self) {
        unsafe {
            if self.event_idx {
                write_volatile(self.used_event_ptr(), self.last_used.wrapping_sub(1));
            } else {
                write_volatile(addr_of_mut!((*self.mem).avail.flags), VIRTQ_AVAIL_F_NO_INTERRUPT);
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Ready {
    /// A frame in one buffer: descriptor `id`, `len` frame bytes after the header.
    Single { id: u16, len: usize },
    /// A frame merged from several buffers into `NetMem::merge` (buffers already recycled).
    Merged { len: usize },
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RxStats {
    pub frames: u64,
    pub merged: u64,
    pub dropped: u64,
    pub bad_entries: u64,
}

pub struct RxQueue<T: Transport> {
    pub q: Virtq<T>,
    bufs: *mut [u8; BUF_SIZE],
    merge: *mut u8,
    mergeable: bool,
    ready: Option<Ready>,
    pub stats: RxStats,
}

impl<T: Transport> RxQueue<T> {
    /// Post every buffer (descriptor i <-> buffer i, device-writable, for good).
    fn fill(&mut self) {
        for id in 0..self.q.size {
            let addr = unsafe { self.bufs.add(id as usize) } as u64;
            self.q.write_desc(id, Desc { addr, len: BUF_SIZE as u32, flags: VIRTQ_DESC_F_WRITE, next: 0 });
            self.q.push(id);
        }
    }

    #[inline]
    fn buf(&self, id: u16) -> *mut u8 {
        unsafe { self.bufs.add(id as usize) as *mut u8 }
    }

    #[inline]
    fn recycle(&mut self, id: u16) {
        self.q.push(id);
    }

    /// Is a complete frame ready? Drops malformed ones on the way.
    pub fn poll_ready(&mut self) -> bool {
        if self.ready.is_some() {
            return true;
        }
        loop {
            let pending = self.q.pending();
            if pending == 0 {
                return false;
            }
            let at = self.q.last_used;
            let e = self.q.used_elem(at);
            if e.id >= self.q.size as u32 {
                // Not a descriptor we own: skip the entry, nothing to recycle.
                self.q.last_used = at.wrapping_add(1);
                self.stats.bad_entries += 1;
                continue;
            }
            let id = e.id as u16;
            let len = (e.len as usize).min(BUF_SIZE);
            if len < NET_HDR_LEN {
                self.q.last_used = at.wrapping_add(1);
                self.recycle(id);
                self.stats.dropped += 1;
                continue;
            }
            let nb = if self.mergeable {
                // num_buffers: the last field of the header.
                let p = unsafe { self.buf(id).add(10) } as *const u16;
                (unsafe { read_volatile(p) }).max(1)
            } else {
                1
            };
            if nb > self.q.size {
                self.q.last_used = at.wrapping_add(1);
                self.recycle(id);
                self.stats.dropped += 1;
                continue;
            }
            if nb > pending {
                return false; // the rest of a merged frame is not published yet
            }
            if nb == 1 {
                self.q.last_used = at.wrapping_add(1);
                self.ready = Some(Ready::Single { id, len: len - NET_HDR_LEN });
                return true;
            }
            // Merge nb buffers; only the first carries the header.
            let mut total = 0usize;
            let mut ok = true;
            for k in 0..nb {
                let (kid, src, n) = if k == 0 {
                    (id, unsafe { self.buf(id).add(NET_HDR_LEN) }, len - NET_HDR_LEN)
                } else {
                    let ek = self.q.used_elem(at.wrapping_add(k));
                    if ek.id >= self.q.size as u32 {
                        self.stats.bad_entries += 1;
                        ok = false;
                        continue;
                    }
                    let kid = ek.id as u16;
                    (kid, self.buf(kid), (ek.len as usize).min(BUF_SIZE))
                };
                if ok && total + n <= MERGE_MAX {
                    unsafe { core::ptr::copy_nonoverlapping(src, self.merge.add(total), n) };
                    total += n;
                } else {
                    ok = false;
                }
                self.recycle(kid);
            }
            self.q.last_used = at.wrapping_add(nb);
            if ok {
                self.stats.merged += 1;
                self.ready = Some(Ready::Merged { len: total });
                return true;
            }
            self.stats.dropped += 1;
        }
    }

    /// Hand the ready frame to `f`, then give its buffer back to the device.
    pub fn consume<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if self.ready.is_none() && !self.poll_ready() {
            return None;
        }
        let r = match self.ready.take()? {
            Ready::Single { id, len } => {
                let frame = unsafe { core::slice::from_raw_parts(self.buf(id).add(NET_HDR_LEN), len) };
                let r = f(frame);
                self.recycle(id);
                r
            }
            Ready::Merged { len } => {
                let frame = unsafe { core::slice::from_raw_parts(self.merge, len) };
                f(frame)
            }
        };
        self.stats.frames += 1;
        Some(r)
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct TxStats {
    pub frames: u64,
    pub dropped: u64,
    pub bad_entries: u64,
}

pub struct TxQueue<T: Transport> {
    pub q: Virtq<T>,
    bufs: *mut [u8; BUF_SIZE],
    scratch: *mut u8,
    free: [u16; QSIZE],
    nfree: u16,
    in_flight: [bool; QSIZE],
    pub stats: TxStats,
}

impl<T: Transport> TxQueue<T> {
    fn init(&mut self) {
        for id in 0..self.q.size {
            let addr = unsafe { self.bufs.add(id as usize) } as u64;
            self.q.write_desc(id, Desc { addr, len: 0, flags: 0, next: 0 });
            self.free[id as usize] = id;
        }
        self.nfree = self.q.size;
    }

    /// Take back the buffers the device is done with. Returns how many.
    pub fn reclaim(&mut self) -> usize {
        let used = self.q.used_idx();
        let mut n = 0;
        while self.q.last_used != used {
            let e = self.q.used_elem(self.q.last_used);
            self.q.last_used = self.q.last_used.wrapping_add(1);
            let id = e.id as usize;
            if id < self.q.size as usize && self.in_flight[id] {
                self.in_flight[id] = false;
                self.free[self.nfree as usize] = id as u16;
                self.nfree += 1;
                n += 1;
            } else {
                self.stats.bad_entries += 1;
            }
        }
        n
    }

    pub fn free_slots(&self) -> u16 {
        self.nfree
    }

    /// Room for one more frame (reclaiming if needed)?
    pub fn can_send(&mut self) -> bool {
        if self.nfree == 0 {
            self.reclaim();
        }
        self.nfree > 0
    }

    /// Build a `len`-byte frame with `f` and make it available to the device. With no free
    /// slot (or an oversized frame) `f` writes into a scratch buffer and the frame is dropped.
    pub fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        if len + NET_HDR_LEN > BUF_SIZE || !self.can_send() {
            self.stats.dropped += 1;
            let n = len.min(BUF_SIZE);
            return f(unsafe { core::slice::from_raw_parts_mut(self.scratch, n) });
        }
        self.nfree -= 1;
        let id = self.free[self.nfree as usize];
        let buf = unsafe { core::slice::from_raw_parts_mut(self.bufs.add(id as usize) as *mut u8, NET_HDR_LEN + len) };
        // virtio_net_hdr: no checksum offload, no GSO, num_buffers 0 (ignored on transmit).
        buf[..NET_HDR_LEN].fill(0);
        let r = f(&mut buf[NET_HDR_LEN..]);
        self.q.set_desc_len(id, (NET_HDR_LEN + len) as u32);
        self.in_flight[id as usize] = true;
        self.q.push(id);
        self.stats.frames += 1;
        r
    }
}

/// The virtio-net device: receive queue 0, transmit queue 1.
pub struct VirtioNet<T: Transport> {
    pub rx: RxQueue<T>,
    pub tx: TxQueue<T>,
    pub mac: [u8; 6],
    /// Negotiated features.
    pub features: u64,
    tx_armed: bool,
}

/// Features the driver accepts (if offered). VERSION_1 is required.
pub const DRIVER_FEATURES: u64 =
    feature::VERSION_1 | feature::NET_MAC | feature::NET_MRG_RXBUF | feature::RING_EVENT_IDX;

impl<T: Transport + Clone> VirtioNet<T> {
    /// Is there a (version-2) virtio-net device behind `t`?
    pub fn probe(t: &T) -> Result<(), VirtioError> {
        let magic = t.read32(reg::MAGIC);
        if magic != MMIO_MAGIC {
            return Err(VirtioError::BadMagic(magic));
        }
        let version = t.read32(reg::VERSION);
        if version != 2 {
            return Err(VirtioError::UnsupportedVersion(version));
        }
        if t.read32(reg::DEVICE_ID) != DEVICE_ID_NET {
            return Err(VirtioError::NoNetDevice);
        }
        Ok(())
    }

    /// Reset, negotiate, set up both queues, post all receive buffers, DRIVER_OK.
    /// `mem` must be zeroed, exclusively ours, and stay put for as long as the device runs.
    /// `fallback_mac` is used if the device does not offer VIRTIO_NET_F_MAC.
    ///
    /// # Safety
    /// `mem` must be valid for the life of the returned driver and not used by anything else.
    pub unsafe fn init(t: T, mem: *mut NetMem, fallback_mac: [u8; 6]) -> Result<Self, VirtioError> {
        Self::probe(&t)?;
        t.write32(reg::STATUS, 0);
        let mut tries = 0;
        while t.read32(reg::STATUS) != 0 {
            tries += 1;
            if tries > 1000 {
                return Err(VirtioError::ResetTimeout);
            }
        }
        let mut st = status::ACKNOWLEDGE;
        t.write32(reg::STATUS, st);
        st |= status::DRIVER;
        t.write32(reg::STATUS, st);

        t.write32(reg::DEVICE_FEATURES_SEL, 0);
        let lo = t.read32(reg::DEVICE_FEATURES) as u64;
        t.write32(reg::DEVICE_FEATURES_SEL, 1);
        let hi = t.read32(reg::DEVICE_FEATURES) as u64;
        let offered = hi << 32 | lo;
        if offered & feature::VERSION_1 == 0 {
            t.write32(reg::STATUS, st | status::FAILED);
            return Err(VirtioError::NoVersion1(offered));
        }
        let features = offered & DRIVER_FEATURES;
        t.write32(reg::DRIVER_FEATURES_SEL, 0);
        t.write32(reg::DRIVER_FEATURES, features as u32);
        t.write32(reg::DRIVER_FEATURES_SEL, 1);
        t.write32(reg::DRIVER_FEATURES, (features >> 32) as u32);
        st |= status::FEATURES_OK;
        t.write32(reg::STATUS, st);
        if t.read32(reg::STATUS) & status::FEATURES_OK == 0 {
            t.write32(reg::STATUS, st | status::FAILED);
            return Err(VirtioError::FeaturesRejected(features));
        }

        let mac = if features & feature::NET_MAC != 0 { read_config_mac(&t) } else { fallback_mac };

        let event_idx = features & feature::RING_EVENT_IDX != 0;
        let fail = |e| {
            t.write32(reg::STATUS, st | status::FAILED);
            e
        };
        let rxq = Virtq::setup(t.clone(), RX_QUEUE, addr_of_mut!((*mem).rxq), event_idx).map_err(fail)?;
        let txq = Virtq::setup(t.clone(), TX_QUEUE, addr_of_mut!((*mem).txq), event_idx).map_err(fail)?;
        let mut dev = VirtioNet {
            rx: RxQueue {
                q: rxq,
                bufs: addr_of_mut!((*mem).rx_bufs) as *mut [u8; BUF_SIZE],
                merge: addr_of_mut!((*mem).merge) as *mut u8,
                mergeable: features & feature::NET_MRG_RXBUF != 0,
                ready: None,
                stats: RxStats::default(),
            },
            tx: TxQueue {
                q: txq,
                bufs: addr_of_mut!((*mem).tx_bufs) as *mut [u8; BUF_SIZE],
                scratch: addr_of_mut!((*mem).scratch) as *mut u8,
                free: [0; QSIZE],
                nfree: 0,
                in_flight: [false; QSIZE],
                stats: TxStats::default(),
            },
            mac,
            features,
            tx_armed: false,
        };
        dev.tx.init();

        st |= status::DRIVER_OK;
        t.write32(reg::STATUS, st);
        if t.read32(reg::STATUS) & status::DEVICE_NEEDS_RESET != 0 {
            return Err(VirtioError::NeedsReset);
        }
        dev.rx.fill();
        dev.flush();
        Ok(dev)
    }
}

impl<T: Transport> VirtioNet<T> {
    /// Notify the device about newly available buffers on either queue, if it wants that.
    pub fn flush(&mut self) {
        self.rx.q.notify_if_needed();
        self.tx.q.notify_if_needed();
    }

    /// Before idling: ask for a used-buffer signal on the receive queue (and on the transmit
    /// queue if it is full). Returns true if work is already pending (do not idle).
    pub fn arm(&mut self) -> bool {
        let mut pending = self.rx.ready.is_some();
        pending |= self.rx.q.enable_notify();
        self.tx_armed = self.tx.nfree == 0 && self.tx.reclaim() == 0;
        if self.tx_armed {
            pending |= self.tx.q.enable_notify();
        }
        pending
    }

    /// After idling (or when `arm` found work): back to no signals.
    pub fn disarm(&mut self) {
        self.rx.q.disable_notify();
        if self.tx_armed {
            self.tx.q.disable_notify();
            self.tx_armed = false;
        }
    }

    /// A counter that changes whenever a frame moved (for "did this poll round do anything").
    pub fn activity(&self) -> u64 {
        self.rx.stats.frames + self.rx.stats.dropped + self.tx.stats.frames + self.tx.stats.dropped
    }
}

/// Read the MAC from the config space with 8-bit accesses, retrying on a generation change.
fn read_config_mac<T: Transport>(t: &T) -> [u8; 6] {
    loop {
        let g0 = t.read32(reg::CONFIG_GENERATION);
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = t.read8(reg::CONFIG + i);
        }
        if t.read32(reg::CONFIG_GENERATION) == g0 {
            return mac;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{zeroed_static, DevQueue, MockDevice, MockTransport};
    use core::mem::{offset_of, size_of};

    #[test]
    fn ring_layout() {
        assert_eq!(size_of::<Desc>(), 16);
        assert_eq!(offset_of!(QueueMem, avail), 4096);
        assert_eq!(offset_of!(QueueMem, used), 8192);
        assert_eq!(offset_of!(AvailRing, ring), 4);
        assert_eq!(offset_of!(UsedRing, ring), 4);
        assert_eq!(offset_of!(UsedRing, avail_event), 4 + 8 * QSIZE);
        assert_eq!(size_of::<QueueMem>(), 3 * 4096);
        assert_eq!(offset_of!(NetMem, rx_bufs) % 4096, 0);
    }

    #[test]
    fn need_event_cases() {
        // Device asks to be notified when idx passes 5 (event = 5 means "after entry 5 is added").
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 10, 3));
        assert!(!need_event(5, 5, 3));
        assert!(!need_event(5, 12, 7));
        // Wrap-around.
        assert!(need_event(0xffff, 1, 0xfffe));
        assert!(need_event(0xfffe, 0, 0xfff0));
        assert!(!need_event(0xfffe, 0xfffe, 0xfff0));
        // "Never": event one behind old.
        for old in [0u16, 100, 0xffff] {
            for d in 0..300u16 {
                assert!(!need_event(old.wrapping_sub(1), old.wrapping_add(d), old));
            }
        }
        // "Next": event == old.
        assert!(need_event(7, 8, 7));
        assert!(!need_event(7, 7, 7));
    }

    fn init_dev(features: u64, qmax: u32) -> (VirtioNet<MockTransport>, MockTransport) {
        let dev = MockDevice::new(features, qmax, [2, 0, 0, 0, 0, 9]);
        let t = MockTransport(dev);
        let mem = zeroed_static::<NetMem>();
        let net = unsafe { VirtioNet::init(t.clone(), mem, [2, 0, 0, 0, 0, 1]) }.unwrap();
        (net, t)
    }

    #[test]
    fn init_negotiates_and_sets_up_queues() {
        let offered = DRIVER_FEATURES | (1 << 0) | (1 << 28) | (1 << 16);
        let (net, t) = init_dev(offered, 1024);
        let regs = t.0.regs.lock().unwrap();
        assert_eq!(regs.driver_features, DRIVER_FEATURES);
        assert_eq!(regs.status, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
        assert_eq!(net.mac, [2, 0, 0, 0, 0, 9]);
        for q in 0..2 {
            assert!(regs.queues[q].ready);
            assert_eq!(regs.queues[q].num, 256);
            assert_eq!(regs.queues[q].desc % 16, 0);
            assert_eq!(regs.queues[q].device % 4096, 0);
        }
        // All receive buffers posted and the device told (its avail_event starts at 0).
        assert_eq!(regs.notifies[0], 1);
        assert_eq!(regs.notifies[1], 0);
        drop(regs);
        let rxq = DevQueue::from_regs(&t.0, 0);
        assert_eq!(rxq.avail_idx(), 256);
        assert_eq!(net.tx.free_slots(), 256);
    }

    #[test]
    fn init_without_optional_features() {
        let (net, t) = init_dev(feature::VERSION_1, 64);
        assert_eq!(net.features, feature::VERSION_1);
        assert_eq!(net.mac, [2, 0, 0, 0, 0, 1], "fallback MAC when F_MAC is not offered");
        assert_eq!(t.0.regs.lock().unwrap().queues[0].num, 64);
        assert_eq!(net.rx.q.size(), 64);
    }

    #[test]
    fn init_refuses_legacy_devices() {
        let dev = MockDevice::new(feature::NET_MAC | feature::RING_EVENT_IDX, 256, [2, 0, 0, 0, 0, 9]);
        let t = MockTransport(dev);
        let mem = zeroed_static::<NetMem>();
        let err = unsafe { VirtioNet::init(t.clone(), mem, [0; 6]) }.err().unwrap();
        assert!(matches!(err, VirtioError::NoVersion1(_)));
        assert!(format!("{err}").contains("VERSION_1"));
        assert_ne!(t.0.regs.lock().unwrap().status & status::FAILED, 0);

        let dev = MockDevice::new(DRIVER_FEATURES, 256, [0; 6]);
        dev.regs.lock().unwrap().version = 1;
        let err = unsafe { VirtioNet::init(MockTransport(dev), zeroed_static::<NetMem>(), [0; 6]) }.err().unwrap();
        assert_eq!(err, VirtioError::UnsupportedVersion(1));
        // A non-queue-size power of two is rounded down.
        let (net, _t) = init_dev(DRIVER_FEATURES, 200);
        assert_eq!(net.rx.q.size(), 128);
    }

    #[test]
    fn tx_kicks_follow_avail_event() {
        let (mut net, t) = init_dev(DRIVER_FEATURES, 256);
        let mut txq = DevQueue::from_regs(&t.0, 1);
        let kicks = || t.0.regs.lock().unwrap().notifies[1];
        // Device wants a kick when avail idx passes 0 (initial avail_event = 0).
        net.tx.send(60, |b| b.fill(1));
        net.tx.send(60, |b| b.fill(2));
        net.flush();
        assert_eq!(kicks(), 1);
        // Device is polling: it says "notify me only after entry 10".
        txq.set_avail_event(10);
        for _ in 0..5 {
            net.tx.send(60, |b| b.fill(3));
            net.flush();
        }
        assert_eq!(kicks(), 1, "idx 2..7 does not cross 10");
        for _ in 0..5 {
            net.tx.send(60, |b| b.fill(4));
        }
        net.flush();
        assert_eq!(kicks(), 2, "idx 7..12 crosses 10: one kick for the batch");
        net.flush();
        assert_eq!(kicks(), 2, "nothing new: no kick");
        // Frames carry a zeroed 12-byte header.
        let (_head, bytes) = txq.pop_frame().unwrap();
        assert_eq!(bytes.len(), NET_HDR_LEN + 60);
        assert!(bytes[..NET_HDR_LEN].iter().all(|&b| b == 0));
        assert!(bytes[NET_HDR_LEN..].iter().all(|&b| b == 1));
    }

    #[test]
    fn kicks_without_event_idx_follow_used_flags() {
        let (mut net, t) = init_dev(feature::VERSION_1, 256);
        let mut txq = DevQueue::from_regs(&t.0, 1);
        let kicks = || t.0.regs.lock().unwrap().notifies[1];
        net.tx.send(60, |_| ());
        net.flush();
        assert_eq!(kicks(), 1);
        txq.set_used_flags(VIRTQ_USED_F_NO_NOTIFY);
        net.tx.send(60, |_| ());
        net.flush();
        assert_eq!(kicks(), 1);
        txq.set_used_flags(0);
        net.tx.send(60, |_| ());
        net.flush();
        assert_eq!(kicks(), 2);
    }

    #[test]
    fn tx_ring_full_then_reclaim() {
        let (mut net, t) = init_dev(DRIVER_FEATURES, 8);
        let mut txq = DevQueue::from_regs(&t.0, 1);
        for i in 0..8u8 {
            assert!(net.tx.can_send());
            net.tx.send(100, |b| b.fill(i));
        }
        assert!(!net.tx.can_send());
        // Full: the frame goes to scratch and is counted as dropped.
        net.tx.send(100, |b| b.fill(0xee));
        assert_eq!(net.tx.stats.dropped, 1);
        // Device completes three, out of order.
        let mut heads = Vec::new();
        while let Some((h, _)) = txq.pop_frame() {
            heads.push(h);
        }
        assert_eq!(heads.len(), 8);
        for &h in [heads[5], heads[1], heads[7]].iter() {
            txq.push_used(h as u32, 0);
        }
        txq.publish_used();
        assert!(net.tx.can_send());
        assert_eq!(net.tx.free_slots(), 3);
        // A bogus or duplicate completion is ignored.
        txq.push_used(heads[5] as u32, 0);
        txq.push_used(999, 0);
        txq.publish_used();
        assert_eq!(net.tx.reclaim(), 0);
        assert_eq!(net.tx.stats.bad_entries, 2);
        // Reused slots wrap the avail ring correctly.
        for i in 0..3u8 {
            net.tx.send(50, |b| b.fill(0x40 + i));
        }
        for i in 0..3u8 {
            let (_, bytes) = txq.pop_frame().unwrap();
            assert_eq!(bytes.len(), NET_HDR_LEN + 50);
            assert!(bytes[NET_HDR_LEN..].iter().all(|&b| b == 0x40 + i));
        }
    }

    #[test]
    fn rx_single_and_merged_frames() {
        let (mut net, t) = init_dev(DRIVER_FEATURES, 16);
        let mut rxq = DevQueue::from_regs(&t.0, 0);
        let frame_a: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let frame_b: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        assert!(rxq.deliver(&frame_a, BUF_SIZE, true));
        // 12 + 5000 bytes in 2048-byte buffers: 3 buffers, num_buffers = 3.
        assert!(rxq.deliver(&frame_b, BUF_SIZE, true));
        assert!(net.rx.poll_ready());
        assert_eq!(net.rx.consume(|f| f.to_vec()).unwrap(), frame_a);
        assert_eq!(net.rx.consume(|f| f.to_vec()).unwrap(), frame_b);
        assert!(net.rx.consume(|f| f.len()).is_none());
        assert_eq!(net.rx.stats.frames, 2);
        assert_eq!(net.rx.stats.merged, 1);
        // Every buffer went back: 16 initially, 4 used, 4 recycled.
        assert_eq!(rxq.avail_idx(), 16 + 4);
        // Small chunks: 12 + 1000 bytes in 100-byte pieces, published one entry at a time.
        let mut entries = rxq.deliver_split(&frame_a, 100);
        let mut seen = false;
        while !entries.is_empty() {
            rxq.publish_one(&mut entries);
            if !entries.is_empty() {
                assert!(!net.rx.poll_ready(), "incomplete merged frame must wait");
            } else {
                seen = net.rx.poll_ready();
            }
        }
        assert!(seen);
        assert_eq!(net.rx.consume(|f| f.to_vec()).unwrap(), frame_a);
    }

    #[test]
    fn rx_drops_malformed_entries() {
        let (mut net, t) = init_dev(DRIVER_FEATURES, 16);
        let mut rxq = DevQueue::from_regs(&t.0, 0);
        // A used entry shorter than the header, one with a bogus id, then a good frame.
        let h = rxq.pop_avail().unwrap();
        rxq.push_used(h as u32, 4);
        rxq.push_used(777, 100);
        rxq.publish_used();
        assert!(rxq.deliver(b"hello, world, this is a frame", BUF_SIZE, true));
        assert_eq!(net.rx.consume(|f| f.to_vec()).unwrap(), b"hello, world, this is a frame");
        assert_eq!(net.rx.stats.dropped, 1);
        assert_eq!(net.rx.stats.bad_entries, 1);
    }

    #[test]
    fn idle_arming_uses_used_event() {
        let (mut net, t) = init_dev(DRIVER_FEATURES, 16);
        let mut rxq = DevQueue::from_regs(&t.0, 0);
        assert_eq!(rxq.used_event(), 0xffff, "never, initially");
        assert!(!net.arm());
        assert_eq!(rxq.used_event(), 0, "armed: next used entry");
        net.disarm();
        assert_eq!(rxq.used_event(), 0xffff);
        assert!(rxq.deliver(&[1u8; 60], BUF_SIZE, true));
        assert!(net.arm(), "a frame is pending: do not idle");
        net.disarm();
        net.rx.consume(|_| ()).unwrap();
        assert!(!net.arm());
        assert_eq!(rxq.used_event(), 1);
        net.disarm();
        assert_eq!(rxq.used_event(), 0);
    }
}
