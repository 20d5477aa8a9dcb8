// The search view: Jaeger's form (service, operation, tags, time range, durations, limit) with
// its state in the URL (`/search?…`, Jaeger's parameters), a scatter plot of the results'
// durations, and a sortable list naming each trace after its entry point.
"use strict";
import { $, $$, api, esc, dur, isoTime, ago, colour, describe, navigate, parseLogfmt, formatLogfmt, fill, notice } from "./util.js";
import { drawScatter } from "./scatter.js";

const LAST_SERVICE = "sockspan-service";
let results = [];

const LOOKBACK_US = { "5m": 300e6, "15m": 900e6, "30m": 1800e6, "1h": 3600e6, "2h": 7200e6, "6h": 21600e6, "12h": 43200e6, "24h": 86400e6, "2d": 172800e6, "7d": 604800e6 };

// <input type=datetime-local> value for µs since the epoch, in the browser's zone, and back.
const toLocalInput = (us) => {
  const d = new Date(us / 1000 - new Date(us / 1000).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 19);
};
const fromLocalInput = (text) => new Date(text).getTime() * 1000;

async function operations(service, chosen) {
  if (!service) return fill($("#operation"), [], null, "all");
  const { data } = await api(`/api/services/${encodeURIComponent(service)}/operations`);
  fill($("#operation"), data.sort(), chosen, "all");
}

export async function init() {
  $("#service").addEventListener("change", () => operations($("#service").value));
  $("#lookback").addEventListener("change", () => {
    const custom = $("#lookback").value === "custom";
    $("#custom-range").classList.toggle("hidden", !custom);
    if (custom && !$("#range-start").value) {
      const now = Date.now() * 1000;
      $("#range-start").value = toLocalInput(now - 3600e6);
      $("#range-end").value = toLocalInput(now);
    }
  });
  $("#search-form").addEventListener("submit", submit);
  $("#sort").addEventListener("change", render);
  $("#traces").addEventListener("click", (e) => {
    if (e.target.closest(".pick")) return updatePicks();
    const row = e.target.closest(".trace-row");
    if (row) navigate(`/trace/${row.dataset.traceId}`);
  });
  $("#compare-selected").addEventListener("click", () => {
    const [a, b] = $$(".pick:checked").map((p) => p.dataset.id);
    if (a && b) navigate(`/trace/${a}...${b}`);
  });
}

function updatePicks() {
  const picked = $$(".pick:checked");
  $("#compare-selected").disabled = picked.length !== 2;
}

// The form's state as Jaeger's search URL.
function submit(event) {
  event.preventDefault();
  const q = new URLSearchParams();
  const service = $("#service").value;
  if (!service) return notice($("#search-status"), "Pick a service first.", "caution");
  localStorage.setItem(LAST_SERVICE, service);
  q.set("service", service);
  if ($("#operation").value) q.set("operation", $("#operation").value);
  try {
    const tags = parseLogfmt($("#tags").value);
    if (Object.keys(tags).length) q.set("tags", JSON.stringify(tags));
  } catch (e) {
    return notice($("#search-status"), esc(e.message), "problem");
  }
  const lookback = $("#lookback").value;
  q.set("lookback", lookback);
  if (lookback === "custom") {
    const start = fromLocalInput($("#range-start").value);
    const end = fromLocalInput($("#range-end").value);
    if (!(start < end)) return notice($("#search-status"), "The custom range must start before it ends.", "problem");
    q.set("start", String(start));
    q.set("end", String(end));
  } else {
    const end = Date.now() * 1000;
    q.set("start", String(end - LOOKBACK_US[lookback]));
    q.set("end", String(end));
  }
  for (const [id, key] of [["#min-duration", "minDuration"], ["#max-duration", "maxDuration"]]) {
    if ($(id).value.trim()) q.set(key, $(id).value.trim());
  }
  q.set("limit", $("#limit").value.trim() || "20");
  navigate("/search?" + q);
}

