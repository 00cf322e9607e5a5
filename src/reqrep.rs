//! Request-reply: clients send requests that are spread over the attached servers; each reply
//! is routed back to the client that asked.
//!
//! # How it works
//!
//! A service file holds one request ring (multi-producer, multi-consumer: every client sends
//! into it, every server takes from it, so load spreads over however many servers are
//! attached) and a table of client entries, each with its own reply ring (many servers write
//! it, its client alone reads it).
//!
//! * A client attaches by claiming a free client entry, which bumps the entry's *generation*.
//! * Every request carries an envelope: the client's entry index, that generation, and a
//!   correlation id unique within the client.
//! * A server that replies checks that the entry still has that generation and is attached;
//!   if not (the client left, and its entry may belong to someone else now), the reply is
//!   dropped. The client checks the generation again when it reads a reply, so a reply that
//!   raced with a detach and attach is discarded there: **a reply never reaches the wrong client**.
//! * A server writes the reply before it acknowledges the request, so a reply is never lost
//!   to a server that dies in between (crash recovery will deliver such a request again; the
//!   client drops the second reply by its correlation id).
//!
//! # Many requests in flight
//!
//! [`Client::send`] returns a [`Pending`] ticket at once; [`Client::wait`] waits for that
//! ticket's reply. Replies may arrive in any order: a reply to another outstanding request
//! that arrives while waiting is copied into a buffer the client allocated when it attached
//! (`reply_capacity × max_message` bytes) and its slot is freed at once, so it never holds up
//! the reply ring; the reply waited for is returned in its slot, without copying. A client may
//! have at most `reply_capacity` requests outstanding or kept, so servers never find a reply
//! ring full; one more is [`SendError::Full`].
//!
//! A server that drops a request without replying sends a "no reply" notice instead, so the
//! client's wait ends with [`RecvError::NoReply`] rather than a timeout.
//!
//! # Trust
//!
//! Every process that can write the service file is trusted with request and reply
//! *contents*; shmq defends its own memory safety, indices and lengths against any bytes.
//! [`Request::payload`] and [`Reply::payload`] are views into the mapping that a process
//! ignoring the protocol can change while you read them; for peers you do not trust, copy them
//! out with [`Request::copy_to_vec`] and [`Reply::copy_to_vec`] (atomic word loads, never a
//! slice over the mapping) and validate the copy. See `docs/DESIGN.md` section 9.
//!
//! # Timeouts
//!
//! [`Client::request_timeout`] and [`Client::wait_timeout`] give up with
//! [`RecvError::Timeout`]. The request stays counted as outstanding until its reply arrives,
//! which is then discarded: a late reply is never handed to a later request.
//!
//! ```
//! # fn main() -> Result<(), shmq::Error> {
//! # let path = std::env::temp_dir().join(format!("shmq-reqrep-doc-{}", std::process::id()));
//! use shmq::{Service, ServiceOptions};
//! let service = Service::create(&path, &ServiceOptions::new().max_clients(64).max_message(4096))?;
//! let server = service.server()?;                    // in each server process
//! let mut client = Service::open(&path)?.client()?;  // in each client process
//!
//! let pending = client.send(b"img-123 128x128")?;
//! let request = server.recv()?;                      // each request goes to one server
//! let reply = [request.payload(), b" done"].concat();
//! request.reply(&reply)?;                            // routed to the client that asked
//! assert_eq!(client.wait(pending)?.payload(), b"img-123 128x128 done");
//! # Service::remove(&path)?;
//! # Ok(()) }
//! ```

use crate::error::{Corruption, Error, RecvError, SendError};
use crate::layout::{
    Envelope, Geometry, Shape, ENVELOPE_SIZE, KIND_SERVICE, RING_CONTROL_OFFSET, RING_CONTROL_SIZE,
    TABLE_ENTRY_SIZE,
};
use crate::peers::{Participant, Recoverable, RecoveryStats, Role};
use crate::ring::mpmc::{MpmcRing, ReadClaim, WriteClaim};
use crate::shm::file::{self, Mapping};
use crate::shm::Region;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Deadline, WaitStrategy};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Client entry state: bits 0..12 the owner's participant id, bit 12 attached, bits 16.. the
/// generation.
const CLIENT_ATTACHED: u64 = 1 << 12;
const CLIENT_OWNER_MASK: u64 = 0xfff;
const CLIENT_GEN_SHIFT: u32 = 16;

