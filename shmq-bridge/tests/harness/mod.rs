//! The bridge tests' world: a real `nats-server` on a free loopback port with JetStream and
//! a temporary store, and the built `shmq-bridge` binary run as processes.
//!
//! Without `nats-server` installed the tests are skipped with a printed reason, unless the
//! `CI` environment variable is set (CI installs it: `.ci/run`), where that is a failure.

#![allow(dead_code)] // each test uses a different subset

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bound for anything that must happen "soon" on a loaded 2-core machine (only detects hangs).
pub const HANG: Duration = Duration::from_secs(60);

/// A `nats-server` process, stopped (killed) on drop.
pub struct Nats {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    store: PathBuf,
}

/// The `nats-server` to run: `$NATS_SERVER`, else the one on `PATH`, else Debian's
/// `/usr/sbin/nats-server` (`/usr/sbin` is not on every user's `PATH`).
fn server_binary() -> Option<PathBuf> {
    let works = |bin: &Path| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let candidates = [
        std::env::var_os("NATS_SERVER").map(PathBuf::from),
        Some(PathBuf::from("nats-server")),
        Some(PathBuf::from("/usr/sbin/nats-server")),
    ];
    candidates.into_iter().flatten().find(|bin| works(bin))
}

/// Starts `nats-server`, or says why the test is skipped (`None`).
pub fn nats() -> Option<Nats> {
    let Some(binary) = server_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "nats-server is not installed (CI must install it: see .ci/run)"
        );
        eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let store =
        std::env::temp_dir().join(format!("shmq-bridge-nats-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&store).expect("create the JetStream store directory");
    let mut nats = Nats {
        binary,
        child: None,
        port,
        store,
    };
    nats.start();
    Some(nats)
}

impl Nats {
    /// The server's URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let child = Command::new(&self.binary)
            .args(["-js", "-sd"])
            .arg(&self.store)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + HANG;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server gracefully (SIGTERM: the store is flushed) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, nix::sys::signal::Signal::SIGTERM);
            wait_timeout(&mut child, HANG).expect("nats-server stops on SIGTERM");
        }
    }

    /// Stops the server and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, sig);
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `shmq-bridge` process; its stderr (the log) is echoed with a tag and kept, its stdout
/// (`--stats` lines) kept. Killed on drop.
pub struct Bridge {
    name: String,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    out: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn keep_lines(
    stream: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
    echo: Option<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Some(tag) = &echo {
                eprintln!("[{tag}] {line}");
            }
            into.lock().unwrap().push(line);
        }
    })
}

impl Bridge {
    /// Starts `shmq-bridge ARGS… --nats URL --stats --stats-interval 0.5` with extra env.
    pub fn start(name: &str, nats: &Nats, args: &[&str], env: &[(&str, &str)]) -> Bridge {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shmq-bridge"))
            .args(args)
            .args(["--nats", &nats.url(), "--stats", "--stats-interval", "0.5"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shmq-bridge");
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            keep_lines(
                child.stderr.take().unwrap(),
                log.clone(),
                Some(name.to_string()),
            ),
            keep_lines(child.stdout.take().unwrap(), out.clone(), None),
        ];
        Bridge {
            name: name.to_string(),
            child: Some(child),
            log,
            out,
            readers,
        }
    }

    /// Starts a bridge and waits until it logs that it is ready.
    pub fn ready(name: &str, nats: &Nats, args: &[&str]) -> Bridge {
        let mut bridge = Bridge::start(name, nats, args, &[]);
        bridge.wait_for_log("ready");
        bridge
    }

    /// Waits until a log line contains `needle` (panics after [`HANG`] or if the bridge exits).
    pub fn wait_for_log(&mut self, needle: &str) {
        let deadline = Instant::now() + HANG;
        loop {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "bridge {} exited ({status}) before logging {needle:?}",
                    self.name
                );
            }
            assert!(
                Instant::now() < deadline,
                "bridge {} never logged {needle:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the bridge.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs the bridge and waits for it to exit (cleanly); returns its last stats line.
    pub fn terminate(&mut self) -> HashMap<String, u64> {
        let mut child = self.child.take().expect("bridge still running");
        signal(&child, nix::sys::signal::Signal::SIGTERM);
        let status = wait_timeout(&mut child, HANG).expect("bridge stops on SIGTERM");
        assert!(
            status.success(),
            "bridge {} exited with {status}",
            self.name
        );
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.stats()
    }

    /// The counters of the last `--stats` line printed so far.
    pub fn stats(&self) -> HashMap<String, u64> {
        let out = self.out.lock().unwrap();
        let line = out
            .iter()
            .rev()
            .find(|l| l.starts_with("stats "))
            .cloned()
            .unwrap_or_default();
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
            .collect()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh directory standing for one host's queue directory.
pub struct Host {
    dir: PathBuf,
}

impl Host {
    /// A new, empty directory under the temporary directory.
    pub fn new(test: &str, name: &str) -> Host {
        let dir =
            std::env::temp_dir().join(format!("shmq-bridge-{}-{test}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Host { dir }
    }

    /// A file in this host's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `path` as a `&str` argument.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary path")
}
