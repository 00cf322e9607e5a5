//! The participant table: one entry per attached producer, consumer (and, later, publisher,
//! subscriber, client, server), with a liveness oracle that survives PID reuse.
//!
//! # Protocol
//!
//! Entry `i` is guarded by an OFD byte-range write lock (`F_OFD_SETLK`) on byte
//! `LOCK_BASE + i` of the queue file, taken on an open file description of the participant's
//! own. The kernel drops the lock when the process dies, however it dies, and the lock is tied
//! to the file description, not the PID, so PID reuse and PID namespaces cannot fool it.
//!
//! * Attach: first a sweep (below). Then for each entry, try the lock without blocking. Holding
//!   it, look at the entry: if it is free, claim it (bump its generation, record role and PID).
//!   If it is marked in use, its owner died (nobody else holds the lock): it is reaped first.
//!   Then keep the lock for life. The lock is taken *before* the entry is marked, so an entry
//!   being claimed is never mistaken for a dead one.
//! * Detach: mark the entry free, then close the descriptor (releasing the lock).
//! * Liveness: an entry marked in use whose lock can be taken belongs to a dead process.
//!   A live participant, however slow, always holds its lock, so it is never mistaken for dead.
//! * Sweep (on attach, by a waiter that has been stalled for a while, and on `repair()`): for
//!   every entry marked in use, try its lock on a probe description of our own; holding it,
//!   undo what the dead owner held in the rings (its owner id is recorded in every slot it
//!   claimed), then mark the entry free and unlock. The lock makes reaping exclusive across
//!   processes; within a process the probe description is used under a mutex.
//!
//! Each entry is 64 bytes: the state word (generation << 8 | role) and the PID (for humans).

use crate::error::Error;
use crate::layout::{Geometry, COUNTERS_OFFSET, PARTICIPANT_SIZE};
use crate::shm::file::Mapping;
use crate::shm::Region;
use crate::sync::atomic::Ordering;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// Byte offset of the lock guarding entry 0 (far beyond any file: locks need no data there).
const LOCK_BASE: i64 = 1 << 40;

/// What a participant does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Sends into a pipeline.
    Producer = 1,
    /// Receives from a pipeline.
    Consumer = 2,
    /// Publishes on a publish-subscribe channel.
    Publisher = 3,
    /// Subscribes to a publish-subscribe channel.
    Subscriber = 4,
    /// Sends requests to a service.
    Client = 5,
    /// Serves a service's requests.
    Server = 6,
}

const ROLE_FREE: u64 = 0;

/// An attached participant: owns entry `index` of the table for as long as it lives.
pub(crate) struct Participant {
    index: u32,
    /// Holds the OFD lock on this entry's byte for as long as the participant lives.
    lock_fd: File,
    region: Region,
    table: usize,
}

impl Participant {
    /// The owner id recorded in slots this participant claims (1-based; 0 means nobody).
    pub(crate) fn owner_id(&self) -> u16 {
        (self.index + 1) as u16
    }

    fn entry(&self) -> usize {
        self.table + self.index as usize * PARTICIPANT_SIZE
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        let state = self.region.u64_at(self.entry());
        let gen = state.load(Ordering::Relaxed) >> 8;
        state.store(gen << 8 | ROLE_FREE, Ordering::Release);
        // Unlock explicitly: closing `lock_fd` alone would not release the lock while a child
        // forked by this process (sharing the description until it execs) is alive.
        let _ = unlock(&self.lock_fd, self.index);
    }
}

/// Takes the write lock guarding entry `index` without blocking.
fn try_lock(fd: &File, index: u32) -> nix::Result<()> {
    set_lock(fd, index, libc::F_WRLCK)
}

fn unlock(fd: &File, index: u32) -> nix::Result<()> {
    set_lock(fd, index, libc::F_UNLCK)
}

