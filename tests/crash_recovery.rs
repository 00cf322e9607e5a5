//! Crash recovery across real processes (DESIGN.md guarantees 1–3): participants SIGKILLed at
//! chosen points of the protocol — stopped there by the test-only park points of
//! `src/testhook.rs` (the `test-hooks` feature, which the crate's tests turn on) — and at random
//! moments in a chaos loop; then the living must not be blocked for long, nothing acknowledged
//! may be lost or delivered again, what a dead reader held must come back flagged
//! `redelivered()`, and nothing torn may ever be seen.
//! And the other side: recovery never acts against a participant that is alive, however slow.
//!
//! Timing is never asserted, except as generous hang guards: recovery is expected within about
//! two [`shmq::STALL_CHECK`]s, the guards allow seconds.
//!
//! The chaos tests run for `SHMQ_CHAOS_SECS` seconds (default 60; the server chaos a sixth of
//! that) on a schedule from `SHMQ_CHAOS_SEED` (default: the clock; printed, to replay it).

mod common;

use common::{child, child_with_env, fnv1a, s, wait_ready, ChildProc, Rng, TempDir, HANG};
use shmq::{
    Client, Delivery, Overflow, Pipeline, PipelineOptions, PubSub, PubSubOptions, RecoveryStats,
    RecvTimeoutError, SendTimeoutError, Server, Service, ServiceOptions, TryRecvError,
    TrySendError,
};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Largest message in these tests.
const MAX: usize = 256;
/// Hang guard for a blocking call that needs a recovery sweep to make progress (expected within
/// ~100 ms).
const RECOVERY_GUARD: Duration = Duration::from_secs(10);
/// How long the slow-but-alive participants of the "never robbed" tests stall.
const SLOW: Duration = Duration::from_secs(1);
/// Environment variables of the test-only park points (see `src/testhook.rs`).
const PARK_AT: &str = "SHMQ_TEST_PARK_AT";
const PARKED_FILE: &str = "SHMQ_TEST_PARKED_FILE";

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "send_one" => send_one(args),
        "recv_one" => recv_one(args),
        "serve" => serve(args),
        "idle_subscriber" => idle_subscriber(args),
        "fire_requests" => fire_requests(args),
        "publish_one" => publish_one(args),
        "slow_consumer" => slow_consumer(args),
        "slow_producer" => slow_producer(args),
        "chaos_producer" => chaos_producer(args),
        "chaos_consumer" => chaos_consumer(args),
        "chaos_server" => chaos_server(args),
        other => panic!("unknown role {other:?}"),
    });
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `text` sealed with its checksum and padded with bytes derived from it: 8 bytes FNV-1a of the
/// rest, a 2-byte text length, the text, the padding. Any torn or stale byte shows.
fn sealed(text: &str) -> Vec<u8> {
    let mut rest = Vec::with_capacity(MAX);
    rest.extend_from_slice(&(text.len() as u16).to_le_bytes());
    rest.extend_from_slice(text.as_bytes());
    let mut rng = Rng::new(fnv1a(text.as_bytes()));
    let mut pad = vec![0; rng.below(100) as usize + 20];
    rng.fill(&mut pad);
    rest.extend_from_slice(&pad);
    let mut m = fnv1a(&rest).to_le_bytes().to_vec();
    m.extend_from_slice(&rest);
    assert!(m.len() <= MAX, "sealed message too long");
    m
}

/// The text of a [`sealed`] message; panics on anything torn, stale or foreign.
fn unseal(m: &[u8]) -> String {
    assert!(m.len() >= 10, "message of {} bytes is too short", m.len());
    let sum = u64::from_le_bytes(m[..8].try_into().unwrap());
    assert_eq!(
        fnv1a(&m[8..]),
        sum,
        "checksum of a message: torn or garbage"
    );
    let len = u16::from_le_bytes(m[8..10].try_into().unwrap()) as usize;
    assert!(10 + len <= m.len(), "text length out of bounds");
    let text = String::from_utf8(m[10..10 + len].to_vec()).expect("text is UTF-8");
    assert_eq!(m, sealed(&text), "bytes of message {text:?}");
    text
}

/// Starts `role` with a park point set, and waits until it has parked there.
fn parked_child(dir: &TempDir, role: &str, args: &[&str], point: &str) -> ChildProc {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let parked = dir.join(&format!("parked-{point}-{n}"));
    let mut c = child_with_env(role, args, &[(PARK_AT, point), (PARKED_FILE, s(&parked))]);
    wait_ready(&mut c, &parked);
    c
}

/// SIGKILLs a child that must still be running (parked or idle, not exited on its own).
fn kill_now(c: &mut ChildProc) {
    if let Some(status) = c.try_wait() {
        panic!(
            "child {:?} exited on its own before the kill: {status}",
            c.role()
        );
    }
    let status = c.kill();
    assert_eq!(
        status.signal(),
        Some(nix::libc::SIGKILL),
        "child {:?}: {status}",
        c.role()
    );
}

/// An append-only log: every line is one `write(2)` on an `O_APPEND` descriptor, so a process
/// killed at any point leaves at most its last line torn (and torn lines lack their newline).
struct LineLog(File);

impl LineLog {
    fn create(path: &str) -> Self {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open a log");
        LineLog(f)
    }

    fn line(&self, line: &str) {
        debug_assert!(line.ends_with('\n'));
        let n = (&self.0).write(line.as_bytes()).expect("append to a log");
        assert_eq!(n, line.len(), "short write to a log");
    }
}

