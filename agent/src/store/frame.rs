//! A frame: up to [`FRAME_SPANS`] consecutive spans of one commit, compressed together, the unit
//! the store writes and reads spans in.
//!
//! Why frames and not a record per span: the spans of a trace are looked up by trace id, and
//! ids are random. Keyed by trace id, nearly every span of a commit landed in its own B-tree leaf
//! and the copy-on-write store rewrote a 4 KiB page for each (27 µs and 2.8 KB written per span,
//! `sockspan bench-pipeline --store`). Frames are keyed by a sequence number, so each commit only
//! appends; and spans of one process share most of their JSON (keys, resource), so LZ4 over a
//! frame shrinks it several times over what the disk must take.
//!
//! Layout of a stored frame: `FORMAT` (u8), span count (u8), latest start of its spans (u64 LE),
//! raw length (u32 LE), then the LZ4 block of the raw bytes. In format 3 (written now) the raw
//! bytes are the records, the frame's table of resources, its table of attribute key lists (see
//! [`super::record`]), the records' length and the resource table's (u32 LE each); in formats 2
//! and 1 (stores written before) the records alone. A raw record: trace id (16 bytes), the
//! record's length (u32 LE), the span: in formats 3 and 2 in the binary form of
//! [`super::record`], in format 1 as JSON, the `--output jsonl` object. All are read.

use std::{borrow::Cow, sync::Arc};

use super::record::{self, Tables};
use crate::trace::{SpanData, span::Resource};

/// Spans in a frame at most: lookups decompress a whole frame to read one span of it.
pub const FRAME_SPANS: usize = 64;
/// A frame is closed once its raw records reach this size, whatever its span count.
pub const FRAME_RAW_BYTES: usize = 64 * 1024;

/// Raw size a frame header may claim: the byte budget plus one span far larger than any the
/// tracer makes. Beyond it the header is damaged, and is not trusted with an allocation.
const MAX_RAW_BYTES: usize = 16 * 1024 * 1024;
/// The format frames are written in; [`INLINE_FORMAT`] and [`JSON_FORMAT`] frames are still read.
const FORMAT: u8 = 3;
const INLINE_FORMAT: u8 = 2;
const JSON_FORMAT: u8 = 1;
const HEADER: usize = 1 + 1 + 8 + 4;
const RECORD_HEADER: usize = 16 + 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("frame format {0} is not one this sockspan reads")]
    Format(u8),
    #[error("frame does not decompress: {0}")]
    Decompress(String),
    #[error("frame header claims {0} raw bytes")]
    Size(usize),
    #[error("frame record at byte {0} runs past the frame's end")]
    Record(usize),
    #[error(transparent)]
    Span(#[from] record::RecordError),
}

/// What retention needs of a frame, read from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    format: u8,
    pub spans: u8,
    pub latest_start_ns: u64,
    raw_len: u32,
}

impl FrameHeader {
    pub fn parse(frame: &[u8]) -> Result<Self, FrameError> {
        let header = frame.get(..HEADER).ok_or(FrameError::Short(frame.len()))?;
        if ![FORMAT, INLINE_FORMAT, JSON_FORMAT].contains(&header[0]) {
            return Err(FrameError::Format(header[0]));
        }
        Ok(Self {
            format: header[0],
            spans: header[1],
            latest_start_ns: u64::from_le_bytes(array(&header[2..10])),
            raw_len: u32::from_le_bytes(array(&header[10..14])),
        })
    }
}

/// The first `N` bytes of `bytes` (which holds at least `N`), for the `from_le_bytes` readers.
pub(super) fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// Builds frames into buffers reused from one frame to the next (on the thread that made the
/// spans: [`super::prepare`]).
#[derive(Default)]
pub struct FrameBuilder {
    raw: Vec<u8>,
    spans: u8,
    latest_start_ns: u64,
    /// The resources of the frame's spans, in table order; held, so that the pointer a span's
    /// resource is matched by cannot be reused by another while the frame is built.
    resources: Vec<Arc<Resource>>,
    /// The table of resources, as stored.
    table: Vec<u8>,
    /// The attribute key lists of the frame's spans, in table order (the keys are static
    /// strings but for user-given ones, so a list of them is a few words, not copies).
    key_lists: Vec<Vec<std::borrow::Cow<'static, str>>>,
    /// The index in `key_lists` the last span used: the next one most likely uses it too.
    last_keys: usize,
    /// The table of key lists, as stored.
    keys: Vec<u8>,
}

