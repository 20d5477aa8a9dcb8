//! Cross-host linking: CLIENT spans announced to their server's agent, SERVER spans adopting
//! them.

use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::peers::{local::LocalAddrs, wire::ClientSpan};

/// A TCP connection between two hosts' addresses (`a.b.c.d:port`).
fn between(conn_id: u64, pid: u32, role: Role, local: &str, remote: &str) -> Connection {
    let addr = |text: &str| -> SocketAddr { text.parse().expect("v4 address") };
    let (local, remote) = (addr(local), addr(remote));
    let mut tuple = crate::net::loopback_tuple(local.port(), remote.port());
    let octets = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => panic!("v4 only"),
    };
    tuple.local_addr[..4].copy_from_slice(&octets(local));
    tuple.remote_addr[..4].copy_from_slice(&octets(remote));
    Connection {
        tuple,
        ..conn(conn_id, pid, role, local.port(), remote.port())
    }
}

/// Host A's tracer (10.0.0.1) and host B's (10.0.0.2), both linking with peers; the client
/// on A and the server on B of one connection.
fn two_hosts() -> (Tracer, Tracer, Connection, Connection) {
    // The link delay matters: a span waiting for its trace to settle is announced by half
    // of it at the latest.
    let with_delay = || {
        Tracer::new(
            TraceConfig {
                link_delay: Duration::from_millis(500),
                max_spans: 1000,
            },
            Resources::new(ServiceNameRule::Auto),
        )
    };
    let (mut a, mut b) = (with_delay(), with_delay());
    a.enable_peers(LocalAddrs::default());
    b.enable_peers(LocalAddrs::default());
    let client = between(1, 1, Role::Client, "10.0.0.1:5000", "10.0.0.2:80");
    let server = between(7, 2, Role::Server, "10.0.0.2:80", "10.0.0.1:5000");
    (a, b, client, server)
}

fn announced(t: &mut Tracer) -> Vec<ClientSpan> {
    let mut out = Vec::new();
    t.take_announcements(&mut out);
    out
}

/// The SERVER span on B becomes the CLIENT span's child on A, in its trace, whichever of
/// B's own request record and A's announcement comes first.
#[test]
fn a_server_on_another_host_becomes_the_announced_client_span_child() {
    for announcement_first in [false, true] {
        let (mut a, mut b, client, server) = two_hosts();
        on_asking(&mut a, &client, false, "GET /x", stamp(90, 10, 4242));
        let sent = announced(&mut a);
        assert_eq!(sent.len(), 1, "a settled root is announced at once");
        assert_eq!(sent[0].server, "10.0.0.2:80".parse().expect("addr"));
        assert_eq!(sent[0].key, 4242);
        if announcement_first {
            b.on_peer_client(&sent[0], 0);
        }
        on_asking(&mut b, &server, true, "GET /x", stamp(100, 20, 4242));
        if !announcement_first {
            b.on_peer_client(&sent[0], 0);
        }
        finish(&mut a, &client, stamp(90, 10, 4242), 200);
        finish(&mut b, &server, stamp(100, 20, 4242), 150);
        let (from_a, from_b) = (drain(&mut a), drain(&mut b));
        let (c, s) = (&from_a[0], &from_b[0]);
        assert_eq!(s.parent_span_id, Some(c.span_id), "{announcement_first}");
        assert_eq!(s.trace_id, c.trace_id);
        assert_eq!(evidence(s), &AttrValue::Str("peer".into()));
        assert_eq!(b.stats.parent_from_peer, 1);
    }
}

