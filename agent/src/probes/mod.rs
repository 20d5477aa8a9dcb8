//! Stage 1 of the pipeline: loads the eBPF programs, fills in their load-time globals, and
//! attaches them to the raw syscall tracepoints by BTF.

pub mod btf;
pub mod conn_update;
pub mod go;
pub mod gotls;
pub mod inband;
pub mod inband_mark;
pub mod node;
pub mod offsets;
pub mod python;
#[cfg(test)]
mod stack_budget;
pub mod tls;

use agent_common::conn_update::{ConnUpdate, NOT_WRITTEN, apply as apply_update};
use agent_common::{
    CaptureConfig, Counter, DEFAULT_CAPTURE_BYTES, DEFAULT_MAX_CONNS, DEFAULT_RING_BYTES,
    EXIT_FAMILIES, MAP_CONNS, MAP_COUNTERS, MAP_EVENTS, MAP_EXIT_JUMPS, MAP_RECV_JUMPS,
    MAP_SEND_JUMPS, MAX_CAPTURE_BYTES, RECV_FAMILIES, SEND_FAMILIES,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, PerCpuArray},
    programs::{BtfTracePoint, ProgramError},
};

/// The compiled programs, built by `build.rs` through aya-build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Every program, named as the raw tracepoint it attaches to (`raw_syscalls/sys_enter` and
/// `sys_exit`, which fire for every syscall; the programs pick out the socket ones).
pub const PROGRAMS: &[&str] = &["sys_enter", "sys_exit"];

/// Capture at the socket layer: (program, tracepoint) of each attached program, in the order
/// they are attached (openings and send stamps before the data they serve).
pub const SOCKET_PROGRAMS: [(&str, &str); 4] = [
    ("tcp_state", "inet_sock_set_state"),
    ("tcp_send_start", "tcp_sendmsg_locked"),
    ("sock_send", "sock_send_length"),
    ("sock_recv", "sock_recv_length"),
];

/// The one socket-layer tracepoint capture can do without: TCP sends' start times (without it
/// a send's time is its end, which on loopback can come after its receiver's answer began).
pub const SEND_START_TRACEPOINT: &str = "tcp_sendmsg_locked";

/// Where capture hooks into the kernel (`--capture-hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CaptureHooks {
    /// The socket layer's where the kernel has them and the in-band mode is off, else the
    /// syscall tracepoints.
    #[default]
    Auto,
    /// The raw syscall tracepoints `sys_enter` and `sys_exit`: every syscall of every task
    /// runs them (~155–215 ns each here), on any kernel from 5.5 on.
    Syscalls,
    /// The socket layer's tracepoints: only socket sends and receives run programs, and every
    /// other syscall keeps the kernel's fast path. Kernels from 2023 on (`sock_send_length`);
    /// no `*mmsg` data and no `--in-band` (docs/overhead.md).
    Socket,
}

impl CaptureHooks {
    /// What `Auto` comes to on this kernel (`btf`) with the in-band mode on or off; the others
    /// are themselves.
    #[must_use]
    pub fn resolve(self, btf: &btf::Btf, inband: bool) -> Self {
        match self {
            Self::Auto if !inband && Self::Socket.missing(btf).is_empty() => Self::Socket,
            Self::Auto => Self::Syscalls,
            hooks => hooks,
        }
    }

    /// The tracepoints these hooks need that the kernel's BTF lacks (optional ones excluded).
    #[must_use]
    pub fn missing(self, btf: &btf::Btf) -> Vec<&'static str> {
        match self {
            Self::Syscalls | Self::Auto => PROGRAMS
                .iter()
                .copied()
                .filter(|tp| !btf.has_raw_tracepoint(tp))
                .collect(),
            Self::Socket => SOCKET_PROGRAMS
                .iter()
                .map(|&(_, tp)| tp)
                .filter(|&tp| tp != SEND_START_TRACEPOINT && !btf.has_raw_tracepoint(tp))
                .collect(),
        }
    }
}

/// What the capture stage can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbesConfig {
    /// Payload bytes captured per syscall.
    pub capture_bytes: u32,
    /// Size of the event ring in bytes.
    pub ring_bytes: u32,
    /// Bound of the in-kernel connection table.
    pub max_conns: u32,
    /// Whether connections found not to speak HTTP stop sending data records (the kernel still
    /// counts their bytes). Off only for the raw view of `sockspan events`.
    pub skip_opaque: bool,
    /// The only network namespace traced (its inode number), 0 for all (`--netns-only`).
    pub netns: u32,
    /// The in-band mode (`--in-band`): requests' first segments carry their CLIENT span's
    /// context in a TCP header option.
    pub inband: bool,
    /// The cgroup v2 directory the in-band mode attaches to; `None`: the hierarchy's root.
    pub inband_cgroup: Option<std::path::PathBuf>,
    /// In the in-band mode, a SERVER request that carried no context starts a trace its
    /// thread's calls carry; off while the peer messages run too (its trace comes from its
    /// client's announcement then, which the programs cannot know).
    pub inband_starts_traces: bool,
    /// In the in-band mode with the peer messages: this agent's address for the other agents'
    /// questions, which a CLIENT request the programs cannot give a trace carries instead
    /// (`agent_common::INBAND_OPTION_EXID_ASK`). `None`: such requests carry nothing.
    pub inband_return_addr: Option<std::net::IpAddr>,
    /// Where capture hooks into the kernel.
    pub hooks: CaptureHooks,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            capture_bytes: DEFAULT_CAPTURE_BYTES,
            ring_bytes: DEFAULT_RING_BYTES,
            max_conns: DEFAULT_MAX_CONNS,
            skip_opaque: true,
            netns: 0,
            inband: false,
            inband_cgroup: None,
            inband_starts_traces: true,
            inband_return_addr: None,
            hooks: CaptureHooks::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbesError {
    #[error("capture-bytes must be between 1 and {max}, got {got}")]
    CaptureBytes { got: u32, max: usize },
    #[error("ring-bytes must be a power of two of at least 4096 (the page size), got {0}")]
    RingBytes(u32),
    #[error("max-conns must be between 16 and 16777216, got {0}")]
    MaxConns(u32),
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error(
        "the kernel's BTF cannot be read for attaching to the raw syscall tracepoints ({0}); sockspan needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    KernelBtf(String),
    #[error(
        "the kernel refused to load sockspan's programs: permission denied; run as root, or grant CAP_BPF and CAP_PERFMON (see deploy/README.md)"
    )]
    PermissionDenied,
    #[error("loading the eBPF object failed: {0}")]
    Object(String),
    #[error("program `{program}` was rejected by the verifier: {reason}")]
    Verifier { program: String, reason: String },
    #[error(
        "attaching `{program}` to the raw tracepoint {program} failed: {reason}; sockspan needs BTF tracepoints (Linux 5.5 or newer, CONFIG_DEBUG_INFO_BTF=y)"
    )]
    Attach { program: String, reason: String },
    #[error("map `{0}` is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map `{name}`: {reason}")]
    Map { name: &'static str, reason: String },
    #[error(transparent)]
    Inband(#[from] inband::InbandError),
    #[error(
        "capture-hooks socket cannot carry the in-band mode (it marks a request's first segment from sys_enter); use --capture-hooks syscalls with --in-band"
    )]
    SocketHooksInband,
    #[error(
        "capture-hooks socket needs the kernel tracepoints {0} (sock_send_length and sock_recv_length are in Linux 6.3 and newer); use --capture-hooks syscalls on this kernel"
    )]
    SocketHooksMissing(String),
}

