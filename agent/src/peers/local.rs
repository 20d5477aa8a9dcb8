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
    /// The addresses of the interface the default IPv4 route leaves by, if any.
    default_route: Vec<IpAddr>,
}

impl LocalAddrs {
    /// Reads every interface address (`getifaddrs`). An error leaves the set empty: every
    /// non-loopback server is then announced, which costs a datagram, never a wrong link.
    #[must_use]
    pub fn read() -> Self {
        let mut addrs = HashSet::new();
        let mut default_route = Vec::new();
        let route_iface = default_route_interface();
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs writes a list head into `list`, which is freed below.
        if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
            return Self {
                addrs,
                default_route,
            };
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
                    let ip = IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
                    addrs.insert(ip);
                    // SAFETY: ifa_name is a NUL-terminated string alive until freeifaddrs.
                    let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
                    if route_iface.as_deref() == Some(name.to_bytes()) {
                        default_route.push(ip);
                    }
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
        Self {
            addrs,
            default_route,
        }
    }

    /// The address other hosts most likely reach this one at, when `--peer-address` does not
    /// say: the lowest global address of the interface the default IPv4 route leaves by, else
    /// the lowest global IPv4 address, else the lowest global IPv6 address (not loopback or
    /// link-local). A host with several networks should say (`--peer-address`).
    #[must_use]
    pub fn first_global(&self) -> Option<IpAddr> {
        let global = |ip: &&IpAddr| routable(**ip);
        let routed = self.default_route.iter().filter(global).min();
        let v4 = self
            .addrs
            .iter()
            .filter(global)
            .filter(|ip| ip.is_ipv4())
            .min();
        routed
            .or(v4)
            .or_else(|| self.addrs.iter().filter(global).min())
            .copied()
    }

    /// Whether `ip` is this host's (loopback, unspecified, or an interface's address).
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_loopback() || ip.is_unspecified() || self.addrs.contains(&ip)
    }
}

/// Whether `ip` is a routable unicast address another host could reach an agent at (not
/// loopback, multicast, broadcast, unspecified or link-local, where cloud metadata services and
/// the like listen).
#[must_use]
pub fn routable(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_link_local())
        }
        IpAddr::V6(v6) => {
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// The interface of the default IPv4 route (`/proc/net/route`: destination and mask zero, up),
/// the one of lowest metric when there are several.
fn default_route_interface() -> Option<Vec<u8>> {
    default_route_in(&std::fs::read_to_string("/proc/net/route").ok()?)
}

/// [`default_route_interface`] of a `/proc/net/route` text.
fn default_route_in(table: &str) -> Option<Vec<u8>> {
    /// `RTF_UP` of the route's flags.
    const UP: u32 = 1;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            let metric: u32 = fields.get(6)?.parse().ok()?;
            (fields[1] == "00000000" && *fields.get(7)? == "00000000" && flags & UP != 0)
                .then_some((metric, fields[0]))
        })
        .min_by_key(|&(metric, _)| metric)
        .map(|(_, iface)| iface.as_bytes().to_vec())
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

    #[test]
    fn the_default_route_of_lowest_metric_that_is_up_is_found() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     wlan0\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
                     eth1\t00000000\t0101A8C0\t0002\t0\t0\t10\t00000000\t0\t0\t0\n\
                     eth0\t00000000\t010011AC\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                     eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(
            default_route_in(table),
            Some(b"eth0".to_vec()),
            "eth1's is down"
        );
        assert_eq!(default_route_in("Iface\tDestination\n"), None);
    }

    #[test]
    fn the_default_routes_interface_names_this_agent_first() {
        let local = LocalAddrs {
            addrs: ["192.168.1.5", "172.17.0.1", "127.0.0.1", "169.254.1.1"]
                .iter()
                .map(|ip| ip.parse().expect("ip"))
                .collect(),
            default_route: vec!["192.168.1.5".parse().expect("ip")],
        };
        assert_eq!(
            local.first_global(),
            Some("192.168.1.5".parse().expect("ip")),
            "not the container bridge's lower address"
        );
        let no_route = LocalAddrs {
            default_route: Vec::new(),
            ..local
        };
        assert_eq!(
            no_route.first_global(),
            Some("172.17.0.1".parse().expect("ip")),
            "the lowest global IPv4 address"
        );
        let only_v6 = LocalAddrs {
            addrs: ["::1", "fe80::1", "fd00::7"]
                .iter()
                .map(|ip| ip.parse().expect("ip"))
                .collect(),
            default_route: Vec::new(),
        };
        assert_eq!(only_v6.first_global(), Some("fd00::7".parse().expect("ip")));
    }
}
