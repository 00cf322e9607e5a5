//! Handles belong to the process that attached them, and detaching undoes what a handle
//! leaked (DESIGN.md guarantee 2: "a participant that forks, leaks a message or loan, ...
//! wedges nothing and fools no liveness check").
//!
//! * A real `fork()`: the child drops the handles it inherited, or just exits; the parent's
//!   participant entries stay locked and its own, its loan still commits and is received, its
//!   held message and request stay its own, and the next participant to attach gets another id.
//! * `mem::forget` of a message, a loan, a request or a reply, then the handle dropped, in a
//!   process that stays alive (so no death-reaping can explain the outcome): the queue flows,
//!   and what was leaked comes back exactly once (flagged redelivered) or is skipped.
//! * A recovery pass killed between counting a message pending redelivery and making it
//!   deliverable (park point `redelivery-counted`): the leaked count heals at the next sweep.

mod common;

use common::{child, child_with_env, s, wait_ready, ChildProc, TempDir, HANG};
use nix::libc;
use shmq::{
    Overflow, Pipeline, PipelineOptions, PubSub, PubSubOptions, RecoveryStats, RecvError,
    SendError, Service, ServiceOptions, TryRecvError, TrySendError,
};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

/// Byte of the participant lock of entry 0 (see `src/peers.rs`).
const LOCK_BASE: i64 = 1 << 40;

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "forget_message" => forget_message(args),
        "forget_loan" => forget_loan(args),
        "forget_request" => forget_request(args),
        "hold_one" => hold_one(args),
        "repair" => repair(args),
        "fork_pipeline_drop" => pipeline_survives_a_fork_child(&args[0], false, false),
        "fork_pipeline_exit" => pipeline_survives_a_fork_child(&args[0], true, false),
        "fork_pipeline_drop_exclusive" => pipeline_survives_a_fork_child(&args[0], false, true),
        "fork_pipeline_exit_exclusive" => pipeline_survives_a_fork_child(&args[0], true, true),
        "fork_pubsub_service" => pubsub_and_service_survive_a_fork_child(&args[0]),
        "hold_then_fork" => hold_then_fork(args),
        other => panic!("unknown role {other:?}"),
    });
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The participant id a handle's `Debug` output shows (`participant: N`).
fn participant_id(handle: &impl std::fmt::Debug) -> u16 {
    let text = format!("{handle:?}");
    let at = text
        .find("participant: ")
        .expect("Debug shows the participant")
        + 13;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("a participant id")
}

/// Whether some open file description holds the lock of participant `id` of the file at
/// `path` (asked with `F_OFD_GETLK` on a description of our own).
fn entry_locked(path: &Path, id: u16) -> bool {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: LOCK_BASE + i64::from(id) - 1,
        l_len: 1,
        l_pid: 0,
    };
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_OFD_GETLK(&mut fl)).unwrap();
    fl.l_type != libc::F_UNLCK as libc::c_short
}

/// Asserts that the participant table of the file at `path` lists exactly `ids`, in use by
/// this process and alive.
fn table_holds_exactly(path: &Path, ids: &[u16]) {
    let report = shmq::inspect::inspect(path).unwrap();
    let mut found: Vec<u16> = report.participants.iter().map(|p| p.id).collect();
    found.sort_unstable();
    let mut want = ids.to_vec();
    want.sort_unstable();
    assert_eq!(found, want, "participant entries in use");
    for p in &report.participants {
        assert!(p.alive && p.pid == std::process::id(), "{p:?}");
    }
}

/// Forks. `None` in the child (where a panic ends the process at once with status 2, never
/// unwinding into the test harness), the child's id in the parent. Only from a child process of
/// the test (see `fork_scenario`), which runs no other test's threads.
fn fork() -> Option<nix::unistd::Pid> {
    // SAFETY: the child only runs shmq's handle methods and drops (which, in a fork child,
    // touch no lock and no shared state), then leaves with `_exit` or `std::process::exit`
    // without returning into the test harness.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            // Straight to the descriptor: the standard error stream's lock may have been held
            // by another thread of the harness when it forked.
            std::panic::set_hook(Box::new(|info| {
                let text = format!("fork child: {info}\n");
                // SAFETY: `text` is valid for `len` bytes; write is async-signal-safe.
                unsafe { libc::write(2, text.as_ptr().cast(), text.len()) };
                // SAFETY: `_exit` ends the process at once.
                unsafe { libc::_exit(2) }
            }));
            None
        }
        nix::unistd::ForkResult::Parent { child } => Some(child),
    }
}

