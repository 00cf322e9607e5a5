//! The wait cell: how a blocked receiver (or a sender blocked on a full ring) sleeps, and how
//! the other side wakes it, across processes.
//!
//! A cell is two 32-bit words in shared memory: `seq`, the futex word — an epoch in its upper
//! 31 bits and an *armed* bit at the bottom — and `waiters`, how many are parked or about to
//! park (for inspection and tests; notifiers do not read it).
//!
//! ```text
//! waiter                                   notifier
//! s = seq.fetch_or(ARMED) | ARMED (SeqCst) make the condition true  (e.g. commit a slot)
//! fence(SeqCst)                            fence(SeqCst)
//! if condition: done                       s = seq
//! futex_wait(seq, s)                       if s is armed and CAS(seq, s -> s + 1):
//! re-check                                     futex_wake(seq, all)
//! ```
//!
//! **No lost wake-up.** The two fences order "arm ; read condition" against "write condition ;
//! read seq" (Dekker's pattern): at least one side sees the other's write. If the notifier
//! found the cell unarmed, the waiter's re-check sees the condition. Otherwise the notifier
//! moves `seq` to the next epoch (disarmed) and wakes every sleeper: a waiter that had not gone
//! to sleep yet finds `seq != s` and returns at once; one asleep is woken. If the CAS fails,
//! another notifier moved the epoch and woke the sleepers, or a waiter re-armed a later epoch
//! after this notifier's load, and that waiter's re-check sees the condition.
//!
//! **No system call when nobody waits, and one per sleep.** The notifier's fast path is a
//! fence and one load. Only the first notify after a waiter armed the cell makes the wake-up
//! call; later ones, until somebody sleeps again, do not — even while the woken waiters have
//! not run yet (counting waiters instead cost a call per notify in that window, which a
//! publisher feeding two subscribers that share a core paid on every message). The price is
//! that a wake-up wakes every sleeper on the cell; each re-checks and sleeps again if it lost
//! the race.
//!
//! A waiter killed while parked leaves the cell armed (one wasted wake-up call later) and the
//! informational `waiters` count too high; recovery takes it off the count (each participant
//! marks, in its own participant entry, which cell it is counted in).

use super::atomic::{bump, fence, spin_hint, AtomicU32, AtomicU64, Ordering};
use super::futex;
use crate::shm::Region;
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

/// The futex word's low bit: set by a waiter about to sleep, cleared (with the epoch moved on
/// in the other bits) by the first notify after it.
const ARMED: u32 = 1;

/// Longest single sleep: waiters wake at least this often to re-check their condition.
const MAX_PARK: Duration = Duration::from_millis(50);

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
    /// Wait as long as it takes.
    Never,
}

impl Deadline {
    pub(crate) fn after(timeout: Duration) -> Self {
        Instant::now()
            .checked_add(timeout)
            .map_or(Deadline::Never, Deadline::At)
    }

    /// Whether this means "try once, never wait".
    pub(crate) fn is_now(&self) -> bool {
        matches!(self, Deadline::Now)
    }

    /// Time left, `None` when the deadline has passed.
    fn remaining(&self) -> Option<Duration> {
        match self {
            Deadline::Now => None,
            Deadline::Never => Some(MAX_PARK),
            Deadline::At(at) => at
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero()),
        }
    }
}

/// A wait cell in shared memory.
#[derive(Clone, Copy)]
pub(crate) struct WaitCell<'a> {
    seq: &'a AtomicU32,
    waiters: &'a AtomicU32,
    /// Where the cell is in its region (recorded while parked, for recovery).
    offset: usize,
    /// The waiting participant's "parked on" word: set to `offset + 1` while this waiter is
    /// counted in `waiters`, so that if it dies parked, recovery can take it off the count
    /// (else every later notify would pay a wake-up system call for a waiter that is gone).
    parked: Option<&'a AtomicU64>,
    /// The waiting participant's statistics, if it keeps any.
    tally: Option<Tally<'a>>,
}

/// Where a waiter counts its waits (in its own participant entry, written only by it): calls
/// whose first attempt failed (`blocked`: the queue was full, or empty), and of those the ones
/// that went to sleep on the futex (`parked`, once per call however often it slept).
#[derive(Clone, Copy)]
pub(crate) struct Tally<'a> {
    pub(crate) blocked: &'a AtomicU64,
    pub(crate) parked: &'a AtomicU64,
}

impl<'a> WaitCell<'a> {
    /// The wait cell at `offset` in `region` (its `seq` word, then its `waiters` word).
    #[inline]
    pub(crate) fn at(region: &'a Region, offset: usize) -> Self {
        WaitCell {
            seq: region.u32_at(offset),
            waiters: region.u32_at(offset + 4),
            offset,
            parked: None,
            tally: None,
        }
    }

