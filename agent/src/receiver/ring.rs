//! The event ring read in place: the BPF ring buffer's pages mapped into the agent, each record
//! handed out as a slice of that mapping, and the consumer position given back to the kernel
//! once per batch instead of once per record.
//!
//! Why not aya's `RingBuf`: it stores the consumer position after every record. The kernel
//! loads that position twice for every record it writes (reserve checks the free space, commit
//! decides on a wake-up), so a store per consumed record pulls that cache line away from the
//! producing CPUs about once per record; each program run then waits for it. Publishing once per
//! batch leaves the line shared almost all the time.
//!
//! Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (the only page user space
//! may write); page 1 the producer position; then the data pages. The kernel offers them twice
//! in a row so that a record wrapping around the end reads as one slice, but every mapped page
//! counts in the agent's resident memory (an 8 MiB ring showed as 16 MiB of RSS), so the reader
//! maps them once and gathers the rare wrapped record into a buffer. Each record starts on an
//! 8-byte boundary with an 8-byte header whose first word is the length, with a busy bit while
//! the producer writes it and a discard bit if it gave the space back.

use std::{
    ops::Range,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence},
};

use aya::maps::MapData;

/// Bytes of a record's header (`BPF_RINGBUF_HDR_SZ`).
const HEADER_BYTES: usize = 8;
/// Set while the producer has reserved the record and not committed it.
const BUSY_BIT: u32 = 1 << 31;
/// Set when the producer discarded the record: skip it.
const DISCARD_BIT: u32 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("cannot read the event ring's size: {0}")]
    Info(String),
    #[error(
        "event ring of {bytes} bytes: the kernel wants a power of two multiple of the page size"
    )]
    Size { bytes: u32 },
    #[error("cannot map the event ring's {what} into memory: {source}")]
    Mmap {
        what: &'static str,
        source: std::io::Error,
    },
}

