//! `cargo xtask setup`: installs the eBPF toolchain from packages, idempotently.
//!
//! Debian's `rustc-web` (a stable rustc with a prebuilt `core` for `bpfel-unknown-none` in
//! `libstd-rust-web-dev-bpf`) compiles the programs; bpf-linker, built against the same LLVM major
//! as that rustc, links them. See docs/toolchain.md for why this recipe.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::util::{command_ok, output_of, run};

/// The rustup name under which Debian's toolchain is linked; agent/build.rs uses it.
pub const BPF_TOOLCHAIN: &str = "sockspan-bpf";
const BPF_LINKER_VERSION: &str = "0.13.0";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CLIPPY: &str = "/usr/bin/clippy-driver";
const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

/// Debian packages the integration tests use: servers and clients that run for real.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("python3", "python3"),
    ("setpriv", "util-linux"),
    ("bpftool", "bpftool"),
    // The demo's network namespace and shaped link.
    ("tc", "iproute2"),
    // The web UI's test drives a real headless Chromium.
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
    // Hostile traffic needs a server that holds thousands of connections; the causality chains
    // put it in front as a reverse proxy.
    ("nginx", "nginx-light"),
    // The budget's tests drive their services with wrk.
    ("wrk", "wrk"),
    // Runtimes of the causality chains (tests/fixtures/chains) and the HTTP/2 tests.
    ("node", "nodejs"),
    ("go", "golang-go"),
    // Datastores and a DNS resolver the datastore tests start on loopback.
    ("redis-server", "redis-server"),
    ("memcached", "memcached"),
    ("mariadbd", "mariadb-server"),
    ("/usr/lib/postgresql/15/bin/initdb", "postgresql"),
    // A real Prometheus server scrapes /metrics in the metrics test.
    ("prometheus", "prometheus"),
    ("dnsmasq", "dnsmasq-base"),
    // A DNAT rule in the multi-host test bed (a Service's virtual address, as kube-proxy makes).
    ("iptables", "iptables"),
    // An HTTPS client with OpenSSL linked into its executable, built by the TLS test.
    ("gcc", "gcc"),
    ("/usr/lib/x86_64-linux-gnu/libssl.a", "libssl-dev"),
    // Certificates for the TLS servers the tests start (the API server client's unit test).
    ("openssl", "openssl"),
    // A real container runtime for the naming test (a container's name); runc, as crun refuses
    // the hybrid cgroup hierarchy these machines have.
    ("podman", "podman"),
    ("runc", "runc"),
];

fn say(what: &str) {
    eprintln!("xtask setup: {what}");
}

