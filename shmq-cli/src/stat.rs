//! `shmq stat FILE`: everything `shmq::inspect` knows about one queue.

use crate::view::{rates, text, ReportJson};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The queue file.
    file: PathBuf,
    /// Print JSON instead of text (one object per report).
    #[arg(long)]
    json: bool,
    /// Report again every SECS seconds, with message rates since the previous report.
    #[arg(long, value_name = "SECS")]
    watch: Option<f64>,
    /// With --watch: stop after this many reports.
    #[arg(long, value_name = "N", requires = "watch")]
    count: Option<u64>,
}

pub fn run(args: Args) -> crate::Result {
    let mut out = std::io::stdout().lock();
    let interval = match args.watch {
        Some(secs) if !(secs.is_finite() && secs > 0.0) => {
            return Err(format!("--watch needs a positive number of seconds, not {secs}").into())
        }
        Some(secs) => Some(Duration::from_secs_f64(secs)),
        None => None,
    };
    let mut previous: Option<(Instant, shmq::inspect::Report)> = None;
    let mut reports = 0u64;
    loop {
        let report = shmq::inspect::inspect(&args.file)?;
        let now = Instant::now();
        let rate = previous
            .as_ref()
            .map(|(at, before)| rates(before, &report, now.duration_since(*at).as_secs_f64()));
        if args.json {
            let mut json = ReportJson::of(&report);
            json.rates = rate;
            writeln!(out, "{}", serde_json::to_string(&json)?)?;
        } else {
            write!(out, "{}", text(&report, rate))?;
        }
        out.flush()?;
        reports += 1;
        let Some(interval) = interval else {
            return Ok(());
        };
        if args.count.is_some_and(|n| reports >= n) {
            return Ok(());
        }
        previous = Some((now, report));
        std::thread::sleep(interval);
        if !args.json {
            writeln!(out)?;
        }
    }
}
