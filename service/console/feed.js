// The console's only live channel: one EventSource on /admin/events for the whole session (the cookie
// authenticates it; same origin). The browser reconnects by itself and sends Last-Event-ID, so the feed
// resumes from the log with no gap; when the gateway refused the stream (a 401 after a restart, say) the
// source is closed and we open a new one after the last seq we saw (`?after=`).

export const EVENT_TYPES = [
  "service_started", "service_stopped", "config_applied",
  "request_received", "route_decided", "attempt_started", "attempt_succeeded", "attempt_failed",
  "stream_stalled", "client_disconnected", "request_completed",
  "key_added", "key_removed", "key_disabled", "key_enabled", "key_invalidated", "key_checked",
  "cooldowns_reset", "model_updated",
  "session_pinned", "session_pin_cleared", "session_banned", "session_ban_lifted",
  "response_stored", "response_deleted",
];

const KEEP = 1000; // events kept for the Live page, newest last

const listeners = new Set();
const stateListeners = new Set();
export const recent = [];
let source = null;
let lastSeq = null;
let state = { name: "closed", detail: "" };
let retryTimer = null;
let retryDelay = 1000;
let wanted = false;
let stillSignedIn = async () => true;

// Asked when the gateway refused the stream: false (the session is over) stops the retries.
export function whenRefused(check) {
  stillSignedIn = check;
}

export function lastEventId() {
  return lastSeq;
}

export function currentState() {
  return state;
}

export function onEvent(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function onState(fn) {
  stateListeners.add(fn);
  fn(state);
  return () => stateListeners.delete(fn);
}

function setState(name, detail = "") {
  state = { name, detail };
  for (const fn of stateListeners) fn(state);
}

export function start() {
  wanted = true;
  if (source) return;
  open();
}

export function stop() {
  wanted = false;
  clearTimeout(retryTimer);
  if (source) source.close();
  source = null;
  setState("closed", "logged out");
}

// Reconnect now (the Live page's button): a new source resuming after the last event seen.
export function reconnect() {
  clearTimeout(retryTimer);
  if (source) source.close();
  source = null;
  wanted = true;
  open();
}

function open() {
  const url = lastSeq === null ? "/admin/events" : `/admin/events?after=${encodeURIComponent(lastSeq)}`;
  setState(lastSeq === null ? "connecting" : "reconnecting", lastSeq === null ? "" : `resuming after #${lastSeq}`);
  const es = new EventSource(url, { withCredentials: true });
  source = es;
  es.onopen = () => {
    retryDelay = 1000;
    setState("live", lastSeq === null ? "" : `after #${lastSeq}`);
  };
  es.onerror = () => {
    if (source !== es) return;
    if (es.readyState === EventSource.CONNECTING) {
      // The browser retries by itself with Last-Event-ID.
      setState("reconnecting", lastSeq === null ? "" : `resuming after #${lastSeq}`);
      return;
    }
    es.close();
    source = null;
    if (!wanted) return;
    setState("disconnected", `retrying in ${Math.round(retryDelay / 1000)} s`);
    const delay = retryDelay;
    retryDelay = Math.min(retryDelay * 2, 30000);
    stillSignedIn().then((yes) => {
      if (!yes || !wanted) return;
      retryTimer = setTimeout(() => {
        if (wanted && !source) open();
      }, delay);
    });
  };
  for (const type of EVENT_TYPES) es.addEventListener(type, (message) => deliver(type, message));
  es.addEventListener("message", (message) => deliver("message", message));
  es.addEventListener("lagged", (message) => {
    let from = "";
    try {
      from = JSON.parse(message.data).from;
    } catch {
      from = "";
    }
    setState("catching up", `fell behind; reading the log from #${from}`);
  });
}

function deliver(type, message) {
  let data = null;
  try {
    data = JSON.parse(message.data);
  } catch {
    data = { raw: message.data };
  }
  const seq = message.lastEventId ? Number(message.lastEventId) : null;
  if (seq !== null && !Number.isNaN(seq)) {
    if (lastSeq !== null && seq <= lastSeq) return; // already delivered (a resume never repeats, but be sure)
    lastSeq = seq;
  }
  if (state.name === "catching up") setState("live", "caught up from the log after falling behind");
  else if (state.name !== "live") setState("live", "");
  const event = { seq, type: (data && data.type) || type, data, received: Date.now() };
  recent.push(event);
  if (recent.length > KEEP) recent.splice(0, recent.length - KEEP);
  for (const fn of listeners) {
    try {
      fn(event);
    } catch (err) {
      console.error(err);
    }
  }
}
