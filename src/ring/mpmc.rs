//! The multi-producer multi-consumer slot ring.
//!
//! # Algorithm
//!
//! A bounded array of `capacity` slots and two 64-bit counters, `tail` (the next position a
//! producer claims) and `head` (the next position a consumer claims). Position `p` lives in slot
//! `p % capacity`. Each slot starts with a 64-bit *state word*:
//!
//! ```text
//!  63                          16  15   14..12   11..0
//! +------------------------------+----+--------+-------+
//! | sequence: position (48 bits) | RD | state  | owner |
//! +------------------------------+----+--------+-------+
//! ```
//!
//! * `sequence` is the position the slot currently serves (mod 2^48; positions never repeat
//!   within 2^48 messages, so there is no ABA in practice);
//! * `state` is `EMPTY`, `WRITING`, `READY`, `READING`, `SKIPPED` or `REDELIVER`;
//! * `owner` is the participant (1-based index into the participant table) that claimed it, 0
//!   for nobody, so a recovery pass that proves the owner dead knows what to undo;
//! * `RD` marks a message being delivered again after its first reader died.
//!
//! The life of position `p` in its slot:
//!
//! ```text
//! (p, EMPTY) --producer CAS--> (p, WRITING, w) --commit CAS--> (p, READY, w)
//!     --consumer CAS--> (p, READING, r) --release CAS--> (p + capacity, EMPTY)
//! (p, WRITING, w) --abandon--> (p, SKIPPED, w) --any consumer--> (p + capacity, EMPTY)
//! ```
//!
//! Claiming is done on the slot word first, then the counter is advanced with a CAS that anyone
//! may perform ("helping"): a producer that finds the slot at `tail` already claimed moves `tail`
//! on, and so does a consumer for `head`. So a claimer that stalls (or dies) between the two
//! steps never stops the others, and the claimer's identity is recorded atomically with the claim.
//!
//! A producer at `tail = t` reads the slot: `(t, EMPTY)` means position `t` is free; sequence
//! `t - capacity` means the previous lap's message still occupies it: the ring is **full**. A
//! consumer at `head = h`: `(h, READY)` is a message; `(h, EMPTY)`, `(h, WRITING)` or sequence
//! `h - capacity` mean nothing is ready at `h` yet: the ring is **empty** for now.
//!
//! # Memory ordering
//!
//! The payload and length are written between the WRITING claim and the READY commit; the commit
//! is a Release CAS and consumers load the state word with Acquire, so a consumer that sees READY
//! sees the whole message. Releasing the slot is a Release CAS; producers read the word with
//! Acquire before writing, so a slot is never overwritten while a consumer still reads it.
//!
//! # Untrusted memory
//!
//! Every word read from the region is checked: an unknown state, a sequence that fits none of
//! the cases above while the counter has not moved, or a length above `max_message` is a
//! [`Corruption`], never a panic or an out-of-bounds access (indices are always computed here,
//! modulo `capacity`, never read from the region).

use crate::error::Corruption;
use crate::layout::{CTL_HEAD, CTL_NOT_EMPTY, CTL_NOT_FULL, CTL_REDELIVER_PENDING, CTL_TAIL};
use crate::ring::slots::{help_on, SlotArray};
use crate::shm::Region;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::WaitCell;

const OWNER_MASK: u64 = 0xfff;
const STATE_SHIFT: u32 = 12;
const STATE_MASK: u64 = 0x7 << STATE_SHIFT;
const REDELIVERED: u64 = 1 << 15;
const SEQ_SHIFT: u32 = 16;
const SEQ_MASK: u64 = (1 << 48) - 1;

/// The states a slot can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub(crate) enum SlotState {
    /// Free for the producer of its sequence.
    Empty = 0,
    /// Claimed by a producer that is writing the payload.
    Writing = 1,
    /// Holds a committed message.
    Ready = 2,
    /// Held by a consumer that has not acknowledged it yet.
    Reading = 3,
    /// Abandoned by its producer (or its producer died): consumers pass over it.
    Skipped = 4,
    /// Its consumer died before acknowledging it: to be delivered again.
    Redeliver = 5,
}

/// A decoded state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word {
    pub(crate) seq: u64,
    pub(crate) state: SlotState,
    pub(crate) owner: u16,
    pub(crate) redelivered: bool,
}

impl Word {
    #[inline]
    pub(crate) fn new(seq: u64, state: SlotState, owner: u16) -> Self {
        Word {
            seq: seq & SEQ_MASK,
            state,
            owner,
            redelivered: false,
        }
    }

    #[inline]
    pub(crate) fn encode(self) -> u64 {
        ((self.seq & SEQ_MASK) << SEQ_SHIFT)
            | (if self.redelivered { REDELIVERED } else { 0 })
            | ((self.state as u64) << STATE_SHIFT)
            | (u64::from(self.owner) & OWNER_MASK)
    }

