//! The on-file layout: a fixed `#[repr(C)]` header, then the sections it points to by offset.
//!
//! ```text
//! offset 0     FileHeader        128 B   magic, format version, kind, geometry (read-mostly)
//! offset 128   RingControl       512 B   tail, head, two wait cells, each on its own 128 B line
//! offset 640   Counters          128 B   file-wide statistics (see `counter`)
//! offset 768   participant table max_participants × 128 B (see `PARTICIPANT_STATS`)
//! slots_offset slots             capacity × slot_stride, each slot: SlotHeader (16 B) + payload
//! ```
//!
//! Every field is an offset or a count, never a pointer, so the file means the same in every
//! process that maps it and survives being copied or reopened. Every value is validated by
//! [`Geometry::validate`] before the rest of the crate uses it: the mapping is untrusted input.

use crate::error::Corruption;
use core::mem::{offset_of, size_of};

/// The first eight bytes of every shmq file: `"SHMQ"` then `"RING"` in ASCII, little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMQRING");
/// The on-file format version this build reads and writes.
///
/// Version 2 (this one) added the statistics: each participant entry grew from 64 to 128 bytes,
/// its second half holding that participant's own counters, and the counters block gained the
/// totals of participants that have left. A version-1 file is refused with an error naming
/// both versions.
pub const FORMAT_VERSION: u32 = 2;

pub use crate::kind::{kind_name, KIND_PIPELINE, KIND_PUBSUB, KIND_SERVICE};

/// Hot words are padded to this many bytes: two cache lines, because the adjacent-line
/// prefetcher of x86 pulls lines in pairs.
pub const PAD: usize = 128;

/// The file header. Written once by the creator (magic last, with Release ordering) and only
/// read afterwards. Fields a kind does not use are zero.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FileHeader {
    /// [`MAGIC`]; zero until the creator has finished initialising the file.
    pub magic: u64,
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// One of the `KIND_*` constants.
    pub kind: u32,
    /// The whole file's length in bytes.
    pub file_size: u64,
    /// Number of message slots (of the request ring, for a service).
    pub capacity: u64,
    /// Largest message (payload) in bytes.
    pub max_message: u64,
    /// Distance between two slots in bytes (a multiple of 64).
    pub slot_stride: u64,
    /// Where the first slot starts.
    pub slots_offset: u64,
    /// Where the participant table starts.
    pub participants_offset: u64,
    /// Number of entries in the participant table.
    pub max_participants: u32,
    /// Publish-subscribe: the overflow mode (1 drop oldest, 2 block). Pipeline: its exclusive
    /// ends ([`PIPELINE_SINGLE_PRODUCER`], [`PIPELINE_SINGLE_CONSUMER`]) and its payload
    /// checksum ([`PIPELINE_CHECKSUM`]). Zero otherwise.
    pub flags: u32,
    /// Publish-subscribe: largest topic in bytes. Zero otherwise.
    pub max_topic: u32,
    /// Publish-subscribe: subscriber entries; service: client entries. Zero otherwise.
    pub table_entries: u32,
    /// Where the subscriber table (publish-subscribe) or client table (service) starts.
    pub table_offset: u64,
    /// Service: slots in each client's reply ring. Zero otherwise.
    pub reply_capacity: u64,
    /// Service: bytes per client's reply ring block. Zero otherwise.
    pub reply_stride: u64,
    /// Reserved, zero.
    pub reserved: [u64; 3],
}

/// Offset of the ring's control block: `tail`, `head` and the two wait cells.
pub const RING_CONTROL_OFFSET: usize = 128;
/// Size of a ring control block.
pub const RING_CONTROL_SIZE: usize = 4 * PAD;
/// Within a control block: the next position a producer will claim.
pub const CTL_TAIL: usize = 0;
/// Within a control block: the next position a consumer will claim.
pub const CTL_HEAD: usize = PAD;
/// Within a control block: messages waiting to be delivered again (beside `head`, which every
/// consumer touches anyway).
pub const CTL_REDELIVER_PENDING: usize = PAD + 8;
/// Within a control block of a ring with exclusive ends: who holds the producer's end (beside
/// the tail, which that producer writes anyway). Zero when nobody does.
pub const CTL_PRODUCER_HOLDER: usize = CTL_TAIL + 8;
/// Within a control block of a ring with exclusive ends: who holds the consumer's end (beside
/// the head; past the word the shared ring's redelivery count uses).
pub const CTL_CONSUMER_HOLDER: usize = PAD + 16;
/// Within a control block: consumers wait here for messages.
pub const CTL_NOT_EMPTY: usize = 2 * PAD;
/// Within a control block: producers wait here for room.
pub const CTL_NOT_FULL: usize = 3 * PAD;
/// Offset of the statistics counters.
pub const COUNTERS_OFFSET: usize = RING_CONTROL_OFFSET + RING_CONTROL_SIZE;
/// Where the participant table starts in a pipeline file.
pub const PARTICIPANTS_OFFSET: usize = COUNTERS_OFFSET + PAD;
/// Bytes per participant entry: two cache lines, so that one participant's writes to its own
/// entry (its counters, on every message) never share a line pair with another's.
pub const PARTICIPANT_SIZE: usize = PAD;
/// Within a participant entry: where its statistics start (the first 64 bytes are the
/// participant table's own words: state, PID). Eight 64-bit counters, indexed by
/// the `counter::*` participant constants, written only by the participant itself with plain
/// (relaxed load, relaxed store) increments; folded into the file-wide totals when it detaches
/// or is reaped.
pub const PARTICIPANT_STATS: usize = 64;

