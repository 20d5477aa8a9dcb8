//! The Python asyncio probes: which asyncio task a Python process's syscall ran in, and which
//! task created which.
//!
//! A task runs every step inside its own `contextvars.Context` (`_asyncio.Task` schedules its
//! steps with `context=self._context`, and the event loop's handle enters it), so the calling
//! thread's current context (`PyThreadState.context`) names the running task with no probe on
//! the step itself. [`current_context`] reads it at each data syscall of a process the agent
//! follows ([`crate::followed::FOLLOWED_PROCESSES`]), through the thread's `PyThreadState`, which the task-creation
//! probe found by walking the interpreter's thread states for the calling thread's id (cached
//! per thread, checked at each use). The cost is a few user-memory reads per data record of
//! those processes, and one hash lookup for every other.
//!
//! `py_task_init` (uprobe at `_asyncio.Task.__init__`: `TaskObj *self`, args, kwargs) keeps
//! `self` by thread; `py_task_init_return` (uretprobe) reads the context `__init__` gave the
//! task (a copy of the creator's, or the `context=` argument) and sends it with the creator's
//! current one in a [`PyTaskEvent`]: two traps per task created. A context counts as a task's
//! only while the task made with it still holds it ([`is_task_context`]): CPython reuses a
//! finished task's context memory for the next context of any kind. Checked on CPython 3.11.2
//! (Debian 12), 3.11.7, 3.12.1 and 3.13.0 (pyenv builds), with and without uvloop.

use agent_common::{
    Counter, EventKind, FollowedProcess, PYTHON_MAX_THREADS, PyTaskEvent, RUNTIME_PYTHON,
};
use aya_ebpf::{
    bindings::bpf_pidns_info,
    helpers::{bpf_probe_read_user, generated::bpf_get_ns_current_pid_tgid},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    followed::FOLLOWED_PROCESSES,
    maps::{EVENTS, count},
    syscalls::{header, now_ns, traced_pid_tgid},
};

/// A thread's `PyThreadState`, by `pid_tgid`: found once by the walk, checked at each use (a
/// thread state is freed when its thread ends, and its memory may then hold another's).
#[map]
static PY_THREAD_STATES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// `Task.__init__` calls in progress, by `pid_tgid`: the task object.
#[map]
static PY_TASK_INITS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// The task object created with each context, by (tgid, context address) ([`is_task_context`]),
/// for the creations the agent is told of. An LRU over every followed process: a task neither
/// created nor running while this many others were (an idle connection's task under heavy task
/// churn) loses its name (its calls and the tasks it makes then carry no context), never gains
/// a wrong one.
#[map]
static PY_TASKS: LruHashMap<PyTaskKey, u64> = LruHashMap::with_max_entries(32_768, 0);

/// A context of a process: [`PY_TASKS`]' key.
#[repr(C)]
#[derive(Clone, Copy)]
struct PyTaskKey {
    tgid: u32,
    reserved: u32,
    context: u64,
}

/// Whether `context` is, now, the context of the task created with it in `process` (`tgid`).
///
/// CPython frees a finished task's context and reuses its memory for any later context: the
/// copy an event-loop callback runs in (`Handle`, `call_soon`), not only another task's. A
/// context the agent knew as a dead task's would then name that task's ancestry for code that
/// is none of its own (a connection's task made by `connection_made` in a callback context at
/// the address of another request's finished child task would descend from that request).
/// A task holds its context until it is deallocated, which clears the field
/// (`Py_CLEAR(task->task_context)`), so the task object created with `context` still pointing
/// at it means that context is still that task's.
#[inline(always)]
fn is_task_context(tgid: u32, context: u64, process: &FollowedProcess) -> bool {
    let key = PyTaskKey {
        tgid,
        reserved: 0,
        context,
    };
    // SAFETY: copied out at once.
    match unsafe { PY_TASKS.get(&key) }.copied() {
        Some(task) => read(task + u64::from(process.task_context)) == context,
        None => false,
    }
}

/// Reads a pointer-sized value of user memory; 0 when the read fails.
#[inline(always)]
fn read(address: u64) -> u64 {
    // SAFETY: bpf_probe_read_user returns an error for a bad user address; it never faults.
    unsafe { bpf_probe_read_user(address as *const u64) }.unwrap_or(0)
}

/// The calling thread's id in its process's pid namespace (what `native_thread_id` holds), and
/// the process's entry; `None` when the process is not a followed Python process.
#[inline(always)]
fn followed_thread(pid_tgid: u64) -> Option<(FollowedProcess, u64)> {
    // SAFETY: copied out at once.
    let process = (unsafe { FOLLOWED_PROCESSES.get(&((pid_tgid >> 32) as u32)) }).copied()?;
    if process.runtime != RUNTIME_PYTHON {
        return None;
    }
    Some((process, namespace_tid(&process)))
}

/// The calling thread's id in the pid namespace of `process` (0 when that is not the thread's).
#[inline(always)]
fn namespace_tid(process: &FollowedProcess) -> u64 {
    let mut ns = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `ns` is a local of the size passed; the helper fails (non-zero) when the
    // namespace is not the current task's.
    let failed = unsafe {
        bpf_get_ns_current_pid_tgid(
            process.pidns_dev,
            process.pidns_ino,
            &raw mut ns,
            core::mem::size_of::<bpf_pidns_info>() as u32,
        )
    };
    if failed == 0 { u64::from(ns.pid) } else { 0 }
}

