//! Error types: one enum per concern (see [`Error`]).

use std::fmt;
use std::io;
use std::path::PathBuf;

/// What was wrong with a queue file, found while opening it or while using it. Its `Display`
/// is a phrase of its own ("not a shmq queue file (magic …)"); the errors that carry it
/// ([`Error::Corrupt`], [`SendError::Corrupt`], [`RecvError::Corrupt`]) name the file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Corruption {
    /// The file does not start with shmq's magic number.
    BadMagic {
        /// The eight bytes found where the magic number belongs.
        found: u64,
    },
    /// The file was written by another version of the on-disk format.
    UnsupportedVersion {
        /// The format version in the file.
        found: u32,
        /// The format version this build reads.
        expected: u32,
    },
    /// The file holds another pattern (e.g. a publish-subscribe channel opened as a pipeline).
    WrongKind {
        /// The kind recorded in the file.
        found: u32,
        /// The kind the caller asked for.
        expected: u32,
    },
    /// The header's geometry is impossible or does not match the file's size.
    BadGeometry(&'static str),
    /// The file is shorter than its header says it must be.
    Truncated {
        /// The file's actual length.
        len: u64,
        /// The length the header implies.
        expected: u64,
    },
    /// The creator never finished initialising the file (it may have crashed while creating it).
    Uninitialized,
    /// A word in the ring or the participant table holds a value the protocol never writes.
    BadState(&'static str),
    /// A message length read from a slot exceeds the queue's maximum message size.
    BadLength {
        /// The length found in the slot.
        len: u64,
        /// The queue's maximum message size.
        max: u64,
    },
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::BadMagic { found } => {
                write!(f, "not a shmq queue file (magic {found:#018x})")
            }
            Corruption::UnsupportedVersion { found, expected } => write!(
                f,
                "format version {found}, but this build of shmq reads version {expected}"
            ),
            Corruption::WrongKind { found, expected } => write!(
                f,
                "a {} opened as a {}",
                crate::kind::kind_name(*found),
                crate::kind::kind_name(*expected)
            ),
            Corruption::BadGeometry(what) => write!(f, "invalid header: {what}"),
            Corruption::Truncated { len, expected } => write!(
                f,
                "truncated: {len} bytes long but its header needs {expected}"
            ),
            Corruption::Uninitialized => write!(
                f,
                "never fully initialised (its creator may have died while creating it); \
                 remove it and create it again"
            ),
            Corruption::BadState(what) => write!(f, "corrupt: {what}"),
            Corruption::BadLength { len, max } => write!(
                f,
                "corrupt: a slot holds a message of {len} bytes but the maximum is {max}"
            ),
        }
    }
}