    #[inline]
    pub(crate) fn decode(raw: u64) -> Result<Self, Corruption> {
        let state = match (raw & STATE_MASK) >> STATE_SHIFT {
            0 => SlotState::Empty,
            1 => SlotState::Writing,
            2 => SlotState::Ready,
            3 => SlotState::Reading,
            4 => SlotState::Skipped,
            5 => SlotState::Redeliver,
            _ => return Err(Corruption::BadState("a slot holds an unknown state")),
        };
        Ok(Word {
            seq: raw >> SEQ_SHIFT,
            state,
            owner: (raw & OWNER_MASK) as u16,
            redelivered: raw & REDELIVERED != 0,
        })
    }
}

/// A slot a producer has claimed and may write.
#[derive(Debug)]
///
/// Only this module can make one, and it is neither `Clone` nor `Copy`: holding it proves the
/// holder owns the slot's payload bytes, which is what the safe accessors below rely on.
pub(crate) struct WriteClaim {
    pos: u64,
    index: usize,
    owner: u16,
}

/// A slot a consumer holds: its message is readable until it is released.
#[derive(Debug)]
///
/// Like [`WriteClaim`], proof of ownership: only this module makes one.
pub(crate) struct ReadClaim {
    pos: u64,
    index: usize,
    len: usize,
    redelivered: bool,
    owner: u16,
}

impl ReadClaim {
    /// The held message's length (validated against the maximum when claimed).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the message is being delivered again after its first reader died.
    #[inline]
    pub(crate) fn redelivered(&self) -> bool {
        self.redelivered
    }
}

/// What a claimer does after finding a word at its counter's position that it cannot take.
enum Step {
    /// The position is taken or finished: help the counter past it and reload it.
    Help,
    /// The word lags the counter: reload it and retry; if it has not moved, stop, with
    /// nothing (`None`: full or empty) or with this corruption.
    Recheck(Option<&'static str>),
}

/// What a consumer finds at the head.
enum AtHead {
    /// A message to take (ready, or awaiting redelivery).
    Message,
    /// An abandoned claim: free its slot, then help the head past it.
    Skipped,
    /// Nothing to take here.
    Other(Step),
}

/// The ring over a region: a control block (tail, head, two wait cells) and the slots.
#[derive(Clone)]
pub(crate) struct MpmcRing {
    region: Region,
    ctl: usize,
    slots: SlotArray,
    max_message: usize,
}

impl MpmcRing {
    /// A ring whose control block is at `ctl` and whose `capacity` slots of `stride` bytes start
    /// at `slots`. The caller has validated that all of it lies inside `region`
    /// (checked again here, once).
    pub(crate) fn new(
        region: Region,
        ctl: usize,
        slots: usize,
        capacity: u64,
        stride: usize,
        max_message: usize,
    ) -> Self {
        assert!(ctl + crate::layout::RING_CONTROL_SIZE <= region.len());
        MpmcRing {
            slots: SlotArray::new(region.clone(), slots, capacity, stride, max_message),
            region,
            ctl,
            max_message,
        }
    }

    #[inline]
    fn tail(&self) -> &AtomicU64 {
        self.region.u64_at(self.ctl + CTL_TAIL)
    }

    #[inline]
    fn head(&self) -> &AtomicU64 {
        self.region.u64_at(self.ctl + CTL_HEAD)
    }

    /// Stores `check` (the payload's checksum) into the claimed slot's header, for the commit
    /// to publish with the payload: a Relaxed store before the commit's Release CAS.
    #[inline]
    pub(crate) fn set_check(&self, claim: &WriteClaim, check: u32) {
        self.slots
            .check_word(claim.index)
            .store(check, Ordering::Relaxed);
    }

    /// The held message's check word, as its producer stored it before the commit (read after
    /// the claim's Acquire; untrusted, like every byte of the slot).
    #[inline]
    pub(crate) fn check(&self, claim: &ReadClaim) -> u32 {
        self.slots.check_word(claim.index).load(Ordering::Relaxed)
    }

    /// Copies `bytes` into the claimed slot's payload at `at`.
    ///
    /// # Panics
    /// If `at + bytes.len()` exceeds the ring's maximum message size (a caller bug: callers
    /// check lengths first).
    #[inline]
    pub(crate) fn write(&self, claim: &WriteClaim, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.max_message);
        // SAFETY: `claim` proves this caller owns the slot's payload (it is WRITING, claimed by
        // the holder of the claim, which only this module can create and nobody can copy);
        // `at + len <= max_message` keeps the copy inside the slot (checked just above).
        unsafe {
            self.region
                .write(self.slots.payload_offset(claim.index) + at, bytes)
        };
    }

    /// The claimed slot's first `len` payload bytes, to write in place (zero-copy send).
    #[cfg(not(loom))]
    pub(crate) fn payload_mut<'a>(&'a self, claim: &'a mut WriteClaim, len: usize) -> &'a mut [u8] {
        assert!(len <= self.max_message);
        // Invariants: the claim is the unique proof of ownership of the slot's payload, borrowed
        // exclusively for as long as the slice; `len <= max_message` (checked) keeps it inside
        // the slot; `&'a self` keeps the region mapped.
        // SAFETY: so nobody else reads or writes these bytes while the slice lives.
        unsafe {
            self.region
                .slice_mut(self.slots.payload_offset(claim.index), len)
        }
    }

