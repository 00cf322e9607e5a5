//! `pipeline-out` and `pipeline-in`: a pipeline carried across hosts through a JetStream
//! work-queue stream.
//!
//! # pipeline-out
//! A thread receives from the local pipeline as a consumer and hands each [`shmq::Message`]
//! (still unacknowledged, holding its slot) to the async side over a channel of `window`
//! places. The async side gives it an id from the [`Journal`], publishes it with that id as
//! `Nats-Msg-Id`, and keeps at most `window` publishes in flight. Acknowledgements are taken in
//! publish order; only when JetStream has acknowledged a message is the local message dropped
//! (acknowledged) and its journal entry cleared. So a message leaves the local queue only once
//! it is stored in the stream.
//!
//! **Order.** Each publish carries `Nats-Expected-Last-Sequence`: the stream's last sequence
//! as the bridge knows it, plus one per publish still in flight. JetStream stores a publish
//! only if its expectation holds (after its duplicate check: a re-published id is still
//! recognised). So when a publish is lost — the server restarts, the connection drops — every
//! later publish in flight fails instead of being stored after the gap. When an
//! acknowledgement fails or times out (3 s), the bridge reads the stream's last sequence and
//! publishes every message in flight again, one at a time, in order, each until acknowledged
//! (same ids: those the server had stored come back as duplicates), then resumes pipelining.
//! This assumes the out-bridge is the stream's only publisher: run one per stream (another
//! publisher's messages cost it a resynchronisation each, but lose nothing).
//!
//! A bridge killed at any point leaves its held messages to the local queue, which delivers
//! them again flagged `redelivered()`; the next bridge finds their ids in the journal, and
//! JetStream drops the copies it already has: no duplicate enters the stream (within the
//! stream's duplicate window, `--duplicate-window`, default two minutes). One gap, from the
//! server's side: a restarted nats-server rebuilds its table of ids only from the messages
//! still in the stream, so a message whose acknowledgement the restart lost *and* that
//! `pipeline-in` had already taken out of the stream is stored a second time.
//!
//! # pipeline-in
//! A durable pull consumer (explicit acks) fetches batches; a thread sends each message into
//! the local pipeline as a producer (waiting while it is full); only after the local send
//! committed is the JetStream message acknowledged, which removes it from the work-queue
//! stream. When the acknowledgement is lost — the bridge killed after the local send, or the
//! server restarting — JetStream delivers the message again (after `--ack-wait`, default
//! 10 s) and it is sent locally twice (counted as `stream_redelivered`; a shmq producer cannot
//! flag it). While the local pipeline is full, the bridge tells JetStream every third of
//! `--ack-wait` that it is still working on the messages it holds, so a slow local consumer
//! causes no redelivery.

use crate::journal::{self, Journal, MsgId, Origin};
use crate::stats::{Counter, Stats};
use crate::{abandon, connect, nats_err, report_periodically, BridgeError, Common, Shutdown, POLL};
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// How long pipeline-out waits for JetStream to acknowledge a publish before it publishes
/// again.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// The stream both sides use.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// Stream name.
    pub name: String,
    /// Subject the messages are published to (default `shmq.pipeline.<name>`).
    pub subject: Option<String>,
    /// JetStream's deduplication window (the longest a dead out-bridge may stay down).
    pub duplicate_window: Duration,
}

impl StreamSpec {
    fn subject(&self) -> String {
        self.subject
            .clone()
            .unwrap_or_else(|| format!("shmq.pipeline.{}", self.name))
    }
}

/// Creates the work-queue stream if it does not exist.
async fn ensure_stream(
    js: &jetstream::Context,
    spec: &StreamSpec,
) -> Result<stream::Stream, BridgeError> {
    let config = stream::Config {
        name: spec.name.clone(),
        subjects: vec![spec.subject()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: spec.duplicate_window,
        ..Default::default()
    };
    // The server may be restarting: keep trying, a JetStream API request at a time.
    let mut delay = Duration::from_millis(100);
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(e) if delay < Duration::from_secs(5) => {
                tracing::warn!("stream {}: {e}; retrying", spec.name);
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(nats_err(&format!("create stream {}", spec.name), e)),
        }
    }
}

/// Settings of `pipeline-out`.
#[derive(Debug, Clone)]
pub struct OutConfig {
    /// The local pipeline.
    pub file: PathBuf,
    /// The stream.
    pub stream: StreamSpec,
    /// Messages in flight (held locally, published, not yet acknowledged by JetStream).
    pub window: usize,
}

