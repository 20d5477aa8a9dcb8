//! Capture at the socket layer (`--capture-hooks socket`): the same family programs as at
//! `sys_exit` (`crate::syscalls`), run from tracepoints that only socket I/O fires.
//!
//! A program on `raw_syscalls/sys_enter` or `sys_exit` puts every task of the host on the
//! kernel's slow syscall path: ~155–215 ns more on every syscall, socket or not (measured here
//! with `getppid`, BENCHMARKS.md), and nginx serving wrk makes ~11 syscalls per request of which
//! 4 are socket I/O. These hooks cost nothing to any other syscall:
//!
//! - `sock/sock_send_length` and `sock/sock_recv_length` (`(struct sock *sk, int ret, int
//!   flags)`, kernels from 2023 on): fired by `sock_sendmsg` and `sock_recvmsg` after each send
//!   and receive, whatever the syscall. They run inside the syscall, so the task's registers
//!   (`Regs::current`) still hold its number and arguments, and the dispatchers here hand each
//!   one to its family's program as `sys_exit` does. Once per message for `*mmsg`: a
//!   `sendmmsg` message is found by order and length ([`mmsg_index`]); `recvmmsg` is skipped
//!   (a received message's length says nothing of which buffer it went to).
//! - `tcp/tcp_sendmsg_locked` (`(const struct sock *sk, const struct msghdr *msg, const struct
//!   sk_buff *skb, int size_goal)`, kernels from 2025 on): before a TCP send's bytes are copied,
//!   the start time `sys_enter` gives the syscall path ([`SEND_STAMPS`]).
//! - `sock/inet_sock_set_state` (`(const struct sock *sk, int oldstate, int newstate)`): a TCP
//!   connection's opening (`SYN_SENT` in the connecting task; `SYN_RECV` for an accepted one)
//!   and its end (`TCP_CLOSE`), which stand in for `connect`, `accept` and `close`.
//!
//! A client end is tracked and announced at its handshake's end, with the fd, task and time its
//! `connect` left at `SYN_SENT` (its local port is not picked yet then); an accepted connection
//! at its first data, with the role and time its handshake left ([`PENDING_OPENS`]). No `close` is seen: a
//! TCP socket's entry goes at `TCP_CLOSE` ([`SOCK_KEYS`]), and any entry whose socket is not the
//! one a send or receive moved bytes on belongs to a closed fd whose number was reused, and is
//! closed then (`ConnInfo::sk`). UDP sockets have no state change: their entries go that way or
//! leave the LRU table.

use agent_common::{COMM_LEN, ConnKey, Counter, EXIT_FAMILIES, Role, Syscall, exit_family};
use aya_ebpf::{
    helpers::bpf_get_current_task,
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, PerCpuArray, ProgramArray},
    programs::BtfTracePointContext,
};

use crate::{
    followed,
    maps::{CONNS, count, current_comm},
    regs::{Regs, exit_family_of, nr},
    shed,
    socket::{stream_seq, tcp_tuple},
    syscalls::{
        closed, discover_program, exit_program, hook, jump_to_family, now_ns, result_of,
        retire_held, traced_pid_tgid, track_connected,
    },
};

/// The `sock_send_length` dispatcher's program array (`agent_common::SEND_FAMILIES`).
#[map]
pub static SEND_JUMPS: ProgramArray = ProgramArray::with_max_entries(EXIT_FAMILIES.len() as u32, 0);

/// The `sock_recv_length` dispatcher's program array (`agent_common::RECV_FAMILIES`).
#[map]
pub static RECV_JUMPS: ProgramArray = ProgramArray::with_max_entries(EXIT_FAMILIES.len() as u32, 0);

/// Tracked TCP sockets' table keys, by `struct sock` address: where `TCP_CLOSE` finds the entry
/// to close. An LRU of the connection table's default size.
#[map]
static SOCK_KEYS: LruHashMap<u64, ConnKey> =
    LruHashMap::with_max_entries(agent_common::DEFAULT_MAX_CONNS, 0);

