//! Go executables: which toolchain built them ([`buildinfo`]), where the functions the runtime
//! probes attach to are ([`symbols`]), and the layouts the agent relies on per version.

pub mod buildinfo;
pub mod pclntab;
pub mod symbols;

pub use buildinfo::{GoError, build_info};

/// What the runtime probes rely on in one Go release: the registers they read (`ABIInternal` on
/// amd64: `runtime.newproc1`'s result in AX and R14 = `g0` on the system stack,
/// `net/http.(*persistConn).roundTrip`'s `*transportRequest` in BX (its `*Request` first), `net/http.(*Request).write`'s receiver in
/// AX) and two struct offsets (`g.m`, `m.curg`), read from the release's DWARF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub g_m: u16,
    pub m_curg: u16,
}

/// The layout of a Go release the probes were verified on, end to end by the causality tests:
/// go1.19 (Debian bookworm's `golang-go`). Other releases changed `newproc1`'s parameters (1.17)
/// or `runtime.m`, and stay off, logged, until a test covers them: a probe reading the wrong
/// offset would name wrong parents.
#[must_use]
pub fn layout(version: &str) -> Option<Layout> {
    let rest = version.strip_prefix("go1.")?;
    let minor: u32 = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok())?;
    (minor == 19).then_some(Layout {
        g_m: 48,
        m_curg: 192,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_releases_that_were_checked_are_probed() {
        assert_eq!(
            layout("go1.19.8"),
            Some(Layout {
                g_m: 48,
                m_curg: 192
            })
        );
        assert_eq!(
            layout("go1.17.3"),
            None,
            "newproc1 took argp and narg first"
        );
        assert_eq!(layout("go1.16.15"), None, "stack-based ABI");
        assert_eq!(layout("go1.23.1"), None, "not checked yet");
        assert_eq!(layout("devel +abc"), None);
    }
}
