//! Stage 4 of the pipeline: application protocols over tracked connections.

pub mod http1;