/// A TCP connection's opening, by `struct sock` address, until its first data announces it.
#[repr(C)]
#[derive(Clone, Copy)]
struct Opening {
    /// A [`Role`].
    role: u32,
    /// The [`Syscall`] it stands for: `connect` or `accept`.
    syscall: u32,
    /// The connecting process (0 for an accepted connection: no task of its own opened it).
    tgid: u32,
    /// 1 when the budget shed this client end at its opening ([`client_established`]).
    shed: u32,
    /// The connecting thread.
    tid: u32,
    /// The socket's fd in the connecting process (from its `connect`'s registers), -1 when
    /// unknown (the connection is then announced at its first data).
    fd: i32,
    /// What the connecting thread ran (`followed::current_task`), 0 when not followed.
    task: u64,
    /// When: the connect, or the handshake's end for an accepted connection.
    ts_ns: u64,
    /// The connecting process's name.
    comm: [u8; COMM_LEN],
}

/// Openings not yet announced. Bounded (an LRU): a connection that never moves a byte leaves
/// its entry until it is pushed out, or its `TCP_CLOSE` takes it.
#[map]
static PENDING_OPENS: LruHashMap<u64, Opening> = LruHashMap::with_max_entries(16_384, 0);

/// When a thread's TCP send started (`tcp_sendmsg_locked`), until its `sock_send_length`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SendStamp {
    /// The sending task (`task_struct` address), 0 for a free slot.
    task: u64,
    sk: u64,
    ts_ns: u64,
    /// The socket's `write_seq` then: the sequence number of the send's first byte.
    seq: u32,
    reserved: u32,
}

/// Slots per CPU in [`SEND_STAMPS`].
const STAMP_SLOTS: usize = 8;

/// Per CPU, a few send stamps, a slot per task by hash. One slot was not enough: on loopback a
/// send wakes its receiver inside the send, and a receiver that preempts the sender on its CPU
/// and sends in turn overwrote the sender's stamp before the sender's send ended. A stamp is
/// taken only by the send whose first byte it names ([`take_send_stamp`]): a sender that moved
/// to another CPU inside its send leaves its stamp behind, and a later send of the same task on
/// the same socket, back on that CPU, took it (a start too early: Node.js calls adopted by the
/// wrong request, 1 in 40 in half the runs).
#[map]
static SEND_STAMPS: PerCpuArray<[SendStamp; STAMP_SLOTS]> = PerCpuArray::with_max_entries(1, 0);

/// Where a thread's `sendmmsg` is up to: the message its next send hook is for.
#[repr(C)]
#[derive(Clone, Copy)]
struct MmsgCursor {
    /// The call's `struct mmsghdr` vector.
    vector: u64,
    next: u64,
}

/// Each thread's `sendmmsg` cursor, by `pid_tgid` (a thread runs one syscall at a time).
#[map]
static MMSG_CURSORS: LruHashMap<u64, MmsgCursor> = LruHashMap::with_max_entries(4096, 0);

/// `struct user_msghdr` (64-bit ABI): `msg_iov` at 16, `msg_iovlen` at 24.
const MSGHDR_IOV: u64 = 16;
const MSGHDR_IOVLEN: u64 = 24;
/// Iovecs summed per message ([`message_len`]); a message with more is not recognised.
const MESSAGE_IOVECS: u64 = 4;

