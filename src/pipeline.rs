//! The pipeline (work queue): producers submit messages, each message goes to exactly one
//! consumer.
//!
//! # Guarantees
//!
//! * **Atomic messages.** A consumer receives a message whole and byte-identical to what was
//!   sent, or not at all. A message becomes visible only when its producer commits it.
//! * **Exactly one consumer** receives each message; messages from one producer are received in
//!   the order they were sent (by consumers taken together; with several consumers, two of them
//!   may *process* neighbouring messages in any order).
//! * **Zero copy on receive.** A [`Message`] borrows its slot; [`Message::ack`] or dropping it
//!   acknowledges the message and frees the slot. A held message keeps its slot: when producers
//!   come round the ring to it they wait, so hold few messages at a time and not for long.
//! * **Zero copy on send, in order.** A [`Loan`] is a claimed slot written in place. Messages
//!   are delivered in the order their slots were claimed, so a loan not yet committed at the
//!   head of the ring holds up every consumer, even when later messages are ready: loan late
//!   and commit promptly (see [`Producer::loan`]).
//! * **Refusals are reported.** A commit or acknowledgement whose slot was taken away
//!   meanwhile (recovery judged the participant dead, or another process rewrote the file)
//!   fails with [`SendError::ClaimLost`] / [`RecvError::ClaimLost`] and is counted in
//!   [`RecoveryStats::refused`](crate::RecoveryStats::refused), also when a dropped message's
//!   acknowledgement is refused.
//! * **Persistence.** Committed, unacknowledged messages live in the file: a queue reopened
//!   after every process exited finds them, in order.
//! * **Bounded.** The file's size is fixed at creation; sending and receiving never allocate.
//! * **Blocking without lost wake-ups**, across processes, on shared futexes; a sender pays no
//!   system call when no receiver is parked or about to park, but for one call after a
//!   receiver was killed while parked or 255 were parked at once (see [`WaitStrategy`]).
//!
//! # Trust
//!
//! Every process that can write the queue file is trusted with message *contents*; shmq
//! defends its own memory safety, indices and lengths against any bytes (a corrupt or hostile
//! file gives an error, never undefined behaviour in shmq). A [`Message`] and a [`Loan`] are
//! views into the mapping: a process that ignores the protocol can change those bytes while you
//! hold the view, so for peers you do not trust copy the message out with
//! [`Consumer::recv_into`] or [`Message::copy_to_vec`], which read the shared bytes with atomic
//! word loads, and validate the copy. Who may open the file at all: see
//! [`Options::group`] and `docs/DESIGN.md` section 9.
//!
//! # Example
//!
//! ```
//! # fn main() -> Result<(), shmq::Error> {
//! # let dir = std::env::temp_dir().join(format!("shmq-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # let path = dir.join("thumbnails");
//! let queue = shmq::Pipeline::create(&path, &shmq::Options::new().capacity(1024).max_message(4096))?;
//! let producer = queue.producer()?;             // in the web front-end process
//! producer.send(b"uploads/img-123.jpg")?;
//!
//! let consumer = shmq::Pipeline::open(&path)?.consumer()?;   // in each worker process
//! let job = consumer.recv()?;
//! assert_eq!(&*job, b"uploads/img-123.jpg");  // borrows the slot: zero copy
//! drop(job);                                   // acknowledges it and frees the slot
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(()) }
//! ```

use crate::error::{Error, RecvError, SendError};
use crate::layout::{counter, Geometry, KIND_PIPELINE, RING_CONTROL_OFFSET};
use crate::peers::{Participant, Recoverable, RecoveryStats, Role};
use crate::ring::mpmc::{MpmcRing, ReadClaim, WriteClaim};
use crate::shm::file::{self, Mapping};
use crate::sync::reactor::KeepAlive;
use crate::sync::{Deadline, WaitCell, WaitStrategy};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How to create a queue: its geometry (fixed for the file's life) and its permissions.
#[derive(Debug, Clone)]
pub struct Options {
    capacity: u64,
    max_message: usize,
    max_participants: u32,
    mode: u32,
    group: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            capacity: 1024,
            max_message: 1024,
            max_participants: 64,
            mode: 0o600,
            group: None,
        }
    }
}

impl Options {
    /// Defaults: 1024 slots of up to 1024-byte messages, 64 participants, mode `0600`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The layout a queue created with these options has (its `file_size` is the file's).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] if an option is out of range.
    pub fn geometry(&self) -> Result<Geometry, Error> {
        Geometry::pipeline(
            self.capacity,
            self.max_message as u64,
            self.max_participants,
        )
        .map_err(Error::InvalidOptions)
    }

