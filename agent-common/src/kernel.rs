//! Kernel struct field offsets, resolved by user space from the running kernel's BTF.
//!
//! Rust eBPF emits no CO-RE relocations, so a program compiled against one kernel's struct
//! layout reads garbage on another. Instead, the agent reads `/sys/kernel/btf/vmlinux` at
//! start-up, resolves each field below, and hands the result to the programs as the global
//! `KERNEL_OFFSETS`. The programs walk `current->files->fdt->fd[fd]->private_data->sk` with
//! `bpf_probe_read_kernel` at base + offset and stay inert while `ready` is 0.

/// Byte offsets of the fields the programs read, and the size of each read where it varies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// 1 once user space filled the offsets in; the programs do nothing while it is 0.
    pub ready: u32,
    /// `struct task_struct`: `files` (`struct files_struct *`).
    pub task_files: u32,
    /// `struct files_struct`: `fdt` (`struct fdtable *`).
    pub files_fdt: u32,
    /// `struct fdtable`: `max_fds` (`unsigned int`).
    pub fdtable_max_fds: u32,
    /// `struct fdtable`: `fd` (`struct file **`).
    pub fdtable_fd: u32,
    /// `struct file`: `f_inode` (`struct inode *`).
    pub file_f_inode: u32,
    /// `struct file`: `private_data` (`struct socket *` for sockets).
    pub file_private_data: u32,
    /// `struct inode`: `i_mode` (`umode_t`, u16).
    pub inode_i_mode: u32,
    /// `struct socket`: `type` (`short`).
    pub socket_type: u32,
    /// `struct socket`: `sk` (`struct sock *`).
    pub socket_sk: u32,
    /// `struct sock_common` (at the start of `struct sock`): `skc_family` (u16).
    pub skc_family: u32,
    /// `skc_daddr` (`__be32`).
    pub skc_daddr: u32,
    /// `skc_rcv_saddr` (`__be32`).
    pub skc_rcv_saddr: u32,
    /// `skc_dport` (`__be16`).
    pub skc_dport: u32,
    /// `skc_num` (u16, host order).
    pub skc_num: u32,
    /// `skc_state` (u8): `TCP_ESTABLISHED`, `TCP_LISTEN`, ...
    pub skc_state: u32,
    /// `skc_v6_daddr` (`struct in6_addr`).
    pub skc_v6_daddr: u32,
    /// `skc_v6_rcv_saddr` (`struct in6_addr`).
    pub skc_v6_rcv_saddr: u32,
    /// `struct sock`: `sk_protocol` (u16): `IPPROTO_TCP` for a TCP socket.
    pub sk_protocol: u32,
    /// `struct tcp_sock`: `write_seq` (u32), the sequence number after the last byte queued.
    pub tcp_write_seq: u32,
    /// `struct tcp_sock`: `copied_seq` (u32), the sequence number after the last byte read.
    pub tcp_copied_seq: u32,
    /// `struct tcp_sock`: `snd_nxt` (u32), the sequence number of the next byte to send: equal
    /// to `write_seq` when nothing queued waits to leave.
    pub tcp_snd_nxt: u32,
    /// `struct sock`: `__sk_common.skc_net.net` (`struct net *`), the socket's network namespace.
    pub skc_net: u32,
    /// `struct net`: `ns.inum` (u32), the namespace's inode number (as `/proc/PID/ns/net` shows).
    pub net_ns_inum: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 24 * 4);

/// Load-time settings the agent writes into the programs' read-only globals.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// The agent's own tgid: its sockets are never traced.
    pub agent_tgid: u32,
    /// Payload bytes captured per syscall, at most [`crate::MAX_CAPTURE_BYTES`].
    pub capture_bytes: u32,
    /// 1: connections found not to speak a protocol sockspan parses ([`crate::Protocol::Opaque`])
    /// send no data records, only their byte totals at close. 0: every connection's bytes are
    /// sent (`sockspan events`, the raw view).
    pub skip_opaque: u32,
    /// Unread bytes in the event ring above which the programs wake the agent (see
    /// [`wakeup_backlog_bytes`]).
    pub wakeup_backlog_bytes: u32,
    /// The inode number of the only network namespace whose sockets are traced (`--netns-only`,
    /// one agent per namespace as per host); 0 traces every namespace.
    pub netns: u32,
    /// Where the exit programs stop ([`exit_stage`]): the benchmark's breakdown of where a
    /// captured syscall's time goes; [`exit_stage::FULL`] (0) for capture. A read-only global,
    /// so the verifier prunes the branches of the other stages: capture carries none of them.
    pub stop_after: u32,
    /// 1: the in-band mode (`--in-band`): requests' first segments carry their CLIENT span's
    /// context in a TCP header option, and SERVER requests adopt it. A read-only global: off,
    /// the verifier prunes its branches.
    pub inband: u32,
    /// 1: in the in-band mode, a SERVER request that carried no context (from another host)
    /// starts a trace its thread's calls carry; 0 while the peer messages run too.
    pub inband_starts_traces: u32,
    /// With `netns` and `inband`: the traced namespace's cookie (`SO_NETNS_COOKIE`), which the
    /// `sock_ops` program compares (`bpf_get_netns_cookie`): it reads no socket struct.
    pub netns_cookie: u64,
    /// With `inband` and the peer messages: this agent's address (IPv6, IPv4 mapped) where the
    /// agents of other hosts ask it for traces: a CLIENT request the programs cannot give a trace
    /// carries it and its span id ([`crate::INBAND_OPTION_EXID_ASK`]). All zero: such requests
    /// carry nothing.
    pub inband_return_addr: [u8; 16],
    /// Record bytes a CPU sends between two looks at the ring's backlog (see
    /// [`wakeup_check_bytes`]).
    pub wakeup_check_bytes: u32,
    /// Unused; keeps the struct free of implicit padding.
    pub reserved: u32,
}

