//! The Go `crypto/tls` probes: the plaintext of a Go program's TLS connections, read where
//! `(*tls.Conn).Write` takes it and `(*tls.Conn).Read` gives it back, tied to the socket the
//! call used as the OpenSSL probes do ([`crate::tls`]).
//!
//! `go_tls_enter` (uprobe at each function's entry; the attach cookie is its
//! [`SslFunction`]) saves the call by goroutine: Go's `ABIInternal` (Go 1.17+, amd64) passes
//! the receiver in AX and the slice `b` in BX (pointer) and CX (length), and R14 holds the
//! running goroutine's `g`. A function whose stack must grow runs its entry twice (the prologue
//! calls `morestack` and starts over): the second save is the same call. `go_tls_return`
//! (uprobes at each `RET` instruction of the same functions: a uretprobe's rewritten return
//! address breaks Go's stack moves) takes it by the same `g`, reads `n` from AX and sends that
//! much plaintext. Which socket: the one a read or write syscall made by that goroutine inside
//! the call used (the syscall exit program notes it; the goroutine may have waited for the
//! socket and gone on on another thread), else the one the same `*tls.Conn` used before (a read
//! served from what the connection had buffered). The record's `task` is the `g`, as for every
//! syscall of a Go program: the goroutine rule links TLS calls like cleartext ones. Checked on
//! Go 1.19 (Debian `golang-go` 1.19.8) with `net/http` clients and servers.

use agent_common::{SslCall, SslFunction, SslKey};
use aya_ebpf::{helpers::generated::bpf_get_attach_cookie, macros::uprobe, programs::ProbeContext};

use crate::{
    maps::{GO_TLS_CALLS, GO_TLS_HANDSHAKES},
    syscalls::{now_ns, traced_pid_tgid},
    tls,
};

/// `hook`: uprobe at the entry of `crypto/tls.(*Conn).Write` and `(*Conn).Read` (`c *Conn` in
/// AX, `b []byte` in BX and CX, the goroutine in R14), and of `(*Conn).serverHandshake` and
/// `clientHandshake` (`c *Conn` in AX): a handshake's syscalls may read what a later `Read`
/// serves from the connection's buffer, so they tie the connection to its socket too.
#[uprobe]
pub fn go_tls_enter(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return 0;
    };
    // SAFETY: the helper reads the cookie of the perf event that ran this program.
    let function = unsafe { bpf_get_attach_cookie(ctx.regs.cast()) };
    let regs = ctx.regs;
    // SAFETY: `regs` is the probe's context (the user task's `struct pt_regs`); the verifier
    // checks each load against it. Volatile, so each stays a fixed-offset load.
    let (conn, buf, g, sp) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*regs).rax),
            core::ptr::read_volatile(&raw const (*regs).rbx),
            core::ptr::read_volatile(&raw const (*regs).r14),
            core::ptr::read_volatile(&raw const (*regs).rsp),
        )
    };
    if g == 0 {
        return 0;
    }
    let key = goroutine(pid_tgid, g);
    if is_handshake(function) {
        let _ = GO_TLS_HANDSHAKES.insert(&key, &conn, 0);
        return 0;
    }
    // A buffer on the goroutine's own stack (`Read` lets `b` stay there) moves with the stack
    // if it grows during the call: kept as its distance below the stack's top, found again at
    // the return from the top then.
    let top = stack_top(g);
    let on_stack = top != 0 && buf >= sp && buf < top;
    let call = SslCall {
        ssl: conn,
        buf: if on_stack { 0 } else { buf },
        count_ptr: if on_stack { top - buf } else { 0 },
        entry_ns: now_ns(),
        conn_id: 0,
        function: function as u32,
        fd: -1,
        seq: 0,
        seq_valid: 0,
    };
    let _ = GO_TLS_CALLS.insert(&key, &call, 0);
    0
}

/// `hook`: uprobes at each `RET` of the same functions (`n int` in AX, the goroutine in R14):
/// sends what a `Write` or `Read` wrote or read; a handshake's end forgets it.
#[uprobe]
pub fn go_tls_return(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return 0;
    };
    // SAFETY: the helper reads the cookie of the perf event that ran this program.
    let function = unsafe { bpf_get_attach_cookie(ctx.regs.cast()) };
    let regs = ctx.regs;
    // SAFETY: as in `go_tls_enter`.
    let (n, g) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*regs).rax),
            core::ptr::read_volatile(&raw const (*regs).r14),
        )
    };
    let key = goroutine(pid_tgid, g);
    if is_handshake(function) {
        let _ = GO_TLS_HANDSHAKES.remove(&key);
        return 0;
    }
    let Some(call) = GO_TLS_CALLS.get_ptr(&key) else {
        return 0;
    };
    // SAFETY: a pointer from a successful lookup, copied at once; the entry is this
    // goroutine's.
    let call = unsafe { *call };
    let _ = GO_TLS_CALLS.remove(&key);
    // `n` is an `int`: bytes written or read, ≤ len(b); an error may come with fewer.
    let bytes = n as i64;
    if bytes <= 0 {
        return 0;
    }
    let mut call = call;
    if call.buf == 0 {
        let top = stack_top(g);
        if top == 0 || call.count_ptr == 0 || call.count_ptr > top {
            return 0;
        }
        call.buf = top - call.count_ptr;
    }
    let write = call.function == SslFunction::GoWrite as u32;
    tls::send(pid_tgid, &call, write, bytes as u64, g);
    0
}

/// The maps' key of goroutine `g` of the current process.
#[inline(always)]
fn goroutine(pid_tgid: u64, g: u64) -> SslKey {
    SslKey {
        tgid: (pid_tgid >> 32) as u32,
        pad: 0,
        ssl: g,
    }
}

/// Whether the probe's cookie names a handshake function.
#[inline(always)]
fn is_handshake(function: u64) -> bool {
    function == SslFunction::GoServerHandshake as u64
        || function == SslFunction::GoClientHandshake as u64
}

/// The top of goroutine `g`'s stack: `g.stack.hi`, the second word of `runtime.g` (its first
/// field is `stack struct { lo, hi uintptr }` in every release with the register ABI); 0 if
/// unreadable.
#[inline(always)]
fn stack_top(g: u64) -> u64 {
    // SAFETY: the helper returns an error for a bad user address; it never faults.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user((g + 8) as *const u64) }.unwrap_or(0)
}
