//! One uprobe program for the Go runtime probes: attached (by the agent, once per Go executable)
//! at `runtime.newproc1`'s entry and each of its return instructions, and at the entries of
//! `net/http.(*Transport).roundTrip` and `net/http.(*Request).write`. The attach cookie says
//! which ([`GoProbe`]); the program reads the registers that probe needs and sends them in a
//! [`GoProbeEvent`]. The agent pairs them: which goroutine spawned which, and for which calling
//! goroutine a connection's write loop writes a request.
//!
//! Arguments are read from registers by Go's `ABIInternal` (Go 1.17+, amd64): AX, BX, CX, … in
//! order, the receiver first; a result comes back in AX; R14 holds the running goroutine's `g`
//! in Go code. No uretprobe: Go moves goroutine stacks, and a uretprobe's rewritten return
//! address breaks that, so returns are probed at their `RET` instructions instead. Checked on
//! Go 1.19 (Debian `golang-go` 1.19.8).

use agent_common::{EventKind, GoProbe, GoProbeEvent};
use aya_ebpf::{helpers::generated::bpf_get_attach_cookie, macros::uprobe, programs::ProbeContext};

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
    let (a, b) = match cookie {
        c if c == GoProbe::NewprocEnter as u64 => (rbx, 0),
        c if c == GoProbe::NewprocReturn as u64 => (rax, 0),
        c if c == GoProbe::RoundTrip as u64 => (r14, rbx),
        c if c == GoProbe::RequestWrite as u64 => (r14, rax),
        _ => return 0,
    };
    let Some(mut entry) = EVENTS.reserve::<GoProbeEvent>(0) else {
        count(Counter::RingFull);
        return 0;
    };
    entry.write(GoProbeEvent {
        header: header(EventKind::GoProbe, pid_tgid, -1, 0, now_ns()),
        probe: cookie as u32,
        reserved: 0,
        a,
        b,
    });
    entry.submit(0);
    count(Counter::EventsSent);
    0
}
