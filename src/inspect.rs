//! Looking inside a queue file without taking part: who is attached, who died and what it
//! holds, how deep the queue is, who lags, and what everyone has done.
//!
//! [`inspect`] opens any shmq file **read-only** (`O_RDONLY`, a `PROT_READ` mapping): it never
//! attaches, never registers, never takes a lock and never changes a byte, so it is safe on a
//! queue in use and on one whose processes all died. Liveness is the test recovery uses: an
//! entry marked in use whose lock (an OFD lock on byte `LOCK_BASE + index`) nobody holds
//! belongs to a dead process; the inspector asks with `F_OFD_GETLK`, which takes nothing.
//!
//! The report is a snapshot of words other processes may be changing while it is read: each
//! value is exact when read, the whole is not one instant. Every value is validated (the file
//! is untrusted input): a corrupt file gives [`Error::Corrupt`] or [`Error::BadField`] naming
//! the field, never a panic.
//!
//! ```
//! # fn main() -> Result<(), shmq::Error> {
//! # let path = std::env::temp_dir().join(format!("shmq-inspect-doc-{}", std::process::id()));
//! let queue = shmq::Pipeline::create(&path, &shmq::PipelineOptions::new().capacity(8))?;
//! let producer = queue.producer()?;
//! producer.send(b"one")?;
//! let report = shmq::inspect::inspect(&path)?;
//! assert_eq!(report.ring.depth, 1);
//! assert_eq!(report.totals.sent, 1);
//! assert_eq!(report.participants.len(), 1);
//! assert!(report.participants[0].alive);
//! # shmq::Pipeline::remove(&path)?;
//! # Ok(()) }
//! ```

use crate::error::{Corruption, Error};
use crate::layout::{
    counter, field, FileHeader, Geometry, COUNTERS_OFFSET, CTL_HEAD, CTL_TAIL, KIND_PIPELINE,
    KIND_PUBSUB, KIND_SERVICE, OVERFLOW_BLOCK, PARTICIPANT_SIZE, PARTICIPANT_STATS,
    RING_CONTROL_OFFSET, RING_CONTROL_SIZE, TABLE_ENTRY_SIZE,
};
use crate::peers::is_locked;
pub use crate::peers::Role;
use crate::pubsub::Overflow;
use crate::reqrep::{CLIENT_ATTACHED, CLIENT_GEN_SHIFT, CLIENT_OWNER_MASK};
use crate::ring::broadcast::{SUB_ACTIVE, SUB_CLAIMED, SUB_OWNER_MASK};
use crate::ring::mpmc::{SlotState, Word};
use crate::shm::readonly::ReadOnlyMapping;
use crate::RecoveryStats;
use std::path::{Path, PathBuf};

/// Which pattern a file serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A work queue ([`Pipeline`](crate::Pipeline)).
    Pipeline,
    /// A publish-subscribe channel ([`PubSub`](crate::PubSub)) and its overflow mode.
    PubSub(Overflow),
    /// A request-reply service ([`Service`](crate::Service)).
    Service,
}

impl Kind {
    /// A short name: `pipeline`, `pubsub` or `service`.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Pipeline => "pipeline",
            Kind::PubSub(_) => "pubsub",
            Kind::Service => "service",
        }
    }
}

impl Role {
    /// A short name: `producer`, `consumer`, `publisher`, `subscriber`, `client`, `server`.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
            Role::Publisher => "publisher",
            Role::Subscriber => "subscriber",
            Role::Client => "client",
            Role::Server => "server",
        }
    }

    fn from_code(code: u64) -> Option<Role> {
        Some(match code {
            1 => Role::Producer,
            2 => Role::Consumer,
            3 => Role::Publisher,
            4 => Role::Subscriber,
            5 => Role::Client,
            6 => Role::Server,
            _ => return None,
        })
    }
}

/// What participants did, counted by each in its own entry (see `layout::counter`). Counts are
/// statistics: a handle used by several threads at the same instant may miss a few.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Messages (requests, replies) committed into a ring.
    pub sent: u64,
    /// Messages (requests, replies) taken from a ring and acknowledged.
    pub received: u64,
    /// Sends that found no room (whether they then waited, timed out or failed).
    pub full: u64,
    /// Receives that found nothing ready.
    pub empty: u64,
    /// Waits that went to sleep on a futex (counted once per wait).
    pub parked: u64,
    /// Messages subscribers missed because they fell behind (drop-oldest).
    pub lagged: u64,
    /// Loans dropped without committing.
    pub abandoned: u64,
    /// Messages skipped because their payload failed its checksum (pipelines created with
    /// `PipelineOptions::checksum`; see `RecvError::BadChecksum`).
    pub bad_checksum: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.sent += o.sent;
        self.received += o.received;
        self.full += o.full;
        self.empty += o.empty;
        self.parked += o.parked;
        self.lagged += o.lagged;
        self.abandoned += o.abandoned;
        self.bad_checksum += o.bad_checksum;
    }
}

