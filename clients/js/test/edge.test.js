// The client against real edges (python -m services.ws_edge on a vhost of their own),
// started and stopped by tests/clients/js_harness.py.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { Warren } from "../warren.js";
import { collect, nextState, startHarness, within } from "./support.js";

let harness;
let url;
const clients = [];

before(async () => {
  harness = await startHarness();
  url = `ws://127.0.0.1:${await harness.edge("main")}/ws`;
});

after(async () => {
  for (const client of clients) client.close();
  await harness?.close();
});

let users = 0;
// A user of its own for each client, so that tests never see each other's events.
function newUser() {
  return `u${process.pid}-${++users}`;
}

function client(target, options = {}) {
  const w = new Warren(target, { WebSocket, ...options });
  clients.push(w);
  return w;
}

function userClient(target, user, { groups = [], roles = [], ttl, ...options } = {}) {
  return client(target, { getToken: () => harness.token(user, { groups, roles, ttl }), ...options });
}

const publish = (fields) => harness.request("publish", fields);

test("connects with the token in a subprotocol, or in ?token= for old edges", async () => {
  const user = newUser();
  const w = userClient(url, user, { groups: ["team"] });
  const welcome = await within(w.ready(), "welcome");
  assert.equal(welcome.user, user);
  assert.deepEqual(welcome.groups, ["team"]);
  assert.match(welcome.edge, /^edge-/);
  assert.equal(w.state, "open");
  const old = userClient(url, user, { auth: "query" });
  assert.equal((await within(old.ready(), "welcome")).user, user);
});

test("send resolves on ack and rejects with the edge's error code", async () => {
  const user = newUser();
  const w = userClient(url, user, { groups: ["team"] });
  await within(w.ready(), "welcome");
  const echo = collect(w, "message", 1);
  const { id } = await w.send("message.send", { to: `user:${user}`, data: { text: "hi" } });
  const [event] = await echo;
  assert.equal(event.id, id);
  assert.equal(event.from, `user:${user}`);
  assert.deepEqual(event.data, { text: "hi" });
  await assert.rejects(w.send("message.send", { to: "group:ops", data: {} }), { code: "forbidden" });
  await assert.rejects(w.send("message.send", { to: "nowhere", data: {} }), { code: "invalid_address" });
  // No service runs here: the edge refuses the command (unknown_type where commands come
  // from a catalogue services fill, no_service where the edge lists them itself).
  await assert.rejects(w.command("run.stop", { run_id: "r1" }), (error) => ["unknown_type", "no_service"].includes(error.code));
});

test("events reach listeners by type, and a duplicate id is delivered once", async () => {
  const user = newUser();
  const w = userClient(url, user);
  await within(w.ready(), "welcome");
  const tokens = [];
  w.on("chat.token", (event) => tokens.push(event.data.seq));
  const all = collect(w, "*", 5);
  const to = `user:${user}`;
  for (let seq = 0; seq < 3; seq++) {
    await publish({ to, type: "chat.token", data: { ask_id: "a1", seq, text: "x" }, sender: "service:cat_relay" });
  }
  await publish({ to, type: "excel.done", envelope_id: "task1-done", data: { task_id: "task1" } });
  await publish({ to, type: "excel.done", envelope_id: "task1-done", data: { task_id: "task1" } });
  await publish({ to, type: "chat.reply", data: { ask_id: "a1", text: "xxx" } });
  const events = await all;
  assert.deepEqual(events.map((event) => event.type), ["chat.token", "chat.token", "chat.token", "excel.done", "chat.reply"]);
  assert.deepEqual(tokens, [0, 1, 2]);
  assert.equal(w.stats.duplicates, 1);
  assert.equal(w.lastEventId, events[4].id);
});

test("an edge killed and restarted on its port: the client backs off, then reconnects", async () => {
  const port = await harness.edge("crash");
  const user = newUser();
  const w = userClient(`ws://127.0.0.1:${port}/ws`, user, { backoff: { baseMs: 100, capMs: 1_000 } });
  await within(w.ready(), "welcome");
  const attempts = [];
  w.onState((change) => { if (change.state === "reconnecting") attempts.push(change); });
  const lost = nextState(w, "reconnecting");
  await harness.request("kill", { name: "crash" });
  assert.equal((await lost).code, 1006);
  const retried = nextState(w, (change) => change.state === "reconnecting" && change.attempt >= 2, "a second retry");
  await retried;
  await harness.edge("crash", { port });
  await within(w.ready(), "welcome again");
  assert.equal(w.stats.reconnects, 1);
  attempts.forEach((change, n) => {
    assert.equal(change.attempt, n + 1);
    assert.ok(change.delayMs <= Math.min(1_000, 100 * 2 ** n), JSON.stringify(change));
  });
  const echo = collect(w, "message", 1);
  await w.send("message.send", { to: `user:${user}`, data: {} });
  await echo;
});

