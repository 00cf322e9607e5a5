//! `shmq ls [DIR]`: one line per shmq file.

use crate::scan::shmq_files;
use crate::view::{size, ReportJson};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory to list.
    #[arg(default_value_os_t = crate::default_dir())]
    dir: PathBuf,
    /// Only files no live participant is attached to (what `shmq gc` would remove).
    #[arg(long)]
    stale: bool,
    /// One JSON array of reports (files that cannot be read appear as {"path", "error"}).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> crate::Result {
    let mut out = std::io::stdout().lock();
    let mut json = Vec::new();
    if !args.json {
        writeln!(
            out,
            "{:<40}  {:<9}  {:>10}  {:>8}  {:>5}  {:>4}",
            "PATH", "KIND", "SIZE", "DEPTH", "ALIVE", "DEAD"
        )?;
    }
    for path in shmq_files(&args.dir)? {
        match shmq::inspect::inspect(&path) {
            Ok(r) => {
                if args.stale && r.alive() > 0 {
                    continue;
                }
                if args.json {
                    json.push(serde_json::to_value(ReportJson::of(&r))?);
                } else {
                    writeln!(
                        out,
                        "{:<40}  {:<9}  {:>10}  {:>8}  {:>5}  {:>4}",
                        path.display(),
                        r.kind.name(),
                        size(r.file_len),
                        r.ring.depth,
                        r.alive(),
                        r.dead()
                    )?;
                }
            }
            // A shmq file we cannot read (another format version, corrupt, no permission):
            // listed with the reason, never with --stale (nobody can tell whether it is).
            Err(e) if !args.stale => {
                if args.json {
                    json.push(serde_json::json!({
                        "path": path.display().to_string(),
                        "error": e.to_string(),
                    }));
                } else {
                    writeln!(out, "{:<40}  error: {e}", path.display())?;
                }
            }
            Err(_) => {}
        }
    }
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}
