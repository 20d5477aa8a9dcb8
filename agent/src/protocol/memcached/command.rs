//! What a memcached text-protocol request line asks: its command, the reply it expects, the
//! data block that follows it, and its sanitised query text (`get ? ?`). Keys, flags, times and
//! values are never kept: only counted.

use std::fmt::Write as _;

/// Longest key memcached accepts.
const MAX_KEY: usize = 250;
/// Most `?` written into a query text (a `get` of thousands of keys says how many more).
const MAX_PLACEHOLDERS: usize = 64;

/// The shape of the reply a request expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// One line (`STORED`, `DELETED`, a number, `OK`, `VERSION ..`, meta `HD`/`NF`/...), or for
    /// meta `mg`/`ma` a `VA <size>` line and its data.
    Line,
    /// `VALUE` blocks, then `END`.
    Values,
    /// `STAT` lines, then `END`.
    Stats,
    /// The `MN` that ends a meta pipeline.
    Noop,
    /// Nothing: `noreply`, a quiet (`q`) meta command, `quit`.
    Nothing,
}

/// A parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `db.operation.name`: the command as sent (`get`); `None` for an unknown command.
    pub operation: Option<&'static str>,
    pub query: Option<Box<str>>,
    pub expect: Expect,
    /// Bytes of data (with its CRLF) that follow the line.
    pub data: u64,
    /// Keys a retrieval asks for.
    pub keys: u32,
    /// A quiet meta command (`q` flag): its reply may be suppressed.
    pub quiet: bool,
}

const STORAGE: &[&str] = &["set", "add", "replace", "append", "prepend"];
const COMMANDS: &[&str] = &[
    "set",
    "add",
    "replace",
    "append",
    "prepend",
    "cas",
    "get",
    "gets",
    "gat",
    "gats",
    "delete",
    "incr",
    "decr",
    "touch",
    "stats",
    "version",
    "flush_all",
    "verbosity",
    "quit",
    "mg",
    "ms",
    "md",
    "ma",
    "mn",
    "me",
];

fn digits(token: &[u8]) -> Option<u64> {
    if token.is_empty() || token.len() > 19 || !token.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(token).ok()?.parse().ok()
}

fn key(token: &[u8]) -> bool {
    !token.is_empty() && token.len() <= MAX_KEY && token.iter().all(u8::is_ascii_graphic)
}

/// Parses a request line (without its CRLF); `None` when it is not a well-formed request of a
/// known command (an unknown command is [`Request::unknown`]).
#[must_use]
pub fn parse(line: &[u8]) -> Option<Request> {
    let tokens: Vec<&[u8]> = line
        .split(|b| *b == b' ')
        .filter(|t| !t.is_empty())
        .take(MAX_PLACEHOLDERS * 4)
        .collect();
    let (&name, args) = tokens.split_first()?;
    let operation = *COMMANDS.iter().find(|c| c.as_bytes() == name)?;
    let noreply = args.last() == Some(&&b"noreply"[..]);
    let plain = if noreply {
        Expect::Nothing
    } else {
        Expect::Line
    };
    let mut keys = 0u32;
    let mut data = 0u64;
    let mut quiet = false;
    let expect = match operation {
        _ if STORAGE.contains(&operation) || operation == "cas" => {
            let fields = if operation == "cas" { 5 } else { 4 };
            let n = args.len() - usize::from(noreply);
            if n != fields || !key(args[0]) || !args[1..n].iter().all(|t| digits(t).is_some()) {
                return None;
            }
            data = digits(args[3])?.checked_add(2)?;
            plain
        }
        "get" | "gets" | "gat" | "gats" => {
            let skip = usize::from(operation.starts_with("gat"));
            let named = args.get(skip..).unwrap_or_default();
            if named.is_empty() || !named.iter().all(|t| key(t)) {
                return None;
            }
            if skip == 1 && digits(args[0]).is_none() {
                return None;
            }
            keys = u32::try_from(
                line.split(|b| *b == b' ').filter(|t| !t.is_empty()).count() - 1 - skip,
            )
            .unwrap_or(u32::MAX);
            Expect::Values
        }
        "delete" | "incr" | "decr" | "touch" => {
            let n = args.len() - usize::from(noreply);
            let want = if operation == "delete" { 1..=2 } else { 2..=2 };
            if !want.contains(&n)
                || !key(args[0])
                || !args[1..n].iter().all(|t| digits(t).is_some())
            {
                return None;
            }
            plain
        }
        "stats" => Expect::Stats,
        "version" | "mn" if args.is_empty() => {
            if operation == "mn" {
                Expect::Noop
            } else {
                Expect::Line
            }
        }
        "flush_all" | "verbosity" => {
            let n = args.len() - usize::from(noreply);
            if n > 1 || !args[..n].iter().all(|t| digits(t).is_some()) {
                return None;
            }
            plain
        }
        "quit" if args.is_empty() => Expect::Nothing,
        "mg" | "ms" | "md" | "ma" | "me" => {
            let (first, flags) = args.split_first()?;
            if !key(first) {
                return None;
            }
            let flags = if operation == "ms" {
                let (size, flags) = flags.split_first()?;
                data = digits(size)?.checked_add(2)?;
                flags
            } else {
                flags
            };
            quiet = operation != "me" && flags.iter().any(|f| *f == b"q");
            if quiet { Expect::Nothing } else { Expect::Line }
        }
        _ => return None,
    };
    let total = line.split(|b| *b == b' ').filter(|t| !t.is_empty()).count() - 1;
    Some(Request {
        operation: Some(operation),
        query: Some(query(operation, args, noreply, total)),
        expect,
        data,
        keys,
        quiet,
    })
}

/// `operation` and a `?` per argument (`noreply` is the protocol's own word, kept), the first
/// [`MAX_PLACEHOLDERS`] of `total` arguments written.
fn query(operation: &str, args: &[&[u8]], noreply: bool, total: usize) -> Box<str> {
    let mut query = String::from(operation);
    for (i, arg) in args.iter().enumerate().take(MAX_PLACEHOLDERS) {
        if i + 1 == args.len() && noreply && *arg == b"noreply" {
            query.push_str(" noreply");
        } else {
            query.push_str(" ?");
        }
    }
    if total > MAX_PLACEHOLDERS {
        let _ = write!(query, " ... ({} more)", total - MAX_PLACEHOLDERS);
    }
    query.into_boxed_str()
}

impl Request {
    /// A command memcached does not know: it answers `ERROR`. Its words may be anything, so
    /// none is kept.
    #[must_use]
    pub fn unknown() -> Self {
        Self {
            operation: None,
            query: None,
            expect: Expect::Line,
            data: 0,
            keys: 0,
            quiet: false,
        }
    }
}

/// Whether a line is a request line of a known command (detection: exact lowercase command,
/// sane tokens).
#[must_use]
pub fn is_request(line: &[u8]) -> bool {
    parse(line).is_some()
}
