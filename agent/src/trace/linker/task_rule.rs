//! The task rule's second half (Python asyncio): the SERVER span whose response a task wrote
//! adopts the CLIENT requests that task or its descendants made inside it, which waited for it
//! since they were seen ([`Tracer::claim_for`]).

use std::collections::hash_map::Entry;

use super::{Tracer, open::SpanKey};
use crate::conntrack::Connection;

/// The responses one task wrote, as far as the task rule needs them.
#[derive(Debug, Clone, Copy)]
pub(super) struct TaskWriter {
    /// The connection of its responses.
    conn_id: u64,
    /// When its last response ended.
    last_end: u64,
    /// It answered on two connections, or two requests at once: it is no one request's (nor
    /// one connection's) task, and names no parent.
    shared: bool,
}

impl Tracer {
    /// The task rule: the SERVER span `key` on `conn`, whose response was written by the task
    /// running in `writer`, adopts the CLIENT requests made inside it by that task or the tasks
    /// it created (see the linker's module doc, [`super`]). The writer must be the request's own
    /// task (made after the request began: uvicorn, aiohttp) or its connection's (made after the
    /// connection opened, answering nothing but that connection's requests, one after the
    /// other: asyncio streams, Sanic); a task that answers on two connections, or two requests
    /// at once, is shared from then on and names no parent.
    pub(super) fn claim_for(&mut self, key: SpanKey, conn: &Connection, writer: u64) {
        /// Writers remembered; cleared past this (a shared one may then go unnoticed once).
        const MAX_WRITERS: usize = 64 * 1024;
        let pid = conn.process.pid;
        let Some(creation) = self.tasks.creation(pid, writer) else {
            return;
        };
        let Some(server) = self.spans.get(&key) else {
            return;
        };
        let (start, end) = (
            server.start_ts,
            server.finished.as_ref().map_or(u64::MAX, |d| d.end_ts),
        );
        // Made before the connection opened: a task of the service's own (a batcher, the main
        // task), whatever it answers.
        if creation.at < start && creation.at < conn.opened_ns {
            return;
        }
        let (parent_id, parent_trace) = (server.span_id, server.trace.clone());
        if self.task_writers.len() >= MAX_WRITERS {
            self.task_writers.clear();
        }
        match self.task_writers.entry((pid, writer, creation.serial)) {
            Entry::Occupied(mut known) => {
                let known = known.get_mut();
                if known.shared {
                    return;
                }
                if known.conn_id != conn.conn_id || known.last_end > start {
                    known.shared = true;
                    self.stats.task_shared_writers += 1;
                    return;
                }
                known.last_end = end;
            }
            Entry::Vacant(none) => {
                none.insert(TaskWriter {
                    conn_id: conn.conn_id,
                    last_end: end,
                    shared: false,
                });
            }
        }
        let Some(waiting) = self.task_waiting.remove(&(pid, writer)) else {
            return;
        };
        let mut kept = Vec::new();
        for client_key in waiting {
            let Some(client) = self.spans.get_mut(&client_key) else {
                continue;
            };
            let Some(lineage) = &client.lineage else {
                continue;
            };
            let ours = lineage.contains(&(writer, creation.serial))
                && client.parent.is_none()
                && client.start_ts >= start
                && client.start_ts <= end;
            if !ours {
                kept.push(client_key);
                continue;
            }
            client.parent = Some(parent_id);
            client.evidence = "task";
            client.lineage = None;
            client.trace.join(&parent_trace);
            self.stats.parent_from_task += 1;
            self.stats.roots = self.stats.roots.saturating_sub(1);
        }
        if !kept.is_empty() {
            self.task_waiting.insert((pid, writer), kept);
        }
    }

    /// An asyncio task whose context is `child` was created in `parent` (0: unknown). Requests
    /// waiting under a context whose address a new task now has can no longer be claimed
    /// through it.
    pub fn on_py_task(&mut self, pid: u32, tid: u32, child: u64, parent: u64, ts: u64) {
        if self.tasks.spawned(pid, tid, child, parent, ts).is_some() {
            self.task_waiting.remove(&(pid, child));
        }
    }

    /// Takes span `key`, which waited for the task rule, off the lists it waited in.
    pub(super) fn stop_waiting(&mut self, pid: u32, key: SpanKey, lineage: &[(u64, u64)]) {
        for &(task, _) in lineage {
            if let Entry::Occupied(mut list) = self.task_waiting.entry((pid, task)) {
                list.get_mut().retain(|k| *k != key);
                if list.get().is_empty() {
                    list.remove();
                }
            }
        }
    }
}
