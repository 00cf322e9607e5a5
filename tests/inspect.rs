//! The counters in the file and the read-only inspector (`shmq::inspect`): what each
//! participant counts, that counts outlive the participant (detached or reaped after a
//! SIGKILL) without leaking into the next owner of its entry, lag and outstanding requests,
//! and that a corrupt or old-format file gives an error naming the field, changing nothing.

mod common;

use common::{child, signal_ready, wait_ready, TempDir, HANG};
use shmq::inspect::{inspect, Role};
use shmq::layout::{field, CTL_HEAD, PARTICIPANTS_OFFSET, RING_CONTROL_OFFSET};
use shmq::{
    Error, Overflow, Pipeline, PipelineOptions, PubSub, PubSubOptions, RecvError, RecvTimeoutError,
    Service, ServiceOptions, TrySendError, WaitStrategy,
};
use std::path::Path;
use std::time::Duration;

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        // Sends three messages, says so, and waits to be killed.
        "send-three" => {
            let producer = Pipeline::open(&args[0]).unwrap().producer().unwrap();
            for m in [b"a", b"b", b"c"] {
                producer.send(m).unwrap();
            }
            signal_ready(&args[1]);
            std::thread::sleep(HANG * 10);
        }
        // Sends (or receives) as fast as it can until killed.
        "pump" => {
            let producer = Pipeline::open(&args[0]).unwrap().producer().unwrap();
            signal_ready(&args[1]);
            loop {
                producer.send(b"payload").unwrap();
            }
        }
        "drain" => {
            let consumer = Pipeline::open(&args[0]).unwrap().consumer().unwrap();
            signal_ready(&args[1]);
            loop {
                drop(consumer.recv().unwrap());
            }
        }
        other => panic!("unknown role {other}"),
    });
}

fn role_counts(path: &Path, role: Role) -> shmq::inspect::Counts {
    inspect(path)
        .unwrap()
        .participants
        .iter()
        .find(|p| p.role == role)
        .unwrap_or_else(|| panic!("no {role:?}"))
        .counts
}

#[test]
fn each_participant_counts_sends_receives_full_empty_parks_and_abandoned_loans() {
    let dir = TempDir::new("inspect-counts");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &PipelineOptions::new().capacity(4)).unwrap();
    let producer = q.producer().unwrap();
    let mut consumer = q.consumer().unwrap();
    consumer.set_wait_strategy(WaitStrategy::Park);
    for i in 0..4u8 {
        producer.try_send(&[i]).unwrap();
    }
    assert_eq!(producer.try_send(b"x"), Err(TrySendError::Full));
    drop(producer.try_loan(1)); // nothing free: another "full"
    for _ in 0..4 {
        drop(consumer.try_recv().unwrap());
    }
    drop(producer.loan(1).unwrap()); // abandoned
    drop(consumer.try_recv()); // passes over the abandoned slot: empty
    assert_eq!(
        consumer
            .recv_timeout(Duration::from_millis(30))
            .unwrap_err(),
        RecvTimeoutError::Timeout
    );

    let p = role_counts(&path, Role::Producer);
    assert_eq!((p.sent, p.full, p.abandoned, p.received), (4, 2, 1, 0));
    let c = role_counts(&path, Role::Consumer);
    assert_eq!((c.received, c.empty, c.sent), (4, 2, 0));
    assert!(c.parked >= 1, "a parked wait is counted: {c:?}");
    let r = inspect(&path).unwrap();
    assert_eq!((r.totals.sent, r.totals.received, r.totals.full), (4, 4, 2));
    assert_eq!(r.ring.depth, 0);
    assert_eq!(r.participants.len(), 2);
    assert!(r.participants.iter().all(|p| p.alive));
}

#[test]
fn counts_outlive_a_detached_participant_and_never_leak_into_the_next_owner_of_its_entry() {
    let dir = TempDir::new("inspect-detach");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &PipelineOptions::new().capacity(8)).unwrap();
    let producer = q.producer().unwrap();
    producer.send(b"1").unwrap();
    producer.send(b"2").unwrap();
    drop(producer);
    let r = inspect(&path).unwrap();
    assert_eq!((r.totals.sent, r.participants.len()), (2, 0));
    let again = q.producer().unwrap();
    assert_eq!(
        inspect(&path).unwrap().participants[0].index,
        0,
        "entry reused"
    );
    assert_eq!(role_counts(&path, Role::Producer).sent, 0);
    again.send(b"3").unwrap();
    assert_eq!(inspect(&path).unwrap().totals.sent, 3);
}

