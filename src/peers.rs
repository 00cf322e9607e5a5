//! The participant table: one entry per attached producer, consumer, publisher, subscriber,
//! client and server, with a liveness oracle that survives PID reuse and `fork()`.
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
//! * Detach (dropping a handle): first undo every claim the participant still holds in the
//!   rings (a message or request it leaked with `mem::forget` is delivered again, flagged; a
//!   loan it leaked is skipped; a reply it leaked is freed), then mark the entry free, then
//!   unlock explicitly, all while still holding the lock, so no sweep can reap the entry
//!   half-way. (Closing the descriptor alone would not unlock while a fork child shares it.)
//! * Liveness: an entry marked in use whose lock can be taken belongs to a dead process.
//!   A live participant, however slow, always holds its lock, so it is never mistaken for dead.
//! * Sweep (on attach, by a waiter that has been stalled for a while, and on `repair()`): for
//!   every entry marked in use, try its lock on a probe description of our own; holding it,
//!   undo what the dead owner held in the rings (its owner id is recorded in every slot it
//!   claimed), then mark the entry free and unlock. The lock makes reaping exclusive across
//!   processes; within a process the probe description is used under a mutex. `repair()` also
//!   locks every *free* entry and undoes the claims recorded under its id: they belong to
//!   nobody alive (a file left by an older version of shmq that did not undo leaked claims on
//!   detach), and holding the lock keeps the id from being handed out meanwhile.
//!
//! # Fork
//!
//! A fork child inherits copies of its parent's handles and shares the parent's descriptions,
//! and with them the parent's locks. Every handle records the process that attached it
//! ([`Process`]); in any other process, dropping a handle touches nothing shared (no undo, no
//! mark, no unlock: the entry, its lock and its claims stay the parent's), and using one fails
//! with `WrongProcess`. A child that wants to take part attaches handles of its own (the
//! recovery probe, too, is reopened in each process). And the child must not keep the parent's
//! locks alive either (a parent that died would look alive while the child lives): a fork
//! handler points the child's copies of the lock descriptors at `/dev/null` before `fork()`
//! returns there ([`LockFile`]). Not covered: a descriptor being opened in one thread while
//! another forks, more than `LOCK_FILES` lock descriptors in one process, and children made
//! without `fork()`'s handlers (a raw `clone`); such a child keeps the parent looking alive
//! until it exits or execs (the descriptors are close-on-exec).
//!
//! # The recovery lock
//!
//! A second lock, on byte `LOCK_BASE - 1`, orders recovery against the repair of counts derived
//! from the slots (the pipeline's count of messages awaiting redelivery, which a recovery pass
//! that dies half-way leaves too high). Every recovery pass (sweep, reap during attach, undo
//! on detach) holds it *shared*; after its reaps, a sweep tries to take it *exclusively*
//! without blocking, and only then recounts: with nobody else recovering, nothing is half-way
//! except what the dead left. A process that dies holding it, either way, loses it.
//!
//! Each entry is 128 bytes: the state word (generation << 8 | role), the PID (for humans),
//! and from byte 64 the participant's own statistics (see `stats`), which
//! detach and reaping move into the file-wide totals.

use crate::layout::PARTICIPANT_SIZE;
use crate::shm::Region;
use crate::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use crate::sync::process::Process;
// The file-backed half: OFD locks, the mapping, the handles' errors and statistics.
#[cfg(not(loom))]
use {
    crate::error::{Error, RecvError, SendError},
    crate::layout::{Geometry, COUNTERS_OFFSET},
    crate::shm::file::Mapping,
    crate::stats::OwnStats,
    crate::sync::process::LockFile,
    crate::sync::WaitCell,
    nix::fcntl::{fcntl, FcntlArg},
    nix::libc,
    std::fs::File,
    std::os::fd::AsRawFd,
    std::sync::Arc,
};

/// Within an entry: the PID of the process that attached it (for humans).
const PID: usize = 8;

/// Byte offset of the lock guarding entry 0 (far beyond any file: locks need no data there).
#[cfg(not(loom))]
pub(crate) const LOCK_BASE: i64 = 1 << 40;

/// Byte offset of the recovery lock (see the module docs).
#[cfg(not(loom))]
const RECOVERY_LOCK: i64 = LOCK_BASE - 1;