/// Opening, creating or attaching to a queue failed.
///
/// Error types: one enum per concern.
///
/// * [`Error`]: opening, creating or attaching to a queue file went wrong (I/O, a file that is
///   not a shmq queue, a file of another format version, kind or geometry, a full table).
/// * [`SendError`]: a message could not be sent; [`TrySendError`] and [`SendTimeoutError`]
///   add what the calls that wait less can also return (`Full`, `Timeout`).
/// * [`RecvError`]: no message could be received; [`TryRecvError`] and [`RecvTimeoutError`]
///   add `Empty` and `Timeout`.
/// * [`Corruption`]: something read from shared memory broke the protocol's invariants. The
///   mapping is untrusted input, so this is an error value, never a panic.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A system call on the queue file failed.
    Io {
        /// The queue file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// The queue file's contents are not a valid queue of the expected kind.
    Corrupt {
        /// The queue file.
        path: PathBuf,
        /// What is wrong with it.
        problem: Corruption,
    },
    /// The options given to `create` are out of range.
    InvalidOptions(String),
    /// Inspecting a queue file found a value the protocol never writes (see `shmq::inspect`).
    BadField {
        /// The queue file.
        path: PathBuf,
        /// Which word: e.g. "participant entry 3 role".
        field: String,
        /// What is wrong with its value.
        problem: String,
    },
    /// Every participant slot of the queue is taken.
    TooManyParticipants {
        /// The queue file.
        path: PathBuf,
        /// The table's size, fixed at creation.
        max: u32,
    },
    /// The queue was created with exclusive ends (`PipelineOptions::single_producer` and
    /// `single_consumer`) and a live participant already holds the end asked for.
    EndTaken {
        /// The queue file.
        path: PathBuf,
        /// Which end: `"producer"` or `"consumer"`.
        end: &'static str,
    },
    /// Sending failed (converted from [`SendError`] so that `?` works in one function, and
    /// from the `Send` variants of [`TrySendError`] and [`SendTimeoutError`]).
    Send(SendError),
    /// Receiving failed (converted from [`RecvError`], and from the `Recv` variants of
    /// [`TryRecvError`] and [`RecvTimeoutError`]).
    Recv(RecvError),
    /// A call that never waits found no room (converted from [`TrySendError::Full`]).
    Full,
    /// A call that never waits found nothing to receive (converted from
    /// [`TryRecvError::Empty`]).
    Empty,
    /// A call's deadline passed (converted from [`SendTimeoutError::Timeout`] and
    /// [`RecvTimeoutError::Timeout`]; [`Client::request_timeout`](crate::Client::request_timeout)
    /// returns it whether the time ran out before the request was sent or before its reply
    /// came).
    Timeout,
    /// The queue file's owner or mode is not one this process trusts: it is writable by others,
    /// or it belongs to another user and is not a group file of a group this process is in.
    Untrusted {
        /// The queue file.
        path: PathBuf,
        /// The file's owner (uid).
        owner: u32,
        /// The file's group (gid).
        group: u32,
        /// The file's permission bits.
        mode: u32,
        /// This process's effective uid.
        euid: u32,
        /// Which part of the rule the file breaks.
        reason: &'static str,
    },
}

impl std::error::Error for Corruption {}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, op, source } => {
                write!(f, "{op} queue file {}: {source}", path.display())
            }
            Error::Corrupt { path, problem } => {
                write!(f, "queue file {}: {problem}", path.display())
            }
            Error::InvalidOptions(why) => write!(f, "invalid queue options: {why}"),
            Error::BadField {
                path,
                field,
                problem,
            } => write!(
                f,
                "queue file {} is corrupt: {field} {problem}",
                path.display()
            ),
            Error::TooManyParticipants { path, max } => write!(
                f,
                "queue file {} already has its maximum of {max} participants attached; \
                 detach one or create the queue with a larger participant limit",
                path.display()
            ),
            Error::EndTaken { path, end } => write!(
                f,
                "queue file {} was created for a single {end}, and a live one is attached; \
                 detach it first, or create the queue without single_producer() and \
                 single_consumer() to share it",
                path.display()
            ),
            Error::Send(e) => write!(f, "{e}"),
            Error::Recv(e) => write!(f, "{e}"),
            Error::Full => TrySendError::Full.fmt(f),
            Error::Empty => TryRecvError::Empty.fmt(f),
            Error::Timeout => write!(f, "timed out: the deadline passed before the call finished"),
            Error::Untrusted {
                path,
                owner,
                group,
                mode,
                euid,
                reason,
            } => write!(
                f,
                "refusing queue file {} (owner uid {owner}, group {group}, mode {mode:04o}): \
                 {reason}; shmq opens only files owned by its effective uid ({euid}), or \
                 group-writable files of a group it is in, and never files writable by others. \
                 Remove it, or have its owner create it with `group(gid)`",
                path.display()
            ),
        }
    }
}

/// Every variant displays what it wraps (the operating system's error, the corruption, the
/// send or receive error), so `source()` returns none of them: an error either displays its
/// source or returns it, never both. The wrapped values are public fields, to match on.
impl std::error::Error for Error {}

