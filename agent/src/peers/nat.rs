//! Address translation between a client and its server (a Kubernetes Service's DNAT to a pod, a
//! load balancer's SNAT): the client's socket names the address it asked for, the server's the
//! real one, so their tuples differ. The kernel's connection tracking knows both: the reply
//! direction of the client's connection comes from the real server, to the translated client.
//! An announcement is moved onto those before it is sent, so that it reaches the real server's
//! agent with the tuple that agent sees.
//!
//! Read from `/proc/net/nf_conntrack` (the namespace the agent runs in; the file exists where
//! the kernel has `CONFIG_NF_CONNTRACK_PROCFS`): at most every [`READ_EVERY`], less often for a
//! large table ([`BYTES_PER_SECOND`]), and only while some announcement's connection is not
//! known yet. Without the file, or without an entry, nothing is translated. A netlink lookup
//! of the one connection would cost less on busy nodes.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

const CONNTRACK: &str = "/proc/net/nf_conntrack";
/// Least time between two readings of the table.
const READ_EVERY: Duration = Duration::from_millis(100);
/// Table bytes read per second at most: a node with a large table (100 000 connections are
/// ≈ 15 MB of text) is read less often, so that parsing stays near 1 % of a core.
const BYTES_PER_SECOND: u64 = 1_000_000;
/// How long a connection's translation is trusted (a reused client port may be translated to
/// another backend later).
const KEEP: Duration = Duration::from_mins(1);
/// Connections remembered; past this the cache starts over.
const MAX_CACHED: usize = 65_536;

/// A connection as the client's socket sees it: (client, server).
pub type Pair = (SocketAddr, SocketAddr);

/// What conntrack says of connections, as last read.
#[derive(Debug, Default)]
pub struct Nat {
    /// (client, server as asked) → (client as the server sees it, real server), `None` when the
    /// connection is not translated or not in the table.
    known: HashMap<Pair, (Option<Pair>, Instant)>,
    last_read: Option<Instant>,
    /// Bytes of the table at its last reading: the next waits in proportion.
    last_bytes: u64,
    /// The file could not be read (no conntrack procfs): translation is off.
    unavailable: bool,
    /// Connections found translated.
    pub translated: u64,
}

/// Parses one line of `/proc/net/nf_conntrack` for a TCP connection: (original, reply) tuples.
#[must_use]
pub fn parse_line(line: &str) -> Option<(Pair, Pair)> {
    let mut fields = line.split_ascii_whitespace();
    let _family = fields.next()?;
    let _number = fields.next()?;
    if fields.next()? != "tcp" {
        return None;
    }
    let mut src: Vec<IpAddr> = Vec::with_capacity(2);
    let mut dst: Vec<IpAddr> = Vec::with_capacity(2);
    let mut sport: Vec<u16> = Vec::with_capacity(2);
    let mut dport: Vec<u16> = Vec::with_capacity(2);
    for field in fields {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "src" => src.push(value.parse().ok()?),
            "dst" => dst.push(value.parse().ok()?),
            "sport" => sport.push(value.parse().ok()?),
            "dport" => dport.push(value.parse().ok()?),
            _ => {}
        }
    }
    if src.len() != 2 || dst.len() != 2 || sport.len() != 2 || dport.len() != 2 {
        return None;
    }
    let original = (
        SocketAddr::new(src[0], sport[0]),
        SocketAddr::new(dst[0], dport[0]),
    );
    let reply = (
        SocketAddr::new(src[1], sport[1]),
        SocketAddr::new(dst[1], dport[1]),
    );
    Some((original, reply))
}

/// The pair the server's end sees, if `original` was translated: its client is the reply's
/// destination, its server the reply's source.
fn translation((original, reply): (Pair, Pair)) -> Option<Pair> {
    let (client, server) = (reply.1, reply.0);
    (client != original.0 || server != original.1).then_some((client, server))
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Nat {
    /// The connection as its server sees it: translated, or as it is. `asked` is when its
    /// announcement was made (the connection existed then): a reading of the table after that
    /// held its entry if it had one. `None` while no such reading was made and the table may be
    /// read again only later: ask again then.
    pub fn resolve(&mut self, pair: Pair, asked: Instant) -> Option<Pair> {
        let pair = (canonical(pair.0), canonical(pair.1));
        if self.unavailable {
            return Some(pair);
        }
        let now = Instant::now();
        if let Some((found, at)) = self.known.get(&pair)
            && now.duration_since(*at) < KEEP
        {
            return Some(found.unwrap_or(pair));
        }
        if self.last_read.is_none_or(|last| last < asked) {
            let wait = READ_EVERY.max(Duration::from_millis(
                self.last_bytes.saturating_mul(1000) / BYTES_PER_SECOND,
            ));
            if self
                .last_read
                .is_some_and(|last| now.duration_since(last) < wait)
            {
                return None;
            }
            self.read(now);
        }
        // Read since it was asked, and not in the table: not translated (or conntrack is off).
        let found = self.known.get(&pair).and_then(|(found, _)| *found);
        self.known.entry(pair).or_insert((None, now));
        Some(found.unwrap_or(pair))
    }

    fn read(&mut self, now: Instant) {
        self.last_read = Some(now);
        let Ok(text) = std::fs::read_to_string(CONNTRACK) else {
            self.unavailable = true;
            return;
        };
        self.last_bytes = text.len() as u64;
        if self.known.len() > MAX_CACHED {
            self.known.clear();
        }
        for (original, reply) in text.lines().filter_map(parse_line) {
            let original = (canonical(original.0), canonical(original.1));
            let reply = (canonical(reply.0), canonical(reply.1));
            let found = translation((original, reply));
            if found.is_some()
                && self
                    .known
                    .get(&original)
                    .is_none_or(|(before, _)| before.is_none())
            {
                self.translated += 1;
            }
            self.known.insert(original, (found, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    /// A client on 10.0.0.1 asking a Service's virtual address, translated to a pod; and a
    /// connection that is not translated.
    #[test]
    fn a_dnat_connection_is_seen_as_its_server_sees_it() {
        let dnat = "ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.96.0.10 \
                    sport=40312 dport=80 src=10.244.1.5 dst=10.0.0.1 sport=8080 dport=40312 \
                    [ASSURED] mark=0 zone=0 use=2";
        let parsed = parse_line(dnat).expect("tcp line");
        assert_eq!(parsed.0, (addr("10.0.0.1:40312"), addr("10.96.0.10:80")));
        assert_eq!(
            translation(parsed),
            Some((addr("10.0.0.1:40312"), addr("10.244.1.5:8080")))
        );
        let plain = "ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 \
                     sport=5000 dport=80 src=10.0.0.2 dst=10.0.0.1 sport=80 dport=5000 \
                     [ASSURED] mark=0 use=1";
        assert_eq!(translation(parse_line(plain).expect("tcp line")), None);
        let v6 = "ipv6     10 tcp      6 60 SYN_SENT src=fd00::1 dst=fd00::2 sport=5000 \
                  dport=80 [UNREPLIED] src=fd00::9 dst=fd00::1 sport=8080 dport=5000 mark=0 use=1";
        assert_eq!(
            translation(parse_line(v6).expect("tcp line")),
            Some((addr("[fd00::1]:5000"), addr("[fd00::9]:8080")))
        );
        assert_eq!(
            parse_line("ipv4 2 udp 17 29 src=1.1.1.1 dst=2.2.2.2 sport=1 dport=2"),
            None
        );
        assert_eq!(parse_line("ipv4 2 tcp 6 1 src=1.1.1.1"), None);
        assert_eq!(parse_line(""), None);
    }
}
