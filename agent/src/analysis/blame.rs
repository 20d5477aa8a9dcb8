//! "Why is it slow": for an endpoint and a percentile, the share of its latency each service and
//! each network hop owns on the critical path, over the requests around that percentile.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::critical_path::{Node, critical_path, owner};

/// One owner's part of the endpoint's latency.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlameRow {
    /// `service NAME` or `hop CLIENT → SERVER`.
    pub owner: String,
    /// Mean share of the endpoint's duration, 0..1.
    pub share: f64,
    /// Mean time on the critical path, ns.
    pub mean_ns: u64,
    /// Traces among those analysed where this owner took the largest share, largest first (at
    /// most [`EXAMPLES`]): where to look next.
    #[serde(default)]
    pub examples: Vec<String>,
}

/// Example traces kept per row.
pub const EXAMPLES: usize = 3;

/// Fewer requests analysed than this, and the shares are one request's story, not a pattern.
pub const FEW_REQUESTS: usize = 10;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Blame {
    pub service: String,
    pub operation: String,
    pub percentile: f64,
    /// The endpoint's duration at the percentile, ns.
    pub threshold_ns: u64,
    /// Requests of the endpoint found.
    pub matched: usize,
    /// Requests analysed: those ranked within five points of the percentile (for p99: the slowest
    /// 6 %), at least one.
    pub considered: usize,
    pub rows: Vec<BlameRow>,
}

/// One owner's time over the requests analysed.
#[derive(Default)]
struct OwnerTotals {
    /// Sum of its shares of each request.
    share: f64,
    ns: u64,
    /// (share, trace index) of each request it appears in.
    seen: Vec<(f64, usize)>,
}

/// Analyses `traces` (each a list of spans) for the endpoint `service` / `operation`.
#[must_use]
pub fn blame(traces: &[Vec<Node>], service: &str, operation: &str, percentile: f64) -> Blame {
    // Every request of the endpoint: (duration, trace index, span id). SERVER spans are the
    // endpoint as its service sees it; a CLIENT-only endpoint (curl) is accepted too.
    let mut hits: Vec<(u64, usize, String)> = Vec::new();
    for (i, trace) in traces.iter().enumerate() {
        let mut own: Vec<&Node> = trace
            .iter()
            .filter(|n| n.service == service && n.name == operation)
            .collect();
        if own.iter().any(|n| n.kind == "SERVER") {
            own.retain(|n| n.kind == "SERVER");
        }
        hits.extend(
            own.into_iter()
                .map(|n| (n.end.saturating_sub(n.start), i, n.span_id.clone())),
        );
    }
    hits.sort_by_key(|h| h.0);
    let matched = hits.len();
    let p = percentile.clamp(0.0, 100.0);
    let rank = |q: f64| ((q / 100.0) * matched.saturating_sub(1) as f64).round() as usize;
    let threshold_ns = hits.get(rank(p)).map_or(0, |h| h.0);
    let (low, high) = (rank((p - 5.0).max(0.0)), rank((p + 5.0).min(100.0)));
    let chosen = hits
        .get(low..=high.min(matched.saturating_sub(1)))
        .unwrap_or_default();
    let mut totals: HashMap<String, OwnerTotals> = HashMap::new();
    for (duration, trace, span) in chosen {
        let nodes = &traces[*trace];
        let mut per_owner: HashMap<String, u64> = HashMap::new();
        for seg in critical_path(nodes, span) {
            *per_owner.entry(owner(nodes, &seg.span_id)).or_default() += seg.end - seg.start;
        }
        for (who, ns) in per_owner {
            let share = ns as f64 / (*duration).max(1) as f64;
            let entry = totals.entry(who).or_default();
            entry.share += share;
            entry.ns += ns;
            entry.seen.push((share, *trace));
        }
    }
    let considered = chosen.len();
    let mut rows: Vec<BlameRow> = totals
        .into_iter()
        .map(
            |(
                owner,
                OwnerTotals {
                    share,
                    ns,
                    mut seen,
                },
            )| {
                seen.sort_by(|a, b| b.0.total_cmp(&a.0));
                let mut examples: Vec<String> = Vec::with_capacity(EXAMPLES);
                for (_, trace) in seen {
                    let id = traces[trace].first().map(|n| n.trace_id.clone());
                    if let Some(id) = id.filter(|id| !id.is_empty() && !examples.contains(id)) {
                        examples.push(id);
                    }
                    if examples.len() == EXAMPLES {
                        break;
                    }
                }
                BlameRow {
                    owner,
                    share: share / considered.max(1) as f64,
                    mean_ns: ns / considered.max(1) as u64,
                    examples,
                }
            },
        )
        .collect();
    rows.sort_by(|a, b| {
        b.share
            .total_cmp(&a.share)
            .then_with(|| a.owner.cmp(&b.owner))
    });
    Blame {
        service: service.to_string(),
        operation: operation.to_string(),
        percentile: p,
        threshold_ns,
        matched,
        considered,
        rows,
    }
}

