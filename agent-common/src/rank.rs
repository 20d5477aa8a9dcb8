//! A connection's rank for the budget: a hash of its endpoints, the same at both ends (the
//! endpoints are ordered first), on every agent, and in the programs and the agent alike. The
//! agent keeps the connections ranked below a share; the programs shed a new connection of a
//! process the agent names ([`crate::MAP_SHED_OPENS`]) when it ranks at or above that share,
//! and find its server end on this host by the same hash ([`crate::MAP_SHED_TUPLES`]).

// Inlined into the programs: each call out of line would take a frame of the 512-byte stack
// their call chain shares.
#![allow(clippy::inline_always)]

use crate::{AF_INET, SockTuple};

/// Bits of a rank ([`rank_of`]): exactly representable in an `f64`.
pub const RANK_BITS: u32 = 53;

/// The hash of the connection `tuple` (as either end sees it). Plain integer arithmetic, no
/// loop the verifier must walk twice: the programs run it at a `connect`.
#[inline(always)]
#[must_use]
pub fn rank_hash(tuple: &SockTuple) -> u64 {
    let local = endpoint(tuple.family, &tuple.local_addr, tuple.local_port);
    let remote = endpoint(tuple.family, &tuple.remote_addr, tuple.remote_port);
    let (low, high) = if local <= remote {
        (local, remote)
    } else {
        (remote, local)
    };
    let mut h = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(tuple.sock_type);
    h = mix(h ^ low.0);
    h = mix(h ^ low.1);
    h = mix(h ^ high.0);
    mix(h ^ high.1)
}

/// The rank in `[0, 2^RANK_BITS)` of a connection whose [`rank_hash`] is `hash`.
#[inline(always)]
#[must_use]
pub const fn rank_of(hash: u64) -> u64 {
    hash >> (64 - RANK_BITS)
}

/// An endpoint as two words: the address (IPv4 in its v4-mapped IPv6 form: one end's socket
/// may be IPv6 and the other's IPv4) and the port.
#[inline(always)]
fn endpoint(family: u16, addr: &[u8; 16], port: u16) -> (u64, u64) {
    let (high, low) = if family == AF_INET {
        let v4 = u64::from(u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]));
        (0, 0xffff_0000_0000 | v4)
    } else {
        (
            u64::from_be_bytes([
                addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
            ]),
            u64::from_be_bytes([
                addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
            ]),
        )
    };
    (high ^ low.rotate_left(17), u64::from(port))
}

/// splitmix64's finaliser.
#[inline(always)]
const fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
