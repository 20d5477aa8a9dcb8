//! The processes whose syscalls name the task they ran in: the Python processes the asyncio
//! probes follow and the Node.js processes the callback probes follow, by tgid, written by the
//! agent. Every data syscall looks its process up here once; only a followed process's go on to
//! its runtime's per-thread read.

use agent_common::{FollowedProcess, RUNTIME_NODE};
use aya_ebpf::{macros::map, maps::HashMap};

use crate::{node, python};

/// The followed processes, by tgid.
#[map]
pub static FOLLOWED_PROCESSES: HashMap<u32, FollowedProcess> = HashMap::with_max_entries(4096, 0);

/// [`current_task`]'s answer for a process that is not followed, or a Node.js thread the
/// callback probes never saw.
pub const NOT_FOLLOWED: u64 = u64::MAX;

/// What the calling thread runs now, as an open record names it ([`agent_common::ConnEvent::task`]):
/// [`current_task`], 0 when the process is not followed.
#[inline(always)]
pub fn opening_task(pid_tgid: u64) -> u64 {
    match current_task(pid_tgid) {
        NOT_FOLLOWED => 0,
        task => task,
    }
}

/// What the calling thread runs now, for [`agent_common::DataEvent::task`]: in a followed
/// Python process, its asyncio task's context (0 when unknown); in a followed Node.js process,
/// the libuv callback it is in; else [`NOT_FOLLOWED`]. Out of line: the exit program calls it
/// from one place, the open record from another.
#[inline(never)]
pub fn current_task(pid_tgid: u64) -> u64 {
    // SAFETY: copied out at once.
    let Some(process) = unsafe { FOLLOWED_PROCESSES.get(&((pid_tgid >> 32) as u32)) }.copied()
    else {
        return NOT_FOLLOWED;
    };
    if process.runtime == RUNTIME_NODE {
        return match node::current_callback(pid_tgid) {
            0 => NOT_FOLLOWED,
            callback => callback,
        };
    }
    python::current_context(pid_tgid, &process)
}
