//! Request-reply; its specification is the documentation of [`Service`].

use crate::error::{
    Corruption, Error, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError,
    TrySendError, Waited,
};
use crate::layout::{
    counter, Envelope, Geometry, Shape, ENVELOPE_SIZE, KIND_SERVICE, RING_CONTROL_OFFSET,
    RING_CONTROL_SIZE, TABLE_ENTRY_SIZE,
};
use crate::peers::{Participant, Recoverable, RecoveryStats, Role};
use crate::ring::mpmc::{MpmcRing, ReadClaim, WriteClaim};
use crate::shm::file::{self, Mapping};
use crate::shm::Region;
use crate::stats::OwnStats;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::reactor::KeepAlive;
use crate::sync::{Deadline, WaitCell, WaitStrategy};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Client entry state: bits 0..12 the owner's participant id, bit 12 attached, bits 16.. the
/// generation.
pub(crate) const CLIENT_ATTACHED: u64 = 1 << 12;
pub(crate) const CLIENT_OWNER_MASK: u64 = 0xfff;
pub(crate) const CLIENT_GEN_SHIFT: u32 = 16;

/// Envelope flag of a reply: the server dropped the request without replying.
const FLAG_NO_REPLY: u32 = 1;

/// How long a server waits for room in a client's reply ring before dropping the reply. A
/// client never has more requests outstanding than its ring has slots, so this only happens
/// when the client misbehaves or its entry was reused.
const REPLY_ROOM_TIMEOUT: Duration = Duration::from_secs(1);

/// How to create a service. Fixed for the file's life.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    request_capacity: usize,
    reply_capacity: usize,
    max_message: usize,
    max_clients: usize,
    max_servers: usize,
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
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The layout a service created with these options has (its `file_size` is the file's).
    /// The on-file layout is not API: for shmq's own tools and tests.
    #[doc(hidden)]
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] if an option is out of range.
    pub fn geometry(&self) -> Result<Geometry, Error> {
        let max_clients = Error::option_u32(self.max_clients, "max_clients")?;
        let max_participants = Error::option_u32(self.max_servers, "max_servers")?
            .checked_add(max_clients)
            .ok_or_else(|| Error::InvalidOptions("too many participants".into()))?;
        Geometry::compute(Shape {
            kind: KIND_SERVICE,
            capacity: self.request_capacity as u64,
            max_message: self.max_message as u64,
            max_participants,
            flags: 0,
            max_topic: 0,
            table_entries: max_clients,
            reply_capacity: self.reply_capacity as u64,
        })
        .map_err(Error::InvalidOptions)
    }

    /// Slots in the shared request ring.
    #[must_use]
    pub fn request_capacity(mut self, slots: usize) -> Self {
        self.request_capacity = slots;
        self
    }

    /// Slots in each client's reply ring: the most requests a client may have outstanding
    /// (waited for, given up with the reply still to come, or with the reply kept for a later
    /// wait), see "Many requests in flight" in the [`Service`] docs.
    #[must_use]
    pub fn reply_capacity(mut self, slots: usize) -> Self {
        self.reply_capacity = slots;
        self
    }

    /// Largest request or reply payload in bytes.
    #[must_use]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Largest number of clients attached at once; attaching more is an error.
    #[must_use]
    pub fn max_clients(mut self, n: usize) -> Self {
        self.max_clients = n;
        self
    }

    /// Largest number of servers attached at once.
    #[must_use]
    pub fn max_servers(mut self, n: usize) -> Self {
        self.max_servers = n;
        self
    }
}