/// Envelope flag of a reply: the server dropped the request without replying.
const FLAG_NO_REPLY: u32 = 1;

/// How long a server waits for room in a client's reply ring before dropping the reply. A
/// client never has more requests outstanding than its ring has slots, so this only happens
/// when the client misbehaves or its entry was reused.
const REPLY_ROOM_TIMEOUT: Duration = Duration::from_secs(1);

/// How to create a service. Fixed for the file's life.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    request_capacity: u64,
    reply_capacity: u64,
    max_message: usize,
    max_clients: u32,
    max_servers: u32,
    mode: u32,
    group: Option<u32>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            request_capacity: 1024,
            reply_capacity: 64,
            max_message: 1024,
            max_clients: 64,
            max_servers: 64,
            mode: 0o600,
            group: None,
        }
    }
}

impl ServiceOptions {
    /// Defaults: 1024 request slots, 64 reply slots per client, 1024-byte messages, 64 clients,
    /// 64 servers, mode `0600`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Slots in the shared request ring.
    pub fn request_capacity(mut self, slots: u64) -> Self {
        self.request_capacity = slots;
        self
    }

    /// Slots in each client's reply ring: the most requests a client may have outstanding.
    pub fn reply_capacity(mut self, slots: u64) -> Self {
        self.reply_capacity = slots;
        self
    }

    /// Largest request or reply payload in bytes.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Largest number of clients attached at once; attaching more is an error.
    pub fn max_clients(mut self, n: u32) -> Self {
        self.max_clients = n;
        self
    }

    /// Largest number of servers attached at once.
    pub fn max_servers(mut self, n: u32) -> Self {
        self.max_servers = n;
        self
    }

    /// File permission bits (default `0o600`); to share the file with a group, see
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
    region: Region,
    requests: MpmcRing,
    replies: Vec<MpmcRing>,
    geometry: Geometry,
}

/// The request ring and every client's reply ring, over `region`.
fn rings(region: &Region, g: &Geometry) -> (MpmcRing, Vec<MpmcRing>) {
    let ring_max = g.max_message as usize + ENVELOPE_SIZE;
    let ring_at = |ctl: usize, slots: usize, capacity: u64| {
        MpmcRing::new(
            region.clone(),
            ctl,
            slots,
            capacity,
            g.slot_stride as usize,
            ring_max,
        )
    };
    let requests = ring_at(RING_CONTROL_OFFSET, g.slots_offset as usize, g.capacity);
    let replies = (0..g.table_entries)
        .map(|i| {
            let block = g.reply_block(i) as usize;
            ring_at(block, block + RING_CONTROL_SIZE, g.reply_capacity)
        })
        .collect();
    (requests, replies)
}

impl Recoverable for Shared {
    fn mapping(&self) -> &Arc<Mapping> {
        &self.mapping
    }

    fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Undoes what a dead participant held: a request or reply it was writing is skipped; a
    /// request it held unanswered (a server) is delivered again to another server; its client
    /// entry (a client) is detached, so replies to it are dropped, and the replies it held are
    /// freed.
    fn recover(&self, owner: u16) -> RecoveryStats {
        let (skipped, redelivered, _) = self.requests.recover(owner, true);
        let mut stats = RecoveryStats {
            skipped,
            redelivered,
            ..RecoveryStats::default()
        };
        for ring in &self.replies {
            let (skipped, _, freed) = ring.recover(owner, false);
            stats.skipped += skipped;
            stats.released += freed;
        }
        for index in 0..self.geometry.table_entries {
            let state = self.client_state(index);
            let old = state.load(Ordering::Acquire);
            if old & CLIENT_ATTACHED != 0 && old & CLIENT_OWNER_MASK == u64::from(owner) {
                let detached = old & !(CLIENT_ATTACHED | CLIENT_OWNER_MASK);
                if state
                    .compare_exchange(old, detached, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    stats.released += 1;
                }
            }
        }
        stats
    }
}

impl Shared {
    fn new(mapping: Arc<Mapping>, g: Geometry) -> Self {
        let region = mapping.region();
        let (requests, replies) = rings(&region, &g);
        Shared {
            mapping,
            region,
            requests,
            replies,
            geometry: g,
        }
    }

