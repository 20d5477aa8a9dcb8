//! `sockspan run`: the tracing pipeline. Captured traffic → connections → HTTP exchanges →
//! linked spans → an exporter.

use std::{collections::HashMap, io, time::Duration};

use agent_common::{ConnEvent, DataEvent, Direction, Role};

use crate::{
    cli::Output,
    cli::RunArgs,
    clock::monotonic_ns,
    conntrack::{Connection, Conntrack},
    exporter::{
        SpanExporter,
        jsonl::JsonlExporter,
        otlp::{OtlpConfig, OtlpExporter},
        store::StoreExporter,
    },
    pipeline,
    protocol::http1::{HttpConnection, HttpEvent, Side, Stamp, framer::looks_like_start},
    receiver::{self, EventSink},
    store::Store,
    trace::{SpanData, Tracer, resource::Resources},
};

/// Data chunks on a connection that may pass before it is declared not HTTP.
const DETECT_CHUNKS: u32 = agent_common::DETECT_CHUNKS;

/// What a connection carries, as far as sockspan can tell.
enum ConnProtocol {
    Detecting {
        misses: u8,
    },
    Http {
        conn: Box<HttpConnection>,
        server: bool,
    },
    Other,
}

/// Self-metrics of the protocol stage.
#[derive(Debug, Default, Clone, Copy)]
struct ProtocolStats {
    http_connections: u64,
    other_connections: u64,
}

pub(crate) struct RunSink<'a> {
    conntrack: Conntrack,
    protocols: HashMap<u64, ConnProtocol, foldhash::fast::RandomState>,
    tracer: Tracer,
    exporter: &'a mut dyn SpanExporter,
    events: Vec<HttpEvent>,
    spans: Vec<SpanData>,
    stats: ProtocolStats,
    ticks: u64,
}

impl<'a> RunSink<'a> {
    pub(crate) fn new(
        conntrack: Conntrack,
        tracer: Tracer,
        exporter: &'a mut dyn SpanExporter,
    ) -> Self {
        Self {
            conntrack,
            protocols: HashMap::default(),
            tracer,
            exporter,
            events: Vec::new(),
            spans: Vec::new(),
            stats: ProtocolStats::default(),
            ticks: 0,
        }
    }

    /// The most spans the tracer held at once.
    #[cfg(test)]
    pub(crate) fn held_peak(&self) -> u64 {
        self.tracer.stats.held_peak
    }

    pub(crate) fn export(&mut self, flush: bool) {
        let now = monotonic_ns();
        loop {
            let more = self.tracer.poll(now, flush, &mut self.spans, EXPORT_CHUNK);
            if !self.spans.is_empty() {
                self.exporter.export(&self.spans);
                self.spans.clear();
            }
            if !more {
                break;
            }
        }
        self.exporter.flush();
    }
}

/// Hands the HTTP events of `conn` to the tracer. A free function over the sink's fields, so
/// the connection can stay borrowed from the connection table (no clone per data event).
fn dispatch(tracer: &mut Tracer, events: &mut Vec<HttpEvent>, conn: &Connection, server: bool) {
    // The clock only for exchanges (half the events at most), not for every chunk of bytes.
    let mut now = None;
    for event in events.drain(..) {
        match event {
            HttpEvent::Request { trace, start } => {
                tracer.on_request(conn, server, trace.as_deref(), start);
            }
            HttpEvent::Exchange(exchange) => {
                let now = *now.get_or_insert_with(monotonic_ns);
                tracer.on_exchange(conn, exchange, now);
            }
        }
    }
}

impl EventSink for RunSink<'_> {
    fn on_open(&mut self, event: &ConnEvent) {
        self.conntrack.open(event);
        self.protocols
            .insert(event.header.conn_id, ConnProtocol::Detecting { misses: 0 });
    }

    fn on_data(&mut self, event: &DataEvent, payload: &[u8]) {
        let Some(conn) = self.conntrack.touch(event) else {
            return;
        };
        let egress = event.direction == Direction::Egress as u32;
        let state = self
            .protocols
            .entry(conn.conn_id)
            .or_insert(ConnProtocol::Detecting { misses: 0 });
        if let ConnProtocol::Detecting { misses } = state {
            // The request direction decides: a client writes requests, a server reads them.
            let server = match conn.role {
                Role::Client => Some(false),
                Role::Server => Some(true),
                Role::Unknown => None,
            };
            let request_side = server.is_none_or(|s| s != egress);
            if request_side && looks_like_start(Side::Request, payload) {
                self.stats.http_connections += 1;
                *state = ConnProtocol::Http {
                    conn: Box::new(HttpConnection::new()),
                    server: server.unwrap_or(!egress),
                };
            } else {
                *misses += 1;
                if u32::from(*misses) >= DETECT_CHUNKS {
                    self.stats.other_connections += 1;
                    *state = ConnProtocol::Other;
                }
                return;
            }
        }
        let ConnProtocol::Http { conn: http, server } = state else {
            return;
        };
        // A client writes requests and reads responses; a server does the opposite.
        let side = if egress == *server {
            Side::Response
        } else {
            Side::Request
        };
        // Egress bytes leave the process at syscall entry, ingress bytes arrive at its exit.
        let ts = event.moved_ns;
        let total = u64::try_from(event.ret).unwrap_or(0);
        http.feed(side, payload, total, ts, event.header.tid, &mut self.events);
        let server = *server;
        dispatch(&mut self.tracer, &mut self.events, conn, server);
        // The export tick competes with draining the ring, and under load ran only every
        // ~100 ms: 10–25 k finished spans waited for it (`held_peak`), ~15 MB of the agent's
        // peak memory. A chunk's worth goes out as soon as it is ready.
        if self.tracer.ready_now() >= EXPORT_CHUNK {
            self.export(false);
        }
    }

    fn on_close(&mut self, event: &ConnEvent) {
        let Some(conn) = self.conntrack.close(event) else {
            return;
        };
        if let Some(ConnProtocol::Http {
            conn: mut http,
            server,
        }) = self.protocols.remove(&conn.conn_id)
        {
            let at = Stamp {
                ts: event.header.ts_ns,
                tid: event.header.tid,
                offset: 0,
            };
            http.close(at, &mut self.events);
            dispatch(&mut self.tracer, &mut self.events, &conn, server);
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        self.export(false);
        if self.ticks.is_multiple_of(10) {
            tracing::debug!(
                held = self.tracer.held(),
                dropped_full = self.tracer.stats.dropped_full,
                spans_started = self.tracer.stats.spans_started,
                "trace stage"
            );
        }
        if self.ticks.is_multiple_of(20) {
            self.conntrack.sweep(monotonic_ns());
            let conntrack = &self.conntrack;
            self.protocols.retain(|id, _| conntrack.contains(*id));
        }
    }
}

