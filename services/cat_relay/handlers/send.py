"""``POST /send``: ask the Cat over HTTP and get the whole reply back.

The body is ``{"user_id": ..., "message": ...}`` and the answer ``{"response": ...}``,
the shape existing scripts use. The caller presents either the relay's service key or
a Warren JWT; with a JWT, a user may ask only as themself unless they hold ``admin``.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson

from shared.auth import TokenError, TokenService
from shared.messaging.names import valid_name
from shared.web import JsonHandler
from services.cat_relay.cat import CatError
from services.cat_relay.metrics import RelayMetrics
from services.cat_relay.relay import Relay
from services.cat_relay.settings import RelaySettings

ADMIN_ROLE = "admin"


class SendHandler(JsonHandler):
    def initialize(
        self, relay: Relay, tokens: TokenService, settings: RelaySettings, metrics: RelayMetrics
    ) -> None:
        self._relay = relay
        self._tokens = tokens
        self._settings = settings
        self._metrics = metrics

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
        if not self._allowed(credential, user_id):
            return
        self._metrics.asks.labels("http").inc()
        try:
            reply = await self._relay.chat(user_id, message, lambda _token: None)
        except CatError as exc:
            self._metrics.errors.labels(exc.code).inc()
            self.fail(exc.status, exc.code, exc.message)
            return
        self._metrics.replies.inc()
        self.write_json({"response": reply})

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
        if not valid_name(user_id):
            self.fail(400, "bad_request", "user_id must match [A-Za-z0-9_-]{1,64}")
            return None
        if not isinstance(message, str) or not message.strip():
            self.fail(400, "bad_request", "message must be a non-empty string")
            return None
        if len(message) > self._settings.max_ask_chars:
            self.fail(400, "bad_request", f"message must be at most {self._settings.max_ask_chars} characters")
            return None
        return user_id, message

    def _allowed(self, credential: str, user_id: str) -> bool:
        key = self._settings.service_api_key
        if key is not None and hmac.compare_digest(credential.encode(), key.encode()):
            return True
        try:
            identity = self._tokens.verify(credential)
        except TokenError as exc:
            self.fail(401, exc.code, exc.message)
            return False
        if identity.user_id != user_id and ADMIN_ROLE not in identity.roles:
            self.fail(403, "forbidden", "a user may ask only as themself")
            return False
        return True


class CatStatusHandler(JsonHandler):
    """``GET /readyz/cat``: whether the Cat answers, reported apart from readiness."""

    def initialize(self, relay_cat: Any) -> None:
        self._cat = relay_cat

    async def get(self) -> None:
        status = await self._cat.status()
        self.write_json(
            {"cat": "reachable" if status.reachable else "unreachable", "protocol": status.protocol,
             "version": status.version, "detail": status.detail},
            status=200 if status.reachable else 503,
        )
