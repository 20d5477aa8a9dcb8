//! What each tracked connection carries: detection while unknown, then its protocol's parser.

use std::collections::{HashMap, VecDeque};

use super::{Chunk, ConnectionParser, PROTOCOLS, ProtoEvent, Side, Stamp, StreamIo};

/// Data chunks on a connection that may pass before it is declared none of ours; the programs
/// give up after as many.
const DETECT_CHUNKS: u32 = agent_common::DETECT_CHUNKS;

/// What a connection carries, as far as sockspan can tell.
#[derive(Debug)]
enum State {
    Detecting {
        misses: u8,
        /// The agent saw the connection open (a syscall told its role), so its first chunk
        /// is the connection's first byte.
        from_start: bool,
    },
    Parsed(Parsed),
    /// None of the protocols: its chunks are ignored.
    Other,
}

#[derive(Debug)]
struct Parsed {
    /// Index into [`PROTOCOLS`].
    protocol: usize,
    server: bool,
    parser: Box<dyn ConnectionParser>,
    /// Where the request direction's offset 0 lies in the TCP stream.
    requests_at: Anchor,
    /// Request-direction bytes fed so far: the parser's offset of the next chunk's first byte.
    request_bytes: u64,
    /// TLS plaintext: where recent request-direction chunks began (the parser's offset) and
    /// the TCP sequence number their ciphertext began at ([`Position::Record`]), newest last.
    records: VecDeque<(u64, u32)>,
    /// Whether any chunk came with a [`Position::Record`]: its request keys are then those
    /// sequence numbers, or marked offsets ([`OFFSET_KEY`]).
    keyed_by_records: bool,
    /// The key each recent request got when it was reported (by its offset), newest last: its
    /// exchange takes the same, whatever was learnt of positions since (the connection may turn
    /// to record keys mid-request, or the request's record be forgotten).
    keyed: VecDeque<(u64, u64)>,
}

/// Where a chunk lies in its TCP stream, as far as the programs know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The TCP sequence number of the chunk's first byte.
    Stream(u32),
    /// TLS plaintext: the TCP sequence number where the ciphertext it came from (a read) or
    /// goes out in (a write) began. Both ends see the same number for a record however late
    /// either began watching, while their plaintext offsets differ.
    Record(u32),
    Unknown,
}

/// Request starts remembered per TLS connection ([`Parsed::records`]): more than the requests
/// an HTTP/1 connection has in flight.
const RECORDS_KEPT: usize = 32;

/// Set on the request key of a TLS request whose chunk had no known record position: a
/// plaintext offset, which can never equal a sequence number (32 bits) of another end.
const OFFSET_KEY: u64 = 1 << 40;

/// The TCP sequence number of a direction's first byte the parser was fed. A parser counts
/// offsets from the first byte it sees; two agents (or one agent's two ends of a connection)
/// that began watching at different bytes (the connection was open before the agent) count
/// differently, while the sequence numbers agree.
#[derive(Debug, Clone, Copy)]
enum Anchor {
    /// No chunk of the direction yet.
    Unset,
    At(u32),
    /// Its first chunk came without a sequence number (not TCP, a TLS library's plaintext):
    /// offsets stay the parser's own.
    Unknown,
}

impl Anchor {
    /// The key of a request whose first byte is at `offset` of the parser's count.
    fn key(self, offset: u64) -> u64 {
        match self {
            // Truncation intended: sequence numbers are 32-bit and wrap.
            #[allow(clippy::cast_possible_truncation)]
            Self::At(seq) => u64::from(seq.wrapping_add(offset as u32)),
            Self::Unset | Self::Unknown => offset,
        }
    }
}

