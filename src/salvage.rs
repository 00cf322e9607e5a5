//! [`Pipeline::salvage`]: copying the intact messages out of a corrupted pipeline file.

use crate::error::Error;
use crate::layout::{KIND_PIPELINE, PIPELINE_CHECKSUM, SLOT_HEADER_SIZE};
use crate::pipeline::{Pipeline, PipelineOptions};
use crate::ring::mpmc::{SlotState, Word};
use crate::shm::file;
use crate::sync::atomic::Ordering;
use std::path::Path;

/// What [`Pipeline::salvage`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Salvaged {
    /// Messages copied into the new file.
    pub copied: u64,
    /// Slots that were neither empty nor skipped but held no intact message (a state word, a
    /// sequence or a length that cannot be right, a payload that fails its checksum), or whose
    /// message lay outside the window of the others.
    pub unreadable: u64,
}

impl Pipeline {
    /// Copies every committed, intact message of the (possibly corrupted) pipeline file `from`
    /// into a new pipeline file `to` of the same geometry, in order, and returns the new queue
    /// and counts.
    ///
    /// A corrupt queue (where every later call returns `Corrupt`, for ever) so loses only what
    /// was actually damaged.
    ///
    /// # What is copied
    ///
    /// The old file's header must still validate (it is written once, at creation; a file whose
    /// header is damaged is refused with the same [`Error::Corrupt`] as `open`). Its slots are then
    /// read without trusting anything else — not `head`, not `tail`, not the participant table:
    ///
    /// * a slot holds a message if its state word decodes to `READY` (committed, not taken),
    ///   `READING` (taken, not acknowledged: persistence promises it) or `REDELIVER`;
    /// * it is *intact* if its sequence belongs to that slot (`seq % capacity == index`) and its
    ///   length is at most `max_message`;
    /// * of the intact messages, those whose sequences fall in the `capacity`-wide window holding
    ///   the most of them are kept (a live ring's messages always lie in one such window; a
    ///   scribbled sequence usually falls outside it), and copied **in sequence order**.
    ///
    /// Everything else that is not an empty or skipped slot is counted as unreadable. Payload bytes
    /// are copied with atomic word loads, as they are: without a checksum, a scribbled payload in an
    /// intact slot cannot be told from the real one.
    ///
    /// The new file gets the old file's geometry and mode `0600`, and is created like any queue
    /// (`O_EXCL`: `to` must not exist). The old file is left as it is: remove it once the new one is
    /// in service (processes still attached to the old one keep using it).
    ///
    /// # Errors
    /// As for [`Pipeline::open`] on `from` (its header must validate, its owner and mode be
    /// trusted) and [`Pipeline::create`] on `to`.
    pub fn salvage(
        from: impl AsRef<Path>,
        to: impl AsRef<Path>,
    ) -> Result<(Pipeline, Salvaged), Error> {
        let (mapping, g) = file::open_allowing(from.as_ref(), KIND_PIPELINE, PIPELINE_CHECKSUM)?;
        let region = mapping.region();
        let (capacity, stride) = (g.capacity, g.slot_stride as usize);
        let max = g.max_message as usize;
        let checksum = g.flags & PIPELINE_CHECKSUM != 0;
        let mut buf = vec![0u8; max];

        let mut found = Vec::new(); // (sequence, slot index, length)
        let mut unreadable = 0u64;
        for index in 0..capacity {
            let slot = g.slots_offset as usize + index as usize * stride;
            let raw = region.u64_at(slot).load(Ordering::Acquire);
            let holds_message = match Word::decode(raw) {
                Ok(w) => match w.state {
                    SlotState::Empty | SlotState::Skipped | SlotState::Writing => None,
                    SlotState::Ready | SlotState::Reading | SlotState::Redeliver => Some(w.seq),
                },
                Err(_) => {
                    unreadable += 1;
                    None
                }
            };
            let Some(seq) = holds_message else { continue };
            let len = region.u32_at(slot + 8).load(Ordering::Relaxed) as usize;
            // With checksums, the payload must match its check word; the copy below is
            // verified again, since the old file may be changing while it is salvaged.
            let verifies = |buf: &mut [u8]| {
                region.load_words(slot + SLOT_HEADER_SIZE, &mut buf[..len]);
                crc32c::crc32c(&buf[..len]) == region.u32_at(slot + 12).load(Ordering::Relaxed)
            };
            if seq % capacity == index && len <= max && (!checksum || verifies(&mut buf)) {
                found.push((seq, index, len));
            } else {
                unreadable += 1;
            }
        }
        found.sort_unstable();
        let (start, end) = densest_window(&found, capacity);
        unreadable += (found.len() - (end - start)) as u64;

        let options = PipelineOptions::new()
            .capacity(capacity as usize)
            .max_message(max)
            .max_participants(g.max_participants as usize)
            .checksum(checksum);
        let queue = Pipeline::create(to.as_ref(), &options)?;
        let producer = queue.producer()?;
        let mut copied = 0;
        for &(_, index, len) in &found[start..end] {
            let slot = g.slots_offset as usize + index as usize * stride;
            region.load_words(slot + SLOT_HEADER_SIZE, &mut buf[..len]);
            if checksum
                && crc32c::crc32c(&buf[..len]) != region.u32_at(slot + 12).load(Ordering::Relaxed)
            {
                unreadable += 1; // changed since the scan
                continue;
            }
            copied += 1;
            // The new queue has as many slots as the old one had messages at most.
            producer.try_send(&buf[..len])?;
        }
        drop(producer);
        Ok((queue, Salvaged { copied, unreadable }))
    }
}

/// The range of `sorted` (by sequence) whose sequences span less than `width` and that holds
/// the most entries (the earliest such range on ties).
fn densest_window(sorted: &[(u64, u64, usize)], width: u64) -> (usize, usize) {
    let (mut best, mut start) = ((0, 0), 0);
    for end in 0..sorted.len() {
        while sorted[end].0 - sorted[start].0 >= width {
            start += 1;
        }
        if end + 1 - start > best.1 - best.0 {
            best = (start, end + 1);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::densest_window;

    #[test]
    fn the_densest_window_ignores_outliers() {
        let s = |seqs: &[u64]| seqs.iter().map(|&q| (q, 0, 0)).collect::<Vec<_>>();
        assert_eq!(densest_window(&s(&[]), 4), (0, 0));
        assert_eq!(densest_window(&s(&[5, 6, 7, 8]), 4), (0, 4));
        assert_eq!(densest_window(&s(&[1, 40, 41, 43, 9999]), 4), (1, 4));
        assert_eq!(densest_window(&s(&[10, 11, 12, 13, 14]), 4), (0, 4));
    }
}
