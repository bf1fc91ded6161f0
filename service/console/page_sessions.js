// Sessions: each conversation's pin (the model and key its turns stay on) and bans (platforms it must
// not go to), most recent first; a pin or a ban can be cleared.

import * as api from "./api.js";
import { coalesce, dateTime, h, replace, toast } from "./dom.js";
import * as feed from "./feed.js";

export function sessionsPage(root) {
  const error = h("p", { class: "error", role: "alert" });
  const body = h("div", { id: "session-list" });
  root.append(h("h1", {}, "Sessions"), h("p", { class: "muted" }, "A session key comes from X-Session-Id or from the conversation's first turn."), error, body);

  async function act(session, what, call) {
    try {
      await call();
      toast(`${session}: ${what}`);
    } catch (err) {
      toast(`${session}: ${err.message}`, "error");
    }
    await load();
  }

  function row(s) {
    const path = `/admin/api/sessions/${api.seg(s.session)}`;
    return h(
      "tr",
      { "data-session": s.session },
      h("th", { scope: "row" }, h("span", { class: "ref" }, s.session)),
      h("td", {}, dateTime(s.last_use)),
      h(
        "td",
        {},
        s.pin
          ? [
              `${s.pin.platform}/${s.pin.model} (key ${s.pin.key_id}) `,
              h("span", { class: "muted small" }, `used ${dateTime(s.pin.used_at)} `),
              h("button", { type: "button", class: "link", "aria-label": `Clear the pin of ${s.session}`, onclick: () => act(s.session, "pin cleared", () => api.del(`${path}/pin`)) }, "clear"),
            ]
          : "–",
      ),
      h(
        "td",
        {},
        (s.bans || []).length
          ? h(
              "ul",
              { class: "plain" },
              s.bans.map((b) =>
                h(
                  "li",
                  {},
                  `${b.platform}: ${b.reason} `,
                  h("button", { type: "button", class: "link", "aria-label": `Clear the ban of ${s.session} on ${b.platform}`, onclick: () => act(s.session, `ban on ${b.platform} cleared`, () => api.del(`${path}/bans/${api.seg(b.platform)}`)) }, "clear"),
                ),
              ),
            )
          : "–",
      ),
    );
  }

  async function load() {
    try {
      const data = await api.get("/admin/api/sessions");
      error.textContent = "";
      const list = data.data || [];
      replace(
        body,
        list.length
          ? h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["Session", "Last use", "Pin", "Bans"].map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, list.map(row)))
          : h("p", { class: "muted" }, "No sessions yet."),
      );
    } catch (err) {
      error.textContent = err.message;
    }
  }

  const reload = coalesce(load, 1000);
  const off = feed.onEvent((event) => {
    if (event.type.startsWith("session_")) reload();
  });
  load();
  return off;
}