/// The bytes message `i` of the `struct mmsghdr` vector `vector` carries (the sum of its
/// iovecs' lengths), `None` when unreadable or with more than [`MESSAGE_IOVECS`] iovecs.
#[inline(always)]
fn message_len(vector: u64, i: u64) -> Option<u64> {
    let msg = vector + i * crate::syscalls::MMSGHDR_SIZE;
    let iov: u64 = read_user(msg + MSGHDR_IOV)?;
    let count: u64 = read_user(msg + MSGHDR_IOVLEN)?;
    if count > MESSAGE_IOVECS {
        return None;
    }
    let mut total = 0;
    let mut k = 0;
    while k < MESSAGE_IOVECS {
        if k >= count {
            break;
        }
        // `struct iovec`: base, then length.
        total += read_user::<u64>(iov + k * 16 + 8)?;
        k += 1;
    }
    Some(total)
}

/// Reads a `T` of user memory.
#[inline(always)]
fn read_user<T>(address: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user returns an error for a bad user address; it never faults.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(address as *const T) }.ok()
}

/// Which message of the current thread's `sendmmsg` (vector `vector` of `vlen` messages) a send
/// of `len` bytes at the socket layer was: the one after the thread's last (the kernel sends
/// them in order), or the first when its last was the vector's last or is another call's.
/// Checked: the message's own length must be `len`, or, failing that, the first's (a call
/// after one that sent fewer than `vlen`); else `None`, and nothing is sent. Messages of
/// equal length are told apart only by their order.
#[inline(always)]
pub fn mmsg_index(pid_tgid: u64, vector: u64, vlen: u64, len: u64) -> Option<u64> {
    // SAFETY: copied out at once.
    let next = match unsafe { MMSG_CURSORS.get(&pid_tgid) }.copied() {
        Some(cursor) if cursor.vector == vector && cursor.next < vlen => cursor.next,
        _ => 0,
    };
    let i = if message_len(vector, next) == Some(len) {
        next
    } else if next != 0 && message_len(vector, 0) == Some(len) {
        0
    } else {
        return None;
    };
    let _ = MMSG_CURSORS.insert(
        &pid_tgid,
        &MmsgCursor {
            vector,
            next: i + 1,
        },
        0,
    );
    Some(i)
}

/// `TCP_ESTABLISHED`, `TCP_SYN_SENT`, `TCP_SYN_RECV`, `TCP_CLOSE` (`include/net/tcp_states.h`).
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

/// What a connection's opening said, for its announcement ([`take_opening`]).
pub struct Opened {
    pub role: Role,
    pub syscall: u32,
    /// The task that connected, when the announcing process is the one that connected; `None`:
    /// the announcement asks the current thread.
    pub task: Option<u64>,
    /// When it opened.
    pub ts_ns: u64,
    /// Whether the budget shed it at its opening (a client end).
    pub shed: bool,
}

/// Takes the opening noted for socket `sk`, announced by process `tgid`.
#[inline(always)]
pub fn take_opening(sk: u64, tgid: u32) -> Option<Opened> {
    // SAFETY: copied out at once.
    let opening = (unsafe { PENDING_OPENS.get(&sk) }).copied()?;
    let _ = PENDING_OPENS.remove(&sk);
    let client = opening.role == Role::Client as u32;
    Some(Opened {
        role: if client { Role::Client } else { Role::Server },
        syscall: opening.syscall,
        task: if !client {
            Some(0)
        } else if opening.tgid == tgid {
            Some(opening.task)
        } else {
            None
        },
        ts_ns: opening.ts_ns,
        shed: opening.shed != 0,
    })
}

/// Notes that TCP socket `sk` is tracked under `key`, for its `TCP_CLOSE`.
#[inline(always)]
pub fn note_socket(sk: u64, key: &ConnKey) {
    let _ = SOCK_KEYS.insert(&sk, key, 0);
}

/// Forgets socket `sk`'s key (its entry was closed another way).
#[inline(always)]
pub fn forget_socket(sk: u64) {
    let _ = SOCK_KEYS.remove(&sk);
}

/// The slot of `task` among this CPU's stamps.
#[inline(always)]
fn stamp_slot(task: u64) -> usize {
    // `task_struct`s are slab objects of several KiB: the bits above the low ones tell them
    // apart.
    ((task >> 8) ^ (task >> 14) ^ (task >> 20)) as usize % STAMP_SLOTS
}

