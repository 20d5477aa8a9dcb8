//! One uprobe program for the Go runtime probes: attached (by the agent, once per Go executable)
//! at each return instruction of `runtime.newproc1`, and at the entries of
//! `net/http.(*persistConn).roundTrip` and `net/http.(*Request).write`. The attach cookie says
//! which ([`GoProbe`]) and carries the struct offsets of that executable's Go release
//! ([`agent_common::go_probe_cookie`]); the program reads what that probe needs and sends it in
//! a [`GoProbeEvent`]. Each hit is a trap into the kernel (tens of µs on some VMs, see
//! BENCHMARKS.md): one probe per spawn, two per HTTP client call, no more. The agent pairs them: which goroutine spawned which, and for which calling
//! goroutine a connection's write loop writes a request.
//!
//! Arguments are read from registers by Go's `ABIInternal` (Go 1.17+, amd64): AX, BX, CX, … in
//! order, the receiver first; a result comes back in AX; R14 holds the running goroutine's `g`
//! in Go code. No uretprobe: Go moves goroutine stacks, and a uretprobe's rewritten return
//! address breaks that, so returns are probed at their `RET` instructions instead. Checked on
//! Go 1.19 (Debian `golang-go` 1.19.8).

use agent_common::{EventKind, GoProbe, GoProbeEvent};
use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::uprobe,
    programs::ProbeContext,
};

use crate::{
    maps::{EVENTS, count},
    syscalls::{header, now_ns, traced_pid_tgid},
};
use agent_common::Counter;

/// `hook`: uprobes at the places [`GoProbe`] names, told apart by their attach cookie.
#[uprobe]
pub fn go_probe(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return 0;
    };
    // SAFETY: the helper reads the cookie of the perf event that ran this program.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.regs.cast()) };
    let regs = ctx.regs;
    // Every register is loaded before any is chosen: choosing first lets the compiler pick a
    // field address and load through it, and the verifier refuses loads through a context
    // pointer moved off its start. Volatile, so the loads stay fixed-offset and separate.
    // SAFETY: `regs` is the probe's context (`struct pt_regs` of the user task); the verifier
    // checks each load against the context's size.
    let (rax, rbx, r14) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*regs).rax),
            core::ptr::read_volatile(&raw const (*regs).rbx),
            core::ptr::read_volatile(&raw const (*regs).r14),
        )
    };
    let probe = cookie & 0xffff;
    let (a, b) = match probe {
        p if p == GoProbe::NewprocReturn as u64 => (rax, spawner(r14, cookie)),
        p if p == GoProbe::RoundTrip as u64 => (r14, embedded_request(rbx)),
        p if p == GoProbe::RequestWrite as u64 => (r14, rax),
        _ => return 0,
    };
    let Some(mut entry) = EVENTS.reserve::<GoProbeEvent>(0) else {
        count(Counter::RingFull);
        return 0;
    };
    entry.write(GoProbeEvent {
        header: header(EventKind::GoProbe, pid_tgid, -1, 0, now_ns()),
        probe: probe as u32,
        reserved: 0,
        a,
        b,
    });
    // No wake-up: the agent drains the ring on its timer, and the data records that follow
    // (which carry the wake-up policy) come after these in the ring anyway. A wake-up here
    // would cost the traced program an IPI on every probe hit.
    entry.submit(u64::from(aya_ebpf::bindings::BPF_RB_NO_WAKEUP));
    count(Counter::EventsSent);
    0
}

/// The goroutine that ran the `go` statement: `g0.m.curg`, `g0` being the system-stack `g` in R14
/// while `newproc1` runs. 0 when a read fails (the agent then records no parent).
#[inline(always)]
fn spawner(g0: u64, cookie: u64) -> u64 {
    let g_m = (cookie >> 16) & 0xffff;
    let m_curg = (cookie >> 32) & 0xffff;
    // SAFETY: bpf_probe_read_user returns an error for a bad user address; it never faults.
    let Ok(m) = (unsafe { bpf_probe_read_user((g0 + g_m) as *const u64) }) else {
        return 0;
    };
    // SAFETY: as above.
    unsafe { bpf_probe_read_user((m + m_curg) as *const u64) }.unwrap_or(0)
}

/// The `*http.Request` a `*transportRequest` embeds as its first field; 0 if unreadable.
#[inline(always)]
fn embedded_request(transport_request: u64) -> u64 {
    // SAFETY: bpf_probe_read_user returns an error for a bad user address; it never faults.
    unsafe { bpf_probe_read_user(transport_request as *const u64) }.unwrap_or(0)
}
