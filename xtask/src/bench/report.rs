//! `cargo xtask bench`'s report: the BENCHMARKS.md sections rendered from the measured samples
//! (the measuring is in the parent module).

use std::fmt::Write as _;

use super::{AgentPhase, BODY_LEN, HttpSample, PipelineRun, PipelineRuns, Sample, Variant};

pub(super) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        f64::midpoint(values[n / 2 - 1], values[n / 2])
    }
}

/// "median (min–max)" of a list.
pub fn summary(values: &[f64], digits: usize) -> (f64, String) {
    let mut v = values.to_vec();
    let m = median(&mut v);
    let lo = v.first().copied().unwrap_or(0.0);
    let hi = v.last().copied().unwrap_or(0.0);
    (m, format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})"))
}

/// Mean ns per run of the named programs over a sample (`run_time_ns` ÷ `run_cnt`).
pub(super) fn program_ns(sample: &Sample, names: &[&str]) -> Option<f64> {
    let (time, count) = sample
        .programs
        .iter()
        .filter(|(n, ..)| names.iter().any(|w| n == w))
        .fold((0u64, 0u64), |(t, c), (_, pt, pc)| (t + pt, c + pc));
    (count > 0).then(|| time as f64 / count as f64)
}

/// Section 4: wrk against nginx.
pub(super) fn http_section(out: &mut String, samples: &[HttpSample]) {
    let of =
        |v: Variant| -> Vec<&HttpSample> { samples.iter().filter(|s| s.variant == v).collect() };
    let fixed = samples.first().map_or(0.0, |s| s.fixed_rate);
    let (untraced, _) = summary(
        &of(Variant::Untraced)
            .iter()
            .map(|s| s.saturation_rps)
            .collect::<Vec<_>>(),
        0,
    );
    let _ = writeln!(out, "\n## 4. End to end: wrk against nginx\n");
    let _ = writeln!(
        out,
        "Method: nginx 1.22 (Debian, one worker) on loopback answering a {BODY_LEN}-byte body; per variant, `wrk -t1 \
         -c32` at saturation, then a constant-rate client (16 keep-alive connections, latency from each \
         request's scheduled send time, wrk2-style) at {fixed:.0} requests/s: half the untraced saturation \
         measured once before the rounds, capped at the 40 000 requests/s this client sustains on the \
         same 2 vCPUs (above it the client, not the server, sets the latency). In (c) a fresh `sockspan run \
         --output jsonl` runs through each phase; its nginx SERVER spans are counted against the requests \
         sent, its ring drops read from its final counters (`--stats-file`). (e) is the agent as its README starts it: \
         `sockspan run` with spans into its embedded store (a new one per phase) and the query API and UI \
         serving; its nginx spans are counted in the store after it stops (`sockspan bench-store-count`). \
         (b) and (i) are the empty programs of section 1, on the syscall tracepoints and on the socket \
         layer's. (f) is (e) held to a CPU budget (`--max-cpu 0.25`), (h) to a tight one (`--max-cpu 0.05`): \
         their coverage is what the budget kept (docs/overhead.md); (k) and (l) are (e) and (h) capturing \
         at the socket layer (`--capture-hooks socket`, (i)'s hooks); in both phases they first take 3 s of the same \
         load unmeasured, for the budget to settle (its looks are half a second apart, from full capture), \
         which their coverage and CPU include.\n"
    );
    let _ = writeln!(
        out,
        "| variant | saturation req/s | ratio to (a) | p50 at fixed rate | p99 at fixed rate |\n|---|---|---|---|---|"
    );
    for v in Variant::ALL {
        let list = of(v);
        // A variant this kernel could not run (`Variant::runnable`).
        if list.is_empty() {
            continue;
        }
        let (rps, rps_text) = summary(
            &list.iter().map(|s| s.saturation_rps).collect::<Vec<_>>(),
            0,
        );
        let (_, p50) = summary(
            &list
                .iter()
                .map(|s| s.p50_us as f64 / 1000.0)
                .collect::<Vec<_>>(),
            3,
        );
        let (_, p99) = summary(
            &list
                .iter()
                .map(|s| s.p99_us as f64 / 1000.0)
                .collect::<Vec<_>>(),
            3,
        );
        let _ = writeln!(
            out,
            "| {} | {rps_text} | {:.3} | {p50} ms | {p99} ms |",
            v.label(),
            rps / untraced.max(1.0)
        );
    }
    let p99_of = |v: Variant| {
        summary(
            &of(v)
                .iter()
                .map(|s| s.p99_us as f64 / 1000.0)
                .collect::<Vec<_>>(),
            3,
        )
        .0
    };
    let untraced_p99 = p99_of(Variant::Untraced);
    for variant in [
        Variant::Sockspan,
        Variant::SockspanStore,
        Variant::SockspanBudget,
        Variant::SockspanTightBudget,
        Variant::SockspanSocketStore,
        Variant::SockspanSocketTightBudget,
    ] {
        let traced = of(variant);
        if traced.is_empty() {
            // Not runnable on this kernel (`Variant::runnable`).
            continue;
        }
        let (rps, _) = summary(
            &traced.iter().map(|s| s.saturation_rps).collect::<Vec<_>>(),
            0,
        );
        let ratios = Ratios {
            saturation: rps / untraced.max(1.0),
            p99: p99_of(variant) / untraced_p99.max(f64::MIN_POSITIVE),
        };
        agent_table(out, variant, &traced, &ratios, fixed);
    }
}

