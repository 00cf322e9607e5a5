//! A queue file mapped read-only, for inspection: the file opened `O_RDONLY | O_NOFOLLOW`, the
//! mapping `PROT_READ` (so not one byte can be written through it, whatever the code above
//! does), and words read with relaxed atomic loads, because the processes using the queue may
//! be writing them. Nothing is pre-faulted: an inspection touches only the pages it reads.

use crate::error::{Corruption, Error};
use crate::layout::MAX_FILE_SIZE;
use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use memmap2::{MmapOptions, MmapRaw};
use nix::libc;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A read-only view of a queue file.
pub(crate) struct ReadOnlyMapping {
    map: MmapRaw,
    file: File,
}

impl ReadOnlyMapping {
    /// Opens `path` read-only and maps all of it, refusing what cannot be a queue file (not a
    /// regular file, empty, or absurdly large).
    pub(crate) fn open(path: &Path) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io(path, "open", e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
        if !meta.file_type().is_file() {
            return Err(Error::corrupt(
                path,
                Corruption::BadGeometry("not a regular file"),
            ));
        }
        let len = meta.len();
        if len == 0 || len > MAX_FILE_SIZE {
            return Err(Error::corrupt(
                path,
                Corruption::Truncated {
                    len,
                    expected: std::mem::size_of::<crate::layout::FileHeader>() as u64,
                },
            ));
        }
        let len = usize::try_from(len)
            .map_err(|_| Error::corrupt(path, Corruption::BadGeometry("file too large")))?;
        let map = MmapOptions::new()
            .len(len)
            .map_raw_read_only(&file)
            .map_err(|e| Error::io(path, "map", e))?;
        Ok(ReadOnlyMapping { map, file })
    }

    /// The open (read-only) file, for lock queries.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Length of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The 64-bit word at `off`, or `None` if `off` is misaligned or out of bounds.
    pub(crate) fn u64_at(&self, off: usize) -> Option<u64> {
        if off % 8 != 0 || off.checked_add(8).map_or(true, |end| end > self.len()) {
            return None;
        }
        // Invariants: `off + 8 <= len` and 8-alignment were just checked (the mapping is
        // page-aligned); the mapping lives as long as `self`. Only a load is performed.
        // SAFETY: so the pointer is valid, aligned memory for an AtomicU64; a relaxed atomic
        // load of a native-width word is sound on read-only memory and tolerates concurrent
        // writes by other processes.
        let word = unsafe { &*(self.map.as_ptr().wrapping_add(off) as *const AtomicU64) };
        Some(word.load(Ordering::Relaxed))
    }

    /// The 32-bit word at `off`, or `None` if `off` is misaligned or out of bounds.
    pub(crate) fn u32_at(&self, off: usize) -> Option<u32> {
        if off % 4 != 0 || off.checked_add(4).map_or(true, |end| end > self.len()) {
            return None;
        }
        // Invariants: as for `u64_at`, with 4-byte size and alignment.
        // SAFETY: a relaxed atomic load of an aligned, in-bounds, mapped 32-bit word.
        let word = unsafe { &*(self.map.as_ptr().wrapping_add(off) as *const AtomicU32) };
        Some(word.load(Ordering::Relaxed))
    }
}