/// The 64-bit statistics words: where each lives in the counters block (file-wide) and in a
/// participant entry's statistics (per participant).
pub mod counter {
    /// Counters block: participants found dead and reaped.
    pub const REAPED: usize = 0;
    /// Counters block: slots a dead writer had claimed, passed over.
    pub const SKIPPED: usize = 1;
    /// Counters block: messages a dead reader held, made deliverable again.
    pub const REDELIVERED: usize = 2;
    /// Counters block: other things a dead participant held, let go.
    pub const RELEASED: usize = 3;
    /// Counters block: commits and acknowledgements refused because their claim had been taken
    /// away (`RecoveryStats::refused`).
    pub const REFUSED: usize = 4;
    /// Counters block: recovery passes run (on attach, by stalled waiters, by `repair`).
    pub const SWEEPS: usize = 5;
    /// Counters block: where the totals of departed participants' counters start (the
    /// participant counters below, at this offset).
    pub const DEPARTED: usize = 8;

    /// Participant: messages (requests, replies) it committed into a ring.
    pub const SENT: usize = 0;
    /// Participant: messages (requests, replies) it took from a ring and acknowledged.
    pub const RECEIVED: usize = 1;
    /// Participant: sends that found no room (whether they then waited, timed out or failed).
    pub const FULL: usize = 2;
    /// Participant: receives that found nothing ready (whether they then waited or not).
    pub const EMPTY: usize = 3;
    /// Participant: waits that went to sleep on a futex (once per wait, however long).
    pub const PARKED: usize = 4;
    /// Participant (subscriber, drop-oldest): messages it missed because it fell behind.
    pub const LAGGED: usize = 5;
    /// Participant (producer): loans dropped without committing (skipped by consumers).
    pub const ABANDONED: usize = 6;
    /// Participant (consumer of a pipeline with checksums): messages whose payload failed its
    /// checksum, skipped (acknowledged without being handed out).
    pub const BAD_CHECKSUM: usize = 7;
    /// Number of participant counters.
    pub const PARTICIPANT_COUNTERS: usize = 8;
}

/// A slot's header: the state word, then the message length. The payload follows.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SlotHeader {
    /// Position, state and owner; see `ring::mpmc`.
    pub state: u64,
    /// Length of the committed message in bytes.
    pub len: u32,
    /// Publish-subscribe: length of the topic. Pipeline with [`PIPELINE_CHECKSUM`]: the
    /// CRC32C of the payload. Zero (or stale) otherwise.
    pub check: u32,
}

/// The envelope in front of every request and reply of a service: which client asked (its
/// table index and the generation of that entry when it asked) and the request's correlation id.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Envelope {
    /// The client's request number, echoed in the reply.
    pub correlation: u64,
    /// The client entry's generation when the request was sent.
    pub generation: u64,
    /// The client's index in the client table.
    pub client: u32,
    /// Reply flags (1: the server dropped the request without replying).
    pub flags: u32,
}

/// Size of [`Envelope`].
pub const ENVELOPE_SIZE: usize = size_of::<Envelope>();

/// Size of [`SlotHeader`]; the payload starts this far into the slot (16-byte aligned).
pub const SLOT_HEADER_SIZE: usize = size_of::<SlotHeader>();

/// A wait cell (the protocol is in `sync::wait`): one futex word, then 4 reserved bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WaitCellLayout {
    /// The futex word: an epoch in the upper 24 bits (moved on by every notify that wakes),
    /// and in the lower 8 ([`WAIT_WAITERS_MASK`]) how many waiters are registered in that
    /// epoch, parked or about to park (saturating at 255).
    pub word: u32,
    /// Unused; zero in files this version creates.
    pub reserved: u32,
}

