//! `sockspan run`: the tracing pipeline. Captured traffic → connections → protocol exchanges →
//! linked spans → an exporter.

use std::{io, time::Duration};

use super::report_files::{self, FinalStats};
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
    args.budget().validate()?;
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
    report_files::check(&args.report.files())?;
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
    // HTTP/2 in the in-band mode with peer messages: the connection form.
    let stream_asking = args.capture.in_band
        && peers
            .as_ref()
            .is_some_and(|peers| peers.return_address().is_some());
    // Pods' labels name services; their lists run beside the receiver, never before it.
    let pods = crate::kube::start(args.kube_api);
    let capture = pipeline::start(
        &args.capture,
        pipeline::Traffic::Parsed,
        peers.as_ref().map_or(pipeline::PeerMessages::Off, |peers| {
            pipeline::PeerMessages::On {
                return_address: peers.return_address(),
            }
        }),
    )?;
    let pipeline::Capture {
        mut probes,
        ring,
        discovered,
    } = capture;
    let kernel_conns = probes.take_conns()?;
    let metrics = crate::metrics::Metrics::shared();
    let (mut exporter, mut senders) =
        exporter(&args, otlp, store_config, api_config.as_ref(), &metrics).await?;
    let tracer = tracer(&args, trace_config, stream_asking, pods.clone());
    let sink = TraceSink::new(
        Conntrack::new(args.capture.conntrack(), discovered),
        tracer,
        exporter.as_mut(),
    )
    .with_kernel_conns(kernel_conns)
    .with_metrics(metrics.clone())
    .with_pods(pods)
    .with_budget(crate::budget::Budget::new(args.budget()));
    let mut sink = scoped(sink, &args, api_config.as_ref(), peers)
        .with_runtime_probes(&mut probes, runtime_probes(&args));
    // Start-up is over: its code need not stay resident.
    crate::footprint::release_start_up_code();
    crate::metrics::lock(&metrics).ready = true;
    if let Some(path) = &args.report.ready_file {
        let ui = api_config.as_ref().map(|c| c.addr.to_string());
        let ready = serde_json::json!({ "pid": std::process::id(), "ui": ui });
        report_files::write("--ready-file", path, &ready)?;
    }
    let stop = pipeline::stop_signal(args.duration.map(Duration::from_secs));
    let receiver = receiver::run(ring, &mut sink, Duration::from_millis(100), stop)
        .await
        .map_err(|e| pipeline::PipelineError::Privilege(e.to_string()))?;
    // Questions asked of other agents get up to a link delay for their answers (their SERVER
    // spans would be exported as roots): a restarted agent keeps the links of its last moment.
    let answers_until = std::time::Instant::now() + Duration::from_millis(args.link_delay_ms);
    while std::time::Instant::now() < answers_until && sink.awaiting_answers() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Everything finished is exported before exit.
    sink.export(true);
    sink.exporter.finish();
    let metrics_exports = senders.drain().await;
    let stats = final_stats(&sink, &receiver, metrics_exports);
    tracing::info!("stopped {stats}");
    if let Some(path) = &args.report.ready_file {
        let _ = std::fs::remove_file(path);
    }
    if let Some(path) = &args.report.stats_file {
        report_files::write("--stats-file", path, &stats.to_json())?;
    }
    Ok(())
}

/// The tracer: spans named by `--service-name` (and the pod list), HTTP/2 streams asked
/// about across hosts when `stream_asking`.
fn tracer(
    args: &RunArgs,
    config: crate::trace::TraceConfig,
    stream_asking: bool,
    pods: Option<std::sync::Arc<crate::kube::PodDirectory>>,
) -> Tracer {
    let mut tracer = Tracer::new(config, Resources::new(args.service_name).with_pods(pods));
    if stream_asking {
        tracer.enable_stream_asking();
    }
    tracer
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
            return_address = ?peers.return_address(),
            "linking traces with the agents of other hosts"
        );
    }
    Ok(peers)
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

