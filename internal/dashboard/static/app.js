// cachesync dashboard: loads the daemon's last 15 minutes (/v1/history),
// appends what it samples after, and draws each chart as SVG with a time
// axis, units and the events as markers. No libraries: it works offline.
"use strict";
const key = new URLSearchParams(location.hash.slice(1)).get("key");
const hist = { times: [], charts: new Map(), events: [], every: 5, window: 900 };
window.cachesyncPolls = 0; // history replies merged and drawn (read by the browser test)

async function get(path) {
  const res = await fetch(path, { headers: key ? { "X-API-Key": key } : {} });
  if (!res.ok) throw new Error(path + ": " + res.status + " " + (await res.text()));
  return res.json();
}

// merge appends a reply of /v1/history and drops what left the window.
function merge(h) {
  hist.every = h.interval_seconds;
  hist.window = h.window_seconds;
  const before = hist.times.length;
  hist.times.push(...h.times);
  for (const c of h.charts) {
    if (!hist.charts.has(c.id)) hist.charts.set(c.id, { ...c, series: new Map() });
    const mine = hist.charts.get(c.id);
    for (const s of c.series) {
      if (!mine.series.has(s.name)) mine.series.set(s.name, new Array(before).fill(null));
      mine.series.get(s.name).push(...s.values);
    }
  }
  const n = hist.times.length;
  for (const c of hist.charts.values()) for (const v of c.series.values()) while (v.length < n) v.push(null);
  hist.events.push(...h.events);
  const from = hist.times[n - 1] - hist.window * 1000;
  const cut = hist.times.findIndex((t) => t >= from);
  if (cut > 0) {
    hist.times.splice(0, cut);
    for (const c of hist.charts.values()) for (const v of c.series.values()) v.splice(0, cut);
  }
  hist.events = hist.events.filter((e) => e.time >= from);
}

function fmt(v, unit) {
  if (v == null) return "—";
  const num = (x) => (x >= 1e6 ? (x / 1e6).toFixed(1) + "M" : x >= 1e4 ? (x / 1e3).toFixed(1) + "k" : x.toFixed(x < 10 && x % 1 ? 1 : 0));
  switch (unit) {
    case "%": return v.toFixed(1) + "%";
    case "ms": return num(v) + " ms";
    case "B": return v >= 1 << 30 ? (v / (1 << 30)).toFixed(1) + " GiB" : v >= 1 << 20 ? (v / (1 << 20)).toFixed(1) + " MiB" : v >= 1024 ? (v / 1024).toFixed(1) + " KiB" : v.toFixed(0) + " B";
    case "/s": return num(v) + "/s";
    default: return num(v);
  }
}

// clock is the local time of t (unix ms), 24-hour, as the axes have it.
function clock(t) {
  return new Date(t).toLocaleTimeString([], { hour12: false });
}

