// Chat with the Cat (docs/cat_relay.md): `chat.ask`, then `chat.token` batches stream
// into the answer until the authoritative `chat.reply`, or a `chat.error`. The Cat's
// state comes from the relays (GET /api/console/cat) and from the answers themselves.
// The transcript, with an answer still streaming, survives a reload (saved.js): `seq`
// on chat.token tells which batches an answer has, so a replay continues it without a
// gap or a repeat, and a gap, if one ever happens, is marked where it is.

import { $, el, showError } from "./dom.js";
import { keepEarly } from "./early.js";

const STATUS_EVERY_MS = 15_000;
const CAT_DOWN = new Set(["cat_unavailable", "cat_timeout"]);
const WEB_ADDRESS = /(https?:\/\/\S+)/;  // in split(): the addresses land at odd indexes
const MISSED = "[… missed part of the answer …]";
// What a reload keeps: the newest bubbles, each cut to its end.
const SAVED_BUBBLES = 40;
const SAVED_CHARS = 20_000;

export class ChatPanel {
  constructor(app) {
    this.app = app;
    this.log = $("chat-log");
    this.form = $("chat-form");
    this.input = $("chat-text");
    this.error = $("chat-error");
    this.status = $("cat-status");
    this.answers = new Map();  // ask id -> {node, text, tokens, seq}
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
      this.answers.set(ack.id, { node: answer, text: "", tokens: 0, seq: -1 });
      answer.dataset.ask = ack.id;
      for (const envelope of this.early.get(ack.id) || []) this.handle(envelope);
      this.early.delete(ack.id);
    } catch (error) {
      const message = error.code === "no_service" ? "The chat service (cat_relay) is not running." : null;
      this.fail(answer, message || error, error.code);
    }
  }

  // The connection came back without the events it missed (protocol.md 17.3): an answer
  // in flight may have lost a part, or its end. Marked so until its next batch shows
  // whether anything is missing (by seq) or its reply replaces it.
  interrupted() {
    for (const answer of this.answers.values()) answer.node.classList.add("interrupted");
  }

  // The client gave up: answers in flight will not arrive.
  connectionLost() {
    for (const [askId, answer] of this.answers) {
      this.fail(answer.node, "The connection dropped before the answer arrived; ask again.");
      this.answers.delete(askId);
    }
  }

  // What a reload would lose (saved.js).
  snapshot() {
    return [...this.log.querySelectorAll(".bubble")].slice(-SAVED_BUBBLES).map((node) => {
      const answer = node.dataset.ask ? this.answers.get(node.dataset.ask) : undefined;
      const kind = node.classList.contains("user") ? "user" : node.classList.contains("error") ? "error" : "cat";
      return {
        kind,
        streaming: node.classList.contains("streaming"),
        text: node.textContent.slice(-SAVED_CHARS),
        ask: node.dataset.ask || null,
        seq: answer ? answer.seq : null,
        tokens: answer ? answer.tokens : Number(node.dataset.tokens) || 0,
      };
    });
  }

  restore(bubbles) {
    if (!Array.isArray(bubbles) || bubbles.length === 0) return;
    const empty = this.log.querySelector(".empty");
    if (empty) empty.remove();
    for (const saved of bubbles) {
      const text = String(saved.text || "");
      if (saved.kind === "user" || saved.kind === "error") {
        this.bubble(saved.kind, text);
      } else if (!saved.streaming) {
        this.bubble("cat done", text);
      } else {
        const node = this.bubble("cat streaming", text);
        node.dataset.tokens = String(saved.tokens || 0);
        if (typeof saved.ask === "string" && saved.ask) {
          const seq = Number.isInteger(saved.seq) ? saved.seq : -1;
          node.dataset.ask = saved.ask;
          node.dataset.seq = String(seq);
          this.answers.set(saved.ask, { node, text, tokens: Number(saved.tokens) || 0, seq });
        } else {
          // Reloaded before the ack: this page cannot tell the answer's events apart.
          this.fail(node, "The page was reloaded before the Cat took the question; ask again.");
        }
      }
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
      if (Number.isInteger(data.seq)) {
        if (data.seq <= answer.seq) return;  // shown already: replayed after a reload
        if (data.seq > answer.seq + 1) answer.text += MISSED;
        answer.seq = data.seq;
      }
      answer.node.classList.remove("interrupted");
      answer.text += data.text;
      answer.tokens += 1;
      answer.node.textContent = answer.text;
      answer.node.dataset.tokens = String(answer.tokens);
      answer.node.dataset.seq = String(answer.seq);
    } else if (envelope.type === "chat.reply") {
      answer.node.textContent = data.text;
      answer.node.classList.remove("streaming", "interrupted");
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
