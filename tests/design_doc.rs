//! `docs/DESIGN.md` says what the code does: its header table (section 3.2), its section
//! constants (section 3.1), its format version (section 3.10) and its worked geometries of the
//! default options (section 3.3) are checked against `src/layout.rs` and against files created
//! with the default options. A change to the format that leaves the document behind fails here.

use shmq::layout::{self, field, FileHeader};
use shmq::{Pipeline, PipelineOptions, PubSub, PubSubOptions, Service, ServiceOptions};
use std::path::{Path, PathBuf};

const DOC: &str = include_str!("../docs/DESIGN.md");

/// The text of the document between the heading that starts with `from` and the next one at
/// the same or a higher level.
fn section(from: &str) -> &'static str {
    let start = DOC
        .find(from)
        .unwrap_or_else(|| panic!("docs/DESIGN.md has no heading {from:?}"));
    let rest = &DOC[start + from.len()..];
    let level = from.chars().take_while(|&c| c == '#').count();
    let end = rest
        .match_indices("\n#")
        .find(|&(at, _)| {
            let hashes = rest[at + 1..].chars().take_while(|&c| c == '#').count();
            hashes <= level
        })
        .map_or(rest.len(), |(at, _)| at);
    &rest[..end]
}

/// The cells of every table row of `text` (lines starting with `|`), trimmed.
fn rows(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect()
}

/// The row of `table` whose cell `column` is exactly `key`.
fn row<'a>(table: &'a [Vec<&'a str>], column: usize, key: &str) -> &'a [&'a str] {
    table
        .iter()
        .find(|r| r.get(column) == Some(&key))
        .unwrap_or_else(|| panic!("docs/DESIGN.md has no table row for {key}"))
}

#[test]
fn design_doc_header_table_matches_every_field_offset_and_size() {
    let fields = [
        ("magic", field::MAGIC),
        ("version", field::VERSION),
        ("kind", field::KIND),
        ("file_size", field::FILE_SIZE),
        ("capacity", field::CAPACITY),
        ("max_message", field::MAX_MESSAGE),
        ("slot_stride", field::SLOT_STRIDE),
        ("slots_offset", field::SLOTS_OFFSET),
        ("participants_offset", field::PARTICIPANTS_OFFSET),
        ("max_participants", field::MAX_PARTICIPANTS),
        ("flags", field::FLAGS),
        ("max_topic", field::MAX_TOPIC),
        ("table_entries", field::TABLE_ENTRIES),
        ("table_offset", field::TABLE_OFFSET),
        ("reply_capacity", field::REPLY_CAPACITY),
        ("reply_stride", field::REPLY_STRIDE),
        ("reserved", field::RESERVED),
    ];
    let table = rows(section("### 3.2"));
    let header_size = std::mem::size_of::<FileHeader>();
    for (i, &(name, offset)) in fields.iter().enumerate() {
        let size = fields.get(i + 1).map_or(header_size, |next| next.1) - offset;
        let documented = row(&table, 2, &format!("`{name}`"));
        assert_eq!(
            (documented[0], documented[1]),
            (offset.to_string().as_str(), size.to_string().as_str()),
            "header field `{name}`: docs/DESIGN.md says offset {} size {}, the code {offset} {size}",
            documented[0],
            documented[1]
        );
    }
    // Every documented row is a field of the code: no field documented that is not there.
    let documented_fields = table
        .iter()
        .filter(|r| r.len() >= 3 && r[0].parse::<usize>().is_ok())
        .count();
    assert_eq!(documented_fields, fields.len(), "header table rows");
}

#[test]
fn design_doc_section_constants_and_format_version_match_the_layout() {
    let table = rows(section("### 3.1"));
    for (name, value) in [
        ("RING_CONTROL_OFFSET", layout::RING_CONTROL_OFFSET),
        ("RING_CONTROL_SIZE", layout::RING_CONTROL_SIZE),
        ("COUNTERS_OFFSET", layout::COUNTERS_OFFSET),
        ("PARTICIPANTS_OFFSET", layout::PARTICIPANTS_OFFSET),
        ("PARTICIPANT_SIZE", layout::PARTICIPANT_SIZE),
        ("TABLE_ENTRY_SIZE", layout::TABLE_ENTRY_SIZE),
        ("SLOT_HEADER_SIZE", layout::SLOT_HEADER_SIZE),
        ("ENVELOPE_SIZE", layout::ENVELOPE_SIZE),
        ("PAD", layout::PAD),
    ] {
        let documented = row(&table, 0, &format!("`{name}`"));
        assert_eq!(documented[1], value.to_string(), "constant {name}");
    }
    let version = format!("`FORMAT_VERSION` = {}.", layout::FORMAT_VERSION);
    assert!(
        section("### 3.10").contains(&version),
        "section 3.10 must say {version}"
    );
}

/// A fresh directory for this test's files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("shmq-design-doc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn header_of(path: &Path) -> FileHeader {
    let bytes = std::fs::read(path).expect("read the queue file");
    bytemuck::pod_read_unaligned(&bytes[..std::mem::size_of::<FileHeader>()])
}

#[test]
fn design_doc_worked_geometries_are_those_of_files_created_with_the_default_options() {
    let dir = Scratch::new();
    let (pipeline, pubsub, service) = (
        dir.0.join("pipeline"),
        dir.0.join("pubsub"),
        dir.0.join("service"),
    );
    Pipeline::create(&pipeline, &PipelineOptions::new()).unwrap();
    PubSub::create(&pubsub, &PubSubOptions::new()).unwrap();
    Service::create(&service, &ServiceOptions::new()).unwrap();
    let table = rows(section("### 3.3"));
    for (prefix, path) in [
        ("pipeline:", &pipeline),
        ("publish-subscribe:", &pubsub),
        ("service:", &service),
    ] {
        let h = header_of(path);
        let documented = table
            .iter()
            .find(|r| r[0].starts_with(prefix))
            .unwrap_or_else(|| panic!("section 3.3 has no worked example for {prefix}"));
        let actual = [
            h.slot_stride,
            h.table_offset,
            h.reply_stride,
            h.slots_offset,
            h.file_size,
        ]
        .map(|v| v.to_string());
        assert_eq!(
            &documented[1..6],
            &actual,
            "worked geometry of the {prefix} defaults"
        );
    }
}
