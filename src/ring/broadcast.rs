//! The broadcast ring: many publishers, many subscribers, every subscriber sees every message.
//!
//! # Algorithm
//!
//! The ring has `capacity` slots and a `tail` counter (the next position to publish). A slot's
//! state word has the same format as in [`mpmc`](super::mpmc): sequence (the position it holds),
//! state and owner. Slot `i` starts out holding position `i - capacity` (mod 2^48), i.e. "nothing
//! yet". Subscribers do not consume: each has a *cursor* (the next position it reads) in the
//! subscriber table, and reading never changes the slot.
//!
//! Publishing position `t`: the slot holds `t - capacity` (a finished message or nothing); the
//! publisher CASes it to `(t, WRITING, me)`, helps `tail` to `t + 1`, writes topic and body as
//! 64-bit relaxed atomic stores after a Release fence, and CASes the word to `(t, READY, me)`
//! with Release. A slot still `WRITING` for `t - capacity` (a publisher one lap behind, still
//! copying) is waited for.
//!
//! Reading position `c` is a seqlock read: load the word (Acquire); if it is `(c, READY)`, copy
//! topic and body with relaxed atomic loads into the subscriber's own buffer, then an Acquire
//! fence and a second load of the word: if it changed, the copy may be torn and is discarded.
//! A word holding `c - capacity` means "not published yet"; a later lap means the message was
//! overwritten.
//!
//! # Overflow
//!
//! * **Drop oldest**: publishers never wait for subscribers. A subscriber that finds its
//!   position overwritten gets [`RecvError::Lagged`](crate::RecvError::Lagged)`(n)` with the
//!   exact number of positions it skips, and continues at `tail - capacity`, the oldest
//!   position retained. It never returns a torn message.
//! * **Block**: before claiming position `t`, a publisher checks `t - capacity < cursor` for
//!   every attached subscriber (the *gate*; its minimum is cached per publisher and recomputed
//!   when exhausted or when a subscriber attaches, which bumps the table's epoch). So no attached
//!   subscriber ever misses a message published after it attached.
//!
//! # Attaching
//!
//! A subscriber claims a free table entry, stores its start cursor `c` (the tail, or the oldest
//! retained position for history), marks the entry active, bumps the epoch, then re-reads the
//! tail `t2` and raises its cursor to `t2 - capacity + 1` if it was lower. Every claim made
//! before the entry became active is for a position `<= t2`, so it can only destroy positions
//! `<= t2 - capacity`: the subscriber never reads a slot a publisher that did not see it may
//! still overwrite. (All loads and stores in this handshake are SeqCst.)

use crate::error::Corruption;
use crate::layout::{
    CTL_HEAD, CTL_NOT_EMPTY, CTL_NOT_FULL, CTL_TAIL, SLOT_HEADER_SIZE, TABLE_ENTRY_SIZE,
};
use crate::ring::mpmc::{SlotState, Word};
use crate::ring::slots::{help_on, SlotArray};
use crate::shm::Region;
use crate::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use crate::sync::WaitCell;

const SEQ_MASK: u64 = (1 << 48) - 1;

/// Subscriber entry state: bits 0..12 the owner's participant id, bit 12 active, bit 13 claimed
/// (being set up), bits 32.. a generation.
pub(crate) const SUB_OWNER_MASK: u64 = 0xfff;
pub(crate) const SUB_ACTIVE: u64 = 1 << 12;
pub(crate) const SUB_CLAIMED: u64 = 1 << 13;
const SUB_GEN_SHIFT: u32 = 32;

/// A claimed slot a publisher is writing.
#[derive(Debug)]
pub(crate) struct PublishClaim {
    pos: u64,
    index: usize,
    owner: u16,
}

/// A publisher's cached gate: the epoch it was computed at, and the minimum cursor.
#[derive(Debug, Default)]
pub(crate) struct GateCache {
    epoch: std::sync::atomic::AtomicU64,
    min: std::sync::atomic::AtomicU64,
}

