//! The thread rule (one request served by the writing thread), event-loop threads, and the
//! worker rule of multiplexing servers.

use super::*;

#[test]
fn a_thread_serving_goes_from_one_to_many_and_back() {
    let mut serving = Serving::One((1, 0));
    assert!(!serving.remove((9, 9)), "another key leaves it as it was");
    serving.push((2, 0));
    serving.push((3, 0));
    assert_eq!(serving.keys(), &[(1, 0), (2, 0), (3, 0)]);
    assert!(!serving.remove((2, 0)));
    assert!(!serving.remove((1, 0)));
    assert!(matches!(serving, Serving::One((3, 0))));
    assert!(serving.remove((3, 0)), "the last key empties it");
}

#[test]
fn a_thread_seen_serving_two_requests_at_once_is_an_event_loop() {
    let mut t = tracer();
    let (r1, r2, r3) = (
        conn(1, 5, Role::Server, 80, 5001),
        conn(2, 5, Role::Server, 80, 5002),
        conn(3, 5, Role::Server, 80, 5003),
    );
    let x = conn(4, 5, Role::Client, 6000, 90);
    on_req(&mut t, &r1, true, None, stamp(10, 7, 0));
    on_req(&mut t, &r2, true, None, stamp(11, 7, 0));
    finish_in_task(&mut t, &r1, stamp(10, 7, 0), 12, 0);
    finish_in_task(&mut t, &r2, stamp(11, 7, 0), 13, 0);
    // Later one request alone is open on the thread: a write is no longer taken for its.
    on_req(&mut t, &r3, true, None, stamp(20, 7, 0));
    on_req(&mut t, &x, false, None, stamp(21, 7, 0));
    let spans = {
        finish_in_task(&mut t, &x, stamp(21, 7, 0), 22, 0);
        finish_in_task(&mut t, &r3, stamp(20, 7, 0), 23, 0);
        drain(&mut t)
    };
    assert_eq!(t.stats.event_loop_threads, 1);
    let x = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client)
        .expect("client");
    assert_eq!(x.parent_span_id, None);
    assert_eq!(x.links.len(), 1);
    assert_eq!(
        x.links[0].reason,
        "an event-loop thread serves every request in flight"
    );
}

/// A process running asyncio whose tasks are not followed: its main thread (the loop's, with
/// asyncio's servers) gives links from its first request on; its other threads, and the main
/// thread once the process is forgotten, keep the thread rule.
#[test]
fn an_unfollowed_asyncio_processes_main_thread_gives_links_not_a_parent() {
    let mut t = tracer();
    t.asyncio_unfollowed(5);
    assert_eq!(t.stats.asyncio_processes_unfollowed, 1);
    let one_call = |t: &mut Tracer, id: u64, tid: u32, ts: u64| {
        let inbound = conn(id, 5, Role::Server, 80, 5000 + id as u16);
        let call = conn(id + 1, 5, Role::Client, 6000 + id as u16, 90);
        on_req(t, &inbound, true, None, stamp(ts, tid, 0));
        on_req(t, &call, false, None, stamp(ts + 1, tid, 0));
        finish_in_task(t, &call, stamp(ts + 1, tid, 0), ts + 2, 0);
        finish_in_task(t, &inbound, stamp(ts, tid, 0), ts + 3, 0);
        let spans = drain(t);
        let server_id = spans
            .iter()
            .find(|s| s.kind == SpanKind::Server)
            .expect("server")
            .span_id;
        let client = spans
            .into_iter()
            .find(|s| s.kind == SpanKind::Client)
            .expect("client");
        (server_id, client)
    };
    let (server, on_main) = one_call(&mut t, 10, 5, 10);
    assert_eq!(on_main.parent_span_id, None);
    assert_eq!(on_main.links.len(), 1);
    assert_eq!(on_main.links[0].span_id, server);
    let (server, on_other) = one_call(&mut t, 20, 8, 20);
    assert_eq!(on_other.parent_span_id, Some(server));
    t.forget_unfollowed(5);
    let (server, forgotten) = one_call(&mut t, 30, 5, 30);
    assert_eq!(forgotten.parent_span_id, Some(server));
}

