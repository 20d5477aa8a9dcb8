//! HTTP/2 (RFC 9113) and gRPC on one connection: frames both directions, decodes every header
//! block in order through a per-direction HPACK table, and reports each stream as one exchange.
//!
//! A connection is recognised by the client preface, or, when the agent attached after it
//! opened, by a plausible frame at the start of a syscall's bytes; the latter is confirmed by the
//! first header block that decodes to pseudo-headers, and given up if the framing fails first.
//! Requests are keyed by stream id, which both ends of a connection share, so the two ends'
//! spans pair by stream, whatever order the frames of concurrent streams came in.

pub mod frame;
pub mod grpc;
pub mod hpack;
pub mod summary;

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use frame::{Frame, FrameSink, Framer, InProgress, PREFACE, flag, kind};
use hpack::{Decoder, Field};
use summary::{Ending, Http2Summary, RequestFacts, ResponseFacts};

use super::{
    Answered, Chunk, ConnectionParser, Detected, Exchange, ProtoEvent, Side, Stamp,
    budget::BudgetedBytes, http1::record, summary::ProtocolSummary,
};
use crate::trace::{
    propagation::{self, TraceHeaders},
    span::KeyValue,
};

/// Streams tracked at once per connection; more are not reported (counted).
const MAX_STREAMS: usize = 1024;
/// Largest header block assembled from HEADERS and CONTINUATION frames.
const MAX_BLOCK: usize = 64 * 1024;

/// A connection is HTTP/2 when its request side starts with the client preface, or, attached
/// mid-connection with a known role, when a syscall's bytes start with a plausible frame.
pub fn detect(chunk: &Chunk<'_>) -> Option<Detected> {
    let payload = chunk.payload;
    let preface = payload.len() >= 4 && PREFACE.starts_with(&payload[..payload.len().min(24)]);
    if preface && chunk.request_side() {
        return Some(Detected {
            server: chunk.server().unwrap_or(!chunk.egress),
            parser: Box::new(Http2Connection::from_start()),
        });
    }
    let server = chunk.server()?;
    frame::starts_with_frame(payload, chunk.total).then(|| Detected {
        server,
        parser: Box::new(Http2Connection::midstream()),
    })
}

/// The HTTP/2 stage's self-metrics over all connections, for the agent's final log line.
#[derive(Debug, Default)]
pub struct Totals {
    /// Header fields that referred to HPACK entries the agent never saw (reported unknown).
    pub unknown_fields: AtomicU64,
    /// Header blocks HPACK could not decode (the table was then forgotten).
    pub malformed_blocks: AtomicU64,
    /// Header blocks lost: bytes not captured, too long, or no room in the budget.
    pub blocks_lost: AtomicU64,
    /// Streams not tracked because `MAX_STREAMS` were open on their connection.
    pub streams_dropped: AtomicU64,
    /// Responses to streams whose request the agent never saw (opened before it attached).
    pub unseen_streams: AtomicU64,
}

/// Adds one to a counter of [`TOTALS`].
fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Totals {
    /// `(name, value)` pairs for the final log line.
    pub fn fields(&self) -> [(&'static str, u64); 5] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("hpack_unknown_fields", get(&self.unknown_fields)),
            ("hpack_malformed_blocks", get(&self.malformed_blocks)),
            ("http2_blocks_lost", get(&self.blocks_lost)),
            ("http2_streams_dropped", get(&self.streams_dropped)),
            ("http2_unseen_streams", get(&self.unseen_streams)),
        ]
    }
}

/// The agent's HTTP/2 totals.
pub static TOTALS: Totals = Totals {
    unknown_fields: AtomicU64::new(0),
    malformed_blocks: AtomicU64::new(0),
    blocks_lost: AtomicU64::new(0),
    streams_dropped: AtomicU64::new(0),
    unseen_streams: AtomicU64::new(0),
};