/// Ends a fork child at once with `code`.
fn leave_child(code: i32) -> ! {
    // SAFETY: `_exit` ends the process at once; nothing of the test harness runs here.
    unsafe { libc::_exit(code) }
}

/// Waits for a fork child and asserts it exited with status 0.
fn expect_child_ok(child: nix::unistd::Pid) {
    let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Exited(child, 0),
        "the fork child failed"
    );
}

// ---------------------------------------------------------------------------------------------
// fork()
// ---------------------------------------------------------------------------------------------

/// The shape of a pre-fork server: handles attached, then `fork()`. Whatever the child does
/// with its copies (drop them one by one, or exit without dropping anything), the parent's
/// handles stay attached and working. With exclusive ends, the parent's ends stay its own too:
/// the child can attach neither end while the parent's live (and the parent no second one).
fn pipeline_survives_a_fork_child(dir: &str, exit_normally: bool, exclusive: bool) {
    let path = Path::new(dir).join("q");
    let q = Pipeline::create(&path, &options(exclusive).capacity(4).max_message(16)).unwrap();
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();
    let (p_id, c_id) = (participant_id(&producer), participant_id(&consumer));
    producer.send(b"held").unwrap();
    let held = consumer.try_recv().unwrap();
    let mut loan = producer.loan(5).unwrap();
    loan.copy_from_slice(b"loan!");
    let parent = std::process::id();

    let Some(forked) = fork() else {
        if exit_normally {
            std::process::exit(0);
        }
        assert_eq!(
            producer.try_send(b"x"),
            Err(TrySendError::Send(SendError::WrongProcess {
                attached_by: parent
            }))
        );
        assert!(matches!(
            producer.try_loan(1),
            Err(TrySendError::Send(SendError::WrongProcess { .. }))
        ));
        assert_eq!(
            consumer.try_recv().map(drop),
            Err(TryRecvError::Recv(RecvError::WrongProcess {
                attached_by: parent
            }))
        );
        assert!(
            held.is_empty() && loan.is_empty(),
            "inherited slots read as empty"
        );
        // Dropped in the order most likely to do harm: the message (an ack), the loan (an
        // abandon), the handles (detach: undo claims, free the entry, unlock).
        drop(held);
        drop(loan);
        drop(producer);
        drop(consumer);
        if exclusive {
            // The parent's ends are still held by the parent, which lives.
            assert!(matches!(q.producer(), Err(shmq::Error::EndTaken { .. })));
            assert!(matches!(q.consumer(), Err(shmq::Error::EndTaken { .. })));
        } else {
            // A child that wants to take part attaches its own handles.
            let own = q.producer().unwrap();
            assert!(![p_id, c_id].contains(&participant_id(&own)));
            own.send(b"child").unwrap();
            drop(own);
        }
        drop(q);
        leave_child(0)
    };
    expect_child_ok(forked);

    table_holds_exactly(&path, &[p_id, c_id]);
    assert!(
        entry_locked(&path, p_id),
        "the parent's producer entry lost its lock"
    );
    assert!(
        entry_locked(&path, c_id),
        "the parent's consumer entry lost its lock"
    );
    // Nobody is dead, nothing is free with claims: recovery finds nothing to do.
    assert_eq!(q.repair().unwrap(), RecoveryStats::default());
    // The loan still commits and is received; the held message is still the parent's.
    loan.commit().expect("the parent's loan commits");
    if exclusive {
        assert!(matches!(q.consumer(), Err(shmq::Error::EndTaken { .. })));
        let m = consumer
            .try_recv()
            .expect("the parent's loan was delivered");
        assert_eq!(&*m, b"loan!");
        assert!(!m.redelivered());
    } else {
        let newcomer = q.consumer().unwrap();
        let n_id = participant_id(&newcomer);
        assert!(
            n_id != p_id && n_id != c_id,
            "the newcomer got a live participant's id {n_id}"
        );
        let m = newcomer
            .try_recv()
            .expect("the parent's loan was delivered");
        assert_eq!(&*m, b"loan!");
        assert!(!m.redelivered());
        drop(m);
        if !exit_normally {
            assert_eq!(&*newcomer.try_recv().unwrap(), b"child");
        }
        assert!(matches!(newcomer.try_recv(), Err(TryRecvError::Empty)));
    }
    assert_eq!(&*held, b"held");
    drop(held);
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    // The ring is whole: a full lap of sends and receives.
    for i in 0..4u8 {
        producer.try_send(&[i]).unwrap();
    }
    for i in 0..4u8 {
        assert_eq!(&*consumer.try_recv().unwrap(), &[i]);
    }
    assert_eq!(q.recovery_stats(), RecoveryStats::default());
}

