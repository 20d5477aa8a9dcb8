//! The in-band mode (`--in-band`): a request's first TCP segment carries the context of the
//! CLIENT span that wrote it (trace id, span id) in a TCP header option, and the agent on the
//! server's host adopts it. Nothing here changes a byte of what the processes send or read: the
//! option lives in the TCP header, below TLS and every protocol, and a receiver without this
//! program ignores an unknown option (RFC 793).
//!
//! Three places, one job each:
//! - [`client_write_enter`] (`raw_syscalls/sys_enter`, before the bytes are queued): a CLIENT
//!   request starts (a client's write after anything but a write); its thread's trace and a new
//!   span id wait under (socket, sequence number of its first byte) in [`INBAND_OUT`], and the
//!   agent is sent an [`InbandEvent`] (before the write's data record).
//! - [`inband_sock_ops`] (a `sock_ops` program on the cgroup v2 root): marks new connections of
//!   the traced namespace for the header-option callbacks (`BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG`
//!   on the connecting end, `BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG` on the accepting end);
//!   reserves room (`BPF_SOCK_OPS_HDR_OPT_LEN_CB`) and writes the option
//!   (`BPF_SOCK_OPS_WRITE_HDR_OPT_CB`) on the segment whose first byte a context waits for; on
//!   the accepting end, keeps the option of each segment that has one
//!   (`BPF_SOCK_OPS_PARSE_HDR_OPT_CB`) in [`INBAND_IN`].
//! - [`after_data`] (the exit programs, before a data syscall's record): a SERVER request starts
//!   (a server's read after anything but a read): it takes the option its first segment carried
//!   (or a new trace), tells the agent, and its thread serves that trace ([`INBAND_SERVING`]);
//!   the response's first write ends that. [`unfollowed_data`] and [`closed`] keep a thread
//!   serving what the programs cannot follow unsure, and forget what a closed connection served.
//!
//! A CLIENT request carries its thread's trace only when the programs are as sure as the agent's
//! thread rule would be: the thread serves exactly one request it read itself, in a process the
//! agent listed as one whose threads serve one request at a time ([`INBAND_PROCESSES`]: not Go,
//! not Node.js, not a followed asyncio process). Otherwise no option (counted as unsure): a
//! wrong trace in the option could not be taken back by the agent on the other host.
//!
//! HTTP/2 (plaintext, or TLS whose plaintext the agent found to be HTTP/2) takes the connection
//! form instead ([`client_conn_form`], [`conn_form_read`]): every write of the connecting end
//! names its agent and the connection, and the server's agent asks that agent about each stream
//! by its id. A stream's first byte seldom starts a segment, and the programs cannot tell which
//! caller wrote it (grpc-core's own threads write the frames); the agent's rules can.
//!
//! Connections established before the agent attached are marked once at its start by a TCP
//! iterator ([`crate::inband_mark`], Linux 6.12+); on older kernels they carry nothing.

use agent_common::{
    ConnInfo, ConnKey, Counter, Direction, EventKind, INBAND_ADOPTED, INBAND_ASK, INBAND_CONN,
    INBAND_CONTEXT_ASK, INBAND_CONTEXT_CONN, INBAND_KEY_CONN_FORM, INBAND_OPTION_EXID,
    INBAND_OPTION_EXID_ASK, INBAND_OPTION_EXID_CONN, INBAND_OPTION_KIND, INBAND_OPTION_LEN,
    INBAND_RECEIVED, INBAND_SENT, INBAND_TLS_IN_ORDER, INBAND_TLS_NOT_PREFACE, INBAND_TLS_STREAMS,
    InbandContext, InbandEvent, InbandKey, InbandServing, Protocol, Role,
};
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB,
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB, BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_WRITE_HDR_OPT_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
    },
    helpers::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_load_hdr_opt, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_reserve_hdr_opt, bpf_store_hdr_opt,
    },
    macros::{map, sock_ops},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::SockOpsContext,
};

use crate::{
    followed::FOLLOWED_PROCESSES,
    maps::{CONNS, EVENTS, SSL_SOCKETS, config, count, offset},
    syscalls::{header, now_ns},
};

/// CLIENT requests' contexts waiting for the segment that starts with their first byte. An LRU:
/// a request whose bytes joined a segment begun by earlier ones (Nagle, a pipelined request)
/// has no segment of its own and is never written.
#[map]
pub static INBAND_OUT: LruHashMap<InbandKey, InbandContext> =
    LruHashMap::with_max_entries(16_384, 0);

/// Contexts read from the options of segments received, by the segment's first byte; taken
/// by the read of a request that starts there. An LRU: segments that start no request (a
/// segmentation offload copies the option onto every segment of a large write) age out.
#[map]
pub static INBAND_IN: LruHashMap<InbandKey, InbandContext> =
    LruHashMap::with_max_entries(16_384, 0);

/// What each thread (`pid_tgid`) serves ([`InbandServing`]). An LRU: a thread may exit serving.
#[map]
pub static INBAND_SERVING: LruHashMap<u64, InbandServing> = LruHashMap::with_max_entries(16_384, 0);

