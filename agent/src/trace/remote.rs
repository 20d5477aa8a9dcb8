//! The tracer's side of cross-host linking ([`crate::peers`]): CLIENT spans other agents
//! announced, waiting for their SERVER end here; and this agent's CLIENT spans to other hosts,
//! announced once their trace is settled.

use std::collections::{HashMap, VecDeque};

use super::{
    ids::{SpanId, TraceId},
    linker::{MirrorKey, SpanKey},
};
use crate::peers::local::LocalAddrs;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// How long an announced CLIENT span waits for its SERVER end here. Its datagram may arrive
/// before the server's agent saw the request (each agent reads its ring on its own schedule);
/// it arrives at most about a link delay after.
const REMOTE_TTL_NS: u64 = 10_000_000_000;
/// Announced spans remembered at once; past this the oldest go (counted).
const MAX_REMOTE: usize = 65_536;
/// CLIENT spans of this host waiting for their trace to settle before they are announced.
const MAX_PENDING: usize = 65_536;

/// A CLIENT span another agent announced.
#[derive(Debug, Clone, Copy)]
pub(super) struct RemoteClient {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub forward: u64,
}

/// Announced CLIENT spans by the request they wrote, expiring after [`REMOTE_TTL_NS`].
#[derive(Debug, Default)]
pub(super) struct RemoteClients {
    by_request: FastMap<MirrorKey, RemoteClient>,
    order: VecDeque<(u64, MirrorKey)>,
    /// Forgotten before their time, the table being full.
    pub evicted: u64,
}

impl RemoteClients {
    pub fn insert(&mut self, key: MirrorKey, client: RemoteClient, now: u64) {
        self.expire(now);
        if self.by_request.len() >= MAX_REMOTE
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.by_request.remove(&oldest);
            self.evicted += 1;
        }
        if self.by_request.insert(key, client).is_none() {
            self.order.push_back((now + REMOTE_TTL_NS, key));
        }
    }

    pub fn get(&self, key: &MirrorKey) -> Option<&RemoteClient> {
        self.by_request.get(key)
    }

    /// Drops announcements whose time is over.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(until, key)) = self.order.front() {
            if until > now {
                break;
            }
            self.order.pop_front();
            self.by_request.remove(&key);
        }
    }
}

/// This agent's CLIENT spans whose server is on another host.
#[derive(Debug, Default)]
pub(super) struct Announcer {
    /// This host's addresses: a server on one of them is traced here.
    pub local: LocalAddrs,
    /// Spans whose trace may still move (their parent unknown yet): announced when it settles,
    /// or at the deadline (kernel monotonic ns) with the id it has then.
    pub pending: VecDeque<(u64, SpanKey)>,
    /// Pending spans dropped, the queue being full.
    pub pending_dropped: u64,
}

impl Announcer {
    pub fn wait(&mut self, deadline: u64, key: SpanKey) {
        if self.pending.len() >= MAX_PENDING {
            self.pending_dropped += 1;
            return;
        }
        self.pending.push_back((deadline, key));
    }
}
