// comfyfleet console: one page, no framework, no build step. Every call
// carries the admin key (kept in sessionStorage, never in a URL) as
// "Authorization: Bearer"; the live updates are a server-sent event stream
// read with fetch, since EventSource cannot send that header.
"use strict";

const KEY = "comfyfleet.adminKey";
const state = {
  fleet: null,       // the last fleet view
  route: null,       // {view, id}
  jobsTimer: null,   // a pending refresh of the job list
  jobTimer: null,    // a pending refresh of the job page
  stream: null,      // the AbortController of the event stream
  streamJob: "",     // the job whose previews the stream carries
  progress: {},      // job id -> last progress event
};

// ---- helpers ---------------------------------------------------------

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat(Infinity)) {
    if (k === undefined || k === null || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(KEY);
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

class HTTPError extends Error {
  constructor(status, msg) { super(msg); this.status = status; }
}

async function api(path, opts) {
  opts = opts || {};
  const init = { method: opts.method || "GET", headers: headers(opts.body !== undefined ? { "Content-Type": "application/json" } : {}) };
  if (opts.body !== undefined) init.body = JSON.stringify(opts.body);
  const r = await fetch(path, init);
  let data = null;
  const text = await r.text();
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!r.ok) {
    if (r.status === 401) { showLogin((data && data.error) || "Unauthorized"); }
    throw new HTTPError(r.status, (data && data.error) || ("HTTP " + r.status));
  }
  return data;
}

function toast(msg, bad) {
  const t = document.getElementById("toast");
  t.textContent = msg;
  t.className = bad ? "bad" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

function badge(s) { return el("span", { class: "badge s-" + s, text: s }); }

function bar(fraction, wide) {
  const pct = Math.max(0, Math.min(1, fraction || 0)) * 100;
  return el("span", { class: "bar" + (wide ? " wide" : ""), role: "progressbar", "aria-valuenow": pct.toFixed(0) },
    el("span", { style: "width:" + pct.toFixed(1) + "%" }));
}

function ago(t) {
  if (!t) return "";
  const ms = Date.now() - new Date(t).getTime();
  if (ms < 0) return "now";
  const s = Math.round(ms / 1000);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.round(s / 60) + " min";
  return Math.round(s / 3600) + " h";
}

function time(t) { return t ? new Date(t).toLocaleTimeString() : ""; }

function bytes(n) {
  if (!n) return "";
  const u = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}

function jobLink(id) { return el("a", { href: "#/job/" + encodeURIComponent(id), class: "mono", text: id }); }

function action(label, fn, cls) {
  const b = el("button", { class: cls, text: label });
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { await fn(); } catch (e) { toast(e.message, true); } finally { b.disabled = false; }
  });
  return b;
}

function render(...nodes) {
  const m = document.getElementById("main");
  m.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
}

// ---- login -----------------------------------------------------------

function showLogin(why) {
  stopStream();
  sessionStorage.removeItem(KEY);
  const input = el("input", { type: "password", id: "admin-key", autocomplete: "off", placeholder: "admin key" });
  const form = el("form", { class: "login" },
    el("h1", { text: "comfyfleet console" }),
    el("p", { class: "muted", text: "This fleet has admin keys. Give one; it is kept in this tab only (sessionStorage) and sent as a header, never in a URL." }),
    why ? el("p", { class: "error small", text: why }) : null,
    input, el("button", { type: "submit", text: "Sign in" }));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    try { await api("/console/api/session"); start(); } catch (err) { /* showLogin ran again */ }
  });
  render(form);
  input.focus();
}

// ---- the event stream ------------------------------------------------

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}

function setLive(on) {
  const l = document.getElementById("live");
  l.textContent = on ? "live" : "offline";
  l.className = "live " + (on ? "on" : "off");
}

