//! Test-only instrumentation, compiled only with the `test-hooks` cargo feature (which shmq's
//! own tests turn on through the dev-dependency on the crate itself). Without the feature every
//! hook below is an empty inline function: nothing of it reaches a program that depends on
//! shmq, in debug or release builds.
//!
//! # Park points
//!
//! A process whose environment has `SHMQ_TEST_PARK_AT=<point>` stops forever when it reaches
//! that point, after writing the point's name to the file named by `SHMQ_TEST_PARKED_FILE` (if
//! set) so the test knows it got there; the test then SIGKILLs it exactly there. Points:
//!
//! * `producer-claimed`: a pipeline producer has claimed a slot and written nothing yet;
//! * `consumer-received`: a pipeline consumer holds a message it has not acknowledged;
//! * `publisher-claimed`: a publisher has claimed a slot and written nothing yet;
//! * `server-received`: a server holds a request it has not replied to;
//! * `redelivery-counted`: a recovery pass has counted a message as pending redelivery and
//!   not yet made it deliverable (between the two steps of `MpmcRing::recover`).

/// Stops the process forever if the test environment asks for `point`. Inline, one relaxed
/// load and a branch once the environment was read (the benches are built with this feature
/// too, since cargo unifies it for every target of the package, so the hot paths' hooks must
/// cost them nothing measurable).
#[cfg(all(feature = "test-hooks", not(loom)))]
#[inline]
pub(crate) fn park_at(point: &str) {
    use std::sync::atomic::{AtomicU8, Ordering};
    /// 0: environment not read yet; 1: no park point set; 2: one is set.
    static ARMED: AtomicU8 = AtomicU8::new(0);
    if ARMED.load(Ordering::Relaxed) != 1 {
        park_at_slow(point, &ARMED);
    }
}

#[cfg(all(feature = "test-hooks", not(loom)))]
#[cold]
#[inline(never)]
fn park_at_slow(point: &str, armed: &std::sync::atomic::AtomicU8) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("SHMQ_TEST_PARK_AT").ok());
    armed.store(
        if at.is_some() { 2 } else { 1 },
        std::sync::atomic::Ordering::Relaxed,
    );
    if at.as_deref() == Some(point) {
        if let Ok(file) = std::env::var("SHMQ_TEST_PARKED_FILE") {
            let _ = std::fs::write(file, point);
        }
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Without the `test-hooks` feature: nothing.
#[cfg(not(all(feature = "test-hooks", not(loom))))]
#[inline(always)]
pub(crate) fn park_at(_point: &str) {}
