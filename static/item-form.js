// Direct Write Bench: a workload's item form, derived from its input schema (the JSON Schema of
// one item that GET /api/v1/workloads gives): one field per property, its control from the
// property's type and format, required ones marked, nullable ones empty = null.

// How the seed app's products form looked: its labels, the price step, the category choice
// (the server's known categories, or free text) and its example's description. Any other
// workload is drawn from its schema alone.
const PRESENTATION = {
  products: {
    heading: "Products",
    labels: {
      product_id: "Product ID",
      product_name: "Name",
      product_price: "Price",
      category: "Category",
      sale_start_date: "Sale start",
      sale_stop_date: "Sale stop",
      description: "Description",
    },
    steps: { product_price: "0.01" },
    suggestions: { category: "api/v1/categories" },
    examples: { description: "Fitness tracking, GPS, 7-day battery" },
    showTypes: false,
  },
};
export const CUSTOM_CHOICE = "__custom__";
// A text field this long or unbounded gets a whole line in the phone layout.
const WIDE_TEXT = 64;

function presentationOf(workload) {
  return (workload.builtin && PRESENTATION[workload.name]) || {};
}

export function formHeading(workload) {
  return presentationOf(workload).heading || workload.name;
}

/** The suggestion lists a form needs: {field: url}. */
export function suggestionSources(workload) {
  return { ...(presentationOf(workload).suggestions || {}) };
}

function lookup(root, ref) {
  // Only local references ("#/$defs/Name") occur in the schemas pydantic writes.
  if (typeof ref !== "string" || !ref.startsWith("#/")) return {};
  let node = root;
  for (const part of ref.slice(2).split("/")) node = node && typeof node === "object" ? node[part] : undefined;
  return node && typeof node === "object" ? node : {};
}

/** A property's non-null variants and whether null is allowed. */
function variants(root, prop) {
  let list = [prop];
  let nullable = false;
  if (Array.isArray(prop.anyOf) || Array.isArray(prop.oneOf)) {
    const all = prop.anyOf || prop.oneOf;
    list = all.filter((v) => v.type !== "null");
    nullable = list.length < all.length;
  }
  list = list.map((v) => (v.$ref ? { ...lookup(root, v.$ref), ...v } : v));
  const expanded = [];
  for (const v of list) {
    if (Array.isArray(v.type)) {
      if (v.type.includes("null")) nullable = true;
      for (const type of v.type.filter((t) => t !== "null")) expanded.push({ ...v, type });
    } else {
      expanded.push(v);
    }
  }
  return { list: expanded, nullable };
}

function kindOf(list) {
  const types = new Set(list.map((v) => v.type));
  if (types.has("number") && types.has("string")) return "decimal"; // exact digits as text
  if (list.length !== 1) return "json";
  const [v] = list;
  switch (v.type) {
    case "string":
      if (v.format === "date") return "date";
      if (v.format === "date-time") return "datetime";
      return "text";
    case "number":
      return "number";
    case "integer":
      return "integer";
    case "boolean":
      return "boolean";
    default:
      return "json"; // arrays, maps, structs, anything else
  }
}

/** One spec per input property, in the schema's order. */
export function fieldSpecs(workload) {
  const root = workload.input_schema || {};
  const props = root.properties || {};
  const required = new Set(root.required || []);
  const columns = new Map((workload.columns || []).map((column) => [column.name, column]));
  const shown = presentationOf(workload);
  const suggestions = shown.suggestions || {};
  return Object.entries(props).map(([name, prop]) => {
    const { list, nullable } = variants(root, prop);
    const column = columns.get(name) || {};
    const sqlType = String(column.type || "");
    let kind = kindOf(list);
    if (suggestions[name] && kind === "text") kind = "suggest";
    if (kind === "boolean" && nullable) kind = "tristate";
    const first = list[0] || {};
    const examples = prop.examples || first.examples;
    return {
      name,
      label: (shown.labels && shown.labels[name]) || name,
      kind,
      sqlType,
      showType: shown.showTypes !== false && Boolean(sqlType),
      required: required.has(name),
      nullable,
      comment: column.comment || prop.description || null,
      maxLength: typeof first.maxLength === "number" ? first.maxLength : null,
      step: (shown.steps && shown.steps[name]) || null,
      // TIMESTAMP is an instant (shown and sent in UTC); TIMESTAMP_NTZ is wall-clock time.
      utc: kind === "datetime" && !/NTZ/i.test(sqlType),
      base64: first.format === "base64",
      example: Array.isArray(examples) && examples.length ? examples[0] : (shown.examples || {})[name],
      wide:
        kind === "json" ||
        kind === "suggest" ||
        (kind === "text" && (first.maxLength === undefined || first.maxLength > WIDE_TEXT)),
    };
  });
}

/** The item the schema's examples describe (the form's first row), or null if it has none. */
export function exampleItem(specs) {
  if (!specs.some((spec) => spec.example !== undefined && spec.example !== null)) return null;
  return Object.fromEntries(specs.map((spec) => [spec.name, spec.example ?? null]));
}

// ---------------------------------------------------------------------------------------
// Controls

function element(tag, attrs = {}) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  return node;
}

