//! From an fd of the current process to its kernel socket and that socket's endpoints.
//!
//! The walk is `current->files->fdt->fd[fd]`, then the file's inode mode (is it a socket?), then
//! `file->private_data` (a `struct socket`), its `type` and `sk`, and the `struct sock_common`
//! fields of the endpoints; for a TCP socket, its `struct tcp_sock` for the sequence numbers
//! ([`stream_seq`]). Every offset comes from `KERNEL_OFFSETS`, resolved from this kernel's
//! BTF by user space: nothing here depends on the layout of the kernel it was compiled against.

use agent_common::{
    AF_INET, AF_INET6, ConnInfo, IPPROTO_TCP, S_IFMT, S_IFSOCK, SOCK_STREAM, SockTuple,
};
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

use crate::maps::{config, offset};

/// What the walk found for an fd.
pub enum FdKind {
    /// Not a socket (regular file, pipe, …), or not an fd at all.
    Other,
    /// A socket that is not IPv4/IPv6, or not in the network namespace traced: remembered as
    /// ignored, never reported.
    Untraced,
    /// An IPv4/IPv6 socket: its endpoints and, when it is TCP, its `struct sock` are in the
    /// entry `classify_fd` was given.
    Inet,
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn read_at<T>(base: u64, offset: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel copes with any address: a bad one returns an error, never
    // faults. The pointer is never dereferenced directly.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.map_err(i64::from)
}

/// Classifies `fd` of the current task; for a socket, fills `conn`'s `sk`, and for an inet
/// socket its `tuple` and `tcp_sk` (in place: the exit program's stack has no room for a copy). Errors are failed
/// kernel reads.
#[inline(always)]
pub fn classify_fd(fd: i32, conn: &mut ConnInfo) -> Result<FdKind, i64> {
    if offset!(ready) == 0 || fd < 0 {
        return Ok(FdKind::Other);
    }
    // SAFETY: the helper has no preconditions; the pointer it returns is only used as an address
    // for bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read_at(task, offset!(task_files))?;
    let fdt: u64 = read_at(files, offset!(files_fdt))?;
    let max_fds: u32 = read_at(fdt, offset!(fdtable_max_fds))?;
    if fd as u32 >= max_fds {
        return Ok(FdKind::Other);
    }
    let fd_array: u64 = read_at(fdt, offset!(fdtable_fd))?;
    let file: u64 = read_at(fd_array + (fd as u64) * 8, 0)?;
    if file == 0 {
        return Ok(FdKind::Other);
    }
    let inode: u64 = read_at(file, offset!(file_f_inode))?;
    let mode: u16 = read_at(inode, offset!(inode_i_mode))?;
    if mode & S_IFMT != S_IFSOCK {
        return Ok(FdKind::Other);
    }
    let socket: u64 = read_at(file, offset!(file_private_data))?;
    let sock_type: i16 = read_at(socket, offset!(socket_type))?;
    let sk: u64 = read_at(socket, offset!(socket_sk))?;
    if sk == 0 {
        return Ok(FdKind::Untraced);
    }
    // Before the family test: an ignored socket's entry keeps it too (see `ConnInfo::sk`).
    conn.sk = sk;
    let family: u16 = read_at(sk, offset!(skc_family))?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(FdKind::Untraced);
    }
    if !in_traced_netns(sk) {
        return Ok(FdKind::Untraced);
    }
    read_tuple(sk, family, &mut conn.tuple)?;
    conn.tuple.sock_type = sock_type as u16;
    let protocol: u16 = read_at(sk, offset!(sk_protocol))?;
    conn.tcp_sk = if conn.tuple.sock_type == SOCK_STREAM && protocol == IPPROTO_TCP {
        sk
    } else {
        0
    };
    Ok(FdKind::Inet)
}

/// The TCP sequence number of the first of `moved` bytes a syscall just moved through the TCP
/// socket `tcp_sk`: at the syscall's exit `write_seq` (egress) or `copied_seq` (ingress) is just
/// past them (`tcp_sendmsg_locked` and `tcp_recvmsg_locked` advance each by the bytes queued or
/// copied). Another thread moving bytes through the same socket at the same moment makes it
/// wrong; the agent then pairs nothing through it, never wrongly (it compares the requests).
#[inline(always)]
pub fn stream_seq(tcp_sk: u64, egress: bool, moved: u64) -> Result<u32, i64> {
    let field = if egress {
        offset!(tcp_write_seq)
    } else {
        offset!(tcp_copied_seq)
    };
    let after: u32 = read_at(tcp_sk, field)?;
    Ok(after.wrapping_sub(moved as u32))
}

/// Whether socket `sk` is in the network namespace traced (`--netns-only`; any without it). A
/// failed read is taken as another namespace.
#[inline(always)]
pub fn in_traced_netns(sk: u64) -> bool {
    let netns = config!(netns);
    if netns == 0 {
        return true;
    }
    let Ok(net) = read_at::<u64>(sk, offset!(skc_net)) else {
        return false;
    };
    read_at::<u32>(net, offset!(net_ns_inum)) == Ok(netns)
}

/// The endpoints of the TCP socket `sk` (IPv4 or IPv6), as `classify_fd` fills them; `None`
/// for another family or a failed read.
#[inline(always)]
pub fn tcp_tuple(sk: u64) -> Option<SockTuple> {
    let mut tuple = SockTuple::default();
    tcp_tuple_into(sk, &mut tuple).then_some(tuple)
}

/// [`tcp_tuple`] written in place (no copy on the caller's stack); whether it was read.
#[inline(always)]
pub fn tcp_tuple_into(sk: u64, tuple: &mut SockTuple) -> bool {
    let Ok(family) = read_at::<u16>(sk, offset!(skc_family)) else {
        return false;
    };
    if family != AF_INET && family != AF_INET6 || read_tuple(sk, family, tuple).is_err() {
        return false;
    }
    tuple.sock_type = SOCK_STREAM;
    true
}

/// Reads the endpoints of an inet socket.
#[inline(always)]
fn read_tuple(sk: u64, family: u16, tuple: &mut SockTuple) -> Result<(), i64> {
    *tuple = SockTuple {
        family,
        ..SockTuple::default()
    };
    if family == AF_INET {
        let local: [u8; 4] = read_at(sk, offset!(skc_rcv_saddr))?;
        let remote: [u8; 4] = read_at(sk, offset!(skc_daddr))?;
        tuple.local_addr[..4].copy_from_slice(&local);
        tuple.remote_addr[..4].copy_from_slice(&remote);
    } else {
        tuple.local_addr = read_at(sk, offset!(skc_v6_rcv_saddr))?;
        tuple.remote_addr = read_at(sk, offset!(skc_v6_daddr))?;
    }
    tuple.local_port = read_at(sk, offset!(skc_num))?;
    let remote_port_be: u16 = read_at(sk, offset!(skc_dport))?;
    tuple.remote_port = u16::from_be(remote_port_be);
    Ok(())
}
