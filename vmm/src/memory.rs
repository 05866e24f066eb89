//! Guest RAM: one memfd mapped shared, so vhost-user backends can map the same pages.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use nix::sys::memfd::{memfd_create, MFdFlags};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MmapRegion,
};

use crate::abi::VIRTIO_MMIO_BASE;

/// Smallest RAM the VMM accepts: the CPL-3 layout puts the stack just below 2 MiB.
pub const MIN_MEM: u64 = 2 << 20;
/// Largest RAM: guest RAM is one region below the virtio-mmio window at 0xd000_0000.
pub const MAX_MEM: u64 = VIRTIO_MMIO_BASE;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("{size} bytes of RAM is less than the minimum of {MIN_MEM} (2 MiB)")]
    TooSmall { size: u64 },
    #[error("{size} bytes of RAM is more than the maximum of {MAX_MEM} (RAM must end below the MMIO window at 0xd0000000)")]
    TooLarge { size: u64 },
    #[error("{size} bytes of RAM is not a multiple of 4 KiB")]
    Unaligned { size: u64 },
    #[error("memfd_create for guest RAM: {0}")]
    Memfd(nix::Error),
    #[error("sizing the guest RAM memfd to {size} bytes: {source}")]
    Truncate { size: u64, source: nix::Error },
    #[error("mapping {size} bytes of guest RAM: {source}")]
    Mmap {
        size: u64,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("building the guest memory map: {0}")]
    Collection(String),
    #[error("registering guest RAM with KVM (set_user_memory_region): {0}")]
    Kvm(kvm_ioctls::Error),
}

/// One guest RAM region as a vhost-user frontend describes it to a backend
/// (VHOST_USER_SET_MEM_TABLE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest-physical start.
    pub guest_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where the VMM has it mapped (the frontend's "user address").
    pub host_addr: u64,
    /// The memfd backing it (owned by [`GuestRam`]; valid while it lives).
    pub fd: RawFd,
    /// Offset of the region in `fd`.
    pub file_offset: u64,
}

/// The VM's RAM: `size` bytes at guest-physical 0, backed by one memfd mapped `MAP_SHARED`.
pub struct GuestRam {
    mem: GuestMemoryMmap<()>,
    size: u64,
}

impl GuestRam {
    /// Creates (zero-filled) RAM of `size` bytes.
    pub fn new(size: u64) -> Result<GuestRam, MemoryError> {
        if size < MIN_MEM {
            return Err(MemoryError::TooSmall { size });
        }
        if size > MAX_MEM {
            return Err(MemoryError::TooLarge { size });
        }
        if !size.is_multiple_of(4096) {
            return Err(MemoryError::Unaligned { size });
        }
        let fd = memfd_create(c"patchbay-guest-ram", MFdFlags::MFD_CLOEXEC)
            .map_err(MemoryError::Memfd)?;
        nix::unistd::ftruncate(&fd, size as i64)
            .map_err(|source| MemoryError::Truncate { size, source })?;
        let file = File::from(fd);
        let region = MmapRegion::<()>::from_file(FileOffset::new(file, 0), size as usize)
            .map_err(|source| MemoryError::Mmap { size, source })?;
        let region = GuestRegionMmap::new(region, GuestAddress(0)).ok_or_else(|| {
            MemoryError::Collection("region does not fit the address space".into())
        })?;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| MemoryError::Collection(e.to_string()))?;
        Ok(GuestRam { mem, size })
    }

    /// The vm-memory view (for loaders, virtio queues, `Bytes` reads and writes).
    pub fn memory(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// Bytes of RAM.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The regions with their host mapping and backing fd, for vhost-user SET_MEM_TABLE.
    pub fn regions(&self) -> Vec<RamRegion> {
        self.mem
            .iter()
            .map(|r| {
                let fo = r
                    .file_offset()
                    .expect("guest RAM is always file-backed (memfd)");
                RamRegion {
                    guest_addr: r.start_addr().0,
                    size: r.len(),
                    host_addr: r.as_ptr() as u64,
                    fd: fo.file().as_raw_fd(),
                    file_offset: fo.start(),
                }
            })
            .collect()
    }

    /// The memfd behind guest RAM.
    pub fn file(&self) -> &File {
        self.mem
            .iter()
            .next()
            .and_then(|r| r.file_offset())
            .map(|fo| fo.file())
            .expect("guest RAM is always one memfd-backed region")
    }

    /// Registers every region with KVM (slot = region index).
    pub fn register(&self, vm: &VmFd) -> Result<(), MemoryError> {
        for (slot, r) in self.regions().iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: r.guest_addr,
                memory_size: r.size,
                userspace_addr: r.host_addr,
            };
            // SAFETY: [host_addr, host_addr + size) is a live MAP_SHARED mapping owned by
            // `self.mem`. The caller (`Vm`) declares its vCPU and VM fds before its `GuestRam`,
            // so they are closed before this mapping is unmapped and the guest can never
            // reach freed host memory.
            unsafe { vm.set_user_memory_region(region) }.map_err(MemoryError::Kvm)?;
        }
        Ok(())
    }
}

/// Parses a size such as `64M`, `1G`, `512K`, `65536`, `64MiB` (binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!(
            "{text:?}: expected a number with an optional K, M or G suffix"
        ));
    }
    let n: u64 = num.parse().map_err(|e| format!("{text:?}: {e}"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use K, M or G)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn ram_is_a_shared_memfd() {
        let ram = GuestRam::new(4 << 20).unwrap();
        assert_eq!(ram.size(), 4 << 20);
        let regions = ram.regions();
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].guest_addr, 0);
        assert_eq!(regions[0].size, 4 << 20);
        assert_eq!(regions[0].fd, ram.file().as_raw_fd());
        ram.memory()
            .write_obj(0x1234_5678u32, GuestAddress(0x1000))
            .unwrap();
        // The same bytes through the file: the mapping is shared, as a backend would see it.
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_at(ram.file(), &mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0x1234_5678);
    }

    #[test]
    fn bad_sizes() {
        assert!(matches!(
            GuestRam::new(1 << 20),
            Err(MemoryError::TooSmall { .. })
        ));
        assert!(matches!(
            GuestRam::new(4 << 30),
            Err(MemoryError::TooLarge { .. })
        ));
        assert!(matches!(
            GuestRam::new((4 << 20) + 1),
            Err(MemoryError::Unaligned { .. })
        ));
    }
}
