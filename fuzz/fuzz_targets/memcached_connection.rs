//! Fuzz target `memcached_connection`: see `sockspan::fuzz::memcached_connection` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::memcached_connection(data));