/// An announcement whose request asked something else (another method or target under
/// the same key) names no parent; nor does one for another connection.
#[test]
fn an_announcement_for_another_request_or_connection_links_nothing() {
    let (mut a, mut b, client, server) = two_hosts();
    on_asking(&mut a, &client, false, "GET /x", stamp(90, 10, 4242));
    let sent = announced(&mut a);
    on_asking(&mut b, &server, true, "GET /y", stamp(100, 20, 4242));
    b.on_peer_client(&sent[0], 0);
    let other = between(8, 2, Role::Server, "10.0.0.2:80", "10.0.0.1:5001");
    on_asking(&mut b, &other, true, "GET /x", stamp(110, 21, 4242));
    finish(&mut b, &server, stamp(100, 20, 4242), 150);
    finish(&mut b, &other, stamp(110, 21, 4242), 160);
    for span in drain(&mut b) {
        assert_eq!(span.parent_span_id, None);
    }
    assert_eq!(b.stats.parent_from_peer, 0);
}

/// A server on this host (loopback, or one of its addresses) is paired here: nothing goes
/// out. Without `enable_peers` nothing is announced either.
#[test]
fn calls_to_this_host_or_without_peers_are_not_announced() {
    let mut t = tracer();
    let remote = between(1, 1, Role::Client, "10.0.0.1:5000", "10.0.0.2:80");
    on_asking(&mut t, &remote, false, "GET /x", stamp(90, 10, 0));
    assert!(announced(&mut t).is_empty(), "peers off");
    let mut t = tracer();
    t.enable_peers(LocalAddrs::default());
    let local = conn(2, 1, Role::Client, 5001, 80);
    on_asking(&mut t, &local, false, "GET /x", stamp(90, 10, 0));
    assert!(announced(&mut t).is_empty(), "loopback");
}

/// The middle host: its SERVER span waits for the front's announcement, so the CLIENT span
/// it makes meanwhile is not settled; it is announced once the announcement settled it, in
/// the front's trace.
#[test]
fn a_call_from_a_server_waiting_for_its_peer_is_announced_once_settled() {
    let (mut a, mut b, client, server) = two_hosts();
    let onward = between(9, 2, Role::Client, "10.0.0.2:6000", "10.0.0.3:90");
    on_asking(&mut a, &client, false, "GET /x", stamp(90, 10, 1));
    let from_a = announced(&mut a);
    on_asking(&mut b, &server, true, "GET /x", stamp(100, 20, 1));
    on_asking(&mut b, &onward, false, "GET /z", stamp(110, 20, 7));
    assert!(announced(&mut b).is_empty(), "its trace may still move");
    b.announce_settled(120, false);
    assert!(
        announced(&mut b).is_empty(),
        "still unsettled before its deadline"
    );
    let mut late = two_hosts().1;
    let alone = between(3, 2, Role::Server, "10.0.0.2:80", "10.0.0.1:5002");
    on_asking(&mut late, &alone, true, "GET /x", stamp(100, 20, 1));
    on_asking(&mut late, &onward, false, "GET /z", stamp(110, 20, 7));
    late.announce_settled(110 + 250_000_000, false);
    assert_eq!(
        announced(&mut late).len(),
        1,
        "at half the link delay, as it is then"
    );
    b.on_peer_client(&from_a[0], 130);
    b.announce_settled(140, false);
    let from_b = announced(&mut b);
    assert_eq!(from_b.len(), 1);
    assert_eq!(from_b[0].trace_id, from_a[0].trace_id);
    assert_eq!(from_b[0].server, "10.0.0.3:90".parse().expect("addr"));
}

