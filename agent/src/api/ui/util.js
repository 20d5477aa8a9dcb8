// Shared helpers of the page: the API client, formatting, colours, navigation.
"use strict";

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
export const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

// When the agent listens beyond loopback it requires a bearer token (--ui-token-file); the page
// asks for it once per tab and keeps it in sessionStorage, never in the URL.
export async function api(path, asked = false) {
  const headers = {};
  const token = sessionStorage.getItem("sockspan-token");
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, { headers });
  if (r.status === 401 && !asked) {
    const entered = window.prompt("This sockspan API needs its bearer token (the agent's --ui-token-file):");
    if (entered) {
      sessionStorage.setItem("sockspan-token", entered.trim());
      return api(path, true);
    }
  }
  let body;
  try {
    body = await r.json();
  } catch {
    throw new Error(`${path}: ${r.status} ${r.statusText} (not JSON)`);
  }
  if (!r.ok) {
    const err = new Error((body.errors && body.errors[0] && body.errors[0].msg) || body.error || r.statusText);
    err.status = r.status;
    throw err;
  }
  return body;
}

// A duration in microseconds, in the unit a person reads best.
export function dur(us) {
  if (us < 1000) return `${Math.round(us)} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 2 : 1)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

// A time (µs since the epoch) in ISO form with the browser's time zone, to the millisecond.
export function isoTime(us) {
  const d = new Date(us / 1000);
  const off = -d.getTimezoneOffset();
  const zone = `${off >= 0 ? "+" : "-"}${pad(Math.floor(Math.abs(off) / 60))}:${pad(Math.abs(off) % 60)}`;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)} ${zone}`;
}

// "3 min ago", for a time in µs since the epoch.
export function ago(us) {
  const s = Math.max(0, (Date.now() - us / 1000) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

// A colour per service, the same in every view: given in the order of the store's service list
// (so two services share one only past the palette's size), then as new services appear.
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#8cd17d", "#499894", "#d4a6c8", "#86bcb6"];
const colours = new Map();
export function knowServices(services) {
  for (const s of services) colour(s);
}
export function colour(service) {
  if (!colours.has(service)) colours.set(service, PALETTE[colours.size % PALETTE.length]);
  return colours.get(service);
}

export const tagOf = (span, key) => (span.tags.find((t) => t.key === key) || {}).value;
export const kindOf = (span) => tagOf(span, "span.kind") || "";
export const failed = (span) => tagOf(span, "error") === true;
export const parentOf = (span) => (span.references.find((r) => r.refType === "CHILD_OF") || {}).spanID;

// What a trace is about: its entry point (the first SERVER span from the top, since the root is
// often the caller's CLIENT span: curl, a browser), and who called it.
export function describe(trace) {
  const spans = trace.spans;
  const ids = new Set(spans.map((s) => s.spanID));
  const roots = spans.filter((s) => !ids.has(parentOf(s))).sort((a, b) => a.startTime - b.startTime);
  const root = roots[0] || spans[0];
  const service = (s) => trace.processes[s.processID].serviceName;
  const entry = kindOf(root) === "client"
    ? spans.filter((s) => parentOf(s) === root.spanID && kindOf(s) === "server").sort((a, b) => a.startTime - b.startTime)[0]
    : null;
  const start = Math.min(...spans.map((s) => s.startTime));
  const end = Math.max(...spans.map((s) => s.startTime + s.duration));
  const perService = new Map();
  for (const s of spans) {
    const name = service(s);
    const entry = perService.get(name) || { spans: 0, errors: 0 };
    entry.spans += 1;
    if (failed(s)) entry.errors += 1;
    perService.set(name, entry);
  }
  const top = entry || root;
  return {
    id: trace.traceID,
    name: `${service(top)}: ${top.operationName}`,
    caller: entry ? service(root) : null,
    start,
    duration: end - start,
    spans: spans.length,
    errors: spans.filter(failed).length,
    perService,
  };
}

// Moves to `url` inside the page (no reload) and shows its view.
export function navigate(url) {
  if (url !== location.pathname + location.search) history.pushState(null, "", url);
  window.dispatchEvent(new Event("sockspan:route"));
}

// A search's tags typed as logfmt (`http.route=/p error=true`, values may be "quoted"), as the
// Jaeger UI takes them; returns an object of strings, or throws naming the bad part.
export function parseLogfmt(text) {
  const out = {};
  const re = /\s*([^\s=]+)=("((?:[^"\\]|\\.)*)"|\S*)/y;
  let at = 0;
  const trimmed = text.trim();
  while (at < trimmed.length) {
    re.lastIndex = at;
    const m = re.exec(trimmed);
    if (!m) throw new Error(`tags: expected key=value at "${trimmed.slice(at, at + 20)}"`);
    out[m[1]] = m[3] !== undefined ? m[3].replace(/\\(.)/g, "$1") : m[2];
    at = re.lastIndex;
  }
  return out;
}

export function formatLogfmt(tags) {
  return Object.entries(tags).map(([k, v]) => (/[\s"]/.test(v) || v === "" ? `${k}="${v.replace(/(["\\])/g, "\\$1")}"` : `${k}=${v}`)).join(" ");
}

// Fills a <select> with `items`, keeping `chosen` selected when present.
export function fill(select, items, chosen, first = null) {
  select.innerHTML = (first ? `<option value="">${esc(first)}</option>` : "") + items.map((i) => `<option>${esc(i)}</option>`).join("");
  if (chosen !== undefined && chosen !== null && items.includes(chosen)) select.value = chosen;
}

export function notice(el, text, kind = "hint") {
  el.innerHTML = text ? `<p class="notice ${kind}">${text}</p>` : "";
}
