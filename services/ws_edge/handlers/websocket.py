"""``GET /ws``: one authenticated client connection."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
import tornado.websocket
from sqlalchemy.exc import SQLAlchemyError
from tornado.iostream import StreamBufferFullError, StreamClosedError

from shared.auth import Identity, TokenError
from shared.logging import correlated
from shared.messaging import (
    BROADCAST,
    Address,
    Command,
    Envelope,
    group_key,
    parse_destination,
    user_key,
)
from shared.messaging.broker import BrokerUnavailable
from shared.web import log_uncaught
from services.ws_edge import frames, tornado_fast
from services.ws_edge.deps import EdgeDeps
from services.ws_edge.errors import CloseCode, FrameError, Overloaded, TooManySockets, describe
from services.ws_edge.handlers.api import authenticate, lookup_failed, request_token
from services.ws_edge.handlers.exports import deliver_pending, submit_from_socket
from services.ws_edge.history import HistoryBusy, HistoryUnavailable, Query, Recovery
from services.ws_edge.policy import PolicyDenied

log = logging.getLogger(__name__)

#: The heartbeat: an unmasked, unsolicited pong frame with no payload (RFC 6455 5.5.3).
HEARTBEAT_FRAME: Final = b"\x8a\x00"
#: The WebSocket subprotocol of this document's frames: the edge selects it when offered.
#: A browser fails a handshake that offered subprotocols and got none back, so a client
#: authenticating with ``warren.auth.<jwt>`` offers this one too (the token is never echoed).
SUBPROTOCOL: Final = "warren.v1"


class EdgeSocket(tornado.websocket.WebSocketHandler):
    # The edge's per-connection state lives in slots. Tornado already gives each handler
    # 27 instance attributes, and CPython keeps an instance dict compact (keys shared by
    # the class) only up to 30 keys: a few more would cost every socket about 1.3 KB.
    __slots__ = (
        "_deps", "_identity", "_retained", "_opened", "_closed", "_expiry", "_strikes",
        "_allowance", "_spent_at", "_holds_slot", "_since", "_held", "_held_bytes",
        "_replayed", "_live_from", "_reading", "_gap_from", "_waiting",
    )
    # A successful upgrade is logged at DEBUG (app.log_request): a reconnect storm
    # would otherwise write thousands of lines a second; warren_edge_connections counts them.
    quiet_access_log = True

    def initialize(self, deps: EdgeDeps) -> None:
        self._deps = deps
        self._identity: Identity | None = None
        self._retained: tuple[str, ...] = ()
        self._opened = False
        self._closed = False
        self._expiry: asyncio.TimerHandle | None = None
        self._strikes: deque[float] | None = None  # made at the first invalid frame
        # The inbound frame bucket (services/ws_edge/frame_rate.py), full at the start;
        # an idle socket's holds shared objects until its first frame.
        self._allowance: float = deps.settings.frame_rate.burst
        self._spent_at = 0.0
        self._holds_slot = False  # one of the user's WARREN_EDGE_MAX_SOCKETS_PER_USER
        # Recovery (docs/protocol.md 17.3): the position asked for (or why it is refused),
        # and, until the socket is live (its welcome, or a replay, is written), the live
        # events held back, their size, and the ids replayed.
        self._since: float | str | None = None
        self._held: list[tuple[str, bytes]] | None = None
        self._held_bytes = 0
        self._replayed: set[str] = set()
        self._live_from = 0.0  # the edge's time when the socket's keys were (last) bound
        self._reading: asyncio.Task[None] | None = None  # the history request being read
        # While the edge replays in band what was routed when its broker connection was
        # away (docs/protocol.md 17.5): where the replay starts, before the window.
        self._gap_from: float | None = None
        self._waiting = False  # notifications wait for the user (read as it connects)

    # -- handshake -------------------------------------------------------------

    async def prepare(self) -> None:
        """Refuse before the upgrade, with a JSON body: wrong upgrade, origin, token or
        user, a user who holds all the sockets it may, or a broker or database out of
        reach. (A connect storm is refused before this handler exists: shedding.py.) The
        upgrade is answered once the socket's keys are bound and its user is read."""
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            self._refuse(426, "upgrade_required", "GET /ws takes a WebSocket upgrade")
            return
        origin = self.request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin):
            self._refuse(403, "origin_forbidden", f"origin {origin!r} is not allowed")
            return
        token = request_token(self, subprotocol=True)
        if token is None:
            self._refuse(
                401, "token_missing",
                "a token is required (?token=, Bearer, subprotocol warren.auth.<jwt> or cookie)",
            )
            return
        deps = self._deps
        try:
            identity = deps.tokens.verify(token)
        except TokenError as exc:
            self._refuse(401, exc.code, exc.message)
            return
        # Checked and taken in one step (no await between), so concurrent upgrades of one
        # user cannot all pass. Given back once (_let_go): by on_finish() if there is no
        # upgrade, else by on_close(), or by open() if it fails (Tornado then calls no
        # on_close).
        limit = deps.settings.max_sockets_per_user
        if not deps.hub.take_slot(identity.user_id, limit):
            self._refuse_with(TooManySockets(
                f"this user has {limit} sockets open on this edge, the most allowed; "
                "close one first"
            ))
            return
        self._identity = identity
        self._holds_slot = True
        self._since = frames.position_of(
            self.get_query_arguments("since"), time.time(), deps.settings.common.history.window_s,
        )
        with deps.hub.admitting():
            await self._admit(identity)

    async def _admit(self, identity: Identity) -> None:
        """Bind the socket's keys, then read its user (admission.py); refuse the upgrade if
        either fails. The read comes after the binding: a notification stored after the
        read is published after the binding, so it reaches the edge, which holds it back
        for the socket's welcome."""
        deps = self._deps
        # Held at once, so that on_close() releases them too if the client leaves while
        # they are being bound.
        self._retained = (user_key(identity.user_id), *(group_key(g) for g in identity.groups))
        generation = await self._bound(deps.bindings.retain(self._retained))
        if generation is None:
            return
        # From now on the socket's live events are held back, to follow its welcome.
        self._live_from = time.time()
        self._held = []
        deps.hub.hold(self, (*self._retained, BROADCAST))
        try:
            admission = await deps.admission.look_up(identity.user_id)
        except SQLAlchemyError as exc:
            if not self._closed:
                self._refuse(*lookup_failed(exc))
            return
        if self._closed:
            return
        if not admission.known:
            self._refuse(401, "unknown_user", f"user {identity.user_id!r} does not exist")
            return
        if deps.bindings.generation != generation:
            # The broker connection was replaced meanwhile: what was routed to the lost
            # queue after its loss never reached the edge. The socket starts once its keys
            # are bound to the new one.
            if await self._bound(deps.bindings.settle(self._retained)) is None:
                return
            self._live_from = time.time()
        if self._held is None:
            self._refuse_with(Overloaded(
                "more events came for this socket than it may hold back before its welcome; "
                "retry shortly"
            ))
            return
        self._waiting = admission.waiting

    async def _bound(self, binding: asyncio.Future[list[None]]) -> int | None:
        """Wait for ``binding`` of the socket's keys, and again while a new broker
        connection leaves them unbound; then the bindings' generation, which they are
        bound in. None if the client left meanwhile, or if they could not be bound within
        ``WARREN_EDGE_BIND_TIMEOUT_S`` (the upgrade is then refused)."""
        deps = self._deps
        bindings = deps.bindings
        while True:
            try:
                if binding.done():  # every key was bound already: nothing to wait for
                    binding.result()
                else:
                    await asyncio.wait_for(asyncio.shield(binding), deps.settings.bind_timeout_s)
            except Exception:
                if not self._closed:
                    assert self._identity is not None
                    log.warning("binding failed", extra={"user": self._identity.user_id},
                                exc_info=True)
                    self._refuse_with(BrokerUnavailable("the broker is unavailable; retry later"))
                return None
            if self._closed:
                return None  # the client left: on_close() let go of what the socket held
            if bindings.are_bound(self._retained):
                return bindings.generation
            binding = bindings.settle(self._retained)

    def check_origin(self, origin: str) -> bool:
        return True  # checked in prepare(), where the refusal can carry a JSON body

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return SUBPROTOCOL if SUBPROTOCOL in subprotocols else None

    def _origin_allowed(self, origin: str) -> bool:
        """Same-origin pages always; other origins only when in the allow-list (or ``*``)."""
        headers = self.request.headers
        if headers.get("Sec-Fetch-Site") == "same-origin":
            return True
        if urlsplit(origin).netloc.lower() == headers.get("Host", "").lower():
            return True
        allowed = self._deps.settings.allowed_origins
        return "*" in allowed or origin in allowed

    def _refuse_with(self, refusal: Exception) -> None:
        spec = describe(refusal)
        self._refuse(spec.status, spec.code, str(refusal))

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._deps.metrics.handshakes_refused.labels(code).inc()
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"error": code, "message": message}))

    def on_finish(self) -> None:
        # Called once the response is written: the 101 of an upgrade, or a refusal
        # (ours or Tornado's own, such as a bad Sec-WebSocket-Version).
        if self.get_status() != 101:
            self._let_go()

    # -- lifecycle -------------------------------------------------------------

    async def open(self, *args: Any, **kwargs: Any) -> None:
        if self._closed:
            return  # the client left during the handshake: on_close() let go of all
        try:
            await self._start()
        except BaseException:
            # Tornado drops the connection without calling on_close: let go here.
            self.on_close()
            raise

    async def _start(self) -> None:
        deps, identity = self._deps, self._identity
        assert identity is not None and self.ws_connection is not None
        stream = self.ws_connection.stream
        assert stream is not None
        tornado_fast.release_handshake(self)
        self._opened = True
        deps.hub.track(self)
        deps.metrics.connections.inc()
        stream.max_write_buffer_size = deps.settings.max_outbound_buffer_bytes
        self._expire_at(identity.expires_at)
        since, history = self._since, deps.history
        if since is None or isinstance(since, str) or not history.settings.enabled:
            recovery = None
            if since is not None:
                reason = since if isinstance(since, str) else "history_off"
                deps.metrics.recoveries.labels(reason).inc()
                recovery = frames.Recovered(recovered=False, reason=reason)
            # The welcome, what was held back since the keys were bound, then live
            # events: in one step of the loop (the step of the upgrade, as prepare()
            # ended), so the welcome is the first frame and no event falls between.
            self._write(self._welcome(recovery))
            self._go_live()
        else:
            # The pass writes the welcome, the replay and what was held back.
            keys = frozenset((*self._retained, BROADCAST))
            try:
                await history.read(Recovery(self, keys, since, history.settings.window_s))
            except HistoryUnavailable:
                deps.metrics.recoveries.labels("failed").inc()
                self.close_with(CloseCode.TRY_AGAIN_LATER, "history unavailable, retry later")
                return
            if self._closed:
                return
        if self._waiting:
            # Notifications stored while the user was offline (docs/exports.md).
            await deliver_pending(deps, self, identity.user_id)
        # The heartbeat starts after the welcome, so no frame comes before it; from now
        # on the kernel also gives up on a peer that stops acknowledging (keepalive.py).
        if not self._closed:
            deps.keepalive.admit(self, stream.socket)

    def _welcome(self, recovery: frames.Recovered | None) -> bytes:
        identity = self._identity
        assert identity is not None
        settings = self._deps.settings
        return frames.welcome(
            identity.user_id, identity.groups, identity.roles, settings.common.instance_id,
            position=self._live_from, window_s=settings.common.history.window_s,
            recovery=recovery,
        )

    # -- recovery (services/ws_edge/history.py calls these during its pass) ------

    def hold_frame(self, event_id: str, frame: bytes) -> None:
        """A live event arrived while the socket recovers: kept, to be written after the
        replay, unless the replay wrote it. Too much held closes the socket (1013)."""
        held = self._held
        if held is None:
            return
        held.append((event_id, frame))
        self._held_bytes += len(frame)
        if self._held_bytes > self._deps.settings.max_outbound_buffer_bytes:
            self._held = None
            if self._gap_from is not None:
                self._deps.metrics.inband_recoveries.labels("failed").inc()
            self.close_with(CloseCode.TRY_AGAIN_LATER, "recovery took too long, retry later")

    def replay_begins(self, recovered: bool, oldest: float | None) -> bool:
        if self._held is None or self._closed:
            return False  # closed while it waited for the pass
        metrics = self._deps.metrics
        if self._gap_from is not None:  # in band: no welcome, replay.done says it all
            if recovered:
                return True
            metrics.inband_recoveries.labels("too_old").inc()
            self._write(frames.replay_done(
                len(self._replayed), self._live_from, since=self._gap_from,
                recovery=frames.Recovered(False, "too_old", oldest),
            ))
            self._go_live()
            return False
        if recovered:
            metrics.recoveries.labels("recovered").inc()
            self._write(self._welcome(frames.Recovered(recovered=True)))
            return True
        metrics.recoveries.labels("too_old").inc()
        self._write(self._welcome(frames.Recovered(False, "too_old", oldest)))
        self._go_live()
        return False

    def replay_event(self, frame: bytes, event_id: str) -> bool:
        if self._held is None:
            return False
        self._replayed.add(event_id)
        return self.send_frame(frame)

    def replay_ends(self) -> None:
        if self._held is None:
            return
        if self._gap_from is None:
            self._write(frames.replay_done(len(self._replayed), self._live_from))
        else:
            self._deps.metrics.inband_recoveries.labels("recovered").inc()
            self._write(frames.replay_done(
                len(self._replayed), self._live_from, since=self._gap_from))
        self._go_live()

    def _go_live(self) -> None:
        """Write the live events held back (those not just replayed), then receive live
        events as any socket does: in one step of the loop, so none falls between."""
        held, replayed = self._held, self._replayed
        self._held, self._replayed = None, set()
        self._held_bytes, self._gap_from = 0, None
        if held:
            pending = [frame for event_id, frame in held if event_id not in replayed]
            if pending:
                self.send_frame(b"".join(pending))
        if not self._closed:
            self._deps.hub.subscribe(self, (*self._retained, BROADCAST))

    # -- in band, after the broker connection came back (services/ws_edge/gap.py) -----

    def gap_begins(self, delivered: float | None) -> bool:
        """The edge's broker connection broke: hold live events back from now on, to be
        written after the replay of what was routed meanwhile (docs/protocol.md 17.5).
        It starts at the later of ``delivered`` and the time the socket's keys were last
        bound: every event routed before either has reached it, or was never for it."""
        if self._closed or self._held is not None or self._identity is None:
            return False
        self._gap_from = self._live_from if delivered is None else max(delivered, self._live_from)
        self._held, self._held_bytes = [], 0
        self._deps.hub.hold(self, (*self._retained, BROADCAST))
        return True

    def gap_replay(self, rebound_at: float) -> Recovery | None:
        """The socket's keys are bound again since ``rebound_at``, its new position: the
        request that replays what it missed (None if there is none to make)."""
        since = self._gap_from
        if since is None or self._held is None or self._closed:
            return None
        self._live_from = rebound_at
        history = self._deps.history.settings
        if not history.enabled:
            self._deps.metrics.inband_recoveries.labels("history_off").inc()
            self._write(frames.replay_done(
                0, rebound_at, since=since, recovery=frames.Recovered(False, "history_off")))
            self._go_live()
            return None
        return Recovery(self, frozenset((*self._retained, BROADCAST)), since, history.window_s,
                        in_band=True)

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Tornado's version describes the request, which is gone once the socket is open
        # (tornado_fast.release_handshake).
        if self.request is not None:
            log_uncaught(self, typ, value, tb)
            return
        user = self._identity.user_id if self._identity else None
        log.error("connection failed", extra={"user": user}, exc_info=(typ, value, tb))

    def on_close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._let_go()

    def _let_go(self) -> None:
        """Give back what the socket holds (each thing once, so calling again is
        harmless): its place among its user's sockets, its keys, its place in the hub,
        and once open its heartbeat and expiry."""
        deps = self._deps
        if self._holds_slot:
            self._holds_slot = False
            assert self._identity is not None
            deps.hub.free_slot(self._identity.user_id)
        if self._retained:
            deps.bindings.release(self._retained)
            self._retained = ()
        deps.hub.forget(self)
        if self._opened:
            self._opened = False
            if self._expiry is not None:
                self._expiry.cancel()
            deps.keepalive.unwatch(self)
            deps.metrics.connections.dec()

    def _expire_at(self, expires_at: float) -> None:
        """Close with 4001 at ``expires_at`` (Unix time), instead of any time set before."""
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, expires_at - time.time())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self.close_with(CloseCode.TOKEN_EXPIRED, "token expired")

    # -- keepalive (services/ws_edge/keepalive.py) --------------------------------

    def keepalive(self, now: float, interval_s: float) -> float | None:
        """Send the heartbeat; the next is due ``interval_s`` on. Nothing answers it, and
        the client's own pongs are ignored (Tornado's ``on_pong``): a peer that is gone
        is the kernel's to find (``Keepalive.admit`` set its timeout)."""
        if self._closed or not self.send_frame(HEARTBEAT_FRAME):
            return None
        return now + interval_s

    # -- outbound --------------------------------------------------------------

    def send_frame(self, frame: bytes) -> bool:
        """Write pre-built WebSocket frames (one, or several back to back); close the
        client if its buffer is full."""
        connection = self.ws_connection
        if connection is None or connection.is_closing():
            return False
        stream = connection.stream
        assert stream is not None  # an open connection has its stream
        sent = 0
        try:
            # Whatever the kernel does not take now is queued behind, in order.
            sent = tornado_fast.send_now(stream, frame)
            if sent == len(frame):
                return True
            frame = frame[sent:]
            stream.write(frame)
        except StreamBufferFullError:
            self._deps.metrics.slow_disconnects.inc()
            user = self._identity.user_id if self._identity else None
            log.warning("slow client closed", extra={"user": user})
            # Let the close frame queue behind what is buffered; nothing else is written,
            # except the rest of a frame whose first bytes the kernel took: without it the
            # client would read the close frame as that frame's payload.
            stream.max_write_buffer_size = None
            if sent:
                try:
                    stream.write(frame)
                except StreamClosedError:
                    return False
            self.close_with(CloseCode.SLOW_CONSUMER, "client too slow: outbound buffer full")
            return False
        except OSError:  # StreamClosedError too; the read side then closes the handler
            return False
        return True

    def close_with(self, code: int, reason: str) -> None:
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        self._deps.metrics.closed.labels(str(int(code))).inc()
        self.close(code, reason)

    def _write(self, payload: bytes) -> None:
        self.send_frame(self._deps.framer.text(payload))

    # -- inbound ---------------------------------------------------------------

    async def on_message(self, message: str | bytes) -> None:
        connection = self.ws_connection
        if connection is None or connection.is_closing() or self._throttled(message):
            return  # frames that arrive after the edge's close frame are not handled
        ref: frames.Ref = None
        try:
            if isinstance(message, bytes):
                raise FrameError("binary_frame", "binary frames are not accepted; send JSON text")
            ref = frames.ref_of(message)
            frame = frames.parse_client_frame(message, self._deps.commands.known())
            reply: dict[str, Any]
            if frame.type == frames.MESSAGE_SEND:
                reply = {"id": await self._send_message(frame)}
            elif frame.type == frames.AUTH_REFRESH:
                reply = await self._refresh(frame)
            elif frame.type == frames.HISTORY:
                self._start_history(ref, frame)
                return
            else:
                reply = {"id": await self._send_command(frame)}
        except Exception as exc:
            self._refused(ref, exc)
            return
        self._deps.metrics.frames_accepted.labels(frame.type).inc()
        self._write(frames.ack(ref, reply))

    async def _send_message(self, frame: frames.ClientFrame) -> str:
        identity = self._identity
        assert identity is not None
        to = parse_destination(frame.to)
        self._deps.settings.policy.check(identity, to)
        envelope = Envelope(
            type=frames.MESSAGE_EVENT, to=to, sender=Address.user(identity.user_id), data=frame.data
        )
        await self._deps.publisher.publish_event(envelope)
        return envelope.id

    async def _send_command(self, frame: frames.ClientFrame) -> str:
        identity = self._identity
        assert identity is not None
        self._deps.commands.check(identity, frame.type)  # declared, but maybe not for this user
        me = Address.user(identity.user_id)
        envelope = Envelope(type=frame.type, to=me, sender=me, data=frame.data)
        # The command's id follows it through the broker and back (shared/logging.py).
        with correlated(envelope.id):
            if frame.type == Command.EXCEL_CREATE and self._deps.exports is not None:
                # Checked, recorded as queued, then published.
                await submit_from_socket(self._deps, envelope, identity)
            else:
                await self._deps.publisher.publish_command(envelope)
            log.info("command accepted", extra={"command": frame.type, "user": identity.user_id})
        return envelope.id

    async def _refresh(self, frame: frames.ClientFrame) -> dict[str, Any]:
        """``auth.refresh``: the connection takes the identity of a new token of the same
        user, without a reconnect. The new groups' keys are bound and the dropped groups'
        no longer delivered before the ack, so from the ack on the socket receives what
        the new token allows, and closes with 4001 at its ``exp``. A refused refresh
        changes nothing: the connection keeps its token, and its ``exp``."""
        deps, current = self._deps, self._identity
        assert current is not None
        identity = await authenticate(deps, frames.refresh_token(frame))
        if identity.user_id != current.user_id:
            raise PolicyDenied("a refresh must be for the same user; open a new socket for another")
        if self._closed:
            return {}  # gone while the token was checked: on_close() released its keys
        keys = (user_key(identity.user_id), *(group_key(g) for g in identity.groups))
        held = self._retained
        added = tuple(key for key in keys if key not in held)
        if added:
            # Held at once, so that on_close() releases them too if the socket goes
            # while they are being bound.
            self._retained = (*held, *added)
            bound = deps.bindings.retain(added)
            try:
                await asyncio.wait_for(asyncio.shield(bound), deps.settings.bind_timeout_s)
            except Exception as exc:
                if self._closed:
                    return {}  # on_close() released what is held; nothing reads a reply
                self._retained = held
                deps.bindings.release(added)
                log.warning("binding failed", extra={"user": identity.user_id}, exc_info=True)
                raise BrokerUnavailable("the token's new groups could not be bound") from exc
        connection = self.ws_connection
        if self._closed or connection is None or connection.is_closing():
            return {}  # on_close() releases what is held; nothing reads a reply
        if self._held is not None:
            # Held back for an in-band replay (17.5): the new keys are held back too.
            deps.hub.hold(self, (*keys, BROADCAST))
        else:
            deps.hub.subscribe(self, (*keys, BROADCAST))
        deps.bindings.release(key for key in held if key not in keys)
        self._retained = keys
        self._identity = identity
        self._expire_at(identity.expires_at)
        log.debug("token refreshed", extra={"user": identity.user_id})
        exp = identity.expires_at
        return {"exp": int(exp) if exp.is_integer() else exp,
                "groups": identity.groups, "roles": identity.roles}

    def _start_history(self, ref: frames.Ref, frame: frames.ClientFrame) -> None:
        """``history`` (docs/protocol.md 17.4) is answered when its read is done, without
        holding up the connection's other frames: Tornado reads the next frame only once
        this handler returns. One at a time."""
        if self._reading is not None:
            raise HistoryBusy("one history request at a time: wait for the answer to the last")
        ask = frames.history_ask(frame)
        key = ask.key.routing_key
        if key != BROADCAST and key not in self._retained:
            raise PolicyDenied("history is only for the keys of the connection's token")
        self._reading = asyncio.create_task(self._answer_history(ref, ask))

    async def _answer_history(self, ref: frames.Ref, ask: frames.HistoryAsk) -> None:
        query = Query(ask.key.routing_key, ask.since, ask.limit)
        try:
            await self._deps.history.read(query)
        except Exception as exc:
            self._refused(ref, exc)
            return
        finally:
            self._reading = None
        self._deps.metrics.history_requests.inc()
        self._deps.metrics.frames_accepted.labels(frames.HISTORY).inc()
        reply = {"key": str(ask.key), "events": list(query.events), "oldest": query.oldest}
        self._write(frames.ack(ref, reply))

    def _refused(self, ref: frames.Ref, exc: Exception) -> None:
        spec = describe(exc)
        if spec.status >= 500 and spec.code == "internal":
            log.exception("frame handling failed", exc_info=exc)
            message = "internal error"
        else:
            message = spec.message or str(exc)
        self._deps.metrics.frames_refused.labels(spec.code).inc()
        self._write(frames.error(ref, spec.code, message))
        if spec.status < 500 and spec.status != 429:  # rate_limited is not a strike (6.6)
            self._strike()

    def _throttled(self, message: str | bytes) -> bool:
        """Spend one frame of the connection's allowance; True if there was none left.

        A refused frame is not read beyond its ``ref``: it is answered ``rate_limited``
        (not a strike), and a connection ``burst`` frames in debt is closed with 4030.
        """
        rate = self._deps.settings.frame_rate
        if not rate.enabled:
            return False
        now = time.monotonic()
        self._allowance = allowance = rate.spend(self._allowance, now - self._spent_at)
        self._spent_at = now
        if allowance >= 0:
            return False
        exc = rate.refusal()
        code = describe(exc).code
        self._deps.metrics.frames_refused.labels(code).inc()
        ref = frames.ref_of(message) if isinstance(message, str) else None
        self._write(frames.error(ref, code, str(exc)))
        if rate.exhausted(allowance):
            self.close_with(CloseCode.TOO_MANY_FRAMES, "too many frames")
        return True

    def _strike(self) -> None:
        now = time.monotonic()
        if self._strikes is None:
            self._strikes = deque(maxlen=self._deps.settings.invalid_frame_limit)
        self._strikes.append(now)
        window = self._deps.settings.invalid_frame_window_s
        if len(self._strikes) == self._strikes.maxlen and now - self._strikes[0] <= window:
            self.close_with(CloseCode.TOO_MANY_INVALID_FRAMES, "too many invalid frames")