/// An `mmap`ed region, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(
        fd: RawFd,
        len: usize,
        prot: libc::c_int,
        offset: usize,
        what: &'static str,
    ) -> Result<Self, RingError> {
        let offset = libc::off_t::try_from(offset).map_err(|_| RingError::Mmap {
            what,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: a fresh shared mapping of the ring map's fd at an address the kernel picks; the
        // kernel checks length, offset and protection against the map and fails otherwise.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(RingError::Mmap {
                what,
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(RingError::Mmap {
            what,
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        })?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the region was mapped by `Mapping::new` with this length and nothing borrows it
        // any more: slices handed out borrow the `EventRing` that owns this mapping.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every committed record was read.
    Empty,
    /// The record limit was reached with records left.
    BatchFull,
}

/// The kernel's event ring, read in place.
pub struct EventRing {
    /// Keeps the map, and so its fd, alive for the mappings and for polling.
    map: MapData,
    /// The consumer page, read-write.
    consumer: Mapping,
    /// The producer page and the data pages once, read-only.
    producer: Mapping,
    page: usize,
    mask: usize,
    /// Where a record that wraps around the end of the data pages is put together.
    gathered: Vec<u8>,
    /// Where the next record starts.
    pos: usize,
    /// The consumer position last given to the kernel.
    published: usize,
    /// The producer position last read.
    producer_pos: usize,
    /// Consumed bytes after which the position is given back even mid-batch, so a batch of large
    /// records never holds more than this much of the ring from the producers.
    publish_every: usize,
    /// Times a record header made no sense and the reader skipped to the producer position.
    resyncs: u64,
}

impl EventRing {
    pub fn new(map: MapData) -> Result<Self, RingError> {
        let bytes = map
            .info()
            .map_err(|e| RingError::Info(e.to_string()))?
            .max_entries();
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let size = bytes as usize;
        if !size.is_power_of_two() || size < page {
            return Err(RingError::Size { bytes });
        }
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(
            fd,
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            0,
            "consumer page",
        )?;
        let producer = Mapping::new(fd, page + size, libc::PROT_READ, page, "data pages")?;
        let mut ring = Self {
            map,
            consumer,
            producer,
            page,
            mask: size - 1,
            gathered: Vec::new(),
            pos: 0,
            published: 0,
            producer_pos: 0,
            publish_every: size / 8,
            resyncs: 0,
        };
        ring.pos = ring.consumer_pos().load(Ordering::Acquire);
        ring.published = ring.pos;
        ring.producer_pos = ring.load_producer_pos();
        Ok(ring)
    }

    /// Times the reader met a header it could not follow and dropped the backlog to resync.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: the consumer page is mapped for the ring's life, page-aligned, and begins with
        // the kernel's `unsigned long consumer_pos`; the kernel reads it atomically too.
        unsafe { self.consumer.ptr.cast::<AtomicUsize>().as_ref() }
    }

    fn load_producer_pos(&self) -> usize {
        // SAFETY: as for the consumer page: the producer page begins with `producer_pos`, which
        // the kernel stores with release semantics.
        unsafe { self.producer.ptr.cast::<AtomicUsize>().as_ref() }.load(Ordering::Acquire)
    }

    /// The header word of the record at `pos`.
    fn header(&self, pos: usize) -> u32 {
        let offset = self.page + (pos & self.mask);
        // SAFETY: `offset` is inside the data pages and 8-byte aligned (every position is, and
        // the data size is a multiple of 8, so a header never wraps); the kernel commits the header with a fully ordered exchange, paired with
        // this acquire load so the record's bytes are visible once the busy bit is clear.
        unsafe { self.producer.ptr.add(offset).cast::<AtomicU32>().as_ref() }
            .load(Ordering::Acquire)
    }

    /// Gives the consumed space back to the kernel.
    fn publish(&mut self) {
        if self.published != self.pos {
            self.consumer_pos().store(self.pos, Ordering::Release);
            self.published = self.pos;
        }
    }

    /// Whether a committed or busy record waits at `pos`. On catching up the position is
    /// published first and the producer's looked at again after a full fence: a producer that
    /// commits concurrently either is seen here or sees the published position and wakes us.
    fn has_record(&mut self) -> bool {
        if self.pos != self.producer_pos {
            return true;
        }
        self.producer_pos = self.load_producer_pos();
        if self.pos != self.producer_pos {
            return true;
        }
        self.publish();
        fence(Ordering::SeqCst);
        self.producer_pos = self.load_producer_pos();
        self.pos != self.producer_pos
    }

    /// Hands each committed record, up to `limit`, to `on_record` as a slice of the ring.
    pub fn drain(&mut self, limit: usize, on_record: impl FnMut(&[u8])) -> Drained {
        self.drain_bounded(limit, None, on_record)
    }

    /// How full the ring is: the bytes written and not yet read, over its size (0 to 1).
    pub fn fill(&self) -> f64 {
        let used = self.load_producer_pos().wrapping_sub(self.pos);
        (used as f64 / (self.mask + 1) as f64).clamp(0.0, 1.0)
    }

    /// Where the records written so far end: [`Self::drain_until`] stops there.
    pub fn backlog_end(&self) -> usize {
        self.load_producer_pos()
    }

    /// Hands on the records that start before `end` (from [`Self::backlog_end`]), and none
    /// written after it, however fast they come.
    pub fn drain_until(&mut self, end: usize, on_record: impl FnMut(&[u8])) -> Drained {
        self.drain_bounded(usize::MAX, Some(end), on_record)
    }

    fn drain_bounded(
        &mut self,
        limit: usize,
        end: Option<usize>,
        mut on_record: impl FnMut(&[u8]),
    ) -> Drained {
        let mut handed = 0;
        loop {
            if handed >= limit {
                self.publish();
                return Drained::BatchFull;
            }
            if end.is_some_and(|end| end.wrapping_sub(self.pos) as isize <= 0) {
                self.publish();
                return Drained::Empty;
            }
            if !self.has_record() {
                return Drained::Empty;
            }
            let mut header = self.header(self.pos);
            if header & BUSY_BIT != 0 {
                // Reserved, not committed yet. Publish and look again, for the same reason as
                // in `has_record`; if still busy, its producer will wake us or the timer will.
                self.publish();
                fence(Ordering::SeqCst);
                header = self.header(self.pos);
                if header & BUSY_BIT != 0 {
                    return Drained::Empty;
                }
            }
            let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
            let advance = (HEADER_BYTES + len).next_multiple_of(8);
            if advance > self.producer_pos.wrapping_sub(self.pos) {
                // A record reaching past what the producer has written: cannot happen with a sane
                // kernel. Skipping to the producer keeps every read inside the mapping and never
                // gives the kernel a consumer position ahead of its own.
                self.resyncs += 1;
                self.pos = self.producer_pos;
                self.publish();
                return Drained::Empty;
            }
            if header & DISCARD_BIT == 0 {
                let start = (self.pos & self.mask) + HEADER_BYTES;
                let (head, tail) = record_parts(start, len, self.mask + 1);
                if tail.is_empty() {
                    // SAFETY: a committed record the kernel does not reuse before `publish`
                    // moves past it, which happens only after `on_record` returns.
                    on_record(unsafe { self.data(head) });
                } else {
                    let mut gathered = std::mem::take(&mut self.gathered);
                    gathered.clear();
                    // SAFETY: as above, both parts of one committed record.
                    unsafe {
                        gathered.extend_from_slice(self.data(head));
                        gathered.extend_from_slice(self.data(tail));
                    }
                    on_record(&gathered);
                    self.gathered = gathered;
                }
                handed += 1;
            }
            // Positions are the kernel's free-running counters: they wrap, as the kernel's do.
            self.pos = self.pos.wrapping_add(advance);
            if self.pos.wrapping_sub(self.published) >= self.publish_every {
                self.publish();
            }
        }
    }

    /// The data pages' bytes in `range`.
    ///
    /// # Safety
    /// `range` must lie in one committed record that has not been published yet: the kernel
    /// writes no byte of it until then.
    unsafe fn data(&self, range: Range<usize>) -> &[u8] {
        debug_assert!(range.end <= self.mask + 1);
        // SAFETY: `range` is inside the data pages (`record_parts` keeps both parts below the
        // data size), which are mapped for the ring's life; the caller vouches for the bytes.
        unsafe {
            std::slice::from_raw_parts(
                self.producer.ptr.add(self.page + range.start).as_ptr(),
                range.len(),
            )
        }
    }
}

/// The data-page ranges of a `len`-byte record starting `start` bytes into data pages of `size`
/// bytes: all of it before the end, or the part up to the end and the rest from the beginning.
fn record_parts(start: usize, len: usize, size: usize) -> (Range<usize>, Range<usize>) {
    if start + len <= size {
        (start..start + len, 0..0)
    } else {
        (start..size, 0..start + len - size)
    }
}

impl AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::record_parts;

    #[test]
    fn records_split_only_where_they_cross_the_end() {
        assert_eq!(record_parts(8, 100, 4096), (8..108, 0..0));
        assert_eq!(record_parts(3992, 104, 4096), (3992..4096, 0..0));
        assert_eq!(record_parts(4000, 100, 4096), (4000..4096, 0..4));
        // A header in the last 8 bytes: the whole payload is at the beginning.
        assert_eq!(record_parts(4096, 100, 4096), (4096..4096, 0..100));
    }
}
