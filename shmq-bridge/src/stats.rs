//! Counters of a running bridge: logged as progress, and printed by `--stats`.
//!
//! Each bridge command owns one [`Stats`] with the counters that mean something for it (see
//! [`Counter`]). `--stats` prints one line to standard output every interval and a last one at
//! exit, `stats <command> name=value name=value …`, in a fixed order, so scripts (and the
//! tests) can read them; the same figures go to the log at `info` level.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a bridge counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Messages (or requests) taken from the local queue, channel or service.
    LocalReceived,
    /// Local messages among them flagged `redelivered()` (their first receiver died).
    LocalRedelivered,
    /// Messages acknowledged locally (after the remote side confirmed them).
    LocalAcked,
    /// Messages sent into the local queue, channel or service.
    LocalSent,
    /// Publishes to NATS.
    Published,
    /// Publishes JetStream acknowledged.
    StreamAcked,
    /// Publishes JetStream recognised as duplicates of an earlier one (same message id).
    Duplicates,
    /// Publishes repeated after a failed or timed-out acknowledgement.
    Republished,
    /// Messages received from NATS.
    Received,
    /// Messages JetStream delivered again (their earlier delivery was not acknowledged).
    StreamRedelivered,
    /// Messages not forwarded because they came from this side (loop prevention).
    LoopsPrevented,
    /// Messages a lagging local subscriber missed.
    Lagged,
    /// Requests answered.
    Replied,
    /// Requests that got no answer (timeout, no responder, or a local server dropped them).
    NoReply,
    /// Errors (logged).
    Errors,
}

const ALL: [Counter; 15] = [
    Counter::LocalReceived,
    Counter::LocalRedelivered,
    Counter::LocalAcked,
    Counter::LocalSent,
    Counter::Published,
    Counter::StreamAcked,
    Counter::Duplicates,
    Counter::Republished,
    Counter::Received,
    Counter::StreamRedelivered,
    Counter::LoopsPrevented,
    Counter::Lagged,
    Counter::Replied,
    Counter::NoReply,
    Counter::Errors,
];

impl Counter {
    /// The counter's name in `--stats` lines.
    pub fn name(self) -> &'static str {
        match self {
            Counter::LocalReceived => "local_received",
            Counter::LocalRedelivered => "local_redelivered",
            Counter::LocalAcked => "local_acked",
            Counter::LocalSent => "local_sent",
            Counter::Published => "published",
            Counter::StreamAcked => "stream_acked",
            Counter::Duplicates => "duplicates",
            Counter::Republished => "republished",
            Counter::Received => "received",
            Counter::StreamRedelivered => "stream_redelivered",
            Counter::LoopsPrevented => "loops_prevented",
            Counter::Lagged => "lagged",
            Counter::Replied => "replied",
            Counter::NoReply => "no_reply",
            Counter::Errors => "errors",
        }
    }
}

/// The counters of one bridge; shared by its threads.
#[derive(Debug)]
pub struct Stats {
    command: &'static str,
    shown: &'static [Counter],
    values: [AtomicU64; ALL.len()],
}

impl Stats {
    /// Counters for `command`, of which `shown` appear in its lines.
    pub fn new(command: &'static str, shown: &'static [Counter]) -> Stats {
        Stats {
            command,
            shown,
            values: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn slot(&self, c: Counter) -> &AtomicU64 {
        &self.values[ALL
            .iter()
            .position(|&x| x == c)
            .expect("every counter is listed")]
    }

    /// Adds `n` to `counter`.
    pub fn add(&self, counter: Counter, n: u64) {
        self.slot(counter).fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to `counter`.
    pub fn bump(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// The current value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.slot(counter).load(Ordering::Relaxed)
    }

    /// The `--stats` line: `stats <command> name=value …`.
    pub fn line(&self) -> String {
        let mut out = format!("stats {}", self.command);
        for &c in self.shown {
            let _ = write!(out, " {}={}", c.name(), self.get(c));
        }
        out
    }
}
