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
//! * Many to many: three producer processes and three consumer processes on one pipeline, beside
//!   one and one run the same way (`ManyToMany`).
//! * Exclusive ends: the 1 → 1 round trips (busy-poll, default wait, parked) and throughput
//!   cases again over pipelines created with `single_producer().single_consumer()` ("shmq
//!   excl ..."). Issue 9's pipeline targets are judged on these; the shared-ends rows are
//!   reported beside them.
//! * Payload checksums: the busy-poll round trips (64 B and 1 KiB) and the send/recv throughput
//!   again over pipelines created with `checksum(true)` ("... + crc"), on both rings, beside
//!   the same cases without; the report gives the ratios (the checksum's cost).
//!
//! Criterion measures all of those; then (only under `cargo bench`, not `cargo test --benches`)
//! a report: percentiles of 100k 64-byte round trips per case, each case bracketed by short raw
//! atomic ping-pongs, interleaved throughput rounds, and a table of the targets; the raw results
//! go to `target/shmq-bench/` (see `common::results`).
//!
//! # Placement
//! The machine has two CPUs. The parent is pinned to one and every peer to the other, so each
//! 1 → 1 case has one process per core. In the many-to-many cases the producers share the peer
//! CPU and the consumers the parent's (the parent itself sleeps while they run), and every side
//! waits the default way (spin 20 µs, then park): processes sharing a CPU cannot all busy-poll
//! (see the pubsub bench's docs), and the 1 → 1 reference of that ratio waits the same way.
//!
//! `nice cargo bench --bench pipeline`

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{check_stamp, stamp, Cpu, JobPeer, OneWay, OneWayCase, QueuePath, Reported, Role};
use common::{RoundTrip, RoundTripCase, Target, WatchedPeer, STREAM_MESSAGE};
use shmq::{Consumer, Pipeline, PipelineOptions, Producer, WaitStrategy};

/// Round-trip message sizes.
const SIZES: [usize; 2] = [64, 1024];
/// Slots of the ping and pong queues (the default capacity).
const PING_CAPACITY: usize = 1024;
/// Largest message of the ping and pong queues.
const PING_MAX_MESSAGE: usize = 1024;
/// Slots of the throughput queues, shmq's and the SPSC ring's.
const RING_SLOTS: usize = 1024;
/// Messages per `send_batch` / `recv_batch`.
const BATCH: usize = 64;
/// Round trips per case in the percentile report.
const PERCENTILE_ROUND_TRIPS: usize = 100_000;
/// Interleaved rounds of each throughput case in the report, and the length of each run.
const THROUGHPUT_ROUNDS: usize = 9;
const RUN_TIME: Duration = Duration::from_millis(100);
/// Producers and consumers of the many-to-many case.
const MANY: usize = 3;

const RAW_FUTEX: &str = "raw futex";
const SPSC_RING: &str = "spsc ring";
const SEND_RECV: &str = "shmq send/recv";
const BATCH_CASE: &str = "shmq batch";
const EXCL_SEND_RECV: &str = "shmq excl send/recv";
const EXCL_BATCH: &str = "shmq excl batch";
const SEND_RECV_CRC: &str = "shmq send/recv + crc";
const EXCL_SEND_RECV_CRC: &str = "shmq excl send/recv + crc";
/// The busy-poll round trips over queues with checksums.
const BUSY_POLL_CRC: &str = "shmq busy-poll + crc";
const EXCL_BUSY_POLL_CRC: &str = "shmq excl busy-poll + crc";
const UNIX_SOCKET: &str = "unix socket";
const ONE_TO_ONE: &str = "shmq 1→1, default wait, job peers";
const MANY_TO_MANY: &str = "shmq 3→3, default wait, job peers";

