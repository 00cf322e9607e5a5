//! shmq's cases: a pipeline ping-pong, both sides busy-polling or both waiting the default way
//! (spin 20 µs, then park), as in the pipeline bench; and one-way throughput of 64-byte messages,
//! both sides busy-polling.
//!
//! The ping-pong is the pipeline bench's `ShmqPingPong` (benches/pipeline.rs) without its
//! recovery-sweep variant, repeated here because a bench's own cases are not in the harness.

use shmq::{Consumer, PipelineOptions, Pipeline, Producer, WaitStrategy};

use crate::common::{self, check_stamp, Cpu, QueuePath, RoundTrip, STREAM_MESSAGE};
use crate::peer::{produce_on_command, CommandedThroughput, Inbox};

/// Slots of every queue (the default capacity).
const CAPACITY: usize = 1024;
/// Largest message of the ping and pong queues: the larger round-trip size.
const PING_MAX_MESSAGE: usize = 1024;

pub const SHMQ_ECHO: &str = "shmq-echo";
pub const SHMQ_PRODUCER: &str = "shmq-producer";

fn create(path: &QueuePath, options: &PipelineOptions) -> Pipeline {
    Pipeline::create(path.path(), options).unwrap_or_else(|e| panic!("create {}: {e}", path.arg()))
}

fn open(path: &str) -> Pipeline {
    Pipeline::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"))
}

fn strategy_arg(busy_poll: bool) -> String {
    if busy_poll { "busy-poll" } else { "default" }.to_owned()
}

fn parse_strategy(arg: &str) -> WaitStrategy {
    match arg {
        "busy-poll" => WaitStrategy::BusyPoll,
        "default" => WaitStrategy::default(),
        _ => panic!("unknown wait `{arg}`"),
    }
}

/// shmq ping-pong with a peer process: `send` on "ping", the peer `recv`s and `send`s the
/// message (straight from its slot) on "pong"; we `recv` and copy it out. An empty message tells
/// the peer to park until the next one ([`RoundTrip::idle`]).
pub struct ShmqPingPong {
    ping: Producer,
    pong: Consumer,
    _paths: [QueuePath; 2],
    _peer: common::WatchedPeer,
}

impl ShmqPingPong {
    /// Both sides busy-poll (`busy_poll`) or wait the default way.
    pub fn spawn(busy_poll: bool) -> Self {
        let options = PipelineOptions::new()
            .capacity(CAPACITY)
            .max_message(PING_MAX_MESSAGE);
        let paths = [QueuePath::new("ping"), QueuePath::new("pong")];
        let mut ping = create(&paths[0], &options)
            .producer()
            .expect("ping producer");
        let mut pong = create(&paths[1], &options)
            .consumer()
            .expect("pong consumer");
        let strategy = parse_strategy(&strategy_arg(busy_poll));
        ping.set_wait_strategy(strategy);
        pong.set_wait_strategy(strategy);
        let args = [paths[0].arg(), paths[1].arg(), strategy_arg(busy_poll)];
        let peer = common::WatchedPeer::spawn(SHMQ_ECHO, &args, Cpu::Peer);
        let mut this = Self {
            ping,
            pong,
            _paths: paths,
            _peer: peer,
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

/// Peer of [`ShmqPingPong`]; args: ping path, pong path, wait.
pub fn shmq_echo_peer(args: &[String]) {
    let strategy = parse_strategy(&args[2]);
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

/// The consumer of shmq's one-way case, busy-polling.
struct ShmqInbox {
    data: Consumer,
    _path: QueuePath,
}

impl Inbox for ShmqInbox {
    fn recv_stamped(&mut self, seq: u64) {
        let msg = self.data.recv().expect("receive");
        check_stamp(&msg, seq);
    }
}

/// One-way throughput over a pipeline, send/recv, both sides busy-polling.
pub fn throughput() -> CommandedThroughput<impl Inbox> {
    let path = QueuePath::new("data");
    let options = PipelineOptions::new()
        .capacity(CAPACITY)
        .max_message(STREAM_MESSAGE);
    let mut data = create(&path, &options).consumer().expect("consumer");
    data.set_wait_strategy(WaitStrategy::BusyPoll);
    let args = [path.arg()];
    let mut this =
        CommandedThroughput::spawn(ShmqInbox { data, _path: path }, SHMQ_PRODUCER, &args);
    this.inbox_mut()._path.remove();
    this
}

/// Peer of [`throughput`]; args: data path.
pub fn shmq_producer_peer(args: &[String]) {
    let mut data = open(&args[0]).producer().expect("producer");
    data.set_wait_strategy(WaitStrategy::BusyPoll);
    produce_on_command(|msg| data.send(msg).expect("send"));
}
