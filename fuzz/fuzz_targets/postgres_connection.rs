//! Fuzz target `postgres_connection`: see `sockspan::fuzz::postgres_connection` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::postgres_connection(data));
