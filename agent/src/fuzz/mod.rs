//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz) and for the tests that replay the
//! inputs they found.
//!
//! Each function takes arbitrary bytes, drives one parser the way the agent does, and panics only
//! when an invariant breaks: a panic is what the fuzzer reports. The parsers themselves never
//! panic on bad input; the assertions here state what "correct" means beyond "did not crash".
//! Not an API: these exist for `fuzz/` and may change with it.

// Panicking on a broken invariant is what these functions are for (see above).
#![allow(clippy::missing_panics_doc)]

use crate::protocol::http1::framer::Side;

mod capture;
mod datastores;
mod http;
mod store;

pub use capture::{btf, go_executable, peer_message, pipeline, python_module, ring_record};
pub use datastores::{
    dns_connection, memcached_connection, mysql_connection, postgres_connection, redis_connection,
    sql_sanitise,
};
pub use http::{
    hpack, http1_connection, http1_head, http1_resplit, http2_connection, redaction, trace_context,
};
pub use store::store_frame;

/// A syscall's worth of one direction, as a connection script gives it.
struct ScriptedRead<'a> {
    side: Side,
    payload: &'a [u8],
    total: u64,
    tid: u32,
}

/// Reads bytes off the front of a fuzz input; runs dry as zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn byte(&mut self) -> u8 {
        let Some((&first, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        first
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }

    /// One read of a connection script: a control byte (bit 0: response side; bit 1: truncated
    /// capture; bits 2..: thread), a length byte, that many payload bytes, and for a truncated
    /// read a byte of uncaptured length (×64). `None` at the end of the input.
    fn read(&mut self) -> Option<ScriptedRead<'a>> {
        if self.is_empty() {
            return None;
        }
        let control = self.byte();
        let len = usize::from(self.byte());
        let payload = self.take(len);
        let uncaptured = if control & 2 == 0 {
            0
        } else {
            u64::from(self.byte()) * 64
        };
        Some(ScriptedRead {
            side: if control & 1 == 0 {
                Side::Request
            } else {
                Side::Response
            },
            payload,
            total: payload.len() as u64 + uncaptured,
            tid: u32::from(control >> 2),
        })
    }
}

/// A fuzz target: arbitrary bytes in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by the name its `fuzz/fuzz_targets/*.rs` file and corpus folders use.
pub const TARGETS: &[(&str, Target)] = &[
    ("http1_connection", http1_connection),
    ("http1_resplit", http1_resplit),
    ("http1_head", http1_head),
    ("ring_record", ring_record),
    ("btf", btf),
    ("trace_context", trace_context),
    ("redaction", redaction),
    ("pipeline", pipeline),
    ("http2_connection", http2_connection),
    ("hpack", hpack),
    ("go_executable", go_executable),
    ("dns_connection", dns_connection),
    ("redis_connection", redis_connection),
    ("memcached_connection", memcached_connection),
    ("postgres_connection", postgres_connection),
    ("mysql_connection", mysql_connection),
    ("sql_sanitise", sql_sanitise),
    ("python_module", python_module),
    ("peer_message", peer_message),
    ("store_frame", store_frame),
];

#[cfg(test)]
mod tests {
    //! Every input the fuzzers found that once broke an invariant, replayed (fuzz/regressions),
    //! plus each target's seed corpus (fuzz/seeds).

    use std::path::Path;

    fn replay(dir: &str, target: fn(&[u8])) -> usize {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz")
            .join(dir);
        let Ok(entries) = std::fs::read_dir(&root) else {
            return 0;
        };
        let mut n = 0;
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).expect("readable fuzz input");
            target(&bytes);
            n += 1;
        }
        n
    }

    #[test]
    fn seeds_and_regressions_replay_cleanly() {
        for (name, target) in super::TARGETS {
            let seeds = replay(&format!("seeds/{name}"), *target);
            assert!(seeds > 0, "target {name} has no seeds in fuzz/seeds/{name}");
            replay(&format!("regressions/{name}"), *target);
        }
    }
}
