// The signed-in user and their token.
//
// The token lives in sessionStorage: it survives a reload of the tab, is not shared with
// other tabs, and is gone when the tab closes. It goes to the edge as
// "Authorization: Bearer" on HTTP requests and, through the client, as the
// warren.auth.<jwt> subprotocol on the WebSocket (a browser cannot set other headers on a
// WebSocket, and a URL would carry it into access logs). It is never put in a cookie, so
// no other site can make the browser use it. Logging out removes it.

const KEY = "warren.session";

export class AuthError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export function load() {
  try {
    const session = JSON.parse(sessionStorage.getItem(KEY) || "null");
    if (session && session.token && !expired(session)) return session;
  } catch {
    // an unreadable entry is the same as none
  }
  clear();
  return null;
}

export function clear() {
  sessionStorage.removeItem(KEY);
}

export function expired(session) {
  return Date.now() / 1000 >= session.expiresAt;
}

export async function login(username, password) {
  const response = await fetch("/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new AuthError(body.error || "http_error", body.message || `HTTP ${response.status}`);
  }
  const session = {
    token: body.token,
    user: body.user,
    groups: body.groups,
    roles: body.roles,
    expiresAt: claims(body.token).exp || Date.now() / 1000 + body.expires_in,
  };
  sessionStorage.setItem(KEY, JSON.stringify(session));
  return session;
}

function claims(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload));
  } catch {
    return {};
  }
}

// A JSON request to the edge's HTTP API with the session's token. Answers that are not
// 2xx reject with the API's {error, message} as an AuthError-like object.
export async function api(session, path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${session.token}` },
  });
  if (options.raw && response.ok) return response;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new AuthError(body.error || "http_error", body.message || `HTTP ${response.status}`);
  }
  return body;
}