/// Every stage's final counters (the final log line and `--stats-file`), stage by stage.
fn final_stats(
    sink: &TraceSink<'_>,
    receiver: &receiver::ReceiverStats,
    (metrics_exports, metrics_exports_failed): (u64, u64),
) -> FinalStats {
    let (spans_out, spans_lost) = sink.exporter.counts();
    let mut stats = FinalStats::default();
    stats
        .add("spans_exported", spans_out)
        .add("export_failed", spans_lost)
        .add("metrics_exports", metrics_exports)
        .add("metrics_exports_failed", metrics_exports_failed);
    linking_stats(&mut stats, &sink.tracer);
    runtime_stats(&mut stats, sink);
    let peers = sink.peers.as_ref().map(|p| p.stats).unwrap_or_default();
    stats
        .add("peer_sent", peers.sent)
        .add("peer_send_failed", peers.send_failed)
        .add("peer_received", peers.received)
        .add("peer_refused", peers.refused)
        .add("peer_translated", peers.translated)
        .add("peer_local", peers.local)
        .add("peer_asks_sent", peers.asks_sent)
        .add("peer_answers_received", peers.answers_received)
        .add("peer_asks_received", peers.asks_received)
        .add("peer_answers_sent", peers.answers_sent)
        .add("peer_replayed", peers.replayed)
        .add("peer_asks_refused", peers.asks_refused)
        .add("peer_replay_tags_evicted", peers.replay_tags_evicted);
    capture_stats(&mut stats, sink, receiver);
    stats
}

/// The tracer's: spans, parents by rule, the worker rule, roots and links.
fn linking_stats(stats: &mut FinalStats, tracer: &Tracer) {
    let t = &tracer.stats;
    let workers = tracer.worker_stats();
    stats
        .add("spans_started", t.spans_started)
        .add("parent_from_header", t.parent_from_header)
        .add("parent_from_thread", t.parent_from_thread)
        .add("parent_from_proxy", t.parent_from_proxy)
        .add("parent_from_goroutine", t.parent_from_goroutine)
        .add("parent_from_task", t.parent_from_task)
        .add("task_shared_writers", t.task_shared_writers)
        .add("parent_from_callback", t.parent_from_callback)
        .add("parent_from_worker", t.parent_from_worker)
        .add("worker_waited", workers.waited)
        .add("worker_unparented", workers.refused)
        .add("worker_unplaced_answers", workers.unplaced_answers)
        .add("worker_unplaced_unanswered", workers.unplaced_unanswered)
        .add("worker_unknown_writes", workers.unknown_writes)
        .add("worker_refused_unknown", workers.refused_unknown)
        .add("worker_given_up", workers.given_up)
        .add("worker_decided_by_ends", workers.decided_by_ends)
        .add(
            "worker_decided_by_elimination",
            workers.decided_by_elimination,
        )
        .add("event_loop_threads", t.event_loop_threads)
        .add(
            "asyncio_processes_unfollowed",
            t.asyncio_processes_unfollowed,
        )
        .add(
            "asyncio_processes_unremembered",
            t.asyncio_processes_unremembered,
        )
        .add("parent_from_connection", t.parent_from_connection)
        .add("mirror_mismatches", t.mirror_mismatches)
        .add("parent_from_peer", t.parent_from_peer)
        .add("parent_from_inband", t.parent_from_inband)
        .add("inband_disagreed", t.inband_disagreed)
        .add("inband_notes_evicted", t.inband_notes_evicted)
        .add("inband_questions", tracer.asking_stats.asked)
        .add(
            "parent_from_inband_answer",
            tracer.asking_stats.parent_from_answer,
        )
        .add("inband_answered", tracer.asking_stats.answered)
        .add("inband_asked_unknown", tracer.asking_stats.unknown)
        .add("inband_asking_evicted", tracer.asking_stats.evicted)
        .add("inband_answers_refused", tracer.asking_stats.refused)
        .add("peer_late", t.peer_late)
        .add("peer_announced", t.peer_announced)
        .add("roots", t.roots)
        .add("ambiguous", t.ambiguous)
        .add("spans_abandoned", t.abandoned)
        .add("spans_shed", t.spans_shed)
        .add("hidden_work_refusals", t.hidden_work_refusals)
        .add("held", tracer.held())
        .add("held_peak", t.held_peak);
}