/// When the current thread's TCP send of `moved` bytes on `sk` started, and the sequence number
/// of its first byte, if this CPU stamped that very send (the stamp's sequence number is its
/// first byte's); the slot is freed. The number is the send's stream position: the record
/// takes it from here instead of reading the socket again.
#[inline(always)]
pub fn take_send_stamp(sk: u64, moved: u64) -> Option<(u64, u32)> {
    let slots = SEND_STAMPS.get_ptr_mut(0)?;
    // SAFETY: the helper has no preconditions; the address only names the task.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: this CPU's slots; tracepoint programs on one CPU do not nest, and the index is
    // below the array's length.
    let slot = unsafe { &mut (*slots)[stamp_slot(task)] };
    if slot.task != task || slot.sk != sk {
        return None;
    }
    slot.task = 0;
    let first = stream_seq(sk, true, moved).ok()?;
    (slot.seq == first).then_some((slot.ts_ns, first))
}

/// `tcp/tcp_sendmsg_locked`, attached by BTF: `(const struct sock *sk, const struct msghdr
/// *msg, const struct sk_buff *skb, int size_goal)`, before each chunk of a TCP send is copied.
/// Stamps the send's first chunk: a later chunk of the same send keeps the stamp.
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_send_start(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let Some(slots) = SEND_STAMPS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as in `take_send_stamp`.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: as in `take_send_stamp`.
    let slot = unsafe { &mut (*slots)[stamp_slot(task)] };
    if slot.task == task && slot.sk == sk {
        return 0;
    }
    let Ok(seq) = stream_seq(sk, true, 0) else {
        return 0;
    };
    *slot = SendStamp {
        task,
        sk,
        ts_ns: now_ns(),
        seq,
        reserved: 0,
    };
    0
}

/// `sock/inet_sock_set_state`, attached by BTF: `(const struct sock *sk, int oldstate, int
/// newstate)`, at every TCP state change. Notes openings and closes a tracked connection.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcp_state(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as u32 as i32;
    let new = ctx.arg::<u64>(2) as u32 as i32;
    match new {
        TCP_SYN_SENT => connecting(sk),
        // A connection accepted from a listener (in softirq: no task of its own): its child
        // socket is made in `SYN_RECV`, then established; the first note stands.
        TCP_SYN_RECV | TCP_ESTABLISHED if new == TCP_SYN_RECV || old == TCP_SYN_RECV => {
            note_accepted(sk);
        }
        TCP_ESTABLISHED if old == TCP_SYN_SENT => client_established(sk),
        TCP_CLOSE => tcp_closed(sk),
        _ => {}
    }
    0
}

/// A client end's handshake is done (in softirq, at the server's SYN-ACK): its endpoints are
/// known, and no byte has moved yet. With its fd known from its `connect`, it is tracked and
/// announced now (`syscalls::track_connected`, which takes the budget's decision too). Else,
/// while the budget sheds, whether it is shed at its opening is decided here
/// (`shed::sheds_opening`) and not at its first data: at the socket layer the first send's hook
/// runs after its bytes reached a loopback server, which may have read them, found no shed
/// tuple, and kept a server end whose client is shed (a cut trace).
#[inline(never)]
fn client_established(sk: u64) {
    let Some(opening) = PENDING_OPENS.get_ptr(&sk) else {
        return;
    };
    // SAFETY: a pointer from a successful lookup, its fields read at once (the entry is removed
    // only below, after its name was copied into the record).
    let (fd, pid_tgid, task, ts_ns) = unsafe {
        (
            (*opening).fd,
            (u64::from((*opening).tgid) << 32) | u64::from((*opening).tid),
            (*opening).task,
            (*opening).ts_ns,
        )
    };
    if fd >= 0
        && let Some(scratch) = TCP_STATE_SCRATCH.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot of this program's own scratch map: the kernel does not run a
        // program nested in itself on one CPU.
        let scratch = unsafe { &mut *scratch };
        retire_held(pid_tgid, fd, sk, scratch);
        let at = crate::syscalls::Opening {
            task,
            ts_ns,
            // SAFETY: as above.
            comm: unsafe { &raw const (*opening).comm },
        };
        track_connected(sk, pid_tgid, fd, &at, scratch);
        // Tracked and announced, with the opening's task and time: the opening is used up.
        let _ = PENDING_OPENS.remove(&sk);
    } else if shed::shedding() {
        shed_mark(sk);
    }
}