    /// The first `len` payload bytes of a claimed slot being written, to read them back.
    #[cfg(not(loom))]
    pub(crate) fn written<'a>(&'a self, claim: &'a WriteClaim, len: usize) -> &'a [u8] {
        assert!(len <= self.max_message);
        // SAFETY: as for `payload_mut`, with a shared borrow: the claim's holder is the only
        // one who may write these bytes, and it cannot while it lends the claim out shared.
        unsafe {
            self.region
                .slice(self.slots.payload_offset(claim.index), len)
        }
    }

    /// Copies the held message out (the loom models' way of reading, where no slice can be
    /// formed over the modelled bytes).
    #[cfg(loom)]
    pub(crate) fn read(&self, claim: &ReadClaim) -> Vec<u8> {
        let mut v = vec![0; claim.len];
        // SAFETY: the claim proves ownership of the slot until released; loom checks it.
        unsafe {
            self.region
                .read(self.slots.payload_offset(claim.index), &mut v)
        };
        v
    }

    /// The held message's bytes (zero-copy receive). The length was validated when claimed.
    #[cfg(not(loom))]
    #[inline]
    pub(crate) fn payload<'a>(&'a self, claim: &'a ReadClaim) -> &'a [u8] {
        // Invariants: the claim proves the slot is READING and owned by its holder until
        // released (which consumes the claim, so not while this borrow lives); producers never
        // write a slot that is not EMPTY for them; `claim.len <= max_message` was checked when
        // claimed; `&'a self` keeps the region mapped.
        // SAFETY: so the bytes stay in bounds and unchanged while the slice lives.
        unsafe {
            self.region
                .slice(self.slots.payload_offset(claim.index), claim.len)
        }
    }

    /// Copies the held message's bytes `from..from + dst.len()` into `dst` with atomic word
    /// loads: never through a slice over the mapping, so a process that writes the slot while
    /// it is copied (breaking the protocol) can change what is copied, not make the copy
    /// undefined behaviour. For readers that do not trust the file's other writers.
    ///
    /// # Panics
    /// If `from` is not 8-aligned or the range exceeds the message (caller bugs).
    #[cfg(not(loom))]
    #[inline]
    pub(crate) fn copy_payload(&self, claim: &ReadClaim, from: usize, dst: &mut [u8]) {
        assert!(from % 8 == 0 && from + dst.len() <= claim.len);
        // Slot strides are multiples of 64 and payloads start 16-aligned, so the last word
        // (read whole, `round_up(len, 8)`) stays inside the slot; the region checks it anyway.
        self.region
            .load_words(self.slots.payload_offset(claim.index) + from, dst);
    }

