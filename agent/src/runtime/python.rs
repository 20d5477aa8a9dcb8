//! CPython processes: where a process keeps the interpreter's state (`_PyRuntime`), which
//! release it runs, the struct offsets of that release, and where `_asyncio.Task.__init__` is in
//! the process's `_asyncio` extension module. All of it is what the asyncio probes
//! (`agent-ebpf/src/python.rs`, `probes::python`) need to name the running task.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
};

use agent_common::FollowedProcess;
use object::{
    Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _, ReadCache, ReadRef,
};

#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not an ELF file sockspan can read: {reason}")]
    Elf { path: String, reason: String },
    #[error(
        "CPython {0} is not one whose layout was checked (3.11, 3.12 and 3.13 are); its asyncio tasks are not followed"
    )]
    Version(String),
    #[error(
        "`_asyncio.Task.__init__` was not found in {0} (neither its symbol nor the type's slot)"
    )]
    NoTaskInit(String),
}

/// What the probes read in one CPython release: offsets in `_PyRuntimeState`,
/// `PyInterpreterState`, `PyThreadState` and `_asyncio`'s `TaskObj`, and of `tp_init` in
/// `PyTypeObject` (to find `Task.__init__` in a stripped module). Measured on each release with
/// `tests/fixtures/python_layout.py`, which reads a live interpreter's own memory; the test
/// `python_layouts_match_the_interpreters_here` checks the table against every CPython on the
/// machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub runtime_interpreters_head: u32,
    pub interpreter_threads_head: u32,
    pub thread_next: u32,
    pub thread_native_id: u32,
    pub thread_context: u32,
    pub task_context: u32,
    pub type_tp_init: u32,
}

/// The layout of CPython `major.minor`, for the releases that were checked. Before 3.11 a thread
/// state has no `native_thread_id` (only the `pthread_t`), which the programs cannot compare
/// with the kernel's thread id.
#[must_use]
pub fn layout(major: u32, minor: u32) -> Option<Layout> {
    match (major, minor) {
        (3, 11) => Some(Layout {
            runtime_interpreters_head: 40,
            interpreter_threads_head: 16,
            thread_next: 8,
            thread_native_id: 160,
            thread_context: 224,
            task_context: 152,
            type_tp_init: 296,
        }),
        (3, 12) => Some(Layout {
            runtime_interpreters_head: 40,
            interpreter_threads_head: 72,
            thread_next: 8,
            thread_native_id: 144,
            thread_context: 208,
            task_context: 152,
            type_tp_init: 296,
        }),
        // `_PyRuntime` starts with `_Py_DebugOffsets` from 3.13 on, and the interpreter with
        // its `_ceval_state`.
        (3, 13) => Some(Layout {
            runtime_interpreters_head: 632,
            interpreter_threads_head: 7344,
            thread_next: 8,
            thread_native_id: 160,
            thread_context: 208,
            task_context: 136,
            type_tp_init: 296,
        }),
        _ => None,
    }
}

/// A CPython process as the probes need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    /// `3.11.7`, from the file names and, where present, `Py_Version`.
    pub version: String,
    pub layout: Layout,
    /// Address of `_PyRuntime` in the process.
    pub runtime_address: u64,
    /// The `_asyncio` module the process has loaded, if it has: its path as the process sees
    /// it, and the file offset of `Task.__init__` in it.
    pub asyncio: Option<(PathBuf, u64)>,
}

impl Interpreter {
    /// The map value the programs read for this process; `pidns` is the process's pid namespace
    /// (device, inode).
    #[must_use]
    pub fn process_entry(&self, pidns: (u64, u64)) -> FollowedProcess {
        let l = self.layout;
        FollowedProcess {
            interpreters_head: self.runtime_address + u64::from(l.runtime_interpreters_head),
            pidns_dev: pidns.0,
            pidns_ino: pidns.1,
            interpreter_threads: l.interpreter_threads_head,
            thread_next: l.thread_next,
            thread_native_id: l.thread_native_id,
            thread_context: l.thread_context,
            task_context: l.task_context,
            runtime: agent_common::RUNTIME_PYTHON,
        }
    }
}