/// The in-band asking form ([`super::super::asking`]) between hosts A (client, 10.0.0.1) and
/// B (server): A's programs could not tell its call's trace and sent the call's span id with
/// A's address. B's SERVER span asks A, A answers with the trace its rules settled, and B's
/// span becomes the child before export. The question may reach A before A saw its own call,
/// while the call is open, or after A exported it: the same answer each time.
#[test]
fn a_server_asks_the_agent_its_request_named_and_adopts_the_answer() {
    use crate::peers::wire::Kind;
    use agent_common::{INBAND_ADOPTED, INBAND_ASK, INBAND_RECEIVED, INBAND_SENT};
    const SPAN: [u8; 8] = [0x5a; 8];
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum When {
        BeforeTheCall,
        WhileOpen,
        AfterExport,
    }
    let agent_a: [u8; 16] = std::net::Ipv4Addr::new(10, 0, 0, 1)
        .to_ipv6_mapped()
        .octets();
    let b_addr: SocketAddr = "10.0.0.2:4391".parse().expect("addr");
    for when in [When::BeforeTheCall, When::WhileOpen, When::AfterExport] {
        let (mut a, mut b, client, server) = two_hosts();
        b.on_inband(
            7,
            4242,
            INBAND_RECEIVED | INBAND_ADOPTED | INBAND_ASK,
            (agent_a, SPAN),
            0,
        );
        on_asking(&mut b, &server, true, "GET /x", stamp(100, 20, 4242));
        let mut questions = Vec::new();
        b.take_peer_messages(&mut questions);
        assert_eq!(questions.len(), 1, "{when:?}");
        let (kind, to, question) = questions[0];
        assert_eq!(
            (kind, to.ip()),
            (Kind::Ask, "10.0.0.1".parse().expect("ip"))
        );
        assert_eq!(
            (question.span_id, question.key, question.trace_id),
            (SPAN, 4242, [0; 16])
        );
        if when == When::BeforeTheCall {
            a.on_peer_ask(b_addr, &question, 0);
        }
        a.on_inband(1, 4242, INBAND_SENT | INBAND_ASK, (agent_a, SPAN), 0);
        on_asking(&mut a, &client, false, "GET /x", stamp(90, 10, 4242));
        assert_eq!(
            announced(&mut a).len(),
            1,
            "announced too: the option may not have reached the server"
        );
        if when == When::WhileOpen {
            a.on_peer_ask(b_addr, &question, 0);
        }
        finish(&mut a, &client, stamp(90, 10, 4242), 200);
        let from_a = drain(&mut a);
        if when == When::AfterExport {
            a.on_peer_ask(b_addr, &question, 0);
        }
        let c = &from_a[0];
        assert_eq!(c.span_id, SPAN, "the id the option carried");
        let what = format!("{when:?}");
        answered_and_adopted(
            (&mut a, &mut b),
            b_addr,
            (&server, stamp(100, 20, 4242)),
            c,
            &what,
        );
    }
}

/// A answered one question (to `b_addr`) with its CLIENT span `c`; B, whose SERVER span (read
/// on `server` at `start`) waits for the answer, makes it `c`'s child (`what` names the case).
fn answered_and_adopted(
    (a, b): (&mut Tracer, &mut Tracer),
    b_addr: SocketAddr,
    (server, start): (&Connection, Stamp),
    c: &SpanData,
    what: &str,
) {
    let mut answers = Vec::new();
    a.take_peer_messages(&mut answers);
    assert_eq!(answers.len(), 1, "{what}");
    let (kind, to, answer) = answers[0];
    assert_eq!((kind, to), (crate::peers::wire::Kind::Answer, b_addr));
    assert_eq!(
        (answer.trace_id, answer.span_id, answer.key),
        (c.trace_id, c.span_id, start.offset)
    );
    assert!(b.awaiting_answers(), "{what}");
    b.on_peer_answer(&answer, 0);
    assert!(!b.awaiting_answers());
    finish(b, server, start, 150);
    let s = &drain(b)[0];
    assert_eq!(s.parent_span_id, Some(c.span_id), "{what}");
    assert_eq!(s.trace_id, c.trace_id);
    assert_eq!(evidence(s), &AttrValue::Str("inband".into()));
    assert_eq!(b.asking_stats.parent_from_answer, 1);
    assert_eq!(a.asking_stats.answered, 1);
}

