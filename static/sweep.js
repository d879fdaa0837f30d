// Direct Write Bench: the Sweep view. Start a sweep (writers, batch sizes x concurrencies,
// seconds per point), follow which point runs, then per writer a heatmap of rows/s and one of
// p99 over the grid, the best point and the knees marked (the server chooses them:
// bench/sweep.py). Server data reaches the page only through textContent (el()).

import { el } from "./app.js";
import { fetchWriters } from "./catalog.js";
import { errorMessage, postJson, requestJson } from "./http.js";

const API = "api/v1/sweeps";
const POLL_MS = 500;
const $ = (id) => document.getElementById(id);
const ui = {
  form: $("sweep-form"),
  writers: $("sweep-writer-choices"),
  batchSizes: $("sweep-batch-sizes"),
  concurrencies: $("sweep-concurrencies"),
  duration: $("sweep-duration"),
  warmup: $("sweep-warmup"),
  error: $("sweep-form-error"),
  start: $("sweep-start"),
  cancel: $("sweep-cancel"),
  progress: $("sweep-progress"),
  result: $("sweep-result"),
  summary: $("sweep-summary"),
  writerResults: $("sweep-writers"),
  history: $("sweep-history-list"),
};
let current = null; // the id of the sweep being followed
let timer = null;

const rowsFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

function fmtRows(value) {
  return typeof value === "number" ? rowsFormat.format(value) : "—";
}

function fmtMs(value) {
  if (typeof value !== "number") return "n/a";
  if (value < 1) return `${value.toFixed(3)} ms`;
  return value < 100 ? `${value.toFixed(2)} ms` : `${rowsFormat.format(value)} ms`;
}

/** "100, 1000" -> [100, 1000]; null when a part is not a whole number. */
function parseList(text) {
  const parts = text.split(",").map((p) => p.trim()).filter(Boolean);
  if (!parts.length || parts.some((p) => !/^\d+$/.test(p))) return null;
  return parts.map(Number);
}

function showError(message) {
  ui.error.textContent = message || "";
  ui.error.hidden = !message;
}

async function loadWriters() {
  try {
    const writers = await fetchWriters({ baseline: true });
    ui.writers.replaceChildren(
      ...writers.map((w) =>
        el("label", { className: "check" }, [
          el("input", { type: "checkbox", name: "sweep_writers", value: w.name, checked: w.name !== "null" && w.available !== false }),
          " ",
          el("span", { text: w.label || w.name }),
        ]),
      ),
    );
  } catch (error) {
    ui.writers.replaceChildren(el("p", { className: "field-error", text: `The writers could not be read: ${error.message}` }));
  }
}

function formConfig() {
  const writers = [...ui.writers.querySelectorAll("input[name=sweep_writers]:checked")].map((i) => i.value);
  if (!writers.length) return { error: "Choose at least one writer." };
  const batchSizes = parseList(ui.batchSizes.value);
  if (!batchSizes) return { error: "Batch sizes: whole numbers separated by commas, e.g. 100,1000." };
  const concurrencies = parseList(ui.concurrencies.value);
  if (!concurrencies) return { error: "Concurrencies: whole numbers separated by commas, e.g. 1,4." };
  return {
    config: {
      writers,
      batch_sizes: batchSizes,
      concurrencies,
      duration_s: Number(ui.duration.value),
      warmup_s: Number(ui.warmup.value),
    },
  };
}

async function start(event) {
  event.preventDefault();
  showError("");
  const { config, error } = formConfig();
  if (error) return showError(error);
  ui.start.disabled = true;
  const { ok, status, body } = await postJson(API, config);
  if (!ok) {
    ui.start.disabled = false;
    return showError(errorMessage(status, body));
  }
  follow(body.id);
}

function follow(id) {
  current = id;
  clearTimeout(timer);
  poll();
}

async function poll() {
  const id = current;
  const { ok, status, body } = await requestJson(`${API}/${encodeURIComponent(id)}`);
  if (id !== current) return;
  if (!ok) {
    ui.start.disabled = false;
    ui.cancel.hidden = true;
    return showError(errorMessage(status, body));
  }
  const running = body.status === "running";
  ui.start.disabled = running;
  ui.cancel.hidden = !running;
  if (running) {
    const p = body.progress;
    ui.progress.hidden = false;
    ui.progress.textContent = p && p.point
      ? `Sweep ${body.id}: point ${p.point} of ${p.points} — batch size ${fmtRows(p.batch_size)} × concurrency ${p.concurrency}`
      : `Sweep ${body.id}: starting (${body.points.length} points)`;
    timer = setTimeout(poll, POLL_MS);
    return;
  }
  ui.progress.hidden = false;
  ui.progress.textContent = `Sweep ${body.id}: ${body.status}.`;
  render(body);
  loadHistory();
}

async function cancel() {
  if (!current) return;
  ui.cancel.disabled = true;
  await postJson(`${API}/${encodeURIComponent(current)}/cancel`, {});
  ui.cancel.disabled = false;
}

// -- the result ---------------------------------------------------------------------------

