//! The pipeline (work queue); its specification is the documentation of [`Pipeline`].

use crate::error::{
    Corruption, Error, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError,
    TrySendError, Waited,
};
use crate::layout::{
    counter, Geometry, KIND_PIPELINE, PIPELINE_CHECKSUM, PIPELINE_EXCLUSIVE_ENDS, PIPELINE_FLAGS,
    RING_CONTROL_OFFSET,
};
use crate::peers::{Counters, Participant, Recoverable, RecoveryStats, Role, Table};
use crate::ring::exclusive::{self, ConsumerEnd, End, ExclusiveRing, ProducerEnd};
use crate::ring::mpmc::{MpmcRing, ReadClaim, WriteClaim};
use crate::shm::file::{self, Mapping};
use crate::sync::owner::{OwnerCell, OwnerGuard};
use crate::sync::reactor::KeepAlive;
use crate::sync::{Deadline, WaitCell, WaitStrategy};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How to create a queue: its geometry (fixed for the file's life) and its permissions.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    capacity: usize,
    max_message: usize,
    max_participants: usize,
    mode: u32,
    group: Option<u32>,
    single_producer: bool,
    single_consumer: bool,
    checksum: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            capacity: 1024,
            max_message: 1024,
            max_participants: 64,
            mode: 0o600,
            group: None,
            single_producer: false,
            single_consumer: false,
            checksum: false,
        }
    }
}

impl PipelineOptions {
    /// Defaults: 1024 slots of up to 1024-byte messages, 64 participants, mode `0600`.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The layout a queue created with these options has (its `file_size` is the file's).
    /// The on-file layout is not API: for shmq's own tools and tests.
    #[doc(hidden)]
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] if an option is out of range.
    pub fn geometry(&self) -> Result<Geometry, Error> {
        let ends = match (self.single_producer, self.single_consumer) {
            (false, false) => 0,
            (true, true) => PIPELINE_EXCLUSIVE_ENDS,
            _ => {
                return Err(Error::InvalidOptions(
                    "single_producer() and single_consumer() go together for now: \
                     give both (exclusive ends) or neither (shared ends)"
                        .into(),
                ))
            }
        };
        let flags = ends | if self.checksum { PIPELINE_CHECKSUM } else { 0 };
        Geometry::pipeline_with_flags(
            self.capacity as u64,
            self.max_message as u64,
            Error::option_u32(self.max_participants, "max_participants")?,
            flags,
        )
        .map_err(Error::InvalidOptions)
    }

    /// At most one producer attached at a time, across every process (enforced at attach:
    /// another fails with [`Error::EndTaken`] while the first lives). Give it together with
    /// [`single_consumer`](Self::single_consumer) (one without the other is refused with
    /// [`Error::InvalidOptions`] for now): the queue then runs on the *exclusive-ends* ring,
    /// which pays no read-modify-write per message, with every guarantee of the shared one
    /// (see [exclusive ends](crate::Pipeline#exclusive-ends)).
    #[must_use]
    pub fn single_producer(mut self) -> Self {
        self.single_producer = true;
        self
    }

    /// At most one consumer attached at a time, across every process; see
    /// [`single_producer`](Self::single_producer), which goes with it.
    #[must_use]
    pub fn single_consumer(mut self) -> Self {
        self.single_consumer = true;
        self
    }

    /// Whether every message carries a checksum of its payload (default `false`): the producer
    /// writes the payload's CRC32C into the slot's header before it commits, and the consumer
    /// verifies it before the message is handed out. A message whose bytes were changed in
    /// the file after it was sent (by a stray write of a process that maps it, or a bad
    /// disk) is then never delivered altered: the receive fails with
    /// [`RecvError::BadChecksum`] and the message is skipped (acknowledged, and counted in
    /// [`inspect::Counts::bad_checksum`](crate::inspect::Counts::bad_checksum)). It costs one
    /// CRC32C pass over the payload on each side (hardware-accelerated on x86-64 with SSE 4.2).
    ///
    /// A checksum detects scribbled bytes, not a hostile writer: one that can write the file
    /// can also write a matching checksum. Recorded in the file: every opener uses it, and a
    /// version of shmq that does not know it refuses the file.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmq-crc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// let q = shmq::Pipeline::create(dir.join("q"), &shmq::PipelineOptions::new().checksum(true))?;
    /// assert!(shmq::Pipeline::open(dir.join("q"))?.has_checksum());
    /// q.producer()?.send(b"checked")?;
    /// assert_eq!(&*q.consumer()?.recv()?, b"checked");
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), shmq::Error>(())
    /// ```
    pub fn checksum(mut self, on: bool) -> Self {
        self.checksum = on;
        self
    }

    /// Number of message slots (any number from 1 to 2^32).
    #[must_use]
    pub fn capacity(mut self, slots: usize) -> Self {
        self.capacity = slots;
        self
    }

    /// Largest message in bytes (up to 1 GiB). Every slot reserves this much.
    #[must_use]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Largest number of producers and consumers attached at once (1 to 4095).
    #[must_use]
    pub fn max_participants(mut self, n: usize) -> Self {
        self.max_participants = n;
        self
    }
}

file_options!(PipelineOptions, "queue");

/// The ring a pipeline file runs on, chosen once from its header's flags.
enum Ring {
    /// Any number of producers and consumers (`ring::mpmc`).
    Shared(MpmcRing),
    /// One producer and one consumer at a time (`ring::exclusive`).
    Exclusive(ExclusiveRing),
}

impl Ring {
    fn len(&self) -> u64 {
        match self {
            Ring::Shared(r) => r.len(),
            Ring::Exclusive(r) => r.len(),
        }
    }

    /// Producers wait here for room.
    #[inline]
    fn not_full(&self) -> WaitCell<'_> {
        match self {
            Ring::Shared(r) => r.not_full(),
            Ring::Exclusive(r) => r.not_full(),
        }
    }

    /// Consumers wait here for messages.
    #[inline]
    fn not_empty(&self) -> WaitCell<'_> {
        match self {
            Ring::Shared(r) => r.not_empty(),
            Ring::Exclusive(r) => r.not_empty(),
        }
    }
}

/// The low 16 bits of an end's holder token: the holder's owner id.
const TOKEN_OWNER_BITS: u32 = 16;
/// The generation bits a token keeps (the entry's generation is 56 bits wide).
const TOKEN_GENERATION_MASK: u64 = (1 << (64 - TOKEN_OWNER_BITS)) - 1;

/// The holder token of the participant with `owner` id whose entry is at `generation`:
/// nonzero (ids start at 1), and no later participant of that entry has it.
fn holder_token(generation: u64, owner: u16) -> u64 {
    (generation & TOKEN_GENERATION_MASK) << TOKEN_OWNER_BITS | u64::from(owner)
}

struct Shared {
    mapping: Arc<Mapping>,
    ring: Ring,
    geometry: Geometry,
    /// The file has [`PIPELINE_CHECKSUM`]: producers record, consumers verify, each payload's
    /// CRC32C.
    checksum: bool,
}

impl Shared {
    /// Waits on `cell` for `me` (counted in its statistics as `blocked`) until `attempt`
    /// succeeds or the deadline passes, sweeping for the dead whenever the wait stalls.
    #[inline]
    fn wait<'c, T>(
        &self,
        me: &'c Participant,
        (cell, blocked): (impl FnOnce() -> WaitCell<'c>, usize),
        (strategy, deadline): (WaitStrategy, Deadline),
        mut attempt: impl FnMut() -> Result<Option<T>, Corruption>,
    ) -> Result<Option<T>, Corruption> {
        // The fast path: the condition holds, and the cell and its tally are never built.
        if let Some(v) = attempt()? {
            return Ok(Some(v));
        }
        self.wait_missed(me, (cell, blocked), (strategy, deadline), attempt)
    }

    /// [`wait`](Self::wait) after its first attempt failed: out of line, so the fast path
    /// stays small.
    #[cold]
    #[inline(never)]
    fn wait_missed<'c, T>(
        &self,
        me: &'c Participant,
        (cell, blocked): (impl FnOnce() -> WaitCell<'c>, usize),
        (strategy, deadline): (WaitStrategy, Deadline),
        attempt: impl FnMut() -> Result<Option<T>, Corruption>,
    ) -> Result<Option<T>, Corruption> {
        me.waiting_on(cell(), blocked)
            .wait_after_miss(strategy, deadline, attempt, || self.repair_quietly())
    }

    /// The token of the participant now in entry `owner` (1-based), or `None` if the id is out
    /// of the table's range or the entry is free.
    fn token_in_use(&self, owner: u64) -> Option<u64> {
        let max = self.geometry.max_participants;
        let owner = u16::try_from(owner)
            .ok()
            .filter(|&o| o != 0 && u32::from(o) <= max)?;
        let region = self.mapping.region();
        let state = Table::new(&region, self.geometry.participants_offset as usize, max)
            .state(u32::from(owner) - 1)
            .load(std::sync::atomic::Ordering::Acquire);
        (state & 0xff != 0).then(|| holder_token(state >> 8, owner))
    }

    /// Brings `end` of `ring` back to a state the next holder can attach to, after its holder
    /// died or detached; returns how many messages were flagged for redelivery.
    fn recover_end(&self, ring: &ExclusiveRing, end: End) -> Result<u64, Corruption> {
        match end {
            End::Producer => ring.recover_producer().map(|_| 0),
            End::Consumer => ring
                .recover_consumer(ring.delivered_record())
                .map(|r| r.redelivered),
        }
    }

