//! The queue file is created with least privilege and opened as untrusted input: permissions,
//! refusing links and special files, every corrupted header field named, truncated, empty and
//! random files rejected, garbage in the ring never a panic or a hang, and the participant
//! table bounded and reclaimed from dead processes.

mod common;

use common::{child, s, Rng, TempDir, HANG};
use shmq::layout::{field, Geometry, FORMAT_VERSION, KIND_PIPELINE, KIND_PUBSUB, MAGIC};
use shmq::{
    Corruption, Error, Pipeline, PipelineOptions, RecvError, SendError, TryRecvError, TrySendError,
};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    common::child_main(|role, args| match role {
        "create" => create_with_umask(args),
        "hold_participants" => hold_participants(args),
        other => panic!("unknown role {other:?}"),
    });
}

/// args: path, umask (octal), mode (octal). Sets the process's umask, then creates the queue.
fn create_with_umask(args: &[String]) {
    let umask = u32::from_str_radix(&args[1], 8).unwrap();
    let mode = u32::from_str_radix(&args[2], 8).unwrap();
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    Pipeline::create(&args[0], &PipelineOptions::new().capacity(4).mode(mode)).unwrap();
}

/// args: path, ready file. Attaches a producer and a consumer, says so, and waits to be killed.
fn hold_participants(args: &[String]) {
    let q = Pipeline::open(&args[0]).unwrap();
    let _producer = q.producer().unwrap();
    let _consumer = q.consumer().unwrap();
    common::signal_ready(&args[1]);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

fn small() -> PipelineOptions {
    PipelineOptions::new()
        .capacity(8)
        .max_message(64)
        .max_participants(4)
}

fn io_errno(e: &Error) -> Option<i32> {
    match e {
        Error::Io { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Creating and opening
// ---------------------------------------------------------------------------------------------

#[test]
fn file_is_created_0600() {
    let dir = TempDir::new("mode-default");
    let path = dir.join("q");
    drop(Pipeline::create(&path, &small()).unwrap());
    assert_eq!(mode_of(&path), 0o600);
    assert!(std::fs::metadata(&path).unwrap().file_type().is_file());

    // The umask can neither widen nor narrow it (checked in processes of their own, since the
    // umask is per process).
    for umask in ["0", "777"] {
        let path = dir.join(&format!("umask-{umask}"));
        child("create", &[s(&path), umask, "600"]).expect_success(HANG);
        assert_eq!(mode_of(&path), 0o600, "created under umask {umask}");
    }
}

#[test]
fn create_with_group_mode_sets_it() {
    let dir = TempDir::new("mode-group");
    let path = dir.join("q");
    drop(Pipeline::create(&path, &small().mode(0o660)).unwrap());
    assert_eq!(mode_of(&path), 0o660);
    let path = dir.join("q-umask");
    child("create", &[s(&path), "077", "660"]).expect_success(HANG);
    assert_eq!(mode_of(&path), 0o660, "created under umask 077");
}

#[test]
fn create_refuses_an_existing_path() {
    let dir = TempDir::new("exists");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &small()).unwrap();
    q.producer().unwrap().send(b"keep me").unwrap();
    let e = Pipeline::create(&path, &small()).unwrap_err();
    assert_eq!(io_errno(&e), Some(nix::libc::EEXIST), "{e:?}");
    assert!(e.to_string().contains(s(&path)), "{e}");
    // The existing queue is untouched.
    assert_eq!(&*q.consumer().unwrap().try_recv().unwrap(), b"keep me");

    // Nor does it replace an ordinary file, or create through a (dangling) symbolic link.
    let plain = dir.join("plain");
    std::fs::write(&plain, b"data").unwrap();
    let e = Pipeline::create(&plain, &small()).unwrap_err();
    assert_eq!(io_errno(&e), Some(nix::libc::EEXIST), "{e:?}");
    assert_eq!(std::fs::read(&plain).unwrap(), b"data");
    let target = dir.join("target");
    let link = dir.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = Pipeline::create(&link, &small()).unwrap_err();
    assert_eq!(io_errno(&e), Some(nix::libc::EEXIST), "{e:?}");
    assert!(!target.exists(), "create followed a symbolic link");
}

#[test]
fn invalid_options_are_refused_and_leave_no_file() {
    let dir = TempDir::new("options");
    let path = dir.join("q");
    for options in [
        PipelineOptions::new().capacity(0),
        PipelineOptions::new().max_participants(0),
        PipelineOptions::new().max_participants(1 << 20),
        PipelineOptions::new().max_message(1 << 31),
    ] {
        let e = Pipeline::create(&path, &options).unwrap_err();
        assert!(matches!(e, Error::InvalidOptions(_)), "{e:?}");
        assert!(!path.exists());
    }
    let e = Pipeline::create(dir.join("no/such/dir"), &small()).unwrap_err();
    assert_eq!(io_errno(&e), Some(nix::libc::ENOENT), "{e:?}");
}

#[test]
fn open_refuses_a_symlink() {
    let dir = TempDir::new("symlink");
    let path = dir.join("q");
    drop(Pipeline::create(&path, &small()).unwrap());
    let link = dir.join("link");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let e = Pipeline::open(&link).unwrap_err();
    assert_eq!(io_errno(&e), Some(nix::libc::ELOOP), "{e:?}");
    assert!(e.to_string().contains(s(&link)), "{e}");
    Pipeline::open(&path).unwrap();
}

/// Runs `f` on another thread and fails the test if it does not return within `HANG`.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(HANG) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what}: still running after {HANG:?} (a hang)"),
    }
}

#[test]
fn open_refuses_a_directory_or_fifo() {
    let dir = TempDir::new("special");
    let e = Pipeline::open(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. } | Error::Corrupt { .. }),
        "{e:?}"
    );

    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let e = bounded("open a fifo", move || Pipeline::open(&fifo).unwrap_err());
    assert!(
        matches!(e, Error::Io { .. } | Error::Corrupt { .. }),
        "{e:?}"
    );

    // A character device (opened, never written).
    let e = bounded("open /dev/null", || {
        Pipeline::open("/dev/null").unwrap_err()
    });
    assert!(
        matches!(e, Error::Io { .. } | Error::Corrupt { .. }),
        "{e:?}"
    );

    let e = Pipeline::open(dir.join("missing")).unwrap_err();
    assert_eq!(io_errno(&e), Some(nix::libc::ENOENT), "{e:?}");
}

