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
///
/// A call whose server end was not seen (the service was down, or the call failed before it
/// was served) is named after the service that served other calls to the same address in these
/// traces, so one peer is not drawn twice, once by name and once by address. An address served
/// by several services (a load balancer) keeps its address.
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
    let served_by = |trace: &'_ [Node]| -> HashMap<String, usize> {
        trace
            .iter()
            .enumerate()
            .filter(|(_, n)| n.kind == "SERVER")
            .filter_map(|(i, n)| Some((n.parent.clone()?, i)))
            .collect()
    };
    // Address → the one service seen serving it (None once a second one is seen).
    let mut names: HashMap<&str, Option<&str>> = HashMap::new();
    for trace in traces {
        let servers = served_by(trace);
        for client in trace.iter().filter(|n| n.kind == "CLIENT") {
            if let Some(&s) = servers.get(client.span_id.as_str()) {
                let service = trace[s].service.as_str();
                names
                    .entry(client.peer.as_str())
                    .and_modify(|known| {
                        if *known != Some(service) {
                            *known = None;
                        }
                    })
                    .or_insert(Some(service));
            }
        }
    }
    let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for trace in traces {
        let servers = served_by(trace);
        for client in trace.iter().filter(|n| n.kind == "CLIENT") {
            let duration = client.end.saturating_sub(client.start);
            let served = servers.get(client.span_id.as_str()).map(|&i| &trace[i]);
            let callee = served.map_or_else(
                || {
                    names
                        .get(client.peer.as_str())
                        .copied()
                        .flatten()
                        .unwrap_or(&client.peer)
                        .to_string()
                },
                |s| s.service.clone(),
            );
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
        let mut traces: Vec<Vec<Node>> = (0..4).map(trace).collect();
        for n in traces.iter_mut().flatten().filter(|n| n.service == "web") {
            n.peer = "127.0.0.1:8000".to_string();
        }
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

    #[test]
    fn a_call_nobody_served_is_named_after_the_service_at_that_address() {
        let served = vec![
            node("c1", None, "web", "CLIENT", 0, 10),
            node("s1", Some("c1"), "api", "SERVER", 1, 9),
        ];
        // While api was down: a refused call to the same address, and one to an address two
        // services answer (never merged).
        let refused = vec![node("c2", None, "web", "CLIENT", 20, 21)];
        let mut lb = vec![
            node("c3", None, "web", "CLIENT", 0, 10),
            node("s3", Some("c3"), "db-a", "SERVER", 1, 9),
            node("c4", None, "web", "CLIENT", 0, 10),
            node("s4", Some("c4"), "db-b", "SERVER", 1, 9),
            node("c5", None, "web", "CLIENT", 30, 31),
        ];
        for n in &mut lb {
            if n.kind == "CLIENT" {
                n.peer = "10.0.0.1:5432".to_string();
            }
        }
        let mut first = served;
        first[0].peer = "127.0.0.1:19002".to_string();
        let mut second = refused;
        second[0].peer = "127.0.0.1:19002".to_string();
        let edges = service_map(&[first, second, lb], &|id| id == "c2", 60.0);
        let named: Vec<(&str, &str, u64, u64)> = edges
            .iter()
            .map(|e| (e.client.as_str(), e.server.as_str(), e.calls, e.errors))
            .collect();
        assert_eq!(
            named,
            [
                ("web", "10.0.0.1:5432", 1, 0),
                ("web", "api", 2, 1),
                ("web", "db-a", 1, 0),
                ("web", "db-b", 1, 0)
            ]
        );
    }
}
