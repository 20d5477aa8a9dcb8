//! Fuzz target `dns_connection`: see `sockspan::fuzz::dns_connection` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::dns_connection(data));
