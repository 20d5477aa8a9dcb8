//! Query-string parameters read by hand rather than through axum's `Query`: Jaeger's API repeats
//! keys (`tag=k:v&tag=k2:v2`, `traceID=a&traceID=b`), which a struct silently collapses, and a
//! bad value must be answered in the JSON envelope naming the parameter, not as plain text.

use axum::{
    extract::FromRequestParts,
    http::{StatusCode, request::Parts},
    response::Response,
};

use super::envelope::error;

/// The decoded `key=value` pairs of a request's query, in order.
#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Decodes `query` (without the `?`).
    pub fn parse(query: &str) -> Result<Self, String> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .map(Self)
            .map_err(|e| format!("the query string is not URL-encoded: {e}"))
    }

    /// The last non-empty value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every non-empty value of `key`, in order.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// `key` read as a number; the error names the parameter.
    pub fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, String> {
        self.get(key)
            .map(|text| {
                text.trim()
                    .parse()
                    .map_err(|_| format!("{key}: expected a number, got '{text}'"))
            })
            .transpose()
    }

    /// `key`, required.
    pub fn required(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("parameter '{key}' is required"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Self::parse(parts.uri.query().unwrap_or_default())
            .map_err(|msg| error(StatusCode::BAD_REQUEST, msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_are_all_kept_and_numbers_name_their_parameter() {
        let p = Params::parse("tag=a%3A1&tag=b:2&limit=x&service=&service=web").expect("query");
        assert_eq!(p.all("tag").collect::<Vec<_>>(), ["a:1", "b:2"]);
        assert_eq!(p.get("service"), Some("web"));
        let err = p.number::<usize>("limit").expect_err("not a number");
        assert!(err.starts_with("limit:"), "{err}");
        assert_eq!(p.number::<usize>("offset"), Ok(None));
        assert!(p.required("operation").is_err());
    }
}
