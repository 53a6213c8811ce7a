// The migration dashboard: reads the admin API of this origin every POLL_MS (not while the tab
// is hidden) and shows it. Every value from the API is written as text (textContent, or
// attributes through setAttribute): no markup is ever built from data. The admin token lives in
// sessionStorage only and is sent as a bearer header.
"use strict";

(() => {
  const POLL_MS = pollInterval();
  const STATS_WINDOW = 60;
  const HISTORY_POINTS = 60; // two minutes of polls per sparkline
  const TOKEN_KEY = "strangler.admin-token";
  const AUTHOR_KEY = "strangler.author";
  const TERMINAL = new Set(["rolled-back", "succeeded", "aborted", "failed"]);
  const ACTIONS = {
    pause: { label: "Pause", verb: "pausing", done: "paused", when: ["pending", "progressing", "baking", "waiting-promotion"] },
    resume: { label: "Resume", verb: "resuming", done: "resumed", when: ["paused"] },
    promote: { label: "Promote", verb: "promoting", done: "promoted", when: ["pending", "progressing", "baking", "paused", "waiting-promotion"] },
    abort: { label: "Abort", verb: "aborting", done: "aborted", when: ["pending", "progressing", "baking", "paused", "waiting-promotion"] },
  };

  const EXPOSE = { external: "external listener only", internal: "internal listener only" };
  const OPTIONAL_RETRY_MS = 30000; // an endpoint this proxy lacks (404) is asked again this late
  // The ledger reads the whole history: asked again this late, or at the next poll once the
  // served version has changed.
  const LEDGER_MS = 10000;
  const $ = (id) => document.getElementById(id);
  const view = {
    status: null,
    statsAvailable: null,
    stats: null,
    clockSkew: 0, // server epoch minus this browser's
    history: new Map(), // "route\u0000arm" -> [{p50, p95, p99, requests}]
    seen: new Map(), // section -> the JSON last rendered (unchanged data is not rendered again)
    openLedger: new Set(),
    openShadow: new Set(),
    rollouts: new Map(), // route -> its persistent elements
    timer: null,
    busy: false,
    lacking: new Map(), // optional endpoint -> [when to ask again, its 404]
    ledger: null, // the last ledger answer, and when and at which served version it came
    ledgerAt: 0,
    ledgerVersion: null,
  };

  function pollInterval() {
    // `?poll=MS` on the page's URL (0.5 s to 60 s) reads more or less often than every 2 s.
    const asked = Number(new URLSearchParams(window.location.search).get("poll"));
    return Number.isFinite(asked) && asked >= 500 && asked <= 60000 ? asked : 2000;
  }

  // --- building the DOM: text only -------------------------------------------------------------
  function h(tag, props, ...kids) {
    const node = document.createElement(tag);
    setProps(node, props);
    append(node, kids);
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function s(tag, props, ...kids) {
    const node = document.createElementNS(SVG_NS, tag);
    setProps(node, props);
    append(node, kids);
    return node;
  }

  function setProps(node, props) {
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.setAttribute("class", value);
      else if (key === "text") node.textContent = String(value);
      else if (key === "on") for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
      else if (key === "data") for (const [name, v] of Object.entries(value)) node.dataset[name] = String(v);
      else if (key === "width%") node.style.setProperty("width", `${clamp(value, 0, 100)}%`);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function append(node, kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
  }

  function fill(node, ...kids) {
    node.replaceChildren();
    append(node, kids);
  }

  function changed(section, ...data) {
    const json = JSON.stringify(data);
    if (view.seen.get(section) === json) return false;
    view.seen.set(section, json);
    return true;
  }

  // --- formatting -------------------------------------------------------------------------
  const clamp = (value, low, high) => Math.min(high, Math.max(low, Number(value) || 0));
  const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const count = (n) => integer.format(n || 0);

  function percent(rate, digits = 1) {
    if (rate === null || rate === undefined || Number.isNaN(rate)) return "—";
    const value = rate * 100;
    if (value > 0 && value < 0.1) return "< 0.1 %";
    return `${value.toFixed(value >= 10 || Number.isInteger(value) ? 0 : digits)} %`;
  }

  function latency(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const ms = seconds * 1000;
    if (ms < 1) return `${ms.toFixed(2)} ms`;
    if (ms < 10) return `${ms.toFixed(1)} ms`;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    return `${(ms / 1000).toFixed(2)} s`;
  }

  function duration(seconds) {
    const total = Math.max(0, Math.round(seconds));
    if (total < 60) return `${total}s`;
    const minutes = Math.floor(total / 60);
    if (minutes < 60) return total % 60 ? `${minutes}m ${total % 60}s` : `${minutes}m`;
    const hours = Math.floor(minutes / 60);
    return minutes % 60 ? `${hours}h ${minutes % 60}m` : `${hours}h`;
  }

  const serverNow = () => Date.now() / 1000 + view.clockSkew;

  function ago(epoch) {
    if (!epoch) return "—";
    const seconds = serverNow() - epoch;
    if (seconds < 5) return "just now";
    if (seconds < 60) return `${Math.round(seconds)} s ago`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} d ago`;
  }

  const when = (epoch) => (epoch ? new Date(epoch * 1000).toLocaleString() : "");

  function time(epoch) {
    return h("time", { datetime: epoch ? new Date(epoch * 1000).toISOString() : null, title: when(epoch), text: ago(epoch) });
  }

  // --- the admin API ----------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, problem, message) {
      super(message);
      this.status = status;
      this.problem = problem || {};
    }
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
  const author = () => (sessionStorage.getItem(AUTHOR_KEY) || "").replace(/[^\x20-\x7e]/g, "").trim() || "dashboard";

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json, application/problem+json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    if (method !== "GET") headers["X-Author"] = author();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
        redirect: "error",
      });
    } catch (error) {
      throw new ApiError(0, null, "cannot reach the admin API");
    }
    const type = response.headers.get("content-type") || "";
    let data = null;
    if (type.includes("json")) {
      try {
        data = await response.json();
      } catch (error) {
        data = null;
      }
    }
    if (!response.ok) {
      const detail = (data && (data.detail || data.title)) || `HTTP ${response.status}`;
      throw new ApiError(response.status, data, String(detail));
    }
    return data;
  }

  function problemLines(problem) {
    const lines = [];
    for (const p of problem.problems || []) lines.push(`${p.line ? `line ${p.line}: ` : ""}${p.field ? `${p.field}: ` : ""}${p.message}`);
    for (const e of problem.errors || []) lines.push(`${e.location}: ${e.message}`);
    for (const g of problem.gates || []) lines.push(gateText(g));
    return lines;
  }

  function gateText(gate) {
    const said = gate.open ? "open" : `closed${gate.status ? ` (${gate.status})` : ""}`;
    const reasons = Array.isArray(gate.reasons) ? gate.reasons.join("; ") : gate.reasons || "";
    return `gate of ${gate.upstream}: ${said}${reasons ? ` — ${reasons}` : ""}`;
  }

  function errorBox(error, extra) {
    const lines = error instanceof ApiError ? problemLines(error.problem) : [];
    const title = error instanceof ApiError && error.status ? `${error.status}: ${error.message}` : String(error.message || error);
    return h(
      "div",
      { class: "notice error", role: "alert" },
      h("strong", { text: title }),
      lines.length ? h("ul", {}, lines.map((line) => h("li", { text: line }))) : null,
      extra || null,
      error instanceof ApiError && error.status === 401 ? tokenButton("Enter the admin token") : null,
    );
  }

  function tokenButton(label) {
    return h("button", { type: "button", class: "ghost small", text: label, on: { click: openTokenPanel } });
  }

  // --- polling ----------------------------------------------------------------------------
  async function refresh() {
    if (view.busy) return;
    view.busy = true;
    clearTimeout(view.timer);
    try {
      const [status, ledger, stats, shadow, rollouts] = await Promise.allSettled([
        api("/api/v1/routes/status"),
        ledgerAnswer(),
        optional(`/api/v1/stats?window=${STATS_WINDOW}`),
        api("/api/v1/shadow"),
        optional("/api/v1/rollouts"),
      ]);
      take(status, ledger, stats);
      renderHeader(status);
      renderRoutes();
      renderTiles(rollouts);
      renderRollouts(rollouts);
      renderLedger(ledger);
      renderLegacy(ledger);
      renderShadow(shadow);
      renderFlipChoices();
      $("updated-at").textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } finally {
      view.busy = false;
      schedule();
    }
  }

  async function ledgerAnswer() {
    const served = view.status ? view.status.served_version : null;
    const fresh = Date.now() - view.ledgerAt < LEDGER_MS && served === view.ledgerVersion;
    if (view.ledger && fresh) return view.ledger;
    const answer = await api("/api/v1/ledger");
    view.ledger = answer;
    view.ledgerAt = Date.now();
    view.ledgerVersion = served;
    return answer;
  }

  async function optional(path) {
    // An endpoint a proxy may not have (an older one): after a 404 it is asked again only
    // every OPTIONAL_RETRY_MS, not at every poll.
    const lacking = view.lacking.get(path);
    if (lacking && Date.now() < lacking[0]) throw lacking[1];
    try {
      const answer = await api(path);
      view.lacking.delete(path);
      return answer;
    } catch (error) {
      if (error.status === 404 || error.status === 405) view.lacking.set(path, [Date.now() + OPTIONAL_RETRY_MS, error]);
      throw error;
    }
  }

  function schedule() {
    clearTimeout(view.timer);
    if (!document.hidden) view.timer = setTimeout(refresh, POLL_MS);
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      clearTimeout(view.timer);
      setLive("paused", "paused (tab hidden)");
    } else {
      refresh();
    }
  });

  function setLive(kind, text) {
    const live = $("live-state");
    live.dataset.state = kind;
    $("live-text").textContent = text;
  }

  function take(status, ledger, stats) {
    if (status.status === "fulfilled") view.status = status.value;
    if (stats.status === "fulfilled") {
      view.stats = stats.value;
      view.statsAvailable = true;
      if (stats.value && stats.value.now) view.clockSkew = stats.value.now - Date.now() / 1000;
    } else if (stats.reason.status === 404 || stats.reason.status === 405) {
      view.stats = null;
      view.statsAvailable = false;
    }
    recordHistory();
  }

  // --- the header -------------------------------------------------------------------------
  function renderHeader(result) {
    const alerts = $("alerts");
    if (result.status === "rejected") {
      setLive("down", "disconnected");
      fill(alerts, errorBox(result.reason, h("span", { text: ` Retrying every ${POLL_MS / 1000} s.` })));
      return;
    }
    alerts.replaceChildren();
    setLive("live", "live");
    const status = result.value;
    const served = $("served-version");
    served.textContent = `version ${status.served_version}`;
    const sync = $("sync-state");
    if (status.store_error) {
      sync.textContent = "store unavailable";
      sync.dataset.state = "bad";
      sync.title = status.store_error;
    } else if (status.in_sync) {
      sync.textContent = "in sync";
      sync.dataset.state = "ok";
      sync.title = `This proxy serves the store's current version (${status.store_version})`;
    } else {
      sync.textContent = `store at version ${status.store_version}`;
      sync.dataset.state = "warn";
      sync.title = "This proxy has not taken the store's current version yet";
    }
  }

  // --- traffic: per route and arm ---------------------------------------------------------
  const defaultUpstream = () => (view.status ? view.status.default.upstream.name : "");

  function arms(route) {
    // What the route is configured to send where, plus every arm that answered lately
    // (an override, a fallback).
    const names = route.upstreams.map((u) => u.name);
    for (const name of Object.keys(statsOf(route.name) || {})) if (!names.includes(name)) names.push(name);
    for (const name of Object.keys(route.traffic.by_upstream || {})) if (!names.includes(name)) names.push(name);
    return names;
  }

  function statsOf(routeName) {
    return view.stats && view.stats.routes ? view.stats.routes[routeName] || null : null;
  }

  function armNumbers(route, arm) {
    // {requests, errors, error_rate, p50, p95, p99, mean}: the stats window's when the proxy
    // has per-arm statistics, else the status' five-minute counts and mean.
    const stats = statsOf(route.name);
    if (view.statsAvailable) {
      const a = (stats && stats[arm]) || {};
      return { requests: a.requests || 0, errors: a.errors || 0, error_rate: a.error_rate || 0, p50: a.p50 ?? null, p95: a.p95 ?? null, p99: a.p99 ?? null, mean: null };
    }
    const t = (route.traffic.by_upstream || {})[arm] || {};
    const requests = t.requests || 0;
    return {
      requests,
      errors: t.errors_5xx || 0,
      error_rate: requests ? (t.errors_5xx || 0) / requests : 0,
      p50: null,
      p95: null,
      p99: null,
      mean: requests ? (t.mean_ms || 0) / 1000 : null,
    };
  }

  function recordHistory() {
    if (!view.status) return;
    for (const route of view.status.routes) {
      for (const arm of arms(route)) {
        const key = `${route.name}\u0000${arm}`;
        const points = view.history.get(key) || [];
        const n = armNumbers(route, arm);
        points.push({ requests: n.requests, p95: n.p95 ?? n.mean, p50: n.p50, p99: n.p99 });
        while (points.length > HISTORY_POINTS) points.shift();
        view.history.set(key, points);
      }
    }
  }

  function windowLabel() {
    if (view.statsAvailable) return `${STATS_WINDOW} s`;
    const seconds = view.status && view.status.routes.length ? view.status.routes[0].traffic.window_seconds : 300;
    return duration(Math.max(seconds, 1));
  }

  function armClass(name) {
    if (name === defaultUpstream()) return "arm-legacy";
    if (name === "static") return "arm-static";
    const others = (view.status ? view.status.upstreams : []).map((u) => u.name).filter((n) => n !== defaultUpstream());
    const index = others.indexOf(name);
    return `arm-${index < 0 ? 5 : (index % 5) + 1}`;
  }

  function stateBadge(kind, label) {
    const normal = { shadow: "shadowed", split: "moved" }[kind] || kind;
    return h("span", { class: `badge state-${normal}`, data: { state: kind }, text: label || kind });
  }

  function routeLabel(route) {
    const share = route.upstreams.filter((u) => u.name !== defaultUpstream()).reduce((sum, u) => sum + u.weight, 0);
    if (route.state === "canary") return `canary ${Math.round(share)} %`;
    if (route.state === "shadow") return route.shadow ? `shadowed to ${route.shadow.to}` : "shadowed";
    if (route.state === "moved") return `moved to ${route.upstreams.filter((u) => u.weight > 0).map((u) => u.name).join(", ")}`;
    return route.state;
  }

  function splitBar(route) {
    const bar = h("div", { class: "splitbar", role: "img" });
    const parts = route.upstreams.filter((u) => u.weight > 0);
    bar.setAttribute("aria-label", `configured split: ${parts.map((u) => `${u.name} ${u.weight} %`).join(", ")}`);
    for (const u of parts) bar.append(h("span", { class: `seg ${armClass(u.name)}`, "width%": u.weight, title: `${u.name}: ${u.weight} %` }));
    const legend = h(
      "div",
      { class: "split-legend" },
      parts.map((u) => h("span", { class: "legend-item" }, h("span", { class: `swatch ${armClass(u.name)}` }), `${u.name} ${Math.round(u.weight)} %`)),
    );
    return h("div", { class: "split" }, bar, legend);
  }

  function sparkline(points, label) {
    const values = points.map((p) => p.p95).filter((v) => v !== null && v !== undefined);
    const width = 112;
    const height = 28;
    const svg = s("svg", { class: "spark", viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
    if (values.length < 2) {
      svg.setAttribute("aria-label", `${label}: not enough data yet`);
      svg.append(s("line", { x1: 0, y1: height - 2, x2: width, y2: height - 2, class: "spark-empty" }));
      return svg;
    }
    const high = Math.max(...values);
    const low = Math.min(...values);
    const span = high - low;
    const step = width / (Math.max(values.length, 16) - 1);
    const start = width - step * (values.length - 1);
    const y = (v) => (span ? height - 3 - ((v - low) / span) * (height - 6) : height / 2);
    const xy = values.map((v, i) => [start + i * step, y(v)]);
    const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    svg.setAttribute("aria-label", `${label}: ${latency(low)} to ${latency(high)}, now ${latency(values[values.length - 1])}`);
    svg.append(
      s("title", { text: `${label}: ${latency(low)} – ${latency(high)}` }),
      s("polygon", { class: "spark-area", points: `${xy[0][0].toFixed(1)},${height} ${line} ${xy[xy.length - 1][0].toFixed(1)},${height}` }),
      s("polyline", { class: "spark-line", points: line }),
      s("circle", { class: "spark-dot", cx: xy[xy.length - 1][0].toFixed(1), cy: xy[xy.length - 1][1].toFixed(1), r: 2.2 }),
    );
    return svg;
  }

  function healthChip(name) {
    const upstream = (view.status ? view.status.upstreams : []).find((u) => u.name === name);
    if (!upstream) return h("span", { class: "chip muted", text: name === "static" ? "files" : "—" });
    const state = upstream.state || "closed";
    const text = { closed: "healthy", ejected: "ejected", probing: "probing" }[state] || state;
    const kind = { closed: "ok", ejected: "bad", probing: "warn" }[state] || "muted";
    return h("span", { class: `chip ${kind}`, title: upstream.url, text });
  }

  function renderRoutes() {
    const container = $("routes");
    const status = view.status;
    if (!status) return;
    const note = view.statsAvailable
      ? `Per arm, the last ${STATS_WINDOW} s across every worker; latency percentiles from merged histograms.`
      : `Per arm, the last ${windowLabel()} (mean latency): this proxy has no per-arm statistics (/api/v1/stats not available).`;
    $("routes-note").textContent = note;
    if (!status.routes.length) {
      fill(container, h("p", { class: "empty", text: `No routes: every request goes to ${defaultUpstream()}.` }));
      return;
    }
    fill(container, status.routes.map(routeBlock));
  }

  function routeBlock(route) {
    const names = arms(route);
    const numbers = names.map((arm) => armNumbers(route, arm));
    const total = numbers.reduce((sum, n) => sum + n.requests, 0);
    const errors = numbers.reduce((sum, n) => sum + n.errors, 0);
    const methods = route.methods ? route.methods.join(" ") : "any method";
    const head = h(
      "div",
      { class: "route-head" },
      h(
        "div",
        { class: "route-id" },
        h("h3", { class: "route-name", text: route.name }),
        h("p", { class: "route-path" }, h("code", { text: `${route.path}${route.prefix ? "/…" : ""}` }), h("span", { class: "muted", text: ` ${methods}${route.expose === "both" ? "" : ` · ${EXPOSE[route.expose] || route.expose}`}` })),
      ),
      stateBadge(route.state, routeLabel(route)),
      splitBar(route),
      h(
        "div",
        { class: "route-total" },
        h("span", { class: "route-requests", data: { requests: total }, text: count(total) }),
        h("span", { class: "muted", text: ` requests · ${windowLabel()}` }),
        h("span", { class: errors ? "route-errors bad" : "route-errors", text: ` · ${percent(total ? errors / total : 0)} errors` }),
      ),
    );
    const percentiles = view.statsAvailable;
    const table = h(
      "table",
      { class: "arms" },
      h("caption", { class: "visually-hidden", text: `${route.name}: traffic per upstream` }),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col", text: "Arm" }),
          h("th", { scope: "col", text: "Health" }),
          h("th", { scope: "col", class: "num", text: "Share" }),
          h("th", { scope: "col", class: "num", text: "Requests" }),
          h("th", { scope: "col", class: "num", text: "Errors" }),
          percentiles
            ? [h("th", { scope: "col", class: "num", text: "p50" }), h("th", { scope: "col", class: "num", text: "p95" }), h("th", { scope: "col", class: "num", text: "p99" })]
            : h("th", { scope: "col", class: "num", text: "Mean" }),
          h("th", { scope: "col", class: "trend", text: percentiles ? "p95 trend" : "Mean trend" }),
        ),
      ),
      h(
        "tbody",
        {},
        names.map((arm, i) => {
          const n = numbers[i];
          const history = view.history.get(`${route.name}\u0000${arm}`) || [];
          return h(
            "tr",
            { data: { arm } },
            h("th", { scope: "row" }, h("span", { class: `swatch ${armClass(arm)}` }), h("span", { text: arm }), arm === defaultUpstream() ? h("span", { class: "tag", text: "legacy" }) : null),
            h("td", {}, healthChip(arm)),
            h("td", { class: "num", text: total ? percent(n.requests / total, 0) : "—" }),
            h("td", { class: "num arm-requests", text: count(n.requests) }),
            h("td", { class: n.errors ? "num bad" : "num", text: n.requests ? percent(n.error_rate) : "—" }),
            percentiles
              ? [h("td", { class: "num", text: latency(n.p50) }), h("td", { class: "num", text: latency(n.p95) }), h("td", { class: "num", text: latency(n.p99) })]
              : h("td", { class: "num", text: latency(n.mean) }),
            h("td", { class: "trend" }, sparkline(history, `${arm} ${percentiles ? "p95" : "mean"} latency`)),
          );
        }),
      ),
    );
    return h("article", { class: "route", data: { route: route.name, state: route.state } }, head, h("div", { class: "table-wrap" }, table));
  }

  // --- summary tiles ----------------------------------------------------------------------
  function renderTiles(rollouts) {
    const status = view.status;
    if (!status) return;
    const routes = status.routes;
    let off = 0;
    const tally = {};
    for (const route of routes) {
      tally[route.state] = (tally[route.state] || 0) + 1;
      if (["moved", "split", "static"].includes(route.state)) off += 1;
      else if (route.state === "canary") off += route.upstreams.filter((u) => u.name !== defaultUpstream()).reduce((sum, u) => sum + u.weight, 0) / 100;
    }
    const progress = routes.length ? off / routes.length : 0;
    let total = 0;
    let legacy = 0;
    let errors = 0;
    const everyRoute = [...routes, { name: "default", upstreams: [{ name: defaultUpstream(), weight: 100 }], traffic: status.default.traffic }];
    for (const route of everyRoute) {
      for (const arm of arms(route)) {
        const n = armNumbers(route, arm);
        total += n.requests;
        errors += n.errors;
        if (arm === defaultUpstream()) legacy += n.requests;
      }
    }
    const seconds = view.statsAvailable ? STATS_WINDOW : Math.max(status.default.traffic.window_seconds || 1, 1);
    const active = rollouts.status === "fulfilled" ? (rollouts.value || []).filter((r) => !TERMINAL.has(r.state)).length : null;
    const breakdown = ["moved", "split", "static", "canary", "shadow", "legacy"].filter((k) => tally[k]).map((k) => `${tally[k]} ${k === "shadow" ? "shadowed" : k}`);
    if (!changed("tiles", progress, total, legacy, errors, active, breakdown, seconds)) return;
    fill(
      $("tiles"),
      tile("Off the monolith", percent(progress, 0), breakdown.join(" · ") || "no routes yet", ring(progress), "progress"),
      tile("Monolith share", total ? percent(legacy / total, 0) : "—", `${count(legacy)} of ${count(total)} requests · ${windowLabel()}`, null, "legacy-share"),
      tile("Requests", count(total), `${(total / seconds).toFixed(1)} per second · ${windowLabel()}`, null, "requests"),
      tile("Error rate", total ? percent(errors / total) : "—", `${count(errors)} failed (5xx) · ${windowLabel()}`, null, errors ? "errors bad" : "errors"),
      tile("Rollouts", active === null ? "—" : count(active), active === null ? "not available on this proxy" : active === 1 ? "in progress" : "in progress", null, "rollouts"),
    );
  }

  function tile(label, value, sub, figure, kind) {
    return h(
      "div",
      { class: `tile ${kind}` },
      figure,
      h("div", { class: "tile-text" }, h("p", { class: "tile-label", text: label }), h("p", { class: "tile-value", text: value }), h("p", { class: "tile-sub", text: sub })),
    );
  }

  function ring(fraction) {
    const r = 20;
    const circumference = 2 * Math.PI * r;
    const done = clamp(fraction, 0, 1) * circumference;
    return s(
      "svg",
      { class: "ring", viewBox: "0 0 48 48", width: 48, height: 48, "aria-hidden": "true" },
      s("circle", { class: "ring-track", cx: 24, cy: 24, r }),
      s("circle", { class: "ring-done", cx: 24, cy: 24, r, "stroke-dasharray": `${done.toFixed(2)} ${circumference.toFixed(2)}`, transform: "rotate(-90 24 24)" }),
    );
  }

  // --- rollouts ---------------------------------------------------------------------------
  function renderRollouts(result) {
    const container = $("rollouts");
    const note = $("rollouts-note");
    if (result.status === "rejected") {
      for (const [, entry] of view.rollouts) entry.root.remove();
      view.rollouts.clear();
      if (result.reason.status === 404 || result.reason.status === 405) {
        note.textContent = "";
        if (changed("rollouts", "unavailable")) fill(container, h("p", { class: "empty", text: "Rollouts are not available on this proxy." }));
      } else if (changed("rollouts", "error", result.reason.message)) {
        fill(container, errorBox(result.reason));
      }
      return;
    }
    view.seen.delete("rollouts");
    const list = result.value || [];
    note.textContent = "Steps advance when the analysis passes after each bake; Pause, Resume, Promote and Abort need the admin token.";
    const keep = new Set(list.map((r) => r.route));
    for (const [route, entry] of view.rollouts) {
      if (!keep.has(route)) {
        entry.root.remove();
        view.rollouts.delete(route);
      }
    }
    const empty = container.querySelector(":scope > .empty, :scope > .notice");
    if (empty) empty.remove();
    list.forEach((rollout, index) => {
      let entry = view.rollouts.get(rollout.route);
      if (!entry) {
        entry = rolloutEntry(rollout.route);
        view.rollouts.set(rollout.route, entry);
      }
      updateRollout(entry, rollout);
      if (container.children[index] !== entry.root) container.insertBefore(entry.root, container.children[index] || null);
    });
    if (!list.length) container.append(h("p", { class: "empty", text: "No rollout yet. Start one with the CLI or POST /api/v1/rollouts." }));
  }

  function rolloutEntry(route) {
    const body = h("div", { class: "rollout-body" });
    const buttons = {};
    const actions = h("div", { class: "actions", role: "group", "aria-label": `Actions on the rollout of ${route}` });
    const form = h("form", { class: "reason-form", hidden: true, novalidate: true });
    const message = h("div", { class: "result", "aria-live": "polite" });
    for (const [name, action] of Object.entries(ACTIONS)) {
      buttons[name] = h("button", {
        type: "button",
        class: name === "abort" ? "danger" : "ghost",
        data: { action: name },
        text: action.label,
        on: { click: () => openReason(entry, name) },
      });
      actions.append(buttons[name]);
    }
    const entry = { route, body, buttons, form, message, root: h("article", { class: "rollout", data: { route } }, body, actions, form, message), action: null, state: null, historyOpen: false, id: (view.nextId = (view.nextId || 0) + 1) };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      submitAction(entry);
    });
    return entry;
  }

  function openReason(entry, name) {
    const action = ACTIONS[name];
    entry.action = name;
    const input = h("input", { type: "text", name: "reason", required: true, maxlength: 500, placeholder: `why you are ${action.verb} it`, autocomplete: "off" });
    const id = `reason-${entry.id}`;
    input.id = id;
    fill(
      entry.form,
      h("div", { class: "field grow" }, h("label", { for: id, text: `Reason for ${action.verb} the rollout of ${entry.route}` }), input),
      h("button", { type: "submit", class: name === "abort" ? "danger" : "primary", text: `${action.label} rollout` }),
      h("button", { type: "button", class: "ghost", text: "Cancel", on: { click: () => closeReason(entry) } }),
    );
    entry.form.hidden = false;
    entry.message.replaceChildren();
    input.focus();
  }

  function closeReason(entry) {
    entry.form.hidden = true;
    entry.form.replaceChildren();
    entry.action = null;
  }

  async function submitAction(entry) {
    const name = entry.action;
    const input = entry.form.querySelector("input[name=reason]");
    const reason = input ? input.value.trim() : "";
    if (!reason) {
      fill(entry.message, h("div", { class: "notice error", role: "alert", text: "Give a reason: it is kept in the rollout's history." }));
      if (input) input.focus();
      return;
    }
    const buttons = entry.form.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    try {
      const rollout = await api(`/api/v1/rollouts/${encodeURIComponent(entry.route)}/${name}`, { method: "POST", body: { reason } });
      closeReason(entry);
      fill(entry.message, h("div", { class: "notice ok", role: "status", text: `Rollout of ${entry.route} ${ACTIONS[name].done}${rollout && rollout.state ? `: now ${rollout.state}` : ""}.` }));
      if (rollout && rollout.route) updateRollout(entry, rollout);
      refresh();
    } catch (error) {
      buttons.forEach((b) => (b.disabled = false));
      fill(entry.message, errorBox(error));
    }
  }

  function updateRollout(entry, rollout) {
    entry.state = rollout.state;
    for (const [name, button] of Object.entries(entry.buttons)) button.disabled = !ACTIONS[name].when.includes(rollout.state);
    if (TERMINAL.has(rollout.state) && entry.action) closeReason(entry);
    if (!changed(`rollout:${rollout.route}`, rollout, Math.floor(serverNow()))) return;
    const steps = rollout.steps || [];
    const at = Math.min(rollout.step ?? 0, Math.max(steps.length - 1, 0));
    const stepper = h(
      "ol",
      { class: "stepper", "aria-label": `Steps: ${steps.map((w) => `${w} %`).join(", ")}` },
      steps.map((weight, i) => {
        const kind = rollout.state === "succeeded" || i < at ? "done" : i === at ? "current" : "todo";
        return h("li", { class: kind, "aria-current": i === at ? "step" : null }, h("span", { class: "step-dot", "aria-hidden": "true" }), h("span", { class: "step-weight", text: `${weight} %` }));
      }),
    );
    // The step's bake: from step_started to due (its analysis), its clock stopped while paused.
    const started = rollout.step_started;
    const bake = rollout.due && started ? rollout.due - started : rollout.bake_seconds || 0;
    const stopped = rollout.state === "paused" && rollout.paused_at ? rollout.paused_at : serverNow();
    const elapsed = started ? stopped - started : 0;
    const baking = Boolean(started) && ["baking", "paused"].includes(rollout.state);
    const bakeBar = bake
      ? h(
          "div",
          { class: "bake" },
          h("div", { class: "bake-label" }, h("span", { text: "Bake" }), h("span", { class: "muted", text: baking ? `${duration(Math.min(elapsed, bake))} of ${duration(bake)}` : `${duration(bake)} per step` })),
          h(
            "div",
            { class: "meter", role: "progressbar", "aria-label": `bake of step ${at + 1}`, "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": baking ? Math.round(clamp((elapsed / bake) * 100, 0, 100)) : 0 },
            h("span", { class: "meter-fill", "width%": baking ? (elapsed / bake) * 100 : 0 }),
          ),
        )
      : null;
    const analysis = rollout.last_analysis;
    const checks = analysis
      ? h(
          "div",
          { class: "analysis" },
          h("p", { class: "analysis-head" }, h("span", { text: "Last analysis " }), h("span", { class: `chip ${analysis.passed ? "ok" : "bad"}`, text: analysis.passed ? "passed" : "failed" })),
          h(
            "ul",
            { class: "checks" },
            (analysis.checks || []).map((c) =>
              h(
                "li",
                { class: c.passed ? "pass" : "fail" },
                h("span", { class: "check-mark", "aria-hidden": "true", text: c.passed ? "✓" : "✗" }),
                h("span", { class: "visually-hidden", text: c.passed ? "passed: " : "failed: " }),
                h("span", { class: "check-name", text: c.name }),
                h("span", { class: "muted", text: ` ${formatValue(c.value)} (threshold ${formatValue(c.threshold)})` }),
                c.message ? h("span", { class: "check-message", text: ` — ${c.message}` }) : null,
              ),
            ),
          ),
        )
      : h("p", { class: "muted", text: "No analysis yet." });
    const history = rollout.history || [];
    fill(
      entry.body,
      h(
        "div",
        { class: "rollout-head" },
        h("h3", { text: rollout.route }),
        h("span", { class: "muted", text: `${rollout.from || defaultUpstream()} → ${rollout.to}` }),
        h("span", { class: `badge rollout-${rollout.state}`, data: { state: rollout.state }, text: rollout.state }),
        h("span", { class: "rollout-step", text: `step ${Math.min(at + 1, steps.length)}/${steps.length} · ${rollout.weight ?? 0} % to ${rollout.to}` }),
      ),
      stepper,
      rollout.message ? h("p", { class: "rollout-message", text: rollout.message }) : null,
      h("div", { class: "rollout-grid" }, h("div", {}, bakeBar, rollout.reason ? h("p", { class: "muted small" }, `Started by ${rollout.author || "?"} `, time(rollout.started), `: ${rollout.reason}`) : null), checks),
      history.length
        ? h(
            "details",
            { class: "history", open: entry.historyOpen, on: { toggle: (event) => (entry.historyOpen = event.currentTarget.open) } },
            h("summary", { text: `History (${history.length})` }),
            h(
              "ol",
              {},
              history
                .slice(-20)
                .reverse()
                .map((e) => h("li", {}, time(e.time), h("span", { class: "event", text: ` ${e.event}` }), e.weight !== undefined && e.weight !== null ? h("span", { class: "muted", text: ` at ${e.weight} %` }) : null, e.message ? h("span", { text: ` — ${e.message}` }) : null)),
            ),
          )
        : null,
    );
  }

  function formatValue(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(4).replace(/0+$/, "").replace(/\.$/, "");
    return String(value);
  }

  // --- the ledger ----------------------------------------------------------------------------
  function renderLedger(result) {
    const container = $("ledger");
    if (result.status === "rejected") {
      if (changed("ledger", "error", result.reason.message)) fill(container, errorBox(result.reason));
      return;
    }
    const ledger = result.value;
    const minute = Math.floor(serverNow() / 30);
    if (!changed("ledger", ledger.routes, ledger.unreadable, minute)) return;
    const versions = ledger.versions || {};
    $("ledger-note").textContent = versions.last ? `Versions ${versions.first}–${versions.last} of the route table, as the history tells it.` : "";
    if (!ledger.routes.length) {
      fill(container, h("p", { class: "empty", text: "No route has ever been in the table." }));
      return;
    }
    fill(
      container,
      h(
        "ul",
        { class: "ledger-list" },
        ledger.routes.map((route) => {
          const details = h(
            "details",
            { class: "ledger-route", data: { route: route.name }, open: view.openLedger.has(route.name) },
            h(
              "summary",
              {},
              h("span", { class: "ledger-name", text: route.name }),
              stateBadge(route.state.state, route.state.label),
              h("span", { class: "ledger-since muted" }, `since v${route.since.version} · `, time(route.since.time), ` · ${route.since.author}`),
            ),
            h("ol", { class: "timeline" }, [...route.transitions].reverse().map(transition)),
          );
          details.addEventListener("toggle", () => (details.open ? view.openLedger.add(route.name) : view.openLedger.delete(route.name)));
          return h("li", {}, details);
        }),
      ),
      ledger.unreadable && ledger.unreadable.length ? h("p", { class: "muted small", text: `Versions that no longer load here: ${ledger.unreadable.map((e) => e.version).join(", ")}.` }) : null,
    );
  }

  function transition(t) {
    return h(
      "li",
      {},
      h(
        "p",
        { class: "transition" },
        h("span", { class: "version", text: `v${t.version}` }),
        t.from ? stateBadge(t.from.state, t.from.label) : h("span", { class: "muted", text: "added" }),
        h("span", { class: "arrow", "aria-label": "to", text: "→" }),
        stateBadge(t.to.state, t.to.label),
      ),
      h("p", { class: "muted small" }, time(t.time), ` · ${t.author}`, t.reason ? h("q", { text: t.reason }) : null),
      t.evidence ? evidence(t.evidence) : null,
    );
  }

  function evidence(e) {
    const items = [];
    if (e.window) items.push(["window", duration(e.window)]);
    for (const [arm, a] of Object.entries(e.arms || {})) items.push([arm, `${count(a.requests)} req · ${percent(a.error_rate ?? (a.requests ? a.errors / a.requests : 0))} errors · p95 ${latency(a.p95)}`]);
    if (e.shadow) items.push(["shadow", `${count(e.shadow.compared)} compared · ${percent(e.shadow.rate)} differ`]);
    for (const g of e.gates || []) items.push(["gate", gateText(g)]);
    if (e.lag_seconds !== null && e.lag_seconds !== undefined) items.push(["sync lag", `${Number(e.lag_seconds).toFixed(2)} s`]);
    if (e.drift !== null && e.drift !== undefined) items.push(["drift", count(e.drift)]);
    if (!items.length) return null;
    return h("dl", { class: "evidence", "aria-label": "evidence" }, items.map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: v }))));
  }

  // --- what the monolith still serves -------------------------------------------------------
  function renderLegacy(ledger) {
    const container = $("legacy");
    let paths = null;
    let source = "";
    if (ledger.status === "fulfilled" && Array.isArray(ledger.value.legacy_paths)) {
      paths = ledger.value.legacy_paths;
      const window = ledger.value.legacy_window;
      source = `Requests the monolith answered ${window ? `in the last ${duration(window)}` : "lately"}, by path template.`;
    } else if (view.statsAvailable && view.stats && Array.isArray(view.stats.legacy_paths)) {
      paths = view.stats.legacy_paths;
      source = `Requests the monolith answered in the last ${STATS_WINDOW} s, by path template.`;
    }
    if (!changed("legacy", paths, source)) return;
    $("legacy-note").textContent = source;
    if (paths === null) {
      fill(container, h("p", { class: "empty", text: "Not available on this proxy: it does not count the monolith's paths." }));
      return;
    }
    if (!paths.length) {
      fill(container, h("p", { class: "empty", text: "The monolith answered nothing in the window." }));
      return;
    }
    const top = paths.slice(0, 12);
    const highest = Math.max(...top.map((p) => p.requests), 1);
    fill(
      container,
      h(
        "ol",
        { class: "bars" },
        top.map((p) =>
          h(
            "li",
            { class: "bar-row" },
            h("code", { class: "bar-label", title: p.template, text: p.template }),
            h("span", { class: "bar-track", "aria-hidden": "true" }, h("span", { class: "bar-fill", "width%": (p.requests / highest) * 100 })),
            h("span", { class: "bar-value", text: count(p.requests) }),
          ),
        ),
      ),
      paths.length > top.length ? h("p", { class: "muted small", text: `and ${paths.length - top.length} more templates` }) : null,
    );
  }

  // --- shadow differences -------------------------------------------------------------------
  function renderShadow(result) {
    const container = $("shadow");
    if (result.status === "rejected") {
      const status = result.reason.status;
      if (!changed("shadow", "error", status, result.reason.message)) return;
      if (status === 401) {
        $("shadow-note").textContent = "";
        fill(
          container,
          h(
            "div",
            { class: "notice locked" },
            h("p", { text: "Shadow examples are users' data: this proxy shows them with the admin token." }),
            tokenButton("Enter the admin token"),
          ),
        );
      } else if (status === 404) {
        fill(container, h("p", { class: "empty", text: "Shadow reports are not available on this proxy." }));
      } else {
        fill(container, errorBox(result.reason));
      }
      return;
    }
    const reports = result.value || [];
    if (!changed("shadow", reports)) return;
    $("shadow-note").textContent = "Copies of reads sent to the service after the monolith answered, and how the answers compare (noise learned, not configured).";
    if (!reports.length) {
      fill(container, h("p", { class: "empty", text: "No shadowed route has compared an answer yet." }));
      return;
    }
    fill(container, reports.map(shadowReport));
  }

  function shadowReport(report) {
    const failed = Object.values(report.failed || {}).reduce((a, b) => a + b, 0);
    const rateKind = report.mismatch_rate > 0.05 ? "bad" : report.mismatch_rate > 0 ? "warn" : "ok";
    return h(
      "article",
      { class: "shadow-route", data: { route: report.route } },
      h(
        "div",
        { class: "shadow-head" },
        h("h3", { text: report.route }),
        h("span", { class: `big ${rateKind}`, text: percent(report.mismatch_rate) }),
        h("span", { class: "muted", text: ` differ · ${count(report.compared)} compared · ${count(report.mismatched)} differing · ${count(failed)} failed · ${count(report.dropped)} dropped` }),
      ),
      report.fields.length
        ? h(
            "ul",
            { class: "diff-fields" },
            report.fields.map((f) => {
              const key = `${report.route}\u0000${f.field}`;
              const details = h(
                "details",
                { open: view.openShadow.has(key) },
                h("summary", {}, h("code", { text: f.field }), h("span", { class: "muted", text: ` ${f.count === 1 ? "once" : `${count(f.count)} times`} · ${percent(f.rate)}` }), h("span", { class: "bar-track small", "aria-hidden": "true" }, h("span", { class: "bar-fill warn", "width%": f.rate * 100 }))),
                f.examples.length ? examples(f.examples) : h("p", { class: "muted small", text: "No example kept." }),
              );
              details.addEventListener("toggle", () => (details.open ? view.openShadow.add(key) : view.openShadow.delete(key)));
              return h("li", {}, details);
            }),
          )
        : h("p", { class: "muted", text: report.compared ? "Every compared answer matched." : "Nothing compared yet." }),
      report.noise && report.noise.length ? h("p", { class: "muted small" }, "Noise (ignored): ", report.noise.map((n) => h("code", { class: "chip muted", text: n.field }))) : null,
    );
  }

  function examples(pairs) {
    // The same pair seen several times is shown once, with how many of the examples it is.
    const unique = new Map();
    for (const e of pairs) {
      const key = JSON.stringify([e.primary, e.candidate]);
      unique.set(key, { ...e, times: (unique.has(key) ? unique.get(key).times : 0) + 1 });
    }
    return h(
      "div",
      { class: "examples" },
      h("div", { class: "pair-head", "aria-hidden": "true" }, h("p", { class: "pair-label", text: "monolith answered" }), h("p", { class: "pair-label", text: "service answered" })),
      [...unique.values()].map((e) =>
        h(
          "div",
          { class: "pair" },
          h("pre", { "aria-label": "monolith answered", text: e.primary }),
          h("pre", { "aria-label": "service answered", text: e.candidate }),
          e.times > 1 ? h("span", { class: "times muted", text: `×${e.times}` }) : null,
        ),
      ),
    );
  }

  // --- the flip form -----------------------------------------------------------------------
  const flip = {
    route: $("flip-route"),
    to: $("flip-to"),
    split: $("flip-split"),
    sum: $("flip-split-sum"),
    reason: $("flip-reason"),
    result: $("flip-result"),
    form: $("flip-form"),
  };

  function renderFlipChoices() {
    const status = view.status;
    if (!status) return;
    const routes = status.routes.map((r) => r.name);
    const upstreams = status.upstreams.map((u) => u.name).filter((n) => n !== "static");
    if (!changed("flip-choices", routes, upstreams)) return;
    setOptions(flip.route, routes);
    setOptions(flip.to, upstreams);
    const kept = new Map([...flip.split.querySelectorAll("input")].map((i) => [i.dataset.upstream, i.value]));
    for (const label of flip.split.querySelectorAll(".weight")) label.remove();
    upstreams.forEach((name, index) => {
      const id = `flip-weight-${index}`;
      const input = h("input", { id, type: "number", min: 0, max: 100, step: 1, inputmode: "numeric", data: { upstream: name }, on: { input: showSum } });
      input.value = kept.get(name) || "";
      const label = h("label", { for: id }, h("span", { class: `swatch ${armClass(name)}`, "aria-hidden": "true" }), name);
      flip.split.insertBefore(h("div", { class: "weight" }, label, input, h("span", { class: "muted", "aria-hidden": "true", text: "%" })), flip.sum);
    });
    if (!kept.size) prefillFlip();
  }

  function setOptions(select, names) {
    const chosen = select.value;
    select.replaceChildren(...names.map((n) => h("option", { value: n, text: n })));
    if (names.includes(chosen)) select.value = chosen;
  }

  function prefillFlip() {
    const route = (view.status ? view.status.routes : []).find((r) => r.name === flip.route.value);
    if (!route) return;
    const weights = new Map(route.upstreams.map((u) => [u.name, u.weight]));
    for (const input of flip.split.querySelectorAll("input")) input.value = weights.has(input.dataset.upstream) ? String(Math.round(weights.get(input.dataset.upstream))) : "";
    const live = route.upstreams.filter((u) => u.weight > 0);
    if (live.length === 1 && live[0].name !== "static") flip.to.value = live[0].name;
    showSum();
  }

  function mode() {
    return flip.form.querySelector("input[name=flip-mode]:checked").value;
  }

  function showMode() {
    const split = mode() === "split";
    flip.split.hidden = !split;
    $("flip-to-field").hidden = split;
    showSum();
  }

  function splitWeights() {
    const weights = {};
    for (const input of flip.split.querySelectorAll("input")) {
      const value = input.value.trim();
      if (value !== "" && Number(value) > 0) weights[input.dataset.upstream] = Math.round(Number(value));
    }
    return weights;
  }

  function showSum() {
    const total = Object.values(splitWeights()).reduce((a, b) => a + b, 0);
    flip.sum.textContent = `Total ${total} %${total === 100 ? "" : " (a split must add up to 100 %)"}`;
    flip.sum.dataset.state = total === 100 ? "ok" : "warn";
  }

  function flipBody() {
    const body = { route: flip.route.value, reason: flip.reason.value.trim() };
    if (mode() === "split") body.split = splitWeights();
    else body.to = flip.to.value;
    return body;
  }

  async function sendFlip(dryRun) {
    const body = flipBody();
    if (!body.route) return;
    if (!body.reason) {
      fill(flip.result, h("div", { class: "notice error", role: "alert", text: "Give a reason: it is kept in the route table's history." }));
      flip.reason.focus();
      return;
    }
    const buttons = flip.form.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    try {
      const answer = await api(dryRun ? "/api/v1/routes/flip/dry-run" : "/api/v1/routes/flip", { method: "POST", body });
      fill(flip.result, flipAnswer(answer, dryRun));
      if (!dryRun) {
        flip.reason.value = "";
        view.seen.delete("flip-choices");
        refresh();
      }
    } catch (error) {
      fill(flip.result, errorBox(error));
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  function flipAnswer(answer, dryRun) {
    const changes = (answer.changes || []).map(describeChange);
    const gates = (answer.gates || []).map(gateText);
    const head = dryRun
      ? answer.would_commit
        ? `Would commit version ${answer.version}.`
        : `Would be refused: ${answer.refusal}`
      : `Committed version ${answer.version}.`;
    return h(
      "div",
      { class: `notice ${dryRun && !answer.would_commit ? "error" : "ok"}`, role: "status" },
      h("strong", { text: head }),
      changes.length ? h("ul", {}, changes.map((c) => h("li", { text: c }))) : h("p", { text: "Nothing would change." }),
      gates.length ? h("ul", { class: "gates" }, gates.map((g) => h("li", { text: g }))) : null,
    );
  }

  function describeChange(change) {
    const fields = Object.entries(change.fields || {}).map(([key, v]) => `${key}: ${show(v.old)} → ${show(v.new)}`);
    return `${change.kind} ${change.name} ${change.action}${fields.length ? `: ${fields.join("; ")}` : ""}`;
  }

  function show(value) {
    if (value === null || value === undefined) return "-";
    if (typeof value === "object") return Object.entries(value).map(([k, v]) => `${k}=${v}`).join(", ");
    return String(value);
  }

  flip.form.addEventListener("submit", (event) => {
    event.preventDefault();
    sendFlip(false);
  });
  $("flip-preview").addEventListener("click", () => sendFlip(true));
  flip.route.addEventListener("change", prefillFlip);
  for (const radio of flip.form.querySelectorAll("input[name=flip-mode]")) radio.addEventListener("change", showMode);

  // --- the token ---------------------------------------------------------------------------
  const panel = $("token-panel");
  const toggle = $("token-toggle");

  function openTokenPanel() {
    panel.hidden = false;
    toggle.setAttribute("aria-expanded", "true");
    $("token-input").focus();
  }

  function showToken() {
    const set = Boolean(token());
    toggle.textContent = set ? "Admin token ✓" : "Admin token";
    toggle.dataset.state = set ? "set" : "unset";
    $("token-state").textContent = set ? `A token is set for this tab; changes are recorded as “${author()}”.` : "No token set: the dashboard is read-only.";
    $("author-input").value = sessionStorage.getItem(AUTHOR_KEY) || "";
  }

  toggle.addEventListener("click", () => {
    const open = panel.hidden;
    panel.hidden = !open;
    toggle.setAttribute("aria-expanded", String(open));
    if (open) $("token-input").focus();
  });

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    const name = $("author-input").value.trim();
    if (name) sessionStorage.setItem(AUTHOR_KEY, name);
    else sessionStorage.removeItem(AUTHOR_KEY);
    $("token-input").value = "";
    panel.hidden = true;
    toggle.setAttribute("aria-expanded", "false");
    showToken();
    view.seen.delete("shadow");
    refresh();
  });

  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token-input").value = "";
    showToken();
    view.seen.delete("shadow");
    refresh();
  });

  showToken();
  showMode();
  $("poll-note").textContent = `Reads the admin API of this proxy every ${POLL_MS / 1000} s; pauses while the tab is hidden.`;
  refresh();
})();
