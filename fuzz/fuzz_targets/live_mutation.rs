//! Structure-aware: a valid queue is created, then a script interleaves real operations (with
//! messages held across later steps) and writes of words or bytes into the live file.
#![no_main]

libfuzzer_sys::fuzz_target!(|script: shmq_fuzz::Script| {
    shmq_fuzz::run_script(&script);
});
