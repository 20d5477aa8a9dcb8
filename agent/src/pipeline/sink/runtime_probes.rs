//! The runtime probes the sink attaches to the processes it meets (Go, OpenSSL, Python asyncio,
//! Node.js, and the grpcio look for the worker rule), and forgets when they exit.

use std::collections::{HashMap, HashSet};

use super::TraceSink;
use crate::{
    clock::monotonic_ns,
    conntrack::Connection,
    probes::{Probes, go::Attached},
    process::ProcessInfo,
    trace::Tracer,
};

/// Which runtime probes are on (`--no-runtime-probes` turns each off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "one switch per runtime, named"
)]
pub struct RuntimeProbesOn {
    pub go: bool,
    pub tls: bool,
    pub asyncio: bool,
    pub node: bool,
}

impl<'a> TraceSink<'a> {
    /// [`TraceSink::attach_runtime_probes`], saying so in the log: after that
    /// line, processes running now are traced with their runtime probes too (tests and scripts
    /// wait for it before sending traffic).
    #[must_use]
    pub fn with_runtime_probes(mut self, probes: &'a mut Probes, on: RuntimeProbesOn) -> Self {
        self.attach_runtime_probes(probes, on);
        tracing::info!(
            go = on.go,
            tls = on.tls,
            asyncio = on.asyncio,
            node = on.node,
            "runtime probes attached"
        );
        self
    }

    /// Keeps the loaded programs (their counters) and attaches the runtime probes `on` says to
    /// the processes running now (those that appear get them as their first connection is
    /// seen): the Go runtime probes to Go programs, the OpenSSL probes to the system's libssl and
    /// the processes' own, the asyncio probes to CPython processes with asyncio, the callback
    /// probes to Node.js programs.
    fn attach_runtime_probes(&mut self, probes: &'a mut Probes, on: RuntimeProbesOn) {
        self.on = on;
        let netns = self.netns;
        let in_scope = |pid: u32| {
            netns.is_none_or(|only| crate::conntrack::discovery::netns_of(pid) == Some(only))
        };
        if on.go {
            for process in crate::runtime::go_programs_running()
                .into_iter()
                .filter(|p| in_scope(p.pid))
            {
                watch_go(&mut self.go_seen, &mut self.tracer, probes, &process);
            }
        }
        if on.tls {
            self.tls_libraries_probed += watch_tls(&mut self.tls_seen, probes, None);
            for pid in crate::runtime::processes_running()
                .into_iter()
                .filter(|&pid| in_scope(pid))
            {
                self.tls_libraries_probed += watch_tls(&mut self.tls_seen, probes, Some(pid));
            }
        }
        // The runtime (one cached look at the executable) first: the whole metadata only for
        // the Python processes. Without the asyncio probes, those running asyncio are marked
        // for the thread rule ([`watch_python_unfollowed`]).
        for pid in crate::runtime::processes_running()
            .into_iter()
            .filter(|&pid| {
                in_scope(pid)
                    && crate::runtime::Runtime::of_process(pid) == crate::runtime::Runtime::Python
            })
        {
            let process = ProcessInfo::read(pid);
            if on.asyncio {
                watch_python(&mut self.python_seen, &mut self.tracer, probes, &process);
            } else {
                watch_python_unfollowed(&mut self.python_seen, &mut self.tracer, &process);
            }
        }
        if on.node {
            for pid in crate::runtime::processes_running()
                .into_iter()
                .filter(|&pid| {
                    in_scope(pid)
                        && crate::runtime::Runtime::of_process(pid) == crate::runtime::Runtime::Node
                })
            {
                let process = ProcessInfo::read(pid);
                watch_node(&mut self.node_seen, &mut self.tracer, probes, &process);
            }
        }
        if probes.inband_on() {
            for pid in crate::runtime::processes_running()
                .into_iter()
                .filter(|&pid| in_scope(pid))
            {
                let process = ProcessInfo::read(pid);
                let unfollowed = self.tracer.is_asyncio_unfollowed(pid);
                watch_inband(&mut self.inband_seen, probes, &process, unfollowed);
            }
        }
        self.probes = Some(probes);
    }

