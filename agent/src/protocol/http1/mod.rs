//! HTTP/1.x on one connection: frames both directions and pairs each request with its response
//! (FIFO, so pipelining works) into an [`Exchange`].

pub mod framer;
pub mod head;
pub mod head_cache;
pub mod record;
pub mod summary;

use std::collections::VecDeque;

use framer::{AfterHead, DesyncReason, FrameSink, Framer, looks_like_start};
pub use head::{Head, StartLine};
use summary::Http1Summary;

use super::{Chunk, ConnectionParser, Detected, ProtoEvent};
pub use super::{Side, Stamp};

/// A connection is HTTP/1 when a chunk on its request side starts like a request (a known
/// method and a space). The connection's end comes from its role, or, when that is unknown,
/// from the direction: whoever writes a request is the client.
pub fn detect(chunk: &Chunk<'_>) -> Option<Detected> {
    if !chunk.request_side() || !looks_like_start(Side::Request, chunk.payload) {
        return None;
    }
    Some(Detected {
        server: chunk.server().unwrap_or(!chunk.egress),
        parser: Box::new(HttpConnection::new()),
    })
}

/// What the HTTP/1 parser reports (the protocol layer's events).
pub type HttpEvent = ProtoEvent;

/// A completed HTTP/1 exchange as the protocol layer carries it.
pub type Exchange = super::Exchange;

/// Requests waiting for responses on one connection; more means the stream is not what we think.
const MAX_PENDING_REQUESTS: usize = 64;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HttpStats {
    pub exchanges: u64,
    /// Responses that had no request to pair with (after a desync, or mid-stream start).
    pub unpaired_responses: u64,
    pub desyncs: u64,
    /// Requests dropped because too many were pending.
    pub pending_overflow: u64,
}

#[derive(Debug)]
struct PendingRequest {
    head: Head,
    start: Stamp,
    end: Option<Stamp>,
}

#[derive(Debug)]
struct InFlight {
    request: PendingRequest,
    head: Head,
    start: Stamp,
}

/// Both directions of one HTTP/1.x connection.
#[derive(Debug)]
pub struct HttpConnection {
    requests: Framer,
    responses: Framer,
    pending: VecDeque<PendingRequest>,
    in_flight: Option<InFlight>,
    /// An interim (1xx) response head is being read; its end completes nothing.
    interim: bool,
    tunnel: bool,
    pub stats: HttpStats,
}

struct RequestSink<'a> {
    pending: &'a mut VecDeque<PendingRequest>,
    stats: &'a mut HttpStats,
    out: &'a mut Vec<HttpEvent>,
}

impl FrameSink for RequestSink<'_> {
    fn head(&mut self, head: Head, start: Stamp) -> AfterHead {
        if self.pending.len() >= MAX_PENDING_REQUESTS {
            self.pending.pop_front();
            self.stats.pending_overflow += 1;
        }
        let forward = match &head.start {
            StartLine::Request { method, target } => super::forward_key(method, target),
            StartLine::Response { .. } => 0,
        };
        self.out.push(ProtoEvent::Request {
            key: start.offset,
            trace: head.headers.trace.clone(),
            start,
            forward,
        });
        self.pending.push_back(PendingRequest {
            head,
            start,
            end: None,
        });
        AfterHead::Body
    }

    fn end(&mut self, at: Stamp) {
        if let Some(last) = self.pending.back_mut() {
            last.end = Some(at);
        }
    }

    fn desync(&mut self, _why: DesyncReason) {
        // Requests may have been lost: responses would pair with the wrong ones.
        self.pending.clear();
        self.stats.desyncs += 1;
    }
}

struct ResponseSink<'a> {
    pending: &'a mut VecDeque<PendingRequest>,
    in_flight: &'a mut Option<InFlight>,
    interim: &'a mut bool,
    tunnel: &'a mut bool,
    stats: &'a mut HttpStats,
    out: &'a mut Vec<HttpEvent>,
}

impl ResponseSink<'_> {
    fn complete(&mut self, at: Stamp) {
        if let Some(InFlight {
            request,
            head,
            start,
        }) = self.in_flight.take()
        {
            self.stats.exchanges += 1;
            self.out.push(ProtoEvent::Exchange(Exchange {
                key: request.start.offset,
                request_end: request.end.unwrap_or(request.start),
                request_start: request.start,
                response_start: Some(start),
                end: at,
                summary: Http1Summary::new(request.head, Some(&head)).into(),
            }));
        }
    }
}

