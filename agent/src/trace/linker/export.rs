//! The export of finished spans ([`Tracer::poll`]): what waited is settled (announcements, the
//! worker rule), then the spans whose wait is over leave the tables as [`SpanData`].

use super::{OpenSpan, Tracer};
use crate::{
    protocol::{SpanFacts, Summary as _},
    trace::{
        ids::{SpanId, TraceId},
        span::{AttrValue, KeyValue, SpanData, SpanKind},
    },
};

impl Tracer {
    /// Moves spans whose wait is over to `out`, at most `max` of them (callers export in
    /// chunks: a flush of everything held must not build every span at once); everything
    /// finished is due when `flush`. Returns whether more are due.
    pub fn poll(
        &mut self,
        now_mono: u64,
        flush: bool,
        out: &mut Vec<SpanData>,
        max: usize,
    ) -> bool {
        self.settle_before_export(now_mono, flush);
        loop {
            let key = if let Some(&key) = self.ready_now.front() {
                if out.len() >= max {
                    return true;
                }
                self.ready_now.pop_front();
                key
            } else if let Some(&(ready_at, key)) = self.ready.front() {
                if !flush && ready_at > now_mono {
                    break;
                }
                if out.len() >= max {
                    return true;
                }
                self.ready.pop_front();
                key
            } else {
                break;
            };
            if self.park(key, flush) {
                continue;
            }
            let Some(span) = self.spans.remove(&key) else {
                continue;
            };
            let span = self.span_boxes.unbox(span);
            self.unmirror(&span, key);
            if let Some(lineage) = &span.lineage {
                self.stop_waiting(span.pid, key, lineage);
            }
            let shed = span.finished.is_some() && self.shed_at_export(&span, now_mono);
            Self::decided(&span);
            if self.not_exported(key, &span, shed, now_mono) {
                continue;
            }
            let (local, remote) = span.ends();
            let Some(finished) = span.finished else {
                continue;
            };
            self.stats.spans_exported += 1;
            let end_unix_nano = self.clock.to_unix_ns(finished.end_ts);
            let (name, mut attributes, status) = finished.summary.expand(
                &SpanFacts {
                    server: span.kind == SpanKind::Server,
                    local,
                    remote,
                },
                &mut self.strings,
            );
            if span.tls {
                // The protocol's summary knows bytes, not where they were read: a TLS
                // connection's URLs are https.
                for kv in &mut attributes {
                    if kv.key == "url.scheme" {
                        kv.value = AttrValue::Str("https".into());
                    }
                }
                attributes.push(KeyValue::str("tls.protocol.name", "tls"));
            }
            attributes.extend([
                KeyValue::str(
                    "network.transport",
                    if span.datagram { "udp" } else { "tcp" },
                ),
                KeyValue::shared("network.peer.address", self.strings.ip(remote.ip())),
                KeyValue::int("network.peer.port", i64::from(remote.port())),
                KeyValue::str("sockspan.parent.evidence", span.evidence),
                KeyValue::int("thread.id", i64::from(span.tid)),
            ]);
            self.budget_attribute(&mut attributes);
            if let Some(wait) = finished.wait_ns {
                attributes.push(KeyValue::int(
                    "sockspan.response.wait_ns",
                    i64::try_from(wait).unwrap_or(i64::MAX),
                ));
            }
            // Exported, the id is known outside: it never changes from now on.
            span.trace.fix_used();
            let (trace_id, parent, links) =
                self.inband_placed(span.inband_trace, &span.trace, span.parent, span.links);
            let askable = (key, span.kind, span.span_id, span.forward);
            self.exported_askable(askable, trace_id, now_mono);
            out.push(SpanData {
                trace_id,
                span_id: span.span_id,
                parent_span_id: parent,
                links,
                kind: span.kind,
                name,
                start_unix_nano: self.clock.to_unix_ns(span.start_ts),
                end_unix_nano,
                attributes,
                status,
                resource: span.resource,
            });
        }
        false
    }

    /// A span leaving the tables is not exported when shed (counted) or never finished.
    fn not_exported(
        &mut self,
        key: super::SpanKey,
        span: &OpenSpan,
        shed: bool,
        now_mono: u64,
    ) -> bool {
        if !shed && span.finished.is_some() {
            return false;
        }
        if span.kind == SpanKind::Client {
            self.askable_gone((key, span.span_id), None, now_mono);
        }
        self.stats.spans_shed += u64::from(shed);
        true
    }

    /// A CLIENT span exported in `trace_id`: late questions about it get that trace.
    fn exported_askable(
        &mut self,
        (key, kind, span_id, forward): (super::SpanKey, SpanKind, SpanId, u64),
        trace_id: TraceId,
        now_mono: u64,
    ) {
        if kind == SpanKind::Client {
            self.askable_gone((key, span_id), Some((trace_id, forward)), now_mono);
        }
    }

    /// What waited is settled before an export: announcements, the worker rule, parked spans.
    fn settle_before_export(&mut self, now_mono: u64, flush: bool) {
        // Before any span of this export is dated: the wall clock may have been set since.
        self.clock.refresh(now_mono);
        self.announce_settled(now_mono, flush);
        self.answer_settled(now_mono, flush);
        self.remote.expire(now_mono);
        // By the events' time, but never more than a tick behind the clock (no events come
        // while the services are idle).
        let settle_at = self.last_event_ts.max(now_mono.saturating_sub(100_000_000));
        self.settle_workers(settle_at, flush);
        if !flush {
            // (At a flush, the end of events is no evidence that streams ended.)
            self.settled_by_ends_at = self.settled_by_ends_at.max(settle_at);
            self.settle_workers_by_ends(self.settled_by_ends_at);
        }
        self.unpark(flush);
    }

    /// While the budget sheds, the share of the host's edge connections it keeps: what counts
    /// spans can scale by it.
    fn budget_attribute(&self, attributes: &mut Vec<KeyValue>) {
        if self.shedding.enabled && self.shedding.keep_permille < 1000 {
            attributes.push(KeyValue::int(
                "sockspan.capture.keep_permille",
                i64::from(self.shedding.keep_permille),
            ));
        }
    }
}