file_options!(ServiceOptions, "service");

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

    fn recount(&self) {
        self.requests.recount_redeliveries();
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

    /// Frees a held slot of `ring` (one of this service's) and wakes its writers; `false`,
    /// and counted, if the claim had been taken away.
    #[inline]
    fn release(&self, ring: &MpmcRing, claim: ReadClaim) -> bool {
        let released = ring.release(claim);
        ring.not_full().notify();
        if !released {
            self.count_refused();
        }
        released
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

/// Writes `envelope` and `payload` into a claimed slot of `ring` (of `shared`) and commits it.
/// A commit refused because the slot was taken away is counted.
fn put(
    shared: &Shared,
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
        shared.count_refused();
        Err(SendError::ClaimLost)
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
///
/// Request-reply: clients send requests that are spread over the attached servers; each reply
/// is routed back to the client that asked.
///
/// # How it works
///
/// A service file holds one request ring (multi-producer, multi-consumer: every client sends
/// into it, every server takes from it, so load spreads over however many servers are
/// attached) and a table of client entries, each with its own reply ring (many servers write
/// it, its client alone reads it).
///
/// * A client attaches by claiming a free client entry, which bumps the entry's *generation*.
/// * Every request carries an envelope: the client's entry index, that generation, and a
///   correlation id unique within the client.
/// * A server that replies checks that the entry still has that generation and is attached;
///   if not (the client left, and its entry may belong to someone else now), the reply is
///   dropped. The client checks the generation again when it reads a reply, so a reply that
///   raced with a detach and attach is discarded there: **a reply never reaches the wrong client**.
/// * A server writes the reply before it acknowledges the request, so a reply is never lost
///   to a server that dies in between (crash recovery will deliver such a request again; the
///   client drops the second reply by its correlation id).
///
/// # Many requests in flight
///
/// [`Client::send`] returns a [`Pending`] ticket at once; [`Client::wait`] waits for that
/// ticket's reply. Replies may arrive in any order: every reply is copied, when the client
/// takes it from its reply ring, into the buffer of its request's place (the client allocated
/// one of `max_message` bytes per place when it attached: `reply_capacity × max_message` bytes
/// of heap, never more) and its slot is freed at once, so a reply never holds up the reply
/// ring, however long it is kept; a reply to another request waits there for its own `wait`.
/// A [`Reply`] holds that buffer until dropped, and borrows its client shared, so several can
/// be held at once. (A reply left in its slot instead would hold up the servers that come
/// round the ring to that slot, and the client cannot tell how soon that is.)
///
/// A client has `reply_capacity` **places**. Sending takes one; the place is freed when the
/// request's "no reply" notice has been taken from the reply ring, or when its [`Reply`] is
/// dropped (a `Reply` holds its slot, or the buffer it was kept in, until then). So at most
/// `reply_capacity` requests are outstanding, kept or held, replies owed to a client never
/// outnumber the free slots of its reply ring, and **servers never find a reply ring full**.
/// With every place taken, `send` first takes the replies that have arrived; if every place is
/// still held by a request waited for, a reply kept or a `Reply` not dropped, it is
/// [`SendError::AllPlacesHeld`] at once, also from the blocking `send` (only waiting for them,
/// or dropping their tickets or replies, frees one, so waiting would never end); if some are
/// held only by requests given up (below), `send` waits for their late replies (`try_send`:
/// [`TrySendError::Full`]; `request_timeout`: until its deadline, then [`Error::Timeout`]).
///
/// A server that drops a request without replying sends a "no reply" notice instead, so the
/// client's wait ends with [`RecvError::NoReply`] rather than a timeout.
///
/// # Trust
///
/// Every process that can write the service file is trusted with request and reply
/// *contents*; shmq defends its own memory safety, indices and lengths against any bytes.
/// [`Request::payload`] is a view into the mapping that a process ignoring the protocol can
/// change while you read it; for clients you do not trust, copy it out with
/// [`Request::copy_to_vec`] (atomic word loads, never a slice over the mapping) and validate
/// the copy. A [`Reply`] is a private copy already (made with atomic word loads): validate it.
/// See `docs/DESIGN.md` section 9.
///
/// # Giving up: timeouts, dropped tickets, errors
///
/// [`Client::request_timeout`] and [`Client::wait_timeout`] give up with [`Error::Timeout`]
/// and [`RecvTimeoutError::Timeout`]; a wait that fails ([`RecvError::Corrupt`]) gives up the
/// same way, and so does dropping a [`Pending`] without waiting (a ticket tells its client
/// through a small board shared with it, so it can be dropped anywhere). A request given up keeps its
/// place until its late reply arrives, which is then discarded — never handed to a later
/// request — and frees the place; a reply already kept for a dropped ticket frees its place at
/// once. What a timeout leaves behind is therefore one place, and the request itself, which a
/// server will still answer. So a client that keeps retrying through a server outage gets
/// timeouts (never an `AllPlacesHeld` for good) and works again, without re-attaching, once a
/// server answers. A place stays taken for as long as its reply can still come: for ever only
/// if the reply is lost, to a corrupt file or to a server that gave up delivering it (after
/// [`Request::reply`] found the reply ring full for a second, which takes replies the client
/// owes no place to — forged ones, a late reply to the entry's previous owner that raced past
/// the server's check, or the second reply to a request delivered again after a server died
/// between replying and acknowledging — while the client did not read its ring);
/// re-attaching starts afresh.
///
/// ```
/// # fn main() -> Result<(), shmq::Error> {
/// # let path = std::env::temp_dir().join(format!("shmq-reqrep-doc-{}", std::process::id()));
/// use shmq::{Service, ServiceOptions};
/// let service = Service::create(&path, &ServiceOptions::new().max_clients(64).max_message(4096))?;
/// let server = service.server()?;                    // in each server process
/// let mut client = Service::open(&path)?.client()?;  // in each client process
///
/// let pending = client.send(b"img-123 128x128")?;
/// let request = server.recv()?;                      // each request goes to one server
/// let reply = [request.payload(), b" done"].concat();
/// request.reply(&reply)?;                            // routed to the client that asked
/// assert_eq!(client.wait(pending)?.payload(), b"img-123 128x128 done");
/// # Service::remove(&path)?;
/// # Ok(()) }
/// ```
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
        let g = options.geometry()?;
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
    /// without progress. Never touches a live participant. Also undoes what is recorded under
    /// the id of a free participant entry (see [`Pipeline::repair`](crate::Pipeline::repair)).
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
    pub fn queued_requests(&self) -> usize {
        self.shared.requests.len() as usize
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
                shared.release(ring, stale);
            }
            let places = shared.geometry.reply_capacity as usize;
            let ledger = Ledger::new(places, shared.max_message());
            return Ok(Client {
                shared: shared.clone(),
                index,
                generation,
                owner,
                dropped: ledger.dropped.clone(),
                ledger: Mutex::new(ledger),
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
///
/// Belongs to the process that attached it: in a fork child, its methods fail with
/// [`RecvError::WrongProcess`] and dropping it does nothing to the service (the parent's
/// participant entry, lock and requests stay the parent's); a child attaches its own. Dropping
/// it in its own process detaches it, first delivering again (to another server) any
/// [`Request`] it leaked (`mem::forget`), flagged [`Request::redelivered`].
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
    /// How many clients are attached to the service now, in every process (a snapshot of the
    /// participant table; one whose process died counts until it is reaped).
    pub fn clients(&self) -> usize {
        self.me.count_attached(Role::Client)
    }

    /// Sets how blocking receives (and waits for room in a reply ring) wait.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    #[inline]
    fn recv_with(&self, deadline: Deadline) -> Result<Request<'_>, Waited<RecvError>> {
        self.me.check_recv()?;
        let ring = &self.shared.requests;
        let waited = self
            .me
            .waiting_on(ring.not_empty(), counter::EMPTY)
            .wait_or_repair(
                self.wait,
                deadline,
                || ring.try_claim_read(self.owner),
                || self.shared.repair_quietly(),
            );
        let claim = RecvError::from_wait(waited)?;
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
                self.shared.release(ring, claim);
                Err(Waited::Failed(RecvError::Corrupt(Corruption::BadState(
                    "a request names no valid client",
                ))))
            }
        }
    }

    /// Takes the next request, waiting for one. Answer it with [`Request::reply`]; a request
    /// dropped unanswered tells its client there will be no reply.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("shmq-serve-{}", std::process::id()));
    /// use shmq::{Delivery, Service, ServiceOptions};
    /// let service = Service::create(&path, &ServiceOptions::new())?;
    /// let (server, client) = (service.server()?, service.client()?);
    /// let pending = client.send(b"2+2")?;
    /// let request = server.recv()?;                // in the server process, in a loop
    /// let answer = if &*request == b"2+2" { &b"4"[..] } else { &b"?"[..] };
    /// assert_eq!(request.reply(answer)?, Delivery::Delivered);
    /// assert_eq!(&*client.wait(pending)?, b"4");
    /// # Service::remove(&path)?;
    /// # Ok::<(), shmq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`RecvError::Corrupt`] if shared memory breaks the protocol.
    #[inline]
    pub fn recv(&self) -> Result<Request<'_>, RecvError> {
        self.recv_with(Deadline::Never).map_err(Waited::forever)
    }

    /// Takes the next request if one is waiting.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`]; [`TryRecvError::Recv`] as for [`recv`](Self::recv).
    #[inline]
    pub fn try_recv(&self) -> Result<Request<'_>, TryRecvError> {
        self.recv_with(Deadline::Now)
            .map_err(|e| e.or(TryRecvError::Empty))
    }

    /// Takes the next request, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`]; [`RecvTimeoutError::Recv`] as for [`recv`](Self::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Request<'_>, RecvTimeoutError> {
        self.recv_with(Deadline::after(timeout))
            .map_err(|e| e.or(RecvTimeoutError::Timeout))
    }
}

