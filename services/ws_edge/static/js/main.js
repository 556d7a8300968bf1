// The Warren console: signs in, keeps one connection to the edge through Warren's
// JavaScript client (served by the edge at /client/warren.js), and hands each event to
// the panel it belongs to. docs/console.md describes it.

import { Warren } from "/client/warren.js";
import { $, el, showError } from "./dom.js";
import { ChatPanel } from "./chat.js";
import { ExportsPanel } from "./exports.js";
import { MessagesPanel } from "./messages.js";
import { MetricsPanel } from "./metrics.js";
import { RunnerPanel } from "./runner.js";
import * as sessions from "./session.js";

const SESSION_EXPIRED = "Your session expired: sign in again.";

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
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.login();
    });
    $("logout").addEventListener("click", () => this.logout());
  }

  api(path, options) {
    return sessions.api(this.session, path, options);
  }

  start() {
    const session = sessions.load();
    if (session) this.enter(session);
    else this.showLogin();
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
    this.showUser(session.user, session.groups, session.roles);
    $("login-panel").hidden = true;
    $("workspace").hidden = false;
    this.messages.signedIn(session);
    // The console holds no credential to get a new token with (it signs in with a
    // password and keeps only the token): no in-band refresh, and the token is refused
    // by getToken once the edge or its exp says it is over.
    const warren = new Warren(socketUrl(), { getToken: ({ reason }) => this.token(reason), refresh: false });
    const current = (listener) => (value) => {
      if (this.warren === warren) listener(value);
    };
    warren.onState(current((change) => this.stateChanged(change)));
    warren.onWelcome(current((identity) => this.welcome(identity)));
    warren.on("*", current((envelope) => this.route(envelope)));
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
    } else if (state === "open") {
      this.setStatus("connected", `connected to ${edge}`);
    } else if (state === "reconnecting") {
      $("status").title = `${reason}; next try after ${(delayMs / 1000).toFixed(1)} s`;
      this.setStatus("waiting", `reconnecting (attempt ${attempt})`);
      this.chat.connectionLost();
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
    this.runner.reconnected();
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
    sessions.clear();
    this.session = null;
    for (const panel of this.panels) panel.reset();
    this.showLogin(message);
  }
}

new Console().start();
