//! The subcommands.

#[cfg(feature = "bench")]
pub mod bench;
pub mod blame;
pub mod check;
pub mod dump;
pub mod events;
mod report_files;
pub mod run;
