//! The `shmq` binary, run as a real process against real queues used by real producer,
//! consumer and server processes (the `shmq` binary itself, or this test binary re-executed
//! with a role: see ../../tests/common/mod.rs).

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{child, signal_ready, wait_ready, wait_until, TempDir, HANG};
use serde_json::Value;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// Roles this test binary plays when re-executed.
#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        // Takes one message from the pipeline and holds it, unacknowledged, until killed.
        "hold-one" => {
            let consumer = shmq::Pipeline::open(&args[0]).unwrap().consumer().unwrap();
            let msg = consumer.recv_timeout(HANG).unwrap();
            signal_ready(&args[1]);
            std::thread::sleep(HANG * 10);
            drop(msg);
        }
        // Answers requests with their payload in upper case, until killed.
        "upper-server" => {
            let server = shmq::Service::open(&args[0]).unwrap().server().unwrap();
            signal_ready(&args[1]);
            loop {
                let request = server.recv().unwrap();
                let reply = request.payload().to_ascii_uppercase();
                request.reply(&reply).unwrap();
            }
        }
        other => panic!("unknown role {other}"),
    });
}

fn shmq() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shmq"));
    cmd.env("RUST_BACKTRACE", "1");
    cmd
}

/// Runs `shmq ARGS` to completion.
fn run(args: &[&str]) -> Output {
    shmq().args(args).output().expect("run the shmq binary")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `shmq ARGS`, expecting success; returns its standard output.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "shmq {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str]) -> Value {
    let text = ok(args);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("shmq {args:?} printed bad JSON ({e}): {text}"))
}

/// Runs `shmq ARGS`, expecting exit status 1 with exactly one line on stderr (no panic, no
/// backtrace); returns that line.
fn fails(args: &[&str]) -> String {
    fails_with(shmq().args(args), args)
}

fn fails_with(cmd: &mut Command, args: &[&str]) -> String {
    let out = cmd.output().expect("run the shmq binary");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "shmq {args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line for {args:?}: {stderr}");
    assert!(stderr.starts_with("shmq: "), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout for {args:?}");
    stderr.trim_end().to_string()
}

/// A `shmq` process running in the background, killed when dropped.
struct Background(Child);

impl Background {
    fn spawn(args: &[&str]) -> Self {
        let child = shmq()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shmq");
        Background(child)
    }

    fn stdin(&mut self) -> &mut std::process::ChildStdin {
        self.0.stdin.as_mut().unwrap()
    }

