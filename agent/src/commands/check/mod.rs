//! `sockspan check`: what this kernel offers, what sockspan uses each piece for, and whether the
//! capture path works. Every row is a real probe of this host (a load, an attach, a file), not a
//! guess from the kernel version.

mod runtimes;

use std::{fmt::Write as _, path::Path};

use aya::{maps::MapType, programs::ProgramType};

use crate::{
    caps::{self, Cap},
    probes::{self, Probes, ProbesConfig, btf::Btf, offsets},
};

/// How much a feature matters to sockspan.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// The capture path cannot work without it.
    Required,
    /// Used by a later capability, or only for extra detail.
    Optional,
    /// Not used: sockspan is built to work without it.
    NotUsed,
    /// Required, unless `CAP_SYS_ADMIN` stands in; the `privileges` row gives the verdict.
    RequiredOrAdmin,
}

struct Row {
    feature: String,
    ok: bool,
    detail: String,
    need: Need,
    /// What sockspan uses it for, or loses without it.
    role: &'static str,
    /// What to do when a required feature is missing.
    fix: &'static str,
}

fn program_supported(kind: ProgramType) -> (bool, String) {
    match aya::sys::is_program_supported(kind) {
        Ok(true) => (true, "loads".into()),
        Ok(false) => (false, "not supported by this kernel".into()),
        Err(e) => (false, e.to_string()),
    }
}

/// A PMU under `/sys/bus/event_source/devices` (how perf attaches kprobes and uprobes).
fn pmu(name: &str) -> (bool, String) {
    let path = format!("/sys/bus/event_source/devices/{name}/type");
    if Path::new(&path).exists() {
        (true, format!("{name} PMU present"))
    } else {
        (false, format!("no {path} (kernel built without it)"))
    }
}

/// Loads a two-instruction fentry program on `btf_id`: the only honest test, since some kernels
/// (lockdown, Firecracker) refuse it with EPERM even when BTF and the program type exist.
fn probe_fentry(btf: Option<&Btf>) -> (bool, String) {
    let Some(id) = btf.and_then(|b| {
        b.func_id("do_nanosleep")
            .or_else(|| b.func_id("tcp_sendmsg"))
    }) else {
        return (false, "no BTF function to attach to".into());
    };
    // r0 = 0; exit
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    let put32 = |attr: &mut [u8; 128], at: usize, v: u32| {
        attr[at..at + 4].copy_from_slice(&v.to_le_bytes());
    };
    put32(&mut attr, 0, 26); // prog_type = BPF_PROG_TYPE_TRACING
    put32(&mut attr, 4, 2); // insn_cnt
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_le_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_le_bytes());
    put32(&mut attr, 68, 24); // expected_attach_type = BPF_TRACE_FENTRY
    put32(&mut attr, 108, id); // attach_btf_id
    // SAFETY: BPF_PROG_LOAD (5) reads `attr` (128 bytes, zero-filled past the fields set) and the
    // instruction and license buffers it points to, all alive for the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len()) };
    if fd >= 0 {
        // SAFETY: closing the fd the kernel just returned to us.
        unsafe { libc::close(fd as i32) };
        (true, "loads".into())
    } else {
        let err = std::io::Error::last_os_error();
        (false, format!("BPF_PROG_LOAD refused: {err}"))
    }
}

/// One row per capability, then whether they add up to what loading needs.
fn privilege_rows(rows: &mut Vec<Row>) {
    let bits = caps::effective().unwrap_or(0);
    for cap in Cap::ALL {
        let need = match cap {
            Cap::Bpf | Cap::Perfmon => Need::RequiredOrAdmin,
            _ => Need::Optional,
        };
        rows.push(Row {
            feature: format!("capability {}", cap.name()),
            ok: caps::has(bits, cap),
            detail: if caps::has(bits, cap) {
                "held".into()
            } else {
                "not held".into()
            },
            // CAP_SYS_ADMIN covers BPF and PERFMON: only the combined verdict below is binding.
            need: if need == Need::Required {
                Need::Optional
            } else {
                need
            },
            role: cap.purpose(),
            fix: "",
        });
    }
    let verdict = caps::check_can_load();
    rows.push(Row {
        feature: "privileges".into(),
        ok: verdict.is_ok(),
        detail: verdict
            .err()
            .unwrap_or_else(|| "enough to load and attach".into()),
        need: Need::Required,
        role: "CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN)",
        fix: "run as root, or grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE (deploy/README.md)",
    });
}

