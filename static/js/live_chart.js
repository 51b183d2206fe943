// Live charts of one run: open the socket and buffer, read the backlog over HTTP, then apply the
// buffered deltas newer than the backlog and every delta after that (appended with extendTraces,
// never redrawn). The socket is a hint: a gap in `seq`, a "resync" key or a reconnect re-reads.
/* global Plotly, htmx */
import { plotlyText } from "./plotly_text.js";

const root = document.getElementById("live-run");
const runId = root.dataset.runId;
const stateUrl = root.dataset.api;
const seriesUrl = `${stateUrl}metrics/`;
const logsUrl = `${stateUrl}logs/`;
const stateLabel = document.getElementById("live-state");
const logEl = document.getElementById("log-tail");
const MAX_LOG_LINES = 2000;
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "lost"]);

const series = new Map(); // key -> {steps, values, times, div, zoomed}
let seq = 0;
let ready = false;
let buffered = [];
let lastLogId = 0;
let socket = null;
let resyncTimer = null;
const view = { x: "step", smoothing: 0, log: false, shared: true };
const FEW_POINTS = 50; // below this a trace also draws markers: 3 points of a bare line look like an empty chart
const CHART_HEIGHT = 220;
const startedAt = root.dataset.started ? Number(root.dataset.started) : null;
let sharedZoom = null; // [lo, hi] in axis units while the user has zoomed the shared x range
// Pinned panels: metric names in the user's order, kept server-side per user (they apply to every run).
let pins = JSON.parse(document.getElementById("panel-pins")?.textContent || "[]");
const pinsUrl = root.dataset.pinsUrl;
let saving = Promise.resolve();
let rangeFrame = 0;

function groupOf(key) {
  const i = key.indexOf("/");
  return i < 0 ? "train" : key.slice(0, i);
}

const MIN_CHART_W = 380;
const GAP = 10;

// Groups sit side by side on one page-wide grid, each as wide as its charts (a group of one chart
// takes one column, not a whole row), so twelve small groups do not make twelve mostly empty rows.
function packGroups() {
  const cols = Math.max(1, Math.floor((root.clientWidth + GAP) / (MIN_CHART_W + GAP)));
  root.style.gridTemplateColumns = `repeat(${cols}, minmax(0, 1fr))`;
  for (const section of root.querySelectorAll("section.chart-group")) {
    const grid = section.querySelector(".chart-grid");
    const span = Math.min(cols, grid.childElementCount || 1);
    if (section.dataset.span === String(span)) continue;
    section.dataset.span = String(span);
    section.style.gridColumn = `span ${span}`;
    grid.style.gridTemplateColumns = `repeat(${span}, minmax(0, 1fr))`;
    for (const cell of grid.children) resizeCell(cell);
  }
}

function resizeCell(cell) {
  const div = cell.querySelector(".chart");
  if (div?.data) Plotly.Plots.resize(div);
}
window.addEventListener("resize", () => {
  for (const section of root.querySelectorAll("section.chart-group")) delete section.dataset.span;
  packGroups();
});

function groupDiv(group) {
  let section = root.querySelector(`section[data-group="${CSS.escape(group)}"]`);
  if (!section) {
    section = document.createElement("section");
    section.className = "chart-group";
    section.dataset.group = group;
    section.innerHTML = `<h3></h3><div class="chart-grid"></div>`;
    section.querySelector("h3").textContent = group;
    const sections = [...root.querySelectorAll("section.chart-group:not(.pinned-group)")];
    const after = sections.find((s) => s.dataset.group > group);
    root.insertBefore(section, after || null);
  }
  return section.querySelector(".chart-grid");
}

function ema(values, alpha) {
  if (!alpha) return values;
  const out = new Array(values.length);
  let acc = values.length ? values[0] : 0;
  for (let i = 0; i < values.length; i++) {
    acc = alpha * acc + (1 - alpha) * values[i];
    out[i] = acc;
  }
  return out;
}

function xs(s, from = 0) {
  return view.x === "time" ? s.times.slice(from).map((t) => new Date(t * 1000)) : s.steps.slice(from);
}

function fmtElapsed(sec) {
  const v = Math.max(0, sec);
  if (v < 60) return `${v.toFixed(0)} s`;
  if (v < 3600) return `${Math.floor(v / 60)} min ${Math.floor(v % 60)} s`;
  return `${Math.floor(v / 3600)} h ${String(Math.floor((v % 3600) / 60)).padStart(2, "0")} min`;
}

