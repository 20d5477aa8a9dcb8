//! The callback rule, for Node.js processes whose callback probes are attached: which request a
//! CLIENT request was made for, from the libuv stream callback it was written (or its socket
//! opened) in (`DataEvent::task`, `ConnEvent::task`; `agent-ebpf/src/node.rs`).
//!
//! Node.js runs a request's handler, and the promise jobs and `nextTick`s it queues, inside the
//! stream callback that read the request; a callback for a client socket runs what waited for
//! that socket's response. So, for a CLIENT request on socket W written inside the callback of
//! socket F:
//! - F a server socket of an in-order protocol (HTTP/1): the request F is serving then, if it
//!   serves exactly one, is the parent;
//! - F a client socket of an in-order protocol, F ≠ W, to another server than W: what F's last
//!   request was made for (its SERVER parent, if that is still in flight) is the parent: the
//!   code that ran on its response made this call. To the same server, no parent: F's pool may
//!   be handing a request that waited to another of its sockets;
//! - F = W: the socket's own callback writes a request that waited for it (a pool hands a freed
//!   or newly connected socket to a request): no parent. Except for W's first request when W
//!   was opened inside another socket's callback: the pool opened W for the request that code
//!   made (a Node.js `http.Agent` gives the new socket to the request it was made for; undici
//!   makes a connection per request when its pool has no free one), and writes it once
//!   connected: what that callback named when the socket opened, as above (measured: read at
//!   the write instead, a client socket had carried another request meanwhile, and undici's
//!   first wave of new connections got wrong parents);
//! - outside any callback (timers, immediates, the loop's other phases): no parent.
//!
//! Not followed (no parent): multiplexed protocols (HTTP/2), whose callbacks may carry any
//! stream's bytes; a client socket that has had two requests in flight at once (Redis and
//! memcached clients pipeline), whose last request is not the one answered; a closed socket,
//! whose fd a pipe may have taken (libuv runs pipes' callbacks too).
//!
//! What no rule here can see: code of several requests resumed in one callback (a promise they
//! share, a cache fill, a batch loader) runs in the callback of whichever request's socket
//! settled it, and its calls take that request as parent.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use crate::conntrack::Connection;

use super::linker::SpanKey;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Sockets remembered; past this the table starts again (counted).
const MAX_SOCKETS: usize = 256 * 1024;

/// What the rule says of a CLIENT request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Not a request the probes named (another runtime, or a thread they never saw): other
    /// rules decide.
    Unknown,
    /// No parent: made outside any request's callback.
    NoParent,
    /// The last two SERVER requests read on the socket whose callback made it (newest first):
    /// the parent is the one of them in flight, if only one is (responses go out in order, so
    /// an older one in flight means the newer one is too).
    Serving([Option<SpanKey>; 2]),
    /// The SERVER span that the last request on the client socket whose callback made it was
    /// made for.
    MadeFor(SpanKey),
}

/// One socket of a followed process, as the rule needs it.
#[derive(Debug, Default, Clone, Copy)]
struct Socket {
    conn_id: u64,
    /// Its last two SERVER requests, newest first.
    servers: [Option<SpanKey>; 2],
    /// What its last CLIENT request was made for (`None`: unknown, or nothing), and whether it
    /// has had one at all.
    made_for: Option<SpanKey>,
    requests: u32,
    /// Its CLIENT requests in flight, and whether it ever had two at once (pipelining).
    in_flight: u32,
    pipelined: bool,
    /// It closed: its fd may belong to a pipe or another socket by now.
    closed: bool,
    /// Its protocol answers one request at a time, in order.
    in_order: bool,
    /// The other end.
    remote: Option<SocketAddr>,
    /// What the callback the socket was opened in said when it opened (its first request is
    /// for that): a client socket's last request may have changed by the time this one's
    /// connection is up.
    opened_for: Option<Lookup>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CallbackStats {
    /// Node.js processes followed (their callback probes attached), over the agent's life.
    pub processes: u64,
    /// Client requests written outside any request's callback (timers, immediates).
    pub outside: u64,
    /// Times the socket table started again at its bound.
    pub sockets_reset: u64,
}

/// The followed Node.js processes and their sockets.
#[derive(Debug, Default)]
pub struct Callbacks {
    tracked: HashSet<u32>,
    sockets: FastMap<(u32, i32), Socket>,
    pub stats: CallbackStats,
}

impl Callbacks {
    /// Follows `pid`: its probes are attached.
    pub fn track(&mut self, pid: u32) {
        if self.tracked.insert(pid) {
            self.stats.processes += 1;
        }
    }