/// What a participant does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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

/// How many passes over the table an attach makes while it finds free entries locked (by a
/// sweep passing by, or another attach that will take them).
const CLAIM_PASSES: u32 = 4;

/// What recovery did, as counted in the file (totals over the file's life, all processes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Participants found dead and reaped.
    pub reaped: u64,
    /// Slots a dead writer had claimed but not committed, passed over (also a loan leaked
    /// with `mem::forget` and undone when its producer detached).
    pub skipped: u64,
    /// Messages or requests a dead reader held, made deliverable again (also ones leaked with
    /// `mem::forget` and undone when their consumer or server detached).
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

/// Undoes what a dead participant (by owner id) held; returns what it did.
pub(crate) type Recover<'a> = &'a dyn Fn(u16) -> RecoveryStats;

/// The kernel's part of the protocol: one exclusive lock per entry, tried without blocking,
/// released by the kernel when its holder dies. Behind a trait so that the loom model can run
/// the table's protocol below, unchanged, over a lock of its own.
pub(crate) trait EntryLocks {
    /// Takes the lock of entry `index` if nobody else holds it; `Ok(false)` if someone does.
    fn try_lock(&self, index: u32) -> std::io::Result<bool>;
    /// Releases the lock of entry `index`, held by the caller.
    fn unlock(&self, index: u32);
}

/// The participant table in the region: `len` entries of [`PARTICIPANT_SIZE`] at `offset`
/// (validated by the caller). The protocol of the module docs, over any [`EntryLocks`].
pub(crate) struct Table<'a> {
    region: &'a Region,
    offset: usize,
    len: u32,
}

impl<'a> Table<'a> {
    pub(crate) fn new(region: &'a Region, offset: usize, len: u32) -> Self {
        assert!(offset + len as usize * PARTICIPANT_SIZE <= region.len());
        Table {
            region,
            offset,
            len,
        }
    }

    fn entry(&self, index: u32) -> usize {
        self.offset + index as usize * PARTICIPANT_SIZE
    }

    /// Entry `index`'s state word: generation << 8 | role (0 when free).
    pub(crate) fn state(&self, index: u32) -> &AtomicU64 {
        self.region.u64_at(self.entry(index))
    }

    fn is_free(&self, index: u32) -> bool {
        self.state(index).load(Ordering::Acquire) & 0xff == ROLE_FREE
    }

    /// Claims an entry for a participant with `role` and `pid`, reaping a dead owner found on
    /// the way. Returns the entry's index and what reaping did, or `None` if every entry is
    /// held. The entry's lock is kept (the caller holds it for the participant's life).
    ///
    /// A sweep holds the lock of the entry it looks at for a moment (of a free one too, in
    /// `repair`), so an entry that is free but locked is tried again, up to [`CLAIM_PASSES`]
    /// passes: a table with room is never reported full because a sweep was passing by.
    pub(crate) fn claim(
        &self,
        locks: &impl EntryLocks,
        role: Role,
        pid: u32,
        recover: Recover<'_>,
    ) -> std::io::Result<Option<(u32, RecoveryStats)>> {
        for _ in 0..CLAIM_PASSES {
            let mut passing_by = false;
            for index in 0..self.len {
                if !locks.try_lock(index)? {
                    passing_by |= self.is_free(index);
                    continue;
                }
                // A dead owner may have appeared since the sweep: reap it before taking its
                // place.
                let stats = self.reap(index, recover);
                let state = self.state(index);
                let gen = (state.load(Ordering::Acquire) >> 8).wrapping_add(1) & ((1 << 56) - 1);
                state.store(gen << 8 | role as u64, Ordering::Release);
                self.region
                    .u32_at(self.entry(index) + PID)
                    .store(pid, Ordering::Relaxed);
                return Ok(Some((index, stats)));
            }
            if !passing_by {
                break;
            }
            #[cfg(loom)]
            loom::thread::yield_now();
            #[cfg(not(loom))]
            std::thread::yield_now();
        }
        Ok(None)
    }

    /// How many entries are in use by participants with `role`: attached now, or dead and not
    /// reaped yet. A snapshot; the role byte is only compared, so any value is harmless.
    pub(crate) fn count(&self, role: Role) -> usize {
        (0..self.len)
            .filter(|&index| self.state(index).load(Ordering::Acquire) & 0xff == role as u64)
            .count()
    }

