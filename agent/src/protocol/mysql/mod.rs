//! `MySQL` / `MariaDB` classic protocol: one exchange per command (`COM_QUERY`, prepared statement
//! commands, `COM_INIT_DB`, `COM_PING`, ...), named by the sanitised statement text.
//!
//! The server speaks first: its greeting (protocol 10) gives the system (`MariaDB` in the
//! version: `mariadb`) and its capabilities; the client's `HandshakeResponse` gives its own and the
//! database (`db.namespace`); the user name and auth data are skipped, never read. Auth switch
//! and more-data packets pass until the server's OK or ERR. Replies are framed packet by packet
//! with their sequence numbers checked, through result sets (column count, definitions, EOF
//! unless both sides agreed on `CLIENT_DEPRECATE_EOF`, rows, final EOF / OK, more results).
//! Statement ids map to their sanitised query (bounded) so that `COM_STMT_EXECUTE` is named;
//! parameter values are never read. Compression gives the connection up. TLS (`CLIENT_SSL`): the
//! client's short SSL request (a 32-byte handshake response) is followed by a TLS handshake,
//! which the programs then treat as TLS, and the full handshake response and everything after
//! come as plaintext from the TLS probes, parsed on from here.
//!
//! A connection older than the agent (a pool's) is picked up at a client's command packet,
//! checked strictly (the whole write one packet of sequence 0, a known command whose arguments
//! are what that command carries): the classic protocol is half duplex (below), so the reply
//! that follows starts at a packet boundary. What only the handshake said is unknown then: the
//! system is named `mysql` (`MariaDB` shows only in the greeting), no namespace, statements
//! prepared before are unnamed, and whether an EOF packet follows column definitions
//! (`CLIENT_DEPRECATE_EOF`) is learnt from the first result set (an EOF packet is 5 bytes, the
//! OK that replaces it at least 7, a row never starts with `0xFE` that short). Reply framing lost to uncaptured
//! bytes (a result set larger than the capture limit in one syscall) while one command awaits
//! its reply is found again at the next command: the classic protocol is half duplex (a client
//! writes its next command only once it has read the whole reply, a server reads it only after
//! writing it), so that command ends the reply, whose outcome is reported as uncaptured, and the
//! next reply starts at a packet boundary. Framing lost anywhere else gives the connection up.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use super::{
    ConnectionParser, Exchange, ProtoEvent, Side, Stamp,
    db::{DbOutcome, DbSummary, DbSystem},
    frames::{Framer, Message},
    sql::{Dialect, Sanitised, sanitise},
};

mod detect;
mod replies;
mod wire;

pub use detect::detect;
#[cfg(test)]
use detect::detect_mid_stream;
use replies::follow;
use wire::{Head, MAX_PACKET, caps, com, le32, lenenc};

/// Body bytes kept of a client packet (query text, handshake response).
const KEEP_REQUEST: usize = 8192;
/// Body bytes kept of a server packet: the greeting's version and capabilities, else what
/// OK / ERR / EOF headers and counts need.
const KEEP_GREETING: usize = 256;
const KEEP_REPLY: usize = 32;
/// Body bytes of a client's SSL request: the handshake response's fixed part alone.
const SSL_REQUEST_BODY: usize = 32;
/// Statement ids remembered per connection.
const MAX_STATEMENTS: usize = 256;
/// Open exchanges per connection; older ones are dropped (counted).
const MAX_OPEN: usize = 64;
/// Commands awaiting replies; more and the connection is given up.
const MAX_SLOTS: usize = 1024;

/// Self-metrics of one connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MyStats {
    pub exchanges: u64,
    /// Open exchanges dropped, oldest first, past [`MAX_OPEN`].
    pub dropped: u64,
    /// Replies with no command to answer.
    pub unmatched: u64,
    /// Statement ids forgotten past [`MAX_STATEMENTS`].
    pub statements_evicted: u64,
    /// Framing lost (uncaptured bytes over a header, or a reply out of sequence).
    pub lost: u64,
    /// Replies whose framing was lost and found again at the next command.
    pub resynced: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Greeting,
    HandshakeResponse,
    /// After the client's SSL request: its full handshake response comes next, inside TLS.
    TlsHandshakeResponse,
    Auth,
    Ready,
}

/// Where a reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// Its first packet.
    First,
    /// Definitions still to come, then an EOF or not (`eof`), then `next`.
    Defs { left: u64, eof: Eof, next: After },
    /// The EOF after definitions.
    Eof { next: After },
    /// After definitions, where the handshake was not seen: an EOF if the next packet is one
    /// (and then `CLIENT_DEPRECATE_EOF` is off), else `next` already.
    MaybeEof { next: After },
    /// Rows until EOF / OK.
    Rows,
    /// After `LOCAL INFILE` was asked: the client's file, then OK / ERR.
    Infile,
}