/// A request taken by a server. Its payload borrows the request's slot. Reply with
/// [`reply`](Self::reply); dropping it without replying acknowledges it and sends the client a
/// "no reply" notice (its wait ends with [`RecvError::NoReply`]).
///
/// In a fork child (a copy inherited from the process that took it) its payload reads as
/// empty, replying fails with [`SendError::WrongProcess`] and dropping it does nothing: the
/// request stays the parent's.
#[must_use = "dropping a request unanswered sends its client a \"no reply\" notice"]
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

impl std::ops::Deref for Request<'_> {
    type Target = [u8];
    /// The payload.
    #[inline]
    fn deref(&self) -> &[u8] {
        self.payload()
    }
}

impl AsRef<[u8]> for Request<'_> {
    /// The payload.
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.payload()
    }
}

impl Request<'_> {
    /// The request's payload (also what the request dereferences to).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        match &self.claim {
            Some(claim) if self.server.me.in_own_process() => {
                &self.server.shared.requests.payload(claim)[ENVELOPE_SIZE..]
            }
            _ => &[],
        }
    }

    /// The request's payload, copied out of the shared file with atomic word loads: for
    /// servers that do not trust their clients, since [`payload`](Self::payload) is a view that
    /// a process ignoring the protocol can change while it is read. Allocates.
    pub fn copy_to_vec(&self) -> Vec<u8> {
        match &self.claim {
            Some(claim) if self.server.me.in_own_process() => {
                copy_after_envelope(&self.server.shared.requests, claim)
            }
            _ => Vec::new(),
        }
    }

    /// Whether this request was taken before by a server that died without replying.
    pub fn redelivered(&self) -> bool {
        self.claim.as_ref().is_some_and(|c| c.redelivered())
    }

    /// Sends `payload` back to the client that asked, then acknowledges the request.
    ///
    /// Never waits long: a client never owes more replies than its reply ring has free slots,
    /// so room is waited for only while the client misbehaves, and then for at most one second
    /// (an internal deadline), which is why this returns a [`SendTimeoutError`].
    ///
    /// # Errors
    /// [`SendError::TooLarge`]: nothing is sent, the request is acknowledged, and the client's
    /// wait ends with [`RecvError::NoReply`]. [`SendTimeoutError::Timeout`] if the client's
    /// reply ring stayed full for that second: the reply is dropped.
    /// [`SendError::ClaimLost`] if the reply's slot, or the request itself, had been taken
    /// away (a recovery pass judged this server dead, or another process rewrote the file):
    /// the request is delivered again to a server, whose reply the client keeps if this one
    /// did not reach it (a client keeps only the first reply to a request). Counted in
    /// [`RecoveryStats::refused`].
    #[inline]
    pub fn reply(mut self, payload: &[u8]) -> Result<Delivery, SendTimeoutError> {
        self.server.me.check_send()?;
        let shared = &self.server.shared;
        shared.check_len(payload.len())?;
        let outcome = self.deliver(payload, 0);
        match (outcome, self.acknowledge()) {
            (Ok(_), false) => Err(SendError::ClaimLost.into()),
            (outcome, _) => outcome,
        }
    }

    /// Acknowledges the request; `false` (and counted) if it had been taken back.
    #[inline]
    fn acknowledge(&mut self) -> bool {
        match self.claim.take() {
            Some(claim) => {
                let shared = &self.server.shared;
                let acked = shared.release(&shared.requests, claim);
                if acked {
                    self.server.me.stats().add(counter::RECEIVED, 1);
                }
                acked
            }
            None => true,
        }
    }

    #[inline]
    fn deliver(&self, payload: &[u8], flags: u32) -> Result<Delivery, SendTimeoutError> {
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
        let deadline = Deadline::Within(REPLY_ROOM_TIMEOUT);
        let mut claimer = ring.write_claimer(self.server.owner);
        let attempt = || {
            if !attached(shared.client_state(env.client).load(Ordering::Acquire)) {
                return Ok(Some(None));
            }
            claimer().map(|c| c.map(Some))
        };
        let repair = || shared.repair_quietly();
        let claim = match self
            .server
            .me
            .waiting_on(ring.not_full(), counter::FULL)
            .wait_or_repair(self.server.wait, deadline, attempt, repair)
        {
            Ok(Some(Some(claim))) => claim,
            Ok(Some(None)) => return Ok(Delivery::ClientGone),
            Ok(None) => return Err(SendTimeoutError::Timeout),
            Err(c) => return Err(SendError::Corrupt(c).into()),
        };
        let result = put(shared, ring, claim, &env, payload);
        ring.not_empty().notify();
        result?;
        self.server.me.stats().add(counter::SENT, 1);
        Ok(Delivery::Delivered)
    }
}

