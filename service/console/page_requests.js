// Requests: the recent ones with filters (fetched when opened, when the filters change, and, on the first
// page, when the feed says a request ended). A request's page: its attempts as a waterfall (start,
// duration, outcome), each decision's candidates and exclusions with the replay verdict, and its events.

import * as api from "./api.js";
import { waterfall } from "./charts.js";
import { badge, clock, coalesce, dateTime, h, ms, num, replace, table } from "./dom.js";
import * as feed from "./feed.js";

const filters = { outcome: "", platform: "", model: "", mode: "", protocol: "", since: "" };
const PROTOCOL_NAMES = { chat: "chat completions", responses: "Responses", messages: "Messages", embeddings: "embeddings" };

function outcomeBadge(outcome) {
  return badge(outcome === null || outcome === undefined ? "running" : outcome, outcome ? `outcome-${outcome}` : "outcome-running");
}

export function requestsPage(root) {
  const error = h("p", { class: "error", role: "alert" });
  const outcome = h("select", { id: "rq-outcome" }, ["", "ok", "error", "client_abort", "running"].map((v) => h("option", { value: v, selected: filters.outcome === v }, v || "any")));
  const mode = h("select", { id: "rq-mode" }, ["", "auto", "auto-fast", "auto-smart", "named"].map((v) => h("option", { value: v, selected: filters.mode === v }, v || "any")));
  const protocol = h("select", { id: "rq-protocol" }, ["", ...Object.keys(PROTOCOL_NAMES)].map((v) => h("option", { value: v, selected: filters.protocol === v }, v ? PROTOCOL_NAMES[v] : "any")));
  const platform = h("input", { id: "rq-platform", value: filters.platform, autocomplete: "off" });
  const model = h("input", { id: "rq-model", value: filters.model, autocomplete: "off" });
  const since = h("select", { id: "rq-since" }, [["", "any time"], ["3600", "last hour"], ["86400", "last 24 h"], ["604800", "last 7 days"]].map(([v, t]) => h("option", { value: v, selected: filters.since === v }, t)));
  const form = h(
    "form",
    { class: "filters", "aria-label": "Filter requests" },
    h("div", { class: "field" }, h("label", { for: "rq-outcome" }, "Outcome"), outcome),
    h("div", { class: "field" }, h("label", { for: "rq-mode" }, "Mode"), mode),
    h("div", { class: "field" }, h("label", { for: "rq-protocol" }, "Protocol"), protocol),
    h("div", { class: "field" }, h("label", { for: "rq-platform" }, "Platform"), platform),
    h("div", { class: "field" }, h("label", { for: "rq-model" }, "Model"), model),
    h("div", { class: "field" }, h("label", { for: "rq-since" }, "Since"), since),
    h("div", { class: "field buttons" }, h("button", { type: "submit" }, "Apply")),
  );
  const body = h("tbody", { id: "request-rows" });
  const more = h("button", { type: "button", hidden: true }, "Older requests");
  root.append(
    h("h1", {}, "Requests"),
    form,
    error,
    h("table", { class: "grid requests" }, h("thead", {}, h("tr", {}, ["Time", "Request", "Asked for", "Mode", "Protocol", "Outcome", "Attempts", "Latency", "Answered by"].map((c) => h("th", { scope: "col" }, c)))), body),
    more,
  );
  let next = null;
  let paged = false;

  function query(before) {
    const q = new URLSearchParams({ limit: "50" });
    for (const [k, v] of Object.entries({ outcome: outcome.value, platform: platform.value.trim(), model: model.value.trim(), mode: mode.value, protocol: protocol.value })) if (v) q.set(k, v);
    if (since.value) q.set("since", String(Date.now() / 1000 - Number(since.value)));
    if (before) q.set("before", before);
    return `/admin/api/requests?${q}`;
  }

  function row(r) {
    return h(
      "tr",
      { "data-request": r.id },
      h("td", { class: "nowrap" }, dateTime(r.ts)),
      h("td", { class: "nowrap" }, h("a", { href: `#/requests/${encodeURIComponent(r.id)}` }, r.id)),
      h("td", {}, r.requested, r.stream ? h("span", { class: "muted small" }, " stream") : null),
      h("td", {}, r.mode || "–"),
      h("td", {}, PROTOCOL_NAMES[r.protocol] || r.protocol || "–"),
      h("td", {}, outcomeBadge(r.outcome), r.status ? h("span", { class: "muted small" }, ` ${r.status}`) : null, r.error ? h("div", { class: "muted small" }, r.error) : null),
      h("td", {}, r.attempts ?? "–"),
      h("td", {}, ms(r.latency_ms)),
      h("td", {}, r.platform && r.model ? `${r.platform}/${r.model}` : "–"),
    );
  }

  async function load(before) {
    try {
      const data = await api.get(query(before));
      error.textContent = "";
      const rows = (data.data || []).map(row);
      if (before) body.append(...rows);
      else replace(body, rows.length ? rows : h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No requests match.")));
      next = data.next_before ?? null;
      more.hidden = next === null;
    } catch (err) {
      error.textContent = err.message;
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    Object.assign(filters, { outcome: outcome.value, platform: platform.value.trim(), model: model.value.trim(), mode: mode.value, protocol: protocol.value, since: since.value });
    paged = false;
    load();
  });
  more.addEventListener("click", () => {
    paged = true;
    load(next);
  });
  const reload = coalesce(() => {
    if (!paged) load();
  }, 1000);
  const off = feed.onEvent((event) => {
    if (event.type === "request_completed" || event.type === "request_received") reload();
  });
  load();
  return off;
}

function candidatesTable(candidates) {
  if (!candidates || !candidates.length) return h("p", { class: "muted" }, "No candidates.");
  return table(
    ["Model", "Pool", "Score", "θ", "Speed", "TTFB", "Intelligence", "Penalty"],
    candidates.map((c) =>
      h(
        "tr",
        {},
        h("th", { scope: "row" }, c.ref, c.named ? h("span", { class: "muted small" }, " named") : null),
        h("td", {}, c.pool ?? "–"),
        h("td", {}, num(c.score, 3)),
        h("td", {}, num(c.theta, 3)),
        h("td", {}, num(c.speed, 2)),
        h("td", {}, num(c.ttfb, 2)),
        h("td", {}, num(c.intelligence, 2)),
        h("td", {}, num(c.penalty, 2)),
      ),
    ),
    "Candidates",
  );
}

function exclusionsList(excluded) {
  if (!excluded || !excluded.length) return h("p", { class: "muted" }, "Nothing excluded.");
  return table(
    ["Model", "Why", "Code", "Until"],
    excluded.map((x) => h("tr", {}, h("th", { scope: "row" }, x.ref), h("td", {}, x.reason), h("td", {}, x.code || "–"), h("td", {}, x.until ? dateTime(x.until) : "–"))),
    "Excluded",
  );
}

function verdict(reproduces) {
  if (reproduces === null || reproduces === undefined) return badge("not replayed", "muted");
  return reproduces ? badge("reproduces", "ok") : badge("differs on replay", "error");
}

export function requestPage(root, id) {
  const error = h("p", { class: "error", role: "alert" });
  const body = h("div", { id: "request-story" });
  root.append(h("p", {}, h("a", { href: "#/requests" }, "← Requests")), h("h1", {}, `Request ${id}`), error, body);

  async function load() {
    try {
      const story = await api.get(`/admin/api/requests/${api.seg(id)}`);
      error.textContent = "";
      paint(story);
    } catch (err) {
      error.textContent = err.status === 404 ? `No request ${id} in the log (yet).` : err.message;
    }
  }

  function paint(story) {
    const r = story.request || {};
    const attempts = story.attempts || [];
    const decisions = story.decisions || [];
    replace(
      body,
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Received"), h("dd", {}, dateTime(r.ts)),
        h("dt", {}, "Asked for"), h("dd", {}, `${r.requested}${r.mode ? ` (mode ${r.mode})` : ""}${r.stream ? ", streaming" : ""}`),
        h("dt", {}, "Protocol"), h("dd", {}, PROTOCOL_NAMES[r.protocol] || r.protocol || "–"),
        h("dt", {}, "Outcome"), h("dd", {}, outcomeBadge(r.outcome), r.status ? ` ${r.status}` : "", r.error ? ` – ${r.error}` : ""),
        h("dt", {}, "Answered by"), h("dd", {}, r.platform && r.model ? `${r.platform}/${r.model}` : "–"),
        h("dt", {}, "Latency"), h("dd", {}, ms(r.latency_ms)),
        h("dt", {}, "Replay"), h("dd", { id: "replay-verdict" }, verdict(story.reproduces)),
      ),
      h(
        "section",
        { "aria-labelledby": "wf-title" },
        h("h2", { id: "wf-title" }, `Attempts (${attempts.length})`),
        attempts.length ? waterfall(attempts, r.latency_ms) : h("p", { class: "muted" }, "No attempt was made."),
        attempts.length
          ? table(
              ["#", "Model", "Key", "Start", "Duration", "First byte", "Outcome", "Kind", "Status", "Message"],
              attempts.map((a) =>
                h(
                  "tr",
                  { class: "attempt", "data-attempt": a.attempt, "data-outcome": a.outcome },
                  h("th", { scope: "row" }, a.attempt),
                  h("td", {}, `${a.platform}/${a.model}`),
                  h("td", {}, a.key_id || "–"),
                  h("td", {}, ms(a.start_ms)),
                  h("td", {}, ms(a.duration_ms)),
                  h("td", {}, ms(a.ttfb_ms)),
                  h("td", {}, badge(a.outcome, `outcome-${a.outcome}`)),
                  h("td", {}, a.kind || "–"),
                  h("td", {}, a.status ?? "–"),
                  h("td", {}, a.message || ""),
                ),
              ),
              "Attempts in order",
            )
          : null,
      ),
      h(
        "section",
        { "aria-labelledby": "dec-title" },
        h("h2", { id: "dec-title" }, `Decisions (${decisions.length})`),
        decisions.map((d) =>
          h(
            "article",
            { class: "decision", "data-seq": d.seq },
            h("h3", {}, `Attempt ${d.attempt}: ${d.chosen_ref ? `chose ${d.chosen_ref}` : "nothing available"}`, d.chosen_key ? h("span", { class: "muted small" }, ` key ${d.chosen_key}`) : null, " ", verdict(d.reproduces)),
            d.explanation ? h("pre", { class: "explanation" }, d.explanation) : null,
            d.not_admitted ? h("p", { class: "muted" }, `Not tried: ${d.not_admitted}`) : null,
            d.reproduces === false ? h("p", { class: "error" }, `Replayed, it chooses ${d.replayed_ref ?? "nothing"}.`) : null,
            candidatesTable(d.candidates),
            exclusionsList(d.excluded),
          ),
        ),
      ),
      h(
        "details",
        { class: "events" },
        h("summary", {}, `Events (${(story.events || []).length})`),
        h(
          "ol",
          { class: "plain" },
          (story.events || []).map((e) => h("li", {}, h("span", { class: "muted" }, `#${e.seq} ${clock(e.ts)} `), h("span", { class: "type" }, e.type), " ", h("code", {}, JSON.stringify(e.data)))),
        ),
      ),
    );
  }

  // A request still running gets its story again as the feed tells of its next steps.
  const reload = coalesce(load, 500);
  const off = feed.onEvent((event) => {
    if (event.data && event.data.request_id === id) reload();
  });
  load();
  return off;
}
