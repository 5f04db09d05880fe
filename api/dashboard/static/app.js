// peftsearch dashboard: a single page over the public /v1 API, with the key the user pastes. Vanilla JS, no build
// step; plots are plain SVG. Views: #/ (jobs), #/jobs/<id> (one job, polled while it runs), #/new, #/datasets.
"use strict";

// store/models.py: STATUSES; queued and STARTED; FINAL
const STATUSES = ["queued", "validating", "running", "cancelling", "succeeded", "failed", "cancelled"];
const CANCELLABLE = new Set(["queued", "validating", "running"]);
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const KINDS = ["lora", "adapter", "prefix"];
const PHASE_COLORS = { learn: "#805ad5", estimate: "#c05621", warmup: "#b7791f", search: "#2b6cb0", retrain: "#1f8a4c" };
const KEY_STORE = "peftsearch.key";
let view = 0; // bumped on every navigation: a poller of an older view stops

// ---------------------------------------------------------------------------------------------------- DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  return fill(el, attrs, children);
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  return fill(el, attrs, children);
}

function fill(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const $ = (selector, root = document) => root.querySelector(selector);
const main = () => $("#view");

// ----------------------------------------------------------------------------------------------------- formatting

const int = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const num = (x, digits = 4) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const compact = (n) => (n >= 1e6 ? (n / 1e6).toFixed(2) + "M" : n >= 1e4 ? (n / 1e3).toFixed(1) + "k" : int(n));

function seconds(x) {
  if (x === null || x === undefined) return "–";
  if (x < 90) return `${Math.round(x)} s`;
  if (x < 5400) return `${Math.round(x / 60)} min`;
  return `${(x / 3600).toFixed(1)} h`;
}

function age(iso) {
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

const when = (iso) => (iso ? new Date(iso).toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit",
  minute: "2-digit", second: "2-digit" }) : "–");
const score = (x) => (x !== 0 && Math.abs(x) < 1e-3 ? x.toExponential(2) : x.toPrecision(3));
const bytes = (n) => (n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : (n / 1024).toFixed(1) + " KiB");
const badge = (status) => h("span", { class: `badge ${status}`, "data-status": status }, status);

// ------------------------------------------------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, body) {
    super(body.message);
    Object.assign(this, { status, code: body.code, param: body.param });
  }
}

async function api(path, { method = "GET", body, headers = {}, raw = false } = {}) {
  const init = { method, headers: { ...headers } };
  const key = localStorage.getItem(KEY_STORE);
  if (key) init.headers.Authorization = `Bearer ${key}`;
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init); // relative to the page: works behind a path prefix too
  } catch (e) {
    throw new ApiError(0, { code: "network", message: `the server did not answer (${e.message})` });
  }
  if (!response.ok) {
    let error = { code: `http_${response.status}`, message: response.statusText, param: null };
    try {
      error = (await response.json()).error || error;
    } catch (_) { /* not the JSON envelope: keep the status text */ }
    if (response.status === 401) keyState(error.message, "error");
    throw new ApiError(response.status, error);
  }
  return raw ? response : response.json();
}

function newIdempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

// Repeats `task` until the view changes or it returns false; slower after errors, which it shows in `status`.
function poll(task, everyMs, status) {
  const mine = view;
  let delay = everyMs;
  const tick = async () => {
    if (mine !== view) return;
    let again = true;
    try {
      again = (await task()) !== false;
      delay = everyMs;
      if (status) status.textContent = "";
    } catch (e) {
      again = e.status !== 401 && e.status !== 404; // a new key re-renders the view; a missing job stays missing
      delay = Math.min(delay * 2, 15000);
      if (status) status.textContent = again ? `${e.message}; retrying in ${Math.round(delay / 1000)} s` : e.message;
    }
    if (again && mine === view) setTimeout(tick, delay);
  };
  return tick();
}

// ------------------------------------------------------------------------------------------------------- the key

function keyState(text, kind) {
  const el = $("#key-state");
  el.textContent = text;
  el.className = kind === "error" ? "error" : "muted";
}

async function useKey(event) {
  event.preventDefault();
  const value = $("#key").value.trim();
  if (!value) {
    localStorage.removeItem(KEY_STORE);
    keyState("no key", "error");
    return;
  }
  localStorage.setItem(KEY_STORE, value);
  try {
    await api("v1/models");
    keyState("key accepted", "ok");
    route();
  } catch (e) {
    if (e.status !== 401) keyState(e.message, "error");
  }
}

function needKey() {
  if (localStorage.getItem(KEY_STORE)) return false;
  main().replaceChildren(h("div", { class: "notice" },
    "Paste an API key in the box at the top right. Make one on the server with ",
    h("code", {}, "peftsearch keys create --owner you"), "."));
  return true;
}

// ------------------------------------------------------------------------------------------------------- routing

function route() {
  view += 1;
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const [page, id] = path.split("/");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("nav a[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === (page === "jobs" && id ? "jobs" : page || "jobs"));
  }
  if (needKey()) return;
  if (page === "jobs" && id) jobView(decodeURIComponent(id));
  else if (page === "new") newJobView(params).catch((e) => main().replaceChildren(h("div", { class: "notice error" }, e.message)));
  else if (page === "datasets") datasetsView();
  else jobsView(params);
}

