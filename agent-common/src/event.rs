//! Records the eBPF programs write to the `EVENTS` ring buffer.
//!
//! Every record starts with an [`EventHeader`]; its `kind` says which struct follows. Data
//! records are variable-sized: a [`DataEvent`] followed by `captured_len` payload bytes.

/// Largest payload prefix one data event can carry. A power of two, so the eBPF side can bound
/// lengths with a mask the verifier understands. The per-CPU scratch holds twice this plus a
/// header, and per-CPU values are limited to 32 KiB.
pub const MAX_CAPTURE_BYTES: usize = 8 * 1024;
/// Payload prefix captured per syscall unless the user configures another size.
pub const DEFAULT_CAPTURE_BYTES: u32 = 4096;
/// Largest number of iovec entries walked for `readv`/`writev`/`sendmsg`/`recvmsg` (by `bpf_loop`:
/// gRPC spreads one frame over many small entries); entries past
/// it are counted in `ret` but not copied.
pub const MAX_IOVECS: usize = 64;
/// Messages of one `sendmmsg`/`recvmmsg` reported as data events; the rest are counted in the
/// `payload_truncated` counter.
pub const MAX_MMSG: usize = 4;
/// Length of a task's `comm`, as in the kernel's `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;

/// What follows the header.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A connection became known: accepted, connected, or first seen in use.
    ConnOpen = 1,
    /// A tracked connection's fd was closed.
    ConnClose = 2,
    /// Bytes moved through a tracked connection.
    Data = 3,
    /// A Go runtime probe fired ([`GoProbeEvent`]).
    GoProbe = 4,
    /// A Python asyncio task was created ([`PyTaskEvent`]).
    PyTask = 5,
    /// A request's trace context went out or came in a TCP header option ([`InbandEvent`]).
    Inband = 6,
    /// A server end on this host of a connection whose client end was shed at its opening was
    /// shed at its first data syscall ([`ConnEvent`], no byte totals): the programs' word, since
    /// the agent may have missed the client end's open record.
    ConnShed = 7,
}

impl EventKind {
    #[must_use]
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::ConnOpen),
            2 => Some(Self::ConnClose),
            3 => Some(Self::Data),
            4 => Some(Self::GoProbe),
            5 => Some(Self::PyTask),
            6 => Some(Self::Inband),
            7 => Some(Self::ConnShed),
            _ => None,
        }
    }
}

/// Which end of the connection the traced process is.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The socket was already open when sockspan first saw it (it pre-dates the agent, or was
    /// inherited across fork); user space may refine this from procfs.
    Unknown = 0,
    /// The process called `connect`.
    Client = 1,
    /// The process got the socket from `accept`/`accept4`.
    Server = 2,
}

impl Role {
    #[must_use]
    pub const fn from_u32(value: u32) -> Self {
        match value {
            1 => Self::Client,
            2 => Self::Server,
            _ => Self::Unknown,
        }
    }
}

/// Which way the bytes moved, seen from the traced process.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Written or sent by the process.
    Egress = 1,
    /// Read or received by the process.
    Ingress = 2,
}

impl Direction {
    #[must_use]
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Egress),
            2 => Some(Self::Ingress),
            _ => None,
        }
    }
}

/// The syscall that produced an event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Read = 1,
    Write = 2,
    Recvfrom = 3,
    Sendto = 4,
    Recvmsg = 5,
    Sendmsg = 6,
    Readv = 7,
    Writev = 8,
    Accept = 9,
    Accept4 = 10,
    Connect = 11,
    Close = 12,
    /// `sendfile64`: bytes from a file; counted, never captured (they are not in user memory).
    Sendfile = 13,
    /// One data event per message, for the first [`MAX_MMSG`] messages.
    Sendmmsg = 14,
    Recvmmsg = 15,
    /// Plaintext an OpenSSL `SSL_write`/`SSL_write_ex` took (a uprobe, not a syscall): the
    /// connection is the socket the call wrote to.
    SslWrite = 16,
    /// Plaintext an OpenSSL `SSL_read`/`SSL_read_ex` returned.
    SslRead = 17,
}