/// Self-metrics of one connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Http2Stats {
    pub exchanges: u64,
    /// Response headers for streams whose request was not seen (opened before the attach).
    pub unseen_streams: u64,
    /// Streams not tracked because `MAX_STREAMS` were open.
    pub streams_dropped: u64,
    /// Header blocks lost (bytes not captured, or too long) or malformed.
    pub blocks_lost: u64,
}

/// One stream's exchange in progress.
#[derive(Debug)]
struct Stream {
    start: Stamp,
    /// The request's last frame so far, and whether it ended the request.
    request_last: Stamp,
    request_ended: bool,
    response_start: Option<Stamp>,
    /// The response's first header block was read (later ones are trailers).
    response_headers: bool,
    request: RequestFacts,
    response: ResponseFacts,
}

impl Stream {
    /// Notes where the response started, if it had not yet. A frame whose header began in a
    /// read before the request was seen (possible only for bytes that are not what they claim)
    /// still never starts the response before its request.
    fn first_response_byte(&mut self, at: Stamp) {
        if self.response_start.is_none() {
            self.response_start = Some(if at.ts < self.start.ts {
                self.start
            } else {
                at
            });
        }
    }
}

/// A header block being assembled from `HEADERS` (or `PUSH_PROMISE`) and `CONTINUATION` frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    /// A server push's promise: decoded for the table's sake, reported nowhere.
    promise: bool,
    start: Stamp,
    /// Part of the block was not captured (or was too long, or found no room in the budget):
    /// it cannot be decoded.
    lost: bool,
    bytes: BudgetedBytes,
}

/// One direction: its framing, its HPACK table, and the header block being assembled.
#[derive(Debug)]
struct Direction {
    framer: Framer,
    hpack: Decoder,
    block: Option<Block>,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Both directions of one HTTP/2 connection.
#[derive(Debug)]
pub struct Http2Connection {
    request: Direction,
    response: Direction,
    streams: FastMap<u32, Stream>,
    /// The highest client stream id opened: stream ids only grow (RFC 9113 §5.1.1), so a
    /// header block on a lower id that is not open is never a new request.
    highest_stream: u32,
    /// Known to be HTTP/2: the preface was seen, or a header block decoded to pseudo-headers.
    confirmed: bool,
    failed: bool,
    /// The agent saw the connection open and this parser took it from its first chunk: the
    /// framing found at either direction's first byte followed nothing unseen.
    seen_from_start: bool,
    /// The streams the last response-side syscall carried frames of.
    answered: Answered,
    pub stats: Http2Stats,
}

impl Http2Connection {
    /// A connection seen from its first byte: the request side starts with the preface.
    #[must_use]
    pub fn from_start() -> Self {
        Self::with(
            Direction {
                framer: Framer::after_preface(),
                hpack: Decoder::new(),
                block: None,
            },
            Direction {
                framer: Framer::at_frame(),
                hpack: Decoder::new(),
                block: None,
            },
            true,
        )
    }

    /// A connection first seen in the middle: both directions look for a frame at the start of
    /// a syscall's bytes, and their tables start unknown.
    #[must_use]
    pub fn midstream() -> Self {
        let lost = || Direction {
            framer: Framer::lost(),
            hpack: Decoder::midstream(),
            block: None,
        };
        Self::with(lost(), lost(), false)
    }

    fn with(request: Direction, response: Direction, confirmed: bool) -> Self {
        Self {
            request,
            response,
            streams: FastMap::default(),
            highest_stream: 0,
            confirmed,
            failed: false,
            seen_from_start: false,
            answered: Answered::default(),
            stats: Http2Stats::default(),
        }
    }
}

/// The frame handler of one direction, over the connection's shared state.
struct Handler<'a> {
    side: Side,
    hpack: &'a mut Decoder,
    block: &'a mut Option<Block>,
    streams: &'a mut FastMap<u32, Stream>,
    highest_stream: &'a mut u32,
    confirmed: &'a mut bool,
    failed: &'a mut bool,
    /// Streams of the frames this syscall carried (response side).
    answered: &'a mut Answered,
    stats: &'a mut Http2Stats,
    out: &'a mut Vec<ProtoEvent>,
}