/// The part of a wait cell's [`word`](WaitCellLayout::word) that counts registered waiters.
pub const WAIT_WAITERS_MASK: u32 = 0xff;
/// One step of a wait cell's epoch (the bits above [`WAIT_WAITERS_MASK`]).
pub const WAIT_EPOCH_ONE: u32 = WAIT_WAITERS_MASK + 1;

const _: () = {
    assert!(size_of::<FileHeader>() == 128);
    assert!(offset_of!(FileHeader, magic) == 0);
    assert!(offset_of!(FileHeader, version) == 8);
    assert!(offset_of!(FileHeader, kind) == 12);
    assert!(offset_of!(FileHeader, file_size) == 16);
    assert!(offset_of!(FileHeader, capacity) == 24);
    assert!(offset_of!(FileHeader, max_message) == 32);
    assert!(offset_of!(FileHeader, slot_stride) == 40);
    assert!(offset_of!(FileHeader, slots_offset) == 48);
    assert!(offset_of!(FileHeader, participants_offset) == 56);
    assert!(offset_of!(FileHeader, max_participants) == 64);
    assert!(offset_of!(FileHeader, flags) == 68);
    assert!(offset_of!(FileHeader, max_topic) == 72);
    assert!(offset_of!(FileHeader, table_entries) == 76);
    assert!(offset_of!(FileHeader, table_offset) == 80);
    assert!(offset_of!(FileHeader, reply_capacity) == 88);
    assert!(offset_of!(FileHeader, reply_stride) == 96);
    assert!(offset_of!(FileHeader, reserved) == 104);
    assert!(size_of::<SlotHeader>() == 16);
    assert!(size_of::<Envelope>() == 24);
    assert!(offset_of!(SlotHeader, state) == 0);
    assert!(offset_of!(SlotHeader, len) == 8);
    assert!(offset_of!(SlotHeader, check) == 12);
    assert!(size_of::<WaitCellLayout>() == 8);
    assert!(offset_of!(WaitCellLayout, word) == 0);
    assert!(offset_of!(WaitCellLayout, reserved) == 4);
    assert!(RING_CONTROL_OFFSET == size_of::<FileHeader>());
    assert!(PARTICIPANTS_OFFSET == 768);
    assert!(PARTICIPANT_SIZE == 128);
    assert!(PARTICIPANT_STATS + 8 * counter::PARTICIPANT_COUNTERS == PARTICIPANT_SIZE);
    assert!(8 * (counter::DEPARTED + counter::PARTICIPANT_COUNTERS) <= PAD);
};

/// Offsets of the header's fields, for reading them atomically from the mapping.
pub mod field {
    use super::FileHeader;
    use core::mem::offset_of;
    /// [`FileHeader::magic`]
    pub const MAGIC: usize = offset_of!(FileHeader, magic);
    /// [`FileHeader::version`]
    pub const VERSION: usize = offset_of!(FileHeader, version);
    /// [`FileHeader::kind`]
    pub const KIND: usize = offset_of!(FileHeader, kind);
    /// [`FileHeader::file_size`]
    pub const FILE_SIZE: usize = offset_of!(FileHeader, file_size);
    /// [`FileHeader::capacity`]
    pub const CAPACITY: usize = offset_of!(FileHeader, capacity);
    /// [`FileHeader::max_message`]
    pub const MAX_MESSAGE: usize = offset_of!(FileHeader, max_message);
    /// [`FileHeader::slot_stride`]
    pub const SLOT_STRIDE: usize = offset_of!(FileHeader, slot_stride);
    /// [`FileHeader::slots_offset`]
    pub const SLOTS_OFFSET: usize = offset_of!(FileHeader, slots_offset);
    /// [`FileHeader::participants_offset`]
    pub const PARTICIPANTS_OFFSET: usize = offset_of!(FileHeader, participants_offset);
    /// [`FileHeader::max_participants`]
    pub const MAX_PARTICIPANTS: usize = offset_of!(FileHeader, max_participants);
    /// [`FileHeader::flags`]
    pub const FLAGS: usize = offset_of!(FileHeader, flags);
    /// [`FileHeader::max_topic`]
    pub const MAX_TOPIC: usize = offset_of!(FileHeader, max_topic);
    /// [`FileHeader::table_entries`]
    pub const TABLE_ENTRIES: usize = offset_of!(FileHeader, table_entries);
    /// [`FileHeader::table_offset`]
    pub const TABLE_OFFSET: usize = offset_of!(FileHeader, table_offset);
    /// [`FileHeader::reply_capacity`]
    pub const REPLY_CAPACITY: usize = offset_of!(FileHeader, reply_capacity);
    /// [`FileHeader::reply_stride`]
    pub const REPLY_STRIDE: usize = offset_of!(FileHeader, reply_stride);
    /// [`FileHeader::reserved`]
    pub const RESERVED: usize = offset_of!(FileHeader, reserved);
    /// Number of reserved 64-bit words.
    pub const RESERVED_WORDS: usize = 3;
}

