//! Containers' names, from what their runtimes keep on the host's disk (no runtime API, no
//! socket to reach): containers/storage's `containers.json` (Podman, Buildah, CRI-O) and
//! Docker's `config.v2.json` per container. Read through `/proc/1/root` (the host's root for an
//! agent in a pod with `hostPID`), else `/` (an agent on the host where pid 1's root is closed to
//! it, as in some sandboxes).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::SystemTime,
};

use serde::Deserialize;

/// The host's root as this process may reach it, in order.
const HOST_ROOTS: [&str; 2] = ["/proc/1/root", "/"];

/// containers/storage's graph root and run root (where a transient store keeps its lists), the
/// drivers whose container lists they may hold, and the lists: `containers.json`, and
/// `volatile-containers.json` for containers not meant to outlive a reboot (Podman 4.4+ puts
/// every `--rm` container there).
const STORAGE_ROOTS: [&str; 2] = ["var/lib/containers/storage", "run/containers/storage"];
const STORAGE_DRIVERS: [&str; 4] = ["overlay", "vfs", "btrfs", "zfs"];
const STORAGE_LISTS: [&str; 2] = ["containers.json", "volatile-containers.json"];

/// What tells a list file changed: modification time, size and inode (two writes within one
/// timestamp tick differ in size or, written by rename as containers/storage does, in inode).
type Version = (SystemTime, u64, u64);

/// Docker's data root.
const DOCKER_ROOT: &str = "var/lib/docker/containers";

/// A `containers.json` entry.
#[derive(Deserialize)]
struct StorageContainer {
    #[serde(default)]
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// The part of Docker's `config.v2.json` that names the container.
#[derive(Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name", default)]
    name: String,
}

/// containers/storage's lists, read again only when a file changed.
#[derive(Default)]
struct StorageLists {
    /// Per list file: its version when read, and its containers' names by id.
    files: HashMap<PathBuf, (Version, HashMap<String, String>)>,
}

impl StorageLists {
    fn name(&mut self, root: &Path, id: &str) -> Option<String> {
        let paths = STORAGE_ROOTS.iter().flat_map(|storage| {
            STORAGE_DRIVERS.iter().flat_map(move |driver| {
                STORAGE_LISTS.iter().map(move |list| {
                    root.join(storage)
                        .join(format!("{driver}-containers"))
                        .join(list)
                })
            })
        });
        for path in paths {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let version = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
                std::os::unix::fs::MetadataExt::ino(&meta),
            );
            let fresh = self
                .files
                .get(&path)
                .is_some_and(|(read_at, _)| *read_at == version);
            if !fresh {
                let names = std::fs::read(&path)
                    .ok()
                    .map(|body| parse_storage(&body))
                    .unwrap_or_default();
                self.files.insert(path.clone(), (version, names));
            }
            if let Some(name) = self.files.get(&path).and_then(|(_, names)| names.get(id)) {
                return Some(name.clone());
            }
        }
        None
    }
}

/// containers/storage's list: ids to first names. A damaged file names nothing.
fn parse_storage(body: &[u8]) -> HashMap<String, String> {
    serde_json::from_slice::<Vec<StorageContainer>>(body)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| {
            let name = c.names.into_iter().find(|n| !n.is_empty())?;
            Some((c.id, kubernetes_container(&name).unwrap_or(name)))
        })
        .collect()
}

/// The container's own name in a name CRI-O gives a Kubernetes container in storage:
/// `k8s_<container>_<pod>_<namespace>_<pod uid>_<attempt>`.
fn kubernetes_container(name: &str) -> Option<String> {
    let rest = name.strip_prefix("k8s_")?;
    let fields: Vec<&str> = rest.split('_').collect();
    (fields.len() >= 5 && !fields[0].is_empty()).then(|| fields[0].to_string())
}

/// Docker's name of container `id` (`"/ranker"` → `ranker`).
fn docker_name(root: &Path, id: &str) -> Option<String> {
    let body = std::fs::read(root.join(DOCKER_ROOT).join(id).join("config.v2.json")).ok()?;
    let config: DockerConfig = serde_json::from_slice(&body).ok()?;
    let name = config.name.trim_start_matches('/');
    (!name.is_empty()).then(|| name.to_string())
}

