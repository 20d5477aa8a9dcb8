//! `PostgreSQL` frontend/backend protocol 3.0: one exchange per simple query (`Q` .. `Z`) and
//! one per extended-query Execute (the Parse/Bind/Describe before it and its reply up to
//! `CommandComplete`), named by the sanitised statement text.
//!
//! The connection is recognised by its startup message (or an `SSLRequest` / `GSSENCRequest` the
//! server refuses with `N`; an `S` means TLS follows and the connection is given up). The
//! authentication exchange is skipped whole: password, SASL and GSS messages are never read.
//! Statement names map to their sanitised query (bounded), portals to their statement, so an
//! Execute of a statement prepared long before is still named. Replies are matched in order:
//! `C`/`I`/`s`/`E` end the oldest open Execute, `Z` ends a simple query or a Sync, and the
//! Executes of a Sync batch an error aborted end at that `Z` with an error of no code.
//!
//! At the server's end, a connection older than the agent (a pool's) is picked up at a request
//! read whole and checked strictly: one simple query, or an extended-query batch (Parse or Bind
//! first, Sync last), every message well formed and the last ending the read. A backend reads
//! its socket only once it has processed what it read before and flushed the replies (it
//! flushes at each Sync and before it waits for input), so the replies it writes after that
//! read answer those requests, in order; the first reply message is still checked against the
//! request (`ParseComplete` for a Parse, `BindComplete` for a Bind, neither for a query; an
//! error, a notice, a notification or a parameter status pass). Unknown then: the database,
//! and the statements prepared before (their executions are unnamed). Reply framing lost to
//! uncaptured bytes (a reply larger than the capture limit in one syscall) while one request
//! awaits its reply is found again the same way there, at the next request read whole: the
//! lost reply's exchanges end where its last byte was seen, their outcome uncaptured.
//!
//! Not at the client's end: a client may pipeline (libpq's pipeline mode, pgx batches, JDBC
//! batches), and one that keeps one request ahead shows the same syscalls as one that does
//! not, its replies paired one request late. There a connection is followed only from its
//! start-up, and framing lost gives it up, as does an impossible header anywhere.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use super::{
    ConnectionParser, Exchange, ProtoEvent, Side, Stamp,
    db::{DbOutcome, DbSummary, DbSystem},
    frames::{Framer, Lost, Message},
    sql::{Dialect, Sanitised, sanitise},
};

mod detect;
mod wire;

pub use detect::detect;
use detect::request_batch;
use wire::{Head, be32, cstr, sqlstate, text_of};

/// Protocol 3.0 in a startup message.
const PROTOCOL_3: u32 = 0x0003_0000;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// Longest startup message accepted (the server's own limit is 10000).
const MAX_STARTUP: u32 = 10_000;
/// Body bytes kept of a message whose text matters (query text, names).
const KEEP_QUERY: usize = 8192;
/// Body bytes kept of an `ErrorResponse`: the `SQLSTATE` field comes early.
const KEEP_ERROR: usize = 512;
/// Statement and portal names remembered per connection.
const MAX_STATEMENTS: usize = 256;
/// Open exchanges (with their summaries) per connection; older ones are dropped (counted).
const MAX_OPEN: usize = 256;
/// Expected replies tracked per connection; more and the connection is given up.
const MAX_SLOTS: usize = 4096;

/// Self-metrics of one connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PgStats {
    pub exchanges: u64,
    /// Open exchanges dropped, oldest first, past [`MAX_OPEN`].
    pub dropped: u64,
    /// Replies with no request to answer (sent before the agent attached).
    pub unmatched: u64,
    /// Statement or portal names forgotten past [`MAX_STATEMENTS`].
    pub names_evicted: u64,
    /// Framing lost (uncaptured bytes over a header, or an impossible header).
    pub lost: u64,
    /// Replies whose framing was lost and found again at the next request.
    pub resynced: u64,
}

/// An exchange waiting for its reply.
#[derive(Debug)]
struct Open {
    key: u64,
    start: Stamp,
    request_end: Stamp,
    response_start: Option<Stamp>,
    statement: Option<Arc<Sanitised>>,
    /// An error was reported for it (its code, if it had a well-formed one).
    failed: bool,
    code: Option<Box<str>>,
}

