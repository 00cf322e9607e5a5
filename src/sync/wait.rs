//! The wait cell: how a blocked receiver (or a sender blocked on a full ring) sleeps, and how
//! the other side wakes it, across processes.
//!
//! A cell is one 32-bit futex word in shared memory (then 4 reserved bytes; see
//! [`WaitCellLayout`](crate::layout::WaitCellLayout)): an *epoch* in its upper 24 bits and, in
//! its lower 8, how many waiters are *registered* in that epoch — parked, or about to park.
//!
//! ```text
//! waiter                                     notifier
//! s = join: CAS w -> w + 1      (SeqCst)     make the condition true  (e.g. commit a slot)
//! heavy barrier                              light barrier
//! if condition: leave(s); done               w = word
//! futex_wait(word, s)                        while count(w) != 0:
//! w = word (Acquire)                             CAS w -> (epoch(w) + 1, count 0):
//! epoch(w) != epoch(s): woken                      done: futex_wake(word, all); stop
//! w != s, time left: futex_wait(word, w) again     failed, found a later epoch: stop
//! otherwise: leave(s)                              failed, same epoch: w = what it found
//! re-check (from the top)
//!
//! leave(s): while the word is still in epoch(s) with a count in 1..255: CAS w -> w - 1
//! ```
//!
//! A word changed within the epoch is another waiter joining or leaving: the sleeper is still
//! counted, so it sleeps on with the new value instead of leaving and joining again (which
//! would change the word under the others in turn).
//!
//! Only a notifier moves the epoch, and moving it takes every registered waiter off the count
//! at once (the count restarts at 0); waiters change only the count of the epoch they joined.
//! So a leaving waiter that finds the epoch moved on was already taken off, and does nothing.
//!
//! The two barriers are the halves of one asymmetric fence ([`super::barrier`]): the
//! notifier's is a compiler fence where the process could register for
//! `membarrier(GLOBAL_EXPEDITED)`, and the waiter's is a `SeqCst` fence plus that system call,
//! which runs a full barrier on every thread of every registered process. Below they are called
//! the two fences, as they act as a fence on each side.
//!
//! **No lost wake-up.** The two fences order "join ; read condition" against "write condition
//! ; read the word" (Dekker's pattern): either the waiter's read sees the condition, or the
//! notifier's read sees the waiter's join (or a later value of the word). In the second case
//! the waiter is counted in what the notifier read, unless another notifier has moved the
//! epoch since (and woken it), or it has left — and a waiter leaves only to return (its
//! re-check saw the condition, or its deadline passed) or to re-check and join again, a join
//! the same argument covers. Seeing a count, the notifier moves the
//! epoch and wakes every sleeper: a waiter asleep is woken; one not asleep yet passes
//! `futex_wait` a word of the old epoch, which the kernel finds changed, and returns at once.
//! If the CAS fails on a later epoch, another notifier moved it after this one's read and woke
//! everyone registered then; waiters that joined after that joined after this notifier's read,
//! so they see its condition. If it fails on the same epoch, a waiter joined or left between;
//! the notifier tries again with what it found, until it wakes or finds nobody registered.
//! A count saturates at 255 (a file nobody corrupted needs 255 threads parked on one cell):
//! from there it stays until the next notify moves the epoch, and waiters leaving do not
//! lower it, so it can be too high (one wasted wake-up call), never too low.
//!
//! **No system call unless somebody is registered, and no fence.** The notifier's fast path is a
//! compiler fence and one load that finds the count at 0: nobody parked, and nobody about to park. A waiter that
//! leaves without being woken (its re-check saw the condition, its time ran out, its sleep was
//! interrupted) takes itself off the count, so the cell does not stay armed for a waiter that
//! is gone. The wake-up call is paid by the first notify after a waiter registered; later ones
//! pay nothing until somebody registers again — even while the woken waiters have not run yet
//! (counting waiters that decrement only when they run would cost a call per notify in that
//! window, which a publisher feeding two subscribers that share a core paid on every message).
//! The price is that a wake-up wakes every sleeper on the cell; each re-checks and registers
//! again if it lost the race. A waiter killed while registered stays counted until the next
//! notify, which pays one wake-up call that wakes nobody and clears the count: nothing is
//! needed from recovery.
//!
//! The epoch has 2^24 values: a waiter that reads the word, is preempted while 2^24 wake-ups
//! happen on the cell, and then finds the very same word could sleep through a wake-up; even
//! then its sleep ends after [`MAX_PARK`] and it re-checks.
//!
//! Model-checked: `loom_models::a_leaving_waiter_never_unregisters_another` below (two waiters
//! on one cell; it deadlocks if a leave clears the count, ignores the epoch, or if a notifier
//! gives up on a CAS that a join or leave raced) and the ring models of `ring::mpmc` and
//! `ring::broadcast`, whose blocked senders and receivers deadlock on any lost wake-up.

