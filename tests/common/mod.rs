//! Helpers shared by the integration tests: real child processes (the test binary re-executed
//! with a role), unique temporary directories, a small PRNG and a checksum.
//!
//! # Child processes
//!
//! A test file that needs other processes defines
//!
//! ```ignore
//! #[test]
//! fn child_entry() {
//!     common::child_main(|role, args| match role {
//!         "producer" => producer(args),
//!         other => panic!("unknown role {other}"),
//!     });
//! }
//! ```
//!
//! and starts one with [`child`]`("producer", &[...])`. In the normal test run `child_entry`
//! returns at once; in the child (where `SHMQ_TEST_ROLE` is set) it runs the role and exits 0
//! when the role returns, or non-zero when it panics. Every child dies with its parent
//! (`PR_SET_PDEATHSIG`) and exits on its own after [`CHILD_WATCHDOG`], so a failing test never
//! leaves processes behind. The parent holds each child in a [`ChildProc`], which kills and
//! reaps it on drop (for example when an assertion fails).

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Environment variable naming the role a re-executed test binary plays.
pub const ROLE_VAR: &str = "SHMQ_TEST_ROLE";
/// Environment variable carrying the role's arguments, separated by [`ARG_SEP`].
pub const ARGS_VAR: &str = "SHMQ_TEST_ARGS";
/// Environment variable carrying the parent's process id.
pub const PARENT_VAR: &str = "SHMQ_TEST_PARENT";
/// Separates arguments in [`ARGS_VAR`] (ASCII unit separator: never in our paths).
pub const ARG_SEP: char = '\u{1f}';
/// A child that is still running after this long exits with status 3 by itself.
pub const CHILD_WATCHDOG: Duration = Duration::from_secs(180);
/// Environment variable that, set (to anything) for a child, lifts its cap on a single park
/// (50 ms normally) to far beyond [`CHILD_WATCHDOG`]: a wake-up lost in that child then hangs
/// it instead of costing 50 ms, which a test detects. Only for children where nobody dies (it
/// also delays their search for dead participants). See [`uncapped_park`].
pub const UNCAPPED_PARK_VAR: &str = "SHMQ_TEST_UNCAPPED_PARK";

/// The environment for [`child_with_env`] that lifts the child's park cap (see
/// [`UNCAPPED_PARK_VAR`]).
pub fn uncapped_park() -> [(&'static str, &'static str); 1] {
    [(UNCAPPED_PARK_VAR, "1")]
}

/// Generous bound for anything that should happen "soon" (process start-up, a wake-up) on a
/// loaded two-core machine running debug builds. Only used to detect hangs.
pub const HANG: Duration = Duration::from_secs(30);

/// Starts the test binary again as a child process playing `role` with `args`.
pub fn child(role: &str, args: &[&str]) -> ChildProc {
    child_with_env(role, args, &[])
}

/// Like [`child`], with extra environment variables for the child (for example a test hook's
/// `SHMQ_TEST_PARK_AT`).
pub fn child_with_env(role: &str, args: &[&str], env: &[(&str, &str)]) -> ChildProc {
    for a in args {
        assert!(
            !a.contains(ARG_SEP),
            "argument {a:?} contains the separator"
        );
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let child = Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, role)
        .env(ARGS_VAR, args.join(&ARG_SEP.to_string()))
        .env(PARENT_VAR, std::process::id().to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        // The harness's own chatter goes nowhere; panics and eprintln! reach the terminal.
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a child test process");
    ChildProc {
        role: role.to_string(),
        child,
        status: None,
    }
}

/// Runs the role this process was started for, if any, then exits. Returns at once (doing
/// nothing) in the normal test run.
pub fn child_main(run: impl FnOnce(&str, &[String])) {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let raw = std::env::var(ARGS_VAR).unwrap_or_default();
    let args: Vec<String> = if raw.is_empty() {
        Vec::new()
    } else {
        raw.split(ARG_SEP).map(str::to_string).collect()
    };
    // Die with the parent: a parent that crashes or is killed leaves no child behind.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let parent = std::env::var(PARENT_VAR)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    if parent.is_some_and(|p| nix::unistd::getppid().as_raw() != p) {
        std::process::exit(4); // the parent died before we could ask to die with it
    }
    if std::env::var_os(UNCAPPED_PARK_VAR).is_some() {
        shmq::test_hooks::set_max_park(4 * CHILD_WATCHDOG);
    }
    std::thread::spawn(|| {
        std::thread::sleep(CHILD_WATCHDOG);
        eprintln!("child process {}: watchdog expired", std::process::id());
        std::process::exit(3);
    });
    run(&role, &args);
    // Skip the harness's epilogue; everything the role owned has been dropped already.
    std::process::exit(0);
}

