//! The Go runtime probes: one uprobe program (`go_probe` in agent-ebpf), attached to each Go
//! executable the agent meets, at the functions [`agent_common::GoProbe`] names. Attached by
//! file (device and inode), so every process running that executable is covered, in containers
//! too (`/proc/<pid>/exe` reaches the file), and detached when the agent stops.

use std::{collections::HashMap, os::unix::fs::MetadataExt as _};

use agent_common::{GoProbe, go_probe_cookie};
use aya::{Ebpf, programs::uprobe::UProbeAttachLocation};

use super::UprobeRefused;

use crate::runtime::go::{self, symbols::find_functions};

pub const PROGRAM: &str = "go_probe";
const NEWPROC1: &str = "runtime.newproc1";
/// Not `Transport.roundTrip`: that one may rewind a request with a body into a copy, and the
/// copy is what the write loop writes. `persistConn.roundTrip` gets the `transportRequest`
/// whose embedded `*Request` (its first field) is the one `Request.write` receives.
const ROUND_TRIP: &str = "net/http.(*persistConn).roundTrip";
const REQUEST_WRITE: &str = "net/http.(*Request).write";

#[derive(Debug, thiserror::Error)]
pub enum GoProbeError {
    #[error("the Go probe program did not load: {0}")]
    Unavailable(String),
    #[error("cannot read /proc/{pid}/exe: {reason}")]
    Exe { pid: u32, reason: String },
    #[error("{0}")]
    Go(#[from] go::GoError),
    #[error("`{0}` is not in the executable")]
    Missing(&'static str),
    #[error(
        "goroutine tracking is verified on go1.19 only and this program is {0}; its struct layout needs a test before it is trusted"
    )]
    Version(String),
    #[error("the same executable failed before: {0}")]
    Before(String),
    #[error(
        "uprobes are refused without CAP_SYS_ADMIN on this kernel (perf_event_open: {0}); grant it (deploy/README.md)"
    )]
    Privilege(String),
    #[error("attaching at `{function}` failed: {reason}")]
    Attach {
        function: &'static str,
        reason: String,
    },
}

/// What attaching to one executable gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// The probes are on that file now.
    New { probes: usize },
    /// Another process of the same file had them attached already.
    Already,
}

/// Loads the program once; attaches per executable file.
pub struct GoProbes {
    /// Why the program is not usable, when it is not.
    unavailable: Option<String>,
    /// (device, inode) of executables seen, and why attaching failed if it did.
    files: HashMap<(u64, u64), Result<(), String>>,
}

impl GoProbes {
    /// Loads `go_probe` from `ebpf`. A failure is kept, not returned: the agent traces without
    /// goroutine tracking, and says why when a Go program appears.
    pub fn load(ebpf: &mut Ebpf) -> Self {
        let unavailable = match super::uprobe(ebpf, PROGRAM) {
            Ok(program) => program.load().err().map(|e| {
                format!(
                    "{} (the program needs Linux 5.15 or newer: bpf_get_attach_cookie for uprobes)",
                    super::error_chain(&e)
                )
            }),
            Err(e) => Some(e),
        };
        Self {
            unavailable,
            files: HashMap::new(),
        }
    }

    /// Attaches the probes to the executable of `pid`, a Go program built by `version`.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        version: Option<&str>,
    ) -> Result<Attached, GoProbeError> {
        if let Some(why) = &self.unavailable {
            return Err(GoProbeError::Unavailable(why.clone()));
        }
        let exe = format!("/proc/{pid}/exe");
        let meta = std::fs::metadata(&exe).map_err(|e| GoProbeError::Exe {
            pid,
            reason: e.to_string(),
        })?;
        let file_key = (meta.dev(), meta.ino());
        if let Some(before) = self.files.get(&file_key) {
            return match before {
                Ok(()) => Ok(Attached::Already),
                Err(why) => Err(GoProbeError::Before(why.clone())),
            };
        }
        let result = attach_file(ebpf, pid, &exe, version);
        self.files.insert(
            file_key,
            result.as_ref().map(|_| ()).map_err(ToString::to_string),
        );
        result.map(|probes| Attached::New { probes })
    }
}

impl GoProbes {
    /// `sockspan check`'s real probe: attaches the program at this agent's own `main` (which
    /// never runs again, and cookie 0 makes the program return at once). The link goes with the
    /// loaded programs.
    pub fn attach_self_test(&mut self, ebpf: &mut Ebpf) -> Result<(), GoProbeError> {
        if let Some(why) = &self.unavailable {
            return Err(GoProbeError::Unavailable(why.clone()));
        }
        let exe = "/proc/self/exe";
        let file = std::fs::File::open(exe).map_err(|e| GoProbeError::Exe {
            pid: std::process::id(),
            reason: e.to_string(),
        })?;
        let found = find_functions(&file, &["main"], &[])?;
        let main = found.get("main").ok_or(GoProbeError::Missing("main"))?;
        attach_at(ebpf, exe, "main", main.file_offset, 0)
    }
}

/// Attaches the program at file offset `offset` of `exe` (all processes running it), `function`
/// naming the place in errors.
fn attach_at(
    ebpf: &mut Ebpf,
    exe: &str,
    function: &'static str,
    offset: u64,
    cookie: u64,
) -> Result<(), GoProbeError> {
    let at = UProbeAttachLocation::AbsoluteOffset(offset);
    super::attach_uprobe(ebpf, PROGRAM, at, Some(cookie), exe).map_err(|refused| match refused {
        UprobeRefused::Unavailable(why) => GoProbeError::Unavailable(why),
        UprobeRefused::Privilege(reason) => GoProbeError::Privilege(reason),
        UprobeRefused::Other(reason) => GoProbeError::Attach { function, reason },
    })
}

fn attach_file(
    ebpf: &mut Ebpf,
    pid: u32,
    exe: &str,
    version: Option<&str>,
) -> Result<usize, GoProbeError> {
    let version = version.unwrap_or("an unknown version");
    let layout = go::layout(version).ok_or_else(|| GoProbeError::Version(version.to_string()))?;
    let file = std::fs::File::open(exe).map_err(|e| GoProbeError::Exe {
        pid,
        reason: e.to_string(),
    })?;
    let functions = find_functions(&file, &[NEWPROC1, ROUND_TRIP, REQUEST_WRITE], &[NEWPROC1])?;
    let get = |name: &'static str| functions.get(name).ok_or(GoProbeError::Missing(name));
    let newproc1 = get(NEWPROC1)?;
    if newproc1.returns.is_empty() {
        return Err(GoProbeError::Missing(
            "a RET instruction in runtime.newproc1",
        ));
    }
    let mut points = vec![
        (ROUND_TRIP, get(ROUND_TRIP)?.file_offset, GoProbe::RoundTrip),
        (
            REQUEST_WRITE,
            get(REQUEST_WRITE)?.file_offset,
            GoProbe::RequestWrite,
        ),
    ];
    points.extend(
        newproc1
            .returns
            .iter()
            .map(|&at| (NEWPROC1, at, GoProbe::NewprocReturn)),
    );
    for &(function, offset, probe) in &points {
        attach_at(
            ebpf,
            exe,
            function,
            offset,
            go_probe_cookie(probe, layout.g_m, layout.m_curg),
        )?;
    }
    Ok(points.len())
}
