// What a reload of the tab would otherwise lose: the client's position (protocol.md
// 17.2) and the panels' state it describes (the chat transcript, with an answer still
// streaming, and the runner's terminal). Both go under one sessionStorage key in one
// write, so the position saved is never newer than the panels saved with it: after a
// reload the edge replays from there, and the panels skip, by `seq`, what they have.
//
// Written at most every SAVE_EVERY_MS while events arrive, and on `pagehide`; bounded by
// what each panel puts in (the newest bubbles and lines), and by MAX_CHARS in all.

const KEY = "warren.console";
const VERSION = 1;
const SAVE_EVERY_MS = 200;
export const MAX_CHARS = 1_000_000;

export class Saver {
  // `collect()` returns the state to save, or null for nothing to save now.
  constructor(collect) {
    this.collect = collect;
    this.timer = 0;
  }

  schedule() {
    if (!this.timer) this.timer = setTimeout(() => this.flush(), SAVE_EVERY_MS);
  }

  flush() {
    this.cancel();
    const state = this.collect();
    if (state) write(state);
  }

  cancel() {
    clearTimeout(this.timer);
    this.timer = 0;
  }
}

// The state saved for `user`, or null (none, another user's, unreadable).
export function load(user) {
  let saved;
  try {
    saved = JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    return null;
  }
  if (!saved || saved.v !== VERSION || saved.user !== user) return null;
  const position = saved.position;
  if (position !== null && !(typeof position === "number" && Number.isFinite(position) && position >= 0)) return null;
  return saved;
}

export function clear() {
  sessionStorage.removeItem(KEY);
}

// Too large, or refused by the browser (its quota): the terminal's lines go first, then
// everything but the position, which alone still lets the edge replay what follows.
function write(state) {
  const attempts = [
    state,
    { ...state, run: state.run && { ...state.run, terminal: [], cut: true } },
    { v: VERSION, user: state.user, position: state.position },
  ];
  for (const attempt of attempts) {
    const text = JSON.stringify({ ...attempt, v: VERSION });
    if (text.length > MAX_CHARS) continue;
    try {
      sessionStorage.setItem(KEY, text);
      return;
    } catch {
      // over the browser's quota: try less
    }
  }
  clear();
}
