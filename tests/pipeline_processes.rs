//! The pipeline pattern across real processes (the test binary re-executed with a role, see
//! `common`), and its single-process API contract: timeouts, `try_` variants, loans, batches.

mod common;

use common::{
    child, child_with_env, expect_all_succeed, fnv1a, s, uncapped_park, ChildProc, Rng, TempDir,
    HANG,
};
use shmq::layout::{CTL_NOT_EMPTY, CTL_NOT_FULL, RING_CONTROL_OFFSET};
use shmq::test_hooks::wake_calls;
use shmq::{
    Consumer, Message, Pipeline, PipelineOptions, RecvTimeoutError, SendError, SendTimeoutError,
    TryRecvError, TrySendError, WaitStrategy,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Largest message in the process tests.
const MAX: usize = 256;
/// Every stress message starts with: producer id (u32), sequence (u32), FNV-1a of the body (u64).
const HDR: usize = 16;
/// Tells a consumer of the stress test to stop (shorter than any stress message).
const END: &[u8] = b"END";

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "producer" => stress_producer(args),
        "consumer" => stress_consumer(args),
        "recv_one" => recv_one(args),
        "send_one" => send_one(args),
        "send_n" => send_n(args),
        "recv_n" => recv_n(args),
        "echo" => echo(args),
        "time_out_once" => time_out_once(args),
        other => panic!("unknown role {other:?}"),
    });
}

// ---------------------------------------------------------------------------------------------
// Message contents
// ---------------------------------------------------------------------------------------------

fn stress_rng(producer: u32, seq: u32) -> Rng {
    Rng::new(u64::from(producer) << 32 | u64::from(seq))
}

/// The length of stress message `seq` of `producer`: anything from the bare header to `MAX`.
fn stress_len(producer: u32, seq: u32) -> usize {
    HDR + stress_rng(producer, seq).below((MAX - HDR + 1) as u64) as usize
}

/// Writes stress message `seq` of `producer` into `out` (exactly `stress_len` bytes).
fn fill_stress(producer: u32, seq: u32, out: &mut [u8]) {
    let mut rng = stress_rng(producer, seq);
    let len = HDR + rng.below((MAX - HDR + 1) as u64) as usize;
    assert_eq!(out.len(), len);
    rng.fill(&mut out[HDR..]);
    let sum = fnv1a(&out[HDR..]);
    out[0..4].copy_from_slice(&producer.to_le_bytes());
    out[4..8].copy_from_slice(&seq.to_le_bytes());
    out[8..16].copy_from_slice(&sum.to_le_bytes());
}

fn stress_message(producer: u32, seq: u32) -> Vec<u8> {
    let mut v = vec![0; stress_len(producer, seq)];
    fill_stress(producer, seq, &mut v);
    v
}

/// Checks a received stress message (length, checksum, every byte) and returns (producer, seq).
fn check_stress(msg: &[u8]) -> (u32, u32) {
    assert!(
        msg.len() >= HDR,
        "message of {} bytes is too short",
        msg.len()
    );
    let producer = u32::from_le_bytes(msg[0..4].try_into().unwrap());
    let seq = u32::from_le_bytes(msg[4..8].try_into().unwrap());
    let sum = u64::from_le_bytes(msg[8..16].try_into().unwrap());
    assert!(producer < 3, "bad producer id {producer}");
    assert_eq!(
        fnv1a(&msg[HDR..]),
        sum,
        "checksum of message {producer}/{seq}"
    );
    let mut want = [0u8; MAX];
    let len = stress_len(producer, seq);
    assert_eq!(msg.len(), len, "length of message {producer}/{seq}");
    fill_stress(producer, seq, &mut want[..len]);
    assert!(msg == &want[..len], "bytes of message {producer}/{seq}");
    (producer, seq)
}