fn apt_install(packages: &[&str]) -> Result<()> {
    say(&format!("apt-get install {}", packages.join(" ")));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// LLVM major version of Debian's rustc, from `rustc -vV`.
fn rustc_llvm_major() -> Result<u32> {
    let text = output_of(Command::new(DEBIAN_RUSTC).arg("-vV"))?;
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc -vV` printed no LLVM version")?;
    version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot parse LLVM version {version:?}"))
}

/// Whether an installed bpf-linker links `libLLVM.so.<major>` that is present.
fn bpf_linker_matches(llvm_major: u32) -> bool {
    let Ok(path) = output_of(Command::new("sh").args(["-c", "command -v bpf-linker"])) else {
        return false;
    };
    let Ok(libs) = output_of(Command::new("ldd").arg(path.trim())) else {
        return false;
    };
    libs.lines()
        .any(|l| l.contains(&format!("libLLVM.so.{llvm_major}")) && !l.contains("not found"))
}

/// True when everything the build needs is in place (cheap: no network).
pub fn is_ready() -> bool {
    let Ok(major) = rustc_llvm_major() else {
        return false;
    };
    std::path::Path::new(BPF_CORE_DIR).is_dir()
        && std::path::Path::new(DEBIAN_CLIPPY).exists()
        && bpf_linker_matches(major)
        && output_of(Command::new("rustup").args(["toolchain", "list"]))
            .is_ok_and(|t| t.lines().any(|l| l.starts_with(BPF_TOOLCHAIN)))
}

pub fn setup() -> Result<()> {
    if !std::path::Path::new(DEBIAN_RUSTC).exists() || !std::path::Path::new(BPF_CORE_DIR).is_dir()
    {
        apt_install(&["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf"])?;
    } else {
        say("Debian rustc-web and the BPF core library are installed");
    }
    // Clippy matched to that rustc, for the eBPF crate's lint gate (`cargo xtask lint`).
    if std::path::Path::new(DEBIAN_CLIPPY).exists() {
        say("Debian's clippy for rustc-web is installed");
    } else {
        apt_install(&["rust-web-clippy"])?;
    }
    let major = rustc_llvm_major()?;
    say(&format!("Debian rustc uses LLVM {major}"));
    let llvm_prefix = format!("/usr/lib/llvm-{major}");
    // rustc-web's own runtime libLLVM already lives in <prefix>/lib; only the -dev package
    // adds the unversioned libLLVM.so that bpf-linker links against.
    if std::path::Path::new(&llvm_prefix)
        .join("lib/libLLVM.so")
        .exists()
    {
        say(&format!("llvm-{major}-dev is installed"));
    } else {
        apt_install(&[&format!("llvm-{major}-dev")])?;
    }
    if bpf_linker_matches(major) {
        say(&format!("bpf-linker is installed and links LLVM {major}"));
    } else {
        say(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about a minute)"
        ));
        run(Command::new("cargo")
            .args(["install", "--locked", "--force"])
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &llvm_prefix))?;
        if !bpf_linker_matches(major) {
            bail!(
                "bpf-linker was installed but does not link libLLVM.so.{major}; is ~/.cargo/bin on PATH?"
            );
        }
    }
    let listed = output_of(Command::new("rustup").args(["toolchain", "list"]))?;
    if listed.lines().any(|l| l.starts_with(BPF_TOOLCHAIN)) {
        say(&format!(
            "rustup toolchain `{BPF_TOOLCHAIN}` points at Debian's rustc"
        ));
    } else {
        say(&format!("rustup toolchain link {BPF_TOOLCHAIN} /usr"));
        run(Command::new("rustup").args(["toolchain", "link", BPF_TOOLCHAIN, "/usr"]))?;
    }
    say("eBPF toolchain ready: `cargo build` now builds the programs and the agent");
    Ok(())
}

/// Python packages the integration tests use: an instrumented client (OpenTelemetry SDK) and an
/// OTLP receiver built on the official protobuf bindings, over gRPC and HTTP.
const TEST_PYTHON_PACKAGES: &[&str] = &[
    "opentelemetry-sdk",
    "opentelemetry-proto",
    "grpcio",
    "selenium",
    // asyncio services of the causality chains.
    "aiohttp",
    "uvicorn[standard]",
    "fastapi",
    "httpx",
    // Datastore clients of the datastore tests' front service.
    "redis",
    "psycopg[binary]",
    "pymysql",
    "pymemcache",
    // App servers whose applications the service-naming tests name.
    "gunicorn",
    // The reference parser of the Prometheus text format, for the metrics tests.
    "prometheus_client",
];
const TEST_PYTHON_IMPORTS: &str = "import opentelemetry.sdk.trace, opentelemetry.proto.collector.trace.v1.trace_service_pb2, grpc, selenium, aiohttp, uvicorn, uvloop, httptools, fastapi, httpx, redis, psycopg, pymysql, pymemcache, gunicorn, prometheus_client";

/// `pip install PACKAGES`, quietly, as root.
pub fn pip_install(packages: &[&str]) -> Result<()> {
    say(&format!("pip install {}", packages.join(" ")));
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
        ])
        .args(packages))
}

/// Installs what the integration tests run (servers, clients) when missing.
pub fn test_dependencies() -> Result<()> {
    if command_ok(Command::new("python3").args(["-c", TEST_PYTHON_IMPORTS])) {
        say("test Python packages are installed");
    } else {
        pip_install(TEST_PYTHON_PACKAGES)?;
    }
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .filter(|(binary, _)| {
            // A path names a file the package installs (not always a program).
            if binary.starts_with('/') {
                !std::path::Path::new(binary).exists()
            } else {
                !command_ok(Command::new("sh").args(["-c", &format!("command -v {binary}")]))
            }
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        say("test dependencies are installed");
        Ok(())
    } else {
        apt_install(&missing)
    }
}
