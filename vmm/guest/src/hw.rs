//! The only instructions that reach outside the guest: port I/O (allowed at CPL 3 through the
//! TSS I/O bitmap) and rdtsc (CR4.TSD = 0). Never called by the host-side unit tests.
use core::arch::asm;
use core::fmt;

pub const PORT_CONSOLE: u16 = 0x3f8;
pub const PORT_POWER_OFF: u16 = 0x501;
pub const PORT_IDLE: u16 = 0x502;

#[inline]
pub fn outb(port: u16, value: u8) {
    // Not `nomem`: port writes must stay ordered with the ring memory accesses around them.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags)) }
}

#[inline]
pub fn outl(port: u16, value: u32) {
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags)) }
}

#[inline]
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    ((hi as u64) << 32) | lo as u64
}

/// "I am idle": the VMM blocks until a virtio backend signals or `ms` milliseconds pass.
#[inline]
pub fn idle_wait(ms: u32) {
    outl(PORT_IDLE, ms)
}

/// Power off with `status` as the VMM's exit status. Never returns.
pub fn power_off(status: u32) -> ! {
    outl(PORT_POWER_OFF, status);
    // The VMM exits on the write above; should it ever resume us, stay idle.
    loop {
        idle_wait(1000);
    }
}

/// Console output: one byte per write to port 0x3f8.
#[derive(Clone, Copy, Default)]
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            outb(PORT_CONSOLE, b);
        }
        Ok(())
    }
}
