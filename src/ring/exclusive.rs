//! The exclusive-ends slot ring: one producer and one consumer at a time, no read-modify-write
//! and no fence of its own on the send/receive path (the wake check's, in the wait cell, is the
//! one left), with crash recovery as exact as the shared ring's.
//!
//! # Algorithm
//!
//! A bounded array of `capacity` slots. Position `p` lives in slot `p % capacity`. The producer
//! and the consumer each keep their own position *locally* (`tail`: the next position to write;
//! `head`: the next position to deliver) and touch the slot line once per message each. Every
//! slot starts with a 64-bit *state word*, then the message length (32 bits), then the payload
//! at offset 16 ([`SLOT_HEADER_SIZE`](crate::layout::SLOT_HEADER_SIZE)), so a message of up to
//! 48 bytes shares the state word's 64-byte line (slots are 64-byte aligned; the stride is a
//! multiple of 64):
//!
//! ```text
//!  63                          16   15   14..12   11..0
//! +------------------------------+----+--------+-------+
//! | sequence: position (48 bits) | RD | 0 or 2 |   0   |
//! +------------------------------+----+--------+-------+
//! ```
//!
//! * `sequence` is the position the slot currently serves (mod 2^48);
//! * the state field is `EMPTY` (0: free for the producer of that position) or `READY` (2: holds
//!   that position's committed message). The values are the shared ring's, with owner 0, so a
//!   tool that decodes `ring::mpmc` words reads these too;
//! * `RD` marks a message whose first consumer died (or detached) without acknowledging it.
//!
//! There is no WRITING, READING or owner: who writes and who holds is known without them (one
//! producer, one consumer), and what recovery needs is in words each side writes alone (below).
//! The life of position `p` in its slot, and who performs each step:
//!
//! ```text
//! (p, EMPTY) --producer: payload, length, Release store--> (p, READY)
//!     --consumer: Release store, when it acknowledges--> (p + capacity, EMPTY)
//! (p, READY) --recovery of a consumer that had delivered p: CAS--> (p, READY, RD)
//! ```
//!
//! Delivering does not write the slot: the consumer only moves its local `head` on and
//! records it (below). Acknowledgements may come in any order: each writes only its own slot.
//!
//! The producer at `tail = t` loads slot `t`'s word: `(t, EMPTY)` means write there;
//! `(t - capacity, READY)` means the previous lap's message is still there (not yet
//! acknowledged, maybe held by the consumer while later ones were acknowledged): the ring is
//! **full** at `t` — head-of-line, as in the shared ring. The consumer at `head = h` loads slot
//! `h`'s word: `(h, READY)` is the next message; `(h, EMPTY)`, or `(h - capacity, READY)` (a
//! message this consumer still holds from the previous lap), mean nothing is ready at `h` yet;
//! `(h + capacity, _)` means position `h` was delivered and acknowledged by a *previous*
//! consumer out of order, so this one passes over it. Any other word is [`Corruption`].
//!
//! # Memory ordering
//!
//! * Commit: the payload and the length are written with plain stores, then the word with a
//!   Release store; the consumer loads the word with Acquire before it reads the length and
//!   the payload, so it sees the whole message.
//! * Acknowledge: a Release store of the next lap's `EMPTY`; the producer loads the word with
//!   Acquire before it writes the payload, so the consumer's reads of the old message happen
//!   before the new message overwrites it.
//! * The position records (`tail` hint, consumer's `delivered` word) are Relaxed stores to
//!   words only their writer writes. They are read by recovery and by the next producer or
//!   consumer to attach, i.e. after their writer has died (the kernel dropping its lock orders
//!   everything it stored before) or detached in the same thread. The consumer's record is
//!   stored before it hands out the message, in program order, and before its acknowledgement
//!   (a Release store), so an acknowledged position is always covered by the record.
//! * Waking: after each commit and each acknowledgement, one call
//!   ([`ExclusiveRing::wake_consumer`], [`ExclusiveRing::wake_producer`]) to the wait cell's
//!   `notify` (a `SeqCst` fence and a load, pairing with the waiter's arm-fence-recheck), the
//!   only place the fast path pays a fence.
//!
//! # Recovery
//!
//! Each side records its position in a word only it writes:
//!
//! * The **producer** stores `tail` into the control block's tail word after each commit. A
//!   producer killed mid-write leaves its slot `(t, EMPTY)`: invisible, as if it never began.
//!   One killed between the commit and the record leaves the record one behind. A new producer
//!   ([`ExclusiveRing::attach_producer`]) reads the record `r` and slot `r`'s word: `(r, EMPTY)`
//!   or `(r - capacity, READY)` mean it starts at `r`; `(r, READY)` or `(r + capacity, EMPTY)`
//!   mean `r` was committed (and maybe acknowledged) and it starts at `r + 1`.
//! * The **consumer** stores `head` into its *delivered* word (the caller says where:
//!   [`ConsumerEnd`]) each time it delivers (or passes over) a position, before the message is
//!   handed out. So every position below the record was delivered (or acknowledged before), and
//!   none at or above it was delivered by this consumer. When it dies, or detaches leaving
//!   messages unacknowledged (leaked), [`ExclusiveRing::recover_consumer`] looks at every slot:
//!   a `READY` slot for a position below the record was delivered and never acknowledged: it is
//!   flagged `RD` (a CAS from the exact word, so running recovery twice flags nothing twice);
//!   a `READY` slot at or above the record was never delivered by it and is left as it is. The
//!   lowest position any slot serves is where the next consumer starts: below it, everything
//!   was acknowledged. It is stored in the control block's head word, last, so a recovery that
//!   dies half-way is simply run again.
//! * A new consumer ([`ExclusiveRing::attach_consumer`]) starts at the lowest position a slot
//!   serves, found from the slots near the head word's value. It delivers the flagged messages
//!   again (flagged), passes over positions acknowledged out of order (at most `capacity` of
//!   them), and goes on.
//!
//! Why the slots say enough: the producer writes positions in order and position `q` only after
//! `q - capacity` was acknowledged, so with `L` the lowest unacknowledged position and `T` the
//! producer's tail, `T <= L + capacity`; each slot serves the lowest unacknowledged position of
//! its residue; `READY` slots serve positions in `[L, T)`, `EMPTY` ones positions in
//! `[T, L + 2 * capacity)` (an `EMPTY` slot's previous lap was acknowledged, so delivered, so
//! below `T`). A consumer's record `d` is at most `T`, and `d - capacity <= L <= d + capacity`
//! (`L >= T - capacity`; positions in `[d, L)` were acknowledged by an earlier consumer, which
//! started at most a ring below). So every slot serves a position in
//! `[d - capacity, d + 3 * capacity)`, an `EMPTY` one never below `d`, a `READY` one never at
//! `d + 2 * capacity` or above. Those
//! windows (far below 2^48 wide) turn each 48-bit sequence back into a 64-bit position, and a
//! word outside them is [`Corruption`].
//!
//! # Untrusted memory
//!
//! Every word read from the region is checked: unknown bits, a sequence that fits none of the
//! cases above, a recorded position that fits no slot, or a length above `max_message` is a
//! [`Corruption`], never a panic or an out-of-bounds access (indices are always computed here,
//! modulo `capacity`, never read from the region). Passing over acknowledged positions is
//! bounded by `capacity` per call, so a hostile file cannot keep a consumer spinning.
//!
//! # Obligations of the caller
//!
//! One [`ProducerEnd`] and one [`ConsumerEnd`] per ring at a time, across every process (the
//! file's single-producer / single-consumer flags, enforced at attach with the holder words:
//! [`ExclusiveRing::take_end`] before attaching an end, [`ExclusiveRing::free_end`] after
//! detaching it or recovering its dead holder), and recovery of a dead one before the next
//! attaches. A [`ReadClaim`] must not outlive the consumer's attachment
//! (a pipeline `Message` borrows its `Consumer`), as with the shared ring.

