// The client's pure rules: close codes, refusals, backoff, refresh timing, token claims.

import assert from "node:assert/strict";
import { test } from "node:test";
import { backoffDelay, closeAction, refreshDelay, refusalAction, tokenClaims } from "../warren.js";
import { fakeToken } from "./support.js";

test("close codes map to the documented actions", () => {
  const expected = {
    1000: "backoff", 1001: "now", 1006: "backoff", 1008: "stop", 1009: "backoff", 1011: "backoff",
    1013: "overloaded", 4001: "token", 4008: "backoff", 4029: "backoff", 4030: "backoff", 4999: "stop",
  };
  for (const [code, action] of Object.entries(expected)) {
    assert.equal(closeAction(Number(code)), action, `close ${code}`);
  }
  assert.equal(closeAction(1000, true), "stop");
});

test("upgrade refusals map to the documented actions", () => {
  assert.deepEqual(
    [401, 403, 426, 429, 500, 503].map(refusalAction),
    ["token", "stop", "stop", "stop", "backoff", "overloaded"],
  );
});

test("backoff is full jitter below a capped exponential", () => {
  assert.equal(backoffDelay(0, 500, 30_000, () => 1), 500);
  assert.equal(backoffDelay(3, 500, 30_000, () => 1), 4_000);
  assert.equal(backoffDelay(20, 500, 30_000, () => 1), 30_000);
  assert.equal(backoffDelay(5, 500, 30_000, () => 0), 0);
  assert.equal(backoffDelay(2, 500, 30_000, () => 0.5), 1_000);
});

test("refresh comes at 80 % or 60 s before exp, whichever is first, not before half", () => {
  assert.equal(refreshDelay(3_600_000), 2_880_000);
  assert.equal(refreshDelay(200_000), 140_000);
  assert.equal(refreshDelay(10_000), 5_000);
});

test("token claims are read without verification, and garbage gives null", () => {
  assert.deepEqual(tokenClaims(fakeToken({ sub: "alice", exp: 5 })), { sub: "alice", exp: 5 });
  for (const token of [null, "", "abc", "a.!!!.c", `a.${Buffer.from("[1]").toString("base64url")}.c`]) {
    assert.equal(tokenClaims(token), null, String(token));
  }
});