/// The counters `pipeline-out` shows.
pub const OUT_COUNTERS: &[Counter] = &[
    Counter::LocalReceived,
    Counter::LocalRedelivered,
    Counter::Published,
    Counter::StreamAcked,
    Counter::Duplicates,
    Counter::Republished,
    Counter::LocalAcked,
    Counter::Errors,
];

type AckFuture = Pin<
    Box<
        dyn Future<
                Output = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
            > + Send,
    >,
>;

/// A message held locally while JetStream has not acknowledged it.
struct InFlight<'q> {
    message: shmq::Message<'q>,
    id: MsgId,
    slot: u64,
    ack: Option<AckFuture>,
}

/// Runs `pipeline-out` until SIGINT/SIGTERM.
///
/// # Errors
/// The queue cannot be opened or the journal used; NATS refuses the stream.
pub fn run_out(
    runtime: &Runtime,
    shutdown: Shutdown,
    common: &Common,
    config: &OutConfig,
) -> Result<Arc<Stats>, BridgeError> {
    let window = config.window.max(1);
    let queue = shmq::Pipeline::open(&config.file)?;
    let journal_path = journal::path_for(&config.file);
    let mut journal = Journal::open(&journal_path, window as u64)
        .map_err(|e| BridgeError::Journal(journal_path.clone(), e))?;
    let consumer = queue.consumer()?;
    if journal.carried() > 0 {
        tracing::info!(
            carried = journal.carried(),
            "journal holds ids of messages a previous bridge may have published"
        );
    }
    let stats = Arc::new(Stats::new("pipeline-out", OUT_COUNTERS));
    let (js, last_sequence) = runtime.block_on(async {
        let client = connect(&common.nats).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .build(client);
        let stream = ensure_stream(&js, &config.stream).await?;
        report_periodically(stats.clone(), common);
        Ok::<_, BridgeError>((js, stream.cached_info().state.last_sequence))
    })?;
    tracing::info!(
        queue = %config.file.display(),
        stream = %config.stream.name,
        "pipeline-out ready"
    );
    let subject = config.stream.subject();
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel(window);
        let receiver_shutdown = shutdown.clone();
        let receiver_stats = &stats;
        let consumer = &consumer;
        let file = &config.file;
        scope.spawn(move || {
            while !receiver_shutdown.requested() {
                match consumer.recv_timeout(POLL) {
                    Ok(message) => {
                        receiver_stats.bump(Counter::LocalReceived);
                        if message.redelivered() {
                            receiver_stats.bump(Counter::LocalRedelivered);
                        }
                        if let Err(back) = tx.blocking_send(message) {
                            // The async side is gone (it failed): never acknowledge what was
                            // not published.
                            std::mem::forget(back);
                            abandon("the publishing side stopped", 1);
                        }
                    }
                    Err(shmq::RecvTimeoutError::Timeout) => {}
                    Err(e) => {
                        tracing::error!("receiving from {}: {e}", file.display());
                        receiver_stats.bump(Counter::Errors);
                        std::thread::sleep(POLL);
                    }
                }
            }
        });
        let forward = Forward {
            js: &js,
            stream: &config.stream.name,
            subject: &subject,
            journal: &mut journal,
            stats: &stats,
            window,
            expected_last: last_sequence,
            acked: 0,
        };
        runtime.block_on(forward.run(rx, shutdown));
    });
    Ok(stats)
}

/// The async side of `pipeline-out`.
struct Forward<'a> {
    js: &'a jetstream::Context,
    stream: &'a str,
    subject: &'a str,
    journal: &'a mut Journal,
    stats: &'a Stats,
    window: usize,
    /// The stream's last sequence the next publish expects (`Nats-Expected-Last-Sequence`):
    /// the last one known plus one per publish in flight.
    expected_last: u64,
    /// JetStream acknowledgements so far (for the test hook).
    acked: u64,
}

