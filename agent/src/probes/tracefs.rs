//! Finds (or mounts) tracefs and checks the syscall tracepoint record layout the programs assume.

use std::path::{Path, PathBuf};

use agent_common::{SYS_ENTER_ARG0, SYS_EXIT_RET};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it failed ({0}); run `mount -t tracefs tracefs /sys/kernel/tracing` as root"
    )]
    NotMounted(std::io::Error),
    #[error(
        "tracepoint syscalls/{0} does not exist: the kernel needs CONFIG_FTRACE_SYSCALLS=y (syscall tracepoints)"
    )]
    MissingTracepoint(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "syscalls/{tracepoint} has field `{field}` at offset {actual}, sockspan's programs read it at {expected}"
    )]
    Layout {
        tracepoint: String,
        field: String,
        expected: usize,
        actual: usize,
    },
}

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs root, mounting it at `/sys/kernel/tracing` when no mount is found.
pub fn root() -> Result<PathBuf, TracefsError> {
    if let Some(found) = find() {
        return Ok(found);
    }
    mount().map_err(TracefsError::NotMounted)?;
    find()
        .ok_or_else(|| TracefsError::NotMounted(std::io::Error::other("mounted, but still empty")))
}

/// The tracefs root if one is mounted.
pub fn find() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

fn mount() -> std::io::Result<()> {
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call; a null
    // data pointer is allowed for tracefs.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Checks that `syscalls/<tracepoint>` exists and that its first argument (enter) or its return
/// value (exit) sits where the programs read it.
pub fn check_layout(root: &Path, tracepoint: &str) -> Result<(), TracefsError> {
    let path = root.join("events/syscalls").join(tracepoint).join("format");
    if !path.exists() {
        return Err(TracefsError::MissingTracepoint(tracepoint.to_string()));
    }
    let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let (field_index, expected) = if tracepoint.starts_with("sys_exit_") {
        (0, SYS_EXIT_RET)
    } else {
        (0, SYS_ENTER_ARG0)
    };
    let fields = parse_fields(&text);
    // Skip the common_* header and __syscall_nr: the first field after them is the one we need.
    let (name, actual) = fields
        .into_iter()
        .filter(|(name, _)| !name.starts_with("common_") && name != "__syscall_nr")
        .nth(field_index)
        .ok_or_else(|| TracefsError::MissingTracepoint(tracepoint.to_string()))?;
    if actual != expected {
        return Err(TracefsError::Layout {
            tracepoint: tracepoint.to_string(),
            field: name,
            expected,
            actual,
        });
    }
    Ok(())
}

/// (name, offset) of each `field:` line of a tracepoint format file.
fn parse_fields(text: &str) -> Vec<(String, usize)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let decl = line.strip_prefix("field:")?.split(';').next()?;
            let name = decl.rsplit([' ', '*']).next()?.trim().to_string();
            let offset = line
                .split(';')
                .find_map(|part| part.trim().strip_prefix("offset:"))?
                .parse()
                .ok()?;
            Some((name, offset))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECVMSG: &str = "name: sys_enter_recvmsg\nID: 2210\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:struct user_msghdr * msg;\toffset:24;\tsize:8;\tsigned:0;\n";

    #[test]
    fn parses_format_fields() {
        let fields = parse_fields(RECVMSG);
        assert_eq!(fields[2], ("__syscall_nr".to_string(), 8));
        assert_eq!(fields[3], ("fd".to_string(), 16));
        assert_eq!(fields[4], ("msg".to_string(), 24));
    }
}
