//! A test-only way to stop a process at a chosen point of the protocol, so a test can SIGKILL
//! it exactly there. Compiled only into debug builds (`cargo test`); in release builds
//! [`park_at`] is an empty inline function.
//!
//! A process whose environment has `SHMQ_TEST_PARK_AT=<point>` stops forever when it reaches
//! that point, after writing the point's name to the file named by `SHMQ_TEST_PARKED_FILE` (if
//! set) so the test knows it got there. Points:
//!
//! * `producer-claimed`: a pipeline producer has claimed a slot and written nothing yet;
//! * `consumer-received`: a pipeline consumer holds a message it has not acknowledged;
//! * `publisher-claimed`: a publisher has claimed a slot and written nothing yet;
//! * `server-received`: a server holds a request it has not replied to.

/// Stops the process forever if the test environment asks for `point` (debug builds only).
#[inline]
pub(crate) fn park_at(point: &str) {
    #[cfg(debug_assertions)]
    {
        static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        if AT
            .get_or_init(|| std::env::var("SHMQ_TEST_PARK_AT").ok())
            .as_deref()
            == Some(point)
        {
            if let Ok(file) = std::env::var("SHMQ_TEST_PARKED_FILE") {
                let _ = std::fs::write(file, point);
            }
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
