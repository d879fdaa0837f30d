// Direct Write Bench: the "Write records" form and the view switcher. Plain JS, no framework,
// no build step. Server data only ever reaches the page through textContent, never as HTML.
// The DOM, HTTP and formatting helpers are exported for the Benchmark view (bench.js).

// The known categories, loaded from the server (records.CATEGORIES) before the first row is
// drawn; any other text up to 64 characters is accepted too (the "Custom…" choice).
let CATEGORIES = [];
const CUSTOM_CATEGORY = "__custom__";
const FIELDS = [
  "product_id",
  "product_name",
  "product_price",
  "category",
  "sale_start_date",
  "sale_stop_date",
  "description",
];
const FIELD_LABELS = {
  product_id: "Product ID",
  product_name: "Name",
  product_price: "Price",
  category: "Category",
  sale_start_date: "Sale start",
  sale_stop_date: "Sale stop",
  description: "Description",
};
const EXAMPLE_ITEM = {
  product_id: "PROD005",
  product_name: "Smart Watch",
  product_price: 499.99,
  category: "electronics",
  sale_start_date: "2026-11-01",
  sale_stop_date: "2026-11-30",
  description: "Fitness tracking, GPS, 7-day battery",
};
const MAX_SAMPLES = 1000;
const ERROR_TITLES = {
  unknown_writer: "Unknown writer",
  request_too_large: "Request too large",
  write_failed: "The write failed",
  writer_unavailable: "Writer unavailable",
};

const $ = (id) => document.getElementById(id);
const ui = {
  writerType: $("writer-type"),
  writerTypeError: $("writer-type-error"),
  writerStatus: $("writer-status"),
  refreshWriters: $("refresh-writers"),
  rows: $("rows"),
  rowCount: $("row-count"),
  rowsError: $("rows-error"),
  rowTemplate: $("row-template"),
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
let rowSerial = 0;

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
// HTTP

/** fetch + JSON: resolves to {ok, status, body}; body is parsed JSON or the response text. */
export async function requestJson(url, options = {}) {
  const response = await fetch(url, {
    ...options,
    headers: { Accept: "application/json", ...(options.headers || {}) },
  });
  const text = await response.text();
  let body = text;
  if ((response.headers.get("content-type") || "").includes("json") && text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
  }
  return { ok: response.ok, status: response.status, body };
}

/** A readable one-line reason from an error response body. */
export function errorMessage(status, body) {
  if (body && typeof body === "object") {
    if (body.message) return String(body.message);
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => cleanMessage(d.msg)).join("; ");
  }
  const text = typeof body === "string" ? body.trim().slice(0, 300) : "";
  return text ? `HTTP ${status}: ${text}` : `HTTP ${status}`;
}

// ---------------------------------------------------------------------------------------
// Views (tabs in the header nav; each view is a <section data-view-panel="NAME">)

let currentView = null;