/// Message `i` of the simple streams: lengths from 0 to `MAX` (both included), random bytes.
fn stream_message(i: u64) -> Vec<u8> {
    let mut rng = Rng::new(i ^ 0x5eed);
    let len = match i % 100 {
        0 => 0,
        1 => MAX,
        _ => rng.below(MAX as u64 + 1) as usize,
    };
    let mut v = vec![0; len];
    rng.fill(&mut v);
    if len >= 8 {
        v[..8].copy_from_slice(&i.to_le_bytes());
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Child roles
// ---------------------------------------------------------------------------------------------

/// args: path, producer id, message count. Producer 0 sends one by one, producer 1 writes into
/// loans (abandoning one now and then), producer 2 sends batches.
fn stress_producer(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let id: u32 = args[1].parse().unwrap();
    let count: u32 = args[2].parse().unwrap();
    let producer = q.producer().unwrap();
    match id {
        0 => {
            let mut buf = [0u8; MAX];
            for seq in 0..count {
                let len = stress_len(id, seq);
                fill_stress(id, seq, &mut buf[..len]);
                producer.send(&buf[..len]).unwrap();
            }
        }
        1 => {
            for seq in 0..count {
                let len = stress_len(id, seq);
                if seq % 97 == 0 {
                    // Written, then abandoned: must never reach anyone.
                    let mut loan = producer.loan(len).unwrap();
                    loan.fill(0xEE);
                    drop(loan);
                }
                let mut loan = producer.loan(len).unwrap();
                fill_stress(id, seq, &mut loan);
                loan.commit().unwrap();
            }
        }
        _ => {
            let mut rng = Rng::new(u64::from(id));
            let mut seq = 0;
            while seq < count {
                let n = (1 + rng.below(8) as u32).min(count - seq);
                let batch: Vec<Vec<u8>> = (seq..seq + n).map(|i| stress_message(id, i)).collect();
                let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                producer.send_batch(&refs).unwrap();
                seq += n;
            }
        }
    }
}

/// args: path, output file, style. Receives until END, checking every message and the order
/// of each producer's messages; writes the (producer, seq) pairs it got to the output file.
fn stress_consumer(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let style: u32 = args[2].parse().unwrap();
    let mut consumer = q.consumer().unwrap();
    let mut got: Vec<u8> = Vec::new();
    let mut last: [Option<u32>; 3] = [None; 3];
    let mut done = false;
    let mut take = |msg: &[u8], redelivered: bool, done: &mut bool| {
        assert!(!*done, "a message after END in the same batch");
        if msg == END {
            *done = true;
            return;
        }
        assert!(!redelivered, "nobody died, yet a message was redelivered");
        let (p, seq) = check_stress(msg);
        if let Some(prev) = last[p as usize] {
            assert!(
                seq > prev,
                "producer {p}: seq {seq} received after {prev} by the same consumer"
            );
        }
        last[p as usize] = Some(seq);
        got.extend_from_slice(&p.to_le_bytes());
        got.extend_from_slice(&seq.to_le_bytes());
    };
    match style {
        0 => {
            consumer.set_wait_strategy(WaitStrategy::Park);
            while !done {
                let m = consumer.recv().unwrap();
                take(&m, m.redelivered(), &mut done);
            }
        }
        1 => {
            while !done {
                consumer
                    .recv_batch(16, |m| take(m, false, &mut done))
                    .unwrap();
            }
        }
        _ => {
            while !done {
                match consumer.recv_timeout(Duration::from_millis(20)) {
                    Ok(m) => take(&m, m.redelivered(), &mut done),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(e) => panic!("recv_timeout: {e}"),
                }
            }
        }
    }
    std::fs::write(&args[1], &got).unwrap();
}

/// args: path, expected message. Parks in `recv` until the message arrives.
fn recv_one(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let mut consumer = q.consumer().unwrap();
    consumer.set_wait_strategy(WaitStrategy::Park);
    let m = consumer.recv().unwrap();
    assert_eq!(&*m, args[1].as_bytes());
}

/// args: path, ready file, exit file. Parks in `recv_timeout` on an empty queue until it times
/// out, says so, and stays attached (without waiting on the queue) until the exit file appears.
fn time_out_once(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let mut consumer = q.consumer().unwrap();
    consumer.set_wait_strategy(WaitStrategy::Park);
    assert_eq!(
        consumer
            .recv_timeout(Duration::from_millis(200))
            .unwrap_err(),
        RecvTimeoutError::Timeout
    );
    common::signal_ready(&args[1]);
    let exit = Path::new(&args[2]);
    assert!(
        common::wait_until(HANG, || exit.exists()),
        "never told to exit"
    );
}

/// args: path, message. Parks in `send` while the queue is full.
fn send_one(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let mut producer = q.producer().unwrap();
    producer.set_wait_strategy(WaitStrategy::Park);
    producer.send(args[1].as_bytes()).unwrap();
}

/// args: path, n. Sends stream messages 0..n.
fn send_n(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let n: u64 = args[1].parse().unwrap();
    let producer = q.producer().unwrap();
    for i in 0..n {
        producer.send(&stream_message(i)).unwrap();
    }
}

/// args: path, n. Receives stream messages 0..n, in order, and acknowledges them.
fn recv_n(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let n: u64 = args[1].parse().unwrap();
    let consumer = q.consumer().unwrap();
    for i in 0..n {
        let m = consumer.recv().unwrap();
        assert_eq!(&*m, &stream_message(i)[..], "message {i}");
    }
}

/// args: ping queue, pong queue, n. Parks for each message of the ping queue and sends it back
/// on the pong queue, n times. It holds each ping (which keeps the one-slot ping queue full)
/// until the parent parks trying to send the next one, so that the parent needs the wake-up
/// that acknowledging the ping gives.
fn echo(args: &[String]) {
    let ping_path = Path::new(&args[0]);
    let ping = Pipeline::open(ping_path).unwrap();
    let pong = Pipeline::open(&args[1]).unwrap();
    let n: u64 = args[2].parse().unwrap();
    let mut consumer = ping.consumer().unwrap();
    let mut producer = pong.producer().unwrap();
    consumer.set_wait_strategy(WaitStrategy::Park);
    producer.set_wait_strategy(WaitStrategy::Park);
    for i in 0..n {
        let m = consumer.recv().unwrap();
        producer.send(&m).unwrap();
        if i + 1 < n {
            let parked = common::wait_until(HANG, || waiters(ping_path, CTL_NOT_FULL) > 0);
            assert!(parked, "the parent never blocked on the full ping queue");
        }
        drop(m);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// How many waiters are registered (parked or about to park) on the wait cell at `cell` of
/// the ring's control block, read through the file rather than the mapping.
fn waiters(path: &Path, cell: usize) -> u32 {
    common::registered_waiters(path, (RING_CONTROL_OFFSET + cell) as u64)
}

/// Waits until a process parks on the wait cell at `cell`; panics if `child` exits first.
fn wait_parked(path: &Path, cell: usize, child: &mut ChildProc) {
    let parked = common::wait_until(HANG, || {
        if let Some(st) = child.try_wait() {
            panic!("child {:?} exited ({st}) instead of blocking", child.role());
        }
        waiters(path, cell) > 0
    });
    assert!(parked, "child {:?} never parked", child.role());
}

/// Receives a message that `sender` (a child process) is expected to send; fails fast if the
/// child exits without the message having arrived, and after `HANG` if it never comes.
fn recv_from<'a>(consumer: &'a Consumer, sender: &mut ChildProc) -> Message<'a> {
    let deadline = Instant::now() + HANG;
    loop {
        match consumer.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => return m,
            Err(RecvTimeoutError::Timeout) => {
                // A child that exited has committed everything it sent: one more try.
                if let Some(status) = sender.try_wait() {
                    match consumer.try_recv() {
                        Ok(m) => return m,
                        Err(e) => panic!(
                            "child {:?} exited ({status}) and no message arrived: {e}",
                            sender.role()
                        ),
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "no message from child {:?} in {HANG:?}",
                    sender.role()
                );
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-process tests
// ---------------------------------------------------------------------------------------------

/// 3 producer processes (one-by-one sends, loans with some abandoned, batches) and 3 consumer
/// processes (parked `recv`, `recv_batch`, `recv_timeout`), 100_000 messages of 16 to 256
/// bytes. Each consumer checks every byte of every message and that each producer's sequence
/// numbers rise, and writes the (producer, seq) pairs it got to a file; the parent checks that
/// each pair arrived exactly once overall. Once the producers have exited, the parent sends one
/// END marker at a time and waits for a consumer to exit, so no consumer can take two.
#[test]
fn three_producers_three_consumers_every_message_exactly_once_intact_in_order() {
    const COUNTS: [u32; 3] = [33_334, 33_333, 33_333]; // 100_000 in all
    let dir = TempDir::new("3x3");
    let path = dir.join("q");
    let q = Pipeline::create(
        &path,
        &PipelineOptions::new()
            .capacity(256)
            .max_message(MAX)
            .max_participants(16),
    )
    .unwrap();

    let outs: Vec<_> = (0..3).map(|i| dir.join(&format!("got-{i}"))).collect();
    let mut consumers: Vec<ChildProc> = (0..3)
        .map(|i| child("consumer", &[s(&path), s(&outs[i]), &i.to_string()]))
        .collect();
    let mut producers: Vec<ChildProc> = (0..3)
        .map(|i| {
            let count = COUNTS[i].to_string();
            child("producer", &[s(&path), &i.to_string(), &count])
        })
        .collect();

    // Wait for the producers, failing fast if a consumer fails meanwhile.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        for c in &mut consumers {
            assert!(
                !c.check_not_failed(),
                "a consumer exited before it was told to stop"
            );
        }
        let mut running = 0;
        for p in &mut producers {
            if !p.check_not_failed() {
                running += 1;
            }
        }
        if running == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "producers still running after 150 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Every message is in the ring before the first END. Send one END at a time and wait for a
    // consumer to take it and exit, so that no consumer can take two.
    let stopper = q.producer().unwrap();
    for round in 1..=3 {
        stopper.send(END).unwrap();
        let stopped = common::wait_until(Duration::from_secs(60), || {
            consumers
                .iter_mut()
                .map(|c| usize::from(c.check_not_failed()))
                .sum::<usize>()
                >= round
        });
        assert!(stopped, "no consumer took END number {round}");
    }
    expect_all_succeed(&mut consumers, HANG);
    assert_eq!(q.len(), 0);
    assert_eq!(
        q.consumer().unwrap().try_recv().unwrap_err(),
        TryRecvError::Empty
    );

    // Every (producer, seq) exactly once, over all consumers.
    let mut seen: Vec<Vec<u8>> = COUNTS.iter().map(|&n| vec![0u8; n as usize]).collect();
    let mut per_consumer = Vec::new();
    for out in &outs {
        let bytes = std::fs::read(out).unwrap();
        assert_eq!(bytes.len() % 8, 0);
        per_consumer.push(bytes.len() / 8);
        for pair in bytes.chunks_exact(8) {
            let p = u32::from_le_bytes(pair[0..4].try_into().unwrap()) as usize;
            let seq = u32::from_le_bytes(pair[4..8].try_into().unwrap()) as usize;
            assert!(seq < seen[p].len(), "producer {p} never sent seq {seq}");
            seen[p][seq] += 1;
        }
    }
    for (p, counts) in seen.iter().enumerate() {
        let missing: Vec<_> = (0..counts.len()).filter(|&i| counts[i] == 0).collect();
        let twice: Vec<_> = (0..counts.len()).filter(|&i| counts[i] > 1).collect();
        assert!(
            missing.is_empty() && twice.is_empty(),
            "producer {p}: {} lost (first {:?}), {} delivered more than once (first {:?})",
            missing.len(),
            missing.first(),
            twice.len(),
            twice.first()
        );
    }
    assert_eq!(per_consumer.iter().sum::<usize>(), 100_000);
}

/// How long a wake-up across processes may take in the tests that check one: generous for a
/// loaded machine, and far below the deadlines of the children those tests start with an
/// uncapped park (see `common::UNCAPPED_PARK_VAR`), where a lost wake-up hangs instead.
const WAKE: Duration = Duration::from_secs(10);

/// The child parks with no cap on its sleep (a lost wake-up hangs it); the send wakes it with
/// one wake-up system call, and a send after it (nobody registered any more) makes none.
#[test]
fn blocked_consumer_is_woken_by_send_from_another_process() {
    blocked_consumer_is_woken_by_send_from_another_process_in(false);
}

/// The same with exclusive ends.
#[test]
fn blocked_consumer_is_woken_by_send_from_another_process_exclusive() {
    blocked_consumer_is_woken_by_send_from_another_process_in(true);
}

fn blocked_consumer_is_woken_by_send_from_another_process_in(exclusive: bool) {
    let dir = TempDir::new("wake-consumer");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &options(exclusive).capacity(4).max_message(64)).unwrap();
    let producer = q.producer().unwrap();
    let mut c = child_with_env("recv_one", &[s(&path), "wake up"], &uncapped_park());
    wait_parked(&path, CTL_NOT_EMPTY, &mut c);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        c.is_running(),
        "the consumer returned from recv on an empty queue"
    );
    let calls = wake_calls();
    producer.send(b"wake up").unwrap();
    c.expect_success(WAKE);
    assert!(q.is_empty());
    producer.send(b"nobody waits").unwrap();
    assert_eq!(
        wake_calls() - calls,
        1,
        "wake-up system calls for one parked consumer, then nobody"
    );
}

#[test]
fn blocked_producer_on_full_queue_is_woken_by_receive_in_another_process() {
    blocked_producer_on_full_queue_is_woken_by_receive_in_another_process_in(false);
}

/// The same with exclusive ends.
#[test]
fn blocked_producer_on_full_queue_is_woken_by_receive_in_another_process_exclusive() {
    blocked_producer_on_full_queue_is_woken_by_receive_in_another_process_in(true);
}

fn blocked_producer_on_full_queue_is_woken_by_receive_in_another_process_in(exclusive: bool) {
    let dir = TempDir::new("wake-producer");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &options(exclusive).capacity(2).max_message(64)).unwrap();
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();
    producer.send(b"first").unwrap();
    producer.send(b"second").unwrap();
    assert_eq!(producer.try_send(b"x"), Err(TrySendError::Full));
    // (With exclusive ends, the child's producer could not attach beside it.)
    drop(producer);

    let mut p = child_with_env("send_one", &[s(&path), "third"], &uncapped_park());
    wait_parked(&path, CTL_NOT_FULL, &mut p);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        p.is_running(),
        "the producer returned from send on a full queue"
    );
    let calls = wake_calls();
    assert_eq!(&*consumer.recv().unwrap(), b"first");
    p.expect_success(WAKE);
    assert_eq!(wake_calls() - calls, 1, "wake-up system calls");

    assert_eq!(&*consumer.try_recv().unwrap(), b"second");
    assert_eq!(&*consumer.try_recv().unwrap(), b"third");
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(wake_calls() - calls, 1, "wake-up calls with nobody parked");
}

/// A waiter that gives up (its timeout passes while it is parked) takes itself off the wait
/// cell: the sends after it, with nobody parked, make no wake-up system call.
#[test]
fn sends_after_a_receive_timed_out_in_another_process_make_no_wake_up_call() {
    let dir = TempDir::new("timed-out-waiter");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &PipelineOptions::new().capacity(4).max_message(64)).unwrap();
    let producer = q.producer().unwrap();
    let ready = dir.join("timed-out");
    let exit = dir.join("exit");
    let mut c = child("time_out_once", &[s(&path), s(&ready), s(&exit)]);
    common::wait_ready(&mut c, &ready);
    assert_eq!(
        waiters(&path, CTL_NOT_EMPTY),
        0,
        "a waiter that left is counted"
    );
    let calls = wake_calls();
    for _ in 0..3 {
        producer.send(b"nobody waits").unwrap();
    }
    assert_eq!(
        wake_calls() - calls,
        0,
        "wake-up system calls with nobody parked"
    );
    common::signal_ready(s(&exit));
    c.expect_success(HANG);
    assert_eq!(q.len(), 3);
}

