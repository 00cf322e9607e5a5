//! Request-reply across real processes (the test binary re-executed with a role, see `common`):
//! many clients and servers with every reply reaching the client that asked, many requests in
//! flight, client entries reused without a late reply reaching the next owner, timeouts with
//! late replies, limits, cross-process wake-ups, and forged or garbage shared memory.

mod common;

use common::{
    child, child_with_env, fnv1a, s, uncapped_park, wait_ready, wait_until, ChildProc, Rng,
    TempDir, HANG,
};
use shmq::layout::{
    Envelope, Geometry, Shape, CTL_HEAD, CTL_NOT_EMPTY, ENVELOPE_SIZE, KIND_SERVICE,
    RING_CONTROL_OFFSET, RING_CONTROL_SIZE, SLOT_HEADER_SIZE,
};
use shmq::{
    Delivery, Error, Pending, RecvError, RecvTimeoutError, SendError, SendTimeoutError, Service,
    ServiceOptions, TryRecvError, TrySendError, WaitStrategy,
};
use std::io::Write;
use std::mem::offset_of;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "stress_server" => stress_server(args),
        "stress_client" => stress_client(args),
        "serve" => serve(args),
        "send_and_leave" => send_and_leave(args),
        "late_server" => late_server(args),
        "hold_client" => hold_client(args),
        "park_client" => park_client(args),
        "forged_request_server" => forged_request_server(args),
        "hold_request" => hold_request(args),
        other => panic!("unknown role {other:?}"),
    });
}

// ---------------------------------------------------------------------------------------------
// Stress messages
// ---------------------------------------------------------------------------------------------

/// Largest request or reply in the stress test.
const MAX: usize = 256;
/// A stress request: client id (u32), sequence (u32), FNV-1a of the body (u64), body.
const REQ_HDR: usize = 16;
/// A stress reply: client id (u32), sequence (u32), server id (u32), zero (u32), FNV-1a of the
/// reply body (u64), reply body (the request body reversed, every byte XOR 0xA5).
const REP_HDR: usize = 24;
/// Longest request body, so that the reply fits too.
const MAX_BODY: usize = MAX - REP_HDR;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The body of request `seq` of client `client`: 0 to `MAX_BODY` random bytes.
fn request_body(client: u32, seq: u32) -> Vec<u8> {
    let mut rng = Rng::new(u64::from(client) << 32 | u64::from(seq));
    let mut body = vec![0; rng.below(MAX_BODY as u64 + 1) as usize];
    rng.fill(&mut body);
    body
}

fn stress_request(client: u32, seq: u32) -> Vec<u8> {
    let body = request_body(client, seq);
    let mut m = Vec::with_capacity(REQ_HDR + body.len());
    m.extend_from_slice(&client.to_le_bytes());
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&fnv1a(&body).to_le_bytes());
    m.extend_from_slice(&body);
    m
}

/// What a server answers to a request body.
fn transform(body: &[u8]) -> impl Iterator<Item = u8> + '_ {
    body.iter().rev().map(|b| b ^ 0xA5)
}

/// Checks a stress request and writes the reply into `out`; returns the reply's length.
fn stress_reply(server: u32, request: &[u8], out: &mut [u8]) -> usize {
    assert!(
        request.len() >= REQ_HDR,
        "a request of {} bytes",
        request.len()
    );
    let body = &request[REQ_HDR..];
    let (client, seq) = (u32_at(request, 0), u32_at(request, 4));
    assert_eq!(
        fnv1a(body),
        u64_at(request, 8),
        "checksum of request {client}/{seq}"
    );
    let len = REP_HDR + body.len();
    for (o, b) in out[REP_HDR..len].iter_mut().zip(transform(body)) {
        *o = b;
    }
    let sum = fnv1a(&out[REP_HDR..len]);
    out[0..8].copy_from_slice(&request[0..8]);
    out[8..12].copy_from_slice(&server.to_le_bytes());
    out[12..16].copy_from_slice(&0u32.to_le_bytes());
    out[16..24].copy_from_slice(&sum.to_le_bytes());
    len
}

/// Checks the reply to request `seq` of `client`, every byte; returns the server that answered.
fn check_stress_reply(client: u32, seq: u32, reply: &[u8]) -> u32 {
    assert!(reply.len() >= REP_HDR, "a reply of {} bytes", reply.len());
    let (c, q, server) = (u32_at(reply, 0), u32_at(reply, 4), u32_at(reply, 8));
    assert_eq!(
        (c, q),
        (client, seq),
        "client {client} waiting for its request {seq} got the reply to {c}/{q}"
    );
    assert!(server < 2, "reply {client}/{seq} names server {server}");
    let body = &reply[REP_HDR..];
    assert_eq!(
        fnv1a(body),
        u64_at(reply, 16),
        "checksum of reply {client}/{seq}"
    );
    let want: Vec<u8> = transform(&request_body(client, seq)).collect();
    assert!(body == want.as_slice(), "bytes of reply {client}/{seq}");
    server
}

// ---------------------------------------------------------------------------------------------
// Child roles
// ---------------------------------------------------------------------------------------------

/// args: path, server id, ready file, stop file, output file. Serves stress requests until the
/// stop file exists and no request is waiting; writes how many it served.
fn stress_server(args: &[String]) {
    let service = Service::open(&args[0]).unwrap();
    let id: u32 = args[1].parse().unwrap();
    let stop = Path::new(&args[3]);
    let mut server = service.server().unwrap();
    if id == 0 {
        server.set_wait_strategy(WaitStrategy::Park);
    }
    common::signal_ready(&args[2]);
    let mut out = [0u8; MAX];
    let mut served = 0u64;
    loop {
        match server.recv_timeout(Duration::from_millis(20)) {
            Ok(request) => {
                assert!(!request.redelivered(), "nobody died, yet a redelivery");
                let len = stress_reply(id, request.payload(), &mut out);
                // Every client waits for all its replies before it detaches.
                assert_eq!(request.reply(&out[..len]), Ok(Delivery::Delivered));
                served += 1;
            }
            Err(RecvTimeoutError::Timeout) if stop.exists() => break,
            Err(RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("server {id}: recv_timeout: {e}"),
        }
    }
    std::fs::write(&args[4], served.to_string()).unwrap();
}

/// args: path, client id, request count, requests in flight, output file. Keeps up to
/// `window` requests in flight, waiting for the oldest (replies from two servers arrive in any
/// order), and checks that each reply answers exactly the request waited for, byte for byte;
/// writes how many replies each server gave.
fn stress_client(args: &[String]) {
    let service = Service::open(&args[0]).unwrap();
    let id: u32 = args[1].parse().unwrap();
    let count: u32 = args[2].parse().unwrap();
    let window: usize = args[3].parse().unwrap();
    let mut client = service.client().unwrap();
    if id % 2 == 1 {
        client.set_wait_strategy(WaitStrategy::Park);
    }
    let mut in_flight: Vec<(u32, Pending)> = Vec::with_capacity(window);
    let mut seen = vec![false; count as usize];
    let mut by_server = [0u64; 2];
    let mut next = 0u32;
    let mut done = 0u32;
    while done < count {
        while in_flight.len() < window && next < count {
            let pending = client.send(&stress_request(id, next)).unwrap();
            in_flight.push((next, pending));
            next += 1;
        }
        let (seq, pending) = in_flight.remove(0);
        let reply = client
            .wait_timeout(pending, HANG)
            .unwrap_or_else(|e| panic!("client {id}: reply to {seq}: {e}"));
        let server = check_stress_reply(id, seq, reply.payload());
        drop(reply);
        assert!(
            !seen[seq as usize],
            "client {id}: request {seq} answered twice"
        );
        seen[seq as usize] = true;
        by_server[server as usize] += 1;
        done += 1;
    }
    assert!(seen.iter().all(|&s| s));
    assert_eq!(client.outstanding(), 0);
    std::fs::write(&args[4], format!("{} {}", by_server[0], by_server[1])).unwrap();
}

/// Appends one line to a log file (the parent polls it), in one write.
fn log_line(path: &str, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// The complete lines of a log file so far.
fn log_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    lines.pop(); // after the last newline: empty, or a line still being written
    lines
}

/// Waits until `path` has contents (written by `child` with one `write`); returns them.
fn wait_contents(child: &mut ChildProc, path: &Path) -> String {
    let mut text = String::new();
    let ok = wait_until(HANG, || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        if text.is_empty() {
            if let Some(st) = child.try_wait() {
                panic!(
                    "child {:?} exited ({st}) before writing {}",
                    child.role(),
                    path.display()
                );
            }
        }
        !text.is_empty()
    });
    assert!(ok, "{} never written", path.display());
    text
}

