//! Traces across hosts: the agents of a client's host and of its server's host agree on the
//! server span's parent before either exports.
//!
//! Both ends of a TCP connection key each request the same way: the TCP sequence number of its
//! first byte (the stream id for HTTP/2), read from the kernel's socket at the syscall. When a
//! CLIENT span's server is not an address of this host, its agent sends the agent on the
//! server's address one UDP datagram ([`wire::ClientSpan`]): connection, key, what the request
//! asks, trace and span ids. The server's agent makes its SERVER span with that connection and
//! key, asking the same, the client span's child ([`crate::trace::linker::Tracer::on_peer_client`]),
//! whichever of the two it learns first, within the link delay. A translated connection (a
//! Service's DNAT, SNAT) is announced as its server sees it, from the kernel's connection
//! tracking ([`nat`]); a real server on this host then gets it here. A lost datagram, an absent
//! peer agent or a translation the kernel does not track leaves the SERVER span a root: never a
//! wrong parent. Datagrams carry an
//! HMAC of a secret shared by the agents, and a time stamp (replays are refused).
//!
//! With the in-band mode too, a request whose trace the client host's programs could not tell
//! carries the client span's id and this agent's address ([`Peers::return_address`]) in its TCP
//! option instead (`agent_common::INBAND_OPTION_EXID_ASK`): the server's agent asks that address
//! ([`wire::Kind::Ask`]) and the client's agent answers the asker ([`wire::Kind::Answer`]) once
//! its rules have settled the span's trace. That reaches the client's agent where an
//! announcement cannot reach the server's (a pod's own address, a NAT between the hosts).

pub mod local;
pub mod nat;
pub mod wire;

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket},
    path::PathBuf,
};

use wire::{ClientSpan, Kind};

/// Secrets shorter than this are refused: a guessable one lets anyone graft spans into traces.
const MIN_SECRET_BYTES: usize = 16;
/// Datagrams read per call of [`Peers::receive`]: a flood cannot hold the pipeline up.
const MAX_RECEIVE_PER_POLL: usize = 4096;
/// Announcements waiting for their connection's translation; past this they are dropped.
const MAX_WAITING: usize = 65_536;
/// How long (ms) the tags of the datagrams received are kept to refuse a replay: a datagram is
/// accepted up to [`wire::MAX_AGE_MS`] either side of its time stamp.
const SEEN_MS: u64 = 2 * wire::MAX_AGE_MS;
/// Tags kept at once; past this the oldest go (a replay of one forgotten is accepted again).
const MAX_SEEN: usize = 262_144;

/// Settings of cross-host linking (`--peer-port`, `--peer-secret-file`, `--peer-address`).
#[derive(Debug, Clone)]
pub struct PeersConfig {
    /// The UDP port every agent listens on and sends to.
    pub port: u16,
    /// File holding the secret the agents share.
    pub secret_file: PathBuf,
    /// This agent's address as the other hosts' agents reach it (the in-band mode's asking
    /// form carries it); `None`: this host's first global address.
    pub address: Option<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error("peer-port must be 1 to 65535, got 0")]
    Port,
    #[error("cannot read peer-secret-file {path}: {source}")]
    Secret {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "peer-secret-file {path} holds {len} bytes; at least {MIN_SECRET_BYTES} are needed \
         (e.g. `head -c 32 /dev/urandom | base64 > FILE`, the same file on every host)"
    )]
    WeakSecret { path: String, len: usize },
    #[error("cannot listen for peer agents on UDP port {port}: {source}")]
    Bind { port: u16, source: std::io::Error },
}

impl PeersConfig {
    /// # Errors
    /// A zero port.
    pub fn validate(&self) -> Result<(), PeersError> {
        if self.port == 0 {
            return Err(PeersError::Port);
        }
        Ok(())
    }

    /// The secret: the file's bytes, surrounding white space trimmed.
    fn secret(&self) -> Result<Vec<u8>, PeersError> {
        let path = self.secret_file.display().to_string();
        let raw = std::fs::read(&self.secret_file).map_err(|source| PeersError::Secret {
            path: path.clone(),
            source,
        })?;
        let secret = raw.trim_ascii().to_vec();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(PeersError::WeakSecret {
                path,
                len: secret.len(),
            });
        }
        Ok(secret)
    }
}