use super::atomic::{bump, spin_hint, AtomicU32, AtomicU64, Ordering};
use super::barrier;
use super::futex;
use crate::layout::{WAIT_EPOCH_ONE, WAIT_WAITERS_MASK};
use std::time::{Duration, Instant};

/// How a blocking call waits for its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Poll without ever sleeping: lowest latency, one core busy while waiting.
    BusyPoll,
    /// Poll for the given time, then park on the shared futex (the default, 20 µs).
    SpinThenPark(Duration),
    /// Park on the shared futex as soon as the condition is false.
    Park,
}

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy::SpinThenPark(Duration::from_micros(20))
    }
}

/// Longest single sleep: waiters wake at least this often to re-check their condition (and,
/// when they make no progress, to look for dead participants: see [`STALL_CHECK`]).
const MAX_PARK: Duration = Duration::from_millis(50);

/// The longest single sleep in effect: [`MAX_PARK`], or in test-hooks builds what a test set
/// with [`set_max_park`] (so that a lost wake-up hangs instead of costing 50 ms).
#[inline]
pub(crate) fn max_park() -> Duration {
    #[cfg(all(feature = "test-hooks", not(loom)))]
    let cap = Duration::from_millis(TEST_MAX_PARK_MS.load(std::sync::atomic::Ordering::Relaxed));
    #[cfg(not(all(feature = "test-hooks", not(loom))))]
    let cap = MAX_PARK;
    cap
}

/// The test setting of the longest sleep, in milliseconds (see [`set_max_park`]).
#[cfg(all(feature = "test-hooks", not(loom)))]
static TEST_MAX_PARK_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(MAX_PARK.as_millis() as u64);

/// Test-hooks builds only: sets the longest single sleep of every wait in this process (50 ms
/// normally). A test that makes it far longer than its own deadline turns a lost wake-up into
/// a hang it detects, where the normal cap would hide it as a 50 ms delay. It also delays the
/// stalled waiters' search for dead participants, so only tests where nobody dies set it.
#[cfg(all(feature = "test-hooks", not(loom)))]
pub fn set_max_park(cap: Duration) {
    let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
    TEST_MAX_PARK_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// How long a waiter waits without progress before it looks for dead participants, and how
/// often it looks again while the wait goes on.
pub const STALL_CHECK: Duration = Duration::from_millis(50);

/// When a blocking call gives up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Deadline {
    /// Try once, never wait.
    Now,
    /// Wait until this instant.
    At(Instant),
    /// Wait at most this long once the wait begins (after a first attempt that failed): a
    /// deadline that costs no clock read when the first attempt succeeds, for bounds on the
    /// fast path (a server's wait for room in a reply ring).
    Within(Duration),
    /// Wait as long as it takes.
    Never,
}

impl Deadline {
    /// `timeout` from now (one clock read).
    pub(crate) fn after(timeout: Duration) -> Self {
        Self::from(Instant::now(), timeout)
    }