/// Why a message was not sent. Nothing was written when this is returned.
///
/// What the blocking calls return (`send`, `loan`, `publish`, `Client::send`, …): they wait
/// for room, so never say "full" or "timed out". A call that waits less wraps it: in
/// [`TrySendError::Send`] (`try_send`, `try_loan`, `try_publish`) or
/// [`SendTimeoutError::Send`] (`send_timeout`, `publish_timeout`, `Request::reply`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The message is larger than the queue's maximum message size.
    TooLarge {
        /// The message's length.
        len: usize,
        /// The queue's maximum message size, fixed at creation.
        max: usize,
    },
    /// The topic is longer than the channel's maximum topic size.
    TopicTooLarge {
        /// The topic's length.
        len: usize,
        /// The channel's maximum topic size, fixed at creation.
        max: usize,
    },
    /// Request-reply: every one of the client's places (`reply_capacity`, see
    /// [`Client`](crate::Client)) is held by a request still waited for, a reply kept for a
    /// later wait or a [`Reply`](crate::Reply) not dropped yet. Only the caller frees one (by
    /// waiting for a reply, or dropping a ticket or a reply), so a blocking send returns this at
    /// once instead of waiting for ever.
    AllPlacesHeld {
        /// The client's number of places, fixed at creation (`reply_capacity`).
        places: usize,
    },
    /// The slot this send had claimed was taken away before it was committed: a recovery pass
    /// judged this participant dead, or another process rewrote the queue file. Nothing was
    /// sent. Counted in [`RecoveryStats::refused`](crate::RecoveryStats::refused).
    ClaimLost,
    /// The shared memory broke the protocol (another process wrote nonsense into it).
    Corrupt(Corruption),
    /// The handle was attached by another process: this is a fork child using a copy it
    /// inherited. A child that wants to take part attaches handles of its own.
    WrongProcess {
        /// The process that attached the handle.
        attached_by: u32,
    },
}

/// The text of both `WrongProcess` errors.
fn wrong_process(f: &mut fmt::Formatter<'_>, attached_by: u32) -> fmt::Result {
    write!(
        f,
        "this handle belongs to process {attached_by}, which attached it; a forked child \
         must attach handles of its own"
    )
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::TooLarge { len, max } => write!(
                f,
                "message of {len} bytes is larger than the queue's maximum of {max} bytes"
            ),
            SendError::TopicTooLarge { len, max } => write!(
                f,
                "topic of {len} bytes is longer than the channel's maximum of {max} bytes"
            ),
            SendError::AllPlacesHeld { places } => write!(
                f,
                "every one of the client's {places} places is held by a request waited for, \
                 a reply kept or a reply not dropped: wait for a reply, or drop a ticket or a \
                 reply, to free one"
            ),
            SendError::ClaimLost => write!(
                f,
                "the slot being written was taken away before the commit (this participant was \
                 judged dead, or another process rewrote the queue file): nothing was sent; \
                 send it again"
            ),
            SendError::Corrupt(c) => write!(f, "queue file: {c}"),
            SendError::WrongProcess { attached_by } => wrong_process(f, *attached_by),
        }
    }
}

impl std::error::Error for SendError {}