#[test]
fn a_thread_serving_two_requests_gives_links_not_a_parent() {
    let mut t = tracer();
    let get = head(b"GET /a HTTP/1.1\r\n\r\n");
    let a = conn(1, 2, Role::Server, 80, 5000);
    let b = conn(2, 2, Role::Server, 80, 5001);
    let out = conn(3, 2, Role::Client, 6000, 90);
    on_req(
        &mut t,
        &a,
        true,
        get.headers.trace.as_deref(),
        stamp(10, 7, 0),
    );
    on_req(
        &mut t,
        &b,
        true,
        get.headers.trace.as_deref(),
        stamp(11, 7, 0),
    );
    on_req(
        &mut t,
        &out,
        false,
        get.headers.trace.as_deref(),
        stamp(12, 7, 0),
    );
    t.on_exchange(&out, exchange(get.clone(), stamp(12, 7, 0), 13), 0, 0);
    let spans = drain(&mut t);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].parent_span_id, None);
    assert_eq!(spans[0].links.len(), 2);
    assert_eq!(t.stats.ambiguous, 1);
}

#[test]
fn a_pool_threads_call_belongs_to_the_stream_it_answers_next() {
    use crate::protocol::{Answered, StreamIo};
    let mut t = tracer();
    t.allow_worker_rule(5);
    let (s, c) = (
        conn(1, 5, Role::Server, 80, 5001),
        conn(2, 5, Role::Client, 6000, 90),
    );
    let req = || head(b"POST /a.B/C HTTP/1.1\r\nHost: x\r\n\r\n");
    let end = |server, lone| End {
        server,
        thread_causality: lone,
        in_order: false,
        task: 0,
        hidden_work: false,
        hidden_same_ask: false,
        hidden_exact_ask: false,
    };
    let wrote = |streams: &[u64]| {
        let mut answered = Answered::default();
        for &id in streams {
            answered.add(id);
        }
        StreamIo::Wrote(answered)
    };
    // I/O thread 7 reads streams 1, 3 and 5; it writes a call of its own too (nobody's).
    for (id, ts) in [(1, 10), (3, 11), (5, 12)] {
        t.on_stream_io(&s, StreamIo::Read { placed: true }, 7, ts);
        t.on_request(&s, end(true, false), id, 0, None, stamp(ts, 7, id));
    }
    t.on_request(&c, end(false, true), 11, 0, None, stamp(13, 7, 11));
    // Worker 8 calls (stream 1 of the client connection) and answers 1 alone; worker 9
    // calls (3) and answers 3 and 5 in one write: either may have been its.
    t.on_request(&c, end(false, true), 1, 0, None, stamp(14, 8, 1));
    t.on_request(&c, end(false, true), 3, 0, None, stamp(15, 9, 3));
    for (id, start, end_ts) in [(11, 13, 16), (1, 14, 17), (3, 15, 18)] {
        t.on_exchange(&c, exchange(req(), stamp(start, 7, id), end_ts), 0, 0);
    }
    t.on_stream_io(&s, wrote(&[1]), 8, 19);
    t.on_exchange(&s, exchange(req(), stamp(10, 7, 1), 19), 0, 0);
    t.on_stream_io(&s, wrote(&[3, 5]), 9, 20);
    for (id, start) in [(3, 11), (5, 12)] {
        t.on_exchange(&s, exchange(req(), stamp(start, 7, id), 20), 0, 0);
    }
    let mut spans = drain(&mut t);
    spans.sort_by_key(|s| s.start_unix_nano);
    let [s1, _s3, _s5, io_call, c1, c3] = spans.as_slice() else {
        panic!("six spans: {spans:#?}")
    };
    assert_eq!(c1.parent_span_id, Some(s1.span_id));
    assert_eq!(c1.trace_id, s1.trace_id);
    assert_eq!(evidence(c1), &AttrValue::Str("worker".into()));
    assert_eq!(c3.parent_span_id, None, "3 or 5");
    assert_eq!(io_call.parent_span_id, None, "an I/O thread's call");
    assert_eq!(t.stats.parent_from_worker, 1);
    assert_eq!(t.worker_stats().waited, 2);
}
