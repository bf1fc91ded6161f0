// Keys: add one (pasted once: the field is cleared as soon as the gateway has it, and the key is never
// shown again), each key's status and cooldowns (reset one model's or all), check now, disable / enable,
// remove (keys added here or with the CLI; a key from the config or an env variable is disabled instead).

import * as api from "./api.js";
import { badge, coalesce, countdown, h, replace, toast } from "./dom.js";
import * as feed from "./feed.js";

export function keysPage(root) {
  const error = h("p", { class: "error", role: "alert" });
  const list = h("div", { id: "key-list" });
  const platforms = h("datalist", { id: "platform-list" });
  const platform = h("input", { id: "key-platform", name: "platform", required: true, list: "platform-list", autocomplete: "off" });
  const secret = h("input", { id: "key-secret", name: "key", type: "password", required: true, autocomplete: "off", spellcheck: "false" });
  const label = h("input", { id: "key-label", name: "label", autocomplete: "off" });
  const addError = h("p", { class: "error", role: "alert", id: "add-key-error" });
  const addButton = h("button", { type: "submit" }, "Add key");
  const form = h(
    "form",
    { class: "inline-form", method: "post", "aria-labelledby": "add-key-title" },
    h("h2", { id: "add-key-title" }, "Add a key"),
    h("div", { class: "field" }, h("label", { for: "key-platform" }, "Platform"), platform, platforms),
    h("div", { class: "field" }, h("label", { for: "key-secret" }, "Key"), secret),
    h("div", { class: "field" }, h("label", { for: "key-label" }, "Label (optional)"), label),
    addButton,
    addError,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    addButton.disabled = true;
    addError.textContent = "";
    const body = { platform: platform.value.trim(), key: secret.value };
    if (label.value.trim()) body.label = label.value.trim();
    try {
      const key = await api.post("/admin/api/keys", body);
      secret.value = "";
      label.value = "";
      toast(`Key ${key.id} stored for ${key.platform}; it will not be shown again.`);
      await load();
    } catch (err) {
      addError.textContent = err.param ? `${err.param}: ${err.message}` : err.message;
      secret.value = ""; // pasted once: not kept in the page after the gateway saw it
    } finally {
      addButton.disabled = false;
    }
  });
  root.append(h("h1", {}, "Keys"), error, list, form);

  async function act(key, what, call) {
    try {
      const answer = await call();
      if (answer && answer.message !== undefined && answer.ok !== undefined) {
        toast(`${key.id}: check ${answer.ok ? "passed" : "failed"}${answer.message ? ` (${answer.message})` : ""}`, answer.ok ? "info" : "error");
      } else {
        toast(`${key.id}: ${what}`);
      }
    } catch (err) {
      toast(`${key.id}: ${err.message}`, "error");
    }
    await load();
  }

  function row(key) {
    const now = Date.now() / 1000;
    const path = `/admin/api/keys/${api.seg(key.id)}`;
    const cooldowns = (key.cooldowns || []).filter((c) => c.until > now);
    return h(
      "tr",
      { "data-key": key.id },
      h("th", { scope: "row" }, h("span", { class: "ref" }, key.id), key.label ? h("div", { class: "muted small" }, key.label) : null),
      h("td", {}, key.platform),
      h("td", {}, key.source),
      h("td", {}, badge(key.status), key.reason ? h("div", { class: "muted small" }, key.reason) : null),
      h(
        "td",
        {},
        cooldowns.length
          ? h(
              "ul",
              { class: "plain" },
              cooldowns.map((c) =>
                h(
                  "li",
                  {},
                  `${c.model} (${c.kind}) `,
                  countdown(c.until),
                  " ",
                  h("button", { type: "button", class: "link", "aria-label": `Reset the cooldown of ${key.id} on ${c.model}`, onclick: () => act(key, `cooldown on ${c.model} reset`, () => api.post(`${path}/reset-cooldowns`, { model: c.model })) }, "reset"),
                ),
              ),
            )
          : "–",
      ),
      h(
        "td",
        {},
        h(
          "div",
          { class: "actions" },
        h("button", { type: "button", "aria-label": `Check ${key.id} now`, onclick: () => act(key, "checked", () => api.post(`${path}/check`)) }, "Check now"),
        cooldowns.length ? h("button", { type: "button", "aria-label": `Reset every cooldown of ${key.id}`, onclick: () => act(key, "cooldowns reset", () => api.post(`${path}/reset-cooldowns`, {})) }, "Reset cooldowns") : null,
        key.status === "disabled"
          ? h("button", { type: "button", "aria-label": `Enable ${key.id}`, onclick: () => act(key, "enabled", () => api.post(`${path}/enable`)) }, "Enable")
          : h("button", { type: "button", "aria-label": `Disable ${key.id}`, onclick: () => act(key, "disabled", () => api.post(`${path}/disable`, {})) }, "Disable"),
        key.source === "vault"
          ? h(
              "button",
              {
                type: "button",
                class: "danger",
                "aria-label": `Remove ${key.id}`,
                onclick: () => {
                  if (window.confirm(`Remove key ${key.id} (${key.platform})? It is deleted from the vault.`)) {
                    act(key, "removed", () => api.del(path));
                  }
                },
              },
              "Remove",
            )
          : null,
        ),
      ),
    );
  }

  async function load() {
    try {
      const [keys, models] = await Promise.all([api.get("/admin/api/keys"), api.get("/admin/api/models").catch(() => ({ data: [] }))]);
      error.textContent = "";
      const data = keys.data || [];
      const names = [...new Set([...data.map((k) => k.platform), ...(models.data || []).map((m) => m.platform)])].sort();
      replace(platforms, names.map((n) => h("option", { value: n })));
      replace(
        list,
        data.length
          ? h(
              "table",
              { class: "grid keys" },
              h("thead", {}, h("tr", {}, ["Key", "Platform", "Source", "Status", "Cooldowns", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
              h("tbody", {}, data.map(row)),
            )
          : h("p", { class: "muted" }, "No provider keys yet: add one below."),
      );
    } catch (err) {
      error.textContent = err.message;
    }
  }

  const reload = coalesce(load, 1000);
  const off = feed.onEvent((event) => {
    if ((event.type.startsWith("key_") || event.type === "cooldowns_reset") || (event.type === "attempt_failed" && event.data && event.data.kind === "rate_limited")) reload();
  });
  load();
  return off;
}