    /// Marks entry `index` free. The caller holds its lock, and has undone its claims.
    pub(crate) fn release(&self, index: u32) {
        let state = self.state(index);
        let gen = state.load(Ordering::Relaxed) >> 8;
        state.store(gen << 8 | ROLE_FREE, Ordering::Release);
    }

    /// Reaps every dead participant: for each entry marked in use whose lock can be taken (so
    /// no live process holds it), runs `recover` for it, then frees it. With `free_too`, also
    /// undoes the claims recorded under the id of every free entry (locked meanwhile, so the id
    /// is not handed out). Safe to run in several processes and threads at once: the entry's
    /// lock makes each reaping exclusive.
    pub(crate) fn sweep(
        &self,
        locks: &impl EntryLocks,
        recover: Recover<'_>,
        free_too: bool,
    ) -> std::io::Result<RecoveryStats> {
        let mut total = RecoveryStats::default();
        for index in 0..self.len {
            if !free_too && self.is_free(index) {
                continue;
            }
            if !locks.try_lock(index)? {
                continue;
            }
            if self.is_free(index) {
                // Nobody alive has this id: we hold its lock, and an attacher locks first.
                total += recover((index + 1) as u16);
            } else {
                total += self.reap(index, recover);
            }
            locks.unlock(index);
        }
        Ok(total)
    }

    /// With the entry's lock held: if it is still marked in use, its owner is dead; recover what
    /// it held and free it.
    fn reap(&self, index: u32, recover: Recover<'_>) -> RecoveryStats {
        let state = self.state(index);
        let old = state.load(Ordering::Acquire);
        if old & 0xff == ROLE_FREE {
            return RecoveryStats::default();
        }
        let mut stats = recover((index + 1) as u16);
        stats.reaped += 1;
        #[cfg(not(loom))]
        OwnStats::at(self.region, self.entry(index)).depart();
        state.store(old & !0xff, Ordering::Release);
        stats
    }
}

// ---------------------------------------------------------------------------------------------
// The table of a queue file, with the kernel's OFD locks
// ---------------------------------------------------------------------------------------------

/// An attached participant: owns entry `index` of the table for as long as it lives, in the
/// process that attached it.
#[cfg(not(loom))]
pub(crate) struct Participant {
    index: u32,
    /// Holds the OFD lock on this entry's byte for as long as the participant lives.
    lock_fd: LockFile,
    region: Region,
    table: usize,
    /// Offset of its entry (`table + index × PARTICIPANT_SIZE`), computed once: the hot paths
    /// count into it.
    entry: usize,
    max: u32,
    /// The process that attached it: the only one whose drop detaches it.
    process: Process,
}

#[cfg(not(loom))]
impl Participant {
    /// The owner id recorded in slots this participant claims (1-based; 0 means nobody).
    pub(crate) fn owner_id(&self) -> u16 {
        (self.index + 1) as u16
    }

    fn table(&self) -> Table<'_> {
        Table::new(&self.region, self.table, self.max)
    }

    /// How many participants with `role` the table holds now (see [`Table::count`]).
    pub(crate) fn count_attached(&self, role: Role) -> usize {
        self.table().count(role)
    }

    /// `cell`, waited on by this participant: its waits are counted in its statistics, as
    /// `blocked` (`counter::FULL` or `counter::EMPTY`).
    #[inline]
    pub(crate) fn waiting_on<'a>(&'a self, cell: WaitCell<'a>, blocked: usize) -> WaitCell<'a> {
        cell.tallied(self.stats().tally(blocked))
    }

    /// The generation of this participant's entry (bumped each time the entry is claimed), so
    /// that (generation, owner id) names this participant and no later one.
    pub(crate) fn generation(&self) -> u64 {
        self.table().state(self.index).load(Ordering::Relaxed) >> 8
    }

    /// This participant's own statistics counters (see `stats`).
    #[inline]
    pub(crate) fn stats(&self) -> OwnStats<'_> {
        OwnStats::at(&self.region, self.entry)
    }

    /// The process that attached this participant.
    #[inline]
    pub(crate) fn process(&self) -> Process {
        self.process
    }

    /// Whether the caller is in the process that attached this participant (not a fork child).
    #[inline]
    pub(crate) fn in_own_process(&self) -> bool {
        self.process.is_current()
    }

    /// `Ok` in the process that attached this participant, [`SendError::WrongProcess`] elsewhere.
    #[inline]
    pub(crate) fn check_send(&self) -> Result<(), SendError> {
        if self.in_own_process() {
            Ok(())
        } else {
            Err(SendError::WrongProcess {
                attached_by: self.process.pid(),
            })
        }
    }

    /// `Ok` in the process that attached this participant, [`RecvError::WrongProcess`] elsewhere.
    #[inline]
    pub(crate) fn check_recv(&self) -> Result<(), RecvError> {
        if self.in_own_process() {
            Ok(())
        } else {
            Err(RecvError::WrongProcess {
                attached_by: self.process.pid(),
            })
        }
    }
}

