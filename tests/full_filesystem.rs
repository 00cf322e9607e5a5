//! A full filesystem (Docker's `/dev/shm` is 64 MiB by default): a queue that does not fit
//! fails at create with a clear error and leaves nothing behind, and a queue that does fit has
//! its space reserved, so filling the filesystem afterwards never makes it fault (`SIGBUS`).
//!
//! Each test mounts a small tmpfs of its own at a unique point under `/tmp` (root only: the
//! tests skip, saying so, otherwise) and always unmounts it, also when an assertion fails.

mod common;

use common::{child, s, HANG};
use shmq::{Error, Pipeline, PipelineOptions, PubSub, PubSubOptions, Service, ServiceOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "fill_and_drain" => fill_and_drain(args),
        "create_too_large" => create_too_large(args),
        "create_fitting" => create_fitting(args),
        other => panic!("unknown role {other:?}"),
    });
}

/// args: path. Fills every slot of the queue with a maximum-size message, then drains and
/// checks them: every page of the file is written and read.
fn fill_and_drain(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let (producer, consumer) = (q.producer().unwrap(), q.consumer().unwrap());
    let max = q.max_message();
    for i in 0..q.capacity() {
        producer.try_send(&vec![i as u8; max]).unwrap();
    }
    for i in 0..q.capacity() {
        let m = consumer.try_recv().unwrap();
        assert!(
            m.len() == max && m.iter().all(|&b| b == i as u8),
            "message {i}"
        );
    }
}

/// args: directory. Tries to create one queue of each kind, each larger than the filesystem.
fn create_too_large(args: &[String]) {
    let dir = Path::new(&args[0]);
    // Each is several MiB: 1024 slots of 4 KiB.
    let q = dir.join("pipeline");
    let e =
        Pipeline::create(&q, &PipelineOptions::new().capacity(1024).max_message(4096)).unwrap_err();
    assert_no_space(&e, &q);
    let c = dir.join("pubsub");
    let e = PubSub::create(&c, &PubSubOptions::new().capacity(1024).max_message(4096)).unwrap_err();
    assert_no_space(&e, &c);
    let r = dir.join("service");
    let e = Service::create(
        &r,
        &ServiceOptions::new()
            .request_capacity(1024)
            .max_message(4096),
    )
    .unwrap_err();
    assert_no_space(&e, &r);
}

/// args: path. Creates a queue of about half a MiB.
fn create_fitting(args: &[String]) {
    drop(
        Pipeline::create(
            &args[0],
            &PipelineOptions::new().capacity(100).max_message(4096),
        )
        .unwrap(),
    );
}

/// Runs `role` in a child process (so that a fault kills the child, not the test, which then
/// still unmounts) and asserts it succeeded without dying by a signal.
fn run_child(role: &str, args: &[&str]) {
    let mut c = child(role, args);
    let status = c
        .wait_timeout(HANG)
        .unwrap_or_else(|| panic!("{role} hung"));
    assert_eq!(status.signal(), None, "{role} died by signal: {status}");
    assert!(status.success(), "{role} failed: {status}");
}

/// A tmpfs of `size` mounted at a fresh directory; unmounted and removed on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts one, or returns `None` (saying why) when this process cannot.
    fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { nix::libc::geteuid() } != 0 {
            eprintln!("{test}: skipped: mounting a tmpfs needs root");
            return None;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = PathBuf::from(format!(
            "/tmp/shmq-tmpfs-{}-{nanos}-{test}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            let _ = std::fs::remove_dir(&dir);
            eprintln!("{test}: skipped: could not mount a tmpfs ({status:?})");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn join(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Bytes in use on the filesystem.
    fn used(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.dir).unwrap();
        (st.blocks() - st.blocks_free()) * st.fragment_size()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a child not yet reaped): detach it now, the kernel frees it later.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn assert_no_space(e: &Error, path: &Path) {
    match e {
        Error::Io { source, op, .. } => {
            assert_eq!(source.raw_os_error(), Some(nix::libc::ENOSPC), "{e:?}");
            assert_eq!(*op, "reserve space for", "{e:?}");
        }
        other => panic!("expected an ENOSPC Io error, got {other:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains(s(path)) && text.contains("No space left"),
        "{text}"
    );
}

#[test]
fn queue_larger_than_the_filesystem_fails_at_create_and_leaves_nothing() {
    let Some(fs) = Tmpfs::mount("too-large", "1m") else {
        return;
    };
    let used_before = fs.used();
    run_child("create_too_large", &[s(&fs.dir)]);
    assert_eq!(
        entries(&fs.dir),
        Vec::<String>::new(),
        "a partial file was left behind"
    );
    assert_eq!(fs.used(), used_before, "space is still held");
}

#[test]
fn queue_that_fits_never_faults_after_the_filesystem_fills_up() {
    let Some(fs) = Tmpfs::mount("fits", "1m") else {
        return;
    };
    let q = fs.join("q");
    // About half the filesystem.
    run_child("create_fitting", &[s(&q)]);
    // Fill the rest until the filesystem is full.
    let mut filler = std::fs::File::create(fs.join("filler")).unwrap();
    let chunk = vec![0xa5u8; 4096];
    let full = loop {
        match filler.write_all(&chunk) {
            Ok(()) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(full.raw_os_error(), Some(nix::libc::ENOSPC), "{full:?}");
    // Another process writes and reads every slot: its pages were reserved at create.
    run_child("fill_and_drain", &[s(&q)]);
}
