//! The tracepoint programs: one pair per socket syscall, plus `close`.
//!
//! Entry programs decide whether the fd is a tracked inet socket (looking it up, or walking the
//! kernel's structs the first time) and save the arguments; exit programs read the return value,
//! copy the payload prefix and send the record. Record layouts are in `agent_common::event`.

use agent_common::{
    ConnEvent, ConnInfo, ConnKey, Counter, DataEvent, Direction, EventHeader, EventKind,
    MAX_CAPTURE_BYTES, MAX_MMSG, PendingCall, Role, SYS_ARG_SIZE, SYS_ENTER_ARG0, SYS_EXIT_RET,
    SockTuple, Syscall,
};
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::warn;

use crate::{
    capture::{Source, copy_payload},
    maps::{CONNS, EVENTS, PENDING, SCRATCH, config, count, current_comm, next_conn_id},
    socket::{FdKind, classify_fd},
};

/// Unconsumed bytes in the ring above which a data record wakes the agent. Below it records are
/// submitted without a wake-up and the agent drains the ring on a short timer: one wake-up per
/// batch instead of one per syscall (each costs an IPI and a context switch on both sides).
const WAKEUP_BACKLOG_BYTES: u64 = 256 * 1024;

/// `-EINPROGRESS`: a non-blocking connect that has sent its SYN and picked its local port.
const EINPROGRESS_RET: i64 = -115;

/// Reads the `index`th argument straight from the tracepoint record: a direct context load,
/// which the verifier bounds-checks, instead of a `bpf_probe_read_kernel` call per argument.
#[inline(always)]
fn arg(ctx: &TracePointContext, index: usize) -> Result<u64, i64> {
    // SAFETY: the record of every syscalls/sys_enter_* tracepoint this program attaches to has
    // 8-byte argument slots from SYS_ENTER_ARG0 (checked by user space against the format file
    // before attaching), and index < 6 at every call site.
    Ok(unsafe {
        core::ptr::read_unaligned(
            ctx.as_ptr()
                .cast::<u8>()
                .add(SYS_ENTER_ARG0 + index * SYS_ARG_SIZE)
                .cast::<u64>(),
        )
    })
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> Result<i64, i64> {
    // SAFETY: `ret` of every syscalls/sys_exit_* record is a long at SYS_EXIT_RET.
    Ok(unsafe {
        core::ptr::read_unaligned(ctx.as_ptr().cast::<u8>().add(SYS_EXIT_RET).cast::<i64>())
    })
}

/// The current `pid_tgid`, or `None` for the agent's own threads.
#[inline(always)]
fn traced_pid_tgid() -> Option<u64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == config().agent_tgid {
        None
    } else {
        Some(pid_tgid)
    }
}

#[inline(always)]
fn header(kind: EventKind, pid_tgid: u64, fd: i32, conn_id: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd,
        conn_id,
        // SAFETY: the helper has no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// Sends an open or close record.
#[inline(always)]
fn emit_conn(kind: EventKind, pid_tgid: u64, fd: i32, info: &ConnInfo, syscall: Syscall) {
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count(Counter::RingFull);
        return;
    };
    entry.write(ConnEvent {
        header: header(kind, pid_tgid, fd, info.conn_id),
        tuple: info.tuple,
        role: info.role,
        syscall: syscall as u32,
        bytes_sent: info.bytes_sent,
        bytes_received: info.bytes_received,
        comm: current_comm(),
    });
    entry.submit(0);
    count(Counter::EventsSent);
}

/// Starts tracking `fd` as a new connection and announces it; returns its id.
#[inline(always)]
fn track(pid_tgid: u64, fd: i32, tuple: SockTuple, role: Role, syscall: Syscall) -> Option<u64> {
    let info = ConnInfo {
        conn_id: next_conn_id(),
        tuple,
        role: role as u32,
        ignored: 0,
        bytes_sent: 0,
        bytes_received: 0,
    };
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    };
    if CONNS.insert(&key, &info, 0).is_err() {
        count(Counter::ConnTableFull);
        return None;
    }
    emit_conn(EventKind::ConnOpen, pid_tgid, fd, &info, syscall);
    Some(info.conn_id)
}

/// Remembers a non-inet socket so later syscalls on it skip the walk.
#[inline(always)]
fn ignore(pid_tgid: u64, fd: i32) {
    let info = ConnInfo {
        ignored: 1,
        ..ConnInfo::default()
    };
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    };
    if CONNS.insert(&key, &info, 0).is_err() {
        count(Counter::ConnTableFull);
    }
}

