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
    #[error("{path}: bad ELF: {source}")]
    BadElf { path: PathBuf, source: ElfError },
    /// A sum of header fields (named) that does not fit in 64 bits: a crafted image.
    #[error(
        "{path}: header field {field} overflows: {base:#x} + {add:#x} does not fit in 64 bits"
    )]
    HeaderOverflow {
        path: PathBuf,
        field: &'static str,
        base: u64,
        add: u64,
    },
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
    #[error("{what} ({value:#x}) does not fit the boot protocol's 32-bit field")]
    Not32Bit { what: &'static str, value: u64 },
    #[error("--initrd is only for Linux kernels; {path} is a Patchbay CPL-3 guest")]
    InitrdForGuest { path: PathBuf },
    #[error(transparent)]
    Setup(#[from] SetupError),
}

/// What is wrong with an ELF's headers.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("file too short for an ELF header")]
    TooShort,
    #[error("no ELF magic")]
    NoMagic,
    #[error("not a 64-bit little-endian ELF")]
    NotElf64Le,
    #[error("machine {0} is not x86-64")]
    NotX86_64(u16),
    #[error("program header size {0}, expected 56")]
    PhentSize(usize),
    #[error("program headers extend past the end of the file")]
    PhdrsPastEnd,
    #[error("segment at {paddr:#x} has p_filesz {filesz} > p_memsz {memsz}")]
    FileszOverMemsz { paddr: u64, filesz: u64, memsz: u64 },
    /// A sum of program header fields (named) that does not fit in 64 bits.
    #[error(
        "program header {index}: {field} overflows: {base:#x} + {add:#x} does not fit in 64 bits"
    )]
    Overflow {
        index: usize,
        field: &'static str,
        base: u64,
        add: u64,
    },
    #[error("program header {index}: segment data at {offset:#x} ({filesz} bytes) extends past the end of the file ({file_len} bytes)")]
    SegmentPastEnd {
        index: usize,
        offset: u64,
        filesz: u64,
        file_len: u64,
    },
    #[error("no loadable segments")]
    NoLoadableSegments,
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

/// `base + add`, or the typed error naming the program header field.
fn checked_sum(index: usize, field: &'static str, base: u64, add: u64) -> Result<u64, ElfError> {
    base.checked_add(add).ok_or(ElfError::Overflow {
        index,
        field,
        base,
        add,
    })
}

