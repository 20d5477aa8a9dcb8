//! The API server's pod list (`GET /api/v1/pods`, a `v1.PodList`) reduced to what names a
//! service: each pod's uid, name, namespace and the workload it belongs to.

use std::collections::HashMap;

use serde::Deserialize;

/// What sockspan keeps of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    /// The service name the pod's labels or owner give (see [`workload`]).
    pub workload: String,
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<PodItem>,
}

#[derive(Deserialize)]
struct PodItem {
    metadata: ObjectMeta,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    labels: HashMap<String, String>,
    #[serde(default)]
    owner_references: Vec<OwnerReference>,
}

#[derive(Deserialize)]
struct OwnerReference {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    controller: bool,
}

/// Parses a `v1.PodList` body into pods by uid. Pods without a uid or a name are skipped (the
/// API always sets both; a body without them is not a pod list).
///
/// # Errors
/// The body is not JSON of a pod list's shape.
pub fn parse(body: &[u8]) -> Result<HashMap<String, PodMeta>, serde_json::Error> {
    let list: PodList = serde_json::from_slice(body)?;
    Ok(list
        .items
        .into_iter()
        .filter(|item| !item.metadata.uid.is_empty() && !item.metadata.name.is_empty())
        .map(|item| {
            let meta = item.metadata;
            let workload = workload(&meta);
            (
                meta.uid,
                PodMeta {
                    name: meta.name,
                    namespace: meta.namespace,
                    workload,
                },
            )
        })
        .collect())
}

/// The name a pod's service goes by, as Beyla and the OpenTelemetry operator choose it: the
/// `app.kubernetes.io/name` label, else the `app` label, else the controller that owns it (a
/// `ReplicaSet` stands for its `Deployment`: its name less the `pod-template-hash`; a `Job` a
/// `CronJob` made stands for the `CronJob`), else the pod's own name.
fn workload(meta: &ObjectMeta) -> String {
    for label in ["app.kubernetes.io/name", "app"] {
        if let Some(value) = meta.labels.get(label).filter(|v| !v.is_empty()) {
            return value.clone();
        }
    }
    let owner = meta
        .owner_references
        .iter()
        .find(|o| o.controller)
        .or_else(|| meta.owner_references.first())
        .filter(|o| !o.name.is_empty());
    let Some(owner) = owner else {
        return meta.name.clone();
    };
    match owner.kind.as_str() {
        "ReplicaSet" => meta
            .labels
            .get("pod-template-hash")
            .and_then(|hash| owner.name.strip_suffix(hash.as_str()))
            .and_then(|name| name.strip_suffix('-'))
            .filter(|name| !name.is_empty())
            .unwrap_or(&owner.name)
            .to_string(),
        // A CronJob's Jobs are `<cronjob>-<scheduled minute since the epoch>`.
        "Job" => match owner.name.rsplit_once('-') {
            Some((cron, minute))
                if minute.len() >= 8 && minute.bytes().all(|b| b.is_ascii_digit()) =>
            {
                cron.to_string()
            }
            _ => owner.name.clone(),
        },
        _ => owner.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod list of the shape `kubectl get --raw /api/v1/pods?fieldSelector=spec.nodeName=…`
    /// returns, written after the API's `v1.PodList` (no API server runs here to capture one):
    /// the labels, owners and hashes its controllers set, spec and status trimmed.
    const LIST: &str = include_str!("fixtures/pod_list.json");

    #[test]
    fn labels_come_first_then_the_owning_controller() {
        let pods = parse(LIST.as_bytes()).expect("fixture parses");
        let workload = |uid: &str| pods.get(uid).map(|p| p.workload.as_str());
        // app.kubernetes.io/name beats app and the owner.
        assert_eq!(
            workload("6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b"),
            Some("ranker")
        );
        // app alone.
        assert_eq!(
            workload("7a2b3c4d-1e2f-4a3b-9c4d-5e6f7a8b9c0d"),
            Some("feature-store")
        );
        // A Deployment's pod without labels: the ReplicaSet less its pod-template-hash.
        assert_eq!(
            workload("8b3c4d5e-2f3a-4b4c-8d5e-6f7a8b9c0d1e"),
            Some("embedder")
        );
        // A StatefulSet's, a DaemonSet's pod: the owner's name.
        assert_eq!(
            workload("9c4d5e6f-3a4b-4c5d-9e6f-7a8b9c0d1e2f"),
            Some("vector-db")
        );
        assert_eq!(
            workload("0d5e6f7a-4b5c-4d6e-8f7a-8b9c0d1e2f3a"),
            Some("log-shipper")
        );
        // A CronJob's Job: the CronJob.
        assert_eq!(
            workload("1e6f7a8b-5c6d-4e7f-9a8b-9c0d1e2f3a4b"),
            Some("nightly-retrain")
        );
        // A bare pod: its own name.
        assert_eq!(
            workload("2f7a8b9c-6d7e-4f8a-8b9c-0d1e2f3a4b5c"),
            Some("debug-shell")
        );
        let ranker = &pods["6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b"];
        assert_eq!(ranker.name, "ranker-7c9d8f6b5d-x2x7q");
        assert_eq!(ranker.namespace, "serving");
        assert_eq!(pods.len(), 7, "the pod without a uid is skipped");
    }

    #[test]
    fn a_replica_set_whose_name_lacks_the_hash_keeps_its_name() {
        let body = br#"{"items":[{"metadata":{"name":"x-abcde","namespace":"n","uid":"u",
            "labels":{"pod-template-hash":"zzz"},
            "ownerReferences":[{"kind":"ReplicaSet","name":"custom-rs","controller":true}]}}]}"#;
        assert_eq!(parse(body).expect("parses")["u"].workload, "custom-rs");
    }

    #[test]
    fn what_is_not_a_pod_list_is_an_error_and_an_empty_list_is_empty() {
        assert!(parse(b"<html>forbidden</html>").is_err());
        assert!(parse(br#"{"items":[{"metadata":7}]}"#).is_err());
        assert!(
            parse(br#"{"kind":"PodList","items":[]}"#)
                .expect("parses")
                .is_empty()
        );
        assert!(
            parse(br#"{"kind":"Status","code":403}"#)
                .expect("parses")
                .is_empty()
        );
    }
}
