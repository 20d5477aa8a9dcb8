//! Stage 3 of the pipeline: the user-space connection table.
//!
//! Keyed by the kernel's connection id, so a reused fd number is a new connection. Entries go on
//! close, after `idle_timeout` without traffic, and — oldest first — when the table reaches
//! `max_conns`. Roles the kernel could not see (sockets older than the agent) are inferred from
//! the listening ports of the process's network namespace.

pub mod discovery;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use agent_common::{ConnEvent, DataEvent, Role, SOCK_STREAM, SockTuple};

use crate::{
    net::tuple_addrs,
    process::{ProcessCache, ProcessInfo},
};
use discovery::{DiscoveredSocket, ListeningPorts};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Hard bound on tracked connections.
    pub max_conns: usize,
    /// A connection with no traffic for this long is forgotten.
    pub idle_timeout: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self {
            max_conns: 65_536,
            idle_timeout: Duration::from_mins(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("conntrack max-conns must be at least 16, got {0}")]
    MaxConns(usize),
    #[error("conntrack idle-timeout must be at least 1s, got {0:?}")]
    IdleTimeout(Duration),
}

impl ConntrackConfig {
    pub fn validate(&self) -> Result<(), ConntrackError> {
        if self.max_conns < 16 {
            return Err(ConntrackError::MaxConns(self.max_conns));
        }
        if self.idle_timeout < Duration::from_secs(1) {
            return Err(ConntrackError::IdleTimeout(self.idle_timeout));
        }
        Ok(())
    }
}

/// How the role of a connection is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleSource {
    /// The `accept`/`connect` was seen.
    Syscall,
    /// Inferred from the listening ports in procfs.
    Procfs,
    /// Not known.
    Unknown,
}

impl RoleSource {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Syscall => "syscall",
            Self::Procfs => "procfs",
            Self::Unknown => "unknown",
        }
    }
}

/// A tracked connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub conn_id: u64,
    pub tuple: SockTuple,
    pub role: Role,
    pub role_source: RoleSource,
    /// The socket was already open when the agent started (found by the procfs scan).
    pub preexisting: bool,
    pub opened_ns: u64,
    pub last_seen_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub process: Arc<ProcessInfo>,
    /// Its bytes come as TLS plaintext from the library probes (the socket's own are
    /// ciphertext, never sent).
    pub tls: bool,
    /// The socket's fd in its process.
    pub fd: i32,
    /// What the opening syscall ran in (`ConnEvent::task`: in Node.js, the libuv callback).
    pub opened_in: u64,
    /// Shed by the budget: silent by design, so never forgotten as idle or evicted (the budget
    /// must resume it or see it close).
    pub pinned: bool,
}

#[cfg(test)]
impl Connection {
    /// A loopback TCP connection of process `pid` for the tracer's tests; its fd is its id.
    pub fn loopback_for_test(
        conn_id: u64,
        pid: u32,
        role: Role,
        local_port: u16,
        remote_port: u16,
    ) -> Self {
        Self {
            conn_id,
            tuple: crate::net::loopback_tuple(local_port, remote_port),
            role,
            role_source: RoleSource::Syscall,
            preexisting: false,
            opened_ns: 0,
            last_seen_ns: 0,
            bytes_sent: 0,
            bytes_received: 0,
            process: Arc::new(ProcessInfo {
                pid,
                comm: format!("p{pid}"),
                ..ProcessInfo::default()
            }),
            tls: false,
            fd: i32::try_from(conn_id).unwrap_or(-1),
            opened_in: 0,
            pinned: false,
        }
    }
}

impl Connection {
    /// Seen from its opening (`connect`, `accept`), not first at a data syscall: a socket open
    /// before the agent, or one the agent lost track of (its opening dropped by a full ring, or
    /// evicted) and the programs announced again. Only then do its ends' stream offsets count
    /// from the same byte, and does the syscall it was opened in say who opened it.
    #[must_use]
    pub fn seen_from_start(&self) -> bool {
        !self.preexisting && self.role_source == RoleSource::Syscall
    }

    /// Local and remote endpoints.
    #[must_use]
    pub fn addrs(&self) -> (SocketAddr, SocketAddr) {
        tuple_addrs(&self.tuple)
    }
}