use super::slots::SlotArray;
use crate::error::Corruption;
use crate::layout::{
    CTL_CONSUMER_HOLDER, CTL_HEAD, CTL_NOT_EMPTY, CTL_NOT_FULL, CTL_PRODUCER_HOLDER, CTL_TAIL,
    RING_CONTROL_SIZE,
};
use crate::shm::Region;
use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use crate::sync::WaitCell;

/// The state field's `READY` value, where `ring::mpmc` puts its `Ready` state.
const READY: u64 = 2 << 12;
/// Delivered before, to a consumer that died without acknowledging it.
const REDELIVERED: u64 = 1 << 15;
const SEQ_SHIFT: u32 = 16;
const SEQ_MASK: u64 = (1 << 48) - 1;
const FLAGS_MASK: u64 = (1 << SEQ_SHIFT) - 1;

#[inline]
fn seq(pos: u64) -> u64 {
    pos & SEQ_MASK
}

/// The word of a slot free for the producer of position `pos`.
#[inline]
fn empty(pos: u64) -> u64 {
    seq(pos) << SEQ_SHIFT
}

/// The word of a slot holding position `pos`'s message.
#[inline]
fn ready(pos: u64, redelivered: bool) -> u64 {
    empty(pos) | READY | if redelivered { REDELIVERED } else { 0 }
}

/// A decoded state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    seq: u64,
    ready: bool,
    redelivered: bool,
}

impl Word {
    #[inline]
    fn decode(raw: u64) -> Result<Self, Corruption> {
        let (ready, redelivered) = match raw & FLAGS_MASK {
            0 => (false, false),
            READY => (true, false),
            f if f == READY | REDELIVERED => (true, true),
            _ => {
                return Err(Corruption::BadState(
                    "a slot of a single-producer single-consumer ring holds bits its protocol never writes",
                ))
            }
        };
        Ok(Word {
            seq: raw >> SEQ_SHIFT,
            ready,
            redelivered,
        })
    }
}

/// A message the consumer holds: readable until it is released (acknowledged).
///
/// Only this module makes one; it is neither `Clone` nor `Copy`. Holding it proves the slot is
/// `READY` for `pos` and that the producer will not write it before it is released.
#[derive(Debug)]
pub(crate) struct ReadClaim {
    pos: u64,
    index: usize,
    len: usize,
    redelivered: bool,
}

impl ReadClaim {
    /// The held message's length (validated against the maximum when delivered).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the message is being delivered again after its first consumer died (or
    /// detached) without acknowledging it.
    #[inline]
    pub(crate) fn redelivered(&self) -> bool {
        self.redelivered
    }
}

/// One of the ring's two ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The sending end.
    Producer,
    /// The receiving end.
    Consumer,
}

/// What recovering a consumer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConsumerRecovery {
    /// Messages it had delivered and not acknowledged, now flagged to be delivered again.
    pub(crate) redelivered: u64,
    /// Where the next consumer starts: the lowest position a slot serves.
    pub(crate) start: u64,
}

/// The ring over a region: a control block (tail and head records, two wait cells) and the
/// slots. Same control block and slot geometry as `ring::mpmc`.
#[derive(Clone)]
pub(crate) struct ExclusiveRing {
    slots: SlotArray,
    ctl: usize,
    max_message: usize,
}

impl ExclusiveRing {
    /// A ring whose control block is at `ctl` and whose `capacity` slots of `stride` bytes start
    /// at `slots`. The caller has validated that all of it lies inside `region` (checked again
    /// here, once).
    pub(crate) fn new(
        region: Region,
        ctl: usize,
        slots: usize,
        capacity: u64,
        stride: usize,
        max_message: usize,
    ) -> Self {
        assert!(ctl % 8 == 0 && ctl + RING_CONTROL_SIZE <= region.len());
        ExclusiveRing {
            slots: SlotArray::new(region, slots, capacity, stride, max_message),
            ctl,
            max_message,
        }
    }

