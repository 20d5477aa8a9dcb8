//! The two programs: the raw syscall tracepoints `sys_enter` and `sys_exit`, as BTF tracepoints.
//!
//! The exit program does the work. It reads the syscall number and arguments from the task's
//! registers and the return value from the tracepoint, decides whether the fd is a tracked inet
//! socket (looking it up, or walking the kernel's structs the first time), copies the payload
//! prefix and sends the record. The entry program only notes when an egress syscall started
//! (its bytes left then) and drops a socket from the table when `close` starts. Record layouts
//! are in `agent_common::event`.
//!
//! Two programs on the raw tracepoints instead of a pair per syscall on `syscalls/*`: every
//! syscall tracepoint puts all tasks on the slow syscall path, but the per-syscall ones also
//! build a trace record and run the perf glue for each traced syscall, which measured ~250 ns
//! more per syscall here than the raw ones (BENCHMARKS.md).
//!
//! The exit side is a dispatcher that hands each socket syscall to one program per syscall
//! family (`agent_common::EXIT_FAMILIES`) by tail call; every other syscall ends in the
//! dispatcher after one comparison. One program for all of them no longer fitted the verifier
//! (a million instructions walked and a 512-byte stack for the program and its deepest call
//! chain): on kernel 6.18.44 it was refused at 1,000,001 walked instructions, and once below
//! that, for its stack. Each family's program is verified on its own, with only its own paths.

use agent_common::{
    COMM_LEN, CONN_SHED_AT_OPEN, ConnEvent, ConnInfo, ConnKey, Counter, DATA_RESUMED,
    DATA_SEQ_VALID, DataEvent, Direction, EventHeader, EventKind, MAX_CAPTURE_BYTES, MAX_IOVECS,
    MAX_MMSG, Protocol, Role, SOCK_DGRAM, Syscall, exit_family, exit_stage,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    capture::{Source, copy_payload},
    detect,
    followed::{self, NOT_FOLLOWED},
    inband,
    maps::{
        CONNS, DISCOVERY_NOTES, DiscoveryNote, ENTRY_STAMPS, EVENTS, EXIT_JUMPS, EntryStamp,
        SCRATCH, config, count, current_comm, next_conn_id,
    },
    regs::{Regs, exit_family_of, exit_traced, is_egress, nr},
    shed,
    socket::{FdKind, classify_fd, in_traced_netns, stream_seq, tcp_tuple_into},
    tls,
};

/// The flags for sending a record of `size` bytes, given this CPU's bytes since its last look.
/// Reading the backlog touches the cache line the agent writes as it consumes (~30 ns a query
/// here, `perf`), so a CPU looks once per `wakeup_check_bytes` (32 KiB, less for a small ring:
/// `agent_common::wakeup_check_bytes`), and wakes the agent then if the backlog is over the
/// threshold: at most one wake-up per look while the agent is behind, none while it keeps up.
#[inline(always)]
fn wakeup_flags(unchecked_bytes: &mut u64, size: u64) -> u64 {
    *unchecked_bytes += size;
    if *unchecked_bytes < u64::from(config!(wakeup_check_bytes)) {
        return u64::from(aya_ebpf::bindings::BPF_RB_NO_WAKEUP);
    }
    *unchecked_bytes = 0;
    // Below the threshold records are submitted without a wake-up and the agent drains the ring
    // on a short timer: no wake-up per record (each costs an IPI and a context switch).
    let threshold = u64::from(config!(wakeup_backlog_bytes));
    if EVENTS.query(u64::from(aya_ebpf::bindings::BPF_RB_AVAIL_DATA)) >= threshold {
        u64::from(aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(aya_ebpf::bindings::BPF_RB_NO_WAKEUP)
    }
}

/// [`wakeup_flags`] for a record of `size` bytes that is not a data record (an open or close,
/// TLS plaintext), counted with this CPU's data records. A flag of 0 would wake the agent at
/// every such record it had caught up to: under connection churn, shedding most connections'
/// data left the agent caught up, and each open and close woke it (14 times the wake-ups, all
/// the CPU shedding saved).
#[inline(always)]
pub fn wakeup_for(size: u64) -> u64 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return u64::from(aya_ebpf::bindings::BPF_RB_NO_WAKEUP);
    };
    // SAFETY: this CPU's scratch slot (programs on one CPU do not nest); the count is a field
    // of its own, apart from the entry or record being assembled in the slot.
    wakeup_flags(unsafe { &mut (*scratch).unchecked_bytes }, size)
}

/// `-EINPROGRESS`: a non-blocking connect that has sent its SYN and picked its local port.
const EINPROGRESS_RET: i64 = -115;

/// The current `pid_tgid`, or `None` for the agent's own threads.
#[inline(always)]
pub fn traced_pid_tgid() -> Option<u64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == config!(agent_tgid) {
        None
    } else {
        Some(pid_tgid)
    }
}

/// The connection table's key for `fd` of the current process.
#[inline(always)]
fn conn_key(pid_tgid: u64, fd: i32) -> ConnKey {
    ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    }
}

#[inline(always)]
pub fn header(kind: EventKind, pid_tgid: u64, fd: i32, conn_id: u64, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd,
        conn_id,
        ts_ns,
    }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Sends an open or close record.
#[inline(always)]
pub fn emit_conn(
    kind: EventKind,
    pid_tgid: u64,
    fd: i32,
    info: &ConnInfo,
    syscall: u32,
    flags: u32,
) {
    // Where a Node.js socket was opened (the callback whose request it is for).
    let task = match kind {
        EventKind::ConnOpen => followed::opening_task(pid_tgid),
        _ => 0,
    };
    let at = Opening {
        task,
        ts_ns: now_ns(),
        comm: core::ptr::null(),
    };
    emit_conn_as(kind, pid_tgid, fd, info, syscall, flags, &at);
}

/// Where and when a connection opened, as its open record says.
pub struct Opening {
    /// What the opening thread ran (`ConnEvent::task`), 0 when not followed.
    pub task: u64,
    /// The record's time.
    pub ts_ns: u64,
    /// The opening process's name, when the record is sent from another task's context
    /// (softirq); null: the current task's, if it is the connection's process.
    pub comm: *const [u8; COMM_LEN],
}

/// [`emit_conn`] with the record's task and time given: at the socket layer an open is
/// announced at the connection's first data, and its task and time are those of its opening
/// ([`crate::socket_layer`]): the task rule takes a task made before its connection opened for
/// one of the service's own.
#[inline(always)]
pub fn emit_conn_as(
    kind: EventKind,
    pid_tgid: u64,
    fd: i32,
    info: &ConnInfo,
    syscall: u32,
    flags: u32,
    at: &Opening,
) {
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count(Counter::RingFull);
        return;
    };
    // Filled in place, field by field: a `ConnEvent` built on the stack and copied (128 bytes)
    // would count in the frame of every caller, and some (`shed::sheds_server_end`) are called
    // from the data exits, whose chains are near the verifier's 512 bytes.
    let record = entry.as_mut_ptr();
    // SAFETY: `record` is the reserved ring slot, sized and aligned for a `ConnEvent` and this
    // program's alone until it is submitted; every field is written before the submit.
    unsafe {
        (*record).header = header(kind, pid_tgid, fd, info.conn_id, at.ts_ns);
        (*record).tuple = info.tuple;
        (*record).role = info.role;
        (*record).syscall = syscall;
        (*record).bytes_sent = info.bytes_sent;
        (*record).bytes_received = info.bytes_received;
        // A close at the socket layer's `TCP_CLOSE` often runs in another task (softirq): its
        // name would be that task's.
        (*record).comm = if !at.comm.is_null() {
            // A non-null `comm` points at the caller's live copy (`Opening::comm`).
            *at.comm
        } else if bpf_get_current_pid_tgid() >> 32 == pid_tgid >> 32 {
            current_comm()
        } else {
            [0; COMM_LEN]
        };
        (*record).task = at.task;
        (*record).flags = flags;
        (*record).reserved = 0;
    }
    entry.submit(wakeup_for(core::mem::size_of::<ConnEvent>() as u64));
    count(Counter::EventsSent);
}

