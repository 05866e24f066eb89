//! The CPL-3 network guest built from `vmm/guest/` (by build.rs) and embedded in the VMM.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use nix::sys::memfd::{memfd_create, MFdFlags};

/// The guest ELF (static, linked at 0x200000).
pub static GUEST_ELF: &[u8] = include_bytes!(env!("PATCHBAY_GUEST_ELF"));

/// The bundled guest as a file the loader can open: an in-memory file, and a path to it
/// (`/proc/self/fd/N`) that stays valid while the returned `File` is open.
pub fn guest_file() -> std::io::Result<(File, PathBuf)> {
    let fd =
        memfd_create(c"patchbay-guest", MFdFlags::MFD_CLOEXEC).map_err(std::io::Error::from)?;
    let mut file = File::from(fd);
    file.write_all(GUEST_ELF)?;
    let path = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&file)
    ));
    Ok((file, path))
}
