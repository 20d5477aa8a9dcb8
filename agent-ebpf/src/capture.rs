//! Copies the first bytes a syscall moved from user memory into the per-CPU scratch record.
//!
//! Lengths are clamped with comparisons against constants right before each helper call, so the
//! verifier can prove every copy stays inside the scratch buffer.

use agent_common::{MAX_CAPTURE_BYTES, MAX_IOVECS};
use aya_ebpf::helpers::{
    bpf_probe_read_user,
    generated::{bpf_loop, bpf_probe_read_user as read_user_raw},
};

/// `struct iovec` of the user ABI (64-bit).
#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// Byte offsets in `struct user_msghdr` (64-bit user ABI): `msg_iov` and `msg_iovlen`.
const MSGHDR_IOV: u64 = 16;
const MSGHDR_IOVLEN: u64 = 24;

/// Where the syscall's bytes are in user memory.
#[derive(Clone, Copy)]
pub enum Source {
    /// One buffer (`read`, `write`, `recvfrom`, `sendto`).
    Buffer { ptr: u64 },
    /// An iovec array (`readv`, `writev`).
    Iovecs { ptr: u64, count: u64 },
    /// A `struct user_msghdr` (`recvmsg`, `sendmsg`, one message of `*mmsg`).
    MsgHdr { ptr: u64 },
    /// Nothing to copy: `sendfile` moves file bytes that never pass through user memory.
    Uncapturable,
}

/// The result of a copy.
pub struct Copied {
    /// Bytes now at the start of the destination.
    pub len: u32,
    /// A user-memory read failed; `len` covers what was copied before it.
    pub failed: bool,
}

/// Copies up to `want` bytes (at most `MAX_CAPTURE_BYTES`) from `src` into `dst`, walking at
/// most `max_iovecs` iovec entries (a constant at each call site, so the loop's bound is one).
#[inline(always)]
pub fn copy_payload(
    dst: &mut [u8; 2 * MAX_CAPTURE_BYTES],
    src: Source,
    want: u64,
    max_iovecs: usize,
) -> Copied {
    let want = if want > MAX_CAPTURE_BYTES as u64 {
        MAX_CAPTURE_BYTES as u64
    } else {
        want
    };
    // One call site for the iovec walk whichever way the iovecs are reached: the verifier
    // walks each inlined copy of the loop on its own.
    let (iov, count) = match src {
        Source::Uncapturable => {
            return Copied {
                len: 0,
                failed: false,
            };
        }
        Source::Buffer { ptr } => return copy_one(dst, 0, ptr, want),
        Source::Iovecs { ptr, count } => (ptr, count),
        Source::MsgHdr { ptr } => {
            // SAFETY: bpf_probe_read_user returns an error for a bad user address; it never faults.
            let iov = unsafe { bpf_probe_read_user((ptr + MSGHDR_IOV) as *const u64) };
            // SAFETY: as above.
            let count = unsafe { bpf_probe_read_user((ptr + MSGHDR_IOVLEN) as *const u64) };
            match (iov, count) {
                (Ok(iov), Ok(count)) => (iov, count),
                _ => {
                    return Copied {
                        len: 0,
                        failed: true,
                    };
                }
            }
        }
    };
    copy_iovecs(dst, iov, count, want, max_iovecs)
}

/// Copies `len` bytes from user `src` to `dst[off..]`.
#[inline(always)]
fn copy_one(dst: &mut [u8; 2 * MAX_CAPTURE_BYTES], off: u64, src: u64, len: u64) -> Copied {
    // The masks restate bounds the caller already guarantees (off < MAX, len ≤ MAX) in a form
    // the verifier tracks; together they keep off + len inside the 2 × MAX buffer.
    let off = off & (MAX_CAPTURE_BYTES as u64 - 1);
    let len = if len > MAX_CAPTURE_BYTES as u64 {
        MAX_CAPTURE_BYTES as u64
    } else {
        len
    };
    // SAFETY: dst + off .. dst + off + len lies inside `dst` (bounds above); the helper checks the
    // user address and returns an error instead of faulting.
    let ret = unsafe {
        read_user_raw(
            dst.as_mut_ptr().add(off as usize).cast(),
            len as u32,
            src as *const core::ffi::c_void,
        )
    };
    if ret < 0 {
        Copied {
            len: 0,
            failed: true,
        }
    } else {
        Copied {
            len: len as u32,
            failed: false,
        }
    }
}

