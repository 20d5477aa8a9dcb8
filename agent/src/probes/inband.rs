//! The in-band mode's kernel side (`--in-band`): the `sock_ops` program on the root cgroup that
//! writes and reads the TCP header option, and the programs' list of processes whose threads
//! serve one request at a time (the only ones whose CLIENT requests carry their thread's trace;
//! see `agent-ebpf/src/inband.rs`).

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{CgroupAttachMode, SockOps},
};

/// Where the unified (v2) cgroup hierarchy is mounted on current distributions; systems with
/// both hierarchies (systemd's hybrid layout) mount it at `/sys/fs/cgroup/unified`. The mount
/// table says which ([`cgroup2_root`]).
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup";
/// The `sock_ops` program's name in the object.
const PROGRAM: &str = "inband_sock_ops";
/// The programs' list of processes ([`InbandProbes::allow`]).
const MAP_PROCESSES: &str = "INBAND_PROCESSES";

#[derive(Debug, thiserror::Error)]
pub enum InbandError {
    #[error(
        "no cgroup v2 (unified) hierarchy is mounted ({0}); the in-band mode attaches a sock_ops program to its root: mount one (`mount -t cgroup2 none {CGROUP2_ROOT}`, or anywhere else)"
    )]
    NoCgroup2(String),
    #[error("the in-band sock_ops program could not be loaded: {0}")]
    Load(String),
    #[error(
        "the in-band sock_ops program could not be attached to the cgroup v2 root {0}: {1}; it needs CAP_NET_ADMIN and CAP_BPF (or root)"
    )]
    Attach(String, String),
    #[error("map {MAP_PROCESSES}: {0}")]
    Map(String),
    #[error(
        "the network namespace's cookie cannot be read ({0}); `--in-band` with `--netns-only` needs Linux 5.14 or newer (SO_NETNS_COOKIE)"
    )]
    NetnsCookie(String),
}

/// The attached `sock_ops` program (detached when the object is dropped) and the process list.
pub struct InbandProbes {
    processes: HashMap<MapData, u32, u32>,
}

impl InbandProbes {
    /// Loads the `sock_ops` program and attaches it to the cgroup v2 directory `cgroup` (by
    /// default the hierarchy's root), alongside any other program there: it only adds a
    /// header option to segments it has a context for.
    pub fn attach(ebpf: &mut Ebpf, cgroup: Option<&std::path::Path>) -> Result<Self, InbandError> {
        let path = match cgroup {
            Some(dir) => dir.display().to_string(),
            None => cgroup2_root()?,
        };
        let root = std::fs::File::open(&path)
            .map_err(|e| InbandError::NoCgroup2(format!("{path}: {e}")))?;
        let program: &mut SockOps = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| InbandError::Load(format!("program {PROGRAM} is missing")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| InbandError::Load(e.to_string()))?;
        program
            .load()
            .map_err(|e| InbandError::Load(super::error_chain(&e)))?;
        program
            .attach(root, CgroupAttachMode::Single)
            .map_err(|e| InbandError::Attach(path.clone(), super::error_chain(&e)))?;
        let map = ebpf
            .take_map(MAP_PROCESSES)
            .ok_or_else(|| InbandError::Map("missing from the object".into()))?;
        let processes = HashMap::try_from(map).map_err(|e| InbandError::Map(e.to_string()))?;
        Ok(Self { processes })
    }

    /// Classifies `pid` for the programs: `threads_serve_one` (not Go, not Node.js) lets its
    /// CLIENT requests carry their thread's trace; otherwise they carry one only from threads
    /// that serve nothing (its roots).
    pub fn classify(&mut self, pid: u32, threads_serve_one: bool) -> Result<(), InbandError> {
        self.processes
            .insert(pid, if threads_serve_one { 1 } else { 2 }, 0)
            .map_err(|e| InbandError::Map(e.to_string()))
    }

    /// Takes `pid` off the list (it exited, or runs something else now).
    pub fn forget(&mut self, pid: u32) {
        let _ = self.processes.remove(&pid);
    }
}

/// The cookie of the network namespace the agent runs in (`SO_NETNS_COOKIE` of a socket of its
/// own), which the `sock_ops` program compares with its sockets' (`--netns-only`).
pub fn own_netns_cookie() -> Result<u64, InbandError> {
    use std::os::fd::AsRawFd as _;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| InbandError::NetnsCookie(e.to_string()))?;
    let mut cookie: u64 = 0;
    let mut len = libc::socklen_t::try_from(size_of::<u64>()).unwrap_or(8);
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which lives across the call;
    // the fd is the open socket above.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &raw mut len,
        )
    };
    if result != 0 || cookie == 0 {
        return Err(InbandError::NetnsCookie(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    Ok(cookie)
}

/// Where the cgroup v2 hierarchy's root is mounted, from `/proc/self/mountinfo` (the first
/// `cgroup2` mount whose root is the hierarchy's root).
pub fn cgroup2_root() -> Result<String, InbandError> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| InbandError::NoCgroup2(format!("/proc/self/mountinfo: {e}")))?;
    cgroup2_in(&table).ok_or_else(|| InbandError::NoCgroup2("none in /proc/self/mountinfo".into()))
}

/// The mount point of the first `cgroup2` mount of the hierarchy's root in a mount table
/// (`proc(5)`: `ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [TAGS...] - TYPE SOURCE OPTIONS`).
fn cgroup2_in(table: &str) -> Option<String> {
    table.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = mount.split_whitespace().skip(3);
        let (root, point) = (fields.next()?, fields.next()?);
        (root == "/").then(|| point.replace("\\040", " "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_hierarchy_in_hybrid_and_unified_layouts() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n\
            36 30 0:32 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
            41 30 0:37 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_in(hybrid).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_in(unified).as_deref(), Some("/sys/fs/cgroup"));
        // A container's view of its own sub-tree is not the root.
        let nested = "50 40 0:26 /kubepods/pod1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_in(nested), None);
        assert_eq!(cgroup2_in("garbage\n"), None);
    }
}
