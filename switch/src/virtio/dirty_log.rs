//! The dirty-page log of a live migration (vhost-user `LOG_SHMFD`, `VHOST_F_LOG_ALL`): a
//! bitmap the frontend shares with the switch, one bit per 4 KiB page of guest-physical
//! memory (bit `page % 8` of byte `page / 8`). While the frontend migrates its guest, the
//! switch sets the bit of every page it writes (receive buffers, used rings), so the
//! migration copies those pages again; the frontend harvests the bits by swapping words
//! with zero, hence atomic ORs here.

use std::fs::File;
use std::sync::atomic::{fence, AtomicU8, Ordering};

use vm_memory::{FileOffset, MmapRegion};

/// Bytes of guest memory per bit.
pub const LOG_PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DirtyLogError {
    #[error(
        "the dirty log is {size} bytes, too small for guest memory up to {memory_end:#x} \
         (needs {needed} bytes, one bit per 4 KiB page)"
    )]
    TooSmall {
        size: u64,
        memory_end: u64,
        needed: u64,
    },
    #[error("cannot map the dirty log ({size} bytes at offset {offset}): {message}")]
    Map {
        size: u64,
        offset: u64,
        message: String,
    },
}

/// Bytes of log that cover guest memory up to `memory_end` (exclusive).
pub fn bytes_needed(memory_end: u64) -> u64 {
    memory_end.div_ceil(LOG_PAGE).div_ceil(8)
}

/// A mapped dirty log.
#[derive(Debug)]
pub struct DirtyLog {
    region: MmapRegion<()>,
}

impl DirtyLog {
    /// Maps `size` bytes of `file` from `offset` (shared, writable), refusing a log that
    /// does not cover guest memory up to `memory_end`.
    pub fn new(file: File, offset: u64, size: u64, memory_end: u64) -> Result<Self, DirtyLogError> {
        let needed = bytes_needed(memory_end);
        if size < needed {
            return Err(DirtyLogError::TooSmall {
                size,
                memory_end,
                needed,
            });
        }
        let map_err = |message: String| DirtyLogError::Map {
            size,
            offset,
            message,
        };
        let len = usize::try_from(size).map_err(|e| map_err(e.to_string()))?;
        let region = MmapRegion::from_file(FileOffset::new(file, offset), len)
            .map_err(|e| map_err(e.to_string()))?;
        Ok(DirtyLog { region })
    }

    /// Whether the log covers guest memory up to `memory_end` (a memory table may grow
    /// while a log is set).
    pub fn covers(&self, memory_end: u64) -> bool {
        self.region.size() as u64 >= bytes_needed(memory_end)
    }

    /// Marks the pages under `[gpa, gpa + len)` dirty. Call after the writes: the fence
    /// orders them before the bits, so a frontend that sees a bit copies the new contents.
    /// Pages past the log (a frontend that shrank it under a larger memory) are skipped.
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        fence(Ordering::Release);
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        let base = self.region.as_ptr();
        let size = self.region.size() as u64;
        for page in first..=last {
            let byte = page / 8;
            if byte >= size {
                break;
            }
            // SAFETY: `byte` < the mapping's size (checked above), and the mapping lives as
            // long as `self`; an AtomicU8 has the size and alignment of a u8. The frontend
            // updates the same bytes concurrently, hence atomics.
            let cell = unsafe { AtomicU8::from_ptr(base.add(byte as usize)) };
            cell.fetch_or(1 << (page % 8), Ordering::Relaxed);
        }
    }

    /// Whether page `page` is marked (for tests).
    pub fn is_marked(&self, page: u64) -> bool {
        let byte = page / 8;
        if byte >= self.region.size() as u64 {
            return false;
        }
        // SAFETY: as in `mark`.
        let cell = unsafe { AtomicU8::from_ptr(self.region.as_ptr().add(byte as usize)) };
        cell.load(Ordering::Relaxed) & (1 << (page % 8)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn log_file(size: usize) -> File {
        let mut f = tempfile_in_memory();
        f.write_all(&vec![0u8; size]).unwrap();
        f
    }

    fn tempfile_in_memory() -> File {
        let fd = nix::sys::memfd::memfd_create(
            c"dirty-log-test",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .unwrap();
        File::from(fd)
    }

    #[test]
    fn marks_every_page_a_write_touches() {
        let log = DirtyLog::new(log_file(64), 0, 64, 64 * 8 * LOG_PAGE).unwrap();
        log.mark(LOG_PAGE * 3 + 100, LOG_PAGE); // pages 3 and 4
        log.mark(LOG_PAGE * 17, 1); // page 17
        let marked: Vec<u64> = (0..64 * 8).filter(|p| log.is_marked(*p)).collect();
        assert_eq!(marked, [3, 4, 17]);
    }

    #[test]
    fn a_log_too_small_for_the_memory_is_refused() {
        // 1 GiB of guest memory needs 262144 pages, 32768 bytes.
        let err = DirtyLog::new(log_file(4096), 0, 4096, 1 << 30).unwrap_err();
        assert!(
            matches!(err, DirtyLogError::TooSmall { needed: 32768, .. }),
            "{err}"
        );
        assert!(DirtyLog::new(log_file(32768), 0, 32768, 1 << 30).is_ok());
    }
}
