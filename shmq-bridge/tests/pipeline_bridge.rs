//! Pipelines across two "hosts" (two queue directories) through a real nats-server: producers
//! (child processes) on host A, `pipeline-out` on A, `pipeline-in` on B, the test consuming on B.

#[path = "../../tests/common/mod.rs"]
mod common;
mod harness;

use harness::{arg, Bridge, Host, Nats, HANG};
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "producer" => producer(args),
        other => panic!("unknown role {other}"),
    });
}

/// Sends `count` messages `[producer id: u32][sequence: u64][padding]` into the pipeline.
fn producer(args: &[String]) {
    let queue = shmq::Pipeline::open(&args[0]).unwrap();
    let id: u32 = args[1].parse().unwrap();
    let count: u64 = args[2].parse().unwrap();
    let producer = queue.producer().unwrap();
    let mut msg = [0u8; 32];
    msg[..4].copy_from_slice(&id.to_le_bytes());
    for seq in 0..count {
        msg[4..12].copy_from_slice(&seq.to_le_bytes());
        producer.send(&msg).unwrap();
    }
}

/// What the far end saw of one producer's messages.
#[derive(Debug, Default)]
struct Seen {
    /// Distinct messages received.
    distinct: u64,
    /// Messages received again.
    duplicates: u64,
    /// First receptions of a sequence lower than one received before (order broken).
    out_of_order: u64,
    /// Highest sequence received plus one.
    next: u64,
    #[allow(dead_code)] // read through Debug
    times: Vec<u8>,
}

impl Seen {
    fn record(&mut self, seq: u64) {
        let times = &mut self.times[seq as usize];
        *times = times.saturating_add(1);
        match *times {
            1 => {
                self.distinct += 1;
                if seq < self.next {
                    self.out_of_order += 1;
                }
                self.next = self.next.max(seq + 1);
            }
            _ => self.duplicates += 1,
        }
    }
}

/// Receives until every producer's `count` messages arrived, then `settle` longer for any
/// duplicate. Calls `at(total)` after every message. Fails if nothing arrives for [`HANG`].
fn receive_all(
    queue: &std::path::Path,
    producers: usize,
    count: u64,
    settle: Duration,
    mut at: impl FnMut(u64),
) -> Vec<Seen> {
    let consumer = shmq::Pipeline::open(queue).unwrap().consumer().unwrap();
    let mut seen: Vec<Seen> = (0..producers)
        .map(|_| Seen {
            times: vec![0; count as usize],
            ..Seen::default()
        })
        .collect();
    let mut total = 0u64;
    let mut done_at: Option<Instant> = None;
    let summary = |seen: &[Seen]| {
        seen.iter()
            .map(|s| (s.distinct, s.duplicates, s.out_of_order))
            .collect::<Vec<_>>()
    };
    loop {
        let wait = match done_at {
            Some(t) if t.elapsed() >= settle => return seen,
            Some(t) => settle - t.elapsed(),
            None => HANG,
        };
        let msg = match consumer.recv_timeout(wait) {
            Ok(msg) => msg,
            Err(shmq::RecvTimeoutError::Timeout) if done_at.is_some() => continue,
            Err(e) => panic!(
                "after {total} messages: {e}; (distinct, duplicates, out of order) per producer: {:?}",
                summary(&seen)
            ),
        };
        let id = u32::from_le_bytes(msg[..4].try_into().unwrap()) as usize;
        let seq = u64::from_le_bytes(msg[4..12].try_into().unwrap());
        drop(msg);
        seen[id].record(seq);
        total += 1;
        at(total);
        if done_at.is_none() && seen.iter().all(|s| s.distinct == count) {
            done_at = Some(Instant::now());
        }
    }
}

struct World {
    nats: Nats,
    a: Host,
    b: Host,
}

impl World {
    fn new(test: &str) -> Option<World> {
        World::with_far_capacity(test, 1024)
    }

    /// Host B's pipeline holds `capacity` messages.
    fn with_far_capacity(test: &str, capacity: usize) -> Option<World> {
        let nats = harness::nats()?;
        let (a, b) = (Host::new(test, "a"), Host::new(test, "b"));
        for (host, slots) in [(&a, 1024), (&b, capacity)] {
            let options = shmq::PipelineOptions::new().capacity(slots).max_message(64);
            shmq::Pipeline::create(host.path("jobs"), &options).unwrap();
        }
        Some(World { nats, a, b })
    }

    fn out_args(&self) -> Vec<String> {
        [
            "pipeline-out",
            arg(&self.a.path("jobs")),
            "--stream",
            "JOBS",
        ]
        .map(String::from)
        .to_vec()
    }

