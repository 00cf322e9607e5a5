//! Async waiting: futures for every blocking call, woken by sends from any process.
//!
//! [`Consumer::recv_async`], [`Subscriber::recv_async`], [`Server::recv_async`],
//! [`Client::wait_async`], [`Producer::send_async`] and [`Publisher::publish_async`] return
//! futures that resolve to what the blocking calls return: a [`RecvError`] or a [`SendError`],
//! never `Empty` or `Full` (they wait instead). They need no particular runtime — only
//! [`std::task::Waker`] — and work under tokio, async-std, smol or a hand-written executor
//! alike.
//!
//! # How they wait
//!
//! A poll first makes the non-blocking attempt (`try_recv`, `try_send`, …); when the queue is
//! ready that is all it does. Otherwise the future registers on the queue's wait cell exactly
//! as a blocking waiter does (it joins the cell's count, so that notifiers know to wake it,
//! and tries again), and hands its [`Waker`](std::task::Waker) to a *reactor*: one thread per
//! process (one more per 127 pending futures), started lazily, that sleeps in `futex_waitv`
//! on the words of every pending future and wakes a future's task when a notifier moves its
//! word on. Nothing spins inside `poll`. On kernels without `futex_waitv` (before 5.16) the
//! reactor falls back at run time to looking at the words every millisecond. See
//! `docs/DESIGN.md` §7.6 for the protocol and why no wake-up is lost.
//!
//! A future that waits longer than [`STALL_CHECK`](crate::STALL_CHECK) is woken to run the
//! stall sweep, as a parked blocking call does: a queue whose other side died recovers while
//! futures wait on it.
//!
//! # Cancellation safety
//!
//! Every future here is cancellation-safe. Dropping one that has not resolved (a `select!`
//! branch that lost, a timeout) loses nothing: a message is only taken by the attempt that
//! resolves the future, so an unresolved future holds no claim and the next receive gets the
//! message. [`Client::wait_async`] borrows its ticket rather than taking it, so a dropped wait
//! leaves the request outstanding and the ticket as good as before. Dropping it also takes it off the wait cell's count at once, so senders stop
//! paying wake-up calls for it.
//!
//! # The reactor thread
//!
//! By default each reactor runs on a plain `std::thread`. A program that wants to choose its
//! affinity or priority, or run it on a thread of its own, calls [`set_reactor_spawner`]
//! before its first async wait.
//!
//! # Streams
//!
//! There is no `Stream` implementation: the received types borrow their handle (zero copy), so
//! a stream would have to copy every message; a `loop { h.recv_async().await }` does the same
//! without a dependency on `futures-core`.
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("shmq-async-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let q = shmq::Pipeline::create(dir.join("q"), &shmq::PipelineOptions::new())?;
//! let (producer, consumer) = (q.producer()?, q.consumer()?);
//! let receive = async {
//!     let msg = consumer.recv_async().await?;
//!     Ok::<_, shmq::Error>(msg.to_vec())
//! };
//! producer.send(b"hello")?;
//! # let got = block_on(receive)?;
//! # assert_eq!(got, b"hello");
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # fn block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     struct Unpark(std::thread::Thread);
//! #     impl std::task::Wake for Unpark { fn wake(self: std::sync::Arc<Self>) { self.0.unpark() } }
//! #     let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
//! #     let mut cx = std::task::Context::from_waker(&waker);
//! #     let mut f = std::pin::pin!(f);
//! #     loop {
//! #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
//! #         std::thread::park();
//! #     }
//! # }
//! # Ok::<(), shmq::Error>(())
//! ```

use crate::error::{RecvError, SendError, TryRecvError, TrySendError};
use crate::pipeline::{Consumer, Message, Producer};
use crate::pubsub::{Publisher, Subscriber, TopicMessage};
use crate::reqrep::{Client, Found, Pending, Reply, Request, Server};
use crate::sync::reactor::{AsyncSource, AsyncWait, KeepAlive};
use crate::sync::WaitCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub use crate::sync::reactor::{set_reactor_spawner, ReactorLoop, ReactorStarted};

/// `Empty` (nothing to receive yet) as "not yet".
fn unless_empty<T>(r: Result<T, TryRecvError>) -> Result<Option<T>, RecvError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(TryRecvError::Empty) => Ok(None),
        Err(TryRecvError::Recv(e)) => Err(e),
    }
}

/// `Full` (no room yet) as "not yet".
fn unless_full(r: Result<(), TrySendError>) -> Result<Option<()>, SendError> {
    match r {
        Ok(()) => Ok(Some(())),
        Err(TrySendError::Full) => Ok(None),
        Err(TrySendError::Send(e)) => Err(e),
    }
}

