//! `shmq create FILE --kind KIND`: create a queue file (or, with --dry-run, say how big it
//! would be).

use shmq::{Overflow, PipelineOptions, PubSubOptions, ServiceOptions};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindArg {
    /// A work queue: each message to one consumer.
    Pipeline,
    /// Publish-subscribe: every message to every subscriber.
    Pubsub,
    /// Request-reply: requests spread over servers, replies back to the client that asked.
    Service,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverflowArg {
    /// Overwrite the oldest message; slow subscribers lag.
    DropOldest,
    /// Publishers wait for the slowest subscriber.
    Block,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The file to create (it must not exist).
    file: PathBuf,
    /// Which pattern the queue serves.
    #[arg(long, value_enum)]
    kind: KindArg,
    /// Slots in the ring (the request ring, for a service). Default 1024.
    #[arg(long)]
    capacity: Option<usize>,
    /// Largest message in bytes. Default 1024.
    #[arg(long)]
    max_message: Option<usize>,
    /// Pipeline: most producers and consumers attached at once. Default 64.
    #[arg(long)]
    max_participants: Option<usize>,
    /// Channel: largest topic in bytes. Default 64.
    #[arg(long)]
    max_topic: Option<usize>,
    /// Channel: most publishers. Default 16.
    #[arg(long)]
    max_publishers: Option<usize>,
    /// Channel: most subscribers. Default 16.
    #[arg(long)]
    max_subscribers: Option<usize>,
    /// Channel: what publishers do when a subscriber is a ring behind. Default drop-oldest.
    #[arg(long, value_enum)]
    overflow: Option<OverflowArg>,
    /// Service: most clients. Default 64.
    #[arg(long)]
    max_clients: Option<usize>,
    /// Service: most servers. Default 64.
    #[arg(long)]
    max_servers: Option<usize>,
    /// Service: slots in each client's reply ring (its most outstanding requests). Default 64.
    #[arg(long)]
    reply_capacity: Option<usize>,
    /// Permission bits in octal, e.g. 660. Default 600.
    #[arg(long, value_parser = parse_mode)]
    mode: Option<u32>,
    /// Print the file size the queue would have, and create nothing.
    #[arg(long)]
    dry_run: bool,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal permission mode like 600 or 660"))
}

/// Refuses options that belong to another kind, so a typo never silently does nothing.
fn refuse(args: &Args) -> crate::Result {
    let given: [(&str, bool, &[KindArg]); 8] = [
        (
            "--max-participants",
            args.max_participants.is_some(),
            &[KindArg::Pipeline],
        ),
        ("--max-topic", args.max_topic.is_some(), &[KindArg::Pubsub]),
        (
            "--max-publishers",
            args.max_publishers.is_some(),
            &[KindArg::Pubsub],
        ),
        (
            "--max-subscribers",
            args.max_subscribers.is_some(),
            &[KindArg::Pubsub],
        ),
        ("--overflow", args.overflow.is_some(), &[KindArg::Pubsub]),
        (
            "--max-clients",
            args.max_clients.is_some(),
            &[KindArg::Service],
        ),
        (
            "--max-servers",
            args.max_servers.is_some(),
            &[KindArg::Service],
        ),
        (
            "--reply-capacity",
            args.reply_capacity.is_some(),
            &[KindArg::Service],
        ),
    ];
    for (flag, set, kinds) in given {
        if set && !kinds.contains(&args.kind) {
            return Err(format!("{flag} does not apply to a {:?} queue", args.kind).into());
        }
    }
    Ok(())
}

pub fn run(args: Args) -> crate::Result {
    refuse(&args)?;
    let size = match args.kind {
        KindArg::Pipeline => {
            let mut o = PipelineOptions::new();
            if let Some(v) = args.capacity {
                o = o.capacity(v);
            }
            if let Some(v) = args.max_message {
                o = o.max_message(v);
            }
            if let Some(v) = args.max_participants {
                o = o.max_participants(v);
            }
            if let Some(v) = args.mode {
                o = o.mode(v);
            }
            let size = o.file_size()?;
            if !args.dry_run {
                shmq::Pipeline::create(&args.file, &o)?;
            }
            size
        }
        KindArg::Pubsub => {
            let mut o = PubSubOptions::new();
            if let Some(v) = args.capacity {
                o = o.capacity(v);
            }
            if let Some(v) = args.max_message {
                o = o.max_message(v);
            }
            if let Some(v) = args.max_topic {
                o = o.max_topic(v);
            }
            if let Some(v) = args.max_publishers {
                o = o.max_publishers(v);
            }
            if let Some(v) = args.max_subscribers {
                o = o.max_subscribers(v);
            }
            if let Some(v) = args.overflow {
                o = o.overflow(match v {
                    OverflowArg::DropOldest => Overflow::DropOldest,
                    OverflowArg::Block => Overflow::Block,
                });
            }
            if let Some(v) = args.mode {
                o = o.mode(v);
            }
            let size = o.file_size()?;
            if !args.dry_run {
                shmq::PubSub::create(&args.file, &o)?;
            }
            size
        }
        KindArg::Service => {
            let mut o = ServiceOptions::new();
            if let Some(v) = args.capacity {
                o = o.request_capacity(v);
            }
            if let Some(v) = args.max_message {
                o = o.max_message(v);
            }
            if let Some(v) = args.max_clients {
                o = o.max_clients(v);
            }
            if let Some(v) = args.max_servers {
                o = o.max_servers(v);
            }
            if let Some(v) = args.reply_capacity {
                o = o.reply_capacity(v);
            }
            if let Some(v) = args.mode {
                o = o.mode(v);
            }
            let size = o.file_size()?;
            if !args.dry_run {
                shmq::Service::create(&args.file, &o)?;
            }
            size
        }
    };
    let mut out = std::io::stdout().lock();
    if args.dry_run {
        writeln!(out, "{size}")?;
    } else {
        writeln!(out, "created {} ({size} bytes)", args.file.display())?;
    }
    Ok(())
}
