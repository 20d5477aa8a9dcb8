//! Process metadata (comm, executable, command line, container id) read from procfs and cached.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::runtime::Runtime;

/// A Kubernetes pod, from what a process in it shows the node: its cgroup (`kubepods`), its
/// `HOSTNAME` (the pod's name) and its service account's namespace file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: Option<String>,
    /// The pod's uid from the cgroup path: the key of the API server's pod list (labels, owner).
    pub uid: Option<String>,
}

impl Pod {
    /// The workload a pod's name comes from, by the controllers' naming: a `Deployment`'s pods
    /// are `<name>-<pod-template-hash>-<5>`, a `DaemonSet`'s or Job's `<name>-<5>`, a
    /// `StatefulSet`'s `<name>-<ordinal>`. A bare pod keeps its name.
    #[must_use]
    pub fn workload(&self) -> String {
        fn is_suffix(part: &str, lengths: std::ops::RangeInclusive<usize>) -> bool {
            // The alphabet Kubernetes draws generated suffixes from: no vowels, no 0 1 3.
            lengths.contains(&part.len())
                && part
                    .bytes()
                    .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        }
        let parts: Vec<&str> = self.name.split('-').collect();
        let mut keep = parts.len();
        if keep >= 2 && parts[keep - 1].bytes().all(|b| b.is_ascii_digit()) {
            keep -= 1;
        } else if keep >= 2 && is_suffix(parts[keep - 1], 5..=5) {
            keep -= 1;
            if keep >= 2 && is_suffix(parts[keep - 1], 6..=10) {
                keep -= 1;
            }
        }
        parts[..keep].join("-")
    }
}

/// What sockspan knows about a traced process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    /// Path of the executable; empty when it could not be read (the process exited).
    pub exe: String,
    pub cmdline: Vec<String>,
    /// Container id taken from the cgroup path, when the process runs in one.
    pub container_id: Option<String>,
    /// The name its runtime gave that container (Podman, CRI-O, Docker), when on this host.
    pub container_name: Option<String>,
    /// `OTEL_SERVICE_NAME` from the process's environment, when set.
    pub otel_service_name: Option<String>,
    /// The working directory (as the process sees it); empty when unreadable.
    pub cwd: String,
    /// The systemd unit whose cgroup the process is in (`model-api.service` → `model-api`).
    pub systemd_unit: Option<String>,
    /// The Kubernetes pod the process runs in, as far as the node shows it.
    pub pod: Option<Pod>,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22): with the pid, names
    /// this process among all that had its pid.
    pub start_ticks: u64,
    /// For a worker an interpreter started for another program (Python's `multiprocessing`
    /// spawn: `python -c "from multiprocessing.spawn import spawn_main; …"`, as uvicorn's
    /// `--workers` makes): the process that started it, whose application it serves.
    pub launcher: Option<Arc<ProcessInfo>>,
    /// The language runtime its executable was built for, where that changes causality rules.
    pub runtime: Runtime,
}