/// How many slots of the rings are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotCounts {
    /// Being written by a producer (claimed, not committed).
    pub writing: u64,
    /// Holding a committed message not yet taken (for a channel: retained messages).
    pub ready: u64,
    /// Holding a message a consumer has taken but not acknowledged.
    pub reading: u64,
    /// Passed over (abandoned by their writer).
    pub skipped: u64,
    /// Waiting to be delivered again (their reader died).
    pub redeliver: u64,
}

/// The main ring's counters (the request ring, for a service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingState {
    /// Positions claimed by senders so far (messages published, for a channel).
    pub tail: u64,
    /// Positions claimed by receivers so far (pipeline, service; `None` for a channel, whose
    /// subscribers each have their own position).
    pub head: Option<u64>,
    /// Messages in the ring: `tail − head` (committed or being written, not yet taken), or for
    /// a channel the messages it retains.
    pub depth: u64,
    /// The state of every slot of the main ring.
    pub slots: SlotCounts,
}

/// What a participant holds in the rings: a dead one's holdings are what recovery will undo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holds {
    /// Slots it claimed for writing and has not committed.
    pub writing: u64,
    /// Messages (requests, replies) it took and has not acknowledged.
    pub reading: u64,
}

impl Holds {
    /// Everything held.
    pub fn total(&self) -> u64 {
        self.writing + self.reading
    }
}

/// One attached (or dead, not yet reaped) participant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Participant {
    /// Its index in the participant table.
    pub index: u32,
    /// The owner id it records in slots it claims (`index + 1`).
    pub id: u16,
    /// What it does.
    pub role: Role,
    /// The process id it recorded when it attached (for humans: liveness does not use it).
    pub pid: u32,
    /// Whether it is alive (its process holds its lock).
    pub alive: bool,
    /// What it holds in the rings.
    pub holds: Holds,
    /// What it has done since it attached.
    pub counts: Counts,
}

/// One attached subscriber of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Subscriber {
    /// Its index in the subscriber table.
    pub index: u32,
    /// The owner id of its participant entry.
    pub owner: u16,
    /// The position of the next message it will read.
    pub position: u64,
    /// Messages published it has not read yet (`tail − position`; more than the capacity
    /// means it has lost some, in drop-oldest mode).
    pub lag: u64,
}

/// One attached client of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Client {
    /// Its index in the client table.
    pub index: u32,
    /// The owner id of its participant entry.
    pub owner: u16,
    /// The entry's generation (bumped on every attach).
    pub generation: u64,
    /// Requests it sent whose replies it has not taken yet (its own counts: sent − received).
    pub outstanding: u64,
    /// Replies waiting in its reply ring.
    pub replies_waiting: u64,
}

/// Everything [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// The file inspected.
    pub path: PathBuf,
    /// The file's length in bytes.
    pub file_len: u64,
    /// Which pattern it serves.
    pub kind: Kind,
    /// Its validated geometry.
    pub geometry: Geometry,
    /// The main ring.
    pub ring: RingState,
    /// What every participant ever attached did: those gone (folded into the file's totals
    /// when they detached or were reaped) and those still in the table.
    pub totals: Counts,
    /// What recovery has done over the file's life.
    pub recovery: RecoveryStats,
    /// Recovery passes run (on attach, by stalled waiters, by `repair`).
    pub sweeps: u64,
    /// Every participant entry in use, alive or dead.
    pub participants: Vec<Participant>,
    /// Every attached subscriber (channels only).
    pub subscribers: Vec<Subscriber>,
    /// Every attached client (services only).
    pub clients: Vec<Client>,
}

impl Report {
    /// Participants whose process is alive.
    pub fn alive(&self) -> usize {
        self.participants.iter().filter(|p| p.alive).count()
    }

    /// Participants whose process died and that recovery has not reaped yet.
    pub fn dead(&self) -> usize {
        self.participants.len() - self.alive()
    }
}

/// Reads a queue file of any kind without changing it; see the [module docs](self).
///
/// # Errors
/// [`Error::Io`] if the file cannot be opened, mapped or its locks queried;
/// [`Error::Corrupt`] if it is not a shmq file, has another format version, or its header is
/// invalid; [`Error::BadField`] if a word in it holds a value the protocol never writes.
pub fn inspect(path: impl AsRef<Path>) -> Result<Report, Error> {
    let path = path.as_ref();
    let map = ReadOnlyMapping::open(path)?;
    Inspector {
        path,
        map: &map,
        geometry: header(path, &map)?,
    }
    .report()
}