/// Upper bounds that keep every computed offset far from overflow and every state word's
/// fields in range.
pub const MAX_CAPACITY: u64 = 1 << 32;
/// Largest message a queue may be created for (the slot's length field is 32 bits).
pub const MAX_MESSAGE_LIMIT: u64 = 1 << 30;
/// The participant index is stored in 12 bits of a slot's state word, 0 meaning "nobody".
pub const MAX_PARTICIPANTS_LIMIT: u32 = (1 << 12) - 1;
/// Files larger than this are refused (a corrupt header would otherwise ask for absurd maps).
pub const MAX_FILE_SIZE: u64 = 1 << 46;

/// Bytes per subscriber entry (publish-subscribe) or client entry (service): one 128-byte
/// line each, because each is written by its owner on every message.
pub const TABLE_ENTRY_SIZE: usize = 128;

/// Pipeline flag, in [`FileHeader::flags`]: at most one producer is attached at a time (checked
/// at attach), so sending needs no read-modify-write (see `ring::exclusive`).
pub const PIPELINE_SINGLE_PRODUCER: u32 = 1;
/// Pipeline flag: at most one consumer is attached at a time.
pub const PIPELINE_SINGLE_CONSUMER: u32 = 2;
/// Both exclusive-end flags: the combination a pipeline runs on the exclusive-ends ring with
/// (one of them alone is refused).
pub const PIPELINE_EXCLUSIVE_ENDS: u32 = PIPELINE_SINGLE_PRODUCER | PIPELINE_SINGLE_CONSUMER;
/// Pipeline flag: every message carries the CRC32C of its payload in its slot header's
/// [`check`](SlotHeader::check) word, written by the producer before the commit and verified
/// by the consumer before the message is handed out.
pub const PIPELINE_CHECKSUM: u32 = 4;
/// Every pipeline flag this build knows; a file with any other bit set is refused.
pub const PIPELINE_FLAGS: u32 = PIPELINE_EXCLUSIVE_ENDS | PIPELINE_CHECKSUM;

/// Publish-subscribe overflow modes, as stored in [`FileHeader::flags`].
pub const OVERFLOW_DROP_OLDEST: u32 = 1;
/// Publishers wait for the slowest subscriber.
pub const OVERFLOW_BLOCK: u32 = 2;

/// The geometry of a queue, as computed at creation or read back (and checked) at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// The kind of queue.
    pub kind: u32,
    /// Number of slots (request ring, for a service).
    pub capacity: u64,
    /// Largest message in bytes.
    pub max_message: u64,
    /// Bytes between slots.
    pub slot_stride: u64,
    /// First slot's offset.
    pub slots_offset: u64,
    /// Participant table's offset.
    pub participants_offset: u64,
    /// Participant table's length.
    pub max_participants: u32,
    /// Publish-subscribe overflow mode; pipeline flags (`PIPELINE_*`); zero otherwise.
    pub flags: u32,
    /// Publish-subscribe: largest topic; zero otherwise.
    pub max_topic: u32,
    /// Subscriber or client entries; zero for a pipeline.
    pub table_entries: u32,
    /// Subscriber or client table's offset (the participant table's end for a pipeline).
    pub table_offset: u64,
    /// Service: slots per reply ring.
    pub reply_capacity: u64,
    /// Service: bytes per client reply-ring block (control block + slots).
    pub reply_stride: u64,
    /// Total file length.
    pub file_size: u64,
}

/// Bytes reserved for the topic at the start of a publish-subscribe slot's payload area: the
/// topic limit rounded up to 8, so the message body starts 8-byte aligned.
pub fn topic_area(max_topic: u32) -> u64 {
    u64::from(max_topic).next_multiple_of(8)
}

/// `x` rounded up to a multiple of `to` (a power of two), or `None` on overflow.
fn round_up(x: u64, to: u64) -> Option<u64> {
    debug_assert!(to.is_power_of_two());
    Some(x.checked_add(to - 1)? & !(to - 1))
}

