//! Which service a process is: `service.name` and the other resource attributes.

use std::{collections::HashMap, str::FromStr, sync::Arc};

use super::span::{KeyValue, Resource};
use crate::{
    kube::{PodDirectory, PodMeta},
    process::ProcessInfo,
};

/// How `service.name` is chosen for a traced process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceNameRule {
    /// The first that applies: the process's `OTEL_SERVICE_NAME`; its Kubernetes workload
    /// (from the pod's labels or owner, else its name); its systemd unit; its container's name;
    /// for an interpreter or app server, the application it runs; the executable's name.
    #[default]
    Auto,
    /// The executable's file name.
    Exe,
    /// The process's comm.
    Comm,
    /// The script or jar an interpreter runs (`python3 app/model.py` → `model`), else the
    /// executable's name.
    Cmdline,
    /// The container's name, else its id's first 12 characters, else as `Auto`.
    Container,
}

impl FromStr for ServiceNameRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "exe" => Ok(Self::Exe),
            "comm" => Ok(Self::Comm),
            "cmdline" => Ok(Self::Cmdline),
            "container" => Ok(Self::Container),
            other => Err(format!(
                "unknown service-name rule `{other}`; accepted: auto, exe, comm, cmdline, container"
            )),
        }
    }
}

/// Interpreters whose first non-option argument names the program.
const INTERPRETERS: [&str; 7] = ["python", "node", "ruby", "perl", "php", "java", "bash"];

/// App servers whose first non-option argument names the application (`module:attribute`).
const APP_SERVERS: [&str; 6] = [
    "gunicorn",
    "uvicorn",
    "hypercorn",
    "daphne",
    "waitress-serve",
    "granian",
];

/// File and module names that say nothing of the application: the working directory (or the
/// script's folder) names it instead.
const GENERIC_NAMES: [&str; 12] = [
    "main",
    "app",
    "server",
    "run",
    "index",
    "wsgi",
    "asgi",
    "__main__",
    "manage",
    "start",
    "application",
    "api",
];

/// systemd units that start other programs (supervisors, schedulers, CI runners, remote
/// shells): their name says nothing of what a process under them is.
const HOSTING_UNITS: [&str; 12] = [
    "supervisor",
    "supervisord",
    "cron",
    "crond",
    "ssh",
    "sshd",
    "docker",
    "containerd",
    "gitlab-runner",
    "jenkins",
    "buildkite-agent",
    "actions.runner",
];

/// The application an interpreter or app server runs: `python app/model.py` → `model`,
/// `python -m pkg.serve` → `pkg`, `gunicorn shop.wsgi:app` → `shop`, `node server.js` → its
/// folder (a generic name), `java -jar billing.jar` → `billing`.
fn app_name(process: &ProcessInfo) -> Option<String> {
    if let Some(launcher) = &process.launcher {
        return app_name(launcher);
    }
    let exe = process.exe_name();
    let server = |name: &str| APP_SERVERS.contains(&name);
    let interpreter = INTERPRETERS.iter().any(|i| exe.starts_with(i));
    if !interpreter && !server(exe) {
        return None;
    }
    let mut args = process.cmdline.iter().skip(1);
    // The program's own name, once found, and whether it is an app server whose application
    // comes next.
    while let Some(arg) = args.next() {
        if arg == "-c" || arg == "-e" || arg == "--eval" {
            return None;
        }
        let (name, path) = if arg == "-m" || arg == "-jar" {
            let module = args.next()?;
            let top = if arg == "-m" {
                module.split('.').next().unwrap_or(module).to_string()
            } else {
                strip_version(&base_name(module)).to_string()
            };
            (top, None)
        } else if arg.starts_with('-') {
            continue;
        } else {
            (base_name(arg), Some(arg.as_str()))
        };
        if server(&name) {
            // Its application: the first argument that is no option (`module:attr`).
            let app = args.find(|a| is_app_spec(a))?;
            let module = app.split(':').next().unwrap_or(app);
            let top = module.split('.').next().unwrap_or(module).to_string();
            return Some(if GENERIC_NAMES.contains(&top.as_str()) {
                folder_name(&process.cwd).unwrap_or(top)
            } else {
                top
            });
        }
        if GENERIC_NAMES.contains(&name.as_str()) {
            let folder = path
                .and_then(|p| p.rsplit_once('/').map(|(dir, _)| dir))
                .filter(|dir| !dir.is_empty() && !dir.starts_with('.'))
                .map_or_else(
                    || process.cwd.clone(),
                    |dir| {
                        if dir.starts_with('/') {
                            dir.to_string()
                        } else {
                            format!("{}/{dir}", process.cwd)
                        }
                    },
                );
            return Some(folder_name(&folder).unwrap_or(name));
        }
        return Some(name);
    }
    None
}

