//! What the fuzz targets run: every public operation of each pattern against a file of
//! arbitrary bytes (`exercise_*`), and a script of operations interleaved with writes into a
//! valid live file (`run_script`).
//!
//! A target fails only by a crash: a panic, a signal, a sanitizer report, or a hang (libFuzzer's
//! `-timeout`). Errors returned by shmq are the expected outcome of a corrupt file. Every call
//! is non-blocking or has a zero timeout, and every loop is bounded, so a hang is a shmq bug.

// `let _ = loan.commit()` stays correct when commit returns a Result (issue 8).
#![allow(clippy::let_unit_value)]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use shmq::{
    Client, Consumer, PipelineOptions, Overflow, Pending, Pipeline, Producer, PubSub, PubSubOptions,
    Publisher, RecvError, Server, Service, ServiceOptions, Subscriber, TryRecvError,
};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The most messages drained in one go (a corrupt ring must not make this unbounded anyway).
const DRAIN: usize = 64;
/// The most script steps run (longer inputs are cut).
const MAX_STEPS: usize = 128;

/// A scratch path of this process for `name`, under `/dev/shm` (tmpfs) when it exists.
pub fn scratch_path(name: &str) -> PathBuf {
    let dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("shmq-fuzz-{}-{name}", std::process::id()))
}

/// Whether `open` would take the file for one still being created (length 0 or magic 0) and
/// wait up to a second for its creator: a documented wait, not worth a second of fuzzing each.
pub fn looks_uninitialised(data: &[u8]) -> bool {
    data.len() < 8 || data[..8] == [0; 8]
}

