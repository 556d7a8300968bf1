// Events a second the client takes in: a ws server on a worker thread writes N event
// frames as fast as it can; the client (this thread) parses, de-duplicates and dispatches
// each to a listener. The events' ts advance as in a stream of 20,000 events a second, so
// the client remembers the ids of the last three seconds of them (60,000) for
// de-duplication, as it would at that rate. Run: node bench/throughput.mjs [events] [payload bytes]

import { once } from "node:events";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import WebSocket, { WebSocketServer } from "ws";
import { Warren } from "../warren.js";

const total = Number(process.argv[2] ?? 200_000);
const payload = Number(process.argv[3] ?? 100);
const STREAM_RATE = 20_000;

if (isMainThread) {
  const worker = new Worker(new URL(import.meta.url), { workerData: { total, payload } });
  const [port] = await once(worker, "message");
  let received = 0;
  let started = 0;
  const done = new Promise((resolve) => {
    const w = new Warren(`ws://127.0.0.1:${port}/ws`, { WebSocket, getToken: () => "a.e30.c", refresh: false });
    w.onWelcome(() => { started = performance.now(); });
    w.on("chat.token", () => {
      if (++received === total) {
        resolve(performance.now() - started);
        w.close();
      }
    });
  });
  const ms = await done;
  await worker.terminate();
  console.log(JSON.stringify({ events: total, payload_bytes: payload, seconds: +(ms / 1000).toFixed(3), events_per_s: Math.round(total / (ms / 1000)) }));
} else {
  const server = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: () => "warren.v1" });
  await once(server, "listening");
  server.on("connection", async (socket) => {
    socket.send(JSON.stringify({ type: "welcome", data: { user: "bench", groups: [], roles: [], edge: "bench" } }));
    const text = "x".repeat(workerData.payload);
    const start = Date.now() / 1000;
    for (let i = 0; i < workerData.total; i++) {
      const ts = start + i / STREAM_RATE;
      socket.send(`{"v":1,"id":"${i.toString(16).padStart(32, "0")}","type":"chat.token","ts":${ts},"to":"user:bench","from":"service:cat_relay","data":{"ask_id":"a","seq":${i},"text":"${text}"}}`);
      // Let the socket drain now and then rather than buffering every frame at once.
      if (socket.bufferedAmount > 4_000_000) await new Promise((resolve) => setImmediate(resolve));
    }
  });
  parentPort.postMessage(server.address().port);
}
