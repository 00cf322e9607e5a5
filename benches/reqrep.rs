//! The request-reply benchmark: round trips between a client (the parent) and a server
//! process, and the throughput of one server serving two clients with many requests in flight,
//! beside the baselines of `common` in the same run.
//!
//! * Round trips of 64 bytes: `Client::request`, the server copies the request out and replies
//!   with it; both sides busy-polling, and with the default blocking wait (spin 20 µs, then
//!   park). Beside them: raw atomic ping-pong and a Unix socket ping-pong.
//! * Throughput: each client keeps [`WINDOW`] requests in flight (`send`, then `wait` for the
//!   oldest), and checks every reply echoes its request. One client (the parent), and two (the
//!   parent and a client process): total requests per second.
//!
//! Criterion measures all of those; then (only under `cargo bench`) a report: percentiles of
//! 100k round trips per case, each bracketed by raw atomic ping-pongs, interleaved throughput
//! rounds, and the targets table.
//!
//! # Placement
//! The machine has two CPUs. The server is pinned to the peer CPU and the parent to the other,
//! as in the pipeline bench. The second client shares the parent's CPU: the two clients are
//! the "many" side and get one CPU between them, while the server they both wait on keeps its
//! own. Clients sharing a CPU can busy-poll: while one is descheduled the other keeps the
//! server fed, as it has requests in flight.
//!
//! `nice cargo bench --bench reqrep`

mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use common::{Cpu, JobPeer, OneWay, OneWayCase, QueuePath, Role, RoundTrip, RoundTripCase};
use common::{Reported, Target, WatchedPeer, STREAM_MESSAGE};
use shmq::{Client, Pending, Service, ServiceOptions, WaitStrategy};

/// Requests each client keeps in flight in the throughput cases (its reply ring's size).
const WINDOW: usize = 32;
/// Round trips per case in the percentile report.
const PERCENTILE_ROUND_TRIPS: usize = 100_000;
/// Interleaved rounds of each throughput case in the report, and the length of each run.
const THROUGHPUT_ROUNDS: usize = 7;
const RUN_TIME: Duration = Duration::from_millis(100);

const BUSY_POLL: &str = "reqrep busy-poll";
const DEFAULT: &str = "reqrep default";
const ONE_CLIENT: &str = "1 client × 1 server";
const UNIX_SOCKET: &str = "unix socket";

const SERVER: &str = "reqrep-server";
const CLIENT: &str = "reqrep-client";
const PEER_ROLES: &[(&str, Role)] = &[(SERVER, server_peer), (CLIENT, client_peer)];

fn open(path: &str) -> Service {
    Service::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"))
}

/// A service with a client of ours waiting with `wait`, and a server process waiting with
/// `wait` on the peer CPU.
struct Session {
    client: Client,
    path: QueuePath,
    _server: WatchedPeer,
}

impl Session {
    fn spawn(wait: WaitStrategy, max_clients: usize) -> Self {
        let path = QueuePath::new("service");
        let options = ServiceOptions::new()
            .max_clients(max_clients)
            .max_servers(1)
            .reply_capacity(WINDOW)
            .max_message(STREAM_MESSAGE);
        let service = Service::create(path.path(), &options)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.arg()));
        let mut client = service.client().expect("client");
        client.set_wait_strategy(wait);
        let args = [path.arg(), common::wait_arg(wait)];
        let server = WatchedPeer::spawn(SERVER, &args, Cpu::Peer);
        let mut this = Self {
            client,
            path,
            _server: server,
        };
        this.wake();
        this
    }

    /// One request, untimed: the server is up (parked at worst) and now waits its own way.
    fn wake(&mut self) {
        let reply = self.client.request(b"wake").expect("request");
        assert_eq!(
            reply.payload(),
            b"wake",
            "the server echoed different bytes"
        );
    }

    /// An empty request: the server parks until the next one.
    fn idle(&mut self) {
        drop(self.client.request(&[]).expect("idle request"));
    }
}

