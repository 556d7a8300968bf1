"""Publishing events to Warren over HTTP, from any Python program: the edge's
``POST /api/publish`` and ``POST /api/publish/batch`` with a service key
(docs/extending.md, "Publishing over HTTP"; docs/protocol.md 15).

    from warren.http import Event, WarrenPublisher

    with WarrenPublisher("http://127.0.0.1:8000", key) as warren:
        warren.publish("user:alice", "invoice.paid", {"invoice": 42}, id="invoice-42-paid")
        warren.publish_batch([Event("group:team", "build.done", {"ok": True})])

:class:`AsyncWarrenPublisher` does the same with ``await``. Every refusal raises
:class:`PublishError`, whose ``code`` is the edge's error code (``invalid_address``,
``key_revoked``, ``rate_limited``, ``unavailable``, ...). An event keeps the ``id`` it
was given, so publishing it again after an error lets its readers drop the copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import httpx

PUBLISH_PATH: Final = "/api/publish"
BATCH_PATH: Final = "/api/publish/batch"
DEFAULT_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Event:
    """One event: to ``user:<id>``, ``group:<name>`` or ``broadcast``; ``type`` in dotted
    lower-case words; ``data`` a JSON object; ``id`` optional, ``[A-Za-z0-9_-]{1,64}``."""

    to: str
    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"to": self.to, "type": self.type, "data": dict(self.data)}
        if self.id is not None:
            body["id"] = self.id
        return body


@dataclass(frozen=True, slots=True)
class Result:
    """What became of one event of a batch."""

    index: int
    id: str
    published: bool
    error: str | None = None
    message: str | None = None


class PublishError(Exception):
    """The edge refused a publish, or could not be reached.

    ``status`` is the HTTP status (``None``: no answer, ``code`` ``unreachable``);
    ``field`` names the bad part of a ``400``; ``errors`` lists a refused batch's invalid
    events (none of it was published); ``results`` says, for a batch the broker did not
    wholly confirm, which events were published; ``retry_after_s`` comes with ``429``.
    """

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        *,
        field: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        results: list[Result] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.errors = errors or []
        self.results = results or []
        self.retry_after_s = retry_after_s


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _single(to: str, type: str, data: Mapping[str, Any] | None, id: str | None) -> dict[str, Any]:
    return Event(to, type, data or {}, id).to_json()


def _answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON of a successful answer, or :class:`PublishError`."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise PublishError(
            response.status_code, "bad_response",
            f"the edge answered {response.status_code} without a JSON object",
        )
    if response.status_code == 200:
        return body
    retry_after = response.headers.get("Retry-After")
    raise PublishError(
        response.status_code,
        str(body.get("error", "http_error")),
        str(body.get("message", "")),
        field=body.get("field"),
        errors=body.get("errors"),
        results=[_result(raw) for raw in body.get("results", [])],
        retry_after_s=float(retry_after) if retry_after and retry_after.isdigit() else None,
    )


def _result(raw: Mapping[str, Any]) -> Result:
    return Result(
        index=int(raw["index"]), id=str(raw["id"]), published=raw.get("status") == "published",
        error=raw.get("error"), message=raw.get("message"),
    )


def _unreachable(exc: httpx.TransportError) -> PublishError:
    return PublishError(
        None, "unreachable",
        f"no answer from the edge ({type(exc).__name__}: {exc}); the events may or may not "
        "have been published: publish them again with the same ids",
    )


class WarrenPublisher:
    """Publishes to one edge (or a load balancer in front of edges) with one key,
    on one pooled HTTP client; blocking."""

    def __init__(self, base_url: str, key: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=_headers(key), timeout=timeout
        )

    def publish(
        self, to: str, type: str, data: Mapping[str, Any] | None = None, *, id: str | None = None
    ) -> str:
        """Publish one event; return its id once the broker has it."""
        try:
            response = self._client.post(PUBLISH_PATH, json=_single(to, type, data, id))
        except httpx.TransportError as exc:
            raise _unreachable(exc) from exc
        return str(_answer(response)["id"])

    def publish_batch(self, events: Iterable[Event]) -> list[str]:
        """Publish events together; return their ids, in order, once the broker has all."""
        body = {"events": [event.to_json() for event in events]}
        try:
            response = self._client.post(BATCH_PATH, json=body)
        except httpx.TransportError as exc:
            raise _unreachable(exc) from exc
        return [str(result["id"]) for result in _answer(response)["results"]]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> WarrenPublisher:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncWarrenPublisher:
    """:class:`WarrenPublisher` for asyncio."""

    def __init__(self, base_url: str, key: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=_headers(key), timeout=timeout
        )

    async def publish(
        self, to: str, type: str, data: Mapping[str, Any] | None = None, *, id: str | None = None
    ) -> str:
        try:
            response = await self._client.post(PUBLISH_PATH, json=_single(to, type, data, id))
        except httpx.TransportError as exc:
            raise _unreachable(exc) from exc
        return str(_answer(response)["id"])

    async def publish_batch(self, events: Iterable[Event]) -> list[str]:
        body = {"events": [event.to_json() for event in events]}
        try:
            response = await self._client.post(BATCH_PATH, json=body)
        except httpx.TransportError as exc:
            raise _unreachable(exc) from exc
        return [str(result["id"]) for result in _answer(response)["results"]]

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncWarrenPublisher:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
