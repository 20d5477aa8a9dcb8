//! Hidden subcommands `cargo xtask bench` drives: the empty-program floor, and the user-space
//! pipeline alone on synthesized traffic.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use agent_common::{ConnEvent, DataEvent, Direction, EventHeader, EventKind, Role, Syscall};

use crate::{
    caps,
    cli::CaptureArgs,
    conntrack::{Conntrack, ConntrackConfig},
    exporter::{SpanExporter, counting::CountingExporter, store::StoreExporter},
    net::loopback_tuple,
    pipeline::sink::TraceSink,
    pipeline::{self, PipelineError},
    probes::{FloorHooks, Probes, ProgramSet},
    receiver::{Event, EventSink as _},
    store::{Store, StoreConfig, StoreError},
    trace::{TraceConfig, Tracer, resource::Resources},
};

/// The hidden subcommands `cargo xtask bench` drives.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Benchmark helper: attach empty programs to sockspan's tracepoints (the floor), or with
    /// `--hooks socket` to the socket layer's.
    #[command(hide = true, name = "bench-floor")]
    Floor {
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
        /// Instead of empty programs, the capture `sys_enter` and an exit program that stops
        /// after this step.
        #[arg(long, conflicts_with = "hooks")]
        stage: Option<crate::probes::ExitStage>,
        /// Where the empty programs go: the capture programs' raw syscall tracepoints, or the
        /// socket layer's send and receive tracepoints.
        #[arg(long, value_enum, default_value_t = FloorHooks::Syscalls)]
        hooks: FloorHooks,
        /// Written once the programs are attached (as `run --ready-file`).
        #[arg(long, value_name = "PATH")]
        ready_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        capture: CaptureArgs,
    },
    /// Benchmark helper: the user-space pipeline alone on synthesized HTTP/1 or gRPC traffic.
    #[command(hide = true, name = "bench-pipeline")]
    Pipeline {
        #[arg(long, default_value_t = 200_000)]
        exchanges: u64,
        /// Export into an embedded store at this path (the default output) instead of counting.
        #[arg(long, value_name = "PATH")]
        store: Option<std::path::PathBuf>,
        /// What to synthesize.
        #[arg(long, value_enum, default_value = "http1")]
        protocol: BenchProtocol,
    },
    /// Benchmark helper: how many spans of a service a stopped agent's store holds.
    #[command(hide = true, name = "bench-store-count")]
    StoreCount {
        #[arg(long, value_name = "PATH")]
        store: std::path::PathBuf,
        #[arg(long)]
        service: String,
    },
}

/// Runs a benchmark helper; returns the process's exit code.
pub fn run(command: BenchCommand) -> i32 {
    fn done<E: std::fmt::Display>(result: Result<(), E>) -> i32 {
        match result {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("sockspan: {err}");
                1
            }
        }
    }
    match command {
        BenchCommand::Floor {
            duration,
            stage,
            hooks,
            ready_file,
            capture,
        } => crate::run_async(async move {
            let set = stage.map_or(ProgramSet::Floor(hooks), ProgramSet::Stage);
            floor(&capture, duration, set, ready_file.as_deref()).await
        }),
        BenchCommand::StoreCount { store, service } => {
            done(store_count(&store, &service).map(|n| println!("{n}")))
        }
        BenchCommand::Pipeline {
            exchanges,
            store,
            protocol,
        } => done(pipeline_throughput(exchanges, store.as_deref(), protocol)),
    }
}