/** The controls of a field: the first is its value; a second may follow (free text). */
export function createControls(spec, choices = []) {
  const common = { name: spec.name, "aria-required": spec.required ? "true" : null };
  switch (spec.kind) {
    case "number":
      return [element("input", { ...common, type: "number", step: spec.step || "any", inputmode: "decimal" })];
    case "integer":
      return [element("input", { ...common, type: "number", step: "1", inputmode: "numeric" })];
    case "decimal":
      return [element("input", { ...common, type: "text", inputmode: "decimal", autocomplete: "off", spellcheck: "false" })];
    case "date":
      return [element("input", { ...common, type: "date" })];
    case "datetime":
      return [element("input", { ...common, type: "datetime-local", step: "any" })];
    case "boolean":
      return [element("input", { ...common, type: "checkbox" })];
    case "tristate": {
      const select = element("select", common);
      for (const [value, text] of [
        ["", "— (null)"],
        ["true", "true"],
        ["false", "false"],
      ]) {
        const option = element("option", { value });
        option.textContent = text;
        select.append(option);
      }
      return [select];
    }
    case "json":
      return [
        element("textarea", { ...common, rows: "2", spellcheck: "false", autocomplete: "off", placeholder: "JSON" }),
      ];
    case "suggest": {
      const select = element("select", common);
      for (const choice of choices) {
        const option = element("option", { value: choice });
        option.textContent = choice;
        select.append(option);
      }
      const custom = element("option", { value: CUSTOM_CHOICE });
      custom.textContent = "Custom (free text)…";
      select.append(custom);
      const text = element("input", {
        type: "text",
        name: `${spec.name}_custom`,
        class: "custom-choice",
        maxlength: spec.maxLength,
        autocomplete: "off",
        hidden: true,
      });
      return [select, text];
    }
    default:
      return [
        element("input", {
          ...common,
          type: "text",
          maxlength: spec.maxLength,
          autocomplete: "off",
          spellcheck: spec.base64 ? "false" : null,
        }),
      ];
  }
}

/** "2026-12-01T21:16:09.714599Z" as a datetime-local value (UTC, milliseconds). */
function localDateTime(text, utc) {
  const value = String(text);
  if (utc && /([zZ]|[+-]\d\d:?\d\d)$/.test(value)) {
    const date = new Date(value);
    if (!Number.isNaN(date.getTime())) return date.toISOString().slice(0, 23);
  }
  const match = /^(\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d)?)(\.\d{1,3})?/.exec(value);
  return match ? match[1] + (match[2] || "") : "";
}

/** Puts `value` into a field's controls (`choices`: a suggestion field's known values). */
export function fillControls(spec, controls, value, choices = []) {
  const [control, extra] = controls;
  const empty = value === null || value === undefined;
  delete control.dataset.original;
  switch (spec.kind) {
    case "boolean":
      control.checked = value === true;
      return;
    case "tristate":
      control.value = empty ? "" : String(Boolean(value));
      return;
    case "json":
      control.value = empty ? "" : JSON.stringify(value);
      return;
    case "datetime": {
      control.value = empty ? "" : localDateTime(value, spec.utc);
      // Shown to the millisecond; sent as given (microseconds) unless edited.
      if (!empty && control.value) {
        control.dataset.original = String(value);
        control.dataset.shown = control.value;
      }
      return;
    }
    case "suggest": {
      const text = empty ? choices[0] || "" : String(value);
      const known = choices.includes(text.toLowerCase());
      control.value = known ? text.toLowerCase() : CUSTOM_CHOICE;
      extra.value = known ? "" : text;
      return;
    }
    default:
      control.value = empty ? "" : rawText(value);
  }
}

/** A value as text; an exact integer kept as raw JSON (see exactIntegers) as its digits. */
function rawText(value) {
  return typeof JSON.isRawJSON === "function" && JSON.isRawJSON(value) ? value.rawJSON : String(value);
}

/** {value} read from a field's controls, or {error} when it cannot be sent as it is. */
export function readControls(spec, controls) {
  const [control, extra] = controls;
  const text = control.value;
  const blank = text.trim() === "";
  const orNull = (value) => ({ value: blank ? null : value });
  switch (spec.kind) {
    case "number":
      // An empty or unreadable number is sent as null so the server says what is wrong.
      return { value: blank || Number.isNaN(Number(text)) ? null : Number(text) };
    case "integer": {
      if (blank || Number.isNaN(Number(text))) return { value: null };
      const number = Number(text);
      const digits = text.trim();
      // A BIGINT past 2**53 is sent digit for digit (a JS number would round it).
      if (!Number.isSafeInteger(number) && /^-?\d+$/.test(digits) && typeof JSON.rawJSON === "function") {
        return { value: JSON.rawJSON(digits) };
      }
      return { value: number };
    }
    case "decimal":
      return orNull(text.trim());
    case "date":
      return orNull(text);
    case "datetime":
      if (blank) return { value: null };
      if (control.dataset.original && text === control.dataset.shown) return { value: control.dataset.original };
      return { value: spec.utc ? `${text}Z` : text };
    case "boolean":
      return { value: control.checked };
    case "tristate":
      return { value: blank ? null : text === "true" };
    case "json":
      if (blank) return { value: null };
      try {
        return { value: JSON.parse(text) };
      } catch (error) {
        return { error: `not valid JSON: ${error.message}` };
      }
    case "suggest":
      return { value: text === CUSTOM_CHOICE ? extra.value : text };
    default:
      // An empty optional text is null; an empty required one is sent for the server to judge.
      return { value: blank && spec.nullable && !spec.required ? null : text };
  }
}

/** What a field takes, for the column header: its Delta type and whether UTC. */
export function typeNote(spec) {
  if (!spec.showType) return "";
  return spec.utc ? `${spec.sqlType}, UTC` : spec.sqlType;
}
