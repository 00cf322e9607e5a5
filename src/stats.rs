//! Statistics in the file: what every participant did, readable by anyone (`shmq::inspect`).
//!
//! # Where the counts live, and why they cost (almost) nothing
//!
//! Each participant counts what it does — messages committed and acknowledged, sends that
//! found the ring full, receives that found it empty, waits that slept on a futex, messages lost to lag,
//! loans abandoned — in the second half of its **own** participant entry
//! ([`PARTICIPANT_STATS`]). Nobody else writes that line while the participant lives, so a count
//! is a relaxed load and a relaxed store on a line already in this core's cache
//! ([`bump`]): no locked read-modify-write, no line shared with another process. (A handle used
//! by several threads at the same instant may lose a count; counts are statistics, never part
//! of the protocol.)
//!
//! When a participant detaches, or recovery reaps it, its counts are moved (swapped to zero,
//! then added with `fetch_add`, which is rare and off the hot path) into the file-wide totals of
//! departed participants in the counters block. So the file's totals are always "departed +
//! every entry", and an inspector summing them sees each count once (or, for the instant of a
//! move, one participant's counts missing).

use crate::layout::{counter, COUNTERS_OFFSET, PARTICIPANT_STATS};
use crate::shm::Region;
use crate::sync::atomic::{bump, AtomicU64, Ordering};
use crate::sync::Tally;

/// A participant's own counters (in its entry, starting at `entry`).
#[derive(Clone, Copy)]
pub(crate) struct OwnStats<'a> {
    region: &'a Region,
    entry: usize,
}

impl<'a> OwnStats<'a> {
    /// The counters of the participant entry at offset `entry`.
    #[inline]
    pub(crate) fn at(region: &'a Region, entry: usize) -> Self {
        OwnStats { region, entry }
    }

    #[inline]
    fn offset(&self, which: usize) -> usize {
        self.entry + PARTICIPANT_STATS + 8 * which
    }

    #[inline]
    fn word(&self, which: usize) -> &'a AtomicU64 {
        self.region.u64_at(self.offset(which))
    }

    /// Adds `n` to counter `which` (one of the `counter::*` participant constants).
    #[inline]
    pub(crate) fn add(&self, which: usize, n: u64) {
        bump(self.word(which), n);
    }

    /// Where a wait by this participant counts itself: as `blocked` (`counter::FULL` or
    /// `counter::EMPTY`) when its first attempt fails, and as parked when it sleeps.
    #[inline]
    pub(crate) fn tally(&self, blocked: usize) -> Tally<'a> {
        Tally {
            counters: self
                .region
                .u64_words(self.offset(0), counter::PARTICIPANT_COUNTERS),
            blocked,
            parked: counter::PARKED,
        }
    }

    /// Moves these counts into the file's totals of departed participants. Only by the
    /// participant itself as it detaches, or by whoever reaps it (holding its lock).
    pub(crate) fn depart(&self) {
        for which in 0..counter::PARTICIPANT_COUNTERS {
            let n = self.word(which).swap(0, Ordering::Relaxed);
            if n != 0 {
                self.region
                    .u64_at(COUNTERS_OFFSET + 8 * (counter::DEPARTED + which))
                    .fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// Counts one recovery pass in the counters block.
pub(crate) fn count_sweep(region: &Region) {
    region
        .u64_at(COUNTERS_OFFSET + 8 * counter::SWEEPS)
        .fetch_add(1, Ordering::Relaxed);
}
