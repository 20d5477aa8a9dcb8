//! The trace stage's configuration ([`TraceConfig`], checked by [`TraceConfig::validate`]) and
//! its self-metrics ([`TraceStats`]).

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceConfig {
    /// How long a finished span waits for late evidence before export.
    pub link_delay: Duration,
    /// Bound on spans held (open or waiting).
    pub max_spans: usize,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            link_delay: Duration::from_millis(500),
            max_spans: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace link-delay must be between 0 and 60s, got {0:?}")]
    LinkDelay(Duration),
    #[error("trace max-spans must be at least 100, got {0}")]
    MaxSpans(usize),
}

impl TraceConfig {
    pub fn validate(&self) -> Result<(), TraceError> {
        if self.link_delay > Duration::from_mins(1) {
            return Err(TraceError::LinkDelay(self.link_delay));
        }
        if self.max_spans < 100 {
            return Err(TraceError::MaxSpans(self.max_spans));
        }
        Ok(())
    }
}

/// Self-metrics of the trace stage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TraceStats {
    pub spans_started: u64,
    pub spans_exported: u64,
    pub parent_from_header: u64,
    pub parent_from_thread: u64,
    pub parent_from_proxy: u64,
    pub parent_from_goroutine: u64,
    pub parent_from_task: u64,
    pub parent_from_callback: u64,
    /// CLIENT spans a worker thread made for the stream it answered next
    /// ([`crate::trace::workers`]).
    pub parent_from_worker: u64,
    /// Threads found serving two requests at once (event loops): the thread rule names no
    /// parent on them from then on.
    pub event_loop_threads: u64,
    /// Event-loop threads not remembered, the table being full.
    pub event_loops_unremembered: u64,
    /// Python processes running asyncio whose tasks are not followed (the probes off or
    /// failed): the thread rule names no parent on their main thread.
    pub asyncio_processes_unfollowed: u64,
    /// Such processes not remembered, the table being full.
    pub asyncio_processes_unremembered: u64,
    /// Task contexts that wrote the responses of two SERVER requests: not one request's task,
    /// so the task rule names no parent through them.
    pub task_shared_writers: u64,
    pub parent_from_connection: u64,
    /// SERVER spans whose client's agent, on another host, announced it ([`crate::peers`]).
    pub parent_from_peer: u64,
    /// SERVER spans whose request's first segment carried their CLIENT span's context (the
    /// in-band mode).
    pub parent_from_inband: u64,
    /// CLIENT spans exported in the trace their request carried, not their rules' parent's:
    /// the programs' thread rule and the agent's rules disagreed (the in-band mode).
    pub inband_disagreed: u64,
    /// In-band notes dropped before their request came, the table being full.
    pub inband_notes_evicted: u64,
    /// CLIENT spans announced to the agent of their server's host.
    pub peer_announced: u64,
    /// Announcements or answers that came after their SERVER span's trace id was known
    /// outside under another id: linked (`peer-late`), not made its parent.
    pub peer_late: u64,
    /// Ends of a connection whose request keys matched but whose requests did not (different
    /// method or target): one end counted from a byte the other did not (TLS plaintext, which
    /// has no sequence numbers, with a read in flight when the probes attached). Not paired.
    pub mirror_mismatches: u64,
    pub roots: u64,
    pub ambiguous: u64,
    /// Exchanges whose request head was never seen (the agent started mid-request).
    pub orphan_exchanges: u64,
    /// Spans dropped because `max_spans` were held.
    pub dropped_full: u64,
    /// Open spans dropped because their connection stopped being tracked.
    pub abandoned: u64,
    /// The most spans held at once (open or waiting for export).
    pub held_peak: u64,
    /// Spans not exported because the budget's shedding dropped their trace
    /// ([`super::shedding`]).
    pub spans_shed: u64,
    /// CLIENT requests of threads with hidden work that a rule by thread or the proxy rule
    /// would have given a parent ([`super::shedding`]).
    pub hidden_work_refusals: u64,
}
