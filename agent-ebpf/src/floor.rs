//! Empty programs on the same tracepoints as the real ones: the floor that benchmarks compare
//! sockspan against (the cost any syscall tracepoint program imposes, doing nothing). Loaded only
//! by `sockspan bench-floor`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

macro_rules! floor {
    ($($name:ident),* $(,)?) => {
        $(
            /// Does nothing; attached to the tracepoint its name (minus `floor_`) names.
            #[tracepoint]
            pub fn $name(_ctx: TracePointContext) -> u32 {
                0
            }
        )*
    };
}

floor!(
    floor_sys_enter_read,
    floor_sys_exit_read,
    floor_sys_enter_write,
    floor_sys_exit_write,
    floor_sys_enter_recvfrom,
    floor_sys_exit_recvfrom,
    floor_sys_enter_sendto,
    floor_sys_exit_sendto,
    floor_sys_enter_recvmsg,
    floor_sys_exit_recvmsg,
    floor_sys_enter_sendmsg,
    floor_sys_exit_sendmsg,
    floor_sys_enter_readv,
    floor_sys_exit_readv,
    floor_sys_enter_writev,
    floor_sys_exit_writev,
    floor_sys_enter_accept,
    floor_sys_exit_accept,
    floor_sys_enter_accept4,
    floor_sys_exit_accept4,
    floor_sys_enter_connect,
    floor_sys_exit_connect,
    floor_sys_enter_sendfile64,
    floor_sys_exit_sendfile64,
    floor_sys_enter_sendmmsg,
    floor_sys_exit_sendmmsg,
    floor_sys_enter_recvmmsg,
    floor_sys_exit_recvmmsg,
    floor_sys_enter_close,
);
