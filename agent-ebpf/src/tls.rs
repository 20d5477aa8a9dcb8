//! The OpenSSL probes: the plaintext of TLS connections, read where the library takes it
//! (`SSL_write`, `SSL_write_ex`) and gives it back (`SSL_read`, `SSL_read_ex`), and tied to the
//! socket the call used.
//!
//! `ssl_enter` (uprobe at each function's entry; the attach cookie is its
//! [`SslFunction`]) saves the call's arguments by thread; `ssl_return` (uretprobe) takes them,
//! reads the byte count (the return value, or `*count` for the `_ex` forms) and sends the
//! plaintext as a data record of the socket. Which socket: the one a read or write syscall made
//! inside the call used (the syscall exit program notes it in the call and, for later calls,
//! in `SSL_SOCKETS`), else the one the same `SSL *` used before (OpenSSL serves many reads from
//! its own buffer, with no syscall). No struct offsets, so no tie to an OpenSSL release.
//!
//! OpenSSL on memory BIOs (Node.js's `TLSWrap`, Python asyncio's `SSLObject`) makes no syscall
//! inside its calls: the runtime reads the ciphertext from the socket and hands it to OpenSSL in
//! the same callback, and writes what a call produced right after it. An `SSL *` not tied yet
//! is tied once the TLS socket its thread read just before one of its calls and the one its
//! thread wrote just after one agree ([`SslTieEvidence`]); a handshake gives both before any
//! plaintext, and `SSL_do_handshake` is probed for this. A tied `SSL *` is never tied again.
//!
//! Arguments by the System V AMD64 ABI: rdi, rsi, rdx, rcx; the result in rax.

use agent_common::{
    ConnKey, Counter, DATA_RECORD_SEQ, DataEvent, Direction, EventKind, MAX_CAPTURE_BYTES,
    Protocol, Role, SSL_ADJACENT_NS, SSL_EVIDENCE_SPAN_NS, SslCall, SslCallBefore, SslFunction,
    SslKey, SslReadBefore, SslSocket, SslTieEvidence, Syscall, is_handshake_record,
};
use aya_ebpf::{
    helpers::{
        bpf_probe_read_user,
        generated::{bpf_get_attach_cookie, bpf_probe_read_user as read_user_raw},
    },
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    followed::{self, NOT_FOLLOWED},
    maps::{
        CONNS, EVENTS, GO_TLS_CALLS, GO_TLS_HANDSHAKES, SSL_CALL_BEFORE, SSL_CALLS,
        SSL_READ_BEFORE, SSL_SOCKETS, SSL_TIE_EVIDENCE, config, count,
    },
    socket::stream_seq,
    syscalls::{header, now_ns, traced_pid_tgid},
};

/// `hook`: uprobe at the entry of `SSL_write`, `SSL_write_ex`, `SSL_read`, `SSL_read_ex`
/// (`SSL *ssl`, `buf`, `num`[, `size_t *count`]) and `SSL_do_handshake` (`SSL *ssl`).
#[uprobe]
pub fn ssl_enter(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return 0;
    };
    // SAFETY: the helper reads the cookie of the perf event that ran this program.
    let function = unsafe { bpf_get_attach_cookie(ctx.regs.cast()) };
    let regs = ctx.regs;
    // SAFETY: `regs` is the probe's context (the user task's `struct pt_regs`); the verifier
    // checks each load against it. Volatile, so each stays a fixed-offset load.
    let (ssl, buf, count_ptr) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*regs).rdi),
            core::ptr::read_volatile(&raw const (*regs).rsi),
            core::ptr::read_volatile(&raw const (*regs).rcx),
        )
    };
    read_before_call(pid_tgid, ssl);
    let ex = function == SslFunction::WriteEx as u64 || function == SslFunction::ReadEx as u64;
    let write = function == SslFunction::Write as u64 || function == SslFunction::WriteEx as u64;
    // A plain integer, not an `Option`: the verifier refuses a register the compiler left
    // unwritten on a `None` path. A read's comes from the first read inside it, if any.
    let seq = if write {
        write_record_seq(pid_tgid, ssl)
    } else {
        0
    };
    if write && config!(inband) != 0 {
        crate::inband::tls_write_enter(pid_tgid, ssl, buf);
    }
    let call = SslCall {
        ssl,
        buf,
        count_ptr: if ex { count_ptr } else { 0 },
        entry_ns: now_ns(),
        conn_id: 0,
        function: function as u32,
        fd: -1,
        seq: seq as u32,
        seq_valid: (seq >> 32) as u32,
    };
    // A handshake never displaces a read or write of the same `SSL *` in progress (none calls
    // the exported `SSL_do_handshake` in the OpenSSL releases checked, but a fork might); any
    // other entry is a call whose return was never seen, and goes.
    if function == SslFunction::Handshake as u64
        && let Some(running) = SSL_CALLS.get_ptr(&pid_tgid)
        // SAFETY: a pointer from a successful lookup, read at once.
        && unsafe { (*running).ssl } == ssl
    {
        return 0;
    }
    let _ = SSL_CALLS.insert(&pid_tgid, &call, 0);
    0
}

