//! `shmq gc [DIR]`: remove the queue files no live process is attached to.

use crate::scan::shmq_files;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory to clean.
    #[arg(default_value_os_t = crate::default_dir())]
    dir: PathBuf,
    /// Print what would be removed, and remove nothing.
    #[arg(long)]
    dry_run: bool,
}

/// A file is stale when it is a readable shmq file with no live participant (messages still
/// in it are lost with it). Files that cannot be inspected are left alone.
pub fn run(args: Args) -> crate::Result {
    let mut out = std::io::stdout().lock();
    for path in shmq_files(&args.dir)? {
        let Ok(report) = shmq::inspect::inspect(&path) else {
            continue;
        };
        if report.alive() > 0 {
            continue;
        }
        if args.dry_run {
            writeln!(
                out,
                "would remove {} ({} messages in it)",
                path.display(),
                report.ring.depth
            )?;
        } else {
            std::fs::remove_file(&path)
                .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
            writeln!(out, "removed {}", path.display())?;
        }
    }
    Ok(())
}
