//! The baselines every shmq figure is quoted against, and the two measurement interfaces the
//! shmq cases implement too ([`RoundTrip`], [`OneWay`]), so that every case goes through the
//! same timing code.
//!
//! * Round trips between two processes: raw atomic and raw shared-futex ping-pong over a
//!   [`ShmFile`] (the protocol of [`super::shm`]), a Unix socket, a pipe; and two threads of one
//!   process over `std::sync::mpsc`.
//! * One-way throughput from a peer to the parent: a plain single-producer single-consumer ring in
//!   shared memory, and a Unix stream socket.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::peers::{bench_cpus, pin_to_cpu, spawn_peer, spawn_peer_with, Peer, Role};
use super::shm::{publish, wait_doorbell, wait_until, Doorbell, Mailbox, Padded, SharedHeader};
use super::shm::{ShmFile, Wait};
use super::stats::{
    latency_percentiles, sample_count, Bracketed, Percentiles, RAW_BRACKET_ROUND_TRIPS,
};

const SHM_ECHO: &str = "shm-echo";
const STDIO_ECHO: &str = "stdio-echo";
const SPSC_PRODUCER: &str = "spsc-producer";
const STREAM_PRODUCER: &str = "stream-producer";

/// The roles of the baselines' peers, which every bench binary can play.
pub(super) const BUILTIN_ROLES: &[(&str, Role)] = &[
    (SHM_ECHO, shm_echo_peer),
    (STDIO_ECHO, stdio_echo_peer),
    (SPSC_PRODUCER, spsc_producer_peer),
    (STREAM_PRODUCER, stream_producer_peer),
];

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

/// Largest message the round-trip baselines carry.
pub const MAX_MESSAGE: usize = 64 << 10;

/// The parent's side of a ping-pong: send `msg` to the peer, which echoes it into `reply`
/// (`reply.len() == msg.len()`). The shmq cases implement this too, so every round trip goes
/// through the same timing code.
pub trait RoundTrip {
    /// One round trip.
    fn round_trip(&mut self, msg: &[u8], reply: &mut [u8]);

    /// Let the peer stop spinning until the next round trip (no-op for peers that block anyway).
    fn idle(&mut self) {}

    /// Time `iters` round trips of `msg_size` bytes, for criterion's `iter_custom`. One untimed
    /// round trip first wakes the peer and checks the echo; the peer idles afterwards.
    fn run(&mut self, msg_size: usize, iters: u64) -> Duration {
        let (msg, mut reply) = (test_message(msg_size), vec![0; msg_size]);
        self.round_trip(&msg, &mut reply);
        assert!(reply == msg, "the peer echoed different bytes");
        let start = Instant::now();
        for _ in 0..iters {
            self.round_trip(&msg, &mut reply);
        }
        let elapsed = start.elapsed();
        self.idle();
        elapsed
    }

    /// [`latency_percentiles`] of `n` round trips of `msg_size` bytes; the peer idles afterwards.
    fn percentiles(&mut self, msg_size: usize, n: usize) -> Percentiles {
        let (msg, mut reply) = (test_message(msg_size), vec![0; msg_size]);
        let percentiles = latency_percentiles(&mut || self.round_trip(&msg, &mut reply), n);
        assert!(reply == msg, "the peer echoed different bytes");
        self.idle();
        percentiles
    }
}

