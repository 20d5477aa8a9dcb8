//! The server's replies, framed packet by packet: OK, ERR, result sets (column count,
//! definitions, EOF unless `CLIENT_DEPRECATE_EOF`, rows, more results) and prepare replies.

use super::{
    After, Eof, Kind, MAX_STATEMENTS, MyConnection, Phase, Reply,
    wire::{MAX_PACKET, MORE_RESULTS, caps, error_code, greeting, le16, le32, lenenc, ok_status},
};
use crate::protocol::{ProtoEvent, db::DbOutcome, frames::Message};

impl MyConnection {
    // One match over (command kind, reply state) reads as the protocol's reply grammar; split
    // up it would hide which packet may follow which.
    #[allow(clippy::too_many_lines)]
    pub(super) fn on_response(&mut self, m: &Message, out: &mut Vec<ProtoEvent>) {
        let continued = std::mem::replace(&mut self.response_continues, m.len == MAX_PACKET);
        self.last_reply_end = Some(m.end);
        match self.phase {
            Phase::Greeting => {
                match greeting(&m.body).filter(|_| m.tag == 0) {
                    Some((system, caps)) => {
                        self.system = system;
                        self.server_caps = Some(caps);
                        self.phase = Phase::HandshakeResponse;
                    }
                    // What detection took for a greeting's header was not one.
                    None => self.fail(),
                }
                return;
            }
            Phase::HandshakeResponse | Phase::TlsHandshakeResponse => return self.fail(),
            Phase::Auth => {
                // OK ends the authentication; auth switch / more data / ERR are auth's own.
                if m.body.first() == Some(&0x00) {
                    self.phase = Phase::Ready;
                }
                return;
            }
            Phase::Ready => {}
        }
        let known_deprecate_eof = self.deprecate_eof();
        let Some(command) = self.commands.front_mut() else {
            self.stats.unmatched += 1;
            if self.picked_up.is_some() {
                // A reply no command asked for: the client pipelines (a MariaDB connector's
                // batch), so replies may have been paired one command late. Nothing more.
                self.fail();
            }
            return;
        };
        if let Some(expected) = command.seq {
            if m.tag != expected {
                // Out of sequence: this is not the reply being read.
                return self.fail();
            }
            command.seq = Some(expected.wrapping_add(1));
        }
        if let Some(open) = command.open.as_mut() {
            // A header begun before the command was written (only bytes that are not what they
            // claim) still never starts the response before its request.
            let at = if m.start.ts < open.start.ts {
                open.start
            } else {
                m.start
            };
            open.response_start.get_or_insert(at);
        }
        if continued {
            return;
        }
        let first = m.body.first().copied();
        let mut deprecate_eof = known_deprecate_eof;
        let is_eof = first == Some(0xfe) && m.len < 9;
        // A 4.1 EOF packet is 5 bytes; the OK that replaces it (`0xFE` too) at least 7.
        let eof_packet = first == Some(0xfe) && m.len == 5;
        let mut learnt = None;
        let mut consumed = false;
        if let Reply::MaybeEof { next } = command.reply {
            let deprecated = !eof_packet;
            learnt = Some(deprecated);
            deprecate_eof = Some(deprecated);
            command.reply = follow(next, deprecate_eof);
            consumed = eof_packet;
        }
        let eof_mode = Eof::after_defs(deprecate_eof);
        let end = match (command.kind, command.reply) {
            _ if consumed => (command.reply == Reply::First).then_some(Ok(())),
            (_, Reply::First | Reply::Infile) if first == Some(0xff) => {
                Some(Err(error_code(&m.body)))
            }
            // Picked up mid-stream, only an OK answers (an ERR is above).
            (Kind::Simple, Reply::First)
                if first == Some(0x00) || known_deprecate_eof.is_some() =>
            {
                Some(Ok(()))
            }
            (Kind::Results, Reply::First | Reply::Infile) if first == Some(0x00) => {
                if ok_status(&m.body).is_some_and(|s| s & MORE_RESULTS != 0) {
                    command.reply = Reply::First;
                    None
                } else {
                    Some(Ok(()))
                }
            }
            (Kind::Results, Reply::First) if first == Some(0xfb) => {
                command.reply = Reply::Infile;
                command.seq = None;
                None
            }
            (Kind::Results, Reply::First) => match lenenc(&m.body, 0) {
                Some((n, _)) if n > 0 => {
                    command.reply = Reply::Defs {
                        left: n,
                        eof: eof_mode,
                        next: After::Rows,
                    };
                    None
                }
                _ => return self.fail(),
            },
            (Kind::Prepare, Reply::First) if first == Some(0x00) && m.body.len() >= 9 => {
                let id = le32(&m.body, 1).unwrap_or(0);
                let columns = le16(&m.body, 5).unwrap_or(0);
                let params = le16(&m.body, 7).unwrap_or(0);
                if let Some(statement) = command.open.as_ref().and_then(|o| o.statement.clone()) {
                    if self.statements.len() >= MAX_STATEMENTS
                        && !self.statements.contains_key(&id)
                        && let Some(&any) = self.statements.keys().next()
                    {
                        // No order is kept: any one goes.
                        self.statements.remove(&any);
                        self.stats.statements_evicted += 1;
                    }
                    self.statements.insert(id, statement);
                }
                let next = after_defs(columns, deprecate_eof);
                command.reply = if params > 0 {
                    Reply::Defs {
                        left: u64::from(params),
                        eof: eof_mode,
                        next: After::Columns(columns),
                    }
                } else {
                    next
                };
                (command.reply == Reply::First).then_some(Ok(()))
            }
            (_, Reply::Defs { left, eof, next }) => {
                let left = left - 1;
                command.reply = if left > 0 {
                    Reply::Defs { left, eof, next }
                } else {
                    match eof {
                        Eof::Yes => Reply::Eof { next },
                        Eof::No => follow(next, deprecate_eof),
                        Eof::Unknown => Reply::MaybeEof { next },
                    }
                };
                (command.reply == Reply::First).then_some(Ok(()))
            }
            (_, Reply::Eof { next }) if is_eof => {
                command.reply = follow(next, deprecate_eof);
                (command.reply == Reply::First).then_some(Ok(()))
            }
            (_, Reply::Rows) if first == Some(0xff) => Some(Err(error_code(&m.body))),
            (_, Reply::Rows) if first == Some(0xfe) && m.len < MAX_PACKET => {
                let status = if eof_packet {
                    le16(&m.body, 3)
                } else {
                    ok_status(&m.body)
                };
                if status.is_some_and(|s| s & MORE_RESULTS != 0) {
                    command.reply = Reply::First;
                    None
                } else {
                    Some(Ok(()))
                }
            }
            (_, Reply::Rows) => None,
            _ => return self.fail(),
        };
        if let Some(deprecated) = learnt {
            self.caps = Some(if deprecated { caps::DEPRECATE_EOF } else { 0 });
        }
        let Some(result) = end else {
            return;
        };
        let Some(command) = self.commands.pop_front() else {
            return;
        };
        let outcome = match result {
            Ok(()) => {
                if let Some(database) = command.database {
                    self.namespace = Some(database);
                }
                DbOutcome::Ok
            }
            Err(code) => DbOutcome::Error { code },
        };
        self.complete(command.open, m.end, outcome, out);
    }
}

/// What follows definitions: rows, the prepare's column definitions, or the end (`First`
/// stands for "done" here and is turned into completion by the caller).
pub(super) fn follow(next: After, deprecate_eof: Option<bool>) -> Reply {
    match next {
        After::Rows => Reply::Rows,
        After::Columns(columns) => after_defs(columns, deprecate_eof),
        After::Done => Reply::First,
    }
}

/// A prepare reply's column definitions, or the end when it has none.
pub(super) fn after_defs(columns: u16, deprecate_eof: Option<bool>) -> Reply {
    if columns == 0 {
        Reply::First
    } else {
        Reply::Defs {
            left: u64::from(columns),
            eof: Eof::after_defs(deprecate_eof),
            next: After::Done,
        }
    }
}