/// The socket layer's tracepoints (`--capture-hooks socket`): present, or which are missing.
fn socket_hooks_row(btf: Option<&Btf>) -> Row {
    let (ok, detail) = match btf {
        None => (false, "BTF unavailable".to_string()),
        Some(b) => {
            let missing = probes::CaptureHooks::Socket.missing(b);
            let starts = b.has_raw_tracepoint(probes::SEND_START_TRACEPOINT);
            let config = ProbesConfig {
                hooks: probes::CaptureHooks::Socket,
                ..ProbesConfig::default()
            };
            if !missing.is_empty() {
                (
                    false,
                    format!("not in the kernel's BTF: {}", missing.join(", ")),
                )
            } else if let Err(e) = Probes::load(&config, std::process::id()) {
                (false, format!("did not load: {e}"))
            } else if starts {
                (true, "sock_send_length, sock_recv_length, inet_sock_set_state and tcp_sendmsg_locked: programs loaded, verified and attached".to_string())
            } else {
                (true, "programs loaded, verified and attached; no tcp_sendmsg_locked: a TCP send's time would be its end, not its start".to_string())
            }
        }
    };
    Row {
        feature: "socket-layer tracepoints (BTF)".into(),
        ok,
        detail,
        need: Need::Optional,
        role: "--capture-hooks socket: only socket sends and receives run programs, other syscalls keep their fast path",
        fix: "use Linux 6.3 or newer (a kernel from 2025 on for TCP send start times), or keep --capture-hooks syscalls",
    }
}

/// BTF, the raw syscall tracepoints, the ring buffer, and a real load of the programs.
/// Returns whether a uprobe attached (the runtime probes' real test; the programs are loaded here).
fn capture_rows(
    rows: &mut Vec<Row>,
    btf: Option<&Btf>,
    btf_error: Option<String>,
) -> Result<(), String> {
    let (btf_ok, btf_detail) = match (btf, btf_error) {
        (Some(b), _) => match offsets::resolve(b) {
            Ok(o) => (
                true,
                format!(
                    "{} resolved (sock.skc_daddr at +{}, task_struct.files at +{})",
                    probes::btf::VMLINUX_BTF,
                    o.skc_daddr,
                    o.task_files
                ),
            ),
            Err(e) => (false, e.to_string()),
        },
        (None, e) => (false, e.unwrap_or_default()),
    };
    rows.push(Row {
        feature: "BTF".into(),
        ok: btf_ok,
        detail: btf_detail,
        need: Need::Required,
        role: "struct offsets for fd→socket and the connection tuple (no CO-RE in Rust eBPF)",
        fix: "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
    });

    let missing: Vec<&str> = match btf {
        Some(b) => probes::CaptureHooks::Syscalls.missing(b),
        None => probes::PROGRAMS.to_vec(),
    };
    rows.push(Row {
        feature: format!("raw tracepoints {} (BTF)", probes::PROGRAMS.join(" + ")),
        ok: missing.is_empty(),
        detail: if missing.is_empty() {
            "declared in the kernel's BTF".into()
        } else if btf.is_none() {
            "BTF unavailable".into()
        } else {
            format!("not in the kernel's BTF: {}", missing.join(", "))
        },
        need: Need::Required,
        role: "socket syscall capture (--capture-hooks syscalls, the default): one program at every syscall's entry and exit",
        fix: "use Linux 5.5 or newer built with CONFIG_DEBUG_INFO_BTF=y",
    });
    rows.push(socket_hooks_row(btf));

    let bpf_loop = btf.and_then(|b| b.func_id("bpf_loop")).is_some();
    rows.push(Row {
        feature: "bpf_loop helper".into(),
        ok: bpf_loop,
        detail: if bpf_loop {
            "in the kernel's BTF".into()
        } else if btf.is_none() {
            "BTF unavailable".into()
        } else {
            "not in the kernel's BTF (kernel older than 5.17)".into()
        },
        need: Need::Required,
        role: "walks a syscall's iovecs (gRPC writes one frame from many buffers)",
        fix: "use Linux 5.17 or newer",
    });

    let ring = aya::sys::is_map_supported(MapType::RingBuf);
    rows.push(Row {
        feature: "ring buffer map".into(),
        ok: matches!(ring, Ok(true)),
        detail: match ring {
            Ok(true) => "supported".into(),
            Ok(false) => "not supported (kernel older than 5.8)".into(),
            Err(e) => e.to_string(),
        },
        need: Need::Required,
        role: "kernel → agent event stream",
        fix: "use Linux 5.8 or newer",
    });

    let mut capture = Probes::load(&ProbesConfig::default(), std::process::id());
    let uprobe_test = match &mut capture {
        Ok(probes) => probes.attach_self_test().map_err(|e| e.to_string()),
        Err(_) => Err("the capture path did not load".to_string()),
    };
    rows.push(Row {
        feature: "capture path".into(),
        ok: capture.is_ok(),
        detail: match &capture {
            Ok(probes) => capture_detail(probes),
            Err(e) => e.to_string(),
        },
        need: Need::Required,
        role: "everything: the programs sockspan runs",
        fix: "see the detail; the rows above name the missing piece",
    });
    if let Ok(probes) = &mut capture {
        rows.push(conn_update_row(probes));
        rows.push(tls_row(probes));
        rows.push(inband_row(probes));
        rows.push(inband_mark_row(probes));
    }
    uprobe_test
}