/// Self-metrics of the connection table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackStats {
    pub opened: u64,
    pub closed: u64,
    pub evicted_idle: u64,
    pub evicted_full: u64,
    /// Data events for a connection the table did not know (its open event was lost).
    pub data_unknown_conn: u64,
    /// Pre-existing sockets whose procfs tuple disagreed with the kernel's.
    pub tuple_mismatches: u64,
    /// Connections first seen in use that were not open at start-up: the programs lost their
    /// opening (under more live sockets than `--max-conns`, or the agent had them forget it) and
    /// announced them again
    /// at a data syscall. What they carried before that syscall was not seen: a request read
    /// then has no span (`tests/hardening.rs` saw a server end of nginx announced at its
    /// response's write, under more live sockets than `--max-conns`).
    pub seen_in_use: u64,
    /// Most connections tracked at once.
    pub peak: u64,
}

pub struct Conntrack {
    config: ConntrackConfig,
    conns: HashMap<u64, Connection, foldhash::fast::RandomState>,
    preexisting: HashMap<(u32, i32), DiscoveredSocket>,
    /// The sockets of `preexisting` whose local port was listening in their network namespace
    /// at start-up: server ends (the others are client ends). Judged then, because by the time
    /// such a socket's first record is read its process may have exited, its listener and its
    /// `/proc/<pid>/net` with it.
    servers_at_start: HashSet<(u32, i32)>,
    /// Sockets of `preexisting` still to be checked in this turn of
    /// [`Conntrack::forget_closed_unseen`].
    unseen_to_check: Vec<(u32, i32)>,
    listening: ListeningPorts,
    pub processes: ProcessCache,
    pub stats: ConntrackStats,
}

impl Conntrack {
    /// A table that knows the sockets `discovered` at start-up.
    #[must_use]
    pub fn new(config: ConntrackConfig, discovered: Vec<DiscoveredSocket>) -> Self {
        let listening: HashSet<(u64, u16)> = discovered
            .iter()
            .filter(|s| s.listening)
            .map(|s| (s.netns, s.local.port()))
            .collect();
        let servers_at_start = discovered
            .iter()
            .filter(|s| !s.listening && listening.contains(&(s.netns, s.local.port())))
            .map(|s| (s.pid, s.fd))
            .collect();
        // A listening socket carries no stream: connections it accepts later are seen open.
        let preexisting = discovered
            .into_iter()
            .filter(|s| !s.listening)
            .map(|s| ((s.pid, s.fd), s))
            .collect();
        Self {
            conns: HashMap::with_capacity_and_hasher(
                config.max_conns.min(4096),
                foldhash::fast::RandomState::default(),
            ),
            config,
            preexisting,
            servers_at_start,
            unseen_to_check: Vec::new(),
            listening: ListeningPorts::new(Duration::from_secs(2)),
            processes: ProcessCache::new(16_384, Duration::from_secs(30)),
            stats: ConntrackStats::default(),
        }
    }

    #[must_use]
    pub fn open_count(&self) -> usize {
        self.conns.len()
    }

    #[must_use]
    pub fn contains(&self, conn_id: u64) -> bool {
        self.conns.contains_key(&conn_id)
    }

    #[must_use]
    pub fn get(&self, conn_id: u64) -> Option<&Connection> {
        self.conns.get(&conn_id)
    }

    /// Whether process `pid` has a connection open that may be a client end (one it connected,
    /// or one whose role is unknown). A scan of the table: for the budget, once per process
    /// and episode.
    #[must_use]
    pub fn may_call_out(&self, pid: u32) -> bool {
        self.conns
            .values()
            .any(|c| c.process.pid == pid && c.role != Role::Server)
    }

    /// Whether process `pid` has a connection open that may be a server end (one it accepted,
    /// or one whose role is unknown). A scan of the table, as [`Conntrack::may_call_out`].
    #[must_use]
    pub fn may_serve(&self, pid: u32) -> bool {
        self.conns
            .values()
            .any(|c| c.process.pid == pid && c.role != Role::Client)
    }

