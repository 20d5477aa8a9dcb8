// The page's router: each view owns a path (Jaeger's where Jaeger has one), so a view can be
// reloaded, bookmarked and shared. Old hash links (#trace/…, #map, #blame) are moved over.
"use strict";
import { $, $$, api, navigate, esc, knowServices } from "./util.js";
import * as search from "./search.js";
import * as trace from "./trace.js";
import * as compare from "./compare.js";
import * as map from "./map.js";
import * as blame from "./blame.js";

const VIEWS = ["search-view", "trace-view", "compare-view", "map-view", "blame-view"];

function show(view, nav) {
  for (const v of VIEWS) $("#" + v).classList.toggle("hidden", v !== view);
  for (const a of $$("header nav a")) a.classList.toggle("active", a.dataset.view === nav);
  document.body.dataset.view = view;
}

function legacyHash() {
  const hash = location.hash.slice(1);
  if (!hash) return;
  const target = hash.startsWith("trace/") ? "/" + hash : hash === "map" ? "/dependencies" : hash === "blame" ? "/blame" : "/search";
  history.replaceState(null, "", target);
}

let routing = Promise.resolve();

async function route() {
  legacyHash();
  const path = decodeURIComponent(location.pathname);
  const query = new URLSearchParams(location.search);
  if (path.startsWith("/trace/")) {
    const ids = path.slice(7).split("...");
    if (ids.length === 2) {
      show("compare-view", null);
      return compare.open(ids[0], ids[1]);
    }
    show("trace-view", null);
    return trace.open(ids[0]);
  }
  if (path === "/dependencies" || path === "/map") {
    show("map-view", "map");
    return map.open(query);
  }
  if (path === "/blame") {
    show("blame-view", "blame");
    return blame.open(query);
  }
  show("search-view", "search");
  return search.open(query);
}

function rerun() {
  routing = routing.then(route).catch((e) => console.error(e));
  return routing;
}

async function start() {
  // Links inside the page move without a reload.
  document.addEventListener("click", (e) => {
    const a = e.target.closest("a[href^='/']");
    if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0 || a.target) return;
    e.preventDefault();
    navigate(a.getAttribute("href"));
  });
  $("#trace-id-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const ids = $("#trace-id").value.split(/[\s,]+/).map((s) => s.trim().toLowerCase()).filter(Boolean);
    if (ids.length === 1) navigate(`/trace/${encodeURIComponent(ids[0])}`);
    else if (ids.length > 1) navigate("/search?" + ids.map((id) => "traceID=" + encodeURIComponent(id)).join("&"));
  });
  knowServices((await api("/api/services")).data);
  window.addEventListener("popstate", rerun);
  window.addEventListener("sockspan:route", rerun);
  await Promise.all([search.init(), blame.init(), trace.init(), compare.init(), map.init()]);
  await rerun();
  document.body.dataset.ready = "true";
}

start().catch((e) => {
  document.body.insertAdjacentHTML("afterbegin", `<p class="notice problem">The page could not start: ${esc(e.message)}</p>`);
  document.body.dataset.ready = "true";
});
