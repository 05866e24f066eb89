//! The vCPU loop: port I/O (console, power-off, idle), MMIO to the bus, and how a run ends.

use std::fmt;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuExit;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::abi;
use crate::error::{exit, Error};
use crate::vm::{GuestKind, Vm};

/// How a run ended (errors aside).
#[derive(Debug)]
pub enum VmExit {
    /// The guest wrote this status to port 0x501.
    PowerOff(u32),
    /// The vCPU executed HLT with nothing to wake it (no in-kernel irqchip).
    Halted,
    /// A Linux guest asked for a reset (i8042 0xfe, or a KVM system event); treated as the end.
    Reset,
    /// The guest faulted with no handler (triple fault) or reported a crash.
    Crashed(Box<CpuDump>),
    /// A device's backend went away.
    BackendLost(String),
}

impl VmExit {
    /// The process exit status (a guest's power-off status is truncated to 8 bits).
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::PowerOff(status) => (*status & 0xff) as i32,
            VmExit::Halted | VmExit::Reset => exit::OK,
            VmExit::Crashed(_) => exit::CRASH,
            VmExit::BackendLost(_) => exit::BACKEND_LOST,
        }
    }
}

/// The vCPU's registers when something went wrong, and the code bytes at RIP.
#[derive(Debug, Clone)]
pub struct CpuDump {
    pub reason: String,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// Up to 16 bytes at RIP (RIP is a guest-physical address: the map is the identity).
    pub code: Vec<u8>,
}

impl fmt::Display for CpuDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.regs;
        let s = &self.sregs;
        writeln!(f, "  reason: {}", self.reason)?;
        writeln!(
            f,
            "  rip={:#018x} rsp={:#018x} rflags={:#010x} cpl={}",
            r.rip, r.rsp, r.rflags, s.cs.dpl
        )?;
        writeln!(
            f,
            "  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}",
            r.rax, r.rbx, r.rcx, r.rdx
        )?;
        writeln!(
            f,
            "  rsi={:#018x} rdi={:#018x} rbp={:#018x} r8 ={:#018x}",
            r.rsi, r.rdi, r.rbp, r.r8
        )?;
        writeln!(
            f,
            "  r9 ={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}",
            r.r9, r.r10, r.r11, r.r12
        )?;
        writeln!(
            f,
            "  r13={:#018x} r14={:#018x} r15={:#018x}",
            r.r13, r.r14, r.r15
        )?;
        writeln!(
            f,
            "  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer
        )?;
        writeln!(
            f,
            "  cs={:#x} ss={:#x} ds={:#x} tr={:#x} gdt={:#x}/{:#x} idt={:#x}/{:#x}",
            s.cs.selector,
            s.ss.selector,
            s.ds.selector,
            s.tr.selector,
            s.gdt.base,
            s.gdt.limit,
            s.idt.base,
            s.idt.limit
        )?;
        let code: Vec<String> = self.code.iter().map(|b| format!("{b:02x}")).collect();
        write!(
            f,
            "  code at rip: {}",
            if code.is_empty() {
                "(not mapped to RAM)".to_string()
            } else {
                code.join(" ")
            }
        )
    }
}

/// What an exit asks the loop to do, once the borrow of the vCPU's run area has ended.
enum Step {
    Continue,
    Out(u16, Vec<u8>),
    MmioDevice(Option<String>),
    Hlt,
    Shutdown,
    Internal,
    SystemEvent(u32),
    FailEntry(u64),
    Interrupted,
    Other(String),
}

impl Vm {
    /// Runs the guest until it powers off, crashes, halts or loses a backend.
    pub fn run(&mut self) -> Result<VmExit, Error> {
        let (regs, sregs) = self
            .entry
            .ok_or_else(|| Error::Config("no kernel loaded".into()))?;
        if !self.entered {
            if self.config.kind == GuestKind::Cpl3 {
                let info = self.boot_info()?;
                crate::cpl3::write_boot_info(self.ram.memory(), &info)
                    .map_err(crate::loader::LoadError::from)?;
            }
            self.vcpu
                .set_sregs(&sregs)
                .map_err(Error::kvm("KVM_SET_SREGS"))?;
            self.vcpu
                .set_regs(&regs)
                .map_err(Error::kvm("KVM_SET_REGS"))?;
        }
        let hangup: Vec<RawFd> = self
            .bus
            .devices()
            .flat_map(|(_, d)| d.hangup_fds())
            .collect();
        let watcher = if hangup.is_empty() {
            None
        } else {
            Some(HangupWatcher::spawn(hangup).map_err(|source| Error::Io {
                what: "starting the backend hang-up watcher",
                source,
            })?)
        };
        let lost = watcher.as_ref().map(|w| w.lost.clone());
        let result = self.run_loop(lost.as_deref());
        drop(watcher);
        self.flush_console();
        result
    }