/// `sockspan bench-floor`: empty programs on sockspan's tracepoints (or the socket layer's)
/// until stopped, or with `--stage`, the capture path cut short after one step (nothing reads
/// the ring meanwhile: these programs send only connection records).
pub async fn floor(
    args: &CaptureArgs,
    duration: Option<u64>,
    set: ProgramSet,
    ready_file: Option<&Path>,
) -> Result<(), PipelineError> {
    super::report_files::check(&[("--ready-file", ready_file)])?;
    caps::check_can_load().map_err(PipelineError::Privilege)?;
    let _probes = Probes::load_set(&args.probes(), std::process::id(), set)?;
    match set {
        ProgramSet::Stage(stage) => tracing::info!(?stage, "capture path attached (cut short)"),
        ProgramSet::Floor(hooks) => {
            tracing::info!(?hooks, "capture path attached (floor: empty programs)");
        }
        ProgramSet::Capture => tracing::info!("capture path attached"),
    }
    if let Some(path) = ready_file {
        let ready = serde_json::json!({ "pid": std::process::id() });
        super::report_files::write("--ready-file", path, &ready)?;
    }
    pipeline::stop_signal(duration.map(Duration::from_secs)).await;
    if let Some(path) = ready_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn header(kind: EventKind, pid: u32, tid: u32, conn_id: u64, ts: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        pid,
        tid,
        fd: 3,
        conn_id,
        ts_ns: ts,
    }
}

/// Client/server connection pairs the synthesized exchanges run over.
const PAIRS: u64 = 64;

/// Opens [`PAIRS`] loopback connections, each seen from both ends.
fn open_connections(sink: &mut TraceSink<'_>, pid: u32) {
    for pair in 0..PAIRS {
        let port = 20_000 + pair as u16;
        let (client, server) = (pair * 2 + 1, pair * 2 + 2);
        for (id, t, role, syscall) in [
            (
                client,
                loopback_tuple(port, 8080),
                Role::Client,
                Syscall::Connect,
            ),
            (
                server,
                loopback_tuple(8080, port),
                Role::Server,
                Syscall::Accept4,
            ),
        ] {
            sink.on_event(&Event::Open(ConnEvent {
                header: header(EventKind::ConnOpen, pid, 1, id, 0),
                tuple: t,
                role: role as u32,
                syscall: syscall as u32,
                ..ConnEvent::default()
            }));
        }
    }
}

/// `sockspan bench-pipeline`: `exchanges` HTTP request/response pairs between 64 client/server
/// connection pairs on this host (both ends seen, keep-alive), through conntrack, HTTP framing,
/// pairing and linking, on one core. Prints events/s and exchanges/s. With `store`, spans go
/// into an embedded store there (the default output) instead of being counted and dropped; the
/// figures then include the store, and the file's size per span is printed too.
pub fn pipeline_throughput(
    exchanges: u64,
    store: Option<&Path>,
    protocol: BenchProtocol,
) -> Result<(), StoreError> {
    // Read once: a getpid per synthesized event was 8 % of this benchmark.
    let pid = std::process::id();
    let mut counter = CountingExporter::default();
    let mut stored = store.map(store_exporter).transpose()?;
    let exporter: &mut dyn SpanExporter = match stored.as_mut() {
        Some(s) => s,
        None => &mut counter,
    };
    let mut sink = synthetic_sink(exporter, pid);
    let started = Instant::now();
    // An explicit export every 1024 exchanges, as the tick would.
    let events = feed_exchanges(&mut sink, pid, protocol, exchanges, 1024);
    sink.export(true);
    drop(sink);
    if let Some(s) = stored.as_mut() {
        s.finish();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (spans, file_bytes, lookup_us) = match (&stored, store) {
        (Some(s), Some(_)) => (
            s.counts().0,
            s.store().disk_bytes(),
            lookup_micros(s.store())?,
        ),
        _ => (counter.spans, 0, 0.0),
    };
    println!(
        "{{\"events\":{events},\"exchanges\":{exchanges},\"spans\":{spans},\"heads_remembered\":{},\"seconds\":{elapsed:.4},\"events_per_second\":{:.0},\"exchanges_per_second\":{:.0},\"store_bytes\":{file_bytes},\"trace_lookup_us\":{lookup_us:.1}}}",
        crate::protocol::http1::head_cache::hits(),
        events as f64 / elapsed,
        exchanges as f64 / elapsed
    );
    Ok(())
}

/// The pipeline `sockspan run` builds, with no link delay (both ends are synthesized), and the
/// connections [`feed_exchanges`] uses already open.
fn synthetic_sink(exporter: &mut dyn SpanExporter, pid: u32) -> TraceSink<'_> {
    let conntrack = Conntrack::new(ConntrackConfig::default(), Vec::new());
    let tracer = Tracer::new(
        TraceConfig {
            link_delay: Duration::ZERO,
            ..TraceConfig::default()
        },
        Resources::new(crate::trace::resource::ServiceNameRule::Auto),
    );
    let mut sink = TraceSink::new(conntrack, tracer, exporter);
    open_connections(&mut sink, pid);
    sink
}

