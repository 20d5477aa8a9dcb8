//! Fuzz target `pipeline`: see `sockspan::fuzz::pipeline` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::pipeline(data));