#[cfg(not(loom))]
impl Drop for Participant {
    /// In the process that attached it: marks the entry free and unlocks it (the handle has
    /// undone its claims first, see [`Recoverable::detach`]). In a fork child: nothing; the
    /// entry, its lock and its claims are the parent's, and closing the inherited descriptor
    /// leaves the parent's lock alone (the parent's descriptor still refers to it).
    fn drop(&mut self) {
        if !self.process.is_current_exactly() {
            return;
        }
        self.stats().depart();
        self.table().release(self.index);
        // Unlock explicitly: closing `lock_fd` alone would not release the lock while a child
        // forked by this process (sharing the description until it execs) is alive.
        FileLocks(&self.lock_fd).unlock(self.index);
    }
}

/// The entry locks of a queue file, taken on one open file description.
#[cfg(not(loom))]
struct FileLocks<'f>(&'f File);

#[cfg(not(loom))]
impl EntryLocks for FileLocks<'_> {
    fn try_lock(&self, index: u32) -> std::io::Result<bool> {
        match set_lock(self.0, LOCK_BASE + i64::from(index), libc::F_WRLCK, false) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn unlock(&self, index: u32) {
        let _ = set_lock(self.0, LOCK_BASE + i64::from(index), libc::F_UNLCK, false);
    }
}

/// Sets (or with `F_UNLCK` clears) an OFD lock of `kind` on byte `at`; `wait` blocks until it
/// can be had.
#[cfg(not(loom))]
fn set_lock(fd: &File, at: i64, kind: libc::c_int, wait: bool) -> nix::Result<()> {
    let fl = lock_at(at, kind);
    let arg = if wait {
        FcntlArg::F_OFD_SETLKW(&fl)
    } else {
        FcntlArg::F_OFD_SETLK(&fl)
    };
    fcntl(fd.as_raw_fd(), arg).map(drop)
}

/// A lock of `kind` on byte `at`.
#[cfg(not(loom))]
fn lock_at(at: i64, kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: at,
        l_len: 1,
        l_pid: 0,
    }
}

/// Whether some open file description (of any process) holds the lock guarding entry `index`:
/// the liveness test of a sweep, asked without taking anything (`F_OFD_GETLK`), so it works
/// on a descriptor opened read-only and changes nothing.
#[cfg(not(loom))]
pub(crate) fn is_locked(fd: &File, index: u32) -> nix::Result<bool> {
    let mut fl = lock_at(LOCK_BASE + i64::from(index), libc::F_WRLCK);
    fcntl(fd.as_raw_fd(), FcntlArg::F_OFD_GETLK(&mut fl))?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// The recovery lock held shared on a description, for one recovery pass; released on drop.
#[cfg(not(loom))]
struct RecoveryShare<'f>(&'f File);

