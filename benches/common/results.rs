//! Raw results: everything a bench's report prints, also written as JSON to
//! `target/shmq-bench/<bench>-<UTC timestamp>.json`, for `bench-report` to plot and table.
//!
//! The report functions of [`super::report`] record what they print here. The file is written
//! again after every record, so a run cut short keeps what it measured and no bench has to call
//! anything at its end. The directory is `$SHMQ_BENCH_OUT` if set, otherwise `shmq-bench` in the
//! target directory this bench binary was built in (`<target>/release/deps/<bench>-<hash>`).
//!
//! # Format (`"format": "shmq-bench/1"`)
//! ```text
//! bench, started_utc, smoke, git_commit, git_dirty
//! machine:     cpu_model, cpu_family, cpu_model_number, nproc, kernel, load_average,
//!              parent_cpu, peer_cpu (null when unpinned), placement
//! round_trips: [{case, message_bytes, samples, median_ns, p99_ns, p999_ns, max_ns,
//!                brackets: [{baseline, before_ns, after_ns, ratio, unstable}]}]
//! throughput:  [{case, unit, rounds, rates_per_s: [per round], median_per_s,
//!                baseline, ratio (median of per-round ratios, null if no baseline ran)}]
//! targets:     [{figure, how, measured, comparison ("<=" or ">="), target, met}]
//! reported:    [{figure, how, measured, aim}]  (figures with no pass/fail target)
//! notes:       [text]
//! ```
//! Durations are integer nanoseconds; `median_ns` is the interpolated median of
//! [`super::stats::Percentiles`]. A ratio or a measurement that could not be taken is `null`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::stats::{smoke_mode, Bracketed};

/// Environment variable naming the directory results are written to.
pub const OUT_ENV: &str = "SHMQ_BENCH_OUT";

/// The results of this run, created at the first record.
static RUN: Mutex<Option<Run>> = Mutex::new(None);

struct Run {
    path: PathBuf,
    doc: Map<String, Value>,
}

impl Run {
    fn start() -> Self {
        let bench = bench_name();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let (date, time) = utc(now);
        let dir = out_dir();
        let stem = format!(
            "{bench}-{}T{}Z",
            date.replace('-', ""),
            time.replace(':', "")
        );
        // Two runs started in one second (smoke runs) get `-2`, `-3`, ...
        let path = (1..)
            .map(|n| match n {
                1 => dir.join(format!("{stem}.json")),
                n => dir.join(format!("{stem}-{n}.json")),
            })
            .find(|path| !path.exists())
            .expect("a free name");
        let (commit, dirty) = git_commit();
        let mut doc = Map::new();
        doc.insert("format".into(), json!("shmq-bench/1"));
        doc.insert("bench".into(), json!(bench));
        doc.insert("started_utc".into(), json!(format!("{date}T{time}Z")));
        doc.insert("smoke".into(), json!(smoke_mode()));
        doc.insert("git_commit".into(), json!(commit));
        doc.insert("git_dirty".into(), json!(dirty));
        for list in ["round_trips", "throughput", "targets", "reported", "notes"] {
            doc.insert(list.into(), json!([]));
        }
        match fs::create_dir_all(&dir) {
            Ok(()) => println!("raw results: {}", path.display()),
            Err(e) => eprintln!("shmq bench: cannot create {}: {e}", dir.display()),
        }
        Self { path, doc }
    }

    fn list(&mut self, name: &str) -> &mut Vec<Value> {
        match self.doc.get_mut(name) {
            Some(Value::Array(list)) => list,
            _ => unreachable!("`{name}` is created as a list in `Run::start`"),
        }
    }

    fn write(&self) {
        let text = serde_json::to_string_pretty(&self.doc).expect("JSON of plain values");
        if let Err(e) = fs::write(&self.path, text + "\n") {
            eprintln!("shmq bench: cannot write {}: {e}", self.path.display());
        }
    }
}

/// Apply `change` to this run's results and write the file again.
fn record(change: impl FnOnce(&mut Run)) {
    let mut run = RUN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let run = run.get_or_insert_with(Run::start);
    change(run);
    run.write();
}

/// The bench's name: this executable's, without cargo's `-<hash>` suffix.
fn bench_name() -> String {
    let exe = env::current_exe().unwrap_or_default();
    let stem = exe.file_stem().map_or_else(
        || "bench".to_owned(),
        |stem| stem.to_string_lossy().into_owned(),
    );
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
        _ => stem,
    }
}