    fn from(start: Instant, timeout: Duration) -> Self {
        start
            .checked_add(timeout)
            .map_or(Deadline::Never, Deadline::At)
    }

    /// The deadline of a wait that begins at `start`: a [`Within`](Deadline::Within) counts
    /// from then.
    fn begun(self, start: Instant) -> Self {
        match self {
            Deadline::Within(timeout) => Self::from(start, timeout),
            other => other,
        }
    }

    /// Whether this means "try once, never wait".
    pub(crate) fn is_now(&self) -> bool {
        matches!(self, Deadline::Now)
    }

    /// Time left, `None` when the deadline has passed.
    fn remaining(&self) -> Option<Duration> {
        match self {
            Deadline::Now => None,
            Deadline::Never => Some(max_park()),
            // Not begun (see `begun`): all of it is left.
            Deadline::Within(timeout) => Some(*timeout).filter(|d| !d.is_zero()),
            Deadline::At(at) => at
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero()),
        }
    }
}

/// A wait cell in shared memory.
#[derive(Clone, Copy)]
pub(crate) struct WaitCell<'a> {
    /// The futex word: epoch and registered waiters.
    word: &'a AtomicU32,
    /// The waiting participant's statistics, if it keeps any.
    tally: Option<Tally<'a>>,
}

/// Where a waiter counts its waits (in its own participant entry, written only by it): calls
/// whose first attempt failed (`blocked`: the queue was full, or empty), and of those the ones
/// that went to sleep on the futex (`parked`, once per call however often it slept).
///
/// The participant's counter words (`counters`, its own entry's) and which two of them:
/// indexed only when a wait first fails, never on the fast path.
#[derive(Clone, Copy)]
pub(crate) struct Tally<'a> {
    pub(crate) counters: &'a [AtomicU64],
    pub(crate) blocked: usize,
    pub(crate) parked: usize,
}

impl Tally<'_> {
    #[inline]
    fn count(&self, offset: usize) {
        bump(&self.counters[offset], 1);
    }
}

/// The epoch part of a futex word.
#[inline]
pub(crate) fn epoch(word: u32) -> u32 {
    word & !WAIT_WAITERS_MASK
}

impl<'a> WaitCell<'a> {
    /// The cell whose futex word is `word` (a ring's control block word, or one a reactor
    /// keeps): built from the atomic, so this layer needs nothing of the mapping's.
    #[inline]
    pub(crate) fn of_word(word: &'a AtomicU32) -> Self {
        WaitCell { word, tally: None }
    }

