//! Hidden subcommands `cargo xtask bench` drives: the empty-program floor, and the user-space
//! pipeline alone on synthesized traffic.

use std::time::{Duration, Instant};

use agent_common::{ConnEvent, DataEvent, Direction, EventHeader, EventKind, Role, Syscall};

use crate::{
    caps,
    cli::CaptureArgs,
    commands::run::RunSink,
    conntrack::{Conntrack, ConntrackConfig},
    exporter::SpanExporter,
    net::loopback_tuple,
    pipeline::{self, PipelineError},
    probes::{Probes, ProgramSet},
    receiver::{Event, EventSink as _},
    trace::{SpanData, TraceConfig, Tracer, resource::Resources},
};

/// `sockspan bench-floor`: empty programs on sockspan's tracepoints until stopped.
pub async fn floor(args: &CaptureArgs, duration: Option<u64>) -> Result<(), PipelineError> {
    caps::check_can_load().map_err(PipelineError::Privilege)?;
    let _probes = Probes::load_set(&args.probes(), std::process::id(), ProgramSet::Floor)?;
    tracing::info!("capture path attached (floor: empty programs)");
    pipeline::stop_signal(duration.map(Duration::from_secs)).await;
    Ok(())
}

/// Counts spans and drops them (and counts spans that end before they start, for `fuzz`).
#[derive(Default)]
pub(crate) struct CountingExporter {
    pub(crate) spans: u64,
    pub(crate) bad_spans: u64,
}

impl SpanExporter for CountingExporter {
    fn export(&mut self, spans: &[SpanData]) {
        self.spans += spans.len() as u64;
        self.bad_spans += spans
            .iter()
            .filter(|s| s.end_unix_nano < s.start_unix_nano)
            .count() as u64;
    }
    fn flush(&mut self) {}
    fn counts(&self) -> (u64, u64) {
        (self.spans, 0)
    }
}

fn header(kind: EventKind, tid: u32, conn_id: u64, ts: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        pid: std::process::id(),
        tid,
        fd: 3,
        conn_id,
        ts_ns: ts,
    }
}

/// `sockspan bench-pipeline`: `exchanges` HTTP request/response pairs between 64 client/server
/// connection pairs on this host (both ends seen, keep-alive), through conntrack, HTTP framing,
/// pairing and linking, on one core. Prints events/s and exchanges/s.
pub fn pipeline_throughput(exchanges: u64) {
    const PAIRS: u64 = 64;
    let request = b"POST /score/8812 HTTP/1.1\r\nHost: model:8080\r\nUser-Agent: python-urllib3/2.0\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"f\": [1.0, 2.5, 3.0, 4.1]}";
    let response = b"HTTP/1.1 200 OK\r\nServer: BaseHTTP/0.6 Python/3.11\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"score\": 10.65}";
    let mut exporter = CountingExporter::default();
    let conntrack = Conntrack::new(ConntrackConfig::default(), Vec::new());
    let tracer = Tracer::new(
        TraceConfig {
            link_delay: Duration::ZERO,
            ..TraceConfig::default()
        },
        Resources::new(crate::trace::resource::ServiceNameRule::Auto),
    );
    let mut sink = RunSink::new(conntrack, tracer, &mut exporter);
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
                header: header(EventKind::ConnOpen, 1, id, 0),
                tuple: t,
                role: role as u32,
                syscall: syscall as u32,
                ..ConnEvent::default()
            }));
        }
    }
    let data =
        |conn_id: u64, tid: u32, ts: u64, direction: Direction, syscall: Syscall, len: usize| {
            DataEvent {
                header: header(EventKind::Data, tid, conn_id, ts),
                moved_ns: ts,
                ret: len as i64,
                role: 0,
                direction: direction as u32,
                syscall: syscall as u32,
                captured_len: len as u32,
            }
        };
    let started = Instant::now();
    let mut events = 0u64;
    for i in 0..exchanges {
        let pair = i % PAIRS;
        let (client, server) = (pair * 2 + 1, pair * 2 + 2);
        let ts = 1_000_000 + i * 1_000;
        let tid = 100 + pair as u32;
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
        if i % 1024 == 1023 {
            sink.export(true);
        }
    }
    sink.export(true);
    let elapsed = started.elapsed().as_secs_f64();
    let spans = exporter.spans;
    println!(
        "{{\"events\":{events},\"exchanges\":{exchanges},\"spans\":{spans},\"seconds\":{elapsed:.4},\"events_per_second\":{:.0},\"exchanges_per_second\":{:.0}}}",
        events as f64 / elapsed,
        exchanges as f64 / elapsed
    );
}