    /// Processes that exited leave the in-band mode's list (a new process given the pid is
    /// classified afresh).
    pub(super) fn forget_exited_inband(&mut self) {
        let Some(probes) = self.probes.as_deref_mut() else {
            return;
        };
        self.inband_seen.retain(|&pid, _| {
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !alive {
                probes.inband_forget(pid);
            }
            alive
        });
    }
}

/// In the in-band mode, classifies `process` for the programs: only when its threads serve one
/// request at a time (its runtime is not Go nor Node.js; a followed asyncio process the programs
/// leave out themselves, an unfollowed one `asyncio_unfollowed` says) do its CLIENT requests
/// carry their thread's trace. A pid that runs something else now is classified again.
pub(super) fn watch_inband(
    seen: &mut HashMap<u32, bool>,
    probes: &mut Probes,
    process: &ProcessInfo,
    asyncio_unfollowed: bool,
) {
    // An asyncio process whose tasks are not followed: its loop's thread would stamp one
    // request's trace on a background call, which the server's host cannot take back.
    let allowed = process.runtime.threads_are_tasks() && !asyncio_unfollowed;
    if seen.insert(process.pid, allowed) == Some(allowed) {
        return;
    }
    probes.inband_classify(process.pid, allowed);
}

/// Attaches the Go runtime probes for `process`, a Go program, once per process; the tracer
/// follows its goroutines when that worked. Why it did not is logged once per process.
pub(super) fn watch_go(
    seen: &mut HashSet<u32>,
    tracer: &mut Tracer,
    probes: &mut Probes,
    process: &ProcessInfo,
) {
    let crate::runtime::Runtime::Go { version } = &process.runtime else {
        return;
    };
    if !seen.insert(process.pid) {
        return;
    }
    match probes.attach_go(process.pid, version.as_deref()) {
        Ok(attached) => {
            tracer.goroutines.track(process.pid);
            if let Attached::New { probes } = attached {
                tracing::info!(
                    pid = process.pid,
                    exe = %process.exe,
                    probes,
                    "Go runtime probes attached: goroutine causality on"
                );
            }
        }
        Err(err) => tracing::warn!(
            pid = process.pid,
            exe = %process.exe,
            "no goroutine causality for this Go program: {err}; its client calls get no parent \
             from the agent (headers and the proxy rule still apply)"
        ),
    }
}

/// Looks at a Python process for grpcio, where the worker rule applies: at its first
/// connection, and once more at its first server connection (grpcio is imported by then). A pid
/// that runs something else now is forgotten.
pub(super) fn watch_grpcio(
    seen: &mut HashMap<u32, (bool, bool)>,
    tracer: &mut Tracer,
    conn: &Connection,
) {
    /// Processes remembered; past this they are forgotten (and looked at again).
    const MAX_SEEN: usize = 64 * 1024;
    let pid = conn.process.pid;
    if !matches!(conn.process.runtime, crate::runtime::Runtime::Python) {
        if seen.remove(&pid).is_some_and(|(grpcio, _)| grpcio) {
            tracer.disallow_worker_rule(pid);
        }
        return;
    }
    let server = conn.role == agent_common::Role::Server;
    let look = match seen.get(&pid) {
        None => true,
        Some(&(grpcio, at_server)) => !grpcio && server && !at_server,
    };
    if !look {
        return;
    }
    if seen.len() >= MAX_SEEN {
        seen.clear();
    }
    let grpcio = crate::runtime::grpcio::is_grpcio(pid);
    seen.insert(pid, (grpcio, server));
    if grpcio {
        tracer.allow_worker_rule(pid);
    }
}

