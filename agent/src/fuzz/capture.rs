//! Fuzz entry points of the capture side and the whole pipeline: ring records, BTF, the runtime
//! probes' readers of executables and modules, peer messages, and records through the sink.

use std::time::Duration;

use agent_common::{ConnEvent, DataEvent, Direction, EventHeader, EventKind, Role, Syscall};

use crate::{
    conntrack::{Conntrack, ConntrackConfig},
    exporter::counting::CountingExporter,
    net::loopback_tuple,
    pipeline::sink::TraceSink,
    probes::{btf::Btf, offsets},
    receiver::{Event, EventSink as _, decode::decode},
    trace::{
        TraceConfig, Tracer,
        resource::{Resources, ServiceNameRule},
    },
};

use super::Input;

/// One ring-buffer record: decodes or fails with an error; a data record's payload lies inside it.
pub fn ring_record(data: &[u8]) {
    if let Ok(Event::Data { payload, .. }) = decode(data) {
        assert!(payload.len() <= data.len());
    }
}

/// A BTF blob as `/sys/kernel/btf/vmlinux` would hold it: parses or fails with an error, and the
/// field lookups the agent makes at start-up terminate (type cycles included).
pub fn btf(data: &[u8]) {
    if let Ok(btf) = Btf::parse(data) {
        let _ = offsets::resolve(&btf);
        let _ = btf.func_id("do_sys_open");
    }
}

/// A traced process's executable, as the Go runtime detection and the probe placement read it:
/// build info, functions from `.symtab` or `.gopclntab` and their `RET`s, never a panic; a RET
/// found lies inside the file.
pub fn go_executable(data: &[u8]) {
    use crate::runtime::go::{buildinfo::build_info_of, pclntab, symbols::find_functions_in};
    let _ = build_info_of(data);
    let names = ["runtime.newproc1", "net/http.(*Request).write"];
    if let Ok(found) = find_functions_in(data, &names, &names[..1]) {
        for function in found.values() {
            assert!(function.file_offset <= data.len() as u64);
            assert!(function.returns.iter().all(|&r| r < data.len() as u64));
        }
    }
    let _ = pclntab::find(data, &names);
}

/// A CPython `_asyncio` extension module, as the asyncio probes' placement reads it: never a
/// panic, and `Task.__init__` found inside the file.
pub fn python_module(data: &[u8]) {
    use crate::runtime::python::{layout, task_init_offset};
    for minor in [11, 12, 13] {
        if let Some(l) = layout(3, minor)
            && let Some(at) = task_init_offset(data, &l)
        {
            assert!(
                at < data.len() as u64,
                "Task.__init__ at {at} past the file's end"
            );
        }
    }
}

/// The whole user-space pipeline (conntrack, protocol detection, HTTP, pairing, linking, span
/// building) fed a script of connection and data events among eight connections of this
/// process, as the ring would deliver them.
///
/// Script: per step a control byte (bits 0-1: open, data, close, flush; bits 2-4: connection;
/// bit 5: direction; bit 6: role on open), a thread byte, a length byte and the payload.
///
/// Invariant: every span ends no earlier than it starts.
pub fn pipeline(data: &[u8]) {
    let mut input = Input(data);
    let mut exporter = CountingExporter::default();
    let tracer = Tracer::new(
        TraceConfig {
            link_delay: Duration::ZERO,
            ..TraceConfig::default()
        },
        Resources::new(ServiceNameRule::Auto),
    );
    let mut sink = TraceSink::new(
        Conntrack::new(ConntrackConfig::default(), Vec::new()),
        tracer,
        &mut exporter,
    );
    let pid = std::process::id();
    let mut ts = 1_000_000u64;
    while !input.is_empty() {
        let control = input.byte();
        let tid = 100 + u32::from(input.byte() & 7);
        let conn_id = 1 + u64::from((control >> 2) & 7);
        ts += 1_000;
        let header = |kind: EventKind| EventHeader {
            kind: kind as u32,
            pid,
            tid,
            fd: 3 + conn_id as i32,
            conn_id,
            ts_ns: ts,
        };
        match control & 3 {
            0 => {
                let server = control & 0x40 != 0;
                let (role, syscall, tuple) = if server {
                    (
                        Role::Server,
                        Syscall::Accept4,
                        loopback_tuple(8080, 20_000 + conn_id as u16),
                    )
                } else {
                    (
                        Role::Client,
                        Syscall::Connect,
                        loopback_tuple(20_000 + conn_id as u16, 8080),
                    )
                };
                sink.on_event(&Event::Open(ConnEvent {
                    header: header(EventKind::ConnOpen),
                    tuple,
                    role: role as u32,
                    syscall: syscall as u32,
                    ..ConnEvent::default()
                }));
            }
            1 => {
                let len = usize::from(input.byte());
                let payload = input.take(len);
                let direction = if control & 0x20 == 0 {
                    Direction::Egress
                } else {
                    Direction::Ingress
                };
                let event = DataEvent {
                    header: header(EventKind::Data),
                    // Egress bytes moved at the write's entry, ingress bytes at the read's exit.
                    moved_ns: if direction == Direction::Egress {
                        ts - 500
                    } else {
                        ts
                    },
                    ret: payload.len() as i64,
                    role: 0,
                    direction: direction as u32,
                    syscall: Syscall::Read as u32,
                    captured_len: payload.len() as u32,
                    task: 0,
                    // Sequence numbers on some chunks (0x40), of any value: keys come from them.
                    seq: (ts as u32).wrapping_mul(2_654_435_761),
                    flags: u32::from(control & 0x40 != 0),
                };
                sink.on_event(&Event::Data { event, payload });
            }
            2 => sink.on_event(&Event::Close(ConnEvent {
                header: header(EventKind::ConnClose),
                ..ConnEvent::default()
            })),
            _ => sink.export(true),
        }
    }
    sink.export(true);
    drop(sink);
    assert!(exporter.bad_spans == 0, "a span ended before it started");
}

/// A datagram from the network on the peer port: decoding never panics, and fails without the
/// secret. The same bytes signed with the secret (the first 92 are the body) decode when the
/// header is a peer message's, and encode back to exactly those bytes.
pub fn peer_message(data: &[u8]) {
    use crate::peers::wire::{ClientSpan, MESSAGE_LEN, signed};
    const SECRET: &[u8] = b"fuzzing-secret-0123456789";
    assert!(ClientSpan::decode(data, SECRET, 0).is_err() || data.len() == MESSAGE_LEN);
    let Some(body) = data.get(..MESSAGE_LEN - 16) else {
        return;
    };
    let Some((message, sent)) = signed(body, SECRET) else {
        return;
    };
    if let Ok((kind, span)) = ClientSpan::decode(&message, SECRET, sent) {
        assert_eq!(span.encode(kind, SECRET, sent), message);
    } else {
        assert!(&message[..4] != b"SSPN" || message[4..8] != [1, 1, 0, 0]);
    }
}
