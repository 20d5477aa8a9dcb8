//! The agent's writes to the programs' connection table ([`crate::MAP_CONNS`]): the fields it
//! owns (the budget's state, the role, the in-band TLS mode), written one by one in place.
//!
//! The agent runs them in the kernel through a program it never attaches
//! ([`PROG_CONN_UPDATE`], by `BPF_PROG_TEST_RUN`). A read of the whole entry by the agent and a
//! write of it back would restore, stale, whatever the capture programs wrote in between (a
//! hidden request's start or answer, byte counts, the in-band state): with the agent's two
//! syscalls and its own work between them, a window of microseconds. The same rules, [`apply`],
//! serve the program and the agent's fallback for kernels that cannot run it.

use crate::{ConnInfo, Protocol};

/// The program's name in the object. Its arguments, as the raw tracepoint's `u64`s:
/// `[tgid, fd, conn_id, ConnUpdate, a, b, c]`; it returns what [`apply`] returns, or
/// [`NOT_WRITTEN`] when there is no entry for `(tgid, fd)`.
pub const PROG_CONN_UPDATE: &str = "conn_update";

/// Nothing was written: the entry is gone, is another connection now, or does not qualify.
pub const NOT_WRITTEN: u32 = 0;

/// What to write.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnUpdate {
    /// `protocol` := [`Protocol::Opaque`]: the programs stop copying and sending its bytes.
    /// Returns 1.
    Opaque = 1,
    /// `role` := `a` (a [`crate::Role`]). Returns 1.
    Role = 2,
    /// On a [`Protocol::Tls`] connection only, `inband_tls` := `a`. Returns 1.
    InbandTls = 3,
    /// The budget's move to state `a` ([`Protocol::ShedNext`] or [`Protocol::ResumeNext`]),
    /// `b` being the state a connection never switched goes back to, with `role` := `c`.
    /// Returns 1 + the state it was in. The rules:
    /// - to `ResumeNext` from `ShedNext` (never switched): straight to `b`;
    /// - to `ShedNext` from `ResumeNext` (still hidden): [`Protocol::Shed`], its hidden request
    ///   still counted;
    /// - otherwise to `a`; entering the budget's states from outside them, `last_direction`
    ///   := 0 first (the programs track it only within them).
    Budget = 4,
    /// The agent lost the connection's opening (its record dropped by a full ring, or its own
    /// table evicted it): the caller removes the entry, so the programs discover the socket
    /// again at its next syscall and announce it anew. Not in the budget's states (their hidden
    /// request counts live in the entry). Returns 1; the removal is the caller's, after.
    Forget = 5,
}

impl ConnUpdate {
    /// The operation numbered `value`.
    #[must_use]
    #[inline]
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Opaque),
            2 => Some(Self::Role),
            3 => Some(Self::InbandTls),
            4 => Some(Self::Budget),
            5 => Some(Self::Forget),
            _ => None,
        }
    }
}

/// Writes `op` (with its arguments `a`, `b`, `c`) to the entry at `entry` if it is still the
/// connection `conn_id`; returns what [`ConnUpdate`] says, or [`NOT_WRITTEN`].
///
/// Each field is written by one store, in program order (volatile): a capture program on
/// another CPU reading the entry meanwhile sees each field's old value or its new one, and where
/// stores stay in order (x86; not arm64) it sees the direction and the role no later than the
/// state. A capture program running on the same connection on another CPU meanwhile (it copies
/// the state at its lookup and may write a switch later in its run: hundreds of nanoseconds to
/// microseconds) can still interleave with these stores; docs/overhead.md says what that can
/// do.
///
/// # Safety
/// `entry` must be valid for reads and writes of a [`ConnInfo`] for the call.
#[inline(always)]
pub unsafe fn apply(
    entry: *mut ConnInfo,
    conn_id: u64,
    op: ConnUpdate,
    a: u32,
    b: u32,
    c: u32,
) -> u32 {
    use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
    // SAFETY: the caller's; each access reads or writes one field.
    unsafe {
        if read_volatile(addr_of!((*entry).conn_id)) != conn_id {
            return NOT_WRITTEN;
        }
        let was = read_volatile(addr_of!((*entry).protocol));
        match op {
            ConnUpdate::Opaque => {
                write_volatile(addr_of_mut!((*entry).protocol), Protocol::Opaque as u32);
                1
            }
            ConnUpdate::Role => {
                write_volatile(addr_of_mut!((*entry).role), a);
                1
            }
            ConnUpdate::InbandTls => {
                if was != Protocol::Tls as u32 {
                    return NOT_WRITTEN;
                }
                write_volatile(addr_of_mut!((*entry).inband_tls), a);
                1
            }
            ConnUpdate::Budget => {
                let Some(state) = budget_state(was, a, b) else {
                    return NOT_WRITTEN;
                };
                if !Protocol::is_budget_state(was) {
                    write_volatile(addr_of_mut!((*entry).last_direction), 0);
                }
                write_volatile(addr_of_mut!((*entry).role), c);
                write_volatile(addr_of_mut!((*entry).protocol), state);
                was + 1
            }
            ConnUpdate::Forget => {
                if Protocol::is_budget_state(was) {
                    return NOT_WRITTEN;
                }
                1
            }
        }
    }
}

