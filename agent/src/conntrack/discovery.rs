//! Sockets that were open before the agent started, and listening ports, read from procfs.
//!
//! The kernel side reports such a socket when it is first used, with its tuple read from the
//! kernel but no role (it never saw the `accept` or `connect`). Procfs fills that gap: a socket
//! whose local port is a listening port of its network namespace is the server end.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use procfs::net::{TcpNetEntry, TcpState};

/// A TCP socket found in `/proc/<pid>/fd` and `/proc/<pid>/net/tcp{,6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredSocket {
    pub pid: u32,
    pub fd: i32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub listening: bool,
    /// The socket's inode: the same fd number may name another socket later.
    pub inode: u64,
    /// The network namespace of its process (`/proc/<pid>/ns/net`'s inode), read during the scan.
    pub netns: u64,
}

impl DiscoveredSocket {
    /// Whether the process may still hold this socket at the same fd (procfs: `false` once
    /// the process or the fd is gone, or the fd names another file; `true` when procfs cannot
    /// tell).
    #[must_use]
    pub fn still_open(&self) -> bool {
        match std::fs::read_link(format!("/proc/{}/fd/{}", self.pid, self.fd)) {
            Ok(target) => target.as_os_str() == format!("socket:[{}]", self.inode).as_str(),
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        }
    }
}

/// Network namespace of a process, as the inode number of `/proc/<pid>/ns/net`.
#[must_use]
pub fn netns_of(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let text = link.to_str()?;
    text.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// The TCP tables (v4 and v6) of the namespace `process` lives in; `None` when either cannot be
/// read (the process exited: its `/proc/<pid>/net` is gone, and empty tables would say that no
/// port listens, making the server end of a connection its client).
fn tcp_tables(process: &procfs::process::Process) -> Option<Vec<TcpNetEntry>> {
    let mut entries = process.tcp().ok()?;
    // A host without IPv6 (`ipv6.disable=1`, or a kernel built without it) has no tcp6 table:
    // empty, not unreadable.
    match process.tcp6() {
        Ok(v6) => entries.extend(v6),
        Err(_) if !ipv6_tables() => {}
        Err(_) => return None,
    }
    Some(entries)
}

/// Whether this kernel keeps IPv6 TCP tables (`/proc/net/tcp6`), looked at once.
fn ipv6_tables() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| std::path::Path::new("/proc/net/tcp6").exists())
}

/// Scans every process except `skip_pid` for open TCP sockets (only those in network namespace
/// `only_netns`, when given).
#[must_use]
pub fn scan(skip_pid: u32, only_netns: Option<u64>) -> Vec<DiscoveredSocket> {
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let mut tables: HashMap<u64, HashMap<u64, TcpNetEntry>> = HashMap::new();
    let mut found = Vec::new();
    for process in processes.flatten() {
        let pid = process.pid as u32;
        if pid == skip_pid {
            continue;
        }
        let Ok(fds) = process.fd() else { continue };
        let sockets: Vec<(i32, u64)> = fds
            .flatten()
            .filter_map(|fd| match fd.target {
                procfs::process::FDTarget::Socket(inode) => Some((fd.fd, inode)),
                _ => None,
            })
            .collect();
        if sockets.is_empty() {
            continue;
        }
        let Some(netns) = netns_of(pid) else { continue };
        if only_netns.is_some_and(|only| only != netns) {
            continue;
        }
        let table = match tables.entry(netns) {
            std::collections::hash_map::Entry::Occupied(read) => read.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                // Unreadable (the process just exited): the next process in the namespace
                // reads it.
                let Some(entries) = tcp_tables(&process) else {
                    continue;
                };
                slot.insert(
                    entries
                        .into_iter()
                        .map(|entry| (entry.inode, entry))
                        .collect(),
                )
            }
        };
        for (fd, inode) in sockets {
            if let Some(entry) = table.get(&inode) {
                found.push(DiscoveredSocket {
                    pid,
                    fd,
                    local: entry.local_address,
                    remote: entry.remote_address,
                    listening: entry.state == TcpState::Listen,
                    inode,
                    netns,
                });
            }
        }
    }
    found
}

/// Listening TCP ports per network namespace, re-read when older than `ttl`.
pub struct ListeningPorts {
    by_netns: HashMap<u64, (Instant, HashSet<u16>)>,
    ttl: Duration,
}

impl ListeningPorts {
    #[must_use]
    pub fn new(ttl: Duration) -> Self {
        Self {
            by_netns: HashMap::new(),
            ttl,
        }
    }

    /// Whether `port` is a listening TCP port in the network namespace of `pid`; `None` when the
    /// process is gone and its namespace unknown, or its tables cannot be read (then the role
    /// stays unknown, and the protocol's first bytes tell it).
    pub fn is_listening(&mut self, pid: u32, port: u16) -> Option<bool> {
        let netns = netns_of(pid)?;
        let now = Instant::now();
        let stale = self
            .by_netns
            .get(&netns)
            .is_none_or(|(at, _)| now.duration_since(*at) >= self.ttl);
        if stale {
            let process = procfs::process::Process::new(pid as i32).ok()?;
            let ports = tcp_tables(&process)?
                .into_iter()
                .filter(|e| e.state == TcpState::Listen)
                .map(|e| e.local_address.port())
                .collect();
            if self.by_netns.len() > 4096 {
                self.by_netns.clear();
            }
            self.by_netns.insert(netns, (now, ports));
        }
        self.by_netns
            .get(&netns)
            .map(|(_, ports)| ports.contains(&port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Read as _, net::TcpListener, os::fd::AsRawFd as _};

    #[test]
    fn finds_a_connection_and_its_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        // Scan ourselves (skip nobody).
        let found = scan(0, None);
        let me = std::process::id();
        let mine: Vec<_> = found.iter().filter(|s| s.pid == me).collect();
        let client_local = client.local_addr().expect("local");
        assert!(
            mine.iter().any(|s| s.fd == client.as_raw_fd()
                && s.local == client_local
                && s.remote.port() == port),
            "{mine:?}"
        );
        assert!(
            mine.iter()
                .any(|s| s.fd == listener.as_raw_fd() && s.listening)
        );
        let mut ports = ListeningPorts::new(Duration::from_secs(5));
        assert_eq!(ports.is_listening(me, port), Some(true));
        assert_eq!(ports.is_listening(me, client_local.port()), Some(false));
        drop(client);
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).expect("eof"), 0);
    }
}