/// args: path, request count, log file ("-" for none), wait strategy ("park" or "default").
/// Attaches a server, serves that many requests, replying `re:` + the request, and logs what
/// became of each reply (`Ok(Delivered)`, `Ok(ClientGone)` or `Err(..)`).
fn serve(args: &[String]) {
    let service = Service::open(&args[0]).unwrap();
    let n: u64 = args[1].parse().unwrap();
    let log = (args[2] != "-").then_some(args[2].as_str());
    let mut server = service.server().unwrap();
    if args[3] == "park" {
        server.set_wait_strategy(WaitStrategy::Park);
    }
    for i in 0..n {
        let request = server
            .recv_timeout(HANG)
            .unwrap_or_else(|e| panic!("request {i} of {n}: {e}"));
        assert!(!request.redelivered());
        let reply = [b"re:", request.payload()].concat();
        let outcome = request.reply(&reply);
        if let Some(log) = log {
            log_line(log, &format!("{outcome:?}"));
        }
    }
}

/// args: path, payload, sent file, log file, lines. Attaches a client, sends one request, says
/// so, waits until the log file (of a `serve` child) has that many lines (unless it is "-"),
/// then detaches without ever waiting for the reply.
fn send_and_leave(args: &[String]) {
    let service = Service::open(&args[0]).unwrap();
    let client = service.client().unwrap();
    let pending = client.send(args[1].as_bytes()).unwrap();
    assert_eq!(pending.id(), 0, "a fresh client's first correlation id");
    common::signal_ready(&args[2]);
    if args[3] != "-" {
        let lines: usize = args[4].parse().unwrap();
        let log = Path::new(&args[3]);
        assert!(
            wait_until(HANG, || log_lines(log).len() >= lines),
            "the server never replied"
        );
    }
    drop(client);
}

/// args: path, directory. Takes one request (from client A), says so ("took-a"), waits until
/// the parent has attached client B ("b-attached"), then replies to A's request and writes
/// what became of the reply ("a-delivery"). Then serves one more request normally.
fn late_server(args: &[String]) {
    let service = Service::open(&args[0]).unwrap();
    let dir = Path::new(&args[1]);
    let server = service.server().unwrap();
    common::signal_ready(s(&dir.join("server-ready")));
    let request = server.recv_timeout(HANG).unwrap();
    assert_eq!(request.payload(), b"from A");
    common::signal_ready(s(&dir.join("took-a")));
    wait_file(&dir.join("b-attached"));
    let outcome = request.reply(b"re:from A");
    std::fs::write(dir.join("a-delivery"), format!("{outcome:?}")).unwrap();
    let request = server.recv_timeout(HANG).unwrap();
    let reply = [b"re:", request.payload()].concat();
    assert_eq!(request.reply(&reply), Ok(Delivery::Delivered));
}

/// args: path, ready file, release file. Attaches a client, says so, and detaches (exits) once
/// the release file exists.
fn hold_client(args: &[String]) {
    let service = Service::open(&args[0]).unwrap();
    let client = service.client().unwrap();
    common::signal_ready(&args[1]);
    wait_file(Path::new(&args[2]));
    drop(client);
}

/// args: path, request, expected reply. Sends the request and parks in `wait` until the reply
/// comes; checks it.
fn park_client(args: &[String]) {
    let service = Service::open(&args[0]).unwrap();
    let mut client = service.client().unwrap();
    client.set_wait_strategy(WaitStrategy::Park);
    let pending = client.send(args[1].as_bytes()).unwrap();
    let reply = client.wait(pending).unwrap();
    assert_eq!(reply.payload(), args[2].as_bytes());
    drop(reply);
    assert_eq!(client.outstanding(), 0);
}

/// args: path, ready file. Parks in `recv` on an empty service; the parent then forges a
/// request naming no valid client: the server must get an error (not a panic, not that
/// request), and then serve the next real request.
fn forged_request_server(args: &[String]) {
    let service = Service::open(&args[0]).unwrap();
    let mut server = service.server().unwrap();
    server.set_wait_strategy(WaitStrategy::Park);
    common::signal_ready(&args[1]);
    match server.recv_timeout(HANG) {
        Err(RecvTimeoutError::Recv(RecvError::Corrupt(_))) => {}
        Ok(r) => panic!("a forged request was served: {r:?}"),
        Err(e) => panic!("expected a corruption error, got {e}"),
    }
    let request = server.recv_timeout(HANG).unwrap();
    assert_eq!(request.payload(), b"real");
    assert_eq!(request.reply(b"re:real"), Ok(Delivery::Delivered));
}

/// args: path, ready file. Takes one request, says so, and holds it unanswered until killed.
fn hold_request(args: &[String]) {
    let service = Service::open(&args[0]).unwrap();
    let server = service.server().unwrap();
    let request = server.recv_timeout(HANG).unwrap();
    assert!(!request.redelivered());
    common::signal_ready(&args[1]);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Waits (in a child) until `path` exists; panics after `HANG`.
fn wait_file(path: &Path) {
    assert!(
        wait_until(HANG, || path.exists()),
        "{} never appeared",
        path.display()
    );
}

/// The options and geometry of a small service.
struct Spec {
    clients: u32,
    servers: u32,
    requests: u64,
    replies: u64,
    max_message: usize,
}

impl Spec {
    fn options(&self) -> ServiceOptions {
        ServiceOptions::new()
            .max_clients(self.clients as usize)
            .max_servers(self.servers as usize)
            .request_capacity(self.requests as usize)
            .reply_capacity(self.replies as usize)
            .max_message(self.max_message)
    }

    fn create(&self, path: &Path) -> Service {
        let service = Service::create(path, &self.options()).unwrap();
        let g = self.geometry();
        assert_eq!(std::fs::metadata(path).unwrap().len(), g.file_size);
        service
    }

    fn geometry(&self) -> Geometry {
        Geometry::compute(Shape {
            kind: KIND_SERVICE,
            capacity: self.requests,
            max_message: self.max_message as u64,
            max_participants: self.clients + self.servers,
            flags: 0,
            max_topic: 0,
            table_entries: self.clients,
            reply_capacity: self.replies,
        })
        .unwrap()
    }
}

fn read_u64(path: &Path, offset: u64) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, offset).unwrap();
    u64::from_le_bytes(b)
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Where the control block of client entry `index`'s reply ring starts.
fn reply_ring(g: &Geometry, index: u32) -> u64 {
    g.reply_block(index)
}

