//! The Node.js callback rule and the Python asyncio task rule.

use super::*;

/// Node.js: calls named by the libuv callback they were written in, whatever thread serves
/// what (one thread serves both requests here).
#[test]
fn a_node_call_belongs_to_the_request_whose_callback_made_it() {
    use agent_common::node_callback;
    let mut t = tracer();
    t.callbacks.track(5);
    let (r1, r2) = (
        conn(1, 5, Role::Server, 80, 5001),
        conn(2, 5, Role::Server, 80, 5002),
    );
    let (x, y, z) = (
        conn(3, 5, Role::Client, 6000, 90),
        conn(4, 5, Role::Client, 6001, 90),
        conn(6, 5, Role::Client, 6002, 91),
    );
    on_task_req(&mut t, &r1, true, node_callback(Some(1)), stamp(10, 7, 0));
    on_task_req(&mut t, &r2, true, node_callback(Some(2)), stamp(11, 7, 0));
    // Written in r1's socket's callback; a timer's call; one made on x's response.
    on_task_req(&mut t, &x, false, node_callback(Some(1)), stamp(12, 7, 0));
    on_task_req(&mut t, &y, false, node_callback(None), stamp(13, 7, 0));
    finish_in_task(&mut t, &x, stamp(12, 7, 0), 14, node_callback(Some(3)));
    on_task_req(&mut t, &z, false, node_callback(Some(3)), stamp(15, 7, 0));
    for (c, start, end) in [(&y, 13, 16), (&z, 15, 17), (&r2, 11, 18), (&r1, 10, 19)] {
        finish_in_task(&mut t, c, stamp(start, 7, 0), end, 0);
    }
    // Export order follows when traces settle: each span is found by when it began.
    let mut spans = drain(&mut t);
    spans.sort_by_key(|s| s.start_unix_nano);
    let [r1, _r2, x, y, z] = spans.as_slice() else {
        panic!("five spans: {spans:#?}")
    };
    assert_eq!(x.parent_span_id, Some(r1.span_id));
    assert_eq!(z.parent_span_id, Some(r1.span_id));
    assert_eq!(y.parent_span_id, None, "a timer's call is nobody's");
    assert!(y.links.is_empty());
    assert_eq!(evidence(x), &AttrValue::Str("callback".into()));
    assert_eq!(evidence(z), &AttrValue::Str("callback".into()));
    assert_eq!(t.stats.parent_from_callback, 2);
    assert_eq!(t.callbacks.stats.outside, 1);
}

#[test]
fn a_request_made_by_a_task_belongs_to_the_request_its_ancestor_answered() {
    let mut t = tracer();
    t.tasks.track(5);
    let (r1, r2) = (
        conn(1, 5, Role::Server, 80, 5001),
        conn(2, 5, Role::Server, 80, 5002),
    );
    let x = conn(3, 5, Role::Client, 6000, 90);
    // Two requests in flight on one loop thread, each handled by a task made after it began
    // (0xa1, 0xa2, by the connections' reader contexts); 0xa1 gathers into 0xc1.
    on_task_req(&mut t, &r1, true, 0x91, stamp(10, 7, 0));
    on_task_req(&mut t, &r2, true, 0x92, stamp(11, 7, 0));
    t.on_py_task(5, 7, 0xa1, 0x91, 12);
    t.on_py_task(5, 7, 0xa2, 0x92, 13);
    t.on_py_task(5, 7, 0xc1, 0xa1, 14);
    on_task_req(&mut t, &x, false, 0xc1, stamp(15, 7, 0));
    finish_in_task(&mut t, &x, stamp(15, 7, 0), 16, 0xc1);
    finish_in_task(&mut t, &r2, stamp(11, 7, 0), 17, 0xa2);
    finish_in_task(&mut t, &r1, stamp(10, 7, 0), 18, 0xa1);
    let spans = drain(&mut t);
    let [x, r2, r1] = spans.as_slice() else {
        panic!("three spans: {spans:#?}")
    };
    assert_eq!(x.parent_span_id, Some(r1.span_id));
    assert_eq!(x.trace_id, r1.trace_id);
    assert_ne!(x.trace_id, r2.trace_id);
    assert_eq!(t.stats.parent_from_task, 1);
    assert!(x.attributes.iter().any(
        |kv| kv.key == "sockspan.parent.evidence" && kv.value == AttrValue::Str("task".into())
    ));
}

