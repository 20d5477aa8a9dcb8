//! A trace search as Jaeger's query service takes it: `service`, `operation`, tags (a JSON
//! object in `tags`, or repeated `tag=key:value`), `minDuration`/`maxDuration` in Go syntax,
//! `start`/`end` in microseconds (or `lookback` back from `end`), `limit`; or one or more
//! `traceID`, which fetches those traces and ignores the rest.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{api::params::Params, trace::ids::parse_hex};

/// Most traces one search returns.
const MAX_LIMIT: usize = 1500;

/// A Go-style duration (`250us`, `1.5ms`, `2s`, `1m`, `1h`) in nanoseconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        "d" => 86_400e9,
        _ => return None,
    };
    (value.is_finite() && value >= 0.0).then_some((value * scale) as u64)
}

/// Whether a stored span carries `key` = `value` among its attributes or resource; `error` is
/// the span's status, as Jaeger clients expect, and `span.kind` its kind.
pub fn has_tag(span: &Value, key: &str, value: &str) -> bool {
    if key == "error" {
        return (span["status"]["code"] == "ERROR") == (value == "true");
    }
    if key == "span.kind" {
        return span["kind"]
            .as_str()
            .is_some_and(|k| k.eq_ignore_ascii_case(value));
    }
    ["attributes", "resource"].iter().any(|section| {
        span[section].get(key).is_some_and(|v| match v {
            Value::String(s) => s == value,
            Value::Number(n) => value.parse::<serde_json::Number>().is_ok_and(|v| &v == n),
            Value::Bool(b) => value.parse::<bool>().is_ok_and(|v| v == *b),
            _ => false,
        })
    })
}

/// A validated search.
#[derive(Debug, PartialEq)]
pub enum Search {
    /// These traces, whatever else was asked.
    Ids(Vec<[u8; 16]>),
    Filter(Filter),
}

/// Spans of `service` matching everything given; their traces, newest first.
#[derive(Debug, PartialEq)]
pub struct Filter {
    pub service: String,
    pub operation: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub min: Option<u64>,
    pub max: Option<u64>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub limit: usize,
}

/// A trace id of up to 32 hex digits (Jaeger drops leading zeros).
pub fn trace_id(text: &str) -> Result<[u8; 16], String> {
    let text = text.trim();
    (text.len() <= 32)
        .then(|| parse_hex::<16>(&format!("{text:0>32}")))
        .flatten()
        .ok_or_else(|| format!("'{text}' is not a trace id (up to 32 hex digits)"))
}

