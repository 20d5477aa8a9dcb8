// The trace view: a waterfall with a time ruler, a colour per service, collapsible subtrees,
// errors marked, the critical path drawn on the bars, each client span's server/network split,
// a details panel per span, search within the trace, JSON download and compare.
"use strict";
import { $, $$, api, esc, dur, isoTime, colour, describe, kindOf, failed, parentOf, navigate, notice } from "./util.js";
import { details } from "./details.js";

let current = null; // { id, raw, trace, stored, collapsed:Set }

export async function init() {
  $("#waterfall").addEventListener("click", (e) => {
    const toggle = e.target.closest(".toggle");
    const row = e.target.closest(".span-row");
    if (!row || !current) return;
    if (toggle) {
      const id = row.dataset.spanId;
      if (current.collapsed.has(id)) current.collapsed.delete(id);
      else current.collapsed.add(id);
      return draw();
    }
    if (e.target.closest(".details")) return;
    const open = row.nextElementSibling;
    if (open && open.classList.contains("details")) return open.remove();
    row.insertAdjacentHTML("afterend", details(current, row.dataset.spanId));
  });
  $("#find-in-trace").addEventListener("input", find);
  $("#collapse-all").addEventListener("click", () => {
    if (!current) return;
    current.collapsed = new Set(current.trace.spans.filter((s) => current.children.get(s.spanID)).map((s) => s.spanID));
    draw();
  });
  $("#expand-all").addEventListener("click", () => {
    if (!current) return;
    current.collapsed.clear();
    draw();
  });
  $("#download-json").addEventListener("click", () => {
    if (!current) return;
    const blob = new Blob([JSON.stringify(current.raw, null, 2)], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `trace-${current.id}.json`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  });
  $("#compare-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const other = $("#compare-with").value.trim().toLowerCase();
    if (current && other) navigate(`/trace/${current.id}...${other}`);
  });
}

export async function open(id) {
  $("#trace-title").textContent = "";
  $("#trace-header").innerHTML = "";
  $("#waterfall").innerHTML = "";
  $("#ruler").innerHTML = "";
  $("#trace-tools").classList.add("hidden");
  notice($("#trace-notice"), "Loading…");
  let raw, path, stored;
  try {
    [raw, path, stored] = await Promise.all([
      api(`/api/traces/${encodeURIComponent(id)}`),
      api(`/api/sockspan/traces/${encodeURIComponent(id)}/critical-path`),
      api(`/api/sockspan/traces/${encodeURIComponent(id)}`),
    ]);
  } catch (e) {
    current = null;
    const missing = e.status === 404;
    return notice($("#trace-notice"), missing
      ? `Trace <code>${esc(id)}</code> is not in the store: it may be older than the store keeps (<code>--retention-hours</code>, <code>--store-max-spans</code>), or not exported yet. <a href="/search">Search</a> for it instead.`
      : `Cannot open trace <code>${esc(id)}</code>: ${esc(e.message)}`, missing ? "caution" : "problem");
  }
  notice($("#trace-notice"), "");
  $("#trace-tools").classList.remove("hidden");
  const trace = raw.data[0];
  const children = new Map();
  const byId = new Map(trace.spans.map((s) => [s.spanID, s]));
  for (const s of trace.spans) {
    const p = parentOf(s);
    if (p && byId.has(p)) children.set(p, [...(children.get(p) || []), s]);
  }
  for (const list of children.values()) list.sort((a, b) => a.startTime - b.startTime);
  const critical = new Map();
  for (const seg of path.segments) critical.set(seg.span_id, [...(critical.get(seg.span_id) || []), seg]);
  current = {
    id: trace.traceID,
    raw,
    trace,
    byId,
    children,
    critical,
    stored: new Map(stored.data.map((s) => [s.span_id, s])),
    collapsed: new Set(),
  };
  header();
  draw();
  find();
}

function depthOf(span) {
  let d = 0;
  let p = parentOf(span);
  while (p && current.byId.has(p) && d < 100) {
    d++;
    p = parentOf(current.byId.get(p));
  }
  return d;
}

