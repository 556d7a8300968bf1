"""``POST /auth/login``: user name and password in, JWT out."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from shared.messaging.names import valid_name
from services.ws_edge.deps import EdgeDeps
from services.ws_edge.errors import BadRequest, InvalidCredentials, describe
from services.ws_edge.handlers.api import EdgeJsonHandler
from services.ws_edge.login_limits import LoginThrottled

MAX_PASSWORD_LENGTH = 1024


class LoginHandler(EdgeJsonHandler):
    def initialize(self, deps: EdgeDeps) -> None:
        self._deps = deps

    async def post(self) -> None:
        if not self._deps.tokens.can_issue:
            self.fail(501, "login_disabled", "this edge verifies tokens but has no key to issue them")
            return
        # The client's address behind trusted proxies (EdgeApplication sets it).
        limiter, address = self._deps.login_limiter, self.request.remote_ip or ""
        try:
            username, password = _credentials(self.request.body)
            # Names that cannot exist share one count: a flood of made-up names holds
            # no memory per name.
            counted = username if valid_name(username) else ""
            limiter.attempt(counted, address)
            user = None
            if counted:
                user = await asyncio.get_running_loop().run_in_executor(
                    self._deps.blocking, self._deps.users.authenticate, username, password
                )
            if user is None:
                limiter.failed(counted, address)
                raise InvalidCredentials("wrong user name or password")
        except (BadRequest, InvalidCredentials, LoginThrottled) as exc:
            spec = describe(exc)
            self._deps.metrics.logins.labels(spec.code).inc()
            if isinstance(exc, LoginThrottled):
                self.set_header("Retry-After", str(exc.retry_after_s))
            self.fail(spec.status, spec.code, str(exc))
            return
        limiter.succeeded(counted, address)
        self._deps.metrics.logins.labels("ok").inc()
        tokens = self._deps.tokens
        self.write_json(
            {
                "token": tokens.issue(user.id, user.groups, user.roles),
                "token_type": "Bearer",
                "expires_in": tokens.ttl_s,
                "user": user.id,
                "groups": user.groups,
                "roles": user.roles,
            }
        )


def _credentials(body: bytes) -> tuple[str, str]:
    try:
        raw: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise BadRequest('body must be {"username": ..., "password": ...}')
    username, password = raw.get("username"), raw.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise BadRequest("username and password must be strings")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise BadRequest(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    return username, password
