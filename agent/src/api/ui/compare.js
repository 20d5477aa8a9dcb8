// Two traces side by side, as Jaeger's trace comparison: the call trees merged by path
// (service and operation from the root down), each node with its count and mean duration in
// A and in B, coloured by what changed.
"use strict";
import { $, api, esc, dur, describe, parentOf, notice } from "./util.js";

// Joins the steps of a path (lower than any character in a name).
const SEP = "\u0001";

export async function init() {}

// Path → { count, total µs, depth } for every span of a trace.
function tree(trace) {
  const service = (s) => trace.processes[s.processID].serviceName;
  const byId = new Map(trace.spans.map((s) => [s.spanID, s]));
  const paths = new Map();
  const pathOf = (s, guard = 0) => {
    const own = `${service(s)} · ${s.operationName}`;
    const p = parentOf(s);
    return p && byId.has(p) && guard < 100 ? `${pathOf(byId.get(p), guard + 1)}${SEP}${own}` : own;
  };
  for (const s of trace.spans) {
    const key = pathOf(s);
    const node = paths.get(key) || { count: 0, total: 0, depth: key.split(SEP).length - 1, first: s.startTime };
    node.count += 1;
    node.total += s.duration;
    node.first = Math.min(node.first, s.startTime);
    paths.set(key, node);
  }
  return paths;
}

export async function open(a, b) {
  $("#compare").innerHTML = "";
  $("#compare-title").textContent = "";
  notice($("#compare-notice"), "Loading…");
  let ta, tb;
  try {
    [ta, tb] = await Promise.all([a, b].map((id) => api(`/api/traces/${encodeURIComponent(id)}`).then((r) => r.data[0])));
  } catch (e) {
    return notice($("#compare-notice"), `Cannot compare: ${esc(e.message)} (<code>${esc(a)}</code> vs <code>${esc(b)}</code>)`, "problem");
  }
  notice($("#compare-notice"), "");
  const [da, db] = [describe(ta), describe(tb)];
  $("#compare-title").innerHTML = `A <a href="/trace/${esc(da.id)}">${esc(da.name)}</a> ${esc(dur(da.duration))} · B <a href="/trace/${esc(db.id)}">${esc(db.name)}</a> ${esc(dur(db.duration))}`;
  const [pa, pb] = [tree(ta), tree(tb)];
  // The separator sorts below every character: each subtree follows its parent.
  const keys = [...new Set([...pa.keys(), ...pb.keys()])].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0));
  const rows = keys.map((key) => {
    const [x, y] = [pa.get(key), pb.get(key)];
    const mean = (n) => (n ? dur(n.total / n.count) : "–");
    const slower = x && y ? (y.total / y.count) / Math.max(x.total / x.count, 1) : 1;
    const status = !x ? "added" : !y ? "removed" : x.count !== y.count || slower > 1.5 || slower < 1 / 1.5 ? "changed" : "same";
    const node = x || y;
    const label = key.split(SEP).pop();
    return `<div class="diff-row ${status}" data-status="${status}" title="${esc(key.split(SEP).join(" › "))}">` +
      `<div style="padding-left:${node.depth * 14}px">${esc(label)}</div>` +
      `<div class="num">${x ? x.count : 0}</div><div class="num">${y ? y.count : 0}</div>` +
      `<div class="num">${mean(x)}</div><div class="num">${mean(y)}</div></div>`;
  });
  $("#compare").innerHTML = `<div class="diff-row head"><div>service · operation</div><div class="num">spans in A</div><div class="num">spans in B</div><div class="num">mean in A</div><div class="num">mean in B</div></div>` + rows.join("");
}
