// Chat with the Cat (docs/cat_relay.md): `chat.ask`, then `chat.token` batches stream
// into the answer until the authoritative `chat.reply`, or a `chat.error`. The Cat's
// state comes from the relays (GET /api/console/cat) and from the answers themselves.

import { $, el, showError } from "./dom.js";
import { keepEarly } from "./early.js";

const STATUS_EVERY_MS = 15_000;
const CAT_DOWN = new Set(["cat_unavailable", "cat_timeout"]);
const WEB_ADDRESS = /(https?:\/\/\S+)/;  // in split(): the addresses land at odd indexes

export class ChatPanel {
  constructor(app) {
    this.app = app;
    this.log = $("chat-log");
    this.form = $("chat-form");
    this.input = $("chat-text");
    this.error = $("chat-error");
    this.status = $("cat-status");
    this.answers = new Map();  // ask id -> {node, text, tokens}
    this.early = new Map();  // ask id -> events that arrived before the ack (it may happen)
    this.timer = 0;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.ask();
    });
  }

  reset() {
    clearInterval(this.timer);
    this.answers.clear();
    this.early.clear();
    this.log.replaceChildren(el("p", { class: "empty", text: "Ask the Cat anything; the answer streams in as it is written." }));
    showError(this.error, null);
    this.setCat("unknown", "Cat: checking…");
  }

  connected() {
    this.checkCat();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.checkCat(), STATUS_EVERY_MS);
  }

  async checkCat() {
    try {
      const status = await this.app.api("/api/console/cat");
      if (status.cat === "reachable") {
        this.setCat("up", `Cat ready${status.version ? ` (${status.protocol} ${status.version})` : ""}`);
      } else if (status.cat === "unreachable") {
        this.setCat("down", "Cat unavailable");
      } else {
        this.setCat("unknown", "Cat: unknown");
      }
    } catch {
      // the next check, or the next answer, tells
    }
  }

  setCat(state, text) {
    this.status.dataset.state = state;
    this.status.textContent = text;
    this.log.classList.toggle("cat-down", state === "down");
  }

  async ask() {
    const text = this.input.value.trim();
    if (!text) return;
    showError(this.error, null);
    const empty = this.log.querySelector(".empty");
    if (empty) empty.remove();
    this.bubble("user", text);
    const answer = this.bubble("cat streaming", "");
    answer.dataset.tokens = "0";
    this.input.value = "";
    try {
      const ack = await this.app.warren.command("chat.ask", { text });
      this.answers.set(ack.id, { node: answer, text: "", tokens: 0 });
      answer.dataset.ask = ack.id;
      for (const envelope of this.early.get(ack.id) || []) this.handle(envelope);
      this.early.delete(ack.id);
    } catch (error) {
      const message = error.code === "no_service" ? "The chat service (cat_relay) is not running." : null;
      this.fail(answer, message || error, error.code);
    }
  }

  // Events are not replayed after a reconnect (protocol.md 3.3): answers in flight are lost.
  connectionLost() {
    for (const [askId, answer] of this.answers) {
      this.fail(answer.node, "The connection dropped before the answer arrived; ask again.");
      this.answers.delete(askId);
    }
  }

  bubble(kind, text) {
    const node = el("div", { class: `bubble ${kind}`, text });
    this.log.append(node);
    this.log.scrollTop = this.log.scrollHeight;
    return node;
  }

  fail(node, error, code) {
    node.classList.remove("streaming", "cat");
    node.classList.add("error");
    if (CAT_DOWN.has(code)) {
      this.setCat("down", "Cat unavailable");
      node.textContent = `Cat unavailable: ${error.message || error}`;
    } else if (code === "cat_no_llm") {
      // The message names the Cat's settings page, where its admin chooses a model.
      node.replaceChildren(...error.message.split(WEB_ADDRESS).map((part, index) => (index % 2
        ? el("a", { href: part, target: "_blank", rel: "noopener", text: part })
        : part)));
    } else {
      node.textContent = typeof error === "string" ? error : `${error.code}: ${error.message}`;
    }
  }

  handle(envelope) {
    const data = envelope.data || {};
    const answer = this.answers.get(data.ask_id);
    if (!answer) {
      keepEarly(this.early, data.ask_id, envelope);
      return;
    }
    if (envelope.type === "chat.token") {
      answer.text += data.text;
      answer.tokens += 1;
      answer.node.textContent = answer.text;
      answer.node.dataset.tokens = String(answer.tokens);
    } else if (envelope.type === "chat.reply") {
      answer.node.textContent = data.text;
      answer.node.classList.remove("streaming");
      answer.node.classList.add("done");
      this.answers.delete(data.ask_id);
      if (this.status.dataset.state !== "up") this.checkCat();
    } else if (envelope.type === "chat.error") {
      this.fail(answer.node, data, data.code);
      this.answers.delete(data.ask_id);
    }
    this.log.scrollTop = this.log.scrollHeight;
  }
}
