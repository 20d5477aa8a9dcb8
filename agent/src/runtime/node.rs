//! Node.js processes: where libuv's `uv__stream_io` is, for the callback probes
//! (`agent-ebpf/src/node.rs`). It is in the `node` executable when libuv is linked in (the
//! nodejs.org and `NodeSource` builds, whose `.symtab` names it), else in the `libuv.so` the
//! process maps (Debian's build links one, stripped: then it is nowhere, and the agent says so).

use std::path::{Path, PathBuf};

use iced_x86::{Decoder, DecoderOptions, MemorySize, Mnemonic, OpKind, Register};
use object::{Object as _, ObjectSymbol as _, ReadCache, SymbolKind};

/// The function probed: every libuv stream watcher's callback.
pub const STREAM_IO: &str = "uv__stream_io";

/// `uv__io_t.fd`, as the probe reads it (`UV_IO_FD` in agent-ebpf).
const UV_IO_FD: i64 = 48;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error(
        "`{STREAM_IO}` is in neither {files}: the executable's and libuv's symbols were stripped; a Node.js build that keeps them (nodejs.org, NodeSource) has it"
    )]
    Missing { files: String },
    #[error(
        "`{STREAM_IO}` in {file} never compares `fd` at offset {UV_IO_FD} of its watcher with -1: not the libuv layout the probe reads"
    )]
    Layout { file: String },
}

/// Where the probes attach for one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamIo {
    /// The file, reached through the process's root (`/proc/<pid>/root/...` or its `exe`).
    pub file: PathBuf,
    /// The file as the process names it, for logs.
    pub shown: String,
    /// File offset of `uv__stream_io`'s first instruction.
    pub file_offset: u64,
}

/// Finds `uv__stream_io` for process `pid`: in its executable, else in a libuv it maps.
pub fn find_stream_io(pid: u32) -> Result<StreamIo, NodeError> {
    let mut candidates = vec![(
        PathBuf::from(format!("/proc/{pid}/exe")),
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .map_or_else(|_| "the executable".into(), |p| p.display().to_string()),
    )];
    candidates.extend(mapped_libuv(pid).into_iter().map(|path| {
        let inside = PathBuf::from(format!("/proc/{pid}/root"))
            .join(path.strip_prefix("/").unwrap_or(&path));
        (inside, path.display().to_string())
    }));
    for (file, shown) in &candidates {
        if let Some(file_offset) = stream_io_in(file, shown)? {
            return Ok(StreamIo {
                file: file.clone(),
                shown: shown.clone(),
                file_offset,
            });
        }
    }
    Err(NodeError::Missing {
        files: candidates
            .iter()
            .map(|(_, shown)| shown.as_str())
            .collect::<Vec<_>>()
            .join(" nor "),
    })
}

/// The libuv shared objects process `pid` maps.
fn mapped_libuv(pid: u32) -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = Vec::new();
    for path in maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
    {
        let is_libuv = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libuv.so"));
        if is_libuv && !found.iter().any(|f| f == Path::new(path)) {
            found.push(PathBuf::from(path));
        }
    }
    found
}

/// The file offset of `uv__stream_io` in `file`, `None` when its symbols do not name it.
fn stream_io_in(file: &Path, shown: &str) -> Result<Option<u64>, NodeError> {
    let read_error = |reason: String| NodeError::Read {
        path: shown.to_string(),
        reason,
    };
    let handle = std::fs::File::open(file).map_err(|e| read_error(e.to_string()))?;
    let cache = ReadCache::new(handle);
    let elf = object::File::parse(&cache).map_err(|e| read_error(e.to_string()))?;
    let Some(symbol) = elf
        .symbols()
        .find(|s| s.kind() == SymbolKind::Text && s.address() != 0 && s.name() == Ok(STREAM_IO))
    else {
        return Ok(None);
    };
    let (file_offset, code) = super::elf::code_at(&elf, symbol.address(), symbol.size())
        .ok_or_else(|| read_error(format!("`{STREAM_IO}` has no bytes in the file")))?;
    if !checks_fd_at_offset(code) {
        return Err(NodeError::Layout {
            file: shown.to_string(),
        });
    }
    Ok(Some(file_offset))
}

/// Whether `code` compares a 32-bit field at [`UV_IO_FD`] of some register with -1: libuv's
/// `uv__stream_fd(stream) == -1` on the watcher, which tells that the probe reads the fd where
/// this build keeps it.
fn checks_fd_at_offset(code: &[u8]) -> bool {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    while decoder.can_decode() {
        let i = decoder.decode();
        if i.mnemonic() == Mnemonic::Cmp
            && i.op_count() == 2
            && i.op0_kind() == OpKind::Memory
            && matches!(i.memory_size(), MemorySize::Int32 | MemorySize::UInt32)
            && i.memory_index() == Register::None
            && i.memory_displacement64().cast_signed() == UV_IO_FD
            && i.immediate(1).cast_signed() as i32 == -1
            && matches!(i.op1_kind(), OpKind::Immediate8to32 | OpKind::Immediate32)
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_check_is_found_by_decoding() {
        // push rbp ; cmp dword [rbx+0x30], -1 ; ret   (as in Node.js 20's uv__stream_io)
        assert!(checks_fd_at_offset(&[0x55, 0x83, 0x7b, 0x30, 0xff, 0xc3]));
        // cmp dword [rbx+0x28], -1: another offset.
        assert!(!checks_fd_at_offset(&[0x83, 0x7b, 0x28, 0xff, 0xc3]));
        // cmp dword [rbx+0x30], 0.
        assert!(!checks_fd_at_offset(&[0x83, 0x7b, 0x30, 0x00, 0xc3]));
        // The same bytes inside a longer instruction are not it: mov eax, 0xff307b83.
        assert!(!checks_fd_at_offset(&[0xb8, 0x83, 0x7b, 0x30, 0xff]));
    }

    /// The machine's Node.js (the one the causality tests run), when it is there.
    #[test]
    fn the_installed_node_has_the_probed_function_or_says_why_not() {
        let Ok(path) = which("node") else {
            return;
        };
        match stream_io_in(&path, &path.display().to_string()) {
            Ok(Some(offset)) => assert!(offset > 0),
            Ok(None) => eprintln!("{}: no `{STREAM_IO}` symbol", path.display()),
            Err(e) => panic!("{e}"),
        }
    }

    fn which(name: &str) -> Result<PathBuf, ()> {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .and_then(|p| p.canonicalize().ok())
            .ok_or(())
    }
}