    fn run_loop(&mut self, lost: Option<&AtomicBool>) -> Result<VmExit, Error> {
        let cpl3 = self.config.kind == GuestKind::Cpl3;
        loop {
            if lost.is_some_and(|l| l.load(Ordering::Acquire)) {
                return Ok(VmExit::BackendLost(self.lost_reason()));
            }
            if !self.entered {
                self.entered = true;
                self.timing.entry = Some(self.start.elapsed());
                if self.config.verbose {
                    self.print_entry_timing();
                }
            }
            let step = match self.vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) => Step::Out(port, data.to_vec()),
                Ok(VcpuExit::IoIn(port, data)) => {
                    if (abi::PORT_CONSOLE..abi::PORT_CONSOLE + 8).contains(&port) {
                        let value = self.serial.read((port - abi::PORT_CONSOLE) as u8);
                        data.fill(value);
                    } else {
                        data.fill(0xff);
                    }
                    Step::Continue
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    Step::MmioDevice(self.bus.read(addr, data).and_then(|d| d.backend_lost()))
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    Step::MmioDevice(self.bus.write(addr, data).and_then(|d| d.backend_lost()))
                }
                Ok(VcpuExit::Hlt) => Step::Hlt,
                Ok(VcpuExit::Shutdown) => Step::Shutdown,
                Ok(VcpuExit::InternalError) => Step::Internal,
                Ok(VcpuExit::SystemEvent(kind, _)) => Step::SystemEvent(kind),
                Ok(VcpuExit::FailEntry(reason, _)) => Step::FailEntry(reason),
                Ok(VcpuExit::Intr) => Step::Interrupted,
                Ok(other) => Step::Other(format!("{other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    Step::Interrupted
                }
                Err(e) => return Err(Error::kvm("KVM_RUN")(e)),
            };
            if self.timing.first_exit.is_none() {
                self.timing.first_exit = Some(self.start.elapsed());
            }
            match step {
                Step::Continue | Step::Interrupted => {}
                Step::Out(port, data) => {
                    if let Some(end) = self.port_out(cpl3, port, &data, lost) {
                        return Ok(end);
                    }
                }
                Step::MmioDevice(None) => {}
                Step::MmioDevice(Some(why)) => return Ok(VmExit::BackendLost(why)),
                Step::Hlt => return Ok(VmExit::Halted),
                Step::Shutdown => {
                    return Ok(VmExit::Crashed(Box::new(self.dump(
                        "triple fault (an exception with no handler): KVM_EXIT_SHUTDOWN",
                    ))))
                }
                Step::Internal => {
                    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // union member the kernel filled in.
                    let internal = unsafe { self.vcpu.get_kvm_run().__bindgen_anon_1.internal };
                    let what = match internal.suberror {
                        1 => "emulation failure: KVM could not emulate an instruction".to_string(),
                        2 => "exception while delivering an exception".to_string(),
                        3 => "event delivery failed".to_string(),
                        n => format!("suberror {n}"),
                    };
                    let dump = self.dump(&what);
                    return Err(Error::Internal {
                        what,
                        dump: Box::new(dump),
                    });
                }
                Step::SystemEvent(kind) => {
                    return Ok(match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff(0),
                        kvm_bindings::KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                        _ => VmExit::Crashed(Box::new(self.dump(&format!("system event {kind}")))),
                    })
                }
                Step::FailEntry(reason) => {
                    return Err(Error::UnexpectedExit(format!(
                        "KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x})"
                    )))
                }
                Step::Other(what) => return Err(Error::UnexpectedExit(what)),
            }
        }
    }

    /// Handles an OUT; returns how the run ends, if it does.
    fn port_out(
        &mut self,
        cpl3: bool,
        port: u16,
        data: &[u8],
        lost: Option<&AtomicBool>,
    ) -> Option<VmExit> {
        let word = || {
            let mut b = [0u8; 4];
            let n = data.len().min(4);
            b[..n].copy_from_slice(&data[..n]);
            u32::from_le_bytes(b)
        };
        match port {
            p if (abi::PORT_CONSOLE..abi::PORT_CONSOLE + 8).contains(&p) => {
                let offset = (p - abi::PORT_CONSOLE) as u8;
                // `rep outsb` delivers several bytes in one exit.
                for &byte in data {
                    // A console that cannot be written (closed pipe, full disk) must not stop
                    // the guest.
                    let _ = self.serial.write(offset, byte);
                }
                None
            }
            abi::PORT_POWER_OFF if cpl3 => Some(VmExit::PowerOff(word())),
            abi::PORT_IDLE if cpl3 => {
                self.idle(word());
                if lost.is_some_and(|l| l.load(Ordering::Acquire)) {
                    return Some(VmExit::BackendLost(self.lost_reason()));
                }
                self.bus.backend_lost().map(VmExit::BackendLost)
            }
            // The i8042 reset line: Linux's reboot=k.
            0x64 if !cpl3 && data.first() == Some(&0xfe) => Some(VmExit::Reset),
            _ => None,
        }
    }

    /// The guest is idle: wait for a backend's call eventfd or `timeout_ms`, then drain.
    fn idle(&mut self, timeout_ms: u32) {
        self.flush_console();
        let fds = self.bus.call_fds();
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout = i32::try_from(timeout_ms).unwrap_or(i32::MAX);
        // SAFETY: `pfds` is a valid, exclusively borrowed array of `pfds.len()` pollfd structs
        // for the duration of the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if n <= 0 {
            // Timeout, or EINTR (the hang-up watcher's kick): the caller checks for a lost
            // backend.
            return;
        }
        for p in pfds.iter().filter(|p| p.revents & libc::POLLIN != 0) {
            let mut counter = [0u8; 8];
            // SAFETY: reading at most 8 bytes into a local 8-byte buffer from an fd the device
            // lent us; poll said it is readable, so an eventfd read does not block.
            unsafe { libc::read(p.fd, counter.as_mut_ptr().cast(), counter.len()) };
        }
    }

    fn lost_reason(&self) -> String {
        self.bus
            .backend_lost()
            .unwrap_or_else(|| "a device's backend connection hung up".to_string())
    }

    fn dump(&mut self, reason: &str) -> CpuDump {
        let regs = self.vcpu.get_regs().unwrap_or_default();
        let sregs = self.vcpu.get_sregs().unwrap_or_default();
        let mem = self.ram.memory();
        let code = match translate(mem, &sregs, regs.rip) {
            Some(phys) => {
                // Stay within the page: the next one may map elsewhere.
                let mut code = vec![0u8; (16).min(0x1000 - (phys & 0xfff)) as usize];
                match mem.read_slice(&mut code, GuestAddress(phys)) {
                    Ok(()) => code,
                    Err(_) => Vec::new(),
                }
            }
            None => Vec::new(),
        };
        CpuDump {
            reason: reason.to_string(),
            regs,
            sregs,
            code,
        }
    }

    fn print_entry_timing(&self) {
        let t = self.timing;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        eprintln!(
            "patchbay-vmm: VM creation to guest entry: {:.0} us (KVM+VM fd {:.0} us, RAM {:.0} us, vCPU {:.0} us, kernel+boot state {:.0} us)",
            us(t.entry.unwrap_or_default()),
            us(t.kvm),
            us(t.memory - t.kvm),
            us(t.vcpu - t.memory),
            us(t.loaded.unwrap_or(t.vcpu).saturating_sub(t.vcpu)),
        );
    }
}

