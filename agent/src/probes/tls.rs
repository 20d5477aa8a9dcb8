//! The OpenSSL probes (`ssl_enter`, `ssl_return`, `ssl_free` in agent-ebpf): attached to each
//! `libssl` file the agent meets, by device and inode, so every process that maps the file is
//! covered, in containers too (the file is reached through `/proc/<pid>/root`). The system's
//! own libssl is attached at start, so a process that starts later and speaks TLS at once (curl)
//! is covered from its first byte; a process's other libssl copies are attached when it opens a
//! connection. An executable with OpenSSL (or BoringSSL) linked in, whose symbols name
//! `SSL_read` and `SSL_write`, gets the same probes on the executable itself, looked at once per
//! file; a stripped one cannot be (nothing names the functions) and is not.
//!
//! Uprobes are per file, not per process: every process using an attached libssl pays one trap
//! per probed call (BENCHMARKS.md section 5 has the cost), whether or not its connections are
//! otherwise traced. `--no-runtime-probes tls` leaves them off.

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use agent_common::SslFunction;
use aya::{Ebpf, programs::uprobe::UProbeAttachLocation};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

use super::UprobeRefused;

pub const ENTER: &str = "ssl_enter";
pub const RETURN: &str = "ssl_return";
pub const FREE: &str = "ssl_free";

/// Where Debian, Ubuntu, Fedora and Alpine put the system's libssl.
const SYSTEM_LIBSSL: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib/x86_64-linux-gnu/libssl.so.1.1",
    "/lib/x86_64-linux-gnu/libssl.so.3",
    "/lib/x86_64-linux-gnu/libssl.so.1.1",
    "/usr/lib64/libssl.so.3",
    "/usr/lib64/libssl.so.1.1",
    "/lib/libssl.so.3",
    "/usr/lib/libssl.so.3",
];

#[derive(Debug, thiserror::Error)]
pub enum TlsProbeError {
    #[error("the TLS probe programs did not load: {0}")]
    Unavailable(String),
    #[error("cannot read /proc/{pid}/maps: {reason}")]
    Maps { pid: u32, reason: String },
    #[error(
        "uprobes are refused without CAP_SYS_ADMIN on this kernel (perf_event_open: {0}); grant it (deploy/README.md)"
    )]
    Privilege(String),
    #[error("attaching at `{function}` of {library} failed: {reason}")]
    Attach {
        function: &'static str,
        library: String,
        reason: String,
    },
}

/// One libssl file and what attaching to it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library {
    /// As the process that led to it names it.
    pub path: String,
    /// Probes attached, or why not.
    pub result: Result<usize, String>,
}

/// Loads the programs once; attaches per libssl file.
pub struct TlsProbes {
    unavailable: Option<String>,
    /// (device, inode) of the libssl files met, and of the executables with OpenSSL linked in.
    files: HashMap<(u64, u64), Library>,
    /// (device, inode) of the executables already looked at for OpenSSL linked in.
    executables_seen: HashSet<(u64, u64)>,
}

impl TlsProbes {
    /// Loads the three programs from `ebpf`. A failure is kept, not returned: the agent then
    /// traces without TLS plaintext and says why.
    pub fn load(ebpf: &mut Ebpf) -> Self {
        Self {
            unavailable: super::load_uprobes(
                ebpf,
                &[ENTER, RETURN, FREE],
                "uprobe attach cookies need Linux 5.15 or newer",
            ),
            files: HashMap::new(),
            executables_seen: HashSet::new(),
        }
    }

    /// The libssl files met so far.
    pub fn libraries(&self) -> impl Iterator<Item = &Library> {
        self.files.values()
    }

    /// Attaches to the system's libssl (those of [`SYSTEM_LIBSSL`] that exist). Returns the
    /// libraries newly met.
    pub fn attach_system(&mut self, ebpf: &mut Ebpf) -> Result<Vec<Library>, TlsProbeError> {
        let mut met = Vec::new();
        for path in SYSTEM_LIBSSL {
            if let Some(library) = self.attach_file(ebpf, Path::new(path), path, None)? {
                met.push(library);
            }
        }
        Ok(met)
    }

