//! The proxy rule: a CLIENT request asking what one SERVER request in flight asks forwards it.

use super::*;

#[test]
fn a_forwarded_request_is_the_child_of_the_one_request_asking_the_same() {
    let mut t = tracer();
    // An event loop (one thread, 7) holds two requests; it forwards the second.
    let a = conn(1, 2, Role::Server, 80, 5000);
    let b = conn(2, 2, Role::Server, 80, 5001);
    let up = conn(3, 2, Role::Client, 6000, 90);
    on_asking(&mut t, &a, true, "GET /items/1", stamp(10, 7, 0));
    on_asking(&mut t, &b, true, "GET /items/2", stamp(11, 7, 0));
    on_asking(&mut t, &up, false, "GET /items/2", stamp(12, 7, 0));
    finish(&mut t, &up, stamp(12, 7, 0), 13);
    finish(&mut t, &b, stamp(11, 7, 0), 14);
    finish(&mut t, &a, stamp(10, 7, 0), 15);
    let spans = drain(&mut t);
    let (forwarded, b_span) = (&spans[0], &spans[1]);
    assert_eq!(forwarded.parent_span_id, Some(b_span.span_id));
    assert_eq!(forwarded.trace_id, b_span.trace_id);
    assert_eq!(t.stats.parent_from_proxy, 1);
    assert_eq!(t.stats.ambiguous, 0);
}

#[test]
fn two_requests_asking_the_same_give_links_not_a_parent() {
    let mut t = tracer();
    let a = conn(1, 2, Role::Server, 80, 5000);
    let b = conn(2, 2, Role::Server, 80, 5001);
    let up = conn(3, 2, Role::Client, 6000, 90);
    on_asking(&mut t, &a, true, "GET /same", stamp(10, 7, 0));
    on_asking(&mut t, &b, true, "GET /same", stamp(11, 8, 0));
    // Written on a thread serving nothing (a proxy's own I/O thread).
    on_asking(&mut t, &up, false, "GET /same", stamp(12, 9, 0));
    finish(&mut t, &up, stamp(12, 9, 0), 13);
    let spans = drain(&mut t);
    assert_eq!(spans[0].parent_span_id, None);
    assert_eq!(spans[0].links.len(), 2);
    assert!(
        spans[0]
            .links
            .iter()
            .all(|l| l.reason == "several requests in flight ask the same")
    );
    assert_eq!(t.stats.ambiguous, 1);
}

#[test]
fn thread_and_proxy_rules_that_disagree_name_no_parent() {
    let mut t = tracer();
    // Thread 7 serves /y; thread 8 serves /x; thread 7 then asks /x of another service.
    let y = conn(1, 2, Role::Server, 80, 5000);
    let x = conn(2, 2, Role::Server, 80, 5001);
    let out = conn(3, 2, Role::Client, 6000, 90);
    on_asking(&mut t, &y, true, "GET /y", stamp(10, 7, 0));
    on_asking(&mut t, &x, true, "GET /x", stamp(11, 8, 0));
    on_asking(&mut t, &out, false, "GET /x", stamp(12, 7, 0));
    finish(&mut t, &out, stamp(12, 7, 0), 13);
    let spans = drain(&mut t);
    assert_eq!(spans[0].parent_span_id, None);
    assert_eq!(spans[0].links.len(), 2);
    assert_eq!(t.stats.parent_from_thread + t.stats.parent_from_proxy, 0);
}

#[test]
fn a_request_is_forwarded_once() {
    let mut t = tracer();
    let a = conn(1, 2, Role::Server, 80, 5000);
    let up = conn(3, 2, Role::Client, 6000, 90);
    let again = conn(4, 2, Role::Client, 6001, 90);
    on_asking(&mut t, &a, true, "GET /healthz", stamp(10, 7, 0));
    on_asking(&mut t, &up, false, "GET /healthz", stamp(11, 9, 0));
    on_asking(&mut t, &again, false, "GET /healthz", stamp(12, 9, 0));
    finish(&mut t, &up, stamp(11, 9, 0), 13);
    finish(&mut t, &again, stamp(12, 9, 0), 14);
    finish(&mut t, &a, stamp(10, 7, 0), 15);
    let spans = drain(&mut t);
    let with_parent: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client && s.parent_span_id.is_some())
        .collect();
    assert_eq!(
        with_parent.len(),
        1,
        "the first forwards it, the second does not"
    );
    assert_eq!(
        with_parent[0].start_unix_nano,
        spans
            .iter()
            .filter(|s| s.kind == SpanKind::Client)
            .map(|s| s.start_unix_nano)
            .min()
            .expect("clients")
    );
    assert_eq!(t.stats.parent_from_proxy, 1);
}

#[test]
fn a_finished_request_is_not_forwarded_later() {
    let mut t = tracer();
    let a = conn(1, 2, Role::Server, 80, 5000);
    let up = conn(3, 2, Role::Client, 6000, 90);
    on_asking(&mut t, &a, true, "GET /x", stamp(10, 7, 0));
    finish(&mut t, &a, stamp(10, 7, 0), 11);
    on_asking(&mut t, &up, false, "GET /x", stamp(12, 9, 0));
    finish(&mut t, &up, stamp(12, 9, 0), 13);
    let spans = drain(&mut t);
    assert!(spans.iter().all(|s| s.parent_span_id.is_none()));
    assert_eq!(t.stats.parent_from_proxy, 0);
}
