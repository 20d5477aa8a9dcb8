//! Wiring shared by the commands that run the capture path: start-up checks, procfs discovery,
//! program loading, the eBPF log forwarder, and the stop signal; [`sink`] is the tracing
//! pipeline's consumer of the ring.

pub mod own;
pub mod sink;

use std::time::Duration;

use crate::{
    caps,
    cli::CaptureArgs,
    conntrack::{ConntrackError, discovery},
    probes::{Probes, ProbesError},
    receiver::{EventRing, RingError},
};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Privilege(String),
    #[error(transparent)]
    Probes(#[from] ProbesError),
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error(transparent)]
    Conntrack(#[from] ConntrackError),
    #[error(transparent)]
    Trace(#[from] crate::trace::linker::TraceError),
    #[error(transparent)]
    Otlp(#[from] crate::exporter::otlp::OtlpConfigError),
    #[error(transparent)]
    OtlpMetrics(#[from] crate::exporter::otlp::metrics::MetricsConfigError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    #[error(transparent)]
    Record(#[from] crate::protocol::http1::record::RecordError),
    #[error("{flag} {detail}")]
    ReportFile { flag: &'static str, detail: String },
    #[error(transparent)]
    Peers(#[from] crate::peers::PeersError),
    #[error(transparent)]
    Budget(#[from] crate::budget::BudgetError),
}

/// A running capture path.
pub struct Capture {
    pub probes: Probes,
    pub ring: EventRing,
    /// TCP sockets found open before the programs were attached.
    pub discovered: Vec<discovery::DiscoveredSocket>,
}

/// Which connections' bytes the programs send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// Only connections that may carry a protocol the agent parses (tracing).
    Parsed,
    /// Every connection's bytes (the raw event view).
    All,
}

/// Whether the cross-host peer messages are on (`--peer-port`), and the address the other
/// agents reach this one at, if known ([`crate::peers::Peers::return_address`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMessages {
    Off,
    On {
        return_address: Option<std::net::IpAddr>,
    },
}

/// Validates the configuration, scans procfs, then loads and attaches the programs.
pub fn start(
    args: &CaptureArgs,
    traffic: Traffic,
    peers: PeerMessages,
) -> Result<Capture, PipelineError> {
    let mut probes_config = args.probes();
    probes_config.skip_opaque = traffic == Traffic::Parsed;
    probes_config.inband_starts_traces = peers == PeerMessages::Off;
    if let PeerMessages::On { return_address } = peers {
        probes_config.inband_return_addr = return_address;
    }
    probes_config.validate()?;
    args.conntrack().validate()?;
    caps::check_can_load().map_err(PipelineError::Privilege)?;
    let me = std::process::id();
    // Scan before attaching: every socket the programs may later report as "first seen" and
    // that was open before is in this list.
    let discovered = discovery::scan(me, args.netns());
    let mut probes = Probes::load(&probes_config, me)?;
    // Loading parsed the kernel's BTF (megabytes, freed again); hand those pages back to the
    // system instead of keeping them as the heap's high-water mark for the agent's whole life.
    // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps; it has no
    // preconditions and touches no live allocation.
    unsafe { libc::malloc_trim(0) };
    let ring = EventRing::new(probes.take_ring()?)?;
    let largest_walk = probes
        .verified_instructions()
        .first()
        .map_or(0, |&(_, count)| count);
    tracing::info!(
        hooks = ?probes.hooks(),
        preexisting_sockets = discovered.len(),
        largest_verifier_walk = largest_walk,
        in_band = probes_config.inband,
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
