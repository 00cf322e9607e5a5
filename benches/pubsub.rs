//! The publish-subscribe benchmark: one publisher (the parent) fanning 64-byte messages out to
//! subscriber processes, and a publish-subscribe round trip, beside a pipeline and the raw
//! baselines of `common` in the same run.
//!
//! * Round trips: the parent publishes on channel "ping", a peer process's subscriber receives
//!   the message and publishes its payload on channel "pong", to which the parent subscribes;
//!   both sides busy-polling, and with the default blocking wait. Beside them: raw atomic
//!   ping-pong.
//! * Fan-out throughput: the parent publishes stamped messages, busy-polling; receiver
//!   processes take every one and check order and loss. Cases: a pipeline to one consumer (the
//!   reference of the target), a channel to one subscriber, to two subscribers in Block mode
//!   (nothing lost, so every subscriber's rate is that of the whole run), the same with both
//!   busy-polling (to show why they don't), and to two in drop-oldest mode (the publisher never
//!   waits; the report gives the subscribers' lag counts). Beside them: the plain SPSC ring of
//!   `common` (there a peer produces and the parent consumes).
//!
//! Criterion measures all of those; then (only under `cargo bench`) a report: percentiles of
//! 100k round trips per case, each bracketed by raw atomic ping-pongs, interleaved throughput
//! rounds, and the targets table.
//!
//! # Placement
//! The machine has two CPUs. The parent (the publisher) is pinned to one and every receiver to
//! the other, as in the pipeline bench, so the 1 → 1 cases compare like with like. The two
//! subscribers of the 1 → 2 cases share the peer CPU: the publisher, which paces them both,
//! keeps a core, and the subscribers, doing the same work, get equal shares of the other.
//! They cannot both busy-poll there: a spinning subscriber keeps the CPU until the scheduler
//! preempts it, a time slice later, while the other, unread, holds the Block-mode publisher
//! back. So they wait the default way (spin 20 µs, then park on the futex): the one that has
//! caught up parks and the other drains the ring. Measured on the idle machine (M msg/s per
//! subscriber, pipeline 1 → 1 at 13): both on the peer CPU, spin-then-park 1.6, parked every
//! time 1.8, busy-poll 0.27; all three processes floating over both CPUs 1.3 (busy-poll 0.2);
//! one subscriber on each CPU, one beside the publisher, 0.8 (busy-poll 0.14).
//!
//! `nice cargo bench --bench pubsub`

mod common;

use std::time::{Duration, Instant};

use common::{Cpu, JobPeer, OneWay, OneWayCase, QueuePath, Role, RoundTrip, RoundTripCase};
use common::{Reported, Target, WatchedPeer, STREAM_MESSAGE};
use shmq::{
    Overflow, Pipeline, PipelineOptions, Producer, PubSub, PubSubOptions, Publisher, RecvError,
};
use shmq::{Subscriber, WaitStrategy};

/// The topic of every message; subscribers subscribe to it.
const TOPIC: &[u8] = b"bench/tick";
/// Slots of every channel and of the pipeline (the default capacity).
const CAPACITY: usize = 1024;
/// How the two subscribers sharing the peer CPU wait (see the module docs).
const SHARED_CPU_WAIT: WaitStrategy = WaitStrategy::SpinThenPark(Duration::from_micros(20));
/// Round trips per case in the percentile report.
const PERCENTILE_ROUND_TRIPS: usize = 100_000;
/// Interleaved rounds of each throughput case in the report, and the length of each run.
const THROUGHPUT_ROUNDS: usize = 7;
const RUN_TIME: Duration = Duration::from_millis(100);

const PIPELINE: &str = "pipeline 1→1";
const ONE_SUBSCRIBER: &str = "pubsub 1→1 block";
const TWO_SUBSCRIBERS: &str = "pubsub 1→2 block";
const TWO_SPINNING: &str = "pubsub 1→2 block, busy-poll";
const TWO_DROP_OLDEST: &str = "pubsub 1→2 drop-oldest, published";

const ECHO: &str = "pubsub-echo";
const SUBSCRIBER: &str = "pubsub-subscriber";
const CONSUMER: &str = "pipeline-consumer";
const PEER_ROLES: &[(&str, Role)] = &[
    (ECHO, echo_peer),
    (SUBSCRIBER, subscriber_peer),
    (CONSUMER, consumer_peer),
];

