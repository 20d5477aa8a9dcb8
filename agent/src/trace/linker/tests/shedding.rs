//! The budget's shedding rules ([`super::super::shedding`]): hidden work refuses rules by thread
//! and (when a hidden request asks the same) the proxy rule; a hiding process drops parentless
//! CLIENT spans with their subtree; a shed pair drops the half of a request it saw; and which
//! connections are edges.

use super::*;

/// A tracer whose budget is on, with process `pid` hiding a shed SERVER connection.
fn shedding_tracer(hiding: Option<u32>) -> Tracer {
    let mut t = tracer();
    t.enable_shedding();
    if let Some(pid) = hiding {
        t.server_hidden(pid, true, 0);
    }
    t
}

use super::on_asking_flagged as on_flagged;

/// A request of a thread without hidden work ([`on_flagged`] with no flag).
fn on_visible(t: &mut Tracer, conn: &Connection, server: bool, ask: &str, start: Stamp) {
    on_flagged(t, conn, server, ask, start, (false, false));
}

#[test]
fn a_thread_with_hidden_work_names_no_parent_and_both_traces_are_dropped() {
    let mut t = shedding_tracer(Some(2));
    let served = conn(1, 2, Role::Server, 80, 5000);
    let call = conn(2, 2, Role::Client, 6000, 90);
    on_visible(&mut t, &served, true, "GET /a", stamp(10, 7, 0));
    on_flagged(
        &mut t,
        &call,
        false,
        "GET /b",
        stamp(11, 7, 0),
        (true, false),
    );
    finish(&mut t, &call, stamp(11, 7, 0), 12);
    finish(&mut t, &served, stamp(10, 7, 0), 13);
    assert!(drain(&mut t).is_empty(), "neither may be exported");
    assert_eq!(t.stats.hidden_work_refusals, 1);
    assert_eq!(t.stats.spans_shed, 2);
    assert_eq!(
        t.stats.parent_from_thread, 1,
        "the rule named it; the refusal undid it"
    );
}

#[test]
fn without_hidden_work_the_thread_rule_holds_while_shedding() {
    let mut t = shedding_tracer(Some(2));
    let served = conn(1, 2, Role::Server, 80, 5000);
    let call = conn(2, 2, Role::Client, 6000, 90);
    on_visible(&mut t, &served, true, "GET /a", stamp(10, 7, 0));
    on_visible(&mut t, &call, false, "GET /b", stamp(11, 7, 0));
    finish(&mut t, &call, stamp(11, 7, 0), 12);
    finish(&mut t, &served, stamp(10, 7, 0), 13);
    let spans = drain(&mut t);
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].parent_span_id, Some(spans[1].span_id));
    assert_eq!(t.stats.spans_shed, 0);
}

#[test]
fn a_forward_is_refused_only_when_a_hidden_request_asks_the_same() {
    for (same_ask, exported) in [(false, 2), (true, 0)] {
        let mut t = shedding_tracer(Some(2));
        // An event loop (thread 7) serving /a and /b, and hidden work besides.
        let a = conn(1, 2, Role::Server, 80, 5000);
        let b = conn(2, 2, Role::Server, 80, 5001);
        let up = conn(3, 2, Role::Client, 6000, 90);
        on_visible(&mut t, &a, true, "GET /a", stamp(10, 7, 0));
        on_visible(&mut t, &b, true, "GET /b", stamp(11, 7, 0));
        on_flagged(
            &mut t,
            &up,
            false,
            "GET /b",
            stamp(12, 7, 0),
            (true, same_ask),
        );
        finish(&mut t, &up, stamp(12, 7, 0), 13);
        finish(&mut t, &b, stamp(11, 7, 0), 14);
        let spans = drain(&mut t);
        // `a` is still open: only the forward and `b` can be exported.
        assert_eq!(spans.len(), exported, "same ask {same_ask}: {spans:?}");
        if exported == 2 {
            assert_eq!(spans[0].parent_span_id, Some(spans[1].span_id));
        }
    }
}