/// An answer that does not match the SERVER span's request (another forward key: another
/// request) names no parent; a question about a span A never had gets no answer; an asking form
/// naming this host's own agent asks nobody (the client is traced here).
#[test]
fn asking_names_no_wrong_parent() {
    use agent_common::{INBAND_ADOPTED, INBAND_ASK, INBAND_RECEIVED};
    let (mut a, mut b, _client, server) = two_hosts();
    let agent_a: [u8; 16] = std::net::Ipv4Addr::new(10, 0, 0, 1)
        .to_ipv6_mapped()
        .octets();
    b.on_inband(
        7,
        4242,
        INBAND_RECEIVED | INBAND_ADOPTED | INBAND_ASK,
        (agent_a, [1; 8]),
        0,
    );
    on_asking(&mut b, &server, true, "GET /x", stamp(100, 20, 4242));
    let mut questions = Vec::new();
    b.take_peer_messages(&mut questions);
    let question = questions[0].2;
    a.on_peer_ask("10.0.0.2:4391".parse().expect("addr"), &question, 0);
    let mut answers = Vec::new();
    a.take_peer_messages(&mut answers);
    assert!(answers.is_empty(), "A never had that span");
    let another_span = ClientSpan {
        forward: crate::protocol::forward_key("GET", "/x"),
        trace_id: [3; 16],
        span_id: [4; 8],
        ..question
    };
    b.on_peer_answer(&another_span, 0);
    assert_eq!(b.asking_stats.refused, 1, "not the span asked for");
    b.on_peer_answer(
        &ClientSpan {
            span_id: [1; 8],
            ..another_span
        },
        0,
    );
    assert_eq!(
        b.asking_stats.refused, 2,
        "the question was taken: no second answer"
    );
    finish(&mut b, &server, stamp(100, 20, 4242), 150);
    assert_eq!(drain(&mut b)[0].parent_span_id, None);

    let (_, mut local, _, server) = two_hosts();
    let loopback: [u8; 16] = std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
    local.on_inband(
        7,
        9,
        INBAND_RECEIVED | INBAND_ADOPTED | INBAND_ASK,
        (loopback, [2; 8]),
        0,
    );
    on_asking(&mut local, &server, true, "GET /x", stamp(100, 20, 9));
    let mut none = Vec::new();
    local.take_peer_messages(&mut none);
    assert!(none.is_empty(), "this host's own agent is not asked");
}

/// Host B's SERVER span waits for A's announcement while a call it made (to C, asking form) is
/// asked for by C's agent and answered at its deadline with B's own trace id: C's subtree is in
/// that trace now. A's announcement, coming later, cannot move B's span into A's trace (C would
/// be left in another one): B's span gets a link to A's call (`peer-late`), and B's subtree
/// stays in one trace. Had the call only been announced (maybe to no agent), B's span would
/// join A's trace as before.
#[test]
fn a_late_announcement_links_a_server_whose_trace_was_used_outside() {
    use agent_common::{INBAND_ASK, INBAND_SENT};
    for answered in [true, false] {
        let (mut a, mut b, client, server) = two_hosts();
        let onward = between(9, 2, Role::Client, "10.0.0.2:6000", "10.0.0.3:90");
        on_asking(&mut a, &client, false, "GET /x", stamp(90, 10, 1));
        let from_a = announced(&mut a);
        on_asking(&mut b, &server, true, "GET /x", stamp(100, 20, 1));
        let b_agent: [u8; 16] = std::net::Ipv4Addr::new(10, 0, 0, 2)
            .to_ipv6_mapped()
            .octets();
        b.on_inband(9, 7, INBAND_SENT | INBAND_ASK, (b_agent, [0x77; 8]), 0);
        on_asking(&mut b, &onward, false, "GET /z", stamp(110, 20, 7));
        let b_trace = if answered {
            let question = ClientSpan {
                client: "10.0.0.2:6000".parse().expect("addr"),
                server: "10.0.0.3:90".parse().expect("addr"),
                key: 7,
                forward: 0,
                trace_id: [0; 16],
                span_id: [0x77; 8],
            };
            b.on_peer_ask("10.0.0.3:4391".parse().expect("addr"), &question, 120);
            b.answer_settled(260_000_000, false);
            let mut answers = Vec::new();
            b.take_peer_messages(&mut answers);
            assert_eq!(answers.len(), 1, "answered at its deadline");
            answers[0].2.trace_id
        } else {
            b.announce_settled(110 + 250_000_000, false);
            announced(&mut b)[0].trace_id
        };
        b.on_peer_client(&from_a[0], 300_000_000);
        finish(&mut b, &onward, stamp(110, 20, 7), 120);
        finish(&mut b, &server, stamp(100, 20, 1), 150);
        let spans = drain(&mut b);
        let s = spans
            .iter()
            .find(|s| s.kind == SpanKind::Server)
            .expect("server");
        let c = spans
            .iter()
            .find(|s| s.kind == SpanKind::Client)
            .expect("client");
        assert_eq!(
            (c.trace_id, c.parent_span_id),
            (s.trace_id, Some(s.span_id))
        );
        if answered {
            assert_eq!(s.parent_span_id, None);
            assert_eq!(s.links.len(), 1);
            assert_eq!(
                (s.links[0].span_id, s.links[0].reason),
                (from_a[0].span_id, "peer-late")
            );
            assert_eq!(s.trace_id, b_trace);
            assert_eq!(b.stats.peer_late, 1);
        } else {
            assert_eq!(s.parent_span_id, Some(from_a[0].span_id));
            assert_eq!(
                s.trace_id, from_a[0].trace_id,
                "announced only: joined as before"
            );
            assert_eq!(b.stats.peer_late, 0);
        }
    }
}

