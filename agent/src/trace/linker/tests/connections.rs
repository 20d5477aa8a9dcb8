//! Both ends of a connection on this host, `traceparent` headers, the link delay, and
//! connections abandoned with their requests open.

use std::net::SocketAddr;

use super::*;

#[test]
fn endpoints_of_both_families_meet_and_come_back_as_sent() {
    let v4: SocketAddr = "127.0.0.1:8080".parse().expect("v4");
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:8080".parse().expect("mapped");
    let v6: SocketAddr = "[::1]:8080".parse().expect("v6");
    assert_eq!(Endpoint::new(v4), Endpoint::new(mapped));
    assert_ne!(Endpoint::new(v4), Endpoint::new(v6));
    assert_ne!(
        Endpoint::new(v4),
        Endpoint::new("127.0.0.1:8081".parse().expect("port"))
    );
    assert_eq!(Endpoint::new(v4).addr(), v4);
    assert_eq!(Endpoint::new(mapped).addr(), v4);
    assert_eq!(Endpoint::new(v6).addr(), v6);
}

#[test]
fn server_seen_before_its_client_joins_the_client_trace_with_its_subtree() {
    let mut t = tracer();
    let get = head(b"GET /a HTTP/1.1\r\n\r\n");
    // Process 2 serves on :80 (connection from :5000); its thread 20 then calls out.
    let server_conn = conn(1, 2, Role::Server, 80, 5000);
    let downstream = conn(2, 2, Role::Client, 6000, 90);
    let client_conn = conn(3, 1, Role::Client, 5000, 80);
    on_req(
        &mut t,
        &server_conn,
        true,
        get.headers.trace.as_deref(),
        stamp(10, 20, 0),
    );
    on_req(
        &mut t,
        &downstream,
        false,
        get.headers.trace.as_deref(),
        stamp(11, 20, 0),
    );
    // Only now does the client end appear (its event came late through the ring).
    on_req(
        &mut t,
        &client_conn,
        false,
        get.headers.trace.as_deref(),
        stamp(5, 10, 0),
    );
    for (c, s, end) in [
        (&downstream, 11, 12),
        (&server_conn, 10, 13),
        (&client_conn, 5, 14),
    ] {
        t.on_exchange(c, exchange(get.clone(), stamp(s, 0, 0), end), 0, 0);
    }
    let spans = drain(&mut t);
    assert_eq!(spans.len(), 3);
    let (down, server, client) = (&spans[0], &spans[1], &spans[2]);
    assert_eq!(server.parent_span_id, Some(client.span_id));
    assert_eq!(down.parent_span_id, Some(server.span_id));
    assert!(
        spans.iter().all(|s| s.trace_id == client.trace_id),
        "one trace"
    );
    assert_eq!(t.stats.roots, 1);
}

#[test]
fn traceparent_is_adopted_for_its_request_only() {
    let mut t = tracer();
    let with = head(b"GET /a HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n");
    let without = head(b"GET /b HTTP/1.1\r\n\r\n");
    let c = conn(1, 2, Role::Server, 80, 5000);
    on_req(
        &mut t,
        &c,
        true,
        with.headers.trace.as_deref(),
        stamp(10, 7, 0),
    );
    t.on_exchange(&c, exchange(with, stamp(10, 7, 0), 11), 0, 0);
    on_req(
        &mut t,
        &c,
        true,
        without.headers.trace.as_deref(),
        stamp(12, 7, 100),
    );
    t.on_exchange(&c, exchange(without, stamp(12, 7, 100), 13), 0, 0);
    let spans = drain(&mut t);
    assert_eq!(
        crate::trace::ids::HexId::new(&spans[0].trace_id).as_str(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        spans[0].parent_span_id,
        Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
    );
    assert_ne!(spans[1].trace_id, spans[0].trace_id);
    assert_eq!(spans[1].parent_span_id, None);
}

#[test]
fn only_unsettled_traces_wait_for_the_link_delay() {
    let mut t = Tracer::new(
        TraceConfig {
            link_delay: Duration::from_millis(500),
            max_spans: 1000,
        },
        Resources::new(ServiceNameRule::Auto),
    );
    // A server whose client was not seen may still join the client's trace: it waits.
    let get = head(b"GET /a HTTP/1.1\r\n\r\n");
    let s = conn(1, 2, Role::Server, 80, 5000);
    on_req(
        &mut t,
        &s,
        true,
        get.headers.trace.as_deref(),
        stamp(10, 7, 0),
    );
    t.on_exchange(&s, exchange(get.clone(), stamp(10, 7, 0), 11), 1_000, 0);
    // A client with no parent starts a trace nothing can move: it goes at once.
    let c = conn(3, 4, Role::Client, 6000, 81);
    on_req(
        &mut t,
        &c,
        false,
        get.headers.trace.as_deref(),
        stamp(12, 9, 0),
    );
    t.on_exchange(&c, exchange(get, stamp(12, 9, 0), 13), 1_000, 0);
    let mut out = Vec::new();
    let _ = t.poll(1_000, false, &mut out, usize::MAX);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, SpanKind::Client);
    let _ = t.poll(1_000 + 499_000_000, false, &mut out, usize::MAX);
    assert_eq!(out.len(), 1);
    let _ = t.poll(1_000 + 500_000_000, false, &mut out, usize::MAX);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].kind, SpanKind::Server);
    assert_eq!(&*out[1].name, "GET /a");
    assert_eq!(t.held(), 0);
}

#[test]
fn requests_of_an_abandoned_connection_are_nobodys_parent() {
    let mut t = tracer();
    let get = head(b"GET /a HTTP/1.1\r\n\r\n");
    let served = conn(1, 2, Role::Server, 80, 5000);
    let out = conn(2, 2, Role::Client, 6000, 90);
    on_req(&mut t, &served, true, None, stamp(10, 7, 0));
    // The connection was evicted with its request open: it will never finish.
    t.abandon_connections(&[1]);
    on_req(&mut t, &out, false, None, stamp(12, 7, 0));
    t.on_exchange(&out, exchange(get, stamp(12, 7, 0), 13), 0, 0);
    let spans = drain(&mut t);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].parent_span_id, None);
    assert_eq!(t.stats.abandoned, 1);
    assert_eq!(t.held(), 0);
}

#[test]
fn an_exported_spans_box_holds_the_next_span_and_nothing_of_the_last() {
    let mut t = tracer();
    for round in 0..3u64 {
        let server = conn(10 + round, 5, Role::Server, 80, 5000 + round as u16);
        on_req(&mut t, &server, true, None, stamp(10 * round + 1, 7, 0));
        assert_eq!(t.span_boxes.spare(), 0, "the spare box is taken");
        finish(&mut t, &server, stamp(10 * round + 1, 7, 0), 10 * round + 5);
        let spans = drain(&mut t);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].start_unix_nano + 4, spans[0].end_unix_nano);
        assert_eq!(t.span_boxes.spare(), 1, "the exported span's box is kept");
    }
}