    /// Attaches to every libssl `pid` maps. Returns the libraries newly met.
    pub fn attach_process(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
    ) -> Result<Vec<Library>, TlsProbeError> {
        let mut met = Vec::new();
        for mapped in libssl_mapped_by(pid)? {
            let through_root = PathBuf::from(format!("/proc/{pid}/root"))
                .join(mapped.strip_prefix("/").unwrap_or(&mapped));
            if let Some(library) =
                self.attach_file(ebpf, &through_root, &mapped.display().to_string(), None)?
            {
                met.push(library);
            }
        }
        if let Some(library) = self.attach_executable(ebpf, pid)? {
            met.push(library);
        }
        Ok(met)
    }

    /// Attaches to `pid`'s executable when OpenSSL is linked into it (each executable file
    /// looked at once).
    fn attach_executable(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
    ) -> Result<Option<Library>, TlsProbeError> {
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            return Ok(None);
        };
        let through_root =
            PathBuf::from(format!("/proc/{pid}/root")).join(exe.strip_prefix("/").unwrap_or(&exe));
        let Ok(meta) = std::fs::metadata(&through_root) else {
            return Ok(None);
        };
        if !self.executables_seen.insert((meta.dev(), meta.ino())) {
            return Ok(None);
        }
        let offsets = probed_offsets(&through_root);
        if !links_openssl(&offsets) {
            return Ok(None);
        }
        let name = format!("{} (OpenSSL linked in)", exe.display());
        self.attach_file(ebpf, &through_root, &name, Some(offsets))
    }

    /// Attaches to `file` unless its (device, inode) was met before; `None` then. `offsets`:
    /// its [`probed_offsets`], when already found.
    fn attach_file(
        &mut self,
        ebpf: &mut Ebpf,
        file: &Path,
        name: &str,
        offsets: Option<HashMap<&'static str, u64>>,
    ) -> Result<Option<Library>, TlsProbeError> {
        if let Some(why) = &self.unavailable {
            return Err(TlsProbeError::Unavailable(why.clone()));
        }
        let Ok(meta) = std::fs::metadata(file) else {
            return Ok(None);
        };
        let key = (meta.dev(), meta.ino());
        if self.files.contains_key(&key) {
            return Ok(None);
        }
        let offsets = offsets.unwrap_or_else(|| probed_offsets(file));
        let result = attach_library(ebpf, file, name, &offsets);
        if let Err(TlsProbeError::Privilege(_)) = &result {
            // Not this file's fault: the next one would fail the same way.
            return result.map(|_| None);
        }
        let library = Library {
            path: name.to_string(),
            result: result.map_err(|e| e.to_string()),
        };
        self.files.insert(key, library.clone());
        Ok(Some(library))
    }
}

/// Whether a mapped file's name is OpenSSL's libssl: `libssl.so…`, or a copy a Python wheel
/// bundles under a hashed name (`libssl-6a9b88ec.so.3`, as auditwheel renames it: psycopg's
/// binary wheel). NSS's `libssl3.so` is another API and is not.
fn is_libssl_name(name: &str) -> bool {
    name.starts_with("libssl.so")
        || name
            .strip_prefix("libssl-")
            .is_some_and(|rest| rest.contains(".so"))
}

/// Whether the ELF file `file` has OpenSSL (or BoringSSL) linked in: its symbols define
/// `SSL_read` and `SSL_write` as functions (an executable that only imports them from libssl
/// names them undefined, at address 0). `offsets`: [`probed_offsets`] of the file.
fn links_openssl(offsets: &HashMap<&'static str, u64>) -> bool {
    offsets.contains_key(SslFunction::Read.symbol())
        && offsets.contains_key(SslFunction::Write.symbol())
}

/// Files larger than this are not read for their symbols (no OpenSSL found in them).
const LARGEST_ELF: u64 = 512 << 20;

/// Paths (as the process sees them) of the libssl files `pid` maps.
fn libssl_mapped_by(pid: u32) -> Result<Vec<PathBuf>, TlsProbeError> {
    let maps =
        std::fs::File::open(format!("/proc/{pid}/maps")).map_err(|e| TlsProbeError::Maps {
            pid,
            reason: e.to_string(),
        })?;
    let mut found: Vec<PathBuf> = Vec::new();
    for line in BufReader::new(maps).lines().map_while(Result::ok) {
        // address perms offset dev inode path
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let path = Path::new(path);
        let is_libssl = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_libssl_name);
        if is_libssl && !found.iter().any(|p| p == path) {
            found.push(path.to_path_buf());
        }
    }
    Ok(found)
}

