//! Keys, values and names of the maps the programs and the agent share.

use crate::SockTuple;

/// Ring buffer of [`crate::EventHeader`]-prefixed records.
pub const MAP_EVENTS: &str = "EVENTS";
/// Tracked sockets: [`ConnKey`] → [`ConnInfo`].
pub const MAP_CONNS: &str = "CONNS";
/// Per-CPU counters indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Default ring size; a power of two times the page size, as the kernel requires.
pub const DEFAULT_RING_BYTES: u32 = 8 * 1024 * 1024;
/// Default bound of the in-kernel connection table (an LRU: the oldest entries go first).
pub const DEFAULT_MAX_CONNS: u32 = 65_536;

/// A socket as the process sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: i32,
}
const _: () = assert!(core::mem::size_of::<ConnKey>() == 8);

/// The state the programs keep per tracked socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    pub conn_id: u64,
    pub tuple: SockTuple,
    /// A [`crate::Role`].
    pub role: u32,
    /// 1 when the socket is not `AF_INET`/`AF_INET6` (a unix socket, say): remembered so that
    /// its traffic is skipped without walking the kernel's structs again, but never reported.
    pub ignored: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// A [`Protocol`]: what the first data syscalls showed.
    pub protocol: u32,
    /// Data syscalls seen while [`Protocol::Detecting`] that did not start a request.
    pub misses: u32,
    /// The socket's `struct tcp_sock` when it is TCP (0 otherwise): where its sequence numbers
    /// are read ([`crate::DataEvent::seq`]). Valid while the fd is in the table: close removes
    /// it first.
    pub tcp_sk: u64,
    /// In the budget's states ([`Protocol::is_budget_state`]): the [`crate::Direction`] of the
    /// last data syscall, 0 when none was seen since the agent set the state. A server's read
    /// after a write, a client's write after a read, starts a request.
    pub last_direction: u32,
    /// A shed server connection's request being served: what it asks (a hash of its request
    /// line, see the programs' `shed.rs`), 0 none.
    pub hidden_ask: u32,
    /// That request's reader (`pid_tgid`): whose hidden work it is, whichever thread answers.
    pub hidden_reader: u64,
    /// In the in-band mode: the [`crate::Direction`] of the last data syscall (0 none yet). A
    /// server's read after anything but a read, a client's write after anything but a write,
    /// starts a request.
    pub inband_direction: u32,
    /// In the in-band mode, on a TLS connection: [`INBAND_TLS_IN_ORDER`] once the agent found
    /// that its plaintext speaks a protocol answered one request at a time, in order (HTTP/1,
    /// the datastores): the programs then follow its records as they follow a plaintext
    /// connection's bytes (a request's first record carries its context);
    /// [`INBAND_TLS_STREAMS`] once it found HTTP/2 there (the client's writes carry the
    /// connection form). 0 otherwise, and until then (its handshake is never taken for a
    /// request).
    pub inband_tls: u32,
    /// In the in-band mode: the CLIENT span id the last SERVER request on this connection
    /// adopted. A segmentation offload copies a request's option onto every segment of its
    /// write; a pipelined request that happens to start on one of them must not adopt it again.
    /// On a connection of streams (HTTP/2), the connection form's token instead: on the
    /// accepting end the last one reported, on the connecting end the one drawn.
    pub inband_adopted: [u8; 8],
    /// In the in-band mode: the thread (`pid_tgid`) that read this connection's request still
    /// open (counted in its [`InbandServing`]), 0 when none: whichever thread answers or closes,
    /// that thread's count goes down.
    pub inband_reader: u64,
    /// The socket's `struct sock` (any inet socket, 0 until known). Capture at the socket layer
    /// ([`SEND_FAMILIES`]) sees no `close`: a send or receive whose socket is not this
    /// one finds the entry of a closed fd whose number was reused, and closes it then.
    pub sk: u64,
}
const _: () =
    assert!(core::mem::size_of::<ConnInfo>() == 8 + 40 + 8 + 16 + 8 + 8 + 8 + 8 + 8 + 8 + 8 + 8);

