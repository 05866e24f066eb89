//! Freestanding entry point of the Patchbay guest (see docs/vmm-guest-abi.md): runs at CPL 3,
//! entered at `_start` with RDI = &BootInfo and RSP = 0x1ffff0; no libc, no interrupts.
#![no_std]
#![no_main]

use core::arch::global_asm;
use core::fmt::Write;
use core::panic::PanicInfo;
use guest::bootinfo::BootInfo;

// memcpy & co. and rust_eh_personality are exported (unmangled) by `guest::mem`.

// Align the stack for the System V ABI (RSP + 8 must be 16-aligned at a function's entry),
// zero .bss (the loader may not), keep RDI (the BootInfo pointer) and call into Rust.
global_asm!(
    ".section .text._start,\"ax\",@progbits",
    ".globl _start",
    "_start:",
    "    and rsp, -16",
    "    xor ebp, ebp",
    "    mov r12, rdi",
    "    lea rdi, [rip + __bss_start]",
    "    lea rcx, [rip + __bss_end]",
    "    sub rcx, rdi",
    "    xor eax, eax",
    "    cld",
    "    rep stosb",
    "    mov rdi, r12",
    "    call {entry}",
    "    ud2",
    entry = sym rust_start,
);

extern "C" fn rust_start(boot: *const BootInfo) -> ! {
    unsafe { guest::runtime::main(boot) }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let mut con = guest::hw::Console;
    let _ = write!(con, "GUEST-ERROR panic");
    if let Some(loc) = info.location() {
        let _ = write!(con, " at {}:{}", loc.file(), loc.line());
    }
    let _ = writeln!(con, ": {}", info.message());
    guest::hw::power_off(1)
}
