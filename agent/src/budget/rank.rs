//! A connection's rank for the budget: a hash of its endpoints in `[0, 1)`, the same at both
//! ends (the endpoints are ordered first) and on every agent, so a share `keep` keeps exactly
//! the connections ranked below it, and a lower share sheds a superset of a higher one's.

use agent_common::SockTuple;

/// The rank of the connection `tuple` (as either end sees it).
#[must_use]
pub fn rank(tuple: &SockTuple) -> f64 {
    let (local, remote) = crate::net::tuple_addrs(tuple);
    let (local, remote) = (endpoint(local), endpoint(remote));
    let (low, high) = if local <= remote {
        (local, remote)
    } else {
        (remote, local)
    };
    let mut h = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(tuple.sock_type);
    for word in [low.0, low.1, high.0, high.1] {
        h = mix(h ^ word);
    }
    // The top 53 bits: exactly representable.
    (h >> 11) as f64 / (1_u64 << 53) as f64
}

/// An endpoint as two words: the address (IPv4 in its v4-mapped IPv6 form: one end's socket
/// may be IPv6 and the other's IPv4) and the port.
fn endpoint(addr: std::net::SocketAddr) -> (u64, u64) {
    let v6 = match addr.ip().to_canonical() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    let bits = u128::from(v6);
    (
        (bits >> 64) as u64 ^ (bits as u64).rotate_left(17),
        u64::from(addr.port()),
    )
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(local: u16, remote: u16) -> SockTuple {
        crate::net::loopback_tuple(local, remote)
    }

    #[test]
    fn both_ends_rank_alike_and_ranks_spread() {
        let a = rank(&tuple(40_000, 8080));
        assert!((a - rank(&tuple(8080, 40_000))).abs() < f64::EPSILON);
        let kept = (40_000..41_000)
            .filter(|&p| rank(&tuple(p, 8080)) < 0.25)
            .count();
        assert!((200..300).contains(&kept), "{kept} of 1000 below 0.25");
    }
}