impl ProbesConfig {
    pub fn validate(&self) -> Result<(), ProbesError> {
        if self.capture_bytes == 0 || self.capture_bytes as usize > MAX_CAPTURE_BYTES {
            return Err(ProbesError::CaptureBytes {
                got: self.capture_bytes,
                max: MAX_CAPTURE_BYTES,
            });
        }
        if !self.ring_bytes.is_power_of_two() || self.ring_bytes < 4096 {
            return Err(ProbesError::RingBytes(self.ring_bytes));
        }
        if !(16..=16_777_216).contains(&self.max_conns) {
            return Err(ProbesError::MaxConns(self.max_conns));
        }
        if self.hooks == CaptureHooks::Socket && self.inband {
            return Err(ProbesError::SocketHooksInband);
        }
        Ok(())
    }
}

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    /// Where capture hooked into the kernel (`Auto` resolved).
    hooks: CaptureHooks,
    /// The Go runtime probes (capture set only), attached per Go executable met.
    go: Option<go::GoProbes>,
    /// The OpenSSL probes (capture set only), attached per libssl file met.
    tls: Option<tls::TlsProbes>,
    /// The Go `crypto/tls` probes (capture set only), attached per Go executable met.
    go_tls: Option<gotls::GoTlsProbes>,
    /// The Python asyncio probes (capture set only), attached per `_asyncio` module met.
    python: Option<python::PythonProbes>,
    /// The Node.js callback probes (capture set only), attached per Node.js executable met.
    node: Option<node::NodeProbes>,
    /// The programs' map of followed processes (Python and Node.js), by tgid.
    followed: Option<aya::maps::HashMap<MapData, u32, agent_common::FollowedProcess>>,
    /// The in-band mode's `sock_ops` program and process list, when on.
    inband: Option<inband::InbandProbes>,
    /// What marking the connections opened before the agent did (the in-band mode).
    inband_marked: inband_mark::Marked,
}

/// The in-band mode's `sock_ops` program, attached, then the connections opened before it
/// marked ([`mark_open_connections`]): in this order, so that no connection falls between.
fn attach_inband(
    ebpf: &mut Ebpf,
    config: &ProbesConfig,
) -> Result<(Option<inband::InbandProbes>, inband_mark::Marked), ProbesError> {
    let probes = inband::InbandProbes::attach(ebpf, config.inband_cgroup.as_deref())?;
    Ok((Some(probes), mark_open_connections(ebpf, config.netns != 0)))
}

/// The in-band mode's marking of the connections opened before the agent, in its own network
/// namespace (`own_only`: `--netns-only`) or in every one; logged. A kernel that cannot mark
/// them leaves them without contexts, as before: a warning, not a failure.
fn mark_open_connections(ebpf: &mut Ebpf, own_only: bool) -> inband_mark::Marked {
    let walk = if own_only {
        inband_mark::Walk::MarkOwn
    } else {
        inband_mark::Walk::MarkEvery
    };
    match inband_mark::mark_open(ebpf, walk) {
        Ok(marked) => {
            tracing::info!(
                connecting_ends = marked.clients,
                accepting_ends = marked.servers,
                namespaces = marked.namespaces,
                "in-band: connections opened before the agent marked"
            );
            if marked.refused > 0 {
                tracing::warn!(
                    sockets = marked.refused,
                    "in-band: connections opened before the agent could not be marked ({}); they carry no context",
                    marked.refusal()
                );
            }
            marked
        }
        Err(err) => {
            tracing::warn!("in-band: {err}; connections opened before the agent carry no context");
            inband_mark::Marked::default()
        }
    }
}

impl Drop for Probes {
    /// Detaches the exit dispatcher first: `Ebpf` drops its maps before its programs, and the
    /// dispatcher's program array is emptied when its fd closes, so every exit in between would
    /// fail its tail call (counted as lost).
    fn drop(&mut self) {
        for name in ["sys_exit", "sock_send", "sock_recv"] {
            if let Some(program) = self.ebpf.program_mut(name)
                && let Ok(dispatcher) = <&mut BtfTracePoint>::try_from(program)
            {
                let _ = dispatcher.unload();
            }
        }
    }
}

/// The programs' map of the processes whose syscalls name their running task.
const MAP_FOLLOWED: &str = "FOLLOWED_PROCESSES";

/// `BPF_EXIST` (uapi `bpf.h`): update an existing entry only, so a connection the programs
/// removed at close meanwhile is never re-created.
const BPF_EXIST: u64 = 2;

/// Removes every entry of `map`.
fn empty<K: aya::Pod, V: aya::Pod>(map: &mut aya::maps::HashMap<MapData, K, V>) {
    let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for key in keys {
        let _ = map.remove(&key);
    }
}