/// Runs a fork scenario in a process of its own: `fork()` in the multi-threaded test harness
/// could leave the child waiting for a lock (the standard error stream, the panic hook) that
/// another test's thread held at that instant.
fn fork_scenario(role: &str) {
    let dir = TempDir::new(role);
    child(role, &[s(dir.path())]).expect_success(HANG);
}

#[test]
fn fork_child_dropping_inherited_pipeline_handles_leaves_the_parent_attached() {
    fork_scenario("fork_pipeline_drop");
}

#[test]
fn fork_child_exiting_leaves_the_parent_attached() {
    fork_scenario("fork_pipeline_exit");
}

#[test]
fn fork_child_dropping_inherited_exclusive_pipeline_handles_leaves_the_parent_its_ends() {
    fork_scenario("fork_pipeline_drop_exclusive");
}

#[test]
fn fork_child_exiting_leaves_the_parent_its_exclusive_ends() {
    fork_scenario("fork_pipeline_exit_exclusive");
}

/// Shared ends, or exclusive ones (`single_producer().single_consumer()`).
fn options(exclusive: bool) -> PipelineOptions {
    if exclusive {
        PipelineOptions::new().single_producer().single_consumer()
    } else {
        PipelineOptions::new()
    }
}

/// The same for publish-subscribe and request-reply handles: the child's copies of a Block-mode
/// subscriber, a publisher, a client, a server and a request it holds, dropped, leave every one
/// of them the parent's.
#[test]
fn fork_child_dropping_inherited_pubsub_and_service_handles_leaves_the_parent_attached() {
    fork_scenario("fork_pubsub_service");
}

fn pubsub_and_service_survive_a_fork_child(dir: &str) {
    let (ch_path, svc_path) = (Path::new(dir).join("ch"), Path::new(dir).join("svc"));
    let channel = PubSub::create(
        &ch_path,
        &PubSubOptions::new()
            .capacity(2)
            .max_message(16)
            .overflow(Overflow::Block),
    )
    .unwrap();
    let publisher = channel.publisher().unwrap();
    let mut sub = channel.subscriber(&[]).unwrap();
    let svc = Service::create(&svc_path, &ServiceOptions::new().max_message(16)).unwrap();
    let server = svc.server().unwrap();
    let client = svc.client().unwrap();
    let pending = client.send(b"ping").unwrap();
    let request = server.try_recv().unwrap();
    let parent = std::process::id();

    let Some(forked) = fork() else {
        let wrong = Err(TrySendError::Send(SendError::WrongProcess {
            attached_by: parent,
        }));
        assert_eq!(publisher.try_publish(b"t", b"x"), wrong);
        assert!(matches!(
            sub.try_recv(),
            Err(TryRecvError::Recv(RecvError::WrongProcess { .. }))
        ));
        assert!(matches!(
            server.try_recv(),
            Err(TryRecvError::Recv(RecvError::WrongProcess { .. }))
        ));
        assert_eq!(client.try_send(b"x").map(drop), wrong);
        assert!(
            request.payload().is_empty(),
            "the inherited request reads as empty"
        );
        drop(request);
        drop(pending);
        drop(client);
        drop(server);
        drop(sub);
        drop(publisher);
        leave_child(0)
    };
    expect_child_ok(forked);

    // Attached in order into a fresh table: publisher 1, subscriber 2; server 1, client 2.
    table_holds_exactly(&ch_path, &[1, 2]);
    table_holds_exactly(&svc_path, &[1, 2]);
    assert_eq!(channel.repair().unwrap(), RecoveryStats::default());
    assert_eq!(svc.repair().unwrap(), RecoveryStats::default());
    // The subscription still holds Block-mode publishers back (it was not detached) and still
    // receives.
    publisher.try_publish(b"t", b"1").unwrap();
    publisher.try_publish(b"t", b"2").unwrap();
    assert_eq!(publisher.try_publish(b"t", b"3"), Err(TrySendError::Full));
    assert_eq!(sub.try_recv().unwrap().payload(), b"1");
    // The request is still the parent's to answer, and the client still gets the answer.
    assert_eq!(request.payload(), b"ping");
    request.reply(b"pong").unwrap();
    assert_eq!(client.wait(pending).unwrap().payload(), b"pong");
    let again = client.send(b"again").unwrap();
    server.try_recv().unwrap().reply(b"ok").unwrap();
    assert_eq!(client.wait(again).unwrap().payload(), b"ok");
    assert_eq!(svc.recovery_stats(), RecoveryStats::default());
    assert_eq!(channel.recovery_stats(), RecoveryStats::default());
}