#[test]
fn a_hiding_process_drops_a_parentless_call_with_its_subtree() {
    for (hiding, exported) in [(None, 2), (Some(2), 0)] {
        let mut t = shedding_tracer(hiding);
        // Thread 9 of process 2 serves nothing; its call's server end is process 3's.
        let call = conn(1, 2, Role::Client, 6000, 90);
        let below = conn(2, 3, Role::Server, 90, 6000);
        on_visible(&mut t, &call, false, "GET /c", stamp(10, 9, 0));
        on_visible(&mut t, &below, true, "GET /c", stamp(11, 4, 0));
        finish(&mut t, &below, stamp(11, 4, 0), 12);
        finish(&mut t, &call, stamp(10, 9, 0), 13);
        let spans = drain(&mut t);
        assert_eq!(spans.len(), exported, "hiding {hiding:?}");
        assert_eq!(t.stats.spans_shed, 2 - exported as u64);
    }
}

#[test]
fn a_shed_pair_drops_the_half_of_a_request_it_saw() {
    let mut t = shedding_tracer(None);
    // wrk's end (process 1) and the server's (process 2) of one connection, shed as a pair.
    let client = conn(1, 1, Role::Client, 6000, 80);
    let server = conn(2, 2, Role::Server, 80, 6000);
    t.shed_pair(1, 2);
    // A request only the server end saw (the client end had switched first)...
    on_visible(&mut t, &server, true, "GET /s", stamp(10, 7, 100));
    finish(&mut t, &server, stamp(10, 7, 100), 11);
    // ... and one only the client end saw.
    on_visible(&mut t, &client, false, "GET /c", stamp(12, 8, 200));
    finish(&mut t, &client, stamp(12, 8, 200), 13);
    // And one both saw: kept.
    on_visible(&mut t, &client, false, "GET /b", stamp(14, 8, 300));
    on_visible(&mut t, &server, true, "GET /b", stamp(15, 7, 300));
    finish(&mut t, &server, stamp(15, 7, 300), 16);
    finish(&mut t, &client, stamp(14, 8, 300), 17);
    let spans = drain(&mut t);
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(spans[0].parent_span_id, Some(spans[1].span_id));
    assert_eq!(t.stats.spans_shed, 2);
}

/// One request from outside through a chain of four connection ends (the generator's, the
/// front's SERVER end, its call, the back end's SERVER end), made at `at` with stream offsets
/// `off`, each end finished in turn from the bottom.
fn chain_request(
    t: &mut Tracer,
    [gen_end, front, down, back]: [&Connection; 4],
    at: u64,
    off: u64,
) {
    on_visible(t, gen_end, false, "GET /p", stamp(at, 8, off));
    on_visible(t, front, true, "GET /p", stamp(at + 1, 7, off));
    on_visible(t, down, false, "GET /f", stamp(at + 2, 7, off));
    on_visible(t, back, true, "GET /f", stamp(at + 3, 6, off));
    finish(t, back, stamp(at + 3, 6, off), at + 4);
    finish(t, down, stamp(at + 2, 7, off), at + 5);
    finish(t, front, stamp(at + 1, 7, off), at + 6);
    finish(t, gen_end, stamp(at, 8, off), at + 7);
}

#[test]
fn edges_are_connections_whose_every_request_started_a_trace() {
    let mut t = shedding_tracer(None);
    // A load generator (process 1, serves nothing) calls a server (process 2) on this host,
    // which calls a third (process 3).
    let gen_end = conn(1, 1, Role::Client, 6000, 80);
    let front = conn(2, 2, Role::Server, 80, 6000);
    let down = conn(3, 2, Role::Client, 6001, 90);
    let back = conn(4, 3, Role::Server, 90, 6001);
    for i in 0..3 {
        chain_request(
            &mut t,
            [&gen_end, &front, &down, &back],
            10 + 10 * i,
            100 * i,
        );
    }
    let edges: Vec<_> = t.edges().collect();
    assert_eq!(edges.len(), 1, "{edges:?}");
    let (id, edge) = edges[0];
    assert_eq!(id, 1);
    assert_eq!(edge.mirror, Some(2));
    assert!(!edge.server);
    t.forget_edge(1);
    assert_eq!(t.edges().count(), 0);
}

