//! Developer tasks: `cargo xtask setup | test | run`.

mod bench;
mod bench_http;
mod bench_runtime;
mod bench_tls;
mod causality;
mod compare;
mod fuzz;
mod lint;
mod setup;
mod stress;
mod test;
mod util;

use std::process::Command;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "sockspan developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (Debian rustc-web, BPF core, bpf-linker); idempotent.
    Setup,
    /// The gates CI keeps: `cargo fmt --check`, pedantic clippy with warnings as errors, and
    /// clippy over the eBPF crate for its BPF target.
    Lint,
    /// The gates (`lint`, a 10-second pass of every fuzz target), unit tests, then the root
    /// integration tests (real processes, real kernel); with a filter or `--unit`, the tests
    /// alone. What CI runs.
    Test {
        /// Only integration tests whose name contains this.
        filter: Option<String>,
        /// Unit tests only (no root needed).
        #[arg(long = "unit")]
        unit_only: bool,
    },
    /// Measure overhead over the empty-program floor, agent cost and pipeline throughput;
    /// writes BENCHMARKS.md.
    Bench {
        /// Fewer iterations (about two minutes).
        #[arg(long)]
        quick: bool,
        /// Only the runtime probes' section, printed (BENCHMARKS.md is left as it is).
        #[arg(long)]
        runtime_probes_only: bool,
        /// Only the Flask chain's section (sockspan beside OpenTelemetry's Python
        /// auto-instrumentation), printed (BENCHMARKS.md is left as it is).
        #[arg(long, conflicts_with = "runtime_probes_only")]
        flask_only: bool,
        /// Only section 1 (the per-syscall ping-pong and its breakdown), printed.
        #[arg(long, conflicts_with_all = ["runtime_probes_only", "flask_only"])]
        ping_pong_only: bool,
        /// Only the nginx section (saturation, fixed rate, agent CPU per request), printed.
        #[arg(long, conflicts_with_all = ["runtime_probes_only", "flask_only", "ping_pong_only"])]
        nginx_only: bool,
    },
    /// Two agent builds' CPU per request, paired: both trace the same wrk traffic against nginx
    /// at once (steady to ~1.5 % where one build at a time spreads ±25 % on a shared VM).
    Compare {
        /// The build measured against (a `sockspan` binary).
        a: std::path::PathBuf,
        /// The build measured.
        b: std::path::PathBuf,
        /// Rounds, each two runs (A started first, then B).
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        /// Seconds of traffic per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Flags A runs with besides its store and UI (`--a-args="--link-delay-ms 20"`).
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        a_args: String,
        /// Flags B runs with besides its store and UI.
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        b_args: String,
        /// Environment A runs with, `NAME=VALUE`, repeatable (a one-off switch in a patched
        /// build).
        #[arg(long, value_parser = env_pair)]
        a_env: Vec<(String, String)>,
        /// Environment B runs with, as `--a-env`.
        #[arg(long, value_parser = env_pair)]
        b_env: Vec<(String, String)>,
    },
    /// Runtime chains (threaded, nginx, asyncio, Node.js, Go, mixed) under the release agent,
    /// every request's tree scored; the table goes to docs/causality.md.
    Causality {
        /// Only this chain (the table is not written).
        #[arg(long)]
        chain: Option<String>,
    },
    /// The demo: an uninstrumented prediction chain with a slow service and a slow network hop,
    /// traced with the web UI; prints the URL and the blame table (`--check`: verify and exit).
    Demo {
        #[arg(long)]
        check: bool,
    },
    /// Build the cargo-fuzz targets (fuzz/) and run each for a while; crashes are kept as
    /// regression inputs; figures of a run of all targets go to HARDENING.md.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Hostile traffic at full scale through a traced nginx (odd requests, connections holding
    /// half a head, short connections); figures go to HARDENING.md.
    Stress {
        /// Connections held open, each with half a request head.
        #[arg(long, default_value_t = 10_000)]
        idle: u64,
        /// Short connections, one request each.
        #[arg(long, default_value_t = 1_000_000)]
        churn: u64,
    },
    /// An OTLP back end down, refusing, slow and failing for this long in all, then back, under
    /// steady traffic; figures go to HARDENING.md.
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// Build (release) and run sockspan as root; arguments after `--` go to sockspan
    /// (default: `run`, spans as JSON lines).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn run_agent(args: Vec<String>) -> Result<()> {
    let bin = util::release_agent()?;
    let args = if args.is_empty() {
        vec!["run".to_string()]
    } else {
        args
    };
    let mut cmd = if util::is_root() {
        Command::new(&bin)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(&bin);
        sudo
    };
    let status = cmd.args(&args).status()?;
    std::process::exit(status.code().unwrap_or(1));
}

fn demo(check: bool) -> Result<()> {
    let bin = util::release_agent()?;
    setup::test_dependencies()?;
    let mut cmd = Command::new("bash");
    cmd.arg(util::workspace_root().join("demo/run.sh"))
        .env("SOCKSPAN_BIN", &bin);
    if check {
        cmd.arg("--check");
    }
    let status = cmd.status()?;
    std::process::exit(status.code().unwrap_or(1));
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Lint => lint::lint(),
        Task::Test { filter, unit_only } => test::test(filter.as_deref(), unit_only),
        Task::Run { args } => run_agent(args),
        Task::Bench {
            quick,
            runtime_probes_only,
            flask_only,
            ping_pong_only,
            nginx_only,
        } => bench::bench(
            quick,
            if runtime_probes_only {
                bench::Part::RuntimeProbes
            } else if flask_only {
                bench::Part::Flask
            } else if ping_pong_only {
                bench::Part::PingPong
            } else if nginx_only {
                bench::Part::Nginx
            } else {
                bench::Part::All
            },
        ),
        Task::Demo { check } => demo(check),
        Task::Causality { chain } => causality::causality(chain.as_deref()),
        Task::Fuzz { seconds, target } => fuzz::fuzz(seconds, target.as_deref()),
        Task::Compare {
            a,
            b,
            rounds,
            seconds,
            a_args,
            b_args,
            a_env,
            b_env,
        } => {
            let build = |bin, args: &str, env| compare::Build {
                bin,
                args: args.split_whitespace().map(str::to_string).collect(),
                env,
            };
            compare::compare(
                &build(a, &a_args, a_env),
                &build(b, &b_args, b_env),
                rounds.max(1),
                seconds,
            )
        }
        Task::Stress { idle, churn } => stress::stress(idle, churn),
        Task::Soak { minutes } => stress::soak(minutes),
    }
}

/// `NAME=VALUE` of `--a-env`/`--b-env`.
fn env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("`{text}`: expected NAME=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::env_pair;

    #[test]
    fn env_pairs_split_at_the_first_equals_sign() {
        assert_eq!(
            env_pair("XSWITCH=a=b"),
            Ok(("XSWITCH".to_string(), "a=b".to_string()))
        );
        assert_eq!(env_pair("X="), Ok(("X".to_string(), String::new())));
        assert!(env_pair("=1").is_err());
        assert!(env_pair("NOVALUE").is_err());
    }
}
