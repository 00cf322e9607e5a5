//! ZeroMQ's cases over `ipc://` (a Unix domain socket), through the `zmq` crate's binding of the
//! system libzmq, with its default options and blocking calls: ZeroMQ's ordinary use. Each
//! process has one context, so one I/O thread beside the calling thread; pinning the process
//! before the context is created puts both on the process's CPU.
//!
//! * Round trip: a `PAIR` socket each; we bind, the peer connects; the peer `recv`s into a
//!   buffer and `send`s it back, we copy the reply out.
//! * One way: the peer `PUSH`es stamped 64-byte messages, we `PULL` them into a buffer and check
//!   them; the default high-water marks (1000 messages each side) give the backpressure.
//!
//! Its peers block in `recv` between runs, so an idle one takes no CPU.

use std::fs;
use std::process;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::{check_stamp, RoundTrip, STREAM_MESSAGE};
use crate::peer::{produce_on_command, CommandedPeer, CommandedThroughput, Inbox};

pub const ZMQ_ECHO: &str = "zmq-echo";
pub const ZMQ_PRODUCER: &str = "zmq-producer";

/// The largest message a peer echoes.
const MAX_MESSAGE: usize = 64 << 10;

/// An `ipc://` endpoint unique to this process and call; its socket file is removed on drop.
struct Endpoint {
    path: String,
}

impl Endpoint {
    fn new(what: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir();
        let path = format!(
            "{}/shmq-compare-{}-{n}-{what}.sock",
            dir.display(),
            process::id()
        );
        Self { path }
    }

    fn url(&self) -> String {
        format!("ipc://{}", self.path)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn bound(ctx: &zmq::Context, kind: zmq::SocketType, endpoint: &Endpoint) -> zmq::Socket {
    let socket = ctx.socket(kind).expect("zmq socket");
    let url = endpoint.url();
    socket
        .bind(&url)
        .unwrap_or_else(|e| panic!("zmq bind {url}: {e}"));
    socket
}

fn connected(ctx: &zmq::Context, kind: zmq::SocketType, url: &str) -> zmq::Socket {
    let socket = ctx.socket(kind).expect("zmq socket");
    socket
        .connect(url)
        .unwrap_or_else(|e| panic!("zmq connect {url}: {e}"));
    socket
}

/// Ping-pong over a `PAIR` socket (see the module docs).
pub struct ZmqPingPong {
    _peer: CommandedPeer, // Dropped first.
    socket: zmq::Socket,
    _ctx: zmq::Context,
    _endpoint: Endpoint,
}

impl ZmqPingPong {
    /// Bind, spawn the echo peer, and wait until it has answered.
    pub fn spawn() -> Self {
        let ctx = zmq::Context::new();
        let endpoint = Endpoint::new("pair");
        let socket = bound(&ctx, zmq::PAIR, &endpoint);
        let peer = CommandedPeer::spawn(ZMQ_ECHO, &[endpoint.url()]);
        let mut this = Self {
            _peer: peer,
            socket,
            _ctx: ctx,
            _endpoint: endpoint,
        };
        this.run(64, 0); // The peer is connected and answers.
        this
    }
}

impl RoundTrip for ZmqPingPong {
    fn round_trip(&mut self, msg: &[u8], reply: &mut [u8]) {
        self.socket.send(msg, 0).expect("zmq send");
        let n = self.socket.recv_into(reply, 0).expect("zmq receive");
        assert_eq!(n, reply.len(), "reply length");
    }
}

/// Peer of [`ZmqPingPong`]; args: endpoint.
pub fn zmq_echo_peer(args: &[String]) {
    let ctx = zmq::Context::new();
    let socket = connected(&ctx, zmq::PAIR, &args[0]);
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = socket.recv_into(&mut buf, 0).expect("peer zmq receive");
        socket
            .send(&buf[..n.min(MAX_MESSAGE)], 0)
            .expect("peer zmq send");
    }
}

/// The consumer of ZeroMQ's one-way case: a `PULL` socket.
struct ZmqInbox {
    socket: zmq::Socket,
    buf: [u8; STREAM_MESSAGE],
    _ctx: zmq::Context,
    _endpoint: Endpoint,
}

impl Inbox for ZmqInbox {
    fn recv_stamped(&mut self, seq: u64) {
        let n = self
            .socket
            .recv_into(&mut self.buf, 0)
            .expect("zmq receive");
        assert_eq!(n, STREAM_MESSAGE, "message length"); // `recv_into` truncates longer ones.
        check_stamp(&self.buf, seq);
    }
}

/// One-way throughput of 64-byte messages, `PUSH` → `PULL`.
pub fn throughput() -> CommandedThroughput<impl Inbox> {
    let ctx = zmq::Context::new();
    let endpoint = Endpoint::new("pull");
    let socket = bound(&ctx, zmq::PULL, &endpoint);
    let url = endpoint.url();
    let inbox = ZmqInbox {
        socket,
        buf: [0; STREAM_MESSAGE],
        _ctx: ctx,
        _endpoint: endpoint,
    };
    CommandedThroughput::spawn(inbox, ZMQ_PRODUCER, &[url])
}

/// Peer of [`throughput`]; args: endpoint.
pub fn zmq_producer_peer(args: &[String]) {
    let ctx = zmq::Context::new();
    let socket = connected(&ctx, zmq::PUSH, &args[0]);
    produce_on_command(|msg| socket.send(msg, 0).expect("peer zmq send"));
}
