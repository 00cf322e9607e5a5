//! The one place atomics come from: `std` normally, `loom` under `cfg(loom)` so that the
//! lock-free cores can be model-checked unchanged.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// A hint inside a busy-wait loop. Under loom, a yield so the model checker runs someone else.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Adds `n` to a statistics counter that only the calling participant writes: a relaxed load
/// and a relaxed store, no read-modify-write (no locked instruction on the hot path). Two
/// threads sharing one handle may, rarely, lose a count; a count is never torn.
#[inline]
pub(crate) fn bump(word: &AtomicU64, n: u64) {
    word.store(
        word.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}
