//! `cargo xtask stress` and `cargo xtask soak`: the hardening figures at full scale (the root
//! tests run the same scenarios small). Both drive the release agent in its default mode and
//! write their figures to HARDENING.md.
//!
//! - stress: hostile traffic through a traced nginx: random bytes, a 1 MiB header, truncated
//!   and reset requests, a response nobody asked for, N connections each holding half a head,
//!   then M short connections.
//! - soak: an OTLP back end that is down, answering 503, too slow and answering 400, for the
//!   given minutes in all, then back; traffic never stops.

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use sockspan_tests::{Agent, Nginx, Output, Talking, free_port, http_server};

use crate::util::{release_agent, workspace_root, write_section};

/// Resident-set samples of one process, taken every `every` until dropped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(f64, u64)>>>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    sockspan_tests::proc_status_kib(pid, "VmRSS")
}

impl RssSampler {
    fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    samples.push((started.elapsed().as_secs_f64(), kib));
                }
                std::thread::sleep(every);
            }
            samples
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(f64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Largest sample in the window [from, to) seconds.
fn max_between(samples: &[(f64, u64)], from: f64, to: f64) -> u64 {
    samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, k)| *k)
        .max()
        .unwrap_or(0)
}

fn agent_command(bin: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("run").args(args);
    cmd
}