/// `hook`: uretprobe of the same five functions: sends what a read or write call wrote or
/// read; a handshake's return only ends it.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return 0;
    };
    let Some(call) = SSL_CALLS.get_ptr(&pid_tgid) else {
        return 0;
    };
    // SAFETY: a pointer from a successful lookup, copied at once; the entry is this thread's.
    let call = unsafe { *call };
    call_before_write(pid_tgid, &call);
    // SAFETY: the helper reads the cookie of the perf event that ran this program.
    let returning = unsafe { bpf_get_attach_cookie(ctx.regs.cast()) };
    if returning == SslFunction::Handshake as u64 {
        if call.function == SslFunction::Handshake as u32 {
            let _ = SSL_CALLS.remove(&pid_tgid);
        }
        return 0;
    }
    let _ = SSL_CALLS.remove(&pid_tgid);
    if call.function == SslFunction::Handshake as u32 {
        return 0;
    }
    let ret: i64 = ctx.ret();
    let ex =
        call.function == SslFunction::WriteEx as u32 || call.function == SslFunction::ReadEx as u32;
    let bytes = if ex {
        if ret as i32 != 1 {
            return 0;
        }
        // SAFETY: the helper returns an error for a bad user address; it never faults.
        match unsafe { bpf_probe_read_user(call.count_ptr as *const u64) } {
            Ok(n) => n,
            Err(_) => return 0,
        }
    } else if (ret as i32) <= 0 {
        return 0;
    } else {
        u64::from(ret as u32)
    };
    if bytes == 0 {
        return 0;
    }
    let write =
        call.function == SslFunction::Write as u32 || call.function == SslFunction::WriteEx as u32;
    // In a followed runtime (asyncio, Node.js) the call runs in the task or callback that reads
    // or writes the plaintext, as a syscall on a cleartext socket would: its rules apply.
    let task = match followed::current_task(pid_tgid) {
        NOT_FOLLOWED => call.ssl,
        task => task,
    };
    send(pid_tgid, &call, write, bytes, task);
    0
}

/// Sends the plaintext of a finished call (`bytes` of it) as a data record of the socket the
/// call used (`task`: the record's [`DataEvent::task`]).
#[inline(always)]
pub fn send(pid_tgid: u64, call: &SslCall, write: bool, bytes: u64, task: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    let (fd, conn_id) = if call.fd >= 0 {
        (call.fd, call.conn_id)
    } else if let Some(known) = SSL_SOCKETS.get_ptr(&SslKey {
        tgid,
        pad: 0,
        ssl: call.ssl,
    }) {
        // SAFETY: a pointer from a successful lookup, read at once.
        let known = unsafe { *known };
        (known.fd, known.conn_id)
    } else {
        count(Counter::TlsUnlinked);
        return;
    };
    // The fd must still be that connection, and a TLS one (the agent may have given it up).
    let Some(info) = CONNS.get_ptr(&ConnKey { tgid, fd }) else {
        return;
    };
    // SAFETY: as above.
    let info = unsafe { *info };
    if info.conn_id != conn_id || info.protocol != Protocol::Tls as u32 || info.ignored != 0 {
        return;
    }
    emit(pid_tgid, fd, conn_id, info.role, write, bytes, call, task);
}

/// `hook`: uprobe at the entry of `SSL_free` (`SSL *ssl`): its socket is forgotten.
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return 0;
    };
    // SAFETY: as in `ssl_enter`.
    let ssl = unsafe { core::ptr::read_volatile(&raw const (*ctx.regs).rdi) };
    let key = SslKey {
        tgid: (pid_tgid >> 32) as u32,
        pad: 0,
        ssl,
    };
    let _ = SSL_SOCKETS.remove(&key);
    let _ = SSL_TIE_EVIDENCE.remove(&key);
    0
}

