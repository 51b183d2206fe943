// Live charts of one run: open the socket and buffer, read the backlog over HTTP, then apply the
// buffered deltas newer than the backlog and every delta after that (appended with extendTraces,
// never redrawn). The socket is a hint: a gap in `seq`, a "resync" key or a reconnect re-reads.
/* global Plotly, htmx */

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
const view = { x: "step", smoothing: 0, log: false };

function groupOf(key) {
  const i = key.indexOf("/");
  return i < 0 ? "train" : key.slice(0, i);
}

function groupDiv(group) {
  let section = root.querySelector(`section[data-group="${CSS.escape(group)}"]`);
  if (!section) {
    section = document.createElement("section");
    section.className = "chart-group";
    section.dataset.group = group;
    section.innerHTML = `<h3></h3><div class="chart-grid"></div>`;
    section.querySelector("h3").textContent = group;
    const sections = [...root.querySelectorAll("section.chart-group")];
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

function traces(s) {
  const raw = { x: xs(s), y: s.values, mode: "lines", name: "raw", line: { width: 1.5, color: "#3257d6" } };
  if (!view.smoothing) return [raw];
  raw.opacity = 0.3;
  const smooth = { x: raw.x, y: ema(s.values, view.smoothing), mode: "lines", name: "smoothed",
    line: { width: 2, color: "#3257d6" } };
  return [raw, smooth];
}

function layout(key) {
  return {
    title: { text: key, font: { size: 13 } }, margin: { l: 50, r: 10, t: 30, b: 30 }, height: 240,
    showlegend: false, xaxis: { type: view.x === "time" ? "date" : "linear" },
    yaxis: { type: view.log ? "log" : "linear" }, uirevision: `${view.x}-${view.log}`,
  };
}

function ensureChart(key) {
  let s = series.get(key);
  if (s) return s;
  document.getElementById("no-metrics")?.remove();
  const div = document.createElement("div");
  div.className = "chart";
  div.dataset.key = key;
  const grid = groupDiv(groupOf(key));
  const siblings = [...grid.children];
  grid.insertBefore(div, siblings.find((c) => c.dataset.key > key) || null);
  s = { steps: [], values: [], times: [], div, zoomed: false, smoothAcc: null };
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
  const x = xs(s, from);
  const y = s.values.slice(from);
  if (view.smoothing) {
    let acc = s.smoothAcc ?? (from > 0 ? ema(s.values.slice(0, from), view.smoothing).pop() : y[0]);
    const sy = y.map((v) => (acc = view.smoothing * acc + (1 - view.smoothing) * v));
    s.smoothAcc = acc;
    Plotly.extendTraces(s.div, { x: [x, x], y: [y, sy] }, [0, 1]);
  } else {
    Plotly.extendTraces(s.div, { x: [x], y: [y] }, [0]);
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
  if (ev["xaxis.autorange"]) {
    s.zoomed = false;
    await loadSeries(key);
    return;
  }
  let lo = ev["xaxis.range[0]"];
  let hi = ev["xaxis.range[1]"];
  if (lo === undefined || hi === undefined) return;
  if (view.x === "time") {
    // The API zooms by step: map the visible time range to the steps drawn there.
    const t0 = new Date(lo).getTime() / 1000;
    const t1 = new Date(hi).getTime() / 1000;
    const inside = s.steps.filter((_, i) => s.times[i] >= t0 && s.times[i] <= t1);
    if (!inside.length) return;
    lo = inside[0];
    hi = inside[inside.length - 1];
  }
  s.zoomed = true;
  const url = `${seriesUrl}?key=${encodeURIComponent(key)}&start=${Math.floor(lo)}&end=${Math.ceil(hi)}&buckets=${bucketsFor(s.div)}`;
  const data = await getJSON(url);
  const detail = { steps: data.points.map((p) => p[0]), values: data.points.map((p) => p[1]),
    times: data.points.map((p) => p[2]) };
  const keepRange = { ...layout(key), xaxis: { ...layout(key).xaxis, range: [ev["xaxis.range[0]"], ev["xaxis.range[1]"]] } };
  Plotly.react(s.div, traces(detail), keepRange);
}

function bindControls() {
  const xSel = document.getElementById("x-axis");
  const smooth = document.getElementById("smoothing");
  const smoothOut = document.getElementById("smoothing-value");
  const logBox = document.getElementById("log-scale");
  xSel.addEventListener("change", () => { view.x = xSel.value; for (const k of series.keys()) redraw(k); });
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
  runId,
};
bindControls();
connect();
