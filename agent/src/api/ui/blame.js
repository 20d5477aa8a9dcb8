// "Why is it slow": for an endpoint at a percentile, who owns its latency on the critical path
// (each service's own time, each hop's network and queue time), with example traces per row;
// the question lives in the URL (`/blame?service=…&operation=…&percentile=…&lookback=…`).
"use strict";
import { $, api, esc, dur, fill, navigate, notice } from "./util.js";

const FEW = 10;

async function endpoints(service, chosen) {
  if (!service) return fill($("#blame-operation"), [], null);
  const { data } = await api(`/api/operations?service=${encodeURIComponent(service)}&spanKind=server`);
  let names = data.map((o) => o.name);
  if (!names.length) names = (await api(`/api/services/${encodeURIComponent(service)}/operations`)).data;
  fill($("#blame-operation"), names.sort(), chosen);
}

export async function init() {
  $("#blame-service").addEventListener("change", () => endpoints($("#blame-service").value));
  $("#blame-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams({
      service: $("#blame-service").value,
      operation: $("#blame-operation").value,
      percentile: $("#blame-percentile").value,
      lookback: $("#blame-lookback").value,
    });
    navigate("/blame?" + q);
  });
}

export async function open(query) {
  const { data: services } = await api("/api/services");
  fill($("#blame-service"), services, query.get("service") || localStorage.getItem("sockspan-service"), "— pick a service —");
  await endpoints($("#blame-service").value, query.get("operation"));
  for (const key of ["percentile", "lookback"]) {
    const select = $(`#blame-${key}`);
    if (query.get(key) && [...select.options].some((o) => o.value === query.get(key))) select.value = query.get(key);
  }
  $("#blame tbody").innerHTML = "";
  $("#blame-summary").textContent = "";
  if (!query.get("service") || !query.get("operation")) {
    return notice($("#blame-notice"), services.length ? "Pick a service and one of its endpoints, then <b>Explain</b>." : "No traces stored yet: nothing to explain.");
  }
  notice($("#blame-notice"), "Analysing…");
  let b;
  try {
    b = await api("/api/sockspan/blame?" + new URLSearchParams({
      service: query.get("service"), operation: query.get("operation"),
      percentile: query.get("percentile") || "99", lookback: query.get("lookback") || "3600",
    }));
  } catch (e) {
    return notice($("#blame-notice"), `Cannot explain: ${esc(e.message)}`, "problem");
  }
  if (!b.matched) {
    return notice($("#blame-notice"), `No request of ${esc(b.service)} "${esc(b.operation)}" in this window. Widen it, or pick another endpoint.`, "caution");
  }
  notice($("#blame-notice"), b.considered < FEW
    ? `Only ${b.considered} request${b.considered === 1 ? "" : "s"} around p${b.percentile}: these shares describe ${b.considered === 1 ? "that request" : "those requests"}, not a pattern. Widen the window or wait for more traffic.`
    : "", "caution");
  $("#blame-summary").textContent = `${b.service} "${b.operation}" at p${b.percentile}: ${dur(b.threshold_ns / 1000)}; ${b.considered} of ${b.matched} requests analysed (those ranked within five points of the percentile).`;
  const digits = b.considered < FEW ? 0 : 1;
  $("#blame tbody").innerHTML = b.rows.map((r) =>
    `<tr class="blame-row"><td class="num share">${(r.share * 100).toFixed(digits)}%</td><td style="width:120px"><div class="share-bar" style="width:${r.share * 100}%"></div></td>` +
    `<td class="num">${dur(r.mean_ns / 1000)}</td><td class="owner">${esc(r.owner)}</td>` +
    `<td>${(r.examples || []).map((id) => `<a class="example mono" href="/trace/${esc(id)}">${esc(id.slice(0, 7))}</a>`).join("")}</td></tr>`).join("");
}
