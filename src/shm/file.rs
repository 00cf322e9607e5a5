//! The queue file: create it safely, open it without trusting it, map it.
//!
//! * Create: `O_CREAT | O_EXCL | O_NOFOLLOW`, mode `0600` unless asked otherwise (set with
//!   `fchmod`, so the umask cannot widen or narrow it; never writable by others), the group
//!   asked for (`fchown`), space reserved with `posix_fallocate`
//!   (a full `/dev/shm` is an error now, not a `SIGBUS` later), header written with the magic
//!   number last (Release), so an opener never trusts a half-written header.
//! * Open: `O_NOFOLLOW`, regular files only, the header read with atomic loads and validated
//!   against the file's real size before anything else is used; a file still being created
//!   (length 0 or magic 0) is waited for briefly. Before any byte is read, the owner and mode
//!   must be ones this process trusts (see [`perm`](crate::shm::perm)).
//! * Both map the file shared and pre-fault it (`MAP_POPULATE`) so first messages pay no page
//!   faults.
//!
//! A file truncated by another process *while mapped* makes accesses past the new end raise
//! `SIGBUS`; no validation can prevent that, which is one reason files are created `0600`.

use crate::error::{Corruption, Error};
use crate::layout::{self, field, FileHeader, Geometry, MAX_FILE_SIZE};
use crate::shm::{perm, Region};
use crate::sync::atomic::Ordering;
use crate::sync::process::{LockFile, Process};
use memmap2::{MmapOptions, MmapRaw};
use nix::libc;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long `open` waits for a file that another process is still creating.
const CREATION_GRACE: Duration = Duration::from_secs(1);

/// A mapped queue file.
pub(crate) struct Mapping {
    map: MmapRaw,
    file: File,
    path: PathBuf,
    /// A description of the file of this mapping's own, for probing participants' locks during
    /// recovery; the mutex serialises recovery within the process (locks of one description
    /// never conflict with each other, so they cannot do it). Tagged with the process that
    /// opened it: a fork child shares the description, so it opens one of its own.
    probe: Mutex<Option<(Process, LockFile)>>,
}

/// The recovery probe, held exclusively within the process.
pub(crate) struct Probe<'a>(MutexGuard<'a, Option<(Process, LockFile)>>);

impl std::ops::Deref for Probe<'_> {
    type Target = File;
    fn deref(&self) -> &File {
        &self
            .0
            .as_ref()
            .expect("a Probe is only made once the file is open")
            .1
    }
}

