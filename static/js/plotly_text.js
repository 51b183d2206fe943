// User strings (run, model and metric names) shown by Plotly, as typed.
//
// Plotly draws a subset of HTML in every label it renders — titles, legends, hover boxes, tick
// labels: <b>, <i>, <a href>, <br>, <span style>. A name like `<a href=…>x</a>` would become a live
// link. Escaping &, < and > is enough: Plotly splits a label on tags first, then turns the entities
// of the text between them back into characters, so the name shows exactly as typed.
// Never put a user string inside a hovertemplate either: `%{…}` there is a placeholder (a run named
// "%{y}" would show a value). Give it as the trace's `name` and write `%{fullData.name}`.
export function plotlyText(value) {
  return String(value).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}
