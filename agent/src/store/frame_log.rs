//! The frame log: the compressed frames themselves, appended to segment files beside the
//! store's redb file; redb keeps where each frame is ([`LogAt`]) and the indexes.
//!
//! Why not in redb: a frame (tens of KiB raw, a few compressed) is a value larger than a page,
//! and redb, copy-on-write, allocated pages for each one, rebuilt the B-tree's branch above it
//! and wrote it through its page cache. `perf` of `sockspan run` (default store) under wrk
//! against nginx: redb's page allocation, B-tree building, commit and page writes were about
//! two thirds of the store writer's CPU. The same held for each frame's start-index block (a few
//! KiB). An append to a file is one `pwrite` per batch; redb keeps a 36-byte location ([`LogAt`])
//! of each.
//!
//! Files: `<store>.frames/<segment, 20 digits>.seg`. Segments are numbered in the order they are
//! made; a segment takes frames until it reaches [`SEGMENT_BYTES`]. Retention deletes a segment
//! once every frame in it is gone, so the disk is given back a segment at a time.
//!
//! A frame's start-index block is written just before it, in the same segment, so the last
//! frame named ends the log and a segment holds everything of its frames.
//!
//! Crash safety: a batch's frames are written before the commit that names them, and every
//! durable commit (a durable write, retention) first syncs the segments written since the last
//! one (and the folder, when a segment was made). Opening cuts the last named segment back to the
//! end of its last named frame, and deletes the segments before the first named one and after
//! the last; bytes a commit never named are cut or overwritten. Each location holds its record's
//! CRC-32, so damage on disk is found, reported and skipped. The folder holds the store's id, so
//! a log is never taken for another store's (a store file moved aside, a new one made).

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{frame::array, lock};

/// A segment takes no more frames once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Segment files a reader keeps open at most (a trace's frames are usually in one or two).
const READERS_KEPT: usize = 16;
/// Bytes a batch gathers before they are written out (a migration's batch is a whole store,
/// written a few MiB at a time).
const PENDING_BYTES: usize = 4 * 1024 * 1024;
/// The largest record a location may claim: a frame's byte budget compressed at worst, and its
/// block, with room to spare. A larger claim is damage, and is not trusted with an allocation.
const MAX_RECORD_BYTES: u32 = 16 * 1024 * 1024;
/// Spans a record holds or summarises at most (a frame's, [`super::frame::FRAME_SPANS`]).
const MAX_SPANS: u32 = super::frame::FRAME_SPANS as u32;
/// The file in the log's folder naming the store it belongs to.
const ID_FILE: &str = "store-id";
const SUFFIX: &str = ".seg";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("frame log {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("frame {frame}'s bytes are damaged on disk (checksum)")]
    Checksum { frame: u64 },
    #[error("frame {frame}'s bytes are missing from segment {segment} (the file is shorter)")]
    Short { frame: u64, segment: u64 },
    #[error("frame {frame}'s location claims {len} bytes, more than any frame")]
    Size { frame: u64, len: u32 },
    #[error("segment {segment} of the frame log, which holds frame {frame}, is missing")]
    Missing { frame: u64, segment: u64 },
    #[error("a record of {0} bytes is larger than a segment can hold")]
    TooLarge(usize),
    #[error(
        "an earlier sync of the frame log failed ({0}); nothing is made durable until the agent restarts"
    )]
    SyncFailed(String),
    #[error(
        "the frame log {dir} belongs to another store (its id file says so); move the folder aside, or pass --store with another path"
    )]
    OtherStore { dir: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where a frame, or a frame's start-index block, is in the log, and what retention and
/// searches need of it without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogAt {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
    /// Spans it holds (a frame) or summarises (a start-index block).
    pub spans: u32,
    /// A frame: the latest start of its spans (retention by age). A start-index block: the
    /// earliest (a search skips blocks that start after its range).
    pub start_ns: u64,
}

/// [`LogAt`]'s stored size.
pub const LOG_AT_BYTES: usize = 36;

