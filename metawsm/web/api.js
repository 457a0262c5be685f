// The public HTTP API of `metawsm serve` (docs/api.md): one fetch wrapper, one error type.

import { pageKey } from "./session.js";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function queryString(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export const LOGIN_HINT =
  "Not logged in: open the login link that `metawsm serve` printed, or run `metawsm ui` to get one.";
export const EXPIRED_HINT =
  "Your session has expired (the operator token was rotated, or the daemon's tokens were reset): "
  + "open a new login link — run `metawsm ui` to get one.";

/** A fresh Idempotency-Key for one user action (docs/api.md): a retry of the same action may reuse it. */
export function idempotencyKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return `ui-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** Call the API; resolves {status, data} for 2xx, throws ApiError carrying the server's message. */
export async function api(method, path, { query, body, key: idemKey } = {}) {
  // Same-origin only: the session cookie goes along, and the daemon refuses other origins anyway.
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  const key = pageKey();
  if (key) init.headers["X-Metawsm-Page-Key"] = key; // with the session cookie: the UI session
  if (body !== undefined || method !== "GET") {
    // The daemon takes writes only as JSON (a cross-site form or no-cors fetch cannot send that).
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body ?? {});
    // Every write carries its own key: a double click or a retry after a lost answer is applied once.
    init.headers["Idempotency-Key"] = idemKey || idempotencyKey();
  }
  let response;
  try {
    response = await fetch(path + queryString(query), init);
  } catch (error) {
    throw new ApiError(0, "unreachable", `the daemon could not be reached (${error.message})`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (response.status === 401) {
    // A page that holds a key was logged in: its session has expired (token rotated).
    const expired = Boolean(key);
    window.dispatchEvent(new CustomEvent("metawsm:unauthorized", { detail: { expired } }));
    throw new ApiError(401, "unauthorized", expired ? EXPIRED_HINT : LOGIN_HINT);
  }
  if (!response.ok) {
    const err = data && data.error;
    throw new ApiError(response.status, err?.code || `http_${response.status}`,
      err?.message || `${method} ${path} answered HTTP ${response.status}`);
  }
  return { status: response.status, data };
}

export const get = (path, query) => api("GET", path, { query });
export const post = (path, body, key) => api("POST", path, { body, key });

export function threadPath(threadId, action = "") {
  return `/api/v1/forum/threads/${encodeURIComponent(threadId)}${action ? `/${action}` : ""}`;
}
