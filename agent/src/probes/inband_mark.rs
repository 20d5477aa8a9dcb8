//! The in-band mode's marking of the connections opened before the agent started (see
//! `agent-ebpf/src/inband_mark.rs`): its `iter/tcp` program is read once in each network
//! namespace the agent traces, right after the `sock_ops` program is attached, and marks every
//! established TCP socket there for the header-option callbacks, as the `sock_ops` program marks
//! a new one. Needs Linux 6.12 (`TCP_BPF_SOCK_OPS_CB_FLAGS` in `bpf_setsockopt`); on an older
//! kernel every socket is refused (`EINVAL`), counted and reported, and those connections carry
//! no context, as before.

use std::{
    collections::HashMap,
    fs::File,
    io::Read as _,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::PathBuf,
};

use agent_common::{INBAND_MARK_SERVER, InbandMark};
use aya::{
    Ebpf,
    maps::Array,
    programs::{Iter, iter::IterLink},
};

/// The iterator program's name in the object.
const PROGRAM: &str = "inband_mark_open";
/// Its switch between marking and only reading ([`Walk`]).
const MAP_READ_ONLY: &str = "INBAND_MARK_READ_ONLY";
/// Namespaces walked at most (a node with more pods marks the first ones found).
const MAX_NAMESPACES: usize = 4096;
/// Bytes of iterator output read at most per namespace (a record per established socket).
const MAX_OUTPUT: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    #[error(
        "the iterator that marks the connections opened before the agent could not be loaded: {0} (TCP iterators need Linux 5.15 or newer with BTF)"
    )]
    Load(String),
    #[error("map {MAP_READ_ONLY}: {0}")]
    Map(String),
    #[error("the connections of network namespace {0} could not be walked: {1}")]
    Walk(String, String),
}

/// Which connections to walk, and what to do with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Mark the established sockets of the agent's own namespace (`--netns-only`).
    MarkOwn,
    /// Mark those of every namespace a process of this host is in.
    MarkEvery,
    /// Only read each socket's flags in the agent's own namespace, changing nothing
    /// (`sockspan check`: whether this kernel takes the option).
    ReadOwn,
}

/// What a walk did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Marked {
    /// Network namespaces walked.
    pub namespaces: u64,
    /// Connecting ends marked to write options (or, read-only, whose flags were read).
    pub clients: u64,
    /// Accepting ends marked to read them (or whose flags were read).
    pub servers: u64,
    /// Sockets the kernel refused; `first_error` is the first refusal's errno.
    pub refused: u64,
    pub first_error: i32,
}

impl Marked {
    fn add(&mut self, mark: InbandMark) {
        if mark.result != 0 {
            self.refused += 1;
            if self.first_error == 0 {
                self.first_error = -mark.result;
            }
        } else if mark.end == INBAND_MARK_SERVER {
            self.servers += 1;
        } else {
            self.clients += 1;
        }
    }

    /// Why the kernel refused, for a reader: `EINVAL` is a kernel older than 6.12.
    #[must_use]
    pub fn refusal(&self) -> String {
        let errno = std::io::Error::from_raw_os_error(self.first_error);
        if self.first_error == libc::EINVAL {
            format!(
                "{errno}: this kernel's bpf_setsockopt does not take TCP_BPF_SOCK_OPS_CB_FLAGS (Linux 6.12 or newer does)"
            )
        } else {
            errno.to_string()
        }
    }
}

/// Walks the TCP sockets as `walk` says (the `sock_ops` program attached already, so that no
/// connection falls between the two).
pub fn mark_open(ebpf: &mut Ebpf, walk: Walk) -> Result<Marked, MarkError> {
    let mut switch: Array<_, u32> = Array::try_from(
        ebpf.map_mut(MAP_READ_ONLY)
            .ok_or_else(|| MarkError::Map("missing from the object".into()))?,
    )
    .map_err(|e| MarkError::Map(e.to_string()))?;
    switch
        .set(0, u32::from(walk == Walk::ReadOwn), 0)
        .map_err(|e| MarkError::Map(e.to_string()))?;
    let program: &mut Iter = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| MarkError::Load(format!("program {PROGRAM} is missing")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| MarkError::Load(e.to_string()))?;
    if program.fd().is_err() {
        // The kernel's BTF names the iterator's target; parsed for the load and dropped.
        let btf = aya::Btf::from_sys_fs().map_err(|e| MarkError::Load(e.to_string()))?;
        program
            .load("tcp", &btf)
            .map_err(|e| MarkError::Load(super::error_chain(&e)))?;
    }
    let mut marked = Marked::default();
    let own = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
    let others = if walk == Walk::MarkEvery {
        other_namespaces(own)
    } else {
        Vec::new()
    };
    walk_in(program, None, &mut marked)?;
    for path in others {
        if let Err(err) = walk_in(program, Some(path), &mut marked) {
            // A namespace gone meanwhile (its last process exited) has nothing to mark.
            tracing::debug!("in-band: {err}");
        }
    }
    Ok(marked)
}