/// Checks the parameters; the error names the bad one (answered as a 400).
pub fn parse(params: &Params) -> Result<Search, String> {
    let ids: Vec<[u8; 16]> = params
        .all("traceID")
        .flat_map(|v| v.split(','))
        .filter(|v| !v.trim().is_empty())
        .map(|v| trace_id(v).map_err(|e| format!("traceID: {e}")))
        .collect::<Result<_, _>>()?;
    if !ids.is_empty() {
        return Ok(Search::Ids(ids));
    }
    let service = params.required("service")?.to_string();
    let duration = |name: &str| -> Result<Option<u64>, String> {
        params
            .get(name)
            .map(|t| {
                parse_duration(t)
                    .ok_or_else(|| format!("{name}: expected a duration like 10ms, got '{t}'"))
            })
            .transpose()
    };
    let (min, max) = (duration("minDuration")?, duration("maxDuration")?);
    let mut tags = match params.get("tags") {
        None => BTreeMap::new(),
        Some(t) => serde_json::from_str::<BTreeMap<String, Value>>(t)
            .map_err(|_| "tags: expected a JSON object of strings".to_string())?
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect(),
    };
    for tag in params.all("tag") {
        let (key, value) = tag
            .split_once(':')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| format!("tag: expected key:value, got '{tag}'"))?;
        tags.insert(key.to_string(), value.to_string());
    }
    let end_ns = params
        .number::<u64>("end")?
        .map_or(u64::MAX, |e| e.saturating_mul(1000));
    let start_ns = match params.number::<u64>("start")? {
        Some(s) => s.saturating_mul(1000),
        None => match params.get("lookback").filter(|l| *l != "custom") {
            Some(l) if end_ns != u64::MAX => end_ns.saturating_sub(
                parse_duration(l)
                    .ok_or_else(|| format!("lookback: expected a duration like 1h, got '{l}'"))?,
            ),
            _ => 0,
        },
    };
    if start_ns > end_ns {
        return Err("start: after end".to_string());
    }
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        return Err("minDuration: longer than maxDuration".to_string());
    }
    Ok(Search::Filter(Filter {
        service,
        operation: params.get("operation").map(str::to_string),
        tags,
        min,
        max,
        start_ns,
        end_ns,
        limit: params
            .number::<usize>("limit")?
            .filter(|l| *l > 0)
            .unwrap_or(20)
            .min(MAX_LIMIT),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_syntax() {
        assert_eq!(parse_duration("250us"), Some(250_000));
        assert_eq!(parse_duration("1.5ms"), Some(1_500_000));
        assert_eq!(parse_duration("2s"), Some(2_000_000_000));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("5parsecs"), None);
    }

    fn search(query: &str) -> Result<Search, String> {
        parse(&Params::parse(query).expect("query"))
    }

    #[test]
    fn repeated_tags_and_the_tags_object_are_all_applied() {
        let Ok(Search::Filter(f)) = search(
            "service=web&tags=%7B%22error%22%3A%22true%22%7D&tag=http.route:/a&tag=db.system:redis",
        ) else {
            panic!("a filter");
        };
        let tags: Vec<(&str, &str)> = f
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            tags,
            [
                ("db.system", "redis"),
                ("error", "true"),
                ("http.route", "/a")
            ]
        );
        assert_eq!((f.limit, f.start_ns, f.end_ns), (20, 0, u64::MAX));
    }

    #[test]
    fn several_trace_ids_fetch_those_traces() {
        let Ok(Search::Ids(ids)) = search("traceID=abc&traceID=00000000000000000000000000000def")
        else {
            panic!("ids");
        };
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0][15], 0xbc);
        assert_eq!(ids[1][15], 0xef);
        assert!(search("traceID=xyz").is_err_and(|e| e.starts_with("traceID:")));
    }

    #[test]
    fn bad_values_name_their_parameter() {
        for (query, name) in [
            ("operation=x", "'service'"),
            ("service=a&limit=ten", "limit:"),
            ("service=a&start=yesterday", "start:"),
            ("service=a&minDuration=5parsecs", "minDuration:"),
            ("service=a&tag=novalue", "tag:"),
            ("service=a&tags=[1]", "tags:"),
            ("service=a&start=20&end=10", "start:"),
            ("service=a&end=10&lookback=soon", "lookback:"),
        ] {
            let err = search(query).expect_err(query);
            assert!(err.contains(name), "{query}: {err}");
        }
    }

    #[test]
    fn lookback_counts_back_from_end() {
        let Ok(Search::Filter(f)) = search("service=a&end=7200000000&lookback=1h") else {
            panic!("a filter");
        };
        assert_eq!(
            (f.start_ns, f.end_ns),
            (3_600_000_000_000, 7_200_000_000_000)
        );
    }

    #[test]
    fn tags_match_attributes_resource_status_and_kind() {
        let span = serde_json::json!({"kind": "SERVER", "status": {"code": "ERROR"},
            "attributes": {"http.response.status_code": 502, "http.route": "/p"},
            "resource": {"service.name": "web"}});
        assert!(has_tag(&span, "error", "true"));
        assert!(has_tag(&span, "span.kind", "server"));
        assert!(has_tag(&span, "http.response.status_code", "502"));
        assert!(has_tag(&span, "service.name", "web"));
        assert!(!has_tag(&span, "http.route", "/q"));
    }
}