impl Drop for Request<'_> {
    /// Dropped without a reply: tell the client there will be none (so it neither waits for
    /// ever nor keeps counting the request as outstanding), then acknowledge.
    fn drop(&mut self) {
        if self.claim.is_some() && self.server.me.in_own_process() {
            let _ = self.deliver(&[], FLAG_NO_REPLY);
            self.acknowledge();
        }
    }
}

/// A ticket for a request sent with [`Client::send`], redeemed with [`Client::wait`].
///
/// Dropping it without waiting gives the request up: its reply, when it comes, is discarded,
/// and the request's place (see [`Client`]) is free again from then on. A ticket may be
/// dropped anywhere, also in another thread or after its client is gone.
#[must_use = "a pending request's reply is only received by waiting for it"]
pub struct Pending {
    id: u64,
    /// Where dropping the ticket tells its client; `None` once redeemed.
    dropped: Option<Arc<DroppedTickets>>,
}

impl Pending {
    /// The request's correlation id, unique among this client's requests.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending").field("id", &self.id).finish()
    }
}

/// Tickets are equal when they are for the same request of the same client.
impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && match (&self.dropped, &other.dropped) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
    }
}

impl Eq for Pending {}

impl std::hash::Hash for Pending {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(dropped) = self.dropped.take() {
            dropped.record(self.id);
        }
    }
}

/// The place of a request: the low 32 bits of its id (`reply_capacity` is at most 2^32).
#[inline]
fn place_of(id: u64) -> usize {
    (id & 0xffff_ffff) as usize
}

/// What a new request in a place adds to the id of the place's previous one.
const LAP: u64 = 1 << 32;

/// No ticket of this place was dropped.
const NO_TICKET: u64 = u64::MAX;

/// The ids of a client's tickets dropped without waiting, one word per place. A ticket may be
/// dropped anywhere (another thread, after its client is gone), so it cannot borrow its
/// client; it tells it through this board instead, which the client allocates once when it
/// attaches and shares with its tickets by reference count. The client reads a place's word
/// when that place's reply arrives and when it runs out of places. A place's ids only grow, so
/// an id left from an earlier request in the same place never matches a later one.
struct DroppedTickets(Box<[std::sync::atomic::AtomicU64]>);

impl DroppedTickets {
    fn new(places: usize) -> Self {
        DroppedTickets(
            (0..places)
                .map(|_| std::sync::atomic::AtomicU64::new(NO_TICKET))
                .collect(),
        )
    }

    fn record(&self, id: u64) {
        if let Some(word) = self.0.get(place_of(id)) {
            word.store(id, Ordering::Release);
        }
    }

    fn has(&self, id: u64) -> bool {
        self.0
            .get(place_of(id))
            .is_some_and(|word| word.load(Ordering::Acquire) == id)
    }
}

/// Sends requests and receives their replies. Holds a client entry (and its reply ring) until
/// dropped.
///
/// A client has `reply_capacity` *places*, one per request that may be in flight: a place is
/// taken when a request is sent and freed when its reply has been taken from the reply ring
/// and its slot freed (or, for a reply kept for a later wait, when that wait returns it), or,
/// for a reply handed out as a [`Reply`], when the `Reply` is dropped. So at most
/// `reply_capacity` replies are ever owed to the client, and servers never find its reply ring
/// full. A request given up — its wait timed out or failed, or its [`Pending`] was dropped —
/// keeps its place until its late reply arrives, which is then discarded.
///
/// Its methods take `&self`: a [`Reply`] borrows the client shared, so several replies may be
/// held at once, and threads may share a client, each waiting for its own tickets (a wait
/// that takes another thread's reply keeps it for that thread, which finds it there).
///
/// # Memory
///
/// A client allocates, when it attaches and never again, a buffer of `max_message` bytes per
/// place: `reply_capacity × max_message` bytes of heap (64 KiB with the defaults; 64 MiB for
/// `reply_capacity(64)` with 1 MiB messages). A reply that arrives while the client waits for
/// another is copied there and its slot freed at once, so that it never holds up the reply
/// ring; see "Many requests in flight" in the [`Service`] docs. Choose
/// `reply_capacity` for the requests a client really keeps in flight.
///
/// Belongs to the process that attached it: in a fork child, its methods fail with
/// [`SendError::WrongProcess`] / [`RecvError::WrongProcess`] and dropping it does nothing to
/// the service (the parent's client entry, participant entry and lock stay the parent's); a
/// child attaches its own. Dropping it in its own process detaches it, freeing any [`Reply`]
/// slot it leaked (`mem::forget`).
pub struct Client {
    shared: Arc<Shared>,
    index: u32,
    generation: u64,
    owner: u16,
    /// Behind an in-process lock, held only while a wait or send looks at the reply ring
    /// (never while parked), so that every method takes `&self`.
    ledger: Mutex<Ledger>,
    /// The board its tickets tell when they are dropped (also in the ledger); a ticket of
    /// another client has another board.
    dropped: Arc<DroppedTickets>,
    wait: WaitStrategy,
    me: Participant,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ledger = self.ledger();
        f.debug_struct("Client")
            .field("path", &self.shared.mapping.path())
            .field("entry", &self.index)
            .field("outstanding", &ledger.count(Place::is_waiting))
            .field("kept", &ledger.count(Place::is_kept))
            .finish()
    }
}

/// What one of a client's places holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Free,
    /// A request whose reply has not been taken from the reply ring yet; `given_up` once its
    /// wait timed out or failed (its reply will be discarded).
    Waiting {
        given_up: bool,
    },
    /// Its reply, taken from the ring and copied into the place's buffer, for its wait: `len`
    /// bytes, or a "no reply" notice.
    Kept {
        len: usize,
        no_reply: bool,
    },
    /// Its reply is held by a [`Reply`], which holds the place's buffer; the place is freed
    /// (and the buffer given back) when that is dropped.
    Handed,
}

impl Place {
    fn is_waiting(&self) -> bool {
        matches!(self, Place::Waiting { .. })
    }

    fn is_kept(&self) -> bool {
        matches!(self, Place::Kept { .. })
    }
}

