//! Message queues between processes on one Linux host, over memory-mapped ring buffers.
//!
//! A queue is one file (by default under `/dev/shm`) that every process using it maps. Messages
//! are atomic — a receiver gets a message whole and intact, or not at all — and are placed in
//! fixed-size slots of a lock-free ring, so sending and receiving copy the message at most once
//! and never allocate. Blocking calls park on shared futexes, and a sender pays no system call
//! when nobody is parked or about to park (see the README's guarantees for the two exceptions,
//! which cost one wake-up call each).
//!
//! Patterns:
//! * [`Pipeline`] — a work queue: [`Producer`]s send, each message goes to exactly one
//!   [`Consumer`].
//! * [`PubSub`] — publish-subscribe: every [`Subscriber`] gets every message whose topic
//!   starts with one of its prefixes; slow subscribers either lag ([`Overflow::DropOldest`]) or
//!   hold publishers back ([`Overflow::Block`]).
//! * [`Service`] — request-reply: [`Client`]s send requests that are spread over the attached
//!   [`Server`]s; each reply is routed back to the client that asked.
//!
//! ```
//! # fn main() -> Result<(), shmq::Error> {
//! # let path = std::env::temp_dir().join(format!("shmq-lib-doc-{}", std::process::id()));
//! let queue = shmq::Pipeline::create(&path, &shmq::PipelineOptions::new().capacity(64).max_message(256))?;
//! let (producer, consumer) = (queue.producer()?, queue.consumer()?);
//! producer.send(b"hello")?;
//! assert_eq!(&*consumer.recv()?, b"hello");
//! # shmq::Pipeline::remove(&path)?;
//! # Ok(()) }
//! ```
//!
//! Every blocking wait has an async twin ([`Consumer::recv_async`], [`Subscriber::recv_async`],
//! [`Server::recv_async`], [`Producer::send_async`], [`Publisher::publish_async`]) that any
//! executor can await, woken by sends from other processes: see [`asynchronous`].
//!
//! [`inspect::inspect`] reads any queue file read-only and reports who is attached, who died
//! and what it holds, depth, lag and the counters every participant keeps in the file.
//!
//! See `docs/DESIGN.md` in the repository (and in the published package) for the layers, the
//! on-file format, the protocols (slot states, waiting, recovery) and the trust boundary, and
//! the docs of [`Pipeline`], [`PubSub`] and [`Service`] for the exact semantics of each pattern.

#![deny(missing_docs)]
#![cfg_attr(loom, allow(dead_code, unused_imports))]

#[cfg(not(loom))]
#[macro_use]
mod options;
#[cfg(not(loom))]
pub mod asynchronous;
mod error;
#[cfg(all(feature = "test-hooks", not(loom)))]
#[doc(hidden)]
pub mod exclusive_ring;
pub(crate) mod kind;
#[doc(hidden)] // the on-file format: not API (shmq's tests, CLI and fuzzers read it)
pub mod layout;
pub(crate) mod ring;
pub(crate) mod shm;
#[cfg(not(loom))]
pub(crate) mod stats;
pub(crate) mod sync;
pub(crate) mod testhook;

#[cfg(not(loom))]
pub mod inspect;
pub(crate) mod peers;
#[cfg(not(loom))]
mod pipeline;
#[cfg(not(loom))]
mod pubsub;
#[cfg(not(loom))]
mod reqrep;
#[cfg(not(loom))]
mod salvage;

pub use error::{
    Corruption, Error, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError,
    TrySendError,
};
#[cfg(not(loom))]
pub use peers::RecoveryStats;
#[cfg(not(loom))]
pub use pipeline::{Consumer, ConsumerIter, Loan, Message, Pipeline, PipelineOptions, Producer};

/// The old name of [`PipelineOptions`], kept for one release.
#[cfg(not(loom))]
#[deprecated(note = "renamed `PipelineOptions`, beside `PubSubOptions` and `ServiceOptions`")]
pub type Options = PipelineOptions;
#[cfg(not(loom))]
pub use pubsub::{
    Overflow, PubSub, PubSubOptions, Publisher, Subscribe, Subscriber, SubscriberIter,
    TopicMessage, TopicMessageBuf,
};
#[cfg(not(loom))]
pub use reqrep::{Client, Delivery, Pending, Reply, Request, Server, Service, ServiceOptions};
#[cfg(not(loom))]
pub use salvage::Salvaged;
pub use sync::wait::{WaitStrategy, STALL_CHECK};

/// Instrumentation for shmq's own tests, compiled only with the `test-hooks` feature (which
/// only the crate's own tests enable); not part of the API.
#[cfg(all(feature = "test-hooks", not(loom)))]
#[doc(hidden)]
pub mod test_hooks {
    pub use crate::sync::futex::wake_calls;
    pub use crate::sync::reactor::force_repoll_fallback;
    pub use crate::sync::wait::set_max_park;
}
