//! Which language runtime a traced process runs, from its executable: it decides which
//! causality rules are sound for the process (an OS thread is not a request's unit of work in
//! every runtime) and, later, which runtime probes attach.

pub mod elf;
pub mod go;
pub mod grpcio;
pub mod node;
pub mod python;

/// The Go programs running now, as processes (one per executable file is enough to attach the
/// runtime probes; all are returned so each is known to be followed). Each executable is parsed
/// once ([`Runtime::of_process`] keeps what it found).
#[must_use]
pub fn go_programs_running() -> Vec<crate::process::ProcessInfo> {
    processes_running()
        .into_iter()
        .filter(|&pid| matches!(Runtime::of_process(pid), Runtime::Go { .. }))
        .map(crate::process::ProcessInfo::read)
        .collect()
}

/// The pids of the processes running now, the agent's own left out.
#[must_use]
pub fn processes_running() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .collect()
}

/// What the agent knows of a process's runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Runtime {
    /// Nothing that changes the thread rules was found.
    #[default]
    Other,
    /// A Go program: goroutines move between OS threads, so one thread's consecutive syscalls
    /// may serve different requests. `version` is the toolchain's (`go1.19.8`), when recorded.
    Go { version: Option<String> },
    /// A CPython interpreter (its executable is named `python3.N`): threads are units of work
    /// for threaded servers, and asyncio tasks, when its probes are attached, for event loops.
    Python,
    /// Node.js (its executable is named `node` or `nodejs`): one thread runs every callback of
    /// the event loop, timers and other work of its own included, so no request owns it.
    Node,
}

impl Runtime {
    /// Reads the executable of `pid` (through `/proc/<pid>/exe`, which reaches into containers).
    /// A file that cannot be read or parsed is `Other`: detection must never lose the event.
    #[must_use]
    pub fn of_process(pid: u32) -> Self {
        use std::{
            collections::HashMap,
            os::unix::fs::MetadataExt as _,
            sync::{Mutex, PoisonError},
        };
        /// Executables already parsed, by device, inode, size and change time (a rebuilt
        /// binary may get a freed inode back): a short-lived client run again and again (curl)
        /// costs one `fstat`, not a parse, on the path that drains the ring.
        type FileKey = (u64, u64, u64, i64, i64);
        static KNOWN: Mutex<Option<HashMap<FileKey, Runtime>>> = Mutex::new(None);
        const MAX_KNOWN: usize = 4096;
        let Ok(file) = std::fs::File::open(format!("/proc/{pid}/exe")) else {
            return Self::Other;
        };
        let key = file
            .metadata()
            .ok()
            .map(|m| (m.dev(), m.ino(), m.size(), m.ctime(), m.ctime_nsec()));
        let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
        let known = known.get_or_insert_with(HashMap::new);
        if let Some(found) = key.and_then(|k| known.get(&k)) {
            return found.clone();
        }
        let exe_name = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|p| Some(p.file_name()?.to_str()?.to_string()))
            .unwrap_or_default();
        let runtime = if python::is_interpreter_name(&exe_name) {
            Self::Python
        } else if exe_name == "node" || exe_name == "nodejs" {
            Self::Node
        } else {
            match go::build_info(&file) {
                Ok(Some(info)) => Self::Go {
                    version: info.version,
                },
                Ok(None) | Err(_) => Self::Other,
            }
        };
        if let Some(key) = key {
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
            known.insert(key, runtime.clone());
        }
        runtime
    }

    /// Whether a thread's syscalls belong to the work it is doing, so that same-thread rules
    /// hold: not in Go, where the running goroutine, not the thread, carries a request, nor in
    /// Node.js, whose one thread runs every callback.
    #[must_use]
    pub fn threads_are_tasks(&self) -> bool {
        !matches!(self, Self::Go { .. } | Self::Node)
    }

    /// Why same-thread causality is off for this runtime, for the log.
    #[must_use]
    pub fn why_threads_are_not_tasks(&self) -> &'static str {
        match self {
            Self::Go { .. } => {
                "a Go program: same-thread causality is off for it (goroutines change threads)"
            }
            Self::Node => {
                "a Node.js program: same-thread causality is off for it (one thread runs every callback, timers included)"
            }
            Self::Other | Self::Python => "",
        }
    }

    /// A short name for logs and `sockspan check`.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Other => "other".to_string(),
            Self::Python => "python".to_string(),
            Self::Node => "node".to_string(),
            Self::Go { version } => version
                .clone()
                .unwrap_or_else(|| "go (version unknown)".into()),
        }
    }
}