/// Where slot `slot` of client entry `index`'s reply ring starts.
fn reply_slot(g: &Geometry, index: u32, slot: u64) -> u64 {
    g.reply_block(index) + RING_CONTROL_SIZE as u64 + slot * g.slot_stride
}

/// A slot state word: sequence, state (0 empty, 1 writing, 2 ready, 3 reading, 4 skipped,
/// 5 redeliver) and owner.
fn state_word(seq: u64, state: u64, owner: u64) -> u64 {
    (seq & ((1 << 48) - 1)) << 16 | state << 12 | owner
}

/// Writes a committed message (envelope bytes included) into the slot at `slot` as position
/// `pos`, payload and length first, the state word last.
fn forge_slot(path: &Path, slot: u64, pos: u64, message: &[u8]) {
    write_at(path, slot + SLOT_HEADER_SIZE as u64, message);
    write_at(path, slot + 8, &(message.len() as u32).to_le_bytes());
    write_at(path, slot, &state_word(pos, 2, 0).to_le_bytes());
}

/// The bytes of an envelope (see `shmq::layout::Envelope`).
fn envelope(client: u32, generation: u64, correlation: u64) -> Vec<u8> {
    let mut v = vec![0u8; ENVELOPE_SIZE];
    let mut put = |at: usize, bytes: &[u8]| v[at..at + bytes.len()].copy_from_slice(bytes);
    put(
        offset_of!(Envelope, correlation),
        &correlation.to_le_bytes(),
    );
    put(offset_of!(Envelope, generation), &generation.to_le_bytes());
    put(offset_of!(Envelope, client), &client.to_le_bytes());
    v
}

/// Waits until a process parks (or is about to park) on the wait cell at `cell` (a file
/// offset); panics if `child` exits first.
fn wait_parked(path: &Path, cell: u64, child: &mut ChildProc) {
    let parked = wait_until(HANG, || {
        if let Some(st) = child.try_wait() {
            panic!("child {:?} exited ({st}) instead of blocking", child.role());
        }
        common::registered_waiters(path, cell) > 0
    });
    assert!(parked, "child {:?} never parked", child.role());
}

/// Waits until every child of `group` has exited successfully, failing fast if one fails or
/// if one of `others` exits meanwhile.
fn wait_group(group: &mut [ChildProc], others: &mut [ChildProc], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        for o in others.iter_mut() {
            if let Some(st) = o.try_wait() {
                panic!("child {:?} exited early ({st})", o.role());
            }
        }
        let mut running = 0;
        for c in group.iter_mut() {
            if !c.check_not_failed() {
                running += 1;
            }
        }
        if running == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{running} children still running after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `f` on another thread and fails the test if it does not return within `HANG`.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(HANG) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what}: still running after {HANG:?} (a hang)"),
    }
}

// ---------------------------------------------------------------------------------------------
// Many clients, many servers
// ---------------------------------------------------------------------------------------------

