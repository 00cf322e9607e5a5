//! Lock-free cores over a [`Region`](crate::shm::Region): no files, no syscalls beyond the
//! wait cells' futex calls.

pub(crate) mod broadcast;
pub(crate) mod exclusive;
pub(crate) mod mpmc;
// Shared by the rings as they adopt it (the exclusive ring first).
#[allow(dead_code)]
pub(crate) mod slots;