impl Parsed {
    /// Moves the request keys of `events` onto the TCP stream's sequence numbers.
    fn anchor_keys(&mut self, events: &mut [ProtoEvent]) {
        if !self.parser.keys_are_offsets() || matches!(self.requests_at, Anchor::Unset) {
            return;
        }
        for event in events {
            match event {
                ProtoEvent::Request { key, .. } => {
                    let offset = *key;
                    *key = if self.keyed_by_records {
                        self.record_key(offset)
                    } else {
                        self.requests_at.key(offset)
                    };
                    if self.keyed.len() == RECORDS_KEPT {
                        self.keyed.pop_front();
                    }
                    self.keyed.push_back((offset, *key));
                }
                ProtoEvent::Exchange(x) => {
                    let known = self.keyed.iter().rev().find(|(at, _)| *at == x.key);
                    x.key = match known {
                        Some(&(_, key)) => key,
                        None if self.keyed_by_records => self.record_key(x.key),
                        None => self.requests_at.key(x.key),
                    };
                }
            }
        }
    }

    /// The key of a TLS request whose first byte is at `offset` of the parser's count: the
    /// sequence number of the record it began, when a chunk began there.
    fn record_key(&self, offset: u64) -> u64 {
        self.records
            .iter()
            .rev()
            .find(|(at, _)| *at == offset)
            .map_or(offset | OFFSET_KEY, |(_, seq)| u64::from(*seq))
    }

    /// Counts a request-direction chunk of `total` bytes, and where its record began.
    fn note_request_chunk(&mut self, position: Position, total: u64) {
        if let Position::Record(seq) = position {
            self.keyed_by_records = true;
            if self.records.len() == RECORDS_KEPT {
                self.records.pop_front();
            }
            self.records.push_back((self.request_bytes, seq));
        }
        self.request_bytes = self.request_bytes.saturating_add(total);
    }
}

/// Self-metrics of the protocol stage.
#[derive(Debug, Default, Clone)]
pub struct ProtocolStats {
    /// Connections recognised, per entry of [`PROTOCOLS`].
    pub recognised: [u64; PROTOCOLS.len()],
    /// Connections that matched no protocol within the detection window.
    pub other_connections: u64,
    /// Connections a parser gave up on after detection (the bytes were not its protocol).
    pub given_up: u64,
    /// The same per entry of [`PROTOCOLS`]: its detector's mis-detections (or streams its
    /// parser lost beyond recovery, such as TLS after a PostgreSQL `SSLRequest` was accepted).
    pub given_up_by: [u64; PROTOCOLS.len()],
}

