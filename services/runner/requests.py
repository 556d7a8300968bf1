"""Reading ``run.start`` and ``run.stop`` command data. Pure logic: refusals carry a code."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from shared.messaging.envelope import MAX_ID_LENGTH
from warren.jobs import ArgsError, Job


class Refused(ValueError):
    """A command that cannot be carried out; ``code`` is the stable ``run.error`` code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class StartRequest:
    job: Job
    args: dict[str, Any]


def parse_start(
    data: Mapping[str, Any], jobs: Mapping[str, Job], *, max_args_bytes: int, http_configured: bool,
    files_dir: Path | None = None,
) -> StartRequest:
    name = data.get("job")
    if not isinstance(name, str) or not name:
        raise Refused("invalid_request", "run.start needs data.job, the name of a job")
    job = jobs.get(name)
    if job is None:
        known = ", ".join(sorted(jobs))
        raise Refused("unknown_job", f"unknown job {name[:64]!r}; the jobs are: {known}")
    raw = data.get("args", {})
    size = len(orjson.dumps(raw))
    if size > max_args_bytes:
        raise Refused(
            "args_too_large", f"args take {size} bytes as JSON; the limit is {max_args_bytes}"
        )
    if job.needs_files and files_dir is None:
        raise Refused(
            "job_unavailable", f"{name} reads files and this runner has no files directory"
        )
    try:
        args = job.validate(raw, files_dir)
    except ArgsError as exc:
        raise Refused("invalid_args", str(exc)) from exc
    if job.needs_http and not http_configured:
        raise Refused(
            "job_unavailable", f"{name} needs an endpoint and none is configured on this runner"
        )
    return StartRequest(job, args)


def check_roles(job: Job, roles: Collection[str], admin_role: str) -> None:
    """:class:`Refused` ``forbidden`` unless a user holding ``roles`` may start ``job``."""
    if job.allows(roles, admin_role):
        return
    assert job.roles is not None
    allowed = " or ".join(repr(role) for role in (*job.roles, admin_role))
    raise Refused("forbidden", f"{job.name} may be started only by users with the role {allowed}")


def parse_stop(data: Mapping[str, Any]) -> str:
    run_id = data.get("run_id")
    if not isinstance(run_id, str) or not 0 < len(run_id) <= MAX_ID_LENGTH:
        raise Refused("invalid_request", "run.stop needs data.run_id, the id of a run")
    return run_id
