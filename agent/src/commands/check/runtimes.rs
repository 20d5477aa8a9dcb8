//! `sockspan check`'s rows for the runtime probes: whether each runtime's causality source
//! works here, and what the processes of that runtime running now offer it.

use std::fmt::Write as _;

use super::{Need, Row};

pub(super) fn go_row(uprobe_test: Result<(), String>) -> Row {
    let (ok, detail) = match uprobe_test {
        Ok(()) => (
            true,
            "a uprobe attached (at this agent's own main); probes verified on go1.19".to_string(),
        ),
        Err(e) => (false, e),
    };
    Row {
        feature: "Go goroutine causality".into(),
        ok,
        detail,
        need: Need::Optional,
        role: "without: Go programs' client calls get no parent (no wrong one either)",
        fix: "grant CAP_SYS_ADMIN (deploy/README.md)",
    }
}

/// Whether Python asyncio services get task causality here: uprobes (the same attach test as
/// Go's), and what the CPython processes running now are (a release whose layout was checked,
/// asyncio loaded or not).
pub(super) fn asyncio_row(uprobe_test: Result<(), String>) -> Row {
    let mut seen: Vec<String> = Vec::new();
    for pid in crate::runtime::processes_running() {
        if !matches!(
            crate::runtime::Runtime::of_process(pid),
            crate::runtime::Runtime::Python
        ) {
            continue;
        }
        let what = match crate::runtime::python::inspect(pid) {
            Ok(Some(i)) if i.asyncio.is_some() => {
                format!("{pid}: CPython {} with asyncio", i.version)
            }
            Ok(Some(i)) => format!("{pid}: CPython {} (no asyncio loaded)", i.version),
            Ok(None) => continue,
            Err(e) => format!("{pid}: {e}"),
        };
        if seen.len() < 5 {
            seen.push(what);
        }
    }
    let (ok, mut detail) = match uprobe_test {
        Ok(()) => (
            true,
            "a uprobe attached; CPython layouts checked: 3.11, 3.12, 3.13".to_string(),
        ),
        Err(e) => (false, e),
    };
    if !seen.is_empty() {
        let _ = write!(detail, "; running now: {}", seen.join(", "));
    }
    Row {
        feature: "Python asyncio task causality".into(),
        ok,
        detail,
        need: Need::Optional,
        role: "without: calls made by asyncio services (uvicorn, aiohttp) get no parent (no wrong one either)",
        fix: "grant CAP_SYS_ADMIN (deploy/README.md); `--no-runtime-probes asyncio` turns it off",
    }
}

/// Whether Node.js services get callback causality here: uprobes (the same attach test as
/// Go's), and, for the Node.js processes running now, whether their executable (or the libuv
/// they map) names the probed function.
pub(super) fn node_row(uprobe_test: Result<(), String>) -> Row {
    let mut seen: Vec<String> = Vec::new();
    let mut any_missing = false;
    for pid in crate::runtime::processes_running() {
        if crate::runtime::Runtime::of_process(pid) != crate::runtime::Runtime::Node {
            continue;
        }
        let what = match crate::runtime::node::find_stream_io(pid) {
            Ok(at) => format!(
                "{pid}: {} has `{}`",
                at.shown,
                crate::runtime::node::STREAM_IO
            ),
            Err(e) => {
                any_missing = true;
                format!("{pid}: {e}")
            }
        };
        if seen.len() < 5 {
            seen.push(what);
        }
    }
    let (ok, mut detail) = match uprobe_test {
        Ok(()) => (
            !any_missing,
            "a uprobe attached; libuv's uv__stream_io probed (checked on Node.js 20)".to_string(),
        ),
        Err(e) => (false, e),
    };
    if !seen.is_empty() {
        let _ = write!(detail, "; running now: {}", seen.join(", "));
    }
    Row {
        feature: "Node.js callback causality".into(),
        ok,
        detail,
        need: Need::Optional,
        role: "without: Node.js services' client calls get no parent (no wrong one either)",
        fix: "grant CAP_SYS_ADMIN (deploy/README.md); run a Node.js build that keeps its symbols (nodejs.org, NodeSource: Debian's strips libuv); `--no-runtime-probes node` turns it off",
    }
}
