//! Direct access to the single-producer single-consumer ring core (`ring::exclusive`) over a
//! queue file, for shmq's own benches: compiled only with the `test-hooks` feature (which only
//! the crate's own tests and benches enable) and hidden from the documentation.
//!
//! The file is a pipeline file whose header carries both exclusive-end flags; its ring is
//! driven without the participant table (so no liveness, no recovery): the bench's two
//! processes are its only users, one sending, one receiving. This measures the ring itself,
//! beside the baselines, before the pipeline adopts it.

use crate::error::{Corruption, Error, RecvError, SendError};
use crate::layout::{Geometry, KIND_PIPELINE, PIPELINE_FLAGS, RING_CONTROL_OFFSET};
use crate::ring::exclusive::{ConsumerEnd, ExclusiveRing, ProducerEnd};
use crate::shm::file::{self, Mapping};
use crate::sync::{Deadline, WaitStrategy};
use std::path::Path;
use std::sync::Arc;

/// A queue file served by the exclusive-ends ring.
pub struct ExclusiveRingFile {
    mapping: Arc<Mapping>,
    ring: ExclusiveRing,
}

fn ring_of(region: crate::shm::Region, g: &Geometry) -> ExclusiveRing {
    ExclusiveRing::new(
        region,
        RING_CONTROL_OFFSET,
        g.slots_offset as usize,
        g.capacity,
        g.slot_stride as usize,
        g.max_message as usize,
    )
}

impl ExclusiveRingFile {
    /// Creates the file (mode `0600`) with `capacity` slots of up to `max_message` bytes.
    ///
    /// # Errors
    /// As `Pipeline::create`.
    pub fn create(path: &Path, capacity: u64, max_message: usize) -> Result<Self, Error> {
        let g = Geometry::pipeline_with_flags(capacity, max_message as u64, 2, PIPELINE_FLAGS)
            .map_err(Error::InvalidOptions)?;
        let mapping = file::create(path, &g, 0o600, |region| {
            ring_of(region.clone(), &g).initialize();
        })?;
        let ring = ring_of(mapping.region(), &g);
        Ok(ExclusiveRingFile { mapping, ring })
    }

    /// Opens a file made by [`create`](Self::create).
    ///
    /// # Errors
    /// As `Pipeline::open`, and [`Error::Corrupt`] for a pipeline without both exclusive flags.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let (mapping, g) = file::open(path, KIND_PIPELINE)?;
        if g.flags != PIPELINE_FLAGS {
            return Err(Error::corrupt(
                path,
                Corruption::BadGeometry("not a single-producer single-consumer pipeline"),
            ));
        }
        let ring = ring_of(mapping.region(), &g);
        Ok(ExclusiveRingFile { mapping, ring })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.mapping.path()
    }

    /// The sending end (one per file at a time: the caller's promise).
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the ring's words are inconsistent.
    pub fn sender(&self) -> Result<Sender, Error> {
        let end = self
            .ring
            .attach_producer()
            .map_err(|c| Error::corrupt(self.path(), c))?;
        Ok(Sender {
            ring: self.ring.clone(),
            end,
        })
    }

    /// The receiving end (one per file at a time: the caller's promise).
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the ring's words are inconsistent.
    pub fn receiver(&self) -> Result<Receiver, Error> {
        let end = self
            .ring
            .attach_consumer(self.ring.head_offset())
            .map_err(|c| Error::corrupt(self.path(), c))?;
        Ok(Receiver {
            ring: self.ring.clone(),
            end,
        })
    }
}

/// Sends into an [`ExclusiveRingFile`].
pub struct Sender {
    ring: ExclusiveRing,
    end: ProducerEnd,
}

impl Sender {
    /// Sends `msg`, waiting for room as `wait` says.
    ///
    /// # Errors
    /// [`SendError::TooLarge`], or [`SendError::Corrupt`].
    #[inline]
    pub fn send(&mut self, msg: &[u8], wait: WaitStrategy) -> Result<(), SendError> {
        let max = self.ring.max_message();
        if msg.len() > max {
            return Err(SendError::TooLarge {
                len: msg.len(),
                max,
            });
        }
        let end = &mut self.end;
        let waited = self.ring.not_full().wait_for(wait, Deadline::Never, || {
            end.try_claim().map(|free| free.then_some(()))
        });
        SendError::from_wait(waited, Deadline::Never)?;
        self.end.write(0, msg);
        self.end.commit(msg.len());
        Ok(())
    }
}

/// Receives from an [`ExclusiveRingFile`].
pub struct Receiver {
    ring: ExclusiveRing,
    end: ConsumerEnd,
}

impl Receiver {
    /// Waits for the next message as `wait` says, passes its bytes (in place) to `read`, then
    /// acknowledges it.
    ///
    /// # Errors
    /// [`RecvError::Corrupt`].
    #[inline]
    pub fn recv<R>(
        &mut self,
        wait: WaitStrategy,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, RecvError> {
        let end = &mut self.end;
        let waited = self
            .ring
            .not_empty()
            .wait_for(wait, Deadline::Never, || end.try_next());
        let claim = RecvError::from_wait(waited, Deadline::Never)?;
        let out = read(self.ring.payload(&claim));
        self.ring.release(claim);
        Ok(out)
    }
}
