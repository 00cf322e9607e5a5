//! `service-out` and `service-in`: a request-reply service carried across hosts as NATS
//! request/reply.
//!
//! # service-out
//! Serves NATS requests on `--subject` (in the queue group `--queue-group`, so several
//! bridges share the load) by sending them to the local service as a client and answering with
//! the local reply. `--concurrency` worker threads each own one local [`shmq::Client`] and
//! make one request at a time, so that many requests are in flight. A local request that ends
//! without a reply (the server dropped it, or `--timeout` passed) is answered with an empty
//! message carrying the header `Shmq-Status: no-reply` (or `timeout`, or `error`), so the
//! remote side learns it at once instead of waiting for its own timeout.
//!
//! # service-in
//! Attaches to the local service as a server; each local request is sent as a NATS request to
//! `--subject` with `--timeout`, and the answer is the local reply. When there is no answer —
//! the NATS request timed out, no responder is subscribed, or a `service-out` answered with
//! `Shmq-Status` — the local request is dropped unanswered, which ends the local client's
//! `wait` with [`shmq::RecvError::NoReply`] (a client waiting with a shorter timeout of its own
//! gets its [`shmq::RecvTimeoutError::Timeout`] first). Up to `--concurrency` requests are in
//! flight.
//! A thread receives local requests, another replies to them, so neither blocking call holds
//! up the async side.

use crate::stats::{Counter, Stats};
use crate::{
    connect, report_periodically, subscribe_registered, BridgeError, Common, Shutdown, POLL,
    STATUS_HEADER,
};
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Settings of `service-out` and `service-in`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The local service.
    pub file: PathBuf,
    /// The NATS subject requests go to.
    pub subject: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// How long a request may take.
    pub timeout: Duration,
    /// `service-out`'s queue group.
    pub queue_group: String,
}