/// `SHED_CONTROL[0]`: non-zero while the agent's budget sheds any connection. Only then do the
/// programs count hidden work and look it up for [`crate::DATA_HIDDEN_WORK`].
pub const MAP_SHED_CONTROL: &str = "SHED_CONTROL";
/// Each thread's hidden work while the budget sheds (`pid_tgid` → 64 bytes: an overflow count
/// and 15 request-line hashes); the agent empties it when shedding stops.
pub const MAP_HIDDEN_WORK: &str = "HIDDEN_WORK";
/// The processes known to make client calls while the budget sheds (`tgid` → 1): written by the
/// programs at a `connect` and by the agent for a process it sheds that has client connections;
/// emptied with [`MAP_HIDDEN_WORK`]. Only their hidden requests are worth reading (what each asks,
/// whether an answer is interim): any other process's hidden request is taken as asking anything
/// and stays its reader's hidden work until its connection's next request starts (or the
/// connection closes or resumes), which costs the programs no read of user memory and can only
/// refuse more parents, never name one.
pub const MAP_SHED_CALLERS: &str = "SHED_CALLERS";
/// The processes whose new client connections the budget sheds from their opening (`tgid` →
/// the lowest rank shed, as [`crate::rank::rank_of`] counts): processes the agent knows to start
/// every trace they are in (they serve nothing), so that a load of one request per connection,
/// which no connection's history would ever name an edge, is shed too. Read at a `connect`
/// while [`MAP_SHED_CONTROL`] is set.
pub const MAP_SHED_OPENS: &str = "SHED_OPENS";
/// The client ends shed at their opening ([`crate::CONN_SHED_AT_OPEN`]), by
/// [`crate::rank::rank_hash`] (the same at both ends): a server end on this host finding its
/// connection here at its first syscall is shed from it, and the entry goes. An LRU: the entries
/// of client ends whose server is elsewhere are never taken.
pub const MAP_SHED_TUPLES: &str = "SHED_TUPLES";

/// The exit programs a socket syscall's exit is handed to, by family (`EXIT_FAMILIES[i]` sits
/// at index `i` of [`MAP_EXIT_JUMPS`]): the dispatcher on `raw_syscalls/sys_exit` picks one by
/// syscall number and tail-calls it. Each is verified on its own (its own instruction budget and
/// 512-byte stack), which the whole capture path in one program no longer fitted.
pub const EXIT_FAMILIES: [&str; 6] = [
    "sys_exit_open",
    "sys_exit_buffer",
    "sys_exit_vector",
    "sys_exit_other",
    "sys_exit_discover",
    "sys_exit_message",
];
/// Indices into [`EXIT_FAMILIES`].
pub mod exit_family {
    /// `accept`, `accept4`, `connect`.
    pub const OPEN: u32 = 0;
    /// One buffer: `read`, `write`, `recvfrom`, `sendto`.
    pub const BUFFER: u32 = 1;
    /// iovecs: `readv`, `writev`.
    pub const VECTOR: u32 = 2;
    /// `recvmmsg`, `sendmmsg`, `sendfile`.
    pub const OTHER: u32 = 3;
    /// Not a family: the program that walks the kernel's structs for an fd a family's program
    /// did not find in the table, then hands the exit back.
    pub const DISCOVER: u32 = 4;
    /// A message header's iovecs: `recvmsg`, `sendmsg`. Apart from `readv`/`writev`: together
    /// the verifier walked 455,000 instructions, apart under half as many.
    pub const MESSAGE: u32 = 5;
}
/// The program array the exit dispatcher tail-calls into.
pub const MAP_EXIT_JUMPS: &str = "EXIT_JUMPS";

/// The family programs of capture at the socket layer, after a send (`sock_send_length`), at
/// the same indices as [`EXIT_FAMILIES`] (the `open` slot stays empty: opens come from
/// `inet_sock_set_state`). The kernel refuses a tail call into a program loaded for another
/// hook, so each hook has its own copies and its own program array.
pub const SEND_FAMILIES: [&str; 6] = [
    "",
    "sock_send_buffer",
    "sock_send_vector",
    "sock_send_other",
    "sock_send_discover",
    "sock_send_message",
];
/// The same after a receive (`sock_recv_length`).
pub const RECV_FAMILIES: [&str; 6] = [
    "",
    "sock_recv_buffer",
    "sock_recv_vector",
    "sock_recv_other",
    "sock_recv_discover",
    "sock_recv_message",
];
/// The program array the `sock_send_length` dispatcher tail-calls into.
pub const MAP_SEND_JUMPS: &str = "SEND_JUMPS";
/// The program array the `sock_recv_length` dispatcher tail-calls into.
pub const MAP_RECV_JUMPS: &str = "RECV_JUMPS";

