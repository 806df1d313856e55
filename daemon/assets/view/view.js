// neurod's web view: polls the daemon's JSON endpoints (decimated on the server) and draws them
// with uPlot. Each panel refreshes on its own timer; a panel that cannot draw says why in its
// note and the others go on. Script errors are listed at the top of the page.
"use strict";

const $ = (s) => document.querySelector(s);
const report = (msg) => { $("#errors").textContent += msg + "\n"; };
window.addEventListener("error", (e) => report(`error: ${e.message} (${e.filename}:${e.lineno})`));
window.addEventListener("unhandledrejection", (e) => report(`error: ${e.reason}`));

// ---- Requests: the token (when the daemon has one) is asked for once and kept for the tab. ----
let token = sessionStorage.getItem("neurod-token") || "";
class Unauthorized extends Error {}

async function request(path, init = {}) {
  const headers = Object.assign({}, init.headers || {});
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(path, Object.assign({}, init, { headers }));
  if (r.status === 401) {
    $("#login").hidden = false;
    throw new Unauthorized("a token is needed");
  }
  if (!r.ok) throw new Error((await r.text()).trim() || `${path}: HTTP ${r.status}`);
  return r;
}
const api = async (path, init) => (await request(path, init)).json();

$("#login").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem("neurod-token", token);
  $("#login").hidden = true;
});

function every(ms, noteEl, fn) {
  const run = async () => {
    try {
      await fn();
    } catch (e) {
      if (noteEl && !(e instanceof Unauthorized)) $(noteEl).textContent = String(e.message || e);
    } finally {
      setTimeout(run, ms);
    }
  };
  run();
}

// ---- Charts: one uPlot per panel, rebuilt only when its series change. ----
const charts = {};
function chart(el, signature, opts, data) {
  const target = $(el);
  const c = charts[el];
  if (c && c.signature === signature) {
    c.plot.setData(data);
    return c.plot;
  }
  if (c) c.plot.destroy();
  const width = Math.max(300, target.clientWidth || 600);
  const plot = new uPlot(Object.assign({ width }, opts), data, target);
  charts[el] = { signature, plot };
  return plot;
}
const palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const labelColour = { predictable: "#1b9e77", unpredictable: "#d95f02" };

// Where the probe and frame views are drawn, and how often (the browser test reads it).
const drawn = {};
function noteDrawn(name, el) {
  const r = $(el).getBoundingClientRect();
  const prev = drawn[name] || { draws: 0 };
  drawn[name] = { x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height, draws: prev.draws + 1 };
  $("#drawn").textContent = JSON.stringify(drawn);
}

// ---- Topology and streams ----
let previous = null;
let streams = [];

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

async function topology() {
  const health = await request("/healthz").then((r) => r.text(), (e) => String(e.message || e));
  $("#health").textContent = health.trim();
  $("#health").className = health.startsWith("ok") ? "ok" : "bad";
  const s = await api("/status");
  $("#uptime").textContent = `up ${Math.round(s.uptime_s)} s`;
  const body = $("#topology tbody");
  body.textContent = "";
  const now = performance.now();
  const rate = (c, k) => {
    const p = previous && previous.by[c.id];
    if (!p) return "";
    return Math.round((c[k] - p[k]) / ((now - previous.at) / 1000)).toLocaleString();
  };
  for (const c of s.components) {
    const row = body.insertRow();
    cell(row, `${c.id} (${c.kind})`);
    cell(row, c.type);
    cell(row, c.state, `state-${c.state}`);
    cell(row, rate(c, "received_rows"), "num");
    cell(row, rate(c, "sent_rows"), "num");
    cell(row, c.dropped_rows.toLocaleString(), "num");
    cell(row, `${Math.round(100 * c.queue_fill_ratio)} %`, "num");
    cell(row, c.errors, "num").title = c.last_error || "";
  }
  previous = { at: now, by: Object.fromEntries(s.components.map((c) => [c.id, c])) };
}

function fillSelect(sel, items, prefer) {
  const el = $(sel);
  const keys = items.map((s) => s.key);
  if (el.dataset.keys === keys.join("\n")) return;
  const keep = el.value;
  el.textContent = "";
  for (const k of keys) el.add(new Option(k, k));
  el.dataset.keys = keys.join("\n");
  el.value = keys.includes(keep) ? keep : (prefer && keys.find(prefer)) || keys[0] || "";
}