/// `SSL_free`: where an `SSL *`'s socket is forgotten.
const FREE_SYMBOL: &str = "SSL_free";

/// File offsets of the probed functions `file` defines, from one pass over its symbol tables
/// (dynamic first, as aya looks them up). Attaching by symbol name makes aya parse the file once
/// per probe: about a second for Node.js's 95 MB executable, during which a new `node`
/// process's first connections go unseen. Empty when the file cannot be read as ELF; a function
/// missing here is looked up by name.
fn probed_offsets(file: &Path) -> HashMap<&'static str, u64> {
    let mut found = HashMap::new();
    // Only the symbol tables are read, in a few large reads: not through a cache of small reads
    // (the symbol tables of a 95 MB executable took 0.4 s so, debug build), not mapped (a file
    // truncated meanwhile would kill the agent with SIGBUS), not whole (Node.js's 99 MB
    // executable was a 99 MB peak in the agent's memory). The copy lives for the lookup only.
    let size = std::fs::metadata(file).map_or(u64::MAX, |m| m.len());
    if size > LARGEST_ELF {
        return found;
    }
    let Ok(symbols) = crate::runtime::elf::SymbolsOnly::read(file) else {
        return found;
    };
    let Ok(elf) = object::File::parse(&symbols) else {
        return found;
    };
    offsets_in(&elf, &mut found);
    found
}

/// The file offsets of the probed functions that `elf` defines, into `found`.
fn offsets_in<'a, R: object::ReadRef<'a>>(
    elf: &object::File<'a, R>,
    found: &mut HashMap<&'static str, u64>,
) {
    let wanted = SslFunction::ALL
        .map(SslFunction::symbol)
        .into_iter()
        .chain([FREE_SYMBOL]);
    let wanted: Vec<&'static str> = wanted.collect();
    for symbol in elf.dynamic_symbols().chain(elf.symbols()) {
        if symbol.kind() != SymbolKind::Text || symbol.address() == 0 {
            continue;
        }
        let Some(name) = symbol
            .name()
            .ok()
            .and_then(|n| wanted.iter().find(|w| **w == n))
        else {
            continue;
        };
        if found.contains_key(name) {
            continue;
        }
        // As aya translates a symbol: its address within its section, from the section's
        // place in the file.
        let offset = symbol
            .section_index()
            .and_then(|index| elf.section_by_index(index).ok())
            .and_then(|section| {
                let (start, _) = section.file_range()?;
                symbol
                    .address()
                    .checked_sub(section.address())
                    .map(|within| within + start)
            });
        if let Some(offset) = offset {
            found.insert(*name, offset);
        }
        if found.len() == wanted.len() {
            break;
        }
    }
}

/// Attaches the entry and return probes at the five functions, and `SSL_free`'s. A library
/// without the `_ex` forms (OpenSSL before 1.1.1, BoringSSL) or `SSL_do_handshake` (an
/// executable that links only part of OpenSSL) gets the others.
fn attach_library(
    ebpf: &mut Ebpf,
    file: &Path,
    name: &str,
    offsets: &HashMap<&'static str, u64>,
) -> Result<usize, TlsProbeError> {
    let mut attached = 0;
    for function in SslFunction::ALL {
        let optional = matches!(
            function,
            SslFunction::WriteEx | SslFunction::ReadEx | SslFunction::Handshake
        );
        for program_name in [ENTER, RETURN] {
            match attach_at(
                ebpf,
                program_name,
                (file, name),
                function.symbol(),
                offsets.get(function.symbol()).copied(),
                function as u64,
            ) {
                Ok(()) => attached += 1,
                Err(TlsProbeError::Attach { .. }) if optional => break,
                Err(e) => return Err(e),
            }
        }
    }
    attach_at(
        ebpf,
        FREE,
        (file, name),
        FREE_SYMBOL,
        offsets.get(FREE_SYMBOL).copied(),
        0,
    )?;
    Ok(attached + 1)
}

