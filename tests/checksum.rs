//! The optional payload checksum (`PipelineOptions::checksum`): a producer process records each
//! message's CRC32C (sent, loaned or batched), the file is scribbled on after the commit (a
//! payload byte flipped, a recorded length changed), and every kind of receive (zero-copy,
//! copying, batch) refuses the altered message with `RecvError::BadChecksum`, skips it
//! (counted, never delivered) and delivers the next intact one; on both rings. Without the flag
//! the same scribble is delivered as it is: the flag is what detects it. Salvage copies only
//! what verifies and keeps the flag.

mod common;

use common::{child, s, TempDir, HANG};
use shmq::layout::{Geometry, SLOT_HEADER_SIZE};
use shmq::{Error, Pipeline, PipelineOptions, RecvError, Salvaged, TryRecvError};
use std::os::unix::fs::FileExt;
use std::path::Path;

const CAPACITY: usize = 16;
const MAX: usize = 64;
const PARTICIPANTS: usize = 4;
/// Messages the producer process sends: 0..3 with `send`, 3..5 through loans, 5..9 in a batch.
const MESSAGES: u8 = 9;

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "producer" => {
            // Opens the file (which says whether it has checksums), sends every message, and
            // detaches by exiting: the messages stay in the file.
            let q = Pipeline::open(&args[0]).unwrap();
            let p = q.producer().unwrap();
            for i in 0..3 {
                p.send(&message(i)).unwrap();
            }
            for i in 3..5 {
                let m = message(i);
                let mut loan = p.loan(m.len()).unwrap();
                loan.copy_from_slice(&m);
                loan.commit().unwrap();
            }
            let batch: Vec<Vec<u8>> = (5..MESSAGES).map(message).collect();
            let batch: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            p.send_batch(&batch).unwrap();
        }
        other => panic!("unknown role {other:?}"),
    });
}

/// Message `i`: lengths 20 to 36, so every one has a last byte and a first one to flip.
fn message(i: u8) -> Vec<u8> {
    let mut m = format!("message {i} ").into_bytes();
    m.resize(20 + 2 * usize::from(i), b'a' + i);
    m
}

fn options(exclusive: bool, checksum: bool) -> PipelineOptions {
    let o = PipelineOptions::new()
        .capacity(CAPACITY)
        .max_message(MAX)
        .max_participants(PARTICIPANTS)
        .checksum(checksum);
    if exclusive {
        o.single_producer().single_consumer()
    } else {
        o
    }
}

/// Writes behind every process's back into the queue file at `path`, as a stray writer would.
struct Scribbler {
    file: std::fs::File,
    geometry: Geometry,
}

impl Scribbler {
    fn new(path: &Path, options: &PipelineOptions) -> Self {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let geometry = options.geometry().unwrap();
        Scribbler { file, geometry }
    }

    /// Where position `pos`'s slot starts (both rings put position `p` in slot `p % capacity`,
    /// and a fresh ring starts at position 0).
    fn slot(&self, pos: u64) -> u64 {
        self.geometry.slots_offset + (pos % self.geometry.capacity) * self.geometry.slot_stride
    }

    /// Flips every bit of payload byte `at` of position `pos`'s message.
    fn flip_payload_byte(&self, pos: u64, at: u64) {
        let off = self.slot(pos) + SLOT_HEADER_SIZE as u64 + at;
        let mut b = [0u8];
        self.file.read_exact_at(&mut b, off).unwrap();
        self.file.write_all_at(&[!b[0]], off).unwrap();
    }

    /// Stores `len` as position `pos`'s recorded length.
    fn set_len(&self, pos: u64, len: u32) {
        self.file
            .write_all_at(&len.to_ne_bytes(), self.slot(pos) + 8)
            .unwrap();
    }
}

/// Creates the queue and has a producer process fill it with [`MESSAGES`] messages.
fn filled(dir: &TempDir, options: &PipelineOptions) -> (std::path::PathBuf, Pipeline) {
    let path = dir.join("q");
    let q = Pipeline::create(&path, options).unwrap();
    child("producer", &[s(&path)]).expect_success(HANG);
    assert_eq!(q.len(), usize::from(MESSAGES));
    (path, q)
}

/// `r` failed with `BadChecksum` (from any receive: its error converts into `shmq::Error`).
fn bad<E: Into<Error>>(r: Result<impl std::fmt::Debug, E>, want_len: usize) {
    match r.map_err(Into::into) {
        Err(Error::Recv(RecvError::BadChecksum {
            len,
            recorded,
            computed,
        })) => {
            assert_eq!(len, want_len);
            assert_ne!(recorded, computed);
        }
        other => panic!("expected BadChecksum for a message of {want_len} bytes, got {other:?}"),
    }
}

