//! The agent's own listeners (web UI, query API, `/metrics`): the connections of whoever views
//! them (a browser, `sockspan blame`, curl, Prometheus, Grafana) are not traced, or the agent's
//! viewers would crowd out the services it watches (measured before: 45 % of the stored spans
//! after a session in the UI). `--trace-own-traffic` traces them again, for debugging.

use std::net::SocketAddr;

use crate::peers::local::LocalAddrs;

#[derive(Debug, Default)]
pub struct OwnListeners {
    listeners: Vec<SocketAddr>,
    /// This host's addresses: a listener on every address (`0.0.0.0`, `::`) is reached through
    /// any of them.
    local: LocalAddrs,
}

impl OwnListeners {
    #[must_use]
    pub fn new(listeners: Vec<SocketAddr>) -> Self {
        let local = if listeners.iter().any(|l| l.ip().is_unspecified()) {
            LocalAddrs::read()
        } else {
            LocalAddrs::default()
        };
        Self { listeners, local }
    }

    /// Whether a connection to `remote` is one to the agent's own listeners.
    #[must_use]
    pub fn serve(&self, remote: SocketAddr) -> bool {
        let ip = remote.ip().to_canonical();
        self.listeners.iter().any(|l| {
            l.port() == remote.port()
                && (l.ip().to_canonical() == ip
                    || (l.ip().is_unspecified() && self.local.contains(ip)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_on_one_address_or_on_all_of_this_hosts() {
        let one = OwnListeners::new(vec!["127.0.0.1:16686".parse().expect("addr")]);
        assert!(one.serve("127.0.0.1:16686".parse().expect("addr")));
        assert!(one.serve("[::ffff:127.0.0.1]:16686".parse().expect("addr")));
        assert!(!one.serve("127.0.0.1:16687".parse().expect("addr")));
        assert!(!one.serve("203.0.113.9:16686".parse().expect("addr")));
        let all = OwnListeners::new(vec!["0.0.0.0:16686".parse().expect("addr")]);
        assert!(all.serve("127.0.0.1:16686".parse().expect("addr")));
        // Another host's port 16686 (a Jaeger elsewhere) is traced as any service is.
        assert!(!all.serve("203.0.113.9:16686".parse().expect("addr")));
        assert!(!OwnListeners::default().serve("127.0.0.1:16686".parse().expect("addr")));
    }
}