impl FrameSink for ResponseSink<'_> {
    fn head(&mut self, head: Head, start: Stamp) -> AfterHead {
        let status = head.status().unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            *self.interim = true;
            return AfterHead::NoBody;
        }
        *self.interim = false;
        let Some(request) = self.pending.pop_front() else {
            self.stats.unpaired_responses += 1;
            return AfterHead::Body;
        };
        let method = request.head.method().unwrap_or_default();
        let after = if status == 101 || (method == "CONNECT" && (200..300).contains(&status)) {
            AfterHead::Tunnel
        } else if method == "HEAD" || status == 204 || status == 304 {
            AfterHead::NoBody
        } else {
            AfterHead::Body
        };
        *self.in_flight = Some(InFlight {
            request,
            head,
            start,
        });
        if after == AfterHead::Tunnel {
            *self.tunnel = true;
            self.complete(start);
        }
        after
    }

    fn end(&mut self, at: Stamp) {
        if std::mem::take(self.interim) {
            return;
        }
        self.complete(at);
    }

    fn desync(&mut self, _why: DesyncReason) {
        *self.in_flight = None;
        *self.interim = false;
        self.stats.desyncs += 1;
    }
}

impl HttpConnection {
    #[must_use]
    pub fn new() -> Self {
        Self {
            requests: Framer::new(Side::Request),
            responses: Framer::new(Side::Response),
            pending: VecDeque::new(),
            in_flight: None,
            interim: false,
            tunnel: false,
            stats: HttpStats::default(),
        }
    }

    /// True once the connection switched protocols; nothing more is parsed.
    #[cfg(test)]
    fn is_tunnel(&self) -> bool {
        self.tunnel
    }

    /// The response framer and a sink over the pairing state, borrowed together.
    fn response_side<'a>(
        &'a mut self,
        out: &'a mut Vec<HttpEvent>,
    ) -> (&'a mut Framer, ResponseSink<'a>) {
        (
            &mut self.responses,
            ResponseSink {
                pending: &mut self.pending,
                in_flight: &mut self.in_flight,
                interim: &mut self.interim,
                tunnel: &mut self.tunnel,
                stats: &mut self.stats,
                out,
            },
        )
    }
}

impl ConnectionParser for HttpConnection {
    /// Feeds one syscall's bytes of one direction; completed exchanges go to `out`.
    fn feed(
        &mut self,
        side: Side,
        data: &[u8],
        total: u64,
        ts: u64,
        tid: u32,
        out: &mut Vec<ProtoEvent>,
    ) {
        if self.tunnel {
            return;
        }
        match side {
            Side::Request => {
                let mut sink = RequestSink {
                    pending: &mut self.pending,
                    stats: &mut self.stats,
                    out,
                };
                self.requests.feed(data, total, ts, tid, &mut sink);
            }
            Side::Response => {
                let (framer, mut sink) = self.response_side(out);
                framer.feed(data, total, ts, tid, &mut sink);
            }
        }
    }

    /// The connection closed: a read-until-close response ends, and requests that never got a
    /// response complete without one. Both end where the response stream ends (`at.offset` is
    /// replaced by that position), so offsets never run backwards within an exchange.
    fn close(&mut self, at: Stamp, out: &mut Vec<ProtoEvent>) {
        let at = Stamp {
            offset: self.responses.offset(),
            ..at
        };
        let (framer, mut sink) = self.response_side(out);
        framer.close(at, &mut sink);
        for request in self.pending.drain(..) {
            self.stats.exchanges += 1;
            out.push(ProtoEvent::Exchange(Exchange {
                key: request.start.offset,
                request_end: request.end.unwrap_or(request.start),
                request_start: request.start,
                response_start: None,
                end: at,
                summary: Http1Summary::new(request.head, None).into(),
            }));
        }
    }

    fn thread_causality(&self) -> bool {
        true
    }
}

impl Default for HttpConnection {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Summary as _;

    fn summary(x: &Exchange) -> String {
        // "GET /a -> 200"
        x.summary.describe()
    }