/// A parked waiter re-checks its condition every 50 ms even if nobody wakes it, so in a
/// process with that cap a lost wake-up shows up as delay, not as a hang. Each round trip here
/// needs three cross-process wake-ups (a consumer on an empty queue, twice, and a producer on a
/// full one). The echo child parks with no cap, so a wake-up lost there hangs it; this process
/// keeps the cap, and its round trips must take a small fraction of it: 200 round trips with
/// one wake-up lost each take at least 10 s; the bound below is 25 ms per round trip (5 s),
/// ten and more times what a loaded machine needs.
#[test]
fn parked_processes_wake_each_other_without_waiting_for_the_recheck() {
    parked_processes_wake_each_other_without_waiting_for_the_recheck_in(false);
}

/// The same with exclusive ends.
#[test]
fn parked_processes_wake_each_other_without_waiting_for_the_recheck_exclusive() {
    parked_processes_wake_each_other_without_waiting_for_the_recheck_in(true);
}

fn parked_processes_wake_each_other_without_waiting_for_the_recheck_in(exclusive: bool) {
    const ROUND_TRIPS: u64 = 200;
    let dir = TempDir::new("ping-pong");
    let (ping_path, pong_path) = (dir.join("ping"), dir.join("pong"));
    let options = options(exclusive).capacity(1).max_message(8);
    let ping = Pipeline::create(&ping_path, &options).unwrap();
    let pong = Pipeline::create(&pong_path, &options).unwrap();
    let mut producer = ping.producer().unwrap();
    let mut consumer = pong.consumer().unwrap();
    producer.set_wait_strategy(WaitStrategy::Park);
    consumer.set_wait_strategy(WaitStrategy::Park);
    let n = (ROUND_TRIPS + 1).to_string();
    let mut echo = child_with_env(
        "echo",
        &[s(&ping_path), s(&pong_path), &n],
        &uncapped_park(),
    );

    // The first round trip includes the child's start-up: not timed.
    producer.send_value(&0u64).unwrap();
    assert_eq!(recv_from(&consumer, &mut echo).value::<u64>(), Some(0));
    let started = Instant::now();
    for i in 1..=ROUND_TRIPS {
        producer.send_value(&i).unwrap();
        let m = recv_from(&consumer, &mut echo);
        assert_eq!(m.value::<u64>(), Some(i));
    }
    let took = started.elapsed();
    echo.expect_success(HANG);
    assert!(
        took < Duration::from_millis(25) * ROUND_TRIPS as u32,
        "{ROUND_TRIPS} parked round trips took {took:?}: wake-ups are being lost"
    );
}

