"""The JavaScript client's own suite (clients/js/test, Node's test runner) as one pytest
test, so that .ci/run counts it. scripts/test installs Node and the client's
development packages (scripts/lib.sh, ensure_js_client)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "js"
TIMEOUT_S = 600


def test_js_client_suite() -> None:
    node = shutil.which("node")
    if node is None or not (CLIENT / "node_modules" / "ws").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node or the client's packages are missing: scripts/test installs them")
        pytest.skip("no node, or no clients/js/node_modules (scripts/test runs npm ci there)")
    files = sorted(str(path) for path in (CLIENT / "test").glob("*.test.js"))
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", *files],
        cwd=CLIENT,
        env={**os.environ, "WARREN_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    counts = dict(re.findall(r"^# (pass|fail|cancelled) (\d+)$", output, re.MULTILINE))
    assert result.returncode == 0 and counts.get("fail") == "0", output[-20000:]
    assert int(counts.get("pass", "0")) > 0, output[-20000:]
