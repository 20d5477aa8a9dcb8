//! Recognises what a connection speaks from the first bytes of its data syscalls, while its
//! protocol is not known yet (the rules are `agent_common::Protocol`'s).
//!
//! Looser than the agent's detectors, never stricter: a connection the programs call opaque
//! stops sending bytes, so a miss here loses every span of the connection, while a false match
//! only costs records until the agent gives up and marks it opaque itself. Each rule is still
//! exact where the protocol allows (a length field equal to the bytes the syscall moved), and
//! none matches a TLS record (`16 03 ..`) or another rule's bytes. Checks run in a fixed order,
//! the cheapest first.

use agent_common::{
    ConnInfo, DETECT_CHUNKS, HTTP2_PREFACE_PREFIX, MAX_CAPTURE_BYTES, MEMCACHED_META_PREFIXES,
    MEMCACHED_PREFIXES, MYSQL_CLIENT_SSL, POSTGRES_PROTOCOL_3, Protocol, REQUEST_PREFIXES, Role,
};

type Payload = [u8; 2 * MAX_CAPTURE_BYTES];

/// Looks at one data syscall of a connection still being detected (`entry` is its table
/// entry; `role_egress` its [`Role`], plus 256 for an egress syscall); [`DETECT_CHUNKS`]
/// syscalls that match nothing make it opaque. The record of this syscall is sent either way,
/// so the agent's own detectors see the same bytes.
///
/// A function of its own in the object (a BPF-to-BPF call, at most five arguments), and so is
/// each protocol's check: inlined, every point where a check fails left its own knowledge of
/// the payload's bytes in registers, the states multiplied from check to check, and the
/// verifier, walking every path, went past its million-instruction limit. Behind a call only
/// the boolean result comes back, and the paths join again.
///
/// Returns what it found ([`Protocol::Detecting`] for nothing yet).
#[inline(never)]
pub fn detect(
    entry: *mut ConnInfo,
    role_egress: u32,
    payload: &Payload,
    len: u32,
    moved: u64,
) -> u32 {
    if entry.is_null() {
        return Protocol::Detecting as u32;
    }
    let role = role_egress & 0xff;
    let egress = role_egress & 0x100 != 0;
    let unknown = role == Role::Unknown as u32;
    // A client's writes, a server's reads; either when the role is unknown.
    let request_side = unknown || (role == Role::Client as u32) == egress;
    // What the server says first (MySQL's greeting): a server's writes, a client's reads.
    let response_side = unknown || (role == Role::Client as u32) != egress;
    let prefix = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
    let found = if len < 4 {
        Protocol::Detecting
    } else if request_side && is_one_of(prefix, &REQUEST_PREFIXES) {
        Protocol::Http
    } else if request_side && prefix == HTTP2_PREFACE_PREFIX {
        Protocol::Http2
    } else if is_tls_record(payload, len) {
        Protocol::Tls
    } else if request_side && is_redis_request(payload, len) {
        Protocol::Redis
    } else if request_side
        && (is_postgres_startup(payload, len, moved) || is_postgres_query(payload, len, moved))
    {
        Protocol::Postgres
    } else if (response_side && is_mysql_greeting(payload, len, moved))
        || (request_side && is_mysql_command(payload, len, moved))
    {
        Protocol::Mysql
    } else if request_side
        && (is_one_of(prefix, &MEMCACHED_PREFIXES)
            || is_one_of(prefix & 0x00ff_ffff, &MEMCACHED_META_PREFIXES))
    {
        Protocol::Memcached
    } else if egress && role != Role::Server as u32 && is_dns_query(payload, len, moved) {
        Protocol::Dns
    } else if len >= 9 && is_http2_frame(payload, moved) {
        // Frames look alike from both ends, so the role is not needed here (a socket open before
        // the agent has none in this table: the agent infers it from procfs).
        Protocol::Http2
    } else {
        Protocol::Detecting
    };
    // SAFETY: a pointer from a successful lookup in this run; a racing update can at worst
    // delay the decision by one syscall.
    unsafe {
        if found == Protocol::Detecting {
            (*entry).misses += 1;
            if (*entry).misses >= DETECT_CHUNKS {
                (*entry).protocol = Protocol::Opaque as u32;
            }
        } else {
            (*entry).protocol = found as u32;
        }
    }
    found as u32
}

