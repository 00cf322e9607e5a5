//! `pubsub-out` and `pubsub-in`: a channel's topics carried across hosts as NATS subjects.
//!
//! `pubsub-out` subscribes to the local channel (with `--topic` prefixes, default every topic)
//! and publishes each message to `<prefix>.<topic as tokens>` (see [`crate::subject`]) with the
//! header `Shmq-Origin` naming where it came from. `pubsub-in` subscribes to the subjects under
//! the prefix that its `--topic` prefixes select (a token-aligned wildcard, then an exact
//! prefix check on the decoded topic) and publishes each message on the local channel under
//! its topic. Delivery is at most once, like the channel's own: a NATS subscriber that is
//! disconnected misses what is published meanwhile, and a lagging local subscriber misses what
//! was overwritten (counted as `lagged`).
//!
//! # No echo, no loops
//! Two bridges of each kind on two hosts, all on one prefix, would pass every message back
//! and forth for ever. Two rules stop that:
//! 1. **Not back where it came from.** `pubsub-in` drops messages whose `Shmq-Origin` is its own
//!    origin (default `<hostname>:<canonical channel path>`, the same for the `pubsub-out` of the
//!    same channel), so a host's messages are not published to it again by its own bridge.
//! 2. **Not out again what came in.** Before `pubsub-in` publishes a message locally, it
//!    publishes a *mark* — the FNV-1a hash of topic and payload, and the time — on a side channel,
//!    `<channel>.bridge-marks` (created by whichever bridge comes first; `Overflow::Block`, 4096
//!    marks). `pubsub-out` subscribes to the side channel first (with the marks retained), then
//!    to the data, and reads the side channel every time it has received a message: the mark
//!    was committed before the message, so if the message came from `pubsub-in` its mark is
//!    visible by then; a message whose mark is found is not forwarded (counted as
//!    `loops_prevented`), and the mark is used up. Marks count ten seconds from their
//!    publication at most ([`MARK_TTL`]): one whose message `pubsub-out` never sees (its topic is filtered out, or
//!    it was overwritten while lagging) must not suppress a later, genuinely local message
//!    with the same topic and payload.

use crate::journal::fnv1a;
use crate::stats::{Counter, Stats};
use crate::subject::{check_prefix, subject_for, subscription_for, topic_of};
use crate::{
    canonical, connect, report_periodically, subscribe_registered, BridgeError, Common, Shutdown,
    ORIGIN_HEADER, POLL,
};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// How long `pubsub-out` keeps a mark whose message it has not seen.
pub const MARK_TTL: Duration = Duration::from_secs(10);

/// Marks kept at most (older ones go first).
const MAX_MARKS: usize = 65_536;

/// Longest topic a mark carries (marks of longer topics carry its start, which is all a prefix
/// filter looks at).
const MARK_TOPIC: usize = 256;

/// Settings of `pubsub-out` and `pubsub-in`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The local channel.
    pub file: PathBuf,
    /// Subject prefix (one or more tokens).
    pub subject_prefix: String,
    /// Topic prefixes to carry (none: every topic).
    pub topics: Vec<Vec<u8>>,
    /// This side's origin id (default `<hostname>:<canonical channel path>`).
    pub origin: Option<String>,
}

impl Config {
    fn origin(&self) -> String {
        self.origin.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into());
            format!("{host}:{}", canonical(&self.file).display())
        })
    }

    fn prefixes(&self) -> Vec<&[u8]> {
        if self.topics.is_empty() {
            vec![b"".as_slice()]
        } else {
            self.topics.iter().map(Vec::as_slice).collect()
        }
    }
}

/// The side channel of marks beside `channel`.
pub fn marks_path(channel: &Path) -> PathBuf {
    let mut name = channel.as_os_str().to_owned();
    name.push(".bridge-marks");
    PathBuf::from(name)
}