#[test]
fn messages_persist_after_every_process_exits() {
    messages_persist_after_every_process_exits_in(false);
}

/// The same with exclusive ends.
#[test]
fn messages_persist_after_every_process_exits_exclusive() {
    messages_persist_after_every_process_exits_in(true);
}

fn messages_persist_after_every_process_exits_in(exclusive: bool) {
    const N: usize = 500;
    let dir = TempDir::new("persist");

    // A producer process sends N messages and exits; a fresh open finds them all, in order.
    let path = dir.join("all");
    drop(Pipeline::create(&path, &options(exclusive).capacity(N).max_message(MAX)).unwrap());
    child("send_n", &[s(&path), &N.to_string()]).expect_success(HANG);
    {
        let q = Pipeline::open(&path).unwrap();
        assert_eq!(q.len(), N);
        let consumer = q.consumer().unwrap();
        for i in 0..N {
            let m = consumer.try_recv().unwrap();
            assert_eq!(&*m, &stream_message(i as u64)[..], "message {i}");
            assert!(!m.redelivered());
        }
        assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
    }

    // One process sends, another receives (and acknowledges) half and exits: reopening finds
    // exactly the other half, in order.
    let path = dir.join("half");
    drop(Pipeline::create(&path, &options(exclusive).capacity(N).max_message(MAX)).unwrap());
    child("send_n", &[s(&path), &N.to_string()]).expect_success(HANG);
    child("recv_n", &[s(&path), &(N / 2).to_string()]).expect_success(HANG);
    let q = Pipeline::open(&path).unwrap();
    assert_eq!(q.len(), N - N / 2);
    let consumer = q.consumer().unwrap();
    for i in N / 2..N {
        let m = consumer.try_recv().unwrap();
        assert_eq!(&*m, &stream_message(i as u64)[..], "message {i}");
        assert!(
            !m.redelivered(),
            "message {i} was acknowledged by nobody else"
        );
    }
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
}

