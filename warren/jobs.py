"""The job API: a name, a description, an argument schema and a callable.

Arguments are validated twice: by the runner before it starts a child (so bad input
becomes a clear ``run.error``), and again in the child before the job runs.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warren.params import ArgsError, Param, describe, locate, validate

__all__ = ["ArgsError", "Job", "JobContext", "JobFunction", "Param"]


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a running job may use. ``running()`` turns False once Stop was asked."""

    stop_event: threading.Event
    http_base_url: str = ""

    def running(self) -> bool:
        return not self.stop_event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return False at once if Stop was asked."""
        return not self.stop_event.wait(seconds)


JobFunction = Callable[[dict[str, Any], JobContext], "Awaitable[None] | None"]


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    description: str
    run: JobFunction
    params: Mapping[str, Param] = field(default_factory=dict)
    needs_http: bool = False
    check: Callable[[dict[str, Any]], None] | None = None  # cross-argument rules

    @property
    def needs_files(self) -> bool:
        """Whether the job takes a ``path`` argument (and so needs a files directory)."""
        return any(p.kind == "path" for p in self.params.values())

    def validate(self, raw: object, files_dir: Path | None = None) -> dict[str, Any]:
        """The arguments with defaults filled in; :class:`ArgsError` on any problem.

        ``path`` arguments keep the name given; :meth:`located` resolves them for ``run``.
        """
        args = validate(self.params, raw, self.name, files_dir)
        if self.check is not None:
            self.check(args)
        return args

    def located(self, args: dict[str, Any], files_dir: Path | None) -> dict[str, Any]:
        """Validated ``args`` with each ``path`` argument replaced by its resolved file."""
        return {
            name: locate(name, value, files_dir) if self.params[name].kind == "path" else value
            for name, value in args.items()
        }

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "args": describe(self.params)}