/// A traced variant's medians against the untraced one's in section 4.
pub(super) struct Ratios {
    /// Saturation throughput.
    saturation: f64,
    /// p99 latency at the fixed rate.
    p99: f64,
}

/// The agent's figures in both phases of section 4, against the targets.
pub(super) fn agent_table(
    out: &mut String,
    variant: Variant,
    traced: &[&HttpSample],
    ratios: &Ratios,
    fixed: f64,
) {
    let budget = variant.is_budget();
    let figure = |f: &dyn Fn(&AgentPhase) -> f64, digits: usize| -> [(f64, String); 2] {
        [
            summary(
                &traced.iter().map(|s| f(&s.saturation)).collect::<Vec<_>>(),
                digits,
            ),
            summary(
                &traced.iter().map(|s| f(&s.fixed)).collect::<Vec<_>>(),
                digits,
            ),
        ]
    };
    let [(_, cov_sat), (cov_fixed, cov_fixed_text)] = figure(&AgentPhase::coverage_pct, 1);
    let [(_, drops_sat), (drops_fixed, drops_fixed_text)] =
        figure(&|p: &AgentPhase| p.ring_drops as f64, 0);
    let [(_, cpu_sat), (_, cpu_fixed)] = figure(&AgentPhase::cpu_per_100k, 2);
    let [(_, rss_sat), (rss_fixed, rss_fixed_text)] = figure(&AgentPhase::rss_mib, 1);
    let _ = writeln!(
        out,
        "\n| {} | at saturation | at {fixed:.0} req/s | target |\n|---|---|---|---|",
        variant.label()
    );
    let ratio = ratios.saturation;
    let (least, with) = if budget {
        (0.85, "with a budget")
    } else {
        (0.70, "with defaults")
    };
    let _ = writeln!(
        out,
        "| requests/s, ratio to untraced | {ratio:.3} | — | ≥ {least:.2} at saturation {with}: {} (DeepFlow's published worst case on nginx: 0.61) |",
        verdict(ratio >= least)
    );
    let _ = writeln!(
        out,
        "| p99 at the fixed rate, ratio to untraced | — | {:.2} | ≤ 1.2: {} |",
        ratios.p99,
        verdict(ratios.p99 <= 1.2)
    );
    if budget {
        let _ = writeln!(
            out,
            "| nginx SERVER spans ÷ requests served, % | {cov_sat} | {cov_fixed_text} | what the budget kept |"
        );
    } else {
        let _ = writeln!(
            out,
            "| nginx SERVER spans ÷ requests served, % | {cov_sat} | {cov_fixed_text} | 100 %: {} |",
            verdict(cov_fixed >= 99.9)
        );
    }
    let _ = writeln!(
        out,
        "| records dropped by a full ring | {drops_sat} | {drops_fixed_text} | 0: {} |",
        verdict(drops_fixed < 0.5)
    );
    let _ = writeln!(
        out,
        "| agent CPU seconds per 100 k requests | {cpu_sat} | {cpu_fixed} | — |"
    );
    let _ = writeln!(
        out,
        "| agent peak RSS, MiB | {rss_sat} | {rss_fixed_text} | ≤ 40 MB: {} |",
        verdict(rss_fixed <= 40.0)
    );
}

