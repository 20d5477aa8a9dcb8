//! Connections the programs still send but the agent does not know: their opening record was
//! lost to a full ring, or the agent's table evicted them (idle, or full). Left alone, a
//! kept-alive connection would stay invisible until it closes, every record of it read and
//! discarded; a budget could not shed it either, since it sheds only connections it knows, and
//! an agent behind its ring would stay behind. The programs are told to forget it instead
//! ([`KernelConns::forget`]): at its next syscall they discover it again and announce it, with
//! its endpoints, as a connection first seen in use.

use std::collections::HashSet;

use super::TraceSink;

/// Connections asked about, remembered so that the records of one already in the ring ask
/// once; forgotten all at once when this many (an id is never reused).
const ASKED_MAX: usize = 4096;

/// What was asked.
#[derive(Debug, Default)]
pub(super) struct Rediscovery {
    asked: HashSet<u64>,
}

impl TraceSink<'_> {
    /// Data of `conn_id` (socket `fd` of `pid`, at `ts_ns`), which the agent does not know,
    /// came: the programs forget it, unless the agent's table is too full to take it back (its
    /// evictions would make others unknown in turn). It is asked once: a connection in the
    /// budget's states, which the programs keep, is pinned in the agent's table, never unknown.
    pub(super) fn rediscover(&mut self, pid: u32, fd: i32, conn_id: u64, ts_ns: u64) {
        let Some(kernel) = &mut self.kernel_conns else {
            return;
        };
        if !self.conntrack.has_room() {
            return;
        }
        let asked = &mut self.rediscovery.asked;
        if asked.len() >= ASKED_MAX {
            asked.clear();
        }
        if !asked.insert(conn_id) {
            return;
        }
        if kernel.forget((pid, fd, conn_id)) {
            self.feedback.rediscovered += 1;
            tracing::debug!(
                pid,
                fd,
                conn_id,
                "unknown connection: to be announced again"
            );
            // No close will come for this id: what the stages keep of it goes now.
            self.conn_gone(conn_id, ts_ns);
        } else {
            // Closed meanwhile.
            tracing::debug!(
                pid,
                fd,
                conn_id,
                "unknown connection: not in the programs' table"
            );
        }
    }
}
