//! Maps and load-time globals shared by every program, and small helpers around them.

use agent_common::{
    COMM_LEN, CaptureConfig, ConnInfo, ConnKey, Counter, DEFAULT_MAX_CONNS, DEFAULT_RING_BYTES,
    DataEvent, KernelOffsets, MAX_CAPTURE_BYTES, SslCall, SslCallBefore, SslKey, SslReadBefore,
    SslSocket, SslTieEvidence,
};
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};

/// The exit programs by family (`agent_common::EXIT_FAMILIES`), filled by user space before the
/// dispatcher is attached.
#[map]
pub static EXIT_JUMPS: ProgramArray =
    ProgramArray::with_max_entries(agent_common::EXIT_FAMILIES.len() as u32, 0);

/// Connection and data records for user space. Its size is set at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Tracked sockets. An LRU, so sockets whose close was never seen (the process died) age out.
#[map]
pub static CONNS: LruHashMap<ConnKey, ConnInfo> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNS, 0);

/// When the last egress syscall on this CPU entered, and whose it was. The exit program uses it
/// only if the same thread's same syscall is the one exiting: a thread that slept inside the
/// syscall may have been followed by another, or moved to another CPU; then the exit time
/// stands in (counted as `entry_time_missed`). A per-CPU slot instead of a table keyed by
/// thread: a hash-map insert and delete per syscall cost ~300 ns here (BENCHMARKS.md).
///
/// The thread is named by the address of its syscall registers (`struct pt_regs` sits at the
/// top of each task's own kernel stack), which the tracepoint passes anyway, instead of by
/// `bpf_get_current_pid_tgid()`: a helper call saved on every egress syscall. Every egress exit
/// takes the stamp whether or not it matches a tracked socket, so a stamp outlives its syscall
/// only when the thread moved to another CPU inside it; a new task that got the departed
/// thread's kernel stack could then match it only by exiting the same syscall here without
/// entering it here. The cost is one wrong time.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EntryStamp {
    pub regs: u64,
    pub number: u64,
    pub ts_ns: u64,
}

#[map]
pub static ENTRY_STAMPS: PerCpuArray<EntryStamp> = PerCpuArray::with_max_entries(1, 0);

/// The exit the discovery program last handed back to its family's program on this CPU: the
/// thread, its registers, the syscall number and the fd. A family program that misses the table
/// again for the same exit (the entry was evicted or closed in between) gives up instead of
/// discovering once more: one discovery per exit, one open record per socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DiscoveryNote {
    pub pid_tgid: u64,
    pub regs: u64,
    pub number: u64,
    pub fd: i64,
}

#[map]
pub static DISCOVERY_NOTES: PerCpuArray<DiscoveryNote> = PerCpuArray::with_max_entries(1, 0);

/// Self-metrics; user space sums the per-CPU values.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Per-CPU sequence for connection ids (one slot).
#[map]
pub static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Where a data record is assembled before it is copied to the ring: too big for the 512-byte
/// stack. Twice the capture limit, so that an iovec copy at any offset below the limit, of any
/// length up to the limit, stays inside the buffer in a way the verifier can prove.
#[repr(C)]
pub struct DataScratch {
    pub event: DataEvent,
    pub payload: [u8; 2 * MAX_CAPTURE_BYTES],
    /// Record bytes this CPU has sent since it last looked at the ring's backlog.
    pub unchecked_bytes: u64,
    /// Where a newly tracked socket's table entry is assembled (the stack has no room left in
    /// the exit program).
    pub new_conn: ConnInfo,
}

#[map]
pub static SCRATCH: PerCpuArray<DataScratch> = PerCpuArray::with_max_entries(1, 0);

/// OpenSSL reads and writes in progress, by thread (`pid_tgid`): an LRU, since a thread can die
/// inside a call.
#[map]
pub static SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16_384, 0);

/// The connection each `SSL *` of a process uses, learnt from a socket syscall inside one of
/// its calls; dropped at `SSL_free`.
#[map]
pub static SSL_SOCKETS: LruHashMap<SslKey, SslSocket> = LruHashMap::with_max_entries(65_536, 0);

/// The TLS socket each thread read last outside an OpenSSL call, for its next OpenSSL call
/// ([`SslReadBefore`]); taken by that call. An LRU: a thread may read and never call OpenSSL.
#[map]
pub static SSL_READ_BEFORE: LruHashMap<u64, SslReadBefore> =
    LruHashMap::with_max_entries(16_384, 0);

