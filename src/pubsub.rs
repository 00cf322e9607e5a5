//! Publish-subscribe; its specification is the documentation of [`PubSub`].

use crate::error::{
    Error, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
    Waited,
};
use crate::layout::{
    counter, Geometry, Shape, KIND_PUBSUB, OVERFLOW_BLOCK, OVERFLOW_DROP_OLDEST,
    RING_CONTROL_OFFSET,
};
use crate::peers::{Participant, Recoverable, RecoveryStats, Role};
use crate::ring::broadcast::{BroadcastRing, GateCache, Poll};
use crate::shm::file::{self, Mapping};
use crate::shm::Region;
use crate::stats::OwnStats;
use crate::sync::reactor::KeepAlive;
use crate::sync::{Deadline, WaitCell, WaitStrategy};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What publishers do when the ring is full of messages some subscriber has not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Overwrite the oldest message; slow subscribers get [`RecvError::Lagged`].
    DropOldest,
    /// Wait for the slowest attached subscriber.
    Block,
}

/// How to create a channel. Fixed for the file's life.
#[derive(Debug, Clone)]
pub struct PubSubOptions {
    capacity: usize,
    max_message: usize,
    max_topic: usize,
    max_publishers: usize,
    max_subscribers: usize,
    overflow: Overflow,
    mode: u32,
    group: Option<u32>,
}

impl Default for PubSubOptions {
    fn default() -> Self {
        PubSubOptions {
            capacity: 1024,
            max_message: 1024,
            max_topic: 64,
            max_publishers: 16,
            max_subscribers: 16,
            overflow: Overflow::DropOldest,
            mode: 0o600,
            group: None,
        }
    }
}

impl PubSubOptions {
    /// Defaults: 1024 slots, 1024-byte payloads, 64-byte topics, 16 publishers, 16
    /// subscribers, [`Overflow::DropOldest`], mode `0600`.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The layout a channel created with these options has (its `file_size` is the file's).
    /// The on-file layout is not API: for shmq's own tools and tests.
    #[doc(hidden)]
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] if an option is out of range.
    pub fn geometry(&self) -> Result<Geometry, Error> {
        let max_subscribers = Error::option_u32(self.max_subscribers, "max_subscribers")?;
        let max_participants = Error::option_u32(self.max_publishers, "max_publishers")?
            .checked_add(max_subscribers)
            .ok_or_else(|| Error::InvalidOptions("too many participants".into()))?;
        Geometry::compute(Shape {
            kind: KIND_PUBSUB,
            capacity: self.capacity as u64,
            max_message: self.max_message as u64,
            max_participants,
            flags: match self.overflow {
                Overflow::DropOldest => OVERFLOW_DROP_OLDEST,
                Overflow::Block => OVERFLOW_BLOCK,
            },
            max_topic: Error::option_u32(self.max_topic, "max_topic")?,
            table_entries: max_subscribers,
            reply_capacity: 0,
        })
        .map_err(Error::InvalidOptions)
    }

    /// Number of messages the ring retains (1 to 2^32).
    #[must_use]
    pub fn capacity(mut self, slots: usize) -> Self {
        self.capacity = slots;
        self
    }

    /// Largest payload in bytes.
    #[must_use]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Largest topic in bytes (up to 65535).
    #[must_use]
    pub fn max_topic(mut self, bytes: usize) -> Self {
        self.max_topic = bytes;
        self
    }

    /// Largest number of publishers attached at once.
    #[must_use]
    pub fn max_publishers(mut self, n: usize) -> Self {
        self.max_publishers = n;
        self
    }

    /// Largest number of subscribers attached at once; attaching more is an error.
    #[must_use]
    pub fn max_subscribers(mut self, n: usize) -> Self {
        self.max_subscribers = n;
        self
    }

    /// The overflow mode (default [`Overflow::DropOldest`]).
    #[must_use]
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }
}

file_options!(PubSubOptions, "channel");

struct Shared {
    mapping: Arc<Mapping>,
    ring: BroadcastRing,
    geometry: Geometry,
}

impl Recoverable for Shared {
    fn mapping(&self) -> &Arc<Mapping> {
        &self.mapping
    }

    fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Undoes what a dead participant held: a half-written slot is skipped, a subscription is
    /// detached (it stops holding publishers back).
    fn recover(&self, owner: u16) -> RecoveryStats {
        let (skipped, released) = self.ring.recover(owner);
        RecoveryStats {
            skipped,
            released,
            ..RecoveryStats::default()
        }
    }
}

impl Shared {}

fn ring_of(region: Region, g: &Geometry) -> BroadcastRing {
    BroadcastRing::new(
        region,
        RING_CONTROL_OFFSET,
        g.slots_offset as usize,
        g.capacity,
        g.slot_stride as usize,
        g.max_topic as usize,
        g.max_message as usize,
        g.table_offset as usize,
        g.table_entries,
        g.flags == OVERFLOW_BLOCK,
    )
}

/// A publish-subscribe channel file, mapped. Cheap to clone.
///
/// Publish-subscribe: every subscriber gets every message whose topic it subscribed to.
///
/// A channel is one file holding a broadcast ring. Publishers in any number of processes
/// publish `(topic, payload)` messages; each subscriber reads the ring at its own pace through
/// its own cursor, and keeps the messages whose topic starts with one of its prefixes.
///
/// # What a subscriber receives
///
/// Every message published after it attached whose topic starts with one of its prefixes (an
/// empty prefix list means every topic), in publication order per publisher (and in one global
/// order across publishers: every subscriber sees the same sequence). With
/// [`Subscribe::history`], it starts instead from the oldest message the ring still retains.
///
/// # Overflow
///
/// The mode is fixed when the channel is created ([`PubSubOptions::overflow`]).
///
/// * [`Overflow::DropOldest`]: a publisher never waits. A subscriber that falls more than a ring
///   behind gets `Err(`[`RecvError::Lagged`]`(n))` with the exact number of messages it missed
///   (counting messages of every topic), then continues from the oldest message still retained.
///   It never sees a torn or half-overwritten message: messages are copied out, then the slot is
///   checked not to have been reused during the copy.
/// * [`Overflow::Block`]: no attached subscriber misses anything; a publisher waits (or, with
///   [`Publisher::try_publish`], fails with [`TrySendError::Full`]) until the slowest attached
///   subscriber has read the message it would overwrite. A subscriber that is dropped stops
///   holding publishers back at once; one whose process dies stops holding them back as soon
///   as a waiting publisher's liveness check finds it dead (after
///   [`STALL_CHECK`](crate::STALL_CHECK) of waiting), or on [`PubSub::repair`].
///   [`Publisher::try_publish`] can also report `Full` in drop-oldest mode, only while another
///   publisher, a whole ring behind, is still copying into the slot.
///
/// # Trust
///
/// Every process that can write the channel file is trusted with message *contents*; shmq
/// defends its own memory safety, indices and lengths against any bytes. A subscriber copies
/// every message out of the ring with atomic word loads into its own buffer and re-checks the
/// slot afterwards, so a [`TopicMessage`] never points into the mapping and cannot change under
/// you: subscribers are safe against publishers they do not trust (who can still publish
/// anything, or deny service). See `docs/DESIGN.md` section 9.
///
/// ```
/// # fn main() -> Result<(), shmq::Error> {
/// # let path = std::env::temp_dir().join(format!("shmq-pubsub-doc-{}", std::process::id()));
/// use shmq::{Overflow, PubSub, PubSubOptions, RecvError};
/// let channel = PubSub::create(&path, &PubSubOptions::new().capacity(4096).max_message(512)
///     .overflow(Overflow::DropOldest))?;
/// let publisher = channel.publisher()?;
/// let mut hosts = PubSub::open(&path)?.subscriber(&[b"hosts/".as_slice()])?;
/// publisher.publish(b"jobs/42", b"done")?;          // not a host topic: filtered out
/// publisher.publish(b"hosts/web-3", b"going down for maintenance")?;
/// match hosts.recv() {
///     Ok(msg) => assert_eq!((msg.topic(), msg.payload()),
///                           (&b"hosts/web-3"[..], &b"going down for maintenance"[..])),
///     Err(RecvError::Lagged(n)) => eprintln!("missed {n} messages"),
///     Err(e) => return Err(e.into()),
/// }
/// # PubSub::remove(&path)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PubSub {
    shared: Arc<Shared>,
}

impl fmt::Debug for PubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSub")
            .field("path", &self.shared.mapping.path())
            .field("capacity", &self.shared.geometry.capacity)
            .field("overflow", &self.overflow())
            .finish()
    }
}