    /// Takes `end` of the exclusive ring for `me` (its entry locked), recovering a holder that
    /// is gone, then attaches it. A holder token is untrusted: it is only compared with the
    /// token of the participant now in the entry it names.
    fn claim_end(&self, ring: &ExclusiveRing, end: End, me: &Participant) -> Result<(), Error> {
        let mine = holder_token(me.generation(), me.owner_id());
        let path = self.mapping.path();
        let mut swept = false;
        loop {
            let Err(holder) = ring.take_end(end, mine) else {
                return Ok(());
            };
            if self.token_in_use(holder & 0xffff) == Some(holder) {
                // Its participant is still in the table: alive, or dead and not reaped yet.
                // A sweep reaps (and so recovers and frees) a dead one; a live one keeps it.
                if swept {
                    return Err(Error::EndTaken {
                        path: path.to_path_buf(),
                        end: match end {
                            End::Producer => "producer",
                            End::Consumer => "consumer",
                        },
                    });
                }
                self.sweep(me.process(), false)?;
                swept = true;
                continue;
            }
            // The token names no participant in use (a free entry, an older generation, or
            // nothing at all): its holder is gone without having freed the end. Take it over
            // (one taker wins), then recover what it left, as a reaper would have.
            if !ring.take_end_from(end, holder, mine) {
                continue;
            }
            let redelivered = self
                .recover_end(ring, end)
                .map_err(|c| Error::corrupt(path, c))?;
            Counters::of(&self.mapping.region()).add(&RecoveryStats {
                redelivered,
                ..RecoveryStats::default()
            });
            return Ok(());
        }
    }
}

impl Recoverable for Shared {
    fn mapping(&self) -> &Arc<Mapping> {
        &self.mapping
    }

    fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Undoes what a dead (or detaching) participant held. Shared ring: its half-written slots
    /// are skipped, the messages it held unacknowledged are delivered again. Exclusive ring:
    /// the end it holds (its token in the holder word) is recovered, which delivers again what
    /// it held unacknowledged (a half-written slot is invisible already), then freed.
    fn recover(&self, owner: u16) -> RecoveryStats {
        match &self.ring {
            Ring::Shared(ring) => {
                let (skipped, redelivered, _) = ring.recover(owner, true);
                RecoveryStats {
                    skipped,
                    redelivered,
                    ..RecoveryStats::default()
                }
            }
            Ring::Exclusive(ring) => {
                let mut stats = RecoveryStats::default();
                // A free entry's id (repair) names no holder: stale tokens are taken over by
                // the next attacher (see `claim_end`).
                let Some(token) = self.token_in_use(u64::from(owner)) else {
                    return stats;
                };
                for end in [End::Producer, End::Consumer] {
                    if ring.end_holder(end) != token {
                        continue;
                    }
                    // A corrupt ring keeps the end held: the next attacher finds the token
                    // stale, recovers again and reports the corruption.
                    if let Ok(redelivered) = self.recover_end(ring, end) {
                        stats.redelivered += redelivered;
                        ring.free_end(end, token);
                    }
                }
                stats
            }
        }
    }

    fn recount(&self) {
        if let Ring::Shared(ring) = &self.ring {
            ring.recount_redeliveries();
        }
    }
}

/// A pipeline queue file, mapped. Cheap to clone; attach producers and consumers from it.
///
/// The pipeline (work queue): producers submit messages, each message goes to exactly one
/// consumer.
///
/// # Guarantees
///
/// * **Atomic messages.** A consumer receives a message whole and byte-identical to what was
///   sent, or not at all. A message becomes visible only when its producer commits it.
/// * **Exactly one consumer** receives each message; messages from one producer are received in
///   the order they were sent (by consumers taken together; with several consumers, two of them
///   may *process* neighbouring messages in any order).
/// * **Zero copy on receive.** A [`Message`] borrows its slot; [`Message::ack`] or dropping it
///   acknowledges the message and frees the slot. A held message keeps its slot: when producers
///   come round the ring to it they wait, so hold few messages at a time and not for long.
/// * **Zero copy on send, in order.** A [`Loan`] is a claimed slot written in place. Messages
///   are delivered in the order their slots were claimed, so a loan not yet committed at the
///   head of the ring holds up every consumer, even when later messages are ready: loan late
///   and commit promptly (see [`Producer::loan`]).
/// * **Refusals are reported.** A commit or acknowledgement whose slot was taken away
///   meanwhile (recovery judged the participant dead, or another process rewrote the file)
///   fails with [`SendError::ClaimLost`] / [`RecvError::ClaimLost`] and is counted in
///   [`RecoveryStats::refused`](crate::RecoveryStats::refused), also when a dropped message's
///   acknowledgement is refused.
/// * **Persistence.** Committed, unacknowledged messages live in the file: a queue reopened
///   after every process exited finds them, in order.
/// * **Bounded.** The file's size is fixed at creation; sending and receiving never allocate.
/// * **Blocking without lost wake-ups**, across processes, on shared futexes; a sender pays no
///   system call when no receiver is parked or about to park, but for one call after a
///   receiver was killed while parked or 255 were parked at once (see [`WaitStrategy`]).
///
/// # Trust
///
/// Every process that can write the queue file is trusted with message *contents*; shmq
/// defends its own memory safety, indices and lengths against any bytes (a corrupt or hostile
/// file gives an error, never undefined behaviour in shmq). A [`Message`] and a [`Loan`] are
/// views into the mapping: a process that ignores the protocol can change those bytes while you
/// hold the view, so for peers you do not trust copy the message out with
/// [`Consumer::recv_into`] or [`Message::copy_to_vec`], which read the shared bytes with atomic
/// word loads, and validate the copy. Who may open the file at all: see
/// [`PipelineOptions::group`] and `docs/DESIGN.md` section 9.
///
/// A queue created with [`PipelineOptions::checksum`] carries the CRC32C of each payload: a message
/// whose bytes were changed in the file after it was sent is skipped with
/// [`RecvError::BadChecksum`], never delivered altered. That detects stray writes, not a
/// hostile writer, which can store a matching checksum.
///
/// # Exclusive ends
///
/// A queue created with [`PipelineOptions::single_producer`] and [`PipelineOptions::single_consumer`] (both:
/// one alone is refused with [`Error::InvalidOptions`] for now) admits one producer and one
/// consumer at a time, across every process, and runs on the exclusive-ends ring: no
/// read-modify-write per message, the slot's line written once by each side, a message up to
/// 48 bytes in the same line as its state. Use it for a 1 → 1 stage of a pipeline where
/// latency or throughput matters. Every guarantee above holds, and:
///
/// * **Attach is exclusive.** While a producer (consumer) lives, attaching another fails with
///   [`Error::EndTaken`]; once it detached or died, the next attaches (a dead one is reaped
///   first, its end recovered). The end is held by a token (the participant entry's generation
///   and id) in the ring's control block; a token naming no participant in use is taken over
///   by the next attacher, which recovers the end first.
/// * **Recovery is exact.** A producer killed mid-write leaves nothing visible (nothing to
///   skip: [`RecoveryStats::skipped`] stays 0); a consumer killed holding messages has them
///   delivered again, flagged, to the next consumer, and nothing it acknowledged comes back.
///   A message flagged already is counted in [`RecoveryStats::redelivered`] once, however
///   often its consumers die.
/// * **Refusals do not arise** (`ClaimLost`): only recovery of a dead end changes its slots.
/// * **One send or loan at a time per producer**: a [`Producer`] may be shared between threads,
///   which then take turns (an in-process lock); a thread that holds a [`Loan`] must commit or
///   drop it before it sends again on the same producer, or it waits for itself forever.
///   Several received messages may be held at once, as with shared ends.
///
/// # Example
///
/// ```
/// # fn main() -> Result<(), shmq::Error> {
/// # let dir = std::env::temp_dir().join(format!("shmq-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// # let path = dir.join("thumbnails");
/// let queue = shmq::Pipeline::create(&path, &shmq::PipelineOptions::new().capacity(1024).max_message(4096))?;
/// let producer = queue.producer()?;             // in the web front-end process
/// producer.send(b"uploads/img-123.jpg")?;
///
/// let consumer = shmq::Pipeline::open(&path)?.consumer()?;   // in each worker process
/// let job = consumer.recv()?;
/// assert_eq!(&*job, b"uploads/img-123.jpg");  // borrows the slot: zero copy
/// drop(job);                                   // acknowledges it and frees the slot
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pipeline {
    shared: Arc<Shared>,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("path", &self.path())
            .field("capacity", &self.capacity())
            .field("max_message", &self.max_message())
            .finish()
    }
}

/// The ring a file with geometry `g` runs on, over `region` (validated by the caller).
fn ring_of(region: crate::shm::Region, g: &Geometry) -> Ring {
    let (ctl, slots, cap) = (RING_CONTROL_OFFSET, g.slots_offset as usize, g.capacity);
    let (stride, max) = (g.slot_stride as usize, g.max_message as usize);
    if g.flags & PIPELINE_EXCLUSIVE_ENDS == PIPELINE_EXCLUSIVE_ENDS {
        Ring::Exclusive(ExclusiveRing::new(region, ctl, slots, cap, stride, max))
    } else {
        Ring::Shared(MpmcRing::new(region, ctl, slots, cap, stride, max))
    }
}

