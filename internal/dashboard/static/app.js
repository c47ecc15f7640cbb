// cachesync dashboard: polls /v1/status, keeps the last minutes of each
// figure and draws them on canvases. No libraries: it must work offline.
"use strict";
const keep = 150; // points: five minutes at one every two seconds
const series = { hit: [], lag: [], ops: [], queue: [], mem: [] };
const key = new URLSearchParams(location.hash.slice(1)).get("key");
let last = null; // the previous report, for rates
window.cachesyncPoints = 0; // reports drawn so far (read by the browser test)

function push(name, t, v) {
  const s = series[name];
  s.push([t, v]);
  while (s.length > keep) s.shift();
}

function total(r, field) {
  return r.caches.reduce((a, c) => a + (c[field] || 0), 0);
}

async function poll() {
  try {
    const res = await fetch("v1/status", { headers: key ? { "X-API-Key": key } : {} });
    if (!res.ok) throw new Error(res.status + " " + (await res.text()));
    const r = await res.json();
    const t = Date.parse(r.time) / 1000;
    if (last) {
      const dt = Math.max(t - last.t, 0.001);
      const gets = total(r, "gets") - last.gets, hits = total(r, "hits") - last.hits;
      push("hit", t, gets > 0 ? (100 * hits) / gets : (series.hit.length ? series.hit[series.hit.length - 1][1] : 0));
      const moved = total(r, "gets") + total(r, "rows_applied") + total(r, "drained") - last.moved;
      push("ops", t, moved / dt);
    }
    push("lag", t, r.caches.reduce((a, c) => Math.max(a, c.lag_bytes || 0), 0));
    push("queue", t, r.caches.reduce((a, c) => a + (c.queue || 0), 0));
    push("mem", t, r.redis.used_memory_bytes / (1 << 20));
    last = { t, gets: total(r, "gets"), hits: total(r, "hits"), moved: total(r, "gets") + total(r, "rows_applied") + total(r, "drained") };
    render(r);
    window.cachesyncPoints++;
  } catch (e) {
    document.getElementById("summary").textContent = "cannot read the status: " + e.message;
  }
}

function fmt(v, unit) {
  if (unit === "%") return v.toFixed(1) + "%";
  if (unit === "B") return v >= 1 << 20 ? (v / (1 << 20)).toFixed(1) + " MiB" : v >= 1024 ? (v / 1024).toFixed(1) + " KiB" : v.toFixed(0) + " B";
  if (unit === "MiB") return v.toFixed(1) + " MiB";
  return (v >= 1000 ? (v / 1000).toFixed(1) + "k" : v.toFixed(v < 10 ? 1 : 0)) + unit;
}

function draw(id) {
  const c = document.getElementById(id), pts = series[id], unit = c.dataset.unit;
  const w = (c.width = c.clientWidth * devicePixelRatio), h = (c.height = c.clientHeight * devicePixelRatio);
  const g = c.getContext("2d");
  g.clearRect(0, 0, w, h);
  g.font = 11 * devicePixelRatio + "px system-ui, sans-serif";
  g.fillStyle = "#667";
  if (pts.length === 0) { g.fillText("waiting for data…", 8, h / 2); return; }
  let max = Math.max(...pts.map((p) => p[1]));
  if (unit === "%") max = 100;
  if (max <= 0) max = 1;
  const t0 = pts[0][0], t1 = Math.max(pts[pts.length - 1][0], t0 + 1), pad = 4 * devicePixelRatio;
  g.strokeStyle = "#e3e6ec";
  g.beginPath(); g.moveTo(0, pad); g.lineTo(w, pad); g.moveTo(0, h - pad); g.lineTo(w, h - pad); g.stroke();
  g.strokeStyle = "#2f6fde"; g.lineWidth = 2 * devicePixelRatio;
  g.beginPath();
  pts.forEach(([t, v], i) => {
    const x = ((t - t0) / (t1 - t0)) * w, y = h - pad - (v / max) * (h - 2 * pad);
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
  g.fillStyle = "#1d2330";
  g.fillText("now " + fmt(pts[pts.length - 1][1], unit) + "   max " + fmt(max, unit), 8, 14 * devicePixelRatio);
  c.dataset.points = pts.length;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
}

function render(r) {
  document.getElementById("name").textContent = r.name;
  const red = r.redis;
  document.getElementById("summary").textContent = red.up
    ? `Redis: ${fmt(red.used_memory_bytes / (1 << 20), "MiB")} used, ${red.connected_clients} clients, ${red.ops_per_second} ops/s, ${red.evicted_keys} evicted, keyspace hit ratio ${(100 * red.hit_ratio).toFixed(1)}% — ${r.time}`
    : `Redis is down${red.error ? " (" + red.error + ")" : ""} — ${r.time}`;
  const down = Object.entries(r.sources || {}).filter(([, s]) => !s.up);
  document.getElementById("summary").textContent += down.map(([n, s]) => ` · source ${n} is down${s.error ? " (" + s.error + ")" : ""}`).join("");
  Object.keys(series).forEach(draw);
  const body = document.querySelector("#caches tbody");
  body.replaceChildren();
  for (const c of r.caches) {
    const tr = document.createElement("tr");
    cell(tr, c.name);
    cell(tr, c.mode);
    cell(tr, c.keys >= 0 ? String(c.keys) : "-");
    cell(tr, c.hit_ratio == null ? "-" : (100 * c.hit_ratio).toFixed(1) + "% of " + c.gets);
    cell(tr, c.lag_bytes == null ? "-" : fmt(c.lag_bytes, "B") + (c.lag_seconds == null ? "" : ", " + c.lag_seconds.toFixed(1) + " s"));
    cell(tr, c.queue == null ? "-" : String(c.queue) + (c.dead_letters ? ` (+${c.dead_letters} dead)` : ""));
    cell(tr, c.last_error || "-", c.last_error ? "err" : "");
    body.appendChild(tr);
  }
}

poll();
setInterval(poll, 2000);
window.addEventListener("resize", () => Object.keys(series).forEach(draw));
