//! Real datastore servers for the datastore tests, each on a free loopback port with its data
//! in a throw-away directory, stopped (and the directory removed) on drop: Debian's
//! redis-server, PostgreSQL (a cluster made with `initdb`), MariaDB (`mariadb-install-db`) and
//! memcached. Each requires a password where the server has one, so the tests see real
//! authentication exchanges, and the password is a planted secret no output may show.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{Proc, free_port, run_ok, wait_listening};

/// The password of every datastore user; it must reach no output.
pub const PASSWORD: &str = "SECRET-DB-PASSWORD-6d1f";
/// The database (PostgreSQL, MariaDB) the front service uses.
pub const DATABASE: &str = "shop";
/// The PostgreSQL and MariaDB user.
pub const USER: &str = "sockspan";

/// A server process and its data directory.
pub struct Server {
    pub port: u16,
    proc: Option<Proc>,
    dir: PathBuf,
}

impl Server {
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.proc.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fresh_dir(name: &str, port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sockspan-{name}-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("data directory");
    dir
}

fn spawn(cmd: &mut Command, what: &str) -> Proc {
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}")),
    )
}

fn ready(server: Server) -> Server {
    wait_listening(
        &format!("127.0.0.1:{}", server.port),
        Duration::from_mins(1),
    );
    server
}

/// redis-server without persistence, `requirepass` set.
#[must_use]
pub fn redis() -> Server {
    let port = free_port();
    let dir = fresh_dir("redis", port);
    let proc = spawn(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--requirepass", PASSWORD])
            .arg("--dir")
            .arg(&dir),
        "redis-server",
    );
    ready(Server {
        port,
        proc: Some(proc),
        dir,
    })
}

/// memcached (it has no passwords in its text protocol).
#[must_use]
pub fn memcached() -> Server {
    let port = free_port();
    let dir = fresh_dir("memcached", port);
    let proc = spawn(
        Command::new("memcached")
            .args(["-p", &port.to_string(), "-l", "127.0.0.1", "-U", "0"])
            .args(["-u", "nobody", "-m", "64"]),
        "memcached",
    );
    ready(Server {
        port,
        proc: Some(proc),
        dir,
    })
}

/// The loopback address of the test DNS server (port 53: resolv.conf has no port).
pub const DNS_ADDRESS: &str = "127.0.53.77";
/// Names under this domain resolve to 10.1.2.3 at the test DNS server.
pub const DNS_DOMAIN: &str = "model.internal";

/// dnsmasq answering for [`DNS_DOMAIN`] on [`DNS_ADDRESS`], port 53, nothing forwarded; its
/// directory holds a `resolv.conf` naming it, for a mount namespace of the test's own.
#[must_use]
pub fn dns() -> Server {
    let port = 53;
    let dir = fresh_dir("dns", port);
    std::fs::write(
        dir.join("resolv.conf"),
        format!("nameserver {DNS_ADDRESS}\noptions attempts:1 timeout:2\n"),
    )
    .expect("resolv.conf");
    let proc = spawn(
        Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--pid-file=",
            ])
            .arg(format!("--listen-address={DNS_ADDRESS}"))
            .args(["--bind-interfaces", "--port=53"])
            .arg(format!("--address=/{DNS_DOMAIN}/10.1.2.3")),
        "dnsmasq",
    );
    wait_listening(&format!("{DNS_ADDRESS}:53"), Duration::from_secs(20));
    Server {
        port,
        proc: Some(proc),
        dir,
    }
}

impl Server {
    /// The `resolv.conf` of [`dns`].
    #[must_use]
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
}

/// `initdb` and `postgres` of the newest PostgreSQL installed.
fn postgres_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (/usr/lib/postgresql): run `cargo xtask setup`")
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .unwrap_or_else(|| panic!("no PostgreSQL {name} under /usr/lib/postgresql"))
}