/// Whether the agent can write its marks on connections (the budget's state, opaque, role) in
/// place in the kernel: a raw tracepoint program run by `BPF_PROG_TEST_RUN` (Linux 5.10+).
fn conn_update_row(probes: &mut Probes) -> Row {
    let updater = probes.conn_updater();
    Row {
        feature: "in-place connection updates (BPF_PROG_TEST_RUN)".into(),
        ok: updater.is_ok(),
        detail: match updater {
            Ok(_) => {
                "the agent's marks on a connection are written in the kernel, field by field".into()
            }
            Err(e) => e.to_string(),
        },
        need: Need::Optional,
        role: "without: the agent reads and writes back a connection's whole entry, which can lose what the programs wrote in between (the budget may then refuse more parents, or cut a trace)",
        fix: "use Linux 5.10 or newer",
    }
}

/// Whether the in-band mode (`--in-band`) can run: its `sock_ops` program loaded and attached
/// for real to the cgroup v2 root (the header-option callbacks it uses are Linux 5.10+).
fn inband_row(probes: &mut Probes) -> Row {
    let attached = probes.attach_inband_test();
    Row {
        feature: "in-band cross-host mode (sock_ops TCP header options)".into(),
        ok: attached.is_ok(),
        detail: match attached {
            Ok(()) => format!(
                "the sock_ops program loads and attaches to {}; `--in-band` carries each request's context in a TCP header option",
                crate::probes::inband::cgroup2_root().unwrap_or_default()
            ),
            Err(e) => e.to_string(),
        },
        need: Need::Optional,
        role: "without: `--in-band` cannot run; cross-host links come from the peer messages (`--peer-port`)",
        fix: "mount cgroup v2; grant CAP_NET_ADMIN",
    }
}

/// Whether the in-band mode can mark the connections opened before the agent (Linux 6.12+:
/// `TCP_BPF_SOCK_OPS_CB_FLAGS` in `bpf_setsockopt`): its TCP iterator loads and reads the
/// flags of a loopback connection of the check's own, changing nothing.
fn inband_mark_row(probes: &mut Probes) -> Row {
    let pair = std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| {
        let client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        Ok((listener, client, server))
    });
    let walked = probes.inband_mark_test();
    drop(pair);
    let (ok, detail) = match walked {
        Ok(marked) if marked.refused == 0 && marked.clients + marked.servers > 0 => (
            true,
            "a TCP iterator reads and sets the header-option flags of established connections: `--in-band` marks those opened before the agent at its start".to_string(),
        ),
        Ok(marked) if marked.refused > 0 => (false, marked.refusal()),
        Ok(_) => (
            false,
            "no established connection was found to try it on (a loopback connection could not be made)".to_string(),
        ),
        Err(e) => (false, e.to_string()),
    };
    Row {
        feature: "in-band: connections opened before the agent".into(),
        ok,
        detail,
        need: Need::Optional,
        role: "without: `--in-band` carries no context on connections opened before the agent (keep-alive pools, gRPC channels) until they are opened again; the peer messages still link them",
        fix: "Linux 6.12 or newer",
    }
}