/// Processes (tgid) as the agent classified them: [`INBAND_THREADS_SERVE_ONE`] (not Go, not
/// Node.js: only their CLIENT requests may carry their thread's trace) or
/// [`INBAND_OTHER_RUNTIME`]. Written by the agent; a process not in it is not classified yet.
#[map]
pub static INBAND_PROCESSES: HashMap<u32, u32> = HashMap::with_max_entries(16_384, 0);
/// [`INBAND_PROCESSES`]: threads serve one request at a time.
const INBAND_THREADS_SERVE_ONE: u32 = 1;
/// [`INBAND_PROCESSES`]: goroutines or one event-loop thread serve the requests.
const INBAND_OTHER_RUNTIME: u32 = 2;

/// Where a SERVER request's record is assembled: the exit programs' stack has no room for it.
#[map]
static INBAND_SCRATCH: PerCpuArray<InbandEvent> = PerCpuArray::with_max_entries(1, 0);

/// A new random span id (never zero).
#[inline(always)]
fn random_span_id() -> [u8; 8] {
    // SAFETY: the helper has no preconditions.
    let high = unsafe { bpf_get_prandom_u32() };
    // SAFETY: as above.
    let low = unsafe { bpf_get_prandom_u32() } | 1;
    ((u64::from(high) << 32) | u64::from(low)).to_be_bytes()
}

/// A new random trace id (never zero).
#[inline(always)]
fn random_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    let high = random_span_id();
    let low = random_span_id();
    let mut i = 0;
    while i < 8 {
        id[i] = high[i];
        id[i + 8] = low[i];
        i += 1;
    }
    id
}

/// Whether requests on a connection speaking `protocol` are answered one at a time, in order:
/// then a read after a write starts the next request, and its first byte is where its context
/// waits. (Not HTTP/2, whose streams interleave.) `Detecting`: a connection's first request,
/// before its protocol is known. TLS (`tls`: [`ConnInfo::inband_tls`]) once the agent found
/// its plaintext is one of these: a request's first record starts where its first plaintext
/// byte's ciphertext does, so a read of a record after a write starts the next request.
#[inline(always)]
fn in_order(protocol: u32, tls: u32) -> bool {
    protocol == Protocol::Detecting as u32
        || protocol == Protocol::Http as u32
        || protocol == Protocol::Redis as u32
        || protocol == Protocol::Postgres as u32
        || protocol == Protocol::Mysql as u32
        || protocol == Protocol::Memcached as u32
        || (protocol == Protocol::Tls as u32 && tls == INBAND_TLS_IN_ORDER)
}

/// Whether a connection speaking `protocol` (with `tls`: [`ConnInfo::inband_tls`]) carries the
/// connection form: HTTP/2, whose streams interleave, in plaintext or once the agent found it
/// inside TLS.
#[inline(always)]
fn streams(protocol: u32, tls: u32) -> bool {
    protocol == Protocol::Http2 as u32
        || (protocol == Protocol::Tls as u32 && tls == INBAND_TLS_STREAMS)
}

/// Whether the TLS connection of `entry` has its records followed as requests
/// ([`ConnInfo::inband_tls`]).
#[inline(always)]
pub fn tls_followed(entry: *mut ConnInfo) -> bool {
    if entry.is_null() {
        return false;
    }
    // SAFETY: a pointer from a successful lookup in this run.
    unsafe { (*entry).inband_tls == INBAND_TLS_IN_ORDER }
}

