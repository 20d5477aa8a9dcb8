//! Wiring shared by the commands that run the capture path: start-up checks, procfs discovery,
//! program loading, the eBPF log forwarder, and the stop signal.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    caps,
    cli::CaptureArgs,
    conntrack::{ConntrackError, discovery},
    probes::{Probes, ProbesError},
};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Privilege(String),
    #[error(transparent)]
    Probes(#[from] ProbesError),
    #[error(transparent)]
    Conntrack(#[from] ConntrackError),
    #[error(transparent)]
    Trace(#[from] crate::trace::linker::TraceError),
    #[error(transparent)]
    Otlp(#[from] crate::exporter::otlp::OtlpConfigError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    #[error(transparent)]
    Record(#[from] crate::protocol::http1::record::RecordError),
}

/// A running capture path.
pub struct Capture {
    pub probes: Probes,
    pub ring: RingBuf<MapData>,
    /// TCP sockets found open before the programs were attached.
    pub discovered: Vec<discovery::DiscoveredSocket>,
}

/// Validates the configuration, scans procfs, then loads and attaches the programs.
pub fn start(args: &CaptureArgs) -> Result<Capture, PipelineError> {
    let probes_config = args.probes();
    probes_config.validate()?;
    args.conntrack().validate()?;
    caps::check_can_load().map_err(PipelineError::Privilege)?;
    let me = std::process::id();
    // Scan before attaching: every socket the programs may later report as "first seen" and
    // that was open before is in this list.
    let discovered = discovery::scan(me);
    let mut probes = Probes::load(&probes_config, me)?;
    // Loading parsed the kernel's BTF (megabytes, freed again); hand those pages back to the
    // system instead of keeping them as the heap's high-water mark for the agent's whole life.
    // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps; it has no
    // preconditions and touches no live allocation.
    unsafe { libc::malloc_trim(0) };
    let ring = probes.take_ring()?;
    spawn_pending_sweeper(probes.take_pending()?);
    if let Some(logger) = probes.take_logger() {
        spawn_ebpf_logger(logger);
    }
    tracing::info!(
        programs = crate::probes::TRACEPOINTS.len(),
        preexisting_sockets = discovered.len(),
        capture_bytes = probes_config.capture_bytes,
        ring_bytes = probes_config.ring_bytes,
        "capture path attached"
    );
    Ok(Capture {
        probes,
        ring,
        discovered,
    })
}

/// How often orphaned in-flight entries are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Sweeps the in-flight syscall table now and then (threads killed inside a syscall).
fn spawn_pending_sweeper(mut table: crate::probes::PendingTable) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            interval.tick().await;
            let removed = table.sweep();
            if removed > 0 {
                tracing::debug!(removed, "swept in-flight entries of exited threads");
            }
        }
    });
}

/// Forwards the programs' aya-log records to `tracing` (through the `log` bridge).
fn spawn_ebpf_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    tokio::spawn(async move {
        // SAFETY: the logger owns its ring's map fd for its whole life, and the AsyncFd owns
        // the logger.
        let registered =
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
        let Ok(mut fd) = registered else {
            tracing::warn!("cannot poll the eBPF log ring; eBPF log records are dropped");
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// Resolves on SIGINT, SIGTERM, or after `duration`.
pub async fn stop_signal(duration: Option<Duration>) {
    let sleep = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = sleep => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        () = term => tracing::info!("SIGTERM: stopping"),
    }
}
