//! The embedded span store: spans on disk (frames in an append-only log, redb for where they
//! are and the indexes), indexed by start time, trace id, service and operation, with retention
//! by age and by count. The pipeline writes while the query API reads (MVCC).
//!
//! Spans are written in compressed frames under an increasing sequence number ([`frame`]), so a
//! commit appends instead of touching a page per span. The frames themselves are appended to
//! segment files beside the redb file ([`frame_log`]); redb holds where each one is, and the
//! indexes. The index by start time has an entry per
//! frame and appends too (spans end, and so arrive, roughly in start order; [`start_index`]);
//! the index by trace id is a small log-structured tree ([`trace_index`]).
//!
//! This file holds the schema (tables, settings, errors) and opening with recovery; [`write`],
//! [`retention`] and [`read`] hold the rest, one job each.

mod bloom;
mod frame;
mod frame_log;
#[cfg(test)]
mod log_tests;
pub mod prepare;
mod read;
mod record;
mod retention;
mod start_index;
mod trace_index;
mod write;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use redb::{
    Database, ReadableDatabase as _, ReadableTable, ReadableTableMetadata as _, TableDefinition,
    TableHandle as _,
};

use self::{
    bloom::Bloom,
    frame_log::{FrameLog, LogAt, Named, Part},
    trace_index::{OpenRun, RUN_PAIRS},
    write::Writer,
};

/// Frame sequence number → where the frame is in the frame log ([`frame_log::LogAt`]).
const FRAMES: TableDefinition<u64, &[u8]> = TableDefinition::new("frame_locations");
/// Frame sequence number → frame: where stores written before the frame log kept frames. Opening
/// moves them into the log.
const FRAMES_IN_DB: TableDefinition<u64, &[u8]> = TableDefinition::new("frames");
/// (latest start of a frame's spans, ns since the epoch; frame) → where the block summarising each
/// of its spans ([`start_index`]) is in the frame log.
const BY_START: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("start_locations");
/// The same keys → the block itself: where stores written before the frame log kept the blocks.
/// Opening moves them into the log.
const BY_START_IN_DB: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("frames_by_start");
/// Running totals: [`SPANS`], the number of spans stored (retention by count reads it), and
/// [`SPREAD`], the widest (latest − earliest start) of any frame ever written (a search for
/// spans started by `t` reads the start index up to `t` + it).
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
const SPANS: &str = "spans";
const SPREAD: &str = "spread";
/// A random id of the store, also written in its frame log's folder ([`frame_log`]).
const STORE_ID: &str = "store_id";
/// Sealed runs of the trace-id index: (run, first trace id of a block) → a block of sorted
/// (trace id, frame) pairs, see [`trace_index`].
const TRACE_RUNS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("trace_runs");
/// Sealed run (its last frame) → the Bloom filter of its trace ids ([`bloom`]).
const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs");
/// service → last time a span of it was stored (to within [`SERVICE_REFRESH_NS`]).
const SERVICES: TableDefinition<&str, u64> = TableDefinition::new("services");
/// (service, operation) → span kind.
const OPERATIONS: TableDefinition<(&str, &str), &str> = TableDefinition::new("operations");
/// Tables only stores of earlier layouts have: a record per span keyed by trace id (the first),
/// an index entry per span by start time (the second).
const EARLIER_LAYOUT_TABLES: [&str; 2] = ["spans", "spans_by_start"];

/// Page cache of the store: bounded, so the agent's memory is. The writer only appends, and a
/// lookup reads one block per candidate run and its frames, so a small cache costs nothing
/// measurable (trace lookups 26–27 µs either way); at 16 MiB the agent's peak RSS under wrk
/// was 56 MiB, at 4 MiB 35.5 MiB.
const STORE_CACHE_BYTES: usize = 4 * 1024 * 1024;
/// A service's last-seen time is rewritten at most this often, not with every span.
const SERVICE_REFRESH_NS: u64 = 10_000_000_000;
/// Frames retention removes in one call at most, so one call never stalls the pipeline long;
/// the next call goes on.
const RETENTION_FRAMES: usize = 4096;

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
    #[error("cannot start the span store's writer thread: {0}")]
    Writer(String),
    #[error("span store: {0}")]
    Log(#[from] frame_log::LogError),
}

