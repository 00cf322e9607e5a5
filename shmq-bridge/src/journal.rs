//! The out-bridge's journal of message ids: what makes a bridge killed between JetStream's
//! acknowledgement and the local one cause no duplicate in the stream.
//!
//! # The problem
//! `pipeline-out` publishes a local message, waits for JetStream's acknowledgement, then
//! acknowledges the local message. Killed between the two, the local queue delivers the message
//! again (flagged `redelivered()`) to the next bridge, which publishes it again. JetStream drops
//! a publish whose `Nats-Msg-Id` it stored within the stream's duplicate window — but only if
//! the second publish carries the *same* id as the first. shmq gives a received message no
//! stable identity of its own (no sequence number in the public API), so the bridge records
//! the ids it handed out.
//!
//! # The file
//! `<queue file>.bridge-journal` (created `0600`, never opened through a symbolic link), locked
//! exclusively (`flock`) by the one out-bridge of a queue.
//! After an 8-byte magic come `2 × window` entries of 32 bytes, each `[run, counter + 1, len,
//! hash]` (little-endian `u64`; `counter + 1 == 0` marks a free entry). A message's id is
//! `<run in hex>-<counter>`, `run` being chosen at random per bridge start. The first `window`
//! entries hold ids *carried* from earlier runs, the last `window` the ids this run has in
//! flight (entry `counter % window`).
//!
//! # The protocol
//! 1. Before publishing a message the bridge writes its entry (id, length and FNV-1a hash of the
//!    payload); after the local acknowledgement it clears it. At most `window` messages are in
//!    flight and they are acknowledged in order, so entry `counter % window` is free again by
//!    the time counter `counter + window` needs it.
//! 2. On start, every entry found (carried or in flight: the messages the dead bridge may have
//!    published but not acknowledged locally) is kept as *carried*, rewritten into the first
//!    half, and the second half is cleared.
//! 3. A message delivered with `redelivered()` set whose length and hash match a carried entry
//!    gets that entry's id back (and the carried entry is cleared once the message has its
//!    in-flight entry). Any other message gets a fresh id.
//!
//! Writes are plain `pwrite`s to the page cache: they survive the bridge being killed (not the
//! host crashing, after which the queue in `/dev/shm` is gone too). A hash collision between a
//! redelivered message and a carried entry of different content would give it the other's id
//! (and JetStream would drop it as a duplicate): with a 64-bit hash and the length compared too,
//! that is a 2⁻⁶⁴ event per pair.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SHMQBRJ1";
const ENTRY: u64 = 32;

/// FNV-1a, 64 bits: stable across builds (unlike `DefaultHasher`), which is what an on-file
/// fingerprint needs.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A message id: the bridge run that first published the message, and its number in that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgId {
    /// Random per bridge start.
    pub run: u64,
    /// Counts the messages of that run.
    pub counter: u64,
}

impl std::fmt::Display for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}-{}", self.run, self.counter)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    id: MsgId,
    len: u64,
    hash: u64,
}

/// A carried entry: its slot in the first half of the file, and what it records.
#[derive(Debug)]
struct Carried {
    slot: u64,
    entry: Entry,
}

/// Where a message's id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A new id of this run.
    Fresh,
    /// The id an earlier run published this (redelivered) message under.
    Carried,
}

/// The journal of one out-bridge (see the module docs).
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    window: u64,
    run: u64,
    next: u64,
    carried: VecDeque<Carried>,
}

/// The journal file of the queue at `queue`.
pub fn path_for(queue: &Path) -> PathBuf {
    let mut name = queue.as_os_str().to_owned();
    name.push(".bridge-journal");
    PathBuf::from(name)
}

fn random_run() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // Mix time and process id so two bridges started in the same instant still differ.
    let mut x = nanos ^ (u64::from(std::process::id()) << 40) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

