//! The in-band mode: what the programs said of a request's first segment (the context it
//! carried, or the trace they started for it) against the rules here.

use super::*;
use agent_common::{INBAND_ADOPTED, INBAND_RECEIVED, INBAND_SENT};

const TRACE: [u8; 16] = [0xaa; 16];
const OTHER_TRACE: [u8; 16] = [0xbb; 16];
const CLIENT_SPAN: [u8; 8] = [0xcc; 8];

/// A SERVER request on connection 1 (its note `server_note`, flags and ids, and `header`), and
/// a call its thread made on connection 2 whose segment carried `call`; both finish. What the
/// tracer exported.
fn served_with_a_call(
    t: &mut Tracer,
    server_note: Option<(u32, [u8; 16], [u8; 8])>,
    header: Option<&TraceHeaders>,
    call: ([u8; 16], [u8; 8]),
) -> Vec<SpanData> {
    let server = conn(1, 1, Role::Server, 80, 5000);
    let downstream = conn(2, 1, Role::Client, 6000, 81);
    if let Some((flags, trace, span)) = server_note {
        t.on_inband(1, 100, flags, (trace, span), 0);
    }
    on_req(t, &server, true, header, stamp(10, 7, 100));
    t.on_inband(2, 300, INBAND_SENT, call, 0);
    on_req(t, &downstream, false, None, stamp(20, 7, 300));
    finish(t, &downstream, stamp(20, 7, 300), 30);
    finish(t, &server, stamp(10, 7, 100), 40);
    drain(t)
}

/// The one span of `kind` among `spans`.
fn of_kind(spans: &[SpanData], kind: SpanKind) -> &SpanData {
    spans
        .iter()
        .find(|s| s.kind == kind)
        .expect("span of the kind")
}

/// A SERVER request whose segment carried a context is that CLIENT span's child, in its trace,
/// whatever host the client ran on; the calls its thread makes stay in that trace.
#[test]
fn a_carried_context_is_the_server_span_parent() {
    let mut t = tracer();
    // The thread's call carried the same trace (the programs' serving trace) and its own id.
    let spans = served_with_a_call(
        &mut t,
        Some((INBAND_RECEIVED | INBAND_ADOPTED, TRACE, CLIENT_SPAN)),
        None,
        (TRACE, [0xdd; 8]),
    );
    let (s, c) = (
        of_kind(&spans, SpanKind::Server),
        of_kind(&spans, SpanKind::Client),
    );
    assert_eq!(s.trace_id, TRACE);
    assert_eq!(s.parent_span_id, Some(CLIENT_SPAN));
    assert_eq!(evidence(s), &AttrValue::Str("inband".into()));
    assert_eq!(c.span_id, [0xdd; 8], "the id the segment carried");
    assert_eq!((c.trace_id, c.parent_span_id), (TRACE, Some(s.span_id)));
    assert_eq!(t.stats.parent_from_inband, 1);
    assert_eq!(t.stats.inband_disagreed, 0);
}

/// A root SERVER request takes the trace the programs started for it: the calls its thread
/// made carry that id to the other hosts.
#[test]
fn a_root_takes_the_trace_the_programs_started() {
    let mut t = tracer();
    let spans = served_with_a_call(
        &mut t,
        Some((INBAND_RECEIVED, TRACE, [0; 8])),
        None,
        (TRACE, CLIENT_SPAN),
    );
    assert!(spans.iter().all(|s| s.trace_id == TRACE), "{spans:#?}");
    assert_eq!(t.stats.inband_disagreed, 0);
}

/// The rules here put a CLIENT span under a parent whose trace is known outside with another
/// id (a header gave it): the span goes to the trace its request carried (the server's host put
/// its subtree there), a root with a link to that parent. Never a parent in another trace.
#[test]
fn a_call_whose_carried_trace_disagrees_is_exported_in_it_with_a_link() {
    let mut t = tracer();
    let header = TraceHeaders {
        traceparent: Some("00-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-1111111111111111-01".into()),
        ..TraceHeaders::default()
    };
    let spans = served_with_a_call(&mut t, None, Some(&header), (TRACE, CLIENT_SPAN));
    let (s, c) = (
        of_kind(&spans, SpanKind::Server),
        of_kind(&spans, SpanKind::Client),
    );
    assert_eq!(s.trace_id, OTHER_TRACE);
    assert_eq!((c.trace_id, c.parent_span_id), (TRACE, None));
    assert_eq!(c.links.len(), 1);
    assert_eq!(c.links[0].span_id, s.span_id);
    assert_eq!(c.links[0].reason, "inband-disagreed");
    assert_eq!(t.stats.inband_disagreed, 1);
}