/// What became of a request forwarded to the local service.
enum Outcome {
    Reply(Bytes),
    NoReply(&'static str),
}

/// The counters `service-out` shows.
pub const OUT_COUNTERS: &[Counter] = &[
    Counter::Received,
    Counter::Replied,
    Counter::NoReply,
    Counter::Errors,
];

/// Runs `service-out` until SIGINT/SIGTERM.
///
/// # Errors
/// The service cannot be opened (or has too few client entries for `--concurrency`); NATS
/// refuses the subscription.
pub fn run_out(
    runtime: &Runtime,
    mut shutdown: Shutdown,
    common: &Common,
    config: &Config,
) -> Result<Arc<Stats>, BridgeError> {
    let concurrency = config.concurrency.max(1);
    let service = shmq::Service::open(&config.file)?;
    let clients = (0..concurrency)
        .map(|_| service.client())
        .collect::<Result<Vec<_>, _>>()?;
    let stats = Arc::new(Stats::new("service-out", OUT_COUNTERS));
    let (client, mut requests) = runtime.block_on(async {
        let client = connect(&common.nats).await?;
        let requests =
            subscribe_registered(&client, &config.subject, Some(&config.queue_group)).await?;
        report_periodically(stats.clone(), common);
        Ok::<_, BridgeError>((client, requests))
    })?;
    tracing::info!(service = %config.file.display(), subject = %config.subject, "service-out ready");
    let (work_tx, work_rx) = mpsc::channel::<(Bytes, async_nats::Subject)>(concurrency);
    let work_rx = Mutex::new(work_rx);
    std::thread::scope(|scope| {
        let (done_tx, mut done) = mpsc::unbounded_channel::<(async_nats::Subject, Outcome)>();
        for local in clients {
            let (work_rx, done_tx, timeout) = (&work_rx, done_tx.clone(), config.timeout);
            scope.spawn(move || loop {
                let job = work_rx.lock().expect("no worker panics").blocking_recv();
                let Some((payload, reply_to)) = job else {
                    break;
                };
                let outcome = match local.request_timeout(&payload, timeout) {
                    Ok(reply) => Outcome::Reply(Bytes::copy_from_slice(reply.payload())),
                    Err(shmq::Error::Timeout) => Outcome::NoReply("timeout"),
                    Err(shmq::Error::Recv(shmq::RecvError::NoReply)) => {
                        Outcome::NoReply("no-reply")
                    }
                    Err(e) => {
                        tracing::warn!("local request: {e}");
                        Outcome::NoReply("error")
                    }
                };
                if done_tx.send((reply_to, outcome)).is_err() {
                    break;
                }
            });
        }
        drop(done_tx);
        runtime.block_on(async {
            let mut in_flight = 0usize;
            let mut taking = true;
            while taking || in_flight > 0 {
                tokio::select! {
                    request = requests.next(), if taking => match request {
                        Some(request) => {
                            stats.bump(Counter::Received);
                            let Some(reply_to) = request.reply else {
                                continue; // a publish, not a request: nobody to answer
                            };
                            in_flight += 1;
                            if work_tx.send((request.payload, reply_to)).await.is_err() {
                                break;
                            }
                        }
                        None => taking = false,
                    },
                    finished = done.recv(), if in_flight > 0 => {
                        let Some((reply_to, outcome)) = finished else { break };
                        in_flight -= 1;
                        let sent = match outcome {
                            Outcome::Reply(payload) => {
                                stats.bump(Counter::Replied);
                                client.publish(reply_to, payload).await
                            }
                            Outcome::NoReply(status) => {
                                stats.bump(Counter::NoReply);
                                let mut headers = async_nats::HeaderMap::new();
                                headers.insert(STATUS_HEADER, status);
                                client.publish_with_headers(reply_to, headers, Bytes::new()).await
                            }
                        };
                        if let Err(e) = sent {
                            tracing::warn!("answer: {e}");
                            stats.bump(Counter::Errors);
                        }
                    }
                    _ = shutdown.wait(), if taking => {
                        taking = false;
                        let _ = requests.unsubscribe().await;
                    }
                }
            }
            drop(work_tx);
            let _ = client.flush().await;
        });
    });
    Ok(stats)
}

/// The counters `service-in` shows.
pub const IN_COUNTERS: &[Counter] = &[
    Counter::LocalReceived,
    Counter::LocalRedelivered,
    Counter::Replied,
    Counter::NoReply,
    Counter::Errors,
];

/// Forwards one local request to NATS.
async fn forward(
    client: async_nats::Client,
    subject: String,
    timeout: Duration,
    request: shmq::Request<'_>,
) -> (shmq::Request<'_>, Option<Bytes>) {
    let asked = async_nats::Request::new()
        .payload(Bytes::copy_from_slice(request.payload()))
        .timeout(Some(timeout));
    let answer = match client.send_request(subject, asked).await {
        Ok(answer)
            if answer
                .headers
                .as_ref()
                .is_some_and(|h| h.get(STATUS_HEADER).is_some()) =>
        {
            None
        }
        Ok(answer) => Some(answer.payload),
        Err(e) => {
            tracing::debug!("request: {e}");
            None
        }
    };
    (request, answer)
}

/// Runs `service-in` until SIGINT/SIGTERM.
///
/// # Errors
/// The service cannot be opened.
pub fn run_in(
    runtime: &Runtime,
    mut shutdown: Shutdown,
    common: &Common,
    config: &Config,
) -> Result<Arc<Stats>, BridgeError> {
    let concurrency = config.concurrency.max(1);
    let service = shmq::Service::open(&config.file)?;
    let server = service.server()?;
    let stats = Arc::new(Stats::new("service-in", IN_COUNTERS));
    let client = runtime.block_on(async {
        let client = connect(&common.nats).await?;
        report_periodically(stats.clone(), common);
        Ok::<_, BridgeError>(client)
    })?;
    tracing::info!(service = %config.file.display(), subject = %config.subject, "service-in ready");
    std::thread::scope(|scope| {
        let (request_tx, mut requests) = mpsc::channel::<shmq::Request<'_>>(concurrency);
        let (answer_tx, mut answers) =
            mpsc::unbounded_channel::<(shmq::Request<'_>, Option<Bytes>)>();
        let (server, thread_stats, stop) = (&server, &stats, shutdown.clone());
        scope.spawn(move || {
            while !stop.requested() {
                match server.recv_timeout(POLL) {
                    Ok(request) => {
                        thread_stats.bump(Counter::LocalReceived);
                        if request.redelivered() {
                            thread_stats.bump(Counter::LocalRedelivered);
                        }
                        if request_tx.blocking_send(request).is_err() {
                            break; // dropped: the client gets "no reply"
                        }
                    }
                    Err(shmq::RecvTimeoutError::Timeout) => {}
                    Err(e) => {
                        tracing::error!("receiving requests: {e}");
                        thread_stats.bump(Counter::Errors);
                        std::thread::sleep(POLL);
                    }
                }
            }
        });
        scope.spawn(move || {
            while let Some((request, answer)) = answers.blocking_recv() {
                match answer {
                    Some(payload) => match request.reply(&payload) {
                        Ok(_) => thread_stats.bump(Counter::Replied),
                        Err(e) => {
                            tracing::warn!("local reply: {e}");
                            thread_stats.bump(Counter::Errors);
                        }
                    },
                    None => {
                        thread_stats.bump(Counter::NoReply);
                        drop(request); // tells the client there will be no reply
                    }
                }
            }
        });
        runtime.block_on(async {
            let mut in_flight = FuturesUnordered::new();
            let (mut taking, mut closed) = (true, false);
            while taking || !in_flight.is_empty() {
                tokio::select! {
                    request = requests.recv(), if taking && in_flight.len() < concurrency => match request {
                        Some(request) => in_flight.push(forward(client.clone(), config.subject.clone(), config.timeout, request)),
                        None => taking = false,
                    },
                    Some((request, answer)) = in_flight.next(), if !in_flight.is_empty() => {
                        if answer_tx.send((request, answer)).is_err() {
                            break;
                        }
                    }
                    _ = shutdown.wait(), if !closed => {
                        // The receiving thread stops; requests it already handed over are
                        // still forwarded.
                        requests.close();
                        closed = true;
                    }
                }
            }
            drop(answer_tx);
        });
    });
    Ok(stats)
}
