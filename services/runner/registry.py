"""The jobs a runner offers, found once at start-up (shared/plugins.py; the rules for
users are in docs/runner.md)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Final

from shared.plugins import REFERENCE, PluginKind, PluginLoadError, Registry, discover, load
from warren.jobs import Job

ENTRY_POINT_GROUP: Final = "warren.jobs"
JOBS_SETTING: Final = "WARREN_RUNNER_JOBS"
ENABLED_SETTING: Final = "WARREN_RUNNER_JOBS_ENABLED"

__all__ = ["ENABLED_SETTING", "ENTRY_POINT_GROUP", "JOBS", "JOBS_SETTING", "REFERENCE",
           "JobLoadError", "JobRegistry", "discover_jobs", "load_job"]


class JobLoadError(PluginLoadError):
    """A job source is broken; the message names the package and the entry point."""


JOBS: Final = PluginKind(
    noun="job", cls=Job, group=ENTRY_POINT_GROUP, references_setting=JOBS_SETTING,
    enabled_setting=ENABLED_SETTING, error=JobLoadError, example="pkg.jobs:WORDS",
)

JobRegistry = Registry[Job]


def discover_jobs(
    extra: Sequence[str] = (), enabled: Collection[str] | None = None,
    *, group: str = ENTRY_POINT_GROUP,
) -> JobRegistry:
    """Every job of the entry-point ``group`` and of the ``extra`` references, restricted to
    ``enabled`` (None: all). :class:`JobLoadError` if any source is broken."""
    return discover(JOBS, extra, enabled, group=group)


def load_job(reference: str) -> Job:
    """The job a run's child process imports; errors as :func:`shared.plugins.load`."""
    return load(JOBS, reference)
