//! The async futures across real processes: a task awaiting each pattern is woken by the other
//! process, `select!` over three queues, a thousand futures on two hundred queues (several
//! reactor threads), cancellation loses nothing and leaves nothing registered, a future behind
//! a SIGKILLed producer resolves by recovery, and the reactor's fallback for kernels without
//! `futex_waitv`.
//!
//! The awaiting side runs in a child whose longest sleep is lifted far beyond the test's own
//! deadline (`uncapped_park`: the reactor's stall wake-up, which would otherwise re-poll every
//! future every 50 ms, is off too): a wake-up the reactor misses hangs that child and fails the
//! test instead of costing 50 ms. The other side acts only once the child's future is
//! registered on the queue's wait cell (read through the file), so the wake-up is the one
//! under test, not a lucky first poll.

mod common;

use common::{
    child, child_with_env, s, signal_ready, uncapped_park, wait_ready, wait_until, ChildProc,
    TempDir, HANG,
};
use shmq::layout::{CTL_NOT_EMPTY, CTL_NOT_FULL, RING_CONTROL_OFFSET};
use shmq::{
    Overflow, Pipeline, PipelineOptions, PubSub, PubSubOptions, Service, ServiceOptions,
    TryRecvError,
};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::Duration;

/// Futures per queue, and queues, of the many-futures test (more than one reactor's 127).
const FUTURES_PER_QUEUE: usize = 5;
const MANY_QUEUES: usize = 200;

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "await_consumer" => await_consumer(args),
        "await_own_reactor" => await_own_reactor(args),
        "await_subscriber" => await_subscriber(args),
        "await_server" => await_server(args),
        "await_client" => await_client(args),
        "await_send" => await_send(args),
        "await_publish" => await_publish(args),
        "await_select" => await_select(args),
        "await_many" => await_many(args),
        "cancel_then_receive" => cancel_then_receive(args),
        "send_and_park" => {
            let q = Pipeline::open(&args[0]).unwrap();
            q.producer().unwrap().send(b"never finished").unwrap();
        }
        other => panic!("unknown role {other}"),
    });
}

/// A tokio runtime on the calling thread, with timers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// How many waiters are registered on the cell at `cell` of the ring control block.
fn registered(path: &Path, cell: usize) -> u32 {
    common::registered_waiters(path, (RING_CONTROL_OFFSET + cell) as u64)
}

/// Waits until at least `n` waiters are registered on `cell`; panics if `child` exits first.
fn wait_registered(path: &Path, cell: usize, n: u32, child: &mut ChildProc) {
    let ok = wait_until(HANG, || {
        if let Some(st) = child.try_wait() {
            panic!("child {:?} exited ({st}) instead of waiting", child.role());
        }
        registered(path, cell) >= n
    });
    assert!(ok, "child {:?} never registered {n} waiters", child.role());
}

// ---------------------------------------------------------------------------------------------
// Child roles
// ---------------------------------------------------------------------------------------------

/// Awaits one message on a pipeline (with the fallback forced if the second argument says
/// `repoll`) and checks it is the third argument.
fn await_consumer(args: &[String]) {
    if args[1] == "repoll" {
        shmq::test_hooks::force_repoll_fallback();
    }
    let q = Pipeline::open(&args[0]).unwrap();
    let consumer = q.consumer().unwrap();
    let got = runtime().block_on(async { consumer.recv_async().await.unwrap().to_vec() });
    assert_eq!(got, args[2].as_bytes());
}

/// Runs the reactor on a thread of its own making (through `set_reactor_spawner`), then
/// awaits one message as `await_consumer` does; checks the spawner ran and was used once.
fn await_own_reactor(args: &[String]) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SPAWNED: AtomicUsize = AtomicUsize::new(0);
    shmq::asynchronous::set_reactor_spawner(|reactor| {
        SPAWNED.fetch_add(1, Ordering::SeqCst);
        std::thread::Builder::new()
            .name("my-reactor".into())
            .spawn(move || reactor.run())
            .unwrap();
    })
    .unwrap();
    assert!(shmq::asynchronous::set_reactor_spawner(|_| {}).is_err());
    assert_eq!(
        SPAWNED.load(Ordering::SeqCst),
        0,
        "started before the first wait"
    );
    await_consumer(args);
    assert_eq!(SPAWNED.load(Ordering::SeqCst), 1);
}