/// Attaches `program_name` at `function` of `file` (named `library` in errors): at its file
/// `offset` when known, else by name.
fn attach_at(
    ebpf: &mut Ebpf,
    program_name: &'static str,
    (file, library): (&Path, &str),
    function: &'static str,
    offset: Option<u64>,
    cookie: u64,
) -> Result<(), TlsProbeError> {
    let at = offset.map_or(
        UProbeAttachLocation::Symbol(function),
        UProbeAttachLocation::AbsoluteOffset,
    );
    super::attach_uprobe(ebpf, program_name, at, Some(cookie), file).map_err(
        |refused| match refused {
            UprobeRefused::Unavailable(why) => TlsProbeError::Unavailable(why),
            UprobeRefused::Privilege(reason) => TlsProbeError::Privilege(reason),
            UprobeRefused::Other(reason) => TlsProbeError::Attach {
                function,
                library: library.to_string(),
                reason,
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_is_linked_in_where_its_functions_are_defined_not_imported() {
        // Debian's libssl defines them; curl (a test dependency) imports them from it; this
        // test's own executable has none.
        let links = |file: &str| links_openssl(&probed_offsets(Path::new(file)));
        assert!(links("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(!links("/usr/bin/curl"));
        let own = std::env::current_exe().expect("own executable");
        assert!(!links_openssl(&probed_offsets(&own)));
        assert!(!links("/nonexistent/executable"));
    }

    /// Every probed function of Debian's libssl is found in one pass, inside the file; an
    /// executable without OpenSSL has none (it imports nothing of it, or imports only).
    #[test]
    fn probed_functions_are_found_at_file_offsets_in_one_pass() {
        let libssl = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let size = std::fs::metadata(libssl).expect("libssl").len();
        let offsets = probed_offsets(libssl);
        for symbol in SslFunction::ALL
            .map(SslFunction::symbol)
            .into_iter()
            .chain([FREE_SYMBOL])
        {
            let offset = offsets.get(symbol).copied().expect(symbol);
            assert!(offset > 0 && offset < size, "{symbol} at {offset:#x}");
        }
        assert!(probed_offsets(Path::new("/usr/bin/curl")).is_empty());

        assert!(probed_offsets(Path::new("/nonexistent/executable")).is_empty());
    }

    /// Reading only the symbol tables finds what reading the whole file finds, in a fraction of
    /// the memory: Debian's libssl (defines OpenSSL), this test's own debug executable (large,
    /// no OpenSSL), and Node.js, whichever build is installed (one vendor's build links OpenSSL
    /// in, Debian's uses the system's).
    #[test]
    fn symbol_tables_alone_give_the_offsets_the_whole_file_gives() {
        let own = std::env::current_exe().expect("own executable");
        let libssl = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        for path in [libssl, own.as_path(), Path::new("/usr/bin/node")] {
            let Ok(whole) = std::fs::read(path) else {
                assert!(!path.starts_with("/usr/lib"), "{}: missing", path.display());
                continue;
            };
            let mut expected = HashMap::new();
            offsets_in(
                &object::File::parse(whole.as_slice()).expect("ELF"),
                &mut expected,
            );
            assert_eq!(probed_offsets(path), expected, "{}", path.display());
            let read = crate::runtime::elf::SymbolsOnly::read(path).expect("symbols");
            assert!(
                read.resident_bytes() < whole.len() as u64 / 2,
                "{}: {} of {} bytes read",
                path.display(),
                read.resident_bytes(),
                whole.len()
            );
        }
        assert!(links_openssl(&probed_offsets(libssl)));
    }

    #[test]
    fn libssl_is_found_under_its_own_name_and_a_wheels_hashed_one() {
        assert!(is_libssl_name("libssl.so.3"));
        assert!(is_libssl_name("libssl.so.1.1"));
        assert!(is_libssl_name("libssl-6a9b88ec.so.3"));
        assert!(!is_libssl_name("libssl3.so"), "NSS");
        assert!(!is_libssl_name("libssl-dev.txt"));
        assert!(!is_libssl_name("libcrypto.so.3"));
    }
}