#[test]
fn small_and_odd_capacities_carry_a_stream_between_processes() {
    small_and_odd_capacities_carry_a_stream_between_processes_in(false);
}

/// The same with exclusive ends.
#[test]
fn small_and_odd_capacities_carry_a_stream_between_processes_exclusive() {
    small_and_odd_capacities_carry_a_stream_between_processes_in(true);
}

fn small_and_odd_capacities_carry_a_stream_between_processes_in(exclusive: bool) {
    const N: usize = 3_000;
    let dir = TempDir::new("odd-capacity");
    for capacity in [1usize, 3] {
        let path = dir.join(&format!("cap-{capacity}"));
        let q = Pipeline::create(
            &path,
            &options(exclusive).capacity(capacity).max_message(MAX),
        )
        .unwrap();
        let consumer = q.consumer().unwrap();
        let mut p = child("send_n", &[s(&path), &N.to_string()]);
        for i in 0..N {
            let m = recv_from(&consumer, &mut p);
            assert_eq!(
                &*m,
                &stream_message(i as u64)[..],
                "capacity {capacity}, message {i}"
            );
        }
        p.expect_success(HANG);
        assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
    }
}

/// Shared ends, or exclusive ones (`single_producer().single_consumer()`), for the tests that
/// run in both modes (those with one producer and one consumer at a time).
fn options(exclusive: bool) -> PipelineOptions {
    if exclusive {
        PipelineOptions::new().single_producer().single_consumer()
    } else {
        PipelineOptions::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Single-process contract
// ---------------------------------------------------------------------------------------------

fn queue(dir: &TempDir, capacity: usize, max_message: usize) -> Pipeline {
    Pipeline::create(
        dir.join("q"),
        &PipelineOptions::new()
            .capacity(capacity)
            .max_message(max_message),
    )
    .unwrap()
}

#[test]
fn timeouts_and_try_variants() {
    let dir = TempDir::new("timeouts");
    let q = queue(&dir, 4, 64);
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();

    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
    let timeout = Duration::from_millis(150);
    let started = Instant::now();
    assert_eq!(
        consumer.recv_timeout(timeout).unwrap_err(),
        RecvTimeoutError::Timeout
    );
    let waited = started.elapsed();
    assert!(
        waited >= timeout && waited < timeout + HANG,
        "recv_timeout returned after {waited:?}"
    );

    for i in 0..4u8 {
        producer.try_send(&[i]).unwrap();
    }
    assert_eq!(q.len(), 4);
    assert_eq!(producer.try_send(b"x"), Err(TrySendError::Full));
    assert_eq!(producer.try_loan(1).unwrap_err(), TrySendError::Full);
    let started = Instant::now();
    assert_eq!(
        producer.send_timeout(b"x", timeout),
        Err(SendTimeoutError::Timeout)
    );
    let waited = started.elapsed();
    assert!(
        waited >= timeout && waited < timeout + HANG,
        "send_timeout returned after {waited:?}"
    );
    assert_eq!(q.len(), 4, "a failed send wrote nothing");

    for i in 0..4u8 {
        assert_eq!(&*consumer.try_recv().unwrap(), &[i]);
    }
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
    assert!(q.is_empty());

    // With room or a message at hand, the timed variants succeed at once, even with no time.
    producer.send_timeout(b"now", Duration::ZERO).unwrap();
    assert_eq!(&*consumer.recv_timeout(Duration::ZERO).unwrap(), b"now");
    producer.send_timeout(b"soon", timeout).unwrap();
    assert_eq!(&*consumer.recv_timeout(timeout).unwrap(), b"soon");
    // Timeouts too long to add to the clock mean "no deadline", not a panic.
    producer.send_timeout(b"later", Duration::MAX).unwrap();
    assert_eq!(&*consumer.recv_timeout(Duration::MAX).unwrap(), b"later");
}

#[test]
fn every_wait_strategy_times_out_and_receives() {
    let dir = TempDir::new("strategies");
    let q = queue(&dir, 1, 8);
    let mut producer = q.producer().unwrap();
    let mut consumer = q.consumer().unwrap();
    let timeout = Duration::from_millis(30);
    for strategy in [
        WaitStrategy::BusyPoll,
        WaitStrategy::Park,
        WaitStrategy::SpinThenPark(Duration::ZERO),
        WaitStrategy::SpinThenPark(Duration::from_millis(5)),
        WaitStrategy::SpinThenPark(Duration::from_secs(3600)),
        WaitStrategy::SpinThenPark(Duration::MAX), // spin for ever: never park
    ] {
        producer.set_wait_strategy(strategy);
        consumer.set_wait_strategy(strategy);
        let started = Instant::now();
        assert_eq!(
            consumer.recv_timeout(timeout).unwrap_err(),
            RecvTimeoutError::Timeout,
            "{strategy:?}"
        );
        assert!(started.elapsed() >= timeout, "{strategy:?}");
        producer.send_timeout(b"one", timeout).unwrap();
        let started = Instant::now();
        assert_eq!(
            producer.send_timeout(b"two", timeout),
            Err(SendTimeoutError::Timeout),
            "{strategy:?}"
        );
        assert!(started.elapsed() >= timeout, "{strategy:?}");
        assert_eq!(&*consumer.recv_timeout(timeout).unwrap(), b"one");
        // A blocking receive woken by a send from another thread.
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| consumer.recv().map(|m| m.to_vec()));
            std::thread::sleep(Duration::from_millis(20));
            producer.send(b"wake").unwrap();
            assert_eq!(reader.join().unwrap().unwrap(), b"wake", "{strategy:?}");
        });
    }
}

