//! One VM: KVM fds, guest RAM, the serial console, the MMIO bus and the boot state.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_regs, kvm_sregs, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::abi::{self, BootInfo};
use crate::config::NetSpec;
use crate::cpl3;
use crate::device::{Device, DeviceSlot, MmioBus};
use crate::error::Error;
use crate::loader::{self, KernelKind};
use crate::memory::GuestRam;

/// Which boot path the VM uses; fixed at creation (Linux needs the in-kernel irqchip before the
/// vCPU exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// Patchbay's CPL-3 guest (docs/vmm-guest-abi.md).
    Cpl3,
    /// A Linux kernel through the 64-bit boot protocol, at CPL 0. Runs at full speed only with
    /// hardware virtualization (VT-x/AMD-V); on PVM hosts CPL 0 is emulated.
    Linux,
}

impl From<KernelKind> for GuestKind {
    fn from(kind: KernelKind) -> GuestKind {
        if kind.is_linux() {
            GuestKind::Linux
        } else {
            GuestKind::Cpl3
        }
    }
}

/// What the VM is made of.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub mem_size: u64,
    pub kind: GuestKind,
    /// Linux: the kernel command line (the VMM appends `virtio_mmio.device=` entries).
    /// CPL-3 guest: the program line placed in `BootInfo.cmdline`.
    pub cmdline: String,
    /// The NICs (their devices are added with [`Vm::add_device`]; Linux's command line
    /// announces one virtio-mmio slot per entry, BootInfo carries the first one's addresses).
    pub nets: Vec<NetSpec>,
    /// Print start-up timings and exit details on stderr.
    pub verbose: bool,
}

impl VmConfig {
    pub fn new(mem_size: u64, kind: GuestKind) -> VmConfig {
        VmConfig {
            mem_size,
            kind,
            cmdline: String::new(),
            nets: Vec::new(),
            verbose: false,
        }
    }
}

/// Where console output goes.
pub type Console = Box<dyn Write + Send>;

/// The serial port's interrupt: an irqfd on GSI 4 for Linux, nothing for the CPL-3 guest (it
/// never takes interrupts and only writes bytes to 0x3f8).
pub enum SerialIrq {
    None,
    EventFd(EventFd),
}

impl Trigger for SerialIrq {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        match self {
            SerialIrq::None => Ok(()),
            SerialIrq::EventFd(fd) => fd.write(1),
        }
    }
}

/// The COM1 16550 (vm-superio), at 0x3f8.
pub type SerialPort = Serial<SerialIrq, NoEvents, Console>;

/// GSI of COM1.
pub const SERIAL_IRQ: u32 = 4;

/// Start-up timings, as offsets from the start of [`Vm::new`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// /dev/kvm opened and the VM fd created.
    pub kvm: Duration,
    /// Guest RAM created and registered.
    pub memory: Duration,
    /// vCPU created and configured (CPUID, FPU; irqchip/PIT for Linux).
    pub vcpu: Duration,
    /// Kernel loaded and boot structures and registers written.
    pub loaded: Option<Duration>,
    /// The first KVM_RUN is about to be issued.
    pub entry: Option<Duration>,
    /// The first exit back to the VMM (e.g. the first console byte).
    pub first_exit: Option<Duration>,
}

/// A VM with one vCPU.
///
/// Field order matters: the vCPU and VM fds are dropped (closed) before guest RAM is unmapped.
pub struct Vm {
    pub(crate) vcpu: VcpuFd,
    pub(crate) vm: VmFd,
    pub(crate) kvm: Kvm,
    pub(crate) ram: GuestRam,
    pub(crate) bus: MmioBus,
    pub(crate) serial: SerialPort,
    pub(crate) config: VmConfig,
    pub(crate) tsc_khz: u32,
    pub(crate) start: Instant,
    pub(crate) timing: Timing,
    /// Registers to enter the guest with, once a kernel is loaded.
    pub(crate) entry: Option<(kvm_regs, kvm_sregs)>,
    pub(crate) entered: bool,
}