/// `raw_syscalls/sys_enter` of an egress syscall (`write`, `writev`, `sendto`, `sendmsg`,
/// `sendmmsg`, `sendfile`: the socket is the first argument of each): when it starts a CLIENT
/// request on a tracked TCP connection, the request's context waits in [`INBAND_OUT`] for its
/// first segment. Out of line: the entry program stays small for every other syscall. Returns
/// the table entry of a connecting end that carries the connection form instead, for
/// [`client_conn_token`] and [`client_conn_form`] (called by the entry program itself: one frame
/// deeper would not fit the stack).
#[inline(never)]
pub fn client_write_enter(pid_tgid: u64, fd: i32) -> Option<*mut ConnInfo> {
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    };
    let entry = CONNS.get_ptr_mut(&key)?;
    // SAFETY: a pointer from a successful lookup; only the fields needed are copied (the whole
    // entry would take a quarter of the stack).
    let (ignored, role, tcp_sk, last, protocol, tls, conn_id) = unsafe {
        (
            (*entry).ignored,
            (*entry).role,
            (*entry).tcp_sk,
            (*entry).inband_direction,
            (*entry).protocol,
            (*entry).inband_tls,
            (*entry).conn_id,
        )
    };
    if ignored != 0 || role != Role::Client as u32 || tcp_sk == 0 {
        return None;
    }
    if streams(protocol, tls) {
        // A server on this host is traced here: its agent asks nobody.
        // SAFETY: as above; the tuple is read in place.
        return (!is_local_peer(unsafe { &(*entry).tuple })).then_some(entry);
    }
    if last == Direction::Egress as u32 || !in_order(protocol, tls) {
        return None;
    }
    // Assembled in the per-CPU scratch: the entry program's stack has no room for the record
    // beside the context (the entry and exit programs never run nested on one CPU).
    let event = INBAND_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, as in `server_request`.
    let event = unsafe { &mut *event };
    if let Some(trace_id) = thread_trace(pid_tgid) {
        event.trace_id = trace_id;
        event.flags = INBAND_SENT;
    } else {
        // Unsure of the trace: the asking form, when the agent answers its peers' questions.
        event.trace_id = config!(inband_return_addr);
        if event.trace_id == [0; 16] {
            count(Counter::InbandUnsure);
            return None;
        }
        event.flags = INBAND_SENT | INBAND_ASK;
    }
    let Ok(seq) = write_seq(tcp_sk) else {
        return None;
    };
    event.span_id = random_span_id();
    event.seq = seq;
    let context = InbandContext {
        trace_id: event.trace_id,
        span_id: event.span_id,
        conn_id,
        pid_tgid,
        fd,
        flags: if event.flags & INBAND_ASK != 0 {
            INBAND_CONTEXT_ASK
        } else {
            0
        },
    };
    let key = InbandKey {
        sk: tcp_sk,
        seq,
        reserved: 0,
    };
    if INBAND_OUT.insert(&key, &context, 0).is_err() {
        return None;
    }
    // The agent learns the context now, before the write's data record: the segment may leave
    // after the write returned (Nagle, corking, a full window), its option written then.
    event.header = header(EventKind::Inband, pid_tgid, fd, conn_id, now_ns());
    if EVENTS.output::<InbandEvent>(event, 0).is_ok() {
        count(Counter::EventsSent);
    } else {
        count(Counter::RingFull);
    }
    None
}

/// A write on the connecting end of an HTTP/2 connection (`entry`, from
/// [`client_write_enter`]), when the agent answers its peers' questions: the connection's token,
/// drawn at its first form (random: no other connection's can be guessed from it) and kept in
/// [`ConnInfo::inband_adopted`]; the agent is told it then. Returns whether the connection has
/// one: then [`client_conn_form`] queues the form. Two calls of the entry program, not one
/// inside the other: nested frames would not fit its stack.
#[inline(never)]
pub fn client_conn_token(pid_tgid: u64, fd: i32, entry: *mut ConnInfo) -> bool {
    if entry.is_null() || config!(inband_return_addr) == [0; 16] {
        return false;
    }
    // SAFETY: a pointer from a successful lookup in this run (the entry program's).
    let conn = unsafe { &mut *entry };
    if conn.inband_adopted != [0; 8] {
        return true;
    }
    let token = random_span_id();
    let flags = INBAND_SENT | INBAND_CONN;
    if !report_conn_form(pid_tgid, fd, conn.conn_id, flags, ([0; 16], token)) {
        // Told nothing (a full ring): no form, drawn again at the next write.
        return false;
    }
    conn.inband_adopted = token;
    true
}

/// The write's first segment carries the connection form of `entry` (which has its token,
/// [`client_conn_token`]): this agent's address and the token. Every write, not only a
/// request's: which write holds a stream's HEADERS is the agent's to know, and the server's
/// agent needs one of them (any may go without, for want of room).
#[inline(never)]
pub fn client_conn_form(pid_tgid: u64, fd: i32, entry: *mut ConnInfo) {
    if entry.is_null() {
        return;
    }
    // SAFETY: a pointer from a successful lookup in this run; only the fields needed are read.
    let (tcp_sk, conn_id, token) =
        unsafe { ((*entry).tcp_sk, (*entry).conn_id, (*entry).inband_adopted) };
    let Ok(seq) = write_seq(tcp_sk) else {
        return;
    };
    // Only a write that starts a segment of its own (nothing queued waits to leave): one whose
    // bytes join a segment not sent yet would leave its entry behind, and a later socket at the
    // same address might start a segment at that sequence number.
    if snd_nxt(tcp_sk) != Ok(seq) {
        return;
    }
    let context = InbandContext {
        trace_id: config!(inband_return_addr),
        span_id: token,
        conn_id,
        pid_tgid,
        fd,
        flags: INBAND_CONTEXT_CONN,
    };
    let key = InbandKey {
        sk: tcp_sk,
        seq,
        reserved: 0,
    };
    let _ = INBAND_OUT.insert(&key, &context, 0);
}

