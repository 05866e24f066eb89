//! The Linux boot path with Debian's cloud kernel (bzImage, 64-bit boot protocol).
//!
//! On hosts with VT-x/AMD-V this boots quickly. On PVM hosts (see the machine notes) CPL 0 is
//! emulated at ~2 MIPS: the bzImage decompressor alone takes ~1.5 minutes, then the kernel
//! prints its banner and early boot lines and later stops on an instruction KVM cannot
//! emulate. This test only asks for the banner, within a generous bound.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const BANNER_TIMEOUT: Duration = Duration::from_secs(420);

#[test]
fn debian_cloud_kernel_prints_its_banner() {
    let test = "debian_cloud_kernel_prints_its_banner";
    if !have_kvm(test) {
        return;
    }
    let root = patchbay_tests::guest::repo_root();
    let out = root.join("build/guest");
    let built = Command::new(root.join("scripts/build-guest-image.sh"))
        .arg(&out)
        .stdout(Stdio::null())
        .status();
    if !built.is_ok_and(|s| s.success()) {
        patchbay_tests::guest::skip_or_fail(
            test,
            "scripts/build-guest-image.sh failed (needs apt and the Debian archive)",
        );
        return;
    }
    let kernel = out.join("vmlinuz");

    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_patchbay-vmm"))
        .args(["--mem", "256M", "--kernel"])
        .arg(&kernel)
        .args(["--cmdline", "console=ttyS0 earlyprintk=ttyS0", "--verbose"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start patchbay-vmm");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
        }
        all
    });

    let mut banner = None;
    let mut seen = Vec::new();
    while started.elapsed() < BANNER_TIMEOUT {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                if line.contains("Linux version") {
                    banner = Some((started.elapsed(), line));
                    break;
                }
                seen.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let stderr = errors.join().unwrap_or_default();
    let (took, line) = banner.unwrap_or_else(|| {
        panic!(
            "no `Linux version` banner within {BANNER_TIMEOUT:?}; console: {seen:?}; stderr:\n{stderr}"
        )
    });
    assert!(line.contains("Linux version 6."), "{line}");
    eprintln!("banner after {took:?}: {line}");
}

/// A bzImage that is only a setup header: enough for detection and loading, never run.
fn fake_bzimage(init_size: u32) -> Vec<u8> {
    let mut k = vec![0u8; 0x2000];
    k[0x1f1] = 1; // setup_sects
    k[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
    k[0x211] = 1; // loadflags: LOADED_HIGH
    k[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    k[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    k[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    k[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    k[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
    k[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    k
}

#[test]
fn kernel_too_big_for_memory_is_a_config_error() {
    // Checked before the VM exists: no /dev/kvm needed.
    let path = scratch("bzbig").join("bzImage");
    std::fs::write(&path, fake_bzimage(64 << 20)).unwrap();
    let out = vmm(&["--kernel", path.to_str().unwrap(), "--mem", "32M"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("needs 67108864 bytes at 0x1000000 but the VM has 33554432 bytes"),
        "{stderr}"
    );
}

#[test]
fn missing_initrd_is_a_config_error() {
    if !have_kvm("missing_initrd_is_a_config_error") {
        return;
    }
    let path = scratch("noinitrd").join("bzImage");
    std::fs::write(&path, fake_bzimage(16 << 20)).unwrap();
    let out = vmm(&[
        "--kernel",
        path.to_str().unwrap(),
        "--mem",
        "64M",
        "--initrd",
        "/nonexistent/initrd.gz",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read initrd /nonexistent/initrd.gz"),
        "{stderr}"
    );
}

#[test]
fn crafted_kernel_headers_that_overflow_are_config_errors_naming_the_field() {
    // Checked before the VM exists: no /dev/kvm needed. A debug build used to panic here.
    let dir = scratch("overflow");
    let mut bz = fake_bzimage(16 << 20);
    bz[0x258..0x260].copy_from_slice(&0xffff_ffff_ffff_f000u64.to_le_bytes()); // pref_address
    let bz_path = dir.join("bzImage");
    std::fs::write(&bz_path, bz).unwrap();

    // A one-segment ELF whose p_offset + p_filesz wraps.
    let mut elf = vec![0u8; 121];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little-endian
    elf[6] = 1;
    elf[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    elf[0x18..0x20].copy_from_slice(&0x20_0000u64.to_le_bytes()); // entry
    elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // phoff
    elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = &mut elf[64..120];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // p_offset
    ph[16..24].copy_from_slice(&0x20_0000u64.to_le_bytes());
    ph[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
    ph[32..40].copy_from_slice(&1u64.to_le_bytes()); // p_filesz
    ph[40..48].copy_from_slice(&0x1000u64.to_le_bytes()); // p_memsz
    let elf_path = dir.join("guest.elf");
    std::fs::write(&elf_path, elf).unwrap();

    for (path, field) in [
        (&bz_path, "header field pref_address + init_size overflows"),
        (&elf_path, "p_offset + p_filesz overflows"),
    ] {
        let out = vmm(&["--kernel", path.to_str().unwrap(), "--mem", "64M"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(field), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
