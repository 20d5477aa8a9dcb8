//! A connection's rank for the budget: a hash of its endpoints in `[0, 1)`, the same at both
//! ends (the endpoints are ordered first) and on every agent, so a share `keep` keeps exactly
//! the connections ranked below it, and a lower share sheds a superset of a higher one's.

use agent_common::{
    SockTuple,
    rank::{RANK_BITS, rank_hash, rank_of},
};

/// The rank of the connection `tuple` (as either end sees it), in `[0, 1)`.
#[must_use]
pub fn rank(tuple: &SockTuple) -> f64 {
    rank_of(rank_hash(tuple)) as f64 / (1_u64 << RANK_BITS) as f64
}

/// The lowest rank the programs shed at a share `keep` (as [`rank_of`] counts): what
/// [`rank`] keeps below `keep`, they keep below this.
#[must_use]
pub fn threshold(keep: f64) -> u64 {
    let all = (1_u64 << RANK_BITS) as f64;
    (keep.clamp(0.0, 1.0) * all).ceil() as u64
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

    #[test]
    fn the_programs_threshold_keeps_what_the_share_keeps() {
        for keep in [0.0, 0.1, 0.25, 0.5, 0.99, 1.0] {
            let t = threshold(keep);
            for p in 40_000..42_000 {
                let tuple = tuple(p, 8080);
                let kept = rank(&tuple) < keep;
                assert_eq!(
                    kept,
                    rank_of(rank_hash(&tuple)) < t,
                    "keep {keep}, port {p}"
                );
            }
        }
    }

    #[test]
    fn an_ipv4_end_ranks_as_its_v4_mapped_ipv6_peer() {
        let v4 = tuple(40_000, 8080);
        let mut v6 = v4;
        v6.family = agent_common::AF_INET6;
        for addr in [&mut v6.local_addr, &mut v6.remote_addr] {
            *addr = std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        }
        assert!((rank(&v4) - rank(&v6)).abs() < f64::EPSILON);
    }
}
