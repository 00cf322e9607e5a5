//! The mapped file and the region abstraction over it.

#[cfg(not(loom))]
pub(crate) mod file;
#[cfg(not(loom))]
pub(crate) mod perm;
pub(crate) mod readonly;
pub(crate) mod region;

pub use region::Region;