fn name_under(lists: &mut StorageLists, root: &Path, id: &str) -> Option<String> {
    // Ids are 64 hex digits (the caller found them so); nothing else reaches a path.
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    lists.name(root, id).or_else(|| docker_name(root, id))
}

static STORAGE: Mutex<Option<StorageLists>> = Mutex::new(None);

/// The name container `id` was given by its runtime, when its state is on this host's disk.
#[must_use]
pub fn name(id: &str) -> Option<String> {
    let mut lists = STORAGE.lock().unwrap_or_else(PoisonError::into_inner);
    let lists = lists.get_or_insert_with(StorageLists::default);
    HOST_ROOTS
        .iter()
        .find_map(|root| name_under(lists, Path::new(root), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "20f5dea8a27377048cf87c001288abe2d380afcbd2b18520031d0f00236c85df";
    const OTHER: &str = "93932756e0f3b1c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";

    fn root() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sockspan-containers-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn write(path: &Path, body: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, body).expect("write");
    }

    #[test]
    fn storage_lists_name_podman_and_cri_o_containers_and_are_read_again_when_changed() {
        let root = root();
        let list = root
            .join(STORAGE_ROOTS[0])
            .join("overlay-containers/containers.json");
        // As Podman 4.3 writes it (fields trimmed).
        write(
            &list,
            &format!(
                r#"[{{"id":"{ID}","names":["ranker-box"],"image":"","layer":"l1","metadata":"{{}}","created":"2026-12-05T10:40:28Z","flags":{{}}}}]"#
            ),
        );
        let mut lists = StorageLists::default();
        assert_eq!(
            name_under(&mut lists, &root, ID).as_deref(),
            Some("ranker-box")
        );
        assert_eq!(name_under(&mut lists, &root, OTHER), None);
        // A new container: the file changes, and is read again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(
            &list,
            &format!(
                r#"[{{"id":"{ID}","names":["ranker-box"]}},{{"id":"{OTHER}","names":["","scorer"]}}]"#
            ),
        );
        assert_eq!(
            name_under(&mut lists, &root, OTHER).as_deref(),
            Some("scorer")
        );
        // Damage names nothing and panics nothing.
        write(&list, "[{\"id\":");
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(&list, "[{\"id\": 7");
        assert_eq!(name_under(&mut lists, &root, ID), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn volatile_lists_in_the_run_root_name_rm_containers_and_cri_o_names_are_shortened() {
        let root = root();
        // Podman 4.4+ with a transient store: `--rm` containers in the run root's volatile list.
        write(
            &root
                .join(STORAGE_ROOTS[1])
                .join("overlay-containers/volatile-containers.json"),
            &format!(
                r#"[{{"id":"{ID}","names":["box"]}},{{"id":"{OTHER}","names":["k8s_ranker_ranker-7c9d8f6b5d-x2x7q_serving_6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b_0"]}}]"#
            ),
        );
        let mut lists = StorageLists::default();
        assert_eq!(name_under(&mut lists, &root, ID).as_deref(), Some("box"));
        assert_eq!(
            name_under(&mut lists, &root, OTHER).as_deref(),
            Some("ranker")
        );
        assert_eq!(kubernetes_container("k8s_x"), None);
        assert_eq!(kubernetes_container("plain_name"), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn docker_names_its_containers_in_their_config() {
        let root = root();
        write(
            &root.join(DOCKER_ROOT).join(ID).join("config.v2.json"),
            r#"{"ID":"x","Name":"/feature-store","Config":{"Hostname":"20f5dea8a273"}}"#,
        );
        let mut lists = StorageLists::default();
        assert_eq!(
            name_under(&mut lists, &root, ID).as_deref(),
            Some("feature-store")
        );
        // Not an id: no path is built from it.
        assert_eq!(name_under(&mut lists, &root, "../../etc"), None);
        let _ = std::fs::remove_dir_all(&root);
    }
}
