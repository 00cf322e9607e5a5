//! `shmq repair FILE`: run recovery now and say what it undid.

use shmq::inspect::Kind;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The queue file.
    file: PathBuf,
}

pub fn run(args: Args) -> crate::Result {
    let kind = shmq::inspect::inspect(&args.file)?.kind;
    let stats = match kind {
        Kind::Pipeline => shmq::Pipeline::open(&args.file)?.repair()?,
        Kind::PubSub(_) => shmq::PubSub::open(&args.file)?.repair()?,
        Kind::Service => shmq::Service::open(&args.file)?.repair()?,
    };
    writeln!(
        std::io::stdout().lock(),
        "{}: reaped {} dead participants; skipped {} half-written slots; \
         redelivered {} unacknowledged messages; released {} other holdings",
        args.file.display(),
        stats.reaped,
        stats.skipped,
        stats.redelivered,
        stats.released
    )?;
    Ok(())
}
