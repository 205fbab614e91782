/* The console page: reads the gateway's admin JSON every REFRESH_MS and redraws the views.
   Everything shown goes in as text (textContent), never as markup. */
"use strict";
(() => {
  const REFRESH_MS = 2000;
  const FILTERS = ["model", "backend", "key", "status"];
  const $ = (id) => document.getElementById(id);
  let csrf = null;
  let lastConfig = "";
  let history = null, historyVersion = -1;   // sent again only when it has a new point
  let config = null, configVersion = -1;     // asked again only after a reload
  let lastTail = null;                       // redrawn at once when a filter changes

  function cell(text, label, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined || text === "" ? "—" : String(text);
    td.dataset.label = label;
    if (cls) td.className = cls;
    return td;
  }

  function row(cells, attrs) {
    const tr = document.createElement("tr");
    for (const [k, v] of Object.entries(attrs || {})) tr.dataset[k] = v;
    cells.forEach((c) => tr.appendChild(c));
    return tr;
  }

  function fill(tableId, rows) {
    const body = $(tableId).tBodies[0];
    body.replaceChildren(...rows);
  }

  function headers(tableId) {
    return Array.from($(tableId).tHead.rows[0].cells, (th) => th.textContent);
  }

  const num = (v, digits) => (v === null || v === undefined ? null : Number(v).toFixed(digits));
  const pct = (v) => (v === null || v === undefined ? null : `${(v * 100).toFixed(1)} %`);
  const secs = (v) => (v === null || v === undefined ? null : `${Number(v).toFixed(3)} s`);
  const last = (values) => { for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i]; return null; };

  async function call(url, options) {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store", ...options });
    if (response.status === 401) {
      window.location.assign("/admin/login");
      throw new Error("signed out");
    }
    return response;
  }

  async function getJSON(url) {
    const response = await call(url, { headers: { Accept: "application/json" } });
    if (response.status === 404) return null;
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }

  function chartCell(values, label, text, unit) {
    const td = cell("", label, "chart-cell");
    td.textContent = "";
    const now = text(last(values));
    const span = document.createElement("span");
    span.textContent = now === null ? "—" : now;
    td.appendChild(span);
    const known = values.filter((v) => v !== null);
    const peak = known.length ? text(Math.max(...known)) : "none";
    td.appendChild(window.Spark.line(values, `${label} over 15 minutes: now ${now === null ? "none" : now}, peak ${peak}${unit}`));
    return td;
  }

  function renderFleet(state) {
    const modelHeads = headers("models");
    fill("models", state.models.map((m) => row([
      cell(m.name, modelHeads[0]), cell(m.strategy, modelHeads[1]),
      cell(m.backends.join(", "), modelHeads[2]), cell(m.fallbacks.join(", "), modelHeads[3]),
    ], { model: m.name })));
    const h = headers("backends");
    const series_of = history.backends;
    fill("backends", state.backends.map((b) => {
      const e = b.engine;
      const engine = e === null ? null : (e.fresh
        ? `${e.queue_depth ?? "—"} · ${e.running_requests ?? "—"} · ${e.kv_cache_usage === null ? "—" : pct(e.kv_cache_usage)} (${e.age_s} s ago)`
        : `no fresh reading${e.age_s === null ? "" : ` (last ${e.age_s} s ago)`}${e.last_failure ? `: ${e.last_failure}` : ""}`);
      const series = series_of[b.name] || { rps: [], error_rate: [], ttft_p50_s: [] };
      const left = [b.ejected_for_s > 0 ? `ejected ${b.ejected_for_s} s` : null,
                    b.cooling_for_s > 0 ? `cooldown ${b.cooling_for_s} s` : null].filter(Boolean).join(", ");
      const stateCell = cell("", h[1]);
      const word = document.createElement("span");
      word.className = `state state-${b.state}`;
      word.textContent = b.state;
      stateCell.replaceChildren(word);
      return row([
        cell(b.name, h[0]), stateCell,
        cell(`${b.in_flight} / ${b.max_concurrency ?? "no limit"}`, h[2], "num"),
        cell(engine, h[3]), cell(left || "none", h[4]),
        chartCell(series.rps, h[5], (v) => num(v, 2), " per second"),
        chartCell(series.error_rate, h[6], pct, ""),
        chartCell(series.ttft_p50_s, h[7], secs, ""),
      ], { backend: b.name, state: b.state });
    }));
  }

  function renderKeys(state) {
    const h = headers("keys-table");
    const pair = (a, b) => (a === null && b === null ? null : `${a ?? "—"} / ${b ?? "—"}`);
    fill("keys-table", state.keys.map((k) => row([
      cell(k.name === "" ? "anonymous (no auth.keys)" : k.name, h[0]), cell(k.priority, h[1]), cell(k.share, h[2]),
      cell((k.models || []).join(", "), h[3]), cell(pair(k.rpm, k.tpm), h[4], "num"),
      cell(`${k.in_flight} / ${k.max_concurrency ?? "no limit"}`, h[5], "num"), cell(k.queued, h[6], "num"),
      cell(pair(k.tokens.day, k.tokens.month), h[7], "num"),
      cell(k.budget ? pair(k.budget.left_day ?? "no limit", k.budget.left_month ?? "no limit") : "no budget", h[8], "num"),
    ], { key: k.name })));
    const q = state.queue;
    const cold = q.cold > 0 ? ` ${q.cold} of them wait for a cold pool to come up.` : "";
    $("queue").textContent = `${q.waiting} request(s) waiting for a backend (at most ${q.max_size}, each up to ${q.max_wait_s} s; one class up every ${q.promote_after_s} s waited).${cold}`;
    const qh = headers("queue-table");
    fill("queue-table", q.rows.map((r) => row([
      cell(r.model, qh[0]), cell(r.priority, qh[1]), cell(r.waiting, qh[2], "num"),
      cell(`${Number(r.oldest_wait_s).toFixed(1)} s`, qh[3], "num"),
    ], { model: r.model, priority: r.priority })));
    if (q.rows.length === 0) fill("queue-table", [row([cell("Nothing is waiting for its turn.", qh[0])])]);
  }

  function syncOptions(select, values) {
    const chosen = select.value;
    const wanted = ["", ...Array.from(new Set(values)).sort()];
    if (chosen && !wanted.includes(chosen)) wanted.push(chosen);
    const have = Array.from(select.options, (o) => o.value);
    if (have.join("\u0000") === wanted.join("\u0000")) return;
    select.replaceChildren(...wanted.map((v) => {
      const o = document.createElement("option");
      o.value = v;
      o.textContent = v === "" ? "any" : v;
      return o;
    }));
    select.value = chosen;
  }

  function renderTail(lines) {
    const field = (line, name) => (line[name] === null || line[name] === undefined ? "" : String(line[name]));
    for (const name of FILTERS) {
      syncOptions($(`f-${name}`), lines.map((l) => field(l, name)).filter((v) => v !== ""));
    }
    const wanted = Object.fromEntries(FILTERS.map((n) => [n, $(`f-${n}`).value]));
    const shown = lines.filter((l) => FILTERS.every((n) => wanted[n] === "" || field(l, n) === wanted[n])).reverse();
    $("tail-count").textContent = `${shown.length} of the last ${lines.length} requests shown.`;
    const h = headers("tail-table");
    fill("tail-table", shown.map((l) => row([
      cell(new Date(l.time * 1000).toLocaleTimeString(), h[0], "num"), cell(l.request_id, h[1]),
      cell(l.model || l.path, h[2]), cell(l.backend, h[3]), cell(l.key, h[4]), cell(l.status, h[5], "num"),
      cell(secs(l.duration_s), h[6], "num"), cell(secs(l.ttft_s), h[7], "num"),
      cell(l.prompt_tokens === null && l.completion_tokens === null ? null : `${l.prompt_tokens ?? "—"} / ${l.completion_tokens ?? "—"}`, h[8], "num"),
      cell(l.error || l.aborted, h[9]),
    ], { requestId: l.request_id || "" })));
  }

  function describeReload(result) {
    if (!result) return "No reload since the gateway started.";
    const at = new Date(result.at * 1000).toLocaleTimeString();
    if (result.status === "ok") {
      const restart = result.restart_required.length ? ` (needs a restart to take effect: ${result.restart_required.join(", ")})` : "";
      return `Last reload at ${at}: applied${restart}.`;
    }
    return `Last reload at ${at}: refused, nothing changed: ${result.problems.join("; ")}`;
  }

  function renderConfig(state, config) {
    $("reload-last").textContent = describeReload(state.last_reload);
    $("reload-last").className = state.last_reload && state.last_reload.status !== "ok" ? "error" : "";
    const text = config === null ? "" : JSON.stringify(config.active, null, 2);
    if (text !== lastConfig) {
      $("config-text").textContent = text;
      lastConfig = text;
    }
  }

  let failing = false;
  async function refresh() {
    const state = await getJSON(`/admin/console/state?history=${historyVersion}`);
    if (state.history !== null) [history, historyVersion] = [state.history, state.history_version];
    if (state.config_version !== configVersion) {
      config = await getJSON("/admin/config");
      configVersion = state.config_version;
    }
    renderFleet(state);
    renderKeys(state);
    lastTail = state.tail;
    renderTail(state.tail);
    renderConfig(state, config);
    const workers = state.workers > 1 ? ` (${state.workers} workers)` : "";
    if (failing || $("status").textContent !== `Live${workers}`) $("status").textContent = `Live${workers}`;
    failing = false;
    $("updated").textContent = `Updated ${new Date(state.at * 1000).toLocaleTimeString()}`;
  }

  async function tick() {
    try {
      await refresh();
    } catch (err) {
      failing = true;
      $("status").textContent = `Cannot read the gateway: ${err.message}`;
    }
    window.setTimeout(tick, REFRESH_MS);
  }

  async function post(url) {
    return call(url, { method: "POST", headers: { "X-CSRF-Token": csrf, Accept: "application/json" } });
  }

  async function reload() {
    const button = $("reload");
    button.disabled = true;
    $("reload-result").textContent = "Reloading…";
    try {
      const response = await post("/admin/reload");
      const body = await response.json();
      $("reload-result").textContent = body.status ? describeReload(body) : `Reload failed: ${body.error ? body.error.message : response.status}`;
      $("reload-result").className = body.status === "ok" ? "ok" : "error";
      await refresh();
    } catch (err) {
      $("reload-result").textContent = `Reload failed: ${err.message}`;
      $("reload-result").className = "error";
    } finally {
      button.disabled = false;
    }
  }

  async function signOut() {
    try { await post("/admin/logout"); } finally { window.location.assign("/admin/login"); }
  }

  async function start() {
    const session = await getJSON("/admin/console/session");
    csrf = session.csrf_token;
    $("reload").addEventListener("click", reload);
    $("signout").addEventListener("click", signOut);
    $("filters").addEventListener("change", () => { if (lastTail) renderTail(lastTail); });
    $("filters").addEventListener("submit", (e) => e.preventDefault());
    tick();
  }

  start().catch((err) => { $("status").textContent = `Cannot start: ${err.message}`; });
})();
