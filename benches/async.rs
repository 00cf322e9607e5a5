//! The async round trip beside the blocking ones, in the same run: the parent sends a 64-byte
//! message on pipeline "ping" and waits for its echo on pipeline "pong"; the peer process
//! receives and echoes.
//!
//! * `blocking busy-poll`: both sides `WaitStrategy::BusyPoll`;
//! * `blocking parked`: both sides `WaitStrategy::Park` (a futex sleep on every wait);
//! * `async parked`: the peer parks as above; the parent awaits `Consumer::recv_async` on a
//!   tokio current-thread runtime, woken through shmq's reactor thread.
//!
//! The target: async parked ≤ 1.5 × blocking parked. `nice cargo bench --bench async`
//! measures; `cargo test --bench async` runs each case once, as a smoke test.

mod common;

use std::time::{Duration, Instant};

use common::{parse_wait, wait_arg, Peer, QueuePath, Role};
use shmq::{Consumer, Pipeline, PipelineOptions, Producer, WaitStrategy};

const ECHO: &str = "async-bench-echo";
const PEER_ROLES: &[(&str, Role)] = &[(ECHO, echo_peer)];
const MESSAGE: usize = 64;

fn options() -> PipelineOptions {
    PipelineOptions::new().capacity(1024).max_message(1024)
}

/// Peer: echoes every message of "ping" onto "pong", waiting as its third argument says.
fn echo_peer(args: &[String]) {
    let (ping, pong) = (
        Pipeline::open(&args[0]).unwrap(),
        Pipeline::open(&args[1]).unwrap(),
    );
    let wait = parse_wait(&args[2]);
    let mut consumer = ping.consumer().unwrap();
    let mut producer = pong.producer().unwrap();
    consumer.set_wait_strategy(wait);
    producer.set_wait_strategy(wait);
    loop {
        let msg = consumer.recv().unwrap();
        producer.send(&msg).unwrap();
    }
}

/// One case: its queues, the parent's ends and the echo peer.
struct Case {
    producer: Producer,
    consumer: Consumer,
    _peer: Peer,
    _paths: (QueuePath, QueuePath),
}

impl Case {
    fn spawn(wait: WaitStrategy) -> Self {
        let (ping_path, pong_path) = (QueuePath::new("ping"), QueuePath::new("pong"));
        let ping = Pipeline::create(ping_path.path(), &options()).unwrap();
        let pong = Pipeline::create(pong_path.path(), &options()).unwrap();
        let peer = common::spawn_peer(ECHO, &[ping_path.arg(), pong_path.arg(), wait_arg(wait)]);
        let mut producer = ping.producer().unwrap();
        let mut consumer = pong.consumer().unwrap();
        producer.set_wait_strategy(wait);
        consumer.set_wait_strategy(wait);
        Case {
            producer,
            consumer,
            _peer: peer,
            _paths: (ping_path, pong_path),
        }
    }

    fn blocking(&self, iters: u64) -> Duration {
        let msg = [7u8; MESSAGE];
        let start = Instant::now();
        for _ in 0..iters {
            self.producer.send(&msg).unwrap();
            let echo = self.consumer.recv().unwrap();
            assert_eq!(echo.len(), MESSAGE);
        }
        start.elapsed()
    }

    fn asynchronous(&self, runtime: &tokio::runtime::Runtime, iters: u64) -> Duration {
        let msg = [7u8; MESSAGE];
        runtime.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                self.producer.send(&msg).unwrap();
                let echo = self.consumer.recv_async().await.unwrap();
                assert_eq!(echo.len(), MESSAGE);
            }
            start.elapsed()
        })
    }
}

fn main() {
    common::run_peer_if_requested(PEER_ROLES);
    if common::benchmark_mode() {
        common::print_machine("parent on the parent CPU, the peer on the peer CPU");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut c = common::criterion();
    let mut group = c.benchmark_group("round_trip_64B");
    let busy = Case::spawn(WaitStrategy::BusyPoll);
    group.bench_function("blocking busy-poll", |b| {
        b.iter_custom(|n| busy.blocking(n))
    });
    drop(busy);
    let parked = Case::spawn(WaitStrategy::Park);
    group.bench_function("blocking parked", |b| b.iter_custom(|n| parked.blocking(n)));
    group.bench_function("async parked", |b| {
        b.iter_custom(|n| parked.asynchronous(&runtime, n))
    });
    group.finish();
    c.final_summary();
}
