//! Each call's error type holds only what that call can return: a `try_` call says `Full` or
//! `Empty` when it would have waited, a `_timeout` call says `Timeout` when its deadline
//! passed, the reason of the blocking call is wrapped unchanged, and `?` turns every one into a
//! `shmq::Error`. No timing is asserted beyond "a 10 ms timeout on a queue that stays full or
//! empty returns `Timeout`".

mod common;

use common::TempDir;
use shmq::{
    Error, Overflow, Pipeline, PipelineOptions, PubSub, PubSubOptions, RecvError, RecvTimeoutError,
    SendError, SendTimeoutError, Service, ServiceOptions, TryRecvError, TrySendError,
};
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(10);

/// A pipeline of two slots, shared or with exclusive ends.
fn pipeline(dir: &TempDir, exclusive: bool) -> Pipeline {
    let mut options = PipelineOptions::new().capacity(2).max_message(16);
    if exclusive {
        options = options.single_producer().single_consumer();
    }
    Pipeline::create(dir.join("q"), &options).unwrap()
}

fn pipeline_calls_return_their_own_variants(exclusive: bool) {
    let dir = TempDir::new(if exclusive { "err-excl" } else { "err-shared" });
    let q = pipeline(&dir, exclusive);
    let (producer, consumer) = (q.producer().unwrap(), q.consumer().unwrap());
    let mut buf = [0u8; 16];

    // Empty.
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
    assert!(consumer.try_recv().unwrap_err().is_empty());
    assert_eq!(consumer.try_recv_into(&mut buf), Err(TryRecvError::Empty));
    assert_eq!(
        consumer.recv_timeout(SHORT).unwrap_err(),
        RecvTimeoutError::Timeout
    );
    assert!(consumer.recv_timeout(SHORT).unwrap_err().is_timeout());
    assert_eq!(
        consumer.recv_into_timeout(&mut buf, SHORT),
        Err(RecvTimeoutError::Timeout)
    );

    // Full.
    producer.send(b"one").unwrap();
    producer.send(b"two").unwrap();
    assert_eq!(producer.try_send(b"three"), Err(TrySendError::Full));
    assert!(producer.try_send(b"three").unwrap_err().is_full());
    assert!(producer.try_loan(1).unwrap_err().is_full());
    assert_eq!(
        producer.send_timeout(b"three", SHORT),
        Err(SendTimeoutError::Timeout)
    );
    assert!(producer
        .send_timeout(b"three", SHORT)
        .unwrap_err()
        .is_timeout());
    assert_eq!(q.len(), 2, "nothing was sent");

    // What waiting would not change is wrapped, unchanged, whatever the room.
    let too_large = SendError::TooLarge { len: 17, max: 16 };
    assert_eq!(
        producer.try_send(&[0; 17]),
        Err(TrySendError::Send(too_large.clone()))
    );
    assert_eq!(
        producer.send_timeout(&[0; 17], SHORT),
        Err(SendTimeoutError::Send(too_large.clone()))
    );
    assert!(!TrySendError::Send(too_large.clone()).is_full());
    assert!(!SendTimeoutError::Send(too_large.clone()).is_timeout());
    let too_small = RecvError::BufferTooSmall { len: 15, max: 16 };
    assert_eq!(
        consumer.try_recv_into(&mut buf[..15]),
        Err(TryRecvError::Recv(too_small.clone()))
    );
    assert_eq!(
        consumer.recv_into_timeout(&mut buf[..15], SHORT),
        Err(RecvTimeoutError::Recv(too_small))
    );
    assert_eq!(&*consumer.try_recv().unwrap(), b"one");
    assert_eq!(&*consumer.recv_timeout(SHORT).unwrap(), b"two");
}

#[test]
fn pipeline_try_and_timeout_calls_return_full_empty_and_timeout() {
    pipeline_calls_return_their_own_variants(false);
}

#[test]
fn exclusive_pipeline_try_and_timeout_calls_return_full_empty_and_timeout() {
    pipeline_calls_return_their_own_variants(true);
}

