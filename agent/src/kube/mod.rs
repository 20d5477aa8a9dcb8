//! Kubernetes pods as the API server knows them: labels and owners that name a pod's service
//! (`app.kubernetes.io/name`, the owning Deployment), which the node alone does not show.
//!
//! An agent in a pod (the `DaemonSet`) lists the pods of its node (`GET /api/v1/pods?
//! fieldSelector=spec.nodeName=<node>&resourceVersion=0`, metadata only; RBAC: `list` on
//! `pods`) at start, every 30 s, and within 5 s of meeting a pod it has not missed before;
//! while lists fail, every 60 s, 120 s, … up to 5 min. Processes are matched to pods by the pod uid in their
//! cgroup path. Without an API server (not in a pod, no permission, unreachable) names come from
//! the pod's hostname, as before; the failure is logged once and counted.

pub mod client;
pub mod pod_list;

use std::{
    collections::HashMap,
    fmt::Write as _,
    str::FromStr,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

pub use pod_list::PodMeta;

/// How often the node's pods are listed again.
const RELIST: Duration = Duration::from_secs(30);
/// The longest wait between lists while they fail.
const MAX_BACKOFF: Duration = Duration::from_mins(5);
/// The soonest a pod not yet known triggers another list.
const RELIST_UNKNOWN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("not in a Kubernetes pod (KUBERNETES_SERVICE_HOST is not set)")]
    NotInPod,
    #[error("the service account's CA {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("the service account's token {path}: {reason}")]
    Token { path: String, reason: String },
    #[error("`{0}` is no host name or address")]
    Host(String),
    #[error("request to the API server: {0}")]
    Request(String),
    #[error("the API server answered {0}: {1}")]
    Status(u16, String),
    #[error("the API server's pod list: {0}")]
    Parse(#[from] serde_json::Error),
    /// A bad `--kube-api` value (clap names the flag before it).
    #[error("{0}")]
    Config(String),
}

impl KubeError {
    /// The failure's kind, to tell a new failure from a repeat.
    fn kind(&self) -> String {
        match self {
            Self::Status(code, _) => format!("status {code}"),
            other => format!("{:?}", std::mem::discriminant(other)),
        }
    }

    /// What to do about it.
    fn fix(&self) -> &'static str {
        match self {
            Self::Status(401 | 403, _) => {
                "the agent's service account needs `list` on `pods`: deploy/daemonset.yaml"
            }
            Self::Ca { .. } | Self::Token { .. } => {
                "the pod needs its service account token mounted (automountServiceAccountToken)"
            }
            _ => {
                "check that the API server is reachable from this node; --kube-api off stops trying"
            }
        }
    }
}

/// `--kube-api`: whether pods are looked up in the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KubeApi {
    /// When the agent runs in a pod (its service account and the API server's address present).
    #[default]
    Auto,
    Off,
}

impl FromStr for KubeApi {
    type Err = KubeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            other => Err(KubeError::Config(format!(
                "unknown value `{other}`; accepted: auto, off"
            ))),
        }
    }
}

/// The pods of this node by uid, shared between the lister (writes) and the resource builder
/// (reads).
#[derive(Default)]
pub struct PodDirectory {
    pods: RwLock<HashMap<String, Arc<PodMeta>>>,
    /// Bumped by each list that changed anything: resources built before it are built again.
    generation: AtomicU64,
    /// A lookup missed a pod not missed before: the lister lists again soon.
    missed: AtomicBool,
    /// Pods looked up and not listed since the list last changed: a pod the API server does
    /// not list (another node's name, a static pod) asks for one early list, not one every 5 s.
    absent: std::sync::Mutex<std::collections::HashSet<String>>,
    pub lists: AtomicU64,
    pub list_failures: AtomicU64,
}

