//! Cross-process benchmark harness for shmq: peer processes, CPU pinning, shared scratch files,
//! the baselines every shmq figure is quoted against, and a percentile reporter.
//!
//! # Peers
//! A bench binary plays both sides. Its `main` calls [`run_peer_if_requested`] first; the parent
//! then [`spawn_peer`]s copies of its own executable with `SHMQ_BENCH_ROLE=<role>`, which run the
//! role's function instead of criterion and exit. The parent is pinned to one CPU and every peer
//! to another ([`bench_cpus`]). A [`Peer`] kills and reaps its process on drop, and the peer asks
//! the kernel to SIGKILL it if the parent dies, so neither a panic nor a killed parent leaves an
//! orphan spinning on a core.
//!
//! # Protocol of the shared-memory baselines
//! Both sides map one file in `/dev/shm` ([`ShmFile`]). Control words are `AtomicU64`s, each in its
//! own 128-byte line ([`Padded`]). A writer fills the payload with plain copies, then stores the
//! word with `Release`; the reader loads it with `Acquire` and only then copies the payload. That
//! pair is the only ordering needed: between those two points the protocol gives one process
//! exclusive use of the payload bytes, so lengths and counts beside the word can be `Relaxed`.
//!
//! Waiting is either a busy spin or "parked every time": a waiter that finds the word unchanged
//! calls `FUTEX_WAIT` at once (shared futex, no `FUTEX_PRIVATE_FLAG`: the other side is another
//! process) and the writer always calls `FUTEX_WAKE` after its store. In a ping-pong the other side
//! can hardly have answered yet, so about 97% of waits park (counted with `perf stat`). No wake-up
//! is lost: `FUTEX_WAIT` compares the word with the value the waiter last saw under the kernel's
//! futex lock, so a store that lands first makes it return at once. Waits time out every 100 ms to
//! check that the peer is alive.
//!
//! The parent commands a peer through a doorbell word (a sequence number). Between measurements it
//! rings with the [`PARK_BIT`] set: the peer then sleeps on the futex instead of spinning, so an
//! idle baseline peer (such as the raw ping-pong used to bracket another case) does not steal the
//! peer core from the case being measured. The next ring wakes it.
//!
//! # Helpers of the shmq benches
//! A [`WatchedPeer`] ends the parent if it dies early (the parent may be blocked in a shmq call,
//! which cannot notice). [`QueuePath`] names a queue file and removes it. A [`JobPeer`] runs
//! counted jobs on command ([`serve_jobs`]: take `n` messages, make `n` requests) and sleeps on
//! a futex between them, so several peers can be driven at once and none spins while another
//! case is measured. Then the criterion groups, the bracketed percentile report, interleaved
//! throughput rounds and the targets table that the pubsub and reqrep benches share.
#![allow(dead_code)] // Each bench binary uses a different part of this module.

use std::env;
use std::fs::{self, File, OpenOptions};
use std::hint;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{self, Child, Command, Stdio};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use memmap2::{MmapOptions, MmapRaw};
use nix::libc;
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::{getppid, Pid};
use shmq::WaitStrategy;

#[cfg(not(all(target_os = "linux", target_endian = "little")))]
compile_error!("the shmq benches need Linux on a little-endian CPU (a futex waits on the low half of an AtomicU64)");

// ---------------------------------------------------------------------------------------------
// Peer processes
// ---------------------------------------------------------------------------------------------

/// Environment variable that makes a bench binary run as the named peer role.
pub const ROLE_ENV: &str = "SHMQ_BENCH_ROLE";
/// The parent's pid, so a peer can tell whether its parent died before it asked to die with it.
const PARENT_ENV: &str = "SHMQ_BENCH_PARENT";
/// The CPU a peer pins itself to.
const CPU_ENV: &str = "SHMQ_BENCH_CPU";

/// A peer role: runs in the re-executed bench binary with the arguments given to [`spawn_peer`].
pub type Role = fn(&[String]);

const SHM_ECHO: &str = "shm-echo";
const STDIO_ECHO: &str = "stdio-echo";
const SPSC_PRODUCER: &str = "spsc-producer";
const STREAM_PRODUCER: &str = "stream-producer";

const BUILTIN_ROLES: &[(&str, Role)] = &[
    (SHM_ECHO, shm_echo_peer),
    (STDIO_ECHO, stdio_echo_peer),
    (SPSC_PRODUCER, spsc_producer_peer),
    (STREAM_PRODUCER, stream_producer_peer),
];

