// Positions, recovery and history (protocol.md 17) against a ws server playing the edge:
// what the client sends (`?since=`, history frames) and what it makes of each answer.

import assert from "node:assert/strict";
import { after, test } from "node:test";
import WebSocket from "ws";
import { Warren } from "../warren.js";
import { collect, fakeEdge, fakeToken, nextState, within } from "./support.js";

const clients = [];
after(() => { for (const client of clients) client.close(); });

function client(url, options = {}) {
  const token = fakeToken({ sub: "alice", exp: Math.floor(Date.now() / 1000) + 3600 });
  const w = new Warren(url, { WebSocket, getToken: () => token, random: () => 0, backoff: { baseMs: 1 }, ...options });
  clients.push(w);
  return w;
}

const IDENTITY = { user: "alice", groups: ["team"], roles: [], edge: "edge-fake" };
const welcome = (fields = {}) => JSON.stringify({ type: "welcome", data: { ...IDENTITY, window: 2, ...fields } });
const replayDone = (events, position) => JSON.stringify({ type: "replay.done", data: { events, position } });
const event = (id, ts, to = "user:alice") =>
  JSON.stringify({ v: 1, id, type: "message", ts, to, from: "service:test", data: { id } });

// The `since` of each upgrade the fake edge saw, null where there was none.
function sinces(edge) {
  return edge.requests.map((request) => new URL(request.url, "ws://x").searchParams.get("since"));
}

test("the position follows events and the edge's positions; a reconnect sends it as ?since=", async () => {
  let n = 0;
  const edge = await fakeEdge((socket) => {
    if (++n === 1) {
      socket.send(welcome({ position: 1000.25 }));
      socket.send(event("a", 1001));
      socket.send(event("b", 1002.5));
      socket.once("message", () => socket.terminate());  // the test's cue: drop the connection
    } else {
      socket.send(welcome({ position: 1010, recovered: true }));
      socket.send(event("b", 1002.5));  // within the window: sent again, dropped
      socket.send(event("c", 1003));
      socket.send(replayDone(2, 1009.75));
      socket.send(event("d", 1009.9));
    }
  });
  try {
    const w = client(edge.url);
    assert.equal(w.position, null);
    const states = [];
    w.onState((change) => states.push(change));
    const first = collect(w, "*", 2);
    await within(w.ready(), "open");
    assert.equal(w.recovery.recovered, null, "no position was sent");
    await first;
    assert.equal(w.position, 1002.5);
    const rest = collect(w, "*", 2);
    w.send("message.send", { to: "user:alice" }).catch(() => {});
    const [c, d] = await rest;
    assert.deepEqual([c.id, d.id], ["c", "d"]);
    assert.deepEqual(sinces(edge), [null, "1002.5"]);
    assert.equal(w.position, 1009.9);
    const after = states.slice(states.findIndex((change) => change.state === "reconnecting"));
    assert.deepEqual(after.map((change) => change.state), ["reconnecting", "recovering", "open"]);
    assert.equal(after[1].since, 1002.5);
    assert.equal(after[1].recovered, true);
    assert.equal(after[2].replayed, 2);
    assert.deepEqual(w.recovery, { recovered: true, reason: null, oldest: null, since: 1002.5, replayed: 2, inBand: false });
    assert.deepEqual(w.stats, { events: 4, duplicates: 1, garbage: 0, reconnects: 1, replayed: 1 });
  } finally {
    await edge.close();
  }
});

test("replay.done's position counts once the replay is done: a quiet user's position moves on", async () => {
  const edge = await fakeEdge((socket) => {
    socket.send(welcome({ position: 2000, recovered: true }));
    socket.send(replayDone(0, 2000.5));
  });
  try {
    const w = client(edge.url, { position: 1500 });
    await within(w.ready(), "open");
    assert.equal(w.position, 2000.5, "not the welcome's position: that one comes before the replay");
    assert.deepEqual(sinces(edge), ["1500"]);
  } finally {
    await edge.close();
  }
});

test("ready() waits for replay.done, and requests can be sent while recovering", async () => {
  let socket;
  const edge = await fakeEdge((s) => {
    socket = s;
    s.send(welcome({ position: 3000, recovered: true }));
    s.on("message", (text) => {
      const frame = JSON.parse(text);
      s.send(JSON.stringify({ type: "ack", ref: frame.ref, data: { key: frame.data.key, events: [], oldest: null } }));
    });
  });
  try {
    const w = client(edge.url, { position: 2999 });
    await nextState(w, "recovering");
    let ready = false;
    const opened = w.ready().then(() => { ready = true; });
    const answer = await within(w.history("user:alice"), "history while recovering");
    assert.deepEqual(answer, { key: "user:alice", events: [], oldest: null });
    assert.equal(ready, false);
    assert.equal(w.state, "recovering");
    socket.send(replayDone(0, 3000));
    await within(opened, "open after replay.done");
  } finally {
    await edge.close();
  }
});