/// The future of [`Consumer::recv_async`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Recv<'a> {
    consumer: &'a Consumer,
    wait: AsyncWait,
}

impl<'a> AsyncSource for &'a Consumer {
    type Ready = Message<'a>;
    type Error = RecvError;
    fn attempt(&mut self) -> Result<Option<Message<'a>>, RecvError> {
        let consumer: &'a Consumer = self;
        unless_empty(consumer.try_recv())
    }
    fn cell(&self) -> (WaitCell<'_>, KeepAlive) {
        self.async_cell()
    }
    fn repair(&self) {
        self.async_repair();
    }
}

impl<'a> Future for Recv<'a> {
    type Output = Result<Message<'a>, RecvError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut consumer = this.consumer;
        this.wait.poll(cx, &mut consumer)
    }
}

impl Consumer {
    /// Receives the next message, awaiting one while the queue is empty. Cancellation-safe
    /// (see [`asynchronous`](crate::asynchronous)).
    ///
    /// # Errors
    /// As for [`recv`](Self::recv).
    pub fn recv_async(&self) -> Recv<'_> {
        Recv {
            consumer: self,
            wait: AsyncWait::default(),
        }
    }
}

/// The future of [`Producer::send_async`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct SendMsg<'a, 'm> {
    sending: Sending<'a, 'm>,
    wait: AsyncWait,
}

#[derive(Debug)]
struct Sending<'a, 'm> {
    producer: &'a Producer,
    msg: &'m [u8],
}

impl AsyncSource for Sending<'_, '_> {
    type Ready = ();
    type Error = SendError;
    fn attempt(&mut self) -> Result<Option<()>, SendError> {
        unless_full(self.producer.try_send(self.msg))
    }
    fn cell(&self) -> (WaitCell<'_>, KeepAlive) {
        self.producer.async_cell()
    }
    fn repair(&self) {
        self.producer.async_repair();
    }
}

impl Future for SendMsg<'_, '_> {
    type Output = Result<(), SendError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.wait.poll(cx, &mut this.sending)
    }
}

impl Producer {
    /// Sends `msg`, awaiting room while the queue is full. Cancellation-safe: dropped before
    /// it resolves, nothing was sent.
    ///
    /// # Errors
    /// As for [`send`](Self::send).
    pub fn send_async<'a, 'm>(&'a self, msg: &'m [u8]) -> SendMsg<'a, 'm> {
        SendMsg {
            sending: Sending {
                producer: self,
                msg,
            },
            wait: AsyncWait::default(),
        }
    }
}

/// The future of [`Publisher::publish_async`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Publish<'a, 'm> {
    publishing: Publishing<'a, 'm>,
    wait: AsyncWait,
}

#[derive(Debug)]
struct Publishing<'a, 'm> {
    publisher: &'a Publisher,
    topic: &'m [u8],
    payload: &'m [u8],
}

impl AsyncSource for Publishing<'_, '_> {
    type Ready = ();
    type Error = SendError;
    fn attempt(&mut self) -> Result<Option<()>, SendError> {
        unless_full(self.publisher.try_publish(self.topic, self.payload))
    }
    fn cell(&self) -> (WaitCell<'_>, KeepAlive) {
        self.publisher.async_cell()
    }
    fn repair(&self) {
        self.publisher.async_repair();
    }
}

impl Future for Publish<'_, '_> {
    type Output = Result<(), SendError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.wait.poll(cx, &mut this.publishing)
    }
}

impl Publisher {
    /// Publishes `payload` under `topic`, awaiting room in Block mode (in drop-oldest mode it
    /// never waits). Cancellation-safe: dropped before it resolves, nothing was published.
    ///
    /// # Errors
    /// As for [`publish`](Self::publish).
    pub fn publish_async<'a, 'm>(&'a self, topic: &'m [u8], payload: &'m [u8]) -> Publish<'a, 'm> {
        Publish {
            publishing: Publishing {
                publisher: self,
                topic,
                payload,
            },
            wait: AsyncWait::default(),
        }
    }
}

/// The future of [`Subscriber::recv_async`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct RecvTopic<'a> {
    /// `None` once resolved.
    subscriber: Option<&'a mut Subscriber>,
    wait: AsyncWait,
}

/// A subscriber looking for its next message without borrowing it yet.
struct Looking<'s>(&'s mut Subscriber);

