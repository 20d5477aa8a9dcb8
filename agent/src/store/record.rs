//! A stored span's bytes inside a frame (frame format 2): the span's fields in a compact binary
//! form, turned back into the `--output jsonl` object when read.
//!
//! Why not the JSON itself (format 1): the writer thread spent about a third of its CPU
//! escaping strings and formatting numbers, then compressing keys that every span repeats
//! (`perf` of `sockspan run` under wrk against nginx: JSON encoding 9 % and LZ4 9 % of the
//! agent's CPU). Here strings and numbers are copied as they are, the resource (one per process)
//! is its cached JSON, and reads, which are rare, pay for the JSON instead.
//!
//! Layout: span id (8), parent span id (8, zeros for none), flags (u8: bit 0 has a parent, bit 1
//! is a CLIENT span, bit 2 has an error status), start and end (u64 LE each), then
//! length-prefixed fields (a length is a LEB128 varint): name, the error message if flagged,
//! links (count; each trace id 16, span id 8, reason), attributes (count; each key, then a tag
//! byte, 0 string or 1 integer (i64 LE), and the value), then the resource: in frame format 3
//! (written now) its index (a varint) in the frame's table of resources, in format 2 its JSON
//! object itself.

use crate::{
    exporter::json::{write_attributes, write_id, write_int, write_str},
    trace::{
        SpanData,
        span::{AttrValue, SpanKind, SpanStatus},
    },
};

const HAS_PARENT: u8 = 1;
const CLIENT: u8 = 2;
const ERROR: u8 = 4;
const TAG_STR: u8 = 0;
const TAG_INT: u8 = 1;

/// Why a stored record does not read back: the frame holding it is damaged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("span record is damaged at byte {0}")]
pub struct RecordError(pub usize);

/// Where a record's resource is.
#[derive(Clone, Copy)]
pub enum ResourceAt<'a> {
    /// Its JSON after the attributes (format 2).
    Inline,
    /// Its index after the attributes, into this frame's table: a varint-length-prefixed JSON
    /// object each (format 3).
    Table(&'a [u8]),
}