/// What a connection speaks, as far as the programs can tell from its first bytes. They
/// recognise, with the same rules as the agent's detectors but looser (so they never give up on
/// a connection the agent would still parse): the start of an HTTP/1 request on the request side
/// (a client's writes, a server's reads, either when the role is unknown: four bytes of the
/// method); HTTP/2's client preface there; a plausible HTTP/2 frame header at the start of a
/// syscall's bytes, on either side (a connection open before the agent); and the first message
/// of each datastore protocol (`agent-ebpf/src/detect.rs`). The agent confirms, and marks the
/// connection [`Protocol::Opaque`] in the table when it gives up.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Every data syscall is sent in full while the first [`DETECT_CHUNKS`] are looked at.
    Detecting = 0,
    /// HTTP/1: every data syscall is sent.
    Http = 1,
    /// Nothing sockspan parses: with [`crate::CaptureConfig::skip_opaque`], no data records,
    /// only byte totals at close.
    Opaque = 2,
    /// HTTP/2 (gRPC): every data syscall is sent.
    Http2 = 3,
    /// Redis (RESP): a request array of bulk strings.
    Redis = 4,
    /// PostgreSQL: a startup message or an SSL/GSSAPI encryption request; on a connection open
    /// before the agent, a simple query or a Parse/Bind.
    Postgres = 5,
    /// MySQL/MariaDB: the server's greeting (protocol 10); on a connection open before the
    /// agent, a command packet written whole.
    Mysql = 6,
    /// memcached's text protocol: a command word.
    Memcached = 7,
    /// DNS: a query written whole (UDP, or TCP after its length).
    Dns = 8,
    /// TLS: a record header (`16 03 ..` and the rest). The socket's own bytes (ciphertext) are
    /// counted, never sent; the plaintext comes from the TLS library probes instead.
    Tls = 9,
    /// Shed by the agent's CPU and memory budget (`--max-cpu`, `--max-memory`): like
    /// [`Protocol::Opaque`], no data records, only byte totals (and [`Counter::ShedSyscalls`]);
    /// a server connection's hidden requests are counted per thread ([`crate::DATA_HIDDEN_WORK`]).
    /// The states the budget moves a connection through are written by the agent; the programs
    /// make each switch at a request's first syscall, so no exchange is cut in two.
    Shed = 10,
    /// Sent as before until the next request starts (a server's read after a write, a client's
    /// write after a read), then [`Protocol::Shed`].
    ShedNext = 11,
    /// Shed until the next request starts, then [`Protocol::Detecting`] again from that
    /// request's first syscall, whose record carries [`crate::DATA_RESUMED`].
    ResumeNext = 12,
}

impl Protocol {
    /// One of the budget's states ([`Protocol::Shed`], [`Protocol::ShedNext`],
    /// [`Protocol::ResumeNext`]).
    #[must_use]
    pub const fn is_budget_state(value: u32) -> bool {
        value >= Self::Shed as u32 && value <= Self::ResumeNext as u32
    }
}

/// The TLS library functions the TLS probes attach to, as their attach cookie: OpenSSL's, and
/// Go's `crypto/tls`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslFunction {
    /// `int SSL_write(SSL *ssl, const void *buf, int num)`: returns the bytes written.
    Write = 0,
    /// `int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)`: returns 1 on
    /// success, the count in `*written`.
    WriteEx = 1,
    /// `int SSL_read(SSL *ssl, void *buf, int num)`.
    Read = 2,
    /// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`.
    ReadEx = 3,
    /// Go: `func (c *tls.Conn) Write(b []byte) (int, error)`.
    GoWrite = 4,
    /// Go: `func (c *tls.Conn) Read(b []byte) (int, error)`.
    GoRead = 5,
    /// Go: `func (c *tls.Conn) serverHandshake(ctx context.Context) error`: what the socket
    /// syscalls inside it read (a request sent right after the handshake, say) may be served
    /// by a later `Read` without a syscall, so they tie the `*tls.Conn` to its socket too.
    GoServerHandshake = 6,
    /// Go: `func (c *tls.Conn) clientHandshake(ctx context.Context) error`, likewise.
    GoClientHandshake = 7,
    /// `int SSL_do_handshake(SSL *ssl)`: no plaintext; the socket syscalls inside it, or the
    /// socket its thread read just before it (memory BIOs), tie the `SSL *` to its socket
    /// before the first `SSL_write`.
    Handshake = 8,
}