/// What the next replies answer, in order.
#[derive(Debug)]
enum Slot {
    /// A simple query: ends at `Z`. `None` once dropped.
    Query(Option<Box<Open>>),
    /// An Execute: ends at `C`, `I`, `s` or `E` (or at its Sync's `Z` when aborted).
    Execute(Option<Box<Open>>),
    /// A Sync, or another request answered by `Z` that makes no span (`FunctionCall`).
    Sync,
}

/// Which end of the connection the agent reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Client,
    Server,
}

/// Both directions of one `PostgreSQL` connection.
#[derive(Debug)]
pub struct PgConnection {
    requests: Framer,
    responses: Framer,
    /// The client is still in the startup phase (untagged messages).
    startup: bool,
    /// An SSL / GSS request awaits its one-byte answer.
    encryption_asked: bool,
    namespace: Option<Arc<str>>,
    statements: HashMap<Box<[u8]>, Arc<Sanitised>, foldhash::fast::RandomState>,
    portals: HashMap<Box<[u8]>, Option<Arc<Sanitised>>, foldhash::fast::RandomState>,
    /// First message of the extended-query request being assembled (Parse, Bind, Describe).
    group_start: Option<Stamp>,
    slots: VecDeque<Slot>,
    open: usize,
    /// Picked up mid-stream at a request beginning with this tag: the first reply message is
    /// checked against it.
    first_request: Option<u8>,
    /// Which end this is (a lost reply may be found again only at the server's).
    end: End,
    /// The reply being read lost its framing: where its last byte was seen, until the next
    /// request written whole ends it.
    reply_lost: Option<Stamp>,
    failed: bool,
    messages: Vec<Message>,
    pub stats: PgStats,
}

impl PgConnection {
    fn new(startup: bool) -> Self {
        Self {
            requests: Framer::default(),
            responses: Framer::default(),
            startup,
            encryption_asked: false,
            namespace: None,
            statements: HashMap::default(),
            portals: HashMap::default(),
            group_start: None,
            slots: VecDeque::new(),
            open: 0,
            first_request: None,
            end: End::Client,
            reply_lost: None,
            failed: false,
            messages: Vec::new(),
            stats: PgStats::default(),
        }
    }

    /// A connection seen from its startup (or encryption request) message.
    #[must_use]
    pub fn from_start() -> Self {
        Self::new(true)
    }

    /// At the server's end (`true`) or the client's.
    #[must_use]
    pub fn at_server(mut self, server: bool) -> Self {
        self.end = if server { End::Server } else { End::Client };
        self
    }

    /// A connection picked up at the server's end at a request beginning with `first` (`Q`,
    /// `P` or `B`), its startup unseen.
    #[must_use]
    pub fn mid_stream(first: u8) -> Self {
        Self {
            first_request: Some(first),
            end: End::Server,
            ..Self::new(false)
        }
    }

    fn fail(&mut self) {
        self.stats.lost += 1;
        self.failed = true;
        // A reply must never pair with the wrong request: what was open is not reported.
        self.slots.clear();
        self.open = 0;
    }