/// 2 server processes (one parked, one spinning first) and 4 client processes, 5_000 requests
/// each (20_000 in all), 8 in flight per client, oldest waited for first (waiting in any order
/// is `replies_kept_for_a_later_wait_do_not_block_the_reply_ring`). Requests carry the client
/// id, a sequence number and a checksum; replies carry the same id and sequence, the server's
/// id, and a checksum of a transformed body. Each client checks that it gets exactly its own
/// replies, each once, byte for byte; the parent checks that the servers' counts add up and
/// that both servers served.
#[test]
fn four_clients_two_servers_every_client_gets_exactly_its_own_replies_intact() {
    const CLIENTS: u32 = 4;
    const PER_CLIENT: u32 = 5_000;
    const WINDOW: u64 = 8;
    let dir = TempDir::new("4x2");
    let path = dir.join("svc");
    let spec = Spec {
        clients: CLIENTS,
        servers: 2,
        // Fewer slots than requests in flight: clients also wait for room.
        requests: 16,
        replies: WINDOW,
        max_message: MAX,
    };
    let service = spec.create(&path);
    let stop = dir.join("stop");

    // Servers first, and both attached, so that both can take requests from the start.
    let server_outs: Vec<PathBuf> = (0..2).map(|i| dir.join(&format!("server-{i}"))).collect();
    let mut servers: Vec<ChildProc> = (0..2)
        .map(|i| {
            let ready = dir.join(&format!("server-ready-{i}"));
            let mut c = child(
                "stress_server",
                &[
                    s(&path),
                    &i.to_string(),
                    s(&ready),
                    s(&stop),
                    s(&server_outs[i]),
                ],
            );
            wait_ready(&mut c, &ready);
            c
        })
        .collect();

    let started = Instant::now();
    let client_outs: Vec<PathBuf> = (0..CLIENTS)
        .map(|i| dir.join(&format!("client-{i}")))
        .collect();
    let mut clients: Vec<ChildProc> = (0..CLIENTS as usize)
        .map(|i| {
            child(
                "stress_client",
                &[
                    s(&path),
                    &i.to_string(),
                    &PER_CLIENT.to_string(),
                    &WINDOW.to_string(),
                    s(&client_outs[i]),
                ],
            )
        })
        .collect();
    wait_group(&mut clients, &mut servers, Duration::from_secs(150));
    let took = started.elapsed();
    assert_eq!(service.queued_requests(), 0);

    common::signal_ready(s(&stop));
    wait_group(&mut servers, &mut [], HANG);

    let served: Vec<u64> = server_outs
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().parse().unwrap())
        .collect();
    let mut answered_by = [0u64; 2];
    for out in &client_outs {
        let text = std::fs::read_to_string(out).unwrap();
        let counts: Vec<u64> = text.split(' ').map(|n| n.parse().unwrap()).collect();
        assert_eq!(counts.iter().sum::<u64>(), u64::from(PER_CLIENT), "{text}");
        answered_by[0] += counts[0];
        answered_by[1] += counts[1];
    }
    eprintln!(
        "{} requests in {took:?}; served by server 0: {}, server 1: {}",
        CLIENTS * PER_CLIENT,
        served[0],
        served[1]
    );
    assert_eq!(
        served.as_slice(),
        &answered_by[..],
        "servers' counts vs replies"
    );
    assert_eq!(served.iter().sum::<u64>(), u64::from(CLIENTS * PER_CLIENT));
    assert!(
        served.iter().all(|&n| n > 0),
        "the load was not spread: {served:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Many in flight
// ---------------------------------------------------------------------------------------------

fn numbered(i: u64) -> Vec<u8> {
    let mut rng = Rng::new(i ^ 0xfeed);
    let mut v = vec![0u8; 8 + (i % 57) as usize];
    rng.fill(&mut v[8..]);
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

/// One client sends 500 requests before waiting for any (the request ring is smaller, so the
/// server process drains it meanwhile), then waits for them in reverse order: every reply is
/// matched to its own request, whatever the order it arrives in.
#[test]
fn many_in_flight_one_client_sends_500_before_waiting_then_gets_all_500() {
    const N: u64 = 500;
    let dir = TempDir::new("in-flight");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 64,
        replies: 512,
        max_message: 128,
    };
    let service = spec.create(&path);
    let client = service.client().unwrap();
    let mut server = child("serve", &[s(&path), &N.to_string(), "-", "default"]);

    let mut pending = Vec::new();
    for i in 0..N {
        pending.push(client.send(&numbered(i)).unwrap());
    }
    assert_eq!(client.outstanding(), N as usize);
    for (i, p) in pending.into_iter().enumerate().rev() {
        let reply = client
            .wait_timeout(p, HANG)
            .unwrap_or_else(|e| panic!("reply {i}: {e}"));
        assert_eq!(
            reply.payload(),
            [&b"re:"[..], &numbered(i as u64)].concat(),
            "reply {i}"
        );
    }
    assert_eq!(client.outstanding(), 0);
    server.expect_success(HANG);
    assert_eq!(service.queued_requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// Client entries reused
// ---------------------------------------------------------------------------------------------

/// With a single client entry: client A (a child process) sends a request and detaches; the
/// server (another process) holds the request until client B (this process) has attached and
/// so owns the same entry, then replies to A's request. That reply must be dropped (the server
/// sees that the entry has a new generation) and B, whose first correlation id is the same as
/// A's, gets exactly its own reply.
#[test]
fn slot_reuse_late_reply_for_a_departed_client_is_never_seen_by_the_next_owner() {
    let dir = TempDir::new("reuse-late");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 8,
        replies: 4,
        max_message: 64,
    };
    let service = spec.create(&path);
    let mut server = child("late_server", &[s(&path), s(dir.path())]);
    wait_ready(&mut server, &dir.join("server-ready"));

    let sent = dir.join("a-sent");
    let mut a = child("send_and_leave", &[s(&path), "from A", s(&sent), "-", "0"]);
    a.expect_success(HANG);
    wait_ready(&mut server, &dir.join("took-a"));

    let b = service
        .client()
        .expect("A detached: its entry is free again");
    assert!(
        matches!(service.client(), Err(Error::TooManyParticipants { .. })),
        "B holds the only entry"
    );
    common::signal_ready(s(&dir.join("b-attached")));
    assert_eq!(
        wait_contents(&mut server, &dir.join("a-delivery")),
        format!("{:?}", Ok::<_, SendError>(Delivery::ClientGone)),
        "the late reply to A was not dropped"
    );

    let reply = b.request_timeout(b"from B", HANG).unwrap();
    assert_eq!(reply.payload(), b"re:from B");
    drop(reply);
    assert_eq!(b.outstanding(), 0);
    server.expect_success(HANG);
}

/// Client A sends a request, the server replies (the reply is delivered into A's reply ring),
/// and A detaches without ever reading it. Client B attaches to the same entry: its first
/// request has the same correlation id as A's, and the stale reply is the first thing in the
/// ring, yet B gets exactly its own reply.
#[test]
fn reply_left_unread_by_a_departed_client_is_discarded_by_the_next_owner() {
    let dir = TempDir::new("reuse-unread");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 8,
        replies: 4,
        max_message: 64,
    };
    let service = spec.create(&path);
    let log = dir.join("log");
    let mut server = child("serve", &[s(&path), "2", s(&log), "park"]);
    let sent = dir.join("a-sent");
    let mut a = child(
        "send_and_leave",
        &[s(&path), "from A", s(&sent), s(&log), "1"],
    );
    a.expect_success(HANG);
    assert_eq!(log_lines(&log), ["Ok(Delivered)"]);

    let b = service.client().unwrap();
    let reply = b.request_timeout(b"from B", HANG).unwrap();
    assert_eq!(reply.payload(), b"re:from B", "B got A's reply");
    drop(reply);
    assert_eq!(b.outstanding(), 0);
    server.expect_success(HANG);
    assert_eq!(log_lines(&log), ["Ok(Delivered)", "Ok(Delivered)"]);
}

/// As above with one reply slot per client, so the reply A left unread would fill B's ring. B
/// has one request outstanding, which `reply_capacity(1)` allows, so (module docs) "servers
/// never find a reply ring full": the server must deliver B's reply although B only starts
/// waiting once the server has dealt with its request (a leftover reply that is only dropped
/// when B reads would make the server give up after its reply-room timeout, losing B's reply).
#[test]
fn reply_left_unread_by_a_departed_client_does_not_cost_the_next_owner_its_reply() {
    let dir = TempDir::new("reuse-full");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 8,
        replies: 1,
        max_message: 64,
    };
    let service = spec.create(&path);
    let log = dir.join("log");
    let mut server = child("serve", &[s(&path), "2", s(&log), "park"]);
    let sent = dir.join("a-sent");
    let mut a = child(
        "send_and_leave",
        &[s(&path), "from A", s(&sent), s(&log), "1"],
    );
    a.expect_success(HANG);
    assert_eq!(log_lines(&log), ["Ok(Delivered)"]);

    let b = service.client().unwrap();
    let pending = b.send(b"from B").unwrap();
    assert!(
        wait_until(HANG, || log_lines(&log).len() == 2),
        "the server never dealt with B's request"
    );
    server.expect_success(HANG);
    assert_eq!(
        log_lines(&log)[1],
        "Ok(Delivered)",
        "the server could not deliver B's reply"
    );
    let reply = b.wait_timeout(pending, HANG).unwrap();
    assert_eq!(reply.payload(), b"re:from B");
}

// ---------------------------------------------------------------------------------------------
// Timeouts and late replies
// ---------------------------------------------------------------------------------------------

/// With no server attached, a request times out (and stays counted as outstanding). A server
/// process then attaches, takes the queued request and replies late; the client's next request
/// gets its own reply, never the late one, and the late reply is accounted for.
#[test]
fn timeout_without_server_then_late_server_processes_and_late_reply_does_not_confuse_the_client() {
    let dir = TempDir::new("late");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 2,
        servers: 1,
        requests: 8,
        replies: 4,
        max_message: 64,
    };
    let service = spec.create(&path);
    let client = service.client().unwrap();
    match client.request_timeout(b"early", Duration::from_millis(100)) {
        Err(Error::Timeout) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(
        client.outstanding(),
        1,
        "the timed-out request is outstanding"
    );
    assert_eq!(service.queued_requests(), 1);
    // A ticket that times out is given up too.
    let pending = client.send(b"early too").unwrap();
    assert_eq!(
        client
            .wait_timeout(pending, Duration::from_millis(50))
            .unwrap_err(),
        RecvTimeoutError::Timeout
    );
    assert_eq!(client.outstanding(), 2);
    assert_eq!(service.queued_requests(), 2);

    let log = dir.join("log");
    let mut server = child("serve", &[s(&path), "4", s(&log), "default"]);
    // Both late replies are in the client's ring before it asks again.
    assert!(
        wait_until(HANG, || log_lines(&log).len() == 2),
        "the late server did not reply"
    );
    assert_eq!(log_lines(&log), ["Ok(Delivered)", "Ok(Delivered)"]);
    assert_eq!(service.queued_requests(), 0);

    for (i, payload) in [&b"second"[..], b"third"].into_iter().enumerate() {
        let reply = client.request_timeout(payload, HANG).unwrap();
        assert_eq!(
            reply.payload(),
            [&b"re:"[..], payload].concat(),
            "request {i} after the timeouts"
        );
        drop(reply);
        assert_eq!(
            client.outstanding(),
            0,
            "the late replies were not accounted for"
        );
    }
    server.expect_success(HANG);
}

