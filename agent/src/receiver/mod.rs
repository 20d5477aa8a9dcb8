//! Stage 2 of the pipeline: drains the kernel's event ring and hands each decoded record to the
//! next stage, in place, without copying or allocating per event.

pub mod decode;
pub mod ring;

use std::{
    future::Future,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use agent_common::{ConnEvent, DataEvent, GoProbeEvent, InbandEvent, PyTaskEvent};
use tokio::io::unix::AsyncFd;

pub use decode::Event;
pub use ring::{Drained, EventRing, RingError};

/// The next stage: gets every event, and a tick now and then for housekeeping.
pub trait EventSink {
    fn on_open(&mut self, event: &ConnEvent);
    fn on_close(&mut self, event: &ConnEvent);
    fn on_data(&mut self, event: &DataEvent, payload: &[u8]);
    /// A Go runtime probe fired; only sinks that link spans care.
    fn on_go_probe(&mut self, _event: &GoProbeEvent) {}
    /// A Python asyncio task was created; only sinks that link spans care.
    fn on_py_task(&mut self, _event: &PyTaskEvent) {}
    /// A request's first segment's trace context (the in-band mode); only sinks that link
    /// spans care.
    fn on_inband(&mut self, _event: &InbandEvent) {}
    /// The programs shed a server end at its first syscall (its client end, on this host, was
    /// shed at its opening); only sinks with a budget care.
    fn on_shed(&mut self, _event: &ConnEvent) {}
    /// Called about once per `tick` even when no events arrive.
    fn on_tick(&mut self) {}
    /// Called after each timed drain of the ring (every 10 ms), for what must not wait for a
    /// tick (messages to other hosts' agents).
    fn on_drained(&mut self) {}
    /// How full the ring was (0 to 1) when a drain began: how far the agent is behind.
    fn on_ring_fill(&mut self, _fill: f64) {}

    /// Hands a decoded record to the method for its kind.
    fn on_event(&mut self, event: &Event<'_>) {
        match event {
            Event::Open(e) => self.on_open(e),
            Event::Close(e) => self.on_close(e),
            Event::Data { event, payload } => self.on_data(event, payload),
            Event::GoProbe(e) => self.on_go_probe(e),
            Event::PyTask(e) => self.on_py_task(e),
            Event::Inband(e) => self.on_inband(e),
            Event::Shed(e) => self.on_shed(e),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("cannot poll the event ring: {0}")]
    Poll(std::io::Error),
}

/// Self-metrics of the receiver.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverStats {
    pub records: u64,
    pub decode_errors: u64,
    /// Times the ring reader met a record header it could not follow and skipped the backlog.
    pub ring_resyncs: u64,
}

/// How often the ring is drained without a wake-up: data records only wake the agent when a
/// backlog builds up (see the eBPF side), so this bounds the latency of a quiet trickle.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Reads `ring` until `stop` resolves, then drains what is left.
pub async fn run(
    ring: EventRing,
    sink: &mut impl EventSink,
    tick: Duration,
    stop: impl Future<Output = ()>,
) -> Result<ReceiverStats, ReceiverError> {
    // SAFETY: the ring owns its map fd and keeps it open, unchanged, for as long as it lives;
    // the AsyncFd owns the ring, so the fd outlives the registration.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| ReceiverError::Poll(e.into()))?;
    let mut stats = ReceiverStats::default();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain_timer = tokio::time::interval(DRAIN_INTERVAL);
    drain_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    // The first tick at once, as the ticker's own first tick would be.
    let mut last_tick = Instant::now()
        .checked_sub(tick)
        .unwrap_or_else(Instant::now);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(ReceiverError::Poll)?;
                // Readiness is cleared only once the ring is empty: a full batch leaves it set,
                // so the loop comes straight back.
                if drain(guard.get_inner_mut(), sink, &mut stats, BATCH) == Drained::Empty {
                    guard.clear_ready();
                }
                tick_if_due(&mut last_tick, tick, sink);
            }
            _ = drain_timer.tick() => {
                // Records submitted without a wake-up reach the agent only through this timer;
                // a full batch means more wait, so come back at once, not in 10 ms.
                if drain(ring.get_mut(), sink, &mut stats, BATCH) == Drained::BatchFull {
                    drain_timer.reset_immediately();
                }
                sink.on_drained();
                tick_if_due(&mut last_tick, tick, sink);
            }
            _ = ticker.tick() => tick_if_due(&mut last_tick, tick, sink),
            () = &mut stop => break,
        }
    }
    // Only what was in the ring when the stop came: the programs are still attached, and under
    // a sustained load "until empty" would never end.
    let backlog = ring.get_ref().backlog_end();
    ring.get_mut()
        .drain_until(backlog, |record| receive(record, sink, &mut stats));
    stats.ring_resyncs = ring.get_ref().resyncs();
    tracing::debug!(fd = ring.get_ref().as_raw_fd(), ?stats, "receiver stopped");
    Ok(stats)
}

/// The housekeeping tick (the budget's looks, exports), when `every` has passed since the last
/// one. Called after each drain too, not only by the ticker: while the ring never empties (an
/// agent behind its load) the drains are always ready, the task never waits, and the runtime's
/// timers were seen not to fire for 12 s (a debug build under connection churn: no look of the
/// budget, no export, 600 k records lost).
fn tick_if_due(last: &mut Instant, every: Duration, sink: &mut impl EventSink) {
    if last.elapsed() >= every {
        *last = Instant::now();
        sink.on_tick();
    }
}

/// Records handled before the loop looks at its timers again. Under a sustained load the kernel
/// refills the ring as fast as it is read; draining "until empty" then never returns, the
/// housekeeping tick starves, and finished spans pile up unexported (seen as 150 MB of held
/// spans under wrk against nginx).
const BATCH: usize = 4096;

fn drain(
    ring: &mut EventRing,
    sink: &mut impl EventSink,
    stats: &mut ReceiverStats,
    limit: usize,
) -> Drained {
    sink.on_ring_fill(ring.fill());
    ring.drain(limit, |record| receive(record, sink, stats))
}

/// Decodes one record and hands it on.
fn receive(record: &[u8], sink: &mut impl EventSink, stats: &mut ReceiverStats) {
    stats.records += 1;
    match decode::decode(record) {
        Ok(event) => sink.on_event(&event),
        Err(err) => {
            stats.decode_errors += 1;
            if stats.decode_errors.is_power_of_two() {
                tracing::warn!(
                    count = stats.decode_errors,
                    "undecodable ring record: {err}"
                );
            }
        }
    }
}