    /// Reply framing lost at `last` (its last byte seen): waits for the next request written
    /// whole when one request awaits its reply (one query, or one batch up to its Sync); gives
    /// the connection up otherwise (a pipelining client: the next request proves nothing).
    fn lose_reply(&mut self, last: Stamp) {
        let ends = self
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Query(_) | Slot::Sync))
            .count();
        let one_request =
            ends == 1 && matches!(self.slots.back(), Some(Slot::Query(_) | Slot::Sync));
        if self.end == End::Client || self.startup || self.encryption_asked || !one_request {
            return self.fail();
        }
        self.responses.restart();
        self.reply_lost = Some(last);
    }

    /// A request came while a reply's framing was lost: if written whole (`first` its first
    /// tag, [`request_batch`]), the lost reply ended before it, and the reply after starts at
    /// a message boundary (checked against the request); else nothing proves where the reply
    /// ended.
    fn end_lost_reply(&mut self, first: Option<u8>, out: &mut Vec<ProtoEvent>) {
        let Some(end) = self.reply_lost.take() else {
            return;
        };
        let Some(first) = first.filter(|_| self.requests.at_boundary()) else {
            return self.fail();
        };
        self.stats.resynced += 1;
        while let Some(slot) = self.slots.pop_front() {
            if let Slot::Query(open) | Slot::Execute(open) = slot {
                self.complete(open, end, DbOutcome::Uncaptured, out);
            }
        }
        self.first_request = Some(first);
    }

    fn on_request(&mut self, m: &Message, out: &mut Vec<ProtoEvent>) {
        if self.startup {
            self.on_startup(m);
            return;
        }
        match m.tag {
            b'Q' => {
                let text = cstr(&m.body).unwrap_or(&m.body);
                let statement = query(text, m.cut);
                self.group_start = None;
                let open = Some(Box::new(self.announce(
                    m.start,
                    m.end,
                    Some(statement),
                    out,
                )));
                self.push(Slot::Query(open));
            }
            b'P' => {
                self.group_start.get_or_insert(m.start);
                let name = cstr(&m.body).unwrap_or_default();
                let rest = m.body.get(name.len() + 1..).unwrap_or_default();
                // Cut only matters when it fell inside the text (not in the parameter types).
                let statement = query(text_of(rest), m.cut && cstr(rest).is_none());
                if self.statements.len() >= MAX_STATEMENTS && !self.statements.contains_key(name) {
                    self.evict_statement();
                }
                self.statements.insert(name.into(), statement);
            }
            b'B' => {
                self.group_start.get_or_insert(m.start);
                let portal = cstr(&m.body).unwrap_or_default();
                let rest = m.body.get(portal.len() + 1..).unwrap_or_default();
                let statement = cstr(rest).and_then(|s| self.statements.get(s).cloned());
                if self.portals.len() >= MAX_STATEMENTS && !self.portals.contains_key(portal) {
                    self.portals.clear();
                    self.stats.names_evicted += 1;
                }
                self.portals.insert(portal.into(), statement);
            }
            b'E' => {
                let start = self.group_start.take().unwrap_or(m.start);
                let portal = cstr(&m.body).unwrap_or_default();
                let statement = self.portals.get(portal).cloned().flatten();
                let open = Some(Box::new(self.announce(start, m.end, statement, out)));
                self.push(Slot::Execute(open));
            }
            b'C' => {
                self.group_start.get_or_insert(m.start);
                // Close: forget the statement or portal named.
                if let Some((&kind, name)) = m.body.split_first() {
                    let name = cstr(name).unwrap_or(name);
                    match kind {
                        b'S' => drop(self.statements.remove(name)),
                        b'P' => drop(self.portals.remove(name)),
                        _ => {}
                    }
                }
            }
            b'D' | b'H' => {
                self.group_start.get_or_insert(m.start);
            }
            b'S' => {
                self.group_start = None;
                self.push(Slot::Sync);
            }
            b'F' => self.push(Slot::Sync),
            // Password / SASL responses (`p`), CopyData, CopyDone, CopyFail, Terminate: no
            // reply of their own to pair.
            _ => {}
        }
    }

    fn evict_statement(&mut self) {
        // No order is kept: any one goes (a client preparing this many rotates them anyway).
        if let Some(key) = self.statements.keys().next().cloned() {
            self.statements.remove(&key);
            self.stats.names_evicted += 1;
        }
    }

    fn on_startup(&mut self, m: &Message) {
        let code = be32(&m.body);
        match code {
            Some(SSL_REQUEST | GSSENC_REQUEST) => self.encryption_asked = true,
            Some(PROTOCOL_3) => {
                self.startup = false;
                let mut params = m.body.get(4..).unwrap_or_default().split(|&b| b == 0);
                let mut user = None;
                let mut database = None;
                while let (Some(key), Some(value)) = (params.next(), params.next()) {
                    if key.is_empty() {
                        break;
                    }
                    let value = std::str::from_utf8(value).ok().filter(|v| !v.is_empty());
                    match key {
                        b"database" => database = value,
                        b"user" => user = value,
                        _ => {}
                    }
                }
                // The database defaults to the user's name.
                self.namespace = database.or(user).map(Arc::from);
            }
            Some(CANCEL_REQUEST) => {}
            _ => self.fail(),
        }
    }

    /// Announces a request and opens its exchange (dropping the oldest open one past the cap).
    fn announce(
        &mut self,
        start: Stamp,
        request_end: Stamp,
        statement: Option<Arc<Sanitised>>,
        out: &mut Vec<ProtoEvent>,
    ) -> Open {
        if self.open >= MAX_OPEN {
            let oldest = self.slots.iter_mut().find_map(|s| match s {
                Slot::Query(o) | Slot::Execute(o) if o.is_some() => Some(o),
                _ => None,
            });
            if let Some(o) = oldest {
                *o = None;
                self.open -= 1;
                self.stats.dropped += 1;
            }
        }
        self.open += 1;
        out.push(ProtoEvent::Request {
            key: start.offset,
            trace: None,
            start,
            forward: 0,
        });
        Open {
            key: start.offset,
            start,
            request_end,
            response_start: None,
            statement,
            failed: false,
            code: None,
        }
    }

    fn push(&mut self, slot: Slot) {
        if self.slots.len() >= MAX_SLOTS {
            self.fail();
            return;
        }
        self.slots.push_back(slot);
    }

    fn complete(
        &mut self,
        open: Option<Box<Open>>,
        end: Stamp,
        outcome: DbOutcome,
        out: &mut Vec<ProtoEvent>,
    ) {
        let Some(open) = open else {
            return;
        };
        self.open = self.open.saturating_sub(1);
        self.stats.exchanges += 1;
        let mut summary = DbSummary::new(DbSystem::Postgresql, outcome);
        summary.namespace.clone_from(&self.namespace);
        if let Some(s) = open.statement {
            summary.operation.clone_from(&s.operation);
            summary.collection.clone_from(&s.collection);
            summary.query = Some(s.text.clone());
            summary.batch_size = (s.statements > 1).then_some(s.statements);
        }
        out.push(ProtoEvent::Exchange(Exchange {
            key: open.key,
            request_start: open.start,
            request_end: open.request_end,
            response_start: open.response_start,
            end,
            summary: summary.into(),
        }));
    }

    fn on_response(&mut self, m: &Message, out: &mut Vec<ProtoEvent>) {
        if let Some(first) = self.first_request
            && !matches!(m.tag, b'A' | b'N' | b'S')
        {
            // (A notification, a notice or a parameter status may come at any time.)
            self.first_request = None;
            let answers = m.tag == b'E'
                || match first {
                    b'P' => m.tag == b'1',
                    b'B' => m.tag == b'2',
                    _ => !matches!(m.tag, b'1' | b'2'),
                };
            if !answers {
                // A reply to something written before the agent watched: nothing after can be
                // paired with confidence.
                return self.fail();
            }
        }
        if let Some(Slot::Query(Some(o)) | Slot::Execute(Some(o))) = self.slots.front_mut() {
            // A header begun before the request was written (only bytes that are not what they
            // claim) still never starts the response before its request.
            o.response_start.get_or_insert(later(m.start, o.start));
        }
        match m.tag {
            b'C' | b'I' | b's' | b'E' => {
                let code = (m.tag == b'E').then(|| sqlstate(&m.body));
                match self.slots.front_mut() {
                    Some(Slot::Query(Some(o))) => {
                        // The first error of a multi-statement query names it.
                        if let Some(code) = code
                            && !o.failed
                        {
                            o.failed = true;
                            o.code = code;
                        }
                    }
                    Some(Slot::Execute(_)) => {
                        let Some(Slot::Execute(open)) = self.slots.pop_front() else {
                            return;
                        };
                        let outcome = code.map_or(DbOutcome::Ok, |code| DbOutcome::Error { code });
                        self.complete(open, m.end, outcome, out);
                    }
                    Some(Slot::Query(None) | Slot::Sync) => {}
                    None => self.stats.unmatched += 1,
                }
            }
            b'Z' => {
                while let Some(slot) = self.slots.pop_front() {
                    match slot {
                        // Executes a Sync ends unanswered were skipped after an error.
                        Slot::Execute(open) => {
                            self.complete(open, m.end, DbOutcome::Error { code: None }, out);
                        }
                        Slot::Query(open) => {
                            let outcome = match open.as_deref() {
                                Some(o) if o.failed => DbOutcome::Error {
                                    code: o.code.clone(),
                                },
                                _ => DbOutcome::Ok,
                            };
                            self.complete(open, m.end, outcome, out);
                            break;
                        }
                        Slot::Sync => break,
                    }
                }
            }
            // Row data, descriptions, notices, parameter status, notifications, copy data:
            // part of the reply in progress.
            _ => {}
        }
    }
}

