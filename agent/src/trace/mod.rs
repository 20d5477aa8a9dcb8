//! Stage 5 of the pipeline: spans from exchanges, linked into traces.

pub mod callbacks;
pub mod goroutines;
pub mod ids;
pub mod intern;
pub mod linker;
mod open_streams;
pub mod propagation;
mod remote;
pub mod resource;
pub mod route;
pub mod span;
pub mod tasks;
pub mod workers;

pub use linker::{End, TraceConfig, Tracer};
pub use span::SpanData;
