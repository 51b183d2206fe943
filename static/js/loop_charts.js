// Charts of the loop app (Plotly, vendored): the leaderboard, and a run's checkpoint ratings by training step
// drawn above the run's own reward curve. Drawn on load and whenever htmx swaps a card in.
import { plotlyText } from "./plotly_text.js";

const CONFIG = { displayModeBar: false, responsive: true };

function data(el) {
  const script = el.querySelector("script[type='application/json']");
  return script ? JSON.parse(script.textContent) : [];
}

function leaderboard(el) {
  const rows = data(el);
  if (!rows.length) return;
  const trace = {
    type: "scatter", mode: "markers", x: rows.map((r) => r.rating), y: rows.map((r) => plotlyText(r.label)),
    error_x: { type: "data", symmetric: false, array: rows.map((r) => r.high - r.rating), arrayminus: rows.map((r) => r.rating - r.low) },
    hovertemplate: "%{y}: %{x:.0f}<extra></extra>",
  };
  const layout = { height: 60 + 28 * rows.length, margin: { t: 10, r: 20, b: 40, l: 260 },
    xaxis: { title: "rating (Elo scale)" }, yaxis: { autorange: "reversed", automargin: true } };
  Plotly.newPlot(el, [trace], layout, CONFIG);
}

async function btSteps(el) {
  const points = data(el);
  if (!points.length) return;
  const traces = [{
    type: "scatter", mode: "lines+markers", name: "people's rating", x: points.map((p) => p.step), y: points.map((p) => p.rating),
    error_y: { type: "data", symmetric: false, array: points.map((p) => p.high - p.rating), arrayminus: points.map((p) => p.rating - p.low) },
    hovertemplate: "step %{x}: %{y:.0f}<extra></extra>", yaxis: "y",
  }];
  const key = el.dataset.rewardKey;
  if (key) {
    try {
      const response = await fetch(`${el.dataset.metricsUrl}?key=${encodeURIComponent(key)}`, { credentials: "same-origin" });
      if (response.ok) {
        const series = await response.json();
        traces.push({ type: "scatter", mode: "lines", name: plotlyText(key), x: series.points.map((p) => p[0]),
          y: series.points.map((p) => p[1]), yaxis: "y2", line: { width: 1 } });
      }
    } catch (error) { /* the ratings still draw without the reward curve */ }
  }
  const layout = {
    height: 380, margin: { t: 10, r: 20, b: 40, l: 60 }, showlegend: true, legend: { orientation: "h" },
    grid: { rows: 2, columns: 1, pattern: "independent", roworder: "top to bottom" },
    xaxis: { title: "", matches: "x2" }, xaxis2: { title: "training step" },
    yaxis: { title: "rating", domain: [0.45, 1] }, yaxis2: { title: plotlyText(key || ""), domain: [0, 0.35], anchor: "x2" },
  };
  traces.forEach((t) => { if (t.yaxis === "y2") t.xaxis = "x2"; });
  Plotly.newPlot(el, traces, layout, CONFIG);
}

function draw(root) {
  root.querySelectorAll("[data-chart='leaderboard']").forEach(leaderboard);
  root.querySelectorAll("[data-chart='bt-steps']").forEach(btSteps);
}

draw(document);
document.body.addEventListener("htmx:load", (event) => draw(event.target));