impl PubSub {
    /// Creates a new channel file at `path` (which must not exist).
    ///
    /// # Errors
    /// As for [`Pipeline::create`](crate::Pipeline::create).
    pub fn create(path: impl AsRef<Path>, options: &PubSubOptions) -> Result<Self, Error> {
        let g = options.geometry()?;
        let mapping = file::create(path.as_ref(), &g, options.mode, options.group, |region| {
            ring_of(region.clone(), &g).initialize()
        })?;
        let ring = ring_of(mapping.region(), &g);
        Ok(PubSub {
            shared: Arc::new(Shared {
                mapping,
                ring,
                geometry: g,
            }),
        })
    }

    /// Opens an existing channel file, validating everything in its header.
    ///
    /// # Errors
    /// As for [`Pipeline::open`](crate::Pipeline::open).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let (mapping, g) = file::open(path.as_ref(), KIND_PUBSUB)?;
        let ring = ring_of(mapping.region(), &g);
        Ok(PubSub {
            shared: Arc::new(Shared {
                mapping,
                ring,
                geometry: g,
            }),
        })
    }

    /// Removes the channel file's name. Processes that have it mapped keep using it.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be removed.
    pub fn remove(path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        std::fs::remove_file(path).map_err(|e| Error::io(path, "remove", e))
    }

    /// The channel's overflow mode.
    pub fn overflow(&self) -> Overflow {
        if self.shared.ring.is_blocking() {
            Overflow::Block
        } else {
            Overflow::DropOldest
        }
    }

    /// Looks for participants that died and undoes what they held: a message a dead publisher
    /// was writing is skipped, a dead subscriber stops holding publishers back. This also
    /// happens on attach and whenever a blocking call has waited
    /// [`STALL_CHECK`](crate::STALL_CHECK) without progress. Never touches a live participant.
    /// Also undoes what is recorded under the id of a free participant entry (see
    /// [`Pipeline::repair`](crate::Pipeline::repair)).
    ///
    /// # Errors
    /// [`Error::Io`] if the liveness locks cannot be probed.
    pub fn repair(&self) -> Result<RecoveryStats, Error> {
        self.shared.repair()
    }

    /// What recovery has done on this channel over its life, in all processes.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.shared.stats()
    }

    /// Messages published on this channel since it was created.
    pub fn published(&self) -> u64 {
        self.shared.ring.published_count()
    }

    /// Attaches a publisher.
    ///
    /// # Errors
    /// [`Error::TooManyParticipants`] when the participant table is full.
    pub fn publisher(&self) -> Result<Publisher, Error> {
        let me = self.shared.attach(Role::Publisher)?;
        Ok(Publisher {
            owner: me.owner_id(),
            shared: self.shared.clone(),
            gate: GateCache::default(),
            wait: WaitStrategy::default(),
            me,
        })
    }

    /// Attaches a subscriber to the topics starting with any of `prefixes` (all topics if
    /// empty), receiving what is published from now on.
    ///
    /// # Errors
    /// [`Error::TooManyParticipants`] when the subscriber table (or participant table) is full.
    pub fn subscriber(&self, prefixes: &[&[u8]]) -> Result<Subscriber, Error> {
        Subscribe::new(self, prefixes).attach()
    }

    /// Starts building a subscriber with more choices: [`Subscribe::history`] starts it at
    /// the oldest message the ring retains instead of the next one published.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("shmq-subscribe-{}", std::process::id()));
    /// use shmq::{PubSub, PubSubOptions};
    /// let channel = PubSub::create(&path, &PubSubOptions::new().capacity(8))?;
    /// let publisher = channel.publisher()?;
    /// publisher.publish(b"config/db", b"host=10.0.0.7")?; // before anyone subscribed
    /// let mut late = channel.subscribe(&[b"config/".as_slice()]).history().attach()?;
    /// assert_eq!(late.try_recv()?.payload(), b"host=10.0.0.7");
    /// let mut now_on = channel.subscriber(&[b"config/".as_slice()])?;
    /// assert_eq!(now_on.try_recv().unwrap_err(), shmq::TryRecvError::Empty);
    /// # PubSub::remove(&path)?;
    /// # Ok::<(), shmq::Error>(())
    /// ```
    pub fn subscribe<'a>(&'a self, prefixes: &[&[u8]]) -> Subscribe<'a> {
        Subscribe::new(self, prefixes)
    }
}

