//! Awaiting messages from another process in async code.
//!
//! ```text
//! cargo run --example async
//! ```
//!
//! A monitoring task on a tokio runtime waits on two queues at once — `alerts` and `metrics`
//! — with `tokio::select!` and a timeout, while a sensor process (this binary re-executed with
//! the argument `sensor`) writes to both. Nothing polls: the task sleeps until the sensor's
//! send wakes it, through shmq's reactor thread. A `select!` branch that loses is cancelled,
//! which is safe: its message stays in the queue for the next receive.
//!
//! shmq's futures need no particular runtime; tokio (a dev-dependency of shmq) is just the one
//! this example uses.

use shmq::{Pipeline, PipelineOptions};
use std::error::Error;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

const READINGS: u32 = 20;

fn main() -> Result {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("sensor") {
        return sensor(Path::new(&args[1]), Path::new(&args[2]));
    }
    let dir = std::env::temp_dir().join(format!("shmq-async-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (alerts_path, metrics_path) = (dir.join("alerts"), dir.join("metrics"));
    let options = PipelineOptions::new().capacity(64).max_message(256);
    let alerts = Pipeline::create(&alerts_path, &options)?;
    let metrics = Pipeline::create(&metrics_path, &options)?;
    let result = monitor(&alerts, &metrics, &alerts_path, &metrics_path);
    std::fs::remove_dir_all(&dir)?;
    result
}

/// The async side: one task, two queues, a timeout.
fn monitor(alerts: &Pipeline, metrics: &Pipeline, a: &Path, m: &Path) -> Result {
    let (alerts, metrics) = (alerts.consumer()?, metrics.consumer()?);
    let mut sensor = Command::new(std::env::current_exe()?)
        .args(["sensor".as_ref(), a.as_os_str(), m.as_os_str()])
        .spawn()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let (mut seen_alerts, mut seen_metrics) = (0, 0);
    runtime.block_on(async {
        while seen_alerts + seen_metrics < READINGS {
            tokio::select! {
                msg = alerts.recv_async() => {
                    println!("ALERT  {}", String::from_utf8_lossy(&msg?));
                    seen_alerts += 1;
                }
                msg = metrics.recv_async() => {
                    println!("metric {}", String::from_utf8_lossy(&msg?));
                    seen_metrics += 1;
                }
                _ = tokio::time::sleep(Duration::from_secs(5)) => {
                    return Err("the sensor went quiet".into());
                }
            }
        }
        Ok::<_, Box<dyn Error>>(())
    })?;
    sensor.wait()?;
    println!("{seen_alerts} alerts and {seen_metrics} metrics, each woken by the other process");
    Ok(())
}

/// The other process: a reading every 20 ms, every fifth one an alert.
fn sensor(alerts: &Path, metrics: &Path) -> Result {
    let alerts = Pipeline::open(alerts)?.producer()?;
    let metrics = Pipeline::open(metrics)?.producer()?;
    for i in 0..READINGS {
        std::thread::sleep(Duration::from_millis(20));
        let reading = format!("reading {i}: {} °C", 20 + i % 7);
        if i % 5 == 4 {
            alerts.send(reading.as_bytes())?;
        } else {
            metrics.send(reading.as_bytes())?;
        }
    }
    Ok(())
}