/// This CPU's slot where a new table entry is assembled.
#[inline(always)]
fn new_conn() -> Option<&'static mut ConnInfo> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot, as in `emit_data`; the data record it also holds is
    // assembled only after the entry is stored.
    Some(unsafe { &mut (*scratch).new_conn })
}

/// Starts tracking `fd` as a new connection and announces it; returns its id. `info` holds
/// what `classify_fd` found (endpoints, TCP socket); the rest is set here.
#[inline(always)]
fn track(
    pid_tgid: u64,
    fd: i32,
    info: &mut ConnInfo,
    role: Role,
    syscall: u32,
    shed: bool,
    opened: Option<&Opening>,
) -> Option<u64> {
    info.conn_id = next_conn_id();
    info.role = role as u32;
    info.ignored = 0;
    info.bytes_sent = 0;
    info.bytes_received = 0;
    info.protocol = if shed {
        Protocol::Shed as u32
    } else {
        Protocol::Detecting as u32
    };
    info.misses = 0;
    info.last_direction = 0;
    info.hidden_ask = 0;
    info.hidden_reader = 0;
    info.inband_direction = 0;
    info.inband_adopted = [0; 8];
    info.inband_reader = 0;
    let key = conn_key(pid_tgid, fd);
    if CONNS.insert(&key, &*info, 0).is_err() {
        count(Counter::ConnTableFull);
        return None;
    }
    let flags = if shed { CONN_SHED_AT_OPEN } else { 0 };
    match opened {
        Some(at) => emit_conn_as(EventKind::ConnOpen, pid_tgid, fd, info, syscall, flags, at),
        None => emit_conn(EventKind::ConnOpen, pid_tgid, fd, info, syscall, flags),
    }
    Some(info.conn_id)
}

/// Remembers a non-inet socket (`struct sock` `sk`) so later syscalls on it skip the walk.
#[inline(always)]
fn ignore(pid_tgid: u64, fd: i32, sk: u64) {
    let info = ConnInfo {
        ignored: 1,
        sk,
        ..ConnInfo::default()
    };
    let key = conn_key(pid_tgid, fd);
    if CONNS.insert(&key, &info, 0).is_err() {
        count(Counter::ConnTableFull);
    }
}

/// A tracked socket as the exit program needs it.
struct Tracked {
    conn_id: u64,
    role: u32,
    /// A [`Protocol`].
    protocol: u32,
    /// The table entry, for the byte totals and the TCP socket; null if it could not be found
    /// again.
    entry: *mut ConnInfo,
}

/// What the table says of an fd.
enum Lookup {
    Tracked(Tracked),
    /// Known and not traced (a non-inet socket, or another namespace's).
    Ignored,
    /// Not in the table: a socket that pre-dates the agent or came through fork, or no socket.
    Unknown,
}

/// What the connection table holds for `fd`.
#[inline(always)]
fn lookup<const HOOK: u32>(pid_tgid: u64, fd: i32, sk: u64) -> Lookup {
    let key = conn_key(pid_tgid, fd);
    let Some(entry) = CONNS.get_ptr_mut(&key) else {
        return Lookup::Unknown;
    };
    // One lookup serves both questions (the socket layer asked the table twice).
    if HOOK != hook::SYS_EXIT && retired_if_reused(&key, entry, pid_tgid, fd, sk) {
        return Lookup::Unknown;
    }
    // SAFETY: a pointer from a successful lookup, read at once; a concurrent delete can at
    // worst make the copy stale, which costs one mislabelled event, never memory safety.
    let info = unsafe { &*entry };
    if info.ignored == 0 {
        Lookup::Tracked(Tracked {
            conn_id: info.conn_id,
            role: info.role,
            protocol: info.protocol,
            entry,
        })
    } else {
        Lookup::Ignored
    }
}

/// `fd` if it is a tracked inet socket. An fd the table does not know goes to the discovery
/// program ([`sys_exit_discover`], or its socket-layer copy), which walks the kernel's structs
/// and, for an inet socket, hands the exit back to this family's program. At the socket layer
/// (`HOOK`), `sk` is the socket the tracepoint moved bytes on: an entry of another socket is a
/// closed fd's whose number was reused ([`ConnInfo::sk`]), closed here and discovered afresh.
#[inline(always)]
fn tracked<const HOOK: u32>(
    ctx: &BtfTracePointContext,
    regs: Regs,
    pid_tgid: u64,
    fd: i32,
    entered: Option<u64>,
    sk: u64,
) -> Option<Tracked> {
    match lookup::<HOOK>(pid_tgid, fd, sk) {
        Lookup::Tracked(tracked) => {
            if fresh(tracked.entry) {
                // Its discovery's note, if any, is used up: left, it would match the next
                // discovery of the same thread, syscall and fd number and lose that exit (at the
                // socket layer every connection is discovered, and a reused fd number is the
                // rule).
                clear_discovery_note();
            }
            Some(tracked)
        }
        Lookup::Ignored => None,
        Lookup::Unknown => {
            let number = regs.number();
            if take_discovery_note(pid_tgid, regs, number, fd) {
                // Discovered for this very exit, and gone from the table since (evicted, or
                // closed by another thread): no second walk, no second open record.
                count(Counter::ConnTableFull);
                return None;
            }
            // The entry stamp stays for the run after discovery (at the socket layer it is
            // taken only once the socket is found).
            if HOOK == hook::SYS_EXIT
                && let Some(ts_ns) = entered
            {
                stamp_entry_at(regs, number, ts_ns);
            }
            if jump::<HOOK, { exit_family::DISCOVER }>(ctx) {
                count(Counter::TailCallFailed);
            }
            if HOOK == hook::SYS_EXIT {
                let _ = take_entry_stamp(regs, number);
            }
            None
        }
    }
}

/// At the socket layer: whether `fd`'s table entry belongs to a socket other than `sk` (a closed
/// fd whose number was reused: no `close` is seen there), and so was closed and removed here.
#[inline(always)]
fn retired_if_reused(key: &ConnKey, entry: *mut ConnInfo, pid_tgid: u64, fd: i32, sk: u64) -> bool {
    // SAFETY: a pointer from a successful lookup in this run, read at once.
    let held = unsafe { (*entry).sk };
    if held == 0 || held == sk {
        return false;
    }
    let Some(info) = new_conn() else {
        return false;
    };
    // SAFETY: as above; copied into this CPU's scratch slot (the family program's stack has no
    // room for a copy), which discovery fills afresh afterwards.
    *info = unsafe { *entry };
    let _ = CONNS.remove(key);
    crate::socket_layer::forget_socket(held);
    closed(pid_tgid, fd, info);
    true
}

/// Notes that discovery hands this exit back to its family's program.
#[inline(always)]
fn note_discovery(pid_tgid: u64, regs: Regs, number: u64, fd: i32) {
    let Some(slot) = DISCOVERY_NOTES.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; programs on one CPU do not nest.
    unsafe {
        *slot = DiscoveryNote {
            pid_tgid,
            regs: regs.address(),
            number,
            fd: i64::from(fd),
        };
    }
}

/// Whether table entry `entry` has moved no bytes yet: only then may this exit be the one its
/// discovery handed back.
#[inline(always)]
fn fresh(entry: *mut ConnInfo) -> bool {
    // SAFETY: a pointer from a successful lookup in this run.
    unsafe { (*entry).bytes_sent == 0 && (*entry).bytes_received == 0 }
}

