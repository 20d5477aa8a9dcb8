//! What a datastore exchange contributes to its span, after the OpenTelemetry database
//! conventions (v1.33+), shared by every datastore folder (`redis`, `postgres`, `mysql`,
//! `memcached`).
//!
//! Nothing here holds a literal: a parser puts only sanitised query text (every literal `?`),
//! names (operation, collection, namespace) and codes into a [`DbSummary`]. Server error
//! messages are never kept, since they echo values (`Key (id)=(42) already exists`); the
//! status carries the error code alone.

use std::{borrow::Cow, sync::Arc};

use crate::{
    protocol::{ATTRIBUTES_ADDED_AT_EXPORT, SpanFacts, Summary},
    trace::{
        intern::Interner,
        span::{KeyValue, SpanStatus},
    },
};

/// `db.system.name` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbSystem {
    Redis,
    Postgresql,
    Mysql,
    Mariadb,
    Memcached,
}

impl DbSystem {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Postgresql => "postgresql",
            Self::Mysql => "mysql",
            Self::Mariadb => "mariadb",
            Self::Memcached => "memcached",
        }
    }

    /// Whether `db.namespace` names a database a span may be named by (SQL systems), rather
    /// than a number (Redis' database index).
    fn names_by_namespace(self) -> bool {
        matches!(self, Self::Postgresql | Self::Mysql | Self::Mariadb)
    }
}

/// How the exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbOutcome {
    /// The server answered without an error.
    Ok,
    /// The server answered with an error: its code (SQLSTATE, MySQL error number, Redis error
    /// prefix such as `WRONGTYPE`, memcached `SERVER_ERROR`), never its message.
    Error { code: Option<Box<str>> },
    /// The request asked for no reply (memcached `noreply`, MySQL `COM_STMT_CLOSE`): complete
    /// when written.
    NoReply,
    /// The connection closed (or the stream was lost) before a reply.
    NoResponse,
    /// A reply came (the client went on to its next request) but the part saying how it ended
    /// was not captured (a reply larger than `--capture-bytes` in one syscall): neither ok nor
    /// failed, rather than a guess.
    Uncaptured,
}

/// One datastore exchange, compact until export.
#[derive(Debug)]
pub struct DbSummary {
    pub system: DbSystem,
    /// `db.operation.name`: the command or statement keyword as the protocol names it (`GET`,
    /// `SELECT`, `get`).
    pub operation: Option<Cow<'static, str>>,
    /// `db.collection.name`: the table the statement names, when it names exactly one plainly.
    pub collection: Option<Box<str>>,
    /// `db.namespace`: the database (PostgreSQL, MySQL) or database index (Redis), shared by the
    /// connection's exchanges.
    pub namespace: Option<Arc<str>>,
    /// `db.query.text`, already sanitised (every literal `?`); `None` when there is none.
    pub query: Option<Box<str>>,
    /// `db.operation.batch.size`: commands or keys one request carried, when more than one.
    pub batch_size: Option<u32>,
    pub outcome: DbOutcome,
}

impl DbSummary {
    /// A summary with only the system and outcome known; parsers fill the rest.
    #[must_use]
    pub fn new(system: DbSystem, outcome: DbOutcome) -> Self {
        Self {
            system,
            operation: None,
            collection: None,
            namespace: None,
            query: None,
            batch_size: None,
            outcome,
        }
    }

    /// Span name: `{operation} {target}`, the target the collection, else (SQL) the namespace;
    /// the system's name when the operation is unknown.
    fn name(&self) -> String {
        let target = self.collection.as_deref().or_else(|| {
            self.namespace
                .as_deref()
                .filter(|_| self.system.names_by_namespace())
        });
        match (self.operation.as_deref(), target) {
            (Some(op), Some(target)) => format!("{op} {target}"),
            (Some(op), None) => op.to_string(),
            (None, _) => self.system.as_str().to_string(),
        }
    }
}

