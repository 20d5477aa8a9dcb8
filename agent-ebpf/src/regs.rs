//! A syscall's number and arguments from the registers the raw `sys_enter`/`sys_exit`
//! tracepoints pass (`struct pt_regs *regs`), and the syscall numbers sockspan traces.
//!
//! `struct pt_regs` on `x86_64` is the user ABI that ptrace(2) reads (`<asm/ptrace.h>`), the same on
//! every kernel, so reading its fields at fixed offsets does not tie the programs to the kernel
//! they were built against. The programs are BTF tracepoints, so the verifier checks each load
//! against the running kernel's own `struct pt_regs` and turns it into a fault-safe direct load:
//! no helper call per argument. The argument registers are not touched by the syscall, so the
//! exit program reads the arguments there and no table carries them from entry to exit.

#[cfg(not(bpf_target_arch = "x86_64"))]
compile_error!(
    "sockspan's programs read syscall registers with the x86_64 `pt_regs` layout and x86_64 \
     syscall numbers; another architecture needs its own table in agent-ebpf/src/regs.rs"
);

use agent_common::Syscall;
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_task_btf, bpf_task_pt_regs},
    programs::BtfTracePointContext,
};

/// `__USER_CS`: the code segment of a 64-bit task. A 32-bit (compat) task has `__USER32_CS` and
/// its own syscall numbers and argument registers; it is skipped, as the `syscalls/*`
/// tracepoints skip it.
const USER_CS: u64 = 0x33;

/// `x86_64` syscall numbers (`<asm/unistd_64.h>`).
pub mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const CLOSE: u64 = 3;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const CONNECT: u64 = 42;
    pub const ACCEPT: u64 = 43;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const ACCEPT4: u64 = 288;
    pub const RECVMMSG: u64 = 299;
    pub const SENDMMSG: u64 = 307;
}

/// The syscall a number stands for, if its exit is traced (`close` is handled at entry).
#[inline(always)]
pub fn exit_traced(number: u64) -> Option<Syscall> {
    Some(match number {
        nr::READ => Syscall::Read,
        nr::WRITE => Syscall::Write,
        nr::READV => Syscall::Readv,
        nr::WRITEV => Syscall::Writev,
        nr::SENDFILE => Syscall::Sendfile,
        nr::CONNECT => Syscall::Connect,
        nr::ACCEPT => Syscall::Accept,
        nr::SENDTO => Syscall::Sendto,
        nr::RECVFROM => Syscall::Recvfrom,
        nr::SENDMSG => Syscall::Sendmsg,
        nr::RECVMSG => Syscall::Recvmsg,
        nr::ACCEPT4 => Syscall::Accept4,
        nr::RECVMMSG => Syscall::Recvmmsg,
        nr::SENDMMSG => Syscall::Sendmmsg,
        _ => return None,
    })
}

/// The exit program family (`agent_common::exit_family`) of a traced syscall number.
#[inline(always)]
pub fn exit_family_of(number: u64) -> Option<u32> {
    use agent_common::exit_family;
    Some(match number {
        nr::READ | nr::WRITE | nr::SENDTO | nr::RECVFROM => exit_family::BUFFER,
        nr::READV | nr::WRITEV => exit_family::VECTOR,
        nr::SENDMSG | nr::RECVMSG => exit_family::MESSAGE,
        nr::CONNECT | nr::ACCEPT | nr::ACCEPT4 => exit_family::OPEN,
        nr::RECVMMSG | nr::SENDMMSG | nr::SENDFILE => exit_family::OTHER,
        _ => return None,
    })
}

/// Whether a syscall number hands bytes to the kernel (its entry time is when they left).
#[inline(always)]
pub fn is_egress(number: u64) -> bool {
    matches!(
        number,
        nr::WRITE | nr::SENDTO | nr::SENDMSG | nr::WRITEV | nr::SENDFILE | nr::SENDMMSG
    )
}

/// The registers of the current task's syscall.
#[derive(Clone, Copy)]
pub struct Regs(*const pt_regs);

impl Regs {
    /// The `struct pt_regs *` that both raw syscall tracepoints pass as their first argument.
    #[inline(always)]
    pub fn of(ctx: &BtfTracePointContext) -> Self {
        Self(ctx.arg(0))
    }

    /// The current task's registers as its syscall entered, for programs whose hook does not
    /// pass them (the socket layer's tracepoints, `crate::socket_layer`): `bpf_task_pt_regs` of
    /// `bpf_get_current_task_btf` (kernels from 5.15 on), a BTF-typed `struct pt_regs *` whose
    /// loads the verifier checks and makes fault-safe, as for the raw tracepoints' argument.
    /// A kernel thread's hold no syscall ([`Self::is_native`] is false for them).
    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: helpers with no preconditions; the task pointer they pass between them is the
        // verifier-tracked current task, and the result is only read through BTF-checked loads.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) };
        Self(regs as *const pt_regs)
    }

    /// The registers' address: it names the current task while the task lives.
    #[inline(always)]
    pub fn address(self) -> u64 {
        self.0 as u64
    }

    /// The syscall number (`orig_ax`: `ax` holds the return value by exit).
    #[inline(always)]
    pub fn number(self) -> u64 {
        // SAFETY: a BTF-typed `struct pt_regs *` from the tracepoint; the verifier checks the
        // load against the kernel's BTF and makes it fault-safe.
        unsafe { (*self.0).orig_rax }
    }

    /// Whether the task made a native 64-bit syscall (not a 32-bit compat one).
    #[inline(always)]
    pub fn is_native(self) -> bool {
        // SAFETY: as in `number`. Only the low 16 bits are the selector (kernels with FRED keep
        // more state in the same word).
        (unsafe { (*self.0).cs } & 0xffff) == USER_CS
    }

    /// First argument: the fd of every traced syscall.
    #[inline(always)]
    pub fn arg0(self) -> u64 {
        // SAFETY: as in `number`.
        unsafe { (*self.0).rdi }
    }

    /// Second argument: the buffer, iovec array or message header.
    #[inline(always)]
    pub fn arg1(self) -> u64 {
        // SAFETY: as in `number`.
        unsafe { (*self.0).rsi }
    }

    /// Third argument: the length or the iovec count.
    #[inline(always)]
    pub fn arg2(self) -> u64 {
        // SAFETY: as in `number`.
        unsafe { (*self.0).rdx }
    }

    /// Fourth argument (the syscall ABI passes it in `r10`): `recvfrom`'s flags.
    #[inline(always)]
    pub fn arg3(self) -> u64 {
        // SAFETY: as in `number`.
        unsafe { (*self.0).r10 }
    }

    /// `r14`: the running goroutine's `g` when the syscall came from Go code (see
    /// `DataEvent::task`); the syscall does not touch it.
    #[inline(always)]
    pub fn r14(self) -> u64 {
        // SAFETY: as in `number`.
        unsafe { (*self.0).r14 }
    }
}
