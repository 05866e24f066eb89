//! The split virtqueue from the device side, written for bursts.
//!
//! `Vring` is a ring's state as the frontend configured it (size, addresses, where the
//! device is in it); the vhost-user handler owns its setup. `Burst` is that ring opened for
//! one burst of the frame path: its three areas translated to host addresses once, the
//! guest's avail index read once, descriptors read straight from the table, used entries
//! written as they complete and published with one index store, and one notification
//! decision at the end.
//!
//! Why our own and not `virtio-queue`: its iterators translate every ring access and every
//! descriptor through the memory map again, and `add_used` stores the used index per entry;
//! under DPDK testpmd traffic that generic access was about half of the switch's time per
//! 64-byte frame (docs/performance.md). The rules a chain must follow are the same (see
//! `walk`), and each is under a test.

use std::sync::atomic::{fence, AtomicU16, Ordering};

use super::guest_map::{copy_bytes, GuestMap, Segment};
use crate::prefetch::{prefetch, prefetch_write};

/// Why a descriptor chain was refused (by the walk here, or by what `chain.rs` needs of a
/// whole frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor chain is broken: a head or next index outside its table, a nested, chained or malformed indirect table")]
    Broken,
    #[error("device-writable descriptor in a transmit chain")]
    WritableInTx,
    #[error("device-readable descriptor in a receive chain")]
    ReadableInRx,
    #[error("zero-length descriptor")]
    ZeroLength,
    #[error("buffer at {addr:#x} of {len} bytes is outside guest memory")]
    OutOfRange { addr: u64, len: u32 },
    #[error("frame of {len} bytes is shorter than its headers")]
    Runt { len: u32 },
    #[error("frame of {len}+ bytes exceeds the {max}-byte limit")]
    TooBig { len: u64, max: u64 },
    #[error("descriptor chain is longer than {0} descriptors (or loops)")]
    TooLong(u16),
}

