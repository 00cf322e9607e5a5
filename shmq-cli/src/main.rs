//! The `shmq` command: see inside shmq queue files, and use them from the shell.
//!
//! A thin layer over the library: each subcommand is a module; `main` parses the arguments
//! (clap, with these doc comments as the help text), runs one, and turns any error into one
//! line on stderr and exit status 1.

mod create;
mod gc;
mod ls;
mod payload;
mod recv;
mod repair;
mod rm;
mod scan;
mod send;
mod stat;
mod tail;
mod top;
mod view;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// What a command returns: any error is printed as one line.
pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Inspect and use shmq queues (shared-memory message queues on one Linux host).
#[derive(Parser, Debug)]
#[command(name = "shmq", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the shmq files in a directory: kind, size, depth, participants alive and dead.
    Ls(ls::Args),
    /// Show everything about one queue: geometry, depth, counters, participants, lag.
    Stat(stat::Args),
    /// A live full-screen view of every queue in a directory (press q to quit).
    Top(top::Args),
    /// Print a channel's messages as they are published (attaches as a subscriber).
    Tail(tail::Args),
    /// Receive messages from a pipeline (consumes them: they are gone for other consumers).
    Recv(recv::Args),
    /// Send messages: into a pipeline, on a channel (with a topic), or as requests to a service.
    Send(send::Args),
    /// Create a queue file.
    Create(create::Args),
    /// Remove a queue file (refuses while live participants are attached, unless --force).
    Rm(rm::Args),
    /// Find dead participants and undo what they held; print what was undone.
    Repair(repair::Args),
    /// Remove the queue files in a directory that no live process is attached to.
    Gc(gc::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ls(a) => ls::run(a),
        Command::Stat(a) => stat::run(a),
        Command::Top(a) => top::run(a),
        Command::Tail(a) => tail::run(a),
        Command::Recv(a) => recv::run(a),
        Command::Send(a) => send::run(a),
        Command::Create(a) => create::run(a),
        Command::Rm(a) => rm::run(a),
        Command::Repair(a) => repair::run(a),
        Command::Gc(a) => gc::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`shmq tail ... | head`): not an error.
        Err(e) if is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmq: {e}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// The directory queues live in unless told otherwise.
pub fn default_dir() -> PathBuf {
    PathBuf::from("/dev/shm")
}