impl ProcessInfo {
    /// Reads `/proc/<pid>`. Fields that cannot be read stay empty: a process may exit between a
    /// syscall and this read, and that must not lose the event.
    #[must_use]
    pub fn read(pid: u32) -> Self {
        let base = format!("/proc/{pid}");
        let comm = std::fs::read_to_string(format!("{base}/comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        let exe = std::fs::read_link(format!("{base}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let cmdline: Vec<String> = std::fs::read(format!("{base}/cmdline"))
            .map(|raw| {
                raw.split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let cgroup = std::fs::read_to_string(format!("{base}/cgroup")).unwrap_or_default();
        let container_id = container_id_from_cgroup(&cgroup);
        let container_name = container_id.as_deref().and_then(crate::containers::name);
        let environ = std::fs::read(format!("{base}/environ")).unwrap_or_default();
        let otel_service_name = env_var(&environ, b"OTEL_SERVICE_NAME");
        let pod = cgroup.contains("kubepods").then(|| Pod {
            name: env_var(&environ, b"HOSTNAME").unwrap_or_default(),
            namespace: std::fs::read_to_string(format!(
                "{base}/root/var/run/secrets/kubernetes.io/serviceaccount/namespace"
            ))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
            uid: pod_uid_from_cgroup(&cgroup),
        });
        let stat = std::fs::read_to_string(format!("{base}/stat")).unwrap_or_default();
        let start_ticks = stat_field(&stat, 22).unwrap_or(0);
        let launcher = cmdline
            .iter()
            .any(|a| a.contains("multiprocessing.spawn") || a == "--multiprocessing-fork")
            .then(|| stat_field(&stat, 4))
            .flatten()
            .and_then(|ppid| u32::try_from(ppid).ok())
            .filter(|&ppid| ppid > 1)
            .map(|ppid| Arc::new(Self::read(ppid)));
        Self {
            pid,
            comm,
            exe,
            cmdline,
            container_id,
            container_name,
            otel_service_name,
            cwd: std::fs::read_link(format!("{base}/cwd"))
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            systemd_unit: systemd_unit_from_cgroup(&cgroup),
            pod: pod.filter(|p| !p.name.is_empty()),
            start_ticks,
            launcher,
            runtime: Runtime::of_process(pid),
        }
    }

    /// The executable's file name, or the comm when the executable is unknown.
    #[must_use]
    pub fn exe_name(&self) -> &str {
        self.exe
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.comm)
    }
}

/// The value of `name` in a NUL-separated environment block; empty values count as unset.
fn env_var(environ: &[u8], name: &[u8]) -> Option<String> {
    environ.split(|&b| b == 0).find_map(|entry| {
        let value = entry.strip_prefix(name)?.strip_prefix(b"=")?;
        let value = String::from_utf8_lossy(value).trim().to_string();
        (!value.is_empty()).then_some(value)
    })
}

/// Field `n` (1-based, as proc(5) numbers them; 3 or more) of `/proc/<pid>/stat`, counted
/// after the parenthesised comm, which may itself hold spaces and parentheses: 4 is the parent's
/// pid, 22 the start time.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm
        .split_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// The systemd service a process belongs to, from `/proc/<pid>/cgroup`: the deepest path
/// segment `<unit>.service`, leaving out user managers (`user@0.service`) and templates'
/// instances keep their `@instance` (`worker@3.service` → `worker@3`).
#[must_use]
pub fn systemd_unit_from_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| path.rsplit('/'))
        .find_map(|segment| {
            let unit = segment.strip_suffix(".service")?;
            (!unit.is_empty() && !unit.starts_with("user@")).then(|| unit.to_string())
        })
}

/// Finds a Kubernetes pod's uid in `/proc/<pid>/cgroup`, as the kubelet names pod cgroups: with
/// the systemd driver `kubepods-burstable-pod<uid, '_' for '-'>.slice`, with cgroupfs
/// `/kubepods/burstable/pod<uid>/`.
#[must_use]
pub fn pod_uid_from_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .filter(|path| path.contains("kubepods"))
        .flat_map(|path| path.split('/'))
        .find_map(|segment| {
            let segment = segment.strip_suffix(".slice").unwrap_or(segment);
            let (_, uid) = segment.rsplit_once("pod")?;
            let uid = uid.replace('_', "-");
            let is_uuid = uid.len() == 36
                && uid.bytes().enumerate().all(|(i, b)| {
                    if matches!(i, 8 | 13 | 18 | 23) {
                        b == b'-'
                    } else {
                        b.is_ascii_hexdigit()
                    }
                });
            is_uuid.then_some(uid)
        })
}

/// Finds a container id in `/proc/<pid>/cgroup`: the last path segment holding 64 hex digits, as
/// Docker (`docker-<id>.scope`, `/docker/<id>`), containerd (`cri-containerd-<id>.scope`), CRI-O
/// (`crio-<id>.scope`) and Kubernetes (`/kubepods/.../<id>`) name them.
#[must_use]
pub fn container_id_from_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| path.rsplit('/'))
        .find_map(|segment| {
            let segment = segment.strip_suffix(".scope").unwrap_or(segment);
            let id = segment.rsplit(['-', ':']).next()?;
            (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
        })
}

/// Bounded cache of [`ProcessInfo`], refreshed after `ttl` so that a reused pid is noticed.
pub struct ProcessCache {
    entries: HashMap<u32, (Instant, Arc<ProcessInfo>)>,
    capacity: usize,
    ttl: Duration,
    /// procfs reads done (cache misses and refreshes).
    pub reads: u64,
}

impl ProcessCache {
    #[must_use]
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: HashMap::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            ttl,
            reads: 0,
        }
    }

    /// As [`ProcessCache::get`], with the `comm` the kernel recorded at the syscall (NUL-padded)
    /// standing in when procfs could not be read: a short-lived client (curl) may have exited
    /// before the agent drained its first record, and still deserves its name.
    pub fn get_with_comm(&mut self, pid: u32, comm: &[u8]) -> Arc<ProcessInfo> {
        let info = self.get(pid);
        if !info.comm.is_empty() {
            return info;
        }
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        if end == 0 {
            return info;
        }
        let named = Arc::new(ProcessInfo {
            comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
            ..(*info).clone()
        });
        if let Some((_, cached)) = self.entries.get_mut(&pid) {
            *cached = Arc::clone(&named);
        }
        named
    }

    /// The process's metadata, reading procfs on a miss or when the entry is stale.
    pub fn get(&mut self, pid: u32) -> Arc<ProcessInfo> {
        let now = Instant::now();
        if let Some((at, info)) = self.entries.get(&pid)
            && now.duration_since(*at) < self.ttl
        {
            return Arc::clone(info);
        }
        if self.entries.len() >= self.capacity {
            let horizon = now.checked_sub(self.ttl).unwrap_or(now);
            self.entries.retain(|_, (at, _)| *at > horizon);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.reads += 1;
        let info = Arc::new(ProcessInfo::read(pid));
        let previous = self.entries.insert(pid, (now, Arc::clone(&info)));
        if !info.runtime.threads_are_tasks()
            && previous.is_none_or(|(_, before)| before.runtime != info.runtime)
        {
            tracing::info!(
                pid,
                comm = %info.comm,
                runtime = %info.runtime.describe(),
                "{}",
                info.runtime.why_threads_are_not_tasks()
            );
        }
        info
    }
}