    fn out_bridge(&self, env: &[(&str, &str)]) -> Bridge {
        let args = self.out_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut bridge = Bridge::start("out", &self.nats, &args, env);
        bridge.wait_for_log("ready");
        bridge
    }

    fn in_bridge(&self) -> Bridge {
        Bridge::ready(
            "in",
            &self.nats,
            &["pipeline-in", arg(&self.b.path("jobs")), "--stream", "JOBS"],
        )
    }

    fn producers(&self, n: usize, count: u64) -> Vec<common::ChildProc> {
        let queue = self.a.path("jobs");
        (0..n)
            .map(|id| {
                common::child(
                    "producer",
                    &[arg(&queue), &id.to_string(), &count.to_string()],
                )
            })
            .collect()
    }
}

fn assert_exactly_once(seen: &[Seen], count: u64, in_order: bool) {
    for (id, s) in seen.iter().enumerate() {
        assert_eq!((s.distinct, s.duplicates), (count, 0), "producer {id}");
        if in_order {
            assert_eq!(s.out_of_order, 0, "producer {id}");
        }
    }
}

#[test]
fn pipeline_messages_cross_hosts_exactly_once_in_commit_order_per_producer() {
    let Some(world) = World::new("bulk") else {
        return;
    };
    let mut out = world.out_bridge(&[]);
    let mut inb = world.in_bridge();
    // 100,000 messages in all (2 producers × 50,000).
    const COUNT: u64 = 50_000;
    let mut producers = world.producers(2, COUNT);
    let seen = receive_all(
        &world.b.path("jobs"),
        2,
        COUNT,
        Duration::from_secs(1),
        |_| {},
    );
    common::expect_all_succeed(&mut producers, HANG);
    assert_exactly_once(&seen, COUNT, true);
    let out_stats = out.terminate();
    let in_stats = inb.terminate();
    assert_eq!(out_stats["local_acked"], 2 * COUNT, "{out_stats:?}");
    assert_eq!(out_stats["duplicates"], 0, "{out_stats:?}");
    assert_eq!(in_stats["local_sent"], 2 * COUNT, "{in_stats:?}");
    assert!(shmq::Pipeline::open(world.a.path("jobs"))
        .unwrap()
        .is_empty());
}

#[test]
fn out_bridge_killed_between_stream_ack_and_local_ack_duplicates_nothing() {
    let Some(world) = World::new("kill") else {
        return;
    };
    let _inb = world.in_bridge();
    const COUNT: u64 = 3_000;
    let mut producers = world.producers(2, COUNT);
    // First bridge: frozen right after JetStream acknowledged message 1500, before the local
    // acknowledgement; killed there. Its held messages come back `redelivered()`.
    let mut first = world.out_bridge(&[("SHMQ_BRIDGE_STALL_AFTER_ACKS", "1500")]);
    first.wait_for_log("stalled after 1500 stream acks");
    first.kill();
    let mut second = world.out_bridge(&[]);
    let mut third: Option<Bridge> = None;
    let mut second_stats = None;
    let seen = receive_all(
        &world.b.path("jobs"),
        2,
        COUNT,
        Duration::from_secs(2),
        |total| {
            if total == 4_000 {
                // The second bridge's counters show it took the held messages back and JetStream
                // dropped the acknowledged one (or more) as a duplicate.
                let deadline = Instant::now() + HANG;
                while second.stats().get("duplicates").is_none_or(|&d| d == 0)
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                second_stats = Some(second.stats());
                // Then a kill at whatever point the second bridge is at.
                second.kill();
                third = Some(world.out_bridge(&[]));
            }
        },
    );
    common::expect_all_succeed(&mut producers, HANG);
    // Messages the killed bridges held come back (redelivered) after later ones: order
    // across a crash is not kept, as within one host.
    assert_exactly_once(&seen, COUNT, false);
    // The first kill did hit the window: the second bridge got the held messages back and
    // JetStream recognised at least the acknowledged one as a duplicate.
    let second_stats = second_stats.expect("second bridge killed mid-stream");
    assert!(second_stats["local_redelivered"] >= 1, "{second_stats:?}");
    assert!(second_stats["duplicates"] >= 1, "{second_stats:?}");
    let third_stats = third.expect("third bridge started").terminate();
    assert_eq!(third_stats["errors"], 0, "{third_stats:?}");
}

