"""A token whose user still exists: what the edge and cat_relay accept from clients.

A token outlives the deletion of its user. Where a service checks users (the edge's
``WARREN_EDGE_CHECK_USERS``, cat_relay's ``WARREN_RELAY_CHECK_USERS``), the users table is
asked too: a primary-key lookup on the blocking executor, made for many tokens at once
when they come together (shared/db/batching.py). Not imported by ``shared.auth`` itself,
since ``shared.db`` imports from it.
"""

from __future__ import annotations

from concurrent.futures import Executor

from shared.auth.tokens import Identity, TokenError, TokenService
from shared.db import UserStore
from shared.db.batching import Batched


class KnownUsers:
    """Whether users still exist, asked of the users table in batches."""

    def __init__(self, users: UserStore, blocking: Executor) -> None:
        self._lookup = Batched(
            lambda ids: dict.fromkeys(users.existing(ids), True), False, blocking
        )

    async def exists(self, user_id: str) -> bool:
        return await self._lookup.get(user_id)


async def verify_current(tokens: TokenService, token: str, users: KnownUsers | None) -> Identity:
    """Who ``token`` speaks for; :class:`TokenError` if it is refused, ``unknown_user``
    when ``users`` is given and no longer holds its user. Database failures are raised
    as they are."""
    identity = tokens.verify(token)
    if users is not None and not await users.exists(identity.user_id):
        raise TokenError("unknown_user", f"user {identity.user_id!r} does not exist")
    return identity