test("an edge shutting down (1001): the client reconnects at once, to another edge", async () => {
  const first = `ws://127.0.0.1:${await harness.edge("draining")}/ws`;
  const second = `ws://127.0.0.1:${await harness.edge("other")}/ws`;
  let target = first;
  const w = userClient(() => target, newUser(), { backoff: { baseMs: 500 } });
  const firstWelcome = await within(w.ready(), "welcome");
  target = second;
  const drained = nextState(w, "reconnecting");
  await harness.request("terminate", { name: "draining" });
  const change = await drained;
  assert.equal(change.code, 1001);
  assert.equal(change.reason, "server shutting down");
  assert.ok(change.delayMs < 500, `reconnects at once, not after ${change.delayMs} ms`);
  const secondWelcome = await within(w.ready(), "welcome on the other edge");
  assert.notEqual(secondWelcome.edge, firstWelcome.edge);
  await harness.request("terminate", { name: "other" });
});

test("4001 at the token's exp: getToken gives a new one and the client reconnects", async () => {
  const user = newUser();
  const reasons = [];
  const w = client(url, {
    refresh: false,
    getToken: ({ reason }) => {
      reasons.push(reason);
      return harness.token(user, { ttl: reasons.length === 1 ? 2 : 3600 });
    },
  });
  await within(w.ready(), "welcome");
  const expired = await nextState(w, (change) => change.previous === "open");
  assert.equal(expired.code, 4001);
  await within(w.ready(), "welcome with the new token");
  assert.deepEqual(reasons, ["connect", "expired"]);
  assert.ok(w.identity.exp > Date.now() / 1000 + 3000);
});

test("auth.refresh before exp keeps the socket: no reconnect, no lost event across the old exp", async () => {
  const user = newUser();
  const to = `user:${user}`;
  let calls = 0;
  const w = client(url, { getToken: () => harness.token(user, { ttl: ++calls === 1 ? 3 : 3600 }) });
  const welcome = await within(w.ready(), "welcome");
  const changes = [];
  w.onState((change) => changes.push(change));
  const received = [];
  w.on("message", (event) => received.push(event.data.n));
  const refreshed = within(new Promise((resolve) => w.onRefresh(resolve)), "the refresh");
  // Events all through the refresh and past the first token's exp.
  let n = 0;
  while (Date.now() < welcome.exp * 1000 + 1_000) await publish({ to, data: { n: n++ } });
  const identity = await refreshed;
  assert.ok(identity.exp > welcome.exp + 3000);
  const final = n;
  const last = within(new Promise((resolve) => w.on("message", (event) => event.data.n === final && resolve())), "the last event");
  await publish({ to, data: { n: n++ } });
  await last;
  assert.deepEqual(received, Array.from({ length: n }, (_, i) => i));
  assert.deepEqual(changes, []);
  assert.equal(w.state, "open");
  assert.equal(calls, 2);
});

test("a refresh to fewer groups stops the dropped group's events at the ack", async () => {
  const user = newUser();
  let calls = 0;
  const w = client(url, {
    getToken: () => harness.token(user, ++calls === 1 ? { groups: ["g1", `o${user}`], ttl: 3 } : { groups: ["g1"], ttl: 3600 }),
  });
  await within(w.ready(), "welcome");
  const identity = await within(new Promise((resolve) => w.onRefresh(resolve)), "the refresh");
  assert.deepEqual(identity.groups, ["g1"]);
  const seen = collect(w, "*", 1);
  await publish({ to: `group:o${user}`, data: { dropped: true } });
  await publish({ to: "group:g1", data: { kept: true } });
  const [event] = await seen;
  assert.deepEqual(event.data, { kept: true });
});

test("a token for another user at refresh time: a new socket for that user", async () => {
  const first = newUser();
  const second = newUser();
  let calls = 0;
  const w = client(url, { getToken: () => harness.token(++calls === 1 ? first : second, { ttl: calls === 1 ? 3 : 3600 }) });
  assert.equal((await within(w.ready(), "welcome")).user, first);
  const switched = within(new Promise((resolve) => w.onWelcome(resolve)), "the second welcome");
  assert.equal((await switched).user, second);
});

// -- recovery and history (protocol.md 17) ---------------------------------------------

// Publishes `count` numbered events to each of `keys`, one at a time, in order.
async function publishNumbered(keys, from, count) {
  for (let n = from; n < from + count; n++) {
    for (const to of keys) await publish({ to, data: { n } });
  }
}

// The numbers received per destination, in the order they arrived.
function numbersByKey(events) {
  const byKey = {};
  for (const event of events) (byKey[event.to] ??= []).push(event.data.n);
  return byKey;
}

const range = (count) => Array.from({ length: count }, (_, n) => n);