impl StoreConfig {
    /// For opening an existing store to read it (`dump`, the bench): the widest retention and
    /// no span limit, so nothing a writer would enforce applies (opening deletes no span; it
    /// may move an older store's frames into the frame log, and cuts what no commit names).
    #[must_use]
    pub fn reading(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            retention: Duration::from_hours(24 * 90),
            max_spans: u64::MAX,
        }
    }

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

/// The fuzz target `store_frame`: a frame of format 1, 2 or 3 (`format`, taken modulo 3) holding
/// `raw`, decoded and each record read back as JSON, as a reader of the store does; and `whole`
/// (the input itself) as a stored frame, its header and compressed block. Damage is an error,
/// never a panic.
#[cfg(feature = "fuzz")]
pub fn fuzz_frame(format: u8, spans: u8, raw: &[u8], whole: &[u8]) {
    let bytes = frame::from_raw(format % 3 + 1, spans, raw);
    let mut decoded = Vec::new();
    for (frame, raw_len) in [(bytes.as_slice(), Some(raw.len())), (whole, None)] {
        if let Ok(records) = frame::decode(frame, &mut decoded) {
            if let Some(raw_len) = raw_len {
                assert!(
                    records.len() <= raw_len / 20,
                    "a record takes its 20-byte header"
                );
            }
            for record in records {
                let _ = record.json();
            }
        }
    }
}

/// Deletes the store at `path`, its frame log too (a new store for a bench run or a test).
#[cfg(any(test, feature = "bench"))]
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_dir_all(frame_log::dir_of(path));
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// What the start-time index keeps of a span, enough to filter searches without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanSummary {
    pub trace_id: [u8; 16],
    pub service: String,
    pub name: String,
    pub start_ns: u64,
    pub duration_ns: u64,
}

// A panic while a lock was held leaves at most a half-built frame and pairs of a write that
// was not committed, which the next write drops first; the agent must not stop storing for it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// The records of a stored frame; a frame that does not decode is reported and skipped.
fn records<'a>(frame: u64, bytes: &[u8], raw: &'a mut Vec<u8>) -> Option<Vec<frame::Record<'a>>> {
    frame::decode(bytes, raw)
        .map_err(|err| tracing::warn!(frame, "span store: {err}"))
        .ok()
}

