//! The reactor: how a future waits on a wait cell without a thread of its own.
//!
//! An async wait follows the wait cell protocol of [`super::wait`] exactly, with the sleep
//! handed to a reactor thread:
//!
//! ```text
//! future (poll)                                  reactor thread
//! attempt: ready -> leave (if counted); done     ctl = control word
//! counted in the cell's current epoch?           lock; for each armed registration:
//!   no:  s = join (CAS +1); heavy barrier          w = word (Acquire)
//!        attempt: ready -> leave(s); done          epoch(w) != epoch(s): fire (take the
//!   arm (lock; s, waker; bump control, wake it       waker, disarm, wake it after unlock)
//!        if the reactor must look again)           armed >= stall interval: fire
//! Pending                                          otherwise: sleep on (word, w)
//!                                                unlock; futex_waitv(control ctl, words..)
//! drop / completion: leave(s); deregister
//! ```
//!
//! **No lost wake-up.** A future joins and re-checks as a blocking waiter does, so by the
//! argument of [`super::wait`] either its re-check sees the condition, or a notifier sees it
//! counted and moves the epoch on and wakes the word. The reactor compares the epoch of every
//! armed word with the one its future joined *after* reading the control word and before it
//! sleeps, and `futex_waitv` compares every word (and the control word) with what it read
//! under the kernel's lock: a word moved after the reading makes the call return at once, a
//! wake after the call started wakes it. A future armed after the reactor read the control
//! word bumps that word, so the call returns at once too. A future that polls again while it
//! is still counted (the epoch has not moved) stays registered and only refreshes its waker.
//!
//! **Notifiers pay only for registered futures.** A future is counted in the cell from its
//! join until a notifier moves the epoch (which takes it off) or it leaves: on completion, or
//! when it is dropped. So a dropped future stops costing notifiers wake-up calls at once, and
//! holds no claim (claims are only taken by the attempt that makes the future ready).
//!
//! **Recovery.** A registration armed for longer than the stall interval (the longest park of
//! a blocking waiter, [`STALL_CHECK`](super::wait::STALL_CHECK)) is woken, so the future's next
//! poll runs the stall sweep and retries, as a parked blocking waiter does.
//!
//! **Shards.** `futex_waitv` takes at most 128 words, so one reactor serves 127 registrations
//! plus its control word; more pending futures start more reactor threads (lazily, and they
//! stay for the life of the process). The control word lives in this process's memory:
//! only this process's futures change a reactor's registrations (it is still waited on with
//! the shared futex operations, like every other word).
//!
//! **Old kernels.** Without `futex_waitv` (Linux < 5.16: `ENOSYS`; or any other error than a
//! wake-up's, such as a seccomp filter's refusal), a reactor falls back to
//! a timed re-poll: it sleeps on its control word for at most [`REPOLL`] and looks at every
//! armed word again. Correct, at the price of up to a millisecond of latency and a thousand
//! wake-ups a second while futures are pending.

use super::futex;
use super::wait::{epoch, max_park, WaitCell};
use nix::errno::Errno;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// What keeps a registered futex word mapped: the handle's mapping (any owner of the memory).
pub(crate) type KeepAlive = Arc<dyn Send + Sync>;

/// `futex_waitv` takes at most this many words in one call.
const WAITV_MAX: usize = 128;

/// Registrations one reactor serves: all its words but the control word.
const PER_REACTOR: usize = WAITV_MAX - 1;

/// How often a reactor without `futex_waitv` looks at its words.
pub(crate) const REPOLL: Duration = Duration::from_millis(1);

/// `futex_waitv`'s syscall number (the same on every architecture that has it).
const SYS_FUTEX_WAITV: nix::libc::c_long = 449;
/// `FUTEX2_SIZE_U32`: the word is 32 bits.
const FUTEX2_SIZE_U32: u32 = 0x02;

/// One element of `futex_waitv`'s array (`struct futex_waitv` of `<linux/futex.h>`).
#[repr(C)]
#[derive(Clone, Copy)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

