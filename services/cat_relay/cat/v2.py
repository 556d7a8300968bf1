"""Cat 2.x: ``POST /agents/{slug}/message`` answered with server-sent AG-UI events.

The Cat keeps no conversation, so each ask carries the history the relay stores.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from services.cat_relay.cat.base import STATUS_TIMEOUT_S, CatStatus, History, OnToken
from services.cat_relay.cat.errors import CatFailed, CatTimeout, CatUnavailable
from services.cat_relay.cat.no_llm import V2_PLACEHOLDERS, TokenWatch, checked
from services.cat_relay.settings import CatSettings

# Where the Cat's admin chooses a model: its web UI (the ``ui`` plugin routes in the
# URL's fragment), a model provider's settings and then the core settings' default LLM.
SETTINGS_PAGE = "/#/settings (a model provider's settings, then Core Settings: Default LLM)"


def _message(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": text}]}


class V2Client:
    protocol = "v2"
    keeps_history = False

    def __init__(self, settings: CatSettings) -> None:
        self._settings = settings
        self._http = httpx.AsyncClient(
            base_url=settings.url,
            headers={"Authorization": f"Bearer {settings.api_key}"},
            timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self._streams = 0
        self._settings_page = f"{settings.url}{SETTINGS_PAGE}"

    @property
    def open_sockets(self) -> int:
        return self._streams

    async def ask(self, user_id: str, text: str, history: History, on_token: OnToken) -> str:
        earlier = await history()
        body = {
            "messages": [*(_message(t.role, t.text) for t in earlier), _message("user", text)],
            "stream": True,
        }
        url = f"/agents/{self._settings.agent}/message"
        watch = TokenWatch(on_token)
        self._streams += 1
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                async with aconnect_sse(self._http, "POST", url, json=body) as source:
                    response = source.response
                    if response.status_code >= 400:
                        await response.aread()
                        raise CatFailed(f"the Cat answered HTTP {response.status_code}: {_detail(response)}")
                    async for event in source.aiter_sse():
                        reply = _on_event(event.json(), watch)
                        if reply is not None:
                            return checked(reply, watch, V2_PLACEHOLDERS, self._settings_page)
            raise CatUnavailable("the Cat ended the stream without RUN_FINISHED")
        except TimeoutError as exc:
            raise CatTimeout(f"the Cat did not answer within {self._settings.timeout_s:g} s") from exc
        except httpx.TimeoutException as exc:
            raise CatTimeout(f"the Cat timed out: {exc!r}") from exc
        except (httpx.TransportError, SSEError, ValueError) as exc:
            raise CatUnavailable(f"cannot reach the Cat at {self._settings.url}: {exc!r}") from exc
        finally:
            self._streams -= 1

    async def release(self, user_id: str) -> None:
        """Nothing to close: each ask is its own HTTP request."""

    async def status(self) -> CatStatus:
        try:
            response = await self._http.get("/status", timeout=STATUS_TIMEOUT_S)
            response.raise_for_status()
            version = str(response.json().get("version", ""))
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            return CatStatus(False, self.protocol, detail=repr(exc))
        return CatStatus(True, self.protocol, version=version)

    async def close(self) -> None:
        await self._http.aclose()


def _on_event(event: Any, on_token: OnToken) -> str | None:
    """Handle one AG-UI event; the reply text once the run has finished."""
    if not isinstance(event, dict):
        return None
    kind = event.get("type")
    if kind == "TEXT_MESSAGE_CONTENT":
        delta = event.get("delta")
        if isinstance(delta, str):
            on_token(delta)
    elif kind == "RUN_FINISHED":
        result = event.get("result")
        messages = result.get("messages") if isinstance(result, dict) else None
        last = messages[-1] if isinstance(messages, list) and messages else None
        if not isinstance(last, dict):
            raise CatFailed("the Cat finished without a reply message")
        text = last.get("text")
        return text if isinstance(text, str) else ""
    elif kind == "RUN_ERROR":
        raise CatFailed(f"the Cat failed: {event.get('message') or 'no message'}")
    return None


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else response.reason_phrase
