// The JSON API, same origin: the session cookie, and the CSRF token on every unsafe request.

const csrfToken = () => document.querySelector('meta[name="csrf-token"]')?.content ?? "";

/** A refused request; `message` is the API's explanation, `body` its whole answer. */
export class ApiError extends Error {
  constructor(status, body) {
    const detail = typeof body === "string" ? body : body?.detail;
    super(typeof detail === "string" && detail ? detail : `the hub answered ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** Call the API; resolves to the parsed answer, rejects with ApiError. */
export async function api(path, { method = "GET", json, body, type } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (type) {
    headers["Content-Type"] = type;
  }
  const response = await fetch(path, { method, headers, body, credentials: "same-origin" });
  if (response.status === 401) {
    // The session ended: log in again and come back here.
    location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
  }
  const isJson = (response.headers.get("Content-Type") ?? "").includes("json");
  const answer = isJson ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, answer);
  return answer;
}

/** POST a JSON body. */
export const post = (path, json) => api(path, { method: "POST", json });
