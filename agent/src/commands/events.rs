//! `sockspan events`: raw connection and data events as JSON lines (fields in docs/events.md).

use std::{
    fmt,
    io::{self, Write},
    net::IpAddr,
    time::Duration,
};

use agent_common::{ConnEvent, Counter, DataEvent, Direction, Role, Syscall};
use serde::Serialize;

use crate::{
    cli::EventsArgs,
    clock::{WallClock, monotonic_ns},
    conntrack::{Connection, Conntrack, ConntrackStats},
    net::{family_name, transport_name, tuple_addrs},
    pipeline,
    probes::{KernelCounters, Probes},
    receiver::{self, EventSink, ReceiverStats},
};

/// Which events to print.
#[derive(Debug, Default)]
struct Filter {
    pids: Vec<u32>,
    comms: Vec<String>,
    ports: Vec<u16>,
}

impl Filter {
    fn matches(&self, pid: u32, comms: [&str; 2], ports: Option<(u16, u16)>) -> bool {
        (self.pids.is_empty() || self.pids.contains(&pid))
            && (self.comms.is_empty() || comms.iter().any(|c| self.comms.iter().any(|f| f == c)))
            && (self.ports.is_empty()
                || ports.is_some_and(|(l, r)| self.ports.contains(&l) || self.ports.contains(&r)))
    }
}

/// Bytes shown as a JSON string where each character U+0000..U+00FF stands for one byte, so
/// text stays readable and binary round-trips exactly (Python: `s.encode("latin-1")`).
struct Latin1<'a>(&'a [u8]);

impl fmt::Display for Latin1<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        for &b in self.0 {
            f.write_char(char::from(b))?;
        }
        Ok(())
    }
}

impl Serialize for Latin1<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn nul_trimmed(comm: &[u8]) -> &str {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    std::str::from_utf8(&comm[..end]).unwrap_or("?")
}

const fn role_name(role: Role) -> &'static str {
    match role {
        Role::Client => "client",
        Role::Server => "server",
        Role::Unknown => "unknown",
    }
}

fn syscall_name(raw: u32) -> &'static str {
    Syscall::from_u32(raw).map_or("?", Syscall::name)
}

/// Connection fields common to every record.
#[derive(Serialize)]
struct ConnFields<'a> {
    conn_id: u64,
    role: &'static str,
    role_source: &'static str,
    transport: &'static str,
    family: &'static str,
    local_addr: IpAddr,
    local_port: u16,
    remote_addr: IpAddr,
    remote_port: u16,
    process_comm: &'a str,
    exe: &'a str,
    container_id: Option<&'a str>,
}

impl<'a> ConnFields<'a> {
    fn of(conn: &'a Connection) -> Self {
        let (local, remote) = conn.addrs();
        Self {
            conn_id: conn.conn_id,
            role: role_name(conn.role),
            role_source: conn.role_source.as_str(),
            transport: transport_name(conn.tuple.sock_type),
            family: family_name(conn.tuple.family),
            local_addr: local.ip(),
            local_port: local.port(),
            remote_addr: remote.ip(),
            remote_port: remote.port(),
            process_comm: &conn.process.comm,
            exe: &conn.process.exe,
            container_id: conn.process.container_id.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct ConnRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time_unix_nano: u64,
    ts_ns: u64,
    pid: u32,
    tid: u32,
    fd: i32,
    comm: &'a str,
    syscall: &'static str,
    #[serde(flatten)]
    conn: ConnFields<'a>,
    cmdline: &'a [String],
    preexisting: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_received: Option<u64>,
    /// How long the connection was tracked, open to close (close events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ns: Option<u64>,
}

#[derive(Serialize)]
struct DataRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time_unix_nano: u64,
    ts_ns: u64,
    pid: u32,
    tid: u32,
    fd: i32,
    direction: &'static str,
    syscall: &'static str,
    /// Kernel monotonic ns when the bytes moved: egress at syscall entry, ingress at exit
    /// (`ts_ns`).
    moved_ns: u64,
    /// Bytes the syscall moved.
    ret: i64,
    /// Bytes in `payload`.
    captured: u32,
    truncated: bool,
    #[serde(flatten)]
    conn: Option<ConnFields<'a>>,
    payload: Latin1<'a>,
}

#[derive(Serialize)]
struct StatsRecord {
    #[serde(rename = "type")]
    kind: &'static str,
    kernel: std::collections::BTreeMap<&'static str, u64>,
    receiver_records: u64,
    receiver_decode_errors: u64,
    receiver_ring_resyncs: u64,
    printed: u64,
    conntrack_open: usize,
    conntrack_opened: u64,
    conntrack_closed: u64,
    conntrack_evicted_idle: u64,
    conntrack_evicted_full: u64,
    conntrack_data_unknown_conn: u64,
    conntrack_tuple_mismatches: u64,
    conntrack_seen_in_use: u64,
}

/// Prints each event that passes the filter; the conntrack stage runs on every event.
struct JsonSink<'p, W: Write> {
    out: W,
    conntrack: Conntrack,
    filter: Filter,
    clock: WallClock,
    probes: &'p Probes,
    printed: u64,
    write_failed: bool,
    last_counters: KernelCounters,
}