impl<'a> Forward<'a> {
    /// Forwards until the receiving thread has stopped and nothing is in flight.
    ///
    /// Never drops a message it has not seen acknowledged by JetStream: on an error it leaves
    /// the process ([`abandon`]) with the messages held.
    async fn run<'q>(mut self, mut rx: mpsc::Receiver<shmq::Message<'q>>, mut shutdown: Shutdown) {
        let mut in_flight: VecDeque<InFlight<'q>> = VecDeque::with_capacity(self.window);
        let mut stopping: Option<Instant> = None;
        let mut incoming_open = true;
        loop {
            if !incoming_open && in_flight.is_empty() {
                return;
            }
            if stopping.is_some_and(|t| t.elapsed() > crate::SHUTDOWN_GRACE) {
                abandon(
                    "NATS did not acknowledge in time while stopping",
                    in_flight.len() + rx.len(),
                );
            }
            let room = incoming_open && in_flight.len() < self.window;
            tokio::select! {
                _ = shutdown.wait(), if stopping.is_none() => {
                    stopping = Some(Instant::now());
                }
                ack = front_ack(&mut in_flight), if !in_flight.is_empty() => match ack {
                    Ok(ack) => {
                        self.record_ack(&ack);
                        let done = in_flight.pop_front().expect("front exists");
                        self.finish(done);
                    }
                    Err(e) => {
                        // A lost publish makes every later one in flight fail its expected
                        // last sequence, so nothing after a gap is stored.
                        tracing::warn!("publish not acknowledged ({e}); publishing the {} in flight again, in order", in_flight.len());
                        self.republish_in_order(&mut in_flight, stopping).await;
                    }
                },
                message = rx.recv(), if room => match message {
                    Some(message) => {
                        let held = self.publish(message).await;
                        in_flight.push_back(held);
                    }
                    None => incoming_open = false,
                },
                _ = tokio::time::sleep(POLL), if stopping.is_some() => {}
            }
        }
    }

    /// Journals and publishes one message.
    async fn publish<'q>(&mut self, message: shmq::Message<'q>) -> InFlight<'q> {
        let (id, origin, slot) = match self.journal.assign(&message, message.redelivered()) {
            Ok(assigned) => assigned,
            Err(e) => {
                let why = format!("journal {}: {e}", self.journal.path().display());
                abandon(&why, self.window + 1)
            }
        };
        if origin == Origin::Carried {
            tracing::debug!(%id, "redelivered message keeps the id a previous bridge used");
        }
        let mut held = InFlight {
            message,
            id,
            slot,
            ack: None,
        };
        held.ack = self.send(&held, self.expected_last).await;
        self.expected_last += 1;
        held
    }

    /// Sends the publish of `held`, expecting the stream's last sequence to be `expected_last`
    /// (0: no expectation); `None` if it could not even be queued (retried later).
    async fn send(&self, held: &InFlight<'_>, expected_last: u64) -> Option<AckFuture> {
        let mut publish = PublishMessage::build()
            .payload(Bytes::copy_from_slice(&held.message))
            .message_id(held.id.to_string());
        if expected_last > 0 {
            publish = publish.expected_last_sequence(expected_last);
        }
        self.stats.bump(Counter::Published);
        match self
            .js
            .send_publish(self.subject.to_string(), publish)
            .await
        {
            Ok(ack) => Some(std::future::IntoFuture::into_future(ack)),
            Err(e) => {
                tracing::warn!("publish {}: {e}", held.id);
                None
            }
        }
    }

    fn record_ack(&mut self, ack: &jetstream::publish::PublishAck) {
        self.stats.bump(Counter::StreamAcked);
        if ack.duplicate {
            self.stats.bump(Counter::Duplicates);
        }
        self.acked += 1;
        #[cfg(feature = "test-hooks")]
        crate::testhook::after_stream_ack(self.acked);
    }

    /// JetStream has the message: acknowledge it locally and free its journal entry.
    fn finish(&mut self, done: InFlight<'_>) {
        let journaled = match done.message.ack() {
            Ok(()) => {
                self.stats.bump(Counter::LocalAcked);
                self.journal.release(done.slot)
            }
            Err(e) => {
                // Recovery took the message away (it judged this bridge dead): the queue
                // delivers it again, and it must get the same id then.
                tracing::warn!(id = %done.id, "local acknowledgement refused: {e}");
                self.stats.bump(Counter::Errors);
                self.journal.keep(done.slot)
            }
        };
        if let Err(e) = journaled {
            let why = format!("journal {}: {e}", self.journal.path().display());
            abandon(&why, self.window);
        }
    }

    /// Publishes every message in flight again, in order, each until acknowledged, each
    /// expecting the stream's actual last sequence (read from the server first).
    async fn republish_in_order(
        &mut self,
        in_flight: &mut VecDeque<InFlight<'_>>,
        stopping: Option<Instant>,
    ) {
        let mut delay = Duration::from_millis(50);
        let give_up = |held: usize| {
            if stopping.is_some_and(|t| t.elapsed() > crate::SHUTDOWN_GRACE) {
                abandon("NATS did not acknowledge in time while stopping", held);
            }
        };
        let mut last = None;
        while let Some(mut held) = in_flight.pop_front() {
            loop {
                give_up(in_flight.len() + 1);
                let expected = match last {
                    Some(seq) => seq,
                    None => match self.js.get_stream(self.stream).await {
                        Ok(stream) => *last.insert(stream.cached_info().state.last_sequence),
                        Err(e) => {
                            tracing::warn!("stream {}: {e}; retrying in {delay:?}", self.stream);
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(1));
                            continue;
                        }
                    },
                };
                self.stats.bump(Counter::Republished);
                held.ack = self.send(&held, expected).await;
                let outcome = match held.ack.take() {
                    Some(ack) => ack.await,
                    None => {
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                };
                match outcome {
                    Ok(ack) => {
                        if !ack.duplicate {
                            last = Some(ack.sequence);
                        }
                        self.record_ack(&ack);
                        break;
                    }
                    Err(e) => {
                        if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence {
                            last = None; // someone else published: read it again
                        } else {
                            tracing::warn!("publish {} again: {e}; retrying in {delay:?}", held.id);
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(1));
                        }
                    }
                }
            }
            self.finish(held);
        }
        if let Some(seq) = last {
            self.expected_last = seq;
        }
    }
}