fn check_range(name: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!(
            "{name} must be between {min} and {max}, not {value}"
        ));
    }
    Ok(())
}

/// The primary options from which every other geometry field is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// One of the `KIND_*` constants.
    pub kind: u32,
    /// Slots of the main ring.
    pub capacity: u64,
    /// Largest message in bytes.
    pub max_message: u64,
    /// Participant entries.
    pub max_participants: u32,
    /// Publish-subscribe overflow mode.
    pub flags: u32,
    /// Publish-subscribe topic limit.
    pub max_topic: u32,
    /// Subscriber or client entries.
    pub table_entries: u32,
    /// Service reply ring slots.
    pub reply_capacity: u64,
}

impl Shape {
    /// The shape recorded in a header (before it is checked).
    pub fn of(h: &FileHeader) -> Self {
        Shape {
            kind: h.kind,
            capacity: h.capacity,
            max_message: h.max_message,
            max_participants: h.max_participants,
            flags: h.flags,
            max_topic: h.max_topic,
            table_entries: h.table_entries,
            reply_capacity: h.reply_capacity,
        }
    }
}

impl Geometry {
    /// Computes the layout of a new pipeline file, or says which option is out of range.
    pub fn pipeline(
        capacity: u64,
        max_message: u64,
        max_participants: u32,
    ) -> Result<Self, String> {
        Geometry::pipeline_with_flags(capacity, max_message, max_participants, 0)
    }

    /// [`Geometry::pipeline`] with `flags`, a combination of the `PIPELINE_*` flags.
    pub fn pipeline_with_flags(
        capacity: u64,
        max_message: u64,
        max_participants: u32,
        flags: u32,
    ) -> Result<Self, String> {
        Geometry::compute(Shape {
            kind: KIND_PIPELINE,
            capacity,
            max_message,
            max_participants,
            flags,
            max_topic: 0,
            table_entries: 0,
            reply_capacity: 0,
        })
    }

    /// Checks `shape`'s options against its kind and returns the bytes a slot carries after
    /// its header: the message, plus the topic area (publish-subscribe) or the envelope
    /// (service).
    fn slot_payload(shape: &Shape) -> Result<u64, String> {
        let Shape {
            kind,
            capacity,
            max_message,
            max_participants,
            flags,
            max_topic,
            table_entries,
            reply_capacity,
        } = *shape;
        check_range("capacity", capacity, 1, MAX_CAPACITY)?;
        check_range("max_message", max_message, 0, MAX_MESSAGE_LIMIT)?;
        check_range(
            "max_participants",
            max_participants.into(),
            1,
            MAX_PARTICIPANTS_LIMIT.into(),
        )?;
        match kind {
            KIND_PIPELINE => {
                if flags & !PIPELINE_FLAGS != 0 {
                    return Err(format!("unknown pipeline flags {flags:#x}"));
                }
                if max_topic != 0 || table_entries != 0 || reply_capacity != 0 {
                    return Err("a pipeline has no topic, table or reply options".into());
                }
                Ok(max_message)
            }
            KIND_PUBSUB => {
                if flags != OVERFLOW_DROP_OLDEST && flags != OVERFLOW_BLOCK {
                    return Err(format!("unknown overflow mode {flags}"));
                }
                check_range("max_topic", max_topic.into(), 0, 65_535)?;
                check_range(
                    "max_subscribers",
                    table_entries.into(),
                    1,
                    u64::from(max_participants),
                )?;
                if reply_capacity != 0 {
                    return Err("a publish-subscribe channel has no reply rings".into());
                }
                Ok(max_message + topic_area(max_topic))
            }
            KIND_SERVICE => {
                if flags != 0 || max_topic != 0 {
                    return Err("a service has no topic or overflow options".into());
                }
                check_range(
                    "max_clients",
                    table_entries.into(),
                    1,
                    u64::from(max_participants),
                )?;
                check_range("reply_capacity", reply_capacity, 1, MAX_CAPACITY)?;
                Ok(max_message + ENVELOPE_SIZE as u64)
            }
            _ => Err(format!("unknown queue kind {kind}")),
        }
    }