impl LogAt {
    #[must_use]
    pub fn to_bytes(self) -> [u8; LOG_AT_BYTES] {
        let mut out = [0u8; LOG_AT_BYTES];
        out[0..8].copy_from_slice(&self.segment.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..20].copy_from_slice(&self.len.to_le_bytes());
        out[20..24].copy_from_slice(&self.crc.to_le_bytes());
        out[24..28].copy_from_slice(&self.spans.to_le_bytes());
        out[28..36].copy_from_slice(&self.start_ns.to_le_bytes());
        out
    }

    /// `None` for a value of another size (written by no sockspan).
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let b: &[u8; LOG_AT_BYTES] = bytes.try_into().ok()?;
        let u64_at = |i: usize| u64::from_le_bytes(array(&b[i..i + 8]));
        let u32_at = |i: usize| u32::from_le_bytes(array(&b[i..i + 4]));
        let at = Self {
            segment: u64_at(0),
            offset: u64_at(8),
            len: u32_at(16),
            crc: u32_at(20),
            spans: u32_at(24),
            start_ns: u64_at(28),
        };
        at.plausible().then_some(at)
    }

    /// Whether a location could have been written by the writer: no store makes 2^48 segments,
    /// a record of more than 16 MiB, or a frame of more than [`MAX_SPANS`]. Anything else is
    /// damage, never trusted to number, cut or delete segments.
    fn plausible(&self) -> bool {
        self.segment < 1 << 48
            && self.len <= MAX_RECORD_BYTES
            && self.end().is_some()
            && self.spans <= MAX_SPANS
    }

    /// Where it ends; `None` for a damaged location that would overflow.
    fn end(&self) -> Option<u64> {
        self.offset.checked_add(u64::from(self.len))
    }
}

/// The segments' folder and the files readers keep open. Shared by the writer and readers.
pub struct FrameLog {
    dir: PathBuf,
    readers: Mutex<HashMap<u64, Arc<File>>>,
    /// Segments below this are being or were deleted: a reader neither opens nor keeps them
    /// (a handle kept would hold a deleted segment's disk space).
    removed_below: AtomicU64,
}

/// The folder of the frame log of the store at `store`.
#[must_use]
pub fn dir_of(store: &Path) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push(".frames");
    store.with_file_name(name)
}

fn segment_name(segment: u64) -> String {
    format!("{segment:020}{SUFFIX}")
}