/// A SERVER span paired with its local client (no context carried) gives the trace it started
/// to that client's trace while nothing outside knows the client's id yet: one trace, the
/// started id, so the calls the server made stay in it.
#[test]
fn a_local_client_trace_takes_the_started_id_while_it_is_its_own() {
    let mut t = tracer();
    let client = conn(1, 1, Role::Client, 5000, 80);
    let server = conn(2, 2, Role::Server, 80, 5000);
    on_req(&mut t, &client, false, None, stamp(5, 3, 100));
    t.on_inband(2, 100, INBAND_RECEIVED, (TRACE, [0; 8]), 0);
    on_req(&mut t, &server, true, None, stamp(10, 7, 100));
    finish(&mut t, &server, stamp(10, 7, 100), 40);
    finish(&mut t, &client, stamp(5, 3, 100), 50);
    let spans = drain(&mut t);
    assert_eq!(spans.len(), 2);
    assert!(spans.iter().all(|s| s.trace_id == TRACE), "{spans:#?}");
    let (c, s) = (
        of_kind(&spans, SpanKind::Client),
        of_kind(&spans, SpanKind::Server),
    );
    assert_eq!(s.parent_span_id, Some(c.span_id));
}

/// A trace whose id is known outside keeps it when a trace whose id is not joins it either way:
/// a late client's trace takes the exported server's id.
#[test]
fn a_fixed_trace_id_survives_a_join() {
    let fixed = TraceRef::external(TRACE);
    let own = TraceRef::new(OTHER_TRACE);
    fixed.join(&own);
    assert_eq!(own.id(), TRACE);
    assert_eq!(fixed.id(), TRACE);
    let own = TraceRef::new(OTHER_TRACE);
    let other = TraceRef::new([0x11; 16]);
    own.join(&other);
    assert_eq!(own.id(), [0x11; 16], "neither fixed: the joined trace's id");
}

/// Notes nobody takes expire; a note for one request is never another's.
#[test]
fn notes_are_taken_by_their_own_request_only() {
    let mut t = tracer();
    let server = conn(1, 1, Role::Server, 80, 5000);
    t.on_inband(
        1,
        999,
        INBAND_RECEIVED | INBAND_ADOPTED,
        (TRACE, CLIENT_SPAN),
        0,
    );
    on_req(&mut t, &server, true, None, stamp(10, 7, 100));
    finish(&mut t, &server, stamp(10, 7, 100), 40);
    let spans = drain(&mut t);
    assert_eq!(spans[0].parent_span_id, None);
    assert_ne!(spans[0].trace_id, TRACE);
}

/// On a TLS connection, a request's key is its plaintext offset (a connection seen from its
/// start), not the sequence number of its first record, where the programs noted its context:
/// the sink gives the note to the request that begins in that record's plaintext or a later
/// one's. A TLS request takes no other note, even one whose sequence number equals its key.
#[test]
fn a_tls_request_takes_only_the_note_given_to_it() {
    let mut t = tracer();
    let mut server = conn(1, 1, Role::Server, 443, 5000);
    server.tls = true;
    let mut downstream = conn(2, 1, Role::Client, 6000, 443);
    downstream.tls = true;
    t.on_inband(
        1,
        7_000,
        INBAND_RECEIVED | INBAND_ADOPTED,
        (TRACE, CLIENT_SPAN),
        0,
    );
    t.give_tls_request_note(1, 7_000, 0);
    on_req(&mut t, &server, true, None, stamp(10, 7, 120));
    t.on_inband(2, 9_000, INBAND_SENT, (TRACE, [0xdd; 8]), 0);
    t.give_tls_request_note(2, 9_000, 0);
    on_req(&mut t, &downstream, false, None, stamp(20, 7, 240));
    finish(&mut t, &downstream, stamp(20, 7, 240), 30);
    finish(&mut t, &server, stamp(10, 7, 120), 40);
    let spans = drain(&mut t);
    let (s, c) = (
        of_kind(&spans, SpanKind::Server),
        of_kind(&spans, SpanKind::Client),
    );
    assert_eq!((s.trace_id, s.parent_span_id), (TRACE, Some(CLIENT_SPAN)));
    assert_eq!(c.span_id, [0xdd; 8], "the id its first record carried");
    assert_eq!((c.trace_id, c.parent_span_id), (TRACE, Some(s.span_id)));
    // A note left at a sequence number (the handshake's) that a later request's offset equals.
    t.on_inband(
        1,
        360,
        INBAND_RECEIVED | INBAND_ADOPTED,
        (OTHER_TRACE, CLIENT_SPAN),
        0,
    );
    on_req(&mut t, &server, true, None, stamp(50, 7, 360));
    finish(&mut t, &server, stamp(50, 7, 360), 60);
    let next = drain(&mut t);
    let next = of_kind(&next, SpanKind::Server);
    assert_eq!(next.parent_span_id, None);
    assert_ne!(next.trace_id, OTHER_TRACE);
    // A dropped note is no one's.
    t.on_inband(
        1,
        8_000,
        INBAND_RECEIVED | INBAND_ADOPTED,
        (TRACE, CLIENT_SPAN),
        0,
    );
    t.drop_inband_note(1, 8_000);
    t.give_tls_request_note(1, 8_000, 0);
    on_req(&mut t, &server, true, None, stamp(70, 7, 480));
    finish(&mut t, &server, stamp(70, 7, 480), 80);
    let last = drain(&mut t);
    assert_eq!(of_kind(&last, SpanKind::Server).parent_span_id, None);
}
