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
//! `ssl_free` (uprobe at `SSL_free`) forgets an `SSL *`. Checked on OpenSSL 3.0.19 (Debian 12
//! `libssl3`) with Python 3.11's `ssl`, curl 7.88 and nginx 1.22.
//!
//! Arguments by the System V AMD64 ABI: rdi, rsi, rdx, rcx; the result in rax.

use agent_common::{
    ConnKey, Counter, DataEvent, Direction, EventKind, MAX_CAPTURE_BYTES, Protocol, Role, SslCall,
    SslFunction, SslKey, SslSocket, Syscall,
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
    maps::{CONNS, EVENTS, GO_TLS_CALLS, GO_TLS_HANDSHAKES, SSL_CALLS, SSL_SOCKETS, config, count},
    syscalls::{header, now_ns, traced_pid_tgid},
};

/// `hook`: uprobe at the entry of `SSL_write`, `SSL_write_ex`, `SSL_read`, `SSL_read_ex`
/// (`SSL *ssl`, `buf`, `num`[, `size_t *count`]).
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
    let ex = function == SslFunction::WriteEx as u64 || function == SslFunction::ReadEx as u64;
    let call = SslCall {
        ssl,
        buf,
        count_ptr: if ex { count_ptr } else { 0 },
        entry_ns: now_ns(),
        conn_id: 0,
        function: function as u32,
        fd: -1,
    };
    let _ = SSL_CALLS.insert(&pid_tgid, &call, 0);
    0
}

/// `hook`: uretprobe of the same four functions: sends what the call wrote or read.
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
    let _ = SSL_CALLS.remove(&pid_tgid);
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
    send(pid_tgid, &call, write, bytes, call.ssl);
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
    let _ = SSL_SOCKETS.remove(&SslKey {
        tgid: (pid_tgid >> 32) as u32,
        pad: 0,
        ssl,
    });
    0
}

/// Called by the syscall exit program for a read or write on a TLS socket: if this thread is
/// inside an OpenSSL call, or the goroutine `g` (R14, when the syscall came from Go code) inside
/// a Go `crypto/tls` call, that call (and its `SSL *` or `*tls.Conn` from now on) uses this
/// socket.
#[inline(always)]
pub fn note_socket(pid_tgid: u64, g: u64, fd: i32, conn_id: u64) {
    if let Some(call) = SSL_CALLS.get_ptr_mut(&pid_tgid) {
        note_call_socket(pid_tgid, call, fd, conn_id);
        return;
    }
    let key = SslKey {
        tgid: (pid_tgid >> 32) as u32,
        pad: 0,
        ssl: g,
    };
    if g == 0 {
        return;
    }
    if let Some(call) = GO_TLS_CALLS.get_ptr_mut(&key) {
        note_call_socket(pid_tgid, call, fd, conn_id);
    } else if let Some(conn) = GO_TLS_HANDSHAKES.get_ptr(&key) {
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
                pad: 0,
            },
            0,
        );
    }
}

#[inline(always)]
fn note_call_socket(pid_tgid: u64, call: *mut SslCall, fd: i32, conn_id: u64) {
    // SAFETY: the entry of this thread's (or this goroutine's) call: nothing else writes it
    // meanwhile (the thread is in this syscall, and a goroutine runs on one thread at a time).
    let call = unsafe { &mut *call };
    if call.fd >= 0 {
        return;
    }
    call.fd = fd;
    call.conn_id = conn_id;
    let _ = SSL_SOCKETS.insert(
        &SslKey {
            tgid: (pid_tgid >> 32) as u32,
            pad: 0,
            ssl: call.ssl,
        },
        &SslSocket {
            conn_id,
            fd,
            pad: 0,
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
            // Plaintext: its offsets are not the TCP stream's.
            seq: 0,
            flags: if write && role != Role::Server as u32 {
                crate::shed::hidden_work_flags_unread(pid_tgid)
            } else {
                0
            },
        });
    }
    entry.submit(0);
    count(Counter::EventsSent);
}
