// Live: the feed as readable rows, newest first. Filters apply to what the console has received (the
// last 1000 events) and to what comes; pause holds new rows back (counted) until resumed. The feed's
// state is shown; Reconnect opens a new stream after the last event seen, so nothing is missed.

import { clock, h, ms, replace } from "./dom.js";
import * as feed from "./feed.js";

const SHOWN = 300;
const GROUPS = {
  "": "every type",
  requests: "requests",
  attempts: "attempts and decisions",
  failures: "failures only",
  keys: "keys",
  models: "models",
  sessions: "sessions",
  service: "service",
};

function group(type) {
  if (type.startsWith("request_") || type === "client_disconnected") return "requests";
  if (type.startsWith("attempt_") || type === "route_decided" || type === "stream_stalled") return "attempts";
  if (type.startsWith("key_") || type === "cooldowns_reset") return "keys";
  if (type.startsWith("model_")) return "models";
  if (type.startsWith("session_")) return "sessions";
  return "service";
}

function isFailure(event) {
  const d = event.data || {};
  return event.type === "attempt_failed" || event.type === "stream_stalled" || event.type === "key_invalidated" || (event.type === "request_completed" && d.outcome !== "ok");
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

export function describe(event) {
  const d = event.data || {};
  const ref = d.platform && d.model ? `${d.platform}/${d.model}` : d.model || "";
  switch (event.type) {
    case "request_received":
      return `asked for ${d.model}${d.stream ? " (stream)" : ""}, ${plural(d.messages, "message")}, ~${d.est_input_tokens} tokens`;
    case "route_decided":
      return d.chosen_ref
        ? `attempt ${d.attempt} goes to ${d.chosen_ref} (${plural((d.candidates || []).length, "candidate")}, ${(d.excluded || []).length} excluded)`
        : `attempt ${d.attempt}: nothing available (${(d.excluded || []).length} excluded)`;
    case "attempt_started":
      return `attempt ${d.attempt} on ${ref} with key ${d.key_id}`;
    case "attempt_succeeded":
      return `attempt ${d.attempt} on ${ref} answered in ${ms(d.latency_ms)} (first byte ${ms(d.ttfb_ms)}), ${d.input_tokens} → ${d.output_tokens} tokens`;
    case "attempt_failed":
      return `attempt ${d.attempt} on ${ref} failed: ${d.kind}${d.status ? ` ${d.status}` : ""}${d.message ? ` – ${d.message}` : ""}`;
    case "stream_stalled":
      return `${ref} went silent ${d.phase === "pre" ? "before its first byte" : "mid-stream"} for ${d.silent_s} s`;
    case "client_disconnected":
      return `the client went away${ref ? ` during ${ref}` : ""}`;
    case "request_completed":
      return `${d.outcome} ${d.status} after ${plural(d.attempts, "attempt")} in ${ms(d.latency_ms)}${ref ? ` via ${ref}` : ""}${d.error ? ` – ${d.error}` : ""}`;
    case "key_added":
      return `key ${d.key_id} added for ${d.platform} (${d.source})`;
    case "key_removed":
      return `key ${d.key_id} removed: ${d.reason}`;
    case "key_disabled":
      return `key ${d.key_id} disabled${d.reason ? `: ${d.reason}` : ""}`;
    case "key_enabled":
      return `key ${d.key_id} enabled`;
    case "key_invalidated":
      return `key ${d.key_id} rejected by the provider (${d.status})${d.message ? `: ${d.message}` : ""}`;
    case "key_checked":
      return `key ${d.key_id} checked: ${d.ok ? "ok" : `failed${d.status ? ` (${d.status})` : ""}`}`;
    case "cooldowns_reset":
      return `key ${d.key_id}: cooldowns reset${d.model ? ` on ${d.model}` : ""}`;
    case "session_ban_lifted":
      return `session ${d.session}: ban on ${d.platform} lifted`;
    case "response_stored": // its messages and response are the conversation: not shown on one line
      return `response ${d.response_id} stored${d.previous_response_id ? ` after ${d.previous_response_id}` : ""}`;
    case "response_deleted":
      return `response ${d.response_id} deleted`;
    case "model_updated": {
      const parts = Object.entries(d).filter(([k, v]) => !["type", "ts", "request_id", "platform", "model"].includes(k) && v !== null);
      return `${ref} changed: ${parts.map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ")}`;
    }
    case "session_pinned":
      return `session ${d.session} pinned to ${ref} (key ${d.key_id})`;
    case "session_pin_cleared":
      return `session ${d.session} pin cleared: ${d.reason}`;
    case "session_banned":
      return `session ${d.session} banned from ${d.platform}: ${d.reason}`;
    case "service_started":
      return `gateway started (version ${d.version})${d.unclean_previous_start ? ", after an unclean stop" : ""}`;
    case "service_stopped":
      return `gateway stopped (${d.reason})`;
    case "config_applied":
      return `configuration ${String(d.hash || "").slice(0, 12)} applied (${(d.models || []).length} models)`;
    default: {
      const rest = Object.entries(d).filter(([k]) => !["type", "ts", "request_id"].includes(k));
      return rest.map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
    }
  }
}

export function livePage(root) {
  const state = h("p", { class: "feed-line", id: "live-state", role: "status" });
  const groupSelect = h("select", { id: "live-group" }, Object.entries(GROUPS).map(([value, text]) => h("option", { value }, text)));
  const platform = h("input", { id: "live-platform", autocomplete: "off" });
  const model = h("input", { id: "live-model", autocomplete: "off" });
  const requestId = h("input", { id: "live-request", autocomplete: "off" });
  const pause = h("button", { type: "button", "aria-pressed": "false", id: "live-pause" }, "Pause");
  const reconnect = h("button", { type: "button", id: "live-reconnect" }, "Reconnect");
  const held = h("span", { class: "muted", id: "live-held", "aria-live": "polite" });
  const rows = h("tbody", { id: "live-rows" });
  const filters = h(
    "form",
    { class: "filters", "aria-label": "Filter the feed" },
    h("div", { class: "field" }, h("label", { for: "live-group" }, "Show"), groupSelect),
    h("div", { class: "field" }, h("label", { for: "live-platform" }, "Platform"), platform),
    h("div", { class: "field" }, h("label", { for: "live-model" }, "Model"), model),
    h("div", { class: "field" }, h("label", { for: "live-request" }, "Request id"), requestId),
    h("div", { class: "field buttons" }, pause, reconnect, held),
  );
  filters.addEventListener("submit", (ev) => ev.preventDefault());
  root.append(
    h("h1", {}, "Live"),
    state,
    filters,
    h("table", { class: "grid live" }, h("thead", {}, h("tr", {}, ["Time", "Seq", "Type", "Request", "What happened"].map((c) => h("th", { scope: "col" }, c)))), rows),
  );

  let paused = false;
  let heldCount = 0;

  function matches(event) {
    const d = event.data || {};
    const g = groupSelect.value;
    if (g === "failures" ? !isFailure(event) : g && group(event.type) !== g) return false;
    if (platform.value.trim() && !String(d.platform || "").includes(platform.value.trim())) return false;
    if (model.value.trim() && !`${d.platform || ""}/${d.model || ""}`.includes(model.value.trim()) && !String(d.chosen_ref || "").includes(model.value.trim())) return false;
    if (requestId.value.trim() && !String(d.request_id || "").includes(requestId.value.trim())) return false;
    return true;
  }

  function row(event) {
    const d = event.data || {};
    return h(
      "tr",
      { class: `ev ev-${group(event.type)}${isFailure(event) ? " ev-failure" : ""}`, "data-seq": event.seq ?? "", "data-request": d.request_id || "" },
      h("td", { class: "nowrap" }, clock(d.ts)),
      h("td", { class: "muted" }, event.seq ?? ""),
      h("td", {}, h("span", { class: "type" }, event.type)),
      h("td", { class: "nowrap" }, d.request_id ? h("a", { href: `#/requests/${encodeURIComponent(d.request_id)}` }, d.request_id) : ""),
      h("td", {}, describe(event)),
    );
  }

  function repaint() {
    const shown = feed.recent.filter(matches).slice(-SHOWN).reverse();
    replace(rows, shown.length ? shown.map(row) : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "Nothing yet: events appear here as they are committed to the log.")));
    heldCount = 0;
    held.textContent = "";
  }

  const offEvent = feed.onEvent((event) => {
    if (!matches(event)) return;
    if (paused) {
      heldCount += 1;
      held.textContent = `${heldCount} new event${heldCount === 1 ? "" : "s"} held`;
      return;
    }
    const placeholder = rows.querySelector("td[colspan]");
    if (placeholder) placeholder.parentElement.remove();
    rows.insertBefore(row(event), rows.firstChild);
    while (rows.children.length > SHOWN) rows.removeChild(rows.lastChild);
  });
  const offState = feed.onState(({ name, detail }) => {
    const last = feed.lastEventId();
    state.dataset.state = name;
    state.textContent = `Feed ${name}${detail ? `: ${detail}` : ""}${last !== null ? ` · last event #${last}` : ""}`;
  });

  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", paused ? "true" : "false");
    pause.textContent = paused ? "Resume" : "Pause";
    if (!paused) repaint();
  });
  reconnect.addEventListener("click", () => feed.reconnect());
  for (const input of [groupSelect, platform, model, requestId]) input.addEventListener("input", repaint);
  repaint();
  return () => {
    offEvent();
    offState();
  };
}