impl SslFunction {
    /// OpenSSL's.
    pub const ALL: [Self; 5] = [
        Self::Write,
        Self::WriteEx,
        Self::Read,
        Self::ReadEx,
        Self::Handshake,
    ];
    /// Go's `crypto/tls`.
    pub const GO: [Self; 4] = [
        Self::GoWrite,
        Self::GoRead,
        Self::GoServerHandshake,
        Self::GoClientHandshake,
    ];

    #[must_use]
    pub const fn symbol(self) -> &'static str {
        match self {
            Self::Write => "SSL_write",
            Self::WriteEx => "SSL_write_ex",
            Self::Read => "SSL_read",
            Self::ReadEx => "SSL_read_ex",
            Self::Handshake => "SSL_do_handshake",
            Self::GoWrite => "crypto/tls.(*Conn).Write",
            Self::GoRead => "crypto/tls.(*Conn).Read",
            Self::GoServerHandshake => "crypto/tls.(*Conn).serverHandshake",
            Self::GoClientHandshake => "crypto/tls.(*Conn).clientHandshake",
        }
    }

    /// Whether the call writes plaintext (else reads it).
    #[must_use]
    pub const fn writes(self) -> bool {
        matches!(self, Self::Write | Self::WriteEx | Self::GoWrite)
    }

    #[must_use]
    pub const fn from_u64(value: u64) -> Option<Self> {
        match value {
            0 => Some(Self::Write),
            1 => Some(Self::WriteEx),
            2 => Some(Self::Read),
            3 => Some(Self::ReadEx),
            4 => Some(Self::GoWrite),
            5 => Some(Self::GoRead),
            6 => Some(Self::GoServerHandshake),
            7 => Some(Self::GoClientHandshake),
            _ => None,
        }
    }
}

/// A TLS read or write in progress: saved at the function's entry, taken at its return. An
/// OpenSSL call's on its thread (`SSL_CALLS`, keyed by `pid_tgid`); a Go call's on its goroutine
/// (`GO_TLS_CALLS`, keyed by [`SslKey`] with the goroutine's `g`: a goroutine may wait for its
/// socket and go on on another thread).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SslCall {
    /// The `SSL *` (OpenSSL), the `*tls.Conn` (Go).
    pub ssl: u64,
    pub buf: u64,
    /// `_ex` forms: where the function writes the byte count. Go: for a buffer on the
    /// goroutine's stack (`buf` 0), its distance below the stack's top (the stack may move).
    pub count_ptr: u64,
    /// When the call started (the plaintext of a write leaves then).
    pub entry_ns: u64,
    /// The connection a socket syscall made inside the call belongs to, 0 if none yet.
    pub conn_id: u64,
    /// A [`SslFunction`].
    pub function: u32,
    /// That syscall's fd, -1 if none yet.
    pub fd: i32,
    /// The TCP sequence number where the ciphertext of this call's plaintext begins, when
    /// `seq_valid`: a write's is the socket's `write_seq` at entry (its records go out next); a
    /// read's the first byte of the read its records came in.
    pub seq: u32,
    pub seq_valid: u32,
}
const _: () = assert!(core::mem::size_of::<SslCall>() == 56);

/// Which connection an `SSL *` of a process reads and writes (`SSL_FD`): learnt from a socket
/// syscall made inside one of its calls, kept for the calls OpenSSL serves from its own buffer
/// (no syscall), dropped at `SSL_free`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SslKey {
    pub tgid: u32,
    /// Zero: explicit padding, so the key hashes the same bytes in the kernel and here.
    pub pad: u32,
    pub ssl: u64,
}
const _: () = assert!(core::mem::size_of::<SslKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SslSocket {
    pub conn_id: u64,
    pub fd: i32,
    /// 1 when tied by [`SslTieEvidence`] (memory BIOs: the socket is read before the calls that
    /// decrypt what it read), 0 by a syscall inside a call.
    pub adjacent: u32,
}
const _: () = assert!(core::mem::size_of::<SslSocket>() == 16);

/// The TLS socket a thread read last outside any OpenSSL call (`SSL_READ_BEFORE`, by
/// `pid_tgid`), for the next OpenSSL call of that thread. Runtimes that run OpenSSL on memory
/// BIOs (Node.js, Python's asyncio) make no syscall inside its calls: they read the ciphertext
/// from the socket, then, in the same callback, hand it to OpenSSL; and write what a call
/// produced right after it ([`SslCallBefore`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SslReadBefore {
    pub conn_id: u64,
    pub fd: i32,
    /// 1 when the read began with a handshake record header ([`is_handshake_record`]: a
    /// `ClientHello`, a `ServerHello`): only such a read is [`SslTieEvidence`].
    pub handshake: u32,
    pub read_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SslReadBefore>() == 24);

