// Direct Write Bench: the Live map view. Drivers and their orders move over the synthetic
// city's streets (GeoJSON from /api/v1/pipeline/city, no tile server), fed by the
// WebSocket /ws/fleet of the chosen serving path; the side panel shows the run's counters
// and the freshness of every hop. Leaflet (static/vendor/leaflet, the global L) draws the map.
//
// The socket sends a snapshot first (after every reconnect too), then changes; the page
// answers each change with when it received it (the server pairs that with the event times
// it sent: the "browser" hop) and each ping with its clock, so the server can correct for
// the browser's clock offset.

import { errorMessage, postJson, requestJson } from "./http.js";

const STATUS_STYLE = {
  idle: { label: "Idle", color: "#64748b" },
  to_restaurant: { label: "To restaurant", color: "#2563eb" },
  at_restaurant: { label: "At restaurant", color: "#d97706" },
  picked_up: { label: "Picked up", color: "#7c3aed" },
  to_customer: { label: "To customer", color: "#059669" },
  delivered: { label: "Delivered", color: "#db2777" },
};
const UNKNOWN_STYLE = { label: "Other", color: "#0f172a" };
// Hops in the order an event passes them, per path (a hop the server adds is shown after
// them), and how the panel names them. The real-time writer is fed from the fleet's
// acknowledged batches, so its path has no bronze hop.
const HOPS = {
  realtime: ["ack", "postgres", "ws_sent", "browser"],
  synced: ["ack", "bronze", "silver", "postgres", "ws_sent", "browser"],
};
const HOP_LABEL = {
  ack: "Zerobus ack",
  bronze: "In bronze",
  silver: "In silver (CDF)",
  postgres: "In Postgres",
  ws_sent: "Sent (WebSocket)",
  browser: "In this browser",
};
const PATH_LABEL = { realtime: "real-time", synced: "synced table" };
const ACTIVE_ORDER = new Set(["to_restaurant", "at_restaurant", "picked_up", "to_customer"]);
const ORDERS_SHOWN = 40;

const ui = {};
const state = {
  map: null,
  streets: null,
  markers: new Map(), // driver_id -> L.circleMarker
  drivers: new Map(), // driver_id -> DRIVER
  path: "realtime",
  socket: null,
  retryMs: 500,
  retryTimer: null,
  wanted: false, // the view is shown: keep a socket open
  lastStatus: null,
  dirty: false,
};

function $(id) {
  return document.getElementById(id);
}

function styleOf(status) {
  return STATUS_STYLE[status] || UNKNOWN_STYLE;
}

function formatCount(value) {
  return typeof value === "number" ? value.toLocaleString("en-US") : "–";
}

function formatMs(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  if (value >= 10_000) return `${(value / 1000).toFixed(1)} s`;
  if (value >= 100) return `${Math.round(value)} ms`;
  return `${value.toFixed(1)} ms`;
}

/** Milliseconds as a bare number for the table (its caption gives the unit). */
function formatMsNumber(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return value >= 100 ? Math.round(value).toLocaleString("en-US") : value.toFixed(1);
}

// ---------------------------------------------------------------------------------------
// The map

async function ensureMap() {
  if (state.map) {
    state.map.invalidateSize();
    return;
  }
  state.map = L.map(ui.map, {
    zoomSnap: 0.25,
    preferCanvas: false,
    attributionControl: false,
    worldCopyJump: false,
  });
  // The streets in a pane of their own under the markers' (Leaflet's overlay pane is 400):
  // markers may be drawn before the city has arrived.
  state.map.createPane("streets").style.zIndex = "350";
  L.control.scale({ imperial: false, position: "bottomright" }).addTo(state.map);
  const { ok, status, body } = await requestJson("api/v1/pipeline/city");
  if (!ok) {
    ui.connection.textContent = `The city map could not be read: ${errorMessage(status, body)}`;
    return;
  }
  state.streets = L.geoJSON(body, {
    pane: "streets",
    interactive: false,
    style: (feature) => ({
      color: feature.properties.major ? "#94a3b8" : "#cbd5e1",
      weight: feature.properties.major ? 4 : 2,
      opacity: 1,
    }),
  }).addTo(state.map);
  const [west, south, east, north] = body.bbox;
  state.map.fitBounds(
    [
      [south, west],
      [north, east],
    ],
    { padding: [12, 12] },
  );
  for (const driver of state.drivers.values()) placeDriver(driver);
}