test("a drop during the replay: the next attempt starts after the last event replayed", async () => {
  let n = 0;
  const edge = await fakeEdge((socket) => {
    if (++n === 1) {
      socket.send(welcome({ position: 4000, recovered: true }));
      socket.send(event("r1", 3990));
      socket.send(event("r2", 3991), () => socket.terminate());
    } else {
      socket.send(welcome({ position: 4001, recovered: true }));
      socket.send(event("r2", 3991));
      socket.send(event("r3", 3992));
      socket.send(replayDone(2, 4001));
    }
  });
  try {
    const w = client(edge.url, { position: 3989 });
    const seen = collect(w, "*", 3);
    assert.deepEqual((await seen).map((e) => e.id), ["r1", "r2", "r3"]);
    await within(w.ready(), "open");
    assert.deepEqual(sinces(edge), ["3989", "3991"]);
    assert.equal(w.stats.duplicates, 1);
  } finally {
    await edge.close();
  }
});

test("recovered: false says why; the edge's position is taken and nothing is replayed", async () => {
  const answers = [
    [{ recovered: false, reason: "too_old", oldest: 4500, position: 5000 }, { reason: "too_old", oldest: 4500, position: 5000 }],
    [{ recovered: false, reason: "invalid_position", position: 5001 }, { reason: "invalid_position", oldest: null, position: 5001 }],
    [{ recovered: false, reason: "history_off", position: 5002 }, { reason: "history_off", oldest: null, position: 5002 }],
    // An edge that knows nothing of positions: no `recovered`, no `position`.
    [{}, { reason: "unsupported", oldest: null, position: 100 }],
  ];
  for (const [fields, expected] of answers) {
    const edge = await fakeEdge((socket) => socket.send(welcome(fields)));
    try {
      const w = client(edge.url, { position: 100 });
      const recoveries = [];
      w.onRecovery((recovery) => recoveries.push(recovery));
      const states = [];
      w.onState((change) => states.push(change));
      await within(w.ready(), "open");
      assert.deepEqual(states.map((change) => [change.state, change.recovered]), [["open", false]]);
      assert.deepEqual(recoveries, [{ recovered: false, reason: expected.reason, oldest: expected.oldest, since: 100, replayed: null, inBand: false }]);
      assert.equal(w.position, expected.position);
      w.close();
    } finally {
      await edge.close();
    }
  }
});

test("a position option that is no position is refused", () => {
  for (const position of ["1796000000", -1, NaN, Infinity, {}]) {
    assert.throws(() => new Warren("ws://127.0.0.1:9/ws", { WebSocket, getToken: () => "t", position }), TypeError, String(position));
  }
});

test("position listeners: at once for the edge's positions, at most once an interval for events, and on close", async () => {
  const edge = await fakeEdge((socket) => {
    socket.send(welcome({ position: 6000 }));
    for (let i = 1; i <= 1000; i++) socket.send(event(`p${i}`, 6000 + i / 1000));
  });
  try {
    const w = client(edge.url, { positionIntervalMs: 60_000 });
    const heard = [];
    w.onPosition((position) => heard.push(position));
    await collect(w, "*", 1000);
    assert.deepEqual(heard, [6000], "the events' positions wait for the interval");
    w.close();
    assert.deepEqual(heard, [6000, 6001]);
  } finally {
    await edge.close();
  }
});

test("de-duplication forgets ids the window no longer covers, keeps dedupSize, never more than dedupLimit", async () => {
  let socket;
  const edge = await fakeEdge((s) => {
    socket = s;
    s.send(welcome({ position: 7000, window: 2 }));
  });
  try {
    const w = client(edge.url, { dedupSize: 4, dedupLimit: 10 });
    await within(w.ready(), "open");
    const received = [];
    w.on("*", (envelope) => received.push(envelope.id));
    const send = async (frames, count) => {
      const got = collect(w, "*", count);
      for (const frame of frames) socket.send(frame);
      await got;
    };
    // Old ids (more than window + 1 s before the position the last event sets) go, the
    // newest four stay whatever their age.
    await send([0, 1, 2, 3, 4, 5].map((i) => event(`old${i}`, 7000 + i)).concat(event("new", 7100)), 7);
    await send([event("old0", 7000), event("old5", 7005), event("new", 7100), event("end", 7101)], 2);
    assert.deepEqual(received.slice(7), ["old0", "end"], "old0 forgotten; old5 and new remembered");
    // Within the window, ids stay up to the limit; beyond it the oldest go.
    received.length = 0;
    await send(Array.from({ length: 12 }, (_, i) => event(`w${i}`, 7101)), 12);
    await send([event("w2", 7101), event("w11", 7101), event("w1", 7101), event("last", 7101)], 2);
    assert.deepEqual(received.slice(12), ["w1", "last"], "w0 and w1 forgotten; w2 to w11 remembered");
  } finally {
    await edge.close();
  }
});