/// Whether `head`, a read's or write's first three bytes, is a TLS record header of the
/// handshake: content type handshake (`16`) or, for a write, change-cipher-spec (`14`, which
/// TLS 1.3 middlebox compatibility sends first), and version `03 00`–`03 04`.
#[must_use]
pub const fn is_handshake_record(head: [u8; 3], write: bool) -> bool {
    (head[0] == 0x16 || (write && head[0] == 0x14)) && head[1] == 3 && head[2] <= 4
}

/// The `SSL *` (not tied to a socket yet) whose call a thread returned from last
/// (`SSL_CALL_BEFORE`, by `pid_tgid`), for the thread's next write to a TLS socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SslCallBefore {
    pub ssl: u64,
    pub done_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SslCallBefore>() == 16);

/// What ties an `SSL *` on memory BIOs to its socket (`SSL_TIE_EVIDENCE`, by [`SslKey`]): the
/// socket its thread read a handshake record from just before one of its calls, and the socket
/// its thread wrote a handshake record to just after one. Either alone can be stale (a runtime may read a socket and
/// leave the ciphertext in the BIO while its reading is paused, as aiohttp does; a write may
/// wait for the socket's buffer), so the `SSL *` is tied only when the latest of both name the
/// same connection. A handshake gives both before any plaintext: the `ClientHello` is written
/// right after the client's first call and the `ServerHello` read right before its next; the
/// server reads the `ClientHello` before its first call and writes its reply right after. A
/// connection whose handshake the probes did not see (open before the agent, or before its
/// executable was probed) is not tied: its reads and writes are application data only, where
/// a stale read and a stale write were seen to agree on the wrong socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SslTieEvidence {
    /// 0 while none.
    pub read_conn: u64,
    pub write_conn: u64,
    pub read_fd: i32,
    pub write_fd: i32,
    /// When each was seen: they count together only within [`SSL_EVIDENCE_SPAN_NS`] of each
    /// other (one handshake's flights), never an old read with a much later write.
    pub read_ns: u64,
    pub write_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SslTieEvidence>() == 40);

/// In-band mode: a TCP segment and where in its stream it begins: the socket (`struct sock`
/// address) and the sequence number of its first byte. Keys [`InbandContext`]s waiting for the
/// segment that carries them (out) or read from one (in).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InbandKey {
    pub sk: u64,
    pub seq: u32,
    pub reserved: u32,
}
const _: () = assert!(core::mem::size_of::<InbandKey>() == 16);

/// In-band mode: what the iterator that marks the connections opened before the agent
/// (`inband_mark_open`, an `iter/tcp` program) did with one established socket, one record per
/// socket in the iterator's output.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InbandMark {
    /// `bpf_setsockopt(TCP_BPF_SOCK_OPS_CB_FLAGS)`'s result: 0 marked, else a negative errno
    /// (`-EINVAL` before Linux 6.12, which added the option).
    pub result: i32,
    /// [`INBAND_MARK_SERVER`] (the accepting end: its local port is a listening socket's) or
    /// [`INBAND_MARK_CLIENT`].
    pub end: u32,
}
/// [`InbandMark::end`]: the accepting end, marked to read options.
pub const INBAND_MARK_SERVER: u32 = 1;
/// [`InbandMark::end`]: the connecting end, marked to write them.
pub const INBAND_MARK_CLIENT: u32 = 2;
const _: () = assert!(core::mem::size_of::<InbandMark>() == 8);

