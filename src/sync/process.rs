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

use nix::libc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Forks in this process's ancestry since the handler was registered (plain `std` atomics:
/// never shared between processes, and not part of any loom model).
static FORKS: AtomicU64 = AtomicU64::new(0);

/// Runs in the child of every `fork()`, in the only thread the child has, before `fork()`
/// returns there. Async-signal-safe: one atomic add.
extern "C" fn forked() {
    FORKS.fetch_add(1, Ordering::Relaxed);
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
