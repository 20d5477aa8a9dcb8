//! The in-band mode's marking of the connections opened before the agent started: the
//! `sock_ops` program ([`crate::inband`]) marks a connection for the header-option callbacks
//! when it is established, so one established before the program was attached carries and
//! reads no option for the rest of its life (a keep-alive pool, a gRPC channel). Linux 6.12
//! added `TCP_BPF_SOCK_OPS_CB_FLAGS` to `bpf_setsockopt`, which a TCP iterator program may call
//! (with the socket locked by the iterator): [`inband_mark_open`] walks the TCP sockets of the
//! network namespace it is read in, once, right after the `sock_ops` program is attached, and
//! marks each established one as that program would have.
//!
//! Which end a socket is: its local port is a listening socket's in its namespace (the
//! iterator walks the listening sockets before the established ones, and remembers their
//! ports in [`INBAND_LISTENING`]): the accepting end, marked to read options; else the
//! connecting end, marked to write them.

use agent_common::{INBAND_MARK_CLIENT, INBAND_MARK_SERVER, InbandMark};
use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG},
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_getsockopt, bpf_seq_write, bpf_setsockopt},
    },
    macros::map,
    maps::{Array, LruHashMap},
};

use crate::maps::offset;

/// `SOL_TCP`.
const SOL_TCP: i32 = 6;
/// `TCP_BPF_SOCK_OPS_CB_FLAGS` (uapi `bpf.h`, Linux 6.12+): the socket's `sock_ops` callback
/// flags, for `bpf_getsockopt`/`bpf_setsockopt`.
const TCP_BPF_SOCK_OPS_CB_FLAGS: i32 = 1008;
/// `TCP_ESTABLISHED`, `TCP_LISTEN` (`skc_state`).
const TCP_ESTABLISHED: u8 = 1;
const TCP_LISTEN: u8 = 10;

/// `struct bpf_iter_meta`: the iterator's output (`seq`) and position.
#[repr(C)]
pub struct IterMeta {
    seq: *mut core::ffi::c_void,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__tcp`, the context of an `iter/tcp` program: the meta, the socket (NULL at
/// the end of the walk) and its owner's uid. The layout is the program type's ABI.
#[repr(C)]
pub struct IterTcp {
    meta: *mut IterMeta,
    sk_common: *mut core::ffi::c_void,
    uid: u64,
}

/// The local ports of the listening sockets met in this walk, by (namespace inode << 16 |
/// port). An LRU: ports of namespaces walked earlier age out.
#[map]
static INBAND_LISTENING: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16_384, 0);

/// What the walk does, set by the agent before it reads the iterator: 0 marks, 1 only reads
/// each socket's flags (`sockspan check`: whether the kernel takes the option, changing
/// nothing).
#[map]
static INBAND_MARK_READ_ONLY: Array<u32> = Array::with_max_entries(1, 0);

/// Reads a `T` of kernel memory at `address`; `None` when the read fails.
#[inline(always)]
fn read<T>(address: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copes with any address; the pointer is never dereferenced.
    unsafe { bpf_probe_read_kernel(address as *const T) }.ok()
}

/// `iter/tcp`: one call per TCP socket of the namespace the iterator is read in (`ctx`: a
/// [`IterTcp`]), then one with a NULL socket. Writes an [`InbandMark`] per established socket
/// to the iterator's output. Returns 0 (go on).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn inband_mark_open(ctx: *mut IterTcp) -> i32 {
    // SAFETY: `ctx` is the iterator's context; the verifier types both fields (`meta` trusted,
    // `sk_common` checked for NULL below).
    let (meta, sk) = unsafe { ((*ctx).meta, (*ctx).sk_common) };
    if sk.is_null() || meta.is_null() {
        return 0;
    }
    // The socket's address as a number, for reads at offsets the agent found in BTF (a typed
    // pointer cannot take an offset that is not a constant).
    let Some(base) = read::<u64>(
        // SAFETY: the address of a field of the context; only passed to the read helper.
        unsafe { &raw const (*ctx).sk_common } as u64,
    ) else {
        return 0;
    };
    let (Some(state), Some(port), Some(net)) = (
        read::<u8>(base + u64::from(offset!(skc_state))),
        read::<u16>(base + u64::from(offset!(skc_num))),
        read::<u64>(base + u64::from(offset!(skc_net))),
    ) else {
        return 0;
    };
    let inum = read::<u32>(net + u64::from(offset!(net_ns_inum))).unwrap_or(0);
    let key = (u64::from(inum) << 16) | u64::from(port);
    if state == TCP_LISTEN {
        let _ = INBAND_LISTENING.insert(&key, &1, 0);
        return 0;
    }
    if state != TCP_ESTABLISHED {
        return 0;
    }
    // SAFETY: only checked for presence.
    let server = unsafe { INBAND_LISTENING.get(&key) }.is_some();
    let mut flags: i32 = 0;
    // SAFETY: `sk` is the iterator's socket, locked by the iterator while this runs; `flags`
    // is a local of the length given.
    let mut result = unsafe {
        bpf_getsockopt(
            sk,
            SOL_TCP,
            TCP_BPF_SOCK_OPS_CB_FLAGS,
            (&raw mut flags).cast(),
            4,
        )
    };
    let read_only = INBAND_MARK_READ_ONLY.get(0).copied().unwrap_or(0) != 0;
    if result == 0 && !read_only {
        flags |= if server {
            BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG
        } else {
            BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG
        } as i32;
        // SAFETY: as above.
        result = unsafe {
            bpf_setsockopt(
                sk,
                SOL_TCP,
                TCP_BPF_SOCK_OPS_CB_FLAGS,
                (&raw mut flags).cast(),
                4,
            )
        };
    }
    let mark = InbandMark {
        result: result as i32,
        end: if server {
            INBAND_MARK_SERVER
        } else {
            INBAND_MARK_CLIENT
        },
    };
    // SAFETY: `seq` is the iterator's output (a field of the trusted meta); the record is a
    // local of the length given.
    unsafe {
        bpf_seq_write(
            (*meta).seq.cast(),
            (&raw const mark).cast(),
            size_of::<InbandMark>() as u32,
        );
    }
    0
}