#[test]
fn a_trace_dropped_late_takes_its_finished_spans_with_it() {
    let mut t = shedding_tracer(Some(2));
    let served = conn(1, 2, Role::Server, 80, 5000);
    let first = conn(2, 2, Role::Client, 6000, 90);
    let second = conn(3, 2, Role::Client, 6001, 91);
    on_visible(&mut t, &served, true, "GET /a", stamp(10, 7, 0));
    // A first call, parented by the thread rule, finishes (its trace is settled)...
    on_visible(&mut t, &first, false, "GET /b", stamp(11, 7, 0));
    finish(&mut t, &first, stamp(11, 7, 0), 12);
    let mut out = Vec::new();
    let _ = t.poll(100, false, &mut out, usize::MAX);
    assert!(out.is_empty(), "its trace is still open: it waits");
    // ... then a second call is made while the thread has hidden work: the trace may miss it.
    on_flagged(
        &mut t,
        &second,
        false,
        "GET /c",
        stamp(13, 7, 0),
        (true, false),
    );
    finish(&mut t, &second, stamp(13, 7, 0), 14);
    finish(&mut t, &served, stamp(10, 7, 0), 15);
    assert!(
        drain(&mut t).is_empty(),
        "the first call went with its trace"
    );
    assert_eq!(t.stats.spans_shed, 3);
}

#[test]
fn without_shedding_finished_spans_do_not_wait() {
    let mut t = shedding_tracer(None);
    let served = conn(1, 2, Role::Server, 80, 5000);
    let first = conn(2, 2, Role::Client, 6000, 90);
    on_visible(&mut t, &served, true, "GET /a", stamp(10, 7, 0));
    on_visible(&mut t, &first, false, "GET /b", stamp(11, 7, 0));
    finish(&mut t, &first, stamp(11, 7, 0), 12);
    let mut out = Vec::new();
    let _ = t.poll(100, false, &mut out, usize::MAX);
    assert_eq!(out.len(), 1, "nothing hides: exported at once");
}

#[test]
fn while_hiding_a_forward_counts_only_from_the_thread_that_read_its_request() {
    for (writer, exported) in [(7, 2), (8, 0)] {
        let mut t = shedding_tracer(Some(2));
        // Thread 7 read /b; the forward is written by `writer` (8: another thread, whose
        // hidden asks the programs did not compare with thread 7's).
        let b = conn(1, 2, Role::Server, 80, 5001);
        let up = conn(2, 2, Role::Client, 6000, 90);
        on_visible(&mut t, &b, true, "GET /b", stamp(10, 7, 0));
        on_visible(&mut t, &up, false, "GET /b", stamp(11, writer, 0));
        finish(&mut t, &up, stamp(11, writer, 0), 12);
        finish(&mut t, &b, stamp(10, 7, 0), 13);
        let spans = drain(&mut t);
        assert_eq!(spans.len(), exported, "writer {writer}: {spans:?}");
    }
}

#[test]
fn a_pair_server_span_without_its_client_drops_children_already_finished() {
    let mut t = shedding_tracer(None);
    t.set_keep(0.5); // parking
    let client = conn(1, 1, Role::Client, 6000, 80);
    let server = conn(2, 2, Role::Server, 80, 6000);
    let down = conn(3, 2, Role::Client, 6001, 90);
    let _ = client;
    // S read before its client end was seen, before the pair was noted.
    on_visible(&mut t, &server, true, "GET /s", stamp(10, 7, 100));
    t.shed_pair(1, 2);
    on_visible(&mut t, &down, false, "GET /d", stamp(11, 7, 0));
    finish(&mut t, &down, stamp(11, 7, 0), 12);
    let mut out = Vec::new();
    let _ = t.poll(100, false, &mut out, usize::MAX);
    assert!(out.is_empty(), "parked: {out:?}");
    finish(&mut t, &server, stamp(10, 7, 100), 13);
    let _ = t.poll(200, false, &mut out, usize::MAX);
    assert!(
        out.is_empty(),
        "a child exported whose parent was dropped: {out:#?}"
    );
}

