//! Publish-subscribe across real processes (the test binary re-executed with a role, see
//! `common`): lossless delivery in Block mode, exact lag accounting and untorn messages in
//! DropOldest mode, topic filtering, history, the subscriber limit, blocking and wake-ups
//! between processes, persistence, and refusal of oversized messages.

mod common;

use common::{
    child, child_with_env, expect_all_succeed, fnv1a, s, signal_ready, uncapped_park, wait_ready,
    wait_until, ChildProc, Rng, TempDir, HANG,
};
use shmq::layout::{CTL_NOT_EMPTY, CTL_NOT_FULL, RING_CONTROL_OFFSET};
use shmq::{
    Error, Overflow, PubSub, PubSubOptions, RecvError, RecvTimeoutError, SendError,
    SendTimeoutError, Subscriber, TryRecvError, TrySendError, WaitStrategy,
};
use std::path::Path;
use std::time::{Duration, Instant};

/// Largest payload in the stress tests.
const MAX: usize = 256;
/// Largest topic in the stress tests.
const MAX_TOPIC: u32 = 24;
/// Every stress payload starts with: publisher id (u32), sequence (u32), FNV-1a of the rest
/// (u64).
const HDR: usize = 16;
/// Bound on a whole stress test, for hang detection only.
const STRESS_HANG: Duration = Duration::from_secs(150);

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "stress_pub" => stress_pub(args),
        "stress_sub" => stress_sub(args),
        "publish" => publish(args),
        "publish_range" => publish_range(args),
        "park_sub" => park_sub(args),
        "lazy_sub" => lazy_sub(args),
        "idle_sub" => idle_sub(args),
        other => panic!("unknown role {other:?}"),
    });
}

// ---------------------------------------------------------------------------------------------
// Message contents
// ---------------------------------------------------------------------------------------------

fn stress_rng(publisher: u32, seq: u32) -> Rng {
    Rng::new((u64::from(publisher) << 32 | u64::from(seq)) ^ 0x0b5e_55ed)
}

/// The topic of stress message `seq` of `publisher`: `t/<publisher>/` and 0 to 18 `x`s (4 to
/// 22 bytes).
fn stress_topic(publisher: u32, seq: u32) -> Vec<u8> {
    let mut t = format!("t/{publisher}/").into_bytes();
    t.resize(t.len() + (seq % 19) as usize, b'x');
    t
}

/// The payload length of stress message `seq` of `publisher`: the bare header to `MAX`.
fn stress_len(publisher: u32, seq: u32) -> usize {
    HDR + stress_rng(publisher, seq).below((MAX - HDR + 1) as u64) as usize
}

/// Writes the payload of stress message `seq` of `publisher` into `out` (`stress_len` bytes).
fn fill_stress(publisher: u32, seq: u32, out: &mut [u8]) {
    let mut rng = stress_rng(publisher, seq);
    let len = HDR + rng.below((MAX - HDR + 1) as u64) as usize;
    assert_eq!(out.len(), len);
    rng.fill(&mut out[HDR..]);
    let sum = fnv1a(&out[HDR..]);
    out[0..4].copy_from_slice(&publisher.to_le_bytes());
    out[4..8].copy_from_slice(&seq.to_le_bytes());
    out[8..16].copy_from_slice(&sum.to_le_bytes());
}

/// Checks a received stress message (checksum, length, every byte, topic) and returns
/// (publisher, seq).
fn check_stress(topic: &[u8], payload: &[u8]) -> (u32, u32) {
    assert!(
        payload.len() >= HDR,
        "payload of {} bytes is too short (topic {:?})",
        payload.len(),
        String::from_utf8_lossy(topic)
    );
    let publisher = u32::from_le_bytes(payload[0..4].try_into().unwrap());
    let seq = u32::from_le_bytes(payload[4..8].try_into().unwrap());
    let sum = u64::from_le_bytes(payload[8..16].try_into().unwrap());
    assert!(publisher < 2, "bad publisher id {publisher}");
    assert_eq!(
        fnv1a(&payload[HDR..]),
        sum,
        "checksum of message {publisher}/{seq} (torn?)"
    );
    let len = stress_len(publisher, seq);
    assert_eq!(payload.len(), len, "length of message {publisher}/{seq}");
    let mut want = [0u8; MAX];
    fill_stress(publisher, seq, &mut want[..len]);
    assert!(
        payload == &want[..len],
        "bytes of message {publisher}/{seq}"
    );
    assert_eq!(
        topic,
        &stress_topic(publisher, seq)[..],
        "topic of message {publisher}/{seq}"
    );
    (publisher, seq)
}

/// The payload of message `i` of the simple tests.
fn value(i: u64) -> [u8; 8] {
    i.to_le_bytes()
}

fn value_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(
        payload
            .try_into()
            .unwrap_or_else(|_| panic!("payload {payload:?} is not a u64")),
    )
}

