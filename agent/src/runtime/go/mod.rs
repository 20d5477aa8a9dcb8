//! Go executables: which toolchain built them ([`buildinfo`]), where the functions the runtime
//! probes attach to are ([`symbols`]), and the layouts the agent relies on per version.

pub mod buildinfo;
pub mod pclntab;
pub mod symbols;

pub use buildinfo::{GoError, build_info};

/// Go releases the runtime probes were verified on: the registers they read (`ABIInternal` on
/// amd64) hold `runtime.newproc1(fn, callergp, callerpc) *g`'s `callergp` and result,
/// `net/http.(*Transport).roundTrip(req)`'s request and `net/http.(*Request).write`'s receiver.
/// go1.19 (Debian bookworm's `golang-go`) is checked end to end by the causality tests. Other
/// releases changed `newproc1`'s parameters (1.17 passed `argp, narg` before `callergp`) and
/// stay off, logged, until a test covers them: a probe reading the wrong register would name
/// wrong parents.
#[must_use]
pub fn probes_supported(version: &str) -> bool {
    let Some(rest) = version.strip_prefix("go1.") else {
        return false;
    };
    let minor: u32 = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    minor == 19
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_releases_that_were_checked_are_probed() {
        assert!(probes_supported("go1.19.8"));
        assert!(
            !probes_supported("go1.17.3"),
            "newproc1 took argp and narg first"
        );
        assert!(!probes_supported("go1.16.15"), "stack-based ABI");
        assert!(!probes_supported("go1.23.1"), "not checked yet");
        assert!(!probes_supported("devel +abc"));
    }
}
