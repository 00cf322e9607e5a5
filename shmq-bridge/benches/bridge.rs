//! The bridge benchmark, on loopback, beside direct `async-nats` in the same run:
//!
//! * **Throughput**, 64-byte messages: this process sends into host A's pipeline and receives
//!   from host B's, with `pipeline-out` (A) and `pipeline-in` (B) in between — beside this
//!   process publishing the same messages to a JetStream stream directly with async-nats
//!   (256 acknowledgements pending, as the bridge keeps), and pulling them back.
//! * **Round trip**, 64 bytes: a shmq client on B → `service-in` → NATS → `service-out` → a
//!   shmq server thread on A, and back — beside an async-nats request to a responder task.
//!
//! It starts its own nats-server (the tests' harness) and the built `shmq-bridge` binary.
//! `cargo bench -p shmq-bridge --bench bridge` (figures: on a quiet machine only).

#[path = "../tests/harness/mod.rs"]
mod harness;

use async_nats::jetstream;
use criterion::{Criterion, Throughput};
use futures_util::StreamExt;
use harness::{arg, Bridge, Host, Nats};
use std::time::{Duration, Instant};

const MESSAGE: [u8; 64] = [7; 64];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Publishes `n` messages to a JetStream stream with up to 256 acknowledgements pending, then
/// pulls and acknowledges them: what the two bridges do, without shmq on either side.
fn direct_jetstream(rt: &tokio::runtime::Runtime, js: &jetstream::Context, n: u64) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let mut acks = std::collections::VecDeque::new();
        for _ in 0..n {
            if acks.len() == 256 {
                let ack: jetstream::context::PublishAckFuture = acks.pop_front().unwrap();
                ack.await.unwrap();
            }
            acks.push_back(
                js.publish("direct.jobs", MESSAGE.to_vec().into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
        let stream = js.get_stream("DIRECT").await.unwrap();
        let consumer: jetstream::consumer::PullConsumer =
            stream.get_consumer("bench").await.unwrap();
        let mut got = 0;
        while got < n {
            let mut batch = consumer.fetch().max_messages(256).messages().await.unwrap();
            while let Some(m) = batch.next().await {
                m.unwrap().ack().await.unwrap();
                got += 1;
            }
        }
        start.elapsed()
    })
}

fn throughput(c: &mut Criterion, nats: &Nats) {
    let (a, b) = (Host::new("bench", "a"), Host::new("bench", "b"));
    let options = shmq::PipelineOptions::new().capacity(1024).max_message(64);
    let producer = shmq::Pipeline::create(a.path("jobs"), &options)
        .unwrap()
        .producer()
        .unwrap();
    let consumer = shmq::Pipeline::create(b.path("jobs"), &options)
        .unwrap()
        .consumer()
        .unwrap();
    let _out = Bridge::ready(
        "out",
        nats,
        &["pipeline-out", arg(&a.path("jobs")), "--stream", "JOBS"],
    );
    let _in = Bridge::ready(
        "in",
        nats,
        &["pipeline-in", arg(&b.path("jobs")), "--stream", "JOBS"],
    );

    let rt = runtime();
    let js = rt.block_on(async {
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: "DIRECT".into(),
                subjects: vec!["direct.jobs".into()],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await
            .unwrap();
        stream
            .get_or_create_consumer(
                "bench",
                jetstream::consumer::pull::Config {
                    durable_name: Some("bench".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        js
    });

    let mut group = c.benchmark_group("bridge throughput 64 B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("direct async-nats JetStream publish + pull", |bench| {
        bench.iter_custom(|n| direct_jetstream(&rt, &js, n));
    });
    group.bench_function(
        "shmq → pipeline-out → JetStream → pipeline-in → shmq",
        |bench| {
            bench.iter_custom(|n| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    s.spawn(|| {
                        for _ in 0..n {
                            producer.send(&MESSAGE).unwrap();
                        }
                    });
                    for _ in 0..n {
                        drop(consumer.recv_timeout(harness::HANG).unwrap());
                    }
                });
                start.elapsed()
            });
        },
    );
    group.finish();
}

fn round_trip(c: &mut Criterion, nats: &Nats) {
    let (a, b) = (Host::new("bench-rpc", "a"), Host::new("bench-rpc", "b"));
    let options = shmq::ServiceOptions::new().max_message(64).max_clients(32);
    let svc_a = shmq::Service::create(a.path("svc"), &options).unwrap();
    let svc_b = shmq::Service::create(b.path("svc"), &options).unwrap();
    let server = svc_a.server().unwrap();
    let client = svc_b.client().unwrap();
    let _out = Bridge::ready(
        "out",
        nats,
        &["service-out", arg(&a.path("svc")), "--subject", "bench.rpc"],
    );
    let _in = Bridge::ready(
        "in",
        nats,
        &["service-in", arg(&b.path("svc")), "--subject", "bench.rpc"],
    );

    let rt = runtime();
    let nc = rt.block_on(async {
        let nc = async_nats::connect(nats.url()).await.unwrap();
        let mut requests = nc.subscribe("direct.rpc").await.unwrap();
        let responder = nc.clone();
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                let reply = request.reply.unwrap();
                responder.publish(reply, request.payload).await.unwrap();
            }
        });
        nc.flush().await.unwrap();
        nc
    });

    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(request) = server.recv_timeout(Duration::from_millis(50)) {
                    let payload = request.payload().to_vec();
                    request.reply(&payload).unwrap();
                }
            }
        });
        let mut group = c.benchmark_group("bridge round trip 64 B");
        group.bench_function("direct async-nats request/reply", |bench| {
            bench.iter(|| {
                rt.block_on(nc.request("direct.rpc", MESSAGE.to_vec().into()))
                    .unwrap()
            });
        });
        group.bench_function(
            "shmq client → service-in → NATS → service-out → shmq server",
            |bench| {
                bench.iter(|| {
                    let reply = client.request(&MESSAGE).unwrap();
                    assert_eq!(reply.payload().len(), MESSAGE.len());
                });
            },
        );
        group.finish();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

fn bridge(c: &mut Criterion) {
    let Some(nats) = harness::nats() else { return };
    throughput(c, &nats);
    round_trip(c, &nats);
}

fn main() {
    let mut criterion = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    bridge(&mut criterion);
    criterion.final_summary();
}