/// The programs' connection table, as the agent writes to it.
pub struct KernelConns {
    map: aya::maps::HashMap<MapData, agent_common::ConnKey, agent_common::ConnInfo>,
    /// The budget's switch ([`agent_common::MAP_SHED_CONTROL`]).
    shed_control: Option<aya::maps::Array<MapData, u32>>,
    /// The programs' per-thread hidden work ([`agent_common::MAP_HIDDEN_WORK`]), emptied when
    /// shedding stops so that no stale entry outlives it.
    hidden_work: Option<aya::maps::HashMap<MapData, u64, [u32; 16]>>,
    /// The processes known to make client calls ([`agent_common::MAP_SHED_CALLERS`]), emptied
    /// with the hidden work.
    callers: Option<aya::maps::HashMap<MapData, u32, u32>>,
    /// The processes whose new client connections are shed from their opening
    /// ([`agent_common::MAP_SHED_OPENS`]).
    shed_opens: Option<aya::maps::HashMap<MapData, u32, u64>>,
    /// Whether the switch is on.
    shedding: bool,
    /// The agent's writes to the table, made in place in the kernel; `None` where the kernel
    /// cannot run it (a read and a write back of the whole entry instead, racing the programs).
    updater: Option<conn_update::ConnUpdater>,
}

impl KernelConns {
    /// Writes `op` (arguments `abc`) to the entry of socket `fd` of `tgid` if it is still the
    /// connection `conn_id` ([`agent_common::conn_update`]): what the update returns, `None`
    /// when nothing was written. In the kernel, in place, where it can; otherwise by a read of
    /// the whole entry and a write of it back, which loses whatever the programs wrote to it
    /// between the two (a syscall's byte count, a hidden request's start or answer).
    fn update(
        &mut self,
        (tgid, fd, conn_id): (u32, i32, u64),
        op: ConnUpdate,
        abc: [u32; 3],
    ) -> Option<u32> {
        let written = if let Some(updater) = &self.updater {
            match updater.run(tgid, fd, conn_id, op, abc) {
                Ok(ret) => ret,
                Err(e) => {
                    tracing::debug!(tgid, fd, ?op, "{e}");
                    NOT_WRITTEN
                }
            }
        } else {
            let key = agent_common::ConnKey { tgid, fd };
            let read = self.map.get(&key, 0).ok()?;
            let mut info = read;
            let [a, b, c] = abc;
            // SAFETY: a live, exclusive local copy.
            let ret = unsafe { apply_update(&raw mut info, conn_id, op, a, b, c) };
            // Unchanged: a write of the whole entry could only lose what the programs wrote
            // since it was read.
            if ret == NOT_WRITTEN
                || (info != read && self.map.insert(key, info, BPF_EXIST).is_err())
            {
                return None;
            }
            ret
        };
        (written != NOT_WRITTEN).then_some(written)
    }

    /// Marks the socket `fd` of `tgid` opaque, if it is still the connection `conn_id`: the
    /// programs then stop copying and sending its bytes (they still count them for the close).
    /// Returns whether the mark was written.
    pub fn mark_opaque(&mut self, tgid: u32, fd: i32, conn_id: u64) -> bool {
        self.update((tgid, fd, conn_id), ConnUpdate::Opaque, [0; 3])
            .is_some()
    }

    /// Tells the programs the role of the socket `fd` of `tgid` (if it is still the connection
    /// `conn_id`): one first seen in use is `Unknown` to them, and the in-band mode needs the
    /// role to tell a request's start (an agent restarted while its host's connections stayed
    /// open). Returns whether it was written.
    pub fn set_role(&mut self, conn: (u32, i32, u64), role: agent_common::Role) -> bool {
        self.update(conn, ConnUpdate::Role, [role as u32, 0, 0])
            .is_some()
    }

    /// Tells the programs what the TLS connection `conn_id` (socket `fd` of `tgid`) speaks in
    /// its plaintext, for the in-band mode ([`agent_common::ConnInfo::inband_tls`]): a protocol
    /// answered in order ([`agent_common::INBAND_TLS_IN_ORDER`]: its records are followed as
    /// requests from now on) or HTTP/2 ([`agent_common::INBAND_TLS_STREAMS`]: the connection
    /// form). Returns whether it was written (also when the programs had marked it so
    /// themselves, as an HTTP/2 client's preface does).
    pub fn set_inband_tls(&mut self, conn: (u32, i32, u64), value: u32) -> bool {
        self.update(conn, ConnUpdate::InbandTls, [value, 0, 0])
            .is_some()
    }

    /// Moves the socket `fd` of `tgid`, if it is still the connection `conn_id`, into the
    /// budget's state `to` ([`agent_common::Protocol::ShedNext`] or
    /// [`agent_common::Protocol::ResumeNext`]), telling the programs its role (a connection first
    /// seen in use is `Unknown` to them); a connection still in `ShedNext` (never switched)
    /// moved to `ResumeNext` goes back to `back_to` at once instead ([`ConnUpdate::Budget`]).
    /// Returns the state it was in, `None` if the entry is gone.
    pub fn set_budget_state(
        &mut self,
        conn: (u32, i32, u64),
        role: agent_common::Role,
        to: agent_common::Protocol,
        back_to: agent_common::Protocol,
    ) -> Option<u32> {
        self.update(
            conn,
            ConnUpdate::Budget,
            [to as u32, back_to as u32, role as u32],
        )
        .map(|ret| ret - 1)
    }

    /// Removes the entry of socket `fd` of `tgid` if it is still the connection `conn_id` and
    /// not the budget's ([`ConnUpdate::Forget`]): the agent does not know the connection (the
    /// ring dropped its opening, or the agent's table evicted it), and the programs would go
    /// on sending records it can only discard. At the socket's next syscall they discover it
    /// again and announce it with its endpoints. Returns whether it was removed.
    pub fn forget(&mut self, conn: (u32, i32, u64)) -> bool {
        if self.update(conn, ConnUpdate::Forget, [0; 3]).is_none() {
            return false;
        }
        // The program removes the entry itself; the fallback's read matched, so remove it here
        // (a socket closed and reopened between the two is discovered again, nothing worse).
        self.updater.is_some()
            || self
                .map
                .remove(&agent_common::ConnKey {
                    tgid: conn.0,
                    fd: conn.1,
                })
                .is_ok()
    }

