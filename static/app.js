// Direct Write Bench: the "Write records" form and the view switcher. Plain JS, no framework,
// no build step. Server data only ever reaches the page through textContent, never as HTML.
// The form is drawn from the selected workload's input schema (item-form.js); the writers and
// workloads come from the server (catalog.js). The DOM and formatting helpers are exported for
// the Benchmark view (bench.js).

import {
  fetchWriters,
  findWorkload,
  loadWorkloads,
  onWorkloads,
  registerWorkload,
  sampleItems,
  writerColor,
} from "./catalog.js";
import { cleanMessage, errorMessage, postJson, requestJson } from "./http.js";
import {
  CUSTOM_CHOICE,
  createControls,
  exampleItem,
  fieldSpecs,
  fillControls,
  formHeading,
  readControls,
  suggestionSources,
  typeNote,
} from "./item-form.js";

export { cleanMessage, errorMessage, requestJson };

const MAX_SAMPLES = 1000;
const ALL = "all";
const ERROR_TITLES = {
  unknown_writer: "Unknown writer",
  request_too_large: "Request too large",
  write_failed: "The write failed",
  writer_unavailable: "Writer unavailable",
  schema_not_supported: "The writer cannot write this workload",
};

const $ = (id) => document.getElementById(id);
const ui = {
  workload: $("workload"),
  workloadDescription: $("workload-description"),
  workloadError: $("workload-error"),
  ddlBox: $("ddl-box"),
  ddlForm: $("ddl-form"),
  ddlName: $("ddl-name"),
  ddlText: $("ddl-text"),
  ddlRegister: $("ddl-register"),
  ddlStatus: $("ddl-status"),
  ddlError: $("ddl-error"),
  writerType: $("writer-type"),
  writerTypeError: $("writer-type-error"),
  writerStatus: $("writer-status"),
  refreshWriters: $("refresh-writers"),
  rowsTitle: $("rows-title"),
  rowsHead: $("rows-head"),
  rows: $("rows"),
  rowCount: $("row-count"),
  rowsError: $("rows-error"),
  rowsNote: $("rows-note"),
  addRow: $("add-row"),
  generateForm: $("generate-form"),
  sampleCount: $("sample-count"),
  sampleMode: $("sample-mode"),
  generateButton: $("generate-button"),
  generateStatus: $("generate-status"),
  writeForm: $("write-form"),
  submitButton: $("submit-button"),
  submitStatus: $("submit-status"),
  alert: $("alert"),
  results: $("results"),
  resultsSummary: $("results-summary"),
  resultCards: $("result-cards"),
};

/** The form's workload: its description, field specs and suggestion lists per field. */
const form = { workload: null, specs: [], choices: {}, serial: 0 };
let writersByName = new Map();
const suggestionCache = new Map(); // url -> Promise of a list of strings

// ---------------------------------------------------------------------------------------
// Small DOM and formatting helpers

/** An element with attributes and children; strings become text nodes. */
export function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of [].concat(children)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const numberFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });
const msFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });

export function formatCount(value) {
  return typeof value === "number" ? numberFormat.format(value) : "—";
}

export function formatMs(value) {
  return typeof value === "number" ? `${msFormat.format(value)} ms` : "—";
}

export function formatRate(value) {
  return typeof value === "number" ? `${numberFormat.format(value)} rows/s` : "—";
}

export function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

