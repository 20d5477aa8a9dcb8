// The durations of a search's traces over time, as the Jaeger UI draws them: one dot a trace
// (bigger with more spans, red when a span failed); click a dot to open its trace.
"use strict";
import { esc, dur, isoTime } from "./util.js";

export function drawScatter(svg, traces, open) {
  const width = svg.clientWidth || 800;
  const height = svg.clientHeight || 180;
  const left = 64, right = 12, top = 10, bottom = 22;
  const t0 = Math.min(...traces.map((t) => t.start));
  const t1 = Math.max(...traces.map((t) => t.start));
  const span = t1 - t0 || 1;
  const maxDur = Math.max(...traces.map((t) => t.duration), 1);
  const x = (t) => left + ((t - t0) / span) * (width - left - right);
  const y = (d) => height - bottom - (d / maxDur) * (height - top - bottom);
  let out = "";
  for (const f of [0, 0.5, 1]) {
    out += `<line x1="${left}" x2="${width - right}" y1="${y(maxDur * f)}" y2="${y(maxDur * f)}"></line>` +
      `<text x="${left - 6}" y="${y(maxDur * f) + 3}" text-anchor="end">${esc(dur(maxDur * f))}</text>`;
  }
  for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
    out += `<text x="${x(t)}" y="${height - 6}" text-anchor="${anchor}">${esc(isoTime(t).slice(11, 23))}</text>`;
  }
  for (const t of traces) {
    const r = Math.min(3 + Math.sqrt(t.spans), 9);
    out += `<circle class="dot${t.errors ? " failed" : ""}" data-trace-id="${esc(t.id)}" cx="${x(t.start).toFixed(1)}" cy="${y(t.duration).toFixed(1)}" r="${r.toFixed(1)}" fill="${t.errors ? "#c62828" : "#4e79a7"}">` +
      `<title>${esc(t.name)} · ${esc(dur(t.duration))} · ${t.spans} spans${t.errors ? ` · ${t.errors} errors` : ""}</title></circle>`;
  }
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.innerHTML = out;
  svg.onclick = (e) => {
    const dot = e.target.closest("circle");
    if (dot) open(dot.dataset.traceId);
  };
}
