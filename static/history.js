// Direct Write Bench: what a stored run offers besides comparing — its report to share (HTML
// or Markdown), its label (renamed in place), its removal, and a permalink (#run=<id>) that
// opens it when the page loads or the address changes. bench.js draws the history rows and
// calls the helpers below for these cells; installHistory wires them up.

import { badge, el } from "./app.js";
import { errorMessage, requestJson } from "./http.js";

const API = "api/v1/benchmarks";
const LABEL_MAX = 200; // bench.store.LABEL_MAX
const PERMALINK = /^#run=(.+)$/;

let hooks = { reload: async () => {}, open: async () => {} };

function status(text) {
  const node = document.getElementById("bench-history-status");
  if (node) node.textContent = text;
}

function runUrl(id) {
  return `${API}/${encodeURIComponent(id)}`;
}

/** The report links of a finished run: the HTML page and the Markdown summary. */
export function reportLinks(id) {
  const base = `${runUrl(id)}/report`;
  return [
    el(
      "a",
      {
        className: "button button-quiet",
        href: `${base}?format=html`,
        download: true,
        "data-download": "report",
        "aria-label": `Download the report of run ${id} (HTML)`,
      },
      ["Download report"],
    ),
    el(
      "a",
      {
        className: "button button-quiet",
        href: `${base}?format=md`,
        download: true,
        "data-download": "markdown",
        "aria-label": `Download the report of run ${id} as Markdown`,
      },
      ["Markdown"],
    ),
  ];
}

/** The permalink of a run: this page, opened on that run. */
export function permalink(id) {
  return `#run=${encodeURIComponent(id)}`;
}

/** The history's Mode cell: local (the local stack's stand-ins) or databricks. */
export function modeCell(run) {
  const mode = typeof run.mode === "string" && run.mode ? run.mode : "unknown";
  return el("td", { "data-cell": "mode", "data-mode": mode }, [badge(mode)]);
}

/** The run's label with a Rename button (not for a run still going on). */
export function labelControl(run) {
  const id = String(run.id);
  const label = typeof run.label === "string" ? run.label : "";
  return el("span", { className: "run-label block", "data-label-for": id }, [
    el("span", { className: "label-text", "data-label": label, text: label }),
    run.status === "running"
      ? null
      : el("button", {
          type: "button",
          className: "button button-quiet button-small",
          "data-rename": id,
          "aria-label": `Rename run ${id}`,
          text: label ? "Rename" : "Add label",
        }),
  ]);
}

/** The row's own actions: its permalink and Delete (not for a run still going on). */
export function rowActions(run) {
  const id = String(run.id);
  if (run.status === "running") return [];
  return [
    el("a", {
      className: "button button-quiet",
      href: permalink(id),
      "data-permalink": id,
      "aria-label": `Link to run ${id}`,
      text: "Link",
    }),
    el("button", {
      type: "button",
      className: "button button-quiet",
      "data-delete": id,
      "aria-label": `Delete run ${id}`,
      text: "Delete",
    }),
  ];
}

function renameForm(id, current) {
  const inputId = `bench-label-${id.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  return el("form", { className: "rename-form", "data-rename-form": id }, [
    el("label", { for: inputId, className: "visually-hidden", text: `Label of run ${id}` }),
    el("input", {
      type: "text",
      id: inputId,
      name: "label",
      maxlength: String(LABEL_MAX),
      value: current,
      placeholder: "a name for this run",
    }),
    el("button", { type: "submit", className: "button button-secondary button-small", text: "Save" }),
    el("button", { type: "button", className: "button button-quiet button-small", "data-rename-cancel": id, text: "Cancel" }),
  ]);
}

function startRename(button) {
  const id = button.dataset.rename;
  const holder = button.closest("[data-label-for]");
  const current = holder.querySelector(".label-text").dataset.label || "";
  const form = renameForm(id, current);
  holder.replaceWith(form);
  const input = form.querySelector("input");
  input.focus();
  input.select();
}

async function saveRename(form) {
  const id = form.dataset.renameForm;
  const label = form.querySelector("input").value;
  for (const control of form.elements) control.disabled = true;
  const { ok, status: code, body } = await requestJson(runUrl(id), {
    method: "PATCH",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ label }),
  });
  if (!ok) {
    for (const control of form.elements) control.disabled = false;
    status(`Could not rename run ${id}: ${errorMessage(code, body)}`);
    return;
  }
  status(body.label ? `Run ${id} is now labelled “${body.label}”.` : `Run ${id} has no label now.`);
  await hooks.reload();
}

async function deleteRun(button) {
  const id = button.dataset.delete;
  if (!window.confirm(`Delete run ${id}? Its result file and CSV are removed for good.`)) return;
  button.disabled = true;
  const { ok, status: code, body } = await requestJson(runUrl(id), { method: "DELETE" });
  if (!ok) {
    button.disabled = false;
    status(`Could not delete run ${id}: ${errorMessage(code, body)}`);
    return;
  }
  const shown = document.getElementById("bench-result");
  if (shown && shown.dataset.runId === id) shown.hidden = true;
  status(`Deleted run ${id}.`);
  await hooks.reload();
}

function onClick(event) {
  const rename = event.target.closest("button[data-rename]");
  if (rename) return startRename(rename);
  const cancel = event.target.closest("button[data-rename-cancel]");
  if (cancel) return hooks.reload();
  const remove = event.target.closest("button[data-delete]");
  if (remove) return deleteRun(remove);
  return undefined;
}

function onSubmit(event) {
  const form = event.target.closest("form[data-rename-form]");
  if (!form) return;
  event.preventDefault();
  saveRename(form);
}

/** The run a #run=<id> address names, or null. */
export function permalinkRun(hash = location.hash) {
  const match = PERMALINK.exec(hash);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

function openFromAddress() {
  const id = permalinkRun();
  if (id) hooks.open(id);
}

/** Wires the history's rename and delete controls and the permalinks: `reload` redraws the
 * history, `open(id)` shows a run's result. Opens the run the address names, if any. */
export function installHistory({ rows, reload, open }) {
  hooks = { reload, open };
  rows.addEventListener("click", onClick);
  rows.addEventListener("submit", onSubmit);
  window.addEventListener("hashchange", openFromAddress);
  openFromAddress();
}
