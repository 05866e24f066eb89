//! Mapping the memory regions a frontend hands over (SET_MEM_TABLE, ADD_MEM_REG) without
//! trusting it: each region's file must be at least as large as the region it claims, a port
//! may map at most `max_guest_memory_gib` in total, and a file that can still shrink after
//! we mapped it (not sealed with F_SEAL_SHRINK) is guarded, so that touching a page it no
//! longer has (SIGBUS) fails that port's connection instead of killing the switch.
//!
//! The guard: a process-wide SIGBUS handler and a lock-free table of the guarded mappings.
//! On a fault inside one, the handler maps anonymous zero pages over the whole region (the
//! faulting access is retried and now succeeds) and marks the region faulted; the dataplane
//! sees the mark at its next batch and closes that port's connection. A fault anywhere else
//! is not ours: the previous handler is restored and the access retried, so real bugs still
//! crash. Why not refuse unsealed files: QEMU seals its memfd backend by default, but
//! hugetlbfs-backed guests (memory-backend-file, libvirt's hugepages) and DPDK's virtio-user
//! hand over files that cannot be sealed.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

use vm_memory::{GuestAddress, GuestMemoryRegion, GuestRegionMmap, MmapRegion};

/// Why a region was not mapped.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("region at guest address {gpa:#x}: its file has {file_len} bytes, but the region needs {needed} (offset {offset} + size {size})")]
    FileTooShort {
        gpa: u64,
        file_len: u64,
        offset: u64,
        size: u64,
        needed: u64,
    },
    #[error("region at guest address {gpa:#x} of {size} bytes would bring the port's guest memory to {total} bytes, over the limit of {limit_gib} GiB (max_guest_memory_gib)")]
    OverLimit {
        gpa: u64,
        size: u64,
        total: u64,
        limit_gib: u64,
    },
    #[error("region at guest address {gpa:#x}: {what}")]
    Bad { gpa: u64, what: String },
    #[error("region at guest address {gpa:#x}: too many unsealed memory regions are mapped in this process ({SLOTS})")]
    NoGuardSlot { gpa: u64 },
}

/// What a frontend says about one region.
#[derive(Debug, Clone, Copy)]
pub struct RegionClaim {
    pub gpa: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// Maps one region after checking it. `mapped_before` is what the port already maps (the
/// regions this one joins); `owner` identifies the connection for the fault guard.
pub fn map_region(
    file: File,
    claim: RegionClaim,
    mapped_before: u64,
    limit_gib: u64,
    owner: u64,
) -> Result<GuestRegionMmap<()>, MapError> {
    let RegionClaim {
        gpa,
        size,
        file_offset,
    } = claim;
    let bad = |what: String| MapError::Bad { gpa, what };
    if size == 0 {
        return Err(bad("zero size".into()));
    }
    // Page-aligned, as every frontend maps it: the ring and used-index accesses rely on a
    // guest address's alignment being its host address's alignment.
    if !gpa.is_multiple_of(PAGE) || !size.is_multiple_of(PAGE) {
        return Err(bad(format!(
            "address or size not a multiple of the {PAGE}-byte page"
        )));
    }
    let total = mapped_before.saturating_add(size);
    if total > limit_gib.saturating_mul(1 << 30) {
        return Err(MapError::OverLimit {
            gpa,
            size,
            total,
            limit_gib,
        });
    }
    let needed = file_offset
        .checked_add(size)
        .ok_or_else(|| bad("offset + size overflows".into()))?;
    // Seals first, size second: a file sealed against shrinking cannot get shorter after we
    // measured it (the other order would let a frontend shrink, then seal, in between).
    let sealed = shrink_sealed(&file);
    let meta = file
        .metadata()
        .map_err(|e| bad(format!("cannot stat its file: {e}")))?;
    // Block and character devices report 0; only regular files (memfd, hugetlbfs, tmpfs)
    // back guest memory.
    if !meta.file_type().is_file() {
        return Err(bad("its file is not a regular file".into()));
    }
    if meta.len() < needed {
        return Err(MapError::FileTooShort {
            gpa,
            file_len: meta.len(),
            offset: file_offset,
            size,
            needed,
        });
    }
    let len =
        usize::try_from(size).map_err(|_| bad("size does not fit the address space".into()))?;
    let mapping = MmapRegion::<()>::from_file(vm_memory::FileOffset::new(file, file_offset), len)
        .map_err(|e| bad(format!("cannot map it: {e}")))?;
    if !sealed {
        guard(mapping.as_ptr() as usize, mapping.size(), owner)
            .ok_or(MapError::NoGuardSlot { gpa })?;
    }
    GuestRegionMmap::new(mapping, GuestAddress(gpa)).ok_or_else(|| bad("it wraps around".into()))
}

/// Alignment of guest memory regions.
const PAGE: u64 = 4096;

/// Whether the file can no longer shrink (a memfd with F_SEAL_SHRINK).
fn shrink_sealed(file: &File) -> bool {
    // SAFETY: F_GET_SEALS only reads the seals of an fd we own; it fails (EINVAL) for files
    // that are not memfds, which we treat as unsealed.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

/// Bytes of guest memory in `regions`.
pub fn total_size<'a>(regions: impl Iterator<Item = &'a GuestRegionMmap<()>>) -> u64 {
    regions.map(|r| r.len()).sum()
}

// ---------------------------------------------------------------------------------------------
// The SIGBUS guard
// ---------------------------------------------------------------------------------------------

/// Guarded mappings the whole process can have at once.
pub const SLOTS: usize = 4096;

/// One guarded mapping. `len == 0` marks a free slot; writers fill `start` and `owner`
/// before publishing `len` (Release), the handler reads `len` first (Acquire).
struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    owner: AtomicU64,
    faulted: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    owner: AtomicU64::new(0),
    faulted: AtomicBool::new(false),
};
static GUARDED: [Slot; SLOTS] = [FREE; SLOTS];
/// Bumped by the handler on every fault it absorbs: a cheap "anything new?" for the dataplane.
static FAULTS: AtomicU64 = AtomicU64::new(0);
/// Serialises writers (the vhost-user handler threads); the signal handler takes no lock.
static WRITERS: Mutex<()> = Mutex::new(());
static INSTALL: Once = Once::new();
/// The SIGBUS action in place before ours, restored for faults that are not ours.
static mut PREVIOUS: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::zeroed();
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// A fresh identity for a connection's guarded regions.
pub fn new_owner() -> u64 {
    NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
}

