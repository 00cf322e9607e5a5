//! Request-reply across two "hosts": local clients on B, `service-in` on B, `service-out` on A,
//! local servers on A, through a real nats-server; clients and servers are child processes.

#[path = "../../tests/common/mod.rs"]
mod common;
mod harness;

use harness::{arg, Bridge, Host, HANG};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "server" => server(args),
        "client" => client(args),
        other => panic!("unknown role {other}"),
    });
}

/// Answers every request `p` with `re:p` until killed.
fn server(args: &[String]) {
    let service = shmq::Service::open(&args[0]).unwrap();
    let server = service.server().unwrap();
    loop {
        let request = server.recv().unwrap();
        let reply = [b"re:".as_slice(), request.payload()].concat();
        request.reply(&reply).unwrap();
    }
}

/// Sends `count` requests `c<id>-<n>`, eight in flight at a time, and checks each reply.
fn client(args: &[String]) {
    let service = shmq::Service::open(&args[0]).unwrap();
    let id = &args[1];
    let count: usize = args[2].parse().unwrap();
    let client = service.client().unwrap();
    let mut n = 0;
    while n < count {
        let batch: Vec<_> = (n..count.min(n + 8))
            .map(|i| {
                let payload = format!("c{id}-{i}");
                (client.send(payload.as_bytes()).unwrap(), payload)
            })
            .collect();
        n += batch.len();
        for (pending, payload) in batch {
            let reply = client.wait(pending).unwrap();
            assert_eq!(
                reply.payload(),
                format!("re:{payload}").as_bytes(),
                "client {id}"
            );
        }
    }
}

fn service(host: &Host) -> PathBuf {
    let path = host.path("svc");
    shmq::Service::create(
        &path,
        &shmq::ServiceOptions::new().max_clients(32).max_message(256),
    )
    .unwrap();
    path
}

#[test]
fn request_reply_across_hosts_three_clients_each_get_their_own_replies() {
    let Some(nats) = harness::nats() else { return };
    let (a, b) = (Host::new("rpc", "a"), Host::new("rpc", "b"));
    let (svc_a, svc_b) = (service(&a), service(&b));
    let _servers: Vec<_> = (0..2)
        .map(|_| common::child("server", &[arg(&svc_a)]))
        .collect();
    let mut out = Bridge::ready(
        "out",
        &nats,
        &["service-out", arg(&svc_a), "--subject", "rpc.echo"],
    );
    let mut inb = Bridge::ready(
        "in",
        &nats,
        &["service-in", arg(&svc_b), "--subject", "rpc.echo"],
    );
    const COUNT: usize = 200;
    let mut clients: Vec<_> = (0..3)
        .map(|id| {
            common::child(
                "client",
                &[arg(&svc_b), &id.to_string(), &COUNT.to_string()],
            )
        })
        .collect();
    common::expect_all_succeed(&mut clients, HANG);
    let (out_stats, in_stats) = (out.terminate(), inb.terminate());
    assert_eq!(out_stats["replied"], 3 * COUNT as u64, "{out_stats:?}");
    assert_eq!(in_stats["replied"], 3 * COUNT as u64, "{in_stats:?}");
    assert_eq!(in_stats["no_reply"], 0, "{in_stats:?}");
}

/// A NATS responder subscribed to `subject` that receives requests and never answers.
fn silent_responder(url: String, subject: &'static str) -> std::sync::mpsc::Sender<()> {
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = async_nats::connect(url).await.unwrap();
            let mut requests = client.subscribe(subject).await.unwrap();
            client.flush().await.unwrap();
            ready_tx.send(()).unwrap();
            while stop_rx.try_recv() == Err(std::sync::mpsc::TryRecvError::Empty) {
                // Take requests and drop them unanswered.
                let _ = tokio::time::timeout(
                    Duration::from_millis(50),
                    futures_util::StreamExt::next(&mut requests),
                )
                .await;
            }
        });
    });
    ready_rx.recv_timeout(HANG).expect("responder subscribed");
    stop_tx
}

#[test]
fn remote_responder_that_never_answers_gives_the_local_client_its_timeout_error() {
    let Some(nats) = harness::nats() else { return };
    let b = Host::new("silent", "b");
    let svc = service(&b);
    let stop = silent_responder(nats.url(), "rpc.silent");
    let _inb = Bridge::ready(
        "in",
        &nats,
        &[
            "service-in",
            arg(&svc),
            "--subject",
            "rpc.silent",
            "--timeout",
            "1",
        ],
    );
    let client = shmq::Service::open(&svc).unwrap().client().unwrap();
    // A client with a deadline shorter than the bridge's gets its own timeout.
    let err = client
        .request_timeout(b"anyone?", Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, shmq::Error::Timeout), "{err}");
    // A client waiting without a deadline is told "no reply" when the bridge's NATS request
    // times out (1 s), instead of waiting for ever.
    let started = Instant::now();
    let err = client.request(b"still there?").unwrap_err();
    assert!(
        matches!(err, shmq::Error::Recv(shmq::RecvError::NoReply)),
        "{err}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // With no responder subscribed at all, NATS says so at once: "no reply" again.
    stop.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let err = client.request(b"hello?").unwrap_err();
    assert!(
        matches!(err, shmq::Error::Recv(shmq::RecvError::NoReply)),
        "{err}"
    );
}

#[test]
fn request_reply_resumes_after_the_nats_server_restarts() {
    let Some(mut nats) = harness::nats() else {
        return;
    };
    let (a, b) = (Host::new("rpc-restart", "a"), Host::new("rpc-restart", "b"));
    let (svc_a, svc_b) = (service(&a), service(&b));
    let _server = common::child("server", &[arg(&svc_a)]);
    let args_out = ["service-out", arg(&svc_a), "--subject", "rpc.echo"];
    let _out = Bridge::ready("out", &nats, &args_out);
    let _in = Bridge::ready(
        "in",
        &nats,
        &[
            "service-in",
            arg(&svc_b),
            "--subject",
            "rpc.echo",
            "--timeout",
            "1",
        ],
    );
    let client = shmq::Service::open(&svc_b).unwrap().client().unwrap();
    assert_eq!(client.request(b"before").unwrap().payload(), b"re:before");
    nats.restart();
    // Both bridges reconnect and subscribe again by themselves; requests made meanwhile end
    // with "no reply", then replies flow again.
    let deadline = Instant::now() + HANG;
    loop {
        match client.request(b"after") {
            Ok(reply) => {
                assert_eq!(reply.payload(), b"re:after");
                break;
            }
            Err(shmq::Error::Recv(shmq::RecvError::NoReply)) => {
                assert!(Instant::now() < deadline, "no reply since the restart");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{e}"),
        }
    }
}