impl AsyncSource for Looking<'_> {
    type Ready = (usize, usize);
    type Error = RecvError;
    fn attempt(&mut self) -> Result<Option<(usize, usize)>, RecvError> {
        self.0.async_look()
    }
    fn cell(&self) -> (WaitCell<'_>, KeepAlive) {
        self.0.async_cell()
    }
    fn repair(&self) {
        self.0.async_repair();
    }
}

impl<'a> Future for RecvTopic<'a> {
    type Output = Result<TopicMessage<'a>, RecvError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let subscriber = this
            .subscriber
            .take()
            .expect("RecvTopic polled after it resolved");
        match this.wait.poll(cx, &mut Looking(&mut *subscriber)) {
            Poll::Ready(Ok(found)) => {
                let subscriber: &'a Subscriber = subscriber;
                Poll::Ready(Ok(subscriber.found(found)))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.subscriber = Some(subscriber);
                Poll::Pending
            }
        }
    }
}

impl Subscriber {
    /// Receives the next message of a subscribed topic, awaiting one. Cancellation-safe:
    /// dropped before it resolves, it has not moved past any message of a subscribed topic.
    ///
    /// # Errors
    /// As for [`recv`](Self::recv).
    pub fn recv_async(&mut self) -> RecvTopic<'_> {
        RecvTopic {
            subscriber: Some(self),
            wait: AsyncWait::default(),
        }
    }
}

/// The future of [`Server::recv_async`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct RecvRequest<'a> {
    server: &'a Server,
    wait: AsyncWait,
}

impl<'a> AsyncSource for &'a Server {
    type Ready = Request<'a>;
    type Error = RecvError;
    fn attempt(&mut self) -> Result<Option<Request<'a>>, RecvError> {
        let server: &'a Server = self;
        unless_empty(server.try_recv())
    }
    fn cell(&self) -> (WaitCell<'_>, KeepAlive) {
        self.async_cell()
    }
    fn repair(&self) {
        self.async_repair();
    }
}

impl<'a> Future for RecvRequest<'a> {
    type Output = Result<Request<'a>, RecvError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut server = this.server;
        this.wait.poll(cx, &mut server)
    }
}

impl Server {
    /// Takes the next request, awaiting one. Cancellation-safe (see
    /// [`asynchronous`](crate::asynchronous)).
    ///
    /// # Errors
    /// As for [`recv`](Self::recv).
    pub fn recv_async(&self) -> RecvRequest<'_> {
        RecvRequest {
            server: self,
            wait: AsyncWait::default(),
        }
    }
}

/// The future of [`Client::wait_async`].
#[must_use = "futures do nothing unless polled"]
pub struct WaitReply<'a> {
    /// `None` once resolved.
    client: Option<&'a Client>,
    pending: &'a mut Pending,
    wait: AsyncWait,
}

impl std::fmt::Debug for WaitReply<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitReply")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

/// A client looking for the reply to a ticket without redeeming it yet.
struct Awaiting<'c, 'p> {
    client: &'c Client,
    pending: &'p Pending,
}

impl AsyncSource for Awaiting<'_, '_> {
    type Ready = Found;
    type Error = RecvError;
    fn attempt(&mut self) -> Result<Option<Found>, RecvError> {
        self.client.async_look(self.pending)
    }
    fn cell(&self) -> (WaitCell<'_>, KeepAlive) {
        self.client.async_cell()
    }
    fn repair(&self) {
        self.client.async_repair();
    }
}

impl<'a> Future for WaitReply<'a> {
    type Output = Result<Reply<'a>, RecvError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let client = this
            .client
            .take()
            .expect("WaitReply polled after it resolved");
        let mut awaiting = Awaiting {
            client,
            pending: this.pending,
        };
        match this.wait.poll(cx, &mut awaiting) {
            Poll::Ready(Ok(found)) => Poll::Ready(client.async_reply(this.pending, found)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.client = Some(client);
                Poll::Pending
            }
        }
    }
}

impl Client {
    /// Awaits the reply to `pending`, as [`wait`](Self::wait) does. It borrows the ticket
    /// rather than taking it, so that the wait is cancellation-safe: dropped before it
    /// resolves, it leaves the request outstanding and the ticket valid for another wait
    /// (replies to other requests it took meanwhile are kept for their own waits). Once it has
    /// resolved, the ticket is spent: waiting on it again reports "no such request".
    ///
    /// # Errors
    /// As for [`wait`](Self::wait); on [`RecvError::Corrupt`] the request is given up.
    pub fn wait_async<'a>(&'a self, pending: &'a mut Pending) -> WaitReply<'a> {
        WaitReply {
            client: Some(self),
            pending,
            wait: AsyncWait::default(),
        }
    }
}
