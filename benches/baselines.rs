//! The baselines shmq is measured against: round trips between two processes pinned to different
//! cores (raw atomic, raw shared futex, Unix socket, pipe; and two threads over `std::sync::mpsc`),
//! one-way throughput (a plain SPSC ring in shared memory, a Unix socket), then a percentile table
//! of the 64-byte round trips, each also bracketed by raw atomic round trips, and interleaved
//! throughput rounds.
//!
//! `cargo bench --bench baselines` (the tables print only when run with `--bench`; raw results
//! go to `target/shmq-bench/`).

mod common;

use std::time::Duration;

use common::{OneWayCase, RoundTripCase};

const SIZES: [usize; 2] = [64, 1024];
const PERCENTILE_ROUND_TRIPS: usize = 100_000;
const RING_SLOTS: u64 = 1024;
/// Interleaved rounds of each throughput case in the report, and the length of each run.
const THROUGHPUT_ROUNDS: usize = 7;
const RUN_TIME: Duration = Duration::from_millis(100);

fn round_trip_cases() -> Vec<RoundTripCase> {
    vec![
        common::raw_atomic_case(),
        (
            "raw futex",
            Box::new(|| Box::new(common::ShmPingPong::raw_futex())),
        ),
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

fn one_way_cases() -> Vec<OneWayCase> {
    vec![
        (
            "spsc ring",
            Box::new(|| Box::new(common::SpscRingThroughput::spawn(RING_SLOTS))),
        ),
        (
            "unix socket",
            Box::new(|| Box::new(common::UnixStreamThroughput::spawn())),
        ),
    ]
}

fn main() {
    common::run_peer_if_requested(&[]);
    let benchmarking = common::benchmark_mode();
    if benchmarking {
        common::print_machine("parent on the parent CPU, every peer on the peer CPU");
    }
    let mut c = common::criterion();
    common::bench_round_trips(&mut c, "round_trip", round_trip_cases(), &SIZES);
    common::bench_one_way(&mut c, "one_way_64B", one_way_cases());
    c.final_summary();
    if benchmarking {
        common::round_trip_report(round_trip_cases(), PERCENTILE_ROUND_TRIPS);
        common::throughput_report(
            one_way_cases(),
            THROUGHPUT_ROUNDS,
            RUN_TIME,
            "msg",
            "spsc ring",
        );
    }
}
