//! Fuzz target `store_frame`: see `sockspan::fuzz::store_frame` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::store_frame(data));