const SHMQ_ECHO: &str = "shmq-echo";
const SHMQ_PRODUCER: &str = "shmq-producer";
const MANY_PRODUCER: &str = "shmq-many-producer";
const MANY_CONSUMER: &str = "shmq-many-consumer";
const PEER_ROLES: &[(&str, Role)] = &[
    (SHMQ_ECHO, shmq_echo_peer),
    (SHMQ_PRODUCER, shmq_producer_peer),
    (MANY_PRODUCER, many_producer_peer),
    (MANY_CONSUMER, many_consumer_peer),
];

fn create(path: &QueuePath, options: &PipelineOptions) -> Pipeline {
    Pipeline::create(path.path(), options).unwrap_or_else(|e| panic!("create {}: {e}", path.arg()))
}

fn open(path: &str) -> Pipeline {
    Pipeline::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"))
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

    /// The case's name over queues with exclusive ends (`Ends::Exclusive`), or shared ones.
    fn case(self, ends: Ends) -> &'static str {
        match (ends, self) {
            (Ends::Shared, _) => self.name(),
            (Ends::Exclusive, Mode::BusyPoll) => "shmq excl busy-poll",
            (Ends::Exclusive, Mode::Sweeping) => "shmq excl busy-poll + sweeps",
            (Ends::Exclusive, Mode::Default) => "shmq excl default",
            (Ends::Exclusive, Mode::Park) => "shmq excl park",
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

/// Which ring the bench's queues run on: any number of producers and consumers, or one each
/// (`PipelineOptions::single_producer().single_consumer()`). Peers find out from the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ends {
    Shared,
    Exclusive,
}

impl Ends {
    fn options(self) -> PipelineOptions {
        match self {
            Ends::Shared => PipelineOptions::new(),
            Ends::Exclusive => PipelineOptions::new().single_producer().single_consumer(),
        }
    }
}

/// Whether the bench's queues carry payload checksums (`PipelineOptions::checksum`). Peers find out
/// from the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crc {
    Off,
    On,
}

