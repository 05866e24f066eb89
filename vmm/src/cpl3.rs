//! The environment of a CPL-3 guest (docs/vmm-guest-abi.md): identity page tables with the U
//! bit, a GDT with user segments, a TSS whose I/O bitmap opens every port, `BootInfo`, and the
//! register state that enters the guest's ELF directly in user mode.
//!
//! On PVM hosts CPL 0 is emulated (~2 MIPS) while CPL 3 runs natively, so the guest never runs a
//! single kernel-mode instruction: the VMM does all of the set-up a kernel would do.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::abi::{self, BootInfo};

/// Errors writing the boot structures (only possible with RAM smaller than the layout).
#[derive(Debug, thiserror::Error)]
#[error("writing the {what} at {addr:#x} into guest RAM: {source}")]
pub struct SetupError {
    pub what: &'static str,
    pub addr: u64,
    pub source: vm_memory::GuestMemoryError,
}

// SAFETY: `BootInfo` is `#[repr(C)]`, made only of integers and integer arrays, has no padding
// that is not an explicit field (its layout is pinned by const assertions in abi.rs), and every
// bit pattern is a valid value.
unsafe impl ByteValued for BootInfo {}

fn write(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), SetupError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| SetupError { what, addr, source })
}

/// Page-table entry bits.
const PTE_PRESENT: u64 = 1;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_HUGE: u64 = 1 << 7;

/// Writes the identity map of the first 4 GiB (2 MiB pages, Present | Writable | User at every
/// level) at PML4 0x1000, PDPT 0x2000, PDs 0x3000..0x7000. Linux guests use it too (the U bit
/// is harmless at CPL 0 with SMEP/SMAP off).
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), SetupError> {
    let flags = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
    write(
        mem,
        "PML4",
        abi::PML4_ADDR,
        &(abi::PDPT_ADDR | flags).to_le_bytes(),
    )?;
    let mut pdpt = [0u8; 8 * abi::PD_COUNT as usize];
    for (i, e) in pdpt.chunks_exact_mut(8).enumerate() {
        e.copy_from_slice(&((abi::PD_ADDR + i as u64 * 0x1000) | flags).to_le_bytes());
    }
    write(mem, "PDPT", abi::PDPT_ADDR, &pdpt)?;
    let mut pds = vec![0u8; 4096 * abi::PD_COUNT as usize];
    for (i, e) in pds.chunks_exact_mut(8).enumerate() {
        e.copy_from_slice(&(((i as u64) << 21) | flags | PTE_HUGE).to_le_bytes());
    }
    write(mem, "page directories", abi::PD_ADDR, &pds)
}

/// A segment descriptor: `access` is the access byte (P, DPL, S, type), `flags` the G/DB/L/AVL
/// nibble.
pub const fn descriptor(access: u8, flags: u8, base: u32, limit: u32) -> u64 {
    (limit as u64 & 0xffff)
        | ((base as u64 & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit as u64 >> 16) & 0xf) << 48)
        | (((flags as u64) & 0xf) << 52)
        | (((base as u64) >> 24) << 56)
}

/// Access bytes.
const ACCESS_CODE: u8 = 0x9b; // present, S, execute/read, accessed
const ACCESS_DATA: u8 = 0x93; // present, S, read/write, accessed
const DPL3: u8 = 3 << 5;
const ACCESS_TSS_BUSY: u8 = 0x8b; // present, 64-bit TSS (busy: it is loaded in TR)
/// Flag nibbles.
const FLAGS_CODE64: u8 = 0xa; // G, L
const FLAGS_DATA: u8 = 0xc; // G, DB

/// The two GDT slots of a 64-bit TSS descriptor.
pub fn tss_descriptor(base: u64, limit: u32) -> [u64; 2] {
    [
        descriptor(ACCESS_TSS_BUSY, 0, base as u32, limit),
        base >> 32,
    ]
}

/// The CPL-3 GDT: null, kernel code64 (0x08), kernel data (0x10), user code64 (0x18), user data
/// (0x20), TSS (0x28, two slots).
pub fn cpl3_gdt() -> [u64; abi::GDT_ENTRIES] {
    let tss = tss_descriptor(abi::TSS_ADDR, abi::TSS_LIMIT as u32);
    [
        0,
        descriptor(ACCESS_CODE, FLAGS_CODE64, 0, 0xfffff),
        descriptor(ACCESS_DATA, FLAGS_DATA, 0, 0xfffff),
        descriptor(ACCESS_CODE | DPL3, FLAGS_CODE64, 0, 0xfffff),
        descriptor(ACCESS_DATA | DPL3, FLAGS_DATA, 0, 0xfffff),
        tss[0],
        tss[1],
    ]
}

/// Writes GDT slots at [`abi::GDT_ADDR`]; returns the GDT limit.
pub fn write_gdt(mem: &GuestMemoryMmap, gdt: &[u64]) -> Result<u16, SetupError> {
    let bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    write(mem, "GDT", abi::GDT_ADDR, &bytes)?;
    Ok((bytes.len() - 1) as u16)
}