// openStream reads /console/api/events until it ends, then opens it again.
async function openStream(job) {
  stopStream();
  const ctl = new AbortController();
  state.stream = ctl;
  state.streamJob = job || "";
  let wait = 500;
  while (!ctl.signal.aborted) {
    try {
      const url = "/console/api/events" + (job ? "?job=" + encodeURIComponent(job) : "");
      const r = await fetch(url, { headers: headers(), signal: ctl.signal });
      if (r.status === 401) { showLogin("Unauthorized"); return; }
      if (!r.ok || !r.body) throw new Error("event stream: HTTP " + r.status);
      setLive(true);
      wait = 500;
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let event = "message", data = "";
          for (const line of frame.split("\n")) {
            if (line.startsWith("event: ")) event = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) { try { onEvent(event, JSON.parse(data)); } catch (e) { console.error(e); } }
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    setLive(false);
    await new Promise((res) => setTimeout(res, wait));
    wait = Math.min(wait * 2, 5000);
  }
}

function onEvent(event, data) {
  const r = state.route;
  if (event === "fleet") {
    const before = state.fleet;
    state.fleet = data;
    if (r.view === "fleet") renderFleet();
    if (r.view === "dlq" && (!before || before.dlq !== data.dlq)) renderDLQ();
    return;
  }
  if (event === "preview") {
    if (r.view === "job" && r.id === data.job_id) {
      const img = document.getElementById("preview-img");
      if (img) { img.src = "data:" + data.mime + ";base64," + data.data; img.parentElement.hidden = false; }
    }
    return;
  }
  if (event === "job") {
    if (data.type === "progress" && data.progress) state.progress[data.job_id] = data.progress;
    if (r.view === "jobs" || r.view === "batches") schedule("jobsTimer", refreshView, 300);
    if (r.view === "job" && r.id === data.job_id) {
      if (data.type === "progress") showProgress(data.progress);
      else schedule("jobTimer", refreshView, 150);
    }
  }
}

function schedule(name, fn, ms) {
  if (state[name]) return;
  state[name] = setTimeout(() => { state[name] = null; fn(); }, ms);
}

// ---- fleet -------------------------------------------------------------

function laneState(f, pool, lane) {
  const key = pool + "/" + lane;
  if (!(f.paused || []).includes(key)) return "active";
  const workers = (f.workers || []).filter((w) => w.pool === pool);
  const held = workers.every((w) => (w.paused || []).includes(key));
  return held ? "paused" : "pausing";
}

function renderFleet() {
  const f = state.fleet;
  if (!f) { render(el("p", { class: "muted", text: "Waiting for the fleet…" })); return; }
  const totals = f.totals || {};
  const cards = el("div", { class: "cards" },
    el("div", { class: "card" }, el("b", { text: (f.workers || []).length }), "workers"),
    el("div", { class: "card" }, el("b", { text: (f.lanes || []).reduce((n, l) => n + l.queued, 0) }), "queued"),
    el("div", { class: "card" }, el("b", { text: (f.lanes || []).reduce((n, l) => n + l.running, 0) }), "running"),
    el("div", { class: "card" }, el("b", { text: f.intake || 0 }), "intake"),
    el("div", { class: "card" }, el("b", { id: "dlq-count", text: f.dlq || 0 }), "dead letters"),
    el("div", { class: "card" }, el("b", { text: totals.COMPLETED || 0 }), "completed"),
    el("div", { class: "card" }, el("b", { text: (totals.FAILED || 0) + (totals.TIMED_OUT || 0) }), "failed"));

  const workers = el("table", { id: "workers" },
    el("thead", {}, el("tr", {}, ["Worker", "Pool", "State", "GPU", "VRAM", "ComfyUI", "Job", "Warm models", "Last error", ""].map((h) => el("th", { text: h })))),
    el("tbody", {}, (f.workers || []).map((w) => {
      const draining = (f.draining || []).includes(w.id);
      const used = w.vram_total ? w.vram_total - w.vram_free : 0;
      return el("tr", { "data-worker": w.id },
        el("td", { class: "mono", text: w.id }),
        el("td", { text: w.pool }),
        el("td", { class: "worker-state" }, badge(w.state)),
        el("td", { text: w.device || "" }),
        el("td", { text: w.vram_total ? bytes(used) + " / " + bytes(w.vram_total) : "" }),
        el("td", { text: w.comfyui_version || "" }),
        el("td", {}, w.job_id ? [jobLink(w.job_id), " ", bar(w.progress)] : el("span", { class: "muted", text: "—" })),
        el("td", { class: "small", text: (w.warm || []).join(", ") }),
        el("td", { class: "small error", text: w.last_error || "" }),
        el("td", {}, draining
          ? action("Undrain", () => workerCtl(w.id, "undrain"))
          : action("Drain", () => workerCtl(w.id, "drain"), "danger")));
    })));
  if (!(f.workers || []).length) workers.tBodies[0].append(el("tr", {}, el("td", { colspan: 10, class: "muted", text: "No live worker." })));

  const pools = [...new Set((f.lanes || []).map((l) => l.pool))];
  const lanes = el("table", { id: "lanes" },
    el("thead", {}, el("tr", {}, ["Pool", "Lane", "State", "Queued", "Running", "Oldest wait", "Jobs/min", ""].map((h) => el("th", { text: h })))),
    el("tbody", {}, (f.lanes || []).map((l) => {
      const st = laneState(f, l.pool, l.lane);
      const key = l.pool + "/" + l.lane;
      const rate = (f.jobs_per_min || {})[key] || 0;
      return el("tr", { "data-lane": key },
        el("td", { text: l.pool }), el("td", { text: l.lane }),
        el("td", { class: "lane-state" }, badge(st)),
        el("td", { class: "lane-queued", text: l.queued }), el("td", { text: l.running }),
        el("td", { text: l.oldest ? ago(l.oldest) : "" }),
        el("td", { text: rate.toFixed(1) }),
        el("td", {}, st === "active"
          ? action("Pause", () => laneCtl("pause", l.pool, l.lane), "danger")
          : action("Resume", () => laneCtl("resume", l.pool, l.lane))));
    })));
  const poolActions = el("div", { class: "actions" }, pools.map((p) => [
    action("Pause pool " + p, () => laneCtl("pause", p, ""), "danger"),
    action("Resume pool " + p, () => laneCtl("resume", p, ""))]));
  render(el("h1", { text: "Fleet" }), cards, el("h2", { text: "Workers" }), workers,
    el("h2", { text: "Pools and lanes" }), lanes, poolActions);
}

async function laneCtl(what, pool, lane) {
  await api("/console/api/" + what, { method: "POST", body: lane ? { pool, lane } : { pool } });
  toast((what === "pause" ? "Paused " : "Resumed ") + pool + (lane ? "/" + lane : ""));
}

async function workerCtl(id, what) {
  await api("/console/api/workers/" + encodeURIComponent(id) + "/" + what, { method: "POST" });
  toast((what === "drain" ? "Draining " : "Undrained ") + id);
}

// ---- jobs ------------------------------------------------------------

function jobsQuery() {
  const p = new URLSearchParams(location.hash.split("?")[1] || "");
  return { q: p.get("q") || "", batch: p.get("batch") || "", tenant: p.get("tenant") || "", status: p.get("status") || "" };
}

async function renderJobs() {
  const q = jobsQuery();
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v) params.set(k, v);
  let data;
  try { data = await api("/console/api/jobs?" + params.toString()); } catch (e) { render(el("p", { class: "error", text: e.message })); return; }
  if (state.route.view !== "jobs") return;
  const input = (name, ph) => el("input", { name, placeholder: ph, value: q[name] });
  const status = el("select", { name: "status" }, ["", "IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]
    .map((s) => el("option", { value: s, text: s || "any status", selected: q.status === s })));
  const form = el("form", { class: "search", id: "job-search" }, input("q", "job or batch id"), input("batch", "batch"), input("tenant", "tenant"), status,
    el("button", { type: "submit", text: "Search" }));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) p.set(k, v);
    location.hash = "#/jobs" + (p.toString() ? "?" + p.toString() : "");
  });
  const active = document.activeElement && document.activeElement.name;
  const rows = (data.jobs || []).map((j) => el("tr", { "data-job": j.id },
    el("td", {}, jobLink(j.id)),
    el("td", { class: "job-status" }, badge(j.status)),
    el("td", { text: j.pool + (j.lane ? "/" + j.lane : "") }),
    el("td", {}, j.batch_id ? el("a", { href: "#/jobs?batch=" + encodeURIComponent(j.batch_id), text: j.batch_id }) : ""),
    el("td", { text: j.tenant || "" }),
    el("td", { class: "mono small", text: j.worker_id || "" }),
    el("td", { text: time(j.submitted_at) }),
    el("td", { class: "small error", text: j.error || "" })));
  const table = el("table", { id: "jobs" },
    el("thead", {}, el("tr", {}, ["Job", "Status", "Pool/lane", "Batch", "Tenant", "Worker", "Submitted", "Error"].map((h) => el("th", { text: h })))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 8, class: "muted", text: "No job matches." }))));
  render(el("h1", { text: "Recent jobs" }), form, table);
  if (active) { const f = form.querySelector("[name=" + active + "]"); if (f) f.focus(); }
}