/// Call first thing in a bench's `main`. In a peer (`SHMQ_BENCH_ROLE` set) this runs the role,
/// looked up in `extra` and then in the built-in baseline roles, and exits the process. In the
/// parent it pins the calling thread to the parent CPU and returns.
pub fn run_peer_if_requested(extra: &[(&str, Role)]) {
    let Some(role) = env::var_os(ROLE_ENV) else {
        if let Some((parent_cpu, _)) = bench_cpus() {
            pin_to_cpu(parent_cpu);
        }
        return;
    };
    let role = role.to_string_lossy();
    let Some(&(_, run)) = extra
        .iter()
        .chain(BUILTIN_ROLES)
        .find(|(name, _)| *name == role)
    else {
        eprintln!("shmq bench: unknown peer role `{role}`");
        process::exit(2);
    };
    die_with_parent();
    if let Some(cpu) = env::var(CPU_ENV).ok().and_then(|cpu| cpu.parse().ok()) {
        pin_to_cpu(cpu);
    }
    let args: Vec<String> = env::args().skip(1).collect();
    run(&args);
    process::exit(0);
}

/// Whether criterion will measure (`cargo bench`), as opposed to `cargo test --benches`, `--test`,
/// `--list` or `--profile-time`: run the percentile tables only then.
pub fn benchmark_mode() -> bool {
    let args: Vec<String> = env::args().collect();
    let has = |flag: &str| {
        args.iter()
            .any(|arg| arg == flag || arg.starts_with(&format!("{flag}=")))
    };
    has("--bench") && !has("--test") && !has("--list") && !has("--profile-time")
}

/// Ask the kernel to SIGKILL this peer when the parent goes, and exit if it has already gone.
fn die_with_parent() {
    prctl::set_pdeathsig(Signal::SIGKILL).expect("prctl(PR_SET_PDEATHSIG)");
    let parent: Option<i32> = env::var(PARENT_ENV).ok().and_then(|pid| pid.parse().ok());
    if parent != Some(getppid().as_raw()) {
        process::exit(1); // Re-parented already: the parent died before the prctl.
    }
}

/// A running peer process. Dropping it kills and reaps the process.
pub struct Peer {
    child: Child,
    role: String,
}