impl FrameLog {
    /// Opens (makes) the log of the store at `store`.
    ///
    /// # Errors
    /// The folder cannot be made.
    pub fn open(store: &Path) -> Result<Self, LogError> {
        let dir = dir_of(store);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Self {
            dir,
            readers: Mutex::new(HashMap::new()),
            removed_below: AtomicU64::new(0),
        })
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(segment_name(segment))
    }

    /// The segments on disk, in order.
    ///
    /// # Errors
    /// The folder cannot be read.
    pub fn segments(&self) -> Result<Vec<u64>, LogError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse().ok())
            {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Bytes the segments take.
    #[must_use]
    pub fn disk_bytes(&self) -> u64 {
        self.segments()
            .unwrap_or_default()
            .iter()
            .map(|&s| std::fs::metadata(self.path(s)).map_or(0, |m| m.len()))
            .sum()
    }

    /// Reads frame `frame` at `at` into `out`. `Ok(false)`: its segment is gone (retention
    /// took it after the caller's snapshot).
    ///
    /// # Errors
    /// The bytes cannot be read, are short or fail their checksum.
    pub fn read(&self, frame: u64, at: &LogAt, out: &mut Vec<u8>) -> Result<bool, LogError> {
        if at.len > MAX_RECORD_BYTES {
            return Err(LogError::Size { frame, len: at.len });
        }
        let Some(file) = self.reader(frame, at.segment)? else {
            return Ok(false);
        };
        out.clear();
        out.resize(at.len as usize, 0);
        match file.read_exact_at(out, at.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(LogError::Short {
                    frame,
                    segment: at.segment,
                });
            }
            Err(e) => return Err(io_err(&self.path(at.segment))(e)),
        }
        if crc32fast::hash(out) != at.crc {
            return Err(LogError::Checksum { frame });
        }
        Ok(true)
    }

    /// The open file of `segment` (holding `frame`): `None` when retention deleted it (below
    /// the watermark); missing all the same (lost, deleted by hand) is an error.
    fn reader(&self, frame: u64, segment: u64) -> Result<Option<Arc<File>>, LogError> {
        let mut readers = lock(&self.readers);
        // Under the lock `remove_before` takes before it deletes: a segment opened here after
        // its watermark moved is not kept.
        if segment < self.removed_below.load(Ordering::Acquire) {
            return Ok(None);
        }
        if let Some(file) = readers.get(&segment) {
            return Ok(Some(Arc::clone(file)));
        }
        let path = self.path(segment);
        let file = match File::open(&path) {
            Ok(file) => Arc::new(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LogError::Missing { frame, segment });
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        if readers.len() >= READERS_KEPT {
            readers.clear();
        }
        readers.insert(segment, Arc::clone(&file));
        Ok(Some(file))
    }

    /// Whether a reader keeps `segment` open (tests).
    #[cfg(test)]
    pub fn keeps_open(&self, segment: u64) -> bool {
        lock(&self.readers).contains_key(&segment)
    }

    /// Deletes every segment numbered below `keep_from`; returns how many.
    ///
    /// # Errors
    /// The folder cannot be read, or a segment not deleted.
    pub fn remove_before(&self, keep_from: u64) -> Result<usize, LogError> {
        {
            let mut readers = lock(&self.readers);
            self.removed_below.fetch_max(keep_from, Ordering::AcqRel);
            readers.retain(|&s, _| s >= keep_from);
        }
        let mut removed = 0;
        for segment in self.segments()? {
            if segment >= keep_from {
                break;
            }
            let path = self.path(segment);
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(removed)
    }

    /// The id of the store this log belongs to, if its folder says.
    ///
    /// # Errors
    /// The id file cannot be read.
    pub fn id(&self) -> Result<Option<u128>, LogError> {
        let path = self.dir.join(ID_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(u128::from_str_radix(text.trim(), 16).ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Marks the log as `store`'s, durably.
    ///
    /// # Errors
    /// The id file cannot be written.
    pub fn set_id(&self, store: u128) -> Result<(), LogError> {
        let path = self.dir.join(ID_FILE);
        let file = File::create(&path).map_err(io_err(&path))?;
        file.write_all_at(format!("{store:032x}\n").as_bytes(), 0)
            .and_then(|()| file.sync_all())
            .and_then(|()| File::open(&self.dir)?.sync_all())
            .map_err(io_err(&path))
    }

    /// The refusal for a log that belongs to another store.
    #[must_use]
    pub fn other_store(&self) -> LogError {
        LogError::OtherStore {
            dir: self.dir.display().to_string(),
        }
    }

    /// At opening: cuts the log back to what the store names (`named`; `named_last`: the last
    /// segment any location names, on disk or not, which new segments are numbered after). Segments
    /// before the first's (retention stopped before deleting them) and after the last's (made
    /// after the last durable commit) are deleted, and the last's is cut at its last frame's
    /// end. Returns the appender to go on with.
    ///
    /// # Errors
    /// The segments cannot be listed, deleted or cut.
    pub fn recover(&self, named: Named<'_>, named_last: Option<u64>) -> Result<Appender, LogError> {
        let segments = self.segments()?;
        // Never a number a location names, even of a segment gone missing.
        let next = segments
            .last()
            .copied()
            .max(named_last)
            .map_or(0, |s| s.saturating_add(1));
        let (first, last) = match named {
            Named::Nothing => {
                // All of them: every segment on disk is numbered below `next`.
                self.remove_before(next)?;
                return Ok(Appender::new(next));
            }
            // Damaged locations, or segments missing: nothing is known to be unnamed, so nothing
            // is deleted.
            Named::Unreadable => {
                tracing::warn!(
                    dir = %self.dir.display(),
                    "span store: no frame the store names reads from its frame log (damaged, or \
                     the folder is not the store's); new frames go to a new segment"
                );
                return Ok(Appender::new(next));
            }
            Named::Frames { first, last } => (first, last),
        };
        self.remove_before(first.segment.min(last.segment))?;
        for &segment in segments.iter().filter(|&&s| s > last.segment) {
            let path = self.path(segment);
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        let path = self.path(last.segment);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Deleted by hand: what it held is reported missing when read; new frames go
                // to a new segment.
                tracing::warn!(
                    segment = last.segment,
                    "span store: a segment of the frame log is missing"
                );
                return Ok(Appender::new(next));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len = file.metadata().map_err(io_err(&path))?.len();
        let Some(end) = last.end().filter(|&end| end <= len) else {
            // Shorter than what the store names (lost, or cut by hand): appending there would
            // write over bytes named. New frames go to a new segment.
            tracing::warn!(
                segment = last.segment,
                "span store: a segment of the frame log is shorter than the store says"
            );
            return Ok(Appender::new(next));
        };
        if len > end {
            file.set_len(end).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        let mut appender = Appender::new(next);
        appender.current = Some(Current {
            segment: last.segment,
            file,
            len: end,
        });
        Ok(appender)
    }
}

/// What the store's locations name, for [`FrameLog::recover`].
#[derive(Clone, Copy)]
pub enum Named<'a> {
    /// No frame.
    Nothing,
    /// Frames, of which no location reads.
    Unreadable,
    /// The first and last frame whose locations read.
    Frames { first: &'a LogAt, last: &'a LogAt },
}

/// A record to append: its bytes, and the [`LogAt`] fields that describe it.
#[derive(Clone, Copy)]
pub struct Part<'a> {
    pub bytes: &'a [u8],
    pub spans: u32,
    pub start_ns: u64,
}

/// The segment frames are appended to now.
struct Current {
    segment: u64,
    file: File,
    len: u64,
}

/// The writer's side of the log: the segment being appended to and the batch not written yet.
/// Held under the store's writer lock.
pub struct Appender {
    current: Option<Current>,
    /// A segment takes no more frames once it holds this many bytes ([`SEGMENT_BYTES`]; tests
    /// set less).
    segment_bytes: u64,
    /// The number the next segment made takes.
    next_segment: u64,
    /// Frames of this batch, to be written at `current.len`.
    pending: Vec<u8>,
    /// Segments filled since the last sync (synced, then closed, by the next one).
    filled: Vec<File>,
    /// A segment was made since the last sync: the folder must be synced too.
    made: bool,
    /// Why a sync failed, once one has.
    sync_failed: Option<String>,
}

impl Default for Appender {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Appender {
    fn new(next_segment: u64) -> Self {
        Self {
            current: None,
            segment_bytes: SEGMENT_BYTES,
            next_segment,
            pending: Vec::new(),
            filled: Vec::new(),
            made: false,
            sync_failed: None,
        }
    }

    /// Queues a frame and its start-index block, the block first, both in one segment; they
    /// reach the file with [`Appender::write_out`]. Returns where they will be: the block's
    /// location, then the frame's.
    ///
    /// Why together and in this order: opening cuts the log at the end of the last frame, and
    /// retention deletes segments before the first frame's; neither may take a block whose
    /// frame is kept.
    ///
    /// # Errors
    /// A full segment's bytes cannot be written, or the next segment not made.
    pub fn append(
        &mut self,
        log: &FrameLog,
        block: Part<'_>,
        frame: Part<'_>,
    ) -> Result<(LogAt, LogAt), LogError> {
        if self.pending.len() >= PENDING_BYTES {
            self.write_out(log)?;
        }
        let room = self
            .current
            .as_ref()
            .filter(|c| c.len + (self.pending.len() as u64) < self.segment_bytes);
        for part in [block, frame] {
            if part.bytes.len() > MAX_RECORD_BYTES as usize {
                return Err(LogError::TooLarge(part.bytes.len()));
            }
        }
        let segment = match room {
            Some(c) => c.segment,
            None => self.next(log)?,
        };
        let block = self.queue(segment, block);
        let frame = self.queue(segment, frame);
        Ok((block, frame))
    }

    /// Queues a part [`Appender::append`] checked the size of.
    fn queue(&mut self, segment: u64, part: Part<'_>) -> LogAt {
        let written = self.current.as_ref().map_or(0, |c| c.len);
        let at = LogAt {
            segment,
            offset: written + self.pending.len() as u64,
            len: part.bytes.len() as u32,
            crc: crc32fast::hash(part.bytes),
            spans: part.spans,
            start_ns: part.start_ns,
        };
        self.pending.extend_from_slice(part.bytes);
        at
    }

    /// Writes out what is queued and makes the next segment the current one; returns its number.
    fn next(&mut self, log: &FrameLog) -> Result<u64, LogError> {
        self.write_out(log)?;
        let segment = self.next_segment;
        let path = log.path(segment);
        // A new file, never one on disk: a number in use means the numbering is wrong, and an
        // error is better than a segment emptied.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.next_segment = segment
            .checked_add(1)
            .ok_or_else(|| io_err(&log.dir)(io::Error::other("segment numbers ran out")))?;
        self.made = true;
        if let Some(old) = self.current.replace(Current {
            segment,
            file,
            len: 0,
        }) {
            self.filled.push(old.file);
        }
        Ok(segment)
    }

    /// Writes the queued frames to the segment. Before the commit naming them.
    ///
    /// # Errors
    /// The write failed; the queued frames are dropped (their write fails, and is never
    /// committed).
    pub fn write_out(&mut self, log: &FrameLog) -> Result<(), LogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = match &mut self.current {
            Some(c) => match c.file.write_all_at(&self.pending, c.len) {
                Ok(()) => {
                    c.len += self.pending.len() as u64;
                    Ok(())
                }
                Err(e) => Err(io_err(&log.path(c.segment))(e)),
            },
            // `append` makes a segment before it queues anything.
            None => Err(io_err(&log.dir)(io::Error::other("no segment to write to"))),
        };
        self.pending.clear();
        result
    }

    #[cfg(test)]
    pub fn set_segment_bytes(&mut self, bytes: u64) {
        self.segment_bytes = bytes;
    }

    /// Whether a sync has failed (nothing is made durable until a restart).
    #[must_use]
    pub fn sync_failed(&self) -> bool {
        self.sync_failed.is_some()
    }

    /// The segment appended to now (the next one made, while none is).
    #[must_use]
    pub fn segment(&self) -> u64 {
        self.current
            .as_ref()
            .map_or(self.next_segment, |c| c.segment)
    }

    /// Drops the frames of a write that failed.
    pub fn discard(&mut self) {
        self.pending.clear();
    }

    /// Makes what was written durable: before a durable commit.
    ///
    /// # Errors
    /// A sync failed.
    pub fn sync(&mut self, log: &FrameLog) -> Result<(), LogError> {
        if let Some(failed) = &self.sync_failed {
            return Err(LogError::SyncFailed(failed.clone()));
        }
        self.write_out(log)?;
        let result = self.sync_all(log);
        if let Err(err) = &result {
            // After a failed fsync the kernel may have dropped the dirty pages: a later one can
            // succeed without them. No commit may then claim durability. The filled segments'
            // handles go, so retention can still give their space back.
            self.sync_failed = Some(err.to_string());
            self.filled.clear();
        }
        result
    }

    fn sync_all(&mut self, log: &FrameLog) -> Result<(), LogError> {
        for file in &self.filled {
            file.sync_data().map_err(io_err(&log.dir))?;
        }
        self.filled.clear();
        if let Some(c) = &self.current {
            c.file.sync_data().map_err(io_err(&log.path(c.segment)))?;
        }
        if self.made {
            File::open(&log.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&log.dir))?;
            self.made = false;
        }
        Ok(())
    }
}
