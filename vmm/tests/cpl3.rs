//! The CPL-3 guest path end to end: hand-assembled guests in hand-built ELFs, run by the
//! `patchbay-vmm` binary (and once through the library).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use patchbay_vmm::{GuestKind, Vm, VmConfig, VmExit};

#[test]
fn hello_prints_and_powers_off_with_its_status() {
    if !have_kvm("hello_prints_and_powers_off_with_its_status") {
        return;
    }
    let kernel = guest_elf("hello", HELLO);
    let out = vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--mem",
        "16M",
        "--verbose",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(text(&out.stdout), "Hi\n", "stderr: {stderr}");
    assert_eq!(out.status.code(), Some(7), "stderr: {stderr}");
    assert!(
        stderr.contains("VM creation to guest entry"),
        "stderr: {stderr}"
    );
}

#[test]
fn boot_info_reaches_the_guest_at_cpl3() {
    if !have_kvm("boot_info_reaches_the_guest_at_cpl3") {
        return;
    }
    let kernel = guest_elf("bootinfo", BOOT_INFO_ECHO);
    let console = scratch("bootinfo").join("console.txt");
    let out = vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--mem",
        "64M",
        "--cmdline",
        "ping 10.0.0.2 5",
        "--console",
        console.to_str().unwrap(),
    ]);
    // Status = mem_size >> 20 from BootInfo (99 if the magic or tsc_khz were wrong).
    assert_eq!(out.status.code(), Some(64), "stderr: {}", text(&out.stderr));
    // '3': the guest really runs at CPL 3; then BootInfo.cmdline.
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        "3 ping 10.0.0.2 5\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn idle_port_waits_for_the_timeout() {
    if !have_kvm("idle_port_waits_for_the_timeout") {
        return;
    }
    let kernel = guest_elf("idle", IDLE_150MS);
    let started = Instant::now();
    let out = vmm(&["--kernel", kernel.to_str().unwrap()]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "W");
    assert!(
        took >= Duration::from_millis(150),
        "idle wait returned after {took:?}"
    );
}

#[test]
fn faulting_guest_exits_3_with_registers() {
    if !have_kvm("faulting_guest_exits_3_with_registers") {
        return;
    }
    let kernel = guest_elf("fault", FAULT);
    let out = vmm(&["--kernel", kernel.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(stderr.contains("guest crashed"), "{stderr}");
    // ud2 is the 8th byte: rip points at it; rbx shows the guest's own value.
    assert!(stderr.contains("rip=0x0000000000200007"), "{stderr}");
    assert!(stderr.contains("rbx=0x0000000000001234"), "{stderr}");
    assert!(stderr.contains("code at rip: 0f 0b"), "{stderr}");
}

#[test]
fn elf_larger_than_ram_is_a_config_error() {
    // No KVM needed: the check happens before the VM is created.
    let path = scratch("toobig").join("big.elf");
    std::fs::write(&path, elf(HELLO, LOAD_ADDR, 128 << 20)).unwrap();
    let out = vmm(&["--kernel", path.to_str().unwrap(), "--mem", "64M"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("ELF needs 134217728 bytes at 0x200000 but the VM has 67108864 bytes"),
        "{stderr}"
    );
}

#[test]
fn elf_below_the_load_area_is_refused() {
    if !have_kvm("elf_below_the_load_area_is_refused") {
        return;
    }
    let path = scratch("low").join("low.elf");
    std::fs::write(&path, elf(HELLO, 0x1000, 0)).unwrap();
    let out = vmm(&["--kernel", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("below 0x200000"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn missing_kernel_is_a_config_error() {
    let out = vmm(&["--kernel", "/nonexistent/patchbay-guest.elf"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("cannot read kernel /nonexistent/patchbay-guest.elf"),
        "{stderr}"
    );
}

#[test]
fn unknown_kernel_format_and_bad_options_are_config_errors() {
    let path = scratch("format").join("not-a-kernel");
    std::fs::write(&path, b"#!/bin/sh\necho hi\n").unwrap();
    let out = vmm(&["--kernel", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("neither an ELF nor a Linux bzImage"));

    let out = vmm(&["--kernel", path.to_str().unwrap(), "--mem", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    let out = vmm(&[
        "--kernel",
        path.to_str().unwrap(),
        "--net",
        "mac=52:54:00:00:00:01",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("socket=PATH is required"),
        "{}",
        text(&out.stderr)
    );
    let out = vmm(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("Exit status:"));
}

/// A console that tests can read back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn library_runs_a_flat_image() {
    if !have_kvm("library_runs_a_flat_image") {
        return;
    }
    let console = Captured::default();
    let mut vm = Vm::new(
        VmConfig::new(8 << 20, GuestKind::Cpl3),
        Box::new(console.clone()),
    )
    .unwrap();
    vm.load_flat(HELLO, LOAD_ADDR).unwrap();
    let end = vm.run().unwrap();
    assert!(matches!(end, VmExit::PowerOff(7)), "{end:?}");
    assert_eq!(console.0.lock().unwrap().as_slice(), b"Hi\n");
    let t = vm.timing();
    let entry = t.entry.unwrap();
    assert!(t.kvm <= t.memory && t.memory <= t.vcpu && t.vcpu <= entry);
    assert!(t.first_exit.unwrap() >= entry);
    eprintln!(
        "VM creation to guest entry: {entry:?}; first exit at {:?}",
        t.first_exit.unwrap()
    );

    // Out of range flat images are refused.
    let mut vm = Vm::new(
        VmConfig::new(4 << 20, GuestKind::Cpl3),
        Box::new(std::io::sink()),
    )
    .unwrap();
    assert!(vm.load_flat(HELLO, 0x1000).is_err());
    assert!(vm.load_flat(&vec![0u8; 3 << 20], LOAD_ADDR).is_err());
}
