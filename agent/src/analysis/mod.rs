//! Analyses over stored traces: critical paths and "why is it slow".

pub mod blame;
pub mod critical_path;
pub mod service_map;