/// A stream (HTTP/2, gRPC) seen on `conn` asking `method target`: keyed by its stream id
/// (`start.offset`), multiplexed (not in order, no thread causality).
fn on_stream(t: &mut Tracer, conn: &Connection, server: bool, ask: &str, start: Stamp) {
    let (method, target) = ask.split_once(' ').expect("METHOD TARGET");
    let end = End {
        server,
        thread_causality: false,
        in_order: false,
        task: 0,
        hidden_work: false,
        hidden_same_ask: false,
        hidden_exact_ask: false,
    };
    let forward = crate::protocol::forward_key(method, target);
    t.on_request(conn, end, start.offset, forward, None, start);
}

/// The token A's programs drew for the connection.
const TOKEN: [u8; 8] = [0x7e, 1, 2, 3, 4, 5, 6, 7];

/// Host A's address as the connection form carries it (IPv4 mapped).
fn agent_a() -> [u8; 16] {
    std::net::Ipv4Addr::new(10, 0, 0, 1)
        .to_ipv6_mapped()
        .octets()
}

/// [`two_hosts`] with the connection form on both hosts, A's programs having drawn the
/// connection's token (and told A).
fn two_hosts_with_streams() -> (Tracer, Tracer, Connection, Connection, [u8; 8]) {
    use agent_common::{INBAND_CONN, INBAND_SENT};
    let (mut a, mut b, client, server) = two_hosts();
    a.enable_stream_asking();
    b.enable_stream_asking();
    a.on_inband(
        client.conn_id,
        0,
        INBAND_SENT | INBAND_CONN,
        ([0; 16], TOKEN),
        0,
    );
    (a, b, client, server, TOKEN)
}