/// One file mapped by a process: its path (as the process sees it) and the address its first
/// byte is mapped at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapped {
    path: PathBuf,
    base: u64,
}

/// The `(major, minor)` of a `python3.11` executable or `libpython3.11.so.1.0` file name.
fn version_in_name(name: &str) -> Option<(u32, u32)> {
    let rest = name
        .strip_prefix("libpython")
        .or_else(|| name.strip_prefix("python"))?;
    let mut parts = rest.splitn(2, '.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor_digits: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor_digits.parse().ok()?))
}

/// Whether an executable's file name is a CPython interpreter's (`python3.11`, `python3.13t`).
#[must_use]
pub fn is_interpreter_name(name: &str) -> bool {
    name.starts_with("python") && version_in_name(name).is_some()
}

/// Whether `path` is asyncio's C extension module (`_asyncio.cpython-311-x86_64-linux-gnu.so`).
fn is_asyncio_module(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        n.starts_with("_asyncio.")
            && Path::new(n)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("so"))
    })
}

/// Whether process `pid` has loaded asyncio's C extension module, from its maps alone (so
/// whatever its interpreter's release). An interpreter built with the module inside (Debian's)
/// maps none: [`inspect`] tells those.
#[must_use]
pub fn loads_asyncio_module(pid: u32) -> bool {
    mapped_files(pid).is_ok_and(|maps| maps.iter().any(|m| is_asyncio_module(&m.path)))
}

