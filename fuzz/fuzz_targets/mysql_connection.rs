//! Fuzz target `mysql_connection`: see `sockspan::fuzz::mysql_connection` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::mysql_connection(data));
