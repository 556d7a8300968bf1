"""Brute-force protection for ``POST /auth/login``, with the ``limits`` library.

Three moving windows, each configurable (docs/protocol.md):

- failed attempts for one user name from one address (a guesser at one account);
- failed attempts for one user name from anywhere (a guesser spread over addresses);
- all attempts from one address (a guesser trying many accounts).

A refused attempt never reaches the password check, so a flood costs no hashing. A
success clears that name's failures from that address. The counts live in this edge
process: with N edges an attacker gets N times the budget, which still ends guessing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from shared.config import ConfigError, Env, env_str


@dataclass(frozen=True, slots=True)
class LoginLimits:
    per_user_and_address: RateLimitItem
    per_user: RateLimitItem
    per_address: RateLimitItem

    @classmethod
    def from_env(cls, env: Env) -> LoginLimits:
        return cls(
            per_user_and_address=_rate(env, "WARREN_EDGE_LOGIN_FAILURES_PER_USER_ADDRESS", "5/minute"),
            per_user=_rate(env, "WARREN_EDGE_LOGIN_FAILURES_PER_USER", "50/hour"),
            per_address=_rate(env, "WARREN_EDGE_LOGIN_ATTEMPTS_PER_ADDRESS", "30/minute"),
        )


def _rate(env: Env, name: str, default: str) -> RateLimitItem:
    raw = env_str(env, name, default)
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a rate such as 5/minute, got {raw!r}") from exc


class LoginThrottled(Exception):
    """Too many attempts: refuse without checking the password."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many login attempts; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class LoginLimiter:
    def __init__(self, limits: LoginLimits) -> None:
        self._limits = limits
        self._windows = MovingWindowRateLimiter(MemoryStorage())

    def attempt(self, user: str, address: str) -> None:
        """Count an attempt; raise :class:`LoginThrottled` if a window is already full."""
        checks = (
            (self._limits.per_user_and_address, ("failed", user, address)),
            (self._limits.per_user, ("failed", user)),
        )
        for item, keys in checks:
            if not self._windows.test(item, *keys):
                raise LoginThrottled(self._retry_after(item, keys))
        address_keys = ("attempt", address)
        if not self._windows.hit(self._limits.per_address, *address_keys):
            raise LoginThrottled(self._retry_after(self._limits.per_address, address_keys))

    def failed(self, user: str, address: str) -> None:
        self._windows.hit(self._limits.per_user_and_address, "failed", user, address)
        self._windows.hit(self._limits.per_user, "failed", user)

    def succeeded(self, user: str, address: str) -> None:
        self._windows.clear(self._limits.per_user_and_address, "failed", user, address)

    def _retry_after(self, item: RateLimitItem, keys: tuple[str, ...]) -> int:
        reset = self._windows.get_window_stats(item, *keys).reset_time
        return max(1, round(reset - time.time()))
