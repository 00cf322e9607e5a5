//! What the compared cases share beyond the bench harness: a watched peer whose stdin carries
//! commands, the one-way producer protocol over that stdin, and the consumer's side of it.
//!
//! # Commanded producers
//! Every one-way case works the same way, whatever carries its messages: the parent writes a
//! message count (8 bytes, little-endian) to the producer peer's stdin, a pipe; the peer sends
//! that many stamped [`STREAM_MESSAGE`]-byte messages over the transport under test and then
//! blocks reading its stdin again, so an idle producer takes no CPU while another case is
//! measured. A run of `n` asks for `n + 1` messages and starts the clock after the first has
//! arrived: waking the peer is not timed ([`CommandedThroughput`]).
//!
//! # Peers with a command pipe
//! A [`CommandedPeer`] is the harness's `WatchedPeer` (its early exit ends the parent, which may
//! be blocked in a transport's receive call) with a piped stdin.

use std::io::{Read, Write};
use std::process::{ChildStdin, Stdio};
use std::time::{Duration, Instant};

use crate::common::{stamp, Cpu, OneWay, WatchedPeer, STREAM_MESSAGE};

/// A watched peer process on the peer CPU whose stdin is a pipe from us. Dropping it kills and
/// reaps the peer (before closing the pipe: a peer that saw EOF would exit "early").
pub struct CommandedPeer {
    _peer: WatchedPeer,
    stdin: ChildStdin,
}

impl CommandedPeer {
    /// Spawn this binary as `role` with `args`.
    pub fn spawn(role: &str, args: &[String]) -> Self {
        let mut peer = WatchedPeer::spawn_with(role, args, Cpu::Peer, |cmd| {
            cmd.stdin(Stdio::piped());
        });
        let stdin = peer.child().stdin.take().expect("piped stdin");
        Self { _peer: peer, stdin }
    }

    /// Write a command to the peer's stdin.
    pub fn command(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).expect("write to peer's stdin");
    }
}

/// Read a command the parent wrote to our stdin into `buf` (all of it), blocking; `false` at EOF.
pub fn wait_for_command(buf: &mut [u8]) -> bool {
    std::io::stdin().lock().read_exact(buf).is_ok()
}

/// The consumer's end of a one-way case: receive the next message and check its stamp
/// (`common::check_stamp`) against `seq`.
pub trait Inbox {
    /// Receive one [`STREAM_MESSAGE`]-byte message, which must be stamped `seq`.
    fn recv_stamped(&mut self, seq: u64);
}

/// One-way throughput from a commanded producer peer (see the module docs) into `inbox`.
pub struct CommandedThroughput<I: Inbox> {
    peer: CommandedPeer, // First: the peer goes before the inbox's resources.
    inbox: I,
    received: u64,
}

impl<I: Inbox> CommandedThroughput<I> {
    /// `inbox` is set up already (the service created, the socket bound); spawn the producer
    /// `role` with `args` and wait until its first message has arrived.
    pub fn spawn(inbox: I, role: &str, args: &[String]) -> Self {
        let mut this = Self {
            peer: CommandedPeer::spawn(role, args),
            inbox,
            received: 0,
        };
        this.run(1);
        this
    }

    /// The consumer's end.
    pub fn inbox_mut(&mut self) -> &mut I {
        &mut self.inbox
    }
}

impl<I: Inbox> OneWay for CommandedThroughput<I> {
    fn run(&mut self, iters: u64) -> Duration {
        self.peer.command(&(iters + 1).to_le_bytes());
        self.inbox.recv_stamped(self.received);
        self.received += 1;
        let start = Instant::now();
        for _ in 0..iters {
            self.inbox.recv_stamped(self.received);
            self.received += 1;
        }
        start.elapsed()
    }
}

/// The producer peer's loop: for each count read from stdin, `send` that many stamped
/// messages; until EOF.
pub fn produce_on_command(mut send: impl FnMut(&[u8])) {
    let (mut msg, mut count, mut sent) = ([0u8; STREAM_MESSAGE], [0u8; 8], 0u64);
    while wait_for_command(&mut count) {
        for _ in 0..u64::from_le_bytes(count) {
            stamp(&mut msg, sent);
            send(&msg);
            sent += 1;
        }
    }
}