#[test]
fn too_large_message_is_refused_and_nothing_is_written() {
    let dir = TempDir::new("too-large");
    let q = queue(&dir, 4, 64);
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();
    let big = [7u8; 65];
    let too_large = SendError::TooLarge { len: 65, max: 64 };
    assert_eq!(producer.send(&big), Err(too_large.clone()));
    assert_eq!(
        producer.try_send(&big),
        Err(TrySendError::Send(too_large.clone()))
    );
    assert_eq!(
        producer.send_timeout(&big, Duration::from_millis(10)),
        Err(SendTimeoutError::Send(too_large.clone()))
    );
    assert_eq!(producer.loan(65).unwrap_err(), too_large);
    assert_eq!(
        producer.try_loan(65).unwrap_err(),
        TrySendError::Send(too_large.clone())
    );
    assert_eq!(
        producer.send_batch(&[b"fits", &big, b"fits too"]),
        Err(too_large.clone())
    );
    assert_eq!(
        producer.try_send(&[0u8; 1 << 20]),
        Err(TrySendError::Send(SendError::TooLarge {
            len: 1 << 20,
            max: 64
        }))
    );
    assert_eq!(q.len(), 0, "nothing was written");
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
    // The queue still works.
    producer.send(&[1u8; 64]).unwrap();
    assert_eq!(&*consumer.try_recv().unwrap(), &[1u8; 64]);
}

