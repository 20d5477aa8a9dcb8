//! Kubernetes pods as the API server knows them: labels and owners that name a pod's service
//! (`app.kubernetes.io/name`, the owning Deployment), which the node alone does not show.
//!
//! An agent in a pod (the `DaemonSet`) lists the pods of its node (`GET /api/v1/pods?
//! fieldSelector=spec.nodeName=<node>`, RBAC: `list` on `pods`) at start, every 30 s, and within
//! 5 s of meeting a pod it does not know. Processes are matched to pods by the pod uid in their
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
/// How long start-up waits for the first list.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(2);
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
    /// A lookup missed: the lister lists again soon.
    missed: AtomicBool,
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
            self.missed.store(true, Ordering::Relaxed);
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
        }
    }

    /// Whether a list is due: 30 s since the last one, or 5 s and a lookup missed since.
    fn due(&self, since_last: Duration) -> bool {
        since_last >= RELIST
            || (since_last >= RELIST_UNKNOWN && self.missed.swap(false, Ordering::Relaxed))
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
/// else the host name (a host-network pod has the node's).
fn node_name() -> Option<String> {
    std::env::var("NODE_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// One pod list, for `sockspan check`: `None` outside a pod, else how many pods of this node
/// the API server lists, or why it does not.
pub async fn probe() -> Option<Result<usize, KubeError>> {
    let server = match client::ApiServer::in_cluster() {
        Err(KubeError::NotInPod) => return None,
        Err(e) => return Some(Err(e)),
        Ok(server) => server,
    };
    let Some(node) = node_name() else {
        return Some(Err(KubeError::Config(
            "no NODE_NAME and no host name to list pods of".into(),
        )));
    };
    let path = format!(
        "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
        encode(&node)
    );
    Some(
        server
            .get(&path)
            .await
            .and_then(|body| pod_list::parse(&body).map_err(KubeError::from))
            .map(|pods| pods.len()),
    )
}

/// Starts listing this node's pods when `api` and the environment allow; returns the directory
/// the resource builder reads, or `None` (logged when the agent is in a pod but cannot list).
/// The first list is awaited (up to 2 s) so that the first spans already carry the labels'
/// names.
pub async fn start(api: KubeApi) -> Option<Arc<PodDirectory>> {
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
    let Some(node) = node_name() else {
        tracing::warn!("pod labels not used: no NODE_NAME and no host name to list pods of");
        return None;
    };
    let path = format!(
        "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
        encode(&node)
    );
    let directory = Arc::new(PodDirectory::default());
    // An API server that does not answer must not hold up tracing: the lister goes on behind.
    if tokio::time::timeout(FIRST_LIST_WAIT, list_once(&server, &path, &directory, true))
        .await
        .is_err()
    {
        tracing::warn!(
            "the API server gave no pod list within {FIRST_LIST_WAIT:?}; service names come \
             from pod names until it does"
        );
        directory.list_failures.fetch_add(1, Ordering::Relaxed);
    }
    let lister = Arc::clone(&directory);
    tokio::spawn(async move {
        let mut last = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if lister.due(last.elapsed()) {
                last = Instant::now();
                list_once(&server, &path, &lister, false).await;
            }
        }
    });
    Some(directory)
}

/// One list into `directory`. The first failure is a warning naming the fix; later ones are
/// counted (and logged at debug) so a flapping API server does not flood the log.
async fn list_once(server: &client::ApiServer, path: &str, directory: &PodDirectory, first: bool) {
    let result = match server.get(path).await {
        Ok(body) => pod_list::parse(&body).map_err(KubeError::from),
        Err(e) => Err(e),
    };
    match result {
        Ok(pods) => {
            directory.lists.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(pods = pods.len(), "listed this node's pods");
            directory.replace(pods);
        }
        Err(e) => {
            let failures = directory.list_failures.fetch_add(1, Ordering::Relaxed);
            if first || failures == 0 {
                tracing::warn!(
                    "cannot list this node's pods ({e}); service names come from pod names until \
                     it works (the agent's service account needs `list` on `pods`: \
                     deploy/daemonset.yaml)"
                );
            } else {
                tracing::debug!("pod list failed: {e}");
            }
        }
    }
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
    fn a_missed_lookup_brings_the_next_list_forward_once() {
        let directory = PodDirectory::default();
        assert!(!directory.due(Duration::from_secs(6)));
        assert!(directory.lookup("unknown").is_none());
        assert!(!directory.due(Duration::from_secs(2)), "not before 5 s");
        assert!(directory.due(Duration::from_secs(6)));
        assert!(
            !directory.due(Duration::from_secs(6)),
            "the miss was used up"
        );
        assert!(directory.due(Duration::from_secs(31)), "every 30 s anyway");
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