impl Syscall {
    pub const ALL: [Self; 17] = [
        Self::Read,
        Self::Write,
        Self::Recvfrom,
        Self::Sendto,
        Self::Recvmsg,
        Self::Sendmsg,
        Self::Readv,
        Self::Writev,
        Self::Accept,
        Self::Accept4,
        Self::Connect,
        Self::Close,
        Self::Sendfile,
        Self::Sendmmsg,
        Self::Recvmmsg,
        Self::SslWrite,
        Self::SslRead,
    ];

    #[must_use]
    pub const fn from_u32(value: u32) -> Option<Self> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == value {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// The syscall's name as in `syscalls/sys_enter_<name>` (the library function's for TLS).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Recvfrom => "recvfrom",
            Self::Sendto => "sendto",
            Self::Recvmsg => "recvmsg",
            Self::Sendmsg => "sendmsg",
            Self::Readv => "readv",
            Self::Writev => "writev",
            Self::Accept => "accept",
            Self::Accept4 => "accept4",
            Self::Connect => "connect",
            Self::Close => "close",
            Self::Sendfile => "sendfile64",
            Self::Sendmmsg => "sendmmsg",
            Self::Recvmmsg => "recvmmsg",
            Self::SslWrite => "SSL_write",
            Self::SslRead => "SSL_read",
        }
    }

    /// Direction of the bytes for data syscalls; `None` for the others.
    /// Whether the bytes are TLS plaintext from a library probe rather than a syscall's.
    #[must_use]
    pub const fn is_tls(self) -> bool {
        matches!(self, Self::SslWrite | Self::SslRead)
    }

    #[must_use]
    pub const fn direction(self) -> Option<Direction> {
        match self {
            Self::Write
            | Self::Sendto
            | Self::Sendmsg
            | Self::Writev
            | Self::Sendfile
            | Self::Sendmmsg
            | Self::SslWrite => Some(Direction::Egress),
            Self::Read
            | Self::Recvfrom
            | Self::Recvmsg
            | Self::Readv
            | Self::Recvmmsg
            | Self::SslRead => Some(Direction::Ingress),
            Self::Accept | Self::Accept4 | Self::Connect | Self::Close => None,
        }
    }
}

/// Address family values as in `<sys/socket.h>`.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// Socket types as in `<sys/socket.h>`.
pub const SOCK_STREAM: u16 = 1;
/// `IPPROTO_TCP`: `sk_protocol` of a TCP socket (an MPTCP or SCTP stream socket has another).
pub const IPPROTO_TCP: u16 = 6;
pub const SOCK_DGRAM: u16 = 2;

/// A socket's local and remote endpoints as the kernel's `struct sock_common` holds them.
///
/// IPv4 addresses sit in the first four bytes of the 16-byte fields (network order) with the
/// rest zero; IPv6 addresses (v4-mapped included) fill all sixteen. Ports are in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockTuple {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// `SOCK_STREAM` (TCP) or `SOCK_DGRAM` (UDP).
    pub sock_type: u16,
}
const _: () = assert!(core::mem::size_of::<SockTuple>() == 40);

/// Fields every record starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// An [`EventKind`].
    pub kind: u32,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    pub fd: i32,
    /// Identifies the socket for its whole life in this process; a reused fd number gets a new id.
    pub conn_id: u64,
    /// `bpf_ktime_get_ns()`: nanoseconds since boot, `CLOCK_MONOTONIC`, when the record was made:
    /// at the syscall's exit, except for an egress data record whose entry was seen, which
    /// carries its entry time (the same as `moved_ns`): reading the clock again at exit would
    /// cost ~30 ns per syscall for a time nothing uses.
    pub ts_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 32);

/// A connection opened, was first seen, or closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnEvent {
    pub header: EventHeader,
    pub tuple: SockTuple,
    /// A [`Role`].
    pub role: u32,
    /// The [`Syscall`] that revealed the connection (or `Close`).
    pub syscall: u32,
    /// Bytes the process wrote / read on it while tracked (close events only).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The task's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// Open records in a Node.js process whose callback probes fired on the opening thread: the
    /// libuv callback the socket was opened in ([`node_callback`]); 0 otherwise.
    pub task: u64,
    /// `CONN_*` flags.
    pub flags: u32,
    pub reserved: u32,
}
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 32 + 40 + 8 + 16 + 16 + 8 + 8);

