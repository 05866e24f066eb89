//! The VMM's errors and how they map to exit statuses.

use std::path::PathBuf;

use crate::loader::LoadError;
use crate::memory::MemoryError;
use crate::vcpu::CpuDump;

/// Exit statuses of `patchbay-vmm` (also in `--help`).
pub mod exit {
    /// Guest powered off with status 0 (other guest statuses are passed through).
    pub const OK: i32 = 0;
    /// Any other error (KVM failures, I/O errors, KVM internal errors).
    pub const ERROR: i32 = 1;
    /// Usage or configuration error (bad option, missing file, kernel does not fit...).
    pub const CONFIG: i32 = 2;
    /// The guest crashed (a fault with no handler: KVM_EXIT_SHUTDOWN).
    pub const CRASH: i32 = 3;
    /// A device lost its backend (e.g. the switch closed the vhost-user socket).
    pub const BACKEND_LOST: i32 = 4;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot open console file {path}: {source}")]
    Console {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A device could not be set up from its configuration (e.g. its socket is missing).
    #[error("{0}")]
    DeviceConfig(String),
    /// A device failed at run time.
    #[error("{0}")]
    Device(String),
    #[error("KVM internal error ({what}); the vCPU was at:\n{dump}")]
    Internal { what: String, dump: Box<CpuDump> },
    #[error("unexpected vCPU exit {0}")]
    UnexpectedExit(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { what, source }
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Load(_) | Error::Console { .. } | Error::DeviceConfig(_) => {
                exit::CONFIG
            }
            Error::Memory(
                MemoryError::TooSmall { .. }
                | MemoryError::TooLarge { .. }
                | MemoryError::Unaligned { .. },
            ) => exit::CONFIG,
            _ => exit::ERROR,
        }
    }
}
