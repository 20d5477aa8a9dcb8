//! The subcommands.

pub mod bench;
pub mod check;
pub mod events;
pub mod run;