impl Peer {
    /// The process, e.g. to take its piped stdin/stdout.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Panic if the peer has exited; called from the slow path of every wait on a peer.
    pub fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("bench peer `{}` exited early: {status}", self.role);
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Errors mean it has already exited (and been reaped by `try_wait`): nothing to clean up.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Re-execute this bench binary as `role` with `args`, pinned to the peer CPU.
///
/// The peer dies with the thread that spawned it (`PR_SET_PDEATHSIG`): spawn from the bench's
/// main thread, or from a thread that outlives the peer.
pub fn spawn_peer(role: &str, args: &[String]) -> Peer {
    spawn_peer_with(role, args, |_| {})
}

/// [`spawn_peer`], letting `configure` adjust the command (stdio) before it is spawned. Stdin is
/// null unless `configure` sets it; stdout and stderr are inherited.
pub fn spawn_peer_with(role: &str, args: &[String], configure: impl FnOnce(&mut Command)) -> Peer {
    let exe = env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(ROLE_ENV, role)
        .env(PARENT_ENV, process::id().to_string())
        .stdin(Stdio::null());
    match bench_cpus() {
        Some((_, peer_cpu)) => cmd.env(CPU_ENV, peer_cpu.to_string()),
        None => cmd.env_remove(CPU_ENV),
    };
    configure(&mut cmd);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn bench peer `{role}`: {e}"));
    Peer {
        child,
        role: role.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// CPU pinning
// ---------------------------------------------------------------------------------------------

/// The (parent, peer) CPUs: the first two in this process's affinity mask when first called
/// (which [`run_peer_if_requested`] does before pinning), or `None`, with a note on stderr, when
/// fewer than two are available; then nothing is pinned.
pub fn bench_cpus() -> Option<(usize, usize)> {
    static CPUS: OnceLock<Option<(usize, usize)>> = OnceLock::new();
    *CPUS.get_or_init(|| {
        let set = sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity");
        let mut cpus = (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false));
        match (cpus.next(), cpus.next()) {
            (Some(parent), Some(peer)) => Some((parent, peer)),
            _ => {
                eprintln!("note: fewer than 2 CPUs available, benches run unpinned");
                None
            }
        }
    })
}

/// Pin the calling thread to CPU `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).unwrap_or_else(|e| panic!("CPU {cpu}: {e}"));
    sched_setaffinity(Pid::from_raw(0), &set).unwrap_or_else(|e| panic!("pin to CPU {cpu}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Shared scratch file
// ---------------------------------------------------------------------------------------------

/// A scratch file in `/dev/shm`, mapped shared and pre-faulted. The creating process removes it
/// on drop, or earlier with [`ShmFile::remove`] once the peer has it mapped.
pub struct ShmFile {
    map: MmapRaw,
    path: PathBuf,
    owner: bool,
}

impl ShmFile {
    /// Create a zero-filled file of `len` bytes with a name unique to this process.
    pub fn create(len: usize) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/dev/shm/shmq-bench-{}-{n}", process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        file.set_len(len as u64).expect("size the scratch file");
        Self {
            map: Self::map(&file, &path),
            path,
            owner: true,
        }
    }

    /// Map a file created by [`ShmFile::create`] in another process.
    pub fn open(path: &Path) -> Self {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        Self {
            map: Self::map(&file, path),
            path: path.to_owned(),
            owner: false,
        }
    }

    fn map(file: &File, path: &Path) -> MmapRaw {
        // MAP_POPULATE: fault every page in now, not during the first measured messages.
        let map = MmapOptions::new().populate().map_raw(file);
        map.unwrap_or_else(|e| panic!("map {}: {e}", path.display()))
    }

    /// The file's path, to pass to a peer.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unlink the file (if this process created it); the mappings stay valid.
    pub fn remove(&mut self) {
        if std::mem::take(&mut self.owner) {
            let _ = fs::remove_file(&self.path);
        }
    }

    /// The header of type `T` at the start of the mapping.
    fn header<T: SharedHeader>(&self) -> &T {
        let base = self.map.as_mut_ptr();
        assert!(size_of::<T>() <= self.map.len() && base as usize % align_of::<T>() == 0);
        // SAFETY: the header is inside the mapping and aligned (checked above), and the mapping
        // lives as long as `self`. `T: SharedHeader` is made only of atomics, so any bytes (zeroes
        // from a new file, whatever the peer wrote) are a valid `T`, and the peer writing them
        // concurrently through its own mapping is not a data race.
        unsafe { &*base.cast::<T>() }
    }

    fn checked_ptr(&self, offset: usize, len: usize) -> *mut u8 {
        let in_bounds = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.map.len());
        assert!(
            in_bounds,
            "{len} bytes at {offset} outside the {}-byte mapping",
            self.map.len()
        );
        self.map.as_mut_ptr().wrapping_add(offset)
    }

    /// Copy `src` into the mapping at `offset`.
    ///
    /// # Safety
    /// Nothing else may access those bytes during the call: the caller's protocol must have given
    /// them to this process.
    unsafe fn write(&self, offset: usize, src: &[u8]) {
        let dst = self.checked_ptr(offset, src.len());
        // SAFETY: `dst` has `src.len()` bytes inside the live mapping (checked); `src` is a private
        // buffer, so they do not overlap; exclusive access is the caller's obligation.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    /// Copy bytes at `offset` out of the mapping into `dst`.
    ///
    /// # Safety
    /// Nothing may write those bytes during the call: the caller's protocol must have given them
    /// to this process.
    unsafe fn read(&self, offset: usize, dst: &mut [u8]) {
        let src = self.checked_ptr(offset, dst.len());
        // SAFETY: `src` has `dst.len()` bytes inside the live mapping (checked); `dst` is a private
        // buffer, so they do not overlap; no concurrent writer is the caller's obligation.
        unsafe { ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) }
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A `#[repr(C)]` header viewed in place at the start of a [`ShmFile`].
///
/// # Safety
/// Every field must be an atomic (or padding), so that every bit pattern is a valid value and the
/// other process writing it concurrently is not a data race.
unsafe trait SharedHeader {}

/// Aligns (and so pads) its content to 128 bytes: a cache line and its adjacent-line prefetch
/// partner, so two hot words never share either.
#[repr(C, align(128))]
pub struct Padded<T>(pub T);

// ---------------------------------------------------------------------------------------------
// Waiting on a word: spin or shared futex
// ---------------------------------------------------------------------------------------------

/// How a side waits for a control word to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Busy-poll the word.
    Spin,
    /// `FUTEX_WAIT` as soon as the word is found unchanged; the writer always `FUTEX_WAKE`s.
    Park,
}

impl Wait {
    fn as_arg(self) -> &'static str {
        match self {
            Wait::Spin => "spin",
            Wait::Park => "park",
        }
    }

    fn from_arg(arg: &str) -> Self {
        match arg {
            "spin" => Wait::Spin,
            "park" => Wait::Park,
            _ => panic!("unknown wait mode `{arg}`"),
        }
    }
}

/// Set in a doorbell value to tell the peer to sleep on the futex until the next ring.
pub const PARK_BIT: u64 = 1 << 63;
/// A spinning waiter calls its slow-path hook (the peer liveness check) this often.
const SPINS_PER_CHECK: u32 = 1 << 14;
/// A parked waiter wakes this often to run its slow-path hook.
const FUTEX_TIMEOUT: Duration = Duration::from_millis(100);

/// Wait until `done(word)`, returning the value that satisfied it. `slow` runs every
/// [`SPINS_PER_CHECK`] spins or after every futex timeout, never on the fast path.
#[inline]
fn wait_until(
    word: &AtomicU64,
    how: Wait,
    done: impl Fn(u64) -> bool,
    mut slow: impl FnMut(),
) -> u64 {
    let mut spins = 0u32;
    loop {
        // Acquire: pairs with the Release store that published `value`, so whatever the writer
        // wrote before it (payload, lengths, counts) is visible once we return.
        let value = word.load(Ordering::Acquire);
        if done(value) {
            return value;
        }
        match how {
            Wait::Spin => {
                spins = spins.wrapping_add(1);
                if spins % SPINS_PER_CHECK == 0 {
                    slow();
                } else {
                    hint::spin_loop();
                }
            }
            Wait::Park => {
                if futex_wait(word, value) {
                    slow();
                }
            }
        }
    }
}

/// Store `value` (Release, see [`wait_until`]), then wake a waiter parked on `word` if `how` says
/// waiters park.
#[inline]
fn publish(word: &AtomicU64, value: u64, how: Wait) {
    word.store(value, Ordering::Release);
    if how == Wait::Park {
        futex_wake(word);
    }
}

/// `FUTEX_WAIT` on the low half of `word` while it still holds `seen`; returns whether it timed
/// out (as opposed to being woken, or finding the word already changed).
fn futex_wait(word: &AtomicU64, seen: u64) -> bool {
    let timeout = libc::timespec {
        tv_sec: FUTEX_TIMEOUT.as_secs() as libc::time_t,
        tv_nsec: FUTEX_TIMEOUT.subsec_nanos() as libc::c_long,
    };
    let ret = futex(word, libc::FUTEX_WAIT, seen as u32, &timeout);
    ret == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT)
}

/// `FUTEX_WAKE` one waiter on the low half of `word`.
fn futex_wake(word: &AtomicU64) {
    futex(word, libc::FUTEX_WAKE, 1, ptr::null());
}

fn futex(
    word: &AtomicU64,
    op: libc::c_int,
    val: u32,
    timeout: *const libc::timespec,
) -> libc::c_long {
    // SAFETY:
    // - the futex word is the low half of a live, 8-aligned `AtomicU64` (little-endian, so at the
    //   same address), which the kernel only reads atomically (FUTEX_WAKE only uses the address);
    // - `timeout` is null or points to a live timespec; the unused `uaddr2`/`val3` are null/0;
    // - no FUTEX_PRIVATE_FLAG: the word lives in a file mapped by another process too.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr().cast::<u32>(),
            op,
            val,
            timeout,
            ptr::null::<u32>(),
            0u32,
        )
    }
}

