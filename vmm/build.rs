//! Builds Patchbay's CPL-3 guest (`guest/`, its own cargo workspace: it needs panic=abort and
//! a freestanding link) in release and hands its path to the VMM, which embeds it: a user
//! never builds the guest by hand, and `patchbay-vmm` runs it when no --kernel is given.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guest = manifest.join("guest");
    for f in ["Cargo.toml", "Cargo.lock", "build.rs", "link.ld", "src"] {
        println!("cargo:rerun-if-changed={}", guest.join(f).display());
    }
    // Its own target directory (no lock contention with the outer build), under OUT_DIR.
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let target = out.join("guest-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--locked", "--bin", "patchbay-guest"])
        .current_dir(&guest)
        .env("CARGO_TARGET_DIR", &target)
        // The outer build's flags are for the host crates, not for a freestanding guest.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .expect("run cargo for the guest");
    assert!(status.success(), "building the guest (vmm/guest) failed");
    let elf = target.join("release/patchbay-guest");
    println!("cargo:rustc-env=PATCHBAY_GUEST_ELF={}", elf.display());
}