/// Why no message was received.
///
/// What the blocking calls return (`recv`, `recv_into`, `recv_batch`, `Server::recv`,
/// `Client::wait`, the iterators' items): they wait for a message, so never say "empty" or
/// "timed out". A call that waits less wraps it: in [`TryRecvError::Recv`] (`try_recv`,
/// `try_recv_into`) or [`RecvTimeoutError::Recv`] (`recv_timeout`, `recv_into_timeout`,
/// `Client::wait_timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvError {
    /// Request-reply: the server dropped the request without replying.
    NoReply,
    /// Request-reply: the [`Pending`](crate::Pending) ticket was made by another client. Its
    /// request can only be answered on the client that sent it.
    WrongClient,
    /// The queue is empty and no producer is attached, so no message can come until one
    /// attaches. Only for a consumer that asked for it with
    /// [`Consumer::set_disconnect_when_alone`](crate::Consumer::set_disconnect_when_alone);
    /// by default a receive waits, since a queue outlives its producers.
    Disconnected,
    /// A publish-subscribe subscriber fell more than a ring behind and missed this many
    /// messages; it continues from the oldest message still retained.
    ///
    /// `n` counts the missed messages **of every topic**, not only of the subscriber's own:
    /// they were overwritten before it read them, so their topics are unknown to it. A
    /// subscriber to a quiet topic on a busy channel can lag without having missed a message
    /// of its topic.
    Lagged(u64),
    /// An acknowledgement was refused: the message (or request) had been taken back before it
    /// was acknowledged, because a recovery pass judged this participant dead or another
    /// process rewrote the queue file. It may be delivered again (flagged `redelivered()`), so
    /// its work may be done twice. Counted in
    /// [`RecoveryStats::refused`](crate::RecoveryStats::refused).
    ClaimLost,
    /// The shared memory broke the protocol (another process wrote nonsense into it).
    Corrupt(Corruption),
    /// A copying receive was given a buffer shorter than the queue's maximum message size
    /// (checked before anything is received, so no message is taken).
    BufferTooSmall {
        /// The buffer's length.
        len: usize,
        /// The queue's maximum message size: the buffer must hold at least this many bytes.
        max: usize,
    },
    /// The handle was attached by another process (see [`SendError::WrongProcess`]).
    WrongProcess {
        /// The process that attached the handle.
        attached_by: u32,
    },
    /// A pipeline created with `PipelineOptions::checksum`: the next message's payload does not match
    /// the CRC32C its producer recorded, so its bytes (or its recorded length or checksum) were
    /// changed after it was sent. The message was skipped: acknowledged, never handed out, and
    /// counted in the consumer's statistics (`inspect::Counts::bad_checksum`). Receive again for
    /// the next one.
    BadChecksum {
        /// The message's recorded length in bytes.
        len: usize,
        /// The checksum its producer recorded.
        recorded: u32,
        /// The checksum of the bytes found.
        computed: u32,
    },
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Lagged(n) => write!(f, "fell behind and missed {n} messages"),
            RecvError::NoReply => write!(f, "the server dropped the request without replying"),
            RecvError::WrongClient => write!(
                f,
                "the ticket belongs to another client: wait for it on the client that sent \
                 the request"
            ),
            RecvError::Disconnected => {
                write!(f, "the queue is empty and every producer has detached")
            }
            RecvError::ClaimLost => write!(
                f,
                "the acknowledgement was refused: the message had been taken back (this \
                 participant was judged dead, or another process rewrote the queue file) and \
                 may be delivered again"
            ),
            RecvError::Corrupt(c) => write!(f, "queue file: {c}"),
            RecvError::BufferTooSmall { len, max } => write!(
                f,
                "receive buffer of {len} bytes is shorter than the queue's maximum message of \
                 {max} bytes; pass a buffer of at least {max} bytes"
            ),
            RecvError::WrongProcess { attached_by } => wrong_process(f, *attached_by),
            RecvError::BadChecksum {
                len,
                recorded,
                computed,
            } => write!(
                f,
                "a message of {len} bytes failed its payload checksum (CRC32C {computed:#010x}, \
                 recorded {recorded:#010x}): it was changed in the queue file after it was sent, \
                 and was skipped rather than delivered altered"
            ),
        }
    }
}

impl std::error::Error for RecvError {}

/// Why [`try_send`](crate::Producer::try_send) (or another call that never waits:
/// `try_loan`, `try_publish`, `Client::try_send`) sent nothing.
///
/// `Send` is transparent: it displays as the [`SendError`] it holds, so
/// [`source`](std::error::Error::source) returns nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrySendError {
    /// There is no room now (the queue, the channel's slowest subscriber in Block mode, or a
    /// client's places): a blocking call would have waited.
    Full,
    /// The send failed for a reason waiting would not change.
    Send(SendError),
}

