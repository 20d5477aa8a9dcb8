//! Fuzz target `redaction`: see `sockspan::fuzz::redaction` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::redaction(data));