/// The in-band connection form ([`super::super::stream_asking`]): A's programs named A's agent
/// and the connection (a token) on the HTTP/2 connection's segments; B's SERVER span of stream
/// 3 asks A about stream 3 of that connection, A answers with its CLIENT span of that stream
/// once its trace is settled, and B's span becomes its child before export. The question may
/// reach A before A saw its own stream, while it is open, after A exported it, or after the
/// connection closed too.
#[test]
fn a_stream_server_asks_the_agent_its_connection_named_and_adopts_the_answer() {
    use crate::peers::wire::Kind;
    use agent_common::{INBAND_CONN, INBAND_RECEIVED};
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum When {
        BeforeTheCall,
        WhileOpen,
        AfterExport,
        /// After the export and the client's connection closed (a short client's last call).
        AfterClose,
    }
    let b_addr: SocketAddr = "10.0.0.2:4391".parse().expect("addr");
    let call = "POST /model.Predictor/Predict";
    for when in [
        When::BeforeTheCall,
        When::WhileOpen,
        When::AfterExport,
        When::AfterClose,
    ] {
        let (mut a, mut b, client, server, token) = two_hosts_with_streams();
        b.on_inband(7, 0, INBAND_RECEIVED | INBAND_CONN, (agent_a(), token), 0);
        on_stream(&mut b, &server, true, call, stamp(100, 20, 3));
        let mut questions = Vec::new();
        b.take_peer_messages(&mut questions);
        assert_eq!(questions.len(), 1, "{when:?}");
        let (kind, to, question) = questions[0];
        assert_eq!(
            (kind, to.ip()),
            (Kind::AskStream, "10.0.0.1".parse().expect("ip"))
        );
        assert_eq!(
            (question.span_id, question.key, question.trace_id),
            (token, 3, [0; 16])
        );
        if when == When::BeforeTheCall {
            a.on_peer_ask_stream(b_addr, &question, 0);
        }
        on_stream(&mut a, &client, false, call, stamp(90, 10, 3));
        if when == When::WhileOpen {
            a.on_peer_ask_stream(b_addr, &question, 0);
        }
        finish(&mut a, &client, stamp(90, 10, 3), 200);
        let from_a = drain(&mut a);
        if when == When::AfterClose {
            a.forget_inband_conn(client.conn_id);
        }
        if matches!(when, When::AfterExport | When::AfterClose) {
            a.on_peer_ask_stream(b_addr, &question, 0);
        }
        let what = format!("{when:?}");
        let server_end = (&server, stamp(100, 20, 3));
        answered_and_adopted((&mut a, &mut b), b_addr, server_end, &from_a[0], &what);
    }
}

