"""``POST /send``: ask the Cat over HTTP and get the whole reply back.

The body is ``{"user_id": ..., "message": ...}`` and the answer ``{"response": ...}``,
the shape existing scripts use. The caller presents either the relay's service key or
a Warren JWT; with a JWT, a user may ask only as themself unless they hold ``admin``.
The ask goes through ``chat.ask`` (services/cat_relay/asker.py), so it is answered in
order with the user's other asks, over the user's one Cat socket.
"""

from __future__ import annotations

import hmac
from typing import Any, Final

import orjson
from sqlalchemy.exc import SQLAlchemyError

from shared.auth import TokenError, TokenService
from shared.auth.current import KnownUsers, verify_current
from shared.db.outage import database_unavailable
from shared.messaging.broker import BrokerUnavailable, Unroutable
from shared.messaging.names import Event, valid_name
from shared.web import JsonHandler
from services.cat_relay.asker import Abandoned, Asker
from services.cat_relay.cat import CatClient
from services.cat_relay.relay import INTERRUPTED
from services.cat_relay.settings import RelaySettings

# A chat.error code -> the HTTP status POST /send answers with.
STATUS_BY_CODE: Final = {
    "bad_request": 400,
    "cat_unavailable": 502,
    "cat_error": 502,
    "cat_no_llm": 502,
    "cat_timeout": 504,
    "interrupted": 503,
}


class SendHandler(JsonHandler):
    def initialize(
        self, asker: Asker, tokens: TokenService, settings: RelaySettings,
        users: KnownUsers | None,
    ) -> None:
        self._asker = asker
        self._tokens = tokens
        self._settings = settings
        self._users = users  # None: users are not checked

    async def post(self) -> None:
        scheme, _, credential = self.request.headers.get("Authorization", "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            self.fail(401, "token_missing", "send 'Authorization: Bearer <JWT or service key>'")
            return
        body = self._body()
        if body is None:
            return
        user_id, message = body
        if not await self._allowed(credential, user_id):
            return
        try:
            outcome = await self._asker.ask(user_id, message, self._settings.send_timeout_s)
        except (BrokerUnavailable, Unroutable) as exc:
            self.fail(503, "broker_unavailable", f"the ask could not be queued: {exc}")
            return
        except TimeoutError:
            self.fail(504, "cat_timeout", f"no answer within {self._settings.send_timeout_s:g} s")
            return
        except Abandoned as exc:
            self.fail(STATUS_BY_CODE[INTERRUPTED], INTERRUPTED, str(exc))
            return
        if outcome.type == Event.CHAT_REPLY:
            self.write_json({"response": outcome.data.get("text", "")})
            return
        code = str(outcome.data.get("code", "cat_error"))
        self.fail(STATUS_BY_CODE.get(code, 502), code, str(outcome.data.get("message", "")))

    def _body(self) -> tuple[str, str] | None:
        try:
            raw: Any = orjson.loads(self.request.body)
        except orjson.JSONDecodeError as exc:
            self.fail(400, "bad_request", f"body is not JSON: {exc}")
            return None
        if not isinstance(raw, dict):
            self.fail(400, "bad_request", 'body must be {"user_id": ..., "message": ...}')
            return None
        user_id, message = raw.get("user_id"), raw.get("message")
        if not isinstance(user_id, str) or not valid_name(user_id):
            self.fail(400, "bad_request", "user_id must match [A-Za-z0-9_-]{1,64}")
            return None
        if not isinstance(message, str) or not message.strip():
            self.fail(400, "bad_request", "message must be a non-empty string")
            return None
        if len(message) > self._settings.max_ask_chars:
            self.fail(400, "bad_request", f"message must be at most {self._settings.max_ask_chars} characters")
            return None
        return user_id, message

    async def _allowed(self, credential: str, user_id: str) -> bool:
        key = self._settings.service_api_key
        if key is not None and hmac.compare_digest(credential.encode(), key.encode()):
            return True
        try:
            identity = await verify_current(self._tokens, credential, self._users)
        except TokenError as exc:
            self.fail(401, exc.code, exc.message)
            return False
        except SQLAlchemyError as exc:
            if not database_unavailable(exc):
                raise
            self.fail(503, "database_unavailable", "the users table could not be read; retry later")
            return False
        if identity.user_id != user_id and not identity.has_role(self._settings.auth.admin_role):
            self.fail(403, "forbidden", "a user may ask only as themself")
            return False
        return True


class CatStatusHandler(JsonHandler):
    """``GET /readyz/cat``: whether the Cat answers, reported apart from readiness."""

    def initialize(self, cat: CatClient) -> None:
        self._cat = cat

    async def get(self) -> None:
        status = await self._cat.status()
        self.write_json(
            {"cat": "reachable" if status.reachable else "unreachable", "protocol": status.protocol,
             "version": status.version, "detail": status.detail},
            status=200 if status.reachable else 503,
        )