// The hover shows the other coordinate: wall time (and time since start) by step, the step by time.
function hoverInfo(s, from = 0) {
  const t0 = startedAt ?? (s.times.length ? s.times[0] : 0);
  const out = new Array(s.steps.length - from);
  for (let i = from; i < s.steps.length; i++) {
    const t = s.times[i];
    out[i - from] = view.x === "time"
      ? `step ${s.steps[i]}`
      : `${new Date(t * 1000).toLocaleTimeString()} (+${fmtElapsed(t - t0)})`;
  }
  return out;
}

function modeOf(s) {
  return s.steps.length < FEW_POINTS ? "lines+markers" : "lines";
}

function traces(s) {
  const raw = { x: xs(s), y: s.values, customdata: hoverInfo(s), mode: modeOf(s), name: "value",
    line: { width: 1.5, color: "#3257d6" }, marker: { size: 5, color: "#3257d6" },
    hovertemplate: "%{y:.5g} · %{customdata}<extra></extra>" };
  if (!view.smoothing) return [raw];
  raw.opacity = 0.3;
  const smooth = { x: raw.x, y: ema(s.values, view.smoothing), customdata: raw.customdata, mode: "lines", name: "smoothed",
    line: { width: 2, color: "#3257d6" }, hovertemplate: "smoothed %{y:.5g}<extra></extra>" };
  return [raw, smooth];
}

function sharesX(key) {
  // System metrics are indexed by sample number, not by training step: only time lines them up.
  return view.shared && !(view.x === "step" && groupOf(key) === "system");
}

function sharedExtent() {
  let lo = Infinity;
  let hi = -Infinity;
  for (const [key, s] of series) {
    if (!sharesX(key) || !s.steps.length) continue;
    const a = view.x === "time" ? s.times[0] * 1000 : s.steps[0];
    const b = view.x === "time" ? s.times[s.times.length - 1] * 1000 : s.steps[s.steps.length - 1];
    lo = Math.min(lo, a);
    hi = Math.max(hi, b);
  }
  if (lo === Infinity) return null;
  if (lo === hi) { lo -= 1; hi += 1; }
  return view.x === "time" ? [new Date(lo), new Date(hi)] : [lo, hi];
}

function flatValue(values) {
  if (!values.length) return null;
  const v = values[0];
  for (let i = 1; i < values.length; i++) if (values[i] !== v) return null;
  return v;
}

function layout(key) {
  const s = series.get(key);
  // Plotly pads a constant series to [v - 1, v + 1]: a learning rate of 5e-4 would read as 0.
  const flat = s ? flatValue(s.values) : null;
  if (s) s.flat = flat;
  const yaxis = { type: view.log ? "log" : "linear", zeroline: false, automargin: true, autorange: true };
  if (flat !== null && flat !== 0 && !view.log) {
    yaxis.range = [flat - Math.abs(flat) / 2, flat + Math.abs(flat) / 2];
    yaxis.autorange = false;
  }
  const bySample = view.x === "step" && groupOf(key) === "system";
  const xaxis = { type: view.x === "time" ? "date" : "linear", zeroline: false,
    title: bySample ? { text: "sample", font: { size: 10 }, standoff: 2 } : undefined,
    // The hover's title line names the x value: "step 283", "sample 4" or the wall-clock time.
    unifiedhovertitle: { text: view.x === "time" ? "%{x|%H:%M:%S}" : `${bySample ? "sample" : "step"} %{x}` } };
  if (sharesX(key)) {
    const range = sharedZoom ?? sharedExtent();
    if (range) { xaxis.range = range; xaxis.autorange = false; }
  }
  return {
    title: { text: plotlyText(key), font: { size: 12 }, x: 0.01, xanchor: "left", y: 0.97 },
    margin: { l: 48, r: 12, t: 26, b: view.x === "time" ? 40 : 28 }, height: CHART_HEIGHT,
    showlegend: false, hovermode: "x unified", xaxis,
    yaxis,
    uirevision: `${view.x}-${view.log}-${view.shared}`,
  };
}

// Called after points arrive: one relayout per frame moves the shared range of every chart along.
function scheduleSharedRange() {
  if (!view.shared || sharedZoom || rangeFrame) return;
  rangeFrame = requestAnimationFrame(() => {
    rangeFrame = 0;
    const range = sharedExtent();
    if (!range) return;
    for (const [key, s] of series) {
      if (!sharesX(key) || s.zoomed) continue;
      const cur = s.div.layout?.xaxis?.range;
      if (cur && String(cur[0]) === String(range[0]) && String(cur[1]) === String(range[1])) continue;
      s.silent = true; // our own relayout is not a user zoom
      Plotly.relayout(s.div, { "xaxis.range": range, "xaxis.autorange": false }).finally(() => { s.silent = false; });
    }
  });
}