    /// Keeps `conn_id` however long it is silent (`pinned`), or lets it age out again.
    pub fn pin(&mut self, conn_id: u64, pinned: bool) {
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            conn.pinned = pinned;
        }
    }

    /// Forgets sockets of the start-up scan that were closed without being used since (no
    /// event reports their close): what they carried has ended. One `readlink` each, for at
    /// most `UNSEEN_CHECKED` of them a call (the caller is the thread that drains the ring),
    /// taking turns.
    pub fn forget_closed_unseen(&mut self) {
        /// Sockets looked at per call: about a millisecond of `readlink`s.
        const UNSEEN_CHECKED: usize = 512;
        if self.unseen_to_check.is_empty() {
            self.unseen_to_check
                .extend(self.preexisting.keys().copied());
        }
        for _ in 0..UNSEEN_CHECKED {
            let Some(key) = self.unseen_to_check.pop() else {
                break;
            };
            if self.preexisting.get(&key).is_some_and(|s| !s.still_open()) {
                self.preexisting.remove(&key);
                self.servers_at_start.remove(&key);
            }
        }
    }

    /// Processes with a connection the agent did not see open: found by the start-up scan (seen
    /// since or not), or first seen at a data syscall. What they carried before is unknown.
    pub fn unseen_openings(&self) -> impl Iterator<Item = u32> + '_ {
        self.preexisting.keys().map(|&(pid, _)| pid).chain(
            self.conns
                .values()
                .filter(|c| !c.seen_from_start())
                .map(|c| c.process.pid),
        )
    }

    /// Whether the table can take a connection without evicting: an eighth of it left, the
    /// share an eviction frees.
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.conns.len() < self.config.max_conns - self.config.max_conns / 8
    }

    /// Records an open event and returns the connection.
    pub fn open(&mut self, event: &ConnEvent) -> &Connection {
        let h = &event.header;
        let mut role = Role::from_u32(event.role);
        let mut role_source = RoleSource::Syscall;
        // A socket the kernel saw accepted or connected is new: a start-up socket that had its
        // fd number closed since.
        let preexisting = self
            .preexisting
            .remove(&(h.pid, h.fd))
            .filter(|_| role == Role::Unknown);
        // Whether the socket is the one the start-up scan found at this fd (the number may name
        // another since: passed in, `dup2`ed, a reused pid).
        let mut same_socket = false;
        if let Some(found) = &preexisting {
            let (local, remote) = tuple_addrs(&event.tuple);
            same_socket = same_endpoint(found.local, local) && same_endpoint(found.remote, remote);
            if !same_socket {
                self.stats.tuple_mismatches += 1;
                tracing::warn!(
                    pid = h.pid,
                    fd = h.fd,
                    "procfs says {} -> {}, the kernel socket says {local} -> {remote}",
                    found.local,
                    found.remote
                );
            }
        }
        let server_at_start = self.servers_at_start.remove(&(h.pid, h.fd));
        if role == Role::Unknown && same_socket {
            role = if server_at_start {
                Role::Server
            } else {
                Role::Client
            };
            role_source = RoleSource::Procfs;
        }
        if role == Role::Unknown {
            role_source = RoleSource::Unknown;
            if event.tuple.sock_type == SOCK_STREAM
                && let Some(listening) = self.listening.is_listening(h.pid, event.tuple.local_port)
            {
                role = if listening {
                    Role::Server
                } else {
                    Role::Client
                };
                role_source = RoleSource::Procfs;
            }
        }
        if self.conns.len() >= self.config.max_conns && !self.conns.contains_key(&h.conn_id) {
            self.evict_oldest();
        }
        let process = self.processes.get_with_comm(h.pid, &event.comm);
        self.stats.opened += 1;
        // Not the socket the start-up scan found at this fd (none, or another since).
        self.stats.seen_in_use += u64::from(!same_socket && role_source != RoleSource::Syscall);
        let tracked = self.conns.len() + usize::from(!self.conns.contains_key(&h.conn_id));
        self.stats.peak = self.stats.peak.max(tracked as u64);
        let conn = Connection {
            conn_id: h.conn_id,
            tuple: event.tuple,
            role,
            role_source,
            preexisting: preexisting.is_some(),
            opened_ns: h.ts_ns,
            last_seen_ns: h.ts_ns,
            bytes_sent: 0,
            bytes_received: 0,
            process,
            tls: false,
            fd: h.fd,
            opened_in: event.task,
            pinned: false,
        };
        self.conns.entry(h.conn_id).insert_entry(conn).into_mut()
    }

    /// Records a close event; returns the connection with the kernel's byte totals.
    pub fn close(&mut self, event: &ConnEvent) -> Option<Connection> {
        let mut conn = self.conns.remove(&event.header.conn_id)?;
        self.stats.closed += 1;
        conn.last_seen_ns = event.header.ts_ns;
        conn.bytes_sent = event.bytes_sent;
        conn.bytes_received = event.bytes_received;
        Some(conn)
    }

    /// Records traffic on a connection; `None` if the table does not know it.
    pub fn touch(&mut self, event: &DataEvent) -> Option<&Connection> {
        let Some(conn) = self.conns.get_mut(&event.header.conn_id) else {
            self.stats.data_unknown_conn += 1;
            return None;
        };
        // An egress record carries its syscall's entry time, which may precede the last record
        // seen (an ingress one that exited meanwhile): the idle clock never runs backwards.
        conn.last_seen_ns = conn.last_seen_ns.max(event.header.ts_ns);
        if agent_common::Syscall::from_u32(event.syscall).is_some_and(agent_common::Syscall::is_tls)
        {
            conn.tls = true;
        }
        if event.direction == agent_common::Direction::Egress as u32 {
            conn.bytes_sent += event.ret as u64;
        } else {
            conn.bytes_received += event.ret as u64;
        }
        Some(conn)
    }

    /// Forgets connections idle for longer than the timeout, as of `now_ns` (kernel clock).
    pub fn sweep(&mut self, now_ns: u64) {
        let timeout = self.config.idle_timeout.as_nanos() as u64;
        let before = self.conns.len();
        self.conns
            .retain(|_, c| c.pinned || now_ns.saturating_sub(c.last_seen_ns) < timeout);
        self.stats.evicted_idle += (before - self.conns.len()) as u64;
    }

    /// Drops the least recently used eighth of the table.
    fn evict_oldest(&mut self) {
        let mut ages: Vec<u64> = self
            .conns
            .values()
            .filter(|c| !c.pinned)
            .map(|c| c.last_seen_ns)
            .collect();
        if ages.is_empty() {
            return;
        }
        let cut = (ages.len() / 8).max(1);
        let (_, &mut threshold, _) = ages.select_nth_unstable(cut - 1);
        let before = self.conns.len();
        self.conns
            .retain(|_, c| c.pinned || c.last_seen_ns > threshold);
        self.stats.evicted_full += (before - self.conns.len()) as u64;
    }
}

