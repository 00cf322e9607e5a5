//! Arbitrary bytes as a service file: open it, attach every role, and run every operation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shmq_fuzz::with_file("open_service", data, shmq_fuzz::exercise_service);
});
