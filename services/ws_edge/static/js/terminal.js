// A terminal-like pane that keeps up with thousands of lines per second.
//
// Lines are queued as they arrive and written once per animation frame, consecutive
// lines of one stream as a single text node. Only the newest `maxLines` are kept, both
// in the queue (a hidden tab gets no frames) and on screen, so memory and layout work
// stay bounded however fast a job prints.

export class Terminal {
  constructor(node, { maxLines = 5000, onFlush = () => {} } = {}) {
    this.node = node;
    this.maxLines = maxLines;
    this.onFlush = onFlush;
    this.queue = [];  // [{stream, lines}]
    this.queued = 0;
    this.shown = [];  // [{node, count}] oldest first
    this.shownLines = 0;
    this.frame = 0;
    // Whether new lines scroll into view: the reader has not scrolled up. Kept from scroll
    // events, not measured at each flush: a pane made shorter (a notice above it) is not
    // one the reader scrolled up.
    this.following = true;
    node.addEventListener("scroll", () => {
      this.following = node.scrollHeight - node.scrollTop - node.clientHeight < 8;
    });
  }

  write(stream, lines) {
    if (!lines.length) return;
    const last = this.queue[this.queue.length - 1];
    if (last && last.stream === stream) last.lines.push(...lines);
    else this.queue.push({ stream, lines: [...lines] });
    this.queued += lines.length;
    if (this.queued > 2 * this.maxLines) this.trimQueue();
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  note(text) {
    this.write("note", [text]);
  }

  clear() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.queue = [];
    this.queued = 0;
    this.shown = [];
    this.shownLines = 0;
    this.following = true;
    this.node.replaceChildren();
  }

  trimQueue() {
    let excess = this.queued - this.maxLines;
    while (excess > 0 && this.queue.length) {
      const first = this.queue[0];
      if (first.lines.length <= excess) {
        excess -= first.lines.length;
        this.queued -= first.lines.length;
        this.queue.shift();
      } else {
        first.lines.splice(0, excess);
        this.queued -= excess;
        excess = 0;
      }
    }
  }

  flush() {
    this.frame = 0;
    this.trimQueue();
    const node = this.node;
    const following = this.following;
    const batch = document.createDocumentFragment();
    for (const { stream, lines } of this.queue) {
      const span = document.createElement("span");
      span.className = stream;
      span.textContent = lines.join("\n") + "\n";
      batch.append(span);
      this.shown.push({ node: span, count: lines.length });
      this.shownLines += lines.length;
    }
    this.queue = [];
    this.queued = 0;
    node.append(batch);
    this.trimShown();
    if (following) node.scrollTop = node.scrollHeight;
    this.onFlush(this.shownLines);
  }

  // The newest lines, queued or shown, at most `maxLines` and about `maxChars`, as
  // [{stream, lines}] oldest first: what write() takes to show them again.
  snapshot(maxLines = this.maxLines, maxChars = Infinity) {
    const chunks = this.shown.map(({ node }) => ({ stream: node.className, lines: node.textContent.slice(0, -1).split("\n") }));
    for (const { stream, lines } of this.queue) chunks.push({ stream, lines: [...lines] });
    const kept = [];
    let lines = 0;
    let chars = 0;
    for (let i = chunks.length - 1; i >= 0 && lines < maxLines && chars < maxChars; i -= 1) {
      const chunk = chunks[i];
      let take = Math.min(chunk.lines.length, maxLines - lines);
      let size = 0;
      for (let j = chunk.lines.length - 1; j >= chunk.lines.length - take; j -= 1) {
        size += chunk.lines[j].length + 1;
        if (chars + size > maxChars) {
          take = chunk.lines.length - 1 - j;
          size -= chunk.lines[j].length + 1;
          break;
        }
      }
      if (take > 0) kept.push({ stream: chunk.stream, lines: chunk.lines.slice(chunk.lines.length - take) });
      lines += take;
      chars += size;
      if (take < chunk.lines.length) break;
    }
    return kept.reverse();
  }

  trimShown() {
    while (this.shownLines - this.shown[0].count >= this.maxLines) {
      const oldest = this.shown.shift();
      oldest.node.remove();
      this.shownLines -= oldest.count;
    }
    const excess = this.shownLines - this.maxLines;
    if (excess > 0) {
      const oldest = this.shown[0];
      const text = oldest.node.textContent;
      let cut = 0;
      for (let i = 0; i < excess; i += 1) cut = text.indexOf("\n", cut) + 1;
      oldest.node.textContent = text.slice(cut);
      oldest.count -= excess;
      this.shownLines -= excess;
    }
  }
}