/// `package.module:attribute` (or `module:factory()`), as app servers take their application;
/// not an option, nor an option's value such as `127.0.0.1:8000`.
fn is_app_spec(arg: &str) -> bool {
    let Some((module, attribute)) = arg.split_once(':') else {
        return false;
    };
    let identifier = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    !module.is_empty()
        && module.split('.').all(identifier)
        && identifier(attribute.split('(').next().unwrap_or(attribute))
}

/// The last component of a folder, unless it too is generic (`src`, `app`, `/`).
fn folder_name(dir: &str) -> Option<String> {
    let last = dir.trim_end_matches('/').rsplit('/').next()?;
    (!last.is_empty()
        && !matches!(
            last,
            "src" | "app" | "bin" | "lib" | "srv" | "opt" | "root" | "home" | "tmp"
        )
        && !GENERIC_NAMES.contains(&last))
    .then(|| last.to_string())
}

/// `billing-1.4.2` → `billing`: a jar's version suffix.
fn strip_version(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((head, tail)) if tail.starts_with(|c: char| c.is_ascii_digit()) => head,
        _ => name,
    }
}

/// The file name without its extension(s).
fn base_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split('.').next().unwrap_or(file).to_string()
}

/// The service name of `process` under `rule`, without the API server's pod list.
#[cfg(test)]
#[must_use]
pub fn service_name(rule: ServiceNameRule, process: &ProcessInfo) -> String {
    service_name_listed(rule, process, None)
}

/// The service name of `process` under `rule`, its pod as the API server lists it when known:
/// the pod's labels or owner name the workload, else its name does.
#[must_use]
pub fn service_name_listed(
    rule: ServiceNameRule,
    process: &ProcessInfo,
    listed: Option<&PodMeta>,
) -> String {
    let auto = || {
        process
            .otel_service_name
            .clone()
            .or_else(|| listed.map(|pod| pod.workload.clone()))
            .or_else(|| process.pod.as_ref().map(crate::process::Pod::workload))
            .or_else(|| {
                process
                    .systemd_unit
                    .clone()
                    .filter(|u| !HOSTING_UNITS.contains(&u.split('@').next().unwrap_or(u)))
            })
            .or_else(|| process.container_name.clone())
            .or_else(|| app_name(process))
            .unwrap_or_else(|| process.exe_name().to_string())
    };
    let name = match rule {
        ServiceNameRule::Auto => auto(),
        ServiceNameRule::Exe => process.exe_name().to_string(),
        ServiceNameRule::Comm => process.comm.clone(),
        ServiceNameRule::Cmdline => {
            app_name(process).unwrap_or_else(|| process.exe_name().to_string())
        }
        ServiceNameRule::Container => process.container_name.clone().unwrap_or_else(|| {
            process
                .container_id
                .as_ref()
                .map_or_else(auto, |id| id.chars().take(12).collect())
        }),
    };
    if name.is_empty() {
        format!("unknown_service:{}", process.pid)
    } else {
        name
    }
}

/// Words that mark an argument (or the one after a flag) as carrying a credential.
const SECRET_MARKERS: [&str; 9] = [
    "password", "passwd", "token", "secret", "apikey", "api-key", "api_key", "auth", "cookie",
];

fn looks_secret(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    SECRET_MARKERS.iter().any(|m| lower.contains(m)) || lower.contains("bearer ")
}

/// The command line with credential-bearing arguments replaced by `REDACTED`: values of header
/// flags (`-H`, `--header`), of flags named like credentials (`--password x`, `--token=x`),
/// `key=value` pairs with such keys, and anything that itself reads like a credential. Command
/// lines are resource attributes of every span; a secret passed on one must not leave the host.
#[must_use]
pub fn redacted_command_line(argv: &[String]) -> String {
    let mut out = Vec::with_capacity(argv.len());
    let mut redact_next = false;
    for arg in argv {
        if redact_next {
            out.push("REDACTED".to_string());
            redact_next = false;
            continue;
        }
        let is_flag = arg.starts_with('-');
        if let Some((key, _)) = arg.split_once('=')
            && looks_secret(key)
        {
            out.push(format!("{key}=REDACTED"));
        } else if is_flag && (arg == "-H" || arg == "--header" || looks_secret(arg)) {
            out.push(arg.clone());
            redact_next = true;
        } else if looks_secret(arg) {
            out.push("REDACTED".to_string());
        } else {
            out.push(arg.clone());
        }
    }
    out.join(" ")
}