/// Guest-virtual to guest-physical through the vCPU's page tables (long mode, 4 or 5 levels);
/// identity when paging is off.
fn translate(mem: &vm_memory::GuestMemoryMmap, sregs: &kvm_sregs, vaddr: u64) -> Option<u64> {
    const PRESENT: u64 = 1;
    const HUGE: u64 = 1 << 7;
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    if sregs.cr0 & (1 << 31) == 0 {
        return Some(vaddr);
    }
    if sregs.efer & (1 << 10) == 0 {
        return None; // 32-bit paging: not used by either boot path
    }
    let levels = if sregs.cr4 & (1 << 12) != 0 { 5 } else { 4 };
    let mut table = sregs.cr3 & ADDR;
    for level in (0..levels).rev() {
        let shift = 12 + 9 * level;
        let index = (vaddr >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & PRESENT == 0 {
            return None;
        }
        if level == 0 {
            return Some((entry & ADDR) | (vaddr & 0xfff));
        }
        if (level == 1 || level == 2) && entry & HUGE != 0 {
            let mask = (1u64 << shift) - 1;
            return Some((entry & ADDR & !mask) | (vaddr & mask));
        }
        table = entry & ADDR;
    }
    None
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Watches devices' hang-up fds; on a hang-up it sets `lost` and keeps kicking the vCPU thread
/// with SIGRTMIN (interrupting KVM_RUN or the idle poll) until the run loop stops it.
struct HangupWatcher {
    lost: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HangupWatcher {
    fn spawn(fds: Vec<RawFd>) -> std::io::Result<HangupWatcher> {
        static HANDLER: Once = Once::new();
        let mut registered = Ok(());
        HANDLER.call_once(|| {
            registered = register_signal_handler(SIGRTMIN(), kick_handler)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
        });
        registered?;
        let lost = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        // SAFETY: pthread_self has no preconditions.
        let target = unsafe { libc::pthread_self() };
        let (l, s) = (lost.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("vmm-hangup".into())
            .spawn(move || {
                let mut pfds: Vec<libc::pollfd> = fds
                    .iter()
                    .map(|&fd| libc::pollfd {
                        fd,
                        events: libc::POLLRDHUP,
                        revents: 0,
                    })
                    .collect();
                while !s.load(Ordering::Acquire) {
                    // SAFETY: `pfds` is a valid, exclusively owned array of pollfd structs.
                    let n =
                        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 100) };
                    if n > 0 {
                        l.store(true, Ordering::Release);
                        break;
                    }
                }
                while !s.load(Ordering::Acquire) {
                    // SAFETY: `target` is the thread inside `Vm::run`, which sets `stop` and
                    // joins this thread before returning, so it is alive here; SIGRTMIN has a
                    // no-op handler installed above, so the signal only interrupts syscalls.
                    unsafe { libc::pthread_kill(target, SIGRTMIN()) };
                    std::thread::sleep(Duration::from_millis(10));
                }
            })?;
        Ok(HangupWatcher {
            lost,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HangupWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
