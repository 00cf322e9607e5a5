//! The single-producer single-consumer ring core (`ring::exclusive`) over a queue file, driven
//! directly, for shmq's own benches and tests: compiled only with the `test-hooks` feature
//! (which only the crate's own tests and benches enable) and hidden from the documentation.
//!
//! The file is a pipeline file whose header carries both exclusive-end flags; its ring is
//! driven without the participant table: no liveness oracle, so recovery is called by hand
//! once the caller knows the other side is dead. Two processes are its only users, one sending,
//! one receiving. This measures and crash-tests the ring itself before the pipeline adopts it.

use crate::error::{Corruption, Error, RecvError, SendError, Waited};
use crate::layout::{Geometry, KIND_PIPELINE, PIPELINE_EXCLUSIVE_ENDS, RING_CONTROL_OFFSET};
use crate::ring::exclusive::{ConsumerEnd, ExclusiveRing, ProducerEnd, ReadClaim};
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
        let g =
            Geometry::pipeline_with_flags(capacity, max_message as u64, 2, PIPELINE_EXCLUSIVE_ENDS)
                .map_err(Error::InvalidOptions)?;
        let mapping = file::create(path, &g, 0o600, None, |region| {
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
        let (mapping, g) = file::open_allowing(path, KIND_PIPELINE, PIPELINE_EXCLUSIVE_ENDS)?;
        if g.flags != PIPELINE_EXCLUSIVE_ENDS {
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

    /// After the sender died (the caller knows it): brings the ring's record of its position
    /// up to date. Nothing else needs undoing: a half-written message is invisible.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the ring's words are inconsistent.
    pub fn recover_sender(&self) -> Result<(), Error> {
        self.ring
            .recover_producer()
            .map(drop)
            .map_err(|c| Error::corrupt(self.path(), c))
    }

    /// After the receiver died (the caller knows it): flags what it had received and not
    /// acknowledged, so it is delivered again flagged; returns how many.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the ring's words are inconsistent.
    pub fn recover_receiver(&self) -> Result<u64, Error> {
        self.ring
            .recover_consumer(self.ring.delivered_record())
            .map(|r| r.redelivered)
            .map_err(|c| Error::corrupt(self.path(), c))
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
        self.claim(msg.len(), wait)?;
        self.end.write(0, msg);
        self.end.commit(msg.len());
        Ok(())
    }

    /// Claims a slot and writes `msg` into it without committing (as a sender killed
    /// mid-write does).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn write_without_commit(
        &mut self,
        msg: &[u8],
        wait: WaitStrategy,
    ) -> Result<(), SendError> {
        self.claim(msg.len(), wait)?;
        self.end.write(0, msg);
        Ok(())
    }

    /// Waits for a free slot for a message of `len` bytes and claims it.
    #[inline]
    fn claim(&mut self, len: usize, wait: WaitStrategy) -> Result<(), SendError> {
        let max = self.ring.max_message();
        if len > max {
            return Err(SendError::TooLarge { len, max });
        }
        let end = &mut self.end;
        let waited = self.ring.not_full().wait_for(wait, Deadline::Never, || {
            end.try_claim().map(|free| free.then_some(()))
        });
        SendError::from_wait(waited).map_err(Waited::forever)
    }
}

/// Receives from an [`ExclusiveRingFile`].
pub struct Receiver {
    ring: ExclusiveRing,
    end: ConsumerEnd,
}

impl Receiver {
    /// Waits for the next message as `wait` says, passes its bytes (in place) and whether it is
    /// delivered again after a receiver died to `read`, then acknowledges it.
    ///
    /// # Errors
    /// [`RecvError::Corrupt`].
    #[inline]
    pub fn recv<R>(
        &mut self,
        wait: WaitStrategy,
        read: impl FnOnce(&[u8], bool) -> R,
    ) -> Result<R, RecvError> {
        let claim = self.next(wait)?;
        let out = read(self.ring.payload(&claim), claim.redelivered());
        self.ring.release(claim);
        Ok(out)
    }

    /// Receives the next message (a copy, and whether it is redelivered) and never
    /// acknowledges it, as a receiver killed before acknowledging does.
    ///
    /// # Errors
    /// [`RecvError::Corrupt`].
    pub fn recv_unacknowledged(
        &mut self,
        wait: WaitStrategy,
    ) -> Result<(Vec<u8>, bool), RecvError> {
        let claim = self.next(wait)?;
        Ok((self.ring.payload(&claim).to_vec(), claim.redelivered()))
    }

    #[inline]
    fn next(&mut self, wait: WaitStrategy) -> Result<ReadClaim, RecvError> {
        let end = &mut self.end;
        let waited = self
            .ring
            .not_empty()
            .wait_for(wait, Deadline::Never, || end.try_next());
        RecvError::from_wait(waited).map_err(Waited::forever)
    }
}