/// Opens the marks channel, creating it if no bridge has yet.
fn open_marks(channel: &Path) -> Result<shmq::PubSub, BridgeError> {
    let path = marks_path(channel);
    let options = shmq::PubSubOptions::new()
        .capacity(4096)
        .max_message(16)
        .max_topic(MARK_TOPIC)
        .max_publishers(64)
        .max_subscribers(64)
        .overflow(shmq::Overflow::Block);
    for _ in 0..50 {
        match shmq::PubSub::open(&path) {
            Ok(marks) => return Ok(marks),
            Err(shmq::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                match shmq::PubSub::create(&path, &options) {
                    Ok(marks) => return Ok(marks),
                    Err(shmq::Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e.into()),
                }
            }
            // Created a moment ago by the other bridge, header not written yet.
            Err(shmq::Error::Corrupt { .. }) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(shmq::PubSub::open(&path)?)
}

/// A message's fingerprint: hash of its topic and payload.
fn fingerprint(topic: &[u8], payload: &[u8]) -> u64 {
    fnv1a(&[&(topic.len() as u64).to_le_bytes()[..], topic, payload].concat())
}

/// Nanoseconds since the Unix epoch (marks carry it: their age must survive a restart of
/// `pubsub-out`, which reads the marks retained in the side channel).
fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The mark of a message: `[fingerprint][publication time in Unix nanoseconds]`.
fn mark(topic: &[u8], payload: &[u8]) -> [u8; 16] {
    let mut mark = [0u8; 16];
    mark[..8].copy_from_slice(&fingerprint(topic, payload).to_le_bytes());
    mark[8..].copy_from_slice(&now_nanos().to_le_bytes());
    mark
}

/// The counters `pubsub-out` shows.
pub const OUT_COUNTERS: &[Counter] = &[
    Counter::LocalReceived,
    Counter::Lagged,
    Counter::LoopsPrevented,
    Counter::Published,
    Counter::Errors,
];

/// The marks `pubsub-out` has read and not used yet.
struct Marks {
    subscriber: shmq::Subscriber,
    unused: VecDeque<(u64, Instant)>,
}

impl Marks {
    /// Reads every mark published so far, and forgets expired ones.
    fn refresh(&mut self, stats: &Stats) {
        loop {
            match self.subscriber.try_recv() {
                Ok(m) => {
                    let Ok(raw) = <[u8; 16]>::try_from(m.payload()) else {
                        continue;
                    };
                    let word = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().expect("8"));
                    let age = Duration::from_nanos(now_nanos().saturating_sub(word(8)));
                    if let Some(at) = Instant::now().checked_sub(age).filter(|_| age < MARK_TTL) {
                        self.unused.push_back((word(0), at));
                    }
                }
                Err(shmq::TryRecvError::Empty) => break,
                // Cannot happen in Block mode.
                Err(shmq::TryRecvError::Recv(shmq::RecvError::Lagged(_))) => {}
                Err(e) => {
                    tracing::warn!("marks channel: {e}");
                    stats.bump(Counter::Errors);
                    break;
                }
            }
        }
        while self.unused.len() > MAX_MARKS
            || self
                .unused
                .front()
                .is_some_and(|(_, at)| at.elapsed() > MARK_TTL)
        {
            self.unused.pop_front();
        }
    }

    /// Uses up the mark of a message, if it has one.
    fn take(&mut self, mark: u64) -> bool {
        match self.unused.iter().position(|&(m, _)| m == mark) {
            Some(i) => {
                self.unused.remove(i);
                true
            }
            None => false,
        }
    }
}

/// Runs `pubsub-out` until SIGINT/SIGTERM.
///
/// # Errors
/// The channel cannot be opened; the prefix is invalid.
pub fn run_out(
    runtime: &Runtime,
    mut shutdown: Shutdown,
    common: &Common,
    config: &Config,
) -> Result<Arc<Stats>, BridgeError> {
    check_prefix(&config.subject_prefix).map_err(BridgeError::Config)?;
    let channel = shmq::PubSub::open(&config.file)?;
    let prefixes = config.prefixes();
    // Marks first, with the retained ones: every message the data subscriber will see has its
    // mark (if any) published before it, so in what the marks subscriber sees.
    let mut marks = Marks {
        subscriber: open_marks(&config.file)?
            .subscribe(&prefixes)
            .history()
            .attach()?,
        unused: VecDeque::new(),
    };
    let mut subscriber = channel.subscriber(&prefixes)?;
    let origin = config.origin();
    let stats = Arc::new(Stats::new("pubsub-out", OUT_COUNTERS));
    let client = runtime.block_on(async {
        let client = connect(&common.nats).await?;
        report_periodically(stats.clone(), common);
        Ok::<_, BridgeError>(client)
    })?;
    tracing::info!(channel = %config.file.display(), %origin, "pubsub-out ready");
    std::thread::scope(|scope| {
        let (tx, mut rx) = mpsc::channel::<(Vec<u8>, Bytes)>(1024);
        let thread_stats = &stats;
        let stop = shutdown.clone();
        scope.spawn(move || {
            while !stop.requested() {
                match subscriber.recv_timeout(POLL) {
                    Ok(m) => {
                        thread_stats.bump(Counter::LocalReceived);
                        marks.refresh(thread_stats);
                        if marks.take(fingerprint(m.topic(), m.payload())) {
                            thread_stats.bump(Counter::LoopsPrevented);
                            continue;
                        }
                        let out = (m.topic().to_vec(), Bytes::copy_from_slice(m.payload()));
                        if tx.blocking_send(out).is_err() {
                            break;
                        }
                    }
                    Err(shmq::RecvTimeoutError::Recv(shmq::RecvError::Lagged(n))) => {
                        thread_stats.add(Counter::Lagged, n)
                    }
                    Err(shmq::RecvTimeoutError::Timeout) => marks.refresh(thread_stats),
                    Err(e) => {
                        tracing::error!("receiving from the channel: {e}");
                        thread_stats.bump(Counter::Errors);
                        std::thread::sleep(POLL);
                    }
                }
            }
        });
        runtime.block_on(async {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(ORIGIN_HEADER, origin.as_str());
            loop {
                let (topic, payload) = tokio::select! {
                    next = rx.recv() => match next {
                        Some(next) => next,
                        None => break,
                    },
                    _ = shutdown.wait() => break,
                };
                let subject = subject_for(&config.subject_prefix, &topic);
                match client
                    .publish_with_headers(subject, headers.clone(), payload)
                    .await
                {
                    Ok(()) => stats.bump(Counter::Published),
                    Err(e) => {
                        tracing::warn!("publish: {e}");
                        stats.bump(Counter::Errors);
                    }
                }
            }
            shutdown.request();
            let _ = client.flush().await;
        });
    });
    Ok(stats)
}

/// The counters `pubsub-in` shows.
pub const IN_COUNTERS: &[Counter] = &[
    Counter::Received,
    Counter::LoopsPrevented,
    Counter::LocalSent,
    Counter::Errors,
];

/// Runs `pubsub-in` until SIGINT/SIGTERM.
///
/// # Errors
/// The channel cannot be opened; the prefix is invalid; NATS refuses the subscription.
pub fn run_in(
    runtime: &Runtime,
    mut shutdown: Shutdown,
    common: &Common,
    config: &Config,
) -> Result<Arc<Stats>, BridgeError> {
    check_prefix(&config.subject_prefix).map_err(BridgeError::Config)?;
    let channel = shmq::PubSub::open(&config.file)?;
    let publisher = channel.publisher()?;
    let marker = open_marks(&config.file)?.publisher()?;
    let origin = config.origin();
    let prefixes: Vec<Vec<u8>> = config.prefixes().into_iter().map(<[u8]>::to_vec).collect();
    // One subscription: several could overlap and deliver a message twice.
    let subscription = match prefixes.as_slice() {
        [only] => subscription_for(&config.subject_prefix, only),
        _ => format!("{}.>", config.subject_prefix),
    };
    let stats = Arc::new(Stats::new("pubsub-in", IN_COUNTERS));
    let (client, mut subscriber) = runtime.block_on(async {
        let client = connect(&common.nats).await?;
        let subscriber = subscribe_registered(&client, &subscription, None).await?;
        report_periodically(stats.clone(), common);
        Ok::<_, BridgeError>((client, subscriber))
    })?;
    tracing::info!(channel = %config.file.display(), %subscription, %origin, "pubsub-in ready");
    std::thread::scope(|scope| {
        let (tx, mut rx) = mpsc::channel::<(Vec<u8>, Bytes)>(1024);
        let thread_stats = &stats;
        let (publisher, marker) = (&publisher, &marker);
        scope.spawn(move || {
            while let Some((topic, payload)) = rx.blocking_recv() {
                let marked = &topic[..topic.len().min(MARK_TOPIC)];
                let sent = marker
                    .publish(marked, &mark(&topic, &payload))
                    .and_then(|()| publisher.publish(&topic, &payload));
                match sent {
                    Ok(()) => thread_stats.bump(Counter::LocalSent),
                    Err(e) => {
                        tracing::warn!("local publish: {e}");
                        thread_stats.bump(Counter::Errors);
                    }
                }
            }
        });
        runtime.block_on(async {
            loop {
                let message = tokio::select! {
                    next = subscriber.next() => match next {
                        Some(m) => m,
                        None => break,
                    },
                    _ = shutdown.wait() => break,
                };
                stats.bump(Counter::Received);
                let from = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(ORIGIN_HEADER))
                    .map(|v| v.as_str());
                if from == Some(origin.as_str()) {
                    stats.bump(Counter::LoopsPrevented);
                    continue;
                }
                let Some(topic) = topic_of(&config.subject_prefix, &message.subject) else {
                    tracing::warn!("subject {} maps to no topic; ignored", message.subject);
                    stats.bump(Counter::Errors);
                    continue;
                };
                if !prefixes.iter().any(|p| topic.starts_with(p)) {
                    continue;
                }
                if tx.send((topic, message.payload)).await.is_err() {
                    break;
                }
            }
            drop(tx);
        });
        drop(client);
    });
    Ok(stats)
}