/// The regression of issue 8 (item 0): with `reply_capacity(4)`, four requests time out while
/// no server is attached; a server process then answers all four. The late replies free their
/// places: the client's next requests are accepted (not `Full` for ever) and each gets its
/// own reply, and nothing stays counted as outstanding.
#[test]
fn timed_out_requests_free_their_places_once_their_late_replies_arrive() {
    let dir = TempDir::new("late-frees");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 16,
        replies: 4,
        max_message: 64,
    };
    let service = spec.create(&path);
    let client = service.client().unwrap();
    for i in 0..4u8 {
        match client.request_timeout(&[b'a', i], Duration::from_millis(20)) {
            Err(Error::Timeout) => {}
            other => panic!("request {i}: expected a timeout, got {other:?}"),
        }
    }
    assert_eq!(
        client.outstanding(),
        4,
        "given up, their replies still to come"
    );

    let log = dir.join("log");
    let mut server = child("serve", &[s(&path), "7", s(&log), "default"]);
    assert!(
        wait_until(HANG, || log_lines(&log).len() == 4),
        "the server did not answer the queued requests"
    );
    assert_eq!(log_lines(&log), ["Ok(Delivered)"; 4]);
    // The four late replies sit in the reply ring; the client has not read them yet.
    let pending = client
        .try_send(b"next")
        .expect("the late replies free their places: the client is not wedged");
    assert_eq!(
        client.wait_timeout(pending, HANG).unwrap().payload(),
        b"re:next"
    );
    for payload in [&b"then"[..], b"again"] {
        let reply = client.request_timeout(payload, HANG).unwrap();
        assert_eq!(reply.payload(), [&b"re:"[..], payload].concat());
    }
    assert_eq!(client.outstanding(), 0);
    server.expect_success(HANG);
}

/// A server outage longer than `reply_capacity` timeouts: a server process answers, then
/// exits; the client retries with short timeouts ten times while no server is attached (each
/// attempt times out: never `Full`, which would tell a retrying client to stop), then a new
/// server process attaches and the same client, without re-attaching, gets its replies again.
#[test]
fn client_works_again_after_a_server_outage_longer_than_reply_capacity_timeouts() {
    let dir = TempDir::new("outage");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 32,
        replies: 4,
        max_message: 64,
    };
    let service = spec.create(&path);
    let client = service.client().unwrap();
    let mut before = child("serve", &[s(&path), "1", "-", "default"]);
    let reply = client.request_timeout(b"before", HANG).unwrap();
    assert_eq!(reply.payload(), b"re:before");
    drop(reply);
    before.expect_success(HANG);

    for i in 0..10u8 {
        match client.request_timeout(&[b'o', i], Duration::from_millis(20)) {
            Err(Error::Timeout) => {}
            other => panic!("attempt {i} during the outage: expected a timeout, got {other:?}"),
        }
    }
    assert!(client.outstanding() <= 4, "never more than reply_capacity");

    // The server comes back: it answers the queued requests (at most four were accepted)
    // and then the client's next one.
    let queued = service.queued_requests();
    assert!(queued <= 4, "{queued} requests queued");
    let log = dir.join("log");
    let mut after = child(
        "serve",
        &[s(&path), &(queued + 2).to_string(), s(&log), "default"],
    );
    for payload in [&b"after"[..], b"after too"] {
        let reply = client
            .request_timeout(payload, HANG)
            .expect("the client works again without re-attaching");
        assert_eq!(reply.payload(), [&b"re:"[..], payload].concat());
    }
    assert_eq!(client.outstanding(), 0);
    after.expect_success(HANG);
    assert!(log_lines(&log).iter().all(|l| l == "Ok(Delivered)"));
}

/// Dropping a `Pending` without waiting gives its request up: its place is freed when its
/// reply comes, or at once if the reply had already been kept for it. With
/// `reply_capacity(2)`: the reply to `a` is kept while waiting for `b`, then `a`'s ticket is
/// dropped, so two more requests fit; their tickets are dropped too, and once a server
/// process has answered them the client sends again.
#[test]
fn dropped_pendings_free_their_places() {
    let dir = TempDir::new("dropped");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 16,
        replies: 2,
        max_message: 64,
    };
    let service = spec.create(&path);
    let client = service.client().unwrap();
    let log = dir.join("log");
    let mut server = child("serve", &[s(&path), "5", s(&log), "default"]);
    let a = client.send(b"a").unwrap();
    let b = client.send(b"b").unwrap();
    assert!(wait_until(HANG, || log_lines(&log).len() == 2));
    assert_eq!(client.wait_timeout(b, HANG).unwrap().payload(), b"re:b");
    drop(a); // its reply was kept while waiting for b
    let c = client
        .try_send(b"c")
        .expect("b's reply was taken: one place is free");
    let d = client
        .try_send(b"d")
        .expect("a's ticket was dropped: the place of its kept reply is free");
    drop(c);
    drop(d);
    assert!(wait_until(HANG, || log_lines(&log).len() == 4));
    let e = client
        .try_send(b"e")
        .expect("the replies to the dropped tickets have come: their places are free");
    assert_eq!(client.wait_timeout(e, HANG).unwrap().payload(), b"re:e");
    assert_eq!(client.outstanding(), 0);
    server.expect_success(HANG);
    assert_eq!(log_lines(&log), ["Ok(Delivered)"; 5]);
}

/// A corrupt reply ring makes a wait fail with `Corrupt`: the request is given up like a timed
/// out one, so its late reply frees its place. With `reply_capacity(1)`: another process
/// forges a reply slot with an impossible length at the head of the client's reply ring, the
/// wait reports it, a server process then answers the request, and the client's next request
/// is accepted and answered.
#[test]
fn corrupt_error_during_a_wait_does_not_cost_the_client_its_place() {
    let dir = TempDir::new("corrupt-wait");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 8,
        replies: 1,
        max_message: 64,
    };
    let g = spec.geometry();
    let service = spec.create(&path);
    let client = service.client().unwrap();
    let pending = client.send(b"x").unwrap();
    // Position 0 of the only client's reply ring: committed, with a length beyond the maximum.
    let slot = reply_slot(&g, 0, 0);
    write_at(&path, slot + 8, &u32::MAX.to_le_bytes());
    write_at(&path, slot, &state_word(0, 2, 0).to_le_bytes());
    match client.wait_timeout(pending, HANG) {
        Err(RecvTimeoutError::Recv(RecvError::Corrupt(_))) => {}
        other => panic!("expected a corruption error, got {other:?}"),
    }
    let log = dir.join("log");
    let mut server = child("serve", &[s(&path), "2", s(&log), "default"]);
    let reply = client
        .request_timeout(b"y", HANG)
        .expect("the request given up at the error frees its place when its reply comes");
    assert_eq!(reply.payload(), b"re:y");
    drop(reply);
    assert_eq!(client.outstanding(), 0);
    server.expect_success(HANG);
    assert_eq!(log_lines(&log), ["Ok(Delivered)"; 2]);
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// Two client processes hold both client entries: a third client is refused (a server can
/// still attach). When one of them exits, its entry is free again and works; then the service
/// is full again.
#[test]
fn attaching_beyond_max_clients_is_an_error_and_a_detached_slot_is_reusable() {
    let dir = TempDir::new("max-clients");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 2,
        servers: 1,
        requests: 8,
        replies: 4,
        max_message: 64,
    };
    let service = spec.create(&path);
    let mut holders: Vec<ChildProc> = (0..2)
        .map(|i| {
            let ready = dir.join(&format!("ready-{i}"));
            let release = dir.join(&format!("release-{i}"));
            let mut c = child("hold_client", &[s(&path), s(&ready), s(&release)]);
            wait_ready(&mut c, &ready);
            c
        })
        .collect();
    match service.client() {
        Err(Error::TooManyParticipants { path: p, max }) => {
            assert_eq!((p.as_path(), max), (path.as_path(), 2));
        }
        other => panic!("a third client attached: {other:?}"),
    }
    let server = service.server().expect("servers have entries of their own");

    common::signal_ready(s(&dir.join("release-1")));
    holders[1].expect_success(HANG);
    let client = service.client().expect("a detached entry is reusable");
    assert!(matches!(
        service.client(),
        Err(Error::TooManyParticipants { .. })
    ));
    let pending = client.send(b"reused").unwrap();
    let request = server.try_recv().unwrap();
    assert_eq!(request.payload(), b"reused");
    assert_eq!(request.reply(b"re:reused"), Ok(Delivery::Delivered));
    assert_eq!(client.wait(pending).unwrap().payload(), b"re:reused");

    drop(client);
    let again = service.client().expect("dropping a client frees its entry");
    drop(again);
    common::signal_ready(s(&dir.join("release-0")));
    holders[0].expect_success(HANG);
    let both = (service.client().unwrap(), service.client().unwrap());
    assert!(matches!(
        service.client(),
        Err(Error::TooManyParticipants { .. })
    ));
    drop(both);
}

