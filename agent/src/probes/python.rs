//! The Python asyncio probes (`py_task_init`, `py_task_init_return` and the context read of the
//! syscall exit program, in agent-ebpf): a CPython process is followed by writing where its
//! interpreter state is into the programs' `FOLLOWED_PROCESSES` map (by [`super::Probes`]), and the task-creation probes
//! are attached to each `_asyncio` module file met, by device and inode (the file is reached
//! through `/proc/<pid>/root`, so containers are covered).
//!
//! Uprobes are per file: every process using an attached `_asyncio` module pays two traps per
//! task created, whether it is followed or not (the programs record nothing for the others).
//! `--no-runtime-probes asyncio` leaves them off.

use std::{collections::HashMap, os::unix::fs::MetadataExt as _, path::PathBuf};

use agent_common::FollowedProcess;
use aya::{Ebpf, programs::uprobe::UProbeAttachLocation};

use super::UprobeRefused;

use crate::runtime::python::{Interpreter, PythonError};

pub const ENTRY: &str = "py_task_init";
pub const RETURN: &str = "py_task_init_return";

#[derive(Debug, thiserror::Error)]
pub enum PythonProbeError {
    #[error("the Python probe programs did not load: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Python(#[from] PythonError),
    #[error("the process has not loaded asyncio (yet)")]
    NoAsyncio,
    #[error("cannot read /proc/{pid}/ns/pid: {reason}")]
    Namespace { pid: u32, reason: String },
    #[error(
        "uprobes are refused without CAP_SYS_ADMIN on this kernel (perf_event_open: {0}); grant it (deploy/README.md)"
    )]
    Privilege(String),
    #[error("attaching to `_asyncio.Task.__init__` in {module} failed: {reason}")]
    Attach { module: String, reason: String },
    #[error("the same module failed before: {0}")]
    Before(String),
    #[error("cannot write the map of followed processes: {0}")]
    Map(String),
}

/// Loads the programs once; attaches per `_asyncio` file; follows processes.
pub struct PythonProbes {
    unavailable: Option<String>,
    /// (device, inode) of the `_asyncio` files met, and why attaching failed if it did.
    files: HashMap<(u64, u64), Result<(), String>>,
}

impl PythonProbes {
    /// Loads the two programs from `ebpf` and takes the map. A failure is kept, not returned:
    /// the agent then traces without task causality and says why.
    pub fn load(ebpf: &mut Ebpf) -> Self {
        Self {
            unavailable: super::load_uprobes(
                ebpf,
                &[ENTRY, RETURN],
                "uprobes need CONFIG_UPROBE_EVENTS",
            ),
            files: HashMap::new(),
        }
    }

    /// Attaches for process `pid`, a CPython `interpreter` with asyncio loaded; returns its entry
    /// for the followed processes' map (once there, its data records name the running task,
    /// and its tasks' creation is reported) and whether the module's probes were newly
    /// attached.
    pub fn follow(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        interpreter: &Interpreter,
    ) -> Result<(FollowedProcess, bool), PythonProbeError> {
        if let Some(why) = &self.unavailable {
            return Err(PythonProbeError::Unavailable(why.clone()));
        }
        let (module, offset) = interpreter
            .asyncio
            .as_ref()
            .ok_or(PythonProbeError::NoAsyncio)?;
        let file = PathBuf::from(format!("/proc/{pid}/root"))
            .join(module.strip_prefix("/").unwrap_or(module));
        let meta = std::fs::metadata(&file).map_err(|e| PythonError::Read {
            path: file.display().to_string(),
            reason: e.to_string(),
        })?;
        let key = (meta.dev(), meta.ino());
        let newly = match self.files.get(&key) {
            Some(Ok(())) => false,
            Some(Err(why)) => return Err(PythonProbeError::Before(why.clone())),
            None => {
                let result = attach_module(ebpf, &file, &module.display().to_string(), *offset);
                if let Err(PythonProbeError::Privilege(why)) = result {
                    // Not this file's fault: the next one would fail the same way.
                    return Err(PythonProbeError::Privilege(why));
                }
                self.files
                    .insert(key, result.as_ref().map_err(ToString::to_string).copied());
                result?;
                true
            }
        };
        let ns = std::fs::metadata(format!("/proc/{pid}/ns/pid")).map_err(|e| {
            PythonProbeError::Namespace {
                pid,
                reason: e.to_string(),
            }
        })?;
        Ok((interpreter.process_entry((ns.dev(), ns.ino())), newly))
    }
}

fn attach_module(
    ebpf: &mut Ebpf,
    file: &std::path::Path,
    module: &str,
    offset: u64,
) -> Result<(), PythonProbeError> {
    for name in [ENTRY, RETURN] {
        let at = UProbeAttachLocation::AbsoluteOffset(offset);
        super::attach_uprobe(ebpf, name, at, None, file).map_err(|refused| match refused {
            UprobeRefused::Unavailable(why) => PythonProbeError::Unavailable(why),
            UprobeRefused::Privilege(reason) => PythonProbeError::Privilege(reason),
            UprobeRefused::Other(reason) => PythonProbeError::Attach {
                module: module.to_string(),
                reason,
            },
        })?;
    }
    Ok(())
}