impl Vm {
    /// Creates the VM: KVM VM fd, memfd RAM, one vCPU (and for Linux the irqchip, PIT and the
    /// serial irqfd). Nothing runs until a kernel is loaded and [`Vm::run`] is called.
    pub fn new(config: VmConfig, console: Console) -> Result<Vm, Error> {
        let start = Instant::now();
        let kvm = Kvm::new().map_err(Error::kvm("opening /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(Error::kvm("creating the VM"))?;
        let kvm_done = start.elapsed();

        let ram = GuestRam::new(config.mem_size)?;
        ram.register(&vm)?;
        let memory_done = start.elapsed();

        let irq = match config.kind {
            GuestKind::Cpl3 => SerialIrq::None,
            GuestKind::Linux => {
                vm.set_tss_address(0xfffb_d000)
                    .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
                vm.create_irq_chip()
                    .map_err(Error::kvm("creating the in-kernel irqchip"))?;
                let pit = kvm_pit_config {
                    flags: KVM_PIT_SPEAKER_DUMMY,
                    ..Default::default()
                };
                vm.create_pit2(pit)
                    .map_err(Error::kvm("creating the PIT"))?;
                let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Io {
                    what: "creating the serial irq eventfd",
                    source,
                })?;
                vm.register_irqfd(&fd, SERIAL_IRQ)
                    .map_err(Error::kvm("registering the serial irqfd"))?;
                SerialIrq::EventFd(fd)
            }
        };

        let vcpu = vm.create_vcpu(0).map_err(Error::kvm("creating vCPU 0"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;
        vcpu.set_fpu(&cpl3::initial_fpu())
            .map_err(Error::kvm("KVM_SET_FPU"))?;
        if config.kind == GuestKind::Linux {
            set_lint(&vcpu)?;
        }
        // KVM_GET_TSC_KHZ is missing on some old hosts; the guest then calibrates itself.
        let tsc_khz = vcpu.get_tsc_khz().unwrap_or(0);
        let vcpu_done = start.elapsed();

        Ok(Vm {
            vcpu,
            vm,
            kvm,
            ram,
            bus: MmioBus::new(),
            serial: Serial::new(irq, console),
            config,
            tsc_khz,
            start,
            timing: Timing {
                kvm: kvm_done,
                memory: memory_done,
                vcpu: vcpu_done,
                ..Timing::default()
            },
            entry: None,
            entered: false,
        })
    }

    /// Guest RAM (for devices: vm-memory access, memfd and host addresses for vhost-user).
    pub fn memory(&self) -> &GuestRam {
        &self.ram
    }

    /// The KVM VM fd (for devices: ioeventfds on QueueNotify, irqfds for Linux guests).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// The KVM system fd.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// KVM_GET_TSC_KHZ of the vCPU (0 if unknown).
    pub fn tsc_khz(&self) -> u32 {
        self.tsc_khz
    }

    /// The slot (MMIO window, IRQ) the next [`Vm::add_device`] will use; `None` when full.
    pub fn next_device_slot(&self) -> Option<DeviceSlot> {
        self.bus.next_slot()
    }

    /// Puts a device on the MMIO bus at the next slot (0xd000_0000 + i * 0x1000).
    pub fn add_device(&mut self, device: Arc<dyn Device>) -> Result<DeviceSlot, Error> {
        self.bus.add(device).ok_or_else(|| {
            Error::Config(format!(
                "at most {} virtio devices are supported",
                abi::MAX_VIRTIO
            ))
        })
    }

    /// The MMIO bus.
    pub fn bus(&self) -> &MmioBus {
        &self.bus
    }

    /// When [`Vm::new`] started (the origin of [`Timing`]).
    pub fn start_instant(&self) -> Instant {
        self.start
    }

    /// Start-up timings so far.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Loads the kernel `file` (already identified by [`loader::detect`]) and prepares the vCPU
    /// to enter it.
    pub fn load_kernel(
        &mut self,
        mut file: File,
        kind: KernelKind,
        path: &Path,
        initrd: Option<&Path>,
    ) -> Result<(), Error> {
        if GuestKind::from(kind) != self.config.kind {
            return Err(Error::Config(format!(
                "{}: a {kind:?} kernel cannot boot in a VM created for {:?}",
                path.display(),
                self.config.kind
            )));
        }
        match kind {
            KernelKind::GuestElf => {
                if initrd.is_some() {
                    return Err(loader::LoadError::InitrdForGuest {
                        path: path.to_path_buf(),
                    }
                    .into());
                }
                let entry =
                    loader::load_guest_elf(self.ram.memory(), self.ram.size(), &mut file, path)?;
                self.prepare_cpl3(entry)
            }
            KernelKind::BzImage | KernelKind::LinuxElf => {
                let cmdline = self.linux_cmdline();
                let boot = loader::load_linux(
                    self.ram.memory(),
                    self.ram.size(),
                    &mut file,
                    kind,
                    path,
                    initrd,
                    &cmdline,
                )?;
                loader::write_linux_environment(self.ram.memory())
                    .map_err(loader::LoadError::from)?;
                let mut sregs = self.vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
                loader::linux_sregs(&mut sregs);
                self.set_entry(loader::linux_regs(&boot), sregs);
                if self.config.verbose {
                    eprintln!(
                        "patchbay-vmm: Linux entry {:#x}, zero page {:#x}, kernel up to {:#x}, initrd {:?}, cmdline {cmdline:?}",
                        boot.entry, boot.boot_params, boot.kernel_end, boot.initrd
                    );
                }
                Ok(())
            }
        }
    }

    /// Copies raw machine code to `addr` (at or above 0x200000) and enters it there at CPL 3,
    /// with the same environment as an ELF guest. For tests and tiny guests.
    pub fn load_flat(&mut self, bytes: &[u8], addr: u64) -> Result<(), Error> {
        if self.config.kind != GuestKind::Cpl3 {
            return Err(Error::Config("flat images run only as CPL-3 guests".into()));
        }
        loader::load_flat(self.ram.memory(), self.ram.size(), bytes, addr)?;
        self.prepare_cpl3(addr)
    }

    /// The Linux command line: the configured one plus a `virtio_mmio.device=` entry per NIC.
    pub fn linux_cmdline(&self) -> String {
        let mut line = self.config.cmdline.trim().to_string();
        for i in 0..self.config.nets.len() {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&DeviceSlot::new(i).linux_cmdline());
        }
        line
    }

    /// The BootInfo the CPL-3 guest will find at 0x9000 (written when the VM starts running,
    /// so devices may be added after the kernel is loaded).
    pub fn boot_info(&self) -> Result<BootInfo, Error> {
        let mut info = BootInfo::new();
        info.tsc_khz = u64::from(self.tsc_khz);
        info.mem_size = self.ram.size();
        for (slot, _) in self.bus.devices() {
            info.virtio_base[info.n_virtio as usize] = slot.mmio_base;
            info.n_virtio += 1;
        }
        if let Some(net) = self.config.nets.first() {
            // The guest reads its MAC from the device's config space; this is a fallback.
            info.mac = net.mac.map_or([0; 6], |m| m.0);
            if let Some((ip, len)) = net.ip {
                info.ip = ip.octets();
                info.prefix_len = len;
            }
            if let Some(gw) = net.gateway {
                info.gateway = gw.octets();
            }
        }
        let line = self.config.cmdline.as_bytes();
        if line.len() > abi::CMDLINE_MAX {
            return Err(Error::Config(format!(
                "--cmdline is {} bytes; the guest's BootInfo holds at most {}",
                line.len(),
                abi::CMDLINE_MAX
            )));
        }
        info.cmdline[..line.len()].copy_from_slice(line);
        info.cmdline_len = line.len() as u32;
        Ok(info)
    }

    fn prepare_cpl3(&mut self, entry: u64) -> Result<(), Error> {
        // Validate the command line now rather than at the first run.
        self.boot_info()?;
        cpl3::write_environment(self.ram.memory(), &BootInfo::new())
            .map_err(loader::LoadError::from)?;
        let mut sregs = self.vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        cpl3::cpl3_sregs(&mut sregs);
        self.set_entry(cpl3::cpl3_regs(entry), sregs);
        Ok(())
    }

    fn set_entry(&mut self, regs: kvm_regs, sregs: kvm_sregs) {
        self.entry = Some((regs, sregs));
        self.timing.loaded = Some(self.start.elapsed());
    }

    /// Flushes console output.
    pub fn flush_console(&mut self) {
        let _ = self.serial.writer_mut().flush();
    }
}

/// LAPIC LINT0 = ExtINT, LINT1 = NMI, as the BIOS leaves them (Linux expects it).
fn set_lint(vcpu: &VcpuFd) -> Result<(), Error> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_NMI: u32 = 0x4;
    const APIC_MODE_EXTINT: u32 = 0x7;
    let mut lapic = vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(Error::kvm("KVM_SET_LAPIC"))
}