#[test]
fn open_racing_create_waits_for_the_creator_to_finish() {
    // An opener that finds the file while its creator is still sizing or initialising it
    // waits for it; it never reports a half-made file as corrupt or truncated.
    let dir = TempDir::new("race");
    let options = PipelineOptions::new().capacity(4096).max_message(1024);
    for round in 0..20 {
        let path = dir.join(&format!("q-{round}"));
        let creator = {
            let (path, options) = (path.clone(), options.clone());
            std::thread::spawn(move || Pipeline::create(&path, &options).map(|q| q.capacity()))
        };
        let opener = {
            let path = path.clone();
            std::thread::spawn(move || {
                // Spin (no sleep) so as to open the file as soon as its name exists.
                let deadline = Instant::now() + HANG;
                while Instant::now() < deadline {
                    match Pipeline::open(&path) {
                        Err(Error::Io { source, .. })
                            if source.kind() == std::io::ErrorKind::NotFound =>
                        {
                            std::hint::spin_loop()
                        }
                        other => return other.map(|q| q.capacity()),
                    }
                }
                panic!("the file never appeared");
            })
        };
        let opened = bounded("open while creating", move || opener.join().unwrap());
        assert_eq!(creator.join().unwrap().unwrap(), 4096);
        assert_eq!(opened.unwrap(), 4096, "round {round}");
        Pipeline::remove(&path).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Corrupt files
// ---------------------------------------------------------------------------------------------

const CAP: u64 = 64;
const MAXMSG: u64 = 240;
const PARTS: u32 = 8;

/// A valid queue file with a few messages in it, written and closed.
fn template(dir: &TempDir) -> (PathBuf, Geometry) {
    let path = dir.join("template");
    let q = Pipeline::create(
        &path,
        &PipelineOptions::new()
            .capacity(CAP as usize)
            .max_message(MAXMSG as usize)
            .max_participants(PARTS as usize),
    )
    .unwrap();
    let p = q.producer().unwrap();
    for i in 0..10u8 {
        p.send(&[i; 10]).unwrap();
    }
    let g = Geometry::pipeline(CAP, MAXMSG, PARTS).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), g.file_size);
    (path, g)
}

