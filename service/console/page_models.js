// Models & Fallback: every model grouped by pool (fast / balanced / smart) in collapsible sections. A
// section's header is a real button with aria-expanded controlling its region (Enter and Space work as on
// any button). Each row: pool badge and pool choice, chain position with move up / down (the intelligence
// rank orders the chain), enable / disable, score parts, successes and failures, usable keys, cooldown.

import * as api from "./api.js";
import { badge, coalesce, countdown, h, ms, num, replace, toast } from "./dom.js";
import * as feed from "./feed.js";

export const POOLS = ["fast", "balanced", "smart"];
const collapsed = new Set(); // pools the operator folded, kept while the console is open

function keepFocus(root, paint) {
  const key = document.activeElement && root.contains(document.activeElement) ? document.activeElement.dataset.fk : null;
  paint();
  if (key) {
    const again = root.querySelector(`[data-fk="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

export function modelsPage(root) {
  const error = h("p", { class: "error", role: "alert" });
  const body = h("div", { id: "pools" });
  root.append(
    h("h1", {}, "Models & Fallback"),
    h(
      "p",
      { class: "muted" },
      "The fallback chain runs in intelligence-rank order among enabled, in-chain models. Scores are what a decision would score on average now.",
    ),
    error,
    body,
  );
  let models = [];

  async function change(model, patch, what) {
    try {
      await api.patch(api.modelPath(model.ref), patch);
      toast(`${model.ref}: ${what}`);
      await load();
    } catch (err) {
      toast(`${model.ref}: ${err.message}`, "error");
    }
  }

  async function move(model, direction) {
    const chain = models.filter((m) => m.chain_position !== null && m.chain_position !== undefined).sort((a, b) => a.chain_position - b.chain_position);
    const at = chain.findIndex((m) => m.ref === model.ref);
    const other = chain[at + direction];
    if (at < 0 || !other) return;
    // Swap ranks; equal ranks would not reorder, so the mover steps past its neighbour instead.
    let mine = other.intelligence_rank;
    let theirs = model.intelligence_rank;
    if (mine === theirs) {
      mine = direction < 0 ? Math.max(1, other.intelligence_rank - 1) : other.intelligence_rank + 1;
      theirs = other.intelligence_rank;
      if (direction < 0 && mine === theirs) theirs += 1;
    }
    try {
      await api.patch(api.modelPath(model.ref), { intelligence_rank: mine });
      if (theirs !== other.intelligence_rank) await api.patch(api.modelPath(other.ref), { intelligence_rank: theirs });
      toast(`${model.ref} moved ${direction < 0 ? "up" : "down"} the chain`);
    } catch (err) {
      toast(`${model.ref}: ${err.message}`, "error");
    }
    await load();
  }

  function row(m, chainLength) {
    const now = Date.now() / 1000;
    const s = m.score || {};
    const st = m.stats || {};
    const poolSelect = h(
      "select",
      { "aria-label": `Pool of ${m.ref}`, "data-fk": `pool:${m.ref}` },
      POOLS.map((p) => h("option", { value: p, selected: p === m.pool }, p)),
    );
    poolSelect.addEventListener("change", () => change(m, { pool: poolSelect.value }, `pool ${poolSelect.value}`));
    const inChain = m.chain_position !== null && m.chain_position !== undefined;
    return h(
      "tr",
      { "data-ref": m.ref, class: m.enabled ? "" : "disabled-row" },
      h("th", { scope: "row" }, h("span", { class: "ref" }, m.ref), h("div", { class: "muted small" }, `context ${m.context_window ?? "–"} · intelligence #${m.intelligence_rank}`)),
      h("td", {}, badge(m.pool, `pool-${m.pool}`), " ", poolSelect),
      h(
        "td",
        { class: "chain" },
        h("span", { class: "position" }, inChain ? `#${m.chain_position}` : m.in_chain ? "–" : "out"),
        h("button", { type: "button", class: "icon", "aria-label": `Move ${m.ref} up the chain`, "data-fk": `up:${m.ref}`, disabled: !inChain || m.chain_position <= 1, onclick: () => move(m, -1) }, "▲"),
        h("button", { type: "button", class: "icon", "aria-label": `Move ${m.ref} down the chain`, "data-fk": `down:${m.ref}`, disabled: !inChain || m.chain_position >= chainLength, onclick: () => move(m, 1) }, "▼"),
        h("button", { type: "button", class: "link", "aria-label": `${m.in_chain ? "Take" : "Put"} ${m.ref} ${m.in_chain ? "out of" : "in"} the chain`, "data-fk": `chain:${m.ref}`, onclick: () => change(m, { in_chain: !m.in_chain }, m.in_chain ? "out of the chain" : "in the chain") }, m.in_chain ? "take out" : "put in"),
      ),
      h(
        "td",
        {},
        badge(m.enabled ? "enabled" : "disabled"),
        " ",
        h("button", { type: "button", "aria-label": `${m.enabled ? "Disable" : "Enable"} ${m.ref}`, "data-fk": `enable:${m.ref}`, onclick: () => change(m, { enabled: !m.enabled }, m.enabled ? "disabled" : "enabled") }, m.enabled ? "Disable" : "Enable"),
      ),
      h(
        "td",
        { class: "score" },
        h("div", {}, `balanced ${num(s.balanced, 3)} · smart ${num(s.smart, 3)}`),
        h("div", { class: "muted small" }, `θ ${num(s.theta_mean, 3)} · speed ${num(s.speed, 2)} · ttfb ${num(s.ttfb, 2)} · intel ${num(s.intelligence, 2)} · penalty ${num(s.penalty, 2)}`),
      ),
      h(
        "td",
        {},
        h("div", {}, `${st.successes ?? 0} ok / ${st.failures ?? 0} failed`),
        h("div", { class: "muted small" }, `decayed ${num(st.decayed_successes, 1)} / ${num(st.decayed_failures, 1)} · ${num(st.tps, 0)} tok/s · ttfb ${ms(st.ttfb_ms)}`),
      ),
      h("td", {}, `${m.usable_keys ?? 0} / ${m.keys ?? 0}`),
      h("td", {}, m.cooldown_until && m.cooldown_until > now ? countdown(m.cooldown_until) : "–"),
    );
  }

  function section(pool, list, chainLength) {
    const id = `pool-${pool}`;
    const open = !collapsed.has(pool);
    const region = h(
      "div",
      { id, role: "region", "aria-labelledby": `${id}-toggle`, hidden: !open },
      list.length
        ? h(
            "table",
            { class: "grid models" },
            h("thead", {}, h("tr", {}, ["Model", "Pool", "Chain", "Enabled", "Score", "Outcomes", "Usable keys", "Cooldown"].map((c) => h("th", { scope: "col" }, c)))),
            h("tbody", {}, list.map((m) => row(m, chainLength))),
          )
        : h("p", { class: "muted" }, "No models in this pool."),
    );
    const toggle = h(
      "button",
      { type: "button", id: `${id}-toggle`, class: "section-toggle", "aria-expanded": open ? "true" : "false", "aria-controls": id, "data-fk": `toggle:${pool}` },
      h("span", { class: "chevron", "aria-hidden": "true" }, "▸"),
      ` ${pool[0].toUpperCase()}${pool.slice(1)} `,
      h("span", { class: "muted" }, `(${list.length} model${list.length === 1 ? "" : "s"}, ${list.filter((m) => m.enabled).length} enabled)`),
    );
    toggle.addEventListener("click", () => {
      const expand = toggle.getAttribute("aria-expanded") !== "true";
      toggle.setAttribute("aria-expanded", expand ? "true" : "false");
      region.hidden = !expand;
      if (expand) collapsed.delete(pool);
      else collapsed.add(pool);
    });
    return h("section", { class: "pool", "data-pool": pool }, h("h2", {}, toggle), region);
  }

  function paint() {
    const chainLength = models.filter((m) => m.chain_position !== null && m.chain_position !== undefined).length;
    // Embedding models are never in the chain and their pool means nothing: a section of their own.
    const groupOf = (m) => (m.task === "embedding" ? "embedding" : m.pool);
    const extra = [...new Set(models.map(groupOf).filter((p) => !POOLS.includes(p) && p !== "embedding"))];
    const groups = [...POOLS, ...extra, ...(models.some((m) => m.task === "embedding") ? ["embedding"] : [])];
    keepFocus(root, () => replace(body, groups.map((group) => section(group, models.filter((m) => groupOf(m) === group), chainLength))));
  }

  async function load() {
    try {
      const data = await api.get("/admin/api/models");
      models = data.data || [];
      error.textContent = "";
      paint();
    } catch (err) {
      error.textContent = err.message;
    }
  }

  const reload = coalesce(load, 2000);
  const off = feed.onEvent((event) => {
    if (event.type.startsWith("model_") || (event.type.startsWith("key_") || event.type === "cooldowns_reset") || event.type === "attempt_succeeded" || event.type === "attempt_failed" || event.type === "config_applied") reload();
  });
  load();
  return off;
}
