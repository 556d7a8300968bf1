"""``python -m bench.publisher``: a worker that publishes envelopes at a paced rate.

Requests (see :mod:`bench.rpc`):

* ``open {system, amqp_url, settings?}``: ``warren`` publishes with :class:`Publisher`,
  which picks ``warren.events`` or ``warren.events.kept`` by the history settings
  (docs/protocol.md 17.1): ``settings`` holds the ``WARREN_HISTORY*`` variables of the
  edge it publishes for (none: the defaults, the stream on), so that a bench comparing
  the stream on and off publishes as Warren would; ``peer`` emits through a write-only
  ``socketio.AsyncAioPikaManager``.
* ``run {step, kind, targets, rate, duration_s, max_in_flight}``: publish
  ``rate * duration_s`` envelopes round-robin over ``targets`` (user ids, group
  names, or none for ``broadcast``), each with ``data = {"step", "seq"}`` and its
  ``ts`` taken just before it is handed to the broker client.
* ``close``: close the broker connection.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any, Protocol

import socketio
from aio_pika.abc import AbstractRobustConnection

from bench.rpc import run_worker
from shared.config import HistorySettings
from shared.messaging import ADDRESS_BROADCAST, Address, Envelope, Kind
from shared.messaging.broker import BrokerUnavailable, Publisher, connect

EVENT_TYPE = "bench.tick"
PEER_EVENT = "bench"
SENDER = Address.service("bench")


class Sink(Protocol):
    async def send(self, envelope: Envelope) -> None: ...
    async def close(self) -> None: ...


class WarrenSink:
    """Warren's own publisher: confirmed publishes to ``warren.events``."""

    def __init__(self, connection: AbstractRobustConnection, publisher: Publisher) -> None:
        self._connection = connection
        self._publisher = publisher

    @classmethod
    async def open(cls, amqp_url: str, history: HistorySettings) -> WarrenSink:
        connection = await connect(amqp_url, name="warren-bench-publisher")
        return cls(connection, await Publisher.open(connection, history))

    async def send(self, envelope: Envelope) -> None:
        await self._publisher.publish_event(envelope)

    async def close(self) -> None:
        await self._connection.close()


class PeerSink:
    """python-socketio's write-only pub/sub manager: an external emitter over RabbitMQ."""

    def __init__(self, amqp_url: str) -> None:
        self._manager = socketio.AsyncAioPikaManager(amqp_url, write_only=True)

    async def send(self, envelope: Envelope) -> None:
        await self._manager.emit(
            PEER_EVENT, envelope.to_dict(), namespace="/", room=peer_room(envelope.to)
        )

    async def close(self) -> None:
        connection = self._manager.publisher_connection
        if connection is not None:
            await connection.close()


def peer_room(address: Address) -> str | None:
    """The peer's rooms are named like Warren's routing keys; broadcast is the namespace."""
    return None if address.kind is Kind.BROADCAST else address.routing_key


def destinations(kind: str, targets: list[str]) -> list[Address]:
    if kind == "direct":
        return [Address.user(t) for t in targets]
    if kind == "group":
        return [Address.group(t) for t in targets]
    if kind == "broadcast":
        return [ADDRESS_BROADCAST]
    raise ValueError(f"unknown scenario kind {kind!r}")


class PacedRun:
    """One step: ``total`` publishes at ``rate`` per second, at most ``max_in_flight``
    unconfirmed; what is not sent by the end of the window is not sent."""

    def __init__(self, sink: Sink, step: int, to: list[Address], rate: float,
                 duration_s: float, max_in_flight: int) -> None:
        self._sink = sink
        self._step = step
        self._to = to
        self._rate = rate
        self._duration_s = duration_s
        self._gate = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self.counts: Counter[str] = Counter()
        self.failed = 0

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        total = max(1, round(self._rate * self._duration_s))
        started_wall, started = time.time(), loop.time()
        window_end = started + self._duration_s * 1.05
        sent = 0
        while sent < total and loop.time() < window_end:
            due = min(total, int((loop.time() - started) * self._rate) + 1)
            while sent < due and loop.time() < window_end:
                await self._gate.acquire()
                self._spawn(self._to[sent % len(self._to)], sent)
                sent += 1
            pause = started + sent / self._rate - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)  # pacing only
        # The span the sends stand for: the whole step when the pacing kept up.
        window_s = max(loop.time() - started, sent / self._rate)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10.0)
        return {
            "started": started_wall,
            "window_s": window_s,
            "confirmed_s": loop.time() - started,
            "sent": sent,
            "failed": self.failed,
            "counts": dict(self.counts),
        }

    def _spawn(self, to: Address, seq: int) -> None:
        task = asyncio.create_task(self._one(to, seq))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, to: Address, seq: int) -> None:
        try:
            envelope = Envelope(
                type=EVENT_TYPE, to=to, sender=SENDER, data={"step": self._step, "seq": seq}
            )
            await self._sink.send(envelope)
            self.counts[str(to)] += 1
        except (TimeoutError, BrokerUnavailable, OSError):
            self.failed += 1
        finally:
            self._gate.release()


class PublisherWorker:
    def __init__(self) -> None:
        self._sink: Sink | None = None

    async def open(self, request: dict[str, Any]) -> dict[str, Any]:
        system, url = request["system"], request["amqp_url"]
        if system != "warren":
            self._sink = PeerSink(url)
            return {"system": system}
        settings = {str(k): str(v) for k, v in dict(request.get("settings") or {}).items()}
        history = HistorySettings.from_env(settings)
        self._sink = await WarrenSink.open(url, history)
        return {"system": system, "history": history.enabled}

    async def run(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._sink is not None, "open first"
        run = PacedRun(
            self._sink,
            step=int(request["step"]),
            to=destinations(request["kind"], list(request["targets"])),
            rate=float(request["rate"]),
            duration_s=float(request["duration_s"]),
            max_in_flight=int(request["max_in_flight"]),
        )
        return await run.run()

    async def close(self, _request: dict[str, Any]) -> dict[str, Any]:
        if self._sink is not None:
            await self._sink.close()
            self._sink = None
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description="bench publisher (a bench.fanout worker)")
    parser.add_argument("--lifetime", type=float, default=1200.0, help="exit after this many s")
    args = parser.parse_args()
    worker = PublisherWorker()
    run_worker({"open": worker.open, "run": worker.run, "close": worker.close}, args.lifetime)


if __name__ == "__main__":
    main()