function pinnedGrid() {
  let section = root.querySelector("section.pinned-group");
  if (!section) {
    section = document.createElement("section");
    section.className = "chart-group pinned-group";
    section.dataset.group = "pinned";
    section.innerHTML = `<h3>pinned</h3><div class="chart-grid" id="pinned-panels"></div>`;
    root.insertBefore(section, root.querySelector("section.chart-group"));
  }
  return section.querySelector(".chart-grid");
}

// Put a chart cell where it belongs: among the pinned ones in the user's order, else in its group by name.
function place(cell) {
  const key = cell.dataset.panel;
  const at = pins.indexOf(key);
  let grid;
  let before;
  if (at >= 0) {
    grid = pinnedGrid();
    before = [...grid.children].find((c) => c !== cell && pins.indexOf(c.dataset.panel) > at);
  } else {
    grid = groupDiv(groupOf(key));
    before = [...grid.children].find((c) => c !== cell && c.dataset.panel > key);
  }
  if (cell.parentElement !== grid || cell.nextElementSibling !== (before || null)) grid.insertBefore(cell, before || null);
  cell.classList.toggle("pinned", at >= 0);
  const pin = cell.querySelector(".pin-toggle");
  pin.setAttribute("aria-pressed", String(at >= 0));
  pin.textContent = at >= 0 ? "Unpin" : "Pin";
  pin.title = at >= 0 ? "Unpin" : "Pin to the top (remembered for you, on every run)";
}

function relayoutPanels() {
  for (const cell of root.querySelectorAll(".chart-cell")) place(cell);
  for (const section of root.querySelectorAll("section.chart-group")) {
    if (!section.querySelector(".chart-grid").childElementCount) section.remove();
    else delete section.dataset.span;
  }
  packGroups();
  for (const cell of root.querySelectorAll(".chart-cell")) resizeCell(cell);
}

function savePins() {
  const body = JSON.stringify({ keys: pins });
  const csrf = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"];
  // One save after another, so the server ends with the last list whatever the network does.
  saving = saving.then(() => fetch(pinsUrl, {
    method: "POST", credentials: "same-origin", body,
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
  })).then((r) => { window.arbiterLive.pinsSaved = r.ok ? body : `error ${r.status}`; }).catch(() => {});
}

function onPanelButton(ev) {
  const button = ev.target.closest(".chart-tools button");
  if (!button) return;
  const key = button.closest(".chart-cell").dataset.panel;
  if (button.classList.contains("pin-toggle")) {
    pins = pins.includes(key) ? pins.filter((k) => k !== key) : [...pins, key];
  } else {
    // Swap with the neighbour on this page (pins of metrics this run lacks keep their places).
    const shown = pins.filter((k) => series.has(k));
    const j = shown.indexOf(key) + (button.classList.contains("move-earlier") ? -1 : 1);
    if (j < 0 || j >= shown.length) return;
    const a = pins.indexOf(key);
    const b = pins.indexOf(shown[j]);
    [pins[a], pins[b]] = [pins[b], pins[a]];
  }
  relayoutPanels();
  savePins();
}
root.addEventListener("click", onPanelButton);

function ensureChart(key) {
  let s = series.get(key);
  if (s) return s;
  document.getElementById("no-metrics")?.remove();
  const cell = document.createElement("div");
  cell.className = "chart-cell";
  cell.dataset.panel = key;
  cell.innerHTML = `<div class="chart-tools">
    <button type="button" class="move-earlier" title="Move earlier">◀</button>
    <button type="button" class="move-later" title="Move later">▶</button>
    <button type="button" class="pin-toggle" aria-pressed="false"></button></div>`;
  for (const b of cell.querySelectorAll("button")) b.setAttribute("aria-label", `${b.className} ${key}`);
  const div = document.createElement("div");
  div.className = "chart";
  div.dataset.key = key;
  cell.appendChild(div);
  place(cell);
  packGroups();
  s = { steps: [], values: [], times: [], div, zoomed: false, smoothAcc: null, silent: false };
  series.set(key, s);
  Plotly.newPlot(div, traces(s), layout(key), { responsive: true, displaylogo: false });
  div.on("plotly_relayout", (ev) => onZoom(key, ev));
  return s;
}

function redraw(key) {
  const s = series.get(key);
  s.smoothAcc = null;
  Plotly.react(s.div, traces(s), layout(key));
}