// ---------------------------------------------------------------------------------------------
// Child roles
// ---------------------------------------------------------------------------------------------

/// args: path, publisher id, count. Publisher 0 uses `publish`, publisher 1 `try_publish`
/// (retrying when it reports `Full`) and `publish_timeout`, alternately.
fn stress_pub(args: &[String]) {
    let channel = PubSub::open(&args[0]).unwrap();
    let id: u32 = args[1].parse().unwrap();
    let count: u32 = args[2].parse().unwrap();
    let publisher = channel.publisher().unwrap();
    let mut buf = [0u8; MAX];
    for seq in 0..count {
        let len = stress_len(id, seq);
        fill_stress(id, seq, &mut buf[..len]);
        let topic = stress_topic(id, seq);
        let payload = &buf[..len];
        if id == 0 {
            publisher.publish(&topic, payload).unwrap();
        } else if seq % 2 == 0 {
            loop {
                match publisher.try_publish(&topic, payload) {
                    Ok(()) => break,
                    Err(TrySendError::Full) => std::thread::yield_now(),
                    Err(e) => panic!("try_publish: {e}"),
                }
            }
        } else {
            publisher.publish_timeout(&topic, payload, HANG).unwrap();
        }
    }
}

/// args: path, ready file, output file, total, style, slow, capacity.
///
/// Attaches (style 0: default wait strategy and `recv`; 1: `Park` and `recv`; 2: `recv_timeout`
/// with two prefixes that together cover every stress topic), signals ready, then receives
/// until the messages received plus the messages reported lost add up to `total` (every
/// message published on the channel). Checks every message and that each publisher's sequence
/// numbers rise strictly. A `slow` subscriber (1) naps now and then, and every 2000 messages
/// waits until the publishers are two rings ahead of it, so it must lag in DropOldest mode.
/// Writes `received lagged digest` to the output file, where the digest is FNV-1a over the
/// (publisher, seq) pairs in the order received.
fn stress_sub(args: &[String]) {
    let channel = PubSub::open(&args[0]).unwrap();
    let total: u64 = args[3].parse().unwrap();
    let style: u32 = args[4].parse().unwrap();
    let slow = args[5] == "1";
    let capacity: u64 = args[6].parse().unwrap();
    let prefixes: &[&[u8]] = if style == 2 { &[b"t/1/", b"t/0/"] } else { &[] };
    let mut sub = channel.subscriber(prefixes).unwrap();
    if style == 1 {
        sub.set_wait_strategy(WaitStrategy::Park);
    }
    signal_ready(&args[1]);

    let mut last: [Option<u32>; 2] = [None; 2];
    let (mut received, mut lagged) = (0u64, 0u64);
    let mut order: Vec<u8> = Vec::with_capacity(total as usize * 8);
    let deadline = Instant::now() + STRESS_HANG;
    // The slow subscriber's next long wait, after this many messages received.
    let mut fall_behind_at = 1;
    while received + lagged < total {
        if slow && received >= fall_behind_at {
            fall_behind_at += 2000;
            let target = (sub.position() + 2 * capacity).min(total);
            let ahead = wait_until(HANG, || channel.published() >= target);
            assert!(ahead, "the publishers never got to position {target}");
        }
        let got = match style {
            2 => sub.recv_timeout(Duration::from_millis(20)),
            _ => sub.recv().map_err(RecvTimeoutError::from),
        };
        match got {
            Ok(m) => {
                let (p, seq) = check_stress(m.topic(), m.payload());
                if let Some(prev) = last[p as usize] {
                    assert!(
                        seq > prev,
                        "publisher {p}: seq {seq} received after {prev} by the same subscriber"
                    );
                }
                last[p as usize] = Some(seq);
                order.extend_from_slice(&p.to_le_bytes());
                order.extend_from_slice(&seq.to_le_bytes());
                received += 1;
                if slow && received % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            Err(RecvTimeoutError::Recv(RecvError::Lagged(n))) => {
                assert!(n > 0, "Lagged(0)");
                lagged += n;
            }
            Err(RecvTimeoutError::Timeout) => assert!(
                Instant::now() < deadline,
                "received {received} and lost {lagged} of {total} messages, then nothing more"
            ),
            Err(e) => panic!("recv: {e}"),
        }
    }
    // Nothing beyond the total: every message published has been accounted for.
    assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Empty);
    std::fs::write(
        &args[2],
        format!("{received} {lagged} {}", fnv1a(&order)).as_bytes(),
    )
    .unwrap();
}

/// args: path, then pairs of topic and payload. Publishes each pair.
fn publish(args: &[String]) {
    let channel = PubSub::open(&args[0]).unwrap();
    let publisher = channel.publisher().unwrap();
    for pair in args[1..].chunks_exact(2) {
        publisher
            .publish(pair[0].as_bytes(), pair[1].as_bytes())
            .unwrap();
    }
}

