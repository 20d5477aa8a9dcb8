//! The embedded span store: spans on disk (redb), indexed by time, service and operation, with
//! retention by age and by count. The pipeline writes while the query API reads (MVCC).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use redb::{
    Database, Durability, ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _,
    TableDefinition,
};

use crate::trace::SpanData;

/// trace id (16 bytes) ++ span id (8 bytes) → the span as one JSON object (the jsonl format).
const SPANS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("spans");
/// (start ns since the epoch, trace id ++ span id) → summary: service, name, duration, error.
const BY_TIME: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("spans_by_time");
/// service → last time a span of it was stored.
const SERVICES: TableDefinition<&str, u64> = TableDefinition::new("services");
/// (service, operation) → span kind.
const OPERATIONS: TableDefinition<(&str, &str), &str> = TableDefinition::new("operations");

/// Page cache of the store: bounded, so the agent's memory is.
const STORE_CACHE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Spans older than this are deleted.
    pub retention: Duration,
    /// At most this many spans are kept; the oldest go first.
    pub max_spans: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store retention must be between 1 minute and 90 days, got {0:?}")]
    Retention(Duration),
    #[error("store max-spans must be at least 1000, got {0}")]
    MaxSpans(u64),
    #[error("cannot open the span store {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("span store: {0}")]
    Db(String),
}

impl StoreConfig {
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.retention < Duration::from_mins(1) || self.retention > Duration::from_hours(24 * 90)
        {
            return Err(StoreError::Retention(self.retention));
        }
        if self.max_spans < 1000 {
            return Err(StoreError::MaxSpans(self.max_spans));
        }
        Ok(())
    }
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// What the time index keeps of a span, enough to filter searches without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanSummary {
    pub trace_id: [u8; 16],
    pub service: String,
    pub name: String,
    pub start_ns: u64,
    pub duration_ns: u64,
}

fn summary_bytes(service: &str, name: &str, duration_ns: u64) -> Vec<u8> {
    format!("{service}\u{1f}{name}\u{1f}{duration_ns}").into_bytes()
}

fn parse_summary(start_ns: u64, key: &[u8], bytes: &[u8]) -> Option<SpanSummary> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split('\u{1f}');
    let service = parts.next()?.to_string();
    let name = parts.next()?.to_string();
    let duration_ns = parts.next()?.parse().ok()?;
    Some(SpanSummary {
        trace_id: key.get(..16)?.try_into().ok()?,
        service,
        name,
        start_ns,
        duration_ns,
    })
}

/// Shared handle; clones are cheap.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    config: StoreConfig,
}