impl Journal {
    /// Opens (or creates) the journal at `path` for `window` messages in flight, takes its
    /// lock, and carries over the entries a previous bridge left.
    ///
    /// # Errors
    /// The file cannot be opened, read or written, is not a journal, or is locked by a running
    /// bridge (`WouldBlock`).
    pub fn open(path: &Path, window: u64) -> io::Result<Journal> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600) // like the queue files: the bridge's user only
            .custom_flags(libc::O_NOFOLLOW) // refuses a symbolic link, as shmq's open does
            .open(path)?;
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "journal {} is locked: another pipeline-out bridge serves this queue",
                    path.display()
                ),
            ),
            std::fs::TryLockError::Error(e) => e,
        })?;
        let mut old = Vec::new();
        let size = file.metadata()?.len();
        if size > 0 {
            let mut magic = [0u8; 8];
            file.read_exact_at(&mut magic, 0)?;
            if &magic != MAGIC || (size - 8) % ENTRY != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a shmq-bridge journal", path.display()),
                ));
            }
            for slot in 0..(size - 8) / ENTRY {
                if let Some(e) = read_entry(&file, slot)? {
                    if !old.contains(&e) {
                        old.push(e);
                    }
                }
            }
        }
        if old.len() as u64 > window {
            // More than fit: the oldest runs' entries go (their messages may be duplicated if
            // they are ever redelivered again).
            tracing::warn!(
                kept = window,
                dropped = old.len() as u64 - window,
                "journal carries more ids than the window holds"
            );
            old.drain(..old.len() - window as usize);
        }
        // Rewritten in place so that a crash at any point loses no entry: entries move only to
        // lower slots (they were read in slot order), so the one a write overwrites has been
        // written lower already; the rest is cleared only after.
        let size = size.max(8);
        let wanted = 8 + 2 * window * ENTRY;
        if size < wanted {
            file.set_len(wanted)?;
        }
        file.write_all_at(MAGIC, 0)?;
        let mut carried = VecDeque::new();
        for (slot, entry) in old.into_iter().enumerate() {
            write_entry(&file, slot as u64, Some(entry))?;
            carried.push_back(Carried {
                slot: slot as u64,
                entry,
            });
        }
        let cleared = 8 + carried.len() as u64 * ENTRY;
        let zeros = vec![0u8; (size.max(wanted) - cleared) as usize];
        file.write_all_at(&zeros, cleared)?;
        file.set_len(wanted)?;
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            window,
            run: random_run(),
            next: 0,
            carried,
        })
    }

    /// How many ids from earlier runs are still waiting for their message.
    pub fn carried(&self) -> usize {
        self.carried.len()
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives `payload` its id and records it in flight (step 1 and 3 of the protocol); returns
    /// the id, where it came from, and the in-flight slot to pass to [`Journal::release`].
    ///
    /// # Errors
    /// The journal cannot be written.
    pub fn assign(
        &mut self,
        payload: &[u8],
        redelivered: bool,
    ) -> io::Result<(MsgId, Origin, u64)> {
        let (len, hash) = (payload.len() as u64, fnv1a(payload));
        let carried = if redelivered {
            self.carried
                .iter()
                .position(|c| c.entry.len == len && c.entry.hash == hash)
                .and_then(|i| self.carried.remove(i))
        } else {
            None
        };
        let counter = self.next;
        self.next += 1;
        let (id, origin) = match &carried {
            Some(c) => (c.entry.id, Origin::Carried),
            None => (
                MsgId {
                    run: self.run,
                    counter,
                },
                Origin::Fresh,
            ),
        };
        let slot = self.window + counter % self.window;
        write_entry(&self.file, slot, Some(Entry { id, len, hash }))?;
        if let Some(c) = carried {
            // The in-flight entry now carries the id; the carried one can go.
            write_entry(&self.file, c.slot, None)?;
        }
        Ok((id, origin, slot))
    }

    /// Keeps the id of an in-flight message whose local acknowledgement was refused (the
    /// queue delivers it again): its entry joins the carried ones.
    ///
    /// # Errors
    /// The journal cannot be read or written.
    pub fn keep(&mut self, slot: u64) -> io::Result<()> {
        let Some(entry) = read_entry(&self.file, slot)? else {
            return Ok(());
        };
        let free = (0..self.window).find(|s| self.carried.iter().all(|c| c.slot != *s));
        match free {
            Some(free) => {
                write_entry(&self.file, free, Some(entry))?;
                self.carried.push_back(Carried { slot: free, entry });
            }
            None => {
                tracing::warn!(id = %entry.id, "journal full of carried ids; this one is not kept")
            }
        }
        write_entry(&self.file, slot, None)
    }

    /// Clears an in-flight entry once its message was acknowledged locally.
    ///
    /// # Errors
    /// The journal cannot be written.
    pub fn release(&mut self, slot: u64) -> io::Result<()> {
        write_entry(&self.file, slot, None)
    }
}