/// `VIRTQ_DESC_F_NEXT`, `_WRITE`, `_INDIRECT`.
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
/// `VIRTQ_USED_F_NO_NOTIFY`: the device does not want kicks (without EVENT_IDX).
const USED_F_NO_NOTIFY: u16 = 1;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`: the driver does not want interrupts (without EVENT_IDX).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Largest ring a frontend may configure (QEMU allows up to 1024).
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// Why a ring cannot be used for a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("the ring's {area} at {addr:#x} is not inside one guest memory region")]
    OutsideMemory { area: &'static str, addr: u64 },
    #[error("the avail index {avail} is {ahead} entries ahead of the device, more than the ring's {size}")]
    AvailTooFar { avail: u16, ahead: u16, size: u16 },
    #[error("{area} address {addr:#x} is not aligned to {align} bytes")]
    Misaligned {
        area: &'static str,
        addr: u64,
        align: u64,
    },
    #[error("queue size {0} is not a power of two between 1 and {MAX_QUEUE_SIZE}")]
    BadSize(u32),
}

/// A split ring's device-side state.
#[derive(Debug, Clone)]
pub struct Vring {
    pub size: u16,
    /// Guest-physical addresses of the descriptor table, avail ring and used ring.
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// All three addresses were set.
    pub addressed: bool,
    /// Next avail entry the device takes, and next used entry it writes.
    pub next_avail: u16,
    pub next_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// The used index at the last notification decision (EVENT_IDX), None after a reset.
    signalled_used: Option<u16>,
    /// The dirty log while the frontend migrates (VHOST_F_LOG_ALL acked and a log set):
    /// pages this ring's bursts write are marked in it.
    pub log: Option<std::sync::Arc<super::dirty_log::DirtyLog>>,
}

impl Default for Vring {
    fn default() -> Self {
        Vring {
            size: MAX_QUEUE_SIZE,
            desc: 0,
            avail: 0,
            used: 0,
            addressed: false,
            next_avail: 0,
            next_used: 0,
            event_idx: false,
            signalled_used: None,
            log: None,
        }
    }
}

impl Vring {
    pub fn set_size(&mut self, num: u32) -> Result<(), RingError> {
        if num == 0 || num > u32::from(MAX_QUEUE_SIZE) || !num.is_power_of_two() {
            return Err(RingError::BadSize(num));
        }
        self.size = num as u16;
        Ok(())
    }

    /// Sets the three areas' addresses, checking the alignment the spec requires (which
    /// also makes every index and entry access in them naturally aligned).
    pub fn set_addresses(&mut self, desc: u64, avail: u64, used: u64) -> Result<(), RingError> {
        for (area, addr, align) in [
            ("descriptor table", desc, 16),
            ("avail ring", avail, 2),
            ("used ring", used, 4),
        ] {
            if !addr.is_multiple_of(align) {
                return Err(RingError::Misaligned { area, addr, align });
            }
        }
        (self.desc, self.avail, self.used) = (desc, avail, used);
        self.addressed = true;
        Ok(())
    }

    /// Continues from `base` (SET_VRING_BASE).
    pub fn set_base(&mut self, base: u16) {
        self.next_avail = base;
        self.next_used = base;
        self.signalled_used = None;
    }

    /// The used index the guest's ring shows, to continue from when a ring starts (it may
    /// have run with another backend before).
    pub fn sync_used_from_guest(&mut self, map: &GuestMap) {
        if let Ok(burst) = Burst::open(self, map) {
            let used = u16::from_le(burst.used_idx().load(Ordering::Acquire));
            burst.ring.next_used = used;
        }
        self.signalled_used = None;
    }
}

/// One descriptor as read from a table.
#[derive(Debug, Clone, Copy)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A descriptor table: host address and number of entries.
#[derive(Debug, Clone, Copy)]
struct Table {
    host: usize,
    len: u16,
}

impl Table {
    /// Reads entry `index` (< `len`).
    #[inline]
    fn read(&self, index: u16) -> Descriptor {
        debug_assert!(index < self.len);
        let mut b = [0u8; 16];
        // SAFETY: the table was translated for `len` entries of 16 bytes and `index < len`;
        // the bytes are copied out, so a guest changing them meanwhile changes only our copy's
        // values, never what we validated afterwards.
        unsafe {
            copy_bytes(
                self.host + 16 * usize::from(index),
                b.as_mut_ptr() as usize,
                16,
            )
        };
        Descriptor {
            addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

/// A ring opened for one burst: its areas translated, the guest's memory map held.
pub struct Burst<'a> {
    ring: &'a mut Vring,
    map: &'a GuestMap,
    table: Table,
    avail: usize,
    used: usize,
    /// The avail index as last read.
    avail_idx: u16,
}

impl<'a> Burst<'a> {
    /// Translates the ring's areas; each must lie inside one memory region.
    pub fn open(ring: &'a mut Vring, map: &'a GuestMap) -> Result<Burst<'a>, RingError> {
        let size = u64::from(ring.size);
        let area = |area: &'static str, addr: u64, len: u64| {
            map.host(addr, len)
                .ok_or(RingError::OutsideMemory { area, addr })
        };
        // Sizes with the EVENT_IDX fields, which are used whether or not it was negotiated
        // (they are part of the layout a frontend allocates).
        let desc = area("descriptor table", ring.desc, 16 * size)?;
        let avail = area("avail ring", ring.avail, 6 + 2 * size)?;
        let used = area("used ring", ring.used, 6 + 8 * size)?;
        // The index fields are accessed as atomics: their host addresses must be aligned,
        // not only their guest addresses (regions are page-aligned, so this always holds;
        // checked here because the atomics' soundness rests on it).
        for (area, host, align, addr) in [
            ("avail ring", avail, 2, ring.avail),
            ("used ring", used, 4, ring.used),
        ] {
            if !host.is_multiple_of(align) {
                return Err(RingError::Misaligned {
                    area,
                    addr,
                    align: align as u64,
                });
            }
        }
        let avail_idx = ring.next_avail;
        Ok(Burst {
            table: Table {
                host: desc,
                len: ring.size,
            },
            ring,
            map,
            avail,
            used,
            avail_idx,
        })
    }

    pub fn size(&self) -> u16 {
        self.ring.size
    }

    pub fn map(&self) -> &GuestMap {
        self.map
    }

    fn u16_at(&self, host: usize) -> &AtomicU16 {
        // SAFETY: every caller passes an address inside a ring area translated in `open`,
        // 2-byte aligned (the areas' alignment is checked when set, and the offsets are
        // even). The guest writes these fields concurrently, hence an atomic.
        unsafe { AtomicU16::from_ptr(host as *mut u16) }
    }

    fn avail_flags(&self) -> u16 {
        self.u16_at(self.avail).load(Ordering::Relaxed)
    }

    fn avail_idx_field(&self) -> &AtomicU16 {
        self.u16_at(self.avail + 2)
    }

    fn used_event(&self) -> &AtomicU16 {
        self.u16_at(self.avail + 4 + 2 * usize::from(self.ring.size))
    }

    fn used_flags(&self) -> &AtomicU16 {
        self.u16_at(self.used)
    }

    fn used_idx(&self) -> &AtomicU16 {
        self.u16_at(self.used + 2)
    }

    fn avail_event(&self) -> &AtomicU16 {
        self.u16_at(self.used + 4 + 8 * usize::from(self.ring.size))
    }

    /// Reads the guest's avail index (once per burst; again when the caller ran out) and
    /// returns how many chains wait. Acquire: the entries and descriptors the guest wrote
    /// before publishing the index are visible after it.
    pub fn refresh(&mut self) -> Result<u16, RingError> {
        let idx = u16::from_le(self.avail_idx_field().load(Ordering::Acquire));
        let ahead = idx.wrapping_sub(self.ring.next_avail);
        if ahead > self.ring.size {
            return Err(RingError::AvailTooFar {
                avail: idx,
                ahead,
                size: self.ring.size,
            });
        }
        self.avail_idx = idx;
        Ok(ahead)
    }

    /// Chains waiting as of the last `refresh`.
    pub fn pending(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.ring.next_avail)
    }

    /// Takes the next chain's head index (the caller checked `pending() > 0`).
    pub fn pop(&mut self) -> u16 {
        let slot = usize::from(self.ring.next_avail & (self.ring.size - 1));
        let head = self
            .u16_at(self.avail + 4 + 2 * slot)
            .load(Ordering::Relaxed);
        self.ring.next_avail = self.ring.next_avail.wrapping_add(1);
        u16::from_le(head)
    }

    /// Starts loading the descriptors of the next `n` waiting chains (as of the last
    /// `refresh`), so walking them does not wait for each in turn: the guest's core wrote
    /// them, so each is a cache miss.
    pub fn prefetch_chains(&self, n: u16) {
        let n = n.min(self.pending());
        for i in 0..n {
            let slot = usize::from(self.ring.next_avail.wrapping_add(i) & (self.ring.size - 1));
            let head = u16::from_le(
                self.u16_at(self.avail + 4 + 2 * slot)
                    .load(Ordering::Relaxed),
            );
            if head < self.table.len {
                prefetch(self.table.host + 16 * usize::from(head));
            }
        }
    }

    /// Starts taking for writing the first `bytes` (at most four cache lines) of the
    /// buffers of the next `n` waiting chains (as of the last `refresh`), so the copies
    /// into them do not each wait for their lines (see [`prefetch_write`]). Reads the head
    /// descriptors, which the guest may change: only hints depend on them.
    pub fn prefetch_buffers(&self, n: u16, bytes: u32) {
        let n = n.min(self.pending());
        for i in 0..n {
            let slot = usize::from(self.ring.next_avail.wrapping_add(i) & (self.ring.size - 1));
            let head = u16::from_le(
                self.u16_at(self.avail + 4 + 2 * slot)
                    .load(Ordering::Relaxed),
            );
            if head >= self.table.len {
                continue;
            }
            let desc = self.table.read(head);
            if desc.flags & DESC_F_INDIRECT != 0 {
                continue;
            }
            let len = desc.len.min(bytes).max(1);
            if let Some(host) = self.map.host(desc.addr, u64::from(len)) {
                let first = host & !63;
                let last = (host + len as usize - 1) & !63;
                for line in (first..=last).step_by(64).take(4) {
                    prefetch_write(line);
                }
            }
        }
    }

    /// Starts taking for writing the used ring entries the next `n` `push_used` calls
    /// will write.
    pub fn prefetch_used(&self, n: u16) {
        let size = usize::from(self.ring.size);
        let first = usize::from(self.ring.next_used) & (size - 1);
        // Entries are 8 bytes; one hint per cache line they cover (the ring may wrap).
        let mut slot = first;
        let mut left = usize::from(n.min(self.ring.size));
        while left > 0 {
            prefetch_write(self.used + 4 + 8 * slot);
            let in_line = 8 - ((self.used + 4 + 8 * slot) % 64) / 8;
            let step = in_line.min(left);
            left -= step;
            slot = (slot + step) & (size - 1);
        }
    }

    /// Gives back the last `n` chains taken, to be offered again in order.
    pub fn unpop(&mut self, n: u16) {
        self.ring.next_avail = self.ring.next_avail.wrapping_sub(n);
    }

    /// Walks the chain at `head`, checking every descriptor: direction (`device_writes`),
    /// non-zero length, inside guest memory, at most `max_descriptors` of them (a loop ends
    /// here), a `next` inside its table, an indirect table only at the head, whole, of whole
    /// descriptors and not nested, and at most `limit` bytes in all. Appends the buffers to
    /// `segs` (split where memory regions meet) and returns the chain's byte count; on
    /// error `segs` is as it was.
    pub fn walk(
        &self,
        head: u16,
        device_writes: bool,
        limit: u64,
        max_descriptors: u16,
        segs: &mut Vec<Segment>,
    ) -> Result<u64, ChainError> {
        let start = segs.len();
        let result = self.walk_inner(head, device_writes, limit, max_descriptors, segs);
        if result.is_err() {
            segs.truncate(start);
        }
        result
    }

    #[inline]
    fn walk_inner(
        &self,
        head: u16,
        device_writes: bool,
        limit: u64,
        max_descriptors: u16,
        segs: &mut Vec<Segment>,
    ) -> Result<u64, ChainError> {
        let mut table = self.table;
        if head >= table.len {
            return Err(ChainError::Broken);
        }
        let mut desc = table.read(head);
        if desc.flags & DESC_F_INDIRECT != 0 {
            if desc.flags & DESC_F_NEXT != 0 || desc.len == 0 || !desc.len.is_multiple_of(16) {
                return Err(ChainError::Broken);
            }
            let entries = desc.len / 16;
            if entries > u32::from(self.ring.size) {
                return Err(ChainError::TooLong(self.ring.size));
            }
            let host = self
                .map
                .host(desc.addr, u64::from(desc.len))
                .ok_or(ChainError::Broken)?;
            table = Table {
                host,
                len: entries as u16,
            };
            desc = table.read(0);
        }
        let mut total = 0u64;
        let mut count = 0u16;
        loop {
            count += 1;
            // More descriptors than the table holds: the chain loops.
            if count > table.len {
                return Err(ChainError::Broken);
            }
            if count > max_descriptors {
                return Err(ChainError::TooLong(max_descriptors));
            }
            if desc.flags & DESC_F_INDIRECT != 0 {
                return Err(ChainError::Broken);
            }
            if (desc.flags & DESC_F_WRITE != 0) != device_writes {
                return Err(if device_writes {
                    ChainError::ReadableInRx
                } else {
                    ChainError::WritableInTx
                });
            }
            if desc.len == 0 {
                return Err(ChainError::ZeroLength);
            }
            total += u64::from(desc.len);
            if total > limit {
                return Err(ChainError::TooBig {
                    len: total,
                    max: limit,
                });
            }
            if !self.map.segments(desc.addr, desc.len, |s| segs.push(s)) {
                return Err(ChainError::OutOfRange {
                    addr: desc.addr,
                    len: desc.len,
                });
            }
            if desc.flags & DESC_F_NEXT == 0 {
                return Ok(total);
            }
            let index = desc.next;
            if index >= table.len {
                return Err(ChainError::Broken);
            }
            desc = table.read(index);
        }
    }

    /// Returns chain `head` to the guest with `len` bytes written. Not visible to the guest
    /// until `publish`. A head outside the ring cannot be returned (the guest broke it).
    pub fn push_used(&mut self, head: u16, len: u32) {
        if head >= self.ring.size {
            return;
        }
        let slot = usize::from(self.ring.next_used & (self.ring.size - 1));
        let entry = self.used + 4 + 8 * slot;
        let bytes = [u32::from(head).to_le(), len.to_le()];
        // SAFETY: the used ring was translated for `size` entries of 8 bytes and
        // `slot < size`; the guest only reads these bytes.
        unsafe { copy_bytes(bytes.as_ptr() as usize, entry, 8) };
        self.ring.next_used = self.ring.next_used.wrapping_add(1);
    }

    /// Publishes the used entries written so far: one index store. Release: the entries and
    /// the buffers' contents are visible before the index that announces them.
    pub fn publish(&self) {
        self.used_idx()
            .store(self.ring.next_used.to_le(), Ordering::Release);
        self.log_used_ring();
    }

    /// While migrating: the used ring's pages are dirty (entries, index, flags and the avail
    /// event all live there; the whole ring is a page or two, marked once per batch).
    fn log_used_ring(&self) {
        if let Some(log) = &self.ring.log {
            log.mark(self.ring.used, 6 + 8 * u64::from(self.ring.size));
        }
    }

    /// While migrating: the pages under the first `written` bytes of `segs` (a receive
    /// chain's buffers) are dirty.
    pub fn log_written(&self, segs: &[Segment], written: u64) {
        let Some(log) = &self.ring.log else {
            return;
        };
        let mut left = written;
        for seg in segs {
            if left == 0 {
                break;
            }
            let n = left.min(u64::from(seg.len()));
            if let Some(gpa) = self.map.gpa_of(seg.host_addr()) {
                log.mark(gpa, n);
            }
            left -= n;
        }
    }

    /// Whether the guest wants an interrupt for what was published since the last decision:
    /// with EVENT_IDX, its `used_event`; without, the avail ring's NO_INTERRUPT flag.
    pub fn needs_interrupt(&mut self) -> bool {
        // The used index store must be visible before we read what the driver wants (it
        // writes used_event or clears NO_INTERRUPT, then re-reads the used index: one of us
        // sees the other).
        fence(Ordering::SeqCst);
        if !self.ring.event_idx {
            return self.avail_flags() & AVAIL_F_NO_INTERRUPT.to_le() == 0;
        }
        let new = self.ring.next_used;
        let Some(old) = self.ring.signalled_used.replace(new) else {
            return true;
        };
        let event = u16::from_le(self.used_event().load(Ordering::Relaxed));
        // vring_need_event: `event` lies in (old, new].
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    /// Asks the guest not to kick (it is being polled or drained now).
    pub fn disable_kicks(&self) {
        // Stored only when it changes: a poller calls this millions of times a second, and
        // a store would pull the guest's cache line over each time.
        let flags = self.used_flags();
        if !self.ring.event_idx && flags.load(Ordering::Relaxed) != USED_F_NO_NOTIFY.to_le() {
            flags.store(USED_F_NO_NOTIFY.to_le(), Ordering::Relaxed);
            self.log_used_ring();
        }
    }

    /// Asks the guest to kick for chains after the ones taken so far; true if chains arrived
    /// meanwhile (the caller should go on draining instead of waiting).
    pub fn enable_kicks(&mut self) -> bool {
        if self.ring.event_idx {
            self.avail_event()
                .store(self.ring.next_avail.to_le(), Ordering::Relaxed);
        } else {
            self.used_flags().store(0, Ordering::Relaxed);
        }
        self.log_used_ring();
        fence(Ordering::SeqCst);
        // A broken avail index is not work: the caller stops and looks again at the next kick.
        self.refresh().is_ok_and(|n| n > 0)
    }
}
