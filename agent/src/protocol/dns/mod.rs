//! DNS: a resolver's queries and the answers to them, over UDP (one message per datagram,
//! `sendmmsg` carrying A and AAAA is two) or TCP (each message after a two-byte length).
//!
//! Only the asking end is parsed: a client's socket is connected to its server, so its spans
//! name the server, while a server's UDP socket is unconnected and serves everyone. Queries pair
//! with responses by id (and question), not by order: a resolver sends A and AAAA together and
//! takes the answers as they come.

pub mod message;
pub mod summary;

use std::collections::VecDeque;

use message::{HEADER_LEN, Header, Question, query};
use summary::DnsSummary;

use super::{
    Chunk, ConnectionParser, Detected, Exchange, ProtoEvent, Side, Stamp, summary::ProtocolSummary,
};

/// A connection is DNS when this process sends a standard query whole: the datagram is the
/// message, or (TCP) a two-byte length equal to the rest of the syscall's bytes precedes it.
pub fn detect(chunk: &Chunk<'_>) -> Option<Detected> {
    if !chunk.egress || chunk.server() == Some(true) {
        return None;
    }
    let payload = chunk.payload;
    if u64::try_from(payload.len()).ok()? != chunk.total {
        return None;
    }
    let stream = if query(payload).is_some() {
        false
    } else {
        let (len, message) = payload.split_first_chunk::<2>()?;
        if usize::from(u16::from_be_bytes(*len)) != message.len() || query(message).is_none() {
            return None;
        }
        true
    };
    Some(Detected {
        server: false,
        parser: Box::new(DnsConnection::new(stream)),
    })
}

/// Queries waiting for an answer; a resolver has two or a few.
const MAX_PENDING: usize = 64;

/// Bytes of a TCP message kept to read its header and question (a name is at most 255 bytes).
const KEEP: usize = HEADER_LEN + 256 + 4;

#[derive(Debug)]
struct Pending {
    id: u16,
    question: Question,
    key: u64,
    start: Stamp,
    end: Stamp,
}

/// Reassembles length-prefixed messages of one TCP direction, keeping each one's first
/// [`KEEP`] bytes.
#[derive(Debug, Default)]
struct Reassembly {
    /// Bytes of the length prefix read so far.
    prefix: [u8; 2],
    prefix_len: u8,
    /// Bytes of the current message still to come, once its length is known.
    left: usize,
    kept: Vec<u8>,
    start: Option<Stamp>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DnsStats {
    pub exchanges: u64,
    /// Responses that answered no pending query.
    pub unpaired_responses: u64,
    pub pending_overflow: u64,
}

#[derive(Debug)]
pub struct DnsConnection {
    stream: bool,
    pending: VecDeque<Pending>,
    /// Bytes seen per direction ([`Side::Request`], [`Side::Response`]).
    offsets: [u64; 2],
    reassembly: [Reassembly; 2],
    failed: bool,
    pub stats: DnsStats,
}

fn index(side: Side) -> usize {
    match side {
        Side::Request => 0,
        Side::Response => 1,
    }
}

impl DnsConnection {
    #[must_use]
    pub fn new(stream: bool) -> Self {
        Self {
            stream,
            pending: VecDeque::new(),
            offsets: [0; 2],
            reassembly: [Reassembly::default(), Reassembly::default()],
            failed: false,
            stats: DnsStats::default(),
        }
    }

    /// One whole message (or its first bytes) of `side`, from `start` to `end`.
    fn message(
        &mut self,
        side: Side,
        bytes: &[u8],
        start: Stamp,
        end: Stamp,
        out: &mut Vec<ProtoEvent>,
    ) {
        match side {
            Side::Request => {
                let Some((header, question)) = query(bytes) else {
                    return;
                };
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    self.stats.pending_overflow += 1;
                }
                let key = start.offset;
                out.push(ProtoEvent::Request {
                    key,
                    trace: None,
                    start,
                    forward: 0,
                });
                self.pending.push_back(Pending {
                    id: header.id,
                    question,
                    key,
                    start,
                    end,
                });
            }
            Side::Response => {
                let Some(header) = Header::parse(bytes).filter(|h| h.response) else {
                    return;
                };
                // The response repeats the question: where it can be read it must match, so
                // that a late answer to a retried id never pairs with another question.
                let question = Question::parse(bytes);
                // Nor can a response that began before the query did answer it (TCP bytes of
                // both directions are fed as their syscalls returned, and may interleave).
                let Some(i) = self.pending.iter().position(|p| {
                    p.id == header.id
                        && p.start.ts <= start.ts
                        && p.end.ts <= end.ts
                        && question.as_ref().is_none_or(|q| {
                            q.qtype == p.question.qtype
                                && q.name.eq_ignore_ascii_case(&p.question.name)
                        })
                }) else {
                    self.stats.unpaired_responses += 1;
                    return;
                };
                let Some(pending) = self.pending.remove(i) else {
                    return;
                };
                self.stats.exchanges += 1;
                out.push(Self::exchange(pending, Some((header, start)), end));
            }
        }
    }