impl ProtocolStats {
    /// `(protocol name, connections)` pairs.
    pub fn recognised(&self) -> impl Iterator<Item = (&'static str, u64)> + Clone + '_ {
        PROTOCOLS
            .iter()
            .zip(self.recognised)
            .map(|((name, _), n)| (*name, n))
    }

    /// `(protocol name, connections given up)` pairs.
    pub fn given_up_by(&self) -> impl Iterator<Item = (&'static str, u64)> + Clone + '_ {
        PROTOCOLS
            .iter()
            .zip(self.given_up_by)
            .map(|((name, _), n)| (*name, n))
    }
}

/// What feeding a chunk led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// Nothing parsed (still detecting, or not ours).
    Skipped,
    /// Parsed; `server` is this process's end, `thread_causality` the parser's; `in_order`:
    /// the protocol answers one request at a time, in order (not multiplexed).
    Parsed {
        server: bool,
        thread_causality: bool,
        in_order: bool,
        /// On a multiplexed connection, what the syscall read or answered.
        io: StreamIo,
    },
    /// The connection is none of ours from now on (detection window over, or a parser failed):
    /// the programs can stop sending its bytes.
    GaveUp,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Per-connection protocol state, keyed by the kernel's connection id.
#[derive(Debug, Default)]
pub struct ProtocolTable {
    conns: FastMap<u64, State>,
    pub stats: ProtocolStats,
}

impl ProtocolTable {
    /// A connection opened: its protocol is looked for from its first chunk. `from_start`: the
    /// agent saw it open, so that chunk is the connection's first byte.
    pub fn open(&mut self, conn_id: u64, from_start: bool) {
        self.conns.insert(
            conn_id,
            State::Detecting {
                misses: 0,
                from_start,
            },
        );
    }

    /// The protocol `conn_id` was recognised as, if it was.
    #[must_use]
    pub fn protocol_of(&self, conn_id: u64) -> Option<&'static str> {
        match self.conns.get(&conn_id)? {
            State::Parsed(parsed) => Some(PROTOCOLS[parsed.protocol].0),
            State::Detecting { .. } | State::Other => None,
        }
    }

    /// A connection not to be parsed at all (the agent's own viewers').
    pub fn ignore(&mut self, conn_id: u64) {
        self.conns.insert(conn_id, State::Other);
    }

    /// Feeds one chunk of `conn_id` at `position` of its TCP stream; parsed events go to
    /// `out`. Request keys that are offsets become sequence numbers (mod 2³²) when the request
    /// direction's first chunk had one, or, for TLS plaintext, the sequence number of the record
    /// a request began.
    pub fn feed(
        &mut self,
        conn_id: u64,
        chunk: &Chunk<'_>,
        position: Position,
        ts: u64,
        tid: u32,
        out: &mut Vec<ProtoEvent>,
    ) -> Fed {
        let already = out.len();
        let state = self.conns.entry(conn_id).or_insert(State::Detecting {
            misses: 0,
            from_start: false,
        });
        if let State::Detecting { misses, from_start } = state {
            let found = PROTOCOLS
                .iter()
                .enumerate()
                .find_map(|(i, (_, detect))| detect(chunk).map(|d| (i, d)));
            let Some((protocol, detected)) = found else {
                *misses += 1;
                if u32::from(*misses) >= DETECT_CHUNKS {
                    self.stats.other_connections += 1;
                    *state = State::Other;
                    return Fed::GaveUp;
                }
                return Fed::Skipped;
            };
            self.stats.recognised[protocol] += 1;
            let mut parser = detected.parser;
            if *from_start && *misses == 0 {
                parser.at_connection_start();
            }
            *state = State::Parsed(Parsed {
                protocol,
                server: detected.server,
                parser,
                requests_at: Anchor::Unset,
                request_bytes: 0,
                records: VecDeque::new(),
                keyed_by_records: false,
                keyed: VecDeque::new(),
            });
        }
        let State::Parsed(parsed) = state else {
            return Fed::Skipped;
        };
        let side = Side::of(parsed.server, chunk.egress);
        if side == Side::Request {
            if matches!(parsed.requests_at, Anchor::Unset) {
                parsed.requests_at = match position {
                    Position::Stream(seq) => Anchor::At(seq),
                    Position::Record(_) | Position::Unknown => Anchor::Unknown,
                };
            }
            parsed.note_request_chunk(position, chunk.total);
        }
        parsed
            .parser
            .feed(side, chunk.payload, chunk.total, ts, tid, out);
        parsed.anchor_keys(&mut out[already..]);
        if parsed.parser.failed() {
            tracing::debug!(
                conn_id,
                protocol = PROTOCOLS[parsed.protocol].0,
                "not that protocol after all: connection given up"
            );
            self.stats.given_up += 1;
            self.stats.given_up_by[parsed.protocol] += 1;
            *state = State::Other;
            // What it reported before failing stands: those exchanges were well formed.
            return Fed::GaveUp;
        }
        // A client request alone in the syscall that completed it, and begun by that syscall
        // too (a header block a short write split began in another thread's write, maybe),
        // may take the thread rule where the parser allows that (HTTP/2: a write opening one
        // stream, by the caller).
        let lone_client_request = !parsed.server && parsed.parser.lone_client_requests() && {
            let mut starts = out[already..].iter().filter_map(|e| match e {
                ProtoEvent::Request { start, .. } => Some(start),
                ProtoEvent::Exchange(_) => None,
            });
            matches!((starts.next(), starts.next()),
                    (Some(start), None) if start.ts == ts && start.tid == tid)
        };
        let multiplexed = !parsed.parser.thread_causality();
        let io = match (multiplexed, chunk.egress, parsed.server) {
            (false, _, _) | (true, true, false) => StreamIo::None,
            (true, false, server) => StreamIo::Read {
                placed: !server || !parsed.parser.answered().is_unplaceable(),
            },
            (true, true, true) => StreamIo::Wrote(parsed.parser.answered()),
        };
        Fed::Parsed {
            server: parsed.server,
            thread_causality: parsed.parser.thread_causality() || lone_client_request,
            in_order: !multiplexed,
            io,
        }
    }

    /// The connection closed; what it still held completes. Returns this process's end and the
    /// parser's thread rule if it was parsed.
    pub fn close(&mut self, conn_id: u64, at: Stamp, out: &mut Vec<ProtoEvent>) -> Fed {
        match self.conns.remove(&conn_id) {
            Some(State::Parsed(mut parsed)) => {
                let already = out.len();
                parsed.parser.close(at, out);
                parsed.anchor_keys(&mut out[already..]);
                Fed::Parsed {
                    server: parsed.server,
                    thread_causality: parsed.parser.thread_causality(),
                    in_order: parsed.parser.thread_causality(),
                    io: StreamIo::None,
                }
            }
            _ => Fed::Skipped,
        }
    }

    /// Keeps only the connections `keep` says are still tracked.
    /// Returns the connections dropped, whose open requests will never complete.
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) -> Vec<u64> {
        let mut dropped = Vec::new();
        self.conns.retain(|id, _| {
            let kept = keep(*id);
            if !kept {
                dropped.push(*id);
            }
            kept
        });
        dropped
    }
}