/// The samples of one variant.
pub(super) fn samples_of(samples: &[(Variant, Sample)], v: Variant) -> Vec<&Sample> {
    samples
        .iter()
        .filter(|(x, _)| *x == v)
        .map(|(_, s)| s)
        .collect()
}

pub(super) fn report(
    samples: &[(Variant, Sample)],
    pipeline: &PipelineRuns,
    round_trips: u64,
    rounds: usize,
    exchanges: u64,
    quick: bool,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `cargo xtask bench{}` on this project's machine kind (Debian 12, kernel {}, 2 vCPUs, no \
         hardware counters). Every figure is the median of the runs with min–max in brackets; variants ran \
         interleaved in rotating order ({rounds} rounds).\n",
        if quick { " --quick" } else { "" },
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    syscall_section(&mut out, samples, round_trips);
    agent_section(&mut out, samples, round_trips);
    pipeline_section(&mut out, pipeline, exchanges);
    out
}

pub(super) fn verdict(ok: bool) -> &'static str {
    if ok { "meets" } else { "misses" }
}

/// Section 1: ns per syscall of the ping-pong variants, and the programs' own run time.
pub(super) fn syscall_section(out: &mut String, samples: &[(Variant, Sample)], round_trips: u64) {
    let ns = |v: Variant| -> Vec<f64> {
        samples_of(samples, v)
            .iter()
            .map(|s| s.ns_per_syscall)
            .collect()
    };
    let other = |v: Variant| other_syscall_ns(samples, v);
    let (a, a_text) = summary(&ns(Variant::Untraced), 0);
    let (b, b_text) = summary(&ns(Variant::Floor), 0);
    let (socket_floor, i_text) = summary(&ns(Variant::FloorSocket), 0);
    let (c, c_text) = summary(&ns(Variant::Sockspan), 0);
    let (d, d_text) = summary(&ns(Variant::SockspanOpaque), 0);
    let (inband, inband_text) = summary(&ns(Variant::SockspanInband), 0);
    let (at_socket, j_text) = summary(&ns(Variant::SockspanSocket), 0);
    let _ = writeln!(out, "## 1. Per-syscall cost on a loopback socket\n");
    let _ = writeln!(
        out,
        "Method: one thread, a loopback TCP connection, {round_trips} round trips of `write` (a 64-byte \
         request) → `read` → `write` (a 64-byte response) → `read` (four socket syscalls each, no \
         wake-ups), timed with the monotonic clock; ns per syscall = elapsed ÷ (4 × round trips); then, \
         in the same run, {calls} calls of `getppid`, a syscall sockspan never traces, timed the same \
         way: what the hooks cost every other syscall of every process (`epoll_wait`, `futex`, file \
         I/O). (a) nothing attached; (b) `sockspan bench-floor`: empty programs on the same two hooks (the raw \
         tracepoints `sys_enter` and `sys_exit`, attached by BTF); (i) `sockspan bench-floor --hooks \
         socket`: empty programs on the socket layer's tracepoints instead (`sock_send_length` and \
         `sock_recv_length`, which `sock_sendmsg` and `sock_recvmsg` fire after each send and \
         receive, whatever the syscall), the floor of capturing there; (c) `sockspan run --output jsonl > \
         /dev/null`: the full agent, the messages an HTTP/1.1 request and response, so every syscall \
         takes the capture path (payload copied and sent, each exchange turned into a client and a server \
         span); (d) the same agent with 64 bytes that are not HTTP: after each connection's first 8 data \
         syscalls the programs know it is opaque and send nothing more. (a), (b), (i), (c) and (g) carry the \
         HTTP messages; (d) is the cost on traffic sockspan does not parse; (g) is (c) in the in-band \
         cross-host mode: each request's first segment carries its context in a TCP header option \
         (written by the `sock_ops` program, read back on the server's end, both ends in the agent); \
         (j) is (c) capturing at the socket layer (`--capture-hooks socket`), on (i)'s hooks.\n",
        calls = round_trips * 4
    );
    let _ = writeln!(
        out,
        "| variant | ns per socket syscall | ns per other syscall (`getppid`) |\n|---|---|---|"
    );
    let socket_ran = !samples_of(samples, Variant::FloorSocket).is_empty();
    for (v, text) in [
        (Variant::Untraced, &a_text),
        (Variant::Floor, &b_text),
        (Variant::FloorSocket, &i_text),
        (Variant::Sockspan, &c_text),
        (Variant::SockspanOpaque, &d_text),
        (Variant::SockspanInband, &inband_text),
        (Variant::SockspanSocket, &j_text),
    ] {
        if v.at_socket_layer() && !socket_ran {
            let _ = writeln!(out, "| {} | — (not on this kernel) | — |", v.label());
        } else {
            let _ = writeln!(out, "| {} | {text} | {} |", v.label(), other(v).1);
        }
    }
    floor_note(out, samples, b - a, socket_ran.then_some(socket_floor - a));
    if socket_ran {
        let _ = writeln!(
            out,
            "\n- (j) over (i), capture at the socket layer beyond its floor: **{:.0} ns per syscall**; \
             (j) over (c): {:+.0} ns per socket syscall, {:+.0} ns per other syscall.",
            at_socket - socket_floor,
            at_socket - c,
            other_syscall_ns(samples, Variant::SockspanSocket).0
                - other_syscall_ns(samples, Variant::Sockspan).0
        );
    }
    let _ = writeln!(
        out,
        "\n- (g) over (c), the in-band mode: **{:.0} ns per syscall**, {:.0} ns per request (its four \
         syscalls: the option written, parsed and adopted, the contexts' records).",
        inband - c,
        4.0 * (inband - c)
    );
    let _ = writeln!(
        out,
        "\n- (c) over (b), the capture path beyond the floor: **{:.0} ns per syscall** (target ≤ 250 ns: \
         {}; published: DeepFlow ≤ 588 ns over an empty program, an aya-based research agent ≈ 2.5 µs). \
         It includes the agent's user-space work on the other vCPU (section 2).\n- (d) over (b), traffic \
         sockspan does not parse: **{:.0} ns per syscall** (target ≤ 250 ns: {}).\n- (c) over (a): {:.0} \
         ns per syscall; (b) over (a), the floor itself: {:.0} ns.\n",
        c - b,
        verdict(c - b <= 250.0),
        d - b,
        verdict(d - b <= 250.0),
        c - a,
        b - a
    );
    program_table(out, samples, c - b);
}