#[cfg(not(loom))]
impl<'f> RecoveryShare<'f> {
    /// Waits for the recovery lock, shared (only a recount, which is short, holds it
    /// exclusively).
    fn take(fd: &'f File) -> nix::Result<Self> {
        loop {
            match set_lock(fd, RECOVERY_LOCK, libc::F_RDLCK, true) {
                Ok(()) => return Ok(RecoveryShare(fd)),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Trades the shared hold for an exclusive one if nobody else holds the lock now, and runs
    /// `recount` while holding it. Returns whether it ran.
    fn recount_alone(self, recount: impl FnOnce()) -> bool {
        let alone = set_lock(self.0, RECOVERY_LOCK, libc::F_WRLCK, false).is_ok();
        if alone {
            recount();
        }
        alone
        // Dropping `self` releases the lock, shared or exclusive.
    }
}

#[cfg(not(loom))]
impl Drop for RecoveryShare<'_> {
    fn drop(&mut self) {
        let _ = set_lock(self.0, RECOVERY_LOCK, libc::F_UNLCK, false);
    }
}

/// A new open file description of the mapped file. OFD locks of one description never
/// conflict with each other, so every lock holder needs its own.
#[cfg(not(loom))]
fn reopen(mapping: &Mapping, process: Process) -> Result<LockFile, Error> {
    let proc_path = format!("/proc/self/fd/{}", mapping.file().as_raw_fd());
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&proc_path)
        .map(|file| LockFile::new(file, process))
        .map_err(|e| Error::io(mapping.path(), "reopen for locking", e))
}

/// The file's recovery counters (in the counters block of the header area).
#[cfg(not(loom))]
pub(crate) struct Counters<'a>(&'a Region);

#[cfg(not(loom))]
impl<'a> Counters<'a> {
    pub(crate) fn of(region: &'a Region) -> Self {
        Counters(region)
    }

    fn word(&self, i: usize) -> &crate::sync::atomic::AtomicU64 {
        self.0.u64_at(COUNTERS_OFFSET + 8 * i)
    }

