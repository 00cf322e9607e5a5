//! The report every bench prints after criterion (only under `cargo bench`): the machine, a
//! percentile table of 64-byte round trips (each case bracketed by raw atomic medians),
//! interleaved throughput rounds, and the targets table saying met or not met. Everything
//! printed is also recorded in the run's raw results ([`super::results`]).
//!
//! Ratios are what the targets judge, never absolute figures: the machine is a VM whose two
//! vCPUs move between "near" and "far" placements, which changes every figure alike. A round
//! trip's ratio is its median over the mean of raw atomic medians taken just before and after it
//! ([`bracket_with_raw`]); a throughput ratio is the median of per-round ratios of interleaved
//! runs ([`Rates::ratio`]).

use std::env;
use std::fs;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use serde_json::json;

use super::baselines::bracket_with_raw;
use super::baselines::{OneWayCase, RoundTripCase, ShmPingPong};
use super::peers::bench_cpus;
use super::results;
use super::stats::{median, ratio, sample_count, smoke_mode, timer_overhead};
use super::stats::{Bracketed, Percentiles};

// ---------------------------------------------------------------------------------------------
// Run mode and criterion
// ---------------------------------------------------------------------------------------------

/// Whether criterion will measure (`cargo bench`), as opposed to `cargo test --benches`, `--test`,
/// `--list` or `--profile-time`: run the percentile tables only then.
pub fn benchmark_mode() -> bool {
    let args: Vec<String> = env::args().collect();
    let has = |flag: &str| {
        args.iter()
            .any(|arg| arg == flag || arg.starts_with(&format!("{flag}=")))
    };
    has("--bench") && !has("--test") && !has("--list") && !has("--profile-time")
}

/// Whether criterion's groups run: not in a smoke run of `cargo bench` (the report exercises
/// every case then), always otherwise (`cargo test --benches` runs each once).
fn criterion_runs() -> bool {
    !(smoke_mode() && benchmark_mode())
}

/// Criterion group `name`: each case's round trips of each size.
pub fn bench_round_trips(
    c: &mut Criterion,
    name: &str,
    cases: Vec<RoundTripCase>,
    sizes: &[usize],
) {
    if !criterion_runs() {
        return;
    }
    let mut group = c.benchmark_group(name);
    for (case_name, spawn) in cases {
        let mut case = spawn(); // One peer for every size.
        for &size in sizes {
            group.bench_with_input(BenchmarkId::new(case_name, size), &size, |b, &size| {
                b.iter_custom(|iters| case.run(size, iters));
            });
        }
    }
    group.finish();
}

/// Criterion group `name`: each one-way case, in elements (messages, requests) per second.
pub fn bench_one_way(c: &mut Criterion, name: &str, cases: Vec<OneWayCase>) {
    if !criterion_runs() {
        return;
    }
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    for (case_name, spawn) in cases {
        let mut case = spawn();
        group.bench_function(case_name, |b| b.iter_custom(|iters| case.run(iters)));
    }
    group.finish();
}

/// Criterion as every shmq bench configures it: 20 samples over about 2 s.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args()
}

// ---------------------------------------------------------------------------------------------
// Machine
// ---------------------------------------------------------------------------------------------

/// Print the CPU, kernel, load and where the processes run (`placement`), and record them.
pub fn print_machine(placement: &str) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim() == name)
            .map_or("?", |(_, value)| value.trim())
    };
    // Not `available_parallelism`: this thread is pinned to one CPU already.
    let nproc = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let cpus = match bench_cpus() {
        Some((parent, peer)) => format!("parent CPU {parent}, peer CPU {peer}"),
        None => "unpinned".to_owned(),
    };
    if smoke_mode() {
        println!(
            "SMOKE RUN ({}): tiny counts, the figures mean nothing",
            super::SMOKE_ENV
        );
    }
    println!(
        "machine: {} (family {}, model {}), nproc {nproc}, Linux {}; {cpus}; load average {}\n\
         placement: {placement}",
        field("model name"),
        field("cpu family"),
        field("model"),
        kernel.trim(),
        load.join(" ")
    );
    results::record_machine(json!({
        "cpu_model": field("model name"),
        "cpu_family": field("cpu family"),
        "cpu_model_number": field("model"),
        "nproc": nproc,
        "kernel": kernel.trim(),
        "load_average": load,
        "parent_cpu": bench_cpus().map(|(parent, _)| parent),
        "peer_cpu": bench_cpus().map(|(_, peer)| peer),
        "placement": placement,
    }));
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

/// `Duration` to three significant figures in ns, µs or ms.
pub fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    match ns {
        _ if ns < 1e3 => format!("{ns:.0} ns"),
        _ if ns < 1e4 => format!("{:.2} µs", ns / 1e3),
        _ if ns < 1e6 => format!("{:.1} µs", ns / 1e3),
        _ => format!("{:.2} ms", ns / 1e6),
    }
}

