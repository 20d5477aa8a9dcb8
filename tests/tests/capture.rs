//! Root integration tests of the capture path: real servers and clients on loopback, the real
//! agent with its eBPF programs attached, assertions on the JSON it printed.
//!
//! A missing kernel feature fails these tests; nothing is skipped.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sockspan_tests::{
    Agent, Output, Proc, fixture, free_port, http_server, payload, python_fixture, run_ok,
};

const CURL_TIMEOUT: Duration = Duration::from_secs(20);

fn str_of<'a>(event: &'a Value, key: &str) -> &'a str {
    event[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {event}"))
}

fn u64_of(event: &Value, key: &str) -> u64 {
    event[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {event}"))
}

/// The open event of `pid` (exactly one expected).
fn open_of(out: &Output, pid: u32) -> Value {
    let opens: Vec<&Value> = out
        .of_type("open")
        .filter(|e| u64_of(e, "pid") == u64::from(pid))
        .collect();
    assert_eq!(
        opens.len(),
        1,
        "expected one open event for pid {pid}, got {opens:?}"
    );
    opens[0].clone()
}

/// Concatenated payloads of `pid`'s data events in one direction.
fn stream_of(out: &Output, pid: u32, direction: &str) -> Vec<u8> {
    out.of_type("data")
        .filter(|e| u64_of(e, "pid") == u64::from(pid) && e["direction"] == direction)
        .flat_map(payload)
        .collect()
}

fn assert_no_loss(out: &Output) {
    let stats = out.stats();
    assert_eq!(stats["kernel"]["ring_full_drops"], 0, "stats: {stats}");
    assert_eq!(stats["receiver_decode_errors"], 0, "stats: {stats}");
    assert_eq!(stats["receiver_ring_resyncs"], 0, "stats: {stats}");
}

/// curl against `python3 -m http.server`: both ends, mirrored tuples, request and response bytes;
/// the agent started with `hooks` besides.
fn http_exchange(bind: &str, url_host: &str, family: &str, hooks: &[&str]) {
    let port = free_port();
    let server = http_server(bind, port);
    let port_text = port.to_string();
    let agent = Agent::start(&[&["--port", port_text.as_str()], hooks].concat());
    let curl = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "10"])
        .arg(format!("http://{url_host}:{port}/"))
        .stdout(Stdio::null())
        .spawn()
        .expect("curl");
    let curl_pid = curl.id();
    let status = curl.wait_with_output().expect("curl ran").status;
    assert!(status.success(), "curl failed: {status}");
    let out = agent.stop();
    assert!(
        out.status.success(),
        "agent exit {:?}: {}",
        out.status,
        out.stderr
    );

    let client = open_of(&out, curl_pid);
    let server_open = open_of(&out, server.pid());
    assert_eq!(str_of(&client, "role"), "client");
    assert_eq!(str_of(&client, "syscall"), "connect");
    assert_eq!(str_of(&server_open, "role"), "server");
    assert!(
        str_of(&server_open, "syscall").starts_with("accept"),
        "{server_open}"
    );
    for open in [&client, &server_open] {
        assert_eq!(str_of(open, "family"), family, "{open}");
        assert_eq!(str_of(open, "transport"), "tcp");
    }
    // The two tuples mirror each other and match what curl and the server used.
    assert_eq!(client["remote_port"], port);
    assert_eq!(server_open["local_port"], port);
    assert_eq!(client["local_port"], server_open["remote_port"]);
    assert_eq!(client["local_addr"], server_open["remote_addr"]);
    assert_eq!(client["remote_addr"], server_open["local_addr"]);
    assert_eq!(str_of(&client, "remote_addr"), bind);
    assert_eq!(str_of(&client, "comm"), "curl");

    let request = stream_of(&out, curl_pid, "egress");
    assert!(
        request.starts_with(b"GET / HTTP/1.1\r\n"),
        "{:?}",
        String::from_utf8_lossy(&request)
    );
    let served_request = stream_of(&out, server.pid(), "ingress");
    assert!(served_request.starts_with(b"GET / HTTP/1.1\r\n"));
    let response = stream_of(&out, server.pid(), "egress");
    assert!(
        response.starts_with(b"HTTP/1."),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    let received = stream_of(&out, curl_pid, "ingress");
    assert!(received.starts_with(b"HTTP/1."));
    assert_eq!(
        response, received,
        "server sent and curl received the same bytes"
    );

    // Every data event of the exchange carries the connection it belongs to.
    for e in out.of_type("data") {
        let conn = if u64_of(e, "pid") == u64::from(curl_pid) {
            &client
        } else {
            &server_open
        };
        assert_eq!(e["conn_id"], conn["conn_id"], "{e}");
        assert!(u64_of(e, "captured") <= u64_of(e, "ret"));
    }
    // Both closes are seen, with byte totals that match the data events.
    let closes: Vec<&Value> = out.of_type("close").collect();
    assert_eq!(closes.len(), 2, "{closes:?}");
    let curl_close = closes
        .iter()
        .find(|e| u64_of(e, "pid") == u64::from(curl_pid))
        .expect("curl close");
    assert_eq!(u64_of(curl_close, "bytes_sent"), request.len() as u64);
    assert_eq!(u64_of(curl_close, "bytes_received"), received.len() as u64);
    assert_no_loss(&out);
}

