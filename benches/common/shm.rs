//! Shared-memory scratch files and the waiting primitives of the baselines and of the job
//! peers: a control word that one side stores and the other spins or parks on.
//!
//! # Protocol
//! Both sides map one file in `/dev/shm` ([`ShmFile`]). Control words are `AtomicU64`s, each in its
//! own 128-byte line ([`Padded`]). A writer fills the payload with plain copies, then stores the
//! word with `Release`; the reader loads it with `Acquire` and only then copies the payload. That
//! pair is the only ordering needed: between those two points the protocol gives one process
//! exclusive use of the payload bytes, so lengths and counts beside the word can be `Relaxed`.
//!
//! Waiting is either a busy spin or "parked every time": a waiter that finds the word unchanged
//! calls `FUTEX_WAIT` at once (shared futex, no `FUTEX_PRIVATE_FLAG`: the other side is another
//! process) and the writer always calls `FUTEX_WAKE` after its store. In a ping-pong the other side
//! can hardly have answered yet, so about 97% of waits park (counted with `perf stat`). No wake-up
//! is lost: `FUTEX_WAIT` compares the word with the value the waiter last saw under the kernel's
//! futex lock, so a store that lands first makes it return at once. Waits time out every 100 ms to
//! check that the peer is alive.
//!
//! The parent commands a peer through a doorbell word (a sequence number). Between measurements it
//! rings with the [`PARK_BIT`] set: the peer then sleeps on the futex instead of spinning, so an
//! idle baseline peer (such as the raw ping-pong used to bracket another case) does not steal the
//! peer core from the case being measured. The next ring wakes it.

use std::fs::{self, File, OpenOptions};
use std::hint;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process;
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};
use nix::libc;

/// A scratch file in `/dev/shm`, mapped shared and pre-faulted. The creating process removes it
/// on drop, or earlier with [`ShmFile::remove`] once the peer has it mapped.
pub struct ShmFile {
    map: MmapRaw,
    path: PathBuf,
    owner: bool,
}

impl ShmFile {
    /// Create a zero-filled file of `len` bytes with a name unique to this process.
    pub fn create(len: usize) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/dev/shm/shmq-bench-{}-{n}", process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        file.set_len(len as u64).expect("size the scratch file");
        Self {
            map: Self::map(&file, &path),
            path,
            owner: true,
        }
    }

    /// Map a file created by [`ShmFile::create`] in another process.
    pub fn open(path: &Path) -> Self {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        Self {
            map: Self::map(&file, path),
            path: path.to_owned(),
            owner: false,
        }
    }

    fn map(file: &File, path: &Path) -> MmapRaw {
        // MAP_POPULATE: fault every page in now, not during the first measured messages.
        let map = MmapOptions::new().populate().map_raw(file);
        map.unwrap_or_else(|e| panic!("map {}: {e}", path.display()))
    }

    /// The file's path, to pass to a peer.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unlink the file (if this process created it); the mappings stay valid.
    pub fn remove(&mut self) {
        if std::mem::take(&mut self.owner) {
            let _ = fs::remove_file(&self.path);
        }
    }

    /// The header of type `T` at the start of the mapping.
    pub(super) fn header<T: SharedHeader>(&self) -> &T {
        let base = self.map.as_mut_ptr();
        assert!(size_of::<T>() <= self.map.len() && base as usize % align_of::<T>() == 0);
        // SAFETY: the header is inside the mapping and aligned (checked above), and the mapping
        // lives as long as `self`. `T: SharedHeader` is made only of atomics, so any bytes (zeroes
        // from a new file, whatever the peer wrote) are a valid `T`, and the peer writing them
        // concurrently through its own mapping is not a data race.
        unsafe { &*base.cast::<T>() }
    }

    fn checked_ptr(&self, offset: usize, len: usize) -> *mut u8 {
        let in_bounds = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.map.len());
        assert!(
            in_bounds,
            "{len} bytes at {offset} outside the {}-byte mapping",
            self.map.len()
        );
        self.map.as_mut_ptr().wrapping_add(offset)
    }

    /// Copy `src` into the mapping at `offset`.
    ///
    /// # Safety
    /// Nothing else may access those bytes during the call: the caller's protocol must have given
    /// them to this process.
    pub(super) unsafe fn write(&self, offset: usize, src: &[u8]) {
        let dst = self.checked_ptr(offset, src.len());
        // SAFETY: `dst` has `src.len()` bytes inside the live mapping (checked); `src` is a private
        // buffer, so they do not overlap; exclusive access is the caller's obligation.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    /// Copy bytes at `offset` out of the mapping into `dst`.
    ///
    /// # Safety
    /// Nothing may write those bytes during the call: the caller's protocol must have given them
    /// to this process.
    pub(super) unsafe fn read(&self, offset: usize, dst: &mut [u8]) {
        let src = self.checked_ptr(offset, dst.len());
        // SAFETY: `src` has `dst.len()` bytes inside the live mapping (checked); `dst` is a private
        // buffer, so they do not overlap; no concurrent writer is the caller's obligation.
        unsafe { ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) }
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A `#[repr(C)]` header viewed in place at the start of a [`ShmFile`].
///
/// # Safety
/// Every field must be an atomic (or padding), so that every bit pattern is a valid value and the
/// other process writing it concurrently is not a data race.
pub(super) unsafe trait SharedHeader {}

/// A doorbell or reply word and its argument (message length, target count), in one line.
#[repr(C)]
pub(super) struct Mailbox {
    pub(super) seq: AtomicU64,
    pub(super) arg: AtomicU64,
}

/// Aligns (and so pads) its content to 128 bytes: a cache line and its adjacent-line prefetch
/// partner, so two hot words never share either.
#[repr(C, align(128))]
pub struct Padded<T>(pub T);

// ---------------------------------------------------------------------------------------------
// Waiting on a word: spin or shared futex
// ---------------------------------------------------------------------------------------------

/// How a side waits for a control word to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Busy-poll the word.
    Spin,
    /// `FUTEX_WAIT` as soon as the word is found unchanged; the writer always `FUTEX_WAKE`s.
    Park,
}

