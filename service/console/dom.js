// Building the page without innerHTML: every text from the gateway (model ids, error messages, labels) is
// set as text, so nothing it says can become markup or script.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

// Times from the gateway are wall-clock seconds since the epoch.
export function clock(ts) {
  if (ts === null || ts === undefined) return "–";
  const d = new Date(ts * 1000);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

export function dateTime(ts) {
  if (ts === null || ts === undefined) return "–";
  return new Date(ts * 1000).toLocaleString([], { hour12: false });
}

export function ms(value) {
  if (value === null || value === undefined) return "–";
  if (value >= 10000) return (value / 1000).toFixed(1) + " s";
  return Math.round(value) + " ms";
}

export function pct(rate) {
  if (rate === null || rate === undefined) return "–";
  return (rate * 100).toFixed(1) + " %";
}

export function num(value, digits = 2) {
  if (value === null || value === undefined) return "–";
  if (Number.isInteger(value)) return String(value);
  return Number(value).toFixed(digits);
}

export function duration(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

// One ticking clock for every countdown on the page: it only rewrites text, it never asks the gateway.
const countdowns = new Set();
let ticker = null;

export function countdown(until, doneText = "ready") {
  const el = h("span", { class: "countdown" });
  el.dataset.until = String(until);
  el.dataset.done = doneText;
  paint(el);
  countdowns.add(el);
  if (ticker === null) ticker = setInterval(tick, 1000);
  return el;
}

function paint(el) {
  const left = Number(el.dataset.until) - Date.now() / 1000;
  el.textContent = left > 0 ? duration(left) : el.dataset.done;
  el.classList.toggle("expired", left <= 0);
}

function tick() {
  for (const el of countdowns) {
    if (!el.isConnected) countdowns.delete(el);
    else paint(el);
  }
  if (countdowns.size === 0) {
    clearInterval(ticker);
    ticker = null;
  }
}

let toastTimer = null;

export function toast(message, kind = "info") {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.dataset.kind = kind;
  el.classList.add("shown");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove("shown"), 6000);
}

export function badge(text, kind) {
  return h("span", { class: `badge badge-${kind || text}` }, text);
}

// A table whose header cells are real column headers.
export function table(columns, rows, caption) {
  return h(
    "table",
    { class: "grid" },
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows),
  );
}

// At most one call per `waitMs`, after the first request for one: a page that refetches on feed events
// stays at one fetch per interval however busy the gateway is.
export function coalesce(fn, waitMs) {
  let timer = null;
  return () => {
    if (timer !== null) return;
    timer = setTimeout(() => {
      timer = null;
      fn();
    }, waitMs);
  };
}
