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
//! byte, 0 string or 1 integer (i64 LE), and the value), then the resource's JSON object. That
//! is format 2; in format 3 (written now) the frame holds two tables, and a record names its
//! entries: the attributes are the index of their keys' list (a varint) in the frame's table of
//! key lists, then each value (its tag byte and the value) in that list's order, and the resource
//! is its index in the frame's table of resources.
//!
//! Why tables: a span's keys (~300 bytes) and its process's resource (~300) were most of each
//! record, and the spans of one frame share a few key lists and a few processes. Written once
//! per frame, records are a third of the bytes to copy and compress.

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

/// Where a record's attribute keys and resource are.
#[derive(Clone, Copy)]
pub enum Tables<'a> {
    /// In the record (format 2).
    Inline,
    /// In the frame's tables (format 3): `resources` a varint-length-prefixed JSON object each,
    /// `keys` a list each (a varint count, then each key varint-length-prefixed).
    Frame { resources: &'a [u8], keys: &'a [u8] },
}

/// Appends `span` in the binary form to `out`: its resource as index `resource` of the frame's
/// table of resources, its attributes' keys as index `keys` of its table of key lists.
pub fn encode(out: &mut Vec<u8>, span: &SpanData, resource: usize, keys: usize) {
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
    put_len(out, keys);
    for kv in &span.attributes {
        put_value(out, &kv.value);
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

/// Appends one entry of a frame's table of key lists: the keys of `attributes`, in order.
pub fn put_keys(out: &mut Vec<u8>, attributes: &[crate::trace::span::KeyValue]) {
    put_len(out, attributes.len());
    for kv in attributes {
        put_bytes(out, kv.key.as_bytes());
    }
}

/// An attribute's value: its tag byte, then the string or the integer.
fn put_value(out: &mut Vec<u8>, value: &AttrValue) {
    match value {
        AttrValue::Str(value) => put_str_value(out, value),
        AttrValue::Shared(value) => put_str_value(out, value),
        AttrValue::Int(value) => {
            out.push(TAG_INT);
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
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
    tables: Tables<'_>,
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
    write_attributes_of(out, &mut r, tables)?;
    out.extend_from_slice(b"},\"resource\":");
    let resource_at = r.at;
    let resource = match tables {
        Tables::Inline => r.bytes()?,
        Tables::Frame { resources, .. } => {
            let mut t = entry(resources, r.index()?, resource_at, |t| t.bytes().map(drop))?;
            t.bytes().map_err(|_| RecordError(resource_at))?
        }
    };
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

/// Writes a record's attributes, `r` at their start, as the members of a JSON object.
fn write_attributes_of(
    out: &mut Vec<u8>,
    r: &mut Reader<'_>,
    tables: Tables<'_>,
) -> Result<(), RecordError> {
    let keys_at = r.at;
    let mut keys = match tables {
        Tables::Inline => None,
        Tables::Frame { keys, .. } => Some(entry(keys, r.index()?, keys_at, |t| {
            for _ in 0..t.len()? {
                t.bytes()?;
            }
            Ok(())
        })?),
    };
    let count = match &mut keys {
        None => r.len()?,
        Some(list) => list.len().map_err(|_| RecordError(keys_at))?,
    };
    for i in 0..count {
        if i > 0 {
            out.push(b',');
        }
        match &mut keys {
            None => write_str(out, r.str()?),
            Some(list) => write_str(out, list.str().map_err(|_| RecordError(keys_at))?),
        }
        out.push(b':');
        match r.byte()? {
            TAG_STR => write_str(out, r.str()?),
            TAG_INT => write_int(out, r.u64()?.cast_signed()),
            _ => return Err(RecordError(r.at - 1)),
        }
    }
    Ok(())
}

/// A reader at entry `index` of a frame's `table`, whose entries `skip` steps over; a damaged
/// table or an index past its end is damage at `at` in the record.
fn entry<'t>(
    table: &'t [u8],
    index: usize,
    at: usize,
    skip: impl Fn(&mut Reader<'t>) -> Result<(), RecordError>,
) -> Result<Reader<'t>, RecordError> {
    let mut t = Reader {
        bytes: table,
        at: 0,
    };
    for _ in 0..index {
        skip(&mut t).map_err(|_| RecordError(at))?;
    }
    if t.at >= table.len() {
        return Err(RecordError(at));
    }
    Ok(t)
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

    /// A length: no length can pass the record holding it.
    fn len(&mut self) -> Result<usize, RecordError> {
        let start = self.at;
        self.index()
            .ok()
            .filter(|&n| n <= self.bytes.len())
            .ok_or(RecordError(start))
    }

    /// A varint: an index into a frame's table (checked there), or a length.
    fn index(&mut self) -> Result<usize, RecordError> {
        let start = self.at;
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return usize::try_from(n).map_err(|_| RecordError(start));
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
            name: "GET /score/{id}".into(),
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
    fn tables_of(span: &SpanData) -> (Vec<u8>, Vec<u8>) {
        let other = Resource::new(vec![KeyValue::str("service.name", "other")]);
        let mut resources = Vec::new();
        put_resource(&mut resources, resource_json(&other));
        put_resource(&mut resources, resource_json(&span.resource));
        let mut keys = Vec::new();
        put_keys(&mut keys, &[KeyValue::int("other.key", 1)]);
        put_keys(&mut keys, &span.attributes);
        (resources, keys)
    }

    /// `span` in format 3, with the frame's tables ([`tables_of`]).
    fn format_3(span: &SpanData) -> (Vec<u8>, (Vec<u8>, Vec<u8>)) {
        let mut record = Vec::new();
        encode(&mut record, span, 1, 1);
        (record, tables_of(span))
    }

    fn round_trip(span: &SpanData) -> Vec<u8> {
        let (record, (resources, keys)) = format_3(span);
        let mut json = Vec::new();
        let tables = Tables::Frame {
            resources: &resources,
            keys: &keys,
        };
        write_json(&mut json, &span.trace_id, &record, tables).expect("reads back");
        json
    }

    #[test]
    fn records_of_format_2_with_keys_and_resource_inline_still_read() {
        let span = span();
        // Format 2 as written before: the record's head as in 3, then the attributes' count,
        // each key with its value, and the resource's JSON.
        let mut bare = span.clone();
        bare.attributes.clear();
        let mut record = Vec::new();
        encode(&mut record, &bare, 0, 0);
        record.truncate(record.len() - 2);
        put_len(&mut record, span.attributes.len());
        for kv in &span.attributes {
            put_bytes(&mut record, kv.key.as_bytes());
            put_value(&mut record, &kv.value);
        }
        put_bytes(&mut record, resource_json(&span.resource));
        let mut json = Vec::new();
        write_json(&mut json, &span.trace_id, &record, Tables::Inline).expect("reads back");
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
        full.name = "ünïcødé \u{1} ✓".into();
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
        let (record, (resources, keys)) = format_3(&full);
        let tables = Tables::Frame {
            resources: &resources,
            keys: &keys,
        };
        let mut json = Vec::new();
        for cut in 0..record.len() {
            assert!(
                write_json(&mut json, &full.trace_id, &record[..cut], tables).is_err(),
                "cut at {cut}"
            );
        }
        // An index past either table, and either table cut short.
        let mut past = record.clone();
        *past.last_mut().expect("resource index") = 2;
        assert!(write_json(&mut json, &full.trace_id, &past, tables).is_err());
        let mut bare = full.clone();
        bare.attributes.clear();
        let mut no_values = Vec::new();
        encode(&mut no_values, &bare, 1, 2);
        assert!(write_json(&mut json, &full.trace_id, &no_values, tables).is_err());
        for cut in 0..resources.len() {
            json.clear();
            let cut_tables = Tables::Frame {
                resources: &resources[..cut],
                keys: &keys,
            };
            assert!(write_json(&mut json, &full.trace_id, &record, cut_tables).is_err());
        }
        for cut in 0..keys.len() {
            json.clear();
            let cut_tables = Tables::Frame {
                resources: &resources,
                keys: &keys[..cut],
            };
            assert!(write_json(&mut json, &full.trace_id, &record, cut_tables).is_err());
        }
        for at in 0..record.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = record.clone();
                bad[at] ^= flip;
                json.clear();
                // An error or some object, never a panic (a reader parses the object and skips
                // the span if it does not parse).
                let _ = write_json(&mut json, &full.trace_id, &bad, tables);
            }
        }
        let mut long = record.clone();
        long.push(0);
        assert!(
            write_json(&mut json, &full.trace_id, &long, tables).is_err(),
            "trailing bytes"
        );
    }
}
