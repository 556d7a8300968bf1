"""``POST /api/publish`` and ``POST /api/publish/batch``: a backend with a service key
publishes events to users, groups or everyone over HTTP (docs/protocol.md 15).

The order of a request: the body's size, the key, the events, the rate, the broker. The
body is read as it arrives and kept only while it is within
``WARREN_EDGE_PUBLISH_MAX_BODY_BYTES`` and its key is good; otherwise it is read on and
dropped, and answered when it ends (``413``, ``401``, ``403``): a client that sends its
whole body before reading the answer would have its connection reset, and lose the
answer, if the edge closed it with the body unread. Reading it costs no memory, and
``WARREN_EDGE_HANDSHAKE_TIMEOUT_S`` bounds how long it may take. A client that asked
``Expect: 100-continue`` has sent no body yet, and is answered at once. A batch is checked whole before anything is published; its events are then
published together, each confirmed by the broker, and the answer says of each whether it
was.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from sqlalchemy.exc import SQLAlchemyError
from tornado.http1connection import HTTP1Connection
import tornado.web

from shared.db.keys import KeyRecord, Scope
from shared.messaging import Address, Envelope
from services.ws_edge.deps import EdgeDeps, PublishDeps
from services.ws_edge.errors import INTERNAL, describe
from services.ws_edge.handlers.api import EdgeJsonHandler, lookup_failed
from services.ws_edge.publishing import (
    BadBody,
    BatchError,
    BodyTooLarge,
    EventError,
    PublishThrottled,
    batch_events,
    load_body,
    make_batch,
    make_event,
)
from services.ws_edge.service_keys import presented_key

log = logging.getLogger(__name__)

#: The connection's own limit, above any the handler enforces: past it Tornado would
#: answer a bare 400 and close, where the handler answers 413 in JSON.
UNBOUNDED: Final = 1 << 62


@tornado.web.stream_request_body
class PublishBase(EdgeJsonHandler):
    def initialize(self, deps: EdgeDeps) -> None:
        self.deps = deps
        self.publishing: PublishDeps = deps.publishing
        self._chunks: list[bytes] = []
        self._received = 0
        self._refusal: Exception | None = None
        self._key: KeyRecord | None = None

    @property
    def _limit(self) -> int:
        return self.deps.settings.publish.max_body_bytes

    async def prepare(self) -> None:
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(UNBOUNDED)
        declared = self.request.headers.get("Content-Length", "")
        length = int(declared) if declared.isdigit() else 0
        if length > self._limit:
            self._refusal = BodyTooLarge(self._limit)
        else:
            try:
                self._key = await self.publishing.keys.verify(presented_key(self), Scope.PUBLISH)
            except (PermissionError, SQLAlchemyError) as exc:
                self._refusal = exc
        expects = self.request.headers.get("Expect", "").lower() == "100-continue"
        if self._refusal is not None and expects:
            self.refuse(self._refusal)

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._received += len(chunk)
        if self._refusal is None and self._received > self._limit:
            self._refusal = BodyTooLarge(self._limit)
            self._chunks.clear()
        if self._refusal is None:
            self._chunks.append(chunk)

    async def post(self) -> None:
        if self._refusal is not None:
            self.refuse(self._refusal)
            return
        assert self._key is not None
        body = b"".join(self._chunks)
        self._chunks.clear()
        try:
            await self.publish(body, self._key, Address.service(self._key.name))
        except (BadBody, EventError, BatchError, PublishThrottled) as exc:
            self.refuse(exc)

    async def publish(self, body: bytes, key: KeyRecord, sender: Address) -> None:
        raise NotImplementedError

    def refuse(self, exc: Exception) -> None:
        """Answer ``exc`` from the edge's error table, with what names the bad part."""
        if isinstance(exc, SQLAlchemyError):
            status, code, message = lookup_failed(exc)
            self.write_json({"error": code, "message": message}, status)
            return
        spec = describe(exc)
        body: dict[str, Any] = {"error": spec.code, "message": spec.message or str(exc)}
        if isinstance(exc, (BadBody, EventError)) and exc.field is not None:
            body["field"] = exc.field
        if isinstance(exc, BatchError):
            body["errors"] = [error.to_json(index) for index, error in exc.errors]
        if isinstance(exc, PublishThrottled):
            self.set_header("Retry-After", str(exc.retry_after_s))
        self.write_json(body, spec.status)

    async def confirmed(self, envelopes: list[Envelope]) -> list[BaseException | None]:
        """Publish every envelope at once, each confirmed by the broker; what each came to."""
        publisher = self.deps.publisher
        outcomes = await asyncio.gather(
            *(publisher.publish_event(envelope) for envelope in envelopes), return_exceptions=True
        )
        for outcome in outcomes:
            if outcome is not None and not isinstance(outcome, Exception):
                raise outcome  # cancelled: the edge is stopping
        return outcomes


def _failure(envelope: Envelope, exc: BaseException) -> dict[str, Any]:
    spec = describe(exc)
    if spec == INTERNAL:
        log.error("publish failed", exc_info=exc, extra={"id": envelope.id})
    return {"error": spec.code, "message": spec.message or str(exc)}


class PublishHandler(PublishBase):
    """``POST /api/publish``: one event."""

    async def publish(self, body: bytes, key: KeyRecord, sender: Address) -> None:
        envelope = make_event(load_body(body), sender, self.deps.settings.max_inbound_frame_bytes)
        self.publishing.limiter.spend(key.id, 1)
        [outcome] = await self.confirmed([envelope])
        if outcome is None:
            self.write_json({"id": envelope.id, "status": "published", "from": str(sender)})
            return
        failure = _failure(envelope, outcome)
        self.write_json({**failure, "id": envelope.id}, describe(outcome).status)


class PublishBatchHandler(PublishBase):
    """``POST /api/publish/batch``: up to ``WARREN_EDGE_PUBLISH_BATCH_MAX`` events."""

    async def publish(self, body: bytes, key: KeyRecord, sender: Address) -> None:
        settings = self.deps.settings
        events = batch_events(load_body(body), settings.publish.batch_max)
        envelopes = make_batch(events, sender, settings.max_inbound_frame_bytes)
        self.publishing.limiter.spend(key.id, len(envelopes))
        outcomes = await self.confirmed(envelopes)
        results: list[dict[str, Any]] = []
        status = 200
        for index, (envelope, outcome) in enumerate(zip(envelopes, outcomes)):
            result: dict[str, Any] = {"index": index, "id": envelope.id}
            if outcome is None:
                result["status"] = "published"
            else:
                result.update(status="failed", **_failure(envelope, outcome))
                status = max(status, describe(outcome).status)
            results.append(result)
        if status == 200:
            self.write_json({"from": str(sender), "results": results})
            return
        failed = sum(1 for result in results if result["status"] == "failed")
        first = next(result for result in results if result["status"] == "failed")
        self.write_json({
            "error": first["error"],
            "message": f"{failed} of {len(results)} events were not published; "
                       "results says which were",
            "from": str(sender),
            "results": results,
        }, status)