/// The HTTP/1.1 exchange the pipeline benchmark repeats: a JSON scoring call.
const HTTP1_REQUEST: &[u8] = b"POST /score/8812 HTTP/1.1\r\nHost: model:8080\r\nUser-Agent: python-urllib3/2.0\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"f\": [1.0, 2.5, 3.0, 4.1]}";
/// What redis-py writes for `GET features:8812`, and redis-server's answer.
const REDIS_REQUEST: &[u8] = b"*2\r\n$3\r\nGET\r\n$13\r\nfeatures:8812\r\n";
const REDIS_RESPONSE: &[u8] =
    b"$64\r\n0.125,0.250,0.375,0.500,0.625,0.750,0.875,1.000,1.125,1.250,1.37\r\n";
const HTTP1_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: BaseHTTP/0.6 Python/3.11\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"score\": 10.65}";
/// [`HTTP1_RESPONSE`]'s body.
const HTTP1_RESPONSE_BODY: &[u8] = b"{\"score\": 10.65}";

/// [`HTTP1_REQUEST`] and [`HTTP1_RESPONSE`] made the `i`th of their kind: the request's
/// identifier and a response header carry `i`.
fn distinct_http1(i: u64, request: &mut Vec<u8>, response: &mut Vec<u8>) {
    use std::io::Write;
    request.clear();
    response.clear();
    // The request line replaced, the headers and body kept.
    let line_end = HTTP1_REQUEST
        .iter()
        .position(|&b| b == b'\r')
        .unwrap_or(HTTP1_REQUEST.len());
    let _ = write!(request, "POST /score/{i} HTTP/1.1");
    request.extend_from_slice(&HTTP1_REQUEST[line_end..]);
    // A header added before the blank line that ends the response's head.
    let head_end = HTTP1_RESPONSE.len() - HTTP1_RESPONSE_BODY.len() - 2;
    response.extend_from_slice(&HTTP1_RESPONSE[..head_end]);
    let _ = write!(response, "X-Request-Id: {i}\r\n\r\n");
    response.extend_from_slice(HTTP1_RESPONSE_BODY);
}

/// What `bench-pipeline` synthesizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchProtocol {
    /// HTTP/1.1 keep-alive JSON calls.
    Http1,
    /// The same calls, each request's target and each response's head its own (an identifier
    /// that counts up): no head repeats but at a connection's two ends.
    Http1Distinct,
    /// gRPC unary calls over HTTP/2, HPACK-indexed after each connection's first call.
    Http2,
    /// Redis `GET`s of a 64-byte value (RESP2).
    Redis,
}

/// The data events of an HTTP/2 connection's opening: the client's preface and SETTINGS, the
/// server's SETTINGS, each written by one end and read by the other. Returns the events fed.
fn open_http2(
    sink: &mut TraceSink<'_>,
    pid: u32,
    (client, server): (u64, u64),
    tid: u32,
    ts: u64,
) -> u64 {
    let mut preface = crate::protocol::http2::frame::PREFACE.to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let settings: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let steps: [(u64, u32, Direction, &[u8]); 4] = [
        (client, tid, Direction::Egress, &preface),
        (server, tid + 1000, Direction::Ingress, &preface),
        (server, tid + 1000, Direction::Egress, settings),
        (client, tid, Direction::Ingress, settings),
    ];
    for (conn_id, tid, direction, payload) in steps {
        let event = DataEvent {
            header: header(EventKind::Data, pid, tid, conn_id, ts),
            moved_ns: ts,
            ret: payload.len() as i64,
            role: 0,
            direction: direction as u32,
            syscall: Syscall::Sendmsg as u32,
            captured_len: payload.len() as u32,
            task: 0,
            seq: 0,
            flags: 0,
        };
        sink.on_event(&Event::Data { event, payload });
    }
    4
}