function tooltipText(driver) {
  const style = styleOf(driver.status);
  const order = driver.order_id ? ` · order ${driver.order_id}` : "";
  const speed = typeof driver.speed_mps === "number" ? ` · ${driver.speed_mps.toFixed(1)} m/s` : "";
  return `${driver.driver_id} — ${style.label}${order}${speed}`;
}

function placeDriver(driver) {
  if (!state.map) return;
  const style = styleOf(driver.status);
  let marker = state.markers.get(driver.driver_id);
  if (!marker) {
    marker = L.circleMarker([driver.lat, driver.lon], {
      radius: 6,
      weight: 2,
      color: "#ffffff",
      fillColor: style.color,
      fillOpacity: 0.95,
      className: "ops-driver",
    })
      .bindTooltip("", { direction: "top", className: "ops-driver-label" })
      .addTo(state.map);
    state.markers.set(driver.driver_id, marker);
  } else {
    marker.setLatLng([driver.lat, driver.lon]);
    if (marker.options.fillColor !== style.color) marker.setStyle({ fillColor: style.color });
  }
  marker.getElement()?.setAttribute("data-driver-id", driver.driver_id);
  marker.getElement()?.setAttribute("data-status", driver.status);
  marker.setTooltipContent(tooltipText(driver));
}

function clearDrivers() {
  for (const marker of state.markers.values()) marker.remove();
  state.markers.clear();
  state.drivers.clear();
}

function applyDrivers(drivers) {
  for (const driver of drivers) {
    const known = state.drivers.get(driver.driver_id);
    // A change older than what is shown (a reordered or replayed message) is not applied.
    if (known && known.event_time_us > driver.event_time_us) continue;
    state.drivers.set(driver.driver_id, driver);
    placeDriver(driver);
  }
  state.dirty = true;
}

// ---------------------------------------------------------------------------------------
// The side panel

function renderFleet() {
  if (!state.dirty) return;
  state.dirty = false;
  const counts = new Map();
  const orders = [];
  for (const driver of state.drivers.values()) {
    counts.set(driver.status, (counts.get(driver.status) || 0) + 1);
    if (driver.order_id && ACTIVE_ORDER.has(driver.status)) orders.push(driver);
  }
  ui.kpiDrivers.textContent = formatCount(state.drivers.size);
  ui.kpiOrders.textContent = formatCount(orders.length);
  for (const [status, item] of ui.legendItems) {
    item.querySelector(".ops-count").textContent = formatCount(counts.get(status) || 0);
  }
  orders.sort((a, b) => String(a.order_id).localeCompare(String(b.order_id)));
  const items = orders.slice(0, ORDERS_SHOWN).map((driver) => {
    const li = document.createElement("li");
    const order = document.createElement("code");
    order.textContent = driver.order_id;
    const who = document.createElement("span");
    who.textContent = `${driver.driver_id} · ${styleOf(driver.status).label}`;
    li.append(order, who);
    return li;
  });
  if (orders.length > ORDERS_SHOWN) {
    const more = document.createElement("li");
    more.className = "muted small";
    more.textContent = `and ${formatCount(orders.length - ORDERS_SHOWN)} more`;
    items.push(more);
  }
  if (!items.length) {
    const none = document.createElement("li");
    none.className = "muted small";
    none.textContent = "None on the road.";
    items.push(none);
  }
  ui.orders.replaceChildren(...items);
}

function renderLegend() {
  ui.legendItems = new Map();
  const items = Object.entries(STATUS_STYLE).map(([status, style]) => {
    const li = document.createElement("li");
    li.dataset.status = status;
    const dot = document.createElement("span");
    dot.className = "ops-dot";
    dot.style.background = style.color;
    const label = document.createElement("span");
    label.textContent = style.label;
    const count = document.createElement("span");
    count.className = "ops-count";
    count.textContent = "0";
    li.append(dot, label, count);
    ui.legendItems.set(status, li);
    return li;
  });
  ui.legend.replaceChildren(...items);
}

