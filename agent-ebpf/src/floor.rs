//! Empty programs on the same hooks as the real ones: the floor that benchmarks compare sockspan
//! against (the cost any program on the raw syscall tracepoints imposes, doing nothing), and on
//! the socket layer's tracepoints, the floor of capturing there instead. Loaded only by
//! `sockspan bench-floor`.

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

/// Does nothing on `sock/sock_send_length` (`(struct sock *sk, int ret, int flags)`, fired by
/// `sock_sendmsg` after every send on a socket, whatever the syscall): the floor of capturing at
/// the socket layer, where a syscall that is not socket I/O runs no program and keeps the fast
/// syscall path. On kernels from 2023 on (the bench leaves the variant out where it is missing).
#[btf_tracepoint(function = "sock_send_length")]
pub fn floor_sock_send_length(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Does nothing on `sock/sock_recv_length` (`(struct sock *sk, int ret, int flags)`, fired by
/// `sock_recvmsg` after every receive); see [`floor_sock_send_length`].
#[btf_tracepoint(function = "sock_recv_length")]
pub fn floor_sock_recv_length(_ctx: BtfTracePointContext) -> i32 {
    0
}