/// Forgets this CPU's discovery note ([`note_discovery`]).
#[inline(always)]
fn clear_discovery_note() {
    if let Some(slot) = DISCOVERY_NOTES.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs on one CPU do not nest.
        unsafe { (*slot).pid_tgid = 0 };
    }
}

/// Whether discovery already ran for this exit ([`note_discovery`]); the note is used up.
#[inline(always)]
fn take_discovery_note(pid_tgid: u64, regs: Regs, number: u64, fd: i32) -> bool {
    let Some(slot) = DISCOVERY_NOTES.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: as in `note_discovery`.
    let note = unsafe { &mut *slot };
    let same = note.pid_tgid == pid_tgid
        && note.regs == regs.address()
        && note.number == number
        && note.fd == i64::from(fd);
    if same {
        note.pid_tgid = 0;
    }
    same
}

/// Walks the kernel's structs for an fd first seen at a data syscall (`syscall`, a
/// [`Syscall`]): tracks it if it is an inet socket and returns its connection id, else
/// remembers to skip it and returns 0. Out of line: the walk and the open record would
/// otherwise take stack from every exit program's own frame, and a frame and its deepest call
/// chain share 512 bytes.
///
/// At the socket layer (`HOOK`), `sk` is the socket the tracepoint moved bytes on: an fd that
/// holds another socket (a kernel send from inside some other syscall) is left alone, and a
/// connection whose opening was seen ([`crate::socket_layer`]) takes its role from it.
#[inline(never)]
fn discover<const HOOK: u32>(pid_tgid: u64, fd: i32, syscall: u32, sk: u64) -> u64 {
    let Some(info) = new_conn() else {
        return 0;
    };
    match classify_fd(fd, info) {
        Ok(FdKind::Untraced) => {
            if HOOK == hook::SYS_EXIT || info.sk == sk {
                ignore(pid_tgid, fd, info.sk);
            }
            0
        }
        Ok(FdKind::Inet) if HOOK == hook::SYS_EXIT => {
            track(pid_tgid, fd, info, Role::Unknown, syscall, false, None).unwrap_or(0)
        }
        // Tracked by the caller ([`track_opened`]): in here the call chain's stack went over
        // the 512 bytes.
        Ok(FdKind::Inet) if info.sk == sk => FOUND_AT_SOCKET,
        // Not a socket, or (at the socket layer) not the one that moved the bytes.
        Ok(FdKind::Other | FdKind::Inet) => 0,
        Err(_) => {
            count(Counter::SocketWalkFailed);
            0
        }
    }
}

/// At the socket layer: tracks a client end at its handshake's end (`inet_sock_set_state`,
/// `SYN_SENT` → `ESTABLISHED`, often in softirq), socket `sk`, fd `fd` of `pid_tgid` (read from
/// the registers of its `connect` at `SYN_SENT`), and announces it as `connect`'s exit does:
/// before its first byte, so that what the agent learns of the code that opened it is as of
/// then (Node.js: the callback rule reads the opener's state when the open record comes; read at
/// the first write instead, a socket that had carried another request meanwhile gave the wrong
/// parent, 1 in 40 calls in half the runs). The caller closes first an entry of another
/// socket on that fd ([`retire_held`]). Out of line: the program's own stack holds the
/// opening.
#[inline(never)]
pub fn track_connected(sk: u64, pid_tgid: u64, fd: i32, at: &Opening, info: &mut ConnInfo) {
    if !in_traced_netns(sk) {
        return;
    }
    if !tcp_tuple_into(sk, &mut info.tuple) {
        return;
    }
    info.sk = sk;
    info.tcp_sk = sk;
    let tgid = (pid_tgid >> 32) as u32;
    let shed = shed::sheds_opening(tgid, &info.tuple);
    let connect = Syscall::Connect as u32;
    if track(pid_tgid, fd, info, Role::Client, connect, shed, Some(at)).is_some() {
        shed::note_caller(tgid);
        crate::socket_layer::note_socket(sk, &conn_key(pid_tgid, fd));
    } else if shed {
        shed::forget_opening(&info.tuple);
    }
}

/// Closes and removes the entry `fd` of `pid_tgid` holds for a socket other than `sk` (closed,
/// its `TCP_CLOSE` not seen yet), copied into `copy` first: from softirq, where this CPU's
/// scratch slot may be a syscall's it interrupted, the caller gives room of its own.
#[inline(never)]
pub fn retire_held(pid_tgid: u64, fd: i32, sk: u64, copy: &mut ConnInfo) {
    let key = conn_key(pid_tgid, fd);
    let Some(entry) = CONNS.get_ptr(&key) else {
        return;
    };
    // SAFETY: a pointer from a successful lookup, copied at once.
    *copy = unsafe { *entry };
    if copy.sk == sk {
        return;
    }
    let _ = CONNS.remove(&key);
    if copy.tcp_sk != 0 {
        crate::socket_layer::forget_socket(copy.sk);
    }
    closed(pid_tgid, fd, copy);
}

/// What [`discover`] returns at the socket layer for an inet socket left in the scratch slot's
/// entry for [`track_opened`]. Connection ids count from 1 up on each CPU, with the CPU in the
/// high bits: never this.
const FOUND_AT_SOCKET: u64 = u64::MAX;

/// At the socket layer: tracks the inet socket [`discover`] left in this CPU's new entry
/// (socket `fd` of `pid_tgid`, first seen at data syscall `syscall`) with the role, opening syscall and task its opening left
/// ([`crate::socket_layer::take_opening`]), and the budget's bookkeeping `open_exit` does for a
/// connection seen at its `connect`. Out of line: inlined, discovery's frame went over the 512
/// bytes.
#[inline(never)]
fn track_opened(pid_tgid: u64, fd: i32, syscall: u32) -> u64 {
    let Some(info) = new_conn() else {
        return 0;
    };
    let tgid = (pid_tgid >> 32) as u32;
    let opening = crate::socket_layer::take_opening(info.sk, tgid);
    let (role, opened_in, at) = match &opening {
        Some(open) => (
            open.role,
            open.syscall,
            Some(Opening {
                task: match open.task {
                    Some(task) => task,
                    None => followed::opening_task(pid_tgid),
                },
                ts_ns: open.ts_ns,
                comm: core::ptr::null(),
            }),
        ),
        // A UDP socket with a peer was connected (`connect`, which moves no bytes and fires no
        // state change): its client end, as `open_exit` takes it.
        None if info.tuple.sock_type == SOCK_DGRAM && info.tuple.remote_port != 0 => {
            (Role::Client, Syscall::Connect as u32, None)
        }
        None => (Role::Unknown, syscall, None),
    };
    // A TCP client end's decision was taken at its handshake's end
    // (`socket_layer::client_established`); a connected UDP socket's is taken now.
    let shed = match &opening {
        Some(open) => open.shed,
        None => role == Role::Client && shed::sheds_opening(tgid, &info.tuple),
    };
    let Some(conn_id) = track(pid_tgid, fd, info, role, opened_in, shed, at.as_ref()) else {
        if shed {
            shed::forget_opening(&info.tuple);
        }
        return 0;
    };
    if role == Role::Client {
        shed::note_caller(tgid);
    }
    if info.tcp_sk != 0 {
        crate::socket_layer::note_socket(info.sk, &conn_key(pid_tgid, fd));
    }
    conn_id
}

/// Notes when the current thread's egress syscall `number` started.
#[inline(always)]
fn stamp_entry(regs: Regs, number: u64) {
    stamp_entry_at(regs, number, now_ns());
}

