//! Fuzz target `btf`: see `sockspan::fuzz::btf` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::btf(data));