    /// Forgets `pid` (it exited, or runs something else now).
    pub fn untrack(&mut self, pid: u32) {
        if self.tracked.remove(&pid) {
            self.sockets.retain(|&(p, _), _| p != pid);
        }
    }

    #[must_use]
    pub fn is_tracked(&self, pid: u32) -> bool {
        !self.tracked.is_empty() && self.tracked.contains(&pid)
    }

    /// The socket `conn` is, with what an earlier connection on its fd left cleared.
    fn socket(&mut self, conn: &Connection) -> &mut Socket {
        if self.sockets.len() >= MAX_SOCKETS {
            self.sockets.clear();
            self.stats.sockets_reset += 1;
        }
        let socket = self.sockets.entry((conn.process.pid, conn.fd)).or_default();
        if socket.conn_id != conn.conn_id {
            *socket = Socket {
                conn_id: conn.conn_id,
                remote: Some(conn.addrs().1),
                ..Socket::default()
            };
        }
        socket
    }

    /// The span table was full and the request on `conn` was not kept: what the socket says
    /// of its requests is not known any more.
    pub fn on_dropped(&mut self, conn: &Connection) {
        if self.is_tracked(conn.process.pid) {
            let socket = self.socket(conn);
            socket.servers = [None, None];
            socket.made_for = None;
            socket.pipelined = true;
        }
    }

    /// A CLIENT request's exchange on `conn` completed.
    pub fn on_client_done(&mut self, conn: &Connection) {
        if let Some(socket) = self.sockets.get_mut(&(conn.process.pid, conn.fd))
            && socket.conn_id == conn.conn_id
        {
            socket.in_flight = socket.in_flight.saturating_sub(1);
        }
    }

    /// The connection `conn_id` on `fd` of `pid` closed.
    pub fn closed(&mut self, pid: u32, fd: i32, conn_id: u64) {
        if let Some(socket) = self.sockets.get_mut(&(pid, fd))
            && socket.conn_id == conn_id
        {
            socket.closed = true;
        }
    }

    /// A request `key` was read (`end.server`) or written on `conn`; a CLIENT one was made for
    /// `made_for` (the SERVER span it got as its parent from a rule of this process, if any).
    pub fn on_request(
        &mut self,
        conn: &Connection,
        key: SpanKey,
        end: super::End,
        made_for: Option<SpanKey>,
    ) {
        if !self.is_tracked(conn.process.pid) {
            return;
        }
        let socket = self.socket(conn);
        socket.in_order = end.in_order;
        if end.server {
            socket.servers = [Some(key), socket.servers[0]];
        } else {
            socket.made_for = made_for;
            socket.requests = socket.requests.saturating_add(1);
            socket.pipelined |= socket.in_flight > 0;
            socket.in_flight = socket.in_flight.saturating_add(1);
        }
    }

    /// `conn` opened: what an earlier connection on its fd left is forgotten (a closed one is
    /// kept until then: Node.js may close a socket inside its own callback, before the code
    /// that waited for its response runs), and what the callback it was opened in names is
    /// kept for its first request.
    pub fn opened(&mut self, conn: &Connection) {
        let pid = conn.process.pid;
        if !self.is_tracked(pid) {
            return;
        }
        // A socket first seen in use was not opened by the syscall that found it: the callback
        // running then says nothing of who opened it.
        let opened_in = if conn.seen_from_start() {
            conn.opened_in
        } else {
            0
        };
        let opened_for = match agent_common::node_callback_of(opened_in) {
            Some(Some(opener)) if opener != conn.fd => {
                Some(self.named_by(pid, opener, conn.addrs().1))
            }
            _ => None,
        };
        self.socket(conn).opened_for = opened_for;
    }