/// With `set_disconnect_when_alone`, `try_recv` tells "no producer will come" from "empty".
#[test]
fn try_recv_wraps_disconnected_and_is_not_empty() {
    let dir = TempDir::new("err-disconnected");
    let q = pipeline(&dir, false);
    let mut consumer = q.consumer().unwrap();
    consumer.set_disconnect_when_alone(true);
    // No producer seen yet: only empty.
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
    let producer = q.producer().unwrap();
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
    drop(producer);
    let e = consumer.try_recv().unwrap_err();
    assert_eq!(e, TryRecvError::Recv(RecvError::Disconnected));
    assert!(!e.is_empty());
    assert_eq!(consumer.recv().unwrap_err(), RecvError::Disconnected);
}

#[test]
fn pubsub_try_and_timeout_calls_return_full_empty_and_timeout() {
    let dir = TempDir::new("err-pubsub");
    let options = PubSubOptions::new()
        .capacity(2)
        .max_message(16)
        .max_topic(8)
        .overflow(Overflow::Block);
    let channel = PubSub::create(dir.join("ch"), &options).unwrap();
    let publisher = channel.publisher().unwrap();
    let mut sub = channel.subscriber(&[b"".as_slice()]).unwrap();
    assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(
        sub.recv_timeout(SHORT).unwrap_err(),
        RecvTimeoutError::Timeout
    );
    publisher.publish(b"t", b"1").unwrap();
    publisher.publish(b"t", b"2").unwrap();
    // Block mode: the subscriber is a ring behind.
    assert_eq!(publisher.try_publish(b"t", b"3"), Err(TrySendError::Full));
    assert_eq!(
        publisher.publish_timeout(b"t", b"3", SHORT),
        Err(SendTimeoutError::Timeout)
    );
    assert_eq!(
        publisher.try_publish(&[b't'; 9], b"x"),
        Err(TrySendError::Send(SendError::TopicTooLarge {
            len: 9,
            max: 8
        }))
    );
    assert_eq!(sub.try_recv().unwrap().payload(), b"1");
    assert_eq!(sub.recv_timeout(SHORT).unwrap().payload(), b"2");
    assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Empty);
}