async function refreshStreams() {
  streams = await api("/view/streams");
  const body = $("#streams tbody");
  body.textContent = "";
  for (const s of streams) {
    const row = body.insertRow();
    cell(row, s.key + (s.ended ? " (ended)" : ""));
    cell(row, s.producer);
    cell(row, s.role.replace("_", " "));
    cell(row, s.rate_hz == null ? "" : s.rate_hz.toFixed(s.rate_hz < 100 ? 2 : 0), "num");
    cell(row, s.rows.toLocaleString(), "num");
  }
  fillSelect("#probe-stream", streams.filter((s) => s.role === "probe"));
  // The registered movie when motion correction runs, else the raw one.
  const frames = streams.filter((s) => s.role === "registered_frames" || s.role === "frames");
  fillSelect("#frame-stream", frames, (k) => streams.find((s) => s.key === k).role === "registered_frames");
  const decoders = streams.filter((s) => s.role === "decoder");
  $("#decoder-panel").hidden = decoders.length === 0;
  fillSelect("#decoder-stream", decoders);
}

// ---- Probe: traces stacked by depth, spikes as red ticks on their channel ----
let probeSpikes = { t: [], y_um: [] };

async function probe() {
  const key = $("#probe-stream").value;
  if (!key) {
    $("#probe-note").textContent = "no probe stream";
    return;
  }
  const q = new URLSearchParams({ stream: key, seconds: $("#seconds").value, channels: $("#n-channels").value });
  if ($("#from-um").value !== "") q.set("from_um", $("#from-um").value);
  if ($("#to-um").value !== "") q.set("to_um", $("#to-um").value);
  const v = await api(`/view/probe?${q}`);
  const n = v.min_uv.length ? v.min_uv[0].length : 0;
  const xs = Array.from({ length: n }, (_, i) => v.t0 + ((i + 0.5) * (v.t1 - v.t0)) / n);
  const ys = v.channels.map((c) => c.y_um);
  const gaps = ys.slice(1).map((y, i) => y - ys[i]).filter((d) => d > 0).sort((a, b) => a - b);
  const spacing = gaps.length ? gaps[gaps.length >> 1] : 20;
  const gain = (0.45 * spacing) / 100; // 100 µV fills 45 % of the gap between channels
  const data = [xs];
  const series = [{ label: "s" }];
  v.channels.forEach((c, k) => {
    for (const part of [v.min_uv[k], v.max_uv[k]]) {
      data.push(part.map((u) => (u == null ? null : c.y_um + u * gain)));
      series.push({ label: c.name, stroke: "#345", width: 1, points: { show: false } });
    }
  });
  probeSpikes = v.spikes;
  const opts = {
    height: 560,
    legend: { show: false },
    cursor: { show: false },
    scales: { x: { time: false } },
    axes: [{ label: "time, s" }, { label: "depth, µm" }],
    series,
    hooks: {
      draw: [(u) => {
        const ctx = u.ctx;
        ctx.save();
        ctx.fillStyle = "#d62728";
        const h = Math.max(3, u.bbox.height / Math.max(60, 2 * v.channels.length));
        for (let i = 0; i < probeSpikes.t.length; i++) {
          const x = u.valToPos(probeSpikes.t[i], "x", true);
          const y = u.valToPos(probeSpikes.y_um[i], "y", true);
          ctx.fillRect(x - 1, y - h / 2, 2.5, h);
        }
        ctx.restore();
      }],
    },
  };
  chart("#probe-plot", `${key}|${v.channels.map((c) => c.name).join(",")}`, opts, data);
  $("#probe-note").textContent = `${v.channels.length} channels of ${v.probe_um[0]}–${v.probe_um[1]} µm, ${v.spikes.t.length} spikes`;
  noteDrawn("probe", "#probe-plot canvas");
}

// ---- Two-photon: the latest frame, ROI outlines by label, motion ----
const offscreen = document.createElement("canvas");

async function frame() {
  const key = $("#frame-stream").value;
  if (!key) {
    $("#frame-note").textContent = "no two-photon stream";
    return;
  }
  const v = await api(`/view/frame?stream=${encodeURIComponent(key)}`);
  offscreen.width = v.image_width;
  offscreen.height = v.image_height;
  const img = new ImageData(v.image_width, v.image_height);
  v.pixels.forEach((p, i) => {
    img.data.set([p, p, p, 255], 4 * i);
  });
  offscreen.getContext("2d").putImageData(img, 0, 0);
  const canvas = $("#frame");
  const ctx = canvas.getContext("2d");
  const cs = canvas.width / Math.max(v.image_width, v.image_height);
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(offscreen, 0, 0, v.image_width * cs, v.image_height * cs);
  for (const roi of v.rois) {
    ctx.fillStyle = labelColour[roi.label] || "#bbbbbb";
    for (let i = 0; i < roi.cells.length; i += 2) ctx.fillRect(roi.cells[i + 1] * cs, roi.cells[i] * cs, cs, cs);
  }
  $("#frame-note").textContent = `frame ${v.frame_index}, ${v.height}×${v.width} px, ${v.rois.length} ROIs`;
  noteDrawn("frame", "#frame");
  if (v.motion.t.length) {
    chart("#motion-plot", "motion", {
      height: 180,
      scales: { x: { time: false } },
      axes: [{ label: "time, s" }, { label: "shift, px" }],
      series: [{ label: "s" }, { label: "y", stroke: palette[0] }, { label: "x", stroke: palette[1] }],
    }, [v.motion.t, v.motion.shift_y, v.motion.shift_x]);
  }
}