/// A client's bookkeeping of its places. Everything is allocated when the client attaches.
struct Ledger {
    /// Per place: the id of its latest request, and what the place holds.
    places: Vec<(u64, Place)>,
    /// Free places; the most recently freed is taken first.
    free: Vec<u32>,
    /// One buffer of `max` bytes per place, for a kept reply; lent to the [`Reply`] that
    /// returns it (`None` meanwhile) and given back when that is dropped.
    buffers: Vec<Option<Box<[u8]>>>,
    dropped: Arc<DroppedTickets>,
}

/// A reply, copied out of the reply ring into a buffer of its client's (with atomic word
/// loads, so it is private memory that no other process can change) when it arrived; its
/// slot was freed at once. It holds that buffer, and its request's place (see [`Client`]),
/// until dropped, and borrows the client shared: keep several at once if you like.
#[must_use]
pub struct Reply<'a> {
    client: &'a Client,
    /// The request's id, whose place this reply holds.
    id: u64,
    /// The place's buffer, `Some` until dropped.
    buffer: Option<Box<[u8]>>,
    len: usize,
}

impl std::ops::Deref for Reply<'_> {
    type Target = [u8];
    /// The payload.
    #[inline]
    fn deref(&self) -> &[u8] {
        self.payload()
    }
}

impl AsRef<[u8]> for Reply<'_> {
    /// The payload.
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.payload()
    }
}

impl Reply<'_> {
    /// The reply's payload (also what the reply dereferences to).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_deref().map_or(&[], |b| &b[..self.len])
    }

    /// The reply's payload in a new vector. Allocates; the reply already is a private copy
    /// (unlike a [`Request`], see [`Request::copy_to_vec`]), so this is `payload().to_vec()`.
    pub fn copy_to_vec(&self) -> Vec<u8> {
        self.payload().to_vec()
    }
}

impl fmt::Debug for Reply<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for Reply<'_> {
    /// Gives the buffer back to its place and frees the place.
    fn drop(&mut self) {
        let mut ledger = self.client.ledger();
        if let Some(buffer) = self.buffer.take() {
            ledger.buffers[place_of(self.id)] = Some(buffer);
        }
        ledger.free(self.id);
    }
}

/// What redeeming a ticket whose reply was found did: lent the reply's buffer out, or freed
/// the place of a "no reply" notice.
enum Redeemed {
    Reply {
        buffer: Option<Box<[u8]>>,
        len: usize,
    },
    NoReply,
}

/// What a look for the reply to a ticket found: `len` bytes kept in its place's buffer, or
/// a "no reply" notice.
#[derive(Clone, Copy)]
pub(crate) struct Found {
    len: usize,
    no_reply: bool,
}

impl Ledger {
    fn new(places: usize, max: usize) -> Self {
        Ledger {
            places: (0..places)
                .map(|p| ((p as u64).wrapping_sub(LAP), Place::Free))
                .collect(),
            free: (0..places).rev().map(|p| p as u32).collect(),
            buffers: (0..places)
                .map(|_| Some(vec![0; max].into_boxed_slice()))
                .collect(),
            dropped: Arc::new(DroppedTickets::new(places)),
        }
    }

    fn count(&self, what: impl Fn(&Place) -> bool) -> usize {
        self.places.iter().filter(|(_, place)| what(place)).count()
    }

    /// Takes a free place for a new request; returns the request's id.
    #[inline]
    fn take(&mut self) -> Option<u64> {
        let entry = &mut self.places[self.free.pop()? as usize];
        entry.0 = entry.0.wrapping_add(LAP);
        entry.1 = Place::Waiting { given_up: false };
        Some(entry.0)
    }

    /// Frees the place of request `id`, which holds it.
    #[inline]
    fn free(&mut self, id: u64) {
        let p = place_of(id);
        self.places[p].1 = Place::Free;
        self.free.push(p as u32);
    }

    /// What the place of request `id` holds, if it holds that request.
    #[inline]
    fn holding(&self, id: u64) -> Option<Place> {
        self.places
            .get(place_of(id))
            .filter(|&&(at, place)| at == id && place != Place::Free)
            .map(|&(_, place)| place)
    }

    /// Request `id`'s reply is handed out (see [`Place::Handed`]).
    fn hand_out(&mut self, id: u64) {
        self.places[place_of(id)].1 = Place::Handed;
    }

    /// Redeems request `want`'s reply, kept in its place as `found`: its buffer is lent out
    /// (the place is then [`Place::Handed`]), or a "no reply" notice frees the place.
    #[inline]
    fn redeem(&mut self, want: u64, found: Found) -> Redeemed {
        if found.no_reply {
            self.free(want);
            return Redeemed::NoReply;
        }
        self.hand_out(want);
        Redeemed::Reply {
            buffer: self.buffers[place_of(want)].take(),
            len: found.len,
        }
    }

    /// Request `id` is given up: its reply is to be discarded when it comes.
    fn give_up(&mut self, id: u64) {
        if let Some(Place::Waiting { given_up }) = self
            .places
            .get_mut(place_of(id))
            .filter(|(at, _)| *at == id)
            .map(|(_, place)| place)
        {
            *given_up = true;
        }
    }

    /// Acts on dropped tickets: a kept reply's place is freed, a request still waiting is
    /// given up. Returns whether some place now waits only for the late reply of a request
    /// given up (so waiting for replies can free a place).
    fn reclaim_dropped(&mut self) -> bool {
        let mut late = false;
        for p in 0..self.places.len() {
            let (id, place) = self.places[p];
            let dropped = self.dropped.has(id);
            match place {
                Place::Kept { .. } if dropped => self.free(id),
                Place::Waiting { given_up } => {
                    if dropped {
                        self.places[p].1 = Place::Waiting { given_up: true };
                    }
                    late |= given_up || dropped;
                }
                _ => {}
            }
        }
        late
    }

