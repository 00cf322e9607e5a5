//! The slot array a ring is made of: `capacity` slots of `stride` bytes from offset `slots` of a
//! region, each starting with its 64-bit state word, its 32-bit message length and its 32-bit check word
//! (the [`SlotHeader`](crate::layout::SlotHeader)), the payload after them.
//!
//! Indices are always computed here from a position, modulo `capacity`, never read from the
//! region, so a hostile file cannot make a ring reach outside its slots.

use crate::layout::SLOT_HEADER_SIZE;
use crate::shm::Region;
use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A cache line (slots start on one: strides are multiples of it, and the slot array is
/// 128-aligned in a file).
const LINE: usize = 64;

/// The lines of a message [`SlotArray::hand_over`] moves: those of a small message, whose
/// latency counts; a longer one is streamed by the hardware prefetchers anyway.
const HANDED_LINES: usize = 4;

/// A ring's slots in a region.
#[derive(Clone)]
pub(crate) struct SlotArray {
    region: Region,
    slots: usize,
    capacity: u64,
    /// `capacity` is a power of two: positions map to slots by a mask (a division costs tens
    /// of cycles), decided once.
    pow2: bool,
    stride: usize,
}

impl SlotArray {
    /// The `capacity` slots of `stride` bytes (a multiple of 8, room for the header and
    /// `max_message`) at `slots` in `region`. The caller has validated the geometry (checked
    /// again here, once).
    pub(crate) fn new(
        region: Region,
        slots: usize,
        capacity: u64,
        stride: usize,
        max_message: usize,
    ) -> Self {
        assert!((1..=crate::layout::MAX_CAPACITY).contains(&capacity));
        assert!(stride >= SLOT_HEADER_SIZE + max_message && stride % 8 == 0);
        assert!(slots % 8 == 0 && slots + capacity as usize * stride <= region.len());
        SlotArray {
            region,
            slots,
            capacity,
            pow2: capacity.is_power_of_two(),
            stride,
        }
    }

    /// The region the slots are in.
    #[inline]
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// Number of slots.
    #[inline]
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The slot serving position `pos`.
    #[inline]
    pub(crate) fn index(&self, pos: u64) -> usize {
        if self.pow2 {
            (pos & (self.capacity - 1)) as usize
        } else {
            (pos % self.capacity) as usize
        }
    }

    /// Offset of slot `index` in the region.
    #[inline]
    pub(crate) fn offset(&self, index: usize) -> usize {
        self.slots + index * self.stride
    }

    /// Offset of slot `index`'s header word at `at` (0, 8 or 12) after checking that the slot
    /// exists: one compare, where the region's own check is three.
    #[inline]
    fn header_offset(&self, index: usize, at: usize) -> usize {
        if index as u64 >= self.capacity {
            no_such_slot(index, self.capacity);
        }
        self.offset(index) + at
    }

    /// Slot `index`'s state word.
    #[inline]
    pub(crate) fn state(&self, index: usize) -> &AtomicU64 {
        let off = self.header_offset(index, 0);
        // SAFETY: `index < capacity`, so the slot lies inside the region (`new` checked
        // `slots + capacity × stride <= len`); `slots` and `stride` are multiples of 8, so the
        // word is 8-aligned, and a stride holds the 16-byte header.
        unsafe { self.region.u64_at_unchecked(off) }
    }

    /// Slot `index`'s message length.
    #[inline]
    pub(crate) fn len_word(&self, index: usize) -> &AtomicU32 {
        let off = self.header_offset(index, 8);
        // SAFETY: as for `state`: bytes 8..12 of a slot inside the region, 4-aligned.
        unsafe { self.region.u32_at_unchecked(off) }
    }

    /// Slot `index`'s check word (the payload's CRC32C in a pipeline with checksums; see
    /// [`SlotHeader::check`](crate::layout::SlotHeader::check)).
    #[inline]
    pub(crate) fn check_word(&self, index: usize) -> &AtomicU32 {
        let off = self.header_offset(index, 12);
        // SAFETY: as for `state`: bytes 12..16 of a slot inside the region, 4-aligned.
        unsafe { self.region.u32_at_unchecked(off) }
    }

    /// Before claiming slot `index` to write it: its second cache line (where a payload of
    /// more than 48 bytes goes on) is fetched for writing now, beside the claim's transfer of
    /// the first, so that the commit does not stall for it.
    #[inline]
    pub(crate) fn prepare_write(&self, index: usize) {
        if self.stride > LINE {
            self.region.prefetch_for_write(self.offset(index) + LINE);
        }
    }

    /// Before claiming slot `index`'s message (seen ready) to read it: its second cache line
    /// is fetched now, beside the claim, which is a locked instruction that later loads wait
    /// for.
    #[inline]
    pub(crate) fn prepare_read(&self, index: usize) {
        if self.stride > LINE {
            self.region.prefetch(self.offset(index) + LINE);
        }
    }

    /// After publishing `len` bytes in slot `index`: its first lines (up to
    /// [`HANDED_LINES`]) go to the shared cache, where the consumer's miss finds them.
    #[inline]
    pub(crate) fn hand_over(&self, index: usize, len: usize) {
        let lines = (SLOT_HEADER_SIZE + len).div_ceil(LINE).min(HANDED_LINES);
        for line in 0..lines {
            self.region.demote(self.offset(index) + line * LINE);
        }
    }

    /// Offset of slot `index`'s payload in the region.
    #[inline]
    pub(crate) fn payload_offset(&self, index: usize) -> usize {
        self.offset(index) + SLOT_HEADER_SIZE
    }
}

/// The panic of a slot index past the array (a bug in shmq: indices are computed from
/// positions by [`SlotArray::index`], never read from the region), out of line.
#[cold]
#[inline(never)]
fn no_such_slot(index: usize, capacity: u64) -> ! {
    panic!("shmq internal error: slot {index} of a ring of {capacity}")
}

/// The helping step of a claim: move `counter` (a ring's head or tail) from `from` past the
/// position a claimer has already taken, if nobody has yet. Losing the race is fine: someone
/// else moved it.
#[inline]
pub(crate) fn help_on(counter: &AtomicU64, from: u64, order: Ordering) {
    let _ = counter.compare_exchange(from, from.wrapping_add(1), order, Ordering::Relaxed);
}
