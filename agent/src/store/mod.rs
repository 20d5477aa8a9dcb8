//! The embedded span store: spans on disk (redb), indexed by start time, trace id, service and
//! operation, with retention by age and by count. The pipeline writes while the query API reads
//! (MVCC).
//!
//! Spans are written in compressed frames under an increasing sequence number ([`frame`]), so a
//! commit appends instead of touching a page per span; the index by start time has an entry per
//! frame and appends too (spans end, and so arrive, roughly in start order; [`start_index`]);
//! the index by trace id is a small log-structured tree ([`trace_index`]).

mod bloom;
mod frame;
mod start_index;
mod trace_index;

use std::{
    collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use redb::{
    Database, Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition,
    TableHandle as _,
};

use self::{
    bloom::Bloom,
    frame::{FrameBuilder, FrameHeader},
    start_index::StartBlock,
    trace_index::{OpenRun, RUN_PAIRS},
};
use crate::trace::SpanData;

/// Frame sequence number → frame (see [`frame`]).
const FRAMES: TableDefinition<u64, &[u8]> = TableDefinition::new("frames");
/// (latest start of a frame's spans, ns since the epoch; frame) → a summary of each of its spans
/// ([`start_index`]).
const BY_START: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("frames_by_start");
/// Running totals: [`SPANS`], the number of spans stored (retention by count reads it), and
/// [`SPREAD`], the widest (latest − earliest start) of any frame ever written (a search for
/// spans started by `t` reads the start index up to `t` + it).
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
const SPANS: &str = "spans";
const SPREAD: &str = "spread";
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
}

impl StoreConfig {
    /// For opening an existing store to read it (`dump`, the bench): the widest retention and
    /// no span limit, so nothing a writer would enforce applies (opening never deletes).
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

/// The writer's state: the next frame's number, buffers reused from commit to commit, and what
/// the service and operation tables already hold (so a span writes them only when it adds
/// something).
#[derive(Default)]
struct Writer {
    next_frame: u64,
    frame: FrameBuilder,
    starts: StartBlock,
    pairs: Vec<([u8; 16], u64)>,
    services: HashMap<String, u64>,
    operations: HashMap<String, HashSet<String>>,
}

impl Writer {
    /// Whether `service`'s last-seen time should be written for a span ending at `end_ns`;
    /// notes it if so.
    fn service_due(&mut self, service: &str, end_ns: u64) -> bool {
        match self.services.get_mut(service) {
            Some(last) if end_ns < last.saturating_add(SERVICE_REFRESH_NS) => false,
            Some(last) => {
                *last = end_ns;
                true
            }
            None => {
                self.services.insert(service.to_string(), end_ns);
                true
            }
        }
    }

    /// Whether (`service`, `name`) is new to the operations table; notes it if so.
    fn operation_new(&mut self, service: &str, name: &str) -> bool {
        if let Some(names) = self.operations.get_mut(service) {
            if names.contains(name) {
                return false;
            }
            names.insert(name.to_string());
        } else {
            self.operations
                .insert(service.to_string(), HashSet::from([name.to_string()]));
        }
        true
    }
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

/// Writes the frame being built, and its start-index entry, as `frame`; returns the entry's
/// spread.
fn close_frame(
    writer: &mut Writer,
    frames: &mut redb::Table<u64, &[u8]>,
    by_start: &mut redb::Table<(u64, u64), &[u8]>,
    frame: u64,
) -> Result<u64, StoreError> {
    frames
        .insert(frame, writer.frame.finish())
        .map_err(db_err)?;
    let mut spread = 0;
    if let Some((latest, entry_spread, entry)) = writer.starts.finish() {
        by_start.insert((latest, frame), entry).map_err(db_err)?;
        spread = entry_spread;
    }
    writer.starts.reset();
    Ok(spread)
}

/// A summary ordered by start, for the merge in [`Store::scan`] (ties in any order).
struct Newest(SpanSummary);

impl PartialEq for Newest {
    fn eq(&self, other: &Self) -> bool {
        self.0.start_ns == other.0.start_ns
    }
}

impl Eq for Newest {}

impl PartialOrd for Newest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Newest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.start_ns.cmp(&other.0.start_ns)
    }
}

/// Shared handle; clones are cheap.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    config: StoreConfig,
    writer: Arc<Mutex<Writer>>,
    open_run: Arc<RwLock<OpenRun>>,
    /// The filter of each sealed run; `None` where a stored filter was damaged (the run is then
    /// always probed).
    blooms: Arc<RwLock<BTreeMap<u64, Option<Bloom>>>>,
    run_pairs: usize,
}