// Shows the search the URL describes: the form filled from it, and its results.
export async function open(query) {
  const { data: services } = await api("/api/services");
  if (!services.length) {
    fill($("#service"), [], null);
    clear();
    return notice($("#search-status"), "No traces stored yet. sockspan records the requests between processes on this host: send some traffic to a service, then reload. <code>sockspan check</code> tells what this kernel lets it see.");
  }
  // The service asked for, else the one last searched; a first visit picks none (the
  // alphabetically first is as likely a browser's helper as the service that matters).
  const chosen = query.get("service") || localStorage.getItem(LAST_SERVICE);
  fill($("#service"), services, chosen, "— pick a service —");
  await operations($("#service").value, query.get("operation"));
  const tags = query.get("tags");
  try {
    $("#tags").value = tags ? formatLogfmt(JSON.parse(tags)) : "";
  } catch {
    $("#tags").value = "";
  }
  const lookback = query.get("lookback") || "1h";
  $("#lookback").value = lookback in LOOKBACK_US || lookback === "custom" ? lookback : "1h";
  $("#custom-range").classList.toggle("hidden", $("#lookback").value !== "custom");
  if (query.get("start")) $("#range-start").value = toLocalInput(Number(query.get("start")));
  if (query.get("end")) $("#range-end").value = toLocalInput(Number(query.get("end")));
  $("#min-duration").value = query.get("minDuration") || "";
  $("#max-duration").value = query.get("maxDuration") || "";
  $("#limit").value = query.get("limit") || "20";
  const ids = query.getAll("traceID");
  if (!query.get("service") && !ids.length) {
    clear();
    return notice($("#search-status"), "Pick a service (and any filters) and press <b>Find traces</b>.");
  }
  const ask = new URLSearchParams();
  if (ids.length) {
    for (const id of ids) ask.append("traceID", id);
  } else {
    for (const key of ["service", "operation", "tags", "minDuration", "maxDuration", "start", "end", "limit", "lookback"]) {
      if (query.get(key)) ask.set(key, query.get(key));
    }
    if (!query.get("start") && !query.get("end") && lookback in LOOKBACK_US) {
      const end = Date.now() * 1000;
      ask.set("start", String(end - LOOKBACK_US[lookback]));
      ask.set("end", String(end));
    }
  }
  notice($("#search-status"), "Searching…");
  try {
    const { data } = await api("/api/traces?" + ask);
    results = data.map((t) => describe(t));
    if (!results.length) {
      clear();
      return notice($("#search-status"), ids.length ? "None of these trace ids is in the store." : "No trace matches. Widen the time range, or remove a filter (tags match spans of the chosen service).", "caution");
    }
    notice($("#search-status"), "");
    render();
  } catch (e) {
    clear();
    notice($("#search-status"), `The search failed: ${esc(e.message)}`, "problem");
  }
}

function clear() {
  results = [];
  $("#traces").innerHTML = "";
  $("#scatter").classList.add("hidden");
  $("#results-bar").classList.add("hidden");
}

const ORDER = {
  recent: (a, b) => b.start - a.start,
  longest: (a, b) => b.duration - a.duration,
  shortest: (a, b) => a.duration - b.duration,
  spans: (a, b) => b.spans - a.spans,
  errors: (a, b) => b.errors - a.errors || b.start - a.start,
};

function render() {
  const sorted = [...results].sort(ORDER[$("#sort").value] || ORDER.recent);
  const longest = Math.max(...sorted.map((t) => t.duration), 1);
  $("#results-bar").classList.remove("hidden");
  $("#result-count").textContent = `${sorted.length} trace${sorted.length === 1 ? "" : "s"}`;
  $("#scatter").classList.remove("hidden");
  drawScatter($("#scatter"), sorted, (id) => navigate(`/trace/${id}`));
  $("#traces").innerHTML = sorted.map((t) => {
    const chips = [...t.perService.entries()].sort().map(([name, c]) =>
      `<span class="chip" style="border-color:${colour(name)}" data-service="${esc(name)}">${esc(name)} ${c.spans}${c.errors ? ` <span class="err-text">${c.errors} err</span>` : ""}</span>`).join("");
    return `<div class="trace-row${t.errors ? " failed" : ""}" data-trace-id="${esc(t.id)}" data-errors="${t.errors}">` +
      `<input type="checkbox" class="pick" data-id="${esc(t.id)}" title="tick two to compare">` +
      `<div><span class="name">${esc(t.name)}</span> <small class="mono muted">${esc(t.id.slice(0, 7))}</small>` +
      `${t.caller ? ` <small class="muted">called by ${esc(t.caller)}</small>` : ""}<div>${chips}</div>` +
      `<div class="dur-bar" style="width:${(100 * t.duration) / longest}%"></div></div>` +
      `<div class="num">${t.spans} span${t.spans === 1 ? "" : "s"}${t.errors ? `<br><span class="err-text">${t.errors} error${t.errors === 1 ? "" : "s"}</span>` : ""}</div>` +
      `<div class="num"><b class="duration">${dur(t.duration)}</b><br><span class="started">${isoTime(t.start)}</span><br><small class="muted">${ago(t.start)}</small></div></div>`;
  }).join("");
  updatePicks();
}
