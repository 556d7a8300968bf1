"""The registered jobs. A run names one of these; nothing else can run."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from services.runner.jobs import countdown, http_probe, lines, misbehave, primes, show_file
from warren.jobs import ArgsError, Job, JobContext, Param

JOBS: Final[Mapping[str, Job]] = MappingProxyType(
    {job.name: job for job in (
        countdown.JOB, primes.JOB, http_probe.JOB, lines.JOB, misbehave.JOB, show_file.JOB
    )}
)

__all__ = ["JOBS", "ArgsError", "Job", "JobContext", "Param"]