    /// Whether the programs' table still holds socket `fd` of `tgid` as the connection
    /// `conn_id` (yes when the table cannot be read).
    #[must_use]
    pub fn holds(&self, (tgid, fd, conn_id): (u32, i32, u64)) -> bool {
        match self.map.get(&agent_common::ConnKey { tgid, fd }, 0) {
            Ok(info) => info.conn_id == conn_id,
            Err(aya::maps::MapError::KeyNotFound) => false,
            Err(_) => true,
        }
    }

    /// Tells the programs that process `tgid` makes client calls: what its hidden requests ask
    /// is then worth reading ([`agent_common::MAP_SHED_CALLERS`]).
    pub fn note_caller(&mut self, tgid: u32) {
        if let Some(callers) = &mut self.callers
            && let Err(e) = callers.insert(tgid, 1, 0)
        {
            tracing::debug!("{}: {e}", agent_common::MAP_SHED_CALLERS);
        }
    }

    /// Names process `tgid` to the programs: its new client connections ranked at or above
    /// `lowest` ([`agent_common::rank::rank_of`]) are shed from their opening.
    pub fn name_shed_opens(&mut self, tgid: u32, lowest: u64) {
        if let Some(opens) = &mut self.shed_opens
            && let Err(e) = opens.insert(tgid, lowest, 0)
        {
            tracing::debug!("{}: {e}", agent_common::MAP_SHED_OPENS);
        }
    }

    /// Process `tgid`'s new client connections are no longer shed from their opening.
    pub fn unname_shed_opens(&mut self, tgid: u32) {
        if let Some(opens) = &mut self.shed_opens {
            let _ = opens.remove(&tgid);
        }
    }

    /// Turns the programs' hidden-work accounting on or off (on while anything is shed).
    pub fn set_shedding(&mut self, on: bool) {
        if let Some(control) = &mut self.shed_control
            && let Err(e) = control.set(0, u32::from(on), 0)
        {
            tracing::warn!("{}: {e}", agent_common::MAP_SHED_CONTROL);
        }
        if self.shedding && !on {
            // Nothing is shed: what threads still count as hidden (a request whose answer the
            // programs missed) would only refuse parents at the next episode, and the callers
            // are learnt anew.
            if let Some(work) = &mut self.hidden_work {
                empty(work);
            }
            if let Some(callers) = &mut self.callers {
                empty(callers);
            }
            if let Some(opens) = &mut self.shed_opens {
                empty(opens);
            }
        }
        self.shedding = on;
    }
}

/// Totals of the in-kernel self-metrics, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub values: [u64; Counter::COUNT as usize],
}

impl KernelCounters {
    #[must_use]
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize]
    }
}

fn is_permission_error(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

/// The uprobe program `name` of `ebpf`; why not, as text.
fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::UProbe, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program `{name}` is missing"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())
}

/// Loads the uprobe programs `names` of `ebpf`. Returns why not (the first failure, `hint`
/// appended), for the caller to keep and say when a process needs them.
fn load_uprobes(ebpf: &mut Ebpf, names: &[&str], hint: &str) -> Option<String> {
    names.iter().find_map(|name| {
        uprobe(ebpf, name)
            .and_then(|p| {
                p.load()
                    .map_err(|e| format!("{} ({hint})", error_chain(&e)))
            })
            .err()
    })
}

/// Why a uprobe did not attach.
enum UprobeRefused {
    /// The program is not there or did not load.
    Unavailable(String),
    /// Uprobes need `CAP_SYS_ADMIN` here.
    Privilege(String),
    Other(String),
}

/// Attaches the uprobe program `name` at `location` of the file `target`, for every process
/// that maps it, with `cookie`.
fn attach_uprobe(
    ebpf: &mut Ebpf,
    name: &str,
    location: aya::programs::uprobe::UProbeAttachLocation<'_>,
    cookie: Option<u64>,
    target: impl AsRef<std::path::Path>,
) -> Result<(), UprobeRefused> {
    uprobe(ebpf, name)
        .map_err(UprobeRefused::Unavailable)?
        .attach(
            aya::programs::uprobe::UProbeAttachPoint { location, cookie },
            target,
            aya::programs::uprobe::UProbeScope::AllProcesses,
        )
        .map(|_| ())
        .map_err(|err| {
            let reason = error_chain(&err);
            if reason.contains("Permission denied") {
                UprobeRefused::Privilege(reason)
            } else {
                UprobeRefused::Other(reason)
            }
        })
}

/// An error and its sources on one line: aya's top-level messages omit the errno.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The last lines of a verifier log, which say why.
fn verifier_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(6);
    lines[start..].join(" | ")
}

/// Which programs of the object to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramSet {
    /// The capture programs.
    Capture,
    /// Empty programs: the benchmark floor, on these hooks.
    #[cfg(feature = "bench")]
    Floor(FloorHooks),
    /// The capture programs with their exit cut short: the benchmark's breakdown.
    #[cfg(feature = "bench")]
    Stage(ExitStage),
}

/// The hooks of the benchmark floor's empty programs.
#[cfg(feature = "bench")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloorHooks {
    /// The capture programs' hooks, the raw tracepoints `sys_enter` and `sys_exit`: every
    /// syscall of every task runs them, and takes the kernel's slow syscall path.
    Syscalls,
    /// The socket layer's tracepoints `sock_send_length` and `sock_recv_length`: only socket
    /// sends and receives run them, and syscalls keep their fast path.
    Socket,
}

#[cfg(feature = "bench")]
impl FloorHooks {
    /// (program, tracepoint) of each empty program.
    fn programs(self) -> [(&'static str, &'static str); 2] {
        match self {
            Self::Syscalls => [
                ("floor_sys_enter", "sys_enter"),
                ("floor_sys_exit", "sys_exit"),
            ],
            Self::Socket => [
                ("floor_sock_send_length", "sock_send_length"),
                ("floor_sock_recv_length", "sock_recv_length"),
            ],
        }
    }
}