/// A frame's spans and tables, built and not compressed yet: what crosses from the thread that
/// builds frames (where the spans were made) to the store's writer (which compresses them).
#[derive(Debug, Default)]
pub struct RawFrame {
    /// The raw bytes as stored once decompressed (records, tables, their lengths).
    pub bytes: Vec<u8>,
    pub spans: u8,
    pub latest_start_ns: u64,
}

/// Compresses frames into a buffer reused from one frame to the next (the writer's side).
#[derive(Default)]
pub struct FrameCompressor {
    encoded: Vec<u8>,
    /// LZ4's match tables, kept (a new one per frame was an allocation): 16-bit entries for
    /// frames under 64 KiB, 32-bit ones above (a frame's last span may take it past).
    lz4_small: lz4_flex::block::CompressTable,
    lz4_large: Option<lz4_flex::block::CompressTable>,
}

impl FrameBuilder {
    /// Appends `span`; returns its index in the frame.
    pub fn push(&mut self, span: &SpanData) -> u8 {
        let resource = self.resource_index(&span.resource);
        let keys = self.keys_index(&span.attributes);
        let at = self.raw.len();
        self.raw.extend_from_slice(&span.trace_id);
        self.raw.extend_from_slice(&[0; 4]);
        record::encode(&mut self.raw, span, resource, keys);
        let len = (self.raw.len() - at - RECORD_HEADER) as u32;
        self.raw[at + 16..at + 20].copy_from_slice(&len.to_le_bytes());
        self.latest_start_ns = self.latest_start_ns.max(span.start_unix_nano);
        let index = self.spans;
        self.spans += 1;
        index
    }

    /// `resource`'s index in the frame's table, added if new. The same process's spans share
    /// one `Arc` (the tracer's resource cache); equal resources behind two are two entries,
    /// which costs bytes, never correctness.
    fn resource_index(&mut self, resource: &Arc<Resource>) -> usize {
        if let Some(i) = self.resources.iter().position(|r| Arc::ptr_eq(r, resource)) {
            return i;
        }
        record::put_resource(&mut self.table, record::resource_json(resource));
        self.resources.push(Arc::clone(resource));
        self.resources.len() - 1
    }

    /// The index of `attributes`' key list in the frame's table, added if new.
    fn keys_index(&mut self, attributes: &[crate::trace::span::KeyValue]) -> usize {
        let same = |list: &Vec<std::borrow::Cow<'static, str>>| {
            list.len() == attributes.len()
                && list.iter().zip(attributes).all(|(key, kv)| {
                    // The same static string, most often; else compared.
                    std::ptr::eq(key.as_ptr(), kv.key.as_ptr()) && key.len() == kv.key.len()
                        || *key == kv.key
                })
        };
        if self.key_lists.get(self.last_keys).is_some_and(same) {
            return self.last_keys;
        }
        let index = if let Some(index) = self.key_lists.iter().position(same) {
            index
        } else {
            record::put_keys(&mut self.keys, attributes);
            self.key_lists
                .push(attributes.iter().map(|kv| kv.key.clone()).collect());
            self.key_lists.len() - 1
        };
        self.last_keys = index;
        index
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// Drops a frame begun by a write that failed.
    pub fn reset(&mut self) {
        self.raw.clear();
        self.spans = 0;
        self.latest_start_ns = 0;
        self.resources.clear();
        self.table.clear();
        self.key_lists.clear();
        self.last_keys = 0;
        self.keys.clear();
    }

    pub fn is_full(&self) -> bool {
        usize::from(self.spans) >= FRAME_SPANS
            || self.raw.len() + self.table.len() + self.keys.len() >= FRAME_RAW_BYTES
    }

    /// Ends the frame: its raw bytes; `spare` (a buffer of an earlier frame, kept for its room)
    /// holds the next frame's records.
    pub fn finish_raw(&mut self, mut spare: Vec<u8>) -> RawFrame {
        spare.clear();
        let mut bytes = std::mem::replace(&mut self.raw, spare);
        let records = bytes.len() as u32;
        bytes.extend_from_slice(&self.table);
        bytes.extend_from_slice(&self.keys);
        bytes.extend_from_slice(&records.to_le_bytes());
        bytes.extend_from_slice(&(self.table.len() as u32).to_le_bytes());
        let frame = RawFrame {
            bytes,
            spans: self.spans,
            latest_start_ns: self.latest_start_ns,
        };
        self.reset();
        frame
    }
}