/// args: path, topic prefix, from, to. Publishes `value(i)` under `<prefix><i>` for i in
/// from..to.
fn publish_range(args: &[String]) {
    let channel = PubSub::open(&args[0]).unwrap();
    let from: u64 = args[2].parse().unwrap();
    let to: u64 = args[3].parse().unwrap();
    let publisher = channel.publisher().unwrap();
    for i in from..to {
        let topic = format!("{}{i}", args[1]);
        publisher
            .publish_timeout(topic.as_bytes(), &value(i), HANG)
            .unwrap();
    }
}

/// args: path, ready file, prefix, expected topic, expected payload. Subscribes to `prefix`
/// with the `Park` strategy, signals ready, and parks in `recv` until a message arrives, which
/// must be the expected one.
fn park_sub(args: &[String]) {
    let channel = PubSub::open(&args[0]).unwrap();
    let mut sub = channel.subscriber(&[args[2].as_bytes()]).unwrap();
    sub.set_wait_strategy(WaitStrategy::Park);
    signal_ready(&args[1]);
    let m = sub.recv().unwrap();
    assert_eq!(
        (m.topic(), m.payload()),
        (args[3].as_bytes(), args[4].as_bytes())
    );
}

/// args: path, directory. Subscribes to everything and signals `ready`; when `read` appears,
/// receives one message (which must be `value(0)`) and signals `read-done`; when `exit`
/// appears, returns (detaching).
fn lazy_sub(args: &[String]) {
    let channel = PubSub::open(&args[0]).unwrap();
    let dir = Path::new(&args[1]);
    let mut sub = channel.subscriber(&[]).unwrap();
    signal_ready(s(&dir.join("ready")));
    wait_file(&dir.join("read"));
    let m = sub.recv_timeout(HANG).unwrap();
    assert_eq!(value_of(m.payload()), 0);
    signal_ready(s(&dir.join("read-done")));
    wait_file(&dir.join("exit"));
    drop(sub);
}

/// args: path, ready file, exit file. Subscribes, signals ready, waits for the exit file,
/// returns (detaching).
fn idle_sub(args: &[String]) {
    let channel = PubSub::open(&args[0]).unwrap();
    let sub = channel.subscriber(&[]).unwrap();
    signal_ready(&args[1]);
    wait_file(Path::new(&args[2]));
    drop(sub);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Waits (in a child) until `path` exists; panics after `HANG`.
fn wait_file(path: &Path) {
    assert!(
        wait_until(HANG, || path.exists()),
        "{} never appeared",
        path.display()
    );
}

/// How many waiters are parked (or about to park) on the wait cell at `cell` of the ring's
/// control block (`CTL_NOT_EMPTY`: subscribers waiting for messages; `CTL_NOT_FULL`:
/// publishers waiting for room), read through the file rather than the mapping.
fn waiters(path: &Path, cell: usize) -> u32 {
    common::registered_waiters(path, (RING_CONTROL_OFFSET + cell) as u64)
}

/// Waits until at least `n` waiters are parked on `cell`; panics if a child fails first.
fn wait_parked(path: &Path, cell: usize, n: u32, children: &mut [&mut ChildProc]) {
    let parked = wait_until(HANG, || {
        for c in children.iter_mut() {
            if let Some(st) = c.try_wait() {
                panic!("child {:?} exited ({st}) instead of blocking", c.role());
            }
        }
        waiters(path, cell) >= n
    });
    assert!(parked, "{n} waiters never parked on cell {cell}");
}

/// A received message, copied: (topic, payload). Test topics are ASCII.
type Got = (String, Vec<u8>);

fn msg(topic: &[u8], payload: &[u8]) -> Got {
    (
        String::from_utf8_lossy(topic).into_owned(),
        payload.to_vec(),
    )
}

/// Everything `sub` can receive right now, without waiting (for when every publisher is
/// done); panics on `Lagged`.
fn drain(sub: &mut Subscriber) -> Vec<Got> {
    let mut got = Vec::new();
    loop {
        match sub.try_recv() {
            Ok(m) => got.push(msg(m.topic(), m.payload())),
            Err(TryRecvError::Empty) => return got,
            Err(e) => panic!("try_recv after {} messages: {e}", got.len()),
        }
    }
}

/// Messages `from..to` as `publish_range` with `prefix` publishes them.
fn range(prefix: &str, from: u64, to: u64) -> Vec<Got> {
    (from..to)
        .map(|i| (format!("{prefix}{i}"), value(i).to_vec()))
        .collect()
}

/// Runs `publish_range` in a child process and waits for it.
fn publish_range_in_child(path: &Path, prefix: &str, from: u64, to: u64) {
    child(
        "publish_range",
        &[s(path), prefix, &from.to_string(), &to.to_string()],
    )
    .expect_success(HANG);
}

/// Reads a stress subscriber's output file: (received, lagged, digest).
fn read_result(path: &Path) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(path).unwrap();
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(v.len(), 3, "result file {text:?}");
    (v[0], v[1], v[2])
}

