"""A token whose user still exists: what the edge and cat_relay accept from clients.

A token outlives the deletion of its user. Where a service checks users (the edge's
``WARREN_EDGE_CHECK_USERS``, cat_relay's ``WARREN_RELAY_CHECK_USERS``), the users table is
asked too: one primary-key lookup, on the blocking executor. Not imported by
``shared.auth`` itself, since ``shared.db`` imports from it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from shared.auth.tokens import Identity, TokenError, TokenService
from shared.db import UserStore


async def verify_current(
    tokens: TokenService, token: str, users: UserStore | None, blocking: Executor
) -> Identity:
    """Who ``token`` speaks for; :class:`TokenError` if it is refused, ``unknown_user``
    when ``users`` is given and no longer holds its user. Database failures are raised
    as they are."""
    identity = tokens.verify(token)
    if users is not None:
        exists = await asyncio.get_running_loop().run_in_executor(
            blocking, users.exists, identity.user_id
        )
        if not exists:
            raise TokenError("unknown_user", f"user {identity.user_id!r} does not exist")
    return identity
