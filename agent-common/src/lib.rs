//! Types shared by sockspan's eBPF programs and its user-space agent.
//!
//! Every type that crosses the kernel/user boundary is `#[repr(C)]`, has no `bool`, spells out its
//! padding, and carries a size assertion, so that both sides agree on the layout by construction.
//! The user-space side enables the `user` feature to get `aya::Pod` implementations.
#![cfg_attr(target_arch = "bpf", no_std)]

pub mod ask;
pub mod conn_update;
pub mod event;
pub mod kernel;
pub mod maps;
pub mod rank;

pub use event::*;
pub use kernel::*;
pub use maps::*;
