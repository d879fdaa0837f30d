// Direct Write Bench: the Benchmark view. Start a run, watch it live over a WebSocket, read the
// side-by-side table and the charts, browse the history, compare two runs.
// Server data reaches the page only through textContent (el()) and chart data, never as HTML.
// Charts are uPlot (static/vendor, the global `uPlot`); every chart has a table beside it.

import { badge, el, formatCount, keyValueList, plural } from "./app.js";
import { fetchWriters, findWorkload, loadWorkloads, onWorkloads, writerColor as colorOf } from "./catalog.js";
import { cleanMessage, errorMessage, postJson, requestJson } from "./http.js";
import { installHistory, labelControl, modeCell, reportLinks, rowActions } from "./history.js";

const API = "api/v1/benchmarks";
// The generator parameters of the built-in workloads that take one (the fleet's size).
const WORKLOAD_PARAMETERS = { telemetry: ["drivers"] };
const BASELINE_DASH = [6, 4];
const FIELDS = [
  "workload",
  "drivers",
  "pad_column",
  "records",
  "duration_s",
  "batch_size",
  "concurrency",
  "streams",
  "clients",
  "executor",
  "record_bytes",
  "warmup_s",
  "seed",
  "rate",
  "parallel",
  "repeat",
  "visibility",
  "visibility_poll_ms",
];
const FIELD_LABELS = {
  workload: "Workload",
  drivers: "Drivers",
  pad_column: "Padded column",
  writers: "Writers",
  records: "Records per writer",
  duration_s: "Seconds per writer",
  batch_size: "Batch size",
  concurrency: "Concurrency",
  streams: "Streams",
  clients: "Clients",
  executor: "Executor",
  record_bytes: "Record size",
  warmup_s: "Warm-up",
  seed: "Seed",
  rate: "Target rate",
  parallel: "Run the writers at the same time",
  repeat: "Repeats",
  visibility: "Measure visibility",
  visibility_poll_ms: "Visibility poll",
};
// The side-by-side table: `better` says which end of a column wins.
const BASE_COLUMNS = [
  {
    key: "batches",
    label: "Batches",
    title: "batches measured (after the warm-up)",
    better: null,
    get: (w) => w.batches,
    format: formatNumber,
  },
  {
    key: "elapsed_s",
    label: "Measured",
    unit: "s",
    title: "seconds measured (after the warm-up)",
    better: null,
    get: (w) => w.elapsed_s,
    format: (v) => (typeof v === "number" ? v.toFixed(2) : "—"),
  },
  { key: "rows_per_s", label: "Rows/s", better: "high", get: (w) => w.rows_per_s, format: formatNumber },
  { key: "mib_per_s", label: "MiB/s", better: "high", get: (w) => w.mib_per_s, format: formatMib },
  ...["p50", "p95", "p99", "p99.9"].map((key) => ({
    key,
    label: key,
    unit: "ms",
    better: "low",
    get: (w) => (unsupported(w.latency_ms, key) ? null : latency(w, key)),
    unsupported: (w) => unsupported(w.latency_ms, key),
    format: formatMsValue,
  })),
  { key: "max", label: "max", unit: "ms", better: "low", get: (w) => latency(w, "max"), format: formatMsValue },
  {
    key: "errors",
    label: "Errors",
    unit: "batches",
    title: "failed batches",
    better: "low",
    get: (w) => w.failed_batches,
    format: formatNumber,
  },
  {
    key: "visibility_p95",
    label: "Visibility p95",
    unit: "ms",
    title: "acknowledgement to rows readable in the target",
    better: "low",
    get: (w) => (w.visibility ? w.visibility.p95_ms : null),
    format: formatMsValue,
  },
  {
    key: "cpu_per_m_rows",
    label: "Client CPU",
    unit: "s / M rows",
    title:
      "CPU seconds of the benchmarking process per million rows acknowledged in the measured window (the null baseline's is the harness's own share)",
    better: "low",
    get: (w) => (typeof w.client_cpu_s_per_million_rows === "number" ? w.client_cpu_s_per_million_rows : null),
    format: formatMib,
  },
  {
    key: "wire_bytes_per_row",
    label: "Wire",
    unit: "bytes / row",
    title:
      "bytes the client put on the wire per row (the local stand-in's byte counter, or the encoded payloads where no stand-in meters the interface)",
    better: null,
    get: (w) => (typeof w.wire_bytes_per_row === "number" ? w.wire_bytes_per_row : null),
    format: formatNumber,
    cellTitle: (w) => w.wire_bytes_source || null,
  },
  {
    key: "stream_rows_per_s",
    label: "Per stream",
    unit: "rows/s",
    title:
      "rows/s over the writer's streams × clients: what one stream carried on average (the published quotas are per stream)",
    better: null,
    get: (w) => (typeof w.rows_per_s === "number" && w.batches > 0 ? w.rows_per_s / shardsOf(w) : null),
    format: formatNumber,
    cellTitle: (w) => `${plural(w.streams || 1, "stream")} × ${plural(w.clients || 1, "client")}`,
  },
  {
    key: "quota_rows_per_s",
    label: "Quota ceiling",
    unit: "rows/s (projection)",
    title:
      "Zerobus only: the rows/s the published quotas (100 MB/s and 100,000 records/s per stream, 10,000 REST requests/s, 10 GB/s per table) allow one stream or REST client at the measured bytes per row; a projection, not a measurement",
    better: null,
    get: (w) => (w.quota_projection ? w.quota_projection.rows_per_s : null),
    format: formatNumber,
    cellTitle: (w) =>
      w.quota_projection
        ? `per ${w.quota_projection.per}, limited by ${w.quota_projection.limited_by}; ${w.quota_projection.note}`
        : null,
  },
];
const RATE_COLUMNS = [
  {
    key: "corrected_p99",
    label: "Corrected p99",
    unit: "ms",
    title: "from each batch's scheduled start (coordinated omission corrected)",
    better: "low",
    get: (w) => (unsupported(w.latency_from_intended_ms, "p99") ? null : latencyOf(w.latency_from_intended_ms, "p99")),
    unsupported: (w) => unsupported(w.latency_from_intended_ms, "p99"),
    format: formatMsValue,
  },
  {
    key: "send_delay_p99",
    label: "Send delay p99",
    unit: "ms",
    title: "actual send minus scheduled start",
    better: "low",
    get: (w) => (unsupported(w.send_delay_ms, "p99") ? null : latencyOf(w.send_delay_ms, "p99")),
    unsupported: (w) => unsupported(w.send_delay_ms, "p99"),
    format: formatMsValue,
  },
];
const METRIC_LABELS = {
  rows_per_s: "Rows/s",
  mib_per_s: "MiB/s",
  p50_ms: "p50 ms",
  p95_ms: "p95 ms",
  p99_ms: "p99 ms",
  "p99.9_ms": "p99.9 ms",
  max_ms: "max ms",
  visibility_p95_ms: "Visibility p95 ms",
  failed_batches: "Errors (failed batches)",
};
// Percentile axis ticks: x = 1 / (1 - p).
const PERCENTILE_TICKS = [
  [2, "50%"],
  [10, "90%"],
  [100, "99%"],
  [1e3, "99.9%"],
  [1e4, "99.99%"],
  [1e5, "99.999%"],
  [1e6, "99.9999%"],
];
const SHORT_RUN_S = 5; // a writer measured for less ends its live series on its summary rate
const QUIET_CHECK_MS = 3000; // no socket message for this long: ask the API how the run is
const POLL_MS = 1000;
const MAX_MISSES = 10; // polls in a row without an answer before giving up on a run

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("bench-form"),
  writerChoices: $("bench-writer-choices"),
  workload: $("bench-workload"),
  workloadDescription: $("bench-workload-description"),
  padColumn: $("bench-pad_column"),
  start: $("bench-start"),
  cancel: $("bench-cancel"),
  status: $("bench-status"),
  alert: $("bench-alert"),
  live: $("bench-live"),
  liveHeading: $("bench-live-heading"),
  liveBadge: $("bench-live-badge"),
  progress: $("bench-progress"),
  liveChart: $("bench-live-chart"),
  result: $("bench-result"),
  resultHeading: $("bench-result-heading"),
  resultBadge: $("bench-result-badge"),
  downloads: $("bench-downloads"),
  resultMeta: $("bench-result-meta"),
  warnings: $("bench-warnings"),
  table: $("bench-table"),
  pctChart: $("bench-pct-chart"),
  pctCaption: $("bench-pct-caption"),
  tputChart: $("bench-tput-chart"),
  tputWindow: $("bench-tput-window"),
  tputCaption: $("bench-tput-caption"),
  historyRows: $("bench-history-rows"),
  historyStatus: $("bench-history-status"),
  historyRefresh: $("bench-history-refresh"),
  compare: $("bench-compare"),
  compareHint: $("bench-compare-hint"),
  compareResult: $("bench-compare-result"),
  compareHeading: $("bench-compare-heading"),
  compareRuns: $("bench-compare-runs"),
  compareTable: $("bench-compare-table"),
  compareNotes: $("bench-compare-notes"),
  intervals: $("bench-intervals"),
  scale: $("bench-scale"),
};

