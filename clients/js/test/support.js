// Helpers for the client's tests: the Python harness that runs real edges
// (tests/clients/js_harness.py), a fake edge on the ws package, and waits with deadlines.

import { spawn } from "node:child_process";
import { once } from "node:events";
import { createServer } from "node:http";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { WebSocketServer } from "ws";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const VENV_PYTHON = join(ROOT, ".venv", "bin", "python");
export const PYTHON = process.env.WARREN_PYTHON ?? (existsSync(VENV_PYTHON) ? VENV_PYTHON : "python3");
export const DEADLINE_MS = 30_000;

// Rejects if `promise` has not settled within `ms`: a guard against a hang, not a timing check.
export function within(promise, what, ms = DEADLINE_MS) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

// The next state change of `client` that `match` accepts (a state name or a predicate).
export function nextState(client, match, what = String(match)) {
  const accepts = typeof match === "function" ? match : (change) => change.state === match;
  return within(new Promise((resolve) => {
    const stop = client.onState((change) => {
      if (accepts(change)) {
        stop();
        resolve(change);
      }
    });
  }), `state ${what}`);
}

// Resolves with the first `count` envelopes of `type` ("*": any) that reach `client`.
export function collect(client, type, count) {
  const seen = [];
  return within(new Promise((resolve) => {
    const stop = client.on(type, (envelope) => {
      seen.push(envelope);
      if (seen.length === count) {
        stop();
        resolve(seen);
      }
    });
  }), `${count} ${type} events`);
}

// tests/clients/js_harness.py in a child process: edges, tokens and publishes on demand.
export async function startHarness() {
  const child = spawn(PYTHON, ["-m", "tests.clients.js_harness"], {
    cwd: ROOT,
    env: { ...process.env, PYTHONPATH: ROOT },
    stdio: ["pipe", "pipe", "pipe"],
  });
  const log = [];
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (text) => {
    log.push(text);
    if (log.length > 200) log.shift();
  });
  const waiting = new Map();
  let ready;
  const readyPromise = new Promise((resolve, reject) => {
    ready = resolve;
    child.once("exit", (code) => reject(new Error(`the harness exited (${code}):\n${log.join("")}`)));
  });
  createInterface({ input: child.stdout }).on("line", (line) => {
    const answer = JSON.parse(line);
    if (answer.ready) return ready();
    const waiter = waiting.get(answer.id);
    waiting.delete(answer.id);
    if (answer.error) waiter?.reject(new Error(`harness: ${answer.error}\n${log.join("").slice(-2000)}`));
    else waiter?.resolve(answer);
  });
  await within(readyPromise, "the harness", 60_000);
  let next = 1;
  return {
    request(op, fields = {}) {
      const id = next++;
      const answer = new Promise((resolve, reject) => waiting.set(id, { resolve, reject }));
      child.stdin.write(`${JSON.stringify({ id, op, ...fields })}\n`);
      return within(answer, `harness ${op}`, 60_000);
    },
    async token(user, fields = {}) {
      return (await this.request("token", { user, ...fields })).token;
    },
    async edge(name, fields = {}) {
      return (await this.request("edge", { name, ...fields })).port;
    },
    async close() {
      const exited = once(child, "exit");
      child.stdin.end();
      await within(exited, "the harness to exit", 60_000);
    },
  };
}

// A WebSocket server that plays the edge however a test wants: `onConnection(socket,
// request)` for each upgrade. It selects the warren.v1 subprotocol as the edge does.
export async function fakeEdge(onConnection) {
  const server = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    handleProtocols: (protocols) => (protocols.has("warren.v1") ? "warren.v1" : false),
  });
  await once(server, "listening");
  const requests = [];
  server.on("connection", (socket, request) => {
    requests.push(request);
    onConnection(socket, request);
  });
  return {
    url: `ws://127.0.0.1:${server.address().port}/ws`,
    requests,
    server,
    close: () => new Promise((resolve) => {
      for (const client of server.clients) client.terminate();
      server.close(resolve);
    }),
  };
}

export const WELCOME = JSON.stringify({
  type: "welcome", data: { user: "alice", groups: ["team"], roles: [], edge: "edge-fake" },
});

// An HTTP server that refuses every upgrade as `respond(request, response)` decides.
export async function refusingServer(respond) {
  const requests = [];
  const server = createServer((request, response) => {
    requests.push(request);
    respond(request, response);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `ws://127.0.0.1:${server.address().port}/ws`,
    requests,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(resolve);
    }),
  };
}

// A token-shaped string with these claims (the fake edges do not check signatures).
export function fakeToken(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}.c2ln`;
}