impl FrameCompressor {
    /// The stored frame of `frame`; the bytes stay valid until the next call.
    pub fn compress(&mut self, frame: &RawFrame) -> &[u8] {
        let raw = &frame.bytes;
        let bound = lz4_flex::block::get_maximum_output_size(raw.len());
        // Grown, never cleared: zeroing the worst case before every frame (and allocating a new
        // match table) was 6 % of the writer's instructions. Only the bytes written are read.
        if self.encoded.len() < HEADER + bound {
            self.encoded.resize(HEADER + bound, 0);
        }
        self.encoded[0] = FORMAT;
        self.encoded[1] = frame.spans;
        self.encoded[2..10].copy_from_slice(&frame.latest_start_ns.to_le_bytes());
        self.encoded[10..14].copy_from_slice(&(raw.len() as u32).to_le_bytes());
        // The output buffer holds the worst case, so compression cannot run out of room.
        let table = if raw.len() < usize::from(u16::MAX) {
            &mut self.lz4_small
        } else {
            self.lz4_large
                .get_or_insert_with(lz4_flex::block::CompressTable::large)
        };
        let written = lz4_flex::block::compress_into_with_table(
            raw,
            &mut self.encoded[HEADER..HEADER + bound],
            table,
        )
        .unwrap_or_else(|_| unreachable_compress());
        &self.encoded[..HEADER + written]
    }
}

/// A frame of `format` holding `raw` (compressed here), as the writer or an earlier sockspan
/// would have stored it: for tests and the fuzz target.
#[cfg(any(test, feature = "fuzz"))]
#[must_use]
pub fn from_raw(format: u8, spans: u8, raw: &[u8]) -> Vec<u8> {
    let mut frame = vec![format, spans];
    frame.extend_from_slice(&0u64.to_le_bytes());
    frame.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    frame.extend_from_slice(&lz4_flex::block::compress(raw));
    frame
}

#[cold]
fn unreachable_compress() -> usize {
    // get_maximum_output_size is LZ4's documented bound; a failure would be a bug in lz4_flex.
    // Writing nothing makes the frame fail to decompress on read, never the agent panic.
    0
}

/// One span of a decoded frame.
pub struct Record<'a> {
    pub trace_id: [u8; 16],
    body: &'a [u8],
    format: u8,
    /// The frame's tables (format 3).
    tables: Tables<'a>,
}

impl<'a> Record<'a> {
    /// The span as the `--output jsonl` object.
    ///
    /// # Errors
    /// The record is damaged.
    pub fn json(&self) -> Result<Cow<'a, [u8]>, FrameError> {
        if self.format == JSON_FORMAT {
            return Ok(Cow::Borrowed(self.body));
        }
        let mut json = Vec::with_capacity(self.body.len() * 2);
        record::write_json(&mut json, &self.trace_id, self.body, self.tables)?;
        Ok(Cow::Owned(json))
    }
}

