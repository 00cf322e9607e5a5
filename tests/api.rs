//! The API's conveniences, each as the guarantee it gives: iteration over a consumer or a
//! subscriber, a batch callback that sees redelivery, how many of the other side are attached,
//! receives that end when every producer is gone, and request-reply tickets and replies.

mod common;

use common::{child, child_with_env, s, uncapped_park, ChildProc, TempDir, HANG};
use shmq::layout::{CTL_NOT_EMPTY, RING_CONTROL_OFFSET};
use shmq::{
    Overflow, Pipeline, PipelineOptions, PubSub, PubSubOptions, RecvError, RecvTimeoutError,
    Service, ServiceOptions, TryRecvError,
};
use std::path::Path;
use std::time::Duration;

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "send_and_exit" => send_and_exit(args),
        "send_wait_exit" => send_wait_exit(args),
        "send_and_hang" => send_and_hang(args),
        "drain_until_disconnected" => drain_until_disconnected(args),
        other => panic!("unknown role {other:?}"),
    });
}

/// args: path, message, go file. Sends the message, then exits once the go file exists.
fn send_wait_exit(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let producer = q.producer().unwrap();
    producer.send(args[1].as_bytes()).unwrap();
    assert!(common::wait_until(HANG, || Path::new(&args[2]).exists()));
}

/// args: path, message, ready file. Sends the message, signals ready, and stays attached
/// until it is killed.
fn send_and_hang(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let producer = q.producer().unwrap();
    producer.send(args[1].as_bytes()).unwrap();
    common::signal_ready(&args[2]);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let _ = &producer;
    }
}

