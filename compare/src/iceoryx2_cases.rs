//! iceoryx2's cases, in its IPC service mode (`ipc::Service`: shared memory between processes),
//! publish-subscribe with `[u8]` slice payloads loaned from the publisher's shared-memory pool
//! (zero-copy: a sample is written in place and only its offset travels).
//!
//! * Round trip: two services, "ping" (we publish, the peer subscribes) and "pong" (the other
//!   way), each with one publisher, one subscriber, no history and a subscriber buffer of one
//!   sample with safe overflow: the setup of iceoryx2's own publish-subscribe benchmark. Both
//!   sides busy-poll `receive()`: iceoryx2's subscribers do not block (waiting takes a separate
//!   event service and a waitset), so its figure sits beside shmq's busy-poll one. Like every
//!   other case of the harness, the parent copies the message into the loaned sample and the
//!   reply out of the received one, and the peer copies the received payload into a sample loaned
//!   on "pong" (shmq's peer likewise sends straight from the slot it received).
//! * One way: one service, the peer publishing stamped 64-byte samples, we receive and check
//!   them; a subscriber buffer of 1024 samples without overflow, and the publisher retrying until
//!   delivered when it is full (backpressure, as a shmq queue or the SPSC ring has).
//!
//! An idle round-trip peer (an empty sample) blocks reading its stdin until the next round trip,
//! so it does not spin on the peer core while other cases run. Service names carry our pid and a
//! counter. Every node is created with signal handling disabled; the peer is SIGKILLed when its
//! case ends, and our node's drop removes what the dead peer's node left (iceoryx2 cleans up the
//! resources of dead nodes when a node is dropped, by default).

use std::process;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory as PubSubService;

use crate::common::{check_stamp, RoundTrip, STREAM_MESSAGE};
use crate::peer::{
    produce_on_command, wait_for_command, CommandedPeer, CommandedThroughput, Inbox,
};

pub const ICEORYX2_ECHO: &str = "iceoryx2-echo";
pub const ICEORYX2_PRODUCER: &str = "iceoryx2-producer";

/// Largest round-trip message, the publishers' slice length.
const MAX_MESSAGE: usize = 1024;
/// The one-way subscriber's buffer, in samples (a shmq queue's default capacity).
const BUFFER: usize = 1024;
/// How long to wait for a peer's ports to appear.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

type Pub = Publisher<ipc::Service, [u8], ()>;
type Sub = Subscriber<ipc::Service, [u8], ()>;
type Service = PubSubService<ipc::Service, [u8], ()>;

/// Before any iceoryx2 call: errors only (it warns, e.g., that it found no config file).
pub fn quiet_logs() {
    set_log_level(LogLevel::Error);
}

fn node() -> Node<ipc::Service> {
    NodeBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .expect("create iceoryx2 node")
}

/// A service name unique to this process and call.
fn unique_name(what: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("shmq-compare-{}-{n}-{what}", process::id())
}

fn service_name(name: &str) -> ServiceName {
    ServiceName::new(name).unwrap_or_else(|e| panic!("service name {name}: {e:?}"))
}

/// Create the service `name`: one publisher, one subscriber, no history, `buffer` samples per
/// subscriber, overflowing (the oldest sample is replaced) if `overflow`.
fn create_service(node: &Node<ipc::Service>, name: &str, buffer: usize, overflow: bool) -> Service {
    node.service_builder(&service_name(name))
        .publish_subscribe::<[u8]>()
        .max_publishers(1)
        .max_subscribers(1)
        .history_size(0)
        .subscriber_max_buffer_size(buffer)
        .enable_safe_overflow(overflow)
        .create()
        .unwrap_or_else(|e| panic!("create iceoryx2 service {name}: {e:?}"))
}

fn open_service(node: &Node<ipc::Service>, name: &str) -> Service {
    node.service_builder(&service_name(name))
        .publish_subscribe::<[u8]>()
        .open()
        .unwrap_or_else(|e| panic!("open iceoryx2 service {name}: {e:?}"))
}

fn publisher(service: &Service, max_len: usize) -> Pub {
    service
        .publisher_builder()
        .initial_max_slice_len(max_len)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()
        .expect("create iceoryx2 publisher")
}

fn subscriber(service: &Service) -> Sub {
    service
        .subscriber_builder()
        .create()
        .expect("create iceoryx2 subscriber")
}