#[inline(always)]
fn is_one_of<const N: usize>(prefix: u32, table: &[u32; N]) -> bool {
    let mut found = false;
    let mut i = 0;
    while i < N {
        if table[i] == prefix {
            found = true;
        }
        i += 1;
    }
    found
}

#[inline(always)]
fn is_digit(b: u8) -> bool {
    b.is_ascii_digit()
}

/// A TLS record header (RFC 8446 §5.1): content type change-cipher-spec, alert, handshake or
/// application data; legacy version 3.x (SSL 3.0 to TLS 1.3 all say 3.1–3.4 or 3.0); a length
/// within the limit for a protected record. From either end: the first bytes a TLS client
/// writes (`ClientHello`), or any record of a connection open before the agent.
#[inline(never)]
fn is_tls_record(p: &Payload, len: u32) -> bool {
    let length = u16::from_be_bytes([p[3], p[4]]);
    len >= 5
        && (0x14..=0x17).contains(&p[0])
        && p[1] == 3
        && p[2] <= 4
        && length > 0
        && length <= 18_432
}

/// The start of a RESP request: an array of 1 to 9999 elements whose first is a bulk string
/// (`*3\r\n$3\r\nSET…`). Every request of a connection starts so, so a connection open
/// before the agent is recognised too.
#[inline(never)]
fn is_redis_request(p: &Payload, len: u32) -> bool {
    if len < 6 || p[0] != b'*' || !(b'1'..=b'9').contains(&p[1]) {
        return false;
    }
    // The count's end: the first of positions 2..=5 that is not a digit must be "\r\n$".
    let mut i = 2;
    while i < 6 && is_digit(p[i]) {
        i += 1;
    }
    i < 6
        && u32::try_from(i + 3).is_ok_and(|end| end <= len)
        && p[i] == b'\r'
        && p[i + 1] == b'\n'
        && p[i + 2] == b'$'
}

/// A PostgreSQL startup packet: a big-endian length equal to the bytes the syscall moved, then
/// protocol 3.0 (at least one parameter follows).
#[inline(never)]
fn is_postgres_startup(p: &Payload, len: u32, moved: u64) -> bool {
    if len < 8 {
        return false;
    }
    let length = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
    let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    if u64::from(length) != moved {
        return false;
    }
    // An SSLRequest or GSSENCRequest decides nothing yet: refused (`N`), the startup message
    // follows in cleartext and is recognised then; accepted (`S`), a TLS handshake follows and
    // the connection is recognised as TLS, its plaintext coming from the library probes.
    code == POSTGRES_PROTOCOL_3 && (9..=10_000).contains(&length)
}

/// A PostgreSQL client message that starts a query on a connection open before the agent:
/// `Q` (simple query, its length exactly the rest of the bytes moved), or `P`/`B` (extended
/// query: Parse or Bind, usually followed in the same write by the rest of the batch).
#[inline(never)]
fn is_postgres_query(p: &Payload, len: u32, moved: u64) -> bool {
    if len < 6 {
        return false;
    }
    let length = u64::from(u32::from_be_bytes([p[1], p[2], p[3], p[4]]));
    match p[0] {
        b'Q' => length + 1 == moved && length > 5,
        b'P' | b'B' => length >= 4 && length < moved,
        _ => false,
    }
}

/// A MySQL/MariaDB command packet a client writes whole (length exactly the rest of the bytes
/// moved, sequence 0) on a connection open before the agent: query, prepare, execute, close,
/// reset, ping, init-db.
#[inline(never)]
fn is_mysql_command(p: &Payload, len: u32, moved: u64) -> bool {
    if len < 5 {
        return false;
    }
    let length = u32::from_le_bytes([p[0], p[1], p[2], 0]);
    u64::from(length) + 4 == moved
        && p[3] == 0
        && matches!(p[4], 0x02 | 0x03 | 0x0e | 0x16 | 0x17 | 0x19 | 0x1a)
}