#[test]
fn service_try_and_timeout_calls_return_full_empty_and_timeout() {
    let dir = TempDir::new("err-service");
    let options = ServiceOptions::new()
        .request_capacity(2)
        .reply_capacity(4)
        .max_message(16);
    let service = Service::create(dir.join("svc"), &options).unwrap();
    let (server, client) = (service.server().unwrap(), service.client().unwrap());
    assert_eq!(server.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(
        server.recv_timeout(SHORT).unwrap_err(),
        RecvTimeoutError::Timeout
    );

    // The request ring (two slots) fills while no server takes from it.
    let first = client.try_send(b"a").unwrap();
    let _second = client.send(b"b").unwrap();
    assert_eq!(client.try_send(b"c").unwrap_err(), TrySendError::Full);
    assert!(matches!(
        client.request_timeout(b"c", SHORT),
        Err(Error::Timeout)
    ));

    // No reply yet: the wait times out, and the request is given up.
    assert_eq!(
        client.wait_timeout(first, SHORT).unwrap_err(),
        RecvTimeoutError::Timeout
    );
    let request = server.try_recv().unwrap();
    assert_eq!(&*request, b"a");
    assert_eq!(request.reply(b"late"), Ok(shmq::Delivery::Delivered));
}

/// A client whose every place is held by a request it still waits for: waiting cannot free
/// one, so even the blocking `send` returns at once, with `AllPlacesHeld`, not `Full`.
#[test]
fn every_place_held_is_all_places_held_from_every_send() {
    let dir = TempDir::new("err-places");
    let options = ServiceOptions::new()
        .request_capacity(8)
        .reply_capacity(2)
        .max_message(16);
    let service = Service::create(dir.join("svc"), &options).unwrap();
    let client = service.client().unwrap();
    let held: Vec<_> = (0..2u8).map(|i| client.send(&[i]).unwrap()).collect();
    let all_held = SendError::AllPlacesHeld { places: 2 };
    assert_eq!(client.send(b"x").unwrap_err(), all_held);
    assert_eq!(
        client.try_send(b"x").unwrap_err(),
        TrySendError::Send(all_held.clone())
    );
    assert!(!client.try_send(b"x").unwrap_err().is_full());
    assert!(matches!(
        client.request_timeout(b"x", SHORT),
        Err(Error::Send(SendError::AllPlacesHeld { places: 2 }))
    ));
    assert!(all_held.to_string().contains("2 places"), "{all_held}");

    // A request given up (its ticket dropped) frees its place only when its late reply comes:
    // then a send would wait, so `try_send` says `Full`, and a timed request times out.
    drop(held);
    assert_eq!(client.try_send(b"x").unwrap_err(), TrySendError::Full);
    assert!(matches!(
        client.request_timeout(b"x", SHORT),
        Err(Error::Timeout)
    ));
}

/// `?` converts every call's error into `shmq::Error`: the condition of the call as
/// `Full` / `Empty` / `Timeout`, the wrapped error as `Send` / `Recv`.
#[test]
fn question_mark_converts_each_call_error_into_shmq_error() {
    let dir = TempDir::new("err-question");
    let q = pipeline(&dir, false);
    let (producer, consumer) = (q.producer().unwrap(), q.consumer().unwrap());

    let try_recv = || -> Result<(), Error> {
        let _msg = consumer.try_recv()?;
        Ok(())
    };
    assert!(matches!(try_recv(), Err(Error::Empty)));
    let recv_timeout = || -> Result<(), Error> {
        let _msg = consumer.recv_timeout(SHORT)?;
        Ok(())
    };
    assert!(matches!(recv_timeout(), Err(Error::Timeout)));
    let too_small = || -> Result<usize, Error> { Ok(consumer.try_recv_into(&mut [0; 1])?) };
    assert!(matches!(
        too_small(),
        Err(Error::Recv(RecvError::BufferTooSmall { len: 1, max: 16 }))
    ));

    let fill = || -> Result<(), Error> {
        loop {
            producer.try_send(b"x")?;
        }
    };
    assert!(matches!(fill(), Err(Error::Full)));
    let send_timeout = || -> Result<(), Error> {
        producer.send_timeout(b"x", SHORT)?;
        Ok(())
    };
    assert!(matches!(send_timeout(), Err(Error::Timeout)));
    let too_large = || -> Result<(), Error> {
        producer.try_send(&[0; 17])?;
        Ok(())
    };
    assert!(matches!(
        too_large(),
        Err(Error::Send(SendError::TooLarge { len: 17, max: 16 }))
    ));
    let blocking = || -> Result<(), Error> {
        producer.send(&[0; 17])?;
        Ok(())
    };
    assert!(matches!(
        blocking(),
        Err(Error::Send(SendError::TooLarge { len: 17, max: 16 }))
    ));
}

/// The wrappers are transparent: they display what they wrap and so return no source (an
/// error displays its source or returns it, never both), and convert from what they wrap.
#[test]
fn wrappers_display_what_they_wrap_and_return_no_source() {
    let send = SendError::TooLarge { len: 17, max: 16 };
    let recv = RecvError::NoReply;
    let wrapped: [(Box<dyn std::error::Error>, String); 4] = [
        (Box::new(TrySendError::from(send.clone())), send.to_string()),
        (
            Box::new(SendTimeoutError::from(send.clone())),
            send.to_string(),
        ),
        (Box::new(TryRecvError::from(recv.clone())), recv.to_string()),
        (
            Box::new(RecvTimeoutError::from(recv.clone())),
            recv.to_string(),
        ),
    ];
    for (e, text) in &wrapped {
        assert_eq!(e.to_string(), *text);
        assert!(e.source().is_none(), "{e}");
    }
    for e in [
        Box::new(TrySendError::Full) as Box<dyn std::error::Error>,
        Box::new(SendTimeoutError::Timeout),
        Box::new(TryRecvError::Empty),
        Box::new(RecvTimeoutError::Timeout),
        Box::new(Error::Full),
        Box::new(Error::Empty),
        Box::new(Error::Timeout),
    ] {
        assert!(!e.to_string().is_empty());
        assert!(e.source().is_none(), "{e}");
    }
    assert_eq!(
        Error::from(TrySendError::Send(send.clone())).to_string(),
        send.to_string()
    );
}
