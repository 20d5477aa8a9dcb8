//! Fuzz target `http1_connection`: see `sockspan::fuzz::http1_connection` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::http1_connection(data));
