//! Empty on purpose: `agent` depends on this library target from its build script so that cargo
//! rebuilds the eBPF object whenever this crate or `agent-common` changes. The programs are in
//! the binary target (`main.rs`).
#![no_std]