    pub(crate) fn add(&self, stats: &RecoveryStats) {
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

/// What every pattern's shared state provides so that participants attach, detach, and dead
/// ones are reaped, the same way everywhere.
#[cfg(not(loom))]
pub(crate) trait Recoverable {
    /// The queue file.
    fn mapping(&self) -> &Arc<Mapping>;
    /// Its validated geometry.
    fn geometry(&self) -> &Geometry;
    /// Undoes what participant `owner` held in this pattern's rings and tables (it is dead,
    /// or detaching, or its id names a free entry).
    fn recover(&self, owner: u16) -> RecoveryStats;
    /// Brings counts derived from the slots back in line with them. Runs with the recovery
    /// lock held exclusively: no recovery pass is half-way, except ones whose process died.
    fn recount(&self) {}

    /// Attaches a participant, reaping dead ones first.
    fn attach(&self, role: Role) -> Result<Participant, Error> {
        let mapping = self.mapping();
        let path = mapping.path();
        let process =
            Process::current().map_err(|e| Error::io(path, "register the fork handler for", e))?;
        self.sweep(process, false)?;
        let lock_fd = reopen(mapping, process)?;
        let region = mapping.region();
        let geometry = self.geometry();
        let table_offset = geometry.participants_offset as usize;
        let max = geometry.max_participants;
        let claimed = {
            let _share = RecoveryShare::take(&lock_fd)
                .map_err(|e| Error::io(path, "take the recovery lock of", e.into()))?;
            Table::new(&region, table_offset, max)
                .claim(&FileLocks(&lock_fd), role, process.pid(), &|owner| {
                    self.recover(owner)
                })
                .map_err(|e| Error::io(path, "lock a participant entry of", e))?
        };
        let Some((index, stats)) = claimed else {
            return Err(Error::TooManyParticipants {
                path: path.to_path_buf(),
                max,
            });
        };
        Counters::of(&region).add(&stats);
        Ok(Participant {
            index,
            lock_fd,
            region,
            table: table_offset,
            entry: table_offset + index as usize * PARTICIPANT_SIZE,
            max,
            process,
        })
    }

    /// Undoes every claim `me` still holds: what its handle leaked (`mem::forget`, a leaked
    /// `Rc` cycle) before it was dropped. Called by every handle's `Drop`, before its
    /// participant marks the entry free and unlocks it. Does nothing in a fork child.
    fn detach(&self, me: &Participant) {
        if !me.process.is_current_exactly() {
            return;
        }
        // Without the shared recovery lock (which cannot fail but for a lack of kernel lock
        // memory) a concurrent recount could miss this pass: go on, leaving the leak undone
        // would be worse.
        let _share = RecoveryShare::take(&me.lock_fd);
        let stats = self.recover(me.owner_id());
        Counters::of(&me.region).add(&stats);
    }

    /// Reaps every dead participant, undoes the claims recorded under the ids of free entries,
    /// and recounts.
    fn repair(&self) -> Result<RecoveryStats, Error> {
        let process = Process::current()
            .map_err(|e| Error::io(self.mapping().path(), "register the fork handler for", e))?;
        self.sweep(process, true)
    }

    /// For a stalled waiter: a sweep of the dead whose error is ignored (the wait goes on and
    /// the next sweep tries again).
    fn repair_quietly(&self) {
        if let Ok(process) = Process::current() {
            let _ = self.sweep(process, false);
        }
    }

    /// Reaps every dead participant (and with `free_too`, undoes the claims of free entries'
    /// ids), holding the recovery lock shared; then recounts if nobody else is recovering.
    fn sweep(&self, process: Process, free_too: bool) -> Result<RecoveryStats, Error> {
        let mapping = self.mapping();
        let path = mapping.path();
        let probe = mapping.recovery_probe(process, || reopen(mapping, process))?;
        let region = mapping.region();
        let geometry = self.geometry();
        let share = RecoveryShare::take(&probe)
            .map_err(|e| Error::io(path, "take the recovery lock of", e.into()))?;
        crate::stats::count_sweep(&region);
        let total = Table::new(
            &region,
            geometry.participants_offset as usize,
            geometry.max_participants,
        )
        .sweep(&FileLocks(&probe), &|owner| self.recover(owner), free_too)
        .map_err(|e| Error::io(path, "lock a participant entry of", e))?;
        share.recount_alone(|| self.recount());
        Counters::of(&region).add(&total);
        Ok(total)
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

#[cfg(all(test, loom))]
mod loom_models {
    //! The table's protocol, model-checked over a model of the kernel's locks: one holder per
    //! entry (an open file description: a number), tried without blocking, and all of a
    //! process's locks released when it dies. Claims in the rings are modelled as words
    //! holding the id of the participant that claimed them; recovery undoes a claim with a CAS
    //! from that id, as the rings do.
    use super::*;
    use loom::sync::atomic::AtomicU32;
    use loom::thread;
    use std::sync::Arc;

    struct ModelLocks {
        holders: Vec<AtomicU32>,
    }

    /// One open file description's view of the locks.
    struct Description<'a> {
        locks: &'a ModelLocks,
        id: u32,
    }

    impl EntryLocks for Description<'_> {
        fn try_lock(&self, index: u32) -> std::io::Result<bool> {
            let holder = &self.locks.holders[index as usize];
            Ok(holder
                .compare_exchange(0, self.id, Ordering::AcqRel, Ordering::Acquire)
                .map_or_else(|held| held == self.id, |_| true))
        }

        fn unlock(&self, index: u32) {
            let _ = self.locks.holders[index as usize].compare_exchange(
                self.id,
                0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// Two entries, two claim words, the record of who undid what.
    struct World {
        region: Region,
        locks: ModelLocks,
        /// Claim words: the owner id that claimed each, 0 when undone.
        claims: Vec<AtomicU64>,
    }

    const ENTRIES: u32 = 2;

    impl World {
        fn new() -> Arc<Self> {
            Arc::new(World {
                region: Region::heap(ENTRIES as usize * PARTICIPANT_SIZE),
                locks: ModelLocks {
                    holders: (0..ENTRIES).map(|_| AtomicU32::new(0)).collect(),
                },
                claims: (0..2).map(|_| AtomicU64::new(0)).collect(),
            })
        }

        fn table(&self) -> Table<'_> {
            Table::new(&self.region, 0, ENTRIES)
        }

        fn description(&self, id: u32) -> Description<'_> {
            Description {
                locks: &self.locks,
                id,
            }
        }

        /// Recovery of `owner`: undoes its claims; `undone` counts the claims it undid.
        fn recover(&self, owner: u16, undone: &AtomicU32) -> RecoveryStats {
            for claim in &self.claims {
                if claim
                    .compare_exchange(u64::from(owner), 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    undone.fetch_add(1, Ordering::Relaxed);
                }
            }
            RecoveryStats::default()
        }
    }

    /// A thread running `repair`'s sweep (dead entries and free entries' ids) on a probe
    /// description of its own; `undone` counts the claims it undoes.
    fn spawn_repair(
        world: &Arc<World>,
        undone: &Arc<AtomicU32>,
    ) -> thread::JoinHandle<RecoveryStats> {
        let (world, undone) = (world.clone(), undone.clone());
        thread::spawn(move || {
            let probe = world.description(20);
            world
                .table()
                .sweep(&probe, &|o| world.recover(o, &undone), true)
                .unwrap()
        })
    }

    /// Attach racing a sweep (with `repair`'s reclaim of free entries' ids) that reaps a dead
    /// entry: the dead owner's claim is undone exactly once; the attacher always gets an entry
    /// (there is room), keeps it marked as its own, and the sweep never undoes its claim or
    /// reaps it. Five preemptions: the attacher must lose both entries to the passing sweep in
    /// one pass to be wrongly told the table is full (as it was before `CLAIM_PASSES`), and
    /// that takes three; the model is small enough to check deeper than the default.
    #[test]
    fn attach_racing_a_sweep_that_reaps_a_dead_entry() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(5);
        builder.check(|| {
            let world = World::new();
            // Entry 0 belongs to a process that died holding claim 0; its lock is gone.
            world
                .table()
                .state(0)
                .store(1 << 8 | Role::Consumer as u64, Ordering::Relaxed);
            world.claims[0].store(1, Ordering::Relaxed);
            let by_sweep = Arc::new(AtomicU32::new(0));
            let sweeper = spawn_repair(&world, &by_sweep);
            let by_attach = AtomicU32::new(0);
            let attacher = world.description(10);
            let (index, reaped_on_attach) = world
                .table()
                .claim(&attacher, Role::Producer, 7, &|o| {
                    world.recover(o, &by_attach)
                })
                .unwrap()
                .expect("a table with room never reports itself full");
            let me = (index + 1) as u64;
            world.claims[1].store(me, Ordering::Release);
            let swept = sweeper.join().unwrap();

            assert_eq!(
                world.claims[0].load(Ordering::Acquire),
                0,
                "the dead claim stays"
            );
            assert_eq!(
                by_sweep.load(Ordering::Relaxed) + by_attach.load(Ordering::Relaxed),
                1,
                "the dead claim is undone exactly once"
            );
            assert_eq!(
                swept.reaped + reaped_on_attach.reaped,
                1,
                "one death, one reaping"
            );
            assert_eq!(
                world.claims[1].load(Ordering::Acquire),
                me,
                "a live claim was undone"
            );
            assert_eq!(
                world.table().state(index).load(Ordering::Acquire) & 0xff,
                Role::Producer as u64,
                "the attacher's entry was reaped under it"
            );
            assert_eq!(
                world.locks.holders[index as usize].load(Ordering::Acquire),
                10
            );
        });
    }

    /// Detach racing a sweep: the detaching participant undoes its own claim, marks its entry
    /// free and only then unlocks; the sweep never reaps it and never undoes its claim.
    #[test]
    fn detach_racing_a_sweep() {
        loom::model(|| {
            let world = World::new();
            let owner = world.description(10);
            let by_owner = AtomicU32::new(0);
            let (index, _) = world
                .table()
                .claim(&owner, Role::Consumer, 7, &|o| world.recover(o, &by_owner))
                .unwrap()
                .unwrap();
            let me = (index + 1) as u16;
            world.claims[0].store(u64::from(me), Ordering::Release);
            let by_sweep = Arc::new(AtomicU32::new(0));
            let sweeper = spawn_repair(&world, &by_sweep);
            // Detach, as `Recoverable::detach` and `Participant::drop` do it.
            world.recover(me, &by_owner);
            world.table().release(index);
            owner.unlock(index);
            let swept = sweeper.join().unwrap();

            assert_eq!(swept.reaped, 0, "a live participant was reaped");
            assert_eq!(
                by_sweep.load(Ordering::Relaxed),
                0,
                "a sweep undid a live claim"
            );
            assert_eq!(by_owner.load(Ordering::Relaxed), 1);
            assert_eq!(world.claims[0].load(Ordering::Acquire), 0);
            assert!(world.table().is_free(index));
        });
    }
}
