// Warren's WebSocket client (docs/protocol.md): the welcome, requests answered by ack or
// error, events dispatched by type and de-duplicated by envelope id, reconnects by close
// code with capped exponential backoff and full jitter, recovery of the events missed
// meanwhile from a position (section 17), and of those missed while the edge's broker
// connection was away (17.5), and the token refreshed in band before it expires. An ES module with no dependencies; README.md is its manual.

export const SUBPROTOCOL = "warren.v1";
export const AUTH_SUBPROTOCOL_PREFIX = "warren.auth.";

export const DEFAULTS = Object.freeze({
  auth: "subprotocol",
  backoff: Object.freeze({ baseMs: 500, capMs: 30_000, overloadedBaseMs: 5_000, retryAfterMs: 1_000 }),
  maxAttempts: Infinity,
  connectTimeoutMs: 20_000,
  requestTimeoutMs: 15_000,
  maxFrameBytes: 65_536,
  dedupSize: 2_048,
  dedupLimit: 100_000,
  positionIntervalMs: 200,
  refresh: true,
});

// States in which the client stays until the app calls connect() again.
const TERMINAL = new Set(["closed", "unauthorized", "failed"]);
// States in which the socket has had its welcome: requests can be sent.
const WELCOMED = new Set(["recovering", "open"]);
const REFUSAL_BODY_LIMIT = 4_096;
const MIN_REFRESH_RETRY_MS = 1_000;
// The edge's replay window until a welcome says otherwise (protocol.md 17.2), and how much
// longer than it ids are remembered, for the clocks of this machine and the edge.
const DEFAULT_WINDOW_S = 2;
const DEDUP_MARGIN_S = 1;
// The dedup queue is compacted once this many forgotten ids lead it.
const COMPACT_AFTER = 1_024;

export class WarrenError extends Error {
  constructor(code, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "WarrenError";
    this.code = code;
    for (const [key, value] of Object.entries(details)) if (key !== "cause") this[key] = value;
  }
}

// What to do after a socket closed with `code` (docs/protocol.md section 8; the table is
// in README.md). `byClient`: this client asked for the close.
export function closeAction(code, byClient = false) {
  switch (code) {
    case 1000: return byClient ? "stop" : "backoff";
    case 1001: return "now";
    case 1013: return "overloaded";
    case 4001: return "token";
    case 1009: case 4008: case 4029: case 4030: return "backoff";
    case 1008: return "stop";
    default: return code >= 4000 ? "stop" : "backoff";
  }
}

// What to do after the edge refused the upgrade with HTTP `status` (protocol.md 5.1).
export function refusalAction(status) {
  if (status === 401) return "token";
  if (status === 503) return "overloaded";
  if (status >= 500) return "backoff";
  return "stop";  // 403 origin_forbidden, 426, 429 too_many_sockets, 400: retrying cannot help
}

// Full jitter (a uniform draw below the capped exponential): the delay before retry `n`
// (0 for the first).
export function backoffDelay(n, baseMs, capMs, random = Math.random) {
  return random() * Math.min(capMs, baseMs * 2 ** n);
}

// When to refresh a token with `remainingMs` left: at 80 % of it or 60 s before the end,
// whichever comes first, but never before half of it (so a short-lived token is not
// refreshed in a loop).
export function refreshDelay(remainingMs) {
  return Math.max(Math.min(0.8 * remainingMs, remainingMs - 60_000), 0.5 * remainingMs);
}