/// Spans built and handed to the exporter at a time.
pub(crate) const EXPORT_CHUNK: usize = 1024;

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
        Output::Otlp => Some(OtlpConfig::resolve(args.otlp_endpoint.as_deref(), &|k| {
            std::env::var(k).ok()
        })?),
        Output::Jsonl | Output::Store => None,
    };
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
    let _lock = crate::lock::acquire()?;
    let capture = pipeline::start(&args.capture, pipeline::Traffic::Parsed)?;
    let pipeline::Capture {
        probes,
        ring,
        discovered,
    } = capture;
    let (mut exporter, sender): (Box<dyn SpanExporter>, _) = match (args.output, otlp) {
        (Output::Otlp, Some(config)) => {
            let (exporter, task) = OtlpExporter::start(config)?;
            (Box::new(exporter), Some(task))
        }
        (Output::Store, _) => {
            let store = Store::open(store_config)?;
            if let Some(api) = &api_config {
                crate::api::serve(api, store.clone()).await?;
            }
            tracing::info!(path = %store.path().display(), "storing spans");
            (Box::new(StoreExporter::new(store)), None)
        }
        _ => (
            // 64 KiB per write: each write is a syscall the programs see too.
            Box::new(JsonlExporter::new(io::BufWriter::with_capacity(
                64 * 1024,
                io::stdout(),
            ))),
            None,
        ),
    };
    let mut sink = RunSink::new(
        Conntrack::new(args.capture.conntrack(), discovered),
        Tracer::new(trace_config, Resources::new(args.service_name)),
        exporter.as_mut(),
    );
    let stop = pipeline::stop_signal(args.duration.map(Duration::from_secs));
    let receiver = receiver::run(ring, &mut sink, Duration::from_millis(100), stop)
        .await
        .map_err(|e| pipeline::PipelineError::Privilege(e.to_string()))?;
    // Everything finished is exported before exit.
    sink.export(true);
    sink.exporter.finish();
    if let Some(task) = sender
        && tokio::time::timeout(EXPORT_DRAIN, task).await.is_err()
    {
        tracing::warn!("OTLP sender still busy after {EXPORT_DRAIN:?}; stopping without it");
    }
    let kernel = probes.counters().unwrap_or_default();
    let (spans_out, spans_lost) = sink.exporter.counts();
    tracing::info!(
        spans_exported = spans_out,
        export_failed = spans_lost,
        spans_started = sink.tracer.stats.spans_started,
        parent_from_header = sink.tracer.stats.parent_from_header,
        parent_from_thread = sink.tracer.stats.parent_from_thread,
        parent_from_connection = sink.tracer.stats.parent_from_connection,
        roots = sink.tracer.stats.roots,
        ambiguous = sink.tracer.stats.ambiguous,
        held = sink.tracer.held(),
        held_peak = sink.tracer.stats.held_peak,
        http_connections = sink.stats.http_connections,
        other_connections = sink.stats.other_connections,
        events_sent = kernel.get(agent_common::Counter::EventsSent),
        ring_records = receiver.records,
        undecodable_records = receiver.decode_errors,
        ring_resyncs = receiver.ring_resyncs,
        ring_full_drops = kernel.get(agent_common::Counter::RingFull),
        entry_time_missed = kernel.get(agent_common::Counter::EntryTimeMissed),
        conns_opened = sink.conntrack.stats.opened,
        conns_peak = sink.conntrack.stats.peak,
        conns_evicted_full = sink.conntrack.stats.evicted_full,
        conns_evicted_idle = sink.conntrack.stats.evicted_idle,
        head_budget_drops = crate::protocol::http1::budget::HEADS.refusals(),
        head_bytes_buffered = crate::protocol::http1::budget::HEADS.in_use(),
        peak_rss_kib = crate::process::own_peak_rss_kib(),
        "stopped"
    );
    Ok(())
}