fn scribbled_messages_are_skipped_and_counted_never_delivered(exclusive: bool) {
    let dir = TempDir::new(if exclusive {
        "crc-exclusive"
    } else {
        "crc-shared"
    });
    let options = options(exclusive, true);
    let (path, q) = filled(&dir, &options);
    assert!(q.has_checksum() && q.has_exclusive_ends() == exclusive);
    let reopened = Pipeline::open(&path).unwrap();
    assert!(reopened.has_checksum(), "read from the file");

    // After every commit, behind everyone's back: 1 sent, a payload byte flipped; 2 sent, its
    // recorded length shortened by one; 4 loaned, its last byte flipped; 6 batched, flipped.
    let scribble = Scribbler::new(&path, &options);
    scribble.flip_payload_byte(1, 0);
    scribble.set_len(2, message(2).len() as u32 - 1);
    scribble.flip_payload_byte(4, message(4).len() as u64 - 1);
    scribble.flip_payload_byte(6, 5);

    let consumer = reopened.consumer().unwrap();
    // Zero-copy receives.
    assert_eq!(&*consumer.try_recv().unwrap(), &message(0)[..]);
    bad(consumer.try_recv(), message(1).len());
    bad(consumer.recv_timeout(HANG), message(2).len() - 1);
    // Copying receives: the copy is verified.
    let mut buf = [0u8; MAX];
    assert_eq!(consumer.recv_into(&mut buf), Ok(message(3).len()));
    assert_eq!(&buf[..message(3).len()], &message(3)[..], "a loan, intact");
    bad(consumer.try_recv_into(&mut buf), message(4).len());
    // Batches: the bad message ends the batch, after those before it were handled.
    let mut got = Vec::new();
    bad(
        consumer.recv_batch(8, |m| got.push(m.to_vec())),
        message(6).len(),
    );
    assert_eq!(got, [message(5)]);
    got.clear();
    assert_eq!(consumer.recv_batch(8, |m| got.push(m.to_vec())), Ok(2));
    assert_eq!(got, [message(7), message(8)], "the next intact ones");
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(q.len(), 0, "the skipped ones are gone too");

    // Counted where `shmq inspect` shows it, not as received.
    let report = shmq::inspect::inspect(&path).unwrap();
    assert_eq!(report.totals.bad_checksum, 4);
    assert_eq!(report.totals.received, 5);
    assert_eq!(report.totals.sent, u64::from(MESSAGES));
    let e = RecvError::BadChecksum {
        len: 20,
        recorded: 1,
        computed: 2,
    }
    .to_string();
    assert!(e.contains("20 bytes") && e.contains("checksum"), "{e}");

    // The ring goes on: the producer's next lap, checked.
    let producer = q.producer().unwrap();
    for i in 0..CAPACITY as u8 {
        producer.send(&message(i % MESSAGES)).unwrap();
        assert_eq!(&*consumer.try_recv().unwrap(), &message(i % MESSAGES)[..]);
    }
}

#[test]
fn scribbled_messages_are_skipped_and_counted_never_delivered_shared_ring() {
    scribbled_messages_are_skipped_and_counted_never_delivered(false);
}

#[test]
fn scribbled_messages_are_skipped_and_counted_never_delivered_exclusive_ring() {
    scribbled_messages_are_skipped_and_counted_never_delivered(true);
}

/// The same scribble in a queue without checksums is delivered as it is (what the checksum
/// exists for), on both rings.
#[test]
fn without_the_flag_a_scribbled_message_is_delivered_altered() {
    for exclusive in [false, true] {
        let dir = TempDir::new("crc-off");
        let options = options(exclusive, false);
        let (path, q) = filled(&dir, &options);
        assert!(!q.has_checksum());
        Scribbler::new(&path, &options).flip_payload_byte(1, 0);
        let consumer = q.consumer().unwrap();
        assert_eq!(&*consumer.try_recv().unwrap(), &message(0)[..]);
        let mut altered = message(1);
        altered[0] = !altered[0];
        assert_eq!(
            &*consumer.try_recv().unwrap(),
            &altered[..],
            "delivered altered"
        );
        for i in 2..MESSAGES {
            assert_eq!(&*consumer.try_recv().unwrap(), &message(i)[..]);
        }
        assert_eq!(
            shmq::inspect::inspect(&path).unwrap().totals.bad_checksum,
            0
        );
    }
}

/// Salvage keeps the flag and copies only the messages that verify.
#[test]
fn salvage_copies_only_messages_that_verify_and_keeps_the_flag() {
    let dir = TempDir::new("crc-salvage");
    let options = options(false, true);
    let (path, _q) = filled(&dir, &options);
    let scribble = Scribbler::new(&path, &options);
    scribble.flip_payload_byte(3, 2);
    scribble.flip_payload_byte(7, 0);
    let (new, counts) = Pipeline::salvage(&path, dir.join("new")).unwrap();
    assert_eq!(
        counts,
        Salvaged {
            copied: u64::from(MESSAGES) - 2,
            unreadable: 2
        }
    );
    assert!(new.has_checksum(), "the new file keeps the flag");
    assert!(Pipeline::open(dir.join("new")).unwrap().has_checksum());
    let c = new.consumer().unwrap();
    let mut got = Vec::new();
    while let Ok(m) = c.try_recv() {
        got.push(m.to_vec());
    }
    let want: Vec<Vec<u8>> = [0, 1, 2, 4, 5, 6, 8].into_iter().map(message).collect();
    assert_eq!(got, want, "in order, the altered ones left out");
}