function el(name, attrs, text) {
  const e = name === "svg" || name.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", name.replace("svg:", ""))
    : document.createElement(name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}

// roof is a round number above max, for the y axis.
function roof(max, unit) {
  if (unit === "%") return 100;
  if (!(max > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(max)));
  return [1, 2, 5, 10].map((m) => m * p).find((t) => t >= max);
}

const W = 600, H = 160, L = 64, R = 8, T = 8, B = 22;

// draw returns the figure of chart c over the window that ends at the
// last sample.
function draw(c) {
  const t1 = hist.times[hist.times.length - 1], t0 = t1 - hist.window * 1000;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const all = [...c.series.values()].flat().filter((v) => v != null);
  const ymax = roof(Math.max(0, ...all), c.unit);
  const y = (v) => H - B - (v / ymax) * (H - B - T);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  for (const f of [0, 0.5, 1]) {
    svg.append(el("svg:line", { class: "grid", x1: L, x2: W - R, y1: y(f * ymax), y2: y(f * ymax) }));
    svg.append(el("svg:text", { class: "tick-y", x: L - 6, y: y(f * ymax) + 4, "text-anchor": "end" }, fmt(f * ymax, c.unit)));
  }
  const step = 3 * 60 * 1000; // a tick every three minutes, on the minute
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
    svg.append(el("svg:line", { class: "grid", x1: x(t), x2: x(t), y1: T, y2: H - B }));
    const d = new Date(t);
    svg.append(el("svg:text", { class: "tick-x", x: x(t), y: H - 6, "text-anchor": "middle" },
      String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0")));
  }
  let i = 0;
  for (const [name, vals] of c.series) {
    // One polyline per run of values: a gap where there is no data.
    let run = [];
    const flush = () => {
      if (run.length) svg.append(el("svg:polyline", { class: "s" + (i % 5), "data-series": name, "data-points": run.length, points: run.join(" ") }));
      run = [];
    };
    vals.forEach((v, j) => (v == null ? flush() : run.push(x(hist.times[j]).toFixed(1) + "," + y(v).toFixed(1))));
    flush();
    i++;
  }
  for (const e of hist.events) {
    if (e.time < t0 || (c.cache && e.cache && e.cache !== c.cache)) continue;
    const line = el("svg:line", { class: "event " + e.kind, x1: x(e.time), x2: x(e.time), y1: T, y2: H - B });
    line.append(el("svg:title", {}, clock(e.time) + " " + e.kind + ": " + e.text));
    svg.append(line);
  }
  const legend = el("div", { class: "legend" });
  i = 0;
  for (const [name, vals] of c.series) {
    const s = el("span", { class: "s" + (i++ % 5), "data-series": name }, name + " ");
    s.append(el("b", {}, fmt(vals[vals.length - 1], c.unit)));
    legend.append(s);
  }
  const fig = el("figure", { "data-chart": c.id });
  if (c.cache) fig.dataset.cache = c.cache;
  const cap = el("figcaption", {}, c.title + " ");
  cap.append(el("span", { class: "unit" }, "(" + (c.unit === "B" ? "bytes" : c.unit) + ")"));
  fig.append(cap, svg, legend);
  return fig;
}

function render() {
  if (!hist.times.length) return;
  const overview = [], caches = new Map();
  for (const c of hist.charts.values()) {
    if (!c.cache) overview.push(draw(c));
    else {
      if (!caches.has(c.cache)) caches.set(c.cache, []);
      caches.get(c.cache).push(draw(c));
    }
  }
  document.getElementById("overview").replaceChildren(...overview);
  document.getElementById("percache").replaceChildren(...[...caches].map(([name, figs]) => {
    const s = el("section", { class: "cache", "data-cache": name });
    const grid = el("div", { class: "charts" });
    grid.append(...figs);
    s.append(el("h2", {}, "Cache " + name), grid);
    return s;
  }));
  document.querySelector("#events ul").replaceChildren(...(hist.events.length ? hist.events : [{ kind: "", text: "none" }]).map((e) =>
    el("li", { class: e.kind }, e.time ? clock(e.time) + " " + e.kind + ": " + e.text : e.text)));
}

function cell(tr, text, cls) {
  tr.append(el("td", cls ? { class: cls } : {}, text));
}

function table(r) {
  document.getElementById("name").textContent = r.name;
  const red = r.redis, seen = red.keyspace_hits + red.keyspace_misses;
  let sum = red.up
    ? `Redis: ${fmt(red.used_memory_bytes, "B")} used, ${red.connected_clients} clients, ${red.ops_per_second} ops/s, ${red.evicted_keys} evicted, keyspace hit ratio ${seen ? fmt((100 * red.keyspace_hits) / seen, "%") : "—"} — ${r.time}`
    : `Redis is down${red.error ? " (" + red.error + ")" : ""} — ${r.time}`;
  for (const t of r.targets || []) if (!t.up) sum += ` · target ${t.name} is down${t.error ? " (" + t.error + ")" : ""}`;
  for (const [n, s] of Object.entries(r.sources || {})) if (!s.up) sum += ` · source ${n} is down${s.error ? " (" + s.error + ")" : ""}`;
  document.getElementById("summary").textContent = sum;
  document.querySelector("#caches tbody").replaceChildren(...r.caches.map((c) => {
    const tr = el("tr");
    cell(tr, c.name);
    cell(tr, c.mode);
    cell(tr, c.keys >= 0 ? String(c.keys) : "—");
    cell(tr, c.hit_ratio == null ? "—" : fmt(100 * c.hit_ratio, "%") + " of " + c.gets);
    cell(tr, c.lag_bytes == null ? "—" : fmt(c.lag_bytes, "B") + (c.lag_seconds == null ? "" : ", " + fmt(1000 * c.lag_seconds, "ms")));
    cell(tr, c.queue == null ? "—" : String(c.queue) + (c.dead_letters ? ` (+${c.dead_letters} dead)` : ""));
    cell(tr, c.last_error || "—", c.last_error ? "err" : "");
    return tr;
  }));
}

async function poll() {
  try {
    const last = hist.times[hist.times.length - 1];
    const [h, r] = await Promise.all([get("v1/history" + (last ? "?since=" + last : "")), get("v1/status")]);
    merge(h);
    render();
    table(r);
    window.cachesyncPolls++;
  } catch (e) {
    document.getElementById("summary").textContent = "cannot read the daemon: " + e.message;
  }
  setTimeout(poll, hist.every * 1000);
}

poll();