fn stress_options(capacity: u64, overflow: Overflow) -> PubSubOptions {
    PubSubOptions::new()
        .capacity(capacity as usize)
        .max_message(MAX)
        .max_topic(MAX_TOPIC as usize)
        .max_publishers(4)
        .max_subscribers(4)
        .overflow(overflow)
}

/// Starts stress subscribers (one per entry of `styles`, `slow[i]` saying whether it is slow)
/// and waits until each has attached; returns them with their output files.
fn start_subscribers(
    dir: &TempDir,
    path: &Path,
    total: u64,
    capacity: u64,
    styles: &[u32],
    slow: &[bool],
) -> (Vec<ChildProc>, Vec<std::path::PathBuf>) {
    let mut subs = Vec::new();
    let mut outs = Vec::new();
    for (i, style) in styles.iter().enumerate() {
        let ready = dir.join(&format!("ready-{i}"));
        let out = dir.join(&format!("out-{i}"));
        let mut c = child(
            "stress_sub",
            &[
                s(path),
                s(&ready),
                s(&out),
                &total.to_string(),
                &style.to_string(),
                if slow[i] { "1" } else { "0" },
                &capacity.to_string(),
            ],
        );
        wait_ready(&mut c, &ready);
        subs.push(c);
        outs.push(out);
    }
    (subs, outs)
}

// ---------------------------------------------------------------------------------------------
// Cross-process tests
// ---------------------------------------------------------------------------------------------

/// Block mode, 2 publisher processes × 25_000 messages (16 to 256 bytes, topics of 4 to 22
/// bytes), 3 subscriber processes attached before the first publish (default strategy, `Park`,
/// and `recv_timeout` with two prefixes covering every topic). Each subscriber must get all
/// 50_000 messages, byte-identical, each publisher's in order, and lose none; and since there
/// is one global order, all three must report the same digest of the sequence they saw.
#[test]
fn block_mode_every_subscriber_gets_every_message_intact_in_order() {
    const PER: u32 = 25_000;
    const TOTAL: u64 = 2 * PER as u64;
    const CAPACITY: u64 = 128;
    let dir = TempDir::new("ps-block");
    let path = dir.join("ch");
    let channel = PubSub::create(&path, &stress_options(CAPACITY, Overflow::Block)).unwrap();

    let (mut subs, outs) = start_subscribers(
        &dir,
        &path,
        TOTAL,
        CAPACITY,
        &[0, 1, 2],
        &[false, false, false],
    );
    let mut all: Vec<ChildProc> = (0..2)
        .map(|i| child("stress_pub", &[s(&path), &i.to_string(), &PER.to_string()]))
        .collect();
    all.append(&mut subs);
    expect_all_succeed(&mut all, STRESS_HANG);
    assert_eq!(channel.published(), TOTAL);

    let results: Vec<_> = outs.iter().map(|o| read_result(o)).collect();
    for (i, &(received, lagged, _)) in results.iter().enumerate() {
        assert_eq!(
            (received, lagged),
            (TOTAL, 0),
            "subscriber {i}: (received, lost) in Block mode"
        );
    }
    assert!(
        results.iter().all(|r| r.2 == results[0].2),
        "subscribers saw different orders: {results:?}"
    );
}

/// DropOldest mode, a 64-slot ring, 2 publisher processes × 25_000 messages, one fast and one
/// deliberately slow subscriber process (it waits, now and then, until the publishers are two
/// rings ahead). For each: received + the sum of `Lagged(n)` equals the number published
/// exactly (it stops when they add up, so a wrong count shows up as a hang caught by the
/// timeout, or as a mismatch); every received message passes its checksum and byte check; each
/// publisher's sequence numbers rise strictly. The slow one must actually have lagged.
#[test]
fn drop_oldest_slow_subscriber_received_plus_lagged_equals_published_and_nothing_torn() {
    const PER: u32 = 25_000;
    const TOTAL: u64 = 2 * PER as u64;
    const CAPACITY: u64 = 64;
    let dir = TempDir::new("ps-lossy");
    let path = dir.join("ch");
    let channel = PubSub::create(&path, &stress_options(CAPACITY, Overflow::DropOldest)).unwrap();

    let (mut subs, outs) = start_subscribers(&dir, &path, TOTAL, CAPACITY, &[0, 1], &[false, true]);
    let mut all: Vec<ChildProc> = (0..2)
        .map(|i| child("stress_pub", &[s(&path), &i.to_string(), &PER.to_string()]))
        .collect();
    all.append(&mut subs);
    expect_all_succeed(&mut all, STRESS_HANG);
    assert_eq!(channel.published(), TOTAL);

    let fast = read_result(&outs[0]);
    let slow = read_result(&outs[1]);
    for (name, (received, lagged, _)) in [("fast", fast), ("slow", slow)] {
        assert_eq!(
            received + lagged,
            TOTAL,
            "{name} subscriber: received {received} + lost {lagged}"
        );
        assert!(received > 0, "{name} subscriber received nothing");
    }
    assert!(slow.1 > 0, "the slow subscriber never lagged: {slow:?}");
}