    /// Number of message slots (any number from 1 to 2^32).
    pub fn capacity(mut self, slots: u64) -> Self {
        self.capacity = slots;
        self
    }

    /// Largest message in bytes (up to 1 GiB). Every slot reserves this much.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Largest number of producers and consumers attached at once (1 to 4095).
    pub fn max_participants(mut self, n: u32) -> Self {
        self.max_participants = n;
        self
    }

    /// File permission bits (default `0o600`); to share the queue with a group, see
    /// [`group`](Self::group). Modes writable by others are refused (`open` would refuse the
    /// file).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Shares the file with group `gid`: created with that group (`fchown`; the creator must
    /// be in it, or be root) and mode `0o660`. `open` accepts another user's file only when it
    /// is group-writable and the opener is in its group, so members of `gid` can use it and
    /// nobody else can. A later [`mode`](Self::mode) may change the bits (e.g. `0o620`).
    pub fn group(mut self, gid: u32) -> Self {
        self.group = Some(gid);
        self.mode = 0o660;
        self
    }
}

struct Shared {
    mapping: Arc<Mapping>,
    ring: MpmcRing,
    geometry: Geometry,
}

impl Recoverable for Shared {
    fn mapping(&self) -> &Arc<Mapping> {
        &self.mapping
    }

    fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Undoes what a dead participant held: its half-written slots are skipped, the messages
    /// it held unacknowledged are delivered again.
    fn recover(&self, owner: u16) -> RecoveryStats {
        let (skipped, redelivered, _) = self.ring.recover(owner, true);
        RecoveryStats {
            skipped,
            redelivered,
            ..RecoveryStats::default()
        }
    }

    fn recount(&self) {
        self.ring.recount_redeliveries();
    }
}

/// A pipeline queue file, mapped. Cheap to clone; attach producers and consumers from it.
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

fn ring_of(mapping: &Arc<Mapping>, g: &Geometry) -> MpmcRing {
    MpmcRing::new(
        mapping.region(),
        RING_CONTROL_OFFSET,
        g.slots_offset as usize,
        g.capacity,
        g.slot_stride as usize,
        g.max_message as usize,
    )
}

impl Pipeline {
    /// Creates a new queue file at `path` (which must not exist).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for out-of-range options; [`Error::Io`] if the file exists, the
    /// directory is not writable, or there is no room for the file (space is reserved now).
    pub fn create(path: impl AsRef<Path>, options: &Options) -> Result<Self, Error> {
        let path = path.as_ref();
        let g = options.geometry()?;
        let mapping = file::create(path, &g, options.mode, options.group, |region| {
            let ring = MpmcRing::new(
                region.clone(),
                RING_CONTROL_OFFSET,
                g.slots_offset as usize,
                g.capacity,
                g.slot_stride as usize,
                g.max_message as usize,
            );
            ring.initialize();
        })?;
        let ring = ring_of(&mapping, &g);
        Ok(Pipeline {
            shared: Arc::new(Shared {
                mapping,
                ring,
                geometry: g,
            }),
        })
    }