    fn exchange(p: Pending, response: Option<(Header, Stamp)>, end: Stamp) -> ProtoEvent {
        ProtoEvent::Exchange(Exchange {
            key: p.key,
            request_start: p.start,
            request_end: p.end,
            response_start: response.map(|(_, at)| at),
            end,
            summary: ProtocolSummary::Dns(DnsSummary {
                name: p.question.name,
                qtype: p.question.qtype,
                rcode: response.map(|(h, _)| h.rcode),
                answers: response.map_or(0, |(h, _)| h.answers),
            }),
        })
    }

    /// Feeds TCP bytes of one direction: length prefixes and messages, the uncaptured tail
    /// (`total` beyond `data`) skipped inside a message or fatal outside one.
    fn feed_stream(
        &mut self,
        side: Side,
        data: &[u8],
        total: u64,
        at: Stamp,
        out: &mut Vec<ProtoEvent>,
    ) {
        let mut pos = 0;
        let base = at.offset;
        while pos < data.len() {
            let r = &mut self.reassembly[index(side)];
            if r.left == 0 {
                if r.prefix_len == 0 {
                    r.start = Some(Stamp {
                        offset: base + pos as u64,
                        ..at
                    });
                }
                r.prefix[usize::from(r.prefix_len)] = data[pos];
                r.prefix_len += 1;
                pos += 1;
                if r.prefix_len == 2 {
                    r.prefix_len = 0;
                    r.left = usize::from(u16::from_be_bytes(r.prefix));
                    r.kept.clear();
                }
                continue;
            }
            let take = r.left.min(data.len() - pos);
            let room = KEEP.saturating_sub(r.kept.len()).min(take);
            r.kept.extend_from_slice(&data[pos..pos + room]);
            r.left -= take;
            pos += take;
            if r.left == 0 {
                let kept = std::mem::take(&mut r.kept);
                let start = r.start.take().unwrap_or(at);
                let end = Stamp {
                    offset: base + pos as u64,
                    ..at
                };
                self.message(side, &kept, start, end, out);
                self.reassembly[index(side)].kept = kept;
            }
        }
        let uncaptured =
            usize::try_from(total.saturating_sub(data.len() as u64)).unwrap_or(usize::MAX);
        if uncaptured > 0 {
            let r = &mut self.reassembly[index(side)];
            if r.left >= uncaptured && r.prefix_len == 0 {
                r.left -= uncaptured;
                if r.left == 0 {
                    let kept = std::mem::take(&mut r.kept);
                    let start = r.start.take().unwrap_or(at);
                    let end = Stamp {
                        offset: base + total,
                        ..at
                    };
                    self.message(side, &kept, start, end, out);
                }
            } else {
                // A length prefix was in bytes never seen: message boundaries are lost.
                self.failed = true;
            }
        }
    }
}

