//! Copies the first bytes a syscall moved from user memory into the per-CPU scratch record.
//!
//! Lengths are clamped with comparisons against constants right before each helper call, so the
//! verifier can prove every copy stays inside the scratch buffer.

use agent_common::{MAX_CAPTURE_BYTES, MAX_IOVECS};
use aya_ebpf::helpers::{bpf_probe_read_user, generated::bpf_probe_read_user as read_user_raw};

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

/// Copies up to `want` bytes (at most `MAX_CAPTURE_BYTES`) from `src` into `dst`.
#[inline(always)]
pub fn copy_payload(dst: &mut [u8; 2 * MAX_CAPTURE_BYTES], src: Source, want: u64) -> Copied {
    let want = if want > MAX_CAPTURE_BYTES as u64 {
        MAX_CAPTURE_BYTES as u64
    } else {
        want
    };
    match src {
        Source::Uncapturable => Copied {
            len: 0,
            failed: false,
        },
        Source::Buffer { ptr } => copy_one(dst, 0, ptr, want),
        Source::Iovecs { ptr, count } => copy_iovecs(dst, ptr, count, want),
        Source::MsgHdr { ptr } => {
            // SAFETY: bpf_probe_read_user returns an error for a bad user address; it never faults.
            let iov = unsafe { bpf_probe_read_user((ptr + MSGHDR_IOV) as *const u64) };
            // SAFETY: as above.
            let count = unsafe { bpf_probe_read_user((ptr + MSGHDR_IOVLEN) as *const u64) };
            match (iov, count) {
                (Ok(iov), Ok(count)) => copy_iovecs(dst, iov, count, want),
                _ => Copied {
                    len: 0,
                    failed: true,
                },
            }
        }
    }
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

#[inline(always)]
fn copy_iovecs(dst: &mut [u8; 2 * MAX_CAPTURE_BYTES], iov: u64, count: u64, want: u64) -> Copied {
    let mut copied: u64 = 0;
    let mut i: usize = 0;
    while i < MAX_IOVECS {
        if i as u64 >= count || copied >= want {
            break;
        }
        // SAFETY: as in `copy_payload`: a bad user address yields an error.
        let Ok(entry) = (unsafe { bpf_probe_read_user((iov + i as u64 * 16) as *const Iovec) })
        else {
            return Copied {
                len: copied as u32,
                failed: true,
            };
        };
        let remaining = want - copied;
        let take = if entry.len < remaining {
            entry.len
        } else {
            remaining
        };
        let part = copy_one(dst, copied, entry.base, take);
        if part.failed {
            return Copied {
                len: copied as u32,
                failed: true,
            };
        }
        copied += u64::from(part.len);
        i += 1;
    }
    Copied {
        len: copied as u32,
        failed: false,
    }
}