/// Compares endpoints, treating an IPv4 address and its v4-mapped IPv6 form as equal.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |s: SocketAddr| (s.ip().to_canonical(), s.port());
    canon(a) == canon(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{AF_INET, EventHeader, EventKind};

    fn open_event(conn_id: u64, fd: i32, ts: u64, role: Role) -> ConnEvent {
        ConnEvent {
            header: EventHeader {
                kind: EventKind::ConnOpen as u32,
                pid: std::process::id(),
                tid: 1,
                fd,
                conn_id,
                ts_ns: ts,
            },
            tuple: SockTuple {
                local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                remote_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                local_port: 40_000,
                remote_port: 8080,
                family: AF_INET,
                sock_type: SOCK_STREAM,
            },
            role: role as u32,
            ..ConnEvent::default()
        }
    }

    fn config(max_conns: usize) -> ConntrackConfig {
        ConntrackConfig {
            max_conns,
            idle_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn reused_fd_is_a_new_connection() {
        let mut table = Conntrack::new(config(16), Vec::new());
        table.open(&open_event(1, 5, 10, Role::Client));
        let closed = table
            .close(&open_event(1, 5, 20, Role::Client))
            .expect("known");
        assert_eq!(closed.conn_id, 1);
        table.open(&open_event(2, 5, 30, Role::Server));
        assert!(table.get(1).is_none());
        assert_eq!(table.get(2).expect("new").role, Role::Server);
    }

    /// This process's sockets as the start-up scan finds them: a listener hides no stream; a
    /// connection does until it is closed.
    #[test]
    fn only_open_connections_of_the_start_up_scan_may_hide_streams() {
        let me = std::process::id();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // (Other tests of this process run alongside: only this test's sockets count.)
        let scanned = |table_of: &dyn Fn(Vec<DiscoveredSocket>) -> Conntrack| {
            let mine = discovery::scan(0, None)
                .into_iter()
                .filter(|s| s.pid == me && (s.local.port() == port || s.remote.port() == port))
                .collect();
            table_of(mine)
        };
        let table = scanned(&|found| Conntrack::new(config(16), found));
        assert_eq!(table.unseen_openings().count(), 0, "a listener alone");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let mut table = scanned(&|found| Conntrack::new(config(16), found));
        assert_eq!(table.unseen_openings().filter(|&p| p == me).count(), 2);
        assert_eq!(table.unseen_openings().count(), 2);
        table.forget_closed_unseen();
        assert_eq!(table.unseen_openings().count(), 2, "both still open");
        drop((client, server));
        table.forget_closed_unseen();
        assert_eq!(table.unseen_openings().count(), 0, "closed, never used");
    }

    #[test]
    fn bounded_and_idle_eviction() {
        let mut table = Conntrack::new(config(16), Vec::new());
        for id in 0..100u64 {
            table.open(&open_event(id + 1, id as i32, id, Role::Client));
            assert!(table.open_count() <= 16);
        }
        assert!(table.stats.evicted_full > 0);
        // Newest survive the size bound.
        assert!(table.get(100).is_some());
        table.sweep(100 + Duration::from_secs(11).as_nanos() as u64);
        assert_eq!(table.open_count(), 0);
        assert!(table.stats.evicted_idle > 0);
    }

    #[test]
    fn unknown_role_is_inferred_from_listening_ports() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut table = Conntrack::new(config(16), Vec::new());
        let mut event = open_event(7, 9, 1, Role::Unknown);
        event.tuple.local_port = port;
        let conn = table.open(&event);
        assert_eq!(
            (conn.role, conn.role_source),
            (Role::Server, RoleSource::Procfs)
        );
        let conn = table.open(&open_event(8, 10, 1, Role::Unknown));
        assert_eq!(
            (conn.role, conn.role_source),
            (Role::Client, RoleSource::Procfs)
        );
        // Neither was open at start-up: both were first seen in use, their openings lost.
        table.open(&open_event(9, 11, 1, Role::Client));
        assert_eq!(table.stats.seen_in_use, 2, "an opening seen is not counted");
    }

    /// A socket open before the agent whose port was listening at start-up is a server end
    /// even when, by its first record, nothing listens there any more (its process exited with
    /// its listener before the agent read the record); one whose port was not is a client end.
    #[test]
    fn a_start_up_socket_on_a_port_listening_then_is_a_server_end() {
        let me = std::process::id();
        let (local, remote) = (
            "127.0.0.1:40000".parse().expect("addr"),
            "127.0.0.1:8080".parse().expect("addr"),
        );
        let socket = |fd, listening, remote| DiscoveredSocket {
            pid: me,
            fd,
            local,
            remote,
            listening,
            inode: 1,
            netns: 1,
        };
        let unspecified = "0.0.0.0:0".parse().expect("addr");
        let elsewhere = "127.0.0.1:9999".parse().expect("addr");
        let mut sockets = vec![
            socket(3, true, unspecified),
            socket(9, false, remote),
            socket(11, false, elsewhere),
        ];
        // A client end found at start-up, in a namespace where its port listened nowhere.
        sockets.push(DiscoveredSocket {
            netns: 2,
            ..socket(12, false, remote)
        });
        let mut table = Conntrack::new(config(16), sockets);
        // (conn id, fd, role): nothing listens on 40000 now, so the live look alone says client;
        // fd 11 names another socket than the one found there at start-up (the live look); fd
        // 12's port listened nowhere in its namespace.
        for (conn_id, fd, role) in [
            (7, 9, Role::Server),
            (8, 10, Role::Client),
            (10, 12, Role::Client),
            (9, 11, Role::Client),
        ] {
            let conn = table.open(&open_event(conn_id, fd, 1, Role::Unknown));
            assert_eq!(
                (conn.role, conn.role_source),
                (role, RoleSource::Procfs),
                "fd {fd}"
            );
        }
        assert_eq!(
            table.stats.seen_in_use, 2,
            "fds 10 and 11 were not the sockets open at start-up"
        );
    }

    #[test]
    fn validate_names_the_field() {
        assert!(
            config(8)
                .validate()
                .expect_err("small")
                .to_string()
                .contains("max-conns")
        );
        let bad = ConntrackConfig {
            idle_timeout: Duration::ZERO,
            ..config(16)
        };
        assert!(
            bad.validate()
                .expect_err("zero")
                .to_string()
                .contains("idle-timeout")
        );
    }
}
