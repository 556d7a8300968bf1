"""``http_probe``: an asyncio job making many concurrent requests to the configured endpoint.

The endpoint's base URL comes from the runner's settings (``WARREN_RUNNER_HTTP_JOB_URL``),
never from the user: a user picks only paths under it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from warren.jobs import ArgsError, Job, JobContext, Param


def check_paths(args: dict[str, Any]) -> None:
    for path in args["resources"]:
        if not path.startswith("/") or "://" in path or path.startswith("//") or len(path) > 200:
            raise ArgsError(f"resources must be paths starting with '/', got {path[:60]!r}")


async def http_probe(args: dict[str, Any], ctx: JobContext) -> None:
    base = ctx.http_base_url.rstrip("/")
    client = AsyncHTTPClient(max_clients=args["concurrency"])
    gate = asyncio.Semaphore(args["concurrency"])

    async def one(path: str) -> tuple[str, int | str, float]:
        async with gate:
            if not ctx.running():
                return path, "skipped", 0.0
            started = time.perf_counter()
            try:
                response = await client.fetch(
                    HTTPRequest(base + path, request_timeout=args["timeout_s"]), raise_error=False
                )
                outcome: int | str = response.code if response.code != 599 else "error"
            except (HTTPClientError, OSError) as exc:
                outcome = type(exc).__name__
            return path, outcome, time.perf_counter() - started

    print(f"probing {base} with {args['requests']} requests per resource, "
          f"{args['concurrency']} at a time")
    results = await asyncio.gather(
        *(one(path) for path in args["resources"] for _ in range(args["requests"]))
    )
    for path in args["resources"]:
        mine = [(o, t) for p, o, t in results if p == path]
        times = sorted(t for o, t in mine if o != "skipped")
        statuses = Counter(str(o) for o, _ in mine)
        ok = sum(1 for o, _ in mine if isinstance(o, int) and 200 <= o < 300)
        p50 = 1000 * times[len(times) // 2] if times else 0.0
        worst = 1000 * times[-1] if times else 0.0
        print(f"GET {path}: {len(mine)} requests, {ok} ok, statuses "
              f"{dict(sorted(statuses.items()))}, p50 {p50:.1f} ms, max {worst:.1f} ms")
    if not ctx.running():
        print("stopped early")
    client.close()


JOB = Job(
    name="http_probe",
    description="Makes concurrent GET requests to paths of the configured endpoint and "
                "prints a summary per resource.",
    run=http_probe,
    params={
        "resources": Param("str_list", "paths under the endpoint, e.g. ['/a', '/b']",
                           default=["/"], max_length=50),
        "requests": Param("int", "requests per resource", default=20, minimum=1, maximum=1000),
        "concurrency": Param("int", "requests in flight", default=10, minimum=1, maximum=100),
        "timeout_s": Param("float", "per-request timeout", default=5.0, minimum=0.1, maximum=60),
    },
    needs_http=True,
    check=check_paths,
)