    /// Computes the layout of any kind of file from its primary options.
    pub fn compute(shape: Shape) -> Result<Self, String> {
        let payload = Self::slot_payload(&shape)?;
        let Shape {
            capacity,
            max_message,
            table_entries,
            ..
        } = shape;
        let too_big =
            || format!("a queue of {capacity} slots of {max_message} bytes does not fit in a file");
        let slot_stride = round_up(SLOT_HEADER_SIZE as u64 + payload, 64).ok_or_else(too_big)?;
        let participants_offset = PARTICIPANTS_OFFSET as u64;
        let after_participants =
            participants_offset + u64::from(shape.max_participants) * PARTICIPANT_SIZE as u64;
        let table_offset = round_up(after_participants, PAD as u64).ok_or_else(too_big)?;
        let mut end = table_offset + u64::from(table_entries) * TABLE_ENTRY_SIZE as u64;
        let mut reply_stride = 0;
        if shape.kind == KIND_SERVICE {
            reply_stride = shape
                .reply_capacity
                .checked_mul(slot_stride)
                .and_then(|s| s.checked_add(RING_CONTROL_SIZE as u64))
                .and_then(|s| round_up(s, PAD as u64))
                .ok_or_else(too_big)?;
            end = u64::from(table_entries)
                .checked_mul(reply_stride)
                .and_then(|s| s.checked_add(end))
                .filter(|&s| s <= MAX_FILE_SIZE)
                .ok_or_else(too_big)?;
        }
        let slots_offset = round_up(end, PAD as u64).ok_or_else(too_big)?;
        let file_size = capacity
            .checked_mul(slot_stride)
            .and_then(|s| s.checked_add(slots_offset))
            .and_then(|s| round_up(s, 4096))
            .filter(|&s| s <= MAX_FILE_SIZE)
            .ok_or_else(too_big)?;
        Ok(Geometry {
            kind: shape.kind,
            capacity,
            max_message,
            slot_stride,
            slots_offset,
            participants_offset,
            max_participants: shape.max_participants,
            flags: shape.flags,
            max_topic: shape.max_topic,
            table_entries,
            table_offset,
            reply_capacity: shape.reply_capacity,
            reply_stride,
            file_size,
        })
    }

    /// Where client `index`'s reply-ring block starts (service only).
    pub fn reply_block(&self, index: u32) -> u64 {
        self.table_offset
            + u64::from(self.table_entries) * TABLE_ENTRY_SIZE as u64
            + u64::from(index) * self.reply_stride
    }

    /// The header a creator writes for this geometry.
    pub fn header(&self) -> FileHeader {
        FileHeader {
            magic: MAGIC,
            version: FORMAT_VERSION,
            kind: self.kind,
            file_size: self.file_size,
            capacity: self.capacity,
            max_message: self.max_message,
            slot_stride: self.slot_stride,
            slots_offset: self.slots_offset,
            participants_offset: self.participants_offset,
            max_participants: self.max_participants,
            flags: self.flags,
            max_topic: self.max_topic,
            table_entries: self.table_entries,
            table_offset: self.table_offset,
            reply_capacity: self.reply_capacity,
            reply_stride: self.reply_stride,
            reserved: [0; 3],
        }
    }

    /// Checks a header read from a file of `actual_len` bytes, expecting `kind`.
    ///
    /// Everything the rest of the crate relies on is checked here: magic, version, kind, that
    /// the primary options are in range, that every derived field (offsets, strides, size) is
    /// exactly what `create` computes from them (so no section overlaps another or runs past
    /// the end), and that the file is long enough. A pipeline's exclusive-end flags are refused:
    /// see [`Geometry::validate_allowing`].
    pub fn validate(h: &FileHeader, kind: u32, actual_len: u64) -> Result<Self, Corruption> {
        Geometry::validate_allowing(h, kind, actual_len, 0)
    }

