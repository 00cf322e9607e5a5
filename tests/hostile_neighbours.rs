//! Other users on the same host: `open` refuses a file that a user this process does not trust
//! could have written (another user's file, a file writable by others), and a queue created for
//! a named group is usable by exactly the members of that group. The rule is in
//! `src/shm/perm.rs`.
//!
//! The tests run as root and start children as other users (the test binary re-executed with a
//! role after `setgroups`/`setgid`/`setuid` in a `pre_exec` hook); they skip, saying so, when
//! not run as root. The uids and gids used (4242..) need no passwd entries.

mod common;

use common::{ChildProc, TempDir, ARGS_VAR, ARG_SEP, HANG, PARENT_VAR, ROLE_VAR};
use nix::libc;
use shmq::{Error, Pipeline, PipelineOptions, PubSub, PubSubOptions, Service, ServiceOptions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

const SERVICE_UID: u32 = 4242;
const MEMBER_UID: u32 = 4243;
const STRANGER_UID: u32 = 4244;
const SHARED_GID: u32 = 4300;
const STRANGER_GID: u32 = 4301;

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "create_group_queue" => create_group_queue(args),
        "open_and_send" => open_and_send(args),
        "open_and_recv" => open_and_recv(args),
        "open_expect_refused" => open_expect_refused(args),
        other => panic!("unknown role {other:?}"),
    });
}

/// args: path, gid. Creates a pipeline shared with the group.
fn create_group_queue(args: &[String]) {
    let gid: u32 = args[1].parse().unwrap();
    Pipeline::create(&args[0], &PipelineOptions::new().capacity(8).group(gid)).unwrap();
}

/// args: path, message. Opens the pipeline and sends the message.
fn open_and_send(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap_or_else(|e| panic!("open refused: {e}"));
    q.producer().unwrap().send(args[1].as_bytes()).unwrap();
}

/// args: path, messages... Opens the pipeline and receives exactly these messages, in order.
fn open_and_recv(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap_or_else(|e| panic!("open refused: {e}"));
    let consumer = q.consumer().unwrap();
    for want in &args[1..] {
        let got = consumer.recv_timeout(HANG).unwrap();
        assert_eq!(&*got, want.as_bytes());
    }
}

/// args: path, "untrusted" or "denied-or-untrusted". Opening must fail: with
/// `Error::Untrusted`, or (second form) with the kernel's EACCES when the file's mode does not
/// even let this user open it.
fn open_expect_refused(args: &[String]) {
    let e = Pipeline::open(&args[0]).expect_err("another user's file was opened");
    let ok = match (&e, args[1].as_str()) {
        (Error::Untrusted { .. }, _) => true,
        (Error::Io { source, .. }, "denied-or-untrusted") => {
            source.raw_os_error() == Some(libc::EACCES)
        }
        _ => false,
    };
    assert!(ok, "wrong refusal: {e:?}");
}

/// Whether the test can switch users; prints why it skips when it cannot.
fn is_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("{test}: skipped: needs root to run children as other users");
    }
    root
}

/// Starts the test binary again playing `role`, as user `uid` with group `gid` and
/// supplementary groups `groups`.
fn child_as(role: &str, args: &[&str], uid: u32, gid: u32, groups: &[u32]) -> ChildProc {
    let exe = std::env::current_exe().unwrap();
    let groups: Vec<libc::gid_t> = groups.to_vec();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, role)
        .env(ARGS_VAR, args.join(&ARG_SEP.to_string()))
        .env(PARENT_VAR, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let switch_user = move || {
        // SAFETY: `groups` is a live vector of `groups.len()` gids; setgroups only reads it.
        let ok = unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } == 0
            // SAFETY: setgid and setuid have no memory preconditions.
            && unsafe { libc::setgid(gid) } == 0
            // SAFETY: as above.
            && unsafe { libc::setuid(uid) } == 0;
        if ok {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the hook only makes async-signal-safe system calls (setgroups, setgid, setuid)
    // on memory prepared before fork, and allocates nothing unless a call fails.
    unsafe { cmd.pre_exec(switch_user) };
    ChildProc::from_child(role, cmd.spawn().expect("spawn a child as another user"))
}

fn untrusted_reason(e: &Error) -> &'static str {
    match e {
        Error::Untrusted { reason, .. } => reason,
        other => panic!("expected Error::Untrusted, got {other:?}"),
    }
}

