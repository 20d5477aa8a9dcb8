//! Fuzz target `peer_message`: see `sockspan::fuzz::peer_message` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::peer_message(data));