impl TrySendError {
    /// Whether there was no room now.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full)
    }
}

/// Why [`send_timeout`](crate::Producer::send_timeout) (or `publish_timeout`,
/// `Request::reply`) sent nothing.
///
/// `Send` is transparent: it displays as the [`SendError`] it holds, so
/// [`source`](std::error::Error::source) returns nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendTimeoutError {
    /// There was still no room when the deadline passed.
    Timeout,
    /// The send failed for a reason waiting would not change.
    Send(SendError),
}

impl SendTimeoutError {
    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout)
    }
}

/// Why [`try_recv`](crate::Consumer::try_recv) (or another receive that never waits)
/// received nothing.
///
/// `Recv` is transparent: it displays as the [`RecvError`] it holds, so
/// [`source`](std::error::Error::source) returns nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TryRecvError {
    /// Nothing is ready now: a blocking call would have waited.
    Empty,
    /// The receive failed for a reason waiting would not change.
    Recv(RecvError),
}

impl TryRecvError {
    /// Whether nothing was ready.
    pub fn is_empty(&self) -> bool {
        matches!(self, TryRecvError::Empty)
    }
}

/// Why [`recv_timeout`](crate::Consumer::recv_timeout) (or another receive or wait with a
/// timeout) received nothing.
///
/// `Recv` is transparent: it displays as the [`RecvError`] it holds, so
/// [`source`](std::error::Error::source) returns nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// Nothing arrived before the deadline.
    Timeout,
    /// The receive failed for a reason waiting would not change.
    Recv(RecvError),
}

impl RecvTimeoutError {
    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, RecvTimeoutError::Timeout)
    }
}

impl fmt::Display for TrySendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full => write!(f, "no room to send now (the queue is full)"),
            TrySendError::Send(e) => e.fmt(f),
        }
    }
}

impl fmt::Display for SendTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout => write!(f, "timed out waiting for room to send"),
            SendTimeoutError::Send(e) => e.fmt(f),
        }
    }
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => write!(f, "nothing to receive now (the queue is empty)"),
            TryRecvError::Recv(e) => e.fmt(f),
        }
    }
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => write!(f, "timed out waiting for a message"),
            RecvTimeoutError::Recv(e) => e.fmt(f),
        }
    }
}

/// The wrapped error is displayed (the wrapper is transparent), so not returned as a source.
impl std::error::Error for TrySendError {}
/// The wrapped error is displayed (the wrapper is transparent), so not returned as a source.
impl std::error::Error for SendTimeoutError {}
/// The wrapped error is displayed (the wrapper is transparent), so not returned as a source.
impl std::error::Error for TryRecvError {}
/// The wrapped error is displayed (the wrapper is transparent), so not returned as a source.
impl std::error::Error for RecvTimeoutError {}

impl From<SendError> for TrySendError {
    fn from(e: SendError) -> Self {
        TrySendError::Send(e)
    }
}

impl From<SendError> for SendTimeoutError {
    fn from(e: SendError) -> Self {
        SendTimeoutError::Send(e)
    }
}

impl From<RecvError> for TryRecvError {
    fn from(e: RecvError) -> Self {
        TryRecvError::Recv(e)
    }
}

impl From<RecvError> for RecvTimeoutError {
    fn from(e: RecvError) -> Self {
        RecvTimeoutError::Recv(e)
    }
}

/// How a call that waits until a [`Deadline`](crate::sync::Deadline) ended without success:
/// the deadline passed, or it failed with `E`. The public calls narrow it to their own error
/// type: `Expired` is [`TrySendError::Full`] / [`TryRecvError::Empty`] for a call that never
/// waits, `Timeout` for a timed one, and impossible for a call that waits as long as it takes
/// (see [`Waited::forever`]).
#[derive(Debug)]
pub(crate) enum Waited<E> {
    /// The deadline passed (for `Deadline::Now`: at once) with nothing done.
    Expired,
    /// The call failed for a reason of its own.
    Failed(E),
}

