//! The pipeline benchmark: shmq round trips and one-way throughput between two processes pinned
//! to different cores, beside the baselines of `common` in the same run.
//!
//! * Round trips of 64 B and 1 KiB: the parent sends on queue "ping", a peer process receives
//!   and echoes on queue "pong", with both sides busy-polling, with the default blocking wait
//!   (spin 20 µs, then park), and parked every time (`WaitStrategy::Park` on both sides). Beside
//!   them: raw atomic and raw shared-futex ping-pong, Unix socket, pipe, `std::sync::mpsc`
//!   between two threads.
//! * One-way throughput of 64-byte messages, a producer process to the consumer (the parent):
//!   `send`/`recv`, and `send_batch`/`recv_batch`; beside them a plain SPSC ring in shared memory
//!   and a Unix stream socket.
//!
//! Criterion measures all of those; then (only under `cargo bench`, not `cargo test --benches`)
//! a report: percentiles of 100k 64-byte round trips per case, each case bracketed by short raw
//! atomic ping-pongs, interleaved throughput rounds, and a table of the targets.
//!
//! `nice cargo bench --bench pipeline`

mod common;

use std::fs;
use std::path::PathBuf;
use std::process;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{Bracketed, OneWay, Peer, Percentiles, Role, RoundTrip, STREAM_MESSAGE};
use criterion::{BenchmarkId, Criterion, Throughput};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use shmq::{Consumer, Options, Pipeline, Producer, WaitStrategy};

/// Round-trip message sizes.
const SIZES: [usize; 2] = [64, 1024];
/// Slots of the ping and pong queues (the default capacity).
const PING_CAPACITY: u64 = 1024;
/// Largest message of the ping and pong queues.
const PING_MAX_MESSAGE: usize = 1024;
/// Slots of the throughput queues, shmq's and the SPSC ring's.
const RING_SLOTS: u64 = 1024;
/// Messages per `send_batch` / `recv_batch`.
const BATCH: usize = 64;
/// Round trips per case in the percentile report.
const PERCENTILE_ROUND_TRIPS: usize = 100_000;
/// Interleaved rounds of each throughput case in the report.
const THROUGHPUT_ROUNDS: usize = 9;

const SHMQ_ECHO: &str = "shmq-echo";
const SHMQ_PRODUCER: &str = "shmq-producer";
const PEER_ROLES: &[(&str, Role)] = &[
    (SHMQ_ECHO, shmq_echo_peer),
    (SHMQ_PRODUCER, shmq_producer_peer),
];

// ---------------------------------------------------------------------------------------------
// Queue files and peers
// ---------------------------------------------------------------------------------------------

/// A queue file name in `/dev/shm`, unique to this process; the file is removed on drop, or
/// earlier with [`QueueFile::remove`] once every process has it mapped.
struct QueueFile {
    path: PathBuf,
    removed: bool,
}

impl QueueFile {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = format!("/dev/shm/shmq-pipeline-bench-{}-{n}-{name}", process::id());
        Self {
            path: PathBuf::from(path),
            removed: false,
        }
    }

    fn create(&self, options: &Options) -> Pipeline {
        Pipeline::create(&self.path, options)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.path.display()))
    }

    fn arg(&self) -> String {
        self.path.display().to_string()
    }

    fn remove(&mut self) {
        if !std::mem::replace(&mut self.removed, true) {
            let _ = Pipeline::remove(&self.path);
        }
    }
}

impl Drop for QueueFile {
    fn drop(&mut self) {
        self.remove();
    }
}

fn open(path: &str) -> Pipeline {
    Pipeline::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"))
}

/// A [`Peer`] whose early death ends this process. The parent blocks in shmq's own `recv`, which
/// has no way to notice a dead peer; a watchdog thread sleeps in `waitid(WNOWAIT)` (no polling,
/// so no jitter on the parent's core) and exits the process if the peer goes before we drop it.
struct WatchedPeer {
    peer: Option<Peer>,
    stopping: Arc<AtomicBool>,
    watchdog: Option<JoinHandle<()>>,
}