impl Pipeline {
    /// Creates a new queue file at `path` (which must not exist).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for out-of-range options; [`Error::Io`] if the file exists, the
    /// directory is not writable, or there is no room for the file (space is reserved now).
    pub fn create(path: impl AsRef<Path>, options: &PipelineOptions) -> Result<Self, Error> {
        let path = path.as_ref();
        let g = options.geometry()?;
        let mapping = file::create(
            path,
            &g,
            options.mode,
            options.group,
            |region| match ring_of(region.clone(), &g) {
                Ring::Shared(ring) => ring.initialize(),
                Ring::Exclusive(ring) => ring.initialize(),
            },
        )?;
        Ok(Self::over(mapping, g))
    }

    fn over(mapping: Arc<Mapping>, geometry: Geometry) -> Self {
        let ring = ring_of(mapping.region(), &geometry);
        Pipeline {
            shared: Arc::new(Shared {
                mapping,
                ring,
                checksum: geometry.flags & PIPELINE_CHECKSUM != 0,
                geometry,
            }),
        }
    }

    /// Opens an existing queue file, validating everything in its header. A file created
    /// with exclusive ends opens with them, one created with [`PipelineOptions::checksum`] with its
    /// checksums.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be opened (or is a symbolic link); [`Error::Corrupt`] if it is
    /// not a pipeline of this format version, or its geometry is invalid or does not fit the
    /// file, or it has only one of the two exclusive-end flags (which no version creates).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let (mapping, g) = file::open_allowing(path, KIND_PIPELINE, PIPELINE_FLAGS)?;
        let ends = g.flags & PIPELINE_EXCLUSIVE_ENDS;
        if ends != 0 && ends != PIPELINE_EXCLUSIVE_ENDS {
            return Err(Error::corrupt(
                path,
                Corruption::BadGeometry(
                    "has one exclusive end without the other, which this version does not serve",
                ),
            ));
        }
        Ok(Self::over(mapping, g))
    }

    /// Attaches a producer.
    ///
    /// # Errors
    /// [`Error::TooManyParticipants`] when the participant table is full;
    /// [`Error::EndTaken`] if the queue has exclusive ends and a live producer is attached;
    /// [`Error::Corrupt`] if the exclusive ring's records are inconsistent.
    pub fn producer(&self) -> Result<Producer, Error> {
        let me = self.shared.attach(Role::Producer)?;
        let ends = match &self.shared.ring {
            Ring::Shared(ring) => Ends::Shared(ring.clone()),
            Ring::Exclusive(ring) => {
                self.shared.claim_end(ring, End::Producer, &me)?;
                let end = ring
                    .attach_producer()
                    .map_err(|c| Error::corrupt(self.path(), c))?;
                Ends::Exclusive(ring.clone(), OwnerCell::new(end))
            }
        };
        Ok(Producer {
            owner: me.owner_id(),
            shared: self.shared.clone(),
            me,
            wait: WaitStrategy::default(),
            ends,
            _wake_consumers: WakeConsumersOnDrop(self.shared.clone()),
        })
    }

    /// Attaches a consumer.
    ///
    /// # Errors
    /// [`Error::TooManyParticipants`] when the participant table is full;
    /// [`Error::EndTaken`] if the queue has exclusive ends and a live consumer is attached;
    /// [`Error::Corrupt`] if the exclusive ring's records are inconsistent.
    pub fn consumer(&self) -> Result<Consumer, Error> {
        let me = self.shared.attach(Role::Consumer)?;
        let ends = match &self.shared.ring {
            Ring::Shared(ring) => Ends::Shared(ring.clone()),
            Ring::Exclusive(ring) => {
                self.shared.claim_end(ring, End::Consumer, &me)?;
                // The consumer records its position in the head word: with one consumer at a
                // time, a word it alone writes, which recovery and the next consumer read.
                let end = ring
                    .attach_consumer(ring.head_offset())
                    .map_err(|c| Error::corrupt(self.path(), c))?;
                Ends::Exclusive(ring.clone(), OwnerCell::new(end))
            }
        };
        Ok(Consumer {
            owner: me.owner_id(),
            shared: self.shared.clone(),
            me,
            wait: WaitStrategy::default(),
            ends,
            disconnect: Disconnect::default(),
        })
    }

    /// Whether the queue has exclusive ends (created with [`PipelineOptions::single_producer`] and
    /// [`PipelineOptions::single_consumer`]).
    pub fn has_exclusive_ends(&self) -> bool {
        matches!(self.shared.ring, Ring::Exclusive(_))
    }

    /// Whether the queue's messages carry payload checksums (created with
    /// [`PipelineOptions::checksum`]).
    pub fn has_checksum(&self) -> bool {
        self.shared.checksum
    }

    /// The queue file's path as given to `create` or `open`.
    pub fn path(&self) -> &Path {
        self.shared.mapping.path()
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.shared.geometry.capacity as usize
    }

    /// Largest message in bytes.
    pub fn max_message(&self) -> usize {
        self.shared.geometry.max_message as usize
    }

    /// Messages sent (or being written) and not yet taken by a consumer; a snapshot.
    pub fn len(&self) -> usize {
        self.shared.ring.len() as usize
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Looks for participants that died and undoes what they held: slots they were writing
    /// are skipped, messages they held unacknowledged are delivered again (flagged
    /// [`Message::redelivered`]). This also happens by itself on attach and whenever a blocking
    /// call has waited [`STALL_CHECK`](crate::STALL_CHECK) without progress; call it to recover
    /// sooner or when nobody waits. Never touches a live participant, however slow.
    ///
    /// Unlike those automatic sweeps, `repair` also undoes the claims recorded under the id of
    /// a *free* participant entry (nobody alive has that id): what a handle leaked in a file
    /// written by an older version of shmq, which did not undo leaks on detach.
    ///
    /// # Errors
    /// [`Error::Io`] if the liveness locks cannot be probed.
    pub fn repair(&self) -> Result<RecoveryStats, Error> {
        self.shared.repair()
    }

    /// What recovery has done on this queue over its life, in all processes.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.shared.stats()
    }

    /// The file's count of messages awaiting redelivery (while it is not zero, every receive
    /// scans the slots for them). Test-only: exists with the `test-hooks` feature alone.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn redelivery_pending(&self) -> u64 {
        match &self.shared.ring {
            Ring::Shared(ring) => ring.redelivery_pending(),
            // No count: the exclusive consumer finds flagged messages in order, no scan.
            Ring::Exclusive(_) => 0,
        }
    }

    /// Removes the queue file's name. Processes that have it mapped keep using it.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be removed.
    pub fn remove(path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        std::fs::remove_file(path).map_err(|e| Error::io(path, "remove", e))
    }
}

/// Sends messages into a pipeline. `Send + Sync`: share it between threads or make one each.
///
/// Belongs to the process that attached it: in a fork child, its methods fail with
/// [`SendError::WrongProcess`] and dropping it does nothing to the queue (the parent's
/// participant entry, lock and loans stay the parent's); a child attaches its own. Dropping it
/// in its own process detaches it, first skipping any [`Loan`] it leaked (`mem::forget`).
pub struct Producer {
    shared: Arc<Shared>,
    owner: u16,
    wait: WaitStrategy,
    ends: Ends<ProducerEnd>,
    me: Participant,
    /// Declared after `me`, so dropped after it: wakes parked consumers once the entry is
    /// free, so that one waiting to be told the last producer left looks again.
    _wake_consumers: WakeConsumersOnDrop,
}

/// Wakes a pipeline's parked consumers when dropped (see [`Producer`]'s last field).
struct WakeConsumersOnDrop(Arc<Shared>);

impl Drop for WakeConsumersOnDrop {
    fn drop(&mut self) {
        self.0.ring.not_empty().notify();
    }
}

/// A handle's way into the ring, decided once at attach.
enum Ends<E> {
    /// The shared ring: every operation claims with a CAS, no in-process state.
    Shared(MpmcRing),
    /// The exclusive ring and this handle's end of it (its position), behind an in-process
    /// lock because the handle is `Sync`: an owner cell, which the thread that uses the handle
    /// enters with plain stores (no read-modify-write, no fence).
    Exclusive(ExclusiveRing, OwnerCell<E>),
}

/// Enters an end; a panic while inside (in a caller's closure) leaves the end usable: its
/// fields only change in the ring's own non-panicking steps.
#[inline]
fn lock<E>(end: &OwnerCell<E>) -> OwnerGuard<'_, E> {
    end.lock()
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("path", &self.shared.mapping.path())
            .field("participant", &self.owner)
            .finish()
    }
}

impl Producer {
    /// Sets how blocking sends wait for room (default: spin 20 µs, then park).
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    #[inline]
    fn check_len(&self, len: usize) -> Result<(), SendError> {
        let max = self.shared.geometry.max_message as usize;
        if len > max {
            return Err(SendError::TooLarge { len, max });
        }
        Ok(())
    }

    #[inline]
    fn claim(&self, ring: &MpmcRing, deadline: Deadline) -> Result<WriteClaim, Waited<SendError>> {
        let waited = self.shared.wait(
            &self.me,
            (|| ring.not_full(), counter::FULL),
            (self.wait, deadline),
            ring.write_claimer(self.owner),
        );
        let claim = SendError::from_wait(waited)?;
        crate::testhook::park_at("producer-claimed");
        Ok(claim)
    }

    /// Waits for the exclusive ring's slot at this end's tail and claims it.
    #[inline]
    fn claim_exclusive(
        &self,
        ring: &ExclusiveRing,
        end: &mut ProducerEnd,
        deadline: Deadline,
    ) -> Result<(), Waited<SendError>> {
        let waited = self.shared.wait(
            &self.me,
            (|| ring.not_full(), counter::FULL),
            (self.wait, deadline),
            || end.try_claim().map(|free| free.then_some(())),
        );
        SendError::from_wait(waited)?;
        crate::testhook::park_at("producer-claimed");
        Ok(())
    }