/// A subscriber being configured; see [`PubSub::subscribe`].
#[derive(Debug)]
#[must_use = "a subscriber is attached only by calling `attach`"]
pub struct Subscribe<'a> {
    channel: &'a PubSub,
    prefixes: Vec<Vec<u8>>,
    history: bool,
}

impl<'a> Subscribe<'a> {
    fn new(channel: &'a PubSub, prefixes: &[&[u8]]) -> Self {
        Subscribe {
            channel,
            prefixes: prefixes.iter().map(|p| p.to_vec()).collect(),
            history: false,
        }
    }

    /// Start from the oldest message the ring still retains instead of the next one published.
    pub fn history(mut self) -> Self {
        self.history = true;
        self
    }

    /// Attaches the subscriber.
    ///
    /// # Errors
    /// [`Error::TooManyParticipants`] when the subscriber table (or participant table) is full.
    pub fn attach(self) -> Result<Subscriber, Error> {
        let shared = &self.channel.shared;
        let me = shared.attach(Role::Subscriber)?;
        let (entry, cursor) = shared
            .ring
            .attach(me.owner_id(), self.history)
            .ok_or_else(|| Error::TooManyParticipants {
                path: shared.mapping.path().to_path_buf(),
                max: shared.geometry.table_entries,
            })?;
        Ok(Subscriber {
            shared: shared.clone(),
            entry,
            cursor,
            prefixes: self.prefixes,
            buf: vec![0; shared.ring.buffer_len()],
            wait: WaitStrategy::default(),
            me,
        })
    }
}

/// Publishes on a channel. `Send + Sync`.
///
/// Belongs to the process that attached it: in a fork child, publishing fails with
/// [`SendError::WrongProcess`] and dropping it does nothing to the channel (the parent's
/// participant entry and lock stay the parent's); a child attaches its own.
pub struct Publisher {
    shared: Arc<Shared>,
    owner: u16,
    gate: GateCache,
    wait: WaitStrategy,
    me: Participant,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("path", &self.shared.mapping.path())
            .field("participant", &self.owner)
            .finish()
    }
}

impl Publisher {
    /// Sets how blocking publishes wait (Block mode only; default: spin 20 µs, then park).
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    #[inline]
    fn publish_with(
        &self,
        topic: &[u8],
        payload: &[u8],
        deadline: Deadline,
    ) -> Result<(), Waited<SendError>> {
        self.me.check_send()?;
        let ring = &self.shared.ring;
        if topic.len() > ring.max_topic() {
            return Err(Waited::Failed(SendError::TopicTooLarge {
                len: topic.len(),
                max: ring.max_topic(),
            }));
        }
        if payload.len() > ring.max_message() {
            return Err(Waited::Failed(SendError::TooLarge {
                len: payload.len(),
                max: ring.max_message(),
            }));
        }
        let waited = self
            .me
            .waiting_on(ring.consumed(), counter::FULL)
            .wait_or_repair(
                self.wait,
                deadline,
                || ring.try_claim(self.owner, &self.gate),
                || self.shared.repair_quietly(),
            );
        let claim = SendError::from_wait(waited)?;
        crate::testhook::park_at("publisher-claimed");
        let committed = ring.write_and_commit(claim, topic, payload);
        // Subscribers wait for the message; a publisher a whole ring ahead may be waiting for
        // this slot to be finished. One fence serves both.
        WaitCell::notify_both(&ring.published(), &ring.consumed());
        if committed {
            self.me.stats().add(counter::SENT, 1);
            Ok(())
        } else {
            // A recovery pass (or another process writing the file) took the slot away.
            self.shared.count_refused();
            Err(Waited::Failed(SendError::ClaimLost))
        }
    }

    /// Publishes `payload` under `topic`. In Block mode, waits for room.
    ///
    /// # Errors
    /// [`SendError::TooLarge`] / [`SendError::TopicTooLarge`] (nothing is published);
    /// [`SendError::ClaimLost`] if the claimed slot was taken away before the commit (nothing
    /// is published); [`SendError::Corrupt`] if the shared memory breaks the protocol.
    #[inline]
    pub fn publish(&self, topic: &[u8], payload: &[u8]) -> Result<(), SendError> {
        self.publish_with(topic, payload, Deadline::Never)
            .map_err(Waited::forever)
    }