/// A publisher process publishes under several topics; subscribers with various prefix sets
/// (attached before it starts) get exactly the messages whose topic starts with one of their
/// prefixes, in order.
#[test]
fn topic_filtering_delivers_only_matching_prefixes() {
    let dir = TempDir::new("ps-topics");
    let path = dir.join("ch");
    let channel = PubSub::create(
        &path,
        &PubSubOptions::new()
            .capacity(32)
            .max_message(64)
            .max_topic(16)
            .max_subscribers(8),
    )
    .unwrap();
    let filters: [&[&[u8]]; 6] = [
        &[b"a/"],
        &[b"a/x", b"b/"],
        &[],
        &[b""],
        &[b"c/"],
        &[b"a/x", b"a/"], // overlapping prefixes: each message still once
    ];
    let mut subs: Vec<Subscriber> = filters
        .iter()
        .map(|f| channel.subscriber(f).unwrap())
        .collect();

    let sent: [(&str, &str); 9] = [
        ("a/x", "1"),
        ("b/x", "2"),
        ("a/y", "3"),
        ("ab", "4"),
        ("", "5"),
        ("b/", "6"),
        ("a/xy", "7"),
        ("c", "8"),
        ("a", "9"),
    ];
    let mut args = vec![s(&path)];
    for (t, p) in &sent {
        args.extend([*t, *p]);
    }
    child("publish", &args).expect_success(HANG);
    assert_eq!(channel.published(), sent.len() as u64);

    let expect = |payloads: &str| -> Vec<Got> {
        sent.iter()
            .filter(|(_, p)| payloads.contains(p))
            .map(|(t, p)| msg(t.as_bytes(), p.as_bytes()))
            .collect()
    };
    let want = [
        expect("137"),       // a/
        expect("1267"),      // a/x, b/
        expect("123456789"), // everything
        expect("123456789"), // the empty prefix matches every topic
        expect(""),          // c/ (not "c")
        expect("137"),       // a/x, a/
    ];
    for (i, (sub, w)) in subs.iter_mut().zip(&want).enumerate() {
        assert_eq!(
            &drain(sub),
            w,
            "subscriber {i} with prefixes {:?}",
            filters[i]
        );
    }
}

/// A late subscriber with history gets what the ring retains, oldest first, then the live
/// messages; a late subscriber without history gets only live ones. Publishing is done by
/// child processes; both overflow modes.
#[test]
fn late_subscriber_with_history_gets_retained_then_live_messages() {
    const CAPACITY: u64 = 8;
    for overflow in [Overflow::DropOldest, Overflow::Block] {
        let dir = TempDir::new("ps-history");
        let options = PubSubOptions::new()
            .capacity(CAPACITY as usize)
            .max_message(8)
            .max_topic(8)
            .overflow(overflow);

        // Fewer than the capacity published: history has every one of them.
        let path = dir.join("few");
        let channel = PubSub::create(&path, &options).unwrap();
        publish_range_in_child(&path, "h/", 0, 5);
        let mut history = channel.subscribe(&[]).history().attach().unwrap();
        let mut live = channel.subscriber(&[]).unwrap();
        let mut filtered = channel.subscribe(&[b"h/1"]).history().attach().unwrap();
        publish_range_in_child(&path, "h/", 5, 8);
        assert_eq!(
            drain(&mut history),
            range("h/", 0, 8),
            "{overflow:?}: history subscriber attached after 5 of {CAPACITY} were published"
        );
        assert_eq!(
            drain(&mut live),
            range("h/", 5, 8),
            "{overflow:?}: live subscriber"
        );
        assert_eq!(
            drain(&mut filtered),
            range("h/", 1, 2),
            "{overflow:?}: filtered history"
        );
        drop((history, live, filtered));

        // More than the capacity published: history starts at (about) the oldest retained and
        // runs contiguously up to the newest, then continues with live messages.
        let path = dir.join("many");
        let channel = PubSub::create(&path, &options).unwrap();
        publish_range_in_child(&path, "m/", 0, 20);
        let mut history = channel.subscribe(&[]).history().attach().unwrap();
        let mut live = channel.subscriber(&[]).unwrap();
        let retained = drain(&mut history);
        let first = match retained.first() {
            Some((_, payload)) => value_of(payload),
            None => panic!("{overflow:?}: the history subscriber got nothing"),
        };
        assert!(
            (20 - CAPACITY..20 - CAPACITY + 2).contains(&first),
            "{overflow:?}: history after 20 published into {CAPACITY} slots starts at {first}"
        );
        assert_eq!(retained, range("m/", first, 20), "{overflow:?}: history");
        assert_eq!(drain(&mut live), vec![], "{overflow:?}: live");
        // As many live messages as the ring holds: no subscriber lags, no publisher waits.
        publish_range_in_child(&path, "m/", 20, 20 + CAPACITY);
        assert_eq!(
            drain(&mut history),
            range("m/", 20, 20 + CAPACITY),
            "{overflow:?}: history, then live"
        );
        assert_eq!(
            drain(&mut live),
            range("m/", 20, 20 + CAPACITY),
            "{overflow:?}: live"
        );
    }
}