/// A directory the test's other users can enter and create files in.
fn shared_dir(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

#[test]
fn another_users_world_writable_file_is_refused() {
    if !is_root("another_users_world_writable_file_is_refused") {
        return;
    }
    let dir = shared_dir("planted");
    let path = dir.join("q");
    // A valid queue, as an attacker would plant it: another user's, mode 0666.
    drop(Pipeline::create(&path, &PipelineOptions::new().capacity(8)).unwrap());
    chown(&path, STRANGER_UID, STRANGER_GID);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();

    let p = common::s(&path);
    child_as(
        "open_expect_refused",
        &[p, "untrusted"],
        MEMBER_UID,
        SHARED_GID,
        &[],
    )
    .expect_success(HANG);
    // Root is refused too (it could open the file, but the rule is the same).
    let e = Pipeline::open(&path).unwrap_err();
    assert_eq!(untrusted_reason(&e), "it is writable by others");
    let text = e.to_string();
    for needle in [p, "owner uid 4244", "group 4301", "mode 0666"] {
        assert!(text.contains(needle), "{text:?} does not name {needle:?}");
    }
    // Even a file of a group we are in is refused once others can write it.
    chown(&path, STRANGER_UID, 0);
    assert_eq!(
        untrusted_reason(&Pipeline::open(&path).unwrap_err()),
        "it is writable by others"
    );
}

#[test]
fn own_file_writable_by_others_is_refused() {
    // Runs as any user.
    let dir = TempDir::new("own-0666");
    let path = dir.join("q");
    drop(Pipeline::create(&path, &PipelineOptions::new().capacity(8)).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o606)).unwrap();
    let e = Pipeline::open(&path).unwrap_err();
    assert_eq!(untrusted_reason(&e), "it is writable by others");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
    Pipeline::open(&path).expect("one's own group-writable file is trusted");
}

#[test]
fn root_refuses_a_file_owned_by_another_user() {
    if !is_root("root_refuses_a_file_owned_by_another_user") {
        return;
    }
    let dir = TempDir::new("foreign");
    let path = dir.join("q");
    drop(Pipeline::create(&path, &PipelineOptions::new().capacity(8)).unwrap());
    for mode in [0o600, 0o640, 0o660] {
        // Owned by another user; the group (4301) is not root's.
        chown(&path, STRANGER_UID, STRANGER_GID);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = Pipeline::open(&path).unwrap_err();
        assert!(
            untrusted_reason(&e).contains("another user"),
            "mode {mode:o}: {e}"
        );
    }
    // Given back to root, it opens.
    chown(&path, 0, 0);
    Pipeline::open(&path).unwrap();
}

#[test]
fn group_queue_is_usable_by_members_and_refused_to_everyone_else() {
    if !is_root("group_queue_is_usable_by_members_and_refused_to_everyone_else") {
        return;
    }
    let dir = shared_dir("group");
    let path = dir.join("q");
    let p = common::s(&path);
    let shared = SHARED_GID.to_string();
    // The service user creates it for the group it is in (a supplementary group: fchown to a
    // group one is in works without privilege).
    child_as(
        "create_group_queue",
        &[p, &shared],
        SERVICE_UID,
        SERVICE_UID,
        &[SHARED_GID],
    )
    .expect_success(HANG);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (SERVICE_UID, SHARED_GID, 0o660)
    );

    // A member by supplementary group, and a member by primary group, both use it.
    child_as(
        "open_and_send",
        &[p, "from a supplementary member"],
        MEMBER_UID,
        MEMBER_UID,
        &[SHARED_GID],
    )
    .expect_success(HANG);
    child_as(
        "open_and_send",
        &[p, "from a primary member"],
        MEMBER_UID,
        SHARED_GID,
        &[],
    )
    .expect_success(HANG);
    child_as(
        "open_and_recv",
        &[p, "from a supplementary member", "from a primary member"],
        SERVICE_UID,
        SERVICE_UID,
        &[SHARED_GID],
    )
    .expect_success(HANG);

    // A user outside the group is refused (by the kernel already: mode 0660).
    child_as(
        "open_expect_refused",
        &[p, "denied-or-untrusted"],
        STRANGER_UID,
        STRANGER_GID,
        &[],
    )
    .expect_success(HANG);
    // Root, outside the group and not the owner, is refused by shmq.
    let e = Pipeline::open(&path).unwrap_err();
    assert!(untrusted_reason(&e).contains("another user"), "{e}");
    // (A user other than root gets past the kernel's check on someone else's file only if
    // the file is writable by others, which shmq refuses: see the first test.)
}

#[test]
fn group_option_is_offered_by_every_pattern() {
    // Runs as any user: its own effective gid is a group it is in.
    // SAFETY: getegid has no preconditions.
    let egid = unsafe { libc::getegid() };
    let dir = TempDir::new("group-all");
    let q = dir.join("pipeline");
    drop(Pipeline::create(&q, &PipelineOptions::new().capacity(8).group(egid)).unwrap());
    let c = dir.join("pubsub");
    drop(PubSub::create(&c, &PubSubOptions::new().capacity(8).group(egid)).unwrap());
    let s = dir.join("service");
    drop(Service::create(&s, &ServiceOptions::new().request_capacity(8).group(egid)).unwrap());
    for path in [&q, &c, &s] {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(
            (meta.gid(), meta.mode() & 0o7777),
            (egid, 0o660),
            "{path:?}"
        );
    }
    Pipeline::open(&q).unwrap();
    PubSub::open(&c).unwrap();
    Service::open(&s).unwrap();
}

#[test]
fn create_refuses_a_mode_writable_by_others_and_leaves_no_file() {
    let dir = TempDir::new("mode-666");
    let path = dir.join("q");
    for mode in [0o666, 0o602, 0o4600] {
        let e = Pipeline::create(&path, &PipelineOptions::new().mode(mode)).unwrap_err();
        assert!(matches!(e, Error::InvalidOptions(_)), "{e:?}");
        assert!(!path.exists());
    }
}
