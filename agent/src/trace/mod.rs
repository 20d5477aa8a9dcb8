//! Stage 5 of the pipeline: spans from exchanges, linked into traces.

mod finished;
pub mod ids;
mod intern;
pub mod linker;
pub mod propagation;
pub mod resource;
pub mod route;
pub mod span;

pub use linker::{TraceConfig, Tracer};
pub use span::SpanData;
