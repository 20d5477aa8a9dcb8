//! Fuzz target `http2_connection`: see `sockspan::fuzz::http2_connection` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::http2_connection(data));