    fn client_state(&self, index: u32) -> &AtomicU64 {
        self.region
            .u64_at(self.geometry.table_offset as usize + index as usize * TABLE_ENTRY_SIZE)
    }

    fn max_message(&self) -> usize {
        self.geometry.max_message as usize
    }

    fn check_len(&self, len: usize) -> Result<(), SendError> {
        if len > self.max_message() {
            return Err(SendError::TooLarge {
                len,
                max: self.max_message(),
            });
        }
        Ok(())
    }
}

/// Writes `envelope` and `payload` into a claimed slot of `ring` and commits it.
fn put(
    ring: &MpmcRing,
    claim: WriteClaim,
    envelope: &Envelope,
    payload: &[u8],
) -> Result<(), SendError> {
    ring.write(&claim, 0, bytemuck::bytes_of(envelope));
    ring.write(&claim, ENVELOPE_SIZE, payload);
    if ring.commit(claim, ENVELOPE_SIZE + payload.len()) {
        Ok(())
    } else {
        Err(SendError::Corrupt(Corruption::BadState(
            "a claimed slot changed under its writer",
        )))
    }
}

/// Reads the envelope in front of a held message; `None` if the message is too short to
/// have one (a corrupt file).
fn envelope_of(ring: &MpmcRing, claim: &ReadClaim) -> Option<Envelope> {
    if claim.len() < ENVELOPE_SIZE {
        return None;
    }
    let mut bytes = [0u8; ENVELOPE_SIZE];
    ring.copy_payload(claim, 0, &mut bytes);
    Some(bytemuck::pod_read_unaligned(&bytes))
}

/// Copies a held message's payload (after its envelope) out with atomic word loads.
fn copy_after_envelope(ring: &MpmcRing, claim: &ReadClaim) -> Vec<u8> {
    let mut out = vec![0; claim.len().saturating_sub(ENVELOPE_SIZE)];
    if !out.is_empty() {
        ring.copy_payload(claim, ENVELOPE_SIZE, &mut out);
    }
    out
}

/// A request-reply service file, mapped. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    shared: Arc<Shared>,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("path", &self.shared.mapping.path())
            .field("max_clients", &self.shared.geometry.table_entries)
            .finish()
    }
}

impl Service {
    /// Creates a new service file at `path` (which must not exist).
    ///
    /// # Errors
    /// As for [`Pipeline::create`](crate::Pipeline::create).
    pub fn create(path: impl AsRef<Path>, options: &ServiceOptions) -> Result<Self, Error> {
        let max_participants = options
            .max_clients
            .checked_add(options.max_servers)
            .ok_or_else(|| Error::InvalidOptions("too many participants".into()))?;
        let g = Geometry::compute(Shape {
            kind: KIND_SERVICE,
            capacity: options.request_capacity,
            max_message: options.max_message as u64,
            max_participants,
            flags: 0,
            max_topic: 0,
            table_entries: options.max_clients,
            reply_capacity: options.reply_capacity,
        })
        .map_err(Error::InvalidOptions)?;
        let mapping = file::create(path.as_ref(), &g, options.mode, options.group, |region| {
            let (requests, replies) = rings(region, &g);
            requests.initialize();
            replies.iter().for_each(MpmcRing::initialize);
        })?;
        Ok(Service {
            shared: Arc::new(Shared::new(mapping, g)),
        })
    }