function header() {
  const t = describe(current.trace);
  const depth = Math.max(...current.trace.spans.map(depthOf)) + 1;
  $("#trace-title").innerHTML = `${esc(t.name)} <small class="mono muted">${esc(t.id)}</small>`;
  $("#trace-header").innerHTML =
    `Started <b>${esc(isoTime(t.start))}</b> · Duration <b>${esc(dur(t.duration))}</b> · Services <b>${t.perService.size}</b> · ` +
    `Depth <b>${depth}</b> · Spans <b>${t.spans}</b>` + (t.errors ? ` · <b class="err-text">${t.errors} error${t.errors === 1 ? "" : "s"}</b>` : "") +
    (t.caller ? ` · called by <b>${esc(t.caller)}</b>` : "");
}

// The rows in tree order, skipping the descendants of collapsed spans.
function visible() {
  const out = [];
  const visit = (s) => {
    out.push(s);
    if (!current.collapsed.has(s.spanID)) (current.children.get(s.spanID) || []).forEach(visit);
  };
  current.trace.spans.filter((s) => !current.byId.has(parentOf(s))).sort((a, b) => a.startTime - b.startTime).forEach(visit);
  return out;
}

function draw() {
  const spans = current.trace.spans;
  const service = (s) => current.trace.processes[s.processID].serviceName;
  const t0 = Math.min(...spans.map((s) => s.startTime));
  const total = Math.max(...spans.map((s) => s.startTime + s.duration)) - t0 || 1;
  const pct = (us) => (100 * us) / total;
  $("#ruler").innerHTML = `<div>Service · operation</div><div class="ticks">${[0, 0.25, 0.5, 0.75].map((f) =>
    `<span class="tick" style="left:${f * 100}%">${esc(dur(total * f))}</span>`).join("")}<span class="tick" style="right:0;border:0">${esc(dur(total))}</span></div><div style="padding-left:8px">Time (server · network)</div>`;
  $("#waterfall").innerHTML = visible().map((s) => {
    const name = service(s);
    const kind = kindOf(s);
    const kids = current.children.get(s.spanID) || [];
    const server = kind === "client" ? kids.find((c) => kindOf(c) === "server") : null;
    const split = server ? `server ${dur(server.duration)} · network ${dur(s.duration - server.duration)}` : dur(s.duration);
    const segs = (current.critical.get(s.spanID) || []).map((g) => {
      const start = g.start_time_unix_nano / 1000 - t0;
      const width = (g.end_time_unix_nano - g.start_time_unix_nano) / 1000;
      return `<div class="critical" title="critical path: ${esc(g.owner)}" style="left:${pct(start)}%;width:${Math.max(pct(width), 0.2)}%"></div>`;
    }).join("");
    const toggle = kids.length ? `<button class="toggle" type="button" title="collapse / expand">${current.collapsed.has(s.spanID) ? "▸" : "▾"}</button>` : `<span class="toggle"></span>`;
    const hidden = current.collapsed.has(s.spanID) ? ` <small class="muted">(+${kids.length})</small>` : "";
    return `<div class="span-row${failed(s) ? " error" : ""}" data-span-id="${esc(s.spanID)}" data-service="${esc(name)}" data-kind="${esc(kind)}">` +
      `<div class="label" style="padding-left:${depthOf(s) * 14}px">${toggle}<span class="svc" style="border-color:${colour(name)}">${esc(name)}</span> <small class="muted">${esc(kind)}</small> <span class="op">${esc(s.operationName)}</span>${hidden}</div>` +
      `<div class="track"><div class="bar" style="left:${pct(s.startTime - t0)}%;width:${Math.max(pct(s.duration), 0.2)}%;background:${colour(name)}"></div>${segs}</div>` +
      `<div class="split">${split}</div></div>`;
  }).join("");
  find();
}

// Marks the spans whose service, operation or a tag value contains the text.
function find() {
  const text = $("#find-in-trace").value.trim().toLowerCase();
  $("#waterfall").classList.toggle("finding", Boolean(text));
  if (!current) return;
  let n = 0;
  for (const row of $$("#waterfall .span-row")) {
    const s = current.byId.get(row.dataset.spanId);
    const hay = [row.dataset.service, s.operationName, s.spanID, ...s.tags.map((t) => `${t.key}=${t.value}`)].join(" ").toLowerCase();
    const hit = Boolean(text) && hay.includes(text);
    row.classList.toggle("match", hit);
    if (hit) n++;
  }
  $("#find-count").textContent = text ? `${n} match${n === 1 ? "" : "es"}` : "";
}