// ---- one job ---------------------------------------------------------

function showProgress(p) {
  const slot = document.getElementById("job-progress");
  if (!slot || !p) return;
  slot.replaceChildren(bar(p.max ? p.value / p.max : 0, true),
    el("span", { class: "small muted", text: " step " + p.value + " of " + p.max + (p.node ? " (node " + p.node + ")" : "") }));
}

async function blobURL(id, key) {
  const r = await fetch("/console/api/jobs/" + encodeURIComponent(id) + "/blob?key=" + encodeURIComponent(key), { headers: headers() });
  if (!r.ok) throw new Error("output " + key + ": HTTP " + r.status);
  return URL.createObjectURL(await r.blob());
}

function outputNodes(id, out) {
  const nodes = [];
  const kinds = [["images", "img"], ["videos", "video"], ["audio", "audio"], ["text", "text"], ["files", "file"]];
  for (const [kind, how] of kinds) {
    for (const it of out[kind] || []) {
      const cap = el("figcaption", { text: it.filename + (it.mime ? " · " + it.mime : "") + (it.size ? " · " + bytes(it.size) : "") + (it.node_id ? " · node " + it.node_id : "") });
      const fig = el("figure", { "data-kind": kind });
      let media = null;
      if (how === "text" || it.type === "text") {
        media = el("pre", { text: it.data || "" });
      } else if (how === "img") {
        media = el("img", { alt: it.filename });
      } else if (how === "video") {
        media = el("video", { controls: true });
      } else if (how === "audio") {
        media = el("audio", { controls: true });
      }
      if (it.type === "s3_url" && it.data) {
        if (media && media.tagName !== "PRE") media.src = it.data;
        else media = el("a", { href: it.data, rel: "noreferrer", text: it.filename });
      } else if (it.blob) {
        const link = el("a", { href: "#", text: "download " + it.filename });
        link.addEventListener("click", async (e) => {
          e.preventDefault();
          try { const u = await blobURL(id, it.blob); const a = el("a", { href: u, download: it.filename }); a.click(); } catch (err) { toast(err.message, true); }
        });
        if (media && media.tagName !== "PRE") {
          blobURL(id, it.blob).then((u) => { media.src = u; }).catch((err) => { fig.append(el("p", { class: "error", text: err.message })); });
          fig.append(media, cap, link);
        } else if (how === "text") {
          fig.append(media || el("pre"), cap);
          fetch("/console/api/jobs/" + encodeURIComponent(id) + "/blob?key=" + encodeURIComponent(it.blob), { headers: headers() })
            .then((r) => r.text()).then((t) => { fig.querySelector("pre").textContent = t; });
        } else {
          fig.append(link, cap);
        }
        nodes.push(fig);
        continue;
      } else if (it.type === "base64" && it.data && media && media.tagName !== "PRE") {
        media.src = "data:" + (it.mime || "application/octet-stream") + ";base64," + it.data;
      }
      fig.append(media || el("span"), cap);
      nodes.push(fig);
    }
  }
  for (const e of out.errors || []) nodes.push(el("p", { class: "error", text: e }));
  return nodes;
}