/// The blame as the table `sockspan blame` prints.
#[must_use]
pub fn table(b: &Blame) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "why is {} \"{}\" slow at p{}: {:.1} ms at that percentile; {} of {} requests analysed",
        b.service,
        b.operation,
        b.percentile,
        b.threshold_ns as f64 / 1e6,
        b.considered,
        b.matched
    );
    let _ = writeln!(
        out,
        "{:>7}  {:>10}  WHERE THE TIME GOES (critical path)",
        "SHARE", "MEAN"
    );
    for row in &b.rows {
        let _ = writeln!(
            out,
            "{:>6.1}%  {:>7.2} ms  {}",
            row.share * 100.0,
            row.mean_ns as f64 / 1e6,
            row.owner
        );
    }
    if b.considered < FEW_REQUESTS {
        let _ = writeln!(
            out,
            "only {} request(s) analysed: these shares describe them, not a pattern; widen --lookback-minutes or wait for more traffic",
            b.considered
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(
        id: &str,
        parent: Option<&str>,
        service: &str,
        name: &str,
        kind: &str,
        start: u64,
        end: u64,
    ) -> Node {
        Node {
            name: name.into(),
            ..crate::analysis::critical_path::test_node(id, parent, service, kind, start, end)
        }
    }

    /// A frontend request calling a model whose time is `model_ns`.
    fn request(model_ns: u64) -> Vec<Node> {
        vec![
            node("f", None, "frontend", "GET /p", "SERVER", 0, 20 + model_ns),
            node(
                "fm",
                Some("f"),
                "frontend",
                "POST /score",
                "CLIENT",
                5,
                15 + model_ns,
            ),
            node(
                "m",
                Some("fm"),
                "model",
                "POST /score",
                "SERVER",
                10,
                10 + model_ns,
            ),
        ]
    }

    #[test]
    fn the_slow_tail_is_blamed_on_the_slow_service() {
        let mut traces: Vec<Vec<Node>> = (0..95).map(|_| request(1_000)).collect();
        traces.extend((0..5).map(|_| request(1_000_000)));
        let b = blame(&traces, "frontend", "GET /p", 99.0);
        assert_eq!(b.matched, 100);
        assert_eq!(b.threshold_ns, 1_000_020);
        assert_eq!(b.rows[0].owner, "service model");
        assert!(b.rows[0].share > 0.9, "{b:?}");
        let text = table(&b);
        assert!(
            text.contains("service model") && text.contains("p99"),
            "{text}"
        );
        // At the median the frontend's own 20 ns of 1020 barely register; the model still leads.
        let median = blame(&traces, "frontend", "GET /p", 50.0);
        assert_eq!(median.threshold_ns, 1_020);
        let shares: f64 = median.rows.iter().map(|r| r.share).sum();
        assert!(
            (shares - 1.0).abs() < 1e-9,
            "shares add up to the whole: {median:?}"
        );
    }

    #[test]
    fn rows_name_the_traces_where_their_owner_weighed_most() {
        let mut traces: Vec<Vec<Node>> = (0..20u64).map(|i| request(1_000 * (i + 1))).collect();
        for (i, trace) in traces.iter_mut().enumerate() {
            for n in trace.iter_mut() {
                n.trace_id = format!("t{i:02}");
            }
        }
        let b = blame(&traces, "frontend", "GET /p", 99.0);
        let model = b
            .rows
            .iter()
            .find(|r| r.owner == "service model")
            .expect("row");
        // The slowest requests give the model its largest shares.
        assert_eq!(model.examples, ["t19", "t18"]);
        assert!(
            table(&b).contains("only 2 request(s) analysed"),
            "{}",
            table(&b)
        );
        let more: Vec<Vec<Node>> = (0..200u64).map(|i| request(1_000 * (i + 1))).collect();
        let many = blame(&more, "frontend", "GET /p", 50.0);
        assert!(!table(&many).contains("only"), "{}", table(&many));
    }

    #[test]
    fn nothing_found_is_an_empty_answer() {
        let b = blame(&[request(5)], "nobody", "GET /", 99.0);
        assert_eq!((b.matched, b.considered, b.rows.len()), (0, 0, 0));
    }
}