/// With `max_subscribers(2)`, a third subscriber is refused with `TooManyParticipants` (again
/// and again, leaking nothing), and once one of the two (in another process) detaches by
/// exiting, its place is taken by a new subscriber that works like any other.
#[test]
fn attaching_beyond_the_subscriber_limit_is_an_error_and_a_detached_place_is_reusable() {
    let dir = TempDir::new("ps-limit");
    let path = dir.join("ch");
    let channel = PubSub::create(
        &path,
        &PubSubOptions::new()
            .capacity(8)
            .max_message(8)
            .max_publishers(1)
            .max_subscribers(2),
    )
    .unwrap();
    let (ready, exit) = (dir.join("ready"), dir.join("exit"));
    let mut other = child("idle_sub", &[s(&path), s(&ready), s(&exit)]);
    wait_ready(&mut other, &ready);
    let mut mine = channel.subscriber(&[]).unwrap();

    for _ in 0..5 {
        match channel.subscriber(&[]) {
            Err(Error::TooManyParticipants { .. }) => {}
            other => panic!("a third subscriber: {other:?}"),
        }
        match channel.subscribe(&[b"x".as_slice()]).history().attach() {
            Err(Error::TooManyParticipants { .. }) => {}
            other => panic!("a third subscriber with history: {other:?}"),
        }
    }
    // The refused attaches left the participant table alone: the publisher's place is free.
    // (Retried: while another test's thread is starting a process, the forked copy shares
    // the refused attach's lock descriptor until it execs; see the test below.)
    let mut attached = None;
    let freed = wait_until(HANG, || {
        attached = channel.publisher().ok();
        attached.is_some()
    });
    assert!(
        freed,
        "refused subscriber attaches leaked the last participant place"
    );
    let publisher = attached.unwrap();
    publisher.publish(b"t", &value(1)).unwrap();

    signal_ready(s(&exit));
    other.expect_success(HANG);
    let mut again = channel.subscriber(&[]).unwrap();
    assert_eq!(
        again.try_recv().unwrap_err(),
        TryRecvError::Empty,
        "a new subscriber in a reused place starts at the tail"
    );
    match channel.subscriber(&[]) {
        Err(Error::TooManyParticipants { .. }) => {}
        other => panic!("a third subscriber after the reuse: {other:?}"),
    }
    publisher.publish(b"t", &value(2)).unwrap();
    assert_eq!(
        drain(&mut mine),
        vec![msg(b"t", &value(1)), msg(b"t", &value(2))]
    );
    assert_eq!(drain(&mut again), vec![msg(b"t", &value(2))]);
}

/// Block mode, a subscriber process that does not read: once the ring is full, `try_publish`
/// says `Full` and `publish_timeout` times out, publishing nothing. A publish blocked (parked)
/// in this process completes when the subscriber reads one message, and again when it exits
/// (detaching); after that nothing holds the publisher back.
#[test]
fn block_mode_publisher_waits_for_slowest_and_resumes_when_it_reads_or_detaches() {
    const CAPACITY: u64 = 4;
    let dir = TempDir::new("ps-gate");
    let path = dir.join("ch");
    let channel = PubSub::create(
        &path,
        &PubSubOptions::new()
            .capacity(CAPACITY as usize)
            .max_message(8)
            .overflow(Overflow::Block),
    )
    .unwrap();
    let mut sub = child("lazy_sub", &[s(&path), s(dir.path())]);
    wait_ready(&mut sub, &dir.join("ready"));
    let mut publisher = channel.publisher().unwrap();
    publisher.set_wait_strategy(WaitStrategy::Park);

    for i in 0..CAPACITY {
        publisher.try_publish(b"m", &value(i)).unwrap();
    }
    let full = |publisher: &shmq::Publisher| {
        assert_eq!(
            publisher.try_publish(b"m", &value(99)),
            Err(TrySendError::Full)
        );
        assert_eq!(
            publisher.publish_timeout(b"m", &value(99), Duration::from_millis(30)),
            Err(SendTimeoutError::Timeout)
        );
    };
    full(&publisher);
    assert_eq!(
        channel.published(),
        CAPACITY,
        "refused publishes wrote nothing"
    );

    // A parked publish completes when the subscriber reads one message.
    std::thread::scope(|scope| {
        let blocked = scope.spawn(|| publisher.publish_timeout(b"m", &value(CAPACITY), HANG));
        wait_parked(&path, CTL_NOT_FULL, 1, &mut [&mut sub]);
        assert_eq!(channel.published(), CAPACITY);
        signal_ready(s(&dir.join("read")));
        assert_eq!(blocked.join().unwrap(), Ok(()));
    });
    wait_ready(&mut sub, &dir.join("read-done"));
    assert_eq!(channel.published(), CAPACITY + 1);
    full(&publisher);

    // A parked publish completes when the subscriber detaches (its process exits normally).
    std::thread::scope(|scope| {
        let blocked = scope.spawn(|| publisher.publish_timeout(b"m", &value(CAPACITY + 1), HANG));
        wait_parked(&path, CTL_NOT_FULL, 1, &mut [&mut sub]);
        signal_ready(s(&dir.join("exit")));
        assert_eq!(blocked.join().unwrap(), Ok(()));
    });
    sub.expect_success(HANG);
    for i in 0..3 * CAPACITY {
        publisher.try_publish(b"m", &value(i)).unwrap();
    }
    assert_eq!(channel.published(), 4 * CAPACITY + 2);
}