/// The complete lines of a log (a torn last line, without its newline, is left out).
fn log_lines(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    if lines.last().is_some_and(|l| !l.ends_with('\n')) {
        lines.pop();
    }
    lines
        .into_iter()
        .map(|l| l.trim_end_matches('\n').to_string())
        .collect()
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

// ---------------------------------------------------------------------------------------------
// Roles of the targeted tests
// ---------------------------------------------------------------------------------------------

/// args: path, text. Sends one sealed message (parks at `producer-claimed` when asked to).
fn send_one(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    q.producer().unwrap().send(&sealed(&args[1])).unwrap();
}

/// args: path. Receives one message (parks at `consumer-received` when asked to).
fn recv_one(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let consumer = q.consumer().unwrap();
    let m = consumer.recv_timeout(HANG).unwrap();
    unseal(&m);
}

/// args: path, log, ready file. Serves sealed requests, replying `"<text>|r=<0/1>"` (the
/// redelivered flag) and logging `"<text> <0/1>"`, until a request "STOP" (parks at
/// `server-received` when asked to).
fn serve(args: &[String]) {
    let svc = Service::open(&args[0]).unwrap();
    let log = LineLog::create(&args[1]);
    let server = svc.server().unwrap();
    common::signal_ready(&args[2]);
    loop {
        let req = server.recv_timeout(HANG).unwrap();
        let text = unseal(req.payload());
        let r = u8::from(req.redelivered());
        log.line(&format!("{text} {r}\n"));
        req.reply(&sealed(&format!("{text}|r={r}"))).unwrap();
        if text == "STOP" {
            return;
        }
    }
}

/// args: path, ready file. Subscribes to everything and never reads.
fn idle_subscriber(args: &[String]) {
    let ch = PubSub::open(&args[0]).unwrap();
    let _sub = ch.subscriber(&[]).unwrap();
    common::signal_ready(&args[1]);
    sleep_forever();
}

/// args: path, count, ready file. Sends `count` requests "A<i>" and never waits for a reply.
fn fire_requests(args: &[String]) {
    let svc = Service::open(&args[0]).unwrap();
    let n: usize = args[1].parse().unwrap();
    let client = svc.client().unwrap();
    let pending: Vec<_> = (0..n)
        .map(|i| client.send(&sealed(&format!("A{i}"))).unwrap())
        .collect();
    common::signal_ready(&args[2]);
    let _keep = pending;
    sleep_forever();
}

/// args: path. Publishes one message (parks at `publisher-claimed` when asked to).
fn publish_one(args: &[String]) {
    let ch = PubSub::open(&args[0]).unwrap();
    ch.publisher()
        .unwrap()
        .publish(b"t/dead", &sealed("from the dead"))
        .unwrap();
}

/// args: path, holding file, acked file. Receives one message, holds it for [`SLOW`] (checking
/// it is still intact afterwards), acknowledges it.
fn slow_consumer(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let consumer = q.consumer().unwrap();
    let m = consumer.recv_timeout(HANG).unwrap();
    assert!(!m.redelivered());
    assert_eq!(unseal(&m), "held");
    common::signal_ready(&args[1]);
    std::thread::sleep(SLOW);
    assert_eq!(
        unseal(&m),
        "held",
        "a held message changed under its consumer"
    );
    drop(m);
    common::signal_ready(&args[2]);
}

/// args: path, claimed file, text. Loans a slot, writes half the message, stalls for [`SLOW`],
/// writes the rest and commits.
fn slow_producer(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let producer = q.producer().unwrap();
    let msg = sealed(&args[2]);
    let mut loan = producer.loan(msg.len()).unwrap();
    let half = msg.len() / 2;
    loan[..half].copy_from_slice(&msg[..half]);
    common::signal_ready(&args[1]);
    std::thread::sleep(SLOW);
    loan[half..].copy_from_slice(&msg[half..]);
    loan.commit().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Pipeline
// ---------------------------------------------------------------------------------------------

#[test]
fn killed_producer_between_claim_and_commit_never_exposes_its_bytes() {
    let dir = TempDir::new("killed-producer");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &PipelineOptions::new().capacity(4).max_message(MAX)).unwrap();
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();
    // Go round the ring once, so the slot the child claims holds an old, valid message (with
    // a valid checksum): exposing the claimed slot would deliver "old-0" again.
    for i in 0..4 {
        producer.send(&sealed(&format!("old-{i}"))).unwrap();
    }
    for i in 0..4 {
        assert_eq!(unseal(&consumer.try_recv().unwrap()), format!("old-{i}"));
    }

    let mut dead = parked_child(&dir, "send_one", &[s(&path), "dead"], "producer-claimed");
    // Behind the claimed slot (the ring has room for three more).
    for i in 0..3 {
        producer.send(&sealed(&format!("new-{i}"))).unwrap();
    }
    // A live writer, however slow, holds back what follows it, and recovery leaves it alone.
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(q.repair().unwrap(), RecoveryStats::default());
    assert!(matches!(
        consumer.recv_timeout(Duration::from_millis(150)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert_eq!(q.recovery_stats(), RecoveryStats::default());

    kill_now(&mut dead);
    let killed_at = Instant::now();
    // The consumer's own blocking receive finds the dead writer and passes over its slot.
    for i in 0..3 {
        let m = consumer
            .recv_timeout(RECOVERY_GUARD)
            .unwrap_or_else(|e| panic!("message {i} after the producer died: {e:?}"));
        if i == 0 {
            eprintln!(
                "killed producer: flowing again after {:?}",
                killed_at.elapsed()
            );
        }
        assert!(!m.redelivered());
        assert_eq!(unseal(&m), format!("new-{i}"));
    }
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    // The skipped slot is usable again: several more laps, nothing stale.
    for lap in 0..3 {
        for i in 0..4 {
            producer
                .try_send(&sealed(&format!("lap-{lap}-{i}")))
                .unwrap();
        }
        for i in 0..4 {
            assert_eq!(
                unseal(&consumer.try_recv().unwrap()),
                format!("lap-{lap}-{i}")
            );
        }
    }
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    let stats = q.recovery_stats();
    eprintln!("killed producer: {stats:?}");
    assert!(stats.skipped >= 1 && stats.reaped >= 1, "{stats:?}");
    assert_eq!(stats.redelivered, 0, "{stats:?}");
}

#[test]
fn killed_consumer_holding_a_message_is_redelivered_flagged() {
    let dir = TempDir::new("killed-consumer");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &PipelineOptions::new().capacity(4).max_message(MAX)).unwrap();
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();
    // Acknowledged before the kill, over more than a lap: never to be seen again.
    for i in 0..6 {
        producer.send(&sealed(&format!("acked-{i}"))).unwrap();
        assert_eq!(unseal(&consumer.try_recv().unwrap()), format!("acked-{i}"));
    }
    producer.send(&sealed("M")).unwrap();
    let mut dead = parked_child(&dir, "recv_one", &[s(&path)], "consumer-received");
    // The child holds M; others go on past it.
    producer.send(&sealed("after-0")).unwrap();
    let m = consumer.try_recv().unwrap();
    assert!(!m.redelivered());
    assert_eq!(unseal(&m), "after-0");
    drop(m);
    // A live holder is never robbed.
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(q.repair().unwrap(), RecoveryStats::default());
    assert!(matches!(
        consumer.recv_timeout(Duration::from_millis(150)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert_eq!(q.recovery_stats(), RecoveryStats::default());

    kill_now(&mut dead);
    // Another consumer takes M again (its attach finds the dead one) and dies holding it too.
    let mut dead = parked_child(&dir, "recv_one", &[s(&path)], "consumer-received");
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(q.repair().unwrap(), RecoveryStats::default());
    assert_eq!(q.recovery_stats().redelivered, 1);
    kill_now(&mut dead);
    let killed_at = Instant::now();
    let m = consumer
        .recv_timeout(RECOVERY_GUARD)
        .expect("the dead consumer's message is delivered again");
    eprintln!(
        "killed consumer: redelivered after {:?}",
        killed_at.elapsed()
    );
    assert!(m.redelivered(), "a redelivered message must be flagged");
    assert_eq!(unseal(&m), "M");
    drop(m);
    // Acknowledged now: gone for good, and nothing acknowledged before comes back.
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(q.repair().unwrap().redelivered, 0);
    for i in 1..10 {
        producer.send(&sealed(&format!("after-{i}"))).unwrap();
        let m = consumer.try_recv().unwrap();
        assert!(!m.redelivered());
        assert_eq!(unseal(&m), format!("after-{i}"));
    }
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    let stats = q.recovery_stats();
    eprintln!("killed consumer: {stats:?}");
    assert_eq!(stats.redelivered, 2, "{stats:?}");
    assert_eq!(stats.reaped, 2, "{stats:?}");
    assert_eq!(stats.skipped, 0, "{stats:?}");
}

#[test]
fn slow_live_consumer_is_never_robbed() {
    let dir = TempDir::new("slow-consumer");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &PipelineOptions::new().capacity(4).max_message(MAX)).unwrap();
    let producer = q.producer().unwrap();
    producer.send(&sealed("held")).unwrap();
    let (holding, acked) = (dir.join("holding"), dir.join("acked"));
    let mut slow = child("slow_consumer", &[s(&path), s(&holding), s(&acked)]);
    wait_ready(&mut slow, &holding);
    // Two consumers wait on an otherwise empty queue, each wait long enough for its own stall
    // checks, and sweep for the dead in between, until the slow one acknowledges.
    let waits = std::thread::scope(|scope| {
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (q, acked) = (&q, &acked);
                scope.spawn(move || {
                    let consumer = q.consumer().unwrap();
                    let mut waits = 0;
                    while !acked.exists() {
                        match consumer.recv_timeout(Duration::from_millis(120)) {
                            Err(RecvTimeoutError::Timeout) => waits += 1,
                            Ok(m) => panic!(
                                "robbed a live consumer: got {:?} (redelivered {})",
                                unseal(&m),
                                m.redelivered()
                            ),
                            Err(e) => panic!("{e:?}"),
                        }
                        let r = q.repair().unwrap();
                        assert_eq!(r, RecoveryStats::default(), "recovery acted on the living");
                    }
                    waits
                })
            })
            .collect();
        waiters.into_iter().map(|w| w.join().unwrap()).sum::<u32>()
    });
    slow.expect_success(HANG);
    eprintln!("slow consumer: {waits} waits of 120 ms by others while it held its message");
    assert_eq!(q.recovery_stats(), RecoveryStats::default());
    // Its acknowledgement took: the slot is free (the ring takes a full lap of messages) and
    // the message is gone.
    let consumer = q.consumer().unwrap();
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    for i in 0..4 {
        producer
            .try_send(&sealed(&format!("next-{i}")))
            .unwrap_or_else(|e| panic!("slot {i} not free after the slow ack: {e:?}"));
    }
    for i in 0..4 {
        let m = consumer.try_recv().unwrap();
        assert!(!m.redelivered());
        assert_eq!(unseal(&m), format!("next-{i}"));
    }
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(q.recovery_stats(), RecoveryStats::default());
}

#[test]
fn slow_live_producer_is_never_skipped() {
    let dir = TempDir::new("slow-producer");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &PipelineOptions::new().capacity(4).max_message(MAX)).unwrap();
    let consumer = q.consumer().unwrap();
    let claimed = dir.join("claimed");
    let mut slow = child("slow_producer", &[s(&path), s(&claimed), "slow but alive"]);
    wait_ready(&mut slow, &claimed);
    let mut waits = 0;
    let got = loop {
        match consumer.recv_timeout(Duration::from_millis(120)) {
            Ok(m) => break (unseal(&m), m.redelivered()),
            Err(RecvTimeoutError::Timeout) => waits += 1,
            Err(e) => panic!("{e:?}"),
        }
        assert_eq!(q.repair().unwrap(), RecoveryStats::default());
        assert!(waits < 200, "the slow producer never committed");
    };
    assert_eq!(got, ("slow but alive".to_string(), false));
    slow.expect_success(HANG);
    eprintln!("slow producer: {waits} waits of 120 ms while it wrote");
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(q.recovery_stats(), RecoveryStats::default());
}

// ---------------------------------------------------------------------------------------------
// Pipeline with exclusive ends: one producer and one consumer at a time, so the live side is
// the test's and the killed side is the child's (another would be refused while it lives).
// ---------------------------------------------------------------------------------------------

fn exclusive_queue(path: &Path) -> Pipeline {
    let options = PipelineOptions::new()
        .capacity(4)
        .max_message(MAX)
        .single_producer()
        .single_consumer();
    Pipeline::create(path, &options).unwrap()
}

fn is_end_taken<T>(attached: Result<T, shmq::Error>) -> bool {
    matches!(attached, Err(shmq::Error::EndTaken { .. }))
}

/// A producer killed with half a message written in its claimed slot (the slot still holds
/// an older valid message): nothing of it is ever delivered, nothing is skipped (its slot was
/// never made visible), and the next producer, refused while it lived, attaches once it died
/// and writes that same slot.
#[test]
fn killed_exclusive_producer_mid_write_leaves_nothing_visible() {
    let dir = TempDir::new("killed-excl-producer");
    let path = dir.join("q");
    let q = exclusive_queue(&path);
    let consumer = q.consumer().unwrap();
    {
        let producer = q.producer().unwrap();
        for i in 0..4 {
            producer.send(&sealed(&format!("old-{i}"))).unwrap();
            assert_eq!(unseal(&consumer.try_recv().unwrap()), format!("old-{i}"));
        }
    }
    let claimed = dir.join("claimed");
    let mut dead = child("slow_producer", &[s(&path), s(&claimed), "dead"]);
    wait_ready(&mut dead, &claimed);
    assert!(
        is_end_taken(q.producer()),
        "a second producer while the first lives"
    );
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(q.repair().unwrap(), RecoveryStats::default());
    assert!(matches!(
        consumer.recv_timeout(Duration::from_millis(150)),
        Err(RecvTimeoutError::Timeout)
    ));
    kill_now(&mut dead);
    let producer = q
        .producer()
        .expect("the dead producer's end is recovered and freed");
    for lap in 0..3 {
        for i in 0..4 {
            producer
                .try_send(&sealed(&format!("lap-{lap}-{i}")))
                .unwrap();
        }
        for i in 0..4 {
            let m = consumer.try_recv().unwrap();
            assert!(!m.redelivered());
            assert_eq!(unseal(&m), format!("lap-{lap}-{i}"));
        }
    }
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    let stats = q.recovery_stats();
    eprintln!("killed exclusive producer: {stats:?}");
    assert_eq!(stats.reaped, 1, "{stats:?}");
    assert_eq!((stats.skipped, stats.redelivered), (0, 0), "{stats:?}");
}

/// A consumer killed holding a message (after later ones were sent): the next consumer,
/// refused while it lived, gets that message again, flagged, then the rest in order, and
/// nothing acknowledged before comes back. Killed twice over the same message.
#[test]
fn killed_exclusive_consumer_holding_a_message_is_redelivered_flagged() {
    let dir = TempDir::new("killed-excl-consumer");
    let path = dir.join("q");
    let q = exclusive_queue(&path);
    let producer = q.producer().unwrap();
    {
        let consumer = q.consumer().unwrap();
        for i in 0..6 {
            producer.send(&sealed(&format!("acked-{i}"))).unwrap();
            assert_eq!(unseal(&consumer.try_recv().unwrap()), format!("acked-{i}"));
        }
    }
    producer.send(&sealed("M")).unwrap();
    let mut dead = parked_child(&dir, "recv_one", &[s(&path)], "consumer-received");
    producer.send(&sealed("after-0")).unwrap();
    assert!(
        is_end_taken(q.consumer()),
        "a second consumer while the first lives"
    );
    assert_eq!(q.repair().unwrap(), RecoveryStats::default());
    assert_eq!(q.recovery_stats(), RecoveryStats::default());
    kill_now(&mut dead);
    // The next consumer (its attach reaps the dead one) takes M again and dies holding it.
    let mut dead = parked_child(&dir, "recv_one", &[s(&path)], "consumer-received");
    assert_eq!(q.recovery_stats().redelivered, 1);
    kill_now(&mut dead);
    let consumer = q
        .consumer()
        .expect("the dead consumer's end is recovered and freed");
    let m = consumer.try_recv().expect("the dead consumer's message");
    assert!(m.redelivered(), "a redelivered message must be flagged");
    assert_eq!(unseal(&m), "M");
    drop(m);
    let m = consumer.try_recv().unwrap();
    assert!(
        !m.redelivered(),
        "never delivered to the dead, so not flagged"
    );
    assert_eq!(unseal(&m), "after-0");
    drop(m);
    for i in 1..10 {
        producer.send(&sealed(&format!("after-{i}"))).unwrap();
        let m = consumer.try_recv().unwrap();
        assert!(!m.redelivered());
        assert_eq!(unseal(&m), format!("after-{i}"));
    }
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    let stats = q.recovery_stats();
    eprintln!("killed exclusive consumer: {stats:?}");
    assert_eq!(stats.reaped, 2, "{stats:?}");
    // The second death finds M flagged already: the exclusive ring counts a message the
    // first time it is flagged (the shared ring counts each death's).
    assert_eq!(stats.redelivered, 1, "{stats:?}");
    assert_eq!(stats.skipped, 0, "{stats:?}");
}

/// A live consumer holding a message for a second: every attempt to attach a second consumer
/// is refused, repairs meanwhile do nothing, and its acknowledgement takes.
#[test]
fn slow_live_exclusive_consumer_is_never_robbed() {
    let dir = TempDir::new("slow-excl-consumer");
    let path = dir.join("q");
    let q = exclusive_queue(&path);
    let producer = q.producer().unwrap();
    producer.send(&sealed("held")).unwrap();
    let (holding, acked) = (dir.join("holding"), dir.join("acked"));
    let mut slow = child("slow_consumer", &[s(&path), s(&holding), s(&acked)]);
    wait_ready(&mut slow, &holding);
    let mut refused = 0;
    while !acked.exists() {
        assert!(
            is_end_taken(q.consumer()),
            "a live consumer's end was taken"
        );
        assert_eq!(q.repair().unwrap(), RecoveryStats::default());
        refused += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    slow.expect_success(HANG);
    eprintln!("slow exclusive consumer: {refused} attaches refused while it held its message");
    let consumer = q.consumer().unwrap();
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    for i in 0..4 {
        producer.try_send(&sealed(&format!("next-{i}"))).unwrap();
    }
    for i in 0..4 {
        assert_eq!(unseal(&consumer.try_recv().unwrap()), format!("next-{i}"));
    }
    assert_eq!(q.recovery_stats(), RecoveryStats::default());
}

// ---------------------------------------------------------------------------------------------
// Request-reply
// ---------------------------------------------------------------------------------------------

#[test]
fn killed_server_after_taking_a_request_is_served_by_another_and_client_gets_one_reply() {
    let dir = TempDir::new("killed-server");
    let path = dir.join("svc");
    let opts = ServiceOptions::new()
        .max_clients(4)
        .max_servers(4)
        .request_capacity(8)
        .reply_capacity(8)
        .max_message(MAX);
    let svc = Service::create(&path, &opts).unwrap();
    let client = svc.client().unwrap();
    let r1 = client.send(&sealed("R1")).unwrap();
    let (dead_log, dead_ready) = (dir.join("dead.log"), dir.join("dead-ready"));
    let mut dead = parked_child(
        &dir,
        "serve",
        &[s(&path), s(&dead_log), s(&dead_ready)],
        "server-received",
    );
    let (log, ready) = (dir.join("live.log"), dir.join("live-ready"));
    let mut live = child("serve", &[s(&path), s(&log), s(&ready)]);
    wait_ready(&mut live, &ready);
    // The live server waits on an empty ring, sweeping for the dead every stall check; the
    // parked server is alive, so nothing is taken from it.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(svc.repair().unwrap(), RecoveryStats::default());
    assert_eq!(svc.recovery_stats(), RecoveryStats::default());
    assert!(log_lines(&log).is_empty());

    kill_now(&mut dead);
    let killed_at = Instant::now();
    let reply = client
        .wait_timeout(r1, RECOVERY_GUARD)
        .expect("the request a dead server took is served by another");
    eprintln!("killed server: reply after {:?}", killed_at.elapsed());
    assert_eq!(unseal(reply.payload()), "R1|r=1");
    drop(reply);
    assert_eq!(client.outstanding(), 0);
    // Later requests get their own replies, and no second reply to R1 turns up.
    for i in 2..6 {
        let reply = client
            .request_timeout(&sealed(&format!("R{i}")), HANG)
            .unwrap();
        assert_eq!(unseal(reply.payload()), format!("R{i}|r=0"));
    }
    let reply = client.request_timeout(&sealed("STOP"), HANG).unwrap();
    assert_eq!(unseal(reply.payload()), "STOP|r=0");
    drop(reply);
    live.expect_success(HANG);
    assert_eq!(
        log_lines(&log),
        ["R1 1", "R2 0", "R3 0", "R4 0", "R5 0", "STOP 0"],
        "each request served once by the live server"
    );
    assert!(log_lines(&dead_log).is_empty());
    assert_eq!(client.outstanding(), 0);
    assert_eq!(svc.queued_requests(), 0);
    let stats = svc.recovery_stats();
    eprintln!("killed server: {stats:?}");
    assert_eq!(stats.redelivered, 1, "{stats:?}");
    assert!(stats.reaped >= 1, "{stats:?}");
}

/// One request from `client`, served by `server` (who must find it next), and its reply.
fn round_trip(client: &mut Client, server: &Server, text: &str) {
    let pending = client.send(&sealed(text)).unwrap();
    let req = server.recv_timeout(HANG).unwrap();
    assert_eq!(unseal(req.payload()), text);
    assert!(!req.redelivered());
    let d = req.reply(&sealed(&format!("re:{text}"))).unwrap();
    assert_eq!(d, Delivery::Delivered);
    let reply = client.wait_timeout(pending, HANG).unwrap();
    assert_eq!(unseal(reply.payload()), format!("re:{text}"));
}

/// Serves the next `n` requests, which must be "A0".."A<n-1>"; returns how each reply went.
fn serve_dead_clients_requests(server: &Server, n: usize) -> Vec<Delivery> {
    (0..n)
        .map(|i| {
            let req = server.recv_timeout(HANG).unwrap();
            assert_eq!(unseal(req.payload()), format!("A{i}"));
            req.reply(&sealed(&format!("re:A{i}")))
                .expect("a reply to a dead client neither blocks nor fails")
        })
        .collect()
}

#[test]
fn killed_client_with_requests_in_flight_frees_its_slot_and_others_are_unaffected() {
    let dir = TempDir::new("killed-client");
    let path = dir.join("svc");
    let opts = ServiceOptions::new()
        .max_clients(2)
        .max_servers(2)
        .request_capacity(16)
        .reply_capacity(8)
        .max_message(MAX);
    let svc = Service::create(&path, &opts).unwrap();
    let server = svc.server().unwrap();
    let mut b = svc.client().unwrap();
    round_trip(&mut b, &server, "B0");

    // 1. A client dies with four requests in flight; they are served (into its dead ring)
    //    before anyone notices it died.
    let ready = dir.join("a1-ready");
    let mut a1 = child("fire_requests", &[s(&path), "4", s(&ready)]);
    wait_ready(&mut a1, &ready);
    assert!(svc.client().is_err(), "max_clients(2): a third client");
    kill_now(&mut a1);
    let pb = b.send(&sealed("B1")).unwrap();
    let deliveries = serve_dead_clients_requests(&server, 4);
    eprintln!("killed client, served before recovery: {deliveries:?}");
    let req = server.recv_timeout(HANG).unwrap();
    assert_eq!(unseal(req.payload()), "B1");
    assert_eq!(req.reply(&sealed("re:B1")).unwrap(), Delivery::Delivered);
    assert_eq!(unseal(b.wait_timeout(pb, HANG).unwrap().payload()), "re:B1");
    // Its entry is free again: a new client attaches (two at once, as before) and gets only
    // its own replies, none of the dead one's.
    let mut c = svc.client().expect("the dead client's entry is reclaimed");
    assert!(svc.client().is_err(), "still at most two clients");
    for i in 0..6 {
        round_trip(&mut c, &server, &format!("C{i}"));
        round_trip(&mut b, &server, &format!("B{}", i + 2));
    }
    assert_eq!(c.outstanding(), 0);
    drop(c);

    // 2. A client dies with four requests in flight and is replaced before they are served:
    //    the replies go nowhere (never to the entry's new owner), and nothing blocks.
    let ready = dir.join("a2-ready");
    let mut a2 = child("fire_requests", &[s(&path), "4", s(&ready)]);
    wait_ready(&mut a2, &ready);
    kill_now(&mut a2);
    let mut d = svc.client().expect("the dead client's entry is reclaimed");
    assert!(svc.client().is_err(), "still at most two clients");
    let deliveries = serve_dead_clients_requests(&server, 4);
    assert_eq!(deliveries, [Delivery::ClientGone; 4]);
    for i in 0..6 {
        round_trip(&mut d, &server, &format!("D{i}"));
        round_trip(&mut b, &server, &format!("B{}", i + 8));
    }
    assert_eq!(d.outstanding(), 0);
    assert_eq!(b.outstanding(), 0);
    assert_eq!(svc.queued_requests(), 0);
    assert!(matches!(server.try_recv(), Err(TryRecvError::Empty)));
    let stats = svc.recovery_stats();
    eprintln!("killed client: {stats:?}");
    assert!(stats.reaped >= 2 && stats.released >= 2, "{stats:?}");
    assert_eq!(stats.redelivered, 0, "{stats:?}");
}

// ---------------------------------------------------------------------------------------------
// Publish-subscribe
// ---------------------------------------------------------------------------------------------

#[test]
fn killed_subscriber_in_block_mode_stops_holding_publishers_back() {
    let dir = TempDir::new("killed-subscriber");
    let path = dir.join("ch");
    let opts = PubSubOptions::new()
        .capacity(4)
        .max_message(MAX)
        .overflow(Overflow::Block)
        .max_publishers(2)
        .max_subscribers(4);
    let ch = PubSub::create(&path, &opts).unwrap();
    let ready = dir.join("sub-ready");
    let mut idle = child("idle_subscriber", &[s(&path), s(&ready)]);
    wait_ready(&mut idle, &ready);
    let publisher = ch.publisher().unwrap();
    let mut reader = ch.subscriber(&[]).unwrap();
    let read_one = |reader: &mut shmq::Subscriber, i: u32| {
        let m = reader.recv_timeout(HANG).unwrap();
        assert_eq!(m.topic(), b"t");
        assert_eq!(unseal(m.payload()), format!("m{i}"));
    };
    for i in 0..4 {
        publisher.publish(b"t", &sealed(&format!("m{i}"))).unwrap();
    }
    for i in 0..4 {
        read_one(&mut reader, i);
    }
    // The ring is full of what the idle (live) subscriber has not read: it holds publishers
    // back, and recovery leaves it alone.
    assert!(matches!(
        publisher.try_publish(b"t", &sealed("m4")),
        Err(TrySendError::Full)
    ));
    assert!(matches!(
        publisher.publish_timeout(b"t", &sealed("m4"), Duration::from_millis(150)),
        Err(SendTimeoutError::Timeout)
    ));
    assert_eq!(ch.repair().unwrap(), RecoveryStats::default());

    std::thread::scope(|scope| {
        let blocked =
            scope.spawn(|| publisher.publish_timeout(b"t", &sealed("m4"), RECOVERY_GUARD));
        // Let it block and run a few liveness checks against the live subscriber.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!blocked.is_finished(), "published past a live subscriber");
        assert_eq!(ch.recovery_stats(), RecoveryStats::default());
        kill_now(&mut idle);
        let killed_at = Instant::now();
        blocked
            .join()
            .unwrap()
            .expect("the blocked publish completes once the subscriber is dead");
        eprintln!(
            "killed subscriber: publish went through {:?} after the kill",
            killed_at.elapsed()
        );
    });
    read_one(&mut reader, 4);
    // Publishing flows again, over several laps, gated only by the live reader.
    for i in 5..17 {
        publisher
            .publish_timeout(b"t", &sealed(&format!("m{i}")), HANG)
            .unwrap();
        read_one(&mut reader, i);
    }
    assert_eq!(ch.published(), 17);
    let stats = ch.recovery_stats();
    eprintln!("killed subscriber: {stats:?}");
    assert!(stats.released >= 1 && stats.reaped >= 1, "{stats:?}");
}

#[test]
fn killed_publisher_mid_write_is_skipped() {
    let dir = TempDir::new("killed-publisher");
    let path = dir.join("ch");
    let opts = PubSubOptions::new()
        .capacity(16)
        .max_message(MAX)
        .overflow(Overflow::DropOldest)
        .max_publishers(4)
        .max_subscribers(4);
    let ch = PubSub::create(&path, &opts).unwrap();
    let publisher = ch.publisher().unwrap();
    let mut all = ch.subscriber(&[]).unwrap();
    let mut filtered = ch.subscriber(&[b"t/".as_slice()]).unwrap();
    publisher.publish(b"t/0", &sealed("p0")).unwrap();
    let mut dead = parked_child(&dir, "publish_one", &[s(&path)], "publisher-claimed");
    for i in 1..6 {
        publisher
            .publish(format!("t/{i}").as_bytes(), &sealed(&format!("p{i}")))
            .unwrap();
    }
    let check = |m: shmq::TopicMessage<'_>, i: u32| {
        assert_eq!(m.topic(), format!("t/{i}").as_bytes());
        assert_eq!(unseal(m.payload()), format!("p{i}"));
    };
    check(all.try_recv().unwrap(), 0);
    // The slot being written by a live publisher holds subscribers at it; nothing skips it.
    assert!(matches!(all.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(ch.repair().unwrap(), RecoveryStats::default());
    assert!(matches!(
        all.recv_timeout(Duration::from_millis(150)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert_eq!(ch.recovery_stats(), RecoveryStats::default());

    kill_now(&mut dead);
    let killed_at = Instant::now();
    for i in 1..6 {
        let m = all
            .recv_timeout(RECOVERY_GUARD)
            .unwrap_or_else(|e| panic!("message {i} after the publisher died: {e:?}"));
        check(m, i);
        if i == 1 {
            eprintln!(
                "killed publisher: flowing again after {:?}",
                killed_at.elapsed()
            );
        }
    }
    for i in 0..6 {
        check(filtered.recv_timeout(RECOVERY_GUARD).unwrap(), i);
    }
    // More laps: nothing stale or torn, nothing from the dead publisher.
    for i in 6..40 {
        publisher
            .publish(format!("t/{i}").as_bytes(), &sealed(&format!("p{i}")))
            .unwrap();
        check(all.recv_timeout(HANG).unwrap(), i);
        check(filtered.recv_timeout(HANG).unwrap(), i);
    }
    assert!(matches!(all.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(filtered.try_recv(), Err(TryRecvError::Empty)));
    let stats = ch.recovery_stats();
    eprintln!("killed publisher: {stats:?}");
    assert!(stats.skipped >= 1 && stats.reaped >= 1, "{stats:?}");
}

#[test]
fn killed_publisher_in_block_mode_does_not_wedge_the_ring() {
    let dir = TempDir::new("killed-block-publisher");
    let path = dir.join("ch");
    let opts = PubSubOptions::new()
        .capacity(2)
        .max_message(MAX)
        .overflow(Overflow::Block)
        .max_publishers(2)
        .max_subscribers(2);
    let ch = PubSub::create(&path, &opts).unwrap();
    let publisher = ch.publisher().unwrap();
    let mut sub = ch.subscriber(&[]).unwrap();
    let publish = |i: u32, timeout: Duration| {
        publisher.publish_timeout(
            format!("t/{i}").as_bytes(),
            &sealed(&format!("p{i}")),
            timeout,
        )
    };
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            (0..9)
                .map(|_| {
                    let m = sub.recv_timeout(RECOVERY_GUARD).unwrap();
                    let text = unseal(m.payload());
                    assert_eq!(m.topic(), format!("t/{}", &text[1..]).as_bytes());
                    text
                })
                .collect::<Vec<_>>()
        });
        publish(0, HANG).unwrap();
        // The child claims position 1 and dies there; position 2 reuses slot 0, position 3
        // needs the dead publisher's slot.
        let mut dead = parked_child(&dir, "publish_one", &[s(&path)], "publisher-claimed");
        publish(2, HANG).unwrap();
        assert!(matches!(
            publish(3, Duration::from_millis(150)),
            Err(SendTimeoutError::Timeout)
        ));
        assert_eq!(ch.repair().unwrap(), RecoveryStats::default());
        let blocked = scope.spawn(|| publish(3, RECOVERY_GUARD));
        std::thread::sleep(Duration::from_millis(100));
        kill_now(&mut dead);
        blocked
            .join()
            .unwrap()
            .expect("a publisher waiting for a dead publisher's slot goes on");
        for i in 4..10 {
            publish(i, HANG).unwrap();
        }
        let got = reader.join().unwrap();
        let want: Vec<String> = [0, 2, 3, 4, 5, 6, 7, 8, 9]
            .iter()
            .map(|i| format!("p{i}"))
            .collect();
        assert_eq!(got, want);
    });
    let stats = ch.recovery_stats();
    eprintln!("killed publisher, block mode: {stats:?}");
    assert!(stats.skipped >= 1 && stats.reaped >= 1, "{stats:?}");
}

#[test]
fn killed_participants_free_their_table_entries() {
    let dir = TempDir::new("killed-entries");
    // A pipeline for two participants: a producer here, a consumer in a child that dies
    // holding a message.
    let path = dir.join("q");
    let opts = PipelineOptions::new()
        .capacity(4)
        .max_message(MAX)
        .max_participants(2);
    let q = Pipeline::create(&path, &opts).unwrap();
    let producer = q.producer().unwrap();
    producer.send(&sealed("M")).unwrap();
    let mut dead = parked_child(&dir, "recv_one", &[s(&path)], "consumer-received");
    assert!(
        q.consumer().is_err(),
        "max_participants(2): a third participant"
    );
    kill_now(&mut dead);
    let consumer = q
        .consumer()
        .expect("the dead consumer's entry is reclaimed");
    let m = consumer.recv_timeout(RECOVERY_GUARD).unwrap();
    assert!(m.redelivered());
    assert_eq!(unseal(&m), "M");
    drop(m);
    assert!(q.consumer().is_err(), "still at most two participants");
    assert_eq!(q.recovery_stats().reaped, 1);

    // A channel for one subscriber, taken by a child that dies.
    let path = dir.join("ch");
    let opts = PubSubOptions::new()
        .capacity(4)
        .max_message(MAX)
        .max_publishers(1)
        .max_subscribers(1);
    let ch = PubSub::create(&path, &opts).unwrap();
    let ready = dir.join("sub-ready");
    let mut idle = child("idle_subscriber", &[s(&path), s(&ready)]);
    wait_ready(&mut idle, &ready);
    assert!(ch.subscriber(&[]).is_err(), "max_subscribers(1): a second");
    kill_now(&mut idle);
    let mut sub = ch
        .subscriber(&[])
        .expect("the dead subscriber's place is reclaimed");
    assert!(ch.subscriber(&[]).is_err(), "still at most one subscriber");
    let publisher = ch.publisher().unwrap();
    publisher.publish(b"t", &sealed("after")).unwrap();
    assert_eq!(unseal(sub.recv_timeout(HANG).unwrap().payload()), "after");
    let stats = ch.recovery_stats();
    assert!(stats.reaped == 1 && stats.released == 1, "{stats:?}");
}

// ---------------------------------------------------------------------------------------------
// Chaos: producers and consumers killed and restarted at random moments
// ---------------------------------------------------------------------------------------------

/// A chaos message: producer id (u32), incarnation (u32), sequence (u64), FNV-1a of the rest
/// (u64), then 0 to `MAX - CHAOS_HDR` bytes derived from the first three.
const CHAOS_HDR: usize = 24;
/// Largest burst a chaos producer sends in one go (and so, for `send_batch`, the most
/// messages that can be sent but not yet logged when it dies).
const BURST: u64 = 48;
const CHAOS_PRODUCERS: u32 = 3;
const CHAOS_CONSUMERS: u32 = 3;

fn chaos_message(id: u32, inc: u32, seq: u64, out: &mut Vec<u8>) {
    let mut rng = Rng::new(u64::from(id) << 56 ^ u64::from(inc) << 32 ^ seq.rotate_left(17));
    let len = CHAOS_HDR + rng.below((MAX - CHAOS_HDR + 1) as u64) as usize;
    out.clear();
    out.resize(len, 0);
    out[0..4].copy_from_slice(&id.to_le_bytes());
    out[4..8].copy_from_slice(&inc.to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    rng.fill(&mut out[CHAOS_HDR..]);
    let sum = fnv1a(&out[..16]) ^ fnv1a(&out[CHAOS_HDR..]).rotate_left(1);
    out[16..24].copy_from_slice(&sum.to_le_bytes());
}

/// Checks a received chaos message byte for byte; returns (id, incarnation, seq) or why it is
/// torn.
fn check_chaos(m: &[u8], scratch: &mut Vec<u8>) -> Result<(u32, u32, u64), String> {
    if m.len() < CHAOS_HDR {
        return Err(format!("{} bytes: too short", m.len()));
    }
    let id = u32::from_le_bytes(m[0..4].try_into().unwrap());
    let inc = u32::from_le_bytes(m[4..8].try_into().unwrap());
    let seq = u64::from_le_bytes(m[8..16].try_into().unwrap());
    let sum = u64::from_le_bytes(m[16..24].try_into().unwrap());
    if sum != fnv1a(&m[..16]) ^ fnv1a(&m[CHAOS_HDR..]).rotate_left(1) {
        return Err(format!(
            "bad checksum (claims {id}/{inc}/{seq}, {} bytes)",
            m.len()
        ));
    }
    if id >= CHAOS_PRODUCERS {
        return Err(format!("bad producer id {id}"));
    }
    chaos_message(id, inc, seq, scratch);
    if m != scratch.as_slice() {
        return Err(format!("bytes differ from message {id}/{inc}/{seq}"));
    }
    Ok((id, inc, seq))
}

/// args: path, id, incarnation, log, stop file, seed. Sends bursts until the stop file
/// appears, logging "sent <id> <inc> <seq>" after each send returns, and "full <id> <inc>
/// <seq>" when it finds the queue full. Incarnation % 3 picks the API: send (after a
/// try_send), loans written in place, or send_batch.
fn chaos_producer(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let id: u32 = args[1].parse().unwrap();
    let inc: u32 = args[2].parse().unwrap();
    let log = LineLog::create(&args[3]);
    let stop = Path::new(&args[4]);
    let mut rng = Rng::new(args[5].parse().unwrap());
    let producer = q.producer().unwrap();
    let mut buf = Vec::with_capacity(MAX);
    let mut seq: u64 = 0;
    while !stop.exists() {
        let burst = 1 + rng.below(BURST);
        match inc % 3 {
            0 => {
                for _ in 0..burst {
                    chaos_message(id, inc, seq, &mut buf);
                    match producer.try_send(&buf) {
                        Ok(()) => {}
                        Err(TrySendError::Full) => {
                            log.line(&format!("full {id} {inc} {seq}\n"));
                            producer.send(&buf).unwrap();
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                    log.line(&format!("sent {id} {inc} {seq}\n"));
                    seq += 1;
                }
            }
            1 => {
                for _ in 0..burst {
                    chaos_message(id, inc, seq, &mut buf);
                    let mut loan = producer.loan(buf.len()).unwrap();
                    // Body first, header last, sometimes slowly: a kill in between leaves a
                    // new body under the header of the slot's previous message.
                    loan[CHAOS_HDR..].copy_from_slice(&buf[CHAOS_HDR..]);
                    if rng.below(16) == 0 {
                        std::thread::sleep(Duration::from_micros(rng.below(3000)));
                    }
                    loan[..CHAOS_HDR].copy_from_slice(&buf[..CHAOS_HDR]);
                    loan.commit().unwrap();
                    log.line(&format!("sent {id} {inc} {seq}\n"));
                    seq += 1;
                }
            }
            _ => {
                let batch: Vec<Vec<u8>> = (seq..seq + burst)
                    .map(|k| {
                        let mut m = Vec::new();
                        chaos_message(id, inc, k, &mut m);
                        m
                    })
                    .collect();
                let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                producer.send_batch(&refs).unwrap();
                for k in seq..seq + burst {
                    log.line(&format!("sent {id} {inc} {k}\n"));
                }
                seq += burst;
            }
        }
        std::thread::sleep(Duration::from_micros(rng.below(4000)));
    }
}

/// args: path, id, incarnation, log, drain file, seed. Receives until the drain file exists
/// and nothing has come for a second; checks every message byte for byte (a torn one is
/// logged as "torn ..." and fails the process) and logs "got <id> <inc> <seq> <0/1>" (the
/// redelivered flag) before acknowledging it. Incarnation % 3 picks the style: blocking
/// receives with a timeout, try_recv polling, or two messages held at once.
fn chaos_consumer(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let inc: u32 = args[2].parse().unwrap();
    let log = LineLog::create(&args[3]);
    let drain = Path::new(&args[4]);
    let mut rng = Rng::new(args[5].parse().unwrap());
    let consumer = q.consumer().unwrap();
    let mut scratch = Vec::with_capacity(MAX);
    let mut take = |m: &shmq::Message<'_>| match check_chaos(m, &mut scratch) {
        Ok((id, pinc, seq)) => {
            let r = u8::from(m.redelivered());
            log.line(&format!("got {id} {pinc} {seq} {r}\n"));
        }
        Err(why) => {
            log.line(&format!("torn {why}\n"));
            panic!("consumer received a torn message: {why}");
        }
    };
    // Since when nothing has come while draining.
    let mut idle: Option<Instant> = None;
    loop {
        let first = match inc % 3 {
            1 => consumer.try_recv().map_err(shmq::Error::from),
            _ => consumer
                .recv_timeout(Duration::from_millis(100))
                .map_err(shmq::Error::from),
        };
        let m = match first {
            Ok(m) => m,
            Err(shmq::Error::Timeout | shmq::Error::Empty) => {
                if inc % 3 == 1 {
                    std::thread::sleep(Duration::from_millis(2));
                }
                if drain.exists() && idle.get_or_insert_with(Instant::now).elapsed() >= SLOW {
                    return;
                }
                continue;
            }
            Err(e) => panic!("{e:?}"),
        };
        idle = None;
        let second = if inc % 3 == 2 {
            consumer.try_recv().ok()
        } else {
            None
        };
        take(&m);
        if let Some(m2) = &second {
            take(m2);
        }
        if rng.below(64) == 0 {
            // Hold it a while: kills land on held messages, and producers come round to it.
            std::thread::sleep(Duration::from_millis(rng.below(20)));
        }
        drop(second);
        drop(m);
    }
}

struct ChaosChild {
    producer: bool,
    id: u32,
    inc: u32,
    proc: ChildProc,
}

/// The chaos tests' duration (`SHMQ_CHAOS_SECS`, default 60) and seed (`SHMQ_CHAOS_SEED`,
/// default from the clock).
fn chaos_params() -> (u64, u64) {
    let secs: u64 = std::env::var("SHMQ_CHAOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("SHMQ_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    (secs, seed)
}

/// Shared ends: three producers and three consumers, killed and restarted at random. Half of
/// `SHMQ_CHAOS_SECS` (the exclusive mode runs the other half).
#[test]
fn chaos_killed_and_restarted_producers_and_consumers_lose_nothing_acknowledged() {
    chaos_pipeline(false);
}

/// Exclusive ends (`single_producer().single_consumer()`): the one producer and the one
/// consumer killed and restarted at random; each restart's attach reaps its dead predecessor
/// and recovers its end. Half of `SHMQ_CHAOS_SECS`.
#[test]
fn chaos_killed_and_restarted_exclusive_producer_and_consumer_lose_nothing_acknowledged() {
    chaos_pipeline(true);
}

fn chaos_pipeline(exclusive: bool) {
    let (secs, seed) = chaos_params();
    let secs = secs.div_ceil(2);
    let mode = if exclusive { "exclusive" } else { "shared" };
    eprintln!("chaos ({mode}): {secs} s, seed {seed} (set SHMQ_CHAOS_SEED to replay the schedule)");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new(&format!("chaos-{mode}"));
    let path = dir.join("q");
    let capacity = 64;
    let mut options = PipelineOptions::new()
        .capacity(capacity)
        .max_message(MAX)
        .max_participants(32);
    if exclusive {
        options = options.single_producer().single_consumer();
    }
    let (producers, consumers) = if exclusive {
        (1, 1)
    } else {
        (CHAOS_PRODUCERS, CHAOS_CONSUMERS)
    };
    let q = Pipeline::create(&path, &options).unwrap();
    let (stop, drain) = (dir.join("stop"), dir.join("drain"));
    let start = |producer: bool, id: u32, inc: u32, rng: &mut Rng| {
        let (role, kind, flag) = if producer {
            ("chaos_producer", "sent", &stop)
        } else {
            ("chaos_consumer", "got", &drain)
        };
        let log = dir.join(&format!("{kind}-{id}-{inc}.log"));
        let child_seed = rng.next_u64().to_string();
        let proc = child(
            role,
            &[
                s(&path),
                &id.to_string(),
                &inc.to_string(),
                s(&log),
                s(flag),
                &child_seed,
            ],
        );
        ChaosChild {
            producer,
            id,
            inc,
            proc,
        }
    };
    let mut children: Vec<ChaosChild> = Vec::new();
    for id in 0..consumers {
        children.push(start(false, id, 0, &mut rng));
    }
    for id in 0..producers {
        children.push(start(true, id, 0, &mut rng));
    }
    let check_alive = |children: &mut [ChaosChild]| {
        for c in children.iter_mut() {
            if let Some(status) = c.proc.try_wait() {
                panic!(
                    "chaos {} {} (incarnation {}) exited by itself: {status}",
                    c.proc.role(),
                    c.id,
                    c.inc
                );
            }
        }
    };

    let began = Instant::now();
    let (mut kills, mut full_seen, mut samples) = ([0u32; 2], 0u32, 0u32);
    while began.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(50 + rng.below(451)));
        check_alive(&mut children);
        samples += 1;
        if q.len() >= capacity {
            full_seen += 1;
        }
        let victim = rng.below(children.len() as u64) as usize;
        let c = &mut children[victim];
        let status = c.proc.kill();
        assert_eq!(status.signal(), Some(nix::libc::SIGKILL), "{status}");
        kills[usize::from(c.producer)] += 1;
        let (producer, id, inc) = (c.producer, c.id, c.inc + 1);
        children[victim] = start(producer, id, inc, &mut rng);
    }
    check_alive(&mut children);

    // No more kills. Producers stop at their next burst boundary; then consumers drain what
    // is left (a dead consumer's messages come back through their stall checks) and leave
    // after a second without messages.
    signal(&stop);
    for c in children.iter_mut().filter(|c| c.producer) {
        c.proc.expect_success(HANG);
    }
    signal(&drain);
    for c in children.iter_mut().filter(|c| !c.producer) {
        c.proc.expect_success(HANG);
    }
    // Nothing may be left behind.
    q.repair().unwrap();
    let last = q.consumer().unwrap();
    let mut leftovers = Vec::new();
    let mut scratch = Vec::new();
    while let Ok(m) = last.recv_timeout(Duration::from_millis(200)) {
        leftovers.push((check_chaos(&m, &mut scratch), m.redelivered()));
    }
    assert!(
        leftovers.is_empty(),
        "consumers left after a second without messages, yet {} were still queued: {:?}",
        leftovers.len(),
        &leftovers[..leftovers.len().min(10)]
    );

    let report = check_chaos_logs(dir.path());
    let stats = q.recovery_stats();
    eprintln!(
        "chaos ({mode}): {} s, seed {seed}: {} producer and {} consumer kills; {} acknowledged-as-sent, \
         {} receptions ({} flagged redelivered) of {} distinct messages, {} received twice or \
         more; producers found the queue full {} times (parent saw it full in {full_seen} of \
         {samples} samples); {stats:?}",
        began.elapsed().as_secs(),
        kills[1],
        kills[0],
        report.sent,
        report.receptions,
        report.flagged,
        report.distinct,
        report.duplicates,
        report.full,
    );
    assert!(report.sent > 0 && kills[0] + kills[1] > 0);
    assert!(stats.reaped >= 1, "{stats:?}");
}

fn signal(path: &Path) {
    std::fs::write(path, b"go").unwrap();
}

struct ChaosReport {
    sent: usize,
    receptions: usize,
    flagged: usize,
    distinct: usize,
    duplicates: usize,
    full: usize,
}

/// Reads every log of the chaos test and checks guarantees 1–3 against them; panics with
/// examples on any violation.
fn check_chaos_logs(dir: &Path) -> ChaosReport {
    type Key = (u32, u32, u64);
    let mut sent: Vec<Key> = Vec::new();
    let mut last_sent: HashMap<(u32, u32), u64> = HashMap::new();
    let mut full = 0;
    // Per message: (receptions, receptions flagged redelivered).
    let mut got: HashMap<Key, (u32, u32)> = HashMap::new();
    let mut problems: Vec<String> = Vec::new();
    let mut receptions = 0;
    let mut flagged = 0;
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    let num = |w: Option<&str>| w.and_then(|w| w.parse::<u64>().ok());
    for name in &names {
        // Within one consumer, first deliveries of one producer incarnation's messages come
        // in sequence order (FIFO per producer).
        let mut order: HashMap<(u32, u32), u64> = HashMap::new();
        for line in log_lines(&dir.join(name)) {
            let mut w = line.split(' ');
            let kind = w.next().unwrap_or("");
            if kind == "torn" {
                problems.push(format!("{name}: {line}"));
                continue;
            }
            let (Some(id), Some(inc), Some(seq)) = (num(w.next()), num(w.next()), num(w.next()))
            else {
                continue;
            };
            let key = (id as u32, inc as u32, seq);
            match (kind, num(w.next())) {
                ("sent", None) => {
                    sent.push(key);
                    let last = last_sent.entry((key.0, key.1)).or_insert(seq);
                    *last = (*last).max(seq);
                }
                ("full", None) => full += 1,
                ("got", Some(r @ (0 | 1))) => {
                    receptions += 1;
                    let e = got.entry(key).or_default();
                    e.0 += 1;
                    if r == 1 {
                        flagged += 1;
                        e.1 += 1;
                    } else {
                        if let Some(&prev) = order.get(&(key.0, key.1)) {
                            if seq <= prev {
                                problems.push(format!(
                                    "{name}: {key:?} first delivered after seq {prev} of the \
                                     same producer"
                                ));
                            }
                        }
                        order.insert((key.0, key.1), seq);
                    }
                }
                _ => {} // a torn last line that happens to split into numbers
            }
        }
    }
    let mut lost = 0;
    for key in &sent {
        if !got.contains_key(key) {
            lost += 1;
            if lost <= 10 {
                problems.push(format!("{key:?}: acknowledged as sent, never received"));
            }
        }
    }
    if lost > 10 {
        problems.push(format!("... {lost} acknowledged messages lost in all"));
    }
    let mut duplicates = 0;
    for (key, &(n, r)) in &got {
        if n > 1 {
            duplicates += 1;
        }
        if r + 1 < n {
            problems.push(format!(
                "{key:?}: received {n} times, only {r} flagged redelivered"
            ));
        }
        // A message received but never logged as sent: its producer died between the send
        // and the log line, so it is among the last of its incarnation.
        let limit = last_sent
            .get(&(key.0, key.1))
            .map_or(BURST, |&l| l + BURST + 1);
        if key.2 >= limit {
            problems.push(format!(
                "{key:?}: received, but its producer logged nothing near it (up to {limit})"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems[..problems.len().min(30)].join("\n")
    );
    ChaosReport {
        sent: sent.len(),
        receptions,
        flagged,
        distinct: got.len(),
        duplicates,
        full,
    }
}

// ---------------------------------------------------------------------------------------------
// Chaos: servers killed and restarted at random moments
// ---------------------------------------------------------------------------------------------

/// args: path, log, seed. Serves until killed: logs "served <text> <0/1>" (the redelivered
/// flag), then replies "re:<text>"; now and then holds a request a while first.
fn chaos_server(args: &[String]) {
    let svc = Service::open(&args[0]).unwrap();
    let log = LineLog::create(&args[1]);
    let mut rng = Rng::new(args[2].parse().unwrap());
    let server = svc.server().unwrap();
    loop {
        let req = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(req) => req,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(e) => panic!("{e:?}"),
        };
        let text = unseal(req.payload());
        log.line(&format!("served {text} {}\n", u8::from(req.redelivered())));
        if rng.below(16) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(20)));
        }
        req.reply(&sealed(&format!("re:{text}"))).unwrap();
    }
}

#[test]
fn chaos_killed_and_restarted_servers_answer_every_request_once() {
    let (secs, seed) = chaos_params();
    let secs = (secs / 6).max(2);
    eprintln!("server chaos: {secs} s, seed {seed}");
    let mut rng = Rng::new(seed ^ 0x5e7e);
    let dir = TempDir::new("server-chaos");
    let path = dir.join("svc");
    let opts = ServiceOptions::new()
        .max_clients(4)
        .max_servers(16)
        .request_capacity(16)
        .reply_capacity(4)
        .max_message(MAX);
    let svc = Service::create(&path, &opts).unwrap();
    let start = |n: u32, rng: &mut Rng| {
        let log = dir.join(&format!("server-{n}.log"));
        child(
            "chaos_server",
            &[s(&path), s(&log), &rng.next_u64().to_string()],
        )
    };
    let mut started = 0;
    let mut servers: Vec<ChildProc> = (0..3)
        .map(|_| {
            started += 1;
            start(started, &mut rng)
        })
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let answered: u64 = std::thread::scope(|scope| {
        // Two clients, each with up to four requests in flight, every reply checked.
        let clients: Vec<_> = (0..2)
            .map(|c| {
                let (svc, stop) = (&svc, &stop);
                scope.spawn(move || {
                    let client = svc.client().unwrap();
                    let mut in_flight = std::collections::VecDeque::new();
                    let mut seq = 0u64;
                    loop {
                        let stopping = stop.load(Ordering::Relaxed);
                        if !stopping && in_flight.len() < 4 {
                            let text = format!("c{c}-{seq}");
                            in_flight.push_back((client.send(&sealed(&text)).unwrap(), text));
                            seq += 1;
                            continue;
                        }
                        let Some((pending, text)) = in_flight.pop_front() else {
                            return seq;
                        };
                        let reply = client
                            .wait_timeout(pending, RECOVERY_GUARD)
                            .unwrap_or_else(|e| panic!("no reply to {text}: {e:?}"));
                        assert_eq!(unseal(reply.payload()), format!("re:{text}"));
                    }
                })
            })
            .collect();
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(30 + rng.below(271)));
            let victim = rng.below(servers.len() as u64) as usize;
            if let Some(status) = servers[victim].try_wait() {
                panic!("a chaos server exited by itself: {status}");
            }
            servers[victim].kill();
            started += 1;
            servers[victim] = start(started, &mut rng);
        }
        stop.store(true, Ordering::Relaxed);
        clients.into_iter().map(|c| c.join().unwrap()).sum()
    });
    for sv in &mut servers {
        kill_now(sv);
    }
    // Every request served at least once (a reply came), and each serving after the first
    // flagged redelivered.
    let mut served: HashMap<String, (u32, u32)> = HashMap::new();
    for n in 1..=started {
        for line in log_lines(&dir.join(&format!("server-{n}.log"))) {
            let mut w = line.split(' ');
            let (Some("served"), Some(text), Some(r @ ("0" | "1")), None) =
                (w.next(), w.next(), w.next(), w.next())
            else {
                continue;
            };
            let e = served.entry(text.to_string()).or_default();
            e.0 += 1;
            e.1 += u32::from(r == "1");
        }
    }
    let twice = served.values().filter(|&&(n, _)| n > 1).count();
    for (text, &(n, r)) in &served {
        assert!(
            r + 1 >= n,
            "{text} served {n} times, {r} flagged redelivered"
        );
    }
    assert!(served.len() as u64 >= answered);
    let stats = svc.recovery_stats();
    eprintln!(
        "server chaos: {answered} requests answered, {} served, {twice} served more than once, \
         {} server processes; {stats:?}",
        served.len(),
        started
    );
}

/// How many waiters are registered on the queue's "not empty" wait cell, read through the
/// file.
fn not_empty_waiters(path: &Path) -> u32 {
    let cell = shmq::layout::RING_CONTROL_OFFSET + shmq::layout::CTL_NOT_EMPTY;
    common::registered_waiters(path, cell as u64)
}

/// A consumer killed while parked in `recv` stays registered on the wait cell; the next send
/// pays one wake-up system call (which wakes nobody) and clears the registration, and the
/// sends after it pay none. Recovery has nothing to do for it.
#[test]
fn killed_parked_consumer_costs_senders_one_wake_up_call_and_no_more() {
    let dir = TempDir::new("parked-death");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &PipelineOptions::new().capacity(8).max_message(MAX)).unwrap();
    let mut c = child("recv_one", &[s(&path)]);
    let parked = common::wait_until(HANG, || not_empty_waiters(&path) == 1);
    assert!(parked, "the child never parked");
    c.kill();
    let calls = shmq::test_hooks::wake_calls();
    assert_eq!(q.repair().unwrap().reaped, 1);
    assert_eq!(
        not_empty_waiters(&path),
        1,
        "the dead waiter's registration"
    );
    let producer = q.producer().unwrap();
    producer.send(&sealed("first")).unwrap();
    assert_eq!(not_empty_waiters(&path), 0, "the send cleared it");
    for i in 0..4 {
        producer.send(&sealed(&format!("after {i}"))).unwrap();
    }
    assert_eq!(
        shmq::test_hooks::wake_calls() - calls,
        1,
        "wake-up system calls after a parked consumer died"
    );
}
