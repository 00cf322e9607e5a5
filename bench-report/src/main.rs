//! `bench-report`: tables and a plot of shmq's benchmark results.
//!
//! ```text
//! cargo run -p bench-report -- target/shmq-bench/*.json --out docs/bench.svg
//! ```
//!
//! Reads the raw results the benches write (`target/shmq-bench/<bench>-<UTC time>.json`, format
//! `shmq-bench/1`, described in `benches/common/results.rs`), any number of runs of any benches.
//! Prints markdown to stdout, for the README to quote verbatim: the runs (file, time, commit,
//! machine), then per bench the median over runs of each round-trip case's percentiles and
//! bracketed ratio, of each throughput case's rate and ratio, and every target with each run's
//! figure, their median and whether the median meets it. Draws an SVG (plotters, SVG backend
//! only): per bench, the round-trip percentiles (median, p99, p99.9; log scale) of every case,
//! the baselines in grey beside shmq's, and the throughput of every case with its ratio.
//!
//! A smoke run (`"smoke": true`) is tabled and drawn with a warning in the title: its figures
//! mean nothing.

use std::collections::BTreeMap;
use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::process;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The format this tool reads.
const FORMAT: &str = "shmq-bench/1";

/// The baselines' case names (from `benches/common/baselines.rs`), drawn in grey.
const BASELINE_CASES: &[&str] = &[
    "raw atomic",
    "raw futex",
    "unix socket",
    "pipe",
    "mpsc threads",
    "spsc ring",
];

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-report: {e}");
        process::exit(1);
    }
}

fn run() -> Result<()> {
    let (files, out) = parse_args(std::env::args().skip(1))?;
    let runs = files
        .iter()
        .map(|path| Run::read(path))
        .collect::<Result<Vec<_>>>()?;
    let benches = group_by_bench(&runs);
    print!("{}", markdown(&runs, &benches));
    if let Some(out) = out {
        draw(&out, &runs, &benches)?;
        eprintln!("bench-report: wrote {}", out.display());
    }
    if runs.iter().any(|run| run.smoke) {
        eprintln!("bench-report: warning: smoke runs among the inputs; their figures mean nothing");
    }
    Ok(())
}

const USAGE: &str = "usage: bench-report RESULTS.json... [--out PLOT.svg]";

fn parse_args(args: impl Iterator<Item = String>) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    let (mut files, mut out) = (Vec::new(), None);
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" | "-o" => out = Some(PathBuf::from(args.next().ok_or(USAGE)?)),
            "--help" | "-h" => {
                println!("{USAGE}");
                process::exit(0);
            }
            _ if arg.starts_with('-') => {
                return Err(format!("unknown option `{arg}`\n{USAGE}").into())
            }
            _ => files.push(PathBuf::from(arg)),
        }
    }
    if files.is_empty() {
        return Err(format!("no results files given\n{USAGE}").into());
    }
    Ok((files, out))
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// One bench run's results file.
struct Run {
    file: String,
    bench: String,
    started: String,
    smoke: bool,
    commit: String,
    machine: String,
    round_trips: Vec<RoundTrip>,
    throughput: Vec<Rate>,
    /// The targets, then the figures reported without one.
    figures: Vec<Figure>,
}

struct RoundTrip {
    case: String,
    /// Nanoseconds: median, p99, p99.9.
    percentiles: [f64; 3],
    /// Median over the raw atomic medians just before and after.
    ratio: Option<f64>,
}

struct Rate {
    case: String,
    unit: String,
    per_second: f64,
    baseline: String,
    ratio: Option<f64>,
}

/// A row of a bench's targets table.
struct Figure {
    figure: String,
    measured: Option<f64>,
    goal: Goal,
}

enum Goal {
    /// A target the figure must not exceed.
    Ceiling(f64),
    /// A target the figure must reach.
    Floor(f64),
    /// Reported without a target; what it should come close to, if anything.
    Aim(Option<String>),
}

impl Goal {
    /// The target column, and whether `measured` meets it (`None`: no target, or no figure).
    fn judge(&self, measured: Option<f64>) -> (String, Option<bool>) {
        match self {
            Goal::Ceiling(t) => (format!("≤ {t}"), measured.map(|m| m <= *t)),
            Goal::Floor(t) => (format!("≥ {t}"), measured.map(|m| m >= *t)),
            Goal::Aim(None) => ("reported".to_owned(), None),
            Goal::Aim(Some(aim)) => (format!("reported (aim {aim})"), None),
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "?".to_owned(),
        other => other.to_string(),
    }
}

fn list<'a>(doc: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    doc[key].as_array().into_iter().flatten()
}

