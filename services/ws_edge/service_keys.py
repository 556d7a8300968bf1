"""Service API keys as the edge checks them: presented as ``Authorization: Bearer wk_…``,
looked up through :class:`~shared.db.keys.KeyStore`, and remembered for a short time.

A key's row is remembered for ``WARREN_EDGE_KEY_CACHE_S`` after it was read, whether it
was found or not; the secret is still checked against it on every request. So a key
revoked (``warren key revoke``) is refused by every edge at most that many seconds
later, and a publish costs no database query while its key is remembered. Requests that
arrive together for a key not remembered share one lookup. The database away, a key
not remembered is answered ``503 database_unavailable``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Final

import tornado.web

from shared.db.keys import KeyRecord, KeyStore, parse_key

#: Keys remembered at once; the least recently used is forgotten first.
MAX_REMEMBERED: Final = 10_000


class KeyRefused(PermissionError):
    """No key, or not a key this edge knows: ``401``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class KeyForbidden(PermissionError):
    """A known key that may not do this (revoked, or without the scope): ``403``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def presented_key(handler: tornado.web.RequestHandler) -> str | None:
    scheme, _, value = handler.request.headers.get("Authorization", "").partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


class ServiceKeys:
    def __init__(
        self,
        store: KeyStore,
        blocking: Executor,
        remember_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._blocking = blocking
        self._remember_s = remember_s
        self.clock = clock  # a seam for tests of the revocation bound
        self._remembered: OrderedDict[str, tuple[float, KeyRecord | None]] = OrderedDict()
        self._lookups: dict[str, asyncio.Future[KeyRecord | None]] = {}

    async def verify(self, presented: str | None, scope: str) -> KeyRecord:
        """The key ``presented`` if it is valid, live and holds ``scope``; else
        :class:`KeyRefused` or :class:`KeyForbidden`. Database errors are raised as
        they are."""
        if presented is None:
            raise KeyRefused("key_missing", "a service key is required: Authorization: Bearer wk_…")
        parsed = parse_key(presented)
        if parsed is None:
            raise KeyRefused("key_invalid", "not a service key (wk_<id>_<secret>)")
        key_id, secret = parsed
        record = await self._record(key_id)
        # The secret first: who does not hold it learns nothing about the key.
        if record is None or not record.matches(secret):
            raise KeyRefused("key_invalid", "unknown service key")
        if record.revoked:
            raise KeyForbidden("key_revoked", f"the key {key_id} of {record.name!r} was revoked")
        if scope not in record.scopes:
            raise KeyForbidden("scope_missing", f"the key {key_id} lacks the scope {scope!r}")
        return record

    async def _record(self, key_id: str) -> KeyRecord | None:
        now = self.clock()
        remembered = self._remembered.get(key_id)
        if remembered is not None and now - remembered[0] < self._remember_s:
            self._remembered.move_to_end(key_id)
            return remembered[1]
        lookup = self._lookups.get(key_id)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(key_id))
            self._lookups[key_id] = lookup
        return await asyncio.shield(lookup)

    async def _lookup(self, key_id: str) -> KeyRecord | None:
        try:
            read_at = self.clock()
            record = await asyncio.get_running_loop().run_in_executor(
                self._blocking, self._store.get, key_id
            )
        finally:
            del self._lookups[key_id]
        self._remembered[key_id] = (read_at, record)
        self._remembered.move_to_end(key_id)
        while len(self._remembered) > MAX_REMEMBERED:
            self._remembered.popitem(last=False)
        return record