    /// The exchanges among `events`, after checking each was announced by a request event.
    fn exchanges(events: Vec<HttpEvent>) -> Vec<Exchange> {
        let mut announced = Vec::new();
        let mut done = Vec::new();
        for e in events {
            match e {
                HttpEvent::Request { key, start, .. } => {
                    assert_eq!(key, start.offset);
                    announced.push(key);
                }
                HttpEvent::Exchange(x) => {
                    assert!(announced.contains(&x.key), "{x:?} not announced");
                    assert_eq!(x.key, x.request_start.offset);
                    done.push(x);
                }
            }
        }
        done
    }

    #[test]
    fn pipelined_requests_pair_in_order() {
        let mut conn = HttpConnection::new();
        let mut out = Vec::new();
        let reqs = b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        conn.feed(Side::Request, reqs, reqs.len() as u64, 1, 10, &mut out);
        let resps = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 304 Not Modified\r\n\r\n";
        conn.feed(Side::Response, resps, resps.len() as u64, 2, 10, &mut out);
        let out = exchanges(out);
        let got: Vec<String> = out.iter().map(summary).collect();
        assert_eq!(got, ["GET /a -> 200", "HEAD /b -> 200", "GET /c -> 304"]);
        assert_eq!(out[1].request_start.offset, 19);
    }

    #[test]
    fn continue_then_final_response() {
        let mut conn = HttpConnection::new();
        let mut out = Vec::new();
        let head = b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
        conn.feed(Side::Request, head, head.len() as u64, 1, 1, &mut out);
        conn.feed(
            Side::Response,
            b"HTTP/1.1 100 Continue\r\n\r\n",
            25,
            2,
            1,
            &mut out,
        );
        conn.feed(Side::Request, b"data", 4, 3, 1, &mut out);
        conn.feed(
            Side::Response,
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            43,
            4,
            1,
            &mut out,
        );
        let out = exchanges(out);
        assert_eq!(
            out.iter().map(summary).collect::<Vec<_>>(),
            ["PUT /f -> 201"]
        );
        assert_eq!(out[0].end.ts, 4);
        assert_eq!(out[0].request_end.ts, 3);
    }

    #[test]
    fn upgrade_stops_parsing_and_close_completes_unanswered() {
        let mut conn = HttpConnection::new();
        let mut out = Vec::new();
        let req = b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        conn.feed(Side::Request, req, req.len() as u64, 1, 1, &mut out);
        conn.feed(
            Side::Response,
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            36,
            2,
            1,
            &mut out,
        );
        conn.feed(
            Side::Request,
            b"GET /x HTTP/1.1\r\n\r\n",
            19,
            3,
            1,
            &mut out,
        );
        assert!(conn.is_tunnel());
        let out = exchanges(out);
        assert_eq!(
            out.iter().map(summary).collect::<Vec<_>>(),
            ["GET /ws -> 101"]
        );

        let mut conn = HttpConnection::new();
        let mut out = Vec::new();
        conn.feed(
            Side::Request,
            b"GET /slow HTTP/1.1\r\n\r\n",
            22,
            1,
            1,
            &mut out,
        );
        conn.close(
            Stamp {
                ts: 9,
                tid: 1,
                offset: 0,
            },
            &mut out,
        );
        let out = exchanges(out);
        assert_eq!(
            out.iter().map(summary).collect::<Vec<_>>(),
            ["GET /slow -> none"]
        );
    }

    /// Replays a stream captured by `sockspan events` from real processes (a Python HTTP/1.1
    /// server and a raw-socket client: three pipelined requests in one write, a chunked
    /// response written in pieces, a POST whose body follows its head in a second write), each
    /// payload cut to `capture` bytes as a smaller `--capture-bytes` would.
    fn replay(fixture: &str, server: bool, capture: usize) -> (Vec<Exchange>, HttpStats) {
        let mut conn = HttpConnection::new();
        let mut out = Vec::new();
        for (i, line) in fixture.lines().enumerate() {
            let record: serde_json::Value = serde_json::from_str(line).expect("fixture line");
            let egress = record["direction"] == "egress";
            let bytes: Vec<u8> = record["payload"]
                .as_str()
                .expect("payload")
                .chars()
                .map(|c| u8::try_from(u32::from(c)).expect("latin-1"))
                .collect();
            let total = record["ret"].as_u64().expect("ret");
            let side = if egress == server {
                Side::Response
            } else {
                Side::Request
            };
            let captured = &bytes[..bytes.len().min(capture)];
            conn.feed(side, captured, total, i as u64, 1, &mut out);
        }
        conn.close(
            Stamp {
                ts: u64::MAX,
                tid: 1,
                offset: 0,
            },
            &mut out,
        );
        (exchanges(out), conn.stats)
    }

