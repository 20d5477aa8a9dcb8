//! The linker's unit tests, by rule, and the helpers they share: connections and HTTP/1
//! requests on loopback, a tracer without link delay, and what it exports.
//!
//! - `connections.rs`: both ends of a connection on this host, headers, the link delay, and
//!   connections abandoned with requests open;
//! - `threads.rs`: the thread rule, event-loop threads, and the worker rule;
//! - `tasks_and_callbacks.rs`: the Node.js callback rule and the asyncio task rule;
//! - `proxy.rs`: the proxy rule, alone and against the thread rule;
//! - `hosts.rs`: cross-host linking through the peer agents' announcements;
//! - `inband.rs`: the in-band mode's notes (contexts carried in a TCP header option);
//! - `shedding.rs`: the budget's shedding rules.

mod connections;
mod hosts;
mod inband;
mod proxy;
mod shedding;
mod tasks_and_callbacks;
mod threads;

use std::time::Duration;

use super::*;
use crate::protocol::http1::{Head, Side, head::parse_head, summary::Http1Summary};
use crate::trace::{
    resource::ServiceNameRule,
    span::{AttrValue, SpanData},
};
use agent_common::Role;

fn conn(conn_id: u64, pid: u32, role: Role, local_port: u16, remote_port: u16) -> Connection {
    Connection::loopback_for_test(conn_id, pid, role, local_port, remote_port)
}

fn head(raw: &[u8]) -> Head {
    parse_head(Side::Request, raw)
        .expect("valid")
        .expect("complete")
        .0
}

fn stamp(ts: u64, tid: u32, offset: u64) -> Stamp {
    Stamp { ts, tid, offset }
}

/// A request seen on `conn` at `start`, keyed by its offset as HTTP/1 keys it.
fn on_req(
    t: &mut Tracer,
    conn: &Connection,
    server: bool,
    trace: Option<&TraceHeaders>,
    start: Stamp,
) {
    let end = End {
        server,
        thread_causality: true,
        in_order: true,
        task: 0,
        hidden_work: false,
        hidden_same_ask: false,
        hidden_exact_ask: false,
    };
    t.on_request(conn, end, start.offset, 0, trace, start);
}

fn exchange(request: Head, start: Stamp, end_ts: u64) -> Exchange {
    let response = parse_head(
        Side::Response,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    )
    .expect("valid")
    .expect("complete")
    .0;
    Exchange {
        key: start.offset,
        summary: Http1Summary::new(request, Some(&response)).into(),
        request_start: start,
        request_end: start,
        response_start: Some(Stamp {
            ts: end_ts,
            ..start
        }),
        end: Stamp {
            ts: end_ts,
            ..start
        },
    }
}

fn tracer() -> Tracer {
    Tracer::new(
        TraceConfig {
            link_delay: Duration::ZERO,
            max_spans: 1000,
        },
        Resources::new(ServiceNameRule::Auto),
    )
}

fn drain(t: &mut Tracer) -> Vec<SpanData> {
    let mut out = Vec::new();
    let _ = t.poll(u64::MAX, true, &mut out, usize::MAX);
    out
}

/// A request of an asyncio process (pid 5, loop thread 7) made or read in task `task`.
fn on_task_req(t: &mut Tracer, conn: &Connection, server: bool, task: u64, start: Stamp) {
    let end = End {
        server,
        thread_causality: true,
        in_order: true,
        task,
        hidden_work: false,
        hidden_same_ask: false,
        hidden_exact_ask: false,
    };
    t.on_request(conn, end, start.offset, 0, None, start);
}

fn finish_in_task(t: &mut Tracer, conn: &Connection, start: Stamp, end_ts: u64, task: u64) {
    let get = head(b"GET /a HTTP/1.1\r\n\r\n");
    t.on_exchange(conn, exchange(get, start, end_ts), 0, task);
}

/// A request seen on `conn` asking `method target`, with only the proxy rule's fingerprint.
fn on_asking(t: &mut Tracer, conn: &Connection, server: bool, ask: &str, start: Stamp) {
    on_asking_flagged(t, conn, server, ask, start, (false, false));
}

/// [`on_asking`], the thread's hidden work as the programs flag it (`DATA_HIDDEN_WORK`,
/// `DATA_HIDDEN_SAME_ASK`, which here also means an exact match).
fn on_asking_flagged(
    t: &mut Tracer,
    conn: &Connection,
    server: bool,
    ask: &str,
    start: Stamp,
    (hidden_work, hidden_same_ask): (bool, bool),
) {
    let (method, target) = ask.split_once(' ').expect("METHOD TARGET");
    let end = End {
        server,
        thread_causality: true,
        in_order: true,
        task: 0,
        hidden_work,
        hidden_same_ask,
        hidden_exact_ask: hidden_same_ask,
    };
    let forward = crate::protocol::forward_key(method, target);
    t.on_request(conn, end, start.offset, forward, None, start);
}

fn finish(t: &mut Tracer, conn: &Connection, start: Stamp, end_ts: u64) {
    let get = head(b"GET /x HTTP/1.1\r\n\r\n");
    t.on_exchange(conn, exchange(get, start, end_ts), 0, 0);
}

fn evidence(span: &SpanData) -> &AttrValue {
    &span
        .attributes
        .iter()
        .find(|kv| kv.key == "sockspan.parent.evidence")
        .expect("evidence")
        .value
}