    /// Files one reply taken from `ring` and frees its slot: one for a request still wanted
    /// is copied into its place's buffer (with atomic word loads) and kept there for its wait;
    /// one for a request given up is dropped and frees its place; stale (another client or
    /// generation), duplicate and corrupt ones are dropped. The slot is freed at once, so a
    /// reply never holds up the reply ring, however long its [`Reply`] is kept.
    #[inline]
    fn file(&mut self, shared: &Shared, ring: &MpmcRing, me: (u32, u64), claim: ReadClaim) {
        let (index, generation) = me;
        let ours = envelope_of(ring, &claim)
            .filter(|e| e.generation == generation && e.client == index)
            .and_then(|e| self.holding(e.correlation).map(|place| (e, place)));
        let Some((e, Place::Waiting { given_up })) = ours else {
            shared.release(ring, claim);
            return;
        };
        let id = e.correlation;
        let discard = given_up || self.dropped.has(id);
        if !discard {
            let len = claim.len() - ENVELOPE_SIZE;
            // Present: only a `Handed` place lends its buffer out, and this one is `Waiting`.
            // In bounds: a payload is at most `max` bytes (the ring checked the length).
            if let Some(buffer) = self.buffers[place_of(id)].as_deref_mut() {
                ring.copy_payload(&claim, ENVELOPE_SIZE, &mut buffer[..len]);
            }
            let no_reply = e.flags & FLAG_NO_REPLY != 0;
            self.places[place_of(id)].1 = Place::Kept { len, no_reply };
        }
        shared.release(ring, claim);
        if discard {
            // Only now, with its slot free: a server may then be owed one reply more.
            self.free(id);
        }
    }

    /// Files every reply that has arrived (none is waited for); returns how many.
    fn drain(
        &mut self,
        shared: &Shared,
        ring: &MpmcRing,
        me: (u32, u64),
        owner: u16,
    ) -> Result<u64, Corruption> {
        let mut taken = 0;
        while let Some(claim) = ring.try_claim_read(owner)? {
            self.file(shared, ring, me, claim);
            taken += 1;
        }
        Ok(taken)
    }

    /// One look for the reply to request `want` (outstanding): kept already (by this or
    /// another thread's wait or send), or taken now from `ring`, filing the replies to other
    /// requests on the way. [`NO_SUCH_REQUEST`] if no place holds `want`.
    ///
    /// No wake-up is lost to a reply that another thread kept: its server's commit woke every
    /// wait of this client registered then, and one registered later looks (here, for `Kept`
    /// first) after registering.
    fn look(
        &mut self,
        shared: &Shared,
        ring: &MpmcRing,
        me: (u32, u64),
        owner: u16,
        stats: OwnStats<'_>,
        want: u64,
    ) -> Result<Option<Found>, Corruption> {
        loop {
            match self.holding(want) {
                Some(Place::Kept { len, no_reply }) => return Ok(Some(Found { len, no_reply })),
                Some(_) => {}
                None => return Err(NO_SUCH_REQUEST),
            }
            let Some(claim) = ring.try_claim_read(owner)? else {
                return Ok(None);
            };
            stats.add(counter::RECEIVED, 1);
            self.file(shared, ring, me, claim);
        }
    }
}

impl Client {
    /// How many servers are attached to the service now, in every process (a snapshot of the
    /// participant table; one whose process died counts until it is reaped). With none, a
    /// request waits in the request ring until one attaches.
    pub fn servers(&self) -> usize {
        self.me.count_attached(Role::Server)
    }

    /// Sets how blocking calls wait (default: spin 20 µs, then park).
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// Requests whose replies have not been taken from the reply ring yet: being waited for,
    /// or given up (timed out, failed, ticket dropped) with the reply still to come. Replies
    /// that have arrived are taken by the next wait, or by the next send that finds every
    /// place taken, so a late reply may still be counted here until then.
    pub fn outstanding(&self) -> usize {
        self.ledger().count(Place::is_waiting)
    }

    /// The ledger, locked; a panic while it was held (none of its steps panics) leaves it
    /// usable.
    #[inline]
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reply_ring(&self) -> &MpmcRing {
        &self.shared.replies[self.index as usize]
    }

    #[inline]
    fn send_with(&self, payload: &[u8], deadline: Deadline) -> Result<Pending, Waited<SendError>> {
        self.me.check_send()?;
        self.shared.check_len(payload.len())?;
        let taken = self.ledger().take();
        let id = match taken {
            Some(id) => id,
            None => self.make_room(deadline)?,
        };
        let ring = &self.shared.requests;
        let waited = self
            .me
            .waiting_on(ring.not_full(), counter::FULL)
            .wait_or_repair(self.wait, deadline, ring.write_claimer(self.owner), || {
                self.shared.repair_quietly()
            });
        let claim = match SendError::from_wait(waited) {
            Ok(claim) => claim,
            Err(e) => {
                self.ledger().free(id);
                return Err(e);
            }
        };
        let envelope = Envelope {
            correlation: id,
            generation: self.generation,
            client: self.index,
            flags: 0,
        };
        let result = put(&self.shared, ring, claim, &envelope, payload);
        ring.not_empty().notify();
        if let Err(e) = result {
            self.ledger().free(id);
            return Err(e.into());
        }
        self.me.stats().add(counter::SENT, 1);
        Ok(Pending {
            id,
            dropped: Some(self.dropped.clone()),
        })
    }

    /// Every place is taken: frees the places of dropped tickets whose replies were kept,
    /// takes the replies that have arrived (those of requests given up free their places),
    /// and if some places are held only for late replies, waits for them until `deadline`.
    #[cold]
    fn make_room(&self, deadline: Deadline) -> Result<u64, Waited<SendError>> {
        let shared = &self.shared;
        let ring = self.reply_ring();
        let (me, owner) = ((self.index, self.generation), self.owner);
        let stats = self.me.stats();
        let reclaim_and_drain = || {
            let mut ledger = self.ledger();
            let late = ledger.reclaim_dropped();
            stats.add(counter::RECEIVED, ledger.drain(shared, ring, me, owner)?);
            let id = ledger.take();
            Ok::<_, Corruption>((id, late || ledger.reclaim_dropped()))
        };
        let (id, late) = reclaim_and_drain().map_err(SendError::Corrupt)?;
        if let Some(id) = id {
            return Ok(id);
        }
        if !late {
            // Every place is held for a request still wanted or a reply kept or handed out:
            // only waiting for those (or dropping their tickets or replies) frees one.
            stats.add(counter::FULL, 1);
            return Err(Waited::Failed(SendError::AllPlacesHeld {
                places: shared.geometry.reply_capacity as usize,
            }));
        }
        if deadline.is_now() {
            // Some places will come free with late replies: a blocking send would wait.
            stats.add(counter::FULL, 1);
            return Err(Waited::Expired);
        }
        // Waiting for a late reply to free a place: counted as a send that found no room.
        let waited = self
            .me
            .waiting_on(ring.not_empty(), counter::FULL)
            .wait_or_repair(
                self.wait,
                deadline,
                || reclaim_and_drain().map(|(id, _)| id),
                || shared.repair_quietly(),
            );
        SendError::from_wait(waited)
    }

