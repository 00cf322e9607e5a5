//! Shared futex wait and wake.
//!
//! * Shared, not process-private, futex operations: the word lives in a file mapped by
//!   several processes, and a private futex is keyed by (mm, address), so it would never wake
//!   another process.
//! * The kernel compares the word with the expected value under its hash-bucket lock, so a
//!   wake that happens after the caller read the word is never lost: the wait returns at once.
//! * Every wait has a timeout; the caller re-checks its condition whatever the outcome.
//!
//! Under `cfg(loom)` the futex is modelled by a mutex and condition variable: the compare and
//! the sleep happen under the mutex, as in the kernel, and the timeout is ignored so that a lost
//! wake-up shows up as a deadlock the model checker reports.

use super::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `*word == expected`, for at most `timeout`. Returns on a wake, on a mismatch,
/// on a signal or on the timeout; the caller must re-check what it waits for.
#[cfg(not(loom))]
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    // Shared (plain FUTEX_WAIT, not the private variant): `word` may sit in a mapping shared
    // with other processes.
    wait_op(word, nix::libc::FUTEX_WAIT, expected, timeout);
}

/// [`wait`] on a word only this process uses (the async reactor's control word). Still the
/// shared operation: it works on any memory, and one kind of futex call everywhere (here and in
/// the reactor's `futex_waitv` entries) means a waiter and its waker can never disagree.
#[cfg(not(loom))]
pub(crate) fn wait_local(word: &AtomicU32, expected: u32, timeout: Duration) {
    wait_op(word, nix::libc::FUTEX_WAIT, expected, timeout);
}

#[cfg(not(loom))]
fn wait_op(word: &AtomicU32, op: nix::libc::c_int, expected: u32, timeout: Duration) {
    let ts = nix::libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as nix::libc::time_t,
        tv_nsec: timeout.subsec_nanos() as nix::libc::c_long,
    };
    // Errors (EAGAIN, EINTR, ETIMEDOUT) all mean "re-check".
    // SAFETY: FUTEX_WAIT reads the aligned u32 behind `word`, valid for
    // the call (borrowed); `ts` outlives the call; FUTEX_WAIT ignores the other arguments.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_futex,
            word.as_ptr(),
            op,
            expected,
            &ts as *const nix::libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes up to `count` waiters sleeping on `word`, in any process.
#[cfg(not(loom))]
pub(crate) fn wake(word: &AtomicU32, count: u32) {
    #[cfg(feature = "test-hooks")]
    WAKE_CALLS.with(|calls| calls.set(calls.get() + 1));
    // Shared futex, as above.
    wake_op(word, nix::libc::FUTEX_WAKE, count);
}

/// Wakes every waiter sleeping on a word only this process uses (see [`wait_local`]); not
/// counted among the wake-up calls that senders pay.
#[cfg(not(loom))]
pub(crate) fn wake_local(word: &AtomicU32) {
    wake_op(word, nix::libc::FUTEX_WAKE, u32::MAX);
}

#[cfg(not(loom))]
fn wake_op(word: &AtomicU32, op: nix::libc::c_int, count: u32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; it does not
    // dereference user memory beyond it and `word` is valid.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_futex,
            word.as_ptr(),
            op,
            count.min(i32::MAX as u32),
            std::ptr::null::<nix::libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(all(feature = "test-hooks", not(loom)))]
thread_local! {
    /// Wake-up system calls this thread has made (test-hooks builds only).
    static WAKE_CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Test-hooks builds only: how many wake-up system calls (`FUTEX_WAKE`) the calling thread has
/// made so far. Per thread, so that tests running in parallel in one process do not disturb
/// each other's counts.
#[cfg(all(feature = "test-hooks", not(loom)))]
pub fn wake_calls() -> u64 {
    WAKE_CALLS.with(std::cell::Cell::get)
}

#[cfg(loom)]
loom::lazy_static! {
    static ref FUTEX: (loom::sync::Mutex<()>, loom::sync::Condvar) =
        (loom::sync::Mutex::new(()), loom::sync::Condvar::new());
}

#[cfg(loom)]
pub(crate) fn wait(word: &AtomicU32, expected: u32, _timeout: Duration) {
    use super::atomic::Ordering;
    let guard = FUTEX.0.lock().unwrap();
    if word.load(Ordering::SeqCst) == expected {
        drop(FUTEX.1.wait(guard).unwrap());
    }
}

#[cfg(loom)]
pub(crate) fn wake(_word: &AtomicU32, _count: u32) {
    let _guard = FUTEX.0.lock().unwrap();
    FUTEX.1.notify_all();
}
