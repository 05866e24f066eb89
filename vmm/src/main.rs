//! `patchbay-vmm`: runs one VM in this process.

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{CommandFactory, Parser};

use patchbay_vmm::memory::parse_size;
use std::sync::Arc;

use patchbay_vmm::{loader, Console, Error, GuestKind, NetSpec, Vm, VmConfig, VmExit};

const EXIT_STATUS: &str = "\
Exit status:
  0    the guest powered off with status 0 (port 0x501), halted, or (Linux) reset;
       a CPL-3 guest's non-zero power-off status is passed through (low 8 bits)
  1    other error (KVM failure, KVM internal/emulation error, I/O error)
  2    usage or configuration error (bad option, missing kernel, kernel that does not
       fit in --mem, bad --net, missing socket)
  3    the guest crashed (a fault with no handler); its registers are printed on stderr
  4    a NIC's backend (switch port) went away";

/// One VM per process: Patchbay's CPL-3 network guest (a static ELF linked at 0x200000) or a
/// Linux kernel (bzImage or vmlinux; 64-bit boot protocol, needs VT-x/AMD-V to run at full
/// speed), with virtio-mmio NICs backed by switch ports over vhost-user.
#[derive(Debug, Parser)]
#[command(name = "patchbay-vmm", version, after_help = EXIT_STATUS)]
struct Args {
    /// Guest RAM, e.g. 64M or 1G (memfd-backed, shared with vhost-user backends).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    mem: u64,

    /// The kernel: a Patchbay guest ELF, a Linux vmlinux ELF or a bzImage (detected by magic).
    /// Without it, the bundled network guest runs the program given by --cmdline
    /// (ping IP [COUNT] | udp-echo PORT | tcp-sink PORT | tcp-source IP PORT BYTES |
    /// tcp-loopback BYTES).
    #[arg(long)]
    kernel: Option<PathBuf>,

    /// Initial ramdisk (Linux only); placed at the top of RAM.
    #[arg(long)]
    initrd: Option<PathBuf>,

    /// Linux: the kernel command line (virtio_mmio.device= entries are appended per NIC).
    /// Patchbay guest: the program line, e.g. "ping 10.0.0.2 5" (BootInfo.cmdline).
    #[arg(long, default_value = "")]
    cmdline: String,

    /// A virtio-net NIC whose backend is a switch port over vhost-user:
    /// socket=PATH[,mac=MAC][,client][,no-reconnect][,ip=A.B.C.D/N][,gw=A.B.C.D].
    /// By default the VMM connects to the switch port's socket; `client` means the port is in
    /// client mode (the VMM listens and the switch dials in). A lost switch is redialled (the
    /// guest sees lost frames only) unless `no-reconnect`. Without mac= the port's MAC is used.
    /// ip=/gw= configure the bundled guest. Repeat for more NICs (up to 4).
    #[arg(long = "net", value_name = "SPEC")]
    net: Vec<String>,

    /// Write the serial console to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    console: Option<PathBuf>,

    /// Print start-up timings and run details on stderr.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    if let Some(code) = patchbay_clidocs::intercept(Args::command) {
        return code;
    }
    let args = Args::parse();
    let code = match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("patchbay-vmm: error: {e}");
            e.exit_code()
        }
    };
    ExitCode::from(code as u8)
}

fn run(args: Args) -> Result<i32, Error> {
    let nets = args
        .net
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            NetSpec::parse(spec, i).map_err(|e| Error::Config(format!("--net {spec}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let console: Console = match &args.console {
        Some(path) => Box::new(File::create(path).map_err(|source| Error::Console {
            path: path.clone(),
            source,
        })?),
        None => Box::new(std::io::stdout()),
    };
    // Without --kernel: the bundled guest, from an in-memory file kept open until loaded.
    let (_bundled, kernel) = match &args.kernel {
        Some(path) => (None, path.clone()),
        None => {
            let (file, path) = patchbay_vmm::bundled::guest_file()
                .map_err(|e| Error::Config(format!("cannot stage the bundled guest: {e}")))?;
            (Some(file), path)
        }
    };
    let (mut file, kind) = loader::detect(&kernel)?;
    loader::preflight(&mut file, kind, args.mem, &kernel)?;

    let config = VmConfig {
        mem_size: args.mem,
        kind: kind.into(),
        cmdline: args.cmdline,
        nets,
        verbose: args.verbose,
    };
    let mut vm = Vm::new(config, console)?;
    attach_nics(&mut vm)?;
    vm.load_kernel(file, kind, &kernel, args.initrd.as_deref())?;

    let ended = vm.run()?;
    let t = vm.timing();
    if args.verbose {
        let ms = |d: Option<std::time::Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        eprintln!(
            "patchbay-vmm: first exit {:.3} ms after VM creation; {ended:?} after {:.3} ms",
            ms(t.first_exit),
            ms(Some(Instant::now().duration_since(vm.start_instant())))
        );
    }
    match &ended {
        VmExit::PowerOff(_) | VmExit::Halted | VmExit::Reset => {}
        VmExit::Crashed(dump) => eprintln!("patchbay-vmm: guest crashed:\n{dump}"),
        VmExit::BackendLost(why) => eprintln!("patchbay-vmm: backend lost: {why}"),
    }
    Ok(ended.exit_code())
}

/// Creates one virtio-net device per `--net` and puts it on the MMIO bus. A switch that
/// cannot be reached is a configuration error (exit status 2).
fn attach_nics(vm: &mut Vm) -> Result<(), Error> {
    let nets = vm.config().nets.clone();
    for n in &nets {
        let slot = vm
            .next_device_slot()
            .ok_or_else(|| Error::DeviceConfig("too many --net devices".into()))?;
        let mut spec = patchbay_vmm::virtio::net::NetSpec::new(&n.socket);
        spec.mac = n.mac.map(|m| m.0);
        spec.client = n.client;
        spec.reconnect = !n.no_reconnect;
        let mem = vm.memory().memory().clone();
        let net =
            patchbay_vmm::virtio::net::VirtioNet::new(spec, mem, Some(vm.vm_fd()), slot.mmio_base)
                .map_err(|e| {
                    Error::DeviceConfig(format!("--net socket={}: {e}", n.socket.display()))
                })?;
        if vm.config().kind == GuestKind::Linux {
            net.register_irqfd(vm.vm_fd(), slot.irq).map_err(|e| {
                Error::DeviceConfig(format!("--net socket={}: {e}", n.socket.display()))
            })?;
        }
        vm.add_device(Arc::new(net))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn parses_options() {
        let a = Args::try_parse_from([
            "patchbay-vmm",
            "--mem",
            "128M",
            "--kernel",
            "k",
            "--net",
            "socket=/a",
            "--net",
            "socket=/b,client",
        ])
        .unwrap();
        assert_eq!(a.mem, 128 << 20);
        assert_eq!(a.net.len(), 2);
        assert!(Args::try_parse_from(["patchbay-vmm", "--mem", "12Q", "--kernel", "k"]).is_err());
        assert_eq!(patchbay_vmm::exit::CONFIG, 2);
    }
}