/// Tells the agent of a connection form (`flags`: [`INBAND_CONN`] with [`INBAND_SENT`] for a
/// token drawn here, [`INBAND_RECEIVED`] for one read; `(agent, token)`) on connection
/// `conn_id`. Returns whether the record went out.
#[inline(always)]
fn report_conn_form(
    pid_tgid: u64,
    fd: i32,
    conn_id: u64,
    flags: u32,
    (agent, token): ([u8; 16], [u8; 8]),
) -> bool {
    let Some(event) = INBAND_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, as in `server_request` (the entry and exit programs never run
    // nested on one CPU).
    let event = unsafe { &mut *event };
    event.header = header(EventKind::Inband, pid_tgid, fd, conn_id, now_ns());
    event.seq = 0;
    event.flags = flags;
    event.trace_id = agent;
    event.span_id = token;
    if EVENTS.output::<InbandEvent>(event, 0).is_ok() {
        count(Counter::EventsSent);
        true
    } else {
        count(Counter::RingFull);
        false
    }
}

/// `SSL_write`/`SSL_write_ex` entry (`ssl`, plaintext at `buf`) in the in-band mode: a client's
/// TLS connection whose plaintext begins with the HTTP/2 connection preface (`PRI * HTTP/2.0`)
/// carries the connection form from this write on ([`INBAND_TLS_STREAMS`]), its ciphertext
/// written by the syscalls inside the call: the first streams' writes too, which would
/// otherwise leave before the agent parsed the plaintext (a short connection, a `curl`, may say
/// everything by then). Only for an `SSL *` tied to its socket; the agent marks the others when
/// it parses their plaintext. Out of line: the uprobe's own frame stays small.
#[inline(never)]
pub fn tls_write_enter(pid_tgid: u64, ssl: u64, buf: u64) {
    /// "PRI " as the preface's first four bytes read as a little-endian `u32`.
    const PREFACE: u32 = u32::from_le_bytes(*b"PRI ");
    let tgid = (pid_tgid >> 32) as u32;
    let Some(tie) = SSL_SOCKETS.get_ptr(&agent_common::SslKey { tgid, pad: 0, ssl }) else {
        return;
    };
    // SAFETY: a pointer from a successful lookup, read at once.
    let (fd, conn_id) = unsafe { ((*tie).fd, (*tie).conn_id) };
    let Some(entry) = CONNS.get_ptr_mut(&ConnKey { tgid, fd }) else {
        return;
    };
    // SAFETY: a pointer from a successful lookup in this run; the agent's own write of the
    // same field (the same value, or the in-order one for another protocol) races at worst.
    let conn = unsafe { &mut *entry };
    if conn.conn_id != conn_id
        || conn.inband_tls != 0
        || conn.role != Role::Client as u32
        || conn.protocol != Protocol::Tls as u32
    {
        return;
    }
    // SAFETY: bpf_probe_read_user returns an error for a bad user address; it never faults.
    match unsafe { bpf_probe_read_user(buf as *const u32) } {
        Ok(PREFACE) => conn.inband_tls = INBAND_TLS_STREAMS,
        // An HTTP/2 client's first write is the preface: no later write is read.
        Ok(_) => conn.inband_tls = INBAND_TLS_NOT_PREFACE,
        Err(_) => {}
    }
}

/// The exit programs, on a read of a connection that may carry the connection form (HTTP/2, or
/// TLS whose plaintext may be HTTP/2), before its record: the last form its segments carried
/// ([`INBAND_KEY_CONN_FORM`]), if it names a token the connection did not report yet, is
/// reported to the agent ([`INBAND_CONN`]), which asks that agent about each stream the
/// connection's client opens. Out of line: its stack frame is its own.
#[inline(never)]
pub fn conn_form_read(pid_tgid: u64, fd: i32, entry: *mut ConnInfo) {
    if entry.is_null() {
        return;
    }
    // SAFETY: a pointer from a successful lookup in this run.
    let conn = unsafe { &mut *entry };
    // Only a client that knew its connection speaks HTTP/2 writes the form: the server's end
    // need not know it yet (a TLS connection's plaintext is the agent's to parse, a moment later;
    // a short connection may have said everything by then).
    if conn.role == Role::Client as u32
        || conn.tcp_sk == 0
        || conn.inband_tls == INBAND_TLS_IN_ORDER
    {
        return;
    }
    let key = InbandKey {
        sk: conn.tcp_sk,
        seq: 0,
        reserved: INBAND_KEY_CONN_FORM,
    };
    // SAFETY: copied out at once.
    let Some(form) = (unsafe { INBAND_IN.get(&key) }).copied() else {
        return;
    };
    let _ = INBAND_IN.remove(&key);
    // `inband_adopted`: on a connection of streams, the token reported last (a request's span
    // id is never adopted on one: its reads are not followed as requests). Set once reported:
    // a token lost to a full ring is reported with the next form read.
    if form.span_id == conn.inband_adopted {
        return;
    }
    let flags = INBAND_RECEIVED | INBAND_CONN;
    if report_conn_form(
        pid_tgid,
        fd,
        conn.conn_id,
        flags,
        (form.trace_id, form.span_id),
    ) {
        conn.inband_adopted = form.span_id;
        count(Counter::InbandConnReceived);
    }
}

/// The trace a CLIENT request of this thread belongs to: the one request it serves, or a new
/// trace when it serves none; `None` when the programs cannot tell (see the module's doc). A
/// process the agent has not classified yet (its first moments) passes no trace on, but a
/// thread of it that serves nothing starts one: its call is a root whatever the runtime (a
/// `curl`, a script, a client process).
#[inline(always)]
fn thread_trace(pid_tgid: u64) -> Option<[u8; 16]> {
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: copied out at once.
    let class = unsafe { INBAND_PROCESSES.get(&tgid) }.copied().unwrap_or(0);
    // SAFETY: only checked for presence.
    let followed = unsafe { FOLLOWED_PROCESSES.get(&tgid) }.is_some();
    if class == INBAND_OTHER_RUNTIME || followed {
        return None;
    }
    // SAFETY: copied out at once.
    match unsafe { INBAND_SERVING.get(&pid_tgid) }.copied() {
        // Serving requests: only exactly one, whose trace the programs know, is passed on.
        Some(serving) if serving.open > 0 => (class == INBAND_THREADS_SERVE_ONE
            && serving.open == 1
            && serving.several == 0
            && serving.trace_id != [0; 16])
            .then_some(serving.trace_id),
        // Serving none (or not yet classified: a Go thread may run a serving goroutine's call,
        // but one that read no request here is the programs' root either way).
        _ => Some(random_trace_id()),
    }
}

/// The socket's `snd_nxt`: the sequence number of its next byte to leave.
#[inline(always)]
fn snd_nxt(tcp_sk: u64) -> Result<u32, i64> {
    let field = tcp_sk + u64::from(offset!(tcp_snd_nxt));
    // SAFETY: bpf_probe_read_kernel copes with any address; the pointer is never dereferenced.
    unsafe { bpf_probe_read_kernel(field as *const u32) }.map_err(i64::from)
}

/// The socket's `write_seq`: the sequence number its next queued byte will have.
#[inline(always)]
fn write_seq(tcp_sk: u64) -> Result<u32, i64> {
    let field = tcp_sk + u64::from(offset!(tcp_write_seq));
    // SAFETY: bpf_probe_read_kernel copes with any address; the pointer is never dereferenced.
    unsafe { bpf_probe_read_kernel(field as *const u32) }.map_err(i64::from)
}

/// The exit programs, before a data syscall's record on a tracked connection (`entry`, its table
/// entry; the agent finds a request's context when it parses the request): a SERVER request that
/// starts here takes its context, and the first write of its response ends its thread's
/// serving. `seq`: the first byte's sequence number with bit 32 set when known. Out of line: its
/// stack frame is its own.
#[inline(never)]
pub fn after_data(pid_tgid: u64, fd: i32, entry: *mut ConnInfo, direction: u32, seq: u64) {
    if entry.is_null() {
        return;
    }
    // SAFETY: a pointer from a successful lookup in this run; a racing update of the direction
    // makes at worst one request start unseen.
    let conn = unsafe { &mut *entry };
    let previous = conn.inband_direction;
    conn.inband_direction = direction;
    if previous == direction || conn.tcp_sk == 0 {
        return;
    }
    if direction == Direction::Egress as u32 {
        // Any role: a connection first seen in use may have had a read counted before the
        // agent told its role.
        answered(conn);
        return;
    }
    if conn.role == Role::Client as u32 {
        return;
    }
    let followed = seq & (1 << 32) != 0 && in_order(conn.protocol, conn.inband_tls);
    if conn.role != Role::Server as u32 {
        // First seen in use (the agent learns its role from procfs a moment later): a segment
        // that carried a context starts a request this end serves; any other read may be a
        // client's response as well as a request, counted only where it can do no harm: on a
        // thread already serving, it makes the thread unsure.
        let key = InbandKey {
            sk: conn.tcp_sk,
            seq: seq as u32,
            reserved: 0,
        };
        // SAFETY: only checked for presence.
        if !followed || unsafe { INBAND_IN.get(&key) }.is_none() {
            // SAFETY: copied out at once.
            if unsafe { INBAND_SERVING.get(&pid_tgid) }.is_some_and(|open| open.open > 0) {
                serves_unknown(pid_tgid, conn);
            }
            return;
        }
    } else if !followed {
        serves_unknown(pid_tgid, conn);
        return;
    }
    server_request(pid_tgid, fd, conn, seq as u32);
}

/// Whether the other end of a connection is on this host as the programs can tell (loopback, or
/// the socket's own address): its client is traced here, by this agent's rules.
#[inline(always)]
fn is_local_peer(tuple: &agent_common::SockTuple) -> bool {
    let remote = &tuple.remote_addr;
    if tuple.family == agent_common::AF_INET {
        return remote[0] == 127 || remote[..4] == tuple.local_addr[..4];
    }
    let mapped_v4 = remote[..10] == [0; 10] && remote[10] == 0xff && remote[11] == 0xff;
    let loopback_v6 = remote[..15] == [0; 15] && remote[15] == 1;
    loopback_v6 || (mapped_v4 && remote[12] == 127) || *remote == tuple.local_addr
}

/// A SERVER request was read on connection `conn_id` (socket `tcp_sk`) from sequence number
/// `seq` on: it adopts the context its first segment carried, else starts a trace; its thread
/// serves it; the agent is told. A request without a context from a client on this host
/// (`local_peer`) starts none: its client is traced here and the agent's rules name its trace,
/// which the programs cannot know; its thread's CLIENT requests carry nothing.
#[inline(always)]
fn server_request(pid_tgid: u64, fd: i32, conn: &mut ConnInfo, seq: u32) {
    let conn_id = conn.conn_id;
    let local_peer = is_local_peer(&conn.tuple);
    let key = InbandKey {
        sk: conn.tcp_sk,
        seq,
        reserved: 0,
    };
    let Some(event) = INBAND_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; syscall tracepoint programs run with preemption off and do not
    // nest on one CPU.
    let event = unsafe { &mut *event };
    event.header = header(EventKind::Inband, pid_tgid, fd, conn_id, now_ns());
    event.seq = seq;
    // Read in place, not copied: this function's frame is in the data exits' deepest chain.
    // SAFETY: the value is read before the entry is removed below, and not after.
    let carried = unsafe { INBAND_IN.get(&key) };
    let present = carried.is_some();
    // Whether the thread serves the trace now in `event.trace_id` (else one unknown to it).
    let mut serves_known = false;
    match carried {
        // A copy of the option the last request adopted (see `ConnInfo::inband_adopted`) is
        // none.
        Some(carried) if carried.span_id != conn.inband_adopted => {
            conn.inband_adopted = carried.span_id;
            event.trace_id = carried.trace_id;
            event.span_id = carried.span_id;
            if carried.flags == INBAND_CONTEXT_ASK {
                // The trace is the client's agent's to tell this one: unknown to the programs,
                // so the thread's CLIENT requests ask too.
                event.flags = INBAND_RECEIVED | INBAND_ADOPTED | INBAND_ASK;
            } else {
                event.flags = INBAND_RECEIVED | INBAND_ADOPTED;
                serves_known = true;
            }
            count(Counter::InbandAdopted);
        }
        _ if local_peer || config!(inband_starts_traces) == 0 => {
            // Unknown here (its client's trace is this agent's rules' to name, or its
            // announcement's to bring): no note, and the thread's CLIENT requests are unsure.
            event.flags = 0;
            event.trace_id = [0; 16];
            event.span_id = [0; 8];
        }
        _ => {
            event.flags = INBAND_RECEIVED;
            event.trace_id = random_trace_id();
            event.span_id = [0; 8];
            serves_known = true;
        }
    }
    if present {
        let _ = INBAND_IN.remove(&key);
    }
    serves(
        pid_tgid,
        conn,
        if serves_known {
            &event.trace_id
        } else {
            &[0; 16]
        },
    );
    if event.flags == 0 {
        return;
    }
    if EVENTS.output::<InbandEvent>(event, 0).is_ok() {
        count(Counter::EventsSent);
    } else {
        count(Counter::RingFull);
    }
}

/// The thread read the start of a request on connection `conn` whose trace is `trace_id` (all
/// zero: unknown to the programs). Counted once per connection (a request read while the
/// connection's last one is still counted replaces nothing: the thread's trace becomes
/// unknown). One open already: the thread serves several at once (an event loop), and stays
/// unsure until none is open.
#[inline(always)]
fn serves(pid_tgid: u64, conn: &mut ConnInfo, trace_id: &[u8; 16]) {
    let first_here = u32::from(conn.inband_reader == 0);
    if conn.inband_reader == 0 {
        conn.inband_reader = pid_tgid;
    }
    if let Some(open) = INBAND_SERVING.get_ptr_mut(&pid_tgid) {
        // SAFETY: a pointer from a successful lookup; only this thread's syscalls add to its
        // entry (another thread's answer may lose one count at worst, as in `one_fewer_open`).
        let open = unsafe { &mut *open };
        if open.open > 0 {
            // Updated in place: no second copy of the entry on this frame.
            open.trace_id = [0; 16];
            open.conn_id = conn.conn_id;
            open.open += first_here;
            open.several |= first_here;
            return;
        }
    }
    let serving = InbandServing {
        // Counted for another thread: this one's trace is unknown.
        trace_id: if first_here == 0 { [0; 16] } else { *trace_id },
        conn_id: conn.conn_id,
        open: 1,
        several: 1 - first_here,
    };
    let _ = INBAND_SERVING.insert(&pid_tgid, &serving, 0);
}

/// The thread read the start of a request the programs cannot follow (see [`InbandServing`]).
#[inline(always)]
fn serves_unknown(pid_tgid: u64, conn: &mut ConnInfo) {
    serves(pid_tgid, conn, &[0; 16]);
}

/// A SERVER response's first write on `conn` (by any thread): one request fewer open on the
/// thread that read it.
#[inline(always)]
fn answered(conn: &mut ConnInfo) {
    let reader = conn.inband_reader;
    if reader == 0 {
        return;
    }
    conn.inband_reader = 0;
    // Inlined: a call would add a frame to the exit programs' chain through `after_data`
    // (`agent/src/probes/stack_budget.rs` checks those chains).
    one_fewer_open(reader);
}

/// One request fewer open on thread `reader` (its connection closed). Out of line, for the
/// close path.
#[inline(never)]
pub fn closed(reader: u64) {
    one_fewer_open(reader);
}

/// One request fewer open on thread `reader` (answered, or its connection closed).
#[inline(always)]
fn one_fewer_open(reader: u64) {
    let Some(serving) = INBAND_SERVING.get_ptr_mut(&reader) else {
        return;
    };
    // SAFETY: a pointer from a successful lookup; a racing update of another CPU's syscall of
    // the same thread cannot happen (a thread runs one syscall at a time), another thread's
    // answer may lose one count at worst (the entry then stays unsure: never a wrong trace).
    let serving = unsafe { &mut *serving };
    if serving.open <= 1 {
        let _ = INBAND_SERVING.remove(&reader);
    } else {
        serving.open -= 1;
    }
}

/// The exit programs, on a data syscall whose bytes the programs will not follow as requests
/// (TLS whose records are not followed, hidden by the budget), or after the record whose detection found them so (TLS, HTTP/2,
/// opaque): a SERVER request that starts here is one the thread serves without a trace the
/// programs know. Out of line: its stack frame is its own.
#[inline(never)]
pub fn unfollowed_data(pid_tgid: u64, entry: *mut ConnInfo, direction: u32) {
    if entry.is_null() {
        return;
    }
    // SAFETY: as in `after_data`.
    let conn = unsafe { &mut *entry };
    let previous = conn.inband_direction;
    conn.inband_direction = direction;
    if direction == Direction::Egress as u32 {
        if previous != direction {
            answered(conn);
        }
        return;
    }
    if conn.role == Role::Client as u32 {
        return;
    }
    if conn.role != Role::Server as u32 {
        // Role unknown yet: a read may be a client's response as well as a request.
        return;
    }
    if previous != direction {
        serves_unknown(pid_tgid, conn);
    } else if conn.inband_reader == pid_tgid {
        // The record whose detection just found the protocol: its start was counted as a
        // request the programs follow; its trace is unknown after all.
        if let Some(serving) = INBAND_SERVING.get_ptr_mut(&pid_tgid) {
            // SAFETY: a pointer from a successful lookup; only this thread writes its entry
            // here.
            unsafe { (*serving).trace_id = [0; 16] };
        }
    }
}

/// `BPF_PROG_TYPE_SOCK_OPS`, attached to the root cgroup (v2) by the agent in the in-band mode:
/// `struct bpf_sock_ops *` per TCP event of every socket in it. See the module's doc for the
/// callbacks used. Always returns 1 (the callbacks' "ok").
#[sock_ops]
pub fn inband_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB if traced_netns(&ctx) => {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32);
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB if traced_netns(&ctx) => {
            let _ = ctx
                .set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG) as i32);
            // A socket's memory is reused: a form an earlier connection's last segment left in
            // its slot, never read, must not name this one's client.
            let _ = INBAND_IN.remove(&InbandKey {
                sk: socket_of(&ctx),
                seq: 0,
                reserved: INBAND_KEY_CONN_FORM,
            });
        }
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => reserve(&ctx),
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB => write(&ctx),
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB if traced_netns(&ctx) => parse(&ctx),
        _ => {}
    }
    1
}

