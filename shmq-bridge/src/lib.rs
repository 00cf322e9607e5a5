//! Carries shmq queues, channels and services across hosts over NATS.
//!
//! shmq connects processes on one host. When some of a pipeline's workers, a channel's
//! subscribers or a service's clients live on another host, a bridge on each host moves the
//! messages over an existing NATS deployment, and the programs keep using shmq unchanged.
//!
//! | command | local side | NATS side | delivery |
//! |---|---|---|---|
//! | [`pipeline-out`](pipeline::run_out) | consumer of a pipeline | publishes to a JetStream work-queue stream, message id for deduplication | at-least-once; the local message is acknowledged only after JetStream stored it; a bridge killed in between causes no duplicate ([`journal`]) |
//! | [`pipeline-in`](pipeline::run_in) | producer into a pipeline | durable pull consumer of the stream | at-least-once; JetStream is acknowledged only after the local send committed |
//! | [`pubsub-out`](pubsub::run_out) | subscriber of a channel | core publish, topic → subject ([`subject`]) | at-most-once, like the channel itself |
//! | [`pubsub-in`](pubsub::run_in) | publisher on a channel | wildcard subscription, subject → topic | at-most-once; no echo, no loops between bridges |
//! | [`service-out`](service::run_out) | clients of a service | queue-group responder on a subject | each remote request to one local server; local errors and timeouts answered as "no reply" |
//! | [`service-in`](service::run_in) | server of a service | requests to a subject | each local request forwarded; a remote timeout or absent responder ends the local wait with `RecvError::NoReply` |
//!
//! Every bridge runs its blocking shmq calls on dedicated threads, which hand messages to a
//! single-threaded tokio runtime over bounded channels; reconnects to NATS are automatic
//! (unlimited, with a short back-off); SIGINT and SIGTERM stop it cleanly (no new messages are
//! taken; those taken are finished); progress goes to the log (`tracing`, filter with
//! `SHMQ_BRIDGE_LOG`, default `info`) and, with `--stats`, counter lines to standard output
//! ([`stats`]).

pub mod journal;
pub mod pipeline;
pub mod pubsub;
pub mod service;
pub mod stats;
pub mod subject;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often blocking local receives wake up to look at the shutdown flag.
pub const POLL: Duration = Duration::from_millis(100);

/// How long a stopping bridge keeps trying to finish the messages it has taken before it
/// exits without them (they stay in the local queue, delivered again to the next receiver).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Header carrying the origin of a message published by `pubsub-out` (loop prevention).
pub const ORIGIN_HEADER: &str = "Shmq-Origin";

/// Header of a `service-out` answer that is not a reply: `timeout`, `no-reply` or `error`.
pub const STATUS_HEADER: &str = "Shmq-Status";

/// Settings every command shares.
#[derive(Debug, Clone)]
pub struct Common {
    /// NATS server URL(s), comma-separated.
    pub nats: String,
    /// Print `--stats` lines to standard output.
    pub stats: bool,
    /// Interval of stats lines and progress logs.
    pub stats_interval: Duration,
}

/// Why a bridge stopped with an error.
#[derive(Debug)]
#[non_exhaustive]
pub enum BridgeError {
    /// Opening or attaching to the local queue failed.
    Queue(shmq::Error),
    /// Talking to NATS failed in a way retrying does not mend (bad URL, refused stream).
    Nats(String),
    /// The out-bridge's journal could not be used.
    Journal(PathBuf, std::io::Error),
    /// The command line asked for something impossible.
    Config(String),
}

impl fmt::Display for BridgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BridgeError::Queue(e) => write!(f, "{e}"),
            BridgeError::Nats(e) => write!(f, "NATS: {e}"),
            BridgeError::Journal(path, e) => write!(f, "journal {}: {e}", path.display()),
            BridgeError::Config(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BridgeError {}

impl From<shmq::Error> for BridgeError {
    fn from(e: shmq::Error) -> Self {
        BridgeError::Queue(e)
    }
}

/// A NATS error as a [`BridgeError`], with what was being done.
pub(crate) fn nats_err(what: &str, e: impl fmt::Display) -> BridgeError {
    BridgeError::Nats(format!("{what}: {e}"))
}

/// The stop request shared by a bridge's async side and its threads.
#[derive(Debug, Clone)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// A stop request set by the first SIGINT or SIGTERM. Call inside the runtime.
    ///
    /// # Errors
    /// The signal handlers cannot be installed.
    pub fn on_signals() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let (tx, rx) = watch::channel(false);
        let flag = Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            tracing::info!("{name}: stopping (finishing the messages already taken)");
            set.store(true, Ordering::SeqCst);
            let _ = tx.send(true);
        });
        Ok(Shutdown { flag, rx })
    }

    /// Whether a stop was requested (for the blocking threads).
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Waits until a stop is requested.
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|&stop| stop).await;
    }

    /// Asks the bridge's threads to stop (used when the async side fails).
    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }
}

