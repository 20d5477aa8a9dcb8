//! `sockspan`: zero-code distributed tracing from socket syscalls.
//!
//! Pipeline: `probes` (eBPF on syscall tracepoints) → `receiver` (ring buffer) → `conntrack`
//! (connections, processes) → `protocol` → `trace` → `exporter`, and commands that drive it.
//!
//! The crate is a library only so that fuzz targets (`fuzz/`) can reach the parsers: its public
//! surface is [`cli_main`], which the `sockspan` binary calls, and, with the `fuzz` feature, the
//! fuzz entry points. The `bench` feature adds the hidden commands `cargo xtask bench` drives and
//! the eBPF programs they load; release builds of the product leave both out.

mod analysis;
mod api;
mod budget;
mod caps;
mod cli;
mod clock;
mod commands;
mod conntrack;
mod containers;
mod expiring;
mod exporter;
mod footprint;
mod kube;
mod lock;
mod memo_worth;
mod metrics;
mod net;
mod peers;
mod pipeline;
mod probes;
mod process;
mod protocol;
mod receiver;
mod runtime;
mod store;
mod trace;

#[cfg(feature = "fuzz")]
pub mod fuzz;

use clap::Parser as _;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout carries the JSON event stream.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: journald, kubectl logs and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Runs an async command on a single-threaded runtime; errors become one line on stderr.
pub(crate) fn run_async<E: std::fmt::Display>(
    command: impl std::future::Future<Output = Result<(), E>>,
) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("sockspan: error: cannot start the async runtime: {err}");
            return 1;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("sockspan: error: {err}");
            1
        }
    }
}

/// The `sockspan` command line: parses the arguments, runs the command, returns its exit code.
#[must_use]
pub fn cli_main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    init_logging();
    let code = match cli.command {
        cli::Command::Check => commands::check::run(),
        cli::Command::Events(args) => run_async(commands::events::run(args)),
        cli::Command::Run(args) => run_async(commands::run::run(*args)),
        cli::Command::Blame(args) => run_async(commands::blame::run(args)),
        cli::Command::Dump { store } => commands::dump::run(&store),
        #[cfg(feature = "bench")]
        cli::Command::Bench(command) => commands::bench::run(command),
    };
    std::process::ExitCode::from(code as u8)
}