#[test]
fn zero_length_and_max_length_messages_arrive_intact() {
    let dir = TempDir::new("lengths");
    let q = queue(&dir, 8, 100);
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();
    let full: Vec<u8> = (0..100u8).collect();
    producer.send(b"").unwrap();
    producer.send(&full).unwrap();
    producer.loan(0).unwrap().commit().unwrap();
    let mut loan = producer.loan(100).unwrap();
    loan.copy_from_slice(&full);
    loan.commit().unwrap();
    producer.send_batch(&[b"", &full, b""]).unwrap();
    for want in [&b""[..], &full, b"", &full, b"", &full, b""] {
        let m = consumer.try_recv().unwrap();
        assert_eq!(&*m, want);
    }
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);

    // A queue for empty messages only.
    let dir0 = TempDir::new("lengths-0");
    let q0 = queue(&dir0, 2, 0);
    let (p0, c0) = (q0.producer().unwrap(), q0.consumer().unwrap());
    p0.send(b"").unwrap();
    assert_eq!(p0.send(b"x"), Err(SendError::TooLarge { len: 1, max: 0 }));
    assert!(c0.try_recv().unwrap().is_empty());
}

#[test]
fn capacity_one_and_three_fill_drain_and_wrap_in_order() {
    for capacity in [1usize, 3, 5] {
        let dir = TempDir::new(&format!("capacity-{capacity}"));
        let q = queue(&dir, capacity, 16);
        let producer = q.producer().unwrap();
        let consumer = q.consumer().unwrap();
        let mut next_send = 0u64;
        let mut next_recv = 0u64;
        for _lap in 0..7 {
            for _ in 0..capacity {
                producer.try_send(&next_send.to_le_bytes()).unwrap();
                next_send += 1;
            }
            assert_eq!(q.len(), capacity);
            assert_eq!(producer.try_send(b"over"), Err(TrySendError::Full));
            for _ in 0..capacity {
                let m = consumer.try_recv().unwrap();
                assert_eq!(m.value::<u64>(), Some(next_recv));
                next_recv += 1;
            }
            assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
        }
        // Many laps with one message in flight, and with a message held while sending.
        for _ in 0..(capacity * 50) {
            producer.send_value(&next_send).unwrap();
            next_send += 1;
            let m = consumer.try_recv().unwrap();
            assert_eq!(m.value::<u64>(), Some(next_recv));
            next_recv += 1;
        }
        if capacity > 1 {
            producer.send_value(&1u64).unwrap();
            let held = consumer.try_recv().unwrap();
            for i in 0..capacity - 1 {
                producer.try_send(&i.to_le_bytes()).unwrap();
            }
            assert_eq!(
                producer.try_send(b"over"),
                Err(TrySendError::Full),
                "a held message keeps its slot"
            );
            drop(held);
            producer.try_send(b"room").unwrap();
        }
    }
}

#[test]
fn committed_loan_is_delivered_and_dropped_loan_delivers_nothing() {
    let dir = TempDir::new("loan");
    let q = queue(&dir, 2, 64);
    let producer = q.producer().unwrap();
    let mut consumer = q.consumer().unwrap();

    let mut loan = producer.loan(5).unwrap();
    assert_eq!(loan.len(), 5);
    loan.copy_from_slice(b"hello");
    loan.commit().unwrap();
    assert_eq!(&*consumer.try_recv().unwrap(), b"hello");

    let mut loan = producer.try_loan(3).unwrap();
    loan.copy_from_slice(b"bad");
    drop(loan);
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
    producer.send(b"after").unwrap();
    assert_eq!(&*consumer.try_recv().unwrap(), b"after");

    // Abandon, then send, lap after lap of a two-slot ring.
    for i in 0..20u8 {
        let mut loan = producer.loan(8).unwrap();
        loan.fill(0xEE);
        drop(loan);
        producer.send(&[i]).unwrap();
        assert_eq!(&*consumer.try_recv().unwrap(), &[i]);
    }

    // Abandon every slot; once a consumer has passed over them, all the room is back.
    drop(producer.try_loan(1).unwrap());
    drop(producer.try_loan(1).unwrap());
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
    producer.try_send(b"a").unwrap();
    producer.try_send(b"b").unwrap();
    assert_eq!(&*consumer.try_recv().unwrap(), b"a");
    assert_eq!(&*consumer.try_recv().unwrap(), b"b");

    // A consumer parked in recv is not handed an abandoned loan, and gets the next message.
    consumer.set_wait_strategy(WaitStrategy::Park);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| consumer.recv_timeout(HANG).map(|m| m.to_vec()));
        std::thread::sleep(Duration::from_millis(50));
        let mut loan = producer.loan(7).unwrap();
        loan.copy_from_slice(b"dropped");
        drop(loan);
        std::thread::sleep(Duration::from_millis(50));
        producer.send(b"kept").unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), b"kept");
    });
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
}