/// While the budget sheds: whether the client end `sk`, to be announced at its first data, is
/// shed at its opening, decided now ([`client_established`]). Out of line, for the stack.
#[inline(never)]
fn shed_mark(sk: u64) {
    let Some(opening) = PENDING_OPENS.get_ptr_mut(&sk) else {
        return;
    };
    let Some(tuple) = tcp_tuple(sk) else {
        return;
    };
    // SAFETY: a pointer from a successful lookup of this LRU's entry; a concurrent eviction
    // can at worst lose the mark (the decision is then taken again at the first data).
    unsafe {
        if shed::sheds_opening((*opening).tgid, &tuple) {
            (*opening).shed = 1;
        }
    }
}

/// `BPF_NOEXIST`: insert only where no entry is.
const BPF_NOEXIST: u64 = 1;

/// A client end sends its SYN, in the connecting task (`connect`, or a Fast Open `sendto`):
/// its opening is noted. Out of line: the record takes room the other state changes' paths
/// need.
#[inline(never)]
fn connecting(sk: u64) {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return;
    };
    let task = followed::opening_task(pid_tgid);
    // `connect`, or `sendto` with `MSG_FASTOPEN`: the fd is their first argument.
    let regs = Regs::current();
    let fd = if regs.is_native() && matches!(regs.number(), nr::CONNECT | nr::SENDTO) {
        regs.arg0() as i32
    } else {
        -1
    };
    let opening = Opening {
        role: Role::Client as u32,
        syscall: Syscall::Connect as u32,
        tgid: (pid_tgid >> 32) as u32,
        shed: 0,
        tid: pid_tgid as u32,
        fd,
        task,
        ts_ns: now_ns(),
        comm: current_comm(),
    };
    let _ = PENDING_OPENS.insert(&sk, &opening, 0);
}

#[inline(always)]
fn note_accepted(sk: u64) {
    let _ = PENDING_OPENS.insert(
        &sk,
        &Opening {
            role: Role::Server as u32,
            syscall: Syscall::Accept as u32,
            tgid: 0,
            shed: 0,
            tid: 0,
            fd: -1,
            task: 0,
            ts_ns: now_ns(),
            comm: [0; COMM_LEN],
        },
        BPF_NOEXIST,
    );
}

/// TCP socket `sk` reached `TCP_CLOSE`: its entry, if still its own (the fd may already hold a
/// newer socket), is removed and closed.
#[inline(never)]
fn tcp_closed(sk: u64) {
    let _ = PENDING_OPENS.remove(&sk);
    // SAFETY: copied out at once.
    let Some(key) = (unsafe { SOCK_KEYS.get(&sk) }).copied() else {
        return;
    };
    let _ = SOCK_KEYS.remove(&sk);
    let (Some(entry), Some(scratch)) = (CONNS.get_ptr(&key), TCP_STATE_SCRATCH.get_ptr_mut(0))
    else {
        return;
    };
    // SAFETY: a pointer from a successful lookup, copied at once into this CPU's slot of this
    // program's own scratch map (no nested run of it on one CPU).
    let info = unsafe {
        *scratch = *entry;
        &mut *scratch
    };
    if info.sk != sk {
        return;
    }
    let _ = CONNS.remove(&key);
    // Often in softirq (the peer's last ACK or FIN): the record names the owner, not whoever
    // runs.
    let owner = (u64::from(key.tgid) << 32) | u64::from(key.tgid);
    closed(owner, key.fd, info);
}

