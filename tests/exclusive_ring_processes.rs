//! The single-producer single-consumer ring core between real processes (through the
//! test-only `shmq::exclusive_ring`, before the pipeline adopts it): each message exactly once,
//! in order, intact, across processes and their wake-ups; and after a SIGKILL of either side,
//! recovery from the slots and the position records alone.

mod common;

use common::{child, s, wait_ready, TempDir, HANG};
use shmq::exclusive_ring::ExclusiveRingFile;
use shmq::WaitStrategy;
use std::path::Path;

const MESSAGES: u64 = 20_000;

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "stream-sender" => stream_sender(args),
        "consumer-that-holds" => consumer_that_holds(args),
        "sender-killed-mid-write" => sender_killed_mid_write(args),
        other => panic!("unknown role {other}"),
    });
}

fn open(path: &str) -> ExclusiveRingFile {
    ExclusiveRingFile::open(Path::new(path)).expect("open the ring file")
}

/// Message `i`: its number, then `i % 41` bytes of `i as u8` (lengths 8 to 48).
fn message(i: u64) -> Vec<u8> {
    let mut m = i.to_le_bytes().to_vec();
    m.resize(8 + (i % 41) as usize, i as u8);
    m
}

/// Args: ring path. Sends [`MESSAGES`] messages with the default wait (spin, then park).
fn stream_sender(args: &[String]) {
    let mut tx = open(&args[0]).sender().expect("sender");
    for i in 0..MESSAGES {
        tx.send(&message(i), WaitStrategy::default()).expect("send");
    }
}

#[test]
fn each_message_arrives_once_in_order_and_intact_between_processes() {
    let dir = TempDir::new("exclusive-stream");
    let path = dir.join("ring");
    // A small ring, so the sender waits for room (and parks) often, and so does the receiver.
    let file = ExclusiveRingFile::create(&path, 4, 64).unwrap();
    let mut rx = file.receiver().unwrap();
    let mut sender = child("stream-sender", &[s(&path)]);
    for i in 0..MESSAGES {
        if i % 1000 == 0 {
            // A slow receiver now and then: the sender fills the ring and parks.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        rx.recv(WaitStrategy::default(), |m, again| {
            assert_eq!(m, message(i), "message {i}: in order, intact");
            assert!(!again);
        })
        .unwrap();
    }
    sender.expect_success(HANG);
}

/// Args: ring path, ready file. Acknowledges messages 0 and 1, holds 2 without acknowledging,
/// acknowledges 3 (out of order), then waits to be killed.
fn consumer_that_holds(args: &[String]) {
    let mut rx = open(&args[0]).receiver().expect("receiver");
    let wait = WaitStrategy::default();
    for want in [0u8, 1] {
        rx.recv(wait, |m, _| assert_eq!(m, [want])).unwrap();
    }
    assert_eq!(rx.recv_unacknowledged(wait).unwrap(), (vec![2], false));
    rx.recv(wait, |m, _| assert_eq!(m, [3])).unwrap();
    common::signal_ready(&args[1]);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

#[test]
fn a_killed_consumer_process_gets_exactly_its_unacknowledged_message_redelivered() {
    let dir = TempDir::new("exclusive-killed-consumer");
    let (path, ready) = (dir.join("ring"), dir.join("ready"));
    let file = ExclusiveRingFile::create(&path, 4, 8).unwrap();
    let mut tx = file.sender().unwrap();
    for i in 0..4u8 {
        tx.send(&[i], WaitStrategy::BusyPoll).unwrap();
    }
    let mut consumer = child("consumer-that-holds", &[s(&path), s(&ready)]);
    wait_ready(&mut consumer, &ready);
    // Positions 4 and 5 take the slots of acknowledged 0 and 1; 6 would wait for held 2's.
    for i in 4..6u8 {
        tx.send(&[i], WaitStrategy::BusyPoll).unwrap();
    }
    consumer.kill();
    assert_eq!(file.recover_receiver().unwrap(), 1, "only message 2");
    assert_eq!(file.recover_receiver().unwrap(), 0, "and only once");
    let mut rx = file.receiver().unwrap();
    let mut got = Vec::new();
    let mut take = |rx: &mut shmq::exclusive_ring::Receiver| {
        rx.recv(WaitStrategy::BusyPoll, |m, again| got.push((m[0], again)))
            .unwrap();
    };
    for _ in 0..3 {
        take(&mut rx);
    }
    // 3 was acknowledged out of order before the kill: passed over, not delivered again.
    for i in 6..8u8 {
        tx.send(&[i], WaitStrategy::BusyPoll).unwrap();
    }
    take(&mut rx);
    take(&mut rx);
    assert_eq!(
        got,
        [(2, true), (4, false), (5, false), (6, false), (7, false)]
    );
}

/// Args: ring path, ready file. Sends three messages, writes a fourth without committing it,
/// then waits to be killed.
fn sender_killed_mid_write(args: &[String]) {
    let mut tx = open(&args[0]).sender().expect("sender");
    for m in [b"m0", b"m1", b"m2"] {
        tx.send(m, WaitStrategy::BusyPoll).unwrap();
    }
    tx.write_without_commit(b"torn", WaitStrategy::BusyPoll)
        .unwrap();
    common::signal_ready(&args[1]);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

#[test]
fn a_sender_process_killed_mid_write_leaves_nothing_and_the_next_sender_resumes() {
    let dir = TempDir::new("exclusive-killed-sender");
    let (path, ready) = (dir.join("ring"), dir.join("ready"));
    let file = ExclusiveRingFile::create(&path, 8, 8).unwrap();
    let mut rx = file.receiver().unwrap();
    let mut sender = child("sender-killed-mid-write", &[s(&path), s(&ready)]);
    wait_ready(&mut sender, &ready);
    sender.kill();
    file.recover_sender().unwrap();
    let mut tx = file.sender().unwrap();
    tx.send(b"after", WaitStrategy::BusyPoll).unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        rx.recv(WaitStrategy::BusyPoll, |m, again| {
            assert!(!again);
            got.push(m.to_vec());
        })
        .unwrap();
    }
    assert_eq!(got, [&b"m0"[..], b"m1", b"m2", b"after"]);
}

/// `Pipeline::open` serves an exclusive-ends file with its exclusive ends (the same ring: a
/// message the raw driver sent is received through the pipeline); the raw driver refuses a
/// shared-ends file.
#[test]
fn a_pipeline_opens_an_exclusive_ends_file_with_exclusive_ends_and_the_driver_refuses_a_shared_one()
{
    let dir = TempDir::new("exclusive-flags");
    let (exclusive, shared) = (dir.join("exclusive"), dir.join("shared"));
    let file = ExclusiveRingFile::create(&exclusive, 4, 8).unwrap();
    file.sender()
        .unwrap()
        .send(b"raw", WaitStrategy::BusyPoll)
        .unwrap();
    let q = shmq::Pipeline::open(&exclusive).unwrap();
    assert!(q.has_exclusive_ends());
    assert_eq!(&*q.consumer().unwrap().try_recv().unwrap(), b"raw");
    shmq::Pipeline::create(
        &shared,
        &shmq::PipelineOptions::new().capacity(4).max_message(8),
    )
    .unwrap();
    assert!(!shmq::Pipeline::open(&shared).unwrap().has_exclusive_ends());
    assert!(ExclusiveRingFile::open(&shared).is_err());
}