impl WatchedPeer {
    fn spawn(role: &'static str, args: &[String]) -> Self {
        let mut peer = common::spawn_peer(role, args);
        let pid = Pid::from_raw(peer.child().id() as i32);
        let stopping = Arc::new(AtomicBool::new(false));
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

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

/// How both sides of a shmq ping-pong wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    BusyPoll,
    /// Busy-poll while recovery sweeps run beside it: the participant table's cost.
    Sweeping,
    Default,
    Park,
}

impl Mode {
    fn strategy(self) -> WaitStrategy {
        match self {
            Mode::BusyPoll | Mode::Sweeping => WaitStrategy::BusyPoll,
            Mode::Default => WaitStrategy::default(),
            Mode::Park => WaitStrategy::Park,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::BusyPoll => "shmq busy-poll",
            Mode::Sweeping => "shmq busy-poll + sweeps",
            Mode::Default => "shmq default",
            Mode::Park => "shmq park",
        }
    }

    fn as_arg(self) -> &'static str {
        match self {
            Mode::BusyPoll | Mode::Sweeping => "busy-poll",
            Mode::Default => "default",
            Mode::Park => "park",
        }
    }

    fn from_arg(arg: &str) -> Self {
        match arg {
            "busy-poll" => Mode::BusyPoll,
            "default" => Mode::Default,
            "park" => Mode::Park,
            _ => panic!("unknown wait mode `{arg}`"),
        }
    }
}

/// shmq ping-pong with a peer process: `send` on "ping", the peer `recv`s, `send`s the received
/// message (straight from its slot) on "pong" and then drops it; we `recv` and copy it out.
/// An empty message tells the peer to park until the next one ([`RoundTrip::idle`]).
struct ShmqPingPong {
    ping: Producer,
    pong: Consumer,
    _files: [QueueFile; 2],
    _peer: WatchedPeer,
    /// With `Mode::Sweeping`: a thread running recovery sweeps over both queues every
    /// millisecond (what stalled waiters do every 50 ms), stopped on drop.
    sweeper: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Drop for ShmqPingPong {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.sweeper.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

impl ShmqPingPong {
    fn spawn(mode: Mode) -> Self {
        let options = Options::new()
            .capacity(PING_CAPACITY)
            .max_message(PING_MAX_MESSAGE);
        let files = [QueueFile::new("ping"), QueueFile::new("pong")];
        let queues = [files[0].create(&options), files[1].create(&options)];
        let mut ping = queues[0].producer().expect("ping producer");
        let mut pong = queues[1].consumer().expect("pong consumer");
        let sweeper = (mode == Mode::Sweeping).then(|| {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = thread::spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    for q in &queues {
                        q.repair().expect("repair");
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            });
            (stop, thread)
        });
        ping.set_wait_strategy(mode.strategy());
        pong.set_wait_strategy(mode.strategy());
        let args = [files[0].arg(), files[1].arg(), mode.as_arg().to_owned()];
        let peer = WatchedPeer::spawn(SHMQ_ECHO, &args);
        let mut this = Self {
            ping,
            pong,
            _files: files,
            _peer: peer,
            sweeper,
        };
        this.run(64, 0); // The peer is up and has both queues open.
        this._files.iter_mut().for_each(QueueFile::remove);
        this
    }
}

impl RoundTrip for ShmqPingPong {
    fn round_trip(&mut self, msg: &[u8], reply: &mut [u8]) {
        self.ping.send(msg).expect("send ping");
        let echo = self.pong.recv().expect("receive pong");
        reply.copy_from_slice(&echo);
    }