/// The parent's end of a doorbell word the peer waits on (see the module docs).
struct Doorbell {
    rung: u64,
    how: Wait,
    peer_parked: bool,
}

impl Doorbell {
    fn new(how: Wait) -> Self {
        Self {
            rung: 0,
            how,
            peer_parked: false,
        }
    }

    /// Ring with a new sequence number, which is returned. Publishes (Release) everything this
    /// process wrote before; pays a `FUTEX_WAKE` only in `Park` mode or when the peer was parked.
    fn ring(&mut self, word: &AtomicU64) -> u64 {
        self.rung += 1;
        let how = if self.peer_parked {
            Wait::Park
        } else {
            self.how
        };
        publish(word, self.rung, how);
        self.peer_parked = false;
        self.rung
    }

    /// Tell the peer to sleep on the futex until the next [`Doorbell::ring`].
    fn park_peer(&mut self, word: &AtomicU64) {
        self.rung += 1;
        publish(word, self.rung | PARK_BIT, Wait::Spin);
        self.peer_parked = true;
    }
}

/// The peer's end: wait for the next ring after `last` and return it, sleeping on the futex while
/// the parent has set [`PARK_BIT`].
fn wait_doorbell(word: &AtomicU64, last: &mut u64, how: Wait) -> u64 {
    let mut how = how;
    loop {
        let prev = *last;
        *last = wait_until(word, how, |value| value != prev, || {});
        if *last & PARK_BIT == 0 {
            return *last;
        }
        how = Wait::Park;
    }
}

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