/// ns per `getppid` of a variant's samples: median and "median (min–max)".
fn other_syscall_ns(samples: &[(Variant, Sample)], v: Variant) -> (f64, String) {
    let values: Vec<f64> = samples_of(samples, v)
        .iter()
        .map(|s| s.ns_per_other_syscall)
        .collect();
    summary(&values, 0)
}

/// Section 1's bullet on the floors: what the syscall hooks add to a syscall they do not trace,
/// and (`socket_over_a`, when (i) ran) what the socket layer's add.
fn floor_note(
    out: &mut String,
    samples: &[(Variant, Sample)],
    b_over_a: f64,
    socket_over_a: Option<f64>,
) {
    let (other_a, _) = other_syscall_ns(samples, Variant::Untraced);
    let _ = write!(
        out,
        "\n- The floor on other syscalls: (b) over (a) **{:.0} ns per `getppid`**. Any program on a \
         syscall tracepoint puts every task on the kernel's slow syscall path and runs on every \
         syscall; on socket syscalls, (b) over (a) {b_over_a:.0} ns.",
        other_syscall_ns(samples, Variant::Floor).0 - other_a,
    );
    if let Some(socket_over_a) = socket_over_a {
        let _ = write!(
            out,
            " The socket layer's programs run only where a socket sends or receives: (i) over (a) \
             {:.0} ns per `getppid`, {socket_over_a:.0} ns per socket syscall.",
            other_syscall_ns(samples, Variant::FloorSocket).0 - other_a,
        );
    }
    let _ = writeln!(out);
}