fn set_lock(fd: &File, index: u32, kind: libc::c_int) -> nix::Result<()> {
    let fl = libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: LOCK_BASE + i64::from(index),
        l_len: 1,
        l_pid: 0,
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_OFD_SETLK(&fl)).map(drop)
}

/// A new open file description of the mapped file. OFD locks of one description never
/// conflict with each other, so every lock holder needs its own.
fn reopen(mapping: &Mapping) -> Result<File, Error> {
    let proc_path = format!("/proc/self/fd/{}", mapping.file().as_raw_fd());
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&proc_path)
        .map_err(|e| Error::io(mapping.path(), "reopen for locking", e))
}

/// What recovery did, as counted in the file (totals over the file's life, all processes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Participants found dead and reaped.
    pub reaped: u64,
    /// Slots a dead writer had claimed but not committed, passed over.
    pub skipped: u64,
    /// Messages or requests a dead reader held, made deliverable again.
    pub redelivered: u64,
    /// Other things a dead participant held, let go: subscriptions (so they stop holding
    /// publishers back), client entries and the replies they held.
    pub released: u64,
    /// Commits and acknowledgements refused because the claim had been taken away meanwhile (a
    /// participant judged dead while alive, or the file rewritten by another process): each one
    /// a message not sent, or delivered again. Counted by the participant that was refused,
    /// whether it was told (an `Err` from `commit`, `ack`, `reply`, `send`) or not (a message
    /// or request dropped).
    pub refused: u64,
}

impl std::ops::AddAssign for RecoveryStats {
    fn add_assign(&mut self, o: Self) {
        self.reaped += o.reaped;
        self.skipped += o.skipped;
        self.redelivered += o.redelivered;
        self.released += o.released;
        self.refused += o.refused;
    }
}

/// The file's recovery counters (in the counters block of the header area).
pub(crate) struct Counters<'a>(&'a Region);

impl<'a> Counters<'a> {
    pub(crate) fn of(region: &'a Region) -> Self {
        Counters(region)
    }

    fn word(&self, i: usize) -> &crate::sync::atomic::AtomicU64 {
        self.0.u64_at(COUNTERS_OFFSET + 8 * i)
    }