    /// Sends a request without waiting for its reply. Waits while the request ring is full,
    /// and while every place is taken but some only by requests given up (until their late
    /// replies come).
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("shmq-send-doc-{}", std::process::id()));
    /// use shmq::{Service, ServiceOptions};
    /// let service = Service::create(&path, &ServiceOptions::new())?;
    /// let (server, client) = (service.server()?, service.client()?);
    /// // Several requests in flight; their replies may come in any order.
    /// let first = client.send(b"a")?;
    /// let second = client.send(b"b")?;
    /// for _ in 0..2 {
    ///     let request = server.recv()?;
    ///     let upper = request.to_ascii_uppercase();
    ///     request.reply(&upper)?;
    /// }
    /// // Redeem the tickets in any order; the replies may be kept side by side.
    /// let b = client.wait(second)?;
    /// let a = client.wait(first)?;
    /// assert_eq!((&*a, &*b), (&b"A"[..], &b"B"[..]));
    /// # drop((a, b));
    /// # Service::remove(&path)?;
    /// # Ok::<(), shmq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`SendError::AllPlacesHeld`] (at once: waiting would never end) if every one of the
    /// `reply_capacity` places is held by a request still wanted, a reply kept for a later
    /// wait or a [`Reply`] not dropped yet; [`SendError::TooLarge`]; [`SendError::ClaimLost`]
    /// (nothing was sent); [`SendError::Corrupt`].
    #[inline]
    pub fn send(&self, payload: &[u8]) -> Result<Pending, SendError> {
        self.send_with(payload, Deadline::Never)
            .map_err(Waited::forever)
    }

    /// Like [`send`](Self::send), but fails with [`TrySendError::Full`] rather than wait for
    /// room (in the request ring, or for a place to come free with a late reply).
    ///
    /// # Errors
    /// [`TrySendError::Full`]; [`TrySendError::Send`] as for [`send`](Self::send).
    pub fn try_send(&self, payload: &[u8]) -> Result<Pending, TrySendError> {
        self.send_with(payload, Deadline::Now)
            .map_err(|e| e.or(TrySendError::Full))
    }

    /// Whether `pending` is a ticket of this client (a ticket of another client names a
    /// request of that client, whose id may well be outstanding here too).
    fn is_mine(&self, pending: &Pending) -> bool {
        pending
            .dropped
            .as_ref()
            .is_some_and(|d| Arc::ptr_eq(d, &self.dropped))
    }

    /// The reply to request `want`, kept in its place as `found`, handed out; a "no reply"
    /// notice frees the place and is an error.
    fn redeem(&self, want: u64, found: Found) -> Result<Reply<'_>, RecvError> {
        let redeemed = self.ledger().redeem(want, found);
        self.reply_of(want, redeemed)
    }

    /// The [`Reply`] (or the "no reply" error) for what [`Ledger::redeem`] did.
    #[inline]
    fn reply_of(&self, want: u64, redeemed: Redeemed) -> Result<Reply<'_>, RecvError> {
        match redeemed {
            Redeemed::Reply { buffer, len } => Ok(Reply {
                client: self,
                id: want,
                buffer,
                len,
            }),
            Redeemed::NoReply => Err(RecvError::NoReply),
        }
    }

    /// One non-blocking look for the reply to `want` (outstanding).
    fn look(&self, want: u64) -> Result<Option<Found>, Corruption> {
        self.look_in(&mut self.ledger(), want)
    }

    /// [`Ledger::look`] on this client's reply ring, in `ledger` (locked by the caller).
    #[inline]
    fn look_in(&self, ledger: &mut Ledger, want: u64) -> Result<Option<Found>, Corruption> {
        let (ring, me) = (self.reply_ring(), (self.index, self.generation));
        ledger.look(&self.shared, ring, me, self.owner, self.me.stats(), want)
    }

    /// [`look`](Self::look), and what it found redeemed under the same lock of the ledger
    /// (one lock and unlock, two locked instructions, fewer per reply than looking and then
    /// redeeming).
    #[inline]
    fn look_and_redeem(&self, want: u64) -> Result<Option<Redeemed>, Corruption> {
        let mut ledger = self.ledger();
        let found = self.look_in(&mut ledger, want)?;
        Ok(found.map(|found| ledger.redeem(want, found)))
    }

    #[inline]
    fn wait_with(
        &self,
        mut pending: Pending,
        deadline: Deadline,
    ) -> Result<Reply<'_>, Waited<RecvError>> {
        self.me.check_recv()?;
        let want = pending.id;
        // Another client's ticket: dropped here, it gives its request up there.
        if !self.is_mine(&pending) {
            return Err(RecvError::WrongClient.into());
        }
        // Redeemed. The first look finds a reply kept already, or a ticket this client holds
        // no place for (`no_such_request`); so the common wait locks the ledger once.
        pending.dropped = None;
        let ring = self.reply_ring();
        let found = self
            .me
            .waiting_on(ring.not_empty(), counter::EMPTY)
            .wait_or_repair(
                self.wait,
                deadline,
                || self.look_and_redeem(want),
                || self.shared.repair_quietly(),
            );
        match found {
            Ok(Some(redeemed)) => Ok(self.reply_of(want, redeemed)?),
            Ok(None) => {
                // Given up: its place is freed when its late reply comes (and is discarded).
                self.ledger().give_up(want);
                Err(Waited::Expired)
            }
            Err(c) => {
                self.ledger().give_up(want);
                Err(RecvError::Corrupt(c).into())
            }
        }
    }

    /// Waits for the reply to `pending`. Replies to other outstanding requests that arrive
    /// meanwhile are kept for their own `wait`. The [`Reply`] borrows the client shared: hold
    /// several at once, or send more requests meanwhile (each held reply holds its request's
    /// place, see [`Client`]).
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("shmq-wait-doc-{}", std::process::id()));
    /// use shmq::{RecvError, Service, ServiceOptions};
    /// let service = Service::create(&path, &ServiceOptions::new())?;
    /// let (server, client) = (service.server()?, service.client()?);
    /// let pending = client.send(b"resize img-7")?;
    /// let request = server.recv()?;
    /// drop(request); // dropped unanswered: the client is told there will be no reply
    /// assert_eq!(client.wait(pending).unwrap_err(), RecvError::NoReply);
    /// # Service::remove(&path)?;
    /// # Ok::<(), shmq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`RecvError::NoReply`] if the server dropped the request without replying;
    /// [`RecvError::WrongClient`] if `pending` was made by another client (the ticket is
    /// dropped, which gives its request up on that client); [`RecvError::Corrupt`] if shared
    /// memory breaks the protocol (the request is then given up, as after a timeout).
    #[inline]
    pub fn wait(&self, pending: Pending) -> Result<Reply<'_>, RecvError> {
        self.wait_with(pending, Deadline::Never)
            .map_err(Waited::forever)
    }

    /// Waits at most `timeout` for the reply to `pending`. On timeout the request is given up:
    /// its reply, if it ever comes, is discarded, and only then is its place free again.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`]; [`RecvTimeoutError::Recv`] as for [`wait`](Self::wait).
    pub fn wait_timeout(
        &self,
        pending: Pending,
        timeout: Duration,
    ) -> Result<Reply<'_>, RecvTimeoutError> {
        self.wait_with(pending, Deadline::after(timeout))
            .map_err(|e| e.or(RecvTimeoutError::Timeout))
    }

    /// Sends a request and waits for its reply.
    ///
    /// # Errors
    /// [`Error::Send`] or [`Error::Recv`], as for [`send`](Self::send) and [`wait`](Self::wait).
    #[inline]
    pub fn request(&self, payload: &[u8]) -> Result<Reply<'_>, Error> {
        let pending = self.send(payload)?;
        Ok(self.wait(pending)?)
    }

    /// Sends a request and waits at most `timeout` (in all) for its reply.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the deadline passed: before the request could be sent (no room
    /// in the request ring, or no place came free: every place held by requests given up,
    /// whose late replies have not come, typically while no server is attached), or before
    /// its reply came (a late reply is discarded, never handed to a later request); and
    /// [`Error::Send`] or [`Error::Recv`] as for [`request`](Self::request).
    pub fn request_timeout(&self, payload: &[u8], timeout: Duration) -> Result<Reply<'_>, Error> {
        let deadline = Deadline::after(timeout);
        let pending = self
            .send_with(payload, deadline)
            .map_err(|e| e.or(SendTimeoutError::Timeout))?;
        Ok(self
            .wait_with(pending, deadline)
            .map_err(|e| e.or(RecvTimeoutError::Timeout))?)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.me.in_own_process() {
            // Detach: replies still in flight for this generation are dropped by servers, or
            // by the entry's next owner, whose generation differs.
            let state = self.shared.client_state(self.index);
            let old = state.load(Ordering::Acquire);
            state.store(
                old & !(CLIENT_ATTACHED | CLIENT_OWNER_MASK),
                Ordering::Release,
            );
        }
        // Then free the reply slots it leaked, and its participant entry.
        self.shared.detach(&self.me);
    }
}