    /// Opens an existing queue file, validating everything in its header.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be opened (or is a symbolic link); [`Error::Corrupt`] if it is
    /// not a pipeline of this format version, or its geometry is invalid or does not fit the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let (mapping, g) = file::open(path.as_ref(), KIND_PIPELINE)?;
        let ring = ring_of(&mapping, &g);
        Ok(Pipeline {
            shared: Arc::new(Shared {
                mapping,
                ring,
                geometry: g,
            }),
        })
    }

    /// Attaches a producer.
    ///
    /// # Errors
    /// [`Error::TooManyParticipants`] when the participant table is full.
    pub fn producer(&self) -> Result<Producer, Error> {
        let me = self.shared.attach(Role::Producer)?;
        Ok(Producer {
            owner: me.owner_id(),
            shared: self.shared.clone(),
            me,
            wait: WaitStrategy::default(),
        })
    }

    /// Attaches a consumer.
    ///
    /// # Errors
    /// [`Error::TooManyParticipants`] when the participant table is full.
    pub fn consumer(&self) -> Result<Consumer, Error> {
        let me = self.shared.attach(Role::Consumer)?;
        Ok(Consumer {
            owner: me.owner_id(),
            shared: self.shared.clone(),
            me,
            wait: WaitStrategy::default(),
        })
    }

    /// The queue file's path as given to `create` or `open`.
    pub fn path(&self) -> &Path {
        self.shared.mapping.path()
    }

    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.shared.geometry.capacity
    }

    /// Largest message in bytes.
    pub fn max_message(&self) -> usize {
        self.shared.geometry.max_message as usize
    }

    /// Messages sent (or being written) and not yet taken by a consumer; a snapshot.
    pub fn len(&self) -> u64 {
        self.shared.ring.len()
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
        self.shared.ring.redelivery_pending()
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
    #[allow(dead_code)] // held, not read: dropping it detaches the participant
    me: Participant,
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
    fn ring(&self) -> &MpmcRing {
        &self.shared.ring
    }

    #[inline]
    fn check_len(&self, len: usize) -> Result<(), SendError> {
        let max = self.ring().max_message();
        if len > max {
            return Err(SendError::TooLarge { len, max });
        }
        Ok(())
    }

    #[inline]
    fn claim(&self, deadline: Deadline) -> Result<WriteClaim, SendError> {
        let ring = self.ring();
        let waited = self
            .me
            .waiting_on(ring.not_full(), counter::FULL)
            .wait_or_repair(self.wait, deadline, ring.write_claimer(self.owner), || {
                self.shared.repair_quietly()
            });
        let claim = SendError::from_wait(waited, deadline)?;
        crate::testhook::park_at("producer-claimed");
        Ok(claim)
    }

    #[inline]
    fn write_and_commit(&self, claim: WriteClaim, msg: &[u8]) -> Result<(), SendError> {
        let ring = self.ring();
        ring.write(&claim, 0, msg);
        self.committed(ring.commit(claim, msg.len()))
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
    fn send_with(&self, msg: &[u8], deadline: Deadline) -> Result<(), SendError> {
        self.me.check_send()?;
        self.check_len(msg.len())?;
        let claim = self.claim(deadline)?;
        let result = self.write_and_commit(claim, msg);
        self.ring().not_empty().notify();
        result
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
    }

    /// Sends `msg` if there is room now.
    ///
    /// # Errors
    /// [`SendError::Full`] if there is no room, and as for [`send`](Self::send).
    #[inline]
    pub fn try_send(&self, msg: &[u8]) -> Result<(), SendError> {
        self.send_with(msg, Deadline::Now)
    }

    /// Sends `msg`, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`SendError::Timeout`] if the queue stayed full, and as for [`send`](Self::send).
    pub fn send_timeout(&self, msg: &[u8], timeout: Duration) -> Result<(), SendError> {
        self.send_with(msg, Deadline::after(timeout))
    }

    /// Sends every message of `msgs` in order, waiting for room as needed, and wakes parked
    /// consumers once per batch instead of once per message.
    ///
    /// # Errors
    /// As for [`send`](Self::send); messages before the failing one were sent. A message that
    /// is too large is refused before anything is sent.
    pub fn send_batch(&self, msgs: &[&[u8]]) -> Result<(), SendError> {
        self.me.check_send()?;
        if let Some(big) = msgs.iter().find(|m| m.len() > self.ring().max_message()) {
            return self.check_len(big.len());
        }
        let ring = self.ring();
        for msg in msgs {
            let claim = match ring
                .try_claim_write(self.owner)
                .map_err(SendError::Corrupt)?
            {
                Some(c) => c,
                None => {
                    // Full: let consumers see what we sent before we wait for them.
                    ring.not_empty().notify();
                    self.claim(Deadline::Never)?
                }
            };
            self.write_and_commit(claim, msg)?;
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
    /// ready (and so wait, or get [`RecvError::Empty`]). Prepare the data first, then loan,
    /// fill and commit without doing anything slow in between; if producing a message takes
    /// long, build it in a buffer of your own and [`send`](Self::send) a copy.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmq-loan-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// # let q = shmq::Pipeline::create(dir.join("q"), &shmq::Options::new()).unwrap();
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
    }

    /// Like [`loan`](Self::loan), but fails with [`SendError::Full`] instead of waiting.
    ///
    /// # Errors
    /// As for [`try_send`](Self::try_send).
    pub fn try_loan(&self, len: usize) -> Result<Loan<'_>, SendError> {
        self.loan_with(len, Deadline::Now)
    }

    fn loan_with(&self, len: usize, deadline: Deadline) -> Result<Loan<'_>, SendError> {
        self.me.check_send()?;
        self.check_len(len)?;
        let claim = self.claim(deadline)?;
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
    /// # let q = shmq::Pipeline::create(dir.join("q"), &shmq::Options::new()).unwrap();
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
pub struct Loan<'a> {
    producer: &'a Producer,
    /// Always `Some` until `commit` or `drop` takes it.
    claim: Option<WriteClaim>,
    len: usize,
}

impl Loan<'_> {
    /// Publishes the message. Consumers see all of it or none of it.
    ///
    /// # Errors
    /// [`SendError::ClaimLost`] if the slot was taken away before the commit (a recovery pass
    /// judged this producer dead, or another process rewrote the file): nothing is delivered,
    /// and the refusal is counted in [`RecoveryStats::refused`](crate::RecoveryStats::refused).
    /// [`SendError::WrongProcess`] in a fork child: nothing is done, the loan stays the
    /// parent's.
    pub fn commit(mut self) -> Result<(), SendError> {
        self.producer.me.check_send()?;
        let Some(claim) = self.claim.take() else {
            return Ok(());
        };
        let ring = self.producer.ring();
        let committed = ring.commit(claim, self.len);
        ring.not_empty().notify();
        self.producer.committed(committed)
    }
}

