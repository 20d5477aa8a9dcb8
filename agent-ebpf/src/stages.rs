//! The capture program cut short after each of its steps, for the benchmark's breakdown of where
//! a captured syscall's time goes (`cargo xtask bench`, section 1): the run time of each, minus
//! the one before it, is what that step costs. Loaded only by `sockspan bench-floor --stage`,
//! beside the real `sys_enter`; nothing here sends data records.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::syscalls::{exit_program, stage};

/// `raw_syscalls/sys_exit`, stopping after the connection lookup.
#[btf_tracepoint(function = "sys_exit")]
pub fn lookup_sys_exit(ctx: BtfTracePointContext) -> i32 {
    exit_program::<{ stage::LOOKUP }>(&ctx)
}

/// `raw_syscalls/sys_exit`, stopping after the timestamps.
#[btf_tracepoint(function = "sys_exit")]
pub fn clock_sys_exit(ctx: BtfTracePointContext) -> i32 {
    exit_program::<{ stage::CLOCK }>(&ctx)
}

/// `raw_syscalls/sys_exit`, stopping after the payload copy and protocol detection.
#[btf_tracepoint(function = "sys_exit")]
pub fn copy_sys_exit(ctx: BtfTracePointContext) -> i32 {
    exit_program::<{ stage::COPY }>(&ctx)
}
