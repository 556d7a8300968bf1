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