/// At an OpenSSL call's entry: the TLS socket the thread read a handshake record from just
/// before, if it did ([`SslReadBefore`]), is evidence for an `SSL *` not tied yet. The read is
/// taken either way: it is evidence for one call at most.
#[inline(always)]
fn read_before_call(pid_tgid: u64, ssl: u64) {
    let Some(read) = SSL_READ_BEFORE.get_ptr(&pid_tgid) else {
        return;
    };
    // SAFETY: a pointer from a successful lookup, copied at once.
    let read = unsafe { *read };
    let _ = SSL_READ_BEFORE.remove(&pid_tgid);
    if read.handshake != 0 && now_ns().saturating_sub(read.read_ns) <= SSL_ADJACENT_NS {
        add_evidence(pid_tgid, ssl, read.conn_id, read.fd, true);
    }
}

/// The TCP sequence number where the records of a write call of an `SSL *` tied by a syscall
/// (a socket BIO) begin ([`SslCall::seq`]), with bit 32 set; 0 if not known: the socket's
/// `write_seq` now, since OpenSSL writes them itself, next. Wrong only where OpenSSL still held
/// an unsent record of an earlier call: then it matches no other end's key, and nothing is
/// paired. On memory BIOs (tied by adjacency) the runtime may queue earlier bytes ahead of the
/// records: none.
#[inline(always)]
fn write_record_seq(pid_tgid: u64, ssl: u64) -> u64 {
    const VALID: u64 = 1 << 32;
    let tgid = (pid_tgid >> 32) as u32;
    let Some(tie) = SSL_SOCKETS.get_ptr(&SslKey { tgid, pad: 0, ssl }) else {
        return 0;
    };
    // SAFETY: a pointer from a successful lookup, copied at once.
    let tie = unsafe { *tie };
    if tie.adjacent != 0 {
        return 0;
    }
    let Some(info) = CONNS.get_ptr(&ConnKey { tgid, fd: tie.fd }) else {
        return 0;
    };
    // SAFETY: a pointer from a successful lookup, read at once.
    let (conn_id, tcp_sk) = unsafe { ((*info).conn_id, (*info).tcp_sk) };
    if conn_id != tie.conn_id || tcp_sk == 0 {
        return 0;
    }
    match stream_seq(tcp_sk, true, 0) {
        Ok(seq) => VALID | u64::from(seq),
        Err(_) => 0,
    }
}

/// At an OpenSSL call's return: an `SSL *` not tied yet, whose call made no syscall that named
/// its socket, waits for the thread's next write to a TLS socket ([`SslCallBefore`]). Any other
/// call clears the wait: a write after it is that call's, not an earlier one's.
#[inline(always)]
fn call_before_write(pid_tgid: u64, call: &SslCall) {
    let key = SslKey {
        tgid: (pid_tgid >> 32) as u32,
        pad: 0,
        ssl: call.ssl,
    };
    if call.fd >= 0 || SSL_SOCKETS.get_ptr(&key).is_some() {
        let _ = SSL_CALL_BEFORE.remove(&pid_tgid);
        return;
    }
    let before = SslCallBefore {
        ssl: call.ssl,
        done_ns: now_ns(),
    };
    let _ = SSL_CALL_BEFORE.insert(&pid_tgid, &before, 0);
}

/// At a write to a TLS socket outside any OpenSSL call: the socket is evidence for the untied
/// `SSL *` whose call the thread returned from just before, if any, when the write begins with
/// a handshake record (`handshake`). Taken either way.
#[inline(always)]
fn write_after_call(pid_tgid: u64, fd: i32, conn_id: u64, handshake: bool) {
    let Some(call) = SSL_CALL_BEFORE.get_ptr(&pid_tgid) else {
        return;
    };
    // SAFETY: a pointer from a successful lookup, copied at once.
    let call = unsafe { *call };
    let _ = SSL_CALL_BEFORE.remove(&pid_tgid);
    if handshake && now_ns().saturating_sub(call.done_ns) <= SSL_ADJACENT_NS {
        add_evidence(pid_tgid, call.ssl, conn_id, fd, false);
    }
}