function renderStatus(status) {
  state.lastStatus = status;
  const running = status && (status.status === "running" || status.status === "stopping");
  ui.start.hidden = Boolean(running);
  ui.stop.hidden = !running;
  ui.stop.disabled = status?.status === "stopping";
  if (!status) {
    ui.runStatus.textContent = "No run yet: start the fleet.";
    return;
  }
  const paths = status.paths || {};
  ui.kpiProduced.textContent = formatCount(status.events_produced);
  ui.kpiAcked.textContent = formatCount(status.events_acked);
  ui.kpiPostgres.textContent = formatCount(paths[state.path]?.rows_in_postgres);
  const bad = Object.values(status.bad_events || {}).reduce((a, b) => a + b, 0);
  ui.kpiBad.textContent = formatCount(bad);
  ui.kpiBad.title = Object.entries(status.bad_events || {})
    .map(([kind, n]) => `${kind}: ${n}`)
    .join(", ");
  const config = status.config || {};
  const elapsed = typeof status.elapsed_s === "number" ? `${status.elapsed_s.toFixed(0)} s` : "";
  let text = `Run ${status.id}: ${status.status}${elapsed ? `, ${elapsed}` : ""}`;
  if (config.drivers) text += ` · ${formatCount(config.drivers)} drivers at ${formatCount(config.rate)} events/s`;
  if (status.error) text += ` — ${status.error}`;
  ui.runStatus.textContent = text;
  renderFreshness(status.freshness || {});
}

function renderFreshness(freshness) {
  const hops = freshness[state.path] || {};
  const order = [...HOPS[state.path], ...Object.keys(hops).filter((h) => !HOPS[state.path].includes(h))];
  ui.freshPath.textContent = `· ${PATH_LABEL[state.path]}`;
  const scale = Math.max(1, ...order.map((hop) => hops[hop]?.p95 || 0));
  const bars = [];
  const rows = [];
  for (const hop of order) {
    const figures = hops[hop];
    const li = document.createElement("li");
    li.dataset.hop = hop;
    const name = document.createElement("span");
    name.textContent = HOP_LABEL[hop] || hop;
    const track = document.createElement("span");
    track.className = "ops-bar-track";
    const fill = document.createElement("span");
    fill.className = "ops-bar-fill";
    fill.style.width = `${((figures?.p95 || 0) / scale) * 100}%`;
    track.append(fill);
    if (figures?.count) {
      const tick = document.createElement("span");
      tick.className = "ops-bar-p50";
      tick.style.left = `${(figures.p50 / scale) * 100}%`;
      track.append(tick);
    }
    const ms = document.createElement("span");
    ms.className = "ops-ms";
    ms.textContent = figures?.count ? formatMs(figures.p95) : "–";
    li.append(name, track, ms);
    bars.push(li);

    const tr = document.createElement("tr");
    tr.dataset.hop = hop;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = HOP_LABEL[hop] || hop;
    tr.append(th);
    for (const key of ["p50", "p95", "p99", "max"]) {
      const td = document.createElement("td");
      td.textContent = figures?.count ? formatMsNumber(figures[key]) : "–";
      tr.append(td);
    }
    const n = document.createElement("td");
    n.textContent = formatCount(figures?.count || 0);
    tr.append(n);
    rows.push(tr);
  }
  ui.waterfall.replaceChildren(...bars);
  ui.freshRows.replaceChildren(...rows);
  const other = state.path === "realtime" ? "synced" : "realtime";
  const otherPg = freshness[other]?.postgres;
  const interval = state.lastStatus?.config?.sync_interval_s;
  const intervalText = other === "synced" && interval ? ` (sync every ${interval} s)` : "";
  ui.freshOther.textContent = otherPg?.count
    ? `The ${PATH_LABEL[other]} path${intervalText}: in Postgres at p95 ${formatMs(otherPg.p95)} after the event.`
    : "";
}

// ---------------------------------------------------------------------------------------
// The socket

function setConnection(stateName, text) {
  ui.connection.dataset.state = stateName;
  ui.connection.textContent = text;
}

