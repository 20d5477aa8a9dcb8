//! Which connections are `PostgreSQL`: a client's startup message (after a refused encryption
//! request, or as the first plaintext of a TLS connection), or, on a connection older than the
//! agent, a server reading a whole request batch.

use super::{
    GSSENC_REQUEST, MAX_STARTUP, PROTOCOL_3, PgConnection, SSL_REQUEST,
    wire::{be32, cstr},
};
use crate::protocol::{Chunk, Detected, sql::looks_like_statement};

/// A connection is `PostgreSQL` when a client's write is a startup message (protocol 3.0), its
/// length field exactly the bytes moved.
pub fn detect(chunk: &Chunk<'_>) -> Option<Detected> {
    if !chunk.request_side() {
        return None;
    }
    let payload = chunk.payload;
    if payload.len() as u64 != chunk.total {
        return None;
    }
    let server = chunk.server().unwrap_or(!chunk.egress);
    // An SSLRequest or GSSENCRequest is not recognised, as in the programs: the startup message
    // that follows a refusal is, and an accepted TLS request makes a TLS connection, whose
    // plaintext (from the library probes) starts with the startup message.
    let parser = if matches!(startup_kind(payload), Some(StartupKind::Startup)) {
        PgConnection::from_start().at_server(server)
    } else if chunk.server() == Some(true) {
        PgConnection::mid_stream(request_batch(payload)?)
    } else {
        return None;
    };
    Some(Detected {
        server,
        parser: Box::new(parser),
    })
}

/// A Bind message's body, exactly: portal, statement, parameter formats, parameters (each
/// its length, -1 for NULL, then its bytes), result formats.
pub(super) fn is_bind(body: &[u8]) -> bool {
    let be16 = |at: usize| {
        body.get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let bind = || {
        let portal = cstr(body)?.len();
        let statement = cstr(body.get(portal + 1..)?)?.len();
        let mut at = portal + 1 + statement + 1;
        at += 2 + 2 * be16(at)?;
        let params = be16(at)?;
        at += 2;
        for _ in 0..params {
            let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
            at += 4 + usize::try_from(len).unwrap_or(0);
        }
        at += 2 + 2 * be16(at)?;
        Some(at == body.len())
    };
    bind() == Some(true)
}

/// The first tag of a request a client writes whole on a connection older than the agent: a
/// simple query alone, or an extended-query batch from a Parse or Bind to a Sync, each message
/// well formed and the last one ending the write.
pub(super) fn request_batch(payload: &[u8]) -> Option<u8> {
    let (mut at, mut first, mut last, mut count) = (0, None, 0, 0);
    while at < payload.len() {
        let tag = *payload.get(at)?;
        let len = be32(payload.get(at + 1..)?)? as usize;
        let body = payload.get(at + 5..(at + 1).checked_add(len)?)?;
        if len < 4 {
            return None;
        }
        let well_formed = match tag {
            b'Q' => cstr(body)
                .is_some_and(|text| text.len() + 1 == body.len() && looks_like_statement(text)),
            b'P' => {
                let name = cstr(body)?;
                let rest = &body[name.len() + 1..];
                let text = cstr(rest)?;
                let types = &rest[text.len() + 1..];
                looks_like_statement(text)
                    && types.len() >= 2
                    && types.len() == 2 + 4 * usize::from(u16::from_be_bytes([types[0], types[1]]))
            }
            b'D' => {
                matches!(body.first(), Some(b'S' | b'P'))
                    && cstr(&body[1..]).is_some_and(|n| n.len() + 2 == body.len())
            }
            b'E' => cstr(body).is_some_and(|portal| portal.len() + 5 == body.len()),
            b'B' => is_bind(body),
            b'C' => {
                matches!(body.first(), Some(b'S' | b'P'))
                    && cstr(&body[1..]).is_some_and(|n| n.len() + 2 == body.len())
            }
            b'S' | b'H' => body.is_empty(),
            _ => false,
        };
        if !well_formed {
            return None;
        }
        first.get_or_insert(tag);
        last = tag;
        count += 1;
        at += 1 + len;
    }
    match first? {
        b'Q' if count == 1 => Some(b'Q'),
        tag @ (b'P' | b'B') if last == b'S' => Some(tag),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartupKind {
    Startup,
    Encryption,
}

/// A whole untagged startup-phase message: its kind, checked strictly.
pub(super) fn startup_kind(payload: &[u8]) -> Option<StartupKind> {
    let len = be32(payload)?;
    let code = be32(payload.get(4..)?)?;
    if len as usize != payload.len() {
        return None;
    }
    match code {
        SSL_REQUEST | GSSENC_REQUEST if len == 8 => Some(StartupKind::Encryption),
        PROTOCOL_3 if (9..=MAX_STARTUP).contains(&len) => {
            // key\0value\0 ... \0: printable keys, a final empty key.
            let params = payload.get(8..)?;
            (params.last() == Some(&0) && params.first().is_some_and(u8::is_ascii_lowercase))
                .then_some(StartupKind::Startup)
        }
        _ => None,
    }
}