    #[inline]
    fn write_and_commit(
        &self,
        ring: &MpmcRing,
        claim: WriteClaim,
        msg: &[u8],
    ) -> Result<(), SendError> {
        ring.write(&claim, 0, msg);
        if self.shared.checksum {
            ring.set_check(&claim, crc32c::crc32c(msg));
        }
        self.committed(ring.commit(claim, msg.len()))
    }

    /// Writes `msg` into the claimed slot of the exclusive ring and commits it (which wakes a
    /// parked consumer). Never refused: nobody else recovers a live end.
    #[inline]
    fn write_and_commit_exclusive(&self, end: &mut ProducerEnd, msg: &[u8]) {
        end.write(0, msg);
        if self.shared.checksum {
            end.set_check(crc32c::crc32c(msg));
        }
        end.commit(msg.len());
        self.me.stats().add(counter::SENT, 1);
    }

    /// The outcome of a commit: refused if a recovery pass had taken the slot away.
    #[inline]
    fn committed(&self, committed: bool) -> Result<(), SendError> {
        if committed {
            self.me.stats().add(counter::SENT, 1);
            Ok(())
        } else {
            self.shared.count_refused();
            Err(SendError::ClaimLost)
        }
    }

    #[inline]
    fn send_with(&self, msg: &[u8], deadline: Deadline) -> Result<(), Waited<SendError>> {
        self.me.check_send()?;
        self.check_len(msg.len())?;
        match &self.ends {
            Ends::Shared(ring) => {
                let claim = self.claim(ring, deadline)?;
                let result = self.write_and_commit(ring, claim, msg);
                ring.not_empty().notify();
                Ok(result?)
            }
            Ends::Exclusive(ring, end) => {
                let mut end = lock(end);
                self.claim_exclusive(ring, &mut end, deadline)?;
                self.write_and_commit_exclusive(&mut end, msg);
                Ok(())
            }
        }
    }

    /// Sends `msg`, waiting while the queue is full.
    ///
    /// # Errors
    /// [`SendError::TooLarge`] if `msg` exceeds the maximum message size (nothing is written);
    /// [`SendError::ClaimLost`] if the claimed slot was taken away before the commit (nothing
    /// is delivered; see [`Loan::commit`]); [`SendError::Corrupt`] if the shared memory breaks
    /// the protocol.
    #[inline]
    pub fn send(&self, msg: &[u8]) -> Result<(), SendError> {
        self.send_with(msg, Deadline::Never)
            .map_err(Waited::forever)
    }

    /// Sends `msg` if there is room now.
    ///
    /// # Errors
    /// [`TrySendError::Full`] if there is no room; [`TrySendError::Send`] as for
    /// [`send`](Self::send).
    #[inline]
    pub fn try_send(&self, msg: &[u8]) -> Result<(), TrySendError> {
        self.send_with(msg, Deadline::Now)
            .map_err(|e| e.or(TrySendError::Full))
    }

    /// Sends `msg`, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`] if the queue stayed full; [`SendTimeoutError::Send`] as
    /// for [`send`](Self::send).
    pub fn send_timeout(&self, msg: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
        self.send_with(msg, Deadline::after(timeout))
            .map_err(|e| e.or(SendTimeoutError::Timeout))
    }

    /// Sends every message of `msgs` in order, waiting for room as needed, and wakes parked
    /// consumers once per batch instead of once per message.
    ///
    /// # Errors
    /// As for [`send`](Self::send); messages before the failing one were sent. A message that
    /// is too large is refused before anything is sent.
    pub fn send_batch(&self, msgs: &[&[u8]]) -> Result<(), SendError> {
        self.me.check_send()?;
        if let Some(big) = msgs
            .iter()
            .find(|m| m.len() > self.shared.geometry.max_message as usize)
        {
            return self.check_len(big.len());
        }
        let ring = match &self.ends {
            Ends::Shared(ring) => ring,
            Ends::Exclusive(ring, end) => {
                // Each commit wakes a parked consumer (one fence and load when none is).
                let mut end = lock(end);
                for msg in msgs {
                    self.claim_exclusive(ring, &mut end, Deadline::Never)
                        .map_err(Waited::forever)?;
                    self.write_and_commit_exclusive(&mut end, msg);
                }
                return Ok(());
            }
        };
        for msg in msgs {
            let claim = match ring
                .try_claim_write(self.owner)
                .map_err(SendError::Corrupt)?
            {
                Some(c) => c,
                None => {
                    // Full: let consumers see what we sent before we wait for them.
                    ring.not_empty().notify();
                    self.claim(ring, Deadline::Never).map_err(Waited::forever)?
                }
            };
            self.write_and_commit(ring, claim, msg)?;
        }
        ring.not_empty().notify();
        Ok(())
    }

    /// Loans a slot for a message of exactly `len` bytes, to be written in place (zero copy)
    /// and [`commit`](Loan::commit)ted. Waits while the queue is full. Dropping the loan without
    /// committing abandons it: nothing is delivered.
    ///
    /// **A loan holds up every consumer while it is the oldest slot.** Messages are delivered
    /// in the order their slots were claimed, so while the loaned slot is at the head of the
    /// ring, consumers find nothing to receive, even when messages committed after it are
    /// ready (and so wait, or get [`TryRecvError::Empty`]). Prepare the data first, then loan,
    /// fill and commit without doing anything slow in between; if producing a message takes
    /// long, build it in a buffer of your own and [`send`](Self::send) a copy.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmq-loan-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// # let q = shmq::Pipeline::create(dir.join("q"), &shmq::PipelineOptions::new()).unwrap();
    /// let producer = q.producer()?;
    /// let mut loan = producer.loan(5)?;
    /// loan.copy_from_slice(b"hello");
    /// loan.commit()?;
    /// assert_eq!(&*q.consumer()?.recv()?, b"hello");
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), shmq::Error>(())
    /// ```
    ///
    /// # Errors
    /// As for [`send`](Self::send).
    pub fn loan(&self, len: usize) -> Result<Loan<'_>, SendError> {
        self.loan_with(len, Deadline::Never)
            .map_err(Waited::forever)
    }

    /// Like [`loan`](Self::loan), but fails with [`TrySendError::Full`] instead of waiting.
    ///
    /// # Errors
    /// As for [`try_send`](Self::try_send).
    pub fn try_loan(&self, len: usize) -> Result<Loan<'_>, TrySendError> {
        self.loan_with(len, Deadline::Now)
            .map_err(|e| e.or(TrySendError::Full))
    }

    fn loan_with(&self, len: usize, deadline: Deadline) -> Result<Loan<'_>, Waited<SendError>> {
        self.me.check_send()?;
        self.check_len(len)?;
        let claim = match &self.ends {
            Ends::Shared(ring) => LoanClaim::Shared(ring, self.claim(ring, deadline)?),
            Ends::Exclusive(ring, end) => {
                let mut end = lock(end);
                self.claim_exclusive(ring, &mut end, deadline)?;
                LoanClaim::Exclusive(end)
            }
        };
        Ok(Loan {
            producer: self,
            claim: Some(claim),
            len,
        })
    }

    /// Sends a plain-old-data value as its bytes.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmq-pod-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// # let q = shmq::Pipeline::create(dir.join("q"), &shmq::PipelineOptions::new()).unwrap();
    /// #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
    /// #[repr(C)]
    /// struct Job { id: u64, width: u32, height: u32 }
    /// q.producer()?.send_value(&Job { id: 7, width: 128, height: 128 })?;
    /// let consumer = q.consumer()?;
    /// let msg = consumer.recv()?;
    /// assert_eq!(msg.value::<Job>(), Some(Job { id: 7, width: 128, height: 128 }));
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), shmq::Error>(())
    /// ```
    ///
    /// # Errors
    /// As for [`send`](Self::send).
    pub fn send_value<T: bytemuck::NoUninit>(&self, value: &T) -> Result<(), SendError> {
        self.send(bytemuck::bytes_of(value))
    }
}

/// A slot loaned by [`Producer::loan`]: write the message into it, then commit.
///
/// In a fork child (a copy inherited from the process that took the loan) it reads and writes
/// as empty, and committing or dropping it does nothing: the slot stays the parent's.
#[must_use = "dropping a loan without committing it abandons the slot: nothing is sent"]
pub struct Loan<'a> {
    producer: &'a Producer,
    /// Always `Some` until `commit` or `drop` takes it.
    claim: Option<LoanClaim<'a>>,
    len: usize,
}

/// What a loan holds: a claimed slot of the shared ring, or the exclusive producer end with
/// the slot at its tail claimed (so other threads' sends on this producer wait for the loan).
enum LoanClaim<'a> {
    Shared(&'a MpmcRing, WriteClaim),
    Exclusive(OwnerGuard<'a, ProducerEnd>),
}

impl Loan<'_> {
    /// Publishes the message. Consumers see all of it or none of it. With
    /// [`PipelineOptions::checksum`], the checksum is computed here, over the bytes in the slot.
    ///
    /// # Errors
    /// [`SendError::ClaimLost`] if the slot was taken away before the commit (a recovery pass
    /// judged this producer dead, or another process rewrote the file): nothing is delivered,
    /// and the refusal is counted in [`RecoveryStats::refused`](crate::RecoveryStats::refused).
    /// [`SendError::WrongProcess`] in a fork child: nothing is done, the loan stays the
    /// parent's.
    pub fn commit(mut self) -> Result<(), SendError> {
        self.producer.me.check_send()?;
        match self.claim.take() {
            None => Ok(()),
            Some(LoanClaim::Shared(ring, claim)) => {
                if self.producer.shared.checksum {
                    ring.set_check(&claim, crc32c::crc32c(ring.written(&claim, self.len)));
                }
                let committed = ring.commit(claim, self.len);
                ring.not_empty().notify();
                self.producer.committed(committed)
            }
            Some(LoanClaim::Exclusive(mut end)) => {
                if self.producer.shared.checksum {
                    let check = crc32c::crc32c(end.written(self.len));
                    end.set_check(check);
                }
                end.commit(self.len);
                self.producer.me.stats().add(counter::SENT, 1);
                Ok(())
            }
        }
    }
}

