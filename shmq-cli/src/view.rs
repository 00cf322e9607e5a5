//! A queue's report as the commands show it: JSON (serde mirrors of `shmq::inspect`'s types,
//! which the library keeps free of serde) and text.

use serde::Serialize;
use shmq::inspect::{Counts, Kind, Report};
use shmq::Overflow;
use std::fmt::Write;

/// `stat --json`, and one element of `ls --json`.
#[derive(Serialize, Debug, Clone)]
pub struct ReportJson {
    pub path: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overflow: Option<&'static str>,
    pub file_size: u64,
    pub capacity: u64,
    pub max_message: u64,
    pub max_participants: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_topic: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_entries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_capacity: Option<u64>,
    pub depth: u64,
    pub tail: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<u64>,
    pub slots: SlotsJson,
    pub alive: usize,
    pub dead: usize,
    pub totals: CountsJson,
    pub recovery: RecoveryJson,
    pub participants: Vec<ParticipantJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subscribers: Vec<SubscriberJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ClientJson>,
    /// Per second since the previous report (`stat --watch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rates: Option<RatesJson>,
}

#[derive(Serialize, Debug, Clone)]
pub struct SlotsJson {
    pub writing: u64,
    pub ready: u64,
    pub reading: u64,
    pub skipped: u64,
    pub redeliver: u64,
}