/// The agent's resident memory now, KiB (`VmRSS`).
#[must_use]
pub fn own_rss_kib() -> u64 {
    own_status_kib("VmRSS:")
}

/// The CPU time the agent has used (user + system), ms, from `/proc/self/stat`.
#[must_use]
pub fn own_cpu_ms() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks_per_s = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command (which may hold spaces), from the last ')'.
            let rest = stat.rsplit_once(')')?.1;
            let mut fields = rest.split_whitespace();
            let utime: u64 = fields.nth(11)?.parse().ok()?;
            let stime: u64 = fields.next()?.parse().ok()?;
            Some((utime + stime) * 1000 / ticks_per_s)
        })
        .unwrap_or(0)
}

fn own_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// This process's peak resident set (`VmHWM`), in KiB; 0 if /proc cannot say.
#[must_use]
pub fn own_peak_rss_kib() -> u64 {
    own_status_kib("VmHWM:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_reads_its_own_cpu_time_and_memory() {
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(own_cpu_ms() > 0, "{x}");
        assert!(own_rss_kib() > 0);
        // Not compared with the current RSS: the kernel updates `VmHWM` lazily (when mappings
        // shrink), so while other tests' threads grow the heap it can read below `VmRSS`.
        assert!(own_peak_rss_kib() > 0);
    }

    const ID: &str = "3f1e7c0a9b2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7";

    #[test]
    fn finds_container_ids_in_cgroup_paths() {
        for path in [
            format!("0::/system.slice/docker-{ID}.scope"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{ID}.scope"
            ),
            format!("12:memory:/docker/{ID}"),
            format!("0::/kubepods/besteffort/pod0a1b/{ID}"),
            format!("0::/machine.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(
                container_id_from_cgroup(&path).as_deref(),
                Some(ID),
                "{path}"
            );
        }
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(container_id_from_cgroup("garbage"), None);
    }

    #[test]
    fn finds_pod_uids_in_cgroup_paths() {
        const UID: &str = "6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b";
        for path in [
            // systemd driver (cgroup v2): '_' stands for '-'.
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
                UID.replace('-', "_")
            ),
            // Guaranteed QoS has no class level.
            format!(
                "0::/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
                UID.replace('-', "_")
            ),
            // cgroupfs driver, v1 and v2.
            format!("11:memory:/kubepods/besteffort/pod{UID}/{ID}"),
            format!("0::/kubepods/pod{UID}/{ID}"),
        ] {
            assert_eq!(pod_uid_from_cgroup(&path).as_deref(), Some(UID), "{path}");
        }
        for path in [
            "0::/kubepods.slice/kubepods-burstable.slice".to_string(),
            format!("0::/system.slice/pod{UID}.service"),
            "0::/kubepods/besteffort/pod0a1b/x".to_string(),
            "garbage".to_string(),
        ] {
            assert_eq!(pod_uid_from_cgroup(&path), None, "{path}");
        }
    }

    #[test]
    fn finds_environment_variables() {
        let env = b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0OTEL_SERVICE_NAME_X=no\0";
        assert_eq!(
            env_var(env, b"OTEL_SERVICE_NAME").as_deref(),
            Some("checkout")
        );
        assert_eq!(env_var(b"OTEL_SERVICE_NAME=\0", b"OTEL_SERVICE_NAME"), None);
        assert_eq!(env_var(b"", b"OTEL_SERVICE_NAME"), None);
    }

    #[test]
    fn reads_own_process() {
        let info = ProcessInfo::read(std::process::id());
        assert!(!info.comm.is_empty());
        assert!(!info.exe.is_empty());
        assert!(!info.cmdline.is_empty());
        let mut cache = ProcessCache::new(2, Duration::from_mins(1));
        let a = cache.get(std::process::id());
        let b = cache.get(std::process::id());
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(cache.reads, 1);
    }

    #[test]
    fn a_process_gone_before_its_read_keeps_the_kernels_comm() {
        let mut cache = ProcessCache::new(4, Duration::from_mins(1));
        // No such pid (above pid_max): every procfs read fails, as for an exited process.
        let gone = cache.get_with_comm(u32::MAX - 1, b"curl\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(gone.comm, "curl");
        assert_eq!(gone.exe_name(), "curl");
        let again = cache.get(u32::MAX - 1);
        assert_eq!(again.comm, "curl", "the name is cached with the entry");
        // A readable process keeps what procfs says.
        let me = cache.get_with_comm(std::process::id(), b"other\0\0\0\0\0\0\0\0\0\0\0");
        assert_ne!(me.comm, "other");
    }
}
