// Direct Write Bench: what the server offers — its workloads and its writers — for both views.
// The UI names no writer and no schema of its own: every list comes from here.

import { errorMessage, exactIntegers, postJson, requestJson } from "./http.js";

const WORKLOADS_URL = "api/v1/workloads";
// For writers the registry gives no colour: distinct on white and for common colour-vision
// deficiencies.
const SPARE_COLORS = ["#7c3aed", "#be123c", "#0e7490", "#a16207", "#1d4ed8", "#047857"];

let workloads = [];
let loaded = false;
let loading = null;
const listeners = new Set();

/** Calls `listener(workloads, {added})` whenever the list is (re)loaded, and at once when it
 * is loaded already: a view that starts after the first load still gets the list. */
export function onWorkloads(listener) {
  listeners.add(listener);
  if (loaded) listener(workloads, { added: null });
}

export function currentWorkloads() {
  return workloads;
}

export function findWorkload(name) {
  return workloads.find((workload) => workload.name === name) || null;
}

/** GET /api/v1/workloads, once (or again with refresh); rejects with a readable Error. */
export function loadWorkloads({ refresh = false, added = null } = {}) {
  if (loading && !refresh) return loading;
  loading = requestJson(WORKLOADS_URL).then(({ ok, status, body }) => {
    if (!ok || !Array.isArray(body)) throw new Error(errorMessage(status, body));
    workloads = body;
    loaded = true;
    for (const listener of listeners) listener(workloads, { added });
    return workloads;
  });
  loading.catch(() => {
    loading = null; // the next call tries again
  });
  return loading;
}

/** POST /api/v1/workloads; on success the list is reloaded with the new one in it. */
export async function registerWorkload(request) {
  const answer = await postJson(WORKLOADS_URL, request);
  if (answer.ok && answer.body && typeof answer.body.name === "string") {
    await loadWorkloads({ refresh: true, added: answer.body.name });
  }
  return answer;
}

/** Generated items of a workload, in the JSON forms its input schema takes. */
export async function sampleItems(name, count, seed) {
  const query = new URLSearchParams({ count: String(count), seed: String(seed) });
  const url = `${WORKLOADS_URL}/${encodeURIComponent(name)}/sample-items?${query}`;
  const { ok, status, body } = await requestJson(url, { reviver: exactIntegers });
  if (!ok || !Array.isArray(body)) throw new Error(errorMessage(status, body));
  return body;
}

/** GET /api/v1/writers (with the harness baseline if asked); rejects with a readable Error. */
export async function fetchWriters({ baseline = false } = {}) {
  const { ok, status, body } = await requestJson(baseline ? "api/v1/writers?baseline=true" : "api/v1/writers");
  if (!ok || !Array.isArray(body)) throw new Error(errorMessage(status, body));
  return body;
}

/** A writer's colour: the registry's, else a spare one by its place in the list. */
export function writerColor(writer, index) {
  if (writer && typeof writer.color === "string" && /^#[0-9a-fA-F]{3,8}$/.test(writer.color)) return writer.color;
  return SPARE_COLORS[Math.max(0, index) % SPARE_COLORS.length];
}

export function writerLabel(writer, name) {
  return (writer && writer.label) || String(name ?? (writer && writer.name) ?? "");
}