/// Connects to NATS: retrying the first connection too, reconnecting without limit, and
/// logging connection events.
///
/// # Errors
/// The URL is not valid.
pub async fn connect(url: &str) -> Result<async_nats::Client, BridgeError> {
    async_nats::ConnectOptions::new()
        .name("shmq-bridge")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((50 * attempts as u64).min(1000))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS disconnected; reconnecting")
                }
                other => tracing::warn!("NATS: {other}"),
            }
        })
        .connect(url)
        .await
        .map_err(|e| nats_err(&format!("connect to {url}"), e))
}

/// Subscribes to `subject` (in `queue_group`, if given) and waits until the server has the
/// subscription (a round trip), so that nothing published after this returns is missed.
///
/// # Errors
/// The server refuses the subscription, or the connection fails meanwhile.
pub async fn subscribe_registered(
    client: &async_nats::Client,
    subject: &str,
    queue_group: Option<&str>,
) -> Result<async_nats::Subscriber, BridgeError> {
    let subscriber = match queue_group {
        Some(group) => {
            client
                .queue_subscribe(subject.to_string(), group.to_string())
                .await
        }
        None => client.subscribe(subject.to_string()).await,
    }
    .map_err(|e| nats_err(&format!("subscribe to {subject}"), e))?;
    client
        .flush()
        .await
        .map_err(|e| nats_err(&format!("register the subscription to {subject}"), e))?;
    Ok(subscriber)
}

/// Logs the counters every interval, and prints them with `--stats`.
pub(crate) fn report_periodically(stats: Arc<stats::Stats>, common: &Common) {
    let (print, interval) = (common.stats, common.stats_interval);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            report(&stats, print);
        }
    });
}

/// Logs the counters once, and prints them if `print`.
pub(crate) fn report(stats: &stats::Stats, print: bool) {
    let line = stats.line();
    tracing::info!("{line}");
    if print {
        println!("{line}");
    }
}

/// Runs `command` on a fresh single-threaded runtime with signal handling, printing the final
/// stats line at exit.
///
/// # Errors
/// Whatever the command returns.
pub fn run<F>(common: &Common, command: F) -> Result<(), BridgeError>
where
    F: FnOnce(&tokio::runtime::Runtime, Shutdown) -> Result<Arc<stats::Stats>, BridgeError>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BridgeError::Config(format!("cannot start the async runtime: {e}")))?;
    let shutdown = runtime
        .block_on(async { Shutdown::on_signals() })
        .map_err(|e| BridgeError::Config(format!("cannot install signal handlers: {e}")))?;
    let stats = command(&runtime, shutdown)?;
    report(&stats, common.stats);
    Ok(())
}

/// The canonical path of a queue file, for messages and origin ids.
pub(crate) fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Exits the process at once, without running destructors: local messages the bridge holds
/// stay held by a dead participant, so shmq delivers them again (flagged `redelivered()`)
/// instead of the bridge acknowledging messages it could not pass on.
pub(crate) fn abandon(why: &str, held: usize) -> ! {
    tracing::error!(
        "{why}; exiting with {held} local messages unacknowledged (they will be delivered again)"
    );
    std::process::exit(2)
}

#[cfg(feature = "test-hooks")]
pub(crate) mod testhook {
    //! Test-only: `SHMQ_BRIDGE_STALL_AFTER_ACKS=N` freezes `pipeline-out` right after the N-th
    //! JetStream acknowledgement, before the local one, and says so on stderr, so that a test
    //! can SIGKILL it in exactly that window.
    use std::sync::OnceLock;

    pub(crate) fn after_stream_ack(acked: u64) {
        static AT: OnceLock<Option<u64>> = OnceLock::new();
        let at = AT.get_or_init(|| {
            std::env::var("SHMQ_BRIDGE_STALL_AFTER_ACKS")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if *at == Some(acked) {
            eprintln!("shmq-bridge test hook: stalled after {acked} stream acks");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }
}
