"""``misbehave``: a diagnostic job that never checks ``running()``.

It sleeps, spins, crashes or leaves a process behind, optionally ignoring SIGTERM, to
show that Stop and the end of a run work on jobs that do not cooperate.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

from warren.jobs import Job, JobContext, Param


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
    elif args["mode"] == "orphan":
        sleeper = f"import time; time.sleep({args['seconds']})"
        left = subprocess.Popen([sys.executable, "-c", sleeper])
        print(f"left process {left.pid} behind", flush=True)
        return
    else:
        raise RuntimeError("crashed on purpose")
    print("done")


JOB = Job(
    name="misbehave",
    description="Sleeps, busy-loops, crashes or leaves a process behind, never checking "
                "for Stop.",
    run=misbehave,
    params={
        "mode": Param("str", "what to do", default="sleep",
                      choices=("sleep", "busy", "crash", "orphan")),
        "seconds": Param("float", "how long", default=30.0, minimum=0, maximum=3600),
        "ignore_sigterm": Param("bool", "ignore SIGTERM (Stop must then use SIGKILL)",
                                default=False),
    },
)