/// The `kvm_segment` a selector loads from `gdt` (what the CPU caches after a load).
pub fn segment(gdt: &[u64], selector: u16) -> kvm_segment {
    let index = (selector >> 3) as usize;
    let d = gdt[index];
    let access = (d >> 40) as u8;
    let flags = ((d >> 52) & 0xf) as u8;
    let mut base = ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24);
    let raw_limit = ((d & 0xffff) | (((d >> 48) & 0xf) << 16)) as u32;
    let g = flags & 0x8 != 0;
    let system = access & 0x10 == 0;
    if system {
        // 16-byte system descriptor (TSS): the upper slot holds base[63:32].
        base |= gdt[index + 1] << 32;
    }
    kvm_segment {
        base,
        limit: if g {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: access & 0xf,
        present: (access >> 7) & 1,
        dpl: (access >> 5) & 3,
        db: (flags >> 2) & 1,
        s: (access >> 4) & 1,
        l: (flags >> 1) & 1,
        g: g as u8,
        avl: flags & 1,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the 64-bit TSS at [`abi::TSS_ADDR`] with `iomap_base` = 0x68, the all-zero I/O
/// permission bitmap (every port allowed: PVM forces IOPL to 0 at CPL 3, so `in`/`out` work only
/// through the bitmap) and its 0xff terminator.
pub fn write_tss(mem: &GuestMemoryMmap) -> Result<(), SetupError> {
    let mut tss = vec![0u8; (abi::TSS_LIMIT + 1) as usize];
    tss[0x66..0x68].copy_from_slice(&(abi::TSS_SIZE as u16).to_le_bytes());
    tss[abi::TSS_LIMIT as usize] = 0xff;
    write(mem, "TSS and I/O bitmap", abi::TSS_ADDR, &tss)
}

/// Writes `BootInfo` at [`abi::BOOT_INFO_ADDR`].
pub fn write_boot_info(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), SetupError> {
    write(mem, "BootInfo", abi::BOOT_INFO_ADDR, info.as_slice())
}

/// Writes everything a CPL-3 guest finds in memory at entry (not the guest image itself).
pub fn write_environment(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<u16, SetupError> {
    write_page_tables(mem)?;
    let limit = write_gdt(mem, &cpl3_gdt())?;
    write_tss(mem)?;
    write_boot_info(mem, info)?;
    Ok(limit)
}

/// Long-mode system registers for CPL-3 entry, on top of the vCPU's reset state `sregs`.
pub fn cpl3_sregs(sregs: &mut kvm_sregs) {
    let gdt = cpl3_gdt();
    sregs.gdt.base = abi::GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    // No IDT: any exception escalates to a triple fault, i.e. KVM_EXIT_SHUTDOWN.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = segment(&gdt, abi::SEL_USER_CODE);
    let data = segment(&gdt, abi::SEL_USER_DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(&gdt, abi::SEL_TSS);
    sregs.cr0 = abi::CR0;
    sregs.cr3 = abi::PML4_ADDR;
    sregs.cr4 = abi::CR4;
    sregs.efer = abi::EFER;
}

/// General registers for CPL-3 entry at `entry`.
pub fn cpl3_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: abi::STACK_TOP,
        rdi: abi::BOOT_INFO_ADDR,
        rflags: abi::RFLAGS,
        ..Default::default()
    }
}

/// x87/SSE state as after FNINIT with SSE exceptions masked.
pub fn initial_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    #[test]
    fn descriptors_match_the_usual_encodings() {
        let gdt = cpl3_gdt();
        assert_eq!(gdt[1], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[2], 0x00cf_9300_0000_ffff);
        assert_eq!(gdt[3], 0x00af_fb00_0000_ffff);
        assert_eq!(gdt[4], 0x00cf_f300_0000_ffff);
        // TSS at 0x10000, limit 0x2068, busy 64-bit TSS.
        assert_eq!(gdt[5], 0x0000_8b01_0000_2068);
        assert_eq!(gdt[6], 0);
    }

    #[test]
    fn segments_decode() {
        let gdt = cpl3_gdt();
        let cs = segment(&gdt, abi::SEL_USER_CODE);
        assert_eq!(
            (cs.selector, cs.dpl, cs.l, cs.db, cs.s, cs.type_),
            (0x1b, 3, 1, 0, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ss = segment(&gdt, abi::SEL_USER_DATA);
        assert_eq!((ss.selector, ss.dpl, ss.db, ss.type_), (0x23, 3, 1, 3));
        let tr = segment(&gdt, abi::SEL_TSS);
        assert_eq!(
            (tr.base, tr.limit, tr.type_, tr.s, tr.present),
            (0x10000, 0x2068, 0xb, 0, 1)
        );
    }

    #[test]
    fn environment_layout() {
        let ram = GuestRam::new(4 << 20).unwrap();
        let mem = ram.memory();
        let mut info = BootInfo::new();
        info.mem_size = 4 << 20;
        write_environment(mem, &info).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(pml4, 0x2007);
        let pdpt3: u64 = mem.read_obj(GuestAddress(0x2018)).unwrap();
        assert_eq!(pdpt3, 0x6007);
        let last_pd: u64 = mem.read_obj(GuestAddress(0x6ff8)).unwrap();
        assert_eq!(last_pd, 0xffe0_0000 | 0x87);
        let iomap: u16 = mem.read_obj(GuestAddress(0x10066)).unwrap();
        assert_eq!(iomap, 0x68);
        let term: u8 = mem.read_obj(GuestAddress(0x10000 + 0x68 + 8192)).unwrap();
        assert_eq!(term, 0xff);
        let back: BootInfo = mem.read_obj(GuestAddress(0x9000)).unwrap();
        assert_eq!(back, info);
        assert_eq!(back.magic.to_le_bytes(), *b"PBGUEST1");
    }
}
