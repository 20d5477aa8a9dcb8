//! The critical path of a trace, and who owns each piece of it.
//!
//! Walking back from a span's end, the child that finished last before the cursor is on the
//! path; its own critical path is taken recursively, and the cursor moves to its start. Time in
//! a span that no chosen child covers is that span's own time. Each piece is then blamed on a
//! service (a SERVER span's own time: the service working) or a hop (a CLIENT span's own time:
//! the request and response crossing the network and queues, since sockspan sees both ends).

use std::collections::HashMap;

use serde_json::Value;

/// What the analysis needs of a span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub trace_id: String,
    pub span_id: String,
    pub parent: Option<String>,
    pub service: String,
    pub name: String,
    /// `SERVER` or `CLIENT`.
    pub kind: String,
    pub start: u64,
    pub end: u64,
    /// For a CLIENT span, where it called (`server.address:server.port`).
    pub peer: String,
}

impl Node {
    /// From a stored span (the jsonl object).
    #[must_use]
    pub fn from_json(span: &Value) -> Option<Self> {
        let attrs = &span["attributes"];
        Some(Self {
            trace_id: span["trace_id"].as_str().unwrap_or_default().to_string(),
            span_id: span["span_id"].as_str()?.to_string(),
            parent: span["parent_span_id"].as_str().map(str::to_string),
            service: span["resource"]["service.name"]
                .as_str()
                .unwrap_or("unknown_service")
                .to_string(),
            name: span["name"].as_str().unwrap_or_default().to_string(),
            kind: span["kind"].as_str().unwrap_or_default().to_string(),
            start: span["start_time_unix_nano"].as_u64()?,
            end: span["end_time_unix_nano"].as_u64()?,
            peer: format!(
                "{}:{}",
                attrs["server.address"].as_str().unwrap_or("?"),
                attrs["server.port"].as_i64().unwrap_or(0)
            ),
        })
    }
}

/// A stretch of the critical path owned by one span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub span_id: String,
    pub start: u64,
    pub end: u64,
}

/// The critical path below `root` (ids index `nodes`), earliest segment first.
#[must_use]
pub fn critical_path(nodes: &[Node], root: &str) -> Vec<Segment> {
    let mut children: HashMap<&str, Vec<&Node>> = HashMap::new();
    for n in nodes {
        if let Some(p) = &n.parent {
            children.entry(p.as_str()).or_default().push(n);
        }
    }
    let Some(root) = nodes.iter().find(|n| n.span_id == root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(root, root.end, &children, &mut out, 0);
    out.sort_by_key(|s| s.start);
    out
}

/// Adds the critical path of `span` up to `until` to `out`.
fn walk<'a>(
    span: &'a Node,
    until: u64,
    children: &HashMap<&str, Vec<&'a Node>>,
    out: &mut Vec<Segment>,
    depth: usize,
) {
    let end = span.end.min(until);
    let mut cursor = end;
    let mut kids: Vec<&Node> = children
        .get(span.span_id.as_str())
        .cloned()
        .unwrap_or_default();
    // Latest-ending first.
    kids.sort_by_key(|k| std::cmp::Reverse(k.end));
    for child in kids {
        if depth > 64 || child.end <= span.start || child.start >= cursor {
            continue;
        }
        let child_end = child.end.min(cursor);
        if child_end < cursor {
            out.push(Segment {
                span_id: span.span_id.clone(),
                start: child_end,
                end: cursor,
            });
        }
        walk(child, child_end, children, out, depth + 1);
        cursor = child.start.max(span.start).min(cursor);
        if cursor <= span.start {
            break;
        }
    }
    if cursor > span.start {
        out.push(Segment {
            span_id: span.span_id.clone(),
            start: span.start,
            end: cursor,
        });
    }
}

/// Who a segment's time belongs to.
#[must_use]
pub fn owner(nodes: &[Node], span_id: &str) -> String {
    let Some(span) = nodes.iter().find(|n| n.span_id == span_id) else {
        return "unknown".to_string();
    };
    if span.kind == "SERVER" {
        return format!("service {}", span.service);
    }
    // A client span's own time is the hop to whoever served it (or to the remote address when
    // the server end is not on this host).
    let server = nodes
        .iter()
        .find(|n| n.parent.as_deref() == Some(span_id) && n.kind == "SERVER")
        .map_or_else(|| span.peer.clone(), |n| n.service.clone());
    format!("hop {} → {}", span.service, server)
}

/// A span for tests: `node("id", Some("parent"), "service", "SERVER", start, end)`.
#[cfg(test)]
pub fn test_node(
    id: &str,
    parent: Option<&str>,
    service: &str,
    kind: &str,
    start: u64,
    end: u64,
) -> Node {
    Node {
        trace_id: String::new(),
        span_id: id.into(),
        parent: parent.map(str::to_string),
        service: service.into(),
        name: "op".into(),
        kind: kind.into(),
        start,
        end,
        peer: "10.0.0.9:80".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_node as node;

    /// curl → frontend; frontend calls features (short) then model (long, slow server).
    fn chain() -> Vec<Node> {
        vec![
            node("c", None, "curl", "CLIENT", 0, 100),
            node("f", Some("c"), "frontend", "SERVER", 5, 95),
            node("ff", Some("f"), "frontend", "CLIENT", 10, 20),
            node("fs", Some("ff"), "features", "SERVER", 12, 18),
            node("fm", Some("f"), "frontend", "CLIENT", 25, 85),
            node("m", Some("fm"), "model", "SERVER", 30, 80),
        ]
    }

    #[test]
    fn the_path_covers_the_root_once_and_follows_the_slow_call() {
        let nodes = chain();
        let path = critical_path(&nodes, "c");
        let total: u64 = path.iter().map(|s| s.end - s.start).sum();
        assert_eq!(total, 100, "{path:?}");
        let mut by_owner: HashMap<String, u64> = HashMap::new();
        for s in &path {
            *by_owner.entry(owner(&nodes, &s.span_id)).or_default() += s.end - s.start;
        }
        assert_eq!(by_owner["service model"], 50);
        assert_eq!(by_owner["hop frontend → model"], 10);
        assert_eq!(by_owner["hop curl → frontend"], 10);
        assert_eq!(by_owner["hop frontend → features"], 4);
        assert_eq!(by_owner["service features"], 6);
        assert_eq!(by_owner["service frontend"], 20);
    }

    #[test]
    fn overlapping_children_are_not_counted_twice() {
        let nodes = vec![
            node("r", None, "api", "SERVER", 0, 100),
            node("a", Some("r"), "api", "CLIENT", 10, 90),
            node("b", Some("r"), "api", "CLIENT", 20, 60),
        ];
        let path = critical_path(&nodes, "r");
        assert_eq!(path.iter().map(|s| s.end - s.start).sum::<u64>(), 100);
        assert!(
            path.iter().all(|s| s.span_id != "b"),
            "b is hidden behind a: {path:?}"
        );
        assert_eq!(owner(&nodes, "a"), "hop api → 10.0.0.9:80");
    }
}