/// Whether the event's socket is in the network namespace this agent traces (`--netns-only`;
/// every namespace otherwise): other agents on this kernel mark and read their own.
#[inline(always)]
fn traced_netns(ctx: &SockOpsContext) -> bool {
    let only = config!(netns_cookie);
    // SAFETY: the helper takes the context the kernel passed.
    only == 0 || unsafe { bpf_get_netns_cookie(ctx.ops.cast()) } == only
}

/// The socket of a `sock_ops` event, as the syscall programs know it (`struct sock *`).
#[inline(always)]
fn socket_of(ctx: &SockOpsContext) -> u64 {
    // SAFETY: a field of the context the kernel passed; reading it is a plain context load.
    unsafe { (*ctx.ops).__bindgen_anon_2.sk as u64 }
}

/// The sequence number of the segment whose header the kernel wrote or read (`skb_data` points
/// at its TCP header in the write and parse callbacks).
#[inline(always)]
fn segment_seq(ctx: &SockOpsContext) -> Option<u32> {
    // SAFETY: context loads; the verifier checks the packet bounds below.
    let (data, end) = unsafe {
        (
            (*ctx.ops).__bindgen_anon_3.skb_data as usize,
            (*ctx.ops).__bindgen_anon_4.skb_data_end as usize,
        )
    };
    if data + 8 > end {
        return None;
    }
    // SAFETY: within the packet, as checked above.
    let seq = unsafe { core::ptr::read_unaligned((data + 4) as *const u32) };
    Some(u32::from_be(seq))
}

