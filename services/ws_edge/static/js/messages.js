// Messages: a live feed of `message` events (and any event no other panel shows), and a
// form that sends to a user, a group or everyone; the edge's policy errors show inline.

import { $, clock, el, showError } from "./dom.js";

const MAX_ITEMS = 200;
const NAME = /^[A-Za-z0-9_-]{1,64}$/;

export class MessagesPanel {
  constructor(app) {
    this.app = app;
    this.feed = $("feed");
    this.form = $("send-form");
    this.kind = $("send-kind");
    this.to = $("send-to");
    this.text = $("send-text");
    this.error = $("send-error");
    this.kind.addEventListener("change", () => this.kindChanged());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
  }

  reset() {
    this.feed.replaceChildren(el("li", { class: "empty", text: "Nothing yet. Messages to you, your groups and everyone appear here." }));
    showError(this.error, null);
    this.text.value = "";
  }

  signedIn(session) {
    const groups = $("send-groups");
    groups.replaceChildren(...session.groups.map((group) => el("option", { value: group })));
    this.kindChanged();
  }

  kindChanged() {
    const kind = this.kind.value;
    this.to.disabled = kind === "broadcast";
    this.to.placeholder = kind === "user" ? "user name" : kind === "group" ? "group name" : "everyone";
    if (kind === "group") this.to.setAttribute("list", "send-groups");
    else this.to.removeAttribute("list");
    if (kind === "broadcast") this.to.value = "";
  }

  destination() {
    const kind = this.kind.value;
    if (kind === "broadcast") return "broadcast";
    const name = this.to.value.trim();
    if (!NAME.test(name)) {
      throw new Error(`a ${kind} name is 1-64 letters, digits, '_' or '-'`);
    }
    return `${kind}:${name}`;
  }

  async send() {
    showError(this.error, null);
    let to;
    try {
      to = this.destination();
    } catch (error) {
      showError(this.error, error);
      return;
    }
    const text = this.text.value;
    if (!text.trim()) return;
    try {
      const ack = await this.app.warren.send("message.send", { to, data: { text } });
      this.text.value = "";
      // A direct message is not echoed back unless sent to oneself (protocol.md 6.1).
      if (to.startsWith("user:") && to !== `user:${this.app.session.user}`) {
        this.show({ id: ack.id, type: "message", ts: Date.now() / 1000, to, from: `user:${this.app.session.user}`, data: { text } }, true);
      }
    } catch (error) {
      showError(this.error, error);
    }
  }

  // `sent` marks the local copy of a direct message; everything else came from the edge.
  show(envelope, sent = false) {
    const empty = this.feed.querySelector(".empty");
    if (empty) empty.remove();
    const mine = envelope.from === `user:${this.app.session.user}`;
    const data = envelope.data || {};
    const body = typeof data.text === "string" ? data.text : JSON.stringify(data);
    const item = el("li", { class: `msg${mine ? " mine" : ""}${sent ? " sent" : ""}`, dataset: { id: envelope.id } },
      el("div", { class: "meta" },
        el("span", { class: "from", text: envelope.from.replace(/^user:/, "") }),
        el("span", { class: "arrow", text: "→" }),
        el("span", { class: "to", text: envelope.to }),
        envelope.type !== "message" ? el("span", { class: "type", text: envelope.type }) : null,
        el("time", { text: clock(envelope.ts) })),
      el("div", { class: "text", text: body }));
    this.feed.append(item);
    while (this.feed.children.length > MAX_ITEMS) this.feed.firstElementChild.remove();
    this.feed.scrollTop = this.feed.scrollHeight;
  }
}