#[cfg(test)]
mod tests {
    use agent_common::Role;

    use super::*;
    use crate::protocol::http2::frame::{PREFACE, flag, kind};

    /// A HEADERS frame opening `stream`: POST `/a.B/C` over http, the path not indexed.
    fn headers(stream: u8) -> Vec<u8> {
        let mut block = vec![0x83, 0x86, 0x04, 6];
        block.extend_from_slice(b"/a.B/C");
        let len = u8::try_from(block.len()).expect("short");
        let mut frame = vec![0, 0, len, kind::HEADERS, flag::END_HEADERS, 0, 0, 0, stream];
        frame.extend_from_slice(&block);
        frame
    }

    fn feed(table: &mut ProtocolTable, payload: &[u8]) -> Fed {
        let chunk = Chunk {
            egress: true,
            role: Role::Client,
            payload,
            total: payload.len() as u64,
        };
        table.feed(7, &chunk, Position::Unknown, 1, 1, &mut Vec::new())
    }

    #[test]
    fn an_http2_client_write_opening_one_stream_alone_may_take_the_thread_rule() {
        let mut table = ProtocolTable::default();
        let mut first = PREFACE.to_vec();
        first.extend_from_slice(&[0, 0, 0, kind::SETTINGS, 0, 0, 0, 0, 0]);
        first.extend(headers(1));
        let lone = Fed::Parsed {
            server: false,
            thread_causality: true,
            in_order: false,
            io: StreamIo::None,
        };
        assert_eq!(feed(&mut table, &first), lone);
        // A write carrying two streams may be a flush of other callers' calls.
        let mut two = headers(3);
        two.extend(headers(5));
        assert_eq!(
            feed(&mut table, &two),
            Fed::Parsed {
                server: false,
                thread_causality: false,
                in_order: false,
                io: StreamIo::None,
            }
        );
        assert_eq!(feed(&mut table, &headers(7)), lone);
        // A header block begun by an earlier write (split by a short write) is not this
        // write's alone.
        let nine = headers(9);
        let (head, tail) = nine.split_at(6);
        let _ = feed(&mut table, head);
        let chunk = Chunk {
            egress: true,
            role: Role::Client,
            payload: tail,
            total: tail.len() as u64,
        };
        assert_eq!(
            table.feed(7, &chunk, Position::Unknown, 2, 2, &mut Vec::new()),
            Fed::Parsed {
                server: false,
                thread_causality: false,
                in_order: false,
                io: StreamIo::None,
            }
        );
    }