/** The run being watched: {id, config, writers, xs, ys, socket, timers, finished}. */
let watched = null;
let history = [];
const charts = new Map(); // container element -> uPlot instance

// ---------------------------------------------------------------------------------------
// Formatting

const integerFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

function formatNumber(value) {
  if (typeof value !== "number") return "—";
  return value >= 100 ? integerFormat.format(value) : formatCount(value);
}

function formatMib(value) {
  return typeof value === "number" ? value.toFixed(value >= 100 ? 1 : 3) : "—";
}

/** Milliseconds with about three significant digits. */
function formatMsValue(value) {
  if (typeof value !== "number") return "—";
  const digits = value >= 100 ? 0 : value >= 10 ? 1 : value >= 1 ? 2 : 3;
  return new Intl.NumberFormat("en-US", { maximumFractionDigits: digits }).format(value);
}

function formatSeconds(value) {
  return typeof value === "number" ? `${value.toFixed(1)} s` : "—";
}

function formatPercent(fraction) {
  if (typeof fraction !== "number") return "—";
  const sign = fraction > 0 ? "+" : "";
  return `${sign}${(fraction * 100).toFixed(1)}%`;
}

function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso || "—");
  return date.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "medium" });
}

/** The writers of GET /api/v1/writers?baseline=true, by name, in the registry's order. */
let writerInfo = new Map();

function writerLabel(name, fallback) {
  const info = writerInfo.get(name);
  return (info && info.label) || fallback || String(name);
}

function latency(w, key) {
  return latencyOf(w.latency_ms, key);
}

function latencyOf(summary, key) {
  return summary && typeof summary[key] === "number" ? summary[key] : null;
}

/** Why a percentile is not shown (too few batches: the result's rule), or null. */
function unsupported(summary, key) {
  const reasons = summary && summary.unsupported && typeof summary.unsupported === "object" ? summary.unsupported : {};
  return typeof reasons[key] === "string" ? reasons[key] : null;
}

function writerColor(name, index = 0) {
  const known = [...writerInfo.keys()].indexOf(name);
  return colorOf(writerInfo.get(name), known >= 0 ? known : writerInfo.size + index);
}

/** The harness baseline stores nothing: drawn dashed, never ranked. */
function isBaseline(name) {
  const info = writerInfo.get(name);
  return Boolean(info && info.stores_rows === false);
}

/** One line for a run's load: what each writer was asked to do. */
function describeWorkload(cfg) {
  if (!cfg) return "—";
  const parts = [];
  if (typeof cfg.duration_s === "number") parts.push(`${formatCount(cfg.duration_s)} s per writer`);
  else if (typeof cfg.records === "number") parts.push(`${formatNumber(cfg.records)} records per writer`);
  if (typeof cfg.batch_size === "number") parts.push(`batches of ${formatNumber(cfg.batch_size)}`);
  if (typeof cfg.concurrency === "number")
    parts.push(`${cfg.concurrency} in flight${cfg.streams > 1 ? " per stream" : ""}`);
  const streams = typeof cfg.streams === "number" ? cfg.streams : 1;
  const clients = typeof cfg.clients === "number" ? cfg.clients : 1;
  if (streams > 1 || clients > 1)
    parts.push(`${plural(streams, "stream")} × ${plural(clients, "client")}${cfg.executor ? ` (${cfg.executor})` : ""}`);
  if (typeof cfg.record_bytes === "number")
    parts.push(cfg.record_bytes > 0 ? `${formatNumber(cfg.record_bytes)} B records` : "records unpadded");
  if (typeof cfg.drivers === "number") parts.push(`${formatNumber(cfg.drivers)} drivers`);
  if (cfg.pad_column) parts.push(`padded on ${cfg.pad_column}`);
  parts.push(typeof cfg.rate === "number" ? `${formatNumber(cfg.rate)} rows/s target` : "max rate");
  if (cfg.parallel === true) parts.push("writers in parallel");
  if (typeof cfg.repeat === "number" && cfg.repeat > 1) parts.push(`${cfg.repeat} repeats`);
  return parts.join(" · ");
}

/** The workload's name a run (or a history summary) names, if it names one. */
function workloadNameOf(run) {
  if (!run) return null;
  const w = run.workload;
  if (w && typeof w.name === "string") return w.name;
  if (w && typeof w.workload === "string") return w.workload;
  if (run.config && typeof run.config.workload === "string") return run.config.workload;
  if (typeof run.workload_name === "string") return run.workload_name;
  return null;
}

// ---------------------------------------------------------------------------------------
// The form

