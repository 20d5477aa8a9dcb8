//! Fuzz target `trace_context`: see `sockspan::fuzz::trace_context` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::trace_context(data));