/// `BPF_SOCK_OPS_HDR_OPT_LEN_CB`: room for the option when the segment about to be built starts
/// at a byte a context waits for (`snd_nxt`: a new segment's first byte), and always when the
/// kernel sizes segments (`tcp_current_mss`: no segment, no flags): a segment sized without the
/// room and given the option later would outgrow the MTU. The connecting ends marked for the
/// mode thus send segments 28 bytes shorter.
#[inline(always)]
fn reserve(ctx: &SockOpsContext) {
    // SAFETY: context loads.
    let (len, flags, snd_nxt) = unsafe {
        (
            (*ctx.ops).skb_len,
            (*ctx.ops).skb_tcp_flags,
            (*ctx.ops).snd_nxt,
        )
    };
    if len != 0 || flags != 0 {
        let key = InbandKey {
            sk: socket_of(ctx),
            seq: snd_nxt,
            reserved: 0,
        };
        // SAFETY: only checked for presence.
        if unsafe { INBAND_OUT.get(&key) }.is_none() {
            return;
        }
    }
    // SAFETY: the helper takes the context the kernel passed. No room is counted when the option
    // cannot be written.
    let _ = unsafe { bpf_reserve_hdr_opt(ctx.ops, INBAND_OPTION_LEN as u32, 0) };
}