/// gRPC unary calls as a grpcio client and server write them: `HEADERS` + `DATA` (ending the
/// stream) one way, `HEADERS` + `DATA` + trailers (ending it) back. A connection's first call inserts its
/// headers into both HPACK tables; later calls refer to them by index. Built once; a call
/// only patches its stream id into reused buffers.
struct GrpcCalls {
    first: (Vec<u8>, Vec<u8>),
    next: (Vec<u8>, Vec<u8>),
    /// Offsets of the stream ids in `first` and `next` (request, response).
    ids: (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>),
}

impl GrpcCalls {
    fn new() -> Self {
        fn frame(out: &mut Vec<u8>, ids: &mut Vec<usize>, kind: u8, flags: u8, payload: &[u8]) {
            let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
            out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
            ids.push(out.len());
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(payload);
        }
        fn literal(out: &mut Vec<u8>, first: u8, name: Option<&str>, value: &str) {
            out.push(first);
            if let Some(name) = name {
                out.push(name.len() as u8);
                out.extend_from_slice(name.as_bytes());
            }
            out.push(value.len() as u8);
            out.extend_from_slice(value.as_bytes());
        }
        let message = b"\0\0\0\0\x1b{\"f\": [1.0, 2.5, 3.0, 4.1]}";
        let answer = b"\0\0\0\0\x10{\"score\": 10.65}";
        // Request block: :method POST, :scheme http, then :path, :authority, content-type and
        // te inserted (newest first afterwards: te 62, content-type 63, :authority 64, :path 65).
        let mut block = vec![0x83, 0x86];
        literal(&mut block, 0x44, None, "/model.Scorer/Score");
        literal(&mut block, 0x41, None, "model:8080");
        literal(&mut block, 0x5f, None, "application/grpc");
        literal(&mut block, 0x40, Some("te"), "trailers");
        let (mut first_req, mut first_req_ids) = (Vec::new(), Vec::new());
        frame(&mut first_req, &mut first_req_ids, 1, 4, &block);
        frame(&mut first_req, &mut first_req_ids, 0, 1, message);
        let (mut next_req, mut next_req_ids) = (Vec::new(), Vec::new());
        frame(
            &mut next_req,
            &mut next_req_ids,
            1,
            4,
            &[0x83, 0x86, 0xc1, 0xc0, 0xbf, 0xbe],
        );
        frame(&mut next_req, &mut next_req_ids, 0, 1, message);
        // Response: :status 200 and content-type inserted; trailers grpc-status 0 inserted
        // (newest first afterwards: grpc-status 62, content-type 63).
        let mut headers = vec![0x88];
        literal(&mut headers, 0x5f, None, "application/grpc");
        let mut trailers = Vec::new();
        literal(&mut trailers, 0x40, Some("grpc-status"), "0");
        let (mut first_resp, mut first_resp_ids) = (Vec::new(), Vec::new());
        frame(&mut first_resp, &mut first_resp_ids, 1, 4, &headers);
        frame(&mut first_resp, &mut first_resp_ids, 0, 0, answer);
        frame(&mut first_resp, &mut first_resp_ids, 1, 5, &trailers);
        let (mut next_resp, mut next_resp_ids) = (Vec::new(), Vec::new());
        frame(&mut next_resp, &mut next_resp_ids, 1, 4, &[0x88, 0xbf]);
        frame(&mut next_resp, &mut next_resp_ids, 0, 0, answer);
        frame(&mut next_resp, &mut next_resp_ids, 1, 5, &[0xbe]);
        Self {
            first: (first_req, first_resp),
            next: (next_req, next_resp),
            ids: (first_req_ids, first_resp_ids, next_req_ids, next_resp_ids),
        }
    }

