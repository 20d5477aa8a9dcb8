//! What each tracked connection carries: detection while unknown, then its protocol's parser.

use std::collections::HashMap;

use super::{Chunk, ConnectionParser, PROTOCOLS, ProtoEvent, Side, Stamp};

/// Data chunks on a connection that may pass before it is declared none of ours; the programs
/// give up after as many.
const DETECT_CHUNKS: u32 = agent_common::DETECT_CHUNKS;

/// What a connection carries, as far as sockspan can tell.
#[derive(Debug)]
enum State {
    Detecting {
        misses: u8,
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
    /// Parsed; `server` is this process's end, `thread_causality` the parser's.
    Parsed {
        server: bool,
        thread_causality: bool,
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
    /// A connection opened: its protocol is looked for from its first chunk.
    pub fn open(&mut self, conn_id: u64) {
        self.conns.insert(conn_id, State::Detecting { misses: 0 });
    }

    /// Feeds one chunk of `conn_id`; parsed events go to `out`.
    pub fn feed(
        &mut self,
        conn_id: u64,
        chunk: &Chunk<'_>,
        ts: u64,
        tid: u32,
        out: &mut Vec<ProtoEvent>,
    ) -> Fed {
        let already = out.len();
        let state = self
            .conns
            .entry(conn_id)
            .or_insert(State::Detecting { misses: 0 });
        if let State::Detecting { misses } = state {
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
            *state = State::Parsed(Parsed {
                protocol,
                server: detected.server,
                parser: detected.parser,
            });
        }
        let State::Parsed(parsed) = state else {
            return Fed::Skipped;
        };
        let side = Side::of(parsed.server, chunk.egress);
        parsed
            .parser
            .feed(side, chunk.payload, chunk.total, ts, tid, out);
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
        Fed::Parsed {
            server: parsed.server,
            thread_causality: parsed.parser.thread_causality() || lone_client_request,
        }
    }

    /// The connection closed; what it still held completes. Returns this process's end and the
    /// parser's thread rule if it was parsed.
    pub fn close(&mut self, conn_id: u64, at: Stamp, out: &mut Vec<ProtoEvent>) -> Fed {
        match self.conns.remove(&conn_id) {
            Some(State::Parsed(mut parsed)) => {
                parsed.parser.close(at, out);
                Fed::Parsed {
                    server: parsed.server,
                    thread_causality: parsed.parser.thread_causality(),
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
        table.feed(7, &chunk, 1, 1, &mut Vec::new())
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
        };
        assert_eq!(feed(&mut table, &first), lone);
        // A write carrying two streams may be a flush of other callers' calls.
        let mut two = headers(3);
        two.extend(headers(5));
        assert_eq!(
            feed(&mut table, &two),
            Fed::Parsed {
                server: false,
                thread_causality: false
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
            table.feed(7, &chunk, 2, 2, &mut Vec::new()),
            Fed::Parsed {
                server: false,
                thread_causality: false
            }
        );
    }
}
