//! The boot information page the VMM writes at 0x9000 (docs/vmm-guest-abi.md).

/// "PBGUEST1" read as a little-endian u64.
pub const BOOT_MAGIC: u64 = 0x3154_5345_5547_4250;
/// Guest-physical address the VMM places [`BootInfo`] at (also passed in RDI).
pub const BOOT_INFO_ADDR: u64 = 0x9000;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BootInfo {
    pub magic: u64,
    /// rdtsc ticks per millisecond (KVM_GET_TSC_KHZ).
    pub tsc_khz: u64,
    pub mem_size: u64,
    pub n_virtio: u32,
    pub _pad0: u32,
    pub virtio_base: [u64; 4],
    pub mac: [u8; 6],
    pub prefix_len: u8,
    pub _pad1: u8,
    pub ip: [u8; 4],
    /// 0.0.0.0 = no default route.
    pub gateway: [u8; 4],
    pub cmdline_len: u32,
    pub cmdline: [u8; 512],
}

impl BootInfo {
    /// The command line bytes: `cmdline_len` bytes (clamped to 512), cut at the first NUL.
    pub fn cmdline(&self) -> &[u8] {
        let n = (self.cmdline_len as usize).min(self.cmdline.len());
        let s = &self.cmdline[..n];
        match s.iter().position(|&b| b == 0) {
            Some(p) => &s[..p],
            None => s,
        }
    }

    /// The virtio-mmio base addresses actually present (`n_virtio` clamped to 4).
    pub fn virtio_bases(&self) -> &[u64] {
        &self.virtio_base[..(self.n_virtio as usize).min(self.virtio_base.len())]
    }

    /// Checks what every program relies on (a NIC is checked for by the programs that use
    /// one); the error text goes after `GUEST-ERROR `.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.magic != BOOT_MAGIC {
            return Err("bad BootInfo magic");
        }
        if self.tsc_khz == 0 {
            return Err("BootInfo.tsc_khz is 0");
        }
        if self.prefix_len > 32 {
            return Err("BootInfo.prefix_len > 32");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layout_matches_abi() {
        assert_eq!(offset_of!(BootInfo, magic), 0);
        assert_eq!(offset_of!(BootInfo, tsc_khz), 8);
        assert_eq!(offset_of!(BootInfo, mem_size), 16);
        assert_eq!(offset_of!(BootInfo, n_virtio), 24);
        assert_eq!(offset_of!(BootInfo, virtio_base), 32);
        assert_eq!(offset_of!(BootInfo, mac), 64);
        assert_eq!(offset_of!(BootInfo, prefix_len), 70);
        assert_eq!(offset_of!(BootInfo, ip), 72);
        assert_eq!(offset_of!(BootInfo, gateway), 76);
        assert_eq!(offset_of!(BootInfo, cmdline_len), 80);
        assert_eq!(offset_of!(BootInfo, cmdline), 84);
        assert_eq!(size_of::<BootInfo>(), 600);
        assert_eq!(&BOOT_MAGIC.to_le_bytes(), b"PBGUEST1");
    }

    #[test]
    fn cmdline_is_clamped_and_cut_at_nul() {
        let mut b: BootInfo = unsafe { core::mem::zeroed() };
        b.magic = BOOT_MAGIC;
        b.tsc_khz = 1;
        b.n_virtio = 1;
        b.cmdline[..9].copy_from_slice(b"ping 1.2\0");
        b.cmdline_len = 9;
        assert_eq!(b.cmdline(), b"ping 1.2");
        b.cmdline_len = 4;
        assert_eq!(b.cmdline(), b"ping");
        b.cmdline_len = 10_000;
        assert_eq!(b.cmdline(), b"ping 1.2");
        assert!(b.validate().is_ok());
        b.n_virtio = 0;
        assert!(b.validate().is_ok(), "tcp-loopback runs without a NIC");
        assert!(b.virtio_bases().is_empty());
        b.n_virtio = 9;
        assert_eq!(b.virtio_bases().len(), 4);
        b.magic = 0;
        assert!(b.validate().is_err());
    }
}