const _: () = assert!(std::mem::size_of::<FutexWaitv>() == 24);

/// A futex word in a mapping that `keep` holds mapped. Cloning it clones the `Arc`, so a
/// registration needs no allocation of its own.
#[derive(Clone)]
struct Word {
    ptr: NonNull<AtomicU32>,
    #[allow(dead_code)] // held, not read: keeps the word mapped
    keep: KeepAlive,
}

// SAFETY: the pointer is to an AtomicU32 (Sync) in memory kept alive by `keep` (Send + Sync);
// sharing or sending it shares or sends only a reference to that atomic.
unsafe impl Send for Word {}
// SAFETY: as above.
unsafe impl Sync for Word {}

impl Word {
    fn new(cell: WaitCell<'_>, keep: KeepAlive) -> Self {
        Word {
            ptr: NonNull::from(cell.word()),
            keep,
        }
    }

    fn get(&self) -> &AtomicU32 {
        // SAFETY: `ptr` came from a live `&AtomicU32` into the memory `keep` keeps mapped (the
        // caller of `AsyncWait::poll` passes the handle's own mapping with its cell), and
        // `keep` lives as long as `self`.
        unsafe { self.ptr.as_ref() }
    }
}

/// A future's registration, as its reactor sees it.
struct Entry {
    word: Word,
    /// The word as the future's join left it: the epoch it is counted in.
    joined: u32,
    /// Some while armed: whom to wake when the epoch moves (or the wait stalls).
    waker: Option<Waker>,
    /// When it was last armed.
    since: Instant,
}

/// A reactor: up to [`PER_REACTOR`] registrations and the thread that sleeps on them.
struct Reactor {
    entries: Mutex<Vec<Option<Entry>>>,
    /// Bumped (and woken) whenever the armed set changes in a way the reactor must see.
    control: AtomicU32,
}

impl Reactor {
    fn lock(&self) -> MutexGuard<'_, Vec<Option<Entry>>> {
        // A panic while holding the lock leaves the entries consistent (plain assignments).
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the reactor thread to look at its registrations again.
    fn kick(&self) {
        self.control.fetch_add(1, Ordering::SeqCst);
        futex::wake_local(&self.control);
    }
}

/// Every reactor this process started (leaked: they serve for the life of the process), and
/// which process that is: a child made by `fork` has none of its parent's threads, so it
/// starts reactors of its own.
static REACTORS: Mutex<Reactors> = Mutex::new(Reactors {
    pid: 0,
    started: Vec::new(),
});

struct Reactors {
    pid: u32,
    started: Vec<&'static Reactor>,
}

impl Reactors {
    /// The reactors running in this process.
    fn here(&mut self) -> &mut Vec<&'static Reactor> {
        let pid = std::process::id();
        if self.pid != pid {
            self.pid = pid;
            self.started.clear();
        }
        &mut self.started
    }
}

/// How reactor threads are started; set at most once, before the first one starts.
type Spawner = Box<dyn Fn(ReactorLoop) + Send + Sync>;
static SPAWNER: OnceLock<Spawner> = OnceLock::new();

/// Whether a reactor has been started (after which the spawner can no longer be chosen).
static STARTED: AtomicBool = AtomicBool::new(false);

/// Test-hooks builds: make every reactor use the timed re-poll, as without `futex_waitv`.
#[cfg(feature = "test-hooks")]
static FORCE_REPOLL: AtomicBool = AtomicBool::new(false);

/// Set once a future's barrier failed ([`super::barrier::heavy`]): notifiers in other
/// processes may not fence, so every reactor re-polls from then on (at most [`REPOLL`] late).
static UNFENCED: AtomicBool = AtomicBool::new(false);

/// Test-hooks builds only: makes every reactor of this process behave as on a kernel without
/// `futex_waitv` (the timed re-poll). Call before the first async wait.
#[cfg(feature = "test-hooks")]
pub fn force_repoll_fallback() {
    FORCE_REPOLL.store(true, Ordering::SeqCst);
}