/// Notes a read (`read`) or write adjacent to a call of `ssl`; ties the `SSL *` once the latest
/// read and write name the same connection.
#[inline(always)]
fn add_evidence(pid_tgid: u64, ssl: u64, conn_id: u64, fd: i32, read: bool) {
    let key = SslKey {
        tgid: (pid_tgid >> 32) as u32,
        pad: 0,
        ssl,
    };
    if SSL_SOCKETS.get_ptr(&key).is_some() {
        return;
    }
    let mut evidence = match SSL_TIE_EVIDENCE.get_ptr(&key) {
        // SAFETY: a pointer from a successful lookup, copied at once.
        Some(known) => unsafe { *known },
        None => SslTieEvidence::default(),
    };
    let now = now_ns();
    if read {
        evidence.read_conn = conn_id;
        evidence.read_fd = fd;
        evidence.read_ns = now;
    } else {
        evidence.write_conn = conn_id;
        evidence.write_fd = fd;
        evidence.write_ns = now;
    }
    // Both, and from one handshake: the other one within its round trip.
    let apart = evidence.read_ns.abs_diff(evidence.write_ns);
    if evidence.read_conn == 0 || evidence.write_conn == 0 || apart > SSL_EVIDENCE_SPAN_NS {
        let _ = SSL_TIE_EVIDENCE.insert(&key, &evidence, 0);
        return;
    }
    if evidence.read_conn != evidence.write_conn || evidence.read_fd != evidence.write_fd {
        count(Counter::TlsTieDisagreed);
        let _ = SSL_TIE_EVIDENCE.insert(&key, &evidence, 0);
        return;
    }
    let _ = SSL_TIE_EVIDENCE.remove(&key);
    let tie = SslSocket {
        conn_id,
        fd,
        adjacent: 1,
    };
    if SSL_SOCKETS.insert(&key, &tie, 0).is_ok() {
        count(Counter::TlsTiedByAdjacency);
    }
}

/// How a read or write of a TLS socket began: its first byte's TCP sequence number (with the
/// exit program's `SEQ_VALID` bit when known; reads only) and its first three bytes (zero when
/// not read).
#[derive(Clone, Copy)]
pub struct IoStart {
    pub seq: u64,
    pub head: [u8; 3],
    /// A read (else a write).
    pub read: bool,
}

/// Called by the syscall exit program for a read or write on a TLS socket: if this thread is
/// inside an OpenSSL call, or the goroutine `g` (R14, when the syscall came from Go code) inside
/// a Go `crypto/tls` call, that call (and its `SSL *` or `*tls.Conn` from now on) uses this
/// socket. Outside any call, a read is kept for the thread's next OpenSSL call
/// ([`SslReadBefore`]) and a write is evidence for the call just before ([`SslCallBefore`]).
/// `start`: how the read or write began.
// Out of line: inlined into each exit program's data path, its branches multiplied the
// verifier's walk of the largest one (253 k → 596 k instructions).
#[inline(never)]
pub fn note_socket(pid_tgid: u64, g: u64, fd: i32, conn_id: u64, start: &IoStart) {
    let read = start.read;
    let read_seq = if read { start.seq } else { 0 };
    if let Some(call) = SSL_CALLS.get_ptr_mut(&pid_tgid) {
        note_call_socket(pid_tgid, call, fd, conn_id, read_seq);
        return;
    }
    let key = SslKey {
        tgid: (pid_tgid >> 32) as u32,
        pad: 0,
        ssl: g,
    };
    if g != 0 {
        if let Some(call) = GO_TLS_CALLS.get_ptr_mut(&key) {
            note_call_socket(pid_tgid, call, fd, conn_id, read_seq);
            return;
        }
        if let Some(conn) = GO_TLS_HANDSHAKES.get_ptr(&key) {
            // SAFETY: a pointer from a successful lookup, read at once.
            let conn = unsafe { *conn };
            let _ = SSL_SOCKETS.insert(
                &SslKey {
                    tgid: key.tgid,
                    pad: 0,
                    ssl: conn,
                },
                &SslSocket {
                    conn_id,
                    fd,
                    adjacent: 0,
                },
                0,
            );
            return;
        }
    }
    if read {
        let before = SslReadBefore {
            conn_id,
            fd,
            handshake: u32::from(is_handshake_record(start.head, false)),
            read_ns: now_ns(),
        };
        let _ = SSL_READ_BEFORE.insert(&pid_tgid, &before, 0);
    } else {
        write_after_call(pid_tgid, fd, conn_id, is_handshake_record(start.head, true));
    }
}