#[test]
fn counts_of_a_killed_participant_are_kept_when_it_is_reaped_and_its_entry_reused() {
    let dir = TempDir::new("inspect-reap");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &PipelineOptions::new().capacity(8)).unwrap();
    let ready = dir.join("ready");
    let mut sender = child(
        "send-three",
        &[path.to_str().unwrap(), ready.to_str().unwrap()],
    );
    wait_ready(&mut sender, &ready);
    let pid = sender.id();
    sender.kill();

    let r = inspect(&path).unwrap();
    assert_eq!(r.participants.len(), 1);
    let dead = &r.participants[0];
    assert_eq!(
        (dead.role, dead.pid, dead.alive),
        (Role::Producer, pid, false)
    );
    assert_eq!((dead.counts.sent, r.totals.sent, r.dead()), (3, 3, 1));

    // Attaching reaps the dead producer and takes its entry.
    let producer = q.producer().unwrap();
    let r = inspect(&path).unwrap();
    assert_eq!((r.recovery.reaped, r.dead(), r.alive()), (1, 0, 1));
    assert_eq!(r.participants[0].index, 0, "the dead producer's entry");
    assert_eq!(
        r.participants[0].counts.sent, 0,
        "the new owner starts from zero"
    );
    assert_eq!(
        r.totals.sent, 3,
        "the dead producer's sends are still counted"
    );
    assert!(r.sweeps >= 1);
    drop(producer);
}

#[test]
fn subscriber_position_lag_and_lost_messages_are_reported() {
    let dir = TempDir::new("inspect-lag");
    let path = dir.join("c");
    let channel = PubSub::create(
        &path,
        &PubSubOptions::new()
            .capacity(4)
            .overflow(Overflow::DropOldest),
    )
    .unwrap();
    let publisher = channel.publisher().unwrap();
    let mut subscriber = channel.subscriber(&[]).unwrap();
    for i in 0..10u8 {
        publisher.publish(b"t", &[i]).unwrap();
    }
    let r = inspect(&path).unwrap();
    assert_eq!((r.ring.tail, r.ring.depth, r.ring.head), (10, 4, None));
    assert_eq!(r.subscribers.len(), 1);
    assert_eq!((r.subscribers[0].position, r.subscribers[0].lag), (0, 10));
    let missed = match subscriber.recv() {
        Err(RecvError::Lagged(n)) => n,
        other => panic!("expected a lag, got {other:?}"),
    };
    let _ = subscriber.recv().unwrap();
    let c = role_counts(&path, Role::Subscriber);
    assert_eq!((c.lagged, c.received), (missed, 1));
    assert_eq!(role_counts(&path, Role::Publisher).sent, 10);
    let r = inspect(&path).unwrap();
    assert_eq!(r.subscribers[0].lag, 10 - missed - 1);
}

#[test]
fn each_client_shows_its_outstanding_requests_and_waiting_replies() {
    let dir = TempDir::new("inspect-client");
    let path = dir.join("s");
    let service = Service::create(&path, &ServiceOptions::new().max_clients(2)).unwrap();
    let client = service.client().unwrap();
    let first = client.send(b"one").unwrap();
    let _second = client.send(b"two").unwrap();
    let r = inspect(&path).unwrap();
    assert_eq!(r.ring.depth, 2);
    assert_eq!(r.clients.len(), 1);
    assert_eq!(
        (r.clients[0].outstanding, r.clients[0].replies_waiting),
        (2, 0)
    );
    let server = service.server().unwrap();
    let request = server.recv().unwrap();
    let r = inspect(&path).unwrap();
    let held = r
        .participants
        .iter()
        .find(|p| p.role == Role::Server)
        .unwrap();
    assert_eq!(held.holds.reading, 1, "the server holds the request");
    request.reply(b"ONE").unwrap();
    let r = inspect(&path).unwrap();
    assert_eq!(
        (r.clients[0].outstanding, r.clients[0].replies_waiting),
        (2, 1)
    );
    assert_eq!(client.wait(first).unwrap().payload(), b"ONE");
    let r = inspect(&path).unwrap();
    assert_eq!(
        (r.clients[0].outstanding, r.clients[0].replies_waiting),
        (1, 0)
    );
}