/// The programs' own run time in section 1, from the kernel's BPF statistics.
pub(super) fn program_table(out: &mut String, samples: &[(Variant, Sample)], c_over_b: f64) {
    let per_run = |v: Variant, names: &[&str]| -> String {
        let values: Vec<f64> = samples_of(samples, v)
            .iter()
            .filter_map(|s| program_ns(s, names))
            .collect();
        summary(&values, 0).1
    };
    let per_syscall = |v: Variant, names: &[&str]| -> (f64, String) {
        let values: Vec<f64> = samples_of(samples, v)
            .iter()
            .map(|s| {
                let time: u64 = s
                    .programs
                    .iter()
                    .filter(|(n, ..)| names.iter().any(|w| n == w))
                    .map(|(_, t, _)| *t)
                    .sum();
                time as f64 / s.stats_syscalls.max(1.0)
            })
            .collect();
        summary(&values, 0)
    };
    let both = ["sys_enter", "sys_exit"];
    let floor_both = ["floor_sys_enter", "floor_sys_exit"];
    let _ = writeln!(out, "### Program run time (kernel BPF statistics)\n");
    let _ = writeln!(
        out,
        "Method: the timed runs above have the kernel's BPF statistics off (they cost ~100 ns per \
         syscall themselves: two `sched_clock` reads per program run); after each, a pass of a quarter \
         of the round trips runs with `kernel.bpf_stats_enabled=1`, `bpftool prog show --json` before \
         and after it. Per run: Δrun_time_ns ÷ Δrun_cnt, over every syscall on the host during the pass \
         (the statistics add ~50 ns to each run). Per ping-pong syscall: Δrun_time_ns of both programs \
         ÷ the pass's ping-pong syscalls.\n"
    );
    let (c_prog, c_prog_text) = per_syscall(Variant::Sockspan, &both);
    let (_, d_prog_text) = per_syscall(Variant::SockspanOpaque, &both);
    let breakdown = breakdown_table(samples);
    let (floor_prog, floor_prog_text) = per_syscall(Variant::Floor, &floor_both);
    let _ = writeln!(
        out,
        "| program | (c) ns per run | (d) ns per run |\n|---|---|---|"
    );
    let _ = writeln!(
        out,
        "| `sys_enter` (egress start time; `close`) | {} | {} |",
        per_run(Variant::Sockspan, &["sys_enter"]),
        per_run(Variant::SockspanOpaque, &["sys_enter"])
    );
    let _ = writeln!(
        out,
        "| `sys_exit` (lookup, payload copy, ring output) | {} | {} |",
        per_run(Variant::Sockspan, &["sys_exit"]),
        per_run(Variant::SockspanOpaque, &["sys_exit"])
    );
    let _ = writeln!(
        out,
        "\nProgram time per ping-pong syscall, both programs: (c) {c_prog_text} ns, (d) {d_prog_text} ns; \
         the floor's empty programs {floor_prog_text} ns (each figure includes the statistics' own cost). \
         Beyond the empty programs sockspan's take ≈ {:.0} ns per syscall in (c); the rest of (c) − (b), \
         ≈ {:.0} ns, is the agent draining the ring and building spans on the other vCPU of this 2-vCPU \
         host.\n",
        c_prog - floor_prog,
        (c_over_b - (c_prog - floor_prog)).max(0.0)
    );
    out.push_str(&breakdown);
}

/// Where the exit program's time goes: its run time cut short after each step, against the
/// empty program and the whole one.
pub(super) fn breakdown_table(samples: &[(Variant, Sample)]) -> String {
    let per_run = |v: Variant, name: &str| -> (f64, String) {
        let values: Vec<f64> = samples_of(samples, v)
            .iter()
            .filter_map(|s| program_ns(s, &[name]))
            .collect();
        summary(&values, 0)
    };
    let rows = [
        (
            "empty program (b)",
            "the hook itself and the statistics",
            per_run(Variant::Floor, "floor_sys_exit"),
        ),
        (
            Variant::StageLookup.label(),
            "syscall filter, the entry stamp taken (egress), pid, the connection table lookup",
            per_run(Variant::StageLookup, "sys_exit"),
        ),
        (
            Variant::StageClock.label(),
            "one clock read (ingress; egress uses its entry stamp)",
            per_run(Variant::StageClock, "sys_exit"),
        ),
        (
            Variant::StageCopy.label(),
            "`bpf_probe_read_user` of the 64-byte payload, protocol detection",
            per_run(Variant::StageCopy, "sys_exit"),
        ),
        (
            "the whole exit program (c)",
            "the record's header, the ring output, counters, byte totals",
            per_run(Variant::Sockspan, "sys_exit"),
        ),
    ];
    let mut out = String::new();
    let _ = writeln!(out, "### Where the exit program's time goes\n");
    let _ = writeln!(
        out,
        "Method: `sockspan bench-floor --stage …` loads the capture programs told to return after \
         one step (`CaptureConfig::stop_after`, a read-only global: the verifier prunes the other \
         stages' branches, so the capture programs carry no checks; the time of `sys_exit` includes \
         the family program it tail-calls); each ran a ping-pong of a \
         quarter of the round trips, in rotating order, with the statistics pass as above. A step \
         costs the difference between its row and the one before (medians; the per-run figures \
         include the statistics' ~50 ns and the host's other syscalls, which leave at the filter). \
         The first and last rows are (b) and (c) of the main rotation: in (c) the agent also runs \
         and drains the ring on the other vCPU, so the last step carries what its reading costs \
         the writer (cache lines moving between the vCPUs).\n"
    );
    let _ = writeln!(
        out,
        "| exit program | ns per run | step | the step adds |\n|---|---|---|---|"
    );
    let mut before: Option<f64> = None;
    for (label, step, (median, text)) in rows {
        let added = before.map_or_else(|| "—".to_string(), |b| format!("{:.0} ns", median - b));
        let _ = writeln!(out, "| {label} | {text} | {step} | {added} |");
        before = Some(median);
    }
    out.push('\n');
    out
}