    /// Publishes if that needs no waiting.
    ///
    /// # Errors
    /// [`TrySendError::Full`] in Block mode when the slowest subscriber is a ring behind (and,
    /// in drop-oldest mode, only while another publisher a whole ring behind is still copying
    /// into the slot); [`TrySendError::Send`] as for [`publish`](Self::publish).
    #[inline]
    pub fn try_publish(&self, topic: &[u8], payload: &[u8]) -> Result<(), TrySendError> {
        self.publish_with(topic, payload, Deadline::Now)
            .map_err(|e| e.or(TrySendError::Full))
    }

    /// Publishes, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`]; [`SendTimeoutError::Send`] as for
    /// [`publish`](Self::publish).
    pub fn publish_timeout(
        &self,
        topic: &[u8],
        payload: &[u8],
        timeout: Duration,
    ) -> Result<(), SendTimeoutError> {
        self.publish_with(topic, payload, Deadline::after(timeout))
            .map_err(|e| e.or(SendTimeoutError::Timeout))
    }
}

/// Receives a channel's messages. Dropping it detaches it (it stops holding publishers back).
///
/// Belongs to the process that attached it: in a fork child, receiving fails with
/// [`RecvError::WrongProcess`] and dropping it does nothing to the channel (the parent's
/// subscription, participant entry and lock stay the parent's); a child attaches its own.
pub struct Subscriber {
    shared: Arc<Shared>,
    entry: u32,
    cursor: u64,
    prefixes: Vec<Vec<u8>>,
    buf: Vec<u8>,
    wait: WaitStrategy,
    me: Participant,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("path", &self.shared.mapping.path())
            .field("cursor", &self.cursor)
            .finish()
    }
}

/// A received publish-subscribe message, borrowed from the subscriber's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct TopicMessage<'a> {
    topic: &'a [u8],
    payload: &'a [u8],
}

impl<'a> TopicMessage<'a> {
    /// The message's topic.
    #[inline]
    pub fn topic(&self) -> &'a [u8] {
        self.topic
    }

    /// The message's payload (also what the message dereferences to).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The message copied into one new allocation, to keep it past the next receive.
    pub fn to_owned_message(&self) -> TopicMessageBuf {
        let mut bytes = Vec::with_capacity(self.topic.len() + self.payload.len());
        bytes.extend_from_slice(self.topic);
        bytes.extend_from_slice(self.payload);
        TopicMessageBuf {
            bytes,
            topic_len: self.topic.len(),
        }
    }
}

impl std::ops::Deref for TopicMessage<'_> {
    type Target = [u8];
    /// The payload.
    #[inline]
    fn deref(&self) -> &[u8] {
        self.payload
    }
}

impl AsRef<[u8]> for TopicMessage<'_> {
    /// The payload.
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.payload
    }
}

/// A publish-subscribe message that owns its bytes: what [`Subscriber::iter`] and
/// [`Subscriber::try_iter`] yield, and [`TopicMessage::to_owned_message`] makes. Its topic and
/// payload share one allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[must_use]
pub struct TopicMessageBuf {
    bytes: Vec<u8>,
    topic_len: usize,
}

impl TopicMessageBuf {
    /// The message's topic.
    #[inline]
    pub fn topic(&self) -> &[u8] {
        &self.bytes[..self.topic_len]
    }

    /// The message's payload (also what the message dereferences to).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.topic_len..]
    }

    /// Borrows it as a [`TopicMessage`].
    pub fn as_message(&self) -> TopicMessage<'_> {
        TopicMessage {
            topic: self.topic(),
            payload: self.payload(),
        }
    }
}

impl std::ops::Deref for TopicMessageBuf {
    type Target = [u8];
    /// The payload.
    #[inline]
    fn deref(&self) -> &[u8] {
        self.payload()
    }
}

impl AsRef<[u8]> for TopicMessageBuf {
    /// The payload.
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.payload()
    }
}

/// An iterator over a subscriber's messages, each copied out: see [`Subscriber::iter`] and
/// [`Subscriber::try_iter`].
#[must_use = "iterators do nothing unless advanced"]
pub struct SubscriberIter<'a> {
    subscriber: &'a mut Subscriber,
    deadline: Deadline,
    done: bool,
}