/// Decompresses `frame` into `raw` (reused by the caller) and returns its records.
pub fn decode<'a>(frame: &[u8], raw: &'a mut Vec<u8>) -> Result<Vec<Record<'a>>, FrameError> {
    let header = FrameHeader::parse(frame)?;
    if header.raw_len as usize > MAX_RAW_BYTES {
        return Err(FrameError::Size(header.raw_len as usize));
    }
    raw.clear();
    raw.resize(header.raw_len as usize, 0);
    let n = lz4_flex::block::decompress_into(&frame[HEADER..], raw)
        .map_err(|e| FrameError::Decompress(e.to_string()))?;
    if n != raw.len() {
        return Err(FrameError::Decompress(format!(
            "{n} bytes, the header says {}",
            raw.len()
        )));
    }
    let mut records = Vec::with_capacity(usize::from(header.spans));
    let mut at = 0;
    let raw: &'a [u8] = raw;
    let (raw, tables) = if header.format == FORMAT {
        // The two lengths last; the tables between the records and them.
        let split = raw.len().checked_sub(8).ok_or(FrameError::Record(0))?;
        let records_len = u32::from_le_bytes(array(&raw[split..split + 4])) as usize;
        let resources_len = u32::from_le_bytes(array(&raw[split + 4..])) as usize;
        let keys_at = records_len
            .checked_add(resources_len)
            .filter(|&at| at <= split)
            .ok_or(FrameError::Record(records_len))?;
        let tables = Tables::Frame {
            resources: &raw[records_len..keys_at],
            keys: &raw[keys_at..split],
        };
        (&raw[..records_len], tables)
    } else {
        (raw, Tables::Inline)
    };
    while at < raw.len() {
        let head = raw
            .get(at..at + RECORD_HEADER)
            .ok_or(FrameError::Record(at))?;
        let len = u32::from_le_bytes(array(&head[16..20])) as usize;
        let body = raw
            .get(at + RECORD_HEADER..at + RECORD_HEADER + len)
            .ok_or(FrameError::Record(at))?;
        records.push(Record {
            trace_id: array(&head[..16]),
            body,
            format: header.format,
            tables,
        });
        at += RECORD_HEADER + len;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::KeyValue;

    /// The stored frame of what `builder` holds, ending it.
    fn finish(builder: &mut FrameBuilder, compressor: &mut FrameCompressor) -> Vec<u8> {
        let raw = builder.finish_raw(Vec::new());
        compressor.compress(&raw).to_vec()
    }

    fn span(trace: u8, start: u64, path: &str) -> SpanData {
        let mut span = super::super::tests::span(trace, trace, "svc", start);
        span.attributes = vec![KeyValue::str("url.path", path.to_string())];
        span
    }

    use crate::exporter::json::span_json as json_of;

    #[test]
    fn frames_round_trip_and_compress() {
        let mut builder = FrameBuilder::default();
        let mut compressor = FrameCompressor::default();
        let spans: Vec<SpanData> = (0..FRAME_SPANS as u8)
            .map(|i| span(i, 1_000 + u64::from(i), "/a/rather/long/path/that/repeats"))
            .collect();
        let mut raw_size = 0;
        for (i, s) in spans.iter().enumerate() {
            assert!(!builder.is_full());
            assert_eq!(usize::from(builder.push(s)), i);
            // What the spans take as JSON (format 1), which the frame beats several times over.
            raw_size += RECORD_HEADER + json_of(s).len();
        }
        assert!(builder.is_full());
        let frame = finish(&mut builder, &mut compressor);
        assert!(builder.is_empty());
        assert!(
            frame.len() * 4 < raw_size,
            "{} bytes for {raw_size} raw",
            frame.len()
        );
        let header = FrameHeader::parse(&frame).expect("header");
        assert_eq!(usize::from(header.spans), FRAME_SPANS);
        assert_eq!(header.latest_start_ns, 1_000 + FRAME_SPANS as u64 - 1);
        let mut raw = Vec::new();
        let records = decode(&frame, &mut raw).expect("decode");
        assert_eq!(records.len(), FRAME_SPANS);
        for (record, s) in records.iter().zip(&spans) {
            assert_eq!(record.trace_id, s.trace_id);
            assert_eq!(record.json().expect("json").as_ref(), json_of(s).as_slice());
        }

        // A smaller frame after it: its buffers still hold the bigger frame's bytes, and none
        // of them may reach the new frame.
        let small = span(7, 5, "/b");
        builder.push(&small);
        let next = finish(&mut builder, &mut compressor);
        assert!(next.len() < frame.len() / 4, "{} bytes", next.len());
        let records = decode(&next, &mut raw).expect("decode");
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].json().expect("json").as_ref(),
            json_of(&small).as_slice()
        );
    }

    #[test]
    fn resources_and_key_lists_are_written_once_per_frame_and_each_frame_has_its_own() {
        let shared = span(1, 1, "/a").resource;
        let mut builder = FrameBuilder::default();
        let mut compressor = FrameCompressor::default();
        for round in 0..3u8 {
            let spans: Vec<SpanData> = (0..10u8)
                .map(|i| {
                    let mut s = span(i, u64::from(i), "/p");
                    // Every other span of the one process; the rest each of its own.
                    if i % 2 == 0 {
                        s.resource = Arc::clone(&shared);
                    }
                    // Three key lists: one static, one longer, one with a key made at run time.
                    match i % 3 {
                        0 => {}
                        1 => s
                            .attributes
                            .push(KeyValue::int("http.response.status_code", 200)),
                        _ => s.attributes.push(KeyValue::owned(
                            format!("http.request.header.x-{round}"),
                            "v".to_owned(),
                        )),
                    }
                    s
                })
                .collect();
            for s in &spans {
                builder.push(s);
            }
            assert_eq!(builder.resources.len(), 6, "round {round}");
            assert_eq!(builder.key_lists.len(), 3, "round {round}");
            let frame = finish(&mut builder, &mut compressor);
            let mut raw = Vec::new();
            let records = decode(&frame, &mut raw).expect("decode");
            for (record, s) in records.iter().zip(&spans) {
                assert_eq!(record.json().expect("json").as_ref(), json_of(s).as_slice());
            }
        }
    }

    /// The fuzz target's seeds (`fuzz/make_seeds.py` writes them after this module's layout):
    /// each a frame of its format that decodes into spans reading back as JSON objects.
    #[test]
    fn the_fuzz_seeds_are_frames_of_each_format() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/store_frame");
        let mut formats = Vec::new();
        for entry in std::fs::read_dir(dir).expect("seeds") {
            let seed = std::fs::read(entry.expect("seed").path()).expect("seed");
            let format = seed[0] % 3 + 1;
            let frame = from_raw(format, seed[1], &seed[2..]);
            let mut raw = Vec::new();
            let records = decode(&frame, &mut raw).expect("decodes");
            assert_eq!(records.len(), usize::from(seed[1]), "format {format}");
            for record in records {
                let json = record.json().expect("reads back");
                let span: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
                assert!(
                    span["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("GET /"))
                );
                if format > 1 {
                    // The keys and the resource from the right entries of the tables.
                    assert_eq!(
                        span["attributes"],
                        serde_json::json!({
                            "http.request.method": "GET",
                            "http.response.status_code": 200
                        }),
                        "format {format}"
                    );
                    assert_eq!(
                        span["resource"],
                        serde_json::json!({"service.name": "svc", "process.pid": 42})
                    );
                    assert_eq!(span["links"][0]["reason"], "ambiguous");
                }
            }
            formats.push(format);
        }
        formats.sort_unstable();
        assert_eq!(formats, [1, 2, 3]);
    }

    #[test]
    fn json_frames_of_earlier_stores_still_read() {
        let spans = [span(1, 10, "/a"), span(2, 20, "/b")];
        let mut raw = Vec::new();
        for s in &spans {
            let json = json_of(s);
            raw.extend_from_slice(&s.trace_id);
            raw.extend_from_slice(&(json.len() as u32).to_le_bytes());
            raw.extend_from_slice(&json);
        }
        let mut frame = vec![JSON_FORMAT, 2];
        frame.extend_from_slice(&20u64.to_le_bytes());
        frame.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        frame.extend_from_slice(&lz4_flex::block::compress(&raw));
        let mut scratch = Vec::new();
        let records = decode(&frame, &mut scratch).expect("decode");
        assert_eq!(records.len(), 2);
        for (record, s) in records.iter().zip(&spans) {
            assert_eq!(record.trace_id, s.trace_id);
            assert_eq!(record.json().expect("json").as_ref(), json_of(s).as_slice());
        }
    }

    #[test]
    fn a_frame_closes_at_its_byte_budget() {
        let mut builder = FrameBuilder::default();
        let long = "x".repeat(FRAME_RAW_BYTES / 4);
        let mut pushed = 0;
        while !builder.is_full() {
            builder.push(&span(1, 1, &long));
            pushed += 1;
        }
        assert!((4..FRAME_SPANS).contains(&pushed), "{pushed}");
    }

    #[test]
    fn damaged_frames_are_errors_not_panics() {
        let mut builder = FrameBuilder::default();
        let mut compressor = FrameCompressor::default();
        builder.push(&span(7, 5, "/p"));
        let frame = finish(&mut builder, &mut compressor);
        let mut raw = Vec::new();
        assert_eq!(
            decode(&frame[..5], &mut raw).err(),
            Some(FrameError::Short(5))
        );
        let mut other = frame.clone();
        other[0] = 9;
        assert_eq!(decode(&other, &mut raw).err(), Some(FrameError::Format(9)));
        // Every truncation and every single-byte change of the compressed part: no panic.
        for cut in HEADER..frame.len() {
            let _ = decode(&frame[..cut], &mut raw);
        }
        for at in HEADER..frame.len() {
            let mut bad = frame.clone();
            bad[at] ^= 0x5a;
            let _ = decode(&bad, &mut raw);
        }
        // A header claiming more raw bytes than the block holds.
        let mut long = frame.clone();
        long[10..14].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert!(decode(&long, &mut raw).is_err());
        long[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&long, &mut raw).err(),
            Some(FrameError::Size(u32::MAX as usize))
        );
    }
}