/// Notes that the current thread's egress syscall `number` started at `ts_ns`.
#[inline(always)]
fn stamp_entry_at(regs: Regs, number: u64, ts_ns: u64) {
    let Some(slot) = ENTRY_STAMPS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; syscall tracepoint programs run with preemption off, so nothing
    // else on this CPU writes it meanwhile.
    unsafe {
        *slot = EntryStamp {
            regs: regs.address(),
            number,
            ts_ns,
        };
    }
}

/// When the exiting syscall started, if it is an egress one and this CPU saw its entry. Every
/// egress exit takes its stamp, tracked socket or not, so no stamp outlives its syscall (unless
/// the thread moved to another CPU inside it): a left-over stamp could match a later task that
/// got the same kernel stack.
#[inline(always)]
fn take_entry_stamp(regs: Regs, number: u64) -> Option<u64> {
    if !is_egress(number) {
        return None;
    }
    let slot = ENTRY_STAMPS.get_ptr_mut(0)?;
    // SAFETY: as in `stamp_entry`.
    let stamp = unsafe { &mut *slot };
    if stamp.regs == regs.address() && stamp.number == number {
        stamp.regs = 0;
        return Some(stamp.ts_ns);
    }
    None
}

/// What one data syscall's exit knows.
struct Exit {
    pid_tgid: u64,
    fd: i32,
    syscall: Syscall,
    direction: Direction,
    conn: Tracked,
    /// The record's time (`EventHeader::ts_ns`).
    ts_ns: u64,
    /// When the bytes moved: the syscall's entry for egress, its exit for ingress.
    moved_ns: u64,
    /// `DataEvent::task`.
    task: u64,
    /// `DataEvent::seq` of the syscall's first byte, with [`SEQ_VALID`] when known.
    seq: u64,
    /// The first syscall of a connection the budget resumes ([`DATA_RESUMED`]).
    resumed: bool,
    /// A client end writes: its thread's hidden work is looked up ([`shed`]).
    client_write: bool,
    /// For the records without protocol detection (datagrams, `sendfile`): the thread's hidden
    /// work, whatever the request asks ([`shed::hidden_work_flags_unread`]).
    hidden_unread: u32,
}

/// What the budget's state ([`shed`]) makes of a data syscall on `conn`: `None` when it is
/// hidden (counted, bytes added to the totals), else whether it resumes the connection (which
/// is then detected afresh).
#[inline(always)]
fn budget_verdict(
    regs: Regs,
    pid_tgid: u64,
    conn: &mut Tracked,
    syscall: Syscall,
    direction: Direction,
    result: i64,
) -> Option<bool> {
    if !Protocol::is_budget_state(conn.protocol) {
        return Some(false);
    }
    match shed::verdict(conn.entry, conn.role, conn.protocol, direction as u32) {
        verdict
        @ (shed::verdict::HIDE | shed::verdict::HIDE_START | shed::verdict::HIDE_ANSWER) => {
            // A process that calls nothing has no client write to flag: its hidden requests
            // ask anything and are answered at the next one's start, no user memory read.
            if verdict == shed::verdict::HIDE_START {
                // One still counted was answered unread: this read may be its body after a
                // `100 Continue`, whose bytes ask nothing of the request's.
                let ask = if shed::calls_out((pid_tgid >> 32) as u32)
                    && !shed::still_counted(conn.entry)
                {
                    hidden_ask(regs, syscall, result)
                } else {
                    agent_common::ask::ANY_ASK
                };
                shed::started(pid_tgid, conn.entry, ask);
            } else if verdict == shed::verdict::HIDE_ANSWER
                && (conn.protocol == Protocol::ResumeNext as u32
                    || shed::calls_out((pid_tgid >> 32) as u32))
            {
                // On its way back, an interim answer must not pass for the end of the request:
                // the body read after it would resume the connection mid-request.
                if interim_response(regs, syscall, result) {
                    // `100 Continue` answers nothing: still reading, so the body read after it
                    // starts no request.
                    shed::still_reading(conn.entry);
                } else {
                    shed::answered(conn.entry);
                }
            }
            if !matches!(syscall, Syscall::Sendmmsg | Syscall::Recvmmsg) {
                add_bytes(conn.entry, direction, result as u64);
            }
            count(Counter::ShedSyscalls);
            None
        }
        shed::verdict::RESUMED => {
            // Its last hidden request, if still counted, was answered before this one.
            shed::answered(conn.entry);
            conn.protocol = Protocol::Detecting as u32;
            Some(true)
        }
        _ => Some(false),
    }
}

/// What a hidden request read by a plain-buffer syscall (`read`, `recvfrom`) asks
/// ([`shed::ask_of`]); any other read asks anything, as far as the programs know.
#[inline(always)]
fn hidden_ask(regs: Regs, syscall: Syscall, result: i64) -> u32 {
    if matches!(syscall, Syscall::Read | Syscall::Recvfrom) {
        shed::ask_of(regs.arg1(), result as u64, true)
    } else {
        agent_common::ask::ANY_ASK
    }
}

/// Whether a hidden server write is an interim response (`100 Continue`), which answers
/// nothing yet: read from a plain buffer or a `writev`'s first iovec; any other write is taken
/// as the answer. Out of line: the verifier walks it once per call site, not per path.
#[inline(never)]
fn interim_response(regs: Regs, syscall: Syscall, result: i64) -> bool {
    // `HTTP/1.1 100 ` and the status line's end: shorter is no interim response.
    if result < 12 {
        return false;
    }
    let first = match syscall {
        Syscall::Write | Syscall::Sendto => regs.arg1(),
        // SAFETY: bpf_probe_read_user returns an error for a bad user address.
        Syscall::Writev => unsafe { bpf_probe_read_user(regs.arg1() as *const u64) }.unwrap_or(0),
        _ => 0,
    };
    first != 0 && shed::is_interim(first)
}

/// `struct mmsghdr` (64-bit ABI): a `struct user_msghdr` (56 bytes) then `unsigned int msg_len`.
pub const MMSGHDR_SIZE: u64 = 64;
const MMSGHDR_LEN: u64 = 56;
/// Iovec entries walked per message of a `*mmsg` call.
const MMSG_IOVECS: usize = 4;