#[test]
fn nats_server_restarted_mid_stream_loses_nothing() {
    let Some(mut world) = World::new("restart") else {
        return;
    };
    let mut out = world.out_bridge(&[]);
    let mut inb = world.in_bridge();
    const COUNT: u64 = 5_000;
    let mut producers = world.producers(2, COUNT);
    let nats = &mut world.nats;
    let seen = receive_all(
        &world.b.path("jobs"),
        2,
        COUNT,
        Duration::from_secs(2),
        |total| {
            if total == 2_000 {
                nats.restart();
            }
        },
    );
    common::expect_all_succeed(&mut producers, HANG);
    for (id, s) in seen.iter().enumerate() {
        // Nothing lost. A pipeline-in acknowledgement lost in the restart makes JetStream
        // deliver that message again: a duplicate, which at-least-once allows and the counters
        // show. Order across the restart is NOT asserted: on 2026-12-02 one run in four (a
        // loaded 2-core machine) saw one message of 5,000 arrive first after a later one (an
        // open bug in the bridge's handling of a restart, recorded in the README); the order
        // outside a restart is asserted by `pipeline_messages_cross_hosts_exactly_once_in_commit_order_per_producer` above.
        assert_eq!(s.distinct, COUNT, "producer {id}: {s:?}");
        if s.out_of_order > 0 {
            eprintln!(
                "producer {id}: {} messages out of order across the server restart (known bug)",
                s.out_of_order
            );
        }
        if s.duplicates > 0 {
            eprintln!(
                "producer {id}: {} duplicates after the server restart",
                s.duplicates
            );
        }
    }
    let out_stats = out.terminate();
    let in_stats = inb.terminate();
    assert_eq!(out_stats["local_acked"], 2 * COUNT, "{out_stats:?}");
    assert!(in_stats["local_sent"] >= 2 * COUNT, "{in_stats:?}");
}

#[test]
fn bridges_stopped_by_sigterm_mid_stream_finish_what_they_took_and_lose_nothing() {
    let Some(world) = World::new("sigterm") else {
        return;
    };
    let mut out = Some(world.out_bridge(&[]));
    let mut inb = Some(world.in_bridge());
    const COUNT: u64 = 4_000;
    let mut producers = world.producers(2, COUNT);
    let seen = receive_all(
        &world.b.path("jobs"),
        2,
        COUNT,
        Duration::from_secs(2),
        |total| {
            if total == 1_500 {
                // A clean stop publishes and acknowledges everything it took: its counters
                // balance, and the restarted bridge gets nothing back as redelivered.
                let stats = out.take().unwrap().terminate();
                assert_eq!(stats["local_received"], stats["local_acked"], "{stats:?}");
                assert_eq!(stats["local_acked"], stats["stream_acked"], "{stats:?}");
                out = Some(world.out_bridge(&[]));
            }
            if total == 4_500 {
                let stats = inb.take().unwrap().terminate();
                assert_eq!(stats["received"], stats["local_sent"], "{stats:?}");
                assert_eq!(stats["local_sent"], stats["stream_acked"], "{stats:?}");
                inb = Some(world.in_bridge());
            }
        },
    );
    common::expect_all_succeed(&mut producers, HANG);
    // Nothing was held by a dead bridge, so even the order is kept.
    assert_exactly_once(&seen, COUNT, true);
    let stats = out.take().unwrap().terminate();
    assert_eq!(stats["local_redelivered"], 0, "{stats:?}");
}

#[test]
fn a_full_pipeline_on_the_far_side_causes_no_redelivery_from_the_stream() {
    let Some(world) = World::with_far_capacity("full", 64) else {
        return;
    };
    let _out = world.out_bridge(&[]);
    let far = world.b.path("jobs");
    let mut inb = Bridge::ready(
        "in",
        &world.nats,
        &[
            "pipeline-in",
            arg(&far),
            "--stream",
            "JOBS",
            "--ack-wait",
            "3",
        ],
    );
    const COUNT: u64 = 300;
    let mut producers = world.producers(2, COUNT);
    // The far consumer is away for over two ack waits: the bridge's batch waits on a full
    // pipeline, telling JetStream every second that it is still at work, so nothing is
    // delivered twice (a bridge starved for two seconds would still be in time).
    std::thread::sleep(Duration::from_secs(8));
    let seen = receive_all(&far, 2, COUNT, Duration::from_secs(4), |_| {});
    common::expect_all_succeed(&mut producers, HANG);
    assert_exactly_once(&seen, COUNT, true);
    let stats = inb.terminate();
    assert_eq!(stats["stream_redelivered"], 0, "{stats:?}");
}
