//! The service graph: requests between services, paired as OpenTelemetry's service-graph
//! connector pairs them (a CLIENT span and the SERVER span whose parent it is), and edges to
//! databases from CLIENT spans alone (`connection_type="database"`). Names as Grafana reads
//! them: `traces_service_graph_request_total`, `…_failed_total`, `…_server_seconds`,
//! `…_client_seconds`; plus sockspan's `sockspan_service_graph_network_seconds`, the client's
//! time minus the server's: what the network and queues took, which only a tracer that sees both
//! ends has.

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use foldhash::fast::RandomState as Fast;

use super::{
    histogram::Histogram,
    red::{push_key_part, seconds},
};
use crate::trace::{
    SpanData,
    ids::SpanId,
    span::{AttrValue, Resource, SpanKind, SpanStatus},
};

/// Spans waiting for their other end; the oldest are dropped past it (counted).
const MAX_PENDING: usize = 16 * 1024;

/// One end of a request: its process (for the service's name), duration and whether it failed.
#[derive(Debug, Clone)]
struct End {
    resource: Arc<Resource>,
    seconds: f64,
    failed: bool,
}

/// An edge: (client, server, `connection_type`).
pub type Edge = (String, String, &'static str);

#[derive(Debug, Default)]
pub struct EdgeStats {
    pub requests: u64,
    pub failed: u64,
    pub server: Histogram,
    pub client: Histogram,
    pub network: Histogram,
}

/// One of an edge's histograms.
pub struct GraphHistogram {
    /// The OTLP instrument's name (unit `s`); Prometheus exporters append `_seconds`.
    pub name: &'static str,
    pub help: &'static str,
    pub pick: fn(&EdgeStats) -> &Histogram,
}

impl GraphHistogram {
    /// The name in the Prometheus text format.
    #[must_use]
    pub fn prometheus_name(&self) -> String {
        format!("{}_seconds", self.name)
    }
}

/// The edges' histograms, as the service-graph connector names them, and sockspan's network one.
pub const HISTOGRAMS: [GraphHistogram; 3] = [
    GraphHistogram {
        name: "traces_service_graph_request_server",
        help: "Time the server took, per edge.",
        pick: |s| &s.server,
    },
    GraphHistogram {
        name: "traces_service_graph_request_client",
        help: "Time the client waited, per edge.",
        pick: |s| &s.client,
    },
    GraphHistogram {
        name: "sockspan_service_graph_network",
        help: "Client time minus server time per edge: the network and queues between them.",
        pick: |s| &s.network,
    },
];

#[derive(Debug, Default)]
pub struct ServiceGraph {
    /// By [`edge_key`]; a span of an edge that exists allocates nothing (the names as
    /// `String`s per span were part of the ~3 % metrics took of the agent's CPU under wrk).
    edges: HashMap<String, (Edge, EdgeStats), Fast>,
    /// CLIENT spans by their id, SERVER spans by their parent's id.
    clients: HashMap<SpanId, End, Fast>,
    servers: HashMap<SpanId, End, Fast>,
    order: VecDeque<(bool, SpanId)>,
    /// Ends dropped before their other end came (one end not traced, or the bound).
    pub unpaired: u64,
    /// The key being looked up, reused.
    key: String,
}

/// Writes into `key` what tells an edge apart ([`push_key_part`]).
fn edge_key(key: &mut String, client: &str, server: &str, kind: &str) {
    key.clear();
    for part in [client, server, kind] {
        push_key_part(key, part);
    }
}

impl ServiceGraph {
    /// The stats of the edge (`client`, `server`, `kind`), made if new (always `Some`: an
    /// `Option` only because a map's entry cannot be asked for by a borrowed key).
    fn edge(&mut self, client: &str, server: &str, kind: &'static str) -> Option<&mut EdgeStats> {
        edge_key(&mut self.key, client, server, kind);
        if !self.edges.contains_key(self.key.as_str()) {
            let edge = (client.to_string(), server.to_string(), kind);
            self.edges
                .insert(self.key.clone(), (edge, EdgeStats::default()));
        }
        self.edges
            .get_mut(self.key.as_str())
            .map(|(_, stats)| stats)
    }

    pub fn record(&mut self, span: &SpanData) {
        let end = End {
            resource: Arc::clone(&span.resource),
            seconds: seconds(span),
            failed: matches!(span.status, SpanStatus::Error(_)),
        };
        match span.kind {
            SpanKind::Client => {
                if let Some(system) = span.attributes.iter().find(|kv| kv.key == "db.system.name") {
                    let system = match &system.value {
                        AttrValue::Int(i) => i.to_string().into(),
                        other => Cow::Borrowed(other.as_str().unwrap_or_default()),
                    };
                    let Some(stats) = self.edge(span.resource.service_name(), &system, "database")
                    else {
                        return;
                    };
                    stats.requests += 1;
                    stats.failed += u64::from(end.failed);
                    stats.client.observe(end.seconds);
                    return;
                }
                match self.servers.remove(&span.span_id) {
                    Some(server) => self.pair(&end, &server),
                    None => self.wait(true, span.span_id, end),
                }
            }
            SpanKind::Server => {
                let Some(parent) = span.parent_span_id else {
                    return;
                };
                match self.clients.remove(&parent) {
                    Some(client) => self.pair(&client, &end),
                    None => self.wait(false, parent, end),
                }
            }
        }
    }

    fn pair(&mut self, client: &End, server: &End) {
        let Some(stats) = self.edge(
            client.resource.service_name(),
            server.resource.service_name(),
            "",
        ) else {
            return;
        };
        stats.requests += 1;
        stats.failed += u64::from(client.failed || server.failed);
        stats.client.observe(client.seconds);
        stats.server.observe(server.seconds);
        stats
            .network
            .observe((client.seconds - server.seconds).max(0.0));
    }

    fn wait(&mut self, client: bool, id: SpanId, end: End) {
        let table = if client {
            &mut self.clients
        } else {
            &mut self.servers
        };
        if table.insert(id, end).is_none() {
            self.order.push_back((client, id));
        }
        while self.order.len() > MAX_PENDING {
            let Some((client, id)) = self.order.pop_front() else {
                break;
            };
            let table = if client {
                &mut self.clients
            } else {
                &mut self.servers
            };
            if table.remove(&id).is_some() {
                self.unpaired += 1;
            }
        }
    }

    /// Every edge, sorted (a stable exposition).
    pub fn edges(&self) -> impl Iterator<Item = (&Edge, &EdgeStats)> {
        let mut all: Vec<(&Edge, &EdgeStats)> = self.edges.values().map(|(e, s)| (e, s)).collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all.into_iter()
    }
}