impl Deref for Loan<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        match &self.claim {
            Some(claim) if self.producer.me.in_own_process() => {
                self.producer.ring().written(claim, self.len)
            }
            _ => &[],
        }
    }
}

impl DerefMut for Loan<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.claim {
            Some(claim) if self.producer.me.in_own_process() => {
                self.producer.ring().payload_mut(claim, self.len)
            }
            _ => &mut [],
        }
    }
}

impl Drop for Loan<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.producer.me.in_own_process() {
            return;
        }
        if let Some(claim) = self.claim.take() {
            let ring = self.producer.ring();
            ring.abandon(claim);
            self.producer.me.stats().add(counter::ABANDONED, 1);
            ring.not_empty().notify();
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
    #[allow(dead_code)] // held, not read: dropping it detaches the participant
    me: Participant,
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

    #[inline]
    fn ring(&self) -> &MpmcRing {
        &self.shared.ring
    }

    #[inline]
    fn recv_with(&self, deadline: Deadline) -> Result<Message<'_>, RecvError> {
        self.me.check_recv()?;
        let ring = self.ring();
        let waited = self
            .me
            .waiting_on(ring.not_empty(), counter::EMPTY)
            .wait_or_repair(
                self.wait,
                deadline,
                || ring.try_claim_read(self.owner),
                || self.shared.repair_quietly(),
            );
        let claim = RecvError::from_wait(waited, deadline)?;
        crate::testhook::park_at("consumer-received");
        Ok(self.message(claim))
    }

    /// Wraps a claimed slot in a Message, which releases it when dropped.
    #[inline]
    fn message(&self, claim: ReadClaim) -> Message<'_> {
        Message {
            consumer: self,
            claim: Some(claim),
        }
    }

    /// Receives the next message, waiting while the queue is empty.
    ///
    /// # Errors
    /// [`RecvError::Corrupt`] if the shared memory breaks the protocol.
    #[inline]
    pub fn recv(&self) -> Result<Message<'_>, RecvError> {
        self.recv_with(Deadline::Never)
    }

    /// Receives the next message if one is ready.
    ///
    /// # Errors
    /// [`RecvError::Empty`] if none is, and as for [`recv`](Self::recv).
    #[inline]
    pub fn try_recv(&self) -> Result<Message<'_>, RecvError> {
        self.recv_with(Deadline::Now)
    }

    /// Receives the next message, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`RecvError::Timeout`] if none arrived, and as for [`recv`](Self::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message<'_>, RecvError> {
        self.recv_with(Deadline::after(timeout))
    }

    /// Receives the next message by copying it into `buf`, waiting for one, and acknowledges
    /// it; returns its length. The copy reads the shared bytes with atomic word loads, never
    /// through a slice over the mapping: use it (and validate what you got) when the queue's
    /// other writers are not trusted, since a [`Message`] is a view they could change while
    /// you read it. No allocation.
    ///
    /// # Errors
    /// [`RecvError::BufferTooSmall`] if `buf` is shorter than [`Pipeline::max_message`]
    /// (nothing is received), and as for [`recv`](Self::recv).
    pub fn recv_into(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
        self.copy_with(buf, Deadline::Never)
    }

    /// Like [`recv_into`](Self::recv_into), but fails with [`RecvError::Empty`] instead of
    /// waiting.
    ///
    /// # Errors
    /// As for [`recv_into`](Self::recv_into) and [`try_recv`](Self::try_recv).
    pub fn try_recv_into(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
        self.copy_with(buf, Deadline::Now)
    }

    /// Like [`recv_into`](Self::recv_into), waiting at most `timeout`.
    ///
    /// # Errors
    /// As for [`recv_into`](Self::recv_into) and [`recv_timeout`](Self::recv_timeout).
    pub fn recv_into_timeout(&self, buf: &mut [u8], timeout: Duration) -> Result<usize, RecvError> {
        self.copy_with(buf, Deadline::after(timeout))
    }

    fn copy_with(&self, buf: &mut [u8], deadline: Deadline) -> Result<usize, RecvError> {
        let max = self.ring().max_message();
        if buf.len() < max {
            return Err(RecvError::BufferTooSmall {
                len: buf.len(),
                max,
            });
        }
        let msg = self.recv_with(deadline)?;
        Ok(msg
            .copy_to(buf)
            .expect("the buffer holds max_message bytes"))
    }

    /// Waits for a message, then hands it and up to `max - 1` more that are ready to `each`,
    /// acknowledging each after `each` returns, and wakes parked producers once per batch.
    /// Returns how many were handled. An acknowledgement refused (see [`Message::ack`]) is
    /// not reported here, only counted in
    /// [`RecoveryStats::refused`](crate::RecoveryStats::refused).
    ///
    /// # Errors
    /// As for [`recv`](Self::recv).
    pub fn recv_batch(&self, max: usize, mut each: impl FnMut(&[u8])) -> Result<usize, RecvError> {
        self.me.check_recv()?;
        if max == 0 {
            return Ok(0);
        }
        let ring = self.ring();
        let first = self.recv()?;
        each(&first);
        first.ack_quietly();
        let mut n = 1;
        while n < max {
            match ring.try_claim_read(self.owner) {
                Ok(Some(claim)) => {
                    // Wrapped in a Message so that a panic in `each` still releases the slot.
                    let msg = self.message(claim);
                    each(&msg);
                    msg.ack_quietly();
                    n += 1;
                }
                Ok(None) => break,
                Err(c) => {
                    ring.not_full().notify();
                    return Err(RecvError::Corrupt(c));
                }
            }
        }
        ring.not_full().notify();
        Ok(n)
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
pub struct Message<'a> {
    consumer: &'a Consumer,
    /// Always `Some` until the message is acknowledged.
    claim: Option<ReadClaim>,
}