/// [`ConnEvent::flags`] of an open record: the programs shed this client end from its opening
/// (its process is named in [`crate::MAP_SHED_OPENS`] and the connection ranks at or above the
/// share kept): none of its bytes will come, and its server end, if on this host, is shed from
/// its first syscall ([`crate::MAP_SHED_TUPLES`]).
pub const CONN_SHED_AT_OPEN: u32 = 1;

/// Bytes moved through a connection; `captured_len` payload bytes follow this struct in the
/// ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataEvent {
    pub header: EventHeader,
    /// When the bytes moved, kernel monotonic ns: for egress the syscall's entry (when the
    /// process handed them to the kernel), for ingress its exit (the header's `ts_ns`, when the
    /// kernel handed them to the process). An egress syscall whose entry was not seen (in flight
    /// at attach, or its CPU's entry stamp taken by another thread) is timed at exit.
    pub moved_ns: u64,
    /// The syscall's return value: how many bytes it really moved.
    pub ret: i64,
    /// A [`Role`].
    pub role: u32,
    /// A [`Direction`].
    pub direction: u32,
    /// A [`Syscall`].
    pub syscall: u32,
    /// Payload bytes that follow; less than `ret` when the capture limit cut it.
    pub captured_len: u32,
    /// What the syscall ran in. In a followed Python process, the running asyncio task's
    /// context ([`PyTaskEvent`]); on a Node.js thread whose callback probes fired, the libuv
    /// callback ([`node_callback`]); else the task's `r14`, which in Go code (the `ABIInternal`
    /// calling convention, Go 1.17+ on amd64) holds the running goroutine's `g` (it names the
    /// goroutine while it lives) and in any other process means nothing (the agent ignores it).
    pub task: u64,
    /// The TCP sequence number of the first byte moved, when `flags` has [`DATA_SEQ_VALID`]:
    /// the socket's `write_seq` (egress) or `copied_seq` (ingress) at exit, less the bytes
    /// moved. Both ends of a connection number its bytes the same way, whenever each began
    /// watching it.
    pub seq: u32,
    /// [`DATA_SEQ_VALID`], [`DATA_HIDDEN_WORK`], [`DATA_HIDDEN_SAME_ASK`],
    /// [`DATA_HIDDEN_EXACT_ASK`], [`DATA_RESUMED`], [`DATA_RECORD_SEQ`].
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<DataEvent>() == 32 + 16 + 16 + 8 + 8);

/// [`DataEvent::flags`]: `seq` is known (a TCP socket's plain read or write, not a peek, a
/// datagram or a TLS library's plaintext).
pub const DATA_SEQ_VALID: u32 = 1;
/// [`DataEvent::flags`]: the thread that made the syscall has read a request on a connection the
/// budget shed ([`crate::Protocol::Shed`]) and not written its answer yet. A CLIENT request it
/// writes may be that hidden request's, so no rule by thread may name a visible parent for it.
pub const DATA_HIDDEN_WORK: u32 = 2;
/// [`DataEvent::flags`], with [`DATA_HIDDEN_WORK`]: one of those hidden requests asks what this
/// request asks (same method and target), or what one asks is unknown: this request may be its
/// forward, so the proxy rule may not name a visible parent for it either.
pub const DATA_HIDDEN_SAME_ASK: u32 = 8;
/// [`DataEvent::flags`], with [`DATA_HIDDEN_SAME_ASK`]: a hidden request of the thread asks
/// exactly what this request asks (not merely "anything, as far as the programs know").
pub const DATA_HIDDEN_EXACT_ASK: u32 = 16;
/// [`DataEvent::flags`]: a TLS library's plaintext whose ciphertext begins at TCP sequence
/// number `seq` (not the plaintext's own position): a chunk that starts a request names it by
/// the stream position both ends see, whenever either began watching.
pub const DATA_RECORD_SEQ: u32 = 32;
/// [`DataEvent::flags`]: the first syscall of a connection the budget had shed, at a request's
/// start ([`crate::Protocol::ResumeNext`]): what the agent knew of its bytes is stale.
pub const DATA_RESUMED: u32 = 4;

