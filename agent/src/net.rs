//! Socket addresses from the kernel's tuple encoding.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use agent_common::{AF_INET, SOCK_DGRAM, SOCK_STREAM, SockTuple};

fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

/// (local, remote) endpoints of a tuple. v4-mapped IPv6 addresses stay IPv6, as the socket has
/// them; callers that compare use `to_canonical`.
#[must_use]
pub fn tuple_addrs(tuple: &SockTuple) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(ip(tuple.family, &tuple.local_addr), tuple.local_port),
        SocketAddr::new(ip(tuple.family, &tuple.remote_addr), tuple.remote_port),
    )
}

/// A TCP tuple between two ports of 127.0.0.1 (synthesized traffic and tests).
#[cfg(any(test, feature = "bench", feature = "fuzz"))]
#[must_use]
pub fn loopback_tuple(local_port: u16, remote_port: u16) -> SockTuple {
    let mut t = SockTuple {
        local_port,
        remote_port,
        family: AF_INET,
        sock_type: SOCK_STREAM,
        ..SockTuple::default()
    };
    t.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    t.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    t
}

/// `"ipv4"` or `"ipv6"`.
#[must_use]
pub const fn family_name(family: u16) -> &'static str {
    if family == AF_INET { "ipv4" } else { "ipv6" }
}

/// `"tcp"`, `"udp"` or `"other"`.
#[must_use]
pub const fn transport_name(sock_type: u16) -> &'static str {
    match sock_type {
        SOCK_STREAM => "tcp",
        SOCK_DGRAM => "udp",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::AF_INET6;

    #[test]
    fn decodes_v4_v6_and_mapped() {
        let mut t = SockTuple {
            family: AF_INET,
            local_port: 1,
            remote_port: 2,
            ..SockTuple::default()
        };
        t.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t.remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let (l, r) = tuple_addrs(&t);
        assert_eq!(l.to_string(), "127.0.0.1:1");
        assert_eq!(r.to_string(), "10.0.0.2:2");
        t.family = AF_INET6;
        t.local_addr = Ipv6Addr::LOCALHOST.octets();
        t.remote_addr = Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        let (l, r) = tuple_addrs(&t);
        assert_eq!(l.to_string(), "[::1]:1");
        assert_eq!(r.ip().to_canonical().to_string(), "127.0.0.1");
    }
}