/// Where the capture exit programs stop in the benchmark's breakdown (`CaptureConfig::stop_after`).
#[cfg(feature = "bench")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExitStage {
    /// After the connection lookup.
    Lookup,
    /// After the timestamps.
    Clock,
    /// After the payload copy (no ring output).
    Copy,
}

#[cfg(feature = "bench")]
impl ExitStage {
    /// Where the capture programs stop (`CaptureConfig::stop_after`).
    fn stop_after(self) -> u32 {
        match self {
            Self::Lookup => agent_common::exit_stage::LOOKUP,
            Self::Clock => agent_common::exit_stage::CLOCK,
            Self::Copy => agent_common::exit_stage::COPY,
        }
    }
}

impl Probes {
    /// Resolves offsets, loads, and attaches every program. `agent_tgid` is never traced.
    pub fn load(config: &ProbesConfig, agent_tgid: u32) -> Result<Self, ProbesError> {
        Self::load_set(config, agent_tgid, ProgramSet::Capture)
    }

    /// Loads the object and attaches one set of its programs: to the raw syscall tracepoints, or
    /// for the socket-layer floor, to the socket layer's send and receive tracepoints.
    pub fn load_set(
        config: &ProbesConfig,
        agent_tgid: u32,
        set: ProgramSet,
    ) -> Result<Self, ProbesError> {
        config.validate()?;
        let own_btf = btf::Btf::from_kernel()?;
        let offsets = offsets::resolve(&own_btf)?;
        let (socket_hooks, send_starts) = socket_layer_for(config, set, &own_btf)?;
        drop(own_btf);
        raise_memlock_limit();

        let capture = capture_config(config, agent_tgid, set)?;
        // One parse of the kernel's BTF serves the loader and every attach, and is freed as
        // soon as the programs are in (aya's `EbpfLoader::new` parses its own copy; dropped here
        // before ours is made). Each parse holds ~15 MB of heap: two of them were most of the
        // agent's peak memory.
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        let kernel_btf =
            aya::Btf::from_sys_fs().map_err(|e| ProbesError::KernelBtf(error_chain(&e)))?;
        let mut ebpf = loader
            .btf(Some(&kernel_btf))
            .override_global("KERNEL_OFFSETS", &offsets, true)
            .override_global("CAPTURE_CONFIG", &capture, true)
            .map_max_entries(MAP_EVENTS, config.ring_bytes)
            .map_max_entries(MAP_CONNS, config.max_conns)
            .load(EBPF_OBJECT)
            .map_err(|err| match err {
                aya::EbpfError::MapError(aya::maps::MapError::CreateError {
                    ref io_error, ..
                }) if is_permission_error(io_error) => ProbesError::PermissionDenied,
                other => ProbesError::Object(error_chain(&other)),
            })?;
        drop(loader);
        match set {
            #[cfg(feature = "bench")]
            ProgramSet::Floor(hooks) => {
                for (name, tracepoint) in hooks.programs() {
                    attach(&mut ebpf, name, tracepoint, &kernel_btf)?;
                }
            }
            _ if socket_hooks => attach_socket_layer(&mut ebpf, send_starts, &kernel_btf)?,
            // The breakdown stages are the capture programs stopped early.
            _ => {
                for name in PROGRAMS {
                    if *name == "sys_exit" {
                        // Before the dispatcher is attached: an exit it sees finds its
                        // family's program in place.
                        load_families(
                            &mut ebpf,
                            &EXIT_FAMILIES,
                            "sys_exit",
                            MAP_EXIT_JUMPS,
                            &kernel_btf,
                        )?;
                    }
                    attach(&mut ebpf, name, name, &kernel_btf)?;
                }
            }
        }
        drop(kernel_btf);
        tracing::debug!(?offsets, "kernel struct offsets from BTF");
        let go = matches!(set, ProgramSet::Capture).then(|| go::GoProbes::load(&mut ebpf));
        let tls = matches!(set, ProgramSet::Capture).then(|| tls::TlsProbes::load(&mut ebpf));
        let go_tls =
            matches!(set, ProgramSet::Capture).then(|| gotls::GoTlsProbes::load(&mut ebpf));
        let python =
            matches!(set, ProgramSet::Capture).then(|| python::PythonProbes::load(&mut ebpf));
        let node = matches!(set, ProgramSet::Capture).then(|| node::NodeProbes::load(&mut ebpf));
        let followed = if matches!(set, ProgramSet::Capture) {
            let map = ebpf
                .take_map(MAP_FOLLOWED)
                .ok_or(ProbesError::MissingMap(MAP_FOLLOWED))?;
            Some(
                aya::maps::HashMap::try_from(map).map_err(|e| ProbesError::Map {
                    name: MAP_FOLLOWED,
                    reason: e.to_string(),
                })?,
            )
        } else {
            None
        };
        let (inband, inband_marked) = if config.inband && matches!(set, ProgramSet::Capture) {
            attach_inband(&mut ebpf, config)?
        } else {
            (None, inband_mark::Marked::default())
        };
        Ok(Self {
            ebpf,
            go,
            tls,
            go_tls,
            python,
            node,
            followed,
            inband,
            inband_marked,
            hooks: if socket_hooks {
                CaptureHooks::Socket
            } else {
                CaptureHooks::Syscalls
            },
        })
    }

    /// Where capture hooked into the kernel.
    #[must_use]
    pub fn hooks(&self) -> CaptureHooks {
        self.hooks
    }

