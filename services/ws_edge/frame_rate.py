"""Flood protection for client frames: a token bucket per connection.

Each connection may send ``burst`` frames at once and ``per_second`` frames a second
after that. A frame beyond its allowance is answered with the error ``rate_limited``
and not handled, and it still counts: a client ``burst`` frames in debt is closed with
4030 (docs/protocol.md, sections 6.6 and 8). A client that slows down when told earns
its allowance back at ``per_second``.

The bucket is two floats on the socket (its allowance and when it last spent); this
module holds the arithmetic, so the hot path is one call and a comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import Env, env_float, env_int


class FramesThrottled(Exception):
    """A frame beyond the connection's allowance: refused without being read."""


@dataclass(frozen=True, slots=True)
class FrameRate:
    per_second: float  # 0: no limit
    burst: int

    @classmethod
    def from_env(cls, env: Env) -> FrameRate:
        return cls(
            per_second=env_float(env, "WARREN_EDGE_FRAME_RATE", 20.0),
            burst=env_int(env, "WARREN_EDGE_FRAME_BURST", 50, minimum=1),
        )

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def spend(self, allowance: float, elapsed_s: float) -> float:
        """The allowance left after one more frame, ``elapsed_s`` after the previous one.

        A full bucket holds ``burst``; the frame is allowed when the result is not
        negative."""
        return min(self.burst, allowance + elapsed_s * self.per_second) - 1.0

    def refusal(self) -> FramesThrottled:
        return FramesThrottled(
            f"more than {self.per_second:g} frames a second (bursts of {self.burst}); slow down"
        )

    def exhausted(self, allowance: float) -> bool:
        """Whether a connection this far in debt is closed (4030)."""
        return allowance <= -self.burst