/// `$SHMQ_BENCH_OUT`, or `<target>/shmq-bench` for a binary in `<target>/<profile>/deps/`.
fn out_dir() -> PathBuf {
    if let Some(dir) = env::var_os(OUT_ENV).filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    let exe = env::current_exe().unwrap_or_default();
    let deps = exe.parent().filter(|dir| dir.ends_with("deps"));
    match deps.and_then(Path::parent).and_then(Path::parent) {
        Some(target) => target.join("shmq-bench"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/shmq-bench"),
    }
}

/// The commit checked out in the source tree the bench was built from, and whether tracked
/// files differ from it; `(null, null)` outside a git checkout.
fn git_commit() -> (Value, Value) {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "HEAD"]);
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    (json!(commit), json!(dirty))
}

/// `since_epoch` as a UTC date `YYYY-MM-DD` and time `HH:MM:SS`.
fn utc(since_epoch: Duration) -> (String, String) {
    let secs = since_epoch.as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rest / 3600, rest / 60 % 60, rest % 60),
    )
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// A ratio or measurement, `null` if it could not be taken.
fn number(value: Option<f64>) -> Value {
    value
        .filter(|v| v.is_finite())
        .map_or(Value::Null, |v| json!(v))
}

/// The machine and where the processes run.
pub(super) fn record_machine(machine: Value) {
    record(|run| {
        run.doc.insert("machine".into(), machine);
    });
}

/// Round trips of `message_bytes`, `samples` each, every case bracketed by raw atomic medians.
pub(super) fn record_round_trips(
    rows: &[(String, Bracketed)],
    message_bytes: usize,
    samples: usize,
) {
    record(|run| {
        for (case, b) in rows {
            let p = &b.case;
            run.list("round_trips").push(json!({
                "case": case,
                "message_bytes": message_bytes,
                "samples": samples,
                "median_ns": ns(p.median),
                "p99_ns": ns(p.p99),
                "p999_ns": ns(p.p999),
                "max_ns": ns(p.max),
                "brackets": [bracket("raw atomic", b)],
            }));
        }
    });
}

fn bracket(baseline: &str, b: &Bracketed) -> Value {
    json!({
        "baseline": baseline,
        "before_ns": ns(b.raw_before),
        "after_ns": ns(b.raw_after),
        "ratio": number(Some(b.ratio())),
        "unstable": b.unstable(),
    })
}

/// A second bracket of the round-trip case `case` (recorded already), by another baseline.
pub fn record_bracket(case: &str, baseline: &str, b: &Bracketed) {
    record(|run| {
        let row = run
            .list("round_trips")
            .iter_mut()
            .rev()
            .find(|row| row["case"] == case);
        if let Some(Value::Array(brackets)) = row.map(|row| &mut row["brackets"]) {
            brackets.push(bracket(baseline, b));
        }
    });
}

/// One throughput case: its rate in each round, and its ratio to `baseline`.
pub(super) fn record_throughput(
    case: &str,
    unit: &str,
    rates: &[f64],
    median: f64,
    baseline: &str,
    ratio: Option<f64>,
) {
    record(|run| {
        run.list("throughput").push(json!({
            "case": case,
            "unit": unit,
            "rounds": rates.len(),
            "rates_per_s": rates,
            "median_per_s": number(Some(median)),
            "baseline": baseline,
            "ratio": number(ratio),
        }));
    });
}

/// A row of the targets table.
pub(super) fn record_target(
    figure: &str,
    how: &str,
    measured: Option<f64>,
    ceiling: bool,
    target: f64,
    met: Option<bool>,
) {
    record(|run| {
        run.list("targets").push(json!({
            "figure": figure,
            "how": how,
            "measured": number(measured),
            "comparison": if ceiling { "<=" } else { ">=" },
            "target": target,
            "met": met,
        }));
    });
}

/// A figure reported without a pass/fail target (`aim`: what it should come close to, if any).
pub(super) fn record_reported(figure: &str, how: &str, measured: Option<f64>, aim: Option<&str>) {
    record(|run| {
        run.list("reported").push(json!({
            "figure": figure,
            "how": how,
            "measured": number(measured),
            "aim": aim,
        }));
    });
}

/// A line of text the report printed that the tables do not carry.
pub fn record_note(note: &str) {
    record(|run| run.list("notes").push(json!(note)));
}