/// Two subscriber processes park in `recv` (`Park` strategy, no cap on the sleep, so a lost
/// wake-up hangs them) on prefix `wake/`. A message on another topic must not end their wait;
/// one publish on `wake/up` from this process wakes both.
#[test]
fn blocked_subscriber_is_woken_by_publish_from_another_process() {
    let dir = TempDir::new("ps-wake");
    let path = dir.join("ch");
    let channel = PubSub::create(&path, &PubSubOptions::new().capacity(8).max_message(16)).unwrap();
    let mut subs: Vec<ChildProc> = (0..2)
        .map(|i| {
            let ready = dir.join(&format!("ready-{i}"));
            let mut c = child_with_env(
                "park_sub",
                &[s(&path), s(&ready), "wake/", "wake/up", "good morning"],
                &uncapped_park(),
            );
            wait_ready(&mut c, &ready);
            c
        })
        .collect();
    let publisher = channel.publisher().unwrap();
    {
        let mut refs: Vec<&mut ChildProc> = subs.iter_mut().collect();
        wait_parked(&path, CTL_NOT_EMPTY, 2, &mut refs);
    }
    // Filtered out: the subscribers go back to sleep (a subscriber that returned it would fail).
    publisher.publish(b"noise/1", b"ignore me").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    for c in &mut subs {
        assert!(!c.check_not_failed(), "a subscriber returned early");
    }
    publisher.publish(b"wake/up", b"good morning").unwrap();
    // Generous for a wake-up, and far from the hang a lost one causes.
    expect_all_succeed(&mut subs, Duration::from_secs(10));
}

/// Messages live in the file: a publisher process publishes and exits while nobody else has
/// the channel open; reopening the file, a history subscriber finds them all, in order.
#[test]
fn messages_persist_in_the_file() {
    const CAPACITY: u64 = 16;
    let dir = TempDir::new("ps-persist");
    let path = dir.join("ch");
    drop(
        PubSub::create(
            &path,
            &PubSubOptions::new()
                .capacity(CAPACITY as usize)
                .max_message(8),
        )
        .unwrap(),
    );
    publish_range_in_child(&path, "p/", 0, 10);
    {
        let channel = PubSub::open(&path).unwrap();
        assert_eq!(channel.published(), 10);
        let mut history = channel.subscribe(&[]).history().attach().unwrap();
        assert_eq!(
            drain(&mut history),
            range("p/", 0, 10),
            "history after one publisher process"
        );
    }
    // Another round, past the ring's end: the newest retained ones are found.
    publish_range_in_child(&path, "p/", 10, 30);
    let channel = PubSub::open(&path).unwrap();
    assert_eq!(channel.published(), 30);
    let mut history = channel.subscribe(&[]).history().attach().unwrap();
    let first = value_of(history.try_recv().unwrap().payload());
    assert!(
        (30 - CAPACITY..30 - CAPACITY + 2).contains(&first),
        "history of a full ring starts at {first}"
    );
    assert_eq!(drain(&mut history), range("p/", first + 1, 30));
    drop(history);
    drop(channel);
    PubSub::remove(&path).unwrap();
    assert!(!path.exists());
}