test("history() sends a history frame and rejects with the edge's code", async () => {
  const frames = [];
  const edge = await fakeEdge((socket) => {
    socket.send(welcome({ position: 8000 }));
    socket.on("message", (text) => {
      const frame = JSON.parse(text);
      frames.push(frame);
      if (frame.data.key === "user:alice") {
        const events = [JSON.parse(event("h1", 7990)), JSON.parse(event("h2", 7995))];
        socket.send(JSON.stringify({ type: "ack", ref: frame.ref, data: { key: "user:alice", events, oldest: 7000 } }));
      } else {
        socket.send(JSON.stringify({ type: "error", ref: frame.ref, data: { code: "forbidden", message: "not your key" } }));
      }
    });
  });
  try {
    const w = client(edge.url);
    await within(w.ready(), "open");
    const answer = await w.history("user:alice", { limit: 2, since: 7980.5 });
    assert.deepEqual(answer.events.map((e) => e.id), ["h1", "h2"]);
    assert.equal(answer.oldest, 7000);
    await assert.rejects(w.history("user:bob"), (error) => error.code === "forbidden" && error.message === "not your key");
    assert.deepEqual(frames.map((frame) => [frame.type, frame.data]), [
      ["history", { key: "user:alice", limit: 2, since: 7980.5 }],
      ["history", { key: "user:bob" }],
    ]);
    assert.equal(w.stats.events, 0, "history's events are answers, not deliveries");
  } finally {
    await edge.close();
  }
});

// The in-band form (protocol.md 17.5): after the edge's broker connection came back.
const inBandDone = (fields) => JSON.stringify({ type: "replay.done", data: fields });

test("an in-band replay on the open socket: repeats dropped, in order, the edge's position, recovery reported, still open", async () => {
  const edge = await fakeEdge((socket) => {
    socket.send(welcome({ position: 1000 }));
    socket.send(event("a", 1001));
    socket.send(event("b", 1002));
    // The broker connection broke and came back: the replay from its `since` - window.
    socket.send(event("b", 1002));
    socket.send(event("c", 1003, "group:team"));
    socket.send(event("d", 1004, "broadcast"));
    socket.send(inBandDone({ events: 3, position: 1010, since: 1002.5, recovered: true }));
    socket.send(event("e", 1010.5));
  });
  try {
    const w = client(edge.url);
    const recoveries = [];
    w.onRecovery((recovery) => recoveries.push(recovery));
    const positions = [];
    w.onPosition((position) => positions.push(position));
    const states = [];
    w.onState((change) => states.push(change.state));
    const errors = [];
    w.onError((error) => errors.push(error.code));
    const seen = await collect(w, "*", 5);
    assert.deepEqual(seen.map((e) => e.id), ["a", "b", "c", "d", "e"]);
    assert.deepEqual(states, ["open"]);
    assert.deepEqual(recoveries, [
      { recovered: null, reason: null, oldest: null, since: null, replayed: null, inBand: false },
      { recovered: true, reason: null, oldest: null, since: 1002.5, replayed: 3, inBand: true },
    ]);
    assert.deepEqual(w.recovery, recoveries[1]);
    assert.ok(positions.includes(1010), `replay.done's position is told at once: ${positions}`);
    assert.equal(w.position, 1010.5);
    assert.deepEqual(errors, []);
    assert.deepEqual(w.stats, { events: 5, duplicates: 1, garbage: 0, reconnects: 0, replayed: 0 });
  } finally {
    await edge.close();
  }
});

test("an in-band recovered: false reaches onRecovery with the edge's reason; the position is the edge's", async () => {
  const answers = [
    { recovered: false, reason: "too_old", oldest: 1500, expected: 1500 },
    { recovered: false, reason: "history_off", oldest: null, expected: null },
  ];
  for (const { expected, ...fields } of answers) {
    const edge = await fakeEdge((socket) => {
      socket.send(welcome({ position: 2000 }));
      socket.send(event("x", 2001));
      socket.send(inBandDone({ events: 0, position: 2050, since: 2001, ...fields }));
      socket.send(event("y", 2050.5));
    });
    try {
      const w = client(edge.url);
      const told = new Promise((resolve) => w.onRecovery((recovery) => { if (recovery.inBand) resolve(recovery); }));
      const positions = [];
      w.onPosition((position) => positions.push(position));
      await collect(w, "*", 2);
      assert.deepEqual(await within(told, "the in-band recovery"),
        { recovered: false, reason: fields.reason, oldest: expected, since: 2001, replayed: 0, inBand: true });
      assert.equal(w.state, "open");
      assert.ok(positions.includes(2050), `${positions}`);
      assert.equal(w.position, 2050.5);
      w.close();
    } finally {
      await edge.close();
    }
  }
});

test("a replay.done without a replay is reported, not taken", async () => {
  const edge = await fakeEdge((socket) => {
    socket.send(welcome({ position: 9000 }));
    socket.send(replayDone(5, 9999));
    socket.send(event("x", 9000.5));
  });
  try {
    const w = client(edge.url);
    const errors = [];
    w.onError((error) => errors.push(error.code));
    await collect(w, "*", 1);
    assert.deepEqual(errors, ["unknown_frame"]);
    assert.equal(w.position, 9000.5);
  } finally {
    await edge.close();
  }
});