impl Deref for Loan<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        if !self.producer.me.in_own_process() {
            return &[];
        }
        match &self.claim {
            Some(LoanClaim::Shared(ring, claim)) => ring.written(claim, self.len),
            Some(LoanClaim::Exclusive(end)) => end.written(self.len),
            None => &[],
        }
    }
}

impl DerefMut for Loan<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        if !self.producer.me.in_own_process() {
            return &mut [];
        }
        match &mut self.claim {
            Some(LoanClaim::Shared(ring, claim)) => ring.payload_mut(claim, self.len),
            Some(LoanClaim::Exclusive(end)) => end.payload_mut(self.len),
            None => &mut [],
        }
    }
}

impl Drop for Loan<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.producer.me.in_own_process() {
            return;
        }
        match self.claim.take() {
            None => {}
            Some(LoanClaim::Shared(ring, claim)) => {
                ring.abandon(claim);
                self.producer.me.stats().add(counter::ABANDONED, 1);
                ring.not_empty().notify();
            }
            Some(LoanClaim::Exclusive(mut end)) => {
                // The slot stays free for the same position: nothing to wake anyone for.
                end.abandon();
                self.producer.me.stats().add(counter::ABANDONED, 1);
            }
        }
    }
}

impl fmt::Debug for Loan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan").field("len", &self.len).finish()
    }
}

/// Receives messages from a pipeline. `Send + Sync`; may hold several messages at once.
///
/// Belongs to the process that attached it: in a fork child, its methods fail with
/// [`RecvError::WrongProcess`] and dropping it does nothing to the queue (the parent's
/// participant entry, lock and held messages stay the parent's); a child attaches its own.
/// Dropping it in its own process detaches it, first making any [`Message`] it leaked
/// (`mem::forget`) deliverable again, flagged [`Message::redelivered`].
pub struct Consumer {
    shared: Arc<Shared>,
    owner: u16,
    wait: WaitStrategy,
    ends: Ends<ConsumerEnd>,
    /// See [`Consumer::set_disconnect_when_alone`].
    disconnect: Disconnect,
    me: Participant,
}

/// A consumer's choice of [`Consumer::set_disconnect_when_alone`], and what it has seen.
#[derive(Default)]
struct Disconnect {
    when_alone: bool,
    /// A producer was attached at one of this consumer's looks, or it received a message,
    /// since the choice was made.
    seen_producer: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("path", &self.shared.mapping.path())
            .field("participant", &self.owner)
            .finish()
    }
}

impl Consumer {
    /// Sets how blocking receives wait for messages (default: spin 20 µs, then park).
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// Sets whether a receive that finds the queue empty while no producer is attached
    /// returns [`RecvError::Disconnected`] instead of waiting (default: `false`, it waits: a
    /// queue file outlives its producers, and one may attach later).
    ///
    /// With it set, every receive ([`recv`](Self::recv), [`try_recv`](Self::try_recv), the
    /// timed, copying and batch ones, [`iter`](Self::iter), which then ends) returns
    /// `Disconnected` when the queue is empty and the participant table holds no producer,
    /// **once this consumer has seen a producer**: one was attached when it looked (it looks
    /// each time it finds the queue empty), or it received a message, since this was set. So
    /// a consumer started before its producers waits for them, and one whose producers sent
    /// and left before it first looked still ends once it has their messages. Every message
    /// a producer committed before detaching is received first. A producer whose process
    /// died counts as attached until it is reaped, which a waiting receive does itself after
    /// [`STALL_CHECK`](crate::STALL_CHECK) without progress. A producer that attaches later
    /// is seen again: the next receive waits for it.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmq-alone-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// # let q = shmq::Pipeline::create(dir.join("q"), &shmq::PipelineOptions::new()).unwrap();
    /// let mut consumer = q.consumer()?;
    /// consumer.set_disconnect_when_alone(true);
    /// let producer = q.producer()?;
    /// producer.send(b"last job")?;
    /// drop(producer);
    /// assert_eq!(&*consumer.recv()?, b"last job");
    /// assert_eq!(consumer.recv().unwrap_err(), shmq::RecvError::Disconnected);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), shmq::Error>(())
    /// ```
    pub fn set_disconnect_when_alone(&mut self, on: bool) {
        self.disconnect = Disconnect {
            when_alone: on,
            ..Disconnect::default()
        };
    }

    /// How many producers are attached to the queue now, in every process (a snapshot of the
    /// participant table). A producer whose process died counts until it is reaped (by an
    /// attach, a stalled wait or [`Pipeline::repair`]).
    pub fn producers(&self) -> usize {
        self.me.count_attached(Role::Producer)
    }

    /// Before a look at the ring: whether, with the disconnection choice made, nothing can
    /// come (no producer attached now, one seen before). Read before the look, so that every
    /// message a detached producer committed is found by it (a producer commits before it
    /// frees its entry, which this load acquires).
    #[inline]
    fn alone(&self) -> bool {
        if !self.disconnect.when_alone {
            return false;
        }
        use std::sync::atomic::Ordering::Relaxed;
        if self.producers() > 0 {
            self.disconnect.seen_producer.store(true, Relaxed);
            return false;
        }
        self.disconnect.seen_producer.load(Relaxed)
    }

