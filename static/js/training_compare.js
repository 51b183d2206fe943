// Compare runs: overlay one metric of several runs (each downsampled by the server), by step or by
// time since each run's first point, with EMA smoothing and log scale.
/* global Plotly */
import { plotlyText } from "./plotly_text.js";

const chart = document.getElementById("compare-chart");
const ids = chart.dataset.runs.split(",");
// Names come as JSON (a name may hold any character, `|` and `,` included), escaped for Plotly.
const names = JSON.parse(document.getElementById("compare-names").textContent).map(plotlyText);
const keySel = document.getElementById("compare-key");
const xSel = document.getElementById("compare-x");
const smooth = document.getElementById("compare-smoothing");
const smoothOut = document.getElementById("compare-smoothing-value");
const logBox = document.getElementById("log-scale");
// Distinct, colour-blind-safe hues (Okabe–Ito, then Tableau) so ten overlaid runs stay tellable apart.
const COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7f7f7f", "#F0E442",
  "#8c564b", "#17becf"];
const FEW_POINTS = 50; // below this, draw markers too: a handful of points is invisible as a bare line

let cache = { key: null, results: [] };

function ema(values, alpha) {
  if (!alpha) return values;
  let acc = values.length ? values[0] : 0;
  return values.map((v) => (acc = alpha * acc + (1 - alpha) * v));
}

function fmtElapsed(s) {
  if (s < 60) return `${s.toFixed(0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

async function fetchAll(key) {
  const buckets = Math.round(chart.clientWidth * 1.5) || 1000;
  return Promise.all(ids.map((id) =>
    fetch(`${chart.dataset.api}${id}/metrics/?key=${encodeURIComponent(key)}&buckets=${buckets}`,
      { credentials: "same-origin" }).then((r) => (r.ok ? r.json() : { points: [] }))));
}

async function draw() {
  const key = keySel.value;
  if (cache.key !== key) cache = { key, results: await fetchAll(key) };
  const alpha = Number(smooth?.value || 0);
  const byTime = xSel?.value === "elapsed";
  const traces = [];
  cache.results.forEach((data, i) => {
    const pts = data.points;
    const t0 = pts.length ? pts[0][2] : 0;
    // Elapsed minutes since the run's first point: runs started hours apart still line up.
    const x = pts.map((p) => (byTime ? (p[2] - t0) / 60 : p[0]));
    const y = pts.map((p) => p[1]);
    const custom = pts.map((p) => (byTime ? `step ${p[0]}` : fmtElapsed(p[2] - t0)));
    const color = COLORS[i % COLORS.length];
    const mode = pts.length < FEW_POINTS ? "lines+markers" : "lines";
    // The name through %{fullData.name}, never pasted into the template (where %{…} is a placeholder).
    const hover = `%{fullData.name}: %{y:.4g} <span style="color:#888">(%{customdata})</span><extra></extra>`;
    if (alpha) {
      traces.push({ x, y, mode, name: names[i], legendgroup: names[i], showlegend: false, hoverinfo: "skip",
        line: { color, width: 1 }, opacity: 0.25, marker: { size: 4 } });
      traces.push({ x, y: ema(y, alpha), customdata: custom, mode: "lines", name: names[i], legendgroup: names[i],
        line: { color, width: 2.2 }, hovertemplate: hover });
    } else {
      traces.push({ x, y, customdata: custom, mode, name: names[i], line: { color, width: 1.8 },
        marker: { size: 5 }, hovertemplate: hover });
    }
  });
  Plotly.react(chart, traces, {
    title: { text: plotlyText(key), font: { size: 14 }, x: 0, xanchor: "left" },
    height: 440, margin: { l: 60, r: 20, t: 40, b: 90 },
    hovermode: "x unified",
    legend: { orientation: "h", y: -0.22, x: 0, font: { size: 12 } },
    xaxis: { title: { text: byTime ? "minutes since the run's first point" : "step" }, zeroline: false,
      unifiedhovertitle: { text: byTime ? "%{x:.1f} min" : "step %{x}" } },
    yaxis: { type: logBox.checked ? "log" : "linear", zeroline: false },
  }, { responsive: true, displaylogo: false });
  chart.dataset.traces = String(ids.length);
}

keySel?.addEventListener("change", draw);
xSel?.addEventListener("change", draw);
logBox?.addEventListener("change", draw);
smooth?.addEventListener("input", () => { smoothOut.textContent = smooth.value; draw(); });
if (keySel && keySel.value) draw();
