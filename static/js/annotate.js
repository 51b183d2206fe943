// Annotator form: keyboard shortcuts, time on task, what is missing said next to the field, one submit per click.
// Keys: an element with data-key="x" inside the current row (J/K move rows) wins; otherwise the form-level one
// (outside any row). Enter submits, S skips, F flags, R focuses the rationale. Violation items: a policy's
// number marks the current step as violating it; with ten or more policies, digits typed in a row make one
// number ("1" "2" is policy 12), committed as soon as no longer number is possible or after a short pause.
// D then a number toggles "dormant" for that policy.
(() => {
  "use strict";
  // A submit or skip answers with the next item's page (one request a judgment), or with the lease-expired
  // page. Put the page's own address in the bar and in this history entry, so a reload or Back asks for the
  // page instead of re-sending the form.
  const holder = document.querySelector("[data-page-url]");
  const pageUrl = holder && holder.dataset.pageUrl;
  if (pageUrl && window.location.pathname !== pageUrl) window.history.replaceState(null, "", pageUrl);
  const form = document.getElementById("judgment-form");
  if (!form) return;
  const skipForm = document.getElementById("skip-form");
  const timeField = form.querySelector("input[name=time_ms]");
  const rows = Array.from(form.querySelectorAll("[data-row]"));
  const kind = form.closest(".annotate").dataset.kind;
  const policyCount = form.querySelectorAll(".policy-list > li").length;
  const summary = document.getElementById("missing-summary");
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
      // Cells of one rubric item (one per plan) share its flag, which sits in the item's table row.
      const tr = rows[current].closest("tr");
      if (tr && tr.querySelector(sel)) return tr.querySelector(sel);
    }
    return Array.from(form.querySelectorAll(sel)).find((el) => !el.closest("[data-row]")) || null;
  }

  function advanceIfAnswered() {
    // In a rubric, answering a cell moves to the next one so a whole grid is a run of keystrokes.
    if (current < 0 || kind !== "rubric") return;
    if (rows[current].querySelector("input[type=radio]:checked") && current < rows.length - 1) setRow(current + 1);
  }

  // ---------------------------------------------------------------- what is missing, next to the field

  function clearMissing(container) {
    container.classList.remove("missing");
    container.querySelectorAll(".missing-message").forEach((el) => el.remove());
  }

  function markMissing(container) {
    if (container.classList.contains("missing")) return;
    container.classList.add("missing");
    const message = document.createElement("p");
    message.className = "field-error missing-message";
    message.setAttribute("role", "alert");
    message.textContent = container.dataset.missing || "Required.";
    container.appendChild(message);
  }

  function missingFields() {
    const missing = [];
    const seen = new Set();
    form.querySelectorAll("input[type=radio][required]").forEach((input) => {
      if (seen.has(input.name)) return;
      seen.add(input.name);
      if (!form.querySelector(`input[name="${CSS.escape(input.name)}"]:checked`)) {
        missing.push(input.closest("[data-missing]") || input.parentElement);
      }
    });
    const partly = form.querySelector("input[name=completion][value=partial]:checked");
    const fraction = form.querySelector("input[name=fraction]");
    if (partly && fraction) {
      const value = parseFloat(fraction.value);
      if (!(value > 0 && value < 1)) missing.push(fraction.closest("[data-missing]"));
    }
    return missing.filter(Boolean);
  }

  function showMissing() {
    form.querySelectorAll(".missing").forEach(clearMissing);
    const missing = missingFields();
    missing.forEach(markMissing);
    if (!missing.length) { summary.hidden = true; return true; }
    summary.textContent = missing.length === 1
      ? "One answer is missing: " + missing[0].dataset.missing
      : `${missing.length} answers are missing; each is marked below.`;
    summary.hidden = false;
    const first = missing[0];
    if (first.matches("[data-row]")) setRow(rows.indexOf(first));
    first.scrollIntoView({ block: "center" });
    const focusable = first.querySelector("input");
    if (focusable) focusable.focus({ preventScroll: true });
    return false;
  }

  form.addEventListener("change", (event) => {
    const container = event.target.closest && event.target.closest(".missing");
    if (container) clearMissing(container);
    if (event.target.name === "fraction" || event.target.name === "completion") {
      const fraction = form.querySelector("[data-group=fraction]");
      if (fraction) clearMissing(fraction);
    }
  });
  form.addEventListener("input", (event) => {
    const container = event.target.closest && event.target.closest(".missing");
    if (container) clearMissing(container);
  });

  function submitOnce(target) {
    if (submitted) return;
    if (target === form && !showMissing()) return;
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

  // ---------------------------------------------------------------- policy numbers (violation items)

  const buffer = document.getElementById("number-buffer");
  let digits = "";
  let dormantMode = false;
  let timer = null;

  function showBuffer() {
    if (!buffer) return;
    buffer.hidden = !digits && !dormantMode;
    buffer.textContent = (dormantMode ? "Dormant: policy " : "Violates policy ") + (digits || "…");
  }

  function commitNumber() {
    clearTimeout(timer);
    timer = null;
    const number = parseInt(digits, 10);
    const dormant = dormantMode;
    digits = "";
    dormantMode = false;
    showBuffer();
    if (!(number >= 1 && number <= policyCount)) return;
    if (dormant) {
      const label = form.querySelector(`[data-dormant="${number}"]`);
      if (label) activate(label);
      return;
    }
    if (current < 0) setRow(0);
    const label = rows[current] && rows[current].querySelector(`[data-policy="${number}"]`);
    if (label) activate(label);
  }

  function typeDigit(digit) {
    digits += digit;
    showBuffer();
    clearTimeout(timer);
    // Commit at once when no longer number exists (e.g. "2" of 13 policies); else wait for a second digit.
    if (parseInt(digits, 10) * 10 > policyCount) commitNumber();
    else timer = setTimeout(commitNumber, 900);
  }

  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.metaKey) return;
    const typing = event.target.closest && event.target.closest("textarea, input[type=text], input[type=number]");
    if (event.key === "Enter" && (event.ctrlKey || !typing)) {
      if (!typing && event.target.closest && event.target.closest("summary, button, a")) return;
      event.preventDefault();
      if (digits) commitNumber();
      submitOnce(form);
      return;
    }
    if (event.key === "Escape") {
      if (digits || dormantMode) { digits = ""; dormantMode = false; showBuffer(); return; }
      if (typing) { event.target.blur(); return; }
    }
    if (typing || event.ctrlKey) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (kind === "violation" && /^[0-9]$/.test(key) && (digits || dormantMode || key !== "0")) {
      typeDigit(key);
      event.preventDefault();
      return;
    }
    if (kind === "violation" && key === "d") { dormantMode = true; showBuffer(); event.preventDefault(); return; }
    if (key === "j") { setRow(current + 1); event.preventDefault(); return; }
    if (key === "k") { setRow(current - 1); event.preventDefault(); return; }
    if (key === "s") { submitOnce(skipForm); event.preventDefault(); return; }
    if (key === "f") { document.getElementById("flag-button").click(); event.preventDefault(); return; }
    const focusTarget = form.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
    if (focusTarget) {
      const details = focusTarget.closest("details");
      if (details) details.open = true;
      focusTarget.focus();
      event.preventDefault();
      return;
    }
    const label = findKey(key);
    if (label && activate(label)) { event.preventDefault(); advanceIfAnswered(); }
  });

  if (rows.length) setRow(0);
})();