/// shmq ping-pong with a peer process: `send` on "ping", the peer `recv`s, `send`s the received
/// message (straight from its slot) on "pong" and then drops it; we `recv` and copy it out.
/// An empty message tells the peer to park until the next one ([`RoundTrip::idle`]).
struct ShmqPingPong {
    ping: Producer,
    pong: Consumer,
    _paths: [QueuePath; 2],
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
    fn spawn(mode: Mode, ends: Ends, crc: Crc) -> Self {
        let options = ends
            .options()
            .checksum(crc == Crc::On)
            .capacity(PING_CAPACITY)
            .max_message(PING_MAX_MESSAGE);
        let paths = [QueuePath::new("ping"), QueuePath::new("pong")];
        let queues = [create(&paths[0], &options), create(&paths[1], &options)];
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
        let args = [paths[0].arg(), paths[1].arg(), mode.as_arg().to_owned()];
        let peer = WatchedPeer::spawn(SHMQ_ECHO, &args, Cpu::Peer);
        let mut this = Self {
            ping,
            pong,
            _paths: paths,
            _peer: peer,
            sweeper,
        };
        this.run(64, 0); // The peer is up and has both queues open.
        this._paths.iter_mut().for_each(QueuePath::remove);
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

/// Every round-trip case, shmq's beside the baselines they are compared with.
fn round_trip_cases() -> Vec<RoundTripCase> {
    let shmq = |mode: Mode, ends: Ends| -> RoundTripCase {
        (
            mode.case(ends),
            Box::new(move || Box::new(ShmqPingPong::spawn(mode, ends, Crc::Off))),
        )
    };
    let crc = |name, ends: Ends| -> RoundTripCase {
        (
            name,
            Box::new(move || Box::new(ShmqPingPong::spawn(Mode::BusyPoll, ends, Crc::On))),
        )
    };
    vec![
        common::raw_atomic_case(),
        shmq(Mode::BusyPoll, Ends::Exclusive),
        crc(EXCL_BUSY_POLL_CRC, Ends::Exclusive),
        shmq(Mode::BusyPoll, Ends::Shared),
        crc(BUSY_POLL_CRC, Ends::Shared),
        shmq(Mode::Sweeping, Ends::Shared),
        shmq(Mode::Default, Ends::Exclusive),
        shmq(Mode::Default, Ends::Shared),
        (
            RAW_FUTEX,
            Box::new(|| Box::new(common::ShmPingPong::raw_futex())),
        ),
        shmq(Mode::Park, Ends::Exclusive),
        shmq(Mode::Park, Ends::Shared),
        (
            UNIX_SOCKET,
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

/// One-way throughput over a pipeline: a peer process produces 64-byte messages, the parent
/// consumes them, both busy-polling (as the SPSC ring baseline does). A second pipeline carries
/// the parent's commands (how many messages to produce); the peer parks on it between runs.
struct ShmqThroughput {
    data: Consumer,
    control: Producer,
    batch: bool,
    received: u64,
    _paths: [QueuePath; 2],
    _peer: WatchedPeer,
}

impl ShmqThroughput {
    /// `batch`: the peer sends with `send_batch` and we receive with `recv_batch`.
    fn spawn(batch: bool, ends: Ends, crc: Crc) -> Self {
        let paths = [QueuePath::new("data"), QueuePath::new("control")];
        let data_options = ends
            .options()
            .checksum(crc == Crc::On)
            .capacity(RING_SLOTS)
            .max_message(STREAM_MESSAGE);
        let control_options = PipelineOptions::new().capacity(4).max_message(8);
        let mut data = create(&paths[0], &data_options)
            .consumer()
            .expect("consumer");
        data.set_wait_strategy(WaitStrategy::BusyPoll);
        let control = create(&paths[1], &control_options)
            .producer()
            .expect("control producer");
        let mode = if batch { "batch" } else { "single" };
        let args = [paths[0].arg(), paths[1].arg(), mode.to_owned()];
        let peer = WatchedPeer::spawn(SHMQ_PRODUCER, &args, Cpu::Peer);
        let mut this = Self {
            data,
            control,
            batch,
            received: 0,
            _paths: paths,
            _peer: peer,
        };
        this.run(1); // The peer is up and has both queues open.
        this._paths.iter_mut().for_each(QueuePath::remove);
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

// ---------------------------------------------------------------------------------------------
// Many to many
// ---------------------------------------------------------------------------------------------

/// Byte of a many-to-many message that names its producer (after the 8-byte stamp).
const PRODUCER_BYTE: usize = 8;

/// Throughput of `producers` producer processes on the peer CPU to `consumers` consumer
/// processes on the parent CPU over one pipeline, every side waiting the default way; the
/// parent only commands them ([`JobPeer`]s) and sleeps. A run of `iters` shares the messages out
/// among the producers; once they have all sent theirs, the parent sends one empty message per
/// consumer, and each consumer's job ends at the first empty message it takes, returning how
/// many messages it took before: they must add up to `iters`. Timed from starting the producers
/// to the last consumer's report.
struct ManyToMany {
    stop: Producer,
    producers: Vec<JobPeer>,
    consumers: Vec<JobPeer>,
    _path: QueuePath,
}

impl ManyToMany {
    fn spawn(producers: usize, consumers: usize) -> Self {
        let mut path = QueuePath::new("many");
        let options = PipelineOptions::new()
            .capacity(RING_SLOTS)
            .max_message(STREAM_MESSAGE);
        let stop = create(&path, &options).producer().expect("producer");
        let wait = common::wait_arg(WaitStrategy::default());
        let producers = (0..producers)
            .map(|i| {
                let args = [path.arg(), wait.clone(), i.to_string()];
                JobPeer::spawn(MANY_PRODUCER, &args, Cpu::Peer)
            })
            .collect();
        let consumers = (0..consumers)
            .map(|_| JobPeer::spawn(MANY_CONSUMER, &[path.arg(), wait.clone()], Cpu::Parent))
            .collect();
        path.remove(); // Everyone has it open: `JobPeer::spawn` ran a first, empty job.
        Self {
            stop,
            producers,
            consumers,
            _path: path,
        }
    }
}

impl OneWay for ManyToMany {
    fn run(&mut self, iters: u64) -> Duration {
        for consumer in &mut self.consumers {
            consumer.start(1); // Take messages until an empty one.
        }
        let share = iters / self.producers.len() as u64;
        let first = iters - share * (self.producers.len() as u64 - 1);
        let start = Instant::now();
        for (i, producer) in self.producers.iter_mut().enumerate() {
            producer.start(if i == 0 { first } else { share });
        }
        for producer in &mut self.producers {
            producer.finish();
        }
        for _ in &self.consumers {
            self.stop.send(&[]).expect("send stop");
        }
        let taken: u64 = self.consumers.iter_mut().map(JobPeer::finish).sum();
        let elapsed = start.elapsed();
        assert_eq!(taken, iters, "messages lost or delivered twice");
        elapsed
    }
}

/// Peer of [`ManyToMany`]; args: pipeline path, wait strategy, producer index, job path. A job
/// of `n` sends `n` messages stamped with this producer's next sequence numbers and its index.
fn many_producer_peer(args: &[String]) {
    let mut producer = open(&args[0]).producer().expect("producer");
    producer.set_wait_strategy(common::parse_wait(&args[1]));
    let index: u8 = args[2].parse().expect("producer index");
    let mut msg = [0u8; STREAM_MESSAGE];
    msg[PRODUCER_BYTE] = index;
    let mut next = 0u64;
    common::serve_jobs(args, |n| {
        for _ in 0..n {
            stamp(&mut msg, next);
            producer.send(&msg).expect("send");
            next += 1;
        }
        0
    });
}

/// Peer of [`ManyToMany`]; args: pipeline path, wait strategy, job path. A job of 0 returns at
/// once (set-up); a job of 1 takes messages until an empty one and returns how many it took,
/// checking that each producer's messages arrive in the order it sent them.
fn many_consumer_peer(args: &[String]) {
    let mut consumer = open(&args[0]).consumer().expect("consumer");
    consumer.set_wait_strategy(common::parse_wait(&args[1]));
    // The next sequence number each producer may send (each consumer sees a subsequence).
    let mut next = [0u64; 256];
    common::serve_jobs(args, |job| {
        if job == 0 {
            return 0;
        }
        let mut taken = 0;
        loop {
            let msg = consumer.recv().expect("receive");
            if msg.is_empty() {
                break;
            }
            assert_eq!(msg.len(), STREAM_MESSAGE, "message length");
            let seq = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
            let producer = &mut next[usize::from(msg[PRODUCER_BYTE])];
            assert!(seq >= *producer, "a producer's messages out of order");
            *producer = seq + 1;
            taken += 1;
        }
        taken
    });
}

/// Every one-way case, shmq's beside the baselines.
fn one_way_cases() -> Vec<OneWayCase> {
    let many =
        |name, n| -> OneWayCase { (name, Box::new(move || Box::new(ManyToMany::spawn(n, n)))) };
    vec![
        (
            SPSC_RING,
            Box::new(|| Box::new(common::SpscRingThroughput::spawn(RING_SLOTS as u64))),
        ),
        (
            EXCL_SEND_RECV,
            Box::new(|| Box::new(ShmqThroughput::spawn(false, Ends::Exclusive, Crc::Off))),
        ),
        (
            EXCL_SEND_RECV_CRC,
            Box::new(|| Box::new(ShmqThroughput::spawn(false, Ends::Exclusive, Crc::On))),
        ),
        (
            EXCL_BATCH,
            Box::new(|| Box::new(ShmqThroughput::spawn(true, Ends::Exclusive, Crc::Off))),
        ),
        (
            SEND_RECV,
            Box::new(|| Box::new(ShmqThroughput::spawn(false, Ends::Shared, Crc::Off))),
        ),
        (
            SEND_RECV_CRC,
            Box::new(|| Box::new(ShmqThroughput::spawn(false, Ends::Shared, Crc::On))),
        ),
        (
            BATCH_CASE,
            Box::new(|| Box::new(ShmqThroughput::spawn(true, Ends::Shared, Crc::Off))),
        ),
        (
            UNIX_SOCKET,
            Box::new(|| Box::new(common::UnixStreamThroughput::spawn())),
        ),
        many(ONE_TO_ONE, 1),
        many(MANY_TO_MANY, MANY),
    ]
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn report() {
    let mut raw_futex = common::ShmPingPong::raw_futex();
    let park_cases = [Ends::Exclusive, Ends::Shared].map(|ends| Mode::Park.case(ends));
    let mut park_brackets = [None; 2];
    let rows = common::round_trip_report_with(
        round_trip_cases(),
        PERCENTILE_ROUND_TRIPS,
        |name, measure| {
            let Some(i) = park_cases.iter().position(|&c| c == name) else {
                return measure();
            };
            // Also between raw futex medians: the figure it is judged against.
            let inner = common::bracket_with_raw(&mut raw_futex, 64, measure);
            park_brackets[i] = Some(inner);
            inner.case
        },
    );
    drop(raw_futex);
    for (name, bracket) in park_cases.iter().zip(&park_brackets) {
        let Some(b) = bracket else { continue };
        common::record_bracket(name, RAW_FUTEX, b);
        let mark = if b.unstable() { " (unstable)" } else { "" };
        println!(
            "\n{name}: median {} against raw futex medians {} before and {} after: {:.2}{mark}",
            common::fmt_duration(b.case.median),
            common::fmt_duration(b.raw_before),
            common::fmt_duration(b.raw_after),
            b.ratio()
        );
    }
    let [excl_park_bracket, park_bracket] = park_brackets;
    let rates = common::throughput_report(
        one_way_cases(),
        THROUGHPUT_ROUNDS,
        RUN_TIME,
        "msg",
        SPSC_RING,
    );
    let round_trip = |figure, mode: Mode, target| Target {
        figure,
        measured: common::bracketed_ratio(&rows, mode.case(Ends::Exclusive)),
        target,
        ceiling: true,
    };
    let throughput = |figure, ours, theirs, target| Target {
        figure,
        measured: rates.ratio(ours, theirs),
        target,
        ceiling: false,
    };
    let shared = |figure, measured, aim| Reported {
        figure,
        measured,
        aim: Some(aim),
    };
    let sweeping = common::bracketed_ratio(&rows, Mode::Sweeping.name())
        .zip(common::bracketed_ratio(&rows, Mode::BusyPoll.name()))
        .map(|(with, without)| with / without);
    // The checksum's cost: the same case with checksums over without, 64-byte messages.
    let crc_round_trip = |with, without| {
        common::bracketed_ratio(&rows, with)
            .zip(common::bracketed_ratio(&rows, without))
            .map(|(with, without)| with / without)
    };
    common::print_targets_and_figures(
        "round trips: bracketed 64-byte medians, p99.9 over raw atomic's in the same table; \
         throughput: median of per-round ratios; targets judged with exclusive ends (excl), \
         shared ends reported",
        &[
            round_trip(
                "1→1 round trip excl, busy-poll / raw atomic",
                Mode::BusyPoll,
                1.5,
            ),
            round_trip(
                "1→1 round trip excl, default wait / raw atomic",
                Mode::Default,
                1.6,
            ),
            Target {
                figure: "1→1 round trip excl, parked every time / raw futex",
                measured: excl_park_bracket.map(|b| b.ratio()),
                target: 1.2,
                ceiling: true,
            },
            Target {
                figure: "1→1 busy-poll round trip excl p99.9 / raw atomic p99.9",
                measured: common::p999_ratio(&rows, Mode::BusyPoll.case(Ends::Exclusive)),
                target: 2.0,
                ceiling: true,
            },
            throughput(
                "1→1 throughput excl send/recv, 64 B / SPSC ring",
                EXCL_SEND_RECV,
                SPSC_RING,
                0.7,
            ),
            throughput(
                "1→1 throughput excl send/recv / Unix socket",
                EXCL_SEND_RECV,
                UNIX_SOCKET,
                10.0,
            ),
            throughput(
                "1→1 throughput excl batch / SPSC ring",
                EXCL_BATCH,
                SPSC_RING,
                0.7,
            ),
            throughput(
                "1→1 throughput excl batch / Unix socket",
                EXCL_BATCH,
                UNIX_SOCKET,
                10.0,
            ),
        ],
        &[
            shared(
                "shared ends: 1→1 round trip, busy-poll / raw atomic",
                common::bracketed_ratio(&rows, Mode::BusyPoll.name()),
                "≤ 1.5",
            ),
            shared(
                "shared ends: 1→1 round trip, default wait / raw atomic",
                common::bracketed_ratio(&rows, Mode::Default.name()),
                "≤ 1.6",
            ),
            shared(
                "shared ends: 1→1 round trip, parked every time / raw futex",
                park_bracket.map(|b| b.ratio()),
                "≤ 1.2",
            ),
            shared(
                "shared ends: 1→1 busy-poll round trip p99.9 / raw atomic p99.9",
                common::p999_ratio(&rows, Mode::BusyPoll.name()),
                "≤ 2.0",
            ),
            shared(
                "shared ends: 1→1 throughput send/recv, 64 B / SPSC ring",
                rates.ratio(SEND_RECV, SPSC_RING),
                "≥ 0.7",
            ),
            shared(
                "shared ends: 1→1 throughput batch / SPSC ring",
                rates.ratio(BATCH_CASE, SPSC_RING),
                "≥ 0.7",
            ),
            Reported {
                figure: "3→3 throughput / 1→1 (both default wait, job peers)",
                measured: rates.ratio(MANY_TO_MANY, ONE_TO_ONE),
                aim: Some("≥ 0.5"),
            },
            Reported {
                figure:
                    "busy-poll round trip with a recovery sweep of both queues every ms / without",
                measured: sweeping,
                aim: None,
            },
            Reported {
                figure: "checksums: busy-poll round trip excl, 64 B, with / without",
                measured: crc_round_trip(EXCL_BUSY_POLL_CRC, Mode::BusyPoll.case(Ends::Exclusive)),
                aim: None,
            },
            Reported {
                figure: "checksums: busy-poll round trip shared, 64 B, with / without",
                measured: crc_round_trip(BUSY_POLL_CRC, Mode::BusyPoll.name()),
                aim: None,
            },
            Reported {
                figure: "checksums: throughput excl send/recv, 64 B, with / without",
                measured: rates.ratio(EXCL_SEND_RECV_CRC, EXCL_SEND_RECV),
                aim: None,
            },
            Reported {
                figure: "checksums: throughput shared send/recv, 64 B, with / without",
                measured: rates.ratio(SEND_RECV_CRC, SEND_RECV),
                aim: None,
            },
        ],
    );
}

fn main() {
    common::run_peer_if_requested(PEER_ROLES);
    let benchmarking = common::benchmark_mode();
    if benchmarking {
        common::print_machine(
            "parent on the parent CPU, every peer on the peer CPU; in the job-peer cases \
             the producers on the peer CPU and the consumers on the parent CPU",
        );
    }
    let mut c = common::criterion();
    common::bench_round_trips(&mut c, "round_trip", round_trip_cases(), &SIZES);
    common::bench_one_way(&mut c, "one_way_64B", one_way_cases());
    c.final_summary();
    if benchmarking {
        report();
    }
}