fn copy_of(template: &Path, dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(template, &path).unwrap();
    path
}

fn write_at(path: &Path, offset: usize, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset as u64).unwrap();
}

fn open_corrupt(path: &Path) -> Corruption {
    match Pipeline::open(path) {
        Ok(_) => panic!("{} opened although it is corrupt", path.display()),
        Err(Error::Corrupt { path: p, problem }) => {
            assert_eq!(p, path);
            let shown = Error::Corrupt {
                path: p,
                problem: problem.clone(),
            }
            .to_string();
            assert!(shown.contains(s(path)), "{shown:?} does not name the file");
            problem
        }
        Err(e) => panic!("{}: expected Error::Corrupt, got {e:?}", path.display()),
    }
}

#[test]
fn each_corrupted_header_field_gives_the_right_error() {
    let dir = TempDir::new("header");
    let (tpl, g) = template(&dir);
    // Sanity: the values below really change the geometry this file was created with.
    let other = |cap: u64, max: u64, parts: u32| Geometry::pipeline(cap, max, parts).unwrap();
    assert_ne!(other(CAP * 2, MAXMSG, PARTS).file_size, g.file_size);
    assert_ne!(other(CAP, MAXMSG * 2, PARTS).slot_stride, g.slot_stride);
    assert_ne!(other(CAP, MAXMSG, PARTS + 1).slots_offset, g.slots_offset);

    type Check = fn(&Corruption) -> bool;
    let bad_geometry: Check = |c| matches!(c, Corruption::BadGeometry(_));
    let u64s = |v: u64| v.to_le_bytes().to_vec();
    let u32s = |v: u32| v.to_le_bytes().to_vec();
    let mut cases: Vec<(String, usize, Vec<u8>, Check)> = vec![
        (
            "magic".into(),
            field::MAGIC,
            u64s(0x0123_4567_89ab_cdef),
            |c| {
                *c == Corruption::BadMagic {
                    found: 0x0123_4567_89ab_cdef,
                }
            },
        ),
        (
            "magic, one byte".into(),
            field::MAGIC + 3,
            vec![b'X'],
            |c| matches!(c, Corruption::BadMagic { .. }),
        ),
        (
            "version".into(),
            field::VERSION,
            u32s(FORMAT_VERSION + 1),
            |c| {
                *c == Corruption::UnsupportedVersion {
                    found: FORMAT_VERSION + 1,
                    expected: FORMAT_VERSION,
                }
            },
        ),
        ("version 0".into(), field::VERSION, u32s(0), |c| {
            matches!(c, Corruption::UnsupportedVersion { found: 0, .. })
        }),
        ("kind".into(), field::KIND, u32s(KIND_PUBSUB), |c| {
            *c == Corruption::WrongKind {
                found: KIND_PUBSUB,
                expected: KIND_PIPELINE,
            }
        }),
        ("unknown kind".into(), field::KIND, u32s(u32::MAX), |c| {
            matches!(
                c,
                Corruption::WrongKind {
                    found: u32::MAX,
                    ..
                }
            )
        }),
    ];
    let geometry_cases: Vec<(&str, usize, Vec<Vec<u8>>)> = vec![
        (
            "file_size",
            field::FILE_SIZE,
            vec![u64s(0), u64s(g.file_size + 4096), u64s(u64::MAX)],
        ),
        (
            "capacity",
            field::CAPACITY,
            vec![u64s(0), u64s(CAP * 2), u64s(u64::MAX)],
        ),
        (
            "max_message",
            field::MAX_MESSAGE,
            vec![u64s(MAXMSG * 2), u64s(1 << 31), u64s(u64::MAX)],
        ),
        (
            "slot_stride",
            field::SLOT_STRIDE,
            vec![u64s(0), u64s(8), u64s(g.slot_stride + 64), u64s(u64::MAX)],
        ),
        (
            "slots_offset",
            field::SLOTS_OFFSET,
            vec![u64s(0), u64s(g.slots_offset + 128), u64s(u64::MAX)],
        ),
        (
            "participants_offset",
            field::PARTICIPANTS_OFFSET,
            vec![u64s(0), u64s(64), u64s(u64::MAX)],
        ),
        (
            "max_participants",
            field::MAX_PARTICIPANTS,
            vec![u32s(0), u32s(PARTS + 1), u32s(4095), u32s(u32::MAX)],
        ),
    ];
    for (name, offset, values) in geometry_cases {
        for v in values {
            cases.push((format!("{name} = {v:x?}"), offset, v, bad_geometry));
        }
    }
    // Everything after max_participants (flags, the fields other kinds use, the reserved
    // words) is zero in a pipeline's header or derived from its geometry: any other value in
    // any 32-bit word of it is refused.
    let header_size = std::mem::size_of::<shmq::layout::FileHeader>();
    assert_eq!(header_size, 128);
    for offset in (field::FLAGS..header_size).step_by(4) {
        let name = match offset {
            o if o == field::FLAGS => "flags".to_string(),
            o if o >= field::RESERVED => format!("reserved word at byte {o}"),
            o => format!("header word at byte {o} (unused by pipelines)"),
        };
        for v in [1u32, 0x8000_0000] {
            cases.push((format!("{name} = {v:#x}"), offset, u32s(v), bad_geometry));
        }
    }

    for (i, (name, offset, bytes, check)) in cases.iter().enumerate() {
        let path = copy_of(&tpl, &dir, &format!("case-{i}"));
        write_at(&path, *offset, bytes);
        let problem = open_corrupt(&path);
        assert!(check(&problem), "{name}: unexpected {problem:?}");
    }

    // A magic number of zero: a creator that never finished; open waits briefly, then says so.
    let path = copy_of(&tpl, &dir, "magic-0");
    write_at(&path, field::MAGIC, &0u64.to_le_bytes());
    let started = Instant::now();
    assert_eq!(open_corrupt(&path), Corruption::Uninitialized);
    assert!(started.elapsed() < HANG);

    // And the template itself was fine all along.
    let q = Pipeline::open(&tpl).unwrap();
    assert_eq!(q.len(), 10);
    assert_eq!(MAGIC.to_le_bytes(), *b"SHMQRING");
}