    /// Opens an existing service file, validating everything in its header.
    ///
    /// # Errors
    /// As for [`Pipeline::open`](crate::Pipeline::open).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let (mapping, g) = file::open(path.as_ref(), KIND_SERVICE)?;
        Ok(Service {
            shared: Arc::new(Shared::new(mapping, g)),
        })
    }

    /// Removes the service file's name. Processes that have it mapped keep using it.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be removed.
    pub fn remove(path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        std::fs::remove_file(path).map_err(|e| Error::io(path, "remove", e))
    }

    /// Looks for participants that died and undoes what they held: a request a dead server
    /// took is delivered again to another server (flagged [`Request::redelivered`]); a dead
    /// client's entry returns to the pool and replies to it are dropped. This also happens on
    /// attach and whenever a blocking call has waited [`STALL_CHECK`](crate::STALL_CHECK)
    /// without progress. Never touches a live participant.
    ///
    /// # Errors
    /// [`Error::Io`] if the liveness locks cannot be probed.
    pub fn repair(&self) -> Result<RecoveryStats, Error> {
        self.shared.repair()
    }

    /// What recovery has done on this service over its life, in all processes.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.shared.stats()
    }

    /// Requests waiting for a server (a snapshot).
    pub fn queued_requests(&self) -> u64 {
        self.shared.requests.len()
    }

    /// Attaches a server.
    ///
    /// # Errors
    /// [`Error::TooManyParticipants`] when the participant table is full.
    pub fn server(&self) -> Result<Server, Error> {
        let me = self.shared.attach(Role::Server)?;
        Ok(Server {
            owner: me.owner_id(),
            shared: self.shared.clone(),
            wait: WaitStrategy::default(),
            me,
        })
    }

    /// Attaches a client, claiming a free client entry (and its reply ring).
    ///
    /// # Errors
    /// [`Error::TooManyParticipants`] when every client entry (or participant entry) is taken.
    pub fn client(&self) -> Result<Client, Error> {
        let shared = &self.shared;
        let me = shared.attach(Role::Client)?;
        let owner = me.owner_id();
        for index in 0..shared.geometry.table_entries {
            let state = shared.client_state(index);
            let old = state.load(Ordering::Acquire);
            if old & CLIENT_ATTACHED != 0 {
                continue;
            }
            let generation = (old >> CLIENT_GEN_SHIFT).wrapping_add(1) & ((1 << 48) - 1);
            let new = generation << CLIENT_GEN_SHIFT
                | CLIENT_ATTACHED
                | (u64::from(owner) & CLIENT_OWNER_MASK);
            if state
                .compare_exchange(old, new, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // Replies left in the ring are for earlier owners of the entry: drop them now rather
            // than let them take room from this client's replies.
            let ring = &shared.replies[index as usize];
            while let Ok(Some(stale)) = ring.try_claim_read(owner) {
                ring.release(stale);
                ring.not_full().notify();
            }
            let outstanding = shared.geometry.reply_capacity as usize;
            return Ok(Client {
                shared: shared.clone(),
                index,
                generation,
                owner,
                next_id: 0,
                ledger: Ledger {
                    outstanding: Vec::with_capacity(outstanding),
                    kept: Vec::with_capacity(outstanding),
                    buffers: vec![0; outstanding * shared.max_message()],
                    free: (0..outstanding).rev().collect(),
                    lent: None,
                },
                wait: WaitStrategy::default(),
                me,
            });
        }
        Err(Error::TooManyParticipants {
            path: shared.mapping.path().to_path_buf(),
            max: shared.geometry.table_entries,
        })
    }
}

/// Serves a service's requests. `Send + Sync`.
pub struct Server {
    shared: Arc<Shared>,
    owner: u16,
    wait: WaitStrategy,
    me: Participant,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.shared.mapping.path())
            .field("participant", &self.owner)
            .finish()
    }
}

impl Server {
    /// Sets how blocking receives (and waits for room in a reply ring) wait.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    #[inline]
    fn recv_with(&self, deadline: Deadline) -> Result<Request<'_>, RecvError> {
        let ring = &self.shared.requests;
        let waited = ring.not_empty().parked_as(self.me.parked()).wait_or_repair(
            self.wait,
            deadline,
            || ring.try_claim_read(self.owner),
            || self.shared.repair_quietly(),
        );
        let claim = RecvError::from_wait(waited, deadline)?;
        match envelope_of(ring, &claim) {
            Some(envelope) if envelope.client < self.shared.geometry.table_entries => {
                crate::testhook::park_at("server-received");
                Ok(Request {
                    server: self,
                    claim: Some(claim),
                    envelope,
                })
            }
            _ => {
                // Not a request anyone could be waiting for: acknowledge it and report it.
                ring.release(claim);
                ring.not_full().notify();
                Err(RecvError::Corrupt(Corruption::BadState(
                    "a request names no valid client",
                )))
            }
        }
    }

    /// Takes the next request, waiting for one.
    ///
    /// # Errors
    /// [`RecvError::Corrupt`] if shared memory breaks the protocol.
    #[inline]
    pub fn recv(&self) -> Result<Request<'_>, RecvError> {
        self.recv_with(Deadline::Never)
    }

    /// Takes the next request if one is waiting.
    ///
    /// # Errors
    /// [`RecvError::Empty`], and as for [`recv`](Self::recv).
    #[inline]
    pub fn try_recv(&self) -> Result<Request<'_>, RecvError> {
        self.recv_with(Deadline::Now)
    }

    /// Takes the next request, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`RecvError::Timeout`], and as for [`recv`](Self::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Request<'_>, RecvError> {
        self.recv_with(Deadline::after(timeout))
    }
}