function numberOrNull(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

function selectedWorkload() {
  return ui.workload.value || null;
}

function parametersOf(name) {
  const workload = findWorkload(name);
  return (workload && workload.builtin && WORKLOAD_PARAMETERS[name]) || [];
}

function readConfig() {
  const byDuration = ui.form.querySelector('[name="length_kind"]:checked').value === "duration";
  const workload = selectedWorkload();
  const config = {
    writers: [...ui.form.querySelectorAll('[name="writers"]:checked')].map((input) => input.value),
    records: byDuration ? null : numberOrNull("bench-records"),
    duration_s: byDuration ? numberOrNull("bench-duration_s") : null,
    batch_size: numberOrNull("bench-batch_size"),
    concurrency: numberOrNull("bench-concurrency"),
    streams: numberOrNull("bench-streams") ?? 1,
    clients: numberOrNull("bench-clients") ?? 1,
    record_bytes: numberOrNull("bench-record_bytes"),
    warmup_s: numberOrNull("bench-warmup_s"),
    seed: numberOrNull("bench-seed"),
    rate: numberOrNull("bench-rate"),
    parallel: $("bench-parallel").checked,
    repeat: numberOrNull("bench-repeat") ?? 1,
    visibility: $("bench-visibility").checked,
    visibility_poll_ms: numberOrNull("bench-visibility_poll_ms"),
  };
  if ($("bench-executor").value) config.executor = $("bench-executor").value;
  if (workload) config.workload = workload;
  if (parametersOf(workload).includes("drivers")) config.drivers = numberOrNull("bench-drivers");
  if (ui.padColumn.value) config.pad_column = ui.padColumn.value;
  return config;
}

/** The writer checkboxes, one per writer of the registry; unavailable ones say why. */
function renderWriterChoices(writers) {
  const checked = new Set(
    [...ui.form.querySelectorAll('[name="writers"]')].filter((box) => box.checked).map((box) => box.value),
  );
  const first = checked.size === 0;
  ui.writerChoices.replaceChildren(
    ...writers.map((writer) => {
      const baseline = writer.stores_rows === false;
      const on = first ? writer.available && !baseline : checked.has(writer.name);
      return el("label", { className: "check", "data-writer": writer.name, "data-available": String(writer.available) }, [
        el("input", { type: "checkbox", name: "writers", value: writer.name, checked: on }),
        " ",
        el("span", {}, [
          el("span", {
            className: "writer-swatch",
            "aria-hidden": "true",
            style: `background:${writerColor(writer.name)}`,
          }),
          " ",
          el("span", { className: "writer-label", text: writer.label || writer.name }),
          baseline ? el("span", { className: "muted", text: " — not ranked" }) : null,
          writer.available
            ? writer.stand_in
              ? el("span", { className: "muted small", "data-field": "availability", text: " — available (local stand-in)" })
              : null
            : el("span", { className: "writer-reason block small", text: `unavailable — ${writer.reason || "no reason given"}` }),
        ]),
      ]);
    }),
  );
}

async function loadWriterChoices() {
  try {
    const writers = await fetchWriters({ baseline: true });
    writerInfo = new Map(writers.map((writer) => [writer.name, writer]));
    renderWriterChoices(writers);
  } catch (error) {
    ui.writerChoices.replaceChildren(
      el("p", { className: "state-unavailable", text: `Could not read the writers: ${error.message}` }),
    );
  }
}

/** The workload picker (from GET /api/v1/workloads); the choice made is kept. */
function renderWorkloadChoices(workloads) {
  const chosen = ui.workload.value;
  ui.workload.replaceChildren(
    ...workloads.map((workload) =>
      el("option", {
        value: workload.name,
        text: workload.builtin ? workload.label || workload.name : `${workload.name} (registered)`,
      }),
    ),
  );
  if (workloads.some((workload) => workload.name === chosen)) ui.workload.value = chosen;
  onWorkloadChange();
}

/** Shows the parameters the workload takes, and its string columns as padding choices. */
function onWorkloadChange() {
  const name = selectedWorkload();
  const workload = findWorkload(name);
  const params = parametersOf(name);
  for (const field of ui.form.querySelectorAll("[data-parameter]")) {
    const shown = params.includes(field.dataset.parameter);
    field.hidden = !shown;
    for (const control of field.querySelectorAll("input")) control.disabled = !shown;
  }
  const chosen = ui.padColumn.value;
  const inputs = new Set(Object.keys((workload && workload.input_schema && workload.input_schema.properties) || {}));
  const strings = ((workload && workload.columns) || [])
    .filter((column) => String(column.type).toUpperCase() === "STRING" && inputs.has(column.name))
    .map((column) => column.name);
  ui.padColumn.replaceChildren(
    el("option", { value: "", text: "the workload's choice" }),
    ...strings.map((column) => el("option", { value: column, text: column })),
  );
  if (strings.includes(chosen)) ui.padColumn.value = chosen;
  ui.workloadDescription.textContent = workload ? workload.description || "" : "";
  for (const name of ["workload", "drivers", "pad_column"]) clearError(name);
}

function onLengthKind() {
  const byDuration = ui.form.querySelector('[name="length_kind"]:checked').value === "duration";
  $("bench-records").disabled = byDuration;
  $("bench-duration_s").disabled = !byDuration;
  clearError("records");
  clearError("duration_s");
  clearError("length");
}

function errorNode(name) {
  return $(`bench-${name}-error`);
}

function controlFor(name) {
  if (name === "writers") return ui.form.querySelector('[name="writers"]');
  if (name === "length") return ui.form.querySelector('[name="length_kind"]:checked');
  return $(`bench-${name}`);
}

function showError(name, message) {
  const node = errorNode(name);
  node.textContent = node.hidden ? message : `${node.textContent} ${message}`;
  node.hidden = false;
  const targets = name === "writers" ? ui.form.querySelectorAll('[name="writers"]') : [controlFor(name)];
  for (const control of targets) if (control) control.setAttribute("aria-invalid", "true");
}

function clearError(name) {
  const node = errorNode(name);
  if (!node) return;
  node.hidden = true;
  node.textContent = "";
  const targets = name === "writers" ? ui.form.querySelectorAll('[name="writers"]') : [controlFor(name)];
  for (const control of targets) if (control) control.removeAttribute("aria-invalid");
}

function clearFormErrors() {
  for (const name of ["writers", "length", ...FIELDS]) clearError(name);
  hideAlert();
}

function onFormInput(event) {
  const name = event.target.name;
  if (name === "writers") clearError("writers");
  else if (FIELDS.includes(name)) clearError(name);
}

function showAlert(title, lines = []) {
  const list = lines.length
    ? el(
        "ul",
        {},
        lines.map((line) => el("li", { text: line })),
      )
    : null;
  ui.alert.replaceChildren(...[el("p", { className: "alert-title", text: title }), list].filter(Boolean));
  ui.alert.hidden = false;
}

function hideAlert() {
  ui.alert.hidden = true;
  ui.alert.replaceChildren();
}

/** Each FastAPI 422 error at its field (loc like ["body","batch_size"]), all of them in the alert. */
function showValidationErrors(detail) {
  const lines = [];
  let first = null;
  for (const error of detail) {
    const path = Array.isArray(error.loc) ? error.loc.slice(error.loc[0] === "body" ? 1 : 0) : [];
    const message =
      path[0] === "writers" && error.type === "too_short" ? "Choose at least one writer." : cleanMessage(error.msg);
    let name = path[0];
    if (name !== "writers" && !FIELDS.includes(name)) {
      // A rule over the whole config ("give records or duration_s") belongs to the run length.
      name = /records|duration/.test(message) ? "length" : null;
    }
    if (name) {
      showError(name, message);
      first ||= controlFor(name);
      lines.push(`${FIELD_LABELS[name] || "Run length"}: ${message}`);
    } else {
      lines.push(`${path.join(".") || "Request"}: ${message}`);
    }
  }
  showAlert(`The benchmark did not start: ${plural(detail.length, "problem")} to fix.`, lines);
  if (first) first.focus();
}

async function startRun(event) {
  event.preventDefault();
  if (ui.start.disabled) return;
  clearFormErrors();
  const config = readConfig();
  ui.start.disabled = true;
  ui.status.textContent = "Starting…";
  let started = false;
  try {
    const { ok, status, body } = await postJson(API, config);
    if (ok && body && typeof body.id === "string") {
      started = true;
      watchRun(body.id, body.config || config);
    } else if (status === 422 && body && Array.isArray(body.detail)) {
      ui.status.textContent = "";
      showValidationErrors(body.detail);
    } else if (status === 409) {
      ui.status.textContent = "";
      showAlert("Another benchmark is running (HTTP 409)", [
        errorMessage(status, body),
        "Cancel it or wait for it to finish; it is the first run in the history below.",
      ]);
      loadHistory();
    } else {
      ui.status.textContent = "";
      showAlert(`The benchmark did not start (HTTP ${status})`, [errorMessage(status, body)]);
    }
  } catch (error) {
    ui.status.textContent = "";
    showAlert("The request did not reach the server.", [error.message]);
  } finally {
    if (!started) ui.start.disabled = Boolean(watched && !watched.finished);
  }
}

// ---------------------------------------------------------------------------------------
// Watching a run: the WebSocket, with polling as the fallback

function watchRun(id, config) {
  stopWatching();
  watched = {
    id,
    config: config || null,
    writers: config && Array.isArray(config.writers) ? [...config.writers] : [],
    t0: performance.now(),
    xs: [],
    ys: new Map(),
    statuses: new Map(),
    socket: null,
    quietTimer: null,
    pollTimer: null,
    misses: 0,
    finished: false,
  };
  ui.live.hidden = false;
  ui.live.dataset.runId = id;
  ui.liveHeading.textContent = `Run ${id}`;
  ui.liveBadge.replaceChildren(badge("running"));
  ui.progress.replaceChildren(...watched.writers.map((name) => progressItem({ writer: name, status: "pending" })));
  resetLiveChart();
  ui.start.disabled = true;
  ui.cancel.disabled = false;
  ui.status.textContent = `Benchmark ${id} is running.`;
  connect(watched);
  if (!watched.config) {
    // Joined a run someone else started: its config gives the run length for the progress bars.
    const run = watched;
    fetchRun(id).then((result) => {
      if (result && result.config && run === watched) run.config = result.config;
    });
  }
  loadHistory();
}

function stopWatching() {
  if (!watched) return;
  clearTimeout(watched.quietTimer);
  clearTimeout(watched.pollTimer);
  if (watched.socket) {
    const socket = watched.socket;
    watched.socket = null;
    socket.close();
  }
}

function connect(run) {
  const url = new URL(`ws/benchmarks/${encodeURIComponent(run.id)}`, document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  let socket;
  try {
    socket = new WebSocket(url);
  } catch {
    poll(run);
    return;
  }
  run.socket = socket;
  armQuietCheck(run);
  socket.addEventListener("message", (event) => {
    if (run !== watched || run.finished) return;
    armQuietCheck(run);
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!message || (message.run_id && message.run_id !== run.id)) return;
    if (message.type === "progress") onProgress(run, message);
    else if (message.type === "finished") finishRun(run);
  });
  socket.addEventListener("close", () => {
    if (run === watched && !run.finished && run.socket === socket) {
      run.socket = null;
      poll(run);
    }
  });
}

/** A short run can end before the socket subscribes: after a quiet spell, ask the API. */
function armQuietCheck(run) {
  clearTimeout(run.quietTimer);
  run.quietTimer = setTimeout(async () => {
    if (run !== watched || run.finished) return;
    const current = await fetchRun(run.id);
    if (current && current.status !== "running") finishRun(run, current);
    else armQuietCheck(run);
  }, QUIET_CHECK_MS);
}

/** Without a socket: read the run once a second until it is no longer running. */
async function poll(run) {
  if (run !== watched || run.finished) return;
  const current = await fetchRun(run.id);
  if (run !== watched || run.finished) return;
  if (current && current.status !== "running") {
    finishRun(run, current);
    return;
  }
  if (current) {
    run.misses = 0;
    onProgress(run, progressFromResult(current));
  } else if ((run.misses += 1) >= MAX_MISSES) {
    finishRun(run);
    return;
  }
  run.pollTimer = setTimeout(() => poll(run), POLL_MS);
}

/** A partial RunResult in the shape of a progress message. */
function progressFromResult(result) {
  return {
    run_id: result.id,
    status: result.status,
    writers: (result.writers || []).map((w) => {
      const seconds = w.per_second || [];
      const last = seconds.length > 1 ? seconds.at(-2) : seconds.at(-1);
      return {
        writer: w.writer,
        status: w.status,
        phase: w.status === "running" ? "measuring" : w.status === "pending" ? "pending" : "done",
        rows: w.rows,
        target_rows: result.config ? result.config.records : null,
        rows_per_s_last_second: last ? last.rows : 0,
        p50_ms: latency(w, "p50"),
        p99_ms: latency(w, "p99"),
        failed_batches: w.failed_batches,
        elapsed_s: w.elapsed_s,
        rows_per_s: w.rows_per_s,
        target_rows_per_s: w.target_rows_per_s,
      };
    }),
  };
}

async function fetchRun(id) {
  try {
    const { ok, body } = await requestJson(`${API}/${encodeURIComponent(id)}`);
    return ok && body && typeof body === "object" ? body : null;
  } catch {
    return null;
  }
}

function onProgress(run, message) {
  const writers = Array.isArray(message.writers) ? message.writers : [];
  for (const w of writers) if (!run.writers.includes(w.writer)) run.writers.push(w.writer);
  const byName = new Map(writers.map((w) => [w.writer, w]));
  ui.progress.replaceChildren(
    ...run.writers.map((name) => progressItem(byName.get(name) || { writer: name, status: "pending" }, run.config)),
  );
  announceChanges(run, writers);
  addLivePoint(run, byName);
}

function announceChanges(run, writers) {
  const changes = [];
  for (const w of writers) {
    const state = w.status === "running" ? w.phase || "running" : w.status;
    if (run.statuses.get(w.writer) !== state) {
      run.statuses.set(w.writer, state);
      if (state !== "pending") changes.push(`${writerLabel(w.writer)}: ${state}`);
    }
  }
  if (changes.length) ui.status.textContent = `Benchmark ${run.id} — ${changes.join("; ")}.`;
}

function progressItem(w, config) {
  const rows = typeof w.rows === "number" ? w.rows : 0;
  const duration = config && typeof config.duration_s === "number" ? config.duration_s : null;
  const elapsed = typeof w.elapsed_s === "number" ? w.elapsed_s : 0;
  const target = typeof w.target_rows === "number" ? w.target_rows : null;
  let max = 1;
  let value = 0;
  let amount = `${formatNumber(rows)} rows`;
  if (target) {
    max = target;
    value = Math.min(rows, target);
    amount = `${formatNumber(rows)} / ${formatNumber(target)} rows`;
  } else if (duration) {
    max = duration;
    value = Math.min(elapsed, duration);
  }
  if (w.status === "completed") value = max;
  const time = duration ? `${formatSeconds(elapsed)} of ${formatSeconds(duration)}` : formatSeconds(elapsed);
  const facts = [amount, time];
  if (w.status === "running") facts.push(`${formatNumber(w.rows_per_s_last_second ?? 0)} rows/s last second`);
  if (typeof w.p99_ms === "number") facts.push(`p50 ${formatMsValue(w.p50_ms)} ms, p99 ${formatMsValue(w.p99_ms)} ms`);
  if (typeof w.target_rows_per_s === "number") facts.push(`target ${formatNumber(w.target_rows_per_s)} rows/s`);
  if (w.failed_batches)
    facts.push(`${formatNumber(w.failed_batches)} failed batch${w.failed_batches === 1 ? "" : "es"}`);
  const clients = Array.isArray(w.clients) && w.clients.length > 1 ? w.clients : [];
  const phase = w.status === "running" ? w.phase || "running" : w.status || "pending";
  const label = writerLabel(w.writer);
  return el(
    "li",
    { className: "progress-item", "data-writer": w.writer, "data-status": w.status, "data-phase": phase },
    [
      el("div", { className: "progress-head" }, [
        el("span", {
          className: "writer-swatch",
          "aria-hidden": "true",
          style: `background:${writerColor(w.writer, 0)}`,
        }),
        el("span", { className: "writer-name", text: label }),
        badge(w.status || "pending"),
        w.status === "running" ? el("span", { className: "muted small", text: phase }) : null,
      ]),
      el("progress", { max: String(max), value: String(value), "aria-label": `${label} progress` }),
      el("p", { className: "progress-facts small", text: facts.join(" · ") }),
      clients.length
        ? el(
            "ul",
            { className: "progress-clients small muted", "aria-label": `${label} by client` },
            clients.map((c) =>
              el("li", {
                "data-client": String(c.client),
                text: `client ${c.client}: ${c.lost ? `lost — ${c.lost}` : c.status === "running" ? c.phase || "running" : c.status} · ${formatNumber(c.rows)} rows · ${formatNumber(c.rows_per_s_last_second ?? 0)} rows/s last second`,
              }),
            ),
          )
        : null,
    ],
  );
}

async function finishRun(run, known) {
  if (run.finished) return;
  run.finished = true;
  stopWatching();
  let result = known && known.status !== "running" ? known : null;
  // The finished message follows the save; a moment's retry covers a slow disk.
  for (let attempt = 0; !result && attempt < 10; attempt += 1) {
    const current = await fetchRun(run.id);
    if (current && current.status !== "running") result = current;
    else await new Promise((resolve) => setTimeout(resolve, 300));
  }
  if (run !== watched) return;
  ui.cancel.disabled = true;
  ui.start.disabled = false;
  if (!result) {
    ui.liveBadge.replaceChildren(badge("unknown"));
    ui.status.textContent = `Benchmark ${run.id} ended, but its result could not be read.`;
    loadHistory();
    return;
  }
  ui.liveBadge.replaceChildren(badge(result.status));
  onProgress(run, progressFromResult(result));
  renderResult(result);
  ui.status.textContent = `Benchmark ${run.id} ${result.status}${result.partial ? " (partial)" : ""}; the results are below.`;
  loadHistory();
}

async function cancelRun() {
  if (!watched || watched.finished) return;
  const run = watched;
  ui.cancel.disabled = true;
  ui.status.textContent = `Cancelling ${run.id}…`;
  try {
    const { ok, status, body } = await requestJson(`${API}/${encodeURIComponent(run.id)}/cancel`, { method: "POST" });
    if (!ok) {
      showAlert(`Could not cancel the run (HTTP ${status})`, [errorMessage(status, body)]);
      ui.cancel.disabled = run.finished;
      return;
    }
    finishRun(run, body && body.id === run.id && Array.isArray(body.writers) ? body : null);
  } catch (error) {
    showAlert("The request did not reach the server.", [error.message]);
    ui.cancel.disabled = run.finished;
  }
}

// ---------------------------------------------------------------------------------------
// Charts

function chartsAvailable() {
  return typeof window.uPlot === "function";
}

function chartSize(container) {
  const width = Math.max(container.clientWidth, 280);
  return { width, height: width < 500 ? 220 : 280 };
}

function setChart(container, options, data) {
  const old = charts.get(container);
  if (old) old.destroy();
  charts.delete(container);
  container.replaceChildren();
  if (!chartsAvailable()) {
    container.append(
      el("p", { className: "muted small", text: "The chart library did not load; the table gives the figures." }),
    );
    return null;
  }
  const chart = new window.uPlot({ ...chartSize(container), ...options }, data, container);
  charts.set(container, chart);
  return chart;
}

function seriesFor(name, index) {
  return {
    label: writerLabel(name),
    stroke: writerColor(name, index),
    width: 2,
    dash: isBaseline(name) ? BASELINE_DASH : undefined,
    spanGaps: false,
  };
}

function countPoints(ys) {
  let count = 0;
  for (const series of ys) for (const value of series) if (value !== null && value !== undefined) count += 1;
  return count;
}

const AXIS = { stroke: "#4a5568", grid: { stroke: "#e2e8f0" }, ticks: { stroke: "#cbd2dc" } };

// Rows/s ticks are whole numbers: a fractional step on a near-empty axis printed "1,1,1,0,0,0".
const COUNT_INCRS = [1, 2, 5].flatMap((m) => [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map((e) => m * 10 ** e)).sort((a, b) => a - b);

function hasPoints(u) {
  return u.data.slice(1).some((series) => series.some((v) => v !== null && v !== undefined));
}

function throughputOptions(xLabel, container = null) {
  const yValues = (u, splits) => {
    // No data yet: no numbers on the axis (an empty chart says so in its label).
    const labels = hasPoints(u) ? splits.map(formatAxisCount) : splits.map(() => "");
    if (container) container.dataset.yTicks = labels.join(",");
    return labels;
  };
  return {
    scales: { x: { time: false }, y: { range: (u, min, max) => [0, Math.max((max || 0) * 1.1, 10)] } },
    axes: [
      { ...AXIS, label: xLabel },
      { ...AXIS, label: "rows/s", size: 70, incrs: COUNT_INCRS, values: yValues },
    ],
    cursor: { drag: { x: false, y: false } },
  };
}

function formatAxisCount(value) {
  if (Math.abs(value) >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
  if (Math.abs(value) >= 1e4) return `${+(value / 1e3).toFixed(1)}k`;
  return integerFormat.format(value);
}

function resetLiveChart() {
  const run = watched;
  run.finals = new Set();
  run.xs = [];
  run.ys = new Map();
  ui.liveChart.dataset.points = "0";
  ui.liveChart.dataset.writers = run.writers.join(" ");
  drawLiveChart(run);
}

function drawLiveChart(run) {
  const names = run.writers;
  for (const name of names)
    if (!run.ys.has(name))
      run.ys.set(
        name,
        run.xs.map(() => null),
      );
  const ys = names.map((name) => run.ys.get(name));
  const chart = charts.get(ui.liveChart);
  const sameSeries = chart && ui.liveChart.dataset.writers === names.join(" ");
  if (sameSeries) chart.setData([run.xs, ...ys]);
  else {
    ui.liveChart.dataset.writers = names.join(" ");
    setChart(
      ui.liveChart,
      {
        ...throughputOptions("seconds since the run started", ui.liveChart),
        series: [{ label: "second" }, ...names.map(seriesFor)],
      },
      [run.xs, ...ys],
    );
  }
  ui.liveChart.dataset.points = String(countPoints(ys));
  ui.liveChart.dataset.series = JSON.stringify(Object.fromEntries(names.map((name) => [name, run.ys.get(name)])));
  ui.liveChart.setAttribute(
    "aria-label",
    `Live throughput per second: ${names
      .map((name) => {
        const last = (run.ys.get(name) || []).filter((v) => v !== null).at(-1);
        return `${writerLabel(name)} ${last === undefined ? "no data yet" : `${formatNumber(last)} rows/s`}`;
      })
      .join("; ")}`,
  );
}

function addLivePoint(run, byName) {
  const t = Math.round((performance.now() - run.t0) / 100) / 10;
  run.xs.push(t);
  for (const name of run.writers) {
    const w = byName.get(name);
    const measuring = w && w.status === "running" && w.phase !== "warmup" && w.phase !== "pending";
    let value = measuring && typeof w.rows_per_s_last_second === "number" ? w.rows_per_s_last_second : null;
    if (!run.ys.has(name))
      run.ys.set(
        name,
        run.xs.slice(0, -1).map(() => null),
      );
    const plotted = run.ys.get(name).some((v) => v !== null);
    // When a writer completes, a short run (under 5 s, or one never plotted: it finished
    // inside a second) ends on its rate over the window it measured, rows / elapsed, as the
    // summary has it; whole seconds are too coarse to stand for it.
    if (w && w.status === "completed" && w.elapsed_s > 0 && w.rows > 0 && !run.finals.has(name)) {
      run.finals.add(name);
      if (!plotted || w.elapsed_s < SHORT_RUN_S)
        value = typeof w.rows_per_s === "number" ? w.rows_per_s : w.rows / w.elapsed_s;
    }
    run.ys.get(name).push(value);
  }
  drawLiveChart(run);
}

/** Series on different x values, aligned on their union (uPlot's data shape); gaps are null. */
function alignSeries(curves) {
  const keyOf = (x) => Number(x.toPrecision(10));
  const xs = [...new Set(curves.flatMap((points) => points.map(([x]) => keyOf(x))))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = curves.map((points) => {
    const row = xs.map(() => null);
    for (const [x, y] of points) row[index.get(keyOf(x))] = y;
    return row;
  });
  return [xs, ys];
}

function drawPercentileChart(run) {
  const writers = (run.writers || []).filter((w) => Array.isArray(w.percentile_curve) && w.percentile_curve.length);
  const fixed = run.config && typeof run.config.rate === "number";
  // Cut where the batches stop supporting the percentile: p needs 10 / (1 - p) batches,
  // so the curve ends at 1 / (1 - p) = batches / 10 (bench.stats.min_batches).
  const supported = (w) => {
    const summary = (fixed && w.latency_from_intended_ms) || w.latency_ms;
    return summary && typeof summary.count === "number" ? summary.count / 10 : Infinity;
  };
  const curves = writers.map((w) =>
    w.percentile_curve
      .filter(([p, ms]) => typeof p === "number" && p < 100 && typeof ms === "number")
      .map(([p, ms]) => [1 / (1 - p / 100), Math.max(ms, 0.001)])
      .filter(([x]) => x <= supported(w) + 1e-9),
  );
  const [xs, ys] = alignSeries(curves);
  const fixedRate = run.config && typeof run.config.rate === "number";
  ui.pctCaption.textContent = `Latency by percentile, ${
    fixedRate ? "from each batch's scheduled start (corrected)" : "from send to acknowledgement"
  } (ms; log scales), per writer; each curve ends where fewer than 10 batches lie beyond`;
  const top = 10 ** Math.max(2, Math.ceil(Math.log10(Math.max(xs.at(-1) || 1, 10)) - 1e-9));
  setChart(
    ui.pctChart,
    {
      scales: {
        x: { time: false, distr: 3, log: 10, range: () => [1, top] },
        y: { distr: 3, log: 10 },
      },
      axes: [
        {
          ...AXIS,
          label: "percentile",
          splits: () => PERCENTILE_TICKS.map(([x]) => x).filter((x) => x <= top),
          filter: (u, splits) => splits, // uPlot's log default would blank the 2 (50%)
          values: (u, splits) =>
            splits.map((x) => (PERCENTILE_TICKS.find(([t]) => Math.abs(t - x) <= t * 1e-6) || [x, ""])[1]),
        },
        {
          ...AXIS,
          label: "ms",
          size: 60,
          splits: logSplits,
          filter: (u, splits) => splits,
          values: (u, splits) => splits.map(formatMsValue),
        },
      ],
      series: [
        { label: "percentile", value: (u, x) => (x === null ? "—" : `${percentileOf(x)}%`) },
        ...writers.map((w, i) => ({
          ...seriesFor(w.writer, i),
          spanGaps: true,
          value: (u, v) => (v === null ? "—" : `${formatMsValue(v)} ms`),
        })),
      ],
      cursor: { drag: { x: false, y: false } },
    },
    [xs, ...ys],
  );
  ui.pctChart.dataset.points = String(countPoints(ys));
  ui.pctChart.dataset.writers = writers.map((w) => w.writer).join(" ");
  // Where each curve ends, as 1 / (1 - p): for tests and the curious.
  ui.pctChart.dataset.ends = JSON.stringify(curves.map((c) => (c.length ? c.at(-1)[0] : null)));
  ui.pctChart.setAttribute(
    "aria-label",
    `${ui.pctCaption.textContent}: ${writers
      .map((w) => {
        const summary = (fixedRate && w.latency_from_intended_ms) || w.latency_ms || {};
        const at = (key) => `${key} ${formatMsValue(summary[key])} ms`;
        return `${writerLabel(w.writer)} ${["p50", "p99", "p99.9"].map(at).join(", ")}`;
      })
      .join("; ")}`,
  );
}

/** Ticks of a log axis: each power of ten in range, with 2 and 5 between when it spans little. */
function logSplits(u, axisIndex, min, max) {
  if (!(min > 0) || !(max > 0)) return [];
  const splits = [];
  const few = Math.log10(max / min) < 2;
  for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e += 1) {
    for (const m of few ? [1, 2, 5] : [1]) {
      const value = m * 10 ** e;
      if (value >= min * 0.999 && value <= max * 1.001) splits.push(Number(value.toPrecision(6)));
    }
  }
  return splits;
}

function percentileOf(x) {
  const p = 100 * (1 - 1 / x);
  return p >= 99 ? +p.toFixed(3) : +p.toFixed(1);
}

/** A second's rate over the part of it measured (the last second of a run is short). */
let lastThroughputRun = null;

function secondRate(s) {
  if (typeof s.rows_per_s === "number") return s.rows_per_s;
  const span = typeof s.span_s === "number" && s.span_s > 0 ? s.span_s : 1;
  return s.rows / span;
}

/**
 * (t, rows/s) averaged over the last `window` seconds: rows over the seconds' real spans,
 * a second without acknowledgements counted as 0 rows (a writer whose batches take longer
 * than a second acks in some seconds only; its average is what the table's rows/s says).
 */
function rollingRates(perSecond, window, bucket) {
  const at = (s) => (typeof s.at_s === "number" ? s.at_s : s.t);
  const count = Math.max(1, Math.round(window / bucket));
  if (count <= 1) return perSecond.map((s) => [at(s), secondRate(s)]);
  const byIndex = new Map(perSecond.map((s) => [Math.round(at(s) / bucket), s]));
  const last = Math.max(0, ...byIndex.keys());
  const out = [];
  const kept = [];
  let rows = 0;
  let span = 0;
  for (let i = 0; i <= last; i += 1) {
    const s = byIndex.get(i);
    const entry = { rows: s ? s.rows : 0, span: s && typeof s.span_s === "number" && s.span_s > 0 ? s.span_s : bucket };
    kept.push(entry);
    rows += entry.rows;
    span += entry.span;
    if (kept.length > count) {
      const gone = kept.shift();
      rows -= gone.rows;
      span -= gone.span;
    }
    out.push([i * bucket, span > 0 ? rows / span : 0]);
  }
  return out;
}

function drawThroughputChart(run) {
  if (run) lastThroughputRun = run;
  run = lastThroughputRun;
  if (!run) return;
  const windowS = Number(ui.tputWindow.value) || 1;
  const writers = (run.writers || []).filter((w) => Array.isArray(w.per_second) && w.per_second.length);
  const [xs, ys] = alignSeries(
    writers.map((w) => rollingRates(w.per_second, windowS, typeof w.bucket_s === "number" ? w.bucket_s : 1)),
  );
  const bucket = Math.min(1, ...writers.map((w) => (typeof w.bucket_s === "number" ? w.bucket_s : 1)));
  ui.tputCaption.textContent =
    windowS > 1
      ? `Throughput, rolling ${windowS} s average (rows/s), per writer`
      : bucket < 1
        ? `Throughput every ${formatCount(bucket)} s of a short window (rows/s), per writer`
        : "Throughput each second of measuring (rows/s), per writer";
  ui.tputChart.dataset.window = String(windowS);
  // What is plotted, for the table-minded and for tests: per writer, the rates by second.
  ui.tputChart.dataset.series = JSON.stringify(
    Object.fromEntries(writers.map((w) => [w.writer, w.per_second.map(secondRate)])),
  );
  ui.tputChart.dataset.plotted = JSON.stringify(ys);
  setChart(
    ui.tputChart,
    {
      ...throughputOptions("second of measuring"),
      series: [{ label: "second" }, ...writers.map((w, i) => seriesFor(w.writer, i))],
    },
    [xs, ...ys],
  );
  ui.tputChart.dataset.points = String(countPoints(ys));
  ui.tputChart.setAttribute(
    "aria-label",
    `Throughput each second of measuring: ${writers
      .map(
        (w) =>
          `${writerLabel(w.writer)} ${formatNumber(w.rows_per_s)} rows/s on average over ${plural(w.per_second.length, "second")}`,
      )
      .join("; ")}`,
  );
}

const resizer =
  typeof ResizeObserver === "function"
    ? new ResizeObserver((entries) => {
        for (const entry of entries) {
          const chart = charts.get(entry.target);
          const width = entry.target.clientWidth;
          if (chart && width > 0 && Math.abs(chart.width - width) > 1) chart.setSize(chartSize(entry.target));
        }
      })
    : null;

// ---------------------------------------------------------------------------------------
// A run's result: the side-by-side table, warnings, downloads, charts

function shardsOf(w) {
  return (w.streams || 1) * (w.clients || 1);
}

function columnsFor(run) {
  const fixedRate =
    (run.config && typeof run.config.rate === "number") ||
    (run.writers || []).some((w) => w.latency_from_intended_ms || w.send_delay_ms);
  return fixedRate ? [...BASE_COLUMNS, ...RATE_COLUMNS] : BASE_COLUMNS;
}

/** Writers that compete: they store rows and measured something. */
function ranked(w) {
  return (
    w.stores_rows !== false && w.status !== "unavailable" && w.status !== "pending" && (w.batches > 0 || w.rows > 0)
  );
}

/** The best value of a column, or null when fewer than two writers differ in it. */
function bestValue(writers, column) {
  if (!column.better) return null;
  const values = writers
    .filter(ranked)
    .map(column.get)
    .filter((v) => typeof v === "number");
  if (values.length < 2) return null;
  const best = column.better === "high" ? Math.max(...values) : Math.min(...values);
  return values.every((v) => v === best) ? null : best;
}

function downloadLinks(id) {
  const base = `${API}/${encodeURIComponent(id)}`;
  return [
    el(
      "a",
      {
        className: "button button-quiet",
        href: `${base}/result.json`,
        download: true,
        "data-download": "json",
        "aria-label": `Download run ${id} as JSON`,
      },
      ["JSON"],
    ),
    el(
      "a",
      {
        className: "button button-quiet",
        href: `${base}/result.csv`,
        download: true,
        "data-download": "csv",
        "aria-label": `Download run ${id} as CSV`,
      },
      ["CSV"],
    ),
  ];
}

/** "telemetry — Telemetry (delivery drivers' GPS events)", from a result's workload. */
function workloadTitle(run) {
  const name = workloadNameOf(run);
  const label = run.workload && run.workload.label;
  if (!name) return "—";
  return label && label !== name ? `${name} — ${label}` : name;
}

function renderResult(run) {
  ui.result.hidden = false;
  ui.result.dataset.runId = run.id;
  ui.resultHeading.textContent = `Result of run ${run.id}`;
  ui.resultBadge.replaceChildren(badge(run.status), ...(run.partial ? [" ", badge("partial")] : []));
  ui.downloads.replaceChildren(
    el("span", { className: "muted small", text: "Download:" }),
    ...downloadLinks(run.id),
    ...(run.status === "running" ? [] : reportLinks(run.id)),
  );
  const cfg = run.config || {};
  const env = run.environment && typeof run.environment === "object" ? run.environment : {};
  ui.resultMeta.replaceChildren(
    ...keyValueList(
      [
        [
          "Mode",
          env.mode === "local"
            ? "local — the local stack's stand-ins on this machine, not a Databricks workspace"
            : env.mode === "databricks"
              ? `databricks — ${env.notice || `workspace ${(env.endpoints && env.endpoints.workspace) || "unknown"}`}`
              : "not recorded",
          { "data-field": "mode", "data-mode": env.mode || "" },
        ],
        ...(run.label ? [["Label", run.label, { "data-field": "label" }]] : []),
        ["Started", formatTime(run.started_at)],
        ["Finished", run.finished_at ? formatTime(run.finished_at) : "—"],
        ["Workload", workloadTitle(run), { "data-field": "workload", "data-workload": workloadNameOf(run) }],
        ["Load", describeWorkload(cfg)],
        ["Warm-up, seed", `${formatSeconds(cfg.warmup_s)}, ${cfg.seed ?? "—"}`],
        [
          "Visibility",
          cfg.visibility === false ? "not measured" : `sampled, polling every ${cfg.visibility_poll_ms ?? "—"} ms`,
        ],
      ],
      "",
    ).childNodes,
  );
  const envEntries = Object.entries(env);
  const warnings = Array.isArray(run.warnings) ? run.warnings : [];
  const notes = [
    warnings.length
      ? el("div", { className: "notice notice-warn", role: "note", "aria-labelledby": "bench-warnings-title" }, [
          el("p", { id: "bench-warnings-title", className: "notice-title", text: `Warnings (${warnings.length})` }),
          el(
            "ul",
            {},
            warnings.map((text) => el("li", { text })),
          ),
        ])
      : null,
    envEntries.length
      ? el("details", { className: "environment" }, [
          el("summary", { text: "Environment and library versions" }),
          el("pre", { className: "small", text: JSON.stringify(env, null, 2) }),
        ])
      : null,
  ];
  // replaceChildren would write a null as the text "null".
  ui.warnings.replaceChildren(...notes.filter(Boolean));
  renderTable(run);
  renderIntervals(run);
  renderScale(run);
  drawPercentileChart(run);
  drawThroughputChart(run);
}

/** Writers run on more than one stream or client: each client's figures, the skew between
 * them, and each stream's rows/s and MB/s next to the per-stream quota ceiling. */
function renderScale(run) {
  const writers = (run.writers || []).filter((w) => shardsOf(w) > 1 && (w.per_stream || []).length);
  ui.scale.hidden = writers.length === 0;
  if (!writers.length) {
    ui.scale.replaceChildren();
    return;
  }
  const clientTables = writers
    .filter((w) => (w.workers || []).length > 1)
    .map((w) => {
      const skew = w.skew || {};
      return el("div", { className: "table-wrap", "data-writer": w.writer, "data-part": "clients" }, [
        el("table", { className: "data-table small" }, [
          el("caption", {
            text: `${writerLabel(w.writer, w.label)}: ${plural(w.workers.length, "client")} — start spread ${typeof skew.start_s === "number" ? `${formatMsValue(skew.start_s * 1000)} ms` : "—"}, rows/s spread ${typeof skew.rows_per_s_spread === "number" ? `${(skew.rows_per_s_spread * 100).toFixed(1)}%` : "—"}`,
          }),
          el("thead", {}, [
            el("tr", {}, ["Client", "Status", "Rows", "Rows/s", "p50 ms", "p99 ms", "Started at"].map((t) => el("th", { scope: "col", text: t }))),
          ]),
          el(
            "tbody",
            {},
            w.workers.map((c) =>
              el("tr", { "data-client": c.worker }, [
                el("th", { scope: "row", text: c.worker }),
                el("td", {}, [badge(c.status)]),
                el("td", { className: "num", text: formatNumber(c.rows) }),
                el("td", { className: "num", text: formatNumber(c.rows_per_s) }),
                el("td", { className: "num", text: formatMsValue(c.p50_ms) }),
                el("td", { className: "num", text: formatMsValue(c.p99_ms) }),
                el("td", { className: "num", text: typeof c.start_offset_s === "number" ? `+${formatMsValue(c.start_offset_s * 1000)} ms` : "—" }),
              ]),
            ),
          ),
        ]),
      ]);
    });
  const streamRows = writers.flatMap((w) =>
    w.per_stream.map((p) => {
      const quota = w.quota_projection;
      const share = quota && quota.rows_per_s > 0 ? `${((p.rows_per_s / quota.rows_per_s) * 100).toFixed(1)}%` : "—";
      return el("tr", { "data-writer": w.writer, "data-client": String(p.client), "data-stream": String(p.stream) }, [
        el("th", { scope: "row", text: writerLabel(w.writer, w.label) }),
        el("td", { className: "num", text: String(p.client) }),
        el("td", { className: "num", text: String(p.stream) }),
        el("td", { className: "num", text: formatNumber(p.rows) }),
        el("td", { className: "num", "data-col": "rows_per_s", text: formatNumber(p.rows_per_s) }),
        el("td", { className: "num", text: p.mb_per_s.toFixed(2) }),
        el("td", { className: "num", text: quota ? formatNumber(quota.rows_per_s) : "—", title: quota ? `limited by ${quota.limited_by}; ${quota.note}` : null }),
        el("td", { className: "num", "data-col": "quota_share", text: share }),
      ]);
    }),
  );
  ui.scale.replaceChildren(
    el("h4", { text: "Streams and clients" }),
    ...clientTables,
    el("div", { className: "table-wrap", "data-part": "streams" }, [
      el("table", { className: "data-table small" }, [
        el("caption", { text: "Each stream: what it carried, next to the published per-stream quota (a projection)" }),
        el("thead", {}, [
          el(
            "tr",
            {},
            ["Writer", "Client", "Stream", "Rows", "Rows/s", "MB/s", "Quota rows/s", "Share of quota"].map((t) =>
              el("th", { scope: "col", text: t }),
            ),
          ),
        ]),
        el("tbody", {}, streamRows),
      ]),
    ]),
  );
}

const INTERVAL_METRICS = [
  ["rows_per_s", "Rows/s"],
  ["mib_per_s", "MiB/s"],
  ["p50_ms", "p50 ms"],
  ["p95_ms", "p95 ms"],
  ["p99_ms", "p99 ms"],
];

/** "median [low, high]", or the median and "n/a" when the sample supports no interval. */
function intervalText(metric, interval) {
  if (!interval) return "—";
  const median = formatMetric(metric, interval.median);
  if (typeof interval.low !== "number" || typeof interval.high !== "number") return `${median} [n/a]`;
  return `${median} [${formatMetric(metric, interval.low)}, ${formatMetric(metric, interval.high)}]`;
}

/** Each writer's medians with their 95 % intervals (repeats), or a single run's own. */
function renderIntervals(run) {
  const writers = (run.writers || []).filter((w) => w.intervals && Object.keys(w.intervals).length);
  if (!writers.length) {
    ui.intervals.hidden = true;
    ui.intervals.replaceChildren();
    return;
  }
  const repeats = (run.config && run.config.repeat) || 1;
  const reasons = new Set();
  const rows = INTERVAL_METRICS.map(([metric, label]) =>
    el("tr", { "data-metric": metric }, [
      el("th", { scope: "row", text: label }),
      ...writers.map((w) => {
        const interval = w.intervals[metric];
        if (interval && interval.reason) reasons.add(interval.reason);
        return el("td", {
          className: "num",
          "data-writer": w.writer,
          title: interval && interval.reason ? interval.reason : null,
          text: intervalText(metric, interval),
        });
      }),
    ]),
  );
  const title =
    repeats > 1
      ? `Medians over ${repeats} repeats [95% interval]`
      : "95% intervals from a bootstrap within this run (the noise between runs is not in them: 3 or more repeats measure it)";
  ui.intervals.hidden = false;
  ui.intervals.replaceChildren(
    el("h4", { className: "small-heading", id: "bench-intervals-title", text: title }),
    el("div", { className: "table-wrap" }, [
      el("table", { className: "data-table intervals-table", "aria-labelledby": "bench-intervals-title" }, [
        el("thead", {}, [
          el("tr", {}, [
            el("th", { scope: "col", text: "Metric" }),
            ...writers.map((w) => el("th", { scope: "col", className: "num", text: writerLabel(w.writer, w.label) })),
          ]),
        ]),
        el("tbody", {}, rows),
      ]),
    ]),
    ...[...reasons].map((reason) => el("p", { className: "table-note", text: `n/a: ${reason}` })),
  );
}

function renderTable(run) {
  const columns = columnsFor(run);
  const writers = run.writers || [];
  const best = new Map(columns.map((column) => [column.key, bestValue(writers, column)]));
  const head = el("tr", {}, [
    el("th", { scope: "col", text: "Writer" }),
    ...columns.map((column) =>
      el("th", { scope: "col", className: "num", "data-col": column.key, title: column.title || null }, [
        column.label,
        column.unit ? el("span", { className: "unit", text: column.unit }) : null,
      ]),
    ),
  ]);
  const rows = writers.map((w, i) => {
    const notes = [];
    if (w.stores_rows === false)
      notes.push(el("span", { className: "muted small block", text: "baseline, not ranked" }));
    if (w.error) notes.push(el("span", { className: "cell-error small block", text: w.error }));
    return el("tr", { "data-writer": w.writer, "data-status": w.status }, [
      el("th", { scope: "row", className: "writer-cell" }, [
        el("span", {
          className: "writer-swatch",
          "aria-hidden": "true",
          style: `background:${writerColor(w.writer, i)}`,
        }),
        el("span", { className: "writer-name", text: writerLabel(w.writer, w.label) }),
        w.status !== "completed" ? badge(w.status) : null,
        ...notes,
      ]),
      ...columns.map((column) => {
        const value = column.get(w);
        const why = column.unsupported ? column.unsupported(w) : null;
        if (why)
          return el(
            "td",
            {
              className: "num unsupported",
              "data-col": column.key,
              "data-label": column.unit ? `${column.label} (${column.unit})` : column.label,
              "data-unsupported": "true",
              title: `too few batches: ${why}`,
            },
            el("span", { className: "cell-value" }, [
              "n/a",
              el("span", { className: "visually-hidden", text: ` (too few batches: ${why})` }),
            ]),
          );
        const isBest = ranked(w) && typeof value === "number" && value === best.get(column.key);
        return el(
          "td",
          {
            className: isBest ? "num best" : "num",
            "data-col": column.key,
            "data-label": column.unit ? `${column.label} (${column.unit})` : column.label,
            "data-best": isBest ? "true" : null,
            title: column.cellTitle ? column.cellTitle(w) : null,
          },
          el(
            "span",
            { className: "cell-value" },
            isBest
              ? [
                  el("strong", { text: column.format(value) }),
                  " ",
                  el("span", { className: "best-badge", text: "best" }),
                ]
              : [column.format(value)],
          ),
        );
      }),
    ]);
  });
  ui.table.tHead.replaceChildren(head);
  ui.table.tBodies[0].replaceChildren(...rows);
}

async function openRun(id) {
  ui.historyStatus.textContent = `Opening run ${id}…`;
  const result = await fetchRun(id);
  if (!result) {
    ui.historyStatus.textContent = `Could not read run ${id}.`;
    return;
  }
  ui.historyStatus.textContent = `Showing run ${id}.`;
  renderResult(result);
  ui.resultHeading.focus();
}

// ---------------------------------------------------------------------------------------
// History and comparison

async function loadHistory() {
  ui.historyRefresh.disabled = true;
  try {
    const { ok, status, body } = await requestJson(API);
    if (!ok || !Array.isArray(body)) throw new Error(errorMessage(status, body));
    history = body;
    renderHistory();
    fillWorkloadNames();
    const running = history.find((run) => run.status === "running");
    if (running && (!watched || watched.finished) && running.id !== (watched && watched.id)) {
      watchRun(running.id, null);
    }
  } catch (error) {
    ui.historyStatus.textContent = `Could not read the history: ${error.message}`;
  } finally {
    ui.historyRefresh.disabled = false;
  }
}

function selectedIds() {
  return [...ui.historyRows.querySelectorAll('input[name="compare"]:checked')].map((input) => input.value);
}

/** Workload names of past runs whose history summary does not carry one: run id -> name. */
const workloadNames = new Map();
const NAME_LOOKUPS = 25; // at most this many runs read in full for their workload's name

/** Reads the runs whose summary lacks the workload's name, a few at a time, and fills it in. */
async function fillWorkloadNames() {
  const missing = history
    .filter((run) => !workloadNameOf(run) && !workloadNames.has(String(run.id)))
    .slice(0, NAME_LOOKUPS)
    .map((run) => String(run.id));
  for (let i = 0; i < missing.length; i += 4) {
    const found = await Promise.all(missing.slice(i, i + 4).map((id) => fetchRun(id)));
    found.forEach((result, j) => {
      const id = missing[i + j];
      const name = workloadNameOf(result);
      if (!name) return;
      if (result.status !== "running") workloadNames.set(id, name);
      const cell = ui.historyRows.querySelector(`tr[data-run-id="${CSS.escape(id)}"] .workload-name`);
      if (cell) {
        cell.textContent = name;
        cell.dataset.workload = name;
      }
    });
  }
}

function renderHistory() {
  const keep = new Set(selectedIds());
  if (!history.length) {
    ui.historyRows.replaceChildren(
      el("tr", {}, [el("td", { colspan: "7", className: "muted", text: "No runs yet." })]),
    );
  } else {
    ui.historyRows.replaceChildren(...history.map(historyRow(keep)));
  }
  updateCompareButton();
}

function historyRow(keep) {
  return (run, index) => {
    const id = String(run.id);
    const checkboxId = `bench-select-${index}`;
    const writers = Array.isArray(run.writers) ? run.writers : [];
    return el("tr", { "data-run-id": id, "data-status": run.status }, [
      el("td", { className: "select-cell" }, [
        el("input", { type: "checkbox", id: checkboxId, name: "compare", value: id, checked: keep.has(id) }),
        el("label", { for: checkboxId, className: "visually-hidden", text: `Select run ${id} to compare` }),
      ]),
      el("td", {}, [
        el("time", { datetime: run.started_at, className: "block", text: formatTime(run.started_at) }),
        el("code", { className: "run-id small", text: id }),
        labelControl(run),
      ]),
      modeCell(run),
      el("td", {}, [badge(run.status), ...(run.partial && run.status !== "running" ? [" ", badge("partial")] : [])]),
      el("td", { className: "small", "data-cell": "workload" }, [
        el("strong", {
          className: "workload-name block",
          "data-workload": workloadNames.get(id) || workloadNameOf(run),
          text: workloadNames.get(id) || workloadNameOf(run) || "…",
        }),
        describeWorkload(run.workload),
      ]),
      el(
        "td",
        {},
        el(
          "ul",
          { className: "plain-list small" },
          writers.map((w) =>
            el("li", { "data-writer": w.writer }, [
              el("span", { className: "writer-name", text: writerLabel(w.writer) }),
              ` ${formatNumber(w.rows_per_s)} rows/s`,
              w.status !== "completed" ? ` (${w.status})` : null,
            ]),
          ),
        ),
      ),
      el("td", { className: "actions-cell" }, [
        run.status === "running"
          ? el("span", { className: "muted small", text: "running" })
          : el("button", {
              type: "button",
              className: "button button-quiet",
              "data-open": id,
              "aria-label": `Open run ${id}`,
              text: "Open",
            }),
        ...(run.status === "running" ? [] : downloadLinks(id)),
        ...rowActions(run),
      ]),
    ]);
  };
}

function updateCompareButton() {
  const count = selectedIds().length;
  ui.compare.disabled = count !== 2;
  ui.compareHint.textContent =
    count === 2 ? "Two runs selected." : `Select two runs to compare them (${count} selected).`;
}

function onHistoryClick(event) {
  const button = event.target.closest("button[data-open]");
  if (button) openRun(button.dataset.open);
}

async function compareSelected() {
  const ids = selectedIds();
  if (ids.length !== 2) return;
  // A is the older run, B the newer: the change reads "from A to B".
  const started = new Map(history.map((run) => [String(run.id), String(run.started_at)]));
  const [a, b] = ids.sort((x, y) => (started.get(x) || "").localeCompare(started.get(y) || ""));
  ui.compare.disabled = true;
  ui.historyStatus.textContent = "Comparing…";
  try {
    const query = new URLSearchParams({ a, b });
    const { ok, status, body } = await requestJson(`${API}/compare?${query}`);
    if (!ok || !body || !Array.isArray(body.diffs)) throw new Error(errorMessage(status, body));
    renderComparison(body, started);
    ui.historyStatus.textContent = `Compared ${a} (A) with ${b} (B).`;
    ui.compareHeading.focus();
  } catch (error) {
    ui.historyStatus.textContent = `Could not compare: ${error.message}`;
  } finally {
    updateCompareButton();
  }
}

const VERDICTS = {
  "b better": ["verdict verdict-better", "▲ B better"],
  "a better": ["verdict verdict-worse", "▼ B worse"],
  "within noise": ["verdict verdict-noise", "≈ within noise"],
  "not enough data": ["verdict muted", "not enough data"],
  "not comparable": ["verdict muted", "not comparable"],
};

function verdict(diff) {
  const [className, text] = VERDICTS[diff.decision] || VERDICTS["not comparable"];
  return el("span", { className, text, title: diff.reason || null });
}

function withInterval(metric, value, bounds) {
  const text = formatMetric(metric, value);
  return Array.isArray(bounds) ? `${text} [${formatMetric(metric, bounds[0])}, ${formatMetric(metric, bounds[1])}]` : text;
}

function formatMetric(metric, value) {
  if (typeof value !== "number") return "—";
  if (metric.endsWith("_ms")) return formatMsValue(value);
  if (metric === "mib_per_s") return formatMib(value);
  return formatNumber(value);
}

function renderComparison(result, started) {
  ui.compareResult.hidden = false;
  ui.compareResult.dataset.a = result.a;
  ui.compareResult.dataset.b = result.b;
  ui.compareRuns.replaceChildren(
    ...keyValueList(
      [
        ["A", `${result.a} (${formatTime(started.get(String(result.a)))})`],
        ["B", `${result.b} (${formatTime(started.get(String(result.b)))})`],
      ],
      "",
    ).childNodes,
  );
  const rows = result.diffs.map((diff) =>
    el(
      "tr",
      {
        "data-writer": diff.writer,
        "data-metric": diff.metric,
        "data-verdict": diff.decision,
      },
      [
        el("th", { scope: "row", text: writerLabel(diff.writer) }),
        el("td", { "data-label": "Metric", text: METRIC_LABELS[diff.metric] || diff.metric }),
        el("td", { className: "num", "data-label": "A", text: withInterval(diff.metric, diff.a, diff.a_interval) }),
        el("td", { className: "num", "data-label": "B", text: withInterval(diff.metric, diff.b, diff.b_interval) }),
        el("td", { className: "num", "data-label": "Change", text: formatPercent(diff.change) }),
        el("td", { "data-label": "Verdict" }, [
          verdict(diff),
          diff.reason ? el("span", { className: "muted small block", text: diff.reason }) : null,
        ]),
      ],
    ),
  );
  if (!rows.length) {
    rows.push(
      el("tr", {}, [el("td", { colspan: "6", className: "muted", text: "The two runs have no writer in common." })]),
    );
  }
  ui.compareTable.tBodies[0].replaceChildren(...rows);
  const notes = [...(result.notes || [])];
  for (const [side, list] of [
    ["A", result.only_in_a || []],
    ["B", result.only_in_b || []],
  ]) {
    if (list.length)
      notes.push(
        `Only in ${side}, not compared: ${list.map((w) => `${writerLabel(w.writer, w.label)} (${w.status})`).join(", ")}`,
      );
  }
  ui.compareNotes.replaceChildren(
    ...(notes.length
      ? [
          el("div", { className: "notice notice-warn", role: "note" }, [
            el("p", { className: "notice-title", text: "Read first" }),
            el(
              "ul",
              {},
              notes.map((text) => el("li", { className: "compare-note", text })),
            ),
          ]),
        ]
      : []),
  );
}

// ---------------------------------------------------------------------------------------
// Start

async function start() {
  ui.form.addEventListener("submit", startRun);
  ui.form.addEventListener("input", onFormInput);
  ui.form.addEventListener("change", onFormInput);
  for (const radio of ui.form.querySelectorAll('[name="length_kind"]')) radio.addEventListener("change", onLengthKind);
  ui.cancel.addEventListener("click", cancelRun);
  ui.historyRefresh.addEventListener("click", loadHistory);
  ui.historyRows.addEventListener("click", onHistoryClick);
  ui.historyRows.addEventListener("change", updateCompareButton);
  ui.compare.addEventListener("click", compareSelected);
  if (resizer) for (const container of [ui.liveChart, ui.pctChart, ui.tputChart]) resizer.observe(container);
  ui.tputWindow.addEventListener("change", () => drawThroughputChart(null));
  ui.workload.addEventListener("change", onWorkloadChange);
  onWorkloads(renderWorkloadChoices);
  onLengthKind();
  // The history is read once the writers (their labels and colours) and workloads are known:
  // its rows mean the form is ready.
  const workloads = loadWorkloads().catch((error) => {
    showError("workload", `Could not load the workloads: ${error.message}`);
  });
  await Promise.all([loadWriterChoices(), workloads]);
  await loadHistory();
  installHistory({ rows: ui.historyRows, reload: loadHistory, open: openRun });
}

start();
