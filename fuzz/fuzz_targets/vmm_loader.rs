//! Kernel loading on arbitrary files: the bytes become a file (a memfd, opened by path as
//! `--kernel` is), which `detect` classifies; `preflight` checks it against a 32 MiB VM, and
//! then `load_guest_elf` or `load_linux` (bzImage or vmlinux ELF) loads it into guest memory.
//! Nothing may panic; whatever loads must be entered inside guest memory.

#![no_main]

use std::fs::File;
use std::io::{Cursor, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nix::sys::memfd::{memfd_create, MFdFlags};
use patchbay_vmm::abi::GUEST_LOAD_ADDR;
use patchbay_vmm::loader::{detect, elf_extent, load_guest_elf, load_linux, preflight, KernelKind};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const MEM_SIZE: u64 = 32 << 20;

fn memory() -> &'static GuestMemoryMmap {
    static M: OnceLock<GuestMemoryMmap> = OnceLock::new();
    M.get_or_init(|| {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest RAM")
    })
}

/// The kernel file: one memfd, rewritten per input, named by its /proc path.
fn kernel_file() -> &'static (File, PathBuf) {
    static K: OnceLock<(File, PathBuf)> = OnceLock::new();
    K.get_or_init(|| {
        let file = File::from(memfd_create(c"pb-fuzz-kernel", MFdFlags::empty()).expect("memfd"));
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        (file, path)
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = elf_extent(&mut Cursor::new(data));

    let (mut file, path) = {
        let (f, p) = kernel_file();
        (f, p.as_path())
    };
    file.set_len(0).expect("truncate");
    file.seek(SeekFrom::Start(0)).expect("rewind");
    file.write_all(data).expect("write kernel");

    let Ok((mut kernel, kind)) = detect(path) else {
        return;
    };
    if preflight(&mut kernel, kind, MEM_SIZE, path).is_err() {
        return;
    }
    let mem = memory();
    match kind {
        KernelKind::GuestElf => {
            if let Ok(entry) = load_guest_elf(mem, MEM_SIZE, &mut kernel, path) {
                assert!(
                    (GUEST_LOAD_ADDR..MEM_SIZE).contains(&entry),
                    "guest entry {entry:#x} outside RAM"
                );
            }
        }
        KernelKind::LinuxElf | KernelKind::BzImage => {
            if let Ok(boot) = load_linux(
                mem,
                MEM_SIZE,
                &mut kernel,
                kind,
                path,
                None,
                "console=ttyS0",
            ) {
                assert!(boot.kernel_end <= MEM_SIZE, "{boot:?}");
            }
        }
    }
});