/// Awaits one message on a channel and checks topic and payload.
fn await_subscriber(args: &[String]) {
    let ps = PubSub::open(&args[0]).unwrap();
    let mut sub = ps.subscriber(&[b"t/"]).unwrap();
    runtime().block_on(async {
        let m = sub.recv_async().await.unwrap();
        assert_eq!((m.topic(), m.payload()), (&b"t/x"[..], args[1].as_bytes()));
    });
}

/// Awaits one request and replies "re:" + its payload.
fn await_server(args: &[String]) {
    let svc = Service::open(&args[0]).unwrap();
    let server = svc.server().unwrap();
    runtime().block_on(async {
        let req = server.recv_async().await.unwrap();
        let reply = [b"re:", req.payload()].concat();
        req.reply(&reply).unwrap();
    });
}

/// Sends a request; a first wait for its reply is cancelled by a timeout (the parent replies
/// only after it), then a second wait gets the reply: the ticket survived the cancelled wait.
fn await_client(args: &[String]) {
    let svc = Service::open(&args[0]).unwrap();
    let client = svc.client().unwrap();
    let mut pending = client.send(b"ping").unwrap();
    let rt = runtime();
    let first = rt.block_on(async {
        tokio::time::timeout(Duration::from_millis(100), client.wait_async(&mut pending))
            .await
            .is_err()
    });
    assert!(first, "a reply came before the parent sent one");
    assert_eq!(client.outstanding(), 1);
    signal_ready(&args[1]);
    rt.block_on(async {
        let reply = client.wait_async(&mut pending).await.unwrap();
        assert_eq!(reply.payload(), b"pong");
    });
    assert_eq!(client.outstanding(), 0);
}

/// Fills a pipeline (capacity in the second argument), then awaits room for one more.
fn await_send(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let producer = q.producer().unwrap();
    let capacity: usize = args[1].parse().unwrap();
    for i in 0..capacity {
        producer.try_send(format!("m{i}").as_bytes()).unwrap();
    }
    assert!(
        producer.try_send(b"extra").is_err(),
        "the queue is not full"
    );
    runtime().block_on(async { producer.send_async(b"last").await.unwrap() });
}

/// Fills a Block-mode channel, then awaits room for one more publish.
fn await_publish(args: &[String]) {
    let ps = PubSub::open(&args[0]).unwrap();
    let publisher = ps.publisher().unwrap();
    let capacity: usize = args[1].parse().unwrap();
    for i in 0..capacity {
        publisher
            .try_publish(b"t/x", format!("m{i}").as_bytes())
            .unwrap();
    }
    assert!(
        publisher.try_publish(b"t/x", b"extra").is_err(),
        "the channel is not full"
    );
    runtime().block_on(async { publisher.publish_async(b"t/x", b"last").await.unwrap() });
}

/// `select!` over three pipelines, three times: each round must be won by the queue the parent
/// sent on (the order is in the arguments), and the futures that lost must have lost nothing.
fn await_select(args: &[String]) {
    let queues: Vec<_> = args[..3]
        .iter()
        .map(|p| Pipeline::open(p).unwrap())
        .collect();
    let consumers: Vec<_> = queues.iter().map(|q| q.consumer().unwrap()).collect();
    let order: Vec<usize> = args[3].split(',').map(|i| i.parse().unwrap()).collect();
    let ready = &args[4];
    runtime().block_on(async {
        for (round, &expected) in order.iter().enumerate() {
            let (won, msg) = tokio::select! {
                m = consumers[0].recv_async() => (0, m.unwrap().to_vec()),
                m = consumers[1].recv_async() => (1, m.unwrap().to_vec()),
                m = consumers[2].recv_async() => (2, m.unwrap().to_vec()),
            };
            assert_eq!(
                (won, msg),
                (expected, format!("to {expected}").into_bytes())
            );
            signal_ready(&format!("{ready}-{round}"));
        }
    });
    for c in &consumers {
        assert!(
            matches!(c.try_recv(), Err(TryRecvError::Empty)),
            "a message left over"
        );
    }
}