#[inline(always)]
fn data_exit<const FAMILY: u32, const HOOK: u32>(
    ctx: &BtfTracePointContext,
    regs: Regs,
    pid_tgid: u64,
    syscall: Syscall,
    result: i64,
    entered: Option<u64>,
) -> Result<(), i64> {
    let Some(direction) = syscall.direction().filter(|_| result > 0) else {
        return Ok(());
    };
    let fd = regs.arg0() as i32;
    let sk = sock_of::<HOOK>(ctx);
    let Some(mut conn) = tracked::<HOOK>(ctx, regs, pid_tgid, fd, entered, sk) else {
        return Ok(());
    };
    // Taken only now that the socket is found (discovery hands the exit back, and the stamp
    // waits).
    let (entered, send_seq) = send_start::<HOOK>(sk, result, entered);
    // Before anything reads the state (the in-band mode's look included): from here on this
    // server end is shed like any other.
    if conn.protocol == Protocol::Detecting as u32
        && conn.role == Role::Server as u32
        && shed::sheds_server_end(conn.entry, pid_tgid, fd, syscall as u32)
    {
        conn.protocol = Protocol::Shed as u32;
    }
    let tls = conn.protocol == Protocol::Tls as u32;
    let tls_followed = config!(inband) != 0 && inband_before_record(pid_tgid, fd, &conn, syscall);
    if tls_followed {
        // Before the TLS call's plaintext record, as for a plaintext connection.
        inband_tls_data(regs, pid_tgid, conn.entry, syscall, result);
    }
    if tls {
        // Ciphertext: counted, never sent; the TLS probes send the plaintext. A call of theirs
        // in progress on this thread learns its socket here.
        // (TLS runs over one stream: datagram calls on it say nothing of its OpenSSL calls.)
        if !matches!(syscall, Syscall::Sendmmsg | Syscall::Recvmmsg) {
            add_bytes(conn.entry, direction, result as u64);
            let start = tls_io_start(regs, conn.entry, syscall, result);
            tls::note_socket(pid_tgid, regs.r14(), fd, conn.conn_id, &start);
        }
        return Ok(());
    }
    let Some(resumed) = budget_verdict(regs, pid_tgid, &mut conn, syscall, direction, result)
    else {
        return Ok(());
    };
    if conn.protocol == Protocol::Opaque as u32 && config!(skip_opaque) != 0 {
        // Nothing to parse: no payload copy, no record; the bytes still count for the close
        // (not for `*mmsg`, whose result is a message count).
        if !matches!(syscall, Syscall::Sendmmsg | Syscall::Recvmmsg) {
            add_bytes(conn.entry, direction, result as u64);
        }
        return Ok(());
    }
    if stops_after(exit_stage::LOOKUP) {
        return Ok(());
    }
    let (ts_ns, moved_ns) = times::<HOOK>(entered, direction, conn.entry);
    if stops_after(exit_stage::CLOCK) {
        return Ok(());
    }
    // Datagrams (`*mmsg`) have no stream position; a receive's flags may say it only peeked.
    let seq = match syscall {
        Syscall::Sendmmsg | Syscall::Recvmmsg => 0,
        _ if send_seq != 0 => send_seq,
        _ => stream_position(
            conn.entry,
            match syscall {
                Syscall::Recvfrom => regs.arg3(),
                Syscall::Recvmsg => regs.arg2(),
                _ => 0,
            },
            u64::from(direction == Direction::Egress),
            result as u64,
        ),
    };
    let client_write = direction == Direction::Egress && conn.role != Role::Server as u32;
    let mut exit = Exit {
        pid_tgid,
        fd,
        syscall,
        direction,
        conn,
        ts_ns,
        moved_ns,
        // In a followed Python process, the running asyncio task's context; on a Node.js
        // thread, its libuv callback; elsewhere R14 (in Go code, the running goroutine).
        task: match followed::current_task(pid_tgid) {
            NOT_FOLLOWED => regs.r14(),
            task => task,
        },
        seq,
        resumed,
        client_write,
        hidden_unread: 0,
    };
    if config!(inband) != 0 {
        // Before the data record: the agent finds a request's context when it parses it. Every
        // family: a response sent by `sendfile` ends its request too (datagrams have no
        // sequence number, and leave their thread unsure).
        inband::after_data(
            pid_tgid,
            fd,
            exit.conn.entry,
            exit.direction as u32,
            exit.seq,
        );
    }
    emit_records::<FAMILY, HOOK>(regs, &mut exit, result)?;
    if config!(inband) != 0
        && FAMILY != exit_family::OTHER
        && exit.conn.protocol == Protocol::Detecting as u32
        && detected_unfollowed(exit.conn.entry)
    {
        // Its start was taken as a request the programs follow.
        inband::unfollowed_data(pid_tgid, exit.conn.entry, exit.direction as u32);
    }
    Ok(())
}

/// When a send started and its first byte's stream position (`SEQ_VALID | seq`, 0 when not
/// known): at the socket layer, a TCP send's start as `tcp_sendmsg_locked` stamped it, with the
/// position the stamp's check reads; elsewhere `entered`, and the position is read later.
#[inline(always)]
fn send_start<const HOOK: u32>(sk: u64, moved: i64, entered: Option<u64>) -> (Option<u64>, u64) {
    if HOOK != hook::SOCK_SEND {
        return (entered, 0);
    }
    match crate::socket_layer::take_send_stamp(sk, moved as u64) {
        Some((ts_ns, seq)) => (Some(ts_ns), SEQ_VALID | u64::from(seq)),
        None => (None, 0),
    }
}

/// The in-band mode before a data syscall's record (`direction` from `syscall`, which moved
/// bytes): a read of a connection that may carry the connection form reports it; a syscall on
/// bytes the programs do not follow as requests (TLS whose records are not followed, a budget
/// state) leaves its thread unsure. Returns whether it is a TLS connection whose records are
/// followed (see `inband::in_order`): its records' positions are known then.
#[inline(always)]
fn inband_before_record(pid_tgid: u64, fd: i32, conn: &Tracked, syscall: Syscall) -> bool {
    let Some(direction) = syscall.direction() else {
        return false;
    };
    let tls = conn.protocol == Protocol::Tls as u32;
    let tls_followed = tls
        && inband::tls_followed(conn.entry)
        && !matches!(syscall, Syscall::Sendmmsg | Syscall::Recvmmsg);
    if !tls_followed && (tls || Protocol::is_budget_state(conn.protocol)) {
        inband::unfollowed_data(pid_tgid, conn.entry, direction as u32);
    }
    if direction == Direction::Ingress && (tls || conn.protocol == Protocol::Http2 as u32) {
        // Before the record: the agent knows whom to ask before it parses the streams.
        inband::conn_form_read(pid_tgid, fd, conn.entry);
    }
    tls_followed
}

/// The in-band mode on a TLS connection whose records it follows ([`inband::tls_followed`]): a
/// read or write of its ciphertext, as [`inband::after_data`] takes a plaintext connection's,
/// a read with the sequence number of its first byte. Out of line: the TLS path's own locals
/// stay out of the frames below it.
#[inline(never)]
fn inband_tls_data(regs: Regs, pid_tgid: u64, entry: *mut ConnInfo, syscall: Syscall, result: i64) {
    let Some(direction) = syscall.direction() else {
        return;
    };
    let seq = if direction == Direction::Ingress {
        let flags = match syscall {
            Syscall::Recvfrom => regs.arg3(),
            Syscall::Recvmsg => regs.arg2(),
            _ => 0,
        };
        stream_position(entry, flags, 0, result as u64)
    } else {
        0
    };
    inband::after_data(pid_tgid, regs.arg0() as i32, entry, direction as u32, seq);
}

/// A data record's times (`EventHeader::ts_ns`, `DataEvent::moved_ns`): egress bytes left when
/// the syscall entered (`entered`); the exit's own time is read only when that entry was not
/// seen.
#[inline(always)]
fn times<const HOOK: u32>(
    entered: Option<u64>,
    direction: Direction,
    entry: *mut ConnInfo,
) -> (u64, u64) {
    if let Some(ts) = entered {
        return (ts, ts);
    }
    // (At the socket layer only TCP sends are stamped: a datagram's time is its send's end.)
    if direction == Direction::Egress && (HOOK == hook::SYS_EXIT || sk_is_tcp(entry)) {
        count(Counter::EntryTimeMissed);
    }
    let now = now_ns();
    (now, now)
}

/// Whether table entry `entry` is a TCP socket's.
#[inline(always)]
fn sk_is_tcp(entry: *mut ConnInfo) -> bool {
    // SAFETY: a pointer from a successful lookup in this run, or null.
    !entry.is_null() && unsafe { (*entry).tcp_sk } != 0
}

/// Whether this record's detection found a protocol whose requests the in-band mode does not
/// follow (TLS, HTTP/2, nothing parsed).
#[inline(always)]
fn detected_unfollowed(entry: *mut ConnInfo) -> bool {
    if entry.is_null() {
        return false;
    }
    // SAFETY: a pointer from a successful lookup in this run.
    let protocol = unsafe { (*entry).protocol };
    protocol == Protocol::Tls as u32
        || protocol == Protocol::Http2 as u32
        || protocol == Protocol::Opaque as u32
}

