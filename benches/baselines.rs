//! The baselines shmq is measured against: round trips between two processes pinned to different
//! cores (raw atomic, raw shared futex, Unix socket, pipe; and two threads over `std::sync::mpsc`),
//! one-way throughput (a plain SPSC ring in shared memory, a Unix socket), then a percentile table
//! of the 64-byte round trips, each also bracketed by raw atomic round trips.
//!
//! `cargo bench --bench baselines` (the tables print only when run with `--bench`).

mod common;

use std::time::Duration;

use common::{OneWay, RoundTrip};
use criterion::{BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 2] = [64, 1024];
const PERCENTILE_ROUND_TRIPS: usize = 100_000;
const RING_SLOTS: u64 = 1024;

type Spawn<T> = fn() -> T;

fn round_trip_cases() -> [(&'static str, Spawn<Box<dyn RoundTrip>>); 5] {
    [
        ("raw atomic", || Box::new(common::ShmPingPong::raw_atomic())),
        ("raw futex", || Box::new(common::ShmPingPong::raw_futex())),
        ("unix socket", || {
            Box::new(common::StreamPingPong::unix_socket())
        }),
        ("pipe", || Box::new(common::StreamPingPong::pipe())),
        ("mpsc threads", || Box::new(common::ThreadPingPong::spawn())),
    ]
}

fn one_way_cases() -> [(&'static str, Spawn<Box<dyn OneWay>>); 2] {
    [
        ("spsc ring", || {
            Box::new(common::SpscRingThroughput::spawn(RING_SLOTS))
        }),
        ("unix socket", || {
            Box::new(common::UnixStreamThroughput::spawn())
        }),
    ]
}

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

fn percentile_tables() {
    let mut raw = common::ShmPingPong::raw_atomic();
    let mut rows = Vec::new();
    for (name, spawn) in round_trip_cases() {
        let mut case = spawn();
        let bracketed = common::bracket_with_raw(&mut raw, 64, || {
            case.percentiles(64, PERCENTILE_ROUND_TRIPS)
        });
        rows.push((name.to_owned(), bracketed));
    }
    let plain: Vec<_> = rows
        .iter()
        .map(|(name, b)| (name.clone(), b.case))
        .collect();
    println!("\n64-byte round trips, {PERCENTILE_ROUND_TRIPS} each:\n");
    common::print_table(&plain, "raw atomic");
    println!("\nThe same, each beside raw atomic medians taken just before and after it:\n");
    common::print_bracketed(&rows);
    let overhead = common::fmt_duration(common::timer_overhead());
    println!("\nEach sample includes the clock read: {overhead} (median, empty closure).");
}

fn main() {
    common::run_peer_if_requested(&[]);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    round_trips(&mut c);
    one_way(&mut c);
    c.final_summary();
    if common::benchmark_mode() {
        percentile_tables();
    }
}
