//! `shmq tail FILE`: subscribe to a channel and print its messages as they come.

use crate::payload::line;
use shmq::{PubSub, RecvError};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The channel file.
    file: PathBuf,
    /// Only topics starting with PREFIX (repeat for several; none means every topic).
    #[arg(long = "topic", value_name = "PREFIX")]
    topics: Vec<String>,
    /// Start with the oldest message the channel still retains.
    #[arg(long)]
    history: bool,
    /// Stop after N messages.
    #[arg(short = 'n', long = "count", value_name = "N")]
    count: Option<u64>,
    /// One JSON object per message.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> crate::Result {
    let channel = PubSub::open(&args.file)?;
    let prefixes: Vec<&[u8]> = args.topics.iter().map(|t| t.as_bytes()).collect();
    let mut subscribe = channel.subscribe(&prefixes);
    if args.history {
        subscribe = subscribe.history();
    }
    let mut subscriber = subscribe.attach()?;
    let mut out = std::io::stdout().lock();
    let mut seen = 0;
    while args.count.is_none_or(|n| seen < n) {
        match subscriber.recv() {
            Ok(msg) => {
                writeln!(
                    out,
                    "{}",
                    line(Some(msg.topic()), msg.payload(), false, args.json)
                )?;
                out.flush()?;
                seen += 1;
            }
            Err(RecvError::Lagged(n)) => eprintln!("shmq: fell behind and missed {n} messages"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
