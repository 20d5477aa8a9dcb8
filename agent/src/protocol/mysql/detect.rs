//! Which connections are `MySQL`/`MariaDB`: from the server's greeting, or, on a connection
//! older than the agent, from a client's command packet checked strictly.

use super::{
    MyConnection,
    wire::{MAX_PACKET, com, greeting, header, le32},
};
use crate::protocol::{Chunk, Detected, sql::looks_like_statement};

/// A connection is `MySQL` from the server's greeting, or, open before the agent, from a
/// client's command ([`detect_mid_stream`]).
pub fn detect(chunk: &Chunk<'_>) -> Option<Detected> {
    detect_greeting(chunk).or_else(|| detect_mid_stream(chunk))
}

/// A connection is `MySQL` when the server's first packet is a protocol-10 greeting: its length
/// exactly the bytes moved (or, read apart by the client, a lone 4-byte header of sequence 0
/// whose body the parser then checks), a printable NUL-terminated version string.
pub(super) fn detect_greeting(chunk: &Chunk<'_>) -> Option<Detected> {
    // The server speaks first: this is the response side.
    if chunk.server().is_some_and(|server| server != chunk.egress) {
        return None;
    }
    let payload = chunk.payload;
    if payload.len() as u64 != chunk.total {
        return None;
    }
    let server = chunk.server().unwrap_or(chunk.egress);
    let (len, seq) = header(payload)?;
    let header_alone = payload.len() == 4
        && chunk.server() == Some(false)
        && (40..=1024).contains(&len)
        && seq == 0;
    let whole = seq == 0 && len + 4 == chunk.total && greeting(payload.get(4..)?).is_some();
    (header_alone || whole).then(|| Detected {
        server,
        parser: Box::new(MyConnection::new()),
    })
}

/// A command packet a client writes whole on a connection older than the agent: one packet of
/// sequence 0 exactly filling the syscall, a command the kernel's detection also accepts, with
/// the arguments that command carries.
pub fn detect_mid_stream(chunk: &Chunk<'_>) -> Option<Detected> {
    if !chunk.request_side() {
        return None;
    }
    let payload = chunk.payload;
    if payload.len() as u64 != chunk.total {
        return None;
    }
    let (len, seq) = header(payload)?;
    if seq != 0 || len + 4 != chunk.total || len >= MAX_PACKET {
        return None;
    }
    let (&command, args) = payload.get(4..)?.split_first()?;
    let plausible = match command {
        com::QUERY | com::STMT_PREPARE => looks_like_statement(args),
        com::INIT_DB => {
            !args.is_empty() && args.len() <= 64 && args.iter().all(u8::is_ascii_graphic)
        }
        com::PING => args.is_empty(),
        com::STMT_CLOSE | com::STMT_RESET => args.len() == 4,
        // Statement id, flags (cursor type), iteration count 1, then parameters.
        com::STMT_EXECUTE => args.len() >= 9 && args[4] <= 0x0f && le32(args, 5) == Some(1),
        _ => false,
    };
    plausible.then(|| Detected {
        server: chunk.server().unwrap_or(!chunk.egress),
        parser: Box::new(MyConnection::mid_stream()),
    })
}