/// `tcp_state`'s room for a table entry (its stack has none left): a copy of a closed one, or a
/// new one assembled.
#[map]
static TCP_STATE_SCRATCH: PerCpuArray<agent_common::ConnInfo> = PerCpuArray::with_max_entries(1, 0);

/// Hands a send or receive to its syscall's family program (`HOOK`'s copy); anything else, a
/// kernel thread's socket I/O or a failed call, ends here.
#[inline(always)]
fn dispatch<const HOOK: u32>(ctx: &BtfTracePointContext) -> i32 {
    if result_of::<HOOK>(ctx) <= 0 {
        return 0;
    }
    let regs = Regs::current();
    if !regs.is_native() {
        return 0;
    }
    let number = regs.number();
    if matches!(exit_family_of(number), None | Some(exit_family::OPEN)) {
        return 0;
    }
    if jump_to_family::<HOOK>(ctx, number) {
        count(Counter::TailCallFailed);
    }
    0
}

/// `sock/sock_send_length`, attached by BTF: `(struct sock *sk, int ret, int flags)`, after each
/// send on a socket.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send(ctx: BtfTracePointContext) -> i32 {
    dispatch::<{ hook::SOCK_SEND }>(&ctx)
}

/// `sock/sock_recv_length`, attached by BTF: `(struct sock *sk, int ret, int flags)`, after each
/// receive on a socket.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv(ctx: BtfTracePointContext) -> i32 {
    dispatch::<{ hook::SOCK_RECV }>(&ctx)
}

/// The family programs of one socket-layer hook, tail-called by its dispatcher with its
/// context. Never attached: loaded for the hook's tracepoint, as the kernel requires of a tail
/// call's target.
macro_rules! family_programs {
    ($hook:expr, $tracepoint:tt, $buffer:ident, $vector:ident, $message:ident, $other:ident, $discover:ident) => {
        /// `read`, `write`, `recvfrom`, `sendto`.
        #[btf_tracepoint(function = $tracepoint)]
        pub fn $buffer(ctx: BtfTracePointContext) -> i32 {
            exit_program::<{ exit_family::BUFFER }, { $hook }>(&ctx)
        }

        /// `readv`, `writev`.
        #[btf_tracepoint(function = $tracepoint)]
        pub fn $vector(ctx: BtfTracePointContext) -> i32 {
            exit_program::<{ exit_family::VECTOR }, { $hook }>(&ctx)
        }

        /// `recvmsg`, `sendmsg`.
        #[btf_tracepoint(function = $tracepoint)]
        pub fn $message(ctx: BtfTracePointContext) -> i32 {
            exit_program::<{ exit_family::MESSAGE }, { $hook }>(&ctx)
        }

        /// `sendfile` (once per chunk here); `*mmsg` end in the program.
        #[btf_tracepoint(function = $tracepoint)]
        pub fn $other(ctx: BtfTracePointContext) -> i32 {
            exit_program::<{ exit_family::OTHER }, { $hook }>(&ctx)
        }

        /// Discovery of an fd the table does not know, handing back to its family's program.
        #[btf_tracepoint(function = $tracepoint)]
        pub fn $discover(ctx: BtfTracePointContext) -> i32 {
            discover_program::<{ $hook }>(&ctx)
        }
    };
}

family_programs!(
    hook::SOCK_SEND,
    "sock_send_length",
    sock_send_buffer,
    sock_send_vector,
    sock_send_message,
    sock_send_other,
    sock_send_discover
);
family_programs!(
    hook::SOCK_RECV,
    "sock_recv_length",
    sock_recv_buffer,
    sock_recv_vector,
    sock_recv_message,
    sock_recv_other,
    sock_recv_discover
);