/// Guarantee 2: a participant killed at any point has its participant slot freed. A client
/// process SIGKILLed while attached must not hold its client entry for ever: with
/// `max_clients(1)`, a new client can attach once the liveness check has seen it die.
#[test]
fn killed_client_process_frees_its_client_entry() {
    let dir = TempDir::new("killed-client");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 8,
        replies: 4,
        max_message: 64,
    };
    let service = spec.create(&path);
    let ready = dir.join("ready");
    let mut holder = child("hold_client", &[s(&path), s(&ready), s(&dir.join("never"))]);
    wait_ready(&mut holder, &ready);
    assert!(matches!(
        service.client(),
        Err(Error::TooManyParticipants { .. })
    ));
    holder.kill();
    // "Well under a second" (DESIGN.md); allow much more on a loaded machine.
    let attached = wait_until(Duration::from_secs(5), || service.client().is_ok());
    assert!(
        attached,
        "the client entry of a SIGKILLed client process is never freed"
    );
}

/// Guarantee 3: a request taken by a server that dies before replying is delivered again to
/// another server, flagged `redelivered()`; the client gets exactly one reply.
#[test]
fn request_held_by_a_killed_server_is_redelivered_and_answered_once() {
    let dir = TempDir::new("killed-server");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 2,
        requests: 4,
        replies: 4,
        max_message: 64,
    };
    let service = spec.create(&path);
    let client = service.client().unwrap();
    let ready = dir.join("taken");
    let mut holder = child("hold_request", &[s(&path), s(&ready)]);
    let pending = client.send(b"job").unwrap();
    wait_ready(&mut holder, &ready);
    holder.kill();

    let server = service.server().unwrap();
    let request = server.recv_timeout(HANG).unwrap();
    assert_eq!(request.payload(), b"job");
    assert!(request.redelivered(), "not flagged as delivered again");
    assert_eq!(request.reply(b"done"), Ok(Delivery::Delivered));
    assert_eq!(
        client.wait_timeout(pending, HANG).unwrap().payload(),
        b"done"
    );
    assert_eq!(client.outstanding(), 0);
    assert_eq!(server.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(service.queued_requests(), 0);
}

#[test]
fn too_large_request_and_reply_are_refused() {
    let dir = TempDir::new("too-large");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 4,
        replies: 4,
        max_message: 64,
    };
    let service = spec.create(&path);
    let client = service.client().unwrap();
    let server = service.server().unwrap();
    let big = [7u8; 65];
    let too_large = SendError::TooLarge { len: 65, max: 64 };
    assert_eq!(client.send(&big).unwrap_err(), too_large);
    assert_eq!(
        client.try_send(&big).unwrap_err(),
        TrySendError::Send(too_large.clone())
    );
    assert!(matches!(client.request(&big), Err(Error::Send(e)) if e == too_large));
    assert!(matches!(
        client.request_timeout(&big, Duration::from_millis(10)),
        Err(Error::Send(e)) if e == too_large
    ));
    assert_eq!(service.queued_requests(), 0, "nothing was sent");
    assert_eq!(client.outstanding(), 0);
    assert_eq!(server.try_recv().unwrap_err(), TryRecvError::Empty);

    // Exactly the maximum, and nothing at all, go through both ways.
    let full = [9u8; 64];
    for payload in [&full[..], b""] {
        let pending = client.send(payload).unwrap();
        let request = server.try_recv().unwrap();
        assert_eq!(request.payload(), payload);
        assert_eq!(request.reply(payload), Ok(Delivery::Delivered));
        assert_eq!(client.wait(pending).unwrap().payload(), payload);
    }

    // A reply one byte too long is refused: no truncated reply reaches the client, which is
    // told instead that no reply will come (and no longer counts the request as outstanding).
    let pending = client.send(b"ask").unwrap();
    let request = server.try_recv().unwrap();
    assert_eq!(
        request.reply(&big).unwrap_err(),
        SendTimeoutError::Send(too_large)
    );
    assert_eq!(
        client
            .wait_timeout(pending, Duration::from_secs(10))
            .unwrap_err(),
        RecvTimeoutError::Recv(RecvError::NoReply)
    );
    assert_eq!(client.outstanding(), 0);

    // The service still works, and the refused request is not offered again.
    let pending = client.send(b"after").unwrap();
    let request = server.try_recv().unwrap();
    assert_eq!(request.payload(), b"after");
    assert_eq!(request.reply(b"fine"), Ok(Delivery::Delivered));
    assert_eq!(client.wait(pending).unwrap().payload(), b"fine");
}

/// `reply_capacity` requests outstanding: one more is `AllPlacesHeld`, from `try_send`, from
/// `send` (without waiting) and from `request_timeout`; taking one reply makes room for one
/// request.
#[test]
fn outstanding_limit_is_reply_capacity() {
    let dir = TempDir::new("outstanding");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 16,
        replies: 4,
        max_message: 64,
    };
    let service = spec.create(&path);
    let client = service.client().unwrap();
    let mut pending: Vec<Pending> = (0..4u8).map(|i| client.try_send(&[i]).unwrap()).collect();
    assert_eq!(client.outstanding(), 4);
    let held = SendError::AllPlacesHeld { places: 4 };
    assert_eq!(
        client.try_send(b"x").unwrap_err(),
        TrySendError::Send(held.clone())
    );
    assert_eq!(client.send(b"x").unwrap_err(), held);
    assert!(matches!(
        client.request_timeout(b"x", Duration::from_millis(10)),
        Err(Error::Send(SendError::AllPlacesHeld { places: 4 }))
    ));
    assert_eq!(
        service.queued_requests(),
        4,
        "refused requests were not sent"
    );
    assert_eq!(client.outstanding(), 4);

    // A server process answers all four; taking the first reply makes room for one more.
    let mut server = child("serve", &[s(&path), "5", "-", "default"]);
    let first = pending.remove(0);
    assert_eq!(
        client.wait_timeout(first, HANG).unwrap().payload(),
        b"re:\x00"
    );
    let fifth = client.try_send(&[4]).unwrap();
    pending.push(fifth);
    assert_eq!(client.try_send(b"x").unwrap_err(), TrySendError::Send(held));
    for (i, p) in pending.into_iter().enumerate() {
        let reply = client.wait_timeout(p, HANG).unwrap();
        assert_eq!(reply.payload(), [b'r', b'e', b':', i as u8 + 1]);
    }
    assert_eq!(client.outstanding(), 0);
    server.expect_success(HANG);
}