/// Sends the records of one data syscall: one per message for `*mmsg`, else one.
#[inline(always)]
fn emit_records<const FAMILY: u32, const HOOK: u32>(
    regs: Regs,
    exit: &mut Exit,
    result: i64,
) -> Result<(), i64> {
    let (syscall, pid_tgid) = (exit.syscall, exit.pid_tgid);
    let buf = regs.arg1();
    if FAMILY != exit_family::OTHER {
        // One call site for the stream syscalls: the verifier walks it once.
        let source = match FAMILY {
            exit_family::VECTOR => Source::Iovecs {
                ptr: buf,
                count: regs.arg2(),
            },
            exit_family::MESSAGE => Source::MsgHdr { ptr: buf },
            _ => Source::Buffer { ptr: buf },
        };
        emit_data::<true>(exit, result, source);
        return Ok(());
    }
    if exit.client_write {
        exit.hidden_unread = shed::hidden_work_flags_unread(pid_tgid);
    }
    if syscall == Syscall::Sendfile {
        emit_data::<false>(exit, result, Source::Uncapturable);
        return Ok(());
    }
    if HOOK != hook::SYS_EXIT {
        // At the socket layer, one message of a `sendmmsg` (`result` its bytes): which one is
        // worked out, and checked against its length, or nothing is sent.
        match crate::socket_layer::mmsg_index(exit.pid_tgid, buf, regs.arg2(), result as u64) {
            Some(i) => emit_data::<false>(
                exit,
                result,
                Source::MsgHdr {
                    ptr: buf + i * MMSGHDR_SIZE,
                },
            ),
            None => count(Counter::PayloadReadFailed),
        }
        return Ok(());
    }
    // `*mmsg`: `result` is a message count; each message's byte count is in its msg_len.
    let mut i: u64 = 0;
    while i < MAX_MMSG as u64 {
        if i >= result as u64 {
            break;
        }
        let msg = buf + i * MMSGHDR_SIZE;
        // SAFETY: bpf_probe_read_user returns an error for a bad user address.
        let len =
            unsafe { bpf_probe_read_user((msg + MMSGHDR_LEN) as *const u32) }.map_err(i64::from)?;
        // No protocol detection on datagrams: none of the protocols it looks for is carried by
        // `*mmsg` (and each unrolled copy would add to what the verifier walks).
        emit_data::<false>(exit, i64::from(len), Source::MsgHdr { ptr: msg });
        i += 1;
    }
    if result as u64 > MAX_MMSG as u64 {
        count(Counter::PayloadTruncated);
    }
    Ok(())
}

/// How a read or write of a TLS socket began ([`tls::IoStart`]): a read's position, and the
/// first three bytes when the syscall moved them from one buffer or a vector's first one
/// (`read`, `write`, `recvfrom`, `sendto`, `readv`, `writev`; a message's are not looked at).
#[inline(never)]
fn tls_io_start(regs: Regs, entry: *mut ConnInfo, syscall: Syscall, result: i64) -> tls::IoStart {
    let read = syscall.direction() == Some(Direction::Ingress);
    let flags = match syscall {
        Syscall::Recvfrom => regs.arg3(),
        Syscall::Recvmsg => regs.arg2(),
        _ => 0,
    };
    let buffer = match syscall {
        Syscall::Read | Syscall::Write | Syscall::Recvfrom | Syscall::Sendto => regs.arg1(),
        Syscall::Readv | Syscall::Writev => {
            // SAFETY: the helper returns an error for a bad user address; it never faults.
            unsafe { bpf_probe_read_user(regs.arg1() as *const u64) }.unwrap_or(0)
        }
        _ => 0,
    };
    let head = if buffer == 0 || result < 3 {
        [0; 3]
    } else {
        // SAFETY: as above.
        unsafe { bpf_probe_read_user(buffer as *const [u8; 3]) }.unwrap_or([0; 3])
    };
    tls::IoStart {
        seq: if read {
            stream_position(entry, flags, 0, result as u64)
        } else {
            0
        },
        head,
        read,
    }
}

/// `MSG_PEEK`: a read that leaves the bytes queued (and `copied_seq` where it was).
const MSG_PEEK: u64 = 2;

/// [`Exit::seq`] when the sequence number is known.
const SEQ_VALID: u64 = 1 << 32;

/// The TCP sequence number of the first byte a single-stream syscall moved on the socket of
/// table entry `entry` (`flags`: a receive's flags), with [`SEQ_VALID`] set; 0 for sockets that
/// are not TCP, peeks and failed reads. Out of line: the exit program's stack has no room for
/// another inlined kernel read.
#[inline(never)]
fn stream_position(entry: *mut ConnInfo, flags: u64, egress: u64, moved: u64) -> u64 {
    if entry.is_null() || flags & MSG_PEEK != 0 {
        return 0;
    }
    // SAFETY: a pointer from a successful lookup in this run (see `tracked`).
    let tcp_sk = unsafe { (*entry).tcp_sk };
    if tcp_sk == 0 {
        return 0;
    }
    match stream_seq(tcp_sk, egress != 0, moved) {
        Ok(seq) => SEQ_VALID | u64::from(seq),
        Err(_) => 0,
    }
}