/// Reads `/proc/<pid>/maps`: the files mapped at offset 0 (their load base), in order.
fn mapped_files(pid: u32) -> Result<Vec<Mapped>, PythonError> {
    let path = format!("/proc/{pid}/maps");
    let file = std::fs::File::open(&path).map_err(|e| PythonError::Read {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut found: Vec<Mapped> = Vec::new();
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        // address perms offset dev inode path
        let mut fields = line.split_whitespace();
        let (Some(range), Some(_), Some(offset), Some(_), Some(_), Some(file)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if !file.starts_with('/') || u64::from_str_radix(offset, 16) != Ok(0) {
            continue;
        }
        let Some(base) = range
            .split('-')
            .next()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
        else {
            continue;
        };
        let path = PathBuf::from(file);
        if !found.iter().any(|m| m.path == path) {
            found.push(Mapped { path, base });
        }
    }
    Ok(found)
}

/// `path` of process `pid`, reached through its root (containers).
fn through_root(pid: u32, path: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
}

fn read_file(path: &Path) -> Result<Vec<u8>, PythonError> {
    std::fs::read(path).map_err(|e| PythonError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The lowest virtual address of a loadable segment: what the mapping at file offset 0 holds.
fn first_load_address<'a, R: ReadRef<'a>>(elf: &object::File<'a, R>) -> u64 {
    elf.segments()
        .map(|s| s.address() & !0xfff)
        .min()
        .unwrap_or(0)
}

/// The address of the symbol `name` (dynamic or not) in `elf`.
fn symbol_address<'a, R: ReadRef<'a>>(elf: &object::File<'a, R>, name: &str) -> Option<u64> {
    elf.dynamic_symbols()
        .chain(elf.symbols())
        .find(|s| s.name() == Ok(name) && s.address() != 0)
        .map(|s| s.address())
}

/// The file offset of virtual address `address`, from the loadable segment holding it.
fn file_offset<'a, R: ReadRef<'a>>(elf: &object::File<'a, R>, address: u64) -> Option<u64> {
    elf.segments().find_map(|s| {
        let (offset, size) = s.file_range();
        let start = s.address();
        let end = start.checked_add(size)?;
        (address >= start && address < end).then(|| address - start + offset)
    })
}

/// Inspects process `pid`: `None` when it is not CPython. An interpreter whose release was not
/// checked is an error that says so.
pub fn inspect(pid: u32) -> Result<Option<Interpreter>, PythonError> {
    let maps = mapped_files(pid)?;
    // The interpreter's state is in libpython when the executable links it, else in the
    // executable (Debian's, statically linked).
    let candidates = maps.iter().filter(|m| {
        m.path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(version_in_name)
            .is_some()
    });
    let mut found = None;
    for mapped in candidates {
        let file = through_root(pid, &mapped.path);
        if let Some(runtime) = runtime_in(&file)? {
            let name = mapped
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let (major, minor) = version_in_name(name).unwrap_or_default();
            let version = runtime
                .version
                .unwrap_or_else(|| format!("{major}.{minor}"));
            let runtime_address = (mapped.base + runtime.address).wrapping_sub(runtime.first_load);
            found = Some((major, minor, version, runtime_address));
            break;
        }
    }
    let Some((major, minor, version, runtime_address)) = found else {
        return Ok(None);
    };
    let layout = layout(major, minor).ok_or_else(|| PythonError::Version(version.clone()))?;
    let asyncio = match maps.iter().find(|m| is_asyncio_module(&m.path)) {
        Some(module) => {
            let file = through_root(pid, &module.path);
            let data = read_file(&file)?;
            let offset = task_init_offset(&data, &layout)
                .ok_or_else(|| PythonError::NoTaskInit(module.path.display().to_string()))?;
            Some((module.path.clone(), offset))
        }
        None => None,
    };
    Ok(Some(Interpreter {
        version,
        layout,
        runtime_address,
        asyncio,
    }))
}

/// What an interpreter file (the executable or libpython) holds of `_PyRuntime`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuntimeSymbol {
    /// `_PyRuntime`'s virtual address in the file.
    address: u64,
    /// The file's lowest loadable address ([`first_load_address`]).
    first_load: u64,
    /// From `Py_Version`, when the file has it.
    version: Option<String>,
}

/// `_PyRuntime` in `file`, if it defines it. The file is read lazily (libpython with its debug
/// information is tens of MB; only the symbol tables are read) and each file once, by device,
/// inode, size and change time: every Python process that opens a connection is looked at.
fn runtime_in(file: &Path) -> Result<Option<RuntimeSymbol>, PythonError> {
    use std::{
        collections::HashMap,
        os::unix::fs::MetadataExt as _,
        sync::{Mutex, PoisonError},
    };
    type FileKey = (u64, u64, u64, i64, i64);
    static KNOWN: Mutex<Option<HashMap<FileKey, Option<RuntimeSymbol>>>> = Mutex::new(None);
    const MAX_KNOWN: usize = 256;
    let read_err = |e: std::io::Error| PythonError::Read {
        path: file.display().to_string(),
        reason: e.to_string(),
    };
    let opened = std::fs::File::open(file).map_err(read_err)?;
    let meta = opened.metadata().map_err(read_err)?;
    let key = (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.ctime(),
        meta.ctime_nsec(),
    );
    if let Some(known) = KNOWN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .get(&key)
    {
        return Ok(known.clone());
    }
    let cache = ReadCache::new(&opened);
    let elf = object::File::parse(&cache).map_err(|e| PythonError::Elf {
        path: file.display().to_string(),
        reason: e.to_string(),
    })?;
    let found = symbol_address(&elf, "_PyRuntime").map(|address| RuntimeSymbol {
        address,
        first_load: first_load_address(&elf),
        version: py_version(&elf, &cache),
    });
    let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    let known = known.get_or_insert_with(HashMap::new);
    if known.len() >= MAX_KNOWN {
        known.clear();
    }
    known.insert(key, found.clone());
    Ok(found)
}

/// `Py_Version` (3.11+: `PY_VERSION_HEX`) as `3.11.7`.
fn py_version<'a, R: ReadRef<'a>>(elf: &object::File<'a, R>, data: R) -> Option<String> {
    let address = symbol_address(elf, "Py_Version")?;
    let offset = file_offset(elf, address)?;
    let bytes: [u8; 4] = data.read_bytes_at(offset, 4).ok()?.try_into().ok()?;
    let hex = u32::from_le_bytes(bytes);
    Some(format!(
        "{}.{}.{}",
        hex >> 24,
        (hex >> 16) & 0xff,
        (hex >> 8) & 0xff
    ))
}

/// The file offset of `_asyncio.Task.__init__` in the `_asyncio` module's bytes: from its
/// symbol when the module keeps `.symtab`, else from the `tp_init` slot of the static type
/// object whose `tp_name` is `"_asyncio.Task"` (both are pointers the dynamic loader fills from
/// `R_X86_64_RELATIVE` relocations in a stripped module: `tp_name` at 24, `tp_init` at the
/// release's offset).
#[must_use]
pub fn task_init_offset(data: &[u8], layout: &Layout) -> Option<u64> {
    let elf = object::File::parse(data).ok()?;
    let found = match elf
        .symbols()
        .find(|s| s.name() == Ok("_asyncio_Task___init__") && s.address() != 0)
    {
        Some(symbol) => file_offset(&elf, symbol.address()),
        None => task_init_from_type(&elf, layout),
    };
    // A damaged header may map an address past the file's end: nothing to attach to there.
    found.filter(|&at| at < data.len() as u64)
}

/// `Task.__init__` through the static `_asyncio.Task` type object's `tp_init` slot (CPython up
/// to 3.11, where the type is static; from 3.12 it is a heap type made from a spec, and the
/// module's symbols are needed).
fn task_init_from_type(elf: &object::File<'_>, layout: &Layout) -> Option<u64> {
    // The type's name, NUL-terminated, in a read-only section.
    let name = b"_asyncio.Task\0";
    let name_address = elf
        .sections()
        .filter(|s| s.name().is_ok_and(|n| n.starts_with(".rodata")))
        .find_map(|s| {
            let bytes = s.data().ok()?;
            let at = bytes.windows(name.len()).position(|w| w == name)?;
            Some(s.address() + at as u64)
        })?;
    let relocations: Vec<(u64, u64)> = elf
        .dynamic_relocations()?
        .filter_map(|(at, r)| match r.target() {
            object::RelocationTarget::Absolute => Some((at, r.addend() as u64)),
            _ => None,
        })
        .collect();
    let type_object = relocations
        .iter()
        .find(|&&(_, value)| value == name_address)
        .and_then(|&(at, _)| at.checked_sub(24))?;
    let init_slot = type_object.checked_add(u64::from(layout.type_tp_init))?;
    let init = relocations
        .iter()
        .find(|&&(at, _)| at == init_slot)
        .map(|&(_, value)| value)?;
    file_offset(elf, init)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_interpreter_file_names() {
        assert_eq!(version_in_name("python3.11"), Some((3, 11)));
        assert_eq!(version_in_name("libpython3.12.so.1.0"), Some((3, 12)));
        assert_eq!(version_in_name("libpython3.13t.so.1.0"), Some((3, 13)));
        assert_eq!(version_in_name("python3"), None);
        assert_eq!(version_in_name("pythonista"), None);
        assert_eq!(version_in_name("libc.so.6"), None);
    }

    /// The interpreters of this machine the layouts can be checked against.
    fn interpreters() -> Vec<std::path::PathBuf> {
        let mut found = vec![std::path::PathBuf::from("/usr/bin/python3.11")];
        if let Ok(versions) = std::fs::read_dir("/root/.pyenv/versions") {
            for entry in versions.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // 3.11 on: earlier releases have no layout (no `native_thread_id`).
                let minor = name.split('.').nth(1).unwrap_or_default().to_string();
                if name.starts_with("3.") && minor.parse::<u32>().is_ok_and(|m| m >= 11) {
                    found.push(entry.path().join(format!("bin/python3.{minor}")));
                }
            }
        }
        found.retain(|p| p.exists());
        found
    }

    /// The table against what `tests/fixtures/python_layout.py` reads in each interpreter's own
    /// memory (every CPython on the machine: Debian's, and pyenv's where present).
    #[test]
    fn python_layouts_match_the_interpreters_here() {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/python_layout.py");
        let mut checked = 0;
        for python in interpreters() {
            let out = std::process::Command::new(&python)
                .arg(&script)
                .args(["--interp-scan-max", "8192", "--compact"])
                .output()
                .expect("run the layout probe");
            let text = String::from_utf8_lossy(&out.stdout);
            let found: serde_json::Value = match serde_json::from_str(text.trim()) {
                Ok(v) if out.status.success() => v,
                _ => panic!(
                    "{}: {}",
                    python.display(),
                    String::from_utf8_lossy(&out.stderr)
                ),
            };
            let version = found["version"].as_str().unwrap_or_default().to_string();
            let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            let Some(l) = layout(major, minor) else {
                assert!(
                    found["thread_native_id"].is_null() || minor > 13,
                    "{version} has native_thread_id: it could get a layout"
                );
                continue;
            };
            let field = |k: &str| found[k].as_u64().map(|v| v as u32);
            assert_eq!(
                (
                    field("runtime_interpreters_head"),
                    field("interpreter_threads_head"),
                    field("thread_next"),
                    field("thread_native_id"),
                    field("thread_context"),
                    field("task_context"),
                ),
                (
                    Some(l.runtime_interpreters_head),
                    Some(l.interpreter_threads_head),
                    Some(l.thread_next),
                    Some(l.thread_native_id),
                    Some(l.thread_context),
                    Some(l.task_context),
                ),
                "{version} ({})",
                python.display()
            );
            checked += 1;
        }
        assert!(
            checked > 0,
            "no CPython 3.11+ on this machine to check against"
        );
    }

    /// In a module with symbols, the type object's slot leads to the same function as the
    /// symbol; in Debian's stripped one, it is found at all.
    #[test]
    fn task_init_is_found_through_the_type_object() {
        let mut checked = 0;
        for python in interpreters() {
            let root = python.parent().and_then(Path::parent).expect("prefix");
            let pattern = if python.starts_with("/usr") {
                std::path::PathBuf::from("/usr/lib/python3.11/lib-dynload")
            } else {
                let name = python
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                root.join("lib").join(name).join("lib-dynload")
            };
            let Some(module) = std::fs::read_dir(&pattern).ok().and_then(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .find(|p| p.to_string_lossy().contains("/_asyncio."))
            }) else {
                continue;
            };
            let name = python
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let Some((3, minor)) = version_in_name(name) else {
                continue;
            };
            if minor > 11 {
                continue;
            }
            let data = std::fs::read(&module).expect("read the module");
            let elf = object::File::parse(&*data).expect("ELF");
            let l = layout(3, 11).expect("3.11");
            let by_type = task_init_from_type(&elf, &l);
            assert!(by_type.is_some(), "{}", module.display());
            assert_eq!(task_init_offset(&data, &l), by_type, "{}", module.display());
            checked += 1;
        }
        assert!(checked > 0, "no CPython 3.11 `_asyncio` module here");
    }

    /// `_PyRuntime` and the exact release, read lazily from Debian's static interpreter (and a
    /// file without it gives none).
    #[test]
    fn the_runtime_symbol_and_release_come_from_the_interpreter_file() {
        let debian = Path::new("/usr/bin/python3.11");
        if debian.exists() {
            let found = runtime_in(debian).expect("readable").expect("_PyRuntime");
            assert!(
                found
                    .version
                    .as_deref()
                    .is_some_and(|v| v.starts_with("3.11."))
            );
            assert!(found.address > found.first_load);
            assert_eq!(runtime_in(debian).expect("cached").as_ref(), Some(&found));
        }
        assert_eq!(runtime_in(Path::new("/bin/sh")).expect("readable"), None);
    }

    /// The fuzz seeds, built from `fuzz/seeds/python_module/task_type.c`: the type object's
    /// slot in the stripped copy leads where the symbol does in the other.
    #[test]
    fn the_seed_modules_agree() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/python_module");
        let l = layout(3, 11).expect("3.11");
        let with_symbols = std::fs::read(dir.join("with_symbols.so")).expect("seed");
        let stripped = std::fs::read(dir.join("stripped.so")).expect("seed");
        let by_symbol = task_init_offset(&with_symbols, &l);
        assert!(by_symbol.is_some());
        assert_eq!(task_init_offset(&stripped, &l), by_symbol);
        let elf = object::File::parse(&*with_symbols).expect("ELF");
        assert_eq!(task_init_from_type(&elf, &l), by_symbol);
    }

    #[test]
    fn only_checked_releases_have_a_layout() {
        assert!(layout(3, 11).is_some());
        assert_eq!(layout(3, 10), None, "no native_thread_id before 3.11");
        assert_eq!(layout(3, 14), None, "not checked yet");
    }
}