/// Reads the iterator once in the namespace of `netns` (a `/proc/PID/ns/net`; `None`: the
/// agent's own), adding what it did to `marked`. A TCP iterator walks the namespace of the
/// thread that creates it: another namespace's is created on a thread of its own that enters
/// that namespace, and ends with it.
fn walk_in(
    program: &mut Iter,
    netns: Option<PathBuf>,
    marked: &mut Marked,
) -> Result<(), MarkError> {
    let name = netns
        .as_ref()
        .map_or_else(|| "of the agent".to_string(), |p| p.display().to_string());
    let id = program
        .attach()
        .map_err(|e| MarkError::Walk(name.clone(), super::error_chain(&e)))?;
    let link = program
        .take_link(id)
        .map_err(|e| MarkError::Walk(name.clone(), super::error_chain(&e)))?;
    let output = match netns {
        None => read_iterator(link),
        Some(path) => std::thread::Builder::new()
            .name("inband-mark".into())
            .spawn(move || {
                let ns = File::open(&path).map_err(|e| e.to_string())?;
                // SAFETY: setns on this thread alone (a thread of its own, ended right after)
                // with an open namespace file.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error().to_string());
                }
                read_iterator(link)
            })
            .map_err(|e| e.to_string())
            .and_then(|thread| thread.join().map_err(|_| "its thread panicked".to_string()))
            .and_then(|read| read),
    }
    .map_err(|e| MarkError::Walk(name, e))?;
    marked.namespaces += 1;
    for record in output.chunks_exact(size_of::<InbandMark>()) {
        let int = |at: usize| {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(&record[at..at + 4]);
            bytes
        };
        marked.add(InbandMark {
            result: i32::from_ne_bytes(int(0)),
            end: u32::from_ne_bytes(int(4)),
        });
    }
    Ok(())
}

/// Creates the iterator from `link` (in the calling thread's namespace) and reads it whole
/// (up to [`MAX_OUTPUT`], a warning past it). The kernel ends a read with `EAGAIN` after a
/// million sockets that wrote nothing (listening ones, other states): the walk goes on with
/// the next read.
fn read_iterator(link: IterLink) -> Result<Vec<u8>, String> {
    let mut file = link.into_file().map_err(|e| super::error_chain(&e))?;
    let mut output = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut stalled = 0;
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                output.extend_from_slice(&chunk[..n]);
                if output.len() as u64 >= MAX_OUTPUT {
                    tracing::warn!(
                        "in-band: more than {MAX_OUTPUT} bytes of marks in one namespace; the rest of its connections opened before the agent are not marked"
                    );
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && stalled < 64 => stalled += 1,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(output)
}

/// One `/proc/PID/ns/net` per network namespace other than `own` that a process is in.
fn other_namespaces(own: u64) -> Vec<PathBuf> {
    let mut found: HashMap<u64, PathBuf> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        if found.len() >= MAX_NAMESPACES {
            tracing::warn!(
                "in-band: more than {MAX_NAMESPACES} network namespaces; the connections of the others opened before the agent are not marked"
            );
            break;
        }
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path().join("ns/net");
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.ino() != own
        {
            found.entry(meta.ino()).or_insert(path);
        }
    }
    found.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::INBAND_MARK_CLIENT;

    #[test]
    fn tallies_marks_and_names_the_first_refusal() {
        let mut marked = Marked::default();
        for (result, end) in [
            (0, INBAND_MARK_CLIENT),
            (0, INBAND_MARK_SERVER),
            (0, INBAND_MARK_CLIENT),
            (-libc::EINVAL, INBAND_MARK_CLIENT),
            (-libc::EPERM, INBAND_MARK_SERVER),
        ] {
            marked.add(InbandMark { result, end });
        }
        assert_eq!((marked.clients, marked.servers, marked.refused), (2, 1, 2));
        assert_eq!(marked.first_error, libc::EINVAL);
        assert!(
            marked.refusal().contains("Linux 6.12"),
            "{}",
            marked.refusal()
        );
    }
}
