//! Keys, values and names of the maps the programs and the agent share.

use crate::SockTuple;

/// Ring buffer of [`crate::EventHeader`]-prefixed records.
pub const MAP_EVENTS: &str = "EVENTS";
/// Tracked sockets: [`ConnKey`] → [`ConnInfo`].
pub const MAP_CONNS: &str = "CONNS";
/// Per-thread arguments saved at syscall entry: `pid_tgid` → [`PendingCall`] (a plain hash map).
pub const MAP_PENDING: &str = "PENDING";
/// Per-CPU counters indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Default ring size; a power of two times the page size, as the kernel requires.
pub const DEFAULT_RING_BYTES: u32 = 8 * 1024 * 1024;
/// Default bound of the in-kernel connection table (an LRU: the oldest entries go first).
pub const DEFAULT_MAX_CONNS: u32 = 65_536;
/// Bound of the in-flight syscall table: at most one entry per thread inside a traced syscall.
pub const MAX_PENDING: u32 = 16_384;

/// A socket as the process sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: i32,
}
const _: () = assert!(core::mem::size_of::<ConnKey>() == 8);

/// The state the programs keep per tracked socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnInfo {
    pub conn_id: u64,
    pub tuple: SockTuple,
    /// A [`crate::Role`].
    pub role: u32,
    /// 1 when the socket is not `AF_INET`/`AF_INET6` (a unix socket, say): remembered so that
    /// its traffic is skipped without walking the kernel's structs again, but never reported.
    pub ignored: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}
const _: () = assert!(core::mem::size_of::<ConnInfo>() == 8 + 40 + 8 + 16);

/// A syscall's arguments between its enter and exit tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingCall {
    /// A [`crate::Syscall`].
    pub syscall: u32,
    pub fd: i32,
    /// User pointer: the buffer, the iovec array, or the `struct user_msghdr`.
    pub buf: u64,
    /// Buffer length or iovec count.
    pub len: u64,
    /// Connection id and role looked up at entry; 0 for accept/connect (known only at exit).
    pub conn_id: u64,
    pub role: u32,
    pub reserved: u32,
    /// `bpf_ktime_get_ns()` at syscall entry.
    pub enter_ns: u64,
}
const _: () = assert!(core::mem::size_of::<PendingCall>() == 48);

/// Indices of the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Records written to the ring.
    EventsSent = 0,
    /// Records lost because the ring was full.
    RingFull = 1,
    /// Data events whose payload was cut at the capture limit (or at `MAX_IOVECS`).
    PayloadTruncated = 2,
    /// Payload reads from user memory that faulted (the event is sent without payload).
    PayloadReadFailed = 3,
    /// Syscall entries not tracked because the in-flight table was full.
    PendingFull = 4,
    /// Sockets not tracked because inserting into the connection table failed.
    ConnTableFull = 5,
    /// Kernel struct reads that failed while resolving an fd to its socket.
    SocketWalkFailed = 6,
}

impl Counter {
    pub const COUNT: u32 = 7;
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::EventsSent,
        Self::RingFull,
        Self::PayloadTruncated,
        Self::PayloadReadFailed,
        Self::PendingFull,
        Self::ConnTableFull,
        Self::SocketWalkFailed,
    ];

    /// The name used in logs and self-metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::EventsSent => "events_sent",
            Self::RingFull => "ring_full_drops",
            Self::PayloadTruncated => "payload_truncated",
            Self::PayloadReadFailed => "payload_read_failed",
            Self::PendingFull => "pending_table_full",
            Self::ConnTableFull => "conn_table_full",
            Self::SocketWalkFailed => "socket_walk_failed",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers only, padding spelled out: every bit pattern is valid.
    unsafe impl aya::Pod for super::ConnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingCall {}
}