/// The loop of one reactor thread, handed to the spawner chosen with
/// [`set_reactor_spawner`]: call [`run`](Self::run) on the thread that is to serve it.
pub struct ReactorLoop {
    reactor: &'static Reactor,
}

impl fmt::Debug for ReactorLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReactorLoop").finish_non_exhaustive()
    }
}

impl ReactorLoop {
    /// Serves the reactor's registrations for ever (never returns). Futures waiting on it
    /// are only woken while a thread runs this.
    pub fn run(self) -> ! {
        run(self.reactor)
    }
}

/// [`set_reactor_spawner`] was called after a reactor had started, or twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReactorStarted;

impl fmt::Display for ReactorStarted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the reactor thread is already started (or a spawner was already set): \
             call set_reactor_spawner once, before the first async wait",
        )
    }
}

impl std::error::Error for ReactorStarted {}

/// Chooses how this process's reactor threads start: `spawn` is called with each reactor's
/// loop (one per 127 pending futures, started when first needed) and must run
/// [`ReactorLoop::run`] on a thread — for example one created with the affinity and priority
/// a real-time program wants, or a thread it already owns. By default each loop runs on a
/// plain `std::thread` named `shmq-reactor`.
///
/// # Errors
/// [`ReactorStarted`] if a reactor already started or a spawner was already set.
pub fn set_reactor_spawner(
    spawn: impl Fn(ReactorLoop) + Send + Sync + 'static,
) -> Result<(), ReactorStarted> {
    let mut reactors = REACTORS.lock().unwrap_or_else(|e| e.into_inner());
    if STARTED.load(Ordering::SeqCst) || !reactors.here().is_empty() {
        return Err(ReactorStarted);
    }
    SPAWNER.set(Box::new(spawn)).map_err(|_| ReactorStarted)
}

/// Starts a reactor thread with the chosen spawner (or the default).
fn start(reactor: &'static Reactor) {
    STARTED.store(true, Ordering::SeqCst);
    let spawner = SPAWNER.get_or_init(|| {
        Box::new(|l: ReactorLoop| {
            std::thread::Builder::new()
                .name("shmq-reactor".into())
                .spawn(move || l.run())
                .expect("start the shmq reactor thread");
        })
    });
    spawner(ReactorLoop { reactor });
}

/// A free registration on some reactor, starting a new one when all are full.
fn register(word: &Word) -> (&'static Reactor, usize) {
    let mut all = REACTORS.lock().unwrap_or_else(|e| e.into_inner());
    let reactors = all.here();
    let entry = || Entry {
        word: word.clone(),
        joined: 0,
        waker: None,
        since: Instant::now(),
    };
    for &reactor in reactors.iter() {
        let mut entries = reactor.lock();
        if let Some(i) = entries.iter().position(Option::is_none) {
            entries[i] = Some(entry());
            return (reactor, i);
        }
    }
    let mut entries: Vec<Option<Entry>> = (0..PER_REACTOR).map(|_| None).collect();
    entries[0] = Some(entry());
    let reactor: &'static Reactor = Box::leak(Box::new(Reactor {
        entries: Mutex::new(entries),
        control: AtomicU32::new(0),
    }));
    reactors.push(reactor);
    drop(all);
    start(reactor);
    (reactor, 0)
}

/// What a pending future needs from the handle it waits on.
pub(crate) trait AsyncSource {
    /// What the future resolves to.
    type Ready;
    /// Its error.
    type Error;
    /// One non-blocking attempt (the handle's `try_` call); `Ok(None)`: not yet.
    fn attempt(&mut self) -> Result<Option<Self::Ready>, Self::Error>;
    /// The wait cell to register on, and what keeps its memory mapped.
    fn cell(&self) -> (WaitCell<'_>, KeepAlive);
    /// The stall sweep (reap dead participants; errors ignored).
    fn repair(&self);
}

/// The waiting state of one future: unregistered until its first attempt fails.
#[derive(Default)]
pub(crate) struct AsyncWait {
    registered: Option<Registration>,
}

/// A future's registration with a reactor, from its first failed attempt until it completes
/// or is dropped.
struct Registration {
    reactor: &'static Reactor,
    slot: usize,
    word: Word,
    /// What the future's last join returned (it is counted while the word's epoch is that).
    joined: Option<u32>,
    /// When the future runs the stall sweep next.
    next_repair: Instant,
}

impl fmt::Debug for AsyncWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncWait")
            .field("registered", &self.registered.is_some())
            .finish()
    }
}

