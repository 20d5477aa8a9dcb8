//! The sink's stages' counters as the agent's own metrics (`sockspan_*` on `/metrics`).

use super::TraceSink;

impl TraceSink<'_> {
    /// The stages' counters as metrics.
    // A table of counters, one entry each: splitting it would not make it clearer.
    #[allow(clippy::too_many_lines)]
    pub(super) fn own_metrics(&self) -> Vec<crate::metrics::Own> {
        use crate::metrics::Own;
        let own = |name, help, value| Own { name, help, value };
        let kernel = self
            .probes
            .as_deref()
            .and_then(|p| p.counters().ok())
            .unwrap_or_default();
        let t = &self.tracer.stats;
        let c = &self.conntrack.stats;
        let (exported, lost) = self.exporter.counts();
        vec![
            own(
                "events_sent_total",
                "Records the kernel programs wrote to the ring.",
                kernel.get(agent_common::Counter::EventsSent),
            ),
            own(
                "ring_full_drops_total",
                "Records lost because the ring was full.",
                kernel.get(agent_common::Counter::RingFull),
            ),
            own(
                "payload_truncated_total",
                "Payloads cut at the capture limit.",
                kernel.get(agent_common::Counter::PayloadTruncated),
            ),
            own(
                "payload_read_failed_total",
                "Payload reads from user memory that failed.",
                kernel.get(agent_common::Counter::PayloadReadFailed),
            ),
            own(
                "kernel_conn_table_full_total",
                "Sockets the programs could not add to their connection table (an insert refused: a full table, `--max-conns`): their records until the next try are lost.",
                kernel.get(agent_common::Counter::ConnTableFull),
            ),
            own(
                "tail_call_failed_total",
                "Socket syscall exits lost: a tail call between the exit programs failed.",
                kernel.get(agent_common::Counter::TailCallFailed),
            ),
            own(
                "tls_unlinked_total",
                "TLS plaintext dropped: no socket known for its SSL object.",
                kernel.get(agent_common::Counter::TlsUnlinked),
            ),
            own(
                "tls_tied_by_adjacency_total",
                "OpenSSL objects on memory BIOs tied to their socket (reads before and writes after their calls agreed).",
                kernel.get(agent_common::Counter::TlsTiedByAdjacency),
            ),
            own(
                "tls_tie_disagreed_total",
                "Reads before and writes after an untied OpenSSL object's calls that named different sockets.",
                kernel.get(agent_common::Counter::TlsTieDisagreed),
            ),
            own(
                "inband_sent_total",
                "In-band mode: CLIENT requests whose first segment carried their context.",
                kernel.get(agent_common::Counter::InbandSent),
            ),
            own(
                "inband_adopted_total",
                "In-band mode: SERVER requests whose first segment carried a context.",
                kernel.get(agent_common::Counter::InbandAdopted),
            ),
            own(
                "inband_unsure_total",
                "In-band mode: CLIENT requests sent without a context (their thread served several requests, or its process is not one whose threads serve one at a time).",
                kernel.get(agent_common::Counter::InbandUnsure),
            ),
            own(
                "inband_ask_total",
                "In-band mode with peer messages: CLIENT requests whose trace the kernel could not tell, sent with their span id and this agent's address for the server's agent to ask.",
                kernel.get(agent_common::Counter::InbandAsk),
            ),
            own(
                "inband_conn_sent_total",
                "In-band mode with peer messages: writes on HTTP/2 connections whose first segment named this agent and the connection, for the server's agent to ask about each stream.",
                kernel.get(agent_common::Counter::InbandConnSent),
            ),
            own(
                "inband_conn_received_total",
                "In-band mode: HTTP/2 connections served here whose client's segments named its agent (each new token once).",
                kernel.get(agent_common::Counter::InbandConnReceived),
            ),
            own(
                "inband_no_room_total",
                "In-band mode: request segments without room for the option.",
                kernel.get(agent_common::Counter::InbandNoRoom),
            ),
            own("connections_opened_total", "Connections tracked.", c.opened),
            own(
                "connections_seen_in_use_total",
                "Connections first seen at a data syscall, not at their opening, that were not open at start-up: the programs lost their opening and announced them again; what they carried before was not seen.",
                c.seen_in_use,
            ),
            own(
                "connections_evicted_total",
                "Connections dropped from the table (idle or full).",
                c.evicted_idle + c.evicted_full,
            ),
            own(
                "connections_rediscovered_total",
                "Connections the agent did not know (opening lost to a full ring, or evicted) that the programs were told to forget and announce again at their next syscall.",
                self.feedback.rediscovered,
            ),
            own(
                "head_budget_drops_total",
                "Request or response heads dropped by the memory budget.",
                crate::protocol::budget::HEADS.refusals(),
            ),
            own(
                "http1_heads_remembered_total",
                "HTTP/1 heads answered from the heads parsed before (same bytes: a connection's other end on this host, a repeated request), not parsed again.",
                crate::protocol::http1::head_cache::remembered_total(),
            ),
            own(
                "protocol_given_up_total",
                "Connections whose protocol parser gave up.",
                self.protocols.stats.given_up,
            ),
            own("spans_started_total", "Spans opened.", t.spans_started),
            own(
                "spans_exported_total",
                "Spans handed to the exporter.",
                exported,
            ),
            own(
                "spans_export_failed_total",
                "Spans the exporter lost.",
                lost,
            ),
            own(
                "spans_dropped_full_total",
                "Spans not started: the span table was full.",
                t.dropped_full,
            ),
            own(
                "spans_abandoned_total",
                "Open spans dropped with their connection.",
                t.abandoned,
            ),
            own(
                "spans_held",
                "Spans held now (open or waiting for export).",
                self.tracer.held() as u64,
            ),
            own(
                "spans_shed_total",
                "Spans dropped with their trace by the budget's shedding (kept traces stay whole).",
                t.spans_shed,
            ),
            own(
                "hidden_work_refusals_total",
                "Requests of threads serving a shed request that took no parent by thread or proxy.",
                t.hidden_work_refusals,
            ),
            own(
                "shed_syscalls_total",
                "Data syscalls on shed connections: neither copied nor sent.",
                kernel.get(agent_common::Counter::ShedSyscalls),
            ),
            own(
                "budget_keep_permille",
                "Share of edge connections the budget keeps, in thousandths (1000: all).",
                self.budget_stats()
                    .map_or(1000, |_| self.shedder_keep_permille()),
            ),
            own(
                "budget_connections_shed_total",
                "Connection ends the budget shed.",
                self.budget_stats().map_or(0, |b| b.connections_shed),
            ),
            own(
                "budget_openings_shed_total",
                "Connection ends the budget shed from their opening (processes that start every trace they are in; also counted in budget_connections_shed_total).",
                self.budget_stats().map_or(0, |b| b.openings_shed),
            ),
            own(
                "budget_connections_resumed_total",
                "Shed connection ends the budget resumed.",
                self.budget_stats().map_or(0, |b| b.connections_resumed),
            ),
            own(
                "budget_cpu_millicores",
                "The agent's CPU use over the budget's last look, thousandths of a core.",
                self.budget_stats().map_or(0, |b| b.cpu_millicores),
            ),
            own(
                "budget_ring_fill_permille",
                "How full the event ring was at its fullest over the budget's last look, in thousandths (from 250, where the programs wake the agent, to 500 the budget's pressure goes from 0 to 1: above it, it sheds as if over its CPU limit).",
                self.budget_stats().map_or(0, |b| b.ring_fill_permille),
            ),
            own(
                "budget_ring_cuts_total",
                "Cuts of the share the budget made because the ring filled (the agent fell behind).",
                self.budget_stats().map_or(0, |b| b.ring_cuts),
            ),
            own("roots_total", "Spans that started a trace.", t.roots),
            own(
                "links_ambiguous_total",
                "Spans given links instead of a parent.",
                t.ambiguous,
            ),
            own(
                "parent_from_header_total",
                "Parents from trace-context headers.",
                t.parent_from_header,
            ),
            own(
                "parent_from_connection_total",
                "Parents from the other end of a connection.",
                t.parent_from_connection,
            ),
            own(
                "parent_from_thread_total",
                "Parents from the thread rule.",
                t.parent_from_thread,
            ),
            own(
                "parent_from_goroutine_total",
                "Parents from the goroutine rule.",
                t.parent_from_goroutine,
            ),
            own(
                "parent_from_task_total",
                "Parents from the asyncio task rule.",
                t.parent_from_task,
            ),
            own(
                "parent_from_callback_total",
                "Parents from the Node.js callback rule.",
                t.parent_from_callback,
            ),
            own(
                "parent_from_worker_total",
                "Parents from the worker rule (a multiplexing server's worker thread).",
                t.parent_from_worker,
            ),
            own(
                "worker_calls_unparented_total",
                "Calls of multiplexing servers' worker threads that waited for the thread's next \
                 answer and got no parent from it.",
                self.tracer.worker_stats().refused,
            ),
            own(
                "node_calls_outside_callbacks_total",
                "Node.js client calls made outside any socket's callback (timers): no parent.",
                self.tracer.callbacks.stats.outside,
            ),
            own(
                "parent_from_proxy_total",
                "Parents from the proxy rule.",
                t.parent_from_proxy,
            ),
            own(
                "resident_memory_peak_kib",
                "The agent's peak resident memory.",
                crate::process::own_peak_rss_kib(),
            ),
            own(
                "resident_memory_kib",
                "The agent's resident memory now.",
                crate::process::own_rss_kib(),
            ),
            own(
                "cpu_milliseconds_total",
                "CPU time the agent used, user and system.",
                crate::process::own_cpu_ms(),
            ),
        ]
        .into_iter()
        .chain(self.exporter.own_metrics())
        .chain(self.pods.iter().flat_map(|pods| pods.own_metrics()))
        .collect()
    }
}