/// The acknowledgement of the oldest message in flight.
async fn front_ack(
    in_flight: &mut VecDeque<InFlight<'_>>,
) -> Result<jetstream::publish::PublishAck, String> {
    match in_flight.front_mut().and_then(|f| f.ack.as_mut()) {
        Some(ack) => ack.await.map_err(|e| e.to_string()),
        None => Err("the publish could not be sent".to_string()),
    }
}

/// Settings of `pipeline-in`.
#[derive(Debug, Clone)]
pub struct InConfig {
    /// The local pipeline.
    pub file: PathBuf,
    /// The stream.
    pub stream: StreamSpec,
    /// Name of the durable consumer (bridges with the same name share the stream's messages).
    pub consumer: String,
    /// Messages per fetch.
    pub batch: usize,
    /// How long JetStream waits for an acknowledgement before it delivers a message again
    /// (pipeline-in says "still working" every third of it while the local pipeline is full).
    pub ack_wait: Duration,
}

/// The counters `pipeline-in` shows.
pub const IN_COUNTERS: &[Counter] = &[
    Counter::Received,
    Counter::StreamRedelivered,
    Counter::LocalSent,
    Counter::StreamAcked,
    Counter::Errors,
];

/// Runs `pipeline-in` until SIGINT/SIGTERM.
///
/// # Errors
/// The queue cannot be opened; NATS refuses the stream or the consumer.
pub fn run_in(
    runtime: &Runtime,
    mut shutdown: Shutdown,
    common: &Common,
    config: &InConfig,
) -> Result<Arc<Stats>, BridgeError> {
    let batch = config.batch.max(1);
    let queue = shmq::Pipeline::open(&config.file)?;
    let producer = queue.producer()?;
    let stats = Arc::new(Stats::new("pipeline-in", IN_COUNTERS));
    let durable = runtime.block_on(async {
        let client = connect(&common.nats).await?;
        let js = jetstream::new(client);
        let stream = ensure_stream(&js, &config.stream).await?;
        let consumer = stream
            .get_or_create_consumer(
                &config.consumer,
                consumer::pull::Config {
                    durable_name: Some(config.consumer.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    max_ack_pending: (batch * 4) as i64,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| nats_err(&format!("consumer {}", config.consumer), e))?;
        report_periodically(stats.clone(), common);
        Ok::<_, BridgeError>(consumer)
    })?;
    tracing::info!(
        queue = %config.file.display(),
        stream = %config.stream.name,
        "pipeline-in ready"
    );
    std::thread::scope(|scope| {
        let (to_local, mut from_stream) = mpsc::channel::<Bytes>(batch);
        let (sent_tx, mut sent) = mpsc::unbounded_channel::<LocalSend>();
        let producer = &producer;
        let sender_stats = &stats;
        let progress_every = config.ack_wait / 3;
        scope.spawn(move || {
            while let Some(payload) = from_stream.blocking_recv() {
                let outcome = loop {
                    match producer.send_timeout(&payload, progress_every) {
                        Ok(()) => {
                            sender_stats.bump(Counter::LocalSent);
                            break LocalSend::Committed;
                        }
                        Err(shmq::SendTimeoutError::Timeout) => {
                            // The local pipeline stays full: tell JetStream the messages are
                            // being worked on, so they are not delivered again after `ack_wait`.
                            if sent_tx.send(LocalSend::Waiting).is_err() {
                                return;
                            }
                        }
                        Err(e @ shmq::SendTimeoutError::Send(shmq::SendError::TooLarge { .. })) => {
                            // Retrying cannot help: take it out of the stream.
                            tracing::error!("local send: {e}; message dropped from the stream");
                            sender_stats.bump(Counter::Errors);
                            break LocalSend::Impossible;
                        }
                        Err(e) => {
                            // Not sent (its slot was taken away, or the queue is damaged):
                            // try again; JetStream keeps the message meanwhile.
                            tracing::warn!("local send: {e}; retrying");
                            sender_stats.bump(Counter::Errors);
                            std::thread::sleep(POLL);
                            if sent_tx.send(LocalSend::Waiting).is_err() {
                                return;
                            }
                        }
                    }
                };
                if sent_tx.send(outcome).is_err() {
                    break;
                }
            }
        });
        let result = runtime.block_on(async {
            let mut delay = Duration::from_millis(50);
            while !shutdown.requested() {
                let fetched = durable
                    .fetch()
                    .max_messages(batch)
                    .expires(Duration::from_millis(500))
                    .messages()
                    .await;
                let mut messages = match fetched {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!("fetch: {e}; retrying in {delay:?}");
                        stats.bump(Counter::Errors);
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.wait() => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(1));
                        continue;
                    }
                };
                delay = Duration::from_millis(50);
                // Messages handed to the sending thread, in order; it reports on each in order.
                let mut pending = VecDeque::with_capacity(batch);
                let mut batch_open = true;
                while batch_open || !pending.is_empty() {
                    tokio::select! {
                        message = messages.next(), if batch_open => match message {
                            Some(Ok(message)) => {
                                stats.bump(Counter::Received);
                                if message.info().is_ok_and(|i| i.delivered > 1) {
                                    stats.bump(Counter::StreamRedelivered);
                                }
                                let payload = message.payload.clone();
                                pending.push_back(message);
                                if to_local.send(payload).await.is_err() {
                                    return Err(BridgeError::Config("the local sender stopped".into()));
                                }
                            }
                            Some(Err(e)) => {
                                tracing::warn!("fetch: {e}");
                                stats.bump(Counter::Errors);
                            }
                            None => batch_open = false,
                        },
                        outcome = sent.recv(), if !pending.is_empty() => {
                            let Some(outcome) = outcome else {
                                return Err(BridgeError::Config("the local sender stopped".into()));
                            };
                            if outcome == LocalSend::Waiting {
                                for waiting in &pending {
                                    acknowledge(waiting, outcome, &stats).await;
                                }
                            } else {
                                let done = pending.pop_front().expect("one report per message");
                                acknowledge(&done, outcome, &stats).await;
                            }
                        }
                    }
                }
            }
            Ok(())
        });
        drop(to_local); // the sending thread ends
        result
    })?;
    Ok(stats)
}

/// What became of a stream message's local send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalSend {
    /// Sent: acknowledge it.
    Committed,
    /// Still waiting for room: extend JetStream's `ack_wait` of every message pending.
    Waiting,
    /// Can never be sent (too large): terminate it, so it is not delivered for ever.
    Impossible,
}

/// Tells JetStream what became of a message's local send.
async fn acknowledge(message: &jetstream::Message, outcome: LocalSend, stats: &Stats) {
    let kind = match outcome {
        LocalSend::Committed => jetstream::AckKind::Ack,
        LocalSend::Waiting => jetstream::AckKind::Progress,
        LocalSend::Impossible => jetstream::AckKind::Term,
    };
    match message.ack_with(kind).await {
        Ok(()) if outcome == LocalSend::Committed => stats.bump(Counter::StreamAcked),
        Ok(()) => {}
        Err(e) => {
            tracing::warn!("acknowledge to JetStream: {e} (it will deliver the message again)");
            stats.bump(Counter::Errors);
        }
    }
}