impl Drop for Server {
    /// Detaches: delivers again the requests this server leaked, then frees its entry.
    fn drop(&mut self) {
        self.shared.detach(&self.me);
    }
}

/// What the futures of [`crate::asynchronous`] need: the cell a server waits on for
/// requests, what keeps it mapped, and the stall sweep.
impl Server {
    pub(crate) fn async_cell(&self) -> (WaitCell<'_>, KeepAlive) {
        (
            self.shared.requests.not_empty(),
            self.shared.mapping.clone(),
        )
    }

    pub(crate) fn async_repair(&self) {
        self.shared.repair_quietly();
    }
}

/// A ticket of this client's whose request holds no place (any more).
const NO_SUCH_REQUEST: Corruption = Corruption::BadState("no such request is outstanding");

/// What `Client::wait_async` needs: the cell a client waits on for replies, what keeps it
/// mapped, the stall sweep, and a look for a reply that neither redeems the ticket nor gives
/// the request up when the reply has not come (so a pending future can look again, and a
/// dropped one leaves the ticket as it was).
impl Client {
    pub(crate) fn async_cell(&self) -> (WaitCell<'_>, KeepAlive) {
        (self.reply_ring().not_empty(), self.shared.mapping.clone())
    }

    pub(crate) fn async_repair(&self) {
        self.shared.repair_quietly();
    }

    /// One non-blocking look for the reply to `pending`. On an error the request is given up,
    /// as by a failed [`wait`](Self::wait).
    pub(crate) fn async_look(&self, pending: &Pending) -> Result<Option<Found>, RecvError> {
        self.me.check_recv()?;
        let want = pending.id;
        if !self.is_mine(pending) {
            return Err(RecvError::WrongClient);
        }
        // The look checks that the ticket's place holds its request (`NO_SUCH_REQUEST`).
        match self.look(want) {
            Ok(found) => Ok(found),
            Err(c) => {
                self.ledger().give_up(want);
                Err(RecvError::Corrupt(c))
            }
        }
    }

    /// Redeems `pending` with what [`async_look`](Self::async_look) found.
    pub(crate) fn async_reply(
        &self,
        pending: &mut Pending,
        found: Found,
    ) -> Result<Reply<'_>, RecvError> {
        pending.dropped = None; // redeemed
        self.redeem(pending.id, found)
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Service>();
    is::<Server>();
    is::<Client>();
}
