//! Fuzz target `python_module`: see `sockspan::fuzz::python_module` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockspan::fuzz::python_module(data));