/// Writes `data` as a fresh file (mode 0600, so `open` trusts it), runs `f` on it, removes it.
/// Files `open` would wait for ([`looks_uninitialised`]) are skipped.
pub fn with_file(name: &str, data: &[u8], f: impl FnOnce(&Path)) {
    if looks_uninitialised(data) {
        return;
    }
    let path = scratch_path(name);
    let _ = std::fs::remove_file(&path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("create the scratch file");
    file.write_all(data).expect("write the scratch file");
    drop(file);
    f(&path);
    let _ = std::fs::remove_file(&path);
}

/// Reads every byte of `bytes` (so that a bad slice would be caught by the sanitizer).
fn touch(bytes: &[u8]) {
    black_box(bytes.iter().fold(0u8, |acc, b| acc ^ b));
}

/// Open, attach every role, and run every pipeline operation.
pub fn exercise_pipeline(path: &Path) {
    let Ok(q) = Pipeline::open(path) else {
        return;
    };
    black_box((
        q.capacity(),
        q.max_message(),
        q.len(),
        q.is_empty(),
        q.recovery_stats(),
    ));
    let _ = q.repair();
    let producer = q.producer();
    let consumer = q.consumer();
    if let Ok(c) = &consumer {
        drain_pipeline(c);
    }
    if let Ok(p) = &producer {
        let _ = p.try_send(b"fuzz");
        let _ = p.try_send(b"");
        let _ = p.try_send(&vec![7; q.max_message().min(4096)]);
        let _ = p.try_send(&vec![7; q.max_message().saturating_add(1).min(1 << 20)]);
        let _ = p.send_timeout(b"timeout", Duration::ZERO);
        if let Ok(mut loan) = p.try_loan(3.min(q.max_message())) {
            loan.fill(1);
            let _ = loan.commit();
        }
        if let Ok(loan) = p.try_loan(1.min(q.max_message())) {
            drop(loan);
        }
    }
    if let Ok(c) = &consumer {
        drain_pipeline(c);
        let mut buf = vec![0; q.max_message().min(1 << 20)];
        let _ = c.try_recv_into(&mut buf);
        let _ = c.recv_into_timeout(&mut buf, Duration::ZERO);
        let short = buf.len().saturating_sub(1);
        let _ = c.try_recv_into(&mut buf[..short]);
        let _ = c.recv_timeout(Duration::ZERO);
    }
    let _ = q.repair();
    black_box(q.len());
}

fn drain_pipeline(c: &Consumer) {
    for _ in 0..DRAIN {
        match c.try_recv() {
            Ok(m) => {
                touch(&m);
                touch(&m.copy_to_vec());
                black_box((
                    m.redelivered(),
                    m.value::<u64>(),
                    m.as_value::<u32>().copied(),
                ));
            }
            Err(_) => break,
        }
    }
}

/// Open, attach every role, and run every publish-subscribe operation.
pub fn exercise_pubsub(path: &Path) {
    let Ok(ch) = PubSub::open(path) else {
        return;
    };
    black_box((ch.overflow(), ch.published(), ch.recovery_stats()));
    let _ = ch.repair();
    let mut history = ch.subscribe(&[b""]).history().attach();
    let mut filtered = ch.subscriber(&[b"t", b"other"]);
    let publisher = ch.publisher();
    for sub in [&mut history, &mut filtered].into_iter().flatten() {
        drain_subscriber(sub);
    }
    if let Ok(p) = &publisher {
        let _ = p.try_publish(b"t", b"payload");
        let _ = p.try_publish(b"", b"");
        let _ = p.try_publish(&[b't'; 300], b"long topic");
        let _ = p.try_publish(b"t/big", &vec![3; 1 << 16]);
        let _ = p.publish_timeout(b"t/x", b"timeout", Duration::ZERO);
    }
    for sub in [&mut history, &mut filtered].into_iter().flatten() {
        drain_subscriber(sub);
        black_box(sub.position());
        let _ = sub.recv_timeout(Duration::ZERO);
    }
    let _ = ch.repair();
}

fn drain_subscriber(sub: &mut Subscriber) {
    for _ in 0..DRAIN {
        match sub.try_recv() {
            Ok(m) => {
                touch(m.topic());
                touch(m.payload());
            }
            Err(TryRecvError::Recv(RecvError::Lagged(n))) => {
                black_box(n);
            }
            Err(_) => break,
        }
    }
}

/// Open, attach every role, and run every request-reply operation.
pub fn exercise_service(path: &Path) {
    let Ok(svc) = Service::open(path) else {
        return;
    };
    black_box((svc.queued_requests(), svc.recovery_stats()));
    let _ = svc.repair();
    let server = svc.server();
    let client = svc.client();
    if let Ok(s) = &server {
        serve(s, DRAIN);
    }
    if let Ok(c) = client {
        let pending = c.try_send(b"request");
        let _ = c.try_send(&[9; 1 << 16]);
        if let Ok(s) = &server {
            serve(s, 4);
        }
        if let Ok(p) = pending {
            black_box(p.id());
            if let Ok(reply) = c.wait_timeout(p, Duration::ZERO) {
                touch(reply.payload());
                touch(&reply.copy_to_vec());
            }
        }
        black_box(c.outstanding());
        if let Ok(reply) = c.request_timeout(b"again", Duration::ZERO) {
            touch(reply.payload());
        }
    }
    let _ = svc.repair();
}

fn serve(s: &Server, max: usize) {
    for i in 0..max {
        match s.try_recv() {
            Ok(r) => {
                touch(r.payload());
                touch(&r.copy_to_vec());
                black_box(r.redelivered());
                if i % 2 == 0 {
                    let _ = r.reply(b"reply");
                }
            }
            Err(_) => break,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Structure-aware: a live file mutated between operations
// ---------------------------------------------------------------------------------------------

/// Which pattern the script runs on.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Kind {
    /// A pipeline.
    Pipeline,
    /// A drop-oldest publish-subscribe channel.
    PubSubDropOldest,
    /// A block-mode publish-subscribe channel.
    PubSubBlock,
    /// A service.
    Service,
}

/// A value written over a word of the file.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Word {
    /// Any value.
    Raw(u64),
    /// A small value (states, lengths, indices).
    Small(u8),
    /// All ones.
    Max,
    /// The word as it is, with one bit flipped.
    FlipBit(u8),
    /// The word as it is, plus one (sequences, cursors, generations).
    AddOne,
    /// The word as it is, minus one.
    SubOne,
}

/// One step of a script.
#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    /// Writes a word at an 8-aligned offset (taken modulo the file's length).
    Word {
        /// Where (rounded down to 8, modulo the length).
        offset: u32,
        /// What.
        value: Word,
    },
    /// Writes bytes at any offset (modulo the length; cut at the end of the file).
    Bytes {
        /// Where.
        offset: u32,
        /// What.
        bytes: Vec<u8>,
    },
    /// A queue operation; its meaning depends on the kind (see `op_*`).
    Op {
        /// Which operation.
        which: u8,
        /// A length or index it uses.
        arg: u16,
    },
    /// Receives a message (or request) and holds it while the rest of the script runs, then
    /// reads it again and drops (or replies to) it.
    Hold,
}

/// A structure-aware input.
#[derive(Arbitrary, Debug, Clone)]
pub struct Script {
    /// The pattern.
    pub kind: Kind,
    /// Slots, 1..=8 (the low three bits); for a pipeline, bit 7 asks for payload checksums.
    pub capacity: u8,
    /// Largest message, 8..=71 bytes.
    pub max_message: u8,
    /// Messages sent before the script starts, 0..=7.
    pub prefill: u8,
    /// The steps.
    pub steps: Vec<Step>,
}

/// The live file, written behind the library's back (`pwrite`, coherent with the mapping).
struct Scribbler {
    file: File,
    len: u64,
}

impl Scribbler {
    fn open(path: &Path) -> Scribbler {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let len = file.metadata().unwrap().len();
        Scribbler { file, len }
    }

    /// Applies `step` if it is a write; returns whether it was.
    fn apply(&self, step: &Step) -> bool {
        match step {
            Step::Word { offset, value } => {
                let at = (u64::from(*offset) % self.len) & !7;
                let mut old = [0u8; 8];
                let _ = self.file.read_at(&mut old, at);
                let old = u64::from_ne_bytes(old);
                let new = match *value {
                    Word::Raw(v) => v,
                    Word::Small(v) => u64::from(v),
                    Word::Max => u64::MAX,
                    Word::FlipBit(b) => old ^ (1 << (b % 64)),
                    Word::AddOne => old.wrapping_add(1),
                    Word::SubOne => old.wrapping_sub(1),
                };
                let _ = self.file.write_at(&new.to_ne_bytes(), at);
                true
            }
            Step::Bytes { offset, bytes } => {
                let at = u64::from(*offset) % self.len;
                let room = usize::try_from(self.len - at).unwrap_or(usize::MAX);
                let _ = self.file.write_at(&bytes[..bytes.len().min(room)], at);
                true
            }
            _ => false,
        }
    }
}

/// Creates a valid queue of the script's kind and runs its steps.
pub fn run_script(script: &Script) {
    let path = scratch_path("live");
    let _ = std::fs::remove_file(&path);
    let capacity = usize::from(script.capacity % 8) + 1;
    let max_message = usize::from(script.max_message % 64) + 8;
    let steps = &script.steps[..script.steps.len().min(MAX_STEPS)];
    match script.kind {
        Kind::Pipeline => {
            let options = PipelineOptions::new()
                .capacity(capacity)
                .max_message(max_message)
                .max_participants(8)
                .checksum(script.capacity & 0x80 != 0);
            if let Ok(q) = Pipeline::create(&path, &options) {
                let live = PipelineLive::new(q, &path, script.prefill);
                live.run(steps);
            }
        }
        Kind::PubSubDropOldest | Kind::PubSubBlock => {
            let overflow = if matches!(script.kind, Kind::PubSubBlock) {
                Overflow::Block
            } else {
                Overflow::DropOldest
            };
            let options = PubSubOptions::new()
                .capacity(capacity)
                .max_message(max_message)
                .max_topic(16)
                .max_publishers(4)
                .max_subscribers(4)
                .overflow(overflow);
            if let Ok(ch) = PubSub::create(&path, &options) {
                let live = PubSubLive::new(ch, &path, script.prefill);
                live.run(steps);
            }
        }
        Kind::Service => {
            let options = ServiceOptions::new()
                .request_capacity(capacity)
                .reply_capacity(capacity)
                .max_message(max_message)
                .max_clients(4)
                .max_servers(4);
            if let Ok(svc) = Service::create(&path, &options) {
                let live = ServiceLive::new(svc, &path, script.prefill);
                live.run(steps);
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

fn payload(arg: u16, max: usize) -> Vec<u8> {
    // Mostly within the limit, sometimes just over it.
    let len = usize::from(arg) % (max + 2);
    (0..len).map(|i| i as u8 ^ arg as u8).collect()
}

struct PipelineLive {
    q: Pipeline,
    scribbler: Scribbler,
    producers: RefCell<Vec<Producer>>,
    consumers: RefCell<Vec<Consumer>>,
}

impl PipelineLive {
    fn new(q: Pipeline, path: &Path, prefill: u8) -> Self {
        let producers: Vec<_> = q.producer().into_iter().collect();
        let consumers: Vec<_> = q.consumer().into_iter().collect();
        if let Some(p) = producers.first() {
            for i in 0..prefill % 8 {
                let _ = p.try_send(&[i; 5]);
            }
        }
        PipelineLive {
            scribbler: Scribbler::open(path),
            q,
            producers: RefCell::new(producers),
            consumers: RefCell::new(consumers),
        }
    }

    fn run(&self, steps: &[Step]) {
        for (i, step) in steps.iter().enumerate() {
            if self.scribbler.apply(step) {
                continue;
            }
            match step {
                Step::Op { which, arg } => self.op(*which, *arg),
                Step::Hold => {
                    let consumers = self.consumers.borrow();
                    if let Some(c) = consumers.first() {
                        if let Ok(m) = c.try_recv() {
                            touch(&m);
                            self.run(&steps[i + 1..]);
                            touch(&m);
                            touch(&m.copy_to_vec());
                            return;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn op(&self, which: u8, arg: u16) {
        let max = self.q.max_message();
        let pick = usize::from(arg);
        match which % 12 {
            0 | 1 => {
                if let Some(p) = self.producers.borrow().get(pick % 2) {
                    let _ = p.try_send(&payload(arg, max));
                }
            }
            2 | 3 => {
                if let Some(c) = self.consumers.borrow().get(pick % 2) {
                    if which % 2 == 0 {
                        let mut buf = vec![0; self.q.max_message()];
                        let _ = c.try_recv_into(&mut buf);
                    } else if let Ok(m) = c.try_recv() {
                        touch(&m);
                        touch(&m.copy_to_vec());
                    }
                }
            }
            4 => {
                if let Some(p) = self.producers.borrow().first() {
                    if let Ok(mut loan) = p.try_loan(pick % (max + 2)) {
                        loan.fill(0x5a);
                        let _ = loan.commit();
                    }
                }
            }
            5 => {
                if let Some(p) = self.producers.borrow().first() {
                    drop(p.try_loan(pick % (max + 1)));
                }
            }
            6 => {
                let _ = self.q.repair();
                black_box((self.q.len(), self.q.recovery_stats()));
            }
            7 => {
                if let Ok(p) = self.q.producer() {
                    self.producers.borrow_mut().push(p);
                }
            }
            8 => {
                if let Ok(c) = self.q.consumer() {
                    if let Ok(mut consumers) = self.consumers.try_borrow_mut() {
                        consumers.push(c);
                    }
                }
            }
            9 => {
                self.producers.borrow_mut().pop();
            }
            10 => {
                if let Ok(mut consumers) = self.consumers.try_borrow_mut() {
                    consumers.pop();
                }
            }
            _ => {
                let mut magic = [0u8; 8];
                let _ = self.scribbler.file.read_at(&mut magic, 0);
                if !looks_uninitialised(&magic) {
                    exercise_pipeline(self.q.path());
                }
            }
        }
    }
}

struct PubSubLive {
    ch: PubSub,
    scribbler: Scribbler,
    publishers: RefCell<Vec<Publisher>>,
    subscribers: RefCell<Vec<Subscriber>>,
}

const TOPICS: [&[u8]; 4] = [b"a", b"ab", b"b/x", b""];

impl PubSubLive {
    fn new(ch: PubSub, path: &Path, prefill: u8) -> Self {
        let publishers: Vec<_> = ch.publisher().into_iter().collect();
        let mut subscribers: Vec<_> = ch.subscriber(&[b""]).into_iter().collect();
        subscribers.extend(ch.subscriber(&[b"a"]));
        if let Some(p) = publishers.first() {
            for i in 0..prefill % 8 {
                let _ = p.try_publish(TOPICS[usize::from(i) % 4], &[i; 3]);
            }
        }
        PubSubLive {
            scribbler: Scribbler::open(path),
            ch,
            publishers: RefCell::new(publishers),
            subscribers: RefCell::new(subscribers),
        }
    }

    fn run(&self, steps: &[Step]) {
        for (i, step) in steps.iter().enumerate() {
            if self.scribbler.apply(step) {
                continue;
            }
            match step {
                Step::Op { which, arg } => self.op(*which, *arg),
                Step::Hold => {
                    // Hold a subscriber's message: the subscriber is busy until it is dropped.
                    let Some(mut sub) = self.subscribers.borrow_mut().pop() else {
                        continue;
                    };
                    if let Ok(m) = sub.try_recv() {
                        touch(m.payload());
                        self.run(&steps[i + 1..]);
                        touch(m.topic());
                        touch(m.payload());
                        return;
                    }
                    self.subscribers.borrow_mut().push(sub);
                }
                _ => {}
            }
        }
    }

    fn op(&self, which: u8, arg: u16) {
        let pick = usize::from(arg);
        match which % 9 {
            0 | 1 => {
                if let Some(p) = self.publishers.borrow().get(pick % 2) {
                    let _ = p.try_publish(TOPICS[pick % 4], &payload(arg, 72));
                }
            }
            2 => {
                if let Some(p) = self.publishers.borrow().first() {
                    let _ = p.publish_timeout(&[b'a'; 17][..pick % 18], b"x", Duration::ZERO);
                }
            }
            3 | 4 => {
                if let Some(sub) = self.subscribers.borrow_mut().get_mut(pick % 3) {
                    match sub.try_recv() {
                        Ok(m) => {
                            touch(m.topic());
                            touch(m.payload());
                        }
                        Err(e) => {
                            black_box(e);
                        }
                    }
                }
            }
            5 => {
                let prefix = TOPICS[pick % 4];
                let sub = if arg & 0x100 != 0 {
                    self.ch.subscribe(&[prefix]).history().attach()
                } else {
                    self.ch.subscriber(&[prefix])
                };
                if let Ok(sub) = sub {
                    self.subscribers.borrow_mut().push(sub);
                }
            }
            6 => {
                if let Some(sub) = self.subscribers.borrow_mut().pop() {
                    drop(sub);
                }
            }
            7 => {
                if arg & 1 == 0 {
                    if let Ok(p) = self.ch.publisher() {
                        self.publishers.borrow_mut().push(p);
                    }
                } else {
                    self.publishers.borrow_mut().pop();
                }
            }
            _ => {
                let _ = self.ch.repair();
                black_box((self.ch.published(), self.ch.recovery_stats()));
            }
        }
    }
}

struct ServiceLive {
    svc: Service,
    scribbler: Scribbler,
    servers: RefCell<Vec<Server>>,
    clients: RefCell<Vec<(Client, Vec<Pending>)>>,
}

impl ServiceLive {
    fn new(svc: Service, path: &Path, prefill: u8) -> Self {
        let servers: Vec<_> = svc.server().into_iter().collect();
        let mut clients: Vec<_> = svc.client().into_iter().map(|c| (c, Vec::new())).collect();
        if let Some((c, pending)) = clients.first_mut() {
            for i in 0..prefill % 8 {
                if let Ok(p) = c.try_send(&[i; 4]) {
                    pending.push(p);
                }
            }
        }
        ServiceLive {
            scribbler: Scribbler::open(path),
            svc,
            servers: RefCell::new(servers),
            clients: RefCell::new(clients),
        }
    }

    fn run(&self, steps: &[Step]) {
        for (i, step) in steps.iter().enumerate() {
            if self.scribbler.apply(step) {
                continue;
            }
            match step {
                Step::Op { which, arg } => self.op(*which, *arg),
                Step::Hold => {
                    let servers = self.servers.borrow();
                    if let Some(s) = servers.first() {
                        if let Ok(r) = s.try_recv() {
                            touch(r.payload());
                            self.run(&steps[i + 1..]);
                            touch(r.payload());
                            touch(&r.copy_to_vec());
                            let _ = r.reply(b"held");
                            return;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn op(&self, which: u8, arg: u16) {
        let pick = usize::from(arg);
        match which % 10 {
            0 | 1 => {
                if let Some((c, pending)) = self.clients.borrow_mut().get_mut(pick % 2) {
                    if let Ok(p) = c.try_send(&payload(arg, 72)) {
                        pending.push(p);
                    }
                }
            }
            2 | 3 => {
                if let Ok(servers) = self.servers.try_borrow() {
                    if let Some(s) = servers.get(pick % 2) {
                        if let Ok(r) = s.try_recv() {
                            touch(r.payload());
                            if which % 2 == 0 {
                                let _ = r.reply(&payload(arg, 72));
                            }
                        }
                    }
                }
            }
            4 => {
                if let Some((c, pending)) = self.clients.borrow_mut().get_mut(pick % 2) {
                    if !pending.is_empty() {
                        let p = pending.remove(pick % pending.len());
                        if let Ok(reply) = c.wait_timeout(p, Duration::ZERO) {
                            touch(reply.payload());
                            touch(&reply.copy_to_vec());
                        }
                    }
                }
            }
            5 => {
                if let Some((c, _)) = self.clients.borrow_mut().first_mut() {
                    if let Ok(reply) = c.request_timeout(b"rt", Duration::ZERO) {
                        touch(reply.payload());
                    }
                }
            }
            6 => {
                if arg & 1 == 0 {
                    if let Ok(c) = self.svc.client() {
                        self.clients.borrow_mut().push((c, Vec::new()));
                    }
                } else {
                    self.clients.borrow_mut().pop();
                }
            }
            7 => {
                if let Ok(mut servers) = self.servers.try_borrow_mut() {
                    if arg & 1 == 0 {
                        servers.extend(self.svc.server());
                    } else {
                        servers.pop();
                    }
                }
            }
            8 => {
                let _ = self.svc.repair();
                black_box((self.svc.queued_requests(), self.svc.recovery_stats()));
            }
            _ => {
                if let Some((c, _)) = self.clients.borrow().first() {
                    black_box(c.outstanding());
                }
            }
        }
    }
}