impl Mapping {
    /// The region covering the whole mapping.
    pub(crate) fn region(self: &Arc<Self>) -> Region {
        let base = NonNull::new(self.map.as_mut_ptr()).expect("mmap never returns null");
        // SAFETY: the mapping is page-aligned, `len` bytes long, shared and writable, and stays
        // mapped while the Arc (stored as the region's owner) is alive. All shmq code touches
        // it through atomics or through slots the protocol hands to it.
        unsafe { Region::new(base, self.map.len(), self.clone()) }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The recovery probe, opened with `open` the first time in each process (`process` is the
    /// caller's).
    pub(crate) fn recovery_probe<E>(
        &self,
        process: Process,
        open: impl FnOnce() -> Result<LockFile, E>,
    ) -> Result<Probe<'_>, E> {
        let mut guard = self
            .probe
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !matches!(&*guard, Some((opener, _)) if *opener == process) {
            *guard = Some((process, open()?));
        }
        Ok(Probe(guard))
    }
}

fn map(file: &File, len: u64, path: &Path) -> Result<MmapRaw, Error> {
    let len = usize::try_from(len)
        .map_err(|_| Error::corrupt(path, Corruption::BadGeometry("file too large")))?;
    MmapOptions::new()
        .len(len)
        .populate()
        .map_raw(file)
        .map_err(|e| Error::io(path, "map", e))
}

/// Creates a new queue file with `geometry`, initialised by `init` (which sees a region nobody
/// else can use yet), and publishes it by writing the magic number last.
pub(crate) fn create(
    path: &Path,
    geometry: &Geometry,
    mode: u32,
    group: Option<u32>,
    init: impl FnOnce(&Region),
) -> Result<Arc<Mapping>, Error> {
    perm::check_create_mode(mode)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(path, "create", e))?;
    let result = (|| {
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(path, "set permissions on", e))?;
        perm::set_group(&file, path, group)?;
        let len = i64::try_from(geometry.file_size)
            .map_err(|_| Error::InvalidOptions("file too large".into()))?;
        nix::fcntl::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, len)
            .map_err(|e| Error::io(path, "reserve space for", io::Error::from(e)))?;
        let map = map(&file, geometry.file_size, path)?;
        let mapping = Arc::new(Mapping {
            map,
            file: file.try_clone().map_err(|e| Error::io(path, "dup", e))?,
            path: path.to_path_buf(),
            probe: Mutex::new(None),
        });
        let region = mapping.region();
        write_header(&region, &geometry.header());
        init(&region);
        region
            .u64_at(field::MAGIC)
            .store(layout::MAGIC, Ordering::Release);
        Ok(mapping)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Writes every header field but the magic number (written last, by `create`).
fn write_header(region: &Region, h: &FileHeader) {
    let bytes = bytemuck::bytes_of(h);
    region.store_words(field::VERSION, &bytes[field::VERSION..]);
}

/// Reads the header: the magic number first (Acquire, pairing with the creator's Release),
/// then the rest as atomic words, since another process may be writing the file.
fn read_header(region: &Region) -> FileHeader {
    let magic = region.u64_at(field::MAGIC).load(Ordering::Acquire);
    let mut bytes = [0u8; std::mem::size_of::<FileHeader>()];
    region.load_words(0, &mut bytes);
    FileHeader {
        magic,
        ..bytemuck::pod_read_unaligned(&bytes)
    }
}

/// Opens and validates an existing queue file of `kind`.
pub(crate) fn open(path: &Path, kind: u32) -> Result<(Arc<Mapping>, Geometry), Error> {
    open_allowing(path, kind, 0)
}

/// [`open`] for an opener that serves the pipeline flags `pipeline_flags` (see
/// [`Geometry::validate_allowing`]).
pub(crate) fn open_allowing(
    path: &Path,
    kind: u32,
    pipeline_flags: u32,
) -> Result<(Arc<Mapping>, Geometry), Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::io(
                    path,
                    "open (it is a symbolic link, which shmq does not follow)",
                    e,
                )
            } else {
                Error::io(path, "open", e)
            }
        })?;
    let started = Instant::now();
    loop {
        let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
        if !meta.file_type().is_file() {
            return Err(Error::corrupt(
                path,
                Corruption::BadGeometry("not a regular file"),
            ));
        }
        perm::check_open(path, &meta)?;
        let len = meta.len();
        let header_len = std::mem::size_of::<FileHeader>() as u64;
        let creating = len == 0;
        if !creating && len < header_len {
            return Err(Error::corrupt(
                path,
                Corruption::Truncated {
                    len,
                    expected: header_len,
                },
            ));
        }
        if !creating {
            if len > MAX_FILE_SIZE {
                return Err(Error::corrupt(
                    path,
                    Corruption::BadGeometry("file too large"),
                ));
            }
            let map = map(&file, len, path)?;
            let mapping = Arc::new(Mapping {
                map,
                file: file.try_clone().map_err(|e| Error::io(path, "dup", e))?,
                path: path.to_path_buf(),
                probe: Mutex::new(None),
            });
            let header = read_header(&mapping.region());
            match Geometry::validate_allowing(&header, kind, len, pipeline_flags) {
                Ok(g) => return Ok((mapping, g)),
                Err(Corruption::Uninitialized) if started.elapsed() < CREATION_GRACE => {}
                Err(problem) => return Err(Error::corrupt(path, problem)),
            }
        } else if started.elapsed() >= CREATION_GRACE {
            return Err(Error::corrupt(path, Corruption::Uninitialized));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