    /// `look` at the ring, as a wait's attempt that also ends, with `Some(None)`, when the
    /// queue is empty and nothing can come (see [`alone`](Self::alone)).
    #[inline]
    fn or_alone<'a, C>(
        &'a self,
        mut look: impl FnMut() -> Result<Option<C>, Corruption> + 'a,
    ) -> impl FnMut() -> Result<Option<Option<C>>, Corruption> + 'a {
        move || {
            if let Some(claim) = look()? {
                return Ok(Some(Some(claim)));
            }
            if !self.alone() {
                return Ok(None);
            }
            // Alone: a last look, after the table was read, finds every message committed.
            Ok(Some(look()?))
        }
    }

    /// Receives the next message, verified against its checksum if the queue has them.
    #[inline]
    fn recv_with(&self, deadline: Deadline) -> Result<Message<'_>, Waited<RecvError>> {
        if let Some(ready) = self.take_ready_exclusive() {
            return Ok(ready?);
        }
        self.recv_waiting(deadline)
    }

    /// The exclusive ring's fast path: the message at the head if it is ready now and needs
    /// nothing more than delivering (no checksum to verify, no disconnect rule); `None` sends
    /// the caller down the general path (which looks again). Kept small so that a streaming
    /// consumer's receives overlap their cache misses.
    #[inline(always)]
    fn take_ready_exclusive(&self) -> Option<Result<Message<'_>, RecvError>> {
        if self.shared.checksum || !self.may_look_ahead() {
            return None;
        }
        self.ready_exclusive()
    }

    /// Whether a ready message may be taken without the general path: no disconnect rule to
    /// apply, and this is the process that attached the consumer.
    #[inline(always)]
    fn may_look_ahead(&self) -> bool {
        !self.disconnect.when_alone && self.me.in_own_process()
    }

    /// The exclusive ring's head message if it is ready now, unverified.
    #[inline(always)]
    fn ready_exclusive(&self) -> Option<Result<Message<'_>, RecvError>> {
        let Ends::Exclusive(ring, end) = &self.ends else {
            return None;
        };
        let claim = match lock(end).try_next() {
            Ok(Some(claim)) => claim,
            Ok(None) => return None,
            Err(e) => return Some(Err(RecvError::Corrupt(e))),
        };
        crate::testhook::park_at("consumer-received");
        Some(Ok(self.message(MessageClaim::Exclusive(ring, claim))))
    }

    /// [`recv_with`](Self::recv_with) beyond the fast path: waits, verifies, disconnects.
    #[inline(never)]
    fn recv_waiting(&self, deadline: Deadline) -> Result<Message<'_>, Waited<RecvError>> {
        if self.shared.checksum {
            // The exclusive fast path, verified (out of line here, so that the path without
            // checksums stays as small as it was).
            if self.may_look_ahead() {
                if let Some(ready) = self.ready_exclusive() {
                    return Ok(self.verified(ready?, None)?);
                }
            }
            let msg = self.take_with(deadline)?;
            return Ok(self.verified(msg, None)?);
        }
        self.take_with(deadline)
    }

    /// `msg` if `copy` (or, without a copy, its bytes in the slot) matches the checksum its
    /// producer recorded; else the message is skipped (acknowledged, never handed out, counted
    /// in this consumer's `bad_checksum`) and the error says so.
    #[inline(never)] // keeps the receive path without checksums as small as it was
    fn verified<'a>(
        &'a self,
        msg: Message<'a>,
        copy: Option<&[u8]>,
    ) -> Result<Message<'a>, RecvError> {
        let Some(claim) = msg.claim.as_ref() else {
            return Ok(msg);
        };
        let recorded = claim.check();
        let computed = crc32c::crc32c(copy.unwrap_or_else(|| msg.bytes()));
        if computed == recorded {
            return Ok(msg);
        }
        let len = claim.len();
        msg.discard();
        Err(RecvError::BadChecksum {
            len,
            recorded,
            computed,
        })
    }

    /// Takes the next message off the ring, unverified.
    #[inline]
    fn take_with(&self, deadline: Deadline) -> Result<Message<'_>, Waited<RecvError>> {
        self.me.check_recv()?;
        let claim = match &self.ends {
            Ends::Shared(ring) => {
                let waited = self.shared.wait(
                    &self.me,
                    (|| ring.not_empty(), counter::EMPTY),
                    (self.wait, deadline),
                    self.or_alone(|| ring.try_claim_read(self.owner)),
                );
                let claim = RecvError::from_wait(waited)?;
                MessageClaim::Shared(ring, claim.ok_or(RecvError::Disconnected)?)
            }
            Ends::Exclusive(ring, end) => {
                let mut end = lock(end);
                let waited = self.shared.wait(
                    &self.me,
                    (|| ring.not_empty(), counter::EMPTY),
                    (self.wait, deadline),
                    self.or_alone(|| end.try_next()),
                );
                let claim = RecvError::from_wait(waited)?;
                MessageClaim::Exclusive(ring, claim.ok_or(RecvError::Disconnected)?)
            }
        };
        if self.disconnect.when_alone {
            self.disconnect
                .seen_producer
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        crate::testhook::park_at("consumer-received");
        Ok(self.message(claim))
    }

    /// Wraps a claimed slot in a Message, which releases it when dropped.
    #[inline]
    fn message<'a>(&'a self, claim: MessageClaim<'a>) -> Message<'a> {
        Message {
            consumer: self,
            claim: Some(claim),
        }
    }

    /// The next message ready now, without waiting (a batch's followers).
    #[inline]
    fn try_next(&self) -> Result<Option<MessageClaim<'_>>, Corruption> {
        Ok(match &self.ends {
            Ends::Shared(ring) => ring
                .try_claim_read(self.owner)?
                .map(|c| MessageClaim::Shared(ring, c)),
            // Locked per message, not across `each`, which may use this consumer too.
            Ends::Exclusive(ring, end) => lock(end)
                .try_next()?
                .map(|c| MessageClaim::Exclusive(ring, c)),
        })
    }

    /// Wakes producers parked for room, once for a batch (the exclusive ring's
    /// acknowledgements wake them themselves).
    #[inline]
    fn wake_producers(&self) {
        if let Ends::Shared(ring) = &self.ends {
            ring.not_full().notify();
        }
    }

    /// Receives the next message, waiting while the queue is empty. With
    /// [`PipelineOptions::checksum`], the message's bytes in the slot are verified before it is handed
    /// out (a process that can write the file can still change them afterwards, while you hold
    /// the view: see [`recv_into`](Self::recv_into) for a verified copy).
    ///
    /// # Errors
    /// [`RecvError::Corrupt`] if the shared memory breaks the protocol;
    /// [`RecvError::BadChecksum`] if the queue has checksums and the message fails its own: it
    /// was skipped, and the next receive gets the message after it.
    #[inline]
    pub fn recv(&self) -> Result<Message<'_>, RecvError> {
        self.recv_with(Deadline::Never).map_err(Waited::forever)
    }

    /// Receives the next message if one is ready.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] if none is; [`TryRecvError::Recv`] as for
    /// [`recv`](Self::recv).
    #[inline]
    pub fn try_recv(&self) -> Result<Message<'_>, TryRecvError> {
        self.recv_with(Deadline::Now)
            .map_err(|e| e.or(TryRecvError::Empty))
    }

    /// Receives the next message, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] if none arrived; [`RecvTimeoutError::Recv`] as for
    /// [`recv`](Self::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message<'_>, RecvTimeoutError> {
        self.recv_with(Deadline::after(timeout))
            .map_err(|e| e.or(RecvTimeoutError::Timeout))
    }

    /// Receives the next message by copying it into `buf`, waiting for one, and acknowledges
    /// it; returns its length. The copy reads the shared bytes with atomic word loads, never
    /// through a slice over the mapping: use it (and validate what you got) when the queue's
    /// other writers are not trusted, since a [`Message`] is a view they could change while
    /// you read it. No allocation. With [`PipelineOptions::checksum`], the *copy* is verified (not the
    /// shared bytes, which could change after the check), so what `buf` holds is what was
    /// sent, unless the writer of the file recomputed the checksum.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmq-recv-into-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// let q = shmq::Pipeline::create(dir.join("q"), &shmq::PipelineOptions::new().max_message(64))?;
    /// q.producer()?.send(b"untrusted bytes")?;
    /// let mut buf = [0u8; 64]; // at least max_message
    /// let len = q.consumer()?.recv_into(&mut buf)?; // copied and acknowledged
    /// assert_eq!(&buf[..len], b"untrusted bytes");
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), shmq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`RecvError::BufferTooSmall`] if `buf` is shorter than [`Pipeline::max_message`]
    /// (nothing is received); [`RecvError::BadChecksum`] if the copy fails the message's
    /// checksum (the message is skipped; `buf` holds the altered bytes: do not use them); and
    /// as for [`recv`](Self::recv).
    pub fn recv_into(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
        self.copy_with(buf, Deadline::Never)
            .map_err(Waited::forever)
    }

    /// Like [`recv_into`](Self::recv_into), but fails with [`TryRecvError::Empty`] instead of
    /// waiting.
    ///
    /// # Errors
    /// As for [`recv_into`](Self::recv_into) and [`try_recv`](Self::try_recv).
    pub fn try_recv_into(&self, buf: &mut [u8]) -> Result<usize, TryRecvError> {
        self.copy_with(buf, Deadline::Now)
            .map_err(|e| e.or(TryRecvError::Empty))
    }

    /// Like [`recv_into`](Self::recv_into), waiting at most `timeout`.
    ///
    /// # Errors
    /// As for [`recv_into`](Self::recv_into) and [`recv_timeout`](Self::recv_timeout).
    pub fn recv_into_timeout(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<usize, RecvTimeoutError> {
        self.copy_with(buf, Deadline::after(timeout))
            .map_err(|e| e.or(RecvTimeoutError::Timeout))
    }

    fn copy_with(&self, buf: &mut [u8], deadline: Deadline) -> Result<usize, Waited<RecvError>> {
        let max = self.shared.geometry.max_message as usize;
        if buf.len() < max {
            return Err(Waited::Failed(RecvError::BufferTooSmall {
                len: buf.len(),
                max,
            }));
        }
        let msg = self.take_with(deadline)?;
        let len = msg
            .copy_to(buf)
            .expect("the buffer holds max_message bytes");
        if self.shared.checksum {
            drop(self.verified(msg, Some(&buf[..len]))?); // acknowledged: the copy is out
        }
        Ok(len)
    }

    /// A blocking iterator over the messages: each `next` waits for one, as
    /// [`recv`](Self::recv) does.
    ///
    /// A queue outlives its producers, so by default this iterator never ends by itself. An
    /// error is yielded once, as `Some(Err(e))`, and ends the iteration, so a loop neither
    /// spins on an error that would repeat nor loses it.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmq-iter-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// # let q = shmq::Pipeline::create(dir.join("q"), &shmq::PipelineOptions::new()).unwrap();
    /// let consumer = q.consumer()?;
    /// let producer = q.producer()?;
    /// producer.send_batch(&[b"one", b"two"])?;
    /// let mut got = Vec::new();
    /// for msg in consumer.iter().take(2) {
    ///     got.push(msg?.to_vec()); // dropping the message acknowledges it
    /// }
    /// assert_eq!(got, [b"one", b"two"]);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), shmq::Error>(())
    /// ```
    pub fn iter(&self) -> ConsumerIter<'_> {
        ConsumerIter {
            consumer: self,
            deadline: Deadline::Never,
            done: false,
        }
    }

    /// An iterator over the messages ready now: it ends when the queue is empty (or, as
    /// [`iter`](Self::iter) does, after yielding an error once).
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmq-try-iter-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// # let q = shmq::Pipeline::create(dir.join("q"), &shmq::PipelineOptions::new()).unwrap();
    /// # let producer = q.producer()?;
    /// producer.send_batch(&[b"one", b"two"])?;
    /// let consumer = q.consumer()?;
    /// assert_eq!(consumer.try_iter().count(), 2);
    /// assert_eq!(consumer.try_iter().count(), 0);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), shmq::Error>(())
    /// ```
    pub fn try_iter(&self) -> ConsumerIter<'_> {
        ConsumerIter {
            consumer: self,
            deadline: Deadline::Now,
            done: false,
        }
    }

    /// Waits for a message, then hands it and up to `max - 1` more that are ready to `each`,
    /// acknowledging each after `each` returns, and wakes parked producers once per batch.
    /// Returns how many were handled. `each` sees the [`Message`] (its bytes through `Deref`,
    /// and [`Message::redelivered`]); it cannot keep it. An acknowledgement refused (see
    /// [`Message::ack`]) is not reported here, only counted in
    /// [`RecoveryStats::refused`](crate::RecoveryStats::refused).
    ///
    /// With [`PipelineOptions::checksum`], each message is verified before it is handed to `each`; one
    /// that fails ends the batch with [`RecvError::BadChecksum`] (it is skipped and counted as
    /// for [`recv`](Self::recv); the messages before it were handled and acknowledged).
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmq-batch-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// # let q = shmq::Pipeline::create(dir.join("q"), &shmq::PipelineOptions::new()).unwrap();
    /// # let producer = q.producer()?;
    /// producer.send_batch(&[b"a", b"b", b"c"])?;
    /// let consumer = q.consumer()?;
    /// let mut jobs = Vec::new();
    /// let n = consumer.recv_batch(16, |msg| {
    ///     // A redelivered job may have been half done by a consumer that died.
    ///     jobs.push((msg.to_vec(), msg.redelivered()));
    /// })?;
    /// assert_eq!(n, 3);
    /// assert_eq!(jobs[0], (b"a".to_vec(), false));
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), shmq::Error>(())
    /// ```
    ///
    /// # Errors
    /// As for [`recv`](Self::recv).
    pub fn recv_batch(
        &self,
        max: usize,
        mut each: impl FnMut(&Message<'_>),
    ) -> Result<usize, RecvError> {
        self.me.check_recv()?;
        if max == 0 {
            return Ok(0);
        }
        let first = self.recv()?;
        each(&first);
        first.ack_quietly();
        let mut n = 1;
        while n < max {
            match self.try_next() {
                Ok(Some(claim)) => {
                    // Wrapped in a Message so that a panic in `each` still releases the slot.
                    let mut msg = self.message(claim);
                    if self.shared.checksum {
                        msg = match self.verified(msg, None) {
                            Ok(msg) => msg,
                            Err(e) => {
                                self.wake_producers();
                                return Err(e);
                            }
                        };
                    }
                    each(&msg);
                    msg.ack_quietly();
                    n += 1;
                }
                Ok(None) => break,
                Err(c) => {
                    self.wake_producers();
                    return Err(RecvError::Corrupt(c));
                }
            }
        }
        self.wake_producers();
        Ok(n)
    }
}

