//! Patchbay's VMM: one VM per process, with Patchbay's CPL-3 network guests (native speed even
//! on PVM hosts, see docs/vmm-guest-abi.md) or Linux kernels (bzImage / vmlinux, 64-bit boot
//! protocol; full speed needs VT-x/AMD-V), and virtio-mmio NICs whose backends are switch ports
//! over vhost-user.
//!
//! Typical use (what `patchbay-vmm` does):
//! ```no_run
//! use patchbay_vmm::{loader, Vm, VmConfig};
//! let path = std::path::Path::new("guest.elf");
//! let (file, kind) = loader::detect(path)?;
//! let mut vm = Vm::new(VmConfig::new(64 << 20, kind.into()), Box::new(std::io::stdout()))?;
//! vm.load_kernel(file, kind, path, None)?;
//! let end = vm.run()?;
//! std::process::exit(end.exit_code());
//! # Ok::<(), patchbay_vmm::Error>(())
//! ```

pub mod abi;
pub mod bundled;
pub mod config;
pub mod cpl3;
pub mod device;
pub mod error;
pub mod loader;
pub mod memory;
pub mod vcpu;
pub mod virtio;
pub mod vm;

pub use config::{Mac, NetSpec};
pub use device::{Device, DeviceSlot, MmioBus};
pub use error::{exit, Error};
pub use memory::GuestRam;
pub use vcpu::{CpuDump, VmExit};
pub use vm::{Console, GuestKind, Timing, Vm, VmConfig};
