//! The VMM <-> CPL-3 guest ABI, exactly as docs/vmm-guest-abi.md describes it.
//!
//! This file depends on nothing but `core` (no `std`, no crates), so the `no_std` guest can
//! carry an identical copy. Change both sides and the document together.

/// Guest-physical address of the GDT (7 descriptors, see [`GDT_ENTRIES`]).
pub const GDT_ADDR: u64 = 0x500;
/// Number of 8-byte GDT slots (null, 4 segments, the 16-byte TSS descriptor).
pub const GDT_ENTRIES: usize = 7;
/// PML4 of the identity map.
pub const PML4_ADDR: u64 = 0x1000;
/// The one PDPT (its first four entries are used).
pub const PDPT_ADDR: u64 = 0x2000;
/// Four page directories (0x3000..0x7000) mapping the first 4 GiB with 2 MiB pages.
pub const PD_ADDR: u64 = 0x3000;
/// Number of page directories (one per GiB).
pub const PD_COUNT: u64 = 4;
/// Where the VMM writes [`BootInfo`]; RDI holds this address at entry.
pub const BOOT_INFO_ADDR: u64 = 0x9000;
/// The 64-bit TSS; the I/O permission bitmap follows it.
pub const TSS_ADDR: u64 = 0x1_0000;
/// Size of the 64-bit TSS proper (and the bitmap's offset, `iomap_base`).
pub const TSS_SIZE: u64 = 0x68;
/// Size of the I/O permission bitmap (one bit per port, 65536 ports); a 0xff byte follows it.
pub const IO_BITMAP_SIZE: u64 = 8192;
/// TSS segment limit: the TSS, the bitmap and the terminator byte.
pub const TSS_LIMIT: u64 = TSS_SIZE + IO_BITMAP_SIZE;
/// Lowest address of the guest stack.
pub const STACK_BOTTOM: u64 = 0x10_0000;
/// RSP at entry.
pub const STACK_TOP: u64 = 0x1f_fff0;
/// The guest ELF is statically linked at (and loaded to) this address.
pub const GUEST_LOAD_ADDR: u64 = 0x20_0000;
/// MMIO base of virtio device 0; device `i` is at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Number of virtio devices [`BootInfo`] can describe.
pub const MAX_VIRTIO: usize = 4;

/// Kernel 64-bit code segment selector (unused by the guest; present for completeness).
pub const SEL_KERNEL_CODE: u16 = 0x08;
/// Kernel data segment selector.
pub const SEL_KERNEL_DATA: u16 = 0x10;
/// User 64-bit code segment selector with RPL 3 (CS at entry).
pub const SEL_USER_CODE: u16 = 0x18 | 3;
/// User data segment selector with RPL 3 (SS, DS, ES, FS, GS at entry).
pub const SEL_USER_DATA: u16 = 0x20 | 3;
/// TSS selector (TR at entry).
pub const SEL_TSS: u16 = 0x28;

/// CR0 at entry: PG | AM | WP | NE | ET | MP | PE.
pub const CR0: u64 = 0x8005_0033;
/// CR4 at entry: OSXMMEXCPT | OSFXSR | PAE.
pub const CR4: u64 = 0x620;
/// EFER at entry: LMA | LME.
pub const EFER: u64 = 0x500;
/// RFLAGS at entry: only the always-one bit (interrupts off).
pub const RFLAGS: u64 = 0x2;

/// Port: write one byte of console output.
pub const PORT_CONSOLE: u16 = 0x3f8;
/// Port: write a 32-bit exit status to power off.
pub const PORT_POWER_OFF: u16 = 0x501;
/// Port: write a 32-bit timeout in milliseconds to wait until a backend signals.
pub const PORT_IDLE: u16 = 0x502;

/// `BootInfo::magic`: "PBGUEST1" read as a little-endian u64.
pub const BOOT_INFO_MAGIC: u64 = 0x3154_5345_5547_4250;
/// Capacity of `BootInfo::cmdline`.
pub const CMDLINE_MAX: usize = 512;

/// What the VMM tells the guest, at [`BOOT_INFO_ADDR`] (little-endian, `#[repr(C)]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: u64,
    /// KVM_GET_TSC_KHZ: rdtsc ticks per millisecond.
    pub tsc_khz: u64,
    /// Bytes of RAM (from guest-physical 0).
    pub mem_size: u64,
    /// virtio-mmio devices present.
    pub n_virtio: u32,
    pub _pad0: u32,
    /// Their MMIO base addresses.
    pub virtio_base: [u64; MAX_VIRTIO],
    /// MAC of the first NIC (also in its config space).
    pub mac: [u8; 6],
    /// IPv4 prefix length of the first NIC.
    pub prefix_len: u8,
    pub _pad1: u8,
    /// IPv4 address of the first NIC.
    pub ip: [u8; 4],
    /// Default gateway; 0.0.0.0 = none.
    pub gateway: [u8; 4],
    /// Bytes used in `cmdline`.
    pub cmdline_len: u32,
    /// The program and its arguments, e.g. "ping 10.0.0.2 5" (not NUL-terminated).
    pub cmdline: [u8; CMDLINE_MAX],
}

impl BootInfo {
    /// All zeros except the magic.
    pub const fn new() -> BootInfo {
        BootInfo {
            magic: BOOT_INFO_MAGIC,
            tsc_khz: 0,
            mem_size: 0,
            n_virtio: 0,
            _pad0: 0,
            virtio_base: [0; MAX_VIRTIO],
            mac: [0; 6],
            prefix_len: 0,
            _pad1: 0,
            ip: [0; 4],
            gateway: [0; 4],
            cmdline_len: 0,
            cmdline: [0; CMDLINE_MAX],
        }
    }

    /// The used part of `cmdline`.
    pub fn cmdline(&self) -> &[u8] {
        let len = (self.cmdline_len as usize).min(CMDLINE_MAX);
        &self.cmdline[..len]
    }
}

impl Default for BootInfo {
    fn default() -> BootInfo {
        BootInfo::new()
    }
}

// The layout is part of the contract: pin every offset.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(offset_of!(BootInfo, magic) == 0);
    assert!(offset_of!(BootInfo, tsc_khz) == 8);
    assert!(offset_of!(BootInfo, mem_size) == 16);
    assert!(offset_of!(BootInfo, n_virtio) == 24);
    assert!(offset_of!(BootInfo, virtio_base) == 32);
    assert!(offset_of!(BootInfo, mac) == 64);
    assert!(offset_of!(BootInfo, prefix_len) == 70);
    assert!(offset_of!(BootInfo, ip) == 72);
    assert!(offset_of!(BootInfo, gateway) == 76);
    assert!(offset_of!(BootInfo, cmdline_len) == 80);
    assert!(offset_of!(BootInfo, cmdline) == 84);
    assert!(size_of::<BootInfo>() == 600);
    assert!(size_of::<BootInfo>() <= 4096);
};