/// Publish a copy of `msg` in a loaned sample.
fn publish(publisher: &Pub, msg: &[u8]) {
    let sample = publisher
        .loan_slice_uninit(msg.len())
        .expect("loan iceoryx2 sample");
    sample
        .write_from_slice(msg)
        .send()
        .expect("send iceoryx2 sample");
}

/// Wait (sleeping 1 ms between looks) until `ready` holds; panics after [`SETUP_TIMEOUT`].
fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < SETUP_TIMEOUT, "iceoryx2 peer: no {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Busy-poll ping-pong over two publish-subscribe services (see the module docs).
pub struct Iceoryx2PingPong {
    peer: CommandedPeer, // Fields drop in order: the peer first, our node last.
    parked: bool,
    ping: Pub,
    pong: Sub,
    _services: [Service; 2],
    _node: Node<ipc::Service>,
}

impl Iceoryx2PingPong {
    /// Create both services and our ports, spawn the echo peer, and wait until it has answered.
    pub fn spawn() -> Self {
        let node = node();
        let names = [unique_name("ping"), unique_name("pong")];
        let services = [
            create_service(&node, &names[0], 1, true),
            create_service(&node, &names[1], 1, true),
        ];
        let ping = publisher(&services[0], MAX_MESSAGE);
        let pong = subscriber(&services[1]);
        let peer = CommandedPeer::spawn(ICEORYX2_ECHO, &names);
        wait_for("subscriber on ping", || {
            services[0].dynamic_config().number_of_subscribers() == 1
        });
        wait_for("publisher on pong", || {
            services[1].dynamic_config().number_of_publishers() == 1
        });
        let mut this = Self {
            peer,
            parked: false,
            ping,
            pong,
            _services: services,
            _node: node,
        };
        this.run(64, 0); // The peer answers.
        this
    }
}

impl RoundTrip for Iceoryx2PingPong {
    fn round_trip(&mut self, msg: &[u8], reply: &mut [u8]) {
        if std::mem::take(&mut self.parked) {
            self.peer.command(&[1]);
        }
        publish(&self.ping, msg);
        loop {
            if let Some(sample) = self.pong.receive().expect("receive pong") {
                reply.copy_from_slice(sample.payload());
                return;
            }
        }
    }

    fn idle(&mut self) {
        publish(&self.ping, &[]);
        self.parked = true;
    }
}

/// Peer of [`Iceoryx2PingPong`]; args: ping service name, pong service name.
pub fn iceoryx2_echo_peer(args: &[String]) {
    let node = node();
    let ping = subscriber(&open_service(&node, &args[0]));
    let pong = publisher(&open_service(&node, &args[1]), MAX_MESSAGE);
    let mut wake = [0u8];
    loop {
        let Some(sample) = ping.receive().expect("peer receive") else {
            continue;
        };
        let msg = sample.payload();
        if msg.is_empty() {
            drop(sample);
            if !wait_for_command(&mut wake) {
                return;
            }
            continue;
        }
        publish(&pong, msg);
    }
}

/// The consumer of iceoryx2's one-way case, busy-polling.
struct Iceoryx2Inbox {
    data: Sub,
    _service: Service,
    _node: Node<ipc::Service>,
}

impl Inbox for Iceoryx2Inbox {
    fn recv_stamped(&mut self, seq: u64) {
        loop {
            if let Some(sample) = self.data.receive().expect("receive") {
                check_stamp(sample.payload(), seq);
                return;
            }
        }
    }
}

/// One-way throughput of 64-byte samples (see the module docs).
pub fn throughput() -> CommandedThroughput<impl Inbox> {
    let node = node();
    let name = unique_name("data");
    let service = create_service(&node, &name, BUFFER, false);
    let data = subscriber(&service);
    let inbox = Iceoryx2Inbox {
        data,
        _service: service,
        _node: node,
    };
    CommandedThroughput::spawn(inbox, ICEORYX2_PRODUCER, &[name])
}

/// Peer of [`throughput`]; args: service name.
pub fn iceoryx2_producer_peer(args: &[String]) {
    let node = node();
    let data = publisher(&open_service(&node, &args[0]), STREAM_MESSAGE);
    produce_on_command(|msg| publish(&data, msg));
}
