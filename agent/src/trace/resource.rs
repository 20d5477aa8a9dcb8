//! Which service a process is: `service.name` and the other resource attributes.

use std::{collections::HashMap, str::FromStr, sync::Arc};

use super::span::{KeyValue, Resource};
use crate::process::ProcessInfo;

/// How `service.name` is chosen for a traced process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceNameRule {
    /// `OTEL_SERVICE_NAME` of the process when readable, else the executable's name.
    #[default]
    Auto,
    /// The executable's file name.
    Exe,
    /// The process's comm.
    Comm,
    /// The script or jar an interpreter runs (`python3 app/model.py` → `model`), else the
    /// executable's name.
    Cmdline,
    /// The container id's first 12 characters, else as `Auto`.
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

fn script_name(process: &ProcessInfo) -> Option<String> {
    let exe = process.exe_name();
    if !INTERPRETERS.iter().any(|i| exe.starts_with(i)) {
        return None;
    }
    let mut args = process.cmdline.iter().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-m" || arg == "-jar" {
            return args.next().map(|m| base_name(m));
        }
        if !arg.starts_with('-') {
            return Some(base_name(arg));
        }
    }
    None
}

fn base_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split('.').next().unwrap_or(file).to_string()
}

/// The service name of `process` under `rule`.
#[must_use]
pub fn service_name(rule: ServiceNameRule, process: &ProcessInfo) -> String {
    let auto = || {
        process
            .otel_service_name
            .clone()
            .unwrap_or_else(|| process.exe_name().to_string())
    };
    let name = match rule {
        ServiceNameRule::Auto => auto(),
        ServiceNameRule::Exe => process.exe_name().to_string(),
        ServiceNameRule::Comm => process.comm.clone(),
        ServiceNameRule::Cmdline => {
            script_name(process).unwrap_or_else(|| process.exe_name().to_string())
        }
        ServiceNameRule::Container => process
            .container_id
            .as_ref()
            .map_or_else(auto, |id| id.chars().take(12).collect()),
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
    cache: HashMap<u32, (Arc<ProcessInfo>, Arc<Resource>)>,
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
            cache: HashMap::new(),
        }
    }

    /// The resource of `process`.
    pub fn get(&mut self, process: &Arc<ProcessInfo>) -> Arc<Resource> {
        if let Some((info, resource)) = self.cache.get(&process.pid)
            && Arc::ptr_eq(info, process)
        {
            return Arc::clone(resource);
        }
        let mut attributes = vec![
            KeyValue::str("service.name", service_name(self.rule, process)),
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
        let resource = Arc::new(Resource::new(attributes));
        if self.cache.len() > 16_384 {
            self.cache.clear();
        }
        self.cache
            .insert(process.pid, (Arc::clone(process), Arc::clone(&resource)));
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

    #[test]
    fn naming_rules() {
        let p = process(
            "/usr/bin/python3.11",
            &["python3", "-u", "/srv/app/model.py", "--port", "1"],
            None,
        );
        assert_eq!(service_name(ServiceNameRule::Auto, &p), "python3.11");
        assert_eq!(service_name(ServiceNameRule::Cmdline, &p), "model");
        assert_eq!(service_name(ServiceNameRule::Comm, &p), "worker");
        let p = process(
            "/usr/bin/python3",
            &["python3", "-m", "gunicorn"],
            Some("checkout"),
        );
        assert_eq!(service_name(ServiceNameRule::Auto, &p), "checkout");
        assert_eq!(service_name(ServiceNameRule::Cmdline, &p), "gunicorn");
        let p = process("/usr/sbin/nginx", &["nginx: worker process"], None);
        assert_eq!(service_name(ServiceNameRule::Cmdline, &p), "nginx");
        assert!(
            "bogus"
                .parse::<ServiceNameRule>()
                .expect_err("bad")
                .contains("accepted: auto")
        );
    }
}