/// On a MySQL connection (`entry`, its [`Role`] plus 256 for an egress syscall in
/// `role_egress`), a client's SSL request — the short handshake response: a packet of 32
/// bytes, sequence 1, `CLIENT_SSL` among its capabilities, moved whole — makes the connection a
/// TLS one from here: its ciphertext is never sent, the TLS probes' plaintext (the full
/// handshake response, then the commands) is. An end that reads the request apart is not
/// switched; the agent's parser never pairs the ciphertext it then sees.
#[inline(never)]
pub fn mysql_ssl_request(
    entry: *mut ConnInfo,
    role_egress: u32,
    p: &Payload,
    len: u32,
    moved: u64,
) -> u32 {
    let role = role_egress & 0xff;
    let egress = role_egress & 0x100 != 0;
    let request_side = role == Role::Unknown as u32 || (role == Role::Client as u32) == egress;
    if entry.is_null() || !request_side || moved != 36 || len < 8 {
        return 0;
    }
    let capabilities = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
    if p[0] != 32 || p[1] != 0 || p[2] != 0 || p[3] != 1 || capabilities & MYSQL_CLIENT_SSL == 0 {
        return 0;
    }
    // SAFETY: a pointer from a successful lookup in this run, as in `detect`.
    unsafe { (*entry).protocol = Protocol::Tls as u32 };
    1
}

/// A MySQL/MariaDB server greeting: a packet (`u24` little-endian length equal to the bytes the
/// syscall moved, less the header; sequence 0) of protocol 10 whose version string starts with
/// a digit.
#[inline(never)]
fn is_mysql_greeting(p: &Payload, len: u32, moved: u64) -> bool {
    if len < 6 {
        return false;
    }
    let length = u32::from_le_bytes([p[0], p[1], p[2], 0]);
    u64::from(length) + 4 == moved && p[3] == 0 && p[4] == 0x0a && is_digit(p[5])
}

/// A standard DNS query a client sends whole: over UDP the message itself, over TCP after a
/// two-byte length equal to the rest of the bytes moved. Opcode 0, one question, no answers,
/// at most one additional record (EDNS), and a first label of 1 to 63 bytes.
#[inline(never)]
fn is_dns_query(p: &Payload, len: u32, moved: u64) -> bool {
    if u64::from(len) != moved || len < 17 {
        return false;
    }
    is_dns_header(p, 0)
        || (u64::from(u16::from_be_bytes([p[0], p[1]])) + 2 == moved && is_dns_header(p, 2))
}

#[inline(always)]
fn is_dns_header(p: &Payload, at: usize) -> bool {
    // QR 0 and opcode 0 are the top five bits of the flags.
    p[at + 2] & 0xf8 == 0
        && p[at + 4] == 0
        && p[at + 5] == 1
        && p[at + 6] == 0
        && p[at + 7] == 0
        && p[at + 8] == 0
        && p[at + 9] == 0
        && p[at + 10] == 0
        && p[at + 11] <= 1
        && (1..=63).contains(&p[at + 12])
}

/// Whether the payload starts with an HTTP/2 frame header a peer could send, of a frame the
/// syscall moved whole (RFC 9113 §4.1, §6; the agent's `FrameHeader::plausible`).
#[inline(never)]
fn is_http2_frame(payload: &Payload, moved: u64) -> bool {
    let len = u32::from_be_bytes([0, payload[0], payload[1], payload[2]]);
    let kind = payload[3];
    let reserved = payload[5] & 0x80 != 0;
    let stream = u32::from_be_bytes([payload[5] & 0x7f, payload[6], payload[7], payload[8]]);
    if reserved || 9 + u64::from(len) > moved {
        return false;
    }
    let on_stream = stream != 0;
    match kind {
        // DATA, HEADERS, PUSH_PROMISE, CONTINUATION
        0 | 1 | 5 | 9 => on_stream,
        // PRIORITY
        2 => on_stream && len == 5,
        // RST_STREAM
        3 => on_stream && len == 4,
        // SETTINGS
        4 => !on_stream && len.is_multiple_of(6),
        // PING
        6 => !on_stream && len == 8,
        // GOAWAY
        7 => !on_stream && len >= 8,
        // WINDOW_UPDATE
        8 => len == 4,
        _ => false,
    }
}