/// Appends `span` in the binary form to `out`, its resource as index `resource` of the frame's
/// table.
pub fn encode(out: &mut Vec<u8>, span: &SpanData, resource: usize) {
    out.extend_from_slice(&span.span_id);
    out.extend_from_slice(&span.parent_span_id.unwrap_or_default());
    let mut flags = 0;
    if span.parent_span_id.is_some() {
        flags |= HAS_PARENT;
    }
    if span.kind == SpanKind::Client {
        flags |= CLIENT;
    }
    if matches!(span.status, SpanStatus::Error(_)) {
        flags |= ERROR;
    }
    out.push(flags);
    out.extend_from_slice(&span.start_unix_nano.to_le_bytes());
    out.extend_from_slice(&span.end_unix_nano.to_le_bytes());
    put_bytes(out, span.name.as_bytes());
    if let SpanStatus::Error(message) = &span.status {
        put_bytes(out, message.as_bytes());
    }
    put_len(out, span.links.len());
    for link in &span.links {
        out.extend_from_slice(&link.trace_id);
        out.extend_from_slice(&link.span_id);
        put_bytes(out, link.reason.as_bytes());
    }
    put_len(out, span.attributes.len());
    for kv in &span.attributes {
        put_bytes(out, kv.key.as_bytes());
        match &kv.value {
            AttrValue::Str(value) => put_str_value(out, value),
            AttrValue::Shared(value) => put_str_value(out, value),
            AttrValue::Int(value) => {
                out.push(TAG_INT);
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
    }
    put_len(out, resource);
}

/// The JSON object of `resource`, as the frame's table of resources holds it.
pub fn resource_json(resource: &crate::trace::span::Resource) -> &[u8] {
    resource.json(|attributes| {
        let mut json = Vec::new();
        write_attributes(&mut json, attributes);
        json.into_boxed_slice()
    })
}

/// Appends one entry of a frame's table of resources.
pub fn put_resource(out: &mut Vec<u8>, json: &[u8]) {
    put_bytes(out, json);
}

fn put_str_value(out: &mut Vec<u8>, value: &str) {
    out.push(TAG_STR);
    put_bytes(out, value.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    let mut n = len as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Appends the span of `record` (stored with `trace_id`) to `out` as the JSON object
/// `--output jsonl` writes for it, byte for byte.
///
/// # Errors
/// The record is damaged (cut short, a length past its end, a string that is not UTF-8, an
/// unknown tag); `out` may then hold part of an object.
pub fn write_json(
    out: &mut Vec<u8>,
    trace_id: &[u8; 16],
    record: &[u8],
    resources: ResourceAt<'_>,
) -> Result<(), RecordError> {
    let mut r = Reader {
        bytes: record,
        at: 0,
    };
    let span_id = r.take(8)?;
    let parent = r.take(8)?;
    let flags = r.byte()?;
    if flags & !(HAS_PARENT | CLIENT | ERROR) != 0 {
        return Err(RecordError(16));
    }
    let start = r.u64()?;
    let end = r.u64()?;
    out.extend_from_slice(b"{\"trace_id\":");
    write_id(out, trace_id);
    out.extend_from_slice(b",\"span_id\":");
    write_id(out, span_id);
    out.extend_from_slice(b",\"parent_span_id\":");
    if flags & HAS_PARENT == 0 {
        out.extend_from_slice(b"null");
    } else {
        write_id(out, parent);
    }
    let name = r.str()?;
    let message = if flags & ERROR == 0 {
        None
    } else {
        Some(r.str()?)
    };
    out.extend_from_slice(b",\"links\":[");
    for i in 0..r.len()? {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"trace_id\":");
        write_id(out, r.take(16)?);
        out.extend_from_slice(b",\"span_id\":");
        write_id(out, r.take(8)?);
        out.extend_from_slice(b",\"reason\":");
        write_str(out, r.str()?);
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"kind\":\"");
    let kind = if flags & CLIENT == 0 {
        SpanKind::Server
    } else {
        SpanKind::Client
    };
    out.extend_from_slice(kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"name\":");
    write_str(out, name);
    out.extend_from_slice(b",\"start_time_unix_nano\":");
    write_int(out, start);
    out.extend_from_slice(b",\"end_time_unix_nano\":");
    write_int(out, end);
    match message {
        None => out.extend_from_slice(b",\"status\":{\"code\":\"UNSET\"}"),
        Some(message) => {
            out.extend_from_slice(b",\"status\":{\"code\":\"ERROR\",\"message\":");
            write_str(out, message);
            out.push(b'}');
        }
    }
    out.extend_from_slice(b",\"attributes\":{");
    for i in 0..r.len()? {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, r.str()?);
        out.push(b':');
        match r.byte()? {
            TAG_STR => write_str(out, r.str()?),
            TAG_INT => write_int(out, r.u64()?.cast_signed()),
            _ => return Err(RecordError(r.at - 1)),
        }
    }
    out.extend_from_slice(b"},\"resource\":");
    let resource_at = r.at;
    let resource = resource_of(&mut r, resources)?;
    // Written by this agent from the resource's attributes: an object, or the frame is damaged.
    if resource.first() != Some(&b'{') || resource.last() != Some(&b'}') {
        return Err(RecordError(resource_at));
    }
    out.extend_from_slice(resource);
    out.push(b'}');
    if r.at != record.len() {
        return Err(RecordError(r.at));
    }
    Ok(())
}

/// The resource's JSON object at the end of a record: inline, or from the frame's table.
fn resource_of<'a>(r: &mut Reader<'a>, resources: ResourceAt<'a>) -> Result<&'a [u8], RecordError> {
    let ResourceAt::Table(table) = resources else {
        return r.bytes();
    };
    let at = r.at;
    let index = r.len()?;
    let mut t = Reader {
        bytes: table,
        at: 0,
    };
    let damaged = |_| RecordError(at);
    let mut json = t.bytes().map_err(damaged)?;
    for _ in 0..index {
        json = t.bytes().map_err(damaged)?;
    }
    Ok(json)
}

/// Reads a record front to back; every read checks the bounds.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self.at.checked_add(n).ok_or(RecordError(self.at))?;
        let taken = self.bytes.get(self.at..end).ok_or(RecordError(self.at))?;
        self.at = end;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        let mut le = [0u8; 8];
        le.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(le))
    }

    fn len(&mut self) -> Result<usize, RecordError> {
        let start = self.at;
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                // No length can pass the record holding it.
                return usize::try_from(n)
                    .ok()
                    .filter(|&n| n <= self.bytes.len())
                    .ok_or(RecordError(start));
            }
        }
        Err(RecordError(start))
    }

    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let n = self.len()?;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'a str, RecordError> {
        let at = self.at;
        std::str::from_utf8(self.bytes()?).map_err(|_| RecordError(at))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        exporter::json::{span_json as jsonl, with_every_part},
        trace::span::{KeyValue, Resource},
    };

    fn span() -> SpanData {
        SpanData {
            trace_id: [0x4b; 16],
            span_id: [0x00, 0xf0, 1, 2, 3, 4, 5, 0xff],
            parent_span_id: None,
            links: Vec::new(),
            kind: SpanKind::Server,
            name: "GET /score/{id}".to_owned(),
            start_unix_nano: 1_764_000_000_123_456_789,
            end_unix_nano: 1_764_000_000_125_456_789,
            attributes: vec![
                KeyValue::str("http.request.method", "GET"),
                KeyValue::int("http.response.status_code", 200),
                KeyValue::int("sockspan.negative", -42),
                KeyValue::shared("http.route", Arc::from("/score/{id}")),
            ],
            status: SpanStatus::Unset,
            resource: Arc::new(Resource::new(vec![
                KeyValue::str("service.name", "model"),
                KeyValue::int("process.pid", 4242),
            ])),
        }
    }

    /// A frame's table of resources: another process's first, `span`'s second.
    fn table_of(span: &SpanData) -> Vec<u8> {
        let other = Resource::new(vec![KeyValue::str("service.name", "other")]);
        let mut table = Vec::new();
        put_resource(&mut table, resource_json(&other));
        put_resource(&mut table, resource_json(&span.resource));
        table
    }

    fn round_trip(span: &SpanData) -> Vec<u8> {
        let mut record = Vec::new();
        encode(&mut record, span, 1);
        let mut json = Vec::new();
        write_json(
            &mut json,
            &span.trace_id,
            &record,
            ResourceAt::Table(&table_of(span)),
        )
        .expect("reads back");
        json
    }

    #[test]
    fn records_of_format_2_with_the_resource_inline_still_read() {
        let span = span();
        let mut record = Vec::new();
        encode(&mut record, &span, 0);
        // Index 0 is one byte; format 2 had the resource's JSON there.
        record.pop();
        put_bytes(&mut record, resource_json(&span.resource));
        let mut json = Vec::new();
        write_json(&mut json, &span.trace_id, &record, ResourceAt::Inline).expect("reads back");
        assert_eq!(json, jsonl(&span));
    }

    #[test]
    fn reads_back_as_the_jsonl_object_byte_for_byte() {
        let plain = span();
        assert_eq!(round_trip(&plain), jsonl(&plain));
        let mut full = span();
        full.kind = SpanKind::Client;
        with_every_part(
            &mut full,
            "HTTP 503 \"unavailable\"\n",
            ["ambiguous", "inband-disagreed"],
        );
        full.name = "ünïcødé \u{1} ✓".to_owned();
        full.attributes.push(KeyValue::owned(
            "http.request.header.x-long".to_owned(),
            "v".repeat(300),
        ));
        full.attributes.push(KeyValue::int("min", i64::MIN));
        full.attributes.push(KeyValue::int("max", i64::MAX));
        assert_eq!(
            String::from_utf8(round_trip(&full)),
            String::from_utf8(jsonl(&full))
        );
        let mut bare = span();
        bare.attributes.clear();
        assert_eq!(round_trip(&bare), jsonl(&bare));
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let mut full = span();
        full.parent_span_id = Some([9; 8]);
        full.status = SpanStatus::Error("boom".to_owned());
        let mut record = Vec::new();
        encode(&mut record, &full, 1);
        let table = table_of(&full);
        let resources = ResourceAt::Table(&table);
        let mut json = Vec::new();
        for cut in 0..record.len() {
            assert!(
                write_json(&mut json, &full.trace_id, &record[..cut], resources).is_err(),
                "cut at {cut}"
            );
        }
        // An index past the table, and a table cut short.
        let mut past = record.clone();
        *past.last_mut().expect("index") = 2;
        assert!(write_json(&mut json, &full.trace_id, &past, resources).is_err());
        for cut in 0..table.len() {
            json.clear();
            let cut_table = ResourceAt::Table(&table[..cut]);
            assert!(write_json(&mut json, &full.trace_id, &record, cut_table).is_err());
        }
        for at in 0..record.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = record.clone();
                bad[at] ^= flip;
                json.clear();
                // An error or some object, never a panic (a reader parses the object and skips
                // the span if it does not parse).
                let _ = write_json(&mut json, &full.trace_id, &bad, resources);
            }
        }
        let mut long = record.clone();
        long.push(0);
        assert!(
            write_json(&mut json, &full.trace_id, &long, resources).is_err(),
            "trailing bytes"
        );
    }
}