async function renderJob(id) {
  let d;
  try { d = await api("/console/api/jobs/" + encodeURIComponent(id)); } catch (e) {
    render(el("h1", { text: "Job " + id }), el("p", { class: "error", id: "job-error", text: e.message }));
    return;
  }
  if (state.route.view !== "job" || state.route.id !== id) return;
  const j = d.job;
  const running = j.status === "IN_QUEUE" || j.status === "IN_PROGRESS";
  const actions = el("div", { class: "actions" },
    running ? action("Cancel job", async () => { await api("/console/api/jobs/" + encodeURIComponent(id) + "/cancel", { method: "POST" }); toast("Cancelled " + id); }, "danger") : null,
    (j.status === "FAILED" || j.status === "TIMED_OUT") ? action("Retry job", async () => { await api("/console/api/jobs/" + encodeURIComponent(id) + "/retry", { method: "POST" }); toast("Retrying " + id); }) : null,
    d.dead_letter ? action("Replay dead letter", () => replay(d.dead_letter.seq)) : null);
  const kv = el("dl", { class: "kv" },
    ...[["Status", badge(j.status)], ["Pool / lane", j.pool + (j.lane ? " / " + j.lane : "")], ["Source", j.source], ["Tenant", j.tenant],
      ["Batch", j.batch_id ? el("a", { href: "#/jobs?batch=" + encodeURIComponent(j.batch_id), text: j.batch_id }) : ""],
      ["Worker", j.worker_id], ["Attempt", String(j.attempt) + (j.retries ? " (" + j.retries + " retries)" : "")],
      ["Submitted", j.submitted_at ? new Date(j.submitted_at).toLocaleString() : ""], ["Started", time(j.started_at)], ["Finished", time(j.finished_at)],
      ["Error", j.error ? el("span", { class: "error", text: j.error }) : ""]]
      .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v || "")]));
  kv.querySelector("dd .badge").id = "job-status";
  const timeline = el("table", { id: "timeline" },
    el("thead", {}, el("tr", {}, ["Time", "Status", "Attempt", "Worker", "Error"].map((h) => el("th", { text: h })))),
    el("tbody", {}, d.timeline.map((t) => el("tr", {}, el("td", { text: time(t.time) }), el("td", {}, badge(t.status)),
      el("td", { text: t.attempt || "" }), el("td", { class: "mono small", text: t.worker_id || "" }), el("td", { class: "small error", text: t.error || "" })))));
  const attempts = d.attempts.length
    ? el("ol", { id: "attempts" }, d.attempts.map((a) => el("li", { class: "error small", text: a })))
    : el("p", { class: "muted", text: "No failed attempt." });
  let out = null;
  try { out = d.output ? (typeof d.output === "string" ? JSON.parse(d.output) : d.output) : null; } catch (_) { out = null; }
  const outputs = el("div", { class: "outputs", id: "outputs" });
  if (out && (out.images || out.videos || out.audio || out.files || out.text)) outputs.append(...outputNodes(id, out));
  else if (out && out.error) outputs.append(el("p", { class: "error", text: out.error }), ...(out.details || []).map((x) => el("p", { class: "error small", text: x })));
  else outputs.append(el("p", { class: "muted", text: running ? "Not finished yet." : "No output." }));
  const preview = el("div", { class: "preview", hidden: !running }, el("img", { id: "preview-img", alt: "preview" }));
  preview.hidden = true;
  const progress = el("div", { id: "job-progress" });
  render(el("h1", {}, "Job ", el("span", { class: "mono", text: id })), actions, kv,
    running ? [el("h2", { text: "Progress" }), progress, preview] : null,
    el("div", { class: "grid" },
      el("div", {}, el("h2", { text: "Outputs" }), outputs),
      el("div", {}, el("h2", { text: "Timeline" }), timeline, el("h2", { text: "Attempts" }), attempts,
        d.dead_letter ? [el("h2", { text: "Dead letter" }), el("p", { class: "small", text: "seq " + d.dead_letter.seq + ": " + d.dead_letter.reason })] : null)),
    el("h2", { text: "Workflow" + (d.workflow_from ? " (from the " + d.workflow_from + ")" : "") }),
    d.workflow ? el("pre", { id: "workflow", text: JSON.stringify(d.workflow, null, 2) }) : el("p", { class: "muted", text: "No copy of the workflow is kept for this job." }));
  const p = state.progress[id] || d.progress;
  if (running && p) showProgress(p);
}