/// In-band mode: the context a request's first segment carries (or carried), and, for one
/// going out, the connection it is reported under (the `sock_ops` program that writes the option
/// runs as the segment leaves, where no fd is known).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InbandContext {
    /// The CLIENT span's trace id; with [`INBAND_CONTEXT_ASK`], the address (IPv6, IPv4 mapped)
    /// of the agent that knows it.
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub conn_id: u64,
    pub pid_tgid: u64,
    pub fd: i32,
    /// [`INBAND_CONTEXT_ASK`], [`INBAND_CONTEXT_CONN`] or 0.
    pub flags: u32,
}
/// [`InbandContext::flags`]: the option is the asking form ([`crate::INBAND_OPTION_EXID_ASK`]).
pub const INBAND_CONTEXT_ASK: u32 = 1;
/// [`InbandContext::flags`]: the option is the connection form
/// ([`crate::INBAND_OPTION_EXID_CONN`]): `trace_id` is the agent's address, `span_id` the
/// connection's token.
pub const INBAND_CONTEXT_CONN: u32 = 2;
/// [`InbandKey::reserved`] of the one slot per socket where the accepting end keeps the last
/// connection form read (`seq` 0): it names the connection, not a segment.
pub const INBAND_KEY_CONN_FORM: u32 = 1;
/// [`ConnInfo::inband_tls`]: the TLS connection's plaintext speaks a protocol answered in order;
/// its records are followed as requests.
pub const INBAND_TLS_IN_ORDER: u32 = 1;
/// [`ConnInfo::inband_tls`]: the TLS connection's plaintext is HTTP/2: its client's writes carry
/// the connection form, as a plaintext HTTP/2 connection's do.
pub const INBAND_TLS_STREAMS: u32 = 2;
/// [`ConnInfo::inband_tls`]: the programs read a client's first plaintext write and it is not
/// the HTTP/2 preface: not read again (the agent may still set another value).
pub const INBAND_TLS_NOT_PREFACE: u32 = 3;
const _: () = assert!(core::mem::size_of::<InbandContext>() == 48);

/// In-band mode: what a thread serves, for the CLIENT requests it writes: the trace of the
/// SERVER request it read last, and on which connection; how many requests it read and has not
/// answered. A thread with more than one open is serving several at once (an event loop): its
/// CLIENT requests carry no context, since which one asked is not the programs' to know.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InbandServing {
    /// All zero: a request the programs cannot follow (TLS, HTTP/2, hidden by the budget, a
    /// client on this host without a context): the thread's calls carry nothing.
    pub trace_id: [u8; 16],
    /// The connection of the request read last.
    pub conn_id: u64,
    /// Requests it read that are not answered yet (each connection counts one at most:
    /// [`ConnInfo::inband_reader`]).
    pub open: u32,
    /// 1 once the thread had two requests open at once: unsure until none is open.
    pub several: u32,
}
const _: () = assert!(core::mem::size_of::<InbandServing>() == 32);

/// How far apart the read and the write evidence of one tie may be ([`SslTieEvidence`]): a
/// handshake's round trip, with room for a slow network.
pub const SSL_EVIDENCE_SPAN_NS: u64 = 2_000_000_000;

/// How soon after its thread's socket read an OpenSSL call must start, and a socket write must
/// follow an OpenSSL call's return, to count as evidence ([`SslTieEvidence`]). The runtimes do
/// both within microseconds, in one callback.
pub const SSL_ADJACENT_NS: u64 = 10_000_000;

/// The first four bytes of HTTP/2's client preface (`PRI * HTTP/2.0…`), as a little-endian
/// `u32`.
pub const HTTP2_PREFACE_PREFIX: u32 = u32::from_le_bytes(*b"PRI ");

/// Data syscalls without a request start after which a connection is [`Protocol::Opaque`]; the
/// agent's detector gives up after as many.
pub const DETECT_CHUNKS: u32 = 8;

/// The first four bytes of every request line the agent recognises (`GET `, `POST `, …), as a
/// little-endian `u32` of the payload's first bytes.
pub const REQUEST_PREFIXES: [u32; 9] = [
    u32::from_le_bytes(*b"GET "),
    u32::from_le_bytes(*b"POST"),
    u32::from_le_bytes(*b"PUT "),
    u32::from_le_bytes(*b"DELE"),
    u32::from_le_bytes(*b"HEAD"),
    u32::from_le_bytes(*b"OPTI"),
    u32::from_le_bytes(*b"PATC"),
    u32::from_le_bytes(*b"CONN"),
    u32::from_le_bytes(*b"TRAC"),
];