    /// The instructions the verifier walked for each syscall program (dispatchers and families),
    /// largest first, where the kernel reports it (5.16+): how close each is to the verifier's
    /// limit of a million, which differs by kernel and compiler.
    #[must_use]
    pub fn verified_instructions(&self) -> Vec<(&'static str, u32)> {
        let mut counts: Vec<(&'static str, u32)> = PROGRAMS
            .iter()
            .chain(EXIT_FAMILIES.iter())
            .chain(SOCKET_PROGRAMS.iter().map(|(name, _)| name))
            .chain(SEND_FAMILIES.iter().filter(|name| !name.is_empty()))
            .chain(RECV_FAMILIES.iter().filter(|name| !name.is_empty()))
            .filter_map(|name| {
                let program = self.ebpf.program(name)?;
                let count = program.info().ok()?.verified_instruction_count()?;
                Some((*name, count))
            })
            .collect();
        counts.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
        counts
    }

    /// Attaches the runtime probe program at this agent's own `main`: whether uprobes work here.
    pub fn attach_self_test(&mut self) -> Result<(), go::GoProbeError> {
        match &mut self.go {
            Some(go) => go.attach_self_test(&mut self.ebpf),
            None => Err(go::GoProbeError::Unavailable(
                "not loaded with this program set".into(),
            )),
        }
    }

    /// Attaches the OpenSSL probes to the system's libssl, and with `pid` to the libssl files
    /// that process maps, or to its executable if it is a Go program linking `crypto/tls`.
    /// Returns the libraries (and executables) newly met.
    pub fn attach_tls(
        &mut self,
        pid: Option<u32>,
    ) -> Result<Vec<tls::Library>, tls::TlsProbeError> {
        let Some(probes) = &mut self.tls else {
            return Err(tls::TlsProbeError::Unavailable(
                "not loaded with this program set".into(),
            ));
        };
        let Some(pid) = pid else {
            return probes.attach_system(&mut self.ebpf);
        };
        let mut met = probes.attach_process(&mut self.ebpf, pid)?;
        if let crate::runtime::Runtime::Go { version } = crate::runtime::Runtime::of_process(pid)
            && let Some(go_tls) = &mut self.go_tls
        {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                .map_or_else(|_| format!("/proc/{pid}/exe"), |p| p.display().to_string());
            if let gotls::GoTlsAttached::New(executable) =
                go_tls.attach(&mut self.ebpf, pid, &exe, version.as_deref())?
            {
                met.push(executable);
            }
        }
        Ok(met)
    }

    /// Follows the CPython process `pid` (see [`python::PythonProbes::follow`]). Returns
    /// whether its `_asyncio` module's probes were newly attached.
    pub fn follow_python(
        &mut self,
        pid: u32,
        interpreter: &crate::runtime::python::Interpreter,
    ) -> Result<bool, python::PythonProbeError> {
        let (entry, newly) = match &mut self.python {
            Some(probes) => probes.follow(&mut self.ebpf, pid, interpreter)?,
            None => {
                return Err(python::PythonProbeError::Unavailable(
                    "not loaded with this program set".into(),
                ));
            }
        };
        self.set_followed(pid, entry)
            .map_err(python::PythonProbeError::Map)?;
        Ok(newly)
    }

    /// Writes `pid`'s entry into the programs' map of followed processes.
    fn set_followed(
        &mut self,
        pid: u32,
        entry: agent_common::FollowedProcess,
    ) -> Result<(), String> {
        self.followed
            .as_mut()
            .ok_or_else(|| format!("map {MAP_FOLLOWED} is missing"))?
            .insert(pid, entry, 0)
            .map_err(|e| e.to_string())
    }

    /// Attaches the Node.js callback probes for `pid`, a Node.js program, and follows it: its
    /// data records name the libuv callback they ran in from now on.
    pub fn attach_node(&mut self, pid: u32) -> Result<node::NodeAttached, node::NodeProbeError> {
        let attached = match &mut self.node {
            Some(probes) => probes.attach(&mut self.ebpf, pid)?,
            None => {
                return Err(node::NodeProbeError::Unavailable(
                    "not loaded with this program set".into(),
                ));
            }
        };
        let entry = agent_common::FollowedProcess {
            runtime: agent_common::RUNTIME_NODE,
            ..agent_common::FollowedProcess::default()
        };
        self.set_followed(pid, entry)
            .map_err(node::NodeProbeError::Map)?;
        Ok(attached)
    }

    /// Attaches the in-band mode's `sock_ops` program as `--in-band` would (to the cgroup v2
    /// root), for `sockspan check`: whether the mode can run here. It stays attached until the
    /// programs are dropped; without marks it writes no option.
    pub fn attach_inband_test(&mut self) -> Result<(), inband::InbandError> {
        if self.inband.is_none() {
            self.inband = Some(inband::InbandProbes::attach(&mut self.ebpf, None)?);
        }
        Ok(())
    }

    /// Whether this kernel marks connections opened before the agent for the in-band mode
    /// (`sockspan check`), reading their flags only; what the walk found.
    pub fn inband_mark_test(&mut self) -> Result<inband_mark::Marked, inband_mark::MarkError> {
        inband_mark::mark_open(&mut self.ebpf, inband_mark::Walk::ReadOwn)
    }

    /// What marking the connections opened before the agent did (the in-band mode).
    #[must_use]
    pub fn inband_marked(&self) -> inband_mark::Marked {
        self.inband_marked
    }

    /// Whether the in-band mode is on.
    #[must_use]
    pub fn inband_on(&self) -> bool {
        self.inband.is_some()
    }

    /// In the in-band mode, whether `pid`'s CLIENT requests may carry their thread's trace
    /// (`threads_serve_one`: a process whose threads serve one request at a time) or not.
    pub fn inband_classify(&mut self, pid: u32, threads_serve_one: bool) {
        if let Some(inband) = &mut self.inband
            && let Err(err) = inband.classify(pid, threads_serve_one)
        {
            tracing::debug!(pid, "in-band: {err}");
        }
    }

    /// In the in-band mode, forgets `pid`'s class (it exited).
    pub fn inband_forget(&mut self, pid: u32) {
        if let Some(inband) = &mut self.inband {
            inband.forget(pid);
        }
    }

    /// Stops following the process `pid` (Python or Node.js): it exited, or runs something
    /// else now.
    pub fn forget(&mut self, pid: u32) {
        if let Some(map) = &mut self.followed {
            let _ = map.remove(&pid);
        }
    }

    /// The libssl files the OpenSSL probes met, and the Go executables the `crypto/tls` probes
    /// met.
    pub fn tls_libraries(&self) -> Vec<tls::Library> {
        let mut all: Vec<tls::Library> = self
            .tls
            .as_ref()
            .map(|t| t.libraries().cloned().collect())
            .unwrap_or_default();
        if let Some(go_tls) = &self.go_tls {
            all.extend(go_tls.executables().cloned());
        }
        all
    }

    /// Attaches the Go runtime probes to the executable of `pid`, built by Go `version`.
    pub fn attach_go(
        &mut self,
        pid: u32,
        version: Option<&str>,
    ) -> Result<go::Attached, go::GoProbeError> {
        match &mut self.go {
            Some(go) => go.attach(&mut self.ebpf, pid, version),
            None => Err(go::GoProbeError::Unavailable(
                "not loaded with this program set".into(),
            )),
        }
    }

    /// The event ring's map, for the receiver. Can be taken once.
    pub fn take_ring(&mut self) -> Result<MapData, ProbesError> {
        match self.ebpf.take_map(MAP_EVENTS) {
            Some(Map::RingBuf(map)) => Ok(map),
            Some(_) => Err(ProbesError::Map {
                name: MAP_EVENTS,
                reason: "not a ring buffer".to_owned(),
            }),
            None => Err(ProbesError::MissingMap(MAP_EVENTS)),
        }
    }

    /// The map `name` as a `T`, or `None` (with a warning) when it is missing or of another
    /// kind.
    fn take_optional_map<T>(&mut self, name: &str) -> Option<T>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        T::try_from(self.ebpf.take_map(name)?)
            .inspect_err(|e| tracing::warn!("{name}: {e}"))
            .ok()
    }