function render(sweep) {
  const cfg = sweep.config;
  const length = cfg.duration_s != null ? `${cfg.duration_s} s` : `${fmtRows(cfg.records)} rows`;
  ui.summary.replaceChildren(
    `${sweep.status} · mode ${sweep.environment.mode || "unknown"} · ${sweep.points.length} points, ${length} per writer and point · `,
    el("a", { href: `${API}/${encodeURIComponent(sweep.id)}/report`, text: "HTML report", target: "_blank" }),
  );
  const notes = sweep.warnings.map((w) => el("p", { className: "muted small", text: w }));
  ui.writerResults.replaceChildren(...notes, ...sweep.writers.map((w) => writerBlock(sweep, w)));
  ui.result.hidden = false;
}

function writerBlock(sweep, analysis) {
  const best = analysis.best;
  const bestText = best
    ? `Best: batch size ${fmtRows(best.batch_size)} × concurrency ${best.concurrency} — ${fmtRows(best.rows_per_s)} rows/s, p99 ${fmtMs(best.p99_ms)} (${analysis.best_note}).`
    : `No best point: ${analysis.best_note}.`;
  const knees = analysis.knees.map((k) =>
    el("li", {
      text: `${k.along === "concurrency" ? `batch size ${fmtRows(k.fixed)}, concurrency rising` : `concurrency ${k.fixed}, batch size rising`}: ${k.note}`,
    }),
  );
  return el("section", { className: "sweep-writer", "data-writer": analysis.writer }, [
    el("h4", { text: analysis.label }),
    el("p", { className: "sweep-best", text: bestText }),
    el("ul", { className: "sweep-knees small" }, knees),
    el("div", { className: "sweep-maps" }, [
      heatmap(sweep, analysis, "rows_per_s", "rows/s"),
      heatmap(sweep, analysis, "p99_ms", "p99 latency"),
    ]),
  ]);
}

/** One metric over the grid as a table: batch sizes down, concurrencies across. */
function heatmap(sweep, analysis, metric, title) {
  const { batch_sizes: sizes, concurrencies: concs } = sweep.config;
  const cellOf = (b, c) => {
    const point = sweep.points.find((p) => p.batch_size === b && p.concurrency === c);
    return point && point.writers.find((w) => w.writer === analysis.writer);
  };
  const valueOf = (w) => (w && w.status === "completed" && typeof w[metric] === "number" ? w[metric] : null);
  const values = sizes.flatMap((b) => concs.map((c) => valueOf(cellOf(b, c)))).filter((v) => v !== null);
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const knees = new Set(analysis.knees.filter((k) => k.knee).map((k) => `${k.knee.batch_size}x${k.knee.concurrency}`));
  const best = analysis.best;
  const head = el("tr", {}, [
    el("th", { scope: "col", text: "batch size \\ concurrency" }),
    ...concs.map((c) => el("th", { scope: "col", text: String(c) })),
  ]);
  const rows = sizes.map((b) =>
    el("tr", {}, [
      el("th", { scope: "row", text: fmtRows(b) }),
      ...concs.map((c) => {
        const w = cellOf(b, c);
        const v = valueOf(w);
        const isBest = best && best.batch_size === b && best.concurrency === c;
        const isKnee = knees.has(`${b}x${c}`);
        const t = v === null ? null : hi > lo ? (v - lo) / (hi - lo) : 1;
        let text;
        let why = "";
        if (!w) text = "—";
        else if (w.status !== "completed") {
          text = w.status;
          why = w.error || "";
        } else if (metric === "p99_ms" && v === null) {
          text = "n/a";
          why = `p99 unsupported: ${w.p99_unsupported}`;
        } else text = metric === "rows_per_s" ? fmtRows(v) : fmtMs(v);
        const marks = [isBest ? "★ best" : null, isKnee ? "▲ knee" : null].filter(Boolean);
        const td = el(
          "td",
          {
            className: ["sweep-cell", metric, isBest ? "best" : "", isKnee ? "knee" : "", t === null ? "empty" : t > 0.55 ? "dark" : ""].filter(Boolean).join(" "),
            "data-batch-size": b,
            "data-concurrency": c,
            title: why || null,
          },
          [el("span", { className: "sweep-value", text }), marks.length ? el("span", { className: "sweep-mark", text: marks.join(" + ") }) : null],
        );
        if (t !== null) td.style.setProperty("--t", t.toFixed(3));
        return td;
      }),
    ]),
  );
  return el("figure", { className: "sweep-map" }, [
    el("figcaption", { text: title }),
    el("table", { className: "sweep-heatmap", "data-metric": metric }, [el("thead", {}, head), el("tbody", {}, rows)]),
  ]);
}

// -- history ------------------------------------------------------------------------------

async function loadHistory() {
  const { ok, body } = await requestJson(API);
  if (!ok || !Array.isArray(body)) return;
  if (!body.length) return;
  ui.history.replaceChildren(
    ...body.map((s) =>
      el("li", {}, [
        el("button", { type: "button", className: "button button-quiet", "data-sweep": s.id, text: s.id }),
        ` ${s.status} · ${s.writers.join(", ")} · batch sizes ${s.batch_sizes.join(", ")} × concurrencies ${s.concurrencies.join(", ")}`,
      ]),
    ),
  );
}

ui.form.addEventListener("submit", start);
ui.cancel.addEventListener("click", cancel);
ui.history.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-sweep]");
  if (button) follow(button.dataset.sweep);
});
loadWriters();
loadHistory();
