//! Fuzz target `http1_head`: see `sockspan::fuzz::http1_head` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::http1_head(data));
