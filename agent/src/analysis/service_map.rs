//! The service map: who calls whom, how often, how often it fails, and how long it takes as the
//! caller sees it, with the network's share (client span minus server span).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::critical_path::Node;

/// One caller → callee edge.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Edge {
    pub client: String,
    /// The serving service, or `address:port` when the server end is not on this host.
    pub server: String,
    pub calls: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub rate_per_second: f64,
    /// Client-span duration percentiles, ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Median of (client span − server span): network and queues, ms. `None` for remote peers.
    pub network_p50_ms: Option<f64>,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1e6
}

/// Builds the edges from `traces` (each a list of spans; `errors` says which span ids failed)
/// observed over `window_seconds`.
#[must_use]
pub fn service_map(
    traces: &[Vec<Node>],
    errors: &dyn Fn(&str) -> bool,
    window_seconds: f64,
) -> Vec<Edge> {
    #[derive(Default)]
    struct Acc {
        durations: Vec<u64>,
        network: Vec<u64>,
        errors: u64,
    }
    let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for trace in traces {
        let servers: HashMap<&str, &Node> = trace
            .iter()
            .filter(|n| n.kind == "SERVER")
            .filter_map(|n| Some((n.parent.as_deref()?, n)))
            .collect();
        for client in trace.iter().filter(|n| n.kind == "CLIENT") {
            let duration = client.end.saturating_sub(client.start);
            let served = servers.get(client.span_id.as_str());
            let callee = served.map_or_else(|| client.peer.clone(), |s| s.service.clone());
            let edge = acc.entry((client.service.clone(), callee)).or_default();
            edge.durations.push(duration);
            if let Some(s) = served {
                edge.network
                    .push(duration.saturating_sub(s.end.saturating_sub(s.start)));
            }
            if errors(&client.span_id) {
                edge.errors += 1;
            }
        }
    }
    acc.into_iter()
        .map(|((client, server), mut a)| {
            a.durations.sort_unstable();
            a.network.sort_unstable();
            let calls = a.durations.len() as u64;
            Edge {
                client,
                server,
                calls,
                errors: a.errors,
                error_rate: a.errors as f64 / calls.max(1) as f64,
                rate_per_second: calls as f64 / window_seconds.max(1.0),
                p50_ms: percentile(&a.durations, 50.0),
                p99_ms: percentile(&a.durations, 99.0),
                network_p50_ms: (!a.network.is_empty()).then(|| percentile(&a.network, 50.0)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::analysis::critical_path::test_node as node;

    #[test]
    fn edges_with_counts_errors_latency_and_network() {
        let trace = |n: u64| {
            vec![
                node(&format!("c{n}"), None, "web", "CLIENT", 0, 10_000_000),
                node(
                    &format!("s{n}"),
                    Some(&format!("c{n}")),
                    "api",
                    "SERVER",
                    1_000_000,
                    9_000_000,
                ),
                node(
                    &format!("x{n}"),
                    Some(&format!("s{n}")),
                    "api",
                    "CLIENT",
                    2_000_000,
                    3_000_000,
                ),
            ]
        };
        let traces: Vec<Vec<Node>> = (0..4).map(trace).collect();
        let edges = service_map(&traces, &|id| id == "c0", 2.0);
        assert_eq!(edges.len(), 2);
        let remote = &edges[0];
        assert_eq!(
            (remote.client.as_str(), remote.server.as_str()),
            ("api", "10.0.0.9:80")
        );
        assert_eq!(remote.network_p50_ms, None);
        let web = &edges[1];
        assert_eq!(
            (
                web.client.as_str(),
                web.server.as_str(),
                web.calls,
                web.errors
            ),
            ("web", "api", 4, 1)
        );
        assert!((web.error_rate - 0.25).abs() < 1e-9 && (web.rate_per_second - 2.0).abs() < 1e-9);
        assert!((web.p50_ms - 10.0).abs() < 1e-9);
        assert_eq!(web.network_p50_ms, Some(2.0));
    }
}
