//! Lock-free cores over a [`Region`](crate::shm::Region): no files, no syscalls beyond the
//! wait cells' futex calls.

pub(crate) mod broadcast;
pub(crate) mod exclusive;
pub(crate) mod mpmc;
pub(crate) mod slots;
