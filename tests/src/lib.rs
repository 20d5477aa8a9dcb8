//! Helpers for the root integration tests: start the real agent, real servers and clients, and
//! read back what the agent printed.
//!
//! The agent binary comes from `SOCKSPAN_BIN` (set by `cargo xtask test`), else
//! `debug/sockspan` in cargo's target folder. Every wait is bounded in time.
// Test helpers fail by panicking, with a message saying what was expected; that is their job.
#![allow(clippy::missing_panics_doc)]

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Read as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod chains;
pub mod datastores;

/// Cargo's target folder: `CARGO_TARGET_DIR` when set (relative to the workspace, as cargo
/// reads it), else `target/` in the workspace.
#[must_use]
pub fn target_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| workspace.join("target"), |dir| workspace.join(dir))
}

/// Path of the sockspan binary under test.
#[must_use]
pub fn sockspan_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SOCKSPAN_BIN") {
        return PathBuf::from(path);
    }
    let bin = sockspan_unwrapped_bin();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask test`",
        bin.display()
    );
    bin
}

/// The agent binary itself, not the capability-dropping wrapper `cargo xtask test` puts in
/// `SOCKSPAN_BIN`: for tests that start it under a capability set of their own.
#[must_use]
pub fn sockspan_unwrapped_bin() -> PathBuf {
    target_dir().join("debug/sockspan")
}

/// Path of a file under `tests/fixtures`.
#[must_use]
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A TCP port free on loopback right now.
#[must_use]
pub fn free_port() -> u16 {
    // The kernel may hand the same ephemeral port to two binds in a row once the first
    // listener is closed (a CI run gave a chain's frontend and features one port), so each
    // port is handed out once per test process; repeats are held open until a new one comes.
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut repeats = Vec::new();
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        if handed_out.insert(port) {
            return port;
        }
        repeats.push(listener);
    }
    panic!("no new ephemeral port in 1000 binds");
}

/// Starts `python3 tests/fixtures/SCRIPT ARGS` with extra environment variables and waits (at
/// most 20 s) for the line `ready` it prints once listening.
#[must_use]
pub fn python_fixture(script: &str, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    Talking::start_with_env(script, args, envs)
        .ready(&format!("{script} {args:?}"), Duration::from_secs(20))
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child started in a process group of its own (`CommandExt::process_group(0)`), the whole
/// group killed when dropped: servers that start workers (uvicorn's `--workers`) would leave
/// them running past the test otherwise, traced by every later agent.
pub struct ProcGroup(pub Child);

impl Drop for ProcGroup {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory is
            // involved. The group is the child's own (it leads it).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, …), if the process and field exist.
#[must_use]
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Waits until something accepts connections on `addr`, at most `timeout`.
pub fn wait_listening(addr: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {addr} after {timeout:?}");
}

/// `python3 -m http.server` bound to `bind` (an IPv4 or IPv6 address) on `port`, serving a
/// directory of its own whose `/` is a small fixed page (a listing of a shared directory would
/// change size as other tests write there).
#[must_use]
pub fn http_server(bind: &str, port: u16) -> Proc {
    let root = std::env::temp_dir().join(format!("sockspan-http-{port}"));
    std::fs::create_dir_all(&root).expect("server root");
    std::fs::write(
        root.join("index.html"),
        "<!doctype html><title>sockspan test</title><p>hello</p>\n",
    )
    .expect("index.html");
    let child = Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", bind])
        .current_dir(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3 http.server");
    let addr = if bind.contains(':') {
        format!("[{bind}]:{port}")
    } else {
        format!("{bind}:{port}")
    };
    wait_listening(&addr, Duration::from_secs(10));
    Proc(child)
}

/// nginx on 127.0.0.1 (one worker, room for 30 000 connections, heads up to 2 MiB, slow clients
/// held 5 minutes, keep-alive without a request limit), answering one fixed body to everything;
/// stopped on drop.
pub struct Nginx {
    proc: Proc,
    dir: PathBuf,
    pub port: u16,
}

impl Nginx {
    /// nginx answering `ok`.
    #[must_use]
    pub fn start() -> Self {
        Self::serving("ok\n")
    }

    /// nginx answering `body` (text/plain) to every request.
    #[must_use]
    pub fn serving(body: &str) -> Self {
        let body = body
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        Self::with_config(
            "",
            &format!("location / {{ default_type text/plain; return 200 \"{body}\"; }}"),
        )
    }

    /// nginx as a reverse proxy in front of 127.0.0.1:`upstream`, over a pool of keep-alive
    /// upstream connections (HTTP/1.1, `Connection` header cleared).
    #[must_use]
    pub fn proxy(upstream: u16) -> Self {
        Self::with_config(
            &format!("upstream backend {{ server 127.0.0.1:{upstream}; keepalive 32; }}"),
            "location / { proxy_pass http://backend; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; }",
        )
    }

    /// nginx terminating TLS (`cert`, `key`: PEM files) in front of 127.0.0.1:`upstream`, as
    /// [`Nginx::proxy`] does in cleartext; keep-alive on both sides.
    #[must_use]
    pub fn tls_proxy(upstream: u16, cert: &Path, key: &Path) -> Self {
        Self::with_listen(
            &format!("upstream backend {{ server 127.0.0.1:{upstream}; keepalive 32; }}"),
            " ssl",
            &format!(
                "ssl_certificate {}; ssl_certificate_key {}; \
                 location / {{ proxy_pass http://backend; proxy_http_version 1.1; \
                 proxy_set_header Connection \"\"; }}",
                cert.display(),
                key.display()
            ),
        )
    }

    /// nginx with `http_extra` in its `http` block and `location` in its one server.
    fn with_config(http_extra: &str, location: &str) -> Self {
        Self::with_listen(http_extra, "", location)
    }

    /// As [`Nginx::with_config`], `listen_extra` after the listening address (` ssl`).
    fn with_listen(http_extra: &str, listen_extra: &str, location: &str) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("sockspan-nginx-{port}"));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             worker_rlimit_nofile 40000;\nevents {{ worker_connections 30000; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             client_header_timeout 300s;\n  large_client_header_buffers 4 2m;\n  \
             keepalive_requests 1000000;\n  {http_extra}\n  server {{ listen 127.0.0.1:{port}{listen_extra}; \
             {location} }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (apt package nginx-light)");
        let nginx = Self {
            proc: Proc(child),
            dir,
            port,
        };
        wait_listening(&format!("127.0.0.1:{port}"), Duration::from_secs(10));
        nginx
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its worker, which SIGKILL would orphan
        // (still holding the port and its connections).
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.proc.pid() as i32, libc::SIGTERM) };
        let _ = self.proc.0.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `sockspan events`, stopped with SIGINT by [`Agent::stop`].
pub struct Agent {
    child: Option<Child>,
    stderr_lines: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
    /// Reads stdout while the agent runs, so a large output never blocks it on a full pipe.
    stdout_reader: Option<std::thread::JoinHandle<String>>,
    /// `--ready-file` and `--stats-file`, and the folder made for them (removed on drop).
    files: ReportFiles,
}

/// A new folder under the temporary directory, removed with everything in it on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Makes `<tmp>/<prefix>-<pid>-<n>`, `n` counting the folders this process made.
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
        Self(dir)
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where an agent started by the harness says it is ready and leaves its final counters.
struct ReportFiles {
    ready: PathBuf,
    stats: PathBuf,
    /// The folder the harness made for the files `cmd` did not name.
    _made: ScratchDir,
}

impl ReportFiles {
    /// The files `cmd` names already, else two in a new folder, added to `cmd`.
    fn for_command(cmd: &mut Command) -> Self {
        let named = |flag: &str| {
            let args: Vec<_> = cmd.get_args().collect();
            args.windows(2)
                .find(|w| w[0] == flag)
                .map(|w| PathBuf::from(w[1]))
        };
        let (ready, stats) = (named("--ready-file"), named("--stats-file"));
        // The budget off unless the test sets one: a debug build under CI load spends many
        // times the product's CPU, and would shed what a test counts on (the budget's own
        // tests set `--max-cpu`).
        let budget_off = cmd.get_args().any(|a| a == "run") && named("--max-cpu").is_none();
        if budget_off {
            cmd.args(["--max-cpu", "off", "--max-memory", "off"]);
        }
        // A folder of the harness's own for the files `cmd` does not name.
        let made = ScratchDir::new("sockspan-agent");
        let mut ours = |flag: &str, name: &str| {
            let path = made.path().join(name);
            cmd.arg(flag).arg(&path);
            path
        };
        let ready = ready.unwrap_or_else(|| ours("--ready-file", "ready.json"));
        let stats = stats.unwrap_or_else(|| ours("--stats-file", "stats.json"));
        Self {
            ready,
            stats,
            _made: made,
        }
    }
}

/// What the agent printed.
pub struct Output {
    pub events: Vec<Value>,
    pub stderr: String,
    pub status: std::process::ExitStatus,
    /// Every stage's final counters, from `--stats-file` (`Null` if the agent wrote none).
    pub counters: Value,
}

impl Output {
    /// Events of one type.
    pub fn of_type<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["type"] == kind)
    }

    /// A final counter of the agent (`--stats-file`); panics, saying what the file held, when
    /// it is missing.
    #[must_use]
    pub fn counter(&self, key: &str) -> u64 {
        self.counters[key].as_u64().unwrap_or_else(|| {
            panic!(
                "no counter {key} in the agent's --stats-file: {}\nstderr:\n{}",
                self.counters, self.stderr
            )
        })
    }

    /// The final stats record.
    #[must_use]
    pub fn stats(&self) -> &Value {
        self.of_type("stats")
            .last()
            .expect("a stats record at the end")
    }
}

impl Agent {
    /// Starts `sockspan events ARGS` and waits until its programs are attached.
    #[must_use]
    pub fn start(args: &[&str]) -> Self {
        Self::start_command("events", args)
    }

    /// Starts `sockspan SUBCOMMAND ARGS` and waits until its programs are attached.
    #[must_use]
    pub fn start_command(subcommand: &str, args: &[&str]) -> Self {
        Self::start_with_env(subcommand, args, &[])
    }

    /// As [`Agent::start_command`], with extra environment variables.
    #[must_use]
    pub fn start_with_env(subcommand: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(sockspan_bin());
        cmd.arg(subcommand).args(args).envs(envs.iter().copied());
        Self::spawn(cmd)
    }

    /// As [`Agent::start_command`], inside network namespace `netns` (nsenter execs sockspan in
    /// place, so signals reach it).
    #[must_use]
    pub fn start_in_netns(netns: &str, subcommand: &str, args: &[&str]) -> Self {
        // nsenter switches only the network namespace; `ip netns exec` would also remount /sys
        // for the agent, which it has no need of.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{netns}"))
            .arg("--")
            .arg(sockspan_bin())
            .arg(subcommand)
            .args(args);
        Self::spawn(cmd)
    }

    /// Starts `cmd` (a `sockspan run` or `sockspan events` command line) and waits until it
    /// traces: its `--ready-file` (added when `cmd` names none) is written once its programs are
    /// attached, and for `run` its runtime probes too.
    #[must_use]
    pub fn spawn(mut cmd: Command) -> Self {
        let files = ReportFiles::for_command(&mut cmd);
        let mut child = cmd
            // SOCKSPAN_TEST_LOG raises the agents' log level when a test is looked into.
            .env(
                "RUST_LOG",
                std::env::var("SOCKSPAN_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sockspan");
        let mut stdout = child.stdout.take().expect("stdout");
        let stdout_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut agent = Self {
            child: Some(child),
            stderr_lines: rx,
            stderr_seen: Vec::new(),
            stdout_reader: Some(stdout_reader),
            files,
        };
        agent.wait_until_ready(Duration::from_secs(30));
        agent
    }

    /// Polls for the `--ready-file` (bounded); fails with the agent's stderr if it exits or
    /// does not get ready in time.
    fn wait_until_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.files.ready.exists() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
                    self.stderr_seen.push(line);
                }
                panic!(
                    "sockspan did not get ready within {timeout:?} (exit: {exited:?}); stderr:\n{}",
                    self.stderr_seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a stderr line containing `needle` (any printed so far counts).
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        self.wait_for_stderr_from(needle, 0, timeout);
    }

    /// The stderr lines printed so far (those not read yet are taken now, without waiting).
    pub fn stderr_now(&mut self) -> &[String] {
        while let Ok(line) = self.stderr_lines.try_recv() {
            self.stderr_seen.push(line);
        }
        &self.stderr_seen
    }

    /// Waits for a stderr line containing `needle` among those from the `from`th on (0: the
    /// first).
    pub fn wait_for_stderr_from(&mut self, needle: &str, from: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        if self
            .stderr_seen
            .iter()
            .skip(from)
            .any(|l| l.contains(needle))
        {
            return;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = self.stderr_seen.len() >= from && line.contains(needle);
                    self.stderr_seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "sockspan did not print {needle:?} within {timeout:?}; stderr so far:\n{}",
                        self.stderr_seen.join("\n")
                    )
                }
            }
        }
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGINT, waits for exit (bounded), and parses stdout.
    #[must_use]
    pub fn stop(self) -> Output {
        self.stop_with(libc::SIGINT)
    }

    /// Sends `signal`, waits for exit (bounded), and parses stdout.
    #[must_use]
    pub fn stop_with(mut self, signal: i32) -> Output {
        let mut child = self.child.take().expect("running");
        // Give the last syscalls' events a moment to cross the ring before stopping.
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sockspan did not exit within 20 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = self
            .stdout_reader
            .take()
            .expect("stdout reader")
            .join()
            .expect("stdout reader thread");
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
            self.stderr_seen.push(line);
        }
        let events = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect();
        let counters = std::fs::read_to_string(&self.files.stats)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null);
        Output {
            events,
            stderr: self.stderr_seen.join("\n"),
            status,
            counters,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The payload of a data event as bytes (each JSON character U+0000..U+00FF is one byte).
#[must_use]
pub fn payload(event: &Value) -> Vec<u8> {
    event["payload"]
        .as_str()
        .expect("payload string")
        .chars()
        .map(|c| u8::try_from(u32::from(c)).expect("latin-1 payload"))
        .collect()
}

/// Runs a command to completion with a time bound; panics with its output on failure. Output
/// is collected while the command runs, so a large one never blocks it on a full pipe.
#[must_use]
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = if let Ok(result) = rx.recv_timeout(timeout) {
        result.expect("wait for output")
    } else {
        // SAFETY: kill(2) on the pid of our own child, still unreaped.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        panic!("{cmd:?} did not finish within {timeout:?}");
    };
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fixture whose stdout lines are all kept (`python_fixture` reads only the first).
pub struct Talking {
    pub proc: Proc,
    lines: mpsc::Receiver<String>,
}

impl Talking {
    #[must_use]
    pub fn start(script: &str, args: &[&str]) -> Self {
        Self::start_with_env(script, args, &[])
    }

    #[must_use]
    pub fn start_with_env(script: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new("python3");
        cmd.arg(fixture(script))
            .args(args)
            .envs(envs.iter().copied());
        Self::spawn(cmd, script)
    }

    /// Starts `cmd` (any program), its stdout read line by line.
    #[must_use]
    pub fn spawn(mut cmd: Command, what: &str) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            proc: Proc(child),
            lines,
        }
    }

    /// The process, once its first line is `ready` (within `timeout`).
    #[must_use]
    pub fn ready(self, what: &str, timeout: Duration) -> Proc {
        match self.lines.recv_timeout(timeout) {
            Ok(line) if line.trim() == "ready" => self.proc,
            other => panic!("{what} did not print `ready`: {other:?}"),
        }
    }

    /// The next line starting with `prefix`, waiting at most `timeout`.
    #[must_use]
    pub fn line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line starting {prefix:?} within {timeout:?}: {e}"),
            }
        }
    }

    /// Writes `line` and a newline to the process's stdin.
    pub fn say(&mut self, line: &str) {
        use std::io::Write as _;
        let stdin = self.proc.0.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .expect("write to the fixture's stdin");
    }

    /// Closes the process's stdin (fixtures that hold something release it then).
    pub fn close_stdin(&mut self) {
        drop(self.proc.0.stdin.take());
    }

    /// Waits (bounded) until the process has exited.
    pub fn wait_for_exit(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.proc.0.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "the fixture did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the line starting with `prefix` the process prints on the way out.
    #[must_use]
    pub fn stop(self, prefix: &str) -> String {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.proc.pid() as i32, libc::SIGTERM) };
        self.line(prefix, Duration::from_secs(10))
    }
}

/// The value of an unlabelled series in Prometheus text (`name value` lines).
#[must_use]
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls the `/metrics` of the agent whose UI is at `ui` until what it captured is in its store:
/// spans exported, none held (open or waiting for linking evidence), none queued for the
/// store's writer, and the exported count the same on two scrapes in a row.
pub fn wait_until_stored(ui: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let scrape = || {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5"])
            .arg(format!("http://{ui}/metrics"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut last_exported = None;
    loop {
        let text = scrape();
        let exported = metric_value(&text, "sockspan_spans_exported_total");
        let settled = exported.is_some_and(|n| n > 0.0)
            && metric_value(&text, "sockspan_spans_held") == Some(0.0)
            && metric_value(&text, "sockspan_store_queue_spans") == Some(0.0);
        if settled && exported == last_exported {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent at {ui} never settled within {timeout:?}:\n{text}"
        );
        last_exported = if settled { exported } else { None };
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Against an echo server on 127.0.0.1:`port`: sends `opening` (if any) and reads its echo, then
/// `messages` round trips of the 64 bytes 0..63, bytes no protocol sockspan parses starts with.
pub fn binary_ping_pong(port: u16, opening: &[u8], messages: usize) {
    binary_ping_pong_pausing(port, opening, messages, 0);
}

/// As [`binary_ping_pong`], pausing half a second after `pause_after` messages (0: never): time
/// for the agent to read what came so far and act on it (drains every 10 ms; slower on a busy
/// machine) before the rest.
pub fn binary_ping_pong_pausing(port: u16, opening: &[u8], messages: usize, pause_after: usize) {
    let script = "import socket, sys, time\n\
        s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
        opening = bytes.fromhex(sys.argv[3])\n\
        if opening:\n\
        \x20   s.sendall(opening)\n\
        \x20   got = 0\n\
        \x20   while got < len(opening):\n\
        \x20       got += len(s.recv(len(opening) - got))\n\
        for i in range(int(sys.argv[2])):\n\
        \x20   if i and i == int(sys.argv[4]):\n\
        \x20       time.sleep(0.5)\n\
        \x20   s.sendall(bytes(range(64)))\n\
        \x20   got = 0\n\
        \x20   while got < 64:\n\
        \x20       got += len(s.recv(64 - got))\n";
    let hex = opening.iter().fold(String::new(), |mut hex, b| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
        hex
    });
    let _ = run_ok(
        Command::new("python3").args([
            "-c",
            script,
            &port.to_string(),
            &messages.to_string(),
            &hex,
            &pause_after.to_string(),
        ]),
        Duration::from_mins(1),
    );
}

/// What the agent's non-JSON outputs held after the same traffic went through each:
/// `otlp` the spans and the metrics as an official OpenTelemetry receiver decoded them, `api`
/// the query API's answers to `api_paths` (what the UI reads) and `/metrics`, `dump` every span
/// read back from the store, `store_file` the store's raw bytes: its redb file and every file of
/// its frame log folder (compressed: a secret could hide there in other words, so `dump` too).
pub struct EveryOutput {
    pub otlp: String,
    pub api: String,
    pub dump: String,
    pub store_file: Vec<u8>,
}

/// Runs `traffic` twice more: once with `sockspan run --output otlp` into
/// `otlp_receiver.py` over HTTP, once with the default output (store + UI), and returns what
/// each output held (see [`EveryOutput`]).
#[must_use]
pub fn every_output(traffic: impl Fn(), api_paths: &[&str]) -> EveryOutput {
    let port = free_port();
    let received = std::env::temp_dir().join(format!("sockspan-every-output-otlp-{port}.jsonl"));
    let received_arg = received.display().to_string();
    let metrics = received.with_extension("metrics.jsonl");
    let otlp_receiver = python_fixture(
        "otlp_receiver.py",
        &["http", &port.to_string(), &received_arg],
        &[("METRICS_OUT", &metrics.display().to_string())],
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let agent = Agent::start_command("run", &["--output", "otlp", "--otlp-endpoint", &endpoint]);
    traffic();
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    drop(otlp_receiver);
    let otlp = std::fs::read_to_string(&received).unwrap_or_default()
        + &std::fs::read_to_string(&metrics).unwrap_or_default();
    let _ = std::fs::remove_file(&received);
    let _ = std::fs::remove_file(&metrics);

    let dir = std::env::temp_dir().join(format!("sockspan-every-output-store-{}", free_port()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = dir.join("traces.redb").display().to_string();
    let ui = format!("127.0.0.1:{}", free_port());
    let agent = Agent::start_command("run", &["--store", &store, "--ui", &ui]);
    traffic();
    wait_until_stored(&ui, Duration::from_secs(20));
    let mut api = String::new();
    for path in api_paths.iter().chain(&["/metrics"]) {
        let body = run_ok(
            Command::new("curl")
                .args(["-sf", "--max-time", "10"])
                .arg(format!("http://{ui}{path}")),
            Duration::from_secs(20),
        );
        api.push_str(&String::from_utf8_lossy(&body.stdout));
    }
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let mut store_file = std::fs::read(&store).expect("store file");
    let log = std::fs::read_dir(format!("{store}.frames")).expect("the store's frame log");
    let mut log_files = 0;
    for entry in log {
        let path = entry.expect("frame log entry").path();
        store_file.extend(std::fs::read(&path).expect("frame log file"));
        log_files += 1;
    }
    assert!(log_files >= 2, "the frame log holds its id and a segment");
    let dump = run_ok(
        Command::new(sockspan_bin()).args(["dump", "--store", &store]),
        Duration::from_secs(20),
    );
    let _ = std::fs::remove_dir_all(&dir);
    EveryOutput {
        otlp,
        api,
        dump: String::from_utf8_lossy(&dump.stdout).into_owned(),
        store_file,
    }
}

/// A self-signed certificate and its key for `localhost`/127.0.0.1, made with `openssl` in
/// `dir`: (certificate, key) PEM paths.
#[must_use]
pub fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("certificate dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let _ = run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        Duration::from_mins(1),
    );
    (cert, key)
}