impl FrameSink for Handler<'_> {
    fn frame(&mut self, frame: Frame<'_>) {
        let header = frame.header;
        if self.side == Side::Response && carries_stream(header) {
            self.answered.add(u64::from(header.stream));
        }
        match header.kind {
            kind::HEADERS | kind::PUSH_PROMISE => {
                if self.block.is_some() {
                    // A block must be finished by CONTINUATION frames before anything else.
                    self.block_lost();
                }
                let promise = header.kind == kind::PUSH_PROMISE;
                let fragment = frame
                    .payload
                    .and_then(|p| fragment(p, header.flags, promise));
                let mut bytes = BudgetedBytes::default();
                let kept = fragment.is_some_and(|f| bytes.extend(f));
                *self.block = Some(Block {
                    stream: header.stream,
                    end_stream: !promise && header.flags & flag::END_STREAM != 0,
                    promise,
                    start: frame.start,
                    lost: !kept,
                    bytes,
                });
                if header.flags & flag::END_HEADERS != 0 {
                    self.finish_block(frame.end);
                }
            }
            kind::CONTINUATION => {
                let Some(block) = self.block.as_mut().filter(|b| b.stream == header.stream) else {
                    // A continuation of a block not seen: whatever it inserted is unknowable.
                    self.block_lost();
                    return;
                };
                match frame.payload {
                    Some(p) if block.bytes.len() + p.len() <= MAX_BLOCK && !block.lost => {
                        block.lost = !block.bytes.extend(p);
                    }
                    _ => block.lost = true,
                }
                if header.flags & flag::END_HEADERS != 0 {
                    self.finish_block(frame.end);
                }
            }
            kind::DATA => self.data(header.stream, header.flags, frame.start, frame.end),
            kind::RST_STREAM => {
                let code = frame
                    .payload
                    .and_then(|p| p.first_chunk::<4>())
                    .map_or(0, |b| u32::from_be_bytes(*b));
                self.complete(header.stream, Ending::Reset(code), frame.end);
            }
            kind::GOAWAY if self.side == Side::Response => {
                if let Some(last) = frame.payload.and_then(|p| p.first_chunk::<4>()) {
                    let last = u32::from_be_bytes(*last) & 0x7fff_ffff;
                    let refused: Vec<u32> = self
                        .streams
                        .iter()
                        .filter(|(id, s)| **id > last && s.response_start.is_none())
                        .map(|(id, _)| *id)
                        .collect();
                    for id in refused {
                        self.complete(id, Ending::Refused, frame.end);
                    }
                }
            }
            // SETTINGS need nothing here: a peer's SETTINGS_HEADER_TABLE_SIZE only caps the size
            // the other end's encoder may choose, and the encoder announces every change of its
            // table's size in a header block (RFC 7541 §4.2, §6.3), which HPACK decodes.
            _ => {}
        }
    }

    fn gap(&mut self) {
        // Frames were lost: a header block among them would have changed the table.
        *self.block = None;
        self.hpack.gap();
        if !*self.confirmed {
            *self.failed = true;
        }
    }
}

/// Whether a frame is part of one stream's request or response (not flow control or the
/// connection's: `WINDOW_UPDATE`, `PRIORITY`, `SETTINGS`, `PING`, `GOAWAY`).
fn carries_stream(header: frame::FrameHeader) -> bool {
    header.stream != 0
        && matches!(
            header.kind,
            kind::HEADERS | kind::CONTINUATION | kind::DATA | kind::RST_STREAM | kind::PUSH_PROMISE
        )
}

