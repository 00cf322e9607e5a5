//! Inputs the fuzzers (`fuzz/`) found crashing shmq, replayed through the same operations, and
//! the forged values behind them made by hand. Each must give errors, never a panic.
//!
//! The files in `tests/fuzz_crashes/` are the fuzzers' crash artifacts, unmodified.

mod common;

use common::TempDir;
use shmq::layout::{CTL_TAIL, RING_CONTROL_OFFSET};
use shmq::{PubSub, PubSubOptions, RecvError, Subscriber, TryRecvError};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

/// Writes `bytes` as a queue file the opener trusts (mode 0600, ours).
fn plant(path: &Path, bytes: &[u8]) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all_at(bytes, 0).unwrap();
}

/// What `fuzz/src/lib.rs::exercise_pubsub` does (kept in step with it).
fn exercise_pubsub(path: &Path) {
    let Ok(ch) = PubSub::open(path) else {
        return;
    };
    let _ = ch.repair();
    let mut history = ch.subscribe(&[b""]).history().attach();
    let mut filtered = ch.subscriber(&[b"t", b"other"]);
    let publisher = ch.publisher();
    for sub in [&mut history, &mut filtered].into_iter().flatten() {
        drain(sub);
    }
    if let Ok(p) = &publisher {
        let _ = p.try_publish(b"t", b"payload");
        let _ = p.try_publish(b"", b"");
        let _ = p.try_publish(&[b't'; 300], b"long topic");
        let _ = p.try_publish(b"t/big", &vec![3; 1 << 16]);
        let _ = p.publish_timeout(b"t/x", b"timeout", Duration::ZERO);
    }
    for sub in [&mut history, &mut filtered].into_iter().flatten() {
        drain(sub);
        let _ = sub.recv_timeout(Duration::ZERO);
    }
    let _ = ch.repair();
}

fn drain(sub: &mut Subscriber) {
    for _ in 0..64 {
        match sub.try_recv() {
            Ok(_) | Err(TryRecvError::Recv(RecvError::Lagged(_))) => {}
            Err(_) => break,
        }
    }
}

#[test]
fn fuzz_crashes_replay_without_a_panic() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_crashes");
    let scratch = TempDir::new("fuzz-replay");
    let mut replayed = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let path = scratch.join(&name);
        plant(&path, &std::fs::read(entry.path()).unwrap());
        if name.starts_with("pubsub-") {
            exercise_pubsub(&path);
        }
        replayed += 1;
    }
    assert!(replayed >= 2);
}

#[test]
fn subscriber_lagging_at_the_end_of_the_position_space_is_corrupt_not_a_panic() {
    // Found by open_pubsub: a tail forged to the last positions makes a subscriber's cursor
    // the last position, and computing how far it lagged overflowed.
    for tail in [u64::MAX, u64::MAX - 8] {
        let dir = TempDir::new("forged-tail");
        let path = dir.join("c");
        let ch = PubSub::create(&path, &PubSubOptions::new().capacity(4).max_message(16)).unwrap();
        let publisher = ch.publisher().unwrap();
        for i in 0..6u8 {
            publisher.try_publish(b"t", &[i]).unwrap();
        }
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&tail.to_ne_bytes(), (RING_CONTROL_OFFSET + CTL_TAIL) as u64)
            .unwrap();
        let mut outcomes = Vec::new();
        for history in [false, true] {
            let sub = if history {
                ch.subscribe(&[b""]).history().attach()
            } else {
                ch.subscriber(&[b""])
            };
            let Ok(mut sub) = sub else { continue };
            for _ in 0..16 {
                match sub.try_recv() {
                    Ok(m) => outcomes.push(format!("message {:?}", m.payload())),
                    Err(e) => {
                        let stop = !matches!(e, TryRecvError::Recv(RecvError::Lagged(_)));
                        outcomes.push(format!("{e}"));
                        if stop {
                            break;
                        }
                    }
                }
            }
        }
        assert!(!outcomes.is_empty(), "tail {tail:#x}");
    }
}
