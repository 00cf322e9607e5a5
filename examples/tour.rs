//! A tour of shmq across real processes.
//!
//! ```text
//! cargo run --release --example tour
//! ```
//!
//! **Pipeline.** The photo site: an upload front-end process queues thumbnail jobs; a room of
//! worker processes takes them, each job going to exactly one worker; the workers report back on
//! a second queue. Then a ping-pong between two processes shows the round-trip latency.
//!
//! Every role is this same binary, re-executed with the role's name as its first argument.

use shmq::{Options, Pipeline, WaitStrategy};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

const JOBS: u64 = 200_000;
const WORKERS: u64 = 3;
const ROUND_TRIPS: usize = 100_000;

fn main() -> Result {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("frontend") => frontend(Path::new(&args[1])),
        Some("worker") => worker(Path::new(&args[1]), Path::new(&args[2]), args[3].parse()?),
        Some("echo") => echo(Path::new(&args[1]), Path::new(&args[2])),
        _ => tour(),
    }
}

/// Spawns this binary in `role` with `args`; killed on drop if still running.
struct Process(Child);

impl Process {
    fn spawn(role: &str, args: &[&Path]) -> Result<Self> {
        let child = Command::new(std::env::current_exe()?)
            .arg(role)
            .args(args)
            .spawn()?;
        Ok(Process(child))
    }

    fn wait(mut self) -> Result {
        let status = self.0.wait()?;
        if !status.success() {
            return Err(format!("child process failed: {status}").into());
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A directory for this run's queue files, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("shmq-tour-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tour() -> Result {
    let scratch = Scratch::new()?;
    println!("shmq tour: queue files in {}\n", scratch.0.display());
    pipeline_tour(&scratch.0)?;
    ping_pong_tour(&scratch.0)?;
    Ok(())
}

fn pipeline_tour(dir: &Path) -> Result {
    println!(
        "== Pipeline: {JOBS} thumbnail jobs from 1 front-end process to {WORKERS} worker processes"
    );
    let jobs = dir.join("thumbnails");
    let reports = dir.join("reports");
    Pipeline::create(&jobs, &Options::new().capacity(1024).max_message(256))?;
    let reports_queue = Pipeline::create(&reports, &Options::new().capacity(64).max_message(256))?;
    let report_consumer = reports_queue.consumer()?;

    let started = Instant::now();
    let workers: Vec<Process> = (0..WORKERS)
        .map(|id| Process::spawn("worker", &[&jobs, &reports, Path::new(&id.to_string())]))
        .collect::<Result<_>>()?;
    let frontend = Process::spawn("frontend", &[&jobs])?;
    frontend.wait()?;
    let mut total = 0;
    for _ in 0..WORKERS {
        let report = report_consumer.recv()?;
        let text = std::str::from_utf8(&report)?;
        println!("  {text}");
        total += text
            .split_whitespace()
            .nth(3)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    for w in workers {
        w.wait()?;
    }
    let elapsed = started.elapsed();
    println!(
        "  {total} of {JOBS} jobs done, each by exactly one worker, in {:.0} ms including process start-up ({:.2} M jobs/s)\n",
        elapsed.as_secs_f64() * 1e3,
        total as f64 / elapsed.as_secs_f64() / 1e6
    );
    if total != JOBS {
        return Err(format!("expected {JOBS} jobs, workers report {total}").into());
    }
    Ok(())
}

fn frontend(jobs: &Path) -> Result {
    let producer = Pipeline::open(jobs)?.producer()?;
    let mut name = Vec::with_capacity(64);
    for i in 0..JOBS {
        name.clear();
        use std::io::Write;
        write!(name, "uploads/img-{i}.jpg")?;
        producer.send(&name)?;
    }
    for _ in 0..WORKERS {
        producer.send(b"")?; // an empty job: no more work
    }
    Ok(())
}

fn worker(jobs: &Path, reports: &Path, id: u64) -> Result {
    let consumer = Pipeline::open(jobs)?.consumer()?;
    let mut done = 0u64;
    let mut digest = 0u64;
    loop {
        let job = consumer.recv()?;
        if job.is_empty() {
            break;
        }
        // "Make a thumbnail": a cheap hash of the job's name stands in for the work.
        digest = job.iter().fold(digest, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        done += 1;
    }
    let report = format!("worker {id} did {done} jobs (digest {digest:016x})");
    Pipeline::open(reports)?
        .producer()?
        .send(report.as_bytes())?;
    Ok(())
}

fn ping_pong_tour(dir: &Path) -> Result {
    println!("== Round trip: {ROUND_TRIPS} 64-byte ping-pongs between two processes");
    let ping = dir.join("ping");
    let pong = dir.join("pong");
    let options = Options::new().capacity(64).max_message(64);
    let ping_q = Pipeline::create(&ping, &options)?;
    let pong_q = Pipeline::create(&pong, &options)?;
    let echo = Process::spawn("echo", &[&ping, &pong])?;
    for (label, strategy) in [
        ("busy-poll receive", WaitStrategy::BusyPoll),
        ("default receive (spin, then park)", WaitStrategy::default()),
    ] {
        let tx = ping_q.producer()?;
        let mut rx = pong_q.consumer()?;
        rx.set_wait_strategy(strategy);
        let msg = [7u8; 64];
        let mut samples = Vec::with_capacity(ROUND_TRIPS);
        for i in 0..ROUND_TRIPS + 10_000 {
            let t = Instant::now();
            tx.send(&msg)?;
            let reply = rx.recv()?;
            if i >= 10_000 {
                samples.push(t.elapsed());
            }
            assert_eq!(reply.len(), 64);
        }
        samples.sort_unstable();
        let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
        println!(
            "  {label:34}: median {:>7.0?}  p99 {:>7.0?}  p99.9 {:>7.0?}",
            pct(0.5),
            pct(0.99),
            pct(0.999)
        );
    }
    ping_q.producer()?.send(b"")?; // tells the echo process to stop
    echo.wait()?;
    println!();
    Ok(())
}

fn echo(ping: &Path, pong: &Path) -> Result {
    let mut rx = Pipeline::open(ping)?.consumer()?;
    rx.set_wait_strategy(WaitStrategy::BusyPoll);
    let tx = Pipeline::open(pong)?.producer()?;
    loop {
        let msg = rx.recv()?;
        if msg.is_empty() {
            return Ok(());
        }
        tx.send(&msg)?;
    }
}