function setSeries(key, points) {
  const s = ensureChart(key);
  s.steps = points.map((p) => p[0]);
  s.values = points.map((p) => p[1]);
  s.times = points.map((p) => p[2]);
  if (!s.zoomed) redraw(key);
  scheduleSharedRange();
}

function append(key, points) {
  const s = ensureChart(key);
  const last = s.steps.length ? s.steps[s.steps.length - 1] : -Infinity;
  const fresh = points.filter((p) => p[0] > last); // dedupe against the backlog and re-sent batches
  if (!fresh.length) return;
  const from = s.steps.length;
  for (const p of fresh) {
    s.steps.push(p[0]);
    s.values.push(p[1]);
    s.times.push(p[2]);
  }
  if (s.zoomed) return;
  scheduleSharedRange();
  const flatBroken = s.flat != null && fresh.some((p) => p[1] !== s.flat);
  if ((from < FEW_POINTS && s.steps.length >= FEW_POINTS) || flatBroken) {
    redraw(key); // markers off now that the line itself is visible; or a constant series has moved
    return;
  }
  const x = xs(s, from);
  const y = s.values.slice(from);
  const info = hoverInfo(s, from);
  if (view.smoothing) {
    let acc = s.smoothAcc ?? (from > 0 ? ema(s.values.slice(0, from), view.smoothing).pop() : y[0]);
    const sy = y.map((v) => (acc = view.smoothing * acc + (1 - view.smoothing) * v));
    s.smoothAcc = acc;
    Plotly.extendTraces(s.div, { x: [x, x], y: [y, sy], customdata: [info, info] }, [0, 1]);
  } else {
    Plotly.extendTraces(s.div, { x: [x], y: [y], customdata: [info] }, [0]);
  }
}

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

function bucketsFor(div) {
  return Math.max(200, Math.min(3000, Math.round((div?.clientWidth || 600) * 1.5)));
}

async function loadSeries(key) {
  const s = series.get(key);
  const data = await getJSON(`${seriesUrl}?key=${encodeURIComponent(key)}&buckets=${bucketsFor(s?.div)}`);
  setSeries(key, data.points);
}

function appendLogs(lines) {
  const fresh = lines.filter((l) => l[0] > lastLogId);
  if (!fresh.length) return;
  lastLogId = fresh[fresh.length - 1][0];
  const atBottom = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 20;
  const frag = document.createDocumentFragment();
  for (const [, stream, text] of fresh) {
    const line = document.createElement("div");
    line.className = `log-${stream}`;
    line.textContent = text; // untrusted text: never innerHTML
    frag.appendChild(line);
  }
  logEl.appendChild(frag);
  while (logEl.childElementCount > MAX_LOG_LINES) logEl.firstElementChild.remove();
  if (atBottom) logEl.scrollTop = logEl.scrollHeight;
}

function showStatus(status) {
  const panel = document.getElementById("status-panel");
  if (panel && panel.dataset.status !== status.status && window.htmx) {
    htmx.trigger(document.body, "arbiter:status"); // re-render the panel (buttons, duration)
  }
}

async function backlog() {
  const state = await getJSON(stateUrl); // seq first: deltas after it are applied on top
  await Promise.all(state.keys.map((k) => loadSeries(k)));
  const logs = await getJSON(`${logsUrl}?after=${lastLogId}`);
  appendLogs(logs.lines);
  return state;
}

async function resync() {
  ready = false;
  buffered = [];
  try {
    const state = await backlog();
    seq = state.seq;
    ready = true;
    const pending = buffered.filter((d) => d.seq > seq);
    buffered = [];
    for (const d of pending) apply(d);
  } catch (err) {
    stateLabel.textContent = `reload failed: ${err.message}`;
    scheduleResync(3000);
  }
}

function scheduleResync(ms = 200) {
  clearTimeout(resyncTimer);
  resyncTimer = setTimeout(resync, ms);
}

function apply(delta) {
  if (!ready) {
    buffered.push(delta);
    return;
  }
  if (delta.seq <= seq) return; // already in the backlog
  if (delta.first_seq > seq + 1) {
    scheduleResync(); // a message was dropped (full channel, reconnect): re-read
    return;
  }
  seq = delta.seq;
  for (const [key, points] of Object.entries(delta.metrics)) append(key, points);
  for (const key of delta.resync) if (!series.get(key)?.zoomed) loadSeries(key);
  if (delta.logs_truncated) getJSON(`${logsUrl}?after=${lastLogId}`).then((r) => appendLogs(r.lines));
  appendLogs(delta.logs);
  if (delta.status) showStatus(delta.status);
  window.arbiterLive.deltas += 1;
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${proto}//${location.host}${root.dataset.ws}`);
  socket.onopen = () => {
    stateLabel.textContent = "live";
    resync(); // the socket is open and buffering: now read the backlog
  };
  socket.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.kind === "delta") apply(msg);
  };
  socket.onclose = () => {
    stateLabel.textContent = "reconnecting…";
    ready = false;
    setTimeout(connect, 2000);
  };
}