#[derive(Serialize, Debug, Clone, Copy)]
pub struct CountsJson {
    pub sent: u64,
    pub received: u64,
    pub full: u64,
    pub empty: u64,
    pub parked: u64,
    pub lagged: u64,
    pub abandoned: u64,
    pub bad_checksum: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct RecoveryJson {
    pub sweeps: u64,
    pub reaped: u64,
    pub skipped: u64,
    pub redelivered: u64,
    pub released: u64,
    pub refused: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct ParticipantJson {
    pub index: u32,
    pub role: &'static str,
    pub pid: u32,
    pub alive: bool,
    pub holds_writing: u64,
    pub holds_reading: u64,
    pub holds: u64,
    pub counts: CountsJson,
}

#[derive(Serialize, Debug, Clone)]
pub struct SubscriberJson {
    pub index: u32,
    pub owner: u16,
    pub position: u64,
    pub lag: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct ClientJson {
    pub index: u32,
    pub owner: u16,
    pub generation: u64,
    pub outstanding: u64,
    pub replies_waiting: u64,
}

#[derive(Serialize, Debug, Clone, Copy, Default)]
pub struct RatesJson {
    pub sent_per_sec: f64,
    pub received_per_sec: f64,
}

impl From<Counts> for CountsJson {
    fn from(c: Counts) -> Self {
        CountsJson {
            sent: c.sent,
            received: c.received,
            full: c.full,
            empty: c.empty,
            parked: c.parked,
            lagged: c.lagged,
            abandoned: c.abandoned,
            bad_checksum: c.bad_checksum,
        }
    }
}

pub fn overflow_name(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::PubSub(Overflow::Block) => Some("block"),
        Kind::PubSub(_) => Some("drop-oldest"),
        _ => None,
    }
}

impl ReportJson {
    pub fn of(r: &Report) -> Self {
        let g = &r.geometry;
        let pubsub = matches!(r.kind, Kind::PubSub(_));
        let service = r.kind == Kind::Service;
        ReportJson {
            path: r.path.display().to_string(),
            kind: r.kind.name(),
            overflow: overflow_name(r.kind),
            file_size: r.file_len,
            capacity: g.capacity,
            max_message: g.max_message,
            max_participants: g.max_participants,
            max_topic: pubsub.then_some(g.max_topic),
            table_entries: (pubsub || service).then_some(g.table_entries),
            reply_capacity: service.then_some(g.reply_capacity),
            depth: r.ring.depth,
            tail: r.ring.tail,
            head: r.ring.head,
            slots: SlotsJson {
                writing: r.ring.slots.writing,
                ready: r.ring.slots.ready,
                reading: r.ring.slots.reading,
                skipped: r.ring.slots.skipped,
                redeliver: r.ring.slots.redeliver,
            },
            alive: r.alive(),
            dead: r.dead(),
            totals: r.totals.into(),
            recovery: RecoveryJson {
                sweeps: r.sweeps,
                reaped: r.recovery.reaped,
                skipped: r.recovery.skipped,
                redelivered: r.recovery.redelivered,
                released: r.recovery.released,
                refused: r.recovery.refused,
            },
            participants: r
                .participants
                .iter()
                .map(|p| ParticipantJson {
                    index: p.index,
                    role: p.role.name(),
                    pid: p.pid,
                    alive: p.alive,
                    holds_writing: p.holds.writing,
                    holds_reading: p.holds.reading,
                    holds: p.holds.total(),
                    counts: p.counts.into(),
                })
                .collect(),
            subscribers: r
                .subscribers
                .iter()
                .map(|s| SubscriberJson {
                    index: s.index,
                    owner: s.owner,
                    position: s.position,
                    lag: s.lag,
                })
                .collect(),
            clients: r
                .clients
                .iter()
                .map(|c| ClientJson {
                    index: c.index,
                    owner: c.owner,
                    generation: c.generation,
                    outstanding: c.outstanding,
                    replies_waiting: c.replies_waiting,
                })
                .collect(),
            rates: None,
        }
    }
}

/// Messages per second between two reports of the same queue taken `secs` apart.
pub fn rates(before: &Report, after: &Report, secs: f64) -> RatesJson {
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs.max(1e-9);
    RatesJson {
        sent_per_sec: per(before.totals.sent, after.totals.sent),
        received_per_sec: per(before.totals.received, after.totals.received),
    }
}

/// A byte count for humans: `4.0 KiB`, `1.5 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn holds_text(writing: u64, reading: u64) -> String {
    match (writing, reading) {
        (0, 0) => "-".into(),
        (w, 0) => format!("{w} writing"),
        (0, r) => format!("{r} unacked"),
        (w, r) => format!("{w} writing, {r} unacked"),
    }
}

/// The text of `shmq stat`.
pub fn text(r: &Report, rates: Option<RatesJson>) -> String {
    let g = &r.geometry;
    let mut s = String::new();
    let kind = match overflow_name(r.kind) {
        Some(mode) => format!("{} ({mode})", r.kind.name()),
        None => r.kind.name().to_string(),
    };
    let _ = writeln!(
        s,
        "{}: {kind}, format version {}",
        r.path.display(),
        shmq::layout::FORMAT_VERSION
    );
    let _ = write!(
        s,
        "  geometry: {} slots x {} B max message, {} participant entries",
        g.capacity, g.max_message, g.max_participants
    );
    match r.kind {
        Kind::PubSub(_) => {
            let _ = write!(
                s,
                ", {} subscriber entries, topics up to {} B",
                g.table_entries, g.max_topic
            );
        }
        Kind::Service => {
            let _ = write!(
                s,
                ", {} client entries x {} reply slots",
                g.table_entries, g.reply_capacity
            );
        }
        Kind::Pipeline => {
            if g.flags & shmq::layout::PIPELINE_EXCLUSIVE_ENDS != 0 {
                let _ = write!(s, ", exclusive ends");
            }
            if g.flags & shmq::layout::PIPELINE_CHECKSUM != 0 {
                let _ = write!(s, ", payload checksums");
            }
        }
    }
    let _ = writeln!(s, ", file {}", size(r.file_len));
    let sl = &r.ring.slots;
    match r.ring.head {
        Some(head) => {
            let _ = writeln!(
                s,
                "  depth: {} (tail {}, head {}); slots: {} ready, {} being written, {} unacked, {} to redeliver, {} skipped",
                r.ring.depth, r.ring.tail, head, sl.ready, sl.writing, sl.reading, sl.redeliver, sl.skipped
            );
        }
        None => {
            let _ = writeln!(
                s,
                "  published: {}; retained: {}; slots: {} being written, {} skipped",
                r.ring.tail, r.ring.depth, sl.writing, sl.skipped
            );
        }
    }
    let t = &r.totals;
    let _ = writeln!(
        s,
        "  counters: {} sent, {} received, {} found full, {} found empty, {} parked, {} lagged, {} abandoned",
        t.sent, t.received, t.full, t.empty, t.parked, t.lagged, t.abandoned
    );
    if r.kind == Kind::Pipeline && g.flags & shmq::layout::PIPELINE_CHECKSUM != 0 {
        let _ = writeln!(
            s,
            "  checksums: {} messages failed theirs and were skipped",
            t.bad_checksum
        );
    }
    if let Some(rates) = rates {
        let _ = writeln!(
            s,
            "  rates: {:.0} sent/s, {:.0} received/s",
            rates.sent_per_sec, rates.received_per_sec
        );
    }
    let rc = &r.recovery;
    let _ = writeln!(
        s,
        "  recovery: {} passes, {} reaped, {} skipped, {} redelivered, {} released; {} refused",
        r.sweeps, rc.reaped, rc.skipped, rc.redelivered, rc.released, rc.refused
    );
    let _ = writeln!(s, "  participants: {} alive, {} dead", r.alive(), r.dead());
    if !r.participants.is_empty() {
        let _ = writeln!(
            s,
            "    {:>5}  {:<10}  {:>8}  {:<5}  {:<20}  {:>10}  {:>10}  {:>6}  {:>6}",
            "entry", "role", "pid", "state", "holds", "sent", "received", "full", "parked"
        );
        for p in &r.participants {
            let _ = writeln!(
                s,
                "    {:>5}  {:<10}  {:>8}  {:<5}  {:<20}  {:>10}  {:>10}  {:>6}  {:>6}",
                p.index,
                p.role.name(),
                p.pid,
                if p.alive { "alive" } else { "DEAD" },
                holds_text(p.holds.writing, p.holds.reading),
                p.counts.sent,
                p.counts.received,
                p.counts.full,
                p.counts.parked
            );
        }
    }
    if !r.subscribers.is_empty() {
        let _ = writeln!(s, "  subscribers:");
        let _ = writeln!(
            s,
            "    {:>5}  {:>5}  {:>12}  {:>10}",
            "entry", "owner", "position", "lag"
        );
        for sub in &r.subscribers {
            let _ = writeln!(
                s,
                "    {:>5}  {:>5}  {:>12}  {:>10}",
                sub.index,
                sub.owner - 1,
                sub.position,
                sub.lag
            );
        }
    }
    if !r.clients.is_empty() {
        let _ = writeln!(s, "  clients:");
        let _ = writeln!(
            s,
            "    {:>5}  {:>5}  {:>10}  {:>11}  {:>15}",
            "entry", "owner", "generation", "outstanding", "replies waiting"
        );
        for c in &r.clients {
            let _ = writeln!(
                s,
                "    {:>5}  {:>5}  {:>10}  {:>11}  {:>15}",
                c.index,
                c.owner - 1,
                c.generation,
                c.outstanding,
                c.replies_waiting
            );
        }
    }
    s
}
