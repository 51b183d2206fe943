// Annotator form: keyboard shortcuts, time on task, and one submit per click.
// Keys: an element with data-key="x" inside the current row (J/K move rows) wins; otherwise the
// form-level one (outside any row). Enter submits, S skips, F flags, R focuses the rationale.
(() => {
  "use strict";
  const form = document.getElementById("judgment-form");
  if (!form) return;
  const skipForm = document.getElementById("skip-form");
  const timeField = form.querySelector("input[name=time_ms]");
  const rows = Array.from(form.querySelectorAll("[data-row]"));
  let current = -1;
  let submitted = false;

  // Time on task counts only while the page is visible.
  let visibleMs = 0;
  let since = document.visibilityState === "visible" ? performance.now() : null;
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") since = performance.now();
    else if (since !== null) { visibleMs += performance.now() - since; since = null; }
  });
  const elapsed = () => Math.round(visibleMs + (since !== null ? performance.now() - since : 0));

  function setRow(index) {
    if (!rows.length) return;
    current = Math.max(0, Math.min(rows.length - 1, index));
    rows.forEach((row, i) => row.classList.toggle("is-current", i === current));
    rows[current].scrollIntoView({ block: "nearest" });
  }

  function activate(label) {
    const input = label.querySelector("input");
    if (!input) return false;
    if (input.type === "checkbox") input.checked = !input.checked;
    else input.checked = true;
    input.dispatchEvent(new Event("change", { bubbles: true }));
    return true;
  }

  function findKey(key) {
    const sel = `[data-key="${CSS.escape(key)}"]`;
    if (current >= 0) {
      const inRow = rows[current].querySelector(sel);
      if (inRow) return inRow;
      // Rows of one rubric item (one per plan) share its flag, which sits in the group's first row.
      const group = rows[current].dataset.group;
      if (group !== undefined) {
        const sibling = rows.find((r) => r.dataset.group === group && r.querySelector(sel));
        if (sibling) return sibling.querySelector(sel);
      }
    }
    return Array.from(form.querySelectorAll(sel)).find((el) => !el.closest("[data-row]")) || null;
  }

  function advanceIfAnswered() {
    // In a rubric, answering a row moves to the next one so a whole grid is a run of keystrokes.
    if (current < 0 || form.closest(".annotate").dataset.kind !== "rubric") return;
    if (rows[current].querySelector("input[type=radio]:checked") && current < rows.length - 1) setRow(current + 1);
  }

  function submitOnce(target) {
    if (submitted) return;
    if (target === form && !form.reportValidity()) return;
    submitted = true;
    if (timeField) timeField.value = String(elapsed());
    document.querySelectorAll(".annotate-actions button").forEach((b) => { b.disabled = true; });
    target.submit();
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); submitOnce(form); });
  skipForm.addEventListener("submit", (event) => { event.preventDefault(); submitOnce(skipForm); });
  document.getElementById("flag-button").addEventListener("click", () => {
    document.getElementById("skip-flag").value = "on";
    submitOnce(skipForm);
  });

  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.metaKey) return;
    const typing = event.target.closest && event.target.closest("textarea, input[type=text], input[type=number]");
    if (event.key === "Enter" && (event.ctrlKey || !typing)) {
      event.preventDefault();
      submitOnce(form);
      return;
    }
    if (event.key === "Escape" && typing) { event.target.blur(); return; }
    if (typing || event.ctrlKey) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (key === "j") { setRow(current + 1); event.preventDefault(); return; }
    if (key === "k") { setRow(current - 1); event.preventDefault(); return; }
    if (key === "s") { submitOnce(skipForm); event.preventDefault(); return; }
    if (key === "f") { document.getElementById("flag-button").click(); event.preventDefault(); return; }
    const focusTarget = form.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
    if (focusTarget) { focusTarget.focus(); event.preventDefault(); return; }
    const label = findKey(key);
    if (label && activate(label)) { event.preventDefault(); advanceIfAnswered(); }
  });

  if (rows.length) setRow(0);
})();