// The claims of a JWT, without verifying it (only the edge can), or null.
export function tokenClaims(token) {
  const payload = typeof token === "string" ? token.split(".")[1] : undefined;
  if (!payload) return null;
  try {
    const binary = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
    return isObject(claims) ? claims : null;
  } catch {
    return null;
  }
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function isPosition(value) {
  return typeof value === "number" && Number.isFinite(value) && value >= 0;
}

function isEnvelope(frame) {
  return frame.v === 1 && typeof frame.id === "string" && frame.id !== "" && typeof frame.type === "string"
    && typeof frame.to === "string" && typeof frame.from === "string" && typeof frame.ts === "number"
    && isObject(frame.data);
}

export class Warren {
  #url;
  #getToken;
  #WebSocket;
  #options;
  #random;
  #events = new Map();          // envelope type or "*" -> Set of listeners
  #lifecycle = {
    state: new Set(), error: new Set(), welcome: new Set(), refresh: new Set(), recovery: new Set(), position: new Set(),
  };
  #state = "connecting";
  #conn = null;                 // the current attempt: {socket, since, opened, welcomed, recovering, refusal, intent}
  #run = 0;                     // bumped by close()/connect(): stale async work sees it and stops
  #token = null;
  #tokenFromRejection = false;  // the token was fetched because the edge refused the previous one
  #attempt = 0;                 // consecutive attempts that did not reach welcome
  #timer = null;                // the next attempt
  #refreshTimer = null;
  #refreshing = false;
  #identity = null;
  #reason = null;               // why the client is in its state
  #nextRef = 1;
  #pending = new Map();         // ref -> {resolve, reject, timer}
  #seen = new Set();            // envelope ids delivered and still remembered
  #seenIds = [];                // the same ids in arrival order, from #seenHead on,
  #seenTimes = [];              // with their envelopes' ts
  #seenHead = 0;
  #position = null;             // protocol.md 17.2: every event routed before it was received
  #positionTimer = null;
  #window = DEFAULT_WINDOW_S;
  #recovery = null;             // the last welcome's (or in-band replay.done's) answer about what was missed
  #lastIds = new Map();         // envelope "to" -> last envelope id
  #lastEventId = null;
  #stats = { events: 0, duplicates: 0, garbage: 0, reconnects: 0, replayed: 0 };
  #encoder = new TextEncoder();

  constructor(url, options = {}) {
    if (typeof options.getToken !== "function") throw new TypeError("options.getToken must be a function");
    const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketImpl !== "function") {
      throw new TypeError("no WebSocket implementation: pass options.WebSocket (in Node 20, the ws package's WebSocket)");
    }
    if (options.auth !== undefined && options.auth !== "subprotocol" && options.auth !== "query") {
      throw new TypeError('options.auth must be "subprotocol" or "query"');
    }
    if (options.position !== undefined && options.position !== null && !isPosition(options.position)) {
      throw new TypeError("options.position must be a finite number of seconds >= 0, or null");
    }
    this.#url = url;
    this.#position = options.position ?? null;
    this.#getToken = options.getToken;
    this.#WebSocket = WebSocketImpl;
    this.#random = options.random ?? Math.random;
    this.#options = {
      ...DEFAULTS,
      ...Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)),
      backoff: { ...DEFAULTS.backoff, ...options.backoff },
    };
    this.#connect();
  }

  get state() { return this.#state; }
  get identity() { return this.#identity; }
  get lastEventId() { return this.#lastEventId; }
  get lastEventIds() { return new Map(this.#lastIds); }
  get stats() { return { ...this.#stats }; }
  get position() { return this.#position; }
  get recovery() { return this.#recovery === null ? null : { ...this.#recovery }; }

  // -- listeners ----------------------------------------------------------------------

  on(type, listener) {
    let listeners = this.#events.get(type);
    if (!listeners) this.#events.set(type, (listeners = new Set()));
    listeners.add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    const listeners = this.#events.get(type);
    if (listeners?.delete(listener) && listeners.size === 0) this.#events.delete(type);
  }

  onState(listener) { return this.#listen("state", listener); }
  onError(listener) { return this.#listen("error", listener); }
  onWelcome(listener) { return this.#listen("welcome", listener); }
  onRefresh(listener) { return this.#listen("refresh", listener); }
  onRecovery(listener) { return this.#listen("recovery", listener); }
  onPosition(listener) { return this.#listen("position", listener); }

  #listen(kind, listener) {
    this.#lifecycle[kind].add(listener);
    return () => this.#lifecycle[kind].delete(listener);
  }

  // Resolves with the welcome once the client is open (at once if it is), which after a
  // recovery is once the replay is done; rejects when it reaches a state it does not
  // leave by itself (closed, unauthorized, failed).
  ready() {
    if (this.#state === "open") return Promise.resolve(this.#identity);
    if (TERMINAL.has(this.#state)) return Promise.reject(this.#terminalError());
    return new Promise((resolve, reject) => {
      const stop = this.onState(({ state }) => {
        if (state === "open") {
          stop();
          resolve(this.#identity);
        } else if (TERMINAL.has(state)) {
          stop();
          reject(this.#terminalError());
        }
      });
    });
  }

  #terminalError() {
    return new WarrenError(this.#state, `the client is ${this.#state}: ${this.#reason ?? ""}`.trimEnd());
  }

  // -- requests -----------------------------------------------------------------------

  // A client frame; resolves with the ack's data, rejects with a WarrenError whose code is
  // the edge's (protocol.md 6.6) or the client's own (README.md).
  send(type, { to, data } = {}) {
    const frame = { type, ref: 0, data: data ?? {} };
    if (to !== undefined) frame.to = to;
    return this.#request(frame);
  }

  command(type, data = {}) {
    return this.#request({ type, ref: 0, data });
  }

  // The recent events of one of the token's keys (protocol.md 17.4): resolves with the
  // ack's data, {key, events (oldest first), oldest}.
  history(key, { limit, since } = {}) {
    const data = { key };
    if (limit !== undefined) data.limit = limit;
    if (since !== undefined && since !== null) data.since = since;
    return this.#request({ type: "history", ref: 0, data });
  }

  #request(frame) {
    return new Promise((resolve, reject) => {
      const conn = this.#conn;
      if (!WELCOMED.has(this.#state) || conn === null) {
        reject(new WarrenError("not_connected", `not connected (the client is ${this.#state})`));
        return;
      }
      const ref = this.#nextRef++;
      frame.ref = ref;
      let text;
      try {
        text = JSON.stringify(frame);
      } catch (cause) {
        reject(new WarrenError("invalid_frame", `the frame cannot be written as JSON: ${cause.message}`, { cause }));
        return;
      }
      const limit = this.#options.maxFrameBytes;
      if (text.length * 3 > limit && this.#encoder.encode(text).length > limit) {
        reject(new WarrenError("frame_too_big", `the frame is larger than ${limit} bytes, the edge's limit`));
        return;
      }
      const timer = setTimeout(() => {
        this.#pending.delete(ref);
        reject(new WarrenError("timeout", "no answer from the edge in time; the frame may or may not have been handled"));
      }, this.#options.requestTimeoutMs);
      this.#pending.set(ref, { resolve, reject, timer });
      try {
        conn.socket.send(text);
      } catch (cause) {
        this.#pending.delete(ref);
        clearTimeout(timer);
        reject(new WarrenError("not_connected", "the socket refused the frame", { cause }));
      }
    });
  }

  #rejectPending(error) {
    const pending = this.#pending;
    this.#pending = new Map();
    for (const waiter of pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(error);
    }
  }

  // -- lifecycle ----------------------------------------------------------------------

  // Start again after close() or a terminal state; does nothing while connecting or open.
  connect() {
    if (!TERMINAL.has(this.#state)) return;
    this.#attempt = 0;
    this.#run++;
    this.#setState("connecting");
    this.#connect();
  }

  close(reason = "client closed") {
    this.#run++;
    this.#clearTimers();
    const conn = this.#conn;
    this.#conn = null;
    if (conn) {
      try {
        conn.socket.close(1000, reason);
      } catch {
        // already closing
      }
    }
    this.#rejectPending(new WarrenError("disconnected", "the client was closed; the frame may or may not have been handled"));
    this.#setState("closed", { reason });
  }

  // Also tells a position still waiting for its interval now: the client stops here.
  #clearTimers() {
    clearTimeout(this.#timer);
    clearTimeout(this.#refreshTimer);
    if (this.#conn) clearTimeout(this.#conn.timer);
    this.#timer = this.#refreshTimer = null;
    if (this.#positionTimer !== null) {
      clearTimeout(this.#positionTimer);
      this.#positionTimer = null;
      this.#emit("position", this.#position);
    }
  }

  #setState(state, details = {}) {
    const previous = this.#state;
    this.#state = state;
    this.#reason = details.reason ?? null;
    this.#emit("state", { state, previous, ...details });
  }

  #emit(kind, value) {
    for (const listener of [...this.#lifecycle[kind]]) {
      try {
        listener(value);
      } catch (cause) {
        if (kind === "error") console.error(cause);
        else this.#report(new WarrenError("listener_failed", `a ${kind} listener threw: ${cause?.message}`, { cause }));
      }
    }
  }

  #report(error) {
    if (this.#lifecycle.error.size === 0) console.warn(`warren: ${error.code}: ${error.message}`);
    else this.#emit("error", error);
  }

  async #connect() {
    const run = this.#run;
    let token = this.#token;
    const exp = tokenClaims(token)?.exp;
    if (token === null || (typeof exp === "number" && exp * 1000 <= Date.now())) {
      try {
        token = await this.#getToken({ reason: token === null ? "connect" : "expired" });
      } catch (cause) {
        if (run === this.#run) this.#unauthorized(`getToken failed: ${cause?.message ?? cause}`);
        return;
      }
      if (run !== this.#run) return;
      if (typeof token !== "string" || token === "") {
        this.#unauthorized("getToken gave no token");
        return;
      }
      this.#token = token;
    }
    let url;
    try {
      url = typeof this.#url === "function" ? await this.#url() : this.#url;
    } catch (cause) {
      if (run === this.#run) this.#retry("backoff", { reason: `url() failed: ${cause?.message ?? cause}` });
      return;
    }
    if (run !== this.#run) return;
    const since = this.#position;
    const query = this.#options.auth === "query";
    let socket;
    try {
      let target = url;
      if (since !== null || query) {
        const withQuery = new URL(url, globalThis.location?.href);
        if (since !== null) withQuery.searchParams.set("since", String(since));
        if (query) withQuery.searchParams.set("token", token);
        target = withQuery.href;
      }
      socket = query ? new this.#WebSocket(target) : new this.#WebSocket(target, [SUBPROTOCOL, AUTH_SUBPROTOCOL_PREFIX + token]);
    } catch (cause) {
      this.#fail(`cannot open a WebSocket to ${url}: ${cause?.message ?? cause}`);
      return;
    }
    const conn = {
      socket, since, opened: false, welcomed: false, recovering: false, refusal: null, intent: null, timer: null,
    };
    this.#conn = conn;
    conn.timer = setTimeout(() => {
      conn.intent = { action: "backoff", reason: "no welcome in time" };
      this.#abort(conn);
    }, this.#options.connectTimeoutMs);
    socket.onopen = () => { conn.opened = true; };
    socket.onmessage = (event) => { if (conn === this.#conn) this.#receive(conn, event.data); };
    socket.onerror = () => {};  // the close event that follows says what happened
    socket.onclose = (event) => { if (conn === this.#conn) this.#closed(conn, event); };
    // Browsers hide why an upgrade was refused; Node's ws tells it (status, Retry-After).
    if (typeof socket.on === "function") socket.on("unexpected-response", (_request, response) => this.#refused(conn, response));
  }

  #abort(conn) {
    try {
      if (typeof conn.socket.terminate === "function") conn.socket.terminate();
      else conn.socket.close();
    } catch {
      // closed already
    }
  }

  #refused(conn, response) {
    const header = response.headers?.["retry-after"];
    const seconds = Number(header);
    conn.refusal = {
      status: response.statusCode,
      code: null,
      retryAfterMs: header !== undefined && Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : null,
    };
    let body = "";
    let finished = false;
    const done = () => {
      if (finished) return;
      finished = true;
      try {
        const parsed = JSON.parse(body);
        if (typeof parsed?.error === "string") conn.refusal.code = parsed.error;
        if (typeof parsed?.message === "string") conn.refusal.message = parsed.message;
      } catch {
        // not Warren's JSON body: the status says enough
      }
      this.#abort(conn);
    };
    response.setEncoding?.("utf8");
    response.on("data", (chunk) => {
      body += chunk;
      if (body.length > REFUSAL_BODY_LIMIT) response.destroy();
    });
    response.on("end", done);
    response.on("close", done);
    response.on("error", done);
  }

  #receive(conn, text) {
    if (typeof text !== "string") {
      this.#garbage("binary_frame", "a binary frame arrived; Warren sends only JSON text");
      return;
    }
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (cause) {
      this.#garbage("invalid_json", `a frame is not JSON: ${text.slice(0, 80)}`, cause);
      return;
    }
    if (!isObject(frame)) {
      this.#garbage("invalid_frame", `a frame is not a JSON object: ${text.slice(0, 80)}`);
    } else if ("v" in frame) {
      if (isEnvelope(frame)) this.#deliver(conn, frame);
      else this.#garbage("invalid_envelope", `an event is not a valid envelope: ${text.slice(0, 80)}`);
    } else if (frame.type === "ack" || frame.type === "error") {
      this.#answer(frame, text);
    } else if (frame.type === "welcome" && isObject(frame.data) && !conn.welcomed) {
      this.#welcomed(conn, frame.data);
    } else if (frame.type === "replay.done" && isObject(frame.data) && conn.recovering) {
      this.#replayed(conn, frame.data);
    } else if (frame.type === "replay.done" && isObject(frame.data) && conn.welcomed
      && typeof frame.data.recovered === "boolean") {
      this.#replayedInBand(frame.data);
    } else {
      this.#garbage("unknown_frame", `a frame of unknown shape: ${text.slice(0, 80)}`);
    }
  }

  #garbage(code, message, cause) {
    this.#stats.garbage++;
    this.#report(new WarrenError(code, message, cause === undefined ? {} : { cause }));
  }

  // A duplicate is dropped, never reordered: events reach listeners in the edge's order.
  #deliver(conn, envelope) {
    const id = envelope.id;
    const seen = this.#seen;
    if (seen.has(id)) {
      this.#stats.duplicates++;
      return;
    }
    seen.add(id);
    this.#seenIds.push(id);
    this.#seenTimes.push(envelope.ts);
    this.#setPosition(envelope.ts, false);
    if (seen.size > this.#options.dedupSize) this.#forget();
    this.#stats.events++;
    if (conn.recovering) this.#stats.replayed++;
    this.#lastEventId = id;
    this.#lastIds.set(envelope.to, id);
    this.#dispatch(this.#events.get(envelope.type), envelope);
    this.#dispatch(this.#events.get("*"), envelope);
  }

  // The edge may send again only events at most `window` older than the position
  // (protocol.md 17.2): ids older than that, and a margin, are forgotten from the oldest
  // on, but the newest dedupSize always stay (pending notifications, protocol.md 13, come
  // again with their first ts) and never more than dedupLimit. Each id is forgotten once:
  // the cost is amortised O(1) an event.
  #forget() {
    const { dedupSize, dedupLimit } = this.#options;
    const threshold = this.#position === null ? -Infinity : this.#position - this.#window - DEDUP_MARGIN_S;
    const seen = this.#seen;
    const ids = this.#seenIds;
    const times = this.#seenTimes;
    let head = this.#seenHead;
    while (seen.size > dedupSize && (seen.size > dedupLimit || times[head] < threshold)) {
      seen.delete(ids[head]);
      head++;
    }
    if (head >= COMPACT_AFTER && head * 2 >= ids.length) {
      ids.splice(0, head);
      times.splice(0, head);
      head = 0;
    }
    this.#seenHead = head;
  }

  // Listeners hear of a new position at most every positionIntervalMs (the latest one),
  // and at once when the edge set it (welcome, replay.done): a save per event would cost
  // more than the event.
  #setPosition(position, now) {
    if (position === this.#position) return;
    this.#position = position;
    if (this.#lifecycle.position.size === 0) return;
    if (now) {
      clearTimeout(this.#positionTimer);
      this.#positionTimer = null;
      this.#emit("position", position);
    } else if (this.#positionTimer === null) {
      this.#positionTimer = setTimeout(() => {
        this.#positionTimer = null;
        this.#emit("position", this.#position);
      }, this.#options.positionIntervalMs);
    }
  }

  #dispatch(listeners, envelope) {
    if (listeners === undefined) return;
    for (const listener of listeners) {
      try {
        listener(envelope);
      } catch (cause) {
        this.#report(new WarrenError("listener_failed", `a listener for ${envelope.type} threw: ${cause?.message}`, { cause }));
      }
    }
  }

  #answer(frame, text) {
    const waiter = this.#pending.get(frame.ref);
    if (waiter === undefined) {
      // A late answer to a request that timed out is expected; an error for no request
      // (a frame the edge could not read) is worth reporting.
      if (frame.type === "error" && !(typeof frame.ref === "number" && frame.ref < this.#nextRef)) {
        this.#garbage("unmatched_reply", `an error that answers no request: ${text.slice(0, 120)}`);
      }
      return;
    }
    this.#pending.delete(frame.ref);
    clearTimeout(waiter.timer);
    const data = isObject(frame.data) ? frame.data : {};
    if (frame.type === "ack") {
      waiter.resolve(data);
    } else {
      const code = typeof data.code === "string" ? data.code : "invalid_reply";
      waiter.reject(new WarrenError(code, typeof data.message === "string" ? data.message : code));
    }
  }

  // After a welcome the state is "recovering" while the edge replays what the client
  // missed (it sent a position and the edge can recover from it), else "open".
  #welcomed(conn, data) {
    conn.welcomed = true;
    clearTimeout(conn.timer);
    if (this.#state === "reconnecting") this.#stats.reconnects++;
    this.#attempt = 0;
    this.#tokenFromRejection = false;
    const exp = tokenClaims(this.#token)?.exp;
    const { position, window, recovered: answer, reason: why, oldest: first, ...identity } = data;
    this.#identity = { ...identity, exp: typeof exp === "number" ? exp : null };
    if (typeof window === "number" && Number.isFinite(window) && window >= 0) this.#window = window;
    let recovered = null;
    let reason = null;
    if (typeof answer === "boolean") {
      recovered = answer;
      if (!answer) reason = typeof why === "string" ? why : "unknown";
    } else if (conn.since !== null) {
      // An edge that does not know positions (no `recovered`) replayed nothing.
      recovered = false;
      reason = "unsupported";
    }
    const oldest = typeof first === "number" ? first : null;
    this.#recovery = { recovered, reason, oldest, since: conn.since, replayed: null, inBand: false };
    conn.recovering = recovered === true;
    if (!conn.recovering && isPosition(position)) this.#setPosition(position, true);
    // The state change says whether this connection recovered; why not is in `recovery`
    // (a state change's `reason` is why the client is in its state).
    const details = { edge: identity.edge, recovered };
    this.#setState(conn.recovering ? "recovering" : "open", conn.recovering ? { ...details, since: conn.since } : details);
    this.#emit("welcome", this.#identity);
    this.#emit("recovery", this.recovery);
    this.#scheduleRefresh();
  }

  #replayed(conn, data) {
    conn.recovering = false;
    if (isPosition(data.position)) this.#setPosition(data.position, true);
    const replayed = typeof data.events === "number" ? data.events : null;
    this.#recovery = { ...this.#recovery, replayed };
    this.#setState("open", { edge: this.#identity.edge, recovered: true, replayed });
  }

  // The edge's broker connection broke and came back while this socket stayed open: the
  // edge replayed what was routed meanwhile (protocol.md 17.5), as ordinary events that
  // the de-duplication sorted, and now says whether that was everything, as a welcome
  // would. The state stays "open".
  #replayedInBand(data) {
    const recovered = data.recovered;
    const reason = recovered ? null : (typeof data.reason === "string" ? data.reason : "unknown");
    const oldest = !recovered && typeof data.oldest === "number" ? data.oldest : null;
    const since = isPosition(data.since) ? data.since : null;
    const replayed = typeof data.events === "number" ? data.events : null;
    if (isPosition(data.position)) this.#setPosition(data.position, true);
    this.#recovery = { recovered, reason, oldest, since, replayed, inBand: true };
    this.#emit("recovery", this.recovery);
  }

  #closed(conn, event) {
    this.#conn = null;
    clearTimeout(conn.timer);
    clearTimeout(this.#refreshTimer);
    const code = event.code;
    const closeReason = event.reason || "";
    this.#rejectPending(new WarrenError(
      "disconnected",
      `the connection closed (${code}${closeReason ? ` ${closeReason}` : ""}) before the answer; the frame may or may not have been handled`,
      { closeCode: code },
    ));
    if (conn.intent !== null) {
      this.#act(conn.intent.action, { reason: conn.intent.reason });
    } else if (conn.refusal !== null) {
      const { status, code: error, message, retryAfterMs } = conn.refusal;
      this.#act(refusalAction(status), { status, error, retryAfterMs, reason: `HTTP ${status} ${error ?? ""}${message ? `: ${message}` : ""}`.trim() });
    } else if (!conn.opened) {
      this.#act("backoff", { reason: "the connection failed before the upgrade" });
    } else {
      this.#act(closeAction(code), { code, reason: closeReason || `closed with ${code}` });
    }
  }

  #act(action, details) {
    switch (action) {
      case "token": this.#renewToken(details); break;
      case "stop": this.#fail(details.reason, details); break;
      default: this.#retry(action, details);
    }
  }

  #retry(action, details) {
    const { baseMs, capMs, overloadedBaseMs, retryAfterMs } = this.#options.backoff;
    // A drain (1001) is not a failed attempt (docs/protocol.md 8.1): it neither counts
    // towards maxAttempts nor lengthens the next backoff.
    const failed = action !== "now";
    if (failed && this.#attempt >= this.#options.maxAttempts) {
      this.#fail(`gave up after ${this.#attempt} failed attempts; last: ${details.reason}`, details);
      return;
    }
    const n = failed ? this.#attempt++ : this.#attempt;
    let delayMs;
    if (action === "now") delayMs = this.#random() * baseMs;
    else if (action === "overloaded") {
      delayMs = Math.max(details.retryAfterMs ?? retryAfterMs, backoffDelay(n, overloadedBaseMs, capMs, this.#random));
    } else delayMs = backoffDelay(n, baseMs, capMs, this.#random);
    // `attempt`: failed attempts in a row, or, after a drain, the one about to be made.
    const attempt = failed ? this.#attempt : this.#attempt + 1;
    this.#setState("reconnecting", { ...details, delayMs, attempt });
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#connect();
    }, delayMs);
  }

  // The edge refused the token (401, or 4001 at its exp): one new token from getToken,
  // then reconnect at once; if there is none, or the edge refuses that one too, stop.
  async #renewToken(details) {
    const run = this.#run;
    if (this.#tokenFromRejection) {
      this.#unauthorized(`the edge refused a new token too: ${details.reason}`, details);
      return;
    }
    this.#setState("reconnecting", { ...details, delayMs: 0, attempt: this.#attempt });
    let token;
    try {
      token = await this.#getToken({ reason: details.code === 4001 ? "expired" : "rejected" });
    } catch (cause) {
      if (run === this.#run) this.#unauthorized(`getToken failed: ${cause?.message ?? cause}`, details);
      return;
    }
    if (run !== this.#run) return;
    if (typeof token !== "string" || token === "" || token === this.#token) {
      this.#unauthorized(`getToken gave no new token after: ${details.reason}`, details);
      return;
    }
    this.#token = token;
    this.#tokenFromRejection = true;
    this.#connect();
  }

  #unauthorized(reason, details = {}) {
    this.#clearTimers();
    this.#setState("unauthorized", { ...details, reason });
  }

  #fail(reason, details = {}) {
    this.#clearTimers();
    this.#setState("failed", { ...details, reason });
  }

  // -- token refresh ------------------------------------------------------------------

  #scheduleRefresh(delayMs) {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    const exp = this.#identity?.exp;
    if (!this.#options.refresh || typeof exp !== "number") return;
    const remaining = exp * 1000 - Date.now();
    // Past already by this machine's clock (it runs ahead of the edge's): no refresh; the
    // edge closes with 4001 at the real exp and the client reconnects with a new token.
    if (remaining <= 0) return;
    this.#refreshTimer = setTimeout(() => this.#refresh(), delayMs ?? refreshDelay(remaining));
  }

  // Another try later, while the connection's token still holds: half the time left.
  #refreshLater() {
    const exp = this.#identity?.exp ?? 0;
    const remaining = exp * 1000 - Date.now();
    if (remaining > 2 * MIN_REFRESH_RETRY_MS) this.#scheduleRefresh(remaining / 2);
  }

  async #refresh() {
    this.#refreshTimer = null;
    const conn = this.#conn;
    if (this.#refreshing || conn === null || !conn.welcomed) return;
    this.#refreshing = true;
    try {
      let token;
      try {
        token = await this.#getToken({ reason: "refresh" });
      } catch (cause) {
        this.#report(new WarrenError("refresh_failed", `getToken failed: ${cause?.message ?? cause}`, { cause }));
        if (conn === this.#conn) this.#refreshLater();
        return;
      }
      if (conn !== this.#conn) return;
      if (typeof token !== "string" || token === "" || token === this.#token) {
        this.#report(new WarrenError("refresh_failed", "getToken gave the same token; trying again later"));
        this.#refreshLater();
        return;
      }
      const sub = tokenClaims(token)?.sub;
      if (typeof sub === "string" && sub !== this.#identity.user) {
        // Another user needs another socket: this one's events must stop at once.
        this.#token = token;
        conn.intent = { action: "now", reason: `the token is now for ${sub}` };
        conn.socket.close(1000, "user changed");
        return;
      }
      let data;
      try {
        data = await this.#request({ type: "auth.refresh", ref: 0, data: { token } });
      } catch (error) {
        if (conn !== this.#conn) {
          this.#token = token;  // a fine token for the next connection
          return;
        }
        if (error.code === "unknown_type") {
          // An edge without auth.refresh: it closes with 4001 at exp, and the client
          // reconnects with a new token then.
          this.#report(new WarrenError("refresh_unsupported", "the edge does not know auth.refresh; it will close at the token's exp"));
          return;
        }
        this.#report(new WarrenError("refresh_failed", `the edge refused the new token: ${error.code}: ${error.message}`, { cause: error }));
        this.#refreshLater();
        return;
      }
      if (conn !== this.#conn) return;
      this.#token = token;
      const exp = typeof data.exp === "number" ? data.exp : tokenClaims(token)?.exp;
      this.#identity = {
        ...this.#identity,
        ...(Array.isArray(data.groups) ? { groups: data.groups } : {}),
        ...(Array.isArray(data.roles) ? { roles: data.roles } : {}),
        exp: typeof exp === "number" ? exp : null,
      };
      this.#emit("refresh", this.#identity);
      this.#scheduleRefresh();
    } finally {
      this.#refreshing = false;
    }
  }
}
