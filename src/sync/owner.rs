//! A lock that costs its usual thread nothing: the exclusive ends' in-process exclusion.
//!
//! A pipeline handle is `Sync`, so an exclusive-ends handle must keep two threads of its
//! process from using its end (its position) at once. A mutex does, at two locked
//! read-modify-writes per message, and each of them waits for the store buffer to drain — the
//! previous message's stores to a slot line another core holds — which puts a cross-core round
//! trip on every send and every receive. Almost every handle is used by one thread, so the
//! cell is *biased* to one thread, which enters with plain stores:
//!
//! ```text
//! biased thread (bias == me)               any other thread, or the biased one after a miss
//! busy = 1            (Relaxed)            lock the mutex
//! light barrier                            bias != 0: bias = 0 (Relaxed); heavy barrier;
//! bias == me? enter : busy = 0, slow path             wait until busy == 0 (Acquire)
//! ... use the value ...                    ... use the value ...
//! busy = 0            (Release)            maybe bias = me (see below); unlock the mutex
//! ```
//!
//! The barriers are [`super::barrier`]'s asymmetric fence (the biased thread's half is a
//! compiler fence; the revoking thread's half is `membarrier`), so this is Dekker's pattern
//! again: either the biased thread's second load sees the revocation, or the revoker's load
//! of `busy` sees it inside and waits for it to leave (its Release store, the revoker's
//! Acquire load: what it did happens before what the revoker does). Every other entry holds
//! the mutex, so two threads are never inside at once. A thread that finds the cell unbiased
//! enters under the mutex alone (an uncontended mutex, as before).
//!
//! **Bias.** The cell starts biased to the thread that made it (the one that attached the
//! handle). A thread that enters under the mutex [`REBIAS`] times in a row, nobody else
//! entering in between, gets the bias. So a handle moved to another thread becomes free there
//! after a few messages, and threads taking turns share an ordinary mutex; a revocation (one
//! `membarrier`, a few microseconds) happens at most once per [`REBIAS`] entries.
//! Where the barrier is unavailable (no `membarrier`) the cell is never biased: a mutex.
//!
//! A panic while inside (in a caller's closure) releases the cell as a normal exit does: the
//! ends' fields only change in the rings' own non-panicking steps.

use super::atomic::{AtomicU32, AtomicU64, Ordering};
use super::barrier;
use std::ops::{Deref, DerefMut};

#[cfg(loom)]
use loom::cell::UnsafeCell;
#[cfg(loom)]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
use std::cell::UnsafeCell;
#[cfg(not(loom))]
use std::sync::{Mutex, MutexGuard};

/// Entries in a row under the mutex by one thread that bias the cell to it (under loom, 2, so
/// that the models see the bias move).
#[cfg(not(loom))]
pub(crate) const REBIAS: u32 = 64;
#[cfg(loom)]
pub(crate) const REBIAS: u32 = 2;

/// Who last entered under the mutex, and how many times in a row.
struct Streak {
    thread: u64,
    count: u32,
}

/// A value used by one thread at a time: see the module docs.
pub(crate) struct OwnerCell<T> {
    /// The thread id the cell is biased to; 0 for none.
    bias: AtomicU64,
    /// 1 while the biased thread is inside on its fast path.
    busy: AtomicU32,
    /// Every entry but the biased thread's fast one holds it.
    slow: Mutex<Streak>,
    value: UnsafeCell<T>,
}

// SAFETY: the cell hands out `&mut T` to one thread at a time (the protocol in the module
// docs), so sharing it between threads is sharing a `T` that moves between them: `T: Send`.
unsafe impl<T: Send> Sync for OwnerCell<T> {}

/// This thread's id: unique in the process for its life, never 0.
#[cfg(not(loom))]
#[inline]
fn current_thread() -> u64 {
    use std::cell::Cell;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    thread_local! {
        static ID: Cell<u64> = const { Cell::new(0) };
    }
    ID.with(|id| match id.get() {
        0 => {
            let new = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            id.set(new);
            new
        }
        known => known,
    })
}

/// Under loom: the model thread's id, hashed (deterministic: the hasher has fixed keys).
#[cfg(loom)]
fn current_thread() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    loom::thread::current().id().hash(&mut h);
    h.finish() | 1
}

/// Whether cells may be biased in this process: only where the revoker's barrier exists.
#[inline]
fn biasing() -> bool {
    #[cfg(loom)]
    return true;
    #[cfg(not(loom))]
    barrier::notifiers_unfenced()
}

impl<T> OwnerCell<T> {
    /// A cell holding `value`, biased to the calling thread.
    pub(crate) fn new(value: T) -> Self {
        let bias = if biasing() { current_thread() } else { 0 };
        OwnerCell {
            bias: AtomicU64::new(bias),
            busy: AtomicU32::new(0),
            slow: Mutex::new(Streak {
                thread: 0,
                count: 0,
            }),
            value: UnsafeCell::new(value),
        }
    }

