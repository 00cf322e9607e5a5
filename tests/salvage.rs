//! Salvage: a live pipeline corrupted in three slots (an unknown state at the head, an
//! impossible length, a sequence that does not belong to its slot) stays corrupt for its
//! consumers; `Pipeline::salvage` copies every other committed message — the one a consumer
//! still holds included — into a new file, in order, and the new queue works.

mod common;

use common::{child, s, wait_ready, TempDir};
use shmq::layout::Geometry;
use shmq::{Error, Pipeline, PipelineOptions, RecvError, Salvaged, TryRecvError};
use std::os::unix::fs::FileExt;
use std::time::Duration;

const CAPACITY: u64 = 16;
const MAX: usize = 32;
const PARTICIPANTS: u32 = 8;

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "producer" => {
            // Sends messages 0..12 and stays attached until killed.
            let q = Pipeline::open(&args[0]).unwrap();
            let p = q.producer().unwrap();
            for i in 0..12u8 {
                p.send(&message(i)).unwrap();
            }
            common::signal_ready(&args[1]);
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        other => panic!("unknown role {other:?}"),
    });
}

fn message(i: u8) -> Vec<u8> {
    format!("message {i:02} {}", "#".repeat(usize::from(i))).into_bytes()
}

#[test]
fn salvage_recovers_every_untouched_message_of_a_corrupted_live_queue() {
    let dir = TempDir::new("salvage");
    let (old, new) = (dir.join("old"), dir.join("new"));
    let options = PipelineOptions::new()
        .capacity(CAPACITY as usize)
        .max_message(MAX)
        .max_participants(PARTICIPANTS as usize);
    let q = Pipeline::create(&old, &options).unwrap();
    let ready = dir.join("ready");
    let mut producer = child("producer", &[s(&old), s(&ready)]);
    wait_ready(&mut producer, &ready);

    // Messages 0 and 1 are acknowledged; 2 is held (taken, not acknowledged).
    let consumer = q.consumer().unwrap();
    for i in 0..2 {
        assert_eq!(&*consumer.try_recv().unwrap(), &message(i)[..]);
    }
    let held = consumer.try_recv().unwrap();
    assert_eq!(&*held, &message(2)[..]);

    // Corrupt three slots behind everyone's back.
    let g = Geometry::pipeline(CAPACITY, MAX as u64, PARTICIPANTS).unwrap();
    let slot = |i: u64| g.slots_offset + i * g.slot_stride;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&old)
        .unwrap();
    let word = |at: u64| {
        let mut w = [0u8; 8];
        file.read_exact_at(&mut w, at).unwrap();
        u64::from_ne_bytes(w)
    };
    // Message 3 (at the head): an unknown state (7) in its state word.
    file.write_all_at(&(word(slot(3)) | 0x7000).to_ne_bytes(), slot(3))
        .unwrap();
    // Message 7: a length above the maximum.
    file.write_all_at(&1000u32.to_ne_bytes(), slot(7) + 8)
        .unwrap();
    // Message 9: its sequence moved on by one (no longer its slot's).
    file.write_all_at(&(word(slot(9)) + (1 << 16)).to_ne_bytes(), slot(9))
        .unwrap();

    // The queue is corrupt, and stays so.
    for _ in 0..2 {
        match consumer.try_recv() {
            Err(TryRecvError::Recv(RecvError::Corrupt(_))) => {}
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    let (salvaged, counts) = Pipeline::salvage(&old, &new).unwrap();
    assert_eq!(
        counts,
        Salvaged {
            copied: 7,
            unreadable: 3
        }
    );
    let c = salvaged.consumer().unwrap();
    let mut got = Vec::new();
    while let Ok(m) = c.try_recv() {
        got.push(m.to_vec());
    }
    let want: Vec<Vec<u8>> = [2, 4, 5, 6, 8, 10, 11].into_iter().map(message).collect();
    // Of 12 sent: 2 acknowledged, 3 damaged; the held one is kept.
    assert_eq!(got.len() as u64, counts.copied, "{got:?}");
    assert_eq!(
        &got[..],
        &want[..],
        "in order, nothing damaged, nothing lost"
    );

    // The new queue works, and salvage never replaces a file.
    salvaged.producer().unwrap().send(b"after").unwrap();
    assert_eq!(&*c.try_recv().unwrap(), b"after");
    match Pipeline::salvage(&old, &new) {
        Err(Error::Io { source, .. }) => assert_eq!(source.raw_os_error(), Some(nix::libc::EEXIST)),
        other => panic!("expected EEXIST, got {other:?}"),
    }
    drop(held);
    producer.kill();
}
