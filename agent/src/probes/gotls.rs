//! The Go `crypto/tls` probes (`go_tls_enter`, `go_tls_return` in agent-ebpf): attached to each
//! Go executable that links `crypto/tls`, by device and inode, so every process running it is
//! covered, in containers too (`/proc/<pid>/exe` reaches the file). Entry probes at
//! `(*tls.Conn).Write` and `(*tls.Conn).Read`, and a probe at each of their `RET` instructions
//! (found by decoding the functions, as the goroutine probes' are): a uretprobe would break Go's
//! stack moves.
//!
//! The registers read are Go's `ABIInternal` on amd64 (Go 1.17 and later): older releases pass
//! arguments on the stack and are left off, logged. `--no-runtime-probes tls` leaves them off.

use std::{collections::HashMap, os::unix::fs::MetadataExt as _};

use agent_common::SslFunction;
use aya::{Ebpf, programs::uprobe::UProbeAttachLocation};

use super::{
    UprobeRefused,
    tls::{Library, TlsProbeError},
};
use crate::runtime::go::symbols::find_functions;

pub const ENTER: &str = "go_tls_enter";
pub const RETURN: &str = "go_tls_return";

/// What attaching to one Go executable gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoTlsAttached {
    /// The probes are on that file now: the executable and how many.
    New(Library),
    /// Another process of the same file had them attached already, or the executable does not
    /// link `crypto/tls`.
    Nothing,
}

/// Loads the programs once; attaches per Go executable.
pub struct GoTlsProbes {
    unavailable: Option<String>,
    /// (device, inode) of the Go executables met, and what attaching gave.
    files: HashMap<(u64, u64), Option<Library>>,
}

impl GoTlsProbes {
    /// Loads the two programs from `ebpf`. A failure is kept, not returned: the agent then
    /// traces Go programs without TLS plaintext and says why.
    pub fn load(ebpf: &mut Ebpf) -> Self {
        Self {
            unavailable: super::load_uprobes(
                ebpf,
                &[ENTER, RETURN],
                "uprobe attach cookies need Linux 5.15 or newer",
            ),
            files: HashMap::new(),
        }
    }

    /// The Go executables with `crypto/tls` met so far.
    pub fn executables(&self) -> impl Iterator<Item = &Library> {
        self.files.values().flatten()
    }

    /// Attaches to the executable of `pid`, a Go program built by `version`.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        exe_name: &str,
        version: Option<&str>,
    ) -> Result<GoTlsAttached, TlsProbeError> {
        if let Some(why) = &self.unavailable {
            return Err(TlsProbeError::Unavailable(why.clone()));
        }
        let exe = format!("/proc/{pid}/exe");
        let Ok(meta) = std::fs::metadata(&exe) else {
            return Ok(GoTlsAttached::Nothing);
        };
        let key = (meta.dev(), meta.ino());
        if self.files.contains_key(&key) {
            return Ok(GoTlsAttached::Nothing);
        }
        let result = attach_executable(ebpf, &exe, exe_name, version);
        if let Err(TlsProbeError::Privilege(reason)) = &result {
            // Not this file's fault: every other would fail the same way, after the cost of
            // reading its symbols.
            self.unavailable = Some(format!(
                "uprobes are refused without CAP_SYS_ADMIN on this kernel ({reason})"
            ));
            return result.map(|_| GoTlsAttached::Nothing);
        }
        let library = match result {
            Ok(None) => None,
            Ok(Some(probes)) => Some(Library {
                path: exe_name.to_string(),
                result: Ok(probes),
            }),
            Err(e) => Some(Library {
                path: exe_name.to_string(),
                result: Err(e.to_string()),
            }),
        };
        self.files.insert(key, library.clone());
        Ok(library.map_or(GoTlsAttached::Nothing, GoTlsAttached::New))
    }
}

/// Whether Go `version` (`go1.N…`) passes arguments in registers (`ABIInternal`, Go 1.17+).
fn register_abi(version: &str) -> bool {
    version
        .strip_prefix("go1.")
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|m| m.parse::<u32>().ok())
        })
        .is_some_and(|minor| minor >= 17)
}

/// Attaches at the entries and `RET`s of `(*Conn).Write` and `(*Conn).Read`. `None` when the
/// executable does not link `crypto/tls`.
fn attach_executable(
    ebpf: &mut Ebpf,
    exe: &str,
    name: &str,
    version: Option<&str>,
) -> Result<Option<usize>, TlsProbeError> {
    let file = std::fs::File::open(exe).map_err(|e| TlsProbeError::Attach {
        function: "(the executable)",
        library: name.to_string(),
        reason: e.to_string(),
    })?;
    let symbols = SslFunction::GO.map(SslFunction::symbol);
    let found = find_functions(&file, &symbols, &symbols).map_err(|e| TlsProbeError::Attach {
        function: "(the symbol tables)",
        library: name.to_string(),
        reason: e.to_string(),
    })?;
    if found.is_empty() {
        return Ok(None);
    }
    let version = version.unwrap_or("an unknown Go release");
    if !register_abi(version) {
        return Err(TlsProbeError::Attach {
            function: "crypto/tls",
            library: name.to_string(),
            reason: format!(
                "{version} passes arguments on the stack; the probes read Go 1.17+ registers"
            ),
        });
    }
    // Every point first, so that a missing function attaches nothing. `Write` and `Read` are
    // needed; a handshake the program never does (a client-only program has no
    // `serverHandshake`) is left out. Each function's RETs before its entry: a call entered
    // while its returns are not yet probed would leave a stale entry for its goroutine.
    let mut points = Vec::new();
    for function in SslFunction::GO {
        let symbol = function.symbol();
        let needed = matches!(function, SslFunction::GoWrite | SslFunction::GoRead);
        let at = match found.get(symbol) {
            Some(at) if !at.returns.is_empty() => at,
            None if !needed => continue,
            found => {
                return Err(TlsProbeError::Attach {
                    function: symbol,
                    library: name.to_string(),
                    reason: if found.is_some() {
                        "no RET instruction found".into()
                    } else {
                        "not in the executable".into()
                    },
                });
            }
        };
        points.extend(at.returns.iter().map(|&ret| (RETURN, ret, function)));
        points.push((ENTER, at.file_offset, function));
    }
    for &(program, offset, function) in &points {
        attach_at(
            ebpf,
            program,
            exe,
            name,
            function.symbol(),
            offset,
            function as u64,
        )?;
    }
    let attached = points.len();
    Ok(Some(attached))
}

fn attach_at(
    ebpf: &mut Ebpf,
    program_name: &'static str,
    exe: &str,
    name: &str,
    function: &'static str,
    offset: u64,
    cookie: u64,
) -> Result<(), TlsProbeError> {
    let at = UProbeAttachLocation::AbsoluteOffset(offset);
    super::attach_uprobe(ebpf, program_name, at, Some(cookie), exe).map_err(|refused| match refused
    {
        UprobeRefused::Unavailable(why) => TlsProbeError::Unavailable(why),
        UprobeRefused::Privilege(reason) => TlsProbeError::Privilege(reason),
        UprobeRefused::Other(reason) => TlsProbeError::Attach {
            function,
            library: name.to_string(),
            reason,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_arguments_came_with_go_1_17() {
        assert!(register_abi("go1.19.8"));
        assert!(register_abi("go1.17"));
        assert!(register_abi("go1.22rc1"));
        assert!(!register_abi("go1.16.15"));
        assert!(!register_abi("devel +abc"));
    }
}
