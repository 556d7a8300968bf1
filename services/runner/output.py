"""From raw pipe bytes to numbered batches of lines. Pure logic, no I/O.

- :class:`LineSplitter` decodes UTF-8 incrementally (invalid bytes become U+FFFD) and
  cuts lines at ``\\n``; a line longer than ``max_chars`` is split into pieces of
  ``max_chars``, never dropped.
- :class:`Batcher` queues lines per run and hands out batches of one stream at a
  time, at most ``max_lines`` lines or about ``max_bytes`` bytes each, in order.
"""

from __future__ import annotations

import codecs
from collections import deque
from dataclasses import dataclass


class LineSplitter:
    def __init__(self, max_chars: int) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be positive")
        self._max = max_chars
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, data: bytes) -> list[str]:
        """Complete lines in ``data`` (with what came before); keeps the unfinished rest."""
        text = self._partial + self._decoder.decode(data)
        *complete, rest = text.split("\n")
        out: list[str] = []
        for line in complete:
            self._cut(line.removesuffix("\r"), out)
        while len(rest) > self._max:
            out.append(rest[: self._max])
            rest = rest[self._max :]
        self._partial = rest
        return out

    def close(self) -> list[str]:
        """The unfinished last line, if any, at end of stream."""
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        out: list[str] = []
        if rest:
            self._cut(rest, out)
        return out

    def _cut(self, line: str, out: list[str]) -> None:
        if len(line) <= self._max:
            out.append(line)
            return
        for start in range(0, len(line), self._max):
            out.append(line[start : start + self._max])


@dataclass(frozen=True, slots=True)
class Batch:
    stream: str
    lines: list[str]


class Batcher:
    """Lines waiting to be published, in arrival order across both streams."""

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._segments: deque[tuple[str, list[str]]] = deque()
        self._pending = 0
        self._pending_bytes = 0

    def __len__(self) -> int:
        return self._pending

    def add(self, stream: str, lines: list[str]) -> None:
        if not lines:
            return
        if self._segments and self._segments[-1][0] == stream:
            self._segments[-1][1].extend(lines)
        else:
            self._segments.append((stream, list(lines)))
        self._pending += len(lines)
        self._pending_bytes += sum(len(line) + 1 for line in lines)

    def full(self) -> bool:
        """Whether a batch of the maximum size is ready (so there is no point waiting)."""
        return self._pending >= self._max_lines or self._pending_bytes >= self._max_bytes

    def take(self) -> Batch | None:
        """The next batch: the oldest stream's lines, up to the size limits."""
        if not self._segments:
            return None
        stream, lines = self._segments[0]
        size = 0
        count = 0
        for line in lines:
            if count >= self._max_lines or (count and size + len(line) + 1 > self._max_bytes):
                break
            size += len(line) + 1
            count += 1
        batch, rest = lines[:count], lines[count:]
        if rest:
            self._segments[0] = (stream, rest)
        else:
            self._segments.popleft()
        self._pending -= count
        self._pending_bytes -= size
        return Batch(stream, batch)
