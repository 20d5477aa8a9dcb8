//! The addresses of this host (of the agent's network namespace): a CLIENT span whose server is
//! one of them has its server end traced here, and needs no peer.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// The host's interface addresses, as last read.
#[derive(Debug, Default, Clone)]
pub struct LocalAddrs {
    addrs: HashSet<IpAddr>,
}

impl LocalAddrs {
    /// Reads every interface address (`getifaddrs`). An error leaves the set empty: every
    /// non-loopback server is then announced, which costs a datagram, never a wrong link.
    #[must_use]
    pub fn read() -> Self {
        let mut addrs = HashSet::new();
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs writes a list head into `list`, which is freed below.
        if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
            return Self { addrs };
        }
        let mut at = list;
        while !at.is_null() {
            // SAFETY: a node of the list getifaddrs built, alive until freeifaddrs.
            let entry = unsafe { &*at };
            if !entry.ifa_addr.is_null() {
                // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
                let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
                if family == libc::AF_INET {
                    // SAFETY: an AF_INET address is a sockaddr_in; read unaligned, as the list
                    // only promises a sockaddr's alignment.
                    let sin = unsafe {
                        std::ptr::read_unaligned(entry.ifa_addr.cast::<libc::sockaddr_in>())
                    };
                    addrs.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                } else if family == libc::AF_INET6 {
                    // SAFETY: an AF_INET6 address is a sockaddr_in6, read as above.
                    let sin6 = unsafe {
                        std::ptr::read_unaligned(entry.ifa_addr.cast::<libc::sockaddr_in6>())
                    };
                    addrs.insert(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
            }
            at = entry.ifa_next;
        }
        // SAFETY: the list getifaddrs returned, freed once.
        unsafe { libc::freeifaddrs(list) };
        Self { addrs }
    }

    /// The address other hosts most likely reach this one at, when `--peer-address` does not
    /// say: the lowest IPv4 address that is not loopback or link-local, else the lowest such
    /// IPv6 address (a host with several, e.g. a node with container bridges, should say).
    #[must_use]
    pub fn first_global(&self) -> Option<IpAddr> {
        let global = |ip: &&IpAddr| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
            IpAddr::V6(v6) => {
                !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
            }
        };
        let v4 = self
            .addrs
            .iter()
            .filter(global)
            .filter(|ip| ip.is_ipv4())
            .min();
        v4.or_else(|| self.addrs.iter().filter(global).min())
            .copied()
    }

    /// Whether `ip` is this host's (loopback, unspecified, or an interface's address).
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_loopback() || ip.is_unspecified() || self.addrs.contains(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_the_hosts_own_addresses_are_local() {
        let local = LocalAddrs::read();
        assert!(local.contains("127.0.0.1".parse().expect("ip")));
        assert!(local.contains("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(local.contains("::1".parse().expect("ip")));
        // TEST-NET-3 (RFC 5737) is never assigned.
        assert!(!local.contains("203.0.113.9".parse().expect("ip")));
    }
}
