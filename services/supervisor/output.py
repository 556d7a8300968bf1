"""The supervisor's terminal: every child's lines behind a coloured name, made readable.

Services log one JSON object per line (``shared/logging.py``); here each becomes
``09:12:01 INFO  edge ready  port=8000 …``. Other lines (the Cat's, a traceback printed
before logging was set up) pass through unchanged.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import orjson

COLOURS: Final = {"edge": "36", "relay": "35", "runner": "33", "excel": "32", "cat": "34"}
LEVEL_COLOURS: Final = {"WARNING": "33", "ERROR": "31", "CRITICAL": "31"}
HIDDEN: Final = frozenset({"ts", "level", "logger", "message", "service", "exc_info", "taskName"})


def render(line: str, colour: bool = False) -> str:
    """A child's output line as a person reads it."""
    if not line.startswith("{"):
        return line
    try:
        record: Any = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if not isinstance(record, dict) or "message" not in record:
        return line
    ts = str(record.get("ts", ""))
    clock = ts[11:19] if len(ts) >= 19 else ts
    level = str(record.get("level", ""))
    shown_level = _paint(f"{level:<7}", LEVEL_COLOURS.get(level), colour)
    extras = "  ".join(f"{k}={_value(v)}" for k, v in record.items() if k not in HIDDEN)
    text = f"{clock} {shown_level} {record['message']}"
    if extras:
        text += f"  {extras}"
    if record.get("exc_info"):
        text += "\n" + str(record["exc_info"])
    return text


def _value(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _paint(text: str, code: str | None, colour: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if colour and code else text


class Stream(Protocol):
    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


class Output:
    """Writes prefixed lines; the prefix is padded so the children's text lines up."""

    def __init__(self, stream: Stream, colour: bool, width: int = 8) -> None:
        self._stream = stream
        self._colour = colour
        self._closed = False
        self.width = width

    def child(self, name: str, kind: str, line: str) -> None:
        prefix = _paint(f"{name:<{self.width}} |", COLOURS.get(kind), self._colour)
        for part in render(line, self._colour).split("\n"):
            self._write(f"{prefix} {part}")

    def note(self, text: str) -> None:
        self._write(f"{_paint('[up]', '1', self._colour)} {text}")

    def warn(self, text: str) -> None:
        self._write(_paint(f"[up] {text}", "1;33", self._colour))

    def error(self, text: str) -> None:
        self._write(_paint(f"[up] {text}", "1;31", self._colour))

    def _write(self, text: str) -> None:
        # A terminal or pipe that went away (a `| tee` killed by the same Ctrl-C) must not
        # take the supervisor down before it has stopped its children: the lines are lost.
        if self._closed:
            return
        try:
            self._stream.write(text + "\n")
            self._stream.flush()
        except OSError:
            self._closed = True