/// The header block fragment of a `HEADERS` or `PUSH_PROMISE` payload: padding, priority and the
/// promised stream id taken off. `None` when the payload is malformed.
fn fragment(payload: &[u8], flags: u8, promise: bool) -> Option<&[u8]> {
    let mut p = payload;
    if flags & flag::PADDED != 0 {
        let (&pad, rest) = p.split_first()?;
        p = rest.get(..rest.len().checked_sub(usize::from(pad))?)?;
    }
    if promise {
        p = p.get(4..)?;
    } else if flags & flag::PRIORITY != 0 {
        p = p.get(5..)?;
    }
    Some(p)
}

impl Handler<'_> {
    fn block_lost(&mut self) {
        *self.block = None;
        self.stats.blocks_lost += 1;
        bump(&TOTALS.blocks_lost);
        self.hpack.gap();
    }

    /// A header block is complete: decode it (always, for the table's sake) and act on it.
    fn finish_block(&mut self, end: Stamp) {
        let Some(block) = self.block.take() else {
            return;
        };
        if block.lost {
            self.stats.blocks_lost += 1;
            bump(&TOTALS.blocks_lost);
            self.hpack.gap();
        }
        if block.promise {
            if !block.lost {
                let _ = self.hpack.decode(block.bytes.as_slice(), |_| {});
            }
            return;
        }
        match self.side {
            Side::Request => self.request_block(&block, end),
            Side::Response => self.response_block(&block, end),
        }
    }

    /// Decodes a request or response block through this direction's table, handing each known
    /// field to `known`; a pseudo-header confirms the connection. Returns the fields that could
    /// not be resolved (a lost or malformed block counts as one), or `None` when the block was
    /// malformed on a connection not confirmed yet, which then fails.
    fn decode_block(&mut self, block: &Block, mut known: impl FnMut(&[u8], &[u8])) -> Option<u32> {
        if block.lost {
            return Some(1);
        }
        let mut unknown = 0;
        let mut pseudo = false;
        let decoded = self
            .hpack
            .decode(block.bytes.as_slice(), |field| match field {
                Field::Known { name, value } => {
                    pseudo |= name.first() == Some(&b':');
                    known(name, value);
                }
                Field::Unknown => unknown += 1,
            });
        if decoded.is_err() {
            self.stats.blocks_lost += 1;
            bump(&TOTALS.blocks_lost);
            unknown += 1;
            if !*self.confirmed {
                *self.failed = true;
                return None;
            }
        }
        *self.confirmed |= pseudo;
        Some(unknown)
    }

    fn request_block(&mut self, block: &Block, end: Stamp) {
        let id = block.stream;
        if let Some(stream) = self.streams.get_mut(&id) {
            // Trailers of the request.
            if !block.lost {
                let _ = self.hpack.decode(block.bytes.as_slice(), |_| {});
            }
            stream.request_last = end;
            stream.request_ended |= block.end_stream;
            return;
        }
        let mut facts = RequestFacts::default();
        let mut trace = None;
        let Some(unknown) = self.decode_block(block, |name, value| {
            request_field(&mut facts, &mut trace, name, value);
        }) else {
            return;
        };
        facts.unknown_fields = unknown;
        // Client streams are odd and only grow; anything else is not a new request.
        if id.is_multiple_of(2) || id <= *self.highest_stream {
            return;
        }
        *self.highest_stream = id;
        if self.streams.len() >= MAX_STREAMS {
            self.stats.streams_dropped += 1;
            bump(&TOTALS.streams_dropped);
            // A stream begun and not followed.
            self.answered.unplaceable();
            return;
        }
        let forward = match (&facts.method, &facts.path) {
            (Some(method), Some(path)) => super::forward_key(method, path),
            _ => 0,
        };
        self.out.push(ProtoEvent::Request {
            key: u64::from(id),
            trace,
            start: block.start,
            forward,
        });
        self.streams.insert(
            id,
            Stream {
                start: block.start,
                request_last: end,
                request_ended: block.end_stream,
                response_start: None,
                response_headers: false,
                request: facts,
                response: ResponseFacts::default(),
            },
        );
    }

    fn response_block(&mut self, block: &Block, end: Stamp) {
        let id = block.stream;
        let mut facts = ResponseFacts::default();
        let Some(unknown) =
            self.decode_block(block, |name, value| response_field(&mut facts, name, value))
        else {
            return;
        };
        facts.unknown_fields = unknown;
        let Some(stream) = self.streams.get_mut(&id) else {
            if facts.status.is_some() {
                self.stats.unseen_streams += 1;
                bump(&TOTALS.unseen_streams);
            }
            return;
        };
        let interim = facts.status.is_some_and(|s| (100..200).contains(&s));
        if stream.response_headers {
            // Trailers: gRPC's status lives here.
            stream.response.trailers = true;
            if facts.grpc_status.is_some() {
                stream.response.grpc_status = facts.grpc_status;
            }
            stream.response.unknown_fields += facts.unknown_fields;
        } else {
            stream.first_response_byte(block.start);
            if !interim {
                stream.response_headers = true;
                let unknown = stream.response.unknown_fields + facts.unknown_fields;
                stream.response = facts;
                stream.response.unknown_fields = unknown;
            }
        }
        if block.end_stream {
            self.complete(id, Ending::Complete, end);
        }
    }

    fn data(&mut self, id: u32, flags: u8, start: Stamp, end: Stamp) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let end_stream = flags & flag::END_STREAM != 0;
        match self.side {
            Side::Request => {
                stream.request_last = end;
                stream.request_ended |= end_stream;
            }
            Side::Response => {
                stream.first_response_byte(start);
                if end_stream {
                    self.complete(id, Ending::Complete, end);
                }
            }
        }
    }

    fn complete(&mut self, id: u32, ending: Ending, end: Stamp) {
        if let Some(stream) = self.streams.remove(&id) {
            self.stats.exchanges += 1;
            self.out
                .push(ProtoEvent::Exchange(exchange(id, stream, ending, end)));
        }
    }
}