/// `Producer::loan` docs: a loan not yet committed at the head of the ring holds up every
/// consumer, even when later messages are ready; a held message does not (consumers receive
/// past it; only producers coming round to its slot wait).
#[test]
fn a_loan_at_the_head_holds_up_consumers_and_a_held_message_does_not() {
    let dir = TempDir::new("head-of-line");
    let q = queue(&dir, 4, 64);
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();
    let mut loan = producer.loan(4).unwrap();
    producer.send(b"later").unwrap();
    assert_eq!(
        consumer.try_recv().unwrap_err(),
        TryRecvError::Empty,
        "the message after the loan is ready, but the loan is at the head"
    );
    loan.copy_from_slice(b"loan");
    loan.commit().unwrap();
    let first = consumer.try_recv().unwrap();
    assert_eq!(&*first, b"loan");
    producer.send(b"next").unwrap();
    assert_eq!(
        &*consumer.try_recv().unwrap(),
        b"later",
        "received past a held message"
    );
    assert_eq!(&*consumer.try_recv().unwrap(), b"next");
    first.ack().unwrap();
}

#[test]
fn send_batch_and_recv_batch_round_trip() {
    let dir = TempDir::new("batch");
    let q = queue(&dir, 8, 64);
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();

    producer.send_batch(&[]).unwrap();
    assert!(q.is_empty());
    assert_eq!(consumer.recv_batch(0, |_| panic!("max 0")).unwrap(), 0);

    let msgs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; i as usize * 16]).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    producer.send_batch(&refs).unwrap();
    assert_eq!(q.len(), 5);
    let mut got: Vec<Vec<u8>> = Vec::new();
    assert_eq!(consumer.recv_batch(2, |m| got.push(m.to_vec())).unwrap(), 2);
    assert_eq!(
        consumer.recv_batch(10, |m| got.push(m.to_vec())).unwrap(),
        3
    );
    assert_eq!(got, msgs);
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);

    // A batch larger than the ring: the producer waits for a consumer thread as it goes.
    let msgs: Vec<Vec<u8>> = (0..200u64).map(stream_message_small).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut got: Vec<Vec<u8>> = Vec::new();
            while got.len() < 200 {
                consumer.recv_batch(7, |m| got.push(m.to_vec())).unwrap();
            }
            got
        });
        producer.send_batch(&refs).unwrap();
        assert_eq!(reader.join().unwrap(), msgs);
    });

    // Typed values.
    producer.send_value(&0x0123_4567_89ab_cdefu64).unwrap();
    let m = consumer.try_recv().unwrap();
    assert_eq!(m.value::<u64>(), Some(0x0123_4567_89ab_cdef));
    assert_eq!(m.as_value::<u64>(), Some(&0x0123_4567_89ab_cdef));
    assert_eq!(m.value::<u32>(), None, "wrong length");
}

/// A `recv_batch` callback that panics (a job runner catching panics per job, say) must not
/// leak the slot of the message it was handed: as with a `Message` dropped during unwinding,
/// the slot is freed, and the queue keeps its whole capacity.
#[test]
fn recv_batch_callback_panic_does_not_leak_a_slot() {
    let dir = TempDir::new("batch-panic");
    let q = queue(&dir, 2, 8);
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();
    for round in 0..2u8 {
        producer.try_send(&[round, 0]).unwrap();
        producer.try_send(&[round, 1]).unwrap();
        let mut handed = 0;
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            consumer.recv_batch(2, |m| {
                handed += 1;
                // Panic on the first message in round 0, on the second in round 1.
                if usize::from(m[1]) == usize::from(round) {
                    panic!("job failed (deliberate panic in a test)");
                }
            })
        }));
        assert!(caught.is_err());
        // Whatever was not handed out is still there; then the ring has all its room back.
        while consumer.try_recv().is_ok() {}
        assert_eq!(q.len(), 0);
        for i in 0..2u8 {
            assert_eq!(
                producer.try_send(&[9, i]),
                Ok(()),
                "round {round}: slot leaked by the panic (message {i} of 2 refused)"
            );
        }
        while consumer.try_recv().is_ok() {}
        assert!(handed >= 1);
    }
}

fn stream_message_small(i: u64) -> Vec<u8> {
    let mut v = stream_message(i);
    v.truncate(64);
    v
}

#[test]
fn many_threads_of_one_process_share_producer_and_consumer() {
    // Producer and Consumer are Send + Sync: one of each, shared by threads.
    let dir = TempDir::new("threads");
    let q = queue(&dir, 16, 16);
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();
    const PER: u64 = 2_000;
    let mut got: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let total = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for t in 0..2u64 {
            let producer = &producer;
            scope.spawn(move || {
                for i in 0..PER {
                    producer.send_value(&(t << 32 | i)).unwrap();
                }
            });
        }
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let consumer = &consumer;
                let total = &total;
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    while total.load(Ordering::Relaxed) < 2 * PER {
                        match consumer.recv_timeout(Duration::from_millis(20)) {
                            Ok(m) => {
                                mine.push(m.value::<u64>().unwrap());
                                total.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(e) => panic!("recv_timeout: {e}"),
                        }
                    }
                    mine
                })
            })
            .collect();
        for r in readers {
            for v in r.join().unwrap() {
                got.entry(v >> 32).or_default().push(v & 0xffff_ffff);
            }
        }
    });
    for t in 0..2u64 {
        let mut seqs = got.remove(&t).unwrap_or_default();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..PER).collect::<Vec<_>>(), "thread {t}");
    }
    assert!(got.is_empty());
}