/// The untied `SSL *` each thread returned from last, for its next write to a TLS socket
/// ([`SslCallBefore`]); taken by that write. An LRU, as above.
#[map]
pub static SSL_CALL_BEFORE: LruHashMap<u64, SslCallBefore> =
    LruHashMap::with_max_entries(16_384, 0);

/// The evidence gathered for each untied `SSL *` ([`SslTieEvidence`]); dropped once tied, or at
/// `SSL_free`. An LRU: an `SSL *` may never be tied (nor freed while the agent watches).
#[map]
pub static SSL_TIE_EVIDENCE: LruHashMap<SslKey, SslTieEvidence> =
    LruHashMap::with_max_entries(16_384, 0);

/// Go `crypto/tls` reads and writes in progress, by goroutine ([`SslKey`] with the `g`): a
/// goroutine waiting for its socket may go on on another thread. An LRU: a goroutine can end
/// inside a call (its program exits).
#[map]
pub static GO_TLS_CALLS: LruHashMap<SslKey, SslCall> = LruHashMap::with_max_entries(16_384, 0);

/// Go `crypto/tls` handshakes in progress, by goroutine ([`SslKey`] with the `g`): the
/// `*tls.Conn` whose socket the syscalls inside them use.
#[map]
pub static GO_TLS_HANDSHAKES: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(16_384, 0);

/// Field offsets resolved by user space from the running kernel's BTF.
#[unsafe(no_mangle)]
pub static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    ready: 0,
    task_files: 0,
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_f_inode: 0,
    file_private_data: 0,
    inode_i_mode: 0,
    socket_type: 0,
    socket_sk: 0,
    skc_family: 0,
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_state: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    sk_protocol: 0,
    tcp_write_seq: 0,
    tcp_copied_seq: 0,
    tcp_snd_nxt: 0,
    skc_net: 0,
    net_ns_inum: 0,
};

/// The agent's tgid, the capture size, whether opaque connections are skipped, and the backlog
/// that wakes the agent.
#[unsafe(no_mangle)]
pub static CAPTURE_CONFIG: CaptureConfig = CaptureConfig {
    agent_tgid: 0,
    capture_bytes: agent_common::DEFAULT_CAPTURE_BYTES,
    skip_opaque: 1,
    wakeup_backlog_bytes: agent_common::wakeup_backlog_bytes(agent_common::DEFAULT_RING_BYTES),
    netns: 0,
    stop_after: agent_common::exit_stage::FULL,
    inband: 0,
    inband_starts_traces: 1,
    netns_cookie: 0,
    inband_return_addr: [0; 16],
    wakeup_check_bytes: agent_common::WAKEUP_CHECK_MAX_BYTES,
    reserved: 0,
};

/// One field of the offsets, read so that the compiler cannot fold the load-time value away.
/// Field by field: a copy of the whole struct would take ~90 bytes of a program's 512-byte stack.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: a plain read of a static the loader patched before the program ran.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::KERNEL_OFFSETS.$field) }
    };
}
pub(crate) use offset;

/// One field of the capture configuration: as [`offset`].
macro_rules! config {
    ($field:ident) => {
        // SAFETY: as in `offset!`.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::CAPTURE_CONFIG.$field) }
    };
}
pub(crate) use config;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful lookup in this CPU's slot; programs on
        // syscall tracepoints do not nest on one CPU, so nothing else writes it meanwhile.
        unsafe { *slot += 1 };
    }
}

/// A connection id unique on this host for the agent's life: a per-CPU sequence number with the
/// CPU number in the low 12 bits. Never 0.
#[inline(always)]
pub fn next_conn_id() -> u64 {
    // SAFETY: the helper has no preconditions.
    let cpu = u64::from(unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() }) & 0xfff;
    let seq = match CONN_SEQ.get_ptr_mut(0) {
        Some(slot) => {
            // SAFETY: as in `count`.
            unsafe {
                *slot += 1;
                *slot
            }
        }
        None => 0,
    };
    (seq << 12) | cpu | (1 << 63)
}

/// The current task's `comm`, zeroed on failure.
#[inline(always)]
pub fn current_comm() -> [u8; COMM_LEN] {
    aya_ebpf::helpers::bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}
