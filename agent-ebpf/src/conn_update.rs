//! The agent's writes to the connection table, made in the kernel: a program never attached,
//! which the agent runs through `BPF_PROG_TEST_RUN` (`agent_common::conn_update`, whose
//! [`apply`] holds the rules). Each run writes only the fields the agent owns of one entry, in
//! place; what the capture programs write to it is never read back and restored stale.

use agent_common::{
    ConnKey,
    conn_update::{ConnUpdate, NOT_WRITTEN, apply},
};
use core::ffi::c_void;

use aya_ebpf::programs::RawTracePointContext;

use crate::maps::CONNS;

/// Runs one [`ConnUpdate`]. Arguments `[tgid, fd, conn_id, op, a, b, c]`, each a `u64` as the
/// agent passes them to `BPF_PROG_TEST_RUN`, which hands back the return value. Written out
/// instead of by aya's `#[raw_tracepoint]`, whose entry point returns 0 whatever the function
/// returns. Never attached: its section names no tracepoint.
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tp")]
pub extern "C" fn conn_update(ctx: *mut c_void) -> u32 {
    update(&RawTracePointContext::new(ctx))
}

// Each argument is a `u32` or an `i32` the agent widened.
#[allow(clippy::cast_possible_truncation)]
#[inline(always)]
fn update(ctx: &RawTracePointContext) -> u32 {
    let arg = |n: usize| -> u64 { ctx.arg(n) };
    let key = ConnKey {
        tgid: arg(0) as u32,
        fd: arg(1) as i32,
    };
    let Some(op) = ConnUpdate::from_u32(arg(3) as u32) else {
        return NOT_WRITTEN;
    };
    let Some(entry) = CONNS.get_ptr_mut(&key) else {
        return NOT_WRITTEN;
    };
    // SAFETY: a pointer from a successful lookup in this run, into the map's preallocated
    // elements, which live as long as the map: always memory of a `ConnInfo`. An element
    // evicted and reused for another key meanwhile is caught by `apply`'s `conn_id` check but
    // for the instant between that check and its stores (the LRU reuses the least recent
    // entries, not one just looked up).
    let written = unsafe {
        apply(
            entry,
            arg(2),
            op,
            arg(4) as u32,
            arg(5) as u32,
            arg(6) as u32,
        )
    };
    if op == ConnUpdate::Forget && written != NOT_WRITTEN && CONNS.remove(&key).is_err() {
        // Closed meanwhile: the close removed it.
        return NOT_WRITTEN;
    }
    written
}