impl Summary for DbSummary {
    fn expand(
        self,
        span: &SpanFacts,
        strings: &mut Interner,
    ) -> (Arc<str>, Vec<KeyValue>, SpanStatus) {
        let name = strings.get(&self.name());
        let this = self;
        let mut attributes = Vec::with_capacity(10 + ATTRIBUTES_ADDED_AT_EXPORT);
        attributes.push(KeyValue::str("db.system.name", this.system.as_str()));
        if let Some(op) = this.operation {
            attributes.push(KeyValue::str("db.operation.name", op));
        }
        if let Some(collection) = this.collection {
            attributes.push(KeyValue::str(
                "db.collection.name",
                String::from(collection),
            ));
        }
        if let Some(namespace) = this.namespace {
            attributes.push(KeyValue::shared("db.namespace", namespace));
        }
        if let Some(query) = this.query {
            attributes.push(KeyValue::str("db.query.text", String::from(query)));
        }
        if let Some(size) = this.batch_size.filter(|&n| n > 1) {
            attributes.push(KeyValue::int("db.operation.batch.size", i64::from(size)));
        }
        let status = match this.outcome {
            DbOutcome::Ok | DbOutcome::NoReply | DbOutcome::Uncaptured => SpanStatus::Unset,
            DbOutcome::Error { code } => {
                let system = this.system.as_str();
                if let Some(code) = code {
                    let status = SpanStatus::Error(format!("{system} error {code}"));
                    let code = strings.get(&code);
                    attributes.push(KeyValue::shared("db.response.status_code", code.clone()));
                    attributes.push(KeyValue::shared("error.type", code));
                    status
                } else {
                    attributes.push(KeyValue::str("error.type", "_OTHER"));
                    SpanStatus::Error(format!("{system} error"))
                }
            }
            DbOutcome::NoResponse => {
                SpanStatus::Error("connection closed before a response".to_string())
            }
        };
        span.address_attributes(None, strings, &mut attributes);
        (name, attributes, status)
    }

    fn describe(&self) -> String {
        let outcome = match &self.outcome {
            DbOutcome::Ok => "ok".to_string(),
            DbOutcome::Error { code } => format!("error {}", code.as_deref().unwrap_or("?")),
            DbOutcome::NoReply => "noreply".to_string(),
            DbOutcome::NoResponse => "none".to_string(),
            DbOutcome::Uncaptured => "uncaptured".to_string(),
        };
        let query = self
            .query
            .as_deref()
            .map_or_else(String::new, |q| format!(" [{q}]"));
        format!("{}{query} -> {outcome}", self.name())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn expand(summary: DbSummary) -> (Arc<str>, Vec<KeyValue>, SpanStatus) {
        let facts = SpanFacts {
            server: false,
            local: SocketAddr::from(([127, 0, 0, 1], 40000)),
            remote: SocketAddr::from(([127, 0, 0, 1], 5432)),
        };
        summary.expand(&facts, &mut Interner::default())
    }

    fn value<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_str())
    }

    #[test]
    fn named_by_operation_and_collection_else_database() {
        let mut summary = DbSummary::new(DbSystem::Postgresql, DbOutcome::Ok);
        summary.operation = Some("SELECT".into());
        summary.namespace = Some("shop".into());
        summary.query = Some("SELECT 1 FROM t WHERE a = ?".into());
        assert_eq!(summary.name(), "SELECT shop");
        summary.collection = Some("t".into());
        let (name, attributes, status) = expand(summary);
        assert_eq!(&*name, "SELECT t");
        assert_eq!(status, SpanStatus::Unset);
        assert_eq!(value(&attributes, "db.system.name"), Some("postgresql"));
        assert_eq!(value(&attributes, "db.collection.name"), Some("t"));
        assert_eq!(value(&attributes, "db.namespace"), Some("shop"));
        assert_eq!(value(&attributes, "server.address"), Some("127.0.0.1"));
    }

    #[test]
    fn redis_is_not_named_by_its_database_index() {
        let mut summary = DbSummary::new(DbSystem::Redis, DbOutcome::Ok);
        summary.operation = Some("GET".into());
        summary.namespace = Some("0".into());
        assert_eq!(summary.name(), "GET");
    }

    #[test]
    fn errors_carry_their_code_never_a_message() {
        let mut summary = DbSummary::new(
            DbSystem::Postgresql,
            DbOutcome::Error {
                code: Some("23505".into()),
            },
        );
        summary.operation = Some("INSERT".into());
        let (_, attributes, status) = expand(summary);
        assert_eq!(
            status,
            SpanStatus::Error("postgresql error 23505".to_string())
        );
        assert_eq!(value(&attributes, "db.response.status_code"), Some("23505"));
        assert_eq!(value(&attributes, "error.type"), Some("23505"));
    }

    #[test]
    fn no_response_is_an_error_and_noreply_is_not() {
        let (_, _, status) = expand(DbSummary::new(DbSystem::Redis, DbOutcome::NoResponse));
        assert!(matches!(status, SpanStatus::Error(_)));
        let (name, _, status) = expand(DbSummary::new(DbSystem::Memcached, DbOutcome::NoReply));
        assert_eq!(status, SpanStatus::Unset);
        assert_eq!(&*name, "memcached");
    }
}