// ---- Neurons: the POYO-SSL table (sortable; tick neurons to plot their dF/F) ----
let neurons = [];
let sortKey = "unit";
let sortDir = 1;
const chosen = new Set();
let userChose = false;

const byKey = (a, b) => {
  const x = a[sortKey];
  const y = b[sortKey];
  const nx = Number(x);
  const ny = Number(y);
  const cmp = !Number.isNaN(nx) && !Number.isNaN(ny) ? nx - ny : String(x).localeCompare(String(y));
  return sortDir * cmp;
};

function renderNeurons() {
  const body = $("#neurons tbody");
  body.textContent = "";
  for (const r of [...neurons].sort(byKey)) {
    const row = body.insertRow();
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = chosen.has(r.unit);
    box.addEventListener("change", () => {
      userChose = true;
      if (box.checked) chosen.add(r.unit); else chosen.delete(r.unit);
    });
    row.insertCell().append(box);
    cell(row, r.unit, "num");
    cell(row, r.label, r.label);
    cell(row, r.skew == null ? "" : r.skew.toFixed(2), "num");
    cell(row, r.excess_kurtosis == null ? "" : r.excess_kurtosis.toFixed(2), "num");
    cell(row, r.n, "num");
    cell(row, r.labelled_since_frame == null ? "" : r.labelled_since_frame, "num");
  }
}

for (const th of document.querySelectorAll("#neurons th[data-key]")) {
  th.addEventListener("click", () => {
    sortDir = sortKey === th.dataset.key ? -sortDir : 1;
    sortKey = th.dataset.key;
    renderNeurons();
  });
}

async function neuronTable() {
  neurons = await api("/sql", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ query: "SELECT stream, unit, label, n, skew, excess_kurtosis, labelled_since_frame FROM neurons" }),
  });
  if (!userChose && chosen.size === 0) {
    for (const r of [...neurons].sort((a, b) => Number(a.unit) - Number(b.unit)).slice(0, 4)) chosen.add(r.unit);
  }
  const counts = {};
  for (const r of neurons) counts[r.label] = (counts[r.label] || 0) + 1;
  $("#neurons-note").textContent = Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ") || "no neuron labelled yet";
  renderNeurons();
}

async function dff() {
  const s = streams.find((x) => x.role === "dff");
  if (!s) return;
  // Before any neuron is labelled (or ticked), the first four ROIs.
  const picked = chosen.size ? [...chosen].map(Number) : [0, 1, 2, 3];
  const rois = picked.filter((r) => Number.isInteger(r)).slice(0, 8);
  const v = await api(`/view/traces?stream=${encodeURIComponent(s.key)}&rois=${rois.join(",")}`);
  chart("#dff-plot", `${s.key}|${rois.join(",")}`, {
    height: 300,
    scales: { x: { time: false } },
    axes: [{ label: "time, s" }, { label: "dF/F" }],
    series: [{ label: "s" }, ...v.traces.map((t, i) => ({ label: `unit ${t.roi}`, stroke: palette[i % palette.length] }))],
  }, [v.t, ...v.traces.map((t) => t.values)]);
}

// ---- Decoder: transfer-entropy rate, and the prediction against the actual target ----
async function decoder() {
  const key = $("#decoder-stream").value;
  if (!key) return;
  const v = await api(`/view/decoder?stream=${encodeURIComponent(key)}`);
  chart("#rate-plot", key, {
    height: 220,
    scales: { x: { time: false } },
    axes: [{ label: "time, s" }, { label: "TE, bits/s" }],
    series: [{ label: "s" }, { label: "rate", stroke: palette[3] }],
  }, [v.t, v.rate_bits_per_s]);
  const t = v.targets[0];
  if (!t) return;
  chart("#prediction-plot", `${key}|${t.name}`, {
    height: 220,
    scales: { x: { time: false } },
    axes: [{ label: "time, s" }, { label: t.name }],
    series: [{ label: "s" }, { label: "predicted", stroke: palette[0] }, { label: "actual", stroke: "#555" }],
  }, [v.t, t.predicted, t.actual]);
}

every(1000, null, topology);
every(3000, null, refreshStreams);
every(1000, "#probe-note", probe);
every(1000, "#frame-note", frame);
every(3000, "#neurons-note", neuronTable);
every(1000, "#neurons-note", dff);
every(1000, null, decoder);
