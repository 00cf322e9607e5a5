//! The API's conveniences, each as the guarantee it gives: iteration over a consumer or a
//! subscriber, a batch callback that sees redelivery, how many of the other side are attached,
//! receives that end when every producer is gone, and request-reply tickets and replies.

mod common;

use common::TempDir;
use shmq::{Options, Overflow, Pipeline, PubSub, PubSubOptions, RecvError};

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "send_and_exit" => send_and_exit(args),
        other => panic!("unknown role {other:?}"),
    });
}

/// args: path, messages to send. Attaches a producer, sends, and exits (detaching it).
fn send_and_exit(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let producer = q.producer().unwrap();
    for msg in &args[1..] {
        producer.send(msg.as_bytes()).unwrap();
    }
}

fn queue(dir: &TempDir, options: &Options) -> Pipeline {
    Pipeline::create(dir.join("q"), options).unwrap()
}

#[test]
fn consumer_iter_yields_messages_in_order_and_acknowledges_each_when_dropped() {
    for options in [
        Options::new().capacity(4).max_message(16),
        Options::new()
            .capacity(4)
            .max_message(16)
            .single_producer()
            .single_consumer(),
    ] {
        let dir = TempDir::new("api-iter");
        let q = queue(&dir, &options);
        let (producer, consumer) = (q.producer().unwrap(), q.consumer().unwrap());
        producer.send_batch(&[b"a", b"b", b"c"]).unwrap();
        let got: Vec<Vec<u8>> = consumer
            .iter()
            .take(3)
            .map(|m| m.unwrap().to_vec())
            .collect();
        assert_eq!(got, [b"a", b"b", b"c"]);
        assert_eq!(q.len(), 0, "every message was acknowledged");
        // `for` over `&Consumer` is `iter()`.
        producer.send(b"d").unwrap();
        let mut all = (&consumer).into_iter();
        assert_eq!(&*all.next().unwrap().unwrap(), b"d");
    }
}

#[test]
fn try_iter_takes_what_is_ready_then_ends_without_waiting() {
    let dir = TempDir::new("api-try-iter");
    let q = queue(&dir, &Options::new().capacity(8).max_message(16));
    let (producer, consumer) = (q.producer().unwrap(), q.consumer().unwrap());
    assert_eq!(consumer.try_iter().count(), 0);
    producer.send_batch(&[b"1", b"2", b"3"]).unwrap();
    let mut it = consumer.try_iter();
    assert_eq!(&*it.next().unwrap().unwrap(), b"1");
    assert_eq!(it.by_ref().count(), 2);
    // Ended, and stays ended (fused) even once more is sent.
    producer.send(b"4").unwrap();
    assert!(it.next().is_none());
    assert_eq!(&*consumer.try_iter().next().unwrap().unwrap(), b"4");
}

/// A consumer that dies holding a message has it delivered again, flagged; `recv_batch`'s
/// callback sees the flag.
#[test]
fn recv_batch_callback_sees_which_messages_are_redelivered() {
    for exclusive in [false, true] {
        let dir = TempDir::new("api-batch-redelivered");
        let mut options = Options::new().capacity(8).max_message(16);
        if exclusive {
            options = options.single_producer().single_consumer();
        }
        let q = queue(&dir, &options);
        let producer = q.producer().unwrap();
        producer.send_batch(&[b"held", b"next"]).unwrap();
        {
            let consumer = q.consumer().unwrap();
            std::mem::forget(consumer.recv().unwrap()); // leaked: delivered again on detach
        }
        let consumer = q.consumer().unwrap();
        let mut seen = Vec::new();
        let n = consumer
            .recv_batch(8, |m| seen.push((m.to_vec(), m.redelivered())))
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            seen,
            [(b"held".to_vec(), true), (b"next".to_vec(), false)],
            "exclusive ends: {exclusive}"
        );
    }
}

#[test]
fn subscriber_iter_keeps_its_topics_reports_lag_and_goes_on() {
    let dir = TempDir::new("api-sub-iter");
    let channel = PubSub::create(
        dir.join("c"),
        &PubSubOptions::new()
            .capacity(4)
            .max_message(16)
            .overflow(Overflow::DropOldest),
    )
    .unwrap();
    let mut subscriber = channel.subscriber(&[b"a/".as_slice()]).unwrap();
    let publisher = channel.publisher().unwrap();
    publisher.publish(b"a/1", b"one").unwrap();
    publisher.publish(b"b/1", b"other topic").unwrap();
    publisher.publish(b"a/2", b"two").unwrap();
    let got: Vec<_> = subscriber.try_iter().map(Result::unwrap).collect();
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].topic(), got[0].payload()),
        (&b"a/1"[..], &b"one"[..])
    );
    assert_eq!((got[1].topic(), &*got[1]), (&b"a/2"[..], &b"two"[..]));
    // Six messages on a ring of four: two lost (Lagged counts every topic), then it goes on.
    for i in 0..6u8 {
        publisher.publish(b"a/x", &[i]).unwrap();
    }
    let mut it = subscriber.try_iter();
    assert_eq!(it.next().unwrap(), Err(RecvError::Lagged(2)));
    let rest: Vec<u8> = it.map(|m| m.unwrap().payload()[0]).collect();
    assert_eq!(rest, [2, 3, 4, 5]);
    // The blocking iterator yields the same messages.
    publisher.publish(b"a/y", b"y").unwrap();
    assert_eq!(subscriber.iter().next().unwrap().unwrap().topic(), b"a/y");
}
