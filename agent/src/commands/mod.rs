//! The subcommands.

pub mod bench;
pub mod blame;
pub mod check;
pub mod dump;
pub mod events;
pub mod run;
