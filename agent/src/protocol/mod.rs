//! Stage 4 of the pipeline: application protocols over tracked connections.
//!
//! A protocol is one folder here, behind two things: a [`Detect`] function that recognises a
//! connection from the first bytes it carries (either side may speak first), and the
//! [`ConnectionParser`] that detection returns, which frames both directions and pairs requests
//! with responses into [`Exchange`]s. Each exchange carries a [`Summary`] that names its span
//! and gives its attributes and status at export. Adding a protocol is a folder and a line in
//! [`PROTOCOLS`]; conntrack, linking and the exporters do not change.

pub mod budget;
pub mod db;
pub mod dns;
pub mod frames;
pub mod http1;
pub mod http2;
pub mod memcached;
pub mod mysql;
pub mod postgres;
pub mod redis;
#[cfg(test)]
pub mod replay;
pub mod sql;
pub mod summary;
pub mod table;
pub mod url;

use std::{fmt::Debug, net::SocketAddr, sync::Arc};

use agent_common::Role;

use crate::trace::{
    intern::Interner,
    propagation::TraceHeaders,
    span::{KeyValue, SpanStatus},
};

/// Which messages a direction carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

impl Side {
    /// The side a direction of a connection carries: a client writes requests and reads
    /// responses, a server does the opposite.
    #[must_use]
    pub fn of(server: bool, egress: bool) -> Self {
        if egress == server {
            Self::Response
        } else {
            Self::Request
        }
    }
}

/// When and on which thread bytes were seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// Kernel monotonic ns of the syscall.
    pub ts: u64,
    pub tid: u32,
    /// Bytes of this direction before the message's first byte (the stream offset).
    pub offset: u64,
}

/// What a connection's parser reports, in stream order.
#[derive(Debug)]
// Events pass through one reused vector and are moved out at once; boxing the exchange would
// put back the allocation per span that holding its summary inline saves.
#[allow(clippy::large_enum_variant)]
pub enum ProtoEvent {
    /// A request started; its [`Exchange`] follows under the same `key`. Only the trace-context
    /// headers travel with it: that is all linking needs at this point.
    Request {
        /// Names the request on its connection, the same at both ends: the request's offset in
        /// the byte stream (its TCP sequence number where known, see
        /// [`table::ProtocolTable::feed`]), the stream id for HTTP/2.
        key: u64,
        trace: Option<Box<TraceHeaders>>,
        start: Stamp,
        /// What the request asks ([`forward_key`] of method and target), 0 when unknown: a
        /// proxy's forwarded request asks the same as the request it forwards.
        forward: u64,
    },
    /// A request and its response (or what ended it) are complete.
    Exchange(Exchange),
}

/// A request's method and target (path and query as sent) as a number that is never 0: the proxy
/// rule compares a process's outgoing requests with its incoming ones by it, so that neither
/// side's text is held. Seeded the same in every run (it never leaves the process).
#[must_use]
pub fn forward_key(method: &str, target: &str) -> u64 {
    use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
    let mut hasher = foldhash::quality::FixedState::with_seed(0x5ec5_9a9e).build_hasher();
    method.hash(&mut hasher);
    target.hash(&mut hasher);
    hasher.finish().max(1)
}

/// A request and what answered it, as linking and export need it.
#[derive(Debug)]
pub struct Exchange {
    /// As in [`ProtoEvent::Request`].
    pub key: u64,
    /// First request byte. Read by the fuzz targets' ordering checks and the unit tests only;
    /// kept so every parser reports where its requests begin.
    #[cfg_attr(not(any(test, feature = "fuzz")), allow(dead_code))]
    pub request_start: Stamp,
    /// Last request byte.
    pub request_end: Stamp,
    /// First response byte, if a response came.
    pub response_start: Option<Stamp>,
    /// Last response byte (or what ended the exchange without one).
    pub end: Stamp,
    /// The protocol's own facts, expanded into name, attributes and status at export.
    pub summary: summary::ProtocolSummary,
}

