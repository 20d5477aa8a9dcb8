//! `--output jsonl`: one finished span per line.

use std::io::Write;

use serde::Serialize;

use super::SpanExporter;
use crate::trace::{
    SpanData,
    ids::HexId,
    span::{AttrValue, KeyValue, SpanStatus},
};

/// Attributes as a JSON object; ints stay numbers.
struct Attributes<'a>(&'a [KeyValue]);

impl Serialize for Attributes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for kv in self.0 {
            match &kv.value {
                AttrValue::Str(v) => map.serialize_entry(&kv.key, v)?,
                AttrValue::Int(v) => map.serialize_entry(&kv.key, v)?,
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct LinkRecord {
    trace_id: HexId,
    span_id: HexId,
    reason: &'static str,
}

#[derive(Serialize)]
struct StatusRecord<'a> {
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

#[derive(Serialize)]
struct SpanRecord<'a> {
    trace_id: HexId,
    span_id: HexId,
    parent_span_id: Option<HexId>,
    links: Vec<LinkRecord>,
    kind: &'static str,
    name: &'a str,
    start_time_unix_nano: u64,
    end_time_unix_nano: u64,
    status: StatusRecord<'a>,
    attributes: Attributes<'a>,
    resource: &'a serde_json::value::RawValue,
}

/// Writes spans as JSON lines to any writer (stdout for `sockspan run --output jsonl`).
pub struct JsonlExporter<W: Write> {
    out: W,
    written: u64,
    failed: u64,
}

impl<W: Write> JsonlExporter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            failed: 0,
        }
    }
}

fn record(span: &SpanData) -> SpanRecord<'_> {
    SpanRecord {
        trace_id: HexId::new(&span.trace_id),
        span_id: HexId::new(&span.span_id),
        parent_span_id: span.parent_span_id.map(|p| HexId::new(&p)),
        links: span
            .links
            .iter()
            .map(|l| LinkRecord {
                trace_id: HexId::new(&l.trace_id),
                span_id: HexId::new(&l.span_id),
                reason: l.reason,
            })
            .collect(),
        kind: span.kind.as_str(),
        name: &span.name,
        start_time_unix_nano: span.start_unix_nano,
        end_time_unix_nano: span.end_unix_nano,
        status: match &span.status {
            SpanStatus::Unset => StatusRecord {
                code: "UNSET",
                message: None,
            },
            SpanStatus::Error(m) => StatusRecord {
                code: "ERROR",
                message: Some(m),
            },
        },
        attributes: Attributes(&span.attributes),
        // Encoded once per process: an object of strings and integers always encodes (the
        // default, `null`, is unreachable).
        resource: span.resource.json(|attributes| {
            serde_json::value::to_raw_value(&Attributes(attributes)).unwrap_or_default()
        }),
    }
}

/// One span as the JSON object `--output jsonl` prints (and the store keeps).
#[must_use]
pub fn to_json(span: &SpanData) -> Vec<u8> {
    serde_json::to_vec(&record(span)).unwrap_or_default()
}

impl<W: Write> SpanExporter for JsonlExporter<W> {
    fn export(&mut self, spans: &[SpanData]) {
        for span in spans {
            let ok = serde_json::to_writer(&mut self.out, &record(span)).is_ok()
                && self.out.write_all(b"\n").is_ok();
            if ok {
                self.written += 1;
            } else {
                self.failed += 1;
            }
        }
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }

    fn counts(&self) -> (u64, u64) {
        (self.written, self.failed)
    }
}