fn create(path: &QueuePath, overflow: Overflow) -> PubSub {
    let options = PubSubOptions::new()
        .capacity(CAPACITY)
        .max_message(STREAM_MESSAGE)
        .max_topic(TOPIC.len())
        .max_subscribers(2)
        .overflow(overflow);
    PubSub::create(path.path(), &options).unwrap_or_else(|e| panic!("create {}: {e}", path.arg()))
}

fn open(path: &str) -> PubSub {
    PubSub::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

/// Publish-subscribe ping-pong with a peer process over two Block-mode channels: we publish on
/// "ping", the peer receives and publishes the payload on "pong", we receive and copy it out.
/// An empty message tells the peer to park until the next one ([`RoundTrip::idle`]).
struct PubSubPingPong {
    ping: Publisher,
    pong: Subscriber,
    _paths: [QueuePath; 2],
    _peer: WatchedPeer,
}

impl PubSubPingPong {
    fn spawn(wait: WaitStrategy) -> Self {
        let paths = [QueuePath::new("ping"), QueuePath::new("pong")];
        let mut ping = create(&paths[0], Overflow::Block)
            .publisher()
            .expect("publisher");
        let mut pong = create(&paths[1], Overflow::Block)
            .subscriber(&[TOPIC])
            .expect("subscriber");
        ping.set_wait_strategy(wait);
        pong.set_wait_strategy(wait);
        let args = [paths[0].arg(), paths[1].arg(), common::wait_arg(wait)];
        let peer = WatchedPeer::spawn(ECHO, &args, Cpu::Peer);
        let mut this = Self {
            ping,
            pong,
            _paths: paths,
            _peer: peer,
        };
        this.run(64, 0); // The peer is up and has both channels open.
        this._paths.iter_mut().for_each(QueuePath::remove);
        this
    }
}

impl RoundTrip for PubSubPingPong {
    fn round_trip(&mut self, msg: &[u8], reply: &mut [u8]) {
        self.ping.publish(TOPIC, msg).expect("publish ping");
        let echo = self.pong.recv().expect("receive pong");
        reply.copy_from_slice(echo.payload());
    }

    fn idle(&mut self) {
        self.ping.publish(TOPIC, &[]).expect("publish ping");
    }
}

/// Peer of [`PubSubPingPong`]; args: ping path, pong path, wait strategy.
fn echo_peer(args: &[String]) {
    let wait = common::parse_wait(&args[2]);
    // With history: the first ping may be published before we attach.
    let channel = open(&args[0]);
    let mut ping = channel
        .subscribe(&[TOPIC])
        .history()
        .attach()
        .expect("subscriber");
    let mut pong = open(&args[1]).publisher().expect("publisher");
    pong.set_wait_strategy(wait);
    let mut idle = false;
    loop {
        ping.set_wait_strategy(if idle { WaitStrategy::Park } else { wait });
        let msg = ping.recv().expect("peer receive");
        idle = msg.payload().is_empty();
        if !idle {
            pong.publish(msg.topic(), msg.payload())
                .expect("peer publish");
        }
    }
}

const BUSY_POLL: &str = "pubsub busy-poll";
const DEFAULT: &str = "pubsub default";
const SPSC_RING: &str = "spsc ring";

fn round_trip_cases() -> Vec<RoundTripCase> {
    let pubsub = |name, wait| -> RoundTripCase {
        (
            name,
            Box::new(move || Box::new(PubSubPingPong::spawn(wait))),
        )
    };
    vec![
        common::raw_atomic_case(),
        pubsub(BUSY_POLL, WaitStrategy::BusyPoll),
        pubsub(DEFAULT, WaitStrategy::default()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Fan-out throughput
// ---------------------------------------------------------------------------------------------

#[allow(clippy::large_enum_variant)] // one per bench peer, never moved in a hot loop
enum Sender {
    Pipeline(Producer),
    PubSub(Publisher),
}

/// One-way throughput from the parent to receiver peers ([`JobPeer`]s): a run starts every
/// receiver on a job of `iters` messages, sends them (busy-polling for room), and waits until
/// every receiver has taken all of them or skipped them (drop-oldest) and says how many it
/// skipped. Timed from the first send to the last receiver's report, so every receiver's rate
/// is `iters` over that time.
struct FanOut {
    sender: Sender,
    receivers: Vec<JobPeer>,
    sent: u64,
    /// Messages each receiver skipped so far.
    lost: Vec<u64>,
    /// Time of all runs so far.
    elapsed: Duration,
    _path: QueuePath,
}

impl FanOut {
    fn new(sender: Sender, receivers: Vec<JobPeer>, mut path: QueuePath) -> Self {
        path.remove(); // Every receiver has it open: `JobPeer::spawn` ran a first, empty job.
        Self {
            sender,
            lost: vec![0; receivers.len()],
            elapsed: Duration::ZERO,
            receivers,
            sent: 0,
            _path: path,
        }
    }

    /// A pipeline to one consumer, both busy-polling.
    fn pipeline() -> Self {
        let path = QueuePath::new("pipeline");
        let options = PipelineOptions::new()
            .capacity(CAPACITY)
            .max_message(STREAM_MESSAGE);
        let queue = Pipeline::create(path.path(), &options)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.arg()));
        let mut producer = queue.producer().expect("producer");
        producer.set_wait_strategy(WaitStrategy::BusyPoll);
        let args = [path.arg(), common::wait_arg(WaitStrategy::BusyPoll)];
        let consumer = JobPeer::spawn(CONSUMER, &args, Cpu::Peer);
        Self::new(Sender::Pipeline(producer), vec![consumer], path)
    }

    /// A channel to `subscribers` subscribers on the peer CPU waiting with `wait`; the
    /// publisher busy-polls (Block mode).
    fn pubsub(overflow: Overflow, subscribers: usize, wait: WaitStrategy) -> Self {
        let path = QueuePath::new("fan-out");
        let mut publisher = create(&path, overflow).publisher().expect("publisher");
        publisher.set_wait_strategy(WaitStrategy::BusyPoll);
        let args = [path.arg(), common::wait_arg(wait)];
        let receivers = (0..subscribers)
            .map(|_| JobPeer::spawn(SUBSCRIBER, &args, Cpu::Peer))
            .collect();
        Self::new(Sender::PubSub(publisher), receivers, path)
    }
}

impl OneWay for FanOut {
    fn run(&mut self, iters: u64) -> Duration {
        for receiver in &mut self.receivers {
            receiver.start(iters);
        }
        let mut msg = [0u8; STREAM_MESSAGE];
        let start = Instant::now();
        for _ in 0..iters {
            common::stamp(&mut msg, self.sent);
            match &self.sender {
                Sender::Pipeline(producer) => producer.send(&msg).expect("send"),
                Sender::PubSub(publisher) => publisher.publish(TOPIC, &msg).expect("publish"),
            }
            self.sent += 1;
        }
        for (receiver, lost) in self.receivers.iter_mut().zip(&mut self.lost) {
            *lost += receiver.finish();
        }
        let elapsed = start.elapsed();
        self.elapsed += elapsed;
        elapsed
    }

    /// In drop-oldest mode: what the subscribers actually received, and skipped.
    fn note(&self) -> Option<String> {
        self.lost.iter().any(|&n| n > 0).then(|| {
            let secs = self.elapsed.as_secs_f64();
            let each: Vec<String> = self
                .lost
                .iter()
                .map(|&lost| {
                    let share = 100.0 * lost as f64 / self.sent as f64;
                    let received = (self.sent - lost) as f64 / secs / 1e6;
                    format!("received {received:.2} M msg/s, skipped {lost} ({share:.1}%)")
                })
                .collect();
            format!(
                "{} messages published in all runs at {:.2} M msg/s; the subscribers {}",
                self.sent,
                self.sent as f64 / secs / 1e6,
                each.join("; ")
            )
        })
    }
}

/// Peer of [`FanOut::pubsub`]; args: channel path, wait strategy, job path. A job of `n` takes
/// the next `n` positions (messages or lag), and returns how many were lagged over.
fn subscriber_peer(args: &[String]) {
    let mut subscriber = open(&args[0]).subscriber(&[TOPIC]).expect("subscriber");
    subscriber.set_wait_strategy(common::parse_wait(&args[1]));
    let mut next = 0u64; // The position, which is the stamp: nothing was published before.
    common::serve_jobs(args, |n| {
        let (end, mut lost) = (next + n, 0);
        while next < end {
            match subscriber.recv() {
                Ok(msg) => {
                    common::check_stamp(msg.payload(), next);
                    next += 1;
                }
                Err(RecvError::Lagged(skipped)) => {
                    next += skipped;
                    lost += skipped;
                }
                Err(e) => panic!("subscriber: {e}"),
            }
        }
        lost
    });
}

/// Peer of [`FanOut::pipeline`]; args: pipeline path, wait strategy, job path.
fn consumer_peer(args: &[String]) {
    let queue = Pipeline::open(&args[0]).unwrap_or_else(|e| panic!("open {}: {e}", args[0]));
    let mut consumer = queue.consumer().expect("consumer");
    consumer.set_wait_strategy(common::parse_wait(&args[1]));
    let mut next = 0u64;
    common::serve_jobs(args, |n| {
        for _ in 0..n {
            common::check_stamp(&consumer.recv().expect("receive"), next);
            next += 1;
        }
        0
    });
}

fn one_way_cases() -> Vec<OneWayCase> {
    let pubsub = |name, overflow, subscribers, wait| -> OneWayCase {
        (
            name,
            Box::new(move || Box::new(FanOut::pubsub(overflow, subscribers, wait))),
        )
    };
    vec![
        (
            SPSC_RING,
            Box::new(|| Box::new(common::SpscRingThroughput::spawn(CAPACITY as u64))),
        ),
        (PIPELINE, Box::new(|| Box::new(FanOut::pipeline()))),
        pubsub(ONE_SUBSCRIBER, Overflow::Block, 1, WaitStrategy::BusyPoll),
        pubsub(TWO_SUBSCRIBERS, Overflow::Block, 2, SHARED_CPU_WAIT),
        pubsub(TWO_SPINNING, Overflow::Block, 2, WaitStrategy::BusyPoll),
        pubsub(TWO_DROP_OLDEST, Overflow::DropOldest, 2, SHARED_CPU_WAIT),
    ]
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn report() {
    let rows = common::round_trip_report(round_trip_cases(), PERCENTILE_ROUND_TRIPS);
    let rates = common::throughput_report(
        one_way_cases(),
        THROUGHPUT_ROUNDS,
        RUN_TIME,
        "msg",
        PIPELINE,
    );
    let note = "Rates are per receiver (every subscriber gets every message), except for \
                drop-oldest: messages published; what its subscribers received is in the note.";
    println!("\n{note}");
    common::record_note(note);
    common::print_targets_and_figures(
        "round trips: bracketed 64-byte medians, p99.9 over raw atomic's in the same table; \
         throughput: per-subscriber rate over the baseline's, median of per-round ratios",
        &[
            Target {
                figure: "round trip, busy-poll / raw atomic",
                measured: common::bracketed_ratio(&rows, BUSY_POLL),
                target: 1.6,
                ceiling: true,
            },
            Target {
                figure: "busy-poll round trip p99.9 / raw atomic p99.9",
                measured: common::p999_ratio(&rows, BUSY_POLL),
                target: 2.0,
                ceiling: true,
            },
            Target {
                figure: "each of 2 subscribers (Block) / SPSC ring",
                measured: rates.ratio(TWO_SUBSCRIBERS, SPSC_RING),
                target: 0.4,
                ceiling: false,
            },
            Target {
                figure: "each of 2 subscribers (Block) / pipeline 1→1",
                measured: rates.ratio(TWO_SUBSCRIBERS, PIPELINE),
                target: 0.5,
                ceiling: false,
            },
        ],
        &[
            Reported {
                figure: "round trip, default wait / raw atomic",
                measured: common::bracketed_ratio(&rows, DEFAULT),
                aim: None,
            },
            Reported {
                figure: "1 subscriber (Block) / pipeline 1→1",
                measured: rates.ratio(ONE_SUBSCRIBER, PIPELINE),
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
            "publisher (parent) on the parent CPU; every receiver on the peer CPU, \
             so the two subscribers of the 1→2 cases share it",
        );
    }
    let mut c = common::criterion();
    common::bench_round_trips(&mut c, "round_trip", round_trip_cases(), &[64]);
    common::bench_one_way(&mut c, "fan_out_64B", one_way_cases());
    c.final_summary();
    if benchmarking {
        report();
    }
}