impl Store {
    pub fn open(config: StoreConfig) -> Result<Self, StoreError> {
        Self::open_with_run_pairs(config, RUN_PAIRS)
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
        let earlier_layout = db
            .begin_read()
            .map_err(db_err)?
            .list_tables()
            .map_err(db_err)?
            .any(|t| EARLIER_LAYOUT_TABLES.contains(&t.name()));
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
        let store = Self {
            db: Arc::new(db),
            config,
            writer: Arc::new(Mutex::new(Writer::default())),
            open_run: Arc::new(RwLock::new(OpenRun::default())),
            blooms: Arc::new(RwLock::new(BTreeMap::new())),
            run_pairs,
        };
        store.recover()?;
        Ok(store)
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
        let mut raw = Vec::new();
        let from = sealed.map_or(0, |s| s + 1);
        for entry in frames.range(from..).map_err(db_err)? {
            let (frame, bytes) = entry.map_err(db_err)?;
            for record in records(frame.value(), bytes.value(), &mut raw).unwrap_or_default() {
                open_run.insert(record.trace_id, frame.value());
            }
        }
        Ok(())
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Stores a batch. `durable` commits to disk now; otherwise the commit becomes durable with
    /// the next durable one (the exporter makes one every few seconds and at shutdown).
    pub fn write(&self, spans: &[SpanData], durable: bool) -> Result<(), StoreError> {
        let mut guard = lock(&self.writer);
        let writer = &mut *guard;
        // Whatever a write left half done (an error, or a panic while it held the lock) goes
        // first.
        writer.frame.reset();
        writer.starts.reset();
        writer.pairs.clear();
        let result = self.write_locked(writer, spans, durable);
        if result.is_err() {
            // Nothing of this write was committed: the caches may name what was not written,
            // and the open run holds pairs for frames that do not exist (their numbers are
            // used again by the next write).
            writer.services.clear();
            writer.operations.clear();
            let mut open_run = write(&self.open_run);
            for (trace_id, frame) in writer.pairs.drain(..) {
                open_run.remove(trace_id, frame);
            }
        }
        result
    }

    fn write_locked(
        &self,
        writer: &mut Writer,
        spans: &[SpanData],
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(db_err)?;
        let mut frame = writer.next_frame;
        let mut sealed = None;
        {
            let mut frames = txn.open_table(FRAMES).map_err(db_err)?;
            let mut by_start = txn.open_table(BY_START).map_err(db_err)?;
            let mut services = txn.open_table(SERVICES).map_err(db_err)?;
            let mut operations = txn.open_table(OPERATIONS).map_err(db_err)?;
            let mut counts = txn.open_table(COUNTS).map_err(db_err)?;
            let stored = counts.get(SPANS).map_err(db_err)?.map_or(0, |v| v.value());
            counts
                .insert(SPANS, stored + spans.len() as u64)
                .map_err(db_err)?;
            let stored_spread = counts.get(SPREAD).map_err(db_err)?.map_or(0, |v| v.value());
            let mut spread = stored_spread;
            for span in spans {
                writer.frame.push(span);
                let service = span.resource.service_name();
                writer.starts.push(span, service);
                writer.pairs.push((span.trace_id, frame));
                if writer.service_due(service, span.end_unix_nano) {
                    services
                        .insert(service, span.end_unix_nano)
                        .map_err(db_err)?;
                }
                if writer.operation_new(service, &span.name) {
                    operations
                        .insert((service, span.name.as_str()), span.kind.as_str())
                        .map_err(db_err)?;
                }
                if writer.frame.is_full() {
                    spread = spread.max(close_frame(writer, &mut frames, &mut by_start, frame)?);
                    frame += 1;
                }
            }
            if !writer.frame.is_empty() {
                spread = spread.max(close_frame(writer, &mut frames, &mut by_start, frame)?);
                frame += 1;
            }
            if spread > stored_spread {
                counts.insert(SPREAD, spread).map_err(db_err)?;
            }
            // Into the open run before the commit, so a reader never misses a committed span;
            // `pairs` keeps the ones this write added, for the caller to take back on failure.
            {
                let mut open_run = write(&self.open_run);
                writer
                    .pairs
                    .retain(|&(trace_id, f)| open_run.insert(trace_id, f));
            }
            let open_run = read(&self.open_run);
            // Sealed only by a write that added frames: the run is named by its last frame,
            // which must not be a run's name already.
            if open_run.len() >= self.run_pairs && frame > writer.next_frame {
                let run = frame - 1;
                let mut index = txn.open_table(TRACE_RUNS).map_err(db_err)?;
                let mut bloom = Bloom::with_capacity(open_run.len());
                for (trace_id, _) in open_run.iter() {
                    bloom.insert(trace_id);
                }
                open_run.for_each_block(run, |key, block| {
                    index.insert(&key[..], block).map(drop).map_err(db_err)
                })?;
                let mut runs = txn.open_table(RUNS).map_err(db_err)?;
                runs.insert(run, bloom.to_bytes().as_slice())
                    .map_err(db_err)?;
                sealed = Some((run, bloom));
            }
        }
        txn.commit().map_err(db_err)?;
        writer.next_frame = frame;
        if let Some((run, bloom)) = sealed {
            // The filter before the open run is cleared: a reader that finds the pairs gone
            // then finds the run.
            write(&self.blooms).insert(run, Some(bloom));
            write(&self.open_run).clear();
        }
        Ok(())
    }

    /// Deletes spans older than the retention, then the oldest beyond `max_spans`, a frame at a
    /// time (at most [`RETENTION_FRAMES`] per call); returns how many spans went.
    pub fn enforce_retention(&self, now_unix_ns: u64) -> Result<u64, StoreError> {
        let horizon = now_unix_ns.saturating_sub(self.config.retention.as_nanos() as u64);
        let _writer = lock(&self.writer);
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut removed = 0u64;
        let last_removed;
        {
            let mut frames = txn.open_table(FRAMES).map_err(db_err)?;
            let mut by_start = txn.open_table(BY_START).map_err(db_err)?;
            let mut counts = txn.open_table(COUNTS).map_err(db_err)?;
            let stored = counts.get(SPANS).map_err(db_err)?.map_or(0, |v| v.value());
            let excess = stored.saturating_sub(self.config.max_spans);
            let mut last_doomed = None;
            let mut latest_start = 0u64;
            for entry in frames.iter().map_err(db_err)?.take(RETENTION_FRAMES) {
                let (frame, bytes) = entry.map_err(db_err)?;
                // A frame whose header cannot be read is dropped with the old ones; its start-index
                // entry could then be keyed anywhere.
                let header = FrameHeader::parse(bytes.value()).ok();
                if header.is_none() {
                    latest_start = u64::MAX;
                }
                let (spans, latest) =
                    header.map_or((0, 0), |h| (u64::from(h.spans), h.latest_start_ns));
                if latest >= horizon && removed >= excess {
                    break;
                }
                removed += spans;
                latest_start = latest_start.max(latest);
                last_doomed = Some(frame.value());
            }
            let Some(last) = last_doomed else {
                return Ok(0);
            };
            last_removed = last;
            frames.retain_in(..=last, |_, _| false).map_err(db_err)?;
            // The totals go down by what the index held of the frames removed, so they stay the
            // index's count even where a frame's header was damaged.
            let mut indexed = 0u64;
            by_start
                .retain_in(..=(latest_start, u64::MAX), |(_, frame), entry| {
                    let doomed = frame <= last;
                    if doomed {
                        indexed += start_index::count(entry);
                    }
                    !doomed
                })
                .map_err(db_err)?;
            counts
                .insert(SPANS, stored.saturating_sub(indexed))
                .map_err(db_err)?;
            let mut runs = txn.open_table(RUNS).map_err(db_err)?;
            let mut index = txn.open_table(TRACE_RUNS).map_err(db_err)?;
            let mut gone = Vec::new();
            for entry in runs.range(..=last).map_err(db_err)? {
                gone.push(entry.map_err(db_err)?.0.value());
            }
            for run in gone {
                let (low, high) = trace_index::whole_run(run);
                index
                    .retain_in(&low[..]..=&high[..], |_, _| false)
                    .map_err(db_err)?;
                runs.remove(run).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        write(&self.blooms).retain(|&run, _| run > last_removed);
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
        // The open run first, then the filters, then the snapshot: a run sealed in between is
        // then in the filters and the snapshot, and the pairs read from memory are still right.
        let mut frames: BTreeSet<u64> = read(&self.open_run).frames_of(trace_id).collect();
        let candidates: Vec<u64> = read(&self.blooms)
            .iter()
            .filter(|(_, bloom)| bloom.as_ref().is_none_or(|b| b.may_contain(trace_id)))
            .map(|(&run, _)| run)
            .collect();
        let txn = self.db.begin_read().map_err(db_err)?;
        let index = txn.open_table(TRACE_RUNS).map_err(db_err)?;
        for run in candidates {
            let (low, high) = trace_index::blocks_up_to(run, trace_id);
            if let Some(entry) = index
                .range(&low[..]..=&high[..])
                .map_err(db_err)?
                .next_back()
            {
                let (_, block) = entry.map_err(db_err)?;
                frames.extend(trace_index::frames_in_block(block.value(), trace_id));
            }
        }
        let table = txn.open_table(FRAMES).map_err(db_err)?;
        let mut raw = Vec::new();
        let mut out = Vec::new();
        for frame in frames {
            // Retention may have taken a frame the index still names.
            let Some(bytes) = table.get(frame).map_err(db_err)? else {
                continue;
            };
            out.extend(
                records(frame, bytes.value(), &mut raw)
                    .unwrap_or_default()
                    .iter()
                    .filter(|r| r.trace_id == *trace_id)
                    .filter_map(|r| serde_json::from_slice(r.json).ok()),
            );
        }
        Ok(out)
    }

    /// Every stored span as JSON, in the order they were stored, until `f` returns false;
    /// returns how many frames did not decode (reported and skipped).
    pub fn for_each_span(&self, mut f: impl FnMut(&[u8]) -> bool) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let frames = txn.open_table(FRAMES).map_err(db_err)?;
        let mut raw = Vec::new();
        let mut damaged = 0;
        for entry in frames.iter().map_err(db_err)? {
            let (frame, bytes) = entry.map_err(db_err)?;
            let Some(records) = records(frame.value(), bytes.value(), &mut raw) else {
                damaged += 1;
                continue;
            };
            for record in records {
                if !f(record.json) {
                    return Ok(damaged);
                }
            }
        }
        Ok(damaged)
    }

    /// Span summaries started in `[start_ns, end_ns]`, newest first, calling `keep` on each
    /// until it returns false.
    ///
    /// Entries are per frame, keyed by the latest start in the frame: they are read from the
    /// newest key down, and a summary is handed out once every entry still unread has a key
    /// below its start (none of them can hold a newer span). Entries keyed after `end_ns` may
    /// hold spans in the range only up to the widest spread any frame had.
    pub fn scan(
        &self,
        start_ns: u64,
        end_ns: u64,
        mut keep: impl FnMut(SpanSummary) -> bool,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let by_start = txn.open_table(BY_START).map_err(db_err)?;
        let spread = txn
            .open_table(COUNTS)
            .map_err(db_err)?
            .get(SPREAD)
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        let mut pending = BinaryHeap::new();
        for entry in by_start
            .range((start_ns, 0)..=(end_ns.saturating_add(spread), u64::MAX))
            .map_err(db_err)?
            .rev()
        {
            let (key, value) = entry.map_err(db_err)?;
            let (latest, frame) = key.value();
            while pending
                .peek()
                .is_some_and(|p: &Newest| p.0.start_ns > latest)
            {
                if let Some(Newest(summary)) = pending.pop()
                    && !keep(summary)
                {
                    return Ok(());
                }
            }
            let value = value.value();
            let decoded = start_index::earliest_start(value).and_then(|earliest| {
                if earliest > end_ns {
                    return Ok(());
                }
                start_index::for_each_in(value, start_ns, end_ns, |s| pending.push(Newest(s)))
            });
            if let Err(err) = decoded {
                tracing::warn!(frame, "span store: {err}");
            }
        }
        while let Some(Newest(summary)) = pending.pop() {
            if !keep(summary) {
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
        let table = txn.open_table(COUNTS).map_err(db_err)?;
        Ok(table.get(SPANS).map_err(db_err)?.map_or(0, |v| v.value()))
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableTableMetadata as _;

    use super::*;
    use crate::trace::span::{KeyValue, Resource, SpanKind, SpanStatus};

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

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("sockspan-store-{name}-{}", std::process::id()))
            .join("t.redb")
    }

    /// Span `i` of trace `i % 97`, with a service and id of its own.
    fn numbered(i: u32, start: u64) -> SpanData {
        let mut s = span(0, 0, "svc", start);
        s.trace_id = [0; 16];
        s.trace_id[..4].copy_from_slice(&(i % 97).to_be_bytes());
        s.span_id[..4].copy_from_slice(&i.to_be_bytes());
        s
    }

    fn span_ids(spans: &[serde_json::Value]) -> Vec<String> {
        let mut ids: Vec<String> = spans
            .iter()
            .filter_map(|s| s["span_id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    }

    fn trace_of(trace: u32) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&trace.to_be_bytes());
        id
    }

    /// The span ids of `trace` among `spans`, sorted, as the store returns them.
    fn expected_ids(spans: &[SpanData], trace: u32) -> Vec<String> {
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

    const NOW: u64 = 10_000_000_000_000;

    /// 3000 numbered spans written 110 at a time into a new store with runs of 500 pairs, so
    /// several runs are sealed and some pairs stay open.
    fn filled(name: &str, max_spans: u64) -> (Store, Vec<SpanData>) {
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
    fn a_frame_with_a_damaged_header_leaves_no_summary_or_count_behind() {
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
        // Frame 0's header damaged on disk (format byte and all).
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
