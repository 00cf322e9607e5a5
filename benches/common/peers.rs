//! Peer processes: a bench binary re-executing itself as a named role, pinned to a CPU, killed
//! with its parent; and the helpers the shmq benches build their cases from.
//!
//! # Peers
//! A bench binary plays both sides. Its `main` calls [`run_peer_if_requested`] first; the parent
//! then [`spawn_peer`]s copies of its own executable with `SHMQ_BENCH_ROLE=<role>`, which run the
//! role's function instead of criterion and exit. The parent is pinned to one CPU and every peer
//! to another ([`bench_cpus`]). A [`Peer`] kills and reaps its process on drop, and the peer asks
//! the kernel to SIGKILL it if the parent dies, so neither a panic nor a killed parent leaves an
//! orphan spinning on a core.
//!
//! # Helpers of the shmq benches
//! A [`WatchedPeer`] ends the parent if it dies early (the parent may be blocked in a shmq call,
//! which cannot notice). [`QueuePath`] names a queue file and removes it. A [`JobPeer`] runs
//! counted jobs on command ([`serve_jobs`]: take `n` messages, make `n` requests) and sleeps on
//! a futex between them, so several peers can be driven at once and none spins while another
//! case is measured. Its job file speaks the protocol of [`super::shm`].

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{self, Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::{getppid, Pid};
use shmq::WaitStrategy;

use super::shm::{publish, wait_until, Mailbox, Padded, SharedHeader, ShmFile, Wait};

/// Environment variable that makes a bench binary run as the named peer role.
pub const ROLE_ENV: &str = "SHMQ_BENCH_ROLE";
/// The parent's pid, so a peer can tell whether its parent died before it asked to die with it.
const PARENT_ENV: &str = "SHMQ_BENCH_PARENT";
/// The CPU a peer pins itself to.
const CPU_ENV: &str = "SHMQ_BENCH_CPU";

/// A peer role: runs in the re-executed bench binary with the arguments given to [`spawn_peer`].
pub type Role = fn(&[String]);

/// In a peer (`SHMQ_BENCH_ROLE` set) runs the role, looked up in `extra` and then in `builtin`,
/// and exits the process. In the parent it pins the calling thread to the parent CPU and
/// returns. Benches call [`run_peer_if_requested`](super::run_peer_if_requested), which passes
/// the baselines' roles as `builtin`.
pub fn run_peer_among(extra: &[(&str, Role)], builtin: &[(&str, Role)]) {
    let Some(role) = env::var_os(ROLE_ENV) else {
        if let Some((parent_cpu, _)) = bench_cpus() {
            pin_to_cpu(parent_cpu);
        }
        return;
    };
    let role = role.to_string_lossy();
    let Some(&(_, run)) = extra.iter().chain(builtin).find(|(name, _)| *name == role) else {
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
    spawn_peer_on_with(role, args, cpu, |_| {})
}

/// [`spawn_peer_on`], letting `configure` adjust the command first (as [`spawn_peer_with`]).
fn spawn_peer_on_with(
    role: &str,
    args: &[String],
    cpu: Cpu,
    configure: impl FnOnce(&mut Command),
) -> Peer {
    spawn_peer_with(role, args, |cmd| {
        if let (Cpu::Parent, Some((parent, _))) = (cpu, bench_cpus()) {
            cmd.env(CPU_ENV, parent.to_string());
        }
        configure(cmd);
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
        Self::spawn_with(role, args, cpu, |_| {})
    }

    /// [`WatchedPeer::spawn`], letting `configure` adjust the command first (as
    /// [`spawn_peer_with`]), e.g. to pipe the peer's stdin; take it with [`WatchedPeer::child`].
    pub fn spawn_with(
        role: &str,
        args: &[String],
        cpu: Cpu,
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let mut peer = spawn_peer_on_with(role, args, cpu, configure);
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

    /// The process, e.g. to take its piped stdin.
    pub fn child(&mut self) -> &mut Child {
        self.peer.as_mut().expect("a live peer").child()
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