    /// The `n`-th call on a connection (stream id 2n + 1): request and response bytes.
    fn call(&mut self, n: u64) -> (&[u8], &[u8]) {
        let id = u32::try_from(2 * n + 1).unwrap_or(u32::MAX).to_be_bytes();
        let (request, response, request_ids, response_ids) = if n == 0 {
            (
                &mut self.first.0,
                &mut self.first.1,
                &self.ids.0,
                &self.ids.1,
            )
        } else {
            (&mut self.next.0, &mut self.next.1, &self.ids.2, &self.ids.3)
        };
        for &at in request_ids {
            request[at..at + 4].copy_from_slice(&id);
        }
        for &at in response_ids {
            response[at..at + 4].copy_from_slice(&id);
        }
        (request, response)
    }
}

/// Feeds `exchanges` synthesized exchanges of `protocol` (four data events each) through
/// `sink`, exporting with a flush every `export_every` exchanges; returns the events fed.
fn feed_exchanges(
    sink: &mut TraceSink<'_>,
    pid: u32,
    protocol: BenchProtocol,
    exchanges: u64,
    export_every: u64,
) -> u64 {
    let mut grpc = GrpcCalls::new();
    let data =
        |conn_id: u64, tid: u32, ts: u64, direction: Direction, syscall: Syscall, len: usize| {
            DataEvent {
                header: header(EventKind::Data, pid, tid, conn_id, ts),
                moved_ns: ts,
                ret: len as i64,
                role: 0,
                direction: direction as u32,
                syscall: syscall as u32,
                captured_len: len as u32,
                task: 0,
                seq: 0,
                flags: 0,
            }
        };
    let base_ns = crate::clock::monotonic_ns();
    let mut events = 0u64;
    let (mut distinct_request, mut distinct_response) = (Vec::new(), Vec::new());
    for i in 0..exchanges {
        let pair = i % PAIRS;
        let (client, server) = (pair * 2 + 1, pair * 2 + 2);
        // Now on the monotonic clock: spans from boot time would be past the store's retention
        // on a host up more than a day, and retention would delete them during the run.
        let ts = base_ns + i * 1_000;
        let tid = 100 + pair as u32;
        let (request, response): (&[u8], &[u8]) = match protocol {
            BenchProtocol::Http1 => (HTTP1_REQUEST, HTTP1_RESPONSE),
            BenchProtocol::Http1Distinct => {
                distinct_http1(i, &mut distinct_request, &mut distinct_response);
                (&distinct_request, &distinct_response)
            }
            BenchProtocol::Redis => (REDIS_REQUEST, REDIS_RESPONSE),
            BenchProtocol::Http2 => {
                if i < PAIRS {
                    // Each connection opens with the client preface and both ends' SETTINGS.
                    events += open_http2(sink, pid, (client, server), tid, ts);
                }
                grpc.call(i / PAIRS)
            }
        };
        let steps: [(u64, u32, Direction, Syscall, &[u8]); 4] = [
            (client, tid, Direction::Egress, Syscall::Sendto, request),
            (
                server,
                tid + 1000,
                Direction::Ingress,
                Syscall::Recvfrom,
                request,
            ),
            (
                server,
                tid + 1000,
                Direction::Egress,
                Syscall::Sendto,
                response,
            ),
            (client, tid, Direction::Ingress, Syscall::Recvfrom, response),
        ];
        for (step, (conn, thread, direction, syscall, payload)) in steps.into_iter().enumerate() {
            let event = data(
                conn,
                thread,
                ts + step as u64 * 100,
                direction,
                syscall,
                payload.len(),
            );
            sink.on_event(&Event::Data { event, payload });
            events += 1;
        }
        if i % export_every == export_every - 1 {
            sink.export(true);
        }
    }
    events
}

/// A store exporter into a new store at `path`, as `sockspan run` makes by default (with no
/// span limit, so retention has nothing to do during the run).
fn store_exporter(path: &Path) -> Result<StoreExporter, StoreError> {
    crate::store::remove(path);
    let store = Store::open(StoreConfig::reading(path))?;
    StoreExporter::lossless(store)
}