    /// Closes its stdin and waits for it to exit; returns its stdout.
    fn finish(mut self) -> String {
        drop(self.0.stdin.take());
        let ok = wait_until(HANG, || self.0.try_wait().unwrap().is_some());
        assert!(ok, "shmq did not exit");
        let mut out = String::new();
        std::io::Read::read_to_string(self.0.stdout.as_mut().unwrap(), &mut out).unwrap();
        assert!(self.0.wait().unwrap().success());
        out
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn report(path: &Path) -> shmq::inspect::Report {
    shmq::inspect::inspect(path).unwrap()
}

fn participant<'a>(stat: &'a Value, role: &str) -> &'a Value {
    stat["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == role)
        .unwrap_or_else(|| panic!("no {role} in {stat}"))
}

#[test]
fn ls_and_stat_show_live_participants_then_a_killed_consumer_as_dead_holding_one() {
    let dir = TempDir::new("cli-stat");
    let q = dir.join("jobs");
    ok(&["create", s(&q), "--kind", "pipeline", "--capacity", "16"]);

    // A producer process: `shmq send` reading messages from its stdin, kept open.
    let mut producer = Background::spawn(&["send", s(&q), "-"]);
    producer.stdin().write_all(b"first\nsecond\n").unwrap();
    producer.stdin().flush().unwrap();
    assert!(wait_until(HANG, || report(&q).ring.tail == 2), "both sent");
    // A consumer process holding the first message.
    let ready = dir.join("holding");
    let mut holder = child("hold-one", &[s(&q), s(&ready)]);
    wait_ready(&mut holder, &ready);

    let stat = json(&["stat", s(&q), "--json"]);
    assert_eq!(stat["kind"], "pipeline");
    assert_eq!(stat["capacity"], 16);
    assert_eq!((&stat["alive"], &stat["dead"]), (&2.into(), &0.into()));
    assert_eq!(stat["depth"], 1, "one message left to take: {stat}");
    assert_eq!(stat["totals"]["sent"], 2);
    let consumer = participant(&stat, "consumer");
    assert_eq!(consumer["pid"], holder.id());
    assert_eq!(
        (&consumer["alive"], &consumer["holds"]),
        (&true.into(), &1.into())
    );
    assert_eq!(participant(&stat, "producer")["counts"]["sent"], 2);

    let ls = json(&["ls", s(dir.path()), "--json"]);
    let entries = ls.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{ls}");
    assert_eq!(
        (&entries[0]["path"], &entries[0]["alive"]),
        (&s(&q).into(), &2.into())
    );
    let text = ok(&["ls", s(dir.path())]);
    assert!(text.lines().nth(1).unwrap().contains("pipeline"), "{text}");

    holder.kill();
    let stat = json(&["stat", s(&q), "--json"]);
    assert_eq!(
        (&stat["alive"], &stat["dead"]),
        (&1.into(), &1.into()),
        "{stat}"
    );
    let consumer = participant(&stat, "consumer");
    assert_eq!(
        (&consumer["alive"], &consumer["holds"]),
        (&false.into(), &1.into())
    );
    assert_eq!(consumer["holds_reading"], 1);
    let text = ok(&["stat", s(&q)]);
    let line = text.lines().find(|l| l.contains("consumer")).unwrap();
    assert!(
        line.contains("DEAD") && line.contains("1 unacked"),
        "{text}"
    );
    assert!(text.contains("1 alive, 1 dead"), "{text}");

    let repaired = ok(&["repair", s(&q)]);
    assert!(
        repaired.contains("reaped 1 dead") && repaired.contains("redelivered 1"),
        "{repaired}"
    );
    let stat = json(&["stat", s(&q), "--json"]);
    assert_eq!(
        (&stat["alive"], &stat["dead"]),
        (&1.into(), &0.into()),
        "{stat}"
    );
    assert_eq!(stat["recovery"]["reaped"], 1);

    // The dead consumer's message comes back (flagged), then the next one.
    let got = ok(&["recv", s(&q), "-n", "2", "--timeout", "30", "--json"]);
    let lines: Vec<Value> = got
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["payload"]["text"], "first");
    assert_eq!(lines[0]["redelivered"], true);
    assert_eq!(lines[1]["payload"]["text"], "second");
    producer.finish();
    let stat = json(&["stat", s(&q), "--json"]);
    assert_eq!(
        stat["totals"]["sent"], 2,
        "counts survive their participants: {stat}"
    );
    assert_eq!(stat["totals"]["received"], 2, "{stat}");
    assert_eq!(stat["participants"].as_array().unwrap().len(), 0);
}

#[test]
fn inspecting_changes_no_byte_and_works_after_every_process_died() {
    let dir = TempDir::new("cli-readonly");
    let q = dir.join("q");
    ok(&["create", s(&q), "--kind", "pipeline", "--capacity", "8"]);
    ok(&["send", s(&q), "one"]);
    ok(&["send", s(&q), "two"]);
    let ready = dir.join("holding");
    let mut holder = child("hold-one", &[s(&q), s(&ready)]);
    wait_ready(&mut holder, &ready);
    holder.kill();

    let before = std::fs::read(&q).unwrap();
    let stat = json(&["stat", s(&q), "--json"]);
    ok(&["stat", s(&q)]);
    ok(&["ls", s(dir.path())]);
    ok(&["ls", s(dir.path()), "--stale"]);
    ok(&["gc", s(dir.path()), "--dry-run"]);
    assert_eq!(
        std::fs::read(&q).unwrap(),
        before,
        "inspection changed the file"
    );
    assert_eq!(
        (&stat["alive"], &stat["dead"]),
        (&0.into(), &1.into()),
        "{stat}"
    );
    assert_eq!(participant(&stat, "consumer")["holds"], 1);
    assert_eq!(stat["depth"], 1);
    // Read-only: it works for a user who may read the file but not write it.
    std::fs::set_permissions(&q, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    let mut stat = shmq();
    stat.args(["stat", s(&q), "--json"]);
    as_another_user_if_root(&mut stat);
    let out = stat.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        seen["dead"], 1,
        "liveness is tested without write access: {seen}"
    );
}

