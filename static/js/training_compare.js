// Compare runs: overlay one metric of several runs (each downsampled by the server), log scale.
/* global Plotly */

const chart = document.getElementById("compare-chart");
const ids = chart.dataset.runs.split(",");
const names = chart.dataset.names.split("|");
const keySel = document.getElementById("compare-key");
const logBox = document.getElementById("log-scale");

async function draw() {
  const key = keySel.value;
  const buckets = Math.round(chart.clientWidth * 1.5) || 1000;
  const results = await Promise.all(ids.map((id) =>
    fetch(`${chart.dataset.api}${id}/metrics/?key=${encodeURIComponent(key)}&buckets=${buckets}`,
      { credentials: "same-origin" }).then((r) => (r.ok ? r.json() : { points: [] }))));
  const traces = results.map((data, i) => ({
    x: data.points.map((p) => p[0]), y: data.points.map((p) => p[1]), mode: "lines", name: names[i],
  }));
  Plotly.react(chart, traces, {
    title: { text: key }, height: 420, margin: { l: 60, r: 20, t: 40, b: 40 },
    xaxis: { title: { text: "step" } }, yaxis: { type: logBox.checked ? "log" : "linear" },
  }, { responsive: true, displaylogo: false });
  chart.dataset.traces = String(traces.length);
}

keySel?.addEventListener("change", draw);
logBox?.addEventListener("change", draw);
if (keySel && keySel.value) draw();
