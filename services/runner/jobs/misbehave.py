"""``misbehave``: a diagnostic job that never checks ``running()``.

It sleeps, spins or crashes, optionally ignoring SIGTERM, to show that Stop works on
jobs that do not cooperate.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from services.runner.jobs.base import Job, JobContext, Param


def misbehave(args: dict[str, Any], ctx: JobContext) -> None:
    if args["ignore_sigterm"]:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"misbehaving: {args['mode']} for {args['seconds']} s", flush=True)
    if args["mode"] == "sleep":
        time.sleep(args["seconds"])
    elif args["mode"] == "busy":
        end = time.monotonic() + args["seconds"]
        n = 0
        while time.monotonic() < end:
            n += 1
    else:
        raise RuntimeError("crashed on purpose")
    print("done")


JOB = Job(
    name="misbehave",
    description="Sleeps, busy-loops or crashes without ever checking for Stop.",
    run=misbehave,
    params={
        "mode": Param("str", "what to do", default="sleep", choices=("sleep", "busy", "crash")),
        "seconds": Param("float", "how long", default=30.0, minimum=0, maximum=3600),
        "ignore_sigterm": Param("bool", "ignore SIGTERM (Stop must then use SIGKILL)",
                                default=False),
    },
)
