"""``countdown``: one line per tick; a cooperative job that ends cleanly on Stop."""

from __future__ import annotations

from typing import Any

from warren.jobs import Job, JobContext, Param


def countdown(args: dict[str, Any], ctx: JobContext) -> None:
    start: int = args["start"]
    for n in range(start, 0, -1):
        if not ctx.running():
            print(f"stopped at {n}")
            return
        print(n)
        if args["interval_s"] and not ctx.wait(args["interval_s"]):
            print(f"stopped at {n - 1}")
            return
    print("liftoff")


JOB = Job(
    name="countdown",
    description="Counts down from start to 1, one line per tick, then prints 'liftoff'.",
    run=countdown,
    params={
        "start": Param("int", "the first number", default=10, minimum=1, maximum=10_000_000),
        "interval_s": Param("float", "seconds between ticks", default=1.0, minimum=0, maximum=60),
    },
)
