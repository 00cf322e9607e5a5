//! shmq beside iceoryx2 and ZeroMQ on the shmq bench harness (`benches/common/` of the shmq
//! repository, compiled into this binary as it is): the same peer processes pinned to the
//! harness's two CPUs (the parent on one, every peer on the other), the same percentile and
//! throughput code, the same raw atomic ping-pong bracketing every round-trip case.
//!
//! * Round trips of 64 B and of 1 KiB, `--round-trips` (100 000) each, every case between two
//!   short raw atomic medians of the same size: shmq pipeline busy-poll and default wait,
//!   iceoryx2 publish-subscribe (IPC, zero-copy, busy-poll), ZeroMQ `PAIR` over `ipc://`, and a
//!   Unix socket beside the raw atomic ping-pong.
//! * One-way throughput of 64-byte messages, peer to parent, in interleaved rounds: shmq
//!   send/recv, iceoryx2, ZeroMQ `PUSH`/`PULL`, a Unix stream socket, beside the harness's plain
//!   SPSC ring in shared memory.
//!
//! Each library's cases and their settings are in its module. Run (on a quiet machine):
//! `cargo run --release --manifest-path compare/Cargo.toml`, or with `--smoke` for tiny counts
//! (the harness's smoke mode: checks that every case runs, its figures mean nothing). The raw
//! results go to `<target>/shmq-bench/shmq-compare-<time>.json` as the benches' do.

#[path = "../../benches/common/mod.rs"]
// The harness keeps to the library's MSRV (1.80), older than `is_multiple_of`.
#[allow(clippy::manual_is_multiple_of)]
mod common;
mod iceoryx2_cases;
mod peer;
mod shmq_cases;
mod zmq_cases;

use std::env;
use std::process;
use std::time::Duration;

use common::{OneWayCase, Role, RoundTripCase};

/// Round-trip message sizes.
const SIZES: [usize; 2] = [64, 1024];
/// Round trips per case and size, unless `--round-trips N`.
const ROUND_TRIPS: usize = 100_000;
/// Interleaved rounds of each throughput case, and the length of each run.
const THROUGHPUT_ROUNDS: usize = 9;
const RUN_TIME: Duration = Duration::from_millis(100);
/// Slots of the SPSC ring baseline (shmq's and iceoryx2's one-way buffers hold as many).
const RING_SLOTS: u64 = 1024;

const SPSC_RING: &str = "spsc ring";

const ROLES: &[(&str, Role)] = &[
    (shmq_cases::SHMQ_ECHO, shmq_cases::shmq_echo_peer),
    (shmq_cases::SHMQ_PRODUCER, shmq_cases::shmq_producer_peer),
    (
        iceoryx2_cases::ICEORYX2_ECHO,
        iceoryx2_cases::iceoryx2_echo_peer,
    ),
    (
        iceoryx2_cases::ICEORYX2_PRODUCER,
        iceoryx2_cases::iceoryx2_producer_peer,
    ),
    (zmq_cases::ZMQ_ECHO, zmq_cases::zmq_echo_peer),
    (zmq_cases::ZMQ_PRODUCER, zmq_cases::zmq_producer_peer),
];

fn round_trip_cases() -> Vec<RoundTripCase> {
    vec![
        common::raw_atomic_case(),
        (
            "shmq busy-poll",
            Box::new(|| Box::new(shmq_cases::ShmqPingPong::spawn(true))),
        ),
        (
            "shmq default wait",
            Box::new(|| Box::new(shmq_cases::ShmqPingPong::spawn(false))),
        ),
        (
            "iceoryx2 busy-poll",
            Box::new(|| Box::new(iceoryx2_cases::Iceoryx2PingPong::spawn())),
        ),
        (
            "zeromq ipc",
            Box::new(|| Box::new(zmq_cases::ZmqPingPong::spawn())),
        ),
        (
            "unix socket",
            Box::new(|| Box::new(common::StreamPingPong::unix_socket())),
        ),
    ]
}

fn one_way_cases() -> Vec<OneWayCase> {
    vec![
        (
            SPSC_RING,
            Box::new(|| Box::new(common::SpscRingThroughput::spawn(RING_SLOTS))),
        ),
        (
            "shmq send/recv, busy-poll",
            Box::new(|| Box::new(shmq_cases::throughput())),
        ),
        (
            "iceoryx2, busy-poll",
            Box::new(|| Box::new(iceoryx2_cases::throughput())),
        ),
        (
            "zeromq ipc push/pull",
            Box::new(|| Box::new(zmq_cases::throughput())),
        ),
        (
            "unix socket",
            Box::new(|| Box::new(common::UnixStreamThroughput::spawn())),
        ),
    ]
}

struct Args {
    smoke: bool,
    round_trips: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        smoke: false,
        round_trips: ROUND_TRIPS,
    };
    let mut it = env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smoke" => args.smoke = true,
            "--round-trips" => {
                args.round_trips = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| usage("--round-trips takes a positive count"));
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument `{other}`")),
        }
    }
    args
}

fn usage(error: &str) -> ! {
    if !error.is_empty() {
        eprintln!("shmq-compare: {error}");
    }
    eprintln!(
        "usage: shmq-compare [--smoke] [--round-trips N]\n  \
         --smoke           tiny counts: checks that every case runs; its figures mean nothing\n  \
         --round-trips N   round trips per case and size (default {ROUND_TRIPS})"
    );
    process::exit(if error.is_empty() { 0 } else { 2 });
}

fn main() {
    iceoryx2_cases::quiet_logs();
    if env::var_os("SHMQ_BENCH_ROLE").is_none() {
        let args = parse_args();
        // Before any thread or peer starts; the peers inherit both.
        if args.smoke {
            env::set_var(common::SMOKE_ENV, "1");
        }
        if env::var_os(common::OUT_ENV).is_none() {
            // `<target>/release/shmq-compare` → `<target>/shmq-bench`, beside the benches'.
            let exe = env::current_exe().expect("current_exe");
            if let Some(target) = exe.parent().and_then(|dir| dir.parent()) {
                env::set_var(common::OUT_ENV, target.join("shmq-bench"));
            }
        }
        common::run_peer_if_requested(ROLES);
        run(&args);
    } else {
        common::run_peer_if_requested(ROLES); // Runs the role and exits.
    }
}

fn run(args: &Args) {
    common::print_machine(
        "parent on the parent CPU, every peer on the peer CPU (ZeroMQ's I/O thread on its \
         process's CPU)",
    );
    for size in SIZES {
        common::round_trip_report_sized(round_trip_cases(), size, args.round_trips, |_, m| m());
    }
    common::throughput_report(
        one_way_cases(),
        THROUGHPUT_ROUNDS,
        RUN_TIME,
        "msg",
        SPSC_RING,
    );
}