/// The span's own facts a summary needs to expand.
pub struct SpanFacts {
    pub server: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl SpanFacts {
    /// `server.address` (the request's own name for the server, `Host` or `:authority` without
    /// its port, else the server's IP), `server.port`, and on SERVER spans `client.address`.
    pub fn address_attributes(
        &self,
        authority: Option<&Arc<str>>,
        strings: &mut Interner,
        attributes: &mut Vec<KeyValue>,
    ) {
        let host = authority.map(|a| strings.host_of(a));
        let server = if self.server { self.local } else { self.remote };
        attributes.push(KeyValue::shared(
            "server.address",
            host.unwrap_or_else(|| strings.ip(server.ip())),
        ));
        attributes.push(KeyValue::int("server.port", i64::from(server.port())));
        if self.server {
            attributes.push(KeyValue::shared(
                "client.address",
                strings.ip(self.remote.ip()),
            ));
        }
    }
}

/// Attributes the linker adds to a span after its protocol's own, at most (transport, peer
/// address and port, parent evidence, thread, TLS, budget, response wait): a summary reserves room
/// for them, so the list is allocated once, not grown.
pub const ATTRIBUTES_ADDED_AT_EXPORT: usize = 8;

/// What one protocol's exchange contributes to its span. Kept compact while the span waits out
/// the link delay (tens of thousands wait at high rates), expanded only at export.
pub trait Summary: Debug {
    /// Span name, the protocol's attributes (OpenTelemetry semantic conventions) and status.
    fn expand(
        self,
        span: &SpanFacts,
        strings: &mut Interner,
    ) -> (Arc<str>, Vec<KeyValue>, SpanStatus);

    /// One line for tests and the fuzz targets (`GET /a -> 200`); never exported.
    #[cfg_attr(not(any(test, feature = "fuzz")), allow(dead_code))]
    fn describe(&self) -> String;
}

/// One connection's parser: both directions, in syscall order.
pub trait ConnectionParser: Debug {
    /// Feeds one syscall's captured bytes (`data`, a prefix of the `total` it moved) of one
    /// direction; requests and completed exchanges go to `out`.
    fn feed(
        &mut self,
        side: Side,
        data: &[u8],
        total: u64,
        ts: u64,
        tid: u32,
        out: &mut Vec<ProtoEvent>,
    );

    /// The connection closed: what is still open completes without a response.
    fn close(&mut self, at: Stamp, out: &mut Vec<ProtoEvent>);

    /// The chunk this parser was recognised from is the first the connection carried in
    /// either direction, and the agent saw the connection open: nothing came before it. Called
    /// once, before that chunk is fed. A parser made for a connection joined midway (its
    /// framing looked for) may then take framing found at a direction's first byte as no
    /// loss.
    fn at_connection_start(&mut self) {}

    /// The bytes turned out not to be this protocol: the connection is given up.
    fn failed(&self) -> bool {
        false
    }

    /// Whether the thread that reads a request on this protocol is the one that serves it (and
    /// writes its downstream requests). True for HTTP/1, where a connection carries one request
    /// at a time; false where requests are multiplexed and read by an I/O thread that hands
    /// them on (HTTP/2 in grpcio, Go, Node.js), so same-thread causality would name a wrong
    /// parent.
    fn thread_causality(&self) -> bool;

    /// Whether request keys are request-stream offsets (every protocol but HTTP/2, whose keys
    /// are stream ids). The table moves such keys onto the TCP sequence numbers where it knows
    /// them, so that the two ends agree however late either began watching the connection.
    fn keys_are_offsets(&self) -> bool {
        true
    }

    /// Whether a CLIENT request may still take same-thread causality when it is the only
    /// request in the syscall that completed it. Multiplexed protocols say yes where the calling
    /// thread usually writes its own request: a write that opens exactly one stream is that
    /// thread's call (measured for grpcio, `tests/tests/causality.rs`), while one that carries
    /// several may be a flush of other callers' streams.
    fn lone_client_requests(&self) -> bool {
        false
    }