/// Where a Go runtime probe sits ([`GoProbeEvent::probe`]); the low 16 bits of the uprobe's
/// attach cookie ([`go_probe_cookie`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoProbe {
    /// `runtime.newproc1` returns (a probe on each of its return instructions, one trap per
    /// spawn): `a` is the new goroutine's `g` (the result, in AX), `b` the spawning goroutine's:
    /// `newproc1` runs on the system stack, so R14 holds the thread's `g0`, whose `m.curg` is
    /// the goroutine that ran the `go` statement.
    NewprocReturn = 2,
    /// `net/http.(*persistConn).roundTrip` entered (on the calling goroutine): `a` is its `g`,
    /// `b` the `*http.Request` embedded first in the `*transportRequest` argument (BX).
    RoundTrip = 3,
    /// `net/http.(*Request).write` entered (in the connection's write loop): `a` is the writing
    /// goroutine's `g`, `b` the `*http.Request`.
    RequestWrite = 4,
}

impl GoProbe {
    pub const ALL: [Self; 3] = [Self::NewprocReturn, Self::RoundTrip, Self::RequestWrite];

    #[must_use]
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            2 => Some(Self::NewprocReturn),
            3 => Some(Self::RoundTrip),
            4 => Some(Self::RequestWrite),
            _ => None,
        }
    }
}

/// The attach cookie of a Go runtime probe: the probe in bits 0–15, then the offsets the
/// program reads through (of this executable's Go release): `g.m` in bits 16–31, `m.curg` in
/// bits 32–47. Carried by the cookie, they need no map and differ per executable for free.
#[must_use]
pub const fn go_probe_cookie(probe: GoProbe, g_m: u16, m_curg: u16) -> u64 {
    probe as u64 | (g_m as u64) << 16 | (m_curg as u64) << 32
}

/// A Go runtime probe fired: which one, and the two values it read from the registers (see
/// [`GoProbe`]). The header's `fd` is -1 and `conn_id` 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GoProbeEvent {
    pub header: EventHeader,
    /// A [`GoProbe`].
    pub probe: u32,
    pub reserved: u32,
    pub a: u64,
    pub b: u64,
}
const _: () = assert!(core::mem::size_of::<GoProbeEvent>() == 32 + 8 + 16);

/// A Python asyncio task was created (`_asyncio.Task.__init__` returned): the task's
/// `contextvars.Context` (`child`), which is current whenever the task runs, and the context that
/// was current where it was created (`parent`; 0 when unreadable). Contexts are what
/// [`DataEvent::task`] carries in Python processes. The header's `fd` is -1 and `conn_id` 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PyTaskEvent {
    pub header: EventHeader,
    pub child: u64,
    pub parent: u64,
}
const _: () = assert!(core::mem::size_of::<PyTaskEvent>() == 32 + 16);

/// The in-band mode's TCP header option: an experimental option (RFC 6994: kind 253, a 16-bit
/// experiment id), then the trace id and span id of the CLIENT span whose request starts in the
/// segment. 28 bytes: with the timestamps option (12 with its padding) it fills the 40 bytes
/// of TCP option space exactly.
pub const INBAND_OPTION_KIND: u8 = 253;
/// The experiment id, "ss" (sockspan): an option of another experiment is never read as ours.
pub const INBAND_OPTION_EXID: u16 = 0x7373;
/// The experiment id of the asking form, "sa": the same length, but in place of the trace id
/// the address of the client's agent (IPv6, IPv4 mapped), which knows the trace: the programs
/// could not tell it (an event loop, goroutines, a thread serving several requests), the
/// agent's rules will. The server's agent asks that agent for the trace of the span id
/// ([`crate::Counter::InbandAsk`]).
pub const INBAND_OPTION_EXID_ASK: u16 = 0x7361;
/// The experiment id of the connection form, "sc": the same length; the address of the client's
/// agent (IPv6, IPv4 mapped) and a token naming the connection to that agent (random, drawn by
/// the programs at the connection's first form and told to the agent). For protocols
/// whose requests interleave on one connection (HTTP/2, gRPC): a request's first byte seldom
/// starts a segment and the programs cannot tell which caller wrote a stream, so the option
/// names the connection, and the server's agent asks the named agent about each stream by its
/// id (which both ends see alike) ([`crate::Counter::InbandConnSent`]).
pub const INBAND_OPTION_EXID_CONN: u16 = 0x7363;
/// Bytes of the whole option: kind, length, experiment id, trace id, span id.
pub const INBAND_OPTION_LEN: usize = 2 + 2 + 16 + 8;