    /// Enters the cell: the returned guard is the only way to the value until it is dropped.
    /// Waits while another thread is inside.
    #[inline]
    pub(crate) fn lock(&self) -> OwnerGuard<'_, T> {
        let me = current_thread();
        if self.bias.load(Ordering::Relaxed) == me {
            self.busy.store(1, Ordering::Relaxed);
            barrier::light();
            if self.bias.load(Ordering::Relaxed) == me {
                return OwnerGuard {
                    cell: self,
                    slow: None,
                };
            }
            self.busy.store(0, Ordering::Release);
        }
        self.lock_slow(me)
    }

    #[cold]
    #[inline(never)]
    fn lock_slow(&self, me: u64) -> OwnerGuard<'_, T> {
        #[cfg(not(loom))]
        let mut streak = self
            .slow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        #[cfg(loom)]
        let mut streak = self.slow.lock().unwrap();
        if self.bias.load(Ordering::Relaxed) != 0 {
            self.revoke();
        }
        if streak.thread == me {
            streak.count = streak.count.saturating_add(1);
        } else {
            *streak = Streak {
                thread: me,
                count: 1,
            };
        }
        OwnerGuard {
            cell: self,
            slow: Some(streak),
        }
    }

    /// Takes the bias away (holding the mutex) and waits for the biased thread to leave.
    fn revoke(&self) {
        self.bias.store(0, Ordering::Relaxed);
        // The barrier cannot fail here: cells are biased only in a process registered for it
        // (a seccomp filter installed later that refused `membarrier` would break this, as it
        // would break every asymmetric-fence scheme; `heavy` then at least stops this
        // process's notifiers from relying on it).
        barrier::heavy();
        let mut spins = 0u32;
        while self.busy.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            backoff(spins);
        }
    }
}

/// Waits a little longer each time: spins, then yields, then sleeps (a biased thread may hold
/// the cell for long, e.g. while a zero-copy loan is open).
#[inline]
fn backoff(spins: u32) {
    #[cfg(loom)]
    {
        let _ = spins;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    if spins < 64 {
        std::hint::spin_loop();
    } else if spins < 128 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}

/// Inside an [`OwnerCell`]: derefs to its value; leaving is dropping it.
pub(crate) struct OwnerGuard<'a, T> {
    cell: &'a OwnerCell<T>,
    /// The mutex, when entered on the slow path.
    slow: Option<MutexGuard<'a, Streak>>,
}

impl<T> OwnerGuard<'_, T> {
    #[inline]
    fn with<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        #[cfg(not(loom))]
        return f(self.cell.value.get());
        #[cfg(loom)]
        return self.cell.value.with_mut(f);
    }
}

impl<T> Deref for OwnerGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard is the one way into the cell while it lives (module docs), and
        // the reference borrows the guard.
        self.with(|p| unsafe { &*p })
    }
}

impl<T> DerefMut for OwnerGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; borrowing the guard mutably makes the reference unique.
        self.with(|p| unsafe { &mut *p })
    }
}

impl<T> Drop for OwnerGuard<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        // The biased path, inlined: one store. The mutex's guard (with its poison check) is
        // dropped out of line.
        if self.slow.is_none() {
            self.cell.busy.store(0, Ordering::Release);
        } else {
            self.leave_slow();
        }
    }
}

impl<T> OwnerGuard<'_, T> {
    #[cold]
    #[inline(never)]
    fn leave_slow(&mut self) {
        if let Some(streak) = self.slow.take() {
            if streak.count >= REBIAS && biasing() {
                // Under the mutex, with nobody biased: this thread's next entry is fast.
                self.cell.bias.store(streak.thread, Ordering::Relaxed);
            }
            drop(streak);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_taking_turns_and_a_thread_that_takes_over_all_see_every_update() {
        let cell = Arc::new(OwnerCell::new(0u64));
        let per_thread = 20_000u64;
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let cell = cell.clone();
                std::thread::spawn(move || {
                    for _ in 0..per_thread {
                        *cell.lock() += 1;
                    }
                })
            })
            .collect();
        for _ in 0..per_thread {
            *cell.lock() += 1;
        }
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(*cell.lock(), 4 * per_thread);
    }

    #[test]
    fn a_thread_entering_often_enough_gets_the_bias() {
        if !biasing() {
            eprintln!("no membarrier here: cells are never biased");
            return;
        }
        let cell = Arc::new(OwnerCell::new(()));
        assert_eq!(cell.bias.load(Ordering::Relaxed), current_thread());
        let other = {
            let cell = cell.clone();
            std::thread::spawn(move || {
                for _ in 0..REBIAS {
                    drop(cell.lock());
                }
                current_thread()
            })
            .join()
            .unwrap()
        };
        assert_eq!(cell.bias.load(Ordering::Relaxed), other);
        drop(cell.lock()); // revokes
        assert_eq!(cell.bias.load(Ordering::Relaxed), 0);
    }
}

#[cfg(loom)]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// The biased thread (fast path) and another thread (revoking, under the mutex) each add
    /// to a non-atomic counter in the cell: loom's `UnsafeCell` reports any two accesses not
    /// ordered by the protocol, and the sum shows no update was lost.
    #[test]
    fn the_biased_thread_and_a_revoker_never_overlap() {
        loom::model(|| {
            let cell = Arc::new(OwnerCell::new(0u32));
            let other = {
                let cell = cell.clone();
                // Two entries: the second may take the bias (REBIAS is 2 under loom), so
                // the main thread's later entries revoke it in turn.
                thread::spawn(move || {
                    for _ in 0..2 {
                        *cell.lock() += 1;
                    }
                })
            };
            for _ in 0..2 {
                *cell.lock() += 1;
            }
            other.join().unwrap();
            assert_eq!(*cell.lock(), 4);
        });
    }
}