#[test]
fn http_over_ipv4_both_ends() {
    http_exchange("127.0.0.1", "127.0.0.1", "ipv4", &[]);
}

/// The same exchange captured on the syscall tracepoints (`--capture-hooks syscalls`; the
/// default, where the kernel has them, is the socket layer: opens with their roles from the TCP
/// state changes, closes from `TCP_CLOSE`).
#[test]
fn http_over_ipv4_on_the_syscall_tracepoints() {
    http_exchange("127.0.0.1", "127.0.0.1", "ipv4", SYSCALL_HOOKS);
}

/// Capture at the socket layer.
const SOCKET_HOOKS: &[&str] = &["--capture-hooks", "socket"];
/// Capture on the raw syscall tracepoints.
const SYSCALL_HOOKS: &[&str] = &["--capture-hooks", "syscalls"];

#[test]
fn http_over_ipv6_both_ends() {
    http_exchange("::1", "[::1]", "ipv6", &[]);
}

#[test]
fn connection_opened_before_the_agent() {
    let port = free_port();
    let server = python_fixture("echo_server.py", &["127.0.0.1", &port.to_string()], &[]);
    let mut client = Command::new("python3")
        .arg(fixture("preexisting_client.py"))
        .args(["127.0.0.1", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client");
    let mut client_out = BufReader::new(client.stdout.take().expect("stdout"));
    let mut info = String::new();
    client_out.read_line(&mut info).expect("client info");
    let info: Value = serde_json::from_str(&info).expect("client json");
    let client_pid = client.id();
    let mut client = Proc(client);

    // The connection exists; only now does the agent start.
    let agent = Agent::start(&["--port", &port.to_string()]);
    writeln!(client.0.stdin.as_mut().expect("stdin"), "go").expect("tell client");
    let mut done = String::new();
    client_out.read_line(&mut done).expect("client done");
    assert_eq!(done.trim(), "done");
    let out = agent.stop();

    let open = open_of(&out, client_pid);
    assert_eq!(open["fd"], info["fd"]);
    assert_eq!(open["preexisting"], true, "{open}");
    assert_eq!(
        str_of(&open, "syscall"),
        "sendto",
        "first seen in use: {open}"
    );
    assert_eq!(str_of(&open, "role"), "client", "{open}");
    assert_eq!(str_of(&open, "role_source"), "procfs");
    assert_eq!(open["local_addr"], info["local"][0]);
    assert_eq!(open["local_port"], info["local"][1]);
    assert_eq!(open["remote_addr"], info["remote"][0]);
    assert_eq!(open["remote_port"], info["remote"][1]);
    assert_eq!(stream_of(&out, client_pid, "egress"), b"PING-1\nPING-2\n");
    assert_eq!(stream_of(&out, client_pid, "ingress"), b"PING-1\nPING-2\n");

    // The server's accepted socket also pre-dates the agent: inferred as the server end.
    let server_open = open_of(&out, server.pid());
    assert_eq!(str_of(&server_open, "role"), "server", "{server_open}");
    assert_eq!(server_open["preexisting"], true);
    assert_eq!(server_open["remote_port"], info["local"][1]);
    // The echo server's first recv() was already blocked in the kernel when the programs
    // attached. The exit program reads the arguments from the registers, so that read is
    // captured too: nothing depends on having seen the syscall's entry.
    assert_eq!(stream_of(&out, server.pid(), "egress"), b"PING-1\nPING-2\n");
    assert_eq!(
        stream_of(&out, server.pid(), "ingress"),
        b"PING-1\nPING-2\n"
    );
    assert_eq!(out.stats()["conntrack_tuple_mismatches"], 0);
    assert_no_loss(&out);
}

#[test]
fn vectored_io_sendmsg_recvmsg_readv_writev() {
    vectored_io(&[]);
}

#[test]
fn vectored_io_on_the_syscall_tracepoints() {
    vectored_io(SYSCALL_HOOKS);
}

fn vectored_io(hooks: &[&str]) {
    let port = free_port();
    let server = python_fixture("vectored_io.py", &["server", &port.to_string()], &[]);
    let port_text = port.to_string();
    let agent = Agent::start(&[&["--port", port_text.as_str()], hooks].concat());
    let client = Command::new("python3")
        .arg(fixture("vectored_io.py"))
        .args(["client", &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("client");
    let client_pid = client.id();
    let client_out = client.wait_with_output().expect("client ran");
    assert!(client_out.status.success(), "client failed");
    let out = agent.stop();

    let by = |pid: u32, syscall: &str| -> Vec<u8> {
        out.of_type("data")
            .filter(|e| u64_of(e, "pid") == u64::from(pid) && e["syscall"] == syscall)
            .flat_map(payload)
            .collect()
    };
    assert_eq!(by(client_pid, "sendmsg"), b"SENDMSG-part2-part3");
    assert_eq!(by(server.pid(), "recvmsg"), b"SENDMSG-part2-part3");
    assert_eq!(by(server.pid(), "sendmsg"), b"ACK1-x");
    assert_eq!(
        by(client_pid, "recvmsg"),
        b"ACK1-x",
        "recvmsg_into over two iovecs"
    );
    assert_eq!(by(client_pid, "writev"), b"WRITEV-ab");
    assert_eq!(
        by(server.pid(), "readv"),
        b"WRITEV-ab",
        "readv over two iovecs"
    );
    assert_eq!(by(server.pid(), "writev"), b"ACK2-y");
    assert_eq!(by(client_pid, "readv"), b"ACK2-y");
    assert_no_loss(&out);
}

#[test]
fn files_and_pipes_are_filtered_in_the_kernel() {
    let port = free_port();
    let _server = python_fixture("echo_server.py", &["127.0.0.1", &port.to_string()], &[]);
    // No filter: everything the kernel sends is printed.
    let agent = Agent::start(&[]);
    let script = Command::new("python3")
        .arg(fixture("files_and_pipes.py"))
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script");
    let pid = script.id();
    let output = script.wait_with_output().expect("script ran");
    assert!(output.status.success());
    let socket_fd: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("fd");
    let agent_pid = agent.pid();
    let out = agent.stop();

    let mine: Vec<&Value> = out.events.iter().filter(|e| e["pid"] == pid).collect();
    assert!(!mine.is_empty(), "the script's socket traffic is captured");
    for e in &mine {
        assert_eq!(
            u64_of(e, "fd"),
            socket_fd,
            "only the socket fd appears: {e}"
        );
        if e["type"] == "data" {
            let bytes = payload(e);
            assert_eq!(bytes, b"SOCKET-DATA", "no file or pipe bytes: {e}");
        }
    }
    assert!(
        out.events.iter().all(|e| e["pid"] != agent_pid),
        "the agent never traces itself"
    );
}

#[test]
fn small_ring_overflow_is_counted() {
    let port = free_port();
    let _server = python_fixture("echo_server.py", &["127.0.0.1", &port.to_string()], &[]);
    // An 8 KiB ring holds one full 4 KiB-payload record: a burst must overflow it.
    let agent = Agent::start(&[
        "--port",
        &port.to_string(),
        "--ring-bytes",
        "8192",
        "--capture-bytes",
        "4096",
    ]);
    let _ = run_ok(
        Command::new("python3")
            .arg(fixture("burst_client.py"))
            .args([&port.to_string(), "2000", "4096"]),
        Duration::from_mins(1),
    );
    let out = agent.stop();
    let stats = out.stats();
    let drops = stats["kernel"]["ring_full_drops"]
        .as_u64()
        .expect("counter");
    assert!(
        drops > 0,
        "a burst through an 8 KiB ring must drop: {stats}"
    );
    assert!(
        out.stderr
            .contains("events dropped because the ring was full"),
        "loss is reported on stderr too:\n{}",
        out.stderr
    );
    // What was sent plus what was dropped covers at least every write of the burst.
    let sent = stats["kernel"]["events_sent"].as_u64().expect("counter");
    assert!(sent + drops >= 2000, "{stats}");
}

#[test]
fn check_reports_the_kernel_and_passes_here() {
    let out = run_ok(
        Command::new(sockspan_tests::sockspan_bin()).arg("check"),
        CURL_TIMEOUT,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("capture path: OK"), "{text}");
    for feature in [
        "BTF",
        "raw tracepoints sys_enter + sys_exit",
        "ring buffer map",
        "uprobes",
        "sock_ops",
        "kprobes",
        "fentry/fexit",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(feature)),
            "row {feature} missing:\n{text}"
        );
    }
    // Every capture program leaves the verifier room: at half its limit, a compiler or kernel
    // update (both move the walk) would be one step from a refused agent, as the single exit
    // program once was (1,000,001 instructions walked on 6.18.44).
    let capture = text
        .lines()
        .find(|l| l.starts_with("capture path"))
        .expect("capture path row");
    let walked: u64 = capture
        .split("largest walk: ")
        .nth(1)
        .and_then(|rest| rest.split(", ").nth(1))
        .and_then(|n| n.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no verifier walk in {capture}"));
    assert!(
        walked < 500_000,
        "a program walks {walked} instructions of the verifier's 1,000,000: {capture}"
    );
    // This kernel has the socket layer's tracepoints (6.18): capture there loads and verifies,
    // and is what the agent uses by default.
    let socket_layer = text
        .lines()
        .find(|l| l.starts_with("socket-layer tracepoints"))
        .expect("socket-layer row");
    assert!(
        socket_layer.contains(" ok ") && socket_layer.contains("verified"),
        "{socket_layer}"
    );
    assert!(capture.contains("at the socket layer"), "{capture}");
    // This kernel has no kprobes and refuses fentry: check must say so, not pretend.
    let kprobes = text
        .lines()
        .find(|l| l.starts_with("kprobes"))
        .expect("kprobes row");
    assert!(kprobes.contains("MISSING"), "{kprobes}");
    let fentry = text
        .lines()
        .find(|l| l.starts_with("fentry/fexit"))
        .expect("fentry row");
    assert!(
        fentry.contains("MISSING") && fentry.contains("refused"),
        "{fentry}"
    );
    // The agent's marks on connections are written in place by a program it runs
    // (BPF_PROG_TEST_RUN), which this kernel allows: the fallback's write-back races.
    let in_place = text
        .lines()
        .find(|l| l.starts_with("in-place connection updates"))
        .expect("in-place updates row");
    assert!(in_place.contains(" ok "), "{in_place}");
    // Under the deployed capabilities (CAP_SYS_ADMIN included) a real uprobe attaches.
    let go = text
        .lines()
        .find(|l| l.starts_with("Go goroutine causality"))
        .expect("Go row");
    assert!(
        go.contains(" ok ") && go.contains("a uprobe attached"),
        "{go}"
    );
}

#[test]
fn unprivileged_run_says_what_to_do() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(sockspan_tests::sockspan_bin())
        .args(["events", "--duration", "1"])
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs root") && stderr.contains("CAP_BPF"),
        "{stderr}"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one clear line, no backtrace: {stderr}"
    );
}

#[test]
fn bad_flags_name_the_field() {
    let out = Command::new(sockspan_tests::sockspan_bin())
        .args(["events", "--capture-bytes", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("capture-bytes must be between 1 and 8192, got 0"),
        "{stderr}"
    );
    let out = Command::new(sockspan_tests::sockspan_bin())
        .args(["events", "--ring-bytes", "1000"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ring-bytes"));
    let out = Command::new(sockspan_tests::sockspan_bin())
        .args(["events", "--port", "notaport"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"));
}

#[test]
fn sendfile_is_counted_and_mmsg_messages_are_captured() {
    sendfile_and_mmsg(SYSCALL_HOOKS);
}

/// At the socket layer `sendfile` fires once per chunk and `sendmmsg` once per message (found by
/// order and length); `recvmmsg` is skipped there: nothing, rather than a message under another's
/// buffer.
#[test]
fn sendfile_and_sendmmsg_at_the_socket_layer() {
    sendfile_and_mmsg(SOCKET_HOOKS);
}

fn sendfile_and_mmsg(hooks: &[&str]) {
    let port = free_port();
    let server = python_fixture("echo_server.py", &["127.0.0.1", &port.to_string()], &[]);
    let agent = Agent::start(hooks);
    let sendfile = Command::new("python3")
        .arg(fixture("sendfile_mmsg.py"))
        .args(["sendfile", &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sendfile client");
    let sendfile_pid = sendfile.id();
    assert!(sendfile.wait_with_output().expect("ran").status.success());
    let mmsg = Command::new("python3")
        .arg(fixture("sendfile_mmsg.py"))
        .arg("mmsg")
        .stdout(Stdio::piped())
        .spawn()
        .expect("mmsg script");
    let mmsg_pid = mmsg.id();
    let mmsg_out = mmsg.wait_with_output().expect("ran");
    assert!(mmsg_out.status.success());
    let info: Value = serde_json::from_slice(&mmsg_out.stdout).expect("json");
    let out = agent.stop();

    // sendfile: the bytes are counted (ret) though none pass through user memory.
    let sent: u64 = out
        .of_type("data")
        .filter(|e| e["pid"] == sendfile_pid && e["syscall"] == "sendfile64")
        .inspect(|e| assert_eq!(e["captured"], 0, "{e}"))
        .map(|e| u64_of(e, "ret"))
        .sum();
    assert_eq!(sent, 10_000);
    let echoed: u64 = out
        .of_type("data")
        .filter(|e| e["pid"] == server.pid() && e["direction"] == "ingress")
        .map(|e| u64_of(e, "ret"))
        .sum();
    assert_eq!(
        echoed, 10_000,
        "the echo server's reads carry the file bytes"
    );

    // sendmmsg / recvmmsg: one data event per message, payload and length each.
    let messages = |syscall: &str, fd: &Value| -> Vec<(u64, Vec<u8>)> {
        out.of_type("data")
            .filter(|e| e["pid"] == mmsg_pid && e["syscall"] == syscall && &e["fd"] == fd)
            .map(|e| (u64_of(e, "ret"), payload(e)))
            .collect()
    };
    let expected = vec![
        (2, b"M1".to_vec()),
        (4, b"M2-x".to_vec()),
        (5, b"M3-yy".to_vec()),
    ];
    assert_eq!(messages("sendmmsg", &info["client_fd"]), expected);
    if hooks == SYSCALL_HOOKS {
        assert_eq!(messages("recvmmsg", &info["server_fd"]), expected);
    } else {
        assert_eq!(messages("recvmmsg", &info["server_fd"]), vec![]);
    }
    let client_open = out
        .of_type("open")
        .find(|e| e["pid"] == mmsg_pid && e["fd"] == info["client_fd"])
        .expect("udp client open");
    assert_eq!(str_of(client_open, "transport"), "udp");
    assert_eq!(str_of(client_open, "role"), "client");
    assert_eq!(client_open["remote_port"], info["port"]);
    assert_no_loss(&out);
}

#[test]
fn dual_stack_server_sees_v4_mapped_peer() {
    let port = free_port();
    let server = python_fixture("echo_server.py", &["::", &port.to_string()], &[]);
    let agent = Agent::start(&["--port", &port.to_string()]);
    let client = Command::new("python3")
        .args(["-c", "import socket,sys; s=socket.create_connection(('127.0.0.1', int(sys.argv[1]))); s.sendall(b'v4'); assert s.recv(2)==b'v4'"])
        .arg(port.to_string())
        .spawn()
        .expect("client");
    let client_pid = client.id();
    assert!(client.wait_with_output().expect("ran").status.success());
    let out = agent.stop();
    let client_open = open_of(&out, client_pid);
    let server_open = open_of(&out, server.pid());
    assert_eq!(str_of(&client_open, "family"), "ipv4");
    assert_eq!(str_of(&server_open, "family"), "ipv6");
    assert_eq!(str_of(&server_open, "remote_addr"), "::ffff:127.0.0.1");
    assert_eq!(str_of(&server_open, "local_addr"), "::ffff:127.0.0.1");
    assert_eq!(server_open["remote_port"], client_open["local_port"]);
    assert_eq!(stream_of(&out, server.pid(), "ingress"), b"v4");
}

/// Connections closed and opened one after another reuse their fd number. At the socket layer no
/// `close` is seen: a TCP connection ends at `TCP_CLOSE`, and a UDP socket's entry when its fd
/// number next moves bytes on another socket. Each connection must keep its own id, bytes and
/// close, whichever comes first.
#[test]
fn reused_fds_keep_their_own_connections_at_the_socket_layer() {
    const ROUNDS: usize = 5;
    let port = free_port();
    let _server = python_fixture("echo_server.py", &["127.0.0.1", &port.to_string()], &[]);
    let agent = Agent::start(SOCKET_HOOKS);
    let rounds = ROUNDS.to_string();
    let run = |args: &[&str]| -> (u32, Value) {
        let child = Command::new("python3")
            .arg(fixture("reused_fds.py"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("reused_fds.py");
        let pid = child.id();
        let out = child.wait_with_output().expect("ran");
        assert!(out.status.success(), "reused_fds.py {args:?} failed");
        (pid, serde_json::from_slice(&out.stdout).expect("json"))
    };
    let (tcp_pid, tcp) = run(&["tcp", &port.to_string(), &rounds]);
    let (udp_pid, udp) = run(&["udp", &rounds]);
    let out = agent.stop();

    for (pid, info, transport) in [(tcp_pid, &tcp, "tcp"), (udp_pid, &udp, "udp")] {
        let fds: Vec<&Value> = info["fds"].as_array().expect("fds").iter().collect();
        assert!(
            fds.windows(2).all(|w| w[0] == w[1]),
            "each round reuses the fd: {fds:?}"
        );
        let opens: Vec<&Value> = out
            .of_type("open")
            .filter(|e| e["pid"] == pid && e["fd"] == *fds[0])
            .collect();
        assert_eq!(
            opens.len(),
            ROUNDS,
            "{transport}: one open per round: {opens:?}"
        );
        let sent = info["sent"].as_array().expect("sent");
        for (open, message) in opens.iter().zip(sent) {
            assert_eq!(str_of(open, "transport"), transport, "{open}");
            let bytes: Vec<u8> = out
                .of_type("data")
                .filter(|e| e["conn_id"] == open["conn_id"] && e["direction"] == "egress")
                .flat_map(payload)
                .collect();
            assert_eq!(
                String::from_utf8_lossy(&bytes),
                message.as_str().expect("text"),
                "{transport}: each round's bytes under its own connection"
            );
        }
        let closes: Vec<&Value> = out
            .of_type("close")
            .filter(|e| e["pid"] == pid && e["fd"] == *fds[0])
            .collect();
        // A UDP socket's last round has nothing after it to end it.
        let expected = if transport == "tcp" {
            ROUNDS
        } else {
            ROUNDS - 1
        };
        assert!(
            closes.len() >= expected,
            "{transport}: {} closes of {ROUNDS} rounds: {closes:?}",
            closes.len()
        );
        for close in closes {
            let message = opens
                .iter()
                .position(|o| o["conn_id"] == close["conn_id"])
                .map(|i| sent[i].as_str().expect("text").len() as u64)
                .expect("a close of an announced connection");
            assert_eq!(u64_of(close, "bytes_sent"), message, "{close}");
            assert_eq!(u64_of(close, "bytes_received"), message, "{close}");
        }
    }
    assert_no_loss(&out);
}

/// `--capture-hooks` with an unknown value, or with the in-band mode it cannot carry, is refused
/// with the flag named.
#[test]
fn capture_hooks_flag_is_checked() {
    let out = Command::new(sockspan_tests::sockspan_bin())
        .args(["events", "--capture-hooks", "sockets"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--capture-hooks"));
    let out = Command::new(sockspan_tests::sockspan_bin())
        .args(["events", "--capture-hooks", "socket", "--in-band"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("capture-hooks socket cannot carry the in-band mode"),
        "{stderr}"
    );
}
