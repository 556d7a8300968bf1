// warren.d.ts against test/usage.ts: real use compiles, misuse marked @ts-expect-error fails.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
// The package's exports hide its bin; it is where npm installs it.
const tsc = join(here, "..", "node_modules", "typescript", "bin", "tsc");

test("the declarations type-check under strict TypeScript", () => {
  const result = spawnSync(process.execPath, [tsc, "-p", join(here, "tsconfig.json")], { encoding: "utf8" });
  assert.equal(result.status, 0, result.stdout + result.stderr);
});