    /// Loads the program the agent writes its marks on connections with
    /// ([`conn_update::ConnUpdater`]) and checks that the kernel runs it. Callable once: a
    /// second call fails (aya's program is loaded already).
    pub fn conn_updater(
        &mut self,
    ) -> Result<conn_update::ConnUpdater, conn_update::ConnUpdateError> {
        conn_update::ConnUpdater::load(&mut self.ebpf)
    }

    /// The connection table, for the agent to tell the programs which connections it gave up
    /// on. Can be taken once.
    pub fn take_conns(&mut self) -> Result<KernelConns, ProbesError> {
        let map = self
            .ebpf
            .take_map(MAP_CONNS)
            .ok_or(ProbesError::MissingMap(MAP_CONNS))?;
        let map = aya::maps::HashMap::try_from(map).map_err(|e| ProbesError::Map {
            name: MAP_CONNS,
            reason: e.to_string(),
        })?;
        // The budget's maps: without them the budget cannot shed, the rest still works.
        let shed_control = self.take_optional_map(agent_common::MAP_SHED_CONTROL);
        let hidden_work = self.take_optional_map(agent_common::MAP_HIDDEN_WORK);
        let callers = self.take_optional_map(agent_common::MAP_SHED_CALLERS);
        let shed_opens = self.take_optional_map(agent_common::MAP_SHED_OPENS);
        let updater = self
            .conn_updater()
            .inspect_err(|e| {
                tracing::warn!(
                    "{e}; the agent writes its marks on connections by a read and a write of each entry, which can lose what the programs wrote in between"
                );
            })
            .ok();
        Ok(KernelConns {
            map,
            shed_control,
            hidden_work,
            callers,
            shed_opens,
            shedding: false,
            updater,
        })
    }

    /// One counter, summed over the CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, ProbesError> {
        let map = self
            .ebpf
            .map(MAP_COUNTERS)
            .ok_or(ProbesError::MissingMap(MAP_COUNTERS))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|e| ProbesError::Map {
                name: MAP_COUNTERS,
                reason: e.to_string(),
            })?;
        let per_cpu = array
            .get(&(counter as u32), 0)
            .map_err(|e| ProbesError::Map {
                name: MAP_COUNTERS,
                reason: e.to_string(),
            })?;
        Ok(per_cpu.iter().sum())
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<KernelCounters, ProbesError> {
        let mut totals = KernelCounters::default();
        for counter in Counter::ALL {
            totals.values[counter as usize] = self.counter(counter)?;
        }
        Ok(totals)
    }
}

/// Whether `set` captures at the socket layer with `config` on this kernel (`btf`), and if so
/// whether the kernel has TCP send starts; an error names what `--capture-hooks socket` misses.
fn socket_layer_for(
    config: &ProbesConfig,
    set: ProgramSet,
    btf: &btf::Btf,
) -> Result<(bool, bool), ProbesError> {
    let capture_programs = match set {
        #[cfg(feature = "bench")]
        ProgramSet::Floor(_) => false,
        _ => true,
    };
    if !capture_programs || config.hooks.resolve(btf, config.inband) != CaptureHooks::Socket {
        return Ok((false, false));
    }
    let missing = CaptureHooks::Socket.missing(btf);
    if !missing.is_empty() {
        return Err(ProbesError::SocketHooksMissing(missing.join(", ")));
    }
    Ok((true, btf.has_raw_tracepoint(SEND_START_TRACEPOINT)))
}

/// Loads and attaches capture at the socket layer (`--capture-hooks socket`); `send_starts`:
/// whether the kernel has the `tcp_sendmsg_locked` tracepoint.
fn attach_socket_layer(
    ebpf: &mut Ebpf,
    send_starts: bool,
    btf: &aya::Btf,
) -> Result<(), ProbesError> {
    // The family programs first: a send or receive the dispatchers see finds them.
    load_families(
        ebpf,
        &SEND_FAMILIES,
        "sock_send_length",
        MAP_SEND_JUMPS,
        btf,
    )?;
    load_families(
        ebpf,
        &RECV_FAMILIES,
        "sock_recv_length",
        MAP_RECV_JUMPS,
        btf,
    )?;
    for (name, tracepoint) in SOCKET_PROGRAMS {
        if tracepoint == SEND_START_TRACEPOINT && !send_starts {
            tracing::warn!(
                "the kernel has no tcp_sendmsg_locked tracepoint (kernels from 2025 on): a TCP send's time is its end, not its start"
            );
            continue;
        }
        attach(ebpf, name, tracepoint, btf)?;
    }
    Ok(())
}

