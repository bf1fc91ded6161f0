// Analytics from the stats actor: over time (requests, errors by kind, latency percentiles) and by model,
// platform and key, for a chosen window. Fetched when opened and when the window or dimension changes.

import * as api from "./api.js";
import { barChart, fillTimeline, lineChart, WINDOW_S } from "./charts.js";
import { h, ms, pct, replace, table } from "./dom.js";

const WINDOWS = ["1h", "24h", "7d", "30d"];
const DIMS = ["model", "platform", "key"];
const chosen = { window: "24h", dim: "model" };

function radios(name, legend, values, current, onChange) {
  const set = h("fieldset", { class: "segmented" }, h("legend", {}, legend));
  for (const value of values) {
    const id = `${name}-${value}`;
    const input = h("input", { type: "radio", name, id, value, checked: value === current });
    input.addEventListener("change", () => onChange(value));
    set.append(input, h("label", { for: id }, value));
  }
  return set;
}

export function analyticsPage(root) {
  const error = h("p", { class: "error", role: "alert" });
  const summary = h("div", { class: "cards" });
  const overTime = h("div", { class: "charts" });
  const byDim = h("div", {});
  const errors = h("div", {});
  root.append(
    h("h1", {}, "Analytics"),
    h("div", { class: "toolbar" }, radios("window", "Window", WINDOWS, chosen.window, (v) => { chosen.window = v; load(); }), radios("dim", "Break down by", DIMS, chosen.dim, (v) => { chosen.dim = v; loadDim(); })),
    error,
    summary,
    h("section", { "aria-labelledby": "an-time" }, h("h2", { id: "an-time" }, "Over time"), overTime),
    h("section", { "aria-labelledby": "an-dim" }, h("h2", { id: "an-dim" }, "Breakdown"), byDim),
    h("section", { "aria-labelledby": "an-err" }, h("h2", { id: "an-err" }, "Errors by kind"), errors),
  );

  function card(label, value) {
    return h("div", { class: "card" }, h("div", { class: "card-label" }, label), h("div", { class: "card-value" }, value));
  }

  async function loadDim() {
    try {
      const data = await api.get(`/admin/api/analytics/by/${chosen.dim}?window=${chosen.window}`);
      const rows = data.data || [];
      replace(
        byDim,
        barChart({ title: `Attempts by ${chosen.dim}`, rows: rows.map((r) => ({ name: r.name, value: r.attempts, label: `${r.attempts} (${pct(r.success_rate)} ok)` })) }),
        table(
          [chosen.dim[0].toUpperCase() + chosen.dim.slice(1), "Attempts", "OK", "Failed", "Success", "Latency p50", "p95", "TTFB p50", "Tokens in / out"],
          rows.map((r) =>
            h(
              "tr",
              {},
              h("th", { scope: "row" }, r.name),
              h("td", {}, r.attempts),
              h("td", {}, r.ok),
              h("td", {}, r.failed),
              h("td", {}, pct(r.success_rate)),
              h("td", {}, ms(r.latency_ms && r.latency_ms.p50)),
              h("td", {}, ms(r.latency_ms && r.latency_ms.p95)),
              h("td", {}, ms(r.ttfb_ms && r.ttfb_ms.p50)),
              h("td", {}, `${r.tokens ? r.tokens.input : 0} / ${r.tokens ? r.tokens.output : 0}`),
            ),
          ),
        ),
      );
    } catch (err) {
      error.textContent = err.message;
    }
  }

  async function load() {
    try {
      const [s, timeline, errs] = await Promise.all([
        api.get(`/admin/api/analytics/summary?window=${chosen.window}`),
        api.get(`/admin/api/analytics/timeline?window=${chosen.window}`),
        api.get(`/admin/api/analytics/errors?window=${chosen.window}`),
      ]);
      error.textContent = "";
      replace(
        summary,
        card("Requests", String(s.requests)),
        card("Success rate", pct(s.success_rate)),
        card("Fallbacks", String(s.fallbacks)),
        card("Latency p50 / p95", `${ms(s.latency_ms && s.latency_ms.p50)} / ${ms(s.latency_ms && s.latency_ms.p95)}`),
        card("TTFB p50 / p95", `${ms(s.ttfb_ms && s.ttfb_ms.p50)} / ${ms(s.ttfb_ms && s.ttfb_ms.p95)}`),
        card("Tokens in / out", `${s.tokens ? s.tokens.input : 0} / ${s.tokens ? s.tokens.output : 0}`),
      );
      const points = fillTimeline(timeline, WINDOW_S[chosen.window]);
      const kinds = [...new Set(points.flatMap((p) => Object.keys(p.errors_by_kind || {})))];
      replace(
        overTime,
        lineChart({
          title: `Requests per ${timeline.bucket_s >= 3600 ? "hour" : "minute"}`,
          series: [
            { name: "requests", cls: "series-requests", points: points.map((p) => [p.t, p.requests]) },
            { name: "ok", cls: "series-ok", points: points.map((p) => [p.t, p.ok]) },
            { name: "errors", cls: "series-errors", points: points.map((p) => [p.t, p.errors]) },
          ],
        }),
        lineChart({
          title: "Attempt errors by kind",
          series: kinds.length ? kinds.slice(0, 6).map((kind, i) => ({ name: kind, cls: `series-${i}`, points: points.map((p) => [p.t, (p.errors_by_kind || {})[kind] || 0]) })) : [{ name: "errors", cls: "series-errors", points: [] }],
        }),
        lineChart({
          title: "Latency percentiles (ms)",
          yFormat: (v) => String(Math.round(v)),
          series: [
            { name: "p50", cls: "series-p50", points: points.map((p) => [p.t, p.latency_ms ? p.latency_ms.p50 : null]) },
            { name: "p95", cls: "series-p95", points: points.map((p) => [p.t, p.latency_ms ? p.latency_ms.p95 : null]) },
          ],
        }),
      );
      const errRows = errs.data || [];
      replace(errors, errRows.length ? table(["Kind", "Count"], errRows.map((e) => h("tr", {}, h("th", { scope: "row" }, e.kind), h("td", {}, e.count)))) : h("p", { class: "muted" }, "No attempt failed in this window."));
    } catch (err) {
      error.textContent = err.message;
    }
    await loadDim();
  }

  load();
  return null;
}