fn percentile_cells(p: &Percentiles) -> String {
    let cells = [p.median, p.p99, p.p999, p.max].map(fmt_duration);
    cells.join(" | ")
}

/// Print a markdown table of `rows` with a column of each median over the median of the row named
/// `baseline` ("n/a" if there is none).
pub fn print_table(rows: &[(String, Percentiles)], baseline: &str) {
    let base = rows
        .iter()
        .find(|(name, _)| name == baseline)
        .map(|(_, p)| p.median);
    println!("| case | median | p99 | p99.9 | max | median / {baseline} |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, p) in rows {
        let r = base.map_or_else(
            || "n/a".to_owned(),
            |b| format!("{:.2}", ratio(p.median, b)),
        );
        println!("| {name} | {} | {r} |", percentile_cells(p));
    }
}

/// Print a markdown table of bracketed cases, each median over its own raw medians.
pub fn print_bracketed(rows: &[(String, Bracketed)]) {
    println!("| case | median | p99 | p99.9 | max | raw before | raw after | median / raw |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, b) in rows {
        let mark = if b.unstable() { " †" } else { "" };
        let (before, after) = (fmt_duration(b.raw_before), fmt_duration(b.raw_after));
        println!(
            "| {name} | {} | {before} | {after} | {:.2}{mark} |",
            percentile_cells(&b.case),
            b.ratio()
        );
    }
    if rows.iter().any(|(_, b)| b.unstable()) {
        println!(
            "\n† raw before and after differ by more than 25%: the cores moved during the case."
        );
    }
}

/// 64-byte round trips of every case, each bracketed by raw atomic medians; prints both tables,
/// records them, and returns the rows (for targets).
pub fn round_trip_report(
    cases: Vec<RoundTripCase>,
    round_trips: usize,
) -> Vec<(String, Bracketed)> {
    round_trip_report_with(cases, round_trips, |_, measure| measure())
}

/// [`round_trip_report`], where `inner(name, measure)` takes each case's percentiles by calling
/// `measure` (inside the raw atomic bracket): e.g. inside a second bracket by another baseline.
pub fn round_trip_report_with(
    cases: Vec<RoundTripCase>,
    round_trips: usize,
    inner: impl FnMut(&str, &mut dyn FnMut() -> Percentiles) -> Percentiles,
) -> Vec<(String, Bracketed)> {
    round_trip_report_sized(cases, 64, round_trips, inner)
}

/// [`round_trip_report_with`] for messages of `msg_size` bytes, bracketed by raw atomic medians
/// of the same size.
pub fn round_trip_report_sized(
    cases: Vec<RoundTripCase>,
    msg_size: usize,
    round_trips: usize,
    mut inner: impl FnMut(&str, &mut dyn FnMut() -> Percentiles) -> Percentiles,
) -> Vec<(String, Bracketed)> {
    let round_trips = sample_count(round_trips);
    let mut raw = ShmPingPong::raw_atomic();
    let mut rows = Vec::new();
    for (name, spawn) in cases {
        let mut case = spawn();
        let bracketed = bracket_with_raw(&mut raw, msg_size, || {
            inner(name, &mut || case.percentiles(msg_size, round_trips))
        });
        drop(case); // Its peers stop before the next case starts.
        rows.push((name.to_owned(), bracketed));
    }
    let plain: Vec<(String, Percentiles)> = rows
        .iter()
        .map(|(name, b)| (name.clone(), b.case))
        .collect();
    println!("\n## {msg_size}-byte round trips, {round_trips} each\n");
    print_table(&plain, RAW_ATOMIC);
    println!("\nThe same, each beside raw atomic medians taken just before and after it:\n");
    print_bracketed(&rows);
    let overhead = fmt_duration(timer_overhead());
    println!("\nEach sample includes the clock read: {overhead} (median, empty closure).");
    results::record_round_trips(&rows, msg_size, round_trips);
    rows
}

/// The name of the raw atomic ping-pong case ([`super::raw_atomic_case`]).
const RAW_ATOMIC: &str = "raw atomic";

/// The bracketed ratio of the row named `name`.
pub fn bracketed_ratio(rows: &[(String, Bracketed)], name: &str) -> Option<f64> {
    rows.iter().find(|(n, _)| n == name).map(|(_, b)| b.ratio())
}

/// The p99.9 of the row named `name` over the raw atomic row's p99.9, both from this report.
pub fn p999_ratio(rows: &[(String, Bracketed)], name: &str) -> Option<f64> {
    let p999 = |name: &str| {
        rows.iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.case.p999)
    };
    Some(ratio(p999(name)?, p999(RAW_ATOMIC)?))
}

// ---------------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------------

