// The live flow page: recent orders updated from GET /events, an order's message
// sequence as a diagram, placing and cancelling orders, flow figures and dead letters.
// No framework, no build step: served as is by `app serve`.
"use strict";

(() => {
  const MAX_ORDERS = 50;
  const TOKEN_KEY = "orders.token";
  const LANES = ["Orders", "Payments", "Stock"];
  const FINAL = new Set(["StockReserved", "Cancelled"]);

  const $ = (selector, root = document) => root.querySelector(selector);
  // Newest first: by placement time, then id (ids are time-ordered to the millisecond).
  const newestFirst = (a, b) => {
    const x = state.orders.get(a);
    const y = state.orders.get(b);
    if (x.placedAt !== y.placedAt) return x.placedAt < y.placedAt ? 1 : -1;
    return a < b ? 1 : a > b ? -1 : 0;
  };
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    orders: new Map(), // id → OrderView
    selected: null,
    deadCount: null,
    stream: null, // AbortController of the open stream
    renderQueued: false,
  };

  // ---- API -------------------------------------------------------------------------

  async function api(path, options = {}) {
    const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let body;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.json);
    }
    const response = await fetch(path, { method: options.method || "GET", headers, body });
    let data = null;
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("json")) {
      try { data = await response.json(); } catch (_) { data = null; }
    }
    if (response.status === 401) needToken("The API needs a token.");
    return { status: response.status, ok: response.ok, data };
  }

  function problemText(result) {
    if (result.data && result.data.detail) return result.data.detail;
    return `The API answered ${result.status}.`;
  }

  // ---- Token -----------------------------------------------------------------------

  function needToken(message) {
    const panel = $("#token-panel");
    panel.hidden = false;
    $("#token-toggle").setAttribute("aria-expanded", "true");
    $("#token-message").textContent = message;
  }

  function setupToken() {
    $("#token-toggle").addEventListener("click", () => {
      const panel = $("#token-panel");
      panel.hidden = !panel.hidden;
      $("#token-toggle").setAttribute("aria-expanded", String(!panel.hidden));
      if (!panel.hidden) $("#token-input").focus();
    });
    $("#token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      state.token = $("#token-input").value.trim();
      if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
      else sessionStorage.removeItem(TOKEN_KEY);
      $("#token-input").value = "";
      $("#token-message").textContent = state.token ? "Token in use for this tab." : "";
      $("#token-panel").hidden = true;
      restart();
    });
    $("#token-clear").addEventListener("click", () => {
      state.token = "";
      sessionStorage.removeItem(TOKEN_KEY);
      $("#token-message").textContent = "Token forgotten.";
      restart();
    });
  }

  // ---- Formatting ------------------------------------------------------------------

  const shortId = (id) => `…${id.slice(-8)}`;
  const money = (amount, currency) => `${amount} ${currency}`;
  const clock = (iso) => new Date(iso).toLocaleTimeString([], { hour12: false });

  function duration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
    if (ms === 0) return "0 ms";
    if (ms < 1) return `${ms.toFixed(2)} ms`;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    return `${(ms / 60000).toFixed(1)} min`;
  }

  function badge(status) {
    const span = document.createElement("span");
    span.className = `badge badge-${status}`;
    span.textContent = status.replace(/([a-z])([A-Z])/g, "$1 $2");
    span.dataset.status = status;
    return span;
  }

  // ---- Connection state ------------------------------------------------------------

  function connection(kind, text) {
    const pill = $("#connection");
    pill.className = `pill pill-${kind}`;
    pill.dataset.state = kind;
    $(".pill-text", pill).textContent = text;
  }

  // ---- Orders list -----------------------------------------------------------------

  function upsert(order) {
    const known = state.orders.get(order.orderId);
    if (known && known.version > order.version) return false;
    state.orders.set(order.orderId, order);
    if (state.orders.size > MAX_ORDERS) {
      // Newest first by id (time-ordered): drop the oldest, never the chosen one.
      const ids = Array.from(state.orders.keys()).sort(newestFirst);
      for (const id of ids.slice(MAX_ORDERS)) {
        if (id !== state.selected) state.orders.delete(id);
      }
    }
    queueRender();
    return true;
  }

  function queueRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(() => {
      state.renderQueued = false;
      renderOrders();
    });
  }

  function renderOrders() {
    const body = $("#orders tbody");
    const ids = Array.from(state.orders.keys()).sort(newestFirst);
    const rows = new Map($$("tr", body).map((row) => [row.dataset.orderId, row]));
    let previous = null;
    for (const id of ids) {
      const order = state.orders.get(id);
      let row = rows.get(id);
      if (!row) {
        row = document.createElement("tr");
        row.dataset.orderId = id;
        row.tabIndex = 0;
        row.addEventListener("click", () => select(id));
        row.addEventListener("keydown", (event) => {
          if (event.key === "Enter" || event.key === " ") { event.preventDefault(); select(id); }
        });
      }
      rows.delete(id);
      if (row.dataset.version !== String(order.version) || !row.firstChild) fillRow(row, order);
      row.classList.toggle("selected", id === state.selected);
      const expected = previous ? previous.nextSibling : body.firstChild;
      if (expected !== row) body.insertBefore(row, expected);
      previous = row;
    }
    for (const stale of rows.values()) stale.remove();
    $("#orders-empty").hidden = ids.length > 0;
    $("#orders-count").textContent = ids.length ? `${ids.length} shown · newest first` : "";
  }

  function fillRow(row, order) {
    row.dataset.version = String(order.version);
    row.dataset.status = order.status;
    row.replaceChildren();
    const cell = (content, className) => {
      const td = document.createElement("td");
      if (className) td.className = className;
      if (content instanceof Node) td.append(content); else td.textContent = content;
      row.append(td);
      return td;
    };
    cell(shortId(order.orderId), "mono").title = order.orderId;
    cell(order.customerId);
    cell(money(order.totalAmount, order.currency), "num");
    cell(badge(order.status), "status");
    cell(clock(order.placedAt), "muted");
  }

  async function loadOrders() {
    const result = await api(`/orders?limit=${MAX_ORDERS}`);
    const empty = $("#orders-empty");
    if (!result.ok || !result.data) {
      if (state.orders.size === 0) {
        empty.textContent = result.status === 401 ? "Enter an API token to see the orders." : problemText(result);
      }
      return;
    }
    empty.textContent = "No orders yet. Place one below.";
    const fresh = new Map();
    for (const order of result.data.orders) fresh.set(order.orderId, order);
    const chosen = state.selected && state.orders.get(state.selected);
    if (chosen && !fresh.has(state.selected)) fresh.set(state.selected, chosen);
    state.orders = fresh;
    queueRender();
    if (state.selected) refreshDetail();
  }

  // ---- Chosen order: facts and message diagram ---------------------------------------

  function select(id) {
    state.selected = id;
    // A link to the chosen order: /#order=<id>.
    history.replaceState(null, "", `#order=${id}`);
    $("#cancel-result").textContent = "";
    queueRender();
    refreshDetail();
  }

  let detailSeq = 0;
  async function refreshDetail() {
    const id = state.selected;
    if (!id) return;
    const seq = ++detailSeq;
    const [order, messages] = await Promise.all([api(`/orders/${id}`), api(`/orders/${id}/messages`)]);
    if (seq !== detailSeq || id !== state.selected) return; // a newer refresh is under way
    if (order.ok && order.data) upsert(order.data);
    const view = state.orders.get(id) || (order.ok ? order.data : null);
    if (!view) {
      $("#cancel-result").textContent = problemText(order);
      return;
    }
    renderDetail(view, messages.ok && Array.isArray(messages.data) ? messages.data : []);
  }

  function renderDetail(order, messages) {
    $("#detail-empty").hidden = true;
    $("#detail-body").hidden = false;
    $("#detail-body").dataset.orderId = order.orderId;
    $("#detail-status").replaceChildren(badge(order.status));
    $("#detail-id").textContent = order.orderId;
    $("#detail-id").title = order.orderId;
    $("#detail-customer").textContent = order.customerId;
    $("#detail-total").textContent = money(order.totalAmount, order.currency);
    $("#detail-placed").textContent = new Date(order.placedAt).toLocaleString([], { hour12: false });
    $("#detail-version").textContent = String(order.version);
    const reason = $("#detail-reason");
    reason.hidden = !order.cancellationReason;
    reason.textContent = order.cancellationReason ? `Cancelled: ${order.cancellationReason}` : "";
    $("#cancel-button").disabled = order.status === "Cancelled";
    drawDiagram($("#diagram"), order, messages);
  }

  // Which lane a message goes between: Orders sends requests to Payments or Stock and
  // receives their answers; order.cancelled goes to both.
  function lanesOf(message) {
    const topic = message.topic;
    const toStock = topic === "order.paid" || topic === "order.reservation_refused";
    const other = topic.startsWith("stock.") || toStock ? 2 : 1;
    if (message.direction === "sent") {
      return { from: 0, to: topic === "order.cancelled" ? 2 : other, both: topic === "order.cancelled" };
    }
    return { from: other, to: 0, both: false };
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(name, attributes = {}, text) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    if (text !== undefined) element.textContent = text;
    return element;
  }

  function drawDiagram(container, order, messages) {
    const width = 600;
    const laneX = [90, 300, 510];
    const top = 46;
    const row = 58;
    const height = top + Math.max(messages.length, 1) * row + 2;
    const placed = Date.parse(order.placedAt);
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img",
      "aria-label": `Messages of order ${order.orderId}`, class: "sequence",
    });
    const defs = svg("defs");
    for (const kind of ["applied", "sent", "duplicate", "rejected"]) {
      const marker = svg("marker", { id: `arrow-${kind}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
      marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: `head head-${kind}` }));
      defs.append(marker);
    }
    root.append(defs);
    LANES.forEach((name, i) => {
      root.append(svg("rect", { x: laneX[i] - 52, y: 6, width: 104, height: 26, rx: 6, class: "lane-head" }));
      root.append(svg("text", { x: laneX[i], y: 23, class: "lane-name" }, name));
      root.append(svg("line", { x1: laneX[i], y1: 32, x2: laneX[i], y2: height - 6, class: "lifeline" }));
    });
    if (messages.length === 0) {
      root.append(svg("text", { x: width / 2, y: top + 20, class: "diagram-empty" }, "No messages yet"));
    }
    messages.forEach((message, index) => {
      const y = top + index * row + 22;
      const lanes = lanesOf(message);
      const kind = message.direction === "sent" ? "sent" : (message.outcome || "applied");
      const group = svg("g", {
        class: `msg msg-${kind}`, "data-index": index, "data-topic": message.topic,
        "data-direction": message.direction, "data-outcome": message.outcome || "",
      });
      const x1 = laneX[lanes.from];
      const x2 = laneX[lanes.to];
      const direction = Math.sign(x2 - x1);
      group.append(svg("line", { x1: x1 + direction * 4, y1: y, x2: x2 - direction * 4, y2: y, class: `arrow arrow-${kind}`, "marker-end": `url(#arrow-${kind})` }));
      if (lanes.both) group.append(svg("circle", { cx: laneX[1], cy: y, r: 3.5, class: `tap arrow-${kind}` }));
      const middle = (x1 + x2) / 2;
      group.append(svg("text", { x: middle, y: y - 8, class: "topic" }, message.topic));
      const since = Date.parse(message.at) - placed;
      let note = `+${duration(Math.max(since, 0))}`;
      if (message.direction === "received") note += ` · ${message.outcome}`;
      if (message.reason) note += ` — ${message.reason}`;
      const label = svg("text", { x: middle, y: y + 16, class: `note note-${kind}` }, note);
      label.append(svg("title", {}, `${message.direction} ${message.messageId} at ${message.at}`));
      group.append(label);
      group.append(svg("text", { x: 8, y: y + 4, class: "seq" }, String(index + 1)));
      root.append(group);
    });
    container.replaceChildren(root);
  }

  function setupCancel() {
    $("#cancel-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const id = state.selected;
      if (!id) return;
      const button = $("#cancel-button");
      button.disabled = true;
      const reason = $("#cancel-reason").value;
      const result = await api(`/orders/${id}/cancel`, { method: "POST", json: { reason } });
      const out = $("#cancel-result");
      if (result.ok && result.data) {
        out.textContent = "Cancelled.";
        out.className = "form-result ok";
        upsert(result.data);
        refreshDetail();
      } else {
        out.textContent = result.data && result.data.errors
          ? result.data.errors.map((e) => `${e.field}: ${e.message}`).join("; ")
          : problemText(result);
        out.className = "form-result error";
        button.disabled = false;
      }
    });
  }

  // ---- Place an order --------------------------------------------------------------

  function addItem() {
    const row = $("#item-row").content.firstElementChild.cloneNode(true);
    $("[data-remove-item]", row).addEventListener("click", () => {
      row.remove();
      numberItems();
    });
    $("#items").append(row);
    numberItems();
  }

  function numberItems() {
    $$("#items .item-row").forEach((row, i) => {
      for (const input of $$("[data-item]", row)) {
        const name = `items[${i}].${input.dataset.item}`;
        input.name = name;
        input.nextElementSibling.dataset.errorFor = name;
      }
    });
  }

  function clearErrors(form) {
    for (const small of $$(".field-error", form)) small.textContent = "";
    for (const input of $$("input", form)) input.removeAttribute("aria-invalid");
    const general = $("#place-general");
    general.hidden = true;
    general.textContent = "";
  }

  function showErrors(form, errors, detail) {
    const general = [];
    for (const error of errors) {
      const slot = $$(".field-error", form).find((s) => s.dataset.errorFor === error.field);
      if (slot) {
        slot.textContent = slot.textContent ? `${slot.textContent}; ${error.message}` : error.message;
        const input = form.elements.namedItem(error.field);
        if (input && input.setAttribute) input.setAttribute("aria-invalid", "true");
      } else {
        general.push(`${error.field}: ${error.message}`);
      }
    }
    if (general.length || (!errors.length && detail)) {
      const box = $("#place-general");
      box.textContent = general.length ? general.join(" · ") : detail;
      box.hidden = false;
    }
  }

  function readForm(form) {
    const value = (name) => form.elements.namedItem(name).value.trim();
    const local = [];
    const items = $$("#items .item-row").map((row, i) => {
      const field = (name) => $(`[data-item="${name}"]`, row).value.trim();
      const quantityText = field("quantity");
      const priceText = field("price");
      const quantity = /^-?\d+$/.test(quantityText) ? Number(quantityText) : NaN;
      const price = /^-?\d+(\.\d+)?$/.test(priceText) ? Number(priceText) : NaN;
      if (Number.isNaN(quantity)) local.push({ field: `items[${i}].quantity`, message: "must be a whole number" });
      if (Number.isNaN(price)) local.push({ field: `items[${i}].price`, message: "must be a number, e.g. 19.99" });
      return { productId: field("productId"), quantity, price };
    });
    return {
      local,
      command: {
        customerId: value("customerId"),
        currency: value("currency"),
        items,
        shippingAddress: {
          street: value("shippingAddress.street"),
          city: value("shippingAddress.city"),
          postalCode: value("shippingAddress.postalCode"),
          country: value("shippingAddress.country"),
        },
      },
    };
  }

  function setupPlace() {
    addItem();
    $("#add-item").addEventListener("click", addItem);
    const form = $("#place-form");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearErrors(form);
      const out = $("#place-result");
      out.textContent = "";
      out.className = "form-result";
      delete out.dataset.orderId;
      const { local, command } = readForm(form);
      if (local.length) {
        showErrors(form, local);
        out.textContent = "Check the marked fields.";
        out.className = "form-result error";
        return;
      }
      const button = $("#place-submit");
      button.disabled = true;
      const headers = {};
      if (window.crypto && crypto.randomUUID) headers["Idempotency-Key"] = crypto.randomUUID();
      try {
        const result = await api("/orders", { method: "POST", json: command, headers });
        if (result.ok && result.data) {
          out.textContent = `Placed ${shortId(result.data.orderId)}.`;
          out.className = "form-result ok";
          out.dataset.orderId = result.data.orderId;
          upsert(result.data);
          select(result.data.orderId);
        } else {
          const errors = (result.data && result.data.errors) || [];
          showErrors(form, errors, problemText(result));
          out.textContent = errors.length ? "Check the marked fields." : problemText(result);
          out.className = "form-result error";
        }
      } catch (error) {
        out.textContent = "The service cannot be reached.";
        out.className = "form-result error";
      } finally {
        button.disabled = false;
      }
    });
  }

  // ---- Flow figures and dead letters -------------------------------------------------

  function showFlow(flow) {
    $("#kpi-throughput").textContent = flow.throughputPerSecond.toFixed(1);
    $("#kpi-p50").textContent = duration(flow.latencyMs.p50);
    $("#kpi-p99").textContent = duration(flow.latencyMs.p99);
    $("#kpi-finished").textContent = String(flow.finished);
    $("#kpi-finished").dataset.value = String(flow.finished);
    $("#kpi-finished-note").textContent = `${flow.stockReserved} reserved · ${flow.cancelled} cancelled`;
    const dead = flow.deadLetters;
    $("#kpi-dead").textContent = dead === null || dead === undefined ? "–" : String(dead);
    $("#kpi-dead-card").classList.toggle("alert", Boolean(dead));
    if (dead !== state.deadCount) {
      state.deadCount = dead;
      loadDeadLetters();
    }
  }

  async function loadDeadLetters() {
    const list = $("#dead-letters");
    const empty = $("#dead-empty");
    let result;
    try {
      result = await api("/dead-letters");
    } catch (_) {
      return;
    }
    const letters = result.ok && result.data && Array.isArray(result.data.deadLetters) ? result.data.deadLetters : [];
    list.replaceChildren();
    if (!result.ok && result.status !== 404) {
      empty.textContent = result.status === 403
        ? "This token cannot see dead letters."
        : result.status === 401 ? "Enter an API token to see them." : problemText(result);
      empty.hidden = false;
      return;
    }
    empty.textContent = "No dead letters.";
    empty.hidden = letters.length > 0;
    for (const letter of letters) list.append(deadLetterItem(letter));
  }

  function deadLetterItem(letter) {
    const item = document.createElement("li");
    item.className = "dead";
    item.dataset.id = letter.id;
    const head = document.createElement("div");
    head.className = "dead-head";
    const topic = document.createElement("span");
    topic.className = "mono dead-topic";
    topic.textContent = letter.topic;
    const meta = document.createElement("span");
    meta.className = "muted small";
    const kind = letter.kind ? ` · ${letter.kind}` : "";
    meta.textContent = `${letter.group} · ${letter.attempts} attempt${letter.attempts === 1 ? "" : "s"}${kind} · last ${clock(letter.lastFailedAt)}`;
    item.title = `message ${letter.messageId}, first failed ${letter.firstFailedAt}`;
    const replay = document.createElement("button");
    replay.type = "button";
    replay.className = "btn btn-small";
    replay.textContent = "Replay";
    replay.addEventListener("click", async () => {
      replay.disabled = true;
      const result = await api(`/dead-letters/${encodeURIComponent(letter.id)}/replay`, { method: "POST" });
      replay.textContent = result.status === 202 ? "Replayed" : "Failed";
      if (result.status !== 202) {
        replay.disabled = false;
        replay.title = problemText(result);
      }
      loadDeadLetters();
    });
    head.append(topic, meta, replay);
    const reason = document.createElement("p");
    reason.className = "dead-reason";
    reason.textContent = letter.reason;
    item.append(head, reason);
    return item;
  }

  // ---- The event stream --------------------------------------------------------------

  function dispatch(event, data) {
    let payload;
    try { payload = JSON.parse(data); } catch (_) { return; }
    switch (event) {
      case "ready":
        connection("live", "Live");
        loadOrders();
        loadDeadLetters();
        break;
      case "order":
        upsert(payload);
        if (payload.orderId === state.selected) refreshDetail();
        break;
      case "flow":
        showFlow(payload);
        break;
      case "resync":
        loadOrders();
        break;
      default:
        break;
    }
  }

  // Reads `text/event-stream` from a fetch body: events end with a blank line; `event:`
  // names one, `data:` lines are its data, lines starting with `:` are comments.
  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") name = value;
          else if (field === "data") data.push(value);
        }
        if (data.length) onEvent(name, data.join("\n"));
      }
    }
  }

  const wait = (ms, signal) => new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });

  async function follow(controller) {
    const signal = controller.signal;
    let backoff = 500;
    while (!signal.aborted) {
      let stop = false;
      try {
        const headers = { Accept: "text/event-stream" };
        if (state.token) headers.Authorization = `Bearer ${state.token}`;
        const response = await fetch("/events", { headers, signal, cache: "no-store" });
        if (response.status === 401) {
          connection("blocked", "Token needed");
          needToken("Live updates need a token.");
          stop = true;
        } else if (response.status === 403) {
          connection("blocked", "Not for this token");
          needToken("This token is scoped to one customer: it cannot follow every order.");
          stop = true;
        } else if (response.ok && response.body) {
          backoff = 500;
          await readEvents(response.body, dispatch);
        }
      } catch (_) {
        // Network error or abort: reconnect below unless aborted.
      }
      if (stop || signal.aborted) return;
      const seconds = Math.max(1, Math.round(backoff / 1000));
      connection("reconnecting", `Reconnecting in ${seconds} s…`);
      await wait(backoff, signal);
      backoff = Math.min(backoff * 2, 10000);
      if (!signal.aborted) connection("reconnecting", "Reconnecting…");
    }
  }

  function restart() {
    if (state.stream) state.stream.abort();
    state.stream = new AbortController();
    connection("idle", "Connecting…");
    loadOrders();
    follow(state.stream);
  }

  document.addEventListener("DOMContentLoaded", () => {
    setupToken();
    setupPlace();
    setupCancel();
    $("#dead-refresh").addEventListener("click", loadDeadLetters);
    const linked = /^#order=([0-9a-f-]{36})$/i.exec(location.hash);
    if (linked) select(linked[1].toLowerCase());
    restart();
  });
})();
