// The service map as a graph: services in columns by call depth, an arrow per caller → callee
// with its rate, errors, p99 and the network's median share (sockspan sees both ends of a hop),
// and the same edges as a table. Click a service to search its traces.
"use strict";
import { $, api, esc, colour, navigate, notice } from "./util.js";

export async function init() {
  $("#map-lookback").addEventListener("change", () => navigate(`/dependencies?lookback=${$("#map-lookback").value}`));
  $("#map-graph").addEventListener("click", (e) => {
    const node = e.target.closest(".node");
    if (node) navigate(`/search?service=${encodeURIComponent(node.dataset.service)}&lookback=1h&limit=20`);
  });
}

// Room per column and row: an edge's figures fit between two boxes.
const COLUMN = 400, ROW = 110;

const f2 = (x) => (x == null ? "–" : `${x.toFixed(2)} ms`);

// Columns by the longest call chain reaching each service (cycles broken where met).
function layout(edges) {
  const names = [...new Set(edges.flatMap((e) => [e.client, e.server]))].sort();
  const out = new Map(names.map((n) => [n, []]));
  const indegree = new Map(names.map((n) => [n, 0]));
  for (const e of edges) {
    if (e.client === e.server) continue;
    out.get(e.client).push(e.server);
    indegree.set(e.server, indegree.get(e.server) + 1);
  }
  const level = new Map();
  const visit = (n, depth, path) => {
    if (path.has(n) || (level.get(n) ?? -1) >= depth) return;
    level.set(n, depth);
    path.add(n);
    for (const m of out.get(n)) visit(m, depth + 1, path);
    path.delete(n);
  };
  for (const n of names.filter((n) => indegree.get(n) === 0)) visit(n, 0, new Set());
  for (const n of names) if (!level.has(n)) visit(n, 0, new Set());
  const columns = [];
  for (const n of names) (columns[level.get(n)] ||= []).push(n);
  const place = new Map();
  columns.forEach((col, x) => col.forEach((n, y) => place.set(n, { x: 24 + x * COLUMN, y: 24 + y * ROW })));
  return { place, width: 24 + columns.length * COLUMN, height: 24 + Math.max(...columns.map((c) => c.length)) * ROW };
}

function graph(edges) {
  const { place, width, height } = layout(edges);
  const W = 170, H = 42;
  const failing = new Set(edges.filter((e) => e.errors > 0).map((e) => e.server));
  let links = "";
  const placed = [];
  for (const e of edges) {
    const a = place.get(e.client), b = place.get(e.server);
    const [x1, y1] = [a.x + W, a.y + H / 2];
    const [x2, y2] = [b.x, b.y + H / 2];
    const back = x2 <= x1;
    const d = back
      ? `M${a.x + W / 2},${a.y + H} C${a.x + W / 2},${a.y + H + 50} ${b.x + W / 2},${b.y + H + 50} ${b.x + W / 2},${b.y + H}`
      : `M${x1},${y1} C${x1 + 50},${y1} ${x2 - 50},${y2} ${x2 - 6},${y2}`;
    let [lx, ly] = back ? [(a.x + b.x) / 2 + W / 2, Math.max(a.y, b.y) + H + 44] : [(x1 + x2) / 2, (y1 + y2) / 2 - 6];
    // Edges crossing between the same columns would print their figures over each other.
    while (placed.some(([px, py]) => Math.abs(px - lx) < 170 && Math.abs(py - ly) < 26)) ly += 26;
    placed.push([lx, ly]);
    // Two short lines, so the figures fit between two columns of boxes.
    const red = `${e.rate_per_second.toFixed(2)}/s · ${(e.error_rate * 100).toFixed(1)}% err`;
    const time = `p99 ${f2(e.p99_ms)}` + (e.network_p50_ms == null ? "" : ` · net ${f2(e.network_p50_ms)}`);
    links += `<g class="link${e.errors ? " failing" : ""}" data-client="${esc(e.client)}" data-server="${esc(e.server)}"><path d="${d}" marker-end="url(#arrow)"></path>` +
      `<text x="${lx}" y="${ly - 6}" text-anchor="middle"><tspan x="${lx}">${esc(red)}</tspan><tspan x="${lx}" dy="12">${esc(time)}</tspan></text><title>${esc(e.client)} → ${esc(e.server)}: ${e.calls} calls</title></g>`;
  }
  // Each service's RED as its callers see it: requests in per second, and the failed share.
  const inbound = new Map();
  for (const e of edges) {
    const r = inbound.get(e.server) || { rate: 0, calls: 0, errors: 0 };
    r.rate += e.rate_per_second;
    r.calls += e.calls;
    r.errors += e.errors;
    inbound.set(e.server, r);
  }
  let nodes = "";
  for (const [name, p] of place) {
    const r = inbound.get(name);
    const red = r ? `${r.rate.toFixed(2)}/s in · ${((100 * r.errors) / Math.max(r.calls, 1)).toFixed(1)}% err` : "calls only";
    nodes += `<g class="node${failing.has(name) ? " failing" : ""}" data-service="${esc(name)}" transform="translate(${p.x},${p.y})">` +
      `<rect width="${W}" height="${H}" style="stroke:${colour(name)}"></rect><text x="${W / 2}" y="17" text-anchor="middle">${esc(name.length > 22 ? name.slice(0, 21) + "…" : name)}</text>` +
      `<text class="red" x="${W / 2}" y="33" text-anchor="middle">${esc(red)}</text><title>${esc(name)}</title></g>`;
  }
  const svg = $("#map-graph");
  svg.setAttribute("viewBox", `0 0 ${Math.max(width, 400)} ${height + 40}`);
  svg.style.height = `${height + 40}px`;
  svg.innerHTML = `<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#9aa3b5"></path></marker></defs>${links}${nodes}`;
}

export async function open(query) {
  const lookback = query.get("lookback") || $("#map-lookback").value || "3600";
  if ([...$("#map-lookback").options].some((o) => o.value === lookback)) $("#map-lookback").value = lookback;
  notice($("#map-notice"), "Loading…");
  let answer;
  try {
    answer = await api(`/api/sockspan/service-map?lookback=${encodeURIComponent(lookback)}`);
  } catch (e) {
    $("#map tbody").innerHTML = "";
    $("#map-graph").innerHTML = "";
    return notice($("#map-notice"), `Cannot draw the map: ${esc(e.message)}`, "problem");
  }
  const edges = answer.edges;
  $("#map-window").textContent = `rates over the ${Math.round(answer.window_seconds)} s with traffic`;
  if (!edges.length) {
    $("#map tbody").innerHTML = "";
    $("#map-graph").innerHTML = "";
    return notice($("#map-notice"), "No calls between services in this window. Edges appear once a traced process calls another (or any address).");
  }
  notice($("#map-notice"), "");
  graph(edges);
  $("#map tbody").innerHTML = edges.map((e) =>
    `<tr class="edge"><td>${esc(e.client)}</td><td>${esc(e.server)}</td><td class="num">${e.calls}</td><td class="num">${e.rate_per_second.toFixed(3)}</td>` +
    `<td class="num${e.errors ? " err-text" : ""}">${(e.error_rate * 100).toFixed(1)}%</td><td class="num">${f2(e.p50_ms)}</td><td class="num">${f2(e.p99_ms)}</td>` +
    `<td class="num">${f2(e.network_p50_ms)}</td></tr>`).join("");
}