    /// The cell's futex word.
    #[inline]
    pub(crate) fn word(&self) -> &'a AtomicU32 {
        self.word
    }

    /// The same cell, with its waits counted in `tally`.
    #[inline]
    pub(crate) fn tallied(self, tally: Tally<'a>) -> Self {
        WaitCell {
            tally: Some(tally),
            ..self
        }
    }

    /// Wakes the waiters, if any are registered; costs one load otherwise (and a fence in a
    /// process without the waiters' barrier). Call after making the condition true.
    #[inline]
    pub(crate) fn notify(&self) {
        barrier::light();
        self.wake_registered();
    }

    /// [`notify`](Self::notify) for two cells after one condition change, with one barrier.
    #[inline]
    pub(crate) fn notify_both(a: &Self, b: &Self) {
        barrier::light();
        a.wake_registered();
        b.wake_registered();
    }

    /// The notifier's half after its barrier: if waiters are registered, move the epoch on
    /// (which takes them all off the count) and wake every sleeper.
    #[inline]
    fn wake_registered(&self) {
        let mut seen = self.word.load(Ordering::Relaxed);
        while seen & WAIT_WAITERS_MASK != 0 {
            let next = epoch(seen).wrapping_add(WAIT_EPOCH_ONE);
            match self
                .word
                .compare_exchange(seen, next, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => {
                    futex::wake(self.word, u32::MAX);
                    return;
                }
                // Another notifier moved the epoch and woke everyone registered in it.
                Err(now) if epoch(now) != epoch(seen) => return,
                // A waiter joined or left meanwhile: try again with what is there now.
                Err(now) => seen = now,
            }
        }
    }

    /// Registers a waiter in the current epoch (the count saturates); returns the word as it
    /// left it, which is what the waiter then sleeps on.
    pub(crate) fn join(&self) -> u32 {
        let mut seen = self.word.load(Ordering::Relaxed);
        loop {
            let joined = if seen & WAIT_WAITERS_MASK == WAIT_WAITERS_MASK {
                seen // saturated: written back unchanged, still an RMW for the fences' sake
            } else {
                seen + 1
            };
            match self
                .word
                .compare_exchange(seen, joined, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return joined,
                Err(now) => seen = now,
            }
        }
    }

    /// Takes a waiter that joined with [`join`](Self::join) (which returned `joined`) off the
    /// count, unless a notifier already did by moving the epoch on, or the count saturated.
    /// The Acquire load pairs with the notifier's CAS: a waiter that finds the epoch moved
    /// sees the condition the notifier made true.
    pub(crate) fn leave(&self, joined: u32) {
        let mut seen = self.word.load(Ordering::Acquire);
        loop {
            let count = seen & WAIT_WAITERS_MASK;
            if epoch(seen) != epoch(joined) || count == 0 || count == WAIT_WAITERS_MASK {
                return;
            }
            match self
                .word
                .compare_exchange(seen, seen - 1, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(now) => seen = now,
            }
        }
    }

    /// Sleeps, registered in the epoch of `joined` (what [`join`](Self::join) returned),
    /// until a notifier moves the epoch on or `timeout` passes; returns off the count.
    ///
    /// A change of the word within the epoch is another waiter joining or leaving: this one
    /// is still counted, so it sleeps on with the new value rather than leaving and joining
    /// again (which would change the word under the others, and so on).
    fn sleep(&self, joined: u32, timeout: Duration) {
        let until = Instant::now().checked_add(timeout);
        let mut expected = joined;
        let mut left = timeout;
        loop {
            futex::wait(self.word, expected, left);
            let now = self.word.load(Ordering::Acquire);
            if epoch(now) != epoch(joined) {
                return; // woken: the notifier took this waiter off the count
            }
            // Timed out, interrupted, or woken for nothing (under loom, by another cell).
            // Loom's futex has no timeout and a model must not depend on the wall clock (a slow
            // execution would take another branch and break loom's replay), so there time
            // never runs out.
            let time_left = if cfg!(loom) {
                Some(left)
            } else {
                until.and_then(|u| u.checked_duration_since(Instant::now()))
            };
            match time_left {
                Some(t) if now != expected && !t.is_zero() => {
                    (expected, left) = (now, t);
                }
                _ => {
                    self.leave(joined);
                    return;
                }
            }
        }
    }

    /// How many waiters are registered (for tests).
    #[cfg(test)]
    pub(crate) fn registered(&self) -> u32 {
        self.word.load(Ordering::SeqCst) & WAIT_WAITERS_MASK
    }

    /// Calls `attempt` until it returns `Ok(Some(_))` or an error, waiting between attempts
    /// according to `strategy`, until `deadline`. `Ok(None)` means the deadline passed.
    #[cfg_attr(not(loom), allow(dead_code))] // the loom models wait without repairing
    #[inline]
    pub(crate) fn wait_for<T, E>(
        &self,
        strategy: WaitStrategy,
        deadline: Deadline,
        attempt: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        self.wait_or_repair(strategy, deadline, attempt, || {})
    }

    /// Like [`wait_for`](Self::wait_for), and calls `repair` every [`STALL_CHECK`] that the
    /// wait goes on: a waiter that makes no progress looks for dead participants holding
    /// things up (see `peers::sweep`), so the dead block the living for at most about that long.
    #[inline]
    pub(crate) fn wait_or_repair<T, E>(
        &self,
        strategy: WaitStrategy,
        deadline: Deadline,
        mut attempt: impl FnMut() -> Result<Option<T>, E>,
        repair: impl FnMut(),
    ) -> Result<Option<T>, E> {
        // The fast path, inlined into the caller: the condition already holds.
        if let Some(v) = attempt()? {
            return Ok(Some(v));
        }
        self.wait_after_miss(strategy, deadline, attempt, repair)
    }

    /// The rest of [`wait_or_repair`](Self::wait_or_repair) after a first attempt that found
    /// the condition false (for a caller that made that attempt itself, before building the
    /// cell): counts the wait as blocked, then waits unless the deadline is now.
    #[inline]
    pub(crate) fn wait_after_miss<T, E>(
        &self,
        strategy: WaitStrategy,
        deadline: Deadline,
        attempt: impl FnMut() -> Result<Option<T>, E>,
        repair: impl FnMut(),
    ) -> Result<Option<T>, E> {
        if let Some(tally) = &self.tally {
            tally.count(tally.blocked);
        }
        if let Deadline::Now = deadline {
            return Ok(None);
        }
        self.wait_slow(strategy, deadline, attempt, repair)
    }

    /// The waiting itself, kept out of line so the fast path stays small: a spin phase (unless
    /// the strategy parks at once), then a park phase (unless it busy-polls).
    #[cold]
    #[inline(never)]
    fn wait_slow<T, E>(
        &self,
        strategy: WaitStrategy,
        deadline: Deadline,
        mut attempt: impl FnMut() -> Result<Option<T>, E>,
        repair: impl FnMut(),
    ) -> Result<Option<T>, E> {
        let started = Instant::now();
        let deadline = deadline.begun(started);
        let mut stall = StallCheck {
            repair,
            next: started + STALL_CHECK,
        };
        let spin_until = match strategy {
            WaitStrategy::BusyPoll => None,
            WaitStrategy::SpinThenPark(d) => started.checked_add(d), // too long: never park
            WaitStrategy::Park => Some(started),
        };
        let park_at_once = matches!(strategy, WaitStrategy::Park);
        match Self::spin(spin_until, park_at_once, deadline, &mut attempt, &mut stall)? {
            Some(done) => Ok(done),
            None => self.park(deadline, attempt, stall),
        }
    }

    /// Spin phase: poll, looking at the clock only every 64 polls. `Some` is the wait's
    /// outcome (a value, or `None` at the deadline); `None` means go on to park, at
    /// `spin_until` or at once if `park_at_once`.
    fn spin<T, E>(
        spin_until: Option<Instant>,
        park_at_once: bool,
        deadline: Deadline,
        attempt: &mut impl FnMut() -> Result<Option<T>, E>,
        stall: &mut StallCheck<impl FnMut()>,
    ) -> Result<Option<Option<T>>, E> {
        let mut polls: u32 = 0;
        loop {
            polls = polls.wrapping_add(1);
            if polls % 64 == 0 {
                let now = Instant::now();
                if matches!(spin_until, Some(t) if now >= t) {
                    return Ok(None);
                }
                if matches!(deadline, Deadline::At(at) if now >= at) {
                    return Ok(Some(None));
                }
                stall.check(now);
            } else if park_at_once {
                return Ok(None);
            }
            if let Some(v) = attempt()? {
                return Ok(Some(Some(v)));
            }
            spin_hint();
        }
    }

    /// Park phase: join the waiters, check once more, sleep. A wait that parks is counted
    /// once, however often it sleeps.
    fn park<T, E>(
        &self,
        deadline: Deadline,
        mut attempt: impl FnMut() -> Result<Option<T>, E>,
        #[cfg_attr(loom, allow(unused_mut, unused_variables))] mut stall: StallCheck<impl FnMut()>,
    ) -> Result<Option<T>, E> {
        let mut parked_before = false;
        loop {
            let Some(left) = deadline.remaining() else {
                return attempt();
            };
            let joined = self.join();
            let fenced = barrier::heavy();
            let outcome = attempt();
            if !matches!(outcome, Ok(None)) {
                self.leave(joined);
                return outcome;
            }
            if let Some(tally) = self.tally.filter(|_| !parked_before) {
                tally.count(tally.parked);
            }
            parked_before = true;
            let cap = if fenced {
                max_park()
            } else {
                barrier::UNFENCED_PARK
            };
            self.sleep(joined, left.min(cap));
            if let Some(v) = attempt()? {
                return Ok(Some(v));
            }
            #[cfg(not(loom))]
            stall.check(Instant::now());
        }
    }
}