/// Section 2: the agent's CPU and memory while it captured the ping-pong.
pub(super) fn agent_section(out: &mut String, samples: &[(Variant, Sample)], round_trips: u64) {
    let sockspan = samples_of(samples, Variant::Sockspan);
    let cpu: Vec<f64> = sockspan.iter().map(|s| s.agent_cpu_s).collect();
    let rss: Vec<f64> = sockspan
        .iter()
        .map(|s| s.agent_peak_rss_kb as f64 / 1024.0)
        .collect();
    let (_, cpu_text) = summary(&cpu, 2);
    let (_, rss_text) = summary(&rss, 1);
    let median_ns = summary(
        &sockspan
            .iter()
            .map(|s| s.ns_per_syscall)
            .collect::<Vec<_>>(),
        0,
    )
    .0;
    let syscalls = round_trips as f64 * 4.0;
    let cpu_per_syscall_us: Vec<f64> = cpu.iter().map(|c| c * 1e6 / syscalls).collect();
    let (_, cpu_us_text) = summary(&cpu_per_syscall_us, 2);
    let _ = writeln!(out, "## 2. Agent cost during (c)\n");
    let _ = writeln!(
        out,
        "Method: `/proc/<agent>/stat` utime + stime before and after each (c) run; `VmHWM` (peak RSS) at its end.\n"
    );
    let _ = writeln!(out, "| figure | value |\n|---|---|");
    let _ = writeln!(
        out,
        "| agent CPU seconds per run ({:.0} k captured syscalls) | {cpu_text} |",
        syscalls / 1000.0
    );
    let _ = writeln!(out, "| agent CPU µs per captured syscall | {cpu_us_text} |");
    let _ = writeln!(
        out,
        "| agent peak RSS, MiB | {rss_text} (~{:.0} k spans/s, written as JSON lines; the ≤ 40 MB target is checked at the nginx load, section 4) |",
        2.0 * round_trips as f64 / 1000.0 / (syscalls * median_ns / 1e9).max(1e-9)
    );
}