impl AsyncWait {
    /// Polls: tries `src` first (the fast path touches nothing else); on failure registers
    /// with a reactor, joins the cell, re-checks, and arms the waker.
    pub(crate) fn poll<S: AsyncSource>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
    ) -> Poll<Result<S::Ready, S::Error>> {
        if let Some(reg) = &mut self.registered {
            let now = Instant::now();
            if now >= reg.next_repair {
                src.repair();
                reg.next_repair = now + super::wait::STALL_CHECK;
            }
        }
        if let Some(done) = src.attempt().transpose() {
            self.finish();
            return Poll::Ready(done);
        }
        let reg = self.registered.get_or_insert_with(|| {
            let (cell, keep) = src.cell();
            let word = Word::new(cell, keep);
            let (reactor, slot) = register(&word);
            Registration {
                reactor,
                slot,
                word,
                joined: None,
                next_repair: Instant::now() + super::wait::STALL_CHECK,
            }
        });
        let cell = WaitCell::of_word(reg.word.get());
        let still_counted = reg
            .joined
            .filter(|&j| epoch(cell.word().load(Ordering::Acquire)) == epoch(j));
        let joined = match still_counted {
            Some(j) => j,
            None => {
                let j = cell.join();
                reg.joined = Some(j);
                if !super::barrier::heavy() {
                    // Notifiers elsewhere may not fence: look again soon (re-poll mode).
                    UNFENCED.store(true, Ordering::Relaxed);
                }
                if let Some(done) = src.attempt().transpose() {
                    self.finish();
                    return Poll::Ready(done);
                }
                j
            }
        };
        reg.arm(joined, cx.waker());
        Poll::Pending
    }

    /// Leaves the cell (if still counted) and gives the registration back: on completion,
    /// and when the future is dropped.
    pub(crate) fn finish(&mut self) {
        let Some(reg) = self.registered.take() else {
            return;
        };
        if let Some(j) = reg.joined {
            WaitCell::of_word(reg.word.get()).leave(j);
        }
        let was_armed = {
            let mut entries = reg.reactor.lock();
            let entry = entries[reg.slot].take();
            entry.is_some_and(|e| e.waker.is_some())
        };
        if was_armed {
            // The reactor may be asleep on the word: let it drop it (and its mapping).
            reg.reactor.kick();
        }
    }
}