impl Run {
    fn read(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        if doc["format"] != FORMAT {
            return Err(format!(
                "{}: format {} is not {FORMAT} (a shmq bench's raw results)",
                path.display(),
                doc["format"]
            )
            .into());
        }
        let m = &doc["machine"];
        let machine = format!(
            "{} (family {}, model {}), nproc {}, Linux {}; parent CPU {}, peer CPU {}; load {}",
            text(&m["cpu_model"]),
            text(&m["cpu_family"]),
            text(&m["cpu_model_number"]),
            text(&m["nproc"]),
            text(&m["kernel"]),
            text(&m["parent_cpu"]),
            text(&m["peer_cpu"]),
            list(m, "load_average")
                .map(text)
                .collect::<Vec<_>>()
                .join(" "),
        );
        let commit = text(&doc["git_commit"]);
        let commit = match doc["git_dirty"].as_bool() {
            Some(true) => format!("{} + uncommitted changes", short(&commit)),
            _ => short(&commit).to_owned(),
        };
        Ok(Run {
            file: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
            bench: text(&doc["bench"]),
            started: text(&doc["started_utc"]),
            smoke: doc["smoke"].as_bool().unwrap_or(false),
            commit,
            machine,
            round_trips: list(&doc, "round_trips")
                .map(|row| RoundTrip {
                    case: text(&row["case"]),
                    percentiles: ["median_ns", "p99_ns", "p999_ns"]
                        .map(|key| row[key].as_f64().unwrap_or(f64::NAN)),
                    ratio: list(row, "brackets")
                        .find(|b| b["baseline"] == "raw atomic")
                        .and_then(|b| b["ratio"].as_f64()),
                })
                .collect(),
            throughput: list(&doc, "throughput")
                .map(|row| Rate {
                    case: text(&row["case"]),
                    unit: text(&row["unit"]),
                    per_second: row["median_per_s"].as_f64().unwrap_or(f64::NAN),
                    baseline: text(&row["baseline"]),
                    ratio: row["ratio"].as_f64(),
                })
                .collect(),
            figures: list(&doc, "targets")
                .map(|row| {
                    let target = row["target"].as_f64().unwrap_or(f64::NAN);
                    let goal = match row["comparison"].as_str() {
                        Some("<=") => Goal::Ceiling(target),
                        _ => Goal::Floor(target),
                    };
                    (row, goal)
                })
                .chain(
                    list(&doc, "reported")
                        .map(|row| (row, Goal::Aim(row["aim"].as_str().map(str::to_owned)))),
                )
                .map(|(row, goal)| Figure {
                    figure: text(&row["figure"]),
                    measured: row["measured"].as_f64(),
                    goal,
                })
                .collect(),
        })
    }
}

fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

// ---------------------------------------------------------------------------------------------
// Medians of runs
// ---------------------------------------------------------------------------------------------

/// The median of the finite `values` (the mean of the middle two of an even count).
fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// One bench's runs, in the order given.
struct Bench<'a> {
    name: &'a str,
    runs: Vec<&'a Run>,
}

impl<'a> Bench<'a> {
    /// Names in order of first appearance over the runs.
    fn names<T: 'a>(
        &self,
        rows: impl Fn(&'a Run) -> &'a [T],
        name: impl Fn(&T) -> &str,
    ) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for run in &self.runs {
            for row in rows(run) {
                if !names.iter().any(|n| n == name(row)) {
                    names.push(name(row).to_owned());
                }
            }
        }
        names
    }

    fn round_trip_cases(&self) -> Vec<String> {
        self.names(|r| &r.round_trips, |row| &row.case)
    }

    fn throughput_cases(&self) -> Vec<String> {
        self.names(|r| &r.throughput, |row| &row.case)
    }

    /// Each run's row of round-trip case `case` (runs that lack it are left out).
    fn round_trips(&self, case: &str) -> Vec<&'a RoundTrip> {
        self.runs
            .iter()
            .filter_map(|run| run.round_trips.iter().find(|r| r.case == case))
            .collect()
    }

    fn rates(&self, case: &str) -> Vec<&'a Rate> {
        self.runs
            .iter()
            .filter_map(|run| run.throughput.iter().find(|r| r.case == case))
            .collect()
    }
}