impl Iterator for SubscriberIter<'_> {
    type Item = Result<TopicMessageBuf, RecvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.subscriber.recv_with(self.deadline) {
            Ok(msg) => Some(Ok(msg.to_owned_message())),
            // Not an end: the next receive continues from the oldest message retained.
            Err(Waited::Failed(e @ RecvError::Lagged(_))) => Some(Err(e)),
            Err(Waited::Expired) => {
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

impl std::iter::FusedIterator for SubscriberIter<'_> {}

impl fmt::Debug for SubscriberIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriberIter")
            .field("blocking", &!self.deadline.is_now())
            .field("done", &self.done)
            .finish()
    }
}

impl Subscriber {
    /// Sets how blocking receives wait (default: spin 20 µs, then park).
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// How many publishers are attached to the channel now, in every process (a snapshot of
    /// the participant table; one whose process died counts until it is reaped).
    pub fn publishers(&self) -> usize {
        self.me.count_attached(Role::Publisher)
    }

    /// The position of the next message this subscriber will look at (messages published on
    /// the channel before it are behind it).
    pub fn position(&self) -> u64 {
        self.cursor
    }

    #[inline]
    fn recv_with(&mut self, deadline: Deadline) -> Result<TopicMessage<'_>, Waited<RecvError>> {
        self.me.check_recv()?;
        let ring = &self.shared.ring;
        let (cursor, buf, prefixes, entry) =
            (&mut self.cursor, &mut self.buf, &self.prefixes, self.entry);
        let shared = &self.shared;
        let repair = || shared.repair_quietly();
        let stats = self.me.stats();
        let found = self
            .me
            .waiting_on(ring.published(), counter::EMPTY)
            .wait_or_repair(
                self.wait,
                deadline,
                || next_wanted(ring, cursor, buf, prefixes, entry, stats),
                repair,
            );
        Ok(self.found(Waited::of(found)?))
    }

    /// The message that [`next_wanted`] left in the buffer (its topic and payload lengths).
    #[inline]
    pub(crate) fn found(&self, (topic_len, len): (usize, usize)) -> TopicMessage<'_> {
        let body = self.shared.ring.body_offset();
        TopicMessage {
            topic: &self.buf[..topic_len],
            payload: &self.buf[body..body + len],
        }
    }

    /// A blocking iterator over the messages of the subscribed topics, each copied into a
    /// [`TopicMessageBuf`] of its own (one allocation per message; to receive without
    /// allocating, loop on [`recv`](Self::recv), whose [`TopicMessage`] borrows the
    /// subscriber's buffer and so cannot be an iterator's item).
    ///
    /// [`RecvError::Lagged`] is yielded and the iteration goes on from the oldest message
    /// retained; any other error is yielded once and ends it. A channel outlives its
    /// publishers, so it never ends by itself.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("shmq-sub-iter-{}", std::process::id()));
    /// use shmq::{PubSub, PubSubOptions};
    /// let channel = PubSub::create(&path, &PubSubOptions::new())?;
    /// let mut subscriber = channel.subscriber(&[b"prices/".as_slice()])?;
    /// let publisher = channel.publisher()?;
    /// publisher.publish(b"prices/eur", b"1.08")?;
    /// publisher.publish(b"news/eur", b"ignored")?;
    /// publisher.publish(b"prices/gbp", b"1.27")?;
    /// let kept: Vec<_> = subscriber.iter().take(2).collect::<Result<_, _>>()?;
    /// assert_eq!((kept[1].topic(), &*kept[1]), (&b"prices/gbp"[..], &b"1.27"[..]));
    /// # PubSub::remove(&path)?;
    /// # Ok::<(), shmq::Error>(())
    /// ```
    pub fn iter(&mut self) -> SubscriberIter<'_> {
        SubscriberIter {
            subscriber: self,
            deadline: Deadline::Never,
            done: false,
        }
    }

    /// An iterator over the messages ready now, copied out as [`iter`](Self::iter)'s are; it
    /// ends when none is ready.
    pub fn try_iter(&mut self) -> SubscriberIter<'_> {
        SubscriberIter {
            subscriber: self,
            deadline: Deadline::Now,
            done: false,
        }
    }

    /// Receives the next message of a subscribed topic, waiting for one.
    ///
    /// # Errors
    /// [`RecvError::Lagged`]`(n)` (drop-oldest mode) if messages were lost: `n` of them, of
    /// every topic (not only the subscribed ones, whose share is unknown); the next call
    /// continues from the oldest retained one. [`RecvError::Corrupt`] if shared memory breaks the protocol.
    #[inline]
    pub fn recv(&mut self) -> Result<TopicMessage<'_>, RecvError> {
        self.recv_with(Deadline::Never).map_err(Waited::forever)
    }

    /// Receives the next message if one is ready.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`]; [`TryRecvError::Recv`] as for [`recv`](Self::recv).
    #[inline]
    pub fn try_recv(&mut self) -> Result<TopicMessage<'_>, TryRecvError> {
        self.recv_with(Deadline::Now)
            .map_err(|e| e.or(TryRecvError::Empty))
    }

    /// Receives the next message, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`]; [`RecvTimeoutError::Recv`] as for [`recv`](Self::recv).
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<TopicMessage<'_>, RecvTimeoutError> {
        self.recv_with(Deadline::after(timeout))
            .map_err(|e| e.or(RecvTimeoutError::Timeout))
    }
}