/// Runs `cmd` as the `postgres` user (PostgreSQL refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(program);
    cmd
}

/// A PostgreSQL cluster whose superuser [`USER`] logs in over TCP with [`PASSWORD`]
/// (SCRAM-SHA-256), with the database [`DATABASE`].
#[must_use]
pub fn postgres() -> Server {
    postgres_with(false)
}

/// As [`postgres`], accepting TLS (`ssl=on`, a self-signed certificate made here): clients
/// that ask for it (`sslmode=require`) get it.
#[must_use]
pub fn postgres_tls() -> Server {
    postgres_with(true)
}

fn postgres_with(tls: bool) -> Server {
    let port = free_port();
    let dir = fresh_dir("postgres", port);
    let data = dir.join("data");
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, PASSWORD).expect("password file");
    let certificate = tls.then(|| {
        let (cert, key) = crate::self_signed_certificate(&dir.join("tls"));
        // The server refuses a key others may read.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("key mode");
        (cert, key)
    });
    let _ = run_ok(
        Command::new("chown").arg("-R").arg("postgres:").arg(&dir),
        Duration::from_secs(10),
    );
    let _ = run_ok(
        as_postgres(&postgres_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display())),
        Duration::from_mins(2),
    );
    let proc = spawn(
        as_postgres(&postgres_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(&dir)
            .args(["-c", "fsync=off"])
            .args(certificate.iter().flat_map(|(cert, key)| {
                [
                    "-c".to_string(),
                    "ssl=on".to_string(),
                    "-c".to_string(),
                    format!("ssl_cert_file={}", cert.display()),
                    "-c".to_string(),
                    format!("ssl_key_file={}", key.display()),
                ]
            })),
        "postgres",
    );
    let server = ready(Server {
        port,
        proc: Some(proc),
        dir,
    });
    let _ = run_ok(
        Command::new("python3")
            .args([
                "-c",
                "import psycopg, sys; c = psycopg.connect(sys.argv[1], autocommit=True); \
                 c.execute('CREATE DATABASE shop')",
            ])
            .arg(format!(
                "host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname=postgres"
            )),
        Duration::from_secs(30),
    );
    server
}

/// A MariaDB server with the user [`USER`] (password [`PASSWORD`]) owning [`DATABASE`].
#[must_use]
pub fn mariadb() -> Server {
    mariadb_with(false)
}

/// As [`mariadb`], offering TLS (a self-signed certificate made here): clients that ask for it
/// get it.
#[must_use]
pub fn mariadb_tls() -> Server {
    mariadb_with(true)
}

fn mariadb_with(tls: bool) -> Server {
    let port = free_port();
    let dir = fresh_dir("mariadb", port);
    let certificate = tls.then(|| crate::self_signed_certificate(&dir.join("tls")));
    let data = dir.join("data");
    let _ = run_ok(
        Command::new("mariadb-install-db")
            .arg(format!("--datadir={}", data.display()))
            .args(["--user=root", "--auth-root-authentication-method=socket"])
            .args(["--skip-test-db", "--skip-name-resolve"]),
        Duration::from_mins(2),
    );
    let init = dir.join("init.sql");
    std::fs::write(
        &init,
        format!(
            "CREATE DATABASE {DATABASE};\n\
             CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';\n\
             GRANT ALL ON {DATABASE}.* TO '{USER}'@'127.0.0.1';\n"
        ),
    )
    .expect("init file");
    let proc = spawn(
        Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--init-file={}", init.display()))
            .args([
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
            ])
            .args(["--skip-log-bin", "--innodb-buffer-pool-size=32M"])
            .args(certificate.iter().flat_map(|(cert, key)| {
                [
                    format!("--ssl-cert={}", cert.display()),
                    format!("--ssl-key={}", key.display()),
                ]
            }))
            .arg(format!("--port={port}")),
        "mariadbd",
    );
    ready(Server {
        port,
        proc: Some(proc),
        dir,
    })
}