    /// A grpcio server writes its SETTINGS before it reads the client's preface. Seen open,
    /// the framing found at each direction's first byte follows nothing unseen: the server's
    /// SETTINGS, then the preface and the first stream, are placed, so the worker rule knows no
    /// stream began unseen. Joined midway, the same bytes may follow anything.
    #[test]
    fn an_http2_server_that_speaks_first_is_parsed_from_the_start_when_seen_open() {
        /// What an HTTP/2 server's read is fed as.
        fn server_read(placed: bool) -> Fed {
            Fed::Parsed {
                server: true,
                thread_causality: false,
                in_order: false,
                io: StreamIo::Read { placed },
            }
        }
        fn server(egress: bool, payload: &[u8]) -> Chunk<'_> {
            Chunk {
                egress,
                role: Role::Server,
                payload,
                total: payload.len() as u64,
            }
        }
        let settings = [0, 0, 0, kind::SETTINGS, 0, 0, 0, 0, 0];
        let mut first_read = PREFACE.to_vec();
        first_read.extend_from_slice(&settings);
        first_read.extend(headers(1));
        for (from_start, placed) in [(true, true), (false, false)] {
            let mut table = ProtocolTable::default();
            table.open(7, from_start);
            let mut out = Vec::new();
            let wrote = table.feed(
                7,
                &server(true, &settings),
                Position::Unknown,
                1,
                1,
                &mut out,
            );
            let Fed::Parsed {
                io: StreamIo::Wrote(answered),
                ..
            } = wrote
            else {
                panic!("not parsed as a server's write: {wrote:?}");
            };
            assert_eq!(
                answered.is_unplaceable(),
                !from_start,
                "from start: {from_start}"
            );
            let read = table.feed(
                7,
                &server(false, &first_read),
                Position::Unknown,
                2,
                2,
                &mut out,
            );
            assert_eq!(read, server_read(placed), "from start: {from_start}");
            assert!(
                out.iter().any(|e| matches!(e, ProtoEvent::Request { .. })),
                "stream 1 begins either way"
            );
        }
        // Seen open, but the client's first bytes the agent has are a frame, not the preface:
        // something came before them (a record lost). Parsed on, not taken as the start.
        let mut table = ProtocolTable::default();
        table.open(7, true);
        let mut out = Vec::new();
        let _ = table.feed(
            7,
            &server(true, &settings),
            Position::Unknown,
            1,
            1,
            &mut out,
        );
        let read = table.feed(
            7,
            &server(false, &headers(3)),
            Position::Unknown,
            2,
            2,
            &mut out,
        );
        assert_eq!(read, server_read(false));
    }

    /// Request keys of one end of an HTTP/1 connection: `(egress, bytes, position)` chunks.
    fn request_keys(server: bool, chunks: &[(bool, &[u8], Position)]) -> Vec<u64> {
        let mut table = ProtocolTable::default();
        let mut out = Vec::new();
        for (i, &(egress, payload, position)) in chunks.iter().enumerate() {
            let chunk = Chunk {
                egress,
                role: if server { Role::Server } else { Role::Client },
                payload,
                total: payload.len() as u64,
            };
            let _ = table.feed(7, &chunk, position, i as u64, 1, &mut out);
        }
        out.iter()
            .filter_map(|e| match e {
                ProtoEvent::Request { key, .. } => Some(*key),
                ProtoEvent::Exchange(_) => None,
            })
            .collect()
    }

    /// A keep-alive connection open before the agent: the client's end was first seen at its
    /// first request, the server's only at its second (the agent started between the client's
    /// write and the server's read). Counted from what each saw, their keys would differ by the
    /// first request's length forever; as sequence numbers they agree, across the 2³² wrap too.
    #[test]
    fn both_ends_key_requests_by_sequence_number_whenever_they_began() {
        const REQ: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let len = REQ.len() as u32;
        let (isn, reply_isn) = (u32::MAX - len - 3, 9_000);
        let client = request_keys(
            false,
            &[
                (true, REQ, Position::Stream(isn)),
                (false, RESP, Position::Stream(reply_isn)),
                (true, REQ, Position::Stream(isn.wrapping_add(len))),
                (false, RESP, Position::Stream(reply_isn + RESP.len() as u32)),
                (true, REQ, Position::Stream(isn.wrapping_add(2 * len))),
            ],
        );
        let server = request_keys(
            true,
            &[
                (false, REQ, Position::Stream(isn.wrapping_add(len))),
                (true, RESP, Position::Stream(reply_isn + RESP.len() as u32)),
                (false, REQ, Position::Stream(isn.wrapping_add(2 * len))),
            ],
        );
        assert_eq!(client.len(), 3);
        assert_eq!(server, client[1..]);
        // Without sequence numbers, each end counts from what it saw.
        let plain = request_keys(
            true,
            &[
                (false, REQ, Position::Unknown),
                (true, RESP, Position::Unknown),
                (false, REQ, Position::Unknown),
            ],
        );
        assert_eq!(plain, [0, u64::from(len)]);
    }

    /// TLS plaintext of a keep-alive connection open before the agent: the client's end was
    /// first seen at its first request, the server's at its second. Plaintext offsets would
    /// differ; the sequence numbers where each request's record began agree (the ciphertext's
    /// overhead makes them no plaintext offset). A request whose record is not known gets a
    /// marked offset, which matches no sequence number.
    #[test]
    fn tls_requests_are_keyed_by_the_sequence_number_of_their_record() {
        const REQ: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let record = |n: u32| 5_000 + n * 80;
        let client = request_keys(
            false,
            &[
                (true, REQ, Position::Record(record(0))),
                (false, RESP, Position::Record(9_000)),
                (true, REQ, Position::Record(record(1))),
                (false, RESP, Position::Record(9_070)),
                (true, REQ, Position::Unknown),
            ],
        );
        let server = request_keys(
            true,
            &[
                (false, REQ, Position::Record(record(1))),
                (true, RESP, Position::Record(9_070)),
                (false, REQ, Position::Record(record(2))),
            ],
        );
        assert_eq!(
            client,
            [
                u64::from(record(0)),
                u64::from(record(1)),
                (2 * REQ.len() as u64) | OFFSET_KEY
            ]
        );
        assert_eq!(server, [u64::from(record(1)), u64::from(record(2))]);
    }

    /// A request whose first chunk had no record position (its `SSL *` was tied by that call)
    /// and whose next one had: its exchange keeps the key its request got.
    #[test]
    fn an_exchange_keeps_the_key_its_request_got() {
        let mut table = ProtocolTable::default();
        let mut out = Vec::new();
        let chunks: [(bool, &[u8], Position); 3] = [
            (
                false,
                b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\n",
                Position::Unknown,
            ),
            (false, b"body", Position::Record(7_000)),
            (
                true,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Position::Record(9_000),
            ),
        ];
        for (i, (egress, payload, position)) in chunks.into_iter().enumerate() {
            let chunk = Chunk {
                egress,
                role: Role::Server,
                payload,
                total: payload.len() as u64,
            };
            let _ = table.feed(7, &chunk, position, i as u64, 1, &mut out);
        }
        let keys: Vec<u64> = out
            .iter()
            .map(|e| match e {
                ProtoEvent::Request { key, .. } => *key,
                ProtoEvent::Exchange(x) => x.key,
            })
            .collect();
        assert_eq!(keys, [0, 0]);
    }
}