fn exchange(id: u32, stream: Stream, ending: Ending, end: Stamp) -> Exchange {
    Exchange {
        key: u64::from(id),
        request_start: stream.start,
        request_end: stream.request_last,
        response_start: stream.response_start,
        end,
        summary: ProtocolSummary::Http2(Http2Summary {
            request: stream.request,
            response: stream.response,
            ending,
        }),
    }
}

/// Keeps what a span needs of one request header field; everything else (credentials
/// included) is dropped here, unless the operator allowlisted its name.
fn request_field(
    facts: &mut RequestFacts,
    trace: &mut Option<Box<TraceHeaders>>,
    name: &[u8],
    value: &[u8],
) {
    match name {
        b":method" => facts.method = Some(method(value)),
        b":path" => facts.path = Some(String::from_utf8_lossy(value).into()),
        b":authority" => facts.authority = Some(Arc::from(String::from_utf8_lossy(value))),
        b":scheme" => {
            facts.scheme = match value {
                b"https" => Some("https"),
                b"http" => Some("http"),
                _ => None,
            }
        }
        b"content-type" => facts.grpc = grpc::is_grpc_content_type(value),
        b"user-agent" => facts.user_agent = Some(Arc::from(String::from_utf8_lossy(value))),
        _ => {
            let Ok(name) = std::str::from_utf8(name) else {
                return;
            };
            if let Some(slot) = propagation::slot(trace, name) {
                *slot = Some(String::from_utf8_lossy(value).into_owned());
            }
            if record::header_recorded(name) {
                facts.recorded.push(KeyValue::owned(
                    format!("http.request.header.{name}"),
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
        }
    }
}

fn response_field(facts: &mut ResponseFacts, name: &[u8], value: &[u8]) {
    match name {
        b":status" => {
            facts.status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
        }
        b"content-type" => facts.grpc = grpc::is_grpc_content_type(value),
        b"grpc-status" => facts.grpc_status = grpc::parse_status(value),
        _ => {}
    }
}

/// Known methods as static strings (no allocation per request).
fn method(value: &[u8]) -> Cow<'static, str> {
    super::http1::head::KNOWN_METHODS
        .iter()
        .find(|m| m.as_bytes() == value)
        .map_or_else(
            || Cow::Owned(String::from_utf8_lossy(value).into_owned()),
            |m| Cow::Borrowed(*m),
        )
}

impl Http2Connection {
    /// The framer of `side` and a handler over the rest, borrowed together.
    fn split<'a>(
        &'a mut self,
        side: Side,
        out: &'a mut Vec<ProtoEvent>,
    ) -> (&'a mut Framer, Handler<'a>) {
        let direction = match side {
            Side::Request => &mut self.request,
            Side::Response => &mut self.response,
        };
        (
            &mut direction.framer,
            Handler {
                side,
                hpack: &mut direction.hpack,
                block: &mut direction.block,
                streams: &mut self.streams,
                highest_stream: &mut self.highest_stream,
                confirmed: &mut self.confirmed,
                failed: &mut self.failed,
                answered: &mut self.answered,
                stats: &mut self.stats,
                out,
            },
        )
    }
}

impl ConnectionParser for Http2Connection {
    fn feed(
        &mut self,
        side: Side,
        data: &[u8],
        total: u64,
        ts: u64,
        tid: u32,
        out: &mut Vec<ProtoEvent>,
    ) {
        if self.failed {
            return;
        }
        self.answered = Answered::default();
        let seen_from_start = self.seen_from_start;
        let (framer, mut handler) = self.split(side, out);
        let (desyncs, resyncs) = (framer.stats.desyncs, framer.stats.resyncs);
        let first_byte = framer.offset() == 0;
        framer.feed(data, total, ts, tid, &mut handler);
        // A connection joined midway looks for its framing at a syscall's start. Found at the
        // first byte of a connection seen open (a server that wrote its SETTINGS before it
        // read the client's preface), nothing came before it.
        // (The client's side must begin with the preface, else something came before it.)
        let starts_clean = seen_from_start
            && first_byte
            && (side == Side::Response
                || data.starts_with(&PREFACE[..PREFACE.len().min(data.len())]));
        let resynced = framer.stats.resyncs != resyncs && !starts_clean;
        if side == Side::Response {
            // The syscall ended inside a frame: its bytes are that frame's too. Lost, or found
            // again at this syscall (a payload can pass for a frame header), or mid-header:
            // anyone's.
            let lost = framer.is_lost() || framer.stats.desyncs != desyncs || resynced;
            match framer.in_progress() {
                _ if lost => self.answered.unplaceable(),
                InProgress::Frame(header) if carries_stream(header) => {
                    self.answered.add(u64::from(header.stream));
                }
                InProgress::Header => self.answered.unplaceable(),
                InProgress::Frame(_) | InProgress::Boundary => {}
            }
        } else if framer.is_lost() || framer.stats.desyncs != desyncs || resynced {
            // A request's bytes lost or found again: a stream may have begun unseen.
            self.answered.unplaceable();
        }
    }

    fn at_connection_start(&mut self) {
        self.seen_from_start = true;
    }

    fn close(&mut self, at: Stamp, out: &mut Vec<ProtoEvent>) {
        let at = Stamp {
            offset: self.response.framer.offset(),
            ..at
        };
        let mut open: Vec<(u32, Stream)> = self.streams.drain().collect();
        open.sort_unstable_by_key(|(id, _)| *id);
        for (id, stream) in open {
            self.stats.exchanges += 1;
            out.push(ProtoEvent::Exchange(exchange(
                id,
                stream,
                Ending::Closed,
                at,
            )));
        }
    }

    fn failed(&self) -> bool {
        self.failed
    }

    fn thread_causality(&self) -> bool {
        false
    }

    fn keys_are_offsets(&self) -> bool {
        false
    }

    fn lone_client_requests(&self) -> bool {
        true
    }

    fn answered(&self) -> Answered {
        self.answered
    }
}

#[cfg(test)]
mod tests;
