//! The device seam through the library: MMIO dispatch, idle waits woken by a call eventfd,
//! and a backend hang-up ending the run with "backend lost".

mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use patchbay_vmm::{exit, Device, GuestKind, Vm, VmConfig, VmExit};
use vmm_sys_util::eventfd::EventFd;

/// `mov ebx,0xd0000000; mov eax,[rbx]; mov [rbx+0x50],eax; mov dx,0x501; out dx,eax`
const MMIO_ECHO: &[u8] = &[
    0xbb, 0x00, 0x00, 0x00, 0xd0, 0x8b, 0x03, 0x89, 0x43, 0x50, 0x66, 0xba, 0x01, 0x05, 0xef,
];
/// `mov dx,0x502; mov eax,10000; out dx,eax; mov dx,0x501; mov eax,5; out dx,eax`
const IDLE_10S: &[u8] = &[
    0x66, 0xba, 0x02, 0x05, 0xb8, 0x10, 0x27, 0x00, 0x00, 0xef, 0x66, 0xba, 0x01, 0x05, 0xb8, 0x05,
    0x00, 0x00, 0x00, 0xef,
];
/// `1: jmp 1b` (spins at CPL 3 without ever exiting).
const SPIN: &[u8] = &[0xeb, 0xfe];

#[derive(Default)]
struct Fake {
    writes: Mutex<Vec<(u64, Vec<u8>)>>,
    call: Option<EventFd>,
    hangup: Option<UnixStream>,
}

impl Device for Fake {
    fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            data[0] = 42;
        }
    }
    fn mmio_write(&self, offset: u64, data: &[u8]) {
        self.writes.lock().unwrap().push((offset, data.to_vec()));
    }
    fn call_fds(&self) -> Vec<RawFd> {
        self.call.iter().map(|e| e.as_raw_fd()).collect()
    }
    fn hangup_fds(&self) -> Vec<RawFd> {
        self.hangup.iter().map(|s| s.as_raw_fd()).collect()
    }
}

fn vm() -> Vm {
    Vm::new(
        VmConfig::new(8 << 20, GuestKind::Cpl3),
        Box::new(std::io::sink()),
    )
    .unwrap()
}

#[test]
fn mmio_reaches_the_device_at_its_slot() {
    if !have_kvm("mmio_reaches_the_device_at_its_slot") {
        return;
    }
    let mut vm = vm();
    let dev = Arc::new(Fake::default());
    let slot = vm.add_device(dev.clone()).unwrap();
    assert_eq!(slot.mmio_base, 0xd000_0000);
    vm.load_flat(MMIO_ECHO, LOAD_ADDR).unwrap();
    let info = vm.boot_info().unwrap();
    assert_eq!((info.n_virtio, info.virtio_base[0]), (1, 0xd000_0000));
    let end = vm.run().unwrap();
    assert!(matches!(end, VmExit::PowerOff(42)), "{end:?}");
    assert_eq!(
        dev.writes.lock().unwrap().as_slice(),
        &[(0x50, vec![42, 0, 0, 0])]
    );
}

#[test]
fn idle_wait_ends_when_a_call_fd_fires() {
    if !have_kvm("idle_wait_ends_when_a_call_fd_fires") {
        return;
    }
    let mut vm = vm();
    let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let kick = call.try_clone().unwrap();
    vm.add_device(Arc::new(Fake {
        call: Some(call),
        ..Fake::default()
    }))
    .unwrap();
    vm.load_flat(IDLE_10S, LOAD_ADDR).unwrap();
    let started = Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        kick.write(1).unwrap();
    });
    let end = vm.run().unwrap();
    let took = started.elapsed();
    assert!(matches!(end, VmExit::PowerOff(5)), "{end:?}");
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn backend_hangup_ends_a_spinning_guest() {
    if !have_kvm("backend_hangup_ends_a_spinning_guest") {
        return;
    }
    let mut vm = vm();
    let (ours, theirs) = UnixStream::pair().unwrap();
    vm.add_device(Arc::new(Fake {
        hangup: Some(ours),
        ..Fake::default()
    }))
    .unwrap();
    vm.load_flat(SPIN, LOAD_ADDR).unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(theirs);
    });
    let started = Instant::now();
    let end = vm.run().unwrap();
    assert!(matches!(end, VmExit::BackendLost(_)), "{end:?}");
    assert_eq!(end.exit_code(), exit::BACKEND_LOST);
    assert!(started.elapsed() < Duration::from_secs(5));
}