/// The state of an iovec walk, on the caller's stack, handed to each step of `bpf_loop`.
#[repr(C)]
struct IovWalk {
    dst: *mut [u8; 2 * MAX_CAPTURE_BYTES],
    iov: u64,
    count: u64,
    want: u64,
    copied: u64,
    failed: u64,
    /// Entries read ahead into the destination's stash ([`STASH`]): 0 or [`STASHED`].
    stashed: u64,
}

/// Where the first iovec entries are read ahead, all in one copy: the destination's last bytes,
/// which no walk writes (it copies at most `MAX_CAPTURE_BYTES` in all; the buffer is twice that
/// so the verifier can bound each copy).
const STASHED: u64 = 2;
const STASH: usize = 2 * MAX_CAPTURE_BYTES - STASHED as usize * 16;

/// One entry of the iovec walk (a `bpf_loop` callback: index, context; 1 stops the loop).
/// A callback is verified once for every entry, where an unrolled loop was verified once per
/// entry: past 16 entries that walk no longer fit the verifier's budget, and gRPC's writes
/// spread one frame over many small iovecs.
#[inline(never)]
extern "C" fn iov_step(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `IovWalk` `copy_iovecs` passed to `bpf_loop`, on its stack, alive for
    // the whole loop; nothing else touches it meanwhile.
    let walk = unsafe { &mut *ctx.cast::<IovWalk>() };
    if index >= walk.count || walk.copied >= walk.want {
        return 1;
    }
    let entry = if index < walk.stashed && index < STASHED {
        // SAFETY: `dst` points at this CPU's scratch payload; the stash lies inside it, 8-byte
        // aligned, and holds the entries `copy_iovecs` read ahead.
        unsafe {
            (*walk.dst)
                .as_ptr()
                .add(STASH + index as usize * 16)
                .cast::<Iovec>()
                .read_unaligned()
        }
    } else {
        // SAFETY: bpf_probe_read_user returns an error for a bad user address; it never faults.
        let Ok(entry) = (unsafe { bpf_probe_read_user((walk.iov + index * 16) as *const Iovec) })
        else {
            walk.failed = 1;
            return 1;
        };
        entry
    };
    let remaining = walk.want - walk.copied;
    let take = if entry.len < remaining {
        entry.len
    } else {
        remaining
    };
    // SAFETY: `dst` points at this CPU's scratch payload, which outlives the walk.
    let dst = unsafe { &mut *walk.dst };
    let part = copy_one(dst, walk.copied, entry.base, take);
    if part.failed {
        walk.failed = 1;
        return 1;
    }
    walk.copied += u64::from(part.len);
    0
}

#[inline(always)]
fn copy_iovecs(
    dst: &mut [u8; 2 * MAX_CAPTURE_BYTES],
    iov: u64,
    count: u64,
    want: u64,
    max_iovecs: usize,
) -> Copied {
    // The first entries in one copy (nginx answers with a head and a body in two).
    let stashed = if count >= STASHED {
        // SAFETY: the stash lies inside `dst`; the helper checks the user address and returns
        // an error instead of faulting.
        let ret = unsafe {
            read_user_raw(
                dst.as_mut_ptr().add(STASH).cast(),
                (STASHED * 16) as u32,
                iov as *const core::ffi::c_void,
            )
        };
        if ret < 0 { 0 } else { STASHED }
    } else {
        0
    };
    let mut walk = IovWalk {
        dst: core::ptr::from_mut(dst),
        iov,
        count,
        want,
        copied: 0,
        failed: 0,
        stashed,
    };
    let max_iovecs = if max_iovecs < MAX_IOVECS {
        max_iovecs
    } else {
        MAX_IOVECS
    };
    // The callback goes to the helper as a function reference (a BPF_PSEUDO_FUNC load), never
    // through an integer, which would lose the relocation.
    let step: extern "C" fn(u64, *mut core::ffi::c_void) -> i64 = iov_step;
    // SAFETY: the helper calls `step` at most `max_iovecs` times with `&mut walk`, which lives on
    // this stack frame until it returns.
    let ret = unsafe {
        bpf_loop(
            max_iovecs as u32,
            step as *mut core::ffi::c_void,
            (&raw mut walk).cast(),
            0,
        )
    };
    let copied = if walk.copied > MAX_CAPTURE_BYTES as u64 {
        MAX_CAPTURE_BYTES as u64
    } else {
        walk.copied
    };
    Copied {
        len: copied as u32,
        failed: walk.failed != 0 || ret < 0,
    }
}