impl PodDirectory {
    /// The pod with this uid, if the last list had it; a miss asks for a list soon.
    pub fn lookup(&self, uid: &str) -> Option<Arc<PodMeta>> {
        let found = self
            .pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(uid)
            .cloned();
        if found.is_none() {
            let mut absent = self.absent.lock().unwrap_or_else(PoisonError::into_inner);
            // Bounded: pods on one node are a few hundred.
            if absent.len() < 4096 && absent.insert(uid.to_string()) {
                self.missed.store(true, Ordering::Relaxed);
            }
        }
        found
    }

    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    #[must_use]
    pub fn pod_count(&self) -> usize {
        self.pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Replaces the pods with a new list; the generation moves only if something changed, so
    /// an unchanged cluster does not rebuild every resource each 30 s.
    pub fn replace(&self, pods: HashMap<String, PodMeta>) {
        let mut current = self.pods.write().unwrap_or_else(PoisonError::into_inner);
        let unchanged = current.len() == pods.len()
            && pods
                .iter()
                .all(|(uid, pod)| current.get(uid).is_some_and(|c| **c == *pod));
        if !unchanged {
            *current = pods.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
            self.generation.fetch_add(1, Ordering::Release);
            self.absent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
    }

    /// Whether a list is due: `wait` since the last one, or 5 s and a new pod missed since
    /// (not while lists fail: then only `wait`, which backs off).
    fn due(&self, since_last: Duration, wait: Duration, failing: bool) -> bool {
        since_last >= wait
            || (!failing
                && since_last >= RELIST_UNKNOWN
                && self.missed.swap(false, Ordering::Relaxed))
    }

    #[must_use]
    pub fn own_metrics(&self) -> Vec<crate::metrics::Own> {
        use crate::metrics::Own;
        vec![
            Own {
                name: "kube_pods",
                help: "Pods of this node known from the Kubernetes API server.",
                value: self.pod_count() as u64,
            },
            Own {
                name: "kube_pod_lists_total",
                help: "Pod lists read from the Kubernetes API server.",
                value: self.lists.load(Ordering::Relaxed),
            },
            Own {
                name: "kube_pod_list_failures_total",
                help: "Pod lists from the Kubernetes API server that failed.",
                value: self.list_failures.load(Ordering::Relaxed),
            },
        ]
    }
}

/// The node whose pods are listed: `NODE_NAME` (the `DaemonSet` sets it from `spec.nodeName`),
/// else the host name (a host-network pod's is the node's on most clusters, not on all), and
/// whether it is that guess.
fn node_name() -> Option<(String, bool)> {
    let given = std::env::var("NODE_NAME")
        .ok()
        .map(|s| s.trim().to_string());
    match given.filter(|s| !s.is_empty()) {
        Some(name) => Some((name, false)),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .map(|name| (name, true)),
    }
}

/// The request for `node`'s pods: their metadata only (`PartialObjectMetadataList`, what
/// names a service), from the API server's cache (`resourceVersion=0`, as the kubelet's own
/// lists: not a quorum read of every pod in etcd per node every 30 s).
fn pods_path(node: &str) -> String {
    format!(
        "/api/v1/pods?fieldSelector=spec.nodeName%3D{}&resourceVersion=0",
        encode(node)
    )
}

/// One pod list, for `sockspan check`: `None` outside a pod, else how many pods of this node
/// the API server lists, or why it does not.
pub async fn probe() -> Option<Result<usize, KubeError>> {
    let server = match client::ApiServer::in_cluster() {
        Err(KubeError::NotInPod) => return None,
        Err(e) => return Some(Err(e)),
        Ok(server) => server,
    };
    let Some((node, _)) = node_name() else {
        return Some(Err(KubeError::Config(
            "no NODE_NAME and no host name to list pods of".into(),
        )));
    };
    let path = pods_path(&node);
    Some(list_pods(&server, &path).await.map(|pods| pods.len()))
}

/// Starts listing this node's pods when `api` and the environment allow; returns the directory
/// the resource builder reads, or `None` (logged when the agent is in a pod but cannot list).
/// Nothing waits for the lists: they run as a task beside the receiver (the first at the
/// runtime's first await, while the capture starts), so a slow API server never holds up the
/// ring. Spans exported before the first list carry names from pod names.
pub fn start(api: KubeApi) -> Option<Arc<PodDirectory>> {
    if api == KubeApi::Off {
        return None;
    }
    let server = match client::ApiServer::in_cluster() {
        Ok(server) => server,
        Err(KubeError::NotInPod) => return None,
        Err(e) => {
            tracing::warn!(
                "pod labels not used ({e}); service names come from pod names (--kube-api off \
                 silences this)"
            );
            return None;
        }
    };
    let Some((node, guessed)) = node_name() else {
        tracing::warn!("pod labels not used: no NODE_NAME and no host name to list pods of");
        return None;
    };
    if guessed {
        tracing::warn!(
            node = %node,
            "NODE_NAME is not set: listing the pods of the node named as this host; set it from \
             spec.nodeName (deploy/daemonset.yaml) if names do not come from pod labels"
        );
    }
    let lister = Lister {
        server,
        path: pods_path(&node),
        node,
        directory: Arc::new(PodDirectory::default()),
        failures_in_a_row: 0,
        last_warned: None,
        warned_empty: false,
    };
    let directory = Arc::clone(&lister.directory);
    tokio::spawn(lister.run());
    Some(directory)
}

/// Lists the node's pods into the directory: every 30 s, within 5 s of a newly missed pod,
/// backing off while lists fail (60 s, 120 s, … at most 5 min).
struct Lister {
    server: client::ApiServer,
    path: String,
    node: String,
    directory: Arc<PodDirectory>,
    failures_in_a_row: u32,
    /// The kind of the last failure warned about: a new kind is warned about again, a repeat
    /// only counted (a flapping API server must not flood the log).
    last_warned: Option<String>,
    warned_empty: bool,
}

impl Lister {
    async fn run(mut self) {
        let mut last = Instant::now();
        self.list_once().await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let wait = RELIST
                .saturating_mul(1 << self.failures_in_a_row.min(4))
                .min(MAX_BACKOFF);
            if self
                .directory
                .due(last.elapsed(), wait, self.failures_in_a_row > 0)
            {
                last = Instant::now();
                self.list_once().await;
            }
        }
    }

    async fn list_once(&mut self) {
        match list_pods(&self.server, &self.path).await {
            Ok(pods) => {
                self.failures_in_a_row = 0;
                self.last_warned = None;
                self.directory.lists.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pods = pods.len(), "listed this node's pods");
                if pods.is_empty() && !self.warned_empty {
                    self.warned_empty = true;
                    tracing::warn!(
                        node = %self.node,
                        "the API server lists no pods on this node: is NODE_NAME this node's \
                         name? Service names come from pod names meanwhile"
                    );
                }
                self.directory.replace(pods);
            }
            Err(e) => {
                self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
                self.directory.list_failures.fetch_add(1, Ordering::Relaxed);
                let kind = e.kind();
                if self.last_warned.as_deref() == Some(kind.as_str()) {
                    tracing::debug!("pod list failed: {e}");
                } else {
                    tracing::warn!(
                        "cannot list this node's pods ({e}); service names come from pod names \
                         until it works ({})",
                        e.fix()
                    );
                    self.last_warned = Some(kind);
                }
            }
        }
    }
}

