"""A :class:`~tests.support.history.Feed` in a process of its own, so that a test's many
sockets and its publisher do not share one event loop (the rate would be the loop's).

``python -m tests.support.feed_process <amqp_url> <lanes> <address>...`` publishes in
rounds over the addresses (``Feed.flow``) until its stdin closes, and writes every
envelope the broker confirmed as one JSON line on stdout, in the order confirmed.
:class:`FeedProcess` runs it and reads them back.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Self

from shared.messaging import Address, Envelope, decode, encode
from shared.messaging.names import parse_destination
from shared.messaging.broker import Publisher, connect
from tests.support.history import Feed

EXIT_TIMEOUT_S = 30.0


class FeedProcess:
    def __init__(self, amqp_url: str, addresses: Sequence[str], lanes: int) -> None:
        self._args = (amqp_url, str(lanes), *addresses)
        self.published: list[Envelope] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> Self:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, *self._args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while line := await self._process.stdout.readline():
            self.published.append(decode(line))

    async def stop(self) -> None:
        """Stop publishing; every envelope it published is in :attr:`published` after."""
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.close()
        code = await asyncio.wait_for(self._process.wait(), EXIT_TIMEOUT_S)
        assert self._reader is not None
        await asyncio.wait_for(self._reader, EXIT_TIMEOUT_S)
        assert code == 0, f"the feed process exited with {code}"

    async def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()


class _Written(Feed):
    async def publish(
        self, to: Address, *, event_type: str | None = None, ts: float | None = None
    ) -> Envelope:
        envelope = await super().publish(to, event_type=event_type, ts=ts)
        sys.stdout.buffer.write(encode(envelope) + b"\n")
        sys.stdout.buffer.flush()
        return envelope


async def _main(amqp_url: str, lanes: int, addresses: Sequence[str]) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    connection = await connect(amqp_url, name="warren-test-feed")
    async with connection:
        feed = _Written(await Publisher.open(connection))
        stop = asyncio.Event()
        flowing = asyncio.create_task(
            feed.flow([parse_destination(a) for a in addresses], stop, lanes=lanes)
        )
        await stdin.read()  # until the test closes it
        stop.set()
        await flowing


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