/// Peer of [`Session`]; args: service path, wait strategy. Echoes every request; after an empty
/// one it parks until the next.
fn server_peer(args: &[String]) {
    let wait = common::parse_wait(&args[1]);
    let mut server = open(&args[0]).server().expect("server");
    let mut buf = [0u8; STREAM_MESSAGE];
    let mut idle = false;
    loop {
        server.set_wait_strategy(if idle { WaitStrategy::Park } else { wait });
        let request = server.recv().expect("server receive");
        let len = request.payload().len();
        buf[..len].copy_from_slice(request.payload());
        request.reply(&buf[..len]).expect("server reply");
        idle = len == 0;
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

/// `Client::request` to the server, the reply copied out.
struct ReqRepPingPong(Session);

impl RoundTrip for ReqRepPingPong {
    fn round_trip(&mut self, msg: &[u8], reply: &mut [u8]) {
        let echo = self.0.client.request(msg).expect("request");
        reply.copy_from_slice(echo.payload());
    }

    fn idle(&mut self) {
        self.0.idle();
    }
}

fn round_trip_cases() -> Vec<RoundTripCase> {
    let reqrep = |name, wait| -> RoundTripCase {
        (
            name,
            Box::new(move || {
                let mut session = Session::spawn(wait, 1);
                session.path.remove(); // Both sides have it open.
                Box::new(ReqRepPingPong(session))
            }),
        )
    };
    vec![
        common::raw_atomic_case(),
        reqrep(BUSY_POLL, WaitStrategy::BusyPoll),
        reqrep(DEFAULT, WaitStrategy::default()),
        (
            UNIX_SOCKET,
            Box::new(|| Box::new(common::StreamPingPong::unix_socket())),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------------

/// Send `n` requests stamped from `*next` on with up to [`WINDOW`] in flight, waiting for the
/// oldest when the window is full, and check that every reply echoes its request.
fn windowed_requests(client: &Client, n: u64, next: &mut u64) {
    let mut in_flight: VecDeque<(Pending, u64)> = VecDeque::with_capacity(WINDOW);
    let mut msg = [0u8; STREAM_MESSAGE];
    let collect = |client: &Client, (pending, seq): (Pending, u64)| {
        let reply = client.wait(pending).expect("wait for reply");
        common::check_stamp(reply.payload(), seq);
    };
    for _ in 0..n {
        if in_flight.len() == WINDOW {
            collect(client, in_flight.pop_front().expect("full window"));
        }
        common::stamp(&mut msg, *next);
        in_flight.push_back((client.send(&msg).expect("send"), *next));
        *next += 1;
    }
    for oldest in in_flight {
        collect(client, oldest);
    }
}

/// Total request throughput of `1 + others.len()` clients, each with [`WINDOW`] in flight:
/// the parent's client and client processes on the parent CPU ([`JobPeer`]s). A run of `iters`
/// requests shares them out, starts the client processes, runs the parent's share, and waits
/// for theirs.
struct Windowed {
    session: Session,
    others: Vec<JobPeer>,
    next: u64,
}

impl Windowed {
    fn spawn(clients: usize, wait: WaitStrategy) -> Self {
        let mut session = Session::spawn(wait, clients);
        let args = [session.path.arg(), common::wait_arg(wait)];
        let others = (1..clients)
            .map(|_| JobPeer::spawn(CLIENT, &args, Cpu::Parent))
            .collect();
        session.path.remove(); // Everyone has it open.
        session.idle();
        Self {
            session,
            others,
            next: 0,
        }
    }
}

impl OneWay for Windowed {
    /// Excludes waking the server (one request before the clock starts).
    fn run(&mut self, iters: u64) -> Duration {
        let share = iters / (1 + self.others.len() as u64);
        self.session.wake();
        for other in &mut self.others {
            other.start(share);
        }
        let start = Instant::now();
        let own = iters - share * self.others.len() as u64;
        windowed_requests(&self.session.client, own, &mut self.next);
        for other in &mut self.others {
            other.finish();
        }
        let elapsed = start.elapsed();
        self.session.idle();
        elapsed
    }
}

/// Peer of [`Windowed`]; args: service path, wait strategy, job path. A job of `n` is `n`
/// windowed requests.
fn client_peer(args: &[String]) {
    let mut client = open(&args[0]).client().expect("client");
    client.set_wait_strategy(common::parse_wait(&args[1]));
    let mut next = 0;
    common::serve_jobs(args, |n| {
        windowed_requests(&client, n, &mut next);
        0
    });
}

fn one_way_cases() -> Vec<OneWayCase> {
    let windowed = |name, clients, wait| -> OneWayCase {
        (
            name,
            Box::new(move || Box::new(Windowed::spawn(clients, wait))),
        )
    };
    vec![
        windowed(ONE_CLIENT, 1, WaitStrategy::BusyPoll),
        windowed("2 clients × 1 server", 2, WaitStrategy::BusyPoll),
        windowed("2 clients × 1 server, default", 2, WaitStrategy::default()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn report() {
    let rows = common::round_trip_report(round_trip_cases(), PERCENTILE_ROUND_TRIPS);
    common::throughput_report(
        one_way_cases(),
        THROUGHPUT_ROUNDS,
        RUN_TIME,
        "req",
        ONE_CLIENT,
    );
    let round_trip = |figure, name| Target {
        figure,
        measured: common::bracketed_ratio(&rows, name),
        target: 2.0,
        ceiling: true,
    };
    common::print_targets_and_figures(
        "bracketed 64-byte round-trip medians, p99.9 over raw atomic's in the same table",
        &[
            round_trip("round trip, busy-poll / raw atomic", BUSY_POLL),
            round_trip("round trip, default wait / raw atomic", DEFAULT),
            Target {
                figure: "busy-poll round trip p99.9 / raw atomic p99.9",
                measured: common::p999_ratio(&rows, BUSY_POLL),
                target: 2.0,
                ceiling: true,
            },
        ],
        &[Reported {
            figure: "round trip, busy-poll / Unix socket ping-pong",
            measured: common::bracketed_ratio(&rows, BUSY_POLL)
                .zip(common::bracketed_ratio(&rows, UNIX_SOCKET))
                .map(|(ours, socket)| ours / socket),
            aim: None,
        }],
    );
}

fn main() {
    common::run_peer_if_requested(PEER_ROLES);
    let benchmarking = common::benchmark_mode();
    if benchmarking {
        common::print_machine(
            "client (parent) on the parent CPU, server on the peer CPU; \
             the second client of the 2-client cases shares the parent CPU",
        );
    }
    let mut c = common::criterion();
    common::bench_round_trips(&mut c, "round_trip", round_trip_cases(), &[64]);
    common::bench_one_way(&mut c, "requests_64B", one_way_cases());
    c.final_summary();
    if benchmarking {
        report();
    }
}
