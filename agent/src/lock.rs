//! One agent per host: an exclusive `flock` on a pid file. The kernel drops the lock when the
//! process dies, however it dies (`kill -9` included), so a stale file never blocks a restart.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

/// Where the lock lives unless `SOCKSPAN_LOCK_FILE` says otherwise.
pub const DEFAULT_LOCK_FILE: &str = "/run/sockspan/agent.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another sockspan agent is already running on this host (pid {pid}, lock {path}); stop it first, or run `sockspan events` for a second, read-only view"
    )]
    Held { pid: String, path: String },
    #[error("cannot create the agent lock {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Held while the agent runs; released on drop or death.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

fn lock_path(netns: Option<u64>) -> PathBuf {
    let path = std::env::var_os("SOCKSPAN_LOCK_FILE")
        .map_or_else(|| PathBuf::from(DEFAULT_LOCK_FILE), PathBuf::from);
    match netns {
        Some(inum) => path.with_extension(format!("netns-{inum}.lock")),
        None => path,
    }
}

/// Takes the agent lock: host-wide, or the network namespace's when the agent traces only
/// that one (`--netns-only`, inode number `netns`).
pub fn acquire(netns: Option<u64>) -> Result<InstanceLock, LockError> {
    acquire_at(&lock_path(netns))
}

pub fn acquire_at(path: &Path) -> Result<InstanceLock, LockError> {
    let io = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    // SAFETY: flock on an fd this function owns; LOCK_NB makes it return at once.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(LockError::Held {
                pid: pid.trim().to_string(),
                path: path.display().to_string(),
            });
        }
        return Err(io(err));
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(InstanceLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_pid() {
        let path = std::env::temp_dir().join(format!("sockspan-lock-test-{}", std::process::id()));
        let first = acquire_at(&path).expect("first");
        // flock locks belong to the open file description: a second open conflicts even in-process.
        let err = acquire_at(&path).expect_err("second");
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        let again = acquire_at(&path).expect("free after drop");
        drop(again);
        let _ = std::fs::remove_file(&path);
    }
}
