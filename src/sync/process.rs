//! Which process a handle belongs to, so that a copy inherited by a fork child never acts on
//! its parent's behalf.
//!
//! After `fork()` the child holds byte-for-byte copies of every handle its parent had, and
//! shares the parent's open file descriptions, the OFD locks on them included. A copy that
//! unlocked "its" participant entry, acknowledged "its" message or committed "its" loan would
//! do so for the parent, which is alive and still using them. So every handle records the
//! [`Process`] that attached it, and checks it before touching shared state.
//!
//! The check is on the hot path (every send, receive and acknowledgement), and `getpid()` is a
//! system call, so the fast check compares a fork count instead: a `pthread_atfork` child
//! handler, registered before the first handle is attached, bumps a process-wide counter in
//! every child, before `fork()` returns there. A process's own count never changes (the
//! handler runs only in children), and every descendant's is larger than the count it
//! inherited, so a handle is in the process that attached it exactly when the counts are equal.
//! The exact check ([`Process::is_current_exactly`]) also compares the PID, for the rare paths
//! that can afford a system call (detaching), in case a child was made without `fork()` (a raw
//! `clone`, which runs no fork handlers).
//!
//! # Locks a child must not keep alive
//!
//! A child that has not exec'd also holds references to its parent's lock descriptions: were
//! the parent to die, the kernel would keep its participant locks while the child lives, and
//! the parent would look alive. So the descriptors that hold participant locks are kept in a
//! registry ([`LockFile`]), and the same child handler points each of them at `/dev/null`
//! (`dup3`, async-signal-safe), dropping the child's reference to the parent's description
//! while keeping the descriptor number valid (the child's copy of the handle closes it later).
//! The registry has [`LOCK_FILES`] places; a descriptor opened when it is full, or while a fork
//! happens in another thread, is not redirected (the parent then looks alive while that child
//! lives, as it would without the registry). A descriptor leaves the registry before it is
//! closed, so the handler never touches a number the parent has reused.

use nix::libc;
use std::fs::File;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::OnceLock;

/// Places in the registry of lock descriptors.
pub(crate) const LOCK_FILES: usize = 1024;

/// The registry: descriptors holding participant locks, -1 for a free place.
static LOCK_FDS: [AtomicI32; LOCK_FILES] = [const { AtomicI32::new(-1) }; LOCK_FILES];

/// A descriptor of `/dev/null` (close-on-exec), opened with the fork handler; -1 if that failed.
static DEV_NULL: AtomicI32 = AtomicI32::new(-1);

/// Forks in this process's ancestry since the handler was registered (plain `std` atomics:
/// never shared between processes, and not part of any loom model).
static FORKS: AtomicU64 = AtomicU64::new(0);

/// Runs in the child of every `fork()`, in the only thread the child has, before `fork()`
/// returns there. Async-signal-safe: atomics and `dup3`.
extern "C" fn forked() {
    FORKS.fetch_add(1, Ordering::Relaxed);
    super::barrier::forget_registration();
    let null = DEV_NULL.load(Ordering::Relaxed);
    if null < 0 {
        return;
    }
    for place in &LOCK_FDS {
        let fd = place.swap(-1, Ordering::Relaxed);
        if fd >= 0 {
            // SAFETY: `fd` and `null` are open descriptors of this process (a registered
            // descriptor leaves the registry before it is closed); `dup3` replaces `fd` by a
            // close-on-exec duplicate of `null` atomically, and is async-signal-safe.
            unsafe { libc::dup3(null, fd, libc::O_CLOEXEC) };
        }
    }
}

/// The process that attached a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Process {
    pid: u32,
    forks: u64,
}

impl Process {
    /// The calling process. Registers the fork handler the first time.
    ///
    /// # Errors
    /// The error `pthread_atfork` returned (out of memory), if the handler could not be
    /// registered: then no handle may be attached, since a fork could not be told apart.
    pub(crate) fn current() -> std::io::Result<Self> {
        static REGISTERED: OnceLock<libc::c_int> = OnceLock::new();
        let rc = *REGISTERED.get_or_init(|| {
            if let Ok(null) = std::fs::OpenOptions::new().read(true).open("/dev/null") {
                DEV_NULL.store(null.into_raw_fd(), Ordering::Relaxed);
            }
            // SAFETY: `forked` is an `extern "C" fn()` that lives for the program's life and
            // is async-signal-safe (one atomic add), as a fork child handler must be; the
            // other two handlers are none.
            unsafe { libc::pthread_atfork(None, None, Some(forked)) }
        });
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(Process {
            pid: std::process::id(),
            forks: FORKS.load(Ordering::Relaxed),
        })
    }

    /// The process id recorded at attach.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the caller runs in this process (and not in a fork child of it). One relaxed
    /// load: the counter only changes in a child, in its one thread, before anything else runs.
    #[inline]
    pub(crate) fn is_current(&self) -> bool {
        FORKS.load(Ordering::Relaxed) == self.forks
    }

    /// Like [`is_current`](Self::is_current), and also compares the PID (a system call).
    pub(crate) fn is_current_exactly(&self) -> bool {
        self.is_current() && std::process::id() == self.pid
    }
}

/// A descriptor that holds participant locks: registered so that a fork child drops its
/// reference to it (see the module docs), and unregistered before it is closed.
pub(crate) struct LockFile {
    file: File,
    /// Its place in the registry, if it got one.
    place: Option<usize>,
    /// The process that registered it: only there is the place its own.
    process: Process,
}

impl LockFile {
    /// Registers `file` (opened by `process`, the caller).
    pub(crate) fn new(file: File, process: Process) -> Self {
        let fd = file.as_raw_fd();
        let place = LOCK_FDS.iter().position(|place| {
            place
                .compare_exchange(-1, fd, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        });
        LockFile {
            file,
            place,
            process,
        }
    }
}

impl std::ops::Deref for LockFile {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
    }
}

impl Drop for LockFile {
    /// Leaves the registry (in its own process; in a fork child the handler emptied the place,
    /// which the child may have given to a descriptor of its own since), then `file` closes.
    fn drop(&mut self) {
        if let Some(place) = self.place {
            if self.process.is_current() {
                LOCK_FDS[place].store(-1, Ordering::Relaxed);
            }
        }
    }
}
