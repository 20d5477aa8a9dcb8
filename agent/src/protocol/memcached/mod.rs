//! memcached text protocol (placeholder while written).
use super::{Chunk, Detected};
pub fn detect(_chunk: &Chunk<'_>) -> Option<Detected> {
    None
}
