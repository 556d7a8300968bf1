"""Progress at most a few times per second: one rule for the build child and the worker."""

from __future__ import annotations

import time
from collections.abc import Callable


class Throttle:
    """Lets an update through when ``interval`` seconds have passed since the last one it let
    through; the first update, and one marked ``final``, always pass."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: float | None = None

    def ready(self, *, final: bool = False) -> bool:
        now = self._clock()
        if not final and self._last is not None and now - self._last < self._interval:
            return False
        self._last = now
        return True