/// The stall check of a long wait: `repair` runs at most every [`STALL_CHECK`].
struct StallCheck<F: FnMut()> {
    repair: F,
    next: Instant,
}

impl<F: FnMut()> StallCheck<F> {
    fn check(&mut self, now: Instant) {
        if now >= self.next {
            (self.repair)();
            self.next = now + STALL_CHECK;
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::futex::wake_calls;
    use std::cell::Cell;

    fn cell_word() -> AtomicU32 {
        AtomicU32::new(0)
    }

    /// Waits on `cell` with the `Park` strategy; `attempt` is called with the number of the
    /// call (0 for the first, the fast path).
    fn park<T>(
        cell: &WaitCell<'_>,
        deadline: Deadline,
        mut attempt: impl FnMut(u32) -> Option<T>,
    ) -> Option<T> {
        let calls = Cell::new(0);
        cell.wait_for(WaitStrategy::Park, deadline, || {
            let n = calls.get();
            calls.set(n + 1);
            Ok::<_, ()>(attempt(n))
        })
        .unwrap()
    }

    /// Nobody is registered on `cell`, and a notify makes no wake-up call.
    fn assert_nobody_registered(cell: &WaitCell<'_>) {
        assert_eq!(cell.registered(), 0);
        let calls = wake_calls();
        cell.notify();
        assert_eq!(wake_calls() - calls, 0, "a wake-up call with nobody parked");
    }

    #[test]
    fn a_waiter_whose_recheck_succeeds_leaves_nothing_registered() {
        let word = cell_word();
        let cell = WaitCell::of_word(&word);
        // The fast path fails, the re-check after joining succeeds.
        assert_eq!(
            park(&cell, Deadline::Never, |n| (n == 1).then_some(7)),
            Some(7)
        );
        assert_nobody_registered(&cell);
    }

    #[test]
    fn a_waiter_that_times_out_leaves_nothing_registered() {
        let word = cell_word();
        let cell = WaitCell::of_word(&word);
        let deadline = Deadline::after(Duration::from_millis(20));
        assert_eq!(park(&cell, deadline, |_| None::<()>), None);
        assert_nobody_registered(&cell);
    }

    #[test]
    fn a_deadline_within_counts_from_the_first_miss_and_gives_up_after_it() {
        let word = cell_word();
        let cell = WaitCell::of_word(&word);
        // Met at once: no wait at all.
        let within = Deadline::Within(Duration::from_millis(20));
        assert_eq!(park(&cell, within, |n| (n == 0).then_some(3)), Some(3));
        // Never met: the wait ends, having waited at least the bound.
        let started = Instant::now();
        assert_eq!(park(&cell, within, |_| None::<()>), None);
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert_nobody_registered(&cell);
    }

    #[test]
    fn one_wake_up_call_per_sleep_however_many_notifies() {
        let word = cell_word();
        let cell = WaitCell::of_word(&word);
        let ready = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                park(&cell, Deadline::Never, |_| {
                    ready
                        .load(std::sync::atomic::Ordering::SeqCst)
                        .then_some(())
                })
            });
            while cell.registered() == 0 {
                std::thread::yield_now();
            }
            let calls = wake_calls();
            ready.store(true, std::sync::atomic::Ordering::SeqCst);
            cell.notify();
            // One call, unless the waiter's sleep timed out (50 ms) just before the notify
            // and it left, to find the condition on its re-check.
            let first = wake_calls() - calls;
            assert!(first <= 1);
            for _ in 0..2 {
                cell.notify();
            }
            assert_eq!(waiter.join().unwrap(), Some(()));
            cell.notify();
            assert_eq!(wake_calls() - calls, first, "wake-up calls after the first");
        });
        assert_eq!(cell.registered(), 0);
    }

    #[test]
    fn a_saturated_count_stays_until_a_notify_clears_it() {
        let word = cell_word();
        let cell = WaitCell::of_word(&word);
        let saturated = WAIT_EPOCH_ONE | WAIT_WAITERS_MASK;
        word.store(saturated, Ordering::SeqCst);
        assert_eq!(
            park(&cell, Deadline::Never, |n| (n == 1).then_some(())),
            Some(())
        );
        assert_eq!(
            word.load(Ordering::SeqCst),
            saturated,
            "a waiter leaving lowered a saturated count"
        );
        let calls = wake_calls();
        cell.notify();
        assert_eq!(wake_calls() - calls, 1);
        assert_eq!(word.load(Ordering::SeqCst), 2 * WAIT_EPOCH_ONE);
        cell.notify();
        assert_eq!(wake_calls() - calls, 1);
    }

    #[test]
    fn any_word_in_the_file_is_survived() {
        for value in [u32::MAX, u32::MAX - 1, WAIT_WAITERS_MASK, 1, 0x8000_0001] {
            let word = AtomicU32::new(value);
            let cell = WaitCell::of_word(&word);
            let deadline = Deadline::after(Duration::from_millis(2));
            assert_eq!(park(&cell, deadline, |_| None::<()>), None);
            cell.notify();
            assert_eq!(cell.registered(), 0, "after a notify, from {value:#x}");
        }
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;
    use loom::thread;

    /// Parks on the cell whose futex word is `word` until `flag` is set.
    fn wait_until_set(word: &AtomicU32, flag: &AtomicBool) {
        WaitCell::of_word(word)
            .wait_for(WaitStrategy::Park, Deadline::Never, || {
                Ok::<_, ()>(flag.load(Ordering::Relaxed).then_some(()))
            })
            .unwrap()
            .unwrap();
    }

    /// Two waiters on one cell, each for its own condition, and a notifier that makes them
    /// true one after the other (plain relaxed flags: only the protocol's fences order them).
    /// A waiter that leaves — its re-check found its flag, or it was woken for the other's and
    /// joins again — must never take the other off the count while that one is about to sleep
    /// or asleep (a loom deadlock), and when all is done nobody is left registered, so the
    /// next notify would make no system call.
    ///
    /// Explored with four preemptions (CI's bound is 2): a waiter whose leave ignored the epoch
    /// — taking a newer waiter off the count — needs four to show as a deadlock (a notifier
    /// moving the epoch and the other waiter joining and sleeping, all between one waiter's
    /// join and its leave), and the model takes a few seconds with them.
    #[test]
    fn a_leaving_waiter_never_unregisters_another() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(4);
        model.check(|| {
            let word = Arc::new(AtomicU32::new(0));
            let flags = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
            let waiters: Vec<_> = (0..2)
                .map(|i| {
                    let (word, flags) = (word.clone(), flags.clone());
                    thread::spawn(move || wait_until_set(&word, &flags[i]))
                })
                .collect();
            let cell = WaitCell::of_word(&word);
            for flag in flags.iter() {
                flag.store(true, Ordering::Relaxed);
                cell.notify();
            }
            for w in waiters {
                w.join().unwrap();
            }
            assert_eq!(
                word.load(Ordering::SeqCst) & WAIT_WAITERS_MASK,
                0,
                "a waiter is still registered after every wait ended"
            );
        });
    }
}