    const SERVER_SIDE: &str = include_str!("fixtures/python_server_pipelined_chunked.jsonl");
    const CLIENT_SIDE: &str = include_str!("fixtures/python_client_pipelined_chunked.jsonl");
    const EXPECTED: [&str; 4] = [
        "GET /small -> 200",
        "HEAD /small -> 200",
        "GET /chunked -> 200",
        "POST /echo -> 201",
    ];

    #[test]
    fn captured_streams_frame_on_both_ends() {
        for (fixture, server) in [(SERVER_SIDE, true), (CLIENT_SIDE, false)] {
            let (found, stats) = replay(fixture, server, usize::MAX);
            assert_eq!(
                found.iter().map(summary).collect::<Vec<_>>(),
                EXPECTED,
                "server side: {server}"
            );
            assert_eq!(stats.desyncs, 0);
            // The chunked response ends with its last chunk, not with the close.
            assert!(found[2].end.ts < u64::MAX);
        }
    }

    #[test]
    fn captured_streams_survive_a_small_capture_limit() {
        // Heads fit in 160 bytes; the 3 kB POST body does not and is skipped by its length.
        let (found, stats) = replay(SERVER_SIDE, true, 160);
        assert_eq!(found.iter().map(summary).collect::<Vec<_>>(), EXPECTED);
        assert_eq!(stats.desyncs, 0);
        // At 16 bytes heads are cut: framing is lost, counted, and nothing panics.
        let (_, stats) = replay(SERVER_SIDE, true, 16);
        assert!(stats.desyncs > 0);
    }

    /// Property: however a captured stream is cut into reads (random sizes, both directions
    /// interleaved in their original order), it frames to the same exchanges, in the same order,
    /// at the same offsets. 300 seeded random splittings of each end's capture.
    #[test]
    fn any_split_of_a_captured_stream_frames_the_same() {
        fn directions(fixture: &str) -> Vec<(bool, Vec<u8>)> {
            fixture
                .lines()
                .map(|line| {
                    let record: serde_json::Value =
                        serde_json::from_str(line).expect("fixture line");
                    let bytes = record["payload"]
                        .as_str()
                        .expect("payload")
                        .chars()
                        .map(|c| u8::try_from(u32::from(c)).expect("latin-1"))
                        .collect();
                    (record["direction"] == "egress", bytes)
                })
                .collect()
        }
        fn frame(
            writes: &[(bool, Vec<u8>)],
            server: bool,
            seed: &mut u64,
        ) -> Vec<(String, u64, u64)> {
            let mut conn = HttpConnection::new();
            let mut out = Vec::new();
            for (egress, bytes) in writes {
                let side = if *egress == server {
                    Side::Response
                } else {
                    Side::Request
                };
                let mut rest = bytes.as_slice();
                while !rest.is_empty() {
                    // xorshift: cut sizes 1..=64, or the whole rest when seed is 0 (the reference).
                    let cut = if *seed == 0 {
                        rest.len()
                    } else {
                        *seed ^= *seed << 13;
                        *seed ^= *seed >> 7;
                        *seed ^= *seed << 17;
                        1 + (*seed % 64) as usize
                    }
                    .min(rest.len());
                    conn.feed(side, &rest[..cut], cut as u64, 0, 1, &mut out);
                    rest = &rest[cut..];
                }
            }
            exchanges(out)
                .iter()
                .map(|x| (summary(x), x.request_start.offset, x.end.offset))
                .collect()
        }
        for (fixture, server) in [(SERVER_SIDE, true), (CLIENT_SIDE, false)] {
            let writes = directions(fixture);
            let reference = frame(&writes, server, &mut 0);
            assert_eq!(reference.len(), 4);
            for run in 1..=300u64 {
                let mut seed = run.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                assert_eq!(
                    frame(&writes, server, &mut seed),
                    reference,
                    "splitting {run} (server side: {server})"
                );
            }
        }
    }

    #[test]
    fn response_without_request_is_counted_not_paired() {
        let mut conn = HttpConnection::new();
        let mut out = Vec::new();
        conn.feed(
            Side::Response,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            38,
            1,
            1,
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(conn.stats.unpaired_responses, 1);
    }
}