/// Module docs: a reply "that arrives while waiting is kept (in its slot, without copying)
/// until that request is waited for", and "a client may have at most `reply_capacity` requests
/// outstanding — sent, and their replies not yet taken — so servers never find a reply ring
/// full". With two reply slots: send 0 and 1, both are answered, wait for 1 (the reply to 0
/// is kept). Requests 0 and 2 are then outstanding, within the limit: if request 2 is accepted,
/// a server must be able to deliver its reply. Yet the kept reply holds slot 0, the reply ring
/// is a FIFO ring, and the reply to 2 needs slot 0 (position 2 of a two-slot ring): the server
/// finds the ring full, gives up after its reply-room timeout, and the reply is lost — a client
/// waiting without a timeout would hang. (Waiting for replies in any order with
/// `reply_capacity` requests in flight runs into this all the time.)
#[test]
fn replies_kept_for_a_later_wait_do_not_block_the_reply_ring() {
    let dir = TempDir::new("kept");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 16,
        replies: 2,
        max_message: 64,
    };
    let service = spec.create(&path);
    let client = service.client().unwrap();
    let server = service.server().unwrap();
    let answer = |want: &[u8]| {
        let request = server.try_recv().unwrap();
        assert_eq!(request.payload(), want);
        request.reply(&[b"re:", want].concat())
    };
    let p0 = client.send(b"0").unwrap();
    let p1 = client.send(b"1").unwrap();
    assert_eq!(answer(b"0"), Ok(Delivery::Delivered));
    assert_eq!(answer(b"1"), Ok(Delivery::Delivered));
    assert_eq!(client.wait(p1).unwrap().payload(), b"re:1");
    // The reply to 0 is kept for its own wait; requests 0 and 2 are outstanding.
    match client.try_send(b"2") {
        Err(TrySendError::Send(SendError::AllPlacesHeld { .. })) => {
            // Refusing while a reply is kept would be conservative, but the docs allow it.
            assert_eq!(client.wait(p0).unwrap().payload(), b"re:0");
        }
        Ok(p2) => {
            assert_eq!(
                answer(b"2"),
                Ok(Delivery::Delivered),
                "a request within the outstanding limit was accepted, and its reply could \
                 not be delivered: the reply kept for request 0 blocks the reply ring"
            );
            assert_eq!(
                client.try_send(b"3").unwrap_err(),
                TrySendError::Send(SendError::AllPlacesHeld { places: 2 }),
                "requests 0 and 2 are outstanding already"
            );
            assert_eq!(client.wait(p2).unwrap().payload(), b"re:2");
            assert_eq!(client.wait(p0).unwrap().payload(), b"re:0");
        }
        Err(e) => panic!("try_send: {e}"),
    }
    assert_eq!(client.outstanding(), 0);
}

// ---------------------------------------------------------------------------------------------
// Wake-ups across processes
// ---------------------------------------------------------------------------------------------

/// How long a wake-up across processes may take in the tests that check one: generous for a
/// loaded machine, and far below the deadlines of the children those tests start with an
/// uncapped park (see `common::UNCAPPED_PARK_VAR`), where a lost wake-up hangs instead.
const WAKE: Duration = Duration::from_secs(10);

/// The server parks with no cap on its sleep (its own deadline is `HANG`, three times `WAKE`):
/// a lost wake-up fails the request's `WAKE` timeout.
#[test]
fn blocked_server_is_woken_by_a_request_from_another_process() {
    let dir = TempDir::new("wake-server");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 4,
        replies: 4,
        max_message: 64,
    };
    let service = spec.create(&path);
    let client = service.client().unwrap();
    let mut server = child_with_env("serve", &[s(&path), "1", "-", "park"], &uncapped_park());
    wait_parked(
        &path,
        (RING_CONTROL_OFFSET + CTL_NOT_EMPTY) as u64,
        &mut server,
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        server.is_running(),
        "the server returned from recv with no request"
    );
    let reply = client.request_timeout(b"wake up", WAKE).unwrap();
    assert_eq!(reply.payload(), b"re:wake up");
    drop(reply);
    server.expect_success(HANG);
}

/// The client parks with no cap on its sleep (a lost wake-up hangs it).
#[test]
fn client_waiting_is_woken_by_a_reply_from_another_process() {
    let dir = TempDir::new("wake-client");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 4,
        replies: 4,
        max_message: 64,
    };
    let g = spec.geometry();
    let service = spec.create(&path);
    let server = service.server().unwrap();
    let mut c = child_with_env("park_client", &[s(&path), "ping", "pong"], &uncapped_park());
    let request = loop {
        match server.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => break r,
            Err(RecvTimeoutError::Timeout) => {
                assert!(c.is_running(), "the client exited without sending");
            }
            Err(e) => panic!("recv: {e}"),
        }
    };
    assert_eq!(request.payload(), b"ping");
    // The only client has entry 0.
    wait_parked(&path, reply_ring(&g, 0) + CTL_NOT_EMPTY as u64, &mut c);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        c.is_running(),
        "the client returned from wait with no reply"
    );
    assert_eq!(request.reply(b"pong"), Ok(Delivery::Delivered));
    c.expect_success(WAKE);
}

// ---------------------------------------------------------------------------------------------
// Forged and garbage shared memory
// ---------------------------------------------------------------------------------------------

/// A server parked on an empty service; another process writes a committed request whose
/// envelope names a client entry that does not exist. The server gets an error (not a panic,
/// and not a request it would reply to), and then serves the next real request.
#[test]
fn forged_request_naming_no_client_is_an_error_and_the_server_keeps_serving() {
    let dir = TempDir::new("forged-request");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 2,
        servers: 1,
        requests: 4,
        replies: 4,
        max_message: 64,
    };
    let g = spec.geometry();
    let service = spec.create(&path);
    let ready = dir.join("ready");
    let mut server = child("forged_request_server", &[s(&path), s(&ready)]);
    wait_ready(&mut server, &ready);
    wait_parked(
        &path,
        (RING_CONTROL_OFFSET + CTL_NOT_EMPTY) as u64,
        &mut server,
    );
    // Position 0 of the request ring, in slot 0: a request from client 7 of 2.
    let forged = [envelope(7, 1, 0), b"forged".to_vec()].concat();
    forge_slot(&path, g.slots_offset, 0, &forged);
    // The parked server re-checks its condition at least every 100 ms; wait until it has
    // taken the forged request (the ring's head moves past it).
    let head = (RING_CONTROL_OFFSET + CTL_HEAD) as u64;
    assert!(
        wait_until(HANG, || read_u64(&path, head) == 1 || !server.is_running()),
        "the parked server never looked at the forged request"
    );
    let client = service.client().unwrap();
    let reply = client.request_timeout(b"real", HANG).unwrap();
    assert_eq!(reply.payload(), b"re:real");
    drop(reply);
    server.expect_success(HANG);
}