/// Self-metrics of cross-host linking.
#[derive(Debug, Default, Clone, Copy)]
pub struct PeerStats {
    /// Announcements sent to peer agents.
    pub sent: u64,
    /// Announcements the socket refused (no route, buffer full).
    pub send_failed: u64,
    /// Announcements received and accepted.
    pub received: u64,
    /// Datagrams refused: not ours, failed authentication, stale.
    pub refused: u64,
    /// Announcements whose connection was translated (DNAT/SNAT), sent as the server sees it.
    pub translated: u64,
    /// Translated announcements whose real server is on this host: applied here.
    pub local: u64,
    /// Announcements dropped while waiting for the translation table (queue full).
    pub dropped: u64,
    /// Questions sent to the agents that in-band options named, and answers received.
    pub asks_sent: u64,
    pub answers_received: u64,
    /// Questions received from other agents, and answers sent.
    pub asks_received: u64,
    pub answers_sent: u64,
    /// Datagrams refused as a copy of one received already (a replay).
    pub replayed: u64,
    /// Questions not sent: the address named is not one an agent can listen on.
    pub asks_refused: u64,
    /// Tags of received datagrams forgotten before their minute was over (more than
    /// [`MAX_SEEN`] a minute): a replay of one would be accepted.
    pub replay_tags_evicted: u64,
}

/// A message from another agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// A CLIENT span announced unasked, or an answer to this agent's question.
    Client(ClientSpan, Kind),
    /// A question for the CLIENT span `span.span_id` (connection and key as the asker sees
    /// them), to be answered to `from`; with `stream`, for the CLIENT span of stream
    /// `span.key` on the connection whose token is `span.span_id` ([`Kind::AskStream`]).
    Ask {
        from: SocketAddr,
        span: ClientSpan,
        stream: bool,
    },
}

/// The agent's peer socket and secret.
#[derive(Debug)]
pub struct Peers {
    socket: UdpSocket,
    secret: Vec<u8>,
    port: u16,
    /// Where the other agents reach this one ([`Peers::return_address`]).
    address: Option<IpAddr>,
    buffer: Vec<u8>,
    /// The datagram being sent (one buffer for all).
    outgoing: Vec<u8>,
    pub local: local::LocalAddrs,
    nat: nat::Nat,
    /// Announcements waiting for the next reading of the translation table, and since when.
    waiting: Vec<(std::time::Instant, ClientSpan)>,
    /// The tags of the datagrams received lately: a copy of one is a replay.
    seen: crate::expiring::Expiring<[u8; wire::MAC_LEN], (), SEEN_MS, MAX_SEEN>,
    pub stats: PeerStats,
}