    fn add(&self, stats: &RecoveryStats) {
        for (i, n) in [
            stats.reaped,
            stats.skipped,
            stats.redelivered,
            stats.released,
            stats.refused,
        ]
        .into_iter()
        .enumerate()
        {
            if n != 0 {
                self.word(i).fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn read(&self) -> RecoveryStats {
        RecoveryStats {
            reaped: self.word(0).load(Ordering::Relaxed),
            skipped: self.word(1).load(Ordering::Relaxed),
            redelivered: self.word(2).load(Ordering::Relaxed),
            released: self.word(3).load(Ordering::Relaxed),
            refused: self.word(4).load(Ordering::Relaxed),
        }
    }
}

/// What every pattern's shared state provides so that participants attach, and dead ones are
/// reaped, the same way everywhere.
pub(crate) trait Recoverable {
    /// The queue file.
    fn mapping(&self) -> &Arc<Mapping>;
    /// Its validated geometry.
    fn geometry(&self) -> &Geometry;
    /// Undoes what dead participant `owner` held in this pattern's rings and tables.
    fn recover(&self, owner: u16) -> RecoveryStats;

    /// Attaches a participant, reaping dead ones first.
    fn attach(&self, role: Role) -> Result<Participant, Error> {
        attach(self.mapping(), self.geometry(), role, &|owner| {
            self.recover(owner)
        })
    }

    /// Reaps every dead participant.
    fn repair(&self) -> Result<RecoveryStats, Error> {
        sweep(self.mapping(), self.geometry(), &|owner| {
            self.recover(owner)
        })
    }

    /// For a stalled waiter: a sweep whose error is ignored (the wait goes on and the next
    /// sweep tries again).
    fn repair_quietly(&self) {
        let _ = self.repair();
    }

    /// Counts a commit or acknowledgement refused because its claim was taken away.
    fn count_refused(&self) {
        Counters::of(&self.mapping().region()).add(&RecoveryStats {
            refused: 1,
            ..RecoveryStats::default()
        });
    }

    /// What recovery has done on this file over its life.
    fn stats(&self) -> RecoveryStats {
        Counters::of(&self.mapping().region()).read()
    }
}

/// Undoes what a dead participant (by owner id) held; returns what it did.
pub(crate) type Recover<'a> = &'a dyn Fn(u16) -> RecoveryStats;

fn entry_state(region: &Region, table: usize, index: u32) -> &crate::sync::atomic::AtomicU64 {
    region.u64_at(table + index as usize * PARTICIPANT_SIZE)
}

/// Reaps every dead participant: for each entry marked in use whose lock can be taken (so no
/// live process holds it), runs `recover` for it, then frees it. Safe to run in several
/// processes and threads at once: the entry's lock makes each reaping exclusive.
pub(crate) fn sweep(
    mapping: &Arc<Mapping>,
    geometry: &Geometry,
    recover: Recover<'_>,
) -> Result<RecoveryStats, Error> {
    let probe = mapping.recovery_probe(|| reopen(mapping))?;
    let region = mapping.region();
    let table = geometry.participants_offset as usize;
    let mut total = RecoveryStats::default();
    for index in 0..geometry.max_participants {
        if entry_state(&region, table, index).load(Ordering::Acquire) & 0xff == ROLE_FREE {
            continue;
        }
        match try_lock(&probe, index) {
            Ok(()) => {}
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => continue,
            Err(e) => {
                return Err(Error::io(
                    mapping.path(),
                    "lock a participant entry of",
                    e.into(),
                ))
            }
        }
        total += reap(&region, table, index, recover);
        let _ = unlock(&probe, index);
    }
    Counters::of(&region).add(&total);
    Ok(total)
}

/// With the entry's lock held: if it is still marked in use, its owner is dead; recover what
/// it held and free it.
fn reap(region: &Region, table: usize, index: u32, recover: Recover<'_>) -> RecoveryStats {
    let state = entry_state(region, table, index);
    let old = state.load(Ordering::Acquire);
    if old & 0xff == ROLE_FREE {
        return RecoveryStats::default();
    }
    let mut stats = recover((index + 1) as u16);
    stats.reaped += 1;
    state.store(old & !0xff, Ordering::Release);
    stats
}

/// Attaches a new participant with `role`, first reaping dead participants (see [`sweep`]).
pub(crate) fn attach(
    mapping: &Arc<Mapping>,
    geometry: &Geometry,
    role: Role,
    recover: Recover<'_>,
) -> Result<Participant, Error> {
    sweep(mapping, geometry, recover)?;
    let table = geometry.participants_offset as usize;
    let max = geometry.max_participants;
    let path = mapping.path();
    let lock_fd = reopen(mapping)?;
    let region = mapping.region();
    for index in 0..max {
        match try_lock(&lock_fd, index) {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => continue,
            Err(e) => return Err(Error::io(path, "lock a participant entry of", e.into())),
        }
        // A dead owner may have appeared since the sweep: reap it before taking its place.
        let stats = reap(&region, table, index, recover);
        Counters::of(&region).add(&stats);
        let state = entry_state(&region, table, index);
        let gen = (state.load(Ordering::Acquire) >> 8).wrapping_add(1) & ((1 << 56) - 1);
        state.store(gen << 8 | role as u64, Ordering::Release);
        region
            .u32_at(table + index as usize * PARTICIPANT_SIZE + 8)
            .store(std::process::id(), Ordering::Relaxed);
        return Ok(Participant {
            index,
            lock_fd,
            region,
            table,
        });
    }
    Err(Error::TooManyParticipants {
        path: path.to_path_buf(),
        max,
    })
}
