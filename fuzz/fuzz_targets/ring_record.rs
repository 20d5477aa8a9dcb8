//! Fuzz target `ring_record`: see `sockspan::fuzz::ring_record` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::ring_record(data));