/// Attaches the Node.js callback probes for `process`, a Node.js program, once per process;
/// the tracer follows its callbacks when that worked. Why it did not is logged once per
/// executable.
pub(super) fn watch_node(
    seen: &mut HashSet<u32>,
    tracer: &mut Tracer,
    probes: &mut Probes,
    process: &ProcessInfo,
) {
    if !matches!(process.runtime, crate::runtime::Runtime::Node) {
        // A followed pid that runs something else now (it exec'd) is forgotten: its threads'
        // syscalls name their callbacks no more.
        if seen.remove(&process.pid) {
            tracer.callbacks.untrack(process.pid);
            probes.forget(process.pid);
        }
        return;
    }
    if !seen.insert(process.pid) {
        return;
    }
    match probes.attach_node(process.pid) {
        Ok(attached) => {
            tracer.callbacks.track(process.pid);
            if let crate::probes::node::NodeAttached::New { file } = attached {
                tracing::info!(
                    pid = process.pid,
                    file,
                    "Node.js callback probes attached: event-loop causality on"
                );
            }
        }
        Err(crate::probes::node::NodeProbeError::Before(_)) => {}
        Err(err) => tracing::warn!(
            pid = process.pid,
            exe = %process.exe,
            "no event-loop causality for this Node.js program: {err}; its client calls get no \
             parent from the agent (headers and the proxy rule still apply)"
        ),
    }
}

impl TraceSink<'_> {
    /// Node.js processes that exited leave the tracer (a new process given the pid is looked
    /// at afresh).
    pub(super) fn forget_exited_node(&mut self) {
        let (tracer, mut probes) = (&mut self.tracer, self.probes.as_deref_mut());
        self.node_seen.retain(|pid| {
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !alive {
                tracer.callbacks.untrack(*pid);
                if let Some(probes) = probes.as_deref_mut() {
                    probes.forget(*pid);
                }
            }
            alive
        });
    }

    /// Python processes that exited leave the programs' map (bounded) and the tracer.
    pub(super) fn forget_exited_python(&mut self) {
        let gone: Vec<u32> = self
            .python_seen
            .keys()
            .copied()
            .filter(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        for pid in gone {
            // The bool is "followed" with the probes on, "marked as running asyncio" with them
            // off; the tracer forgets either.
            if self
                .python_seen
                .remove(&pid)
                .is_some_and(|(_, followed)| followed)
                && self.on.asyncio
            {
                if let Some(probes) = self.probes.as_deref_mut() {
                    probes.forget(pid);
                }
                self.tracer.tasks.untrack(pid);
            }
            self.tracer.forget_unfollowed(pid);
        }
    }
}

/// How long a Python process found without asyncio waits before it is looked at again.
const PYTHON_RETRY_NS: u64 = 1_000_000_000;

/// Whether Python process `pid` is due for a look (`seen`: when it was last looked at, and
/// whether that settled it): `Some(first)` if so, `None` while it is settled or was looked at
/// less than [`PYTHON_RETRY_NS`] ago.
fn python_look_due(seen: &HashMap<u32, (u64, bool)>, pid: u32, now: u64) -> Option<bool> {
    match seen.get(&pid) {
        Some(&(_, true)) => None,
        Some(&(at, false)) if now.saturating_sub(at) < PYTHON_RETRY_NS => None,
        Some(_) => Some(false),
        None => Some(true),
    }
}

/// Follows `process` with the asyncio probes if it is a CPython process with asyncio loaded;
/// the tracer follows its tasks when that worked. A Python process without asyncio yet is looked
/// at again on a later connection, at most once a second; why one cannot be followed is logged
/// once. A pid that runs something else now is forgotten.
pub(super) fn watch_python(
    seen: &mut HashMap<u32, (u64, bool)>,
    tracer: &mut Tracer,
    probes: &mut Probes,
    process: &ProcessInfo,
) {
    let pid = process.pid;
    if !matches!(process.runtime, crate::runtime::Runtime::Python) {
        if seen.remove(&pid).is_some_and(|(_, followed)| followed) {
            probes.forget(pid);
            tracer.tasks.untrack(pid);
        }
        tracer.forget_unfollowed(pid);
        return;
    }
    let now = monotonic_ns();
    let Some(first) = python_look_due(seen, pid, now) else {
        return;
    };
    let inspected = crate::runtime::python::inspect(pid);
    let found_asyncio = matches!(&inspected, Ok(Some(found)) if found.asyncio.is_some());
    let result = inspected
        .map_err(crate::probes::python::PythonProbeError::from)
        .and_then(|found| {
            found.map_or(Ok(None), |interpreter| {
                probes
                    .follow_python(pid, &interpreter)
                    .map(|newly| Some((interpreter, newly)))
            })
        });
    match result {
        Ok(Some((interpreter, newly))) => {
            seen.insert(pid, (now, true));
            tracer.tasks.track(pid);
            tracing::info!(
                pid,
                exe = %process.exe,
                python = %interpreter.version,
                module_newly_probed = newly,
                "Python asyncio probes attached: task causality on"
            );
        }
        Ok(None) | Err(crate::probes::python::PythonProbeError::NoAsyncio) => {
            seen.insert(pid, (now, false));
        }
        Err(err) => {
            // Not retried: the same interpreter fails the same way.
            seen.insert(pid, (u64::MAX, false));
            // Whatever failed (an interpreter release not checked included), a process with
            // asyncio loaded keeps no thread-rule parent on its loop's thread.
            let runs_asyncio = found_asyncio || crate::runtime::python::loads_asyncio_module(pid);
            if runs_asyncio {
                tracer.asyncio_unfollowed(pid);
            }
            if first || !matches!(err, crate::probes::python::PythonProbeError::Before(_)) {
                tracing::warn!(
                    pid,
                    exe = %process.exe,
                    "no asyncio task causality for this Python process: {err}; {}",
                    if runs_asyncio {
                        "its main thread's client calls get span links to the requests it \
                         serves, no parent"
                    } else {
                        "its client calls get parents from the thread rule only"
                    }
                );
            }
        }
    }
}