// ---- batches -----------------------------------------------------------

async function renderBatches() {
  let data;
  try { data = await api("/console/api/batches"); } catch (e) { render(el("p", { class: "error", text: e.message })); return; }
  if (state.route.view !== "batches") return;
  const rows = (data.batches || []).map((b) => {
    const total = b.total || b.jobs;
    return el("tr", { "data-batch": b.id },
      el("td", {}, el("a", { href: "#/jobs?batch=" + encodeURIComponent(b.id), text: b.id })),
      el("td", {}, bar(total ? b.done / total : 0), " ", b.done + " / " + total),
      el("td", { class: "small" }, Object.entries(b.by_status).map(([s, n]) => [badge(s + " " + n), " "])),
      el("td", { text: time(b.last) }));
  });
  render(el("h1", { text: "Batches" }), el("p", { class: "muted small", text: "Batches among the recent jobs." }),
    el("table", { id: "batches" }, el("thead", {}, el("tr", {}, ["Batch", "Progress", "Jobs", "Last submitted"].map((h) => el("th", { text: h })))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 4, class: "muted", text: "No batch among the recent jobs." })))));
}

// ---- dead letters ------------------------------------------------------

async function replay(seq) {
  const r = await api("/dlq/" + seq + "/replay", { method: "POST", body: {} });
  toast("Replayed " + r.id + ": " + r.status);
  if (state.route.view === "dlq") renderDLQ();
}

