// Compiled (never run) by types.test.js: the declarations accept real use and refuse misuse.
import { Warren, WarrenError, type Envelope, type StateChange } from "../warren.js";

const w = new Warren("wss://edge.example/ws", {
  getToken: async ({ reason }) => (reason === "refresh" ? "new" : "first"),
  WebSocket,  // the browser's (lib "dom"): the declarations must accept it
  backoff: { baseMs: 250 },
});
w.on("chat.token", (event) => {
  const seq: number = event.data.seq;
  const ask: string = event.data.ask_id;
  void seq, ask;
});
w.on("run.finished", (event) => {
  const status: "completed" | "stopped" | "failed" | "timeout" = event.data.status;
  void status;
});
w.on("report.ready", (event: Envelope<"report.ready">) => void event.data["anything"]);
w.on("*", (event) => void event.id);
w.onState((change: StateChange) => void change.delayMs);
w.onError((error: WarrenError) => void error.code);
// Commands and frames Warren does not list are open.
void w.command("reports.rebuild", { when: "now" });
void w.send("presence.set", { data: { away: true } });
// Recovery: a saved position in, the position out, what the welcome said, history.
const saved = new Warren("wss://edge.example/ws", { getToken: () => "t", position: 1796000000.5 });
saved.onPosition((position) => void (position === null ? 0 : position.toFixed(3)));
saved.onRecovery(({ recovered, reason, oldest }) => void (recovered === false && reason === "too_old" && oldest));
saved.onRecovery(({ inBand, replayed }) => void (inBand && replayed !== null && replayed.toFixed(0)));
saved.onState((change) => void (change.state === "recovering" && change.since));
async function recover(): Promise<void> {
  const { events, oldest } = await saved.history("group:team", { limit: 50, since: saved.position });
  const first: string | undefined = events[0]?.id;
  void first, oldest;
  const why: string | null | undefined = saved.recovery?.reason;
  void why;
}
void recover;
// @ts-expect-error: history reads destination keys only
void saved.history("service:billing");
// @ts-expect-error: a position is a number of seconds
new Warren("ws://x", { getToken: () => "t", position: "1796000000" });

async function use(): Promise<void> {
  const { id } = await w.send("message.send", { to: "group:team", data: { text: "hi" } });
  await w.command("run.start", { job: "countdown", args: { n: 3 } });
  await w.command("excel.create", { report: "sales" });
  const identity = await w.ready();
  void id, identity.groups;
}
void use;

// @ts-expect-error: a chat.token has no `lines`
w.on("chat.token", (event) => void event.data.lines);
// @ts-expect-error: message.send needs a destination address
void w.send("message.send", { to: "service:x" });
// @ts-expect-error: run.stop needs a run_id
void w.command("run.stop", {});
// @ts-expect-error: getToken is required
new Warren("ws://x", { WebSocket });
// @ts-expect-error: not a state
const state: "offline" = w.state;
void state;
