//! The process's effective capabilities, read from `/proc/self/status`.

/// Capabilities sockspan cares about, with the bit numbers of `<linux/capability.h>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    DacReadSearch = 2,
    NetAdmin = 12,
    SysPtrace = 19,
    SysAdmin = 21,
    SysResource = 24,
    Perfmon = 38,
    Bpf = 39,
}

impl Cap {
    pub const ALL: [Self; 7] = [
        Self::Bpf,
        Self::Perfmon,
        Self::SysAdmin,
        Self::NetAdmin,
        Self::SysResource,
        Self::SysPtrace,
        Self::DacReadSearch,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::DacReadSearch => "CAP_DAC_READ_SEARCH",
            Self::NetAdmin => "CAP_NET_ADMIN",
            Self::SysPtrace => "CAP_SYS_PTRACE",
            Self::SysAdmin => "CAP_SYS_ADMIN",
            Self::SysResource => "CAP_SYS_RESOURCE",
            Self::Perfmon => "CAP_PERFMON",
            Self::Bpf => "CAP_BPF",
        }
    }

    /// What sockspan does with it.
    #[must_use]
    pub const fn purpose(self) -> &'static str {
        match self {
            Self::Bpf => "create maps and load programs",
            Self::Perfmon => "attach to tracepoints, read kernel memory from programs",
            Self::SysAdmin => {
                "attach uprobes (goroutine, asyncio task and Node.js callback causality, TLS plaintext); stands in for CAP_BPF + CAP_PERFMON before 5.8"
            }
            Self::SysResource => "lift RLIMIT_MEMLOCK on kernels before 5.11",
            Self::SysPtrace => "read /proc/<pid>/exe and fd of other users' processes",
            Self::DacReadSearch => "read /proc/<pid>/fd and net tables of other users",
            Self::NetAdmin => {
                "attach the in-band mode's sock_ops program to a cgroup (`--in-band` only)"
            }
        }
    }
}

/// Effective capability bits, or `None` if procfs cannot say.
#[must_use]
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

#[must_use]
pub fn has(bits: u64, cap: Cap) -> bool {
    bits & (1 << cap as u32) != 0
}

/// `Err` with the missing capabilities when loading programs cannot work.
pub fn check_can_load() -> Result<(), String> {
    let Some(bits) = effective() else {
        return Ok(());
    };
    let bpf = has(bits, Cap::Bpf) || has(bits, Cap::SysAdmin);
    let perfmon = has(bits, Cap::Perfmon) || has(bits, Cap::SysAdmin);
    if bpf && perfmon {
        return Ok(());
    }
    let missing: Vec<&str> = [(bpf, Cap::Bpf), (perfmon, Cap::Perfmon)]
        .into_iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, cap)| cap.name())
        .collect();
    Err(format!(
        "sockspan needs root, or at least CAP_BPF and CAP_PERFMON (missing: {}); run it with sudo, or see deploy/README.md for the measured capability set",
        missing.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let bits = parse_cap_eff("Name:\tx\nCapEff:\t000001c000200000\n").expect("bits");
        assert!(has(bits, Cap::Bpf) && has(bits, Cap::Perfmon) && has(bits, Cap::SysAdmin));
        assert!(!has(bits, Cap::SysPtrace));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }
}
