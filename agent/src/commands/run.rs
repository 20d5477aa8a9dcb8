//! `sockspan run`: the tracing pipeline. Captured traffic → connections → protocol exchanges →
//! linked spans → an exporter.

use std::{io, time::Duration};

use crate::{
    cli::Output,
    cli::RunArgs,
    conntrack::Conntrack,
    exporter::{
        SpanExporter,
        jsonl::JsonlExporter,
        metered::Metered,
        otlp::{
            OtlpConfig, OtlpExporter,
            metrics::{MetricsConfig, MetricsExporter},
        },
        store::StoreExporter,
    },
    pipeline::{self, sink::TraceSink},
    receiver,
    store::Store,
    trace::{Tracer, resource::Resources},
};

/// How long shutdown waits for the OTLP sender to deliver what it holds.
const EXPORT_DRAIN: Duration = Duration::from_secs(15);

pub async fn run(args: RunArgs) -> Result<(), pipeline::PipelineError> {
    let trace_config = args.trace();
    trace_config.validate()?;
    crate::protocol::http1::record::configure(crate::protocol::http1::record::RecordConfig::new(
        &args.record_headers,
        &args.record_query_values,
    )?);
    // Configuration errors surface before anything is attached.
    let otlp = match args.output {
        Output::Otlp => {
            let env = |k: &str| std::env::var(k).ok();
            let endpoint = args.otlp_endpoint.as_deref();
            Some((
                OtlpConfig::resolve(endpoint, &env)?,
                MetricsConfig::resolve(endpoint, &env)?,
            ))
        }
        Output::Jsonl | Output::Store => None,
    };
    check_ready_file(args.ready_file.as_deref())?;
    let peers = bind_peers(&args)?;
    let store_config = args.store_config();
    let api_config = if args.output == Output::Store {
        store_config.validate()?;
        Some(crate::api::ApiConfig::new(
            args.ui,
            args.ui_token_file.as_deref(),
        )?)
    } else {
        None
    };
    // One agent per host; the lock is held until this function returns (or the process dies).
    // Privileges first: without them the lock file cannot be made either, and that message is
    // less useful.
    crate::caps::check_can_load().map_err(pipeline::PipelineError::Privilege)?;
    let _lock = crate::lock::acquire(args.capture.netns())?;
    let capture = pipeline::start(&args.capture, pipeline::Traffic::Parsed)?;
    let pipeline::Capture {
        mut probes,
        ring,
        discovered,
    } = capture;
    let kernel_conns = probes.take_conns()?;
    let metrics = crate::metrics::Metrics::shared();
    let (mut exporter, mut senders) =
        exporter(&args, otlp, store_config, api_config.as_ref(), &metrics).await?;
    let sink = TraceSink::new(
        Conntrack::new(args.capture.conntrack(), discovered),
        Tracer::new(trace_config, Resources::new(args.service_name)),
        exporter.as_mut(),
    )
    .with_kernel_conns(kernel_conns)
    .with_metrics(metrics.clone());
    let mut sink = scoped(sink, &args, api_config.as_ref(), peers)
        .with_runtime_probes(&mut probes, runtime_probes(&args));
    crate::metrics::lock(&metrics).ready = true;
    if let Some(path) = &args.ready_file {
        write_ready_file(path, api_config.as_ref().map(|c| c.addr))?;
    }
    let stop = pipeline::stop_signal(args.duration.map(Duration::from_secs));
    let receiver = receiver::run(ring, &mut sink, Duration::from_millis(100), stop)
        .await
        .map_err(|e| pipeline::PipelineError::Privilege(e.to_string()))?;
    // Everything finished is exported before exit.
    sink.export(true);
    sink.exporter.finish();
    let metrics_exports = senders.drain().await;
    log_stopped(&sink, &receiver, metrics_exports);
    if let Some(path) = &args.ready_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// The tasks sending to an OTLP collector, waited for at shutdown.
#[derive(Default)]
struct Senders {
    spans: Option<tokio::task::JoinHandle<()>>,
    metrics: Option<(MetricsExporter, tokio::task::JoinHandle<()>)>,
}

impl Senders {
    /// Lets the metrics sender make its last export, then waits for both (bounded); returns
    /// the metrics exports made and failed.
    async fn drain(&mut self) -> (u64, u64) {
        let stats = self.metrics.as_mut().map(|(exporter, _)| {
            exporter.finish();
            std::sync::Arc::clone(&exporter.stats)
        });
        let tasks = self
            .spans
            .take()
            .into_iter()
            .chain(self.metrics.take().map(|(_, task)| task));
        for task in tasks {
            if tokio::time::timeout(EXPORT_DRAIN, task).await.is_err() {
                tracing::warn!(
                    "OTLP sender still busy after {EXPORT_DRAIN:?}; stopping without it"
                );
            }
        }
        stats.map_or((0, 0), |s| {
            (
                s.exports.load(std::sync::atomic::Ordering::Relaxed),
                s.failed.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }
}

/// The span exporter `--output` asks for: OTLP (with the metrics beside it), the store (and
/// the API and UI over it), or JSON lines on stdout. Metrics are recorded where they are
/// exported or served.
async fn exporter(
    args: &RunArgs,
    otlp: Option<(OtlpConfig, Option<MetricsConfig>)>,
    store_config: crate::store::StoreConfig,
    api_config: Option<&crate::api::ApiConfig>,
    metrics: &crate::metrics::SharedMetrics,
) -> Result<(Box<dyn SpanExporter>, Senders), pipeline::PipelineError> {
    Ok(match (args.output, otlp) {
        (Output::Otlp, Some((config, metrics_config))) => {
            let (exporter, task) = OtlpExporter::start(config)?;
            let metrics_sender = metrics_config
                .map(|c| MetricsExporter::start(c, metrics.clone(), host_name()))
                .transpose()?;
            (
                Box::new(Metered::new(Box::new(exporter), metrics.clone())),
                Senders {
                    spans: Some(task),
                    metrics: metrics_sender,
                },
            )
        }
        (Output::Store, _) => {
            let store = Store::open(store_config)?;
            if let Some(api) = api_config {
                crate::api::serve(api, store.clone(), metrics.clone()).await?;
            }
            tracing::info!(path = %store.path().display(), "storing spans");
            (
                Box::new(Metered::new(
                    Box::new(StoreExporter::new(store)?),
                    metrics.clone(),
                )),
                Senders::default(),
            )
        }
        _ => (
            // 64 KiB per write: each write is a syscall the programs see too.
            Box::new(JsonlExporter::new(io::BufWriter::with_capacity(
                64 * 1024,
                io::stdout(),
            ))),
            Senders::default(),
        ),
    })
}

/// This node's name, for the metrics' resource (as the spans' `host.name`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// What the sink traces and with whom it links: not the agent's own viewers, only its network
/// namespace with `--netns-only`, other hosts' spans through `peers`.
fn scoped<'a>(
    sink: TraceSink<'a>,
    args: &RunArgs,
    api: Option<&crate::api::ApiConfig>,
    peers: Option<crate::peers::Peers>,
) -> TraceSink<'a> {
    sink.with_own_listeners(own_listeners(args, api))
        .with_peers(peers)
        .with_netns(args.capture.netns())
}

/// The listeners whose viewers are not traced: the UI/API/metrics one, unless
/// `--trace-own-traffic`.
fn own_listeners(
    args: &RunArgs,
    api: Option<&crate::api::ApiConfig>,
) -> crate::pipeline::own::OwnListeners {
    let listeners = api
        .filter(|_| !args.trace_own_traffic)
        .map(|api| api.addr)
        .into_iter()
        .collect();
    crate::pipeline::own::OwnListeners::new(listeners)
}

/// The socket to other hosts' agents, when `--peer-port` asks for one: bound before anything is
/// attached, so that a port in use or a bad secret stops the start.
fn bind_peers(args: &RunArgs) -> Result<Option<crate::peers::Peers>, crate::peers::PeersError> {
    let peers = args
        .peers()
        .map(|config| crate::peers::Peers::bind(&config))
        .transpose()?;
    if let Some(peers) = &peers {
        tracing::info!(
            port = peers.port(),
            "linking traces with the agents of other hosts"
        );
    }
    Ok(peers)
}

/// `--ready-file` can be written: its folder exists (said before anything is attached).
fn check_ready_file(path: Option<&std::path::Path>) -> Result<(), pipeline::PipelineError> {
    let folder = path
        .and_then(std::path::Path::parent)
        .filter(|p| !p.as_os_str().is_empty());
    match (path, folder) {
        (Some(path), Some(folder)) if !folder.is_dir() => Err(pipeline::PipelineError::ReadyFile(
            format!("{}: its folder does not exist", path.display()),
        )),
        _ => Ok(()),
    }
}

/// Writes `--ready-file` whole (a temporary file renamed over it: a reader never sees half).
fn write_ready_file(
    path: &std::path::Path,
    ui: Option<std::net::SocketAddr>,
) -> Result<(), pipeline::PipelineError> {
    let line = serde_json::json!({
        "pid": std::process::id(),
        "ui": ui.map(|a| a.to_string()),
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{line}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| pipeline::PipelineError::ReadyFile(format!("{}: {e}", path.display())))
}

/// Which runtime probes `--no-runtime-probes` leaves on; those left off are logged with what
/// is lost.
fn runtime_probes(args: &RunArgs) -> crate::pipeline::sink::RuntimeProbesOn {
    use crate::cli::RuntimeProbe;
    let on = |probe: RuntimeProbe, off_message: &str| {
        let off = args.no_runtime_probes.contains(&probe);
        if off {
            tracing::info!("{off_message}");
        }
        !off
    };
    crate::pipeline::sink::RuntimeProbesOn {
        go: on(
            RuntimeProbe::Go,
            "Go runtime probes off (--no-runtime-probes go): no goroutine causality",
        ),
        tls: on(
            RuntimeProbe::Tls,
            "TLS probes off (--no-runtime-probes tls): no spans from TLS connections",
        ),
        asyncio: on(
            RuntimeProbe::Asyncio,
            "Python asyncio probes off (--no-runtime-probes asyncio): no task causality",
        ),
        node: on(
            RuntimeProbe::Node,
            "Node.js callback probes off (--no-runtime-probes node): no event-loop causality",
        ),
    }
}

/// The final log line: every stage's counters.
fn log_stopped(
    sink: &TraceSink<'_>,
    receiver: &receiver::ReceiverStats,
    (metrics_exports, metrics_exports_failed): (u64, u64),
) {
    let kernel = sink
        .probes()
        .and_then(|p| p.counters().ok())
        .unwrap_or_default();
    let goroutines = sink.tracer.goroutines.stats;
    let peers = sink.peers.as_ref().map(|p| p.stats).unwrap_or_default();
    let (spans_out, spans_lost) = sink.exporter.counts();
    tracing::info!(
        spans_exported = spans_out,
        export_failed = spans_lost,
        metrics_exports,
        metrics_exports_failed,
        spans_started = sink.tracer.stats.spans_started,
        parent_from_header = sink.tracer.stats.parent_from_header,
        parent_from_thread = sink.tracer.stats.parent_from_thread,
        parent_from_proxy = sink.tracer.stats.parent_from_proxy,
        parent_from_goroutine = sink.tracer.stats.parent_from_goroutine,
        go_spawns = goroutines.spawns,
        go_spawns_unpaired = goroutines.spawns_unpaired,
        go_handoffs = goroutines.handoffs,
        go_handoffs_unpaired = goroutines.handoffs_unpaired,
        go_forgotten = goroutines.forgotten,
        parent_from_task = sink.tracer.stats.parent_from_task,
        task_spawns = sink.tracer.tasks.stats.spawns,
        task_spawns_unparented = sink.tracer.tasks.stats.spawns_unparented,
        task_forgotten = sink.tracer.tasks.stats.forgotten,
        task_shared_writers = sink.tracer.stats.task_shared_writers,
        parent_from_callback = sink.tracer.stats.parent_from_callback,
        node_calls_outside_callbacks = sink.tracer.callbacks.stats.outside,
        parent_from_worker = sink.tracer.stats.parent_from_worker,
        worker_waited = sink.tracer.worker_stats().waited,
        worker_unparented = sink.tracer.worker_stats().refused,
        worker_unplaced_answers = sink.tracer.worker_stats().unplaced_answers,
        worker_unplaced_unanswered = sink.tracer.worker_stats().unplaced_unanswered,
        worker_unknown_writes = sink.tracer.worker_stats().unknown_writes,
        worker_refused_unknown = sink.tracer.worker_stats().refused_unknown,
        worker_given_up = sink.tracer.worker_stats().given_up,
        worker_decided_by_ends = sink.tracer.worker_stats().decided_by_ends,
        node_sockets_reset = sink.tracer.callbacks.stats.sockets_reset,
        event_loop_threads = sink.tracer.stats.event_loop_threads,
        parent_from_connection = sink.tracer.stats.parent_from_connection,
        mirror_mismatches = sink.tracer.stats.mirror_mismatches,
        parent_from_peer = sink.tracer.stats.parent_from_peer,
        peer_announced = sink.tracer.stats.peer_announced,
        peer_sent = peers.sent,
        peer_send_failed = peers.send_failed,
        peer_received = peers.received,
        peer_refused = peers.refused,
        peer_translated = peers.translated,
        peer_local = peers.local,
        roots = sink.tracer.stats.roots,
        ambiguous = sink.tracer.stats.ambiguous,
        spans_abandoned = sink.tracer.stats.abandoned,
        held = sink.tracer.held(),
        held_peak = sink.tracer.stats.held_peak,
        protocol_connections = %ProtocolCounts(sink.protocols.stats.recognised()),
        http2 = %Http2Totals,
        other_connections = sink.protocols.stats.other_connections,
        protocol_given_up = sink.protocols.stats.given_up,
        protocol_given_up_by = %ProtocolCounts(sink.protocols.stats.given_up_by()),
        marked_opaque = sink.feedback.marked_opaque,
        own_connections_ignored = sink.feedback.own_connections_ignored,
        events_sent = kernel.get(agent_common::Counter::EventsSent),
        ring_records = receiver.records,
        undecodable_records = receiver.decode_errors,
        ring_resyncs = receiver.ring_resyncs,
        ring_full_drops = kernel.get(agent_common::Counter::RingFull),
        entry_time_missed = kernel.get(agent_common::Counter::EntryTimeMissed),
        tls_unlinked = kernel.get(agent_common::Counter::TlsUnlinked),
        conns_opened = sink.conntrack.stats.opened,
        data_unknown_conn = sink.conntrack.stats.data_unknown_conn,
        conns_peak = sink.conntrack.stats.peak,
        conns_evicted_full = sink.conntrack.stats.evicted_full,
        conns_evicted_idle = sink.conntrack.stats.evicted_idle,
        head_budget_drops = crate::protocol::budget::HEADS.refusals(),
        head_bytes_buffered = crate::protocol::budget::HEADS.in_use(),
        peak_rss_kib = crate::process::own_peak_rss_kib(),
        "stopped"
    );
}

/// Connections per protocol, as `http1:3,http2:1` in the final log line.
struct ProtocolCounts<I>(I);

impl<I: Iterator<Item = (&'static str, u64)> + Clone> std::fmt::Display for ProtocolCounts<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, n)) in self.0.clone().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}:{n}")?;
        }
        Ok(())
    }
}

/// The HTTP/2 stage's totals as `key=value` pairs in the final log line.
struct Http2Totals;

impl std::fmt::Display for Http2Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, n)) in crate::protocol::http2::TOTALS.fields().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}:{n}")?;
        }
        Ok(())
    }
}