function showView() {
  const panels = [...document.querySelectorAll("[data-view-panel]")];
  const names = panels.map((panel) => panel.dataset.viewPanel);
  const requested = location.hash.slice(1);
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
// Writers and their availability

async function loadWriters() {
  ui.refreshWriters.disabled = true;
  ui.writerStatus.setAttribute("aria-busy", "true");
  try {
    const { ok, status, body } = await requestJson("api/v1/writers");
    if (!ok || !Array.isArray(body)) throw new Error(errorMessage(status, body));
    renderWriterStatus(body);
    updateWriterOptions(body);
  } catch (error) {
    ui.writerStatus.replaceChildren(
      el("li", { className: "state-unavailable" }, [`Could not check the writers: ${error.message}`]),
    );
  } finally {
    ui.refreshWriters.disabled = false;
    ui.writerStatus.removeAttribute("aria-busy");
  }
}

function renderWriterStatus(writers) {
  const items = writers.map((writer) => {
    const state = writer.available ? "available" : "unavailable";
    return el("li", { "data-writer": writer.name, "data-available": String(writer.available) }, [
      el("span", { className: `dot state-${state}`, "aria-hidden": "true", text: writer.available ? "●" : "○" }),
      el("span", { className: "writer-name", text: writer.label || writer.name }),
      el("span", { className: `state-${state}`, text: state }),
      writer.available || !writer.reason ? null : el("span", { className: "writer-reason", text: `— ${writer.reason}` }),
    ]);
  });
  ui.writerStatus.replaceChildren(...items);
}

function updateWriterOptions(writers) {
  const byName = new Map(writers.map((writer) => [writer.name, writer]));
  for (const option of ui.writerType.options) {
    if (option.value === "all") {
      const up = writers.filter((writer) => writer.available).length;
      option.textContent = `All side by side (${up}/${writers.length} available)`;
      continue;
    }
    const writer = byName.get(option.value);
    if (!writer) continue;
    const label = writer.label || writer.name;
    option.textContent = `${label} — ${writer.available ? "available" : "unavailable"}`;
  }
}

// ---------------------------------------------------------------------------------------
// Product rows

function fillCategoryOptions(select) {
  for (const category of CATEGORIES) select.append(el("option", { value: category, text: category }));
  select.append(el("option", { value: CUSTOM_CATEGORY, text: "Custom (free text)…" }));
}

/** A new table row, wired to its labels and error messages, holding `item`. */
function createRow(item) {
  rowSerial += 1;
  const tr = ui.rowTemplate.content.firstElementChild.cloneNode(true);
  tr.dataset.rowId = String(rowSerial);
  fillCategoryOptions(tr.querySelector('select[name="category"]'));
  for (const td of tr.querySelectorAll("td[data-field]")) {
    const field = td.dataset.field;
    const base = `row${rowSerial}-${field}`;
    const error = td.querySelector(".field-error");
    error.id = `${base}-error`;
    const labels = td.querySelectorAll("label");
    const controls = td.querySelectorAll("input, select");
    controls.forEach((control, i) => {
      control.id = i === 0 ? base : `${base}-custom`;
      control.setAttribute("aria-describedby", error.id);
      labels[i].htmlFor = control.id;
      labels[i].append(el("span", { className: "visually-hidden row-suffix" }));
    });
  }
  fillRow(tr, item || {});
  return tr;
}

function fillRow(tr, item) {
  const set = (name, value) => {
    tr.querySelector(`[name="${name}"]`).value = value === null || value === undefined ? "" : String(value);
  };
  set("product_id", item.product_id);
  set("product_name", item.product_name);
  set("product_price", item.product_price);
  set("sale_start_date", item.sale_start_date);
  set("sale_stop_date", item.sale_stop_date);
  set("description", item.description);
  setCategory(tr, item.category || CATEGORIES[0]);
}

function setCategory(tr, category) {
  const known = CATEGORIES.includes(String(category).toLowerCase());
  tr.querySelector('[name="category"]').value = known ? String(category).toLowerCase() : CUSTOM_CATEGORY;
  tr.querySelector('[name="category_custom"]').value = known ? "" : category;
  showCustomCategory(tr, !known);
}

function showCustomCategory(tr, visible) {
  tr.querySelector('[name="category_custom"]').hidden = !visible;
  tr.querySelector(".custom-category-label").hidden = !visible;
}

function productRows() {
  return [...ui.rows.querySelectorAll("tr.product-row")];
}

/** Row numbers, the screen-reader suffix of every label, counts and the submit text. */
function renumberRows() {
  const rows = productRows();
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
  const last = productRows().at(-1);
  const item = last ? { category: readRow(last).category } : {};
  addRows([item]);
  productRows().at(-1).querySelector('[name="product_id"]').focus();
}

function removeRow(tr) {
  const rows = productRows();
  const next = rows[rows.indexOf(tr) + 1] || rows[rows.indexOf(tr) - 1];
  tr.remove();
  renumberRows();
  // Keep keyboard focus nearby rather than dropping it to the page.
  (next ? next.querySelector(".remove-row") : ui.addRow).focus();
}

/** The item a row describes, as the API expects it. */
function readRow(tr) {
  const value = (name) => tr.querySelector(`[name="${name}"]`).value;
  const optional = (name) => (value(name).trim() === "" ? null : value(name));
  const priceText = value("product_price").trim();
  const category = value("category") === CUSTOM_CATEGORY ? value("category_custom") : value("category");
  const item = {
    product_id: value("product_id"),
    product_name: value("product_name"),
    // An empty or unreadable price is sent as null so the server says what is wrong.
    product_price: priceText === "" || Number.isNaN(Number(priceText)) ? null : Number(priceText),
    category,
    sale_start_date: optional("sale_start_date"),
    sale_stop_date: optional("sale_stop_date"),
  };
  const description = optional("description");
  if (description !== null) item.description = description;
  return item;
}

function onRowsClick(event) {
  const button = event.target.closest(".remove-row");
  if (button) removeRow(button.closest("tr"));
}

function onRowsInput(event) {
  const td = event.target.closest("td[data-field]");
  if (!td) return;
  if (event.target.name === "category") {
    const custom = event.target.value === CUSTOM_CATEGORY;
    const tr = td.closest("tr");
    showCustomCategory(tr, custom);
    if (custom && event.type === "change") tr.querySelector('[name="category_custom"]').focus();
  }
  clearFieldError(td);
}

// ---------------------------------------------------------------------------------------
// Sample records

async function generateSamples(event) {
  event.preventDefault();
  const count = Number(ui.sampleCount.value);
  if (!Number.isInteger(count) || count < 1 || count > MAX_SAMPLES) {
    ui.sampleCount.setAttribute("aria-invalid", "true");
    ui.generateStatus.textContent = `Enter a whole number from 1 to ${MAX_SAMPLES}.`;
    ui.sampleCount.focus();
    return;
  }
  ui.sampleCount.removeAttribute("aria-invalid");
  ui.generateButton.disabled = true;
  const seed = Math.floor(Math.random() * 1_000_000);
  try {
    const { ok, status, body } = await requestJson(`api/v1/sample-items?count=${count}&seed=${seed}`);
    if (!ok || !Array.isArray(body)) throw new Error(errorMessage(status, body));
    const replace = ui.sampleMode.value === "replace";
    clearErrors();
    addRows(body, { replace });
    ui.generateStatus.textContent = `${replace ? "Replaced the rows with" : "Appended"} ${plural(body.length, "sample record")} (seed ${seed}).`;
  } catch (error) {
    ui.generateStatus.textContent = `Could not generate samples: ${error.message}`;
  } finally {
    ui.generateButton.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------
// Errors: field messages next to inputs, and the alert region

export function cleanMessage(message) {
  return String(message || "invalid value").replace(/^Value error, /, "");
}

function invalidControls(td) {
  const custom = td.querySelector('[name="category_custom"]');
  if (custom && !custom.hidden) return [custom];
  return [...td.querySelectorAll("input, select")].slice(0, 1);
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
  ui.alert.replaceChildren(el("p", { className: "alert-title", text: title }), list);
  ui.alert.hidden = false;
}

function hideAlert() {
  ui.alert.hidden = true;
  ui.alert.replaceChildren();
}

/** Which row and field a validation error's loc points at, e.g. ["body","items",2,"product_price"]. */
function locateError(loc, message) {
  const path = Array.isArray(loc) ? loc.slice(loc[0] === "body" ? 1 : 0) : [];
  if (path[0] === "writer_type") return { target: "writer" };
  if (path[0] !== "items") return { target: "form" };
  if (typeof path[1] !== "number") return { target: "rows" };
  const rowIndex = path[1];
  let fields = FIELDS.includes(path[2]) ? [path[2]] : [];
  if (!fields.length && path.length === 2) {
    // A rule over the whole item (start date after stop date) names its fields in the message.
    fields = FIELDS.filter((field) => String(message).includes(field));
  }
  return { target: "row", rowIndex, fields };
}

/** Put each FastAPI 422 error at the input it concerns; list them all in the alert. */
function showValidationErrors(detail) {
  const rows = productRows();
  const lines = [];
  let firstInvalid = null;
  for (const error of detail) {
    const message = cleanMessage(error.msg);
    const where = locateError(error.loc, error.msg);
    if (where.target === "writer") {
      showMessage(ui.writerTypeError, ui.writerType, message);
      lines.push(`Writer: ${message}`);
      firstInvalid ||= ui.writerType;
    } else if (where.target === "rows") {
      showMessage(ui.rowsError, null, message);
      lines.push(`Products: ${message}`);
      firstInvalid ||= ui.addRow;
    } else if (where.target === "row" && rows[where.rowIndex]) {
      const tr = rows[where.rowIndex];
      const fields = where.fields;
      const name = fields.length ? fields.map((field) => FIELD_LABELS[field]).join(" / ") : "";
      lines.push(`Row ${where.rowIndex + 1}${name ? `, ${name}` : ""}: ${message}`);
      if (!fields.length) {
        showFieldError(tr.querySelector('td[data-field="product_id"]'), message);
        firstInvalid ||= tr.querySelector('[name="product_id"]');
        continue;
      }
      // The message goes next to the last field it names; every named field is marked.
      const tds = fields.map((field) => tr.querySelector(`td[data-field="${field}"]`));
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
  if (ui.submitButton.disabled) return;
  clearErrors();
  const payload = {
    schema_type: "products",
    writer_type: ui.writerType.value,
    items: productRows().map(readRow),
  };
  setRunning(true);
  try {
    const { ok, status, body } = await requestJson("api/v1/process-structured", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
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
  ui.submitStatus.textContent =
    response.status === "success"
      ? `Wrote ${plural(response.processed_count, "row")}.`
      : `Partly written: ${plural(response.processed_count, "row")}; the cards below say which writers did not write.`;
}

export function badge(status) {
  return el("span", { className: `badge badge-${status}`, "data-status": status, text: status });
}

function renderSummary(response) {
  const writer = response.writer_type === "all" ? "all writers" : response.writer_type;
  return el("div", { className: "summary", "data-batch-id": response.batch_id }, [
    el("div", { className: "summary-head" }, [el("h3", { text: `Batch through ${writer}` }), badge(response.status)]),
    keyValueList(
      [
        ["Batch id", el("code", { "data-field": "batch_id", text: response.batch_id })],
        ["Rows written", formatCount(response.processed_count), { "data-metric": "processed_count" }],
        ["Total time", formatMs(response.processing_time_ms), { "data-metric": "processing_time_ms" }],
        ["Throughput", formatRate(response.throughput_records_per_sec), { "data-metric": "throughput" }],
      ],
      "metrics",
    ),
  ]);
}

function renderCard(result) {
  const details = Object.entries(result.details || {});
  return el("article", { className: "result-card", "data-writer": result.writer, "data-status": result.status }, [
    el("div", { className: "result-card-head" }, [el("h4", { text: result.label || result.writer }), badge(result.status)]),
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
          details.map(([key, value]) => [humanKey(key), el("code", { text: formatDetail(value) }), { "data-detail": key }]),
          "details",
        )
      : null,
    result.error
      ? el("p", { className: "result-error", role: "note" }, [
          el("strong", { text: result.error.kind === "unavailable" ? "Unavailable: " : "Failed: " }),
          result.error.message,
        ])
      : null,
  ]);
}

// ---------------------------------------------------------------------------------------
// Start

async function loadCategories() {
  const { ok, status, body } = await requestJson("api/v1/categories");
  if (ok && Array.isArray(body)) {
    CATEGORIES = body.map(String);
  } else {
    showAlert("The product categories could not be loaded", [errorMessage(status, body)]);
  }
}

async function start() {
  window.addEventListener("hashchange", showView);
  showView();
  ui.refreshWriters.addEventListener("click", loadWriters);
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
  ui.writeForm.addEventListener("submit", submitWrite);
  loadWriters();
  await loadCategories();
  addRows([EXAMPLE_ITEM], { replace: true });
}

start();
