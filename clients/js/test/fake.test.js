// The client against servers that misbehave on purpose: a ws server playing the edge
// (garbage frames, each close code, silence) and an HTTP server refusing the upgrade.

import assert from "node:assert/strict";
import { after, test } from "node:test";
import WebSocket from "ws";
import { Warren, WarrenError } from "../warren.js";
import { WELCOME, collect, fakeEdge, fakeToken, nextState, refusingServer, within } from "./support.js";

const clients = [];
after(() => { for (const client of clients) client.close(); });

function client(url, options = {}) {
  const token = fakeToken({ sub: "alice", exp: Math.floor(Date.now() / 1000) + 3600 });
  const w = new Warren(url, { WebSocket, getToken: () => token, random: () => 0.5, ...options });
  clients.push(w);
  return w;
}

const envelope = (id, type = "message", data = {}) =>
  JSON.stringify({ v: 1, id, type, ts: 1, to: "user:alice", from: "service:test", data });

test("the token travels in a subprotocol, never in the URL; ?token= on request", async () => {
  const edge = await fakeEdge((socket) => socket.send(WELCOME));
  try {
    const w = client(edge.url, { getToken: () => "a.b.c" });
    assert.equal((await within(w.ready(), "open")).user, "alice");
    const request = edge.requests[0];
    assert.equal(request.headers["sec-websocket-protocol"], "warren.v1,warren.auth.a.b.c");
    assert.equal(request.url, "/ws");
    w.close();
    const old = client(edge.url, { getToken: () => "a.b.c", auth: "query" });
    await within(old.ready(), "open");
    assert.equal(edge.requests[1].url, "/ws?token=a.b.c");
    assert.equal(edge.requests[1].headers["sec-websocket-protocol"], undefined);
  } finally {
    await edge.close();
  }
});

test("garbage frames are reported and counted; the socket and later events go on", async () => {
  const garbage = [
    "not json", "[1, 2]", "42", '{"type": "surprise"}', '{"v": 1, "id": "x"}',
    '{"v": 1, "id": "", "type": "message", "ts": 1, "to": "user:alice", "from": "service:x", "data": {}}',
    '{"type": "error", "ref": null, "data": {"code": "invalid_json", "message": "?"}}',
    '{"type": "welcome", "data": {}}', Buffer.from("binary"),
  ];
  const edge = await fakeEdge((socket) => {
    socket.send(WELCOME);
    for (const frame of garbage) socket.send(frame, { binary: Buffer.isBuffer(frame) });
    socket.send(envelope("good"));
  });
  try {
    const w = client(edge.url);
    const errors = [];
    w.onError((error) => errors.push(error));
    const [event] = await collect(w, "message", 1);
    assert.equal(event.id, "good");
    assert.equal(w.state, "open");
    assert.equal(w.stats.garbage, garbage.length);
    assert.deepEqual(errors.map((error) => error.code), [
      "invalid_json", "invalid_frame", "invalid_frame", "unknown_frame", "invalid_envelope",
      "invalid_envelope", "unmatched_reply", "unknown_frame", "binary_frame",
    ]);
    assert.ok(errors.every((error) => error instanceof WarrenError));
  } finally {
    await edge.close();
  }
});

test("events are dispatched by type and to '*', once per envelope id", async () => {
  const edge = await fakeEdge((socket) => {
    socket.send(WELCOME);
    for (const frame of [envelope("1", "chat.token"), envelope("2", "run.output"), envelope("1", "chat.token"),
      envelope("3", "chat.token"), envelope("2", "run.output")]) socket.send(frame);
  });
  try {
    const w = client(edge.url);
    const tokens = [];
    w.on("chat.token", (event) => tokens.push(event.id));
    const all = await collect(w, "*", 3);
    assert.deepEqual(all.map((event) => event.id), ["1", "2", "3"]);
    assert.deepEqual(tokens, ["1", "3"]);
    assert.equal(w.lastEventId, "3");
    await within(new Promise((resolve) => { const poll = () => (w.stats.duplicates === 2 ? resolve() : setImmediate(poll)); poll(); }), "duplicates");
    assert.deepEqual(w.stats, { events: 3, duplicates: 2, garbage: 0, reconnects: 0, replayed: 0 });
  } finally {
    await edge.close();
  }
});