/// An iterator over a consumer's messages: see [`Consumer::iter`] and [`Consumer::try_iter`].
#[must_use = "iterators do nothing unless advanced"]
pub struct ConsumerIter<'a> {
    consumer: &'a Consumer,
    deadline: Deadline,
    done: bool,
}

impl<'a> Iterator for ConsumerIter<'a> {
    type Item = Result<Message<'a>, RecvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.consumer.recv_with(self.deadline) {
            Ok(msg) => Some(Ok(msg)),
            Err(Waited::Expired | Waited::Failed(RecvError::Disconnected)) => {
                self.done = true;
                None
            }
            Err(Waited::Failed(e)) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for ConsumerIter<'_> {}

impl fmt::Debug for ConsumerIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerIter")
            .field("blocking", &!self.deadline.is_now())
            .field("done", &self.done)
            .finish()
    }
}

impl<'a> IntoIterator for &'a Consumer {
    type Item = Result<Message<'a>, RecvError>;
    type IntoIter = ConsumerIter<'a>;

    /// [`Consumer::iter`].
    fn into_iter(self) -> ConsumerIter<'a> {
        self.iter()
    }
}

/// A received message. It borrows its slot (zero copy); [`ack`](Self::ack) or dropping it
/// acknowledges the message and frees the slot for producers.
///
/// **A held message holds up producers, not consumers**: other consumers (and this one)
/// receive the messages after it meanwhile, but producers that come round the ring to its
/// slot wait until it is acknowledged. Hold few messages at a time and not for long; to work
/// on one for long, copy it out (`msg.to_vec()`) and acknowledge it, accepting that a crash
/// during the work then loses it.
///
/// In a fork child (a copy inherited from the process that received it) it reads as empty,
/// [`ack`](Self::ack) fails with [`RecvError::WrongProcess`] and dropping it acknowledges
/// nothing: the message stays the parent's.
#[must_use = "dropping a message acknowledges it unread"]
pub struct Message<'a> {
    consumer: &'a Consumer,
    /// Always `Some` until the message is acknowledged.
    claim: Option<MessageClaim<'a>>,
}

/// A received message's claim, on the ring its consumer receives from.
enum MessageClaim<'a> {
    Shared(&'a MpmcRing, ReadClaim),
    Exclusive(&'a ExclusiveRing, exclusive::ReadClaim),
}

impl MessageClaim<'_> {
    /// The message's length.
    fn len(&self) -> usize {
        match self {
            MessageClaim::Shared(_, claim) => claim.len(),
            MessageClaim::Exclusive(_, claim) => claim.len(),
        }
    }

    /// The check word its producer stored (the payload's CRC32C, in a queue with checksums).
    fn check(&self) -> u32 {
        match self {
            MessageClaim::Shared(ring, claim) => ring.check(claim),
            MessageClaim::Exclusive(ring, claim) => ring.check(claim),
        }
    }

    /// Copies the whole message into `dst` (exactly its length) with atomic word loads.
    fn copy_to(&self, dst: &mut [u8]) {
        match self {
            MessageClaim::Shared(ring, claim) => ring.copy_payload(claim, 0, dst),
            MessageClaim::Exclusive(ring, claim) => ring.copy_payload(claim, 0, dst),
        }
    }
}

impl Message<'_> {
    #[inline]
    fn bytes(&self) -> &[u8] {
        if !self.consumer.me.in_own_process() {
            return &[];
        }
        match &self.claim {
            Some(MessageClaim::Shared(ring, claim)) => ring.payload(claim),
            Some(MessageClaim::Exclusive(ring, claim)) => ring.payload(claim),
            None => &[],
        }
    }

    /// The message's bytes, a view into its slot (zero copy): the same as `&*message`. For
    /// peers you do not trust, copy it out instead (see [`copy_to`](Self::copy_to)).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.bytes()
    }

    /// Copies the message into the front of `dst` with atomic word loads (never through a
    /// slice over the mapping; see [`Consumer::recv_into`]) and returns its length, or `None`
    /// if `dst` is shorter than the message (nothing copied). With [`PipelineOptions::checksum`], the
    /// message was verified when it was received, the copy is not verified again: for a
    /// verified copy, receive with [`Consumer::recv_into`].
    pub fn copy_to(&self, dst: &mut [u8]) -> Option<usize> {
        // Like the view, empty in a process other than the one that received it (a fork child).
        let Some(claim) = self
            .claim
            .as_ref()
            .filter(|_| self.consumer.me.in_own_process())
        else {
            return Some(0);
        };
        let dst = dst.get_mut(..claim.len())?;
        claim.copy_to(dst);
        Some(dst.len())
    }

    /// The message copied into a new vector with atomic word loads (see [`copy_to`](Self::copy_to)).
    pub fn copy_to_vec(&self) -> Vec<u8> {
        let len = match &self.claim {
            Some(claim) if self.consumer.me.in_own_process() => claim.len(),
            _ => 0,
        };
        let mut out = vec![0; len];
        self.copy_to(&mut out);
        out
    }

    /// Whether this message was delivered before to a consumer that died without
    /// acknowledging it.
    pub fn redelivered(&self) -> bool {
        match &self.claim {
            Some(MessageClaim::Shared(_, claim)) => claim.redelivered(),
            Some(MessageClaim::Exclusive(_, claim)) => claim.redelivered(),
            None => false,
        }
    }

    /// The message as a plain-old-data value, copied out, if its length is exactly that of `T`.
    pub fn value<T: bytemuck::AnyBitPattern>(&self) -> Option<T> {
        (self.bytes().len() == std::mem::size_of::<T>())
            .then(|| bytemuck::pod_read_unaligned(self.bytes()))
    }

    /// The message as a reference to a plain-old-data value, if its length is exactly that of
    /// `T` and `T` needs no more than 16-byte alignment (payloads are 16-byte aligned).
    pub fn as_value<T: bytemuck::AnyBitPattern>(&self) -> Option<&T> {
        bytemuck::try_from_bytes(self.bytes()).ok()
    }

    /// Acknowledges the message: frees its slot for producers. Dropping the message does the
    /// same, without telling whether it worked.
    ///
    /// # Errors
    /// [`RecvError::ClaimLost`] if the message had been taken back before this (a recovery
    /// pass judged this consumer dead, or another process rewrote the file): it may be
    /// delivered again, flagged [`redelivered`](Self::redelivered). The refusal is counted in
    /// [`RecoveryStats::refused`](crate::RecoveryStats::refused), also when a dropped message
    /// is refused.
    /// [`RecvError::WrongProcess`] in a fork child: nothing is done.
    pub fn ack(mut self) -> Result<(), RecvError> {
        self.consumer.me.check_recv()?;
        if self.release_and_wake() {
            Ok(())
        } else {
            Err(RecvError::ClaimLost)
        }
    }

    /// Acknowledges without waking producers (the caller wakes them once for a batch).
    fn ack_quietly(mut self) {
        self.release();
    }

    /// Frees the slot of a message that failed its checksum without delivering it: counted as
    /// `bad_checksum`, not as received. Wakes producers.
    fn discard(mut self) {
        if !self.consumer.me.in_own_process() {
            return;
        }
        let released = match self.claim.take() {
            None => return,
            Some(MessageClaim::Shared(ring, claim)) => ring.release(claim),
            Some(MessageClaim::Exclusive(ring, claim)) => {
                ring.release(claim);
                true
            }
        };
        self.consumer.me.stats().add(counter::BAD_CHECKSUM, 1);
        if !released {
            self.consumer.shared.count_refused();
        }
        self.consumer.wake_producers();
    }

    /// [`release`](Self::release), then wakes producers parked for room.
    #[inline]
    fn release_and_wake(&mut self) -> bool {
        let released = self.release();
        self.consumer.wake_producers();
        released
    }

    /// Frees the slot; `false` (and counted) if the claim had been taken away. Nothing in a
    /// fork child (the claim is the parent's). The exclusive ring's release also wakes a
    /// parked producer, and is never refused: nobody else recovers a live end.
    #[inline]
    fn release(&mut self) -> bool {
        if !self.consumer.me.in_own_process() {
            return true;
        }
        self.release_here()
    }

    /// [`release`](Self::release) where the caller has checked that this is the consumer's
    /// own process.
    #[inline]
    fn release_here(&mut self) -> bool {
        let released = match self.claim.take() {
            None => return true,
            Some(MessageClaim::Shared(ring, claim)) => ring.release(claim),
            Some(MessageClaim::Exclusive(ring, claim)) => {
                ring.release(claim);
                true
            }
        };
        if released {
            self.consumer.me.stats().add(counter::RECEIVED, 1);
        } else {
            self.consumer.shared.count_refused();
        }
        released
    }
}

