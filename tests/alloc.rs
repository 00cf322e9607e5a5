//! No heap allocation on the send and receive paths (guarantee 5).
//!
//! A counting global allocator counts the allocations made by threads that have armed it, so
//! the test harness's own threads do not disturb the count. This binary holds a single test.

use shmq::{
    Overflow, Pipeline, PipelineOptions, PubSub, PubSubOptions, RecvError, RecvTimeoutError,
    Service, ServiceOptions, TryRecvError, WaitStrategy,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if ARMED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// allocator contract is `System`'s; counting touches only an atomic and a const thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` was allocated by `System` (every allocation goes through it) with
        // `layout`; the caller upholds the rest of `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with this thread's allocations counted; returns how many it made.
fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

const ROUNDS: u64 = 10_000;

/// Both modes, one after the other (one test: the allocation counter is process-wide).
#[test]
fn send_and_receive_allocate_nothing() {
    send_and_receive_allocate_nothing_in(false);
    send_and_receive_allocate_nothing_in(true);
}

/// Shared ends, or exclusive ones (`single_producer().single_consumer()`).
fn options(exclusive: bool) -> PipelineOptions {
    if exclusive {
        PipelineOptions::new().single_producer().single_consumer()
    } else {
        PipelineOptions::new()
    }
}

fn send_and_receive_allocate_nothing_in(exclusive: bool) {
    let dir = std::env::temp_dir().join(format!(
        "shmq-alloc-{}-{}",
        std::process::id(),
        u8::from(exclusive)
    ));
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::Path::new("/dev/shm").join(dir.file_name().unwrap())
    } else {
        dir
    };
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());

    let q = Pipeline::create(
        dir.join("q"),
        &options(exclusive).capacity(64).max_message(256),
    )
    .unwrap();
    assert_eq!(q.has_exclusive_ends(), exclusive);
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();
    let payload = [0xA5u8; 200];
    let batch: [&[u8]; 4] = [&payload[..0], &payload[..10], &payload[..100], &payload];

    let one_round = |i: u64| {
        producer.send(&payload[..(i % 201) as usize]).unwrap();
        assert_eq!(consumer.recv().unwrap().len(), (i % 201) as usize);

        producer.try_send(&payload[..64]).unwrap();
        assert_eq!(consumer.try_recv().unwrap().len(), 64);

        producer
            .send_timeout(&payload[..1], Duration::from_secs(10))
            .unwrap();
        drop(consumer.recv_timeout(Duration::from_secs(10)).unwrap());

        let mut loan = producer.loan(32).unwrap();
        loan.fill(i as u8);
        loan.commit().unwrap();
        drop(producer.try_loan(16).unwrap()); // abandoned
        assert_eq!(consumer.recv().unwrap()[0], i as u8);

        producer.send_batch(&batch).unwrap();
        let mut total = 0;
        let mut n = 0;
        while n < batch.len() {
            n += consumer.recv_batch(8, |m| total += m.len()).unwrap();
        }
        assert_eq!(total, 310);

        producer.send_value(&i).unwrap();
        assert_eq!(consumer.recv().unwrap().value::<u64>(), Some(i));

        // Empty and full outcomes allocate nothing either.
        assert!(consumer.try_recv().is_err());
        let _ = q.len();
    };

    // The counter works: an allocation in an armed thread is seen.
    assert!(allocations_in(|| drop(std::hint::black_box(vec![1u8; 10]))) > 0);

    // Warm up: first-use lazies (thread-locals, the clock) are not the hot path.
    for i in 0..100 {
        one_round(i);
    }
    let n = allocations_in(|| {
        for i in 0..ROUNDS {
            one_round(i);
        }
    });
    assert_eq!(
        n, 0,
        "{n} allocations in {ROUNDS} rounds of send and receive (exclusive: {exclusive})"
    );

    // The blocking paths: a consumer thread parked on the shared futex, woken by each send,
    // and a producer parked on a full ring of one slot, woken by each receive.
    let q1 = Pipeline::create(
        dir.join("q1"),
        &options(exclusive).capacity(1).max_message(8),
    )
    .unwrap();
    let mut producer = q1.producer().unwrap();
    let mut consumer = q1.consumer().unwrap();
    producer.set_wait_strategy(WaitStrategy::Park);
    consumer.set_wait_strategy(WaitStrategy::Park);
    const PING: u64 = 2_000;
    let (sent, received) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            allocations_in(|| {
                for i in 0..PING {
                    assert_eq!(consumer.recv().unwrap().value::<u64>(), Some(i));
                }
            })
        });
        let sent = allocations_in(|| {
            for i in 0..PING {
                producer.send_value(&i).unwrap();
            }
        });
        (sent, reader.join().unwrap())
    });
    assert_eq!(
        (sent, received),
        (0, 0),
        "allocations while blocking (send, receive; exclusive: {exclusive})"
    );

    // Request-reply, in one thread: replies waited for in order and out of order (one kept),
    // a dropped ticket, a timed-out wait, and a send that finds every place taken and takes
    // the late reply to make room.
    let svc = Service::create(
        dir.join("svc"),
        &ServiceOptions::new().reply_capacity(2).max_message(64),
    )
    .unwrap();
    let server = svc.server().unwrap();
    let client = svc.client().unwrap();
    let answer = |n: usize| {
        for _ in 0..n {
            let request = server.try_recv().unwrap();
            let reply = [request.payload()[0]; 8];
            request.reply(&reply).unwrap();
        }
    };
    let reqrep_round = || {
        let a = client.send(b"a").unwrap();
        let b = client.send(b"b").unwrap();
        answer(2);
        assert_eq!(client.wait(b).unwrap().payload()[0], b'b');
        assert_eq!(client.wait(a).unwrap().payload()[0], b'a'); // kept
        drop(client.send(b"c").unwrap()); // given up
        let d = client.send(b"d").unwrap();
        answer(2);
        assert_eq!(client.wait(d).unwrap().payload()[0], b'd');
        let e = client.send(b"e").unwrap();
        assert_eq!(
            client.wait_timeout(e, Duration::ZERO).unwrap_err(),
            RecvTimeoutError::Timeout
        );
        answer(1);
        let f = client.send(b"f").unwrap();
        let g = client.try_send(b"g").unwrap(); // every place taken: takes e's late reply
        answer(2);
        assert_eq!(client.wait(g).unwrap().payload()[0], b'g');
        assert_eq!(client.wait(f).unwrap().payload()[0], b'f');
        assert_eq!(client.outstanding(), 0);
    };
    for _ in 0..100 {
        reqrep_round();
    }
    let n = allocations_in(|| {
        for _ in 0..ROUNDS / 10 {
            reqrep_round();
        }
    });
    assert_eq!(n, 0, "{n} allocations in request-reply rounds");

    // Publish-subscribe, in one thread, both overflow modes: publish, a subscriber that takes
    // each message (one topic filtered out), and in drop-oldest mode a subscriber that lags.
    for overflow in [Overflow::Block, Overflow::DropOldest] {
        let ch = PubSub::create(
            dir.join(format!("ch-{overflow:?}")),
            &PubSubOptions::new()
                .capacity(8)
                .max_message(64)
                .overflow(overflow),
        )
        .unwrap();
        let publisher = ch.publisher().unwrap();
        let mut sub = ch.subscriber(&[b"a/".as_slice()]).unwrap();
        let mut pubsub_round = || {
            publisher.publish(b"a/x", b"payload").unwrap();
            publisher.publish(b"b/y", b"filtered out").unwrap();
            let msg = sub.try_recv().unwrap();
            assert_eq!((msg.topic(), msg.payload()), (&b"a/x"[..], &b"payload"[..]));
            assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Empty);
        };
        for _ in 0..100 {
            pubsub_round();
        }
        let n = allocations_in(|| {
            for _ in 0..ROUNDS {
                pubsub_round();
            }
        });
        assert_eq!(
            n, 0,
            "{n} allocations in publish-subscribe rounds ({overflow:?})"
        );
        if overflow == Overflow::DropOldest {
            let n = allocations_in(|| {
                for _ in 0..20 {
                    publisher.publish(b"a/z", b"lagging").unwrap();
                }
                assert!(matches!(
                    sub.try_recv(),
                    Err(TryRecvError::Recv(RecvError::Lagged(_)))
                ));
                while sub.try_recv().is_ok() {}
            });
            assert_eq!(n, 0, "{n} allocations while a subscriber lags");
        }
    }
}