impl Drop for Subscriber {
    /// Detaches: the subscription stops holding publishers back, then the participant entry is
    /// freed. Nothing in a fork child.
    fn drop(&mut self) {
        if self.me.in_own_process() {
            self.shared.ring.detach(self.entry);
        }
        self.shared.detach(&self.me);
    }
}

impl Drop for Publisher {
    /// Detaches: a slot this publisher left half-written is skipped, then its entry is freed.
    fn drop(&mut self) {
        self.shared.detach(&self.me);
    }
}

/// One non-blocking look for the next message of a subscribed topic: copies it into `buf` and
/// returns its topic and payload lengths, skipping messages of other topics.
#[inline]
fn next_wanted(
    ring: &BroadcastRing,
    cursor: &mut u64,
    buf: &mut [u8],
    prefixes: &[Vec<u8>],
    entry: u32,
    stats: OwnStats<'_>,
) -> Result<Option<(usize, usize)>, RecvError> {
    loop {
        let before = *cursor;
        let polled = ring.poll(cursor, buf);
        if *cursor != before {
            // Publish progress only: Block-mode publishers gate on it.
            ring.store_cursor(entry, *cursor);
        }
        match polled.map_err(RecvError::Corrupt)? {
            Poll::Empty => return Ok(None),
            Poll::Lagged(n) => {
                stats.add(counter::LAGGED, n);
                return Err(RecvError::Lagged(n));
            }
            Poll::Message { topic_len, len } => {
                let topic = &buf[..topic_len];
                if prefixes.is_empty() || prefixes.iter().any(|p| topic.starts_with(p)) {
                    stats.add(counter::RECEIVED, 1);
                    return Ok(Some((topic_len, len)));
                }
            }
        }
    }
}

/// What the futures of [`crate::asynchronous`] need: the cell each end waits on, what keeps it
/// mapped, the stall sweep, and (for a subscriber) a look that leaves the message in the
/// buffer without borrowing it, so that a pending future can look again.
impl Publisher {
    pub(crate) fn async_cell(&self) -> (WaitCell<'_>, KeepAlive) {
        (self.shared.ring.consumed(), self.shared.mapping.clone())
    }

    pub(crate) fn async_repair(&self) {
        self.shared.repair_quietly();
    }
}

impl Subscriber {
    pub(crate) fn async_cell(&self) -> (WaitCell<'_>, KeepAlive) {
        (self.shared.ring.published(), self.shared.mapping.clone())
    }

    pub(crate) fn async_repair(&self) {
        self.shared.repair_quietly();
    }

    /// One non-blocking look; the message found is then `found`.
    pub(crate) fn async_look(&mut self) -> Result<Option<(usize, usize)>, RecvError> {
        self.me.check_recv()?;
        let stats = self.me.stats();
        let ring = &self.shared.ring;
        next_wanted(
            ring,
            &mut self.cursor,
            &mut self.buf,
            &self.prefixes,
            self.entry,
            stats,
        )
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<PubSub>();
    is::<Publisher>();
    is::<Subscriber>();
}