async function datasetNames() {
  const names = {};
  try {
    for (const d of (await api("v1/datasets?limit=100")).data) names[d.id] = d.name;
  } catch (_) { /* names are a nicety: ids still show */ }
  return names;
}

// ----------------------------------------------------------------------------------------------------- jobs list

function jobsView(params) {
  const status = params.get("status") || "";
  const filter = h("select", { id: "status-filter", "aria-label": "status filter", onchange: (e) => {
    location.hash = e.target.value ? `#/?status=${e.target.value}` : "#/";
  } }, h("option", { value: "" }, "all statuses"), STATUSES.map((st) => h("option", { value: st }, st)));
  filter.value = status;
  const body = h("tbody");
  const more = h("button", { class: "secondary", hidden: true }, "Load more");
  const state = h("span", { class: "error" });
  main().replaceChildren(h("div", { class: "card" },
    h("div", { class: "row spread" }, h("h1", {}, "Jobs"),
      h("div", { class: "row" }, state, filter, h("a", { href: "#/new" }, h("button", {}, "New job")))),
    h("table", { id: "jobs" }, h("thead", {}, h("tr", {},
      ["Job", "Status", "Model", "Dataset", "Budget"].map((t) => h("th", {}, t)),
      h("th", {}, "Metric"), h("th", { class: "num" }, "Params"), h("th", {}, "Progress"), h("th", {}, "Age"))),
    body),
    h("div", { class: "row", style: "margin-top:10px" }, more)));

  let names = {};
  let next = null;
  let paused = false;
  const query = (after) => `v1/jobs?limit=50${status ? `&status=${status}` : ""}${after ? `&after=${after}` : ""}`;
  const rows = (jobs) => jobs.map((job) => h("tr", { "data-job": job.id, style: "cursor:pointer",
    onclick: () => { location.hash = `#/jobs/${job.id}`; } },
  h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "mono" }, job.id)),
  h("td", {}, badge(job.status)),
  h("td", {}, job.model),
  h("td", { title: job.dataset_id }, names[job.dataset_id] || h("span", { class: "mono" }, job.dataset_id)),
  h("td", {}, String(job.budget)),
  h("td", {}, job.metric === null ? "–" : `${job.metric_name} ${num(job.metric)}`),
  h("td", { class: "num" }, int(job.trainable_params)),
  h("td", {}, progressText(job)),
  h("td", { title: when(job.created_at) }, age(job.created_at))));

  more.addEventListener("click", async () => {
    paused = true; // later pages are not refreshed: reload to resume
    try {
      const page = await api(query(next));
      body.append(...rows(page.data));
      next = page.next;
      more.hidden = !next;
    } catch (e) {
      state.textContent = e.message;
    }
  });

  poll(async () => {
    if (paused) return true;
    if (!Object.keys(names).length) names = await datasetNames();
    const page = await api(query());
    next = page.next;
    more.hidden = !next;
    body.replaceChildren(...(page.data.length ? rows(page.data)
      : [h("tr", {}, h("td", { colspan: 9, class: "empty" }, status ? `No ${status} jobs.` : "No jobs yet: submit one.")) ]));
  }, 3000, state);
}

function progressText(job) {
  if (!job.phase) return "–";
  if (job.phase === "done") return "done";
  const where = job.round ? `${job.phase} · round ${job.round}/${job.rounds}` : job.phase;
  return FINAL.has(job.status) ? `stopped in ${where}` : where;
}

// ------------------------------------------------------------------------------------------------------ one job

