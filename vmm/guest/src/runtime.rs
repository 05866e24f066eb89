//! The guest proper: BootInfo -> NIC -> program -> power-off. Called from `_start` (main.rs).
use crate::bootinfo::BootInfo;
use crate::cmdline;
use crate::hw::{self, Console};
use crate::loopback::{self, LoopbackMem};
use crate::net::{GuestEnv, NetConfig};
use crate::programs::{self, SocketBufs};
use crate::virtio::{Mmio, NetMem, VirtioError, VirtioNet};
use core::cell::UnsafeCell;
use core::fmt::Write;
use core::net::Ipv4Addr;

/// A static the single-threaded guest hands out exactly once.
struct Global<T>(UnsafeCell<T>);
// SAFETY: the guest has one thread and no interrupts; each Global is borrowed once, in `main`.
unsafe impl<T> Sync for Global<T> {}

/// Virtqueues and packet buffers, shared with the device (guest-physical = virtual).
static NET_MEM: Global<NetMem> = Global(UnsafeCell::new(NetMem::zeroed()));
static SOCKET_BUFS: Global<SocketBufs> = Global(UnsafeCell::new(SocketBufs::zeroed()));
/// tcp-loopback's wire and socket buffers.
static LOOPBACK_MEM: Global<LoopbackMem> = Global(UnsafeCell::new(LoopbackMem::zeroed()));

/// Print `GUEST-ERROR <msg>` and power off with status 1.
pub fn fail(msg: core::fmt::Arguments<'_>) -> ! {
    let _ = writeln!(Console, "GUEST-ERROR {msg}");
    hw::power_off(1)
}

/// # Safety
/// `boot` must point at the VMM's BootInfo; call once.
pub unsafe fn main(boot: *const BootInfo) -> ! {
    if boot.is_null() || !(boot as usize).is_multiple_of(8) {
        fail(format_args!("bad BootInfo pointer {boot:p}"));
    }
    let boot = &*boot;
    if let Err(e) = boot.validate() {
        fail(format_args!("{e}"));
    }
    let env = GuestEnv::new(boot.tsc_khz);
    let prog = match cmdline::parse(boot.cmdline()) {
        Ok(p) => p,
        Err(e) => fail(format_args!("{e}")),
    };
    if let cmdline::Program::TcpLoopback { bytes } = prog {
        // No NIC involved (one may be present; it is left alone).
        let status = loopback::run(bytes, env, hw::rdtsc(), &mut *LOOPBACK_MEM.0.get(), &mut Console);
        hw::power_off(status)
    }
    if boot.n_virtio == 0 {
        fail(format_args!("no virtio-mmio device (BootInfo.n_virtio = 0)"));
    }

    // The first virtio-net device among the BootInfo's virtio-mmio windows.
    let mut found = None;
    let mut why = VirtioError::NoNetDevice;
    for &base in boot.virtio_bases() {
        let t = Mmio::new(base);
        match VirtioNet::probe(&t) {
            Ok(()) => {
                found = Some(t);
                break;
            }
            Err(e) => why = e,
        }
    }
    let Some(t) = found else { fail(format_args!("{why}")) };
    let dev = match VirtioNet::init(t, NET_MEM.0.get(), boot.mac) {
        Ok(d) => d,
        Err(e) => fail(format_args!("{e}")),
    };
    let gw = Ipv4Addr::from(boot.gateway);
    let cfg = NetConfig {
        mac: dev.mac,
        ip: Ipv4Addr::from(boot.ip),
        prefix_len: boot.prefix_len,
        gateway: if gw.is_unspecified() { None } else { Some(gw) },
        seed: hw::rdtsc(),
    };
    let status = programs::run(prog, dev, env, &cfg, &mut *SOCKET_BUFS.0.get(), &mut Console);
    hw::power_off(status)
}
