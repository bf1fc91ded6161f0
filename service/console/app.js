// The console: hash routes (#/models, #/requests/<id>, ...), one page at a time in <main>. A page is
// `render(root, params)` and may return a cleanup (its feed listeners, its timers) run when it is left.

import * as api from "./api.js";
import { h, replace, toast } from "./dom.js";
import * as feed from "./feed.js";
import { overviewPage } from "./page_overview.js";
import { modelsPage } from "./page_models.js";
import { keysPage } from "./page_keys.js";
import { livePage } from "./page_live.js";
import { requestsPage, requestPage } from "./page_requests.js";
import { analyticsPage } from "./page_analytics.js";
import { sessionsPage } from "./page_sessions.js";
import { playgroundPage } from "./page_playground.js";

const ROUTES = [
  [/^\/overview$/, overviewPage, "Overview"],
  [/^\/models$/, modelsPage, "Models & Fallback"],
  [/^\/keys$/, keysPage, "Keys"],
  [/^\/live$/, livePage, "Live"],
  [/^\/requests$/, requestsPage, "Requests"],
  [/^\/requests\/(.+)$/, requestPage, "Request"],
  [/^\/analytics$/, analyticsPage, "Analytics"],
  [/^\/sessions$/, sessionsPage, "Sessions"],
  [/^\/playground$/, playgroundPage, "Playground"],
];

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const logoutButton = document.getElementById("logout");
const feedState = document.getElementById("feed-state");
let signedIn = false;
let cleanup = null;
let afterLogin = "#/overview";

function leavePage() {
  if (typeof cleanup === "function") {
    try {
      cleanup();
    } catch (err) {
      console.error(err);
    }
  }
  cleanup = null;
}

function route() {
  if (!signedIn) {
    showLogin();
    return;
  }
  const path = (location.hash || "#/overview").replace(/^#/, "") || "/overview";
  const found = ROUTES.find(([pattern]) => pattern.test(path));
  if (!found) {
    location.replace("#/overview");
    return;
  }
  const [pattern, page, title] = found;
  const params = path.match(pattern).slice(1).map(decodeURIComponent);
  leavePage();
  for (const link of nav.querySelectorAll("a")) {
    const here = path === link.getAttribute("href").slice(1) || path.startsWith(link.getAttribute("href").slice(1) + "/");
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${title} · switchboard`;
  replace(view);
  view.dataset.page = title.toLowerCase().split(" ")[0];
  try {
    cleanup = page(view, ...params);
  } catch (err) {
    console.error(err);
    view.appendChild(h("p", { class: "error", role: "alert" }, String(err.message || err)));
  }
  // Focus moves to the new page's heading, so a screen reader announces it and Tab starts there.
  const heading = view.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

function showLogin(message) {
  leavePage();
  nav.hidden = true;
  logoutButton.hidden = true;
  feedState.hidden = true;
  document.title = "Log in · switchboard";
  view.dataset.page = "login";
  const field = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "current-password",
    required: true,
    spellcheck: "false",
    "aria-describedby": "token-help",
  });
  const error = h("p", { id: "login-error", class: "error", role: "alert" }, message || "");
  const submit = h("button", { type: "submit" }, "Log in");
  const form = h(
    "form",
    { class: "login", method: "post", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Log in"),
    h("label", { for: "token" }, "Admin token"),
    field,
    h(
      "p",
      { id: "token-help", class: "muted" },
      "The admin token was printed once when the gateway first started ([admin] token in the config).",
    ),
    submit,
    error,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    error.textContent = "";
    try {
      await api.login(field.value);
      field.value = "";
      signIn();
    } catch (err) {
      error.textContent = err.message;
      field.focus();
      field.select();
    } finally {
      submit.disabled = false;
    }
  });
  replace(view, form);
  field.focus();
}

function signIn() {
  signedIn = true;
  nav.hidden = false;
  logoutButton.hidden = false;
  feedState.hidden = false;
  feed.start();
  const target = afterLogin;
  afterLogin = "#/overview";
  if (location.hash === target) route();
  else location.hash = target; // routes on hashchange
}

function signOut(message) {
  signedIn = false;
  feed.stop();
  if (location.hash && location.hash !== "#/login") afterLogin = location.hash;
  showLogin(message);
}

api.whenSignedOut((message) => {
  if (signedIn) signOut(`Your session ended: ${message}`);
});

feed.whenRefused(async () => {
  try {
    await api.session();
    return true;
  } catch (err) {
    if (err.status === 401 && signedIn) signOut("Your session ended: log in again.");
    return err.status !== 401;
  }
});

logoutButton.addEventListener("click", async () => {
  try {
    await api.logout();
  } catch (err) {
    toast(`Logout: ${err.message}`, "error");
  }
  signOut("Logged out.");
});

feed.onState(({ name, detail }) => {
  feedState.textContent = `Feed: ${name}${detail ? ` (${detail})` : ""}`;
  feedState.dataset.state = name;
});

window.addEventListener("hashchange", () => route());

async function boot() {
  if (location.hash && location.hash !== "#/login") afterLogin = location.hash;
  try {
    await api.session();
    signIn();
  } catch (err) {
    showLogin(err.status === 401 ? "" : err.message);
  }
}

boot();