/// Section 3: the user-space pipeline's throughput on one core, counting spans and into the
/// embedded store.
pub(super) fn pipeline_section(out: &mut String, runs: &PipelineRuns, exchanges: u64) {
    let (pipeline, stored, grpc) = (&runs.http, &runs.stored, &runs.grpc);
    let of = |runs: &[PipelineRun], f: fn(&PipelineRun) -> f64, digits| {
        summary(&runs.iter().map(f).collect::<Vec<_>>(), digits)
    };
    let (events_rate, events_text) = of(pipeline, |p| p.events_per_s, 0);
    let (exchanges_rate, exchanges_text) = of(pipeline, |p| p.exchanges_per_s, 0);
    let (_, stored_events) = of(stored, |p| p.events_per_s, 0);
    let (_, stored_exchanges) = of(stored, |p| p.exchanges_per_s, 0);
    let (_, bytes_per_span) = of(stored, |p| p.store_bytes_per_span, 0);
    let (_, lookup) = of(stored, |p| p.lookup_us, 1);
    let (_, grpc_events) = of(grpc, |p| p.events_per_s, 0);
    let (_, grpc_exchanges) = of(grpc, |p| p.exchanges_per_s, 0);
    let (_, distinct_events) = of(&runs.distinct, |p| p.events_per_s, 0);
    let (_, distinct_exchanges) = of(&runs.distinct, |p| p.exchanges_per_s, 0);
    let (_, redis_events) = of(&runs.redis, |p| p.events_per_s, 0);
    let (_, redis_exchanges) = of(&runs.redis, |p| p.exchanges_per_s, 0);
    let _ = writeln!(out, "\n## 3. The user-space pipeline alone\n");
    let _ = writeln!(
        out,
        "Method: `sockspan bench-pipeline --exchanges {exchanges}`: synthesized HTTP/1.1 keep-alive traffic \
         between 64 client/server connection pairs on one host (both ends seen: 4 data events and 2 linked \
         spans per exchange) through conntrack, HTTP framing and pairing, linking and a counting exporter, \
         on one core; {} runs.\n",
        pipeline.len()
    );
    let _ = writeln!(out, "| figure | value | target |\n|---|---|---|");
    let _ = writeln!(
        out,
        "| events per second | {events_text} | ≥ 1 000 000: {} |",
        verdict(events_rate >= 1e6)
    );
    let _ = writeln!(
        out,
        "| HTTP exchanges per second | {exchanges_text} | ≥ 200 000: {} |",
        verdict(exchanges_rate >= 2e5)
    );
    let _ = writeln!(
        out,
        "| HTTP exchanges per second, every head its own (`--protocol http1-distinct`) | {distinct_exchanges} ({distinct_events} events/s) | — |"
    );
    let _ = writeln!(
        out,
        "| gRPC unary calls (HTTP/2) per second (`--protocol http2`) | {grpc_exchanges} ({grpc_events} events/s) | — |"
    );
    let _ = writeln!(
        out,
        "| Redis commands per second (`--protocol redis`) | {redis_exchanges} ({redis_events} events/s) | — |"
    );
    let _ = writeln!(
        out,
        "\nThe gRPC runs synthesize what a grpcio client and server write for a unary call \
         (HEADERS + DATA one way, HEADERS + DATA + trailers back), each connection's first call \
         inserting its headers into both HPACK tables and later calls referring to them by index, \
         through the same stages with HTTP/2 framing, HPACK and stream pairing; the Redis runs, what \
         redis-py and redis-server write for a `GET` of a 64-byte value (RESP2), through RESP framing, \
         pairing in order and the database summary; both alternating with the HTTP/1.1 runs. The \
         HTTP/1.1 runs repeat one request and one response, so after the first exchange every head \
         is answered from the heads parsed before (`protocol/http1/head_cache.rs`); the \
         `http1-distinct` runs give each request its own target and each response its own header, \
         so only a connection's second end finds its head there.\n"
    );
    let _ = writeln!(
        out,
        "\nThe same, with `--store`: spans into the embedded store (the default output) instead of \
         the counting exporter, alternating with the runs above; a new store per run. Then up to 1 000 \
         traces spread over the store are read back by id.\n"
    );
    let _ = writeln!(out, "| figure | value |\n|---|---|");
    let _ = writeln!(
        out,
        "| events per second, into the store | {stored_events} |"
    );
    let _ = writeln!(
        out,
        "| HTTP exchanges per second, into the store | {stored_exchanges} |"
    );
    let _ = writeln!(out, "| store file bytes per span | {bytes_per_span} |");
    let _ = writeln!(out, "| µs to read one trace back by id | {lookup} |");
    let _ = writeln!(
        out,
        "\nThe end-to-end figures against nginx follow in section 4."
    );
}

/// A column's values for one phase (`true`: probes attached).
pub type PhaseValues<'a> = dyn Fn(bool) -> Vec<f64> + 'a;

/// The rows of a table comparing an agent with runtime probes (`probes attached`) and without
/// (`probes <off>`): per column, the phase's values (`values(probes)`) summarised with that many
/// decimals. Returns the first column's medians, attached then not.
pub fn probe_phase_rows(
    out: &mut String,
    off: &str,
    columns: &[(&PhaseValues<'_>, usize)],
    summary: impl Fn(&[f64], usize) -> (f64, String),
) -> [f64; 2] {
    let mut medians = [0.0; 2];
    for (i, probes) in [true, false].into_iter().enumerate() {
        let mut row = if probes {
            "| probes attached".to_string()
        } else {
            format!("| probes {off}")
        };
        for (c, (values, decimals)) in columns.iter().enumerate() {
            let (median, text) = summary(&values(probes), *decimals);
            if c == 0 {
                medians[i] = median;
            }
            row.push_str(" | ");
            row.push_str(&text);
        }
        row.push_str(" |");
        let _ = writeln!(out, "{row}");
    }
    medians
}