/// Reads and validates the header, whatever kind it declares.
fn header(path: &Path, map: &ReadOnlyMapping) -> Result<Geometry, Error> {
    let size = std::mem::size_of::<FileHeader>();
    // What does not start with the magic number is not a shmq file, however short it is.
    let magic = map.u64_at(field::MAGIC).unwrap_or(0);
    if (magic != crate::layout::MAGIC && magic != 0) || map.len() < 8 {
        return Err(Error::corrupt(path, Corruption::BadMagic { found: magic }));
    }
    let mut bytes = vec![0u8; size];
    for (i, chunk) in bytes.chunks_exact_mut(8).enumerate() {
        let word = map.u64_at(8 * i).ok_or_else(|| {
            Error::corrupt(
                path,
                Corruption::Truncated {
                    len: map.len() as u64,
                    expected: size as u64,
                },
            )
        })?;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let h: FileHeader = bytemuck::pod_read_unaligned(&bytes);
    // Let validation report magic and version first; then an unknown kind by name.
    let kind = match h.kind {
        KIND_PIPELINE | KIND_PUBSUB | KIND_SERVICE => h.kind,
        _ if h.magic != crate::layout::MAGIC || h.version != crate::layout::FORMAT_VERSION => {
            KIND_PIPELINE
        }
        other => {
            return Err(bad(
                path,
                format!("header field `kind` (offset {})", field::KIND),
                format!("is {other}, which names no kind of queue"),
            ))
        }
    };
    // Exclusive-ends pipelines too: their slot words read as the shared ring's, owner 0.
    Geometry::validate_allowing(&h, kind, map.len() as u64, crate::layout::PIPELINE_FLAGS)
        .map_err(|c| Error::corrupt(path, c))
}

fn bad(path: &Path, field: String, problem: String) -> Error {
    Error::BadField {
        path: path.to_path_buf(),
        field,
        problem,
    }
}

struct Inspector<'a> {
    path: &'a Path,
    map: &'a ReadOnlyMapping,
    geometry: Geometry,
}

/// One ring of the file, as the inspector walks it.
struct RingAt {
    name: String,
    ctl: usize,
    slots: usize,
    capacity: u64,
    broadcast: bool,
}

