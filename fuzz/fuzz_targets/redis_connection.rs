//! Fuzz target `redis_connection`: see `sockspan::fuzz::redis_connection` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::redis_connection(data));