    /// Largest message in bytes.
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))] // the pipeline has its geometry
    #[inline]
    pub(crate) fn max_message(&self) -> usize {
        self.max_message
    }

    /// Number of slots.
    #[inline]
    pub(crate) fn capacity(&self) -> u64 {
        self.slots.capacity()
    }

    /// The producer's record of its position (written by the producer alone).
    #[inline]
    fn tail_record(&self) -> &AtomicU64 {
        self.ctl_u64(CTL_TAIL)
    }

    /// The control block's 64-bit word at `at`, without a check per access: `new` checked
    /// the whole block.
    #[inline]
    fn ctl_u64(&self, at: usize) -> &AtomicU64 {
        debug_assert!(at % 8 == 0 && at + 8 <= RING_CONTROL_SIZE);
        // SAFETY: `at` is one of the block's word offsets (multiples of 8 below
        // RING_CONTROL_SIZE) and `new` checked that the block, 8-aligned, lies in the region.
        unsafe { self.region().u64_at_unchecked(self.ctl + at) }
    }

    /// The control block's 32-bit word at `at` (see [`ctl_u64`](Self::ctl_u64)).
    #[inline]
    fn ctl_u32(&self, at: usize) -> &AtomicU32 {
        debug_assert!(at % 4 == 0 && at + 4 <= RING_CONTROL_SIZE);
        // SAFETY: as for `ctl_u64`, a 4-aligned word inside the checked block.
        unsafe { self.region().u32_at_unchecked(self.ctl + at) }
    }

    /// Where the next consumer starts (written by recovery and detach; by the consumer too when
    /// it is given this word as its delivered word).
    #[inline]
    fn head_record(&self) -> &AtomicU64 {
        self.ctl_u64(CTL_HEAD)
    }

    /// What the consumer recorded in the head word (when it records there).
    #[inline]
    pub(crate) fn delivered_record(&self) -> u64 {
        self.head_record().load(Ordering::Acquire)
    }

    /// Offset in the region of the control block's head word: a word only the one consumer
    /// writes, usable as its delivered word (see [`ExclusiveRing::attach_consumer`]).
    #[inline]
    pub(crate) fn head_offset(&self) -> usize {
        self.ctl + CTL_HEAD
    }

    #[inline]
    fn region(&self) -> &Region {
        self.slots.region()
    }

    #[inline]
    fn index(&self, pos: u64) -> usize {
        self.slots.index(pos)
    }

    #[inline]
    fn state(&self, index: usize) -> &AtomicU64 {
        self.slots.state(index)
    }

    /// Consumers wait here for messages.
    #[inline]
    pub(crate) fn not_empty(&self) -> WaitCell<'_> {
        WaitCell::of_word(self.ctl_u32(CTL_NOT_EMPTY))
    }

    /// Producers wait here for room.
    #[inline]
    pub(crate) fn not_full(&self) -> WaitCell<'_> {
        WaitCell::of_word(self.ctl_u32(CTL_NOT_FULL))
    }

    /// The one place a commit wakes a waiting consumer.
    #[inline]
    pub(crate) fn wake_consumer(&self) {
        self.not_empty().notify();
    }

    /// The one place an acknowledgement wakes a waiting producer.
    #[inline]
    pub(crate) fn wake_producer(&self) {
        self.not_full().notify();
    }

    #[inline]
    fn holder_word(&self, end: End) -> &AtomicU64 {
        let at = match end {
            End::Producer => CTL_PRODUCER_HOLDER,
            End::Consumer => CTL_CONSUMER_HOLDER,
        };
        self.ctl_u64(at)
    }

    /// Takes `end` for the participant named by `me` (any nonzero token, e.g. its entry's
    /// generation and index), so that at most one producer and one consumer are attached across
    /// every process: `Ok` if the end was free (or held by `me` already), else `Err` with the
    /// holder's token. The caller decides whether that holder is alive (the participant table's
    /// oracle; the token is untrusted, so it is checked before it indexes anything); if it is
    /// dead, it recovers it, [`free_end`](Self::free_end)s it and takes the end again.
    pub(crate) fn take_end(&self, end: End, me: u64) -> Result<(), u64> {
        assert_ne!(me, 0, "a holder token is nonzero");
        match self
            .holder_word(end)
            .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(()),
            Err(holder) if holder == me => Ok(()),
            Err(holder) => Err(holder),
        }
    }

    /// Frees `end` if `holder` holds it (its own detach, or after recovering a dead holder);
    /// returns whether it did. A CAS, so a stale token never frees a newer holder's end.
    pub(crate) fn free_end(&self, end: End, holder: u64) -> bool {
        self.holder_word(end)
            .compare_exchange(holder, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes `end` over from `stale`, a holder known to be gone (its token names no participant
    /// in use), for `me`: a CAS, so of several takers one wins, and it alone recovers what the
    /// stale holder left before attaching.
    pub(crate) fn take_end_from(&self, end: End, stale: u64, me: u64) -> bool {
        assert_ne!(me, 0, "a holder token is nonzero");
        self.holder_word(end)
            .compare_exchange(stale, me, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// The token of whoever holds `end`, 0 for nobody (untrusted: read from the file).
    pub(crate) fn end_holder(&self, end: End) -> u64 {
        self.holder_word(end).load(Ordering::Acquire)
    }

    /// Writes the initial state: slot `i` serves position `i`, both records at 0.
    /// Only for a ring nobody else can see yet (during creation).
    pub(crate) fn initialize(&self) {
        self.initialize_at(0);
    }

    /// The initial state of a ring whose first position is `start` (tests use it to run near
    /// the 48-bit sequence wrap).
    fn initialize_at(&self, start: u64) {
        for k in 0..self.capacity() {
            let pos = start + k;
            self.state(self.index(pos))
                .store(empty(pos), Ordering::Relaxed);
        }
        self.tail_record().store(start, Ordering::Relaxed);
        self.head_record().store(start, Ordering::Relaxed);
        self.holder_word(End::Producer).store(0, Ordering::Relaxed);
        self.holder_word(End::Consumer).store(0, Ordering::Relaxed);
    }

    /// Messages committed and not yet delivered, from the two records (a snapshot; exact when
    /// the consumer's delivered word is the head word and nobody is active).
    pub(crate) fn len(&self) -> u64 {
        let head = self.head_record().load(Ordering::Relaxed);
        let tail = self.tail_record().load(Ordering::Relaxed);
        tail.saturating_sub(head).min(self.capacity())
    }

    /// The position `raw`'s sequence stands for near `reference`, with the checks every
    /// recovery-time read makes (see the module docs): the sequence lies in
    /// `[reference - capacity, reference + 3 * capacity)`, fits slot `index`, an `EMPTY` slot
    /// is not below `reference` and a `READY` one is below `reference + 2 * capacity`.
    fn position_near(&self, index: usize, w: Word, reference: u64) -> Result<u64, Corruption> {
        let offset = w.seq.wrapping_sub(seq(reference)) & SEQ_MASK;
        // As a signed 48-bit distance.
        let offset = ((offset << 16) as i64) >> 16;
        let cap = self.capacity() as i64;
        let fits = offset >= -cap
            && offset < 3 * cap
            && if w.ready {
                offset < 2 * cap
            } else {
                offset >= 0
            };
        let pos = reference
            .checked_add_signed(offset)
            .filter(|&p| fits && self.index(p) == index);
        pos.ok_or(Corruption::BadState(
            "a slot's sequence is out of step with the recorded positions",
        ))
    }

    /// The lowest position any slot serves (where a consumer starts), every slot read near
    /// `reference` and checked; `flag_below` flags `READY` slots below it as redelivered and
    /// returns how many it flagged.
    fn scan(&self, reference: u64, flag_below: Option<u64>) -> Result<(u64, u64), Corruption> {
        let mut lowest = u64::MAX;
        let mut flagged = 0;
        for index in 0..self.capacity() as usize {
            let raw = self.state(index).load(Ordering::Acquire);
            let w = Word::decode(raw)?;
            let pos = self.position_near(index, w, reference)?;
            lowest = lowest.min(pos);
            if w.ready && !w.redelivered && flag_below.is_some_and(|d| pos < d) {
                // From the exact word: a second recovery, or a raced acknowledgement, makes
                // the CAS fail and nothing is flagged twice.
                if self
                    .state(index)
                    .compare_exchange(raw, ready(pos, true), Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    flagged += 1;
                }
            }
        }
        Ok((lowest, flagged))
    }

    /// The producer's starting position, from its record and the slot it names (see the
    /// module docs), stored back into the record.
    fn producer_start(&self) -> Result<u64, Corruption> {
        let recorded = self.tail_record().load(Ordering::Acquire);
        let index = self.index(recorded);
        let w = Word::decode(self.state(index).load(Ordering::Acquire))?;
        // Not written yet: free, or full (the previous lap's message still there).
        let unwritten = (w.seq == seq(recorded) && !w.ready)
            || (w.ready && w.seq == seq(recorded.wrapping_sub(self.capacity())));
        // Committed (and maybe acknowledged already) just before its producer died.
        let committed = (w.ready && w.seq == seq(recorded))
            || (!w.ready && w.seq == seq(recorded.wrapping_add(self.capacity())));
        let start = if unwritten {
            recorded
        } else if committed {
            recorded.checked_add(1).ok_or(Corruption::BadState(
                "the producer's recorded position is out of range",
            ))?
        } else {
            return Err(Corruption::BadState(
                "the producer's recorded position is out of step with its slot",
            ));
        };
        self.tail_record().store(start, Ordering::Release);
        Ok(start)
    }

    /// Attaches the (one) producer: it resumes where the last one stopped. The caller ensures
    /// no other producer is attached.
    pub(crate) fn attach_producer(&self) -> Result<ProducerEnd, Corruption> {
        let tail = self.producer_start()?;
        Ok(ProducerEnd {
            ring: self.clone(),
            tail,
            index: self.index(tail),
            writing: false,
        })
    }

    /// After the producer died: brings its record up to date (it may be one behind). Nothing
    /// in the slots needs undoing: a half-written slot is still `EMPTY`. Returns the position
    /// the next producer starts at.
    pub(crate) fn recover_producer(&self) -> Result<u64, Corruption> {
        self.producer_start()
    }

    /// Attaches the (one) consumer, which records its position in the 8-aligned word at
    /// `delivered_at` in the region (written by it alone; [`head_offset`](Self::head_offset)
    /// is a good choice). The caller has run [`recover_consumer`](Self::recover_consumer) for
    /// any previous consumer that died.
    pub(crate) fn attach_consumer(&self, delivered_at: usize) -> Result<ConsumerEnd, Corruption> {
        let recorded = self.head_record().load(Ordering::Acquire);
        let (start, _) = self.scan(recorded, None)?;
        // Checked once here: the end records into it on every delivery, unchecked.
        let _ = self.region().u64_at(delivered_at);
        let end = ConsumerEnd {
            ring: self.clone(),
            head: start,
            delivered_at,
        };
        end.record();
        Ok(end)
    }

    /// After a consumer whose delivered word holds `delivered` died (or as it detaches): flags
    /// every message it delivered and did not acknowledge, leaves the rest alone, and stores
    /// where the next consumer starts into the head word (last). Safe to run again if it was
    /// interrupted (a recovering process killed half-way).
    pub(crate) fn recover_consumer(&self, delivered: u64) -> Result<ConsumerRecovery, Corruption> {
        let (start, redelivered) = self.scan(delivered, Some(delivered))?;
        self.head_record().store(start, Ordering::Release);
        Ok(ConsumerRecovery { redelivered, start })
    }

    /// Copies the held message out (the loom models' way of reading, where no slice can be
    /// formed over the modelled bytes).
    #[cfg(loom)]
    pub(crate) fn read(&self, claim: &ReadClaim) -> Vec<u8> {
        let mut v = vec![0; claim.len];
        // SAFETY: the claim proves the slot is READY and not written until released; loom
        // checks it.
        unsafe {
            self.region()
                .read(self.slots.payload_offset(claim.index), &mut v)
        };
        v
    }

    /// The held message's bytes (zero-copy receive). The length was validated when delivered.
    #[cfg(not(loom))]
    #[inline]
    pub(crate) fn payload<'a>(&'a self, claim: &'a ReadClaim) -> &'a [u8] {
        // Invariants: the claim proves the slot is READY for its position and that the producer
        // does not write it until the claim is released (which consumes it, so not while this
        // borrow lives); `claim.len <= max_message` was checked on delivery; `&'a self` keeps
        // the region mapped.
        // SAFETY: so the bytes stay in bounds and unchanged while the slice lives.
        unsafe {
            self.region()
                .slice(self.slots.payload_offset(claim.index), claim.len)
        }
    }

    /// Copies `dst.len()` bytes of the held message, from byte `from` (a multiple of 8), into
    /// `dst` with atomic word loads: never through a slice over the mapping, so a writer that
    /// ignores the protocol can change what is copied but cannot make the copy undefined
    /// behaviour (the copying receives for peers you do not trust).
    ///
    /// # Panics
    /// If `from` is not a multiple of 8 or the range exceeds the message (a caller bug).
    #[cfg(not(loom))]
    pub(crate) fn copy_payload(&self, claim: &ReadClaim, from: usize, dst: &mut [u8]) {
        assert!(from % 8 == 0 && from + dst.len() <= claim.len);
        // Slot strides are multiples of 64 and payloads start 16-aligned, so the last word
        // (read whole) stays inside the slot; the region checks it anyway.
        self.region()
            .load_words(self.slots.payload_offset(claim.index) + from, dst);
    }

    /// The held message's check word, as its producer stored it before the commit (read after
    /// the delivery's Acquire load; untrusted).
    #[inline]
    pub(crate) fn check(&self, claim: &ReadClaim) -> u32 {
        self.slots.check_word(claim.index).load(Ordering::Relaxed)
    }

    /// Acknowledges a held message: frees its slot for the producer of the next lap, and wakes
    /// a producer waiting for room.
    #[inline(always)]
    pub(crate) fn release(&self, claim: ReadClaim) {
        let next = claim.pos.wrapping_add(self.capacity());
        self.state(claim.index)
            .store(empty(next), Ordering::Release);
        self.wake_producer();
    }
}

/// The producer's end: its position, and the slot it is writing, if any. Holding `&mut` of it
/// is the proof of ownership of that slot's payload, which the accessors below rely on.
pub(crate) struct ProducerEnd {
    ring: ExclusiveRing,
    tail: u64,
    /// The slot serving `tail` (kept with it, not recomputed per access).
    index: usize,
    writing: bool,
}

impl ProducerEnd {
    /// The next position this producer writes.
    #[cfg(test)] // tests check positions; the pipeline needs none
    #[inline]
    pub(crate) fn position(&self) -> u64 {
        self.tail
    }

    /// Claims the slot at the tail for writing: `Ok(true)` if it is free (or already claimed
    /// by this end: claiming twice is claiming once), `Ok(false)` if the ring is full.
    #[inline]
    pub(crate) fn try_claim(&mut self) -> Result<bool, Corruption> {
        if self.writing {
            return Ok(true);
        }
        let t = self.tail;
        let ring = &self.ring;
        // Acquire: pairs with the consumer's Release acknowledgement of the previous lap, so
        // its reads of that message happen before this producer overwrites it.
        let raw = ring.state(self.index).load(Ordering::Acquire);
        if raw == empty(t) {
            self.writing = true;
            return Ok(true);
        }
        let w = Word::decode(raw)?;
        if w.ready && w.seq == seq(t.wrapping_sub(ring.capacity())) {
            return Ok(false);
        }
        Err(Corruption::BadState(
            "a slot's sequence is out of step with the producer",
        ))
    }

    #[inline]
    fn claimed_payload(&self, at: usize, len: usize) -> usize {
        assert!(
            self.writing,
            "shmq internal error: payload access without a claimed slot"
        );
        assert!(at
            .checked_add(len)
            .is_some_and(|end| end <= self.ring.max_message));
        self.ring.slots.payload_offset(self.index) + at
    }

    /// Copies `bytes` into the claimed slot's payload at `at`.
    ///
    /// # Panics
    /// Without a claimed slot, or if `at + bytes.len()` exceeds the maximum message size
    /// (caller bugs: callers claim and check lengths first).
    #[inline]
    pub(crate) fn write(&mut self, at: usize, bytes: &[u8]) {
        let off = self.claimed_payload(at, bytes.len());
        // SAFETY: `writing` with `&mut self` proves this end owns the slot's payload: its word
        // is (tail, EMPTY), which no consumer reads past and which only this (one) producer
        // writes; the range is inside the slot (checked by `claimed_payload`).
        unsafe { self.ring.region().write(off, bytes) };
    }

    /// The claimed slot's first `len` payload bytes, to write in place (zero-copy send).
    #[cfg(not(loom))]
    pub(crate) fn payload_mut(&mut self, len: usize) -> &mut [u8] {
        let off = self.claimed_payload(0, len);
        // Invariants: as for `write`; the slice borrows `self` exclusively, so no other access
        // to the slot (nor a commit) happens while it lives, and `self` keeps the region mapped.
        // SAFETY: so nobody else reads or writes these bytes while the slice lives.
        unsafe { self.ring.region().slice_mut(off, len) }
    }

    /// The claimed slot's first `len` payload bytes, to read back what was written.
    #[cfg(not(loom))]
    pub(crate) fn written(&self, len: usize) -> &[u8] {
        let off = self.claimed_payload(0, len);
        // SAFETY: as for `payload_mut`, shared: only this end writes these bytes, and it cannot
        // while it is borrowed shared.
        unsafe { self.ring.region().slice(off, len) }
    }

    /// Stores `check` (the payload's checksum) into the claimed slot's header, for the commit
    /// to publish with the payload (a Relaxed store before its Release store).
    ///
    /// # Panics
    /// Without a claimed slot (a caller bug).
    #[inline]
    pub(crate) fn set_check(&mut self, check: u32) {
        assert!(
            self.writing,
            "shmq internal error: header access without a claimed slot"
        );
        self.ring
            .slots
            .check_word(self.index)
            .store(check, Ordering::Relaxed);
    }

    /// Gives up the claimed slot without publishing anything. The slot stays free for the same
    /// position, which the next claim takes again.
    #[inline]
    pub(crate) fn abandon(&mut self) {
        self.writing = false;
    }

    /// Publishes the claimed slot with `len` bytes of payload (already written), records the new
    /// position and wakes a waiting consumer.
    ///
    /// # Panics
    /// Without a claimed slot, or if `len` exceeds the maximum message size (caller bugs).
    #[inline]
    pub(crate) fn commit(&mut self, len: usize) {
        assert!(self.writing && len <= self.ring.max_message);
        let t = self.tail;
        let ring = &self.ring;
        let index = self.index;
        ring.slots
            .len_word(index)
            .store(len as u32, Ordering::Relaxed);
        // Release: the payload and length above are visible to a consumer that sees READY.
        ring.state(index).store(ready(t, false), Ordering::Release);
        self.tail = t.wrapping_add(1);
        self.index = ring.index(self.tail);
        self.writing = false;
        ring.tail_record().store(self.tail, Ordering::Relaxed);
        ring.wake_consumer();
    }
}

/// The consumer's end: its position and where it records it.
pub(crate) struct ConsumerEnd {
    ring: ExclusiveRing,
    head: u64,
    delivered_at: usize,
}

impl ConsumerEnd {
    #[cfg(test)] // tests check positions; the pipeline needs none
    /// The next position this consumer delivers (everything below it was delivered or
    /// acknowledged).
    #[inline]
    pub(crate) fn position(&self) -> u64 {
        self.head
    }

    /// The ring this end consumes from (to read and release its claims).
    #[cfg(test)] // the pipeline reads and releases through the ring it holds
    #[inline]
    pub(crate) fn ring(&self) -> &ExclusiveRing {
        &self.ring
    }

    /// The word this end records its position in.
    #[inline]
    fn delivered_word(&self) -> &AtomicU64 {
        // SAFETY: `attach_consumer` checked (with `Region::u64_at`, which panics otherwise)
        // that `delivered_at` is an 8-aligned word inside the region, and the region is fixed.
        unsafe { self.ring.region().u64_at_unchecked(self.delivered_at) }
    }

    /// Stores `head` into the delivered word (Relaxed: see the module docs).
    #[inline]
    fn record(&self) {
        self.delivered_word().store(self.head, Ordering::Relaxed);
    }

    /// Delivers the next message, or `None` if nothing is ready.
    #[inline]
    pub(crate) fn try_next(&mut self) -> Result<Option<ReadClaim>, Corruption> {
        let mut passed = 0;
        loop {
            let h = self.head;
            let ring = &self.ring;
            let index = ring.index(h);
            // Acquire: pairs with the producer's Release commit, so the length and payload
            // read after this are the committed ones.
            let raw = ring.state(index).load(Ordering::Acquire);
            let w = Word::decode(raw)?;
            if w.seq == seq(h) {
                if !w.ready {
                    return Ok(None);
                }
                self.head = h.wrapping_add(1);
                self.record();
                return self.deliver(h, index, w.redelivered).map(Some);
            }
            if w.ready && h >= ring.capacity() && w.seq == seq(h - ring.capacity()) {
                return Ok(None); // This consumer still holds the previous lap's message.
            }
            if w.seq == seq(h.wrapping_add(ring.capacity())) && passed < ring.capacity() {
                // Acknowledged out of order by a previous consumer: pass over it.
                passed += 1;
                self.head = h.wrapping_add(1);
                self.record();
                continue;
            }
            return Err(Corruption::BadState(
                "a slot's sequence is out of step with the consumer",
            ));
        }
    }

    /// A claim on position `pos`, just delivered, once its length is checked. A length beyond
    /// `max_message` is corruption: the slot is released (so the ring is not wedged).
    #[inline]
    fn deliver(&self, pos: u64, index: usize, redelivered: bool) -> Result<ReadClaim, Corruption> {
        let len = u64::from(self.ring.slots.len_word(index).load(Ordering::Relaxed));
        let claim = ReadClaim {
            pos,
            index,
            len: len as usize,
            redelivered,
        };
        if len > self.ring.max_message as u64 {
            self.ring.release(claim);
            return Err(Corruption::BadLength {
                len,
                max: self.ring.max_message as u64,
            });
        }
        Ok(claim)
    }

    /// Detaches: whatever this consumer delivered and did not acknowledge (leaked messages) is
    /// flagged to be delivered again, and the next consumer's start is recorded. No claim of
    /// this end may be alive (the caller's borrows ensure it).
    #[cfg(test)] // the pipeline detaches through `recover_consumer` (see `Shared::recover`)
    pub(crate) fn detach(self) -> Result<ConsumerRecovery, Corruption> {
        self.ring.recover_consumer(self.head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::SLOT_HEADER_SIZE;

    pub(crate) fn ring(capacity: u64, max_message: usize) -> ExclusiveRing {
        let stride = (SLOT_HEADER_SIZE + max_message).next_multiple_of(64);
        let slots = RING_CONTROL_SIZE;
        let region = Region::heap(slots + capacity as usize * stride);
        let r = ExclusiveRing::new(region, 0, slots, capacity, stride, max_message);
        r.initialize();
        r
    }

    /// Both ends, the consumer recording into the head word.
    pub(crate) fn ends(r: &ExclusiveRing) -> (ProducerEnd, ConsumerEnd) {
        let p = r.attach_producer().unwrap();
        let c = r.attach_consumer(r.head_offset()).unwrap();
        (p, c)
    }

    pub(crate) fn try_send(p: &mut ProducerEnd, msg: &[u8]) -> bool {
        if !p.try_claim().unwrap() {
            return false;
        }
        p.write(0, msg);
        p.commit(msg.len());
        true
    }

    #[cfg(not(loom))]
    fn recv(c: &mut ConsumerEnd) -> Option<(Vec<u8>, bool)> {
        let claim = c.try_next().unwrap()?;
        let got = (c.ring().payload(&claim).to_vec(), claim.redelivered());
        c.ring().release(claim);
        Some(got)
    }

    #[cfg(not(loom))]
    fn held(c: &mut ConsumerEnd) -> ReadClaim {
        c.try_next().unwrap().expect("a message is ready")
    }

    #[cfg(not(loom))]
    fn bytes(c: &ConsumerEnd, claim: &ReadClaim) -> Vec<u8> {
        c.ring().payload(claim).to_vec()
    }

    #[test]
    fn words_read_the_same_as_the_shared_rings() {
        use crate::ring::mpmc::{SlotState, Word as SharedWord};
        for pos in [0u64, 7, (1 << 48) + 3] {
            assert_eq!(
                empty(pos),
                SharedWord::new(pos, SlotState::Empty, 0).encode()
            );
            assert_eq!(
                ready(pos, false),
                SharedWord::new(pos, SlotState::Ready, 0).encode()
            );
            let mut again = SharedWord::new(pos, SlotState::Ready, 0);
            again.redelivered = true;
            assert_eq!(ready(pos, true), again.encode());
            assert_eq!(
                Word::decode(ready(pos, true)),
                Ok(Word {
                    seq: seq(pos),
                    ready: true,
                    redelivered: true
                })
            );
        }
        for bad in [1, 1 << 12, REDELIVERED, 3 << 12, READY | 1] {
            assert!(Word::decode(bad).is_err(), "{bad:#x}");
        }
    }

    #[cfg(not(loom))]
    #[test]
    fn each_end_has_one_holder_at_a_time() {
        let r = ring(2, 8);
        for end in [End::Producer, End::Consumer] {
            assert_eq!(r.end_holder(end), 0);
            assert_eq!(r.take_end(end, 7), Ok(()));
            assert_eq!(r.take_end(end, 7), Ok(()), "taking it again is harmless");
            assert_eq!(r.take_end(end, 9), Err(7));
            assert!(!r.free_end(end, 9), "a stale token frees nothing");
            assert!(r.free_end(end, 7));
            assert_eq!(r.take_end(end, 9), Ok(()));
            assert_eq!(r.end_holder(end), 9);
        }
        assert_eq!(
            r.take_end(End::Producer, 9),
            Ok(()),
            "the ends are independent"
        );
    }

    #[cfg(not(loom))]
    #[test]
    fn smoke_and_capacity() {
        for cap in [1u64, 2, 3, 8] {
            let r = ring(cap, 16);
            let (mut p, mut c) = ends(&r);
            assert_eq!(recv(&mut c), None);
            for round in 0..5u8 {
                for i in 0..cap as u8 {
                    assert!(try_send(&mut p, &[round, i]));
                }
                assert!(!try_send(&mut p, b"x"), "ring of {cap} must be full");
                assert_eq!(r.len(), cap);
                for i in 0..cap as u8 {
                    assert_eq!(recv(&mut c), Some((vec![round, i], false)));
                }
                assert_eq!(recv(&mut c), None);
                assert_eq!(r.len(), 0);
            }
        }
    }

    #[cfg(not(loom))]
    #[test]
    fn a_message_up_to_48_bytes_shares_the_state_words_line() {
        let r = ring(4, 1024);
        let index = 3;
        let line = r.slots.offset(index) / 64;
        assert_eq!(r.slots.offset(index) % 64, 0);
        assert_eq!(r.slots.payload_offset(index) / 64, line);
        assert_eq!((r.slots.payload_offset(index) + 48 - 1) / 64, line);
        assert_eq!((r.slots.offset(index) + 8) / 64, line, "the length too");
    }

    #[cfg(not(loom))]
    #[test]
    fn out_of_order_acknowledgements_free_their_own_slots() {
        let r = ring(4, 8);
        let (mut p, mut c) = ends(&r);
        for i in 0..4u8 {
            assert!(try_send(&mut p, &[i]));
        }
        let held: Vec<ReadClaim> = (0..4).map(|_| held(&mut c)).collect();
        let mut held = held.into_iter();
        let (a0, a1, a2, a3) = (
            held.next().unwrap(),
            held.next().unwrap(),
            held.next().unwrap(),
            held.next().unwrap(),
        );
        assert_eq!(bytes(&c, &a2), [2]);
        r.release(a1);
        r.release(a3);
        assert!(
            !try_send(&mut p, b"4"),
            "head-of-line: position 4 waits for 0"
        );
        assert!(c.try_next().unwrap().is_none());
        r.release(a0);
        assert!(try_send(&mut p, b"4") && try_send(&mut p, b"5"));
        assert!(!try_send(&mut p, b"6"), "position 6 waits for 2");
        assert_eq!(recv(&mut c), Some((b"4".to_vec(), false)));
        assert_eq!(recv(&mut c), Some((b"5".to_vec(), false)));
        assert_eq!(recv(&mut c), None, "slot of 6 still holds 2");
        r.release(a2);
        assert!(try_send(&mut p, b"6") && try_send(&mut p, b"7"));
        assert_eq!(recv(&mut c), Some((b"6".to_vec(), false)));
        assert_eq!(recv(&mut c), Some((b"7".to_vec(), false)));
    }

    #[cfg(not(loom))]
    #[test]
    fn claiming_twice_is_claiming_once_and_abandoning_leaves_the_slot_invisible() {
        let r = ring(2, 8);
        let (mut p, mut c) = ends(&r);
        assert!(p.try_claim().unwrap());
        p.write(0, b"half");
        assert!(p.try_claim().unwrap());
        assert_eq!(p.position(), 0);
        p.abandon();
        assert_eq!(recv(&mut c), None);
        assert!(try_send(&mut p, b"ok"));
        assert_eq!(recv(&mut c), Some((b"ok".to_vec(), false)));
        assert!(p.try_claim().unwrap());
        p.payload_mut(3).copy_from_slice(b"abc");
        assert_eq!(p.written(3), b"abc");
        p.commit(3);
        assert_eq!(recv(&mut c), Some((b"abc".to_vec(), false)));
    }

    #[cfg(not(loom))]
    #[test]
    fn corrupt_words_are_errors_not_panics() {
        let r = ring(4, 8);
        let (mut p, mut c) = ends(&r);
        assert!(try_send(&mut p, b"a"));
        // Bits no code path writes.
        r.state(0).store(ready(0, false) | 1, Ordering::Relaxed);
        assert!(c.try_next().is_err());
        // A sequence that fits nothing, for the consumer and for the producer.
        r.state(0).store(ready(999, false), Ordering::Relaxed);
        assert!(c.try_next().is_err());
        r.state(1).store(empty(77), Ordering::Relaxed);
        assert!(p.try_claim().is_err());
        r.state(1).store(empty(1), Ordering::Relaxed);
        // A length beyond max_message: an error, and the slot is released, not wedged.
        r.state(0).store(ready(0, false), Ordering::Relaxed);
        r.slots.len_word(0).store(u32::MAX, Ordering::Relaxed);
        assert!(matches!(c.try_next(), Err(Corruption::BadLength { .. })));
        assert_eq!(r.state(0).load(Ordering::Relaxed), empty(4));
        assert!(try_send(&mut p, b"b"));
        assert_eq!(recv(&mut c), Some((b"b".to_vec(), false)));
        // Recovery reads are checked too.
        r.state(2).store(ready(1 << 40, false), Ordering::Relaxed);
        assert!(r.recover_consumer(c.position()).is_err());
        assert!(r.attach_consumer(r.head_offset()).is_err());
    }

    #[cfg(not(loom))]
    #[test]
    fn hostile_records_give_errors_never_panics() {
        for cap in [1u64, 3, 4] {
            for record in [u64::MAX, u64::MAX - 1, 1 << 63, (1 << 48) + 1, 12345] {
                let r = ring(cap, 8);
                {
                    let (mut p, _c) = ends(&r);
                    assert!(try_send(&mut p, b"x"));
                }
                r.tail_record().store(record, Ordering::Relaxed);
                if let Ok(mut p) = r.attach_producer() {
                    let _ = p.try_claim();
                }
                let _ = r.recover_producer();
                r.head_record().store(record, Ordering::Relaxed);
                if let Ok(mut c) = r.attach_consumer(r.head_offset()) {
                    let _ = c.try_next();
                }
                let recovered = r.recover_consumer(record);
                // A record off by a multiple of 2^48 (and of the capacity) can fit the slots:
                // accepted, harmlessly. The others fit no slot.
                if [u64::MAX, u64::MAX - 1, 12345].contains(&record) {
                    assert!(recovered.is_err(), "{record} fits no slot");
                }
                let _ = r.len();
            }
        }
    }

    #[cfg(not(loom))]
    #[test]
    fn passing_over_acknowledged_positions_is_bounded() {
        // Every slot says "acknowledged, next lap" for ever (as a hostile file could): the
        // consumer passes over at most a ring's worth and then reports corruption.
        let r = ring(3, 8);
        let (_p, mut c) = ends(&r);
        for i in 0..3u64 {
            r.state(i as usize).store(empty(i + 3), Ordering::Relaxed);
        }
        assert!(c.try_next().unwrap().is_none());
        // After three passes, slot 0 is expected at 3 and says 3 EMPTY: nothing ready.
        assert_eq!(c.position(), 3);
        for i in 0..3u64 {
            r.state(i as usize).store(empty(i + 9), Ordering::Relaxed);
        }
        assert!(c.try_next().is_err());
    }

    #[cfg(not(loom))]
    #[test]
    fn recovery_flags_exactly_the_delivered_unacknowledged_messages() {
        let r = ring(4, 8);
        let (mut p, mut c) = ends(&r);
        for i in 0..4u8 {
            assert!(try_send(&mut p, &[i]));
        }
        // The consumer delivers 0, 1, 2, acknowledges 1, and dies holding 0 and 2.
        let (a0, a1, a2) = (held(&mut c), held(&mut c), held(&mut c));
        r.release(a1);
        let _never_released = (a0, a2);
        let delivered = r.head_record().load(Ordering::Relaxed);
        assert_eq!(delivered, 3);
        drop(c);
        let got = r.recover_consumer(delivered).unwrap();
        assert_eq!(
            got,
            ConsumerRecovery {
                redelivered: 2,
                start: 0
            }
        );
        assert_eq!(
            r.recover_consumer(delivered).unwrap().redelivered,
            0,
            "a second recovery flags nothing twice"
        );
        assert!(!try_send(&mut p, b"4"), "position 4's slot still holds 0");
        let mut c = r.attach_consumer(r.head_offset()).unwrap();
        assert_eq!(recv(&mut c), Some((vec![0], true)));
        assert!(try_send(&mut p, b"4"));
        assert_eq!(recv(&mut c), Some((vec![2], true)), "1 was acknowledged");
        assert_eq!(
            recv(&mut c),
            Some((vec![3], false)),
            "3 was never delivered"
        );
        assert_eq!(recv(&mut c), Some((b"4".to_vec(), false)));
        assert_eq!(recv(&mut c), None);
        for i in 5..9u8 {
            assert!(try_send(&mut p, &[i]));
        }
        for i in 5..9u8 {
            assert_eq!(recv(&mut c), Some((vec![i], false)));
        }
    }

    #[cfg(not(loom))]
    #[test]
    fn a_flag_survives_a_second_consumer_dying_before_redelivering() {
        let r = ring(2, 8);
        let (mut p, mut c) = ends(&r);
        assert!(try_send(&mut p, b"a") && try_send(&mut p, b"b"));
        let _never_released = held(&mut c);
        let first = c.detach().unwrap();
        assert_eq!(first.redelivered, 1);
        // The second consumer dies having delivered nothing.
        let c2 = r.attach_consumer(r.head_offset()).unwrap();
        let delivered = c2.position();
        drop(c2);
        assert_eq!(r.recover_consumer(delivered).unwrap().redelivered, 0);
        let mut c3 = r.attach_consumer(r.head_offset()).unwrap();
        assert_eq!(recv(&mut c3), Some((b"a".to_vec(), true)));
        assert_eq!(recv(&mut c3), Some((b"b".to_vec(), false)));
    }

    #[cfg(not(loom))]
    #[test]
    fn a_consumer_recording_elsewhere_is_recovered_from_its_own_word() {
        // The delivered word may live in the participant's own entry: here, a word of the
        // region outside the ring.
        let stride = 64;
        let region = Region::heap(RING_CONTROL_SIZE + 3 * stride + 64);
        let r = ExclusiveRing::new(region, 0, RING_CONTROL_SIZE, 3, stride, 8);
        r.initialize();
        let entry = RING_CONTROL_SIZE + 3 * stride;
        let mut p = r.attach_producer().unwrap();
        let mut c = r.attach_consumer(entry).unwrap();
        for i in 0..3u8 {
            assert!(try_send(&mut p, &[i]));
        }
        let (a0, a1) = (held(&mut c), held(&mut c));
        r.release(a0);
        let _never_released = a1;
        drop(c);
        let delivered = r.region().u64_at(entry).load(Ordering::Relaxed);
        assert_eq!(delivered, 2);
        assert_eq!(
            r.recover_consumer(delivered).unwrap(),
            ConsumerRecovery {
                redelivered: 1,
                start: 1
            }
        );
        let mut c = r.attach_consumer(entry).unwrap();
        assert_eq!(recv(&mut c), Some((vec![1], true)));
        assert_eq!(recv(&mut c), Some((vec![2], false)));
    }

    #[cfg(not(loom))]
    #[test]
    fn a_producer_killed_mid_write_leaves_nothing_and_the_next_resumes_there() {
        let r = ring(2, 8);
        let (mut p, mut c) = ends(&r);
        assert!(try_send(&mut p, b"a"));
        assert!(p.try_claim().unwrap());
        p.write(0, b"torn");
        drop(p); // Killed before its commit.
        assert_eq!(r.recover_producer().unwrap(), 1);
        assert_eq!(recv(&mut c), Some((b"a".to_vec(), false)));
        assert_eq!(recv(&mut c), None, "the half-written slot is invisible");
        let mut p = r.attach_producer().unwrap();
        assert_eq!(p.position(), 1);
        assert!(try_send(&mut p, b"b"));
        assert_eq!(recv(&mut c), Some((b"b".to_vec(), false)));
    }

    #[cfg(not(loom))]
    #[test]
    fn a_producer_record_one_behind_is_caught_up() {
        for acknowledged in [false, true] {
            for cap in [1u64, 3] {
                let r = ring(cap, 8);
                let (mut p, mut c) = ends(&r);
                assert!(try_send(&mut p, b"a"));
                // Killed between its commit and its record.
                r.tail_record().store(0, Ordering::Relaxed);
                drop(p);
                if acknowledged {
                    assert_eq!(recv(&mut c), Some((b"a".to_vec(), false)));
                }
                let mut p = r.attach_producer().unwrap();
                assert_eq!(p.position(), 1, "cap {cap}, acknowledged {acknowledged}");
                assert_eq!(r.tail_record().load(Ordering::Relaxed), 1);
                if !acknowledged {
                    assert_eq!(recv(&mut c), Some((b"a".to_vec(), false)));
                }
                assert!(try_send(&mut p, b"b"));
                assert_eq!(recv(&mut c), Some((b"b".to_vec(), false)));
                assert_eq!(recv(&mut c), None);
            }
        }
    }

    #[cfg(not(loom))]
    #[test]
    fn positions_past_the_48_bit_sequence_wrap_keep_working() {
        // A capacity that does not divide 2^48, so the slot index depends on the full position.
        let r = ring(3, 8);
        let start = (1u64 << 48) - 5;
        r.initialize_at(start);
        let (mut p, mut c) = ends(&r);
        assert_eq!((p.position(), c.position()), (start, start));
        let mut next = 0u8;
        let mut expect = 0u8;
        for round in 0..6 {
            while try_send(&mut p, &[next]) {
                next += 1;
            }
            if round == 3 {
                // Die holding one message, across the wrap; recover and go on.
                let _never_released = held(&mut c);
                let delivered = c.position();
                drop(c);
                let got = r.recover_consumer(delivered).unwrap();
                assert_eq!(got.redelivered, 1);
                c = r.attach_consumer(r.head_offset()).unwrap();
                assert_eq!(recv(&mut c), Some((vec![expect], true)));
                expect += 1;
                drop(p);
                p = r.attach_producer().unwrap();
            }
            while let Some((m, again)) = recv(&mut c) {
                assert_eq!((m, again), (vec![expect], false));
                expect += 1;
            }
        }
        assert_eq!(expect, next);
        assert!(c.position() > 1 << 48);
    }

    #[cfg(not(loom))]
    #[test]
    fn threads_each_message_exactly_once_in_order() {
        // Cross-thread, not cross-process: the ordering argument is the same (the processes'
        // tests come with the pipeline's exclusive mode).
        let r = ring(8, 64);
        let (mut p, mut c) = ends(&r);
        let total = 100_000u64;
        std::thread::scope(|s| {
            s.spawn(move || {
                for i in 0..total {
                    let len = 8 + (i % 57) as usize;
                    let mut msg = [0u8; 64];
                    msg[..8].copy_from_slice(&i.to_le_bytes());
                    msg[8..len].fill(i as u8);
                    while !try_send(&mut p, &msg[..len]) {
                        std::thread::yield_now();
                    }
                }
            });
            // Hold up to three messages and acknowledge them newest first.
            let mut holding = Vec::new();
            let mut want = 0u64;
            while want < total {
                match c.try_next().unwrap() {
                    Some(claim) => {
                        let m = c.ring().payload(&claim);
                        let i = u64::from_le_bytes(m[..8].try_into().unwrap());
                        assert_eq!(i, want, "in order, none lost or repeated");
                        assert_eq!(m.len(), 8 + (i % 57) as usize);
                        assert!(m[8..].iter().all(|&b| b == i as u8), "intact");
                        assert!(!claim.redelivered());
                        want += 1;
                        holding.push(claim);
                        if holding.len() == 3 || want % 5 == 0 {
                            while let Some(claim) = holding.pop() {
                                c.ring().release(claim);
                            }
                        }
                    }
                    None => {
                        while let Some(claim) = holding.pop() {
                            c.ring().release(claim);
                        }
                        std::thread::yield_now();
                    }
                }
            }
        });
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::tests::{ends, ring};
    use super::*;
    use crate::sync::{Deadline, WaitStrategy};
    use loom::thread;

    fn send_blocking(p: &mut ProducerEnd, msg: &[u8]) {
        let ring = p.ring.clone();
        ring.not_full()
            .wait_for(WaitStrategy::Park, Deadline::Never, || {
                p.try_claim().map(|free| free.then_some(()))
            })
            .unwrap()
            .unwrap();
        p.write(0, msg);
        p.commit(msg.len());
    }

    /// The next message, still held.
    fn next_blocking(c: &mut ConsumerEnd) -> ReadClaim {
        let ring = c.ring.clone();
        ring.not_empty()
            .wait_for(WaitStrategy::Park, Deadline::Never, || c.try_next())
            .unwrap()
            .unwrap()
    }

    fn recv_blocking(c: &mut ConsumerEnd) -> (Vec<u8>, bool) {
        let claim = next_blocking(c);
        let got = (c.ring.read(&claim), claim.redelivered());
        c.ring.release(claim);
        got
    }

    /// A producer thread sending `msgs` (blocking) into `r`, and the consumer end.
    fn producer_sending(
        r: &ExclusiveRing,
        msgs: &'static [&'static [u8]],
    ) -> (thread::JoinHandle<()>, ConsumerEnd) {
        let (mut p, c) = ends(r);
        let producer = thread::spawn(move || {
            for m in msgs {
                send_blocking(&mut p, m);
            }
        });
        (producer, c)
    }

    /// Recovery of consumer `c` "killed" (dropped without detaching), and the next consumer.
    fn recover_killed(r: &ExclusiveRing, c: ConsumerEnd) -> (ConsumerRecovery, ConsumerEnd) {
        let delivered = c.position();
        drop(c);
        let got = r.recover_consumer(delivered).unwrap();
        (got, r.attach_consumer(r.head_offset()).unwrap())
    }

    /// One producer, one consumer, one slot, both blocking: every message arrives once, whole,
    /// in order, and each side is woken when it must be (a lost wake-up is a loom deadlock).
    #[test]
    fn one_slot_blocking_send_and_receive() {
        loom::model(|| {
            let r = ring(1, 2);
            let (producer, mut c) = producer_sending(&r, &[b"ab", b"cd"]);
            assert_eq!(recv_blocking(&mut c), (b"ab".to_vec(), false));
            assert_eq!(recv_blocking(&mut c), (b"cd".to_vec(), false));
            producer.join().unwrap();
        });
    }

    /// Two slots, acknowledged out of order: the consumer holds two messages and releases the
    /// newer first; the producer's third message waits for the older one's slot only.
    #[test]
    fn two_slots_out_of_order_acknowledgement() {
        loom::model(|| {
            let r = ring(2, 1);
            let (producer, mut c) = producer_sending(&r, &[b"1", b"2", b"3"]);
            let first = next_blocking(&mut c);
            let second = next_blocking(&mut c);
            assert_eq!(c.ring.read(&second), b"2");
            c.ring.release(second);
            assert_eq!(c.ring.read(&first), b"1");
            c.ring.release(first);
            assert_eq!(recv_blocking(&mut c), (b"3".to_vec(), false));
            producer.join().unwrap();
        });
    }

    /// A consumer "killed" holding a message it never acknowledged, after acknowledging a later
    /// one (out of order), while the producer keeps sending into the full ring: recovery and a
    /// new consumer get exactly the held message again, flagged, pass over the acknowledged one,
    /// and get the rest unflagged, once each.
    #[test]
    fn consumer_killed_holding_a_message_then_recovery() {
        loom::model(|| {
            let r = ring(2, 1);
            let (producer, mut c) = producer_sending(&r, &[b"a", b"b", b"c"]);
            let _never_released = next_blocking(&mut c);
            let acknowledged = next_blocking(&mut c);
            assert_eq!(c.ring.read(&acknowledged), b"b");
            c.ring.release(acknowledged);
            let (got, mut c) = recover_killed(&r, c);
            assert_eq!((got.redelivered, got.start), (1, 0));
            assert_eq!(recv_blocking(&mut c), (b"a".to_vec(), true));
            assert_eq!(recv_blocking(&mut c), (b"c".to_vec(), false));
            producer.join().unwrap();
        });
    }

    /// A consumer "killed" holding the newer of two messages (the older acknowledged), while
    /// recovery races the producer writing the very next position into the freed slot: that
    /// message, never delivered, is never flagged; the held one is, once.
    #[test]
    fn recovery_racing_the_producer_at_the_consumers_record() {
        loom::model(|| {
            let r = ring(2, 1);
            let (producer, mut c) = producer_sending(&r, &[b"a", b"b", b"c"]);
            let older = next_blocking(&mut c);
            let _never_released = next_blocking(&mut c);
            c.ring.release(older);
            let (got, mut c) = recover_killed(&r, c);
            assert_eq!((got.redelivered, got.start), (1, 1));
            assert_eq!(recv_blocking(&mut c), (b"b".to_vec(), true));
            assert_eq!(recv_blocking(&mut c), (b"c".to_vec(), false));
            producer.join().unwrap();
        });
    }

    /// A producer "killed" after writing part of a message, while the consumer waits: the
    /// consumer never sees (or races with) the partial bytes; the next producer resumes at the
    /// same position and its message arrives whole.
    #[test]
    fn producer_killed_mid_write_then_a_new_producer() {
        loom::model(|| {
            let r = ring(1, 2);
            let (mut p, mut c) = ends(&r);
            let consumer = thread::spawn(move || recv_blocking(&mut c));
            assert!(p.try_claim().unwrap());
            p.write(0, b"xx");
            drop(p); // Killed before its commit.
            let mut p = r.attach_producer().unwrap();
            send_blocking(&mut p, b"ok");
            assert_eq!(consumer.join().unwrap(), (b"ok".to_vec(), false));
        });
    }

    /// Two attachers find the same stale holder token on the consumer end and race to take it
    /// over, while the live producer end is untouched: exactly one wins (it alone recovers and
    /// attaches), the loser sees the winner's token, and freeing with the stale token after
    /// the takeover frees nothing.
    #[test]
    fn two_attachers_race_to_take_over_a_stale_end() {
        loom::model(|| {
            let r = ring(2, 1);
            const STALE: u64 = 7;
            assert_eq!(r.take_end(End::Producer, 1), Ok(()));
            assert_eq!(r.take_end(End::Consumer, STALE), Ok(()));
            let racers: Vec<_> = [10u64, 11]
                .into_iter()
                .map(|me| {
                    let r = r.clone();
                    thread::spawn(move || (me, r.take_end_from(End::Consumer, STALE, me)))
                })
                .collect();
            let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
            let winners: Vec<u64> = results
                .iter()
                .filter(|(_, won)| *won)
                .map(|&(me, _)| me)
                .collect();
            assert_eq!(winners.len(), 1, "{results:?}");
            assert_eq!(r.end_holder(End::Consumer), winners[0]);
            assert!(!r.free_end(End::Consumer, STALE));
            assert_eq!(r.take_end(End::Consumer, 12), Err(winners[0]));
            assert_eq!(r.end_holder(End::Producer), 1);
        });
    }
}