fn group_by_bench(runs: &[Run]) -> Vec<Bench<'_>> {
    let mut benches: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for run in runs {
        benches.entry(&run.bench).or_default().push(run);
    }
    // The pipeline first, as the README quotes it; the rest by name.
    let order = |name: &str| (name != "pipeline", name.to_owned());
    let mut benches: Vec<Bench> = benches
        .into_iter()
        .map(|(name, runs)| Bench { name, runs })
        .collect();
    benches.sort_by_key(|b| order(b.name));
    benches
}

// ---------------------------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------------------------

fn fmt_ns(ns: Option<f64>) -> String {
    match ns {
        None => "n/a".to_owned(),
        Some(ns) if ns < 1e3 => format!("{ns:.0} ns"),
        Some(ns) if ns < 1e4 => format!("{:.2} µs", ns / 1e3),
        Some(ns) if ns < 1e6 => format!("{:.1} µs", ns / 1e3),
        Some(ns) => format!("{:.2} ms", ns / 1e6),
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"))
}

fn markdown(runs: &[Run], benches: &[Bench]) -> String {
    let mut md = String::new();
    let mut line = |s: String| {
        md.push_str(&s);
        md.push('\n');
    };
    if runs.iter().any(|run| run.smoke) {
        line("**Smoke runs among these: their figures mean nothing.**\n".to_owned());
    }
    line("| run | bench | started (UTC) | commit | machine |".to_owned());
    line("|---|---|---|---|---|".to_owned());
    for run in runs {
        let smoke = if run.smoke { " (smoke)" } else { "" };
        line(format!(
            "| {}{smoke} | {} | {} | {} | {} |",
            run.file, run.bench, run.started, run.commit, run.machine
        ));
    }
    for bench in benches {
        let n = bench.runs.len();
        let of_runs = if n == 1 {
            "one run".to_owned()
        } else {
            format!("median of {n} runs")
        };
        let cases = bench.round_trip_cases();
        if !cases.is_empty() {
            line(format!(
                "\n### {}: 64-byte round trips ({of_runs})\n",
                bench.name
            ));
            line("| case | median | p99 | p99.9 | / raw atomic (bracketed) | runs |".to_owned());
            line("|---|---:|---:|---:|---:|---:|".to_owned());
            for case in &cases {
                let rows = bench.round_trips(case);
                let p = |i: usize| fmt_ns(median(rows.iter().map(|r| r.percentiles[i])));
                let ratio = median(rows.iter().filter_map(|r| r.ratio));
                line(format!(
                    "| {case} | {} | {} | {} | {} | {} |",
                    p(0),
                    p(1),
                    p(2),
                    fmt_ratio(ratio),
                    rows.len()
                ));
            }
        }
        let cases = bench.throughput_cases();
        if !cases.is_empty() {
            line(format!(
                "\n### {}: throughput, 64-byte messages ({of_runs})\n",
                bench.name
            ));
            let unit = bench
                .rates(&cases[0])
                .first()
                .map_or("msg", |r| r.unit.as_str());
            line(format!("| case | M {unit}/s | ratio | runs |"));
            line("|---|---:|---:|---:|".to_owned());
            for case in &cases {
                let rows = bench.rates(case);
                let baseline = rows.first().map_or("", |r| r.baseline.as_str());
                let rate = median(rows.iter().map(|r| r.per_second)).map(|r| r / 1e6);
                let ratio = median(rows.iter().filter_map(|r| r.ratio));
                line(format!(
                    "| {case} | {} | {} × {baseline} | {} |",
                    rate.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}")),
                    fmt_ratio(ratio),
                    rows.len()
                ));
            }
        }
        let figures = bench.names(|r| &r.figures, |t| &t.figure);
        if figures.is_empty() {
            continue;
        }
        line(format!(
            "\n### {}: targets (each run, and the median of runs)\n",
            bench.name
        ));
        let run_cols: String = (1..=n).map(|i| format!(" run {i} |")).collect();
        line(format!("| figure |{run_cols} median | target | |"));
        line(format!("|---|{}---:|---:|---|", "---:|".repeat(n)));
        for figure in &figures {
            let each: Vec<Option<&Figure>> = bench
                .runs
                .iter()
                .map(|run| run.figures.iter().find(|t| &t.figure == figure))
                .collect();
            let Some(first) = each.iter().flatten().next() else {
                continue;
            };
            let cells: String = each
                .iter()
                .map(|t| format!(" {} |", fmt_ratio(t.and_then(|t| t.measured))))
                .collect();
            let med = median(each.iter().filter_map(|t| t.and_then(|t| t.measured)));
            let (target, met) = first.goal.judge(med);
            let verdict = match (met, &first.goal) {
                (_, Goal::Aim(_)) => "",
                (Some(true), _) => "met",
                (Some(false), _) => "**not met**",
                (None, _) => "n/a",
            };
            line(format!(
                "| {figure} |{cells} {} | {target} | {verdict} |",
                fmt_ratio(med)
            ));
        }
    }
    md
}

