// The live dashboard: polls dashboard/data about once a second and redraws. Vanilla JS and
// inline SVG, no dependencies, so the page works offline and needs no build step.
"use strict";

const POLL_MS = 1000;
const TIMEOUT_MS = 3000;
const SVG_NS = "http://www.w3.org/2000/svg";
// A chart's frame in viewBox units; `top` null scales to the data.
const CHART = { w: 400, h: 140, padL: 34, padB: 14, top: null };
// A node's NIC history in its table row: no axis labels, and a fixed 0–100% so rows compare.
const SPARK = { w: 160, h: 32, padL: 0, padB: 0, top: 1 };

const $ = (id) => document.getElementById(id);

function fmt(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString(undefined, {
    minimumFractionDigits: digits, maximumFractionDigits: digits,
  });
}

function pct(value) {
  return value === null || value === undefined ? "–" : fmt(100 * value, 1) + "%";
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  return value < 1 ? fmt(1000 * value, 1) + " ms" : fmt(value, 2) + " s";
}

function ratio(part, whole) {
  return whole > 0 ? part / whole : null;
}

function setText(id, text) {
  const el = $(id);
  if (el.textContent !== text) el.textContent = text;
}

function svg(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// A line chart of up to two series over the points' index (one point a second).
function drawChart(el, points, keys, scale, frame = CHART) {
  const { w, h, padL, padB } = frame;
  el.replaceChildren();
  const values = points.flatMap((p) => keys.map((k) => p[k])).filter((v) => v !== null);
  const top = frame.top ?? niceCeil(Math.max(...values.map((v) => v * scale), 1e-9));
  for (const f of [0, 0.5, 1]) {
    const y = (h - padB) * (1 - f);
    el.append(svg("line", { class: "grid", x1: padL, x2: w, y1: y, y2: y }));
    if (!padL) continue;
    const label = svg("text", { class: "axis", x: 2, y: Math.max(y, 10) });
    label.textContent = fmt(top * f, top * f < 10 && f > 0 ? 2 : 0);
    el.append(label);
  }
  const n = points.length;
  keys.forEach((key, i) => {
    const coords = [];
    points.forEach((p, j) => {
      if (p[key] === null || p[key] === undefined) return;
      const x = padL + (n > 1 ? (j / (n - 1)) * (w - padL) : 0);
      const y = (h - padB) * (1 - Math.min((p[key] * scale) / top, 1));
      coords.push(x.toFixed(1) + "," + y.toFixed(1));
    });
    if (!coords.length) return;
    el.append(svg("polyline", { class: "s" + i, points: coords.join(" ") }));
    // The newest point as a dot, so a series of one point is visible too.
    const [cx, cy] = coords[coords.length - 1].split(",");
    el.append(svg("circle", { class: "s" + i, cx, cy, r: 2.5 }));
  });
}

function niceCeil(x) {
  const step = Math.pow(10, Math.floor(Math.log10(x)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= x) return m * step;
  return 10 * step;
}

function drawReadPaths(counts) {
  const paths = ["pe", "de", "split"];
  const total = paths.reduce((s, p) => s + (counts[p] || 0), 0);
  const stack = $("read-paths");
  stack.replaceChildren();
  const legend = [];
  for (const p of paths) {
    const share = ratio(counts[p] || 0, total);
    const part = document.createElement("div");
    part.className = p;
    part.style.width = (share === null ? 0 : 100 * share) + "%";
    part.title = p;
    stack.append(part);
    const key = document.createElement("span");
    key.className = "key-" + p;
    key.textContent = p + " " + pct(share) + " (" + fmt(counts[p] || 0) + ")";
    if (legend.length) legend.push(" · ");
    legend.push(key);
  }
  $("read-paths-legend").replaceChildren(...legend);
}

function bar(value, text) {
  const cell = document.createElement("div");
  cell.className = "bar";
  const fill = document.createElement("span");
  fill.style.width = (value === null || value === undefined ? 0 : 100 * value) + "%";
  const label = document.createElement("em");
  label.textContent = text;
  cell.append(fill, label);
  return cell;
}

function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs)) tr.setAttribute(k, v);
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.append(c);
    else td.textContent = c;
    tr.append(td);
  }
  return tr;
}