/// A child process, killed and reaped when dropped unless it was reaped already.
pub struct ChildProc {
    role: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildProc {
    /// Wraps a child started some other way (for example as another user) playing `role`.
    pub fn from_child(role: &str, child: Child) -> ChildProc {
        ChildProc {
            role: role.to_string(),
            child,
            status: None,
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The role it plays.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Its exit status if it has exited (reaping it), without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("waitpid on a child");
        }
        self.status
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits up to `timeout` for it to exit and asserts it exited with status 0.
    pub fn expect_success(&mut self, timeout: Duration) {
        match self.wait_timeout(timeout) {
            Some(s) => assert!(s.success(), "child {:?} failed: {s}", self.role),
            None => panic!(
                "child {:?} (pid {}) still running after {timeout:?}",
                self.role,
                self.id()
            ),
        }
    }

    /// Panics if it has exited with a non-zero status. Returns whether it has exited.
    pub fn check_not_failed(&mut self) -> bool {
        match self.try_wait() {
            Some(s) => {
                assert!(s.success(), "child {:?} failed: {s}", self.role);
                true
            }
            None => false,
        }
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let _ = self.child.kill();
        let s = self.child.wait().expect("reap a killed child");
        self.status = Some(s);
        s
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until every child has exited with status 0; panics at once if one fails, or after
/// `timeout`.
pub fn expect_all_succeed(children: &mut [ChildProc], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut running = 0;
        for c in children.iter_mut() {
            if !c.check_not_failed() {
                running += 1;
            }
        }
        if running == 0 {
            return;
        }
        let still: Vec<_> = children
            .iter_mut()
            .filter_map(|c| c.is_running().then(|| c.role().to_string()))
            .collect();
        assert!(
            Instant::now() < deadline,
            "children {still:?} still running after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes; returns whether it
/// held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Tells the parent "ready" by creating `path`.
pub fn signal_ready(path: &str) {
    std::fs::write(path, b"ready").expect("write the ready file");
}

/// Waits until `child` has created `path` with [`signal_ready`]; panics if it exits first.
pub fn wait_ready(child: &mut ChildProc, path: &Path) {
    let ok = wait_until(HANG, || {
        if path.exists() {
            return true;
        }
        if let Some(s) = child.try_wait() {
            panic!("child {:?} exited ({s}) before it was ready", child.role());
        }
        false
    });
    assert!(ok, "child {:?} not ready after {HANG:?}", child.role());
}

/// How many waiters are registered (parked or about to park) on the wait cell at file offset
/// `cell`, read through the file rather than a mapping.
pub fn registered_waiters(path: &Path, cell: u64) -> u32 {
    use std::os::unix::fs::FileExt;
    let at = cell + std::mem::offset_of!(shmq::layout::WaitCellLayout, word) as u64;
    let mut b = [0u8; 4];
    std::fs::File::open(path)
        .expect("open the queue file")
        .read_exact_at(&mut b, at)
        .expect("read a wait cell");
    u32::from_le_bytes(b) & shmq::layout::WAIT_WAITERS_MASK
}

/// A directory of its own for one test, under `/dev/shm` when it exists; removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory whose name contains `name`.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = base.join(format!(
            "shmq-test-{}-{}-{nanos}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).expect("create the test's temporary directory");
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A path as `&str` (test paths are always UTF-8).
pub fn s(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// xorshift64*: small, fast, deterministic; good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from any seed (zero included).
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that close seeds give unrelated streams and 0 is fine.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
