//! `shmq send FILE [MSG | -]`: send into a pipeline, publish on a channel, or request from a
//! service (printing the reply).

use crate::payload::line;
use shmq::inspect::Kind;
use shmq::{PubSub, Service};
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The queue file.
    file: PathBuf,
    /// The message; `-` or nothing reads standard input, one message per line.
    message: Option<String>,
    /// The topic to publish under (channels only).
    #[arg(long)]
    topic: Option<String>,
    /// Send all of standard input as one message (instead of one message per line).
    #[arg(long)]
    raw: bool,
    /// Services: how long to wait for each reply, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,
    /// Services: print replies as JSON.
    #[arg(long)]
    json: bool,
}

/// Calls `send` with each message in order: the argument, all of stdin (`--raw`), or each
/// line of stdin as soon as it is read (so a `shmq send` fed by a pipe sends as it goes).
fn each_message(args: &Args, mut send: impl FnMut(&[u8]) -> crate::Result) -> crate::Result {
    match args.message.as_deref() {
        Some(msg) if msg != "-" => {
            if args.raw {
                return Err("--raw reads standard input; give no MESSAGE (or -)".into());
            }
            send(msg.as_bytes())
        }
        _ if args.raw => {
            let mut all = Vec::new();
            std::io::stdin().lock().read_to_end(&mut all)?;
            send(&all)
        }
        _ => {
            for line in std::io::stdin().lock().split(b'\n') {
                send(&line?)?;
            }
            Ok(())
        }
    }
}

pub fn run(args: Args) -> crate::Result {
    let kind = shmq::inspect::inspect(&args.file)?.kind;
    if args.topic.is_some() && !matches!(kind, Kind::PubSub(_)) {
        return Err(format!(
            "--topic is for channels, and {} is a {}",
            args.file.display(),
            kind.name()
        )
        .into());
    }
    match kind {
        Kind::Pipeline => {
            let producer = shmq::Pipeline::open(&args.file)?.producer()?;
            each_message(&args, |msg| Ok(producer.send(msg)?))
        }
        Kind::PubSub(_) => {
            let publisher = PubSub::open(&args.file)?.publisher()?;
            let topic = args.topic.as_deref().unwrap_or("").as_bytes();
            each_message(&args, |msg| Ok(publisher.publish(topic, msg)?))
        }
        Kind::Service => {
            let timeout = Duration::try_from_secs_f64(args.timeout)
                .map_err(|_| format!("--timeout {} is not a duration", args.timeout))?;
            let client = Service::open(&args.file)?.client()?;
            let mut out = std::io::stdout().lock();
            each_message(&args, |msg| {
                let reply = client.request_timeout(msg, timeout)?;
                writeln!(out, "{}", line(None, reply.payload(), false, args.json))?;
                Ok(out.flush()?)
            })
        }
    }
}