fn test_message(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[repr(C)]
struct PingPongHeader {
    request: Padded<Mailbox>,
    reply: Padded<Mailbox>,
}

// SAFETY: only atomics and padding.
unsafe impl SharedHeader for PingPongHeader {}

const _: () = assert!(size_of::<PingPongHeader>() == 256);
const REQUEST_BUF: usize = size_of::<PingPongHeader>();
const REPLY_BUF: usize = REQUEST_BUF + MAX_MESSAGE;

/// Raw shared-memory ping-pong with another process: the request and reply payloads are copied
/// through buffers in a [`ShmFile`], signalled by a sequence word each, busy-polled
/// ([`ShmPingPong::raw_atomic`]) or parked on a shared futex every time ([`ShmPingPong::raw_futex`]).
/// The peer copies the request out into its own buffer and from there into the reply, as a
/// receive-then-send echo over a queue would.
pub struct ShmPingPong {
    shm: ShmFile,
    doorbell: Doorbell,
    peer: Peer,
}

impl ShmPingPong {
    /// Busy-spin on both sides: the floor for any shared-memory round trip.
    pub fn raw_atomic() -> Self {
        Self::spawn(Wait::Spin)
    }

    /// Both sides `FUTEX_WAIT` for every message and `FUTEX_WAKE` after every send.
    pub fn raw_futex() -> Self {
        Self::spawn(Wait::Park)
    }

    /// Spawn the echo peer and wait until it has answered once.
    pub fn spawn(how: Wait) -> Self {
        let shm = ShmFile::create(REPLY_BUF + MAX_MESSAGE);
        let args = [shm.path().display().to_string(), how.as_arg().to_owned()];
        let peer = spawn_peer(SHM_ECHO, &args);
        let mut this = Self {
            shm,
            doorbell: Doorbell::new(how),
            peer,
        };
        this.run(64, 0);
        this.shm.remove(); // Both sides have it mapped now.
        this
    }
}

impl RoundTrip for ShmPingPong {
    fn round_trip(&mut self, msg: &[u8], reply: &mut [u8]) {
        assert_eq!(msg.len(), reply.len());
        let header: &PingPongHeader = self.shm.header();
        // SAFETY: the request buffer is ours until we ring: the peer copied the previous request
        // out before publishing its reply, which we Acquire-loaded (or there was none).
        unsafe { self.shm.write(REQUEST_BUF, msg) };
        // Relaxed: published by the Release in `ring`.
        header
            .request
            .0
            .arg
            .store(msg.len() as u64, Ordering::Relaxed);
        let seq = self.doorbell.ring(&header.request.0.seq);
        let peer = &mut self.peer;
        wait_until(
            &header.reply.0.seq,
            self.doorbell.how,
            |value| value == seq,
            || peer.check_alive(),
        );
        // Relaxed: ordered after the Acquire load of the reply word above.
        let len = header.reply.0.arg.load(Ordering::Relaxed);
        assert_eq!(len, msg.len() as u64, "reply length");
        // SAFETY: the peer published the reply (Acquire above) and does not touch the reply
        // buffer again until our next request.
        unsafe { self.shm.read(REPLY_BUF, reply) };
    }

    fn idle(&mut self) {
        let header: &PingPongHeader = self.shm.header();
        self.doorbell.park_peer(&header.request.0.seq);
    }
}

/// Peer of [`ShmPingPong`]; args: file path, wait mode.
fn shm_echo_peer(args: &[String]) {
    let shm = ShmFile::open(Path::new(&args[0]));
    let how = Wait::from_arg(&args[1]);
    let header: &PingPongHeader = shm.header();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut last = 0;
    loop {
        let seq = wait_doorbell(&header.request.0.seq, &mut last, how);
        // Relaxed: ordered after the Acquire load of the doorbell. Bounded: the mapping is input.
        let len = header
            .request
            .0
            .arg
            .load(Ordering::Relaxed)
            .min(MAX_MESSAGE as u64);
        let msg = &mut buf[..len as usize];
        // SAFETY: the parent published this request (Acquire in `wait_doorbell`) and does not
        // touch the request buffer again until it has our reply.
        unsafe { shm.read(REQUEST_BUF, msg) };
        // SAFETY: the parent reads the reply buffer only after it sees the reply word we store
        // below, and does not read it again until its next request.
        unsafe { shm.write(REPLY_BUF, msg) };
        // Relaxed: published by the Release in `publish`.
        header.reply.0.arg.store(len, Ordering::Relaxed);
        publish(&header.reply.0.seq, seq, how);
    }
}

/// Ping-pong over a byte stream to another process: a Unix socket pair
/// ([`StreamPingPong::unix_socket`]) or two pipes ([`StreamPingPong::pipe`]). The peer echoes
/// whatever each `read` returns.
pub struct StreamPingPong {
    to_peer: File,
    from_peer: File,
    peer: Peer, // Last: the peer sees EOF before it is killed.
}

impl StreamPingPong {
    /// Over `socketpair(AF_UNIX, SOCK_STREAM)`, the peer's end being its stdin and stdout.
    pub fn unix_socket() -> Self {
        let (to_peer, from_peer, peer) = spawn_on_socket(STDIO_ECHO);
        Self {
            to_peer,
            from_peer,
            peer,
        }
    }

    /// Over two pipes: the peer's stdin and stdout.
    pub fn pipe() -> Self {
        let mut peer = spawn_peer_with(STDIO_ECHO, &[], |cmd| {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        });
        let to_peer = OwnedFd::from(peer.child().stdin.take().expect("piped stdin"));
        let from_peer = OwnedFd::from(peer.child().stdout.take().expect("piped stdout"));
        Self {
            to_peer: to_peer.into(),
            from_peer: from_peer.into(),
            peer,
        }
    }
}

impl RoundTrip for StreamPingPong {
    fn round_trip(&mut self, msg: &[u8], reply: &mut [u8]) {
        // Bounded so that neither side can block writing while the other does too.
        assert!(msg.len() <= MAX_MESSAGE && msg.len() == reply.len());
        self.to_peer.write_all(msg).expect("write to peer");
        if let Err(e) = self.from_peer.read_exact(reply) {
            self.peer.check_alive();
            panic!("read from peer: {e}");
        }
    }
}

/// Spawn `role` with one end of a Unix socket pair as its stdin and stdout; returns our end twice
/// (for writing, for reading) and the peer.
fn spawn_on_socket(role: &str) -> (File, File, Peer) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let theirs = OwnedFd::from(theirs);
    let theirs_out = theirs.try_clone().expect("dup socket");
    let peer = spawn_peer_with(role, &[], |cmd| {
        cmd.stdin(theirs).stdout(theirs_out);
    });
    let ours = OwnedFd::from(ours);
    let reader = ours.try_clone().expect("dup socket");
    (ours.into(), reader.into(), peer)
}