function jobView(id) {
  const lossKey = `peftsearch.loss.${id}`;
  const state = { job: null, events: [], rounds: [], roundEvents: -1, names: {},
    loss: JSON.parse(sessionStorage.getItem(lossKey) || "[]") };
  const status = h("span", { class: "error" });
  const cancel = h("button", { class: "danger", id: "cancel", disabled: true }, "Cancel job");
  const download = h("button", { id: "download", disabled: true }, "Download adapter");
  const downloadState = h("span", { class: "hint", id: "download-state" });
  const sections = Object.fromEntries(["head", "progress", "result", "loss", "trajectory", "front", "heatmap",
    "rounds", "events"].map((name) => [name, h("div", { id: `job-${name}` })]));
  main().replaceChildren(
    h("div", { class: "card" },
      h("div", { class: "row spread" },
        h("div", {}, h("a", { href: "#/" }, "← jobs"), h("h1", { class: "mono" }, id)),
        h("div", { class: "row" }, status, downloadState, cancel, download)),
      sections.head),
    h("div", { class: "card" }, h("h2", {}, "Progress"), sections.progress),
    sections.result,
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h2", {}, "Training loss"), sections.loss),
      h("div", { class: "card" }, h("h2", {}, "Pruning trajectory"), sections.trajectory)),
    h("div", { style: "height:16px" }),
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h2", {}, "Pareto front (validation split)"), sections.front),
      h("div", { class: "card" }, h("h2", {}, "Chosen configuration (layer × module type)"), sections.heatmap)),
    h("div", { class: "card" }, h("h2", {}, "Rounds"), sections.rounds),
    h("div", { class: "card" }, h("h2", {}, "Events"), sections.events));

  let armed = null;
  cancel.addEventListener("click", async () => {
    if (!armed) { // a second click within 4 s confirms
      cancel.textContent = "Click again to cancel";
      armed = setTimeout(() => { armed = null; cancel.textContent = "Cancel job"; }, 4000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    cancel.textContent = "Cancel job";
    try {
      state.job = await api(`v1/jobs/${id}/cancel`, { method: "POST" });
      render();
    } catch (e) {
      status.textContent = e.message;
    }
  });
  download.addEventListener("click", () => downloadArtifact(state.job, downloadState));

  const render = () => {
    const job = state.job;
    cancel.disabled = !CANCELLABLE.has(job.status);
    download.disabled = !job.artifact;
    sections.head.replaceChildren(jobFacts(job, state.names));
    sections.progress.replaceChildren(progressPanel(job));
    sections.result.replaceChildren(...(job.result || job.error ? [resultPanel(job)] : []));
    sections.loss.replaceChildren(lossChart(state.loss, state.rounds));
    sections.trajectory.replaceChildren(trajectoryChart(state.rounds, job));
    sections.front.replaceChildren(frontChart(job));
    sections.heatmap.replaceChildren(heatMap(job.result && job.result.configuration));
    sections.rounds.replaceChildren(roundsTable(state.rounds, job));
    sections.events.replaceChildren(eventsTable(state.events));
  };

  poll(async () => {
    if (!state.job) state.names = await datasetNames();
    const job = await api(`v1/jobs/${id}`);
    state.job = job;
    const p = job.progress;
    const last = state.loss[state.loss.length - 1];
    if (p && p.loss !== null && (!last || last.t !== p.elapsed_s)) {
      state.loss.push({ t: p.elapsed_s, loss: p.loss, phase: p.phase });
      sessionStorage.setItem(lossKey, JSON.stringify(state.loss.slice(-2000)));
    }
    for (let page = null; ;) { // every event after the last one seen
      const after = state.events.length ? state.events[state.events.length - 1].id : null;
      page = await api(`v1/jobs/${id}/events?limit=100${after === null ? "" : `&after=${after}`}`);
      state.events.push(...page.data);
      if (!page.next) break;
    }
    const roundEvents = state.events.filter((e) => e.kind === "round").length;
    if (roundEvents !== state.roundEvents) {
      state.rounds = (await api(`v1/jobs/${id}/rounds`)).data;
      state.roundEvents = roundEvents;
    }
    render();
    return !FINAL.has(job.status);
  }, 1500, status);
}

function facts(pairs) {
  return h("div", { class: "facts" }, pairs.filter(Boolean).map(([label, value, attrs]) =>
    h("div", attrs || {}, h("span", {}, label), h("b", {}, value))));
}

function jobFacts(job, names) {
  return h("div", {},
    h("div", { class: "row", style: "margin:6px 0 12px" }, badge(job.status),
      h("span", { class: "muted" }, `attempt ${job.attempt} · created ${age(job.created_at)}`)),
    facts([["model", job.model], ["dataset", names[job.dataset_id] || job.dataset_id], ["budget", String(job.budget)],
      ["created", when(job.created_at)], ["started", when(job.started_at)], ["finished", when(job.finished_at)]]),
    Object.keys(job.search || {}).length
      ? h("div", { style: "margin-top:10px" }, h("span", { class: "hint" }, "search overrides "),
        h("code", {}, JSON.stringify(job.search)))
      : null);
}

function progressPanel(job) {
  const p = job.progress;
  if (!p) return h("div", { class: "muted" }, job.status !== "queued" ? "No progress yet." :
    "Queued: waiting for a worker." + (job.estimate_s == null ? "" :
      ` Once one takes it, about ${seconds(job.estimate_s)} at most (the pace of this server's earlier jobs on ${job.model}).`));
  const share = p.steps ? Math.min(1, p.step / p.steps) : FINAL.has(job.status) ? 1 : 0;
  return h("div", { id: "progress", "data-phase": p.phase },
    h("div", { class: "row spread" }, h("b", {}, p.phase + (p.round ? ` · round ${p.round}/${p.rounds}` : "")),
      h("span", { class: "muted" }, p.message)),
    h("div", { class: "bar" }, h("div", { style: `width:${(share * 100).toFixed(1)}%` })),
    facts([["step", p.steps ? `${int(p.step)} / ${int(p.steps)}` : "–"], ["loss", num(p.loss)],
      ["validation metric", num(p.metric)], ["trainable params", int(p.trainable_params)],
      ["elapsed", seconds(p.elapsed_s)], ["time left (estimate)", FINAL.has(job.status) ? "–" : seconds(p.eta_s)]]));
}

function resultPanel(job) {
  if (job.error) {
    return h("div", { class: "card" }, h("h2", {}, "Error"),
      h("div", { class: "error", id: "job-error" }, `${job.error.code}: ${job.error.message}`));
  }
  const r = job.result;
  const others = Object.entries(r.metrics).filter(([name]) => name !== r.metric_name);
  return h("div", { class: "card", id: "result" }, h("h2", {}, "Result"), facts([
    [`dev ${r.metric_name}`, num(r.metric), { id: "result-metric" }],
    ...others.map(([name, value]) => [name, num(value)]),
    ["trainable params", `${int(r.trainable_params)} of ${int(r.budget_params)}`],
    ["share of backbone", `${((100 * r.trainable_params) / r.backbone_params_before).toFixed(3)} %`],
    ["classifier head", int(r.head_params)],
    ["backbone params", r.backbone_params === r.backbone_params_before ? int(r.backbone_params)
      : `${int(r.backbone_params)} (was ${int(r.backbone_params_before)})`],
    ["pruned layers", r.pruned_layers.length ? r.pruned_layers.join(", ") : "none"],
    ["search / retrain", `${seconds(r.search_wall_s)} / ${seconds(r.retrain_wall_s)}`],
    ["peak memory", `${Math.round(r.peak_memory_mb)} MB`], ["device", r.device],
    job.artifact && ["archive", `${bytes(job.artifact.size_bytes)}, sha256 ${job.artifact.sha256.slice(0, 12)}…`],
  ]));
}

async function downloadArtifact(job, state) {
  state.textContent = "downloading…";
  try {
    const response = await api(job.artifact.url.replace(/^\//, ""), { raw: true });
    const blob = await response.blob();
    let check = "";
    if (crypto.subtle) { // only in a secure context (https or localhost)
      const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
      const hex = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
      if (hex !== response.headers.get("X-Checksum-SHA256")) throw new Error("the archive's sha256 does not match");
      check = ", sha256 verified";
    }
    const link = h("a", { href: URL.createObjectURL(blob), download: `${job.id}.tar.gz` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    state.textContent = `${job.id}.tar.gz (${bytes(blob.size)}${check})`;
  } catch (e) {
    state.textContent = e.message;
    state.className = "error";
  }
}

// -------------------------------------------------------------------------------------------------------- charts

const W = 520, H = 240, M = { top: 14, right: 56, bottom: 34, left: 58 };

function ticks(lo, hi, count = 5) {
  if (hi === lo) return [lo];
  const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / count)));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((st) => (hi - lo) / st <= count) || step * 10;
  const out = [];
  for (let v = Math.ceil(lo / nice) * nice; v <= hi + nice * 1e-9; v += nice) out.push(+v.toPrecision(12));
  return out;
}

function scale(lo, hi, from, to) {
  if (hi === lo) { lo -= 1; hi += 1; }
  return (v) => from + ((v - lo) / (hi - lo)) * (to - from);
}

function frame(xs, xLabel, yLabel, y2Label) {
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img" });
  svg.append(
    s("text", { x: M.left + (W - M.left - M.right) / 2, y: H - 4, "text-anchor": "middle" }, xLabel),
    s("text", { x: 12, y: M.top + (H - M.top - M.bottom) / 2, "text-anchor": "middle",
      transform: `rotate(-90 12 ${M.top + (H - M.top - M.bottom) / 2})` }, yLabel));
  if (y2Label) {
    const y = M.top + (H - M.top - M.bottom) / 2;
    svg.append(s("text", { x: W - 8, y, "text-anchor": "middle", transform: `rotate(90 ${W - 8} ${y})` }, y2Label));
  }
  return svg;
}

function axis(svg, values, at, fmt, side) {
  for (const v of values) {
    const p = at(v);
    if (side === "bottom") {
      svg.append(s("line", { class: "axis", x1: p, x2: p, y1: H - M.bottom, y2: H - M.bottom + 4 }),
        s("text", { x: p, y: H - M.bottom + 16, "text-anchor": "middle" }, fmt(v)));
    } else if (side === "left") {
      svg.append(s("line", { class: "gridline", x1: M.left, x2: W - M.right, y1: p, y2: p }),
        s("text", { x: M.left - 6, y: p + 4, "text-anchor": "end" }, fmt(v)));
    } else {
      svg.append(s("text", { x: W - M.right + 6, y: p + 4, "text-anchor": "start" }, fmt(v)));
    }
  }
  svg.append(s("line", { class: "axis", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }));
}

const line = (points, color, attrs = {}) => s("polyline", { fill: "none", stroke: color, "stroke-width": 2,
  "stroke-linejoin": "round", points: points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "), ...attrs });
const dots = (points, color, cls) => points.map(([x, y, title]) => s("circle", { cx: x, cy: y, r: 3.5, fill: color,
  class: cls }, title ? s("title", {}, title) : null));
const legend = (items) => h("div", { class: "legend" }, items.map(([color, text]) =>
  h("span", {}, h("i", { style: `background:${color}` }), text)));

function lossChart(samples, rounds) {
  // The API keeps only a job's latest loss, so the curve is what this page saw while polling; a job that ended
  // before the page was opened shows its rounds' training loss instead, as does one the page saw too briefly to
  // draw a line of any phase (a single sample per phase would be lone dots).
  const byPhase = new Map();
  for (const p of samples) byPhase.set(p.phase, [...(byPhase.get(p.phase) || []), p]);
  if ([...byPhase.values()].some((pts) => pts.length > 1)) {
    const xs = samples.map((p) => p.t), ys = samples.map((p) => p.loss);
    const pad = Math.max((Math.max(...ys) - Math.min(...ys)) * 0.1, 0.01);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys) - pad, Math.max(...ys) + pad];
    const x = scale(x0, x1, M.left, W - M.right), y = scale(y0, y1, H - M.bottom, M.top);
    const svg = frame(xs, "seconds since the search started", "loss");
    axis(svg, ticks(y0, y1), y, (v) => v.toFixed(y1 - y0 < 0.1 ? 3 : 2), "left");
    axis(svg, ticks(x0, x1), x, (v) => String(Math.round(v)), "bottom");
    const phases = [...byPhase.keys()];
    for (const phase of phases) {
      const pts = byPhase.get(phase).map((p) => [x(p.t), y(p.loss)]);
      const color = PHASE_COLORS[phase] || "#555";
      svg.append(pts.length > 1 ? line(pts, color, { class: "loss-line", "data-phase": phase }) : dots(pts, color)[0]);
    }
    return h("div", { id: "loss-chart", "data-points": samples.length }, svg,
      legend(phases.map((ph) => [PHASE_COLORS[ph] || "#555", ph])),
      h("div", { class: "hint" }, "Sampled by this page while the job ran (the API keeps only the latest loss)."));
  }
  const per = rounds.filter((r) => r.train_loss !== null);
  if (!per.length) return h("div", { class: "empty", id: "loss-chart" }, "No loss yet: the curve fills in while the job trains.");
  const xs = per.map((r) => r.round), ys = per.map((r) => r.train_loss);
  const x = scale(Math.min(...xs) - 0.5, Math.max(...xs) + 0.5, M.left, W - M.right);
  const y = scale(Math.min(0, ...ys), Math.max(...ys) * 1.1, H - M.bottom, M.top);
  const svg = frame(xs, "search round", "training loss");
  axis(svg, ticks(Math.min(0, ...ys), Math.max(...ys) * 1.1), y, (v) => v.toFixed(2), "left");
  axis(svg, xs, x, String, "bottom");
  const pts = per.map((r) => [x(r.round), y(r.train_loss), `round ${r.round}: ${num(r.train_loss)}`]);
  svg.append(line(pts, PHASE_COLORS.search), ...dots(pts, PHASE_COLORS.search));
  return h("div", { id: "loss-chart", "data-points": per.length }, svg,
    h("div", { class: "hint" }, "Mean training loss per search round (the job ended before this page sampled it)."));
}

// Why a job has no rounds: once it has succeeded, the result says (its supernet never learned the task, so the
// search kept its prior); before, a search past its rounds ended without one, and its phase event says why. The
// trajectory tells it in full, the other sections point to it.
const priorNote = (job) => job.result?.configuration?.prior;
const PAST_SEARCH = new Set(["retrain", "evaluate", "export", "done"]);  // pruning.result.PHASES after "search"

function noRounds(job, waiting, id, full = false) {
  const prior = priorNote(job);
  const ended = prior || PAST_SEARCH.has(job.progress?.phase);
  const text = !ended ? waiting : !full ? "No pruning rounds (see the trajectory)."
    : prior ? `No pruning rounds: ${prior}.` : "The search ended without a pruning round: the events say why.";
  return h("div", { class: "empty", ...(id ? { id } : {}) }, text);
}

function trajectoryChart(rounds, job) {
  if (!rounds.length) return noRounds(job, "No search round has finished yet.", "trajectory", true);
  const xs = rounds.map((r) => r.round);
  const params = rounds.flatMap((r) => [r.trainable_params, r.target_params]);
  const budget = job.result ? job.result.budget_params : null;
  if (budget) params.push(budget);
  const metrics = rounds.map((r) => r.metric).filter((m) => m !== null);
  const x = scale(Math.min(...xs) - 0.5, Math.max(...xs) + 0.5, M.left, W - M.right);
  const pHi = Math.max(...params) * 1.08;
  const y = scale(0, pHi, H - M.bottom, M.top);
  const svg = frame(xs, "search round", "trainable params", metrics.length ? `validation ${rounds[0].metric_name} before removal` : null);
  axis(svg, ticks(0, pHi), y, compact, "left");
  axis(svg, xs, x, String, "bottom");
  if (budget) {
    svg.append(s("line", { x1: M.left, x2: W - M.right, y1: y(budget), y2: y(budget), stroke: "#c23b3b",
      "stroke-dasharray": "5 4" }), s("text", { x: W - M.right - 4, y: y(budget) - 5, "text-anchor": "end" }, "budget"));
  }
  const target = rounds.map((r) => [x(r.round), y(r.target_params)]);
  const left = rounds.map((r) => [x(r.round), y(r.trainable_params), `round ${r.round}: ${int(r.trainable_params)} params`]);
  svg.append(line(target, "#9aa7b4", { "stroke-dasharray": "3 3", "stroke-width": 1.5 }),
    line(left, "#2f5d8a"), ...dots(left, "#2f5d8a", "params-point"));
  const items = [["#2f5d8a", "params left"], ["#9aa7b4", "round target"]];
  if (metrics.length) {
    const mLo = Math.min(...metrics), mHi = Math.max(...metrics);
    const pad = Math.max((mHi - mLo) * 0.15, 0.01);
    const ym = scale(mLo - pad, mHi + pad, H - M.bottom, M.top);
    axis(svg, ticks(mLo - pad, mHi + pad, 4), ym, (v) => v.toFixed(3), "right");
    const pts = rounds.filter((r) => r.metric !== null)
      .map((r) => [x(r.round), ym(r.metric), `round ${r.round}, before its removals: ${r.metric_name} ${num(r.metric)}`]);
    svg.append(line(pts, "#dd6b20"), ...dots(pts, "#dd6b20", "metric-point"));
    items.push(["#dd6b20", `validation ${rounds[0].metric_name} at the round's start, before its removals (right axis)`]);
  }
  if (budget) items.push(["#c23b3b", `budget ${int(budget)}`]);
  return h("div", { id: "trajectory" }, svg, legend(items));
}

// The configurations the search passed through (params, validation metric with the supernet's weights), the
// ones no other beats with fewer parameters joined, the one retrained marked.
// pruning.result.RemovedUnit.label's: a whole unit, or the LoRA projection that shrank and its ranks
const removedLabel = (u) => (u.role ? `${u.unit} ${u.role} ${u.ranks[0]}->${u.ranks[1]}` : u.unit);

function frontChart(job) {
  const front = (job.result?.front || []).filter((p) => p.metric !== null);
  if (!front.length) {
    return noRounds(job, job.result ? "This search measured no configuration on a validation split."
      : "The front appears when the job has succeeded.", "front");
  }
  const ps = front.map((p) => p.params), ms = front.map((p) => p.metric);
  const pad = Math.max((Math.max(...ms) - Math.min(...ms)) * 0.15, 0.01);
  const x = scale(0, Math.max(...ps) * 1.08, M.left, W - M.right);
  const y = scale(Math.min(...ms) - pad, Math.max(...ms) + pad, H - M.bottom, M.top);
  const name = job.result.metric_name;
  const svg = frame(ps, "trainable params", `validation ${name}`);
  axis(svg, ticks(Math.min(...ms) - pad, Math.max(...ms) + pad, 4), y, (v) => v.toFixed(3), "left");
  axis(svg, ticks(0, Math.max(...ps) * 1.08, 4), x, compact, "bottom");
  const title = (p) => `${p.after_round ? `after round ${p.after_round}` : "the whole supernet"}: ` +
    `${int(p.params)} params, ${name} ${num(p.metric)}${p.chosen ? " (chosen)" : ""}`;
  const on = front.filter((p) => p.on_front).sort((a, b) => a.params - b.params);
  svg.append(line(on.map((p) => [x(p.params), y(p.metric)]), "#dd6b20"),
    ...front.map((p) => s("circle", { cx: x(p.params), cy: y(p.metric), r: p.chosen ? 6 : 3.5,
      fill: p.on_front ? "#dd6b20" : "#9aa7b4", stroke: p.chosen ? "#c23b3b" : "none", "stroke-width": 2,
      class: `front-point${p.chosen ? " chosen" : ""}` }, s("title", {}, title(p)))));
  return h("div", { id: "front" }, svg, legend([["#dd6b20", "on the front"], ["#9aa7b4", "dominated"],
    ["#c23b3b", "chosen (retrained)"]]));
}

function cellOf(kind, module) {
  if (!module) return null;
  if (kind === "lora") {
    const ranks = Object.entries(module.ranks || {});
    return { value: ranks.reduce((sum, [, r]) => sum + r, 0), text: ranks.map(([p, r]) => `${p} r${r}`).join(" · ") };
  }
  if (kind === "adapter") return { value: module.size, text: `size ${module.size}` };
  if (kind === "prefix") return { value: module.length, text: `length ${module.length}` };
  return { value: 1, text: JSON.stringify(module) };
}

function heatMap(config) {
  if (!config) return h("div", { class: "empty", id: "heatmap" }, "Shown once the job has succeeded.");
  const kinds = (config.space && config.space.types) || KINDS;
  const cells = config.layers.map((entry) => kinds.map((kind) => cellOf(kind, entry.modules[kind])));
  const max = kinds.map((_, k) => Math.max(1, ...cells.map((row) => (row[k] ? row[k].value : 0))));
  const projections = config.layers.reduce((n, entry) => n + Object.keys(entry.modules.lora?.ranks || {}).length, 0);
  const color = (t) => { // light to dark blue
    const mix = (a, b) => Math.round(a + (b - a) * t);
    return `rgb(${mix(222, 47)},${mix(234, 93)},${mix(246, 138)})`;
  };
  return h("div", { id: "heatmap" },
    h("table", { class: "heat" },
      h("thead", {}, h("tr", {}, h("th", {}, "layer"), kinds.map((k) => h("th", {}, k)))),
      h("tbody", {}, config.layers.map((entry, i) => h("tr", { "data-layer": entry.layer },
        h("th", {}, String(entry.layer)),
        cells[i].map((cell, k) => (cell
          ? h("td", { style: `background:${color(0.25 + 0.75 * (cell.value / max[k]))};color:${cell.value / max[k] > 0.45 ? "#fff" : "#1d2733"}`,
            "data-kind": kinds[k], title: `${kinds[k]} in layer ${entry.layer}: ${cell.text}` }, cell.text)
          : h("td", { class: "off", "data-kind": kinds[k] }, "–"))))))),
    h("div", { class: "hint", style: "margin-top:6px" },
      `${config.units.length} units kept${projections ? ` (LoRA on ${projections} projections)` : ""}; darker = ` +
      "larger rank or size in its column; – = pruned.",
      config.pruned_layers.length ? ` Layers without any module: ${config.pruned_layers.join(", ")}.` : "",
      config.prior ? " The search's prior: no pruning round ran." : ""));
}

function roundsTable(rounds, job) {
  if (!rounds.length) return noRounds(job, "No rounds yet.");
  return h("table", { id: "rounds" },
    h("thead", {}, h("tr", {}, h("th", {}, "round"), h("th", { class: "num" }, "params left"),
      h("th", { class: "num" }, "target"),
      h("th", { class: "num", title: "on the validation split, at the round's start: before its removals" }, "validation before removal"),
      h("th", { class: "num" }, "train loss"),
      h("th", {}, "removed (score)"), h("th", { class: "num" }, "time"))),
    h("tbody", {}, rounds.map((r) => h("tr", {},
      h("td", {}, String(r.round)), h("td", { class: "num" }, int(r.trainable_params)),
      h("td", { class: "num" }, int(r.target_params)),
      h("td", { class: "num" }, r.metric === null ? "–" : `${num(r.metric)}`),
      h("td", { class: "num" }, num(r.train_loss)),
      h("td", { class: "mono" }, r.removed.length ? r.removed.map((u) => `${removedLabel(u)} (${score(u.score)})`).join(", ") : "nothing"),
      h("td", { class: "num" }, seconds(r.wall_s))))));
}

function eventsTable(events) {
  if (!events.length) return h("div", { class: "empty" }, "No events yet.");
  return h("div", { class: "events" }, h("table", { id: "events" }, h("tbody", {}, [...events].reverse().map((e) =>
    h("tr", { "data-kind": e.kind }, h("td", { class: "muted", title: when(e.created_at) },
      new Date(e.created_at).toLocaleTimeString()), h("td", {}, h("span", { class: "badge" }, e.kind)),
    h("td", {}, e.message))))));
}

// --------------------------------------------------------------------------------------------------- forms

function fieldRow(label, name, control, hint) {
  return [h("label", { for: name }, label),
    h("div", { class: "field" }, control, hint ? h("span", { class: "hint" }, hint) : null,
      h("span", { class: "field-error", "data-error-for": name }))];
}

function clearErrors(form) {
  for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
}

function showErrors(form, error, fallback) {
  clearErrors(form);
  const param = error.param || "";
  const exact = form.querySelector(`[data-error-for="${param}"]`);
  const target = exact || form.querySelector(`[data-error-for="${param.split(".")[0]}"]`)
    || form.querySelector(`[data-error-for="${fallback}"]`);
  target.textContent = exact || !param ? error.message : `${param}: ${error.message}`;
}

async function newJobView(params) {
  const [models, datasets] = await Promise.all([api("v1/models"), api("v1/datasets?limit=100")]);
  let idempotencyKey = newIdempotencyKey(); // the same form contents are the same submission, retried or not
  const model = h("select", { id: "model", name: "model" }, models.data.map((m) =>
    h("option", { value: m.name }, m.layers ? `${m.name} (${m.kind || m.model_type}, ${m.layers} layers)` : m.name)));
  const dataset = h("select", { id: "dataset_id", name: "dataset_id" }, datasets.data.map((d) =>
    h("option", { value: d.id }, `${d.name} · ${d.train_rows} train / ${d.dev_rows} dev · ${d.id}`)));
  if (params.get("dataset")) dataset.value = params.get("dataset");
  const budget = h("input", { id: "budget", name: "budget", value: "0.5%" });
  const search = h("textarea", { id: "search", name: "search", spellcheck: "false",
    placeholder: '{"schedule": {"rounds": 4}, "train": {"steps": 300}}' });
  const submit = h("button", { type: "submit", id: "submit" }, "Submit job");
  const form = h("form", { id: "new-job", class: "form" },
    ...fieldRow("Base model", "model", model),
    ...fieldRow("Dataset", "dataset_id", dataset, datasets.data.length ? null : "No dataset yet: upload one first."),
    ...fieldRow("Budget", "budget", budget, "Trainable PEFT parameters: a count (70000, 70k) or a share of the backbone (0.5%)."),
    ...fieldRow("Search overrides", "search", search,
      "JSON of the engine's SearchSpec fields: space, policy, schedule, train, backbone, retrain, seed. Empty: defaults."),
    h("span"), h("div", { class: "row" }, submit, h("span", { class: "field-error", "data-error-for": "" })));
  form.addEventListener("input", () => { // new contents: a new submission, and the old errors are stale
    idempotencyKey = newIdempotencyKey();
    clearErrors(form);
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let overrides = {};
    try {
      overrides = search.value.trim() ? JSON.parse(search.value) : {};
    } catch (e) {
      showErrors(form, { param: "search", message: `not valid JSON: ${e.message}` });
      return;
    }
    const body = { model: model.value, dataset_id: dataset.value, budget: /^\d+$/.test(budget.value.trim())
      ? Number(budget.value.trim()) : budget.value.trim(), search: overrides };
    submit.disabled = true;
    try {
      const job = await api("v1/jobs", { method: "POST", body, headers: { "Idempotency-Key": idempotencyKey } });
      location.hash = `#/jobs/${job.id}`;
    } catch (e) {
      showErrors(form, e, "");
    } finally {
      submit.disabled = false;
    }
  });
  main().replaceChildren(h("div", { class: "card" }, h("h1", {}, "New search job"),
    h("p", { class: "muted" }, "The search prunes a supernet of LoRA, adapter and prefix modules down to the budget, then retrains what is left."),
    form));
}

function datasetsView() {
  const input = (name, attrs = {}) => h("input", { id: name, name, ...attrs });
  const form = h("form", { id: "upload", class: "form", enctype: "multipart/form-data" },
    ...fieldRow("Train file", "train", input("train", { type: "file", accept: ".csv,.tsv,.jsonl", required: true })),
    ...fieldRow("Dev file", "dev", input("dev", { type: "file", accept: ".csv,.tsv,.jsonl", required: true }),
      "The search is scored on it. Same format as the train file."),
    ...fieldRow("Name", "name", input("name", { placeholder: "default: the train file's name" })),
    ...fieldRow("Format", "format", h("select", { id: "format", name: "format" },
      h("option", { value: "" }, "from the file name"), ["csv", "tsv", "jsonl"].map((f) => h("option", { value: f }, f)))),
    ...fieldRow("Text column", "text_column", input("text_column", { value: "text" })),
    ...fieldRow("Text pair column", "text_pair_column", input("text_pair_column", { placeholder: "sentence-pair tasks only" })),
    ...fieldRow("Label column", "label_column", input("label_column", { value: "label" })),
    ...fieldRow("Problem", "problem", h("select", { id: "problem", name: "problem" },
      h("option", { value: "classification" }, "classification"), h("option", { value: "regression" }, "regression"),
      h("option", { value: "completion" }, "completion (JSONL prompt/completion or chat rows; decoder models)"))),
    ...fieldRow("Prompt template", "prompt_template", input("prompt_template", { placeholder: "decoders: classify by writing the label, e.g. Review: {text} Sentiment:" })),
    ...fieldRow("Label words", "label_words", input("label_words", { placeholder: "with a prompt template: the word for each label, e.g. 0=negative,1=positive" })),
    h("span"), h("div", { class: "row" }, h("button", { type: "submit", id: "upload-submit" }, "Upload and check"),
      h("span", { class: "field-error", "data-error-for": "" }), h("span", { class: "hint", id: "upload-state" })));
  const list = h("div", { id: "datasets" });
  form.addEventListener("input", () => clearErrors(form));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    for (const [name, value] of [...data.entries()]) if (value === "") data.delete(name);
    $("#upload-state").textContent = "checking…";
    try {
      const dataset = await api("v1/datasets", { method: "POST", body: data });
      clearErrors(form);
      $("#upload-state").textContent = `${dataset.name}: ${dataset.train_rows} train, ${dataset.dev_rows} dev rows`;
      form.reset();
      await refresh();
    } catch (e) {
      $("#upload-state").textContent = "";
      showErrors(form, e, "");
    }
  });
  const refresh = async () => {
    const page = await api("v1/datasets?limit=100");
    list.replaceChildren(page.data.length ? h("table", {}, h("thead", {}, h("tr", {},
      ["Name", "Id", "Columns", "Labels", "Metric"].map((t) => h("th", {}, t)),
      h("th", { class: "num" }, "Train"), h("th", { class: "num" }, "Dev"), h("th", { class: "num" }, "Size"),
      h("th", {}, "Uploaded"), h("th", {}))),
    h("tbody", {}, page.data.map((d) => h("tr", { "data-dataset": d.id },
      h("td", {}, d.name), h("td", { class: "mono" }, d.id),
      h("td", { class: "mono" }, [d.columns.text_column, d.columns.text_pair_column, d.columns.label_column].filter(Boolean).join(", ")),
      h("td", {}, d.labels ? d.labels.join(", ") : d.columns.problem), h("td", {}, d.metric_name),
      h("td", { class: "num" }, int(d.train_rows)), h("td", { class: "num" }, int(d.dev_rows)),
      h("td", { class: "num" }, bytes(d.size_bytes)), h("td", { title: when(d.created_at) }, age(d.created_at)),
      h("td", {}, h("a", { href: `#/new?dataset=${d.id}` }, "new job →"))))))
      : h("div", { class: "empty" }, "No datasets yet."));
  };
  main().replaceChildren(
    h("div", { class: "card" }, h("h1", {}, "Upload a dataset"),
      h("p", { class: "muted" }, "CSV, TSV or JSONL; the server checks both files with the engine's loader before keeping them."),
      form),
    h("div", { class: "card" }, h("h2", {}, "Your datasets"), list));
  refresh().catch((e) => list.replaceChildren(h("div", { class: "error" }, e.message)));
}

// ------------------------------------------------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", () => {
  $("#key").value = localStorage.getItem(KEY_STORE) || "";
  $("#key-form").addEventListener("submit", useKey);
  if (localStorage.getItem(KEY_STORE)) keyState("key saved", "ok");
  window.addEventListener("hashchange", route);
  route();
});
