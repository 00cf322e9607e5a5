//! How long the living wait for the dead: the time from SIGKILLing a participant that holds
//! something up to the queue flowing again, median over 20 kills.
//!
//! ```text
//! cargo run --example recovery_time   # the park points come with the test-hooks feature (dev-dependency)
//! ```
//!
//! * A consumer is killed while holding a message: time until another consumer, already
//!   blocked in `recv`, receives the message again (flagged redelivered).
//! * A producer is killed after claiming the slot at the head of the queue and before writing
//!   it: time until a blocked consumer receives the next message, sent by another producer.

use shmq::{Pipeline, PipelineOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const KILLS: usize = 20;

fn main() -> Result {
    if !cfg!(feature = "test-hooks") {
        return Err("the park points used here need shmq's `test-hooks` feature".into());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("consumer") => {
            let q = Pipeline::open(&args[1])?;
            let consumer = q.consumer()?;
            let _held = consumer.recv()?; // parks at "consumer-received" and is killed there
            Ok(())
        }
        Some("producer") => {
            let q = Pipeline::open(&args[1])?;
            q.producer()?.send(b"never seen")?; // parks at "producer-claimed" and is killed there
            Ok(())
        }
        _ => measure(),
    }
}

fn spawn(role: &str, queue: &Path, point: &str, parked: &Path) -> Result<Child> {
    Ok(Command::new(std::env::current_exe()?)
        .args([role, queue.to_str().ok_or("path")?])
        .env("SHMQ_TEST_PARK_AT", point)
        .env("SHMQ_TEST_PARKED_FILE", parked)
        .spawn()?)
}

fn wait_for_file(path: &Path) -> Result {
    let started = Instant::now();
    while !path.exists() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("the child never reached its park point".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Kills `child` and returns how long `blocked_recv` (already waiting) then takes.
fn kill_and_time(
    mut child: Child,
    blocked_recv: impl FnOnce() -> Result + Send,
) -> Result<Duration> {
    std::thread::scope(|s| {
        let receiver = s.spawn(|| -> Result<Instant> {
            blocked_recv()?;
            Ok(Instant::now())
        });
        std::thread::sleep(Duration::from_millis(20)); // let the receiver block
        let killed = Instant::now();
        child.kill()?;
        child.wait()?;
        let received = receiver.join().map_err(|_| "receiver panicked")??;
        Ok(received.duration_since(killed))
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn measure() -> Result {
    let dir = PathBuf::from(if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    })
    .join(format!("shmq-recovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (mut redelivery, mut skipping) = (Vec::new(), Vec::new());
    for i in 0..KILLS {
        // A consumer dies holding a message.
        let path = dir.join(format!("held-{i}"));
        let parked = dir.join(format!("held-{i}.parked"));
        let q = Pipeline::create(&path, &PipelineOptions::new().capacity(8).max_message(64))?;
        q.producer()?.send(b"job")?;
        let child = spawn("consumer", &path, "consumer-received", &parked)?;
        wait_for_file(&parked)?;
        let consumer = q.consumer()?;
        redelivery.push(kill_and_time(child, || {
            let msg = consumer.recv()?;
            if !msg.redelivered() || &*msg != b"job" {
                return Err("expected the held message, redelivered".into());
            }
            Ok(())
        })?);

        // A producer dies between claim and commit, at the head of the queue.
        let path = dir.join(format!("claimed-{i}"));
        let parked = dir.join(format!("claimed-{i}.parked"));
        let q = Pipeline::create(&path, &PipelineOptions::new().capacity(8).max_message(64))?;
        let child = spawn("producer", &path, "producer-claimed", &parked)?;
        wait_for_file(&parked)?;
        q.producer()?.send(b"next")?;
        let consumer = q.consumer()?;
        skipping.push(kill_and_time(child, || {
            if &*consumer.recv()? != b"next" {
                return Err("expected the next message".into());
            }
            Ok(())
        })?);
    }
    std::fs::remove_dir_all(&dir)?;
    println!("time from SIGKILL to the queue flowing again, median of {KILLS} kills (min .. max):");
    for (what, v) in [
        (
            "consumer killed holding a message -> redelivered",
            redelivery,
        ),
        ("producer killed mid-write -> slot skipped", skipping),
    ] {
        let (min, max) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
        println!("  {what:50} {:>8.1?}  ({min:.1?} .. {max:.1?})", median(v));
    }
    println!(
        "(a blocked waiter sweeps for dead participants every shmq::STALL_CHECK = {:?})",
        shmq::STALL_CHECK
    );
    Ok(())
}