#[test]
fn short_file_is_truncated_error() {
    let dir = TempDir::new("short");
    let (tpl, g) = template(&dir);
    for (i, len) in [g.file_size / 2, g.file_size - 1, 200, 128, 64, 1]
        .into_iter()
        .enumerate()
    {
        let path = copy_of(&tpl, &dir, &format!("short-{i}"));
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len)
            .unwrap();
        let problem = open_corrupt(&path);
        let expected = if len < 128 { 128 } else { g.file_size };
        assert_eq!(
            problem,
            Corruption::Truncated { len, expected },
            "file cut to {len} bytes"
        );
    }
}

#[test]
fn empty_file_is_uninitialized_error() {
    let dir = TempDir::new("empty");
    let path = dir.join("q");
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    drop(f);
    let started = Instant::now();
    assert_eq!(open_corrupt(&path), Corruption::Uninitialized);
    assert!(started.elapsed() < HANG, "open of an empty file hung");
}

#[test]
fn random_bytes_file_is_rejected() {
    let dir = TempDir::new("random");
    let (_, g) = template(&dir);
    for seed in 0..40u64 {
        let mut rng = Rng::new(seed);
        let len = match seed % 5 {
            0 => 1 + rng.below(127) as usize,
            1 => 128 + rng.below(4096) as usize,
            _ => g.file_size as usize,
        };
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes);
        // Later seeds get past the first checks, to reach the deeper ones.
        if len >= 128 && seed >= 10 {
            bytes[0..8].copy_from_slice(&MAGIC.to_le_bytes());
            if seed >= 20 {
                bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
                bytes[12..16].copy_from_slice(&KIND_PIPELINE.to_le_bytes());
            }
            if seed >= 30 {
                // A plausible geometry with one random field left.
                let h = g.header();
                let keep = rng.below(5);
                let words = [
                    (field::FILE_SIZE, h.file_size),
                    (field::CAPACITY, h.capacity),
                    (field::MAX_MESSAGE, h.max_message),
                    (field::SLOT_STRIDE, h.slot_stride),
                    (field::SLOTS_OFFSET, h.slots_offset),
                ];
                for (j, (off, v)) in words.into_iter().enumerate() {
                    if j as u64 != keep {
                        bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        let path = dir.join(&format!("random-{seed}"));
        std::fs::write(&path, &bytes).unwrap();
        let problem = open_corrupt(&path);
        if len < 128 {
            assert_eq!(
                problem,
                Corruption::Truncated {
                    len: len as u64,
                    expected: 128
                }
            );
        }
    }
}

/// A slot state word as the ring encodes it (sequence, redelivered flag, state, owner).
fn state_word(seq: u64, state: u64, owner: u64) -> u64 {
    seq << 16 | (state & 7) << 12 | (owner & 0xfff)
}

#[test]
fn corrupt_ring_words_in_an_open_queue_are_errors() {
    let dir = TempDir::new("ring-words");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &PipelineOptions::new().capacity(4).max_message(32)).unwrap();
    let g = Geometry::pipeline(4, 32, 64).unwrap();
    let slot0 = g.slots_offset as usize;
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();
    producer.send(b"a").unwrap();

    // An unknown state (written through the file: the mapping sees it).
    write_at(&path, slot0, &state_word(0, 7, 1).to_le_bytes());
    assert!(
        matches!(
            consumer.try_recv().unwrap_err(),
            TryRecvError::Recv(RecvError::Corrupt(Corruption::BadState(_)))
        ),
        "unknown state"
    );
    // A sequence that fits nothing.
    write_at(&path, slot0, &state_word(999, 2, 1).to_le_bytes());
    assert!(matches!(
        consumer.try_recv().unwrap_err(),
        TryRecvError::Recv(RecvError::Corrupt(Corruption::BadState(_)))
    ));
    // A committed message longer than max_message.
    write_at(&path, slot0, &state_word(0, 2, 1).to_le_bytes());
    write_at(&path, slot0 + 8, &1000u32.to_le_bytes());
    assert_eq!(
        consumer.try_recv().unwrap_err(),
        TryRecvError::Recv(RecvError::Corrupt(Corruption::BadLength {
            len: 1000,
            max: 32
        }))
    );
    // The queue goes on working after the bad slot.
    producer.send(b"b").unwrap();
    assert_eq!(&*consumer.try_recv().unwrap(), b"b");

    // Producers check what they read too.
    let tail_slot = g.slots_offset as usize + g.slot_stride as usize * 2;
    write_at(&path, tail_slot, &state_word(12345, 0, 0).to_le_bytes());
    assert!(matches!(
        producer.try_send(b"c").unwrap_err(),
        TrySendError::Send(SendError::Corrupt(Corruption::BadState(_)))
    ));
}

/// Fills a copy of a valid queue file with garbage everywhere but the header. By seed: pure
/// random bytes; plausible-looking ring words (sequences near the counters, any state, lengths
/// in and out of range); or a consistent ring state with one or two words spoiled.
fn garble(path: &Path, g: &Geometry, seed: u64) {
    let mut rng = Rng::new(seed);
    let len = g.file_size as usize;
    // Everything after the header; offsets below are relative to file offset 128, where the
    // ring's control block (tail, head, two wait cells, 128 bytes apart) starts.
    let mut rest = vec![0u8; len - 128];
    rng.fill(&mut rest);
    let cap = g.capacity;
    let slot_at = |index: u64| (g.slots_offset + index * g.slot_stride) as usize - 128;
    let mode = seed % 3;
    if mode == 0 {
        write_at(path, 128, &rest);
        return;
    }
    let head = match rng.below(4) {
        0 => rng.below(1000),
        1 => u64::MAX - rng.below(1000),
        2 => (1 << 48) - rng.below(20),
        _ => rng.next_u64(),
    };
    let in_flight = rng.below(cap + 1);
    let mut tail = head.wrapping_add(in_flight);
    let mut words = Vec::new();
    for i in 0..cap {
        let pos = head.wrapping_add(i);
        let index = pos % cap;
        let (seq, state, msg_len) = if mode == 1 {
            let seq = match rng.below(5) {
                0 => pos,
                1 => pos.wrapping_add(cap),
                2 => pos.wrapping_sub(cap),
                3 => pos.wrapping_add(2 * cap),
                _ => rng.next_u64(),
            };
            let msg_len = match rng.below(4) {
                0 => rng.next_u64() as u32,
                1 => g.max_message as u32 + 1,
                _ => rng.below(g.max_message + 1) as u32,
            };
            (seq, rng.below(8), msg_len)
        } else if i < in_flight {
            // READY mostly; now and then WRITING, READING or SKIPPED, as a crash leaves them.
            let state = [2, 2, 2, 2, 1, 3, 4][rng.below(7) as usize];
            (pos, state, rng.below(g.max_message + 1) as u32)
        } else {
            // Free for this lap (EMPTY at pos).
            (pos, 0, 0)
        };
        let mut word = state_word(seq & ((1 << 48) - 1), state, rng.below(6));
        if mode == 1 && rng.below(4) == 0 {
            word |= 1 << 15;
        }
        words.push((index, word, msg_len));
    }
    if mode == 2 {
        // Spoil one or two things.
        for _ in 0..1 + rng.below(2) {
            let victim = rng.below(cap) as usize;
            match rng.below(6) {
                0 => words[victim].1 = rng.next_u64(),
                1 => words[victim].1 ^= 7 << 12, // another state
                2 => words[victim].1 = words[victim].1.wrapping_add(cap << 16), // a lap ahead
                3 => words[victim].2 = g.max_message as u32 + 1 + rng.below(1000) as u32,
                4 => tail = tail.wrapping_add(rng.below(3 * cap)).wrapping_sub(cap),
                _ => words[victim].1 = rng.next_u64() & !(7 << 12), // random seq, valid state
            }
        }
    }
    rest[0..8].copy_from_slice(&tail.to_le_bytes());
    rest[128..136].copy_from_slice(&head.to_le_bytes());
    for cell in [256usize, 384] {
        // Waiters: a few, as if someone died while parked.
        rest[cell + 4..cell + 8].copy_from_slice(&(rng.below(3) as u32).to_le_bytes());
    }
    for (index, word, msg_len) in words {
        let slot = slot_at(index);
        rest[slot..slot + 8].copy_from_slice(&word.to_le_bytes());
        rest[slot + 8..slot + 12].copy_from_slice(&msg_len.to_le_bytes());
    }
    // Leave the participant table alone half the time.
    if rng.below(2) == 0 {
        let table = g.participants_offset as usize - 128;
        let end = g.slots_offset as usize - 128;
        rest[table..end].fill(0);
    }
    write_at(path, 128, &rest);
}

/// Whether a message was received; one that was is never longer than the maximum.
fn within<E>(r: Result<shmq::Message<'_>, E>, max: usize) -> bool {
    match r {
        Ok(m) => {
            assert!(
                m.len() <= max,
                "a message of {} bytes was delivered",
                m.len()
            );
            true
        }
        Err(_) => false,
    }
}

/// Every operation on a garbled queue returns (Ok or Err) without panicking or hanging.
fn exercise(path: PathBuf, seed: u64) -> (usize, usize) {
    let q = Pipeline::open(&path).expect("the header is valid");
    let max = q.max_message();
    let producer = q.producer().unwrap();
    let consumer = q.consumer().unwrap();
    let mut rng = Rng::new(seed ^ 0xabcd);
    let buf = vec![0x5au8; max];
    let (mut ok, mut err) = (0, 0);
    let mut tally = |r: bool| if r { ok += 1 } else { err += 1 };
    let short = Duration::from_millis(1);
    for _ in 0..3 * q.capacity() {
        let _ = q.len();
        let n = rng.below(max as u64 + 1) as usize;
        match rng.below(6) {
            0 => tally(within(consumer.try_recv(), max)),
            1 => tally(within(consumer.recv_timeout(short), max)),
            2 => tally(producer.try_send(&buf[..n]).is_ok()),
            3 => tally(producer.send_timeout(&buf[..n], short).is_ok()),
            4 => match producer.try_loan(n) {
                Ok(mut loan) => {
                    loan.fill(1);
                    if rng.below(2) == 0 {
                        loan.commit().unwrap();
                    }
                    tally(true);
                }
                Err(_) => tally(false),
            },
            _ => {
                // Hold one message while taking another.
                let a = consumer.try_recv();
                let b = consumer.try_recv();
                tally(within(a, max) && within(b, max));
            }
        }
    }
    (ok, err)
}

#[test]
fn file_with_valid_header_but_garbage_slots_never_panics() {
    let dir = TempDir::new("garbage");
    let path = dir.join("q");
    let options = PipelineOptions::new()
        .capacity(8)
        .max_message(48)
        .max_participants(4);
    drop(Pipeline::create(&path, &options).unwrap());
    let g = Geometry::pipeline(8, 48, 4).unwrap();
    let (mut oks, mut errs) = (0, 0);
    for seed in 0..90u64 {
        let case = copy_of(&path, &dir, &format!("seed-{seed}"));
        garble(&case, &g, seed);
        let (ok, err) = bounded(&format!("seed {seed}"), move || exercise(case, seed));
        oks += ok;
        errs += err;
    }
    // Both outcomes happen: the garbage is neither all rejected nor all accepted.
    assert!(oks > 0 && errs > 0, "{oks} successes, {errs} failures");
}

// ---------------------------------------------------------------------------------------------
// Participant table
// ---------------------------------------------------------------------------------------------

#[test]
fn too_many_participants_is_an_error_and_detached_slot_is_reusable() {
    let dir = TempDir::new("participants");
    let path = dir.join("q");
    let q = Pipeline::create(&path, &small().max_participants(2)).unwrap();
    let producer = q.producer().unwrap();
    let consumer = Pipeline::open(&path).unwrap().consumer().unwrap();
    match q.producer() {
        Err(Error::TooManyParticipants { path: p, max }) => {
            assert_eq!((p.as_path(), max), (path.as_path(), 2));
        }
        other => panic!("a third participant: {other:?}"),
    }
    let e = q.consumer().unwrap_err();
    assert!(matches!(e, Error::TooManyParticipants { max: 2, .. }));
    assert!(e.to_string().contains(s(&path)), "{e}");

    drop(consumer);
    let consumer = q.consumer().unwrap();
    producer.send(b"still works").unwrap();
    assert_eq!(&*consumer.recv().unwrap(), b"still works");
    drop(producer);
    drop(consumer);
    let _a = q.producer().unwrap();
    let _b = q.producer().unwrap();
    assert!(q.consumer().is_err());
}

#[test]
fn dead_process_participant_slot_is_reclaimed() {
    let dir = TempDir::new("dead-participant");
    let path = dir.join("q");
    let ready = dir.join("ready");
    let q = Pipeline::create(&path, &small().max_participants(2)).unwrap();
    let mut holder = child("hold_participants", &[s(&path), s(&ready)]);
    common::wait_ready(&mut holder, &ready);
    assert!(
        matches!(q.producer(), Err(Error::TooManyParticipants { .. })),
        "the child holds both entries"
    );
    let status = holder.kill();
    assert!(!status.success());
    let producer = q.producer().expect("the dead process's entry is reclaimed");
    let consumer = q.consumer().expect("both of them");
    producer.send(b"after").unwrap();
    assert_eq!(&*consumer.try_recv().unwrap(), b"after");
}