/// The runtime probes': processes followed and what their probes reported.
fn runtime_stats(stats: &mut FinalStats, sink: &TraceSink<'_>) {
    let go = sink.tracer.goroutines.stats;
    let tasks = &sink.tracer.tasks.stats;
    let callbacks = &sink.tracer.callbacks.stats;
    stats
        .add("go_processes_followed", go.processes)
        .add("go_spawns", go.spawns)
        .add("go_spawns_unpaired", go.spawns_unpaired)
        .add("go_handoffs", go.handoffs)
        .add("go_handoffs_unpaired", go.handoffs_unpaired)
        .add("go_forgotten", go.forgotten)
        .add("asyncio_processes_followed", tasks.processes)
        .add("task_spawns", tasks.spawns)
        .add("task_spawns_unparented", tasks.spawns_unparented)
        .add("task_forgotten", tasks.forgotten)
        .add("node_processes_followed", callbacks.processes)
        .add("node_calls_outside_callbacks", callbacks.outside)
        .add("node_sockets_reset", callbacks.sockets_reset)
        .add("tls_libraries_probed", sink.tls_libraries_probed);
    let marked = sink
        .probes()
        .map(crate::probes::Probes::inband_marked)
        .unwrap_or_default();
    stats
        .add("inband_marked_connecting_ends", marked.clients)
        .add("inband_marked_accepting_ends", marked.servers)
        .add("inband_mark_refused", marked.refused);
}

/// The capture path's and the protocol layer's: ring, connections, protocols, budgets.
fn capture_stats(stats: &mut FinalStats, sink: &TraceSink<'_>, receiver: &receiver::ReceiverStats) {
    use agent_common::Counter;
    let kernel = sink
        .probes()
        .and_then(|p| p.counters().ok())
        .unwrap_or_default();
    let protocols = &sink.protocols.stats;
    let conns = &sink.conntrack.stats;
    stats
        .add_counts("protocol_connections", protocols.recognised())
        .add_counts("http2", crate::protocol::http2::TOTALS.fields())
        .add("other_connections", protocols.other_connections)
        .add("protocol_given_up", protocols.given_up)
        .add_counts("protocol_given_up_by", protocols.given_up_by())
        .add("marked_opaque", sink.feedback.marked_opaque)
        .add("conns_rediscovered", sink.feedback.rediscovered)
        .add(
            "own_connections_ignored",
            sink.feedback.own_connections_ignored,
        )
        .add("events_sent", kernel.get(Counter::EventsSent))
        .add("ring_records", receiver.records)
        .add("undecodable_records", receiver.decode_errors)
        .add("ring_resyncs", receiver.ring_resyncs)
        .add("ring_full_drops", kernel.get(Counter::RingFull))
        .add("conn_table_full", kernel.get(Counter::ConnTableFull))
        .add("entry_time_missed", kernel.get(Counter::EntryTimeMissed))
        .add("tls_unlinked", kernel.get(Counter::TlsUnlinked))
        .add(
            "tls_tied_by_adjacency",
            kernel.get(Counter::TlsTiedByAdjacency),
        )
        .add("tls_tie_disagreed", kernel.get(Counter::TlsTieDisagreed))
        .add("inband_sent", kernel.get(Counter::InbandSent))
        .add("inband_adopted", kernel.get(Counter::InbandAdopted))
        .add("inband_unsure", kernel.get(Counter::InbandUnsure))
        .add("inband_no_room", kernel.get(Counter::InbandNoRoom))
        .add("inband_ask", kernel.get(Counter::InbandAsk))
        .add("inband_conn_sent", kernel.get(Counter::InbandConnSent))
        .add(
            "inband_conn_received",
            kernel.get(Counter::InbandConnReceived),
        )
        .add("conns_opened", conns.opened)
        .add("data_unknown_conn", conns.data_unknown_conn)
        .add("conns_seen_in_use", conns.seen_in_use)
        .add("conns_peak", conns.peak)
        .add("conns_evicted_full", conns.evicted_full)
        .add("conns_evicted_idle", conns.evicted_idle)
        .add(
            "head_budget_drops",
            crate::protocol::budget::HEADS.refusals(),
        )
        .add(
            "head_bytes_buffered",
            crate::protocol::budget::HEADS.in_use(),
        )
        .add("peak_rss_kib", crate::process::own_peak_rss_kib())
        .add("shed_syscalls", kernel.get(Counter::ShedSyscalls))
        .add("tail_call_failed", kernel.get(Counter::TailCallFailed));
    let budget = sink.budget_stats().unwrap_or_default();
    stats
        .add("connections_shed", budget.connections_shed)
        .add("openings_shed", budget.openings_shed)
        .add("connections_resumed", budget.connections_resumed)
        .add("budget_cuts", budget.cuts)
        .add("budget_cpu_millicores_peak", budget.cpu_millicores_peak)
        .add("budget_ring_cuts", budget.ring_cuts);
}
