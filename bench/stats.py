"""A latency histogram with log-spaced bins: cheap to fill, exact to merge across processes."""

from __future__ import annotations

import math
from typing import Final

MIN_SECONDS: Final = 1e-5  # bin 0 holds everything at or below 10 µs
GROWTH: Final = 1.02  # each bin is 2 % wider than the last: percentiles within 2 %
BINS: Final = 820  # 10 µs * 1.02**820 > 100 s
_SCALE: Final = 1.0 / math.log(GROWTH)


def bin_of(seconds: float) -> int:
    if seconds <= MIN_SECONDS:
        return 0
    return min(BINS - 1, 1 + int(math.log(seconds / MIN_SECONDS) * _SCALE))


def bin_value(index: int) -> float:
    """A representative latency for a bin: its geometric middle."""
    if index == 0:
        return MIN_SECONDS
    return float(MIN_SECONDS * GROWTH ** (index - 0.5))


class Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * BINS
        self.total = 0

    def add(self, seconds: float) -> None:
        self.counts[bin_of(seconds)] += 1
        self.total += 1

    def to_sparse(self) -> dict[str, int]:
        """A JSON-friendly form: only the non-empty bins."""
        return {str(i): c for i, c in enumerate(self.counts) if c}

    def merge_sparse(self, sparse: dict[str, int]) -> None:
        for index, count in sparse.items():
            self.counts[int(index)] += count
            self.total += count

    def percentile(self, q: float) -> float | None:
        """The latency in seconds below which a fraction ``q`` of the samples fall."""
        if self.total == 0:
            return None
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return bin_value(index)
        return bin_value(BINS - 1)