/// Reads an x86-64 ELF's header and program headers, and checks every loadable segment: its
/// file data inside the file, its physical and virtual extents inside the address space.
pub fn elf_extent<R: Read + Seek>(image: &mut R) -> Result<ElfExtent, ElfError> {
    let mut eh = [0u8; 64];
    let file_len = image.seek(SeekFrom::End(0))?;
    image.rewind()?;
    image.read_exact(&mut eh).map_err(|_| ElfError::TooShort)?;
    if eh[..4] != ELF_MAGIC {
        return Err(ElfError::NoMagic);
    }
    if eh[4] != 2 || eh[5] != 1 {
        return Err(ElfError::NotElf64Le);
    }
    if le16(&eh, 0x12) != EM_X86_64 {
        return Err(ElfError::NotX86_64(le16(&eh, 0x12)));
    }
    let entry = le64(&eh, 0x18);
    let phoff = le64(&eh, 0x20);
    let phentsize = le16(&eh, 0x36) as usize;
    let phnum = le16(&eh, 0x38) as usize;
    if phentsize != 56 {
        return Err(ElfError::PhentSize(phentsize));
    }
    // At most 56 * 65535 bytes: no overflow, and a bounded allocation.
    let mut ph = vec![0u8; phentsize * phnum];
    image
        .seek(SeekFrom::Start(phoff))
        .and_then(|_| image.read_exact(&mut ph))
        .map_err(|_| ElfError::PhdrsPastEnd)?;
    let (mut start, mut end, mut relocated) = (u64::MAX, 0u64, false);
    for (index, p) in ph.chunks_exact(56).enumerate() {
        if le32(p, 0) != PT_LOAD {
            continue;
        }
        let (offset, vaddr, paddr) = (le64(p, 8), le64(p, 16), le64(p, 24));
        let (filesz, memsz) = (le64(p, 32), le64(p, 40));
        if filesz > memsz {
            return Err(ElfError::FileszOverMemsz {
                paddr,
                filesz,
                memsz,
            });
        }
        let data_end = checked_sum(index, "p_offset + p_filesz", offset, filesz)?;
        // A segment with no file data (bss only) may point anywhere.
        if filesz > 0 && data_end > file_len {
            return Err(ElfError::SegmentPastEnd {
                index,
                offset,
                filesz,
                file_len,
            });
        }
        if memsz == 0 {
            continue;
        }
        let seg_end = checked_sum(index, "p_paddr + p_memsz", paddr, memsz)?;
        checked_sum(index, "p_vaddr + p_memsz", vaddr, memsz)?;
        start = start.min(paddr);
        end = end.max(seg_end);
        relocated |= vaddr != paddr;
    }
    if end == 0 {
        return Err(ElfError::NoLoadableSegments);
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
        let extent = elf_extent(&mut file).map_err(|source| LoadError::BadElf {
            path: path.to_path_buf(),
            source,
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
    let ext = elf_extent(file).map_err(|source| LoadError::BadElf { path: p(), source })?;
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
            let ext = elf_extent(file).map_err(|source| LoadError::BadElf { path: p(), source })?;
            check_guest_elf(&ext, mem_size, path)?;
        }
        KernelKind::LinuxElf => {
            let ext = elf_extent(file).map_err(|source| LoadError::BadElf { path: p(), source })?;
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
            if decompressed_end(pref, init_size, path)? > mem_size {
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

/// Where a bzImage's decompressed kernel ends (`pref_address + init_size`, both from the
/// header), or the typed error if the sum overflows.
fn decompressed_end(pref: u64, init_size: u64, path: &Path) -> Result<u64, LoadError> {
    pref.checked_add(init_size)
        .ok_or_else(|| LoadError::HeaderOverflow {
            path: path.to_path_buf(),
            field: "pref_address + init_size",
            base: pref,
            add: init_size,
        })
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
/// Bytes from the command line to the EBDA: the most a command line (with its NUL) may take.
const CMDLINE_ROOM: usize = (EBDA_START - CMDLINE_ADDR) as usize;
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
            let need_end = decompressed_end(pref, u64::from(hdr.init_size), path)?;
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
            let ext =
                elf_extent(kernel).map_err(|source| LoadError::BadElf { path: p(), source })?;
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
    // A header may place the kernel anywhere (code32_start); what was placed, and where it
    // starts running, must be inside the VM's RAM.
    if reserved_end > mem_size || entry >= mem_size {
        return Err(LoadError::DoesNotFit {
            what: format!("{} (its header places it at {entry:#x})", path.display()),
            needs: reserved_end.saturating_sub(HIMEM_START),
            addr: entry,
            mem: mem_size,
        });
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;

    // Command line: as long as the kernel takes (its header says), but never past the EBDA,
    // so that a crafted cmdline_size cannot let it run over low memory and the kernel.
    let max = match params.hdr.cmdline_size {
        0 => DEFAULT_CMDLINE_SIZE,
        n => n,
    } as usize;
    let max = max.min(CMDLINE_ROOM);
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
    // Below CMDLINE_ROOM, so it fits.
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
        let boot_u32 = |what, value: u64| {
            u32::try_from(value).map_err(|_| LoadError::Not32Bit { what, value })
        };
        params.hdr.ramdisk_image = boot_u32("initrd address", addr)?;
        params.hdr.ramdisk_size = boot_u32("initrd size", size)?;
        initrd_placed = Some((addr, size));
    }

    // e820: low RAM below the EBDA, and everything from 1 MiB.
    let high_ram = mem_size
        .checked_sub(HIMEM_START)
        .ok_or_else(|| LoadError::DoesNotFit {
            what: "RAM above 1 MiB (e820)".into(),
            needs: HIMEM_START,
            addr: 0,
            mem: mem_size,
        })?;
    let e820 = [(0, EBDA_START), (HIMEM_START, high_ram)];
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

    /// `bytes` in a file of the test's own, removed when dropped (the loaders take a File).
    struct TempImage {
        path: PathBuf,
        file: File,
    }

    impl TempImage {
        fn new(name: &str, bytes: &[u8]) -> TempImage {
            let path =
                std::env::temp_dir().join(format!("patchbay-loader-{}-{name}", std::process::id()));
            std::fs::write(&path, bytes).unwrap();
            let file = File::open(&path).unwrap();
            TempImage { path, file }
        }
    }

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// A bzImage that linux-loader accepts: one setup sector after the boot sector, a
    /// 64-bit entry, 512 bytes of protected-mode kernel loaded at 1 MiB.
    fn bzimage(pref_address: u64, init_size: u32, cmdline_size: u32) -> Vec<u8> {
        let mut f = vec![0u8; 1024 + 512];
        f[0x1f1] = 1; // setup_sects
        f[0x1fe..0x200].copy_from_slice(&KERNEL_BOOT_FLAG_MAGIC.to_le_bytes());
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
        f[0x211] = 1; // loadflags: LOADED_HIGH
        f[0x214..0x218].copy_from_slice(&(HIMEM_START as u32).to_le_bytes()); // code32_start
        f[0x236..0x238].copy_from_slice(&XLF_KERNEL_64.to_le_bytes());
        f[0x238..0x23c].copy_from_slice(&cmdline_size.to_le_bytes());
        f[0x258..0x260].copy_from_slice(&pref_address.to_le_bytes());
        f[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        f
    }

    const TEST_MEM: u64 = 4 << 20;

    fn test_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), TEST_MEM as usize)]).unwrap()
    }

    #[test]
    fn a_kernel_whose_header_places_it_outside_ram_is_refused() {
        // Found by the vmm_loader fuzz target: a bzImage with no payload whose header puts it
        // at 2 GiB "loaded" (nothing to write) with its entry point outside a 32 MiB VM.
        let bytes = include_bytes!("../../fuzz/regressions/vmm_loader/bzimage-loaded-above-ram");
        let img = TempImage::new("bz-above-ram", bytes);
        let path = img.path.clone();
        let (mut file, kind) = detect(&path).expect("the fuzzer's input is taken for a kernel");
        // The fuzzer's VM size.
        let mem_size = 32 << 20;
        preflight(&mut file, kind, mem_size, &path).expect("and passes the preflight");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size as usize)]).unwrap();
        let loaded = load_linux(
            &mem,
            mem_size,
            &mut file,
            kind,
            &path,
            None,
            "console=ttyS0",
        );
        assert!(
            matches!(loaded, Err(LoadError::DoesNotFit { .. })),
            "{loaded:?}"
        );
    }

    #[test]
    fn a_bzimage_whose_pref_address_plus_init_size_overflows_is_refused() {
        let mut img = TempImage::new("bz-pref", &bzimage(0xffff_ffff_ffff_f000, 0x10_0000, 0));
        let path = img.path.clone();
        let err = preflight(&mut img.file, KernelKind::BzImage, TEST_MEM, &path).unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::HeaderOverflow {
                    field: "pref_address + init_size",
                    base: 0xffff_ffff_ffff_f000,
                    add: 0x10_0000,
                    ..
                }
            ),
            "preflight: {err}"
        );
        let err = load_linux(
            &test_memory(),
            TEST_MEM,
            &mut img.file,
            KernelKind::BzImage,
            &path,
            None,
            "console=ttyS0",
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::HeaderOverflow {
                    field: "pref_address + init_size",
                    ..
                }
            ),
            "load_linux: {err}"
        );
    }

    #[test]
    fn a_bzimage_cannot_make_the_command_line_overwrite_low_memory() {
        // The kernel claims a 4 GiB command line; only what fits below the EBDA is taken.
        let mut img = TempImage::new("bz-cmdline", &bzimage(HIMEM_START, 0x1000, u32::MAX));
        let path = img.path.clone();
        let mem = test_memory();
        let room = (EBDA_START - CMDLINE_ADDR) as usize;
        let long = "x".repeat(room);
        let err = load_linux(
            &mem,
            TEST_MEM,
            &mut img.file,
            KernelKind::BzImage,
            &path,
            None,
            &long,
        )
        .unwrap_err();
        assert!(
            matches!(err, LoadError::CmdlineTooLong { len, max } if len == room && max == room - 1),
            "{err}"
        );
        img.file.rewind().unwrap();
        let boot = load_linux(
            &mem,
            TEST_MEM,
            &mut img.file,
            KernelKind::BzImage,
            &path,
            None,
            &long[..room - 1],
        )
        .expect("the longest command line that fits");
        assert_eq!(boot.entry, HIMEM_START + 0x200);
    }

    /// The single program header of [`elf`] starts at byte 64.
    fn set_ph(f: &mut [u8], at: usize, value: u64) {
        f[64 + at..64 + at + 8].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn elf_headers_with_overflowing_or_outside_values_are_refused() {
        // p_offset + p_filesz wraps (offset is at byte 8 of the program header).
        let mut f = elf(0x20_0000, 0x20_0000, &[0xf4], 0x5000);
        set_ph(&mut f, 8, u64::MAX);
        let err = elf_extent(&mut Cursor::new(f)).unwrap_err();
        assert!(
            matches!(
                err,
                ElfError::Overflow {
                    index: 0,
                    field: "p_offset + p_filesz",
                    base: u64::MAX,
                    add: 1
                }
            ),
            "{err}"
        );
        // Segment data past the end of the file.
        let mut f = elf(0x20_0000, 0x20_0000, &[0xf4], 0x5000);
        set_ph(&mut f, 8, 0x1000);
        let err = elf_extent(&mut Cursor::new(f)).unwrap_err();
        assert!(
            matches!(
                err,
                ElfError::SegmentPastEnd {
                    offset: 0x1000,
                    filesz: 1,
                    file_len: 121,
                    ..
                }
            ),
            "{err}"
        );
        // Unless it has no file data (bss only).
        let mut f = elf(0x20_0000, 0x20_0000, &[], 0x5000);
        set_ph(&mut f, 8, 0x10_0000);
        assert!(elf_extent(&mut Cursor::new(f)).is_ok());
        // p_paddr + p_memsz wraps.
        let f = elf(u64::MAX - 0x10, 0x20_0000, &[0xf4], 0x5000);
        let err = elf_extent(&mut Cursor::new(f)).unwrap_err();
        assert!(
            matches!(
                err,
                ElfError::Overflow {
                    field: "p_paddr + p_memsz",
                    ..
                }
            ),
            "{err}"
        );
        // p_vaddr + p_memsz wraps (a vmlinux is linked high).
        let f = elf(0x100_0000, u64::MAX - 0x10, &[0xf4], 0x5000);
        let err = elf_extent(&mut Cursor::new(f)).unwrap_err();
        assert!(
            matches!(
                err,
                ElfError::Overflow {
                    field: "p_vaddr + p_memsz",
                    ..
                }
            ),
            "{err}"
        );
        // Through detect, the path and the field are named.
        let mut bad = elf(0x20_0000, 0x20_0000, &[0xf4], 0x5000);
        set_ph(&mut bad, 8, u64::MAX);
        let img = TempImage::new("elf-offset", &bad);
        let err = detect(&img.path).unwrap_err();
        assert!(
            matches!(
                &err,
                LoadError::BadElf {
                    source: ElfError::Overflow {
                        field: "p_offset + p_filesz",
                        ..
                    },
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("p_offset + p_filesz overflows"),
            "{err}"
        );
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