async function onZoom(key, ev) {
  const s = series.get(key);
  if (s.silent) return;
  const together = sharesX(key) ? [...series.keys()].filter(sharesX) : [key];
  if (ev["xaxis.autorange"]) {
    if (sharesX(key)) sharedZoom = null;
    await Promise.all(together.map((k) => { series.get(k).zoomed = false; return loadSeries(k); }));
    return;
  }
  const lo = ev["xaxis.range[0]"];
  const hi = ev["xaxis.range[1]"];
  if (lo === undefined || hi === undefined) return; // a pan of the y axis, or our own range move
  if (sharesX(key)) sharedZoom = [lo, hi];
  await Promise.all(together.map((k) => zoomTo(k, lo, hi)));
}

// Full resolution inside [lo, hi] (axis units) for one chart.
async function zoomTo(key, rangeLo, rangeHi) {
  const s = series.get(key);
  let lo = rangeLo;
  let hi = rangeHi;
  if (view.x === "time") {
    // The API zooms by step: map the visible time range to the steps drawn there.
    const t0 = new Date(lo).getTime() / 1000;
    const t1 = new Date(hi).getTime() / 1000;
    const inside = s.steps.filter((_, i) => s.times[i] >= t0 && s.times[i] <= t1);
    if (!inside.length) {
      s.zoomed = true;
      Plotly.relayout(s.div, { "xaxis.range": [rangeLo, rangeHi] });
      return;
    }
    lo = inside[0];
    hi = inside[inside.length - 1];
  }
  s.zoomed = true;
  const url = `${seriesUrl}?key=${encodeURIComponent(key)}&start=${Math.floor(lo)}&end=${Math.ceil(hi)}&buckets=${bucketsFor(s.div)}`;
  const data = await getJSON(url);
  const detail = { steps: data.points.map((p) => p[0]), values: data.points.map((p) => p[1]),
    times: data.points.map((p) => p[2]) };
  const base = layout(key);
  const keepRange = { ...base, xaxis: { ...base.xaxis, range: [rangeLo, rangeHi], autorange: false } };
  Plotly.react(s.div, traces(detail), keepRange);
}

function bindControls() {
  const xSel = document.getElementById("x-axis");
  const smooth = document.getElementById("smoothing");
  const smoothOut = document.getElementById("smoothing-value");
  const logBox = document.getElementById("log-scale");
  const sharedBox = document.getElementById("shared-x");
  const redrawAll = () => {
    sharedZoom = null;
    for (const [k, s] of series) { s.zoomed = false; redraw(k); }
  };
  xSel.addEventListener("change", () => { view.x = xSel.value; redrawAll(); });
  sharedBox?.addEventListener("change", () => { view.shared = sharedBox.checked; redrawAll(); });
  smooth.addEventListener("input", () => {
    view.smoothing = Number(smooth.value);
    smoothOut.textContent = smooth.value;
    for (const k of series.keys()) redraw(k);
  });
  logBox.addEventListener("change", () => { view.log = logBox.checked; for (const k of series.keys()) redraw(k); });
}

// Worker-side events (the supervisor's log lines and status) cannot reach an in-memory channel
// layer in embedded mode: a light poll of the log tail covers that; the status panel polls itself.
setInterval(() => {
  if (document.hidden) return;
  getJSON(`${logsUrl}?after=${lastLogId}`).then((r) => appendLogs(r.lines)).catch(() => {});
  const panel = document.getElementById("status-panel");
  if (panel && TERMINAL.has(panel.dataset.status) && ready) {
    // The run is over: one last full read catches whatever the socket did not carry.
    if (!window.arbiterLive.finalRead) { window.arbiterLive.finalRead = true; scheduleResync(0); }
  }
}, 3000);

window.arbiterLive = {
  deltas: 0,
  finalRead: false,
  points: (key) => series.get(key)?.steps.length ?? 0,
  keys: () => [...series.keys()],
  pinned: () => [...root.querySelectorAll("#pinned-panels .chart-cell")].map((c) => c.dataset.panel),
  pinsSaved: null,
  runId,
};
bindControls();
connect();
