//! Arbitrary bytes as a pubsub file: open it, attach every role, and run every operation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shmq_fuzz::with_file("open_pubsub", data, shmq_fuzz::exercise_pubsub);
});