/// memcached text commands the programs recognise on the request side, by their first four
/// bytes (little-endian `u32`, as [`REQUEST_PREFIXES`]); lowercase, so never an HTTP method.
pub const MEMCACHED_PREFIXES: [u32; 18] = [
    u32::from_le_bytes(*b"get "),
    u32::from_le_bytes(*b"gets"),
    u32::from_le_bytes(*b"gat "),
    u32::from_le_bytes(*b"gats"),
    u32::from_le_bytes(*b"set "),
    u32::from_le_bytes(*b"add "),
    u32::from_le_bytes(*b"repl"),
    u32::from_le_bytes(*b"appe"),
    u32::from_le_bytes(*b"prep"),
    u32::from_le_bytes(*b"cas "),
    u32::from_le_bytes(*b"dele"),
    u32::from_le_bytes(*b"incr"),
    u32::from_le_bytes(*b"decr"),
    u32::from_le_bytes(*b"touc"),
    u32::from_le_bytes(*b"stat"),
    u32::from_le_bytes(*b"vers"),
    u32::from_le_bytes(*b"flus"),
    u32::from_le_bytes(*b"verb"),
];

/// memcached meta commands (`mg `, `ms `, `md `, `ma `, `mn\r`, `me `) by their first three
/// bytes (the low 24 bits of the little-endian `u32`).
pub const MEMCACHED_META_PREFIXES: [u32; 6] = [
    u32::from_le_bytes(*b"mg \0"),
    u32::from_le_bytes(*b"ms \0"),
    u32::from_le_bytes(*b"md \0"),
    u32::from_le_bytes(*b"ma \0"),
    u32::from_le_bytes(*b"me \0"),
    u32::from_le_bytes(*b"mn\r\0"),
];

/// `CLIENT_SSL` in a MySQL handshake response's capabilities: the client asks for TLS.
pub const MYSQL_CLIENT_SSL: u32 = 0x800;

/// PostgreSQL's protocol 3.0 startup code, the big-endian `i32` after a startup packet's length
/// (its encryption requests, `SSLRequest` and `GSSENCRequest`, are not recognised: what
/// follows them is).
pub const POSTGRES_PROTOCOL_3: u32 = 0x0003_0000;

/// A process whose syscalls the programs name the running task of: the value of the
/// `FOLLOWED_PROCESSES` map, by tgid, written by the agent. One lookup there is all an unfollowed
/// process's data syscall pays for the runtimes' task reads.
///
/// For a Python process ([`RUNTIME_PYTHON`], `agent/src/runtime/python`): where it keeps what
/// names the running asyncio task. The programs find the calling thread's `PyThreadState` by
/// walking the interpreter's thread list for the thread's id as the process sees it (its pid
/// namespace's), and read its current `contextvars.Context`. Offsets are the `CPython` release's.
/// For a Node.js process ([`RUNTIME_NODE`]) only `runtime` is set: the callback probes keep the
/// rest per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowedProcess {
    /// Address of `_PyRuntime.interpreters.head` in the process.
    pub interpreters_head: u64,
    /// Device and inode of the process's pid namespace (`/proc/<pid>/ns/pid`).
    pub pidns_dev: u64,
    pub pidns_ino: u64,
    /// `PyInterpreterState.threads.head`.
    pub interpreter_threads: u32,
    /// `PyThreadState.next`.
    pub thread_next: u32,
    /// `PyThreadState.native_thread_id`.
    pub thread_native_id: u32,
    /// `PyThreadState.context`.
    pub thread_context: u32,
    /// `TaskObj.task_context` in `_asyncio`.
    pub task_context: u32,
    /// [`RUNTIME_PYTHON`] or [`RUNTIME_NODE`].
    pub runtime: u32,
}
const _: () = assert!(core::mem::size_of::<FollowedProcess>() == 24 + 24);

/// [`FollowedProcess::runtime`]: a CPython process followed by the asyncio probes.
pub const RUNTIME_PYTHON: u32 = 0;
/// [`FollowedProcess::runtime`]: a Node.js process followed by the callback probes.
pub const RUNTIME_NODE: u32 = 1;

/// Thread states walked per lookup: a thread whose state is further down the list is not named
/// (its records carry no task).
pub const PYTHON_MAX_THREADS: u32 = 64;