/// A doorbell or reply word and its argument (message length, target count), in one line.
#[repr(C)]
struct Mailbox {
    seq: AtomicU64,
    arg: AtomicU64,
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
// Percentiles and tables
// ---------------------------------------------------------------------------------------------

/// Latency distribution of one case.
#[derive(Clone, Copy, Debug)]
pub struct Percentiles {
    /// 50th percentile, interpolated: the mean of the samples from the 45th to the 55th
    /// percentile. The clock advances in steps (10 ns on this AMD VM), so a plain median jumps by
    /// a step (10% of a raw round trip); the band's mix of neighbouring steps resolves below it.
    pub median: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Slowest sample.
    pub max: Duration,
}

/// Time `n` calls of `f` one by one, after `n / 10` (at least 100) untimed warm-up calls. Samples
/// are differences of consecutive [`ticks`], so each includes one clock read and the loop (see
/// [`timer_overhead`]).
pub fn latency_percentiles(f: &mut dyn FnMut(), n: usize) -> Percentiles {
    assert!(n > 0);
    let ns_per_tick = ns_per_tick();
    for _ in 0..(n / 10).max(100) {
        f();
    }
    // Not zero: a zeroed Vec gets fresh untouched pages, and their faults would land in the samples.
    let mut samples = vec![u64::MAX; n];
    let mut prev = ticks();
    for sample in &mut samples {
        f();
        let now = ticks();
        *sample = now.wrapping_sub(prev);
        prev = now;
    }
    samples.sort_unstable();
    let to_duration = |ticks: f64| Duration::from_nanos((ticks * ns_per_tick).round() as u64);
    let at = |q: f64| to_duration(samples[((n as f64 * q).ceil() as usize).clamp(1, n) - 1] as f64);
    let (lo, hi) = (n * 45 / 100, n * 55 / 100);
    let band = &samples[lo..hi.max(lo + 1)];
    Percentiles {
        median: to_duration(band.iter().sum::<u64>() as f64 / band.len() as f64),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
    }
}

/// A cheap timestamp: the TSC on `x86_64` (about 12 ns here against 30 ns for `Instant::now()`;
/// invariant, and only ever compared on the one pinned CPU), nanoseconds elsewhere.
#[inline]
fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC exists on every x86_64 CPU and has no preconditions.
        unsafe { std::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Nanoseconds per [`ticks`], measured once against `Instant` over 50 ms.
fn ns_per_tick() -> f64 {
    static NS_PER_TICK: OnceLock<f64> = OnceLock::new();
    *NS_PER_TICK.get_or_init(|| {
        let (start, start_ticks) = (Instant::now(), ticks());
        thread::sleep(Duration::from_millis(50));
        let (end, end_ticks) = (Instant::now(), ticks());
        (end - start).as_nanos() as f64 / end_ticks.wrapping_sub(start_ticks) as f64
    })
}

/// Median cost [`latency_percentiles`] adds to every sample (timing an empty closure).
pub fn timer_overhead() -> Duration {
    latency_percentiles(&mut || {}, 100_000).median
}

/// Round trips per raw ping-pong median taken by [`bracket_with_raw`].
pub const RAW_BRACKET_ROUND_TRIPS: usize = 20_000;

/// A case measured between two short raw ping-pong medians.
#[derive(Clone, Copy, Debug)]
pub struct Bracketed {
    /// The case.
    pub case: Percentiles,
    /// Raw round-trip median just before the case.
    pub raw_before: Duration,
    /// Raw round-trip median just after the case.
    pub raw_after: Duration,
}

impl Bracketed {
    /// The case's median over the mean of the two raw medians.
    pub fn ratio(&self) -> f64 {
        ratio(self.case.median, (self.raw_before + self.raw_after) / 2)
    }

    /// Whether the raw medians differ by more than 25%: the cores moved during the case.
    pub fn unstable(&self) -> bool {
        let (lo, hi) = (
            self.raw_before.min(self.raw_after),
            self.raw_before.max(self.raw_after),
        );
        ratio(hi, lo) > 1.25
    }
}

/// Take a raw round-trip median of `msg_size` bytes ([`RAW_BRACKET_ROUND_TRIPS`] round trips on
/// `raw`, normally a [`ShmPingPong::raw_atomic`]) immediately before and after `case`. `raw`'s
/// peer is parked while `case` runs.
pub fn bracket_with_raw(
    raw: &mut dyn RoundTrip,
    msg_size: usize,
    case: impl FnOnce() -> Percentiles,
) -> Bracketed {
    let raw_before = raw.percentiles(msg_size, RAW_BRACKET_ROUND_TRIPS).median;
    let case = case();
    let raw_after = raw.percentiles(msg_size, RAW_BRACKET_ROUND_TRIPS).median;
    Bracketed {
        case,
        raw_before,
        raw_after,
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// `Duration` to three significant figures in ns, µs or ms.
pub fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    match ns {
        _ if ns < 1e3 => format!("{ns:.0} ns"),
        _ if ns < 1e4 => format!("{:.2} µs", ns / 1e3),
        _ if ns < 1e6 => format!("{:.1} µs", ns / 1e3),
        _ => format!("{:.2} ms", ns / 1e6),
    }
}

fn percentile_cells(p: &Percentiles) -> String {
    let cells = [p.median, p.p99, p.p999, p.max].map(fmt_duration);
    cells.join(" | ")
}

/// Print a markdown table of `rows` with a column of each median over the median of the row named
/// `baseline` ("n/a" if there is none).
pub fn print_table(rows: &[(String, Percentiles)], baseline: &str) {
    let base = rows
        .iter()
        .find(|(name, _)| name == baseline)
        .map(|(_, p)| p.median);
    println!("| case | median | p99 | p99.9 | max | median / {baseline} |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, p) in rows {
        let r = base.map_or_else(
            || "n/a".to_owned(),
            |b| format!("{:.2}", ratio(p.median, b)),
        );
        println!("| {name} | {} | {r} |", percentile_cells(p));
    }
}

/// Print a markdown table of bracketed cases, each median over its own raw medians.
pub fn print_bracketed(rows: &[(String, Bracketed)]) {
    println!("| case | median | p99 | p99.9 | max | raw before | raw after | median / raw |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, b) in rows {
        let mark = if b.unstable() { " †" } else { "" };
        let (before, after) = (fmt_duration(b.raw_before), fmt_duration(b.raw_after));
        println!(
            "| {name} | {} | {before} | {after} | {:.2}{mark} |",
            percentile_cells(&b.case),
            b.ratio()
        );
    }
    if rows.iter().any(|(_, b)| b.unstable()) {
        println!(
            "\n† raw before and after differ by more than 25%: the cores moved during the case."
        );
    }
}

// ---------------------------------------------------------------------------------------------
// shmq peers: placement, liveness, queue files, jobs
// ---------------------------------------------------------------------------------------------

/// The CPU a peer is pinned to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpu {
    /// The parent's CPU, shared with the parent.
    Parent,
    /// The peer CPU, as [`spawn_peer`] does.
    Peer,
}

/// [`spawn_peer`] pinned to `cpu`.
pub fn spawn_peer_on(role: &str, args: &[String], cpu: Cpu) -> Peer {
    spawn_peer_with(role, args, |cmd| {
        if let (Cpu::Parent, Some((parent, _))) = (cpu, bench_cpus()) {
            cmd.env(CPU_ENV, parent.to_string());
        }
    })
}

/// A [`Peer`] whose early death ends this process. The parent blocks in shmq's own calls, which
/// cannot notice a dead peer; a watchdog thread sleeps in `waitid(WNOWAIT)` (no polling, so no
/// jitter on the parent's core) and exits the process if the peer goes before we drop it.
pub struct WatchedPeer {
    peer: Option<Peer>,
    stopping: Arc<AtomicBool>,
    watchdog: Option<JoinHandle<()>>,
}

impl WatchedPeer {
    /// [`spawn_peer_on`], watched.
    pub fn spawn(role: &str, args: &[String], cpu: Cpu) -> Self {
        let mut peer = spawn_peer_on(role, args, cpu);
        let pid = Pid::from_raw(peer.child().id() as i32);
        let stopping = Arc::new(AtomicBool::new(false));
        let role = role.to_owned();
        let watchdog = thread::spawn({
            let stopping = stopping.clone();
            move || {
                // WNOWAIT: the child stays waitable, for `Peer`'s drop to reap.
                let status = loop {
                    match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                        Err(nix::errno::Errno::EINTR) => continue,
                        status => break status,
                    }
                };
                if !stopping.load(Ordering::Acquire) {
                    eprintln!("shmq bench: peer `{role}` exited early: {status:?}");
                    process::exit(1);
                }
            }
        });
        Self {
            peer: Some(peer),
            stopping,
            watchdog: Some(watchdog),
        }
    }
}

impl Drop for WatchedPeer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        drop(self.peer.take()); // Kills and reaps it, which ends the watchdog's wait.
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }
}