fn read_entry(file: &File, slot: u64) -> io::Result<Option<Entry>> {
    let mut raw = [0u8; ENTRY as usize];
    file.read_exact_at(&mut raw, 8 + slot * ENTRY)?;
    let word = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let counter_plus_one = word(1);
    Ok((counter_plus_one != 0).then(|| Entry {
        id: MsgId {
            run: word(0),
            counter: counter_plus_one - 1,
        },
        len: word(2),
        hash: word(3),
    }))
}

fn write_entry(file: &File, slot: u64, entry: Option<Entry>) -> io::Result<()> {
    let mut raw = [0u8; ENTRY as usize];
    if let Some(e) = entry {
        for (i, w) in [e.id.run, e.id.counter + 1, e.len, e.hash]
            .into_iter()
            .enumerate()
        {
            raw[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
    }
    file.write_all_at(&raw, 8 + slot * ENTRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("shmq-bridge-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn a_redelivered_message_gets_back_the_id_a_dead_run_published_it_under() {
        let path = temp("carry");
        let (first, second) = {
            let mut j = Journal::open(&path, 4).unwrap();
            let (a, _, slot_a) = j.assign(b"alpha", false).unwrap();
            let (b, _, _) = j.assign(b"beta", false).unwrap();
            j.release(slot_a).unwrap(); // alpha acknowledged locally; beta still in flight
            (a, b)
            // dropped without releasing beta: the bridge "died"
        };
        let mut j = Journal::open(&path, 4).unwrap();
        assert_eq!(j.carried(), 1);
        // A fresh message with the same bytes is not a redelivery: new id.
        let (fresh, origin, _) = j.assign(b"beta", false).unwrap();
        assert_eq!(origin, Origin::Fresh);
        assert_ne!(fresh, second);
        let (again, origin, _) = j.assign(b"beta", true).unwrap();
        assert_eq!((again, origin), (second, Origin::Carried));
        // alpha was acknowledged: its id is never handed out again.
        let (other, origin, _) = j.assign(b"alpha", true).unwrap();
        assert_eq!(origin, Origin::Fresh);
        assert_ne!(other, first);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn carried_ids_survive_a_second_crash_before_their_message_came_back() {
        let path = temp("twice");
        let lost = {
            let mut j = Journal::open(&path, 4).unwrap();
            j.assign(b"gamma", false).unwrap().0
        };
        drop(Journal::open(&path, 4).unwrap()); // second run dies before gamma came back
        let mut j = Journal::open(&path, 4).unwrap();
        assert_eq!(j.assign(b"gamma", true).unwrap().0, lost);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_message_whose_local_ack_was_refused_keeps_its_id_for_its_redelivery() {
        let path = temp("keep");
        let mut j = Journal::open(&path, 4).unwrap();
        let (id, _, slot) = j.assign(b"delta", false).unwrap();
        j.keep(slot).unwrap();
        for _ in 0..8 {
            // The in-flight ring goes round: the kept id is not in it any more.
            let (_, _, s) = j.assign(b"other", false).unwrap();
            j.release(s).unwrap();
        }
        assert_eq!(j.assign(b"delta", true).unwrap().0, id);
        drop(j);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_journal_is_private_and_never_a_symbolic_link() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp("mode");
        drop(Journal::open(&path, 4).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let link = temp("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(Journal::open(&link, 4).is_err());
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_second_bridge_on_the_same_journal_is_refused() {
        let path = temp("lock");
        let _first = Journal::open(&path, 4).unwrap();
        let err = Journal::open(&path, 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        std::fs::remove_file(&path).unwrap();
    }
}