/// Indices of the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Records written to the ring.
    EventsSent = 0,
    /// Records lost because the ring was full.
    RingFull = 1,
    /// Data events whose payload was cut at the capture limit (or at `MAX_IOVECS`).
    PayloadTruncated = 2,
    /// Payload reads from user memory that faulted (the event is sent without payload).
    PayloadReadFailed = 3,
    /// Egress syscalls whose entry this CPU did not see last (the thread slept inside the
    /// syscall and another ran, or it moved CPU, or it was in flight at attach): timed at exit.
    EntryTimeMissed = 4,
    /// Sockets not tracked because inserting into the connection table failed.
    ConnTableFull = 5,
    /// Kernel struct reads that failed while resolving an fd to its socket.
    SocketWalkFailed = 6,
    /// TLS plaintext dropped: the call's `SSL *` was never seen on a socket syscall.
    TlsUnlinked = 7,
    /// Data syscalls on connections the budget shed ([`Protocol::Shed`]): not copied, not sent.
    ShedSyscalls = 8,
    /// Socket syscall exits lost because a tail call failed: the dispatcher's into their
    /// family's program ([`EXIT_FAMILIES`]), or one to or back from discovery (an empty slot,
    /// as while the agent stops, or the kernel's tail-call limit).
    TailCallFailed = 9,
    /// `SSL *`s on memory BIOs tied to their socket by the reads just before and writes just
    /// after their calls ([`SslTieEvidence`]).
    TlsTiedByAdjacency = 10,
    /// Times the latest read before and write after an untied `SSL *`'s calls named different
    /// sockets (one was stale): no tie until they agree.
    TlsTieDisagreed = 11,
    /// In-band mode: CLIENT requests whose first segment carried their context.
    InbandSent = 12,
    /// In-band mode: SERVER requests whose first segment carried a context.
    InbandAdopted = 13,
    /// In-band mode: CLIENT requests sent without a context: their thread was serving more
    /// than one request (which one asked is the user-space rules' to say), or its process is
    /// not one whose threads serve one request at a time.
    InbandUnsure = 14,
    /// In-band mode: a request's first segment had no room for the option (other options,
    /// SACK blocks, took the space).
    InbandNoRoom = 15,
    /// In-band mode with the peer messages: CLIENT requests the programs could not give a trace
    /// (as for [`Counter::InbandUnsure`]) whose first segment carried their span id and this
    /// agent's address instead, for the server's agent to ask the trace of
    /// ([`crate::INBAND_OPTION_EXID_ASK`]; counted in [`Counter::InbandSent`] too).
    InbandAsk = 16,
    /// In-band mode with peer messages: writes on the connecting end of an HTTP/2 connection
    /// whose first segment carried the connection form ([`crate::INBAND_OPTION_EXID_CONN`]).
    InbandConnSent = 17,
    /// In-band mode: connection forms a server's connection reported (a new token read).
    InbandConnReceived = 18,
}

impl Counter {
    pub const COUNT: u32 = 19;
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::EventsSent,
        Self::RingFull,
        Self::PayloadTruncated,
        Self::PayloadReadFailed,
        Self::EntryTimeMissed,
        Self::ConnTableFull,
        Self::SocketWalkFailed,
        Self::TlsUnlinked,
        Self::ShedSyscalls,
        Self::TailCallFailed,
        Self::TlsTiedByAdjacency,
        Self::TlsTieDisagreed,
        Self::InbandSent,
        Self::InbandAdopted,
        Self::InbandUnsure,
        Self::InbandNoRoom,
        Self::InbandAsk,
        Self::InbandConnSent,
        Self::InbandConnReceived,
    ];

    /// The name used in logs and self-metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::EventsSent => "events_sent",
            Self::RingFull => "ring_full_drops",
            Self::PayloadTruncated => "payload_truncated",
            Self::PayloadReadFailed => "payload_read_failed",
            Self::EntryTimeMissed => "entry_time_missed",
            Self::ConnTableFull => "conn_table_full",
            Self::SocketWalkFailed => "socket_walk_failed",
            Self::TlsUnlinked => "tls_unlinked",
            Self::ShedSyscalls => "shed_syscalls",
            Self::TailCallFailed => "tail_call_failed",
            Self::TlsTiedByAdjacency => "tls_tied_by_adjacency",
            Self::TlsTieDisagreed => "tls_tie_disagreed",
            Self::InbandSent => "inband_sent",
            Self::InbandAdopted => "inband_adopted",
            Self::InbandUnsure => "inband_unsure",
            Self::InbandNoRoom => "inband_no_room",
            Self::InbandAsk => "inband_ask",
            Self::InbandConnSent => "inband_conn_sent",
            Self::InbandConnReceived => "inband_conn_received",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers only, padding spelled out: every bit pattern is valid.
    unsafe impl aya::Pod for super::ConnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FollowedProcess {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InbandKey {}
}
