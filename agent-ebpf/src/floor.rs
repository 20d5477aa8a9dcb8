//! Empty programs on the same hooks as the real ones: the floor that benchmarks compare sockspan
//! against (the cost any program on the raw syscall tracepoints imposes, doing nothing). Loaded
//! only by `sockspan bench-floor`.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

/// Does nothing on `raw_syscalls/sys_enter`.
#[btf_tracepoint(function = "sys_enter")]
pub fn floor_sys_enter(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Does nothing on `raw_syscalls/sys_exit`.
#[btf_tracepoint(function = "sys_exit")]
pub fn floor_sys_exit(_ctx: BtfTracePointContext) -> i32 {
    0
}
