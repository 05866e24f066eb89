//! Kernel loading: Patchbay's CPL-3 guest ELF (at its linked address), and Linux (bzImage, or an
//! uncompressed vmlinux ELF) through the 64-bit boot protocol.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_regs, kvm_sregs};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::abi;
use crate::cpl3::{self, SetupError};

/// What `--kernel` points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// A Patchbay CPL-3 guest: a static ELF whose segments are identity-placed
    /// (`p_vaddr == p_paddr`), linked at 0x200000 or above.
    GuestElf,
    /// A Linux vmlinux: an ELF whose segments are linked high (`p_vaddr != p_paddr`).
    LinuxElf,
    /// A Linux bzImage ("HdrS" at 0x202).
    BzImage,
}

impl KernelKind {
    pub fn is_linux(self) -> bool {
        self != KernelKind::GuestElf
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read kernel {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: neither an ELF nor a Linux bzImage")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: bad ELF: {why}")]
    BadElf { path: PathBuf, why: String },
    #[error("{path}: ELF needs {needs} bytes at {addr:#x} but the VM has {mem} bytes")]
    ElfTooBig {
        path: PathBuf,
        needs: u64,
        addr: u64,
        mem: u64,
    },
    #[error("{path}: ELF is linked at {addr:#x}, below {min:#x} (the VMM's page tables, GDT, TSS, BootInfo and stack live there)")]
    ElfTooLow { path: PathBuf, addr: u64, min: u64 },
    #[error(
        "{path}: ELF entry point {entry:#x} is outside its loaded segments {start:#x}..{end:#x}"
    )]
    BadEntry {
        path: PathBuf,
        entry: u64,
        start: u64,
        end: u64,
    },
    #[error("{what} needs {needs} bytes at {addr:#x} but the VM has {mem} bytes")]
    DoesNotFit {
        what: String,
        needs: u64,
        addr: u64,
        mem: u64,
    },
    #[error("loading {path}: {source}")]
    Loader {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("{path}: this bzImage has no 64-bit entry point (XLF_KERNEL_64)")]
    Not64Bit { path: PathBuf },
    #[error("cannot read initrd {path}: {source}")]
    Initrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit between the kernel (ends at {kernel_end:#x}) and the end of usable RAM ({top:#x}); give the VM more memory")]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        top: u64,
    },
    #[error("command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("--initrd is only for Linux kernels; {path} is a Patchbay CPL-3 guest")]
    InitrdForGuest { path: PathBuf },
    #[error(transparent)]
    Setup(#[from] SetupError),
}

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const PT_LOAD: u32 = 1;
const EM_X86_64: u16 = 62;

/// The loadable extent of an ELF, from its program headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfExtent {
    pub entry: u64,
    /// Lowest physical address of a PT_LOAD segment with memory.
    pub start: u64,
    /// One past the highest (`p_paddr + p_memsz`).
    pub end: u64,
    /// Some segment is linked at a virtual address other than its physical one (vmlinux).
    pub relocated: bool,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads an x86-64 ELF's header and program headers.
pub fn elf_extent<R: Read + Seek>(image: &mut R) -> Result<ElfExtent, String> {
    let mut eh = [0u8; 64];
    image.rewind().map_err(|e| e.to_string())?;
    image
        .read_exact(&mut eh)
        .map_err(|_| "file too short for an ELF header".to_string())?;
    if eh[..4] != ELF_MAGIC {
        return Err("no ELF magic".into());
    }
    if eh[4] != 2 || eh[5] != 1 {
        return Err("not a 64-bit little-endian ELF".into());
    }
    if le16(&eh, 0x12) != EM_X86_64 {
        return Err(format!("machine {} is not x86-64", le16(&eh, 0x12)));
    }
    let entry = le64(&eh, 0x18);
    let phoff = le64(&eh, 0x20);
    let phentsize = le16(&eh, 0x36) as usize;
    let phnum = le16(&eh, 0x38) as usize;
    if phentsize != 56 {
        return Err(format!("program header size {phentsize}, expected 56"));
    }
    let mut ph = vec![0u8; phentsize * phnum];
    image
        .seek(SeekFrom::Start(phoff))
        .and_then(|_| image.read_exact(&mut ph))
        .map_err(|_| "program headers extend past the end of the file".to_string())?;
    let (mut start, mut end, mut relocated) = (u64::MAX, 0u64, false);
    for p in ph.chunks_exact(56) {
        if le32(p, 0) != PT_LOAD {
            continue;
        }
        let (vaddr, paddr, filesz, memsz) = (le64(p, 16), le64(p, 24), le64(p, 32), le64(p, 40));
        if filesz > memsz {
            return Err(format!(
                "segment at {paddr:#x} has p_filesz {filesz} > p_memsz {memsz}"
            ));
        }
        if memsz == 0 {
            continue;
        }
        let seg_end = paddr
            .checked_add(memsz)
            .ok_or_else(|| format!("segment at {paddr:#x} of {memsz} bytes overflows"))?;
        start = start.min(paddr);
        end = end.max(seg_end);
        relocated |= vaddr != paddr;
    }
    if end == 0 {
        return Err("no loadable segments".into());
    }
    Ok(ElfExtent {
        entry,
        start,
        end,
        relocated,
    })
}

/// Opens `path` and tells what kind of kernel it is.
pub fn detect(path: &Path) -> Result<(File, KernelKind), LoadError> {
    let open_err = |source| LoadError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let mut head = [0u8; 0x206];
    let n = read_up_to(&mut file, &mut head).map_err(open_err)?;
    let head = &head[..n];
    let kind = if head.starts_with(&ELF_MAGIC) {
        let extent = elf_extent(&mut file).map_err(|why| LoadError::BadElf {
            path: path.to_path_buf(),
            why,
        })?;
        if extent.relocated {
            KernelKind::LinuxElf
        } else {
            KernelKind::GuestElf
        }
    } else if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        KernelKind::BzImage
    } else {
        return Err(LoadError::UnknownFormat {
            path: path.to_path_buf(),
        });
    };
    file.rewind().map_err(open_err)?;
    Ok((file, kind))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Loads a CPL-3 guest ELF at its linked address after checking that it fits in RAM above the
/// VMM's structures. Returns the entry point.
pub fn load_guest_elf(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    file: &mut File,
    path: &Path,
) -> Result<u64, LoadError> {
    let p = || path.to_path_buf();
    let ext = elf_extent(file).map_err(|why| LoadError::BadElf { path: p(), why })?;
    check_guest_elf(&ext, mem_size, path)?;
    Elf::load(mem, None, file, Some(GuestAddress(abi::GUEST_LOAD_ADDR)))
        .map_err(|source| LoadError::Loader { path: p(), source })?;
    Ok(ext.entry)
}

/// Checks, before any VM exists, that the kernel in `file` (of `kind`) fits in `mem_size`
/// bytes of RAM, so that configuration errors are reported without touching /dev/kvm.
pub fn preflight(
    file: &mut File,
    kind: KernelKind,
    mem_size: u64,
    path: &Path,
) -> Result<(), LoadError> {
    let p = || path.to_path_buf();
    match kind {
        KernelKind::GuestElf => {
            let ext = elf_extent(file).map_err(|why| LoadError::BadElf { path: p(), why })?;
            check_guest_elf(&ext, mem_size, path)?;
        }
        KernelKind::LinuxElf => {
            let ext = elf_extent(file).map_err(|why| LoadError::BadElf { path: p(), why })?;
            if ext.end > mem_size {
                return Err(LoadError::DoesNotFit {
                    what: path.display().to_string(),
                    needs: ext.end - ext.start,
                    addr: ext.start,
                    mem: mem_size,
                });
            }
        }
        KernelKind::BzImage => {
            let mut hdr = [0u8; 0x268];
            file.rewind()
                .and_then(|_| file.read_exact(&mut hdr))
                .map_err(|source| LoadError::Open { path: p(), source })?;
            let pref = match le64(&hdr, 0x258) {
                0 => 0x100_0000,
                a => a,
            };
            let init_size = u64::from(le32(&hdr, 0x260));
            if pref + init_size > mem_size {
                return Err(LoadError::DoesNotFit {
                    what: format!("{} (decompressed, init_size)", path.display()),
                    needs: init_size,
                    addr: pref,
                    mem: mem_size,
                });
            }
        }
    }
    file.rewind()
        .map_err(|source| LoadError::Open { path: p(), source })
}

fn check_guest_elf(ext: &ElfExtent, mem_size: u64, path: &Path) -> Result<(), LoadError> {
    let p = || path.to_path_buf();
    if ext.start < abi::GUEST_LOAD_ADDR {
        return Err(LoadError::ElfTooLow {
            path: p(),
            addr: ext.start,
            min: abi::GUEST_LOAD_ADDR,
        });
    }
    if ext.end > mem_size {
        return Err(LoadError::ElfTooBig {
            path: p(),
            needs: ext.end - ext.start,
            addr: ext.start,
            mem: mem_size,
        });
    }
    if !(ext.start..ext.end).contains(&ext.entry) {
        return Err(LoadError::BadEntry {
            path: p(),
            entry: ext.entry,
            start: ext.start,
            end: ext.end,
        });
    }
    Ok(())
}

/// Copies raw machine code to `addr` (tests and tiny guests); checks it fits.
pub fn load_flat(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    bytes: &[u8],
    addr: u64,
) -> Result<(), LoadError> {
    let end = addr.saturating_add(bytes.len() as u64);
    if addr < abi::GUEST_LOAD_ADDR || end > mem_size {
        return Err(LoadError::DoesNotFit {
            what: "flat image".into(),
            needs: bytes.len() as u64,
            addr,
            mem: mem_size,
        });
    }
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| SetupError {
            what: "flat image",
            addr,
            source,
        })?;
    Ok(())
}

