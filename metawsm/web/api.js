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

/** Call the API; resolves {status, data} for 2xx, throws ApiError carrying the server's message. */
export async function api(method, path, { query, body } = {}) {
  // Same-origin only: the session cookie goes along, and the daemon refuses other origins anyway.
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  const key = pageKey();
  if (key) init.headers["X-Metawsm-Page-Key"] = key; // with the session cookie: the UI session
  if (body !== undefined || method !== "GET") {
    // The daemon takes writes only as JSON (a cross-site form or no-cors fetch cannot send that).
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body ?? {});
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
    throw new ApiError(401, "unauthorized", LOGIN_HINT);
  }
  if (!response.ok) {
    const err = data && data.error;
    throw new ApiError(response.status, err?.code || `http_${response.status}`,
      err?.message || `${method} ${path} answered HTTP ${response.status}`);
  }
  return { status: response.status, data };
}

export const get = (path, query) => api("GET", path, { query });
export const post = (path, body) => api("POST", path, { body });

export function threadPath(threadId, action = "") {
  return `/api/v1/forum/threads/${encodeURIComponent(threadId)}${action ? `/${action}` : ""}`;
}