/// A path in `/dev/shm` for a queue file, unique to this process. The file is removed on drop,
/// or earlier with [`QueuePath::remove`] once every process has it open.
pub struct QueuePath {
    path: PathBuf,
    removed: bool,
}

impl QueuePath {
    /// A new path whose name ends in `name`.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = format!("/dev/shm/shmq-bench-{}-q{n}-{name}", process::id());
        Self {
            path: PathBuf::from(path),
            removed: false,
        }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a peer argument.
    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }

    /// Unlink the file; mappings stay valid.
    pub fn remove(&mut self) {
        if !std::mem::replace(&mut self.removed, true) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Drop for QueuePath {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A shmq wait strategy as a peer argument.
pub fn wait_arg(wait: WaitStrategy) -> String {
    match wait {
        WaitStrategy::BusyPoll => "busy-poll".to_owned(),
        WaitStrategy::Park => "park".to_owned(),
        WaitStrategy::SpinThenPark(spin) => format!("spin-{}", spin.as_nanos()),
    }
}

/// The wait strategy of a [`wait_arg`].
pub fn parse_wait(arg: &str) -> WaitStrategy {
    match arg {
        "busy-poll" => WaitStrategy::BusyPoll,
        "park" => WaitStrategy::Park,
        _ => arg
            .strip_prefix("spin-")
            .and_then(|ns| ns.parse().ok())
            .map(|ns| WaitStrategy::SpinThenPark(Duration::from_nanos(ns)))
            .unwrap_or_else(|| panic!("unknown wait strategy `{arg}`")),
    }
}

#[repr(C)]
struct JobHeader {
    /// Parent → peer: the job's number and its argument.
    command: Padded<Mailbox>,
    /// Peer → parent: the number of the job it has started.
    started: Padded<AtomicU64>,
    /// Peer → parent: the number of the job it has finished and its result.
    finished: Padded<Mailbox>,
}

// SAFETY: only atomics and padding.
unsafe impl SharedHeader for JobHeader {}

/// A peer process that runs jobs on command: the parent [`start`](JobPeer::start)s one with an
/// argument (a message count, say), the peer runs it (in [`serve_jobs`]) and the parent collects
/// its result with [`finish`](JobPeer::finish). Every signal in either direction parks on a
/// shared futex, so a peer idle between jobs takes no CPU, and neither side spins on a core it
/// may share with the other; the waits are outside the timed part.
pub struct JobPeer {
    shm: ShmFile,
    jobs: u64,
    _peer: WatchedPeer,
}

impl JobPeer {
    /// Spawn `role` with `args` and, last, the job file's path (its role calls [`serve_jobs`]),
    /// and wait until it has run an empty job (argument 0): it is set up.
    pub fn spawn(role: &str, args: &[String], cpu: Cpu) -> Self {
        let shm = ShmFile::create(size_of::<JobHeader>());
        let mut args = args.to_vec();
        args.push(shm.path().display().to_string());
        let peer = WatchedPeer::spawn(role, &args, cpu);
        let mut this = Self {
            shm,
            jobs: 0,
            _peer: peer,
        };
        this.start(0);
        this.finish();
        this.shm.remove();
        this
    }

    /// Start a job with `arg` and wait until the peer has picked it up.
    pub fn start(&mut self, arg: u64) {
        let header: &JobHeader = self.shm.header();
        self.jobs += 1;
        // Relaxed: published by the Release in `publish`.
        header.command.0.arg.store(arg, Ordering::Relaxed);
        publish(&header.command.0.seq, self.jobs, Wait::Park);
        let job = self.jobs;
        wait_until(&header.started.0, Wait::Park, |n| n == job, || {});
    }

    /// Wait for the job started last to finish and return its result.
    pub fn finish(&mut self) -> u64 {
        let header: &JobHeader = self.shm.header();
        let job = self.jobs;
        wait_until(&header.finished.0.seq, Wait::Park, |n| n == job, || {});
        // Relaxed: ordered after the Acquire load of the finished word.
        header.finished.0.arg.load(Ordering::Relaxed)
    }
}

/// The peer's end of a [`JobPeer`]: `args` ends with the job file's path. Run `job` on each
/// command's argument and report its result, for ever.
pub fn serve_jobs(args: &[String], mut job: impl FnMut(u64) -> u64) {
    let shm = ShmFile::open(Path::new(args.last().expect("job file path")));
    let header: &JobHeader = shm.header();
    let mut last = 0;
    loop {
        let prev = last;
        last = wait_until(&header.command.0.seq, Wait::Park, |n| n != prev, || {});
        // Relaxed: ordered after the Acquire load of the command word.
        let arg = header.command.0.arg.load(Ordering::Relaxed);
        publish(&header.started.0, last, Wait::Park);
        let result = job(arg);
        // Relaxed: published by the Release in `publish`.
        header.finished.0.arg.store(result, Ordering::Relaxed);
        publish(&header.finished.0.seq, last, Wait::Park);
    }
}

// ---------------------------------------------------------------------------------------------
// Criterion groups and reports shared by the shmq benches
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

/// Criterion group `name`: each case's round trips of each size.
pub fn bench_round_trips(
    c: &mut Criterion,
    name: &str,
    cases: Vec<RoundTripCase>,
    sizes: &[usize],
) {
    let mut group = c.benchmark_group(name);
    for (case_name, spawn) in cases {
        let mut case = spawn(); // One peer for every size.
        for &size in sizes {
            group.bench_with_input(BenchmarkId::new(case_name, size), &size, |b, &size| {
                b.iter_custom(|iters| case.run(size, iters));
            });
        }
    }
    group.finish();
}

/// Criterion group `name`: each one-way case, in elements (messages, requests) per second.
pub fn bench_one_way(c: &mut Criterion, name: &str, cases: Vec<OneWayCase>) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    for (case_name, spawn) in cases {
        let mut case = spawn();
        group.bench_function(case_name, |b| b.iter_custom(|iters| case.run(iters)));
    }
    group.finish();
}

/// Criterion as every shmq bench configures it: 20 samples over about 2 s.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args()
}