// ---------------------------------------------------------------------------------------------
// Plot
// ---------------------------------------------------------------------------------------------

const WIDTH: u32 = 1400;
/// Pixels per case row, and above each bench's panels.
const ROW: u32 = 34;
const BENCH_HEADER: u32 = 70;
const TITLE: u32 = 50;
/// Room for the case names left of each panel.
const LABELS: u32 = 250;
/// Room above each panel's plot for the caption and the legend.
const LEGEND: u32 = 36;

/// Percentile shades: shmq's cases, then the baselines'.
const SHMQ: [RGBColor; 3] = [
    RGBColor(31, 88, 160),
    RGBColor(84, 143, 214),
    RGBColor(166, 199, 238),
];
const BASELINE: [RGBColor; 3] = [
    RGBColor(90, 90, 90),
    RGBColor(150, 150, 150),
    RGBColor(205, 205, 205),
];
const PERCENTILES: [&str; 3] = ["median", "p99", "p99.9"];

fn is_baseline(case: &str) -> bool {
    BASELINE_CASES.contains(&case)
}

type Area = DrawingArea<SVGBackend<'static>, plotters::coord::Shift>;

fn draw(out: &Path, runs: &[Run], benches: &[Bench]) -> Result<()> {
    let rows = |b: &Bench| b.round_trip_cases().len().max(b.throughput_cases().len()) as u32;
    let height = TITLE
        + benches
            .iter()
            .map(|b| BENCH_HEADER + ROW * rows(b).max(1))
            .sum::<u32>();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    // The backend borrows its path for its life; a leaked copy lets `Area` be 'static.
    let path: &'static Path = Box::leak(out.to_path_buf().into_boxed_path());
    let root: Area = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, mut rest) = root.split_vertically(TITLE);
    let smoke = if runs.iter().any(|r| r.smoke) {
        " — SMOKE RUNS: THE FIGURES MEAN NOTHING"
    } else {
        ""
    };
    let commits: Vec<&str> = runs.iter().map(|r| r.commit.as_str()).collect();
    let mut commits_seen = commits.clone();
    commits_seen.dedup();
    title.draw(&Text::new(
        format!(
            "shmq benches: {} runs, commit {}{smoke}",
            runs.len(),
            commits_seen.join(", ")
        ),
        (10, 12),
        ("sans-serif", 22)
            .into_font()
            .color(if smoke.is_empty() { &BLACK } else { &RED }),
    ))?;
    for bench in benches {
        let h = BENCH_HEADER + ROW * rows(bench).max(1);
        let (strip, below) = rest.split_vertically(h);
        rest = below;
        let (left, right) = strip.split_horizontally(WIDTH * 3 / 5);
        let of_runs = match bench.runs.len() {
            1 => "one run".to_owned(),
            n => format!("median of {n} runs"),
        };
        draw_latency(&left, bench, &of_runs)?;
        draw_throughput(&right, bench, &of_runs)?;
    }
    root.present()?;
    Ok(())
}

/// Horizontal bars on a log scale: each case's median, p99 and p99.9 (medians over runs).
fn draw_latency(area: &Area, bench: &Bench, of_runs: &str) -> Result<()> {
    let cases = bench.round_trip_cases();
    if cases.is_empty() {
        return Ok(());
    }
    let values: Vec<[Option<f64>; 3]> = cases
        .iter()
        .map(|case| {
            let rows = bench.round_trips(case);
            [0, 1, 2].map(|i| median(rows.iter().map(|r| r.percentiles[i])))
        })
        .collect();
    let all = values.iter().flatten().flatten().copied();
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (100.0, 1e6) };
    let x_range = (10f64.powf(lo.log10().floor()))..(10f64.powf(hi.log10().ceil()));
    let n = cases.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{}: 64-byte round trip, median / p99 / p99.9 ({of_runs})",
                bench.name
            ),
            ("sans-serif", 16),
        )
        .margin(8)
        .margin_top(LEGEND)
        .x_label_area_size(30)
        .y_label_area_size(LABELS)
        .build_cartesian_2d(x_range.clone().log_scale(), -0.5f64..n - 0.5)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_label_formatter(&|ns| fmt_ns(Some(*ns)))
        .draw()?;
    let band = 0.8 / 3.0;
    for (i, (case, vals)) in cases.iter().zip(&values).enumerate() {
        let y = n - 1.0 - i as f64; // First case on top.
        let shades = if is_baseline(case) { BASELINE } else { SHMQ };
        for (k, v) in vals.iter().enumerate() {
            let Some(v) = *v else { continue };
            let top = y + 0.4 - band * k as f64;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x_range.start, top), (v, top - band)],
                shades[k].filled(),
            )))?;
        }
        label(area, &chart.backend_coord(&(x_range.start, y)), case)?;
    }
    legend(area, &PERCENTILES, &[SHMQ, BASELINE])?;
    Ok(())
}

