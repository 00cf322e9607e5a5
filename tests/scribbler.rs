//! Random bytes written at random offsets of live queue files while real producer, consumer,
//! publisher, subscriber, client and server processes use them: no process dies by a signal or
//! panics, and every bounded call returns within its bound (checked inside each process).
//!
//! The scribbler writes bytes; it never truncates a file (a file truncated while mapped raises
//! `SIGBUS`, the documented exception: docs/DESIGN.md 9.4). Corruption makes calls fail with
//! `Corrupt` (and a corrupt queue stays corrupt); that is expected and counted, not an error.
//! The run lasts `SHMQ_SCRIBBLE_SECS` seconds (default 4).

mod common;

use common::{child, s, wait_ready, ChildProc, Rng, TempDir, HANG};
use shmq::{Pipeline, PipelineOptions, PubSub, PubSubOptions, Service, ServiceOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The timeout given to every blocking call.
const CALL_TIMEOUT: Duration = Duration::from_millis(20);
/// How much longer than its bound a call may take before it counts as a hang: generous, since
/// the machine running the tests is loaded (the bound itself is what is checked: no call may
/// wait without limit).
const SLACK: Duration = Duration::from_secs(10);
/// `Request::reply` waits at most a second for room in a client's reply ring.
const REPLY_BOUND: Duration = Duration::from_secs(1);

#[test]
fn child_entry() {
    common::child_main(|role, args| {
        let secs: f64 = args[2].parse().unwrap();
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let ready = &args[1];
        let path = Path::new(&args[0]);
        let calls = match role {
            "producer" => producer(path, ready, until),
            "consumer" => consumer(path, ready, until),
            "publisher" => publisher(path, ready, until),
            "subscriber" => subscriber(path, ready, until),
            "client" => client(path, ready, until),
            "server" => server(path, ready, until),
            other => panic!("unknown role {other:?}"),
        };
        eprintln!("scribbler: {role} made {calls} bounded calls");
    });
}

/// Runs `call`, panicking if it took longer than `bound` plus the slack.
fn bounded<T>(what: &str, bound: Duration, call: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = call();
    let took = started.elapsed();
    assert!(
        took <= bound + SLACK,
        "{what} took {took:?}, its bound is {bound:?}"
    );
    out
}

fn touch(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |a, b| a ^ b)
}

fn producer(path: &Path, ready: &str, until: Instant) -> u64 {
    let q = Pipeline::open(path).unwrap();
    let p = q.producer().unwrap();
    common::signal_ready(ready);
    let mut n = 0;
    while Instant::now() < until {
        let msg = [n as u8; 24];
        let _ = bounded("send_timeout", CALL_TIMEOUT, || {
            p.send_timeout(&msg, CALL_TIMEOUT)
        });
        let _ = bounded("try_send", Duration::ZERO, || p.try_send(&msg));
        if let Ok(mut loan) = bounded("try_loan", Duration::ZERO, || p.try_loan(8)) {
            loan.fill(1);
            // `let _` stays right when commit returns a Result (issue 8).
            #[allow(clippy::let_unit_value)]
            let _ = loan.commit();
        }
        n += 3;
    }
    n
}

fn consumer(path: &Path, ready: &str, until: Instant) -> u64 {
    let q = Pipeline::open(path).unwrap();
    let c = q.consumer().unwrap();
    common::signal_ready(ready);
    let mut buf = vec![0; q.max_message()];
    let mut n = 0;
    while Instant::now() < until {
        if let Ok(m) = bounded("recv_timeout", CALL_TIMEOUT, || {
            c.recv_timeout(CALL_TIMEOUT)
        }) {
            touch(&m);
            touch(&m.copy_to_vec());
        }
        let _ = bounded("recv_into_timeout", CALL_TIMEOUT, || {
            c.recv_into_timeout(&mut buf, CALL_TIMEOUT)
        });
        let _ = bounded("repair", Duration::ZERO, || q.repair());
        n += 3;
    }
    n
}

fn publisher(path: &Path, ready: &str, until: Instant) -> u64 {
    let ch = PubSub::open(path).unwrap();
    let p = ch.publisher().unwrap();
    common::signal_ready(ready);
    let mut n = 0;
    while Instant::now() < until {
        let _ = bounded("publish_timeout", CALL_TIMEOUT, || {
            p.publish_timeout(b"t/a", &[n as u8; 20], CALL_TIMEOUT)
        });
        let _ = bounded("try_publish", Duration::ZERO, || p.try_publish(b"u", b"x"));
        n += 2;
    }
    n
}