/// Loads program `name` and attaches it to the raw tracepoint `tracepoint`, found in `btf`.
fn attach(
    ebpf: &mut Ebpf,
    name: &str,
    tracepoint: &str,
    btf: &aya::Btf,
) -> Result<(), ProbesError> {
    let program = load_btf_tracepoint(ebpf, name, tracepoint, btf)?;
    program.attach().map_err(|err| ProbesError::Attach {
        program: name.to_string(),
        reason: error_chain(&err),
    })?;
    Ok(())
}

/// Loads the family programs `names` of one hook (never attached: the hook's dispatcher
/// tail-calls them), each for `tracepoint`, and puts them in the dispatcher's program array
/// `map` at their index; an empty name leaves its slot empty.
fn load_families(
    ebpf: &mut Ebpf,
    names: &[&str],
    tracepoint: &str,
    map: &'static str,
    btf: &aya::Btf,
) -> Result<(), ProbesError> {
    let mut fds = Vec::with_capacity(names.len());
    for (index, name) in (0_u32..).zip(names) {
        if name.is_empty() {
            continue;
        }
        let program = load_btf_tracepoint(ebpf, name, tracepoint, btf)?;
        let fd = program
            .fd()
            .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
            .map_err(|e| ProbesError::Object(format!("program `{name}`: {e}")))?;
        fds.push((index, fd));
    }
    let map_error = |e: aya::maps::MapError| ProbesError::Map {
        name: map,
        reason: e.to_string(),
    };
    let mut jumps: aya::maps::ProgramArray<&mut MapData> = ebpf
        .map_mut(map)
        .ok_or(ProbesError::MissingMap(map))?
        .try_into()
        .map_err(map_error)?;
    for (index, fd) in &fds {
        jumps.set(*index, fd, 0).map_err(map_error)?;
    }
    Ok(())
}

/// Loads program `name` of the object for the raw tracepoint `tracepoint`.
fn load_btf_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
    tracepoint: &str,
    btf: &aya::Btf,
) -> Result<&'a mut BtfTracePoint, ProbesError> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| ProbesError::Object(format!("program `{name}` is missing")))?
        .try_into()
        .map_err(|e: ProgramError| ProbesError::Object(e.to_string()))?;
    program.load(tracepoint, btf).map_err(|err| match err {
        ProgramError::LoadError {
            ref io_error,
            ref verifier_log,
        } => {
            if is_permission_error(io_error) && verifier_log.to_string().trim().is_empty() {
                ProbesError::PermissionDenied
            } else {
                ProbesError::Verifier {
                    program: name.to_string(),
                    reason: format!("{io_error}: {}", verifier_tail(&verifier_log.to_string())),
                }
            }
        }
        other => ProbesError::Verifier {
            program: name.to_string(),
            reason: error_chain(&other),
        },
    })?;
    Ok(program)
}

/// Kernels before 5.11 charge BPF memory to `RLIMIT_MEMLOCK`; lift it so maps fit there too.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; failure is only logged.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const limit) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// How many CPUs may write to the ring at once: the online ones (a VM's possible CPUs can be
/// many more, and each would make every CPU look at the backlog more often), else the possible
/// ones, else as many as the bound allows for (looks more often: safe, a little dearer).
fn producing_cpus() -> u32 {
    aya::util::online_cpus()
        .map(|cpus| cpus.len())
        .or_else(|_| aya::util::nr_cpus())
        .map_or(MANY_CPUS, |n| u32::try_from(n).unwrap_or(MANY_CPUS))
}

/// [`producing_cpus`] when the system does not say.
const MANY_CPUS: u32 = 256;

/// The programs' load-time settings (their read-only globals) for `config` and `set`.
fn capture_config(
    config: &ProbesConfig,
    agent_tgid: u32,
    set: ProgramSet,
) -> Result<CaptureConfig, ProbesError> {
    Ok(CaptureConfig {
        agent_tgid,
        capture_bytes: config.capture_bytes,
        skip_opaque: u32::from(config.skip_opaque),
        wakeup_backlog_bytes: agent_common::wakeup_backlog_bytes(config.ring_bytes),
        netns: config.netns,
        stop_after: match set {
            #[cfg(feature = "bench")]
            ProgramSet::Stage(stage) => stage.stop_after(),
            _ => agent_common::exit_stage::FULL,
        },
        inband: u32::from(config.inband && matches!(set, ProgramSet::Capture)),
        inband_starts_traces: u32::from(config.inband_starts_traces),
        netns_cookie: if config.inband && config.netns != 0 {
            inband::own_netns_cookie()?
        } else {
            0
        },
        wakeup_check_bytes: agent_common::wakeup_check_bytes(config.ring_bytes, producing_cpus()),
        reserved: 0,
        inband_return_addr: match config.inband_return_addr {
            Some(std::net::IpAddr::V4(v4)) => v4.to_ipv6_mapped().octets(),
            Some(std::net::IpAddr::V6(v6)) => v6.octets(),
            None => [0; 16],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_bad_field() {
        let ok = ProbesConfig::default();
        assert!(ok.validate().is_ok());
        let bad = ProbesConfig {
            capture_bytes: 0,
            ..ok.clone()
        };
        assert!(
            bad.validate()
                .expect_err("0")
                .to_string()
                .contains("capture-bytes")
        );
        let bad = ProbesConfig {
            ring_bytes: 5000,
            ..ok.clone()
        };
        assert!(
            bad.validate()
                .expect_err("5000")
                .to_string()
                .contains("ring-bytes")
        );
        let bad = ProbesConfig { max_conns: 1, ..ok };
        assert!(
            bad.validate()
                .expect_err("1")
                .to_string()
                .contains("max-conns")
        );
        let bad = ProbesConfig {
            hooks: CaptureHooks::Socket,
            inband: true,
            ..ProbesConfig::default()
        };
        assert!(
            bad.validate()
                .expect_err("socket hooks with the in-band mode")
                .to_string()
                .starts_with("capture-hooks socket cannot carry the in-band mode")
        );
    }
}