    /// What the callback of socket `fd` names for a request to `remote`.
    fn named_by(&self, pid: u32, fd: i32, remote: SocketAddr) -> Lookup {
        match self.sockets.get(&(pid, fd)) {
            Some(s) if s.closed || !s.in_order => Lookup::NoParent,
            Some(s) if s.servers[0].is_some() => Lookup::Serving(s.servers),
            Some(Socket {
                made_for: Some(made_for),
                remote: Some(other),
                pipelined: false,
                ..
            }) if *other != remote => Lookup::MadeFor(*made_for),
            _ => Lookup::NoParent,
        }
    }

    /// What the rule says of a CLIENT request on `conn` whose first bytes were written in
    /// `task` (the data record's [`agent_common::DataEvent::task`]).
    pub fn lookup(&mut self, conn: &Connection, task: u64) -> Lookup {
        let pid = conn.process.pid;
        if !self.is_tracked(pid) {
            return Lookup::Unknown;
        }
        let Some(callback) = agent_common::node_callback_of(task) else {
            return Lookup::Unknown;
        };
        let Some(fd) = callback else {
            self.stats.outside += 1;
            return Lookup::NoParent;
        };
        if fd == conn.fd {
            // Its first request, written once connected, is for what opened it; later ones
            // waited for it.
            return match self.sockets.get(&(pid, fd)) {
                Some(s) if s.conn_id == conn.conn_id && s.requests == 0 => {
                    s.opened_for.unwrap_or(Lookup::NoParent)
                }
                _ => Lookup::NoParent,
            };
        }
        self.named_by(pid, fd, conn.addrs().1)
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{Role, node_callback};

    use super::*;

    /// Socket `fd` to port `80 + fd` (a server of its own) unless `to` says otherwise.
    fn conn(conn_id: u64, fd: i32, opened_in: u64) -> Connection {
        conn_to(conn_id, fd, opened_in, 80 + fd as u16)
    }

    fn conn_to(conn_id: u64, fd: i32, opened_in: u64, port: u16) -> Connection {
        Connection {
            fd,
            opened_in,
            ..Connection::loopback_for_test(conn_id, 7, Role::Client, 40_000 + fd as u16, port)
        }
    }

    fn end(server: bool, in_order: bool) -> super::super::End {
        super::super::End {
            server,
            thread_causality: true,
            in_order,
            task: 0,
            hidden_work: false,
            hidden_same_ask: false,
            hidden_exact_ask: false,
        }
    }

    fn followed() -> Callbacks {
        let mut callbacks = Callbacks::default();
        callbacks.track(7);
        callbacks
    }

    #[test]
    fn a_call_written_in_a_server_sockets_callback_names_its_requests() {
        let mut c = followed();
        let front = conn(1, 10, 0);
        c.on_request(&front, (1, 100), end(true, true), None);
        let out = conn(2, 11, 0);
        assert_eq!(
            c.lookup(&out, node_callback(Some(10))),
            Lookup::Serving([Some((1, 100)), None])
        );
        // Outside any callback (a timer): no parent, whatever is in flight.
        assert_eq!(c.lookup(&out, node_callback(None)), Lookup::NoParent);
        // Not a value the probes stored (another runtime's r14).
        assert_eq!(c.lookup(&out, 0x1234), Lookup::Unknown);
        // A process not followed.
        c.untrack(7);
        assert_eq!(c.lookup(&out, node_callback(Some(10))), Lookup::Unknown);
    }

    #[test]
    fn a_call_made_on_a_response_is_for_what_that_request_was_made_for() {
        let mut c = followed();
        let first = conn(2, 11, 0);
        c.on_request(&first, (0, 0), end(false, true), Some((1, 100)));
        let second = conn(3, 12, 0);
        assert_eq!(
            c.lookup(&second, node_callback(Some(11))),
            Lookup::MadeFor((1, 100))
        );
        // A timer's call's response: its follow-up is nobody's either.
        c.on_request(&first, (0, 0), end(false, true), None);
        assert_eq!(c.lookup(&second, node_callback(Some(11))), Lookup::NoParent);
        // A multiplexed socket's callback may carry any stream's bytes.
        c.on_request(&first, (0, 0), end(false, false), Some((1, 100)));
        assert_eq!(c.lookup(&second, node_callback(Some(11))), Lookup::NoParent);
        // Another socket to the same server: the pool may be handing it a request that waited.
        c.on_client_done(&first);
        c.on_request(&first, (0, 0), end(false, true), Some((1, 100)));
        let same_server = conn_to(4, 13, 0, 80 + 11);
        assert_eq!(
            c.lookup(&same_server, node_callback(Some(11))),
            Lookup::NoParent
        );
    }

    #[test]
    fn a_sockets_own_callback_names_no_parent_but_for_its_first_request() {
        let mut c = followed();
        c.on_request(&conn(1, 10, 0), (1, 100), end(true, true), None);
        // Opened in the server socket's callback: its first request is that request's.
        let fresh = conn(2, 11, node_callback(Some(10)));
        c.opened(&fresh);
        assert_eq!(
            c.lookup(&fresh, node_callback(Some(11))),
            Lookup::Serving([Some((1, 100)), None])
        );
        c.on_request(&fresh, (0, 0), end(false, true), Some((1, 100)));
        // Later ones, written in its own callback, are requests that waited for it.
        assert_eq!(c.lookup(&fresh, node_callback(Some(11))), Lookup::NoParent);
        // Opened in a client socket's callback, to another server: for what the code that ran
        // on its response was doing.
        let earlier = conn(3, 12, 0);
        c.on_request(&earlier, (0, 0), end(false, true), Some((1, 100)));
        let next = conn(4, 13, node_callback(Some(12)));
        c.opened(&next);
        // The opener carries another request before this one's connection is up: what it was
        // doing when it opened this one still counts.
        c.on_request(&earlier, (0, 0), end(false, true), Some((2, 200)));
        assert_eq!(
            c.lookup(&next, node_callback(Some(13))),
            Lookup::MadeFor((1, 100))
        );
        // To the same server: a pool reconnecting for a request that waited.
        let reconnect = conn_to(5, 15, node_callback(Some(12)), 80 + 12);
        c.opened(&reconnect);
        assert_eq!(
            c.lookup(&reconnect, node_callback(Some(15))),
            Lookup::NoParent
        );
        // Opened by a timer.
        let by_timer = conn(6, 14, node_callback(None));
        c.opened(&by_timer);
        assert_eq!(
            c.lookup(&by_timer, node_callback(Some(14))),
            Lookup::NoParent
        );
    }

    #[test]
    fn a_new_connection_on_a_reused_fd_starts_clean() {
        let mut c = followed();
        c.on_request(&conn(2, 11, 0), (0, 0), end(false, true), Some((1, 100)));
        c.on_request(&conn(9, 11, 0), (9, 900), end(true, true), None);
        let out = conn(3, 12, 0);
        assert_eq!(
            c.lookup(&out, node_callback(Some(11))),
            Lookup::Serving([Some((9, 900)), None])
        );
        c.opened(&conn(10, 11, 0));
        assert_eq!(c.lookup(&out, node_callback(Some(11))), Lookup::NoParent);
    }

    #[test]
    fn a_pipelined_or_closed_socket_names_no_parent() {
        let mut c = followed();
        let redis = conn(2, 11, 0);
        let other = conn(3, 12, 0);
        // Two commands in flight at once: the reply read is the first's, the last written is
        // the second's.
        c.on_request(&redis, (0, 0), end(false, true), Some((1, 100)));
        c.on_request(&redis, (0, 0), end(false, true), Some((2, 200)));
        c.on_client_done(&redis);
        assert_eq!(c.lookup(&other, node_callback(Some(11))), Lookup::NoParent);
        // One at a time, then closed: a pipe may have its fd now.
        let http = conn(4, 13, 0);
        c.on_request(&http, (0, 0), end(false, true), Some((1, 100)));
        c.on_client_done(&http);
        c.on_request(&http, (0, 0), end(false, true), Some((2, 200)));
        assert_eq!(
            c.lookup(&other, node_callback(Some(13))),
            Lookup::MadeFor((2, 200))
        );
        c.closed(7, 13, 4);
        assert_eq!(c.lookup(&other, node_callback(Some(13))), Lookup::NoParent);
        // A request the span table had no room for: nothing is known of the socket's.
        let front = conn(5, 14, 0);
        c.on_request(&front, (5, 500), end(true, true), None);
        c.on_dropped(&front);
        assert_eq!(c.lookup(&other, node_callback(Some(14))), Lookup::NoParent);
    }
}
