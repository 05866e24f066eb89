//! A guest's memory map as the frame path uses it: the regions' host addresses in a flat
//! table, so translating a guest address is a comparison or two and an add.
//!
//! Why not vm-memory's `GuestMemory` API on the hot path: every `get_slice`, `read_obj` and
//! `write_obj` searches the regions again and wraps the result in checked volatile slices;
//! under DPDK testpmd traffic that was a third of the switch's time per 64-byte frame
//! (docs/performance.md). vm-memory still owns the mappings (and the SIGBUS guard in
//! `port::memory` covers them); this table only caches where they are.

use crate::prefetch::prefetch;
use std::sync::Arc;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::GuestMemory;

/// One region: guest-physical `[start, end)` mapped at host address `host`.
#[derive(Debug, Clone, Copy)]
struct HostRegion {
    start: u64,
    end: u64,
    host: usize,
}

/// A guest memory map with its regions' host addresses cached. Built once per
/// SET_MEM_TABLE / ADD_MEM_REGION; the frame path holds one (through an `Arc`) for a batch,
/// which keeps every mapping it translated into alive for that batch.
pub struct GuestMap {
    regions: Box<[HostRegion]>,
    mem: Arc<GuestMemory>,
}

/// A run of bytes in guest memory that lies inside one region, by its host address. Only
/// made by [`GuestMap`], so it always points into a mapping; it is valid to touch while the
/// map that made it is alive (the frame path keeps segments only for one batch, under the
/// map it holds for that batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    host: usize,
    len: u32,
}

impl Segment {
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host address of the first byte.
    pub fn host_addr(&self) -> usize {
        self.host
    }

    /// Asks the CPU to start loading the segment's first cache line, so that the frame
    /// path's first read of it (a header, usually a miss: another core wrote it) overlaps
    /// with work on the frames before it.
    #[inline]
    pub fn prefetch(&self) {
        prefetch(self.host);
    }

    /// The segment without its first `n` bytes (`n` at most its length).
    pub fn advance(self, n: u32) -> Segment {
        let n = n.min(self.len);
        Segment {
            host: self.host + n as usize,
            len: self.len - n,
        }
    }

    /// The first `n` bytes of the segment (at most its length).
    pub fn truncate(self, n: u32) -> Segment {
        Segment {
            host: self.host,
            len: self.len.min(n),
        }
    }
}

impl GuestMap {
    pub fn new(mem: GuestMemory) -> GuestMap {
        let regions = mem
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()? as usize;
                let start = r.start_addr().0;
                Some(HostRegion {
                    start,
                    end: start.checked_add(r.len())?,
                    host,
                })
            })
            .collect();
        GuestMap {
            regions,
            mem: Arc::new(mem),
        }
    }

    pub fn empty() -> GuestMap {
        GuestMap::new(GuestMemory::new())
    }

    /// The vm-memory view of the same map (for the control path and tests).
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    #[inline]
    fn region(&self, gpa: u64) -> Option<&HostRegion> {
        // QEMU and DPDK hand over one to a few regions; a linear scan beats a search here.
        self.regions.iter().find(|r| gpa >= r.start && gpa < r.end)
    }

    /// The host address of `[gpa, gpa + len)` if it lies inside one region.
    #[inline]
    pub fn host(&self, gpa: u64, len: u64) -> Option<usize> {
        let r = self.region(gpa)?;
        let end = gpa.checked_add(len)?;
        (end <= r.end).then(|| r.host + (gpa - r.start) as usize)
    }

    /// The guest-physical address of host address `host`, if it lies in this map (the dirty
    /// log is kept by guest page; the frame path knows its buffers by host address).
    pub fn gpa_of(&self, host: usize) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let offset = host.checked_sub(r.host)? as u64;
            (offset < r.end - r.start).then_some(r.start + offset)
        })
    }

    /// The end of the highest region (what a dirty log must cover).
    pub fn end(&self) -> u64 {
        self.regions.iter().map(|r| r.end).max().unwrap_or(0)
    }

    /// Calls `push` with the pieces of `[gpa, gpa + len)`, split where regions meet; false
    /// (after pushing some) if any byte lies outside guest memory.
    #[inline]
    pub fn segments(&self, gpa: u64, len: u32, mut push: impl FnMut(Segment)) -> bool {
        let mut at = gpa;
        let mut left = u64::from(len);
        while left > 0 {
            let Some(r) = self.region(at) else {
                return false;
            };
            let take = left.min(r.end - at);
            push(Segment {
                host: r.host + (at - r.start) as usize,
                len: take as u32,
            });
            at += take;
            left -= take;
        }
        true
    }

    /// Whether `seg` lies inside one of this map's regions (for tests and fuzzing).
    pub fn contains(&self, seg: &Segment) -> bool {
        self.regions.iter().any(|r| {
            let size = (r.end - r.start) as usize;
            seg.host >= r.host && seg.host + seg.len as usize <= r.host + size
        })
    }
}

impl std::fmt::Debug for GuestMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.regions.iter().map(|r| r.start..r.end))
            .finish()
    }
}

/// Copies `len` bytes between host addresses that belong to guest mappings (or host buffers).
///
/// # Safety
/// `src` must be valid for `len` bytes of reads and `dst` for `len` bytes of writes. They
/// may overlap (a guest can post receive buffers over its own transmit buffers, and a flow
/// can send a frame back out of `in_port`), so this is a memmove. A guest may change its own
/// memory during
/// the copy: the bytes copied are then some mix of old and new, which the frame path
/// tolerates (it decided on its own copy of the header), as vm-memory's copies do.
#[inline]
pub unsafe fn copy_bytes(src: usize, dst: usize, len: usize) {
    // SAFETY: the caller's contract above.
    unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, len) }
}

/// [`copy_bytes`] for the few small lengths every frame has (a virtio-net header, an
/// Ethernet header with or without its tag): as fixed-size copies these compile to a few
/// moves instead of a call, which at 64-byte frames is a tenth of the switch's time.
///
/// # Safety
/// As for [`copy_bytes`].
#[inline(always)]
pub unsafe fn copy_small(src: usize, dst: usize, len: usize) {
    #[inline(always)]
    unsafe fn fixed<const N: usize>(src: usize, dst: usize) {
        // SAFETY: the caller's contract, with len == N; unaligned reads and writes of a
        // byte array, through a local, so overlapping ranges are fine.
        unsafe {
            let v = std::ptr::read_unaligned(src as *const [u8; N]);
            std::ptr::write_unaligned(dst as *mut [u8; N], v);
        }
    }
    // SAFETY: each arm copies exactly `len` bytes, the caller's contract.
    unsafe {
        match len {
            10 => fixed::<10>(src, dst),
            12 => fixed::<12>(src, dst),
            14 => fixed::<14>(src, dst),
            18 => fixed::<18>(src, dst),
            _ => copy_bytes(src, dst, len),
        }
    }
}