fn fresh_store(name: &str) -> Result<String> {
    let dir = std::env::temp_dir().join(format!("sockspan-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join("traces.redb").display().to_string())
}

fn count_after(line: &str, prefix: &str) -> Result<u64> {
    line.trim_start_matches(prefix)
        .trim()
        .parse()
        .with_context(|| format!("cannot read a count from {line:?}"))
}

pub fn stress(idle: u64, churn: u64) -> Result<()> {
    if !crate::util::is_root() {
        bail!("stress loads eBPF programs: run it as root");
    }
    crate::setup::test_dependencies()?;
    let bin = release_agent()?;
    let nginx = Nginx::start();
    let port = nginx.port.to_string();
    let store = fresh_store("stress")?;
    let ui = format!("127.0.0.1:{}", free_port());
    let agent = Agent::spawn(agent_command(&bin, &["--store", &store, "--ui", &ui]));
    let rss = RssSampler::start(agent.pid(), Duration::from_millis(500));
    let started = Instant::now();
    let at_start = rss_kib(agent.pid()).unwrap_or(0);

    eprintln!("xtask stress: odd requests");
    let mix = Talking::start("hostile.py", &["mix", &port]);
    let _ = mix.line("done", Duration::from_mins(2));
    eprintln!("xtask stress: {idle} connections holding half a head");
    let mut holders = Talking::start("hostile.py", &["idle", &port, &idle.to_string(), "2048"]);
    let _ = holders.line("holding", Duration::from_mins(10));
    let held_at = started.elapsed().as_secs_f64();
    // The memory figure is of connections held a while, not of the moment the last one opened.
    std::thread::sleep(Duration::from_secs(5));
    let rss_holding = rss_kib(agent.pid()).unwrap_or(0);
    eprintln!("xtask stress: {churn} short connections");
    let churn_started = Instant::now();
    let churn_client = Talking::start("hostile.py", &["churn", &port, &churn.to_string()]);
    let churned = count_after(
        &churn_client.line("churned", Duration::from_hours(2)),
        "churned",
    )?;
    let churn_seconds = churn_started.elapsed().as_secs_f64();
    // The holders reset their connections and exit: the agent sees every reset before it stops.
    holders.close_stdin();
    holders.wait_for_exit(Duration::from_mins(2));
    let out = agent.stop();
    let samples = rss.finish();
    if !out.status.success() {
        bail!("the agent failed under hostile traffic:\n{}", out.stderr);
    }
    let field = |k: &str| out.counter(k);
    let peak = samples.iter().map(|(_, k)| *k).max().unwrap_or(0);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Last `cargo xtask stress --idle {idle} --churn {churn}` (release agent, default \
         settings: store + UI, `--max-conns` 65 536; nginx on loopback; RSS sampled every \
         0.5 s from /proc):\n"
    );
    let _ = writeln!(text, "| figure | value |\n|---|---:|");
    let rows: Vec<(&str, String)> = vec![
        ("RSS at start", format!("{:.1} MiB", mib(at_start))),
        (
            "RSS holding the idle connections (both ends traced)",
            format!("{:.1} MiB", mib(rss_holding)),
        ),
        (
            "peak RSS while holding them",
            format!("{:.1} MiB", mib(max_between(&samples, 0.0, held_at + 5.0))),
        ),
        (
            "peak RSS over the whole run",
            format!("{:.1} MiB", mib(peak)),
        ),
        (
            "short connections (one request each)",
            format!("{churned} in {churn_seconds:.0} s"),
        ),
        (
            "connections opened (traced)",
            field("conns_opened").to_string(),
        ),
        (
            "most connections tracked at once",
            field("conns_peak").to_string(),
        ),
        (
            "evicted because the table was full",
            field("conns_evicted_full").to_string(),
        ),
        ("spans stored", field("spans_exported").to_string()),
        ("head-budget drops", field("head_budget_drops").to_string()),
        (
            "events dropped by a full ring",
            field("ring_full_drops").to_string(),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(text, "| {name} | {value} |");
    }
    print!("{text}");
    write_section(&workspace_root().join("HARDENING.md"), "stress", &text)?;
    drop(nginx);
    Ok(())
}

pub fn soak(minutes: f64) -> Result<()> {
    if !crate::util::is_root() {
        bail!("soak loads eBPF programs: run it as root");
    }
    crate::setup::test_dependencies()?;
    let bin = release_agent()?;
    let bad = (minutes * 60.0 / 4.0).max(5.0);
    let up = (bad / 2.0).clamp(20.0, 120.0);
    let total = bad * 4.0 + up;
    let schedule = format!("down:{bad},unavailable:{bad},slow:{bad},error:{bad},up:0");
    let (otlp_port, web_port) = (free_port(), free_port());
    let _web = http_server("127.0.0.1", web_port);
    let receiver = Talking::start("otlp_faulty.py", &[&otlp_port.to_string(), &schedule]);
    let _ = receiver.line("ready", Duration::from_secs(20));
    let endpoint = format!("http://127.0.0.1:{otlp_port}");
    let agent = Agent::spawn(agent_command(
        &bin,
        &["--output", "otlp", "--otlp-endpoint", &endpoint],
    ));
    let rss = RssSampler::start(agent.pid(), Duration::from_secs(5));
    let rate: u32 = 50;
    eprintln!(
        "xtask soak: {rate} requests/s for {total:.0} s; the back end misbehaves for {:.1} min",
        bad * 4.0 / 60.0
    );
    let client = Talking::start(
        "steady_client.py",
        &[
            &web_port.to_string(),
            &rate.to_string(),
            &format!("{total}"),
        ],
    );
    let requests = count_after(
        &client.line("requests", Duration::from_secs_f64(total + 120.0)),
        "requests",
    )?;
    // What the agent still holds goes out in its shutdown's drain.
    let out = agent.stop();
    let samples = rss.finish();
    let report: Value = serde_json::from_str(&receiver.stop("{")).context("receiver report")?;
    if !out.status.success() {
        bail!("the agent failed during the outage:\n{}", out.stderr);
    }
    let text = soak_report(
        &SoakRun {
            minutes,
            rate,
            bad,
            requests,
        },
        &out,
        &report,
        &samples,
    );
    print!("{text}");
    write_section(&workspace_root().join("HARDENING.md"), "soak", &text)?;
    Ok(())
}

/// What one soak run was asked to do.
struct SoakRun {
    minutes: f64,
    rate: u32,
    /// Seconds of each bad phase.
    bad: f64,
    requests: u64,
}

fn soak_report(run: &SoakRun, out: &Output, report: &Value, samples: &[(f64, u64)]) -> String {
    let SoakRun {
        minutes,
        rate,
        bad,
        requests,
    } = *run;
    let field = |k: &str| out.counter(k);
    let outage_end = bad * 4.0;
    let first_minute = max_between(samples, 0.0, 60.0_f64.min(outage_end));
    let outage_peak = max_between(samples, 0.0, outage_end);
    let last_outage_minute = max_between(samples, (outage_end - 60.0).max(0.0), outage_end);
    let recovery = match (report["first_ok_at"].as_f64(), report["up_since"].as_f64()) {
        (Some(ok), Some(up)) => format!("{:.1} s", ok - up),
        _ => "never".to_string(),
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Last `cargo xtask soak --minutes {minutes}` (release agent, `--output otlp`, HTTP/protobuf, \
         default 10 s export timeout; {rate} requests/s through a traced Python client and \
         server the whole time; back end: {bad:.0} s each of down, 503, answers after 30 s, \
         400, then up; RSS sampled every 5 s):\n"
    );
    let _ = writeln!(text, "| figure | value |\n|---|---:|");
    let phases = &report["phases"];
    let rows: Vec<(&str, String)> = vec![
        ("outage survived", format!("{:.1} min", outage_end / 60.0)),
        ("requests served", requests.to_string()),
        (
            "spans built (every request, outage or not)",
            field("spans_started").to_string(),
        ),
        ("spans delivered", field("spans_exported").to_string()),
        (
            "spans dropped and counted (queue full or retries spent)",
            field("export_failed").to_string(),
        ),
        (
            "events dropped by a full ring",
            field("ring_full_drops").to_string(),
        ),
        (
            "spans unaccounted for (built − delivered − dropped − still held)",
            (field("spans_started").cast_signed()
                - field("spans_exported").cast_signed()
                - field("export_failed").cast_signed()
                - field("held").cast_signed())
            .to_string(),
        ),
        (
            "export attempts seen: 503 / slow / 400",
            format!(
                "{} / {} / {}",
                phases["unavailable"]["requests"],
                phases["slow"]["requests"],
                phases["error"]["requests"]
            ),
        ),
        (
            "RSS peak, first minute of the outage",
            format!("{:.1} MiB", mib(first_minute)),
        ),
        (
            "RSS peak, last minute of the outage",
            format!("{:.1} MiB", mib(last_outage_minute)),
        ),
        (
            "RSS peak, whole outage",
            format!("{:.1} MiB", mib(outage_peak)),
        ),
        ("first delivery after the back end returned", recovery),
    ];
    for (name, value) in rows {
        let _ = writeln!(text, "| {name} | {value} |");
    }
    text
}
