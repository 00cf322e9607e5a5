//! The single-producer single-consumer ring core (`ring::exclusive`, reached through the
//! test-only `shmq::exclusive_ring`) between two processes pinned to different cores, beside the
//! raw atomic ping-pong and the plain SPSC ring of `common`, in the same run. It measures the
//! ring the pipeline's exclusive mode is built on, without the pipeline around it.
//!
//! * Busy-poll round trip, 64 B: the parent sends on ring "ping"; the peer receives and echoes
//!   the bytes straight from the slot on ring "pong"; the parent copies the echo out.
//! * One-way throughput, 64 B: the peer sends, the parent receives (busy-polling both), against
//!   the plain SPSC ring with 64-byte slots.
//!
//! `nice cargo bench --bench ring` (the percentile and throughput reports print only when run
//! with `--bench`); `cargo test --bench ring` runs each case once, as a smoke test.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{check_stamp, stamp, STREAM_MESSAGE};
use common::{Cpu, JobPeer, OneWay, QueuePath, Role, RoundTrip, Target, WatchedPeer};
use shmq::exclusive_ring::{ExclusiveRingFile, Receiver, Sender};
use shmq::WaitStrategy;

/// Slots of every ring (as the pipeline bench's queues and the SPSC baseline).
const RING_SLOTS: u64 = 1024;
/// Largest message of the ping and pong rings (the pipeline's default).
const PING_MAX_MESSAGE: usize = 1024;
/// Round trips per case in the percentile report.
const PERCENTILE_ROUND_TRIPS: usize = 100_000;
/// Interleaved rounds of each throughput case in the report, and the length of each.
const THROUGHPUT_ROUNDS: usize = 9;
const RUN_TIME: Duration = Duration::from_millis(300);

const RING_ECHO: &str = "exclusive-ring-echo";
const RING_PRODUCER: &str = "exclusive-ring-producer";
const PEER_ROLES: &[(&str, Role)] = &[
    (RING_ECHO, ring_echo_peer),
    (RING_PRODUCER, ring_producer_peer),
];

const ROUND_TRIP_CASE: &str = "exclusive ring busy-poll";
const THROUGHPUT_CASE: &str = "exclusive ring";
const SPSC_CASE: &str = "spsc ring";

fn create(path: &QueuePath, max_message: usize) -> ExclusiveRingFile {
    ExclusiveRingFile::create(path.path(), RING_SLOTS, max_message)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.arg()))
}