/// Whether an EOF packet follows definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eof {
    Yes,
    No,
    /// The handshake was not seen: learnt at the first result set.
    Unknown,
}

impl Eof {
    fn after_defs(deprecate_eof: Option<bool>) -> Self {
        match deprecate_eof {
            Some(false) => Self::Yes,
            Some(true) => Self::No,
            None => Self::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Rows,
    /// A prepare's column definitions follow its parameter definitions.
    Columns(u16),
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Text or binary result set, or OK / ERR.
    Results,
    Prepare,
    /// OK / ERR (or EOF) only.
    Simple,
}

#[derive(Debug)]
struct Open {
    key: u64,
    start: Stamp,
    request_end: Stamp,
    response_start: Option<Stamp>,
    operation: Option<&'static str>,
    statement: Option<Arc<Sanitised>>,
}

#[derive(Debug)]
struct Command {
    kind: Kind,
    reply: Reply,
    /// Sequence number the next reply packet must carry (`None`: not checked).
    seq: Option<u8>,
    open: Option<Box<Open>>,
    /// `COM_INIT_DB`'s database, taken as the namespace on OK.
    database: Option<Arc<str>>,
}

/// Both directions of one `MySQL` / `MariaDB` connection.
#[derive(Debug)]
pub struct MyConnection {
    requests: Framer,
    responses: Framer,
    phase: Phase,
    system: DbSystem,
    server_caps: Option<u32>,
    /// The capabilities both ends agreed on; `None` picked up mid-stream until the first
    /// result set tells whether EOF packets are deprecated (all that matters here then).
    caps: Option<u32>,
    namespace: Option<Arc<str>>,
    statements: HashMap<u32, Arc<Sanitised>, foldhash::fast::RandomState>,
    commands: VecDeque<Command>,
    open: usize,
    /// The last packet of each direction was 0xFFFFFF long: the next continues it.
    request_continues: bool,
    response_continues: bool,
    /// The reply being read lost its framing: where its last byte was seen, until the next
    /// command ends it.
    reply_lost: Option<Stamp>,
    /// Where the last reply packet ended.
    last_reply_end: Option<Stamp>,
    /// Picked up mid-stream ([`MyConnection::mid_stream`]).
    picked_up: Option<()>,
    failed: bool,
    messages: Vec<Message>,
    pub stats: MyStats,
}

impl Default for MyConnection {
    fn default() -> Self {
        Self::new()
    }
}

impl MyConnection {
    /// A connection seen from the server's greeting.
    #[must_use]
    pub fn new() -> Self {
        Self {
            requests: Framer::default(),
            responses: Framer::default(),
            phase: Phase::Greeting,
            system: DbSystem::Mysql,
            server_caps: None,
            caps: Some(0),
            namespace: None,
            statements: HashMap::default(),
            commands: VecDeque::new(),
            open: 0,
            request_continues: false,
            response_continues: false,
            reply_lost: None,
            last_reply_end: None,
            picked_up: None,
            failed: false,
            messages: Vec::new(),
            stats: MyStats::default(),
        }
    }

    /// A connection picked up at a command, its handshake unseen ([`detect_mid_stream`]).
    #[must_use]
    pub fn mid_stream() -> Self {
        Self {
            phase: Phase::Ready,
            caps: None,
            picked_up: Some(()),
            ..Self::new()
        }
    }

    /// Whether an EOF packet is deprecated, if known.
    fn deprecate_eof(&self) -> Option<bool> {
        self.caps.map(|c| c & caps::DEPRECATE_EOF != 0)
    }

    fn fail(&mut self) {
        self.stats.lost += 1;
        self.failed = true;
        // A reply must never pair with the wrong command: what was open is not reported.
        self.commands.clear();
        self.open = 0;
    }

    /// Reply framing lost at `last` (its last byte seen): waits for the next command when one
    /// command awaits its reply in the command phase (not a `LOCAL INFILE` exchange, whose
    /// client sends data, not a command); gives the connection up otherwise.
    fn lose_reply(&mut self, last: Stamp) {
        let one_waiting = self.phase == Phase::Ready
            && self.commands.len() == 1
            && self
                .commands
                .front()
                .is_some_and(|c| c.reply != Reply::Infile);
        if !one_waiting {
            return self.fail();
        }
        self.responses.restart();
        self.response_continues = false;
        self.reply_lost = Some(last);
    }

    /// The next command came: the reply whose framing was lost ended before it.
    fn end_lost_reply(&mut self, m: &Message, out: &mut Vec<ProtoEvent>) {
        let Some(end) = self.reply_lost.take() else {
            return;
        };
        if m.tag != 0 || self.request_continues {
            // Not a new command: nothing proves where the reply ended.
            return self.fail();
        }
        self.stats.resynced += 1;
        if let Some(command) = self.commands.pop_front() {
            self.complete(command.open, end, DbOutcome::Uncaptured, out);
        }
    }

    fn on_request(&mut self, m: &Message, out: &mut Vec<ProtoEvent>) {
        self.end_lost_reply(m, out);
        if self.failed {
            return;
        }
        let continued = std::mem::replace(&mut self.request_continues, m.len == MAX_PACKET);
        match self.phase {
            Phase::Greeting => self.fail(),
            Phase::HandshakeResponse | Phase::TlsHandshakeResponse => {
                self.on_handshake_response(m);
            }
            Phase::Ready if m.tag == 0 && !continued => self.on_command(m, out),
            // The rest of a command longer than one packet: its reply numbers on from here.
            Phase::Ready if continued => {
                if let Some(last) = self.commands.back_mut()
                    && last.reply == Reply::First
                    && last.seq.is_some()
                {
                    last.seq = Some(m.tag.wrapping_add(1));
                }
            }
            // Auth data (passwords, scrambles, plugin data): never read. LOCAL INFILE data:
            // no reply of its own.
            Phase::Auth | Phase::Ready => {}
        }
    }

    fn on_handshake_response(&mut self, m: &Message) {
        let body = &m.body;
        let Some(client) = le32(body, 0) else {
            return self.fail();
        };
        // Compression or the pre-4.1 protocol: nothing after is readable here.
        if client & caps::COMPRESS != 0 || client & caps::PROTOCOL_41 == 0 {
            self.failed = true;
            return;
        }
        // The short SSL request (capabilities, maximum packet, character set, filler): a TLS
        // handshake follows, then the full response (its `CLIENT_SSL` set too) in plaintext.
        if client & caps::SSL != 0 && body.len() == SSL_REQUEST_BODY {
            if self.phase == Phase::TlsHandshakeResponse {
                return self.fail();
            }
            self.phase = Phase::TlsHandshakeResponse;
            return;
        }
        self.caps = Some(client & self.server_caps.unwrap_or(u32::MAX));
        self.phase = Phase::Auth;
        if client & caps::CONNECT_WITH_DB == 0 {
            return;
        }
        // Skip the user name and the auth data by their lengths; read only the database.
        let database = (|| {
            let user = body.get(32..)?.iter().position(|&b| b == 0)?;
            let at = 32 + user + 1;
            let (auth_len, skip) = if client & caps::PLUGIN_AUTH_LENENC != 0 {
                lenenc(body, at)?
            } else if client & caps::SECURE_CONNECTION != 0 {
                (u64::from(*body.get(at)?), 1)
            } else {
                (body.get(at..)?.iter().position(|&b| b == 0)? as u64, 1)
            };
            let at = at + skip + usize::try_from(auth_len).ok()?;
            let rest = body.get(at..)?;
            let name = &rest[..rest.iter().position(|&b| b == 0)?];
            std::str::from_utf8(name)
                .ok()
                .filter(|n| !n.is_empty())
                .map(Arc::from)
        })();
        self.namespace = database;
    }

    fn on_command(&mut self, m: &Message, out: &mut Vec<ProtoEvent>) {
        let Some((&command, args)) = m.body.split_first() else {
            return self.fail();
        };
        if let Some(front) = self.commands.front()
            && let Reply::MaybeEof { next } = front.reply
        {
            // Half duplex: a command after definitions whose EOF never came ends that reply
            // there (a prepare's, with EOF packets deprecated).
            let done = follow(next, Some(true)) == Reply::First;
            let (Some(end), true) = (self.last_reply_end, done) else {
                return self.fail();
            };
            self.caps = Some(caps::DEPRECATE_EOF);
            if let Some(command) = self.commands.pop_front() {
                self.complete(command.open, end, DbOutcome::Ok, out);
            }
        }
        let (kind, operation, statement, database) = match command {
            com::QUERY => {
                // MariaDB / MySQL 8 query attributes could precede the text; neither client
                // sends them unless CLIENT_QUERY_ATTRIBUTES was agreed, which is not asked here.
                (Kind::Results, None, Some(query(args, m.cut)), None)
            }
            com::STMT_PREPARE => (
                Kind::Prepare,
                Some("PREPARE"),
                Some(query(args, m.cut)),
                None,
            ),
            com::STMT_EXECUTE => {
                let statement = le32(args, 0).and_then(|id| self.statements.get(&id).cloned());
                // Prepared before the agent saw the connection: an execution, unnamed.
                let operation = statement.is_none().then_some("EXECUTE");
                (Kind::Results, operation, statement, None)
            }
            com::STMT_RESET => {
                let statement = le32(args, 0).and_then(|id| self.statements.get(&id).cloned());
                (Kind::Simple, Some("RESET"), statement, None)
            }
            com::INIT_DB => {
                let name = std::str::from_utf8(args).ok().filter(|n| !n.is_empty());
                (Kind::Simple, Some("USE"), None, name.map(Arc::from))
            }
            com::PING => (Kind::Simple, Some("PING"), None, None),
            com::SET_OPTION => (Kind::Simple, Some("SET_OPTION"), None, None),
            com::RESET_CONNECTION => (Kind::Simple, Some("RESET_CONNECTION"), None, None),
            com::STMT_CLOSE => {
                // No reply: complete when written.
                let statement = le32(args, 0).and_then(|id| self.statements.remove(&id));
                let open = Some(Box::new(self.announce(m, Some("CLOSE"), statement, out)));
                self.complete(open, m.end, DbOutcome::NoReply, out);
                return;
            }
            com::QUIT | com::STMT_SEND_LONG_DATA => return,
            com::CHANGE_USER => {
                // A new authentication: the replies until its OK are auth packets.
                self.phase = Phase::Auth;
                self.statements.clear();
                return;
            }
            // Commands whose replies are not framed here (statistics, field list, binlog,
            // fetch, ...): rather than risk pairing wrongly, give up.
            _ => return self.fail(),
        };
        let open = Some(Box::new(self.announce(m, operation, statement, out)));
        if self.commands.len() >= MAX_SLOTS {
            return self.fail();
        }
        self.commands.push_back(Command {
            kind,
            reply: Reply::First,
            seq: Some(m.tag.wrapping_add(1)),
            open,
            database,
        });
    }

    fn announce(
        &mut self,
        m: &Message,
        operation: Option<&'static str>,
        statement: Option<Arc<Sanitised>>,
        out: &mut Vec<ProtoEvent>,
    ) -> Open {
        if self.open >= MAX_OPEN
            && let Some(c) = self.commands.iter_mut().find(|c| c.open.is_some())
        {
            c.open = None;
            self.open -= 1;
            self.stats.dropped += 1;
        }
        self.open += 1;
        out.push(ProtoEvent::Request {
            key: m.start.offset,
            trace: None,
            start: m.start,
            forward: 0,
        });
        Open {
            key: m.start.offset,
            start: m.start,
            request_end: m.end,
            response_start: None,
            operation,
            statement,
        }
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
        let mut summary = DbSummary::new(self.system, outcome);
        summary.namespace.clone_from(&self.namespace);
        if let Some(s) = &open.statement {
            summary.operation.clone_from(&s.operation);
            summary.collection.clone_from(&s.collection);
            summary.query = Some(s.text.clone());
            summary.batch_size = (s.statements > 1).then_some(s.statements);
        }
        if let Some(op) = open.operation {
            summary.operation = Some(op.into());
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
}

/// A command's sanitised query, marked when the packet was longer than what was kept.
fn query(text: &[u8], cut: bool) -> Arc<Sanitised> {
    let mut statement = sanitise(text, Dialect::Mysql);
    if cut {
        statement.mark_cut();
    }
    Arc::new(statement)
}

impl ConnectionParser for MyConnection {
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
        let mut messages = std::mem::take(&mut self.messages);
        let result = match side {
            Side::Request => {
                let head = Head { keep: KEEP_REQUEST };
                let result = self
                    .requests
                    .feed(&head, data, total, ts, tid, &mut messages);
                for m in &messages {
                    self.on_request(m, out);
                    if self.failed {
                        break;
                    }
                }
                result
            }
            Side::Response if self.reply_lost.is_some() => {
                // The rest of the lost reply: counted, not framed.
                self.reply_lost = Some(self.responses.skip_unframed(total, ts, tid));
                Ok(())
            }
            Side::Response => {
                let keep = if self.phase == Phase::Greeting {
                    KEEP_GREETING
                } else {
                    KEEP_REPLY
                };
                let head = Head { keep };
                let result = self
                    .responses
                    .feed(&head, data, total, ts, tid, &mut messages);
                for m in &messages {
                    self.on_response(m, out);
                    if self.failed {
                        break;
                    }
                }
                result
            }
        };
        messages.clear();
        self.messages = messages;
        if result.is_err() {
            let last = self.responses.last_byte(ts, tid);
            match side {
                Side::Response if !self.failed => self.lose_reply(last),
                _ => self.fail(),
            }
        }
    }

    fn close(&mut self, at: Stamp, out: &mut Vec<ProtoEvent>) {
        let at = Stamp {
            offset: self.responses.offset(),
            ..at
        };
        if let Some(end) = self.reply_lost.take()
            && let Some(command) = self.commands.pop_front()
        {
            self.complete(command.open, end, DbOutcome::Uncaptured, out);
        }
        while let Some(command) = self.commands.pop_front() {
            self.complete(command.open, at, DbOutcome::NoResponse, out);
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