/// args: path, ready file. Receives one message and holds it, forks a child that sleeps (30 s at
/// most) holding copies of every descriptor, writes the child's pid to the ready file, then
/// waits to be killed.
fn hold_then_fork(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let consumer = q.consumer().unwrap();
    let _held = consumer.recv_timeout(HANG).unwrap();
    let Some(forked) = fork() else {
        std::thread::sleep(Duration::from_secs(30));
        leave_child(0)
    };
    std::fs::write(&args[1], forked.as_raw().to_string()).unwrap();
    sleep_forever();
}

/// A participant whose process dies while a child it forked (and that has not exec'd) still
/// lives is found dead all the same: the child's copies of its lock descriptors were pointed
/// away from the parent's descriptions at the fork.
#[test]
fn participant_dying_while_its_fork_child_lives_is_found_dead() {
    let dir = TempDir::new("fork-then-die");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &PipelineOptions::new().capacity(4).max_message(16)).unwrap();
    let producer = q.producer().unwrap();
    producer.send(b"M").unwrap();
    let ready = dir.join("forked");
    let mut holder = child("hold_then_fork", &[s(&path), s(&ready)]);
    wait_ready(&mut holder, &ready);
    let grandchild: i32 = std::fs::read_to_string(&ready).unwrap().parse().unwrap();
    let grandchild = nix::unistd::Pid::from_raw(grandchild);
    kill_now(&mut holder);
    let consumer = q.consumer().unwrap();
    let m = consumer.recv_timeout(Duration::from_secs(10));
    // The fork child must still be alive for the check to mean anything.
    let alive = nix::sys::signal::kill(grandchild, None).is_ok();
    let _ = nix::sys::signal::kill(grandchild, nix::sys::signal::Signal::SIGKILL);
    assert!(alive, "the fork child exited too early");
    let m = m.expect("the dead holder's message is delivered again while its fork child lives");
    assert!(m.redelivered() && &*m == b"M");
    assert_eq!(q.recovery_stats().reaped, 1);
}

// ---------------------------------------------------------------------------------------------
// Leaks undone on detach
// ---------------------------------------------------------------------------------------------

/// args: path, ready file. Receives one message, forgets it, drops the consumer, stays alive.
fn forget_message(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let consumer = q.consumer().unwrap();
    std::mem::forget(consumer.recv_timeout(HANG).unwrap());
    drop(consumer);
    common::signal_ready(&args[1]);
    sleep_forever();
}

/// args: path, ready file. Loans a slot, writes it, forgets the loan, drops the producer, stays
/// alive.
fn forget_loan(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let producer = q.producer().unwrap();
    let mut loan = producer.loan(6).unwrap();
    loan.copy_from_slice(b"leaked");
    std::mem::forget(loan);
    drop(producer);
    common::signal_ready(&args[1]);
    sleep_forever();
}

