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
//! **Publish-subscribe.** A status publisher announces who is up and who is going down; an
//! operations dashboard subscribes to `hosts/` only, an audit log to everything.
//!
//! **Request-reply.** Client processes send resize requests to a service; server processes
//! share the load, and one server goes down for maintenance halfway while another attaches,
//! invisibly to the clients: every request gets exactly its own reply.
//!
//! Every role is this same binary, re-executed with the role's name as its first argument.

use shmq::{
    Overflow, Pipeline, PipelineOptions, PubSub, PubSubOptions, Service, ServiceOptions,
    WaitStrategy,
};
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
        Some("subscriber") => {
            subscriber(Path::new(&args[1]), Path::new(&args[2]), &args[3], &args[4])
        }
        Some("announcer") => announcer(Path::new(&args[1])),
        Some("server") => server(
            Path::new(&args[1]),
            Path::new(&args[2]),
            &args[3],
            args[4].parse()?,
        ),
        Some("client") => client(Path::new(&args[1]), Path::new(&args[2]), args[3].parse()?),
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
    pubsub_tour(&scratch.0)?;
    reqrep_tour(&scratch.0)?;
    Ok(())
}

fn pipeline_tour(dir: &Path) -> Result {
    println!(
        "== Pipeline: {JOBS} thumbnail jobs from 1 front-end process to {WORKERS} worker processes"
    );
    let jobs = dir.join("thumbnails");
    let reports = dir.join("reports");
    Pipeline::create(
        &jobs,
        &PipelineOptions::new().capacity(1024).max_message(256),
    )?;
    let reports_queue = Pipeline::create(
        &reports,
        &PipelineOptions::new().capacity(64).max_message(256),
    )?;
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
        // Done: acknowledge (dropping the job would too, without saying whether it worked).
        job.ack()?;
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
    let options = PipelineOptions::new().capacity(64).max_message(64);
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

/// Collects `n` one-line reports sent on `reports` by child processes, printing each.
fn collect_reports(reports: &shmq::Consumer, n: usize) -> Result<Vec<String>> {
    let mut lines = Vec::with_capacity(n);
    for _ in 0..n {
        let report = reports.recv()?;
        let line = String::from_utf8(report.to_vec())?;
        println!("  {line}");
        lines.push(line);
    }
    Ok(lines)
}

fn report(reports: &Path, line: &str) -> Result {
    Pipeline::open(reports)?.producer()?.send(line.as_bytes())?;
    Ok(())
}

const STATUS_EVENTS: u64 = 100_000;

fn pubsub_tour(dir: &Path) -> Result {
    println!("== Publish-subscribe: 1 status publisher, 2 subscriber processes filtering by topic");
    let events = dir.join("events");
    let reports = dir.join("pubsub-reports");
    PubSub::create(
        &events,
        &PubSubOptions::new()
            .capacity(4096)
            .max_message(128)
            .overflow(Overflow::Block),
    )?;
    let reports_queue = Pipeline::create(
        &reports,
        &PipelineOptions::new().capacity(16).max_message(256),
    )?;
    let reports_consumer = reports_queue.consumer()?;
    let subscribers = [("dashboard", "hosts/"), ("audit-log", "")]
        .iter()
        .map(|(name, prefix)| {
            Process::spawn(
                "subscriber",
                &[&events, &reports, Path::new(name), Path::new(prefix)],
            )
        })
        .collect::<Result<Vec<_>>>()?;
    // Each subscriber says "ready" once attached, so nothing is published before they listen.
    collect_reports(&reports_consumer, subscribers.len())?;
    let started = Instant::now();
    Process::spawn("announcer", &[&events])?.wait()?;
    collect_reports(&reports_consumer, subscribers.len())?;
    for s in subscribers {
        s.wait()?;
    }
    println!(
        "  {STATUS_EVENTS} events (+ host changes) fanned out to both subscribers in {:.0} ms (Block mode: nobody misses anything)\n",
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn announcer(events: &Path) -> Result {
    let publisher = PubSub::open(events)?.publisher()?;
    publisher.publish(b"hosts/web-1", b"up")?;
    publisher.publish(b"hosts/web-2", b"up")?;
    let mut body = Vec::with_capacity(64);
    for i in 0..STATUS_EVENTS {
        body.clear();
        use std::io::Write;
        write!(body, "thumbnail {i} done")?;
        publisher.publish(b"jobs/thumbnails", &body)?;
        if i == STATUS_EVENTS / 2 {
            publisher.publish(b"hosts/web-3", b"going down for maintenance")?;
        }
    }
    publisher.publish(b"hosts/web-3", b"up again")?;
    publisher.publish(b"control/stop", b"")?;
    Ok(())
}

fn subscriber(events: &Path, reports: &Path, name: &str, prefix: &str) -> Result {
    let channel = PubSub::open(events)?;
    let prefixes: Vec<&[u8]> = if prefix.is_empty() {
        vec![]
    } else {
        vec![prefix.as_bytes(), b"control/"]
    };
    let mut sub = channel.subscriber(&prefixes)?;
    report(
        reports,
        &format!(
            "{name} subscribed to {:?}",
            if prefix.is_empty() {
                "everything"
            } else {
                prefix
            }
        ),
    )?;
    let (mut count, mut hosts) = (0u64, Vec::new());
    loop {
        let msg = sub.recv()?;
        if msg.topic() == b"control/stop" {
            break;
        }
        count += 1;
        if msg.topic().starts_with(b"hosts/") {
            hosts.push(format!(
                "{} {}",
                String::from_utf8_lossy(msg.topic()),
                String::from_utf8_lossy(msg.payload())
            ));
        }
    }
    report(
        reports,
        &format!(
            "{name} received {count} messages; host changes: {}",
            hosts.join(", ")
        ),
    )
}

const CLIENTS: u64 = 3;
const REQUESTS_PER_CLIENT: u64 = 20_000;

fn reqrep_tour(dir: &Path) -> Result {
    println!(
        "== Request-reply: {CLIENTS} client processes x {REQUESTS_PER_CLIENT} requests; servers A and B, A leaves for maintenance, C takes over"
    );
    let service = dir.join("resize");
    let reports = dir.join("reqrep-reports");
    Service::create(
        &service,
        &ServiceOptions::new()
            .max_clients(8)
            .max_servers(8)
            .max_message(256),
    )?;
    let reports_queue = Pipeline::create(
        &reports,
        &PipelineOptions::new().capacity(16).max_message(256),
    )?;
    let reports_consumer = reports_queue.consumer()?;
    let started = Instant::now();
    // Server A serves a fixed number of requests, then detaches "for maintenance".
    let a = Process::spawn(
        "server",
        &[&service, &reports, Path::new("A"), Path::new("15000")],
    )?;
    let b = Process::spawn(
        "server",
        &[&service, &reports, Path::new("B"), Path::new("0")],
    )?;
    let clients = (0..CLIENTS)
        .map(|id| Process::spawn("client", &[&service, &reports, Path::new(&id.to_string())]))
        .collect::<Result<Vec<_>>>()?;
    a.wait()?;
    collect_reports(&reports_consumer, 1)?;
    let c = Process::spawn(
        "server",
        &[&service, &reports, Path::new("C"), Path::new("0")],
    )?;
    for client in clients {
        client.wait()?;
    }
    collect_reports(&reports_consumer, CLIENTS as usize)?;
    std::fs::write(dir.join("servers-stop"), b"")?;
    b.wait()?;
    c.wait()?;
    collect_reports(&reports_consumer, 2)?;
    println!(
        "  {} requests, each answered exactly once to the client that asked, in {:.0} ms\n",
        CLIENTS * REQUESTS_PER_CLIENT,
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn server(service: &Path, reports: &Path, name: &str, limit: u64) -> Result {
    let stop = service.with_file_name("servers-stop");
    let server = Service::open(service)?.server()?;
    let mut served = 0u64;
    while limit == 0 || served < limit {
        let request = match server.recv_timeout(std::time::Duration::from_millis(50)) {
            Ok(request) => request,
            Err(shmq::RecvTimeoutError::Timeout) if stop.exists() => break,
            Err(shmq::RecvTimeoutError::Timeout) => continue,
            Err(e) => return Err(e.into()),
        };
        // "Resize": echo the request with a suffix.
        let mut reply = [0u8; 256];
        let n = request.payload().len();
        reply[..n].copy_from_slice(request.payload());
        reply[n..n + 8].copy_from_slice(b" resized");
        request.reply(&reply[..n + 8])?;
        served += 1;
    }
    let why = if limit != 0 && served == limit {
        "detached for maintenance"
    } else {
        "stopped"
    };
    report(
        reports,
        &format!("server {name} served {served} requests, then {why}"),
    )
}

fn client(service: &Path, reports: &Path, id: u64) -> Result {
    let client = Service::open(service)?.client()?;
    let mut latencies = Vec::with_capacity(REQUESTS_PER_CLIENT as usize);
    for i in 0..REQUESTS_PER_CLIENT {
        let request = format!("client-{id} img-{i} 128x128");
        let t = Instant::now();
        let reply = client.request(request.as_bytes())?;
        latencies.push(t.elapsed());
        let expected = format!("{request} resized");
        if reply.payload() != expected.as_bytes() {
            return Err(format!(
                "client {id} got {:?} for {request:?}",
                String::from_utf8_lossy(reply.payload())
            )
            .into());
        }
    }
    latencies.sort_unstable();
    report(
        reports,
        &format!(
            "client {id}: {REQUESTS_PER_CLIENT} replies, all its own and intact; median round trip {:?}",
            latencies[latencies.len() / 2]
        ),
    )
}
