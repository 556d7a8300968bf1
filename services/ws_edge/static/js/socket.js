// The WebSocket to the edge (docs/protocol.md, sections 5.1, 6 and 8): the welcome,
// events, and requests answered by ack or error; reconnects with capped, jittered
// exponential backoff when the connection drops.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 10_000;
const REQUEST_TIMEOUT_MS = 15_000;
const TOKEN_EXPIRED = 4001;

export class Connection extends EventTarget {
  // checkToken() resolves false when the edge refuses the token (401), so a socket that
  // never opens is not retried forever with a dead token.
  constructor(token, checkToken) {
    super();
    this.token = token;
    this.checkToken = checkToken;
    this.socket = null;
    this.attempt = 0;
    this.timer = 0;
    this.nextRef = 1;
    this.pending = new Map();  // ref -> {resolve, reject, timer}
    this.closedOnPurpose = false;
    this.state = "offline";
  }

  open() {
    this.closedOnPurpose = false;
    this.connect();
  }

  close() {
    this.closedOnPurpose = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000, "signed out");
    this.setState("offline", "signed out");
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws?token=${encodeURIComponent(this.token)}`);
    this.socket = socket;
    let opened = false;
    this.setState("connecting", this.attempt ? `reconnecting (attempt ${this.attempt + 1})` : "connecting");
    socket.addEventListener("open", () => {
      opened = true;
    });
    socket.addEventListener("message", (message) => this.receive(message.data));
    socket.addEventListener("close", (event) => this.closed(socket, event, opened));
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if ("v" in frame) {
      this.dispatchEvent(new CustomEvent("event", { detail: frame }));
    } else if (frame.type === "welcome") {
      this.attempt = 0;
      this.setState("connected", `connected to ${frame.data.edge}`);
      this.dispatchEvent(new CustomEvent("welcome", { detail: frame.data }));
    } else if (frame.type === "ack" || frame.type === "error") {
      const waiter = this.pending.get(frame.ref);
      if (!waiter) return;
      this.pending.delete(frame.ref);
      clearTimeout(waiter.timer);
      if (frame.type === "ack") waiter.resolve(frame.data);
      else waiter.reject(frame.data);
    }
  }

  async closed(socket, event, opened) {
    if (socket !== this.socket) return;
    this.socket = null;
    for (const waiter of this.pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject({ code: "disconnected", message: "the connection closed before the answer" });
    }
    this.pending.clear();
    if (this.closedOnPurpose) return;
    if (event.code === TOKEN_EXPIRED || (!opened && !(await this.checkToken()))) {
      this.setState("offline", "session expired");
      this.dispatchEvent(new CustomEvent("expired"));
      return;
    }
    if (this.closedOnPurpose) return;  // logged out while the token was being checked
    const delay = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    const reason = event.reason ? `${event.code} ${event.reason}` : `code ${event.code}`;
    this.setState("waiting", `disconnected (${reason}); retrying in ${(delay / 1000).toFixed(1)} s`);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  setState(state, text) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, text } }));
  }

  // Send a frame; resolves with the ack's data, rejects with the error's {code, message}.
  request(frame) {
    return new Promise((resolve, reject) => {
      if (this.state !== "connected") {
        reject({ code: "offline", message: "not connected; waiting to reconnect" });
        return;
      }
      const ref = `c${this.nextRef++}`;
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject({ code: "timeout", message: "no answer from the edge" });
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(ref, { resolve, reject, timer });
      this.socket.send(JSON.stringify({ ...frame, ref }));
    });
  }
}

// Events of a request whose ack has not arrived yet (they can overtake it): kept for a
// few requests, oldest dropped, and handled once the ack names the id.
export function keepEarly(early, id, envelope) {
  if (typeof id !== "string") return;
  if (!early.has(id)) {
    early.set(id, []);
    if (early.size > 20) early.delete(early.keys().next().value);
  }
  const events = early.get(id);
  if (events.length < 1000) events.push(envelope);
}