/// The location of the first (or, `from_end`, the last) frame whose location reads and, with
/// `log`, whose frame reads from it (checksum and all): what opening and retention keep the log
/// from, never a damaged value's. Without `log`: any plausible location.
fn first_readable(
    frames: &impl ReadableTable<u64, &'static [u8]>,
    from_end: bool,
    log: Option<&FrameLog>,
) -> Result<Option<LogAt>, StoreError> {
    let mut bytes = Vec::new();
    let mut entries = frames.iter().map_err(db_err)?;
    let mut next = || {
        if from_end {
            entries.next_back()
        } else {
            entries.next()
        }
    };
    while let Some(entry) = next() {
        let (frame, at) = entry.map_err(db_err)?;
        if let Some(at) = frame_at(frame.value(), at.value())
            && log.is_none_or(|log| read_frame(log, frame.value(), &at, &mut bytes) == Read::Bytes)
        {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// A frame's location as stored; a value of another size is reported and skipped.
fn frame_at(frame: u64, value: &[u8]) -> Option<LogAt> {
    let at = LogAt::from_bytes(value);
    if at.is_none() {
        tracing::warn!(frame, "span store: a frame's location is damaged");
    }
    at
}

/// What reading a record of the frame log gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Bytes,
    /// Its segment is gone: retention took it after the reader's snapshot.
    Gone,
    /// Unreadable (reported).
    Damaged,
}

/// Reads a record of frame `frame` (the frame, or its start-index block) from the log into
/// `bytes`.
fn read_frame(log: &FrameLog, frame: u64, at: &LogAt, bytes: &mut Vec<u8>) -> Read {
    match log.read(frame, at, bytes) {
        Ok(true) => Read::Bytes,
        Ok(false) => Read::Gone,
        Err(err) => {
            tracing::warn!(frame, "span store: {err}");
            Read::Damaged
        }
    }
}

/// Reads the frame `frame` whose stored location is `value` into `bytes`; a location that does
/// not decode is damage.
fn read_stored(log: &FrameLog, frame: u64, value: &[u8], bytes: &mut Vec<u8>) -> Read {
    frame_at(frame, value).map_or(Read::Damaged, |at| read_frame(log, frame, &at, bytes))
}

/// Shared handle; clones are cheap.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    config: StoreConfig,
    writer: Arc<Mutex<Writer>>,
    /// Prepares [`Store::write`]'s spans (the exporter has its own: [`Store::preparer`]).
    preparer: Arc<Mutex<prepare::Preparer>>,
    names_lost: Arc<prepare::NamesLost>,
    open_run: Arc<RwLock<OpenRun>>,
    /// The filter of each sealed run; `None` where a stored filter was damaged (the run is then
    /// always probed).
    blooms: Arc<RwLock<BTreeMap<u64, Option<Bloom>>>>,
    run_pairs: usize,
    log: Arc<FrameLog>,
}

impl Store {
    pub fn open(config: StoreConfig) -> Result<Self, StoreError> {
        Self::open_with_run_pairs(config, RUN_PAIRS)
    }

    /// A preparer of batches for [`Store::write_prepared`], for a thread that hands spans over.
    #[must_use]
    pub fn preparer(&self) -> prepare::Preparer {
        prepare::Preparer::new(Arc::clone(&self.names_lost))
    }

    fn open_with_run_pairs(config: StoreConfig, run_pairs: usize) -> Result<Self, StoreError> {
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
        let tables: Vec<String> = db
            .begin_read()
            .map_err(db_err)?
            .list_tables()
            .map_err(db_err)?
            .map(|t| t.name().to_string())
            .collect();
        let earlier_layout = tables
            .iter()
            .any(|t| EARLIER_LAYOUT_TABLES.contains(&t.as_str()));
        if earlier_layout {
            return Err(open_err(
                &"it was written by an earlier sockspan, whose layout this one does not read; \
                  move it aside (or pass --store with another path) and sockspan starts a new one",
            ));
        }
        // Create the tables so readers never find them missing.
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(FRAMES).map_err(db_err)?;
            txn.open_table(BY_START).map_err(db_err)?;
            txn.open_table(COUNTS).map_err(db_err)?;
            txn.open_table(TRACE_RUNS).map_err(db_err)?;
            txn.open_table(RUNS).map_err(db_err)?;
            txn.open_table(SERVICES).map_err(db_err)?;
            txn.open_table(OPERATIONS).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        let log = FrameLog::open(&config.path).map_err(|e| open_err(&e))?;
        let names_lost = Arc::new(prepare::NamesLost::default());
        let mut store = Self {
            db: Arc::new(db),
            config,
            writer: Arc::new(Mutex::new(Writer::default())),
            preparer: Arc::new(Mutex::new(prepare::Preparer::new(Arc::clone(&names_lost)))),
            names_lost,
            open_run: Arc::new(RwLock::new(OpenRun::default())),
            blooms: Arc::new(RwLock::new(BTreeMap::new())),
            run_pairs,
            log: Arc::new(log),
        };
        store.claim_log()?;
        store.recover_log()?;
        if tables.iter().any(|t| t == FRAMES_IN_DB.name()) {
            store.move_into_log()?;
            // The moved frames' pages are free inside the file; give them back to the disk
            // (nothing else holds the database yet).
            if let Some(db) = Arc::get_mut(&mut store.db) {
                db.compact().map_err(db_err)?;
            }
        }
        store.recover()?;
        Ok(store)
    }

    /// Cuts the frame log back to what the committed locations name (see [`frame_log`]).
    fn recover_log(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let frames = txn.open_table(FRAMES).map_err(db_err)?;
        let first = first_readable(&frames, false, Some(&self.log))?;
        let last = first_readable(&frames, true, Some(&self.log))?;
        // New segments are numbered past any a location names, on disk or not.
        let named_last = first_readable(&frames, true, None)?.map(|at| at.segment);
        let named = match (&first, &last) {
            (Some(first), Some(last)) => Named::Frames { first, last },
            _ if frames.is_empty().map_err(db_err)? => Named::Nothing,
            _ => Named::Unreadable,
        };
        lock(&self.writer).appender = self.log.recover(named, named_last)?;
        Ok(())
    }

    /// Makes sure the frame log is this store's: the id the store holds (made now for a new
    /// store) against the one the log's folder holds.
    fn claim_log(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let id = {
            let mut counts = txn.open_table(COUNTS).map_err(db_err)?;
            let id = counts.get(STORE_ID).map_err(db_err)?.map(|v| v.value());
            if let Some(id) = id {
                id
            } else {
                let id =
                    u64::from_le_bytes(crate::trace::ids::IdGenerator::from_entropy().span_id());
                counts.insert(STORE_ID, id).map_err(db_err)?;
                id
            }
        };
        // The store's id committed first: a crash before the folder's is written leaves a
        // folder without one, which the next opening claims.
        txn.commit().map_err(db_err)?;
        match self.log.id()? {
            Some(theirs) if theirs != u128::from(id) => Err(self.log.other_store().into()),
            Some(_) => Ok(()),
            None => Ok(self.log.set_id(u128::from(id))?),
        }
    }

    /// A store written before the frame log: its frames and their start-index blocks move into
    /// the log, in one durable commit (a crash before it leaves the store as it was; the log's
    /// copies are then cut off by the next opening). A frame whose header is damaged cannot say
    /// which block is its own: it is dropped, and the count becomes what the moved blocks hold.
    fn move_into_log(&self) -> Result<(), StoreError> {
        let mut writer = lock(&self.writer);
        let txn = self.db.begin_write().map_err(db_err)?;
        let (mut moved, mut spans, mut damaged) = (0u64, 0u64, 0u64);
        {
            if !txn
                .open_table(FRAMES)
                .map_err(db_err)?
                .is_empty()
                .map_err(db_err)?
            {
                // An older sockspan wrote to a store a newer one had moved: two sets of frames
                // under the same numbers.
                return Err(StoreError::Db(
                    "the store holds frames of two layouts (an older sockspan wrote to it after a \
                     newer one); move it aside"
                        .into(),
                ));
            }
            let old_frames = txn.open_table(FRAMES_IN_DB).map_err(db_err)?;
            let old_blocks = txn.open_table(BY_START_IN_DB).map_err(db_err)?;
            let mut frames = txn.open_table(FRAMES).map_err(db_err)?;
            let mut by_start = txn.open_table(BY_START).map_err(db_err)?;
            for entry in old_frames.iter().map_err(db_err)? {
                let (frame, bytes) = entry.map_err(db_err)?;
                let (frame, bytes) = (frame.value(), bytes.value());
                let Ok(header) = frame::FrameHeader::parse(bytes) else {
                    damaged += 1;
                    continue;
                };
                let key = (header.latest_start_ns, frame);
                let Some(block) = old_blocks.get(key).map_err(db_err)? else {
                    damaged += 1;
                    continue;
                };
                let block = block.value();
                let summaries = start_index::count(block);
                spans += summaries;
                let (block_at, frame_at) = writer.appender.append(
                    &self.log,
                    Part {
                        bytes: block,
                        spans: u32::try_from(summaries).unwrap_or(u32::MAX),
                        start_ns: start_index::earliest_start(block).unwrap_or(0),
                    },
                    Part {
                        bytes,
                        spans: u32::from(header.spans),
                        start_ns: header.latest_start_ns,
                    },
                )?;
                frames
                    .insert(frame, &frame_at.to_bytes()[..])
                    .map_err(db_err)?;
                by_start
                    .insert(key, &block_at.to_bytes()[..])
                    .map_err(db_err)?;
                moved += 1;
            }
            // The count becomes what the moved blocks summarise: a frame that could not be
            // moved, or a block without its frame, is no longer counted.
            txn.open_table(COUNTS)
                .map_err(db_err)?
                .insert(SPANS, spans)
                .map_err(db_err)?;
            if damaged > 0 {
                tracing::warn!(
                    frames = damaged,
                    "span store: damaged frames dropped while moving frames into the frame log"
                );
            }
        }
        txn.delete_table(FRAMES_IN_DB).map_err(db_err)?;
        txn.delete_table(BY_START_IN_DB).map_err(db_err)?;
        writer.appender.sync(&self.log)?;
        txn.commit().map_err(db_err)?;
        tracing::info!(
            frames = moved,
            "span store: frames moved into the frame log"
        );
        Ok(())
    }

    /// Loads the sealed runs' filters, rebuilds the open run from the frames newer than the last
    /// sealed run, and finds the next frame's number.
    fn recover(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let frames = txn.open_table(FRAMES).map_err(db_err)?;
        let runs = txn.open_table(RUNS).map_err(db_err)?;
        {
            let mut blooms = write(&self.blooms);
            for entry in runs.iter().map_err(db_err)? {
                let (run, bytes) = entry.map_err(db_err)?;
                let bloom = Bloom::from_bytes(bytes.value());
                if bloom.is_none() {
                    tracing::warn!(run = run.value(), "span store: damaged run filter");
                }
                blooms.insert(run.value(), bloom);
            }
        }
        let sealed = runs.last().map_err(db_err)?.map(|(run, _)| run.value());
        let last_frame = frames.last().map_err(db_err)?.map(|(f, _)| f.value());
        let next = last_frame.max(sealed).map_or(0, |n| n + 1);
        lock(&self.writer).next_frame = next;
        let mut open_run = write(&self.open_run);
        let (mut raw, mut bytes) = (Vec::new(), Vec::new());
        let from = sealed.map_or(0, |s| s + 1);
        for entry in frames.range(from..).map_err(db_err)? {
            let (frame, at) = entry.map_err(db_err)?;
            let frame = frame.value();
            if read_stored(&self.log, frame, at.value(), &mut bytes) != Read::Bytes {
                continue;
            }
            for record in records(frame, &bytes, &mut raw).unwrap_or_default() {
                open_run.insert(record.trace_id, frame);
            }
        }
        Ok(())
    }

    /// How long spans are kept.
    #[must_use]
    pub fn retention(&self) -> std::time::Duration {
        self.config.retention
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Bytes the store takes on disk: its redb file and the frame log.
    #[must_use]
    pub fn disk_bytes(&self) -> u64 {
        std::fs::metadata(&self.config.path).map_or(0, |m| m.len()) + self.log.disk_bytes()
    }

    /// Spans stored now.
    #[cfg(test)]
    fn span_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(COUNTS).map_err(db_err)?;
        Ok(table.get(SPANS).map_err(db_err)?.map_or(0, |v| v.value()))
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableTableMetadata as _;

    use super::*;
    use crate::trace::{
        SpanData,
        span::{KeyValue, Resource, SpanKind, SpanStatus},
    };

    /// A SERVER span of `service` (also the frame tests' builder).
    pub(super) fn span(trace: u8, id: u8, service: &str, start: u64) -> SpanData {
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
            // Older than the retention: two hours before now. Retention goes in the order
            // spans were stored (a frame goes once all of its spans are old).
            s.write(&[span(3, 1, "old", now - 7_200_000_000_000)], true)
                .expect("old");
            s.write(
                &[
                    span(1, 1, "a", now - 10),
                    span(1, 2, "b", now - 5),
                    span(2, 1, "a", now),
                ],
                true,
            )
            .expect("write");
            assert_eq!(s.services().expect("services"), ["a", "b", "old"]);
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
            assert_eq!(seen, ["a", "b", "a", "old"], "newest first");
            assert_eq!(s.trace(&[3; 16]).expect("old").len(), 1);
            assert_eq!(s.enforce_retention(now).expect("retain"), 1);
            assert!(s.trace(&[3; 16]).expect("gone").is_empty());
        }
        let s = store(&path, 1000);
        assert_eq!(s.span_count().expect("count"), 3, "survives a reopen");
        let mut dumped = Vec::new();
        let damaged = s
            .for_each_span(|json| {
                dumped.push(serde_json::from_slice::<serde_json::Value>(json).expect("json"));
                true
            })
            .expect("dump");
        assert_eq!(damaged, 0);
        let services: Vec<&str> = dumped
            .iter()
            .filter_map(|s| s["resource"]["service.name"].as_str())
            .collect();
        assert_eq!(services, ["a", "b", "a"], "every span, in the order stored");
        let _ = std::fs::remove_dir_all(&dir);
    }

    pub(super) fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("sockspan-store-{name}-{}", std::process::id()))
            .join("t.redb")
    }

    /// Span `i` of trace `i % 97`, with a service and id of its own.
    pub(super) fn numbered(i: u32, start: u64) -> SpanData {
        let mut s = span(0, 0, "svc", start);
        s.trace_id = [0; 16];
        s.trace_id[..4].copy_from_slice(&(i % 97).to_be_bytes());
        s.span_id[..4].copy_from_slice(&i.to_be_bytes());
        s
    }

    pub(super) fn span_ids(spans: &[serde_json::Value]) -> Vec<String> {
        let mut ids: Vec<String> = spans
            .iter()
            .filter_map(|s| s["span_id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    }

    pub(super) fn trace_of(trace: u32) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&trace.to_be_bytes());
        id
    }

    /// The span ids of `trace` among `spans`, sorted, as the store returns them.
    pub(super) fn expected_ids(spans: &[SpanData], trace: u32) -> Vec<String> {
        let mut ids: Vec<String> = spans
            .iter()
            .filter(|s| s.trace_id == trace_of(trace))
            .map(|s| {
                crate::trace::ids::HexId::new(&s.span_id)
                    .as_str()
                    .to_string()
            })
            .collect();
        ids.sort();
        ids
    }

    pub(super) const NOW: u64 = 10_000_000_000_000;

    /// 3000 numbered spans written 110 at a time into a new store with runs of 500 pairs, so
    /// several runs are sealed and some pairs stay open.
    pub(super) fn filled(name: &str, max_spans: u64) -> (Store, Vec<SpanData>) {
        let path = temp_path(name);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
        let config = StoreConfig {
            path,
            retention: Duration::from_hours(1),
            max_spans,
        };
        let spans: Vec<SpanData> = (0..3000).map(|i| numbered(i, NOW + u64::from(i))).collect();
        let s = Store::open_with_run_pairs(config, 500).expect("open");
        for chunk in spans.chunks(110) {
            s.write(chunk, false).expect("write");
        }
        s.write(&[], true).expect("durable");
        (s, spans)
    }

    #[test]
    fn traces_are_found_across_sealed_runs_the_open_run_and_a_reopen() {
        let (s, mut spans) = filled("runs", 1_000_000);
        let runs = s.blooms.read().expect("lock").len();
        assert!(runs >= 4, "{runs} sealed runs");
        assert!(s.open_run.read().expect("lock").len() > 0, "an open run");
        for trace in [0, 5, 96] {
            assert_eq!(
                span_ids(&s.trace(&trace_of(trace)).expect("trace")),
                expected_ids(&spans, trace)
            );
        }
        assert!(s.trace(&[0xee; 16]).expect("absent").is_empty());
        let config = s.config.clone();
        drop(s);
        // After a reopen the filters are loaded and the open run rebuilt from the frames.
        let s = Store::open_with_run_pairs(config, 500).expect("reopen");
        assert_eq!(s.blooms.read().expect("lock").len(), runs);
        assert!(s.open_run.read().expect("lock").len() > 0);
        for trace in [1, 50] {
            assert_eq!(
                span_ids(&s.trace(&trace_of(trace)).expect("trace")),
                expected_ids(&spans, trace)
            );
        }
        // New frames after a reopen do not reuse numbers the old ones have.
        let late = numbered(97 * 40 + 3, NOW + 5000);
        s.write(std::slice::from_ref(&late), true).expect("write");
        spans.push(late);
        assert_eq!(
            span_ids(&s.trace(&trace_of(3)).expect("trace")),
            expected_ids(&spans, 3)
        );
        assert_eq!(s.span_count().expect("count"), 3001);
        let _ = std::fs::remove_dir_all(s.path().parent().expect("dir"));
    }

    #[test]
    fn a_frame_with_a_damaged_location_leaves_no_summary_or_count_behind() {
        let path = temp_path("damaged-header");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
        let s = store(&path, 1000);
        let old = NOW - 7_200_000_000_000;
        // The first frame holds the latest starts, so only its own (unreadable) header could
        // say where its start-index entry is.
        for batch in 0..3u32 {
            let base = if batch == 0 { old + 10_000 } else { old };
            let spans: Vec<SpanData> = (0..64)
                .map(|i| numbered(batch * 64 + i, base + u64::from(batch * 64 + i)))
                .collect();
            s.write(&spans, true).expect("write");
        }
        assert_eq!(s.span_count().expect("count"), 192);
        // Frame 0's location damaged (a value of another size).
        {
            let txn = s.db.begin_write().expect("write");
            txn.open_table(FRAMES)
                .expect("frames")
                .insert(0, &[0xffu8; 8][..])
                .expect("damage");
            txn.commit().expect("commit");
        }
        // All three are past the retention; the damaged one goes with them, and its summaries
        // with it, though its header cannot say how many spans it had.
        s.enforce_retention(NOW).expect("retain");
        assert_eq!(s.span_count().expect("count"), 0);
        let mut left = 0;
        s.scan(0, u64::MAX, |_| {
            left += 1;
            true
        })
        .expect("scan");
        assert_eq!(left, 0, "no summary of a removed frame is left");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn retention_by_count_drops_frames_their_summaries_and_dead_runs() {
        let (s, spans) = filled("retention", 1000);
        let removed = s.enforce_retention(NOW).expect("retain");
        let left = s.span_count().expect("count");
        assert_eq!(left + removed, 3000);
        // At most max-spans are kept; whole frames go, so up to a frame fewer.
        assert!(
            (1000 - FRAME_SPANS_U64..=1000).contains(&left),
            "{left} left"
        );
        let mut oldest = u64::MAX;
        s.scan(0, u64::MAX, |sum| {
            oldest = oldest.min(sum.start_ns);
            true
        })
        .expect("scan");
        assert!(oldest >= NOW + 3000 - left - FRAME_SPANS_U64, "{oldest}");
        let txn = s.db.begin_read().expect("read");
        let first_frame = txn
            .open_table(FRAMES)
            .expect("frames")
            .first()
            .expect("first")
            .map(|(f, _)| f.value())
            .expect("some frame");
        for run in txn.open_table(RUNS).expect("runs").iter().expect("iter") {
            assert!(
                run.expect("run").0.value() >= first_frame,
                "a dead run was kept"
            );
        }
        drop(txn);
        assert!(
            s.blooms
                .read()
                .expect("lock")
                .keys()
                .all(|&run| run >= first_frame),
            "a dead run's filter was kept"
        );
        // A trace keeps the spans still stored, and only those.
        let kept = s.trace(&trace_of(96)).expect("trace");
        assert!(!kept.is_empty() && kept.len() < expected_ids(&spans, 96).len());
        // A second call finds nothing more to do.
        assert_eq!(s.enforce_retention(NOW).expect("retain"), 0);
        let _ = std::fs::remove_dir_all(s.path().parent().expect("dir"));
    }

    const FRAME_SPANS_U64: u64 = frame::FRAME_SPANS as u64;

    #[test]
    fn scans_merge_frames_into_exact_newest_first_order() {
        let path = temp_path("scan-merge");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
        let s = store(&path, 1_000_000);
        // Spans arrive in end order, so a frame's starts spread widely and frames overlap: span
        // i starts at a pseudo-random point up to 50 000 ns before its arrival.
        let mut starts = Vec::new();
        let mut batch = Vec::new();
        for i in 0..2_000u32 {
            let arrival = 100_000 + u64::from(i) * 100;
            let start = arrival - (u64::from(i).wrapping_mul(2_654_435_761) % 50_000);
            starts.push(start);
            batch.push(numbered(i, start));
            if batch.len() == 150 {
                s.write(&batch, false).expect("write");
                batch.clear();
            }
        }
        s.write(&batch, true).expect("write");
        for (from, to, limit) in [
            (0, u64::MAX, usize::MAX),
            (120_000, 180_000, usize::MAX),
            (120_000, 180_000, 37),
            (250_000, 260_000, 5),
            (400_000, 500_000, usize::MAX),
        ] {
            let mut expected: Vec<u64> = starts
                .iter()
                .copied()
                .filter(|t| (from..=to).contains(t))
                .collect();
            expected.sort_unstable_by(|a, b| b.cmp(a));
            expected.truncate(limit);
            let mut got = Vec::new();
            s.scan(from, to, |summary| {
                got.push(summary.start_ns);
                got.len() < limit
            })
            .expect("scan");
            assert_eq!(got, expected, "window {from}..={to}, limit {limit}");
        }
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn stores_of_earlier_layouts_are_refused_by_name_not_overwritten() {
        for table in EARLIER_LAYOUT_TABLES {
            let path = temp_path(&format!("layout-{table}"));
            let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
            std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
            {
                let db = Database::create(&path).expect("create");
                let txn = db.begin_write().expect("write");
                let old: TableDefinition<&[u8], &[u8]> = TableDefinition::new(table);
                txn.open_table(old)
                    .expect("table")
                    .insert(&[1u8; 24][..], &b"{}"[..])
                    .expect("insert");
                txn.commit().expect("commit");
            }
            let err = Store::open(StoreConfig {
                path: path.clone(),
                retention: Duration::from_hours(1),
                max_spans: 1000,
            })
            .err()
            .expect("refused")
            .to_string();
            assert!(
                err.contains("earlier sockspan") && err.contains("--store"),
                "{err}"
            );
            assert!(err.contains(&path.display().to_string()), "{err}");
            let db = Database::open(&path).expect("still there");
            let txn = db.begin_read().expect("read");
            let old: TableDefinition<&[u8], &[u8]> = TableDefinition::new(table);
            assert_eq!(
                txn.open_table(old).expect("table").len().expect("len"),
                1,
                "{table}: not overwritten"
            );
            drop(txn);
            drop(db);
            let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
        }
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