fn subscriber(path: &Path, ready: &str, until: Instant) -> u64 {
    let ch = PubSub::open(path).unwrap();
    let mut sub = ch.subscribe(&[b"t/", b""]).history().attach().unwrap();
    common::signal_ready(ready);
    let mut n = 0;
    while Instant::now() < until {
        if let Ok(m) = bounded("recv_timeout", CALL_TIMEOUT, || {
            sub.recv_timeout(CALL_TIMEOUT)
        }) {
            touch(m.topic());
            touch(m.payload());
        }
        let _ = bounded("repair", Duration::ZERO, || ch.repair());
        n += 2;
    }
    n
}

fn client(path: &Path, ready: &str, until: Instant) -> u64 {
    let svc = Service::open(path).unwrap();
    let c = svc.client().unwrap();
    common::signal_ready(ready);
    let mut n = 0;
    while Instant::now() < until {
        if let Ok(reply) = bounded("request_timeout", CALL_TIMEOUT, || {
            c.request_timeout(&[n as u8; 16], CALL_TIMEOUT)
                .map(|r| r.copy_to_vec())
        }) {
            touch(&reply);
        }
        n += 1;
    }
    n
}

fn server(path: &Path, ready: &str, until: Instant) -> u64 {
    let svc = Service::open(path).unwrap();
    let s = svc.server().unwrap();
    common::signal_ready(ready);
    let mut n = 0;
    while Instant::now() < until {
        if let Ok(r) = bounded("recv_timeout", CALL_TIMEOUT, || {
            s.recv_timeout(CALL_TIMEOUT)
        }) {
            touch(r.payload());
            let copy = r.copy_to_vec();
            let _ = bounded("reply", REPLY_BOUND, || r.reply(&copy));
        }
        n += 1;
    }
    n
}

#[test]
fn random_bytes_over_live_files_never_crash_or_hang_a_participant() {
    let secs: f64 = std::env::var("SHMQ_SCRIBBLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4.0);
    let dir = TempDir::new("scribbler");
    let (q, ch, svc) = (
        dir.join("pipeline"),
        dir.join("pubsub"),
        dir.join("service"),
    );
    let options = PipelineOptions::new()
        .capacity(16)
        .max_message(64)
        .max_participants(8);
    drop(Pipeline::create(&q, &options).unwrap());
    let options = PubSubOptions::new()
        .capacity(16)
        .max_message(64)
        .max_topic(8);
    drop(PubSub::create(&ch, &options).unwrap());
    let options = ServiceOptions::new()
        .request_capacity(16)
        .reply_capacity(4)
        .max_message(64);
    drop(Service::create(&svc, &options).unwrap());

    // The children run a little longer than the scribbling, and start their clocks when
    // started; the scribbling starts once all are attached.
    let run = format!("{}", secs + 1.0);
    let mut children: Vec<ChildProc> = Vec::new();
    let mut files = Vec::new();
    for (role, path) in [
        ("producer", &q),
        ("consumer", &q),
        ("publisher", &ch),
        ("subscriber", &ch),
        ("client", &svc),
        ("server", &svc),
    ] {
        let ready = dir.join(&format!("{role}.ready"));
        let mut c = child(role, &[s(path), s(&ready), &run]);
        wait_ready(&mut c, &ready);
        children.push(c);
    }
    for path in [&q, &ch, &svc] {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let len = file.metadata().unwrap().len();
        files.push((file, len));
    }

    let mut rng = Rng::new(0x5c1b);
    let started = Instant::now();
    let mut writes = 0u64;
    while started.elapsed() < Duration::from_secs_f64(secs) {
        for (file, len) in &files {
            // Mostly small writes anywhere; sometimes a word aimed at the control blocks and
            // tables at the front of the file.
            let at = if rng.below(4) == 0 {
                rng.below((*len).min(4096)) & !7
            } else {
                rng.below(*len)
            };
            let mut bytes = vec![0u8; 1 + rng.below(16) as usize];
            rng.fill(&mut bytes);
            let room = (*len - at) as usize;
            file.write_all_at(&bytes[..bytes.len().min(room)], at)
                .unwrap();
            writes += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    eprintln!("scribbler: {writes} writes over {secs} s");

    for c in &mut children {
        let status = c
            .wait_timeout(HANG + Duration::from_secs_f64(secs))
            .unwrap_or_else(|| panic!("{} did not finish: a call hung", c.role()));
        assert_eq!(
            status.signal(),
            None,
            "{} died by a signal: {status}",
            c.role()
        );
        assert!(
            status.success(),
            "{} failed (a panic or a call over its bound): {status}",
            c.role()
        );
    }
}