/// The connection id and role of `fd` if it is a tracked inet socket, discovering it on first
/// sight (a socket that pre-dates the agent or came through fork).
#[inline(always)]
fn tracked(pid_tgid: u64, fd: i32, syscall: Syscall) -> Option<(u64, u32)> {
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    };
    // SAFETY: the value is copied out at once; a concurrent delete can at worst make the copy
    // stale, which costs one mislabelled event, never memory safety.
    if let Some(info) = unsafe { CONNS.get(&key) } {
        return if info.ignored == 0 {
            Some((info.conn_id, info.role))
        } else {
            None
        };
    }
    match classify_fd(fd) {
        Ok(FdKind::Other) => None,
        Ok(FdKind::NonInetSocket) => {
            ignore(pid_tgid, fd);
            None
        }
        Ok(FdKind::Inet(tuple)) => {
            track(pid_tgid, fd, tuple, Role::Unknown, syscall).map(|id| (id, Role::Unknown as u32))
        }
        Err(_) => {
            count(Counter::SocketWalkFailed);
            None
        }
    }
}

#[inline(always)]
fn save_pending(pid_tgid: u64, call: &PendingCall) {
    if PENDING.insert(&pid_tgid, call, 0).is_err() {
        count(Counter::PendingFull);
    }
}

/// Takes the saved arguments of the current thread's syscall, if they belong to `syscall`.
#[inline(always)]
fn take_pending(pid_tgid: u64, syscall: Syscall) -> Option<PendingCall> {
    // SAFETY: copied out at once, then removed; only this thread writes its own key.
    let call = unsafe { PENDING.get(&pid_tgid) }.copied();
    if call.is_some() {
        let _ = PENDING.remove(&pid_tgid);
    }
    call.filter(|c| c.syscall == syscall as u32)
}

#[inline(always)]
fn data_enter(ctx: &TracePointContext, syscall: Syscall) -> Result<(), i64> {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return Ok(());
    };
    let fd = arg(ctx, 0)? as i32;
    let Some((conn_id, role)) = tracked(pid_tgid, fd, syscall) else {
        return Ok(());
    };
    let call = PendingCall {
        syscall: syscall as u32,
        fd,
        buf: arg(ctx, 1)?,
        len: arg(ctx, 2)?,
        conn_id,
        role,
        reserved: 0,
        // SAFETY: the helper has no preconditions.
        enter_ns: unsafe { bpf_ktime_get_ns() },
    };
    save_pending(pid_tgid, &call);
    Ok(())
}

/// `struct mmsghdr` (64-bit ABI): a `struct user_msghdr` (56 bytes) then `unsigned int msg_len`.
const MMSGHDR_SIZE: u64 = 64;
const MMSGHDR_LEN: u64 = 56;

#[inline(always)]
fn data_exit(ctx: &TracePointContext, syscall: Syscall) -> Result<(), i64> {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return Ok(());
    };
    let Some(call) = take_pending(pid_tgid, syscall) else {
        return Ok(());
    };
    let result = ret(ctx)?;
    if result <= 0 {
        return Ok(());
    }
    let Some(direction) = syscall.direction() else {
        return Ok(());
    };
    match syscall {
        Syscall::Sendmmsg | Syscall::Recvmmsg => {
            // `result` is a message count; each message's byte count is in its msg_len.
            let mut i: u64 = 0;
            while i < MAX_MMSG as u64 {
                if i >= result as u64 {
                    break;
                }
                let msg = call.buf + i * MMSGHDR_SIZE;
                // SAFETY: bpf_probe_read_user returns an error for a bad user address.
                let len = unsafe { bpf_probe_read_user((msg + MMSGHDR_LEN) as *const u32) }
                    .map_err(i64::from)?;
                emit_data(
                    pid_tgid,
                    &call,
                    syscall,
                    direction,
                    i64::from(len),
                    Source::MsgHdr { ptr: msg },
                );
                i += 1;
            }
            if result as u64 > MAX_MMSG as u64 {
                count(Counter::PayloadTruncated);
            }
        }
        Syscall::Readv | Syscall::Writev => {
            let source = Source::Iovecs {
                ptr: call.buf,
                count: call.len,
            };
            emit_data(pid_tgid, &call, syscall, direction, result, source);
        }
        Syscall::Recvmsg | Syscall::Sendmsg => {
            let source = Source::MsgHdr { ptr: call.buf };
            emit_data(pid_tgid, &call, syscall, direction, result, source);
        }
        Syscall::Sendfile => {
            emit_data(
                pid_tgid,
                &call,
                syscall,
                direction,
                result,
                Source::Uncapturable,
            );
        }
        _ => {
            let source = Source::Buffer { ptr: call.buf };
            emit_data(pid_tgid, &call, syscall, direction, result, source);
        }
    }
    Ok(())
}

