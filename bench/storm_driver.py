"""The storm's driver: ``python -m bench.storm --worker`` (uvloop).

It opens its share of the storm's connections on a fixed schedule (open loop: a slow
edge does not slow the offered rate), each from the driver's own source address with a
JWT in the query string. A connect is made when its ``welcome`` arrives; the client
holds it, then closes normally. A connect that fails or times out is reset, so that its
port is free at once.

Requests (see :mod:`bench.rpc`):

* ``storm {port, clients_file, first, last, rate, duration_s, hold_s, timeout_s,
  source}``: one storm of ``rate * duration_s`` connects with the tokens of clients
  ``first..last-1`` of the file, round robin; its counts and latencies once every
  connect has finished (bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from bench.loadclients import sparse_histogram
from bench.rpc import run_worker
from bench.servers import raise_file_limit
from bench.wsclient import Recorder, WarrenClient, upgrade_request

TICK_S: Final = 0.002  # the drivers' pacing tick
CLOSE_TIMEOUT_S: Final = 10.0


@dataclass(slots=True)
class StormTally:
    """What one driver saw of one storm."""

    attempted: int = 0
    connected: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    upgrades: array[float] = field(default_factory=lambda: array("d"))  # start -> 101
    welcomes: array[float] = field(default_factory=lambda: array("d"))  # start -> welcome
    lags: array[float] = field(default_factory=lambda: array("d"))  # start - schedule
    dropped_in_hold: int = 0  # closed by the edge before the bench closed it
    close_timeouts: int = 0  # no close from the edge within CLOSE_TIMEOUT_S: reset
    last_welcome: float = 0.0

    def report(self, started: float) -> dict[str, Any]:
        return {
            "attempted": self.attempted,
            "connected": self.connected,
            "failures": dict(self.failures),
            "upgrade": sparse_histogram(self.upgrades),
            "latency": sparse_histogram(self.welcomes),
            "lag": sparse_histogram(self.lags),
            "dropped_in_hold": self.dropped_in_hold,
            "close_timeouts": self.close_timeouts,
            "last_welcome": self.last_welcome - started if self.connected else None,
        }


def failure_reason(exc: BaseException) -> str:
    """A short, countable name for why a connect failed."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    text = str(exc)
    if text.startswith("upgrade refused"):  # "upgrade refused: b'HTTP/1.1 503 ..."
        marker = text.find("HTTP/1.1 ")
        return f"HTTP {text[marker + 9 : marker + 12]}" if marker >= 0 else "upgrade refused"
    if text.startswith("closed with"):
        return f"closed {text.split()[2].rstrip(':')} before welcome"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__ + (": " + text[:40] if text else "")


class StormClient(WarrenClient):
    """A :class:`WarrenClient` that notes when the edge accepted the upgrade (101), so
    that the wait for ``welcome`` (the user's keys being bound) can be told apart."""

    upgraded_at = 0.0

    def _read_upgrade(self, buffer: bytes) -> bytes:
        rest = super()._read_upgrade(buffer)
        if self._upgraded and not self.upgraded_at:
            self.upgraded_at = time.monotonic()
        return rest


class StormDriver:
    """The request handler of one driver process."""

    def __init__(self) -> None:
        self._recorder = Recorder()  # events after welcome: none are expected
        self._closes: Counter[int] = Counter()  # close codes of sockets the edge closed

    async def storm(self, request: dict[str, Any]) -> dict[str, Any]:
        """Start the connects on schedule, then wait (bounded) until each has finished."""
        port = int(request["port"])
        tokens = [e["token"] for e in orjson.loads(Path(request["clients_file"]).read_bytes())]
        tokens = tokens[int(request["first"]) : int(request["last"])]
        rate, duration_s = float(request["rate"]), float(request["duration_s"])
        hold_s, timeout_s = float(request["hold_s"]), float(request["timeout_s"])
        source = str(request["source"])
        total = max(1, round(rate * duration_s))
        tally = StormTally()
        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        for i in range(total):
            due = started + i / rate
            if due > time.monotonic() + TICK_S:
                await asyncio.sleep(due - time.monotonic())  # pacing: the schedule is the load
            task = asyncio.create_task(
                self._one(port, tokens[i % len(tokens)], due, hold_s, timeout_s, tally, source)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        spawned = time.monotonic()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s + hold_s + CLOSE_TIMEOUT_S + 30.0)
        stuck = len(tasks)
        for task in tuple(tasks):
            task.cancel()
        # The attempts stand for the whole schedule when the pacing kept up.
        return {**tally.report(started), "stuck": stuck,
                "closes": {str(code): n for code, n in self._closes.items()},
                "offered_s": max(spawned - started, (total - 1) / rate) + 1 / rate}

    async def _one(self, port: int, token: str, due: float, hold_s: float, timeout_s: float,
                   tally: StormTally, source: str) -> None:
        """One connect: made when its ``welcome`` arrives, held, then closed normally."""
        loop = asyncio.get_running_loop()
        begun = time.monotonic()
        tally.attempted += 1
        tally.lags.append(begun - due)
        client = StormClient(upgrade_request("127.0.0.1", port, f"/ws?token={token}"),
                             self._recorder, self._closes)
        try:
            async with asyncio.timeout(timeout_s):
                await loop.create_connection(lambda: client, "127.0.0.1", port,
                                             local_addr=(source, 0))
                await client.ready
        except (OSError, TimeoutError) as exc:
            client.reset()
            tally.failures[failure_reason(exc)] += 1
            return
        except BaseException:
            client.reset()
            raise
        welcomed = time.monotonic()
        tally.upgrades.append(client.upgraded_at - begun)
        tally.welcomes.append(welcomed - begun)
        tally.connected += 1
        tally.last_welcome = max(tally.last_welcome, welcomed)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(client.lost), hold_s)  # the hold
            if client.lost.done():
                tally.dropped_in_hold += 1
                return
            client.close()
            try:
                await asyncio.wait_for(asyncio.shield(client.lost), CLOSE_TIMEOUT_S)
            except TimeoutError:
                tally.close_timeouts += 1
                client.reset()
        except BaseException:
            client.reset()
            raise


def worker_main(lifetime_s: float) -> None:
    """Serve the storm's requests until stdin closes or ``lifetime_s`` passes."""
    raise_file_limit()
    driver = StormDriver()
    run_worker({"storm": driver.storm}, lifetime_s)
