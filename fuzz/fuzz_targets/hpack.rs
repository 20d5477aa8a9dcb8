//! Fuzz target `hpack`: see `sockspan::fuzz::hpack` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::hpack(data));