/// args: path, ready file. Takes one request, forgets it, drops the server, stays alive.
fn forget_request(args: &[String]) {
    let svc = Service::open(&args[0]).unwrap();
    let server = svc.server().unwrap();
    std::mem::forget(server.recv_timeout(HANG).unwrap());
    drop(server);
    common::signal_ready(&args[1]);
    sleep_forever();
}

/// Starts `role` on `path` and waits until it has done its leak and detached.
fn leaker(dir: &TempDir, role: &str, path: &Path) -> ChildProc {
    let ready = dir.join(&format!("{role}-ready"));
    let mut c = child(role, &[s(path), s(&ready)]);
    wait_ready(&mut c, &ready);
    c
}

#[test]
fn leaked_message_comes_back_once_flagged_when_its_consumer_detaches() {
    leaked_message_comes_back_once_flagged_when_its_consumer_detaches_in(false);
}

/// The same with exclusive ends.
#[test]
fn leaked_message_comes_back_once_flagged_when_its_consumer_detaches_exclusive() {
    leaked_message_comes_back_once_flagged_when_its_consumer_detaches_in(true);
}

fn leaked_message_comes_back_once_flagged_when_its_consumer_detaches_in(exclusive: bool) {
    let dir = TempDir::new("leak-message");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &options(exclusive).capacity(4).max_message(16)).unwrap();
    let producer = q.producer().unwrap();
    producer.send(b"M").unwrap();
    let mut leaker = leaker(&dir, "forget_message", &path);
    let consumer = q.consumer().unwrap();
    let m = consumer
        .try_recv()
        .expect("the leaked message is deliverable again");
    assert_eq!(&*m, b"M");
    assert!(m.redelivered(), "a message delivered again must be flagged");
    drop(m);
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    // The whole ring flows: no slot stays held.
    for lap in 0..3u8 {
        for i in 0..4u8 {
            producer.try_send(&[lap, i]).unwrap();
        }
        for i in 0..4u8 {
            let m = consumer.try_recv().unwrap();
            assert_eq!((&*m, m.redelivered()), (&[lap, i][..], false));
        }
    }
    assert!(leaker.is_running(), "the leaker must still be alive");
    let stats = q.recovery_stats();
    assert_eq!((stats.redelivered, stats.reaped), (1, 0), "{stats:?}");
}

#[test]
fn leaked_loan_is_skipped_when_its_producer_detaches() {
    leaked_loan_is_skipped_when_its_producer_detaches_in(false);
}

/// The same with exclusive ends.
#[test]
fn leaked_loan_is_skipped_when_its_producer_detaches_exclusive() {
    leaked_loan_is_skipped_when_its_producer_detaches_in(true);
}

fn leaked_loan_is_skipped_when_its_producer_detaches_in(exclusive: bool) {
    let dir = TempDir::new("leak-loan");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &options(exclusive).capacity(4).max_message(16)).unwrap();
    let mut leaker = leaker(&dir, "forget_loan", &path);
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();
    // The head passes over the leaked slot (and frees it); nothing of the loan is delivered.
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    // The whole ring flows.
    for lap in 0..3u8 {
        for i in 0..4u8 {
            producer.try_send(&[lap, i]).unwrap();
        }
        for i in 0..4u8 {
            assert_eq!(&*consumer.try_recv().unwrap(), &[lap, i]);
        }
        assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    }
    assert!(leaker.is_running(), "the leaker must still be alive");
    let stats = q.recovery_stats();
    // A leaked exclusive loan was never visible: nothing to skip.
    let skipped = u64::from(!exclusive);
    assert_eq!((stats.skipped, stats.reaped), (skipped, 0), "{stats:?}");
}

#[test]
fn leaked_request_is_served_again_when_its_server_detaches() {
    let dir = TempDir::new("leak-request");
    let path = dir.join("svc");
    let svc = Service::create(&path, &ServiceOptions::new().max_message(16)).unwrap();
    let client = svc.client().unwrap();
    let pending = client.send(b"job").unwrap();
    let mut leaker = leaker(&dir, "forget_request", &path);
    let server = svc.server().unwrap();
    let request = server
        .try_recv()
        .expect("the leaked request is served again");
    assert_eq!(request.payload(), b"job");
    assert!(request.redelivered());
    request.reply(b"done").unwrap();
    assert_eq!(client.wait(pending).unwrap().payload(), b"done");
    assert!(matches!(server.try_recv(), Err(TryRecvError::Empty)));
    assert!(leaker.is_running(), "the leaker must still be alive");
    let stats = svc.recovery_stats();
    assert_eq!((stats.redelivered, stats.reaped), (1, 0), "{stats:?}");
}

