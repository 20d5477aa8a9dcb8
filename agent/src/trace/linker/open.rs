//! The spans the linker holds ([`OpenSpan`], open or waiting for export), the key both ends of
//! a connection compute for a request ([`MirrorKey`]), and the tables of open SERVER spans that
//! the rules by unit of work and the proxy rule pick parents from ([`Serving`]).

use std::{
    collections::{HashMap, hash_map::Entry},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use super::{Tracer, trace_ref::TraceRef};
use crate::{
    protocol::summary::ProtocolSummary,
    trace::{
        ids::SpanId,
        span::{Resource, SpanKind, SpanLink},
    },
};

/// A request on a connection, seen from the client's end: (client addr, server addr, the
/// request's key on the connection). Both ends compute the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(in crate::trace) struct MirrorKey {
    pub(super) client: Endpoint,
    pub(super) server: Endpoint,
    /// The protocol's request key ([`crate::protocol::ProtoEvent::Request`]).
    pub(super) request: u64,
}

impl MirrorKey {
    /// The key of `request` seen at the end `local` (the server's when `server`) of a
    /// connection to `remote`.
    pub(super) fn seen_from(server: bool, local: Endpoint, remote: Endpoint, request: u64) -> Self {
        let (client, server) = if server {
            (remote, local)
        } else {
            (local, remote)
        };
        Self {
            client,
            server,
            request,
        }
    }
}

/// An address as a mirror key holds it: IPv4 in its IPv6-mapped form, so that a v4 socket and a
/// v6 socket with a mapped peer meet, and a key compares and hashes as plain integers (a pair of
/// `SocketAddr`s, hashed field by field with enum tags, flow info and scope id, was a visible
/// share of the linker's time under load, `perf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Endpoint {
    ip: u128,
    port: u16,
}

impl Endpoint {
    pub(super) fn new(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        Self {
            ip: u128::from(ip),
            port: addr.port(),
        }
    }

    /// The address, IPv4 again where it was mapped.
    pub(super) fn addr(self) -> SocketAddr {
        SocketAddr::new(Ipv6Addr::from(self.ip).to_canonical(), self.port)
    }
}

pub(in crate::trace) type SpanKey = (u64, u64);

/// The open SERVER spans of one thread: nearly always one, so it is held inline and a request
/// costs no allocation here.
#[derive(Debug)]
pub(super) enum Serving {
    One(SpanKey),
    Many(Vec<SpanKey>),
}

impl Serving {
    pub(super) fn keys(&self) -> &[SpanKey] {
        match self {
            Self::One(key) => std::slice::from_ref(key),
            Self::Many(keys) => keys,
        }
    }

    pub(super) fn push(&mut self, key: SpanKey) {
        match self {
            Self::One(first) => *self = Self::Many(vec![*first, key]),
            Self::Many(keys) => keys.push(key),
        }
    }

    /// Drops `key`; returns whether none are left.
    pub(super) fn remove(&mut self, key: SpanKey) -> bool {
        match self {
            Self::One(only) => *only == key,
            Self::Many(keys) => {
                keys.retain(|k| *k != key);
                if let [last] = keys.as_slice() {
                    *self = Self::One(*last);
                    false
                } else {
                    keys.is_empty()
                }
            }
        }
    }
}

/// What a request was made or read by, for the rules by unit of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unit {
    /// No rule by unit applies (a multiplexed protocol, or a Go program not followed).
    None,
    Thread(u32),
    /// A goroutine's `g`, in a Go program whose runtime probes are attached.
    Goroutine(u64),
}

/// Whether the two ends of a connection saw the same request under one key: the same
/// [`crate::protocol::forward_key`], or one unknown (0: HTTP/2 streams are named by id, which
/// both ends share anyway).
pub(super) fn same_request(a: u64, b: u64) -> bool {
    a == 0 || b == 0 || a == b
}

/// Adds an open request at `at`; returns whether `at` had open requests already (one lookup
/// answers both).
pub(super) fn add_open<K: std::hash::Hash + Eq>(
    table: &mut FastMap<K, Serving>,
    at: K,
    key: SpanKey,
) -> bool {
    match table.entry(at) {
        Entry::Occupied(mut open) => {
            open.get_mut().push(key);
            true
        }
        Entry::Vacant(none) => {
            none.insert(Serving::One(key));
            false
        }
    }
}

pub(super) fn remove_open<K: std::hash::Hash + Eq>(
    table: &mut FastMap<K, Serving>,
    at: K,
    key: SpanKey,
) {
    if let Entry::Occupied(mut open) = table.entry(at)
        && open.get_mut().remove(key)
    {
        open.remove();
    }
}

