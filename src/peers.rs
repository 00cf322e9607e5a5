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
//! * Attach: for each entry, try the lock without blocking. Holding it, look at the entry: if
//!   it is free, claim it (bump its generation, record role and PID). If it is marked in use,
//!   its owner died (nobody else holds the lock): the entry is reaped and reused. Then keep the
//!   lock for life.
//! * Detach: mark the entry free, then close the descriptor (releasing the lock).
//! * Liveness: an entry marked in use whose lock can be taken belongs to a dead process.
//!   A live participant, however slow, always holds its lock, so it is never mistaken for dead.
//!
//! Each entry is 64 bytes: the state word (generation << 8 | role) and the PID (for humans).

use crate::error::Error;
use crate::layout::{Geometry, PARTICIPANT_SIZE};
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
    _lock_fd: File,
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
        // Closing `_lock_fd` (dropped right after this) releases the OFD lock.
    }
}

/// Takes the write lock guarding entry `index` without blocking.
fn try_lock(fd: &File, index: u32) -> nix::Result<()> {
    let fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: LOCK_BASE + i64::from(index),
        l_len: 1,
        l_pid: 0,
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_OFD_SETLK(&fl)).map(drop)
}

/// Attaches a new participant with `role` to the participant table described by `geometry`.
pub(crate) fn attach(
    mapping: &Arc<Mapping>,
    geometry: &Geometry,
    role: Role,
) -> Result<Participant, Error> {
    let table = geometry.participants_offset as usize;
    let max = geometry.max_participants;
    let path = mapping.path();
    // A new open file description of the same file: OFD locks of one description never
    // conflict with each other, so every participant needs its own.
    let proc_path = format!("/proc/self/fd/{}", mapping.file().as_raw_fd());
    let lock_fd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&proc_path)
        .map_err(|e| Error::io(path, "reopen for locking", e))?;
    let region = mapping.region();
    for index in 0..max {
        match try_lock(&lock_fd, index) {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => continue,
            Err(e) => return Err(Error::io(path, "lock a participant entry of", e.into())),
        }
        let entry = table + index as usize * PARTICIPANT_SIZE;
        let state = region.u64_at(entry);
        let old = state.load(Ordering::Acquire);
        // Free, or in use by a process that died (we hold its lock): either way it is ours now.
        let gen = (old >> 8).wrapping_add(1) & ((1 << 56) - 1);
        state.store(gen << 8 | role as u64, Ordering::Release);
        region
            .u32_at(entry + 8)
            .store(std::process::id(), Ordering::Relaxed);
        return Ok(Participant {
            index,
            _lock_fd: lock_fd,
            region,
            table,
        });
    }
    Err(Error::TooManyParticipants {
        path: path.to_path_buf(),
        max,
    })
}