/// Resources per process, built once per process metadata snapshot.
pub struct Resources {
    rule: ServiceNameRule,
    host_name: String,
    /// The pods of this node from the API server, when it is reachable.
    pods: Option<Arc<PodDirectory>>,
    /// Per pid: the process snapshot, the pod directory's generation it was built at, and the
    /// resource.
    /// Asked once per span: foldhash, not the default `SipHash` (pids are the kernel's, not a
    /// peer's choice of keys).
    cache: HashMap<u32, (Arc<ProcessInfo>, u64, Arc<Resource>), foldhash::fast::RandomState>,
}

impl Resources {
    #[must_use]
    pub fn new(rule: ServiceNameRule) -> Self {
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Self {
            rule,
            host_name,
            pods: None,
            cache: HashMap::default(),
        }
    }

    /// Names pods' services from their labels and owners as `pods` lists them.
    #[must_use]
    pub fn with_pods(mut self, pods: Option<Arc<PodDirectory>>) -> Self {
        self.pods = pods;
        self
    }

    /// The resource of `process`.
    pub fn get(&mut self, process: &Arc<ProcessInfo>) -> Arc<Resource> {
        // Only a process in a pod depends on the pod list.
        let generation = match (&self.pods, &process.pod) {
            (Some(pods), Some(_)) => pods.generation(),
            _ => 0,
        };
        if let Some((info, built_at, resource)) = self.cache.get(&process.pid)
            && Arc::ptr_eq(info, process)
            && *built_at == generation
        {
            return Arc::clone(resource);
        }
        let listed = self
            .pods
            .as_ref()
            .zip(process.pod.as_ref().and_then(|pod| pod.uid.as_deref()))
            .and_then(|(pods, uid)| pods.lookup(uid));
        let mut attributes = vec![
            KeyValue::str(
                "service.name",
                service_name_listed(self.rule, process, listed.as_deref()),
            ),
            // Unique per process: the host, the pid, and when the process started (a reused pid
            // is another instance).
            KeyValue::str(
                "service.instance.id",
                format!("{}:{}:{}", self.host_name, process.pid, process.start_ticks),
            ),
            KeyValue::str("host.name", self.host_name.clone()),
            KeyValue::int("process.pid", i64::from(process.pid)),
            KeyValue::str("process.executable.name", process.exe_name().to_string()),
            KeyValue::str(
                "process.command_line",
                redacted_command_line(&process.cmdline),
            ),
            KeyValue::str("telemetry.sdk.name", "sockspan"),
            KeyValue::str("telemetry.sdk.language", "rust"),
            KeyValue::str("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ];
        if let Some(id) = &process.container_id {
            attributes.push(KeyValue::str("container.id", id.clone()));
        }
        if let Some(name) = &process.container_name {
            attributes.push(KeyValue::str("container.name", name.clone()));
        }
        if let Some(pod) = &process.pod {
            // The API server's word, where it has one, over what the pod's files show.
            let name = listed.as_ref().map_or(&pod.name, |l| &l.name);
            let namespace = listed
                .as_ref()
                .map(|l| &l.namespace)
                .filter(|n| !n.is_empty())
                .or(pod.namespace.as_ref());
            attributes.push(KeyValue::str("k8s.pod.name", name.clone()));
            if let Some(uid) = &pod.uid {
                attributes.push(KeyValue::str("k8s.pod.uid", uid.clone()));
            }
            if let Some(namespace) = namespace {
                attributes.push(KeyValue::str("k8s.namespace.name", namespace.clone()));
                attributes.push(KeyValue::str("service.namespace", namespace.clone()));
            }
        }
        if let Some(unit) = &process.systemd_unit {
            attributes.push(KeyValue::str("systemd.unit", format!("{unit}.service")));
        }
        let resource = Arc::new(Resource::new(attributes));
        if self.cache.len() > 16_384 {
            self.cache.clear();
        }
        self.cache.insert(
            process.pid,
            (Arc::clone(process), generation, Arc::clone(&resource)),
        );
        resource
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(exe: &str, cmdline: &[&str], env_name: Option<&str>) -> ProcessInfo {
        ProcessInfo {
            pid: 42,
            comm: "worker".into(),
            exe: exe.into(),
            cmdline: cmdline.iter().map(|s| (*s).to_string()).collect(),
            otel_service_name: env_name.map(String::from),
            ..ProcessInfo::default()
        }
    }

    #[test]
    fn command_lines_lose_their_secrets() {
        let argv: Vec<String> = [
            "curl",
            "-H",
            "Authorization: Bearer abc",
            "--password",
            "hunter2",
            "--api-key=k1",
            "DB_TOKEN=t0",
            "https://x/",
            "-v",
            "--header",
            "X-Trace: 1",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        assert_eq!(
            redacted_command_line(&argv),
            "curl -H REDACTED --password REDACTED --api-key=REDACTED DB_TOKEN=REDACTED https://x/ -v --header REDACTED"
        );
        let plain: Vec<String> = ["python3", "app.py", "--port", "80"]
            .iter()
            .map(|s| (*s).to_string())
            .collect();
        assert_eq!(redacted_command_line(&plain), "python3 app.py --port 80");
    }

    fn in_dir(mut p: ProcessInfo, cwd: &str) -> ProcessInfo {
        p.cwd = cwd.into();
        p
    }

    #[test]
    fn applications_name_interpreters_and_app_servers() {
        let auto = |exe: &str, argv: &[&str], cwd: &str| {
            service_name(
                ServiceNameRule::Auto,
                &in_dir(process(exe, argv, None), cwd),
            )
        };
        let py = "/usr/bin/python3.11";
        assert_eq!(auto(py, &["python3", "ranker.py"], "/srv"), "ranker");
        assert_eq!(
            auto(py, &["python3", "-u", "features/main.py"], "/srv/shop"),
            "features"
        );
        assert_eq!(
            auto(py, &["python3", "main.py"], "/srv/recommender"),
            "recommender"
        );
        assert_eq!(auto(py, &["python3", "/opt/search/app.py"], "/"), "search");
        assert_eq!(
            auto(py, &["python3", "-m", "embedder.serve"], "/"),
            "embedder"
        );
        assert_eq!(auto(py, &["python3", "-c", "print(1)"], "/"), "python3.11");
        assert_eq!(auto(py, &["python3"], "/"), "python3.11");
        assert_eq!(
            auto(
                py,
                &[
                    "python3",
                    "/usr/local/bin/gunicorn",
                    "-w",
                    "4",
                    "-b",
                    "127.0.0.1:8000",
                    "shop.wsgi:application"
                ],
                "/"
            ),
            "shop"
        );
        assert_eq!(
            auto(
                py,
                &["python3", "-m", "uvicorn", "main:app", "--port", "80"],
                "/srv/pricing"
            ),
            "pricing"
        );
        assert_eq!(
            auto(
                "/srv/venv/bin/uvicorn",
                &["uvicorn", "scoring.api:app"],
                "/"
            ),
            "scoring"
        );
        assert_eq!(
            auto("/usr/bin/node", &["node", "gateway.js"], "/"),
            "gateway"
        );
        assert_eq!(
            auto("/usr/bin/node", &["node", "server.js"], "/srv/edge"),
            "edge"
        );
        assert_eq!(
            auto(
                "/usr/bin/java",
                &["java", "-Xmx1g", "-jar", "billing-1.4.2.jar"],
                "/"
            ),
            "billing"
        );
        assert_eq!(
            auto("/usr/bin/redis-server", &["redis-server *:6379"], "/"),
            "redis-server"
        );
        // A worker uvicorn's `--workers` spawned serves its launcher's application.
        let mut worker = process(
            py,
            &[
                "python3",
                "-c",
                "from multiprocessing.spawn import spawn_main; spawn_main()",
                "--multiprocessing-fork",
            ],
            None,
        );
        worker.launcher = Some(std::sync::Arc::new(in_dir(
            process(
                py,
                &["python3", "-m", "uvicorn", "main:app", "--workers", "4"],
                None,
            ),
            "/srv/pricing",
        )));
        assert_eq!(service_name(ServiceNameRule::Auto, &worker), "pricing");
    }

    #[test]
    fn pods_units_and_the_environment_come_before_the_command_line() {
        let mut p = process("/usr/bin/python3.11", &["python3", "ranker.py"], None);
        p.systemd_unit = Some("model-api".into());
        assert_eq!(service_name(ServiceNameRule::Auto, &p), "model-api");
        p.systemd_unit = Some("supervisord".into());
        assert_eq!(
            service_name(ServiceNameRule::Auto, &p),
            "ranker",
            "a supervisor names nothing"
        );
        p.container_id = Some("3f1e7c0a9b2d".repeat(5) + "3f1e");
        assert_eq!(service_name(ServiceNameRule::Container, &p), "3f1e7c0a9b2d");
        p.container_name = Some("ranker-box".into());
        assert_eq!(
            service_name(ServiceNameRule::Auto, &p),
            "ranker-box",
            "a container's name before the command line"
        );
        assert_eq!(service_name(ServiceNameRule::Container, &p), "ranker-box");
        p.systemd_unit = Some("model-api".into());
        assert_eq!(
            service_name(ServiceNameRule::Auto, &p),
            "model-api",
            "a unit before a container's name"
        );
        p.pod = Some(crate::process::Pod {
            name: "ranker-7c9d8f6b5d-x2x7q".into(),
            namespace: Some("ml".into()),
            uid: None,
        });
        assert_eq!(service_name(ServiceNameRule::Auto, &p), "ranker");
        p.otel_service_name = Some("ranker-v2".into());
        assert_eq!(service_name(ServiceNameRule::Auto, &p), "ranker-v2");
        let workload = |name: &str| {
            crate::process::Pod {
                name: name.into(),
                namespace: None,
                uid: None,
            }
            .workload()
        };
        assert_eq!(workload("ranker-7c9d8f6b5d-x2x7q"), "ranker", "Deployment");
        assert_eq!(workload("feature-store-0"), "feature-store", "StatefulSet");
        assert_eq!(
            workload("node-exporter-4tq8z"),
            "node-exporter",
            "DaemonSet"
        );
        assert_eq!(workload("model-server"), "model-server", "bare pod");
        assert_eq!(
            workload("web-aaaaa"),
            "web-aaaaa",
            "vowels: not a generated suffix"
        );
    }

    #[test]
    fn a_listed_pod_is_named_by_its_labels_and_renamed_when_they_change() {
        use std::collections::HashMap;
        let uid = "6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b";
        let mut p = process("/usr/bin/python3.11", &["python3", "serve.py"], None);
        p.pod = Some(crate::process::Pod {
            name: "ranker-7c9d8f6b5d-x2x7q".into(),
            namespace: None,
            uid: Some(uid.into()),
        });
        let p = Arc::new(p);
        let pods = Arc::new(PodDirectory::default());
        let mut resources =
            Resources::new(ServiceNameRule::Auto).with_pods(Some(Arc::clone(&pods)));
        let attribute = |r: &Resource, key: &str| {
            r.attributes()
                .iter()
                .find(|kv| kv.key == key)
                .map(|kv| format!("{:?}", kv.value))
        };
        // Not listed (yet): the pod's name says `ranker`.
        assert_eq!(resources.get(&p).service_name(), "ranker");
        let listed = |workload: &str| {
            HashMap::from([(
                uid.to_string(),
                PodMeta {
                    name: "ranker-7c9d8f6b5d-x2x7q".into(),
                    namespace: "serving".into(),
                    workload: workload.into(),
                },
            )])
        };
        pods.replace(listed("ranking-api"));
        let r = resources.get(&p);
        assert_eq!(r.service_name(), "ranking-api", "the label over the name");
        assert!(attribute(&r, "k8s.namespace.name").is_some_and(|v| v.contains("serving")));
        assert!(attribute(&r, "k8s.pod.uid").is_some_and(|v| v.contains(uid)));
        pods.replace(listed("ranking-api-v2"));
        assert_eq!(resources.get(&p).service_name(), "ranking-api-v2");
        // OTEL_SERVICE_NAME still comes first.
        let mut named = (*p).clone();
        named.otel_service_name = Some("explicit".into());
        assert_eq!(resources.get(&Arc::new(named)).service_name(), "explicit");
    }

    #[test]
    fn naming_rules() {
        let p = process(
            "/usr/bin/python3.11",
            &["python3", "-u", "/srv/app/model.py", "--port", "1"],
            None,
        );
        assert_eq!(service_name(ServiceNameRule::Auto, &p), "model");
        assert_eq!(service_name(ServiceNameRule::Exe, &p), "python3.11");
        assert_eq!(service_name(ServiceNameRule::Cmdline, &p), "model");
        assert_eq!(service_name(ServiceNameRule::Comm, &p), "worker");
        let p = process(
            "/usr/bin/python3",
            &["python3", "-m", "gunicorn"],
            Some("checkout"),
        );
        assert_eq!(service_name(ServiceNameRule::Auto, &p), "checkout");
        assert_eq!(service_name(ServiceNameRule::Cmdline, &p), "python3");
        let p = process("/usr/sbin/nginx", &["nginx: worker process"], None);
        assert_eq!(service_name(ServiceNameRule::Cmdline, &p), "nginx");
        assert_eq!(service_name(ServiceNameRule::Auto, &p), "nginx");
        assert!(
            "bogus"
                .parse::<ServiceNameRule>()
                .expect_err("bad")
                .contains("accepted: auto")
        );
    }
}
