// Hand-written SVG charts: a line chart over time and horizontal bars. Colours come from style.css by
// class (the page's CSP allows no inline style); each chart carries a text summary for screen readers.

import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) el.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

function timeLabel(t, spanS) {
  const d = new Date(t * 1000);
  if (spanS > 2 * 86400) return `${d.getMonth() + 1}/${d.getDate()} ${String(d.getHours()).padStart(2, "0")}h`;
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

export const WINDOW_S = { "1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };

// The analytics timeline leaves out buckets without traffic: every bucket of the window, those filled in
// (counts 0, percentiles none), oldest first.
export function fillTimeline(timeline, windowS) {
  const width = timeline.bucket_s || 60;
  const now = Date.now() / 1000;
  const byBucket = new Map((timeline.points || []).map((p) => [Math.floor(p.t / width), p]));
  const filled = [];
  for (let b = Math.floor((now - windowS) / width); b <= Math.floor(now / width); b += 1) {
    filled.push(byBucket.get(b) || { t: b * width, requests: 0, ok: 0, errors: 0, latency_ms: null, errors_by_kind: {} });
  }
  return filled;
}

// series: [{name, cls, points: [[t, value|null], ...]}]; the time axis spans every point given.
export function lineChart({ title, series, yFormat = (v) => String(v), height = 200 }) {
  const width = 480;
  const pad = { left: 46, right: 14, top: 10, bottom: 26 };
  const all = series.flatMap((one) => one.points.filter((p) => p[1] !== null && p[1] !== undefined));
  const ts = series.flatMap((one) => one.points.map((p) => p[0]));
  const t0 = ts.length ? Math.min(...ts) : 0;
  const t1 = ts.length ? Math.max(...ts) : 1;
  const span = Math.max(t1 - t0, 1);
  const yMax = niceMax(Math.max(0, ...all.map((p) => p[1])));
  const x = (t) => pad.left + ((t - t0) / span) * (width - pad.left - pad.right);
  const y = (v) => pad.top + (1 - v / yMax) * (height - pad.top - pad.bottom);
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": summary(title, series, yFormat),
  });
  for (let i = 0; i <= 4; i += 1) {
    const v = (yMax * i) / 4;
    svg.appendChild(s("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v), class: "gridline" }));
    svg.appendChild(s("text", { x: pad.left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, yFormat(v)));
  }
  if (all.length) {
    for (let i = 0; i <= 4; i += 1) {
      const t = t0 + (span * i) / 4;
      const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
      svg.appendChild(s("text", { x: x(t), y: height - 8, class: "axis", "text-anchor": anchor }, timeLabel(t, span)));
    }
  } else {
    svg.appendChild(s("text", { x: width / 2, y: height / 2, class: "axis", "text-anchor": "middle" }, "no data in this window"));
  }
  series.forEach((one, index) => {
    const cls = one.cls || `series-${index}`;
    let path = "";
    let pen = false;
    for (const [t, v] of one.points) {
      if (v === null || v === undefined) {
        pen = false;
        continue;
      }
      path += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    }
    if (path) svg.appendChild(s("path", { d: path, class: `line ${cls}` }));
    one.points.forEach(([t, v], i) => {
      const near = (j) => one.points[j] && one.points[j][1] !== null && one.points[j][1] !== undefined;
      if (v !== null && v !== undefined && !near(i - 1) && !near(i + 1)) {
        svg.appendChild(s("circle", { cx: x(t), cy: y(v), r: 3, class: `dot ${cls}` }));
      }
    });
  });
  const legend = h(
    "ul",
    { class: "legend" },
    series.map((one, index) => h("li", { class: one.cls || `series-${index}` }, one.name)),
  );
  return h("figure", { class: "chart-box" }, h("figcaption", {}, title), svg, legend);
}

function summary(title, series, yFormat) {
  const parts = series.map((one) => {
    const values = one.points.map((p) => p[1]).filter((v) => v !== null && v !== undefined);
    if (!values.length) return `${one.name}: no data`;
    return `${one.name}: last ${yFormat(values[values.length - 1])}, max ${yFormat(Math.max(...values))}`;
  });
  return `${title}. ${parts.join("; ")}.`;
}

// rows: [{name, value, label}] -> one bar per row.
export function barChart({ title, rows, format = (v) => String(v) }) {
  const width = 640;
  const barH = 18;
  const gap = 6;
  const labelW = 220;
  const height = Math.max(1, rows.length) * (barH + gap) + gap;
  const max = niceMax(Math.max(0, ...rows.map((r) => r.value)));
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart bars",
    role: "img",
    "aria-label": `${title}. ` + rows.map((r) => `${r.name}: ${format(r.value)}`).join("; "),
  });
  rows.forEach((row, i) => {
    const top = gap + i * (barH + gap);
    const w = ((width - labelW - 90) * row.value) / max;
    svg.appendChild(s("text", { x: labelW - 8, y: top + barH - 5, class: "axis", "text-anchor": "end" }, clip(row.name, 32)));
    svg.appendChild(s("rect", { x: labelW, y: top, width: Math.max(w, 1), height: barH, class: `bar ${row.cls || ""}` }));
    svg.appendChild(s("text", { x: labelW + Math.max(w, 1) + 6, y: top + barH - 5, class: "axis" }, row.label || format(row.value)));
  });
  if (!rows.length) svg.appendChild(s("text", { x: 8, y: 16, class: "axis" }, "no data in this window"));
  return h("figure", { class: "chart-box" }, h("figcaption", {}, title), svg);
}

function clip(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

// The waterfall of a request's attempts: one bar per attempt from its start, as long as it lasted.
export function waterfall(attempts, totalMs) {
  const width = 720;
  const rowH = 26;
  const labelW = 230;
  const end = Math.max(totalMs || 0, ...attempts.map((a) => (a.start_ms || 0) + (a.duration_ms || 0)), 1);
  const height = attempts.length * rowH + 28;
  const scale = (width - labelW - 110) / end;
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart waterfall",
    role: "img",
    "aria-label":
      "Attempts: " +
      attempts
        .map((a) => `attempt ${a.attempt} ${a.platform}/${a.model} ${a.outcome} at ${Math.round(a.start_ms)} ms for ${Math.round(a.duration_ms || 0)} ms`)
        .join("; "),
  });
  attempts.forEach((a, i) => {
    const top = 6 + i * rowH;
    const x0 = labelW + (a.start_ms || 0) * scale;
    const w = Math.max((a.duration_ms || 0) * scale, 2);
    svg.appendChild(s("text", { x: labelW - 8, y: top + 15, class: "axis", "text-anchor": "end" }, clip(`#${a.attempt} ${a.platform}/${a.model}`, 34)));
    svg.appendChild(s("rect", { x: x0, y: top, width: w, height: rowH - 8, class: `bar outcome-${a.outcome}` }));
    if (a.ttfb_ms !== null && a.ttfb_ms !== undefined && a.outcome === "ok") {
      const tx = x0 + a.ttfb_ms * scale;
      svg.appendChild(s("line", { x1: tx, x2: tx, y1: top, y2: top + rowH - 8, class: "ttfb-mark" }));
    }
    svg.appendChild(s("text", { x: x0 + w + 6, y: top + 15, class: "axis" }, `${a.outcome} ${Math.round(a.duration_ms || 0)} ms`));
  });
  const axisY = attempts.length * rowH + 20;
  for (let i = 0; i <= 4; i += 1) {
    const t = (end * i) / 4;
    svg.appendChild(s("text", { x: labelW + t * scale, y: axisY, class: "axis", "text-anchor": "middle" }, `${Math.round(t)} ms`));
  }
  return svg;
}
