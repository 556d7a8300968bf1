"""Brute-force protection for ``POST /auth/login``, with the ``limits`` library.

Three moving windows, each configurable (docs/protocol.md 5.2):

- failed attempts at one user name from one address: what stops a guesser at one account.
  Only failures from that address fill it, so nobody elsewhere can lock the user out of
  the address they use;
- failed attempts at one user name from any address: a short ceiling on guessing spread
  over many addresses. It does not apply to an address the user signed in from lately
  (``WARREN_EDGE_LOGIN_KNOWN_ADDRESS_DAYS``): a guesser who fills it keeps new addresses
  out for at most one window, and the user's own addresses not at all;
- all attempts from one address: a guesser trying many accounts.

A refused attempt never reaches the password check, so a flood costs no hashing. A
success clears that name's failures from that address. An IPv6 client is counted by its
/64, the block one subscriber usually holds. The counts live in this edge process: with
N edges an attacker gets N times the budget, which still ends guessing; and a user's
known addresses are known only to the edges the user signed in through since they started.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network
from typing import Final

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from shared.config import ConfigError, Env, env_float, env_str
from services.ws_edge.client_address import parse_address

IPV6_PREFIX: Final = 64
# Addresses remembered per user, the most recent kept: enough for home, work and phone.
KNOWN_PER_USER: Final = 8


@dataclass(frozen=True, slots=True)
class LoginLimits:
    per_user_and_address: RateLimitItem
    per_user: RateLimitItem
    per_address: RateLimitItem
    known_address_s: float = 30 * 86400

    @classmethod
    def from_env(cls, env: Env) -> LoginLimits:
        days = env_float(env, "WARREN_EDGE_LOGIN_KNOWN_ADDRESS_DAYS", 30.0, minimum=0.0)
        return cls(
            per_user_and_address=_rate(env, "WARREN_EDGE_LOGIN_FAILURES_PER_USER_ADDRESS", "5/minute"),
            per_user=_rate(env, "WARREN_EDGE_LOGIN_FAILURES_PER_USER", "20/minute"),
            per_address=_rate(env, "WARREN_EDGE_LOGIN_ATTEMPTS_PER_ADDRESS", "30/minute"),
            known_address_s=days * 86400,
        )


def _rate(env: Env, name: str, default: str) -> RateLimitItem:
    raw = env_str(env, name, default)
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a rate such as 5/minute, got {raw!r}") from exc


def address_key(address: str) -> str:
    """The key one client's attempts are counted under: its address, or its IPv6 /64."""
    parsed = parse_address(address)
    if parsed is None:
        return address
    if isinstance(parsed, IPv6Address):
        return str(IPv6Network((parsed, IPV6_PREFIX), strict=False))
    return str(parsed)


class LoginThrottled(Exception):
    """Too many attempts: refuse without checking the password."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many login attempts; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class KnownAddresses:
    """The addresses each user signed in from within ``ttl_s``, the latest few per user.

    Only a correct password adds one, so a guesser cannot grow it.
    """

    def __init__(self, ttl_s: float, per_user: int = KNOWN_PER_USER) -> None:
        self._ttl_s = ttl_s
        self._per_user = per_user
        self._seen: dict[str, OrderedDict[str, float]] = {}

    def remember(self, user: str, address: str) -> None:
        if self._ttl_s <= 0:
            return
        seen = self._seen.setdefault(user, OrderedDict())
        seen[address] = time.monotonic()
        seen.move_to_end(address)
        while len(seen) > self._per_user:
            seen.popitem(last=False)

    def known(self, user: str, address: str) -> bool:
        seen = self._seen.get(user)
        at = seen.get(address) if seen is not None else None
        return at is not None and time.monotonic() - at < self._ttl_s


class LoginLimiter:
    def __init__(self, limits: LoginLimits) -> None:
        self._limits = limits
        self._windows = MovingWindowRateLimiter(MemoryStorage())
        self._known = KnownAddresses(limits.known_address_s)

    def attempt(self, user: str, address: str) -> None:
        """Count an attempt; raise :class:`LoginThrottled` if a window is already full."""
        address = address_key(address)
        checks: list[tuple[RateLimitItem, tuple[str, ...]]] = [
            (self._limits.per_user_and_address, ("failed", user, address))
        ]
        if not self._known.known(user, address):
            checks.append((self._limits.per_user, ("failed", user)))
        for item, keys in checks:
            if not self._windows.test(item, *keys):
                raise LoginThrottled(self._retry_after(item, keys))
        address_keys = ("attempt", address)
        if not self._windows.hit(self._limits.per_address, *address_keys):
            raise LoginThrottled(self._retry_after(self._limits.per_address, address_keys))

    def failed(self, user: str, address: str) -> None:
        address = address_key(address)
        self._windows.hit(self._limits.per_user_and_address, "failed", user, address)
        self._windows.hit(self._limits.per_user, "failed", user)

    def succeeded(self, user: str, address: str) -> None:
        address = address_key(address)
        self._windows.clear(self._limits.per_user_and_address, "failed", user, address)
        self._known.remember(user, address)

    def _retry_after(self, item: RateLimitItem, keys: tuple[str, ...]) -> int:
        reset = self._windows.get_window_stats(item, *keys).reset_time
        return max(1, round(reset - time.time()))