/// How far the exit programs go ([`CaptureConfig::stop_after`]). Each breakdown stage stops
/// after one more step, so the cost of a step is the difference between two stages' runs.
pub mod exit_stage {
    /// All the way: capture.
    pub const FULL: u32 = 0;
    /// Up to the connection lookup (and the opaque check).
    pub const LOOKUP: u32 = 1;
    /// Then the timestamps (the entry stamp, or the clock).
    pub const CLOCK: u32 = 2;
    /// Then the payload copy and the protocol detection, without the ring output.
    pub const COPY: u32 = 3;
}
const _: () = assert!(core::mem::size_of::<CaptureConfig>() == 64);

/// The backlog at which the programs wake the agent, for a ring of `ring_bytes`: a quarter of it.
/// The agent drains the ring every 10 ms without being woken; a wake-up only matters when a burst
/// would fill the ring before that, and each one costs the producing CPU an interrupt (a
/// self-IPI, which traps to the hypervisor in a VM: ~16 ns per captured syscall on average in
/// the ping-pong with a 256 KiB threshold, `perf`). Three quarters of the ring stay free for the
/// agent to wake up.
#[must_use]
pub const fn wakeup_backlog_bytes(ring_bytes: u32) -> u32 {
    ring_bytes / 4
}

/// Record bytes a CPU sends between two looks at the backlog, for a ring of `ring_bytes` filled
/// by `cpus` CPUs: 32 KiB (a look touches the cache line the agent writes as it consumes, ~30 ns
/// here), less for a small ring. Between two looks each CPU may add this much unseen, so the
/// backlog at a wake-up is at most the threshold ([`wakeup_backlog_bytes`], a quarter) plus a
/// quarter of the ring; with 32 KiB per CPU a 64 KiB ring on two CPUs would fill before any
/// CPU looked, and the agent would read it only on its 10 ms timer.
#[must_use]
pub const fn wakeup_check_bytes(ring_bytes: u32, cpus: u32) -> u32 {
    let per_cpu = ring_bytes / 4 / if cpus == 0 { 1 } else { cpus };
    if per_cpu < WAKEUP_CHECK_MAX_BYTES {
        per_cpu
    } else {
        WAKEUP_CHECK_MAX_BYTES
    }
}

/// The most record bytes a CPU sends between two looks at the backlog.
pub const WAKEUP_CHECK_MAX_BYTES: u32 = 32 * 1024;

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            agent_tgid: 0,
            capture_bytes: crate::DEFAULT_CAPTURE_BYTES,
            skip_opaque: 1,
            wakeup_backlog_bytes: wakeup_backlog_bytes(crate::DEFAULT_RING_BYTES),
            netns: 0,
            stop_after: exit_stage::FULL,
            inband: 0,
            inband_starts_traces: 1,
            netns_cookie: 0,
            inband_return_addr: [0; 16],
            wakeup_check_bytes: WAKEUP_CHECK_MAX_BYTES,
            reserved: 0,
        }
    }
}

/// `S_IFMT` and `S_IFSOCK` from `<sys/stat.h>`: how the programs tell a socket's inode.
pub const S_IFMT: u16 = 0o170_000;
pub const S_IFSOCK: u16 = 0o140_000;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], only u32 fields, padding spelled out: every bit pattern is valid.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CaptureConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_up_comes_before_the_ring_is_half_full() {
        for ring in [64 * 1024, 256 * 1024, crate::DEFAULT_RING_BYTES] {
            for cpus in [1, 2, 8, 64, 256] {
                let worst = wakeup_backlog_bytes(ring) + cpus * wakeup_check_bytes(ring, cpus);
                assert!(worst <= ring / 2, "ring {ring}, {cpus} CPUs: {worst}");
            }
        }
        // The default ring on up to 64 CPUs looks as often as before.
        assert_eq!(
            wakeup_check_bytes(crate::DEFAULT_RING_BYTES, 64),
            WAKEUP_CHECK_MAX_BYTES
        );
        assert_eq!(wakeup_check_bytes(64 * 1024, 2), 8 * 1024);
        assert_eq!(wakeup_check_bytes(64 * 1024, 0), 16 * 1024);
    }
}