/// `at`, or `floor` when `at` came before it.
fn later(at: Stamp, floor: Stamp) -> Stamp {
    if at.ts < floor.ts { floor } else { at }
}

/// A message's sanitised query, marked when the message was longer than what was kept.
fn query(text: &[u8], cut: bool) -> Arc<Sanitised> {
    let mut statement = sanitise(text, Dialect::Postgres);
    if cut {
        statement.mark_cut();
    }
    Arc::new(statement)
}

impl PgConnection {
    /// Frames a request-side syscall: one message at a time while the startup phase's
    /// untagged messages last, then tagged.
    fn feed_requests(
        &mut self,
        data: &[u8],
        total: u64,
        (ts, tid): (u64, u32),
        messages: &mut Vec<Message>,
        out: &mut Vec<ProtoEvent>,
    ) -> Result<(), Lost> {
        // The startup phase is untagged until the startup message itself.
        let mut rest = data;
        let mut total = total;
        let mut result = Ok(());
        while !rest.is_empty() || total > 0 {
            let head = Head {
                untagged: self.startup,
                request: true,
            };
            // One message at a time while untagged: the startup message changes the
            // framing of what follows it in the same write.
            let before = self.requests.offset();
            if self.startup && self.requests.at_boundary() && rest.len() >= 4 {
                let len = be32(rest).map_or(0, |l| l as usize).min(rest.len());
                let len = len.max(4);
                let (one, after) = rest.split_at(len);
                result = self
                    .requests
                    .feed(&head, one, one.len() as u64, ts, tid, messages);
                total = total.saturating_sub(one.len() as u64);
                rest = after;
            } else {
                result = self.requests.feed(&head, rest, total, ts, tid, messages);
                rest = &[];
                total = 0;
            }
            for m in messages.drain(..) {
                self.on_request(&m, out);
            }
            if result.is_err() || self.failed || self.requests.offset() == before {
                break;
            }
        }
        result
    }
}

