//! What a user opted into recording beyond the defaults.
//!
//! By default spans carry no header but `Host`, `User-Agent` and the trace-context ones, no body,
//! and the query string only with every value replaced by `REDACTED`. Two allowlists open that
//! up, by name, for what the operator knows is safe: `--record-headers` (recorded as
//! `http.request.header.<name>` / `http.response.header.<name>`) and `--record-query-values`
//! (those parameters keep their values in `url.query`). A listed name is recorded whatever it is:
//! the allowlist is the explicit opt-in.

use std::sync::OnceLock;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordConfig {
    /// Header names, lower-case.
    pub headers: Vec<String>,
    /// Query parameter names whose values are kept.
    pub query_values: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("--record-headers: `{0}` is not a header name (letters, digits and !#$%&'*+-.^_`|~)")]
    HeaderName(String),
    #[error("--record-query-values: `{0}` is not a query parameter name (no spaces, & = or #)")]
    QueryName(String),
    #[error("{0}: at most 32 names")]
    TooMany(&'static str),
}

/// Header field names are RFC 9110 tokens.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl RecordConfig {
    /// From the flags' comma-separated lists.
    pub fn new(headers: &[String], query_values: &[String]) -> Result<Self, RecordError> {
        let split = |lists: &[String]| -> Vec<String> {
            lists
                .iter()
                .flat_map(|l| l.split(','))
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect()
        };
        let config = Self {
            headers: split(headers)
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            query_values: split(query_values),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), RecordError> {
        if self.headers.len() > 32 {
            return Err(RecordError::TooMany("--record-headers"));
        }
        if self.query_values.len() > 32 {
            return Err(RecordError::TooMany("--record-query-values"));
        }
        if let Some(bad) = self.headers.iter().find(|h| !is_token(h)) {
            return Err(RecordError::HeaderName(bad.clone()));
        }
        if let Some(bad) = self.query_values.iter().find(|q| {
            q.bytes()
                .any(|b| b" &=#?".contains(&b) || b.is_ascii_control())
        }) {
            return Err(RecordError::QueryName(bad.clone()));
        }
        Ok(())
    }
}

static RECORD: OnceLock<RecordConfig> = OnceLock::new();

/// Sets the allowlists for this process, once, at start-up (later calls are ignored).
pub fn configure(config: RecordConfig) {
    let _ = RECORD.set(config);
}

fn current() -> Option<&'static RecordConfig> {
    RECORD.get()
}

/// Whether the header `name` is on the allowlist.
#[must_use]
pub fn header_recorded(name: &str) -> bool {
    current().is_some_and(|c| c.headers.iter().any(|h| h.eq_ignore_ascii_case(name)))
}

/// The query string of a request target with every value not on the allowlist replaced by
/// `REDACTED` (`a=1&token=x` → `a=REDACTED&token=REDACTED`); `None` without a query.
#[must_use]
pub fn redacted_query(target: &str) -> Option<String> {
    redacted_query_with(target, current().map_or(&[][..], |c| &c.query_values))
}

fn redacted_query_with(target: &str, keep: &[String]) -> Option<String> {
    let query = target.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    if query.is_empty() {
        return None;
    }
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if keep.iter().any(|k| k == key) => format!("{key}={value}"),
            Some((key, _)) => format!("{key}=REDACTED"),
            // A bare word may itself be the secret (`?s3cr3t`); its name is its value.
            None if keep.iter().any(|k| k == pair) => pair.to_string(),
            None => "REDACTED".to_string(),
        })
        .collect();
    Some(parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_redacted_unless_allowed() {
        let none: Vec<String> = Vec::new();
        assert_eq!(
            redacted_query_with("/p?token=abc&page=2#frag", &none).as_deref(),
            Some("token=REDACTED&page=REDACTED")
        );
        let keep = vec!["page".to_string()];
        assert_eq!(
            redacted_query_with("/p?token=abc&page=2&bare", &keep).as_deref(),
            Some("token=REDACTED&page=2&REDACTED")
        );
        assert_eq!(redacted_query_with("/p", &keep), None);
        assert_eq!(redacted_query_with("/p?", &keep), None);
    }

    #[test]
    fn flags_are_split_lowered_and_checked_by_name() {
        let c = RecordConfig::new(
            &["X-Request-Id, Content-Type".to_string()],
            &["page".to_string()],
        )
        .expect("valid");
        assert_eq!(c.headers, ["x-request-id", "content-type"]);
        let err = RecordConfig::new(&["bad header".to_string()], &[]).expect_err("space");
        assert!(
            err.to_string()
                .starts_with("--record-headers: `bad header`"),
            "{err}"
        );
        let err = RecordConfig::new(&[], &["a=b".to_string()]).expect_err("equals");
        assert!(
            err.to_string().starts_with("--record-query-values"),
            "{err}"
        );
    }
}