/// The calling thread's current `contextvars.Context` when it is a live task's (0 otherwise:
/// unknown, an event-loop callback's, a task made before the probes), in `process`, a followed
/// Python process ([`is_task_context`]). Only the thread state cached by [`thread_state`] is read: the walk that finds
/// it runs in the task-creation probe, whose program is small, and not in the syscall exit
/// program, whose verification it would multiply. A thread that never created a task has no
/// task running, so it loses nothing.
#[inline(always)]
pub fn current_context(pid_tgid: u64, process: &FollowedProcess) -> u64 {
    let tid = namespace_tid(process);
    // SAFETY: copied out at once.
    let context = match unsafe { PY_THREAD_STATES.get(&pid_tgid) }.copied() {
        Some(state) if tid != 0 && read(state + u64::from(process.thread_native_id)) == tid => {
            read(state + u64::from(process.thread_context))
        }
        _ => 0,
    };
    if context != 0 && is_task_context((pid_tgid >> 32) as u32, context, process) {
        context
    } else {
        0
    }
}

/// The calling thread's `PyThreadState` (0 when not found): the cached one while it still
/// names this thread, else found by walking the interpreter's thread list, and cached.
#[inline(always)]
fn thread_state(pid_tgid: u64, process: &FollowedProcess, tid: u64) -> u64 {
    if tid == 0 {
        return 0;
    }
    let native_id = u64::from(process.thread_native_id);
    // SAFETY: copied out at once.
    if let Some(state) = unsafe { PY_THREAD_STATES.get(&pid_tgid) }.copied()
        && read(state + native_id) == tid
    {
        return state;
    }
    let interpreter = read(process.interpreters_head);
    if interpreter == 0 {
        return 0;
    }
    let mut state = read(interpreter + u64::from(process.interpreter_threads));
    let mut i = 0;
    while i < PYTHON_MAX_THREADS {
        if state == 0 {
            break;
        }
        if read(state + native_id) == tid {
            let _ = PY_THREAD_STATES.insert(&pid_tgid, &state, 0);
            return state;
        }
        state = read(state + u64::from(process.thread_next));
        i += 1;
    }
    0
}

/// `hook`: uprobe at the entry of `_asyncio.Task.__init__` (`TaskObj *self`, `args`, `kwargs`,
/// the `tp_init` slot of `_asyncio.Task`).
#[uprobe]
pub fn py_task_init(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return 0;
    };
    // SAFETY: copied out at once.
    let followed = unsafe { FOLLOWED_PROCESSES.get(&((pid_tgid >> 32) as u32)) }.copied();
    if followed.is_none_or(|p| p.runtime != RUNTIME_PYTHON) {
        return 0;
    }
    let regs = ctx.regs;
    // SAFETY: `regs` is the probe's context (the user task's `struct pt_regs`); the verifier
    // checks the load against it.
    let task = unsafe { core::ptr::read_volatile(&raw const (*regs).rdi) };
    let _ = PY_TASK_INITS.insert(&pid_tgid, &task, 0);
    0
}

/// `hook`: uretprobe of `_asyncio.Task.__init__` (returns 0, or -1 with an exception set).
#[uretprobe]
pub fn py_task_init_return(ctx: RetProbeContext) -> u32 {
    let Some(pid_tgid) = traced_pid_tgid() else {
        return 0;
    };
    // SAFETY: copied out at once.
    let Some(task) = (unsafe { PY_TASK_INITS.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = PY_TASK_INITS.remove(&pid_tgid);
    let ret: i64 = ctx.ret();
    if ret as i32 != 0 {
        return 0;
    }
    let Some((process, tid)) = followed_thread(pid_tgid) else {
        return 0;
    };
    let child = read(task + u64::from(process.task_context));
    if child == 0 {
        return 0;
    }
    let state = thread_state(pid_tgid, &process, tid);
    let process_id = (pid_tgid >> 32) as u32;
    // The creator, when the code that made the task ran in a live task (not a callback's context
    // at the address of a finished one).
    let parent = if state == 0 {
        0
    } else {
        match read(state + u64::from(process.thread_context)) {
            context if context != 0 && is_task_context(process_id, context, &process) => context,
            _ => 0,
        }
    };
    let Some(mut entry) = EVENTS.reserve::<PyTaskEvent>(0) else {
        // The agent will not know this creation: nor do the programs, or a syscall of the task
        // would name a context whose creation the agent knows as an earlier task's.
        count(Counter::RingFull);
        return 0;
    };
    let key = PyTaskKey {
        tgid: process_id,
        reserved: 0,
        context: child,
    };
    let _ = PY_TASKS.insert(&key, &task, 0);
    entry.write(PyTaskEvent {
        header: header(EventKind::PyTask, pid_tgid, -1, 0, now_ns()),
        child,
        parent,
    });
    // No wake-up, as for the Go probes: the task's own data records follow it in the ring.
    entry.submit(u64::from(aya_ebpf::bindings::BPF_RB_NO_WAKEUP));
    count(Counter::EventsSent);
    0
}
