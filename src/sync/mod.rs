//! Synchronisation across processes: the atomics switch, shared futexes, and the wait cell
//! (spin, then park) built on them.

pub(crate) mod atomic;
pub(crate) mod barrier;
pub(crate) mod futex;
pub(crate) mod owner;
#[cfg(not(loom))]
pub(crate) mod process;
#[cfg(not(loom))]
pub(crate) mod reactor;
pub(crate) mod wait;

pub(crate) use wait::{Deadline, Tally, WaitCell, WaitStrategy};