/// A request taken by a server. Its payload borrows the request's slot. Reply with
/// [`reply`](Self::reply); dropping it without replying acknowledges it with no reply (the
/// client's wait then times out).
pub struct Request<'a> {
    server: &'a Server,
    /// Always `Some` until the request is acknowledged.
    claim: Option<ReadClaim>,
    envelope: Envelope,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("client", &self.envelope.client)
            .field("correlation", &self.envelope.correlation)
            .field("len", &self.payload().len())
            .finish()
    }
}

/// What became of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The reply is in the client's reply ring.
    Delivered,
    /// The client that asked has detached (its entry may belong to another client now): the
    /// reply was dropped.
    ClientGone,
}

impl Request<'_> {
    /// The request's payload.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        match &self.claim {
            Some(claim) => &self.server.shared.requests.payload(claim)[ENVELOPE_SIZE..],
            None => &[],
        }
    }

    /// The request's payload, copied out of the shared file with atomic word loads: for
    /// servers that do not trust their clients, since [`payload`](Self::payload) is a view that
    /// a process ignoring the protocol can change while it is read. Allocates.
    pub fn copy_to_vec(&self) -> Vec<u8> {
        match &self.claim {
            Some(claim) => copy_after_envelope(&self.server.shared.requests, claim),
            None => Vec::new(),
        }
    }

    /// Whether this request was taken before by a server that died without replying.
    pub fn redelivered(&self) -> bool {
        self.claim.as_ref().is_some_and(|c| c.redelivered())
    }

    /// Sends `payload` back to the client that asked, then acknowledges the request.
    ///
    /// # Errors
    /// [`SendError::TooLarge`]: nothing is sent, the request is acknowledged, and the client's
    /// wait ends with [`RecvError::NoReply`]. [`SendError::Timeout`] if the client's reply ring
    /// stayed full for a second (the client is misbehaving): the reply is dropped.
    #[inline]
    pub fn reply(mut self, payload: &[u8]) -> Result<Delivery, SendError> {
        let shared = &self.server.shared;
        shared.check_len(payload.len())?;
        let outcome = self.deliver(payload, 0);
        self.acknowledge();
        outcome
    }

    #[inline]
    fn acknowledge(&mut self) {
        if let Some(claim) = self.claim.take() {
            let requests = &self.server.shared.requests;
            requests.release(claim);
            requests.not_full().notify();
        }
    }

    #[inline]
    fn deliver(&self, payload: &[u8], flags: u32) -> Result<Delivery, SendError> {
        let shared = &self.server.shared;
        let env = Envelope {
            flags,
            ..self.envelope
        };
        let attached = |state: u64| {
            state & CLIENT_ATTACHED != 0 && state >> CLIENT_GEN_SHIFT == env.generation
        };
        if !attached(shared.client_state(env.client).load(Ordering::Acquire)) {
            return Ok(Delivery::ClientGone);
        }
        let ring = &shared.replies[env.client as usize];
        let deadline = Deadline::after(REPLY_ROOM_TIMEOUT);
        let mut claimer = ring.write_claimer(self.server.owner);
        let attempt = || {
            if !attached(shared.client_state(env.client).load(Ordering::Acquire)) {
                return Ok(Some(None));
            }
            claimer().map(|c| c.map(Some))
        };
        let repair = || shared.repair_quietly();
        let claim = match ring
            .not_full()
            .parked_as(self.server.me.parked())
            .wait_or_repair(self.server.wait, deadline, attempt, repair)
        {
            Ok(Some(Some(claim))) => claim,
            Ok(Some(None)) => return Ok(Delivery::ClientGone),
            Ok(None) => return Err(SendError::Timeout),
            Err(c) => return Err(SendError::Corrupt(c)),
        };
        let result = put(ring, claim, &env, payload);
        ring.not_empty().notify();
        result.map(|()| Delivery::Delivered)
    }
}

