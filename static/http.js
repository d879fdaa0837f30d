// Direct Write Bench: HTTP helpers shared by the views. JSON in, {ok, status, body} out.

/** fetch + JSON: resolves to {ok, status, body}; body is parsed JSON (through `reviver` if
 * given) or the response text. */
export async function requestJson(url, { reviver, ...options } = {}) {
  const response = await fetch(url, {
    ...options,
    headers: { Accept: "application/json", ...(options.headers || {}) },
  });
  const text = await response.text();
  let body = text;
  if ((response.headers.get("content-type") || "").includes("json") && text) {
    try {
      body = JSON.parse(text, reviver);
    } catch {
      body = text;
    }
  }
  return { ok: response.ok, status: response.status, body };
}

/** POST a JSON body. */
export function postJson(url, payload) {
  return requestJson(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(payload),
  });
}

export function cleanMessage(message) {
  return String(message || "invalid value").replace(/^Value error, /, "");
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

/** A JSON.parse reviver that keeps integers past 2**53 exact (as raw JSON, which
 * JSON.stringify writes back digit for digit) where the browser can. */
export function exactIntegers(key, value, context) {
  if (
    typeof value === "number" &&
    !Number.isSafeInteger(value) &&
    context &&
    typeof context.source === "string" &&
    /^-?\d+$/.test(context.source) &&
    typeof JSON.rawJSON === "function"
  ) {
    return JSON.rawJSON(context.source);
  }
  return value;
}