/// [`InbandEvent::flags`]: a CLIENT request's first segment is to carry this context (the client
/// span's own trace and span id), sent as the write starts, before the data record: the
/// `sock_ops` program writes it as the segment leaves, which may be after the write returned.
pub const INBAND_SENT: u32 = 1;
/// [`InbandEvent::flags`]: a SERVER request was read; `trace_id` is the trace the programs gave
/// it (the sender's, with [`INBAND_ADOPTED`]; else a new one, for the calls it makes).
pub const INBAND_RECEIVED: u32 = 2;
/// [`InbandEvent::flags`], with [`INBAND_RECEIVED`]: the request's first segment carried a
/// context; `span_id` is the CLIENT span that wrote it, on whichever host.
pub const INBAND_ADOPTED: u32 = 4;
/// [`InbandEvent::flags`], with [`INBAND_SENT`] or [`INBAND_ADOPTED`]: the asking form; its
/// `trace_id` is the address of the agent that knows the CLIENT span's trace (this one's when
/// sent), not a trace id.
pub const INBAND_ASK: u32 = 8;
/// [`InbandEvent::flags`]: the connection form ([`crate::INBAND_OPTION_EXID_CONN`]), not tied to
/// a request (`seq` zero). With [`INBAND_SENT`]: the token drawn for this connecting end
/// (`span_id`), sent before its first form leaves. With [`INBAND_RECEIVED`]: read on a server's
/// connection, `trace_id` the address of the client's agent, `span_id` the token naming the
/// connection to it; sent when a read finds a token the connection did not report yet.
pub const INBAND_CONN: u32 = 16;

/// A request's trace context in the in-band mode, keyed like the request itself: its
/// connection (the header's `conn_id`) and the TCP sequence number of its first byte (`seq`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InbandEvent {
    pub header: EventHeader,
    pub seq: u32,
    /// [`INBAND_SENT`], [`INBAND_RECEIVED`], [`INBAND_ADOPTED`].
    pub flags: u32,
    pub trace_id: [u8; 16],
    /// The CLIENT span's id ([`INBAND_SENT`], [`INBAND_ADOPTED`]); zero otherwise.
    pub span_id: [u8; 8],
}
const _: () = assert!(core::mem::size_of::<InbandEvent>() == 32 + 8 + 24);

/// The top half of [`DataEvent::task`] and [`ConnEvent::task`] on a Node.js thread whose
/// callback probes fired ("node"); the bottom half is the fd whose libuv stream callback
/// (`uv__stream_io`) the thread is in, or [`NODE_OUTSIDE`] between callbacks (timers,
/// immediates, the loop's other phases).
pub const NODE_CALLBACK_TAG: u32 = 0x6e6f_6465;
/// The bottom half of a Node.js callback value outside any stream callback.
pub const NODE_OUTSIDE: u32 = u32::MAX;

/// The value the Node.js callback probes store for a thread: inside the stream callback of `fd`
/// (`Some`), or outside any (`None`).
#[must_use]
pub const fn node_callback(fd: Option<i32>) -> u64 {
    let low = match fd {
        Some(fd) => fd as u32,
        None => NODE_OUTSIDE,
    };
    (NODE_CALLBACK_TAG as u64) << 32 | low as u64
}

/// What a [`DataEvent::task`] or [`ConnEvent::task`] says of the Node.js callback it ran in:
/// `None` when the value is not one the callback probes stored, `Some(None)` between callbacks,
/// `Some(Some(fd))` inside the stream callback of `fd`.
#[must_use]
pub const fn node_callback_of(task: u64) -> Option<Option<i32>> {
    if (task >> 32) as u32 != NODE_CALLBACK_TAG {
        return None;
    }
    let low = task as u32;
    if low == NODE_OUTSIDE {
        Some(None)
    } else {
        Some(Some(low as i32))
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these are #[repr(C)], made only of integers and integer arrays, with every
    // padding byte spelled out as a field, so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::SockTuple {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DataEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GoProbeEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PyTaskEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InbandEvent {}
}
