//! Cross-process benchmark harness for shmq, shared by every bench binary (`mod common;`).
//!
//! Split by concern; each part's docs state its protocol:
//! * [`peers`]: peer processes (a bench binary re-executing itself as a role), CPU pinning, and
//!   the helpers the shmq benches build their cases from (watched peers, job peers, queue paths);
//! * [`shm`]: shared-memory scratch files and the spin / shared-futex waits on a control word
//!   that the baselines and the job peers speak;
//! * [`baselines`]: the round-trip and one-way interfaces every case implements, and the
//!   baselines every shmq figure is quoted against (raw atomic and raw futex ping-pong, Unix
//!   socket, pipe, in-process channel, plain SPSC ring);
//! * [`stats`]: percentiles, brackets by raw medians, medians and ratios; full or smoke counts;
//! * [`report`]: criterion's groups, the machine, the tables, the targets and met / not met;
//! * [`results`]: the same figures as JSON under `target/shmq-bench/`, for `bench-report`.
//!
//! Every public name is re-exported here, so a bench names it `common::NAME`.
#![allow(dead_code)] // Each bench binary uses a different part of this module.

#[cfg(not(all(target_os = "linux", target_endian = "little")))]
compile_error!("the shmq benches need Linux on a little-endian CPU (a futex waits on the low half of an AtomicU64)");

pub mod baselines;
pub mod peers;
pub mod report;
pub mod results;
pub mod shm;
pub mod stats;

// Re-exported whether this bench uses them or not (as `dead_code` above).
#[allow(unused_imports)]
pub use baselines::*;
#[allow(unused_imports)]
pub use peers::*;
#[allow(unused_imports)]
pub use report::*;
#[allow(unused_imports)]
pub use results::{record_bracket, record_note, OUT_ENV};
#[allow(unused_imports)]
pub use shm::*;
#[allow(unused_imports)]
pub use stats::*;