/// Writes `bytes` at `offset`, inspects, checks the file is byte-for-byte unchanged by the
/// inspection, and returns the error's text.
fn corrupt_and_inspect(path: &Path, offset: usize, bytes: &[u8]) -> String {
    let mut all = std::fs::read(path).unwrap();
    all[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, &all).unwrap();
    let err = inspect(path).expect_err("a corrupt file is an error");
    assert_eq!(
        std::fs::read(path).unwrap(),
        all,
        "inspect changed the file"
    );
    err.to_string()
}

#[test]
fn a_corrupt_word_is_an_error_naming_its_field() {
    let dir = TempDir::new("inspect-corrupt");
    let fresh = |name: &str| {
        let path = dir.join(name);
        Pipeline::create(
            &path,
            &PipelineOptions::new().capacity(4).max_participants(2),
        )
        .unwrap();
        path
    };
    let g = PipelineOptions::new()
        .capacity(4)
        .max_participants(2)
        .geometry()
        .unwrap();
    let slots = g.slots_offset as usize;
    let cases: [(&str, usize, Vec<u8>, &[&str]); 6] = [
        (
            "role",
            PARTICIPANTS_OFFSET,
            9u64.to_le_bytes().to_vec(),
            &["participant entry 0", "role 9"],
        ),
        (
            "state",
            slots,
            (7u64 << 12).to_le_bytes().to_vec(),
            &["slot 0", "unknown state"],
        ),
        (
            "owner",
            slots,
            3u64.to_le_bytes().to_vec(),
            &["slot 0", "owner 3", "2 participant entries"],
        ),
        (
            "head",
            RING_CONTROL_OFFSET + CTL_HEAD,
            5u64.to_le_bytes().to_vec(),
            &["ring head", "ahead of the tail"],
        ),
        (
            "kind",
            field::KIND,
            7u32.to_le_bytes().to_vec(),
            &["`kind`", "is 7"],
        ),
        (
            "version",
            field::VERSION,
            1u32.to_le_bytes().to_vec(),
            &["format version 1", "reads version 2"],
        ),
    ];
    for (name, offset, bytes, wanted) in cases {
        let text = corrupt_and_inspect(&fresh(name), offset, &bytes);
        for w in wanted {
            assert!(text.contains(w), "{name}: {text:?} should contain {w:?}");
        }
    }
}

#[test]
fn a_version_1_file_is_refused_by_open_naming_both_versions() {
    let dir = TempDir::new("inspect-v1");
    let path = dir.join("q");
    drop(Pipeline::create(&path, &PipelineOptions::new()).unwrap());
    let mut all = std::fs::read(&path).unwrap();
    all[field::VERSION..field::VERSION + 4].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&path, &all).unwrap();
    match Pipeline::open(&path) {
        Err(e @ Error::Corrupt { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("format version 1") && text.contains("reads version 2"),
                "{text}"
            );
        }
        other => panic!("expected a version error, got {other:?}"),
    }
}

#[test]
fn a_busy_queue_never_looks_corrupt_to_the_inspector() {
    let dir = TempDir::new("inspect-busy");
    let path = dir.join("q");
    drop(Pipeline::create(&path, &PipelineOptions::new().capacity(4)).unwrap());
    let p = path.to_str().unwrap();
    let (pumped, drained) = (dir.join("pump"), dir.join("drain"));
    let mut pump = child("pump", &[p, pumped.to_str().unwrap()]);
    let mut drain = child("drain", &[p, drained.to_str().unwrap()]);
    wait_ready(&mut pump, &pumped);
    wait_ready(&mut drain, &drained);
    let mut last = 0;
    for _ in 0..300 {
        let r = inspect(&path).unwrap_or_else(|e| panic!("a live queue looked corrupt: {e}"));
        assert!(r.ring.depth <= 4 && r.ring.tail >= last, "{:?}", r.ring);
        assert_eq!(r.alive(), 2);
        last = r.ring.tail;
    }
    assert!(last > 0, "messages flowed");
    pump.kill();
    drain.kill();
}