test("an edge killed while events are published: the client recovers them after the reconnect, each once, in order", async () => {
  const port = await harness.edge("recover");
  const user = newUser();
  const keys = [`user:${user}`, `group:g${user}`];
  const w = userClient(`ws://127.0.0.1:${port}/ws`, user, { groups: [`g${user}`], backoff: { baseMs: 100, capMs: 500 } });
  await within(w.ready(), "welcome");
  assert.equal(w.recovery.recovered, null);
  const received = [];
  w.on("message", (event) => received.push(event));
  const states = [];
  w.onState((change) => states.push(change.state));
  const before = collect(w, "message", 20);
  await publishNumbered(keys, 0, 10);
  await before;
  const position = w.position;
  assert.equal(position, received.at(-1).ts);
  const lost = nextState(w, "reconnecting");
  await harness.request("kill", { name: "recover" });
  await lost;
  await publishNumbered(keys, 10, 20);  // while no edge is there
  const all = collect(w, "message", 60);
  await harness.edge("recover", { port });
  await within(w.ready(), "welcome and replay");
  assert.equal(w.recovery.recovered, true);
  assert.equal(w.recovery.since, position);
  assert.ok(w.recovery.replayed >= 40, JSON.stringify(w.recovery));
  await publishNumbered(keys, 30, 10);  // live again
  await all;
  assert.deepEqual(numbersByKey(received), Object.fromEntries(keys.map((key) => [key, range(40)])));
  assert.equal(new Set(received.map((event) => event.id)).size, received.length);
  // At least the last event before the drop is within the window: the edge sent it again.
  assert.ok(w.stats.duplicates >= 1, JSON.stringify(w.stats));
  assert.ok(w.stats.replayed >= 40, JSON.stringify(w.stats));
  assert.deepEqual(states.slice(states.indexOf("recovering") - 1, states.indexOf("recovering") + 2), ["reconnecting", "recovering", "open"]);
  await harness.request("terminate", { name: "recover" });
});

test("a client made again with the position of a closed one (a reload) gets what was published in between", async () => {
  const user = newUser();
  const to = `user:${user}`;
  const first = userClient(url, user);
  await within(first.ready(), "welcome");
  const had = collect(first, "message", 5);
  await publishNumbered([to], 0, 5);
  await had;
  const position = first.position;
  first.close();
  await publishNumbered([to], 5, 5);
  const second = userClient(url, user, { position });
  const replayed = [];
  const last = within(new Promise((resolve) => second.on("message", (event) => {
    replayed.push(event);
    if (event.data.n === 11) resolve();
  })), "the live events");
  await within(second.ready(), "welcome and replay");
  assert.equal(second.recovery.recovered, true);
  await publishNumbered([to], 10, 2);
  await last;
  // Without the first client's ids, events of the window before the position come again:
  // every one is at most `window` older than the position, and each arrives once.
  const numbers = replayed.map((event) => event.data.n);
  const again = numbers.filter((n) => n < 5);
  assert.deepEqual(numbers, [...again, ...range(7).map((n) => n + 5)]);
  assert.deepEqual(again, range(5).slice(5 - again.length));
  const window = 2;
  for (const event of replayed.filter((e) => e.data.n < 5)) assert.ok(event.ts >= position - window, JSON.stringify(event));
});

test("recovered false: a position the edge refuses, and an edge without history", async () => {
  const user = newUser();
  const future = Date.now() / 1000 + 3600;
  const w = userClient(url, user, { position: future });
  const recovery = within(new Promise((resolve) => w.onRecovery(resolve)), "the recovery answer");
  await within(w.ready(), "welcome");
  assert.deepEqual(await recovery, { recovered: false, reason: "invalid_position", oldest: null, since: future, replayed: null, inBand: false });
  assert.ok(w.position < future - 3000, "the edge's position replaces the refused one");
  const live = collect(w, "message", 1);
  await publish({ to: `user:${user}`, data: { n: 0 } });
  assert.equal((await live)[0].data.n, 0);

  const port = await harness.edge("no-history", { settings: { WARREN_HISTORY: "off" } });
  const off = userClient(`ws://127.0.0.1:${port}/ws`, user, { position: w.position });
  await within(off.ready(), "welcome");
  assert.equal(off.recovery.recovered, false);
  assert.equal(off.recovery.reason, "history_off");
  await assert.rejects(off.history(`user:${user}`), { code: "unavailable" });
  await harness.request("terminate", { name: "no-history" });
});

test("history() gives a key's newest events oldest first, and refuses a key the token does not hold", async () => {
  const user = newUser();
  const to = `user:${user}`;
  const w = userClient(url, user, { groups: [`h${user}`] });
  await within(w.ready(), "welcome");
  const published = [];
  for (let n = 0; n < 6; n++) published.push(await publish({ to, data: { n } }));
  const answer = await w.history(to, { limit: 4 });
  assert.equal(answer.key, to);
  assert.deepEqual(answer.events.map((event) => event.data.n), [2, 3, 4, 5]);
  assert.deepEqual(answer.events.map((event) => event.id), published.slice(2).map((p) => p.envelope_id));
  assert.equal(typeof answer.oldest, "number");
  assert.ok(answer.oldest <= published[0].ts);
  const since = await w.history(to, { since: published[4].ts });
  assert.deepEqual(since.events.map((event) => event.data.n), [4, 5]);
  assert.deepEqual((await w.history(`group:h${user}`)).events, []);
  for (const foreign of [`user:${newUser()}`, "group:not-mine"]) {
    await assert.rejects(w.history(foreign), { code: "forbidden" }, foreign);
  }
  await assert.rejects(w.history(to, { limit: 0 }), { code: "invalid_frame" });
  assert.equal(w.state, "open");
});