/// `sockspan bench-store-count`: spans of `service` in the store at `path` (of a stopped agent).
pub fn store_count(path: &Path, service: &str) -> Result<u64, StoreError> {
    let store = Store::open(StoreConfig::reading(path))?;
    let mut count = 0;
    store.scan(0, u64::MAX, |summary| {
        count += u64::from(summary.service == service);
        true
    })?;
    Ok(count)
}

/// Mean microseconds to read one whole trace back by id, over up to 1000 traces spread over
/// everything stored (ids taken from the start-time index).
fn lookup_micros(store: &Store) -> Result<f64, StoreError> {
    let mut ids = Vec::new();
    let mut seen = 0u64;
    store.scan(0, u64::MAX, |summary| {
        if seen.is_multiple_of(97) {
            ids.push(summary.trace_id);
        }
        seen += 1;
        true
    })?;
    let step = ids.len().div_ceil(1000).max(1);
    let ids: Vec<[u8; 16]> = ids.into_iter().step_by(step).collect();
    let started = Instant::now();
    let mut spans = 0;
    for id in &ids {
        spans += store.trace(id)?.len();
    }
    let micros = started.elapsed().as_secs_f64() * 1e6 / ids.len().max(1) as f64;
    if spans < ids.len() {
        return Err(StoreError::Db(format!(
            "{} traces read back {spans} spans",
            ids.len()
        )));
    }
    Ok(micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::SpanData;

    #[test]
    fn finished_spans_leave_without_waiting_for_the_tick() {
        let mut counter = CountingExporter::default();
        let pid = std::process::id();
        let mut sink = synthetic_sink(&mut counter, pid);
        // No tick and no export for 20 000 exchanges: a busy ring starves the tick.
        feed_exchanges(&mut sink, pid, BenchProtocol::Http1, 20_000, u64::MAX);
        let peak = sink.held_peak();
        assert!(
            peak <= 2 * crate::pipeline::sink::EXPORT_CHUNK as u64,
            "{peak} spans held at once"
        );
        sink.export(true);
        drop(sink);
        assert_eq!(counter.spans, 40_000, "every span still leaves");
    }

    /// Keeps every exported span.
    struct Keep(Vec<SpanData>);

    impl SpanExporter for Keep {
        fn export(&mut self, spans: &mut Vec<SpanData>) {
            self.0.append(spans);
        }
        fn flush(&mut self) {}
        fn counts(&self) -> (u64, u64) {
            (self.0.len() as u64, 0)
        }
    }

    /// The spans `exchanges` synthesized exchanges of `protocol` become.
    fn spans_of(protocol: BenchProtocol, exchanges: u64) -> Vec<SpanData> {
        let mut kept = Keep(Vec::new());
        let pid = std::process::id();
        let mut sink = synthetic_sink(&mut kept, pid);
        feed_exchanges(&mut sink, pid, protocol, exchanges, u64::MAX);
        sink.export(true);
        drop(sink);
        kept.0
    }

    #[test]
    fn synthesized_grpc_calls_become_linked_grpc_spans() {
        // Three calls on each connection: the first inserts, the others index.
        let spans = spans_of(BenchProtocol::Http2, 3 * PAIRS);
        assert_eq!(spans.len() as u64, 6 * PAIRS);
        for span in &spans {
            assert_eq!(&*span.name, "model.Scorer/Score");
            assert_eq!(span.status, crate::trace::span::SpanStatus::Unset);
            if span.kind == crate::trace::span::SpanKind::Server {
                assert!(span.parent_span_id.is_some(), "{span:?}");
            }
        }
    }

    #[test]
    fn synthesized_redis_commands_become_linked_redis_spans() {
        let spans = spans_of(BenchProtocol::Redis, 2 * PAIRS);
        assert_eq!(spans.len() as u64, 4 * PAIRS);
        for span in &spans {
            assert_eq!(&*span.name, "GET");
            if span.kind == crate::trace::span::SpanKind::Server {
                assert!(span.parent_span_id.is_some(), "{span:?}");
            }
        }
    }
}