/// Print the CPU, kernel, load and where the processes run (`placement`).
pub fn print_machine(placement: &str) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim() == name)
            .map_or("?", |(_, value)| value.trim())
    };
    // Not `available_parallelism`: this thread is pinned to one CPU already.
    let nproc = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let cpus = match bench_cpus() {
        Some((parent, peer)) => format!("parent CPU {parent}, peer CPU {peer}"),
        None => "unpinned".to_owned(),
    };
    println!(
        "machine: {} (family {}, model {}), nproc {nproc}, Linux {}; {cpus}; load average {}\n\
         placement: {placement}",
        field("model name"),
        field("cpu family"),
        field("model"),
        kernel.trim(),
        load.join(" ")
    );
}

/// 64-byte round trips of every case, each bracketed by raw atomic medians; prints both tables
/// and returns the rows (for targets).
pub fn round_trip_report(
    cases: Vec<RoundTripCase>,
    round_trips: usize,
) -> Vec<(String, Bracketed)> {
    let mut raw = ShmPingPong::raw_atomic();
    let mut rows = Vec::new();
    for (name, spawn) in cases {
        let mut case = spawn();
        let bracketed = bracket_with_raw(&mut raw, 64, || case.percentiles(64, round_trips));
        drop(case); // Its peers stop before the next case starts.
        rows.push((name.to_owned(), bracketed));
    }
    let plain: Vec<(String, Percentiles)> = rows
        .iter()
        .map(|(name, b)| (name.clone(), b.case))
        .collect();
    println!("\n## 64-byte round trips, {round_trips} each\n");
    print_table(&plain, "raw atomic");
    println!("\nThe same, each beside raw atomic medians taken just before and after it:\n");
    print_bracketed(&rows);
    let overhead = fmt_duration(timer_overhead());
    println!("\nEach sample includes the clock read: {overhead} (median, empty closure).");
    rows
}

