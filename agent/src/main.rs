//! `sockspan`: zero-code distributed tracing from socket syscalls.
//!
//! Pipeline: `probes` (eBPF on syscall tracepoints) → `receiver` (ring buffer) → `conntrack`
//! (connections, processes) → commands that print or export what it sees.

mod caps;
mod cli;
mod clock;
mod commands;
mod conntrack;
mod net;
mod pipeline;
mod probes;
mod process;
mod receiver;

use clap::Parser as _;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout carries the JSON event stream.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    init_logging();
    let code = match cli.command {
        cli::Command::Check => commands::check::run(),
        cli::Command::Events(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(err) => {
                    eprintln!("sockspan: error: cannot start the async runtime: {err}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match runtime.block_on(commands::events::run(args)) {
                Ok(()) => 0,
                Err(err) => {
                    eprintln!("sockspan: error: {err}");
                    1
                }
            }
        }
    };
    std::process::ExitCode::from(code as u8)
}
