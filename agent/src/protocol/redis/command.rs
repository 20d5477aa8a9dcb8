//! What a Redis request is called: its operation name (the command, with the subcommand for the
//! container commands) and its query text, the operation followed by one `?` per argument.
//! Arguments are keys and values, user data: none of them is ever kept, only counted.

use std::{borrow::Cow, fmt::Write as _};

use super::resp::{Message, Word};

/// Most `?` written into a query text; a hostile or huge request (`MSET` of a million keys)
/// says how many more there were instead.
const MAX_PLACEHOLDERS: u64 = 64;

/// Commands whose first argument is a subcommand that names the operation too.
const CONTAINERS: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DEBUG", "FUNCTION", "LATENCY", "MEMORY",
    "MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];

/// Common commands named without allocating.
const KNOWN: &[&str] = &[
    "APPEND",
    "AUTH",
    "BLPOP",
    "BRPOP",
    "DBSIZE",
    "DECR",
    "DECRBY",
    "DEL",
    "DISCARD",
    "ECHO",
    "EVAL",
    "EVALSHA",
    "EXEC",
    "EXISTS",
    "EXPIRE",
    "FLUSHALL",
    "FLUSHDB",
    "GET",
    "GETDEL",
    "GETEX",
    "GETSET",
    "HDEL",
    "HELLO",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HINCRBY",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HMSET",
    "HSET",
    "HSETNX",
    "HVALS",
    "INCR",
    "INCRBY",
    "INFO",
    "KEYS",
    "LINDEX",
    "LLEN",
    "LPOP",
    "LPUSH",
    "LRANGE",
    "LREM",
    "LTRIM",
    "MGET",
    "MSET",
    "MULTI",
    "PERSIST",
    "PEXPIRE",
    "PING",
    "PSUBSCRIBE",
    "PTTL",
    "PUBLISH",
    "PUNSUBSCRIBE",
    "QUIT",
    "RPOP",
    "RPUSH",
    "SADD",
    "SCAN",
    "SCARD",
    "SELECT",
    "SET",
    "SETEX",
    "SETNX",
    "SISMEMBER",
    "SMEMBERS",
    "SPUBLISH",
    "SREM",
    "SSUBSCRIBE",
    "STRLEN",
    "SUBSCRIBE",
    "SUNSUBSCRIBE",
    "TTL",
    "TYPE",
    "UNLINK",
    "UNSUBSCRIBE",
    "UNWATCH",
    "WATCH",
    "XACK",
    "XADD",
    "XLEN",
    "XRANGE",
    "XREAD",
    "XREADGROUP",
    "ZADD",
    "ZCARD",
    "ZINCRBY",
    "ZRANGE",
    "ZRANGEBYSCORE",
    "ZRANK",
    "ZREM",
    "ZSCORE",
];

/// A request as far as its span needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// `db.operation.name`; `None` when the name is not a command name.
    pub operation: Option<Cow<'static, str>>,
    /// `db.query.text`: the operation and a `?` per argument.
    pub query: Option<Box<str>>,
    /// Confirmations a (un)subscribe request is answered by (one per channel argument).
    pub confirmations: u64,
    /// The database a `SELECT` asks for.
    pub select: Option<u32>,
}

/// An uppercased command word, if it is one: 1 to 32 ASCII letters, digits, `.`, `_`, `-`
/// (modules name commands `JSON.GET`), starting with a letter.
fn command_word(word: &Word) -> Option<String> {
    let bytes = word.whole()?;
    let first = bytes.first()?;
    (first.is_ascii_alphabetic()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
    .then(|| String::from_utf8_lossy(bytes).to_ascii_uppercase())
}

impl Command {
    /// Names a complete request message (`elements` words, `words` the first two).
    #[must_use]
    pub fn of(message: &Message) -> Self {
        let Some(name) = command_word(&message.words[0]) else {
            return Self {
                operation: None,
                query: None,
                confirmations: 0,
                select: None,
            };
        };
        let mut args = message.elements.saturating_sub(1);
        let mut operation: Cow<'static, str> = match KNOWN.iter().find(|k| **k == name) {
            Some(known) => Cow::Borrowed(known),
            None => Cow::Owned(name),
        };
        if CONTAINERS.contains(&operation.as_ref())
            && args > 0
            && let Some(sub) = command_word(&message.words[1])
        {
            operation = Cow::Owned(format!("{operation} {sub}"));
            args -= 1;
        }
        let mut query =
            String::with_capacity(operation.len() + 2 * args.min(MAX_PLACEHOLDERS) as usize + 8);
        query.push_str(&operation);
        for _ in 0..args.min(MAX_PLACEHOLDERS) {
            query.push_str(" ?");
        }
        if args > MAX_PLACEHOLDERS {
            let _ = write!(query, " ... ({} more)", args - MAX_PLACEHOLDERS);
        }
        let confirmations = if matches!(
            operation.as_ref(),
            "SUBSCRIBE"
                | "PSUBSCRIBE"
                | "SSUBSCRIBE"
                | "UNSUBSCRIBE"
                | "PUNSUBSCRIBE"
                | "SUNSUBSCRIBE"
        ) {
            // Without channels an unsubscribe is answered once per subscription, or once
            // when there is none: the first answer completes it, the rest are pushes.
            args.max(1)
        } else {
            0
        };
        // The index is a small number, not user data: it becomes the namespace.
        let select = (operation == "SELECT" && args == 1)
            .then(|| message.words[1].whole())
            .flatten()
            .filter(|d| !d.is_empty() && d.len() <= 5 && d.iter().all(u8::is_ascii_digit))
            .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok());
        Self {
            operation: Some(operation),
            query: Some(query.into_boxed_str()),
            confirmations,
            select,
        }
    }

    /// Whether the command only talks to the server (the connection opening handshake), which a
    /// client sends first on a new connection.
    #[must_use]
    pub fn opens_connection(&self) -> bool {
        matches!(
            self.operation.as_deref(),
            Some("HELLO" | "AUTH" | "CLIENT SETINFO" | "CLIENT SETNAME")
        )
    }
}