/// Opens `MANY_QUEUES` pipelines and awaits `FUTURES_PER_QUEUE` messages on each, one task
/// per message, all at once; checks every message arrived exactly once.
fn await_many(args: &[String]) {
    let dir = Path::new(&args[0]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let consumers: Vec<_> = (0..MANY_QUEUES)
        .map(|i| {
            let q = Pipeline::open(dir.join(format!("q{i}"))).unwrap();
            Arc::new(q.consumer().unwrap())
        })
        .collect();
    let mut got: Vec<Vec<u8>> = rt.block_on(async {
        let tasks: Vec<_> = consumers
            .iter()
            .flat_map(|c| std::iter::repeat(c).take(FUTURES_PER_QUEUE))
            .map(|c| {
                let c = c.clone();
                tokio::spawn(async move { c.recv_async().await.unwrap().to_vec() })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        got
    });
    got.sort();
    let mut want: Vec<Vec<u8>> = (0..MANY_QUEUES)
        .flat_map(|q| (0..FUTURES_PER_QUEUE).map(move |k| format!("q{q} m{k}").into_bytes()))
        .collect();
    want.sort();
    assert_eq!(got, want);
    // futex_waitv takes 128 words: 1,000 registrations took at least 8 reactor threads.
    let reactors = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|t| {
            let comm = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == "shmq-reactor")
        })
        .count();
    let needed = (MANY_QUEUES * FUTURES_PER_QUEUE).div_ceil(127);
    assert!(
        reactors >= needed,
        "{reactors} reactor threads, {needed} needed"
    );
}

/// A waker that does nothing (the test polls by hand).
struct Nothing;
impl Wake for Nothing {
    fn wake(self: Arc<Self>) {}
}

/// Cancels a pending receive twice — once by a tokio timeout, once after the parent sent while
/// the future was registered but not polled — and checks each time that nothing stays
/// registered and that the next receive gets the message.
fn cancel_then_receive(args: &[String]) {
    let path = Path::new(&args[0]);
    let (ready, sent) = (&args[1], &args[2]);
    let q = Pipeline::open(path).unwrap();
    let consumer = q.consumer().unwrap();
    // 1. A timeout cancels the future; it leaves the cell.
    let timed_out = runtime().block_on(async {
        tokio::time::timeout(Duration::from_millis(100), consumer.recv_async()).await
    });
    assert!(timed_out.is_err(), "received with nothing sent");
    assert_eq!(
        registered(path, CTL_NOT_EMPTY),
        0,
        "a cancelled future stays registered"
    );
    // 2. Registered and woken, but dropped before it is polled again.
    let waker = Waker::from(Arc::new(Nothing));
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(consumer.recv_async());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(registered(path, CTL_NOT_EMPTY), 1);
    signal_ready(ready);
    assert!(wait_until(HANG, || Path::new(sent).exists()));
    drop(fut);
    assert_eq!(registered(path, CTL_NOT_EMPTY), 0);
    assert_eq!(&*consumer.try_recv().unwrap(), b"kept");
    // 3. The next future gets the next message as usual.
    let got = runtime().block_on(async { consumer.recv_async().await.unwrap().to_vec() });
    assert_eq!(got, b"after");
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

fn pipeline(path: &Path, capacity: usize) -> Pipeline {
    Pipeline::create(
        path,
        &PipelineOptions::new().capacity(capacity).max_message(64),
    )
    .unwrap()
}

/// Starts a child awaiting a pipeline message, sends once it is registered, and checks it got it.
fn consumer_is_woken(name: &str, role: &str, mode: &str) {
    let dir = TempDir::new(name);
    let path = dir.join("q");
    let q = pipeline(&path, 8);
    let producer = q.producer().unwrap();
    let mut c = child_with_env(role, &[s(&path), mode, "wake up"], &uncapped_park());
    wait_registered(&path, CTL_NOT_EMPTY, 1, &mut c);
    std::thread::sleep(Duration::from_millis(100));
    assert!(c.is_running(), "the future resolved with nothing sent");
    producer.send(b"wake up").unwrap();
    c.expect_success(HANG);
}

#[test]
fn a_task_awaiting_a_consumer_is_woken_by_a_send_from_another_process() {
    consumer_is_woken("async-consumer", "await_consumer", "futex_waitv");
}

/// The reactor run on a thread the program made, through `set_reactor_spawner`.
#[test]
fn a_reactor_on_a_thread_of_the_programs_own_wakes_the_task() {
    consumer_is_woken("async-own-reactor", "await_own_reactor", "futex_waitv");
}

/// The reactor forced onto its fallback (a timed re-poll, as on kernels without futex_waitv).
#[test]
fn the_reactor_fallback_without_futex_waitv_wakes_the_task_too() {
    consumer_is_woken("async-repoll", "await_consumer", "repoll");
}

#[test]
fn a_task_awaiting_a_subscriber_is_woken_by_a_publish_from_another_process() {
    let dir = TempDir::new("async-sub");
    let path = dir.join("ps");
    let ps = PubSub::create(&path, &PubSubOptions::new().capacity(8).max_message(64)).unwrap();
    let publisher = ps.publisher().unwrap();
    let mut c = child_with_env("await_subscriber", &[s(&path), "news"], &uncapped_park());
    wait_registered(&path, CTL_NOT_EMPTY, 1, &mut c);
    publisher.publish(b"t/x", b"news").unwrap();
    c.expect_success(HANG);
}

#[test]
fn a_task_awaiting_a_server_is_woken_by_a_request_from_another_process() {
    let dir = TempDir::new("async-server");
    let path = dir.join("svc");
    let svc = Service::create(&path, &ServiceOptions::new().max_message(64)).unwrap();
    let client = svc.client().unwrap();
    let mut c = child_with_env("await_server", &[s(&path)], &uncapped_park());
    wait_registered(&path, CTL_NOT_EMPTY, 1, &mut c);
    let reply = client.request_timeout(b"ping", HANG).unwrap();
    assert_eq!(reply.payload(), b"re:ping");
    drop(reply);
    c.expect_success(HANG);
}

#[test]
fn a_task_awaiting_a_reply_is_woken_by_a_server_in_another_process_after_a_cancelled_wait() {
    let dir = TempDir::new("async-client");
    let path = dir.join("svc");
    let options = ServiceOptions::new().max_message(64);
    let svc = Service::create(&path, &options).unwrap();
    let server = svc.server().unwrap();
    let ready = dir.join("ready");
    let mut c = child_with_env("await_client", &[s(&path), s(&ready)], &uncapped_park());
    let request = server.recv_timeout(HANG).unwrap();
    assert_eq!(request.payload(), b"ping");
    wait_ready(&mut c, &ready);
    // The only client has entry 0.
    let reply_ring = options.geometry().unwrap().reply_block(0) as usize - RING_CONTROL_OFFSET;
    wait_registered(&path, reply_ring + CTL_NOT_EMPTY, 1, &mut c);
    request.reply(b"pong").unwrap();
    c.expect_success(HANG);
}

#[test]
fn a_task_awaiting_room_to_send_is_woken_by_a_receive_in_another_process() {
    let dir = TempDir::new("async-send");
    let path = dir.join("q");
    let q = pipeline(&path, 4);
    let consumer = q.consumer().unwrap();
    let mut c = child_with_env("await_send", &[s(&path), "4"], &uncapped_park());
    wait_registered(&path, CTL_NOT_FULL, 1, &mut c);
    assert_eq!(&*consumer.recv().unwrap(), b"m0");
    c.expect_success(HANG);
    let rest: Vec<Vec<u8>> = (0..4)
        .map(|_| consumer.try_recv().unwrap().to_vec())
        .collect();
    assert_eq!(rest, [&b"m1"[..], b"m2", b"m3", b"last"]);
}

#[test]
fn a_task_awaiting_room_to_publish_is_woken_by_a_subscriber_in_another_process() {
    let dir = TempDir::new("async-publish");
    let path = dir.join("ps");
    let options = PubSubOptions::new()
        .capacity(4)
        .max_message(64)
        .overflow(Overflow::Block);
    let ps = PubSub::create(&path, &options).unwrap();
    let mut sub = ps.subscriber(&[]).unwrap();
    let mut c = child_with_env("await_publish", &[s(&path), "4"], &uncapped_park());
    wait_registered(&path, CTL_NOT_FULL, 1, &mut c);
    assert_eq!(sub.recv().unwrap().payload(), b"m0");
    c.expect_success(HANG);
    let rest: Vec<Vec<u8>> = (0..4)
        .map(|_| sub.try_recv().unwrap().payload().to_vec())
        .collect();
    assert_eq!(rest, [&b"m1"[..], b"m2", b"m3", b"last"]);
}

#[test]
fn select_over_three_queues_is_won_by_the_queue_sent_on_and_loses_nothing() {
    let dir = TempDir::new("async-select");
    let paths: Vec<_> = (0..3).map(|i| dir.join(&format!("q{i}"))).collect();
    let queues: Vec<_> = paths.iter().map(|p| pipeline(p, 8)).collect();
    let producers: Vec<_> = queues.iter().map(|q| q.producer().unwrap()).collect();
    let ready = dir.join("round");
    let order = [1usize, 2, 0];
    let mut c = child_with_env(
        "await_select",
        &[s(&paths[0]), s(&paths[1]), s(&paths[2]), "1,2,0", s(&ready)],
        &uncapped_park(),
    );
    for (round, &i) in order.iter().enumerate() {
        for p in &paths {
            wait_registered(p, CTL_NOT_EMPTY, 1, &mut c);
        }
        producers[i].send(format!("to {i}").as_bytes()).unwrap();
        wait_ready(&mut c, Path::new(&format!("{}-{round}", s(&ready))));
    }
    c.expect_success(HANG);
}

#[test]
fn a_thousand_futures_pending_on_two_hundred_queues_all_complete() {
    let dir = TempDir::new("async-many");
    let queues: Vec<_> = (0..MANY_QUEUES)
        .map(|i| pipeline(&dir.join(&format!("q{i}")), 8))
        .collect();
    let mut c = child_with_env("await_many", &[s(dir.path())], &uncapped_park());
    for i in 0..MANY_QUEUES {
        let path = dir.join(&format!("q{i}"));
        wait_registered(&path, CTL_NOT_EMPTY, FUTURES_PER_QUEUE as u32, &mut c);
    }
    for (i, q) in queues.iter().enumerate() {
        let producer = q.producer().unwrap();
        for k in 0..FUTURES_PER_QUEUE {
            producer.send(format!("q{i} m{k}").as_bytes()).unwrap();
        }
    }
    c.expect_success(HANG);
}

#[test]
fn a_cancelled_future_loses_no_message_and_leaves_nothing_registered() {
    let dir = TempDir::new("async-cancel");
    let path = dir.join("q");
    let q = pipeline(&path, 8);
    let producer = q.producer().unwrap();
    let (ready, sent) = (dir.join("ready"), dir.join("sent"));
    let mut c = child("cancel_then_receive", &[s(&path), s(&ready), s(&sent)]);
    wait_ready(&mut c, &ready);
    producer.send(b"kept").unwrap();
    signal_ready(s(&sent));
    assert!(wait_until(HANG, || registered(&path, CTL_NOT_EMPTY) > 0
        || !c.is_running()));
    producer.send(b"after").unwrap();
    c.expect_success(HANG);
    // Nobody registered: the next send makes no wake-up call.
    assert_eq!(registered(&path, CTL_NOT_EMPTY), 0);
}

/// A producer killed holding the oldest slot blocks every consumer; a future waiting behind it
/// resolves once its stall wake-up runs recovery, which skips the dead slot.
#[test]
fn a_future_waiting_behind_a_killed_producer_resolves_after_recovery() {
    let dir = TempDir::new("async-kill");
    let path = dir.join("q");
    let q = pipeline(&path, 8);
    let parked = dir.join("parked");
    let mut dead = child_with_env(
        "send_and_park",
        &[s(&path)],
        &[
            ("SHMQ_TEST_PARK_AT", "producer-claimed"),
            ("SHMQ_TEST_PARKED_FILE", s(&parked)),
        ],
    );
    wait_ready(&mut dead, &parked);
    q.producer().unwrap().send(b"after the dead").unwrap();
    // Normal park cap here: the stall wake-up is what makes recovery run.
    let mut c = child(
        "await_consumer",
        &[s(&path), "futex_waitv", "after the dead"],
    );
    wait_registered(&path, CTL_NOT_EMPTY, 1, &mut c);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        c.is_running(),
        "received past a slot still claimed by a live producer"
    );
    dead.kill();
    c.expect_success(HANG);
    assert!(q.recovery_stats().skipped >= 1, "{:?}", q.recovery_stats());
}