/// Copies the payload prefix of `moved` bytes from `source` and sends one data record.
#[inline(always)]
fn emit_data<const DETECT: bool>(exit: &Exit, moved: i64, source: Source) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot. Only this program uses it, and the kernel runs syscall
    // tracepoint programs with preemption off and never re-enters a program on one CPU.
    let scratch = unsafe { &mut *scratch };
    let limit = u64::from(config!(capture_bytes));
    let want = if (moved as u64) < limit {
        moved as u64
    } else {
        limit
    };
    // Datagrams (`*mmsg`, the only callers without detection) carry few iovecs; the walk is
    // inlined once per message there, so it stays short.
    let max_iovecs = if DETECT { MAX_IOVECS } else { MMSG_IOVECS };
    let copied = copy_payload(&mut scratch.payload, source, want, max_iovecs);
    if copied.failed {
        count(Counter::PayloadReadFailed);
    }
    if DETECT && exit.conn.protocol == Protocol::Detecting as u32 {
        let found = detect::detect(
            exit.conn.entry,
            exit.conn.role | (u32::from(exit.direction == Direction::Egress) << 8),
            &scratch.payload,
            copied.len,
            moved as u64,
        );
        if found == Protocol::Tls as u32 {
            // A connection first seen at this syscall (open before the agent) may be inside an
            // OpenSSL call already: that call is this socket's.
            let read = exit.direction == Direction::Ingress;
            let start = tls::IoStart {
                seq: if read { exit.seq } else { 0 },
                // Only what this syscall copied: the scratch slot holds older bytes past it.
                head: if copied.len >= 3 {
                    [scratch.payload[0], scratch.payload[1], scratch.payload[2]]
                } else {
                    [0; 3]
                },
                read,
            };
            tls::note_socket(exit.pid_tgid, exit.task, exit.fd, exit.conn.conn_id, &start);
        }
    } else if DETECT && exit.conn.protocol == Protocol::Mysql as u32 {
        // This record still goes out as MySQL (the agent's parser reads the SSL request too).
        detect::mysql_ssl_request(
            exit.conn.entry,
            exit.conn.role | (u32::from(exit.direction == Direction::Egress) << 8),
            &scratch.payload,
            copied.len,
            moved as u64,
        );
    }
    if i64::from(copied.len) < moved && !matches!(source, Source::Uncapturable) {
        count(Counter::PayloadTruncated);
    }
    if stops_after(exit_stage::COPY) {
        return;
    }
    scratch.event = DataEvent {
        header: header(
            EventKind::Data,
            exit.pid_tgid,
            exit.fd,
            exit.conn.conn_id,
            exit.ts_ns,
        ),
        moved_ns: exit.moved_ns,
        ret: moved,
        role: exit.conn.role,
        direction: exit.direction as u32,
        syscall: exit.syscall as u32,
        captured_len: copied.len,
        task: exit.task,
        // The low 32 bits are the number.
        seq: exit.seq as u32,
        flags: if exit.seq & SEQ_VALID != 0 {
            DATA_SEQ_VALID
        } else {
            0
        } | if exit.resumed { DATA_RESUMED } else { 0 }
            | if !exit.client_write {
                0
            } else if DETECT {
                // A request a client end writes: whether its thread has hidden work.
                shed::hidden_work_flags(
                    exit.pid_tgid,
                    scratch.payload.as_ptr() as u64,
                    u64::from(copied.len),
                )
            } else {
                // Datagrams and `sendfile`: asked once per syscall by the caller (each unrolled
                // copy of the lookup would add to what the verifier walks), by their thread
                // only: none of them carries an HTTP request line.
                exit.hidden_unread
            },
    };
    let payload_len = if copied.len as usize > MAX_CAPTURE_BYTES {
        MAX_CAPTURE_BYTES
    } else {
        copied.len as usize
    };
    let size = core::mem::size_of::<DataEvent>() + payload_len;
    let flags = wakeup_flags(&mut scratch.unchecked_bytes, size as u64);
    // SAFETY: `size` is at most the DataEvent plus MAX_CAPTURE_BYTES, inside the scratch value.
    let record = unsafe { core::slice::from_raw_parts((&raw const *scratch).cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(record, flags).is_ok() {
        count(Counter::EventsSent);
    } else {
        count(Counter::RingFull);
    }
    add_bytes(exit.conn.entry, exit.direction, moved as u64);
}

/// Adds to the per-connection byte totals reported at close.
#[inline(always)]
fn add_bytes(entry: *mut ConnInfo, direction: Direction, bytes: u64) {
    if entry.is_null() {
        return;
    }
    // SAFETY: a pointer from a successful lookup in this run; a racing update can at worst lose
    // a count.
    unsafe {
        if direction == Direction::Egress {
            (*entry).bytes_sent += bytes;
        } else {
            (*entry).bytes_received += bytes;
        }
    }
}

/// Tracks the socket an `accept` returned or a `connect` connected.
#[inline(always)]
fn open_exit(regs: Regs, pid_tgid: u64, syscall: Syscall, result: i64) {
    let (fd, role) = if syscall == Syscall::Connect {
        if result != 0 && result != EINPROGRESS_RET {
            return;
        }
        (regs.arg0() as i32, Role::Client)
    } else {
        if result < 0 {
            return;
        }
        (result as i32, Role::Server)
    };
    let Some(info) = new_conn() else {
        return;
    };
    match classify_fd(fd, info) {
        Ok(FdKind::Inet) => {
            let tgid = (pid_tgid >> 32) as u32;
            let shed = role == Role::Client && shed::sheds_opening(tgid, &info.tuple);
            if track(pid_tgid, fd, info, role, syscall as u32, shed, None).is_some() {
                if role == Role::Client {
                    shed::note_caller(tgid);
                }
            } else if shed {
                shed::forget_opening(&info.tuple);
            }
        }
        Ok(FdKind::Untraced) => ignore(pid_tgid, fd, info.sk),
        Ok(FdKind::Other) => {}
        Err(_) => count(Counter::SocketWalkFailed),
    }
}

/// Forgets `fd` and reports its close. At entry: once close starts, another thread may get the
/// same fd number.
#[inline(always)]
fn close_enter(regs: Regs) {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return;
    };
    let fd = regs.arg0() as i32;
    let key = conn_key(pid_tgid, fd);
    // SAFETY: copied out at once.
    let Some(mut info) = (unsafe { CONNS.get(&key) }).copied() else {
        return;
    };
    let _ = CONNS.remove(&key);
    closed(pid_tgid, fd, &mut info);
}

/// What ends with a connection removed from the table (`info`, socket `fd` of `pid_tgid`): the
/// in-band mode's and the budget's bookkeeping, and its close record.
#[inline(always)]
pub fn closed(pid_tgid: u64, fd: i32, info: &mut ConnInfo) {
    if config!(inband) != 0 && info.inband_reader != 0 {
        inband::closed(info.inband_reader);
    }
    if info.protocol == Protocol::Shed as u32 || info.protocol == Protocol::ResumeNext as u32 {
        // A hidden request it never answered is no one's work any more.
        shed::closed(info);
        if info.role == Role::Client as u32 {
            shed::forget_opening(&info.tuple);
        }
    }
    if info.ignored == 0 {
        emit_close(pid_tgid, fd, info);
    }
}

/// Sends the close record of `info`. Out of line: the record assembled in `sys_enter`'s own
/// frame, beside the in-band mode's calls, went over the 512 bytes a call chain gets.
#[inline(never)]
fn emit_close(pid_tgid: u64, fd: i32, info: &ConnInfo) {
    emit_conn(
        EventKind::ConnClose,
        pid_tgid,
        fd,
        info,
        Syscall::Close as u32,
        0,
    );
}

/// `raw_syscalls/sys_enter`, attached by BTF: `(struct pt_regs *regs, long id)`, for every
/// syscall of every task. Egress syscalls note their start; `close` drops its socket.
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    let number: u64 = ctx.arg(1);
    if is_egress(number) {
        let regs = Regs::of(&ctx);
        stamp_entry(regs, number);
        if config!(inband) != 0
            && regs.is_native()
            && let Some(pid_tgid) = traced_pid_tgid()
        {
            let fd = regs.arg0() as i32;
            if let Some(conn) = inband::client_write_enter(pid_tgid, fd)
                && inband::client_conn_token(pid_tgid, fd, conn)
            {
                inband::client_conn_form(pid_tgid, fd, conn);
            }
        }
    } else if number == nr::CLOSE {
        let regs = Regs::of(&ctx);
        if regs.is_native() {
            close_enter(regs);
        }
    }
    0
}

/// `raw_syscalls/sys_exit`, attached by BTF: `(struct pt_regs *regs, long ret)`, for every
/// syscall of every task. Hands a socket syscall to its family's program
/// (`agent_common::EXIT_FAMILIES`) by tail call; every other syscall ends here.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit(ctx: BtfTracePointContext) -> i32 {
    let regs = Regs::of(&ctx);
    let number = regs.number();
    if jump_to_family::<{ hook::SYS_EXIT }>(&ctx, number) {
        // The jump failed: the exit ends here, and its entry stamp goes with it.
        count(Counter::TailCallFailed);
        let _ = take_entry_stamp(regs, number);
    }
    0
}

/// Tail-calls the program of syscall `number`'s family; returns whether it tried (and so
/// failed), `false` for a syscall no family takes. One call site per family, each with a
/// constant index: the kernel then patches each into a direct jump instead of an indirect one
/// (a retpoline on kernels with that mitigation).
#[inline(always)]
pub fn jump_to_family<const HOOK: u32>(ctx: &BtfTracePointContext, number: u64) -> bool {
    match exit_family_of(number) {
        Some(exit_family::BUFFER) => jump::<HOOK, { exit_family::BUFFER }>(ctx),
        Some(exit_family::VECTOR) => jump::<HOOK, { exit_family::VECTOR }>(ctx),
        Some(exit_family::MESSAGE) => jump::<HOOK, { exit_family::MESSAGE }>(ctx),
        // Opens are not data: the socket layer sees none.
        Some(exit_family::OPEN) if HOOK == hook::SYS_EXIT => {
            jump::<HOOK, { exit_family::OPEN }>(ctx)
        }
        Some(exit_family::OTHER) => jump::<HOOK, { exit_family::OTHER }>(ctx),
        _ => false,
    }
}