impl ConnectionParser for DnsConnection {
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
        let offset = &mut self.offsets[index(side)];
        let at = Stamp {
            ts,
            tid,
            offset: *offset,
        };
        *offset += total;
        if self.stream {
            self.feed_stream(side, data, total, at, out);
        } else {
            let end = Stamp {
                offset: at.offset + total,
                ..at
            };
            self.message(side, data, at, end, out);
        }
    }

    fn close(&mut self, at: Stamp, out: &mut Vec<ProtoEvent>) {
        while let Some(pending) = self.pending.pop_front() {
            out.push(Self::exchange(pending, None, at));
        }
    }

    fn failed(&self) -> bool {
        self.failed
    }

    /// A resolver call is made by the thread that needs the answer (`getaddrinfo` blocks it).
    fn thread_causality(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use agent_common::Role;

    use super::*;

    const A: &[u8] =
        b"\xd4\x7b\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03api\x05model\x08internal\x00\x00\x01\x00\x01";
    const AAAA: &[u8] =
        b"\xff\x7e\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03api\x05model\x08internal\x00\x00\x1c\x00\x01";

    /// The answer dnsmasq 2.90 gave to [`A`]: one A record (10.1.2.3), by pointer to the
    /// question.
    fn answer_a() -> Vec<u8> {
        let mut m = A.to_vec();
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 1;
        m.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x00\x00\x04\x0a\x01\x02\x03");
        m
    }

    fn nxdomain(query: &[u8]) -> Vec<u8> {
        let mut m = query.to_vec();
        m[2] = 0x81;
        m[3] = 0x83;
        m
    }

    fn chunk(payload: &[u8]) -> Chunk<'_> {
        Chunk {
            egress: true,
            role: Role::Client,
            payload,
            total: payload.len() as u64,
        }
    }

    fn done(out: &[ProtoEvent]) -> Vec<String> {
        use crate::protocol::Summary as _;
        out.iter()
            .filter_map(|e| match e {
                ProtoEvent::Exchange(x) => Some(x.summary.describe()),
                ProtoEvent::Request { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_and_aaaa_sent_together_pair_by_id_in_any_order() {
        let mut conn = detect(&chunk(A)).expect("a resolver's query").parser;
        let mut out = Vec::new();
        // sendmmsg: two records at the same time.
        conn.feed(Side::Request, A, A.len() as u64, 1, 7, &mut out);
        conn.feed(Side::Request, AAAA, AAAA.len() as u64, 1, 7, &mut out);
        let aaaa = nxdomain(AAAA);
        conn.feed(Side::Response, &aaaa, aaaa.len() as u64, 2, 7, &mut out);
        let a = answer_a();
        conn.feed(Side::Response, &a, a.len() as u64, 3, 7, &mut out);
        assert_eq!(
            done(&out),
            [
                "AAAA api.model.internal -> NXDOMAIN",
                "A api.model.internal -> NOERROR"
            ]
        );
        let keys: Vec<u64> = out
            .iter()
            .filter_map(|e| match e {
                ProtoEvent::Request { key, .. } => Some(*key),
                ProtoEvent::Exchange(_) => None,
            })
            .collect();
        assert_eq!(keys, [0, A.len() as u64]);
    }

    #[test]
    fn a_response_to_another_question_or_id_pairs_with_nothing() {
        let mut conn = DnsConnection::new(false);
        let mut out = Vec::new();
        conn.feed(Side::Request, A, A.len() as u64, 1, 7, &mut out);
        let mut other = answer_a();
        other[0] ^= 1;
        conn.feed(Side::Response, &other, other.len() as u64, 2, 7, &mut out);
        let wrong_question = nxdomain(AAAA);
        let mut wrong_question = wrong_question.clone();
        wrong_question[..2].copy_from_slice(&A[..2]);
        conn.feed(Side::Response, &wrong_question, 40, 3, 7, &mut out);
        assert_eq!(conn.stats.unpaired_responses, 2);
        conn.close(Stamp::default(), &mut out);
        assert_eq!(done(&out), ["A api.model.internal -> none"]);
    }

    #[test]
    fn over_tcp_messages_follow_their_lengths_across_syscalls() {
        let mut framed = vec![0, u8::try_from(A.len()).expect("short")];
        framed.extend_from_slice(A);
        let mut conn = detect(&chunk(&framed)).expect("a TCP query").parser;
        let mut out = Vec::new();
        conn.feed(Side::Request, &framed, framed.len() as u64, 1, 7, &mut out);
        let a = answer_a();
        let mut reply = vec![0, u8::try_from(a.len()).expect("short")];
        reply.extend_from_slice(&a);
        // The length alone, then the message in two reads.
        conn.feed(Side::Response, &reply[..2], 2, 2, 7, &mut out);
        conn.feed(Side::Response, &reply[2..10], 8, 3, 7, &mut out);
        conn.feed(
            Side::Response,
            &reply[10..],
            (reply.len() - 10) as u64,
            4,
            7,
            &mut out,
        );
        assert_eq!(done(&out), ["A api.model.internal -> NOERROR"]);
        assert!(!conn.failed());
    }

    #[test]
    fn detection_wants_a_whole_query_written_by_a_client() {
        assert!(detect(&chunk(&A[..A.len() - 1])).is_none());
        let mut read = chunk(A);
        read.egress = false;
        assert!(detect(&read).is_none());
        let mut cut = chunk(&A[..20]);
        cut.total = A.len() as u64;
        assert!(detect(&cut).is_none());
        assert!(detect(&chunk(b"*1\r\n$4\r\nPING\r\n")).is_none());
        assert!(detect(&chunk(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")).is_none());
    }

    #[test]
    fn garbage_never_panics() {
        let mut conn = DnsConnection::new(true);
        let mut out = Vec::new();
        for (i, len) in [0usize, 1, 2, 3, 13, 40, 300].into_iter().enumerate() {
            let bytes: Vec<u8> = (0..len).map(|b| (b * 37 + i) as u8).collect();
            conn.feed(
                Side::Response,
                &bytes,
                len as u64 + 5,
                i as u64,
                1,
                &mut out,
            );
            conn.feed(Side::Request, &bytes, len as u64, i as u64, 1, &mut out);
        }
        conn.close(Stamp::default(), &mut out);
    }
}