async function renderDLQ() {
  let data;
  try { data = await api("/dlq?limit=500"); } catch (e) { render(el("p", { class: "error", text: e.message })); return; }
  if (state.route.view !== "dlq") return;
  const rows = (data.dead_letters || []).map((d) => el("tr", { "data-seq": d.seq, "data-job": d.job_id },
    el("td", { text: d.seq }), el("td", {}, jobLink(d.job_id)), el("td", { text: d.pool }),
    el("td", { class: "small error", text: d.reason }),
    el("td", {}, el("ol", { class: "small" }, (d.attempts || []).map((a) => el("li", { text: a })))),
    el("td", { text: time(d.time) }),
    el("td", {}, action("Replay", () => replay(d.seq)))));
  render(el("h1", { text: "Dead letters" }),
    el("table", { id: "dlq" }, el("thead", {}, el("tr", {}, ["Seq", "Job", "Pool", "Reason", "Attempts", "Time", ""].map((h) => el("th", { text: h })))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No dead letter." })))));
}

// ---- routing -----------------------------------------------------------

function parseRoute() {
  const h = location.hash.replace(/^#\/?/, "").split("?")[0];
  const [view, ...rest] = h.split("/");
  if (view === "job" && rest.length) return { view: "job", id: decodeURIComponent(rest.join("/")) };
  if (["jobs", "batches", "dlq"].includes(view)) return { view };
  return { view: "fleet" };
}

function refreshView() {
  const r = state.route;
  if (r.view === "fleet") renderFleet();
  else if (r.view === "jobs") renderJobs();
  else if (r.view === "job") renderJob(r.id);
  else if (r.view === "batches") renderBatches();
  else if (r.view === "dlq") renderDLQ();
}

function onRoute() {
  state.route = parseRoute();
  for (const a of document.querySelectorAll("nav a")) {
    const v = state.route.view === "job" ? "jobs" : state.route.view;
    a.classList.toggle("active", a.dataset.nav === v);
  }
  // The stream carries the previews of the job shown.
  const job = state.route.view === "job" ? state.route.id : "";
  if (!state.stream || state.streamJob !== job) openStream(job);
  refreshView();
}

let started = false;

async function start() {
  try { await api("/console/api/session"); } catch (e) { if (e.status !== 401) render(el("p", { class: "error", text: e.message })); return; }
  if (!started) window.addEventListener("hashchange", onRoute);
  started = true;
  state.stream = null;
  onRoute();
}

start();