impl Deref for Message<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl AsRef<[u8]> for Message<'_> {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl Drop for Message<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.claim.is_some() && self.consumer.me.in_own_process() {
            self.release_here();
            self.consumer.wake_producers();
        }
    }
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("len", &self.bytes().len())
            .field("redelivered", &self.redelivered())
            .finish()
    }
}

impl Drop for Producer {
    /// Detaches: skips the loans this producer leaked, then frees its participant entry.
    fn drop(&mut self) {
        self.shared.detach(&self.me);
    }
}

impl Drop for Consumer {
    /// Detaches: delivers again the messages this consumer leaked, then frees its entry.
    fn drop(&mut self) {
        self.shared.detach(&self.me);
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Pipeline>();
    is::<Producer>();
    is::<Consumer>();
}

/// What the futures of [`crate::asynchronous`] need: the cell each end waits on, what keeps it
/// mapped, and the stall sweep.
impl Producer {
    pub(crate) fn async_cell(&self) -> (WaitCell<'_>, KeepAlive) {
        (self.shared.ring.not_full(), self.shared.mapping.clone())
    }

    pub(crate) fn async_repair(&self) {
        self.shared.repair_quietly();
    }
}

impl Consumer {
    pub(crate) fn async_cell(&self) -> (WaitCell<'_>, KeepAlive) {
        (self.shared.ring.not_empty(), self.shared.mapping.clone())
    }

    pub(crate) fn async_repair(&self) {
        self.shared.repair_quietly();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file left with claims recorded under the id of a free participant entry (by an older
    /// version of shmq, which did not undo leaked claims on detach): `repair()` undoes them.
    #[test]
    fn repair_undoes_claims_recorded_under_a_free_entrys_id() {
        let dir = std::env::temp_dir().join(format!("shmq-free-claims-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let q = Pipeline::create(
            dir.join("q"),
            &PipelineOptions::new().capacity(4).max_message(8),
        )
        .unwrap();
        let producer = q.producer().unwrap();
        let consumer = q.consumer().unwrap();
        producer.send(b"held").unwrap();
        // Entry 9 (id 10) was never attached: claims under its id belong to nobody alive.
        let Ring::Shared(ring) = &q.shared.ring else {
            unreachable!("created without exclusive ends")
        };
        // (Claims have no `Drop`: letting them go is leaking them.)
        let _leaked = ring.try_claim_read(10).unwrap().unwrap();
        let _leaked_too = ring.try_claim_write(10).unwrap().unwrap();
        producer.send(b"behind").unwrap();
        assert!(
            matches!(consumer.try_recv(), Err(TryRecvError::Empty)),
            "wedged"
        );
        // Attach and stall sweeps look at entries in use only; repair looks at free ones too.
        let stats = q.repair().unwrap();
        assert_eq!((stats.redelivered, stats.skipped, stats.reaped), (1, 1, 0));
        let m = consumer.try_recv().unwrap();
        assert!(m.redelivered() && &*m == b"held");
        drop(m);
        let m = consumer.try_recv().unwrap();
        assert!(!m.redelivered() && &*m == b"behind");
        drop(m);
        assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(q.repair().unwrap(), RecoveryStats::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn exclusive_queue(name: &str, capacity: usize) -> (std::path::PathBuf, Pipeline) {
        let dir = std::env::temp_dir().join(format!("shmq-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let options = PipelineOptions::new()
            .capacity(capacity)
            .max_message(64)
            .single_producer()
            .single_consumer();
        let q = Pipeline::create(dir.join("q"), &options).unwrap();
        assert!(q.has_exclusive_ends());
        assert!(Pipeline::open(dir.join("q")).unwrap().has_exclusive_ends());
        (dir, q)
    }

    /// A file with one exclusive flag alone (which no version creates) is refused at open.
    #[test]
    fn a_file_with_one_exclusive_flag_alone_is_refused_at_open() {
        use crate::layout::{PIPELINE_SINGLE_CONSUMER, PIPELINE_SINGLE_PRODUCER};
        let dir = std::env::temp_dir().join(format!("shmq-one-flag-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, flags) in [PIPELINE_SINGLE_PRODUCER, PIPELINE_SINGLE_CONSUMER]
            .into_iter()
            .enumerate()
        {
            let path = dir.join(format!("q{i}"));
            let g = Geometry::pipeline_with_flags(4, 8, 4, flags).unwrap();
            drop(file::create(&path, &g, 0o600, None, |_| {}).unwrap());
            assert!(matches!(
                Pipeline::open(&path),
                Err(Error::Corrupt {
                    problem: Corruption::BadGeometry(_),
                    ..
                })
            ));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_exclusive_flag_without_the_other_is_refused_at_create() {
        for options in [
            PipelineOptions::new().single_producer(),
            PipelineOptions::new().single_consumer(),
        ] {
            let dir = std::env::temp_dir().join(format!("shmq-one-flag-{}", std::process::id()));
            assert!(matches!(
                Pipeline::create(dir.join("q"), &options),
                Err(Error::InvalidOptions(_))
            ));
        }
    }

    /// One producer and one consumer at a time, across handles: the second is refused while
    /// the first lives, and attaches once it detached (its end freed).
    #[test]
    fn exclusive_ends_admit_one_holder_each_until_it_detaches() {
        let (dir, q) = exclusive_queue("excl-ends", 4);
        let p = q.producer().unwrap();
        let c = q.consumer().unwrap();
        assert!(matches!(
            q.producer(),
            Err(Error::EndTaken {
                end: "producer",
                ..
            })
        ));
        assert!(matches!(
            q.consumer(),
            Err(Error::EndTaken {
                end: "consumer",
                ..
            })
        ));
        p.send(b"one").unwrap();
        p.send_batch(&[b"two", b"three"]).unwrap();
        drop(p);
        let p = q.producer().unwrap();
        p.send(b"four").unwrap();
        let mut got = Vec::new();
        assert_eq!(c.recv_batch(8, |m| got.push(m.to_vec())).unwrap(), 4);
        assert_eq!(got, [&b"one"[..], b"two", b"three", b"four"]);
        assert!(matches!(c.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(q.len(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A loan dropped uncommitted leaves nothing visible; one committed is delivered; a message
    /// leaked by a consumer is delivered again, flagged, once that consumer detaches.
    #[test]
    fn exclusive_loans_abandon_and_leaked_messages_come_back_flagged() {
        let (dir, q) = exclusive_queue("excl-leaks", 4);
        let p = q.producer().unwrap();
        let c = q.consumer().unwrap();
        let mut loan = p.loan(4).unwrap();
        loan.copy_from_slice(b"lost");
        drop(loan);
        assert!(matches!(c.try_recv(), Err(TryRecvError::Empty)));
        let mut loan = p.try_loan(4).unwrap();
        loan.copy_from_slice(b"kept");
        assert_eq!(&*loan, b"kept");
        loan.commit().unwrap();
        p.send(b"next").unwrap();
        let m = c.try_recv().unwrap();
        assert!(!m.redelivered() && &*m == b"kept");
        std::mem::forget(m);
        let m = c.try_recv().unwrap();
        assert_eq!(&*m, b"next");
        m.ack().unwrap();
        drop(c);
        assert_eq!(q.recovery_stats().redelivered, 1);
        let c = q.consumer().unwrap();
        let m = c.try_recv().unwrap();
        assert!(m.redelivered() && &*m == b"kept");
        drop(m);
        assert!(matches!(c.try_recv(), Err(TryRecvError::Empty)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A holder token naming no participant in use (a free entry, another generation, an id
    /// out of range: what a corrupt or older file can hold) is taken over by the next attacher,
    /// which recovers the end first; the token is never used as an index unchecked.
    #[test]
    fn a_stale_or_hostile_holder_token_is_taken_over_with_recovery() {
        let (dir, q) = exclusive_queue("excl-stale", 4);
        let Ring::Exclusive(ring) = &q.shared.ring else {
            unreachable!("created with exclusive ends")
        };
        {
            let p = q.producer().unwrap();
            let c = q.consumer().unwrap();
            p.send(b"held").unwrap();
            std::mem::forget(c.try_recv().unwrap());
            // Simulate an end left held by a participant that is gone: forget the handle, so
            // nothing detaches, then free its entry behind its back below.
            std::mem::forget(c);
        }
        let consumer_token = ring.end_holder(End::Consumer);
        assert_ne!(consumer_token, 0);
        for stale in [consumer_token ^ (1 << 16), 0xffff, u64::MAX, 1 << 16] {
            assert!(ring.take_end_from(End::Consumer, ring.end_holder(End::Consumer), stale));
            let c = q.consumer().unwrap();
            assert_ne!(ring.end_holder(End::Consumer), stale);
            let m = c.try_recv().unwrap();
            assert!(m.redelivered() && &*m == b"held");
            std::mem::forget(m);
            std::mem::forget(c);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