/// A client process parked waiting for its reply; another process writes two committed
/// replies into its reply ring: one with the client's entry and correlation id but another
/// generation (a previous owner's late reply that raced past the server's check), and one too
/// short to hold an envelope. The client discards both and keeps waiting; its own reply then
/// arrives.
#[test]
fn forged_replies_in_a_waiting_clients_ring_are_discarded_and_its_own_reply_arrives() {
    let dir = TempDir::new("forged-reply");
    let path = dir.join("svc");
    let spec = Spec {
        clients: 1,
        servers: 1,
        requests: 4,
        replies: 4,
        max_message: 64,
    };
    let g = spec.geometry();
    let service = spec.create(&path);
    let server = service.server().unwrap();
    let mut c = child("park_client", &[s(&path), "ping", "re:ping"]);
    let request = loop {
        match server.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => break r,
            Err(RecvTimeoutError::Timeout) => {
                assert!(c.is_running(), "the client exited without sending");
            }
            Err(e) => panic!("recv: {e}"),
        }
    };
    let ring = reply_ring(&g, 0);
    wait_parked(&path, ring + CTL_NOT_EMPTY as u64, &mut c);
    // The entry's first owner has generation 1; this one claims to be from generation 5.
    let stale = [envelope(0, 5, 0), b"forged".to_vec()].concat();
    forge_slot(&path, reply_slot(&g, 0, 1), 1, b"short");
    forge_slot(&path, reply_slot(&g, 0, 0), 0, &stale);
    let head = ring + CTL_HEAD as u64;
    assert!(
        wait_until(HANG, || read_u64(&path, head) == 2 || !c.is_running()),
        "the parked client never looked at the forged replies"
    );
    assert!(c.is_running(), "the client took a forged reply");
    let reply = [b"re:", request.payload()].concat();
    assert_eq!(request.reply(&reply), Ok(Delivery::Delivered));
    c.expect_success(HANG);
}

/// Overwrites parts of a service file after its header with random bytes or plausible-looking
/// words, by seed: the whole rest of the file, the client table, the reply rings, the request
/// ring, or plausible ring states with envelopes naming real and unreal clients.
fn garble(path: &Path, g: &Geometry, seed: u64) {
    let mut rng = Rng::new(seed);
    let table = g.table_offset;
    let replies = g.reply_block(0);
    let slots = g.slots_offset;
    let end = g.file_size;
    let random = |rng: &mut Rng, from: u64, to: u64| {
        let mut b = vec![0u8; (to - from) as usize];
        rng.fill(&mut b);
        write_at(path, from, &b);
    };
    match seed % 5 {
        0 => random(&mut rng, 128, end),
        1 => random(&mut rng, table, replies),
        2 => random(&mut rng, replies, slots),
        3 => {
            random(&mut rng, RING_CONTROL_OFFSET as u64, 640);
            random(&mut rng, slots, end);
        }
        _ => {
            // Client entries: attached or not, small generations.
            for i in 0..u64::from(g.table_entries) {
                let state = rng.below(4) << 16 | rng.below(2) << 12 | rng.below(4);
                write_at(path, table + i * 128, &state.to_le_bytes());
            }
            // Every ring: counters near each other, slots in any state, with envelopes.
            let rings = (0..g.table_entries)
                .map(|i| {
                    let block = g.reply_block(i);
                    (block, block + RING_CONTROL_SIZE as u64, g.reply_capacity)
                })
                .chain([(RING_CONTROL_OFFSET as u64, slots, g.capacity)]);
            for (ctl, first, cap) in rings.collect::<Vec<_>>() {
                let head = rng.below(3 * cap);
                let tail = head + rng.below(cap + 2);
                write_at(path, ctl, &tail.to_le_bytes());
                write_at(path, ctl + CTL_HEAD as u64, &head.to_le_bytes());
                for i in 0..cap {
                    let pos = head + i;
                    let seq = match rng.below(6) {
                        0 => pos + cap,
                        1 => pos.wrapping_sub(cap),
                        2 => rng.next_u64(),
                        _ => pos,
                    };
                    let word = state_word(seq, rng.below(8), rng.below(5));
                    let len = match rng.below(5) {
                        0 => rng.next_u64() as u32,
                        1 => rng.below(ENVELOPE_SIZE as u64) as u32,
                        _ => rng.below(g.max_message + ENVELOPE_SIZE as u64 + 2) as u32,
                    };
                    let env = envelope(
                        rng.below(u64::from(g.table_entries) + 2) as u32,
                        rng.below(4),
                        rng.below(4),
                    );
                    let slot = first + (pos % cap) * g.slot_stride;
                    write_at(path, slot + SLOT_HEADER_SIZE as u64, &env);
                    write_at(path, slot + 8, &len.to_le_bytes());
                    write_at(path, slot, &word.to_le_bytes());
                }
            }
        }
    }
}

/// Every operation on a garbled service returns (Ok or Err) without panicking or hanging;
/// whatever is received is never longer than the maximum. Returns (successes, failures).
fn exercise(path: PathBuf, seed: u64) -> (usize, usize) {
    let service = Service::open(&path).expect("the header is valid");
    let _ = service.queued_requests();
    let server = service.server();
    let mut client = service.client();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let (mut ok, mut err) = (0, 0);
    let mut tally = |r: bool| if r { ok += 1 } else { err += 1 };
    tally(server.is_ok());
    tally(client.is_ok());
    let mut pending = Vec::new();
    let short = Duration::from_millis(2);
    for _ in 0..48 {
        let _ = service.queued_requests();
        match (rng.below(5), &server, &mut client) {
            (0 | 1, Ok(server), _) => {
                let r = if rng.below(2) == 0 {
                    server.try_recv().map_err(Error::from)
                } else {
                    server.recv_timeout(short).map_err(Error::from)
                };
                match r {
                    Ok(request) => {
                        assert!(request.payload().len() <= 64);
                        let _ = request.redelivered();
                        let _ = format!("{request:?}");
                        if rng.below(2) == 0 {
                            let _ = request.reply(b"garbled");
                        }
                        tally(true);
                    }
                    Err(_) => tally(false),
                }
            }
            (2, _, Ok(client)) => match client.request_timeout(b"q", short) {
                Ok(reply) => {
                    assert!(reply.payload().len() <= 64);
                    tally(true);
                }
                Err(_) => tally(false),
            },
            (3, _, Ok(client)) => match client.try_send(b"q") {
                Ok(p) => {
                    pending.push(p);
                    tally(true);
                }
                Err(_) => tally(false),
            },
            (4, _, Ok(client)) => {
                if let Some(p) = pending.pop() {
                    match client.wait_timeout(p, short) {
                        Ok(reply) => {
                            assert!(reply.payload().len() <= 64);
                            tally(true);
                        }
                        Err(_) => tally(false),
                    }
                }
            }
            _ => {}
        }
        if let Ok(client) = &client {
            let _ = client.outstanding();
        }
    }
    (ok, err)
}

/// Random bytes (or plausible-looking ring words) over the client table, the reply rings and
/// the request ring of a service that has been used: opening it, attaching, sending, receiving,
/// replying and waiting return `Ok` or `Err`, never panic or hang.
#[test]
fn hostile_file_never_panics() {
    let dir = TempDir::new("hostile");
    let path = dir.join("template");
    let spec = Spec {
        clients: 2,
        servers: 2,
        requests: 8,
        replies: 4,
        max_message: 64,
    };
    let g = spec.geometry();
    {
        // Leave some history in the rings: replies taken, replies waiting, requests waiting.
        let service = spec.create(&path);
        let client = service.client().unwrap();
        let server = service.server().unwrap();
        for i in 0..5u8 {
            let pending = client.send(&[i; 10]).unwrap();
            let request = server.try_recv().unwrap();
            request.reply(&[i; 20]).unwrap();
            if i % 2 == 0 {
                drop(client.wait(pending).unwrap());
            }
        }
        let _queued = client.send(b"left in the ring").unwrap();
    }
    let (mut oks, mut errs) = (0, 0);
    for seed in 0..100u64 {
        let case = dir.join(&format!("seed-{seed}"));
        std::fs::copy(&path, &case).unwrap();
        garble(&case, &g, seed);
        let (ok, err) = bounded(&format!("seed {seed}"), move || exercise(case, seed));
        oks += ok;
        errs += err;
    }
    assert!(oks > 0 && errs > 0, "{oks} successes, {errs} failures");
}
