// The edgeinfer dashboard: polls /admin/state once a second and draws every model.
// Written here, no library: DOM nodes by createElement/textContent, charts as SVG.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const needsKey = document.body.dataset.auth === "1";
let key = sessionStorage.getItem("edgeinfer-admin-key") || "";
let timer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function fmt(v, unit) {
  if (v === null || v === undefined) return "–";
  return (Math.round(v * 10) / 10) + (unit || "");
}

// A line chart of several series over the same samples, scaled to the largest value.
function chart(id, samples, series) {
  const w = 460, h = 110, pad = 4;
  const root = svg("svg", { class: "chart", id, viewBox: `0 0 ${w} ${h}`,
    preserveAspectRatio: "none", role: "img" });
  const n = samples.length;
  let top = 1;
  for (const s of series) for (const p of samples) top = Math.max(top, p[s.field] || 0);
  root.append(svg("line", { x1: 0, y1: h - pad, x2: w, y2: h - pad, stroke: "#2c3742" }));
  const label = svg("text", { x: 4, y: 12 });
  label.textContent = "max " + fmt(top);
  root.append(label);
  for (const s of series) {
    const pts = samples.map((p, i) => {
      const x = n > 1 ? (i / (n - 1)) * w : w;
      const y = h - pad - ((p[s.field] || 0) / top) * (h - 2 * pad - 12);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    const d = pts.length ? "M" + pts.join(" L") : "";
    const path = svg("path", { d, fill: "none", "stroke-width": 2,
      "vector-effect": "non-scaling-stroke", "data-series": s.field, id: `${id}-${s.field}` });
    path.style.stroke = s.color;
    root.append(path);
  }
  return root;
}

function legend(items) {
  return el("div", { class: "legend" }, ...items.map(([name, color]) => {
    const i = el("i");
    i.style.background = color;
    return el("span", {}, i, name);
  }));
}

function stat(value, name) {
  return el("div", { class: "stat" }, el("b", {}, value), el("span", {}, name));
}

function table(head, rows) {
  const t = el("table");
  t.append(el("tr", {}, ...head.map((h) => el("th", {}, h))));
  for (const r of rows) t.append(el("tr", {}, ...r.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", {}, c)))));
  return t;
}

function phases(ms) {
  const total = Object.values(ms).reduce((a, b) => a + b, 0) || 1;
  const bar = el("span");
  for (const [name, v] of Object.entries(ms)) {
    const p = el("span", { class: "phase " + name, title: `${name} ${fmt(v, " ms")}` });
    p.style.width = Math.max(2, (v / total) * 120) + "px";
    bar.append(p);
  }
  bar.append(" " + Object.entries(ms).map(([k, v]) => `${k} ${fmt(v, " ms")}`).join(", "));
  return bar;
}

function card(m) {
  const r = m.replicas;
  const last = m.samples.length ? m.samples[m.samples.length - 1] : { rps: 0 };
  const c = el("section", { class: "card", id: `model-${m.model}`, "data-model": m.model });
  c.append(el("h2", {}, m.model));
  c.append(el("p", { class: "sub" }, `${m.task} on ${m.runtime}: ${m.runtime_reason}`));
  c.append(el("div", { class: "stats" },
    stat(`${r.ready}/${r.starting}/${r.draining}`, "ready/start/drain"),
    stat(r.desired, "desired"),
    stat(fmt(last.rps), "req/s"),
    stat(m.queue_depth, "queue"),
    stat(m.in_flight, "in flight"),
    stat(m.bridge_served, "bridge served"),
    stat(fmt(m.latency_ms.p50, " ms"), "latency p50"),
    stat(fmt(m.latency_ms.p95, " ms"), "latency p95"),
    stat(fmt(m.latency_ms.p99, " ms"), "latency p99"),
    stat(fmt(m.ttft_ms.p50, " ms"), "TTFT p50"),
    stat(fmt(m.ttft_ms.p95, " ms"), "TTFT p95"),
    stat(m.requests, "requests"),
  ));
  c.append(el("h3", {}, "Replicas by state"));
  c.append(chart(`chart-${m.model}-replicas`, m.samples, [
    { field: "ready", color: "var(--ready)" },
    { field: "starting", color: "var(--starting)" },
    { field: "draining", color: "var(--draining)" },
  ]));
  c.append(legend([["ready", "var(--ready)"], ["starting", "var(--starting)"],
    ["draining", "var(--draining)"]]));
  c.append(el("h3", {}, "Requests per second and queue"));
  c.append(chart(`chart-${m.model}-traffic`, m.samples, [
    { field: "rps", color: "var(--rps)" },
    { field: "queued", color: "var(--err)" },
  ]));
  c.append(legend([["req/s", "var(--rps)"], ["queued", "var(--err)"]]));
  c.append(el("h3", {}, "Autoscaler"));
  c.append(el("p", { class: "sub" }, `${m.autoscaler.panic ? "PANIC: " : ""}${m.autoscaler.reason}`));
  if (m.decisions.length) {
    c.append(table(["time", "desired", "why"], m.decisions.slice(-5).reverse().map((d) =>
      [new Date(d.t * 1000).toLocaleTimeString(), d.desired, d.reason])));
  }
  c.append(el("h3", {}, "Cold starts"));
  if (m.cold_starts.length) {
    c.append(table(["time", "total", "phases"], m.cold_starts.slice(-5).reverse().map((s) =>
      [new Date(s.at * 1000).toLocaleTimeString(), fmt(s.total_ms, " ms"), phases(s.phases_ms)])));
  } else {
    c.append(el("p", { class: "sub" }, "none yet"));
  }
  c.append(el("h3", {}, "Plan"));
  const plan = m.placement;
  if (plan && plan.candidates) {
    c.append(el("p", { class: "sub" }, plan.reason));
    c.append(table(["tier", "verdict", "why"], plan.candidates.map((k) => {
      const v = el("span", { class: k.verdict === "chosen" ? "chosen" : "" }, k.verdict);
      return [k.tier, v, k.reason];
    })));
  } else {
    c.append(el("p", { class: "sub" }, "no manager plan here"));
  }
  return c;
}

function usageCard(usage) {
  const c = el("section", { class: "card", id: "usage" });
  c.append(el("h2", {}, "Usage per key, last hour"));
  const keys = Object.entries(usage.by_key || {});
  if (!keys.length) {
    c.append(el("p", { class: "sub" }, "no requests yet"));
    return c;
  }
  c.append(table(["key", "requests", "errors", "tokens in", "tokens out"], keys.map(([k, u]) =>
    [k, u.requests, u.errors, u.input_tokens, u.output_tokens])));
  return c;
}

function render(state) {
  const main = document.getElementById("models");
  main.replaceChildren(...state.models.map(card), usageCard(state.usage || {}));
  document.getElementById("status").textContent =
    `${state.models.length} models · ${new Date(state.now * 1000).toLocaleTimeString()}`;
}

function showLogin(message) {
  const form = document.getElementById("login");
  form.hidden = false;
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("status").textContent = "admin key needed";
}

async function poll() {
  try {
    const headers = key ? { Authorization: "Bearer " + key } : {};
    const answer = await fetch("/admin/state", { headers, cache: "no-store" });
    if (answer.status === 401 || answer.status === 403) {
      stop();
      sessionStorage.removeItem("edgeinfer-admin-key");
      key = "";
      showLogin("that key was refused");
      return;
    }
    render(await answer.json());
  } catch (err) {
    document.getElementById("status").textContent = "unreachable: " + err.message;
  }
}

function start() {
  document.getElementById("login").hidden = true;
  poll();
  timer = setInterval(poll, 1000);
}

function stop() {
  if (timer !== null) clearInterval(timer);
  timer = null;
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  key = document.getElementById("key").value.trim();
  sessionStorage.setItem("edgeinfer-admin-key", key);
  start();
});

if (needsKey && !key) showLogin(""); else start();