/// Unix time in ms.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Peers {
    /// Reads the secret and listens on the port (all addresses, IPv6 and IPv4).
    ///
    /// # Errors
    /// A bad config, an unreadable or short secret, a port in use.
    pub fn bind(config: &PeersConfig) -> Result<Self, PeersError> {
        config.validate()?;
        let secret = config.secret()?;
        let bind = |ip: IpAddr| UdpSocket::bind(SocketAddr::new(ip, config.port));
        let socket = bind(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
            .or_else(|_| bind(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)))
            .map_err(|source| PeersError::Bind {
                port: config.port,
                source,
            })?;
        socket
            .set_nonblocking(true)
            .map_err(|source| PeersError::Bind {
                port: config.port,
                source,
            })?;
        let local = local::LocalAddrs::read();
        Ok(Self {
            socket,
            secret,
            port: config.port,
            address: config.address.or_else(|| local.first_global()),
            buffer: vec![0; 2048],
            outgoing: Vec::with_capacity(wire::MESSAGE_LEN),
            local,
            nat: nat::Nat::default(),
            waiting: Vec::new(),
            seen: crate::expiring::Expiring::default(),
            stats: PeerStats::default(),
        })
    }

    /// The UDP port the agents share.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the other hosts' agents reach this one at (`--peer-address`, else this
    /// host's first global address): the in-band mode's asking form carries it. `None`: no
    /// such address; requests the programs cannot give a trace then carry nothing.
    #[must_use]
    pub fn return_address(&self) -> Option<IpAddr> {
        self.address
    }

    /// Sends one question or answer: a question to the agent at `agent` (on the shared port),
    /// an answer to the address the question came from.
    pub fn send_one(&mut self, kind: Kind, to: SocketAddr, span: &ClientSpan) {
        let to = match kind {
            Kind::Ask | Kind::AskStream => SocketAddr::new(to.ip(), self.port),
            Kind::Answer | Kind::Announce => to,
        };
        let question = matches!(kind, Kind::Ask | Kind::AskStream);
        // The address of a question comes from a TCP option any client can write: only a
        // unicast address an agent could listen on is asked.
        if question && !local::routable(to.ip()) {
            self.stats.asks_refused += 1;
            return;
        }
        span.encode_into(kind, &self.secret, now_ms(), &mut self.outgoing);
        match self.socket.send_to(&self.outgoing, to) {
            Ok(_) if question => self.stats.asks_sent += 1,
            Ok(_) if kind == Kind::Answer => self.stats.answers_sent += 1,
            Ok(_) => self.stats.sent += 1,
            Err(_) => self.stats.send_failed += 1,
        }
    }

    /// Sends each announcement to the agent on its server's address, as that server sees the
    /// connection (translated where the kernel tracked a translation). Those whose real server
    /// is on this host go to `here` instead; those whose connection is not known yet wait for
    /// the next call.
    pub fn send(&mut self, spans: &[ClientSpan], here: &mut Vec<ClientSpan>) {
        if spans.is_empty() && self.waiting.is_empty() {
            return;
        }
        let room = MAX_WAITING.saturating_sub(self.waiting.len());
        self.stats.dropped += spans.len().saturating_sub(room) as u64;
        let asked = std::time::Instant::now();
        self.waiting
            .extend(spans.iter().take(room).map(|span| (asked, *span)));
        let now = now_ms();
        let mut still = Vec::new();
        for (asked, span) in std::mem::take(&mut self.waiting) {
            let Some((client, server)) = self.nat.resolve((span.client, span.server), asked) else {
                still.push((asked, span));
                continue;
            };
            let translated = (client, server) != (span.client, span.server);
            let span = ClientSpan {
                client,
                server,
                ..span
            };
            if translated {
                self.stats.translated += 1;
                if self.local.contains(server.ip()) {
                    self.stats.local += 1;
                    here.push(span);
                    continue;
                }
            }
            let to = SocketAddr::new(span.server.ip(), self.port);
            span.encode_into(Kind::Announce, &self.secret, now, &mut self.outgoing);
            match self.socket.send_to(&self.outgoing, to) {
                Ok(_) => self.stats.sent += 1,
                Err(_) => self.stats.send_failed += 1,
            }
        }
        self.waiting = still;
    }

    /// Whether the authenticated datagram of `len` bytes in the buffer is a copy of one
    /// received lately (its tag seen); remembers the tag otherwise.
    fn replayed(&mut self, len: usize, now: u64) -> bool {
        let mut tag = [0u8; wire::MAC_LEN];
        tag.copy_from_slice(&self.buffer[len - wire::MAC_LEN..len]);
        if self.seen.get(tag).is_some() {
            return true;
        }
        if self.seen.insert(tag, (), now) {
            self.stats.replay_tags_evicted += 1;
        }
        false
    }

    /// The messages waiting on the socket (at most [`MAX_RECEIVE_PER_POLL`]).
    pub fn receive(&mut self, out: &mut Vec<Incoming>) {
        let now = now_ms();
        for _ in 0..MAX_RECEIVE_PER_POLL {
            match self.socket.recv_from(&mut self.buffer) {
                Ok((len, from)) => match ClientSpan::decode(&self.buffer[..len], &self.secret, now)
                {
                    // Authenticated (so `len` is a message's), but a copy: refused.
                    Ok(_) if self.replayed(len, now) => self.stats.replayed += 1,
                    Ok((kind @ (Kind::Ask | Kind::AskStream), span)) => {
                        self.stats.asks_received += 1;
                        out.push(Incoming::Ask {
                            from,
                            span,
                            stream: kind == Kind::AskStream,
                        });
                    }
                    Ok((kind, span)) => {
                        if kind == Kind::Answer {
                            self.stats.answers_received += 1;
                        } else {
                            self.stats.received += 1;
                        }
                        out.push(Incoming::Client(span, kind));
                    }
                    Err(err) => {
                        self.stats.refused += 1;
                        tracing::debug!(%from, "peer datagram refused: {err}");
                    }
                },
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => {
                    // An ICMP error from an earlier send (no agent there) surfaces here.
                    tracing::debug!("peer socket: {err}");
                }
            }
        }
    }
}
