//! `shmq rm FILE`: remove a queue file, unless live participants are attached.

use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The queue file.
    file: PathBuf,
    /// Remove it even while live participants are attached (they keep their mapping; nobody
    /// new can open it), or when it cannot be inspected (corrupt, another format version).
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> crate::Result {
    match shmq::inspect::inspect(&args.file) {
        Ok(r) if r.alive() > 0 && !args.force => {
            let pids: Vec<String> = r
                .participants
                .iter()
                .filter(|p| p.alive)
                .map(|p| p.pid.to_string())
                .collect();
            return Err(format!(
                "{} has {} live participants attached (pid {}); stop them first or use --force",
                args.file.display(),
                r.alive(),
                pids.join(", ")
            )
            .into());
        }
        Ok(_) => {}
        // Never remove what is not a shmq file, even with --force.
        Err(_) if args.force && crate::scan::is_shmq(&args.file) => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::remove_file(&args.file)
        .map_err(|e| format!("cannot remove {}: {e}", args.file.display()))?;
    writeln!(std::io::stdout().lock(), "removed {}", args.file.display())?;
    Ok(())
}