/// Root may write anything: a command that must lack a permission runs as `nobody` instead.
/// Returns whether it does.
fn as_another_user_if_root(cmd: &mut Command) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if root {
        cmd.uid(65534).gid(65534);
    }
    root
}

#[test]
fn send_then_recv_round_trips_text_lines_raw_input_and_binary() {
    let dir = TempDir::new("cli-roundtrip");
    let q = dir.join("q");
    ok(&["create", s(&q), "--kind", "pipeline"]);
    ok(&["send", s(&q), "hello world"]);
    let mut lines = shmq()
        .args(["send", s(&q)])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    lines
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    assert!(lines.wait().unwrap().success());
    let mut raw = shmq()
        .args(["send", s(&q), "--raw"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    raw.stdin
        .take()
        .unwrap()
        .write_all(&[0, 1, 0xfe, b'\n', 0xff])
        .unwrap();
    assert!(raw.wait().unwrap().success());

    let got = ok(&["recv", s(&q), "-n", "4", "--timeout", "30"]);
    assert_eq!(got, "hello world\nline one\nline two\n0x0001fe0aff\n");
    ok(&["send", s(&q), "as json"]);
    let got = ok(&["recv", s(&q), "--json", "--timeout", "30"]);
    assert_eq!(got, "{\"payload\":{\"text\":\"as json\"}}\n");
    let line = fails(&["recv", s(&q), "--timeout", "0.2"]);
    assert!(line.contains("no message arrived"), "{line}");
}

#[test]
fn send_to_a_service_prints_the_reply() {
    let dir = TempDir::new("cli-service");
    let q = dir.join("svc");
    ok(&[
        "create",
        s(&q),
        "--kind",
        "service",
        "--max-clients",
        "4",
        "--max-servers",
        "2",
    ]);
    let ready = dir.join("serving");
    let mut server = child("upper-server", &[s(&q), s(&ready)]);
    wait_ready(&mut server, &ready);
    assert_eq!(ok(&["send", s(&q), "hello"]), "HELLO\n");
    // The client has its reply as soon as the server commits it; the server counts the reply
    // and acknowledges the request just after, in its own process: look once it has.
    let mut stat = json(&["stat", s(&q), "--json"]);
    assert!(
        wait_until(HANG, || {
            stat = json(&["stat", s(&q), "--json"]);
            participant(&stat, "server")["holds"] == 0
        }),
        "the server acknowledged the request: {stat}"
    );
    assert_eq!(stat["kind"], "service");
    assert_eq!(
        participant(&stat, "server")["counts"]["sent"],
        1,
        "one reply: {stat}"
    );
    assert_eq!(stat["totals"]["sent"], 2, "a request and a reply: {stat}");
}

#[test]
fn tail_prints_only_the_topics_asked_for() {
    let dir = TempDir::new("cli-tail");
    let q = dir.join("events");
    ok(&[
        "create",
        s(&q),
        "--kind",
        "pubsub",
        "--max-subscribers",
        "4",
    ]);
    ok(&["send", s(&q), "--topic", "sensors/old", "before"]);
    let tail = Background::spawn(&["tail", s(&q), "--topic", "sensors/", "-n", "2"]);
    assert!(
        wait_until(HANG, || report(&q).subscribers.len() == 1),
        "tail attached"
    );
    ok(&["send", s(&q), "--topic", "sensors/a", "x"]);
    ok(&["send", s(&q), "--topic", "other", "y"]);
    ok(&["send", s(&q), "--topic", "sensors/b", "z"]);
    assert_eq!(tail.finish(), "sensors/a\tx\nsensors/b\tz\n");

    let history = ok(&["tail", s(&q), "--history", "-n", "1", "--json"]);
    assert_eq!(
        history,
        "{\"topic\":{\"text\":\"sensors/old\"},\"payload\":{\"text\":\"before\"}}\n"
    );
    let stat = json(&["stat", s(&q), "--json"]);
    assert_eq!(
        (&stat["kind"], &stat["overflow"]),
        (&"pubsub".into(), &"drop-oldest".into())
    );
    assert_eq!(stat["tail"], 4);
}

#[test]
fn stat_shows_subscriber_lag_and_watch_adds_rates() {
    let dir = TempDir::new("cli-lag");
    let q = dir.join("events");
    ok(&["create", s(&q), "--kind", "pubsub", "--capacity", "8"]);
    let tail = Background::spawn(&["tail", s(&q), "-n", "100"]);
    assert!(
        wait_until(HANG, || report(&q).subscribers.len() == 1),
        "tail attached"
    );
    let mut sender = Background::spawn(&["send", s(&q), "--topic", "t"]);
    sender.stdin().write_all(b"1\n2\n3\n").unwrap();
    sender.stdin().flush().unwrap();
    assert!(wait_until(HANG, || report(&q).ring.tail == 3));
    assert!(
        wait_until(HANG, || report(&q).subscribers[0].lag == 0),
        "tail reads all three"
    );

    let watch = ok(&["stat", s(&q), "--json", "--watch", "0.2", "--count", "2"]);
    let reports: Vec<Value> = watch
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2);
    assert!(reports[0].get("rates").is_none());
    assert!(reports[1]["rates"]["sent_per_sec"].as_f64().unwrap() >= 0.0);
    let subscriber = &reports[1]["subscribers"][0];
    assert_eq!(
        (&subscriber["position"], &subscriber["lag"]),
        (&3.into(), &0.into())
    );
    drop(tail);
    drop(sender);
}

#[test]
fn gc_removes_only_files_no_live_process_is_attached_to() {
    let dir = TempDir::new("cli-gc");
    let stale = dir.join("stale");
    let live = dir.join("live");
    let other = dir.join("not-shmq");
    ok(&["create", s(&stale), "--kind", "pipeline"]);
    ok(&["create", s(&live), "--kind", "pipeline"]);
    std::fs::write(&other, b"some other program's shared memory").unwrap();
    let mut producer = Background::spawn(&["send", s(&live), "-"]);
    producer.stdin().write_all(b"keep me\n").unwrap();
    producer.stdin().flush().unwrap();
    assert!(wait_until(HANG, || report(&live).ring.tail == 1));

    let listed = ok(&["ls", s(dir.path()), "--stale"]);
    assert!(
        listed.contains("stale") && !listed.contains("live") && !listed.contains("not-shmq"),
        "{listed}"
    );
    let dry = ok(&["gc", s(dir.path()), "--dry-run"]);
    assert_eq!(
        dry,
        format!("would remove {} (0 messages in it)\n", s(&stale))
    );
    assert!(stale.exists());
    let done = ok(&["gc", s(dir.path())]);
    assert_eq!(done, format!("removed {}\n", s(&stale)));
    assert!(!stale.exists() && live.exists() && other.exists());
    producer.finish();
}

#[test]
fn rm_refuses_while_live_participants_are_attached_unless_forced() {
    let dir = TempDir::new("cli-rm");
    let q = dir.join("q");
    ok(&["create", s(&q), "--kind", "pipeline"]);
    let mut producer = Background::spawn(&["send", s(&q), "-"]);
    producer.stdin().write_all(b"x\n").unwrap();
    producer.stdin().flush().unwrap();
    assert!(wait_until(HANG, || report(&q).ring.tail == 1));
    let line = fails(&["rm", s(&q)]);
    assert!(
        line.contains("1 live participants") && line.contains("--force"),
        "{line}"
    );
    assert!(q.exists());
    ok(&["rm", s(&q), "--force"]);
    assert!(!q.exists());
    producer.finish();

    for (name, len) in [("short", 11), ("long", 8192)] {
        let other = dir.join(name);
        std::fs::write(&other, vec![b'x'; len]).unwrap();
        let line = fails(&["rm", s(&other), "--force"]);
        assert!(line.contains("not a shmq queue file"), "{line}");
        assert!(other.exists());
    }
}

#[test]
fn create_dry_run_prints_the_size_create_makes() {
    let dir = TempDir::new("cli-create");
    let cases: [&[&str]; 3] = [
        &[
            "--kind",
            "pipeline",
            "--capacity",
            "100",
            "--max-message",
            "300",
            "--max-participants",
            "5",
        ],
        &[
            "--kind",
            "pubsub",
            "--capacity",
            "64",
            "--max-topic",
            "20",
            "--overflow",
            "block",
            "--max-subscribers",
            "3",
        ],
        &[
            "--kind",
            "service",
            "--capacity",
            "32",
            "--max-clients",
            "3",
            "--reply-capacity",
            "5",
        ],
    ];
    for (i, flags) in cases.iter().enumerate() {
        let q = dir.join(&format!("q{i}"));
        let mut args = vec!["create", s(&q)];
        args.extend_from_slice(flags);
        let mut dry = args.clone();
        dry.push("--dry-run");
        let size: u64 = ok(&dry).trim().parse().unwrap();
        assert!(!q.exists(), "--dry-run creates nothing");
        ok(&args);
        assert_eq!(std::fs::metadata(&q).unwrap().len(), size, "{flags:?}");
    }
    let q = dir.join("mode");
    ok(&["create", s(&q), "--kind", "pipeline", "--mode", "640"]);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&q).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o640);
    let line = fails(&[
        "create",
        s(&dir.join("x")),
        "--kind",
        "pipeline",
        "--max-topic",
        "3",
    ]);
    assert!(line.contains("--max-topic does not apply"), "{line}");
    let line = fails(&[
        "create",
        s(&dir.join("x")),
        "--kind",
        "pipeline",
        "--capacity",
        "0",
    ]);
    assert!(line.contains("capacity must be between"), "{line}");
    let line = fails(&["create", s(&q), "--kind", "pipeline"]);
    assert!(line.contains("File exists"), "{line}");
}

