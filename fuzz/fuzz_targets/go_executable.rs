//! Fuzz target `go_executable`: see `sockspan::fuzz::go_executable` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::go_executable(data));