/// Copies the payload prefix of `moved` bytes from `source` and sends one data record.
#[inline(always)]
fn emit_data(
    pid_tgid: u64,
    call: &PendingCall,
    syscall: Syscall,
    direction: Direction,
    moved: i64,
    source: Source,
) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; syscall tracepoint programs do not nest on one CPU.
    let scratch = unsafe { &mut *scratch };
    let limit = u64::from(config().capture_bytes);
    let want = if (moved as u64) < limit {
        moved as u64
    } else {
        limit
    };
    let copied = copy_payload(&mut scratch.payload, source, want);
    if copied.failed {
        count(Counter::PayloadReadFailed);
    }
    if i64::from(copied.len) < moved && !matches!(source, Source::Uncapturable) {
        count(Counter::PayloadTruncated);
    }
    scratch.event = DataEvent {
        header: header(EventKind::Data, pid_tgid, call.fd, call.conn_id),
        enter_ns: call.enter_ns,
        ret: moved,
        role: call.role,
        direction: direction as u32,
        syscall: syscall as u32,
        captured_len: copied.len,
    };
    let payload_len = if copied.len as usize > MAX_CAPTURE_BYTES {
        MAX_CAPTURE_BYTES
    } else {
        copied.len as usize
    };
    let size = core::mem::size_of::<DataEvent>() + payload_len;
    // SAFETY: `size` is at most the DataEvent plus MAX_CAPTURE_BYTES, inside the scratch value.
    let record = unsafe { core::slice::from_raw_parts((&raw const *scratch).cast::<u8>(), size) };
    let backlog = EVENTS.query(u64::from(aya_ebpf::bindings::BPF_RB_AVAIL_DATA));
    let flags = if backlog >= WAKEUP_BACKLOG_BYTES {
        u64::from(aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(aya_ebpf::bindings::BPF_RB_NO_WAKEUP)
    };
    if EVENTS.output::<[u8]>(record, flags).is_ok() {
        count(Counter::EventsSent);
    } else {
        count(Counter::RingFull);
    }
    add_bytes(pid_tgid, call.fd, direction as u32, moved as u64);
}

/// Adds to the per-connection byte totals reported at close.
#[inline(always)]
fn add_bytes(pid_tgid: u64, fd: i32, direction: u32, bytes: u64) {
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    };
    if let Some(info) = CONNS.get_ptr_mut(&key) {
        // SAFETY: a pointer from a successful lookup; a racing update can at worst lose a count.
        unsafe {
            if direction == Direction::Egress as u32 {
                (*info).bytes_sent += bytes;
            } else {
                (*info).bytes_received += bytes;
            }
        }
    }
}

/// Saves the fd of an `accept`/`accept4`/`connect` for its exit program.
#[inline(always)]
fn open_enter(ctx: &TracePointContext, syscall: Syscall) -> Result<(), i64> {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return Ok(());
    };
    let call = PendingCall {
        syscall: syscall as u32,
        fd: arg(ctx, 0)? as i32,
        ..PendingCall::default()
    };
    save_pending(pid_tgid, &call);
    Ok(())
}

/// Tracks the socket an `accept` returned or a `connect` connected.
#[inline(always)]
fn open_exit(ctx: &TracePointContext, syscall: Syscall) -> Result<(), i64> {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return Ok(());
    };
    let Some(call) = take_pending(pid_tgid, syscall) else {
        return Ok(());
    };
    let result = ret(ctx)?;
    let (fd, role) = if syscall == Syscall::Connect {
        if result != 0 && result != EINPROGRESS_RET {
            return Ok(());
        }
        (call.fd, Role::Client)
    } else {
        if result < 0 {
            return Ok(());
        }
        (result as i32, Role::Server)
    };
    match classify_fd(fd) {
        Ok(FdKind::Inet(tuple)) => {
            let _ = track(pid_tgid, fd, tuple, role, syscall);
        }
        Ok(FdKind::NonInetSocket) => ignore(pid_tgid, fd),
        Ok(FdKind::Other) => {}
        Err(err) => {
            count(Counter::SocketWalkFailed);
            warn!(ctx, "sockspan: socket walk failed for fd {} ({})", fd, err);
        }
    }
    Ok(())
}

#[inline(always)]
fn close_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return Ok(());
    };
    let fd = arg(ctx, 0)? as i32;
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    };
    // SAFETY: copied out at once.
    let Some(info) = (unsafe { CONNS.get(&key) }).copied() else {
        return Ok(());
    };
    let _ = CONNS.remove(&key);
    if info.ignored == 0 {
        emit_conn(EventKind::ConnClose, pid_tgid, fd, &info, Syscall::Close);
    }
    Ok(())
}