/// Overwrites `bytes` at `offset` of the file.
fn patch(path: &Path, offset: usize, bytes: &[u8]) {
    let mut all = std::fs::read(path).unwrap();
    all[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, all).unwrap();
}

#[test]
fn every_error_exits_1_with_one_line_naming_the_problem() {
    let dir = TempDir::new("cli-errors");
    let missing = dir.join("missing");
    for cmd in ["stat", "recv", "send", "tail", "repair", "rm"] {
        let line = fails(&[cmd, s(&missing), "x"][..if cmd == "send" { 3 } else { 2 }]);
        assert!(line.contains("No such file"), "{cmd}: {line}");
    }

    let text = dir.join("text");
    std::fs::write(&text, vec![b'x'; 4096]).unwrap();
    let line = fails(&["stat", s(&text)]);
    assert!(line.contains("not a shmq queue file"), "{line}");

    let old = dir.join("old");
    ok(&["create", s(&old), "--kind", "pipeline"]);
    patch(&old, shmq::layout::field::VERSION, &1u32.to_le_bytes());
    let line = fails(&["stat", s(&old)]);
    assert!(
        line.contains("format version 1") && line.contains("reads version 2"),
        "{line}"
    );
    let line = fails(&["recv", s(&old)]);
    assert!(
        line.contains("format version 1") && line.contains("reads version 2"),
        "{line}"
    );
    let listed = ok(&["ls", s(dir.path())]);
    assert!(
        listed.contains("error:") && listed.contains("format version 1"),
        "{listed}"
    );

    let bad_header = dir.join("bad-header");
    ok(&["create", s(&bad_header), "--kind", "pipeline"]);
    patch(
        &bad_header,
        shmq::layout::field::SLOT_STRIDE,
        &8u64.to_le_bytes(),
    );
    let line = fails(&["stat", s(&bad_header)]);
    assert!(
        line.contains("invalid header") && line.contains("slot stride"),
        "{line}"
    );

    let bad_entry = dir.join("bad-entry");
    ok(&["create", s(&bad_entry), "--kind", "pipeline"]);
    patch(
        &bad_entry,
        shmq::layout::PARTICIPANTS_OFFSET,
        &9u64.to_le_bytes(),
    );
    let line = fails(&["stat", s(&bad_entry)]);
    assert!(
        line.contains("participant entry 0") && line.contains("role 9"),
        "{line}"
    );

    let private = dir.join("private");
    ok(&["create", s(&private), "--kind", "pipeline"]);
    let mut cmd = shmq();
    cmd.args(["stat", s(&private)]);
    if !as_another_user_if_root(&mut cmd) {
        std::fs::set_permissions(
            &private,
            std::os::unix::fs::PermissionsExt::from_mode(0o000),
        )
        .unwrap();
    }
    let line = fails_with(&mut cmd, &["stat", "private"]);
    assert!(line.contains("Permission denied"), "{line}");
}