/// The pods `path` lists, by uid.
async fn list_pods(
    server: &client::ApiServer,
    path: &str,
) -> Result<HashMap<String, PodMeta>, KubeError> {
    let body = server.get(path).await?;
    Ok(pod_list::parse(&body)?)
}

/// Percent-encodes what a node name may hold beyond the unreserved characters (node names are
/// DNS subdomains: letters, digits, `-` and `.`; anything else is encoded, not trusted).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(workload: &str) -> PodMeta {
        PodMeta {
            name: format!("{workload}-0"),
            namespace: "serving".into(),
            workload: workload.into(),
        }
    }

    #[test]
    fn a_list_that_changes_nothing_keeps_the_generation() {
        let directory = PodDirectory::default();
        assert_eq!(directory.generation(), 0);
        directory.replace(HashMap::from([("u1".into(), pod("ranker"))]));
        assert_eq!(directory.generation(), 1);
        directory.replace(HashMap::from([("u1".into(), pod("ranker"))]));
        assert_eq!(directory.generation(), 1, "same pods: resources stay");
        directory.replace(HashMap::from([("u1".into(), pod("reranker"))]));
        assert_eq!(directory.generation(), 2, "a relabelled pod moves it");
        assert_eq!(
            directory
                .lookup("u1")
                .map(|p| p.workload.clone())
                .as_deref(),
            Some("reranker")
        );
        directory.replace(HashMap::new());
        assert_eq!(directory.generation(), 3, "a pod gone moves it");
    }

    #[test]
    fn a_missed_lookup_brings_the_next_list_forward_once_per_pod() {
        let directory = PodDirectory::default();
        let due = |since: u64| directory.due(Duration::from_secs(since), RELIST, false);
        assert!(!due(6));
        assert!(directory.lookup("unknown").is_none());
        assert!(!due(2), "not before 5 s");
        assert!(due(6));
        assert!(!due(6), "the miss was used up");
        assert!(directory.lookup("unknown").is_none());
        assert!(!due(6), "the same pod missed again: no early list");
        assert!(directory.lookup("another").is_none());
        assert!(due(6), "a new pod missed");
        assert!(due(31), "every 30 s anyway");
        // A list that changes something forgets the misses.
        directory.replace(HashMap::from([("u1".into(), pod("ranker"))]));
        assert!(directory.lookup("unknown").is_none());
        assert!(due(6));
    }

    #[test]
    fn failing_lists_back_off_and_ignore_misses() {
        let directory = PodDirectory::default();
        assert!(directory.lookup("unknown").is_none());
        let wait = Duration::from_mins(2);
        assert!(!directory.due(Duration::from_secs(6), wait, true));
        assert!(!directory.due(Duration::from_mins(1), wait, true));
        assert!(directory.due(Duration::from_mins(2), wait, true));
    }

    #[test]
    fn failures_name_their_fix_and_tell_kinds_apart() {
        let forbidden = KubeError::Status(403, "pods is forbidden".into());
        assert!(forbidden.fix().contains("`list` on `pods`"));
        assert_ne!(
            forbidden.kind(),
            KubeError::Status(500, String::new()).kind()
        );
        assert_eq!(
            KubeError::Request("a".into()).kind(),
            KubeError::Request("b".into()).kind()
        );
        assert!(
            KubeError::Request("timeout".into())
                .fix()
                .contains("reachable")
        );
    }

    #[test]
    fn node_names_are_encoded_into_the_field_selector() {
        assert_eq!(encode("node-1.example"), "node-1.example");
        assert_eq!(encode("a b&c=d"), "a%20b%26c%3Dd");
    }

    #[test]
    fn the_flag_names_its_values() {
        assert_eq!("auto".parse::<KubeApi>().ok(), Some(KubeApi::Auto));
        assert_eq!("off".parse::<KubeApi>().ok(), Some(KubeApi::Off));
        let err = "on".parse::<KubeApi>().expect_err("refused").to_string();
        assert!(err.contains("`on`") && err.contains("auto, off"), "{err}");
    }

    #[test]
    fn a_missing_ca_is_named() {
        let err = client::ApiServer::new("10.96.0.1", 443, "/nonexistent/ca.crt", "/x/token")
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("/nonexistent/ca.crt"), "{err}");
    }
}
