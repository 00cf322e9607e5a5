//! `shmq recv FILE`: consume messages from a pipeline.

use crate::payload::line;
use shmq::{Pipeline, RecvTimeoutError};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The pipeline file.
    file: PathBuf,
    /// How many messages to receive.
    #[arg(short = 'n', long = "count", value_name = "N", default_value_t = 1)]
    count: u64,
    /// Give up (exit 1) if no message arrives within SECS seconds (default: wait for ever).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// One JSON object per message.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> crate::Result {
    let timeout = args
        .timeout
        .map(|s| {
            Duration::try_from_secs_f64(s).map_err(|_| format!("--timeout {s} is not a duration"))
        })
        .transpose()?;
    let consumer = Pipeline::open(&args.file)?.consumer()?;
    let mut out = std::io::stdout().lock();
    for _ in 0..args.count {
        let msg = match timeout {
            Some(t) => consumer.recv_timeout(t),
            None => consumer.recv().map_err(RecvTimeoutError::from),
        };
        let msg = match msg {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "no message arrived within {}s",
                    timeout.unwrap_or_default().as_secs_f64()
                )
                .into())
            }
            Err(e) => return Err(e.into()),
        };
        // Printed, then acknowledged (when `msg` is dropped).
        writeln!(out, "{}", line(None, &msg, msg.redelivered(), args.json))?;
        out.flush()?;
    }
    Ok(())
}