impl ConnectionParser for PgConnection {
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
        if side == Side::Request && self.reply_lost.is_some() {
            let whole = (data.len() as u64 == total)
                .then(|| request_batch(data))
                .flatten();
            self.end_lost_reply(whole, out);
            if self.failed {
                return;
            }
        }
        let mut messages = std::mem::take(&mut self.messages);
        let result = match side {
            Side::Response if self.reply_lost.is_some() => {
                // The rest of the lost reply: counted, not framed.
                self.reply_lost = Some(self.responses.skip_unframed(total, ts, tid));
                Ok(())
            }
            Side::Request => self.feed_requests(data, total, (ts, tid), &mut messages, out),
            Side::Response => {
                let mut rest = data;
                let mut total = total;
                if self.encryption_asked && self.responses.at_boundary() {
                    // The answer to an SSL / GSS request is one raw byte.
                    if rest.first() != Some(&b'N') {
                        // TLS or GSS encryption follows (or an error): nothing readable.
                        self.failed = true;
                        return;
                    }
                    self.encryption_asked = false;
                    self.responses.skip_raw(1);
                    rest = &rest[1..];
                    total = total.saturating_sub(1);
                }
                let head = Head {
                    untagged: false,
                    request: false,
                };
                let result = self
                    .responses
                    .feed(&head, rest, total, ts, tid, &mut messages);
                for m in messages.drain(..) {
                    self.on_response(&m, out);
                }
                result
            }
        };
        self.messages = messages;
        if result.is_err() {
            let last = self.responses.last_byte(ts, tid);
            // Only bytes the capture left out lose framing found again later: a header that
            // cannot be one, in bytes all seen, is not this protocol's.
            match (side, result) {
                (Side::Response, Err(Lost::Uncaptured)) if !self.failed => self.lose_reply(last),
                _ => self.fail(),
            }
        }
    }

    fn close(&mut self, at: Stamp, out: &mut Vec<ProtoEvent>) {
        let at = Stamp {
            offset: self.responses.offset(),
            ..at
        };
        if let Some(end) = self.reply_lost.take() {
            while let Some(slot) = self.slots.pop_front() {
                if let Slot::Query(open) | Slot::Execute(open) = slot {
                    self.complete(open, end, DbOutcome::Uncaptured, out);
                }
            }
        }
        while let Some(slot) = self.slots.pop_front() {
            if let Slot::Query(open) | Slot::Execute(open) = slot {
                self.complete(open, at, DbOutcome::NoResponse, out);
            }
        }
    }

    fn failed(&self) -> bool {
        self.failed
    }

    fn thread_causality(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