/** A detail value as text: lists joined, objects as JSON, nothing as a dash. */
export function formatDetail(value) {
  if (value === null || value === undefined || value === "") return "—";
  if (Array.isArray(value)) return value.length ? value.map(formatDetail).join(", ") : "—";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function humanKey(key) {
  const text = String(key).replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** A <dl> of [term, value, attrs] entries; value may be a Node or text. */
export function keyValueList(entries, className) {
  const dl = el("dl", { className: `kv ${className || ""}`.trim() });
  for (const [term, value, attrs] of entries) {
    dl.append(el("dt", { text: term }), el("dd", attrs || {}, [value]));
  }
  return dl;
}

// ---------------------------------------------------------------------------------------
// Views (tabs in the header nav; each view is a <section data-view-panel="NAME">)

let currentView = null;

function showView() {
  const panels = [...document.querySelectorAll("[data-view-panel]")];
  const names = panels.map((panel) => panel.dataset.viewPanel);
  // A run's permalink (#run=<id>, history.js) is the Benchmark view showing that run.
  const requested = location.hash.startsWith("#run=") ? "benchmark" : location.hash.slice(1);
  // Another anchor (such as the skip link's #main) keeps the view that is shown.
  const name = names.includes(requested) ? requested : currentView || names[0];
  if (!name) return;
  currentView = name;
  for (const panel of panels) panel.hidden = panel.dataset.viewPanel !== name;
  for (const link of document.querySelectorAll("[data-view]")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// ---------------------------------------------------------------------------------------
// Writers and their availability (every name, label and colour from GET /api/v1/writers)

/** Draws the writers' status and options, from `pending` (a fetch under way) or a new one. */
async function loadWriters(pending = null) {
  ui.refreshWriters.disabled = true;
  ui.writerStatus.setAttribute("aria-busy", "true");
  try {
    const writers = await (pending || fetchWriters());
    writersByName = new Map(writers.map((writer) => [writer.name, writer]));
    updateWriterOptions(writers);
    renderWriterStatus(writers);
  } catch (error) {
    ui.writerStatus.replaceChildren(
      el("li", { className: "state-unavailable" }, [`Could not check the writers: ${error.message}`]),
    );
  } finally {
    ui.refreshWriters.disabled = false;
    ui.writerStatus.removeAttribute("aria-busy");
  }
}

function swatch(name, index) {
  return el("span", {
    className: "writer-swatch",
    "aria-hidden": "true",
    style: `background:${writerColor(writersByName.get(name), index)}`,
  });
}

/** "available (local stand-in)" in local mode: the page never lets a stand-in pass for the service. */
export function availabilityText(writer) {
  if (!writer.available) return "unavailable";
  return writer.stand_in ? "available (local stand-in)" : "available";
}

function renderWriterStatus(writers) {
  const items = writers.map((writer, index) => {
    const state = writer.available ? "available" : "unavailable";
    return el("li", { "data-writer": writer.name, "data-available": String(writer.available) }, [
      el("span", { className: `dot state-${state}`, "aria-hidden": "true", text: writer.available ? "●" : "○" }),
      swatch(writer.name, index),
      el("span", { className: "writer-name", text: writer.label || writer.name }),
      el("span", { className: `state-${state}`, "data-field": "availability", text: availabilityText(writer) }),
      writer.available || !writer.reason ? null : el("span", { className: "writer-reason", text: `— ${writer.reason}` }),
    ]);
  });
  if (!items.length) items.push(el("li", { className: "muted", text: "The server offers no writer." }));
  ui.writerStatus.replaceChildren(...items);
}

/** One option per writer, then "All side by side"; the choice made is kept. */
function updateWriterOptions(writers) {
  const chosen = ui.writerType.value;
  const options = writers.map((writer) => {
    const label = writer.label || writer.name;
    return el("option", {
      value: writer.name,
      title: writer.available ? null : writer.reason,
      text: `${label} — ${availabilityText(writer)}`,
    });
  });
  const up = writers.filter((writer) => writer.available).length;
  options.push(el("option", { value: ALL, text: `All side by side (${up}/${writers.length} available)` }));
  ui.writerType.replaceChildren(...options);
  const names = [...writers.map((writer) => writer.name), ALL];
  ui.writerType.value = names.includes(chosen) ? chosen : names[0];
}

// ---------------------------------------------------------------------------------------
// Workloads: the picker, and registering one from pasted DDL

function renderWorkloadOptions(workloads, selected) {
  ui.workload.replaceChildren(
    ...workloads.map((workload) =>
      el("option", {
        value: workload.name,
        text: workload.builtin ? workload.label || workload.name : `${workload.name} (registered)`,
      }),
    ),
  );
  if (selected && workloads.some((workload) => workload.name === selected)) ui.workload.value = selected;
}

function onWorkloadsLoaded(workloads, { added }) {
  const keep = added || (form.workload && form.workload.name) || ui.workload.value;
  renderWorkloadOptions(workloads, keep);
  if (added) selectWorkload(added);
}

/** What a workload is and where its rows go. */
function describeWorkload(workload) {
  const targets = [
    workload.delta_table ? `Delta table ${workload.delta_table}` : null,
    workload.postgres_table ? `Postgres table ${workload.postgres_table}` : null,
  ].filter(Boolean);
  const text = workload.description ? String(workload.description).trim() : "";
  return [text, targets.length ? `Writes to: ${targets.join(", ")}.` : ""].filter(Boolean).join(" ");
}

let selecting = 0;

/** Draws the form for a workload: its columns, and a first row (the examples or a sample). */
async function selectWorkload(name) {
  const workload = findWorkload(name);
  if (!workload) return;
  const token = (selecting += 1);
  ui.workload.value = name;
  ui.workloadError.hidden = true;
  ui.workloadDescription.textContent = describeWorkload(workload);
  const specs = fieldSpecs(workload);
  const choices = await loadSuggestions(workload);
  let first = exampleItem(specs);
  if (!first) {
    try {
      [first] = await sampleItems(name, 1, 0);
    } catch {
      first = {};
    }
  }
  if (token !== selecting) return; // another workload was picked meanwhile
  form.workload = workload;
  form.specs = specs;
  form.choices = choices;
  clearErrors();
  clearResults();
  ui.submitStatus.textContent = "";
  ui.generateStatus.textContent = "";
  renderHead();
  addRows([first || {}], { replace: true });
  ui.writeForm.dataset.workload = name;
}

async function loadSuggestions(workload) {
  const choices = {};
  for (const [field, url] of Object.entries(suggestionSources(workload))) {
    if (!suggestionCache.has(url)) {
      const loading = requestJson(url).then(({ ok, status, body }) => {
        if (!ok || !Array.isArray(body)) throw new Error(errorMessage(status, body));
        return body.map(String);
      });
      suggestionCache.set(url, loading);
      loading.catch(() => suggestionCache.delete(url));
    }
    try {
      choices[field] = await suggestionCache.get(url);
    } catch (error) {
      choices[field] = [];
      showAlert(`The choices for ${field} could not be loaded`, [error.message]);
    }
  }
  return choices;
}

async function registerDdl(event) {
  event.preventDefault();
  if (ui.ddlRegister.disabled) return;
  clearDdlError();
  const ddl = ui.ddlText.value;
  const name = ui.ddlName.value.trim();
  if (!ddl.trim()) {
    showDdlError("Paste a CREATE TABLE statement or a column list.", ui.ddlText);
    return;
  }
  ui.ddlRegister.disabled = true;
  ui.ddlStatus.textContent = "Registering…";
  try {
    const { ok, status, body } = await registerWorkload(name ? { name, ddl } : { ddl });
    if (ok && body && typeof body.name === "string") {
      const columns = Array.isArray(body.columns) ? body.columns.length : 0;
      ui.ddlStatus.textContent = `Registered ${body.name} (${plural(columns, "column")}); it is the workload now.`;
      return;
    }
    ui.ddlStatus.textContent = "Nothing was registered.";
    if (status === 422 && body && Array.isArray(body.detail)) {
      const messages = body.detail.map((d) => {
        const path = (Array.isArray(d.loc) ? d.loc : []).filter((part) => part !== "body").join(".");
        return path ? `${path}: ${cleanMessage(d.msg)}` : cleanMessage(d.msg);
      });
      const onName = body.detail.some((d) => Array.isArray(d.loc) && d.loc.includes("name"));
      showDdlError(messages.join("; "), onName ? ui.ddlName : ui.ddlText);
    } else {
      showDdlError(errorMessage(status, body), ui.ddlText);
    }
  } catch (error) {
    ui.ddlStatus.textContent = "";
    showDdlError(`The request did not reach the server: ${error.message}`, null);
  } finally {
    ui.ddlRegister.disabled = false;
  }
}

function showDdlError(message, control) {
  ui.ddlError.textContent = message;
  ui.ddlError.hidden = false;
  if (control) {
    control.setAttribute("aria-invalid", "true");
    control.focus();
  }
}

function clearDdlError() {
  ui.ddlError.hidden = true;
  ui.ddlError.textContent = "";
  ui.ddlText.removeAttribute("aria-invalid");
  ui.ddlName.removeAttribute("aria-invalid");
}

// ---------------------------------------------------------------------------------------
// Item rows: one cell per field of the workload's input schema

function renderHead() {
  const required = form.specs.some((spec) => spec.required);
  ui.rowsTitle.textContent = formHeading(form.workload);
  ui.rowsNote.textContent = required
    ? "* required. An optional field left empty is sent as null."
    : "An optional field left empty is sent as null.";
  ui.rowsHead.replaceChildren(
    el("tr", {}, [
      el("th", { scope: "col", className: "col-num", text: "#" }),
      ...form.specs.map((spec) => {
        const note = typeNote(spec);
        return el("th", { scope: "col", "data-field": spec.name, title: spec.comment }, [
          spec.label,
          spec.required ? el("span", { className: "required-mark", "aria-hidden": "true", text: " *" }) : null,
          spec.required ? el("span", { className: "visually-hidden", text: " (required)" }) : null,
          note ? el("span", { className: "col-type", text: note }) : null,
        ]);
      }),
      el("th", { scope: "col" }, [el("span", { className: "visually-hidden", text: "Actions" })]),
    ]),
  );
}

function controlsOf(td) {
  return [...td.querySelectorAll("input, select, textarea")];
}

/** A new table row, wired to its labels and error messages, holding `item`. */
function createRow(item) {
  form.serial += 1;
  const serial = form.serial;
  const tr = el("tr", { className: "item-row", "data-row-id": String(serial) }, [
    el("td", { className: "col-num", "data-cell": "num" }),
  ]);
  for (const spec of form.specs) {
    const base = `row${serial}-${spec.name}`;
    const error = el("p", { className: "field-error", id: `${base}-error`, hidden: true });
    const controls = createControls(spec, form.choices[spec.name] || []);
    const td = el("td", { "data-field": spec.name, "data-kind": spec.kind, "data-wide": spec.wide ? "true" : null });
    controls.forEach((control, i) => {
      control.id = i === 0 ? base : `${base}-custom`;
      control.setAttribute("aria-describedby", error.id);
      const text = i === 0 ? spec.label : `Custom ${spec.label.toLowerCase()}`;
      const label = el(
        "label",
        { className: i === 0 ? "cell-label" : "cell-label custom-choice-label", for: control.id, hidden: i > 0 },
        [el("span", { className: "cell-label-text", text }), el("span", { className: "visually-hidden row-suffix" })],
      );
      td.append(label, control);
    });
    td.append(error);
    tr.append(td);
  }
  tr.append(
    el("td", { className: "col-actions" }, [
      el("button", { type: "button", className: "button button-quiet remove-row", text: "Remove" }),
    ]),
  );
  fillRow(tr, item || {});
  return tr;
}

function fillRow(tr, item) {
  for (const spec of form.specs) {
    const td = tr.querySelector(`td[data-field="${spec.name}"]`);
    fillControls(spec, controlsOf(td), item[spec.name], form.choices[spec.name] || []);
    if (spec.kind === "suggest") showCustomChoice(td, controlsOf(td)[0].value === CUSTOM_CHOICE);
  }
}

function showCustomChoice(td, visible) {
  const custom = td.querySelector(".custom-choice");
  const label = td.querySelector(".custom-choice-label");
  if (custom) custom.hidden = !visible;
  if (label) label.hidden = !visible;
}

function itemRows() {
  return [...ui.rows.querySelectorAll("tr.item-row")];
}

/** Row numbers, the screen-reader suffix of every label, counts and the submit text. */
function renumberRows() {
  const rows = itemRows();
  rows.forEach((tr, i) => {
    const number = i + 1;
    tr.querySelector('[data-cell="num"]').textContent = String(number);
    for (const suffix of tr.querySelectorAll(".row-suffix")) suffix.textContent = `, row ${number}`;
    tr.querySelector(".remove-row").setAttribute("aria-label", `Remove row ${number}`);
  });
  ui.rowCount.textContent = `(${plural(rows.length, "row")})`;
  ui.submitButton.textContent = `Write ${plural(rows.length, "record")}`;
}

function addRows(items, { replace = false } = {}) {
  const fragment = document.createDocumentFragment();
  for (const item of items) fragment.append(createRow(item));
  if (replace) ui.rows.replaceChildren(fragment);
  else ui.rows.append(fragment);
  renumberRows();
}

function addEmptyRow() {
  if (!form.workload) return;
  const last = itemRows().at(-1);
  const item = {};
  if (last) {
    // A new row keeps the choices of the one above (the category, say).
    for (const spec of form.specs.filter((s) => s.kind === "suggest")) {
      const read = readControls(spec, controlsOf(last.querySelector(`td[data-field="${spec.name}"]`)));
      item[spec.name] = read.value;
    }
  }
  addRows([item]);
  const first = itemRows().at(-1).querySelector("td[data-field] input, td[data-field] select, td[data-field] textarea");
  if (first) first.focus();
}

function removeRow(tr) {
  const rows = itemRows();
  const next = rows[rows.indexOf(tr) + 1] || rows[rows.indexOf(tr) - 1];
  tr.remove();
  renumberRows();
  // Keep keyboard focus nearby rather than dropping it to the page.
  (next ? next.querySelector(".remove-row") : ui.addRow).focus();
}

/** The item a row describes, as the API expects it, and the fields that cannot be sent. */
function readRow(tr) {
  const item = {};
  const problems = [];
  for (const spec of form.specs) {
    const read = readControls(spec, controlsOf(tr.querySelector(`td[data-field="${spec.name}"]`)));
    if (read.error) problems.push({ field: spec.name, message: read.error });
    else item[spec.name] = read.value;
  }
  return { item, problems };
}

function onRowsClick(event) {
  const button = event.target.closest(".remove-row");
  if (button) removeRow(button.closest("tr"));
}

function onRowsInput(event) {
  const td = event.target.closest("td[data-field]");
  if (!td) return;
  if (td.dataset.kind === "suggest" && event.target.tagName === "SELECT") {
    const custom = event.target.value === CUSTOM_CHOICE;
    showCustomChoice(td, custom);
    if (custom && event.type === "change") td.querySelector(".custom-choice").focus();
  }
  clearFieldError(td);
}

// ---------------------------------------------------------------------------------------
// Sample records

async function generateSamples(event) {
  event.preventDefault();
  if (!form.workload) return;
  const count = Number(ui.sampleCount.value);
  if (!Number.isInteger(count) || count < 1 || count > MAX_SAMPLES) {
    ui.sampleCount.setAttribute("aria-invalid", "true");
    ui.generateStatus.textContent = `Enter a whole number from 1 to ${MAX_SAMPLES}.`;
    ui.sampleCount.focus();
    return;
  }
  ui.sampleCount.removeAttribute("aria-invalid");
  ui.generateButton.disabled = true;
  const workload = form.workload;
  const seed = Math.floor(Math.random() * 1_000_000);
  try {
    const items = await sampleItems(workload.name, count, seed);
    if (form.workload !== workload) return;
    const replace = ui.sampleMode.value === "replace";
    clearErrors();
    addRows(items, { replace });
    ui.generateStatus.textContent = `${replace ? "Replaced the rows with" : "Appended"} ${plural(items.length, "sample record")} (seed ${seed}).`;
  } catch (error) {
    ui.generateStatus.textContent = `Could not generate samples: ${error.message}`;
  } finally {
    ui.generateButton.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------
// Errors: field messages next to inputs, and the alert region

function invalidControls(td) {
  const custom = td.querySelector(".custom-choice");
  if (custom && !custom.hidden) return [custom];
  return controlsOf(td).slice(0, 1);
}

function showFieldError(td, message) {
  const error = td.querySelector(".field-error");
  error.textContent = error.hidden ? message : `${error.textContent} ${message}`;
  error.hidden = false;
  for (const control of invalidControls(td)) control.setAttribute("aria-invalid", "true");
}

function markInvalid(td) {
  for (const control of invalidControls(td)) control.setAttribute("aria-invalid", "true");
}

function clearFieldError(td) {
  const error = td.querySelector(".field-error");
  error.hidden = true;
  error.textContent = "";
  for (const control of td.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
}

function showMessage(node, control, message) {
  node.textContent = message;
  node.hidden = false;
  if (control) control.setAttribute("aria-invalid", "true");
}

function clearErrors() {
  for (const td of ui.rows.querySelectorAll("td[data-field]")) clearFieldError(td);
  for (const node of [ui.rowsError, ui.writerTypeError]) {
    node.hidden = true;
    node.textContent = "";
  }
  ui.writerType.removeAttribute("aria-invalid");
  hideAlert();
}

function showAlert(title, lines = []) {
  const list = lines.length ? el("ul", {}, lines.map((line) => el("li", { text: line }))) : null;
  ui.alert.replaceChildren(...[el("p", { className: "alert-title", text: title }), list].filter(Boolean));
  ui.alert.hidden = false;
}

function hideAlert() {
  ui.alert.hidden = true;
  ui.alert.replaceChildren();
}

function namesField(message, name) {
  const escaped = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`(^|[^A-Za-z0-9_])${escaped}($|[^A-Za-z0-9_])`).test(String(message));
}

/** Which row and field a validation error's loc points at, e.g. ["body","items",2,"product_price"]. */
function locateError(loc, message) {
  const path = Array.isArray(loc) ? loc.slice(loc[0] === "body" ? 1 : 0) : [];
  if (path[0] === "writer_type") return { target: "writer" };
  if (path[0] === "schema_type") return { target: "workload" };
  if (path[0] !== "items") return { target: "form" };
  if (typeof path[1] !== "number") return { target: "rows" };
  const names = form.specs.map((spec) => spec.name);
  let fields = names.includes(path[2]) ? [path[2]] : [];
  if (!fields.length && path.length === 2) {
    // A rule over the whole item (start date after stop date) names its fields in the message.
    fields = names.filter((name) => namesField(message, name));
  }
  return { target: "row", rowIndex: path[1], fields };
}

function labelOf(name) {
  const spec = form.specs.find((s) => s.name === name);
  return spec ? spec.label : name;
}

/** Put each FastAPI 422 error at the input it concerns; list them all in the alert. */
function showValidationErrors(detail) {
  const rows = itemRows();
  const lines = [];
  let firstInvalid = null;
  for (const error of detail) {
    const message = cleanMessage(error.msg);
    const where = locateError(error.loc, error.msg);
    if (where.target === "writer") {
      showMessage(ui.writerTypeError, ui.writerType, message);
      lines.push(`Writer: ${message}`);
      firstInvalid ||= ui.writerType;
    } else if (where.target === "workload") {
      showMessage(ui.workloadError, ui.workload, message);
      lines.push(`Workload: ${message}`);
      firstInvalid ||= ui.workload;
    } else if (where.target === "rows") {
      showMessage(ui.rowsError, null, message);
      lines.push(`${formHeading(form.workload)}: ${message}`);
      firstInvalid ||= ui.addRow;
    } else if (where.target === "row" && rows[where.rowIndex] && form.specs.length) {
      const tr = rows[where.rowIndex];
      const fields = where.fields;
      const name = fields.length ? fields.map(labelOf).join(" / ") : "";
      lines.push(`Row ${where.rowIndex + 1}${name ? `, ${name}` : ""}: ${message}`);
      const tds = (fields.length ? fields : [form.specs[0].name]).map((field) =>
        tr.querySelector(`td[data-field="${field}"]`),
      );
      // The message goes next to the last field it names; every named field is marked.
      tds.forEach((td) => markInvalid(td));
      showFieldError(tds.at(-1), message);
      firstInvalid ||= invalidControls(tds[0])[0];
    } else {
      lines.push(`${(error.loc || []).join(".")}: ${message}`);
    }
  }
  showAlert(`Nothing was written: ${plural(detail.length, "problem")} to fix.`, lines);
  if (firstInvalid) firstInvalid.focus();
}

// ---------------------------------------------------------------------------------------
// Submitting and the results

async function submitWrite(event) {
  event.preventDefault();
  if (ui.submitButton.disabled || !form.workload) return;
  clearErrors();
  const read = itemRows().map(readRow);
  const problems = read.flatMap((row, i) =>
    row.problems.map((p) => ({ loc: ["body", "items", i, p.field], msg: p.message })),
  );
  if (problems.length) {
    clearResults();
    showValidationErrors(problems);
    return;
  }
  const payload = {
    schema_type: form.workload.name,
    writer_type: ui.writerType.value,
    items: read.map((row) => row.item),
  };
  // "All": writers the page shows unavailable are not tried (the server answers them as
  // skipped at once, instead of waiting on a target known to be down); Refresh re-checks.
  if (payload.writer_type === ALL) {
    const skip = [...writersByName.values()].filter((writer) => !writer.available).map((writer) => writer.name);
    if (skip.length) payload.skip = skip;
  }
  setRunning(true);
  try {
    const { ok, status, body } = await postJson("api/v1/process-structured", payload);
    if (ok && body && Array.isArray(body.results)) {
      renderResults(body);
    } else if (status === 422 && body && Array.isArray(body.detail)) {
      clearResults();
      showValidationErrors(body.detail);
    } else {
      clearResults();
      showRequestError(status, body);
    }
  } catch (error) {
    clearResults();
    showAlert("The request did not reach the server.", [error.message]);
  } finally {
    setRunning(false);
  }
}

function setRunning(running) {
  ui.submitButton.disabled = running;
  ui.results.setAttribute("aria-busy", String(running));
  if (running) ui.submitStatus.textContent = "Writing…";
  else if (ui.submitStatus.textContent === "Writing…") ui.submitStatus.textContent = "";
}

function showRequestError(status, body) {
  const kind = body && typeof body === "object" ? body.error : null;
  const title = `${ERROR_TITLES[kind] || "The request failed"} (HTTP ${status})`;
  const lines = [errorMessage(status, body)];
  if (body && typeof body === "object" && body.writer) lines.push(`Writer: ${body.writer}`);
  showAlert(title, lines);
  ui.submitStatus.textContent = "Nothing was written.";
}

function clearResults() {
  ui.resultsSummary.replaceChildren();
  ui.resultCards.replaceChildren();
}

function renderResults(response) {
  ui.resultsSummary.replaceChildren(renderSummary(response));
  ui.resultCards.replaceChildren(...response.results.map(renderCard));
  ui.submitStatus.textContent = writeStatusText(response);
}

function writerLabelOf(result) {
  return result.label || (writersByName.get(result.writer) || {}).label || result.writer;
}

/** Per writer: the same rows go through each, so a sum over writers would count them twice. */
function writeStatusText(response) {
  const results = response.results || [];
  if (response.writer_type !== ALL) {
    return response.status === "success"
      ? `Wrote ${plural(response.processed_count, "row")}.`
      : `Partly written: ${plural(response.processed_count, "row")}; the cards below say which writers did not write.`;
  }
  const wrote = results.filter((r) => r.status === "success");
  const rest = results.filter((r) => r.status !== "success");
  const counts = new Set(wrote.map((r) => r.rows_written));
  const written =
    counts.size === 1
      ? `Wrote ${plural(wrote[0].rows_written, "row")} through each of ${plural(wrote.length, "writer")}`
      : `Wrote ${wrote.map((r) => `${plural(r.rows_written, "row")} through ${writerLabelOf(r)}`).join(", ")}`;
  const missed = rest.map((r) => `${writerLabelOf(r)} ${r.status}`).join(", ");
  return rest.length ? `${written}; not written: ${missed}.` : `${written}.`;
}

export function badge(status) {
  return el("span", { className: `badge badge-${status}`, "data-status": status, text: status });
}

function renderSummary(response) {
  const writer =
    response.writer_type === ALL
      ? "all writers"
      : (writersByName.get(response.writer_type) || {}).label || response.writer_type;
  const workload = form.workload ? form.workload.name : null;
  const entries = [
    ["Batch id", el("code", { "data-field": "batch_id", text: response.batch_id })],
    ["Workload", workload || "—", { "data-field": "workload" }],
  ];
  if (response.writer_type === ALL) {
    // One line per writer, never a total: each wrote the same items, one after another.
    entries.push([
      "Rows written, per writer",
      el(
        "ul",
        { className: "plain-list", "data-metric": "rows_per_writer" },
        response.results.map((r) =>
          el("li", { "data-writer": r.writer, "data-rows": String(r.rows_written) }, [
            `${writerLabelOf(r)}: ${formatCount(r.rows_written)}`,
            r.status === "success" ? ` in ${formatMs(r.processing_time_ms)}` : ` (${r.status})`,
          ]),
        ),
      ),
    ]);
    entries.push([
      "Time, writers one after another",
      formatMs(response.processing_time_ms),
      { "data-metric": "processing_time_ms" },
    ]);
  } else {
    entries.push(
      ["Rows written", formatCount(response.processed_count), { "data-metric": "processed_count" }],
      ["Total time", formatMs(response.processing_time_ms), { "data-metric": "processing_time_ms" }],
      ["Throughput", formatRate(response.throughput_records_per_sec), { "data-metric": "throughput" }],
    );
  }
  return el("div", { className: "summary", "data-batch-id": response.batch_id, "data-workload": workload }, [
    el("div", { className: "summary-head" }, [el("h3", { text: `Batch through ${writer}` }), badge(response.status)]),
    keyValueList(entries, "metrics"),
  ]);
}

function renderCard(result, index) {
  const details = Object.entries(result.details || {});
  const known = [...writersByName.keys()].indexOf(result.writer);
  const color = writerColor(writersByName.get(result.writer), known >= 0 ? known : index);
  return el(
    "article",
    {
      className: "result-card",
      "data-writer": result.writer,
      "data-status": result.status,
      style: `border-top-color:${color}`,
    },
    [
      el("div", { className: "result-card-head" }, [
        el("h4", { text: result.label || result.writer }),
        badge(result.status),
      ]),
      keyValueList(
        [
          ["Rows written", formatCount(result.rows_written), { "data-metric": "rows_written" }],
          ["Processing", formatMs(result.processing_time_ms), { "data-metric": "processing_time_ms" }],
          ["Throughput", formatRate(result.throughput_records_per_sec), { "data-metric": "throughput" }],
        ],
        "metrics",
      ),
      details.length ? el("h5", { className: "details-heading", text: "Identifiers" }) : null,
      details.length
        ? keyValueList(
            details.map(([key, value]) => [
              humanKey(key),
              el("code", { text: formatDetail(value) }),
              { "data-detail": key },
            ]),
            "details",
          )
        : null,
      result.error
        ? el("p", { className: "result-error", role: "note" }, [
            el("strong", { text: result.error.kind === "unavailable" ? "Unavailable: " : "Failed: " }),
            result.error.message,
          ])
        : null,
    ],
  );
}

// ---------------------------------------------------------------------------------------
// Start

/** The banner on every view: what the figures on this page measure (GET /api/v1/mode). */
async function loadMode() {
  const banner = document.getElementById("mode-banner");
  try {
    const { ok, body } = await requestJson("api/v1/mode");
    if (!ok || !body || typeof body.notice !== "string") return;
    banner.dataset.mode = String(body.mode);
    banner.replaceChildren(el("strong", { text: body.mode === "local" ? "Local stand-ins. " : "Workspace. " }), body.notice);
    banner.hidden = false;
  } catch {
    // no banner without an answer; the writers' list reports an unreachable server
  }
}

async function start() {
  window.addEventListener("hashchange", showView);
  showView();
  loadMode();
  ui.refreshWriters.addEventListener("click", () => loadWriters());
  ui.addRow.addEventListener("click", addEmptyRow);
  ui.rows.addEventListener("click", onRowsClick);
  ui.rows.addEventListener("input", onRowsInput);
  ui.rows.addEventListener("change", onRowsInput);
  ui.generateForm.addEventListener("submit", generateSamples);
  ui.sampleCount.addEventListener("input", () => ui.sampleCount.removeAttribute("aria-invalid"));
  ui.writerType.addEventListener("change", () => {
    ui.writerTypeError.hidden = true;
    ui.writerType.removeAttribute("aria-invalid");
  });
  ui.workload.addEventListener("change", () => {
    ui.workload.removeAttribute("aria-invalid");
    selectWorkload(ui.workload.value);
  });
  ui.ddlForm.addEventListener("submit", registerDdl);
  ui.ddlText.addEventListener("input", clearDdlError);
  ui.ddlName.addEventListener("input", clearDdlError);
  ui.writeForm.addEventListener("submit", submitWrite);
  onWorkloads(onWorkloadsLoaded);
  // The writers' answer is drawn once the form is: the status list means the page is ready.
  const writers = fetchWriters();
  writers.catch(() => {}); // reported by loadWriters
  try {
    const workloads = await loadWorkloads();
    if (workloads.length) await selectWorkload(ui.workload.value || workloads[0].name);
    else ui.workloadDescription.textContent = "The server offers no workload.";
  } catch (error) {
    showMessage(ui.workloadError, ui.workload, `Could not load the workloads: ${error.message}`);
  }
  await loadWriters(writers);
}

start();