impl Drop for Request<'_> {
    /// Dropped without a reply: tell the client there will be none (so it neither waits for
    /// ever nor keeps counting the request as outstanding), then acknowledge.
    fn drop(&mut self) {
        if self.claim.is_some() {
            let _ = self.deliver(&[], FLAG_NO_REPLY);
            self.acknowledge();
        }
    }
}

/// A ticket for a request sent with [`Client::send`], redeemed with [`Client::wait`].
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a pending request's reply is only received by waiting for it"]
pub struct Pending {
    id: u64,
}

impl Pending {
    /// The request's correlation id.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Sends requests and receives their replies. Holds a client entry (and its reply ring) until
/// dropped.
pub struct Client {
    shared: Arc<Shared>,
    index: u32,
    generation: u64,
    owner: u16,
    next_id: u64,
    ledger: Ledger,
    wait: WaitStrategy,
    me: Participant,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.shared.mapping.path())
            .field("entry", &self.index)
            .field("outstanding", &self.ledger.outstanding.len())
            .field("kept", &self.ledger.kept.len())
            .finish()
    }
}

/// A client's bookkeeping of its requests and replies, kept apart from the handle so that a
/// wait can update it while it reads the reply ring through the handle's shared state.
struct Ledger {
    /// Requests sent whose reply has not been taken from the ring: (id, still wanted).
    outstanding: Vec<(u64, bool)>,
    /// Replies that arrived while waiting for another, copied out of the ring (so they never
    /// hold up the ring, which servers fill in order): (id, buffer slot, length, no-reply).
    kept: Vec<(u64, usize, usize, bool)>,
    /// `reply_capacity` buffers of `max_message` bytes for kept replies, allocated at attach.
    buffers: Vec<u8>,
    /// Free buffer slots.
    free: Vec<usize>,
    /// The buffer slot lent to the last `Reply` returned; free again at the next call.
    lent: Option<usize>,
}

/// A reply. Borrowed from its slot in the client's reply ring (dropping it frees the slot), or
/// from the client's buffer if it arrived while the client waited for another.
pub struct Reply<'a> {
    source: ReplySource<'a>,
}

enum ReplySource<'a> {
    Slot {
        ring: &'a MpmcRing,
        /// Always `Some` until dropped.
        claim: Option<ReadClaim>,
    },
    Kept(&'a [u8]),
}

impl Reply<'_> {
    /// The reply's payload.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        match &self.source {
            ReplySource::Slot {
                ring,
                claim: Some(claim),
            } => &ring.payload(claim)[ENVELOPE_SIZE..],
            ReplySource::Slot { claim: None, .. } => &[],
            ReplySource::Kept(bytes) => bytes,
        }
    }

    /// The reply's payload, copied out of the shared file with atomic word loads: for clients
    /// that do not trust their servers (see [`Request::copy_to_vec`]). Allocates.
    pub fn copy_to_vec(&self) -> Vec<u8> {
        match &self.source {
            ReplySource::Slot {
                ring,
                claim: Some(claim),
            } => copy_after_envelope(ring, claim),
            ReplySource::Slot { claim: None, .. } => Vec::new(),
            // Copied out of the ring (with atomic loads) when it arrived: private memory now.
            ReplySource::Kept(bytes) => bytes.to_vec(),
        }
    }
}

impl fmt::Debug for Reply<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("len", &self.payload().len())
            .finish()
    }
}

impl Drop for Reply<'_> {
    fn drop(&mut self) {
        if let ReplySource::Slot { ring, claim } = &mut self.source {
            if let Some(claim) = claim.take() {
                ring.release(claim);
                ring.not_full().notify();
            }
        }
    }
}

/// What filing a reply taken from the ring found.
enum Filed {
    /// The reply waited for (still in its slot), or `None` if it is a "no reply" notice.
    Wanted(Option<ReadClaim>),
    /// Something else, now dealt with.
    Other,
}

