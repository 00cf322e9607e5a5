//! Copying receives, for peers one does not trust: the message is copied out of the shared
//! file with atomic word loads (never through a slice over the mapping) and is byte-identical
//! to what was sent, for every length around the word size; a buffer too short is refused
//! before anything is received.

mod common;

use common::{Rng, TempDir};
use shmq::{Pipeline, PipelineOptions, RecvError, Service, ServiceOptions, TryRecvError};

fn message(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut m = vec![0; len];
    rng.fill(&mut m);
    m
}

#[test]
fn recv_into_and_copies_are_byte_identical_for_every_length() {
    let dir = TempDir::new("copy-pipeline");
    let q = Pipeline::create(
        dir.join("q"),
        &PipelineOptions::new().capacity(8).max_message(70),
    )
    .unwrap();
    let (producer, consumer) = (q.producer().unwrap(), q.consumer().unwrap());
    let mut rng = Rng::new(10);
    let mut buf = vec![0xeeu8; 70];
    for len in 0..=70 {
        let sent = message(&mut rng, len);
        producer.send(&sent).unwrap();
        assert_eq!(consumer.try_recv_into(&mut buf), Ok(len));
        assert_eq!(&buf[..len], &sent[..], "recv_into, length {len}");

        producer.send(&sent).unwrap();
        let m = consumer.try_recv().unwrap();
        assert_eq!(m.copy_to_vec(), sent, "copy_to_vec, length {len}");
        let mut short = vec![0; len.saturating_sub(1)];
        assert_eq!(m.copy_to(&mut short), if len == 0 { Some(0) } else { None });
        assert_eq!(&*m, &sent[..]);
    }
    assert_eq!(consumer.try_recv_into(&mut buf), Err(TryRecvError::Empty));
}

#[test]
fn recv_into_refuses_a_short_buffer_without_taking_a_message() {
    let dir = TempDir::new("copy-short");
    let q = Pipeline::create(
        dir.join("q"),
        &PipelineOptions::new().capacity(4).max_message(64),
    )
    .unwrap();
    let (producer, consumer) = (q.producer().unwrap(), q.consumer().unwrap());
    producer.send(b"short message").unwrap();
    let mut small = [0u8; 63];
    assert_eq!(
        consumer.try_recv_into(&mut small),
        Err(TryRecvError::Recv(RecvError::BufferTooSmall {
            len: 63,
            max: 64
        }))
    );
    let e = consumer.try_recv_into(&mut small).unwrap_err().to_string();
    assert!(e.contains("63") && e.contains("64"), "{e}");
    // Still there.
    let mut buf = [0u8; 64];
    assert_eq!(consumer.recv_into_timeout(&mut buf, common::HANG), Ok(13));
    assert_eq!(&buf[..13], b"short message");
}

#[test]
fn request_and_reply_copies_are_byte_identical() {
    let dir = TempDir::new("copy-service");
    let svc = Service::create(
        dir.join("s"),
        &ServiceOptions::new()
            .request_capacity(4)
            .reply_capacity(4)
            .max_message(40),
    )
    .unwrap();
    let (server, client) = (svc.server().unwrap(), svc.client().unwrap());
    let mut rng = Rng::new(11);
    for len in 0..=40 {
        let asked = message(&mut rng, len);
        let answer = message(&mut rng, 40 - len);
        // Two in flight, answered in reverse order, so one reply is kept (copied aside by the
        // client) and the other read from its slot.
        let first = client.send(&asked).unwrap();
        let second = client.send(&asked).unwrap();
        for _ in 0..2 {
            let r = server.try_recv().unwrap();
            assert_eq!(r.copy_to_vec(), asked, "request, length {len}");
            assert_eq!(r.payload(), &asked[..]);
            r.reply(&answer).unwrap();
        }
        for p in [second, first] {
            let reply = client.wait(p).unwrap();
            assert_eq!(reply.copy_to_vec(), answer, "reply, length {}", 40 - len);
            assert_eq!(reply.payload(), &answer[..]);
        }
    }
}
