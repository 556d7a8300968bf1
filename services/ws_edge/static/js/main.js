// The Warren console: signs in, keeps one connection to the edge through Warren's
// JavaScript client (served by the edge at /client/warren.js), and hands each event to
// the panel it belongs to. The client's position and the panels it describes are saved
// for a reload (saved.js), which then recovers from there. docs/console.md describes it.

import { Warren } from "/client/warren.js";
import { $, el, showError } from "./dom.js";
import { ChatPanel } from "./chat.js";
import { ExportsPanel } from "./exports.js";
import { MessagesPanel } from "./messages.js";
import { MetricsPanel } from "./metrics.js";
import { RunnerPanel } from "./runner.js";
import * as saved from "./saved.js";
import * as sessions from "./session.js";

const SESSION_EXPIRED = "Your session expired: sign in again.";
const NOT_RECOVERED = {
  too_old: "they are older than the edge keeps",
  invalid_position: "the position saved was refused",
  history_off: "the edge keeps no history",
  unsupported: "this edge cannot replay them",
};

function socketUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
}

class Console {
  constructor() {
    this.session = null;
    this.warren = null;
    this.messages = new MessagesPanel(this);
    this.chat = new ChatPanel(this);
    this.runner = new RunnerPanel(this);
    this.exports = new ExportsPanel(this);
    this.metrics = new MetricsPanel(this);
    this.panels = [this.messages, this.chat, this.runner, this.exports, this.metrics];
    this.saver = new saved.Saver(() => this.snapshot());
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.login();
    });
    $("logout").addEventListener("click", () => this.logout());
    $("notice-close").addEventListener("click", () => this.showNotice(null));
    window.addEventListener("pagehide", () => this.saver.flush());
  }

  api(path, options) {
    return sessions.api(this.session, path, options);
  }

  start() {
    const session = sessions.load();
    if (session) {
      this.enter(session);
    } else {
      saved.clear();  // a new sign-in starts afresh
      this.showLogin();
    }
  }

  showLogin(message) {
    $("workspace").hidden = true;
    $("who").hidden = true;
    $("login-panel").hidden = false;
    this.setStatus("offline", "signed out");
    showError($("login-error"), message || null);
    $("login-user").focus();
  }

  async login() {
    const button = $("login-submit");
    button.disabled = true;
    showError($("login-error"), null);
    try {
      const session = await sessions.login($("login-user").value.trim(), $("login-password").value);
      $("login-password").value = "";
      this.enter(session);
    } catch (error) {
      showError($("login-error"), error.message || String(error));
    } finally {
      button.disabled = false;
    }
  }

  enter(session) {
    this.session = session;
    for (const panel of this.panels) panel.reset();
    this.showNotice(null);
    delete $("status").dataset.recovered;
    const restored = saved.load(session.user);
    if (restored) {
      this.chat.restore(restored.chat);
      this.runner.restore(restored.run);
    }
    this.showUser(session.user, session.groups, session.roles);
    $("login-panel").hidden = true;
    $("workspace").hidden = false;
    this.messages.signedIn(session);
    // The console holds no credential to get a new token with (it signs in with a
    // password and keeps only the token): no in-band refresh, and the token is refused
    // by getToken once the edge or its exp says it is over.
    const warren = new Warren(socketUrl(), {
      getToken: ({ reason }) => this.token(reason),
      refresh: false,
      position: restored ? restored.position : null,
    });
    const current = (listener) => (value) => {
      if (this.warren === warren) listener(value);
    };
    warren.onState(current((change) => this.stateChanged(change)));
    warren.onWelcome(current((identity) => this.welcome(identity)));
    warren.onRecovery(current((recovery) => this.recovered(recovery)));
    warren.onPosition(current(() => this.saver.schedule()));
    warren.on("*", current((envelope) => {
      this.route(envelope);
      this.saver.schedule();
    }));
    this.warren = warren;
    this.setStatus("connecting", "connecting");
    this.loadCatalog();
  }

  async loadCatalog() {
    try {
      const catalog = await this.api("/api/console/catalog");
      this.runner.setCatalog(catalog.jobs);
      this.exports.setCatalog(catalog.reports);
    } catch (error) {
      showError($("run-error"), error);
    }
  }

  token(reason) {
    const session = this.session;
    if (session === null || reason === "expired" || reason === "rejected" || sessions.expired(session)) {
      throw new Error("the session expired");
    }
    return session.token;
  }

  // The client's state, as it is: the top bar's dot (data-state) and its words.
  // The reason (a close code, a refusal) is the status's tooltip.
  stateChanged({ state, reason, attempt, delayMs, edge, code }) {
    $("status").title = reason || "";
    if (state === "connecting") {
      this.setStatus("connecting", "connecting");
    } else if (state === "recovering") {
      this.setStatus("recovering", `catching up on ${edge}`);
    } else if (state === "open") {
      this.setStatus("connected", `connected to ${edge}`);
    } else if (state === "reconnecting") {
      // Answers in flight wait: the next welcome says whether what they miss is replayed.
      $("status").title = `${reason}; next try after ${(delayMs / 1000).toFixed(1)} s`;
      this.setStatus("waiting", `reconnecting (attempt ${attempt})`);
      // A browser does not say why an upgrade failed: the edge may be down, or may refuse
      // the token (revoked user, another key). The HTTP API tells which.
      if (code === undefined) this.checkToken(this.warren);
    } else if (state === "unauthorized") {
      this.logout(SESSION_EXPIRED);
    } else if (state === "failed") {
      this.setStatus("failed", "disconnected: reload to try again");
      this.chat.connectionLost();
    } else if (state === "closed") {
      this.setStatus("offline", "signed out");
    }
  }

  async checkToken(warren) {
    try {
      await this.api("/api/console/metrics");
    } catch (error) {
      if (this.warren === warren && error.code && error.code.startsWith("token_")) this.logout(SESSION_EXPIRED);
    }
  }

  welcome(data) {
    this.showUser(data.user, data.groups, data.roles);
    this.chat.connected();
    this.exports.connected();
    this.metrics.connected();
  }

  // After each welcome: with recovered true the replay brings what was missed; else the
  // panels fall back to recorded state (the HTTP API), and when events were missed
  // (false) the notice says so. #status's data-recovered tells tests which it was.
  recovered({ recovered, reason }) {
    $("status").dataset.recovered = recovered === null ? "none" : String(recovered);
    if (recovered === true) {
      this.showNotice(null);
      return;
    }
    if (recovered === false) {
      const why = NOT_RECOVERED[reason] || reason;
      this.showNotice(`Events sent while the connection was down could not be replayed (${why}): `
        + "the run and the exports were read again from the server; a chat answer may miss a part.");
      this.chat.interrupted();
    }
    this.runner.reconnected();
  }

  showNotice(text) {
    $("notice-text").textContent = text || "";
    $("notice").hidden = !text;
  }

  // What a reload would lose, with the position it goes with (saved.js); read in one
  // go, after the listeners have handled every event up to that position.
  snapshot() {
    const warren = this.warren;
    if (!warren || !this.session) return null;
    return { user: this.session.user, position: warren.position, chat: this.chat.snapshot(), run: this.runner.snapshot() };
  }

  showUser(user, groups, roles) {
    $("who-user").textContent = user;
    const chips = [
      ...groups.map((group) => el("span", { class: "chip", text: group, title: "group" })),
      ...roles.map((role) => el("span", { class: "chip role", text: role, title: "role" })),
    ];
    $("who-groups").replaceChildren(...chips);
    $("who").hidden = false;
  }

  setStatus(state, text) {
    const status = $("status");
    status.dataset.state = state;
    $("status-text").textContent = text;
  }

  // The client has de-duplicated events by id already (durable notifications may arrive
  // twice: protocol.md 13).
  route(envelope) {
    const type = String(envelope.type);
    if (type.startsWith("chat.")) this.chat.handle(envelope);
    else if (type.startsWith("run.")) this.runner.handle(envelope);
    else if (type.startsWith("excel.")) this.exports.handle(envelope);
    else this.messages.show(envelope);
  }

  logout(message) {
    const warren = this.warren;
    this.warren = null;
    if (warren) warren.close("signed out");
    this.saver.cancel();
    saved.clear();
    this.showNotice(null);
    delete $("status").dataset.recovered;
    sessions.clear();
    this.session = null;
    for (const panel of this.panels) panel.reset();
    this.showLogin(message);
  }
}

new Console().start();