impl Ledger {
    /// Files one reply taken from `ring`: the one waited for (`want`) is handed back in its
    /// slot; one for another outstanding request is copied into a buffer and its slot freed;
    /// stale (another client or generation), duplicate, corrupt or timed-out ones are dropped.
    #[inline]
    fn file(
        &mut self,
        ring: &MpmcRing,
        me: (u32, u64),
        max: usize,
        claim: ReadClaim,
        want: u64,
    ) -> Filed {
        let (index, generation) = me;
        let env = envelope_of(ring, &claim);
        let ours = env.filter(|e| e.generation == generation && e.client == index);
        let at = ours.and_then(|e| {
            self.outstanding
                .iter()
                .position(|&(id, _)| id == e.correlation)
        });
        let (Some(e), Some(at)) = (ours, at) else {
            ring.release(claim);
            ring.not_full().notify();
            return Filed::Other;
        };
        let (_, wanted) = self.outstanding.swap_remove(at);
        let no_reply = e.flags & FLAG_NO_REPLY != 0;
        if e.correlation == want {
            if no_reply {
                ring.release(claim);
                ring.not_full().notify();
                return Filed::Wanted(None);
            }
            return Filed::Wanted(Some(claim));
        }
        if wanted {
            let len = claim.len() - ENVELOPE_SIZE;
            // Never fails: kept + outstanding never exceed the number of buffers.
            if let Some(slot) = self.free.pop() {
                let kept = &mut self.buffers[slot * max..slot * max + len];
                ring.copy_payload(&claim, ENVELOPE_SIZE, kept);
                self.kept.push((e.correlation, slot, len, no_reply));
            }
        }
        ring.release(claim);
        ring.not_full().notify();
        Filed::Other
    }
}

impl Client {
    /// Sets how blocking calls wait (default: spin 20 µs, then park).
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// Requests sent whose replies have not been received yet: waiting for a reply, or
    /// timed out with the reply still to come (it is discarded when it comes).
    pub fn outstanding(&self) -> usize {
        self.ledger.outstanding.len()
    }

    fn reply_ring(&self) -> &MpmcRing {
        &self.shared.replies[self.index as usize]
    }

    /// Frees the buffer slot of the last kept reply returned (its `Reply` is gone: it borrowed
    /// `self` mutably).
    #[inline]
    fn reclaim_lent(&mut self) {
        if let Some(slot) = self.ledger.lent.take() {
            self.ledger.free.push(slot);
        }
    }

    #[inline]
    fn send_with(&mut self, payload: &[u8], deadline: Deadline) -> Result<Pending, SendError> {
        self.reclaim_lent();
        self.shared.check_len(payload.len())?;
        if self.ledger.outstanding.len() + self.ledger.kept.len()
            >= self.shared.geometry.reply_capacity as usize
        {
            return Err(SendError::Full);
        }
        let ring = &self.shared.requests;
        let waited = ring.not_full().parked_as(self.me.parked()).wait_or_repair(
            self.wait,
            deadline,
            ring.write_claimer(self.owner),
            || self.shared.repair_quietly(),
        );
        let claim = SendError::from_wait(waited, deadline)?;
        let id = self.next_id;
        self.next_id += 1;
        let envelope = Envelope {
            correlation: id,
            generation: self.generation,
            client: self.index,
            flags: 0,
        };
        let result = put(ring, claim, &envelope, payload);
        ring.not_empty().notify();
        result?;
        self.ledger.outstanding.push((id, true));
        Ok(Pending { id })
    }

    /// Sends a request without waiting for its reply (waiting while the request ring is full).
    ///
    /// # Errors
    /// [`SendError::Full`] if `reply_capacity` requests are outstanding or kept already;
    /// [`SendError::TooLarge`]; [`SendError::Corrupt`].
    #[inline]
    pub fn send(&mut self, payload: &[u8]) -> Result<Pending, SendError> {
        self.send_with(payload, Deadline::Never)
    }

    /// Like [`send`](Self::send), but fails with [`SendError::Full`] rather than wait for room.
    ///
    /// # Errors
    /// As for [`send`](Self::send).
    pub fn try_send(&mut self, payload: &[u8]) -> Result<Pending, SendError> {
        self.send_with(payload, Deadline::Now)
    }