/// args: path, expected message count, ready file. Receives (parked, never spinning) until
/// `Disconnected`; signals ready after the first message; checks the count.
fn drain_until_disconnected(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let mut consumer = q.consumer().unwrap();
    consumer.set_wait_strategy(shmq::WaitStrategy::Park);
    consumer.set_disconnect_when_alone(true);
    let mut n = 0;
    loop {
        match consumer.recv() {
            Ok(msg) => drop(msg),
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
        n += 1;
        if n == 1 {
            common::signal_ready(&args[2]);
        }
    }
    assert_eq!(n, args[1].parse::<usize>().unwrap());
}

/// How many waiters are registered on the ring's not-empty cell.
fn consumers_parked(path: &Path) -> u32 {
    common::registered_waiters(path, (RING_CONTROL_OFFSET + CTL_NOT_EMPTY) as u64)
}

fn pipeline_options(exclusive: bool) -> PipelineOptions {
    let options = PipelineOptions::new().capacity(8).max_message(64);
    if exclusive {
        options.single_producer().single_consumer()
    } else {
        options
    }
}

/// args: path, messages to send. Attaches a producer, sends, and exits (detaching it).
fn send_and_exit(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let producer = q.producer().unwrap();
    for msg in &args[1..] {
        producer.send(msg.as_bytes()).unwrap();
    }
}

fn queue(dir: &TempDir, options: &PipelineOptions) -> Pipeline {
    Pipeline::create(dir.join("q"), options).unwrap()
}

#[test]
fn consumer_iter_yields_messages_in_order_and_acknowledges_each_when_dropped() {
    for options in [
        PipelineOptions::new().capacity(4).max_message(16),
        PipelineOptions::new()
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
    let q = queue(&dir, &PipelineOptions::new().capacity(8).max_message(16));
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
        let mut options = PipelineOptions::new().capacity(8).max_message(16);
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

// ---------------------------------------------------------------------------------------------
// Disconnection
// ---------------------------------------------------------------------------------------------

/// How many of the other side are attached, counted from the participant table, across
/// processes: a child's producer counts while it lives and not once it exited.
#[test]
fn consumer_counts_the_producers_attached_in_other_processes() {
    let dir = TempDir::new("api-producers");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &pipeline_options(false)).unwrap();
    let consumer = q.consumer().unwrap();
    assert_eq!(consumer.producers(), 0);
    let local = q.producer().unwrap();
    assert_eq!(consumer.producers(), 1);
    let ready = dir.join("ready");
    let mut p = child("send_and_hang", &[s(&path), "m", s(&ready)]);
    common::wait_ready(&mut p, &ready);
    assert_eq!(consumer.producers(), 2);
    drop(local);
    assert_eq!(consumer.producers(), 1);
    p.kill();
    // Dead, not reaped yet: still counted until a sweep (here an explicit repair).
    assert_eq!(consumer.producers(), 1);
    assert_eq!(q.repair().unwrap().reaped, 1);
    assert_eq!(consumer.producers(), 0);
    // A second consumer is not a producer.
    let _other = q.consumer().unwrap();
    assert_eq!(consumer.producers(), 0);
}

#[test]
fn subscriber_server_and_client_count_the_other_side() {
    let dir = TempDir::new("api-counts");
    let channel = PubSub::create(dir.join("c"), &PubSubOptions::new()).unwrap();
    let subscriber = channel.subscriber(&[]).unwrap();
    assert_eq!(subscriber.publishers(), 0);
    let publishers = [channel.publisher().unwrap(), channel.publisher().unwrap()];
    let _second_subscriber = channel.subscriber(&[]).unwrap();
    assert_eq!(subscriber.publishers(), 2);
    drop(publishers);
    assert_eq!(subscriber.publishers(), 0);

    let service = Service::create(dir.join("s"), &ServiceOptions::new()).unwrap();
    let server = service.server().unwrap();
    let client = service.client().unwrap();
    assert_eq!((server.clients(), client.servers()), (1, 1));
    let other_server = service.server().unwrap();
    assert_eq!((server.clients(), client.servers()), (1, 2));
    drop((client, other_server));
    assert_eq!(server.clients(), 0);
}

/// A producer process sends and exits; the consumer, told to, receives every message it sent
/// and then `Disconnected` instead of waiting for ever; without being told to, it waits.
#[test]
fn blocking_recv_returns_disconnected_after_the_last_producer_process_exits() {
    for exclusive in [false, true] {
        let dir = TempDir::new("api-disconnected");
        let path = dir.join("q");
        let q = Pipeline::create(&path, &pipeline_options(exclusive)).unwrap();
        let mut consumer = q.consumer().unwrap();
        consumer.set_disconnect_when_alone(true);
        // Nobody seen yet: an empty queue is only empty.
        assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
        child("send_and_exit", &[s(&path), "one", "two", "three"]).expect_success(HANG);
        let got: Vec<Vec<u8>> = consumer.iter().map(|m| m.unwrap().to_vec()).collect();
        assert_eq!(
            got,
            [&b"one"[..], b"two", b"three"],
            "exclusive: {exclusive}"
        );
        assert_eq!(consumer.recv().unwrap_err(), RecvError::Disconnected);
        assert_eq!(
            consumer.try_recv().unwrap_err(),
            TryRecvError::Recv(RecvError::Disconnected)
        );
        // A producer attaching again is waited for again.
        let producer = q.producer().unwrap();
        assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
        drop(producer);
        assert_eq!(
            consumer.try_recv().unwrap_err(),
            TryRecvError::Recv(RecvError::Disconnected)
        );

        // The default: a queue outlives its producers, so the consumer keeps waiting.
        drop(consumer);
        let mut waiting = q.consumer().unwrap();
        child("send_and_exit", &[s(&path), "four"]).expect_success(HANG);
        assert_eq!(&*waiting.recv().unwrap(), b"four");
        assert_eq!(
            waiting
                .recv_timeout(Duration::from_millis(100))
                .unwrap_err(),
            RecvTimeoutError::Timeout
        );
        waiting.set_disconnect_when_alone(false);
        assert_eq!(waiting.try_recv().unwrap_err(), TryRecvError::Empty);
    }
}

/// A consumer parked in `recv` (never woken by a timer: its park is uncapped) is woken when
/// the last producer's process detaches it by exiting, without sending anything more.
#[test]
fn parked_consumer_is_woken_when_the_last_producer_detaches() {
    for exclusive in [false, true] {
        let dir = TempDir::new("api-disconnect-wake");
        let path = dir.join("q");
        Pipeline::create(&path, &pipeline_options(exclusive)).unwrap();
        let (ready, go) = (dir.join("ready"), dir.join("go"));
        let mut p = child("send_wait_exit", &[s(&path), "only", s(&go)]);
        let mut c = child_with_env(
            "drain_until_disconnected",
            &[s(&path), "1", s(&ready)],
            &uncapped_park(),
        );
        common::wait_ready(&mut c, &ready);
        wait_parked(&path, &mut c);
        std::fs::write(&go, b"go").unwrap();
        p.expect_success(HANG);
        c.expect_success(HANG);
    }
}

/// A producer process killed (not detached) is reaped by the waiting consumer's own stall
/// sweep, after which the consumer gets `Disconnected`.
#[test]
fn recv_returns_disconnected_once_a_killed_producer_is_reaped() {
    let dir = TempDir::new("api-disconnect-killed");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &pipeline_options(false)).unwrap();
    let mut consumer = q.consumer().unwrap();
    consumer.set_disconnect_when_alone(true);
    let ready = dir.join("ready");
    let mut p = child("send_and_hang", &[s(&path), "last words", s(&ready)]);
    common::wait_ready(&mut p, &ready);
    assert_eq!(&*consumer.recv().unwrap(), b"last words");
    p.kill();
    assert_eq!(consumer.recv().unwrap_err(), RecvError::Disconnected);
    assert_eq!(q.recovery_stats().reaped, 1);
}

/// Waits until some process parks on the not-empty cell; panics if `child` exits first.
fn wait_parked(path: &Path, child: &mut ChildProc) {
    let parked = common::wait_until(HANG, || {
        if let Some(st) = child.try_wait() {
            panic!("child {:?} exited ({st}) instead of blocking", child.role());
        }
        consumers_parked(path) > 0
    });
    assert!(parked, "child {:?} never parked", child.role());
}

// ---------------------------------------------------------------------------------------------
// Request-reply: replies held side by side, tickets tied to their client
// ---------------------------------------------------------------------------------------------

fn service(dir: &TempDir, reply_capacity: usize) -> Service {
    Service::create(
        dir.join("s"),
        &ServiceOptions::new()
            .reply_capacity(reply_capacity)
            .max_message(32),
    )
    .unwrap()
}

/// Answers `n` requests with their payload, upper-cased (what is not a letter stays).
fn answer(server: &shmq::Server, n: usize) {
    for _ in 0..n {
        let request = server.recv().unwrap();
        let upper = request.to_ascii_uppercase();
        request.reply(&upper).unwrap();
    }
}

/// Several replies held at once (one still in its slot, one kept in the client's buffer)
/// while the client sends more; each holds its place until dropped, so the places in use
/// never exceed `reply_capacity` and servers never find the reply ring full.
#[test]
fn replies_can_be_held_side_by_side_while_the_client_sends_more() {
    let dir = TempDir::new("api-replies");
    let svc = service(&dir, 3);
    let (server, client) = (svc.server().unwrap(), svc.client().unwrap());
    let (a, b) = (client.send(b"a").unwrap(), client.send(b"b").unwrap());
    answer(&server, 2);
    let reply_b = client.wait(b).unwrap(); // takes a's reply too, keeping it in a buffer
    let reply_a = client.wait(a).unwrap();
    let c = client.send(b"c").unwrap(); // the third place
    answer(&server, 1);
    // Every place is held: by two replies and a request.
    assert_eq!(
        client.try_send(b"d").unwrap_err(),
        shmq::TrySendError::Send(shmq::SendError::AllPlacesHeld { places: 3 })
    );
    let reply_c = client.wait(c).unwrap();
    assert_eq!(
        (&*reply_a, &*reply_b, &*reply_c),
        (&b"A"[..], &b"B"[..], &b"C"[..])
    );
    assert_eq!(
        client.try_send(b"d").unwrap_err(),
        shmq::TrySendError::Send(shmq::SendError::AllPlacesHeld { places: 3 })
    );
    drop(reply_b);
    // A dropped reply frees its place: the next request goes, and its reply comes back
    // right while the others are still held.
    let d = client.try_send(b"d").unwrap();
    answer(&server, 1);
    assert_eq!(&*client.wait(d).unwrap(), b"D");
    assert_eq!((&*reply_a, &*reply_c), (&b"A"[..], &b"C"[..]));
}

/// A ticket used with a client other than the one that made it is refused with
/// `WrongClient`; it is never answered with the other client's reply of the same id.
#[test]
fn a_ticket_waited_for_on_another_client_is_refused_not_answered_wrongly() {
    let dir = TempDir::new("api-wrong-client");
    let svc = service(&dir, 4);
    let server = svc.server().unwrap();
    let (client_a, client_b) = (svc.client().unwrap(), svc.client().unwrap());
    // First request of each: their correlation ids are the same.
    let from_a = client_a.send(b"from a").unwrap();
    let from_b = client_b.send(b"from b").unwrap();
    assert_eq!(from_a.id(), from_b.id());
    answer(&server, 2);
    assert_eq!(
        client_b.wait(from_a).unwrap_err(),
        RecvError::WrongClient,
        "client b answered client a's ticket"
    );
    // b's own request is untouched; a's ticket was given up on a (dropped), so its reply is
    // discarded there, never handed to a's next request.
    assert_eq!(&*client_b.wait(from_b).unwrap(), b"FROM B");
    let again = client_a.send(b"again").unwrap();
    answer(&server, 1);
    assert_eq!(&*client_a.wait(again).unwrap(), b"AGAIN");
}

/// Threads sharing one client each wait for their own ticket: a wait that takes another
/// thread's reply keeps it and wakes that thread, which then finds it.
#[test]
fn threads_sharing_a_client_each_get_their_own_reply() {
    let dir = TempDir::new("api-shared-client");
    let svc = service(&dir, 8);
    let server = svc.server().unwrap();
    let mut client = svc.client().unwrap();
    client.set_wait_strategy(shmq::WaitStrategy::Park);
    let client = client;
    std::thread::scope(|scope| {
        let waiters: Vec<_> = (0..4u8)
            .map(|i| {
                let client = &client;
                scope.spawn(move || {
                    for round in 0..50u8 {
                        let msg = [b'a' + i, round];
                        let pending = client.send(&msg).unwrap();
                        let reply = client.wait(pending).unwrap();
                        assert_eq!(&*reply, &[b'A' + i, round]);
                    }
                })
            })
            .collect();
        answer(&server, 200);
        for waiter in waiters {
            waiter.join().unwrap();
        }
    });
}

/// A reply kept for long holds its place, never a slot of the reply ring: servers keep
/// delivering, lap after lap of the ring, to a client that holds one.
#[test]
fn a_reply_kept_for_long_never_holds_up_servers() {
    let dir = TempDir::new("api-kept-reply");
    let svc = service(&dir, 2);
    let (server, client) = (svc.server().unwrap(), svc.client().unwrap());
    let first = client.send(b"kept").unwrap();
    answer(&server, 1);
    let kept = client.wait(first).unwrap();
    for round in 0..10u8 {
        let pending = client.send(&[b'a' + round]).unwrap();
        let request = server.recv().unwrap();
        let upper = request.to_ascii_uppercase();
        assert_eq!(request.reply(&upper), Ok(shmq::Delivery::Delivered));
        assert_eq!(&*client.wait(pending).unwrap(), &[b'A' + round]);
    }
    assert_eq!(&*kept, b"KEPT");
}

/// `Lagged(n)` counts the missed messages of every topic, as its docs say: a subscriber to a
/// quiet topic lags on a busy channel without having missed a message of its own.
#[test]
fn lagged_counts_missed_messages_of_every_topic() {
    let dir = TempDir::new("api-lagged-topics");
    let channel = PubSub::create(
        dir.join("c"),
        &PubSubOptions::new().capacity(4).max_message(8),
    )
    .unwrap();
    let mut quiet = channel.subscriber(&[b"quiet/".as_slice()]).unwrap();
    let publisher = channel.publisher().unwrap();
    for _ in 0..6 {
        publisher.publish(b"busy/x", b"m").unwrap();
    }
    publisher.publish(b"quiet/y", b"mine").unwrap();
    // Seven published, four retained: three lost, none of them on `quiet/`.
    assert_eq!(
        quiet.try_recv().unwrap_err(),
        TryRecvError::Recv(RecvError::Lagged(3))
    );
    assert_eq!(quiet.try_recv().unwrap().payload(), b"mine");
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// `Corruption` is an error of its own with a standalone phrase; the errors wrapping something
/// display it and do not also return it from `source()`.
#[test]
fn errors_display_their_cause_once_and_corruption_stands_alone() {
    use std::error::Error as _;
    let dir = TempDir::new("api-errors");
    let missing = dir.join("missing");
    let e = Pipeline::open(&missing).unwrap_err();
    assert!(matches!(e, shmq::Error::Io { .. }));
    assert!(e.to_string().contains("No such file"), "{e}");
    assert!(e.source().is_none(), "displayed and returned: {e}");

    let garbage = dir.join("garbage");
    std::fs::write(&garbage, [0xa5u8; 4096]).unwrap();
    let e = Pipeline::open(&garbage).unwrap_err();
    let shmq::Error::Corrupt { problem, .. } = &e else {
        panic!("{e:?}")
    };
    let standalone: &dyn std::error::Error = problem;
    assert!(
        standalone.to_string().starts_with("not a shmq queue file"),
        "{problem}"
    );
    assert!(e.to_string().ends_with(&problem.to_string()), "{e}");
    assert!(e.source().is_none());

    let wrapped = shmq::Error::from(RecvError::Corrupt(problem.clone()));
    assert_eq!(wrapped.to_string(), format!("queue file: {problem}"));
    assert!(wrapped.source().is_none());
}