/// Defines the enter/exit pair of a data syscall.
macro_rules! data_syscall {
    ($(#[$doc:meta])* $enter:ident, $exit:ident, $syscall:expr) => {
        $(#[$doc])*
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            let _ = data_enter(&ctx, $syscall);
            0
        }

        /// Exit side of the same syscall: `long ret` is the number of bytes moved.
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            let _ = data_exit(&ctx, $syscall);
            0
        }
    };
}

data_syscall!(
    /// `syscalls/sys_enter_read`: `(unsigned int fd, char *buf, size_t count)`.
    sys_enter_read, sys_exit_read, Syscall::Read
);
data_syscall!(
    /// `syscalls/sys_enter_write`: `(unsigned int fd, const char *buf, size_t count)`.
    sys_enter_write, sys_exit_write, Syscall::Write
);
data_syscall!(
    /// `syscalls/sys_enter_recvfrom`: `(int fd, void *ubuf, size_t size, unsigned int flags,
    /// struct sockaddr *addr, int *addr_len)`.
    sys_enter_recvfrom, sys_exit_recvfrom, Syscall::Recvfrom
);
data_syscall!(
    /// `syscalls/sys_enter_sendto`: `(int fd, void *buff, size_t len, unsigned int flags,
    /// struct sockaddr *addr, int addr_len)`.
    sys_enter_sendto, sys_exit_sendto, Syscall::Sendto
);
data_syscall!(
    /// `syscalls/sys_enter_recvmsg`: `(int fd, struct user_msghdr *msg, unsigned int flags)`.
    sys_enter_recvmsg, sys_exit_recvmsg, Syscall::Recvmsg
);
data_syscall!(
    /// `syscalls/sys_enter_sendmsg`: `(int fd, struct user_msghdr *msg, unsigned int flags)`.
    sys_enter_sendmsg, sys_exit_sendmsg, Syscall::Sendmsg
);
data_syscall!(
    /// `syscalls/sys_enter_readv`: `(unsigned long fd, const struct iovec *vec,
    /// unsigned long vlen)`.
    sys_enter_readv, sys_exit_readv, Syscall::Readv
);
data_syscall!(
    /// `syscalls/sys_enter_writev`: `(unsigned long fd, const struct iovec *vec,
    /// unsigned long vlen)`.
    sys_enter_writev, sys_exit_writev, Syscall::Writev
);
data_syscall!(
    /// `syscalls/sys_enter_sendfile64`: `(int out_fd, int in_fd, loff_t *offset, size_t count)`;
    /// `out_fd` is the socket. The bytes come from a file and are counted, not captured.
    sys_enter_sendfile64, sys_exit_sendfile64, Syscall::Sendfile
);
data_syscall!(
    /// `syscalls/sys_enter_sendmmsg`: `(int fd, struct mmsghdr *mmsg, unsigned int vlen,
    /// unsigned int flags)`; `ret` is the number of messages sent.
    sys_enter_sendmmsg, sys_exit_sendmmsg, Syscall::Sendmmsg
);
data_syscall!(
    /// `syscalls/sys_enter_recvmmsg`: `(int fd, struct mmsghdr *mmsg, unsigned int vlen,
    /// unsigned int flags, struct __kernel_timespec *timeout)`; `ret` is the number of
    /// messages received.
    sys_enter_recvmmsg, sys_exit_recvmmsg, Syscall::Recvmmsg
);

/// `syscalls/sys_enter_accept`: `(int fd, struct sockaddr *upeer_sockaddr, int *upeer_addrlen)`.
#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    let _ = open_enter(&ctx, Syscall::Accept);
    0
}

/// `syscalls/sys_exit_accept`: `long ret` is the accepted fd.
#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = open_exit(&ctx, Syscall::Accept);
    0
}

/// `syscalls/sys_enter_accept4`: `(int fd, struct sockaddr *upeer_sockaddr,
/// int *upeer_addrlen, int flags)`.
#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    let _ = open_enter(&ctx, Syscall::Accept4);
    0
}

/// `syscalls/sys_exit_accept4`: `long ret` is the accepted fd.
#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    let _ = open_exit(&ctx, Syscall::Accept4);
    0
}

/// `syscalls/sys_enter_connect`: `(int fd, struct sockaddr *uservaddr, int addrlen)`.
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = open_enter(&ctx, Syscall::Connect);
    0
}

/// `syscalls/sys_exit_connect`: `long ret` is 0, `-EINPROGRESS` or an error.
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let _ = open_exit(&ctx, Syscall::Connect);
    0
}

/// `syscalls/sys_enter_close`: `(unsigned int fd)`. The table entry goes at entry: once close
/// starts, the fd number may be reused by another thread.
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let _ = close_enter(&ctx);
    0
}