/// Rates (elements per second) of each one-way case, round by round.
pub struct Rates(pub Vec<(&'static str, Vec<f64>)>);

impl Rates {
    /// The median over rounds of `ours`'s rate over `theirs`'s in the same round.
    pub fn ratio(&self, ours: &str, theirs: &str) -> Option<f64> {
        let rates = |name: &str| self.0.iter().find(|(n, _)| *n == name).map(|(_, r)| r);
        let (ours, theirs) = (rates(ours)?, rates(theirs)?);
        let ratios: Vec<f64> = ours.iter().zip(theirs).map(|(a, b)| a / b).collect();
        (!ratios.is_empty()).then(|| median(ratios))
    }
}

/// Run every case `rounds` times, interleaved (a busy neighbour, or the host moving our virtual
/// CPUs, then hurts neighbouring measurements alike; ratios are taken round by round), each run
/// sized to take about `run_time` after a calibration run; print a table of rates (`unit` per
/// second) against the case named `baseline`, and each case's note; record them.
pub fn throughput_report(
    cases: Vec<OneWayCase>,
    rounds: usize,
    run_time: Duration,
    unit: &str,
    baseline: &str,
) -> Rates {
    let (rounds, run_time, calibration, least) = if smoke_mode() {
        (rounds.min(3), Duration::from_millis(2), 500, 500.0)
    } else {
        (rounds, run_time, 10_000, 1e4)
    };
    let mut cases: Vec<_> = cases
        .into_iter()
        .map(|(name, spawn)| {
            let mut case = spawn();
            let rate = calibration as f64 / case.run(calibration).as_secs_f64();
            let n = (rate * run_time.as_secs_f64()).clamp(least, 1e7) as u64;
            (name, case, n, Vec::new())
        })
        .collect();
    for _ in 0..rounds {
        for (_, case, n, rates) in &mut cases {
            rates.push(*n as f64 / case.run(*n).as_secs_f64());
        }
    }
    let notes: Vec<(&str, String)> = cases
        .iter()
        .filter_map(|(name, case, ..)| case.note().map(|note| (*name, note)))
        .collect();
    let rates = Rates(
        cases
            .into_iter()
            .map(|(name, _, _, rates)| (name, rates))
            .collect(), // The peers are gone.
    );
    println!("\n## Throughput, 64-byte messages, {rounds} interleaved rounds\n");
    println!(
        "| case | median M {unit}/s | best | worst | ns each (median) | / {baseline} (median of per-round ratios) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, r) in &rates.0 {
        let med = median(r.clone());
        let best = r.iter().copied().fold(f64::MIN, f64::max);
        let worst = r.iter().copied().fold(f64::MAX, f64::min);
        let vs_baseline = rates.ratio(name, baseline);
        let vs = vs_baseline.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"));
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.1} | {vs} |",
            med / 1e6,
            best / 1e6,
            worst / 1e6,
            1e9 / med
        );
        results::record_throughput(name, unit, r, med, baseline, vs_baseline);
    }
    for (name, note) in notes {
        println!("\n{name}: {note}");
        results::record_note(&format!("{name}: {note}"));
    }
    rates
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

/// A row of the targets table.
pub struct Target {
    /// What is measured.
    pub figure: &'static str,
    /// The measured ratio, if the case ran.
    pub measured: Option<f64>,
    /// The target.
    pub target: f64,
    /// Whether the target is a ceiling (≤) rather than a floor (≥).
    pub ceiling: bool,
}

impl Target {
    /// Whether the target is met; `None` if nothing was measured.
    pub fn met(&self) -> Option<bool> {
        let m = self.measured?;
        Some(if self.ceiling {
            m <= self.target
        } else {
            m >= self.target
        })
    }
}

/// A figure the targets table reports without a pass/fail target.
pub struct Reported {
    /// What is measured.
    pub figure: &'static str,
    /// The measured ratio, if the cases ran.
    pub measured: Option<f64>,
    /// What it should come close to, if anything (e.g. "≥ 0.5"), said beside it.
    pub aim: Option<&'static str>,
}

/// Print the targets table under a heading saying how the figures were taken (`how`).
pub fn print_targets(how: &str, targets: &[Target]) {
    print_targets_and_figures(how, targets, &[]);
}

/// [`print_targets`], followed by rows for figures reported without a target; records both.
pub fn print_targets_and_figures(how: &str, targets: &[Target], reported: &[Reported]) {
    let fmt = |m: Option<f64>| m.map_or_else(|| "n/a".to_owned(), |m| format!("{m:.2}"));
    println!("\n## Targets ({how})\n");
    println!("| figure | measured | target | |");
    println!("|---|---:|---:|---|");
    for t in targets {
        let cmp = if t.ceiling { "≤" } else { "≥" };
        let verdict = match t.met() {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "n/a",
        };
        println!(
            "| {} | {} | {cmp} {} | {verdict} |",
            t.figure,
            fmt(t.measured),
            t.target
        );
        results::record_target(t.figure, how, t.measured, t.ceiling, t.target, t.met());
    }
    for r in reported {
        let aim = r
            .aim
            .map_or_else(String::new, |aim| format!(" (aim {aim})"));
        println!("| {} | {} | reported{aim} | |", r.figure, fmt(r.measured));
        results::record_reported(r.figure, how, r.measured, r.aim);
    }
}
