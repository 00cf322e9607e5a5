//! Refusals are reported (issue 8, item 3): a participant whose claim was taken away — a slot it
//! was writing, a message or request it held — is told so by the call that consumes the claim
//! (`Loan::commit`, `Message::ack`, `Request::reply`), and every refusal, also one only a
//! dropped message meets, is counted in the file (`RecoveryStats::refused`).
//!
//! Recovery never acts on a live participant, so the tests take the claim away the way a
//! recovery pass would, from another process: the holder is a child process stopped with its
//! claim, and the parent rewrites the slot's state word in the file exactly as recovery does
//! (a slot being written becomes skipped; a held message becomes deliverable again, counted
//! in the ring's redelivery count). Then the child consumes its claim and reports what it was
//! told.

mod common;

use common::{child, s, wait_ready, TempDir, HANG};
use shmq::layout::{Geometry, Shape, CTL_REDELIVER_PENDING, KIND_SERVICE, RING_CONTROL_OFFSET};
use shmq::{Delivery, Pipeline, PipelineOptions, Service, ServiceOptions, TryRecvError};
use std::os::unix::fs::FileExt;
use std::path::Path;

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "hold_loan" => hold_loan(args),
        "hold_messages" => hold_messages(args),
        "hold_request" => hold_request(args),
        other => panic!("unknown role {other:?}"),
    });
}

/// Slot states (see `src/ring/mpmc.rs`).
const WRITING: u64 = 1;
const READING: u64 = 3;
const SKIPPED: u64 = 4;
const REDELIVER: u64 = 5;
/// The state word's "delivered again" flag.
const REDELIVERED: u64 = 1 << 15;

fn state_word(seq: u64, state: u64, owner: u64) -> u64 {
    (seq & ((1 << 48) - 1)) << 16 | state << 12 | owner
}

fn read_u64(path: &Path, offset: u64) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, offset).unwrap();
    u64::from_le_bytes(b)
}

fn write_u64(path: &Path, offset: u64, value: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&value.to_le_bytes(), offset).unwrap();
}

/// Waits (in a child) until `path` exists.
fn wait_file(path: &str) {
    assert!(
        common::wait_until(HANG, || Path::new(path).exists()),
        "{path} never appeared"
    );
}

/// What a recovery pass does to slot `slot` (at `offset`) of a ring whose control block is at
/// `ring`, held by a reader it found dead: the held message becomes deliverable again (counted
/// in the ring's redelivery count first, as recovery does). Checks that it was held at
/// position `pos` first.
fn take_back_held(path: &Path, ring: u64, offset: u64, pos: u64) {
    let word = read_u64(path, offset);
    assert_eq!(
        (word >> 16, (word >> 12) & 7),
        (pos, READING),
        "slot of position {pos} is not held by a reader: {word:#x}"
    );
    let pending = ring + CTL_REDELIVER_PENDING as u64;
    write_u64(path, pending, read_u64(path, pending) + 1);
    write_u64(path, offset, state_word(pos, REDELIVER, 0) | REDELIVERED);
}

// ---------------------------------------------------------------------------------------------
// Child roles: each holds a claim, says so, waits for "go", consumes the claim and writes what
// it was told and the refusal count, as `{result:?} {refused}`.
// ---------------------------------------------------------------------------------------------

/// args: queue, ready file, go file, out file. Loans a slot and fills it.
fn hold_loan(args: &[String]) {
    let queue = Pipeline::open(&args[0]).unwrap();
    let producer = queue.producer().unwrap();
    let mut loan = producer.loan(5).unwrap();
    loan.copy_from_slice(b"hello");
    common::signal_ready(&args[1]);
    wait_file(&args[2]);
    let result = loan.commit();
    let refused = queue.recovery_stats().refused;
    std::fs::write(&args[3], format!("{result:?} {refused}")).unwrap();
}

/// args: queue, ready file, go file, out file. Receives two messages; acknowledges the first
/// with `ack` and drops the second.
fn hold_messages(args: &[String]) {
    let queue = Pipeline::open(&args[0]).unwrap();
    let consumer = queue.consumer().unwrap();
    let first = consumer.recv_timeout(HANG).unwrap();
    let second = consumer.recv_timeout(HANG).unwrap();
    assert_eq!((&*first, &*second), (&b"one"[..], &b"two"[..]));
    common::signal_ready(&args[1]);
    wait_file(&args[2]);
    let result = first.ack();
    let after_ack = queue.recovery_stats().refused;
    drop(second);
    let after_drop = queue.recovery_stats().refused;
    std::fs::write(&args[3], format!("{result:?} {after_ack} {after_drop}")).unwrap();
}

/// args: service, ready file, go file, out file. Takes one request and replies to it.
fn hold_request(args: &[String]) {
    let service = Service::open(&args[0]).unwrap();
    let server = service.server().unwrap();
    let request = server.recv_timeout(HANG).unwrap();
    common::signal_ready(&args[1]);
    wait_file(&args[2]);
    let reply = [b"re:", request.payload()].concat();
    let result = request.reply(&reply);
    let refused = service.recovery_stats().refused;
    std::fs::write(&args[3], format!("{result:?} {refused}")).unwrap();
}