#[test]
fn a_pair_client_span_without_its_server_end_drops_its_whole_trace() {
    let mut t = shedding_tracer(None);
    t.set_keep(0.5);
    let loadgen = conn(20, 1, Role::Client, 5000, 80);
    let front = conn(10, 2, Role::Server, 80, 5000);
    let pair_client = conn(1, 2, Role::Client, 6000, 81);
    t.shed_pair(1, 2);
    on_visible(&mut t, &loadgen, false, "GET /a", stamp(9, 3, 0));
    on_visible(&mut t, &front, true, "GET /a", stamp(10, 7, 0));
    on_visible(&mut t, &pair_client, false, "GET /b", stamp(11, 7, 0));
    finish(&mut t, &pair_client, stamp(11, 7, 0), 12);
    let mut out = Vec::new();
    let _ = t.poll(100, false, &mut out, usize::MAX);
    assert!(out.is_empty());
    finish(&mut t, &front, stamp(10, 7, 0), 13);
    let _ = t.poll(200, false, &mut out, usize::MAX);
    finish(&mut t, &loadgen, stamp(9, 3, 0), 14);
    let _ = t.poll(300, false, &mut out, usize::MAX);
    assert!(
        out.is_empty(),
        "the trace was dropped late but its root went out: {out:#?}"
    );
}

#[test]
fn pure_clients_are_processes_whose_every_call_started_a_trace() {
    let mut t = shedding_tracer(None);
    // A load generator (process 1) opens a connection per request to a server (process 2),
    // which calls a third (process 3) for each: only the generator is a pure client, and only
    // once it made enough calls.
    let mut pure_after = None;
    for i in 0..20_u64 {
        let (at, off) = (10 + 10 * i, 100 * i);
        let port = 6000 + i as u16;
        let gen_end = conn(4 * i + 1, 1, Role::Client, port, 80);
        let front = conn(4 * i + 2, 2, Role::Server, 80, port);
        let down = conn(4 * i + 3, 2, Role::Client, port + 1000, 90);
        let back = conn(4 * i + 4, 3, Role::Server, 90, port + 1000);
        chain_request(&mut t, [&gen_end, &front, &down, &back], at, off);
        for id in 4 * i + 1..=4 * i + 4 {
            t.forget_edge(id);
        }
        let pure: Vec<u32> = t.pure_clients().collect();
        assert!(pure.is_empty() || pure == [1], "{pure:?}");
        if !pure.is_empty() && pure_after.is_none() {
            pure_after = Some(i + 1);
        }
    }
    assert_eq!(
        pure_after,
        Some(16),
        "named after 16 calls that started traces"
    );
    // A call with a parent makes it no pure client.
    let served = conn(100, 1, Role::Server, 81, 7000);
    let call = conn(101, 1, Role::Client, 7001, 80);
    on_visible(&mut t, &served, true, "GET /s", stamp(1000, 9, 0));
    on_visible(&mut t, &call, false, "GET /c", stamp(1001, 9, 0));
    assert_eq!(t.pure_clients().count(), 0);
}

#[test]
fn a_request_served_by_a_process_whose_openings_are_shed_drops_its_trace() {
    let mut t = shedding_tracer(None);
    // Process 2 was named a pure client, then serves: the calls it makes for the request may
    // be on connections the programs shed from their opening.
    t.set_openings_shed(&std::iter::once(2).collect());
    let served = conn(1, 2, Role::Server, 80, 5000);
    let call = conn(2, 2, Role::Client, 6000, 90);
    on_visible(&mut t, &served, true, "GET /a", stamp(10, 7, 0));
    on_visible(&mut t, &call, false, "GET /b", stamp(11, 7, 0));
    finish(&mut t, &call, stamp(11, 7, 0), 12);
    finish(&mut t, &served, stamp(10, 7, 0), 13);
    assert!(drain(&mut t).is_empty(), "its trace may miss calls");
    assert_eq!(t.stats.spans_shed, 2);
    // Another process's requests are kept.
    let other = conn(3, 4, Role::Server, 81, 5001);
    on_visible(&mut t, &other, true, "GET /c", stamp(20, 5, 0));
    finish(&mut t, &other, stamp(20, 5, 0), 21);
    assert_eq!(drain(&mut t).len(), 1);
}