test("a listener that throws is reported and the others still run", async () => {
  const edge = await fakeEdge((socket) => { socket.send(WELCOME); socket.send(envelope("1")); });
  try {
    const w = client(edge.url);
    const errors = [];
    w.onError((error) => errors.push(error));
    w.on("message", () => { throw new Error("boom"); });
    await collect(w, "message", 1);
    assert.equal(errors[0].code, "listener_failed");
    assert.equal(errors[0].cause.message, "boom");
  } finally {
    await edge.close();
  }
});

test("send resolves on ack, rejects with the edge's code, and unanswered sends fail honestly", async () => {
  let socket;
  const edge = await fakeEdge((s) => {
    socket = s;
    s.send(WELCOME);
    s.on("message", (text) => {
      const frame = JSON.parse(text);
      if (frame.type === "message.send") s.send(JSON.stringify({ type: "ack", ref: frame.ref, data: { id: "e1" } }));
      else if (frame.type === "run.start") s.send(JSON.stringify({ type: "error", ref: frame.ref, data: { code: "no_service", message: "none" } }));
      // chat.ask: never answered
    });
  });
  try {
    const w = client(edge.url, { requestTimeoutMs: 200, maxFrameBytes: 1024 });
    await assert.rejects(w.send("message.send", { to: "user:bob", data: {} }), { code: "not_connected" });
    await within(w.ready(), "open");
    assert.deepEqual(await w.send("message.send", { to: "user:bob", data: { text: "hi" } }), { id: "e1" });
    await assert.rejects(w.command("run.start", { job: "x" }), (error) => error.code === "no_service" && error.message === "none");
    await assert.rejects(w.command("chat.ask", { text: "x".repeat(2000) }), { code: "frame_too_big" });
    await assert.rejects(w.command("chat.ask", { big: 1n }), { code: "invalid_frame" });
    await assert.rejects(w.command("chat.ask", { text: "?" }), { code: "timeout" });
    const pending = w.command("chat.ask", { text: "?" });
    socket.close(4008, "client too slow: outbound buffer full");
    await assert.rejects(pending, (error) => error.code === "disconnected" && error.closeCode === 4008);
  } finally {
    await edge.close();
  }
});

test("each close code leads to its documented action", async () => {
  const cases = [
    [1000, "reconnecting", (c) => c.delayMs === 500 * 0.5],
    [1001, "reconnecting", (c) => c.delayMs === 500 * 0.5],
    [1008, "failed"],
    [1009, "reconnecting", (c) => c.delayMs === 250],
    [1011, "reconnecting", (c) => c.delayMs === 250],
    [1013, "reconnecting", (c) => c.delayMs === 2_500],
    [4008, "reconnecting", (c) => c.delayMs === 250],
    [4029, "reconnecting", (c) => c.delayMs === 250],
    [4030, "reconnecting", (c) => c.delayMs === 250],
    [4400, "failed"],
  ];
  for (const [code, state, check = () => true] of cases) {
    const edge = await fakeEdge((socket) => { socket.send(WELCOME); socket.close(code, "bye"); });
    try {
      const w = client(edge.url, { backoff: { baseMs: 500, overloadedBaseMs: 5_000, retryAfterMs: 1_000 } });
      const change = await nextState(w, (c) => c.previous === "open", `after ${code}`);
      assert.equal(change.state, state, `close ${code}`);
      assert.equal(change.code, code);
      assert.equal(change.reason, "bye");
      assert.ok(check(change), `close ${code}: ${JSON.stringify(change)}`);
      w.close();
    } finally {
      await edge.close();
    }
  }
});

test("4001: getToken gives a new token and the client reconnects; the same token stops it", async () => {
  let connections = 0;
  const edge = await fakeEdge((socket) => {
    connections++;
    socket.send(WELCOME);
    socket.close(4001, "token expired");
  });
  try {
    const tokens = ["t1.e30.s", "t2.e30.s", "t2.e30.s"];
    const reasons = [];
    const w = client(edge.url, { getToken: ({ reason }) => { reasons.push(reason); return tokens.shift(); } });
    const stopped = await nextState(w, "unauthorized");
    assert.equal(connections, 2);
    assert.deepEqual(reasons, ["connect", "expired", "expired"]);
    assert.match(stopped.reason, /no new token/);
    await assert.rejects(w.ready(), { code: "unauthorized" });
  } finally {
    await edge.close();
  }
});