/// `read_seq`: where a read syscall began (with `SEQ_VALID`), 0 for a write: the first read
/// inside a read call is where its records came in ([`SslCall::seq`]; OpenSSL reads a record's
/// header, then its body, and no further). A call served from what OpenSSL buffered makes none,
/// and has no position.
#[inline(always)]
fn note_call_socket(pid_tgid: u64, call: *mut SslCall, fd: i32, conn_id: u64, read_seq: u64) {
    // SAFETY: the entry of this thread's (or this goroutine's) call: nothing else writes it
    // meanwhile (the thread is in this syscall, and a goroutine runs on one thread at a time).
    let call = unsafe { &mut *call };
    if call.fd >= 0 {
        return;
    }
    call.fd = fd;
    call.conn_id = conn_id;
    let reading =
        call.function == SslFunction::Read as u32 || call.function == SslFunction::ReadEx as u32;
    if reading && read_seq >> 32 != 0 {
        call.seq = read_seq as u32;
        call.seq_valid = 1;
    }
    let _ = SSL_SOCKETS.insert(
        &SslKey {
            tgid: (pid_tgid >> 32) as u32,
            pad: 0,
            ssl: call.ssl,
        },
        &SslSocket {
            conn_id,
            fd,
            adjacent: 0,
        },
        0,
    );
}

/// A TLS data record as reserved in the ring: the payload room is fixed (a reservation cannot
/// shrink), so each record takes `MAX_CAPTURE_BYTES` of ring space while in flight; the agent
/// reads `captured_len` bytes of it. Assembled in place rather than in a per-CPU scratch slot:
/// a uprobe program can be preempted, and another on the same CPU would share the slot.
#[repr(C)]
struct TlsRecord {
    event: DataEvent,
    payload: [u8; MAX_CAPTURE_BYTES],
}

/// Sends the plaintext of one call as a data record of the connection.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // One record's fields, each from a different place.
fn emit(
    pid_tgid: u64,
    fd: i32,
    conn_id: u64,
    role: u32,
    write: bool,
    bytes: u64,
    call: &SslCall,
    task: u64,
) {
    let Some(mut entry) = EVENTS.reserve::<TlsRecord>(0) else {
        count(Counter::RingFull);
        return;
    };
    let record = entry.as_mut_ptr();
    let limit = u64::from(config!(capture_bytes));
    let mut want = if bytes < limit { bytes } else { limit };
    if want > MAX_CAPTURE_BYTES as u64 {
        want = MAX_CAPTURE_BYTES as u64;
    }
    // SAFETY: `want` ≤ the payload's size (clamped just above, in a form the verifier tracks);
    // the helper checks the user address and returns an error instead of faulting.
    let read = unsafe {
        read_user_raw(
            (&raw mut (*record).payload).cast(),
            want as u32,
            call.buf as *const core::ffi::c_void,
        )
    };
    let captured = if read < 0 {
        count(Counter::PayloadReadFailed);
        0
    } else {
        want as u32
    };
    if u64::from(captured) < bytes {
        count(Counter::PayloadTruncated);
    }
    // Written plaintext leaves with the call's entry, read plaintext reaches the caller at
    // its return.
    let ts = if write { call.entry_ns } else { now_ns() };
    // SAFETY: the reservation holds a whole `TlsRecord`; only its header is written here.
    unsafe {
        (&raw mut (*record).event).write(DataEvent {
            header: header(EventKind::Data, pid_tgid, fd, conn_id, ts),
            moved_ns: ts,
            ret: bytes as i64,
            role,
            direction: if write {
                Direction::Egress as u32
            } else {
                Direction::Ingress as u32
            },
            syscall: if write {
                Syscall::SslWrite as u32
            } else {
                Syscall::SslRead as u32
            },
            captured_len: captured,
            task,
            // Plaintext: its offsets are not the TCP stream's; where its ciphertext began is.
            seq: call.seq,
            flags: if write && role != Role::Server as u32 {
                crate::shed::hidden_work_flags_unread(pid_tgid)
            } else {
                0
            } | if call.seq_valid != 0 {
                DATA_RECORD_SEQ
            } else {
                0
            },
        });
    }
    // Counted with the CPU's other records (`wakeup_for`), by the ring space it takes (the
    // whole reservation). A uprobe program can be preempted
    // by another on its CPU: a race on the count can at worst move one look at the backlog.
    entry.submit(crate::syscalls::wakeup_for(
        core::mem::size_of::<TlsRecord>() as u64,
    ));
    count(Counter::EventsSent);
}