    /// Consumers wait here for messages.
    #[inline]
    pub(crate) fn not_empty(&self) -> WaitCell<'_> {
        WaitCell::of_word(self.region.u32_at(self.ctl + CTL_NOT_EMPTY))
    }

    /// Producers wait here for room.
    #[inline]
    pub(crate) fn not_full(&self) -> WaitCell<'_> {
        WaitCell::of_word(self.region.u32_at(self.ctl + CTL_NOT_FULL))
    }

    #[inline]
    fn seq(&self, pos: u64) -> u64 {
        pos & SEQ_MASK
    }

    /// Claims the slot at the tail for writing, or `None` if the ring is full.
    ///
    /// A free slot for position `t` holds exactly one word (every path that frees a slot writes
    /// it), so the claim is tried at once: one transaction on the slot's cache line instead of
    /// a read and then an upgrade (a failed CAS returns what it read). A producer polling a
    /// full ring should use [`write_claimer`](Self::write_claimer) instead, whose later
    /// attempts read first, so that it does not keep taking the line from the consumer
    /// holding it.
    #[inline]
    pub(crate) fn try_claim_write(&self, owner: u16) -> Result<Option<WriteClaim>, Corruption> {
        self.claim_write(owner, false)
    }

    /// The attempts of a producer waiting for room: a direct claim first, then polls.
    #[inline]
    pub(crate) fn write_claimer(
        &self,
        owner: u16,
    ) -> impl FnMut() -> Result<Option<WriteClaim>, Corruption> + '_ {
        let mut first = true;
        move || {
            let read_first = !first;
            first = false;
            self.claim_write(owner, read_first)
        }
    }

    #[inline]
    fn claim_write(&self, owner: u16, read_first: bool) -> Result<Option<WriteClaim>, Corruption> {
        let mut t = self.tail().load(Ordering::Acquire);
        loop {
            let index = self.slots.index(t);
            let free = Word::new(t, SlotState::Empty, 0).encode();
            let mut seen = if read_first {
                self.slots.state(index).load(Ordering::Acquire)
            } else {
                free
            };
            if seen == free {
                self.slots.prepare_write(index);
                let claimed = Word::new(t, SlotState::Writing, owner).encode();
                match self.slots.state(index).compare_exchange(
                    free,
                    claimed,
                    Ordering::Acquire,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        help_on(self.tail(), t, Ordering::Release);
                        return Ok(Some(WriteClaim {
                            pos: t,
                            index,
                            owner,
                        }));
                    }
                    Err(raw) => seen = raw,
                }
            }
            let step = self.at_tail(t, Word::decode(seen)?)?;
            match self.take_step(self.tail(), t, step)? {
                Some(next) => t = next,
                None => return Ok(None),
            }
        }
    }

    /// Classifies the word `w` a producer found at tail position `t` that is not the free
    /// slot it came to claim.
    #[inline]
    fn at_tail(&self, t: u64, w: Word) -> Result<Step, Corruption> {
        if w.seq == self.seq(t) && w.state == SlotState::Empty {
            // Free, but with owner or flag bits no code path writes.
            Err(Corruption::BadState("a free slot carries an owner"))
        } else if w.seq == self.seq(t) || w.seq == self.seq(t.wrapping_add(self.slots.capacity())) {
            // Position t is claimed already.
            Ok(Step::Help)
        } else {
            Ok(Step::Recheck(self.lap_behind(
                t,
                w,
                "a slot's sequence is out of step with the tail",
            )))
        }
    }

    /// Classifies the word `w` a consumer found at head position `h`.
    #[inline]
    fn at_head(&self, h: u64, w: Word) -> AtHead {
        if w.seq == self.seq(h) {
            match w.state {
                SlotState::Ready | SlotState::Redeliver => AtHead::Message,
                SlotState::Skipped => AtHead::Skipped,
                SlotState::Reading => AtHead::Other(Step::Help),
                // Not yet published: empty, unless the head moved meanwhile.
                SlotState::Empty | SlotState::Writing => AtHead::Other(Step::Recheck(None)),
            }
        } else if w.seq == self.seq(h.wrapping_add(self.slots.capacity())) {
            // Position h was consumed and its slot released already.
            AtHead::Other(Step::Help)
        } else {
            AtHead::Other(Step::Recheck(self.lap_behind(
                h,
                w,
                "a slot's sequence is out of step with the head",
            )))
        }
    }

    /// For a word that lags the counter at `pos`: `None` if it is exactly one lap behind (the
    /// ring is full at the tail, empty at the head), else the corruption `what`.
    #[inline]
    fn lap_behind(&self, pos: u64, w: Word, what: &'static str) -> Option<&'static str> {
        if w.seq == self.seq(pos.wrapping_sub(self.slots.capacity())) {
            None
        } else {
            Some(what)
        }
    }

    /// Takes `step` at position `pos` of `counter` (the head or the tail): the position to try
    /// next, or `None` when the claimer stops empty-handed.
    #[inline]
    fn take_step(
        &self,
        counter: &AtomicU64,
        pos: u64,
        step: Step,
    ) -> Result<Option<u64>, Corruption> {
        match step {
            Step::Help => {
                help_on(counter, pos, Ordering::Release);
                Ok(Some(counter.load(Ordering::Acquire)))
            }
            Step::Recheck(idle) => {
                let now = counter.load(Ordering::Acquire);
                if now != pos {
                    return Ok(Some(now));
                }
                match idle {
                    None => Ok(None),
                    Some(what) => Err(Corruption::BadState(what)),
                }
            }
        }
    }

    /// Publishes a claimed slot holding `len` bytes of payload (already written).
    /// Returns `false` if the claim was taken away by a recovery pass (then nothing is published).
    #[inline]
    pub(crate) fn commit(&self, claim: WriteClaim, len: usize) -> bool {
        debug_assert!(len <= self.max_message);
        self.slots
            .len_word(claim.index)
            .store(len as u32, Ordering::Relaxed);
        let from = Word::new(claim.pos, SlotState::Writing, claim.owner).encode();
        let to = Word::new(claim.pos, SlotState::Ready, claim.owner).encode();
        let committed = self
            .slots
            .state(claim.index)
            .compare_exchange(from, to, Ordering::Release, Ordering::Relaxed)
            .is_ok();
        if committed {
            // Only a message this producer published: a slot whose claim was taken away is
            // not its to hand over.
            self.slots.hand_over(claim.index, len);
        }
        committed
    }

    /// Gives up a claimed slot without publishing anything: consumers pass over it.
    pub(crate) fn abandon(&self, claim: WriteClaim) {
        let from = Word::new(claim.pos, SlotState::Writing, claim.owner).encode();
        let to = Word::new(claim.pos, SlotState::Skipped, claim.owner).encode();
        let _ = self.slots.state(claim.index).compare_exchange(
            from,
            to,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }

    /// Claims the message at the head, or `None` if nothing is ready.
    #[inline]
    pub(crate) fn try_claim_read(&self, owner: u16) -> Result<Option<ReadClaim>, Corruption> {
        if self.pending().load(Ordering::Relaxed) != 0 {
            if let Some(claim) = self.claim_redelivery(owner)? {
                return Ok(Some(claim));
            }
        }
        let mut h = self.head().load(Ordering::Acquire);
        loop {
            let index = self.slots.index(h);
            let raw = self.slots.state(index).load(Ordering::Acquire);
            let w = Word::decode(raw)?;
            let step = match self.at_head(h, w) {
                AtHead::Message => {
                    self.slots.prepare_read(index);
                    let mut taken = Word::new(h, SlotState::Reading, owner);
                    taken.redelivered = w.state == SlotState::Redeliver || w.redelivered;
                    if self
                        .slots
                        .state(index)
                        .compare_exchange(raw, taken.encode(), Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        help_on(self.head(), h, Ordering::Release);
                        if w.state == SlotState::Redeliver {
                            self.took_redelivery();
                        }
                        return self.held(h, index, taken.redelivered, owner).map(Some);
                    }
                    h = self.head().load(Ordering::Acquire);
                    continue;
                }
                AtHead::Skipped => {
                    let freed =
                        Word::new(h.wrapping_add(self.slots.capacity()), SlotState::Empty, 0)
                            .encode();
                    if self
                        .slots
                        .state(index)
                        .compare_exchange(raw, freed, Ordering::Release, Ordering::Relaxed)
                        .is_ok()
                    {
                        self.not_full().notify();
                    }
                    Step::Help
                }
                AtHead::Other(step) => step,
            };
            match self.take_step(self.head(), h, step)? {
                Some(next) => h = next,
                None => return Ok(None),
            }
        }
    }

    /// The count of messages awaiting redelivery: while it is not zero, every receive first
    /// scans the slots for them (test-only observation).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn redelivery_pending(&self) -> u64 {
        self.pending().load(Ordering::Relaxed)
    }

    /// Messages made deliverable again by recovery and not yet taken.
    #[inline]
    fn pending(&self) -> &AtomicU64 {
        self.region.u64_at(self.ctl + CTL_REDELIVER_PENDING)
    }

    /// A claim on the slot this consumer just CASed to READING, once its length is checked.
    /// A length beyond `max_message` is corruption: the slot is released, not wedged.
    #[inline]
    fn held(
        &self,
        pos: u64,
        index: usize,
        redelivered: bool,
        owner: u16,
    ) -> Result<ReadClaim, Corruption> {
        let len = u64::from(self.slots.len_word(index).load(Ordering::Relaxed));
        let claim = ReadClaim {
            pos,
            index,
            len: len as usize,
            redelivered,
            owner,
        };
        if len > self.max_message as u64 {
            self.release(claim);
            self.not_full().notify();
            return Err(Corruption::BadLength {
                len,
                max: self.max_message as u64,
            });
        }
        Ok(claim)
    }

    /// One message awaiting redelivery was taken (or a recovery pass's count was not needed):
    /// count it off, never below zero (a [`recount`](Self::recount_redeliveries) may have set
    /// the count to zero while this message was being taken).
    #[inline]
    fn took_redelivery(&self) {
        let _ = self
            .pending()
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Repairs the count of messages awaiting redelivery, which is only ever too high (a
    /// recovery pass counts a message before making it deliverable, and one that died between
    /// the two steps leaves the count one too high for good, so that every receive would scan
    /// the slots): if no slot awaits redelivery, the count is set to zero.
    ///
    /// Only while the caller holds the recovery lock exclusively (see `peers`): then no live
    /// recovery pass is between its two steps, so a count with no slot behind it is garbage.
    /// A consumer that is taking a redelivered message meanwhile counts it off with a
    /// saturating decrement, so the count never goes below the slots it stands for.
    pub(crate) fn recount_redeliveries(&self) {
        if self.pending().load(Ordering::Relaxed) == 0 {
            return;
        }
        let awaiting = (0..self.slots.capacity() as usize).any(|index| {
            Word::decode(self.slots.state(index).load(Ordering::Acquire))
                .is_ok_and(|w| w.state == SlotState::Redeliver)
        });
        if !awaiting {
            self.pending().store(0, Ordering::Relaxed);
        }
    }

    /// Takes a message that recovery made deliverable again, if any (a scan of the slots:
    /// only done while the pending count says there is one).
    fn claim_redelivery(&self, owner: u16) -> Result<Option<ReadClaim>, Corruption> {
        for index in 0..self.slots.capacity() as usize {
            let raw = self.slots.state(index).load(Ordering::Acquire);
            let Ok(w) = Word::decode(raw) else { continue };
            if w.state != SlotState::Redeliver {
                continue;
            }
            let mut taken = Word::new(w.seq, SlotState::Reading, owner);
            taken.redelivered = true;
            if self
                .slots
                .state(index)
                .compare_exchange(raw, taken.encode(), Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                self.took_redelivery();
                return self.held(w.seq, index, true, owner).map(Some);
            }
        }
        Ok(None)
    }

    /// Undoes what dead participant `owner` held in this ring: a slot it was writing is
    /// skipped (consumers pass over it); a message it held unacknowledged is made deliverable
    /// again if `redeliver` (pipelines, requests), or simply freed (a client's own replies).
    /// Each change is a CAS from the exact word the owner left, so a late commit or ack from
    /// an owner wrongly thought dead either wins (and recovery leaves the slot alone) or fails
    /// cleanly. Returns (skipped, redelivered, freed).
    pub(crate) fn recover(&self, owner: u16, redeliver: bool) -> (u64, u64, u64) {
        let (mut skipped, mut redelivered, mut freed) = (0, 0, 0);
        for index in 0..self.slots.capacity() as usize {
            let raw = self.slots.state(index).load(Ordering::Acquire);
            let Ok(w) = Word::decode(raw) else { continue };
            if w.owner != owner || owner == 0 {
                continue;
            }
            let (to, count) = match w.state {
                SlotState::Writing => (Word::new(w.seq, SlotState::Skipped, owner), &mut skipped),
                SlotState::Reading if redeliver => {
                    let mut again = Word::new(w.seq, SlotState::Redeliver, 0);
                    again.redelivered = true;
                    // Count it pending before it can be taken, so the count is never too low.
                    self.pending().fetch_add(1, Ordering::Relaxed);
                    crate::testhook::park_at("redelivery-counted");
                    (again, &mut redelivered)
                }
                SlotState::Reading => (
                    Word::new(
                        w.seq.wrapping_add(self.slots.capacity()),
                        SlotState::Empty,
                        0,
                    ),
                    &mut freed,
                ),
                _ => continue,
            };
            if self
                .slots
                .state(index)
                .compare_exchange(raw, to.encode(), Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                *count += 1;
            } else if to.state == SlotState::Redeliver {
                self.took_redelivery();
            }
        }
        if skipped + redelivered + freed > 0 {
            self.not_empty().notify();
            self.not_full().notify();
        }
        (skipped, redelivered, freed)
    }

    /// Acknowledges a held message: frees its slot for the producer of the next lap.
    /// Returns `false` if the claim was taken away by a recovery pass.
    #[inline]
    pub(crate) fn release(&self, claim: ReadClaim) -> bool {
        let mut from = Word::new(claim.pos, SlotState::Reading, claim.owner);
        from.redelivered = claim.redelivered;
        let to = Word::new(
            claim.pos.wrapping_add(self.slots.capacity()),
            SlotState::Empty,
            0,
        )
        .encode();
        self.slots
            .state(claim.index)
            .compare_exchange(from.encode(), to, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }

    /// Messages committed or in flight and not yet claimed by a consumer (approximate while
    /// others are active).
    pub(crate) fn len(&self) -> u64 {
        let head = self.head().load(Ordering::Acquire);
        let tail = self.tail().load(Ordering::Acquire);
        tail.saturating_sub(head).min(self.slots.capacity())
    }

    /// Writes the initial state of every slot: slot `i` serves position `i`.
    /// Only for a ring nobody else can see yet (during creation).
    pub(crate) fn initialize(&self) {
        for i in 0..self.slots.capacity() as usize {
            self.slots.state(i).store(
                Word::new(i as u64, SlotState::Empty, 0).encode(),
                Ordering::Relaxed,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ring(capacity: u64, max_message: usize) -> MpmcRing {
        let stride = (crate::layout::SLOT_HEADER_SIZE + max_message).next_multiple_of(8);
        let slots = crate::layout::RING_CONTROL_SIZE;
        let region = Region::heap(slots + capacity as usize * stride);
        let r = MpmcRing::new(region, 0, slots, capacity, stride, max_message);
        r.initialize();
        r
    }

    #[test]
    fn word_round_trips() {
        for state in [
            SlotState::Empty,
            SlotState::Writing,
            SlotState::Ready,
            SlotState::Reading,
            SlotState::Skipped,
            SlotState::Redeliver,
        ] {
            let mut w = Word::new((1 << 48) + 12345, state, 4095);
            w.redelivered = true;
            assert_eq!(Word::decode(w.encode()), Ok(w));
            assert_eq!(w.seq, 12345);
        }
        assert!(Word::decode(6 << STATE_SHIFT).is_err());
        assert!(Word::decode(7 << STATE_SHIFT).is_err());
    }

    #[cfg(not(loom))]
    fn send(r: &MpmcRing, msg: &[u8]) -> bool {
        match r.try_claim_write(1).unwrap() {
            None => false,
            Some(c) => {
                r.write(&c, 0, msg);
                assert!(r.commit(c, msg.len()));
                true
            }
        }
    }

    #[cfg(not(loom))]
    fn recv(r: &MpmcRing) -> Option<Vec<u8>> {
        let c = r.try_claim_read(2).unwrap()?;
        let v = r.payload(&c).to_vec();
        assert!(r.release(c));
        Some(v)
    }

    #[cfg(not(loom))]
    #[test]
    fn smoke_and_capacity() {
        for cap in [1u64, 2, 3, 8] {
            let r = ring(cap, 16);
            assert_eq!(recv(&r), None);
            for round in 0..5u8 {
                for i in 0..cap as u8 {
                    assert!(send(&r, &[round, i]));
                }
                assert!(!send(&r, b"x"), "ring of {cap} must be full");
                assert_eq!(r.len(), cap);
                for i in 0..cap as u8 {
                    assert_eq!(recv(&r), Some(vec![round, i]));
                }
                assert_eq!(recv(&r), None);
            }
        }
    }

    #[cfg(not(loom))]
    #[test]
    fn abandoned_claim_is_skipped() {
        let r = ring(2, 8);
        let c = r.try_claim_write(1).unwrap().unwrap();
        assert!(send(&r, b"b"));
        assert_eq!(recv(&r), None, "FIFO: the head waits on the claimed slot");
        r.abandon(c);
        assert_eq!(recv(&r), Some(b"b".to_vec()));
        assert!(send(&r, b"c") && send(&r, b"d"));
        assert_eq!(recv(&r), Some(b"c".to_vec()));
        assert_eq!(recv(&r), Some(b"d".to_vec()));
    }

    #[cfg(not(loom))]
    #[test]
    fn corrupt_words_are_errors_not_panics() {
        let r = ring(4, 8);
        assert!(send(&r, b"a"));
        // An unknown state.
        r.slots.state(0).store(7 << STATE_SHIFT, Ordering::Relaxed);
        assert!(r.try_claim_read(2).is_err());
        // A sequence that fits nothing.
        r.slots.state(0).store(
            Word::new(999, SlotState::Ready, 1).encode(),
            Ordering::Relaxed,
        );
        assert!(r.try_claim_read(2).is_err());
        // A length beyond max_message: an error, and the slot is released, not wedged.
        r.slots.state(0).store(
            Word::new(0, SlotState::Ready, 1).encode(),
            Ordering::Relaxed,
        );
        r.slots.len_word(0).store(u32::MAX, Ordering::Relaxed);
        assert!(matches!(
            r.try_claim_read(2),
            Err(Corruption::BadLength { .. })
        ));
        // Hostile head and tail values only ever index modulo capacity.
        r.head().store(u64::MAX - 3, Ordering::Relaxed);
        r.tail().store(u64::MAX, Ordering::Relaxed);
        let _ = r.try_claim_read(2);
        let _ = r.try_claim_write(1);
    }

    #[cfg(not(loom))]
    #[test]
    fn threads_each_message_exactly_once() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let r = ring(8, 16);
        let done = Arc::new(AtomicBool::new(false));
        let per = 20_000u64;
        let seen: Vec<u64> = std::thread::scope(|s| {
            for p in 0..2u64 {
                let r = r.clone();
                s.spawn(move || {
                    for i in 0..per {
                        let v = (p << 32 | i).to_le_bytes();
                        while !send(&r, &v) {
                            std::hint::spin_loop();
                        }
                    }
                });
            }
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let r = r.clone();
                    let done = done.clone();
                    s.spawn(move || {
                        let mut got = Vec::new();
                        let mut last = [None, None];
                        loop {
                            match recv(&r) {
                                Some(v) => {
                                    let x = u64::from_le_bytes(v.try_into().unwrap());
                                    let (p, i) = ((x >> 32) as usize, x & 0xffff_ffff);
                                    assert!(last[p].is_none_or(|l| l < i), "per-producer order");
                                    last[p] = Some(i);
                                    got.push(x);
                                }
                                None if done.load(Ordering::Acquire) && r.len() == 0 => break,
                                None => std::hint::spin_loop(),
                            }
                        }
                        got
                    })
                })
                .collect();
            while r.tail().load(Ordering::Acquire) < 2 * per {
                std::thread::yield_now();
            }
            done.store(true, Ordering::Release);
            consumers
                .into_iter()
                .flat_map(|c| c.join().unwrap())
                .collect()
        });
        let mut seen = seen;
        seen.sort_unstable();
        let want: Vec<u64> = (0..2u64)
            .flat_map(|p| (0..per).map(move |i| p << 32 | i))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(seen, want);
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::tests::ring;
    use super::*;
    use crate::sync::{Deadline, WaitStrategy};
    use loom::thread;

    fn send_blocking(r: &MpmcRing, owner: u16, msg: &[u8]) {
        let claim = r
            .not_full()
            .wait_for(WaitStrategy::Park, Deadline::Never, || {
                r.try_claim_write(owner)
            })
            .unwrap()
            .unwrap();
        r.write(&claim, 0, msg);
        assert!(r.commit(claim, msg.len()));
        r.not_empty().notify();
    }

    fn recv_blocking(r: &MpmcRing, owner: u16) -> Vec<u8> {
        let claim = r
            .not_empty()
            .wait_for(WaitStrategy::Park, Deadline::Never, || {
                r.try_claim_read(owner)
            })
            .unwrap()
            .unwrap();
        let v = r.read(&claim);
        assert!(r.release(claim));
        r.not_full().notify();
        v
    }

    /// Two producers, one consumer, a ring of one slot: every message arrives once, intact, and
    /// the blocked producer and consumer are always woken (a lost wake-up is a loom deadlock).
    #[test]
    fn two_producers_one_consumer() {
        loom::model(|| {
            let r = ring(1, 2);
            let a = {
                let r = r.clone();
                thread::spawn(move || send_blocking(&r, 1, b"ab"))
            };
            let b = {
                let r = r.clone();
                thread::spawn(move || send_blocking(&r, 2, b"cd"))
            };
            let mut got = vec![recv_blocking(&r, 3), recv_blocking(&r, 3)];
            a.join().unwrap();
            b.join().unwrap();
            got.sort();
            assert_eq!(got, vec![b"ab".to_vec(), b"cd".to_vec()]);
        });
    }

    /// One producer, two consumers: each message to exactly one consumer, intact.
    #[test]
    fn one_producer_two_consumers() {
        loom::model(|| {
            let r = ring(2, 2);
            let c1 = {
                let r = r.clone();
                thread::spawn(move || recv_blocking(&r, 2))
            };
            let c2 = {
                let r = r.clone();
                thread::spawn(move || recv_blocking(&r, 3))
            };
            send_blocking(&r, 1, b"xy");
            send_blocking(&r, 1, b"zw");
            let mut got = vec![c1.join().unwrap(), c2.join().unwrap()];
            got.sort();
            assert_eq!(got, vec![b"xy".to_vec(), b"zw".to_vec()]);
        });
    }

    /// The wait/wake protocol alone: a consumer parks on an empty ring, a producer commits and
    /// notifies; a producer parks on a full ring, a consumer releases and notifies.
    #[test]
    fn wait_wake_never_loses_a_wakeup() {
        loom::model(|| {
            let r = ring(1, 1);
            let p = {
                let r = r.clone();
                thread::spawn(move || {
                    send_blocking(&r, 1, b"1");
                    send_blocking(&r, 1, b"2");
                })
            };
            assert_eq!(recv_blocking(&r, 2), b"1");
            assert_eq!(recv_blocking(&r, 2), b"2");
            p.join().unwrap();
        });
    }

    /// The request-reply reply path: two servers write replies (each tagged with a client
    /// generation byte and a correlation id, as `reqrep`'s envelope does) into one client's
    /// reply ring at once, while the client waits for the second: each reply arrives once,
    /// intact, and the one not waited for is still there afterwards.
    #[test]
    fn reply_path_two_servers_one_client() {
        loom::model(|| {
            let r = ring(2, 3);
            // Server 1 answers request 0, server 2 request 1.
            let s1 = {
                let r = r.clone();
                thread::spawn(move || send_blocking(&r, 1, &[7, 0, 10]))
            };
            let s2 = {
                let r = r.clone();
                thread::spawn(move || send_blocking(&r, 2, &[7, 1, 11]))
            };
            let (mut wanted, mut kept) = (None, None);
            while wanted.is_none() || kept.is_none() {
                let reply = recv_blocking(&r, 3);
                assert_eq!(reply[0], 7, "torn envelope");
                match reply[1] {
                    1 => wanted = Some(reply),
                    0 => kept = Some(reply),
                    _ => unreachable!(),
                }
            }
            assert_eq!(wanted.unwrap(), [7, 1, 11]);
            assert_eq!(kept.unwrap(), [7, 0, 10]);
            s1.join().unwrap();
            s2.join().unwrap();
        });
    }

    /// Recovery racing a stalled (not dead) producer, as when an owner is wrongly thought dead:
    /// the owner's late commit and recovery's skip are both CASes from the same word, so
    /// exactly one wins, and the message is either delivered whole or skipped, never half.
    #[test]
    fn recovery_racing_a_stalled_producer() {
        loom::model(|| {
            let r = ring(1, 2);
            let claim = r.try_claim_write(1).unwrap().unwrap();
            let recovery = {
                let r = r.clone();
                thread::spawn(move || r.recover(1, true))
            };
            r.write(&claim, 0, b"ok");
            let committed = r.commit(claim, 2);
            let (skipped, _, _) = recovery.join().unwrap();
            assert_ne!(
                committed,
                skipped == 1,
                "exactly one of commit and skip wins"
            );
            match r.try_claim_read(2).unwrap() {
                Some(c) => {
                    assert!(committed);
                    assert_eq!(r.read(&c), b"ok");
                }
                None => assert!(!committed),
            }
        });
    }

    /// Recovery racing a stalled consumer's acknowledgement: either the ack is honoured (the
    /// message is gone for good) or it is refused and the message is delivered again, whole,
    /// flagged redelivered; never both, never neither.
    #[test]
    fn recovery_racing_a_stalled_consumer() {
        loom::model(|| {
            let r = ring(1, 2);
            let w = r.try_claim_write(1).unwrap().unwrap();
            r.write(&w, 0, b"ok");
            assert!(r.commit(w, 2));
            let held = r.try_claim_read(2).unwrap().unwrap();
            let recovery = {
                let r = r.clone();
                thread::spawn(move || r.recover(2, true))
            };
            let acked = r.release(held);
            let (_, redelivered, _) = recovery.join().unwrap();
            assert_ne!(
                acked,
                redelivered == 1,
                "exactly one of ack and redelivery wins"
            );
            match r.try_claim_read(3).unwrap() {
                Some(c) => {
                    assert!(!acked && c.redelivered());
                    assert_eq!(r.read(&c), b"ok");
                }
                None => assert!(acked),
            }
        });
    }
}