#[test]
fn on_a_loop_thread_only_the_task_rule_names_parents() {
    let mut t = tracer();
    t.tasks.track(5);
    let mut r1 = conn(1, 5, Role::Server, 80, 5001);
    r1.opened_ns = 8;
    let (bg, old) = (
        conn(3, 5, Role::Client, 6000, 90),
        conn(4, 5, Role::Client, 6001, 90),
    );
    // 0xb0: a task made before the agent followed the process (no creation seen); 0xa0: a
    // task made before the request's connection opened (the service's own).
    t.on_py_task(5, 7, 0xa0, 0x90, 5);
    on_task_req(&mut t, &r1, true, 0x91, stamp(10, 7, 0));
    t.on_py_task(5, 7, 0xa1, 0x91, 12);
    on_task_req(&mut t, &bg, false, 0xb0, stamp(13, 7, 0));
    on_task_req(&mut t, &old, false, 0xa0, stamp(14, 7, 0));
    finish_in_task(&mut t, &bg, stamp(13, 7, 0), 15, 0xb0);
    finish_in_task(&mut t, &old, stamp(14, 7, 0), 15, 0xa0);
    // Even were the old task the writer, it was made before the request's connection
    // opened: no claim.
    finish_in_task(&mut t, &r1, stamp(10, 7, 0), 18, 0xa0);
    let spans = drain(&mut t);
    assert!(
        spans.iter().all(|s| s.parent_span_id.is_none()),
        "one request open on the thread is no evidence: {spans:#?}"
    );
}

#[test]
fn a_task_that_answers_two_requests_names_no_parent_and_reuse_breaks_lineage() {
    let mut t = tracer();
    t.tasks.track(5);
    let (r1, r2) = (
        conn(1, 5, Role::Server, 80, 5001),
        conn(2, 5, Role::Server, 80, 5002),
    );
    let (x, y) = (
        conn(3, 5, Role::Client, 6000, 90),
        conn(4, 5, Role::Client, 6001, 90),
    );
    on_task_req(&mut t, &r1, true, 0x91, stamp(10, 7, 0));
    on_task_req(&mut t, &r2, true, 0x92, stamp(10, 7, 100));
    t.on_py_task(5, 7, 0xa1, 0x91, 12);
    on_task_req(&mut t, &x, false, 0xa1, stamp(13, 7, 0));
    finish_in_task(&mut t, &x, stamp(13, 7, 0), 14, 0xa1);
    // 0xa1 answers r2, then r1: the first answer looked like the task's own request and
    // took x (the limit of the rule, documented in docs/causality.md); the second shows the
    // task is shared, and it names no parent from then on.
    finish_in_task(&mut t, &r2, stamp(10, 7, 100), 15, 0xa1);
    finish_in_task(&mut t, &r1, stamp(10, 7, 0), 16, 0xa1);
    assert_eq!(t.stats.task_shared_writers, 1);
    // A context whose address a new task took: requests waiting under the old one are not
    // claimed through the new one.
    let r3 = conn(5, 5, Role::Server, 80, 5003);
    on_task_req(&mut t, &r3, true, 0x93, stamp(20, 7, 0));
    t.on_py_task(5, 7, 0xa3, 0x93, 21);
    t.on_py_task(5, 7, 0xc3, 0xa3, 22);
    on_task_req(&mut t, &y, false, 0xc3, stamp(23, 7, 0));
    finish_in_task(&mut t, &y, stamp(23, 7, 0), 24, 0xc3);
    t.on_py_task(5, 7, 0xa3, 0x99, 25);
    finish_in_task(&mut t, &r3, stamp(20, 7, 0), 26, 0xa3);
    let _ = drain(&mut t);
    assert_eq!(t.stats.parent_from_task, 1, "x only, by r2's claim; y none");
}

#[test]
fn a_connection_task_answers_its_requests_in_turn() {
    let mut t = tracer();
    t.tasks.track(5);
    let mut c1 = conn(1, 5, Role::Server, 80, 5001);
    c1.opened_ns = 5;
    let mut c2 = conn(2, 5, Role::Server, 80, 5002);
    c2.opened_ns = 5;
    let (x, y, z) = (
        conn(3, 5, Role::Client, 6000, 90),
        conn(4, 5, Role::Client, 6001, 90),
        conn(6, 5, Role::Client, 6002, 90),
    );
    // 0xa1 is c1's task (made after it opened); it answers two requests one after the other.
    t.on_py_task(5, 7, 0xa1, 0x90, 6);
    on_task_req(&mut t, &c1, true, 0x91, stamp(10, 7, 0));
    on_task_req(&mut t, &x, false, 0xa1, stamp(11, 7, 0));
    finish_in_task(&mut t, &x, stamp(11, 7, 0), 12, 0xa1);
    finish_in_task(&mut t, &c1, stamp(10, 7, 0), 13, 0xa1);
    on_task_req(&mut t, &c1, true, 0x91, stamp(20, 7, 100));
    on_task_req(&mut t, &y, false, 0xa1, stamp(21, 7, 0));
    finish_in_task(&mut t, &y, stamp(21, 7, 0), 22, 0xa1);
    finish_in_task(&mut t, &c1, stamp(20, 7, 100), 23, 0xa1);
    assert_eq!(t.stats.parent_from_task, 2, "each request its own call");
    // Answering on another connection shows it is nobody's own task.
    on_task_req(&mut t, &c2, true, 0x92, stamp(30, 7, 0));
    on_task_req(&mut t, &z, false, 0xa1, stamp(31, 7, 0));
    finish_in_task(&mut t, &z, stamp(31, 7, 0), 32, 0xa1);
    finish_in_task(&mut t, &c2, stamp(30, 7, 0), 33, 0xa1);
    assert_eq!(t.stats.parent_from_task, 2);
    assert_eq!(t.stats.task_shared_writers, 1);
}