/// Oversized payloads and topics are refused by every publish variant, also when the ring is
/// full (Block mode) — the size check comes first, and a blocking publish does not block —
/// and nothing is published; the largest allowed sizes go through intact.
#[test]
fn too_large_payload_or_topic_is_refused_and_nothing_is_published() {
    let dir = TempDir::new("ps-too-large");
    let path = dir.join("ch");
    let channel = PubSub::create(
        &path,
        &PubSubOptions::new()
            .capacity(2)
            .max_message(64)
            .max_topic(10)
            .overflow(Overflow::Block),
    )
    .unwrap();
    let publisher = channel.publisher().unwrap();
    let mut sub = channel.subscriber(&[]).unwrap();
    let big = [7u8; 65];
    let long = [b't'; 11];
    let too_large = SendError::TooLarge { len: 65, max: 64 };
    let too_long = SendError::TopicTooLarge { len: 11, max: 10 };
    let refuse_all = |publisher: &shmq::Publisher| {
        for (topic, payload, err) in [
            (&b"t"[..], &big[..], &too_large),
            (&long[..], &b"x"[..], &too_long),
        ] {
            assert_eq!(
                publisher.try_publish(topic, payload),
                Err(TrySendError::Send(err.clone()))
            );
            assert_eq!(
                publisher.publish_timeout(topic, payload, Duration::from_millis(10)),
                Err(SendTimeoutError::Send(err.clone()))
            );
            assert_eq!(publisher.publish(topic, payload).as_ref(), Err(err));
        }
        assert_eq!(
            publisher.try_publish(b"t", &[0u8; 1 << 20]),
            Err(TrySendError::Send(SendError::TooLarge {
                len: 1 << 20,
                max: 64
            }))
        );
    };
    refuse_all(&publisher);
    assert_eq!(channel.published(), 0, "nothing was published");
    assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Empty);

    // The largest topic and payload fit, and arrive intact.
    let full_payload: Vec<u8> = (0..64u8).collect();
    publisher.publish(b"0123456789", &full_payload).unwrap();
    publisher.publish(b"", b"").unwrap();
    assert_eq!(channel.published(), 2);
    // The ring is full now (the subscriber has read nothing): still a size error, not Full,
    // and `publish` returns at once instead of waiting.
    refuse_all(&publisher);
    assert_eq!(channel.published(), 2);
    assert_eq!(
        drain(&mut sub),
        vec![msg(b"0123456789", &full_payload), msg(b"", b"")]
    );
}

/// Dropping a publisher or subscriber frees its place in the participant table at once, even
/// while a process forked from this one (by another thread starting a child, say) has not yet
/// called exec. Its copy of the participant's lock descriptor refers to the same open file
/// description, so closing our descriptor alone does not release the OFD lock that marks the
/// place as taken: detaching must unlock explicitly (`F_OFD_SETLK` with `F_UNLCK`).
#[test]
fn detached_place_is_free_at_once_while_a_forked_process_has_not_yet_execd() {
    use std::ffi::CString;
    use std::os::unix::process::CommandExt;

    let dir = TempDir::new("ps-fork");
    let path = dir.join("ch");
    let channel = PubSub::create(
        &path,
        &PubSubOptions::new()
            .capacity(4)
            .max_message(8)
            .max_publishers(1)
            .max_subscribers(1),
    )
    .unwrap();
    let _sub = channel.subscriber(&[]).unwrap();
    let publisher = channel.publisher().unwrap();
    assert!(matches!(
        channel.publisher(),
        Err(Error::TooManyParticipants { .. })
    ));

    let (forked, go) = (dir.join("forked"), dir.join("go"));
    let forked_c = CString::new(s(&forked)).unwrap();
    let go_c = CString::new(s(&go)).unwrap();
    // Runs in the forked child before exec: only async-signal-safe calls, on C strings
    // allocated before the fork.
    let hook = move || -> std::io::Result<()> {
        use nix::libc;
        // SAFETY: a NUL-terminated path; open is async-signal-safe.
        let fd = unsafe { libc::open(forked_c.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600) };
        if fd >= 0 {
            // SAFETY: `fd` was opened just above and is closed once.
            unsafe { libc::close(fd) };
        }
        // Stay forked (holding copies of the parent's descriptors) until told, 30 s at most.
        let nap = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        for _ in 0..30_000 {
            // SAFETY: a NUL-terminated path; access is async-signal-safe.
            if unsafe { libc::access(go_c.as_ptr(), libc::F_OK) } == 0 {
                break;
            }
            // SAFETY: a valid timespec; a null remainder pointer is allowed.
            unsafe { libc::nanosleep(&nap, std::ptr::null_mut()) };
        }
        Ok(())
    };
    let mut cmd = std::process::Command::new("/bin/true");
    // SAFETY: the hook makes only async-signal-safe calls and touches no lock or allocator.
    unsafe { cmd.pre_exec(hook) };
    let again = std::thread::scope(|scope| {
        // `spawn` returns once the child has exec'd, so it runs in a thread of its own.
        let spawner = scope.spawn(move || cmd.status());
        let ok = wait_until(HANG, || forked.exists());
        drop(publisher);
        let again = channel.publisher();
        signal_ready(s(&go));
        assert!(ok, "the child never forked");
        assert!(spawner.join().unwrap().unwrap().success());
        again
    });
    match again {
        Ok(_) => {}
        Err(e) => panic!(
            "a publisher dropped while a forked child had not exec'd yet still holds its \
             participant place: {e}"
        ),
    }
}