impl Inspector<'_> {
    /// The word at `off`; every offset used is inside the validated geometry, so a miss means
    /// the file shrank under us.
    fn word(&self, off: usize, what: &str) -> Result<u64, Error> {
        self.map.u64_at(off).ok_or_else(|| {
            bad(
                self.path,
                what.to_string(),
                format!("lies past the end of the file ({} bytes)", self.map.len()),
            )
        })
    }

    fn report(&self) -> Result<Report, Error> {
        let g = &self.geometry;
        let kind = match g.kind {
            KIND_PIPELINE => Kind::Pipeline,
            KIND_PUBSUB if g.flags == OVERFLOW_BLOCK => Kind::PubSub(Overflow::Block),
            KIND_PUBSUB => Kind::PubSub(Overflow::DropOldest),
            _ => Kind::Service,
        };
        let main = RingAt {
            name: match kind {
                Kind::Service => "request ring".into(),
                _ => "ring".into(),
            },
            ctl: RING_CONTROL_OFFSET,
            slots: g.slots_offset as usize,
            capacity: g.capacity,
            broadcast: matches!(kind, Kind::PubSub(_)),
        };
        let mut holds = vec![Holds::default(); g.max_participants as usize + 1];
        let slots = self.scan(&main, &mut holds)?;
        let (tail, head, depth) = self.positions(&main)?;
        let ring = RingState {
            tail,
            head,
            depth: head.map_or(tail.min(g.capacity), |_| depth),
            slots,
        };
        let mut replies_waiting = Vec::new();
        if kind == Kind::Service {
            for c in 0..g.table_entries {
                let block = g.reply_block(c) as usize;
                let reply = RingAt {
                    name: format!("reply ring of client {c}"),
                    ctl: block,
                    slots: block + RING_CONTROL_SIZE,
                    capacity: g.reply_capacity,
                    broadcast: false,
                };
                self.scan(&reply, &mut holds)?;
                replies_waiting.push(self.positions(&reply)?.2);
            }
        }
        let participants = self.participants(&holds)?;
        let mut totals = self.counts(COUNTERS_OFFSET + 8 * counter::DEPARTED)?;
        for index in 0..g.max_participants {
            totals += self.counts(self.entry(index) + PARTICIPANT_STATS)?;
        }
        let recovery_word = |i: usize, what: &str| self.word(COUNTERS_OFFSET + 8 * i, what);
        let recovery = RecoveryStats {
            reaped: recovery_word(counter::REAPED, "counter `reaped`")?,
            skipped: recovery_word(counter::SKIPPED, "counter `skipped`")?,
            redelivered: recovery_word(counter::REDELIVERED, "counter `redelivered`")?,
            released: recovery_word(counter::RELEASED, "counter `released`")?,
            refused: recovery_word(counter::REFUSED, "counter `refused`")?,
        };
        let sweeps = recovery_word(counter::SWEEPS, "counter `sweeps`")?;
        let subscribers = match kind {
            Kind::PubSub(_) => self.subscribers()?,
            _ => Vec::new(),
        };
        let clients = match kind {
            Kind::Service => self.clients(&participants, &replies_waiting)?,
            _ => Vec::new(),
        };
        Ok(Report {
            path: self.path.to_path_buf(),
            file_len: self.map.len() as u64,
            kind,
            geometry: *g,
            ring,
            totals,
            recovery,
            sweeps,
            participants,
            subscribers,
            clients,
        })
    }

    fn entry(&self, index: u32) -> usize {
        self.geometry.participants_offset as usize + index as usize * PARTICIPANT_SIZE
    }

    fn counts(&self, at: usize) -> Result<Counts, Error> {
        let w = |i: usize| self.word(at + 8 * i, "a statistics counter");
        Ok(Counts {
            sent: w(counter::SENT)?,
            received: w(counter::RECEIVED)?,
            full: w(counter::FULL)?,
            empty: w(counter::EMPTY)?,
            parked: w(counter::PARKED)?,
            lagged: w(counter::LAGGED)?,
            abandoned: w(counter::ABANDONED)?,
            bad_checksum: w(counter::BAD_CHECKSUM)?,
        })
    }

    /// Tail, head (if the ring has one) and `tail − head`, read so that a ring in use cannot
    /// look corrupt: head, tail, head again. Head never passes the tail and the tail is never
    /// more than a ring ahead of the head at any instant, so `head₁ ≤ tail` and
    /// `tail − head₂ ≤ capacity` hold for any interleaving; a file breaking them is corrupt.
    fn positions(&self, ring: &RingAt) -> Result<(u64, Option<u64>, u64), Error> {
        let name = &ring.name;
        let head_word = format!("{name} head (offset {})", ring.ctl + CTL_HEAD);
        let tail_word = format!("{name} tail (offset {})", ring.ctl + CTL_TAIL);
        if ring.broadcast {
            return Ok((self.word(ring.ctl + CTL_TAIL, &tail_word)?, None, 0));
        }
        let h1 = self.word(ring.ctl + CTL_HEAD, &head_word)?;
        let mut tail = self.word(ring.ctl + CTL_TAIL, &tail_word)?;
        let h2 = self.word(ring.ctl + CTL_HEAD, &head_word)?;
        if self.geometry.kind == KIND_PIPELINE
            && self.geometry.flags & crate::layout::PIPELINE_EXCLUSIVE_ENDS != 0
            && h1 == tail.wrapping_add(1)
        {
            // The exclusive producer records its tail just after each commit: a consumer may
            // have delivered that message already (or the producer died in between).
            tail = h1;
        }
        if h1 > tail {
            return Err(bad(
                self.path,
                head_word,
                format!("is {h1}, ahead of the tail {tail}"),
            ));
        }
        let depth = tail.saturating_sub(h2);
        if depth > ring.capacity {
            return Err(bad(
                self.path,
                tail_word,
                format!(
                    "is {tail}, more than the ring's {} slots ahead of the head {h2}",
                    ring.capacity
                ),
            ));
        }
        Ok((tail, Some(h2), depth))
    }

    /// Counts the ring's slots by state, and what each owner holds in it.
    fn scan(&self, ring: &RingAt, holds: &mut [Holds]) -> Result<SlotCounts, Error> {
        let stride = self.geometry.slot_stride as usize;
        let mut counts = SlotCounts::default();
        for index in 0..ring.capacity as usize {
            let at = ring.slots + index * stride;
            let what = || format!("state word of slot {index} of the {}", ring.name);
            let raw = self.word(at, &what())?;
            let w = Word::decode(raw).map_err(|_| {
                bad(
                    self.path,
                    what(),
                    format!("({raw:#x}) holds an unknown state"),
                )
            })?;
            if ring.broadcast && matches!(w.state, SlotState::Reading | SlotState::Redeliver) {
                return Err(bad(
                    self.path,
                    what(),
                    format!("({raw:#x}) holds a state only queues use"),
                ));
            }
            let owner = holds.get_mut(usize::from(w.owner)).ok_or_else(|| {
                bad(
                    self.path,
                    what(),
                    format!(
                        "({raw:#x}) names owner {}, beyond the {} participant entries",
                        w.owner, self.geometry.max_participants
                    ),
                )
            })?;
            match w.state {
                SlotState::Empty => {}
                SlotState::Writing => {
                    counts.writing += 1;
                    owner.writing += 1;
                }
                SlotState::Ready => counts.ready += 1,
                SlotState::Reading => {
                    counts.reading += 1;
                    owner.reading += 1;
                }
                SlotState::Skipped => counts.skipped += 1,
                SlotState::Redeliver => counts.redeliver += 1,
            }
        }
        Ok(counts)
    }

    fn participants(&self, holds: &[Holds]) -> Result<Vec<Participant>, Error> {
        let mut found = Vec::new();
        for index in 0..self.geometry.max_participants {
            let entry = self.entry(index);
            let what = format!("state of participant entry {index}");
            let state = self.word(entry, &what)?;
            let code = state & 0xff;
            if code == 0 {
                continue;
            }
            let role = Role::from_code(code).ok_or_else(|| {
                bad(
                    self.path,
                    what,
                    format!("({state:#x}) holds role {code}, which is no role"),
                )
            })?;
            let pid = self.map.u32_at(entry + 8).unwrap_or(0);
            let alive = is_locked(self.map.file(), index)
                .map_err(|e| Error::io(self.path, "query the liveness lock of", e.into()))?;
            found.push(Participant {
                index,
                id: (index + 1) as u16,
                role,
                pid,
                alive,
                holds: holds[index as usize + 1],
                counts: self.counts(entry + PARTICIPANT_STATS)?,
            });
        }
        Ok(found)
    }

    /// The owner id in a table entry's state, checked against the participant table.
    fn owner_of(&self, state: u64, mask: u64, what: &str) -> Result<u16, Error> {
        let owner = state & mask;
        if owner == 0 || owner > u64::from(self.geometry.max_participants) {
            return Err(bad(
                self.path,
                what.to_string(),
                format!(
                    "({state:#x}) names owner {owner}, not one of the {} participant entries",
                    self.geometry.max_participants
                ),
            ));
        }
        Ok(owner as u16)
    }

    fn table_entry(&self, index: u32) -> usize {
        self.geometry.table_offset as usize + index as usize * TABLE_ENTRY_SIZE
    }

    fn subscribers(&self) -> Result<Vec<Subscriber>, Error> {
        let mut found = Vec::new();
        for index in 0..self.geometry.table_entries {
            let entry = self.table_entry(index);
            let what = format!("state of subscriber entry {index}");
            let state = self.word(entry, &what)?;
            if state & SUB_ACTIVE == 0 {
                continue;
            }
            if state & SUB_CLAIMED != 0 {
                return Err(bad(
                    self.path,
                    what,
                    format!("({state:#x}) is both being set up and active"),
                ));
            }
            let owner = self.owner_of(state, SUB_OWNER_MASK, &what)?;
            let cursor_word = format!("position of subscriber entry {index}");
            // The position first, then the tail: a position never passes the tail.
            let position = self.word(entry + 8, &cursor_word)?;
            let tail = self.word(RING_CONTROL_OFFSET + CTL_TAIL, "ring tail")?;
            if position > tail {
                return Err(bad(
                    self.path,
                    cursor_word,
                    format!("is {position}, ahead of the tail {tail}"),
                ));
            }
            found.push(Subscriber {
                index,
                owner,
                position,
                lag: tail - position,
            });
        }
        Ok(found)
    }

    fn clients(
        &self,
        participants: &[Participant],
        replies_waiting: &[u64],
    ) -> Result<Vec<Client>, Error> {
        let mut found = Vec::new();
        for index in 0..self.geometry.table_entries {
            let what = format!("state of client entry {index}");
            let state = self.word(self.table_entry(index), &what)?;
            if state & CLIENT_ATTACHED == 0 {
                continue;
            }
            let owner = self.owner_of(state, CLIENT_OWNER_MASK, &what)?;
            let outstanding = participants
                .iter()
                .find(|p| p.id == owner)
                .map_or(0, |p| p.counts.sent.saturating_sub(p.counts.received));
            found.push(Client {
                index,
                owner,
                generation: state >> CLIENT_GEN_SHIFT,
                outstanding,
                replies_waiting: replies_waiting[index as usize],
            });
        }
        Ok(found)
    }
}
