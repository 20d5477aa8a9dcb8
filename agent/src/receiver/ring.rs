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
//! may write); page 1 the producer position; then the data pages, mapped twice in a row so that a
//! record that wraps around the end reads as one contiguous slice. Each record starts on an
//! 8-byte boundary with an 8-byte header whose first word is the length, with a busy bit while
//! the producer writes it and a discard bit if it gave the space back.

use std::{
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
    /// The producer page and the data pages twice, read-only.
    producer: Mapping,
    page: usize,
    mask: usize,
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
        let producer = Mapping::new(fd, page + 2 * size, libc::PROT_READ, page, "data pages")?;
        let mut ring = Self {
            map,
            consumer,
            producer,
            page,
            mask: size - 1,
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
        // SAFETY: `offset` is inside the first copy of the data pages and 8-byte aligned (every
        // position is); the kernel commits the header with a fully ordered exchange, paired with
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
    pub fn drain(&mut self, limit: usize, mut on_record: impl FnMut(&[u8])) -> Drained {
        let mut handed = 0;
        loop {
            if handed >= limit {
                self.publish();
                return Drained::BatchFull;
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
            let Some(start) = self.record_start(len) else {
                // Cannot happen with a sane kernel; never read outside the mapping.
                self.resyncs += 1;
                self.pos = self.producer_pos;
                self.publish();
                return Drained::Empty;
            };
            if header & DISCARD_BIT == 0 {
                // SAFETY: `record_start` checked that `start .. start + len` lies inside the
                // mapping; the kernel does not reuse this space before `publish` moves past it,
                // which happens only after `on_record` returns and the slice is gone.
                let record = unsafe { std::slice::from_raw_parts(start.as_ptr(), len) };
                on_record(record);
                handed += 1;
            }
            self.pos += (HEADER_BYTES + len).next_multiple_of(8);
            if self.pos - self.published >= self.publish_every {
                self.publish();
            }
        }
    }

    /// Where the payload of a `len`-byte record at the current position starts, if it fits in
    /// the mapping.
    fn record_start(&self, len: usize) -> Option<NonNull<u8>> {
        let offset = self.page + (self.pos & self.mask) + HEADER_BYTES;
        if len > self.mask || offset + len > self.producer.len {
            return None;
        }
        // SAFETY: `offset` is inside the producer mapping (checked above).
        Some(unsafe { self.producer.ptr.add(offset) })
    }
}

impl AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}
