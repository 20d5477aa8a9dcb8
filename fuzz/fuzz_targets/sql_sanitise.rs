//! Fuzz target `sql_sanitise`: see `sockspan::fuzz::sql_sanitise` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::sql_sanitise(data));