impl Store {
    pub fn open(config: StoreConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: config.path.display().to_string(),
            reason: e.to_string(),
        };
        if let Some(dir) = config.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| open_err(&e))?;
        }
        // redb's default cache may grow to 1 GiB; the agent's memory must stay bounded.
        let db = Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&config.path)
            .map_err(|e| open_err(&e))?;
        // Create the tables so readers never find them missing.
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(SPANS).map_err(db_err)?;
            txn.open_table(BY_TIME).map_err(db_err)?;
            txn.open_table(SERVICES).map_err(db_err)?;
            txn.open_table(OPERATIONS).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Self {
            db: Arc::new(db),
            config,
        })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Stores a batch. `durable` commits to disk now; otherwise the commit becomes durable with
    /// the next durable one (the exporter makes one every few seconds and at shutdown).
    pub fn write(&self, spans: &[SpanData], durable: bool) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(db_err)?;
        {
            let mut table = txn.open_table(SPANS).map_err(db_err)?;
            let mut by_time = txn.open_table(BY_TIME).map_err(db_err)?;
            let mut services = txn.open_table(SERVICES).map_err(db_err)?;
            let mut operations = txn.open_table(OPERATIONS).map_err(db_err)?;
            for span in spans {
                let mut key = [0u8; 24];
                key[..16].copy_from_slice(&span.trace_id);
                key[16..].copy_from_slice(&span.span_id);
                let json = crate::exporter::jsonl::to_json(span);
                table.insert(&key[..], json.as_slice()).map_err(db_err)?;
                let service = span.resource.service_name();
                let duration = span.end_unix_nano.saturating_sub(span.start_unix_nano);
                by_time
                    .insert(
                        (span.start_unix_nano, &key[..]),
                        summary_bytes(service, &span.name, duration).as_slice(),
                    )
                    .map_err(db_err)?;
                services
                    .insert(service, span.end_unix_nano)
                    .map_err(db_err)?;
                operations
                    .insert((service, span.name.as_str()), span.kind.as_str())
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Deletes spans older than the retention, then the oldest beyond `max_spans`; returns how
    /// many went.
    pub fn enforce_retention(&self, now_unix_ns: u64) -> Result<u64, StoreError> {
        let horizon = now_unix_ns.saturating_sub(self.config.retention.as_nanos() as u64);
        let txn = self.db.begin_write().map_err(db_err)?;
        let removed;
        {
            let mut table = txn.open_table(SPANS).map_err(db_err)?;
            let mut by_time = txn.open_table(BY_TIME).map_err(db_err)?;
            let total = by_time.len().map_err(db_err)?;
            let excess = total.saturating_sub(self.config.max_spans);
            let mut doomed: Vec<(u64, Vec<u8>)> = Vec::new();
            for entry in by_time.iter().map_err(db_err)? {
                let (key, _) = entry.map_err(db_err)?;
                let (start, id) = key.value();
                if start >= horizon && (doomed.len() as u64) >= excess {
                    break;
                }
                doomed.push((start, id.to_vec()));
            }
            for (start, id) in &doomed {
                by_time.remove((*start, id.as_slice())).map_err(db_err)?;
                table.remove(id.as_slice()).map_err(db_err)?;
            }
            removed = doomed.len() as u64;
        }
        txn.commit().map_err(db_err)?;
        Ok(removed)
    }

    /// Every service with stored spans, sorted.
    pub fn services(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SERVICES).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            out.push(entry.map_err(db_err)?.0.value().to_string());
        }
        Ok(out)
    }

    /// Operations of `service` with their span kind (`SERVER`, `CLIENT`), sorted.
    pub fn operations(&self, service: &str) -> Result<Vec<(String, String)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(OPERATIONS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.range((service, "")..).map_err(db_err)? {
            let (key, kind) = entry.map_err(db_err)?;
            let (svc, op) = key.value();
            if svc != service {
                break;
            }
            out.push((op.to_string(), kind.value().to_string()));
        }
        Ok(out)
    }

    /// The spans of one trace, as stored (jsonl objects).
    pub fn trace(&self, trace_id: &[u8; 16]) -> Result<Vec<serde_json::Value>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SPANS).map_err(db_err)?;
        let mut low = [0u8; 24];
        low[..16].copy_from_slice(trace_id);
        let mut high = [0xffu8; 24];
        high[..16].copy_from_slice(trace_id);
        let mut out = Vec::new();
        for entry in table.range(&low[..]..=&high[..]).map_err(db_err)? {
            let (_, json) = entry.map_err(db_err)?;
            if let Ok(v) = serde_json::from_slice(json.value()) {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Span summaries started in `[start_ns, end_ns]`, newest first, calling `keep` on each
    /// until it returns false.
    pub fn scan(
        &self,
        start_ns: u64,
        end_ns: u64,
        mut keep: impl FnMut(SpanSummary) -> bool,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let by_time = txn.open_table(BY_TIME).map_err(db_err)?;
        let low: (u64, &[u8]) = (start_ns, &[]);
        let high: (u64, &[u8]) = (end_ns, &[0xff; 25]);
        for entry in by_time.range(low..=high).map_err(db_err)?.rev() {
            let (key, value) = entry.map_err(db_err)?;
            let (start, id) = key.value();
            if let Some(summary) = parse_summary(start, id, value.value())
                && !keep(summary)
            {
                break;
            }
        }
        Ok(())
    }

    /// Distinct trace ids with a span started in `[start_ns, end_ns]` that `matches`, newest
    /// first, at most `limit`.
    pub fn trace_ids(
        &self,
        start_ns: u64,
        end_ns: u64,
        limit: usize,
        matches: impl Fn(&SpanSummary) -> bool,
    ) -> Result<Vec<[u8; 16]>, StoreError> {
        let mut ids = Vec::new();
        let mut seen = std::collections::HashSet::new();
        self.scan(start_ns, end_ns, |s| {
            if matches(&s) && seen.insert(s.trace_id) {
                ids.push(s.trace_id);
            }
            ids.len() < limit
        })?;
        Ok(ids)
    }

    /// Spans stored now.
    #[cfg(test)]
    fn span_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SPANS).map_err(db_err)?;
        table.len().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::{KeyValue, Resource, SpanKind, SpanStatus};

    fn span(trace: u8, id: u8, service: &str, start: u64) -> SpanData {
        SpanData {
            trace_id: [trace; 16],
            span_id: [id; 8],
            parent_span_id: None,
            links: Vec::new(),
            kind: SpanKind::Server,
            name: "GET /x".into(),
            start_unix_nano: start,
            end_unix_nano: start + 1_000,
            attributes: vec![KeyValue::int("http.response.status_code", 200)],
            status: SpanStatus::Unset,
            resource: Arc::new(Resource::new(vec![KeyValue::str(
                "service.name",
                service.to_string(),
            )])),
        }
    }

    fn store(path: &Path, max_spans: u64) -> Store {
        Store::open(StoreConfig {
            path: path.to_path_buf(),
            retention: Duration::from_hours(1),
            max_spans,
        })
        .expect("open")
    }

    #[test]
    fn writes_queries_retains_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("sockspan-store-test-{}", std::process::id()));
        let path = dir.join("t.redb");
        let now = 10_000_000_000_000u64;
        {
            let s = store(&path, 1000);
            s.write(
                &[
                    span(1, 1, "a", now - 10),
                    span(1, 2, "b", now - 5),
                    span(2, 1, "a", now),
                ],
                true,
            )
            .expect("write");
            assert_eq!(s.services().expect("services"), ["a", "b"]);
            assert_eq!(
                s.operations("a").expect("ops"),
                [("GET /x".to_string(), "SERVER".to_string())]
            );
            assert_eq!(s.trace(&[1; 16]).expect("trace").len(), 2);
            let mut seen = Vec::new();
            s.scan(0, u64::MAX, |sum| {
                seen.push(sum.service);
                true
            })
            .expect("scan");
            assert_eq!(seen, ["a", "b", "a"], "newest first");
            // Older than the retention: two hours before now.
            s.write(&[span(3, 1, "old", now - 7_200_000_000_000)], true)
                .expect("old");
            assert_eq!(s.enforce_retention(now).expect("retain"), 1);
            assert!(s.trace(&[3; 16]).expect("gone").is_empty());
        }
        let s = store(&path, 1000);
        assert_eq!(s.span_count().expect("count"), 3, "survives a reopen");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let c = StoreConfig {
            path: "x".into(),
            retention: Duration::from_secs(1),
            max_spans: 10,
        };
        assert!(
            c.validate()
                .expect_err("retention")
                .to_string()
                .contains("retention")
        );
    }
}
