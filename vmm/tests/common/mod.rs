//! Shared helpers for the VMM tests: hand-assembled test guests, a minimal ELF writer, and
//! the /dev/kvm skip rule.

#![allow(dead_code)]

pub mod console;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `mov dx,0x3f8; mov al,'H'; out dx,al; mov al,'i'; out dx,al; mov al,10; out dx,al;
///  mov dx,0x501; mov eax,7; out dx,eax; ud2`
pub const HELLO: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x48, 0xee, 0xb0, 0x69, 0xee, 0xb0, 0x0a, 0xee, 0x66, 0xba, 0x01,
    0x05, 0xb8, 0x07, 0x00, 0x00, 0x00, 0xef, 0x0f, 0x0b,
];

/// Checks BootInfo at RDI (magic, tsc_khz != 0), prints the CPL digit, a space, the cmdline
/// from BootInfo and a newline (through `call`/`ret`, so the stack works), then powers off
/// with status mem_size >> 20 (99 if BootInfo is wrong):
/// ```text
///   movabs rax,0x3154534555474250 ; cmp [rdi],rax ; jne bad
///   cmp qword [rdi+8],0 ; je bad
///   mov dx,0x3f8 ; mov ax,cs ; and al,3 ; add al,'0' ; call putc
///   mov al,' ' ; call putc
///   mov ecx,[rdi+80] ; lea rsi,[rdi+84]
/// 1: test ecx,ecx ; jz 2f ; lodsb ; call putc ; dec ecx ; jmp 1b
/// 2: mov al,10 ; call putc
///   mov dx,0x501 ; mov eax,[rdi+16] ; shr eax,20 ; out dx,eax
/// bad: mov dx,0x501 ; mov eax,99 ; out dx,eax
/// putc: out dx,al ; ret
/// ```
pub const BOOT_INFO_ECHO: &[u8] = &[
    0x48, 0xb8, 0x50, 0x42, 0x47, 0x55, 0x45, 0x53, 0x54, 0x31, 0x48, 0x39, 0x07, 0x75, 0x45, 0x48,
    0x83, 0x7f, 0x08, 0x00, 0x74, 0x3e, 0x66, 0xba, 0xf8, 0x03, 0x66, 0x8c, 0xc8, 0x24, 0x03, 0x04,
    0x30, 0xe8, 0x38, 0x00, 0x00, 0x00, 0xb0, 0x20, 0xe8, 0x31, 0x00, 0x00, 0x00, 0x8b, 0x4f, 0x50,
    0x48, 0x8d, 0x77, 0x54, 0x85, 0xc9, 0x74, 0x0a, 0xac, 0xe8, 0x20, 0x00, 0x00, 0x00, 0xff, 0xc9,
    0xeb, 0xf2, 0xb0, 0x0a, 0xe8, 0x15, 0x00, 0x00, 0x00, 0x66, 0xba, 0x01, 0x05, 0x8b, 0x47, 0x10,
    0xc1, 0xe8, 0x14, 0xef, 0x66, 0xba, 0x01, 0x05, 0xb8, 0x63, 0x00, 0x00, 0x00, 0xef, 0xee, 0xc3,
];

/// `mov dx,0x502; mov eax,150; out dx,eax; mov dx,0x3f8; mov al,'W'; out dx,al;
///  mov dx,0x501; xor eax,eax; out dx,eax` (idle for 150 ms, then print W and power off 0).
pub const IDLE_150MS: &[u8] = &[
    0x66, 0xba, 0x02, 0x05, 0xb8, 0x96, 0x00, 0x00, 0x00, 0xef, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x57,
    0xee, 0x66, 0xba, 0x01, 0x05, 0x31, 0xc0, 0xef,
];

/// `mov rbx,0x1234; ud2` (an invalid-opcode fault with no IDT: a triple fault).
pub const FAULT: &[u8] = &[0x48, 0xc7, 0xc3, 0x34, 0x12, 0x00, 0x00, 0x0f, 0x0b];

/// The load address of test guests (the ABI's ELF address).
pub const LOAD_ADDR: u64 = 0x20_0000;

/// A minimal static x86-64 ELF: one PT_LOAD of `code` at `paddr` (= vaddr) with `memsz`
/// bytes in memory, entry at `paddr`.
pub fn elf(code: &[u8], paddr: u64, memsz: u64) -> Vec<u8> {
    let mut f = vec![0u8; 120];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little-endian
    f[6] = 1; // version
    f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
    f[0x18..0x20].copy_from_slice(&paddr.to_le_bytes()); // e_entry
    f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = &mut f[64..120];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
    ph[16..24].copy_from_slice(&paddr.to_le_bytes()); // p_vaddr
    ph[24..32].copy_from_slice(&paddr.to_le_bytes()); // p_paddr
    ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    ph[40..48].copy_from_slice(&memsz.max(code.len() as u64).to_le_bytes()); // p_memsz
    ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes()); // p_align
    f.extend_from_slice(code);
    f
}

/// A per-test scratch directory under the target dir.
pub fn scratch(test: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("vmm-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a guest ELF for `code` into the test's scratch directory.
pub fn guest_elf(test: &str, code: &[u8]) -> PathBuf {
    let path = scratch(test).join("guest.elf");
    std::fs::write(&path, elf(code, LOAD_ADDR, 0)).unwrap();
    path
}

/// Why this host cannot run VMs, if it cannot.
pub fn kvm_unavailable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm: {e}")),
    }
}

/// True if the test should go on; otherwise prints why it is skipped (or fails under
/// PATCHBAY_REQUIRE_KVM=1).
pub fn have_kvm(test: &str) -> bool {
    match kvm_unavailable() {
        None => true,
        Some(reason) => {
            patchbay_tests::guest::skip_or_fail(test, &reason);
            false
        }
    }
}

/// Runs the VMM binary to completion.
pub fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patchbay-vmm"))
        .args(args)
        .output()
        .expect("run patchbay-vmm")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