impl<W: Write> JsonSink<'_, W> {
    fn write<T: Serialize>(&mut self, record: &T) {
        if self.write_failed {
            return;
        }
        let result = serde_json::to_writer(&mut self.out, record)
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        match result {
            Ok(()) => self.printed += 1,
            Err(err) => {
                // A closed stdout (e.g. `| head`) ends printing, not the capture bookkeeping.
                tracing::warn!("stdout closed, no more events are printed: {err}");
                self.write_failed = true;
            }
        }
    }

    fn conn_record<'a>(
        &self,
        kind: &'static str,
        event: &'a ConnEvent,
        conn: &'a Connection,
        totals: bool,
    ) -> ConnRecord<'a> {
        let h = &event.header;
        ConnRecord {
            kind,
            time_unix_nano: self.clock.to_unix_ns(h.ts_ns),
            ts_ns: h.ts_ns,
            pid: h.pid,
            tid: h.tid,
            fd: h.fd,
            comm: nul_trimmed(&event.comm),
            syscall: syscall_name(event.syscall),
            conn: ConnFields::of(conn),
            cmdline: &conn.process.cmdline,
            preexisting: conn.preexisting,
            bytes_sent: totals.then_some(event.bytes_sent),
            bytes_received: totals.then_some(event.bytes_received),
            duration_ns: totals.then(|| h.ts_ns.saturating_sub(conn.opened_ns)),
        }
    }

    /// Reads the kernel counters and says loudly when events were lost.
    fn report_loss(&mut self) {
        let Ok(now) = self.probes.counters() else {
            return;
        };
        let lost = now.get(Counter::RingFull) - self.last_counters.get(Counter::RingFull);
        if lost > 0 {
            tracing::warn!(
                lost,
                total = now.get(Counter::RingFull),
                "events dropped because the ring was full; raise --ring-bytes or lower --capture-bytes"
            );
        }
        self.last_counters = now;
    }

    fn stats(&self, receiver: ReceiverStats, kernel: KernelCounters) -> StatsRecord {
        let c: ConntrackStats = self.conntrack.stats;
        StatsRecord {
            kind: "stats",
            kernel: Counter::ALL
                .iter()
                .map(|&counter| (counter.name(), kernel.get(counter)))
                .collect(),
            receiver_records: receiver.records,
            receiver_decode_errors: receiver.decode_errors,
            receiver_ring_resyncs: receiver.ring_resyncs,
            printed: self.printed,
            conntrack_open: self.conntrack.open_count(),
            conntrack_opened: c.opened,
            conntrack_closed: c.closed,
            conntrack_evicted_idle: c.evicted_idle,
            conntrack_evicted_full: c.evicted_full,
            conntrack_data_unknown_conn: c.data_unknown_conn,
            conntrack_tuple_mismatches: c.tuple_mismatches,
            conntrack_seen_in_use: c.seen_in_use,
        }
    }
}