fn open(path: &str) -> ExclusiveRingFile {
    ExclusiveRingFile::open(Path::new(path)).unwrap_or_else(|e| panic!("open {path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Round trip
// ---------------------------------------------------------------------------------------------

/// Ping-pong over two exclusive rings with a peer process, both sides busy-polling. An empty
/// message tells the peer to park until the next one ([`RoundTrip::idle`]).
struct RingPingPong {
    ping: Sender,
    pong: Receiver,
    _files: [QueuePath; 2],
    _peer: WatchedPeer,
}

impl RingPingPong {
    fn spawn() -> Self {
        let files = [QueuePath::new("ring-ping"), QueuePath::new("ring-pong")];
        let ping = create(&files[0], PING_MAX_MESSAGE)
            .sender()
            .expect("ping sender");
        let pong = create(&files[1], PING_MAX_MESSAGE)
            .receiver()
            .expect("pong receiver");
        let peer = WatchedPeer::spawn(RING_ECHO, &[files[0].arg(), files[1].arg()], Cpu::Peer);
        let mut this = Self {
            ping,
            pong,
            _files: files,
            _peer: peer,
        };
        this.run(64, 0); // The peer is up and has both rings open.
        this._files.iter_mut().for_each(QueuePath::remove);
        this
    }
}

impl RoundTrip for RingPingPong {
    fn round_trip(&mut self, msg: &[u8], reply: &mut [u8]) {
        self.ping
            .send(msg, WaitStrategy::BusyPoll)
            .expect("send ping");
        self.pong
            .recv(WaitStrategy::BusyPoll, |echo, _| {
                reply.copy_from_slice(echo)
            })
            .expect("receive pong");
    }

    fn idle(&mut self) {
        self.ping
            .send(&[], WaitStrategy::BusyPoll)
            .expect("send ping");
    }
}

/// Peer of [`RingPingPong`]; args: ping path, pong path.
fn ring_echo_peer(args: &[String]) {
    let mut ping = open(&args[0]).receiver().expect("ping receiver");
    let mut pong = open(&args[1]).sender().expect("pong sender");
    let mut idle = false;
    loop {
        let wait = if idle {
            WaitStrategy::Park
        } else {
            WaitStrategy::BusyPoll
        };
        idle = ping
            .recv(wait, |msg, _| {
                if !msg.is_empty() {
                    pong.send(msg, WaitStrategy::BusyPoll).expect("peer send");
                }
                msg.is_empty()
            })
            .expect("peer receive");
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------------

/// One-way throughput: a [`JobPeer`] sends `n` stamped 64-byte messages per job, the parent
/// receives and checks them. Starting a job (a futex round trip) is outside the timed part.
struct RingThroughput {
    data: Receiver,
    received: u64,
    peer: JobPeer,
    _file: QueuePath,
}

impl RingThroughput {
    fn spawn() -> Self {
        let mut file = QueuePath::new("ring-data");
        let data = create(&file, STREAM_MESSAGE)
            .receiver()
            .expect("data receiver");
        let peer = JobPeer::spawn(RING_PRODUCER, &[file.arg()], Cpu::Peer);
        file.remove();
        Self {
            data,
            received: 0,
            peer,
            _file: file,
        }
    }
}

impl OneWay for RingThroughput {
    fn run(&mut self, iters: u64) -> Duration {
        self.peer.start(iters);
        let start = Instant::now();
        for _ in 0..iters {
            let seq = self.received;
            self.data
                .recv(WaitStrategy::BusyPoll, |msg, _| check_stamp(msg, seq))
                .expect("receive");
            self.received += 1;
        }
        let elapsed = start.elapsed();
        assert_eq!(self.peer.finish(), iters);
        elapsed
    }
}

/// Peer of [`RingThroughput`]; args: data path, then the job file (see `common::serve_jobs`).
fn ring_producer_peer(args: &[String]) {
    let mut data = open(&args[0]).sender().expect("data sender");
    let mut msg = [0u8; STREAM_MESSAGE];
    let mut sent = 0u64;
    common::serve_jobs(args, |n| {
        for _ in 0..n {
            stamp(&mut msg, sent);
            data.send(&msg, WaitStrategy::BusyPoll).expect("send");
            sent += 1;
        }
        n
    });
}

// ---------------------------------------------------------------------------------------------
// Cases, report, main
// ---------------------------------------------------------------------------------------------

fn round_trip_cases() -> Vec<common::RoundTripCase> {
    vec![
        common::raw_atomic_case(),
        (
            ROUND_TRIP_CASE,
            Box::new(|| Box::new(RingPingPong::spawn())),
        ),
    ]
}

fn one_way_cases() -> Vec<common::OneWayCase> {
    vec![
        (
            SPSC_CASE,
            Box::new(|| Box::new(common::SpscRingThroughput::spawn(RING_SLOTS))),
        ),
        (
            THROUGHPUT_CASE,
            Box::new(|| Box::new(RingThroughput::spawn())),
        ),
    ]
}

fn report() {
    let rows = common::round_trip_report(round_trip_cases(), PERCENTILE_ROUND_TRIPS);
    let rates = common::throughput_report(
        one_way_cases(),
        THROUGHPUT_ROUNDS,
        RUN_TIME,
        "msg",
        SPSC_CASE,
    );
    common::print_targets(
        "round trip: bracketed 64-byte medians; throughput: median of per-round ratios",
        &[
            Target {
                figure: "exclusive ring busy-poll round trip / raw atomic (issue 9: pipeline)",
                measured: common::bracketed_ratio(&rows, ROUND_TRIP_CASE),
                target: 1.5,
                ceiling: true,
            },
            Target {
                figure: "exclusive ring throughput, 64 B / SPSC ring (issue 9: pipeline)",
                measured: rates.ratio(THROUGHPUT_CASE, SPSC_CASE),
                target: 0.7,
                ceiling: false,
            },
        ],
    );
}

fn main() {
    common::run_peer_if_requested(PEER_ROLES);
    let benchmarking = common::benchmark_mode();
    if benchmarking {
        common::print_machine("parent on the parent CPU, the peer on the peer CPU");
    }
    let mut c = common::criterion();
    common::bench_round_trips(&mut c, "round_trip", round_trip_cases(), &[64]);
    common::bench_one_way(&mut c, "one_way_64B", one_way_cases());
    c.final_summary();
    if benchmarking {
        report();
    }
}
