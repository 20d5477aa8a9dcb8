//! Root integration tests of the agent's lifecycle: one agent per host, flush on SIGTERM, and
//! nothing left attached in the kernel after `kill -9`.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sockspan_tests::{Agent, Proc, free_port, http_server, run_ok, sockspan_bin};

/// The programs sockspan attaches: on the syscall tracepoints, or at the socket layer (where
/// the kernel has it, the default).
const ATTACHED: [&str; 6] = [
    "sys_enter",
    "sys_exit",
    "sock_send",
    "sock_recv",
    "tcp_state",
    "tcp_send_start",
];

/// Ids of the loaded programs named like sockspan's attached ones ([`ATTACHED`]). Detaching a
/// BTF tracepoint waits for an RCU grace period, so an exited agent's programs may stay listed a
/// moment: tests follow ids, never counts.
fn sockspan_programs() -> Vec<u64> {
    let out = run_ok(
        Command::new("bpftool").args(["prog", "show", "--json"]),
        Duration::from_secs(20),
    );
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            // BTF raw tracepoints load as tracing programs.
            p["type"] == "tracing" && p["name"].as_str().is_some_and(|n| ATTACHED.contains(&n))
        })
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// Ids of the programs process `pid` holds, from its fds' `prog_id` (program and link fds).
fn programs_held_by(pid: u32) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[test]
fn a_second_agent_refuses_and_names_the_first() {
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    let second = Command::new(sockspan_bin())
        .args(["run", "--output", "jsonl", "--duration", "2"])
        .stdout(Stdio::null())
        .output()
        .expect("second agent");
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("already running") && stderr.contains(&format!("pid {}", agent.pid())),
        "{stderr}"
    );
    let out = agent.stop();
    assert!(out.status.success());
    // With the first gone the lock is free again.
    let third = Command::new(sockspan_bin())
        .args(["run", "--output", "jsonl", "--duration", "1"])
        .stdout(Stdio::null())
        .output()
        .expect("third agent");
    assert!(
        third.status.success(),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
}

#[test]
fn sigterm_exports_finished_spans_and_exits_promptly() {
    let port = free_port();
    let _server = http_server("127.0.0.1", port);
    let agent = Agent::start_command("run", &["--output", "jsonl", "--link-delay-ms", "10000"]);
    let _ = run_ok(
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}/")),
        Duration::from_secs(20),
    );
    // The spans wait 10 s for late evidence; SIGTERM must export them at once anyway.
    let started = Instant::now();
    let out = agent.stop_with(libc::SIGTERM);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        started.elapsed()
    );
    let kinds: Vec<&str> = out
        .events
        .iter()
        .filter_map(|s| s["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"CLIENT") && kinds.contains(&"SERVER"),
        "{kinds:?}"
    );
    assert!(out.stderr.contains("SIGTERM"), "{}", out.stderr);
}

#[test]
fn kill_9_leaves_no_program_attached() {
    let mut child = Proc(
        Command::new(sockspan_bin())
            .args(["run", "--output", "jsonl"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent"),
    );
    let pid = child.pid();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ids: Vec<u64> = loop {
        let loaded = sockspan_programs();
        let held: Vec<u64> = programs_held_by(pid)
            .into_iter()
            .filter(|id| loaded.contains(id))
            .collect();
        // Two on the syscall tracepoints, four at the socket layer.
        if held.len() >= 2 {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "programs never appeared: {held:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    child.0.kill().expect("kill -9");
    child.0.wait().expect("reaped");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u64> = sockspan_programs()
            .into_iter()
            .filter(|id| ids.contains(id))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "programs {left:?} still loaded 10 s after kill -9"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every agent these tests start runs with exactly deploy/'s capability set (`cargo xtask test`
/// starts them through setpriv), and still captures: the tests prove the deployed privileges are
/// enough, not that full root is.
#[test]
fn agents_under_test_hold_exactly_the_deployed_capabilities() {
    // Bit numbers from linux/capability.h.
    const CAP_SYS_PTRACE: u32 = 19;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let port = free_port();
    let _server = http_server("127.0.0.1", port);
    let agent = Agent::start(&["--port", &port.to_string()]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("CapEff");
    let expected =
        (1u64 << CAP_SYS_PTRACE) | (1 << CAP_SYS_ADMIN) | (1 << CAP_PERFMON) | (1 << CAP_BPF);
    assert_eq!(
        effective, expected,
        "agent capabilities {effective:#x}, deploy/ grants {expected:#x}: run the tests with `cargo xtask test`"
    );
    let _ = run_ok(
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}/")),
        Duration::from_secs(10),
    );
    let out = agent.stop();
    assert!(
        out.of_type("data")
            .any(|e| sockspan_tests::payload(e).starts_with(b"GET / HTTP/1.1")),
        "captured under the reduced set"
    );
}
