// The Warren console: signs in, keeps one WebSocket to the edge, and hands each event to
// the panel it belongs to. docs/console.md describes it.

import { $, el, showError } from "./dom.js";
import { ChatPanel } from "./chat.js";
import { ExportsPanel } from "./exports.js";
import { MessagesPanel } from "./messages.js";
import { MetricsPanel } from "./metrics.js";
import { RunnerPanel } from "./runner.js";
import * as sessions from "./session.js";
import { Connection } from "./socket.js";

const SEEN_IDS = 2000;  // notifications may arrive twice (protocol.md 13): de-duplicated by id

class Console {
  constructor() {
    this.session = null;
    this.connection = null;
    this.seen = new Set();
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
    this.seen.clear();
    for (const panel of this.panels) panel.reset();
    this.showUser(session.user, session.groups, session.roles);
    $("login-panel").hidden = true;
    $("workspace").hidden = false;
    this.messages.signedIn(session);
    const connection = new Connection(session.token, () => this.tokenAccepted());
    connection.addEventListener("state", (event) => {
      this.setStatus(event.detail.state, event.detail.text);
      if (event.detail.state === "waiting") this.chat.connectionLost();
    });
    connection.addEventListener("welcome", (event) => this.welcome(event.detail));
    connection.addEventListener("event", (event) => this.route(event.detail));
    connection.addEventListener("expired", () => this.logout("Your session expired: sign in again."));
    this.connection = connection;
    connection.open();
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

  // Whether the edge still takes the token; asked when a socket could not even open.
  async tokenAccepted() {
    try {
      await this.api("/api/console/metrics");
      return true;
    } catch (error) {
      return !(error.code && error.code.startsWith("token_"));
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

  route(envelope) {
    if (this.seen.has(envelope.id)) return;
    this.seen.add(envelope.id);
    if (this.seen.size > SEEN_IDS) this.seen.delete(this.seen.values().next().value);
    const type = String(envelope.type);
    if (type.startsWith("chat.")) this.chat.handle(envelope);
    else if (type.startsWith("run.")) this.runner.handle(envelope);
    else if (type.startsWith("excel.")) this.exports.handle(envelope);
    else this.messages.show(envelope);
  }

  logout(message) {
    if (this.connection) this.connection.close();
    this.connection = null;
    sessions.clear();
    this.session = null;
    for (const panel of this.panels) panel.reset();
    this.showLogin(message);
  }
}

new Console().start();
