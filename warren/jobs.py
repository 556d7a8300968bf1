"""The job API: a name, a description, an argument schema and a callable.

Arguments are validated twice: by the runner before it starts a child (so bad input
becomes a clear ``run.error``), and again in the child before the job runs.

A job reaches a runner through the entry-point group ``warren.jobs`` of an installed
package (docs/extending.md), each entry point naming a :class:`Job` object.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from warren.params import ArgsError, Param, describe, locate, validate

__all__ = ["ArgsError", "Job", "JobContext", "JobFunction", "Param"]

# Job and role names: what a client sends in run.start, and what a users-table role is.
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
    # Who may start it: None lets every signed-in user; otherwise users holding one of
    # these roles (users with the deployment's admin role always may).
    roles: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"job name {self.name!r} must be 1 to 64 letters, digits, '_' or '-'")
        roles = self.roles
        if roles is not None and (
            not isinstance(roles, tuple)
            or not all(isinstance(r, str) and NAME_PATTERN.fullmatch(r) for r in roles)
        ):
            raise ValueError(f"job {self.name}: roles must be None or a tuple of role names "
                             f"(letters, digits, '_' or '-'), got {roles!r}")

    def allows(self, roles: Collection[str], admin_role: str) -> bool:
        """Whether a user holding ``roles`` may start this job."""
        return self.roles is None or admin_role in roles or not set(self.roles).isdisjoint(roles)

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
        """The job as clients see it; ``roles`` is None when every signed-in user may run it."""
        return {"name": self.name, "description": self.description, "args": describe(self.params),
                "roles": None if self.roles is None else list(self.roles)}