/// The peer's stdin and stdout as unbuffered files (a pipe or a socket each).
fn stdio_files() -> (File, File) {
    let input = io::stdin().as_fd().try_clone_to_owned().expect("dup stdin");
    let output = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stdout");
    (input.into(), output.into())
}

/// Peer of [`StreamPingPong`]: echo until EOF.
fn stdio_echo_peer(_: &[String]) {
    let (mut input, mut output) = stdio_files();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        match input.read(&mut buf).expect("peer read") {
            0 => return,
            n => output.write_all(&buf[..n]).expect("peer write"),
        }
    }
}

/// Ping-pong between two threads of this process over `std::sync::mpsc`, the peer thread pinned
/// to the peer CPU. One buffer travels back and forth; the message is copied into it and the
/// reply out of it, so payload size matters as for the other baselines.
pub struct ThreadPingPong {
    to_peer: Option<mpsc::Sender<Vec<u8>>>,
    from_peer: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ThreadPingPong {
    /// Spawn the echo thread.
    pub fn spawn() -> Self {
        let (to_peer, requests) = mpsc::channel::<Vec<u8>>();
        let (replies, from_peer) = mpsc::channel();
        let peer_cpu = bench_cpus().map(|(_, peer)| peer);
        let thread = thread::spawn(move || {
            if let Some(cpu) = peer_cpu {
                pin_to_cpu(cpu);
            }
            for msg in requests {
                if replies.send(msg).is_err() {
                    return;
                }
            }
        });
        let buf = Vec::with_capacity(MAX_MESSAGE);
        Self {
            to_peer: Some(to_peer),
            from_peer,
            buf,
            thread: Some(thread),
        }
    }
}

impl RoundTrip for ThreadPingPong {
    fn round_trip(&mut self, msg: &[u8], reply: &mut [u8]) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(msg);
        self.to_peer
            .as_ref()
            .expect("live")
            .send(buf)
            .expect("peer thread gone");
        self.buf = self.from_peer.recv().expect("peer thread gone");
        reply.copy_from_slice(&self.buf);
    }
}