/// Horizontal bars: each case's rate (median over runs), with its ratio to the bench's baseline.
fn draw_throughput(area: &Area, bench: &Bench, of_runs: &str) -> Result<()> {
    let cases = bench.throughput_cases();
    if cases.is_empty() {
        return Ok(());
    }
    let rates: Vec<(Option<f64>, Option<f64>, String, String)> = cases
        .iter()
        .map(|case| {
            let rows = bench.rates(case);
            let (unit, baseline) = rows.first().map_or((String::new(), String::new()), |r| {
                (r.unit.clone(), r.baseline.clone())
            });
            (
                median(rows.iter().map(|r| r.per_second / 1e6)),
                median(rows.iter().filter_map(|r| r.ratio)),
                unit,
                baseline,
            )
        })
        .collect();
    let hi = rates
        .iter()
        .filter_map(|r| r.0)
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.9; // Room for the notes.
    let n = cases.len() as f64;
    let unit = rates.first().map_or("msg", |r| r.2.as_str());
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("throughput, M {unit}/s ({of_runs})"),
            ("sans-serif", 16),
        )
        .margin(8)
        .margin_top(LEGEND)
        .x_label_area_size(30)
        .y_label_area_size(LABELS)
        .build_cartesian_2d(0f64..hi, -0.5f64..n - 0.5)?;
    chart.configure_mesh().disable_y_mesh().y_labels(0).draw()?;
    for (i, (case, (rate, ratio, _, baseline))) in cases.iter().zip(&rates).enumerate() {
        let y = n - 1.0 - i as f64;
        let shade = if is_baseline(case) {
            BASELINE[0]
        } else {
            SHMQ[0]
        };
        if let Some(rate) = *rate {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(0.0, y + 0.3), (rate, y - 0.3)],
                shade.filled(),
            )))?;
            let note = match ratio {
                Some(r) if case != baseline => format!("{rate:.2} ({r:.2} × {baseline})"),
                _ => format!("{rate:.2}"),
            };
            let (px, py) = chart.backend_coord(&(rate, y));
            let (x0, y0) = area.get_base_pixel();
            area.draw(&Text::new(
                note,
                (px - x0 + 4, py - y0),
                ("sans-serif", 12)
                    .into_font()
                    .into_text_style(area)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
        label(area, &chart.backend_coord(&(0.0, y)), case)?;
    }
    Ok(())
}

/// A case's name, right-aligned just left of the plot at `at` (backend pixels).
fn label(area: &Area, at: &(i32, i32), case: &str) -> Result<()> {
    let (x0, y0) = area.get_base_pixel();
    let style = ("sans-serif", 13)
        .into_font()
        .into_text_style(area)
        .pos(Pos::new(HPos::Right, VPos::Center));
    area.draw(&Text::new(
        case.to_owned(),
        (at.0 - x0 - 6, at.1 - y0),
        style,
    ))?;
    Ok(())
}

/// The percentile shades, top right of `area`.
fn legend(area: &Area, names: &[&str], palettes: &[[RGBColor; 3]]) -> Result<()> {
    let (w, _) = area.dim_in_pixel();
    let mut x = w as i32 - 360;
    for (palette, who) in palettes.iter().zip(["shmq", "baseline"]) {
        for (k, name) in names.iter().enumerate() {
            area.draw(&Rectangle::new(
                [(x, 24), (x + 12, 36)],
                palette[k].filled(),
            ))?;
            area.draw(&Text::new(
                if k == 0 {
                    format!("{who} {name}")
                } else {
                    (*name).to_owned()
                },
                (x + 15, 24),
                ("sans-serif", 11).into_font(),
            ))?;
            x += if k == 0 { 100 } else { 45 };
        }
        x += 10;
    }
    Ok(())
}