/// `BPF_SOCK_OPS_WRITE_HDR_OPT_CB`: writes the option into the segment that starts at a byte a
/// context waits for, and tells the agent which context its CLIENT span has.
#[inline(always)]
fn write(ctx: &SockOpsContext) {
    let Some(seq) = segment_seq(ctx) else {
        return;
    };
    let key = InbandKey {
        sk: socket_of(ctx),
        seq,
        reserved: 0,
    };
    // SAFETY: copied out at once.
    let Some(context) = (unsafe { INBAND_OUT.get(&key) }).copied() else {
        return;
    };
    let exid = match context.flags {
        INBAND_CONTEXT_ASK => INBAND_OPTION_EXID_ASK,
        INBAND_CONTEXT_CONN => INBAND_OPTION_EXID_CONN,
        _ => INBAND_OPTION_EXID,
    };
    let mut option = [0u8; INBAND_OPTION_LEN];
    option[0] = INBAND_OPTION_KIND;
    option[1] = INBAND_OPTION_LEN as u8;
    option[2..4].copy_from_slice(&exid.to_be_bytes());
    option[4..20].copy_from_slice(&context.trace_id);
    option[20..28].copy_from_slice(&context.span_id);
    // SAFETY: the helper takes the context the kernel passed and a buffer of the length given.
    let stored =
        unsafe { bpf_store_hdr_opt(ctx.ops, option.as_ptr().cast(), INBAND_OPTION_LEN as u32, 0) };
    if stored != 0 {
        // No room (other options, SACK blocks, took it).
        count(Counter::InbandNoRoom);
        return;
    }
    let _ = INBAND_OUT.remove(&key);
    match context.flags {
        INBAND_CONTEXT_CONN => count(Counter::InbandConnSent),
        INBAND_CONTEXT_ASK => {
            count(Counter::InbandSent);
            count(Counter::InbandAsk);
        }
        _ => count(Counter::InbandSent),
    }
}

