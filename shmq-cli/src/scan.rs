//! Finding shmq files: a file is one if it starts with shmq's magic number. Anything else in a
//! directory (other programs' shared memory, directories, links) is skipped silently.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Whether `path` is a regular file that starts with shmq's magic number (not following links).
pub fn is_shmq(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.file_type().is_file() {
        return false;
    }
    let mut magic = [0u8; 8];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| u64::from_le_bytes(magic) == shmq::layout::MAGIC)
}

/// The shmq files directly in `dir`, sorted by name.
pub fn shmq_files(dir: &Path) -> crate::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read directory {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_shmq(p))
        .collect();
    files.sort();
    Ok(files)
}