/// What a subscriber's poll found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Poll {
    /// A message was copied into the buffer: its topic and body lengths.
    Message { topic_len: usize, len: usize },
    /// Nothing new yet.
    Empty,
    /// The subscriber's position was overwritten; it skipped this many positions.
    Lagged(u64),
}

/// The broadcast ring over a region.
#[derive(Clone)]
pub(crate) struct BroadcastRing {
    region: Region,
    ctl: usize,
    slots: SlotArray,
    topic_area: usize,
    max_topic: usize,
    max_message: usize,
    table: usize,
    max_subscribers: u32,
    block: bool,
}

impl BroadcastRing {
    /// A ring with its control block at `ctl`, `capacity` slots of `stride` bytes at `slots`, and
    /// a subscriber table of `max_subscribers` entries at `table`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        region: Region,
        ctl: usize,
        slots: usize,
        capacity: u64,
        stride: usize,
        max_topic: usize,
        max_message: usize,
        table: usize,
        max_subscribers: u32,
        block: bool,
    ) -> Self {
        let topic_area = max_topic.next_multiple_of(8);
        assert!(
            capacity >= 1
                && stride >= SLOT_HEADER_SIZE + topic_area + max_message.next_multiple_of(8)
        );
        assert!(ctl + crate::layout::RING_CONTROL_SIZE <= region.len());
        assert!(table + max_subscribers as usize * TABLE_ENTRY_SIZE <= region.len());
        BroadcastRing {
            slots: SlotArray::new(region.clone(), slots, capacity, stride, max_message),
            region,
            ctl,
            topic_area,
            max_topic,
            max_message,
            table,
            max_subscribers,
            block,
        }
    }

    /// Writes the initial state of every slot: slot `i` holds "nothing" for position `i`.
    pub(crate) fn initialize(&self) {
        for i in 0..self.slots.capacity() as usize {
            let w = Word::new(
                (i as u64).wrapping_sub(self.slots.capacity()),
                SlotState::Empty,
                0,
            );
            self.slots.state(i).store(w.encode(), Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn max_topic(&self) -> usize {
        self.max_topic
    }

    #[inline]
    pub(crate) fn max_message(&self) -> usize {
        self.max_message
    }

    /// Bytes a subscriber's buffer needs: topic area plus the body rounded up to 8.
    pub(crate) fn buffer_len(&self) -> usize {
        self.topic_area + self.max_message.next_multiple_of(8)
    }

    /// Where the body starts in a subscriber's buffer.
    #[inline]
    pub(crate) fn body_offset(&self) -> usize {
        self.topic_area
    }

    pub(crate) fn is_blocking(&self) -> bool {
        self.block
    }

    #[inline]
    fn tail(&self) -> &AtomicU64 {
        self.region.u64_at(self.ctl + CTL_TAIL)
    }

    /// Bumped whenever a subscriber attaches: publishers' cached gates are then stale.
    #[inline]
    fn epoch(&self) -> &AtomicU64 {
        self.region.u64_at(self.ctl + CTL_HEAD)
    }

    /// Slot `index`'s topic length: a broadcast slot keeps it in the header's check word
    /// (bytes 12..16), the topic itself at the start of the payload.
    #[inline]
    fn topic_len_word(&self, index: usize) -> &AtomicU32 {
        self.slots.check_word(index)
    }

    #[inline]
    fn entry(&self, sub: u32) -> usize {
        self.table + sub as usize * TABLE_ENTRY_SIZE
    }

    fn sub_state(&self, sub: u32) -> &AtomicU64 {
        self.region.u64_at(self.entry(sub))
    }

    #[inline]
    fn cursor(&self, sub: u32) -> &AtomicU64 {
        self.region.u64_at(self.entry(sub) + 8)
    }

    /// Subscribers wait here for messages.
    #[inline]
    pub(crate) fn published(&self) -> WaitCell<'_> {
        WaitCell::of_word(self.region.u32_at(self.ctl + CTL_NOT_EMPTY))
    }

    /// Publishers (in Block mode) wait here for subscribers to move on.
    #[inline]
    pub(crate) fn consumed(&self) -> WaitCell<'_> {
        WaitCell::of_word(self.region.u32_at(self.ctl + CTL_NOT_FULL))
    }

    #[inline]
    fn seq(&self, pos: u64) -> u64 {
        pos & SEQ_MASK
    }

    /// The smallest cursor of the active subscribers (`u64::MAX` if there are none).
    fn min_cursor(&self) -> u64 {
        (0..self.max_subscribers)
            .filter(|&s| self.sub_state(s).load(Ordering::SeqCst) & SUB_ACTIVE != 0)
            .map(|s| self.cursor(s).load(Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Whether publishing position `t` (which overwrites `t - capacity`) leaves every attached
    /// subscriber's unread messages alone.
    #[inline]
    fn gate_allows(&self, t: u64, cache: &GateCache) -> bool {
        if !self.block || t < self.slots.capacity() {
            return true;
        }
        let victim = t - self.slots.capacity();
        let epoch = self.epoch().load(Ordering::SeqCst);
        if cache.epoch.load(Ordering::Relaxed) == epoch
            && victim < cache.min.load(Ordering::Relaxed)
        {
            return true;
        }
        let min = self.min_cursor();
        cache.min.store(min, Ordering::Relaxed);
        cache.epoch.store(epoch, Ordering::Relaxed);
        victim < min
    }

    /// Claims the next position, or `None` if it must wait (Block mode gate, or a publisher
    /// one lap behind still writing the slot).
    #[inline]
    pub(crate) fn try_claim(
        &self,
        owner: u16,
        cache: &GateCache,
    ) -> Result<Option<PublishClaim>, Corruption> {
        let mut t = self.tail().load(Ordering::SeqCst);
        loop {
            let index = self.slots.index(t);
            let claimed = Word::new(t, SlotState::Writing, owner).encode();
            // In steady state the slot holds the previous lap's committed message, whose word
            // is exactly this (commits clear the owner): try the claim at once, one transaction
            // on the line the subscribers read, instead of a read and then an upgrade.
            let previous =
                Word::new(t.wrapping_sub(self.slots.capacity()), SlotState::Ready, 0).encode();
            let raw = if self.gate_allows(t, cache) {
                match self.slots.state(index).compare_exchange(
                    previous,
                    claimed,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Ok(Some(self.claimed(t, index, owner))),
                    Err(raw) => raw,
                }
            } else {
                self.slots.state(index).load(Ordering::Acquire)
            };
            fence(Ordering::Acquire);
            let w = Word::decode(raw)?;
            if w.seq == self.seq(t) {
                // Claimed already: help the tail on.
                help_on(self.tail(), t, Ordering::SeqCst);
            } else if w.seq == self.seq(t.wrapping_sub(self.slots.capacity())) {
                if w.state == SlotState::Writing || !self.gate_allows(t, cache) {
                    return Ok(None);
                }
                if self
                    .slots
                    .state(index)
                    .compare_exchange(raw, claimed, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(Some(self.claimed(t, index, owner)));
                }
            } else {
                let now = self.tail().load(Ordering::SeqCst);
                if now == t {
                    return Err(Corruption::BadState(
                        "a slot's sequence is out of step with the tail",
                    ));
                }
                t = now;
                continue;
            }
            t = self.tail().load(Ordering::SeqCst);
        }
    }

    /// After a successful claim of position `t`: order the WRITING mark before the payload
    /// stores (seqlock writer), move the tail on.
    #[inline]
    fn claimed(&self, t: u64, index: usize, owner: u16) -> PublishClaim {
        fence(Ordering::Release);
        help_on(self.tail(), t, Ordering::SeqCst);
        PublishClaim {
            pos: t,
            index,
            owner,
        }
    }

    /// Writes topic and body into a claimed slot and publishes it. Returns `false` if the claim
    /// was taken away by a recovery pass (then nothing is published).
    #[inline]
    pub(crate) fn write_and_commit(&self, claim: PublishClaim, topic: &[u8], body: &[u8]) -> bool {
        debug_assert!(topic.len() <= self.max_topic && body.len() <= self.max_message);
        let base = self.slots.payload_offset(claim.index);
        self.region.store_words(base, topic);
        self.region.store_words(base + self.topic_area, body);
        self.topic_len_word(claim.index)
            .store(topic.len() as u32, Ordering::Relaxed);
        self.slots
            .len_word(claim.index)
            .store(body.len() as u32, Ordering::Relaxed);
        let from = Word::new(claim.pos, SlotState::Writing, claim.owner).encode();
        // The owner is cleared: a committed message belongs to nobody.
        let to = Word::new(claim.pos, SlotState::Ready, 0).encode();
        self.slots
            .state(claim.index)
            .compare_exchange(from, to, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }

    /// Reads position `*cursor` into `buf` (at least [`buffer_len`](Self::buffer_len) bytes),
    /// advancing `*cursor` past it (or past what was lost).
    #[inline]
    pub(crate) fn poll(&self, cursor: &mut u64, buf: &mut [u8]) -> Result<Poll, Corruption> {
        loop {
            let c = *cursor;
            let index = self.slots.index(c);
            let raw = self.slots.state(index).load(Ordering::Acquire);
            let w = Word::decode(raw)?;
            let ahead = w.seq.wrapping_sub(self.seq(c)) & SEQ_MASK;
            if ahead == 0 {
                match w.state {
                    SlotState::Ready => {
                        let topic_len = self.topic_len_word(index).load(Ordering::Relaxed) as usize;
                        let len = self.slots.len_word(index).load(Ordering::Relaxed) as usize;
                        let sane = topic_len <= self.max_topic && len <= self.max_message;
                        if sane {
                            let base = self.slots.payload_offset(index);
                            self.region.load_words(base, &mut buf[..topic_len]);
                            self.region.load_words(
                                base + self.topic_area,
                                &mut buf[self.topic_area..self.topic_area + len],
                            );
                        }
                        fence(Ordering::Acquire);
                        if self.slots.state(index).load(Ordering::Relaxed) != raw {
                            return self.lagged(cursor);
                        }
                        if !sane {
                            *cursor = c.wrapping_add(1);
                            return Err(Corruption::BadLength {
                                len: len.max(topic_len) as u64,
                                max: self.max_message.max(self.max_topic) as u64,
                            });
                        }
                        *cursor = c.wrapping_add(1);
                        return Ok(Poll::Message { topic_len, len });
                    }
                    SlotState::Writing | SlotState::Empty => return Ok(Poll::Empty),
                    SlotState::Skipped => *cursor = c.wrapping_add(1),
                    SlotState::Reading | SlotState::Redeliver => {
                        return Err(Corruption::BadState(
                            "a broadcast slot holds a queue-only state",
                        ))
                    }
                }
            } else if w.seq == self.seq(c.wrapping_sub(self.slots.capacity())) {
                return Ok(Poll::Empty);
            } else if ahead % self.slots.capacity() == 0 && ahead < (1 << 47) {
                return self.lagged(cursor);
            } else {
                return Err(Corruption::BadState(
                    "a slot's sequence is out of step with a subscriber",
                ));
            }
        }
    }

    /// Moves a subscriber whose position was overwritten to the oldest retained position
    /// (`tail - capacity`), and says how many it skipped. If that one is overwritten too by the
    /// time it is read, the next poll reports a further lag: the sum stays exact.
    ///
    /// Positions count messages from 0 and never wrap in practice (2^64 messages); a cursor at
    /// the very end of the position space comes from a forged tail, and is `Corruption`.
    fn lagged(&self, cursor: &mut u64) -> Result<Poll, Corruption> {
        let t = self.tail().load(Ordering::SeqCst);
        let next = cursor.checked_add(1).ok_or(Corruption::BadState(
            "a subscriber's position is at the end of the position space (a forged tail)",
        ))?;
        let oldest = t.saturating_sub(self.slots.capacity()).max(next);
        let skipped = oldest - *cursor;
        *cursor = oldest;
        Ok(Poll::Lagged(skipped))
    }

    /// Records a subscriber's cursor (so Block-mode publishers can move on) and wakes
    /// publishers waiting for it.
    ///
    /// A Release store, not SeqCst (which is a locked exchange on x86, once per message): it
    /// orders this subscriber's copies of the positions below `cursor` before a publisher's
    /// overwrite of them, which loads the cursor (SeqCst, so at least Acquire) before its
    /// claim. No store-load pairing rests on it: the attach handshake stores its cursors
    /// itself, SeqCst, and the wake-up of a publisher waiting at the gate is the wait cell's
    /// (`notify`'s barrier, paired with the waiter's re-check after registering).
    #[inline]
    pub(crate) fn store_cursor(&self, sub: u32, cursor: u64) {
        self.cursor(sub).store(cursor, Ordering::Release);
        if self.block {
            self.consumed().notify();
        }
    }

    /// Attaches a subscriber for participant `owner`, starting at the tail (or at the oldest
    /// retained message if `history`). Returns its table index and start cursor, or `None` if
    /// the table is full.
    pub(crate) fn attach(&self, owner: u16, history: bool) -> Option<(u32, u64)> {
        for sub in 0..self.max_subscribers {
            let state = self.sub_state(sub);
            let old = state.load(Ordering::SeqCst);
            if old & (SUB_ACTIVE | SUB_CLAIMED) != 0 {
                continue;
            }
            let gen = (old >> SUB_GEN_SHIFT).wrapping_add(1);
            let claimed = gen << SUB_GEN_SHIFT | SUB_CLAIMED | (u64::from(owner) & SUB_OWNER_MASK);
            if state
                .compare_exchange(old, claimed, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let t1 = self.tail().load(Ordering::SeqCst);
            let start = if history {
                t1.saturating_sub(self.slots.capacity() - 1)
            } else {
                t1
            };
            self.cursor(sub).store(start, Ordering::SeqCst);
            state.store(
                gen << SUB_GEN_SHIFT | SUB_ACTIVE | (u64::from(owner) & SUB_OWNER_MASK),
                Ordering::SeqCst,
            );
            self.epoch().fetch_add(1, Ordering::SeqCst);
            let t2 = self.tail().load(Ordering::SeqCst);
            let safe = t2.saturating_sub(self.slots.capacity() - 1);
            let start = start.max(safe);
            self.cursor(sub).store(start, Ordering::SeqCst);
            return Some((sub, start));
        }
        None
    }

    /// Detaches subscriber `sub`: it stops gating publishers at once.
    pub(crate) fn detach(&self, sub: u32) {
        let state = self.sub_state(sub);
        let old = state.load(Ordering::SeqCst);
        state.store(
            old & !(SUB_ACTIVE | SUB_CLAIMED | SUB_OWNER_MASK),
            Ordering::SeqCst,
        );
        self.consumed().notify();
    }

    /// Undoes what dead participant `owner` held: a slot it was publishing is skipped
    /// (subscribers pass over it, publishers reuse it); a subscription it held is detached, so
    /// it stops holding Block-mode publishers back. Returns (skipped, detached).
    pub(crate) fn recover(&self, owner: u16) -> (u64, u64) {
        let (mut skipped, mut detached) = (0, 0);
        if owner == 0 {
            return (0, 0);
        }
        for index in 0..self.slots.capacity() as usize {
            let raw = self.slots.state(index).load(Ordering::Acquire);
            let Ok(w) = Word::decode(raw) else { continue };
            if w.owner == owner && w.state == SlotState::Writing {
                let to = Word::new(w.seq, SlotState::Skipped, owner).encode();
                if self
                    .slots
                    .state(index)
                    .compare_exchange(raw, to, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
                {
                    skipped += 1;
                }
            }
        }
        for sub in 0..self.max_subscribers {
            let state = self.sub_state(sub).load(Ordering::SeqCst);
            if state & (SUB_ACTIVE | SUB_CLAIMED) != 0 && state & SUB_OWNER_MASK == u64::from(owner)
            {
                self.detach(sub);
                detached += 1;
            }
        }
        if skipped > 0 {
            self.published().notify();
            self.consumed().notify();
        }
        (skipped, detached)
    }

    /// Messages published so far (the tail).
    pub(crate) fn published_count(&self) -> u64 {
        self.tail().load(Ordering::Acquire)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn ring(
        capacity: u64,
        max_topic: usize,
        max_message: usize,
        subs: u32,
        block: bool,
    ) -> BroadcastRing {
        let stride =
            (SLOT_HEADER_SIZE + max_topic.next_multiple_of(8) + max_message.next_multiple_of(8))
                .next_multiple_of(8);
        let ctl = 0;
        let table = crate::layout::RING_CONTROL_SIZE;
        let slots = table + subs as usize * TABLE_ENTRY_SIZE;
        let region = Region::heap(slots + capacity as usize * stride);
        let r = BroadcastRing::new(
            region,
            ctl,
            slots,
            capacity,
            stride,
            max_topic,
            max_message,
            table,
            subs,
            block,
        );
        r.initialize();
        r
    }

    pub(crate) fn publish(r: &BroadcastRing, cache: &GateCache, topic: &[u8], body: &[u8]) -> bool {
        match r.try_claim(1, cache).unwrap() {
            Some(c) => {
                assert!(r.write_and_commit(c, topic, body));
                true
            }
            None => false,
        }
    }

    /// A message's (topic, body), nothing yet, or the number of positions lost.
    pub(crate) type ReadOutcome = Result<Option<(Vec<u8>, Vec<u8>)>, u64>;

    pub(crate) fn read(r: &BroadcastRing, cursor: &mut u64) -> ReadOutcome {
        let mut buf = vec![0; r.buffer_len()];
        match r.poll(cursor, &mut buf).unwrap() {
            Poll::Message { topic_len, len } => Ok(Some((
                buf[..topic_len].to_vec(),
                buf[r.body_offset()..r.body_offset() + len].to_vec(),
            ))),
            Poll::Empty => Ok(None),
            Poll::Lagged(n) => Err(n),
        }
    }

    #[cfg(not(loom))]
    #[test]
    fn every_subscriber_sees_every_message() {
        let r = ring(4, 8, 16, 2, false);
        let cache = GateCache::default();
        let (_, mut a) = r.attach(1, false).unwrap();
        let (_, mut b) = r.attach(2, false).unwrap();
        assert_eq!(read(&r, &mut a), Ok(None));
        assert!(publish(&r, &cache, b"t/1", b"hello"));
        assert!(publish(&r, &cache, b"t/2", b""));
        for cur in [&mut a, &mut b] {
            assert_eq!(
                read(&r, cur),
                Ok(Some((b"t/1".to_vec(), b"hello".to_vec())))
            );
            assert_eq!(read(&r, cur), Ok(Some((b"t/2".to_vec(), b"".to_vec()))));
            assert_eq!(read(&r, cur), Ok(None));
        }
    }

    #[cfg(not(loom))]
    #[test]
    fn drop_oldest_reports_exact_lag() {
        let r = ring(4, 8, 8, 1, false);
        let cache = GateCache::default();
        let (_, mut c) = r.attach(1, false).unwrap();
        for i in 0..10u8 {
            assert!(publish(&r, &cache, b"", &[i]));
        }
        // Tail 10, capacity 4: positions 6..=9 are retained, 0..=5 were overwritten.
        assert_eq!(read(&r, &mut c), Err(6));
        let mut got = vec![];
        while let Ok(Some((_, body))) = read(&r, &mut c) {
            got.push(body[0]);
        }
        assert_eq!(got, vec![6, 7, 8, 9]);
    }

    #[cfg(not(loom))]
    #[test]
    fn block_mode_waits_for_the_slowest_subscriber() {
        let r = ring(2, 0, 8, 2, true);
        let cache = GateCache::default();
        let (sa, mut a) = r.attach(1, false).unwrap();
        assert!(publish(&r, &cache, b"", b"1"));
        assert!(publish(&r, &cache, b"", b"2"));
        assert!(
            !publish(&r, &cache, b"", b"3"),
            "the subscriber has not read message 1"
        );
        assert!(read(&r, &mut a).unwrap().is_some());
        r.store_cursor(sa, a);
        assert!(publish(&r, &cache, b"", b"3"));
        // Detaching stops gating at once.
        r.detach(sa);
        for i in 0..10u8 {
            assert!(publish(&r, &cache, b"", &[i]));
        }
    }

    #[cfg(not(loom))]
    #[test]
    fn history_starts_at_the_oldest_retained() {
        let r = ring(4, 0, 8, 2, false);
        let cache = GateCache::default();
        for i in 0..6u8 {
            assert!(publish(&r, &cache, b"", &[i]));
        }
        let (_, mut c) = r.attach(1, true).unwrap();
        let mut got = vec![];
        while let Ok(Some((_, body))) = read(&r, &mut c) {
            got.push(body[0]);
        }
        assert_eq!(got, vec![3, 4, 5]);
        let (_, mut live) = r.attach(2, false).unwrap();
        assert_eq!(read(&r, &mut live), Ok(None));
    }

    #[cfg(not(loom))]
    #[test]
    fn subscriber_table_is_bounded_and_reusable() {
        let r = ring(4, 0, 8, 2, true);
        let (a, _) = r.attach(1, false).unwrap();
        assert!(r.attach(2, false).is_some());
        assert!(r.attach(3, false).is_none());
        r.detach(a);
        assert!(r.attach(3, false).is_some());
    }

    #[cfg(not(loom))]
    #[test]
    fn corrupt_words_are_errors_not_panics() {
        let r = ring(4, 8, 8, 1, false);
        let cache = GateCache::default();
        let (_, mut c) = r.attach(1, false).unwrap();
        assert!(publish(&r, &cache, b"t", b"x"));
        r.slots.len_word(0).store(u32::MAX, Ordering::Relaxed);
        let mut buf = vec![0; r.buffer_len()];
        assert!(r.poll(&mut c, &mut buf).is_err());
        assert_eq!(c, 1, "a corrupt slot is passed over, not re-read forever");
        c = 0;
        r.slots.state(0).store(
            Word::new(12345, SlotState::Ready, 1).encode(),
            Ordering::Relaxed,
        );
        assert!(r.poll(&mut c, &mut buf).is_err());
        r.tail().store(u64::MAX, Ordering::Relaxed);
        let _ = r.try_claim(1, &cache);
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::tests::ring;
    use super::*;
    use crate::sync::{Deadline, WaitStrategy};
    use loom::thread;

    fn publish_blocking(r: &BroadcastRing, owner: u16, body: &[u8]) {
        let cache = GateCache::default();
        let claim = r
            .consumed()
            .wait_for(WaitStrategy::Park, Deadline::Never, || {
                r.try_claim(owner, &cache)
            })
            .unwrap()
            .unwrap();
        assert!(r.write_and_commit(claim, b"", body));
        r.published().notify();
    }

    /// Receives until `n` messages or lags add up to `n`, waiting with `how`; returns the
    /// messages and the lag.
    fn receive(
        r: &BroadcastRing,
        sub: u32,
        mut cursor: u64,
        n: u64,
        how: WaitStrategy,
    ) -> (Vec<Vec<u8>>, u64) {
        let mut buf = vec![0; r.buffer_len()];
        let (mut got, mut lagged) = (vec![], 0);
        while got.len() as u64 + lagged < n {
            let poll = r
                .published()
                .wait_for(how, Deadline::Never, || {
                    match r.poll(&mut cursor, &mut buf)? {
                        Poll::Empty => Ok::<_, Corruption>(None),
                        other => Ok(Some(other)),
                    }
                })
                .unwrap()
                .unwrap();
            match poll {
                Poll::Message { len, .. } => {
                    got.push(buf[r.body_offset()..r.body_offset() + len].to_vec())
                }
                Poll::Lagged(k) => lagged += k,
                Poll::Empty => unreachable!(),
            }
            r.store_cursor(sub, cursor);
        }
        (got, lagged)
    }

    /// Block mode, 1 publisher, 2 subscribers, ring of 1: both see both messages, in order,
    /// intact, and nobody deadlocks (a lost wake-up would be reported as one).
    #[test]
    fn block_one_publisher_two_subscribers() {
        loom::model(|| {
            let r = ring(1, 0, 8, 2, true);
            let (sa, ca) = r.attach(1, false).unwrap();
            let (sb, cb) = r.attach(2, false).unwrap();
            let a = {
                let r = r.clone();
                thread::spawn(move || receive(&r, sa, ca, 2, WaitStrategy::Park))
            };
            let b = {
                let r = r.clone();
                thread::spawn(move || receive(&r, sb, cb, 2, WaitStrategy::Park))
            };
            publish_blocking(&r, 3, b"first");
            publish_blocking(&r, 3, b"second");
            for h in [a, b] {
                let (got, lagged) = h.join().unwrap();
                assert_eq!(lagged, 0);
                assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()]);
            }
        });
    }

    /// Message `m` of the drop-oldest model: three 8-byte words, each of its own value
    /// (`m` in the high nibble of every byte, the word's index in the low one), so that a read
    /// mixing words of two messages is told apart from both.
    fn three_words(m: u8) -> Vec<u8> {
        (0..24u8).map(|j| m << 4 | j / 8).collect()
    }

    /// Drop-oldest mode, 1 publisher, 1 subscriber, ring of 1, two messages of three words:
    /// whatever the subscriber receives is intact — never torn by the publisher overwriting
    /// the slot while it copies (three words with values of their own make a torn copy
    /// detectable; the model fails without the seqlock's second load of the state word) — and
    /// received + lagged = published. One subscriber: tearing is between one reader and the
    /// writer, and a second subscriber multiplies the run time without adding a case.
    #[test]
    fn drop_oldest_subscriber_never_gets_a_torn_message() {
        loom::model(|| {
            let (first, second) = (three_words(1), three_words(2));
            let r = ring(1, 0, first.len(), 1, false);
            let (sub, cursor) = r.attach(1, false).unwrap();
            let reader = {
                let r = r.clone();
                thread::spawn(move || receive(&r, sub, cursor, 2, WaitStrategy::Park))
            };
            publish_blocking(&r, 2, &first);
            publish_blocking(&r, 2, &second);
            let (got, lagged) = reader.join().unwrap();
            assert_eq!(got.len() as u64 + lagged, 2);
            for m in &got {
                assert!(*m == first || *m == second, "torn message {m:x?}");
            }
            if got.len() == 2 {
                assert_eq!(got, vec![first, second]);
            }
        });
    }

    /// Two publishers, one subscriber, Block mode: both messages arrive once, intact.
    #[test]
    fn two_publishers_one_subscriber() {
        loom::model(|| {
            let r = ring(1, 0, 8, 1, true);
            let (s, c) = r.attach(1, false).unwrap();
            let p1 = {
                let r = r.clone();
                thread::spawn(move || publish_blocking(&r, 2, b"p1"))
            };
            let p2 = {
                let r = r.clone();
                thread::spawn(move || publish_blocking(&r, 3, b"p2"))
            };
            let (mut got, lagged) = receive(&r, s, c, 2, WaitStrategy::Park);
            p1.join().unwrap();
            p2.join().unwrap();
            assert_eq!(lagged, 0);
            got.sort();
            assert_eq!(got, vec![b"p1".to_vec(), b"p2".to_vec()]);
        });
    }
}