    /// The same cell, with its waits counted in `tally`.
    #[inline]
    pub(crate) fn tallied(self, tally: Tally<'a>) -> Self {
        WaitCell {
            tally: Some(tally),
            ..self
        }
    }

    /// The same cell, waited on by the participant whose "parked on" word is `parked`.
    #[inline]
    pub(crate) fn parked_as(self, parked: &'a AtomicU64) -> Self {
        WaitCell {
            parked: Some(parked),
            ..self
        }
    }

    fn mark_parked(&self, parked: bool) {
        if let Some(word) = self.parked {
            word.store(
                if parked { self.offset as u64 + 1 } else { 0 },
                Ordering::Release,
            );
        }
    }

    /// Leaves the count: unmarked first, then uncounted (a death in between leaves the count
    /// one too high, never too low).
    fn unpark(&self) {
        self.mark_parked(false);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes the waiters, if any are asleep; costs a fence and a load otherwise. Call after
    /// making the condition true.
    #[inline]
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst);
        self.wake_if_armed();
    }

    /// [`notify`](Self::notify) for two cells after one condition change, with one fence.
    #[inline]
    pub(crate) fn notify_both(a: &Self, b: &Self) {
        fence(Ordering::SeqCst);
        a.wake_if_armed();
        b.wake_if_armed();
    }

    /// The notifier's half after its fence: wake the sleepers if a waiter armed the cell.
    #[inline]
    fn wake_if_armed(&self) {
        let seq = self.seq.load(Ordering::Relaxed);
        if seq & ARMED != 0 {
            // Disarm and move to the next epoch (an odd value plus one is the next even one);
            // whoever does it wakes every sleeper. A failed CAS means another notifier did.
            let next = seq.wrapping_add(1);
            if self
                .seq
                .compare_exchange(seq, next, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                futex::wake(self.seq, u32::MAX);
            }
        }
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
        if let Some(tally) = &self.tally {
            bump(tally.blocked, 1);
        }
        if let Deadline::Now = deadline {
            return Ok(None);
        }
        self.wait_slow(strategy, deadline, attempt, repair)
    }

    /// The waiting itself, kept out of line so the fast path stays small.
    #[cold]
    #[inline(never)]
    fn wait_slow<T, E>(
        &self,
        strategy: WaitStrategy,
        deadline: Deadline,
        mut attempt: impl FnMut() -> Result<Option<T>, E>,
        mut repair: impl FnMut(),
    ) -> Result<Option<T>, E> {
        let started = Instant::now();
        let mut next_repair = started + STALL_CHECK;
        let mut stalled = |now: Instant| {
            if now >= next_repair {
                repair();
                next_repair = now + STALL_CHECK;
            }
        };
        let spin_until = match strategy {
            WaitStrategy::BusyPoll => None,
            WaitStrategy::SpinThenPark(d) => started.checked_add(d), // too long: never park
            WaitStrategy::Park => Some(started),
        };
        // Spin phase: poll, looking at the clock only every 64 polls.
        let mut polls: u32 = 0;
        loop {
            polls = polls.wrapping_add(1);
            if polls % 64 == 0 {
                let now = Instant::now();
                if matches!(spin_until, Some(t) if now >= t) {
                    break;
                }
                if matches!(deadline, Deadline::At(at) if now >= at) {
                    return Ok(None);
                }
                stalled(now);
            } else if matches!(strategy, WaitStrategy::Park) {
                break;
            }
            if let Some(v) = attempt()? {
                return Ok(Some(v));
            }
            spin_hint();
        }
        // Park phase. A wait that parks is counted once, however often it sleeps.
        let mut parked_before = false;
        loop {
            let Some(left) = deadline.remaining() else {
                return attempt();
            };
            self.waiters.fetch_add(1, Ordering::SeqCst);
            // Counted, then marked: a death in between leaves the count one too high, which
            // costs wake-up calls, never a missed wake-up.
            self.mark_parked(true);
            // Arm the cell for this epoch: the next notify will pay for a wake-up call.
            let seen = self.seq.fetch_or(ARMED, Ordering::SeqCst) | ARMED;
            fence(Ordering::SeqCst);
            let outcome = attempt();
            if !matches!(outcome, Ok(None)) {
                self.unpark();
                return outcome;
            }
            if let Some(tally) = self.tally.filter(|_| !parked_before) {
                bump(tally.parked, 1);
            }
            parked_before = true;
            futex::wait(self.seq, seen, left.min(MAX_PARK));
            self.unpark();
            if let Some(v) = attempt()? {
                return Ok(Some(v));
            }
            #[cfg(not(loom))]
            stalled(Instant::now());
        }
    }
}