// A node's storage (s0) and compute (s1) NIC utilisation over the series' points. The tooltip
// names the peaks, which a 0–100% line of a lightly used compute NIC hides.
function sparkline(history) {
  const { w, h } = SPARK;
  const el = svg("svg", { class: "spark", viewBox: `0 0 ${w} ${h}` });
  const points = history.snic.map((snic, i) => ({ snic, cnic: history.cnic[i] }));
  drawChart(el, points, ["snic", "cnic"], 1, SPARK);
  const peak = (values) => Math.max(...values.filter((v) => v !== null), 0);
  const title = svg("title", {});
  title.textContent = "SNIC now " + pct(history.snic.at(-1)) + ", peak " + pct(peak(history.snic))
    + " · CNIC now " + pct(history.cnic.at(-1)) + ", peak " + pct(peak(history.cnic));
  el.append(title);
  return el;
}

function drawNodes(nodes, histories) {
  const byNode = new Map(histories.map((h) => [h.node, h]));
  const body = $("nodes").tBodies[0];
  body.replaceChildren(...nodes.map((n) => {
    const history = byNode.get(n.node);
    return row([
      n.node, n.role,
      bar(n.snic_utilization, pct(n.snic_utilization)), seconds(n.snic_queue_s),
      bar(n.cnic_utilization, pct(n.cnic_utilization)), seconds(n.cnic_queue_s),
      history ? sparkline(history) : "–",
    ], { "data-node": n.node });
  }));
}

function drawEngines(engines) {
  const body = $("engines").tBodies[0];
  body.replaceChildren(...engines.map((e) => {
    const tr = row([
      e.engine, e.role, e.model || "–", e.healthy ? "yes" : "no",
      fmt(e.running), fmt(e.queued), fmt(e.tokens),
      pct(e.max_tokens ? e.tokens / e.max_tokens : null),
    ], { "data-engine": e.engine });
    if (!e.healthy) tr.children[3].className = "down";
    return tr;
  }));
}

function render(d) {
  setText("policy", "policy " + (d.policy || "?"));
  setText("requests-total", fmt(d.requests.total));
  setText("requests-errors", fmt(d.requests.errors));
  const last = d.series.length ? d.series[d.series.length - 1] : null;
  setText("rps", last && last.rps !== null ? fmt(last.rps, 1) : "–");
  setText("queue-depth", fmt(d.queue_depth));
  setText("sheds", fmt(d.sheds));
  setText("active-label", "active sessions (" + d.sessions.window_s + " s)");
  setText("active-sessions", fmt(d.sessions.active));
  const turns = d.sessions.hits + d.sessions.misses;
  setText("session-hit-rate", pct(ratio(d.sessions.hits, turns)));
  setText("kv-hit-rate", pct(ratio(d.tokens.kv_hit, d.tokens.prompt)));
  const { ttft, tpot } = d.latency;
  setText("ttft-now", seconds(ttft.p50) + " / " + seconds(ttft.p90));
  setText("tpot-now", seconds(tpot.p50) + " / " + seconds(tpot.p90));
  setText("balance-label", "SNIC max/avg (" + d.balance.window_s + " s)");
  setText("snic-balance", fmt(d.balance.snic_max_avg, 2));
  drawChart($("chart-ttft"), d.series, ["ttft_p50", "ttft_p90"], 1);
  drawChart($("chart-tpot"), d.series, ["tpot_p50", "tpot_p90"], 1000);
  drawChart($("chart-queue"), d.series, ["queue_depth", "rps"], 1);
  drawChart($("chart-balance"), d.series, ["snic_max_avg"], 1);
  drawReadPaths(d.read_paths);
  drawNodes(d.nodes, d.node_series);
  drawEngines(d.engines);
}

async function poll() {
  const status = $("status");
  try {
    const response = await fetch("dashboard/data", {
      cache: "no-store", signal: AbortSignal.timeout(TIMEOUT_MS),
    });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    status.dataset.state = "ok";
    status.textContent = "live · " + new Date().toLocaleTimeString();
  } catch (err) {
    status.dataset.state = "error";
    status.textContent = "no data: " + err.message;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