impl<E> From<E> for Waited<E> {
    fn from(e: E) -> Self {
        Waited::Failed(e)
    }
}

impl<E> Waited<E> {
    /// The outcome of a wait until a deadline, whose attempt fails with `E`: `None` means the
    /// deadline passed.
    pub(crate) fn of<T>(waited: Result<Option<T>, E>) -> Result<T, Waited<E>> {
        match waited {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(Waited::Expired),
            Err(e) => Err(Waited::Failed(e)),
        }
    }

    /// The error of a call that waited with `Deadline::Never`, which never expires: a wait
    /// (`WaitCell::wait_or_repair` and `wait_for`) without a deadline returns only when its
    /// attempt succeeds or fails, and nothing read from shared memory changes that.
    #[track_caller]
    pub(crate) fn forever(self) -> E {
        match self {
            Waited::Failed(e) => e,
            Waited::Expired => unreachable!("a wait without a deadline returned unfinished"),
        }
    }

    /// The error as `F`, with `expired` for a deadline that passed.
    pub(crate) fn or<F: From<E>>(self, expired: F) -> F {
        match self {
            Waited::Expired => expired,
            Waited::Failed(e) => F::from(e),
        }
    }
}

impl SendError {
    /// The outcome of waiting for room until a deadline: `None` means the deadline passed.
    pub(crate) fn from_wait<T>(
        waited: Result<Option<T>, Corruption>,
    ) -> Result<T, Waited<SendError>> {
        Waited::of(waited.map_err(SendError::Corrupt))
    }
}

impl RecvError {
    /// The outcome of waiting for a message until a deadline: `None` means the deadline
    /// passed.
    pub(crate) fn from_wait<T>(
        waited: Result<Option<T>, Corruption>,
    ) -> Result<T, Waited<RecvError>> {
        Waited::of(waited.map_err(RecvError::Corrupt))
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        Error::Send(e)
    }
}

impl From<RecvError> for Error {
    fn from(e: RecvError) -> Self {
        Error::Recv(e)
    }
}

impl From<TrySendError> for Error {
    fn from(e: TrySendError) -> Self {
        match e {
            TrySendError::Full => Error::Full,
            TrySendError::Send(e) => Error::Send(e),
        }
    }
}

impl From<SendTimeoutError> for Error {
    fn from(e: SendTimeoutError) -> Self {
        match e {
            SendTimeoutError::Timeout => Error::Timeout,
            SendTimeoutError::Send(e) => Error::Send(e),
        }
    }
}

impl From<TryRecvError> for Error {
    fn from(e: TryRecvError) -> Self {
        match e {
            TryRecvError::Empty => Error::Empty,
            TryRecvError::Recv(e) => Error::Recv(e),
        }
    }
}

impl From<RecvTimeoutError> for Error {
    fn from(e: RecvTimeoutError) -> Self {
        match e {
            RecvTimeoutError::Timeout => Error::Timeout,
            RecvTimeoutError::Recv(e) => Error::Recv(e),
        }
    }
}

impl Error {
    /// An option's count as the file's 32-bit field, or `InvalidOptions` naming the option.
    pub(crate) fn option_u32(n: usize, option: &str) -> Result<u32, Error> {
        u32::try_from(n)
            .map_err(|_| Error::InvalidOptions(format!("{option} of {n} is out of range")))
    }

    pub(crate) fn io(path: &std::path::Path, op: &'static str, source: io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    pub(crate) fn corrupt(path: &std::path::Path, problem: Corruption) -> Self {
        Error::Corrupt {
            path: path.to_path_buf(),
            problem,
        }
    }
}