/// The bracketed ratio of the row named `name`.
pub fn bracketed_ratio(rows: &[(String, Bracketed)], name: &str) -> Option<f64> {
    rows.iter().find(|(n, _)| n == name).map(|(_, b)| b.ratio())
}

/// Rates (elements per second) of each one-way case, round by round.
pub struct Rates(pub Vec<(&'static str, Vec<f64>)>);

impl Rates {
    /// The median over rounds of `ours`'s rate over `theirs`'s in the same round.
    pub fn ratio(&self, ours: &str, theirs: &str) -> Option<f64> {
        let rates = |name: &str| self.0.iter().find(|(n, _)| *n == name).map(|(_, r)| r);
        let (ours, theirs) = (rates(ours)?, rates(theirs)?);
        let ratios: Vec<f64> = ours.iter().zip(theirs).map(|(a, b)| a / b).collect();
        (!ratios.is_empty()).then(|| median(ratios))
    }
}

/// The median of `values`.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Run every case `rounds` times, interleaved (a busy neighbour, or the host moving our virtual
/// CPUs, then hurts neighbouring measurements alike; ratios are taken round by round), each run
/// sized to take about `run_time` after a calibration run; print a table of rates (`unit` per
/// second) against the case named `baseline`, and each case's note.
pub fn throughput_report(
    cases: Vec<OneWayCase>,
    rounds: usize,
    run_time: Duration,
    unit: &str,
    baseline: &str,
) -> Rates {
    let mut cases: Vec<_> = cases
        .into_iter()
        .map(|(name, spawn)| {
            let mut case = spawn();
            let calibration = 10_000;
            let rate = calibration as f64 / case.run(calibration).as_secs_f64();
            let n = (rate * run_time.as_secs_f64()).clamp(1e4, 1e7) as u64;
            (name, case, n, Vec::new())
        })
        .collect();
    for _ in 0..rounds {
        for (_, case, n, rates) in &mut cases {
            rates.push(*n as f64 / case.run(*n).as_secs_f64());
        }
    }
    let notes: Vec<(&str, String)> = cases
        .iter()
        .filter_map(|(name, case, ..)| case.note().map(|note| (*name, note)))
        .collect();
    let rates = Rates(
        cases
            .into_iter()
            .map(|(name, _, _, rates)| (name, rates))
            .collect(), // The peers are gone.
    );
    println!("\n## Throughput, 64-byte messages, {rounds} interleaved rounds\n");
    println!(
        "| case | median M {unit}/s | best | worst | ns each (median) | / {baseline} (median of per-round ratios) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, r) in &rates.0 {
        let med = median(r.clone());
        let best = r.iter().copied().fold(f64::MIN, f64::max);
        let worst = r.iter().copied().fold(f64::MAX, f64::min);
        let vs = rates
            .ratio(name, baseline)
            .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"));
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.1} | {vs} |",
            med / 1e6,
            best / 1e6,
            worst / 1e6,
            1e9 / med
        );
    }
    for (name, note) in notes {
        println!("\n{name}: {note}");
    }
    rates
}

/// A row of the targets table.
pub struct Target {
    /// What is measured.
    pub figure: &'static str,
    /// The measured ratio, if the case ran.
    pub measured: Option<f64>,
    /// The target.
    pub target: f64,
    /// Whether the target is a ceiling (≤) rather than a floor (≥).
    pub ceiling: bool,
}

/// Print the targets table under a heading saying how the figures were taken (`how`).
pub fn print_targets(how: &str, targets: &[Target]) {
    println!("\n## Targets ({how})\n");
    println!("| figure | measured | target | |");
    println!("|---|---:|---:|---|");
    for t in targets {
        let cmp = if t.ceiling { "≤" } else { "≥" };
        let met = t.measured.map(|m| {
            if t.ceiling {
                m <= t.target
            } else {
                m >= t.target
            }
        });
        let measured = t
            .measured
            .map_or_else(|| "n/a".to_owned(), |m| format!("{m:.2}"));
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "n/a",
        };
        println!(
            "| {} | {measured} | {cmp} {} | {verdict} |",
            t.figure, t.target
        );
    }
}