/// The capture path's row: what loaded, and the verifier's walk of the largest program against
/// its limit (a program near it may be refused by another kernel or compiler).
fn capture_detail(probes: &Probes) -> String {
    let loaded = match probes.hooks() {
        probes::CaptureHooks::Socket => format!(
            "at the socket layer (the default here): {} programs attached, {} more reached by tail call; all verified",
            probes::SOCKET_PROGRAMS.len(),
            2 * (agent_common::EXIT_FAMILIES.len() - 1)
        ),
        _ => format!(
            "on the syscall tracepoints: {} programs attached, {} more reached by tail call; all verified",
            probes::PROGRAMS.len(),
            agent_common::EXIT_FAMILIES.len()
        ),
    };
    match probes.verified_instructions().first() {
        Some((name, count)) => format!(
            "{loaded}; largest walk: `{name}`, {count} instructions ({:.0} % of the verifier's 1,000,000)",
            f64::from(*count) / 10_000.0
        ),
        None => loaded,
    }
}

/// Which TLS libraries of the processes running now get their plaintext traced: the OpenSSL
/// probes attached for real to the system's libssl, to every libssl a process maps and to
/// executables with OpenSSL linked in, and the Go `crypto/tls` probes to Go executables.
fn tls_row(probes: &mut Probes) -> Row {
    let mut failed = probes.attach_tls(None).err().map(|e| e.to_string());
    if failed.is_none() {
        for pid in crate::runtime::processes_running() {
            if let Err(e @ crate::probes::tls::TlsProbeError::Privilege(_)) =
                probes.attach_tls(Some(pid))
            {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    let libraries = probes.tls_libraries();
    let covered: Vec<String> = libraries
        .iter()
        .filter(|l| l.result.is_ok())
        .map(|l| l.path.clone())
        .collect();
    let refused: Vec<String> = libraries
        .iter()
        .filter_map(|l| l.result.as_ref().err().map(|e| format!("{}: {e}", l.path)))
        .collect();
    let ok = failed.is_none() && !covered.is_empty();
    let mut detail = if covered.is_empty() {
        "no libssl covered".to_string()
    } else {
        format!("covered: {}", covered.join(", "))
    };
    if !refused.is_empty() {
        let _ = write!(detail, "; not covered: {}", refused.join("; "));
    }
    if let Some(why) = failed {
        let _ = write!(detail, "; {why}");
    }
    detail.push_str(
        "; not covered yet: OpenSSL/BoringSSL linked into a stripped executable (nothing names its \
         functions), rustls; OpenSSL on memory BIOs (Node.js, asyncio) on connections whose \
         handshake was not seen (open before the agent or before the executable was probed)",
    );
    Row {
        feature: "TLS plaintext (OpenSSL and Go crypto/tls uprobes)".into(),
        ok,
        detail,
        need: Need::Optional,
        role: "without: TLS connections give no span (never one from ciphertext)",
        fix: "grant CAP_SYS_ADMIN (deploy/README.md); `--no-runtime-probes tls` turns it off",
    }
}

/// Hooks later capabilities use, and hooks sockspan deliberately does without.
fn other_hook_rows(rows: &mut Vec<Row>, btf: Option<&Btf>, uprobe_test: Result<(), String>) {
    let optional: [(&str, (bool, String), &'static str); 5] = [
        (
            "uprobes",
            pmu("uprobe"),
            "runtime probes: Go goroutine, asyncio task and Node.js callback causality; TLS plaintext from libssl",
        ),
        (
            "sock_ops",
            program_supported(ProgramType::SockOps),
            "the in-band cross-host mode's TCP header options (`--in-band`)",
        ),
        (
            "sk_msg",
            program_supported(ProgramType::SkMsg),
            "message-level hooks on sockets (planned)",
        ),
        (
            "TC (sched_cls)",
            program_supported(ProgramType::SchedClassifier),
            "network-hop timing on the wire (planned)",
        ),
        (
            "cgroup_skb",
            program_supported(ProgramType::CgroupSkb),
            "per-container packet accounting (planned)",
        ),
    ];
    for (feature, (ok, detail), role) in optional {
        rows.push(Row {
            feature: feature.into(),
            ok,
            detail,
            need: Need::Optional,
            role,
            fix: "",
        });
    }
    if let Some(row) = kube_row() {
        rows.push(row);
    }
    rows.push(runtimes::asyncio_row(uprobe_test.clone()));
    rows.push(runtimes::go_row(uprobe_test.clone()));
    rows.push(runtimes::node_row(uprobe_test));
    let unused = [
        ("kprobes", pmu("kprobe")),
        ("fentry/fexit", probe_fentry(btf)),
    ];
    for (feature, (ok, detail)) in unused {
        rows.push(Row {
            feature: feature.into(),
            ok,
            detail,
            need: Need::NotUsed,
            role: "not needed: sockspan uses syscall tracepoints",
            fix: "",
        });
    }
}

/// In a Kubernetes pod: whether the API server lists this node's pods to the agent (labels and
/// owners name pods' services). No row outside a pod.
fn kube_row() -> Option<Row> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let result = runtime.block_on(crate::kube::probe())?;
    let (ok, detail) = match result {
        Ok(pods) => (
            true,
            format!("the API server lists {pods} pods of this node"),
        ),
        Err(e) => (false, e.to_string()),
    };
    Some(Row {
        feature: "Kubernetes pod list".into(),
        ok,
        detail,
        need: Need::Optional,
        role: "service names from pods' labels and owners (`--kube-api`); without it, from pod \
               names. Needs `list` on `pods` for the agent's service account \
               (deploy/daemonset.yaml)",
        fix: "",
    })
}

/// Whether Go programs get goroutine causality here: a real uprobe attach (kernels with the 2025
/// fix "perf/core: Require `CAP_SYS_ADMIN` for uprobes", in stable updates too, refuse it to
/// `CAP_PERFMON` alone).
fn rows() -> (Vec<Row>, Option<String>) {
    let mut rows = Vec::new();
    privilege_rows(&mut rows);
    let btf = Btf::from_kernel();
    let (btf, btf_error) = match btf {
        Ok(b) => (Some(b), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let uprobe_test = capture_rows(&mut rows, btf.as_ref(), btf_error);
    other_hook_rows(&mut rows, btf.as_ref(), uprobe_test);
    let broken = rows
        .iter()
        .find(|r| r.need == Need::Required && !r.ok)
        .map(|r| format!("{}: {} — fix: {}", r.feature, r.detail, r.fix));
    (rows, broken)
}

/// Prints the table; returns the process exit code.
#[must_use]
pub fn run() -> i32 {
    let (rows, broken) = rows();
    let width = rows.iter().map(|r| r.feature.len()).max().unwrap_or(10);
    println!(
        "{:<width$}  {:<7}  {:<9}  DETAIL / USE",
        "FEATURE", "STATUS", "NEED"
    );
    for row in &rows {
        let status = if row.ok { "ok" } else { "MISSING" };
        let need = match row.need {
            Need::Required => "required",
            Need::Optional => "optional",
            Need::NotUsed => "not used",
            Need::RequiredOrAdmin => "required*",
        };
        println!(
            "{:<width$}  {status:<7}  {need:<9}  {}",
            row.feature, row.detail
        );
        println!("{:<width$}  {:<7}  {:<9}  ↳ {}", "", "", "", row.role);
    }
    println!(
        "\n* CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (kernels before 5.8 know only it)."
    );
    if let Some(reason) = broken {
        println!("\ncapture path: BROKEN — {reason}");
        1
    } else {
        println!("\ncapture path: OK");
        0
    }
}