/// Our option of experiment `exid` in the segment of a `BPF_SOCK_OPS_PARSE_HDR_OPT_CB`, whole.
#[inline(always)]
fn load_option(ctx: &SockOpsContext, exid: u16) -> Option<[u8; INBAND_OPTION_LEN]> {
    let mut option = [0u8; INBAND_OPTION_LEN];
    // Search by kind, and for an experimental kind its 2-byte id (the length byte says 4).
    option[0] = INBAND_OPTION_KIND;
    option[1] = 4;
    option[2..4].copy_from_slice(&exid.to_be_bytes());
    // SAFETY: the helper takes the context the kernel passed and a buffer of the length given.
    let found = unsafe {
        bpf_load_hdr_opt(
            ctx.ops,
            option.as_mut_ptr().cast(),
            INBAND_OPTION_LEN as u32,
            0,
        )
    };
    (found == INBAND_OPTION_LEN as i64
        && option[1] == INBAND_OPTION_LEN as u8
        && option[2..4] == exid.to_be_bytes())
    .then_some(option)
}

/// `BPF_SOCK_OPS_PARSE_HDR_OPT_CB` (a received segment with an option the kernel does not
/// know): keeps our option's context under the segment's first byte (a request's forms), or in
/// the socket's one slot for the connection form ([`INBAND_KEY_CONN_FORM`]).
#[inline(always)]
fn parse(ctx: &SockOpsContext) {
    let (option, flags) = if let Some(option) = load_option(ctx, INBAND_OPTION_EXID) {
        (option, 0)
    } else if let Some(option) = load_option(ctx, INBAND_OPTION_EXID_ASK) {
        (option, INBAND_CONTEXT_ASK)
    } else if let Some(option) = load_option(ctx, INBAND_OPTION_EXID_CONN) {
        (option, INBAND_CONTEXT_CONN)
    } else {
        return;
    };
    let seq = if flags == INBAND_CONTEXT_CONN {
        0
    } else if let Some(seq) = segment_seq(ctx) {
        seq
    } else {
        return;
    };
    let mut context = InbandContext {
        flags,
        ..InbandContext::default()
    };
    context.trace_id.copy_from_slice(&option[4..20]);
    context.span_id.copy_from_slice(&option[20..28]);
    let key = InbandKey {
        sk: socket_of(ctx),
        seq,
        reserved: if flags == INBAND_CONTEXT_CONN {
            INBAND_KEY_CONN_FORM
        } else {
            0
        },
    };
    let _ = INBAND_IN.insert(&key, &context, 0);
}
