//! The service graph: requests between services, paired as OpenTelemetry's service-graph
//! connector pairs them (a CLIENT span and the SERVER span whose parent it is), and edges to
//! databases from CLIENT spans alone (`connection_type="database"`). Names as Grafana reads
//! them: `traces_service_graph_request_total`, `…_failed_total`, `…_server_seconds`,
//! `…_client_seconds`; plus sockspan's `sockspan_service_graph_network_seconds`, the client's
//! time minus the server's: what the network and queues took, which only a tracer that sees both
//! ends has.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{
    histogram::Histogram,
    red::{attribute, seconds},
};
use crate::trace::{
    SpanData,
    ids::SpanId,
    span::{SpanKind, SpanStatus},
};

/// Spans waiting for their other end; the oldest are dropped past it (counted).
const MAX_PENDING: usize = 16 * 1024;

/// One end of a request: its service, duration and whether it failed.
#[derive(Debug, Clone)]
struct End {
    service: String,
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
    edges: BTreeMap<Edge, EdgeStats>,
    /// CLIENT spans by their id, SERVER spans by their parent's id.
    clients: HashMap<SpanId, End>,
    servers: HashMap<SpanId, End>,
    order: VecDeque<(bool, SpanId)>,
    /// Ends dropped before their other end came (one end not traced, or the bound).
    pub unpaired: u64,
}

impl ServiceGraph {
    pub fn record(&mut self, span: &SpanData) {
        let end = End {
            service: span.resource.service_name().to_string(),
            seconds: seconds(span),
            failed: matches!(span.status, SpanStatus::Error(_)),
        };
        match span.kind {
            SpanKind::Client => {
                if let Some(system) = attribute(span, "db.system.name") {
                    let stats = self
                        .edges
                        .entry((end.service.clone(), system, "database"))
                        .or_default();
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
        let stats = self
            .edges
            .entry((client.service.clone(), server.service.clone(), ""))
            .or_default();
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

    pub fn edges(&self) -> impl Iterator<Item = (&Edge, &EdgeStats)> {
        self.edges.iter()
    }
}