// Linux boot protocol (Documentation/arch/x86/boot.rst), 64-bit entry.

/// The zero page.
pub const BOOT_PARAMS_ADDR: u64 = 0x7000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Initial stack for the kernel's entry code.
pub const LINUX_STACK: u64 = 0x8ff0;
/// Start of the EBDA: the end of low RAM in the e820 map.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of high RAM (the protected-mode kernel of a bzImage is loaded here).
pub const HIMEM_START: u64 = 0x10_0000;
/// Linux's GDT selectors for the 64-bit boot protocol: __BOOT_CS, __BOOT_DS, and a TSS.
pub const LINUX_SEL_CS: u16 = 0x10;
pub const LINUX_SEL_DS: u16 = 0x18;
pub const LINUX_SEL_TSS: u16 = 0x20;
/// Default command-line capacity when the kernel does not say (vmlinux).
const DEFAULT_CMDLINE_SIZE: u32 = 2048;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const XLF_KERNEL_64: u16 = 1;
const E820_RAM: u32 = 1;

/// Where a Linux kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxBoot {
    pub entry: u64,
    pub boot_params: u64,
    pub kernel_end: u64,
    pub initrd: Option<(u64, u64)>,
}

/// Loads a Linux kernel (bzImage or vmlinux) with its command line (`virtio_mmio.device=`
/// entries already appended by the caller) and optional initrd, and writes the zero page.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &mut File,
    kind: KernelKind,
    path: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<LinuxBoot, LoadError> {
    let p = || path.to_path_buf();
    let mut params = boot_params::default();
    let (entry, reserved_end);
    match kind {
        KernelKind::BzImage => {
            let r = BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
                .map_err(|source| LoadError::Loader { path: p(), source })?;
            let hdr = r
                .setup_header
                .expect("the bzImage loader returns the setup header");
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoadError::Not64Bit { path: p() });
            }
            // The decompressed kernel needs init_size bytes at its preferred address (it may
            // pick another one with KASLR, avoiding the initrd and command line).
            let pref = if hdr.pref_address != 0 {
                hdr.pref_address
            } else {
                0x100_0000
            };
            let need_end = pref + u64::from(hdr.init_size);
            if need_end > mem_size {
                return Err(LoadError::DoesNotFit {
                    what: format!("{} (decompressed, init_size)", path.display()),
                    needs: u64::from(hdr.init_size),
                    addr: pref,
                    mem: mem_size,
                });
            }
            entry = r.kernel_load.0 + 0x200;
            reserved_end = need_end.max(r.kernel_end);
            params.hdr = hdr;
        }
        KernelKind::LinuxElf => {
            let ext = elf_extent(kernel).map_err(|why| LoadError::BadElf { path: p(), why })?;
            if ext.end > mem_size {
                return Err(LoadError::DoesNotFit {
                    what: path.display().to_string(),
                    needs: ext.end - ext.start,
                    addr: ext.start,
                    mem: mem_size,
                });
            }
            let r = Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
                .map_err(|source| LoadError::Loader { path: p(), source })?;
            entry = r.kernel_load.0;
            reserved_end = ext.end;
            params.hdr.kernel_alignment = 0x100_0000;
            params.hdr.cmdline_size = DEFAULT_CMDLINE_SIZE;
        }
        KernelKind::GuestElf => unreachable!("load_linux is for Linux kernels"),
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;

    // Command line.
    let max = match params.hdr.cmdline_size {
        0 => DEFAULT_CMDLINE_SIZE,
        n => n,
    } as usize;
    if cmdline.len() >= max {
        return Err(LoadError::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|source| SetupError {
            what: "kernel command line",
            addr: CMDLINE_ADDR,
            source,
        })?;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;

    // Initrd: at the top of RAM (below initrd_addr_max), page aligned.
    let mut initrd_placed = None;
    if let Some(ipath) = initrd {
        let ierr = |source| LoadError::Initrd {
            path: ipath.to_path_buf(),
            source,
        };
        let mut f = File::open(ipath).map_err(ierr)?;
        let size = f.metadata().map_err(ierr)?.len();
        let addr_max = match params.hdr.initrd_addr_max {
            0 => 0x37ff_ffff,
            n => u64::from(n),
        };
        let top = mem_size.min(addr_max + 1);
        let addr = top.checked_sub(size).map(|a| a & !0xfff);
        let addr = match addr {
            Some(a) if a >= reserved_end => a,
            _ => {
                return Err(LoadError::InitrdTooBig {
                    path: ipath.to_path_buf(),
                    size,
                    kernel_end: reserved_end,
                    top,
                })
            }
        };
        mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
            .map_err(|e| ierr(std::io::Error::other(e.to_string())))?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
        initrd_placed = Some((addr, size));
    }

    // e820: low RAM below the EBDA, and everything from 1 MiB.
    let e820 = [(0, EBDA_START), (HIMEM_START, mem_size - HIMEM_START)];
    for (i, (addr, size)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = e820.len() as u8;

    // SAFETY: `boot_params` is a `#[repr(C, packed)]` struct made only of integers and arrays
    // of integers (no padding, no pointers), so its storage is fully initialised plain bytes;
    // the slice borrows `params` for no longer than this function.
    let zero_page = unsafe {
        std::slice::from_raw_parts(
            (&params as *const boot_params).cast::<u8>(),
            std::mem::size_of::<boot_params>(),
        )
    };
    mem.write_slice(zero_page, GuestAddress(BOOT_PARAMS_ADDR))
        .map_err(|source| SetupError {
            what: "zero page (boot_params)",
            addr: BOOT_PARAMS_ADDR,
            source,
        })?;

    Ok(LinuxBoot {
        entry,
        boot_params: BOOT_PARAMS_ADDR,
        kernel_end: reserved_end,
        initrd: initrd_placed,
    })
}

/// Linux's boot GDT: null, null, __BOOT_CS (0x10, code64), __BOOT_DS (0x18), TSS (0x20).
pub fn linux_gdt() -> [u64; 6] {
    let tss = cpl3::tss_descriptor(abi::TSS_ADDR, abi::TSS_SIZE as u32 - 1);
    [
        0,
        0,
        cpl3::descriptor(0x9b, 0xa, 0, 0xfffff),
        cpl3::descriptor(0x93, 0xc, 0, 0xfffff),
        tss[0],
        tss[1],
    ]
}

/// Writes Linux's boot page tables and GDT.
pub fn write_linux_environment(mem: &GuestMemoryMmap) -> Result<(), SetupError> {
    cpl3::write_page_tables(mem)?;
    cpl3::write_gdt(mem, &linux_gdt())?;
    Ok(())
}

/// 64-bit boot protocol state: long mode, paging with the identity map, CPL 0, flat __BOOT_CS /
/// __BOOT_DS, interrupts off.
pub fn linux_sregs(sregs: &mut kvm_sregs) {
    let gdt = linux_gdt();
    sregs.gdt.base = abi::GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = cpl3::segment(&gdt, LINUX_SEL_CS);
    let ds = cpl3::segment(&gdt, LINUX_SEL_DS);
    sregs.ds = ds;
    sregs.es = ds;
    sregs.fs = ds;
    sregs.gs = ds;
    sregs.ss = ds;
    sregs.tr = cpl3::segment(&gdt, LINUX_SEL_TSS);
    sregs.cr0 = 0x8000_0033; // PG | NE | ET | MP | PE
    sregs.cr3 = abi::PML4_ADDR;
    sregs.cr4 = 0x20; // PAE
    sregs.efer = abi::EFER;
}

/// 64-bit boot protocol registers: RIP at the 64-bit entry, RSI at the zero page.
pub fn linux_regs(boot: &LinuxBoot) -> kvm_regs {
    kvm_regs {
        rip: boot.entry,
        rsi: boot.boot_params,
        rsp: LINUX_STACK,
        rbp: LINUX_STACK,
        rflags: abi::RFLAGS,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A minimal ELF: header, one PT_LOAD, code.
    fn elf(paddr: u64, vaddr: u64, code: &[u8], memsz: u64) -> Vec<u8> {
        let mut f = vec![0u8; 120];
        f[..4].copy_from_slice(&ELF_MAGIC);
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes());
        f[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[0x18..0x20].copy_from_slice(&vaddr.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut f[64..120];
        ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes());
        ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
        ph[24..32].copy_from_slice(&paddr.to_le_bytes());
        ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        f.extend_from_slice(code);
        f
    }

    #[test]
    fn elf_extents() {
        let e = elf_extent(&mut Cursor::new(elf(0x20_0000, 0x20_0000, &[0xf4], 0x5000))).unwrap();
        assert_eq!(
            e,
            ElfExtent {
                entry: 0x20_0000,
                start: 0x20_0000,
                end: 0x20_5000,
                relocated: false
            }
        );
        let linux = elf(0x100_0000, 0xffff_ffff_8100_0000, &[0xf4], 1);
        assert!(elf_extent(&mut Cursor::new(linux)).unwrap().relocated);
        assert!(elf_extent(&mut Cursor::new(b"\x7fELF".to_vec())).is_err());
        let mut bad = elf(0x20_0000, 0x20_0000, &[0xf4], 0);
        bad[4] = 1;
        assert!(elf_extent(&mut Cursor::new(bad)).is_err());
    }

    #[test]
    fn linux_gdt_follows_the_boot_protocol() {
        let gdt = linux_gdt();
        let cs = cpl3::segment(&gdt, LINUX_SEL_CS);
        assert_eq!((cs.dpl, cs.l, cs.type_, cs.limit), (0, 1, 0xb, 0xffff_ffff));
        let ds = cpl3::segment(&gdt, LINUX_SEL_DS);
        assert_eq!((ds.dpl, ds.db, ds.type_), (0, 1, 3));
    }
}
