// One span's details, as stored: what it is, its status, attributes, resource (the process),
// how its parent was found (the evidence), its links with their reasons, its part of the
// critical path. sockspan's spans carry no events; the panel says so rather than hide it.
"use strict";
import { esc, dur, isoTime } from "./util.js";

// What each `sockspan.parent.evidence` means (docs/spans.md, "Linking").
const EVIDENCE = {
  w3c: "the request carried a W3C traceparent header",
  b3: "the request carried a B3 header",
  b3multi: "the request carried B3 headers",
  thread: "the calling thread was serving exactly one request",
  task: "the asyncio task that made the call serves this request",
  goroutine: "the goroutine that made the call (or its spawner) serves this request",
  proxy: "a proxy forwarding exactly the request it is serving",
  connection: "the other end of the same TCP connection, same request (sequence number or stream)",
  peer: "the client's host announced this request (cross-host, --peer-port)",
  none: "no evidence: a new root",
  ambiguous: "several candidates: a new root with links to each, never a guessed parent",
};

const table = (object) => {
  const entries = Object.entries(object || {}).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return `<p class="muted">none</p>`;
  return `<table class="kv">${entries.map(([k, v]) => `<tr><td class="mono">${esc(k)}</td><td class="mono">${esc(typeof v === "string" ? v : JSON.stringify(v))}</td></tr>`).join("")}</table>`;
};

export function details(current, spanId) {
  const s = current.stored.get(spanId);
  const j = current.byId.get(spanId);
  if (!s || !j) return `<div class="details">This span is not in the stored trace any more.</div>`;
  const start = s.start_time_unix_nano / 1000;
  const length = (s.end_time_unix_nano - s.start_time_unix_nano) / 1000;
  const status = s.status.code === "ERROR"
    ? `<span class="err-text">ERROR</span>${s.status.message ? `: ${esc(s.status.message)}` : ""}`
    : esc(s.status.code);
  const evidence = s.attributes["sockspan.parent.evidence"];
  const critical = (current.critical.get(spanId) || []).reduce((sum, g) => sum + (g.end_time_unix_nano - g.start_time_unix_nano) / 1000, 0);
  const links = (s.links || []).map((l) =>
    `<tr><td><a href="/trace/${esc(l.trace_id)}" class="mono">${esc(l.trace_id.slice(0, 16))}…/${esc(l.span_id)}</a></td><td>${esc(l.reason || "")}</td></tr>`).join("");
  return `<div class="details" data-span-id="${esc(spanId)}">` +
    `<h4>${esc(s.name)} <small class="muted">${esc(s.kind)}</small></h4>` +
    `<table class="kv">` +
    `<tr><td>span id</td><td class="mono">${esc(s.span_id)}</td></tr>` +
    `<tr><td>parent</td><td class="mono">${esc(s.parent_span_id || "none (a root)")}</td></tr>` +
    `<tr><td>started</td><td>${esc(isoTime(start))}</td></tr>` +
    `<tr><td>duration</td><td>${esc(dur(length))}</td></tr>` +
    `<tr><td>status</td><td class="status">${status}</td></tr>` +
    `<tr><td>parent found by</td><td class="evidence">${evidence ? `<b>${esc(evidence)}</b>: ${esc(EVIDENCE[evidence] || "")}` : "–"}</td></tr>` +
    `<tr><td>on the critical path</td><td>${critical ? esc(dur(critical)) : "no"}</td></tr>` +
    `</table>` +
    `<h4>Attributes</h4>${table(s.attributes)}` +
    `<h4>Resource (process)</h4>${table(s.resource)}` +
    `<h4>Links</h4>${links ? `<table class="links"><tr><th>linked span</th><th>reason</th></tr>${links}</table>` : `<p class="muted">none</p>`}` +
    `<h4>Events</h4><p class="muted">none (sockspan sees requests and responses, not what happens inside)</p>` +
    `</div>`;
}