    /// [`Geometry::validate`] for an opener that serves the pipeline flags in `pipeline_flags`
    /// (a subset of [`PIPELINE_FLAGS`]); a pipeline file with any other flag is refused, so a
    /// file made for exclusive ends, or with payload checksums, is never driven by code that
    /// does not know them (which would send messages without their checksum).
    pub fn validate_allowing(
        h: &FileHeader,
        kind: u32,
        actual_len: u64,
        pipeline_flags: u32,
    ) -> Result<Self, Corruption> {
        if h.magic == 0 {
            return Err(Corruption::Uninitialized);
        }
        if h.magic != MAGIC {
            return Err(Corruption::BadMagic { found: h.magic });
        }
        if h.version != FORMAT_VERSION {
            return Err(Corruption::UnsupportedVersion {
                found: h.version,
                expected: FORMAT_VERSION,
            });
        }
        if h.kind != kind {
            return Err(Corruption::WrongKind {
                found: h.kind,
                expected: kind,
            });
        }
        if kind == KIND_PIPELINE && h.flags & !pipeline_flags != 0 {
            return Err(Corruption::BadGeometry(
                "the pipeline has flags (single producer, single consumer, payload checksum) this opener does not serve",
            ));
        }
        let expected = Geometry::compute(Shape::of(h)).map_err(|_| {
            Corruption::BadGeometry(
                "capacity, max_message, participant, topic, table or reply options out of range",
            )
        })?;
        let want = expected.header();
        let derived: [(&'static str, bool); 7] = [
            (
                "slot stride does not match max_message",
                h.slot_stride == want.slot_stride,
            ),
            (
                "participant table offset is wrong",
                h.participants_offset == want.participants_offset,
            ),
            ("table offset is wrong", h.table_offset == want.table_offset),
            (
                "reply ring stride does not match the reply capacity",
                h.reply_stride == want.reply_stride,
            ),
            (
                "slots offset does not match the tables before it",
                h.slots_offset == want.slots_offset,
            ),
            (
                "recorded file size does not match the geometry",
                h.file_size == want.file_size,
            ),
            ("reserved header fields are not zero", h.reserved == [0; 3]),
        ];
        if let Some((what, _)) = derived.iter().find(|(_, ok)| !ok) {
            return Err(Corruption::BadGeometry(what));
        }
        if actual_len < expected.file_size {
            return Err(Corruption::Truncated {
                len: actual_len,
                expected: expected.file_size,
            });
        }
        Ok(expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> (Geometry, FileHeader) {
        let g = Geometry::pipeline(1024, 4096, 64).unwrap();
        (g, g.header())
    }

    #[test]
    fn geometry_is_aligned_and_sections_do_not_overlap() {
        for (cap, max, parts) in [(1, 0, 1), (3, 1, 2), (1024, 64, 64), (7, 4096, 4095)] {
            let g = Geometry::pipeline(cap, max, parts).unwrap();
            assert_eq!(g.slot_stride % 64, 0);
            assert!(g.slot_stride >= SLOT_HEADER_SIZE as u64 + max);
            assert_eq!(g.slots_offset % PAD as u64, 0);
            assert!(
                g.participants_offset + u64::from(parts) * PARTICIPANT_SIZE as u64
                    <= g.slots_offset
            );
            assert!(g.slots_offset + cap * g.slot_stride <= g.file_size);
            assert_eq!(g.file_size % 4096, 0);
            assert_eq!(
                Geometry::validate(&g.header(), KIND_PIPELINE, g.file_size),
                Ok(g)
            );
        }
    }

    #[test]
    fn options_out_of_range_are_refused() {
        assert!(Geometry::pipeline(0, 64, 8).is_err());
        assert!(Geometry::pipeline(MAX_CAPACITY + 1, 64, 8).is_err());
        assert!(Geometry::pipeline(8, MAX_MESSAGE_LIMIT + 1, 8).is_err());
        assert!(Geometry::pipeline(8, 64, 0).is_err());
        assert!(Geometry::pipeline(8, 64, MAX_PARTICIPANTS_LIMIT + 1).is_err());
        assert!(
            Geometry::pipeline(MAX_CAPACITY, MAX_MESSAGE_LIMIT, 8).is_err(),
            "too big a file"
        );
    }

    #[test]
    fn each_corrupted_field_is_named() {
        let (g, h) = good();
        let check = |h: FileHeader, want: fn(&Corruption) -> bool| {
            let got = Geometry::validate(&h, KIND_PIPELINE, g.file_size).unwrap_err();
            assert!(want(&got), "unexpected {got:?}");
        };
        check(FileHeader { magic: 0, ..h }, |c| {
            *c == Corruption::Uninitialized
        });
        check(FileHeader { magic: 42, ..h }, |c| {
            matches!(c, Corruption::BadMagic { found: 42 })
        });
        check(FileHeader { version: 1, ..h }, |c| {
            matches!(
                c,
                Corruption::UnsupportedVersion {
                    found: 1,
                    expected: 2
                }
            )
        });
        check(
            FileHeader {
                kind: KIND_PUBSUB,
                ..h
            },
            |c| matches!(c, Corruption::WrongKind { .. }),
        );
        check(FileHeader { capacity: 0, ..h }, |c| {
            matches!(c, Corruption::BadGeometry(_))
        });
        check(
            FileHeader {
                capacity: u64::MAX,
                ..h
            },
            |c| matches!(c, Corruption::BadGeometry(_)),
        );
        check(
            FileHeader {
                capacity: 2048,
                ..h
            },
            |c| matches!(c, Corruption::BadGeometry(_)),
        );
        check(
            FileHeader {
                max_message: 1 << 40,
                ..h
            },
            |c| matches!(c, Corruption::BadGeometry(_)),
        );
        check(
            FileHeader {
                max_message: 8192,
                ..h
            },
            |c| matches!(c, Corruption::BadGeometry(_)),
        );
        check(
            FileHeader {
                slot_stride: 64,
                ..h
            },
            |c| matches!(c, Corruption::BadGeometry(_)),
        );
        check(
            FileHeader {
                slots_offset: 0,
                ..h
            },
            |c| matches!(c, Corruption::BadGeometry(_)),
        );
        check(
            FileHeader {
                participants_offset: 0,
                ..h
            },
            |c| matches!(c, Corruption::BadGeometry(_)),
        );
        check(
            FileHeader {
                max_participants: 0,
                ..h
            },
            |c| matches!(c, Corruption::BadGeometry(_)),
        );
        check(
            FileHeader {
                max_participants: 65,
                ..h
            },
            |c| matches!(c, Corruption::BadGeometry(_)),
        );
        check(FileHeader { file_size: 1, ..h }, |c| {
            matches!(c, Corruption::BadGeometry(_))
        });
        check(FileHeader { flags: 1, ..h }, |c| {
            matches!(c, Corruption::BadGeometry(_))
        });
        for bad in [
            FileHeader { max_topic: 1, ..h },
            FileHeader {
                table_entries: 1,
                ..h
            },
            FileHeader {
                table_offset: 0,
                ..h
            },
            FileHeader {
                reply_capacity: 1,
                ..h
            },
            FileHeader {
                reply_stride: 1,
                ..h
            },
        ] {
            check(bad, |c| matches!(c, Corruption::BadGeometry(_)));
        }
        check(
            FileHeader {
                reserved: [0, 9, 0],
                ..h
            },
            |c| matches!(c, Corruption::BadGeometry(_)),
        );
    }

    #[test]
    fn pipeline_flags_round_trip_and_unknown_ones_are_refused() {
        for flags in [
            0,
            PIPELINE_SINGLE_PRODUCER,
            PIPELINE_SINGLE_CONSUMER,
            PIPELINE_EXCLUSIVE_ENDS,
            PIPELINE_CHECKSUM,
            PIPELINE_CHECKSUM | PIPELINE_EXCLUSIVE_ENDS,
        ] {
            let g = Geometry::pipeline_with_flags(8, 64, 4, flags).unwrap();
            assert_eq!(g.flags, flags);
            assert_eq!(g.header().flags, flags, "stored in the header");
            assert_eq!(
                Geometry::validate_allowing(&g.header(), KIND_PIPELINE, g.file_size, flags),
                Ok(g)
            );
            assert_eq!(
                Geometry::validate_allowing(
                    &g.header(),
                    KIND_PIPELINE,
                    g.file_size,
                    PIPELINE_FLAGS
                ),
                Ok(g),
                "read back from the file by an opener that knows every flag"
            );
            assert_eq!(
                Geometry::validate(&g.header(), KIND_PIPELINE, g.file_size).is_ok(),
                flags == 0,
                "an opener that does not serve a flag refuses it"
            );
        }
        // An opener that knows the exclusive ends but not checksums (an older build) refuses a
        // file with checksums, so it never sends a message without one.
        let g = Geometry::pipeline_with_flags(8, 64, 4, PIPELINE_CHECKSUM).unwrap();
        assert!(matches!(
            Geometry::validate_allowing(
                &g.header(),
                KIND_PIPELINE,
                g.file_size,
                PIPELINE_EXCLUSIVE_ENDS
            ),
            Err(Corruption::BadGeometry(_))
        ));
        let g = Geometry::pipeline(8, 64, 4).unwrap();
        for bit in 3..32 {
            let unknown = FileHeader {
                flags: 1 << bit,
                ..g.header()
            };
            assert!(
                Geometry::validate_allowing(&unknown, KIND_PIPELINE, g.file_size, PIPELINE_FLAGS)
                    .is_err(),
                "unknown flag bit {bit}"
            );
            assert!(Geometry::pipeline_with_flags(8, 64, 4, 1 << bit).is_err());
        }
        assert_eq!(PIPELINE_FLAGS, 7);
        assert!(Geometry::pipeline_with_flags(8, 64, 4, u32::MAX).is_err());
    }

    #[test]
    fn short_file_is_truncated() {
        let (g, h) = good();
        let got = Geometry::validate(&h, KIND_PIPELINE, g.file_size - 1).unwrap_err();
        assert_eq!(
            got,
            Corruption::Truncated {
                len: g.file_size - 1,
                expected: g.file_size
            }
        );
    }
}
