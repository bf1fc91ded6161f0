// Overview: key health, requests per minute, success rate, latency over the last hour (fetched when the
// page opens and again, at most every 5 s, when the feed says a request ended or a key changed), and live
// counters counted from the feed since the console opened.

import * as api from "./api.js";
import { fillTimeline, lineChart } from "./charts.js";
import { coalesce, h, ms, pct, replace } from "./dom.js";
import * as feed from "./feed.js";

const live = { received: 0, ok: 0, errors: 0, aborts: 0, fallbacks: 0, attemptsFailed: 0, stalls: 0 };
const since = Date.now();
const counterListeners = new Set();

feed.onEvent((event) => {
  const d = event.data || {};
  if (event.type === "request_received") live.received += 1;
  else if (event.type === "request_completed") {
    if (d.outcome === "ok") live.ok += 1;
    else if (d.outcome === "client_abort") live.aborts += 1;
    else live.errors += 1;
    if (d.attempts > 1) live.fallbacks += 1;
  } else if (event.type === "attempt_failed") live.attemptsFailed += 1;
  else if (event.type === "stream_stalled") live.stalls += 1;
  for (const fn of counterListeners) fn();
});

function card(label, value, detail) {
  return h("div", { class: "card" }, h("div", { class: "card-label" }, label), h("div", { class: "card-value" }, value), detail ? h("div", { class: "card-detail muted" }, detail) : null);
}

export function overviewPage(root) {
  const cards = h("div", { class: "cards", "aria-live": "polite" });
  const counters = h("div", { class: "cards", id: "live-counters" });
  const charts = h("div", { class: "charts" });
  const error = h("p", { class: "error", role: "alert" });
  root.append(
    h("h1", {}, "Overview"),
    error,
    h("section", { "aria-labelledby": "ov-now" }, h("h2", { id: "ov-now" }, "Last hour"), cards),
    h("section", { "aria-labelledby": "ov-live" }, h("h2", { id: "ov-live" }, "Live (from the feed, since the console opened)"), counters),
    h("section", { "aria-labelledby": "ov-charts" }, h("h2", { id: "ov-charts" }, "Over the last hour"), charts),
  );

  function paintCounters() {
    const minutes = Math.max((Date.now() - since) / 60000, 1 / 60);
    replace(
      counters,
      card("Requests", String(live.received), `${(live.received / minutes).toFixed(1)} per minute`),
      card("In flight", String(Math.max(live.received - live.ok - live.errors - live.aborts, 0))),
      card("Succeeded", String(live.ok)),
      card("Failed", String(live.errors), live.aborts ? `${live.aborts} client aborts` : null),
      card("Fell back", String(live.fallbacks)),
      card("Attempt failures", String(live.attemptsFailed), live.stalls ? `${live.stalls} stalls` : null),
    );
  }

  async function load() {
    try {
      const [keys, summary, timeline] = await Promise.all([
        api.get("/admin/api/keys"),
        api.get("/admin/api/analytics/summary?window=1h"),
        api.get("/admin/api/analytics/timeline?window=1h&bucket=minute"),
      ]);
      error.textContent = "";
      const now = Date.now() / 1000;
      const list = keys.data || [];
      const ok = list.filter((k) => k.status === "ok").length;
      const cooling = list.filter((k) => (k.cooldowns || []).some((c) => c.until > now)).length;
      const points = fillTimeline(timeline, 3600);
      const lastFull = points[points.length - 2];
      replace(
        cards,
        card("Keys healthy", `${ok} / ${list.length}`, `${list.filter((k) => k.status === "invalid").length} invalid, ${list.filter((k) => k.status === "disabled").length} disabled, ${cooling} cooling`),
        card("Requests per minute", (summary.requests / 60).toFixed(summary.requests < 60 ? 2 : 1), lastFull ? `${lastFull.requests} in the last full minute` : null),
        card("Success rate", pct(summary.success_rate), `${summary.ok} ok, ${summary.errors} errors, ${summary.fallbacks} fallbacks`),
        card("Latency p50 / p95", `${ms(summary.latency_ms && summary.latency_ms.p50)} / ${ms(summary.latency_ms && summary.latency_ms.p95)}`, `TTFB p50 ${ms(summary.ttfb_ms && summary.ttfb_ms.p50)}`),
      );
      replace(
        charts,
        lineChart({
          title: "Requests per minute",
          series: [
            { name: "requests", cls: "series-requests", points: points.map((p) => [p.t, p.requests]) },
            { name: "errors", cls: "series-errors", points: points.map((p) => [p.t, p.errors]) },
          ],
        }),
        lineChart({
          title: "Latency (ms)",
          yFormat: (v) => String(Math.round(v)),
          series: [
            { name: "p50", cls: "series-p50", points: points.map((p) => [p.t, p.latency_ms ? p.latency_ms.p50 : null]) },
            { name: "p95", cls: "series-p95", points: points.map((p) => [p.t, p.latency_ms ? p.latency_ms.p95 : null]) },
          ],
        }),
      );
    } catch (err) {
      error.textContent = err.message;
    }
  }

  const reload = coalesce(load, 5000);
  paintCounters();
  counterListeners.add(paintCounters);
  const off = feed.onEvent((event) => {
    if (event.type === "request_completed" || (event.type.startsWith("key_") || event.type === "cooldowns_reset")) reload();
  });
  load();
  return () => {
    counterListeners.delete(paintCounters);
    off();
  };
}