impl Drop for ThreadPingPong {
    fn drop(&mut self) {
        self.to_peer = None; // Ends the peer's loop.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One-way throughput
// ---------------------------------------------------------------------------------------------

/// Size of a message in the throughput baselines.
pub const STREAM_MESSAGE: usize = 64;

/// A one-way throughput measurement. In the baselines a peer produces and the parent consumes;
/// a shmq case may send the other way, or count requests.
pub trait OneWay {
    /// Time `iters` messages of [`STREAM_MESSAGE`] bytes, for criterion's `iter_custom` with
    /// `Throughput::Elements(1)`. Excludes waking the peer.
    fn run(&mut self, iters: u64) -> Duration;

    /// Anything the report should say about the runs so far (such as messages lost).
    fn note(&self) -> Option<String> {
        None
    }
}

/// Each message starts with its sequence number, so the consumer checks order and loss.
pub fn stamp(msg: &mut [u8], seq: u64) {
    msg[..8].copy_from_slice(&seq.to_le_bytes());
}

/// Check that `msg` is a [`STREAM_MESSAGE`]-byte message stamped `seq`.
pub fn check_stamp(msg: &[u8], seq: u64) {
    assert_eq!(msg.len(), STREAM_MESSAGE, "message length");
    let got = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
    assert_eq!(got, seq, "message out of order or lost");
}

#[repr(C)]
struct RingHeader {
    /// Messages written so far; written by the producer only.
    head: Padded<AtomicU64>,
    /// Messages read so far; written by the consumer only.
    tail: Padded<AtomicU64>,
    /// Parent → peer doorbell; `arg` is the total number of messages to have produced.
    command: Padded<Mailbox>,
    /// Peer → parent: the last doorbell value the peer has seen (it is awake).
    ack: Padded<AtomicU64>,
}

// SAFETY: only atomics and padding.
unsafe impl SharedHeader for RingHeader {}

const _: () = assert!(size_of::<RingHeader>() == 512);

/// Where message `seq` goes in a ring of `slots` (a power of two) slots.
fn slot_offset(seq: u64, slots: u64) -> usize {
    size_of::<RingHeader>() + (seq & (slots - 1)) as usize * STREAM_MESSAGE
}

/// A plain single-producer single-consumer ring in a [`ShmFile`]: fixed 64-byte slots, head and
/// tail counters in their own 128-byte lines, busy-polled, each side caching the other's counter
/// and reloading it only when the ring looks full (producer) or empty (consumer). The peer
/// produces, the parent consumes.
pub struct SpscRingThroughput {
    shm: ShmFile,
    slots: u64,
    head: u64,
    tail: u64,
    target: u64,
    doorbell: Doorbell,
    peer: Peer,
}

impl SpscRingThroughput {
    /// Spawn the producer with a ring of `slots` (a power of two) slots; wait until it is up.
    pub fn spawn(slots: u64) -> Self {
        assert!(slots.is_power_of_two());
        let shm = ShmFile::create(size_of::<RingHeader>() + slots as usize * STREAM_MESSAGE);
        let peer = spawn_peer(
            SPSC_PRODUCER,
            &[shm.path().display().to_string(), slots.to_string()],
        );
        let mut doorbell = Doorbell::new(Wait::Spin);
        doorbell.peer_parked = true; // Not parked but not started: wait for it as if it were.
        let mut this = Self {
            shm,
            slots,
            head: 0,
            tail: 0,
            target: 0,
            doorbell,
            peer,
        };
        this.wake();
        this.shm.remove();
        this
    }

    /// If the peer is parked, ring and wait until it acknowledges (it is spinning again).
    fn wake(&mut self) {
        if self.doorbell.peer_parked {
            let header: &RingHeader = self.shm.header();
            let seq = self.doorbell.ring(&header.command.0.seq);
            let peer = &mut self.peer;
            wait_until(
                &header.ack.0,
                Wait::Spin,
                |ack| ack == seq,
                || peer.check_alive(),
            );
        }
    }
}

impl OneWay for SpscRingThroughput {
    fn run(&mut self, iters: u64) -> Duration {
        self.wake();
        let header: &RingHeader = self.shm.header();
        let mut msg = [0u8; STREAM_MESSAGE];
        let start = Instant::now();
        self.target += iters;
        // Relaxed: published by the Release in `ring`.
        header.command.0.arg.store(self.target, Ordering::Relaxed);
        self.doorbell.ring(&header.command.0.seq);
        for _ in 0..iters {
            if self.tail == self.head {
                let (tail, peer) = (self.tail, &mut self.peer);
                self.head = wait_until(
                    &header.head.0,
                    Wait::Spin,
                    |head| head != tail,
                    || peer.check_alive(),
                );
            }
            // SAFETY: the producer published this slot (Acquire load of head, now or earlier) and
            // does not overwrite it before it sees our tail move past it.
            unsafe { self.shm.read(slot_offset(self.tail, self.slots), &mut msg) };
            check_stamp(&msg, self.tail);
            self.tail += 1;
            // Release: our copy out of the slot happens before the producer reuses it (it
            // Acquire-loads tail).
            header.tail.0.store(self.tail, Ordering::Release);
        }
        let elapsed = start.elapsed();
        self.doorbell.park_peer(&header.command.0.seq);
        elapsed
    }
}

/// Peer of [`SpscRingThroughput`]; args: file path, slot count.
fn spsc_producer_peer(args: &[String]) {
    let shm = ShmFile::open(Path::new(&args[0]));
    let slots: u64 = args[1].parse().expect("slot count");
    assert!(slots.is_power_of_two());
    let header: &RingHeader = shm.header();
    let mut msg = [0u8; STREAM_MESSAGE];
    let (mut head, mut tail, mut last) = (0u64, 0u64, 0u64);
    loop {
        let seq = wait_doorbell(&header.command.0.seq, &mut last, Wait::Spin);
        // Relaxed: ordered after the Acquire load of the doorbell.
        let target = header.command.0.arg.load(Ordering::Relaxed);
        publish(&header.ack.0, seq, Wait::Spin);
        while head < target {
            if head - tail == slots {
                tail = wait_until(
                    &header.tail.0,
                    Wait::Spin,
                    |tail| head - tail < slots,
                    || {},
                );
            }
            stamp(&mut msg, head);
            // SAFETY: the slot is free: the consumer's tail is past its previous occupant (Acquire
            // load of tail, now or earlier) and it reads this slot only after we publish head.
            unsafe { shm.write(slot_offset(head, slots), &msg) };
            head += 1;
            // Release: the slot's bytes are visible to the consumer once it sees this head.
            header.head.0.store(head, Ordering::Release);
        }
    }
}

/// One-way throughput over a Unix stream socket: the peer `write`s each 64-byte message, the
/// parent `read`s each one (one syscall per message on each side).
pub struct UnixStreamThroughput {
    to_peer: File,
    from_peer: File,
    sent: u64,
    peer: Peer,
}

impl UnixStreamThroughput {
    /// Spawn the producer.
    pub fn spawn() -> Self {
        let (to_peer, from_peer, peer) = spawn_on_socket(STREAM_PRODUCER);
        let mut this = Self {
            to_peer,
            from_peer,
            sent: 0,
            peer,
        };
        this.run(1); // Up and producing.
        this
    }
}

impl OneWay for UnixStreamThroughput {
    fn run(&mut self, iters: u64) -> Duration {
        let mut msg = [0u8; STREAM_MESSAGE];
        let start = Instant::now();
        self.to_peer
            .write_all(&iters.to_le_bytes())
            .expect("write to peer");
        for _ in 0..iters {
            if let Err(e) = self.from_peer.read_exact(&mut msg) {
                self.peer.check_alive();
                panic!("read from peer: {e}");
            }
            check_stamp(&msg, self.sent);
            self.sent += 1;
        }
        start.elapsed()
    }
}

/// Peer of [`UnixStreamThroughput`]: for each count read, write that many messages; until EOF.
fn stream_producer_peer(_: &[String]) {
    let (mut input, mut output) = stdio_files();
    let (mut msg, mut count, mut sent) = ([0u8; STREAM_MESSAGE], [0u8; 8], 0u64);
    while input.read_exact(&mut count).is_ok() {
        for _ in 0..u64::from_le_bytes(count) {
            stamp(&mut msg, sent);
            output.write_all(&msg).expect("peer write");
            sent += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cases: a name and how to build it
// ---------------------------------------------------------------------------------------------

/// Builds a case (spawning its peers) for criterion or the report.
pub type Spawn<T> = Box<dyn Fn() -> Box<T>>;

/// A named round-trip case.
pub type RoundTripCase = (&'static str, Spawn<dyn RoundTrip>);

/// A named one-way case.
pub type OneWayCase = (&'static str, Spawn<dyn OneWay>);

/// The raw atomic ping-pong as a case.
pub fn raw_atomic_case() -> RoundTripCase {
    (
        "raw atomic",
        Box::new(|| Box::new(ShmPingPong::raw_atomic())),
    )
}

/// Call first thing in a bench's `main`. In a peer (`SHMQ_BENCH_ROLE` set) this runs the role,
/// looked up in `extra` and then in the built-in baseline roles, and exits the process. In the
/// parent it pins the calling thread to the parent CPU and returns.
pub fn run_peer_if_requested(extra: &[(&str, Role)]) {
    super::peers::run_peer_among(extra, BUILTIN_ROLES);
}

/// Take a raw round-trip median of `msg_size` bytes ([`RAW_BRACKET_ROUND_TRIPS`] round trips on
/// `raw`, normally a [`ShmPingPong::raw_atomic`]) immediately before and after `case`. `raw`'s
/// peer is parked while `case` runs.
pub fn bracket_with_raw(
    raw: &mut dyn RoundTrip,
    msg_size: usize,
    case: impl FnOnce() -> Percentiles,
) -> Bracketed {
    let n = sample_count(RAW_BRACKET_ROUND_TRIPS);
    let raw_before = raw.percentiles(msg_size, n).median;
    let case = case();
    let raw_after = raw.percentiles(msg_size, n).median;
    Bracketed {
        case,
        raw_before,
        raw_after,
    }
}