/// Tail-calls program `INDEX` of hook `HOOK`'s program array ([`EXIT_JUMPS`], or the socket
/// layer's); returns `true`, and only if that failed. The helper call is written out
/// (`bpf_tail_call` is helper 12) because the compiler merges calls that differ only in a
/// constant argument into one call with a variable index, which the kernel can only run as an
/// indirect jump; it never merges inline assembly.
#[inline(always)]
fn jump<const HOOK: u32, const INDEX: u32>(ctx: &BtfTracePointContext) -> bool {
    let jumps: *const u8 = match HOOK {
        hook::SOCK_SEND => (&raw const crate::socket_layer::SEND_JUMPS).cast(),
        hook::SOCK_RECV => (&raw const crate::socket_layer::RECV_JUMPS).cast(),
        _ => (&raw const EXIT_JUMPS).cast(),
    };
    // SAFETY: `bpf_tail_call(ctx, map, index)` with the running program's own context and the
    // program array; on success it does not return, on failure it returns an error in r0 and
    // clobbers the caller-saved registers r0–r5, as declared.
    unsafe {
        core::arch::asm!(
            "call 12",
            inout("r1") aya_ebpf::EbpfContext::as_ptr(ctx) => _,
            inout("r2") jumps => _,
            inout("r3") u64::from(INDEX) => _,
            lateout("r0") _,
            lateout("r4") _,
            lateout("r5") _,
        );
    }
    true
}

/// The family programs, tail-called by [`sys_exit`] with its context (`ret`: the bytes moved, a
/// message count for `*mmsg`, the accepted fd, or `connect`'s status). Never attached.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_open(ctx: BtfTracePointContext) -> i32 {
    exit_program::<{ exit_family::OPEN }, { hook::SYS_EXIT }>(&ctx)
}

/// See [`sys_exit_open`]: `read`, `write`, `recvfrom`, `sendto`.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_buffer(ctx: BtfTracePointContext) -> i32 {
    exit_program::<{ exit_family::BUFFER }, { hook::SYS_EXIT }>(&ctx)
}

/// See [`sys_exit_open`]: `readv`, `writev`.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_vector(ctx: BtfTracePointContext) -> i32 {
    exit_program::<{ exit_family::VECTOR }, { hook::SYS_EXIT }>(&ctx)
}

/// See [`sys_exit_open`]: `recvmsg`, `sendmsg`.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_message(ctx: BtfTracePointContext) -> i32 {
    exit_program::<{ exit_family::MESSAGE }, { hook::SYS_EXIT }>(&ctx)
}

/// See [`sys_exit_open`]: `recvmmsg`, `sendmmsg`, `sendfile`.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_other(ctx: BtfTracePointContext) -> i32 {
    exit_program::<{ exit_family::OTHER }, { hook::SYS_EXIT }>(&ctx)
}

/// Discovery, tail-called by a family's program for an fd the table does not know: walks the
/// kernel's structs (see [`discover`]) and, when it tracked an inet socket, hands the exit back
/// to the family's program, which now finds it. Never attached.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_discover(ctx: BtfTracePointContext) -> i32 {
    discover_program::<{ hook::SYS_EXIT }>(&ctx)
}

/// The discovery program of hook `HOOK` (see [`sys_exit_discover`]).
#[inline(always)]
pub fn discover_program<const HOOK: u32>(ctx: &BtfTracePointContext) -> i32 {
    let regs = regs_of::<HOOK>(ctx);
    let number = regs.number();
    let (Some(syscall), Some(pid_tgid)) = (exit_traced(number), traced_pid_tgid()) else {
        return 0;
    };
    let fd = regs.arg0() as i32;
    let mut found = discover::<HOOK>(pid_tgid, fd, syscall as u32, sock_of::<HOOK>(ctx));
    if HOOK != hook::SYS_EXIT && found == FOUND_AT_SOCKET {
        found = track_opened(pid_tgid, fd, syscall as u32);
    }
    if found != 0 {
        note_discovery(pid_tgid, regs, number, fd);
        if jump_to_family::<HOOK>(ctx, number) {
            count(Counter::TailCallFailed);
        }
    }
    // The exit ends here: its entry stamp goes with it.
    if HOOK == hook::SYS_EXIT {
        let _ = take_entry_stamp(regs, number);
    }
    0
}

/// Whether the exit programs stop after `stage` (`agent_common::exit_stage`): only in the
/// benchmark's breakdown. A load-time constant, so capture's verified program has no such exit.
#[inline(always)]
fn stops_after(stage: u32) -> bool {
    config!(stop_after) == stage
}

/// The exit of a socket syscall of family `FAMILY` (`agent_common::exit_family`), seen from
/// hook `HOOK` ([`hook`]): at a syscall's exit, or at the socket layer after one send or
/// receive inside it.
#[inline(always)]
pub fn exit_program<const FAMILY: u32, const HOOK: u32>(ctx: &BtfTracePointContext) -> i32 {
    let regs = regs_of::<HOOK>(ctx);
    let number = regs.number();
    let Some(syscall) = exit_traced(number) else {
        return 0;
    };
    let open = matches!(
        syscall,
        Syscall::Accept | Syscall::Accept4 | Syscall::Connect
    );
    if open != (FAMILY == exit_family::OPEN) {
        return 0;
    }
    if !regs.is_native() {
        return 0;
    }
    if HOOK != hook::SYS_EXIT {
        // The hook fires once per message of a `*mmsg` call, and the registers cannot say
        // which message it was: a `sendmmsg` message is found by its length
        // ([`crate::socket_layer::mmsg_index`]), a `recvmmsg` one cannot be (its length is its
        // buffer's at most), and is skipped. A send hook inside a read (or the reverse) is the
        // kernel's own.
        let wanted = if HOOK == hook::SOCK_SEND {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        if syscall == Syscall::Recvmmsg || syscall.direction() != Some(wanted) {
            return 0;
        }
    }
    let entered = if HOOK == hook::SYS_EXIT {
        take_entry_stamp(regs, number)
    } else {
        None
    };
    let result = result_of::<HOOK>(ctx);
    let Some(pid_tgid) = traced_pid_tgid() else {
        return 0;
    };
    if open {
        open_exit(regs, pid_tgid, syscall, result);
    } else {
        let _ = data_exit::<FAMILY, HOOK>(ctx, regs, pid_tgid, syscall, result, entered);
    }
    0
}

/// The hooks the family programs run from, each with its own copies and program array.
pub mod hook {
    /// `raw_syscalls/sys_exit`, whose first argument is the syscall's registers.
    pub const SYS_EXIT: u32 = 0;
    /// `sock/sock_send_length` (`(struct sock *sk, int ret, int flags)`), after a send.
    pub const SOCK_SEND: u32 = 1;
    /// `sock/sock_recv_length`, after a receive.
    pub const SOCK_RECV: u32 = 2;
}

/// The syscall's registers: the raw tracepoint's argument, or at the socket layer the task's
/// own ([`Regs::current`]).
#[inline(always)]
fn regs_of<const HOOK: u32>(ctx: &BtfTracePointContext) -> Regs {
    if HOOK == hook::SYS_EXIT {
        Regs::of(ctx)
    } else {
        Regs::current()
    }
}

/// What the syscall (or, at the socket layer, the one send or receive) returned: `sys_exit`'s
/// `long ret`, the socket tracepoints' `int ret`.
#[inline(always)]
pub fn result_of<const HOOK: u32>(ctx: &BtfTracePointContext) -> i64 {
    if HOOK == hook::SYS_EXIT {
        ctx.arg(1)
    } else {
        let ret: u64 = ctx.arg(1);
        i64::from(ret as u32 as i32)
    }
}

/// The socket a socket-layer tracepoint moved bytes on (its `struct sock *`); 0 at `sys_exit`.
#[inline(always)]
pub fn sock_of<const HOOK: u32>(ctx: &BtfTracePointContext) -> u64 {
    if HOOK == hook::SYS_EXIT {
        0
    } else {
        ctx.arg(0)
    }
}