/// With the asyncio probes off, a CPython process that runs asyncio: its event loop's thread
/// serves every request in flight and runs tasks of the service's own, so one open request on
/// it is no evidence (`fastapi-probes-off` had 2–3 background calls of 16 requests adopted by
/// the thread rule before). The tracer gives the calls of its main thread, where asyncio's
/// servers run their loop, span links to the requests it serves, no parent. A Python process
/// without asyncio yet is looked at again on a later connection, at most once a second; a pid
/// that runs something else now is forgotten.
pub(super) fn watch_python_unfollowed(
    seen: &mut HashMap<u32, (u64, bool)>,
    tracer: &mut Tracer,
    process: &ProcessInfo,
) {
    let pid = process.pid;
    if !matches!(process.runtime, crate::runtime::Runtime::Python) {
        if seen.remove(&pid).is_some() {
            tracer.forget_unfollowed(pid);
        }
        return;
    }
    let now = monotonic_ns();
    if python_look_due(seen, pid, now).is_none() {
        return;
    }
    // The maps first (any release); the interpreter's own metadata for one built with the
    // module inside.
    let runs_asyncio = crate::runtime::python::loads_asyncio_module(pid)
        || matches!(
            crate::runtime::python::inspect(pid),
            Ok(Some(found)) if found.asyncio.is_some()
        );
    if runs_asyncio {
        seen.insert(pid, (now, true));
        tracer.asyncio_unfollowed(pid);
        tracing::info!(
            pid,
            exe = %process.exe,
            "Python process runs asyncio, its probes off: its main thread's client calls get \
             span links to the requests it serves, no parent"
        );
    } else {
        seen.insert(pid, (now, false));
    }
}

/// Attaches the OpenSSL probes to the system's libssl (`pid` `None`), or to the libssl files
/// process `pid` maps, once per process; each library met is logged once. Returns how many
/// libraries got their probes.
pub(super) fn watch_tls(seen: &mut HashSet<u32>, probes: &mut Probes, pid: Option<u32>) -> u64 {
    if let Some(pid) = pid
        && !seen.insert(pid)
    {
        return 0;
    }
    let mut libraries_probed = 0;
    match probes.attach_tls(pid) {
        Ok(libraries) => {
            for library in libraries {
                match &library.result {
                    Ok(probes) => {
                        libraries_probed += 1;
                        tracing::info!(
                            library = %library.path,
                            probes,
                            "TLS probes attached: plaintext of its connections traced"
                        );
                    }
                    Err(why) => tracing::warn!(
                        library = %library.path,
                        "no TLS plaintext for the processes using this library: {why}"
                    ),
                }
            }
        }
        // A process gone meanwhile has nothing to probe.
        Err(crate::probes::tls::TlsProbeError::Maps { .. }) => {}
        Err(err) => {
            if seen.insert(0) {
                tracing::warn!("no TLS plaintext: {err}");
            }
        }
    }
    libraries_probed
}