/// Runs a holder child to the point where it holds its claim, lets `steal` take the claim
/// away, tells the child to go on, and returns what it wrote.
fn refused_in_child(dir: &TempDir, role: &str, file: &Path, steal: impl FnOnce()) -> String {
    let (ready, go, out) = (dir.join("ready"), dir.join("go"), dir.join("out"));
    let mut holder = child(role, &[s(file), s(&ready), s(&go), s(&out)]);
    wait_ready(&mut holder, &ready);
    steal();
    common::signal_ready(s(&go));
    holder.expect_success(HANG);
    std::fs::read_to_string(&out).unwrap()
}

fn pipeline_geometry(capacity: u64, max: u64, participants: u32) -> Geometry {
    Geometry::pipeline(capacity, max, participants).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// A loan whose slot was skipped (as recovery skips the slot of a writer it found dead) before
/// the commit: `commit` says `ClaimLost`, the refusal is counted, nothing is delivered, and the
/// queue flows on.
#[test]
fn commit_of_a_loan_whose_slot_was_taken_away_is_an_error_and_counted() {
    let dir = TempDir::new("refused-commit");
    let path = dir.join("q");
    let queue =
        Pipeline::create(&path, &PipelineOptions::new().capacity(4).max_message(64)).unwrap();
    let g = pipeline_geometry(4, 64, 64);
    let told = refused_in_child(&dir, "hold_loan", &path, || {
        let slot = g.slots_offset;
        let word = read_u64(&path, slot);
        assert_eq!((word >> 16, (word >> 12) & 7), (0, WRITING), "{word:#x}");
        write_u64(&path, slot, state_word(0, SKIPPED, word & 0xfff));
    });
    assert_eq!(
        told, "Err(ClaimLost) 1",
        "what commit returned, and the count"
    );
    assert_eq!(queue.recovery_stats().refused, 1, "counted in the file");

    let consumer = queue.consumer().unwrap();
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
    queue.producer().unwrap().send(b"after").unwrap();
    assert_eq!(&*consumer.try_recv().unwrap(), b"after");
}

/// Two messages held by a consumer process are taken back (as recovery takes back what a
/// reader it found dead held): the explicit `ack` of the first says `ClaimLost`, dropping the
/// second is refused too, both refusals are counted, and both messages are delivered again,
/// each exactly once, flagged.
#[test]
fn ack_of_a_message_taken_back_is_an_error_and_a_refused_drop_is_counted() {
    let dir = TempDir::new("refused-ack");
    let path = dir.join("q");
    let queue =
        Pipeline::create(&path, &PipelineOptions::new().capacity(4).max_message(64)).unwrap();
    let g = pipeline_geometry(4, 64, 64);
    let producer = queue.producer().unwrap();
    producer.send(b"one").unwrap();
    producer.send(b"two").unwrap();
    let told = refused_in_child(&dir, "hold_messages", &path, || {
        let ring = RING_CONTROL_OFFSET as u64;
        take_back_held(&path, ring, g.slots_offset, 0);
        take_back_held(&path, ring, g.slots_offset + g.slot_stride, 1);
    });
    assert_eq!(
        told, "Err(ClaimLost) 1 2",
        "what ack returned, the count after it, and after the drop"
    );
    assert_eq!(queue.recovery_stats().refused, 2);

    let consumer = queue.consumer().unwrap();
    for want in [&b"one"[..], b"two"] {
        let msg = consumer.try_recv().unwrap();
        assert_eq!(&*msg, want);
        assert!(msg.redelivered(), "delivered again, flagged");
        msg.ack().unwrap();
    }
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(queue.recovery_stats().refused, 2, "later acks are honoured");
}

/// A request held by a server process is taken back before it replies: `reply` delivers the
/// reply (the client gets it) but says `ClaimLost`, since the request will be served again;
/// the refusal is counted. The request comes back, flagged, and the client discards the second
/// reply and gets its next one.
#[test]
fn reply_to_a_request_taken_back_is_an_error_and_counted() {
    let dir = TempDir::new("refused-reply");
    let path = dir.join("svc");
    let options = ServiceOptions::new()
        .max_clients(1)
        .max_servers(2)
        .request_capacity(4)
        .reply_capacity(4)
        .max_message(64);
    let service = Service::create(&path, &options).unwrap();
    let g = Geometry::compute(Shape {
        kind: KIND_SERVICE,
        capacity: 4,
        max_message: 64,
        max_participants: 3,
        flags: 0,
        max_topic: 0,
        table_entries: 1,
        reply_capacity: 4,
    })
    .unwrap();
    let client = service.client().unwrap();
    let pending = client.send(b"x").unwrap();
    let told = refused_in_child(&dir, "hold_request", &path, || {
        take_back_held(&path, RING_CONTROL_OFFSET as u64, g.slots_offset, 0);
    });
    assert_eq!(
        told, "Err(Send(ClaimLost)) 1",
        "what reply returned, and the count"
    );
    assert_eq!(service.recovery_stats().refused, 1);
    assert_eq!(
        client.wait_timeout(pending, HANG).unwrap().payload(),
        b"re:x"
    );

    let server = service.server().unwrap();
    let again = server.try_recv().unwrap();
    assert!(again.redelivered());
    assert_eq!(again.payload(), b"x");
    assert_eq!(again.reply(b"re:x again"), Ok(Delivery::Delivered));
    let pending = client.send(b"y").unwrap();
    let request = server.try_recv().unwrap();
    assert_eq!(request.reply(b"re:y"), Ok(Delivery::Delivered));
    assert_eq!(
        client.wait_timeout(pending, HANG).unwrap().payload(),
        b"re:y"
    );
    assert_eq!(client.outstanding(), 0);
    assert_eq!(service.recovery_stats().refused, 1);
}
