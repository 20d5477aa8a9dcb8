//! Root integration test of service naming: real services without `OTEL_SERVICE_NAME`, each
//! started as users start them (two plain scripts, a generic `main.py` in its project folder,
//! `python -m`, uvicorn with `--workers`, gunicorn, a Node.js script, a process in a
//! systemd-style cgroup, one in a Kubernetes-style pod cgroup, one in a Podman container),
//! called once each; the agent must name them apart.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use sockspan_tests::{Agent, ProcGroup, free_port, run_ok, wait_listening};

/// A stdlib HTTP server answering `GET /` with 200 on the port its last argument names.
const SERVER_PY: &str = r#"import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[-1])), Handler).serve_forever()
"#;

/// A plain ASGI and WSGI application (no framework needed).
const APP_PY: &str = r#"async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

def application(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
"#;

const SERVER_JS: &str = r"require('http').createServer((req, res) => res.end('ok')).listen(Number(process.argv[2]), '127.0.0.1');
";

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("folder")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// Starts `program args…` in `dir`, in a process group of its own (its workers die with it),
/// and waits until `port` listens.
fn serve(program: &str, args: &[&str], dir: &Path, port: u16) -> ProcGroup {
    use std::os::unix::process::CommandExt as _;
    let child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let proc = ProcGroup(child);
    wait_listening(&format!("127.0.0.1:{port}"), Duration::from_secs(20));
    proc
}

/// A cgroup named like a systemd service (`sockspan-test.slice/model-api.service`) in the
/// hierarchy systemd names its units in: cgroup v2's, else v1's `name=systemd`.
fn systemd_style_cgroup() -> Option<PathBuf> {
    cgroup_dir(Path::new("sockspan-test.slice/model-api.service"))
}

/// Makes cgroup `path` in the first hierarchy that takes processes: cgroup v2's, else v1's
/// `name=systemd` (on these machines `/sys/fs/cgroup` itself is a tmpfs holding both).
fn cgroup_dir(path: &Path) -> Option<PathBuf> {
    [
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(Path::new)
    .filter(|root| root.join("cgroup.procs").exists())
    .find_map(|root| {
        let dir = root.join(path);
        (std::fs::create_dir_all(&dir).is_ok() && dir.join("cgroup.procs").exists()).then_some(dir)
    })
}

/// The pod uid of the pod-style cgroup: the kubelet's systemd-driver naming, `_` for `-`.
const POD_UID: &str = "6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b";
const CONTAINER_ID: &str = "3f1e7c0a9b2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7";

/// A cgroup named as the kubelet (systemd driver) and containerd name a container's in a
/// `BestEffort` pod, in cgroup v2's hierarchy, else v1's `name=systemd` one.
fn pod_style_cgroup() -> Option<PathBuf> {
    let path = Path::new("kubepods.slice/kubepods-besteffort.slice")
        .join(format!(
            "kubepods-besteffort-pod{}.slice",
            POD_UID.replace('-', "_")
        ))
        .join(format!("cri-containerd-{CONTAINER_ID}.scope"));
    cgroup_dir(&path)
}

/// The name of the container the Podman case runs in.
const CONTAINER_NAME: &str = "sockspan-naming-box";

/// Starts `script` (serving on `port`) in a real Podman container named [`CONTAINER_NAME`]:
/// the host's root as its (overlaid, throw-away) file system, the host's network, `runc` (this
/// kernel's hybrid cgroups), limits within the ones this machine grants. `None` without Podman.
fn start_in_container(script: &Path, port: u16) -> Option<ProcGroup> {
    if Command::new("podman").arg("--version").output().is_err() {
        eprintln!("podman is not installed (cargo xtask setup installs it): not measured");
        return None;
    }
    remove_container();
    let port_arg = port.to_string();
    let args = [
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--name",
        CONTAINER_NAME,
        "--network",
        "host",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
        "--rootfs",
        "/:O",
        "python3",
        script.to_str().expect("utf-8 path"),
        &port_arg,
    ];
    Some(serve("podman", &args, Path::new("/"), port))
}

fn remove_container() {
    let _ = Command::new("podman")
        .args(["rm", "-f", "-t", "0", CONTAINER_NAME])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Calls its function when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Removes the Podman container, the unit and pod cgroups and the projects' folder.
fn clean_up(unit: Option<&Path>, pod: Option<&Path>, root: &Path) {
    remove_container();
    if let Some(unit) = unit {
        let _ = std::fs::remove_dir(unit);
        let _ = std::fs::remove_dir(unit.parent().expect("slice"));
    }
    // A killed process leaves its cgroup a moment after it is reaped: a few tries, bounded.
    for dir in pod.iter().flat_map(|p| p.ancestors().take(4)) {
        for _ in 0..40 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_dir_all(root);
}

/// The projects the services run from, under `root`.
fn lay_out_projects(root: &Path) {
    let _ = std::fs::remove_dir_all(root);
    for (file, text) in [
        ("ranker/ranker.py", SERVER_PY),
        ("scorer/scorer.py", SERVER_PY),
        ("recommender/main.py", SERVER_PY),
        ("shop/embedder/__main__.py", SERVER_PY),
        ("shop/embedder/__init__.py", ""),
        ("pricing/main.py", APP_PY),
        ("billing/billing/wsgi.py", APP_PY),
        ("billing/billing/__init__.py", ""),
        ("edge/server.js", SERVER_JS),
        ("worker/worker.py", SERVER_PY),
    ] {
        write(&root.join(file), text);
    }
}

/// One service: how it is started (program, arguments, folder under the projects' root) and
/// the name it must get.
struct Case {
    program: &'static str,
    args: Vec<String>,
    dir: &'static str,
    name: &'static str,
}

fn cases(port: impl Fn(usize) -> String) -> Vec<Case> {
    let case = |program, args: &[&str], dir, name| Case {
        program,
        args: args.iter().map(ToString::to_string).collect(),
        dir,
        name,
    };
    let gunicorn_bind = format!("127.0.0.1:{}", port(5));
    vec![
        case("python3", &["ranker/ranker.py", &port(0)], "", "ranker"),
        case("python3", &["scorer/scorer.py", &port(1)], "", "scorer"),
        case(
            "python3",
            &["main.py", &port(2)],
            "recommender",
            "recommender",
        ),
        case("python3", &["-m", "embedder", &port(3)], "shop", "embedder"),
        // Two workers that uvicorn spawns (`python -c "from multiprocessing.spawn …"`) serve.
        case(
            "python3",
            &[
                "-m",
                "uvicorn",
                "main:app",
                "--workers",
                "2",
                "--log-level",
                "warning",
                "--port",
                &port(4),
            ],
            "pricing",
            "pricing",
        ),
        case(
            "python3",
            &[
                "-m",
                "gunicorn",
                "-b",
                &gunicorn_bind,
                "billing.wsgi:application",
            ],
            "billing",
            "billing",
        ),
        case("node", &["server.js", &port(6)], "edge", "edge"),
        case("python3", &["worker/worker.py", &port(7)], "", "model-api"),
        // A StatefulSet's pod: `HOSTNAME` is the pod's name.
        case("python3", &["worker/worker.py", &port(8)], "", "vector-db"),
    ]
}

/// Starts `case` (in the unit's cgroup `unit`, joined before it runs: the agent reads a
/// process once, when it first sees it use a connection).
fn start(root: &Path, case: &Case, port: u16, unit: Option<&Path>, env: &str) -> ProcGroup {
    let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let dir = root.join(case.dir);
    match unit {
        Some(unit) => {
            let script = format!(
                "echo $$ > {}/cgroup.procs && {env} exec {} \"$@\"",
                unit.display(),
                case.program
            );
            let mut sh_args = vec!["-c", script.as_str(), "sh"];
            sh_args.extend(&args);
            serve("sh", &sh_args, &dir, port)
        }
        None => serve(case.program, &args, &dir, port),
    }
}

/// The service names of the SERVER spans on `port`.
fn names_on(events: &[serde_json::Value], port: u16) -> std::collections::BTreeSet<String> {
    events
        .iter()
        .filter(|s| {
            s["kind"] == "SERVER"
                && s["attributes"]["server.port"].as_i64() == Some(i64::from(port))
        })
        .map(|s| {
            s["resource"]["service.name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn services_are_told_apart_without_otel_service_name() {
    let root = std::env::temp_dir().join(format!("sockspan-naming-{}", std::process::id()));
    lay_out_projects(&root);
    let ports: Vec<u16> = (0..10).map(|_| free_port()).collect();
    let cgroup = systemd_style_cgroup();
    let pod = pod_style_cgroup();
    // Runs last, also when the test fails half-way: the container, the cgroups, the projects.
    let cleanup = OnDrop({
        let (cgroup, pod, root) = (cgroup.clone(), pod.clone(), root.clone());
        move || clean_up(cgroup.as_deref(), pod.as_deref(), &root)
    });
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    let mut procs = Vec::new();
    let mut expected = Vec::new();
    for (case, &port) in cases(|i| ports[i].to_string()).iter().zip(&ports) {
        let (unit, env) = match (case.name, &cgroup, &pod) {
            ("model-api", None, _) => {
                eprintln!("no cgroup hierarchy to make a systemd-style unit in: not measured");
                continue;
            }
            ("vector-db", _, None) => {
                eprintln!("no cgroup v2 hierarchy to make a pod-style cgroup in: not measured");
                continue;
            }
            ("model-api", Some(unit), _) => (Some(unit.as_path()), ""),
            ("vector-db", _, Some(pod)) => (Some(pod.as_path()), "HOSTNAME=vector-db-0"),
            _ => (None, ""),
        };
        procs.push(start(&root, case, port, unit, env));
        expected.push((port, case.name));
    }
    // A container's name, when nothing before it (unit, pod, environment) names the process.
    if let Some(proc) = start_in_container(&root.join("worker/worker.py"), ports[9]) {
        procs.push(proc);
        expected.push((ports[9], CONTAINER_NAME));
    }
    for (port, _) in &expected {
        // Two requests: each of uvicorn's workers may take one.
        for _ in 0..2 {
            let _ = run_ok(
                Command::new("curl").args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    &format!("http://127.0.0.1:{port}/"),
                ]),
                Duration::from_secs(10),
            );
        }
    }
    let out = agent.stop();
    drop(procs);
    drop(cleanup);
    assert!(out.status.success(), "{}", out.stderr);
    for &(port, name) in &expected {
        assert_eq!(
            names_on(&out.events, port),
            std::iter::once(name.to_string()).collect(),
            "the service on port {port}"
        );
    }
    if expected.iter().any(|(_, name)| *name == CONTAINER_NAME) {
        let span = out
            .events
            .iter()
            .find(|s| s["resource"]["container.name"] == CONTAINER_NAME)
            .expect("a span of the container's service");
        assert_eq!(
            span["resource"]["container.id"].as_str().map(str::len),
            Some(64),
            "{span}"
        );
    }
    // The pod's process also carries what its cgroup says of the pod and its container.
    if pod.is_some() {
        let port = ports[8];
        let span = out
            .events
            .iter()
            .find(|s| {
                s["kind"] == "SERVER"
                    && s["attributes"]["server.port"].as_i64() == Some(i64::from(port))
            })
            .expect("a span of the pod's service");
        assert_eq!(span["resource"]["k8s.pod.uid"], POD_UID, "{span}");
        assert_eq!(span["resource"]["k8s.pod.name"], "vector-db-0", "{span}");
        assert_eq!(span["resource"]["container.id"], CONTAINER_ID, "{span}");
    }
}