impl Wait {
    pub(super) fn as_arg(self) -> &'static str {
        match self {
            Wait::Spin => "spin",
            Wait::Park => "park",
        }
    }

    pub(super) fn from_arg(arg: &str) -> Self {
        match arg {
            "spin" => Wait::Spin,
            "park" => Wait::Park,
            _ => panic!("unknown wait mode `{arg}`"),
        }
    }
}

/// Set in a doorbell value to tell the peer to sleep on the futex until the next ring.
pub const PARK_BIT: u64 = 1 << 63;
/// A spinning waiter calls its slow-path hook (the peer liveness check) this often.
const SPINS_PER_CHECK: u32 = 1 << 14;
/// A parked waiter wakes this often to run its slow-path hook.
const FUTEX_TIMEOUT: Duration = Duration::from_millis(100);

/// Wait until `done(word)`, returning the value that satisfied it. `slow` runs every
/// [`SPINS_PER_CHECK`] spins or after every futex timeout, never on the fast path.
#[inline]
pub(super) fn wait_until(
    word: &AtomicU64,
    how: Wait,
    done: impl Fn(u64) -> bool,
    mut slow: impl FnMut(),
) -> u64 {
    let mut spins = 0u32;
    loop {
        // Acquire: pairs with the Release store that published `value`, so whatever the writer
        // wrote before it (payload, lengths, counts) is visible once we return.
        let value = word.load(Ordering::Acquire);
        if done(value) {
            return value;
        }
        match how {
            Wait::Spin => {
                spins = spins.wrapping_add(1);
                if spins % SPINS_PER_CHECK == 0 {
                    slow();
                } else {
                    hint::spin_loop();
                }
            }
            Wait::Park => {
                if futex_wait(word, value) {
                    slow();
                }
            }
        }
    }
}

/// Store `value` (Release, see [`wait_until`]), then wake a waiter parked on `word` if `how` says
/// waiters park.
#[inline]
pub(super) fn publish(word: &AtomicU64, value: u64, how: Wait) {
    word.store(value, Ordering::Release);
    if how == Wait::Park {
        futex_wake(word);
    }
}

/// `FUTEX_WAIT` on the low half of `word` while it still holds `seen`; returns whether it timed
/// out (as opposed to being woken, or finding the word already changed).
fn futex_wait(word: &AtomicU64, seen: u64) -> bool {
    let timeout = libc::timespec {
        tv_sec: FUTEX_TIMEOUT.as_secs() as libc::time_t,
        tv_nsec: FUTEX_TIMEOUT.subsec_nanos() as libc::c_long,
    };
    let ret = futex(word, libc::FUTEX_WAIT, seen as u32, &timeout);
    ret == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT)
}

/// `FUTEX_WAKE` one waiter on the low half of `word`.
fn futex_wake(word: &AtomicU64) {
    futex(word, libc::FUTEX_WAKE, 1, ptr::null());
}

fn futex(
    word: &AtomicU64,
    op: libc::c_int,
    val: u32,
    timeout: *const libc::timespec,
) -> libc::c_long {
    // SAFETY:
    // - the futex word is the low half of a live, 8-aligned `AtomicU64` (little-endian, so at the
    //   same address), which the kernel only reads atomically (FUTEX_WAKE only uses the address);
    // - `timeout` is null or points to a live timespec; the unused `uaddr2`/`val3` are null/0;
    // - no FUTEX_PRIVATE_FLAG: the word lives in a file mapped by another process too.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr().cast::<u32>(),
            op,
            val,
            timeout,
            ptr::null::<u32>(),
            0u32,
        )
    }
}

/// The parent's end of a doorbell word the peer waits on (see the module docs).
pub(super) struct Doorbell {
    rung: u64,
    pub(super) how: Wait,
    pub(super) peer_parked: bool,
}

impl Doorbell {
    pub(super) fn new(how: Wait) -> Self {
        Self {
            rung: 0,
            how,
            peer_parked: false,
        }
    }

    /// Ring with a new sequence number, which is returned. Publishes (Release) everything this
    /// process wrote before; pays a `FUTEX_WAKE` only in `Park` mode or when the peer was parked.
    pub(super) fn ring(&mut self, word: &AtomicU64) -> u64 {
        self.rung += 1;
        let how = if self.peer_parked {
            Wait::Park
        } else {
            self.how
        };
        publish(word, self.rung, how);
        self.peer_parked = false;
        self.rung
    }

    /// Tell the peer to sleep on the futex until the next [`Doorbell::ring`].
    pub(super) fn park_peer(&mut self, word: &AtomicU64) {
        self.rung += 1;
        publish(word, self.rung | PARK_BIT, Wait::Spin);
        self.peer_parked = true;
    }
}

/// The peer's end: wait for the next ring after `last` and return it, sleeping on the futex while
/// the parent has set [`PARK_BIT`].
pub(super) fn wait_doorbell(word: &AtomicU64, last: &mut u64, how: Wait) -> u64 {
    let mut how = how;
    loop {
        let prev = *last;
        *last = wait_until(word, how, |value| value != prev, || {});
        if *last & PARK_BIT == 0 {
            return *last;
        }
        how = Wait::Park;
    }
}
