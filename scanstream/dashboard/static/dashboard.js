// scanstream dashboard: polls /api/panel/NAME every few seconds and draws each answer with Plotly.
// No build step, no other library; every figure comes ready-made from the server.
"use strict";

const BASE_LAYOUT = {
  autosize: true,
  margin: { l: 60, r: 24, t: 28, b: 48 },
  font: { family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 11, color: "#1d2733" },
  paper_bgcolor: "#fff",
  plot_bgcolor: "#fff",
  legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: { size: 10 } },
  xaxis: { gridcolor: "#eef1f4", automargin: true },
  yaxis: { gridcolor: "#eef1f4", automargin: true },
};
const PLOT_CONFIG = { displaylogo: false, responsive: true, displayModeBar: false };

const state = { tenant: -1, refreshMs: 5000, panels: [], refreshes: 0, status: null, timer: null, busy: false,
                again: false };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function merge(base, over) {
  // deep merge of plain objects; arrays and scalars of `over` win
  const out = Array.isArray(base) ? base.slice() : { ...base };
  for (const [k, v] of Object.entries(over || {})) {
    out[k] = v && typeof v === "object" && !Array.isArray(v) && base[k] && typeof base[k] === "object"
      ? merge(base[k], v) : v;
  }
  return out;
}

async function getJSON(url) {
  const res = await fetch(url, { cache: "no-store" });
  let body;
  try { body = await res.json(); } catch (e) { body = { error: `${res.status} ${res.statusText}` }; }
  return { ok: res.ok, status: res.status, body };
}

function banner(text) {
  const b = document.getElementById("banner");
  b.hidden = !text;
  b.textContent = text || "";
}

function buildPanels(panels) {
  const grid = document.getElementById("grid");
  for (const p of panels) {
    if (p.kind !== "chart" && p.kind !== "table") continue;
    const section = el("section", { class: "panel" + (p.wide ? " wide" : ""), id: `panel-${p.name}`, "data-panel": p.name },
      el("div", { class: "head" }, el("h2", {}, p.title),
        el("details", { class: "sql" }, el("summary", {}, "SQL"), el("pre"))),
      el("div", { class: "headline" }),
      el("div", { class: p.kind === "table" ? "list" : "chart" }),
      el("div", { class: "error" }),
      el("p", { class: "note" }, p.note));
    grid.append(section);
  }
}

function renderTable(container, table) {
  // a plain table, every cell set as text (names come from the registry: never markup); a row may
  // carry a state (its CSS class), the columns listed in `numeric` are aligned as numbers
  const numeric = new Set(table.numeric || []);
  const align = i => (numeric.has(i) ? { class: "num" } : {});
  const head = el("tr", {}, ...table.columns.map((c, i) => el("th", align(i), c)));
  const body = table.rows.map(r => el("tr", r.state ? { class: `state-${r.state.replace(/[^a-z]+/g, "-")}` } : {},
    ...r.cells.map((c, i) => el("td", align(i), c))));
  container.replaceChildren(table.rows.length
    ? el("table", {}, el("thead", {}, head), el("tbody", {}, ...body))
    : el("p", { class: "muted" }, table.empty || "no alerts yet"));
}

function renderTiles(answer) {
  const tiles = document.getElementById("tiles");
  tiles.replaceChildren(...(answer.tiles || []).map(t =>
    el("div", { class: "tile" + (t.alarm ? " alarm" : ""), title: t.hint || "" },
      el("div", { class: "label" }, t.label),
      el("div", { class: "value" }, t.value),
      el("div", { class: "hint" }, t.hint || "\u00a0"))));
}

function renderPanel(name, answer) {
  const section = document.getElementById(`panel-${name}`);
  if (!section) return;
  section.querySelector(".error").textContent = "";
  section.querySelector(".headline").textContent = answer.headline || "";
  section.querySelector("pre").textContent = (answer.sql || []).join(";\n\n") +
    `\n\n-- params: ${JSON.stringify(answer.params || {})}; ${answer.ms} ms`;
  if (answer.table) {
    renderTable(section.querySelector(".list"), answer.table);
    section.dataset.rendered = String((Number(section.dataset.rendered) || 0) + 1);
    return;
  }
  if (typeof Plotly === "undefined") return;
  const chart = section.querySelector(".chart");
  const layout = merge(BASE_LAYOUT, answer.figure.layout || {});
  // a figure with many long category labels asks for more height; the rest keep the CSS height
  chart.style.height = layout.height ? `${layout.height}px` : "";
  Plotly.react(chart, answer.figure.data || [], layout, PLOT_CONFIG);
  section.dataset.rendered = String((Number(section.dataset.rendered) || 0) + 1);
}

function panelError(name, message) {
  const section = document.getElementById(`panel-${name}`);
  if (section) section.querySelector(".error").textContent = message;
}

function renderStatus(s) {
  state.status = s;
  document.getElementById("source").textContent = `${s.source} · times in ${s.timezone}`;
  const badge = document.getElementById("writer");
  const label = s.mode === "writer" ? `writer ${s.writer}` : "reader";
  badge.textContent = label;
  badge.className = "badge " + (s.mode === "writer" ? s.writer : "reader");
  document.getElementById("updated").textContent = `updated ${s.now}`;
}

async function refresh() {
  if (state.busy) { state.again = true; return; }  // one round at a time; another right after
  clearTimeout(state.timer);
  state.busy = true;
  try {
    const st = await getJSON("/api/status");
    if (st.ok) renderStatus(st.body);
    const q = `?tenant=${state.tenant}`;
    const waiting = [];
    await Promise.all(state.panels.map(async p => {
      try {
        const r = await getJSON(`/api/panel/${p.name}${q}`);
        if (!r.ok) {
          if (r.status === 503) waiting.push(r.body.error);
          else if (p.kind !== "tiles") panelError(p.name, r.body.error || `HTTP ${r.status}`);
          return;
        }
        if (p.kind === "tiles") renderTiles(r.body);
        else renderPanel(p.name, r.body);
      } catch (e) {
        panelError(p.name, String(e));
      }
    }));
    if (typeof Plotly === "undefined") {
      banner("Plotly did not load (/vendor/plotly.min.js): install it with pip install 'scanstream[embedded]'.");
    } else {
      banner(waiting.length ? `Waiting: ${waiting[0]}` : "");
    }
    state.refreshes += 1;
    document.body.dataset.refreshes = String(state.refreshes);
  } catch (e) {
    banner(`dashboard server unreachable (${e}); retrying`);
  } finally {
    state.busy = false;
    if (state.again) { state.again = false; refresh(); }
    else state.timer = setTimeout(refresh, state.refreshMs);
  }
}

async function init() {
  const st = await getJSON("/api/status");
  if (!st.ok) { banner("cannot read /api/status"); return; }
  const s = st.body;
  state.refreshMs = Math.max(1000, (s.refresh_s || 5) * 1000);
  state.panels = s.panels;
  const params = new URLSearchParams(location.search);
  state.tenant = Number(params.get("tenant") ?? -1);
  const select = document.getElementById("tenant");
  for (const t of s.tenants) select.append(el("option", { value: String(t.id) }, `${t.id} ${t.name}`));
  select.value = String(state.tenant);
  select.addEventListener("change", () => {
    state.tenant = Number(select.value);
    const u = new URL(location.href);
    u.searchParams.set("tenant", select.value);
    history.replaceState(null, "", u);
    refresh();
  });
  renderStatus(s);
  buildPanels(s.panels);
  refresh();
}

init();
