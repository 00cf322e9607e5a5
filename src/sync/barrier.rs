//! The wake check's fence, paid by the waiter: an asymmetric Dekker barrier across processes.
//!
//! The wait protocol ([`super::wait`]) is Dekker's pattern: the waiter stores its join and then
//! loads the condition; a notifier stores the condition and then loads the futex word. Each
//! side needs a full fence between its store and its load. Notifiers are the hot side (every
//! commit and every acknowledgement notifies), waiters the cold one (they are about to sleep),
//! so the notifier's fence is made free and the waiter pays for both:
//!
//! * [`light`], the notifier's half: a compiler fence only, in a process registered for
//!   `MEMBARRIER_CMD_GLOBAL_EXPEDITED` (it registers itself on its first notify); a real
//!   `SeqCst` fence in a process that could not register.
//! * [`heavy`], the waiter's half: a `SeqCst` fence, then `membarrier(GLOBAL_EXPEDITED)`, which
//!   returns only after every thread of every registered process has run a full memory barrier
//!   (an IPI to the CPUs running them; a thread not running has passed through a context switch,
//!   which is one).
//!
//! Why no wake-up is lost: take a notifier thread's store of the condition (S) and its load of
//! the futex word (L), with only a compiler fence between them, and the waiter's join (J),
//! fence, barrier (B) and load of the condition (C). B puts a full barrier into the notifier's
//! instruction stream at some point. If that point is before S, then J (stored and fenced
//! before B began) is visible before S and L run, so L sees the join. If it is between S and L,
//! the notifier ran a full fence between them, and the symmetric argument of [`super::wait`]
//! holds. If it is after L, then S was globally visible before B returned, so C sees the
//! condition. In every case either L sees the waiter or C sees the condition. (liburcu's
//! `urcu-memb` flavour and folly's `asymmetric_thread_fence_heavy` rest on the same guarantee.)
//!
//! Where `membarrier` is missing or refused (Linux < 4.16, a seccomp filter), registering fails
//! and that process's notifiers keep their fence. A waiter whose barrier fails cannot count on
//! notifiers in other processes that did register, so it never sleeps longer than
//! [`UNFENCED_PARK`] at a time: a missed wake-up then costs at most that much latency, never a
//! hang. A fork child starts unregistered (the fork handler forgets the parent's registration)
//! and registers again on its first notify.
//!
//! Under `cfg(loom)` both halves are `SeqCst` fences: the models check the protocol with the
//! fences the barrier stands for (loom cannot model a fence run on another thread's behalf).

use std::time::Duration;

/// The longest single sleep of a waiter whose barrier failed (see the module docs).
pub(crate) const UNFENCED_PARK: Duration = Duration::from_millis(1);

#[cfg(not(loom))]
mod imp {
    use nix::libc;
    use std::sync::atomic::{compiler_fence, fence, AtomicU8, Ordering};

    // From <linux/membarrier.h>.
    const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
    const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_long = 1 << 1;
    const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_long = 1 << 2;

    /// Not tried yet in this process (or forgotten in a fork child).
    const UNKNOWN: u8 = 0;
    /// Registered: notifiers need no fence of their own.
    const REGISTERED: u8 = 1;
    /// Registering failed: notifiers fence.
    const UNAVAILABLE: u8 = 2;

    static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

    fn membarrier(cmd: libc::c_long) -> libc::c_long {
        // SAFETY: membarrier takes two integer arguments (command, flags) and a CPU id that
        // the commands used here ignore; it touches no memory of ours.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        }
    }

    /// Registers this process for the waiters' barrier, if the kernel offers it.
    #[cold]
    #[inline(never)]
    fn register() -> u8 {
        let offered = membarrier(MEMBARRIER_CMD_QUERY);
        let state = if offered >= 0
            && offered & MEMBARRIER_CMD_GLOBAL_EXPEDITED != 0
            && membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0
        {
            REGISTERED
        } else {
            UNAVAILABLE
        };
        STATE.store(state, Ordering::Relaxed);
        state
    }

    /// The notifier's half: between making the condition true and loading the futex word.
    #[inline]
    pub(crate) fn light() {
        let state = match STATE.load(Ordering::Relaxed) {
            UNKNOWN => register(),
            s => s,
        };
        if state == REGISTERED {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
    }

    /// The waiter's half: between joining the cell and loading the condition. Returns false
    /// if the barrier failed (then sleep at most [`super::UNFENCED_PARK`] at a time).
    #[inline]
    pub(crate) fn heavy() -> bool {
        fence(Ordering::SeqCst);
        let done = membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0;
        if !done {
            // Refused after all (a seccomp filter installed since): this process's notifiers
            // fence from now on.
            STATE.store(UNAVAILABLE, Ordering::Relaxed);
        }
        done
    }

    /// In a fork child (from its `pthread_atfork` handler: one atomic store, async-signal
    /// safe): the parent's registration is not the child's to count on.
    pub(crate) fn forget_registration() {
        STATE.store(UNKNOWN, Ordering::Relaxed);
    }

    /// Whether this process is registered for the waiters' barrier (so its notifiers run
    /// without a fence, and owner cells may be biased); registers on the first call.
    pub(crate) fn notifiers_unfenced() -> bool {
        light();
        STATE.load(Ordering::Relaxed) == REGISTERED
    }
}

#[cfg(loom)]
mod imp {
    use crate::sync::atomic::{fence, Ordering};

    #[inline]
    pub(crate) fn light() {
        fence(Ordering::SeqCst);
    }

    #[inline]
    pub(crate) fn heavy() -> bool {
        fence(Ordering::SeqCst);
        true
    }
}

pub(crate) use imp::*;

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_offers_the_barrier_and_the_waiters_half_succeeds() {
        // Not an assertion that every machine has it: a machine without it must still pass
        // the suite (notifiers fence, waiters cap their sleeps). Say which case ran.
        if notifiers_unfenced() {
            assert!(heavy(), "registered, yet the waiter's barrier failed");
        } else {
            eprintln!("membarrier(GLOBAL_EXPEDITED) unavailable here: notifiers fence");
        }
    }
}