function socketUrl() {
  const url = new URL(`ws/fleet?path=${state.path}`, document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function connect() {
  clearTimeout(state.retryTimer);
  if (!state.wanted || state.socket) return;
  const socket = new WebSocket(socketUrl());
  state.socket = socket;
  socket.addEventListener("open", () => {
    state.retryMs = 500;
    setConnection("live", `Live · ${PATH_LABEL[state.path]}`);
  });
  socket.addEventListener("message", (event) => onMessage(socket, event));
  socket.addEventListener("close", () => {
    if (state.socket !== socket) return; // replaced on purpose
    state.socket = null;
    if (!state.wanted) {
      setConnection("idle", "Not connected");
      return;
    }
    setConnection("reconnecting", `Reconnecting in ${(state.retryMs / 1000).toFixed(1)} s…`);
    state.retryTimer = setTimeout(connect, state.retryMs);
    state.retryMs = Math.min(5000, state.retryMs * 2);
  });
}

function disconnect() {
  clearTimeout(state.retryTimer);
  const socket = state.socket;
  state.socket = null;
  if (socket) socket.close();
}

function send(socket, message) {
  if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

function onMessage(socket, event) {
  let message;
  try {
    message = JSON.parse(event.data);
  } catch {
    return; // not ours to interpret
  }
  if (message.path && message.path !== state.path) return; // a socket of the other path
  if (message.type === "snapshot") {
    clearDrivers();
    applyDrivers(message.drivers || []);
  } else if (message.type === "changes") {
    const drivers = message.drivers || [];
    applyDrivers(drivers);
    send(socket, {
      type: "received",
      sent_us: message.sent_us,
      received_us: Date.now() * 1000,
    });
  } else if (message.type === "status") {
    renderStatus(message);
  } else if (message.type === "ping") {
    send(socket, { type: "pong", server_us: message.server_us, client_us: Date.now() * 1000 });
  }
}

// ---------------------------------------------------------------------------------------
// Runs

async function loadCurrentRun() {
  const { ok, status, body } = await requestJson("api/v1/pipeline/runs/current");
  if (ok) renderStatus(body);
  else if (status === 404) renderStatus(null);
  else ui.runStatus.textContent = `The run could not be read: ${errorMessage(status, body)}`;
}

function showRunError(text) {
  ui.runError.textContent = text;
  ui.runError.hidden = !text;
}

async function startRun(event) {
  event.preventDefault();
  showRunError("");
  const form = new FormData(ui.form);
  const payload = {};
  for (const key of ["drivers", "rate", "duration_s", "sync_interval_s"]) {
    const value = Number(form.get(key));
    if (!Number.isFinite(value) || form.get(key) === "") {
      showRunError(`${key.replace("_s", "")} must be a number`);
      return;
    }
    payload[key] = value;
  }
  ui.start.disabled = true;
  try {
    const { ok, status, body } = await postJson("api/v1/pipeline/runs", payload);
    if (!ok) {
      showRunError(errorMessage(status, body));
      return;
    }
    renderStatus(body);
  } finally {
    ui.start.disabled = false;
  }
}

async function stopRun() {
  ui.stop.disabled = true;
  const { ok, status, body } = await postJson("api/v1/pipeline/runs/current/stop", {});
  if (ok) renderStatus(body);
  else showRunError(errorMessage(status, body));
}

// ---------------------------------------------------------------------------------------
// The view

function onViewChange() {
  const shown = !ui.view.hidden;
  if (shown === state.wanted) return;
  state.wanted = shown;
  if (shown) {
    ensureMap().then(() => {
      for (const driver of state.drivers.values()) placeDriver(driver);
    });
    loadCurrentRun();
    connect();
  } else {
    disconnect();
  }
}

function onPathChange(event) {
  state.path = event.target.value;
  clearDrivers();
  state.dirty = true;
  renderFleet();
  if (state.lastStatus) renderStatus(state.lastStatus);
  disconnect();
  setConnection("reconnecting", `Connecting · ${PATH_LABEL[state.path]}…`);
  connect();
}

function init() {
  ui.view = $("view-map");
  if (!ui.view || typeof L === "undefined") return;
  Object.assign(ui, {
    map: $("ops-map"),
    legend: $("ops-legend"),
    connection: $("ops-connection"),
    form: $("ops-run-form"),
    start: $("ops-start"),
    stop: $("ops-stop"),
    runError: $("ops-run-error"),
    runStatus: $("ops-run-status"),
    kpiDrivers: $("kpi-drivers"),
    kpiOrders: $("kpi-orders"),
    kpiProduced: $("kpi-produced"),
    kpiAcked: $("kpi-acked"),
    kpiPostgres: $("kpi-postgres"),
    kpiBad: $("kpi-bad"),
    waterfall: $("ops-waterfall"),
    freshRows: $("ops-fresh-rows"),
    freshPath: $("ops-fresh-path"),
    freshOther: $("ops-fresh-other"),
    orders: $("ops-orders"),
  });
  renderLegend();
  renderFreshness({});
  ui.form.addEventListener("submit", startRun);
  ui.stop.addEventListener("click", stopRun);
  for (const radio of document.querySelectorAll('input[name="ops-path"]')) {
    radio.addEventListener("change", onPathChange);
  }
  // app.js shows and hides the views on hashchange; watch the panel's hidden attribute.
  new MutationObserver(onViewChange).observe(ui.view, { attributes: true, attributeFilter: ["hidden"] });
  setInterval(renderFleet, 250);
  onViewChange();
}

init();