    /// The streams the last response-side syscall carried frames of (`HEADERS`,
    /// `CONTINUATION`, `DATA`, `RST_STREAM`), for multiplexed protocols; nothing elsewhere. The worker
    /// rule reads a server's write of one stream alone as the writing thread's answer to it.
    /// After a request-side syscall: only whether its bytes were all placed (unplaceable: a
    /// stream may have begun unseen).
    fn answered(&self) -> Answered {
        Answered::default()
    }
}

/// What one response-side syscall of a multiplexed connection carried
/// ([`ConnectionParser::answered`]): the streams it had frames of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answered {
    /// The streams' request keys, in the order their frames came; `len` of them are set.
    streams: [u64; Answered::MAX],
    len: u8,
    /// Frames of more streams than that, or bytes the framing could not place.
    unplaceable: bool,
}

impl Answered {
    /// Streams named one by one; a write carrying more is unplaceable. grpc-core's I/O
    /// thread flushes the answers of every worker that finished meanwhile in one write: at 10
    /// calls in flight, 5 or more now and then (4 made the write, and 60 s of the process's
    /// windows, unknown).
    pub const MAX: usize = 16;

    /// Adds a frame of `stream` to what the syscall carried.
    pub fn add(&mut self, stream: u64) {
        if self.streams().contains(&stream) {
            return;
        }
        if let Some(slot) = self.streams.get_mut(usize::from(self.len)) {
            *slot = stream;
            self.len += 1;
        } else {
            self.unplaceable = true;
        }
    }

    /// Bytes the framing could not place: any stream's.
    pub fn unplaceable(&mut self) {
        self.unplaceable = true;
    }

    /// The streams named, in order.
    #[must_use]
    pub fn streams(&self) -> &[u64] {
        &self.streams[..usize::from(self.len)]
    }

    /// Whether the syscall carried frames of no stream (connection control only).
    #[must_use]
    pub fn is_nothing(&self) -> bool {
        self.len == 0 && !self.unplaceable
    }

    /// Whether some of its bytes could be any stream's.
    #[must_use]
    pub fn is_unplaceable(&self) -> bool {
        self.unplaceable
    }
}

/// What a syscall on a multiplexed connection tells the worker rule ([`crate::trace::workers`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StreamIo {
    /// Not a multiplexed connection, or nothing the rule uses.
    #[default]
    None,
    /// A read, at either end: the reading thread is one of the process's I/O threads.
    /// `placed`: every byte read was placed in a frame of a known stream or the connection
    /// (else a stream may have begun unseen).
    Read { placed: bool },
    /// A server's write: what it answered.
    Wrote(Answered),
}

/// A data chunk as detection sees it.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub egress: bool,
    /// The connection's role as far as it is known.
    pub role: Role,
    /// The captured prefix.
    pub payload: &'a [u8],
    /// Bytes the syscall moved.
    pub total: u64,
}

impl Chunk<'_> {
    /// Whether the role is known to be server (`Some(true)`), client, or unknown.
    #[must_use]
    pub fn server(&self) -> Option<bool> {
        match self.role {
            Role::Client => Some(false),
            Role::Server => Some(true),
            Role::Unknown => None,
        }
    }

    /// Whether this chunk may carry requests: a client's writes, a server's reads, either when
    /// the role is unknown.
    #[must_use]
    pub fn request_side(&self) -> bool {
        self.server().is_none_or(|s| s != self.egress)
    }
}

/// A recognised connection: which end this process is, and the parser that takes it from the
/// chunk that was recognised (inclusive).
#[derive(Debug)]
pub struct Detected {
    pub server: bool,
    pub parser: Box<dyn ConnectionParser>,
}

/// Recognises a protocol from one chunk, or says it is not (yet) this one.
pub type Detect = fn(&Chunk<'_>) -> Option<Detected>;

/// The protocols sockspan parses, tried in this order on each chunk of a connection whose
/// protocol is not known yet.
pub const PROTOCOLS: &[(&str, Detect)] = &[
    ("http1", http1::detect),
    ("http2", http2::detect),
    ("redis", redis::detect),
    ("memcached", memcached::detect),
    ("postgres", postgres::detect),
    ("mysql", mysql::detect),
    ("dns", dns::detect),
];
