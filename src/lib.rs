//! Message queues between processes on one Linux host, over memory-mapped ring buffers.
//!
//! A queue is one file (by default under `/dev/shm`) that every process using it maps. Messages
//! are atomic — a receiver gets a message whole and intact, or not at all — and are placed in
//! fixed-size slots of a lock-free ring, so sending and receiving copy the message at most once
//! and never allocate. Blocking calls park on shared futexes, and a sender pays no system call
//! when nobody is parked.
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
//! let queue = shmq::Pipeline::create(&path, &shmq::Options::new().capacity(64).max_message(256))?;
//! let (producer, consumer) = (queue.producer()?, queue.consumer()?);
//! producer.send(b"hello")?;
//! assert_eq!(&*consumer.recv()?, b"hello");
//! # shmq::Pipeline::remove(&path)?;
//! # Ok(()) }
//! ```
//!
//! See `docs/DESIGN.md` in the repository (and in the published package) for the layers, the
//! on-file format, the protocols (slot states, waiting, recovery) and the trust boundary, and
//! the module docs of each pattern for its exact semantics.

#![cfg_attr(loom, allow(dead_code, unused_imports))]

pub mod error;
pub mod layout;
pub(crate) mod ring;
pub(crate) mod shm;
pub(crate) mod sync;
#[cfg(not(loom))]
pub(crate) mod testhook;

#[cfg(not(loom))]
pub(crate) mod peers;
#[cfg(not(loom))]
pub mod pipeline;
#[cfg(not(loom))]
pub mod pubsub;
#[cfg(not(loom))]
pub mod reqrep;
#[cfg(not(loom))]
pub mod salvage;

pub use error::{Corruption, Error, RecvError, SendError};
#[cfg(not(loom))]
pub use peers::RecoveryStats;
#[cfg(not(loom))]
pub use pipeline::{Consumer, Loan, Message, Options, Pipeline, Producer};
#[cfg(not(loom))]
pub use pubsub::{Overflow, PubSub, PubSubOptions, Publisher, Subscribe, Subscriber, TopicMessage};
#[cfg(not(loom))]
pub use reqrep::{Client, Delivery, Pending, Reply, Request, Server, Service, ServiceOptions};
#[cfg(not(loom))]
pub use salvage::Salvaged;
pub use sync::wait::{WaitStrategy, STALL_CHECK};