test("503 overloaded: the client waits at least Retry-After; 429 and 403 stop it", async () => {
  const refusals = [[503, "overloaded", { "Retry-After": "3" }], [429, "too_many_sockets", {}], [403, "origin_forbidden", {}]];
  for (const [status, error, headers] of refusals) {
    const server = await refusingServer((_request, response) => {
      response.writeHead(status, { "Content-Type": "application/json", ...headers });
      response.end(JSON.stringify({ error, message: `refused: ${error}` }));
    });
    try {
      const w = client(server.url, { random: () => 0 });
      const change = await nextState(w, (c) => c.state !== "connecting", `after ${status}`);
      assert.equal(change.status, status);
      assert.equal(change.error, error);
      if (status === 503) {
        assert.equal(change.state, "reconnecting");
        assert.equal(change.delayMs, 3_000);
      } else {
        assert.equal(change.state, "failed");
        assert.match(change.reason, new RegExp(`HTTP ${status} ${error}: refused`));
      }
      w.close();
    } finally {
      await server.close();
    }
  }
});

test("401: one new token from getToken, then unauthorized if that is refused too", async () => {
  const server = await refusingServer((_request, response) => {
    response.writeHead(401, { "Content-Type": "application/json" });
    response.end(JSON.stringify({ error: "token_invalid", message: "bad signature" }));
  });
  try {
    let issued = 0;
    const w = client(server.url, { getToken: () => `t${++issued}.e30.s` });
    const stopped = await nextState(w, "unauthorized");
    assert.equal(issued, 2);
    assert.equal(server.requests.length, 2);
    assert.match(stopped.reason, /token_invalid/);
  } finally {
    await server.close();
  }
});

test("a failed getToken stops the client as unauthorized", async () => {
  const w = client("ws://127.0.0.1:9/ws", { getToken: () => Promise.reject(new Error("login down")) });
  const change = await nextState(w, "unauthorized");
  assert.match(change.reason, /login down/);
});

test("no welcome in time: the attempt is dropped and retried with backoff", async () => {
  const edge = await fakeEdge(() => {});
  try {
    const w = client(edge.url, { connectTimeoutMs: 100 });
    const change = await nextState(w, "reconnecting");
    assert.equal(change.reason, "no welcome in time");
  } finally {
    await edge.close();
  }
});

test("maxAttempts: the client gives up after that many failed attempts in a row", async () => {
  const w = client("ws://127.0.0.1:9/ws", { maxAttempts: 2, backoff: { baseMs: 1, capMs: 1 } });
  const change = await nextState(w, "failed");
  assert.match(change.reason, /gave up after 2 failed attempts/);
});

test("a drain (1001) is not a failed attempt: it never uses up maxAttempts", async () => {
  let connections = 0;
  // Draining edges that close every socket with 1001 before its welcome.
  const edge = await fakeEdge((socket) => { connections++; socket.close(1001, "server shutting down"); });
  try {
    const w = client(edge.url, { maxAttempts: 1, backoff: { baseMs: 1, capMs: 1 } });
    const seen = [];
    w.onState((change) => seen.push(change.state));
    const deadline = Date.now() + 5_000;
    while (connections < 4 && !seen.includes("failed") && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    assert.ok(connections >= 4 && !seen.includes("failed"), JSON.stringify({ connections, seen }));
    w.close();
  } finally {
    await edge.close();
  }
});

test("close() stops for good, rejects pending sends, and connect() starts again", async () => {
  const edge = await fakeEdge((socket) => socket.send(WELCOME));
  try {
    const w = client(edge.url);
    await within(w.ready(), "open");
    const pending = w.command("chat.ask", { text: "?" });
    w.close();
    await assert.rejects(pending, { code: "disconnected" });
    assert.equal(w.state, "closed");
    w.connect();
    await within(w.ready(), "open again");
    assert.equal(edge.requests.length, 2);
  } finally {
    await edge.close();
  }
});
