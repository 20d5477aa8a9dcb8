//! The Node.js callback probes (`node_stream_io`, `node_stream_io_return` and the callback read
//! of the syscall exit program, in agent-ebpf), attached at libuv's `uv__stream_io` in each
//! Node.js executable met (or the libuv it maps), by device and inode of the executable, so
//! every process running it is covered, in containers too. `--no-runtime-probes node` leaves
//! them off.
//!
//! Uprobes are per file: every process of an attached executable pays two traps per stream
//! callback.

use std::{collections::HashMap, os::unix::fs::MetadataExt as _};

use aya::{Ebpf, programs::uprobe::UProbeAttachLocation};

use super::UprobeRefused;

use crate::runtime::node::{NodeError, STREAM_IO, StreamIo, find_stream_io};

pub const ENTRY: &str = "node_stream_io";
pub const RETURN: &str = "node_stream_io_return";

#[derive(Debug, thiserror::Error)]
pub enum NodeProbeError {
    #[error("the Node.js probe programs did not load: {0}")]
    Unavailable(String),
    #[error("cannot read /proc/{pid}/exe: {reason}")]
    Exe { pid: u32, reason: String },
    #[error("{0}")]
    Node(#[from] NodeError),
    #[error(
        "uprobes are refused without CAP_SYS_ADMIN on this kernel (perf_event_open: {0}); grant it (deploy/README.md)"
    )]
    Privilege(String),
    #[error("attaching at `{STREAM_IO}` in {file} failed: {reason}")]
    Attach { file: String, reason: String },
    #[error("the same executable failed before: {0}")]
    Before(String),
    #[error("cannot write the map of followed processes: {0}")]
    Map(String),
}

/// What attaching for one process gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAttached {
    /// The probes are on this file now.
    New { file: String },
    /// Another process of the same executable had them attached already.
    Already,
}

/// Loads the programs once; attaches per executable.
pub struct NodeProbes {
    unavailable: Option<String>,
    /// (device, inode) of the Node.js executables met, and why attaching failed if it did.
    executables: HashMap<(u64, u64), Result<(), String>>,
}

impl NodeProbes {
    /// Loads the two programs from `ebpf`. A failure is kept, not returned: the agent then
    /// traces Node.js without callback causality and says why.
    pub fn load(ebpf: &mut Ebpf) -> Self {
        Self {
            unavailable: super::load_uprobes(
                ebpf,
                &[ENTRY, RETURN],
                "uprobes need CONFIG_UPROBE_EVENTS",
            ),
            executables: HashMap::new(),
        }
    }

    /// Attaches the probes for process `pid`, a Node.js program.
    pub fn attach(&mut self, ebpf: &mut Ebpf, pid: u32) -> Result<NodeAttached, NodeProbeError> {
        if let Some(why) = &self.unavailable {
            return Err(NodeProbeError::Unavailable(why.clone()));
        }
        let meta =
            std::fs::metadata(format!("/proc/{pid}/exe")).map_err(|e| NodeProbeError::Exe {
                pid,
                reason: e.to_string(),
            })?;
        let key = (meta.dev(), meta.ino());
        if let Some(before) = self.executables.get(&key) {
            return match before {
                Ok(()) => Ok(NodeAttached::Already),
                Err(why) => Err(NodeProbeError::Before(why.clone())),
            };
        }
        let result = find_stream_io(pid)
            .map_err(NodeProbeError::from)
            .and_then(|at| attach_at(ebpf, &at).map(|()| at.shown));
        if let Err(NodeProbeError::Privilege(_)) = &result {
            // Not this executable's fault: the next one would fail the same way.
            return result.map(|file| NodeAttached::New { file });
        }
        self.executables.insert(
            key,
            result.as_ref().map(|_| ()).map_err(ToString::to_string),
        );
        result.map(|file| NodeAttached::New { file })
    }
}

/// Attaches the return probe first: a uretprobe is armed as its function is entered, so a
/// callback entered between the two attaches would store its fd with nothing to reset it, and
/// the thread's later syscalls (a timer's calls) would name that callback.
fn attach_at(ebpf: &mut Ebpf, at: &StreamIo) -> Result<(), NodeProbeError> {
    for name in [RETURN, ENTRY] {
        let location = UProbeAttachLocation::AbsoluteOffset(at.file_offset);
        super::attach_uprobe(ebpf, name, location, None, &at.file).map_err(
            |refused| match refused {
                UprobeRefused::Unavailable(why) => NodeProbeError::Unavailable(why),
                UprobeRefused::Privilege(reason) => NodeProbeError::Privilege(reason),
                UprobeRefused::Other(reason) => NodeProbeError::Attach {
                    file: at.shown.clone(),
                    reason,
                },
            },
        )?;
    }
    Ok(())
}