/// A reply leaked by its client holds a slot of the entry's reply ring; detaching frees it, so
/// the entry's next client has the whole ring (a server would otherwise find it full).
#[test]
fn leaked_reply_is_freed_when_its_client_detaches() {
    let dir = TempDir::new("leak-reply");
    let path = dir.join("svc");
    let svc = Service::create(
        &path,
        &ServiceOptions::new()
            .max_message(16)
            .max_clients(1)
            .reply_capacity(2),
    )
    .unwrap();
    let server = svc.server().unwrap();
    {
        let client = svc.client().unwrap();
        let pending = client.send(b"a").unwrap();
        server.try_recv().unwrap().reply(b"A").unwrap();
        std::mem::forget(client.wait(pending).unwrap());
    }
    let client = svc.client().unwrap();
    let first = client.send(b"b").unwrap();
    let second = client.send(b"c").unwrap();
    for _ in 0..2 {
        let request = server.try_recv().unwrap();
        let reply = request.payload().to_ascii_uppercase();
        assert_eq!(
            request.reply(&reply),
            Ok(shmq::Delivery::Delivered),
            "the reply ring has room for both replies"
        );
    }
    assert_eq!(client.wait(second).unwrap().payload(), b"C");
    assert_eq!(client.wait(first).unwrap().payload(), b"B");
}

// ---------------------------------------------------------------------------------------------
// The redelivery count heals
// ---------------------------------------------------------------------------------------------

/// args: path, ready file. Receives one message and holds it until killed.
fn hold_one(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let consumer = q.consumer().unwrap();
    let _held = consumer.recv_timeout(HANG).unwrap();
    common::signal_ready(&args[1]);
    sleep_forever();
}

/// args: path. Runs a repair (parked at `redelivery-counted` when asked to).
fn repair(args: &[String]) {
    Pipeline::open(&args[0]).unwrap().repair().unwrap();
}

fn kill_now(c: &mut ChildProc) {
    assert!(
        c.is_running(),
        "child {:?} exited before the kill",
        c.role()
    );
    assert_eq!(c.kill().signal(), Some(libc::SIGKILL));
}

#[test]
fn redelivery_count_heals_after_a_sweeper_dies_between_its_two_steps() {
    let dir = TempDir::new("pending-leak");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &PipelineOptions::new().capacity(4).max_message(16)).unwrap();
    let producer = q.producer().unwrap();
    producer.send(b"M").unwrap();
    let ready = dir.join("holding");
    let mut holder = child("hold_one", &[s(&path), s(&ready)]);
    wait_ready(&mut holder, &ready);
    kill_now(&mut holder);
    // A sweeper finds the dead holder, counts M pending redelivery, and dies before making it
    // deliverable: the count is one too high for good.
    let parked = dir.join("parked");
    let mut sweeper = child_with_env(
        "repair",
        &[s(&path)],
        &[
            ("SHMQ_TEST_PARK_AT", "redelivery-counted"),
            ("SHMQ_TEST_PARKED_FILE", s(&parked)),
        ],
    );
    wait_ready(&mut sweeper, &parked);
    kill_now(&mut sweeper);
    assert_eq!(q.redelivery_pending(), 1);

    let consumer = q.consumer().unwrap(); // its attach sweeps: reaps the holder
    assert_eq!(q.recovery_stats().redelivered, 1);
    let m = consumer.try_recv().unwrap();
    assert!(m.redelivered() && &*m == b"M");
    drop(m);
    // The count now stands for nothing; the next sweep finds no slot awaiting redelivery and
    // sets it to zero, so receives stop scanning.
    q.repair().unwrap();
    assert_eq!(q.redelivery_pending(), 0, "the leaked count must heal");
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    producer.send(b"after").unwrap();
    let m = consumer.try_recv().unwrap();
    assert!(!m.redelivered() && &*m == b"after");
}