/// Registers a mapping; None if every slot is taken. Slots of mappings that overlap the new
/// one are stale (their memory was unmapped and the address reused) and are taken over.
fn guard(start: usize, len: usize, owner: u64) -> Option<()> {
    INSTALL.call_once(install_handler);
    let _writers = WRITERS.lock().unwrap_or_else(|p| p.into_inner());
    let end = start + len;
    let free = GUARDED.iter().find(|s| {
        let (s_start, s_len) = (
            s.start.load(Ordering::Relaxed),
            s.len.load(Ordering::Relaxed),
        );
        s_len == 0 || (s_start < end && start < s_start + s_len)
    })?;
    free.len.store(0, Ordering::Release);
    free.start.store(start, Ordering::Relaxed);
    free.owner.store(owner, Ordering::Relaxed);
    free.faulted.store(false, Ordering::Relaxed);
    free.len.store(len, Ordering::Release);
    Some(())
}

/// Frees the slots of `owner` (its connection is gone and its memory with it).
pub fn release(owner: u64) {
    let _writers = WRITERS.lock().unwrap_or_else(|p| p.into_inner());
    for s in GUARDED
        .iter()
        .filter(|s| s.owner.load(Ordering::Relaxed) == owner)
    {
        s.len.store(0, Ordering::Release);
        s.owner.store(0, Ordering::Relaxed);
    }
}

/// The number of faults absorbed so far, process-wide (compare to a previous value).
pub fn fault_count() -> u64 {
    FAULTS.load(Ordering::Acquire)
}

/// Whether any region of `owner` faulted.
pub fn faulted(owner: u64) -> bool {
    GUARDED.iter().any(|s| {
        s.len.load(Ordering::Acquire) != 0
            && s.owner.load(Ordering::Relaxed) == owner
            && s.faulted.load(Ordering::Relaxed)
    })
}

fn install_handler() {
    // SAFETY: a zeroed sigaction is valid; we fill in a handler with the SA_SIGINFO
    // signature and an empty mask, and keep the previous action in PREVIOUS, which is only
    // written here, once, before any fault can reach the handler.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let previous = std::ptr::addr_of_mut!(PREVIOUS).cast::<libc::sigaction>();
        if libc::sigaction(libc::SIGBUS, &action, previous) != 0 {
            log::error!("cannot install the SIGBUS guard for guest memory");
        }
    }
}

/// Async-signal-safe: atomics, mmap and sigaction only.
extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; si_addr is the
    // faulting address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in GUARDED.iter() {
        let len = slot.len.load(Ordering::Acquire);
        let start = slot.start.load(Ordering::Relaxed);
        if len == 0 || addr < start || addr >= start + len {
            continue;
        }
        // SAFETY: [start, start + len) is a guest memory mapping of ours (registered when it
        // was mapped); replacing it with anonymous memory of the same size keeps every pointer
        // into it valid, and its owner's memory is all the frontend can have corrupted.
        let replaced = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if replaced != libc::MAP_FAILED {
            slot.faulted.store(true, Ordering::Relaxed);
            FAULTS.fetch_add(1, Ordering::Release);
            return;
        }
    }
    // Not guest memory: put the previous action back; returning retries the access, which
    // faults again and gets the default treatment (or whatever handled SIGBUS before us).
    // SAFETY: PREVIOUS was filled by install_handler before this handler was installed.
    unsafe {
        let previous = std::ptr::addr_of!(PREVIOUS).cast::<libc::sigaction>();
        libc::sigaction(libc::SIGBUS, previous, std::ptr::null_mut());
    }
}