impl<W: Write> EventSink for JsonSink<'_, W> {
    fn on_open(&mut self, event: &ConnEvent) {
        let conn = self.conntrack.open(event).clone();
        let (local, remote) = tuple_addrs(&event.tuple);
        if self.filter.matches(
            event.header.pid,
            [nul_trimmed(&event.comm), &conn.process.comm],
            Some((local.port(), remote.port())),
        ) {
            let record = self.conn_record("open", event, &conn, false);
            self.write(&record);
        }
    }

    fn on_data(&mut self, event: &DataEvent, payload: &[u8]) {
        let h = &event.header;
        let conn = self.conntrack.touch(event).cloned();
        let process = match &conn {
            Some(c) => std::sync::Arc::clone(&c.process),
            None => self.conntrack.processes.get(h.pid),
        };
        let ports = conn
            .as_ref()
            .map(|c| (c.tuple.local_port, c.tuple.remote_port));
        if !self
            .filter
            .matches(h.pid, [&process.comm, &process.comm], ports)
        {
            return;
        }
        let direction = match Direction::from_u32(event.direction) {
            Some(Direction::Egress) => "egress",
            Some(Direction::Ingress) => "ingress",
            None => "?",
        };
        let record = DataRecord {
            kind: "data",
            time_unix_nano: self.clock.to_unix_ns(h.ts_ns),
            ts_ns: h.ts_ns,
            pid: h.pid,
            tid: h.tid,
            fd: h.fd,
            direction,
            syscall: syscall_name(event.syscall),
            moved_ns: event.moved_ns,
            ret: event.ret,
            captured: event.captured_len,
            truncated: i64::from(event.captured_len) < event.ret,
            conn: conn.as_ref().map(ConnFields::of),
            payload: Latin1(payload),
        };
        self.write(&record);
    }

    fn on_close(&mut self, event: &ConnEvent) {
        let Some(conn) = self.conntrack.close(event) else {
            return;
        };
        let (local, remote) = conn.addrs();
        if self.filter.matches(
            event.header.pid,
            [nul_trimmed(&event.comm), &conn.process.comm],
            Some((local.port(), remote.port())),
        ) {
            let record = self.conn_record("close", event, &conn, true);
            self.write(&record);
        }
    }

    fn on_tick(&mut self) {
        let now = monotonic_ns();
        self.conntrack.sweep(now);
        // The wall clock may have been set since the offset was sampled (`WallClock`).
        self.clock.refresh(now);
        self.report_loss();
        if !self.write_failed && self.out.flush().is_err() {
            self.write_failed = true;
        }
    }
}

pub async fn run(args: EventsArgs) -> Result<(), pipeline::PipelineError> {
    super::report_files::check(&args.report.files())?;
    let capture = pipeline::start(
        &args.capture,
        pipeline::Traffic::All,
        pipeline::PeerMessages::Off,
    )?;
    let pipeline::Capture {
        probes,
        ring,
        discovered,
    } = capture;
    let stdout = io::stdout();
    let mut sink = JsonSink {
        out: io::BufWriter::with_capacity(64 * 1024, stdout.lock()),
        conntrack: Conntrack::new(args.capture.conntrack(), discovered),
        filter: Filter {
            pids: args.pids,
            comms: args.comms,
            ports: args.ports,
        },
        clock: WallClock::new(),
        probes: &probes,
        printed: 0,
        write_failed: false,
        last_counters: KernelCounters::default(),
    };
    if let Some(path) = &args.report.ready_file {
        let ready = serde_json::json!({ "pid": std::process::id() });
        super::report_files::write("--ready-file", path, &ready)?;
    }
    let stop = pipeline::stop_signal(args.duration.map(Duration::from_secs));
    let receiver_stats = receiver::run(ring, &mut sink, Duration::from_millis(250), stop)
        .await
        .map_err(|e| pipeline::PipelineError::Privilege(e.to_string()))?;
    sink.report_loss();
    let kernel = probes.counters().unwrap_or_default();
    let stats = sink.stats(receiver_stats, kernel);
    sink.write(&stats);
    let _ = sink.out.flush();
    if let Some(path) = &args.report.ready_file {
        let _ = std::fs::remove_file(path);
    }
    if let Some(path) = &args.report.stats_file {
        let value = serde_json::to_value(&stats).unwrap_or_default();
        super::report_files::write("--stats-file", path, &value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_round_trips_binary() {
        let bytes: Vec<u8> = (0..=255).collect();
        let json = serde_json::to_string(&Latin1(&bytes)).expect("json");
        let back: String = serde_json::from_str(&json).expect("parse");
        let decoded: Vec<u8> = back.chars().map(|c| c as u32 as u8).collect();
        assert_eq!(decoded, bytes);
        assert_eq!(
            serde_json::to_string(&Latin1(b"GET /")).expect("json"),
            "\"GET /\""
        );
    }

    #[test]
    fn filter_combines_fields() {
        let f = Filter {
            pids: vec![1],
            comms: vec![],
            ports: vec![80],
        };
        assert!(f.matches(1, ["a", "b"], Some((80, 5000))));
        assert!(f.matches(1, ["a", "b"], Some((5000, 80))));
        assert!(!f.matches(2, ["a", "b"], Some((80, 5000))));
        assert!(!f.matches(1, ["a", "b"], None));
        let f = Filter {
            comms: vec!["curl".into()],
            ..Filter::default()
        };
        assert!(f.matches(9, ["curl", "x"], None));
        assert!(!f.matches(9, ["python3", "x"], None));
    }
}