impl Drop for AsyncWait {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Registration {
    /// Arms the registration with `joined` and `waker`; tells the reactor only when what it
    /// sleeps on changed (a new join, or newly armed).
    fn arm(&self, joined: u32, waker: &Waker) {
        let must_look = {
            let mut entries = self.reactor.lock();
            let entry = entries[self.slot]
                .as_mut()
                .expect("a registration's slot is its own until it finishes");
            let must_look = entry.waker.is_none() || entry.joined != joined;
            match &mut entry.waker {
                Some(w) => w.clone_from(waker),
                none => *none = Some(waker.clone()),
            }
            if must_look {
                entry.joined = joined;
                entry.since = Instant::now();
            }
            must_look
        };
        if must_look {
            self.reactor.kick();
        }
    }
}

/// Whether this reactor must use the timed re-poll.
fn repoll_forced() -> bool {
    #[cfg(feature = "test-hooks")]
    let forced = FORCE_REPOLL.load(Ordering::SeqCst);
    #[cfg(not(feature = "test-hooks"))]
    let forced = false;
    forced
}

/// The reactor thread's loop.
fn run(reactor: &'static Reactor) -> ! {
    let mut waitv: Vec<FutexWaitv> = Vec::with_capacity(WAITV_MAX);
    let mut keep: Vec<Word> = Vec::with_capacity(PER_REACTOR);
    let mut fire: Vec<Waker> = Vec::with_capacity(PER_REACTOR);
    let mut repoll = repoll_forced();
    loop {
        repoll |= UNFENCED.load(Ordering::Relaxed);
        let control = reactor.control.load(Ordering::SeqCst);
        let stall = max_park();
        waitv.clear();
        keep.clear();
        waitv.push(FutexWaitv {
            val: u64::from(control),
            uaddr: reactor.control.as_ptr() as u64,
            flags: FUTEX2_SIZE_U32,
            reserved: 0,
        });
        let mut next_stall: Option<Instant> = None;
        {
            let now = Instant::now();
            let mut entries = reactor.lock();
            for entry in entries.iter_mut().flatten() {
                if entry.waker.is_none() {
                    continue;
                }
                let w = entry.word.get().load(Ordering::Acquire);
                let stalled_at = entry.since.checked_add(stall);
                if epoch(w) != epoch(entry.joined) || stalled_at.is_some_and(|t| now >= t) {
                    fire.extend(entry.waker.take());
                    continue;
                }
                if let Some(t) = stalled_at {
                    next_stall = Some(next_stall.map_or(t, |n| n.min(t)));
                }
                waitv.push(FutexWaitv {
                    val: u64::from(w),
                    uaddr: entry.word.get().as_ptr() as u64,
                    flags: FUTEX2_SIZE_U32,
                    reserved: 0,
                });
                keep.push(entry.word.clone());
            }
        }
        for waker in fire.drain(..) {
            waker.wake();
        }
        let timeout = next_stall.map(|t| t.saturating_duration_since(Instant::now()));
        if !repoll {
            match futex_waitv(&waitv, timeout) {
                Ok(()) => {}
                // Woken by a mismatch, a signal or the timeout: look again.
                Err(Errno::EAGAIN | Errno::EINTR | Errno::ETIMEDOUT) => {}
                // ENOSYS (Linux < 5.16), or refused (a seccomp filter): re-poll from now on,
                // rather than call it again at once for ever.
                Err(_) => repoll = true,
            }
        }
        if repoll {
            let left = timeout.map_or(REPOLL, |t| t.min(REPOLL));
            let left = if waitv.len() > 1 { left } else { stall };
            futex::wait_local(&reactor.control, control, left);
        }
    }
}

/// `futex_waitv` on `waitv` (each element's word compared with its value) until a wake, a
/// mismatch, a signal or `timeout`.
fn futex_waitv(waitv: &[FutexWaitv], timeout: Option<Duration>) -> Result<(), Errno> {
    let deadline = timeout.map(|t| {
        let mut now = nix::libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec to `now`, a live local.
        unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut now) };
        let now = Duration::new(
            now.tv_sec.max(0) as u64,
            now.tv_nsec.clamp(0, 999_999_999) as u32,
        );
        let at = now.saturating_add(t);
        nix::libc::timespec {
            tv_sec: at.as_secs().min(i64::MAX as u64) as nix::libc::time_t,
            tv_nsec: at.subsec_nanos() as nix::libc::c_long,
        }
    });
    let ts_ptr = deadline
        .as_ref()
        .map_or(std::ptr::null(), |ts| ts as *const nix::libc::timespec);
    // What the call needs: `waitv` is a live array of `waitv.len()` (at most 128)
    // `struct futex_waitv`s whose addresses are aligned u32s kept mapped for the call (the
    // control word is static; every other word is kept mapped by its `Word` in the caller's
    // `keep` list); `ts_ptr` is null or points at `deadline`, alive for the call; flags 0 and
    // CLOCK_MONOTONIC as the syscall requires. The kernel only reads this memory.
    // SAFETY: all of the above holds here.
    let r = unsafe {
        nix::libc::syscall(
            SYS_FUTEX_WAITV,
            waitv.as_ptr(),
            waitv.len() as nix::libc::c_uint,
            0 as nix::libc::c_uint,
            ts_ptr,
            nix::libc::CLOCK_MONOTONIC,
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}
