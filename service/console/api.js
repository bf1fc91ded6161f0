// Calls to the admin API with the console's session: the cookie is HttpOnly (this script never sees it);
// the CSRF token, given at login or by GET /admin/api/session, lives only in this module's memory.

let csrfToken = null;
let onSignedOut = () => {};

export class ApiError extends Error {
  constructor(status, message, param, code) {
    super(message);
    this.status = status;
    this.param = param;
    this.code = code;
  }
}

export function whenSignedOut(callback) {
  onSignedOut = callback;
}

export function setCsrf(token) {
  csrfToken = token;
}

export async function request(method, path, body, { quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const err = (data && data.error) || {};
    const message = err.message || `${method} ${path}: HTTP ${response.status}`;
    if (response.status === 401 && !quiet401 && path !== "/admin/api/login") {
      csrfToken = null;
      onSignedOut(message);
    }
    throw new ApiError(response.status, message, err.param || null, err.code || null);
  }
  return data;
}

export const get = (path, options) => request("GET", path, undefined, options);
export const post = (path, body) => request("POST", path, body === undefined ? {} : body);
export const patch = (path, body) => request("PATCH", path, body);
export const del = (path) => request("DELETE", path);

export async function session() {
  const data = await get("/admin/api/session", { quiet401: true });
  csrfToken = data.csrf_token || null;
  return data;
}

export async function login(token) {
  const data = await request("POST", "/admin/api/login", { token });
  csrfToken = data.csrf_token;
  return data;
}

export async function logout() {
  try {
    await request("POST", "/admin/api/logout");
  } finally {
    csrfToken = null;
  }
}

// For the Playground: the raw response (a stream), with the session's CSRF token.
export function postRaw(path, body, signal, extraHeaders = {}) {
  return fetch(path, {
    method: "POST",
    headers: { ...extraHeaders, "Content-Type": "application/json", "X-CSRF-Token": csrfToken || "" },
    body: JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
    signal,
  });
}

// Path segments from the gateway (key ids, session keys, model ids with '/') go into URLs encoded.
export function seg(text) {
  return encodeURIComponent(text);
}

export function modelPath(ref) {
  const [platform, ...rest] = ref.split("/");
  return `/admin/api/models/${seg(platform)}/${rest.map(seg).join("/")}`;
}