    fn idle(&mut self) {
        self.ping.send(&[]).expect("send ping");
    }
}

/// Peer of [`ShmqPingPong`]; args: ping path, pong path, wait mode.
fn shmq_echo_peer(args: &[String]) {
    let strategy = Mode::from_arg(&args[2]).strategy();
    let mut ping = open(&args[0]).consumer().expect("ping consumer");
    let mut pong = open(&args[1]).producer().expect("pong producer");
    pong.set_wait_strategy(strategy);
    let mut idle = false;
    loop {
        ping.set_wait_strategy(if idle { WaitStrategy::Park } else { strategy });
        let msg = ping.recv().expect("peer receive");
        idle = msg.is_empty();
        if !idle {
            pong.send(&msg).expect("peer send");
        }
    }
}

type Spawn<T> = Box<dyn Fn() -> T>;

/// Every round-trip case, shmq's beside the baselines they are compared with.
fn round_trip_cases() -> Vec<(&'static str, Spawn<Box<dyn RoundTrip>>)> {
    let shmq = |mode: Mode| -> (&'static str, Spawn<Box<dyn RoundTrip>>) {
        (
            mode.name(),
            Box::new(move || Box::new(ShmqPingPong::spawn(mode))),
        )
    };
    vec![
        (
            "raw atomic",
            Box::new(|| Box::new(common::ShmPingPong::raw_atomic())),
        ),
        shmq(Mode::BusyPoll),
        shmq(Mode::Sweeping),
        shmq(Mode::Default),
        (
            "raw futex",
            Box::new(|| Box::new(common::ShmPingPong::raw_futex())),
        ),
        shmq(Mode::Park),
        (
            "unix socket",
            Box::new(|| Box::new(common::StreamPingPong::unix_socket())),
        ),
        (
            "pipe",
            Box::new(|| Box::new(common::StreamPingPong::pipe())),
        ),
        (
            "mpsc threads",
            Box::new(|| Box::new(common::ThreadPingPong::spawn())),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// One-way throughput
// ---------------------------------------------------------------------------------------------

/// Each message starts with its sequence number, so the consumer checks order and loss.
fn stamp(msg: &mut [u8; STREAM_MESSAGE], seq: u64) {
    msg[..8].copy_from_slice(&seq.to_le_bytes());
}

fn check_stamp(msg: &[u8], seq: u64) {
    assert_eq!(msg.len(), STREAM_MESSAGE, "message length");
    let got = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
    assert_eq!(got, seq, "message out of order or lost");
}

/// One-way throughput over a pipeline: a peer process produces 64-byte messages, the parent
/// consumes them, both busy-polling (as the SPSC ring baseline does). A second pipeline carries
/// the parent's commands (how many messages to produce); the peer parks on it between runs.
struct ShmqThroughput {
    data: Consumer,
    control: Producer,
    batch: bool,
    received: u64,
    _files: [QueueFile; 2],
    _peer: WatchedPeer,
}

impl ShmqThroughput {
    /// `batch`: the peer sends with `send_batch` and we receive with `recv_batch`.
    fn spawn(batch: bool) -> Self {
        let files = [QueueFile::new("data"), QueueFile::new("control")];
        let data_options = Options::new()
            .capacity(RING_SLOTS)
            .max_message(STREAM_MESSAGE);
        let control_options = Options::new().capacity(4).max_message(8);
        let mut data = files[0].create(&data_options).consumer().expect("consumer");
        data.set_wait_strategy(WaitStrategy::BusyPoll);
        let control = files[1]
            .create(&control_options)
            .producer()
            .expect("control producer");
        let mode = if batch { "batch" } else { "single" };
        let args = [files[0].arg(), files[1].arg(), mode.to_owned()];
        let peer = WatchedPeer::spawn(SHMQ_PRODUCER, &args);
        let mut this = Self {
            data,
            control,
            batch,
            received: 0,
            _files: files,
            _peer: peer,
        };
        this.run(1); // The peer is up and has both queues open.
        this._files.iter_mut().for_each(QueueFile::remove);
        this
    }

    fn recv_one(&mut self) {
        let msg = self.data.recv().expect("receive");
        check_stamp(&msg, self.received);
        self.received += 1;
    }
}

impl OneWay for ShmqThroughput {
    /// Excludes waking the peer: it produces one message more, received before the clock starts.
    fn run(&mut self, iters: u64) -> Duration {
        self.control
            .send(&(iters + 1).to_le_bytes())
            .expect("send command");
        self.recv_one();
        let start = Instant::now();
        if self.batch {
            let mut left = iters;
            while left > 0 {
                let max = left.min(BATCH as u64) as usize;
                let received = &mut self.received;
                let n = self
                    .data
                    .recv_batch(max, |msg| {
                        check_stamp(msg, *received);
                        *received += 1;
                    })
                    .expect("receive batch");
                left -= n as u64;
            }
        } else {
            for _ in 0..iters {
                self.recv_one();
            }
        }
        start.elapsed()
    }
}

/// Peer of [`ShmqThroughput`]; args: data path, control path, "batch" or "single".
fn shmq_producer_peer(args: &[String]) {
    let mut data = open(&args[0]).producer().expect("producer");
    data.set_wait_strategy(WaitStrategy::BusyPoll);
    let mut control = open(&args[1]).consumer().expect("control consumer");
    control.set_wait_strategy(WaitStrategy::Park);
    let batch = args[2] == "batch";
    let mut bufs = [[0u8; STREAM_MESSAGE]; BATCH];
    let mut sent = 0u64;
    loop {
        let count = {
            let cmd = control.recv().expect("receive command");
            u64::from_le_bytes(cmd[..].try_into().expect("8-byte command"))
        };
        let end = sent + count;
        while sent < end {
            if batch {
                let n = (end - sent).min(BATCH as u64) as usize;
                for buf in &mut bufs[..n] {
                    stamp(buf, sent);
                    sent += 1;
                }
                let msgs: [&[u8]; BATCH] = std::array::from_fn(|i| &bufs[i][..]);
                data.send_batch(&msgs[..n]).expect("send batch");
            } else {
                stamp(&mut bufs[0], sent);
                data.send(&bufs[0]).expect("send");
                sent += 1;
            }
        }
    }
}

/// Every one-way case, shmq's beside the baselines.
fn one_way_cases() -> Vec<(&'static str, Spawn<Box<dyn OneWay>>)> {
    vec![
        (
            "spsc ring",
            Box::new(|| Box::new(common::SpscRingThroughput::spawn(RING_SLOTS))),
        ),
        (
            "shmq send/recv",
            Box::new(|| Box::new(ShmqThroughput::spawn(false))),
        ),
        (
            "shmq batch",
            Box::new(|| Box::new(ShmqThroughput::spawn(true))),
        ),
        (
            "unix socket",
            Box::new(|| Box::new(common::UnixStreamThroughput::spawn())),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Criterion
// ---------------------------------------------------------------------------------------------

fn round_trips(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip");
    for (name, spawn) in round_trip_cases() {
        let mut case = spawn(); // One peer for both sizes.
        for size in SIZES {
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
                b.iter_custom(|iters| case.run(size, iters));
            });
        }
    }
    group.finish();
}

fn one_way(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_way_64B");
    group.throughput(Throughput::Elements(1));
    for (name, spawn) in one_way_cases() {
        let mut case = spawn();
        group.bench_function(name, |b| b.iter_custom(|iters| case.run(iters)));
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn print_machine() {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown", |(_, model)| model.trim());
    let field = |name: &str| {
        cpuinfo
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim() == name)
            .map_or("?", |(_, value)| value.trim())
    };
    let (family, model_number) = (field("cpu family"), field("model"));
    // Not `available_parallelism`: this thread is pinned to one CPU already.
    let nproc = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let pinned = match common::bench_cpus() {
        Some((parent, peer)) => format!("parent on CPU {parent}, peer on CPU {peer}"),
        None => "unpinned".to_owned(),
    };
    println!(
        "machine: {model} (family {family}, model {model_number}), nproc {nproc}, Linux {}; \
         {pinned}; load average {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// What the percentile report found, for the targets table.
#[derive(Default)]
struct Figures {
    busy_poll: Option<f64>,
    /// Busy-poll round trip with sweeps running, over the same without, both bracketed.
    sweeping: Option<f64>,
    default: Option<f64>,
    park_vs_futex: Option<f64>,
    /// Msg/s of each one-way case, round by round.
    rates: Vec<(&'static str, Vec<f64>)>,
}

impl Figures {
    /// The median over rounds of `ours`'s rate over `theirs`'s in the same round.
    fn ratio(&self, ours: &str, theirs: &str) -> Option<f64> {
        let rates = |name: &str| self.rates.iter().find(|(n, _)| *n == name).map(|(_, r)| r);
        let (ours, theirs) = (rates(ours)?, rates(theirs)?);
        let mut ratios: Vec<f64> = ours.iter().zip(theirs).map(|(a, b)| a / b).collect();
        ratios.sort_by(f64::total_cmp);
        (!ratios.is_empty()).then(|| median(&ratios))
    }
}

fn percentile_report(figures: &mut Figures) {
    let mut raw_atomic = common::ShmPingPong::raw_atomic();
    let mut raw_futex = common::ShmPingPong::raw_futex();
    let mut rows: Vec<(String, Bracketed)> = Vec::new();
    let mut park_bracket = None;
    for (name, spawn) in round_trip_cases() {
        let mut case = spawn();
        let bracketed = if name == Mode::Park.name() {
            // Also between raw futex medians: the figure it is judged against.
            common::bracket_with_raw(&mut raw_atomic, 64, || {
                let inner = common::bracket_with_raw(&mut raw_futex, 64, || {
                    case.percentiles(64, PERCENTILE_ROUND_TRIPS)
                });
                park_bracket = Some(inner);
                inner.case
            })
        } else {
            common::bracket_with_raw(&mut raw_atomic, 64, || {
                case.percentiles(64, PERCENTILE_ROUND_TRIPS)
            })
        };
        drop(case); // Its peer stops before the next case starts.
        if name == Mode::Sweeping.name() {
            figures.sweeping = figures.busy_poll.map(|plain| bracketed.ratio() / plain);
        } else if name == Mode::BusyPoll.name() {
            figures.busy_poll = Some(bracketed.ratio());
        } else if name == Mode::Default.name() {
            figures.default = Some(bracketed.ratio());
        }
        rows.push((name.to_owned(), bracketed));
    }
    let plain: Vec<(String, Percentiles)> = rows
        .iter()
        .map(|(name, b)| (name.clone(), b.case))
        .collect();
    println!("\n## 64-byte round trips, {PERCENTILE_ROUND_TRIPS} each\n");
    common::print_table(&plain, "raw atomic");
    println!("\nThe same, each beside raw atomic medians taken just before and after it:\n");
    common::print_bracketed(&rows);
    if let Some(b) = park_bracket {
        figures.park_vs_futex = Some(b.ratio());
        let mark = if b.unstable() { " (unstable)" } else { "" };
        println!(
            "\n{}: median {} against raw futex medians {} before and {} after: {:.2}{mark}",
            Mode::Park.name(),
            common::fmt_duration(b.case.median),
            common::fmt_duration(b.raw_before),
            common::fmt_duration(b.raw_after),
            b.ratio()
        );
    }
    let overhead = common::fmt_duration(common::timer_overhead());
    println!("\nEach sample includes the clock read: {overhead} (median, empty closure).");
}

/// Messages per timed run of a one-way case in the report.
fn report_messages(name: &str) -> u64 {
    if name == "unix socket" {
        100_000
    } else {
        1_000_000
    }
}

fn throughput_report(figures: &mut Figures) {
    let mut cases: Vec<(&'static str, Box<dyn OneWay>, Vec<f64>)> = one_way_cases()
        .into_iter()
        .map(|(name, spawn)| (name, spawn(), Vec::new()))
        .collect();
    // Rounds interleave the cases, so a busy neighbour (or the host moving our virtual CPUs)
    // hurts neighbouring measurements alike; ratios are taken round by round.
    for _ in 0..THROUGHPUT_ROUNDS {
        for (name, case, rates) in &mut cases {
            let n = report_messages(name);
            rates.push(n as f64 / case.run(n).as_secs_f64());
        }
    }
    figures.rates = cases
        .into_iter()
        .map(|(name, _, rates)| (name, rates))
        .collect(); // The peers are gone.
    println!("\n## One-way throughput, 64-byte messages, {THROUGHPUT_ROUNDS} interleaved rounds\n");
    println!(
        "| case | median M msg/s | best | worst | ns/msg (median) | / spsc ring (median of per-round ratios) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, rates) in &figures.rates {
        let mut sorted = rates.clone();
        sorted.sort_by(f64::total_cmp);
        let med = median(&sorted);
        let vs_ring = figures
            .ratio(name, "spsc ring")
            .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"));
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {vs_ring} |",
            med / 1e6,
            sorted[sorted.len() - 1] / 1e6,
            sorted[0] / 1e6,
            1e9 / med,
        );
    }
}

/// The median of sorted `values`.
fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

fn targets_table(figures: &Figures) {
    let over = |ours: &str, theirs: &str| figures.ratio(ours, theirs);
    // (figure, measured, target, whether lower is better)
    let rows = [
        (
            "busy-poll round trip / raw atomic",
            figures.busy_poll,
            1.25,
            true,
        ),
        (
            "default blocking round trip / raw atomic",
            figures.default,
            1.5,
            true,
        ),
        (
            "parked-every-time round trip / raw futex",
            figures.park_vs_futex,
            1.2,
            true,
        ),
        (
            "throughput send/recv / SPSC ring",
            over("shmq send/recv", "spsc ring"),
            0.7,
            false,
        ),
        (
            "throughput send/recv / Unix socket",
            over("shmq send/recv", "unix socket"),
            10.0,
            false,
        ),
        (
            "throughput batch / SPSC ring",
            over("shmq batch", "spsc ring"),
            0.7,
            false,
        ),
        (
            "throughput batch / Unix socket",
            over("shmq batch", "unix socket"),
            10.0,
            false,
        ),
    ];
    println!("\n## Targets (round trips: bracketed 64-byte medians; throughput: median of per-round ratios)\n");
    println!("| figure | measured | target | |");
    println!("|---|---:|---:|---|");
    for (figure, measured, target, lower_is_better) in rows {
        let (cmp, met) = match (measured, lower_is_better) {
            (Some(m), true) => ("≤", Some(m <= target)),
            (Some(m), false) => ("≥", Some(m >= target)),
            (None, lower) => (if lower { "≤" } else { "≥" }, None),
        };
        let measured = measured.map_or_else(|| "n/a".to_owned(), |m| format!("{m:.2}"));
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "n/a",
        };
        println!("| {figure} | {measured} | {cmp} {target} | {verdict} |");
    }
}

fn report() {
    let mut figures = Figures::default();
    percentile_report(&mut figures);
    throughput_report(&mut figures);
    targets_table(&figures);
    if let Some(r) = figures.sweeping {
        println!(
            "\nParticipant table: busy-poll round trip with a recovery sweep of both queues every \
             millisecond, over the same without (each bracketed by raw atomic): {r:.2}"
        );
    }
}

fn main() {
    common::run_peer_if_requested(PEER_ROLES);
    let benchmarking = common::benchmark_mode();
    if benchmarking {
        print_machine();
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    round_trips(&mut c);
    one_way(&mut c);
    c.final_summary();
    if benchmarking {
        report();
    }
}