/// Hash maps on the per-event path: foldhash is several times faster than the default `SipHash`
/// and still randomly seeded per process.
pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug)]
pub(super) struct OpenSpan {
    pub(super) span_id: SpanId,
    pub(super) trace: TraceRef,
    pub(super) parent: Option<SpanId>,
    pub(super) evidence: &'static str,
    pub(super) links: Vec<SpanLink>,
    pub(super) kind: SpanKind,
    pub(super) pid: u32,
    pub(super) tid: u32,
    pub(super) start_ts: u64,
    pub(super) resource: Arc<Resource>,
    /// Both ends of the connection (which is local follows from `kind`) and the request's key.
    pub(super) mirror: MirrorKey,
    /// What the request asks ([`crate::protocol::forward_key`]), 0 when unknown.
    pub(super) forward: u64,
    /// The unit of work that made or read the request, as the rules by unit know it.
    pub(super) unit: Unit,
    /// The connection is UDP (else TCP).
    pub(super) datagram: bool,
    /// The exchange was read as TLS plaintext (the library probes), not off the socket.
    pub(super) tls: bool,
    /// In the in-band mode, the trace a CLIENT request's first segment carried: the server's
    /// host put its subtree there, so the span is exported in it ([`super::inband`]).
    pub(super) inband_trace: Option<crate::trace::ids::TraceId>,
    /// A CLIENT request's task lineage ([`crate::trace::tasks::Tasks::lineage`]) when it waits
    /// for the task rule.
    pub(super) lineage: Option<Box<[(u64, u64)]>>,
    /// What the budget's shedding rules ask of it ([`super::shedding`]).
    pub(super) budget: BudgetFacts,
    pub(super) finished: Option<Done>,
}

/// What the budget's shedding rules ([`super::shedding`]) ask of an open span.
#[derive(Debug, Default)]
pub(super) struct BudgetFacts {
    /// A CLIENT span whose SERVER end on this host was seen.
    pub(super) served_here: bool,
    /// A CLIENT span without a parent when its request was seen that waited for a rule that
    /// decides later: the hiding rule judges it at export.
    pub(super) waited: bool,
    /// Such a span's candidates (its links), which its drop may leave incomplete.
    /// They wait for it (each counted open in its trace) until it is decided.
    pub(super) ambiguous_with: Box<[TraceRef]>,
    /// Its process hid requests when its request was seen.
    pub(super) hid: bool,
}

impl BudgetFacts {
    pub(super) fn served(served_here: bool) -> Self {
        Self {
            served_here,
            ..Self::default()
        }
    }
}

/// What a finished exchange left for its span. The protocol's part is held inline (the span
/// itself is boxed in the tracer's table, so the table's entries stay a pointer each): a box of
/// its own was one more allocation per span.
#[derive(Debug)]
pub(super) struct Done {
    pub(super) end_ts: u64,
    /// Last request byte to first response byte.
    pub(super) wait_ns: Option<u64>,
    pub(super) summary: ProtocolSummary,
}

impl OpenSpan {
    /// (local, remote) addresses.
    pub(super) fn ends(&self) -> (SocketAddr, SocketAddr) {
        match self.kind {
            SpanKind::Server => (self.mirror.server.addr(), self.mirror.client.addr()),
            SpanKind::Client => (self.mirror.client.addr(), self.mirror.server.addr()),
        }
    }
}

impl Tracer {
    /// Makes an open SERVER span findable by the rules that look for one.
    pub(super) fn register_server(&mut self, pid: u32, unit: Unit, forward: u64, key: SpanKey) {
        /// Threads remembered as event loops; past this, new ones are not (counted).
        const MAX_EVENT_LOOPS: usize = 64 * 1024;
        match unit {
            Unit::Thread(tid) => {
                let serving_already = add_open(&mut self.serving, (pid, tid), key);
                if serving_already && !self.event_loop_threads.contains(&(pid, tid)) {
                    if self.event_loop_threads.len() < MAX_EVENT_LOOPS {
                        self.event_loop_threads.insert((pid, tid));
                        self.stats.event_loop_threads += 1;
                    } else {
                        self.stats.event_loops_unremembered += 1;
                    }
                }
            }
            Unit::Goroutine(g) => {
                add_open(&mut self.goroutine_serving, (pid, g), key);
            }
            Unit::None => {}
        }
        if forward != 0 {
            add_open(&mut self.forwardable, (pid, forward), key);
        }
    }
}