impl Message<'_> {
    #[inline]
    fn bytes(&self) -> &[u8] {
        match &self.claim {
            Some(claim) if self.consumer.me.in_own_process() => self.consumer.ring().payload(claim),
            _ => &[],
        }
    }

    /// Copies the message into the front of `dst` with atomic word loads (never through a
    /// slice over the mapping; see [`Consumer::recv_into`]) and returns its length, or `None`
    /// if `dst` is shorter than the message (nothing copied).
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
        self.consumer.ring().copy_payload(claim, 0, dst);
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
        self.claim.as_ref().is_some_and(|c| c.redelivered())
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
        let acked = self.release();
        self.consumer.ring().not_full().notify();
        if acked {
            Ok(())
        } else {
            Err(RecvError::ClaimLost)
        }
    }

    /// Acknowledges without waking producers (the caller wakes them once for a batch).
    fn ack_quietly(mut self) {
        self.release();
    }

    /// Frees the slot; `false` (and counted) if the claim had been taken away. Nothing in a
    /// fork child (the claim is the parent's).
    #[inline]
    fn release(&mut self) -> bool {
        if !self.consumer.me.in_own_process() {
            return true;
        }
        let Some(claim) = self.claim.take() else {
            return true;
        };
        let released = self.consumer.ring().release(claim);
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
            self.release();
            self.consumer.ring().not_full().notify();
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
        (self.ring().not_full(), self.shared.mapping.clone())
    }

    pub(crate) fn async_repair(&self) {
        self.shared.repair_quietly();
    }
}

impl Consumer {
    pub(crate) fn async_cell(&self) -> (WaitCell<'_>, KeepAlive) {
        (self.ring().not_empty(), self.shared.mapping.clone())
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
        let q =
            Pipeline::create(dir.join("q"), &Options::new().capacity(4).max_message(8)).unwrap();
        let producer = q.producer().unwrap();
        let consumer = q.consumer().unwrap();
        producer.send(b"held").unwrap();
        // Entry 9 (id 10) was never attached: claims under its id belong to nobody alive.
        let ring = &q.shared.ring;
        // (Claims have no `Drop`: letting them go is leaking them.)
        let _leaked = ring.try_claim_read(10).unwrap().unwrap();
        let _leaked_too = ring.try_claim_write(10).unwrap().unwrap();
        producer.send(b"behind").unwrap();
        assert!(
            matches!(consumer.try_recv(), Err(RecvError::Empty)),
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
        assert!(matches!(consumer.try_recv(), Err(RecvError::Empty)));
        assert_eq!(q.repair().unwrap(), RecoveryStats::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