/// [`ConnUpdate::Budget`]'s next state for a connection in state `was` moved `to`, `back_to`
/// for one never switched; `None` for a `to` that is not the budget's to write.
#[inline]
#[must_use]
pub const fn budget_state(was: u32, to: u32, back_to: u32) -> Option<u32> {
    let shed_next = Protocol::ShedNext as u32;
    let resume_next = Protocol::ResumeNext as u32;
    if to == resume_next && was == shed_next {
        Some(back_to)
    } else if to == shed_next && was == resume_next {
        // Still hidden: it stays so, its hidden request still counted.
        Some(Protocol::Shed as u32)
    } else if to == shed_next || to == resume_next {
        Some(to)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(protocol: Protocol) -> ConnInfo {
        // SAFETY: `ConnInfo` is plain integers; all zeroes is a valid value.
        let mut info: ConnInfo = unsafe { core::mem::zeroed() };
        info.conn_id = 7;
        info.protocol = protocol as u32;
        info.last_direction = 2;
        info.hidden_ask = 99;
        info.bytes_sent = 1234;
        info
    }

    fn run(info: &mut ConnInfo, conn_id: u64, op: ConnUpdate, a: u32, b: u32, c: u32) -> u32 {
        // SAFETY: a live, exclusive reference.
        unsafe { apply(info, conn_id, op, a, b, c) }
    }

    #[test]
    fn another_connection_is_left_alone() {
        let mut info = entry(Protocol::Http);
        assert_eq!(run(&mut info, 8, ConnUpdate::Opaque, 0, 0, 0), NOT_WRITTEN);
        assert_eq!(info.protocol, Protocol::Http as u32);
    }

    #[test]
    fn opaque_role_and_inband_tls_write_one_field() {
        let mut info = entry(Protocol::Http);
        assert_eq!(run(&mut info, 7, ConnUpdate::Opaque, 0, 0, 0), 1);
        assert_eq!(info.protocol, Protocol::Opaque as u32);
        assert_eq!(run(&mut info, 7, ConnUpdate::Role, 2, 0, 0), 1);
        assert_eq!(info.role, 2);
        // Not TLS: nothing written.
        assert_eq!(
            run(&mut info, 7, ConnUpdate::InbandTls, 1, 0, 0),
            NOT_WRITTEN
        );
        assert_eq!(info.inband_tls, 0);
        let mut tls = entry(Protocol::Tls);
        assert_eq!(run(&mut tls, 7, ConnUpdate::InbandTls, 1, 0, 0), 1);
        assert_eq!(tls.inband_tls, 1);
        // What the programs own is untouched.
        assert_eq!((info.hidden_ask, info.bytes_sent), (99, 1234));
    }

    #[test]
    fn budget_moves_follow_the_rules() {
        let (shed, shed_next, resume_next, http) = (
            Protocol::Shed as u32,
            Protocol::ShedNext as u32,
            Protocol::ResumeNext as u32,
            Protocol::Http as u32,
        );
        // Into the budget from outside: the direction starts afresh, the role is set.
        let mut info = entry(Protocol::Http);
        assert_eq!(
            run(&mut info, 7, ConnUpdate::Budget, shed_next, http, 2),
            http + 1
        );
        assert_eq!(
            (info.protocol, info.last_direction, info.role),
            (shed_next, 0, 2)
        );
        // Never switched, resumed: straight back.
        assert_eq!(
            run(&mut info, 7, ConnUpdate::Budget, resume_next, http, 2),
            shed_next + 1
        );
        assert_eq!(info.protocol, http);
        // Shed, resumed, shed again before its next request: still hidden, direction kept.
        let mut info = entry(Protocol::Shed);
        assert_eq!(
            run(&mut info, 7, ConnUpdate::Budget, resume_next, http, 2),
            shed + 1
        );
        assert_eq!((info.protocol, info.last_direction), (resume_next, 2));
        assert_eq!(
            run(&mut info, 7, ConnUpdate::Budget, shed_next, http, 2),
            resume_next + 1
        );
        assert_eq!((info.protocol, info.last_direction), (shed, 2));
        // Not a state the budget writes.
        assert_eq!(
            run(&mut info, 7, ConnUpdate::Budget, http, http, 2),
            NOT_WRITTEN
        );
        assert_eq!((info.hidden_ask, info.bytes_sent), (99, 1234));
    }

    #[test]
    fn forget_spares_the_budgets_connections() {
        let mut info = entry(Protocol::Http);
        assert_eq!(run(&mut info, 7, ConnUpdate::Forget, 0, 0, 0), 1);
        assert_eq!(run(&mut info, 8, ConnUpdate::Forget, 0, 0, 0), NOT_WRITTEN);
        for state in [Protocol::Shed, Protocol::ShedNext, Protocol::ResumeNext] {
            let mut info = entry(state);
            assert_eq!(
                run(&mut info, 7, ConnUpdate::Forget, 0, 0, 0),
                NOT_WRITTEN,
                "{state:?}"
            );
        }
    }
}
