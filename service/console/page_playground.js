// Playground: send a chat through the gateway as a client would (POST /admin/api/playground/chat is
// /v1/chat/completions behind the admin session), streaming or not, with a mode or a named model; the
// answer shows as it streams, with where it went (X-Routed-Via) and a link to the request's story.

import * as api from "./api.js";
import { h, replace } from "./dom.js";

const remembered = { target: "auto", message: "Say hello in five words.", stream: true, session: "" };

export function playgroundPage(root) {
  const target = h("select", { id: "pg-target" }, ["auto", "auto-fast", "auto-smart"].map((m) => h("option", { value: m }, m)));
  const session = h("input", { id: "pg-session", autocomplete: "off", value: remembered.session, placeholder: "none" });
  const message = h("textarea", { id: "pg-message", rows: 4, required: true });
  message.value = remembered.message;
  const stream = h("input", { id: "pg-stream", type: "checkbox", checked: remembered.stream });
  const send = h("button", { type: "submit", id: "pg-send" }, "Send");
  const stop = h("button", { type: "button", id: "pg-stop", disabled: true }, "Stop");
  const answer = h("pre", { id: "pg-answer", class: "answer", "aria-live": "polite", "aria-busy": "false" });
  const meta = h("dl", { id: "pg-meta", class: "facts" });
  const error = h("p", { id: "pg-error", class: "error", role: "alert" });
  const form = h(
    "form",
    { class: "playground", "aria-label": "Chat" },
    h("div", { class: "field" }, h("label", { for: "pg-target" }, "Mode or model"), target),
    h("div", { class: "field" }, h("label", { for: "pg-session" }, "X-Session-Id (optional)"), session),
    h("div", { class: "field wide" }, h("label", { for: "pg-message" }, "Message"), message),
    h("div", { class: "field check" }, stream, h("label", { for: "pg-stream" }, "Stream the answer")),
    h("div", { class: "field buttons" }, send, stop),
  );
  root.append(h("h1", {}, "Playground"), form, error, h("h2", {}, "Answer"), answer, meta);

  api.get("/admin/api/models").then(
    (data) => {
      const models = (data.data || []).filter((m) => m.enabled);
      target.append(...models.map((m) => h("option", { value: m.ref }, m.ref)));
      target.value = [...target.options].some((o) => o.value === remembered.target) ? remembered.target : "auto";
    },
    () => {},
  );

  let controller = null;
  stop.addEventListener("click", () => controller && controller.abort());

  function showMeta(fields) {
    replace(meta, fields.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function where(headers, requestId, routed, fallbacks) {
    const fields = [["Routed via", routed || "–"], ["Fallback attempts", fallbacks ?? "–"]];
    if (requestId) fields.push(["Request", h("a", { href: `#/requests/${encodeURIComponent(requestId)}`, id: "pg-request-link" }, requestId)]);
    if (headers && headers.get("X-Skipped-Models")) fields.push(["Skipped", headers.get("X-Skipped-Models")]);
    showMeta(fields);
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    Object.assign(remembered, { target: target.value, message: message.value, stream: stream.checked, session: session.value });
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    answer.textContent = "";
    answer.setAttribute("aria-busy", "true");
    error.textContent = "";
    showMeta([]);
    const body = { model: target.value, messages: [{ role: "user", content: message.value }], stream: stream.checked };
    try {
      const headers = {};
      if (session.value.trim()) headers["X-Session-Id"] = session.value.trim();
      const response = await api.postRaw("/admin/api/playground/chat", body, controller.signal, headers);
      const requestId = response.headers.get("X-Request-Id");
      let routed = response.headers.get("X-Routed-Via");
      let fallbacks = response.headers.get("X-Fallback-Attempts");
      where(response.headers, requestId, routed, fallbacks);
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.startsWith("text/event-stream")) {
        const data = await response.json().catch(() => null);
        if (!response.ok) {
          error.textContent = `${response.status}: ${(data && data.error && data.error.message) || response.statusText}`;
        } else {
          answer.textContent = (data && data.choices && data.choices[0] && data.choices[0].message && data.choices[0].message.content) || "";
        }
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of block.split("\n")) {
            if (line.startsWith(": routed-via ")) {
              routed = line.slice(": routed-via ".length);
              where(response.headers, requestId, routed, fallbacks);
            } else if (line.startsWith(": fallback-attempts ")) {
              fallbacks = line.slice(": fallback-attempts ".length);
              where(response.headers, requestId, routed, fallbacks);
            } else if (line.startsWith("data: ")) {
              const data = line.slice(6);
              if (data === "[DONE]") continue;
              let frame = null;
              try {
                frame = JSON.parse(data);
              } catch {
                continue;
              }
              if (frame.error) {
                error.textContent = `Stream error: ${frame.error.message}`;
                continue;
              }
              const delta = frame.choices && frame.choices[0] && frame.choices[0].delta;
              if (delta && delta.content) answer.textContent += delta.content;
            }
          }
        }
      }
    } catch (err) {
      error.textContent = err.name === "AbortError" ? "Stopped." : err.message;
    } finally {
      answer.setAttribute("aria-busy", "false");
      send.disabled = false;
      stop.disabled = true;
      controller = null;
    }
  });
  return () => controller && controller.abort();
}
