//! The Node.js callback probes: which libuv stream callback a Node.js thread is in when it makes
//! a syscall.
//!
//! Node.js runs a request's JavaScript (its handler, and the promise jobs and `nextTick`s it
//! queues, which Node drains before the callback returns) inside the libuv callback that read
//! the request: `uv__stream_io` for the request's socket. A call the handler makes is written,
//! or its socket opened, inside that callback; a timer's calls are made outside any. So the
//! stream callback a syscall ran in names the connection whose bytes caused it, which the agent
//! turns into a parent (`agent/src/trace/callbacks.rs`).
//!
//! `node_stream_io` (uprobe at the entry of `uv__stream_io(uv_loop_t *loop, uv__io_t *w,
//! unsigned int events)`) stores the watcher's fd for the thread; `node_stream_io_return`
//! (uretprobe) stores "outside". Two traps per stream callback. The syscall exit program reads
//! the value ([`current_callback`]) into [`agent_common::DataEvent::task`], the open record into
//! [`agent_common::ConnEvent::task`], for the processes the agent follows
//! ([`crate::followed::FOLLOWED_PROCESSES`]): others pay one lookup there, not one here too. `uv__stream_io` is static in libuv but its address is
//! taken (it is every stream watcher's callback), so it keeps the C calling convention. Checked
//! on Node.js 20.20.2 (`NodeSource`, libuv 1.46 linked in, `.symtab` kept).

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};

use crate::syscalls::traced_pid_tgid;

/// `uv__io_t.fd`: after `cb` (8 bytes), two `uv__queue`s (16 each), `pevents` and `events` (4
/// each). The struct is in libuv's public header (`uv/unix.h`) and has kept this layout
/// throughout libuv 1.x.
const UV_IO_FD: u64 = 48;

/// The stream callback each Node.js thread is in, by `pid_tgid` ([`agent_common::node_callback`]).
/// A thread that ends leaves its last value ("outside", since it ended between callbacks) until
/// the LRU drops it; a new thread given its id reads that until its first callback: no parent.
#[map]
static NODE_CALLBACKS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// `hook`: uprobe at the entry of libuv's `uv__stream_io` (`uv_loop_t *loop`, `uv__io_t *w`,
/// `unsigned int events`) in a Node.js executable.
#[uprobe]
pub fn node_stream_io(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return 0;
    };
    let regs = ctx.regs;
    // SAFETY: `regs` is the probe's context (the user task's `struct pt_regs`); the verifier
    // checks the load against it.
    let watcher = unsafe { core::ptr::read_volatile(&raw const (*regs).rsi) };
    // SAFETY: bpf_probe_read_user returns an error for a bad user address; it never faults.
    match unsafe { bpf_probe_read_user((watcher + UV_IO_FD) as *const i32) } {
        Ok(fd) => store(pid_tgid, agent_common::node_callback(Some(fd))),
        // An fd not read names nothing: the thread's syscalls carry no callback until the next.
        Err(_) => {
            let _ = NODE_CALLBACKS.remove(&pid_tgid);
        }
    }
    0
}

/// `hook`: uretprobe of libuv's `uv__stream_io` (returns nothing).
#[uretprobe]
pub fn node_stream_io_return(_ctx: RetProbeContext) -> u32 {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return 0;
    };
    store(pid_tgid, agent_common::node_callback(None));
    0
}

/// Stores `value` for the thread: in place when it has an entry (two per callback: no new LRU
/// element each time), else as a new one.
#[inline(always)]
fn store(pid_tgid: u64, value: u64) {
    match NODE_CALLBACKS.get_ptr_mut(&pid_tgid) {
        // SAFETY: the map's value for this key, which the verifier checked non-null; a u64
        // store is atomic on the 64-bit targets BPF runs on.
        Some(slot) => unsafe { *slot = value },
        None => {
            let _ = NODE_CALLBACKS.insert(&pid_tgid, &value, 0);
        }
    }
}

/// The stream callback the calling thread is in ([`agent_common::node_callback`]), or 0 on a
/// thread the probes never saw (no stored value is 0: its top half is the tag). A plain `u64`,
/// not an `Option`: out of line, an `Option` came back through the stack, and the verifier then
/// saw one load instruction serve two kinds of pointer.
#[inline(always)]
pub fn current_callback(pid_tgid: u64) -> u64 {
    // SAFETY: copied out at once.
    unsafe { NODE_CALLBACKS.get(&pid_tgid) }
        .copied()
        .unwrap_or(0)
}
