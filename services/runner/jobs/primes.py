"""``primes``: a CPU-bound job that counts primes and reports its progress."""

from __future__ import annotations

import math
from typing import Any

from warren.jobs import Job, JobContext, Param


def primes(args: dict[str, Any], ctx: JobContext) -> None:
    limit: int = args["limit"]
    steps: int = args["progress_steps"]
    found: list[int] = []
    count = 0
    largest = 0
    chunk = max(1, limit // steps)
    low = 2
    while low < limit:
        if not ctx.running():
            print(f"stopped below {low}: {count} primes so far")
            return
        high = min(limit, low + chunk)
        for n in range(low, high):
            root = math.isqrt(n)
            prime = True
            for p in found:
                if p > root:
                    break
                if n % p == 0:
                    prime = False
                    break
            if prime:
                count += 1
                largest = n
                if n <= math.isqrt(limit):
                    found.append(n)
        low = high
        print(f"progress {100 * (low - 2) // max(1, limit - 2)}%: {count} primes below {low}")
    print(f"{count} primes below {limit}; the largest is {largest}")


JOB = Job(
    name="primes",
    description="Counts the primes below limit by trial division, printing progress.",
    run=primes,
    params={
        "limit": Param("int", "count primes below this", default=200_000, minimum=3,
                       maximum=100_000_000),
        "progress_steps": Param("int", "progress lines to print", default=10, minimum=1,
                                maximum=1000),
    },
)