/// The connection form names no wrong parent: a token A never drew (or drew before it
/// restarted), a stream A never saw, and a request that is not a
/// stream (an HTTP/1 request at that key) get no answer; an answer about another request
/// (another forward key), or about the same addresses and stream id once another connection's
/// SERVER span waits there, links nothing; a connection closed on B asks no more; a form naming
/// B's own agent asks nobody (its client is traced here).
#[test]
fn the_connection_form_names_no_wrong_parent() {
    use agent_common::{INBAND_CONN, INBAND_RECEIVED};
    let b_addr: SocketAddr = "10.0.0.2:4391".parse().expect("addr");
    let call = "POST /model.Predictor/Predict";
    let (mut a, mut b, client, server, token) = two_hosts_with_streams();
    // A's open spans: stream 3, and an HTTP/1 request at key 5 of the same connection.
    on_stream(&mut a, &client, false, call, stamp(90, 10, 3));
    on_asking(&mut a, &client, false, "GET /x", stamp(91, 11, 5));
    let question = |token: [u8; 8], key: u64| ClientSpan {
        client: "10.0.0.1:5000".parse().expect("addr"),
        server: "10.0.0.2:80".parse().expect("addr"),
        key,
        forward: 0,
        trace_id: [0; 16],
        span_id: token,
    };
    let unknown = [9; 8];
    for (token, key) in [(unknown, 3), (token, 9), (token, 5)] {
        a.on_peer_ask_stream(b_addr, &question(token, key), 0);
    }
    let _ = drain(&mut a);
    let mut answers = Vec::new();
    a.take_peer_messages(&mut answers);
    assert!(answers.is_empty(), "{answers:?}");

    // An answer for another request: no parent.
    b.on_inband(7, 0, INBAND_RECEIVED | INBAND_CONN, (agent_a(), token), 0);
    on_stream(&mut b, &server, true, call, stamp(100, 20, 3));
    let mut questions = Vec::new();
    b.take_peer_messages(&mut questions);
    assert_eq!(questions.len(), 1);
    let other = ClientSpan {
        forward: crate::protocol::forward_key("POST", "/model.Predictor/Other"),
        trace_id: [3; 16],
        span_id: [4; 8],
        ..questions[0].2
    };
    b.on_peer_answer(&other, 0);
    finish(&mut b, &server, stamp(100, 20, 3), 150);
    assert_eq!(drain(&mut b)[0].parent_span_id, None);

    // The same addresses and stream id on a later connection (8), while connection 7's
    // question is unanswered: an answer that comes before connection 8's form is connection
    // 7's (refused: 8 waits); once 8's form came, whose an answer is cannot be told: 8 asks
    // nothing, and no answer is taken.
    for form_first in [false, true] {
        let (_, mut b, _, server, token) = two_hosts_with_streams();
        b.on_inband(7, 0, INBAND_RECEIVED | INBAND_CONN, (agent_a(), token), 0);
        on_stream(&mut b, &server, true, call, stamp(100, 20, 3));
        let mut questions = Vec::new();
        b.take_peer_messages(&mut questions);
        finish(&mut b, &server, stamp(100, 20, 3), 150);
        let _ = drain(&mut b);
        let later = Connection {
            conn_id: 8,
            ..server.clone()
        };
        on_stream(&mut b, &later, true, call, stamp(300, 20, 3));
        let answer = ClientSpan {
            forward: crate::protocol::forward_key("POST", "/model.Predictor/Predict"),
            trace_id: [3; 16],
            span_id: [4; 8],
            ..questions[0].2
        };
        if form_first {
            b.on_inband(8, 0, INBAND_RECEIVED | INBAND_CONN, (agent_a(), [8; 8]), 0);
            let mut asked_again = Vec::new();
            b.take_peer_messages(&mut asked_again);
            assert!(asked_again.is_empty(), "ambiguous: not asked");
        }
        b.on_peer_answer(&answer, 0);
        finish(&mut b, &later, stamp(300, 20, 3), 350);
        assert_eq!(drain(&mut b)[0].parent_span_id, None, "{form_first}");
    }

    // Closed: the connection's later streams ask nobody.
    b.forget_inband_conn(server.conn_id);
    on_stream(&mut b, &server, true, call, stamp(200, 20, 5));
    let mut questions = Vec::new();
    b.take_peer_messages(&mut questions);
    assert!(questions.is_empty());

    // A form naming B's own agent (an address of B's host: loopback).
    let (_, mut b, _, server, token) = two_hosts_with_streams();
    let own: [u8; 16] = std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
    b.on_inband(7, 0, INBAND_RECEIVED | INBAND_CONN, (own, token), 0);
    on_stream(&mut b, &server, true, call, stamp(100, 20, 3));
    let mut questions = Vec::new();
    b.take_peer_messages(&mut questions);
    assert!(questions.is_empty());
}

/// A stream read before the connection form reached the server's end (the connection's first
/// write carries none) waits for its client; the form, when a later write brings it, asks
/// about it then, once.
#[test]
fn a_stream_read_before_the_connection_form_is_asked_about_when_it_comes() {
    use crate::peers::wire::Kind;
    use agent_common::{INBAND_CONN, INBAND_RECEIVED};
    let (_, mut b, _, server, token) = two_hosts_with_streams();
    on_stream(&mut b, &server, true, "POST /m.S/M", stamp(100, 20, 1));
    let mut questions = Vec::new();
    b.take_peer_messages(&mut questions);
    assert!(questions.is_empty(), "no form yet");
    for _ in 0..2 {
        b.on_inband(7, 0, INBAND_RECEIVED | INBAND_CONN, (agent_a(), token), 0);
    }
    b.take_peer_messages(&mut questions);
    assert_eq!(questions.len(), 1, "{questions:?}");
    assert_eq!(
        (questions[0].0, questions[0].2.key, questions[0].2.span_id),
        (Kind::AskStream, 1, token)
    );
}