    #[inline]
    fn wait_with(&mut self, pending: Pending, deadline: Deadline) -> Result<Reply<'_>, RecvError> {
        self.reclaim_lent();
        let want = pending.id;
        if let Some(at) = self.ledger.kept.iter().position(|&(id, ..)| id == want) {
            let (_, slot, len, no_reply) = self.ledger.kept.swap_remove(at);
            if no_reply {
                self.ledger.free.push(slot);
                return Err(RecvError::NoReply);
            }
            self.ledger.lent = Some(slot);
            let max = self.shared.max_message();
            return Ok(Reply {
                source: ReplySource::Kept(&self.ledger.buffers[slot * max..slot * max + len]),
            });
        }
        if !self.ledger.outstanding.iter().any(|&(id, _)| id == want) {
            return Err(RecvError::Corrupt(Corruption::BadState(
                "no such request is outstanding",
            )));
        }
        // Split borrows: the ring is read through `shared` while the ledger is updated.
        let (shared, ledger, owner) = (&self.shared, &mut self.ledger, self.owner);
        let ring = &shared.replies[self.index as usize];
        let me = (self.index, self.generation);
        let max = shared.max_message();
        let found = ring.not_empty().parked_as(self.me.parked()).wait_or_repair(
            self.wait,
            deadline,
            || {
                while let Some(claim) = ring.try_claim_read(owner)? {
                    if let Filed::Wanted(claim) = ledger.file(ring, me, max, claim, want) {
                        return Ok(Some(claim));
                    }
                }
                Ok(None)
            },
            || shared.repair_quietly(),
        );
        match found {
            Ok(Some(Some(claim))) => Ok(Reply {
                source: ReplySource::Slot {
                    ring: self.reply_ring(),
                    claim: Some(claim),
                },
            }),
            Ok(Some(None)) => Err(RecvError::NoReply),
            Ok(None) => {
                // Keep counting it as outstanding; its late reply will be discarded.
                if let Some(entry) = self
                    .ledger
                    .outstanding
                    .iter_mut()
                    .find(|(id, _)| *id == want)
                {
                    entry.1 = false;
                }
                Err(if matches!(deadline, Deadline::Now) {
                    RecvError::Empty
                } else {
                    RecvError::Timeout
                })
            }
            Err(c) => Err(RecvError::Corrupt(c)),
        }
    }

    /// Waits for the reply to `pending`. Replies to other outstanding requests that arrive
    /// meanwhile are kept for their own `wait`.
    ///
    /// # Errors
    /// [`RecvError::NoReply`] if the server dropped the request without replying;
    /// [`RecvError::Corrupt`] if shared memory breaks the protocol.
    #[inline]
    pub fn wait(&mut self, pending: Pending) -> Result<Reply<'_>, RecvError> {
        self.wait_with(pending, Deadline::Never)
    }

    /// Waits at most `timeout` for the reply to `pending`. On timeout the request is given up:
    /// its reply, if it ever comes, is discarded.
    ///
    /// # Errors
    /// [`RecvError::Timeout`], and as for [`wait`](Self::wait).
    pub fn wait_timeout(
        &mut self,
        pending: Pending,
        timeout: Duration,
    ) -> Result<Reply<'_>, RecvError> {
        self.wait_with(pending, Deadline::after(timeout))
    }

    /// Sends a request and waits for its reply.
    ///
    /// # Errors
    /// [`Error::Send`] or [`Error::Recv`], as for [`send`](Self::send) and [`wait`](Self::wait).
    #[inline]
    pub fn request(&mut self, payload: &[u8]) -> Result<Reply<'_>, Error> {
        let pending = self.send(payload)?;
        Ok(self.wait(pending)?)
    }

    /// Sends a request and waits at most `timeout` (in all) for its reply.
    ///
    /// # Errors
    /// [`Error::Recv`]`(`[`RecvError::Timeout`]`)` if no reply came in time (a late reply is
    /// discarded, never handed to a later request), and as for [`request`](Self::request).
    pub fn request_timeout(
        &mut self,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Reply<'_>, Error> {
        let deadline = Deadline::after(timeout);
        let pending = self.send_with(payload, deadline)?;
        Ok(self.wait_with(pending, deadline)?)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Detach: replies still in flight for this generation are dropped by servers, or by
        // the entry's next owner, whose generation differs.
        let state = self.shared.client_state(self.index);
        let old = state.load(Ordering::Acquire);
        state.store(
            old & !(CLIENT_ATTACHED | CLIENT_OWNER_MASK),
            Ordering::Release,
        );
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Service>();
    is::<Server>();
    is::<Client>();
}
